"""RoI descriptors: pooling vs loops, crops vs a reference crop+resize, fc7 paths."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _reference import pool_rois_ref
from conftest import DEVICES
from roiret.cnn import descriptors as Dm
from roiret.cnn.backbones import build_backbone, build_fc_head


def _rois():
    return np.array(
        [
            [0, 0, 0, 11, 7],  # whole map
            [0, 2, 1, 5, 4],
            [1, 10, 6, 11, 7],  # bottom-right cell
            [1, 0, 0, 1, 1],  # top-left cell
            [2, 3, 2, 3, 5],  # empty (x2 == x1)
            [2, -2, -1, 4, 30],  # clipped
            [1, 4, 0, 9, 7],
        ],
        np.float32,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["max", "sum"])
def test_pooling_equals_loop(device, mode):
    g = torch.Generator().manual_seed(1)
    f = torch.randn(3, 5, 7, 11, generator=g)  # signed values: max must not clip at 0
    rois = _rois()
    got = Dm.pool_rois(f.to(device), torch.from_numpy(rois).to(device), mode)
    assert got.shape == (len(rois), 5) and got.dtype == torch.float32
    assert got.device.type == device
    np.testing.assert_allclose(got.cpu().numpy(), pool_rois_ref(f.numpy(), rois, mode), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["max", "sum"])
def test_pooling_random_boxes(mode):
    rng = np.random.default_rng(5)
    f = torch.from_numpy(rng.standard_normal((2, 3, 13, 9)).astype(np.float32))
    x1 = rng.integers(0, 9, 40)
    y1 = rng.integers(0, 13, 40)
    rois = np.stack(
        [rng.integers(0, 2, 40), x1, y1, x1 + rng.integers(1, 9, 40), y1 + rng.integers(1, 13, 40)], 1
    ).astype(np.float32)
    got = Dm.pool_rois(f, torch.from_numpy(rois), mode)
    np.testing.assert_allclose(got.numpy(), pool_rois_ref(f.numpy(), rois, mode), rtol=1e-5, atol=1e-5)


def test_pool_module_and_errors():
    f = torch.rand(1, 2, 4, 4)
    m = Dm.ConvPool("sum")
    assert "sum" in repr(m)
    assert m(f, torch.zeros(0, 5)).shape == (0, 2)
    with pytest.raises(ValueError, match="mode"):
        Dm.ConvPool("mean")
    assert "p=2.0" in repr(Dm.ConvPool("gem", 2))
    with pytest.raises(ValueError, match=r"\(R, 5\)"):
        Dm.pool_rois(f, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="batch indices"):
        Dm.pool_rois(f, torch.tensor([[1.0, 0, 0, 1, 1]]))


# ----------------------------------------------------------------------------------------
# conv-gem: the generalised mean inside each RoI
# ----------------------------------------------------------------------------------------
def _relu_map(seed: int, shape=(3, 5, 7, 11)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(*shape, generator=g)) * 4  # post-ReLU maps, zeros included


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [1.0, 2.5, 3.0, 7.0])
def test_gem_equals_loop(device, p):
    f, rois = _relu_map(4), _rois()
    got = Dm.pool_rois(f.to(device), torch.from_numpy(rois).to(device), "gem", p)
    assert got.shape == (len(rois), 5) and got.dtype == torch.float32 and got.device.type == device
    np.testing.assert_allclose(
        got.cpu().numpy(), pool_rois_ref(f.numpy().astype(np.float64), rois, "gem", p), rtol=2e-5, atol=2e-6
    )
    # the whole map: the same number as the whole-map RoI (row 0) and as the loop
    glob = Dm.gem_global(f.to(device), p).cpu().numpy()
    np.testing.assert_allclose(
        glob, pool_rois_ref(f.numpy(), np.array([[b, 0, 0, 11, 7] for b in range(3)]), "gem", p), rtol=2e-5, atol=2e-6
    )


def test_gem_p1_is_the_average_and_large_p_tends_to_the_max():
    f, rois = _relu_map(6) + 0.01, _rois()  # strictly positive: the eps floor plays no part
    rt = torch.from_numpy(rois)
    cells = np.array([max(0, min(x2, 11) - max(x1, 0)) * max(0, min(y2, 7) - max(y1, 0)) for _, x1, y1, x2, y2 in rois])
    avg = Dm.pool_rois(f, rt, "sum").numpy() / np.maximum(cells, 1)[:, None]
    np.testing.assert_allclose(Dm.pool_rois(f, rt, "gem", 1.0).numpy(), avg, rtol=1e-5, atol=1e-6)
    mx = Dm.pool_rois(f, rt, "max").numpy()
    gaps = []
    for p in (4.0, 16.0, 64.0):
        g = Dm.pool_rois(f, rt, "gem", p).numpy()
        # max · (1/n)^(1/p) <= GeM <= max  (one cell holds the max, none exceeds it)
        assert (g <= mx * (1 + 1e-5)).all()
        assert (g >= mx * (1.0 / np.maximum(cells, 1)[:, None]) ** (1 / p) * (1 - 1e-5)).all()
        gaps.append(float(np.abs(g - mx).max()))
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 0.1 * float(mx.max())


def test_gem_large_p_does_not_overflow():
    f = torch.full((1, 2, 3, 3), 1e4)  # (1e4)^64 would overflow float32
    got = Dm.pool_rois(f, torch.tensor([[0.0, 0, 0, 3, 3]]), "gem", 64.0)
    np.testing.assert_allclose(got.numpy(), 1e4, rtol=1e-5)


@pytest.mark.parametrize("p", [0.5, 0, -1, 65, float("nan"), float("inf"), True, "3"])
def test_gem_p_is_checked(p):
    f = torch.rand(1, 2, 4, 4)
    with pytest.raises(ValueError, match="gem_p"):
        Dm.pool_rois(f, torch.tensor([[0.0, 0, 0, 2, 2]]), "gem", p)
    with pytest.raises(ValueError, match="gem_p"):
        Dm.ConvPool("gem", p)


def test_flatten_rois():
    boxes = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    valid = torch.tensor([[True, False, True], [False, True, False]])
    flat = Dm.flatten_rois(boxes, valid)
    assert flat.tolist() == [[0, 0, 1, 2, 3], [0, 8, 9, 10, 11], [1, 16, 17, 18, 19]]
    assert Dm.flatten_rois(boxes).shape == (6, 5)


# ----------------------------------------------------------------------------------------
# crops
# ----------------------------------------------------------------------------------------
def _bilinear_ref(img: np.ndarray, box, size: int) -> np.ndarray:
    """Sample img (C, H, W) at the centres of a size×size grid over box, bilinear with
    border clamping (the definition in crop_rois' docstring)."""
    C, H, W = img.shape
    x1, y1, x2, y2 = box
    out = np.zeros((C, size, size))
    for i in range(size):
        y = y1 + (i + 0.5) * (y2 - y1) / size - 0.5
        for j in range(size):
            x = x1 + (j + 0.5) * (x2 - x1) / size - 0.5
            yy, xx = min(max(y, 0.0), H - 1), min(max(x, 0.0), W - 1)
            y0, x0 = int(np.floor(yy)), int(np.floor(xx))
            y1_, x1_ = min(y0 + 1, H - 1), min(x0 + 1, W - 1)
            ly, lx = yy - y0, xx - x0
            out[:, i, j] = (
                img[:, y0, x0] * (1 - ly) * (1 - lx)
                + img[:, y0, x1_] * (1 - ly) * lx
                + img[:, y1_, x0] * ly * (1 - lx)
                + img[:, y1_, x1_] * ly * lx
            )
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_crop_of_whole_image_equals_resize(device):
    rng = np.random.default_rng(2)
    img = rng.random((3, 20, 30)).astype(np.float32)
    x = torch.from_numpy(img)[None].to(device)
    rois = torch.tensor([[0.0, 0, 0, 30, 20]], device=device)
    got = Dm.crop_rois(x, rois, size=45, sampling_ratio=1)[0].cpu().numpy()
    ref = F.interpolate(torch.from_numpy(img)[None], size=(45, 45), mode="bilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    cv = cv2.resize(img.transpose(1, 2, 0), (45, 45), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    np.testing.assert_allclose(got, cv, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_crops_equal_reference_crop_resize(device):
    rng = np.random.default_rng(3)
    imgs = rng.random((2, 3, 24, 32)).astype(np.float32)
    boxes = [(0, (4.0, 3.0, 20.0, 19.0)), (1, (10.5, 2.25, 31.0, 23.0)), (0, (0.0, 0.0, 7.0, 24.0))]
    rois = torch.tensor([[b, *bx] for b, bx in boxes], dtype=torch.float32, device=device)
    got = Dm.crop_rois(torch.from_numpy(imgs).to(device), rois, size=16, sampling_ratio=1).cpu().numpy()
    for r, (b, bx) in enumerate(boxes):
        np.testing.assert_allclose(got[r], _bilinear_ref(imgs[b], bx, 16), atol=1e-5)
    # an integer box inside the image: the crop resized by OpenCV agrees away from the
    # crop's border (there roi_align sees real neighbours, cv2 replicates the edge)
    x1, y1, x2, y2 = 4, 3, 20, 19
    crop = imgs[0][:, y1:y2, x1:x2].transpose(1, 2, 0)
    cv = cv2.resize(np.ascontiguousarray(crop), (16 * 2, 16 * 2), interpolation=cv2.INTER_LINEAR)
    up = (
        Dm.crop_rois(torch.from_numpy(imgs), torch.tensor([[0.0, x1, y1, x2, y2]]), size=32, sampling_ratio=1)[0]
        .numpy()
        .transpose(1, 2, 0)
    )
    np.testing.assert_allclose(up[1:-1, 1:-1], cv[1:-1, 1:-1], atol=1e-5)


def test_adaptive_sampling_antialiases():
    # a fine checkerboard shrunk 8x: averaged sampling gives ~0.5 everywhere, point
    # sampling does not
    board = (np.indices((64, 64)).sum(0) % 2).astype(np.float32)
    x = torch.from_numpy(board)[None, None].repeat(1, 3, 1, 1)
    rois = torch.tensor([[0.0, 0, 0, 64, 64]])
    avg = Dm.crop_rois(x, rois, size=8, sampling_ratio=0)
    np.testing.assert_allclose(avg.numpy(), 0.5, atol=1e-6)


# ----------------------------------------------------------------------------------------
# fc7 paths (random weights: the real fc6/fc7 weights cannot be downloaded here)
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def alex():
    torch.manual_seed(0)
    bb = build_backbone("alexnet", "random")
    head = build_fc_head("alexnet", "random")
    return bb, head


def _torchvision_fc7(bb, head, x):
    """The same weights inside a plain torchvision AlexNet, classifier up to fc7."""
    import torchvision

    m = torchvision.models.alexnet(weights=None).eval()
    sd = {f"features.{k}": v for k, v in bb.trunk.state_dict().items()}
    sd.update({f"classifier.{k}": v for k, v in head.fc.state_dict().items()})
    m.load_state_dict(sd, strict=False)
    with torch.no_grad():
        f = torch.flatten(m.avgpool(m.features(x)), 1)
        return m.classifier[:6](f)


def test_crop_fc7_equals_torchvision_per_crop(alex):
    bb, head = alex
    g = torch.Generator().manual_seed(4)
    imgs = torch.randn(2, 3, 96, 128, generator=g)
    rois = torch.tensor([[0.0, 0, 0, 128, 96], [1.0, 10, 20, 70, 90], [0.0, 64, 0, 128, 48]])
    fc = Dm.CropFC7(bb, head, crop_size=224, chunk=2)
    got = fc(imgs, rois)
    assert got.shape == (3, 4096)
    crops = Dm.crop_rois(imgs, rois, 224)
    np.testing.assert_allclose(got.numpy(), _torchvision_fc7(bb, head, crops).numpy(), rtol=1e-4, atol=1e-5)
    # a crop computed alone equals the batched one
    one = fc(imgs, rois[1:2])
    np.testing.assert_allclose(one.numpy(), got[1:2].numpy(), rtol=1e-4, atol=1e-5)


def test_roialign_fc_on_whole_224_map_equals_fc7(alex):
    bb, head = alex
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 3, 224, 224, generator=g)
    with torch.no_grad():
        fmap = bb(x)
    assert fmap.shape[-2:] == (13, 13)
    rois = torch.tensor([[0.0, 0, 0, 13 * 16, 13 * 16]])  # the whole map in pixels
    got = Dm.RoIAlignFC(bb, head, sampling_ratio=1)(fmap, rois)
    np.testing.assert_allclose(got.numpy(), _torchvision_fc7(bb, head, x).numpy(), rtol=1e-4, atol=1e-5)


def test_fc_paths_refuse_other_backbones(alex):
    import types

    bb, head = alex
    vgg_head = types.SimpleNamespace(arch="vgg16")  # building a real VGG16 head takes seconds
    with pytest.raises(ValueError, match="differ"):
        Dm.CropFC7(bb, vgg_head)
    with pytest.raises(ValueError, match="differ"):
        Dm.RoIAlignFC(bb, vgg_head)
    with pytest.raises(ValueError, match="chunk"):
        Dm.CropFC7(bb, head, chunk=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_fc_paths_on_cuda_match_cpu(alex):
    bb, head = alex
    g = torch.Generator().manual_seed(8)
    imgs = torch.randn(1, 3, 96, 128, generator=g)
    rois = torch.tensor([[0.0, 0, 0, 128, 96], [0.0, 10, 20, 70, 90]])
    cpu = Dm.CropFC7(bb, head, amp=False)(imgs, rois)
    bbc, hc = bb.to("cuda"), head.to("cuda")
    try:
        gpu = Dm.CropFC7(bbc, hc, amp=False)(imgs.cuda(), rois.cuda()).cpu()
        amp = Dm.CropFC7(bbc, hc, amp=True)(imgs.cuda(), rois.cuda()).cpu()
    finally:
        bb.to("cpu"), head.to("cpu")
    np.testing.assert_allclose(gpu.numpy(), cpu.numpy(), rtol=1e-3, atol=1e-3)
    cos = F.cosine_similarity(amp, cpu, dim=1)
    assert (cos > 0.99).all()
