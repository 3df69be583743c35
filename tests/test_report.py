"""report: the HTML report folder for LeNet, from data and from saved histograms; atomic writes; figures drawn by the
page from embedded numbers (checked in headless Chromium) or as PNG files; batches in parts; hostile inputs."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import shutil
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from trt_calib.cli.report import register
from trt_calib.errors import DataError, TrtCalibError
from trt_calib.core.histogram import AbsHistogram
from trt_calib.tools.report import analyse, render_figure, select_tensors, write_report
from trt_calib.core.signs import SignedHistogram, load_any_histograms, quantization_error, symmetric_quantizer

from conftest import LENET, LENET_BATCHES, TRT_TABLE

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["report", *argv])
    return args.handler(args)


class _Page(HTMLParser):
    """Collects image sources, figure slots, ids, table rows and checks that tags close as they opened."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.figures: list[str] = []  # ids of the slots the page's script draws figures into
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.stack: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        if tag == "div" and a.get("class") == "figure":
            self.figures.append(a["id"])
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
    assert len(page.figures) == (len(report["drawn"]) if report["figures"] == "inline" else 0)
    return report, page


def embedded_figures(folder: Path) -> list[dict]:
    """The figures' data as the page embeds it, unpacked as the page's script unpacks it (scalars and arrays)."""
    text = (folder / "index.html").read_text("utf-8")
    found = re.search(r'<script type="application/json" id="trt-calib-figure-data">(.*?)</script>', text, re.S)
    embedded = json.loads(found.group(1))
    data = zlib.decompress(base64.b64decode(embedded["data"]))
    figures = []
    for f in embedded["figures"]:
        blob, off = data[f["offset"] : f["offset"] + f["size"]], 0
        counts = np.dtype("<u4") if f["counts"] == "u32" else np.dtype("<f8")

        def take(dtype, n):
            nonlocal off
            a = np.frombuffer(blob, dtype, n, off)
            off += n * dtype.itemsize
            return a

        f["arrays"] = {"counts": take(counts, f["bins"]), "negative": take(counts, f["bins"]) if f["signed"] else None,
                       "kl": take(np.dtype("<f4"), f["kl"]["n"]),
                       "skl": take(np.dtype("<f4"), f["skl"]["n"]) if f["skl"] else None}
        assert off == len(blob)
        figures.append(f)
    return figures


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
    # 3 figures: the 3 lowest SQNR, in model order, drawn by the page from the numbers it embeds (no image file)
    ranked = sorted(tensors.values(), key=lambda t: t["sqnr_db"])
    assert set(report["drawn"]) == {t["name"] for t in ranked[:3]}
    assert report["figures"] == "inline" and page.images == [] and not (out / "figures").exists()
    assert [f["name"] for f in embedded_figures(out)] == report["drawn"] and len(page.figures) == 3
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
    png = ("--figures", "png", "--workers", "1")
    assert run(str(LENET), "--histograms", str(hist), "-o", str(out), "--max-tensors", "2", "--no-progress", *png) == 0
    manifest = json.loads((out / "report-manifest.json").read_text())
    first_figures = sorted(f for f in manifest["files"] if f.startswith("figures/"))
    assert len(first_figures) == 2 and all((out / f).is_file() for f in first_figures)
    (out / "notes.txt").write_text("mine")
    (out / "figures" / "my_plot.png").write_bytes(b"not ours")
    (out / "sub").mkdir()
    (out / "sub" / "keep.txt").write_text("also mine")
    assert run(str(LENET), "--histograms", str(hist), "-o", str(out), "--max-tensors", "1", "--no-progress", *png) == 0
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
        run(str(LENET), "--histograms", str(hist), "-o", str(out), "--max-tensors", "1", "--no-progress", *png)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    os.unlink(out / figures[0])
    unlisted = sorted(set(first_figures) - set(figures))[0]  # a figure the next report draws, not listed now
    (out / unlisted).write_bytes(b"someone else's")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(TrtCalibError, match=f"would replace {unlisted}"):
        run(str(LENET), "--histograms", str(hist), "-o", str(out), "--max-tensors", "2", "--no-progress", *png)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no temporary folder left
    # an inline report over a PNG one deletes the figures the PNG report wrote, and only those
    os.unlink(out / unlisted)
    assert run(str(LENET), "--histograms", str(hist), "-o", str(out), "--max-tensors", "2", "--no-progress", *png) == 0
    assert len(list((out / "figures").iterdir())) == 3
    assert run(str(LENET), "--histograms", str(hist), "-o", str(out), "--max-tensors", "2", "--no-progress") == 0
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["my_plot.png"]
    assert json.loads((out / "report.json").read_text())["figures"] == "inline"


def test_a_report_written_before_manifests_is_still_recognised_and_replaced(lenet_report, tmp_path):
    from trt_calib.tools.report import report_files

    _, hist = lenet_report
    out = tmp_path / "r"
    assert run(str(LENET), "--histograms", str(hist), "-o", str(out), "--max-tensors", "2", "--no-progress",
               "--figures", "png") == 0
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

    monkeypatch.setattr(report_module, "_figure", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        run(str(LENET), "--histograms", str(hist), "-o", str(out), "--no-progress", "--figures", "png", "--workers", "1")
    import trt_calib.tools.report_figures as figures_module

    monkeypatch.setattr(figures_module, "figure_payload", boom)
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


# ---------------------------------------------------------------------------------------------- the page in a browser
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by Playwright (never a browser Playwright downloads)."""
    from playwright.sync_api import sync_playwright  # the [test] extra: a broken install fails, it does not skip

    executable = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    if executable is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium): the page was not opened in a "
                    "browser")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield b
        b.close()


def open_page(browser, folder: Path):
    """The report opened from disk, every figure drawn; fails on a script error or any request that leaves the file."""
    page = browser.new_page(viewport={"width": 1300, "height": 900}, device_scale_factor=1)
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("request", lambda r: None if r.url.startswith(("file:", "blob:", "data:")) else problems.append(r.url))
    page.goto((folder / "index.html").as_uri())
    page.wait_for_selector("body[data-figures-done]", timeout=60_000)
    assert problems == []
    return page


@pytest.fixture(scope="module")
def full_lenet_report(lenet_report, tmp_path_factory):
    """Every LeNet tensor drawn, from the signed histograms of the data (three panels each)."""
    _, hist = lenet_report
    out = tmp_path_factory.mktemp("full") / "r"
    assert run(str(LENET), "--histograms", str(hist), "-o", str(out), "--trt-version", "7.0.0", "--no-progress") == 0
    return out, load_any_histograms(hist)


def test_page_draws_every_figure_from_the_embedded_numbers(browser, full_lenet_report):
    out, hists = full_lenet_report
    report = json.loads((out / "report.json").read_text())
    summaries = {s.name: s for s in analyse(hists, model=LENET, trt_version="7.0.0")}
    page = open_page(browser, out)
    assert page.get_attribute("body", "data-figures-done") == "ok"
    assert page.locator(".figure svg").count() == len(report["drawn"]) == 10
    assert "10 figures drawn in this page" in page.inner_text("#figure-status")
    drawn = page.evaluate("""() => Object.values(window.trtCalibFigures).map(f => ({
        name: f.figure.name, counts: Array.from(f.data.counts), negative: Array.from(f.data.negative),
        kl: Array.from(f.data.kl, v => isFinite(v) ? v : String(v)), panels: f.layout.map(e => e.kind)}))""")
    assert [d["name"] for d in drawn] == report["drawn"]
    for d in drawn:
        h, s = hists[d["name"]], summaries[d["name"]]
        assert d["counts"] == h.counts.tolist() and d["negative"] == h.negative.tolist()  # what the browser decoded
        expected = [float(v) if np.isfinite(v) else str(float(v)).replace("inf", "Infinity")
                    for v in s.entropy.divergence.astype(np.float32)]
        assert d["kl"] == expected
        assert d["panels"] == ["abs", "kl", "signed"]
    page.close()


def test_the_threshold_line_is_drawn_where_the_amax_is(browser, full_lenet_report):
    """Pixels, as Chromium rendered them: in conv1's |x| panel, TensorRT's red line stands at entropy2's amax."""
    from PIL import Image
    import io

    out, hists = full_lenet_report
    conv1 = next(t for t in json.loads((out / "report.json").read_text())["tensors"] if t["name"] == "conv1")
    page = open_page(browser, out)
    figure = page.locator("#fig-1 svg")
    figure.scroll_into_view_if_needed()
    layout = page.evaluate("window.trtCalibFigures['fig-1'].layout[0]")
    shot = Image.open(io.BytesIO(figure.screenshot())).convert("RGB")
    scale = shot.size[0] / page.evaluate("window.trtCalibFigures['fig-1'].width")
    lo, hi = layout["xd"]
    expected = (layout["x"] + (conv1["amax"] - lo) / (hi - lo) * layout["w"]) * scale
    rows = range(int((layout["y"] + 0.6 * layout["h"]) * scale), int((layout["y"] + layout["h"]) * scale) - 2)
    red = sorted({x for x in range(int(layout["x"] * scale) + 2, int((layout["x"] + layout["w"]) * scale) - 2)
                  for y in rows if _near(shot.getpixel((x, y)), (214, 39, 40))})
    assert red and all(abs(x - expected) <= 2 for x in red), (expected, red)
    # the value under the pointer: the count of the bin there, as the histogram holds it
    box = figure.bounding_box()
    w = hists["conv1"].bin_width
    page.mouse.move(box["x"] + (layout["x"] + (100 * w - lo) / (hi - lo) * layout["w"]) * box["width"] / 1100,
                    box["y"] + box["height"] / 2)
    found = re.fullmatch(r"\|x\| in \[(\S+), (\S+)\) \(bin (\d+)\): ([\d,]+) values", page.inner_text("#fig-1 .readout"))
    i = int(found[3])
    per_pixel = (hi - lo) / layout["w"] / w  # bins under one CSS pixel
    assert abs(i - 100) <= per_pixel + 1 and int(found[4].replace(",", "")) == hists["conv1"].counts[i]
    assert float(found[1]) == pytest.approx(i * w, rel=1e-3) and float(found[2]) == pytest.approx((i + 1) * w, rel=1e-3)
    page.close()


def _near(pixel, color, tolerance=40):
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, color))


def test_table_sorts_by_sqnr_in_the_browser(browser, lenet_report):
    out, _ = lenet_report
    report = json.loads((out / "report.json").read_text())
    page = open_page(browser, out)
    page.locator("#tensors th", has_text="SQNR dB").first.click()
    order = page.evaluate("Array.from(document.querySelectorAll('#tensors tbody tr'), r => r.cells[1].dataset.v)")
    assert order == [t["name"] for t in sorted(report["tensors"], key=lambda t: t["sqnr_db"])]
    page.close()


def test_degenerate_tensors_draw_without_a_script_error(browser, tmp_path):
    zeros, infinite, one_sided = AbsHistogram(), SignedHistogram(), AbsHistogram()
    zeros.update(np.zeros(100, np.float32))
    infinite.update(np.array([1.0, np.inf, -2.0], np.float32))
    one_sided.update(np.linspace(0.0, 3.0, 500, dtype=np.float32))
    empty = SignedHistogram()
    odd = "a</script><!--<script>b&c"  # a name that would end or reopen a script element if pasted as it is
    hists = {"zeros": zeros, "inf": infinite, "one_sided": one_sided, odd: empty}
    write_report(tmp_path / "r", analyse(hists), hists, meta={"model_name": "synthetic"})
    page = open_page(browser, tmp_path / "r")
    assert page.get_attribute("body", "data-figures-done") == "ok" and page.locator(".figure svg").count() == 4
    panels = page.evaluate("Object.values(window.trtCalibFigures).map(f => [f.figure.name, f.layout.map(e => e.kind)])")
    assert panels == [["zeros", ["abs", "kl", "signed"]], ["inf", ["abs", "kl", "signed"]],
                      ["one_sided", ["abs", "kl", "signed"]], [odd, ["abs", "kl", "signed"]]]
    assert page.locator("#fig-3 svg text").first.text_content() == odd  # drawn as text, not markup
    assert "no finite divergence" in page.inner_html("#fig-1")  # inf: TensorRT's search has no curve
    page.close()


# ---------------------------------------------------------------------------------------------- figures
def test_inline_figures_carry_the_histograms_and_curves_exactly(full_lenet_report):
    out, hists = full_lenet_report
    summaries = {s.name: s for s in analyse(hists, model=LENET, trt_version="7.0.0")}
    for f in embedded_figures(out):
        h, s = hists[f["name"]], summaries[f["name"]]
        np.testing.assert_array_equal(f["arrays"]["counts"], h.counts)
        np.testing.assert_array_equal(f["arrays"]["negative"], h.negative)
        np.testing.assert_array_equal(f["arrays"]["kl"], s.entropy.divergence.astype(np.float32))
        assert f["width"] == h.bin_width and f["kl"]["i"] == s.entropy.index and f["amax"] == s.amax
        drawn = {n: v for n, v in s.thresholds.items() if n in ("entropy2", "minmax", "percentile", "mse")}
        assert dict((t[0], t[1]) for t in f["thresholds"]) == drawn and len(drawn) == 4
        if s.signed_entropy is not None:
            np.testing.assert_array_equal(f["arrays"]["skl"], s.signed_entropy.divergence.astype(np.float32))
        assert f["tied"] == ([s.tied_to, s.amax] if s.tied_to else None)


def test_inline_report_draws_nothing_with_matplotlib(lenet_report, tmp_path, monkeypatch):
    """Issue 20: matplotlib cost 0.2 s of CPU per figure, and the page of a 253-tensor model took 10 minutes."""
    import trt_calib.tools.report as report_module

    _, hist = lenet_report
    monkeypatch.setattr(report_module, "_figure", lambda *a, **k: pytest.fail("drew a figure with matplotlib"))
    assert run(str(LENET), "--histograms", str(hist), "-o", str(tmp_path / "r"), "--no-progress") == 0
    assert len(embedded_figures(tmp_path / "r")) == 10


def test_png_figures_drawn_in_worker_processes_are_those_drawn_here(lenet_report, tmp_path):
    from trt_calib.tools.report import figure_png

    _, hist = lenet_report
    out = tmp_path / "r"
    assert run(str(LENET), "--histograms", str(hist), "-o", str(out), "--figures", "png", "--workers", "2",
               "--tensors", "conv1,ip1,ip2", "--no-progress") == 0
    report, page = check_folder(out)
    assert report["figures"] == "png" and len(page.images) == 3 and page.figures == []
    hists = load_any_histograms(hist)
    summaries = {s.name: s for s in analyse(hists)}
    for t in report["tensors"]:
        assert (out / t["figure"]).read_bytes() == figure_png((summaries[t["name"]], hists[t["name"]]))
    with pytest.raises(TrtCalibError, match="--workers goes with --figures png"):
        run(str(LENET), "--histograms", str(hist), "-o", str(tmp_path / "x"), "--workers", "2")


# ---------------------------------------------------------------------------------------------- memory
def test_report_data_runs_batches_in_parts_under_the_activation_budget(tmp_path, monkeypatch):
    """Issue 20: `report --data` ran whole batches whatever their size; now in parts, as calibrate, same histograms."""
    import runpy

    from trt_calib.ort.collect import collect_signed
    from trt_calib.ort.runner import Runner

    batches = list(runpy.run_path(str(LENET_BATCHES))["load_data"]())[:3]
    whole, _ = collect_signed(LENET, batches, max_activation_mb=1024)
    sizes: list[int] = []
    real_run = Runner.run
    monkeypatch.setattr(Runner, "run", lambda self, part: sizes.append(len(part["data"])) or real_run(self, part))
    # LeNet holds 0.08 MB of activations per sample: 0.2 MB is parts of 2 (parts of 1 sample are avoided:
    # onnxruntime computes a batch of one by another kernel, a few ULP away, in calibrate too)
    parts, count = collect_signed(LENET, batches, max_activation_mb=0.2)
    assert count == 3 and max(sizes) == 2 and len(sizes) == 25 * 4  # the first batch twice: its max, then its bins
    for name, h in whole.items():
        p = parts[name]
        np.testing.assert_array_equal(p.counts, h.counts)
        np.testing.assert_array_equal(p.negative, h.negative)
        assert (p.num_zero, p.range, p.min, p.max, p.num_values) == (h.num_zero, h.range, h.min, h.max, h.num_values)


def test_report_cli_takes_the_activation_budget(lenet_report, tmp_path):
    first, _ = lenet_report
    out = tmp_path / "r"
    assert run(str(LENET), "--data", str(LENET_BATCHES), "-o", str(out), "--trt-version", "7.0.0", "--max-tensors", "3",
               "--no-progress", "--max-activation-mb", "0.2") == 0
    assert json.loads((out / "report.json").read_text())["tensors"] == \
        json.loads((first / "report.json").read_text())["tensors"]
    with pytest.raises(SystemExit):
        run(str(LENET), "--data", str(LENET_BATCHES), "-o", str(tmp_path / "x"), "--max-activation-mb", "0")


# ---------------------------------------------------------------------------------------------- sections
def _sens_json(path: Path, **change) -> Path:
    """A SENS.json of LeNet's four units, as `trt-calib sensitivity` writes one (fields `load_sensitivity` reads)."""
    units = [{"node": n, "op": op, "alone": 0.01 * k, "excluded": 0.1 - 0.01 * k, "weights_only": 0.001 * k,
              "activations_only": 0.002 * k, "rank": k}
             for k, (n, op) in enumerate([("conv1", "Conv"), ("conv2", "Conv"), ("ip1", "Gemm"), ("ip2", "Gemm")], 1)]
    doc = {"metric": "kl", "baseline_error": 0.1, "units": units, "max_keep": 2, "chosen": {"k": 1, "why": "test"},
           "greedy": [{"k": k, "kept_in_float": [u["node"] for u in units[:k]], "error": 0.1 - 0.02 * k}
                      for k in range(3)], **change}
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def stab_file(tmp_path_factory):
    from trt_calib.cli import main

    out = tmp_path_factory.mktemp("stab") / "stab.json"
    assert main(["stability", str(LENET), "--data", str(LENET_BATCHES), "-o", str(out), "--orders", "1",
                 "--batch-sizes", "25", "--fractions", "0.5,1", "--executor", "serial", "--tolerance", "1",
                 "--no-end-to-end", "-q"]) == 1  # exit 1: unstable tensors (ip1, ip2)
    return out


def test_a_page_of_sections_only_counts_the_figures_it_drew(stab_file, tmp_path, capsys, caplog):
    """Issue 22 item 10: `report --stability` alone printed "(0 tensors, 0 figures)" after drawing two figures."""
    from trt_calib.cli import main

    caplog.set_level(logging.INFO, logger="trt_calib.tools.report")
    out = tmp_path / "stab"
    assert main(["report", str(LENET), "--stability", str(stab_file), "-o", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["figures"] == 2 and printed["sections"] == ["stability"] and printed["tensors"] == 0
    assert "(the stability section, 2 figures)" in caplog.text and "0 tensors" not in caplog.text
    caplog.clear()
    both = tmp_path / "both"
    assert main(["report", str(LENET), "--sensitivity", str(_sens_json(tmp_path / "s.json")), "--stability",
                 str(stab_file), "-o", str(both), "-q"]) == 0
    assert "(the sensitivity and stability sections, 4 figures)" in caplog.text
    assert len(list((both / "figures").iterdir())) == 4


def _mutations(record: dict) -> list:
    """STAB.json with trt-calib's format tag and one field broken, each a way the report used to crash on."""
    def edit(fn):
        r = json.loads(json.dumps(record))
        fn(r)
        return r

    return [
        edit(lambda r: r.update(tensors=5)),
        edit(lambda r: r["tensors"].__setitem__(0, "conv1")),
        edit(lambda r: r["tensors"][0].pop("amax")),
        edit(lambda r: r["tensors"][0].update(amax=[])),
        edit(lambda r: r["tensors"][0].update(base_amax=0)),
        edit(lambda r: r["tensors"][0].update(range_percent="wide")),
        edit(lambda r: r["variants"][1].update(kind="sideways")),
        edit(lambda r: r.update(spread_variants=[99])),
        edit(lambda r: r.update(summary=[])),
        edit(lambda r: r.pop("summary")),
        edit(lambda r: r["tensors"][0]["settle"].update(amax=None)),
        edit(lambda r: r.update(end_to_end={"metric": "mean_kl", "variants": [{}], "on": "x", "output": "y"})),
        edit(lambda r: r.update(tolerance_percent=None)),
        edit(lambda r: r.update(variants={})),
    ]


def test_a_malformed_stab_json_with_the_right_format_tag_is_one_line_exit_2(stab_file, tmp_path, capsys):
    """Issue 23 item 17: such files made `report --stability` exit 70."""
    from trt_calib.cli import main

    record = json.loads(stab_file.read_text())
    for k, broken in enumerate(_mutations(record)):
        path = tmp_path / f"stab{k}.json"
        path.write_text(json.dumps(broken))
        code = main(["report", str(LENET), "--stability", str(path), "-o", str(tmp_path / f"r{k}")])
        err = capsys.readouterr().err.strip()
        assert code == 2, (k, err)
        assert len(err.splitlines()) == 1 and str(path) in err, (k, err)
        assert not (tmp_path / f"r{k}").exists()


@pytest.mark.parametrize("kind", ["stability", "sensitivity"])
@pytest.mark.parametrize("depth", [50_000, 900])
def test_deeply_nested_json_is_refused_in_one_line(tmp_path, capsys, kind, depth):
    """Issue 23 item 17: nesting past the recursion limit made report, quantize and build exit 70 (RecursionError);
    nesting just under it parsed, then broke writing report.json."""
    from trt_calib.cli import main

    path = tmp_path / "deep.json"
    tag = {"format": "trt-calib-stability/1"} if kind == "stability" else json.loads(_sens_json(path).read_text())
    path.write_text(json.dumps(tag)[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}")
    code = main(["report", str(LENET), f"--{kind}", str(path), "-o", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "nested" in err, err
    if kind == "sensitivity":  # quantize reads SENS.json through the same loader
        code = main(["quantize", str(LENET), "--from-cache", str(TRT_TABLE), "-o", str(tmp_path / "q.onnx"),
                     "--exclude-nodes-from", str(path)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "nested" in err, err


# ---------------------------------------------------------------------------------------------- symlinks
def test_a_manifest_entry_reached_through_a_symlinked_folder_is_never_deleted(lenet_report, tmp_path, caplog):
    """Issue 23 item 4: `report -o DIR` deleted a file outside DIR that a manifest entry reached through a symlink."""
    _, hist = lenet_report
    out, elsewhere = tmp_path / "r", tmp_path / "elsewhere"
    assert run(str(LENET), "--histograms", str(hist), "-o", str(out), "--max-tensors", "2", "--no-progress",
               "--figures", "png") == 0
    figures = sorted(p.name for p in (out / "figures").iterdir())
    shutil.move(out / "figures", elsewhere)  # someone keeps their own copies there, and links them in
    (out / "figures").symlink_to(elsewhere, target_is_directory=True)
    # a hand-made entry under a symlink to a folder that holds other files: its hash matches, it is still not ours
    (out / "outside").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "secret.txt").write_text("not the report's")
    from trt_calib.tools.provenance import file_sha256

    manifest = json.loads((out / "report-manifest.json").read_text())
    manifest["files"]["outside/secret.txt"] = file_sha256(elsewhere / "secret.txt")
    (out / "report-manifest.json").write_text(json.dumps(manifest))
    assert run(str(LENET), "--histograms", str(hist), "-o", str(out), "--max-tensors", "2", "--no-progress") == 0
    assert sorted(p.name for p in elsewhere.iterdir()) == sorted([*figures, "secret.txt"])
    assert "reached through a symlink" in caplog.text
    # a report that would write its figures through the symlink is refused, and nothing changes
    before = sorted(p.name for p in elsewhere.iterdir())
    with pytest.raises(TrtCalibError, match="through a symlink"):
        run(str(LENET), "--histograms", str(hist), "-o", str(out), "--max-tensors", "3", "--no-progress",
            "--figures", "png", "--workers", "1")
    assert sorted(p.name for p in elsewhere.iterdir()) == before
