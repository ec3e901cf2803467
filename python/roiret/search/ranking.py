"""Ranking, as a pure function of (prepared query, index, parameters): the BoW top N from
the inverted file; beyond the paper, the top R verified geometrically
(:mod:`roiret.search.verify`) and the query expanded with the best verified results and
searched again (:mod:`roiret.search.expansion`); the top N re-ranked with RoI codes
(:func:`roiret.search.rerank.rerank`; with query expansion, the query's RoI and global
codes expanded with those of the best verified images); verified candidates first, by inliers, then the
others in re-ranked order — as :class:`~roiret.search.results.Hit` objects."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING, Dict, List, Optional, Set, Tuple

import numpy as np

from ..io.images import Box
from ..params import RerankParams, VerifyParams
from .collection import Collection
from .expansion import ROI_QE_ALPHA, ROI_QE_IMAGES, expanded_bag, expanded_codes, expanded_terms, expansion_box
from .rerank import RerankResult, rerank_with
from .results import Hit, PreparedQuery, SearchResult
from .verify import Verification

if TYPE_CHECKING:  # pragma: no cover
    from .._kernels import CrossMatchResult

__all__ = ["VERIFIED_BOW_WEIGHT", "VERIFIED_BOW_WEIGHTS", "rank"]

#: ``fusion="adaptive"`` when spatial verification confirmed a result: the first stage's
#: weight in the score of the re-ranked unverified candidates, per first stage. Verified
#: matches show that the query's local features work, and the (expanded) first-stage list is
#: then the better guide: measured on Oxford5k-dev and the demo collection (docs/RESULTS.md,
#: benchmarks/verify_study.py). TF-IDF 0.9 (1.0: 88.82 / 71.89 / 38.43 against 89.51 / 73.33 /
#: 38.48); ASMK 1.0, its expanded list alone (0.9: 88.40 / 76.95 / 42.45 against 90.25 /
#: 78.74 / 48.28; the demo 97.96 against 97.78): the RoI stage ranks the queries nothing was
#: verified for.
VERIFIED_BOW_WEIGHTS = {"tfidf": 0.9, "asmk": 1.0}
#: the TF-IDF value (the name before the ASMK first stage)
VERIFIED_BOW_WEIGHT = VERIFIED_BOW_WEIGHTS["tfidf"]


def _candidates(
    words: np.ndarray, counts: np.ndarray, index: Collection, depth: int, weights: Optional[np.ndarray] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """The BoW top ``depth`` (ids, scores); when the query has too few keypoints for BoW to
    rank that many, the remaining images follow in insertion order with score 0."""
    ids, bow_scores = index.search_bow(words, counts, depth, weights)
    if len(ids) < depth:
        rest = np.setdiff1d(index.ids, ids, assume_unique=True)
        ids = np.concatenate([ids, rest[: depth - len(ids)]])
        bow_scores = np.concatenate([bow_scores, np.zeros(depth - len(bow_scores), np.float32)])
    return ids, bow_scores


def _rerank(
    query: PreparedQuery,
    index: Collection,
    nbits: int,
    rows: np.ndarray,
    bow_scores: np.ndarray,
    p: RerankParams,
    K: int,
    threads: Optional[int],
) -> RerankResult:
    whole = p.mode == "global"  # one whole-image code per image: every candidate matched exhaustively
    if whole:
        q, mode, k = np.asarray(query.global_code).reshape(1, -1), "exhaustive", 1
    else:
        q = np.zeros((0, index.code_words), np.uint64) if p.mode == "bow" else np.asarray(query.codes)[:K]
        mode, k = p.mode, p.k

    def match(mask: Optional[np.ndarray], images: np.ndarray) -> "CrossMatchResult":
        return index.cross_match(q, nbits, mask, images, whole_image=whole, threads=threads)

    return rerank_with(match, len(q), rows, N=p.N, n=p.n, k=k, mode=mode, bow_scores=bow_scores, fusion=p.fusion)


def _box(b: np.ndarray) -> Box:
    return (float(b[0]), float(b[1]), float(b[2]), float(b[3]))


def _verified(checks: Dict[int, Verification], min_inliers: int) -> List[int]:
    """The verified rows (:meth:`Verification.verified`), most inliers first (ties: the order
    they were verified in, i.e. BoW order)."""
    rows = [r for r, c in checks.items() if c.verified(min_inliers)]
    return sorted(rows, key=lambda r: -checks[r].inliers)


def _verify_and_expand(
    query: PreparedQuery, index: Collection, v: VerifyParams, depth: int, threads: Optional[int]
) -> Tuple[np.ndarray, np.ndarray, Dict[int, Verification], Dict[str, float]]:
    """The candidates (ids, BoW scores) after spatial verification of the top R and, when
    some are verified, query expansion; the verifications by store row; timings."""
    t0 = time.perf_counter()
    ids, bow_scores = _candidates(query.words, query.counts, index, depth)
    t1 = time.perf_counter()
    if not index.has_geometry or query.geometry is None or v.R == 0:
        return ids, bow_scores, {}, {"bow_search": t1 - t0}
    checks = index.verify(query.geometry, index.rows_of(ids[: v.R]), threads)
    t2 = time.perf_counter()
    verified = _verified(checks, v.min_inliers)
    if v.qe == 0 or not verified:
        return ids, bow_scores, checks, {"bow_search": t1 - t0, "verify": t2 - t1}
    best = verified[: v.qe]
    bags = [(query.words, query.counts)]
    weights = None
    boxes = None  # qe_margin: only the verified images' features inside the mapped query box
    if v.qe_margin is not None:
        boxes = np.stack([expansion_box(checks[r].affine, query.geometry.xy, v.qe_margin) for r in best])
    if index.embedded:  # the stored (words, signatures) of the verified images
        words, counts, weights = expanded_terms(bags + index.bags_of_rows(best, boxes), index.idf())
    else:
        bags += [np.unique(w.astype(np.int64), return_counts=True) for w in index.words_of_rows(best, boxes)]
        words, counts = expanded_bag(bags, index.idf())
    first = ids
    ids, bow_scores = _candidates(words, counts, index, depth, weights)
    # images verified by the first search stay candidates even if the expanded one misses them
    missing = np.setdiff1d(index.ids_at(np.asarray(verified, np.int64)), ids)
    if len(missing):
        keep = np.isin(first, missing)
        ids = np.concatenate([ids, first[keep]])
        bow_scores = np.concatenate([bow_scores, np.zeros(int(keep.sum()), np.float32)])
    t3 = time.perf_counter()
    rows = index.rows_of(ids[: v.R])
    new = np.array([r for r in rows if int(r) not in checks], np.int64)
    checks.update(index.verify(query.geometry, new, threads))
    t4 = time.perf_counter()
    return ids, bow_scores, checks, {"bow_search": t1 - t0 + t3 - t2, "verify": t2 - t1 + t4 - t3}


def _expand_codes(query: PreparedQuery, index: Collection, rows: List[int], nbits: int) -> PreparedQuery:
    """``query`` with its RoI and global codes expanded (αQE) with those of the verified
    images at ``rows`` (best first, the first ``ROI_QE_IMAGES``)."""
    if query.codes is None or query.global_code is None or not rows:
        return query
    rois, globs = zip(*index.codes_of_rows(rows[:ROI_QE_IMAGES]))
    codes = expanded_codes(query.codes, list(rois), nbits, ROI_QE_ALPHA)
    g = np.asarray(query.global_code).reshape(1, -1)
    glob = expanded_codes(g, list(globs), nbits, ROI_QE_ALPHA)[0]
    return dataclasses.replace(query, codes=codes, global_code=glob)


def _iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, np.float64)
    iw = np.clip(np.minimum(b[:, 2], box[2]) - np.maximum(b[:, 0], box[0]), 0, None)
    ih = np.clip(np.minimum(b[:, 3], box[3]) - np.maximum(b[:, 1], box[1]), 0, None)
    inter = iw * ih
    union = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) + (box[2] - box[0]) * (box[3] - box[1]) - inter
    return np.asarray(inter / np.maximum(union, 1e-12))


def _inlier_pair(q_boxes: np.ndarray, db_boxes: np.ndarray, check: Verification) -> Optional[Tuple[Box, Box]]:
    """The RoI pair supported by the inliers: the query RoI and the database RoI that best
    overlap the inliers' bounding boxes (None when either side has no RoI)."""
    if len(q_boxes) == 0 or len(db_boxes) == 0:
        return None
    i = int(np.argmax(_iou(q_boxes, check.query_box)))
    j = int(np.argmax(_iou(db_boxes, check.db_box)))
    return _box(q_boxes[i]), _box(db_boxes[j])


def _final_order(rr: RerankResult, rows: np.ndarray, checks: Dict[int, Verification], verified: Set[int]) -> np.ndarray:
    """Verified candidates (rows in ``verified``) first, by inliers, then re-ranked order;
    then the others."""
    key = np.array([checks[int(r)].inliers if int(r) in verified else 0 for r in rows[rr.order]], np.int64)
    return np.asarray(rr.order[np.lexsort((np.arange(len(key)), -key))])


def _score(placed: str, inliers: int, rerank_score: float, bow_score: float, standardised: bool) -> float:
    """A hit's ``score`` (:class:`~roiret.search.results.Hit`), by how it was ``placed``:
    ``"verified"``: its inliers; ``"reranked"``: in [0, 1], the RoI similarity or the fused
    standardised score through the logistic function; ``"bow"`` (mode ``"bow"``, where the
    first stage is the ranking): the first-stage score, in [0, 1]; ``"after"`` (following
    the re-ranked hits in first-stage order): the first-stage score − 1, in [−1, 0]."""
    if placed == "verified":
        return float(inliers)
    first = min(max(bow_score, 0.0), 1.0)
    if placed != "reranked":
        return first - (placed == "after")
    if standardised:
        return 0.5 * (1.0 + math.tanh(rerank_score / 2))  # the logistic function, without overflow
    return min(max(rerank_score, 0.0), 1.0)


def _hits(
    q_boxes: np.ndarray,
    index: Collection,
    ids: np.ndarray,
    rows: np.ndarray,
    bow_scores: np.ndarray,
    rr: RerankResult,
    checks: Dict[int, Verification],
    order: np.ndarray,
    mode: str,
    verified: Set[int],
) -> List[Hit]:
    """The hits at candidate positions ``order``; what they show (names, the boxes of the
    RoI pairs) is read from the collection in one call each (a sharded index: one per shard)."""
    top_rows = [int(rows[p]) for p in order]
    reranked = [mode != "bow" and bool(np.isfinite(rr.roi_score[p])) for p in order]
    paired = [i for i, p in enumerate(order) if reranked[i] and mode != "global" and rr.best_db[p] >= 0]
    db_boxes = dict(zip(paired, index.roi_boxes_at(np.asarray([rr.best_db[order[i]] for i in paired], np.int64))))
    inlier_rows = [top_rows[i] for i in paired if top_rows[i] in verified]
    unranked = "bow" if mode == "bow" else "after"  # how a hit the RoIs did not score was placed
    roi_boxes = dict(zip(inlier_rows, index.roi_boxes_of(inlier_rows)))
    hits = []
    for position, (p, row, name) in enumerate(zip(order, top_rows, index.names_of(top_rows))):
        check = checks.get(row)
        inliers = check.inliers if check is not None else 0
        pair = None
        if position in db_boxes:
            pair = _box(q_boxes[rr.best_query[p]]), _box(db_boxes[position])
            if check is not None and row in verified:
                pair = _inlier_pair(q_boxes, roi_boxes[row], check) or pair
        placed = "verified" if row in verified else "reranked" if reranked[position] else unranked
        hits.append(
            Hit(
                rank=position + 1,
                id=int(ids[p]),
                name=name,
                score=_score(placed, inliers, float(rr.score[p]), float(bow_scores[p]), rr.standardised),
                bow_score=float(bow_scores[p]),
                roi_score=float(rr.roi_score[p]),
                query_box=pair[0] if pair else None,
                db_box=pair[1] if pair else None,
                reranked=reranked[position],
                inliers=inliers,
                verified=row in verified,
            )
        )
    return hits


def rank(
    query: PreparedQuery,
    index: Collection,
    nbits: int,
    params: RerankParams,
    *,
    K: int,
    top: int,
    verify: Optional[VerifyParams] = None,
    threads: Optional[int] = None,
) -> SearchResult:
    """Rank ``index`` for ``query`` with ``params`` (N, n, k, mode, fusion) and ``verify``
    (R, min_inliers, qe; ``None``: no verification); the query's RoIs are cut to ``K``
    (they are in selection order). Returns the first ``top`` hits. The caller holds
    whatever lock keeps ``index`` still."""
    if params.mode != "bow" and (query.rois is None or query.codes is None or query.global_code is None):
        raise ValueError(f"mode {params.mode!r} needs the query's RoIs: prepare_query(..., with_rois=True)")
    v = verify if verify is not None else VerifyParams(R=0, qe=0)
    q_boxes = query.boxes[:K]
    stage = "asmk" if index.embedded else "tfidf"
    depth = min(len(index), max(top, params.N, v.R))
    if depth == 0:
        return SearchResult([], q_boxes, np.ones(len(q_boxes), bool), params.mode, dict(query.timings), 0.0, stage)
    ids, bow_scores, checks, timings = _verify_and_expand(query, index, v, depth, threads)
    t1 = time.perf_counter()
    rows = index.rows_of(ids)
    verified = _verified(checks, v.min_inliers)
    if params.fusion == "adaptive" and verified:
        params = params.replace(fusion=VERIFIED_BOW_WEIGHTS[stage])
    expanded = _expand_codes(query, index, verified, nbits) if v.qe and params.mode != "bow" else query
    rr = _rerank(expanded, index, nbits, rows, bow_scores, params, K, threads)
    t2 = time.perf_counter()
    order = _final_order(rr, rows, checks, set(verified))[:top]
    hits = _hits(q_boxes, index, ids, rows, bow_scores, rr, checks, order, params.mode, set(verified))
    timings = {**query.timings, **timings, "rerank": t2 - t1}
    timings["total"] = sum(timings.values())
    return SearchResult(hits, q_boxes, rr.query_mask, params.mode, timings, rr.bow_weight, stage)
