"""Spatial verification of the top ``R`` candidates (fast spatial matching, Philbin et al.,
CVPR 2007).

The query's local features and a candidate's are put in tentative correspondence through
their visual words (at most ``MAX_PER_WORD`` features per word on each side, which tames
bursts of repeated structure); each correspondence's scale and orientation give a
similarity transform, the one most others agree with wins (an inlier lands within
``INLIER_THRESHOLD`` × the candidate's longest side of where the transform puts it, at a
scale within a factor ``SCALE_TOLERANCE`` and an orientation within ``ANGLE_TOLERANCE``
degrees of the transform's), and a few rounds of least-squares fitting refine it to an
affine transform (whose inliers must agree with its scale and rotation in the same way).
A candidate's score is the number of distinct query features among the inliers; with at
least ``min_inliers`` it is *verified*. All ``R`` candidates go to the native kernel in one
call (:func:`roiret._kernels.spatial_verify`: threads, GIL released, deterministic).

Why this and not RANSAC: the single-correspondence hypotheses are enumerated exhaustively
(no random sampling, so no seed and no run-to-run variation) and need no minimal sample of
3 correct matches, which matters when inlier ratios are a few percent
(``benchmarks/verify_study.py --ransac`` puts OpenCV's RANSAC / MAGSAC++ in its place on
the same correspondences: lower mAP, docs/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

from .geometry import FeatureGeometry, GeometryStore

__all__ = ["ANGLE_TOLERANCE", "INLIER_THRESHOLD", "MAX_PER_WORD", "SCALE_TOLERANCE", "Verification", "verify_rows"]

#: inlier distance, as a fraction of the candidate image's longest side (15 px at 500 px)
INLIER_THRESHOLD = 0.03
#: tentative correspondences per visual word and side
MAX_PER_WORD = 2
#: largest scale ratio between a correspondence and the hypothesis it supports
SCALE_TOLERANCE = 2.0
#: largest orientation difference (degrees) between a correspondence and its hypothesis.
#: Measured (docs/RESULTS.md): without it, unrelated photos reached 11 inliers and Oxford5k-dev
#: BoW + verification + expansion (qe = 15) scored 83.5 / 67.8 / 32.4; with 30°, 3 and
#: 85.7 / 69.2 / 35.9
ANGLE_TOLERANCE = 30.0
#: correspondences kept per candidate (in word order)
MAX_CORRESPONDENCES = 1000


@dataclass(frozen=True)
class Verification:
    """One verified candidate: ``inliers`` (distinct query features), ``affine`` (2×3, query
    pixels → candidate pixels; NaN without inliers) and the bounding boxes of the inliers
    in the query (``query_box``) and in the candidate (``db_box``)."""

    inliers: int
    affine: np.ndarray
    query_box: np.ndarray
    db_box: np.ndarray


def verify_rows(
    query: FeatureGeometry,
    geometry: GeometryStore,
    rows: np.ndarray,
    *,
    threads: Optional[int] = None,
) -> Dict[int, Verification]:
    """Verify the images at ``rows`` of ``geometry`` against ``query``; by row."""
    from .._kernels import spatial_verify

    rows = np.asarray(rows, np.int64)
    if len(rows) == 0:
        return {}
    a = geometry.arrays()
    res = spatial_verify(
        np.asarray(query.words, np.uint32),
        np.ascontiguousarray(query.xy, np.float32),
        np.maximum(np.asarray(query.sizes, np.float32), np.float32(1e-3)),
        np.asarray(query.angles, np.float32),
        a["words"],
        a["xy"],
        a["scales"],
        a["angles"],
        a["offsets"],
        a["sides"],
        rows,
        max_per_word=MAX_PER_WORD,
        max_correspondences=MAX_CORRESPONDENCES,
        inlier_threshold=INLIER_THRESHOLD,
        scale_tolerance=SCALE_TOLERANCE,
        angle_tolerance=ANGLE_TOLERANCE,
        threads=threads,
    )
    return {
        int(r): Verification(int(res.inliers[i]), res.affine[i], res.query_boxes[i], res.db_boxes[i])
        for i, r in enumerate(rows)
    }
