"""Which RoI pair best explains a match, for showing a result to a person.

Ranking scores an image by its best RoI-pair similarity, and the best pair is often a region
covering most of both images: large regions pool much of the same content, so their codes
agree. That pair explains little. Among the pairs whose similarity is within ``tolerance``
of the best (the same match, up to a few bits), :func:`explaining_pair` picks the one with
the smallest database region — the most specific evidence — and the smallest query region
among those. A hit that spatial verification confirmed keeps the pair its inliers support
(the RoIs that best overlap the inliers, chosen by :func:`roiret.search.ranking.rank`).
Scores and rankings are unchanged; only what is drawn."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, List, Optional, Tuple, Union

import numpy as np

from .results import Hit, PreparedQuery
from .store import RoIStore

if TYPE_CHECKING:  # pragma: no cover
    from .sharded import ShardedStore

__all__ = ["DEFAULT_TOLERANCE", "explain_hits", "explaining_pair"]

#: similarity below the best that still counts as the same match (2 %: ~10 of 512 bits)
DEFAULT_TOLERANCE = 0.02

Box4 = Tuple[float, float, float, float]


def _area(b: np.ndarray) -> np.ndarray:
    return np.asarray(np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0), dtype=np.float64)


def explaining_pair(
    q_codes: np.ndarray,
    q_boxes: np.ndarray,
    db_codes: np.ndarray,
    db_boxes: np.ndarray,
    nbits: int,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Optional[Tuple[Box4, Box4, float]]:
    """``(query box, database box, similarity)`` of the pair that best explains the match of
    one image (module docstring), or ``None`` when either side has no RoI."""
    from .._kernels import hamming_matrix

    if len(q_codes) == 0 or len(db_codes) == 0:
        return None
    sim = 1.0 - hamming_matrix(q_codes, db_codes, nbits=nbits).astype(np.float64) / nbits
    close = np.argwhere(sim >= sim.max() - float(tolerance))  # (query row, db row) pairs
    db_area = _area(db_boxes[close[:, 1]])
    q_area = _area(q_boxes[close[:, 0]])
    i, j = close[np.lexsort((q_area, db_area))[0]]  # smallest database region, then query region
    qb, db = q_boxes[i], db_boxes[j]
    return (
        (float(qb[0]), float(qb[1]), float(qb[2]), float(qb[3])),
        (float(db[0]), float(db[1]), float(db[2]), float(db[3])),
        float(sim[i, j]),
    )


def explain_hits(
    hits: List[Hit],
    query: PreparedQuery,
    store: Union[RoIStore, "ShardedStore"],
    nbits: int,
    K: int,
    tolerance: float = DEFAULT_TOLERANCE,
) -> List[Hit]:
    """Copies of ``hits`` whose ``query_box`` / ``db_box`` are the explaining pair (hits
    without a pair are returned as they are). ``K``: the query RoIs the ranking used."""
    if query.codes is None:
        return list(hits)
    q_codes, q_boxes = query.codes[:K], query.boxes[:K]
    out = []
    for h in hits:
        if h.db_box is None or h.verified or h.id not in store:
            out.append(h)
            continue
        codes, boxes, _ = store.rois_of(int(store.indices_of([h.id])[0]))
        pair = explaining_pair(q_codes, q_boxes, codes, boxes, nbits, tolerance)
        out.append(h if pair is None else dataclasses.replace(h, query_box=pair[0], db_box=pair[1]))
    return out
