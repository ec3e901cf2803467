"""RoI descriptors → the binary codes that are indexed and cross-matched.

Two kinds (:class:`~roiret.params.CodeParams`):

* ``code_bits=None`` — the paper's codes, made by the extractor: bit i = f_i > mean(f), as
  many bits as descriptor dimensions (:attr:`RoIResult.codes`).
* ``code_bits=b`` — ``b`` bits from a fixed random projection: the L2-normalised descriptor
  times a seeded Gaussian ``(dim, b)`` matrix, then the sign (random hyperplanes: the
  Hamming distance of two codes estimates the angle between the descriptors).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional, Tuple, cast

import numpy as np

from ..errors import IndexFormatError
from ..params import CodeParams

if TYPE_CHECKING:  # pragma: no cover
    from .extractor import RoIResult

__all__ = ["CodeProjector"]


class CodeProjector:
    """Makes the codes of :class:`~roiret.params.CodeParams` from ``dim``-dimensional
    descriptors. State: the projection matrix (:meth:`state_dict` / :meth:`from_state`);
    the seeded matrix is rebuilt identically from ``params``, but a saved index keeps the
    one it was built with."""

    def __init__(self, dim: int, params: CodeParams, projection: Optional[np.ndarray] = None):
        self.dim, self.params = int(dim), params
        if params.code_bits is None:
            if projection is not None:
                raise ValueError("a projection was given for the paper's codes (code_bits=None)")
            self.projection: Optional[np.ndarray] = None
        elif projection is None:
            rng = np.random.default_rng(params.seed)
            self.projection = rng.standard_normal((self.dim, params.code_bits)).astype(np.float32)
        else:
            if (
                projection.dtype != np.float32
                or projection.shape != (self.dim, params.code_bits)
                or not np.isfinite(projection).all()
            ):
                raise ValueError(
                    f"expected a finite float32 ({self.dim}, {params.code_bits}) projection, "
                    f"got {projection.dtype} {projection.shape}"
                )
            self.projection = np.ascontiguousarray(projection)

    @property
    def nbits(self) -> int:
        """Bits per code: ``code_bits``, or the descriptor dimension (the paper)."""
        return self.dim if self.params.code_bits is None else self.params.code_bits

    @property
    def words(self) -> int:
        """64-bit words per code."""
        return (self.nbits + 63) // 64

    def __call__(self, r: "RoIResult") -> Tuple[np.ndarray, np.ndarray]:
        """(RoI codes ``(r, words)``, global code ``(words,)``) of one extraction result."""
        # indexed results are made with_global, so their global_code / global_descriptor are set
        if self.projection is None:
            return r.codes, cast(np.ndarray, r.global_code)
        from .._kernels import pack_codes

        x = np.concatenate([r.descriptors, cast(np.ndarray, r.global_descriptor).reshape(1, -1)], 0) @ self.projection
        codes = pack_codes(np.ascontiguousarray(x, dtype=np.float32))
        return codes[:-1], codes[-1]

    def state_dict(self) -> Dict[str, np.ndarray]:
        """The arrays to save (none for the paper's codes)."""
        return {} if self.projection is None else {"projection": self.projection}

    @classmethod
    def from_state(cls, dim: int, params: CodeParams, state: Dict[str, np.ndarray]) -> "CodeProjector":
        """Rebuild from :meth:`state_dict` (IndexFormatError when it does not fit)."""
        if params.code_bits is not None and "projection" not in state:
            raise IndexFormatError(f"no projection for {params.code_bits}-bit codes")
        try:
            return cls(dim, params, state.get("projection"))
        except ValueError as e:
            raise IndexFormatError(str(e)) from None

    def __repr__(self) -> str:
        kind = "the paper's (f > mean f)" if self.projection is None else "seeded random projection"
        return f"CodeProjector({self.dim} -> {self.nbits} bits, {kind})"
