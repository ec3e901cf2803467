"""The Hamming-embedded inverted file (ASMK*) against the NumPy implementation a user would
otherwise write — the style of the published ``asmk`` package: per query term, gather the
word's postings, popcount of the XOR (``np.bitwise_count``), the selective kernel, and
``np.add.at`` into the image scores; then an argsort for the top N. Both single-threaded,
on the same seeded data; the top-N ids are asserted identical before timing.

Run once per SIMD level (the level is fixed at import by ``ROIRET_SIMD``):

    ROIRET_SIMD=avx512 pytest benchmarks/bench_embedded.py --benchmark-only \\
        --benchmark-json=out/asmk-avx512.json
    python benchmarks/report.py out/asmk-avx512.json

Groups ``asmk-<V>-<bits>``: 5 000 images x 1 000 distinct words each out of V = 20 000 or
8 000 words (250 or 625 postings per word), 64- or 128-bit signatures; the query is one
image's 1 000 (word, signature) pairs with 5 % of the signature bits flipped, weights
1 / sqrt(sum of idf), alpha = 3, tau = 0, top 1 000. ``asmk-20k-64b-q10``: an expanded query
— 10 images' pairs so altered, each weighted by its own normalisation over 10 — whose words
repeat across the images (what query expansion searches).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import roiret

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _reference import AsmkIndexRef, asmk_index_ref, asmk_scores_ref  # noqa: E402

N_IMAGES, PER_IMAGE, TOP, ALPHA, TAU = 5_000, 1_000, 1_000, 3.0, 0.0


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    roiret.set_num_threads(1)
    yield
    roiret.set_num_threads(None)


def numpy_search(index: AsmkIndexRef, q_words, q_sigs, q_weights, top):
    """The NumPy peer: scores of every image, then the top N (descending, stable)."""
    scores = asmk_scores_ref(index, q_words, q_sigs, q_weights, ALPHA, TAU)
    order = np.argsort(-scores, kind="stable")[:top]
    return order, scores[order]


@pytest.fixture(
    scope="module",
    params=[(20_000, 64, 1), (20_000, 128, 1), (8_000, 64, 1), (8_000, 128, 1), (20_000, 64, 10)],
    ids=str,
)
def asmk_case(request):
    vocab, nbits, n_query = request.param
    rng = np.random.default_rng(vocab + nbits)
    W = (nbits + 63) // 64
    words = np.concatenate([rng.choice(vocab, PER_IMAGE, replace=False) for _ in range(N_IMAGES)]).astype(np.int64)
    offsets = np.arange(0, N_IMAGES * PER_IMAGE + 1, PER_IMAGE, dtype=np.int64)
    sigs = rng.integers(0, 2**64, size=(len(words), W), dtype=np.uint64)
    f = roiret.EmbeddedInvertedFile(vocab, nbits)
    f.add(np.arange(N_IMAGES), offsets, words, sigs)
    index = asmk_index_ref(offsets, words, sigs, nbits, vocab)
    d = 17  # the query: images d .. d + n_query - 1, 5 % of the signature bits flipped
    sl = slice(offsets[d], offsets[d + n_query])
    flips = (rng.random((n_query * PER_IMAGE, W, 64)) < 0.05).astype(np.uint64) << np.arange(64, dtype=np.uint64)
    q_sigs = sigs[sl] ^ np.bitwise_or.reduce(flips, axis=2)
    q_words = words[sl]
    idf = f.idf()
    q_weights = np.concatenate(
        [np.full(PER_IMAGE, 1 / np.sqrt(idf[w].sum()) / n_query, np.float32) for w in q_words.reshape(n_query, -1)]
    )
    query = (q_words, q_sigs, q_weights)
    ids, scores = f.search(*query, top=TOP, alpha=ALPHA, tau=TAU, threads=1)
    ref_ids, ref_scores = numpy_search(index, *query, TOP)
    assert d <= ids[0] < d + n_query
    np.testing.assert_array_equal(ids, ref_ids)  # identical top N (ids = image indices here)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-6)
    return f"asmk-{vocab // 1000}k-{nbits}b" + (f"-q{n_query}" if n_query > 1 else ""), f, index, query


@pytest.mark.parametrize("lib", ["roiret", "numpy"])
def test_asmk_search(benchmark, asmk_case, lib):
    name, f, index, query = asmk_case
    benchmark.group = name
    nnz = f.num_postings
    if lib == "roiret":
        benchmark.extra_info.update(
            lib=lib,
            peer="numpy",
            simd=roiret.simd_level(),
            bytes_per_posting=f.memory_bytes() / nnz,
            postings_scanned=int(f.document_frequencies()[query[0]].sum()),
        )
        benchmark(f.search, *query, top=TOP, alpha=ALPHA, tau=TAU, threads=1)
    else:
        benchmark.extra_info.update(lib=lib, bytes_per_posting=(index.docs.nbytes + index.sigs.nbytes) / nnz)
        benchmark(numpy_search, index, *query, TOP)
