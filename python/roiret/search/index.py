"""The two-stage index: the BoW inverted file and the RoI store of the same images, kept in
step (an image is in both or in neither). It implements what
:func:`roiret.search.ranking.rank` reads of a collection
(:class:`~roiret.search.collection.Collection`) on its own arrays, and what a sharded index
reads of each shard (:class:`roiret.search.sharded.Shard`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..bow import BowEncoder, BowIndex, bags_to_csr
from ..bow.index import as_ids, consecutive_ids
from ..errors import IndexFormatError
from .collection import RowsLike
from .expansion import as_boxes, inside_box
from .geometry import FeatureGeometry, GeometryStore
from .store import RoIStore
from .verify import Verification, verify_rows

if TYPE_CHECKING:  # pragma: no cover
    from .._kernels import CrossMatchResult

__all__ = ["IndexedImage", "RowsLike", "TwoStageIndex"]


@dataclass
class IndexedImage:
    """One image ready to be added: its BoW bag (``words``, ``counts``; for an ASMK first
    stage ``counts`` holds the signatures, uint64 ``(u, words)``) and RoIs (``codes``
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
    """The images of a retriever: ``bow`` (:class:`~roiret.bow.BowIndex`: the encoder and
    the inverted file), ``store`` (:class:`~roiret.search.store.RoIStore`) and ``geometry``
    (:class:`~roiret.search.geometry.GeometryStore`, row for row with ``store``; ``None`` for
    an index saved before roiret kept it: no spatial verification then). Not thread-safe by
    itself: the :class:`~roiret.Retriever` serialises changes and lets searches run under a
    shared lock."""

    def __init__(self, bow: BowIndex, store: RoIStore, geometry: Optional[GeometryStore] = None):
        self.bow, self.store, self.geometry = bow, store, geometry

    def __len__(self) -> int:
        return len(self.store)

    @property
    def encoder(self) -> BowEncoder:
        """The first stage's encoder (vocabulary, local features, Hamming embedding)."""
        return self.bow.encoder

    @property
    def ids(self) -> np.ndarray:
        """Ids of the indexed images, in insertion order."""
        return self.store.ids

    def nbytes(self) -> int:
        """Bytes of the RoI arrays, the feature geometry and the inverted file, in memory or
        memory-mapped (``Retriever.load(mmap=True)``: mapped bytes are file-cache pages)."""
        geometry = self.geometry.nbytes() if self.geometry is not None else 0
        ivf = self.bow.inverted_file
        mapped = ivf.mapped_bytes() if hasattr(ivf, "mapped_bytes") else 0
        return self.store.nbytes() + geometry + int(ivf.memory_bytes()) + int(mapped)

    def check_consistent(self, where: str) -> None:
        """IndexFormatError unless both parts hold the same images."""
        ivf = self.bow.inverted_file
        if len(self.store) != len(ivf) or not np.array_equal(np.sort(self.store.ids), np.sort(ivf.ids())):
            raise IndexFormatError(f"{where}: the inverted file and the RoI arrays hold different images")
        if self.geometry is not None and len(self.geometry) != len(self.store):
            raise IndexFormatError(
                f"{where}: the feature geometry holds {len(self.geometry)} images, the RoI arrays {len(self.store)}"
            )

    # -- what ranking reads (search.collection.Collection; the same on a ShardedIndex) ------
    @property
    def has_geometry(self) -> bool:
        """Whether the local features' geometry is kept (spatial verification possible)."""
        return self.geometry is not None

    @property
    def code_words(self) -> int:
        """uint64 words per RoI code."""
        return self.store.words

    @property
    def embedded(self) -> bool:
        """Whether the first stage is the selective match kernel (bags carry signatures)."""
        return self.bow.embedded

    def search_bow(
        self, words: np.ndarray, counts: np.ndarray, top: int, weights: Optional[np.ndarray] = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """The BoW top ``top`` (ids int64, scores float32) for an encoded query (``weights``:
        an embedded query's per-term weights, :meth:`BowIndex.search_bag`)."""
        ids, scores = self.bow.search_bag(words, counts, top=top, weights=weights)
        return ids, scores

    def idf(self) -> np.ndarray:
        """The idf of every visual word (the collection's)."""
        return np.asarray(self.bow.inverted_file.idf())

    # -- what a ShardedIndex reads of each shard (a remote shard proxy implements the same) --
    @property
    def num_rois(self) -> int:
        return self.store.num_rois

    def search_bow_exact(
        self, words: np.ndarray, counts: np.ndarray, top: int, weights: Optional[np.ndarray] = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """The BoW top ``top`` (ids, float64 exact scores): ``search_exact`` of the inverted file."""
        return self.bow.search_exact(words, counts, int(top), weights=weights)

    def document_frequencies(self) -> np.ndarray:
        """This index's own df of every word."""
        return np.asarray(self.bow.inverted_file.document_frequencies(), np.int64)

    def set_collection_stats(self, n_docs: int, df: np.ndarray) -> None:
        """Score with a collection's N and df (``InvertedFile.set_collection_stats``)."""
        self.bow.inverted_file.set_collection_stats(int(n_docs), df)

    def rois_of(self, row: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.store.rois_of(int(row))

    def all_names(self) -> List[str]:
        return list(self.store.names)

    def rows_of(self, ids: Iterable[int]) -> np.ndarray:
        """Rows (int64) of image ids (KeyError naming the first unknown id)."""
        return self.store.indices_of(ids)

    def ids_at(self, rows: np.ndarray) -> np.ndarray:
        """The ids of the images at ``rows``."""
        return np.asarray(self.store.ids[np.asarray(rows, np.int64)])

    def names_of(self, rows: RowsLike) -> List[str]:
        names = self.store.names
        return [names[int(r)] for r in rows]

    def bags_of_rows(self, rows: RowsLike, boxes: Optional[np.ndarray] = None) -> List[Tuple[np.ndarray, np.ndarray]]:
        """The stored ``(words, signatures)`` of the images at ``rows`` (an embedded index).
        ``boxes`` (float (len(rows), 4), ``(x0, y0, x1, y1)`` in each image's pixels, None:
        whole images): only the pairs of the words of the image's features inside its box
        (:func:`~roiret.search.expansion.inside_box`; with several database assignments,
        the features' first words)."""
        ids = self.store.ids
        if boxes is not None:
            boxes = as_boxes(boxes, len(rows))
            assert self.geometry is not None, "boxes need the features' geometry"
            cells = self.encoder.embedding.cells if self.encoder.embedding is not None else 1
            return [
                self.bow.bag_of(int(ids[int(r)]), self._words_inside(int(r), b) // cells) for r, b in zip(rows, boxes)
            ]
        if self.geometry is None or not self.encoder.geometry_words_are_bag_words:
            return [self.bow.bag_of(int(ids[int(r)])) for r in rows]
        # The image's feature words are its bag's words: only their lists are searched.
        return [self.bow.bag_of(int(ids[int(r)]), self.geometry.words_of(int(r))) for r in rows]

    def _words_inside(self, row: int, box: np.ndarray) -> np.ndarray:
        """The (geometry) words of the features of the image at ``row`` inside ``box``, int64."""
        assert self.geometry is not None
        f = self.geometry.features_of(row)
        return np.asarray(np.asarray(f.words, np.int64)[inside_box(f.xy, box)])

    def words_of_rows(self, rows: RowsLike, boxes: Optional[np.ndarray] = None) -> List[np.ndarray]:
        """The visual word of each local feature of the images at ``rows``; ``boxes`` (as
        :meth:`bags_of_rows`): of the features inside each image's box only."""
        assert self.geometry is not None
        if boxes is not None:
            boxes = as_boxes(boxes, len(rows))
            return [self._words_inside(int(r), b).astype(np.uint32) for r, b in zip(rows, boxes)]
        return [self.geometry.words_of(int(r)) for r in rows]

    def codes_of_rows(self, rows: RowsLike) -> List[Tuple[np.ndarray, np.ndarray]]:
        """(RoI codes, whole-image code of shape (1, words)) of the images at ``rows``."""
        s = self.store
        return [(s.rois_of(int(r))[0], np.asarray(s.global_codes[int(r) : int(r) + 1])) for r in rows]

    def roi_boxes_of(self, rows: RowsLike) -> List[np.ndarray]:
        """The RoI boxes of the images at ``rows``."""
        return [self.store.rois_of(int(r))[1] for r in rows]

    def roi_boxes_at(self, roi_rows: np.ndarray) -> np.ndarray:
        """The boxes of RoIs by their rows in the RoI arrays (a cross-match's ``best_db``)."""
        return np.asarray(self.store.boxes[np.asarray(roi_rows, np.int64)]).reshape(-1, 4)

    def verify(self, query: FeatureGeometry, rows: np.ndarray, threads: Optional[int]) -> Dict[int, Verification]:
        """Spatial verification of the images at ``rows`` (by row, in the order of ``rows``)."""
        assert self.geometry is not None
        return verify_rows(query, self.geometry, rows, threads=threads)

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
        from .._kernels import cross_match

        s = self.store
        if whole_image:
            db, offsets = s.global_codes, np.arange(len(s) + 1, dtype=np.int64)
        else:
            db, offsets = s.codes, s.offsets.astype(np.int64, copy=False)
        return cross_match(q, db, offsets, nbits, mask, images=np.asarray(rows, np.int64), threads=threads)

    # -- ids -------------------------------------------------------------------------------
    def new_ids(self, ids: Optional[Sequence[int]], n: int) -> np.ndarray:
        """``ids`` checked (n distinct integers, none indexed yet), or the next ``n``
        consecutive ids after the largest so far."""
        if ids is None:
            return consecutive_ids(int(self.store.ids.max()) + 1 if len(self.store.ids) else 0, n)
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
        ids = np.unique(as_ids(ids, distinct=False))
        rows = self.store.indices_of(ids)  # validates before anything changes
        self.bow.remove(ids)
        if self.geometry is not None:
            self.geometry.remove_rows(rows)
        return self.store.remove(ids)

    def truncated(self, K: int) -> "TwoStageIndex":
        """A view keeping the first ``K`` RoIs of every image (shares the BoW part)."""
        return TwoStageIndex(self.bow, self.store.truncated(K), self.geometry)
