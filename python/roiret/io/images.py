"""Reading images: paths, bytes or arrays in, C-contiguous ``uint8`` RGB (or gray) out.

Every reader in roiret goes through :func:`load_image`, so every stage sees the same
pixels and the same errors:

* files are read as bytes and their header is checked *before* decoding: an empty file,
  a file that is not an image, a header whose image size cannot be found (truncated or
  corrupt), or an image whose declared size exceeds ``max_pixels`` (a "decompression
  bomb") is refused with :class:`roiret.errors.ImageError` naming the file, without
  handing the data to a decoder. Directories, devices, FIFOs and sockets are refused
  without being read, and so are files larger than any image of ``max_pixels`` pixels
  could be (:func:`max_file_bytes`);
* EXIF orientation is applied (a photo taken in portrait comes out upright);
* 16-bit, gray, RGBA/alpha and CMYK inputs are converted to 8-bit RGB (or gray);
* ``max_side`` shrinks the longest side (never enlarges) with area interpolation.

Arrays are taken as they are (``H×W`` gray, ``H×W×3`` RGB, ``H×W×4`` RGBA; ``uint8``,
``uint16`` or floats in [0, 1]).
"""

from __future__ import annotations

import numbers
import os
import stat
import struct
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import ImageError

__all__ = [
    "Box",
    "ImageSource",
    "BoxWarning",
    "SkippedImageWarning",
    "check_box",
    "check_query_box",
    "DEFAULT_MAX_PIXELS",
    "PreparedImage",
    "error_reason",
    "image_list",
    "iter_prepared",
    "load_image",
    "load_shrunk",
    "source_name",
    "max_file_bytes",
    "probe_image_size",
    "resize_max_side",
    "to_uint8_rgb",
]

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, np.ndarray]
#: ``(x1, y1, x2, y2)`` in pixels of an image, x2 / y2 exclusive
Box = Tuple[float, float, float, float]


def _env_max_pixels(default: int = 100_000_000) -> int:
    raw = os.environ.get("ROIRET_MAX_PIXELS")
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip().replace("_", ""))
        if value < 1:
            raise ValueError
    except ValueError:
        warnings.warn(
            f"ignoring ROIRET_MAX_PIXELS={raw!r}: expected a positive integer; using {default:,}",
            RuntimeWarning,
            stacklevel=2,
        )
        return default
    return value


#: Largest image (width × height, as declared in the file header) that is decoded.
#: 100 megapixels ≈ 300 MB of decoded RGB. Override per call or with ROIRET_MAX_PIXELS
#: (read at import; a value that is not a positive integer is ignored with a warning).
DEFAULT_MAX_PIXELS = _env_max_pixels()


def max_file_bytes(max_pixels: int) -> int:
    """Largest file :func:`load_image` reads for a pixel limit: an uncompressed image of
    ``max_pixels`` pixels at 16-bit RGBA (8 bytes a pixel) plus 64 MiB of metadata
    (EXIF, ICC profiles, thumbnails). Larger files are refused unread."""
    return 8 * int(max_pixels) + (64 << 20)


def _cv2() -> Any:
    import cv2  # local import: importing roiret should not pay for OpenCV

    return cv2


# ----------------------------------------------------------------------------------------
# header probing
# ----------------------------------------------------------------------------------------
def _probe_jpeg(b: bytes) -> Optional[Tuple[int, int]]:
    i, n = 2, len(b)
    while i + 4 <= n:
        if b[i] != 0xFF:  # garbage between segments: libjpeg skips to the next 0xFF too
            j = b.find(b"\xff", i)
            if j < 0:
                return None
            i = j
            continue
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # standalone markers
            i += 2
            continue
        if i + 4 > n:
            return None
        seg_len = struct.unpack(">H", b[i + 2 : i + 4])[0]
        if seg_len < 2:
            return None
        # SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            h, w = struct.unpack(">HH", b[i + 5 : i + 9])
            return w, h
        if marker == 0xDA:  # start of scan before any frame header
            return None
        i += 2 + seg_len
    return None


def _probe_png(b: bytes) -> Optional[Tuple[int, int]]:
    if len(b) < 24 or b[12:16] != b"IHDR":
        return None
    w, h = struct.unpack(">II", b[16:24])
    return w, h


def _probe_gif(b: bytes) -> Optional[Tuple[int, int]]:
    if len(b) < 10:
        return None
    w, h = struct.unpack("<HH", b[6:10])
    return w, h


def _probe_bmp(b: bytes) -> Optional[Tuple[int, int]]:
    if len(b) < 26:
        return None
    hdr = struct.unpack("<I", b[14:18])[0]
    if hdr == 12:
        w, h = struct.unpack("<HH", b[18:22])
        return w, h
    w, h = struct.unpack("<ii", b[18:26])
    return abs(w), abs(h)


def _probe_webp(b: bytes) -> Optional[Tuple[int, int]]:
    if len(b) < 30:
        return None
    chunk = b[12:16]
    if chunk == b"VP8X":
        w = 1 + int.from_bytes(b[24:27], "little")
        h = 1 + int.from_bytes(b[27:30], "little")
        return w, h
    if chunk == b"VP8L":
        bits = int.from_bytes(b[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", b[26:30])
        return w & 0x3FFF, h & 0x3FFF
    return None


def _probe_pnm(b: bytes) -> Optional[Tuple[int, int]]:
    # P1..P6: magic, then whitespace/comment separated width and height
    fields: List[int] = []
    i, n = 2, min(len(b), 4096)
    while len(fields) < 2 and i < n:
        c = b[i : i + 1]
        if c == b"#":
            while i < n and b[i : i + 1] not in (b"\n", b"\r"):
                i += 1
        elif c.isspace():
            i += 1
        else:
            j = i
            while j < n and b[j : j + 1].isdigit():
                j += 1
            if j == i:
                return None
            fields.append(int(b[i:j]))
            i = j
    return (fields[0], fields[1]) if len(fields) == 2 else None


def _probe_tiff(b: bytes) -> Optional[Tuple[int, int]]:
    end = "<" if b[:2] == b"II" else ">"
    if len(b) < 8:
        return None
    (ifd,) = struct.unpack(end + "I", b[4:8])
    if ifd + 2 > len(b):
        return None
    (count,) = struct.unpack(end + "H", b[ifd : ifd + 2])
    w = h = None
    for k in range(count):
        e = ifd + 2 + 12 * k
        if e + 12 > len(b):
            return None
        tag, typ = struct.unpack(end + "HH", b[e : e + 4])
        if typ == 3:
            val = struct.unpack(end + "H", b[e + 8 : e + 10])[0]
        else:
            val = struct.unpack(end + "I", b[e + 8 : e + 12])[0]
        if tag == 256:
            w = val
        elif tag == 257:
            h = val
    return (w, h) if w is not None and h is not None else None


_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG", _probe_jpeg),
    (b"\x89PNG\r\n\x1a\n", "PNG", _probe_png),
    (b"GIF87a", "GIF", _probe_gif),
    (b"GIF89a", "GIF", _probe_gif),
    (b"BM", "BMP", _probe_bmp),
    (b"II*\x00", "TIFF", _probe_tiff),
    (b"MM\x00*", "TIFF", _probe_tiff),
)


def _identify(b: bytes) -> Tuple[Optional[str], Optional[Callable[[bytes], Optional[Tuple[int, int]]]]]:
    for sig, name, probe in _SIGNATURES:
        if b.startswith(sig):
            return name, probe
    if len(b) >= 12 and b[:4] == b"RIFF" and b[8:12] == b"WEBP":
        return "WebP", _probe_webp
    if len(b) >= 3 and b[0:1] == b"P" and b[1:2] in b"123456" and b[2:3].isspace():
        return "PNM", _probe_pnm
    return None, None


def probe_image_size(data: bytes) -> Tuple[str, Optional[Tuple[int, int]]]:
    """Return ``(format, (width, height) or None)`` from an encoded image's header,
    without decoding it. Raises :class:`ImageError` when the bytes are not an image
    format roiret reads (JPEG, PNG, GIF, BMP, TIFF, WebP, PNM)."""
    fmt, probe = _identify(bytes(data[:16]))
    if fmt is None or probe is None:
        head = " ".join(f"{x:02x}" for x in bytes(data[:8]))
        raise ImageError(f"not a supported image format (first bytes: {head or 'none'})")
    try:
        # the whole file: a TIFF's IFD may sit at its end, a JPEG's frame header after
        # megabytes of EXIF / ICC / thumbnail segments (the walk jumps from segment to segment)
        size = probe(data if isinstance(data, bytes) else bytes(data))
    except struct.error:
        size = None
    return fmt, size


# ----------------------------------------------------------------------------------------
# conversion
# ----------------------------------------------------------------------------------------
def to_uint8_rgb(img: np.ndarray, *, name: str = "image") -> np.ndarray:
    """Convert an array (gray / RGB / RGBA; uint8, uint16 or float in [0, 1]) to a
    C-contiguous ``uint8`` (H, W, 3) RGB array."""
    if not isinstance(img, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(img).__name__}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise ValueError(f"{name}: expected an array of shape (H, W), (H, W, 3) or (H, W, 4), got {img.shape}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"{name}: empty image of shape {img.shape}")
    if img.dtype == np.uint8:
        out = img
    elif img.dtype == np.uint16:
        out = (img >> 8).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64, np.float16):
        if not np.all(np.isfinite(img)):
            raise ValueError(f"{name}: float image contains NaN or infinity")
        out = np.clip(np.rint(img.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    elif img.dtype == np.bool_:
        out = img.astype(np.uint8) * 255
    else:
        raise TypeError(f"{name}: expected dtype uint8, uint16 or float in [0, 1], got {img.dtype}")
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    elif out.shape[2] == 4:
        out = out[:, :, :3]
    return np.ascontiguousarray(out)


def resize_max_side(img: np.ndarray, max_side: Optional[int]) -> Tuple[np.ndarray, float]:
    """Shrink ``img`` so that its longest side is at most ``max_side`` (never enlarge).
    Returns ``(resized, scale)`` where ``scale`` = new size / old size (1.0 if unchanged)."""
    if max_side is None:
        return img, 1.0
    if int(max_side) < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    h, w = img.shape[:2]
    longest = max(h, w)
    if longest <= max_side:
        return img, 1.0
    scale = max_side / float(longest)
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    out = _cv2().resize(img, (nw, nh), interpolation=_cv2().INTER_AREA)
    return np.ascontiguousarray(out), scale


def _read_bytes(path: Path, limit: int) -> bytes:
    """The file's bytes; refuses directories, devices, FIFOs and sockets (reading them
    would never end or block) and files larger than :func:`max_file_bytes`."""
    st = os.stat(path)  # FileNotFoundError / PermissionError name the path
    if stat.S_ISDIR(st.st_mode):
        raise ImageError("is a directory, not an image file", path)
    if not stat.S_ISREG(st.st_mode):
        raise ImageError("is not a regular file (a device, FIFO or socket)", path)
    cap = max_file_bytes(limit)
    if st.st_size > cap:
        raise ImageError(
            f"file has {st.st_size:,} bytes, more than an image within the pixel limit of "
            f"{limit:,} can have ({cap:,} bytes)",
            path,
        )
    with open(path, "rb") as f:
        data = f.read(cap + 1)
    if len(data) > cap:  # grew while being read
        raise ImageError(f"file has more than {cap:,} bytes", path)
    return data


def load_image(
    src: ImageSource,
    *,
    max_side: Optional[int] = None,
    gray: bool = False,
    max_pixels: Optional[int] = None,
) -> np.ndarray:
    """Load an image as a C-contiguous ``uint8`` array: RGB (H, W, 3), or (H, W) if ``gray``.

    Parameters
    ----------
    src:
        A path, the encoded bytes of an image file, or an array (see :func:`to_uint8_rgb`).
    max_side:
        Shrink so that the longest side is at most this many pixels (``None``: keep).
    gray:
        Return a single-channel luminance image.
    max_pixels:
        Refuse files whose header declares more than this many pixels, before decoding
        (default :data:`DEFAULT_MAX_PIXELS`).

    Raises
    ------
    roiret.errors.ImageError
        The file is empty, truncated, corrupt, not an image, not a regular file, or too
        large (declared pixels or file size); ``.path`` names it.
    FileNotFoundError, PermissionError
        The path does not exist or cannot be read (the message names it).
    """
    if max_pixels is None:
        limit = DEFAULT_MAX_PIXELS
    else:
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
        limit = int(max_pixels)
    if isinstance(src, np.ndarray):
        _check_array_pixels(src, limit)
        img = to_uint8_rgb(src)
        path = None
    else:
        if isinstance(src, (bytes, bytearray, memoryview)):
            data, path = bytes(src), None
        elif isinstance(src, (str, os.PathLike)):
            path = Path(src)
            data = _read_bytes(path, limit)
        else:
            raise TypeError(f"expected a path, bytes or a numpy array, got {type(src).__name__}")
        img = _decode(data, path, limit)
    img, _ = resize_max_side(img, max_side)
    if gray:
        img = np.ascontiguousarray(_cv2().cvtColor(img, _cv2().COLOR_RGB2GRAY))
    return img


def _check_array_pixels(img: np.ndarray, limit: int) -> None:
    """ImageError for an array of more than ``limit`` pixels (the limit of decoded files),
    before any copy or conversion: a broadcast array can claim any size at no cost."""
    if img.ndim >= 2 and img.shape[0] * img.shape[1] > limit:
        h, w = img.shape[:2]
        raise ImageError(
            f"array of shape {img.shape} has {w}x{h} = {w * h:,} pixels, more than the limit of "
            f"{limit:,} (pass max_pixels= or set ROIRET_MAX_PIXELS to allow it)"
        )


def _decode(data: bytes, path: Optional[Path], limit: int) -> np.ndarray:
    cv2 = _cv2()
    if len(data) == 0:
        raise ImageError("file is empty (0 bytes)", path)
    try:
        fmt, size = probe_image_size(data)
    except ImageError as e:
        raise ImageError(e.reason, path) from None
    if size is not None:
        w, h = size
        if w <= 0 or h <= 0:
            raise ImageError(f"{fmt} header declares an empty image ({w}x{h})", path)
        if w * h > limit:
            raise ImageError(
                f"{fmt} header declares {w}x{h} = {w * h:,} pixels, more than the limit of "
                f"{limit:,} (pass max_pixels= or set ROIRET_MAX_PIXELS to allow it)",
                path,
            )
    else:  # never hand a decoder an image whose size was not checked
        raise ImageError(f"{fmt} header is truncated or corrupt (no image size found)", path)
    buf = np.frombuffer(data, dtype=np.uint8)
    # IMREAD_COLOR: 8-bit BGR whatever the source (gray, 16-bit, alpha, CMYK), with the
    # EXIF orientation applied.
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise ImageError(f"{fmt} data could not be decoded (truncated or corrupt)", path)
    if img.shape[0] * img.shape[1] > limit:  # a header that understated the size
        raise ImageError(
            f"image has {img.shape[1]}x{img.shape[0]} pixels, more than the limit of {limit:,}",
            path,
        )
    return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))


def image_list(images: Any, what: str = "images") -> List[ImageSource]:
    """``images`` as a list of image sources. TypeError for one image given alone (an
    array, a path, bytes: iterating over it would give its rows or characters) and for
    anything that is not a collection."""
    if isinstance(images, np.ndarray):
        raise TypeError(
            f"{what}: expected a sequence of images, got one numpy array of shape {images.shape}; "
            "wrap a single image in a list ([image]); pass a stack of images as list(stack)"
        )
    if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike)):
        raise TypeError(
            f"{what}: expected a sequence of images, got one {type(images).__name__}; "
            "wrap a single image in a list ([image])"
        )
    try:
        return list(images)
    except TypeError:
        raise TypeError(
            f"{what}: expected a sequence of images (paths, bytes or arrays), got {type(images).__name__}"
        ) from None


class PreparedImage(NamedTuple):
    """An image read once and shrunk for both stages: ``image`` (uint8 RGB, longest side
    at most ``max_side``), ``scale`` (its size / the original's) and the original ``size``
    (width, height)."""

    image: np.ndarray
    scale: float
    size: Tuple[int, int]


def load_shrunk(src: ImageSource, max_side: Optional[int]) -> PreparedImage:
    """Read ``src`` (:func:`load_image`) and shrink it to ``max_side``."""
    img = load_image(src)
    h, w = img.shape[:2]
    small, scale = resize_max_side(img, max_side)
    return PreparedImage(small, scale, (w, h))


def source_name(src: Any, fallback: str) -> str:
    """The path of an image source, or ``fallback`` for bytes and arrays."""
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    return fallback


def error_reason(e: BaseException) -> str:
    """The message of an error without the file name (shown next to it already)."""
    return getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)


#: what reading one image may raise without the others being affected
IMAGE_ERRORS = (ImageError, OSError, ValueError, TypeError)


def iter_prepared(
    images: Sequence[ImageSource],
    max_side: Optional[int],
    *,
    on_error: str = "raise",
    progress: Optional[bool] = None,
    desc: str = "images",
) -> Iterator[Tuple[int, ImageSource, Union[PreparedImage, Exception]]]:
    """Yield ``(position, source, prepared image or the exception it raised)`` for each
    image, with a progress bar (``progress``: True, False, or None for a terminal only).
    ``on_error="raise"`` lets the first error propagate instead."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    from tqdm.auto import tqdm

    bar = tqdm(total=len(images), desc=desc, unit="img", disable=None if progress is None else not progress)
    try:
        for i, src in enumerate(images):
            item: Union[PreparedImage, Exception]
            try:
                item = load_shrunk(src, max_side)
            except IMAGE_ERRORS as e:  # this image only
                if on_error == "raise":
                    raise
                item = e
            yield i, src, item
            bar.update(1)
    finally:
        bar.close()


def _plain(box: Any) -> str:
    """A box as plain numbers for messages (``(400, 10.5, 500, 20)``, not ``np.float64(400.0)``)."""

    def one(v: Any) -> str:
        try:
            return f"{float(v):g}"
        except OverflowError:  # an integer beyond the float range
            return f"{str(v)[:6]}...({len(str(v))} digits)"

    try:
        return "(" + ", ".join(one(v) for v in box) + ")"
    except (TypeError, ValueError):
        return repr(box)[:200]


def check_box(box: Any, name: str = "box") -> Box:
    """``box`` as four floats ``(x1, y1, x2, y2)``: TypeError unless it is four real numbers
    (not strings or bools), ValueError unless they are finite (an integer too large for a
    float is not) with x2 > x1 and y2 > y1. (Whether it overlaps a given image is
    :func:`check_query_box`'s business.)"""
    try:
        values = list(box)
    except TypeError:
        values = []
    if len(values) != 4 or any(isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) for v in values):
        raise TypeError(f"{name}: expected four numbers (x1, y1, x2, y2), got {_plain(box)}")
    try:
        x1, y1, x2, y2 = (float(v) for v in values)
    except OverflowError:  # an integer beyond the float range
        raise ValueError(f"{name}: coordinates must be finite, got {_plain(box)}") from None
    if not all(np.isfinite([x1, y1, x2, y2])):
        raise ValueError(f"{name}: coordinates must be finite, got {_plain(box)}")
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"{name}: expected x2 > x1 and y2 > y1 (a non-empty box), got {_plain(box)}")
    return (x1, y1, x2, y2)


def warn_caller(message: str, category: type = UserWarning) -> None:
    """``warnings.warn`` pointing at the first frame outside roiret (the user's call)."""
    import sys
    import warnings

    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    level, frame = 2, sys._getframe(1)  # stacklevel 2: the caller of warn_caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(pkg + os.sep):
        level, frame = level + 1, frame.f_back  # type: ignore[assignment]
    warnings.warn(message, category, stacklevel=level)


class SkippedImageWarning(RuntimeWarning):
    """Images that could not be read were skipped (``on_error="skip"``, or while training);
    the message names each one and why."""


class BoxWarning(UserWarning):
    """A query box that is probably not what was meant (fractions instead of pixels, a few
    pixels wide, partly outside the image). The search still runs."""


#: boxes narrower or lower than this (pixels of the image as given) describe almost nothing
MIN_BOX_SIDE = 16


def check_query_box(box: Any, width: int, height: int) -> Box:
    """:func:`check_box`, then against a ``width`` × ``height`` image: a box wholly outside
    it is a ValueError; a box partly outside is clipped (with a warning when by more than a
    pixel); a box that looks like fractions of
    the image (every coordinate in [0, 1] on an image larger than 2 px) or is under
    :data:`MIN_BOX_SIDE` pixels on a side gives a :class:`BoxWarning`. Returns the box
    clipped to the image."""
    x1, y1, x2, y2 = check_box(box)
    cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
    if cx2 <= cx1 or cy2 <= cy1:
        raise ValueError(f"box {_plain(box)} lies outside the {width}x{height} image (boxes are in pixels)")
    if max(x1, y1, x2, y2) <= 1.0 and min(width, height) > 2:
        warn_caller(
            f"box {_plain(box)} looks like fractions of the image; boxes are in pixels of the {width}x{height} image",
            BoxWarning,
        )
    elif max(cx1 - x1, cy1 - y1, x2 - cx2, y2 - cy2) > 1.0:  # within a pixel: rounding, not a mistake
        warn_caller(
            f"box {_plain(box)} is partly outside the {width}x{height} image; clipped to "
            f"{_plain((cx1, cy1, cx2, cy2))}",
            BoxWarning,
        )
    if min(cx2 - cx1, cy2 - cy1) < MIN_BOX_SIDE:
        warn_caller(
            f"box {_plain((cx1, cy1, cx2, cy2))} is {cx2 - cx1:g}x{cy2 - cy1:g} pixels: too small to "
            f"describe (under {MIN_BOX_SIDE} px on a side)",
            BoxWarning,
        )
    return (cx1, cy1, cx2, cy2)
