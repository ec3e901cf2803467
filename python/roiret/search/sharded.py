"""A collection split into shards: each shard an ordinary index (its own folder, loadable by
itself), searched together exactly as one index holding all their images.

Exactness. Rows are positions in the shards' concatenated insertion order (shard 0's rows,
then shard 1's, ...), which is the insertion order of the same images indexed in one
process when the shards hold consecutive runs of it (what :func:`roiret.distributed.index`
and :meth:`ShardedIndex.add` make). Nothing is concatenated into one array:

* BoW — every shard's inverted file scores with the *collection's* statistics
  (``InvertedFile.set_collection_stats``: N and df summed over the shards, set at load and
  after every change, never saved, so they cannot go stale), so each image's score is bit
  for bit the one-index score; the shards' top lists are merged by (exact float64 score,
  shard, position) — the native order of one index (ties in insertion order).
* verification, RoI cross-matching — per candidate, on the shard that owns it, in
  parallel; the fast strategy's votes are summed over the shards and every statistic over
  the candidate list (fusion, adaptive weight, expansion) is computed by
  :func:`roiret.search.ranking.rank` on the merged, global list.

Folder layout (format ``roiret-sharded-index``, version 2, on
:class:`roiret.io.folder.IndexFolder`): ``OUT/manifest.json`` lists the shards — folder
name, images, RoIs and the SHA-256 of the shard's own ``manifest.json`` — and the total
``images``; each shard folder is an ordinary retriever folder
(:mod:`roiret.search.persist`), named ``shard-NNNNN`` (built by
:func:`roiret.distributed.index`, or saved by roiret before version 2, which still loads)
or ``shard-NNNNN-<12 hex>`` (a version written by a save).

Saving is atomic: the top manifest is the single commit point. A save writes every shard
changed since load (all of them into another folder) as a new version under a fresh name,
never into a folder the current manifest lists; then replaces the top manifest (atomic,
fsync'ed, under the folder's lock); then removes the shard folders it does not list
(earlier versions, what killed saves left). A kill at any moment leaves the old or the new
index loadable (tests/test_interrupted_save.py kills a save before each of its renames,
removals and new folders).

Loading checks, before any shard's data is read: at most :data:`MAX_SHARDS` entries, no
shard listed twice, names of the two forms, the entries' images adding up to the total,
every listed shard a real folder inside ``OUT`` (a symbolic link is refused, as are
linked files in any index folder: :func:`roiret.io.folder.own_entry`) whose manifest
matches its checksum, images and RoIs. Damage in the top manifest, a listed shard's
manifest or any of its files is an :class:`~roiret.errors.IndexFormatError` naming the
file. A loaded shard holds no open file descriptor (its arrays are mapped by
:func:`roiret._kernels.map_npy`): one process loads thousands of shards under the default
limit of 1 024 open files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple, TypeVar

import numpy as np

from .. import __version__
from ..bow import BowEncoder, BowIndex
from ..bow.index import BowHits, FirstStage, as_ids, consecutive_ids, query_weights
from ..errors import IndexFormatError, UnknownIdError
from ..io import PathLike
from ..io.folder import MANIFEST, IndexFolder, IndexWriter, Manifest, as_format_error, own_entry, sha256_file
from ..params import positive_int
from . import persist
from .collection import RowReader, RowsLike
from .expansion import as_boxes
from .geometry import FeatureGeometry, GeometryStore
from .index import IndexedImage, TwoStageIndex
from .persist import vocabulary_sha
from .store import RoIStore
from .verify import Verification

if TYPE_CHECKING:  # pragma: no cover
    from .._kernels import CrossMatchResult
    from .config import RetrieverConfig

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "FORMAT",
    "MAX_SHARDS",
    "VERSION",
    "Shard",
    "ShardEntry",
    "ShardedIndex",
    "is_sharded",
    "load_sharded",
    "merge_bow_lists",
    "read_sharded_manifest",
    "save_sharded",
    "shard_name",
    "vocabulary_sha",
    "check_shards_agree",
    "write_sharded_manifest",
]

FORMAT = "roiret-sharded-index"
#: 2: shard folders may be versions (``shard-NNNNN-<12 hex>``); version 1 folders load too
VERSION = 2
_WHAT = "roiret sharded index"
#: shard folders: ``shard-NNNNN`` (built by roiret.distributed, or by roiret before format
#: version 2) or ``shard-NNNNN-<12 hex>`` (a version written by a save)
_SHARD_NAME = re.compile(r"^shard-\d{5,}(-[0-9a-f]{12})?$")
#: the most shards a top manifest may list (a search process maps ~13 files per shard)
MAX_SHARDS = 100_000
#: images per shard before :meth:`ShardedIndex.add` starts a new one (unless the folder says)
DEFAULT_SHARD_SIZE = 100_000

T = TypeVar("T")
R = TypeVar("R")


def shard_name(i: int) -> str:
    """The folder name of shard ``i``: ``shard-00000``."""
    return f"shard-{int(i):05d}"


class ShardedBow(FirstStage):
    """The first stage of a :class:`ShardedIndex` as its user searches it (``Retriever.bow``):
    the collection's encoder, and the shards' lists merged (:meth:`ShardedIndex.search_bow`:
    the order and scores of one index). Read-only: the images change through the
    :class:`~roiret.Retriever`."""

    def __init__(self, owner: "ShardedIndex"):
        self._owner = owner
        self.encoder = owner.encoder

    def __len__(self) -> int:
        return len(self._owner)

    def __repr__(self) -> str:
        return f"ShardedBow(images={len(self)}, shards={len(self._owner.shards)}, {self.encoder!r})"

    def search_bag(
        self, words: np.ndarray, counts: np.ndarray, top: int = 100, *, weights: Optional[np.ndarray] = None
    ) -> BowHits:
        ids, scores = self._owner.search_bow(words, counts, positive_int("top", top), weights)
        return BowHits(ids, scores)

    def bag_of(self, image_id: int, words: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        got, sigs = self._owner.bags_of_rows(self._owner.rows_of([int(image_id)]))[0]
        if words is None:
            return got, sigs
        keep = np.isin(got, np.asarray(words, np.int64))
        return got[keep], sigs[keep]


class ShardedStore:
    """The RoI store of a :class:`ShardedIndex`, read-only and by global row: what showing
    and explaining results needs (``ids``, ``names``, ``indices_of``, ``rois_of``)."""

    def __init__(self, owner: "ShardedIndex"):
        self._owner = owner

    def __len__(self) -> int:
        return len(self._owner)

    def __contains__(self, image_id: int) -> bool:
        return self._owner.contains(int(image_id))

    @property
    def words(self) -> int:
        return self._owner.code_words

    @property
    def ids(self) -> np.ndarray:
        return self._owner.ids

    @property
    def names(self) -> List[str]:
        return [n for s in self._owner.shards for n in s.all_names()]

    @property
    def num_rois(self) -> int:
        return sum(s.num_rois for s in self._owner.shards)

    def indices_of(self, ids: Iterable[int]) -> np.ndarray:
        return self._owner.rows_of(ids)

    def rois_of(self, index: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        s, local = self._owner.locate(index)
        return self._owner.shards[s].rois_of(local)


class Shard(RowReader, Protocol):
    """What a :class:`ShardedIndex` reads of each shard: the rows
    (:class:`~roiret.search.collection.RowReader`), its exact first-stage lists and
    statistics, and its changes — implemented by :class:`~roiret.search.index.TwoStageIndex`
    (rows are its own), and by proxies of shards held elsewhere (``roiret.distributed.serve``)."""

    @property
    def num_rois(self) -> int: ...
    def search_bow_exact(
        self, words: np.ndarray, counts: np.ndarray, top: int, weights: Optional[np.ndarray] = None
    ) -> Tuple[np.ndarray, np.ndarray]: ...
    def document_frequencies(self) -> np.ndarray: ...
    def set_collection_stats(self, n_docs: int, df: np.ndarray) -> None: ...
    def all_names(self) -> List[str]: ...
    def rois_of(self, row: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...
    def nbytes(self) -> int: ...
    def check_consistent(self, where: str) -> None: ...
    def add(self, images: Sequence[IndexedImage]) -> List[int]: ...
    def remove(self, ids: Iterable[int]) -> int: ...
    def truncated(self, K: int) -> Any: ...


def merge_bow_lists(parts: Sequence[Tuple[np.ndarray, np.ndarray]], top: int) -> Tuple[np.ndarray, np.ndarray]:
    """The best ``top`` of the shards' BoW lists ``(ids, float64 exact scores)`` (shard order):
    by score, then shard, then position — one inverted file's order — as (ids, float32
    scores, the native rounding)."""
    ids = np.concatenate([np.asarray(p[0], np.int64) for p in parts])
    exact = np.concatenate([np.asarray(p[1], np.float64) for p in parts])
    shard = np.concatenate([np.full(len(p[0]), i, np.int64) for i, p in enumerate(parts)])
    pos = np.concatenate([np.arange(len(p[0]), dtype=np.int64) for p in parts])
    order = np.lexsort((pos, shard, -exact))[:top]
    return ids[order], exact[order].astype(np.float32)


class ShardedIndex:
    """Several :class:`~roiret.search.index.TwoStageIndex` shards searched as one (module
    docstring): what :func:`~roiret.search.ranking.rank` reads
    (:class:`~roiret.search.collection.Collection`), fanned out over the shards in a thread
    pool (the native kernels release the GIL) and merged. ``shard_size``: images per shard
    before :meth:`add` starts a new one; ``encoder``: the collection's
    :class:`~roiret.bow.BowEncoder` (default: the first shard's; shards held elsewhere need
    it given). Not thread-safe for changes by itself (the :class:`~roiret.Retriever`
    serialises them)."""

    def __init__(
        self, shards: Sequence[Shard], *, shard_size: int = DEFAULT_SHARD_SIZE, encoder: Optional[BowEncoder] = None
    ):
        if not shards:
            raise ValueError("a sharded index needs at least one shard")
        if int(shard_size) < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        #: the shards: :class:`~roiret.search.index.TwoStageIndex` objects, or proxies with the
        #: same methods (:class:`Shard`; ``roiret.distributed.serve``: shards held by Ray actors)
        self.shards: List[Shard] = list(shards)
        self.shard_size = int(shard_size)
        #: shards changed since load or the last save (only these are written again)
        self.dirty = set(range(len(self.shards)))
        #: the folder this index was loaded from or last saved to, and each shard's entry
        #: there (None: not in it)
        self.folder: Optional[Path] = None
        self.entries: List[Optional[ShardEntry]] = [None] * len(self.shards)
        self._pool: Optional[ThreadPoolExecutor] = None
        if encoder is None:
            first = self.shards[0]
            if not isinstance(first, TwoStageIndex):
                raise TypeError("shards held elsewhere need an encoder (the collection's vocabulary and features)")
            encoder = first.encoder
        if not isinstance(encoder, BowEncoder):
            raise TypeError(f"encoder: expected a roiret.bow.BowEncoder, got {type(encoder).__name__}")
        #: the collection's encoder (vocabulary, local features, embedding), shared by its shards
        self.encoder = encoder
        self.store = ShardedStore(self)
        self.refresh()

    # -- layout and global statistics ----------------------------------------------------
    def refresh(self) -> None:
        """Recompute the row layout and set the collection's N and df on every shard —
        after load and after every change (the native files clear them on a change)."""
        sizes = np.array([len(s) for s in self.shards], np.int64)
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        rois = np.array([s.num_rois for s in self.shards], np.int64)
        self._roi_starts = np.concatenate([[0], np.cumsum(rois)]).astype(np.int64)
        self._ids = np.concatenate([s.ids for s in self.shards]).astype(np.int64)
        self._order = np.argsort(self._ids, kind="stable")
        self._sorted_ids = self._ids[self._order]
        df = np.sum(self._map(lambda s: np.asarray(s.document_frequencies(), np.int64), self.shards), axis=0)
        n = int(self._starts[-1])
        self._map(lambda s: s.set_collection_stats(n, df), self.shards)
        # what every query with expansion reads: fixed until the next change (a served
        # shard would answer each call with a round trip)
        self._idf = np.asarray(self.shards[0].idf())
        self._has_geometry = all(s.has_geometry for s in self.shards)

    def _map(self, fn: Callable[[T], R], items: Sequence[T]) -> List[R]:
        if len(items) <= 1:
            return [fn(x) for x in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=min(32, len(self.shards)), thread_name_prefix="roiret-shard")
        return list(self._pool.map(fn, items))

    def locate(self, row: int) -> Tuple[int, int]:
        """(shard, row in that shard) of a global row."""
        if not 0 <= int(row) < len(self):
            raise IndexError(f"row {row} out of range for {len(self)} images")
        s = int(np.searchsorted(self._starts, int(row), side="right")) - 1
        return s, int(row) - int(self._starts[s])

    def _groups(self, rows: np.ndarray) -> List[Tuple[int, np.ndarray, np.ndarray]]:
        """(shard, positions in ``rows``, local rows) of every shard owning some of ``rows``."""
        shard = np.searchsorted(self._starts, rows, side="right") - 1
        local = rows - self._starts[shard]
        return [(int(s), np.flatnonzero(shard == s), local[shard == s]) for s in np.unique(shard)]

    # -- what ranking reads (see TwoStageIndex) ------------------------------------------
    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def ids(self) -> np.ndarray:
        """Ids in global row order (the shards' insertion orders, shard after shard)."""
        return self._ids

    @property
    def has_geometry(self) -> bool:
        return self._has_geometry

    @property
    def code_words(self) -> int:
        return self.shards[0].code_words

    def contains(self, image_id: int) -> bool:
        i = int(np.searchsorted(self._sorted_ids, image_id))
        return i < len(self._sorted_ids) and int(self._sorted_ids[i]) == image_id

    @property
    def embedded(self) -> bool:
        """Whether the first stage is the selective match kernel (see TwoStageIndex)."""
        return self.encoder.embedded

    @property
    def bow(self) -> ShardedBow:
        """The first stage as a user searches it: a read-only view (:class:`ShardedBow`)."""
        return ShardedBow(self)

    def search_bow(
        self, words: np.ndarray, counts: np.ndarray, top: int, weights: Optional[np.ndarray] = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """The merged BoW top ``top``: each shard's list by exact (float64) score, merged by
        (score, shard, position) — one index's order, ties in insertion order."""
        words = np.ascontiguousarray(words, dtype=np.int64)
        if words.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if self.embedded:
            counts = np.ascontiguousarray(counts, dtype=np.uint64).reshape(len(words), -1)
            if weights is None:  # the collection's idf: what every shard would compute
                weights = query_weights(words, self._idf)
        else:
            counts = np.ascontiguousarray(counts, dtype=np.float32)
        parts = self._map(lambda s: s.search_bow_exact(words, counts, int(top), weights), self.shards)
        return merge_bow_lists(parts, int(top))

    def idf(self) -> np.ndarray:
        return self._idf

    def rows_of(self, ids: Iterable[int]) -> np.ndarray:
        a = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), np.int64).reshape(-1)
        pos = np.clip(np.searchsorted(self._sorted_ids, a), 0, max(0, len(self._sorted_ids) - 1))
        bad = np.flatnonzero(self._sorted_ids[pos] != a) if len(self._sorted_ids) else np.arange(len(a))
        if len(bad):
            raise UnknownIdError(f"image id {int(a[bad[0]])} is not in the index")
        return np.asarray(self._order[pos], np.int64)

    def ids_at(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self._ids[np.asarray(rows, np.int64)])

    def _per_shard(self, rows: RowsLike, fn: Callable[[Shard, np.ndarray], Sequence[R]]) -> List[R]:
        """``fn(shard, local rows)`` on the shards owning ``rows`` (in parallel), results put
        back in the order of ``rows``."""
        return self._per_shard_at(rows, lambda shard, local, where: fn(shard, local))

    def _per_shard_at(self, rows: RowsLike, fn: Callable[[Shard, np.ndarray, np.ndarray], Sequence[R]]) -> List[R]:
        """:meth:`_per_shard` with ``fn(shard, local rows, their positions in rows)``."""
        out: List[Any] = [None] * len(rows)
        groups = self._groups(np.asarray(rows, np.int64).reshape(-1))
        for (_, where, _), res in zip(groups, self._map(lambda g: fn(self.shards[g[0]], g[2], g[1]), groups)):
            for i, v in zip(where, res):
                out[int(i)] = v
        return out

    def names_of(self, rows: RowsLike) -> List[str]:
        return self._per_shard(rows, lambda s, local: s.names_of(local))

    def words_of_rows(self, rows: RowsLike, boxes: Optional[np.ndarray] = None) -> List[np.ndarray]:
        if boxes is None:
            return self._per_shard(rows, lambda s, local: s.words_of_rows(local))
        b = as_boxes(boxes, len(rows))
        return self._per_shard_at(rows, lambda s, local, where: s.words_of_rows(local, b[where]))

    def bags_of_rows(self, rows: RowsLike, boxes: Optional[np.ndarray] = None) -> List[Tuple[np.ndarray, np.ndarray]]:
        if boxes is None:
            return self._per_shard(rows, lambda s, local: s.bags_of_rows(local))
        b = as_boxes(boxes, len(rows))
        return self._per_shard_at(rows, lambda s, local, where: s.bags_of_rows(local, b[where]))

    def codes_of_rows(self, rows: RowsLike) -> List[Tuple[np.ndarray, np.ndarray]]:
        return self._per_shard(rows, lambda s, local: s.codes_of_rows(local))

    def roi_boxes_of(self, rows: RowsLike) -> List[np.ndarray]:
        return self._per_shard(rows, lambda s, local: s.roi_boxes_of(local))

    def roi_boxes_at(self, roi_rows: np.ndarray) -> np.ndarray:
        """Boxes of RoIs by global RoI row (the merged cross-match's ``best_db``)."""
        roi_rows = np.asarray(roi_rows, np.int64).reshape(-1)
        out = np.zeros((len(roi_rows), 4), np.float32)
        shard = np.searchsorted(self._roi_starts, roi_rows, side="right") - 1
        groups = [(int(s), np.flatnonzero(shard == s)) for s in np.unique(shard)]

        def one(g: Tuple[int, np.ndarray]) -> np.ndarray:
            return np.asarray(self.shards[g[0]].roi_boxes_at(roi_rows[g[1]] - self._roi_starts[g[0]]))

        for (_, where), boxes in zip(groups, self._map(one, groups)):
            out[where] = boxes
        return out

    def verify(self, query: FeatureGeometry, rows: np.ndarray, threads: Optional[int]) -> Dict[int, Verification]:
        """Each shard verifies its own candidates (in parallel); by global row, in the order
        of ``rows`` (ranking breaks ties in that order)."""
        rows = np.asarray(rows, np.int64)
        groups = self._groups(rows)
        results = self._map(lambda g: self.shards[g[0]].verify(query, g[2], threads), groups)
        found: Dict[int, Verification] = {}
        for (s, _, local), res in zip(groups, results):
            for lr in local:
                found[int(lr) + int(self._starts[s])] = res[int(lr)]
        return {int(r): found[int(r)] for r in rows}

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
        """Each shard cross-matches its own candidates (in parallel); results in the order
        of ``rows``, ``best_db`` as global RoI rows, votes summed over the shards."""
        from .._kernels import CrossMatchResult

        rows = np.asarray(rows, np.int64)
        m = len(rows)
        score, bq, bd = np.empty(m, np.float32), np.full(m, -1, np.int64), np.full(m, -1, np.int64)
        votes = np.zeros(len(q), np.int64)
        groups = self._groups(rows)

        def one(g: Tuple[int, np.ndarray, np.ndarray]) -> "CrossMatchResult":
            return self.shards[g[0]].cross_match(q, nbits, mask, g[2], whole_image=whole_image, threads=threads)

        offsets = self._starts if whole_image else self._roi_starts
        for (s, where, _), r in zip(groups, self._map(one, groups)):
            score[where], bq[where] = r.score, r.best_query
            bd[where] = np.where(np.asarray(r.best_db) >= 0, np.asarray(r.best_db) + offsets[s], -1)
            votes += np.asarray(r.query_votes, np.int64)
        return CrossMatchResult(score, bq, bd, votes)

    # -- changes ---------------------------------------------------------------------------
    def nbytes(self) -> int:
        return sum(int(s.nbytes()) for s in self.shards)

    def check_consistent(self, where: str) -> None:
        for i, s in enumerate(self.shards):
            s.check_consistent(f"{where}/{shard_name(i)}")
        if len(np.unique(self._ids)) != len(self._ids):
            raise IndexFormatError(f"{where}: an image id appears in two shards")

    def new_ids(self, ids: Optional[Sequence[int]], n: int) -> np.ndarray:
        if ids is None:
            return consecutive_ids(int(self._ids.max()) + 1 if len(self._ids) else 0, n)
        a = as_ids(ids, n)
        clash = [int(i) for i in a if self.contains(int(i))]
        if clash:
            raise ValueError(f"ids: image id {clash[0]} is already in the index")
        return a

    def _new_shard(self) -> TwoStageIndex:
        geometry = GeometryStore() if self.has_geometry else None
        return TwoStageIndex(BowIndex(self.encoder), RoIStore(self.code_words), geometry)

    def add(self, images: Sequence[IndexedImage]) -> List[int]:
        """Append to the last shard, starting new shards of ``shard_size`` images when it is
        full; all or nothing (on an error what this call added is removed again). The
        collection statistics are set again."""
        out: List[int] = []
        images = list(images)
        try:
            while images:
                if len(self.shards[-1]) >= self.shard_size:
                    self.shards.append(self._new_shard())
                    self.entries.append(None)
                part, images = (
                    images[: self.shard_size - len(self.shards[-1])],
                    images[self.shard_size - len(self.shards[-1]) :],
                )
                self.dirty.add(len(self.shards) - 1)
                out += self.shards[-1].add(part)
        except BaseException:
            self._settle()
            if out:
                self.remove(out)
            raise
        self._settle()
        return out

    def _settle(self) -> None:
        while len(self.shards) > 1 and not len(self.shards[-1]) and self.entries[-1] is None:
            self.dirty.discard(len(self.shards) - 1)
            self.shards.pop()  # a new shard that received nothing
            self.entries.pop()
        self.refresh()

    def remove(self, ids: Iterable[int]) -> int:
        """Remove images by id from the shards holding them (all or nothing: unknown ids are
        refused before anything changes)."""
        ids = np.unique(as_ids(ids, distinct=False))
        rows = self.rows_of(ids)
        removed = 0
        try:
            for s, where, _ in self._groups(rows):
                removed += self.shards[s].remove(ids[where])
                self.dirty.add(s)
        finally:
            self.refresh()
        return removed

    def truncated(self, K: int) -> "ShardedIndex":
        return ShardedIndex([s.truncated(K) for s in self.shards], shard_size=self.shard_size, encoder=self.encoder)


# -- the folder -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardEntry:
    """One shard as the top-level manifest lists it."""

    name: str
    images: int
    rois: int
    manifest_sha256: str

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "images": self.images, "rois": self.rois, "manifest_sha256": self.manifest_sha256}


def is_sharded(folder: PathLike) -> bool:
    """Whether ``folder`` holds a sharded index (its manifest's format says so)."""
    try:
        m = json.loads((Path(folder) / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(m, dict) and m.get("format") == FORMAT


def shard_entry(folder: PathLike, name: str, *, verify: bool = True) -> ShardEntry:
    """The entry of a complete shard folder ``folder/name`` (its manifest checked; with
    ``verify``, every file's checksum too — skip it for files just written or verified)."""
    m = persist.read_manifest(Path(folder) / name, verify=verify)
    with as_format_error(m.path, "incomplete or invalid manifest"):
        images, rois = int(m.fields["images"]), int(m.fields["rois"])
    return ShardEntry(name, images, rois, sha256_file(m.path))


def _index_folder(folder: PathLike) -> IndexFolder:
    """The top folder: its manifest, and the shard folders it owns (removed after a save
    when the new manifest does not list them)."""
    return IndexFolder(folder, FORMAT, VERSION, _WHAT, folders=_SHARD_NAME)


def _manifest_fields(entries: Sequence[ShardEntry], shard_size: int, extra: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    return {
        **(extra or {}),
        "roiret_version": __version__,
        "shards": [e.to_dict() for e in entries],
        "images": sum(e.images for e in entries),
        "shard_size": int(shard_size),
    }


def write_sharded_manifest(
    folder: PathLike, entries: Sequence[ShardEntry], *, shard_size: int, extra: Optional[Dict[str, Any]] = None
) -> None:
    """Write the top-level manifest over the complete shard folders ``entries`` name
    (atomic, locked; the last step of building); shard folders it does not list are
    removed after it is in place."""

    def write(w: IndexWriter) -> Dict[str, Any]:
        for e in entries:
            w.keep(e.name)
        return _manifest_fields(entries, shard_size, extra)

    _index_folder(folder).save(write)


def read_sharded_manifest(folder: PathLike) -> Tuple[Manifest, List[ShardEntry]]:
    """The checked top-level manifest and its shard entries (module docstring: at most
    :data:`MAX_SHARDS`, no name twice, counts that add up, real folders inside ``folder``),
    each listed shard's ``manifest.json`` matching its SHA-256 and its counts — all before
    any shard's data is read (IndexFormatError naming the file)."""
    m = _index_folder(folder).read(verify=True)
    with as_format_error(m.path, "incomplete or invalid manifest"):
        listed, total, shard_size = m.fields["shards"], int(m.fields["images"]), int(m.fields["shard_size"])
        if not isinstance(listed, list) or shard_size < 1:
            raise ValueError("shards must be a list and shard_size >= 1")
        if len(listed) > MAX_SHARDS:
            raise ValueError(f"lists {len(listed)} shards, more than the {MAX_SHARDS} a sharded index may have")
        entries = [ShardEntry(str(e["name"]), int(e["images"]), int(e["rois"]), str(e["manifest_sha256"]))
                   for e in listed]  # fmt: skip
    if not entries:
        raise m.invalid("lists no shards")
    bad = [e.name for e in entries if not _SHARD_NAME.match(e.name) or min(e.images, e.rois) < 0]
    if bad:
        raise m.invalid(f"bad shard name or negative counts: {bad[0]!r}")
    twice = [(n, k) for n, k in Counter(e.name for e in entries).items() if k > 1]
    if twice:
        raise m.invalid(f"lists shard {twice[0][0]} {twice[0][1]} times")
    if total != sum(e.images for e in entries):
        raise m.invalid(
            f"lists {total} images in all, its {len(entries)} shard entries add up to "
            f"{sum(e.images for e in entries)} (an entry removed or altered)"
        )
    for e in entries:
        _check_shard(m, e)
    return m, entries


def _check_shard(m: Manifest, e: ShardEntry) -> None:
    """The shard folder ``e.name`` of the top manifest ``m``: a real folder inside it (no
    symbolic link), with a manifest matching the listed SHA-256, images and RoIs."""
    if not os.path.lexists(m.folder / e.name / MANIFEST):
        raise IndexFormatError(f"{m.folder / e.name / MANIFEST}: missing (shard {e.name} listed in {m.path})")
    own_entry(m.folder, e.name, f"shard folder {e.name}", directory=True)
    own_entry(m.folder / e.name, MANIFEST, "the manifest")
    path = m.folder / e.name / MANIFEST
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != e.manifest_sha256:
        raise IndexFormatError(f"{path}: does not match the checksum {m.path} lists for it (damaged or replaced)")
    with as_format_error(path, "incomplete or invalid manifest"):
        fields = json.loads(raw.decode("utf-8"))
        held = (int(fields["images"]), int(fields["rois"]))
    if held != (e.images, e.rois):
        raise IndexFormatError(
            f"{m.path}: lists {e.images} images / {e.rois} RoIs for {e.name}, it holds {held[0]} / {held[1]}"
        )


def load_sharded(folder: PathLike, *, verify: bool = True, mmap: bool = True) -> persist.SavedIndex:
    """Read and check a sharded folder: the top manifest, every shard (as
    :func:`~roiret.search.persist.load_index`), and that the shards agree (configuration,
    code length, weights, vocabulary). The returned ``index`` is a :class:`ShardedIndex`."""
    m, entries = read_sharded_manifest(folder)
    first = persist.load_index(m.folder / entries[0].name, verify=verify, mmap=mmap)
    check_shards_agree(m.folder, entries, [first.manifest] + [persist.read_manifest(m.folder / e.name, verify=False)
                                                             for e in entries[1:]])  # fmt: skip
    shared = (str(vocabulary_sha(first.manifest.folder)), first.index.encoder.vocabulary)  # one vocabulary in memory
    loaded = [first] + [
        persist.load_index(m.folder / e.name, verify=verify, mmap=mmap, shared_vocabulary=shared) for e in entries[1:]
    ]
    shards: List[Shard] = []
    for s in loaded:
        assert isinstance(s.index, TwoStageIndex)  # an index folder holds one index
        shards.append(s.index)
    index = ShardedIndex(shards, shard_size=int(m.fields["shard_size"]))
    index.check_consistent(str(m.folder))
    index.dirty, index.folder, index.entries = set(), Path(folder).resolve(), list(entries)
    return persist.SavedIndex(first.config, index, first.nbits, first.fingerprint, first.whitening,
                              first.code_state, m)  # fmt: skip


def check_shards_agree(folder: Path, entries: Sequence[ShardEntry], manifests: Sequence[Manifest]) -> None:
    """IndexFormatError unless every shard's manifest lists the first one's configuration,
    code length, CNN weights and vocabulary file (one collection, searched together)."""

    def key(x: Manifest) -> Tuple[str, Any, Any]:
        return (
            json.dumps(x.fields.get("config"), sort_keys=True),
            x.fields.get("nbits"),
            x.fields.get("backbone_fingerprint"),
        )

    vocab = vocabulary_sha(manifests[0].folder)
    for e, x in zip(entries, manifests):
        if key(x) != key(manifests[0]):
            raise IndexFormatError(f"{folder / e.name}: built with another configuration or CNN than {entries[0].name}")
        if vocabulary_sha(x.folder) != vocab:
            raise IndexFormatError(f"{folder / e.name}: built with another vocabulary than {entries[0].name}")


def save_sharded(
    folder: PathLike,
    index: ShardedIndex,
    *,
    config: "RetrieverConfig",
    nbits: int,
    fingerprint: Optional[str],
    whitening: Any,
    code_state: Dict[str, np.ndarray],
) -> None:
    """Save a sharded index, atomically (module docstring): each shard changed since it was
    loaded from (or last saved to) ``folder`` — every shard when it is another folder — as
    a new version, an ordinary index folder under a fresh name; then the top manifest,
    last, naming the versions; then the shard folders it does not list are removed."""
    folder = Path(folder)
    if not all(isinstance(s, TwoStageIndex) for s in index.shards):  # before anything is written
        raise TypeError("a sharded index served from elsewhere is saved where it is held")
    same = index.folder is not None and folder.exists() and index.folder == folder.resolve()
    entries: List[ShardEntry] = []

    def write(w: IndexWriter) -> Dict[str, Any]:
        for i, shard in enumerate(index.shards):
            old = index.entries[i] if same and i not in index.dirty else None
            if old is not None and _unchanged_on_disk(folder, old):
                w.keep(old.name)
                entries.append(old)
                continue
            assert isinstance(shard, TwoStageIndex)
            sub = w.subfolder(shard_name(i))
            persist.save_index(sub, config=config, index=shard, nbits=nbits, fingerprint=fingerprint,
                               whitening=whitening, code_state=code_state)  # fmt: skip
            entries.append(shard_entry(folder, sub.name, verify=False))  # just written
        return _manifest_fields(entries, index.shard_size, None)

    _index_folder(folder).save(write)
    index.dirty, index.folder, index.entries = set(), folder.resolve(), list(entries)


def _unchanged_on_disk(folder: Path, e: ShardEntry) -> bool:
    """Whether the shard folder of ``e`` still holds what ``e`` lists (its manifest's
    SHA-256): another process's save may have replaced or removed it since."""
    path = folder / e.name / MANIFEST
    try:
        own_entry(folder, e.name, "shard folder", directory=True)
        return sha256_file(path) == e.manifest_sha256
    except (OSError, IndexFormatError):
        return False


def default_shard_size(total: int, shards: int) -> int:
    """Images per shard when ``total`` images are split into ``shards``: the largest shard,
    or :data:`DEFAULT_SHARD_SIZE` when larger."""
    return max(DEFAULT_SHARD_SIZE, -(-int(total) // max(1, int(shards))))
