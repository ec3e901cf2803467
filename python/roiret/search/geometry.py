"""The geometry of every indexed image's local features, for spatial verification.

Per feature, 10 bytes: its visual word (``uint32``), its position (``uint16`` x and y, in
units of 1/65535 of the image's longest side ``L``), its scale (``uint8``, 16 steps per
octave: ``size = 2 ** (q / 16 - 2)`` pixels, 0.25 … 15 000 px, ±2.2 %) and its orientation
(``uint8``, 256 steps per turn, ±0.7°). Positions and sizes are in pixels of the image as
it was given (before any ``max_side`` shrink), like every box roiret reports.

Image ``i`` (in the order of the :class:`~roiret.search.store.RoIStore`, row for row) owns
features ``offsets[i]:offsets[i + 1]``, sorted by word so that the native verifier
(:func:`roiret._kernels.spatial_verify`) matches a query against it by a merge join. Arrays
grow by doubling; a store loaded from disk is memory-mapped read-only, the first change
copies it into memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Tuple

import numpy as np

from ..errors import IndexFormatError
from .store import _Growable, check_arrays

__all__ = ["FeatureGeometry", "GeometryStore", "dequantize", "quantize"]

#: bytes stored per local feature
BYTES_PER_FEATURE = 10
_XY_STEPS = 65535.0
_SCALE_STEPS_PER_OCTAVE = 16.0
_SCALE_OFFSET = 2.0  # octaves below 1 px


@dataclass(frozen=True)
class FeatureGeometry:
    """Local features of one image as the verifier needs them: ``words`` (uint32), ``xy``
    (float32 (n, 2), pixels), ``sizes`` (float32, diameters in pixels) and ``angles``
    (float32, degrees, OpenCV's convention)."""

    words: np.ndarray
    xy: np.ndarray
    sizes: np.ndarray
    angles: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.words)
        if self.xy.shape != (n, 2) or self.sizes.shape != (n,) or self.angles.shape != (n,):
            raise ValueError(
                f"geometry: {n} words but xy {self.xy.shape}, sizes {self.sizes.shape}, angles {self.angles.shape}"
            )

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def empty(cls) -> "FeatureGeometry":
        z = np.zeros(0, np.float32)
        return cls(np.zeros(0, np.uint32), np.zeros((0, 2), np.float32), z, z.copy())

    def scaled(self, factor: float) -> "FeatureGeometry":
        """Positions and sizes multiplied by ``factor`` (pixels of a resized image; OpenCV's
        pixel centres are at integer coordinates in both)."""
        if factor == 1.0:
            return self
        xy = ((self.xy.astype(np.float64) + 0.5) * factor - 0.5).astype(np.float32)
        return FeatureGeometry(self.words, xy, (self.sizes * factor).astype(np.float32), self.angles)


def quantize(geometry: FeatureGeometry, side: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(words, xy, scales, angles)`` as stored (uint32, uint16 (n, 2), uint8, uint8),
    sorted by word (ties keep their order), for an image whose longest side is ``side``
    pixels."""
    if not side > 0:
        raise ValueError(f"side must be > 0, got {side}")
    order = np.argsort(geometry.words, kind="stable")
    xy = np.clip(np.rint(geometry.xy[order].astype(np.float64) / side * _XY_STEPS), 0, _XY_STEPS)
    sizes = np.maximum(geometry.sizes[order].astype(np.float64), 1e-6)
    q_scale = np.clip(np.rint((np.log2(sizes) + _SCALE_OFFSET) * _SCALE_STEPS_PER_OCTAVE), 0, 255)
    q_angle = np.mod(np.rint(geometry.angles[order].astype(np.float64) * (256.0 / 360.0)), 256)
    return (
        geometry.words[order].astype(np.uint32),
        xy.astype(np.uint16),
        q_scale.astype(np.uint8),
        q_angle.astype(np.uint8),
    )


def dequantize(
    words: np.ndarray, xy: np.ndarray, scales: np.ndarray, angles: np.ndarray, side: float
) -> FeatureGeometry:
    """The inverse of :func:`quantize` (to its precision)."""
    return FeatureGeometry(
        np.asarray(words, np.uint32),
        (np.asarray(xy, np.float64) / _XY_STEPS * side).astype(np.float32),
        np.exp2(np.asarray(scales, np.float64) / _SCALE_STEPS_PER_OCTAVE - _SCALE_OFFSET).astype(np.float32),
        (np.asarray(angles, np.float64) * (360.0 / 256.0)).astype(np.float32),
    )


class GeometryStore:
    """The quantised local-feature geometry of the indexed images, row for row with the
    :class:`~roiret.search.store.RoIStore` (see the module docstring)."""

    FILES = ("words", "xy", "scales", "angles", "offsets", "sides")

    def __init__(self) -> None:
        self._words = _Growable((), np.uint32)
        self._xy = _Growable((2,), np.uint16)
        self._scales = _Growable((), np.uint8)
        self._angles = _Growable((), np.uint8)
        self._offsets = _Growable((), np.int64)
        self._offsets.extend(np.zeros(1, np.int64))
        self._sides = _Growable((), np.float32)

    def __len__(self) -> int:
        return self._sides.n

    @property
    def num_features(self) -> int:
        return self._words.n

    def arrays(self) -> Dict[str, np.ndarray]:
        """The stored arrays (views), by name: what the verifier and :meth:`state_dict` use."""
        return {
            "words": self._words.view(),
            "xy": self._xy.view(),
            "scales": self._scales.view(),
            "angles": self._angles.view(),
            "offsets": self._offsets.view(),
            "sides": self._sides.view(),
        }

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays().values())

    def features_of(self, row: int) -> FeatureGeometry:
        """The (dequantised) features of the image at ``row``."""
        a = self.arrays()
        lo, hi = int(a["offsets"][row]), int(a["offsets"][row + 1])
        return dequantize(a["words"][lo:hi], a["xy"][lo:hi], a["scales"][lo:hi], a["angles"][lo:hi], a["sides"][row])

    def words_of(self, row: int) -> np.ndarray:
        """The visual words of the image at ``row`` (sorted, with repeats)."""
        a = self.arrays()
        return a["words"][int(a["offsets"][row]) : int(a["offsets"][row + 1])]

    def add(self, geometry: FeatureGeometry, size: Tuple[int, int]) -> None:
        """Append one image's features; ``size`` = (width, height) of the image as given."""
        side = float(max(size))
        words, xy, scales, angles = quantize(geometry, side)
        self._words.extend(words)
        self._xy.extend(xy)
        self._scales.extend(scales)
        self._angles.extend(angles)
        self._offsets.extend(np.array([self._words.n], np.int64))
        self._sides.extend(np.array([side], np.float32))

    def keep_rows(self, keep: np.ndarray) -> None:
        """Keep only the images at rows ``keep`` (sorted), in that order."""
        a = self.arrays()
        off = a["offsets"]
        counts = np.diff(off)[keep]
        sel = np.concatenate([np.arange(off[r], off[r] + c) for r, c in zip(keep, counts)] or [np.zeros(0, np.int64)])
        sel = sel.astype(np.int64)
        self._words.replace(a["words"][sel])
        self._xy.replace(a["xy"][sel])
        self._scales.replace(a["scales"][sel])
        self._angles.replace(a["angles"][sel])
        self._offsets.replace(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        self._sides.replace(a["sides"][keep])

    def remove_rows(self, rows: Iterable[int]) -> None:
        drop = set(int(r) for r in rows)
        self.keep_rows(np.array([i for i in range(len(self)) if i not in drop], np.int64))

    # -- persistence -----------------------------------------------------------------------
    def state_dict(self) -> Dict[str, np.ndarray]:
        return {k: np.ascontiguousarray(v) for k, v in self.arrays().items()}

    @classmethod
    def from_state(cls, state: Dict[str, np.ndarray], images: int, where: str = "") -> "GeometryStore":
        """Build from :meth:`state_dict` arrays (possibly memory-mapped), checking them
        (IndexFormatError naming ``where``)."""

        def bad(msg: str) -> IndexFormatError:
            return IndexFormatError(f"{where}: geometry: {msg}" if where else f"geometry: {msg}")

        expect = {
            "words": (np.uint32, (None,)),
            "xy": (np.uint16, (None, 2)),
            "scales": (np.uint8, (None,)),
            "angles": (np.uint8, (None,)),
            "offsets": (np.int64, (images + 1,)),
            "sides": (np.float32, (images,)),
        }
        check_arrays(state, expect, bad)
        n = len(state["words"])
        off = state["offsets"]
        if off[0] != 0 or off[-1] != n or (np.diff(off) < 0).any():
            raise bad("offsets are inconsistent with the number of features")
        if any(len(state[k]) != n for k in ("xy", "scales", "angles")):
            raise bad("words, xy, scales and angles have different lengths")
        sides = state["sides"]
        if images and not (np.isfinite(sides).all() and (sides > 0).all()):
            raise bad("image sides must be finite and > 0")
        words = state["words"]
        if n > 1:
            dw = np.diff(words.astype(np.int64))
            dw[off[1:-1][(off[1:-1] > 0) & (off[1:-1] < n)] - 1] = 0  # image boundaries may go down
            if (dw < 0).any():
                raise bad("features are not sorted by word within an image")
        out = cls()
        out._words = _Growable((), np.uint32, words)
        out._xy = _Growable((2,), np.uint16, state["xy"])
        out._scales = _Growable((), np.uint8, state["scales"])
        out._angles = _Growable((), np.uint8, state["angles"])
        out._offsets = _Growable((), np.int64, off)
        out._sides = _Growable((), np.float32, sides)
        return out
