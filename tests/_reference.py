"""Pure-NumPy references of the native kernels used by the RoI extraction stage.

They are oracles for tests (and a stand-in while the native module is being built, when
``ROIRET_TEST_REFERENCE_KERNELS=1``); the package itself ships no Python fallback.
Written from the contract in the kernels' docstrings, as plainly as possible.
"""

from __future__ import annotations

import math
from typing import Dict, List, NamedTuple

import numpy as np


def select_rois_ref(boxes, scores, image_sizes, k, t_min, t_rate, t_iou):
    """(B, D, 4) boxes, (B, D) scores, (B, 2) sizes (W, H) -> (B, k) int64, -1 padded."""
    boxes = np.asarray(boxes)
    scores = np.asarray(scores)
    sizes = np.asarray(image_sizes)
    if np.isnan(boxes).any() or np.isnan(scores).any():
        raise ValueError("NaN in boxes or scores")
    B, D = scores.shape
    out = np.full((B, k), -1, dtype=np.int64)
    for b in range(B):
        W, H = float(sizes[b, 0]), float(sizes[b, 1])
        cand = []
        for d in range(D):
            x1, y1, x2, y2 = (float(v) for v in boxes[b, d])
            w, h = x2 - x1, y2 - y1
            if w <= 0 or h <= 0:
                continue
            if (w * h) / (W * H) < t_min:
                continue
            if max(w, h) / min(w, h) > t_rate:
                continue
            cand.append(d)
        cand.sort(key=lambda d: (-float(scores[b, d]), d))
        kept = []
        for d in cand:
            if len(kept) == k:
                break
            ok = True
            for e in kept:
                if _iou(boxes[b, d], boxes[b, e]) >= t_iou:
                    ok = False
                    break
            if ok:
                kept.append(d)
        out[b, : len(kept)] = kept
    return out


def _iou(a, b):
    ax1, ay1, ax2, ay2 = (float(v) for v in a)
    bx1, by1, bx2, by2 = (float(v) for v in b)
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    a1 = (ax2 - ax1) * (ay2 - ay1)
    a2 = (bx2 - bx1) * (by2 - by1)
    return inter / (a1 + a2 - inter)


def pack_codes_ref(x):
    """(n, d) floats -> (n, ceil(d/64)) uint64; bit i = x_i > mean(row), word i//64, LSB first."""
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    words = (d + 63) // 64
    bits = np.zeros((n, words * 64), dtype=np.uint64)
    bits[:, :d] = x > x.mean(axis=1, keepdims=True)
    weights = np.uint64(1) << np.arange(64, dtype=np.uint64)  # bit position i % 64
    return (bits.reshape(n, words, 64) * weights).sum(axis=2, dtype=np.uint64)


def hamming_sim_ref(a, b, nbits):
    """1 - Hamming / nbits between two packed code rows."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    ones = sum(bin(int(v)).count("1") for v in x.ravel())
    return 1.0 - ones / nbits


def _tentative_pairs(query_words, db_words, begin, end, P, max_m):
    """Step 1, literally: per common word (ascending), the first P query features (by
    index) x the first P image features (stored order), query-major, truncated at max_m."""
    by_query, by_db = {}, {}
    for i in sorted(range(len(query_words)), key=lambda i: (int(query_words[i]), i)):
        by_query.setdefault(int(query_words[i]), []).append(i)
    for k in range(begin, end):
        by_db.setdefault(int(db_words[k]), []).append(k)
    pairs = []
    for w in sorted(set(by_query) & set(by_db)):
        pairs += [(i, k) for i in by_query[w][:P] for k in by_db[w][:P]]
    return pairs[:max_m]


def _affine_fit_ref(X, Y, XD, YD, idx):
    """Least squares on centred points, sums in ascending order; None when degenerate."""
    m = float(len(idx))
    mx, my, mu, mv = (sum_seq(v[idx]) / m for v in (X, Y, XD, YD))
    a, b, u, v = X[idx] - mx, Y[idx] - my, XD[idx] - mu, YD[idx] - mv
    saa, sab, sbb = sum_seq(a * a), sum_seq(a * b), sum_seq(b * b)
    sau, sbu, sav, sbv = sum_seq(a * u), sum_seq(b * u), sum_seq(a * v), sum_seq(b * v)
    det, tr = saa * sbb - sab * sab, saa + sbb
    if not det > 1e-6 * tr * tr:
        return None
    p11, p12 = (sbb * sau - sab * sbu) / det, (saa * sbu - sab * sau) / det
    p21, p22 = (sbb * sav - sab * sbv) / det, (saa * sbv - sab * sav) / det
    A = np.array([[p11, p12, mu - (p11 * mx + p12 * my)], [p21, p22, mv - (p21 * mx + p22 * my)]])
    return A if np.isfinite(A).all() else None


def sum_seq(x):
    """Left-to-right float64 sum (np.sum is pairwise, the kernel is sequential)."""
    s = 0.0
    for v in np.asarray(x, dtype=np.float64).tolist():
        s += v
    return s


TWO_PI = 2.0 * math.pi


def _angle_ok(W, theta, tol):
    """|wrap(W - theta)| < tol: d = W - theta wrapped by d - rint(d / 2pi) * 2pi, with the
    kernel's double operations (a multiplication by the double 1 / (2 pi))."""
    d = W - theta
    e = d - np.rint(d * (1.0 / TWO_PI)) * TWO_PI
    return np.abs(e) < tol


def _verify_ref(X, Y, XD, YD, S, LS, T, W, thr2, ln_tol, angle_tol, lo_iterations):
    """Steps 3-4 on one image's correspondences -> (inlier mask, 2x3 model)."""

    def sim(h):
        a, b = S[h] * math.cos(T[h]), S[h] * math.sin(T[h])
        dx, dy = X - X[h], Y - Y[h]
        ex = a * dx - b * dy + XD[h] - XD
        ey = b * dx + a * dy + YD[h] - YD
        ok = (ex * ex + ey * ey < thr2) & (LS - LS[h] < ln_tol) & (LS[h] - LS < ln_tol)
        ok &= _angle_ok(W, W[h], angle_tol)
        model = np.array([[a, -b, XD[h] - (a * X[h] - b * Y[h])], [b, a, YD[h] - (b * X[h] + a * Y[h])]])
        return ok, model

    counts = [int(sim(h)[0].sum()) for h in range(len(X))]
    mask, model = sim(int(np.argmax(counts)))  # argmax: the first of the largest
    for _ in range(lo_iterations):
        if mask.sum() < 3:
            break
        A = _affine_fit_ref(X, Y, XD, YD, np.flatnonzero(mask))
        if A is None:
            break
        s_a = math.sqrt(abs(float(A[0, 0] * A[1, 1] - A[0, 1] * A[1, 0])))  # the closest similarity
        if not (s_a > 0 and math.isfinite(s_a)):
            break
        ls_a, t_a = math.log(s_a), math.atan2(float(A[1, 0] - A[0, 1]), float(A[0, 0] + A[1, 1]))
        ex = A[0, 0] * X + A[0, 1] * Y + A[0, 2] - XD
        ey = A[1, 0] * X + A[1, 1] * Y + A[1, 2] - YD
        new = (ex * ex + ey * ey < thr2) & (LS - ls_a < ln_tol) & (ls_a - LS < ln_tol) & _angle_ok(W, t_a, angle_tol)
        if new.sum() < mask.sum():
            break
        grew = new.sum() > mask.sum()
        mask, model = new, A
        if not grew:
            break
    return mask, model


def spatial_verify_ref(
    query_words,
    query_xy,
    query_sizes,
    query_angles,
    db_words,
    db_xy,
    db_scales,
    db_angles,
    db_offsets,
    db_sides,
    rows,
    *,
    max_per_word=2,
    max_correspondences=1000,
    inlier_threshold=0.03,
    scale_tolerance=2.0,
    angle_tolerance=30.0,
    lo_iterations=3,
):
    """The fast spatial matching contract of roiret.spatial_verify, plainly, one image at a
    time -> (inliers int32 (R,), affine float64 (R, 2, 3), query boxes, db boxes float32 (R, 4),
    correspondences int32 (R,)).
    Per correspondence: s = 2 ** (sq / 16 - 2) / size_q, ls = ln s, t = radians(aq * 360 / 256
    - angle_q), w = fmod(t, 2 pi); the scale test is |ls_j - ls_h| < ln(scale_tolerance), the
    angle test |wrap(w_j - theta)| < radians(angle_tolerance) (see _angle_ok)."""
    R = len(rows)
    inliers = np.zeros(R, np.int32)
    affine = np.full((R, 2, 3), np.nan)
    qboxes = np.full((R, 4), np.nan, np.float32)
    dboxes = np.full((R, 4), np.nan, np.float32)
    correspondences = np.zeros(R, np.int32)
    ln_tol, angle_tol = math.log(scale_tolerance), math.radians(angle_tolerance)
    for r, g in enumerate(int(g) for g in rows):
        L = float(db_sides[g])
        pairs = _tentative_pairs(
            query_words, db_words, int(db_offsets[g]), int(db_offsets[g + 1]), max_per_word, max_correspondences
        )
        correspondences[r] = len(pairs)
        if len(pairs) < 3:
            continue
        qi = np.array([i for i, _ in pairs])
        X = np.array([float(query_xy[i, 0]) for i, _ in pairs])
        Y = np.array([float(query_xy[i, 1]) for i, _ in pairs])
        XD = np.array([float(db_xy[k, 0]) / 65535.0 * L for _, k in pairs])
        YD = np.array([float(db_xy[k, 1]) / 65535.0 * L for _, k in pairs])
        S = np.array([2.0 ** (int(db_scales[k]) / 16 - 2) / float(query_sizes[i]) for i, k in pairs])
        LS = np.array([math.log(s) for s in S])
        T = np.array([math.radians(int(db_angles[k]) * 360 / 256 - float(query_angles[i])) for i, k in pairs])
        W = np.array([math.fmod(t, TWO_PI) for t in T])
        thr = inlier_threshold * L
        mask, model = _verify_ref(X, Y, XD, YD, S, LS, T, W, thr * thr, ln_tol, angle_tol, lo_iterations)
        if not mask.any():  # a threshold so small that its square is 0
            continue
        inliers[r] = len(set(qi[mask].tolist()))
        affine[r] = model
        qboxes[r] = [X[mask].min(), Y[mask].min(), X[mask].max(), Y[mask].max()]
        dboxes[r] = [XD[mask].min(), YD[mask].min(), XD[mask].max(), YD[mask].max()]
    return inliers, affine, qboxes, dboxes, correspondences


#: GeM's activation floor (roiret.cnn.descriptors.GEM_EPS)
GEM_EPS = 1e-6


def pool_rois_ref(f: np.ndarray, rois: np.ndarray, mode: str, p: float = 3.0) -> np.ndarray:
    """max / sum / GeM ((mean over the cells of max(x, eps)^p)^(1/p)) of the feature map
    ``f`` (B, D, H, W) inside each RoI row ``[b, x1, y1, x2, y2]`` (cells, rounded, clipped),
    a float64 loop (0 for an empty RoI): the oracle of ``roiret.cnn.descriptors.pool_rois``."""
    B, D, H, W = f.shape
    out = np.zeros((len(rois), D), np.float64)
    for r, (b, x1, y1, x2, y2) in enumerate(rois):
        b = int(b)
        x1, y1 = max(int(round(x1)), 0), max(int(round(y1)), 0)
        x2, y2 = min(int(round(x2)), W), min(int(round(y2)), H)
        for d in range(D):
            vals = [float(f[b, d, y, x]) for y in range(y1, y2) for x in range(x1, x2)]
            if not vals:
                continue
            if mode == "max":
                out[r, d] = max(vals)
            elif mode == "sum":
                out[r, d] = sum(vals)
            else:
                out[r, d] = (sum(max(v, GEM_EPS) ** p for v in vals) / len(vals)) ** (1.0 / p)
    return out


# ---------------------------------------------------------------------------------------
# Hamming-embedded inverted file (ASMK*), in the style of the published ``asmk`` package:
# per-word lists of (image, signature), one pass per query term with a gather, a popcount
# of the XOR, the kernel and ``np.add.at`` into the image scores.
# ---------------------------------------------------------------------------------------
class AsmkIndexRef(NamedTuple):
    """Inverted lists of an ASMK index: list ``c`` holds postings ``offsets[c]:offsets[c+1]``
    of ``docs`` (ascending) and ``sigs`` (masked to ``nbits``)."""

    offsets: np.ndarray  # int64 (V + 1,)
    docs: np.ndarray  # int64 (nnz,)
    sigs: np.ndarray  # uint64 (nnz, W)
    idf: np.ndarray  # float64 (V,)
    inv_norm: np.ndarray  # float64 (N,)
    nbits: int


def signature_mask(nbits: int) -> np.ndarray:
    """uint64 (W,): the significant bits of each word of an ``nbits``-bit signature."""
    words = (nbits + 63) // 64
    mask = np.full(words, np.uint64(2**64 - 1), dtype=np.uint64)
    if nbits % 64:
        mask[-1] = np.uint64((1 << (nbits % 64)) - 1)
    return mask


def asmk_index_ref(offsets, words, sigs, nbits, vocab_size, n_docs=None, df=None) -> AsmkIndexRef:
    """Images in CSR form (image i: pairs ``offsets[i]:offsets[i+1]`` of ``words`` and
    ``sigs`` rows) -> inverted lists, idf = ln(N / df) (``n_docs``, ``df``: a collection's
    statistics instead of these images') and inv_norm = 1 / sqrt(sum of idf over the words)."""
    offsets = np.asarray(offsets, np.int64)
    n = len(offsets) - 1
    doc_of = np.repeat(np.arange(n), np.diff(offsets))
    order = np.lexsort((doc_of, words))  # by word, then image
    own_df = np.bincount(words, minlength=vocab_size)
    N = n if n_docs is None else n_docs
    df = own_df if df is None else np.asarray(df)
    # math.log: the C library's log, as the native code uses
    idf = np.array([math.log(N / int(c)) if c > 0 else 0.0 for c in df])
    self_sim = np.zeros(n)
    np.add.at(self_sim, doc_of[order], idf[np.asarray(words)[order]])
    with np.errstate(divide="ignore"):
        inv_norm = np.where(self_sim > 0, 1.0 / np.sqrt(self_sim), 0.0)
    lists = np.concatenate([[0], np.cumsum(own_df)]).astype(np.int64)
    masked = np.asarray(sigs, np.uint64)[order] & signature_mask(nbits)
    return AsmkIndexRef(lists, doc_of[order], masked, idf, inv_norm, nbits)


def asmk_sigma_ref(nbits: int, alpha: float, tau: float) -> np.ndarray:
    """sigma(h) for h = 0..nbits: sign(u) |u|^alpha if u = 1 - 2h / nbits > tau, else 0
    (Python floats: the C library's pow)."""
    out = []
    for h in range(nbits + 1):
        u = 1.0 - 2.0 * h / nbits
        out.append(math.copysign(abs(u) ** alpha, u) if u > tau and u != 0.0 else 0.0)
    return np.array(out)


def asmk_scores_ref(index: AsmkIndexRef, q_words, q_sigs, q_weights, alpha: float, tau: float) -> np.ndarray:
    """float64 (N,): inv_norm_d * sum_t weight_t * idf_{word_t} * sigma(h(q_t, b_{d, word_t})),
    accumulated as the native file adds: word by word (in the order of each word's first
    term), a word's terms summed per posting in term order before they are added."""
    sigma = asmk_sigma_ref(index.nbits, alpha, tau)
    mask = signature_mask(index.nbits)
    scores = np.zeros(len(index.inv_norm))
    q_words = np.asarray(q_words, np.int64)
    factor = [float(q_weights[t]) * index.idf[q_words[t]] for t in range(len(q_words))]
    terms_of: Dict[int, List[int]] = {}  # words by their first term that scores, each with its terms
    for t in range(len(q_words)):
        if factor[t] != 0.0:
            terms_of.setdefault(int(q_words[t]), []).append(t)
    for c, terms in terms_of.items():
        b, e = index.offsets[c], index.offsets[c + 1]
        if b == e:
            continue
        s = None
        for t in terms:
            h = np.bitwise_count(index.sigs[b:e] ^ (q_sigs[t] & mask)).sum(axis=1)
            s = factor[t] * sigma[h] if s is None else s + factor[t] * sigma[h]
        np.add.at(scores, index.docs[b:e], s)
    return scores * index.inv_norm


def select_terms_ref(q_words, q_weights, idf: np.ndarray, df: np.ndarray, max_postings: int) -> np.ndarray:
    """bool (m,): the terms a search with a budget of ``max_postings`` postings scans. Terms
    that can score (weight * idf > 0) cost their word's df; when they cost more than the
    budget, whole words (all their terms) are taken by descending sum of their terms'
    weight * idf (ties: the word that appears first) while the total stays within it, the
    first always."""
    q_words = np.asarray(q_words, np.int64)
    factor = np.asarray(q_weights, np.float64) * idf[q_words]
    cost = np.asarray(df, np.int64)[q_words]
    live = np.flatnonzero(factor != 0)
    keep = np.zeros(len(factor), bool)
    if max_postings == 0 or cost[live].sum() <= max_postings:
        keep[live] = True
        return keep
    groups: dict = {}  # word -> live terms, in order of first appearance
    for t in live:
        groups.setdefault(int(q_words[t]), []).append(int(t))
    importance = {w: sum(float(factor[t]) for t in ts) for w, ts in groups.items()}
    used = 0
    for i, w in enumerate(sorted(groups, key=lambda w: (-importance[w], groups[w][0]))):
        c = int(cost[groups[w]].sum())
        if i == 0 or used + c <= max_postings:
            keep[groups[w]] = True
            used += c
    return keep


def top_ref(scores: np.ndarray, ids: np.ndarray, top: int):
    """(ids, scores) of the best ``top``: descending score, ties by position."""
    order = np.lexsort((np.arange(len(scores)), -scores))[:top]
    return ids[order], scores[order]
