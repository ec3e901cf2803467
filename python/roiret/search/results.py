"""What a search returns: :class:`Hit` (one ranked image), :class:`SearchResult` (the
ranking with the query's RoIs and timings), and :class:`PreparedQuery` (a query's features,
extracted once and ranked in several ways)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ..cnn.extractor import RoIResult
    from .geometry import FeatureGeometry

__all__ = ["Hit", "PreparedQuery", "SearchResult"]


@dataclass
class Hit:
    """One ranked database image.

    ``rank``: 1 for the best (as printed by the CLI, in JSON and on pages). ``score``: the
    final score of the re-ranked top N — the RoI similarity in [0, 1] with ``fusion=None``,
    else the fused standardised score (higher is better, not bounded) —, NaN for images
    ranked by BoW only; ``bow_score``: TF-IDF cosine; ``roi_score``: best RoI-pair
    similarity (NaN when not re-ranked); ``query_box`` / ``db_box``: the best-matching RoI
    pair, ``(x1, y1, x2, y2)`` in pixels of the query image and of the database image as
    they were given (``None`` when not re-ranked). ``inliers``: local features of the query
    that spatial verification found in a consistent position in this image (0 when not
    verified or none); ``verified``: at least ``min_inliers`` of them — verified hits rank
    above the others, by ``inliers``."""

    rank: int
    id: int
    name: str
    score: float
    bow_score: float
    roi_score: float
    query_box: Optional[Tuple[float, float, float, float]]
    db_box: Optional[Tuple[float, float, float, float]]
    reranked: bool
    inliers: int = 0
    verified: bool = False

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("score", "roi_score", "bow_score"):
            if isinstance(d[key], float) and not np.isfinite(d[key]):
                d[key] = None
        return d


@dataclass
class SearchResult:
    """Ranked hits plus what the query looked like and where the time went."""

    hits: List[Hit]
    query_boxes: np.ndarray  # (r, 4) RoIs of the query, pixels of the query image
    query_mask: np.ndarray  # (r,) RoIs used for the N − n candidates
    mode: str
    timings: Dict[str, float] = field(default_factory=dict)
    bow_weight: float = 0.0  # the BoW weight the fusion used for this query (0: RoI score alone)

    def __len__(self) -> int:
        return len(self.hits)

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.hits)

    def __getitem__(self, i: int) -> Hit:
        return self.hits[i]

    @property
    def ids(self) -> np.ndarray:
        return np.array([h.id for h in self.hits], np.int64)

    @property
    def names(self) -> List[str]:
        return [h.name for h in self.hits]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "mode": self.mode,
            "bow_weight": self.bow_weight,
            "query_boxes": self.query_boxes.tolist(),
            "timings_ms": {k: 1000 * v for k, v in self.timings.items()},
            "hits": [h.to_dict() for h in self.hits],
        }


@dataclass
class PreparedQuery:
    """A query's features: BoW ``words``/``counts`` (keypoints in the box), its RoIs
    (:class:`~roiret.cnn.extractor.RoIResult` of the crop, or ``None``), the RoI ``boxes`` in
    pixels of the query image, and extraction ``timings``."""

    words: np.ndarray
    counts: np.ndarray
    rois: Optional["RoIResult"]
    boxes: np.ndarray
    timings: Dict[str, float]
    codes: Optional[np.ndarray] = None  # (r, words) RoI codes as indexed
    global_code: Optional[np.ndarray] = None  # (words,) whole-image code
    geometry: Optional["FeatureGeometry"] = None  # local features in the box, query pixels
