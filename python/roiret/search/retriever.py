"""The two-stage retriever: what a user imports (docs/ARCHITECTURE.md has the data path).

>>> r = roiret.Retriever(vocab_size=20_000, K=20, N=100, n=10, k=5)      # doctest: +SKIP
>>> r.train(paths)            # vocabulary (+ whitening if asked), no labels  # doctest: +SKIP
>>> r.add(paths)              # SIFT bags + RoI codes, in batches          # doctest: +SKIP
>>> hits = r.search("query.jpg", box=(x1, y1, x2, y2), top=10)          # doctest: +SKIP
>>> r.save("my.index"); r = roiret.Retriever.load("my.index")          # doctest: +SKIP

First stage: RootSIFT bag of words, scored by ASMK (or TF-IDF) on the native inverted
file → top N; the top R verified geometrically, the query expanded with the verified
results. Second stage: the query's RoI codes cross-matched with the candidates' (fast
strategy: exhaustive for the top n, then only the k most frequently matched query RoIs),
image score = the best RoI-pair similarity, fused with the first-stage score; verified hits
first, then the top N re-ordered, the rest in first-stage order (:meth:`Retriever.search`).
This class is a facade: the configuration is :mod:`.config`, the images are a
:class:`~.index.TwoStageIndex`, ranking is :func:`.ranking.rank`, codes come from
:class:`roiret.cnn.codes.CodeProjector`, the folder format is :mod:`.persist`.

Thread safety: :meth:`Retriever.search` (and :meth:`prepare_query` / :meth:`rank`) may be
called from any number of threads and gives exactly the results of the same searches made
one after another (CNN and SIFT extraction are serialised by an internal lock; ranking runs
in parallel under a shared lock). :meth:`add` runs its RootSIFT and word assignment outside
that lock (both are thread-safe; with ``pipeline=True`` in a thread of its own) and takes
the lock for the CNN only. Adding while searching is safe: :meth:`add` makes each
batch of ``batch_size`` images visible at once (inverted file and RoI codes together,
under an exclusive lock), so a concurrent search sees the index as it was before or after
each batch, never half a batch. Concurrent :meth:`add` / :meth:`remove` calls are
serialised. :meth:`save` runs under the shared lock (changes wait for it) and saves to one
folder are serialised across processes (``flock``). A :meth:`with_K` view must not be
used while the retriever it came from changes.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import NotTrainedError
from ..io import PathLike
from ..io.images import ImageSource, SkippedImageWarning, error_reason, image_list, iter_prepared, source_name
from ..params import RerankParams, SearchParams, VerifyParams, positive_int
from . import persist, sharded
from .config import RetrieverConfig
from .encoding import BatchItem, encode_batches, encode_query
from .explain import DEFAULT_TOLERANCE, explain_hits
from .geometry import GeometryStore
from .index import TwoStageIndex
from .locks import RWLock
from .ranking import rank
from .results import Hit, PreparedQuery, SearchResult
from .store import RoIStore
from .training import training_features

if TYPE_CHECKING:  # pragma: no cover
    from ..bow import BowEncoder, BowIndex, Vocabulary
    from ..cnn.backbones import DeviceLike
    from ..cnn.codes import CodeProjector
    from ..cnn.extractor import RoIExtractor

__all__ = ["Hit", "PreparedQuery", "Retriever", "RetrieverConfig", "SearchResult"]


class Retriever:
    """Instance retrieval: BoW first stage + RoI code re-ranking (see the module docstring).

    Parameters are those of :class:`RetrieverConfig` (keywords, or ``config``), plus:

    device:
        ``"cpu"`` or ``"cuda"`` (or a :class:`torch.device`) for the CNN.
    weights, head_weights, allow_download:
        CNN weight sources (see :mod:`roiret.cnn.weights`).
    batch_size:
        Images per batch in :meth:`add` and :meth:`train`.
    progress:
        Progress bars: ``True``, ``False`` or ``None`` (only on a terminal).
    threads:
        Threads of the native kernels (``None``: all cores).
    pipeline:
        :meth:`add` in a pipeline: a second thread decodes the next batch and runs RootSIFT
        and word assignment on it while the CNN runs on this one (one batch ahead at most).
        ``False`` (the default): one stage after the other, in the calling thread. The index
        is the same either way, bit for bit; also settable as :attr:`pipeline`. On 2 idle
        cores it gains nothing (0.99× / 1.05× the images/s of the default / the paper's
        configuration with OpenMP threads sleeping, 0.79–1.06× before: every stage already
        keeps both cores busy) and 1.04–1.60× with one core taken by another job
        (benchmarks/README.md, "Pipelined indexer", "OpenMP threads that sleep"), so it is
        off by default; measure it with ``benchmarks/bench_indexer.py`` on machines with
        more cores.
    """

    def __init__(
        self,
        config: Optional[RetrieverConfig] = None,
        *,
        device: "DeviceLike" = "cpu",
        weights: Optional[PathLike] = "auto",
        head_weights: Optional[PathLike] = "auto",
        allow_download: bool = False,
        batch_size: int = 16,
        progress: Optional[bool] = None,
        threads: Optional[int] = None,
        pipeline: bool = False,
        **params: Any,
    ):
        self.config = RetrieverConfig(**params) if config is None else config.replace(**params)
        self.device = device
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.progress = progress
        self.threads = threads
        #: :meth:`add` overlaps the BoW stage of the next batch with the CNN (see ``pipeline``)
        self.pipeline = bool(pipeline)
        self._weights, self._head_weights, self._allow_download = weights, head_weights, allow_download
        self._extractor: Optional["RoIExtractor"] = None
        self._index: Optional[persist.AnyIndex] = None
        self._coder: Optional["CodeProjector"] = None
        self._fingerprint: Optional[str] = None
        #: seconds spent per indexing stage by add() (accumulated; reset freely): each stage's
        #: own time in its thread (stages overlap in a pipelined add), "wall" the time of the
        #: add() calls, "images" the images indexed
        self.add_timings: Dict[str, float] = {
            "sift": 0.0,
            "quantize": 0.0,
            "cnn_trunk": 0.0,
            "regions_codes": 0.0,
            "wall": 0.0,
            "images": 0,
        }
        self._query_lock = threading.Lock()  # the CNN / SIFT extractors: one user at a time
        self._change_lock = threading.RLock()  # add / remove: one at a time
        self._rw = RWLock()
        #: ``(position, name, reason)`` of the images the last :meth:`add` skipped
        self.last_failures: List[Tuple[int, str, str]] = []

    # -- components ----------------------------------------------------------------------
    @property
    def extractor(self) -> "RoIExtractor":
        """The CNN RoI extractor (:class:`roiret.cnn.extractor.RoIExtractor`), built on first use."""
        if self._extractor is None:
            from ..cnn.extractor import RoIExtractor

            c = self.config
            self._extractor = RoIExtractor(
                c.backbone,
                c.feature,
                gem_p=c.gem_p,
                scales=c.scales,
                regions=c.regions,
                max_side=c.max_side,
                device=self.device,
                batch_size=self.batch_size,
                weights=self._weights,
                head_weights=self._head_weights,
                allow_download=self._allow_download,
                progress=False,
                num_workers=0,
            )
        return self._extractor

    @property
    def trained(self) -> bool:
        return self._index is not None

    @property
    def index(self) -> persist.AnyIndex:
        """The indexed images: BoW inverted file and RoI store (after :meth:`train` or :meth:`load`);
        a :class:`~roiret.search.sharded.ShardedIndex` when loaded from a sharded folder."""
        if self._index is None:
            raise NotTrainedError()
        return self._index

    @property
    def encoder(self) -> "BowEncoder":
        """The first stage's encoder (:class:`roiret.bow.BowEncoder`: the vocabulary, the local
        features and, for ASMK*, the Hamming embedding), the same for one index and a
        sharded one."""
        return self.index.encoder

    @property
    def bow(self) -> "BowIndex | sharded.ShardedBow":
        """The first stage on its own (encoder, search by image or by bag): for one index its
        :class:`roiret.bow.BowIndex` (the encoder and the inverted file); for a sharded index
        a read-only :class:`~roiret.search.sharded.ShardedBow` that merges the shards' lists
        (the same ids, scores and order). Changes go through :meth:`add` / :meth:`remove`."""
        return self.index.bow

    @property
    def store(self) -> "RoIStore | sharded.ShardedStore":
        """The RoI codes, boxes and names of the indexed images."""
        return self.index.store

    @property
    def ids(self) -> np.ndarray:
        """Ids of the indexed images, in insertion order (empty before training)."""
        return np.zeros(0, np.int64) if self._index is None else self._index.ids.copy()

    @property
    def nbits(self) -> int:
        """Bits per RoI code: ``code_bits``, or the descriptor dimension (the paper)."""
        return self._coder.nbits if self._coder is not None else (self.config.code_bits or self.extractor.dim)

    def __len__(self) -> int:
        return 0 if self._index is None else len(self._index)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Retriever({len(self)} images, backbone={c.backbone!r}, feature={c.feature!r}, K={c.K}, "
            f"vocab_size={c.vocab_size}, N={c.N}, n={c.n}, k={c.k}, mode={c.mode!r}, "
            f"trained={self.trained})"
        )

    # -- training ------------------------------------------------------------------------
    def train(
        self,
        images: Sequence[ImageSource],
        *,
        max_images: Optional[int] = None,
        vocabulary: Optional["Vocabulary"] = None,
    ) -> "Retriever":
        """Learn the visual vocabulary (k-means on local descriptors) and, if configured,
        the PCA-whitening of RoI descriptors — from ``images`` (typically the database
        itself), without labels. ``max_images`` takes a seeded random sample.
        ``vocabulary``: reuse a fitted :class:`roiret.bow.Vocabulary` instead (only the
        whitening is learned then). Training again starts a new, empty index."""
        from ..bow import BowEncoder, BowIndex, Vocabulary
        from ..bow.embedding import embedding_for
        from ..cnn.codes import CodeProjector

        c = self.config
        feats, raw, lfe = training_features(self, images, max_images, vocabulary)
        voc = vocabulary
        if voc is None:
            voc = Vocabulary.fit(
                feats,
                c.vocab_size,
                seed=c.seed,
                max_train_descriptors=c.max_train_descriptors,
                kmeans_iterations=c.kmeans_iterations,
                descriptor=lfe.kind,
                progress=self.progress,
                auto_rule=c.first_stage,
            )
        embedding = embedding_for(voc, feats, c.asmk, c.seed)
        with self._rw.write():
            if c.whitening:
                from ..cnn.whitening import PCAWhitening

                if len(raw) < 2:
                    raise ValueError("train: too few RoI descriptors to learn the whitening")
                self.extractor.whitening = PCAWhitening(dims=c.whitening_dims).fit(raw)
            self.config = c.replace(vocab_size=voc.size)
            self._coder = CodeProjector(self.extractor.dim, c.codes)
            bow = BowIndex(BowEncoder(voc, lfe, embedding=embedding, asmk=c.asmk))
            self._index = TwoStageIndex(bow, RoIStore(self._coder.words), GeometryStore())
            self._fingerprint = self.extractor.weights_fingerprint()
        return self

    # -- adding --------------------------------------------------------------------------
    def add(
        self,
        images: Sequence[ImageSource],
        ids: Optional[Sequence[int]] = None,
        *,
        names: Optional[Sequence[str]] = None,
        on_error: str = "raise",
    ) -> np.ndarray:
        """Index images (a list of paths, bytes or arrays; one image alone is refused with
        a TypeError — wrap it in a list) in batches, with a progress bar.

        ``ids``: new unique integers in the int64 range (default: consecutive after the
        largest so far; floats, bools, strings and values outside int64 are refused, never
        cast).
        ``names``: labels shown in results (default: the absolute path — what ``roiret show``
        reads the image from, whatever the current folder — or ``image-<id>`` for bytes and
        arrays).
        ``on_error``: ``"raise"`` stops at the first unreadable image (raising
        :class:`~roiret.errors.ImageError` naming it — or ``FileNotFoundError`` /
        ``PermissionError``, or ``TypeError`` / ``ValueError`` for an unusable array; the
        batches before it stay added and the exception's ``added_ids`` lists them),
        ``"skip"`` goes on and reports every failure at the end (a warning, and
        :attr:`last_failures`: ``(position, name, reason)`` tuples). Either way the index
        stays consistent: a batch is added whole or not at all. With :attr:`pipeline` the
        progress bar counts the images read, up to two batches ahead of those indexed.
        Returns the ids of the images added.
        """
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        index = self.index
        images = image_list(images)
        if names is not None and len(names) != len(images):
            raise ValueError(f"names: {len(names)} given for {len(images)} images")
        with self._change_lock:  # ids are chosen from the current contents
            all_ids = index.new_ids(ids, len(images))
            added: List[int] = []
            self.last_failures = []
            assert self._coder is not None  # set together with the index
            t0 = time.perf_counter()
            stream = encode_batches(
                self._batches(images, on_error),
                all_ids,
                names,
                encoder=index.encoder,
                extractor=self.extractor,
                coder=self._coder,
                lock=self._query_lock,
                timings=self.add_timings,
                pipeline=self.pipeline,
            )
            try:
                for entries in stream:
                    with self._rw.write():  # a batch becomes visible at once
                        added += index.add(entries)
            except (OSError, ValueError, TypeError) as e:
                setattr(e, "added_ids", np.asarray(added, np.int64))  # noqa: B010 - a field of the exception
                raise
            finally:
                stream.close()  # a pipelined add's thread is gone after this
                self.add_timings["wall"] += time.perf_counter() - t0
        if self.last_failures:
            lines = "\n".join(f"  {name}: {msg}" for _, name, msg in self.last_failures)
            warnings.warn(
                f"{len(self.last_failures)} of {len(images)} images skipped:\n{lines}",
                SkippedImageWarning,
                stacklevel=2,
            )
        return np.asarray(added, np.int64)

    def _batches(self, images: Sequence[ImageSource], on_error: str) -> Iterator[List[BatchItem]]:
        """The decoded images in batches of ``batch_size`` (with the progress bar), the
        unreadable ones recorded in :attr:`last_failures` (``on_error="skip"``) or raised.
        Runs in the pipeline's thread in a pipelined :meth:`add`."""
        batch: List[BatchItem] = []
        for i, src, item in iter_prepared(
            images, self.config.max_side, on_error=on_error, progress=self.progress, desc="indexing"
        ):
            if isinstance(item, Exception):
                self.last_failures.append((i, source_name(src, f"image {i}"), error_reason(item)))
                continue
            batch.append((i, src, item))
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def remove(self, ids: Iterable[int]) -> int:
        """Remove images by id (integers in the int64 range; any other value is a TypeError /
        ValueError) — all or nothing: an unknown id raises KeyError. Returns the number
        removed."""
        index = self.index
        with self._change_lock, self._rw.write():
            return index.remove(ids)

    # -- search --------------------------------------------------------------------------
    def prepare_query(
        self, image: ImageSource, box: Optional[Sequence[float]] = None, *, with_rois: bool = True
    ) -> PreparedQuery:
        """Extract a query's features once (BoW words of the keypoints in ``box``, RoIs of
        the crop), to rank with :meth:`rank` in several ways."""
        encoder = self.index.encoder
        assert self._coder is not None  # set together with the index
        return encode_query(
            image,
            box,
            max_side=self.config.max_side,
            with_rois=with_rois,
            encoder=encoder,
            extractor=self.extractor,
            coder=self._coder,
            lock=self._query_lock,
        )

    def search(
        self,
        image: ImageSource,
        box: Optional[Sequence[float]] = None,
        *,
        top: Optional[int] = None,
        params: Optional[SearchParams] = None,
        **overrides: Any,
    ) -> SearchResult:
        """Rank the database for a query image, or for ``box = (x1, y1, x2, y2)`` (pixels of
        the query image) inside it. ``top``: hits returned (default N). ``params``
        (:class:`~roiret.params.SearchParams`) and the keywords ``overrides`` — its fields,
        which the keywords set on top of ``params`` — override the configuration for this
        call: ``mode``, ``N``, ``n``, ``k``, ``fusion`` (``"adaptive"``, a BoW weight in [0,
        1], or 0 / ``"none"`` / ``None``: the RoI score alone — as in
        :class:`RetrieverConfig`), ``R``, ``min_inliers``, ``qe``, ``qe_margin``; left out,
        they are the configuration's. Every argument is checked before the query is read (a box of four
        finite numbers, ``top`` a positive integer, the overrides as
        :class:`~roiret.params.SearchParams` checks them: ValueError / TypeError otherwise).

        How the hits come (:class:`Hit`): the first stage (ASMK or TF-IDF, ``bow_score``)
        proposes candidates; the top ``R`` are verified geometrically, and those whose
        inliers are evidence of a match (``verified``: at least ``min_inliers``, more when
        query and image share many words) rank first, most inliers first; the query,
        expanded with the best of them (``qe``), is searched again; the other candidates of
        the top ``N`` follow in re-ranked order (RoI similarity ``roi_score``, fused with
        the first-stage score), then the rest in first-stage order. ``rank`` is 1 for the
        best; ``score`` never increases with ``rank``: the inliers of a verified hit (>= 1),
        the re-ranking score in [0, 1], or ``bow_score − 1`` in [−1, 0] for the hits only in
        first-stage order (:class:`Hit` has the details)."""
        params = SearchParams.of(params, **overrides)
        rerank, _, _ = self._settings(params, top)  # checked before the query is read
        q = self.prepare_query(image, box, with_rois=rerank.mode != "bow")
        return self.rank(q, top=top, params=params)

    def _settings(self, params: SearchParams, top: Optional[int]) -> Tuple[RerankParams, VerifyParams, int]:
        """The re-ranking and verification parameters of a search (``params`` over the
        configuration) and the hits it returns."""
        rerank = params.rerank(self.config.rerank)
        return rerank, params.verify(self.config.verify), rerank.N if top is None else positive_int("top", top)

    def rank(
        self,
        query: PreparedQuery,
        *,
        top: Optional[int] = None,
        params: Optional[SearchParams] = None,
        **overrides: Any,
    ) -> SearchResult:
        """Rank the database for a :class:`PreparedQuery`; ``top``, ``params`` and
        ``overrides`` as in :meth:`search`. The query's RoIs are cut to this retriever's K
        (RoIs are in selection order)."""
        rerank, verify, top = self._settings(SearchParams.of(params, **overrides), top)
        index = self.index
        with self._rw.read():
            return rank(query, index, self.nbits, rerank, K=self.config.K, top=top, verify=verify, threads=self.threads)

    def explain(self, query: PreparedQuery, result: SearchResult, tolerance: float = DEFAULT_TOLERANCE) -> SearchResult:
        """``result`` with each hit's ``query_box`` / ``db_box`` replaced by the RoI pair that
        best explains the match (:mod:`roiret.search.explain`: among the pairs within
        ``tolerance`` of the best similarity, the most specific regions) — for showing
        results; scores and order are unchanged."""
        index = self.index
        with self._rw.read():
            hits = explain_hits(result.hits, query, index.store, self.nbits, self.config.K, tolerance)
        return dataclasses.replace(result, hits=hits)

    def with_K(self, K: int) -> "Retriever":
        """A view of this retriever keeping only the first ``K`` RoIs of every image (and
        of queries) — what indexing with that K gives, since RoIs are kept in selection
        order. Shares the vocabulary, inverted file and CNN; meant for experiments."""
        index = self.index
        if isinstance(K, bool) or not 1 <= int(K) <= self.config.K:
            raise ValueError(f"K must be in [1, {self.config.K}], got {K}")
        view = Retriever.__new__(Retriever)
        view.__dict__.update(self.__dict__)
        view.config = self.config.replace(K=int(K))
        view._index = index.truncated(int(K))
        view._rw = RWLock()
        return view

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: PathLike) -> None:
        """Save to a folder (created if needed; layout in :mod:`roiret.search.persist`).
        Atomic: the manifest is replaced last; a crash (or SIGKILL) at any moment leaves
        the previous index intact, and the next save removes what the interrupted one
        left. Saves to one folder are serialised (an exclusive ``flock`` on the folder,
        across threads and processes). A sharded index saves its changed shards as new
        shard folders, then replaces the top-level manifest, then removes the shard folders
        it no longer lists — atomic the same way
        (:func:`roiret.search.sharded.save_sharded`)."""
        index = self.index
        assert self._coder is not None
        state: Dict[str, Any] = dict(
            config=self.config,
            nbits=self.nbits,
            fingerprint=self._fingerprint,
            whitening=self.extractor.whitening,
            code_state=self._coder.state_dict(),
        )
        with self._rw.read():
            if isinstance(index, sharded.ShardedIndex):
                sharded.save_sharded(path, index, **state)
            else:
                persist.save_index(path, index=index, **state)

    @classmethod
    def load(
        cls,
        path: PathLike,
        *,
        device: "DeviceLike" = "cpu",
        verify: bool = True,
        mmap: bool = True,
        weights: Optional[PathLike] = "auto",
        head_weights: Optional[PathLike] = "auto",
        allow_download: bool = False,
        **kwargs: Any,
    ) -> "Retriever":
        """Load a folder written by :meth:`save` — or a sharded folder (written by
        :func:`roiret.distributed.index` or by saving a sharded retriever): then
        :attr:`index` is a :class:`~roiret.search.sharded.ShardedIndex`, searched exactly as
        one index of the same images. ``verify`` checks every file's SHA-256;
        ``mmap`` maps the RoI and geometry arrays and the first stage's signatures (an ASMK
        index: 2/3 of its inverted file at 64 bits, 4/5 at 128) instead of reading them —
        they are then pages of the system's file cache, shared by every process that loads
        the folder and dropped under memory pressure rather than the process being killed;
        the first :meth:`add` or :meth:`remove` copies them into memory (docs/SCALING.md,
        "Signatures on disk"). Raises :class:`~roiret.errors.IndexFormatError` (not an index,
        newer format, missing / truncated / corrupt file, weights that differ from the ones
        the index was built with) or ``FileNotFoundError``."""
        if sharded.is_sharded(path):
            saved = sharded.load_sharded(path, verify=verify, mmap=mmap)
        else:
            saved = persist.load_index(path, verify=verify, mmap=mmap)
        return cls.from_saved(
            saved,
            str(path),
            device=device,
            weights=weights,
            head_weights=head_weights,
            allow_download=allow_download,
            **kwargs,
        )

    @classmethod
    def from_saved(
        cls,
        saved: persist.SavedIndex,
        path: str,
        *,
        device: "DeviceLike" = "cpu",
        weights: Optional[PathLike] = "auto",
        head_weights: Optional[PathLike] = "auto",
        allow_download: bool = False,
        **kwargs: Any,
    ) -> "Retriever":
        """A retriever around an index already read (:meth:`load`; ``roiret.distributed.serve``
        for shards held by Ray actors), its CNN built and checked against the index (code
        length, weights fingerprint) now."""
        from ..cnn.codes import CodeProjector

        r = cls(
            saved.config,
            device=device,
            weights=weights,
            head_weights=head_weights,
            allow_download=allow_download,
            **kwargs,
        )
        # Build the CNN side now, so that a weight mismatch is reported at load time.
        r.extractor.whitening = saved.whitening
        r._coder = CodeProjector.from_state(r.extractor.dim, saved.config.codes, saved.code_state)
        if r._coder.nbits != saved.nbits:
            raise persist.refuse(
                saved,
                f"the index holds {saved.nbits}-bit codes but its configuration now makes {r._coder.nbits}-bit codes",
            )
        fp = r.extractor.weights_fingerprint()
        if saved.fingerprint is not None and fp != saved.fingerprint:
            raise persist.refuse(
                saved,
                f"the CNN weights found now differ from those the index was built with "
                f"(fingerprint {fp[:12]} != {saved.fingerprint[:12]}): query codes "
                "would not be comparable; pass the weights= used when indexing",
            )
        r._index, r._fingerprint = saved.index, saved.fingerprint
        if not saved.index.has_geometry and (r.config.R or r.config.qe):
            warnings.warn(
                f"{path}: this index was saved without the geometry of its local features (by an "
                "older roiret): spatial verification and query expansion are off; index the "
                "images again to use them",
                UserWarning,
                stacklevel=2,
            )
        return r
