"""Ranking, as a pure function of (prepared query, index, parameters): the BoW top N from
the inverted file, re-ranked with RoI codes (:func:`roiret.search.rerank.rerank`), as
:class:`~roiret.search.results.Hit` objects."""

from __future__ import annotations

import time
from typing import Optional, Tuple

import numpy as np

from ..io.images import Box
from ..params import RerankParams
from .index import TwoStageIndex
from .rerank import RerankResult, rerank
from .results import Hit, PreparedQuery, SearchResult

__all__ = ["rank"]


def _candidates(query: PreparedQuery, index: TwoStageIndex, depth: int) -> Tuple[np.ndarray, np.ndarray]:
    """The BoW top ``depth`` (ids, scores); when the query has too few keypoints for BoW to
    rank that many, the remaining images follow in insertion order with score 0."""
    ids, bow_scores = index.bow.search_bag(query.words, query.counts, top=depth)
    if len(ids) < depth:
        rest = np.setdiff1d(index.ids, ids, assume_unique=True)
        ids = np.concatenate([ids, rest[: depth - len(ids)]])
        bow_scores = np.concatenate([bow_scores, np.zeros(depth - len(bow_scores), np.float32)])
    return ids, bow_scores


def _rerank(
    query: PreparedQuery,
    index: TwoStageIndex,
    nbits: int,
    rows: np.ndarray,
    bow_scores: np.ndarray,
    p: RerankParams,
    K: int,
    threads: Optional[int],
) -> RerankResult:
    store = index.store
    if p.mode == "global":  # one whole-image code per image: every candidate matched exhaustively
        q, db, offsets = np.asarray(query.global_code).reshape(1, -1), store.global_codes, np.arange(len(store) + 1)
        mode, k = "exhaustive", 1
    else:
        q = np.zeros((0, store.words), np.uint64) if p.mode == "bow" else np.asarray(query.codes)[:K]
        db, offsets, mode, k = store.codes, store.offsets, p.mode, p.k
    return rerank(
        q,
        db,
        offsets.astype(np.int64, copy=False),
        nbits,
        rows,
        N=p.N,
        n=p.n,
        k=k,
        mode=mode,
        bow_scores=bow_scores,
        fusion=p.fusion,
        threads=threads,
    )


def _box(b: np.ndarray) -> Box:
    return (float(b[0]), float(b[1]), float(b[2]), float(b[3]))


def rank(
    query: PreparedQuery,
    index: TwoStageIndex,
    nbits: int,
    params: RerankParams,
    *,
    K: int,
    top: int,
    threads: Optional[int] = None,
) -> SearchResult:
    """Rank ``index`` for ``query`` with ``params`` (N, n, k, mode, fusion); the query's
    RoIs are cut to ``K`` (they are in selection order). Returns the first ``top`` hits.
    The caller holds whatever lock keeps ``index`` still."""
    if params.mode != "bow" and (query.rois is None or query.codes is None or query.global_code is None):
        raise ValueError(f"mode {params.mode!r} needs the query's RoIs: prepare_query(..., with_rois=True)")
    t0 = time.perf_counter()
    q_boxes = query.boxes[:K]
    depth = min(len(index), max(top, params.N))
    if depth == 0:
        return SearchResult([], q_boxes, np.ones(len(q_boxes), bool), params.mode, dict(query.timings))
    ids, bow_scores = _candidates(query, index, depth)
    t1 = time.perf_counter()
    store = index.store
    rows = store.indices_of(ids)
    rr = _rerank(query, index, nbits, rows, bow_scores, params, K, threads)
    t2 = time.perf_counter()
    hits = []
    for position, p in enumerate(rr.order[:top]):
        row = int(rows[p])
        reranked = params.mode != "bow" and bool(np.isfinite(rr.roi_score[p]))
        qb = db = None
        if reranked and params.mode != "global" and rr.best_db[p] >= 0:
            qb, db = _box(q_boxes[rr.best_query[p]]), _box(store.boxes[rr.best_db[p]])
        hits.append(
            Hit(
                rank=position + 1,
                id=int(ids[p]),
                name=store.names[row],
                score=float(rr.score[p]),
                bow_score=float(bow_scores[p]),
                roi_score=float(rr.roi_score[p]),
                query_box=qb,
                db_box=db,
                reranked=reranked,
            )
        )
    timings = dict(query.timings)
    timings.update(bow_search=t1 - t0, rerank=t2 - t1)
    timings["total"] = sum(timings.values())
    return SearchResult(hits, q_boxes, rr.query_mask, params.mode, timings, rr.bow_weight)
