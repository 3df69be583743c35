"""report: the HTML report folder for LeNet, from data and from saved histograms; atomic writes; headless rendering."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from trt_calib.cli.report import register
from trt_calib.errors import DataError, TrtCalibError
from trt_calib.core.histogram import AbsHistogram
from trt_calib.tools.report import analyse, render_figure, select_tensors, write_report
from trt_calib.core.signs import SignedHistogram, quantization_error, symmetric_quantizer

from conftest import LENET, LENET_BATCHES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["report", *argv])
    return args.handler(args)


class _Page(HTMLParser):
    """Collects image sources, ids, table rows and checks that tags close as they opened."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.stack: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and a.get("href", "").startswith("#"):
            self.links.append(a["href"][1:])
        for key in ("src", "href"):
            if a.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(a[key])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()


def check_folder(folder: Path) -> tuple[dict, _Page]:
    """The page parses, every image it references is a real PNG in the folder, every anchor link resolves."""
    page = _Page()
    page.feed((folder / "index.html").read_text("utf-8"))
    page.close()
    assert page.stack == []
    assert page.external == []  # opens from disk, nothing fetched
    for src in page.images:
        path = folder / src
        assert path.is_file(), src
        assert path.read_bytes()[:8] == PNG_MAGIC, src
    assert set(page.links) <= page.ids
    report = json.loads((folder / "report.json").read_text("utf-8"))
    assert report["generator"] == "trt-calib report"
    return report, page


@pytest.fixture(scope="module")
def lenet_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("r") / "lenet"
    hist = out.parent / "signed.npz"
    assert run(str(LENET), "--data", str(LENET_BATCHES), "-o", str(out), "--trt-version", "7.0.0",
               "--max-tensors", "3", "--no-progress", "--save-histograms", str(hist)) == 0
    return out, hist


def test_lenet_report_from_data(lenet_report):
    from trt_calib.ort.collect import calibrate
    import runpy

    out, _ = lenet_report
    report, page = check_folder(out)
    tensors = {t["name"]: t for t in report["tensors"]}
    assert list(tensors) == ["data", "conv1", "pool1", "conv2", "pool2", "pool2_flat", "ip1_prerelu", "ip1", "ip2",
                             "prob"]
    # the amax the report judges is the one calibration writes into the cache (TensorRT's table for sampleINT8)
    batches = runpy.run_path(str(LENET_BATCHES))["load_data"]()
    result = calibrate(LENET, batches, trt_version="7.0.0")
    assert {n: t["amax"] for n, t in tensors.items()} == pytest.approx(result.amax, rel=0, abs=0)
    assert tensors["pool1"]["tied_to"] == "conv1" and tensors["pool1"]["amax"] == tensors["conv1"]["amax"]
    assert tensors["ip1"]["sign"] == "non-negative" and tensors["ip1"]["negative_share"] == 0
    assert tensors["conv1"]["sign"] == "symmetric" and tensors["conv1"]["negative_share"] > 0.5
    # 3 figures: the 3 lowest SQNR, in model order
    ranked = sorted(tensors.values(), key=lambda t: t["sqnr_db"])
    assert set(report["drawn"]) == {t["name"] for t in ranked[:3]}
    assert len(page.images) == 3 and len(list((out / "figures").iterdir())) == 3
    # a one-sided tensor gains about 6 dB on a uint8 grid; the table shows every tensor
    ip1 = {c["name"]: c for c in tensors["ip1"]["choices"]}
    assert ip1["uint8-minmax"]["sqnr_db"] - ip1["minmax"]["sqnr_db"] == pytest.approx(6.0, abs=0.3)
    assert ip1["minmax"]["bits"] < 7.0 < ip1["uint8-minmax"]["bits"]
    html = (out / "index.html").read_text("utf-8")
    assert all(f">{name}<" in html for name in tensors)


def test_report_from_saved_histograms_needs_no_second_pass(lenet_report, tmp_path, monkeypatch):
    import trt_calib.tools.report as report_module

    first, hist = lenet_report
    monkeypatch.setattr(report_module, "collect_signed", lambda *a, **k: pytest.fail("ran the model again"))
    out = tmp_path / "again"
    assert run(str(LENET), "--histograms", str(hist), "-o", str(out), "--tensors", "ip*,conv2", "--no-progress", "--max-tensors", "1",
               "--trt-version", "7.0.0") == 0
    report, _ = check_folder(out)
    before = {t["name"]: t for t in json.loads((first / "report.json").read_text())["tensors"]}
    after = {t["name"]: t for t in report["tensors"]}
    assert list(after) == ["conv2", "ip1_prerelu", "ip1", "ip2"]
    for name, t in after.items():
        assert t["amax"] == before[name]["amax"] and t["sqnr_db"] == before[name]["sqnr_db"]


def test_plain_histograms_give_sign_aware_choices_for_one_sided_tensors_only(tmp_path):
    from trt_calib.cli import main

    hist = tmp_path / "plain.npz"
    assert main(["-q", "calibrate", str(LENET), "--data", str(LENET_BATCHES), "--cache", str(tmp_path / "c"),
                 "--save-histograms", str(hist), "--no-progress"]) == 0
    out = tmp_path / "r"
    assert run(str(LENET), "--histograms", str(hist), "-o", str(out), "--tensors", "ip1,ip2,pool2*",
               "--max-tensors", "0", "--no-progress") == 0
    report, page = check_folder(out)
    tensors = {t["name"]: t for t in report["tensors"]}
    assert page.images == [] and report["drawn"] == []
    assert tensors["ip1"]["signs_known"] and "uint8-minmax" in [c["name"] for c in tensors["ip1"]["choices"]]
    assert not tensors["ip2"]["signs_known"]
    assert [c["name"] for c in tensors["ip2"]["choices"]] == ["entropy2", "minmax", "percentile", "mse"]
    assert tensors["ip1"]["zero_share"] is None  # an |x| histogram does not count exact zeros
    # pool2's scale is tied to conv2 even though conv2 is not reported: ties need the whole graph's histograms
    assert tensors["pool2"]["tied_to"] == "conv2"


def test_report_refuses_to_replace_a_folder_that_is_not_a_report(lenet_report, tmp_path):
    _, hist = lenet_report
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(TrtCalibError, match="--force"):
        run(str(LENET), "--histograms", str(hist), "-o", str(out), "--max-tensors", "0", "--no-progress")
    assert (out / "notes.txt").read_text() == "mine"
    assert run(str(LENET), "--histograms", str(hist), "-o", str(out), "--max-tensors", "0", "--no-progress",
               "--force") == 0
    assert (out / "notes.txt").read_text() == "mine"  # --force adds the report beside it, deletes nothing
    # a previous report is replaced without --force
    assert run(str(LENET), "--histograms", str(hist), "-o", str(out), "--max-tensors", "1", "--no-progress") == 0
    assert len(json.loads((out / "report.json").read_text())["drawn"]) == 1
    assert (out / "notes.txt").read_text() == "mine"


def test_report_replaces_only_the_files_it_wrote_and_never_deletes_others(lenet_report, tmp_path):
    """Issue 12 item 5: `report -o DIR` over an earlier report deleted the whole folder, unrelated files included."""
    _, hist = lenet_report
    out = tmp_path / "r"
    assert run(str(LENET), "--histograms", str(hist), "-o", str(out), "--max-tensors", "2", "--no-progress") == 0
    manifest = json.loads((out / "report-manifest.json").read_text())
    first_figures = sorted(f for f in manifest["files"] if f.startswith("figures/"))
    assert len(first_figures) == 2 and all((out / f).is_file() for f in first_figures)
    (out / "notes.txt").write_text("mine")
    (out / "figures" / "my_plot.png").write_bytes(b"not ours")
    (out / "sub").mkdir()
    (out / "sub" / "keep.txt").write_text("also mine")
    assert run(str(LENET), "--histograms", str(hist), "-o", str(out), "--max-tensors", "1", "--no-progress") == 0
    manifest = json.loads((out / "report-manifest.json").read_text())
    figures = sorted(f for f in manifest["files"] if f.startswith("figures/"))
    assert len(figures) == 1 and (out / figures[0]).is_file()
    assert not any((out / f).exists() for f in first_figures if f not in figures)  # its own stale figures go
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "figures" / "my_plot.png").read_bytes() == b"not ours"
    assert (out / "sub" / "keep.txt").read_text() == "also mine"
    # a file the report would write but did not write (or that changed since) is refused before anything changes
    (out / figures[0]).write_bytes(b"edited by hand")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(TrtCalibError, match=r"would replace figures/.*no earlier report there wrote .*nothing was "
                                            r"changed"):
        run(str(LENET), "--histograms", str(hist), "-o", str(out), "--max-tensors", "1", "--no-progress")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    os.unlink(out / figures[0])
    unlisted = sorted(set(first_figures) - set(figures))[0]  # a figure the next report draws, not listed now
    (out / unlisted).write_bytes(b"someone else's")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(TrtCalibError, match=f"would replace {unlisted}"):
        run(str(LENET), "--histograms", str(hist), "-o", str(out), "--max-tensors", "2", "--no-progress")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no temporary folder left


def test_a_report_written_before_manifests_is_still_recognised_and_replaced(lenet_report, tmp_path):
    from trt_calib.tools.report import report_files

    _, hist = lenet_report
    out = tmp_path / "r"
    assert run(str(LENET), "--histograms", str(hist), "-o", str(out), "--max-tensors", "2", "--no-progress") == 0
    listed = set(report_files(out))
    os.unlink(out / "report-manifest.json")  # as an older trt-calib left it
    assert set(report_files(out)) == listed - {"report-manifest.json"}
    (out / "notes.txt").write_text("mine")
    assert run(str(LENET), "--histograms", str(hist), "-o", str(out), "--max-tensors", "0", "--no-progress") == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert not list((out / "figures").iterdir())


def test_a_failed_report_leaves_the_previous_one_and_no_temporary_folder(lenet_report, tmp_path, monkeypatch):
    import trt_calib.tools.report as report_module

    _, hist = lenet_report
    out = tmp_path / "r"
    assert run(str(LENET), "--histograms", str(hist), "-o", str(out), "--max-tensors", "0", "--no-progress") == 0
    before = (out / "index.html").read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report_module, "render_figure", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        run(str(LENET), "--histograms", str(hist), "-o", str(out), "--no-progress")
    assert (out / "index.html").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_report_options_errors(lenet_report, tmp_path):
    _, hist = lenet_report
    with pytest.raises(TrtCalibError, match="exactly one of"):
        run(str(LENET), "-o", str(tmp_path / "x"))
    with pytest.raises(DataError, match="matches none of the 10 tensors"):
        run(str(LENET), "--histograms", str(hist), "-o", str(tmp_path / "x"), "--tensors", "nothing*")
    with pytest.raises(TrtCalibError, match="does not exist"):
        run(str(LENET), "--histograms", str(hist), "-o", str(tmp_path / "no" / "such" / "dir"))
    assert not (tmp_path / "x").exists()


def test_select_tensors_globs_keep_model_order():
    names = ["data", "conv1", "pool1", "conv2", "ip1"]
    assert select_tensors(names, ["*1", "data"]) == ["data", "conv1", "pool1", "ip1"]
    assert select_tensors(names, None) == names


def test_degenerate_tensors_are_reported_not_fatal(tmp_path):
    zeros, infinite, negative, mixed = AbsHistogram(), SignedHistogram(), SignedHistogram(), AbsHistogram()
    zeros.update(np.zeros(100, np.float32))
    infinite.update(np.array([1.0, np.inf, -2.0], np.float32))
    negative.update(-np.linspace(0.1, 4.0, 500, dtype=np.float32))
    mixed.update(np.linspace(-1.0, 3.0, 500, dtype=np.float32))
    hists = {"zeros": zeros, "inf": infinite, "negative": negative, "mixed": mixed}
    summaries = analyse(hists)
    by = {s.name: s for s in summaries}
    assert by["zeros"].amax == 0 and by["inf"].amax == float("inf")
    assert by["negative"].sign == "non-positive" and by["negative"].choice("uint8-minmax").quantizer.zero_point == 255
    assert by["mixed"].error.mse == quantization_error(mixed, symmetric_quantizer(by["mixed"].amax)).mse
    drawn = write_report(tmp_path / "r", summaries, hists, meta={"model_name": "synthetic"})
    assert drawn == list(hists)
    check_folder(tmp_path / "r")


def test_mixed_abs_histogram_figure_has_two_panels(tmp_path):
    from PIL import Image

    h = AbsHistogram()
    h.update(np.linspace(-1.0, 3.0, 500, dtype=np.float32))
    (summary,) = analyse({"t": h})
    two = render_figure(summary, h, tmp_path / "two.png")
    signed = SignedHistogram()
    signed.update(np.linspace(-1.0, 3.0, 500, dtype=np.float32))
    (summary,) = analyse({"t": signed})
    three = render_figure(summary, signed, tmp_path / "three.png")
    w2, w3 = Image.open(two).size[0], Image.open(three).size[0]
    assert w3 == pytest.approx(1.5 * w2, rel=0.01)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_page_renders_headless_and_its_table_sorts_by_sqnr(lenet_report, tmp_path):
    out, _ = lenet_report
    report = json.loads((out / "report.json").read_text())
    page = tmp_path / "page"
    shutil.copytree(out, page)
    html = (page / "index.html").read_text("utf-8")
    probe = (
        "<script>Array.prototype.filter.call(document.querySelectorAll('#tensors th'),"
        " function (th) { return th.textContent === 'SQNR dB'; })[0].click();"
        "document.body.setAttribute('data-order', Array.prototype.map.call("
        "document.querySelectorAll('#tensors tbody tr'), function (r) { return r.cells[1].getAttribute('data-v'); })"
        ".join('|'));</script></body>"
    )
    (page / "index.html").write_text(html.replace("</body>", probe), encoding="utf-8")
    shot = tmp_path / "shot.png"
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            f"--user-data-dir={tmp_path / 'profile'}"]
    url = (page / "index.html").as_uri()
    subprocess.run(base + [f"--screenshot={shot}", "--window-size=1400,1800", url], check=True, timeout=120,
                   capture_output=True)
    assert shot.read_bytes()[:8] == PNG_MAGIC and shot.stat().st_size > 20_000
    dom = subprocess.run(base + ["--dump-dom", url], check=True, timeout=120, capture_output=True, text=True).stdout
    order = dom.split('data-order="')[1].split('"')[0].split("|")
    expected = [t["name"] for t in sorted(report["tensors"], key=lambda t: t["sqnr_db"])]
    assert order == expected
