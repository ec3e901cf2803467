"""Public, documented wrappers of the native kernels in :mod:`roiret._core`.

Binary codes
------------
A code of ``nbits`` bits is stored as ``words = ceil(nbits / 64)`` little-endian ``uint64``
words; **bit i of the code is bit ``i % 64`` of word ``i // 64``** (least significant bit
first). This is exactly ``np.packbits(bits, bitorder="little")`` viewed as ``uint64`` on a
little-endian machine, and :func:`unpack_codes` inverts it. Code matrices are C-contiguous
``uint64`` arrays of shape ``(n, words)``. Bits at positions ``>= nbits`` are ignored by every
distance. Similarity of two codes is ``1 - Hamming / nbits``.

Threads and the GIL
-------------------
Every kernel releases the GIL while it runs. ``threads=None`` uses
:func:`get_num_threads` (all cores unless :func:`set_num_threads` said otherwise).

Inverted files
--------------
:class:`InvertedFile` scores bags of words by TF-IDF; :class:`EmbeddedInvertedFile` keeps a
binary signature per (image, word) and scores with the selective match kernel (ASMK*). Both
are native classes documented in their docstrings; searches release the GIL.

Mapped files
------------
:func:`map_npy` maps a ``.npy`` file read-only without keeping a file descriptor open
(:class:`roiret._core.MappedFile`): the saved arrays of an index cost a process no entry
of its descriptor table, so it can hold thousands of shards under the default limit.

SIMD
----
Kernels exist for several instruction sets and the best one this CPU supports is chosen at
import (:func:`simd_level`). :func:`set_simd_level` or the environment variable
``ROIRET_SIMD=generic|popcnt|avx2|avx512`` lower it, e.g. to test the portable path.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from typing import Any, NamedTuple, Optional, Tuple

import numpy as np

from . import _core
from ._core import EmbeddedInvertedFile, InvertedFile

__all__ = [
    "CrossMatchResult",
    "EmbeddedInvertedFile",
    "InvertedFile",
    "VerifyResult",
    "cross_match",
    "get_num_threads",
    "hamming_knn",
    "hamming_matrix",
    "map_npy",
    "pack_codes",
    "select_rois",
    "set_num_threads",
    "set_simd_level",
    "simd_level",
    "spatial_verify",
    "supported_simd_levels",
    "unpack_codes",
]

_env_level = os.environ.get("ROIRET_SIMD", "")
if _env_level and _env_level not in ("generic", "popcnt", "avx2", "avx512"):
    warnings.warn(
        f"ignoring ROIRET_SIMD={_env_level!r}: expected one of generic, popcnt, avx2, avx512",
        RuntimeWarning,
        stacklevel=2,
    )


def _threads(threads: Optional[int]) -> int:
    if threads is None:
        return 0
    if not isinstance(threads, (int, np.integer)) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    return int(threads)


# ----------------------------------------------------------------------------------------
# dispatch and threads
# ----------------------------------------------------------------------------------------
def simd_level() -> str:
    """Name of the kernels in use: ``'generic'``, ``'popcnt'``, ``'avx2'`` or ``'avx512'``."""
    return _core.simd_level()


def supported_simd_levels() -> list:
    """SIMD levels this CPU can run, lowest first."""
    return _core.supported_simd_levels()


def set_simd_level(level: str) -> str:
    """Force the kernels of ``level`` (only levels in :func:`supported_simd_levels`);
    returns the previous level. Meant for tests and benchmarks: results are identical at
    every level, only speed differs."""
    return _core.set_simd_level(level)


def get_num_threads() -> int:
    """Default number of threads used by the kernels."""
    return _core.get_num_threads()


def set_num_threads(n: Optional[int]) -> None:
    """Set the default number of kernel threads; ``None`` or ``0`` restores all cores."""
    _core.set_num_threads(0 if n is None else int(n))


# ----------------------------------------------------------------------------------------
# codes
# ----------------------------------------------------------------------------------------
def pack_codes(x: np.ndarray, *, threads: Optional[int] = None) -> np.ndarray:
    """Binarise descriptors into packed codes (the paper's eq. 2).

    Bit ``i`` of row ``r`` is ``x[r, i] > mean(x[r])``. The mean is computed in float64 with
    compensated summation and clamped to the row's range, so a constant row packs to zeros.

    Parameters
    ----------
    x : float32 or float64 array, shape (n, d), C-contiguous, finite.

    Returns
    -------
    uint64 array, shape (n, ceil(d / 64)); unused high bits of the last word are zero.
    """
    return _core.pack_codes(x, threads=_threads(threads))


def unpack_codes(codes: np.ndarray, nbits: int) -> np.ndarray:
    """Inverse of the packing: ``uint64 (n, words)`` → ``uint8 (n, nbits)`` of 0/1."""
    codes = np.asarray(codes)
    if codes.dtype != np.uint64 or codes.ndim != 2:
        raise TypeError(f"codes: expected a uint64 array of shape (n, words), got {codes.dtype} {codes.shape}")
    words = (int(nbits) + 63) // 64
    if nbits < 1 or codes.shape[1] != words:
        raise ValueError(f"nbits={nbits} needs {words} words per code, codes have {codes.shape[1]}")
    as_bytes = np.ascontiguousarray(codes).astype("<u8", copy=False).view(np.uint8)
    return np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :nbits]


def hamming_matrix(
    a: np.ndarray, b: np.ndarray, nbits: Optional[int] = None, *, threads: Optional[int] = None
) -> np.ndarray:
    """All pairwise Hamming distances, ``uint32 (len(a), len(b))``, over the first ``nbits``
    bits (default: every bit of the words)."""
    return _core.hamming_matrix(a, b, nbits, threads=_threads(threads))


def hamming_knn(
    q: np.ndarray,
    db: np.ndarray,
    k: int,
    nbits: Optional[int] = None,
    *,
    threads: Optional[int] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest database codes of each query.

    Returns ``(distances uint32 (nq, k), indices int64 (nq, k))`` sorted by ascending
    distance, ties by lower database index. When the database holds fewer than ``k`` codes
    the rows are padded with distance ``2**32 - 1`` and index ``-1`` (as faiss does).
    """
    return _core.hamming_knn(q, db, int(k) if not isinstance(k, bool) else k, nbits, threads=_threads(threads))


class CrossMatchResult(NamedTuple):
    """Result of :func:`cross_match`, one entry per evaluated image (and per query RoI for
    ``query_votes``)."""

    #: float32: max over RoI pairs of ``1 - Hamming / nbits``; ``-inf`` for an image with
    #: no RoIs (or no active query RoI).
    score: np.ndarray
    #: int64: the query RoI (row of ``q``) of the best pair, ``-1`` when none.
    best_query: np.ndarray
    #: int64: the database RoI (row of ``db``, not relative to the image) of the best pair.
    best_db: np.ndarray
    #: int64 (nq,): in how many evaluated images each query RoI formed the best pair — the
    #: paper's matching frequency, used to pick the top-k query RoIs.
    query_votes: np.ndarray


def cross_match(
    q: np.ndarray,
    db: np.ndarray,
    offsets: np.ndarray,
    nbits: int,
    query_mask: Optional[np.ndarray] = None,
    *,
    images: Optional[np.ndarray] = None,
    threads: Optional[int] = None,
) -> CrossMatchResult:
    """Cross-match a query image's RoI codes with many database images' RoI codes.

    Parameters
    ----------
    q : uint64 (nq, words)
        The query's RoI codes.
    db : uint64 (n, words)
        RoI codes of all images; image ``g`` owns rows ``offsets[g]:offsets[g + 1]``.
    offsets : int64 (n_images + 1,)
        Non-decreasing CSR offsets into ``db``.
    nbits : int
        Significant bits per code (``words == ceil(nbits / 64)``).
    query_mask : bool (nq,), optional
        Only these query RoIs take part (the fast strategy's top-k RoIs).
    images : int (m,), optional
        Evaluate only these image indices (results are in this order); default all.
    threads : int, optional
        Worker threads over images.

    Ties between pairs go to the lower database row, then the lower query row.
    """
    return CrossMatchResult(
        *_core.cross_match(q, db, offsets, nbits, query_mask, images=images, threads=_threads(threads))
    )


def select_rois(
    boxes: np.ndarray,
    scores: np.ndarray,
    image_sizes: np.ndarray,
    K: int,
    t_min: float,
    t_rate: float,
    t_iou: float = 0.95,
    *,
    threads: Optional[int] = None,
) -> np.ndarray:
    """Batched RoI selection (the paper's 3.2.2) for B images × D candidate boxes.

    A box ``(x1, y1, x2, y2)`` with ``w = x2 - x1``, ``h = y2 - y1`` is dropped when
    ``w <= 0`` or ``h <= 0``, when ``w * h / (width * height) < t_min`` (``T_min``) or when
    ``max(w, h) / min(w, h) > t_rate`` (``T_rate``). The others are visited by descending
    score (ties: lower index first) and kept while their IoU with every kept box is
    ``< t_iou`` (``T_IOU``), until ``K`` are kept. Geometry is computed in float64.

    Parameters
    ----------
    boxes : float32 (B, D, 4), scores : float32 (B, D), image_sizes : float32 (B, 2)
        Image sizes are ``(width, height)`` in the boxes' units. NaN is refused.

    Returns
    -------
    int64 (B, K): indices of the kept boxes in selection order, padded with -1.
    """
    return _core.select_rois(boxes, scores, image_sizes, K, t_min, t_rate, t_iou, threads=_threads(threads))


# ----------------------------------------------------------------------------------------
# spatial verification
# ----------------------------------------------------------------------------------------
class VerifyResult(NamedTuple):
    """Result of :func:`spatial_verify`, one entry per verified row."""

    #: int32 (R,): distinct query features among the final inlier correspondences.
    inliers: np.ndarray
    #: float64 (R, 2, 3): the model mapping query pixels to database-image pixels,
    #: ``[u, v] = A[:, :2] @ [x, y] + A[:, 2]``; NaN when ``inliers == 0``.
    affine: np.ndarray
    #: float32 (R, 4): ``(x1, y1, x2, y2)`` bounding box of the inlier query points.
    query_boxes: np.ndarray
    #: float32 (R, 4): the same for the inlier database points (dequantised pixels).
    db_boxes: np.ndarray
    #: int32 (R,): M, the tentative correspondences the hypotheses were drawn from (step 1;
    #: at most ``max_correspondences``) — what the chance of a random agreement grows with
    #: (:func:`roiret.search.verify.required_inliers`).
    correspondences: np.ndarray


def _c_aligned(a: Any) -> Any:
    """C-contiguous and aligned, same dtype (a copy only when needed); others unchanged."""
    return np.require(a, requirements=["C", "A"]) if isinstance(a, np.ndarray) else a


def spatial_verify(
    query_words: np.ndarray,
    query_xy: np.ndarray,
    query_sizes: np.ndarray,
    query_angles: np.ndarray,
    db_words: np.ndarray,
    db_xy: np.ndarray,
    db_scales: np.ndarray,
    db_angles: np.ndarray,
    db_offsets: np.ndarray,
    db_sides: np.ndarray,
    rows: np.ndarray,
    *,
    max_per_word: int = 2,
    max_correspondences: int = 1000,
    inlier_threshold: float = 0.03,
    scale_tolerance: float = 2.0,
    angle_tolerance: float = 30.0,
    lo_iterations: int = 3,
    threads: Optional[int] = None,
) -> VerifyResult:
    """Batched fast spatial matching (Philbin et al. 2007) of one query with many images.

    For each image ``r = rows[i]`` (independently, in parallel over rows):

    1. Tentative correspondences: the query features sorted by (word, index) are
       merge-joined with the image's words; for each common word the first
       ``min(cq, max_per_word)`` query features are paired with the first
       ``min(cd, max_per_word)`` image features (stored order), query-major, until
       ``max_correspondences`` pairs are reached: their number M is ``correspondences``.
    2. ``M < 3``: 0 inliers, NaN model and boxes.
    3. Each correspondence is a similarity hypothesis ``s R(t) (p - p_q) + p_d`` with
       ``s = size_d / size_q`` and ``t = radians(angle_d - angle_q)`` (``R(t)`` rotates
       ``(x, y)`` with y down, the sense of OpenCV's SIFT angles). ``j`` is an inlier of
       ``h`` when its reprojection error is below ``inlier_threshold * L`` (``L`` the
       image's longest side), ``|ln s_j - ln s_h| < ln(scale_tolerance)`` and
       ``|wrap(t_j - t_h)| < radians(angle_tolerance)`` (the difference wrapped into
       ``[-pi, pi]``); the hypothesis with the most inliers wins (ties: the first).
    4. Local optimisation, up to ``lo_iterations`` times: a least-squares affine fit ``A``
       to the inliers (at least 3, not collinear), whose inliers replace the set when
       there are at least as many (the loop stops when not more). An inlier of ``A`` has a
       reprojection error below the threshold and agrees with ``A``'s closest similarity
       (``s_A = sqrt(|det A[:, :2]|)``, ``t_A = atan2(A10 - A01, A00 + A11)``) by the same
       scale and angle tests; the loop stops when ``s_A`` is 0 or not finite.
    5. ``inliers`` counts distinct query features; ``affine`` is the final model.

    All geometry is in float64; the exact order of operations is in
    ``src/roicore/spatial_verify.h``. Results do not depend on ``threads``.

    Parameters
    ----------
    query_words : uint32 (nq,)
        Visual word of each query feature (any order).
    query_xy : float32 (nq, 2)
        Keypoint centres ``(x, y)`` in query pixels.
    query_sizes : float32 (nq,)
        Keypoint diameters in pixels, > 0.
    query_angles : float32 (nq,)
        Orientations in degrees, as OpenCV's SIFT reports them.
    db_words : uint32 (n,)
        Words of all indexed images' features, each image's sorted ascending.
    db_xy : uint16 (n, 2)
        Quantised positions: ``x = xq / 65535 * L``, ``y = yq / 65535 * L``.
    db_scales : uint8 (n,)
        Quantised sizes: ``size = 2 ** (sq / 16 - 2)`` pixels.
    db_angles : uint8 (n,)
        Quantised orientations: ``degrees = aq * 360 / 256``.
    db_offsets : int64 (n_images + 1,)
        CSR offsets: image ``g`` owns features ``db_offsets[g]:db_offsets[g + 1]``
        (first 0, non-decreasing, last n).
    db_sides : float32 (n_images,)
        Each image's longest side ``L`` in pixels (> 0 for the visited rows).
    rows : int (R,)
        The images to verify (repeats allowed); results are in this order.
    max_per_word : int
        At most this many query and this many image features per word are paired (>= 1).
    max_correspondences : int
        At most this many correspondences per image (3 to 2**31 - 1).
    inlier_threshold : float
        The reprojection threshold as a fraction of the image's longest side (> 0).
    scale_tolerance : float
        The largest scale ratio of an inlier to its model (> 1).
    angle_tolerance : float
        The largest orientation difference of an inlier to its model, in degrees
        (0 < angle_tolerance <= 180; 180 turns the orientation test off).
    lo_iterations : int
        Local-optimisation steps (>= 0).

    The quantised arrays are never cast (another dtype raises TypeError); non-contiguous
    or unaligned arrays are copied. Bad values raise ValueError naming the first one.
    """
    c = _c_aligned
    out = _core.spatial_verify(
        c(query_words),
        c(query_xy),
        c(query_sizes),
        c(query_angles),
        c(db_words),
        c(db_xy),
        c(db_scales),
        c(db_angles),
        c(db_offsets),
        c(db_sides),
        rows,
        max_per_word,
        max_correspondences,
        inlier_threshold,
        scale_tolerance,
        angle_tolerance,
        lo_iterations,
        threads=_threads(threads),
    )
    return VerifyResult(*out)


# ----------------------------------------------------------------------------------------
# mapped files
# ----------------------------------------------------------------------------------------
def map_npy(path: "os.PathLike[str] | str") -> np.ndarray:
    """The array of a ``.npy`` file, memory-mapped read-only like ``np.load(path,
    mmap_mode="r")`` but holding no file descriptor (:class:`roiret._core.MappedFile`: the
    file is mapped, then closed; the mapping lives as long as the array or a view of it).

    Refused with ValueError: a file that is not a ``.npy`` of format version 1 or 2 (what
    ``np.save`` writes), an object dtype (nothing is unpickled), data of another size
    than the header's shape and dtype make. OSError when the file cannot be opened or
    mapped (a symbolic link as the file itself is refused: ELOOP)."""
    from numpy.lib import format as npy

    mapped = _core.MappedFile(path)
    head = io.BytesIO(memoryview(mapped)[: 1 << 16])  # the header (numpy reads <= 10 000 bytes of it)
    try:
        version = npy.read_magic(head)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f".npy format version {version} is not read here (1.0 and 2.0 are)")
        read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran, dtype = read(head)
    except Exception as e:  # numpy's header parser also raises tokenize.TokenError, SyntaxError...
        raise ValueError(f"{path}: not a valid .npy header ({type(e).__name__}: {e})") from None
    if dtype.hasobject:
        raise ValueError(f"{path}: holds Python objects ({dtype}); only plain arrays are loaded (no pickle)")
    count = math.prod(shape)  # exact: a crafted shape must not wrap around to the file's size
    offset = head.tell()
    if len(mapped) - offset != count * dtype.itemsize:
        raise ValueError(
            f"{path}: {len(mapped) - offset} bytes of data, its header says {dtype} {shape} "
            f"({count * dtype.itemsize} bytes)"
        )
    flat = np.frombuffer(memoryview(mapped), dtype=dtype, count=count, offset=offset)  # the view holds the mapping
    out: np.ndarray = flat.reshape(shape, order="F" if fortran else "C")
    return out
