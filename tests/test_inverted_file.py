"""InvertedFile: TF-IDF scores against a scipy.sparse reference, persistence, validation."""

from __future__ import annotations

import os
import struct
import threading
import zlib

import numpy as np
import pytest
import scipy.sparse as sp

from _damage import assert_refuses_flips, assert_refuses_truncations
from roiret import IndexFormatError, InvertedFile, _core


def random_bags(rng, n_docs, vocab, mean_words=30, zipf=None):
    """CSR bags of words (offsets, words, counts); words may repeat within a document."""
    lengths = rng.poisson(mean_words, size=n_docs)
    nnz = int(lengths.sum())
    if zipf:
        words = (rng.zipf(zipf, size=nnz) - 1) % vocab
    else:
        words = rng.integers(0, vocab, size=nnz)
    counts = rng.integers(1, 4, size=nnz).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return offsets, words.astype(np.int64), counts


def tfidf_reference(offsets, words, counts, vocab, q_words, q_counts):
    """Scores of every document: idf = ln(N / df), L2-normalised tf-idf vectors, dot."""
    n = len(offsets) - 1
    rows = np.repeat(np.arange(n), np.diff(offsets))
    X = sp.csr_matrix((counts.astype(np.float64), (rows, words)), shape=(n, vocab))  # sums duplicates
    X.eliminate_zeros()
    df = np.bincount(X.indices, minlength=vocab)
    with np.errstate(divide="ignore"):
        idf = np.where(df > 0, np.log(n / np.maximum(df, 1)), 0.0)
    W = X.multiply(idf[None, :]).tocsr()
    norms = np.sqrt(np.asarray(W.multiply(W).sum(axis=1)).ravel())
    W = sp.diags(np.where(norms > 0, 1 / np.where(norms > 0, norms, 1), 0)) @ W
    q = np.bincount(q_words, weights=q_counts, minlength=vocab) * idf
    qn = np.linalg.norm(q)
    q = q / qn if qn > 0 else q
    return np.asarray(W @ q).ravel()


def ranking_ref(scores, ids, top_n):
    order = np.lexsort((np.arange(len(scores)), -scores))[:top_n]
    return ids[order], scores[order]


def build(rng, n_docs=300, vocab=500, batches=3, ids=None, **kw):
    offsets, words, counts = random_bags(rng, n_docs, vocab, **kw)
    ids = np.arange(n_docs, dtype=np.int64) * 7 + 3 if ids is None else ids
    ivf = InvertedFile(vocab)
    cuts = np.linspace(0, n_docs, batches + 1).astype(int)
    for a, b in zip(cuts[:-1], cuts[1:]):  # several batches: exercises the in-place merge
        o = offsets[a : b + 1]
        ivf.add(ids[a:b], o - o[0], words[o[0] : o[-1]], counts[o[0] : o[-1]])
    return ivf, (offsets, words, counts, ids)


def assert_search_matches(ivf, data, vocab, q_words, q_counts, top):
    offsets, words, counts, ids = data
    ref = tfidf_reference(offsets, words, counts, vocab, q_words, q_counts)
    got_ids, got_scores = ivf.search(q_words, q_counts, top)
    assert got_ids.dtype == np.int64 and got_scores.dtype == np.float32
    assert len(got_ids) == min(top, len(ids))
    # scores equal the reference document by document
    pos = {int(i): k for k, i in enumerate(ids)}
    np.testing.assert_allclose(got_scores, ref[[pos[int(i)] for i in got_ids]], rtol=1e-6, atol=1e-7)
    # and the ranking is the reference ranking (up to float-level near-ties)
    ref_ids, ref_scores = ranking_ref(ref, ids, top)
    np.testing.assert_allclose(got_scores, ref_scores, rtol=1e-6, atol=1e-7)
    mismatch = got_ids != ref_ids
    if mismatch.any():
        assert np.allclose(got_scores[mismatch], ref_scores[mismatch], rtol=1e-6)


@pytest.mark.parametrize("zipf", [None, 1.3])
def test_search_equals_scipy_reference(zipf):
    rng = np.random.default_rng(0)
    vocab = 400
    ivf, data = build(rng, vocab=vocab, zipf=zipf)
    assert len(ivf) == 300
    for t in range(10):
        qo, qw, qc = random_bags(rng, 1, vocab, mean_words=40, zipf=zipf)
        assert_search_matches(ivf, data, vocab, qw, qc, top=[1, 10, 300, 1000][t % 4])


def test_search_hand_checked():
    # Documents: 10 = {0: 1, 1: 2}, 11 = {0: 1}, 12 = {2: 5}. df = [2, 1, 1, 0]; N = 3.
    ivf = InvertedFile(4)
    ivf.add([10, 11, 12], [0, 2, 3, 4], [0, 1, 0, 2], [1, 2, 1, 5])
    idf = np.log(3 / np.array([2, 1, 1]))
    np.testing.assert_allclose(ivf.idf()[:3], idf)
    assert ivf.idf()[3] == 0.0
    assert ivf.document_frequencies().tolist() == [2, 1, 1, 0]
    norm10 = np.hypot(idf[0], 2 * idf[1])
    # query = word 1: only document 10 shares it; the others follow in insertion order
    ids, scores = ivf.search([1], None, 3)
    assert ids.tolist() == [10, 11, 12]
    np.testing.assert_allclose(scores, [2 * idf[1] / norm10, 0, 0], rtol=1e-6)
    # query = word 0 (any count): 11 is exactly (1, 0, 0, 0) -> 1; then 10; 12 shares nothing
    ids, scores = ivf.search([0], [3], 3)
    assert ids.tolist() == [11, 10, 12]
    np.testing.assert_allclose(scores, [1.0, idf[0] / norm10, 0.0], rtol=1e-6)
    # top_n below the collection size
    ids, _ = ivf.search([0, 2], None, 1)
    assert ids.tolist() == [12]  # word 2 has the larger idf


def test_query_finds_itself_first():
    rng = np.random.default_rng(1)
    ivf, (offsets, words, counts, ids) = build(rng, n_docs=200, vocab=2000)
    for d in range(0, 200, 17):
        w, c = words[offsets[d] : offsets[d + 1]], counts[offsets[d] : offsets[d + 1]]
        got, scores = ivf.search(w, c, 5)
        assert got[0] == ids[d]
        assert scores[0] == pytest.approx(1.0, abs=1e-6)


def test_idf_is_current_after_each_add():
    rng = np.random.default_rng(2)
    vocab = 50
    offsets, words, counts = random_bags(rng, 40, vocab, mean_words=8)
    ivf = InvertedFile(vocab)
    for d in range(40):
        ivf.add(
            [d],
            [0, offsets[d + 1] - offsets[d]],
            words[offsets[d] : offsets[d + 1]],
            counts[offsets[d] : offsets[d + 1]],
        )
        if d % 9 == 0:  # interleave searches with single-image additions
            data = (offsets[: d + 2], words[: offsets[d + 1]], counts[: offsets[d + 1]], np.arange(d + 1))
            assert_search_matches(ivf, data, vocab, words[:5], counts[:5], top=10)
    df = np.bincount(
        np.unique(np.stack([np.repeat(np.arange(40), np.diff(offsets)), words]), axis=1)[1], minlength=vocab
    )
    np.testing.assert_array_equal(ivf.document_frequencies(), df)
    np.testing.assert_allclose(ivf.idf(), np.where(df > 0, np.log(40 / np.maximum(df, 1)), 0))


def test_unsorted_ids_and_contains():
    rng = np.random.default_rng(3)
    ids = rng.permutation(10_000)[:250].astype(np.int64) - 5000  # negative and unordered
    ivf, data = build(rng, n_docs=250, vocab=300, ids=ids)
    assert all(int(i) in ivf for i in ids)
    assert 10**9 not in ivf
    np.testing.assert_array_equal(ivf.ids(), ids)
    assert_search_matches(ivf, data, 300, data[1][:20], data[2][:20], 50)


def test_remove_then_search_equals_fresh_index():
    rng = np.random.default_rng(4)
    vocab = 300
    ivf, (offsets, words, counts, ids) = build(rng, n_docs=120, vocab=vocab)
    gone = ids[[0, 5, 6, 50, 119]]
    assert ivf.remove(np.concatenate([gone, gone[:2]])) == 5  # duplicates count once
    keep = np.setdiff1d(np.arange(120), [0, 5, 6, 50, 119])
    lens = np.diff(offsets)[keep]
    new_offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    sel = np.concatenate([np.arange(offsets[d], offsets[d + 1]) for d in keep])
    data = (new_offsets, words[sel], counts[sel], ids[keep])
    assert len(ivf) == 115 and ids[0] not in ivf
    assert_search_matches(ivf, data, vocab, words[:30], counts[:30], 200)
    with pytest.raises(ValueError, match="is not in the index"):
        ivf.remove([ids[0]])
    assert len(ivf) == 115
    # add after remove keeps working, re-adding a removed id is allowed
    ivf.add([ids[0]], [0, 2], [1, 2], [1, 1])
    assert len(ivf) == 116 and ids[0] in ivf


def test_add_validates_everything_before_changing_anything():
    ivf = InvertedFile(10)
    ivf.add([1, 2], [0, 1, 2], [3, 4], [1, 1])
    before = (len(ivf), ivf.num_postings)
    cases = [
        (([3, 4], [0, 1, 2], [3, 10], [1, 1]), ValueError, r"words\[1\] = 10 is not a word id in \[0, 10\)"),
        (([3, 4], [0, 1, 2], [3, -1], [1, 1]), ValueError, "is not a word id"),
        (([3, 2], [0, 1, 2], [3, 4], [1, 1]), ValueError, "image id 2 is already in the index"),
        (([3, 3], [0, 1, 2], [3, 4], [1, 1]), ValueError, "appears twice in this batch"),
        (([3, 4], [0, 2, 1], [3, 4], [1, 1]), ValueError, "non-decreasing"),
        (([3, 4], [1, 1, 2], [3, 4], [1, 1]), ValueError, r"offsets\[0\] must be 0"),
        (([3, 4], [0, 1, 3], [3, 4], [1, 1]), ValueError, "must equal the number of words"),
        (([3, 4], [0, 1], [3, 4], [1, 1]), ValueError, "expected 3 values"),
        (([3, 4], [0, 1, 2], [3, 4], [1]), ValueError, "counts: expected 2 values"),
        (([3, 4], [0, 1, 2], [3, 4], [1, np.nan]), ValueError, "must be finite"),
        (([3, 4], [0, 1, 2], [3, 4], [1, -2]), ValueError, "must be finite and >= 0"),
        (([3, 4], [0, 1, 2], [3.5, 4.0], [1, 1]), TypeError, "words: expected an integer array"),
        (([3, 4], [0, 1, 2], ["a", "b"], [1, 1]), TypeError, "words: expected an integer array"),
        (([[3, 4]], [0, 1, 2], [3, 4], [1, 1]), ValueError, "1-d"),
        ((np.array([2**63], np.uint64), [0, 1], [3], [1]), ValueError, "does not fit in int64"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            ivf.add(*args)
        assert (len(ivf), ivf.num_postings) == before


def test_search_validation():
    ivf = InvertedFile(10)
    ivf.add([1], [0, 2], [3, 4], [1, 1])
    with pytest.raises(ValueError, match="is not a word id"):
        ivf.search([11], None, 5)
    with pytest.raises(ValueError, match="top must be >= 1"):
        ivf.search([1], None, 0)
    with pytest.raises(ValueError, match="counts: expected 1 values"):
        ivf.search([1], [1, 2], 3)
    with pytest.raises(ValueError, match="vocab_size must be >= 1"):
        InvertedFile(0)
    with pytest.raises(ValueError, match=r"vocab_size must be <= 2\*\*26 \(67108864 words"):
        InvertedFile(2**31 - 1)  # would need 32 GiB of per-word tables before the first image
    ids, scores = InvertedFile(5).search([1, 2], None, 10)  # empty index
    assert len(ids) == 0 and len(scores) == 0
    ids, scores = ivf.search([], None, 10)  # empty query: everything scores 0
    assert ids.tolist() == [1] and scores.tolist() == [0.0]


def test_search_batch_equals_single_searches():
    rng = np.random.default_rng(5)
    ivf, data = build(rng, n_docs=150, vocab=200)
    qo, qw, qc = random_bags(rng, 12, 200, mean_words=10)
    ids, scores = ivf.search_batch(qo, qw, qc, top=200, threads=3)
    assert ids.shape == (12, 200)
    for i in range(12):
        a, b = qo[i], qo[i + 1]
        si, ss = ivf.search(qw[a:b], qc[a:b], 200)
        np.testing.assert_array_equal(ids[i, :150], si)
        np.testing.assert_array_equal(scores[i, :150], ss)
        assert (ids[i, 150:] == -1).all() and np.isneginf(scores[i, 150:]).all()


# ---------------------------------------------------------------------------------------
# persistence
# ---------------------------------------------------------------------------------------
def test_save_load_roundtrip_and_format(tmp_path):
    rng = np.random.default_rng(6)
    ivf, data = build(rng, n_docs=100, vocab=64)
    path = tmp_path / "a.ivf"
    ivf.save(path)
    blob = path.read_bytes()
    # the documented layout, checked with an independent reader
    magic, version, hsize, V, N, nnz, flags, _, c_ids, c_len, c_post, c_head = struct.unpack(
        "<8sIIQQQIIIIII", blob[:64]
    )
    assert (magic, version, hsize, V, N, nnz, flags) == (b"ROIRIVF\0", 1, 64, 64, 100, ivf.num_postings, 0)
    assert len(blob) == 64 + 8 * N + 4 * V + 8 * nnz
    assert c_head == zlib.crc32(blob[:60])
    assert c_ids == zlib.crc32(blob[64 : 64 + 8 * N])
    assert c_len == zlib.crc32(blob[64 + 8 * N : 64 + 8 * N + 4 * V])
    assert c_post == zlib.crc32(blob[64 + 8 * N + 4 * V :])
    np.testing.assert_array_equal(np.frombuffer(blob[64 : 64 + 8 * N], "<i8"), data[3])
    lengths = np.frombuffer(blob[64 + 8 * N : 64 + 8 * N + 4 * V], "<u4")
    np.testing.assert_array_equal(lengths, ivf.document_frequencies())

    loaded = InvertedFile.load(str(path))
    assert len(loaded) == 100 and loaded.vocab_size == 64
    for _ in range(5):
        q = rng.integers(0, 64, size=12)
        a, b = ivf.search(q, None, 30), loaded.search(q, None, 30)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    # add after load works and saves again
    loaded.add([10**6], [0, 3], [1, 2, 3], None)
    loaded.save(path)
    assert len(InvertedFile.load(path)) == 101
    assert [p.name for p in tmp_path.iterdir()] == ["a.ivf"]  # no temporary files left


def test_crc32_matches_zlib():
    rng = np.random.default_rng(0)
    for n in [0, 1, 7, 8, 9, 63, 64, 1000, 4097]:
        data = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
        assert _core.crc32(data) == zlib.crc32(data)
        assert _core.crc32(data[n // 2 :], _core.crc32(data[: n // 2])) == zlib.crc32(data)


@pytest.fixture
def saved(tmp_path):
    ivf, _ = build(np.random.default_rng(7), n_docs=30, vocab=40, mean_words=6)
    path = tmp_path / "x.ivf"
    ivf.save(path)
    return path, path.read_bytes()


def test_load_refuses_truncated_files_at_every_length(saved, tmp_path):
    assert_refuses_truncations(InvertedFile.load, saved[1], tmp_path / "bad.ivf")


def test_load_refuses_any_flipped_byte(saved, tmp_path):
    assert_refuses_flips(InvertedFile.load, saved[1], tmp_path / "bad.ivf", 0x20)


def test_load_errors_name_the_problem(saved, tmp_path):
    path, blob = saved
    bad = tmp_path / "bad.ivf"
    bad.write_bytes(b"PK\x03\x04" + blob[4:])  # e.g. a zip file
    with pytest.raises(IndexFormatError, match="not a roiret inverted file"):
        InvertedFile.load(bad)
    newer = bytearray(blob)
    newer[8:12] = struct.pack("<I", 2)
    newer[60:64] = struct.pack("<I", zlib.crc32(bytes(newer[:60])))
    bad.write_bytes(bytes(newer))
    with pytest.raises(IndexFormatError, match="format version 2 by a newer roiret"):
        InvertedFile.load(bad)
    b = bytearray(blob)
    b[-3] ^= 1
    bad.write_bytes(bytes(b))
    with pytest.raises(IndexFormatError, match="checksum mismatch in the postings"):
        InvertedFile.load(bad)
    assert issubclass(IndexFormatError, ValueError)
    with pytest.raises(FileNotFoundError):
        InvertedFile.load(tmp_path / "missing.ivf")
    with pytest.raises(IsADirectoryError):
        InvertedFile.load(tmp_path)


def test_load_refuses_consistent_checksums_with_bad_contents(saved, tmp_path):
    """A file whose checksums were recomputed after tampering is still refused."""
    path, blob = saved
    V, N, nnz = struct.unpack("<QQQ", blob[16:40])
    post_at = 64 + 8 * N + 4 * V
    b = bytearray(blob)
    b[post_at : post_at + 4] = struct.pack("<I", N + 5)  # document index out of range
    b[56:60] = struct.pack("<I", zlib.crc32(bytes(b[post_at:])))
    b[60:64] = struct.pack("<I", zlib.crc32(bytes(b[:60])))
    bad = tmp_path / "bad.ivf"
    bad.write_bytes(bytes(b))
    with pytest.raises(IndexFormatError, match="out of range or out of order"):
        InvertedFile.load(bad)


def test_save_to_missing_directory_raises_oserror(tmp_path):
    ivf = InvertedFile(5)
    with pytest.raises(FileNotFoundError):
        ivf.save(tmp_path / "no" / "such" / "dir.ivf")


def test_failed_rename_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "is_a_dir"
    target.mkdir()
    (target / "f").write_text("x")
    with pytest.raises(OSError):
        InvertedFile(5).save(target)  # rename onto a non-empty directory fails
    assert sorted(p.name for p in tmp_path.iterdir()) == ["is_a_dir"]
    assert (target / "f").read_text() == "x"


def test_failed_save_keeps_previous_file(tmp_path):
    ivf, _ = build(np.random.default_rng(8), n_docs=10, vocab=20, mean_words=4)
    path = tmp_path / "keep.ivf"
    ivf.save(path)
    before = path.read_bytes()
    os.chmod(tmp_path, 0o500)  # directory not writable: the temporary file cannot be created
    try:
        if os.access(tmp_path, os.W_OK):
            pytest.skip("running as a user that ignores directory permissions")
        with pytest.raises(PermissionError):
            ivf.save(path)
    finally:
        os.chmod(tmp_path, 0o700)
    assert path.read_bytes() == before


# ---------------------------------------------------------------------------------------
# concurrency and memory
# ---------------------------------------------------------------------------------------
def test_concurrent_searches_equal_serial_results():
    rng = np.random.default_rng(9)
    ivf, _ = build(rng, n_docs=500, vocab=1000)
    queries = [rng.integers(0, 1000, size=50) for _ in range(40)]
    serial = [ivf.search(q, None, 20) for q in queries]
    results = [None] * len(queries)

    def worker(k):
        for i in range(k, len(queries), 4):
            results[i] = ivf.search(queries[i], None, 20)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s, r in zip(serial, results):
        np.testing.assert_array_equal(s[0], r[0])
        np.testing.assert_array_equal(s[1], r[1])


def test_adding_while_searching_is_safe():
    rng = np.random.default_rng(10)
    ivf = InvertedFile(300)
    errors = []
    stop = threading.Event()

    def searcher():
        try:
            while not stop.is_set():
                ids, scores = ivf.search(rng.integers(0, 300, size=20), None, 10)
                assert len(ids) <= 10 and np.all(np.diff(scores) <= 1e-7)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=searcher)
    t.start()
    for d in range(300):
        ivf.add([d], [0, 5], rng.integers(0, 300, size=5), None)
    stop.set()
    t.join()
    assert not errors and len(ivf) == 300


def test_bytes_per_posting():
    """The marginal cost of a posting is 8 bytes (same images and vocabulary, more words)."""
    vocab = 100_000

    def measure(mean_words):
        ivf, _ = build(np.random.default_rng(11), n_docs=2000, vocab=vocab, mean_words=mean_words, batches=4)
        ivf.search([1], None, 1)  # merge the pending additions
        return ivf.memory_bytes(), ivf.num_postings

    m1, n1 = measure(200)
    m2, n2 = measure(800)
    assert n2 > 3 * n1
    assert (m2 - m1) / (n2 - n1) <= 8.0
    assert m2 <= 8 * n2 + 17 * (vocab + 1) + 40 * 2000  # postings + O(vocabulary) + O(images)


# ---------------------------------------------------------------------------------------
# one large search split over threads (by document range)
# ---------------------------------------------------------------------------------------
def test_threaded_search_is_bit_identical_and_matches_scipy():
    """Searches scanning >= 2**20 postings split the documents over threads; every thread
    count gives exactly the single-threaded ids and scores (same per-document summation
    order), and those equal the scipy reference. Skewed words (all postings in the first
    or last few documents, or in one block) put the interpolated split points far off, so
    the galloping search runs in both directions."""
    rng = np.random.default_rng(11)
    n_docs, vocab = 8000, 3000
    offsets, words, counts = random_bags(rng, n_docs, vocab - 5, mean_words=160)
    # skewed words 2995..2999: only in the first 50 / last 50 / a middle block of documents,
    # the first and last document, the two around the middle
    doc_of = np.repeat(np.arange(n_docs), np.diff(offsets))
    extra_docs, extra_words = [doc_of], [words]
    for w, docs in (
        (2995, range(50)),
        (2996, range(n_docs - 50, n_docs)),
        (2997, range(3900, 4100)),
        (2998, [0, n_docs - 1]),
        (2999, [n_docs // 2 - 1, n_docs // 2]),
    ):
        extra_docs.append(np.asarray(docs))
        extra_words.append(np.full(len(docs), w))
    d = np.concatenate(extra_docs)
    order = np.argsort(d, kind="stable")
    words = np.concatenate(extra_words)[order].astype(np.int64)
    counts = rng.integers(1, 4, size=len(words)).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(d, minlength=n_docs))]).astype(np.int64)
    ids = np.arange(n_docs, dtype=np.int64) * 3 + 1
    ivf = InvertedFile(vocab)
    ivf.add(ids, offsets, words, counts)
    df = np.asarray(ivf.document_frequencies())
    for q_words in (
        np.arange(vocab, dtype=np.int64),  # everything
        np.array([0, 1, 2, 2995, 2996, 2997, 2998, 2999], np.int64),
        np.array([2995, 2996, 2997, 2998, 2999], np.int64),
    ):  # skewed words only
        q_counts = rng.integers(1, 5, size=len(q_words)).astype(np.float32)
        big = df[q_words].sum() >= 2**20
        base_ids, base_scores = ivf.search(q_words, q_counts, top=n_docs, threads=1)
        for threads in (2, 3, 4, 7, 64):
            t_ids, t_scores = ivf.search(q_words, q_counts, top=n_docs, threads=threads)
            assert np.array_equal(t_ids, base_ids) and np.array_equal(t_scores, base_scores), (threads, big)
            t_ids, t_scores = ivf.search(q_words, q_counts, top=37, threads=threads)
            assert np.array_equal(t_ids, base_ids[:37]) and np.array_equal(t_scores, base_scores[:37])
        ref = tfidf_reference(offsets, words, counts, vocab, q_words, q_counts)
        np.testing.assert_allclose(np.sort(base_scores)[::-1], np.sort(ref)[::-1], rtol=1e-4, atol=1e-6)
        r_ids, _ = ranking_ref(ref, ids, 50)
        assert len(set(r_ids.tolist()) ^ set(base_ids[:50].tolist())) <= 2  # float32 vs float64 at the edge
    assert df.sum() >= 2**20  # the first query really took the threaded path
    # documents added a block at a time (float accumulators: 4 bytes an image): blocks of 53
    # and 1000 documents, any thread count, the same ids and scores as one block
    q_words = np.arange(vocab, dtype=np.int64)
    base_ids, base_scores = ivf.search(q_words, None, top=n_docs, threads=1)
    try:
        for docs in (53, 1000):
            _core.set_search_block_bytes(4 * docs)
            for threads in (1, 2, 3):
                t_ids, t_scores = ivf.search(q_words, None, top=n_docs, threads=threads)
                assert np.array_equal(t_ids, base_ids) and np.array_equal(t_scores, base_scores), (docs, threads)
                t_ids, t_scores = ivf.search(q_words, None, top=37, threads=threads)
                assert np.array_equal(t_ids, base_ids[:37]) and np.array_equal(t_scores, base_scores[:37])
    finally:
        _core.set_search_block_bytes(0)
    # a batch smaller than the thread count splits each search too: same results
    q = np.arange(vocab, dtype=np.int64)
    b_ids, b_scores = ivf.search_batch(np.array([0, vocab]), q, None, top=100, threads=4)
    s_ids, s_scores = ivf.search(q, None, top=100, threads=1)
    assert np.array_equal(b_ids[0], s_ids) and np.array_equal(b_scores[0], s_scores)


def test_collection_stats_make_shards_score_like_one_file():
    """Shards with the collection's N and df (set_collection_stats) score every document bit
    for bit as one inverted file holding them all; search_exact's float64 scores merge the
    shards' lists into exactly that file's order (ties in insertion order); a change clears
    the statistics; bad statistics are refused."""
    rng = np.random.default_rng(7)
    V, n = 60, 300
    offsets, words, counts = random_bags(rng, n, V, mean_words=6)
    ids = np.arange(n, dtype=np.int64)
    whole = InvertedFile(V)
    whole.add(ids, offsets, words, counts)
    cuts = [0, 90, 200, n]
    shards = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        f = InvertedFile(V)
        f.add(
            ids[a:b], offsets[a : b + 1] - offsets[a], words[offsets[a] : offsets[b]], counts[offsets[a] : offsets[b]]
        )
        shards.append(f)
    df = sum(np.asarray(f.document_frequencies(), np.int64) for f in shards)
    assert np.array_equal(df, whole.document_frequencies())
    for f in shards:
        assert not f.has_collection_stats and f.stats_documents == len(f)
        f.set_collection_stats(n, df)
        assert f.has_collection_stats and f.stats_documents == n
        assert np.array_equal(f.idf(), whole.idf())
    for q in [words[:5], np.array([0, 1]), rng.integers(0, V, 30)]:
        c = np.ones(len(q), np.float32)
        want_ids, want = whole.search_exact(q, c, top=n)
        assert np.array_equal(whole.search(q, c, top=n)[1], want.astype(np.float32))
        parts = [f.search_exact(q, c, top=n) for f in shards]
        got_ids = np.concatenate([p[0] for p in parts])
        got = np.concatenate([p[1] for p in parts])
        key = np.lexsort(
            (
                np.concatenate([np.arange(len(p[0])) for p in parts]),
                np.repeat([0, 1, 2], [len(p[0]) for p in parts]),
                -got,
            )
        )
        assert np.array_equal(got_ids[key], want_ids) and got[key].tobytes() == want.tobytes()
    with pytest.raises(ValueError, match="df: expected 60 values"):
        shards[0].set_collection_stats(n, df[:-1])
    with pytest.raises(ValueError, match="smaller than this file's 90 images"):
        shards[0].set_collection_stats(10, df)
    with pytest.raises(ValueError, match="smaller than this file's own"):
        shards[0].set_collection_stats(n, np.zeros(V, np.int64))
    with pytest.raises(ValueError, match="negative"):
        shards[0].set_collection_stats(n, -np.ones(V, np.int64))
    assert shards[0].has_collection_stats  # refused calls change nothing
    shards[1].add(np.array([10_000]), np.array([0, 2]), np.array([1, 2]), np.ones(2, np.float32))
    assert not shards[1].has_collection_stats and shards[1].stats_documents == 111
    shards[2].clear_collection_stats()
    assert not shards[2].has_collection_stats and shards[2].stats_documents == 100
