"""Oracle tests of the native kernels against NumPy references, at every SIMD level."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import roiret
from _gil import assert_releases_gil
from _reference import select_rois_ref
from roiret import _core

LEVELS = roiret.supported_simd_levels()
NBITS = list(range(1, 131)) + [191, 192, 255, 256, 257, 511, 512, 513, 1000, 1024, 2048, 4095, 4096]


@pytest.fixture(params=LEVELS)
def level(request):
    """Run the test with the kernels of each SIMD level this CPU supports."""
    previous = roiret.set_simd_level(request.param)
    yield request.param
    roiret.set_simd_level(previous)


def random_codes(rng, n, nbits, *, dirty_tail=True):
    """Random codes; with dirty_tail, the ignored bits beyond nbits are random too."""
    words = (nbits + 63) // 64
    codes = rng.integers(0, 2**63, size=(n, words), dtype=np.uint64) * np.uint64(2)
    codes |= rng.integers(0, 2, size=(n, words), dtype=np.uint64)
    if not dirty_tail and nbits % 64:
        codes[:, -1] &= np.uint64((1 << (nbits % 64)) - 1)
    return codes


def bits_of(codes, nbits):
    """Independent unpacking: bit i of a code is bit i % 64 of word i // 64."""
    words = codes.shape[1]
    shifts = np.arange(64, dtype=np.uint64)
    bits = (codes[:, :, None] >> shifts) & np.uint64(1)
    return bits.reshape(len(codes), words * 64)[:, :nbits].astype(np.uint8)


def hamming_ref(a, b, nbits):
    A, B = bits_of(a, nbits), bits_of(b, nbits)
    return (A[:, None, :] != B[None, :, :]).sum(axis=2).astype(np.int64)


# ---------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------
def test_simd_levels_are_reported_and_forceable():
    assert roiret.simd_level() in LEVELS
    assert LEVELS[0] == "generic"
    prev = roiret.set_simd_level("generic")
    try:
        assert roiret.simd_level() == "generic"
    finally:
        roiret.set_simd_level(prev)
    assert roiret.simd_level() == prev


def test_set_simd_level_rejects_unknown_and_unsupported():
    with pytest.raises(ValueError, match="unknown SIMD level"):
        roiret.set_simd_level("sse9")
    if _core.detected_simd_level() != "avx512":
        with pytest.raises(ValueError, match="not supported by this CPU"):
            roiret.set_simd_level("avx512")


def test_env_variable_lowers_the_level(tmp_path):
    import subprocess
    import sys

    code = "import roiret; print(roiret.simd_level())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**__import__("os").environ, "ROIRET_SIMD": "generic"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "generic"


def test_num_threads_roundtrip():
    n = roiret.get_num_threads()
    roiret.set_num_threads(3)
    try:
        assert roiret.get_num_threads() == 3
    finally:
        roiret.set_num_threads(None)
    assert roiret.get_num_threads() == n


# ---------------------------------------------------------------------------------------
# pack_codes / unpack_codes
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", [1, 2, 63, 64, 65, 127, 128, 129, 130, 256, 4096])
def test_pack_codes_matches_numpy(dtype, d):
    rng = np.random.default_rng(d)
    x = rng.standard_normal((37, d)).astype(dtype)
    codes = roiret.pack_codes(x)
    assert codes.dtype == np.uint64 and codes.shape == (37, (d + 63) // 64)
    x64 = x.astype(np.float64)
    expected = x64 > np.array([math.fsum(r) / d for r in x64])[:, None]
    # bit order: word i // 64, bit i % 64, via np.packbits(little) viewed as uint64
    packed = np.packbits(np.pad(expected, ((0, 0), (0, codes.shape[1] * 64 - d))), axis=1, bitorder="little")
    np.testing.assert_array_equal(codes, packed.view("<u8"))
    np.testing.assert_array_equal(roiret.unpack_codes(codes, d), expected.astype(np.uint8))


def test_pack_codes_hand_checked():
    x = np.array([[0.0, 3.0, 1.0, 2.0]], np.float32)  # mean 1.5 -> bits 1 and 3
    assert roiret.pack_codes(x)[0, 0] == 0b1010
    x = np.zeros((2, 70), np.float64)
    x[0, 69] = 5.0
    c = roiret.pack_codes(x)
    assert c[0, 0] == 0 and c[0, 1] == 1 << 5
    assert not c[1].any()  # constant row: nothing above its mean


def test_pack_codes_constant_rows_are_zero():
    for v in [0.1, 1 / 3, -7.25, 1e30, 3.0e-41]:
        x = np.full((3, 77), v, np.float64)
        assert not roiret.pack_codes(x).any(), v
        assert not roiret.pack_codes(x.astype(np.float32)).any(), v


def test_pack_codes_multithreaded_equals_single():
    x = np.random.default_rng(3).standard_normal((5000, 300)).astype(np.float32)
    np.testing.assert_array_equal(roiret.pack_codes(x, threads=1), roiret.pack_codes(x, threads=4))


def test_pack_codes_rejects_bad_input():
    with pytest.raises(TypeError, match="float32 or float64"):
        roiret.pack_codes(np.zeros((2, 3), np.int32))
    with pytest.raises(TypeError, match="numpy"):
        roiret.pack_codes([[1.0, 2.0]])
    with pytest.raises(ValueError, match="2-d"):
        roiret.pack_codes(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        roiret.pack_codes(np.zeros((4, 6), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="0 dimensions"):
        roiret.pack_codes(np.zeros((4, 0), np.float32))
    x = np.ones((3, 5), np.float32)
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match="row 1, column 2"):
        roiret.pack_codes(x)
    assert roiret.pack_codes(np.zeros((0, 5), np.float32)).shape == (0, 1)


# ---------------------------------------------------------------------------------------
# hamming_matrix / hamming_knn
# ---------------------------------------------------------------------------------------
def test_hamming_matrix_all_widths(level):
    rng = np.random.default_rng(11)
    for nbits in NBITS:
        a, b = random_codes(rng, 5, nbits), random_codes(rng, 19, nbits)
        out = roiret.hamming_matrix(a, b, nbits)
        assert out.dtype == np.uint32 and out.shape == (5, 19)
        np.testing.assert_array_equal(out, hamming_ref(a, b, nbits), err_msg=f"nbits={nbits}")


def test_hamming_matrix_default_nbits_uses_all_words(level):
    rng = np.random.default_rng(12)
    a, b = random_codes(rng, 9, 192), random_codes(rng, 33, 192)
    np.testing.assert_array_equal(roiret.hamming_matrix(a, b), hamming_ref(a, b, 192))


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 15, 16, 17, 100, 1000])
def test_hamming_matrix_row_counts(level, n):
    rng = np.random.default_rng(n)
    for nbits in (64, 128, 256, 512, 700):
        a, b = random_codes(rng, 3, nbits), random_codes(rng, n, nbits)
        np.testing.assert_array_equal(roiret.hamming_matrix(a, b, nbits, threads=2), hamming_ref(a, b, nbits))


def knn_ref(q, db, k, nbits):
    D = hamming_ref(q, db, nbits)
    order = np.lexsort((np.broadcast_to(np.arange(D.shape[1]), D.shape), D), axis=1)[:, :k]
    return np.take_along_axis(D, order, 1), order


@pytest.mark.parametrize("k", [1, 2, 5, 50])
def test_hamming_knn_matches_sorting(level, k):
    rng = np.random.default_rng(k)
    for nbits in (1, 13, 64, 100, 256, 512, 1024, 4096):
        q = random_codes(rng, 4, nbits)
        db = random_codes(rng, 300, nbits)
        if nbits <= 13:  # many ties: order must follow the lower index
            pass
        dist, idx = roiret.hamming_knn(q, db, k, nbits)
        rd, ri = knn_ref(q, db, k, nbits)
        np.testing.assert_array_equal(dist, rd)
        np.testing.assert_array_equal(idx, ri)


def test_hamming_knn_large_db_split_across_threads(level):
    rng = np.random.default_rng(5)
    db = random_codes(rng, 70_000, 256)
    q = np.concatenate([db[[123, 69_999]], random_codes(rng, 1, 256)])
    for k in (1, 10):
        dist, idx = roiret.hamming_knn(q, db, k, threads=2)
        rd, ri = knn_ref(q, db, k, 256)
        np.testing.assert_array_equal(dist, rd)
        np.testing.assert_array_equal(idx, ri)
    assert idx[0, 0] == 123 and idx[1, 0] == 69_999


def test_hamming_knn_pads_when_k_exceeds_database():
    db = random_codes(np.random.default_rng(0), 3, 64)
    dist, idx = roiret.hamming_knn(db[:1], db, 5)
    assert idx[0, 3:].tolist() == [-1, -1] and dist[0, 3:].tolist() == [2**32 - 1] * 2
    assert idx[0, 0] == 0 and dist[0, 0] == 0


def test_hamming_rejects_bad_input():
    a = np.zeros((3, 4), np.uint64)
    with pytest.raises(TypeError, match=r"expected uint64 array of shape \(na, words\), got float32"):
        roiret.hamming_matrix(a.astype(np.float32), a)
    with pytest.raises(TypeError, match="got uint8"):
        roiret.hamming_matrix(a.view(np.uint8), a)
    with pytest.raises(ValueError, match="C-contiguous"):
        roiret.hamming_matrix(np.zeros((3, 8), np.uint64)[:, ::2], a)
    with pytest.raises(ValueError, match="code widths differ"):
        roiret.hamming_matrix(a, np.zeros((3, 5), np.uint64))
    with pytest.raises(ValueError, match="nbits=300 needs 5"):
        roiret.hamming_matrix(a, a, 300)
    with pytest.raises(ValueError, match="nbits must be >= 1"):
        roiret.hamming_matrix(a, a, 0)
    with pytest.raises(ValueError, match="0 words"):
        roiret.hamming_matrix(np.zeros((3, 0), np.uint64), np.zeros((3, 0), np.uint64))
    with pytest.raises(ValueError, match="k must be >= 1"):
        roiret.hamming_knn(a, a, 0)
    with pytest.raises(ValueError, match=r"shape \(nq, words\), got 1-d"):
        roiret.hamming_knn(a[0], a, 1)
    with pytest.raises(ValueError, match="threads"):
        roiret.hamming_knn(a, a, 1, threads=0)


# ---------------------------------------------------------------------------------------
# cross_match
# ---------------------------------------------------------------------------------------
def cross_match_ref(q, db, offsets, nbits, mask=None, images=None):
    """Per image: the pair of minimal distance, ties to the lower db row then query row."""
    D = hamming_ref(q, db, nbits) if len(db) else np.zeros((len(q), 0), np.int64)
    active = np.ones(len(q), bool) if mask is None else np.asarray(mask, bool)
    groups = np.arange(len(offsets) - 1) if images is None else np.asarray(images)
    score, bq, bd = [], [], []
    votes = np.zeros(len(q), np.int64)
    for g in groups:
        s, e = offsets[g], offsets[g + 1]
        best = None
        for j in range(s, e):
            for i in np.flatnonzero(active):
                if best is None or D[i, j] < best[0]:
                    best = (D[i, j], i, j)
        if best is None:
            score.append(-np.inf), bq.append(-1), bd.append(-1)
        else:
            score.append(np.float32(1.0 - best[0] / nbits)), bq.append(best[1]), bd.append(best[2])
            votes[best[1]] += 1
    return np.array(score, np.float32), np.array(bq, np.int64), np.array(bd, np.int64), votes


def assert_cross_equal(got, expected):
    for name, g, e in zip(got._fields, got, expected):
        np.testing.assert_array_equal(g, e, err_msg=name)


@pytest.mark.parametrize("nbits", [1, 5, 63, 64, 65, 130, 200, 256, 512, 513, 1024, 4096])
def test_cross_match_matches_reference(level, nbits):
    rng = np.random.default_rng(nbits)
    sizes = rng.integers(0, 25, size=40)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    db = random_codes(rng, int(offsets[-1]), nbits)
    q = random_codes(rng, 20, nbits)
    got = roiret.cross_match(q, db, offsets, nbits, threads=2)
    assert isinstance(got, roiret.CrossMatchResult)
    assert got.score.dtype == np.float32 and got.best_db.dtype == np.int64
    assert_cross_equal(got, cross_match_ref(q, db, offsets, nbits))
    assert got.query_votes.sum() == np.count_nonzero(sizes)


@pytest.mark.parametrize("nbits", [64, 200, 256, 512, 960, 1024, 2048, 4096])
def test_cross_match_tile_remainders(level, nbits):
    """Every group size 1..26 (so every remainder of the register-blocked tiles: 8 vector
    codes plus scalar ones), alone and batched, with and without many ties."""
    rng = np.random.default_rng(nbits + 1)
    for low_entropy in (False, True):
        q = random_codes(rng, 7, nbits)
        for n in range(1, 27):
            db = random_codes(rng, n, nbits)
            if low_entropy:
                q &= np.uint64(5)
                db &= np.uint64(5)
            offsets = np.array([0, n], np.int64)
            assert_cross_equal(roiret.cross_match(q, db, offsets, nbits), cross_match_ref(q, db, offsets, nbits))
        sizes = rng.integers(0, 27, size=30)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        db = random_codes(rng, int(offsets[-1]), nbits)
        if low_entropy:
            db &= np.uint64(5)
        mask = rng.random(7) < 0.7
        assert_cross_equal(
            roiret.cross_match(q, db, offsets, nbits, mask, threads=1), cross_match_ref(q, db, offsets, nbits, mask)
        )


def test_cross_match_mask_and_image_subset(level):
    rng = np.random.default_rng(7)
    for nbits in (8, 256, 1000):
        offsets = np.concatenate([[0], np.cumsum(rng.integers(0, 9, size=30))]).astype(np.int64)
        db = random_codes(rng, int(offsets[-1]), nbits)
        q = random_codes(rng, 12, nbits)
        mask = rng.random(12) < 0.5
        images = rng.permutation(30)[:17]
        got = roiret.cross_match(q, db, offsets, nbits, mask, images=images)
        assert_cross_equal(got, cross_match_ref(q, db, offsets, nbits, mask, images))
        none = roiret.cross_match(q, db, offsets, nbits, np.zeros(12, bool))
        assert np.isneginf(none.score).all() and (none.best_query == -1).all() and not none.query_votes.any()


def test_cross_match_hand_checked():
    # 4-bit codes. Query RoIs 0b0011, 0b1100; image 0 = {0b0111}, image 1 = {0b1100, 0b0011}.
    q = np.array([[0b0011], [0b1100]], np.uint64)
    db = np.array([[0b0111], [0b1100], [0b0011]], np.uint64)
    r = roiret.cross_match(q, db, np.array([0, 1, 3]), 4)
    np.testing.assert_allclose(r.score, [0.75, 1.0])
    assert r.best_query.tolist() == [0, 1]  # image 1: exact pairs (1, row 1) and (0, row 2): lower db row wins
    assert r.best_db.tolist() == [0, 1]
    assert r.query_votes.tolist() == [1, 1]


def test_cross_match_threads_agree():
    rng = np.random.default_rng(9)
    offsets = np.arange(0, 20 * 3000 + 1, 20, dtype=np.int64)
    db = random_codes(rng, int(offsets[-1]), 256)
    q = random_codes(rng, 20, 256)
    assert_cross_equal(
        roiret.cross_match(q, db, offsets, 256, threads=1), roiret.cross_match(q, db, offsets, 256, threads=4)
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nbits=st.integers(1, 300),
    sizes=st.lists(st.integers(0, 12), min_size=1, max_size=25),
    nq=st.integers(1, 10),
    seed=st.integers(0, 2**32 - 1),
    low_entropy=st.booleans(),
)
def test_cross_match_property(nbits, sizes, nq, seed, low_entropy):
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    db = random_codes(rng, int(offsets[-1]), nbits)
    q = random_codes(rng, nq, nbits)
    if low_entropy:  # few distinct codes: many exact ties
        db &= np.uint64(3)
        q &= np.uint64(3)
    got = roiret.cross_match(q, db, offsets, nbits)
    assert_cross_equal(got, cross_match_ref(q, db, offsets, nbits))
    # the image score is the max pairwise similarity
    sims = 1.0 - hamming_ref(q, db, nbits) / nbits
    for g in range(len(sizes)):
        if sizes[g]:
            assert got.score[g] == np.float32(sims[:, offsets[g] : offsets[g + 1]].max())


def test_cross_match_rejects_bad_input():
    q = np.zeros((2, 4), np.uint64)
    db = np.zeros((5, 4), np.uint64)
    ok = np.array([0, 2, 5], np.int64)
    with pytest.raises(ValueError, match="non-decreasing"):
        roiret.cross_match(q, db, np.array([0, 3, 2], np.int64), 256)
    with pytest.raises(ValueError, match="exceeds the number of rows"):
        roiret.cross_match(q, db, np.array([0, 2, 6], np.int64), 256)
    with pytest.raises(ValueError, match=r"offsets\[0\] must be >= 0"):
        roiret.cross_match(q, db, np.array([-1, 2, 5], np.int64), 256)
    with pytest.raises(TypeError, match="offsets: expected int64"):
        roiret.cross_match(q, db, ok.astype(np.int32), 256)
    with pytest.raises(ValueError, match="code widths differ"):
        roiret.cross_match(np.zeros((2, 3), np.uint64), db, ok, 256)
    with pytest.raises(ValueError, match="nbits=100 needs 2"):
        roiret.cross_match(q, db, ok, 100)
    with pytest.raises(ValueError, match=r"query_mask: expected shape \(2,\)"):
        roiret.cross_match(q, db, ok, 256, np.ones(3, bool))
    with pytest.raises(TypeError, match="query_mask"):
        roiret.cross_match(q, db, ok, 256, np.ones(2, np.float32))
    with pytest.raises(ValueError, match="not an image index"):
        roiret.cross_match(q, db, ok, 256, images=np.array([0, 2]))
    with pytest.raises(TypeError, match="integer"):
        roiret.cross_match(q, db, ok, 256, images=np.array([0.5]))


# ---------------------------------------------------------------------------------------
# select_rois
# ---------------------------------------------------------------------------------------
def random_boxes(rng, B, D, size=40.0, quantised=False):
    xy = rng.uniform(0, size, size=(B, D, 2, 2))
    if quantised:  # integer grid: many identical and touching boxes, exact-IoU ties
        xy = np.floor(xy / 8) * 8
    lo, hi = xy.min(axis=2), xy.max(axis=2)
    boxes = np.concatenate([lo, hi], axis=2).astype(np.float32)  # x1, y1, x2, y2
    scores = rng.uniform(0, 10, size=(B, D)).astype(np.float32)
    if quantised:
        scores = np.round(scores).astype(np.float32)  # ties in scores
    sizes = np.tile(np.array([[size, size]], np.float32), (B, 1))
    return boxes, scores, sizes


@pytest.mark.parametrize("quantised", [False, True])
@pytest.mark.parametrize(
    "k,t_min,t_rate,t_iou", [(5, 0.0, np.inf, 0.95), (20, 0.01, 3.0, 0.95), (10, 0.05, 2.0, 0.5), (3, 0.0, 1.5, 1.0)]
)
def test_select_rois_equals_numpy_reference(quantised, k, t_min, t_rate, t_iou):
    rng = np.random.default_rng(k)
    boxes, scores, sizes = random_boxes(rng, 16, 64, quantised=quantised)
    got = roiret.select_rois(boxes, scores, sizes, k, t_min, t_rate, t_iou)
    np.testing.assert_array_equal(got, select_rois_ref(boxes, scores, sizes, k, t_min, t_rate, t_iou))


def test_select_rois_hand_checked():
    boxes = np.array(
        [
            [
                [0, 0, 10, 10],  # 0: area 100, score 1
                [0, 0, 10, 10.2],  # 1: IoU with 0 = 100/102 > 0.95, score 2
                [0, 0, 1, 1],  # 2: too small for t_min 0.01 on 100x100
                [0, 0, 50, 5],  # 3: aspect 10 > t_rate 3
                [50, 50, 60, 60],  # 4: disjoint, score 0.5
                [5, 5, 5, 9],
            ]
        ],  # 5: zero width
        np.float32,
    )
    scores = np.array([[1, 2, 9, 9, 0.5, 9]], np.float32)
    sizes = np.array([[100, 100]], np.float32)
    out = roiret.select_rois(boxes, scores, sizes, 4, 0.01, 3.0, 0.95)
    assert out.tolist() == [[1, 4, -1, -1]]  # 0 suppressed by the higher-scoring 1
    out = roiret.select_rois(boxes, scores, sizes, 1, 0.01, 3.0, 0.95)
    assert out.tolist() == [[1]]


@settings(max_examples=150, deadline=None)
@given(
    B=st.integers(1, 4),
    D=st.integers(0, 40),
    k=st.integers(1, 12),
    t_min=st.sampled_from([0.0, 0.001, 0.05, 0.3]),
    t_rate=st.sampled_from([1.0, 1.5, 3.0, np.inf]),
    t_iou=st.sampled_from([0.3, 0.7, 0.95, 1.0]),
    seed=st.integers(0, 2**32 - 1),
    quantised=st.booleans(),
)
def test_select_rois_property(B, D, k, t_min, t_rate, t_iou, seed, quantised):
    rng = np.random.default_rng(seed)
    boxes, scores, sizes = random_boxes(rng, B, D, quantised=quantised)
    got = roiret.select_rois(boxes, scores, sizes, k, t_min, t_rate, t_iou)
    np.testing.assert_array_equal(got, select_rois_ref(boxes, scores, sizes, k, t_min, t_rate, t_iou))
    for b in range(B):
        kept = got[b][got[b] >= 0]
        assert len(set(kept.tolist())) == len(kept)  # no duplicates
        assert (got[b][len(kept) :] == -1).all()  # padding at the end only
        s = scores[b, kept]
        assert (np.diff(s) <= 0).all()  # selection order = descending score


def test_select_rois_threads_agree():
    boxes, scores, sizes = random_boxes(np.random.default_rng(1), 200, 256)
    a = roiret.select_rois(boxes, scores, sizes, 20, 0.01, 3.0, 0.95, threads=1)
    b = roiret.select_rois(boxes, scores, sizes, 20, 0.01, 3.0, 0.95, threads=3)
    np.testing.assert_array_equal(a, b)


def test_select_rois_rejects_bad_input():
    boxes, scores, sizes = random_boxes(np.random.default_rng(0), 2, 5)
    args = (5, 0.0, 3.0, 0.95)
    with pytest.raises(ValueError, match="K .* must be >= 1"):
        roiret.select_rois(boxes, scores, sizes, 0, 0.0, 3.0, 0.95)
    with pytest.raises(ValueError, match="K .* must be >= 1"):
        roiret.select_rois(boxes, scores, sizes, -3, 0.0, 3.0, 0.95)
    bad = boxes.copy()
    bad[1, 3, 2] = np.nan
    with pytest.raises(ValueError, match=r"boxes\[1, 3\] contains NaN"):
        roiret.select_rois(bad, scores, sizes, *args)
    bad = scores.copy()
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match=r"scores\[0, 1\] is NaN"):
        roiret.select_rois(boxes, bad, sizes, *args)
    with pytest.raises(TypeError, match="boxes: expected float32"):
        roiret.select_rois(boxes.astype(np.float64), scores, sizes, *args)
    with pytest.raises(ValueError, match=r"shape \(B, D, 4\)"):
        roiret.select_rois(np.zeros((2, 5, 3), np.float32), scores, sizes, *args)
    with pytest.raises(ValueError, match="scores: expected shape"):
        roiret.select_rois(boxes, scores[:, :4].copy(), sizes, *args)
    with pytest.raises(ValueError, match="image_sizes: expected shape"):
        roiret.select_rois(boxes, scores, sizes[:1].copy(), *args)
    with pytest.raises(ValueError, match="positive and finite"):
        roiret.select_rois(boxes, scores, np.zeros_like(sizes), *args)
    with pytest.raises(ValueError, match="t_iou"):
        roiret.select_rois(boxes, scores, sizes, 5, 0.0, 3.0, 0.0)
    with pytest.raises(ValueError, match="t_rate"):
        roiret.select_rois(boxes, scores, sizes, 5, 0.0, 0.5, 0.95)
    with pytest.raises(ValueError, match="t_min"):
        roiret.select_rois(boxes, scores, sizes, 5, float("nan"), 3.0, 0.95)
    with pytest.raises(ValueError, match="C-contiguous"):
        roiret.select_rois(np.asfortranarray(boxes), scores, sizes, *args)


# ---------------------------------------------------------------------------------------
# the GIL is released while kernels run
# ---------------------------------------------------------------------------------------
def _big_call(name):
    """A call of about 50-200 ms on one thread."""
    rng = np.random.default_rng(0)
    if name == "hamming_matrix":
        a = random_codes(rng, 3000, 4096)
        return lambda: roiret.hamming_matrix(a, a, threads=1)
    if name in ("hamming_knn", "cross_match"):
        db = random_codes(rng, 20000, 1024)
        offsets = np.arange(0, 20001, 20, dtype=np.int64)
        if name == "hamming_knn":
            return lambda: roiret.hamming_knn(db[:2000], db, 5, threads=1)  # ~60 ms
        q = random_codes(rng, 4000, 1024)  # ~70 ms: long enough for the other thread to be scheduled
        return lambda: roiret.cross_match(q, db, offsets, 1024, threads=1)
    if name == "select_rois":
        boxes, scores, sizes = random_boxes(rng, 3000, 256)
        return lambda: roiret.select_rois(boxes, scores, sizes, 20, 0.0, 3.0, 0.95, threads=1)
    if name == "pack_codes":
        x = rng.standard_normal((200_000, 256)).astype(np.float32)
        return lambda: roiret.pack_codes(x, threads=1)
    ivf = roiret.InvertedFile(1000)
    n = 20000
    ivf.add(np.arange(n), np.arange(0, 200 * n + 1, 200), rng.integers(0, 1000, size=200 * n), None)
    queries = [rng.integers(0, 1000, size=300) for _ in range(60)]  # ~70 ms (5 took 6 ms: flaky under load)
    ivf.search(queries[0], None, 1)
    return lambda: ivf.search_batch(np.arange(0, 300 * 60 + 1, 300), np.concatenate(queries), None, 10, threads=1)


@pytest.mark.parametrize(
    "name", ["hamming_matrix", "hamming_knn", "cross_match", "select_rois", "pack_codes", "ivf_search"]
)
def test_kernels_release_the_gil(name):
    """Another Python thread makes progress while the kernel runs."""
    assert_releases_gil(_big_call(name))
