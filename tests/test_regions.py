"""Base regions, selection and pixel mapping (the paper's 3.2.1–3.2.2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _reference import select_rois_ref
from conftest import DEVICES
from roiret.cnn import regions as R


def _naive_base_regions(f: np.ndarray, mode: str, thr: float):
    """Loop oracle: (B, D, H, W) -> boxes (B, D, 4), scores (B, D)."""
    B, D, H, W = f.shape
    boxes = np.zeros((B, D, 4), np.float32)
    scores = np.zeros((B, D), np.float64)
    for b in range(B):
        for d in range(D):
            ch = f[b, d].astype(np.float64)
            ref = {"absolute": 1.0, "relative": ch.max(), "mean": ch.mean()}[mode]
            t = thr if mode == "absolute" else thr * ref
            ys, xs = np.nonzero(ch > t)
            if len(ys) == 0:
                continue
            x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
            boxes[b, d] = (x1, y1, x2, y2)
            s = 0.0
            for y in range(y1, y2):
                for x in range(x1, x2):
                    s += ch[y, x]
            scores[b, d] = s
    return boxes, scores


def _blobs(device):
    """Hand-made map: known blobs per channel."""
    f = torch.zeros(1, 4, 8, 10)
    f[0, 0, 2:5, 3:8] = 1.0  # one blob: rows 2..4, cols 3..7
    # channel 1: empty (all zeros)
    f[0, 2, 1, 1] = 2.0  # two blobs -> their bounding box
    f[0, 2, 6, 8] = 3.0
    f[0, 3] = 0.1  # everything weak, one strong cell
    f[0, 3, 7, 9] = 5.0
    return f.to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_known_blobs(device):
    f = _blobs(device)
    boxes, scores = R.base_regions(f, "absolute", 0.0)
    assert boxes.device.type == device and boxes.dtype == torch.float32
    b = boxes.cpu().numpy()[0]
    np.testing.assert_array_equal(b[0], [3, 2, 8, 5])
    np.testing.assert_array_equal(b[1], [0, 0, 0, 0])
    np.testing.assert_array_equal(b[2], [1, 1, 9, 7])
    np.testing.assert_array_equal(b[3], [0, 0, 10, 8])  # absolute 0: the whole weak map
    s = scores.cpu().numpy()[0]
    np.testing.assert_allclose(s, [15.0, 0.0, 5.0, 0.1 * 79 + 5.0], rtol=1e-6)
    # relative 0.5: channel 3 keeps only its strong cell
    b2, s2 = R.base_regions(f, "relative", 0.5)
    np.testing.assert_array_equal(b2.cpu().numpy()[0, 3], [9, 7, 10, 8])
    np.testing.assert_array_equal(b2.cpu().numpy()[0, 2], [1, 1, 9, 7])  # 2.0 > 0.5 * 3.0
    assert float(s2[0, 3]) == pytest.approx(5.0)


def test_relative_two_blobs_kept():
    f = _blobs("cpu")
    b, _ = R.base_regions(f, "relative", 0.7)  # 2.0 < 0.7 * 3.0 -> only the 3.0 cell
    np.testing.assert_array_equal(b.numpy()[0, 2], [8, 6, 9, 7])
    b, _ = R.base_regions(f, "relative", 0.6)  # 2.0 > 1.8 -> both cells
    np.testing.assert_array_equal(b.numpy()[0, 2], [1, 1, 9, 7])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "mode,thr",
    [("absolute", 0.0), ("absolute", 0.8), ("relative", 0.3), ("relative", 0.9), ("mean", 1.0), ("mean", 2.5)],
)
def test_base_regions_equal_loop(device, mode, thr):
    g = torch.Generator().manual_seed(7)
    f = torch.relu(torch.randn(3, 16, 7, 11, generator=g) - 0.8)  # sparse, some empty channels
    f[1, 5] = 0
    boxes, scores = R.base_regions(f.to(device), mode, thr)
    rb, rs = _naive_base_regions(f.numpy(), mode, thr)
    np.testing.assert_array_equal(boxes.cpu().numpy(), rb)
    np.testing.assert_allclose(scores.cpu().numpy(), rs, rtol=1e-5, atol=1e-5)


def test_binarize_rules():
    f = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    assert R.binarize(f, "absolute", 1.0).flatten().tolist() == [False, False, True, True]
    assert R.binarize(f, "relative", 0.5).flatten().tolist() == [False, False, False, True]
    assert R.binarize(f, "mean", 1.0).flatten().tolist() == [False, False, True, True]  # mean 1.75
    with pytest.raises(ValueError, match="threshold_mode"):
        R.binarize(f, "otsu", 0.5)
    with pytest.raises(ValueError, match="finite"):
        R.binarize(f, "absolute", float("nan"))
    with pytest.raises(ValueError, match=r"\(B, D, H, W\)"):
        R.binarize(f[0], "absolute", 0.0)
    with pytest.raises(TypeError, match="floating"):
        R.binarize(f.long(), "absolute", 0.0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        R.binarize(f.numpy(), "absolute", 0.0)


@pytest.mark.parametrize("device", DEVICES)
def test_boxes_to_pixels(device):
    cells = torch.tensor([[[0, 0, 1, 1], [2, 3, 5, 4], [28, 20, 30, 22]]], dtype=torch.float32, device=device)
    px = R.boxes_to_pixels(cells, 16, torch.tensor([[470.0, 340.0]]))
    np.testing.assert_array_equal(
        px.cpu().numpy()[0], [[0, 0, 16, 16], [32, 48, 80, 64], [448, 320, 470, 340]]
    )  # clipped
    with pytest.raises(ValueError, match="stride"):
        R.boxes_to_pixels(cells, 0, torch.tensor([[470.0, 340.0]]))
    with pytest.raises(ValueError, match="image_sizes"):
        R.boxes_to_pixels(cells, 16, torch.tensor([[470.0, 340.0], [1.0, 1.0]]))


def test_global_boxes():
    g = R.global_boxes(torch.tensor([[30.0, 22.0], [5.0, 7.0]]))
    assert g.tolist() == [[0, 0, 30, 22], [0, 0, 5, 7]]


def _random_maps(seed, B=4, D=64, H=9, W=13):
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(B, D, H, W, generator=g) * torch.rand(B, D, 1, 1, generator=g) - 0.3)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "params", [(5, 0.0, 1e9, 0.95), (10, 0.05, 3.0, 0.95), (20, 0.1, 2.0, 0.5), (3, 0.2, 4.0, 0.95)]
)
def test_selection_equals_numpy_reference(seed, params):
    K = pytest.importorskip("roiret._kernels")  # the native kernel against the oracle
    k, t_min, t_rate, t_iou = params
    f = _random_maps(seed)
    boxes, scores = R.base_regions(f, "relative", 0.4)
    sizes = np.array([[13, 9]] * 4, np.float32)
    got = K.select_rois(boxes.numpy(), scores.numpy(), sizes, k, t_min, t_rate, t_iou)
    want = select_rois_ref(boxes.numpy(), scores.numpy(), sizes, k, t_min, t_rate, t_iou)
    np.testing.assert_array_equal(got, want)
    via = R.select_regions(boxes, scores, torch.from_numpy(sizes), k, t_min, t_rate, t_iou)
    np.testing.assert_array_equal(via.numpy(), want)


@pytest.mark.parametrize("device", DEVICES)
def test_detect_rois_end_to_end(kernels, device):
    f = _random_maps(3).to(device)
    B, D, H, W = f.shape
    sizes = torch.tensor([[W * 16 - 5, H * 16 - 3]] * B, dtype=torch.float32)
    r = R.detect_rois(
        f, sizes, stride=16, K=6, t_min=0.02, t_rate=3.0, t_iou=0.9, threshold_mode="relative", threshold=0.4
    )
    assert r.channels.shape == (B, 6) and r.channels.device.type == device
    boxes, scores = R.base_regions(f.cpu(), "relative", 0.4)
    want = select_rois_ref(boxes.numpy(), scores.numpy(), np.array([[W, H]] * B, np.float32), 6, 0.02, 3.0, 0.9)
    np.testing.assert_array_equal(r.channels.cpu().numpy(), want)
    for b in range(B):
        for j in range(6):
            d = want[b, j]
            if d < 0:
                assert not r.valid[b, j] and r.boxes[b, j].abs().sum() == 0
                continue
            cell = boxes[b, d].numpy()
            np.testing.assert_array_equal(r.cells[b, j].cpu().numpy(), cell)
            px = np.minimum(cell * 16, [sizes[b, 0], sizes[b, 1]] * 2)
            np.testing.assert_array_equal(r.boxes[b, j].cpu().numpy(), px)
            assert float(r.scores[b, j]) == pytest.approx(float(scores[b, d]), rel=1e-5)
    assert (r.counts() <= 6).all()
    # scores come out in descending order
    for b in range(B):
        s = r.scores[b][r.valid[b]].cpu().numpy()
        assert (np.diff(s) <= 0).all()


def test_detector_module_and_errors(kernels):
    det = R.RoIDetector(16, R.RegionParams(K=4, t_min=0.0, t_rate=10.0))
    assert "K=4" in repr(det)
    out = det(_random_maps(4), torch.tensor([[208.0, 144.0]] * 4))
    assert out.channels.shape == (4, 4)
    for bad in (dict(K=0), dict(t_min=1.5), dict(t_rate=0.5), dict(t_iou=0.0)):
        with pytest.raises(ValueError):
            R.RoIDetector(16, R.RegionParams(**bad))
    with pytest.raises(ValueError, match="image_sizes"):
        det(_random_maps(4), torch.tensor([[208.0, 144.0]]))


def test_all_regions_filtered(kernels):
    f = torch.zeros(2, 8, 5, 5)
    r = R.detect_rois(f, torch.tensor([[80.0, 80.0]] * 2), stride=16, K=3)
    assert not r.valid.any() and (r.channels == -1).all()
