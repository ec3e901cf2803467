"""Query expansion from verified results: average query expansion (Chum et al., ICCV 2007,
"Total recall") in the BoW space, and α-weighted expansion of binary codes.

The query and its best verified results are averaged into one query that is searched
again: with the ASMK* first stage (the default), one query made of every bag's words and
signatures, each bag weighted by its own normalisation (:func:`expanded_terms`); with
TF-IDF, the sum of their L2-normalised TF-IDF vectors (:func:`expanded_bag`). A verified
result is another view of the object, so its words bring back views the query alone missed
(other sides of the building, other lighting) — the first stage's recall is what
re-ranking can never recover. Only results that spatial verification confirmed are used,
so a wrong top result cannot drift the query.

With ``qe_margin`` (:class:`~roiret.params.VerifyParams`), a verified image brings only the
features inside the query's box as its verified affine maps it there, grown by the margin
(:func:`expansion_box`): the object, not the rest of the photo — fewer words, so fewer
postings for the expanded search to scan.

The TF-IDF inverted file weights a query's counts by idf and normalises;
:func:`expanded_bag` returns counts that, weighted so, give exactly the averaged vector
(words with idf 0 — in every image — carry no weight and are left out).
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

from ..bow.index import query_weights

__all__ = [
    "ROI_QE_ALPHA",
    "ROI_QE_IMAGES",
    "as_boxes",
    "expanded_bag",
    "expanded_codes",
    "expanded_terms",
    "expansion_box",
    "inside_box",
    "tfidf",
]

#: αQE of the query's RoI and global codes (with ``qe`` > 0): the best verified images used
#: and the exponent. Measured on Oxford5k-dev (docs/RESULTS.md): default pipeline 86.38 /
#: 69.99 / 35.75 without, 86.61 / 70.51 / 35.72 with (α = 3: 86.62 / 70.23 / 35.61; 10
#: images: 86.60 / 70.12 / 35.47); the demo collection unchanged (99.20 / 100 / 100).
ROI_QE_IMAGES = 5
ROI_QE_ALPHA = 1.0


def expansion_box(affine: np.ndarray, query_xy: np.ndarray, margin: float) -> np.ndarray:
    """The region of a verified image that query expansion takes its features from:
    the bounding box of the query features ``query_xy`` (float (n, 2), n >= 1, pixels of
    the query), its corners mapped by ``affine`` (2×3, query → image, as
    :class:`~roiret.search.verify.Verification` gives it), the box of the mapped corners
    grown by ``margin`` times its width and height on each side. float64 ``(x0, y0, x1,
    y1)``; all NaN when the affine is not finite (no inliers: nothing is inside)."""
    xy = np.asarray(query_xy, np.float64).reshape(-1, 2)
    a = np.asarray(affine, np.float64).reshape(2, 3)
    if len(xy) == 0 or not np.all(np.isfinite(a)):
        return np.full(4, np.nan)
    (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
    corners = np.array([[x0, y0, 1.0], [x1, y0, 1.0], [x0, y1, 1.0], [x1, y1, 1.0]]) @ a.T
    lo, hi = corners.min(0), corners.max(0)
    grow = float(margin) * (hi - lo)
    return np.concatenate([lo - grow, hi + grow])


def as_boxes(boxes: object, n: int) -> np.ndarray:
    """``boxes`` as float64 ``(n, 4)`` rows ``(x0, y0, x1, y1)`` (a NaN: an empty box);
    ValueError for another shape or an infinite value."""
    try:
        b = np.asarray(boxes, np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"boxes: expected {n} rows of (x0, y0, x1, y1), got {type(boxes).__name__}") from e
    if b.shape != (n, 4):
        raise ValueError(f"boxes: expected shape ({n}, 4), one (x0, y0, x1, y1) per row, got {b.shape}")
    if np.isinf(b).any():
        raise ValueError("boxes: coordinates must be finite (NaN: an empty box)")
    return b


def inside_box(xy: np.ndarray, box: np.ndarray) -> np.ndarray:
    """bool mask of the points ``xy`` (n, 2) inside ``box`` = (x0, y0, x1, y1), borders
    included (none when the box has a NaN)."""
    p = np.asarray(xy, np.float64).reshape(-1, 2)
    b = np.asarray(box, np.float64).reshape(4)
    return np.asarray((p[:, 0] >= b[0]) & (p[:, 0] <= b[2]) & (p[:, 1] >= b[1]) & (p[:, 1] <= b[3]))


def tfidf(words: np.ndarray, counts: np.ndarray, idf: np.ndarray) -> np.ndarray:
    """The L2-normalised TF-IDF weights of a bag (``words`` unique int64, ``counts``), as
    the inverted file computes them (the zero vector when the norm is 0)."""
    v = np.asarray(counts, np.float64) * idf[np.asarray(words, np.int64)]
    n = float(np.linalg.norm(v))
    return np.asarray(v / n if n > 0 else v)


def expanded_bag(bags: List[Tuple[np.ndarray, np.ndarray]], idf: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(words, counts)`` whose TF-IDF vector is proportional to the sum of the
    normalised TF-IDF vectors of ``bags`` (the query's first, then the results')."""
    idf = np.asarray(idf, np.float64)
    words = np.concatenate([np.asarray(w, np.int64) for w, _ in bags]) if bags else np.zeros(0, np.int64)
    weights = np.concatenate([tfidf(w, c, idf) for w, c in bags]) if bags else np.zeros(0)
    u, inverse = np.unique(words, return_inverse=True)
    total = np.zeros(len(u))
    np.add.at(total, inverse, weights)
    keep = (idf[u] > 0) & (total > 0)
    u, total = u[keep], total[keep]
    return u, (total / idf[u]).astype(np.float32)


def expanded_terms(
    bags: List[Tuple[np.ndarray, np.ndarray]], idf: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average query expansion for the selective match kernel: ``(words, signatures,
    weights)`` of one query made of every bag ``(words, signatures)`` (the query's first,
    then the verified results'), each weighted by its own normalisation over the number of
    bags — its score is the mean of the bags' normalised kernel similarities (the ASMK
    analogue of averaging normalised TF-IDF vectors)."""
    words = [np.asarray(w, np.int64) for w, _ in bags]
    arrays = [np.asarray(s, np.uint64) for _, s in bags]
    # signature words per term from a non-empty bag (an image may have no feature in its box)
    width = next((a.size // len(w) for w, a in zip(words, arrays) if len(w)), 1)
    sigs = [a.reshape(len(w), width) for w, a in zip(words, arrays)]
    weights = [query_weights(w, idf) / len(bags) for w in words]
    return np.concatenate(words), np.ascontiguousarray(np.concatenate(sigs)), np.concatenate(weights).astype(np.float32)


def _pack_bits(bits: np.ndarray, words: int) -> np.ndarray:
    """``bool (n, nbits)`` → ``uint64 (n, words)``, bit i of a code in bit i % 64 of word
    i // 64 (the layout of :func:`roiret._kernels.pack_codes`)."""
    n, nbits = bits.shape
    padded = np.zeros((n, words * 64), np.uint8)
    padded[:, :nbits] = bits
    return np.packbits(padded, axis=1, bitorder="little").view("<u8").astype(np.uint64)


def expanded_codes(q_codes: np.ndarray, expansion: List[np.ndarray], nbits: int, alpha: float) -> np.ndarray:
    """α-weighted query expansion of binary codes (αQE, Radenović et al., in Hamming space):
    every query code becomes the weighted majority of itself (weight 1) and, for each image
    of ``expansion`` (its codes, ``uint64 (r, words)``), that image's most similar code,
    weighted by ``similarity ** alpha`` (similarity = 1 − Hamming / nbits). A tie keeps
    the query's bit."""
    from .._kernels import hamming_matrix, unpack_codes

    q_codes = np.ascontiguousarray(q_codes, np.uint64)
    if len(q_codes) == 0:
        return q_codes
    q = unpack_codes(q_codes, nbits).astype(np.float64) * 2 - 1
    acc = q.copy()
    for codes in expansion:
        codes = np.ascontiguousarray(codes, np.uint64)
        if len(codes) == 0:
            continue
        sim = 1.0 - hamming_matrix(q_codes, codes, nbits=nbits).astype(np.float64) / nbits
        best = np.argmax(sim, axis=1)
        w = np.clip(sim[np.arange(len(best)), best], 0.0, 1.0) ** float(alpha)
        acc += w[:, None] * (unpack_codes(codes[best], nbits).astype(np.float64) * 2 - 1)
    bits = (acc > 0) | ((acc == 0) & (q > 0))
    return _pack_bits(bits, q_codes.shape[1])
