"""Hamming embedding of local descriptors inside their visual words, aggregated per word:
the signatures of the selective match kernel's first stage (ASMK*, Tolias, Avrithis and
Jégou, ICCV 2013; Hamming embedding: Jégou, Douze and Schmid, ECCV 2008).

A descriptor ``x`` assigned to word ``c`` (centroid ``q_c``) has the residual ``x - q_c``.
:class:`HammingEmbedding` projects it with one random orthogonal matrix ``P`` (``bits``
rows of a random rotation, drawn once from ``seed``) and subtracts the word's thresholds
``t_c`` (per dimension: zero, or the median of the training residuals' projections, as in
HE): ``z(x) = P (x - q_c) - t_c``. An image's descriptors that fall in the same word are
*aggregated* — ``Z_c = Σ z(x)`` — and binarised: bit ``i`` of the word's signature is
``Z_c[i] > 0``. One signature per image and word (ASMK*): bursts of repeated structures
(windows, bricks) count once, not once per pair.

Multiple assignment (``assign_multiple``): a descriptor may be counted in its ``m`` nearest
words (those within ``ratio`` times the nearest's squared distance), which recovers the
matches that quantisation splits across neighbouring cells; measured on the query side.

The signatures are packed as the native core's codes (bit ``i`` in bit ``i % 64`` of word
``i // 64``) and scored by :class:`roiret.EmbeddedInvertedFile`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ..errors import IndexFormatError
from ..io import PathLike
from ..io.arrays import load_arrays, save_arrays

if TYPE_CHECKING:  # pragma: no cover
    from ..params import AsmkParams
    from .features import LocalFeatures
    from .vocabulary import Vocabulary

__all__ = ["DEFAULT_EMBEDDING_BITS", "THRESHOLD_KINDS", "HammingEmbedding", "embedding_for", "pack_signs"]

#: signature length (bits) of a new embedding; at most the descriptor dimension
DEFAULT_EMBEDDING_BITS = 128
#: per-word thresholds: ``"zero"`` (the sign of the aggregated residual, ASMK*) or
#: ``"median"`` (the word's median projected residual, HE)
THRESHOLD_KINDS = ("zero", "median")
_FORMAT_FIELDS = ("bits", "dim", "vocab_size", "thresholds", "seed")
_FORMAT = "roiret.hamming_embedding"
#: projected residual coordinates the sub-cells of :meth:`HammingEmbedding.fine_words` use
FINE_DIMS = 32
_VERSION = 1


def pack_signs(z: np.ndarray) -> np.ndarray:
    """``z > 0`` of a float ``(n, bits)`` array packed to ``uint64 (n, ceil(bits / 64))``,
    bit ``i`` of a row in bit ``i % 64`` of word ``i // 64``."""
    z = np.asarray(z)
    n, bits = z.shape
    words = (bits + 63) // 64
    padded = np.zeros((n, words * 64), np.uint8)
    padded[:, :bits] = z > 0
    return np.packbits(padded, axis=1, bitorder="little").view("<u8").astype(np.uint64).reshape(n, words)


def _check_bits(bits: Any, dim: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= dim:
        raise ValueError(f"bits: expected an integer in [1, {dim}] (the descriptor dimension), got {bits!r}")
    return int(bits)


class HammingEmbedding:
    """Per-word binary signatures of descriptor residuals (see the module docstring).

    Parameters
    ----------
    centroids:
        The vocabulary's words, float32 ``(V, d)``.
    projection:
        float32 ``(bits, d)`` with orthonormal rows.
    thresholds:
        float32 ``(V, bits)``, or ``None`` for zero thresholds.
    seed:
        The seed ``projection`` was drawn from (recorded, for the record only).

    Use :meth:`fit` to make one; :meth:`state_dict` / :meth:`from_state` to store it.
    """

    def __init__(
        self,
        centroids: np.ndarray,
        projection: np.ndarray,
        thresholds: Optional[np.ndarray] = None,
        *,
        seed: int = 0,
        fine: Optional[np.ndarray] = None,
    ):
        c = np.ascontiguousarray(centroids, dtype=np.float32)
        p = np.ascontiguousarray(projection, dtype=np.float32)
        if c.ndim != 2 or p.ndim != 2 or p.shape[1] != c.shape[1]:
            raise ValueError(f"projection {p.shape} does not fit centroids {c.shape}: expected (bits, {c.shape[-1]})")
        _check_bits(p.shape[0], c.shape[1])
        if not (np.all(np.isfinite(p)) and np.allclose(p @ p.T, np.eye(p.shape[0]), atol=1e-4)):
            raise ValueError("projection: the rows must be finite and orthonormal")
        if thresholds is not None:
            thresholds = np.ascontiguousarray(thresholds, dtype=np.float32)
            if thresholds.shape != (c.shape[0], p.shape[0]) or not np.all(np.isfinite(thresholds)):
                raise ValueError(
                    f"thresholds: expected finite float32 {(c.shape[0], p.shape[0])}, got {thresholds.shape}"
                )
        if fine is not None:
            fine = np.ascontiguousarray(fine, dtype=np.float32)
            if fine.ndim != 3 or fine.shape[0] != c.shape[0] or not 1 <= fine.shape[2] <= p.shape[0]:
                raise ValueError(f"fine: expected ({c.shape[0]}, cells, dims <= {p.shape[0]}), got {fine.shape}")
            if not np.all(np.isfinite(fine)):
                raise ValueError("fine: contains NaN or infinity")
        self._centroids, self.projection, self.thresholds, self.seed = c, p, thresholds, int(seed)
        #: sub-cells of each word for spatial verification: (V, cells, dims) centroids of the
        #: first ``dims`` projected residual coordinates (None: the words themselves)
        self.fine = fine

    @property
    def bits(self) -> int:
        """Signature length."""
        return int(self.projection.shape[0])

    @property
    def words(self) -> int:
        """uint64 words per signature."""
        return (self.bits + 63) // 64

    @property
    def vocab_size(self) -> int:
        return int(self._centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self._centroids.shape[1])

    @property
    def threshold_kind(self) -> str:
        return "zero" if self.thresholds is None else "median"

    @property
    def cells(self) -> int:
        """Sub-cells per word of :meth:`fine_words` (1 without them)."""
        return 1 if self.fine is None else int(self.fine.shape[1])

    def __repr__(self) -> str:
        return (
            f"HammingEmbedding(bits={self.bits}, words={self.vocab_size}, thresholds={self.threshold_kind!r}, "
            f"cells={self.cells})"
        )

    # -- training -------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        centroids: np.ndarray,
        descriptors: Optional[np.ndarray] = None,
        words: Optional[np.ndarray] = None,
        *,
        bits: int = DEFAULT_EMBEDDING_BITS,
        thresholds: str = "zero",
        seed: int = 0,
        cells: int = 1,
    ) -> "HammingEmbedding":
        """Draw the projection (the first ``bits`` rows of a random rotation from ``seed``)
        and, for ``thresholds="median"``, learn each word's median projected residual from
        ``descriptors`` assigned to ``words`` (no labels; words without a training
        descriptor keep zero thresholds). ``cells`` > 1: also split each word into that many
        sub-cells (k-means of its training residuals, :meth:`fine_words`)."""
        c = np.ascontiguousarray(centroids, dtype=np.float32)
        if c.ndim != 2:
            raise ValueError(f"centroids: expected a 2-D array, got shape {c.shape}")
        bits = _check_bits(bits, c.shape[1])
        if thresholds not in THRESHOLD_KINDS:
            raise ValueError(f"thresholds: expected one of {THRESHOLD_KINDS}, got {thresholds!r}")
        rng = np.random.default_rng(int(seed))
        q, r = np.linalg.qr(rng.standard_normal((c.shape[1], c.shape[1])))
        rotation = (q * np.sign(np.diag(r))).T  # rows orthonormal; the sign fix makes it uniform (Haar)
        emb = cls(c, rotation[:bits].astype(np.float32), seed=int(seed))
        if isinstance(cells, bool) or int(cells) != cells or not 1 <= int(cells) <= 256:
            raise ValueError(f"cells: expected an integer in [1, 256], got {cells!r}")
        if (thresholds == "median" or cells > 1) and (descriptors is None or words is None):
            raise ValueError("thresholds='median' and cells > 1 need training descriptors and their words")
        if thresholds == "median":
            emb.thresholds = emb._medians(descriptors, words)  # type: ignore[arg-type]
        if cells > 1:
            emb.fine = emb._sub_cells(descriptors, words, int(cells), seed)  # type: ignore[arg-type]
        return emb

    def _medians(self, descriptors: np.ndarray, words: np.ndarray) -> np.ndarray:
        x, w = self._check_input(descriptors, words)
        z = self._project(x, w)
        order = np.argsort(w, kind="stable")
        starts = np.searchsorted(w[order], np.arange(self.vocab_size + 1))
        t = np.zeros((self.vocab_size, self.bits), np.float32)
        for c in np.flatnonzero(np.diff(starts)):
            t[c] = np.median(z[order[starts[c] : starts[c + 1]]], axis=0)
        return t

    def _fine_input(self, x: np.ndarray, w: np.ndarray, dims: int) -> np.ndarray:
        return np.asarray((x - self._centroids[w]) @ self.projection[:dims].T, np.float32)

    def _sub_cells(self, descriptors: np.ndarray, words: np.ndarray, cells: int, seed: int) -> np.ndarray:
        """(V, cells, dims) sub-centroids: every word's k-means (10 Lloyd iterations, all
        words at once) on the first ``dims`` = min(32, bits) projected residual coordinates,
        initialised from the word's own residuals drawn with ``seed`` (a word with fewer
        residuals than cells repeats them; a word without any gets zeros)."""
        x, w = self._check_input(descriptors, words)
        dims = min(FINE_DIMS, self.bits)
        z = self._fine_input(x, w, dims)
        rng = np.random.default_rng(seed)
        order = np.lexsort((rng.random(len(w)), w))  # each word's residuals in a seeded order
        starts = np.searchsorted(w[order], np.arange(self.vocab_size + 1))
        counts = np.diff(starts)
        pick = starts[:-1, None] + np.arange(cells)[None, :] % np.maximum(counts, 1)[:, None]
        fine = np.where(counts[:, None, None] > 0, z[order[np.minimum(pick, len(w) - 1)]], 0.0).astype(np.float32)
        for _ in range(10):
            a = self._nearest_cell(z, w, fine)
            sums = np.zeros((self.vocab_size * cells, dims))
            np.add.at(sums, w * cells + a, z)
            n = np.bincount(w * cells + a, minlength=self.vocab_size * cells)
            flat = fine.reshape(-1, dims)
            flat[n > 0] = (sums[n > 0] / n[n > 0, None]).astype(np.float32)
        return fine

    @staticmethod
    def _nearest_cell(z: np.ndarray, w: np.ndarray, fine: np.ndarray, chunk: int = 65536) -> np.ndarray:
        out = np.empty(len(w), np.int64)
        for i in range(0, len(w), chunk):
            d = ((z[i : i + chunk, None, :] - fine[w[i : i + chunk]]) ** 2).sum(-1)
            out[i : i + chunk] = np.argmin(d, axis=1)  # ties: the lower cell
        return out

    def fine_words(self, descriptors: np.ndarray, words: np.ndarray) -> np.ndarray:
        """Finer labels of the descriptors for spatial verification's tentative
        correspondences: ``word · cells + the nearest sub-cell`` (uint32; the words themselves
        without sub-cells). Two features correspond when they share word *and* sub-cell, as
        with a finer vocabulary, while the signatures stay per word."""
        x, w = self._check_input(descriptors, words)
        if self.fine is None or len(w) == 0:
            return np.asarray(w, np.uint32)
        z = self._fine_input(x, w, self.fine.shape[2])
        return np.asarray(w * self.cells + self._nearest_cell(z, w, self.fine), np.uint32)

    # -- encoding -------------------------------------------------------------------------
    def _check_input(self, descriptors: np.ndarray, words: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        x = np.asarray(descriptors)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"descriptors: expected shape (n, {self.dim}), got {x.shape}")
        w = np.asarray(words)
        if w.ndim != 1 or w.shape[0] != x.shape[0]:
            raise ValueError(f"words: expected shape ({x.shape[0]},), got {w.shape}")
        if w.size and (w.dtype.kind not in "iu" or int(w.min()) < 0 or int(w.max()) >= self.vocab_size):
            raise ValueError(f"words: expected integers in [0, {self.vocab_size})")
        return np.asarray(x, np.float32), w.astype(np.int64, copy=False)

    def _project(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        z = (x - self._centroids[w]) @ self.projection.T
        if self.thresholds is not None:
            z -= self.thresholds[w]
        return np.asarray(z, np.float32)

    def aggregate(self, descriptors: np.ndarray, words: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """One image's ``(words, signatures)``: its distinct words (int64, ascending) and the
        packed sign of each word's summed projected residuals (uint64 ``(u, words)``).

        ``words``: one word per descriptor ``(n,)``, or several ``(n, m)`` (multiple
        assignment; ``-1`` marks an unused slot): each assignment adds the descriptor's
        residual to that word's sum."""
        w = np.asarray(words)
        if w.ndim == 2:
            rows, cols = np.nonzero(w >= 0)
            x = np.asarray(descriptors)[rows] if len(rows) else np.zeros((0, self.dim), np.float32)
            w = w[rows, cols]
        else:
            x = descriptors
        x, w = self._check_input(x, w)
        if w.size == 0:
            return np.zeros(0, np.int64), np.zeros((0, self.words), np.uint64)
        z = self._project(x, w)
        order = np.argsort(w, kind="stable")
        u, starts = np.unique(w[order], return_index=True)
        sums = np.add.reduceat(z[order].astype(np.float64), starts, axis=0)
        return u.astype(np.int64), pack_signs(sums)

    # -- persistence ----------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Arrays ``projection`` (and ``thresholds``) and the fields of :data:`_FORMAT_FIELDS`
        (the centroids belong to the vocabulary and are not repeated)."""
        state: Dict[str, Any] = {
            "projection": self.projection,
            "bits": self.bits,
            "dim": self.dim,
            "vocab_size": self.vocab_size,
            "thresholds": self.threshold_kind,
            "seed": self.seed,
        }
        if self.thresholds is not None:
            state["threshold_values"] = self.thresholds
        if self.fine is not None:
            state["fine"] = self.fine
        return state

    @classmethod
    def from_state(cls, state: Dict[str, Any], centroids: np.ndarray) -> "HammingEmbedding":
        """Rebuild from :meth:`state_dict` and the vocabulary's centroids (ValueError when
        they do not fit together)."""
        try:
            missing = [k for k in _FORMAT_FIELDS + ("projection",) if k not in state]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            c = np.asarray(centroids)
            if (int(state["vocab_size"]), int(state["dim"])) != c.shape:
                raise ValueError(f"made for {state['vocab_size']} × {state['dim']} words, the vocabulary is {c.shape}")
            kind = state["thresholds"]
            if kind not in THRESHOLD_KINDS or (kind == "median") != ("threshold_values" in state):
                raise ValueError(f"thresholds {kind!r} do not match the stored arrays")
            emb = cls(
                c, state["projection"], state.get("threshold_values"), seed=int(state["seed"]), fine=state.get("fine")
            )
            if emb.bits != int(state["bits"]):
                raise ValueError(f"projection has {emb.bits} rows, the header says {state['bits']} bits")
            return emb
        except (TypeError, KeyError) as e:
            raise ValueError(f"invalid embedding state ({type(e).__name__}: {e})") from None

    def save(self, path: PathLike) -> None:
        """Write to ``path`` (``.npz`` without pickles, JSON header, checksums, atomic)."""
        state = self.state_dict()
        arrays: Dict[str, np.ndarray] = {
            k: state.pop(k) for k in ("projection", "threshold_values", "fine") if k in state
        }
        save_arrays(path, _FORMAT, _VERSION, state, arrays)

    @classmethod
    def load(cls, path: PathLike, centroids: np.ndarray) -> "HammingEmbedding":
        """Read a file written by :meth:`save`, for the vocabulary's ``centroids``
        (IndexFormatError when it is damaged or made for another vocabulary)."""
        hdr, arrays = load_arrays(path, _FORMAT, _VERSION)
        try:
            return cls.from_state({**hdr, **arrays}, centroids)
        except ValueError as e:
            raise IndexFormatError(f"{path}: invalid Hamming embedding ({e})") from None


def embedding_for(
    vocabulary: "Vocabulary", feats: Sequence["LocalFeatures"], asmk: "AsmkParams", seed: int
) -> Optional[HammingEmbedding]:
    """The Hamming embedding of an ASMK first stage (``None`` for TF-IDF): its projection
    drawn from ``seed``; per-word median thresholds (``he_thresholds="median"``) and the
    verification sub-cells (``verify_cells`` > 1) learned from a seeded sample of at most
    500 000 of the training images' descriptors ``feats``."""
    if asmk.first_stage != "asmk":
        return None
    bits = min(asmk.he_bits, vocabulary.dim)  # e.g. 64-d SURF: as many bits as dimensions
    if not asmk.learns_from_descriptors:
        return HammingEmbedding.fit(vocabulary.centroids, bits=bits, seed=seed)
    x = np.concatenate([f.descriptors for f in feats]) if len(feats) else np.zeros((0, vocabulary.dim), np.float32)
    if len(x) > 500_000:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), 500_000, replace=False))]
    return HammingEmbedding.fit(
        vocabulary.centroids,
        x,
        vocabulary.assign(x),
        bits=bits,
        thresholds=asmk.he_thresholds,
        seed=seed,
        cells=asmk.verify_cells,
    )
