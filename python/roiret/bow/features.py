"""Local features through OpenCV: SIFT / RootSIFT (default) and SURF when available.

The paper's first stage uses SURF. SURF is patented and OpenCV only builds it with
``OPENCV_ENABLE_NONFREE``, which the PyPI wheels do not set; :func:`surf_available` tells
whether the installed OpenCV has it, and asking for ``kind="surf"`` without it raises a
:class:`ValueError` that says so and how to get it. The default is RootSIFT
(Arandjelović & Zisserman, CVPR 2012): SIFT descriptors L1-normalised, then square-rooted,
so that the Euclidean distance between them equals the Hellinger kernel on the originals.

Keypoints are detected on the luminance of the image after an optional shrink to
``max_side``; their coordinates are mapped back to the pixels of the image as given, so a
query box drawn on the original image selects the right keypoints (:meth:`LocalFeatures.in_box`,
the Oxford protocol: keep the features whose centre lies inside the box).
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..io.images import Box, ImageSource, check_box, load_image, resize_max_side
from ..params import LOCAL_FEATURES

__all__ = [
    "Box",
    "FEATURE_KINDS",
    "LocalFeatureExtractor",
    "LocalFeatures",
    "rootsift",
    "surf_available",
]


#: Descriptor kinds and their dimension (SURF: 64, or 128 with ``surf_extended=True``).
FEATURE_KINDS = LOCAL_FEATURES


def _cv2() -> Any:
    import cv2

    return cv2


@functools.lru_cache(maxsize=None)
def surf_available() -> bool:
    """Whether the installed OpenCV can create SURF (contrib build with the nonfree module)."""
    cv2 = _cv2()
    xf = getattr(cv2, "xfeatures2d", None)
    if xf is None or not hasattr(xf, "SURF_create"):
        return False
    try:
        xf.SURF_create()
    except cv2.error:  # "This algorithm is patented and is excluded in this configuration"
        return False
    return True


def rootsift(descriptors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """RootSIFT: L1-normalise each row, then take the element-wise square root.

    Rows that are all zero stay zero. Input: (n, d) non-negative array (SIFT); output:
    float32 (n, d) rows of unit L2 norm.
    """
    d = np.asarray(descriptors, dtype=np.float32)
    if d.ndim != 2:
        raise ValueError(f"rootsift: expected an (n, d) array, got shape {d.shape}")
    if d.size and d.min() < 0:
        raise ValueError("rootsift: descriptors must be non-negative (SIFT); got negative values")
    l1 = d.sum(axis=1, keepdims=True)
    return np.asarray(np.sqrt(d / np.maximum(l1, eps)), dtype=np.float32)


@dataclass(frozen=True)
class LocalFeatures:
    """The local features of one image.

    Attributes
    ----------
    xy:
        float32 (n, 2): keypoint centres ``(x, y)`` in the pixels of the image as it was
        given (before any ``max_side`` shrink).
    sizes:
        float32 (n,): keypoint diameters, in the same pixels.
    descriptors:
        float32 (n, d), C-contiguous.
    image_size:
        ``(width, height)`` of the image as given.
    kind:
        the descriptor kind (``"rootsift"``, ``"sift"`` or ``"surf"``).
    angles:
        float32 (n,): keypoint orientations in degrees, [0, 360) as OpenCV reports them
        (clockwise in image coordinates, y down); zeros when not given. With ``xy`` and
        ``sizes`` this is the geometry spatial verification uses.
    """

    xy: np.ndarray
    sizes: np.ndarray
    descriptors: np.ndarray
    image_size: Tuple[int, int]
    kind: str
    angles: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        if self.angles is None:
            object.__setattr__(self, "angles", np.zeros(len(self.sizes), np.float32))

    def __len__(self) -> int:
        return int(self.descriptors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.descriptors.shape[1])

    def in_box(self, box: Box) -> "LocalFeatures":
        """The features whose centre lies inside ``box = (x1, y1, x2, y2)`` (bounds
        included), in image pixels — the Oxford protocol's query crop."""
        x1, y1, x2, y2 = check_box(box)
        x, y = self.xy[:, 0], self.xy[:, 1]
        keep = (x >= x1) & (x <= x2) & (y >= y1) & (y <= y2)
        return self.select(keep)

    def select(self, keep: np.ndarray) -> "LocalFeatures":
        """The features selected by a boolean mask or an index array."""
        return LocalFeatures(
            xy=np.ascontiguousarray(self.xy[keep]),
            sizes=np.ascontiguousarray(self.sizes[keep]),
            descriptors=np.ascontiguousarray(self.descriptors[keep]),
            image_size=self.image_size,
            kind=self.kind,
            angles=np.ascontiguousarray(np.asarray(self.angles)[keep]),
        )


#: pixels around a query box where the detector still looks: keypoints on the box's edge
#: (centre inside, detected a pixel outside after rounding) are kept by ``in_box`` later
BOX_MASK_MARGIN = 2


def _box_mask(shape: Tuple[int, ...], box: Box, scale: float) -> np.ndarray:
    """The detector's mask on the resized image: the box (image pixels, mapped as the
    keypoints are mapped back: pixel centres at integer coordinates) plus BOX_MASK_MARGIN."""
    h, w = shape[:2]
    x1, y1, x2, y2 = ((v + 0.5) * scale - 0.5 for v in box)
    m = BOX_MASK_MARGIN
    c1, r1 = max(0, int(np.floor(x1)) - m), max(0, int(np.floor(y1)) - m)
    c2, r2 = min(w, int(np.ceil(x2)) + m + 1), min(h, int(np.ceil(y2)) + m + 1)
    mask = np.zeros((h, w), np.uint8)
    mask[r1:r2, c1:c2] = 255
    return mask


class LocalFeatureExtractor:
    """Detect keypoints and compute local descriptors with OpenCV.

    Parameters
    ----------
    kind:
        ``"rootsift"`` (default), ``"sift"``, or ``"surf"`` (needs an OpenCV built with the
        nonfree module; see :func:`surf_available`).
    max_keypoints:
        Keep at most this many keypoints per image, the strongest by detector response
        (``None`` or 0: no limit). Default 4000.
    max_side:
        Shrink images whose longest side exceeds this (never enlarge) before detection;
        ``None`` keeps the size. Default 1024. Keypoint coordinates are always reported in
        the pixels of the image as given.
    n_octave_layers, contrast_threshold, edge_threshold, sigma:
        SIFT parameters (OpenCV defaults: 3, 0.04, 10, 1.6).
    hessian_threshold, surf_extended, surf_upright:
        SURF parameters (Hessian threshold 400 here, OpenCV's default is 100; 64-d
        descriptors unless extended; rotation-invariant unless upright).

    Thread safety
    -------------
    :meth:`extract` may be called from several threads at once: each thread gets its own
    OpenCV detector. OpenCV itself also uses several threads inside one call.
    """

    def __init__(
        self,
        kind: str = "rootsift",
        *,
        max_keypoints: Optional[int] = 4000,
        max_side: Optional[int] = 1024,
        n_octave_layers: int = 3,
        contrast_threshold: float = 0.04,
        edge_threshold: float = 10.0,
        sigma: float = 1.6,
        hessian_threshold: float = 400.0,
        surf_extended: bool = False,
        surf_upright: bool = False,
    ):
        if not isinstance(kind, str) or kind.lower() not in FEATURE_KINDS:
            raise ValueError(f"kind: expected one of {FEATURE_KINDS}, got {kind!r}")
        kind = kind.lower()
        if kind == "surf" and not surf_available():
            raise ValueError(
                "kind='surf': the installed OpenCV has no SURF (it is patented and only built "
                "with OPENCV_ENABLE_NONFREE, which PyPI's opencv-contrib wheels do not set). "
                "Use kind='rootsift' (the default) or build opencv-contrib with nonfree."
            )
        if max_keypoints is not None and (int(max_keypoints) != max_keypoints or max_keypoints < 0):
            raise ValueError(f"max_keypoints: expected an integer >= 0 or None, got {max_keypoints!r}")
        if max_side is not None and (int(max_side) != max_side or max_side < 8):
            raise ValueError(f"max_side: expected an integer >= 8 or None, got {max_side!r}")
        if int(n_octave_layers) < 1:
            raise ValueError(f"n_octave_layers: expected >= 1, got {n_octave_layers}")
        if sigma <= 0:
            raise ValueError(f"sigma: expected > 0, got {sigma}")
        self.kind = kind
        self.max_keypoints = int(max_keypoints) if max_keypoints else None
        self.max_side = int(max_side) if max_side is not None else None
        self.n_octave_layers = int(n_octave_layers)
        self.contrast_threshold = float(contrast_threshold)
        self.edge_threshold = float(edge_threshold)
        self.sigma = float(sigma)
        self.hessian_threshold = float(hessian_threshold)
        self.surf_extended = bool(surf_extended)
        self.surf_upright = bool(surf_upright)
        self._tls = threading.local()

    # -- configuration ------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Descriptor dimension."""
        if self.kind == "surf":
            return 128 if self.surf_extended else 64
        return 128

    def config(self) -> Dict[str, Any]:
        """A JSON-serialisable description; :meth:`from_config` rebuilds the extractor."""
        return {
            "kind": self.kind,
            "max_keypoints": self.max_keypoints,
            "max_side": self.max_side,
            "n_octave_layers": self.n_octave_layers,
            "contrast_threshold": self.contrast_threshold,
            "edge_threshold": self.edge_threshold,
            "sigma": self.sigma,
            "hessian_threshold": self.hessian_threshold,
            "surf_extended": self.surf_extended,
            "surf_upright": self.surf_upright,
        }

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "LocalFeatureExtractor":
        cfg = dict(config)
        kind = cfg.pop("kind", "rootsift")
        if "max_features" in cfg:  # the name before 0.2 (saved indexes keep it)
            cfg.setdefault("max_keypoints", cfg.pop("max_features"))
        try:
            return cls(kind, **cfg)
        except TypeError as e:
            raise ValueError(f"feature extractor config: {e}") from None

    def __repr__(self) -> str:
        return (
            f"LocalFeatureExtractor(kind={self.kind!r}, max_keypoints={self.max_keypoints}, max_side={self.max_side})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LocalFeatureExtractor) and self.config() == other.config()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.config().items())))

    # -- extraction ---------------------------------------------------------------------
    def _detector(self) -> Any:
        det = getattr(self._tls, "det", None)
        if det is None:
            cv2 = _cv2()
            if self.kind == "surf":
                det = cv2.xfeatures2d.SURF_create(
                    hessianThreshold=self.hessian_threshold,
                    extended=self.surf_extended,
                    upright=self.surf_upright,
                )
            else:
                det = cv2.SIFT_create(
                    nfeatures=self.max_keypoints or 0,
                    nOctaveLayers=self.n_octave_layers,
                    contrastThreshold=self.contrast_threshold,
                    edgeThreshold=self.edge_threshold,
                    sigma=self.sigma,
                )
            self._tls.det = det
        return det

    def extract(self, image: ImageSource, *, box: Optional[Box] = None) -> LocalFeatures:
        """Local features of one image.

        Parameters
        ----------
        image:
            A path, encoded bytes, or an array (gray ``H×W``, RGB ``H×W×3``, RGBA; uint8,
            uint16 or float in [0, 1]) — anything :func:`roiret.imageio.load_image` reads.
        box:
            Optional ``(x1, y1, x2, y2)`` in the image's pixels: only the features whose
            centre lies inside the box are kept. They are computed on the whole image (the
            descriptors near the border of the box see their full support), the detector
            masked to the box (and a 2-pixel margin): the same features as filtering the
            whole image's, without describing the keypoints outside (~20 % of the time on
            Oxford5k-dev's query boxes). ``max_keypoints`` counts the box's keypoints.

        Returns
        -------
        LocalFeatures
            Possibly empty (a flat or tiny image has no keypoint): then ``descriptors`` has
            shape ``(0, dim)``.

        Raises
        ------
        roiret.errors.ImageError, FileNotFoundError, TypeError, ValueError
            From :func:`roiret.imageio.load_image`, or a bad ``box``.
        """
        if box is not None:
            box = check_box(box)
        gray = load_image(image, gray=True)
        h0, w0 = gray.shape[:2]
        small, scale = resize_max_side(gray, self.max_side)
        kps, desc = self._detector().detectAndCompute(
            small, None if box is None else _box_mask(small.shape, box, scale)
        )
        n = len(kps)
        if n == 0 or desc is None:
            feats = LocalFeatures(
                xy=np.zeros((0, 2), np.float32),
                sizes=np.zeros((0,), np.float32),
                descriptors=np.zeros((0, self.dim), np.float32),
                image_size=(int(w0), int(h0)),
                kind=self.kind,
            )
            return feats
        xy = np.array([kp.pt for kp in kps], dtype=np.float32).reshape(n, 2)
        sizes = np.array([kp.size for kp in kps], dtype=np.float32)
        angles = np.array([kp.angle for kp in kps], dtype=np.float32)
        desc = np.asarray(desc, dtype=np.float32).reshape(n, -1)
        if self.max_keypoints and n > self.max_keypoints:
            # strongest first; stable so equal responses keep the detector's order
            resp = np.array([kp.response for kp in kps], dtype=np.float32)
            keep = np.sort(np.argsort(-resp, kind="stable")[: self.max_keypoints])
            xy, sizes, desc, angles = xy[keep], sizes[keep], desc[keep], angles[keep]
        if scale != 1.0:
            # OpenCV's pixel centres are at integer coordinates in both images
            xy = (xy + 0.5) / scale - 0.5
            sizes = sizes / scale
        if self.kind == "rootsift":
            desc = rootsift(desc)
        feats = LocalFeatures(
            xy=np.ascontiguousarray(xy, dtype=np.float32),
            sizes=np.ascontiguousarray(sizes, dtype=np.float32),
            descriptors=np.ascontiguousarray(desc, dtype=np.float32),
            image_size=(int(w0), int(h0)),
            kind=self.kind,
            angles=np.ascontiguousarray(np.mod(angles, 360.0), dtype=np.float32),
        )
        return feats.in_box(box) if box is not None else feats

    def extract_many(
        self,
        images: Iterable[ImageSource],
        *,
        boxes: Optional[Sequence[Optional[Box]]] = None,
        progress: bool = True,
        desc: str = "local features",
        total: Optional[int] = None,
    ) -> List[LocalFeatures]:
        """:meth:`extract` over many images, with a progress bar (tqdm) when ``progress``."""
        imgs = images if total is not None or not hasattr(images, "__len__") else list(images)
        if total is None and hasattr(imgs, "__len__"):
            total = len(imgs)  # type: ignore[arg-type]
        if boxes is not None and total is not None and len(boxes) != total:
            raise ValueError(f"boxes: expected {total} boxes (one per image), got {len(boxes)}")
        it = imgs
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(imgs, total=total, desc=desc, unit="img")
        out = []
        for i, img in enumerate(it):
            out.append(self.extract(img, box=None if boxes is None else boxes[i]))
        return out
