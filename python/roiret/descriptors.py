"""RoI descriptors (the paper's 3.2.3, plus ``roialign-fc``).

RoIs are passed in torchvision's flat form: a ``(R, 5)`` float tensor of
``[batch_index, x1, y1, x2, y2]`` rows (see :func:`flatten_rois`). Descriptors come back as
``(R, dim)`` float32 rows in the same order.

============== ====== ==============================================================
feature        dim    how
============== ====== ==============================================================
``conv-max``   D      max of the feature map inside the RoI (no extra forward pass)
``conv-sum``   D      sum of the feature map inside the RoI (integral image)
``fc7``        4096   crop the RoI from the image, resize to 224², AlexNet/VGG16 → fc7;
                      all crops of a batch go through the network together
``roialign-fc`` 4096  RoIAlign on conv5 → pool5 size → fc6/fc7 (one trunk pass)
============== ====== ==============================================================

For ``conv-*`` the boxes are in feature cells (``x2``/``y2`` exclusive, rounded to whole
cells); for ``fc7`` / ``roialign-fc`` they are in image pixels (continuous coordinates,
pixel ``i`` covers ``[i, i+1)``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
import torch.nn.functional as F

__all__ = [
    "FEATURES",
    "ConvPool",
    "CropFC7",
    "RoIAlignFC",
    "crop_rois",
    "fc7_from_crops",
    "flatten_rois",
    "pool_rois",
    "roialign_fc",
]

FEATURES = ("conv-max", "conv-sum", "fc7", "roialign-fc")


def _check_rois(rois: torch.Tensor, batch: int, name: str = "rois") -> None:
    if not isinstance(rois, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor (R, 5), got {type(rois).__name__}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"{name}: expected shape (R, 5) [batch_index, x1, y1, x2, y2], "
                         f"got {tuple(rois.shape)}")
    if rois.numel() and (rois[:, 0].min() < 0 or rois[:, 0].max() >= batch):
        raise ValueError(f"{name}: batch indices must be in [0, {batch}), got "
                         f"[{int(rois[:, 0].min())}, {int(rois[:, 0].max())}]")


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
# conv-max / conv-sum
# ----------------------------------------------------------------------------------------
def pool_rois(fmap: torch.Tensor, rois: torch.Tensor, mode: str = "max") -> torch.Tensor:
    """Max- or sum-pool ``fmap`` ``(B, D, H, W)`` inside each RoI (feature cells, rounded
    to whole cells, ``x2``/``y2`` exclusive, clipped to the map). Returns ``(R, D)``
    float32. An RoI with no cell inside the map pools to zeros.

    ``max`` uses :func:`torchvision.ops.roi_pool` (1×1 output, exact on whole cells);
    ``sum`` reads a float64 integral image at the four corners.
    """
    if mode not in ("max", "sum"):
        raise ValueError(f"mode must be 'max' or 'sum', got {mode!r}")
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
        ii = F.pad(f.double().cumsum(2).cumsum(3), (1, 0, 1, 0))  # (B, D, H+1, W+1)
        flat = ii.flatten(2)  # (B, D, (H+1)(W+1))
        Wp = W + 1

        def at(y, x):  # (R, D)
            return flat[b, :, y * Wp + x]

        out = at(y2, x2) - at(y1, x2) - at(y2, x1) + at(y1, x1)
        out = out.float()
    else:
        from torchvision.ops import roi_pool

        # roi_pool bins are inclusive of their rounded end cell: pass x2-1 / y2-1
        boxes = torch.stack([b.float(), x1.float(), y1.float(),
                             (x2 - 1).clamp(min=0).float(), (y2 - 1).clamp(min=0).float()], 1)
        out = roi_pool(f, boxes, output_size=(1, 1), spatial_scale=1.0).view(R, D)
    return out.masked_fill(empty.unsqueeze(1), 0.0)


class ConvPool(nn.Module):
    """``conv-max`` / ``conv-sum`` as a module: ``forward(fmap, rois) -> (R, D)``."""

    def __init__(self, mode: str = "max"):
        super().__init__()
        if mode not in ("max", "sum"):
            raise ValueError(f"mode must be 'max' or 'sum', got {mode!r}")
        self.mode = mode

    def forward(self, fmap: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return pool_rois(fmap, rois, self.mode)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


# ----------------------------------------------------------------------------------------
# fc7 on image crops
# ----------------------------------------------------------------------------------------
def crop_rois(
    images: torch.Tensor, rois: torch.Tensor, size: int = 224, sampling_ratio: int = 0
) -> torch.Tensor:
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
    return roi_align(x, r, output_size=(int(size), int(size)), spatial_scale=1.0,
                     sampling_ratio=int(sampling_ratio), aligned=True)


def fc7_from_crops(backbone, head, crops: torch.Tensor) -> torch.Tensor:
    """Run ``(N, 3, S, S)`` normalised crops through trunk → pool5 → (adaptive average
    pool to the head's input size, as torchvision does) → fc6/fc7. Returns ``(N, 4096)``."""
    f = backbone.trunk(crops)
    f = backbone.pool5(f)
    p = head.pool_size
    if f.shape[-2:] != (p, p):
        f = F.adaptive_avg_pool2d(f, (p, p))
    return head(f)


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return torch.autocast(device_type="cpu", enabled=False)


class CropFC7(nn.Module):
    """The paper's fc7 RoI feature: crop every RoI from the (normalised) image, resize to
    ``crop_size``², and run AlexNet (or VGG16) through fc7 — all crops of a batch together,
    in chunks of ``chunk`` crops. ``forward(images, rois) -> (R, 4096)``."""

    def __init__(self, backbone, head, crop_size: int = 224, chunk: int = 64,
                 sampling_ratio: int = 0, amp: bool = True):
        super().__init__()
        if getattr(backbone, "pool5", None) is None:
            raise ValueError(f"fc7 needs an AlexNet/VGG16 backbone, got {backbone.name!r}")
        if backbone.arch != head.arch:
            raise ValueError(f"backbone {backbone.arch!r} and head {head.arch!r} differ")
        self.backbone, self.head = backbone, head
        self.crop_size, self.chunk, self.sampling_ratio, self.amp = int(crop_size), int(chunk), int(sampling_ratio), bool(amp)
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")

    @torch.no_grad()
    def forward(self, images: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        outs = []
        for s in range(0, rois.shape[0], self.chunk):
            crops = crop_rois(images, rois[s: s + self.chunk], self.crop_size, self.sampling_ratio)
            with _autocast(crops.device, self.amp):
                outs.append(fc7_from_crops(self.backbone, self.head, crops).float())
        if not outs:
            return images.new_zeros((0, self.head.out_dim), dtype=torch.float32)
        return torch.cat(outs, 0)


# ----------------------------------------------------------------------------------------
# roialign-fc
# ----------------------------------------------------------------------------------------
def _prepool_size(backbone, head) -> int:
    """Side that backbone.pool5 turns into head.pool_size (AlexNet 13 → 6, VGG16 14 → 7)."""
    p = head.pool_size
    for n in range(p, 4 * p + 4):
        if backbone.pool5(torch.zeros(1, 1, n, n)).shape[-1] == p:
            return n
    raise ValueError("cannot find the pool5 input size")  # pragma: no cover


def roialign_fc(fmap: torch.Tensor, rois: torch.Tensor, backbone, head,
                sampling_ratio: int = 2) -> torch.Tensor:
    """RoIAlign the conv5 map ``fmap`` inside each RoI (pixels; ``spatial_scale =
    1/stride``, ``aligned=True``) to the size that the network's own pool5 turns into the
    fc6 input (AlexNet 13×13 → 6×6), apply pool5, then fc6/fc7: the crop-and-fc7 feature
    without a second trunk pass. Returns ``(R, 4096)``."""
    from torchvision.ops import roi_align

    _check_rois(rois, fmap.shape[0])
    n = _prepool_size(backbone, head)
    a = roi_align(fmap.float(), rois.to(fmap.device, torch.float32), output_size=(n, n),
                  spatial_scale=1.0 / backbone.stride, sampling_ratio=int(sampling_ratio),
                  aligned=True)
    return head(backbone.pool5(a))


class RoIAlignFC(nn.Module):
    """``roialign-fc`` as a module: ``forward(fmap, rois) -> (R, 4096)``."""

    def __init__(self, backbone, head, sampling_ratio: int = 2, chunk: int = 256, amp: bool = True):
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
                outs.append(roialign_fc(fmap, rois[s: s + self.chunk], self.backbone,
                                        self.head, self.sampling_ratio).float())
        if not outs:
            return fmap.new_zeros((0, self.head.out_dim), dtype=torch.float32)
        return torch.cat(outs, 0)
