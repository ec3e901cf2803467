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

    ``rank``: its place, 1 for the best (as printed by the CLI, in JSON and on pages).

    ``score``: what the hits are ordered by — never larger than the score of the hit ranked
    above it. Its range says how the hit was placed:

    * ``score >= 1``: a verified hit (``verified``); these come first, by ``score = inliers``;
    * ``0 <= score <= 1``: ordered by the re-ranking score — the RoI similarity
      (``roi_score``) when ``fusion`` is 0, else the fused standardised score ``s`` of the RoI
      and first-stage scores (:mod:`roiret.search.rerank`) mapped to 1 / (1 + e^−s); with
      ``mode="bow"`` (no re-ranking), the first-stage score ``bow_score``;
    * ``-1 <= score <= 0``: after those, in first-stage order (beyond the ``N`` re-ranked
      candidates, or without RoIs): ``bow_score − 1``.

    ``bow_score``: the first stage's score of the query (expanded with the verified results
    when ``qe``) for this image — the ASMK similarity (``first_stage="asmk"``, the default)
    or the TF-IDF cosine (``"tfidf"``); :attr:`SearchResult.first_stage` says which; 0 for
    an image the first stage did not rank. ``roi_score``: the best RoI-pair similarity
    1 − Hamming / bits (NaN when not re-ranked); ``reranked``: the RoI stage scored it.
    ``query_box`` / ``db_box``: the best-matching RoI pair, ``(x1, y1, x2, y2)`` in pixels of
    the query image and of the database image as they were given (``None`` when not
    re-ranked; for a verified hit, the pair that best covers the inliers). ``inliers``:
    local features of the query that spatial verification found in a consistent position
    in this image (0 when not verified or none); ``verified``: enough of them to be evidence
    of a match — at least ``min_inliers``, and more when the two images share many visual
    words (:func:`roiret.search.verify.required_inliers`). ``name``: the image's path as
    indexed (absolute), or the name given to :meth:`Retriever.add <roiret.Retriever.add>`."""

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
    first_stage: str = "asmk"  # what Hit.bow_score is: "asmk" similarity or "tfidf" cosine

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
        """The hits first (what a reader of ``roiret search --json`` looks for), then how they
        were ranked, the timings, and the query's RoIs last."""
        return {
            "hits": [h.to_dict() for h in self.hits],
            "mode": self.mode,
            "first_stage": self.first_stage,
            "bow_weight": self.bow_weight,
            "timings_ms": {k: 1000 * v for k, v in self.timings.items()},
            "query_boxes": self.query_boxes.tolist(),
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
