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
A candidate's score is the number of distinct query features among the inliers. All ``R``
candidates go to the native kernel in one call (:func:`roiret._kernels.spatial_verify`:
threads, GIL released, deterministic).

When is that many inliers evidence? Unrelated images agree by chance, and the more
tentative correspondences ``M`` there are, the more they agree: every correspondence is a
hypothesis, and each other one lands in a hypothesis' inlier region with some small
probability ``p``. Coarse vocabularies pair many features (``M`` in the hundreds with 500 to
2 000 words), and there a fixed count fails: 5 inliers verified 2–57 % of unrelated pairs
at 500–2 000 words, up to 4 % at 8 000 (``benchmarks/verify_threshold_study.py``,
docs/RESULTS.md). So a candidate is *verified* when its inliers are at least
:func:`required_inliers` — ``min_inliers``, or more when ``M`` is large: the a-contrario
rule (Moisan and Stival, IJCV 2004) that the expected number of hypotheses reaching ``k``
inliers by chance, ``M · P[Binomial(M − 1, p) ≥ k − 1]``, be below :data:`FALSE_ALARMS`,
with ``p`` = :data:`CHANCE_AGREEMENT`.

Why this and not RANSAC: the single-correspondence hypotheses are enumerated exhaustively
(no random sampling, so no seed and no run-to-run variation) and need no minimal sample of
3 correct matches, which matters when inlier ratios are a few percent
(``benchmarks/verify_study.py --ransac`` puts OpenCV's RANSAC / MAGSAC++ in its place on
the same correspondences: lower mAP, docs/RESULTS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Optional

import numpy as np

from .geometry import FeatureGeometry, GeometryStore

__all__ = [
    "ANGLE_TOLERANCE",
    "CHANCE_AGREEMENT",
    "FALSE_ALARMS",
    "INLIER_THRESHOLD",
    "MAX_PER_WORD",
    "SCALE_TOLERANCE",
    "Verification",
    "required_inliers",
    "verify_rows",
]

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
#: the chance ``p`` that a correspondence between unrelated images is an inlier of a given
#: hypothesis (position, scale and orientation within the tolerances above): larger than
#: uniform positions and orientations give before the scale test (≈ 6e-4), since features
#: cluster on textured regions and man-made scenes share dominant orientations. Chosen with
#: FALSE_ALARMS on unrelated and true pairs of Oxford5k-dev, ukbench-56 and scikit-image
#: photos at 500–20 000 words, Oxford5k-dev and the demo collection (docs/RESULTS.md, "How
#: many inliers make a match"; benchmarks/verify_threshold_study.py).
CHANCE_AGREEMENT = 0.001
#: the a-contrario ε: the expected number of hypotheses of a candidate that reach its
#: inliers by chance must be below this for the candidate to be verified
FALSE_ALARMS = 0.01


@lru_cache(maxsize=None)
def _chance_thresholds(max_m: int, p: float, eps: float) -> np.ndarray:
    """``t[M]`` for M = 0 … ``max_m``: the least k >= 1 with M · P[Binomial(M − 1, p) ≥ k − 1]
    < ``eps``. The binomial probabilities by their recurrence, every M at once; a count
    beyond 64 never gets there for p·M of a few units, and is not looked at."""
    m = np.arange(max_m + 1, dtype=np.float64)
    n = np.maximum(m - 1, 0)
    pmf = np.empty((max_m + 1, 64))
    pmf[:, 0] = np.exp(n * math.log1p(-p))
    for i in range(63):  # P[X = i + 1] = P[X = i] · (n − i) / (i + 1) · p / (1 − p)
        pmf[:, i + 1] = pmf[:, i] * np.maximum(n - i, 0) / (i + 1) * (p / (1 - p))
    # tail[:, k - 1] = P[X >= k - 1] for k = 1 … 64
    tail = np.concatenate([np.ones((max_m + 1, 1)), 1.0 - np.cumsum(pmf, axis=1)[:, :-1]], axis=1)
    ok = m[:, None] * tail < eps
    return np.asarray(np.argmax(ok, axis=1) + 1, np.int64)


def required_inliers(correspondences: "np.ndarray | int", min_inliers: int) -> np.ndarray:
    """The inliers a candidate with ``correspondences`` tentative correspondences (M) needs
    to be verified: ``max(min_inliers, k)``, ``k`` the least count whose expected number of
    chance occurrences among its M hypotheses is below :data:`FALSE_ALARMS` (module
    docstring): with ``min_inliers=5``, 5 up to M = 196, 6 to 344, 7 to 529, 8 to 749, 9 up
    to :data:`MAX_CORRESPONDENCES` (1 000)."""
    m = np.clip(np.asarray(correspondences, np.int64), 0, MAX_CORRESPONDENCES)
    return np.asarray(np.maximum(_thresholds()[m], int(min_inliers)), np.int64)


def _thresholds() -> np.ndarray:
    """The chance thresholds for the module's constants (computed once per setting)."""
    return _chance_thresholds(MAX_CORRESPONDENCES, CHANCE_AGREEMENT, FALSE_ALARMS)


@dataclass(frozen=True)
class Verification:
    """One verified candidate: ``inliers`` (distinct query features), ``affine`` (2×3, query
    pixels → candidate pixels; NaN without inliers), the bounding boxes of the inliers
    in the query (``query_box``) and in the candidate (``db_box``), and the number of
    tentative ``correspondences`` the hypotheses came from."""

    inliers: int
    affine: np.ndarray
    query_box: np.ndarray
    db_box: np.ndarray
    correspondences: int = 0

    def verified(self, min_inliers: int) -> bool:
        """Whether the inliers are evidence of a match: at least :func:`required_inliers`."""
        m = min(max(self.correspondences, 0), MAX_CORRESPONDENCES)
        return self.inliers >= max(int(_thresholds()[m]), int(min_inliers))


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
        int(r): Verification(
            int(res.inliers[i]), res.affine[i], res.query_boxes[i], res.db_boxes[i], int(res.correspondences[i])
        )
        for i, r in enumerate(rows)
    }
