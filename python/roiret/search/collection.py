"""What ranking reads of a collection of images, as protocols.

:func:`roiret.search.ranking.rank` reads its collection through :class:`Collection` only:
:class:`~roiret.search.index.TwoStageIndex` implements it on its own arrays,
:class:`~roiret.search.sharded.ShardedIndex` by fanning out to its shards and merging. A
*row* is an image's position in the collection's insertion order (in a sharded index: the
shards' insertion orders, shard after shard); ids are what users see.

:class:`RowReader` is the part :class:`Collection` shares with what a sharded index reads
of each shard (:class:`roiret.search.sharded.Shard`): the per-row accessors, spatial
verification and RoI cross-matching of rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .._kernels import CrossMatchResult
    from .geometry import FeatureGeometry
    from .verify import Verification

__all__ = ["Collection", "RowReader", "RowsLike"]

#: rows of images: a sequence or 1-D array of integers
RowsLike = Union[Sequence[int], np.ndarray]


@runtime_checkable
class RowReader(Protocol):
    """The images of a collection by row: what ranking reads of rows, and a sharded index of
    each shard."""

    def __len__(self) -> int: ...
    @property
    def ids(self) -> np.ndarray:
        """Ids of the images in row order."""

    @property
    def has_geometry(self) -> bool:
        """Whether the local features' geometry is kept (spatial verification possible)."""

    @property
    def code_words(self) -> int:
        """uint64 words per RoI code."""

    def idf(self) -> np.ndarray:
        """The idf of every visual word (the collection's)."""

    def names_of(self, rows: RowsLike) -> List[str]: ...
    def words_of_rows(self, rows: RowsLike, boxes: Optional[np.ndarray] = None) -> List[np.ndarray]:
        """The visual word of each local feature of the images at ``rows``; ``boxes`` (float
        (len(rows), 4) ``(x0, y0, x1, y1)``, None: whole images): of the features inside."""

    def bags_of_rows(self, rows: RowsLike, boxes: Optional[np.ndarray] = None) -> List[Tuple[np.ndarray, np.ndarray]]:
        """The stored ``(words, signatures)`` of the images at ``rows`` (an embedded first
        stage); ``boxes`` (as :meth:`words_of_rows`): only the words of the features inside."""

    def codes_of_rows(self, rows: RowsLike) -> List[Tuple[np.ndarray, np.ndarray]]:
        """(RoI codes, whole-image code of shape (1, words)) of the images at ``rows``."""

    def roi_boxes_of(self, rows: RowsLike) -> List[np.ndarray]:
        """The RoI boxes of the images at ``rows``."""

    def roi_boxes_at(self, roi_rows: np.ndarray) -> np.ndarray:
        """The boxes of RoIs by their rows in the RoI arrays (a cross-match's ``best_db``)."""

    def verify(self, query: "FeatureGeometry", rows: np.ndarray, threads: Optional[int]) -> Dict[int, "Verification"]:
        """Spatial verification of the images at ``rows`` (by row, in the order of ``rows``)."""

    def cross_match(
        self,
        q: np.ndarray,
        nbits: int,
        mask: Optional[np.ndarray],
        rows: np.ndarray,
        *,
        whole_image: bool = False,
        threads: Optional[int] = None,
    ) -> "CrossMatchResult":
        """:func:`roiret.cross_match` of ``q`` with the RoIs (``whole_image``: the global
        codes) of the images at ``rows``; ``best_db`` are rows of the RoI arrays."""


@runtime_checkable
class Collection(RowReader, Protocol):
    """What :func:`roiret.search.ranking.rank` reads of the images it ranks: the rows
    (:class:`RowReader`), the first stage's search and the mapping between ids and rows."""

    @property
    def embedded(self) -> bool:
        """Whether the first stage is the selective match kernel (bags carry signatures)."""

    def search_bow(
        self, words: np.ndarray, counts: np.ndarray, top: int, weights: Optional[np.ndarray] = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """The first stage's top ``top`` (ids int64, scores float32) for an encoded query
        (``weights``: an embedded query's per-term weights)."""

    def rows_of(self, ids: Iterable[int]) -> np.ndarray:
        """Rows (int64) of image ids (KeyError naming the first unknown id)."""

    def ids_at(self, rows: np.ndarray) -> np.ndarray:
        """The ids of the images at ``rows``."""
