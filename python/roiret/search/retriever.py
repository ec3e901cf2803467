"""The two-stage retriever: what a user imports (DESIGN.md stages 7–8).

>>> r = roiret.Retriever(vocab_size=20_000, K=20, N=100, n=10, k=5)      # doctest: +SKIP
>>> r.train(paths)            # vocabulary + PCA-whitening, no labels      # doctest: +SKIP
>>> r.add(paths)              # SIFT bags + RoI codes, in batches          # doctest: +SKIP
>>> hits = r.search("query.jpg", box=(x1, y1, x2, y2), top=10)          # doctest: +SKIP
>>> r.save("my.index"); r = roiret.Retriever.load("my.index")          # doctest: +SKIP

First stage: RootSIFT bag of words, TF-IDF on the native inverted file → top N. Second
stage: the query's RoI codes cross-matched with the candidates' (fast strategy: exhaustive
for the top n, then only the k most frequently matched query RoIs), image score = the best
RoI-pair similarity; the top N are re-ordered by it, the rest keep BoW order.

Persistence (a folder): ``manifest.json`` (format name and version, library version,
configuration, backbone weight fingerprint, every data file with its size and SHA-256),
the vocabulary (``.npz``), the inverted file (native format with CRCs), the whitening
(``.npz``) and the RoI arrays (``.npy``, memory-mapped on load). No pickle anywhere. Data
files get fresh names on every save and the manifest is replaced atomically last, so a
crash during ``save`` leaves the previous index loadable; unreferenced files are removed
afterwards.

Thread safety: :meth:`Retriever.search` (and :meth:`prepare_query` / :meth:`rank`) may be
called from any number of threads and gives exactly the results of the same searches made
one after another (CNN and SIFT extraction are serialised by an internal lock; ranking runs
in parallel under a shared lock). Adding while searching is safe: :meth:`add` makes each
batch of ``batch_size`` images visible at once (inverted file and RoI codes together,
under an exclusive lock), so a concurrent search sees the index as it was before or after
each batch, never half a batch. Concurrent :meth:`add` / :meth:`remove` calls are
serialised. :meth:`save` runs under the shared lock (changes wait for it) and saves to one
folder are serialised across processes (``flock``). A :meth:`with_K` view must not be
used while the retriever it came from changes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time
import re
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import __version__
from .errors import ImageError, IndexFormatError
from .imageio import ImageSource, load_image, resize_max_side
from .rerank import MODES, check_fusion, rerank
from .store import RoIStore

__all__ = ["Hit", "PreparedQuery", "Retriever", "RetrieverConfig", "SearchResult"]

PathLike = Union[str, "os.PathLike[str]"]
_FORMAT = "roiret-index"
_VERSION = 1
_MANIFEST = "manifest.json"


@dataclass
class RetrieverConfig:
    """Parameters of a :class:`Retriever`, with the paper's names.

    CNN RoIs: ``backbone`` (``"alexnet"``, ``"vgg16"``, ``"efficientnet-lite0"``),
    ``feature`` (``"conv-max"``, ``"conv-sum"``, ``"fc7"``, ``"roialign-fc"``), ``K`` RoIs
    per image, ``t_min`` (minimum box area / image area, T_min), ``t_rate`` (maximum aspect
    ratio, T_rate), ``t_iou`` (T_IOU, 0.95), the base-region binarisation
    (``threshold_mode``, ``threshold``; ``None``: the measured defaults of
    :mod:`roiret.regions`), ``whitening`` (learn PCA-whitening in :meth:`Retriever.train`)
    with ``whitening_dims`` output dimensions (``None``: all), ``code_bits`` (``None``: the
    paper's codes, bit i = f_i > mean(f), as many bits as descriptor dimensions; an
    integer: that many bits from a fixed seeded random projection of the L2-normalised
    descriptor, whose Hamming distance estimates the angle between descriptors).

    BoW: ``vocab_size`` visual words, ``local_features`` (``"rootsift"``, ``"sift"``,
    ``"surf"``), ``max_keypoints`` per image, ``max_train_descriptors`` (a seeded sample)
    and ``kmeans_iterations`` for k-means.

    Re-ranking: ``N`` BoW candidates re-ranked, ``n`` of them matched exhaustively, ``k``
    query RoIs kept for the others, ``mode`` (``"fast"``, ``"exhaustive"``, ``"global"``
    — the whole-image baseline —, ``"bow"``), ``fusion`` (how the BoW score enters the
    final score of the top N: ``"adaptive"``, a query-adaptive weight; a fixed weight in
    [0, 1] of the BoW score, both scores standardised over the N candidates; ``None`` or
    0: the RoI score alone, the paper — see :mod:`roiret.rerank`).

    Images: ``max_side`` (500, the paper's) for both stages.

    Defaults. The RoI thresholds come from :mod:`roiret.regions`. ``whitening=False``,
    ``code_bits=512`` and ``fusion="adaptive"`` were chosen by measurement
    (docs/RESULTS.md): on Oxford5k-dev, PCA-whitening learned on the collection's own RoIs
    (~15k descriptors) amplified noisy directions (classic mAP of the RoI re-ranking 47.7
    with it, 59.7 without), 512 projected bits beat the 256 paper bits, and the RoI score
    alone (AlexNet conv5) ranks slightly worse than 50k-word RootSIFT BoW there, while on
    the demo collection (small objects on textured backgrounds) it is far better than BoW;
    fusing both beats BoW on Oxford5k-dev, and choosing the weight per query beat every
    fixed weight that does so, on both. :meth:`paper` gives the paper's own settings.
    """

    backbone: str = "alexnet"
    feature: str = "conv-max"
    K: int = 20
    t_min: Optional[float] = None
    t_rate: Optional[float] = None
    t_iou: float = 0.95
    threshold_mode: Optional[str] = None
    threshold: Optional[float] = None
    whitening: bool = False
    whitening_dims: Optional[int] = None
    code_bits: Optional[int] = 512
    vocab_size: int = 50_000
    local_features: str = "rootsift"
    max_keypoints: Optional[int] = 2000
    max_train_descriptors: Optional[int] = 500_000
    kmeans_iterations: int = 10
    N: int = 100
    n: int = 10
    k: int = 5
    mode: str = "fast"
    fusion: Union[float, str, None] = "adaptive"
    max_side: int = 500
    seed: int = 0

    def __post_init__(self):
        from . import regions

        if self.t_min is None:
            self.t_min = regions.DEFAULT_T_MIN
        if self.t_rate is None:
            self.t_rate = regions.DEFAULT_T_RATE
        if self.threshold_mode is None:
            self.threshold_mode = regions.DEFAULT_THRESHOLD_MODE
        if self.threshold is None:
            self.threshold = regions.DEFAULT_THRESHOLD
        from .backbones import BACKBONES
        from .bow.features import FEATURE_KINDS
        from .descriptors import FEATURES

        # every choice is checked here, so that a bad value (or a damaged manifest) fails
        # when the configuration is made, not later when the CNN is first built
        if not isinstance(self.backbone, str) or self.backbone.lower().replace("_", "-") not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {self.backbone!r}")
        if self.feature not in FEATURES:
            raise ValueError(f"feature must be one of {FEATURES}, got {self.feature!r}")
        if self.local_features not in FEATURE_KINDS:
            raise ValueError(f"local_features must be one of {FEATURE_KINDS}, got {self.local_features!r}")
        if self.threshold_mode not in regions.THRESHOLD_MODES:
            raise ValueError(f"threshold_mode must be one of {regions.THRESHOLD_MODES}, got {self.threshold_mode!r}")
        for name in ("threshold", "t_min", "t_rate", "t_iou"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if not 0.0 <= self.t_min <= 1.0 or self.t_rate < 1.0 or not 0.0 < self.t_iou <= 1.0:
            raise ValueError(f"expected 0 <= t_min <= 1, t_rate >= 1 and 0 < t_iou <= 1, got t_min={self.t_min}, "
                             f"t_rate={self.t_rate}, t_iou={self.t_iou}")
        if self.code_bits is not None and (isinstance(self.code_bits, bool) or int(self.code_bits) < 1):
            raise ValueError(f"code_bits must be None or a positive integer, got {self.code_bits!r}")
        for name in ("K", "N", "n", "k", "vocab_size", "max_side", "kmeans_iterations"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.n > self.N:
            raise ValueError(f"n must be <= N (n of the N candidates are matched exhaustively), got n={self.n}, N={self.N}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        self.fusion = check_fusion(self.fusion)

    @classmethod
    def paper(cls, **overrides) -> "RetrieverConfig":
        """The paper's pipeline: PCA-whitened descriptors binarised against their mean
        (as many bits as dimensions), top N re-ranked by the best RoI-pair similarity
        alone."""
        return cls(**{"whitening": True, "code_bits": None, "fusion": None, **overrides})

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RetrieverConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown configuration keys: {sorted(unknown)}")
        return cls(**d)


@dataclass
class Hit:
    """One ranked database image.

    ``score``: the final score (RoI similarity, or fused) for the re-ranked top N, NaN for
    images ranked by BoW only; ``bow_score``: TF-IDF cosine; ``roi_score``: best RoI-pair
    similarity (NaN when not re-ranked); ``query_box`` / ``db_box``: the best-matching RoI
    pair, ``(x1, y1, x2, y2)`` in pixels of the query image and of the database image as
    they were given (``None`` when not re-ranked)."""

    rank: int
    id: int
    name: str
    score: float
    bow_score: float
    roi_score: float
    query_box: Optional[Tuple[float, float, float, float]]
    db_box: Optional[Tuple[float, float, float, float]]
    reranked: bool

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
    query_boxes: np.ndarray           # (r, 4) RoIs of the query, pixels of the query image
    query_mask: np.ndarray            # (r,) RoIs used for the N − n candidates
    mode: str
    timings: Dict[str, float] = field(default_factory=dict)
    bow_weight: float = 0.0           # the BoW weight the fusion used for this query (0: RoI score alone)

    def __len__(self) -> int:
        return len(self.hits)

    def __iter__(self):
        return iter(self.hits)

    def __getitem__(self, i):
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
    (:class:`~roiret.extractor.RoIResult` of the crop, or ``None``), the RoI ``boxes`` in
    pixels of the query image, and extraction ``timings``."""

    words: np.ndarray
    counts: np.ndarray
    rois: Any
    boxes: np.ndarray
    timings: Dict[str, float]
    codes: Optional[np.ndarray] = None        # (r, words) RoI codes as indexed
    global_code: Optional[np.ndarray] = None  # (words,) whole-image code


def _reason(e: BaseException) -> str:
    """The message of an error without the file name (shown next to it already)."""
    return getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)


def _source_name(src: Any, fallback: str) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    return fallback


class Retriever:
    """Instance retrieval: BoW first stage + RoI code re-ranking (see the module docstring).

    Parameters are those of :class:`RetrieverConfig` (keywords), plus:

    device:
        ``"cpu"`` or ``"cuda"`` (or a :class:`torch.device`) for the CNN.
    weights, head_weights, allow_download:
        CNN weight sources (see :mod:`roiret.weights`).
    batch_size:
        Images per batch in :meth:`add` and :meth:`train`.
    progress:
        Progress bars: ``True``, ``False`` or ``None`` (only on a terminal).
    threads:
        Threads of the native kernels (``None``: all cores).
    """

    def __init__(self, config: Optional[RetrieverConfig] = None, *, device="cpu", weights="auto",
                 head_weights="auto", allow_download: bool = False, batch_size: int = 16,
                 progress: Optional[bool] = None, threads: Optional[int] = None, **params):
        if config is None:
            config = RetrieverConfig(**params)
        elif params:
            config = RetrieverConfig.from_dict({**config.to_dict(), **params})
        self.config = config
        self.device = device
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.progress = progress
        self.threads = threads
        self._weights = weights
        self._head_weights = head_weights
        self._allow_download = allow_download
        self._extractor = None
        self._bow = None
        self._store: Optional[RoIStore] = None
        self._fingerprint: Optional[str] = None
        self._projection: Optional[np.ndarray] = None
        #: seconds spent per indexing stage by add() (accumulated; reset freely)
        self.add_timings = {"sift": 0.0, "quantize": 0.0, "cnn_trunk": 0.0, "regions_codes": 0.0, "images": 0}
        self._query_lock = threading.Lock()  # the CNN / SIFT extractors: one user at a time
        self._change_lock = threading.RLock()  # add / remove: one at a time
        self._rw = _RWLock()
        self.last_failures: List[Tuple[int, str, str]] = []

    # -- components ----------------------------------------------------------------------
    @property
    def extractor(self):
        """The CNN RoI extractor (:class:`roiret.extractor.RoIExtractor`), built on first use."""
        if self._extractor is None:
            from .extractor import RoIExtractor

            c = self.config
            self._extractor = RoIExtractor(
                c.backbone, c.feature, k=c.K, t_min=c.t_min, t_rate=c.t_rate, t_iou=c.t_iou,
                threshold_mode=c.threshold_mode, threshold=c.threshold, max_side=c.max_side,
                device=self.device, batch_size=self.batch_size, weights=self._weights,
                head_weights=self._head_weights, allow_download=self._allow_download,
                progress=False, num_workers=0,
            )
        return self._extractor

    @property
    def bow(self):
        """The BoW first stage (:class:`roiret.bow.BowIndex`), after :meth:`train`."""
        if self._bow is None:
            raise RuntimeError("the retriever is not trained: call train(images) or load(path) first")
        return self._bow

    @property
    def trained(self) -> bool:
        return self._bow is not None

    @property
    def nbits(self) -> int:
        """Bits per RoI code: ``code_bits``, or the descriptor dimension (the paper)."""
        return int(self.config.code_bits) if self.config.code_bits else self.extractor.dim

    def _make_projection(self) -> Optional[np.ndarray]:
        c = self.config
        if not c.code_bits:
            return None
        rng = np.random.default_rng(c.seed)
        return rng.standard_normal((self.extractor.dim, int(c.code_bits))).astype(np.float32)

    def _codes(self, r) -> Tuple[np.ndarray, np.ndarray]:
        """(RoI codes, global code) of an extraction result. With ``code_bits`` the
        descriptors are first multiplied by a fixed seeded Gaussian matrix (random
        hyperplanes: Hamming distance then estimates the angle between descriptors)."""
        if self._projection is None:
            return r.codes, r.global_code
        from ._kernels import pack_codes

        x = np.concatenate([r.descriptors, r.global_descriptor.reshape(1, -1)], 0) @ self._projection
        codes = pack_codes(np.ascontiguousarray(x, dtype=np.float32))
        return codes[:-1], codes[-1]

    def _local_features(self):
        from .bow import LocalFeatureExtractor

        c = self.config
        return LocalFeatureExtractor(c.local_features, max_features=c.max_keypoints, max_side=None)

    def _backbone_fingerprint(self) -> str:
        """SHA-256 of the trunk (and head) weights: codes from different weights don't mix."""
        import torch

        h = hashlib.sha256()
        mods = [self.extractor.backbone] + ([self.extractor.head] if self.extractor.head is not None else [])
        for mod in mods:
            for name, t in sorted(mod.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()

    def __len__(self) -> int:
        return 0 if self._store is None else len(self._store)

    def __repr__(self) -> str:
        c = self.config
        return (f"Retriever({len(self)} images, backbone={c.backbone!r}, feature={c.feature!r}, K={c.K}, "
                f"vocab_size={c.vocab_size}, N={c.N}, n={c.n}, k={c.k}, mode={c.mode!r}, "
                f"trained={self.trained})")

    # -- images --------------------------------------------------------------------------
    def _prepare(self, src: ImageSource) -> Tuple[np.ndarray, float, Tuple[int, int]]:
        """Read once, shrink to max_side: (image, scale = small / original, original (w, h))."""
        img = load_image(src)
        h, w = img.shape[:2]
        small, scale = resize_max_side(img, self.config.max_side)
        return small, scale, (w, h)

    def _iter_prepared(self, images: Sequence[ImageSource], on_error: str, desc: str):
        """Yield (position, source, prepared or exception), with a progress bar."""
        from tqdm.auto import tqdm

        bar = tqdm(total=len(images), desc=desc, unit="img",
                   disable=None if self.progress is None else not self.progress)
        try:
            for i, src in enumerate(images):
                try:
                    item = self._prepare(src)
                except (ImageError, OSError, ValueError, TypeError) as e:  # this image only
                    if on_error == "raise":
                        raise
                    item = e
                yield i, src, item
                bar.update(1)
        finally:
            bar.close()

    # -- training ------------------------------------------------------------------------
    def train(self, images: Sequence[ImageSource], *, max_images: Optional[int] = None,
              vocabulary=None) -> "Retriever":
        """Learn the visual vocabulary (k-means on local descriptors) and, if configured,
        the PCA-whitening of RoI descriptors — from ``images`` (typically the database
        itself), without labels. ``max_images`` takes a seeded random sample.
        ``vocabulary``: reuse a fitted :class:`roiret.bow.Vocabulary` instead (only the
        whitening is learned then)."""
        from .bow import BowIndex, Vocabulary

        images = list(images)
        if not images:
            raise ValueError("train: no images")
        if max_images is not None and len(images) > max_images:
            rng = np.random.default_rng(self.config.seed)
            images = [images[i] for i in sorted(rng.choice(len(images), max_images, replace=False))]
        c = self.config
        lfe = self._local_features()
        if vocabulary is not None:
            if not isinstance(vocabulary, Vocabulary):
                raise TypeError(f"vocabulary: expected a roiret.bow.Vocabulary, got {type(vocabulary).__name__}")
            if vocabulary.dim != lfe.dim or vocabulary.info.get("descriptor", lfe.kind) != lfe.kind:
                raise ValueError(f"vocabulary: {vocabulary.dim}-d {vocabulary.info.get('descriptor')!r} words, "
                                 f"this retriever uses {lfe.dim}-d {lfe.kind!r} features")
        feats, raw, pending = [], [], []

        def flush():
            if pending:
                raw.append(self.extractor.raw_descriptors(pending, progress=False))
                pending.clear()

        for i, src, item in self._iter_prepared(images, "skip", "train: features"):
            if isinstance(item, Exception):
                warnings.warn(f"train: skipping {_source_name(src, f'image {i}')}: {_reason(item)}", RuntimeWarning,
                              stacklevel=2)
                continue
            small = item[0]
            if vocabulary is None:
                feats.append(lfe.extract(small))
            if c.whitening:
                pending.append(small)
                if len(pending) == self.batch_size:
                    flush()
        flush()
        if vocabulary is None and not feats:
            raise ValueError("train: none of the images could be read")
        voc = vocabulary
        if voc is None:
            voc = Vocabulary.fit(feats, c.vocab_size, seed=c.seed, max_train=c.max_train_descriptors,
                                 n_iter=c.kmeans_iterations,
                                 descriptor=lfe.kind, progress=bool(self.progress))
        with self._rw.write():
            if c.whitening:
                from .whitening import PCAWhitening

                x = np.concatenate(raw, 0) if raw else np.zeros((0, self.extractor.raw_dim), np.float32)
                if len(x) < 2:
                    raise ValueError("train: too few RoI descriptors to learn the whitening")
                self.extractor.whitening = PCAWhitening(dims=c.whitening_dims).fit(x)
            self._bow = BowIndex(voc, lfe)
            self.config.vocab_size = voc.size
            self._projection = self._make_projection()
            self._store = RoIStore((self.nbits + 63) // 64)
            self._fingerprint = self._backbone_fingerprint()
        return self

    # -- adding --------------------------------------------------------------------------
    def add(self, images: Sequence[ImageSource], ids: Optional[Sequence[int]] = None, *,
            names: Optional[Sequence[str]] = None, on_error: str = "raise") -> np.ndarray:
        """Index images (paths, bytes or arrays) in batches, with a progress bar.

        ``ids``: new unique int64 ids (default: consecutive after the largest so far).
        ``names``: labels shown in results (default: the path, or ``image-<id>``).
        ``on_error``: ``"raise"`` stops at the first unreadable image (raising
        :class:`~roiret.errors.ImageError` naming it — or ``FileNotFoundError`` /
        ``PermissionError``, or ``TypeError`` / ``ValueError`` for an unusable array; the
        batches before it stay added and the exception's ``added_ids`` lists them),
        ``"skip"`` goes on and reports every failure at the end (a warning, and
        :attr:`last_failures`: ``(position, name, reason)`` tuples). Either way the index
        stays consistent: a batch is added whole or not at all.
        Returns the ids of the images added.
        """
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if not self.trained:
            raise RuntimeError("the retriever is not trained: call train(images) or load(path) first")
        with self._change_lock:  # ids are chosen from the current contents
            return self._add(list(images), ids, names, on_error)

    def _add(self, images, ids, names, on_error: str) -> np.ndarray:
        if ids is not None:
            ids = np.asarray(ids)
            if ids.dtype.kind not in "iu" or ids.shape != (len(images),):
                raise ValueError(f"ids: expected {len(images)} integers, got {ids.dtype} {ids.shape}")
            if len(np.unique(ids)) != len(ids):
                raise ValueError("ids: repeated values")
            clash = [int(i) for i in ids if int(i) in self._store]
            if clash:
                raise ValueError(f"ids: image id {clash[0]} is already in the index")
        else:
            start = int(self._store.ids.max()) + 1 if len(self._store) else 0
            ids = np.arange(start, start + len(images), dtype=np.int64)
        if names is not None and len(names) != len(images):
            raise ValueError(f"names: {len(names)} given for {len(images)} images")
        added: List[int] = []
        self.last_failures = []
        batch: List[Tuple[int, Any, Any]] = []
        try:
            for i, src, item in self._iter_prepared(images, on_error, "indexing"):
                if isinstance(item, Exception):
                    self.last_failures.append((i, _source_name(src, f"image {i}"), _reason(item)))
                    continue
                batch.append((i, src, item))
                if len(batch) == self.batch_size:
                    added += self._add_batch(batch, ids, names)
                    batch = []
            if batch:
                added += self._add_batch(batch, ids, names)
        except (ImageError, OSError, ValueError, TypeError) as e:
            e.added_ids = np.asarray(added, np.int64)  # type: ignore[attr-defined]
            raise
        if self.last_failures:
            lines = "\n".join(f"  {name}: {msg}" for _, name, msg in self.last_failures)
            warnings.warn(f"{len(self.last_failures)} of {len(images)} images skipped:\n{lines}",
                          RuntimeWarning, stacklevel=3)
        return np.asarray(added, np.int64)

    def _add_batch(self, batch, ids, names) -> List[int]:
        from .bow import bags_to_csr

        smalls = [item[0] for _, _, item in batch]
        t = self.add_timings
        with self._query_lock:  # the extractors are shared with concurrent searches
            t0 = time.perf_counter()
            feats = [self._bow.extractor.extract(s) for s in smalls]
            t1 = time.perf_counter()
            bags = [self._bow.encode_features(f) for f in feats]
            t2 = time.perf_counter()
            trunk0 = self.extractor.timings["trunk"]
            rois = self.extractor.extract(smalls, progress=False)
            t3 = time.perf_counter()
        trunk = self.extractor.timings["trunk"] - trunk0
        t["sift"] += t1 - t0
        t["quantize"] += t2 - t1
        t["cnn_trunk"] += trunk
        t["regions_codes"] += (t3 - t2) - trunk
        t["images"] += len(smalls)
        batch_ids = [int(ids[i]) for i, _, _ in batch]
        with self._rw.write():
            self._bow.add_bags(np.asarray(batch_ids, np.int64), *bags_to_csr(bags))
            done: List[int] = []
            try:
                for (i, src, (small, scale, size)), r, image_id in zip(batch, rois, batch_ids):
                    name = names[i] if names is not None else _source_name(src, f"image-{image_id}")
                    codes, global_code = self._codes(r)
                    self._store.add(image_id, codes, r.boxes / scale, r.scores, global_code, size, name)
                    done.append(image_id)
            except BaseException:  # all of the batch or none of it: the two parts stay in step
                if done:
                    self._store.remove(done)
                self._bow.remove(np.asarray(batch_ids, np.int64))
                raise
        return batch_ids

    def remove(self, ids: Iterable[int]) -> int:
        """Remove images by id (all or nothing: an unknown id raises KeyError). Returns the
        number removed."""
        ids = np.unique(np.asarray(list(ids), np.int64))
        with self._change_lock, self._rw.write():
            self._store.indices_of(ids)  # validates before anything changes
            self._bow.remove(ids)
            return self._store.remove(ids)

    # -- search --------------------------------------------------------------------------
    def prepare_query(self, image: ImageSource, box: Optional[Sequence[float]] = None, *,
                      with_rois: bool = True) -> "PreparedQuery":
        """Extract a query's features once (BoW words of the keypoints in ``box``, RoIs of
        the crop), to rank with :meth:`rank` in several ways."""
        if not self.trained:
            raise RuntimeError("the retriever is not trained: call train(images) or load(path) first")
        t0 = time.perf_counter()
        small, scale, size = self._prepare(image)
        sbox = None
        if box is not None:
            b = np.asarray(box, np.float64).ravel()
            if b.shape != (4,) or not np.isfinite(b).all() or b[2] <= b[0] or b[3] <= b[1]:
                raise ValueError(f"box: expected finite x1 < x2, y1 < y2, got {box!r}")
            sbox = tuple(float(v) * scale for v in b)
        t1 = time.perf_counter()
        with self._query_lock:
            words, counts = self._bow.encode(small, box=sbox)
            t2 = time.perf_counter()
            rois = None
            if with_rois:
                rois = self.extractor.extract([small], boxes=None if sbox is None else [sbox], progress=False)[0]
            t3 = time.perf_counter()
        codes = global_code = None
        if rois is not None:
            codes, global_code = self._codes(rois)
            qb = rois.boxes.astype(np.float64)
            if sbox is not None:  # crop pixels -> image pixels
                qb[:, 0::2] += np.floor(max(sbox[0], 0.0))
                qb[:, 1::2] += np.floor(max(sbox[1], 0.0))
            q_boxes = (qb / scale).astype(np.float32)
        else:
            q_boxes = np.zeros((0, 4), np.float32)
        return PreparedQuery(words, counts, rois, q_boxes,
                             {"load": t1 - t0, "bow_features": t2 - t1, "cnn": t3 - t2}, codes, global_code)

    def search(self, image: ImageSource, box: Optional[Sequence[float]] = None, *, top: Optional[int] = None,
               mode: Optional[str] = None, N: Optional[int] = None, n: Optional[int] = None,
               k: Optional[int] = None, fusion: Union[float, str, None] = None) -> SearchResult:
        """Rank the database for a query image, or for ``box = (x1, y1, x2, y2)`` (pixels of
        the query image) inside it. ``top``: hits returned (default N); the other
        arguments override the configuration for this call."""
        mode = self.config.mode if mode is None else mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        q = self.prepare_query(image, box, with_rois=mode != "bow")
        return self.rank(q, top=top, mode=mode, N=N, n=n, k=k, fusion=fusion)

    def rank(self, query: "PreparedQuery", *, top: Optional[int] = None, mode: Optional[str] = None,
             N: Optional[int] = None, n: Optional[int] = None, k: Optional[int] = None,
             fusion: Union[float, str, None] = None) -> SearchResult:
        """Rank the database for a :class:`PreparedQuery` (see :meth:`search`). The query's
        RoIs are cut to this retriever's K (RoIs are in selection order)."""
        c = self.config
        mode = c.mode if mode is None else mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        N = c.N if N is None else int(N)
        n = c.n if n is None else int(n)
        k = c.k if k is None else int(k)
        fusion = c.fusion if fusion is None else fusion
        top = N if top is None else int(top)
        if top < 1:
            raise ValueError(f"top must be >= 1, got {top}")
        if mode != "bow" and query.rois is None:
            raise ValueError(f"mode {mode!r} needs the query's RoIs: prepare_query(..., with_rois=True)")
        t3 = time.perf_counter()
        q_codes = None if query.codes is None else query.codes[: c.K]
        q_boxes = query.boxes[: c.K]
        with self._rw.read():
            store = self._store
            depth = min(len(store), max(top, N))
            if depth == 0:
                return SearchResult([], q_boxes, np.ones(len(q_boxes), bool), mode, dict(query.timings))
            ids, bow_scores = self._bow.search_bag(query.words, query.counts, top_n=depth)
            if len(ids) < depth:  # no keypoint in the query: BoW cannot rank; keep insertion order
                rest = np.setdiff1d(store.ids, ids, assume_unique=True)
                ids = np.concatenate([ids, rest[: depth - len(ids)]])
                bow_scores = np.concatenate([bow_scores, np.zeros(depth - len(bow_scores), np.float32)])
            t4 = time.perf_counter()
            rows = store.indices_of(ids)
            nn = min(n, N)
            if mode == "global":
                rr = rerank(query.global_code.reshape(1, -1), store.global_codes,
                            np.arange(len(store) + 1, dtype=np.int64), self.nbits, rows, N=N, n=nn, k=1,
                            mode="exhaustive", bow_scores=bow_scores, fusion=fusion, threads=self.threads)
            elif mode == "bow":
                rr = rerank(np.zeros((0, store.words), np.uint64), store.codes, store.offsets, self.nbits, rows,
                            N=N, n=nn, k=k, mode="bow")
            else:
                rr = rerank(q_codes, store.codes, store.offsets, self.nbits, rows, N=N, n=nn, k=k,
                            mode=mode, bow_scores=bow_scores, fusion=fusion, threads=self.threads)
            t5 = time.perf_counter()
            out = []
            for rank, p in enumerate(rr.order[:top]):
                row = int(rows[p])
                reranked = mode != "bow" and bool(np.isfinite(rr.roi_score[p]))
                qb = db = None
                if reranked and mode != "global" and rr.best_db[p] >= 0:
                    qb = tuple(float(v) for v in q_boxes[rr.best_query[p]])
                    db = tuple(float(v) for v in store.boxes[rr.best_db[p]])
                out.append(Hit(rank=rank, id=int(ids[p]), name=store.names[row], score=float(rr.score[p]),
                               bow_score=float(bow_scores[p]), roi_score=float(rr.roi_score[p]),
                               query_box=qb, db_box=db, reranked=reranked))
        timings = dict(query.timings)
        timings.update(bow_search=t4 - t3, rerank=t5 - t4)
        timings["total"] = sum(timings.values())
        return SearchResult(out, q_boxes, rr.query_mask, mode, timings, rr.bow_weight)

    def with_K(self, K: int) -> "Retriever":
        """A view of this retriever keeping only the first ``K`` RoIs of every image (and
        of queries) — what indexing with that K gives, since RoIs are kept in selection
        order. Shares the vocabulary, inverted file and CNN; meant for experiments."""
        if not 1 <= int(K) <= self.config.K:
            raise ValueError(f"K must be in [1, {self.config.K}], got {K}")
        view = Retriever.__new__(Retriever)
        view.__dict__.update(self.__dict__)
        view.config = RetrieverConfig.from_dict({**self.config.to_dict(), "K": int(K)})
        view._store = self._store.truncated(int(K))
        view._rw = _RWLock()
        return view

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: PathLike) -> None:
        """Save to a folder (created if needed; see the module docstring for the layout).
        Atomic: the manifest is replaced last; a crash (or SIGKILL) at any moment leaves
        the previous index intact, and the next save removes what the interrupted one
        left. Saves to one folder are serialised (an exclusive ``flock`` on the folder,
        across threads and processes)."""
        if not self.trained:
            raise RuntimeError("nothing to save: the retriever is not trained")
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        with _folder_lock(folder):
            self._save_into(folder)

    def _save_into(self, folder: Path) -> None:
        from .bow._io import atomic_write, remove_files, sha256_file

        tag = uuid.uuid4().hex[:12]
        written: List[str] = []
        old = _manifest_files(folder)
        with self._rw.read():
            try:
                files: Dict[str, str] = {}

                def put(role: str, name: str, writer) -> None:
                    written.append(name)
                    writer(folder / name)
                    _fsync_path(folder / name)  # on disk before the manifest names it
                    files[role] = name

                put("vocabulary", f"vocabulary-{tag}.npz", self._bow.vocabulary.save)
                put("inverted_file", f"inverted_file-{tag}.bin", lambda p: self._bow.inverted_file.save(str(p)))
                if self.extractor.whitening is not None:
                    put("whitening", f"whitening-{tag}.npz", self.extractor.whitening.save)
                if self._projection is not None:
                    put("projection", f"projection-{tag}.npy", lambda p: _save_npy(p, self._projection))
                for key, arr in self._store.arrays().items():
                    put(f"rois.{key}", f"rois-{key}-{tag}.npy", lambda p, a=arr: _save_npy(p, a))
                manifest = {
                    "format": _FORMAT,
                    "version": _VERSION,
                    "roiret_version": __version__,
                    "config": self.config.to_dict(),
                    "local_features": self._bow.extractor.config(),
                    "backbone_fingerprint": self._fingerprint,
                    "nbits": self.nbits,
                    "images": len(self._store),
                    "rois": self._store.num_rois,
                    "files": {role: {"name": name, "bytes": (folder / name).stat().st_size,
                                     "sha256": sha256_file(folder / name)} for role, name in files.items()},
                }
                text = json.dumps(manifest, indent=2, sort_keys=True)
                _fsync_path(folder, directory=True)  # the data files' names are durable ...
                atomic_write(folder / _MANIFEST, lambda f: f.write(text.encode("utf-8")))
                _fsync_path(folder, directory=True)  # ... and so is the new manifest, before old files go
            except BaseException:
                remove_files(folder, written)
                raise
        # the previous save's files, and what saves killed midway left behind
        stale = set(old) | {p.name for p in folder.iterdir()
                            if _DATA_NAME.match(p.name) or _MANIFEST_TMP.match(p.name)}
        remove_files(folder, stale - set(written))

    @classmethod
    def load(cls, path: PathLike, *, device="cpu", verify: bool = True, mmap: bool = True,
             weights="auto", head_weights="auto", allow_download: bool = False, **kwargs) -> "Retriever":
        """Load a folder written by :meth:`save`. ``verify`` checks every file's SHA-256;
        ``mmap`` maps the RoI arrays instead of reading them (the first :meth:`add` copies
        them into memory). Raises :class:`~roiret.errors.IndexFormatError` (not an index,
        newer format, missing / truncated / corrupt file, weights that differ from the ones
        the index was built with) or ``FileNotFoundError``."""
        from .bow import BowIndex, LocalFeatureExtractor, Vocabulary
        from .bow._io import sha256_file
        from ._kernels import InvertedFile
        from .whitening import PCAWhitening

        folder = Path(path)
        mpath = folder / _MANIFEST
        if not folder.exists():
            raise FileNotFoundError(f"{folder}: no such index folder")
        if not mpath.exists():
            raise IndexFormatError(f"{folder}: no {_MANIFEST}; not a roiret index")
        try:
            m = json.loads(mpath.read_text("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise IndexFormatError(f"{mpath}: not valid JSON ({type(e).__name__}: {e})") from None
        if not isinstance(m, dict) or m.get("format") != _FORMAT:
            raise IndexFormatError(f"{mpath}: not a roiret index manifest (format {m.get('format') if isinstance(m, dict) else None!r})")
        ver = m.get("version")
        if not isinstance(ver, int) or ver < 1 or ver > _VERSION:
            raise IndexFormatError(f"{mpath}: index format version {ver!r}, this roiret {__version__} reads "
                                   f"versions 1 to {_VERSION}; upgrade roiret")
        try:
            # keys added after format version 1 was first written keep the old behaviour
            config = RetrieverConfig.from_dict({"code_bits": None, **m["config"]})
            files = m["files"]
            paths = {}
            for role, spec in files.items():
                name = spec["name"]
                if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
                    raise IndexFormatError(f"{mpath}: bad file name {name!r}")
                p = folder / name
                if not p.exists():
                    raise IndexFormatError(f"{mpath}: {role} file {name!r} is missing")
                if p.stat().st_size != spec["bytes"]:
                    raise IndexFormatError(f"{mpath}: {role} file {name!r} is truncated or altered "
                                           f"({p.stat().st_size} bytes, expected {spec['bytes']})")
                if verify and sha256_file(p) != spec["sha256"]:
                    raise IndexFormatError(f"{mpath}: {role} file {name!r} does not match its checksum (corrupt)")
                paths[role] = p
            nbits = int(m["nbits"])
            lf_config = m["local_features"]
            fingerprint = m.get("backbone_fingerprint")
            if not isinstance(lf_config, dict) or not (fingerprint is None or isinstance(fingerprint, str)):
                raise ValueError("local_features must be an object and backbone_fingerprint a string")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            if isinstance(e, IndexFormatError):
                raise
            raise IndexFormatError(f"{mpath}: incomplete or invalid manifest ({e})") from None
        for role in ("vocabulary", "inverted_file") + tuple(f"rois.{k}" for k in RoIStore.FILES):
            if role not in paths:
                raise IndexFormatError(f"{mpath}: no {role} file listed")
        r = cls(config, device=device, weights=weights, head_weights=head_weights,
                allow_download=allow_download, **kwargs)
        # Every file is untrusted input: whatever a damaged one makes a parser raise
        # (BadZipFile, EOFError, a tokenizer error in an .npy header, ...) is reported as
        # IndexFormatError naming it. Nothing is unpickled (allow_pickle=False everywhere).
        with _as_format_error(paths["vocabulary"]):
            voc = Vocabulary.load(paths["vocabulary"])
        with _as_format_error(mpath):
            lfe = LocalFeatureExtractor.from_config(lf_config)
        whitening = None
        if "whitening" in paths:
            with _as_format_error(paths["whitening"]):
                whitening = PCAWhitening.load(paths["whitening"])
        with _as_format_error(paths["inverted_file"]):
            ivf = InvertedFile.load(str(paths["inverted_file"]))
        projection = None
        if config.code_bits:
            if "projection" not in paths:
                raise IndexFormatError(f"{mpath}: no projection file listed for {config.code_bits}-bit codes")
            with _as_format_error(paths["projection"], "not a valid .npy array"):
                projection = np.load(paths["projection"], allow_pickle=False)
        words = (nbits + 63) // 64
        if words < 1:
            raise IndexFormatError(f"{mpath}: nbits must be >= 1, got {nbits}")
        arrays = {}
        for key in RoIStore.FILES:
            with _as_format_error(paths[f"rois.{key}"], "not a valid .npy array"):
                arrays[key] = np.load(paths[f"rois.{key}"], mmap_mode="r" if mmap and key != "names" else None,
                                      allow_pickle=False)
        with _as_format_error(folder, "inconsistent RoI arrays"):
            store = RoIStore.from_arrays(words, arrays, where=str(folder))
        if m.get("images", len(store)) != len(store) or m.get("rois", store.num_rois) != store.num_rois:
            raise IndexFormatError(f"{mpath}: the manifest lists {m.get('images')} images / {m.get('rois')} RoIs, "
                                   f"the arrays hold {len(store)} / {store.num_rois}")
        if len(store) != len(ivf) or not np.array_equal(np.sort(store.ids), np.sort(ivf.ids())):
            raise IndexFormatError(f"{folder}: the inverted file and the RoI arrays hold different images")
        r._bow = BowIndex(voc, lfe, inverted_file=ivf)
        r._bow._next_id = int(store.ids.max()) + 1 if len(store) else 0
        r._store = store
        r._fingerprint = fingerprint
        # Build the CNN side now, so that a weight mismatch is reported at load time.
        r.extractor.whitening = whitening
        if projection is not None:
            if projection.dtype != np.float32 or projection.shape != (r.extractor.dim, config.code_bits) \
                    or not np.isfinite(projection).all():
                raise IndexFormatError(f"{paths['projection']}: expected a finite float32 ({r.extractor.dim}, "
                                       f"{config.code_bits}) projection, got {projection.dtype} {projection.shape}")
            r._projection = np.ascontiguousarray(projection)
        if r.nbits != nbits:
            raise IndexFormatError(f"{folder}: the index holds {nbits}-bit codes but its configuration "
                                   f"now makes {r.nbits}-bit codes")
        fp = r._backbone_fingerprint()
        if fingerprint is not None and fp != fingerprint:
            raise IndexFormatError(
                f"{folder}: the CNN weights found now differ from those the index was built with "
                f"(fingerprint {fp[:12]} != {fingerprint[:12]}): query codes would not be comparable; "
                "pass the weights= used when indexing")
        return r


class _as_format_error:
    """Re-raise what parsing a damaged file raises as IndexFormatError naming it (not
    FileNotFoundError / OSError with an errno, MemoryError or KeyboardInterrupt)."""

    def __init__(self, path, what: str = "corrupt or not the expected kind of file"):
        self.path, self.what = path, what

    def __enter__(self):
        return self

    def __exit__(self, typ, e, tb):
        if e is None or isinstance(e, (IndexFormatError, MemoryError)) or not isinstance(e, Exception):
            return False
        if isinstance(e, OSError) and e.errno is not None:
            return False
        msg = str(e)
        if msg.startswith(str(self.path)):  # already names the file
            raise IndexFormatError(msg) from None
        raise IndexFormatError(f"{self.path}: {self.what} ({type(e).__name__}: {msg})") from None


class _folder_lock:
    """Exclusive advisory lock on a folder (``flock`` on its descriptor; released when the
    process dies). A no-op where ``fcntl`` does not exist."""

    def __init__(self, folder: Path):
        self.folder, self.fd = folder, None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        self.fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError:  # a file system without flock: go on unlocked
            os.close(self.fd)
            self.fd = None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None
        return False


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory
        if not directory:
            raise
    finally:
        os.close(fd)


#: names that save() writes (data files and their temporaries): what is left of a save
#: that was killed midway matches these and is removed by the next successful save
_DATA_NAME = re.compile(r"^\.?(vocabulary|inverted_file|whitening|projection|rois-[a-z_]+)-[0-9a-f]{12}\.(npz|bin|npy)"
                        r"(\.tmp-\d+-\d+|\.tmp|\.[A-Za-z0-9_]+\.tmp)?$")
_MANIFEST_TMP = re.compile(r"^\.manifest\.json\.[A-Za-z0-9_]+\.tmp$")


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _manifest_files(folder: Path) -> List[str]:
    try:
        m = json.loads((folder / _MANIFEST).read_text("utf-8"))
        return [f["name"] for f in m.get("files", {}).values() if "/" not in f["name"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


class _RWLock:
    """Many readers or one writer (writers are not starved: new readers wait for a
    waiting writer)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    class _Ctx:
        def __init__(self, enter, leave):
            self.enter, self.leave = enter, leave

        def __enter__(self):
            self.enter()

        def __exit__(self, *exc):
            self.leave()

    def _acquire_read(self):
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1

    def _release_read(self):
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def _acquire_write(self):
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True

    def _release_write(self):
        with self._cond:
            self._writer = False
            self._cond.notify_all()

    def read(self):
        return self._Ctx(self._acquire_read, self._release_read)

    def write(self):
        return self._Ctx(self._acquire_write, self._release_write)
