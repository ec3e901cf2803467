"""Memory of the index at scale: bytes per posting (InvertedFile) and per RoI code
(RoIStore), from the objects' own accounting and from the process's resident memory, while
indexing synthetic images in batches — and no growth afterwards (searches, churn).

Run::

    python benchmarks/bench_memory.py                      # 100 000 images, K = 20, 256-bit codes
    python benchmarks/bench_memory.py --images 20000 --batches 5

Each synthetic image has a Zipf-distributed bag of visual words (``--words`` draws from a
``--vocab``-word vocabulary, repeats summed) and ``--K`` RoI codes of ``--bits`` bits with
boxes and scores, as :class:`roiret.Retriever` stores them. After every batch the inverted
file is merged (a search) and the table shows:

* inverted file: ``InvertedFile.memory_bytes() / num_postings`` (postings are 8 bytes;
  the rest is O(vocabulary) + O(images)) and the growth of the resident set since the
  empty inverted file, per posting;
* RoI store (filled afterwards, so that the two are measured apart):
  ``RoIStore.nbytes() / num_rois`` (code + box + score, plus O(images)),
  ``RoIStore.capacity_bytes()`` (the bytes its arrays hold including spare capacity: they
  grow by doubling), and the growth of the resident set, per RoI.

Resident memory is read from ``/proc/self/statm`` after a garbage collection and
``malloc_trim``, so that it shows live memory rather than the allocator's caches.

Then 500 searches, and five rounds of removing and re-adding 5 % of the images, must not
grow the resident set beyond the allocator's noise. ``tests/test_memory.py`` does not run
this script: it asserts the same bounds with its own smaller measurement (20 000 images).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak * (1 if sys.platform == "darwin" else 1024)


def zipf_bags(rng: np.random.Generator, n: int, vocab: int, words: int, a: float = 1.2):
    """CSR bags (offsets, words, counts) of ``n`` images, ``words`` Zipf draws each."""
    w = (rng.zipf(a, size=n * words) - 1) % vocab
    w = rng.permutation(vocab)[w]  # frequent words spread over the vocabulary
    img = np.repeat(np.arange(n), words)
    key = np.unique(img.astype(np.int64) * vocab + w, return_counts=True)
    doc, word = np.divmod(key[0], vocab)
    offsets = np.searchsorted(doc, np.arange(n + 1)).astype(np.int64)
    return offsets, word.astype(np.int64), key[1].astype(np.float32)


def settle() -> int:
    """Free what can be freed (garbage, the C heap's unused top) and return the RSS, so
    that successive readings compare live memory rather than allocator caches."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass
    return rss_bytes()


@dataclass
class IvfRow:
    images: int
    postings: int
    accounted: int  # InvertedFile.memory_bytes()
    rss: int  # RSS growth since the empty inverted file

    @property
    def per_posting(self) -> float:
        return self.accounted / max(self.postings, 1)

    @property
    def rss_per_posting(self) -> float:
        return self.rss / max(self.postings, 1)


@dataclass
class StoreRow:
    images: int
    rois: int
    accounted: int  # RoIStore.nbytes(): the arrays' used part
    capacity: int  # including the spare capacity of the doubling arrays
    rss: int  # RSS growth since the empty store

    @property
    def per_roi(self) -> float:
        return self.accounted / max(self.rois, 1)

    @property
    def capacity_per_roi(self) -> float:
        return self.capacity / max(self.rois, 1)

    @property
    def rss_per_roi(self) -> float:
        return self.rss / max(self.rois, 1)


@dataclass
class Result:
    ivf_rows: List[IvfRow]
    store_rows: List[StoreRow]
    vocab: int
    words_per_code: int
    search_growth: int  # RSS growth over 500 searches (bytes)
    churn_growth: int  # RSS growth over 5 rounds of removing and re-adding 5 % (bytes),
    churn_accounted: int  # and the change of InvertedFile.memory_bytes() (after a first round)
    seconds: float


def run(
    images: int = 100_000,
    batches: int = 20,
    vocab: int = 100_000,
    words: int = 300,
    K: int = 20,
    bits: int = 256,
    seed: int = 0,
    report: Optional[Callable[[str], None]] = print,
) -> Result:
    from roiret import InvertedFile
    from roiret.search.store import RoIStore

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    wpc = (bits + 63) // 64
    per = -(-images // batches)
    spans = [(lo, min(images, lo + per)) for lo in range(0, images, per)]
    say = report or (lambda s: None)
    say(
        f"{images:,} images in {len(spans)} batches; vocabulary {vocab:,}, {words} Zipf draws per image; "
        f"K = {K} RoI codes of {bits} bits per image"
    )

    # -- the inverted file ------------------------------------------------------------------
    ivf = InvertedFile(vocab)
    ivf.search([0], None, 1)
    base = settle()
    ivf_rows: List[IvfRow] = []
    say("")
    say("| images | postings | B / posting (memory_bytes) | B / posting (RSS) |")
    say("|---:|---:|---:|---:|")
    for lo, hi in spans:
        offsets, w, c = zipf_bags(rng, hi - lo, vocab, words)
        ivf.add(np.arange(lo, hi), offsets, w, c)
        ivf.search([0], None, 1)  # merge the pending additions
        del offsets, w, c
        row = IvfRow(hi, ivf.num_postings, ivf.memory_bytes(), settle() - base)
        ivf_rows.append(row)
        say(f"| {row.images:,} | {row.postings:,} | {row.per_posting:.2f} | {row.rss_per_posting:.2f} |")

    queries = [zipf_bags(rng, 1, vocab, 200)[1] for _ in range(20)]
    for q in queries:  # warm up the thread-local buffers
        ivf.search(q, None, 100)
    r0 = settle()
    for i in range(500):
        ivf.search(queries[i % len(queries)], None, 100)
    search_growth = settle() - r0

    churn = max(1, images // 20)
    offsets, w, c = zipf_bags(rng, churn, vocab, words)

    def churn_round():
        gone = rng.choice(images, churn, replace=False)
        ivf.remove(gone)
        ivf.add(gone, offsets, w, c)  # re-added at the end: ids no longer sorted
        ivf.search([0], None, 1)

    m_first = ivf.memory_bytes()
    churn_round()  # the first round switches the id lookup to a hash index (O(images), once)
    switch = ivf.memory_bytes() - m_first
    m0, r0 = ivf.memory_bytes(), settle()
    for _ in range(5):
        churn_round()
    churn_growth, churn_accounted = settle() - r0, ivf.memory_bytes() - m0

    # -- the RoI store ----------------------------------------------------------------------
    store = RoIStore(wpc)
    base = settle()
    store_rows: List[StoreRow] = []
    say("")
    say("| images | RoI codes | B / RoI (nbytes) | B / RoI (with spare capacity) | B / RoI (RSS) |")
    say("|---:|---:|---:|---:|---:|")
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
        row = StoreRow(hi, store.num_rois, store.nbytes(), store.capacity_bytes(), settle() - base)
        store_rows.append(row)
        say(
            f"| {row.images:,} | {row.rois:,} | {row.per_roi:.2f} | {row.capacity_per_roi:.2f} | "
            f"{row.rss_per_roi:.2f} |"
        )

    res = Result(
        ivf_rows, store_rows, vocab, wpc, search_growth, churn_growth, churn_accounted, time.perf_counter() - t0
    )
    li, ls = ivf_rows[-1], store_rows[-1]
    say("")
    say(
        f"Inverted file: {li.per_posting:.2f} B per posting = 8 + (16 B x {vocab:,} words + 16 B x "
        f"{images:,} images) / {li.postings:,} postings; resident {li.rss_per_posting:.2f} B."
    )
    say(
        f"RoI store: {ls.per_roi:.2f} B per RoI = {8 * wpc} code + 16 box + 4 score + "
        f"{8 * 3 + 8 * wpc} B per image / K; resident {ls.rss_per_roi:.2f} B (with the id index and names)."
    )
    say(
        f"RSS growth over 500 searches: {search_growth / 2**20:+.2f} MiB. Removing and re-adding "
        f"{churn:,} images: the first round adds the id hash index ({switch / 2**20:+.2f} MiB, "
        f"{switch / len(ivf):.0f} B per image); 5 more rounds: RSS {churn_growth / 2**20:+.2f} MiB, "
        f"memory_bytes {churn_accounted:+,} B. Total {res.seconds:.1f} s."
    )
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--vocab", type=int, default=100_000)
    p.add_argument("--words", type=int, default=300, help="Zipf draws per image (repeats are summed)")
    p.add_argument("--K", type=int, default=20, help="RoI codes per image")
    p.add_argument("--bits", type=int, default=256, help="bits per RoI code")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    run(a.images, a.batches, a.vocab, a.words, a.K, a.bits, a.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
