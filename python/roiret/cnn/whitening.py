"""PCA-whitening of descriptors, learned without labels (the paper's 3.2.3).

``fit`` on an ``(N, D)`` matrix of descriptors (e.g. all database RoI descriptors):
``mean`` = the average row; the covariance ``C = (X − mean)ᵀ(X − mean) / N`` is
eigen-decomposed, ``C = V Λ Vᵀ`` (eigenvalues descending), and the projection is
``P = diag((λ_i + eps)^(-1/2)) V_iᵀ`` for the first ``dims`` components.
``transform(x) = l2normalize((x − mean) Pᵀ)``. With ``eps = 0`` the whitened training data
has exactly the identity covariance (before the L2 step).

Components whose eigenvalue is not above ``rank_tol · λ_max`` are numerically zero (dead
channels, fewer samples than dimensions) and are never kept: whitening them would only
amplify rounding noise. ``dims=None`` keeps all the others.

Computation is float64 NumPy; ``transform`` also accepts torch tensors (on any device)
and returns the same kind it was given.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from typing import TYPE_CHECKING, Any, Dict, Optional, Union, cast, overload

import numpy as np

from ..errors import NotTrainedError
from ..io import PathLike
from ..io.arrays import load_arrays, open_npz, save_arrays
from ..io.folder import as_format_error

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from numpy.typing import ArrayLike

__all__ = ["PCAWhitening", "l2_normalize"]

_FORMAT = "roiret.PCAWhitening"
#: 2: an array file of roiret.io.arrays (1: an .npz with a JSON "meta" entry, still read)
_VERSION = 2
#: the arrays of a fitted whitening (the rest of its state are settings)
_ARRAYS = ("mean", "projection", "eigenvalues")


@overload
def l2_normalize(x: torch.Tensor, eps: float = ...) -> torch.Tensor: ...
@overload
def l2_normalize(x: ArrayLike, eps: float = ...) -> np.ndarray: ...
def l2_normalize(x: Union[torch.Tensor, ArrayLike], eps: float = 1e-12) -> Union[torch.Tensor, np.ndarray]:
    """Rows divided by their L2 norm (rows of zeros stay zero). NumPy or torch."""
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return cast(torch.Tensor, x / x.norm(dim=-1, keepdim=True).clamp_min(eps))
    except ImportError:  # pragma: no cover
        pass
    x = np.asarray(x)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.asarray(x / np.maximum(n, eps))


def _as_2d_float(x: ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (N, D) array, got shape {a.shape}")
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected numbers, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or infinity")
    return a


class PCAWhitening:
    """Unsupervised PCA-whitening + L2 normalisation.

    Parameters
    ----------
    dims:
        Output dimensionality (``None``: every non-degenerate component).
    eps:
        Added to the eigenvalues before the inverse square root (regularisation; 0 =
        exact whitening).
    rank_tol:
        Components with eigenvalue ≤ ``rank_tol · λ_max`` are dropped.
    normalize:
        L2-normalise the output of :meth:`transform` (the paper's pipeline).

    Thread safety: ``transform`` only reads; ``fit`` / ``load_state`` must not run
    concurrently with anything else on the same object.
    """

    def __init__(self, dims: Optional[int] = None, eps: float = 0.0, rank_tol: float = 1e-9, normalize: bool = True):
        if dims is not None and (isinstance(dims, bool) or int(dims) < 1):
            raise ValueError(f"dims must be a positive int or None, got {dims!r}")
        if not float(eps) >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.dims = None if dims is None else int(dims)
        self.eps = float(eps)
        self.rank_tol = float(rank_tol)
        self.normalize = bool(normalize)
        self.mean_: Optional[np.ndarray] = None  # (D,)
        self.projection_: Optional[np.ndarray] = None  # (dims, D)
        self.eigenvalues_: Optional[np.ndarray] = None  # (dims,)
        self.n_samples_: int = 0

    # -- learning --------------------------------------------------------------------
    def fit(self, x: Union[torch.Tensor, ArrayLike]) -> "PCAWhitening":
        """Learn mean and projection from ``(N, D)`` descriptors (no labels)."""
        a = _as_2d_float(_to_numpy(x), "x")
        n, d = a.shape
        if n < 2:
            raise ValueError(f"fit needs at least 2 descriptors, got {n}")
        mean = a.mean(axis=0)
        c = a - mean
        cov = (c.T @ c) / n
        lam, vec = np.linalg.eigh(cov)  # ascending
        order = np.argsort(lam)[::-1]
        lam, vec = lam[order], vec[:, order]
        lam_max = max(float(lam[0]), 0.0)
        rank = int(np.sum(lam > self.rank_tol * lam_max)) if lam_max > 0 else 0
        if rank == 0:
            raise ValueError("fit: the descriptors have no variance")
        keep = rank if self.dims is None else min(self.dims, rank)
        if self.dims is not None and self.dims > rank:
            warnings.warn(
                f"PCAWhitening: dims={self.dims} requested but the data has only {rank} "
                f"non-degenerate components ({n} samples, {d} dims); keeping {rank}",
                RuntimeWarning,
                stacklevel=2,
            )
        lam, vec = lam[:keep], vec[:, :keep]
        self.mean_ = mean
        self.eigenvalues_ = lam
        self.projection_ = (vec / np.sqrt(lam + self.eps)).T.copy()  # (keep, D)
        self.n_samples_ = n
        return self

    @property
    def fitted(self) -> bool:
        return self.projection_ is not None

    @property
    def in_dim(self) -> int:
        self._check_fitted()
        assert self.projection_ is not None  # _check_fitted raised otherwise
        return int(self.projection_.shape[1])

    @property
    def out_dim(self) -> int:
        self._check_fitted()
        assert self.projection_ is not None  # _check_fitted raised otherwise
        return int(self.projection_.shape[0])

    def _check_fitted(self) -> None:
        if self.projection_ is None:
            raise NotTrainedError("PCAWhitening", "call fit() or load() first")

    # -- applying --------------------------------------------------------------------
    @overload
    def transform(self, x: torch.Tensor, normalize: Optional[bool] = ...) -> torch.Tensor: ...
    @overload
    def transform(self, x: ArrayLike, normalize: Optional[bool] = ...) -> np.ndarray: ...
    def transform(
        self, x: Union[torch.Tensor, ArrayLike], normalize: Optional[bool] = None
    ) -> Union[torch.Tensor, np.ndarray]:
        """Whiten ``(N, D)`` descriptors → ``(N, out_dim)`` (then L2 unless
        ``normalize=False``). NumPy in → float32 NumPy out; torch in → float32 torch out
        on the same device."""
        self._check_fitted()
        norm = self.normalize if normalize is None else bool(normalize)
        try:
            import torch
        except ImportError:  # pragma: no cover
            torch = None  # type: ignore[assignment]  # torch is optional: NumPy input needs no torch
        if torch is not None and isinstance(x, torch.Tensor):
            if x.dim() != 2 or x.shape[1] != self.in_dim:
                raise ValueError(f"x: expected (N, {self.in_dim}), got {tuple(x.shape)}")
            dt = torch.float64 if x.device.type == "cpu" else torch.float32
            m = torch.as_tensor(self.mean_, dtype=dt, device=x.device)
            p = torch.as_tensor(self.projection_, dtype=dt, device=x.device)
            y = (x.to(dt) - m) @ p.T
            if norm:
                y = l2_normalize(y)
            return y.float()
        a = _as_2d_float(x, "x")
        if a.shape[1] != self.in_dim:
            raise ValueError(f"x: expected (N, {self.in_dim}), got {a.shape}")
        assert self.projection_ is not None  # _check_fitted raised otherwise
        y = (a - self.mean_) @ self.projection_.T
        if norm:
            y = l2_normalize(y)
        return np.ascontiguousarray(y, dtype=np.float32)

    __call__ = transform

    # -- persistence -----------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        self._check_fitted()
        assert self.projection_ is not None  # _check_fitted raised otherwise
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "dims": self.dims,
            "eps": self.eps,
            "rank_tol": self.rank_tol,
            "normalize": self.normalize,
            "n_samples": self.n_samples_,
            # mean_ / eigenvalues_ are set together with projection_ (fit, from_state)
            "mean": cast(np.ndarray, self.mean_).copy(),
            "projection": self.projection_.copy(),
            "eigenvalues": cast(np.ndarray, self.eigenvalues_).copy(),
        }

    @classmethod
    def from_state(cls, state: Dict[str, Any]) -> "PCAWhitening":
        if state.get("format") != _FORMAT:
            raise ValueError(f"not a PCAWhitening state (format={state.get('format')!r})")
        if int(state.get("version", -1)) > _VERSION:
            raise ValueError(
                f"PCAWhitening state version {state['version']} is newer than this roiret reads ({_VERSION})"
            )
        w = cls(dims=state["dims"], eps=state["eps"], rank_tol=state["rank_tol"], normalize=state["normalize"])
        mean = np.asarray(state["mean"], dtype=np.float64)
        proj = np.asarray(state["projection"], dtype=np.float64)
        lam = np.asarray(state["eigenvalues"], dtype=np.float64)
        if mean.ndim != 1 or proj.ndim != 2 or proj.shape[1] != mean.shape[0] or lam.shape != (proj.shape[0],):
            raise ValueError(
                f"inconsistent PCAWhitening state: mean {mean.shape}, projection {proj.shape}, eigenvalues {lam.shape}"
            )
        w.mean_, w.projection_, w.eigenvalues_ = mean, proj, lam
        w.n_samples_ = int(state.get("n_samples", 0))
        return w

    def save(self, path: PathLike) -> None:
        """Write to ``path``: an array file of :mod:`roiret.io.arrays` (``.npz`` without
        pickles, a JSON header with the settings, a SHA-256 per array; written to a
        temporary file, fsync'ed and renamed into place)."""
        st = self.state_dict()
        arrays = {k: st.pop(k) for k in _ARRAYS}
        save_arrays(path, st.pop("format"), st.pop("version"), st, arrays)

    @classmethod
    def load(cls, path: PathLike) -> "PCAWhitening":
        """Read a file written by :meth:`save` — or by roiret before it wrote array files
        (version 1: a JSON ``meta`` entry beside the arrays, no checksums). No pickle is
        loaded. FileNotFoundError for a missing file;
        :class:`~roiret.errors.IndexFormatError` (a ValueError) for one that is damaged,
        of another kind or of a newer version."""
        if _is_version_1(path):
            return cls._load_version_1(path)
        hdr, arrays = load_arrays(path, _FORMAT, _VERSION)
        with as_format_error(path, "invalid PCAWhitening file"):
            return cls.from_state({**hdr, **arrays})

    @classmethod
    def _load_version_1(cls, path: PathLike) -> "PCAWhitening":
        with as_format_error(path, "not a PCAWhitening file"):
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                state = dict(meta, **{k: z[k] for k in _ARRAYS})
            return cls.from_state(state)

    def __repr__(self) -> str:
        if not self.fitted:
            return f"PCAWhitening(dims={self.dims}, eps={self.eps}, not fitted)"
        return f"PCAWhitening({self.in_dim} -> {self.out_dim}, eps={self.eps}, n_samples={self.n_samples_})"


def _is_version_1(path: PathLike) -> bool:
    """Whether ``path`` is a whitening file of version 1 (a ``meta`` entry and no array-file
    header); anything unreadable is left to the reader of the current version to report."""
    try:
        with open_npz(path) as z:
            return "meta" in z.files and "__header__" not in z.files
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False


def _to_numpy(x: Union[torch.Tensor, ArrayLike]) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().to("cpu", torch.float64).numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(x)
