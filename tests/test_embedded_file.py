"""EmbeddedInvertedFile (ASMK*): scores against a NumPy oracle at every SIMD level,
incremental updates, shards, persistence and its damage, validation, threads."""

from __future__ import annotations

import struct
import threading
import zlib

import numpy as np
import pytest

import roiret
from _damage import assert_refuses_flips, assert_refuses_truncations
from _gil import assert_releases_gil
from _reference import asmk_index_ref, asmk_scores_ref, select_terms_ref, signature_mask, top_ref
from roiret import EmbeddedInvertedFile, IndexFormatError, _core

LEVELS = roiret.supported_simd_levels()
NBITS = [1, 63, 64, 100, 128, 256]
KERNELS = [(3.0, 0.0), (1.0, -0.5), (2.0, 0.3), (0.5, -1.0)]  # (alpha, tau)
HEADER = 80
ALIGN = 64  # format 2: the signatures section starts at a multiple of 64 bytes


def layout(blob):
    """Section boundaries of a saved file: header end, ids, lengths, documents, padding,
    signatures (format 2; version 1 has no padding)."""
    version = struct.unpack("<I", blob[8:12])[0]
    V, N, nnz = struct.unpack("<QQQ", blob[16:40])
    W = words_of(struct.unpack("<I", blob[44:48])[0])
    docs_end = HEADER + 8 * N + 4 * V + 4 * nnz
    pad = -docs_end % ALIGN if version >= 2 else 0
    return [HEADER, HEADER + 8 * N, HEADER + 8 * N + 4 * V, docs_end, docs_end + pad, docs_end + pad + 8 * W * nnz]


def as_version_1(blob):
    """The same index in format version 1 (no padding before the signatures), resealed."""
    at = layout(blob)
    b = bytearray(blob[: at[3]] + blob[at[4] :])
    b[8:12] = struct.pack("<I", 1)
    b[76:80] = struct.pack("<I", zlib.crc32(bytes(b[:76])))
    return bytes(b)


@pytest.fixture(params=[False, True], ids=["read", "mapped"])
def mmap(request):
    """Load files both ways: signatures read into memory, or memory-mapped."""
    return request.param


@pytest.fixture(params=LEVELS)
def level(request):
    """Run the test with the kernels of each SIMD level this CPU supports."""
    previous = roiret.set_simd_level(request.param)
    yield request.param
    roiret.set_simd_level(previous)


def words_of(nbits):
    return (nbits + 63) // 64


def random_images(rng, n, vocab, nbits, mean_words=12):
    """CSR images: distinct words per image in random order, signatures with random bits
    beyond nbits (they must be ignored)."""
    lengths = np.minimum(rng.poisson(mean_words, size=n) + 1, vocab)
    keys = rng.random((n, vocab)).argsort(axis=1)  # a random permutation of the words per image
    words = np.concatenate([keys[i, : lengths[i]] for i in range(n)]).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    sigs = rng.integers(0, 2**64, size=(len(words), words_of(nbits)), dtype=np.uint64)
    return offsets, words, sigs


def random_query(rng, m, vocab, nbits):
    """Terms with repeated words, random signatures, weights (some zero)."""
    words = rng.integers(0, vocab, size=m)
    sigs = rng.integers(0, 2**64, size=(m, words_of(nbits)), dtype=np.uint64)
    weights = rng.choice([0.0, 0.5, 1.0, 2.0], size=m).astype(np.float32)
    return words, sigs, weights


def whole_and_shards(rng, vocab, nbits, cuts, mean_words):
    """One file of cuts[-1] random images (ids 0…), shards holding them split at cuts, and
    the images (offsets, words, signatures, ids)."""
    n = cuts[-1]
    offsets, words, sigs = random_images(rng, n, vocab, nbits, mean_words=mean_words)
    ids = np.arange(n, dtype=np.int64)
    whole = EmbeddedInvertedFile(vocab, nbits)
    whole.add(ids, offsets, words, sigs)
    shards = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        s = EmbeddedInvertedFile(vocab, nbits)
        s.add(ids[a:b], offsets[a : b + 1] - offsets[a], words[offsets[a] : offsets[b]], sigs[offsets[a] : offsets[b]])
        shards.append(s)
    return whole, shards, (offsets, words, sigs, ids)


def build(rng, n=250, vocab=120, nbits=64, batches=3, ids=None, **kw):
    offsets, words, sigs = random_images(rng, n, vocab, nbits, **kw)
    ids = np.arange(n, dtype=np.int64) * 5 + 2 if ids is None else ids
    f = EmbeddedInvertedFile(vocab, nbits)
    cuts = np.linspace(0, n, batches + 1).astype(int)
    for a, b in zip(cuts[:-1], cuts[1:]):  # several batches: exercises the in-place merge
        o = offsets[a : b + 1]
        f.add(ids[a:b], o - o[0], words[o[0] : o[-1]], sigs[o[0] : o[-1]])
    return f, (offsets, words, sigs, ids)


def assert_matches_reference(f, data, q, alpha, tau, top, **stats):
    offsets, words, sigs, ids = data
    index = asmk_index_ref(offsets, words, sigs, f.nbits, f.vocab_size, **stats)
    ref = asmk_scores_ref(index, *q, alpha, tau)
    want_ids, want = top_ref(ref, ids, top)
    got_ids, got = f.search(*q, top=top, alpha=alpha, tau=tau)
    assert got_ids.dtype == np.int64 and got.dtype == np.float32
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
    exact_ids, exact = f.search_exact(*q, top=top, alpha=alpha, tau=tau)
    np.testing.assert_array_equal(exact_ids, want_ids)
    np.testing.assert_allclose(exact, want, rtol=1e-12, atol=1e-15)
    assert np.array_equal(exact.astype(np.float32), got)
    return ref


# ---------------------------------------------------------------------------------------
# scores
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("nbits", NBITS)
def test_search_equals_numpy_reference(nbits, level):
    rng = np.random.default_rng(nbits)
    vocab = 60
    f, data = build(rng, n=200, vocab=vocab, nbits=nbits)
    for k, (alpha, tau) in enumerate(KERNELS):
        q = random_query(rng, 30, vocab, nbits)
        ref = assert_matches_reference(f, data, q, alpha, tau, top=[200, 37, 1, 1000][k])
        if tau < 0 and nbits > 1:  # negative tau really produces negative scores (1 bit: u = +-1 only)
            assert (ref < 0).any()


@pytest.mark.parametrize("nbits", [64, 100, 128, 256])
def test_words_repeated_by_many_terms_match_reference_at_every_level(nbits):
    """An expanded query repeats words (up to 45 terms each, interleaved, zero weights
    among them): each word's list is scanned once for all its terms, in runs longer than
    the kernel's 256-posting chunks and ending mid-chunk. Exact scores are bit-identical
    at every SIMD level and equal the reference."""
    rng = np.random.default_rng(40 + nbits)
    vocab = 8
    f, data = build(rng, n=700, vocab=vocab, nbits=nbits, mean_words=5)
    assert (f.document_frequencies() > 256).any() and (f.document_frequencies() % 256 != 0).all()
    counts = [45, 1, 17, 3, 2, 30, 1, 9]
    q_words = rng.permutation(np.repeat(np.arange(vocab), counts))
    q_sigs = rng.integers(0, 2**64, size=(len(q_words), words_of(nbits)), dtype=np.uint64)
    q_weights = rng.choice([0.0, 0.25, 1.0, 3.0], size=len(q_words)).astype(np.float32)
    q = (q_words, q_sigs, q_weights)
    previous = roiret.simd_level()
    try:
        results = []
        for lv in LEVELS:
            roiret.set_simd_level(lv)
            results.append(f.search_exact(*q, top=len(f), alpha=3.0, tau=-0.2))
            assert_matches_reference(f, data, q, 3.0, -0.2, top=300)
    finally:
        roiret.set_simd_level(previous)
    for ids, scores in results[1:]:
        assert np.array_equal(ids, results[0][0]) and scores.tobytes() == results[0][1].tobytes()


def test_identical_repeated_terms_score_as_one_term_of_their_summed_weight():
    """Property of the kernel: k copies of a term (same word and signature) with weights
    w_1..w_k score as one term of weight sum(w)."""
    rng = np.random.default_rng(9)
    f, _ = build(rng, n=300, vocab=20, nbits=128, mean_words=6)
    q_words, q_sigs, q_weights = random_query(rng, 6, 20, 128)
    q_weights[:] = [1.0, 0.5, 2.0, 0.25, 1.5, 0.75]
    reps = np.array([2, 1, 4, 2, 1, 4])  # w / r exact in float32
    rep_w = np.concatenate([np.full(r, w / r, np.float32) for r, w in zip(reps, q_weights)])
    got = f.search_exact(np.repeat(q_words, reps), np.repeat(q_sigs, reps, axis=0), rep_w, top=len(f))
    want = f.search_exact(q_words, q_sigs, q_weights, top=len(f))
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12, atol=1e-15)


def test_query_of_one_image_finds_it_first_with_score_one():
    rng = np.random.default_rng(1)
    f, (offsets, words, sigs, ids) = build(rng, n=100, vocab=400, nbits=128, mean_words=30)
    for d in range(0, 100, 13):
        sl = slice(offsets[d], offsets[d + 1])
        idf = f.idf()[words[sl]]
        q_weights = (1 / np.sqrt(idf.sum())) * np.ones(len(idf), np.float32)  # the query's own norm
        got, scores = f.search(words[sl], sigs[sl], q_weights, top=3)
        assert got[0] == ids[d]
        assert scores[0] == pytest.approx(1.0, rel=1e-6)  # sigma(0) = 1: self-similarity 1


def test_hand_checked_scores_and_order():
    """Two images share word 0: sigma follows u = 1 - 2h/nbits; images scoring 0 (no
    shared word, or u <= tau) come after the positive and before the negative scores."""
    f = EmbeddedInvertedFile(4, nbits=8)
    sig = np.array([[0b00000000], [0b00000011], [0b01111111], [0b11111100], [0b00000001]], np.uint64)
    # id 10: {0: 0x00, 1: 0x03}; id 11: {0: 0x7f}; id 12: {2: 0xfc}; id 13: {0: 0x01}
    f.add([10, 11, 12, 13], [0, 2, 3, 4, 5], [0, 1, 0, 2, 0], sig)
    idf = np.log(4 / np.array([3, 1, 1]))
    np.testing.assert_allclose(f.idf()[:3], idf)
    assert f.document_frequencies().tolist() == [3, 1, 1, 0]
    q = (np.array([0]), np.array([[0]], np.uint64), np.array([2.0], np.float32))
    # images 10, 11, 13: h = 0 (u = 1), 7 (u = -0.75), 1 (u = 0.75); 12 shares nothing
    norm = 1 / np.sqrt([idf[0] + idf[1], idf[0], idf[2], idf[0]])
    ids, scores = f.search_exact(*q, top=4, alpha=2.0, tau=-1.0)
    assert ids.tolist() == [13, 10, 12, 11]
    np.testing.assert_allclose(
        scores, [2 * idf[0] * 0.75**2 * norm[3], 2 * idf[0] * norm[0], 0.0, -2 * idf[0] * 0.75**2 * norm[1]], rtol=1e-12
    )
    ids, scores = f.search(*q, top=4, alpha=2.0, tau=0.8)  # u <= tau: 11 and 13 score 0
    assert ids.tolist() == [10, 11, 12, 13] and scores[1:].tolist() == [0, 0, 0]


def test_threads_are_bit_identical_and_match_reference(big):
    """A search over >= 2**20 postings splits the images over threads: every thread count
    gives exactly the single-threaded ids and scores, and those equal the reference."""
    f, data, q = big
    assert f.document_frequencies()[q[0]].sum() >= 2**20  # the threaded path
    base = f.search_exact(*q, top=len(f), alpha=3.0, tau=-0.3, threads=1)
    for threads in (2, 4, 7):
        got = f.search_exact(*q, top=len(f), alpha=3.0, tau=-0.3, threads=threads)
        assert np.array_equal(got[0], base[0]) and got[1].tobytes() == base[1].tobytes()
        got = f.search(*q, top=50, alpha=3.0, tau=-0.3, threads=threads)
        assert np.array_equal(got[0], base[0][:50])
    assert_matches_reference(f, data, q, 3.0, -0.3, top=500)
    # an expanded query: every word three times (one list read for three terms)
    rng = np.random.default_rng(3)
    q3 = (
        np.tile(q[0], 3),
        rng.integers(0, 2**64, size=(3 * len(q[0]), 1), dtype=np.uint64),
        np.ones(3 * len(q[0]), np.float32),
    )
    base = f.search_exact(*q3, top=len(f), alpha=3.0, tau=-0.3, threads=1)
    for threads in (2, 5):
        got = f.search_exact(*q3, top=len(f), alpha=3.0, tau=-0.3, threads=threads)
        assert np.array_equal(got[0], base[0]) and got[1].tobytes() == base[1].tobytes()


@pytest.fixture
def block_bytes():
    """Set the search's document block (accumulator bytes per range) for one test."""
    previous = _core.search_block_bytes()
    yield _core.set_search_block_bytes
    _core.set_search_block_bytes(0)
    assert _core.search_block_bytes() == previous


def test_document_blocks_are_bit_identical(big, block_bytes):
    """A search adds every word's postings one block of documents at a time (accumulators
    sized for L2; 512 KiB by default, one block for these 8000 images): blocks of 37, 1000
    and 2000 images, on 1 to 3 threads, give exactly the one-block ids and scores, top-50
    lists included (the threads' heaps merged), for a plain and an expanded query; and
    blocks of 4000 images, which this collection's 64 KB of accumulators does not exceed
    twice (one range again)."""
    f, data, q = big
    assert block_bytes(0) == 512 << 10 and block_bytes(0) == 512 << 10  # returns the previous value
    rng = np.random.default_rng(5)
    q3 = (
        np.tile(q[0], 3),
        rng.integers(0, 2**64, size=(3 * len(q[0]), 1), dtype=np.uint64),
        np.ones(3 * len(q[0]), np.float32),
    )
    for query in (q, q3):
        block_bytes(0)
        base = f.search_exact(*query, top=len(f), alpha=3.0, tau=-0.3, threads=1)
        for docs in (37, 1000, 2000, 4000):
            block_bytes(8 * docs)
            assert _core.search_block_bytes() == 8 * docs
            for threads in (1, 2, 3):
                got = f.search_exact(*query, top=len(f), alpha=3.0, tau=-0.3, threads=threads)
                assert np.array_equal(got[0], base[0]) and got[1].tobytes() == base[1].tobytes(), (docs, threads)
                top = f.search_exact(*query, top=50, alpha=3.0, tau=-0.3, threads=threads)
                assert np.array_equal(top[0], base[0][:50]) and top[1].tobytes() == base[1][:50].tobytes()
    small = (q[0][:40], q[1][:40], q[2][:40])
    block_bytes(0)
    want = f.search_exact(*small, top=100, alpha=3.0, tau=-0.3, threads=2)
    block_bytes(8)  # one image a block: 8000 ranges
    got = f.search_exact(*small, top=100, alpha=3.0, tau=-0.3, threads=2)
    assert np.array_equal(got[0], want[0]) and got[1].tobytes() == want[1].tobytes()
    with pytest.raises(TypeError):
        block_bytes(-1)


@pytest.fixture(scope="module")
def big():
    """8000 images x ~150 of 600 words: a query of every word scans ~1.2M postings."""
    rng = np.random.default_rng(2)
    vocab, n = 600, 8000
    offsets, words, sigs = random_images(rng, n, vocab, 64, mean_words=150)
    ids = np.arange(n, dtype=np.int64)
    f = EmbeddedInvertedFile(vocab, 64)
    f.add(ids, offsets, words, sigs)
    q_words = np.arange(vocab)
    q = (q_words, rng.integers(0, 2**64, size=(vocab, 1), dtype=np.uint64), np.ones(vocab, np.float32))
    return f, (offsets, words, sigs, ids), q


def test_concurrent_searches_equal_serial_results():
    rng = np.random.default_rng(3)
    f, _ = build(rng, n=400, vocab=200, nbits=128)
    queries = [random_query(rng, 40, 200, 128) for _ in range(32)]
    serial = [f.search(*q, top=20) for q in queries]
    results: list = [None] * len(queries)

    def worker(k):
        for i in range(k, len(queries), 4):
            results[i] = f.search(*queries[i], top=20)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s, r in zip(serial, results):
        assert np.array_equal(s[0], r[0]) and np.array_equal(s[1], r[1])


def test_search_releases_the_gil(big):
    f, _, (q_words, q_sigs, q_weights) = big
    reps = 150  # every word 150 times: ~180M postings, 80-300 ms on one thread
    q = (np.tile(q_words, reps), np.tile(q_sigs, (reps, 1)), np.tile(q_weights, reps))
    assert_releases_gil(lambda: f.search(*q, top=10, threads=1))


# ---------------------------------------------------------------------------------------
# updates, shards, forward lookup
# ---------------------------------------------------------------------------------------
def test_remove_and_add_equal_a_rebuild():
    rng = np.random.default_rng(4)
    vocab, nbits = 80, 100
    f, (offsets, words, sigs, ids) = build(rng, n=150, vocab=vocab, nbits=nbits)
    gone = ids[[0, 7, 8, 99, 149]]
    assert f.remove(np.concatenate([gone, gone[:2]])) == 5  # duplicates count once
    keep = np.setdiff1d(np.arange(150), [0, 7, 8, 99, 149])
    sel = np.concatenate([np.arange(offsets[d], offsets[d + 1]) for d in keep])
    new_offsets = np.concatenate([[0], np.cumsum(np.diff(offsets)[keep])]).astype(np.int64)
    rebuilt = EmbeddedInvertedFile(vocab, nbits)
    rebuilt.add(ids[keep], new_offsets, words[sel], sigs[sel])
    for _ in range(5):
        q = random_query(rng, 25, vocab, nbits)
        a, b = f.search_exact(*q, top=200), rebuilt.search_exact(*q, top=200)
        assert np.array_equal(a[0], b[0]) and a[1].tobytes() == b[1].tobytes()
    assert np.array_equal(f.idf(), rebuilt.idf()) and f.num_postings == rebuilt.num_postings
    with pytest.raises(ValueError, match="is not in the index"):
        f.remove([ids[0]])
    assert len(f) == 145
    f.add([ids[0]], [0, 2], [1, 2], sigs[:2])  # a removed id can come back
    assert len(f) == 146 and ids[0] in f


def test_incremental_adds_equal_one_add():
    rng = np.random.default_rng(5)
    vocab, nbits = 50, 64
    offsets, words, sigs = random_images(rng, 120, vocab, nbits, mean_words=6)
    ids = rng.permutation(10_000)[:120].astype(np.int64) - 5000  # negative, out of order
    once = EmbeddedInvertedFile(vocab, nbits)
    once.add(ids, offsets, words, sigs)
    one_by_one = EmbeddedInvertedFile(vocab, nbits)
    q = random_query(rng, 20, vocab, nbits)
    for d in range(120):
        sl = slice(offsets[d], offsets[d + 1])
        one_by_one.add(ids[d : d + 1], [0, offsets[d + 1] - offsets[d]], words[sl], sigs[sl])
        if d % 40 == 0:  # searches between additions see the current collection
            one_by_one.search(*q, top=5)
    a, b = once.search_exact(*q, top=120), one_by_one.search_exact(*q, top=120)
    assert np.array_equal(a[0], b[0]) and a[1].tobytes() == b[1].tobytes()
    np.testing.assert_array_equal(one_by_one.ids(), ids)
    assert all(int(i) in one_by_one for i in ids) and 10**9 not in one_by_one


def test_document_returns_what_was_added():
    rng = np.random.default_rng(6)
    nbits = 100
    f, (offsets, words, sigs, ids) = build(rng, n=40, vocab=30, nbits=nbits)
    for d in range(40):
        got_words, got_sigs = f.document(ids[d])
        sl = slice(offsets[d], offsets[d + 1])
        order = np.argsort(words[sl])
        assert got_words.dtype == np.int64 and got_sigs.dtype == np.uint64 and got_sigs.shape == (len(order), 2)
        np.testing.assert_array_equal(got_words, words[sl][order])
        np.testing.assert_array_equal(got_sigs, sigs[sl][order] & signature_mask(nbits))  # tail bits cleared
    with pytest.raises(ValueError, match="image id 1 is not in the index"):
        f.document(1)


def test_collection_stats_make_shards_score_like_one_file():
    """Shards with the collection's N and df score every image bit for bit as one file
    holding them all; search_exact's scores merge the shards' lists into that file's order."""
    rng = np.random.default_rng(7)
    vocab, nbits, n = 40, 64, 240
    whole, shards, (offsets, words, sigs, ids) = whole_and_shards(rng, vocab, nbits, [0, 70, 180, n], mean_words=5)
    df = sum(np.asarray(s.document_frequencies(), np.int64) for s in shards)
    for s in shards:
        assert not s.has_collection_stats and s.stats_documents == len(s)
        s.set_collection_stats(n, df)
        assert s.has_collection_stats and s.stats_documents == n
        assert np.array_equal(s.idf(), whole.idf())
    for _ in range(4):
        q = random_query(rng, 15, vocab, nbits)
        want_ids, want = whole.search_exact(*q, top=n, tau=-0.5)
        parts = [s.search_exact(*q, top=n, tau=-0.5) for s in shards]
        got_ids = np.concatenate([p[0] for p in parts])
        got = np.concatenate([p[1] for p in parts])
        shard_of = np.repeat([0, 1, 2], [len(p[0]) for p in parts])
        pos = np.concatenate([np.arange(len(p[0])) for p in parts])
        key = np.lexsort((pos, shard_of, -got))
        assert np.array_equal(got_ids[key], want_ids) and got[key].tobytes() == want.tobytes()
    # the reference with the collection's statistics agrees with a shard
    o = offsets[: 70 + 1]
    data = (o, words[: o[-1]], sigs[: o[-1]], ids[:70])
    assert_matches_reference(shards[0], data, random_query(rng, 15, vocab, nbits), 3.0, 0.0, 70, n_docs=n, df=df)
    with pytest.raises(ValueError, match="df: expected 40 values"):
        shards[0].set_collection_stats(n, df[:-1])
    with pytest.raises(ValueError, match="smaller than this file's 70 images"):
        shards[0].set_collection_stats(10, df)
    with pytest.raises(ValueError, match="smaller than this file's own"):
        shards[0].set_collection_stats(n, np.zeros(vocab, np.int64))
    assert shards[0].has_collection_stats  # refused calls change nothing
    shards[1].add([10_000], [0, 1], [3], sigs[:1])
    assert not shards[1].has_collection_stats and shards[1].stats_documents == 111
    shards[2].clear_collection_stats()
    assert not shards[2].has_collection_stats and shards[2].stats_documents == 60


@pytest.mark.parametrize("budget", [1, 30, 200, 700, 10**9])
def test_budget_scans_the_highest_weighted_terms_that_fit(budget, level):
    """A search with max_postings scores as the reference on the terms the budget keeps
    (whole words, by their terms' summed weight x idf, within the collection's postings),
    and selected_terms says which."""
    rng = np.random.default_rng(budget)
    f, data = build(rng, n=300, vocab=60, nbits=128, mean_words=15)
    offsets, words, sigs, ids = data
    df = np.asarray(f.document_frequencies(), np.int64)
    for _ in range(5):
        qw, qs, qwt = random_query(rng, 25, 60, 128)
        keep = select_terms_ref(qw, qwt, f.idf(), df, budget)
        got_keep, postings = f.selected_terms(qw, qwt, max_postings=budget)
        assert got_keep.dtype == np.bool_ and np.array_equal(got_keep, keep)
        assert postings == int(df[qw[keep]].sum())
        live = qwt * f.idf()[qw] != 0
        assert postings <= budget or len(set(qw[keep])) == 1
        for w in set(qw[live]):  # a word's terms are scanned together or not at all
            assert len(set(keep[live & (qw == w)])) == 1
        index = asmk_index_ref(offsets, words, sigs, 128, 60)
        ref = asmk_scores_ref(index, qw[keep], qs[keep], qwt[keep], 3.0, 0.0)
        want_ids, want = top_ref(ref, ids, 40)
        got_ids, got = f.search_exact(qw, qs, qwt, top=40, max_postings=budget)
        np.testing.assert_array_equal(got_ids, want_ids)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
        if keep.sum() == (qwt * f.idf()[qw] != 0).sum():  # nothing skipped: the unbounded search
            assert f.search_exact(qw, qs, qwt, top=40)[1].tobytes() == got.tobytes()


def test_budget_selects_the_same_terms_in_every_shard():
    """With the collection's statistics, every shard keeps the terms one file would: the
    merged budgeted lists equal the one-file budgeted list bit for bit."""
    rng = np.random.default_rng(11)
    vocab, nbits, n = 30, 64, 240
    whole, shards, _ = whole_and_shards(rng, vocab, nbits, [0, 90, n], mean_words=6)
    df = sum(np.asarray(s.document_frequencies(), np.int64) for s in shards)
    for s in shards:
        s.set_collection_stats(n, df)
    for budget in (50, 150, 400):
        q = random_query(rng, 12, vocab, nbits)
        assert all(np.array_equal(s.selected_terms(q[0], q[2], budget)[0], whole.selected_terms(q[0], q[2], budget)[0])
                   for s in shards)  # fmt: skip
        want_ids, want = whole.search_exact(*q, top=n, max_postings=budget)
        parts = [s.search_exact(*q, top=n, max_postings=budget) for s in shards]
        got_ids, got = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        shard_of = np.repeat([0, 1], [len(p[0]) for p in parts])
        pos = np.concatenate([np.arange(len(p[0])) for p in parts])
        key = np.lexsort((pos, shard_of, -got))
        assert np.array_equal(got_ids[key], want_ids) and got[key].tobytes() == want.tobytes()


def test_budget_validation():
    f, _ = build(np.random.default_rng(0), n=20, vocab=10)
    w, s, wt = random_query(np.random.default_rng(1), 3, 10, 64)
    with pytest.raises(ValueError, match="max_postings must be >= 0"):
        f.search(w, s, wt, max_postings=-1)
    with pytest.raises(ValueError, match="max_postings must be >= 0"):
        f.selected_terms(w, wt, max_postings=-1)
    with pytest.raises(ValueError, match="not a word id"):
        f.selected_terms(np.array([10]), None, max_postings=5)


@pytest.mark.parametrize("nbits", [64, 128])
def test_bytes_per_posting(nbits):
    """The marginal cost of a posting is 4 + 8 W bytes: 12 at 64 bits, 20 at 128."""

    def measure(mean_words):
        f, _ = build(np.random.default_rng(8), n=1000, vocab=5000, nbits=nbits, mean_words=mean_words, batches=2)
        f.idf()  # merge the pending additions
        return f.memory_bytes(), f.num_postings

    m1, n1 = measure(50)
    m2, n2 = measure(200)
    assert (m2 - m1) / (n2 - n1) <= 4 + 8 * words_of(nbits)
    assert m2 <= (4 + 8 * words_of(nbits)) * n2 + 25 * 5001 + 40 * 1000


def test_properties_and_repr():
    f = EmbeddedInvertedFile(7, nbits=100)
    assert (f.vocab_size, f.nbits, len(f), f.num_postings) == (7, 100, 0, 0)
    assert repr(f) == "EmbeddedInvertedFile(vocab_size=7, nbits=100, images=0, postings=0)"
    assert EmbeddedInvertedFile(7).nbits == 64
    ids, scores = f.search([1], np.zeros((1, 2), np.uint64))  # empty file
    assert len(ids) == 0 and len(scores) == 0
    f.add([4, 3], [0, 1, 1], [5], np.ones((1, 2), np.uint64))
    ids, scores = f.search([], np.zeros((0, 2), np.uint64), top=5)  # empty query: all score 0
    assert ids.tolist() == [4, 3] and scores.tolist() == [0.0, 0.0]
    assert f.ids().tolist() == [4, 3] and 3 in f and 5 not in f
    assert roiret.EmbeddedInvertedFile is EmbeddedInvertedFile is _core.EmbeddedInvertedFile


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------
def test_add_validates_everything_before_changing_anything():
    f = EmbeddedInvertedFile(10, nbits=64)
    s2 = np.ones((2, 1), np.uint64)
    f.add([1, 2], [0, 1, 2], [3, 4], s2)
    before = (len(f), f.num_postings)
    cases = [
        (([3, 4], [0, 2, 2], [3, 3], s2), ValueError, r"words\[1\] = 3 repeats a word of image id 3"),
        (([3, 4], [0, 1, 2], [3, 10], s2), ValueError, r"words\[1\] = 10 is not a word id in \[0, 10\)"),
        (([3, 4], [0, 1, 2], [3, -1], s2), ValueError, "is not a word id"),
        (([3, 2], [0, 1, 2], [3, 4], s2), ValueError, "image id 2 is already in the index"),
        (([3, 3], [0, 1, 2], [3, 4], s2), ValueError, "appears twice in this batch"),
        (([3, 4], [0, 2, 1], [3, 4], s2), ValueError, "non-decreasing"),
        (([3, 4], [1, 1, 2], [3, 4], s2), ValueError, r"offsets\[0\] must be 0"),
        (([3, 4], [0, 1, 3], [3, 4], s2), ValueError, "must equal the number of words"),
        (([3, 4], [0, 1], [3, 4], s2), ValueError, "expected 3 values"),
        (([3, 4], [0, 1, 2], [3, 4], np.ones((3, 1), np.uint64)), ValueError, r"expected shape \(2, 1\)"),
        (([3, 4], [0, 1, 2], [3, 4], np.ones((2, 2), np.uint64)), ValueError, r"64-bit signature of 1 uint64"),
        (([3, 4], [0, 1, 2], [3, 4], np.ones(2, np.uint64)), ValueError, "got 1-d shape"),
        (([3, 4], [0, 1, 2], [3, 4], np.ones((2, 1), np.int64)), TypeError, "expected uint64 array"),
        (([3, 4], [0, 1, 2], [3, 4], np.ones((2, 1), np.float32)), TypeError, "got float32"),
        (([3, 4], [0, 1, 2], [3, 4], [[1], [2]]), TypeError, "got list"),
        (([3, 4], [0, 1, 2], [3, 4], np.ones((1, 4), np.uint64).reshape(2, 2)[:, :1]), ValueError, "C-contiguous"),
        (([3, 4], [0, 1, 2], [3.5, 4.0], s2), TypeError, "words: expected an integer array"),
        ((np.array([2**63], np.uint64), [0, 1], [3], s2[:1]), ValueError, "does not fit in int64"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            f.add(*args)
        assert (len(f), f.num_postings) == before
    f.add([3, 4], [0, 2, 2], [7, 3], s2)  # words of an image in any order


def test_search_validation():
    f = EmbeddedInvertedFile(10, nbits=128)
    f.add([1], [0, 2], [3, 4], np.ones((2, 2), np.uint64))
    s = np.ones((1, 2), np.uint64)
    with pytest.raises(ValueError, match="is not a word id"):
        f.search([11], s)
    with pytest.raises(ValueError, match="top must be >= 1"):
        f.search([1], s, top=0)
    with pytest.raises(ValueError, match=r"weights\[0\] = nan must be finite and >= 0"):
        f.search([1], s, [np.nan])
    with pytest.raises(ValueError, match="must be finite and >= 0"):
        f.search([1], s, [-1.0])
    with pytest.raises(ValueError, match="weights: expected 1 values"):
        f.search([1], s, [1, 2])
    with pytest.raises(ValueError, match=r"signatures: expected shape \(1, 2\)"):
        f.search([1], np.ones((1, 1), np.uint64))
    with pytest.raises(TypeError, match="signatures: expected uint64"):
        f.search([1], s.astype(np.int64))
    for alpha in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="alpha .* must be finite and > 0"):
            f.search([1], s, alpha=alpha)
    for tau in (1.0, -1.5, 2.0, np.nan):
        with pytest.raises(ValueError, match=r"tau .* must be in \[-1, 1\)"):
            f.search([1], s, tau=tau)
    f.search([1], s, tau=-1.0)  # both ends of the range that are allowed
    f.search([1], s, tau=np.nextafter(1.0, 0.0))
    for nbits in (0, 1025, -3):
        with pytest.raises(ValueError, match=r"nbits must be in \[1, 1024\]"):
            EmbeddedInvertedFile(10, nbits)
    with pytest.raises(ValueError, match="vocab_size must be >= 1"):
        EmbeddedInvertedFile(0)
    with pytest.raises(ValueError, match=r"vocab_size must be <= 2\*\*26"):
        EmbeddedInvertedFile(2**31)


# ---------------------------------------------------------------------------------------
# persistence
# ---------------------------------------------------------------------------------------
def test_save_load_roundtrip_and_format(tmp_path, mmap):
    rng = np.random.default_rng(9)
    nbits = 100
    f, data = build(rng, n=60, vocab=50, nbits=nbits)
    path = tmp_path / "a.ask"
    f.save(path)
    blob = path.read_bytes()
    magic, version, hsize, V, N, nnz, flags, nb, c_ids, c_len, c_docs, c_sigs = struct.unpack(
        "<8sIIQQQIIIIII", blob[:64]
    )
    assert (magic, version, hsize, V, N, nnz, flags, nb) == (b"ROIRASK\0", 2, HEADER, 50, 60, f.num_postings, 0, nbits)
    assert version == _core.EMBEDDED_FILE_FORMAT_VERSION
    assert blob[64:76] == bytes(12) and struct.unpack("<I", blob[76:80])[0] == zlib.crc32(blob[:76])
    W = words_of(nbits)
    at = np.cumsum([HEADER, 8 * N, 4 * V, 4 * nnz])
    pad = -int(at[-1]) % ALIGN
    assert layout(blob)[4] % ALIGN == 0 and blob[at[-1] : at[-1] + pad] == bytes(pad)
    at = np.append(at, [at[-1] + pad, at[-1] + pad + 8 * W * nnz])
    assert len(blob) == at[-1]
    for crc, (a, b) in zip(
        [c_ids, c_len, c_docs, c_sigs], [(at[0], at[1]), (at[1], at[2]), (at[2], at[3]), (at[4], at[5])]
    ):
        assert crc == zlib.crc32(blob[a:b])
    np.testing.assert_array_equal(np.frombuffer(blob[at[0] : at[1]], "<i8"), data[3])
    np.testing.assert_array_equal(np.frombuffer(blob[at[1] : at[2]], "<u4"), f.document_frequencies())
    tail = np.frombuffer(blob[at[4] :], "<u8").reshape(nnz, W)[:, -1]
    assert not (tail & ~signature_mask(nbits)[-1]).any()  # bits beyond nbits stored as zero

    loaded = EmbeddedInvertedFile.load(str(path), mmap=mmap)
    assert (len(loaded), loaded.vocab_size, loaded.nbits) == (60, 50, nbits)
    assert loaded.mapped_bytes() == (8 * W * nnz if mmap else 0)
    read = EmbeddedInvertedFile.load(str(path))
    assert loaded.memory_bytes() == read.memory_bytes() - loaded.mapped_bytes()
    for _ in range(4):
        q = random_query(rng, 20, 50, nbits)
        a, b = f.search_exact(*q, top=30), loaded.search_exact(*q, top=30)
        assert np.array_equal(a[0], b[0]) and a[1].tobytes() == b[1].tobytes()
    for i in data[3][:5]:
        assert all(np.array_equal(x, y) for x, y in zip(f.document(i), loaded.document(i)))
    loaded.add([10**6], [0, 2], [1, 2], np.ones((2, 2), np.uint64))  # add after load, save again
    loaded.save(path)
    assert len(EmbeddedInvertedFile.load(path, mmap=mmap)) == 61
    assert [p.name for p in tmp_path.iterdir()] == ["a.ask"]  # no temporary files left
    empty = tmp_path / "empty.ask"
    EmbeddedInvertedFile(3, 1).save(empty)
    assert len(EmbeddedInvertedFile.load(empty, mmap=mmap)) == 0
    assert EmbeddedInvertedFile.load(empty, mmap=mmap).mapped_bytes() == 0


@pytest.mark.parametrize("nbits", [1, 64, 100, 128])
def test_version_1_files_are_read_and_mapped_when_aligned(tmp_path, nbits, mmap):
    """A file of format 1 (no padding) loads as before; mapped when its signatures section
    happens to start at a multiple of 8 bytes, read into memory otherwise."""
    rng = np.random.default_rng(nbits)
    for n in [31, 32]:  # an odd and an even number of postings + words: both alignments
        f, _ = build(rng, n=n, vocab=7, nbits=nbits, mean_words=3)
        f.save(tmp_path / "new.ask")
        blob = as_version_1((tmp_path / "new.ask").read_bytes())
        (tmp_path / "old.ask").write_bytes(blob)
        old = EmbeddedInvertedFile.load(tmp_path / "old.ask", mmap=mmap)
        aligned = layout(blob)[3] % 8 == 0
        assert old.mapped_bytes() == (f.num_postings * 8 * words_of(nbits) if mmap and aligned else 0)
        q = random_query(rng, 6, 7, nbits)
        a, b = f.search_exact(*q, top=n), old.search_exact(*q, top=n)
        assert np.array_equal(a[0], b[0]) and a[1].tobytes() == b[1].tobytes()
        old.save(tmp_path / "resaved.ask")  # saved again: format 2, the same bytes as a new file
        assert (tmp_path / "resaved.ask").read_bytes() == (tmp_path / "new.ask").read_bytes()


def test_mapped_signatures_search_identically_at_every_level_and_thread_count(big, tmp_path):
    f, _, (qw, qs, qwt) = big
    f.save(tmp_path / "big.ask")
    g = EmbeddedInvertedFile.load(tmp_path / "big.ask", mmap=True)
    assert g.mapped_bytes() == 8 * f.num_postings and "signatures mapped" in repr(g)
    previous = roiret.set_simd_level(LEVELS[0])
    try:
        for lv in LEVELS:
            roiret.set_simd_level(lv)
            for threads in [1, 2, 3]:
                for top in [10, 8000]:
                    a = f.search_exact(qw, qs, qwt, top=top, threads=threads)
                    b = g.search_exact(qw, qs, qwt, top=top, threads=threads)
                    assert np.array_equal(a[0], b[0]) and a[1].tobytes() == b[1].tobytes()
    finally:
        roiret.set_simd_level(previous)
    for i in [0, 4000, 7999]:
        assert all(np.array_equal(x, y) for x, y in zip(f.document(i), g.document(i)))


def test_a_mapped_index_survives_its_file_replaced_or_removed_and_copies_before_changes(tmp_path):
    """The map holds the loaded file's pages: saving over the path (rename) or deleting it
    changes nothing for the loaded index. add() and remove() copy the signatures into
    memory first (the file is never written) and then equal the same changes in memory."""
    rng = np.random.default_rng(21)
    f, (offsets, words, sigs, ids) = build(rng, n=400, vocab=40, nbits=128)
    path = tmp_path / "m.ask"
    f.save(path)
    before = path.read_bytes()
    q = random_query(rng, 15, 40, 128)
    want = f.search_exact(*q, top=100)
    g = EmbeddedInvertedFile.load(path, mmap=True)
    h = EmbeddedInvertedFile.load(path, mmap=True)
    EmbeddedInvertedFile(40, 128).save(path)  # another index renamed over the mapped file
    got = g.search_exact(*q, top=100)
    assert np.array_equal(got[0], want[0]) and got[1].tobytes() == want[1].tobytes()
    path.unlink()
    got = h.search_exact(*q, top=100)
    assert np.array_equal(got[0], want[0]) and got[1].tobytes() == want[1].tobytes()
    g.save(path)  # a mapped index saves what it maps
    assert path.read_bytes() == before
    g = EmbeddedInvertedFile.load(path, mmap=True)
    held = g.memory_bytes()
    g.remove(ids[::3])
    f.remove(ids[::3])
    assert g.mapped_bytes() == 0 and g.memory_bytes() > held  # copied, then compacted
    assert path.read_bytes() == before  # the file was not touched
    new = random_images(rng, 5, 40, 128)
    for x in (f, h):
        x.add(np.arange(10**6, 10**6 + 5), *new)
    h.remove(ids[::3])
    for x in (g, h):
        if x is g:
            x.add(np.arange(10**6, 10**6 + 5), *new)
        got = x.search_exact(*q, top=300)
        want = f.search_exact(*q, top=300)
        assert np.array_equal(got[0], want[0]) and got[1].tobytes() == want[1].tobytes()
    assert h.mapped_bytes() == 0


@pytest.fixture
def saved(tmp_path):
    f, _ = build(np.random.default_rng(10), n=13, vocab=9, nbits=70, mean_words=2)
    path = tmp_path / "x.ask"
    f.save(path)
    return path, path.read_bytes()


def test_load_refuses_truncated_files_at_every_length(saved, tmp_path, mmap):
    load = lambda p: EmbeddedInvertedFile.load(p, mmap=mmap)  # noqa: E731
    assert_refuses_truncations(load, saved[1], tmp_path / "bad.ask")
    assert_refuses_truncations(load, as_version_1(saved[1]), tmp_path / "bad.ask")


def test_load_refuses_any_flipped_byte(saved, tmp_path, mmap):
    """Every byte of every section (header, ids, lengths, documents, padding, signatures),
    in both formats, read or mapped."""
    at = layout(saved[1])
    assert at[4] > at[3]  # the fixture's file has padding to damage
    load = lambda p: EmbeddedInvertedFile.load(p, mmap=mmap)  # noqa: E731
    assert_refuses_flips(load, saved[1], tmp_path / "bad.ask", 0x10)
    assert_refuses_flips(load, as_version_1(saved[1]), tmp_path / "bad.ask", 0x10)
    b = bytearray(saved[1])
    b[at[3]] = 1
    (tmp_path / "bad.ask").write_bytes(bytes(b))
    with pytest.raises(IndexFormatError, match="non-zero bytes in the padding before the signatures"):
        load(tmp_path / "bad.ask")


def test_load_errors_name_the_problem(saved, tmp_path, mmap):
    path, blob = saved
    bad = tmp_path / "bad.ask"
    bad.write_bytes(b"ROIRIVF\0" + blob[8:])  # the other roiret index kind
    with pytest.raises(IndexFormatError, match=r"not a roiret embedded inverted file \(magic 'ROIRIVF\\x00'"):
        EmbeddedInvertedFile.load(bad)
    newer = bytearray(blob)
    newer[8:12] = struct.pack("<I", 3)
    newer[76:80] = struct.pack("<I", zlib.crc32(bytes(newer[:76])))
    bad.write_bytes(bytes(newer))
    with pytest.raises(IndexFormatError, match="format version 3 by a newer roiret; this version reads up to 2"):
        EmbeddedInvertedFile.load(bad, mmap=mmap)
    for offset, section in [(-3, "signature"), (HEADER + 2, "image-id")]:
        b = bytearray(blob)
        b[offset] ^= 1
        bad.write_bytes(bytes(b))
        with pytest.raises(IndexFormatError, match=f"checksum mismatch in the {section} section"):
            EmbeddedInvertedFile.load(bad, mmap=mmap)
    with pytest.raises(FileNotFoundError):
        EmbeddedInvertedFile.load(tmp_path / "missing.ask", mmap=mmap)
    with pytest.raises(IsADirectoryError):
        EmbeddedInvertedFile.load(tmp_path, mmap=mmap)
    with pytest.raises(TypeError):
        EmbeddedInvertedFile.load(path, mmap="yes")
    with pytest.raises(FileNotFoundError):
        EmbeddedInvertedFile(5).save(tmp_path / "no" / "dir.ask")
    from roiret import InvertedFile  # an embedded file is not an InvertedFile, and back

    with pytest.raises(IndexFormatError, match="not a roiret inverted file"):
        InvertedFile.load(path)


def _resealed(blob, edit):
    """The file with `edit(bytearray, layout)` applied and every checksum recomputed: it
    passes the checksums, so only the content checks can refuse it."""
    b = bytearray(blob)
    at = layout(b)  # ids, lengths, documents, padding (not checksummed), signatures
    edit(b, at)
    at = layout(b)
    for k, (lo, hi) in enumerate([(at[0], at[1]), (at[1], at[2]), (at[2], at[3]), (at[4], at[5])]):
        b[48 + 4 * k : 52 + 4 * k] = struct.pack("<I", zlib.crc32(bytes(b[lo:hi])))
    b[76:80] = struct.pack("<I", zlib.crc32(bytes(b[:76])))
    return bytes(b)


def test_load_refuses_consistent_checksums_with_bad_contents(saved, tmp_path, mmap):
    _, blob = saved
    N = struct.unpack("<Q", blob[24:32])[0]
    lens = np.frombuffer(blob[HEADER + 8 * N : HEADER + 8 * N + 4 * 9], "<u4")
    w = int(np.argmax(lens >= 2))  # a word with at least two postings
    first = int(lens[:w].sum())

    def doc_out_of_range(b, at):
        b[at[2] : at[2] + 4] = struct.pack("<I", N + 3)

    def image_holds_word_twice(b, at):  # the same image twice in one word's list
        p = at[2] + 4 * first
        b[p + 4 : p + 8] = b[p : p + 4]

    def bits_beyond_nbits(b, at):
        b[at[5] - 1] |= 0x80

    def nbits_zero(b, at):
        b[44:48] = struct.pack("<I", 0)

    def nbits_too_many(b, at):
        b[44:48] = struct.pack("<I", 1025)

    def flags(b, at):
        b[40] = 1

    def reserved(b, at):
        b[70] = 1

    def lengths(b, at):
        b[at[1] : at[1] + 4] = struct.pack("<I", 10**6)

    def repeated_id(b, at):
        b[at[0] + 8 : at[0] + 16] = b[at[0] : at[0] + 8]

    bad = tmp_path / "bad.ask"
    for edit, msg in [
        (doc_out_of_range, "out of range or out of order"),
        (image_holds_word_twice, f"postings of word {w} are out of range or out of order"),
        (bits_beyond_nbits, "signature bits set beyond nbits"),
        (nbits_zero, r"nbits = 0 is out of range \[1, 1024\]"),
        (nbits_too_many, r"nbits = 1025 is out of range"),
        (flags, "unsupported header layout or flags"),
        (reserved, "unsupported header layout or flags"),
        (lengths, "more postings than there are images"),
        (repeated_id, "appears twice"),
    ]:
        bad.write_bytes(_resealed(blob, edit))
        with pytest.raises(IndexFormatError, match=msg):
            EmbeddedInvertedFile.load(bad, mmap=mmap)


def test_a_large_add_merges_at_once_and_matches_small_batches(tmp_path):
    """Past 2**20 pending postings (and a quarter of the merged ones) add() merges its buffer
    at once, so a large build never holds its postings twice: a search after it changes no
    byte of memory; and the file equals one built in small batches, byte for byte, and
    scores as the NumPy reference."""
    rng = np.random.default_rng(5)
    vocab, nbits, n, k = 2048, 64, 17_000, 64  # 1 088 000 postings
    words = ((rng.integers(0, vocab, size=(n, 1)) + np.arange(k) * 31) % vocab).reshape(-1).astype(np.int64)
    offsets = np.arange(n + 1, dtype=np.int64) * k
    sigs = rng.integers(0, 2**64, size=(len(words), 1), dtype=np.uint64)
    ids = np.arange(n, dtype=np.int64)
    big = EmbeddedInvertedFile(vocab, nbits)
    big.add(ids, offsets, words, sigs)
    held = big.memory_bytes()
    qw, qs, qwt = random_query(rng, 30, vocab, nbits)
    got_ids, got = big.search_exact(qw, qs, qwt, top=50)
    assert big.memory_bytes() == held  # nothing was left pending
    small = EmbeddedInvertedFile(vocab, nbits)
    small.add(ids[:100], offsets[:101], words[: offsets[100]], sigs[: offsets[100]])
    lazy = small.memory_bytes()
    small.search(qw, qs, qwt, top=1)
    assert small.memory_bytes() != lazy  # below the threshold the merge waits for a search
    for a in range(100, n, 1000):  # the rest in batches: eager merges at other points
        b = min(n, a + 1000)
        o = offsets[a : b + 1]
        small.add(ids[a:b], o - o[0], words[o[0] : o[-1]], sigs[o[0] : o[-1]])
    big.save(str(tmp_path / "big.bin"))
    small.save(str(tmp_path / "small.bin"))
    assert (tmp_path / "big.bin").read_bytes() == (tmp_path / "small.bin").read_bytes()
    index = asmk_index_ref(offsets, words, sigs, nbits, vocab)
    want_ids, want = top_ref(asmk_scores_ref(index, qw, qs, qwt, 3.0, 0.0), ids, 50)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_document_with_candidate_words_is_the_document_restricted_to_them():
    """document(id, words) = the full document's pairs whose word is among ``words`` (any
    order, repeats, words the image lacks); the image's own words give the whole document.
    Long lists (interpolated probes) and an image at either end of every list."""
    rng = np.random.default_rng(16)
    nbits = 64
    f, (offsets, words, sigs, ids) = build(rng, n=3000, vocab=50, nbits=nbits)
    for d in [0, 1, 777, 1500, 2998, 2999]:
        full_w, full_s = f.document(ids[d])
        own = words[offsets[d] : offsets[d + 1]]
        order = np.argsort(own)  # the full document is what was added (interpolated probes)
        np.testing.assert_array_equal(full_w, own[order])
        np.testing.assert_array_equal(full_s, sigs[offsets[d] : offsets[d + 1]][order])
        got_w, got_s = f.document(ids[d], rng.permutation(np.concatenate([own, own[:3]])))
        assert np.array_equal(got_w, full_w) and np.array_equal(got_s, full_s)
        for _ in range(5):
            cand = rng.integers(0, 50, size=int(rng.integers(0, 40)))
            keep = np.isin(full_w, cand)
            got_w, got_s = f.document(ids[d], cand.astype(rng.choice([np.int32, np.int64, np.uint16])))
            np.testing.assert_array_equal(got_w, full_w[keep])
            np.testing.assert_array_equal(got_s, full_s[keep])
            assert got_s.shape == (int(keep.sum()), 1)
    got_w, got_s = f.document(ids[5], np.zeros(0, np.int64))
    assert got_w.shape == (0,) and got_s.shape == (0, 1)
    with pytest.raises(ValueError, match="words"):
        f.document(ids[5], [3, 50])
    with pytest.raises(ValueError, match="words"):
        f.document(ids[5], [-1])
    with pytest.raises(TypeError, match="integer"):
        f.document(ids[5], np.array([1.5]))
    with pytest.raises(ValueError, match="not in the index"):
        f.document(10**12, [1])
