"""Re-ranking BoW candidates with RoI codes (the paper's 3.2.4), as plain functions.

Given the query's RoI codes and the BoW top-N candidates (image rows of a
:class:`~roiret.store.RoIStore`, best first):

* ``"fast"`` (the paper's strategy): cross-match every query RoI with the RoIs of the top
  ``n`` candidates; count how often each query RoI forms an image's best pair (its
  matching frequency); keep the ``k`` most frequent query RoIs (ties: the RoI selected
  earlier, i.e. with the larger activation sum); cross-match only those with the other
  ``N - n`` candidates. Image score = max RoI-pair similarity (1 − Hamming / bits).
* ``"exhaustive"``: every query RoI against every candidate (for comparison).
* ``"global"``: one whole-image code per image (the paper's "baseline").

The top N are re-ordered by that score (stable: equal scores keep BoW order; candidates
without RoIs go last); the others keep their BoW order.

``fusion`` (beyond the paper; 0, ``"none"`` or ``None`` = the RoI score alone) ranks the top N by
``(1 − w) · z(roi_score) + w · z(bow_score)``, where ``z`` standardises a score over the N
candidates (mean 0, standard deviation 1; a constant score gives 0). Standardising makes
the mix independent of the two scores' scales, which differ by an order of magnitude and
from one collection to another. ``w`` is either a fixed weight in [0, 1] or, with
``fusion="adaptive"``, chosen per query from the shape of the two score lists (query-
adaptive late fusion, in the spirit of Zheng et al., CVPR 2015: a stage whose best
candidates stand out from the rest is trusted more):

    w = gap(bow) / (gap(bow) + gap(roi)),   gap(x) = z(x)₍₁₎ − z(x)₍₁₊ADAPTIVE_DEPTH₎

with ``z(x)₍ᵢ₎`` the i-th largest standardised score over the N candidates (the last one
when there are fewer; both gaps 0 → w = ½). :func:`adaptive_weight` computes it. Why
this rule: on Oxford5k-dev the BoW stage is the stronger one and a fixed w = ½ already
beats both stages, but on the demo collection (small objects on textured backgrounds)
BoW fails and a fixed weight drags the RoI ranking down; the adaptive weight beat w = ½
on every measured column of both (``benchmarks/fusion_study.py``, docs/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import numpy as np

from .._kernels import CrossMatchResult, cross_match
from ..params import MODES, Fusion, check_fusion

__all__ = [
    "ADAPTIVE_DEPTH",
    "MODES",
    "Matcher",
    "RerankResult",
    "adaptive_weight",
    "check_fusion",
    "rerank",
    "rerank_with",
]

ADAPTIVE_DEPTH = 4


@dataclass
class RerankResult:
    """``order``: positions into the candidate list, best first (length = candidates).
    ``score``: the re-ranking score of each candidate (same order as the candidates; NaN
    beyond N, -inf for a candidate without a RoI pair). ``roi_score``: the best RoI-pair
    similarity (NaN beyond N and without a RoI pair: no RoIs in the query or the image).
    ``best_query`` / ``best_db``: the best RoI pair (query row, store row) of
    each candidate (-1 when none). ``query_mask``: the query RoIs used for the N − n
    candidates (fast mode), else all."""

    order: np.ndarray
    score: np.ndarray
    roi_score: np.ndarray
    best_query: np.ndarray
    best_db: np.ndarray
    query_mask: np.ndarray
    bow_weight: float = 0.0  # the fusion weight w used (0: the RoI score alone)
    #: ``score`` is the fused standardised score (any real number) rather than the RoI
    #: similarity (in [0, 1]): fusion was on
    standardised: bool = False


def _stats(r: np.ndarray, b: np.ndarray, ok: np.ndarray, depth: int) -> Tuple[np.ndarray, np.ndarray, float]:
    """Means, standard deviations and adaptive BoW weight of the two score lists over
    ``ok`` — one vectorised pass (this runs once per query)."""
    v = np.stack([r[ok], b[ok]])
    m = v.shape[1]
    if m == 0:
        return np.zeros(2), np.zeros(2), 0.5
    mean, sd = v.mean(axis=1), v.std(axis=1)
    v.sort(axis=1)
    spread = v[:, -1] - v[:, -1 - min(m - 1, depth)]  # best minus the (1 + depth)-th best
    gap = np.divide(spread, sd, out=np.zeros(2), where=sd > 0)  # the same gap in z units
    total = gap[0] + gap[1]
    return mean, sd, (0.5 if total <= 0 else float(gap[1] / total))


def adaptive_weight(roi_scores: np.ndarray, bow_scores: np.ndarray, depth: int = ADAPTIVE_DEPTH) -> float:
    """The BoW weight of ``fusion="adaptive"`` for one query (module docstring), from the
    two scores of the re-ranked candidates (entries where either score is not finite are
    left out)."""
    r = np.asarray(roi_scores, np.float64)
    b = np.asarray(bow_scores, np.float64)
    if r.shape != b.shape or r.ndim != 1:
        raise ValueError(f"expected two 1-D score arrays of one length, got {r.shape} and {b.shape}")
    return float(_stats(r, b, np.isfinite(r) & np.isfinite(b), int(depth))[2])


def _check(name: str, v: Any, lo: int = 1) -> int:
    if isinstance(v, bool) or int(v) != v or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


#: ``match(query_mask, images) -> CrossMatchResult``: cross-match the query's RoIs (those in
#: the mask; ``None``: all) with the images at the given candidate rows (results in that order)
Matcher = Callable[[Optional[np.ndarray], np.ndarray], CrossMatchResult]


def rerank(
    q_codes: np.ndarray,
    db_codes: np.ndarray,
    offsets: np.ndarray,
    nbits: int,
    candidates: np.ndarray,
    *,
    N: int,
    n: int,
    k: int,
    mode: str = "fast",
    bow_scores: Optional[np.ndarray] = None,
    fusion: Fusion = None,
    threads: Optional[int] = None,
) -> RerankResult:
    """Re-rank ``candidates`` (int64 image rows, BoW order) — see the module docstring.

    ``q_codes`` (r, words) uint64 and ``db_codes``/``offsets`` (CSR over images) as in
    :func:`roiret.cross_match`. For ``mode="global"`` pass one code per query and per
    image (``offsets = arange(n_images + 1)``).
    """
    offsets = np.asarray(offsets)

    def match(mask: Optional[np.ndarray], images: np.ndarray) -> CrossMatchResult:
        return cross_match(q_codes, db_codes, offsets, nbits, mask, images=images, threads=threads)

    return rerank_with(match, len(q_codes), candidates, N=N, n=n, k=k, mode=mode, bow_scores=bow_scores, fusion=fusion)


def rerank_with(
    match: Matcher,
    nq: int,
    candidates: np.ndarray,
    *,
    N: int,
    n: int,
    k: int,
    mode: str = "fast",
    bow_scores: Optional[np.ndarray] = None,
    fusion: Fusion = None,
) -> RerankResult:
    """:func:`rerank` with the cross-matching left to ``match`` (:data:`Matcher`), for
    collections whose RoIs are not one array (a sharded index matches each shard's
    candidates on that shard): ``nq`` query RoIs; everything that depends on the whole
    candidate list (the fast strategy's votes, the fusion's statistics) is computed here,
    on the merged results."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    fusion = check_fusion(fusion)
    N, n, k = _check("N", N), _check("n", n), _check("k", k)
    if n > N:
        raise ValueError(f"n (exhaustively matched candidates) must be <= N, got n={n}, N={N}")
    candidates = np.ascontiguousarray(candidates, dtype=np.int64)
    m = len(candidates)
    top = min(N, m)
    score = np.full(m, np.nan, np.float32)
    roi_score = np.full(m, np.nan, np.float32)
    bq = np.full(m, -1, np.int64)
    bd = np.full(m, -1, np.int64)
    mask = np.ones(nq, bool)
    if mode == "bow" or top == 0:
        return RerankResult(np.arange(m), score, roi_score, bq, bd, mask)

    if mode == "fast" and n < top and k < nq:
        head = match(None, candidates[:n])
        votes = head.query_votes
        chosen = np.argsort(-votes, kind="stable")[:k]
        mask = np.zeros(nq, bool)
        mask[chosen] = True
        tail = match(mask, candidates[n:top])
        parts = [head, tail]
    else:
        parts = [match(None, candidates[:top])]
    matched = np.concatenate([p.score for p in parts])
    roi_score[:top] = np.where(np.isfinite(matched), matched, np.nan)  # -inf: no RoI pair (no RoIs on a side)
    bq[:top] = np.concatenate([p.best_query for p in parts])
    bd[:top] = np.concatenate([p.best_db for p in parts])

    s = roi_score[:top].astype(np.float64)
    f = 0.0
    if fusion != 0.0:
        if bow_scores is None or len(bow_scores) < top:
            raise ValueError("fusion needs the BoW score of every re-ranked candidate (bow_scores)")
        b = np.asarray(bow_scores, np.float64)[:top]
        ok = np.isfinite(s) & np.isfinite(b)
        mean, sd, w = _stats(s, b, ok, ADAPTIVE_DEPTH)
        f = w if isinstance(fusion, str) else float(fusion)  # "adaptive" (check_fusion) or a weight
        # (1 - f) z(roi) + f z(bow); a constant score (sd 0) contributes 0
        cr = (1 - f) / sd[0] if sd[0] > 0 else 0.0
        cb = f / sd[1] if sd[1] > 0 else 0.0
        s = np.where(ok, cr * (np.where(ok, s, 0.0) - mean[0]) + cb * (np.where(ok, b, 0.0) - mean[1]), -np.inf)
    score[:top] = s
    head_order = np.argsort(-np.where(np.isfinite(s), s, -np.inf), kind="stable")
    order = np.concatenate([head_order, np.arange(top, m)]).astype(np.int64)
    return RerankResult(order, score, roi_score, bq, bd, mask, float(f), fusion != 0.0)
