"""RoI storage: per-image RoI codes and boxes in CSR form, growable, memory-mappable.

Image ``i`` (in insertion order) owns rows ``offsets[i]:offsets[i + 1]`` of ``codes``
(``uint64 (R, words)``), ``boxes`` (``float32 (R, 4)``, pixels of the original image) and
``scores`` (``float32 (R,)``). Each image also has an int64 ``id``, a ``name`` (the path it
came from, or a caller-given label), its ``size`` (width, height) and its ``global_code``
(the whole-image "baseline" region).

Arrays grow by doubling, so adding in batches is amortised O(1) per RoI. A store loaded
from disk is memory-mapped read-only; the first change copies it into memory.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import IndexFormatError, UnknownIdError

__all__ = ["RoIStore"]


def check_arrays(
    arrays: Dict[str, np.ndarray],
    expect: Dict[str, Tuple[Any, Tuple[Optional[int], ...]]],
    bad: Callable[[str], Exception],
) -> None:
    """Raise ``bad(message)`` unless every ``arrays[key]`` has the dtype and shape of
    ``expect[key] = (dtype, shape)`` (``None`` in a shape: any length)."""
    for key, (dt, shape) in expect.items():
        arr = arrays[key]
        if arr.dtype != dt or arr.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, arr.shape)):
            raise bad(f"array {key!r} is {arr.dtype} {arr.shape}, expected {np.dtype(dt)} {shape}")


class _Growable:
    """A numpy array with a logical length and doubling capacity along axis 0."""

    def __init__(self, shape_tail: Tuple[int, ...], dtype: Any, data: Optional[np.ndarray] = None):
        self.tail = tuple(shape_tail)
        self.dtype = np.dtype(dtype)
        if data is None:
            self.buf = np.zeros((0,) + self.tail, self.dtype)
            self.n = 0
        else:
            self.buf = data
            self.n = len(data)

    def extend(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=self.dtype).reshape((-1,) + self.tail)
        need = self.n + len(rows)
        if need > len(self.buf) or not self.buf.flags.writeable:
            cap = max(need, 2 * len(self.buf), 16)
            new = np.zeros((cap,) + self.tail, self.dtype)
            new[: self.n] = self.buf[: self.n]
            self.buf = new
        self.buf[self.n : need] = rows
        self.n = need

    def view(self) -> np.ndarray:
        return self.buf[: self.n]

    def replace(self, data: np.ndarray) -> None:
        self.buf = np.ascontiguousarray(data, dtype=self.dtype)
        self.n = len(self.buf)


class RoIStore:
    """Per-image RoI codes, boxes and scores (see the module docstring)."""

    FILES = ("codes", "boxes", "scores", "offsets", "ids", "sizes", "global_codes", "names")

    def __init__(self, words: int):
        if int(words) < 1:
            raise ValueError(f"words must be >= 1, got {words}")
        self.words = int(words)
        self._codes = _Growable((self.words,), np.uint64)
        self._boxes = _Growable((4,), np.float32)
        self._scores = _Growable((), np.float32)
        self._offsets = _Growable((), np.int64)
        self._offsets.extend(np.zeros(1, np.int64))
        self._ids = _Growable((), np.int64)
        self._sizes = _Growable((2,), np.int32)
        self._global = _Growable((self.words,), np.uint64)
        self._names: List[str] = []
        self._index: Optional[Dict[int, int]] = None

    # -- access ------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._ids.n

    @property
    def codes(self) -> np.ndarray:
        return self._codes.view()

    @property
    def boxes(self) -> np.ndarray:
        return self._boxes.view()

    @property
    def scores(self) -> np.ndarray:
        return self._scores.view()

    @property
    def offsets(self) -> np.ndarray:
        return self._offsets.view()

    @property
    def ids(self) -> np.ndarray:
        return self._ids.view()

    @property
    def sizes(self) -> np.ndarray:
        return self._sizes.view()

    @property
    def global_codes(self) -> np.ndarray:
        return self._global.view()

    @property
    def names(self) -> List[str]:
        return self._names

    @property
    def num_rois(self) -> int:
        return self._codes.n

    def nbytes(self) -> int:
        return sum(
            a.nbytes
            for a in (self.codes, self.boxes, self.scores, self.offsets, self.ids, self.sizes, self.global_codes)
        )

    def capacity_bytes(self) -> int:
        """Bytes held by the arrays including the spare capacity of the doubling arrays
        (:meth:`nbytes` counts only the used part; names and the id index are not counted)."""
        return sum(
            g.buf.nbytes
            for g in (self._codes, self._boxes, self._scores, self._offsets, self._ids, self._sizes, self._global)
        )

    def _id_index(self) -> Dict[int, int]:
        if self._index is None:
            self._index = {int(i): k for k, i in enumerate(self.ids)}
        return self._index

    def indices_of(self, ids: Iterable[int]) -> np.ndarray:
        """Row indices of image ids (KeyError naming the first unknown id)."""
        index = self._id_index()
        out = []
        for i in ids:
            try:
                out.append(index[int(i)])
            except KeyError:
                raise UnknownIdError(f"image id {int(i)} is not in the index") from None
        return np.asarray(out, dtype=np.int64)

    def __contains__(self, image_id: int) -> bool:
        return int(image_id) in self._id_index()

    def rois_of(self, index: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(codes, boxes, scores) of the image at row ``index``."""
        a, b = self.offsets[index], self.offsets[index + 1]
        return self.codes[a:b], self.boxes[a:b], self.scores[a:b]

    # -- changes -----------------------------------------------------------------------
    def add(
        self,
        image_id: int,
        codes: np.ndarray,
        boxes: np.ndarray,
        scores: np.ndarray,
        global_code: np.ndarray,
        size: Sequence[int],
        name: str = "",
    ) -> None:
        """Append one image. ``codes`` (r, words) uint64, ``boxes`` (r, 4), ``scores`` (r,)."""
        image_id = int(image_id)
        if image_id in self._id_index():
            raise ValueError(f"image id {image_id} is already in the index")
        codes = np.asarray(codes)
        if codes.dtype != np.uint64 or codes.ndim != 2 or codes.shape[1] != self.words:
            raise ValueError(f"codes: expected uint64 (r, {self.words}), got {codes.dtype} {codes.shape}")
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        scores = np.asarray(scores, np.float32).reshape(-1)
        if not (len(boxes) == len(scores) == len(codes)):
            raise ValueError(f"{len(codes)} codes, {len(boxes)} boxes and {len(scores)} scores differ")
        self._codes.extend(codes)
        self._boxes.extend(boxes)
        self._scores.extend(scores)
        self._offsets.extend(np.array([self._codes.n], np.int64))
        self._ids.extend(np.array([image_id], np.int64))
        self._sizes.extend(np.asarray(size, np.int32).reshape(1, 2))
        self._global.extend(np.asarray(global_code, np.uint64).reshape(1, self.words))
        self._names.append(str(name))
        self._id_index()[image_id] = len(self) - 1

    def truncated(self, K: int) -> "RoIStore":
        """A copy keeping the first ``K`` RoIs of every image (RoIs are stored in selection
        order, so this equals selecting with that K)."""
        out = RoIStore(self.words)
        counts = np.minimum(np.diff(self.offsets), int(K))
        rows = np.concatenate(
            [np.arange(a, a + c) for a, c in zip(self.offsets[:-1], counts)] or [np.zeros(0, np.int64)]
        ).astype(np.int64)
        out._codes.replace(self.codes[rows])
        out._boxes.replace(self.boxes[rows])
        out._scores.replace(self.scores[rows])
        out._offsets.replace(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        out._ids.replace(self.ids.copy())
        out._sizes.replace(self.sizes.copy())
        out._global.replace(self.global_codes.copy())
        out._names = list(self._names)
        return out

    def remove(self, ids: Iterable[int]) -> int:
        """Remove images by id (all or nothing). Returns the number removed."""
        rows = set(self.indices_of(ids).tolist())
        if not rows:
            return 0
        keep = np.array([i for i in range(len(self)) if i not in rows], np.int64)
        counts = np.diff(self.offsets)[keep]
        starts = self.offsets[keep]
        sel = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts)] or [np.zeros(0, np.int64)])
        sel = sel.astype(np.int64)
        self._codes.replace(self.codes[sel])
        self._boxes.replace(self.boxes[sel])
        self._scores.replace(self.scores[sel])
        self._offsets.replace(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        self._ids.replace(self.ids[keep])
        self._sizes.replace(self.sizes[keep])
        self._global.replace(self.global_codes[keep])
        self._names = [self._names[i] for i in keep]
        self._index = None
        return len(rows)

    # -- persistence -------------------------------------------------------------------
    def state_dict(self) -> Dict[str, np.ndarray]:
        """The arrays that make up the store (saved as .npy files; no object arrays)."""
        names = np.array(self._names, dtype=np.str_) if self._names else np.zeros(0, "<U1")
        return {
            "codes": np.ascontiguousarray(self.codes),
            "boxes": np.ascontiguousarray(self.boxes),
            "scores": np.ascontiguousarray(self.scores),
            "offsets": np.ascontiguousarray(self.offsets),
            "ids": np.ascontiguousarray(self.ids),
            "sizes": np.ascontiguousarray(self.sizes),
            "global_codes": np.ascontiguousarray(self.global_codes),
            "names": names,
        }

    @classmethod
    def from_state(cls, words: int, state: Dict[str, np.ndarray], where: str = "") -> "RoIStore":
        """Build from :meth:`state_dict` arrays (possibly memory-mapped), checking their
        consistency (IndexFormatError naming ``where``)."""

        def bad(msg: str) -> IndexFormatError:
            return IndexFormatError(f"{where}: {msg}" if where else msg)

        a = state
        n = len(a["ids"])
        expect = {
            "codes": (np.uint64, (None, words)),
            "boxes": (np.float32, (None, 4)),
            "scores": (np.float32, (None,)),
            "offsets": (np.int64, (n + 1,)),
            "ids": (np.int64, (n,)),
            "sizes": (np.int32, (n, 2)),
            "global_codes": (np.uint64, (n, words)),
        }
        check_arrays(a, expect, bad)
        R = len(a["codes"])
        off = a["offsets"]
        if off[0] != 0 or off[-1] != R or (np.diff(off) < 0).any():
            raise bad("RoI offsets are inconsistent with the number of RoIs")
        if len(a["boxes"]) != R or len(a["scores"]) != R:
            raise bad("codes, boxes and scores have different lengths")
        if len(np.unique(a["ids"])) != n:
            raise bad("image ids are not unique")
        names = a["names"]
        if names.dtype.kind != "U" or len(names) not in (0, n):
            raise bad(f"array 'names' is {names.dtype} {names.shape}, expected {n} strings")
        out = cls(words)
        out._codes = _Growable((words,), np.uint64, a["codes"])
        out._boxes = _Growable((4,), np.float32, a["boxes"])
        out._scores = _Growable((), np.float32, a["scores"])
        out._offsets = _Growable((), np.int64, off)
        out._ids = _Growable((), np.int64, a["ids"])
        out._sizes = _Growable((2,), np.int32, a["sizes"])
        out._global = _Growable((words,), np.uint64, a["global_codes"])
        out._names = [str(s) for s in names] if len(names) else [""] * n
        return out
