"""The two-stage index: the BoW inverted file and the RoI store of the same images, kept in
step (an image is in both or in neither)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..bow import BowIndex, bags_to_csr
from ..bow.index import as_ids
from ..errors import IndexFormatError
from .geometry import FeatureGeometry, GeometryStore
from .store import RoIStore

__all__ = ["IndexedImage", "TwoStageIndex"]


@dataclass
class IndexedImage:
    """One image ready to be added: its BoW bag (``words``, ``counts``) and RoIs (``codes``
    ``(r, words)`` uint64, ``boxes`` ``(r, 4)`` in pixels of the original image, ``scores``),
    its ``global_code``, original ``size`` (width, height), ``name`` and the ``geometry``
    of its local features (pixels of the original image; kept for spatial verification)."""

    id: int
    words: np.ndarray
    counts: np.ndarray
    codes: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    global_code: np.ndarray
    size: Tuple[int, int]
    name: str
    geometry: Optional[FeatureGeometry] = None


class TwoStageIndex:
    """The images of a retriever: ``bow`` (:class:`~roiret.bow.BowIndex`), ``store``
    (:class:`~roiret.search.store.RoIStore`) and ``geometry``
    (:class:`~roiret.search.geometry.GeometryStore`, row for row with ``store``; ``None`` for
    an index saved before roiret kept it: no spatial verification then). Not thread-safe by
    itself: the :class:`~roiret.Retriever` serialises changes and lets searches run under a
    shared lock."""

    def __init__(self, bow: BowIndex, store: RoIStore, geometry: Optional[GeometryStore] = None):
        self.bow, self.store, self.geometry = bow, store, geometry

    def __len__(self) -> int:
        return len(self.store)

    @property
    def ids(self) -> np.ndarray:
        """Ids of the indexed images, in insertion order."""
        return self.store.ids

    def nbytes(self) -> int:
        """Bytes held by the RoI arrays, the feature geometry and the inverted file."""
        geometry = self.geometry.nbytes() if self.geometry is not None else 0
        return self.store.nbytes() + geometry + int(self.bow.inverted_file.memory_bytes())

    def check_consistent(self, where: str) -> None:
        """IndexFormatError unless both parts hold the same images."""
        ivf = self.bow.inverted_file
        if len(self.store) != len(ivf) or not np.array_equal(np.sort(self.store.ids), np.sort(ivf.ids())):
            raise IndexFormatError(f"{where}: the inverted file and the RoI arrays hold different images")
        if self.geometry is not None and len(self.geometry) != len(self.store):
            raise IndexFormatError(
                f"{where}: the feature geometry holds {len(self.geometry)} images, the RoI arrays {len(self.store)}"
            )

    # -- ids -------------------------------------------------------------------------------
    def new_ids(self, ids: Optional[Sequence[int]], n: int) -> np.ndarray:
        """``ids`` checked (n distinct integers, none indexed yet), or the next ``n``
        consecutive ids after the largest so far."""
        if ids is None:
            start = int(self.store.ids.max()) + 1 if len(self.store) else 0
            return np.arange(start, start + n, dtype=np.int64)
        a = as_ids(ids, n)
        clash = [int(i) for i in a if int(i) in self.store]
        if clash:
            raise ValueError(f"ids: image id {clash[0]} is already in the index")
        return a

    # -- changes ---------------------------------------------------------------------------
    def add(self, images: Sequence[IndexedImage]) -> List[int]:
        """Add a batch, all of it or none of it (on any error both parts are restored)."""
        ids = np.asarray([im.id for im in images], np.int64)
        geo = self.geometry
        if geo is not None and any(im.geometry is None for im in images):
            raise ValueError("this index keeps feature geometry: every image needs its geometry")
        self.bow.add_bags(ids, *bags_to_csr([(im.words, im.counts) for im in images]))
        done: List[int] = []
        first_row = len(self.store)
        try:
            for im in images:
                self.store.add(im.id, im.codes, im.boxes, im.scores, im.global_code, im.size, im.name)
                done.append(im.id)
                if geo is not None:
                    assert im.geometry is not None
                    geo.add(im.geometry, im.size)
        except BaseException:
            if geo is not None and len(geo) > first_row:
                geo.keep_rows(np.arange(first_row, dtype=np.int64))
            if done:
                self.store.remove(done)
            self.bow.remove(ids)
            raise
        return [int(i) for i in ids]

    def remove(self, ids: Iterable[int]) -> int:
        """Remove images by id, all or nothing (KeyError naming an unknown id). Returns the
        number removed."""
        ids = np.unique(np.asarray(list(ids), np.int64))
        rows = self.store.indices_of(ids)  # validates before anything changes
        self.bow.remove(ids)
        if self.geometry is not None:
            self.geometry.remove_rows(rows)
        return self.store.remove(ids)

    def truncated(self, K: int) -> "TwoStageIndex":
        """A view keeping the first ``K`` RoIs of every image (shares the BoW part)."""
        return TwoStageIndex(self.bow, self.store.truncated(K), self.geometry)
