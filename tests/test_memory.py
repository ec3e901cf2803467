"""Memory per posting and per RoI code while indexing 20 000 synthetic images' worth of
bags and codes (the light version of benchmarks/bench_memory.py, same code), and no
growth afterwards. Bounds measured on the dev machine (x86-64 Linux, glibc) with margin:

* inverted file: memory_bytes 8.69 B / posting at the end (8 + O(vocabulary + images)),
  resident 9.15 B; asserted: <= 8 B/posting + 17 B/word + 40 B/image, resident within
  15 % + 4 MiB of that;
* RoI store (K = 20, 256-bit codes): exactly 52 B / RoI + 56 B / image (54.80 B / RoI),
  resident 62-82 B / RoI depending on where the doubling arrays are; asserted: resident
  <= capacity + 200 B / image (id index) + 4 MiB;
* 500 searches: +0.00 MiB; 5 rounds of removing and re-adding 5 %: +0.03 MiB resident,
  +11.7 kB memory_bytes; asserted: <= 1 MiB, <= 2 MiB, <= 64 kB.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_memory", Path(__file__).resolve().parent.parent / "benchmarks" / "bench_memory.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("bench_memory", bench)  # dataclasses look their module up
_spec.loader.exec_module(bench)

HAVE_PROC = Path("/proc/self/statm").exists()
MiB = 1 << 20
IMAGES, VOCAB, K, BITS = 20_000, 100_000, 20, 256


@pytest.fixture(scope="module")
def result():
    return bench.run(images=IMAGES, batches=5, vocab=VOCAB, words=300, K=K, bits=BITS, seed=0, report=None)


def test_bytes_per_posting(result):
    for row in result.ivf_rows:
        assert row.accounted <= 8 * row.postings + 17 * (VOCAB + 1) + 40 * row.images, row
    last = result.ivf_rows[-1]
    assert 8.0 <= last.per_posting <= 8.8 and last.postings > 3_000_000
    # the per-posting cost falls towards 8 B as the collection grows: flat, no growth
    per = [r.per_posting for r in result.ivf_rows]
    assert all(b <= a + 1e-9 for a, b in zip(per, per[1:])), per


def test_bytes_per_roi_code(result):
    words = (BITS + 63) // 64
    for row in result.store_rows:
        assert row.rois == K * row.images
        assert row.accounted == (8 * words + 16 + 4) * row.rois + (8 * 3 + 8 * words) * row.images + 8, row
        assert row.capacity <= 2 * row.accounted + 4096  # arrays grow by doubling
    assert abs(result.store_rows[-1].per_roi - 54.8) < 1e-3  # 32 + 16 + 4 + 56 / 20 (+ 8 B once)


@pytest.mark.skipif(not HAVE_PROC, reason="reads /proc/self/statm")
def test_resident_memory_matches_the_accounting(result):
    for row in result.ivf_rows:
        assert row.rss <= 1.15 * row.accounted + 4 * MiB, (row, row.rss_per_posting)
    for row in result.store_rows:
        assert row.rss <= row.capacity + 200 * row.images + 4 * MiB, (row, row.rss_per_roi)


@pytest.mark.skipif(not HAVE_PROC, reason="reads /proc/self/statm")
def test_no_growth_after_indexing(result):
    assert result.search_growth <= 1 * MiB
    assert result.churn_growth <= 2 * MiB
    assert result.churn_accounted <= 64 * 1024
