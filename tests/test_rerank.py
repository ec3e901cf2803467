"""The paper's fast re-ranking (3.2.4) against a direct NumPy transcription."""

from __future__ import annotations

import numpy as np
import pytest

from roiret.search.rerank import adaptive_weight, rerank


def codes(rng, n, words=4):
    return rng.integers(0, 2**64, size=(n, words), dtype=np.uint64)


def sim_matrix(q, db, nbits):
    bits = lambda c: np.unpackbits(c.view(np.uint8), axis=1, bitorder="little")[:, :nbits]  # noqa: E731
    return 1.0 - (bits(q)[:, None, :] != bits(db)[None, :, :]).sum(-1) / nbits


def reference(q, db, offsets, nbits, cand, N, n, k, mode):
    """Straight from the paper's text."""
    S = sim_matrix(q, db, nbits)
    top = cand[:N]

    def best(g, rows):
        block = S[np.ix_(rows, np.arange(offsets[g], offsets[g + 1]))]
        return np.nan if block.size == 0 else block.max()  # no RoI pair

    allq = np.arange(len(q))
    if mode == "exhaustive" or n >= len(top) or k >= len(q):
        scores = [best(g, allq) for g in top]
    else:
        # matching frequency of each query RoI over the top n candidates
        freq = np.zeros(len(q), int)
        for g in top[:n]:
            block = S[:, offsets[g] : offsets[g + 1]]
            if block.size:
                # the best pair: lowest db row, then lowest query row, among the maxima
                j, i = np.unravel_index(np.argmax(block.T), block.T.shape)
                freq[i] += 1
        chosen = np.argsort(-freq, kind="stable")[:k]
        scores = [best(g, allq) for g in top[:n]] + [best(g, chosen) for g in top[n:]]
    scores = np.array(scores, np.float64)
    order = np.argsort(-scores, kind="stable")
    return np.concatenate([order, np.arange(len(top), len(cand))]), scores


@pytest.mark.parametrize("mode", ["fast", "exhaustive"])
@pytest.mark.parametrize("seed", range(6))
def test_rerank_matches_the_paper(mode, seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 8, size=60)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    db = codes(rng, int(offsets[-1]))
    q = codes(rng, 12)
    cand = rng.permutation(60)[:45]
    N, n, k = 30, 7, 3
    got = rerank(q, db, offsets, 256, cand, N=N, n=n, k=k, mode=mode)
    order, scores = reference(q, db, offsets, 256, cand, N, n, k, mode)
    np.testing.assert_array_equal(got.order, order)
    np.testing.assert_allclose(got.roi_score[:N], scores.astype(np.float32))
    assert np.isnan(got.roi_score[N:]).all()
    if mode == "fast":
        assert got.query_mask.sum() == k


def test_rest_keeps_bow_order_and_ties_are_stable():
    rng = np.random.default_rng(0)
    q = codes(rng, 3)
    db = np.repeat(q[:1], 10, axis=0)  # every image matches query RoI 0 exactly: all scores 1
    offsets = np.arange(11, dtype=np.int64)
    cand = np.array([4, 2, 9, 0, 7, 1], np.int64)
    got = rerank(q, db, offsets, 256, cand, N=4, n=2, k=1)
    assert got.order.tolist() == [0, 1, 2, 3, 4, 5]  # equal scores keep BoW order
    assert (got.roi_score[:4] == 1.0).all()
    assert got.query_mask.tolist() == [True, False, False]


def test_images_without_rois_go_last_in_the_top_n():
    rng = np.random.default_rng(1)
    q = codes(rng, 2)
    offsets = np.array([0, 0, 2, 2, 3], np.int64)  # images 0 and 2 have no RoI
    db = codes(rng, 3)
    got = rerank(q, db, offsets, 256, np.array([0, 1, 2, 3]), N=4, n=4, k=2)
    assert set(got.order[:2].tolist()) == {1, 3} and set(got.order[2:].tolist()) == {0, 2}


def test_fusion_and_bow_mode():
    rng = np.random.default_rng(2)
    q = codes(rng, 4)
    db = codes(rng, 20)
    offsets = np.arange(0, 21, 2, dtype=np.int64)
    cand = np.arange(10)
    bow = np.linspace(1, 0.1, 10).astype(np.float32)
    pure = rerank(q, db, offsets, 256, cand, N=10, n=10, k=4)
    fused = rerank(q, db, offsets, 256, cand, N=10, n=10, k=4, bow_scores=bow, fusion=0.25)
    z = lambda x: (x - x.mean()) / x.std()  # noqa: E731
    expected = 0.75 * z(pure.roi_score.astype(np.float64)) + 0.25 * z(bow.astype(np.float64))
    np.testing.assert_allclose(fused.score, expected, rtol=1e-5, atol=1e-6)
    assert fused.order.tolist() == np.argsort(-expected, kind="stable").tolist()
    zero = rerank(q, db, offsets, 256, cand, N=10, n=10, k=4, bow_scores=bow, fusion=0.0)
    assert zero.order.tolist() == pure.order.tolist()
    only = rerank(q, db, offsets, 256, cand, N=10, n=10, k=4, bow_scores=bow, fusion=1.0)
    assert only.order.tolist() == list(range(10))  # BoW scores are decreasing here
    only_bow = rerank(q, db, offsets, 256, cand, N=10, n=2, k=1, mode="bow")
    assert only_bow.order.tolist() == list(range(10))


def test_bad_parameters():
    q = np.zeros((2, 4), np.uint64)
    with pytest.raises(ValueError, match="n .* must be <= N"):
        rerank(q, q, np.array([0, 2]), 256, np.array([0]), N=2, n=3, k=1)
    with pytest.raises(ValueError, match="mode"):
        rerank(q, q, np.array([0, 2]), 256, np.array([0]), N=2, n=1, k=1, mode="nope")
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        rerank(q, q, np.array([0, 2]), 256, np.array([0]), N=2, n=1, k=0)
    for bad in (2.0, -0.1, float("nan"), "fixed", True, [0.5]):
        with pytest.raises(ValueError, match="fusion"):
            rerank(q, q, np.array([0, 2]), 256, np.array([0]), N=2, n=1, k=1, fusion=bad, bow_scores=np.ones(1))


def test_adaptive_weight_hand_checked():
    # BoW: one candidate far ahead; RoI: flat. z(bow) = (3, -1, -1, -1) / sqrt(3)... computed below by hand
    bow = np.array([4.0, 0.0, 0.0, 0.0])  # mean 1, std sqrt(3): z = (sqrt 3, -1/sqrt 3, ...)
    roi = np.array([3.0, 2.0, 1.0, 0.0])  # mean 1.5, std sqrt(1.25): z = (1.5, .5, -.5, -1.5) / sqrt(1.25)
    # depth 4 > 3 candidates after the first: the gap runs to the last (smallest) score
    g_bow = np.sqrt(3) + 1 / np.sqrt(3)
    g_roi = 3 / np.sqrt(1.25)
    assert adaptive_weight(roi, bow) == pytest.approx(g_bow / (g_bow + g_roi))
    # depth 1: gap to the second score
    g_bow1 = np.sqrt(3) + 1 / np.sqrt(3)
    g_roi1 = 1 / np.sqrt(1.25)
    assert adaptive_weight(roi, bow, depth=1) == pytest.approx(g_bow1 / (g_bow1 + g_roi1))
    # constant scores carry no information: equal weights; one constant side -> the other wins
    assert adaptive_weight(np.ones(5), np.ones(5)) == 0.5
    assert adaptive_weight(roi, np.ones(4)) == 0.0
    assert adaptive_weight(np.ones(4), bow) == 1.0
    # candidates without RoIs (NaN) are left out
    assert adaptive_weight(np.r_[roi, np.nan], np.r_[bow, 100.0]) == pytest.approx(adaptive_weight(roi, bow))
    with pytest.raises(ValueError, match="1-D score arrays"):
        adaptive_weight(roi, bow[:3])


def test_adaptive_weight_properties():
    rng = np.random.default_rng(7)
    for _ in range(50):
        m = int(rng.integers(2, 60))
        r, b = rng.normal(size=m), rng.gamma(1.0, size=m)
        w = adaptive_weight(r, b)
        assert 0.0 <= w <= 1.0
        # invariant to each score's scale and offset, and to the candidates' order
        assert adaptive_weight(3 * r + 7, 0.01 * b - 2) == pytest.approx(w)
        p = rng.permutation(m)
        assert adaptive_weight(r[p], b[p]) == pytest.approx(w)
        # symmetric: swapping the stages gives the complementary weight
        assert adaptive_weight(b, r) == pytest.approx(1 - w)


def test_adaptive_fusion_trusts_the_stage_whose_best_stand_out():
    """A RoI ranking with one clear match and a flat, noisy BoW list: the adaptive weight
    leans to the RoI stage (w < 1/2), the fused score follows the formula, and the RoI winner
    stays first."""
    rng = np.random.default_rng(3)
    q = codes(rng, 4)
    db = codes(rng, 40)
    offsets = np.arange(0, 41, 2, dtype=np.int64)
    db[2 * 13] = q[1]  # candidate 13 holds an exact copy of query RoI 1: similarity 1
    cand = np.arange(20)
    bow = (np.linspace(0.30, 0.26, 20) + rng.normal(0, 0.002, 20)).astype(np.float32)  # flat, BoW favours 0
    pure = rerank(q, db, offsets, 256, cand, N=20, n=20, k=4)
    assert pure.order[0] == 13
    ad = rerank(q, db, offsets, 256, cand, N=20, n=20, k=4, bow_scores=bow, fusion="adaptive")
    w = adaptive_weight(pure.roi_score, bow)
    assert ad.bow_weight == pytest.approx(w) and w < 0.5
    z = lambda x: (x - x.mean()) / x.std()  # noqa: E731
    expected = (1 - w) * z(pure.roi_score.astype(np.float64)) + w * z(bow.astype(np.float64))
    np.testing.assert_allclose(ad.score, expected, rtol=1e-5, atol=1e-6)
    assert ad.order[0] == 13
    half = rerank(q, db, offsets, 256, cand, N=20, n=20, k=4, bow_scores=bow, fusion=0.5)
    assert half.bow_weight == 0.5


def test_explaining_pair_prefers_the_specific_region_among_equal_matches(kernels):
    from roiret.search.explain import explaining_pair

    rng = np.random.default_rng(3)
    q = rng.integers(0, 2**63, size=(2, 8), dtype=np.uint64)  # 512-bit codes
    db = np.stack([q[0], q[0].copy(), q[1].copy()])
    db[1, 0] ^= np.uint64(1)  # 1 bit off: similarity 511/512, the same match
    db[2, :4] ^= np.uint64(2**63 - 1)  # ~250 bits off: a poor match
    q_boxes = np.array([[0, 0, 100, 100], [10, 10, 20, 20]], np.float32)
    db_boxes = np.array([[0, 0, 500, 375], [200, 100, 260, 160], [0, 0, 10, 10]], np.float32)
    qb, dbb, sim = explaining_pair(q, q_boxes, db, db_boxes, 512)
    assert dbb == (200, 100, 260, 160) and qb == (0, 0, 100, 100) and sim == pytest.approx(511 / 512)
    qb, dbb, sim = explaining_pair(q, q_boxes, db, db_boxes, 512, tolerance=0.0)  # only the exact best
    assert dbb == (0, 0, 500, 375) and sim == 1.0
    assert explaining_pair(q[:0], q_boxes[:0], db, db_boxes, 512) is None
