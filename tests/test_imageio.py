"""Hostile images, built here from synthetic arrays, through every reader: load_image, the
local-feature and RoI extractors, and Retriever.add (skip / raise, index consistent).

Every refusal must be a typed error naming the file (ImageError with .path, or
FileNotFoundError), decided before a decoder sees the data where the header says enough;
nothing may crash, hang or allocate more than the image warrants.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

import _robust_index as RI
import roiret.io.images as imageio
from roiret.cnn.extractor import prepare_image
from roiret.errors import ImageError
from roiret.io.images import load_image, max_file_bytes, probe_image_size

# OpenCV logs every refused buffer on stderr; the tests check the exceptions instead
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


# ---------------------------------------------------------------------------------------
# building images
# ---------------------------------------------------------------------------------------
def upright(h=40, w=60):
    """Four coloured quadrants: any rotation or flip is visible."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2 :] = (0, 255, 0)
    a[h // 2 :, : w // 2] = (0, 0, 255)
    a[h // 2 :, w // 2 :] = (255, 255, 0)
    return a


def cv_encode(img, ext, params=()):
    """RGB (or gray / 16-bit / RGBA-as-given) array -> encoded bytes with OpenCV."""
    if img.ndim == 3 and img.shape[2] == 3:
        img = img[:, :, ::-1]
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, [2, 1, 0, 3]]
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(img), list(params))
    assert ok
    return buf.tobytes()


def pil_encode(img, fmt, **kw):
    buf = io.BytesIO()
    (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(buf, fmt, **kw)
    return buf.getvalue()


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(w, h):
    """A PNG whose IHDR declares w x h, followed by a tiny (invalid) IDAT and IEND."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def jpeg_with_size(w, h):
    """A real small JPEG whose SOF0 frame header is rewritten to declare w x h."""
    b = bytearray(cv_encode(upright(16, 16), ".jpg"))
    i = b.index(b"\xff\xc0")
    b[i + 5 : i + 9] = struct.pack(">HH", h, w)
    return bytes(b)


BOMBS = {  # format -> header declaring far more than 100 megapixels
    "PNG 100000x100000": lambda: png_header_only(100_000, 100_000),
    "JPEG 65535x65535": lambda: jpeg_with_size(65535, 65535),
    "GIF 65535x65535": lambda: b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\0\0\0" + b"," + b"\0" * 9 + b";",
    "BMP 100000x100000": lambda: (
        b"BM" + b"\0" * 12 + struct.pack("<Iii", 40, 100_000, -100_000) + struct.pack("<HHI", 1, 24, 0) + b"\0" * 20
    ),
    "TIFF 100000x100000": lambda: (
        b"II*\0"
        + struct.pack("<I", 8)
        + struct.pack("<H", 2)
        + struct.pack("<HHII", 256, 4, 1, 100_000)
        + struct.pack("<HHII", 257, 4, 1, 100_000)
        + b"\0\0\0\0"
    ),
    "WebP 16384x16384": lambda: (
        b"RIFF"
        + struct.pack("<I", 30)
        + b"WEBPVP8X"
        + struct.pack("<I", 10)
        + b"\0" * 4
        + (16383).to_bytes(3, "little")
        + (16383).to_bytes(3, "little")
    ),
    "PNM 100000x100000": lambda: b"P6\n# a comment\n100000 100000\n255\n" + b"\0" * 30,
}


@pytest.fixture
def no_decoder(monkeypatch):
    """Fail the test if anything reaches OpenCV's decoder."""

    def refuse(*a, **k):
        raise AssertionError("the decoder was called")

    monkeypatch.setattr(cv2, "imdecode", refuse)


# ---------------------------------------------------------------------------------------
# load_image: valid but unusual images
# ---------------------------------------------------------------------------------------
# stored pixels for each EXIF orientation, so that applying the orientation gives `upright`
STORED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored horizontally
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored vertically
    5: lambda a: a.transpose(1, 0, 2),  # transposed
    6: lambda a: np.rot90(a, 1),  # needs 90 clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transversed
    8: lambda a: np.rot90(a, -1),  # needs 90 counter-clockwise
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation, tmp_path):
    up = upright()
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = pil_encode(np.ascontiguousarray(STORED[orientation](up)), "JPEG", quality=95, exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).getexif()[0x0112] == orientation
    pil = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert pil.shape == up.shape and np.abs(pil.astype(int) - up).mean() < 6  # the file is what we meant
    got = load_image(write(tmp_path, "o.jpg", data))
    assert got.shape == up.shape, f"orientation {orientation}: {got.shape}"
    assert np.abs(got.astype(int) - up).mean() < 6
    small = load_image(data, max_side=30)  # shrinking happens after the rotation
    assert small.shape == (20, 30, 3)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    up = upright()
    data = pil_encode(Image.fromarray(up).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    got = load_image(write(tmp_path, "cmyk.jpg", data))
    assert got.shape == up.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - up).mean() < 8


@pytest.mark.parametrize("ext", [".png", ".tiff"])
@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_images_become_8_bit(ext, channels, tmp_path):
    rng = np.random.default_rng(3)
    a16 = rng.integers(0, 65536, size=(24, 32) + ((3,) if channels == 3 else ()), dtype=np.uint16)
    data = cv_encode(a16, ext)
    got = load_image(write(tmp_path, "deep" + ext, data))
    expect = (a16 >> 8).astype(np.uint8)
    expect = np.repeat(expect[:, :, None], 3, 2) if channels == 1 else expect
    assert got.dtype == np.uint8 and got.shape == (24, 32, 3)
    assert np.abs(got.astype(int) - expect).max() <= 1


def test_rgba_drops_alpha_and_gray_repeats(tmp_path):
    up = upright()
    rgba = np.dstack([up, np.linspace(0, 255, up.shape[1]).astype(np.uint8)[None].repeat(up.shape[0], 0)])
    np.testing.assert_array_equal(load_image(write(tmp_path, "a.png", cv_encode(rgba, ".png"))), up)
    gray = up[:, :, 1]
    for ext in (".png", ".jpg"):
        got = load_image(write(tmp_path, "g" + ext, cv_encode(gray, ext)))
        assert got.shape == up.shape and (got[:, :, 0] == got[:, :, 1]).all() and (got[:, :, 1] == got[:, :, 2]).all()
        assert np.abs(got[:, :, 0].astype(int) - gray).mean() < 3
        assert load_image(write(tmp_path, "g" + ext, cv_encode(gray, ext)), gray=True).ndim == 2


@pytest.mark.parametrize("shape", [(1, 1), (8, 8), (10, 10000), (10000, 10)])
@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_tiny_and_extreme_sizes(shape, ext, tmp_path):
    rng = np.random.default_rng(sum(shape))
    img = rng.integers(0, 256, size=shape + (3,), dtype=np.uint8)
    got = load_image(write(tmp_path, "x" + ext, cv_encode(img, ext)))
    assert got.shape == img.shape
    if ext == ".png":
        np.testing.assert_array_equal(got, img)
    small = load_image(cv_encode(img, ext), max_side=500)
    assert max(small.shape[:2]) == min(500, max(shape)) and min(small.shape[:2]) >= 1


# ---------------------------------------------------------------------------------------
# load_image: refusals
# ---------------------------------------------------------------------------------------
def refused(path, match, **kw):
    with pytest.raises(ImageError, match=match) as e:
        load_image(path, **kw)
    assert e.value.path == str(path) and str(path) in str(e.value)
    return e.value


def test_empty_file(tmp_path):
    refused(write(tmp_path, "empty.jpg", b""), "empty")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "GIF", "BMP", "WEBP", "PPM"])
def test_truncated_files_are_refused_at_every_sampled_point(fmt, tmp_path):
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    data = pil_encode(img, fmt)
    whole = load_image(data)
    cuts = sorted(
        {1, 2, 3, 8, 16, 24, 40, len(data) // 3, len(data) // 2, len(data) - 3, len(data) - 1}
        | set(rng.integers(1, len(data), 12).tolist())
    )
    for cut in cuts:
        p = write(tmp_path, f"cut.{fmt.lower()}", data[:cut])
        if fmt == "JPEG" and cut >= len(data) - 2:
            # only (part of) the end-of-image marker is missing: every pixel is there, and
            # libjpeg (like every viewer) shows the whole image
            np.testing.assert_array_equal(load_image(p), whole)
            continue
        refused(p, "not a supported|truncated|could not be decoded|no image size")


@pytest.mark.parametrize(
    "content, name",
    [
        (b"<!DOCTYPE html><html><body>Not Found</body></html>", "page.jpg"),
        (b"just some text\n", "notes.png"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "doc.jpeg"),
        (b"\x00" * 1000, "zeros.tif"),
        (b"PK\x03\x04" + b"\x00" * 40, "archive.webp"),
    ],
)
def test_not_an_image(content, name, tmp_path):
    refused(write(tmp_path, name, content), "not a supported image format")


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_decompression_bombs_are_refused_before_decoding(kind, tmp_path, no_decoder):
    data = BOMBS[kind]()
    fmt, size = probe_image_size(data)
    assert kind.startswith(fmt) and size[0] * size[1] > imageio.DEFAULT_MAX_PIXELS
    e = refused(write(tmp_path, "bomb.img", data), "more than the limit")
    assert "max_pixels" in e.reason


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    p = write(tmp_path, "100x100.png", cv_encode(upright(100, 100), ".png"))
    assert load_image(p, max_pixels=10_000).shape == (100, 100, 3)
    with monkeypatch.context() as m:
        m.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoder called"))
        refused(p, "100x100 = 10,000 pixels, more than the limit of 9,999", max_pixels=9_999)
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(p, max_pixels=0)
    monkeypatch.setenv("ROIRET_MAX_PIXELS", "1_000")
    assert imageio._env_max_pixels() == 1000
    monkeypatch.setenv("ROIRET_MAX_PIXELS", "lots")
    with pytest.warns(RuntimeWarning, match="ignoring ROIRET_MAX_PIXELS"):
        assert imageio._env_max_pixels() == 100_000_000


def test_sizes_found_far_into_the_file(tmp_path, no_decoder):
    """A JPEG frame header after 2.6 MB of APP segments and a TIFF whose IFD sits at the
    end of a 1.9 MB file are still probed (both used to reach the decoder unchecked)."""
    img = np.random.default_rng(5).integers(0, 256, (800, 800, 3), dtype=np.uint8)
    jpg = cv_encode(img, ".jpg")
    app = b"\xff\xe2" + struct.pack(">H", 65535) + b"\0" * 65533
    jpg = jpg[:2] + app * 40 + jpg[2:]
    tif = cv_encode(img, ".tiff", [cv2.IMWRITE_TIFF_COMPRESSION, 1])
    assert struct.unpack("<I", tif[4:8])[0] > 1 << 20  # IFD after the first MiB
    for name, data in (("big.jpg", jpg), ("big.tif", tif)):
        assert probe_image_size(data)[1] == (800, 800)
        refused(write(tmp_path, name, data), "800x800", max_pixels=1000)


def test_headers_without_a_size_are_refused(tmp_path, no_decoder):
    refused(
        write(
            tmp_path,
            "nosof.jpg",
            b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
            + b"\xff\xda\x00\x08"
            + b"\x00" * 40,
        ),
        "no image size found",
    )
    refused(write(tmp_path, "noifd.tif", b"II*\x00" + struct.pack("<I", 10**6)), "no image size found")
    refused(write(tmp_path, "zero.png", png_header_only(0, 10)), "empty image")


def test_paths_that_are_not_image_files(tmp_path):
    d = tmp_path / "folder.jpg"
    d.mkdir()
    refused(d, "is a directory")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg")
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # reading it would block forever
    refused(fifo, "not a regular file")
    if os.path.exists("/dev/zero"):  # reading it would never end
        with pytest.raises(ImageError, match="not a regular file"):
            load_image("/dev/zero")
    sparse = tmp_path / "huge.jpg"  # 100 MB on paper, no disk used
    with open(sparse, "wb") as f:
        f.truncate(100 << 20)
    refused(sparse, "bytes, more than an image", max_pixels=1000)
    assert max_file_bytes(1000) < 100 << 20


def test_arrays_and_other_inputs():
    assert load_image(np.ones((4, 5), bool)).shape == (4, 5, 3)
    assert load_image(np.zeros((4, 5, 4), np.float32)).shape == (4, 5, 3)
    with pytest.raises(ValueError, match="NaN"):
        load_image(np.full((4, 5, 3), np.nan, np.float32))
    with pytest.raises(TypeError, match="dtype"):
        load_image(np.zeros((4, 5, 3), np.int32))
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((4, 5, 2), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        load_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(TypeError, match="expected a path"):
        load_image(None)
    assert load_image(memoryview(cv_encode(upright(), ".png"))).shape == (40, 60, 3)
    with pytest.raises(ImageError, match="not a supported image format") as e:
        load_image(b"<html>")
    assert e.value.path is None


# ---------------------------------------------------------------------------------------
# through the extractors
# ---------------------------------------------------------------------------------------
HOSTILE_VALID = {
    "1x1": lambda: np.full((1, 1, 3), 200, np.uint8),
    "8x8": lambda: np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8),
    "10000x10": lambda: np.random.default_rng(1).integers(0, 256, (10, 10000, 3), dtype=np.uint8),
    "10x10000": lambda: np.random.default_rng(2).integers(0, 256, (10000, 10, 3), dtype=np.uint8),
    "1x100000": lambda: np.random.default_rng(3).integers(0, 256, (1, 100000, 3), dtype=np.uint8),
    "16-bit png": lambda: cv_encode(np.random.default_rng(4).integers(0, 65536, (50, 70, 3), dtype=np.uint16), ".png"),
    "rgba png": lambda: cv_encode(np.dstack([upright(), np.full((40, 60), 9, np.uint8)]), ".png"),
    "cmyk jpeg": lambda: pil_encode(Image.fromarray(upright()).convert("CMYK"), "JPEG"),
    "gray jpeg": lambda: cv_encode(upright()[:, :, 0], ".jpg"),
}


@pytest.fixture(scope="module")
def retriever(tmp_path_factory):
    return RI.load(RI.saved_index(tmp_path_factory.getbasetemp()))


@pytest.mark.parametrize("name", sorted(HOSTILE_VALID))
def test_local_features_of_hostile_images(name):
    from roiret.bow import LocalFeatureExtractor

    src = HOSTILE_VALID[name]()
    for max_side in (1024, None):
        f = LocalFeatureExtractor(max_side=max_side).extract(src)
        n = len(f)
        assert f.xy.shape == (n, 2) and f.descriptors.shape == (n, 128) and np.isfinite(f.descriptors).all()
        w, h = f.image_size
        assert (f.xy[:, 0] >= -1).all() and (f.xy[:, 0] <= w).all() and (f.xy[:, 1] <= h).all()


@pytest.mark.parametrize("shape", [(1, 1), (8, 8), (10, 10000), (10000, 10), (1, 100000), (100000, 1), (30, 31)])
@pytest.mark.parametrize("max_side", [500, None])
def test_prepare_image_bounds_the_network_input(shape, max_side):
    """The short side reaches the network's minimum, the long side never exceeds
    max(max_side, minimum) (its own length without max_side): before, a 10000x10 strip
    was enlarged to 15500x31 (31000x31 without max_side)."""
    min_side = 31
    img = np.zeros(shape + (3,), np.uint8)
    out, scale, size = prepare_image(img, max_side, min_side)
    h, w = out.shape[:2]
    assert size == (shape[1], shape[0]) and min(h, w) >= min_side
    cap = max(min_side, max_side if max_side is not None else max(shape))
    assert max(h, w) <= cap and out.nbytes <= 3 * min_side * cap
    # the image is scaled by `scale` into the top-left corner; the rest repeats its edge
    img = np.arange(shape[0] * shape[1], dtype=np.uint64).reshape(shape) % 251
    out, scale, _ = prepare_image(np.repeat(img.astype(np.uint8)[:, :, None], 3, 2), max_side, min_side)
    hc = min(out.shape[0], max(1, round(shape[0] * scale)))  # rows / columns of image content
    wc = min(out.shape[1], max(1, round(shape[1] * scale)))
    np.testing.assert_array_equal(out[hc:], np.broadcast_to(out[hc - 1 : hc], out[hc:].shape))
    np.testing.assert_array_equal(out[:, wc:], np.broadcast_to(out[:, wc - 1 : wc], out[:, wc:].shape))


@pytest.mark.parametrize("name", sorted(HOSTILE_VALID))
def test_roi_extractor_on_hostile_images(name, retriever):
    ex = retriever.extractor
    r = ex.extract_one(HOSTILE_VALID[name]())
    w, h = r.image_size
    assert r.codes.shape == (len(r), (ex.dim + 63) // 64) and r.global_code is not None
    assert len(r) <= ex.K and np.isfinite(r.descriptors).all()
    assert (r.boxes[:, 0] >= 0).all() and (r.boxes[:, 2] <= w + 1e-3).all()
    assert (r.boxes[:, 1] >= 0).all() and (r.boxes[:, 3] <= h + 1e-3).all()


# ---------------------------------------------------------------------------------------
# through Retriever.add
# ---------------------------------------------------------------------------------------
def bad_files(tmp_path):
    rng = np.random.default_rng(6)
    good_jpg = cv_encode(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), ".jpg")
    (tmp_path / "dir.jpg").mkdir()
    return {
        "empty.jpg": write(tmp_path, "empty.jpg", b""),
        "truncated.jpg": write(tmp_path, "truncated.jpg", good_jpg[: len(good_jpg) // 2]),
        "page.jpg": write(tmp_path, "page.jpg", b"<html>404</html>"),
        "bomb.png": write(tmp_path, "bomb.png", png_header_only(100_000, 100_000)),
        "dir.jpg": tmp_path / "dir.jpg",
        "missing.jpg": tmp_path / "missing.jpg",
    }


def check_consistent(r, expected_len):
    assert len(r) == expected_len == len(r.bow.inverted_file) == len(r.store.ids)
    assert sorted(r.store.ids.tolist()) == sorted(r.bow.inverted_file.ids().tolist())
    assert len(r.store.offsets) == expected_len + 1 and r.store.offsets[-1] == r.store.num_rois
    res = r.search(RI.photos()[0], top=expected_len)
    assert sorted(res.ids.tolist()) == sorted(r.store.ids.tolist())


def test_add_skips_every_bad_image_and_reports_them(tmp_path, tmp_path_factory):
    r = RI.load(RI.copy_index(tmp_path_factory.getbasetemp(), tmp_path / "idx"))
    n0 = len(r)
    bad = bad_files(tmp_path)
    good = [HOSTILE_VALID[k]() for k in ("1x1", "10000x10", "16-bit png", "cmyk jpeg")]
    items = [
        good[0],
        bad["empty.jpg"],
        bad["truncated.jpg"],
        good[1],
        bad["page.jpg"],
        bad["bomb.png"],
        good[2],
        bad["dir.jpg"],
        None,
        np.zeros((5, 5, 2), np.uint8),
        bad["missing.jpg"],
        good[3],
    ]
    with pytest.warns(RuntimeWarning, match=r"8 of 12 images skipped") as w:
        ids = r.add(items, on_error="skip")
    assert ids.tolist() == [n0 + 0, n0 + 3, n0 + 6, n0 + 11]  # default ids follow the positions
    failed = {name: reason for _, name, reason in r.last_failures}
    assert [pos for pos, _, _ in r.last_failures] == [1, 2, 4, 5, 7, 8, 9, 10]
    for key in ("empty.jpg", "truncated.jpg", "page.jpg", "bomb.png", "dir.jpg", "missing.jpg"):
        assert str(bad[key]) in failed and str(bad[key]) in str(w[0].message)
    assert "empty" in failed[str(bad["empty.jpg"])] and "more than the limit" in failed[str(bad["bomb.png"])]
    assert "is a directory" in failed[str(bad["dir.jpg"])]
    check_consistent(r, n0 + 4)


def test_add_raise_stops_at_the_first_bad_image_and_stays_consistent(tmp_path, tmp_path_factory):
    r = RI.load(RI.copy_index(tmp_path_factory.getbasetemp(), tmp_path / "idx"))
    n0 = len(r)
    bad = bad_files(tmp_path)
    photos = RI.photos()
    with pytest.raises(ImageError, match="truncated.jpg") as e:
        r.add([photos[6], photos[7], HOSTILE_VALID["8x8"](), bad["truncated.jpg"], photos[0]], on_error="raise")
    added = e.value.added_ids.tolist()
    assert added == [n0, n0 + 1]  # the full batch before the bad image (batch_size=2)
    check_consistent(r, n0 + 2)
    with pytest.raises(FileNotFoundError):
        r.add([bad["missing.jpg"]])
    with pytest.raises(TypeError):
        r.add([None])
    check_consistent(r, n0 + 2)


def test_failed_batch_is_rolled_back(tmp_path, tmp_path_factory, monkeypatch):
    """If storing a batch fails halfway (here: an injected error on its second image),
    neither the inverted file nor the RoI store keeps any of it."""
    r = RI.load(RI.copy_index(tmp_path_factory.getbasetemp(), tmp_path / "idx"))
    n0 = len(r)
    real_add, calls = r.store.add, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("injected")
        return real_add(*a, **k)

    monkeypatch.setattr(r.store, "add", flaky)
    with pytest.raises(MemoryError):
        r.add(RI.photos()[6:8])
    monkeypatch.undo()
    check_consistent(r, n0)
    assert r.add(RI.photos()[6:8]).tolist() == [n0, n0 + 1]
    check_consistent(r, n0 + 2)


@pytest.mark.parametrize("name", sorted(HOSTILE_VALID))
def test_hostile_images_as_queries(name, retriever):
    import warnings

    from roiret.io.images import BoxWarning

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        res = retriever.search(HOSTILE_VALID[name](), top=len(retriever))
    few = [w for w in seen if issubclass(w.category, BoxWarning)]
    # an image without keypoints is still ranked (insertion order), and the caller is told why, at their call
    assert all("local features" in str(w.message) and w.filename == __file__ for w in few), few
    assert sorted(res.ids.tolist()) == sorted(retriever.store.ids.tolist())
    assert all(np.isfinite(h.bow_score) for h in res.hits)


def test_bad_query_files_name_the_file(retriever, tmp_path):
    bad = bad_files(tmp_path)
    with pytest.raises(ImageError, match="bomb.png"):
        retriever.search(bad["bomb.png"])
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        retriever.search(bad["missing.jpg"])
