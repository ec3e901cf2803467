"""Memory per posting and per RoI code while indexing 20 000 synthetic images' worth of
bags and codes, and no growth afterwards. Self-contained: a smaller measurement of its own
(benchmarks/bench_memory.py is the full-size study, same method). Bounds measured on the
dev machine (x86-64 Linux, glibc) with margin:

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

import ctypes
import gc
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from roiret import InvertedFile
from roiret.search.store import RoIStore

HAVE_PROC = Path("/proc/self/statm").exists()
MiB = 1 << 20
IMAGES, BATCHES, VOCAB, WORDS, K, BITS = 20_000, 5, 100_000, 300, 20, 256


def rss_bytes() -> int:
    """Resident set size now (0 without /proc: the RSS tests are skipped there)."""
    if not HAVE_PROC:
        return 0
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def settle() -> int:
    """Collect garbage and give the C heap's free top back, then read the RSS: successive
    readings compare live memory, not the allocator's caches."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass
    return rss_bytes()


def zipf_bags(rng: np.random.Generator, n: int, vocab: int = VOCAB, words: int = WORDS):
    """CSR bags (offsets, words, counts) of ``n`` images, ``words`` Zipf draws each (repeats summed)."""
    w = (rng.zipf(1.2, size=n * words) - 1) % vocab
    w = rng.permutation(vocab)[w]  # frequent words spread over the vocabulary
    key, counts = np.unique(np.repeat(np.arange(n, dtype=np.int64), words) * vocab + w, return_counts=True)
    doc, word = np.divmod(key, vocab)
    offsets = np.searchsorted(doc, np.arange(n + 1)).astype(np.int64)
    return offsets, word.astype(np.int64), counts.astype(np.float32)


@pytest.fixture(scope="module")
def result():
    rng = np.random.default_rng(0)
    per = IMAGES // BATCHES
    spans = [(lo, lo + per) for lo in range(0, IMAGES, per)]

    # the inverted file, batch by batch (a search merges the pending additions)
    ivf = InvertedFile(VOCAB)
    ivf.search([0], None, 1)
    base = settle()
    ivf_rows = []
    for lo, hi in spans:
        offsets, w, c = zipf_bags(rng, hi - lo)
        ivf.add(np.arange(lo, hi), offsets, w, c)
        ivf.search([0], None, 1)
        del offsets, w, c
        ivf_rows.append(
            SimpleNamespace(images=hi, postings=ivf.num_postings, accounted=ivf.memory_bytes(), rss=settle() - base)
        )

    # searches
    queries = [zipf_bags(rng, 1, words=200)[1] for _ in range(20)]
    for q in queries:  # warm up the thread-local buffers
        ivf.search(q, None, 100)
    r0 = settle()
    for i in range(500):
        ivf.search(queries[i % len(queries)], None, 100)
    search_growth = settle() - r0

    # churn: remove and re-add 5 % of the images; the first round switches the id lookup
    # to a hash index (O(images), once), the next five must not grow
    churn = IMAGES // 20
    offsets, w, c = zipf_bags(rng, churn)

    def churn_round():
        gone = rng.choice(IMAGES, churn, replace=False)
        ivf.remove(gone)
        ivf.add(gone, offsets, w, c)
        ivf.search([0], None, 1)

    churn_round()
    m0, r0 = ivf.memory_bytes(), settle()
    for _ in range(5):
        churn_round()
    churn_growth, churn_accounted = settle() - r0, ivf.memory_bytes() - m0

    # the RoI store, measured apart from the inverted file
    wpc = (BITS + 63) // 64
    store = RoIStore(wpc)
    base = settle()
    store_rows = []
    for lo, hi in spans:
        n = hi - lo
        codes = rng.integers(0, 2**63, size=(n * K, wpc), dtype=np.uint64)
        boxes = rng.random((n * K, 4), dtype=np.float32) * 500
        scores = rng.random(n * K, dtype=np.float32)
        gcodes = rng.integers(0, 2**63, size=(n, wpc), dtype=np.uint64)
        for i in range(n):
            s = slice(i * K, (i + 1) * K)
            store.add(lo + i, codes[s], boxes[s], scores[s], gcodes[i], (500, 375), "")
        del codes, boxes, scores, gcodes
        store_rows.append(
            SimpleNamespace(
                images=hi,
                rois=store.num_rois,
                accounted=store.nbytes(),
                capacity=store.capacity_bytes(),
                rss=settle() - base,
            )
        )
    return SimpleNamespace(
        ivf_rows=ivf_rows,
        store_rows=store_rows,
        search_growth=search_growth,
        churn_growth=churn_growth,
        churn_accounted=churn_accounted,
    )


def test_bytes_per_posting(result):
    for row in result.ivf_rows:
        assert row.accounted <= 8 * row.postings + 17 * (VOCAB + 1) + 40 * row.images, row
    last = result.ivf_rows[-1]
    assert 8.0 <= last.accounted / last.postings <= 8.8 and last.postings > 3_000_000, last
    # the per-posting cost falls towards 8 B as the collection grows: flat, no growth
    per = [r.accounted / r.postings for r in result.ivf_rows]
    assert all(b <= a + 1e-9 for a, b in zip(per, per[1:])), per


def test_bytes_per_roi_code(result):
    words = (BITS + 63) // 64
    for row in result.store_rows:
        assert row.rois == K * row.images
        assert row.accounted == (8 * words + 16 + 4) * row.rois + (8 * 3 + 8 * words) * row.images + 8, row
        assert row.accounted <= row.capacity <= 2 * row.accounted + 4096, row  # arrays grow by doubling
    last = result.store_rows[-1]
    assert abs(last.accounted / last.rois - 54.8) < 1e-3  # 32 + 16 + 4 + 56 / 20 (+ 8 B once)


@pytest.mark.skipif(not HAVE_PROC, reason="reads /proc/self/statm")
def test_resident_memory_matches_the_accounting(result):
    for row in result.ivf_rows:
        assert row.rss <= 1.15 * row.accounted + 4 * MiB, (row, row.rss / row.postings)
    for row in result.store_rows:
        assert row.rss <= row.capacity + 200 * row.images + 4 * MiB, (row, row.rss / row.rois)


@pytest.mark.skipif(not HAVE_PROC, reason="reads /proc/self/statm")
def test_no_growth_after_indexing(result):
    assert result.search_growth <= 1 * MiB
    assert result.churn_growth <= 2 * MiB
    assert result.churn_accounted <= 64 * 1024
