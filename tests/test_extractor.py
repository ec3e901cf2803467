"""The one-call extractor: images in, per-image boxes / scores / descriptors / codes out."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from _reference import pack_codes_ref, pool_rois_ref
from conftest import DEVICES
from roiret.cnn.backbones import build_backbone
from roiret.cnn.extractor import RoIExtractor, prepare_image
from roiret.errors import ImageError, WeightsNotFoundError


def _photos(side=160):
    import skimage.data

    out = []
    for name in ("astronaut", "chelsea", "coffee"):
        im = getattr(skimage.data, name)()
        h, w = im.shape[:2]
        f = side / max(h, w)
        out.append(np.ascontiguousarray(cv2.resize(im, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)))
    return out


@pytest.fixture(scope="module")
def alex():
    torch.manual_seed(0)
    return build_backbone("alexnet", "random")


def _ex(alex, **kw):
    kw.setdefault("K", 8)
    kw.setdefault("max_side", 160)
    kw.setdefault("progress", False)
    kw.setdefault("num_workers", 0)
    return RoIExtractor(alex, **kw)


@pytest.mark.parametrize("feature", ["conv-max", "conv-sum"])
def test_conv_results(kernels, alex, feature):
    ex = _ex(alex, feature=feature)
    imgs = _photos()
    res = ex.extract(imgs)
    assert len(res) == 3
    for img, r in zip(imgs, res):
        n = len(r)
        assert 1 <= n <= 8
        assert r.boxes.shape == (n, 4) and r.boxes.dtype == np.float32
        assert r.scores.shape == (n,) and (np.diff(r.scores) <= 0).all()
        assert r.descriptors.shape == (n, 256) and r.descriptors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(r.descriptors, axis=1), 1, rtol=1e-5)
        assert r.codes.shape == (n, 4) and r.codes.dtype == np.uint64
        np.testing.assert_array_equal(r.codes, pack_codes_ref(r.descriptors))
        assert r.global_descriptor.shape == (256,) and r.global_code.shape == (4,)
        H, W = img.shape[:2]
        assert r.image_size == (W, H) and r.scale == 1.0
        assert (r.boxes[:, 0] >= 0).all() and (r.boxes[:, 2] <= W).all()
        assert (r.boxes[:, 1] >= 0).all() and (r.boxes[:, 3] <= H).all()
        assert (r.boxes[:, 2] > r.boxes[:, 0]).all() and (r.boxes[:, 3] > r.boxes[:, 1]).all()
        assert (r.boxes % 16 == 0)[:, :2].all()  # cell starts map through the stride
        assert r.channels.min() >= 0 and r.channels.max() < 256


def test_descriptors_are_pooled_inside_the_boxes(kernels, alex):
    ex = _ex(alex, feature="conv-max", whitening=None)
    img = _photos()[0]
    r = ex.extract_one(img)
    x = torch.from_numpy(img)
    with torch.no_grad():
        from roiret.cnn.backbones import images_to_tensor

        f = alex(images_to_tensor([img], alex.mean, alex.std, torch.device("cpu")))[0]
    fh, fw = f.shape[1:]
    for box, d in zip(r.boxes, r.descriptors):
        x1, y1 = int(box[0] // 16), int(box[1] // 16)
        x2, y2 = min(int(np.ceil(box[2] / 16)), fw), min(int(np.ceil(box[3] / 16)), fh)
        want = f[:, y1:y2, x1:x2].amax(dim=(1, 2)).numpy()
        np.testing.assert_allclose(d, want / np.linalg.norm(want), rtol=1e-4, atol=1e-6)
    g = f.amax(dim=(1, 2)).numpy()
    np.testing.assert_allclose(r.global_descriptor, g / np.linalg.norm(g), rtol=1e-4, atol=1e-6)
    del x


def test_boxes_in_original_pixels(kernels, alex):
    img = _photos(side=320)[0]  # 320x320, the network sees 160x160
    ex = _ex(alex)
    big = ex.extract_one(img)
    small = ex.extract_one(cv2.resize(img, (160, 160), interpolation=cv2.INTER_AREA))
    assert big.scale == 0.5 and big.image_size == (320, 320)
    np.testing.assert_allclose(big.boxes, small.boxes * 2, atol=1e-4)
    np.testing.assert_array_equal(big.codes, small.codes)


def test_paths_bytes_arrays_agree(kernels, alex, tmp_path):
    img = _photos()[1]
    p = tmp_path / "a.png"
    cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    ex = _ex(alex)
    ra, rp, rb = ex.extract([img, str(p), p.read_bytes()])
    for r in (rp, rb):
        np.testing.assert_array_equal(r.boxes, ra.boxes)
        np.testing.assert_array_equal(r.codes, ra.codes)


def test_batching_does_not_change_results(kernels, alex):
    imgs = _photos() + [_photos()[0][:, :100].copy()]  # two sizes in one call
    batched = _ex(alex, batch_size=8).extract(imgs)
    single = [_ex(alex, batch_size=1).extract_one(im) for im in imgs]
    threaded = _ex(alex, num_workers=2, chunk_size=2).extract(imgs)
    for a, b, c in zip(batched, single, threaded):
        np.testing.assert_allclose(a.descriptors, b.descriptors, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.boxes, c.boxes)


def test_query_box_is_a_crop(kernels, alex):
    img = _photos()[2]
    ex = _ex(alex)
    a = ex.extract_one(img, box=(20, 10, 140, 100))
    b = ex.extract_one(np.ascontiguousarray(img[10:100, 20:140]))
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.codes, b.codes)
    assert a.image_size == (120, 90)
    with pytest.raises(ValueError, match="empty"):
        ex.extract_one(img, box=(50, 50, 50, 80))


def test_tiny_images_are_enlarged(kernels, alex):
    ex = _ex(alex)
    r = ex.extract_one(np.full((12, 20, 3), 128, np.uint8))
    assert r.scale > 1 and r.image_size == (20, 12)
    img, scale, size = prepare_image(np.zeros((12, 20, 3), np.uint8), 500, 31)
    assert min(img.shape[:2]) >= 31 and size == (20, 12)


def test_errors_skip_or_raise(kernels, alex, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    ex = _ex(alex)
    with pytest.raises(ImageError):
        ex.extract([_photos()[0], str(bad)])
    with pytest.warns(RuntimeWarning, match="image 1 skipped"):
        res = ex.extract([_photos()[0], str(bad)], on_error="skip")
    assert res[1] is None and res[0] is not None
    with pytest.raises(TypeError, match="extract_one"):
        ex.extract(_photos()[0])
    with pytest.raises(ValueError, match="boxes"):
        ex.extract(_photos(), boxes=[None])


def test_whitening_in_the_pipeline(kernels, alex):
    imgs = _photos()
    ex = _ex(alex, K=10)
    raw = ex.raw_descriptors(imgs)
    assert raw.shape[1] == 256 and raw.shape[0] == sum(len(r) + 1 for r in ex.extract(imgs))
    w = ex.fit_whitening(descriptors=raw, dims=16)
    assert ex.whitening is w and ex.dim == 16
    res = ex.extract(imgs)
    r = res[0]
    assert r.descriptors.shape[1] == 16 and r.codes.shape[1] == 1
    np.testing.assert_allclose(r.descriptors, w.transform(raw[: len(r)]), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(r.codes, pack_codes_ref(r.descriptors))
    w2 = ex.fit_whitening(imgs, dims=8)
    assert w2.out_dim == 8
    with pytest.raises(ValueError, match="exactly one"):
        ex.fit_whitening()
    with pytest.raises(TypeError, match="PCAWhitening"):
        _ex(alex, whitening="yes")


@pytest.mark.parametrize("feature", ["fc7", "roialign-fc"])
def test_fc_features_random_head(kernels, alex, feature):
    ex = _ex(alex, feature=feature, head_weights="random", K=3, crop_chunk=4)
    res = ex.extract(_photos()[:2])
    for r in res:
        assert r.descriptors.shape == (len(r), 4096) and r.codes.shape == (len(r), 64)
        assert r.global_descriptor.shape == (4096,)
        np.testing.assert_array_equal(r.codes, pack_codes_ref(r.descriptors))


def test_fc_features_need_head_weights(empty_hub, alex):
    with pytest.raises(WeightsNotFoundError, match="fc6/fc7"):
        RoIExtractor(alex, "fc7")


def test_bad_arguments(alex):
    with pytest.raises(ValueError, match="feature"):
        RoIExtractor(alex, "conv-mean")
    with pytest.raises(ValueError, match="batch_size"):
        RoIExtractor(alex, batch_size=0)
    with pytest.raises(ValueError, match="max_side"):
        RoIExtractor(alex, max_side=0)
    with pytest.raises(ValueError, match="K"):
        RoIExtractor(alex, K=0)
    ex = RoIExtractor(alex, K=5)
    assert "K=5" in repr(ex) and ex.K == 5 and ex.dim == 256


@pytest.mark.parametrize("device", DEVICES)
def test_devices_agree(kernels, device):
    torch.manual_seed(0)
    bb = build_backbone("alexnet", "random")
    imgs = _photos()[:2]
    cpu = _ex(bb, device="cpu").extract(imgs)
    dev = _ex(bb, device=device, amp=False).extract(imgs)
    for a, b in zip(cpu, dev):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.descriptors, b.descriptors, rtol=1e-3, atol=1e-4)
    if device == "cuda":  # fp16 autocast: same boxes for nearly all RoIs, close descriptors
        amp = _ex(bb.to("cuda"), device="cuda", amp=True).extract(imgs)
        for a, b in zip(cpu, amp):
            g = float(np.dot(a.global_descriptor, b.global_descriptor))
            assert g > 0.99


def test_small_ops_threads(kernels, alex):
    n = torch.get_num_threads()
    imgs = _photos()[:2]
    a = _ex(alex, small_ops_threads=1).extract(imgs)
    assert torch.get_num_threads() == n  # restored
    b = _ex(alex, small_ops_threads=None).extract(imgs)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.boxes, y.boxes)
        np.testing.assert_allclose(x.descriptors, y.descriptors, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="small_ops_threads"):
        _ex(alex, small_ops_threads=0)


# ----------------------------------------------------------------------------------------
# conv-gem and multi-scale extraction
# ----------------------------------------------------------------------------------------
def test_cells_at_cover_the_same_pixels():
    from roiret.cnn.extractor import _cells_at

    # hand-checked: cells x 1..5, y 3..7 at half size -> x 0..3 (ceil 2.5), y 1..4 (ceil 3.5)
    got = _cells_at(torch.tensor([[0.0, 1, 3, 5, 7]]), 0.5, 0.5, (10, 10))
    assert got.tolist() == [[0.0, 0, 1, 3, 4]]
    rng = np.random.default_rng(11)
    stride, W, H = 16, 17, 13
    for sx, sy in [(0.5, 0.5), (0.707, 0.70), (0.3, 0.41), (1.5, 1.5)]:
        w2, h2 = int(np.ceil(W * sx)), int(np.ceil(H * sy))
        x1, y1 = rng.integers(0, W - 1, 50), rng.integers(0, H - 1, 50)
        cells = np.stack([np.zeros(50), x1, y1, x1 + rng.integers(1, W - x1 + 1), y1 + rng.integers(1, H - y1 + 1)], 1)
        out = _cells_at(torch.tensor(cells, dtype=torch.float32), sx, sy, (h2, w2)).numpy()
        for c, o in zip(cells, out):
            for lo, hi, olo, ohi, f, n in ((c[1], c[3], o[1], o[3], sx, w2), (c[2], c[4], o[2], o[4], sy, h2)):
                px_lo, px_hi = lo * stride * f, hi * stride * f  # the RoI's pixels on the resized image
                assert olo * stride <= px_lo + 1e-3 and (olo + 1) * stride > px_lo - 1e-3  # first covering cell
                assert ohi * stride >= min(px_hi, n * stride) - 1e-3 and ohi <= n  # covers, inside the map
                assert ohi - 1 < px_hi / stride + 1e-3 and ohi > olo  # last covering cell, never empty


def _gem_loop(f: np.ndarray, c, p: float) -> np.ndarray:
    """GeM of the map ``f`` (D, H, W) inside the cell box ``c``."""
    return pool_rois_ref(f[None], np.array([[0, *c]], np.float64), "gem", p)[0]


def test_multiscale_gem_equals_reference(kernels, alex):
    from roiret.cnn.backbones import images_to_tensor

    img = _photos()[0]
    one = _ex(alex, feature="conv-gem", gem_p=3.0).extract_one(img)
    ms = _ex(alex, feature="conv-gem", gem_p=3.0, scales=(1.0, 0.5)).extract_one(img)
    np.testing.assert_array_equal(ms.boxes, one.boxes)  # RoIs come from the scale-1 map
    np.testing.assert_array_equal(ms.scores, one.scores)
    x = images_to_tensor([img], alex.mean, alex.std, torch.device("cpu"))
    H, W = x.shape[2:]
    xs = torch.nn.functional.interpolate(x, size=(H // 2, W // 2), mode="bilinear", antialias=True)
    with torch.no_grad():
        f1, f2 = alex(x)[0].numpy(), alex(xs)[0].numpy()

    def unit(v):
        return v / np.linalg.norm(v)

    for box, d in zip(ms.boxes, ms.descriptors):
        c1 = [box[0] // 16, box[1] // 16, np.ceil(box[2] / 16), np.ceil(box[3] / 16)]
        c1 = [c1[0], c1[1], min(c1[2], f1.shape[2]), min(c1[3], f1.shape[1])]
        # the same pixels at half size: floor of the start, ceiling of the end, in half-size cells
        c2 = [np.floor(c1[0] / 2), np.floor(c1[1] / 2), np.ceil(c1[2] / 2), np.ceil(c1[3] / 2)]
        want = unit(unit(_gem_loop(f1, c1, 3.0)) + unit(_gem_loop(f2, c2, 3.0)))
        np.testing.assert_allclose(d, want, rtol=1e-4, atol=1e-5)
    g = unit(unit(_gem_loop(f1, [0, 0, f1.shape[2], f1.shape[1]], 3)) + unit(_gem_loop(f2, [0, 0, 99, 99], 3)))
    np.testing.assert_allclose(ms.global_descriptor, g, rtol=1e-4, atol=1e-5)


def test_single_scale_gem_is_pooled_inside_the_boxes(kernels, alex):
    img = _photos()[1]
    r = _ex(alex, feature="conv-gem", gem_p=2.0).extract_one(img)
    from roiret.cnn.backbones import images_to_tensor

    with torch.no_grad():
        f = alex(images_to_tensor([img], alex.mean, alex.std, torch.device("cpu")))[0].numpy()
    for box, d in zip(r.boxes, r.descriptors):
        c = [box[0] // 16, box[1] // 16, min(np.ceil(box[2] / 16), f.shape[2]), min(np.ceil(box[3] / 16), f.shape[1])]
        want = _gem_loop(f, c, 2.0)
        np.testing.assert_allclose(d, want / np.linalg.norm(want), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "scales, match",
    [
        ((0.5,), "including 1.0"),
        ((1.0, 1), "distinct"),
        ((1.0, 3.0), r"\(0, 2\]"),
        ((), "non-empty"),
        ("1", "sequence"),
    ],
)
def test_bad_scales(alex, scales, match):
    with pytest.raises(ValueError, match=match):
        RoIExtractor(alex, "conv-gem", scales=scales)


def test_scales_and_gem_p_checks(alex):
    with pytest.raises(ValueError, match="only the conv"):
        RoIExtractor(alex, "fc7", scales=(1.0, 0.5), head_weights="random")
    with pytest.raises(ValueError, match="gem_p"):
        RoIExtractor(alex, "conv-gem", gem_p=0.5)
    ex = RoIExtractor(alex, "conv-gem", gem_p=4, scales=[0.5, 1])
    assert ex.scales == (1.0, 0.5) and ex.gem_p == 4.0
    assert "gem_p=4.0" in repr(ex) and "scales=(1.0, 0.5)" in repr(ex)
