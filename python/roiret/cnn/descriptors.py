"""RoI descriptors (the paper's 3.2.3, plus ``roialign-fc``).

RoIs are passed in torchvision's flat form: a ``(R, 5)`` float tensor of
``[batch_index, x1, y1, x2, y2]`` rows (see :func:`flatten_rois`). Descriptors come back as
``(R, dim)`` float32 rows in the same order.

============== ====== ==============================================================
feature        dim    how
============== ====== ==============================================================
``conv-max``   D      max of the feature map inside the RoI (no extra forward pass)
``conv-sum``   D      sum of the feature map inside the RoI (integral image)
``conv-gem``   D      generalised mean (GeM, Radenović et al.) of the feature map inside
                      the RoI: ``(mean x^p)^(1/p)``; p = 1 is the average, large p tends
                      to the max
``fc7``        4096   crop the RoI from the image, resize to 224², AlexNet/VGG16 → fc7;
                      all crops of a batch go through the network together
``roialign-fc`` 4096  RoIAlign on conv5 → pool5 size → fc6/fc7 (one trunk pass)
============== ====== ==============================================================

For ``conv-*`` the boxes are in feature cells (``x2``/``y2`` exclusive, rounded to whole
cells); for ``fc7`` / ``roialign-fc`` they are in image pixels (continuous coordinates,
pixel ``i`` covers ``[i, i+1)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..params import DEFAULT_GEM_P, FEATURES, check_gem_p

if TYPE_CHECKING:  # pragma: no cover
    from .backbones import Backbone, FCHead

__all__ = [
    "FEATURES",
    "ConvPool",
    "CropFC7",
    "RoIAlignFC",
    "crop_rois",
    "fc7_from_crops",
    "flatten_rois",
    "gem_global",
    "pool_rois",
    "roialign_fc",
]


def _check_rois(rois: torch.Tensor, batch: int, name: str = "rois") -> None:
    if not isinstance(rois, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor (R, 5), got {type(rois).__name__}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"{name}: expected shape (R, 5) [batch_index, x1, y1, x2, y2], got {tuple(rois.shape)}")
    if rois.numel() and (rois[:, 0].min() < 0 or rois[:, 0].max() >= batch):
        raise ValueError(
            f"{name}: batch indices must be in [0, {batch}), got [{int(rois[:, 0].min())}, {int(rois[:, 0].max())}]"
        )


def flatten_rois(boxes: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(B, K, 4)`` boxes (+ ``(B, K)`` bool ``valid``) → ``(R, 5)`` rows
    ``[batch_index, x1, y1, x2, y2]`` of the valid boxes, image by image, K order kept."""
    if boxes.dim() != 3 or boxes.shape[2] != 4:
        raise ValueError(f"boxes: expected (B, K, 4), got {tuple(boxes.shape)}")
    B, K, _ = boxes.shape
    bidx = torch.arange(B, device=boxes.device, dtype=boxes.dtype).view(B, 1, 1).expand(B, K, 1)
    rows = torch.cat([bidx, boxes], dim=2)
    if valid is None:
        return rows.reshape(B * K, 5)
    if valid.shape != (B, K):
        raise ValueError(f"valid: expected ({B}, {K}), got {tuple(valid.shape)}")
    return rows[valid.to(torch.bool)]


# ----------------------------------------------------------------------------------------
# conv-max / conv-sum / conv-gem
# ----------------------------------------------------------------------------------------
#: pooling modes of :func:`pool_rois`
POOL_MODES = ("max", "sum", "gem")
#: GeM's floor on activations (as in Radenović et al.'s code): x^p of a zero stays finite
GEM_EPS = 1e-6


def _gem_powers(f: torch.Tensor, p: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``((f / m)^p, m)`` with ``m`` the per-image, per-channel maximum of the map (at least
    GEM_EPS). The powers are in [0, 1], float64: a large ``p`` can neither overflow nor
    (for cells above ~1e-4 of their channel's maximum, at p = 64) underflow."""
    x = f.clamp(min=GEM_EPS)
    m = x.amax(dim=(2, 3), keepdim=True)
    # float64 where the device has it (CPU, CUDA); float32 elsewhere (e.g. Apple's MPS)
    dt = torch.float64 if x.device.type in ("cpu", "cuda") else torch.float32
    return (x.to(dt) / m.to(dt)).pow(p), m


def gem_global(fmap: torch.Tensor, p: float = DEFAULT_GEM_P) -> torch.Tensor:
    """GeM of the whole map ``(B, D, H, W)`` → ``(B, D)``: ``(mean over cells of x^p)^(1/p)``
    (activations floored at GEM_EPS)."""
    p = check_gem_p(p)
    w, m = _gem_powers(fmap.float(), p)
    return (w.mean(dim=(2, 3)).pow(1.0 / p) * m[:, :, 0, 0]).float()


def pool_rois(fmap: torch.Tensor, rois: torch.Tensor, mode: str = "max", p: float = DEFAULT_GEM_P) -> torch.Tensor:
    """Max-, sum- or GeM-pool ``fmap`` ``(B, D, H, W)`` inside each RoI (feature cells,
    rounded to whole cells, ``x2``/``y2`` exclusive, clipped to the map). Returns ``(R, D)``
    float32. An RoI with no cell inside the map pools to zeros.

    ``max`` answers range-maximum queries from a sparse table over the rows (log2 H
    levels of pairwise maxima; two lookups give the max over any row range) and then masks
    the columns; ``sum`` contracts the map with 0/1 row and column masks (two small
    matrix products per image); ``gem`` (exponent ``p``) is the box sum of ``x^p`` divided
    by the box's cell count, to the power ``1/p`` (activations floored at GEM_EPS). All are
    vectorised over the RoIs and run on any device.
    """
    if mode not in POOL_MODES:
        raise ValueError(f"mode must be one of {list(POOL_MODES)}, got {mode!r}")
    if mode == "gem":
        p = check_gem_p(p)
    if fmap.dim() != 4:
        raise ValueError(f"fmap: expected (B, D, H, W), got {tuple(fmap.shape)}")
    _check_rois(rois, fmap.shape[0])
    B, D, H, W = fmap.shape
    R = rois.shape[0]
    if R == 0:
        return fmap.new_zeros((0, D), dtype=torch.float32)
    f = fmap.float()
    r = rois.to(device=f.device, dtype=torch.float32)
    b = r[:, 0].round().long()
    x1 = r[:, 1].round().clamp(0, W).long()
    y1 = r[:, 2].round().clamp(0, H).long()
    x2 = r[:, 3].round().clamp(0, W).long()
    y2 = r[:, 4].round().clamp(0, H).long()
    empty = (x2 <= x1) | (y2 <= y1)
    if mode == "sum":
        out = _box_sums(f, b, x1, y1, x2, y2)
    elif mode == "gem":
        w, m = _gem_powers(f, p)
        cells = ((x2 - x1) * (y2 - y1)).clamp(min=1).to(w.dtype).unsqueeze(1)
        out = ((_box_sums(w, b, x1, y1, x2, y2) / cells).clamp(min=0).pow(1.0 / p) * m[b, :, 0, 0]).float()
    else:
        out = _range_max(f, b, x1, y1, x2, y2)
    return out.masked_fill(empty.unsqueeze(1), 0.0)


def _box_sums(
    f: torch.Tensor, b: torch.Tensor, x1: torch.Tensor, y1: torch.Tensor, x2: torch.Tensor, y2: torch.Tensor
) -> torch.Tensor:
    """Sum of ``f[b, :, y1:y2, x1:x2]`` per RoI → ``(R, D)``: per image, the map times
    0/1 column masks (one matmul), then the row masks."""
    B, D, H, W = f.shape
    R = b.shape[0]
    ar_h = torch.arange(H, device=f.device)
    ar_w = torch.arange(W, device=f.device)
    rmask = ((ar_h >= y1.unsqueeze(1)) & (ar_h < y2.unsqueeze(1))).to(f.dtype)  # (R, H)
    cmask = ((ar_w >= x1.unsqueeze(1)) & (ar_w < x2.unsqueeze(1))).to(f.dtype)  # (R, W)
    out = f.new_empty((R, D))
    for img in torch.unique(b).tolist():
        sel = (b == img).nonzero().squeeze(1)
        t = f[img].reshape(D * H, W) @ cmask[sel].T  # (D*H, r)
        out[sel] = torch.einsum("dhr,rh->rd", t.view(D, H, -1), rmask[sel])
    return out


def _range_max(
    f: torch.Tensor, b: torch.Tensor, x1: torch.Tensor, y1: torch.Tensor, x2: torch.Tensor, y2: torch.Tensor
) -> torch.Tensor:
    """Max of ``f[b, :, y1:y2, x1:x2]`` per RoI → ``(R, D)`` (garbage for empty RoIs,
    which the caller masks)."""
    B, D, H, W = f.shape
    R = b.shape[0]
    length = (y2 - y1).clamp(min=1, max=H)
    floor_log2 = torch.tensor([0] + [n.bit_length() - 1 for n in range(1, H + 1)], device=f.device)
    lvl = floor_log2[length]  # 2**lvl <= length < 2**(lvl + 1)
    ya = y1.clamp(min=0, max=H - 1)
    rows = f.new_empty((R, D, W))
    level = f  # level[:, :, y] = max(f[:, :, y : y + 2**j]), H - 2**j + 1 rows
    for j in range(int(lvl.max()) + 1 if R else 0):
        if j:
            span = 1 << (j - 1)
            level = torch.maximum(level[:, :, :-span], level[:, :, span:])
        sel = (lvl == j).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        top = ya[sel].clamp(max=level.shape[2] - 1)
        bottom = (y2[sel] - (1 << j)).clamp(min=0, max=level.shape[2] - 1)
        bs = b[sel]
        rows[sel] = torch.maximum(level[bs, :, top, :], level[bs, :, bottom, :])
    ar = torch.arange(W, device=f.device)
    inside = (ar >= x1.unsqueeze(1)) & (ar < x2.unsqueeze(1))  # (R, W)
    return rows.masked_fill_(~inside.unsqueeze(1), float("-inf")).amax(dim=2)


class ConvPool(nn.Module):
    """``conv-max`` / ``conv-sum`` / ``conv-gem`` as a module: ``forward(fmap, rois) -> (R, D)``."""

    def __init__(self, mode: str = "max", p: float = DEFAULT_GEM_P):
        super().__init__()
        if mode not in POOL_MODES:
            raise ValueError(f"mode must be one of {list(POOL_MODES)}, got {mode!r}")
        self.mode, self.p = mode, check_gem_p(p)

    def forward(self, fmap: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return pool_rois(fmap, rois, self.mode, self.p)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}" + (f", p={self.p}" if self.mode == "gem" else "")


# ----------------------------------------------------------------------------------------
# fc7 on image crops
# ----------------------------------------------------------------------------------------
def crop_rois(images: torch.Tensor, rois: torch.Tensor, size: int = 224, sampling_ratio: int = 0) -> torch.Tensor:
    """Crop each RoI (pixels) from ``images`` ``(B, C, H, W)`` and resize it to
    ``size × size`` in one :func:`torchvision.ops.roi_align` call (``aligned=True``).

    Output pixel ``(i, j)`` of a box ``(x1, y1, x2, y2)`` is the bilinear sample at
    ``x = x1 + (j + 0.5)·(x2 − x1)/size`` (pixel centres at ``i + 0.5``), averaged over
    ``sampling_ratio²`` points per output pixel (``0``: ``ceil(box side / size)``, i.e.
    anti-aliased when shrinking; ``1``: plain bilinear = ``cv2.resize`` INTER_LINEAR of the
    crop). Returns ``(R, C, size, size)`` float32.
    """
    from torchvision.ops import roi_align

    if images.dim() != 4:
        raise ValueError(f"images: expected (B, C, H, W), got {tuple(images.shape)}")
    _check_rois(rois, images.shape[0])
    if int(size) < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    x = images.float()
    r = rois.to(device=x.device, dtype=torch.float32)
    return cast(
        torch.Tensor,
        roi_align(
            x,
            r,
            output_size=(int(size), int(size)),
            spatial_scale=1.0,
            sampling_ratio=int(sampling_ratio),
            aligned=True,
        ),
    )


def fc7_from_crops(backbone: Backbone, head: FCHead, crops: torch.Tensor) -> torch.Tensor:
    """Run ``(N, 3, S, S)`` normalised crops through trunk → pool5 → (adaptive average
    pool to the head's input size, as torchvision does) → fc6/fc7. Returns ``(N, 4096)``."""
    f = backbone.trunk(crops)
    f = cast(nn.Module, backbone.pool5)(f)  # AlexNet / VGG16 backbones have a pool5
    p = head.pool_size
    if f.shape[-2:] != (p, p):
        f = F.adaptive_avg_pool2d(f, (p, p))
    return cast(torch.Tensor, head(f))


def _autocast(device: torch.device, enabled: bool) -> torch.autocast:
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return torch.autocast(device_type="cpu", enabled=False)


class CropFC7(nn.Module):
    """The paper's fc7 RoI feature: crop every RoI from the (normalised) image, resize to
    ``crop_size``², and run AlexNet (or VGG16) through fc7 — all crops of a batch together,
    in chunks of ``chunk`` crops. ``forward(images, rois) -> (R, 4096)``."""

    def __init__(
        self,
        backbone: Backbone,
        head: FCHead,
        crop_size: int = 224,
        chunk: int = 64,
        sampling_ratio: int = 0,
        amp: bool = True,
    ):
        super().__init__()
        if getattr(backbone, "pool5", None) is None:
            raise ValueError(f"fc7 needs an AlexNet/VGG16 backbone, got {backbone.name!r}")
        if backbone.arch != head.arch:
            raise ValueError(f"backbone {backbone.arch!r} and head {head.arch!r} differ")
        self.backbone, self.head = backbone, head
        self.crop_size, self.chunk, self.sampling_ratio, self.amp = (
            int(crop_size),
            int(chunk),
            int(sampling_ratio),
            bool(amp),
        )
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")

    @torch.no_grad()
    def forward(self, images: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        outs = []
        for s in range(0, rois.shape[0], self.chunk):
            crops = crop_rois(images, rois[s : s + self.chunk], self.crop_size, self.sampling_ratio)
            with _autocast(crops.device, self.amp):
                outs.append(fc7_from_crops(self.backbone, self.head, crops).float())
        if not outs:
            return images.new_zeros((0, self.head.out_dim), dtype=torch.float32)
        return torch.cat(outs, 0)


# ----------------------------------------------------------------------------------------
# roialign-fc
# ----------------------------------------------------------------------------------------
def _prepool_size(backbone: Backbone, head: FCHead) -> int:
    """Side that backbone.pool5 turns into head.pool_size (AlexNet 13 → 6, VGG16 14 → 7)."""
    p = head.pool_size
    pool5 = cast(nn.Module, backbone.pool5)  # AlexNet / VGG16 backbones have a pool5
    for n in range(p, 4 * p + 4):
        if pool5(torch.zeros(1, 1, n, n)).shape[-1] == p:
            return n
    raise ValueError("cannot find the pool5 input size")  # pragma: no cover


def roialign_fc(
    fmap: torch.Tensor, rois: torch.Tensor, backbone: Backbone, head: FCHead, sampling_ratio: int = 2
) -> torch.Tensor:
    """RoIAlign the conv5 map ``fmap`` inside each RoI (pixels; ``spatial_scale =
    1/stride``, ``aligned=True``) to the size that the network's own pool5 turns into the
    fc6 input (AlexNet 13×13 → 6×6), apply pool5, then fc6/fc7: the crop-and-fc7 feature
    without a second trunk pass. Returns ``(R, 4096)``."""
    from torchvision.ops import roi_align

    _check_rois(rois, fmap.shape[0])
    n = _prepool_size(backbone, head)
    a = roi_align(
        fmap.float(),
        rois.to(fmap.device, torch.float32),
        output_size=(n, n),
        spatial_scale=1.0 / backbone.stride,
        sampling_ratio=int(sampling_ratio),
        aligned=True,
    )
    return cast(torch.Tensor, head(cast(nn.Module, backbone.pool5)(a)))  # AlexNet / VGG16: pool5 is set


class RoIAlignFC(nn.Module):
    """``roialign-fc`` as a module: ``forward(fmap, rois) -> (R, 4096)``."""

    def __init__(self, backbone: Backbone, head: FCHead, sampling_ratio: int = 2, chunk: int = 256, amp: bool = True):
        super().__init__()
        if getattr(backbone, "pool5", None) is None:
            raise ValueError(f"roialign-fc needs an AlexNet/VGG16 backbone, got {backbone.name!r}")
        if backbone.arch != head.arch:
            raise ValueError(f"backbone {backbone.arch!r} and head {head.arch!r} differ")
        self.backbone, self.head = backbone, head
        self.sampling_ratio, self.chunk, self.amp = int(sampling_ratio), int(chunk), bool(amp)

    @torch.no_grad()
    def forward(self, fmap: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        outs = []
        for s in range(0, rois.shape[0], self.chunk):
            with _autocast(fmap.device, self.amp):
                outs.append(
                    roialign_fc(fmap, rois[s : s + self.chunk], self.backbone, self.head, self.sampling_ratio).float()
                )
        if not outs:
            return fmap.new_zeros((0, self.head.out_dim), dtype=torch.float32)
        return torch.cat(outs, 0)
