"""One call from images to RoI results: trunk, RoIs, descriptors, whitening and codes.

>>> ex = RoIExtractor("alexnet", feature="conv-max", K=20, device="cpu")  # doctest: +SKIP
>>> res = ex.extract(["a.jpg", "b.jpg"])                                   # doctest: +SKIP
>>> res[0].boxes.shape, res[0].codes.dtype                                 # doctest: +SKIP
((20, 4), dtype('uint64'))

Per image (:class:`RoIResult`): the K selected RoIs as boxes in the input image's pixels,
their scores (activation sums), float descriptors (PCA-whitened when a whitening is set,
L2-normalised), packed binary codes, and the same for the whole image (the paper's
"baseline" global region).

Images are read with :func:`roiret.imageio.load_image` (paths, bytes or arrays; EXIF
orientation applied), shrunk so the longest side is ``max_side`` (500, the paper's), and
enlarged if smaller than the network's minimum input. Images of the same size are batched
together (``batch_size``), in chunks of ``chunk_size`` images so memory stays bounded; the
trunk runs once per batch (under fp16 autocast on CUDA when ``amp``).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Union, cast, overload

import numpy as np
import torch

from ..errors import ImageError
from ..io import PathLike
from ..io.images import ImageSource, SkippedImageWarning, check_box, load_image, resize_max_side
from ..params import (
    DEFAULT_GEM_P,
    DEFAULT_K,
    DEFAULT_T_IOU,
    DEFAULT_T_MIN,
    DEFAULT_T_RATE,
    DEFAULT_THRESHOLD,
    DEFAULT_THRESHOLD_MODE,
    RegionParams,
    check_gem_p,
    check_scales,
)
from .backbones import Backbone, FCHead, build_backbone, build_fc_head, images_to_tensor, resolve_device
from .descriptors import FEATURES, CropFC7, RoIAlignFC, flatten_rois, gem_global, pool_rois
from .regions import RoIDetector, RoIs
from .whitening import PCAWhitening, l2_normalize

__all__ = ["RoIExtractor", "RoIResult", "prepare_image"]


def _pack_codes(x: np.ndarray) -> np.ndarray:
    from . import regions  # regions._kernels_module: the one place the native core is looked up

    return np.asarray(regions._kernels_module().pack_codes(x))


BoxLike = Optional[Sequence[float]]
#: :func:`prepare_image`'s result: (uint8 RGB image, scale, (width, height) before resizing)
Prepared = Tuple[np.ndarray, float, Tuple[int, int]]
#: ``raw=True`` result of one image: (raw RoI descriptors, raw global descriptor or None)
RawRows = Tuple[np.ndarray, Optional[np.ndarray]]

# torch.set_num_threads is process-wide: extractors change it one at a time
_THREADS_LOCK = threading.Lock()


@dataclass
class RoIResult:
    """RoIs of one image.

    Attributes
    ----------
    boxes : (K', 4) float32
        ``x1, y1, x2, y2`` in pixels of the image as given (before any resizing), K' ≤ K.
    scores : (K',) float32
        Activation sum of each RoI's base region (selection order: descending).
    descriptors : (K', dim) float32
        RoI descriptors, whitened (if set) and L2-normalised.
    codes : (K', ceil(dim/64)) uint64
        Packed binary codes (bit i = descriptor_i > mean of the descriptor; bit i in word
        i // 64 at position i % 64, least significant first).
    channels : (K',) int64
        The feature-map channel each RoI came from.
    global_descriptor, global_code :
        The same for the whole image (the "baseline" region), or ``None``.
    image_size : (width, height) of the image as given; ``scale``: network input / given.
    """

    boxes: np.ndarray
    scores: np.ndarray
    descriptors: np.ndarray
    codes: np.ndarray
    channels: np.ndarray
    global_descriptor: Optional[np.ndarray]
    global_code: Optional[np.ndarray]
    image_size: Tuple[int, int]
    scale: float
    feature_size: Tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def prepare_image(src: ImageSource, max_side: Optional[int], min_side: int = 1, box: BoxLike = None) -> Prepared:
    """Read ``src``, crop ``box`` (pixels of the image as given, clipped), shrink to
    ``max_side`` and bring the shorter side to at least ``min_side``. Returns
    ``(uint8 RGB image, scale, (width, height) before resizing)``; ``scale`` maps
    given-image pixels (after the crop) to network-input pixels.

    A small image is enlarged, but its longer side never beyond ``max(max_side,
    min_side)`` (its own length when ``max_side`` is None): an extreme strip such as
    10000×10 would otherwise become 15500×31 after the shrink (31000×31 without it).
    Whatever enlarging cannot reach is padded at the bottom / right by repeating the last
    row / column, so image coordinates are unchanged (RoIs lying wholly in the padding
    come back clipped to the image's edge)."""
    img = load_image(src)
    if box is not None:
        b = check_box(box)
        H, W = img.shape[:2]
        x1, y1 = int(np.floor(max(b[0], 0))), int(np.floor(max(b[1], 0)))
        x2, y2 = int(np.ceil(min(b[2], W))), int(np.ceil(min(b[3], H)))
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"box {tuple(b)} is empty inside a {W}x{H} image")
        img = np.ascontiguousarray(img[y1:y2, x1:x2])
    H, W = img.shape[:2]
    img, scale = resize_max_side(img, max_side)
    h, w = img.shape[:2]
    if min(h, w) < min_side:
        import cv2

        cap = max(int(min_side), int(max_side) if max_side is not None else max(h, w))
        f = min(min_side / min(h, w), cap / max(h, w))
        if f > 1.0:
            # 1e-9: f * side lands on min_side (or cap) up to rounding, not one pixel past it
            nw = min(cap, max(w, int(math.ceil(w * f - 1e-9))))
            nh = min(cap, max(h, int(math.ceil(h * f - 1e-9))))
            img = np.ascontiguousarray(cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR))
            scale = scale * (nw / w)
            h, w = nh, nw
        pad_h, pad_w = max(0, min_side - h), max(0, min_side - w)
        if pad_h or pad_w:
            img = np.ascontiguousarray(cv2.copyMakeBorder(img, 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE))
    return img, float(scale), (W, H)


def _check_options(
    feature: str,
    batch_size: int,
    chunk_size: int,
    crop_size: int,
    crop_chunk: int,
    max_side: Optional[int],
    whitening: Optional[PCAWhitening],
) -> None:
    if feature not in FEATURES:
        raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")

    for name, v in (
        ("batch_size", batch_size),
        ("chunk_size", chunk_size),
        ("crop_size", crop_size),
        ("crop_chunk", crop_chunk),
    ):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if max_side is not None and int(max_side) < 1:
        raise ValueError(f"max_side must be >= 1 or None, got {max_side}")
    if whitening is not None and not isinstance(whitening, PCAWhitening):
        raise TypeError(f"whitening: expected a PCAWhitening or None, got {type(whitening).__name__}")


def _cells_at(cells: torch.Tensor, sx: float, sy: float, size: Tuple[int, int]) -> torch.Tensor:
    """RoI rows ``(R, 5)`` in whole cells of the scale-1 map → the cells covering the same
    pixels on a map whose image was resized by ``(sx, sy)``: floor of the start, ceiling of
    the (exclusive) end, at least one cell, clipped to that map's ``size`` (H', W')."""
    h, w = size
    out = cells.clone()
    for col, f, n in ((1, sx, w), (2, sy, h)):
        lo = torch.floor(cells[:, col] * f + 1e-4).clamp(0, n - 1)
        hi = torch.ceil(cells[:, col + 2] * f - 1e-4).clamp(max=n)
        out[:, col], out[:, col + 2] = lo, torch.maximum(hi, lo + 1)
    return out


class RoIExtractor:
    """Images → per-image RoIs, descriptors and binary codes.

    Parameters
    ----------
    backbone:
        ``"alexnet"``, ``"vgg16"``, ``"efficientnet-lite0"``, or a built :class:`Backbone`.
    feature:
        ``"conv-max"``, ``"conv-sum"``, ``"conv-gem"`` (generalised mean with exponent
        ``gem_p``), ``"fc7"`` (crop + resize to ``crop_size``² + fc7, the paper's best) or
        ``"roialign-fc"`` (RoIAlign on conv5 + fc6/fc7).
    gem_p:
        GeM's exponent p for ``conv-gem`` (1: average, large: max).
    scales:
        Image scales the trunk runs at (``conv-*`` features): the RoIs are found on the map
        of scale 1.0 and pooled on every scale's map (the same pixels); the descriptor is
        the sum of the L2-normalised descriptors of all scales. ``(1.0,)``: one scale.
        Each extra scale costs one more trunk pass (about ``s²`` of the first).
    K, t_min, t_rate, t_iou:
        The paper's K, T_min, T_rate, T_IOU (see :mod:`roiret.cnn.regions`).
    threshold_mode, threshold:
        Binarisation rule of the base regions.
    regions:
        All of the above as one :class:`~roiret.params.RegionParams` (then those keywords
        are ignored).
    max_side:
        Longest side of the network input (500, the paper's); ``None`` keeps the size.
    whitening:
        A fitted :class:`PCAWhitening` applied to all descriptors (``fit_whitening``
        learns one), or ``None`` (L2 normalisation only).
    with_global:
        Also describe the whole image (the paper's baseline).
    device:
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a :class:`torch.device`.
    batch_size:
        Images per trunk forward pass (same-size images are batched together).
    weights, head_weights, allow_download:
        Weight sources (see :mod:`roiret.weights`); ``head_weights`` is for the fc6/fc7
        layers of ``fc7`` / ``roialign-fc`` (``"random"`` only when asked).
    amp:
        fp16 autocast on CUDA (never on CPU).
    crop_size, crop_chunk:
        fc7 crop side (224) and crops per forward pass.
    progress:
        tqdm progress bar: ``True``, ``False``, or ``None`` (only on a terminal).
    num_workers:
        Threads decoding images ahead of the network (0: decode inline).
    small_ops_threads:
        On CPU, torch intra-op threads for the light work after the trunk (regions,
        conv pooling, whitening): these ops are small and memory-bound, and with several
        threads each one waits at an OpenMP barrier — badly so when another process holds a
        core (measured on the 2-core dev machine with one core busy: the stage cost 1.9× the
        trunk with 2 threads, 0.1× with 1). ``None`` keeps torch's setting. Implemented with
        ``torch.set_num_threads`` around the stage (restored afterwards, under a lock).

    Thread safety: one extractor may be used from one thread at a time.
    """

    def __init__(
        self,
        backbone: Union[str, Backbone] = "alexnet",
        feature: str = "conv-max",
        *,
        K: int = DEFAULT_K,
        t_min: float = DEFAULT_T_MIN,
        t_rate: float = DEFAULT_T_RATE,
        t_iou: float = DEFAULT_T_IOU,
        threshold_mode: str = DEFAULT_THRESHOLD_MODE,
        threshold: float = DEFAULT_THRESHOLD,
        regions: Optional[RegionParams] = None,
        max_side: Optional[int] = 500,
        whitening: Optional[PCAWhitening] = None,
        with_global: bool = True,
        device: Union[str, torch.device, None] = "cpu",
        batch_size: int = 8,
        chunk_size: int = 64,
        weights: Optional[PathLike] = "auto",
        head_weights: Optional[PathLike] = "auto",
        allow_download: bool = False,
        amp: bool = True,
        crop_size: int = 224,
        crop_chunk: int = 64,
        progress: Optional[bool] = None,
        num_workers: int = 2,
        small_ops_threads: Optional[int] = 1,
        gem_p: float = DEFAULT_GEM_P,
        scales: Sequence[float] = (1.0,),
    ):
        _check_options(feature, batch_size, chunk_size, crop_size, crop_chunk, max_side, whitening)
        self.gem_p = check_gem_p(gem_p)
        self.scales = check_scales(scales, feature)
        self.device = resolve_device(device)
        if isinstance(backbone, Backbone):
            self.backbone = backbone.to(self.device).eval()
        else:
            self.backbone = build_backbone(backbone, weights, device=self.device, allow_download=allow_download)
        self.feature = feature
        if regions is None:
            regions = RegionParams(K, t_min, t_rate, t_iou, threshold_mode, threshold)
        self.detector = RoIDetector(self.backbone.stride, regions)
        self.head: Optional[FCHead] = None
        self._fc: Optional[Union[CropFC7, RoIAlignFC]] = None
        if feature in ("fc7", "roialign-fc"):
            self._build_fc_head(head_weights, allow_download, crop_size, crop_chunk, amp)
        self.max_side = None if max_side is None else int(max_side)
        self.whitening = whitening
        self.with_global = bool(with_global)
        self.batch_size = int(batch_size)
        self.chunk_size = int(chunk_size)
        self.amp = bool(amp)
        self.progress = progress
        self.num_workers = int(num_workers)
        #: seconds spent in the trunk and in whole extract calls, and images described
        #: (regions + descriptors + codes = total - trunk); reset freely
        self.timings = {"trunk": 0.0, "total": 0.0, "images": 0}
        if small_ops_threads is not None and int(small_ops_threads) < 1:
            raise ValueError(f"small_ops_threads must be >= 1 or None, got {small_ops_threads}")
        self.small_ops_threads = None if small_ops_threads is None else int(small_ops_threads)
        self._min_side = self.backbone.min_input_size()

    def _build_fc_head(
        self, head_weights: Optional[PathLike], allow_download: bool, crop_size: int, crop_chunk: int, amp: bool
    ) -> None:
        """The fc6/fc7 head of ``fc7`` (crops) or ``roialign-fc`` (RoIAlign on the trunk's map)."""
        if self.backbone.arch is None:
            raise ValueError(f"feature {self.feature!r} needs an AlexNet or VGG16 backbone, not {self.backbone.name!r}")
        self.head = build_fc_head(
            self.backbone.arch, head_weights, device=self.device, allow_download=allow_download, backbone=self.backbone
        )
        if self.feature == "fc7":
            self._fc = CropFC7(self.backbone, self.head, crop_size, crop_chunk, amp=amp)
        else:
            self._fc = RoIAlignFC(self.backbone, self.head, amp=amp)

    # -- properties ------------------------------------------------------------------
    @property
    def raw_dim(self) -> int:
        """Descriptor dimensionality before whitening."""
        return 4096 if self.head is not None else self.backbone.out_channels

    @property
    def dim(self) -> int:
        """Descriptor dimensionality of the results."""
        return self.whitening.out_dim if self.whitening is not None else self.raw_dim

    @property
    def K(self) -> int:
        """RoIs per image (the paper's K)."""
        return self.detector.K

    def __repr__(self) -> str:
        extra = (f", gem_p={self.gem_p}" if self.feature == "conv-gem" else "") + (
            f", scales={self.scales}" if len(self.scales) > 1 else ""
        )
        return (
            f"RoIExtractor(backbone={self.backbone.name!r}, feature={self.feature!r}{extra}, "
            f"{self.detector.extra_repr()}, max_side={self.max_side}, dim={self.dim}, "
            f"whitening={self.whitening!r}, device={str(self.device)!r})"
        )

    # -- the network part --------------------------------------------------------------
    def _autocast(self) -> torch.autocast:
        if self.amp and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return torch.autocast(device_type="cpu", enabled=False)

    @contextlib.contextmanager
    def _small_ops(self) -> Iterator[None]:
        n = self.small_ops_threads
        if n is None or self.device.type != "cpu":
            yield
            return
        with _THREADS_LOCK:
            old = torch.get_num_threads()
            if old != n:
                torch.set_num_threads(n)
            try:
                yield
            finally:
                if old != n:
                    torch.set_num_threads(old)

    @torch.no_grad()
    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 3, H, W)`` → float32 feature maps ``(B, D, H', W')``."""
        t0 = time.perf_counter()
        with self._autocast():
            f: torch.Tensor = self.backbone(x.to(self.device))
        # the region and pooling code reads rows and columns: plain NCHW layout is faster
        f = f.float().contiguous()
        if f.is_cuda:
            torch.cuda.synchronize(f.device)
        self.timings["trunk"] += time.perf_counter() - t0
        return f

    @torch.no_grad()
    def _describe_batch(
        self, imgs: List[np.ndarray]
    ) -> Tuple[RoIs, torch.Tensor, Optional[torch.Tensor], Tuple[int, ...]]:
        """Same-size uint8 images → (rois, raw RoI descriptors (R, dim) on device,
        raw global descriptors (B, dim) or None)."""
        x = images_to_tensor(imgs, self.backbone.mean, self.backbone.std, self.device)
        B, _, H, W = x.shape
        fmap = self.trunk(x)
        sizes = torch.tensor([[W, H]] * B, dtype=torch.float32)
        with self._small_ops():
            rois: RoIs = self.detector(fmap, sizes)
        full_px = torch.tensor([[b, 0.0, 0.0, W, H] for b in range(B)], dtype=torch.float32, device=self.device)
        if self.feature.startswith("conv-"):
            desc, glob = self._pool_scales(x, fmap, flatten_rois(rois.cells, rois.valid))
        elif self.feature == "fc7":
            flat = flatten_rois(rois.boxes, rois.valid)
            crop_fc = cast(CropFC7, self._fc)  # set in __init__ for this feature
            if self.with_global:
                both = crop_fc(x, torch.cat([flat, full_px], 0))
                desc, glob = both[: flat.shape[0]], both[flat.shape[0] :]
            else:
                desc, glob = crop_fc(x, flat), None
        else:  # roialign-fc
            flat = flatten_rois(rois.boxes, rois.valid)
            align_fc = cast(RoIAlignFC, self._fc)  # set in __init__ for this feature
            if self.with_global:
                both = align_fc(fmap, torch.cat([flat, full_px], 0))
                desc, glob = both[: flat.shape[0]], both[flat.shape[0] :]
            else:
                desc, glob = align_fc(fmap, flat), None
        return rois, desc, glob, tuple(fmap.shape[2:])

    def _pool(self, fmap: torch.Tensor, cells: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """conv-* descriptors of the RoIs ``cells`` on ``fmap`` and of the whole map."""
        mode = self.feature[5:]
        with self._small_ops():
            desc = pool_rois(fmap, cells, mode, self.gem_p)
            glob = None
            if self.with_global:  # the whole map: a plain reduction
                if mode == "gem":
                    glob = gem_global(fmap, self.gem_p)
                else:
                    glob = fmap.amax(dim=(2, 3)) if mode == "max" else fmap.sum(dim=(2, 3))
        return desc, glob

    def _pool_scales(
        self, x: torch.Tensor, fmap: torch.Tensor, cells: torch.Tensor
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """:meth:`_pool` on the scale-1 map ``fmap`` of ``x``, and with more ``scales`` the sum
        of the L2-normalised descriptors of every scale (the same pixels on each map)."""
        desc, glob = self._pool(fmap, cells)
        if len(self.scales) == 1:
            return desc, glob
        desc, glob = l2_normalize(desc), None if glob is None else l2_normalize(glob)
        H, W = x.shape[2:]
        for s in self.scales[1:]:
            h, w = max(self._min_side, round(H * s)), max(self._min_side, round(W * s))
            xs = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            fs = self.trunk(xs)
            d, g = self._pool(fs, _cells_at(cells, w / W, h / H, (fs.shape[2], fs.shape[3])))
            desc = desc + l2_normalize(d)
            glob = None if glob is None or g is None else glob + l2_normalize(g)
        return desc, glob

    def _finish(self, desc: torch.Tensor) -> np.ndarray:
        if self.whitening is not None:
            out = self.whitening.transform(desc)
        else:
            out = l2_normalize(desc.float())
        return np.ascontiguousarray(out.detach().to("cpu", torch.float32).numpy())

    # -- iteration over inputs ---------------------------------------------------------
    def _load(self, item: Tuple[ImageSource, BoxLike]) -> Prepared:
        src, box = item
        return prepare_image(src, self.max_side, self._min_side, box)

    def _iter_chunks(
        self, sources: Sequence[ImageSource], boxes: Optional[Sequence[BoxLike]], on_error: str
    ) -> Iterator[List[Tuple[int, Union[Prepared, Exception]]]]:
        """Yield lists of (index, prepared image or exception) of ``chunk_size`` items,
        decoded by a thread pool when ``num_workers`` > 0."""
        n = len(sources)
        items = [(sources[i], None if boxes is None else boxes[i]) for i in range(n)]

        def safe_load(item: Tuple[ImageSource, BoxLike]) -> Union[Prepared, Exception]:
            try:
                return self._load(item)
            except (ImageError, OSError, ValueError, TypeError) as e:
                if on_error == "raise":
                    raise
                return e

        if self.num_workers > 0 and n > 1:
            with ThreadPoolExecutor(self.num_workers) as pool:
                for s in range(0, n, self.chunk_size):
                    idx = list(range(s, min(n, s + self.chunk_size)))
                    yield list(zip(idx, pool.map(safe_load, [items[i] for i in idx])))
        else:
            for s in range(0, n, self.chunk_size):
                idx = list(range(s, min(n, s + self.chunk_size)))
                yield [(i, safe_load(items[i])) for i in idx]

    @overload
    def _run(
        self,
        sources: Sequence[ImageSource],
        boxes: Optional[Sequence[BoxLike]],
        progress: Optional[bool],
        on_error: str,
        raw: Literal[False],
    ) -> List[Optional[RoIResult]]: ...
    @overload
    def _run(
        self,
        sources: Sequence[ImageSource],
        boxes: Optional[Sequence[BoxLike]],
        progress: Optional[bool],
        on_error: str,
        raw: Literal[True],
    ) -> List[Optional[RawRows]]: ...
    def _run(
        self,
        sources: Sequence[ImageSource],
        boxes: Optional[Sequence[BoxLike]],
        progress: Optional[bool],
        on_error: str,
        raw: bool,
    ) -> Union[List[Optional[RoIResult]], List[Optional[RawRows]]]:
        t0 = time.perf_counter()
        try:
            out = self._run_impl(sources, boxes, progress, on_error, raw)
        finally:
            self.timings["total"] += time.perf_counter() - t0
        self.timings["images"] += sum(r is not None for r in out)
        return out

    def _run_impl(
        self,
        sources: Sequence[ImageSource],
        boxes: Optional[Sequence[BoxLike]],
        progress: Optional[bool],
        on_error: str,
        raw: bool,
    ) -> Union[List[Optional[RoIResult]], List[Optional[RawRows]]]:
        if isinstance(sources, (str, bytes, bytearray, os.PathLike, np.ndarray)):
            raise TypeError("expected a sequence of images (paths, bytes or arrays); for one image use extract_one()")
        sources = list(sources)
        if boxes is not None:
            boxes = list(boxes)
            if len(boxes) != len(sources):
                raise ValueError(f"boxes: {len(boxes)} given for {len(sources)} images")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        from tqdm.auto import tqdm

        show = self.progress if progress is None else progress
        results: List = [None] * len(sources)
        with tqdm(
            total=len(sources),
            disable=None if show is None else not show,
            desc=f"RoIs ({self.backbone.name}, {self.feature})",
            unit="img",
        ) as bar:
            for chunk in self._iter_chunks(sources, boxes, on_error):
                groups: Dict[Tuple[int, ...], List[Tuple[int, Prepared]]] = {}
                for i, item in chunk:
                    if isinstance(item, Exception):
                        warnings.warn(f"image {i} skipped: {item}", SkippedImageWarning, stacklevel=3)
                        bar.update(1)
                        continue
                    groups.setdefault(item[0].shape, []).append((i, item))
                for members in groups.values():
                    for s in range(0, len(members), self.batch_size):
                        part = members[s : s + self.batch_size]
                        for i, r in zip([p[0] for p in part], self._process(part, raw)):
                            results[i] = r
                        bar.update(len(part))
        return results

    def _process(self, part: List[Tuple[int, Prepared]], raw: bool) -> Union[List[RoIResult], List[RawRows]]:
        imgs = [p[1][0] for p in part]
        rois, desc, glob, fsize = self._describe_batch(imgs)
        counts = rois.counts().tolist()
        if raw:
            d = desc.detach().cpu()
            g = None if glob is None else glob.detach().cpu()
            raw_out, s = [], 0
            for j, c in enumerate(counts):
                raw_out.append((d[s : s + c].numpy(), None if g is None else g[j].numpy()))
                s += c
            return raw_out
        allrows = desc if glob is None else torch.cat([desc, glob], 0)
        with self._small_ops():
            fin = self._finish(allrows)
        codes = _pack_codes(fin) if fin.shape[0] else np.zeros((0, (fin.shape[1] + 63) // 64), np.uint64)
        codes = np.asarray(codes)
        R = desc.shape[0]
        boxes = rois.boxes.detach().cpu().numpy()
        scores = rois.scores.detach().cpu().numpy()
        chans = rois.channels.detach().cpu().numpy()
        out, s = [], 0
        for j, c in enumerate(counts):
            _, (img, scale, size) = part[j]
            b = (boxes[j, :c] / scale).astype(np.float32)
            b[:, 0::2] = np.clip(b[:, 0::2], 0, size[0])
            b[:, 1::2] = np.clip(b[:, 1::2], 0, size[1])
            out.append(
                RoIResult(
                    boxes=b,
                    scores=scores[j, :c].astype(np.float32),
                    descriptors=fin[s : s + c],
                    codes=codes[s : s + c],
                    channels=chans[j, :c].astype(np.int64),
                    global_descriptor=None if glob is None else fin[R + j],
                    global_code=None if glob is None else codes[R + j],
                    image_size=(int(size[0]), int(size[1])),
                    scale=float(scale),
                    feature_size=(int(fsize[1]), int(fsize[0])),
                )
            )
            s += c
        return out

    # -- public API ------------------------------------------------------------------
    def extract(
        self,
        images: Sequence[ImageSource],
        *,
        boxes: Optional[Sequence[BoxLike]] = None,
        progress: Optional[bool] = None,
        on_error: str = "raise",
    ) -> List[Optional[RoIResult]]:
        """Extract RoIs, descriptors and codes for every image.

        ``boxes``: optional per-image crop box ``(x1, y1, x2, y2)`` in the image's pixels
        (e.g. a query's bounding box), or ``None`` entries; the crop is described as an
        image of its own and the result's boxes are in the crop's pixels.
        ``on_error="skip"``: unreadable images give ``None`` (with a warning) instead of
        raising :class:`~roiret.errors.ImageError`.
        """
        return self._run(images, boxes, progress, on_error, raw=False)

    __call__ = extract

    def extract_one(self, image: ImageSource, box: BoxLike = None) -> RoIResult:
        """:meth:`extract` for a single image."""
        # on_error="raise": every image gives a result (or raises), never None
        return cast(RoIResult, self._run([image], None if box is None else [box], False, "raise", raw=False)[0])

    def raw_descriptors(
        self,
        images: Sequence[ImageSource],
        *,
        progress: Optional[bool] = None,
        include_global: bool = True,
        on_error: str = "raise",
    ) -> np.ndarray:
        """All RoI descriptors (and whole-image ones when ``include_global`` and
        ``with_global``) of ``images`` before whitening and normalisation, stacked
        ``(N, raw_dim)`` float32 — the training data of :meth:`fit_whitening`."""
        rows = []
        for r in self._run(images, None, progress, on_error, raw=True):
            if r is None:
                continue
            d, g = r
            rows.append(d)
            if include_global and g is not None:
                rows.append(g[None])
        if not rows:
            return np.zeros((0, self.raw_dim), np.float32)
        return np.ascontiguousarray(np.concatenate(rows, 0), dtype=np.float32)

    def fit_whitening(
        self,
        images: Optional[Sequence[ImageSource]] = None,
        *,
        descriptors: Optional[np.ndarray] = None,
        dims: Optional[int] = None,
        eps: float = 0.0,
        progress: Optional[bool] = None,
    ) -> PCAWhitening:
        """Learn PCA-whitening without labels, from database ``images`` or from an
        ``(N, raw_dim)`` array of raw ``descriptors`` (see :meth:`raw_descriptors`), and use
        it from now on. Returns it."""
        if (images is None) == (descriptors is None):
            raise ValueError("pass exactly one of images= or descriptors=")
        x = self.raw_descriptors(images, progress=progress) if images is not None else descriptors
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.raw_dim:
            raise ValueError(f"descriptors: expected (N, {self.raw_dim}), got {x.shape}")
        w = PCAWhitening(dims=dims, eps=eps).fit(x)
        self.whitening = w
        return w

    def weights_fingerprint(self) -> str:
        """SHA-256 of the trunk (and head) weights: codes made with different weights do
        not mix, so a saved index records this and checks it when loaded."""
        import hashlib

        h = hashlib.sha256()
        mods = [self.backbone] + ([self.head] if self.head is not None else [])
        for mod in mods:
            for name, t in sorted(mod.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()
