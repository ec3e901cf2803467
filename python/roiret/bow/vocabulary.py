"""Visual vocabulary: k-means centroids of local descriptors, and word assignment (faiss).

Training (:meth:`Vocabulary.fit`) draws a seeded random sample of the descriptors, starts
from ``vocab_size`` distinct sample points chosen with the same seed, and runs Lloyd
iterations:

* ``kmeans="exact"``: each iteration is one ``faiss.Kmeans`` step (exact nearest centroid
  by brute force, faiss's empty-cluster splitting), multi-threaded by faiss.
* ``kmeans="approximate"``: *approximate k-means* (Philbin et al., CVPR 2007) for large
  vocabularies: the assignment step uses an HNSW graph over the current centroids instead of
  brute force; the update and empty-cluster split follow faiss's rule. The graph is built
  once, single-threaded (so that results do not depend on thread timing), and searched
  with all of faiss's threads; as the centroids move its vectors are replaced, and after
  the first iteration each descriptor is searched from its previous word (``_CentroidGraph``).
  On Oxford5k-dev (500k descriptors, 50k words, 10 iterations) this trains in 64-76 s
  against 418-444 s when the graph was rebuilt and searched from the top every iteration,
  at the same BoW mAP (benchmarks/README.md, "Vocabulary training").
* ``kmeans="auto"`` (default): approximate when ``vocab_size >= hnsw_threshold``.

Both are deterministic for a given seed and input.

Assignment (:meth:`Vocabulary.assign`) is exact (``faiss.IndexFlatL2``) for vocabularies
smaller than ``hnsw_threshold`` words and approximate (``faiss.IndexHNSWFlat``) above;
:meth:`Vocabulary.assignment_recall` measures how often the approximate word equals the
exact one.

faiss uses OpenMP threads for all of this (``faiss.omp_set_num_threads`` sets how many).
Building an HNSW graph temporarily sets faiss to one thread, process-wide.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import IndexFormatError
from ..io import PathLike
from ..io.arrays import load_arrays, save_arrays
from ..params import auto_vocab_size

__all__ = [
    "Vocabulary",
    "DEFAULT_HNSW_THRESHOLD",
    "DEFAULT_HNSW_EF_SEARCH",
    "DEFAULT_KMEANS_EF_SEARCH",
    "DEFAULT_QUERY_HNSW_THRESHOLD",
]

#: Vocabulary size from which assignment (and k-means, with ``kmeans="auto"``) uses HNSW.
DEFAULT_HNSW_THRESHOLD = 32768
#: efSearch when assigning words with HNSW. Measured on Oxford5k-dev (50k words, 802k
#: RootSIFT descriptors, one thread): efSearch 128 / 64 / 32 / 16 assign 5.6k / 11.9k /
#: 23.4k / 40.3k descriptors/s with recall 1.000 / 0.998 / 0.995 / 0.981 against exact
#: assignment, and BoW mAP (classic / medium / hard) 62.72 / 62.60 / 62.42 / 61.58,
#: 45.68 / 45.45 / 45.51 / 45.16, 18.67 / 18.65 / 18.54 / 18.20. 32 quantises 4.2x faster
#: than 128 for at most 0.3 mAP; set ``hnsw_ef_search`` higher for the last fraction.
DEFAULT_HNSW_EF_SEARCH = 32
#: Vocabulary size from which a query's multiple assignment (the ASMK first stage's 3 words per
#: feature) searches the HNSW graph even when the database was assigned exactly: 314 RootSIFT
#: descriptors, 3 nearest, one call: 1 000 / 2 000 / 4 000 / 8 000 / 16 000 words exact 0.98 /
#: 1.67 / 3.48 / 7.03 / 17.3 ms, HNSW (efSearch 32) 1.67 / 1.85 / 2.51 / 2.80 / 3.73 ms, the
#: 3-nearest sets 99.5-100 % equal. On Oxford5k-dev (8 000 words) queries take 15-16 ms less
#: end to end and the default pipeline scores 90.45 / 78.77 / 48.35 (exact: 90.25 / 78.74 /
#: 48.28); ukbench-56 with 8 000 words: N-S 4.000 either way (benchmarks/README.md, "Query
#: latency").
DEFAULT_QUERY_HNSW_THRESHOLD = 4096
#: efSearch inside approximate k-means (vocabulary training). After the first iteration each
#: descriptor is searched from its previous word, where 16 finds the exact nearest word for
#: 99.9 % of them (Oxford5k-dev, 500k descriptors, 50k words; the first search, from the top
#: of the graph, 98.5 %); it was 128 when every iteration searched from the top.
DEFAULT_KMEANS_EF_SEARCH = 16

_FORMAT = "roiret.vocabulary"
_VERSION = 1
_EPS = 1.0 / 1024.0  # faiss's symmetric perturbation when splitting a cluster


def _faiss() -> Any:
    import faiss

    return faiss


def _as_descriptors(x: Any, dim: Optional[int] = None, name: str = "descriptors") -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array (n, d), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name}: expected shape (n, d), got {x.shape}")
    if x.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a float32 array, got dtype {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name}: expected {dim} columns (the vocabulary's dimension), got {x.shape[1]}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _estimate_seconds(n: int, k: int, d: int, approx: bool, iterations: int, ef_search: int) -> float:
    """Rough seconds for k-means on the 2-core development machine. Exact: ~1.7e-8 s per
    descriptor x word x 128 dims per iteration (300k x 10k: 50 s). Approximate: the HNSW graph
    built once (~1.6e-4 s per word: 8 s for 50k), then per iteration and descriptor ~4.5e-6 s
    plus 4.8e-7 s per unit of efSearch, for 128 dims (500k x 50k, 10 iterations at efSearch
    16: 69 s; measured 64-76 s)."""
    if approx:
        return k * 1.6e-4 + iterations * n * (4.5e-6 + 4.8e-7 * ef_search) * d / 128
    return iterations * n * k * d / 128 * 1.7e-8


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _counted(descriptors: Union[np.ndarray, Iterable[Any]]) -> Tuple[Union[np.ndarray, List[Any]], int]:
    """``(descriptors, how many)`` for an (n, d) array or an iterable of them (or of
    LocalFeatures); an iterable is read once into a list, since it is counted and then sampled."""
    if isinstance(descriptors, np.ndarray):
        return descriptors, int(descriptors.shape[0]) if descriptors.ndim == 2 else 0
    parts = list(descriptors)
    return parts, sum(int(np.shape(getattr(p, "descriptors", p))[0]) for p in parts)


def _stack_sample(descriptors: Union[np.ndarray, Sequence[Any]], max_train: Optional[int], seed: int) -> np.ndarray:
    """Seeded sample of rows from an (n, d) array or a sequence of (n_i, d) arrays /
    objects with a ``descriptors`` attribute (e.g. LocalFeatures)."""
    if isinstance(descriptors, np.ndarray):
        parts = [_as_descriptors(descriptors)]
    else:
        parts = []
        for i, p in enumerate(descriptors):
            p = getattr(p, "descriptors", p)
            parts.append(_as_descriptors(p, name=f"descriptors[{i}]"))
        if not parts:
            raise ValueError("descriptors: empty sequence")
        dims = {p.shape[1] for p in parts}
        if len(dims) != 1:
            raise ValueError(f"descriptors: arrays of different dimensions {sorted(dims)}")
    sizes = np.array([p.shape[0] for p in parts], dtype=np.int64)
    n = int(sizes.sum())
    m = n if max_train is None else min(n, int(max_train))
    if m == n:
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=m, replace=False))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    which = np.searchsorted(starts, rows, side="right") - 1
    out = np.empty((m, parts[0].shape[1]), dtype=np.float32)
    for pi in np.unique(which):
        sel = which == pi
        out[sel] = parts[pi][rows[sel] - starts[pi]]
    return out


def _build_hnsw(centroids: np.ndarray, m: int, ef_construction: int, ef_search: int) -> Any:
    faiss = _faiss()
    index = faiss.IndexHNSWFlat(centroids.shape[1], int(m))
    index.hnsw.efConstruction = int(ef_construction)
    index.hnsw.efSearch = int(ef_search)
    nthreads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # parallel insertion makes the graph depend on timing
    try:
        index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    finally:
        faiss.omp_set_num_threads(nthreads)
    return index


def _split_empty(centroids: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> int:
    """faiss's rule: an empty cluster takes a copy of a cluster drawn with probability
    proportional to (size - 1), both perturbed symmetrically by ±1/1024; the size is
    halved between them. Modifies in place; returns the number of splits."""
    empty = np.flatnonzero(counts == 0)
    if empty.size == 0:
        return 0
    d = centroids.shape[1]
    sign = np.where(np.arange(d) % 2 == 0, 1.0, -1.0).astype(np.float32)
    for ci in empty:
        w = np.maximum(counts.astype(np.float64) - 1.0, 0.0)
        tot = w.sum()
        if tot <= 0:
            break  # nothing left to split (fewer distinct points than clusters)
        cj = int(rng.choice(counts.size, p=w / tot))
        centroids[ci] = centroids[cj] * (1.0 + sign * _EPS)
        centroids[cj] = centroids[cj] * (1.0 - sign * _EPS)
        counts[ci] = counts[cj] // 2
        counts[cj] -= counts[ci]
    return int(empty.size)


def _check_fit_args(vocab_size: Any, kmeans_iterations: Any, max_train_descriptors: Any, kmeans: str) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
        raise ValueError(f"vocab_size: expected a positive integer or 'auto', got {vocab_size!r}")
    k = int(vocab_size)
    if int(kmeans_iterations) < 1:
        raise ValueError(f"kmeans_iterations: expected >= 1, got {kmeans_iterations}")
    if max_train_descriptors is not None and int(max_train_descriptors) < k:
        raise ValueError(f"max_train_descriptors ({max_train_descriptors}) must be at least vocab_size ({k})")
    if kmeans not in ("auto", "exact", "approximate"):
        raise ValueError(f"kmeans: expected 'auto', 'exact' or 'approximate', got {kmeans!r}")
    return k


def _initial_centroids(x: np.ndarray, k: int, init: Optional[np.ndarray], seed: int) -> np.ndarray:
    """``init`` checked, or ``k`` distinct rows of ``x`` drawn with ``seed``."""
    if init is None:
        rng = np.random.default_rng([int(seed), 1])
        return np.ascontiguousarray(x[np.sort(rng.choice(len(x), size=k, replace=False))])
    cents = np.array(_as_descriptors(init, x.shape[1], name="init_centroids"), dtype=np.float32)
    if cents.shape[0] != k:
        raise ValueError(f"init_centroids: expected {k} rows (vocab_size), got {cents.shape[0]}")
    if not np.isfinite(cents).all():
        raise ValueError("init_centroids: contain NaN or infinity")
    return cents


def _lloyd_step_exact(x: np.ndarray, cents: np.ndarray, seed: int, i: int) -> Tuple[np.ndarray, float, int]:
    """One Lloyd iteration with faiss's exact k-means: (centroids, mean squared error, splits)."""
    n, d = x.shape
    k = len(cents)
    km = _faiss().Kmeans(
        d,
        k,
        niter=1,
        seed=int(seed) * 1000003 + i,
        max_points_per_centroid=n // k + 2,
        min_points_per_centroid=1,
        verbose=False,
    )
    km.train(x, init_centroids=cents)
    return (
        np.ascontiguousarray(km.centroids, dtype=np.float32),
        float(km.obj[-1]) / n,
        int(km.iteration_stats[-1]["nsplit"]),
    )


class _CentroidGraph:
    """The HNSW graph over the current centroids that approximate k-means assigns with.

    Built once; on later iterations its vectors are replaced by the moved centroids and its
    links kept, since after the first step the centroids move little (Oxford5k-dev, 50k words,
    500k descriptors, 10 iterations at efSearch 128 from the top: the same final objective
    within 0.04 % as rebuilding the graph every iteration; building it takes ~8 s for 50k
    words on the 2-core machine). Rebuilt after an iteration that split
    more than 1 % of the words, because a split word jumps to another word's place, away
    from the links that lead to it.

    The first search goes down the graph's levels (faiss's ``search``); later ones search
    level 0 from each descriptor's previous word (``search_level_0``), where its new word
    almost always is: measured there at efSearch 16, recall 0.999 against exact assignment in
    5.8 s per 500k descriptors, against 0.998 in 9.3 s for a search from the top at efSearch
    32 (0.985 at 16)."""

    def __init__(self, m: int, ef_construction: int, ef_search: int) -> None:
        self.m, self.ef_construction, self.ef_search = int(m), int(ef_construction), int(ef_search)
        self._index: Any = None
        self._words: Optional[np.ndarray] = None  # each descriptor's word at the last search

    def search(self, cents: np.ndarray, x: np.ndarray, rebuild: bool) -> Tuple[np.ndarray, np.ndarray]:
        """(squared distance, nearest centroid) of each row of ``x``."""
        faiss = _faiss()
        if self._index is None or rebuild:
            self._index = None  # free the old graph before building the new one
            self._index = _build_hnsw(cents, self.m, self.ef_construction, self.ef_search)
        else:
            storage = faiss.downcast_index(self._index.storage)
            storage.reset()
            storage.add(cents)
        if self._words is None:
            dist, lab = self._index.search(x, 1)
        else:
            n = x.shape[0]
            start = self._words.astype(np.int32)
            start_d = np.empty(n, dtype=np.float32)
            for a in range(0, n, 1 << 16):  # squared distance to the entry word, in chunks
                diff = x[a : a + (1 << 16)] - cents[start[a : a + (1 << 16)]]
                start_d[a : a + (1 << 16)] = np.einsum("ij,ij->i", diff, diff)
            dist = np.empty((n, 1), dtype=np.float32)
            lab = np.empty((n, 1), dtype=np.int64)
            sp = faiss.swig_ptr
            self._index.search_level_0(n, sp(x), 1, sp(start), sp(start_d), sp(dist), sp(lab), 1, 1)
        lab = lab[:, 0]
        bad = lab < 0
        if bad.any():  # unreachable node: fall back to brute force for those rows
            flat = faiss.IndexFlatL2(x.shape[1])
            flat.add(cents)
            dist[bad], lab2 = flat.search(x[bad], 1)
            lab[bad] = lab2[:, 0]
        self._words = lab
        return dist, lab


def _lloyd_step_hnsw(
    x: np.ndarray, cents: np.ndarray, graph: _CentroidGraph, rebuild: bool, seed: int, i: int
) -> Tuple[np.ndarray, float, int]:
    """One Lloyd iteration with HNSW assignment: (centroids, mean squared error, splits)."""
    n = x.shape[0]
    k = len(cents)
    dist, lab = graph.search(cents, x, rebuild)
    obj = float(dist.sum(dtype=np.float64)) / n
    counts = np.bincount(lab, minlength=k).astype(np.int64)
    used = np.flatnonzero(counts)
    import scipy.sparse

    # per-word sums as a sparse (words x descriptors) product: float64, the same sums as a
    # sort and np.add.reduceat, 7x faster (0.22 vs 1.55 s for 500k x 50k)
    member = scipy.sparse.csr_matrix((np.ones(n), (lab, np.arange(n))), shape=(k, n))
    sums = np.asarray(member @ x)
    new = cents.copy()
    new[used] = (sums[used] / counts[used, None]).astype(np.float32)
    split = _split_empty(new, counts, np.random.default_rng([int(seed), 2, i]))
    return np.ascontiguousarray(new), obj, split


def _lloyd(
    x: np.ndarray,
    cents: np.ndarray,
    graph: Optional[_CentroidGraph],
    iterations: int,
    seed: int,
    progress: Optional[bool],
) -> Tuple[np.ndarray, List[float], int]:
    """Lloyd iterations from ``cents``: exact (``graph`` None) or approximate (assigning with
    ``graph``), with a progress bar after a time estimate when it may be long. Returns
    (centroids, mean squared error per iteration, empty words split)."""
    (n, d), k = x.shape, len(cents)
    objective: List[float] = []
    n_split = split = 0
    it: Any = range(iterations)
    show = progress if progress is not None else sys.stderr.isatty()
    if show:
        from tqdm.auto import tqdm

        eta = _estimate_seconds(n, k, d, graph is not None, iterations, graph.ef_search if graph else 0)
        if eta >= 30:
            tqdm.write(
                f"k-means: {n:,} descriptors into {k:,} words, {iterations} iterations: about "
                f"{_duration(eta)} (estimated; the bar below shows the real pace)",
                file=sys.stderr,
            )
        it = tqdm(it, desc=f"k-means {k} words ({'hnsw' if graph else 'exact'})", unit="it")
    for i in it:
        if graph is not None:
            cents, obj, split = _lloyd_step_hnsw(x, cents, graph, split > k // 100, seed, i)
        else:
            cents, obj, split = _lloyd_step_exact(x, cents, seed, i)
        objective.append(obj)
        n_split += split
        if show:
            it.set_postfix(mse=f"{obj:.4g}")
    if show:
        it.close()
    return cents, objective, n_split


class Vocabulary:
    """A visual vocabulary (``size`` centroids of dimension ``dim``) and word assignment.

    Build one with :meth:`fit`, or wrap existing centroids; persist with :meth:`save` /
    :meth:`load`.

    Parameters
    ----------
    centroids:
        float32 (size, dim) array, finite.
    hnsw_threshold:
        Vocabularies of at least this many words assign with an HNSW graph (approximate);
        smaller ones by brute force (exact). Default :data:`DEFAULT_HNSW_THRESHOLD`.
    hnsw_m, hnsw_ef_construction, hnsw_ef_search:
        HNSW graph degree, build-time and search-time beam widths (faiss's ``M``,
        ``efConstruction``, ``efSearch``). Larger = better recall, slower.
    info:
        Free-form JSON-serialisable metadata (:meth:`fit` records its parameters and the
        k-means objective per iteration; ``descriptor`` names the descriptor kind).

    Thread safety
    -------------
    :meth:`assign` may be called concurrently from several threads (faiss searches are
    read-only; the lazy build of the assignment index is locked).
    """

    def __init__(
        self,
        centroids: np.ndarray,
        *,
        hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD,
        hnsw_m: int = 32,
        hnsw_ef_construction: int = 80,
        hnsw_ef_search: int = DEFAULT_HNSW_EF_SEARCH,
        info: Optional[Dict[str, Any]] = None,
    ):
        c = _as_descriptors(centroids, name="centroids")
        if c.shape[0] < 1 or c.shape[1] < 1:
            raise ValueError(f"centroids: expected a non-empty (size, dim) array, got {c.shape}")
        if not np.isfinite(c).all():
            raise ValueError("centroids: contain NaN or infinity")
        if int(hnsw_threshold) < 1:
            raise ValueError(f"hnsw_threshold: expected >= 1, got {hnsw_threshold}")
        if int(hnsw_m) < 2 or int(hnsw_ef_construction) < 1 or int(hnsw_ef_search) < 1:
            raise ValueError(
                f"HNSW parameters: expected M >= 2, efConstruction >= 1, efSearch >= 1; got "
                f"{hnsw_m}, {hnsw_ef_construction}, {hnsw_ef_search}"
            )
        c = c.copy()
        c.setflags(write=False)
        self._centroids: np.ndarray = c
        self.hnsw_threshold = int(hnsw_threshold)
        self.hnsw_m = int(hnsw_m)
        self.hnsw_ef_construction = int(hnsw_ef_construction)
        self._hnsw_ef_search = int(hnsw_ef_search)
        self.info: Dict[str, Any] = dict(info or {})
        self._lock = threading.Lock()
        self._flat = None
        self._hnsw = None

    # -- properties -----------------------------------------------------------------------
    @property
    def centroids(self) -> np.ndarray:
        """The (size, dim) float32 centroids (read-only)."""
        return self._centroids

    @property
    def size(self) -> int:
        return int(self._centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self._centroids.shape[1])

    def __len__(self) -> int:
        return self.size

    @property
    def approximate(self) -> bool:
        """Whether :meth:`assign` uses the HNSW graph (``size >= hnsw_threshold``)."""
        return self.size >= self.hnsw_threshold

    @property
    def graph_built(self) -> bool:
        """Whether the HNSW graph is in memory (built, or read from the file it was saved in)."""
        return self._hnsw is not None

    @property
    def hnsw_ef_search(self) -> int:
        return self._hnsw_ef_search

    @hnsw_ef_search.setter
    def hnsw_ef_search(self, value: int) -> None:
        if int(value) < 1:
            raise ValueError(f"hnsw_ef_search: expected >= 1, got {value}")
        self._hnsw_ef_search = int(value)
        if self._hnsw is not None:
            self._hnsw.hnsw.efSearch = int(value)

    def __repr__(self) -> str:
        mode = "hnsw" if self.approximate else "exact"
        return f"Vocabulary(size={self.size}, dim={self.dim}, assign={mode!r})"

    # -- training -------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        descriptors: Union[np.ndarray, Sequence[Any]],
        vocab_size: Union[int, str],
        *,
        seed: int = 0,
        kmeans_iterations: int = 20,
        max_train_descriptors: Optional[int] = None,
        kmeans: str = "auto",
        hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD,
        hnsw_m: int = 32,
        hnsw_ef_construction: int = 80,
        hnsw_ef_search: int = DEFAULT_HNSW_EF_SEARCH,
        kmeans_ef_search: Optional[int] = None,
        init_centroids: Optional[np.ndarray] = None,
        descriptor: Optional[str] = None,
        progress: Optional[bool] = True,
        auto_rule: str = "tfidf",
    ) -> "Vocabulary":
        """Learn a vocabulary of ``vocab_size`` words by k-means.

        Parameters
        ----------
        descriptors:
            An (n, d) float array, or a sequence of them (one per image), or a sequence of
            :class:`~roiret.bow.LocalFeatures`. Learn from database images, never from
            ground-truth labels.
        vocab_size:
            Number of words (typically 1k to 1M; needs at least that many training
            descriptors), or ``"auto"``: :func:`roiret.params.auto_vocab_size` of the number of
            descriptors given (one word per 4, at most 50 000; ``auto_rule="asmk"``: the
            coarser rule for the Hamming-embedded first stage, one word per 100).
        seed:
            Seeds the training sample, the initial centroids and empty-cluster splits.
        kmeans_iterations:
            Lloyd iterations (default 20).
        max_train_descriptors:
            Train on a seeded random sample of at most this many descriptors (default: all
            of them, capped at 256 per word as faiss does).
        kmeans:
            ``"exact"``, ``"approximate"`` (HNSW assignment inside k-means, for large
            vocabularies) or ``"auto"`` (approximate when ``vocab_size >= hnsw_threshold``).
        hnsw_threshold, hnsw_m, hnsw_ef_construction, hnsw_ef_search:
            Stored in the vocabulary for :meth:`assign` (see the class).
        kmeans_ef_search:
            efSearch of the HNSW graph during approximate k-means (default:
            :data:`DEFAULT_KMEANS_EF_SEARCH`).
        init_centroids:
            Optional (vocab_size, d) starting centroids (e.g. to continue a previous run);
            default: ``vocab_size`` distinct training descriptors drawn with ``seed``.
        descriptor:
            Name of the descriptor kind (e.g. ``"rootsift"``), recorded in :attr:`info`.
        progress:
            A progress bar over the iterations, after a line estimating the time when it may be
            long: ``True``, ``False`` or ``None`` (only on a terminal).

        Raises
        ------
        ValueError
            Fewer training descriptors than words, non-finite descriptors, bad parameters.
        """
        descriptors, total = _counted(descriptors)
        if isinstance(vocab_size, str) and vocab_size == "auto":
            vocab_size = auto_vocab_size(total, auto_rule)
        k = _check_fit_args(vocab_size, kmeans_iterations, max_train_descriptors, kmeans)
        x = _stack_sample(descriptors, 256 * k if max_train_descriptors is None else int(max_train_descriptors), seed)
        n, d = x.shape
        if n < k:
            raise ValueError(
                f"vocab_size={k}: k-means needs at least as many descriptors as words, and the training images "
                f"gave {n}: use vocab_size <= {n} (--vocab-size on the command line), or vocab_size='auto' "
                f"({auto_vocab_size(total, auto_rule)} words for these descriptors)"
            )
        if not np.isfinite(x).all():
            raise ValueError("descriptors: contain NaN or infinity")
        approx = kmeans == "approximate" or (kmeans == "auto" and k >= int(hnsw_threshold))
        efs = int(kmeans_ef_search if kmeans_ef_search is not None else DEFAULT_KMEANS_EF_SEARCH)
        cents = _initial_centroids(x, k, init_centroids, seed)
        graph = _CentroidGraph(hnsw_m, hnsw_ef_construction, efs) if approx else None
        cents, objective, n_split = _lloyd(x, cents, graph, int(kmeans_iterations), seed, progress)
        info = {
            "descriptor": descriptor,
            "seed": int(seed),
            "n_iter": int(kmeans_iterations),
            "n_train": int(n),
            "kmeans": "approximate" if approx else "exact",
            "kmeans_ef_search": efs if approx else None,
            "objective": objective,
            "n_split": int(n_split),
        }
        return cls(
            cents,
            hnsw_threshold=hnsw_threshold,
            hnsw_m=hnsw_m,
            hnsw_ef_construction=hnsw_ef_construction,
            hnsw_ef_search=hnsw_ef_search,
            info=info,
        )

    # -- assignment -----------------------------------------------------------------------
    def _flat_index(self) -> Any:
        with self._lock:
            if self._flat is None:
                idx = _faiss().IndexFlatL2(self.dim)
                idx.add(self._centroids)
                self._flat = idx
            return self._flat

    def _hnsw_index(self) -> Any:
        with self._lock:
            if self._hnsw is None:
                self._hnsw = _build_hnsw(self._centroids, self.hnsw_m, self.hnsw_ef_construction, self._hnsw_ef_search)
            return self._hnsw

    def assign_exact(self, descriptors: np.ndarray) -> np.ndarray:
        """Nearest word of each row by brute force (squared L2): int64 (n,)."""
        x = _as_descriptors(descriptors, self.dim)
        if x.shape[0] == 0:
            return np.zeros((0,), np.int64)
        _, lab = self._flat_index().search(x, 1)
        return np.ascontiguousarray(lab[:, 0], dtype=np.int64)

    def assign(self, descriptors: np.ndarray) -> np.ndarray:
        """Word of each descriptor row: int64 (n,) in ``[0, size)``.

        Exact for vocabularies below ``hnsw_threshold``, HNSW above (see
        :meth:`assignment_recall`).
        """
        if not self.approximate:
            return self.assign_exact(descriptors)
        x = _as_descriptors(descriptors, self.dim)
        if x.shape[0] == 0:
            return np.zeros((0,), np.int64)
        _, lab = self._hnsw_index().search(x, 1)
        lab = np.ascontiguousarray(lab[:, 0], dtype=np.int64)
        bad = lab < 0
        if bad.any():
            lab[bad] = self.assign_exact(x[bad])
        return lab

    def assign_multiple(
        self, descriptors: np.ndarray, m: int, ratio: float = 1.5, *, approximate: Optional[bool] = None
    ) -> np.ndarray:
        """The ``m`` nearest words of each descriptor: int64 ``(n, m)``, nearest first; a word
        farther than ``ratio`` times the nearest word's squared distance is ``-1`` (multiple
        assignment, Jégou et al.). ``m = 1`` is :meth:`assign` as a column. ``approximate``:
        search the HNSW graph (built on first use) or by brute force; ``None`` (default):
        exact below ``hnsw_threshold`` words, HNSW above. A row HNSW leaves short is filled
        exactly."""
        if isinstance(m, bool) or int(m) != m or not 1 <= int(m) <= min(self.size, 64):
            raise ValueError(f"m: expected an integer in [1, {min(self.size, 64)}], got {m!r}")
        if not (isinstance(ratio, (int, float)) and np.isfinite(ratio) and ratio >= 1):
            raise ValueError(f"ratio: expected a finite number >= 1, got {ratio!r}")
        m = int(m)
        if m == 1:
            return self.assign(descriptors)[:, None]
        x = _as_descriptors(descriptors, self.dim)
        if x.shape[0] == 0:
            return np.zeros((0, m), np.int64)
        hnsw = self.approximate if approximate is None else bool(approximate)
        index = self._hnsw_index() if hnsw else self._flat_index()
        dist, lab = index.search(x, m)
        short = (lab < 0).any(axis=1)
        if short.any():
            dist[short], lab[short] = self._flat_index().search(x[short], m)
        lab = np.ascontiguousarray(lab, dtype=np.int64)
        lab[dist > float(ratio) * dist[:, :1]] = -1
        return lab

    def assignment_recall(self, descriptors: np.ndarray) -> float:
        """Fraction of rows whose :meth:`assign` word equals the exact nearest word
        (1.0 for exact vocabularies)."""
        x = _as_descriptors(descriptors, self.dim)
        if x.shape[0] == 0:
            raise ValueError("assignment_recall: no descriptors")
        return float(np.mean(self.assign(x) == self.assign_exact(x)))

    # -- persistence ----------------------------------------------------------------------
    def state_dict(self, *, include_graph: bool = True) -> Dict[str, Any]:
        """What defines the vocabulary: ``centroids``, the HNSW settings, ``info`` and, with
        ``include_graph`` and an approximate vocabulary, ``hnsw`` (the serialised graph, built
        now if needed, so that :meth:`from_state` does not rebuild it)."""
        state: Dict[str, Any] = {
            "centroids": self._centroids,
            "hnsw_threshold": self.hnsw_threshold,
            "hnsw_m": self.hnsw_m,
            "hnsw_ef_construction": self.hnsw_ef_construction,
            "hnsw_ef_search": self._hnsw_ef_search,
            "info": self.info,
        }
        if include_graph and self.approximate:
            state["hnsw"] = np.asarray(_faiss().serialize_index(self._hnsw_index()), dtype=np.uint8)
        return state

    @classmethod
    def from_state(cls, state: Dict[str, Any]) -> "Vocabulary":
        """Rebuild from :meth:`state_dict` (ValueError when it does not hold together)."""
        try:
            voc = cls(
                state["centroids"],
                hnsw_threshold=state["hnsw_threshold"],
                hnsw_m=state["hnsw_m"],
                hnsw_ef_construction=state["hnsw_ef_construction"],
                hnsw_ef_search=state["hnsw_ef_search"],
                info=state.get("info") or {},
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"invalid vocabulary state ({type(e).__name__}: {e})") from None
        if "hnsw" in state:
            faiss = _faiss()
            try:
                idx = faiss.deserialize_index(np.ascontiguousarray(state["hnsw"]))
            except RuntimeError as e:
                raise ValueError(f"the HNSW graph cannot be read ({e})") from None
            if not isinstance(idx, faiss.IndexHNSWFlat) or idx.ntotal != voc.size or idx.d != voc.dim:
                raise ValueError("the stored HNSW graph does not match the centroids")
            idx.hnsw.efSearch = voc.hnsw_ef_search
            voc._hnsw = idx
        return voc

    def save(self, path: PathLike, *, include_graph: bool = True) -> None:
        """Write the vocabulary to ``path`` (an ``.npz`` without pickles, with a JSON header,
        checksums and a format version; written atomically): :meth:`state_dict`, its arrays
        as arrays and the rest in the header."""
        state = self.state_dict(include_graph=include_graph)
        arrays: Dict[str, np.ndarray] = {k: state.pop(k) for k in ("centroids", "hnsw") if k in state}
        save_arrays(path, _FORMAT, _VERSION, {"size": self.size, "dim": self.dim, **state}, arrays)

    @classmethod
    def load(cls, path: PathLike) -> "Vocabulary":
        """Read a vocabulary written by :meth:`save`.

        Raises
        ------
        FileNotFoundError
            No such file.
        roiret.errors.IndexFormatError
            Not a vocabulary file, a newer format version, truncated or corrupt.
        """
        hdr, arrays = load_arrays(path, _FORMAT, _VERSION)
        try:
            voc = cls.from_state({**hdr, **arrays})
        except ValueError as e:
            raise IndexFormatError(f"{path}: invalid vocabulary header or arrays ({e})") from None
        if voc.size != hdr.get("size") or voc.dim != hdr.get("dim"):
            raise IndexFormatError(f"{path}: centroids do not match the header's size/dim")
        return voc

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Vocabulary)
            and self._centroids.shape == other._centroids.shape
            and bool(np.array_equal(self._centroids, other._centroids))
        )

    __hash__ = None  # type: ignore[assignment]
