"""Shared fixtures: where the read-only corpus lives (../shared beside the checkout, as in CI)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CACHES = SHARED / "corpus" / "caches"


def real_caches() -> list[Path]:
    """The real TensorRT caches of the corpus (empty list when ../shared is absent)."""
    if not CACHES.is_dir():
        return []
    return sorted(p for p in CACHES.iterdir() if p.is_file() and p.name != "README.md")


@pytest.fixture
def corpus_caches() -> list[Path]:
    caches = real_caches()
    if not caches:
        pytest.skip(f"corpus of real caches not found at {CACHES}")
    return caches
