"""Serving a sharded index from Ray actors that keep the shards in memory.

:func:`serve` starts ``actors`` Ray actors, each loading a consecutive group of the shards of
a sharded folder (:class:`ShardServer`; the folder must be readable where they run), and
returns a :class:`~roiret.Retriever` on the calling process whose index is a
:class:`~roiret.search.sharded.ShardedIndex` of :class:`RemoteShard` proxies: the query's
features are extracted here, every ranking step fans out to the actors (one call per shard
and step, in parallel) and is merged here by the same rules as shards in one process — so
the results are again exactly those of one index holding every image. The collection's N and
df are summed over the actors' shards and set on every shard at start. The served index is
read-only (``add``, ``remove`` and ``save`` go through a local :meth:`Retriever.load
<roiret.Retriever.load>`); :func:`release` stops the actors.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..search import persist
from ..search.index import IndexedImage, RowsLike, TwoStageIndex
from ..search.retriever import Retriever
from ..search.sharded import ShardedIndex, check_shards_agree, read_sharded_manifest
from ..search.verify import Verification

if TYPE_CHECKING:  # pragma: no cover
    from .._kernels import CrossMatchResult
    from ..search.geometry import FeatureGeometry

__all__ = ["RemoteShard", "ShardServer", "release", "serve"]


class ShardServer:
    """A Ray actor's state: the shards at ``folders`` (ordinary index folders), loaded and
    checked; ``call`` runs one of the :class:`~roiret.search.sharded.Shard` methods on one of
    them. (A plain class: ``ray.remote`` wraps it, threaded so its shards work in parallel.)"""

    def __init__(self, folders: List[str], verify: bool = True, mmap: bool = True):
        self.shards: List[TwoStageIndex] = []
        shared: Optional[persist.SharedVocabulary] = None  # one vocabulary in memory
        for f in folders:
            index = persist.load_index(f, verify=verify, mmap=mmap, shared_vocabulary=shared).index
            assert isinstance(index, TwoStageIndex)  # an index folder holds one index
            shared = shared or (str(persist.vocabulary_sha(f)), index.encoder.vocabulary)
            self.shards.append(index)

    def describe(self) -> List[Dict[str, Any]]:
        return [
            {"len": len(s), "ids": s.ids.copy(), "num_rois": s.num_rois, "has_geometry": s.has_geometry,
             "code_words": s.code_words}
            for s in self.shards
        ]  # fmt: skip

    def call(self, i: int, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.shards[i], method)(*args, **kwargs)


class RemoteShard:
    """One shard held by a :class:`ShardServer` actor, with the methods a
    :class:`~roiret.search.sharded.ShardedIndex` reads (each a call to the actor)."""

    def __init__(self, actor: Any, i: int, info: Dict[str, Any]):
        self.actor, self._i = actor, i
        self._len, self.ids = int(info["len"]), np.asarray(info["ids"], np.int64)
        self.num_rois, self.has_geometry = int(info["num_rois"]), bool(info["has_geometry"])
        self.code_words = int(info["code_words"])

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        import ray

        return ray.get(self.actor.call.remote(self._i, method, *args, **kwargs))

    def __len__(self) -> int:
        return self._len

    def search_bow_exact(
        self, words: np.ndarray, counts: np.ndarray, top: int, weights: Optional[np.ndarray] = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        ids, exact = self._call("search_bow_exact", words, counts, top, weights)
        return np.asarray(ids, np.int64), np.asarray(exact, np.float64)

    def document_frequencies(self) -> np.ndarray:
        return np.asarray(self._call("document_frequencies"), np.int64)

    def set_collection_stats(self, n_docs: int, df: np.ndarray) -> None:
        self._call("set_collection_stats", n_docs, df)

    def idf(self) -> np.ndarray:
        return np.asarray(self._call("idf"))

    def names_of(self, rows: RowsLike) -> List[str]:
        return list(self._call("names_of", rows))

    def all_names(self) -> List[str]:
        return list(self._call("all_names"))

    def words_of_rows(self, rows: RowsLike, boxes: Optional[np.ndarray] = None) -> List[np.ndarray]:
        return list(self._call("words_of_rows", rows, boxes))

    def bags_of_rows(self, rows: RowsLike, boxes: Optional[np.ndarray] = None) -> List[Tuple[np.ndarray, np.ndarray]]:
        return list(self._call("bags_of_rows", rows, boxes))

    def codes_of_rows(self, rows: RowsLike) -> List[Tuple[np.ndarray, np.ndarray]]:
        return list(self._call("codes_of_rows", rows))

    def roi_boxes_of(self, rows: RowsLike) -> List[np.ndarray]:
        return list(self._call("roi_boxes_of", rows))

    def roi_boxes_at(self, roi_rows: np.ndarray) -> np.ndarray:
        return np.asarray(self._call("roi_boxes_at", roi_rows))

    def rois_of(self, row: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        codes, boxes, scores = self._call("rois_of", row)
        return codes, boxes, scores

    def verify(self, query: "FeatureGeometry", rows: np.ndarray, threads: Optional[int]) -> Dict[int, Verification]:
        return dict(self._call("verify", query, rows, threads))

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
        from .._kernels import CrossMatchResult

        return CrossMatchResult(
            *self._call("cross_match", q, nbits, mask, rows, whole_image=whole_image, threads=threads)
        )

    def nbytes(self) -> int:
        return int(self._call("nbytes"))

    def check_consistent(self, where: str) -> None:
        """Checked by the actor when it loaded the shard."""

    def add(self, images: Sequence[IndexedImage]) -> List[int]:
        raise TypeError("a served index is read-only: add to the folder with Retriever.load, then serve it again")

    def remove(self, ids: Iterable[int]) -> int:
        raise TypeError("a served index is read-only: remove from the folder with Retriever.load, then serve it again")

    def truncated(self, K: int) -> Any:
        raise TypeError("a served index has no with_K view")


def serve(
    folder: Any,
    *,
    actors: Optional[int] = None,
    address: Optional[str] = None,
    num_cpus: float = 1,
    verify: bool = True,
    mmap: bool = True,
    threads: Optional[int] = None,
    **kwargs: Any,
) -> Retriever:
    """A read-only :class:`~roiret.Retriever` over the sharded folder ``folder`` whose shards
    are held by ``actors`` Ray actors (default: one per shard, at most one per task slot),
    each asking ``num_cpus`` cores (module docstring). ``address``: the cluster (default:
    the current connection or a new local one; it is left running). ``kwargs`` go to the
    local retriever (``device``, ``weights``, ...). :func:`release` stops the actors."""
    import ray

    from .ray_index import _connect

    _connect(address, None)
    m, entries = read_sharded_manifest(folder)
    # the actors verify every file of their shards (``verify``); the driver only parses the
    # query side of the first shard and checks that the shards agree
    front = persist.load_frontend(m.folder / entries[0].name, verify=False)
    check_shards_agree(m.folder, entries, [persist.read_manifest(m.folder / e.name, verify=False) for e in entries])
    slots = max(1, int(ray.cluster_resources().get("CPU", 1) // max(num_cpus, 1e-9))) if num_cpus else len(entries)
    n = max(1, min(len(entries), actors or slots))
    groups = [entries[len(entries) * a // n : len(entries) * (a + 1) // n] for a in range(n)]
    server = ray.remote(ShardServer)
    handles: List[Any] = [
        server.options(num_cpus=num_cpus, max_concurrency=max(2, len(g))).remote(
            [str(Path(m.folder).resolve() / e.name) for e in g], verify, mmap
        )
        for g in groups
    ]
    infos = ray.get([h.describe.remote() for h in handles])
    proxies = [RemoteShard(h, i, info) for h, group in zip(handles, infos) for i, info in enumerate(group)]
    index = ShardedIndex(proxies, shard_size=int(m.fields["shard_size"]), encoder=front.encoder)
    saved = persist.SavedIndex(front.config, index, front.nbits, front.fingerprint, front.whitening,
                               front.code_state, m)  # fmt: skip
    return Retriever.from_saved(saved, str(folder), threads=threads, **kwargs)


def release(retriever: Retriever) -> None:
    """Stop the actors of a retriever made by :func:`serve` (it cannot search afterwards)."""
    import ray

    index = retriever.index
    if isinstance(index, ShardedIndex):
        for actor in {id(s.actor): s.actor for s in index.shards if isinstance(s, RemoteShard)}.values():
            ray.kill(actor)
