"""What :meth:`Retriever.train <roiret.Retriever.train>` learns from: the local features of
the training images (for the vocabulary) and their raw RoI descriptors (for the whitening),
read once per image."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import numpy as np

from ..io.images import ImageSource, SkippedImageWarning, error_reason, image_list, iter_prepared, source_name

if TYPE_CHECKING:  # pragma: no cover
    from ..bow import LocalFeatureExtractor, LocalFeatures, Vocabulary
    from .retriever import Retriever

__all__ = ["training_features"]


def _sample(images: Sequence[ImageSource], max_images: Optional[int], seed: int) -> List[ImageSource]:
    images = image_list(images)
    if not images:
        raise ValueError("train: no images")
    if max_images is not None and len(images) > max_images:
        rng = np.random.default_rng(seed)
        images = [images[i] for i in sorted(rng.choice(len(images), max_images, replace=False))]
    return images


def _check_vocabulary(vocabulary: "Vocabulary", lfe: "LocalFeatureExtractor") -> None:
    from ..bow import Vocabulary

    if not isinstance(vocabulary, Vocabulary):
        raise TypeError(f"vocabulary: expected a roiret.bow.Vocabulary, got {type(vocabulary).__name__}")
    if vocabulary.dim != lfe.dim or vocabulary.info.get("descriptor", lfe.kind) != lfe.kind:
        raise ValueError(
            f"vocabulary: {vocabulary.dim}-d {vocabulary.info.get('descriptor')!r} words, "
            f"this retriever uses {lfe.dim}-d {lfe.kind!r} features"
        )


def training_features(
    r: "Retriever", images: Sequence[ImageSource], max_images: Optional[int], vocabulary: Optional["Vocabulary"]
) -> Tuple[List["LocalFeatures"], np.ndarray, "LocalFeatureExtractor"]:
    """``(local features per image — none when a vocabulary is given —, raw RoI descriptors
    (n, raw_dim) — none unless whitening is learned —, the local feature extractor)``.
    Unreadable images are skipped with a warning; none readable is a ValueError."""
    from ..bow import LocalFeatureExtractor

    c = r.config
    images = _sample(images, max_images, c.seed)
    lfe = LocalFeatureExtractor(c.local_features, max_keypoints=c.max_keypoints, max_side=None)
    need_feats = vocabulary is None or c.asmk.learns_from_descriptors
    if vocabulary is not None:
        _check_vocabulary(vocabulary, lfe)
        if not c.whitening and not need_feats:  # nothing to learn from the images: don't read them
            return [], np.zeros((0, 0), np.float32), lfe
    feats: List["LocalFeatures"] = []
    raw: List[np.ndarray] = []
    pending: List[np.ndarray] = []

    def flush() -> None:
        if pending:
            raw.append(r.extractor.raw_descriptors(pending, progress=False))
            pending.clear()

    for i, src, item in iter_prepared(images, c.max_side, on_error="skip", progress=r.progress, desc="train: features"):
        if isinstance(item, Exception):
            warnings.warn(
                f"train: skipping {source_name(src, f'image {i}')}: {error_reason(item)}",
                SkippedImageWarning,
                stacklevel=3,
            )
            continue
        if need_feats:
            feats.append(lfe.extract(item.image))
        if c.whitening:
            pending.append(item.image)
            if len(pending) == r.batch_size:
                flush()
    flush()
    if need_feats and not feats:
        raise ValueError("train: none of the images could be read")
    x = np.concatenate(raw, 0) if raw else np.zeros((0, r.extractor.raw_dim if c.whitening else 0), np.float32)
    return feats, x, lfe
