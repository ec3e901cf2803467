"""Images → what the index holds (:func:`encode_images`: BoW bag + RoI codes per image) and
what a query needs (:func:`encode_query`: the bag of the keypoints in the box, the RoIs of
the crop). The extractors are shared with concurrent searches: callers pass the lock that
serialises them."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..bow.encode import bag_of_words
from ..io.images import (
    BoxWarning,
    ImageSource,
    PreparedImage,
    check_box,
    check_query_box,
    load_shrunk,
    source_name,
    warn_caller,
)
from .geometry import FeatureGeometry
from .index import IndexedImage
from .results import PreparedQuery

if TYPE_CHECKING:  # pragma: no cover
    from ..bow import BowIndex, LocalFeatures
    from ..cnn.codes import CodeProjector
    from ..cnn.extractor import RoIExtractor

__all__ = ["MIN_QUERY_FEATURES", "encode_images", "encode_query"]

#: a query with fewer local features than this gets a BoxWarning (BoW has next to nothing to match)
MIN_QUERY_FEATURES = 5


def encode_images(
    batch: Sequence[Tuple[int, ImageSource, PreparedImage]],
    ids: np.ndarray,
    names: Optional[Sequence[str]],
    *,
    bow: "BowIndex",
    extractor: "RoIExtractor",
    coder: "CodeProjector",
    lock: "AbstractContextManager[object]",
    timings: Dict[str, float],
) -> List[IndexedImage]:
    """The index entries of a batch of ``(position, source, prepared image)``: ids and names
    are taken at each position (a name defaults to the path, or ``image-<id>``). Adds the
    seconds spent per stage to ``timings`` (sift, quantize, cnn_trunk, regions_codes, images)."""
    smalls = [item.image for _, _, item in batch]
    with lock:
        t0 = time.perf_counter()
        feats = [bow.extractor.extract(s) for s in smalls]
        t1 = time.perf_counter()
        words = [bow.assign_features(f) for f in feats]
        bags = [bag_of_words(w, bow.vocabulary.size) for w in words]
        t2 = time.perf_counter()
        trunk0 = extractor.timings["trunk"]
        rois = extractor.extract(smalls, progress=False)
        t3 = time.perf_counter()
    trunk = extractor.timings["trunk"] - trunk0
    for key, dt in (
        ("sift", t1 - t0),
        ("quantize", t2 - t1),
        ("cnn_trunk", trunk),
        ("regions_codes", (t3 - t2) - trunk),
        ("images", len(smalls)),
    ):
        timings[key] += dt
    entries = []
    for (i, src, item), (bag_words, counts), f, w, r in zip(batch, bags, feats, words, rois):
        assert r is not None  # on_error="raise": every (already decoded) image gives a result
        image_id = int(ids[i])
        codes, global_code = coder(r)
        name = names[i] if names is not None else source_name(src, f"image-{image_id}")
        geometry = _geometry(w, f).scaled(1.0 / item.scale)
        entries.append(
            IndexedImage(
                image_id,
                bag_words,
                counts,
                codes,
                r.boxes / item.scale,
                r.scores,
                global_code,
                item.size,
                name,
                geometry,
            )
        )
    return entries


def _geometry(words: np.ndarray, f: "LocalFeatures") -> FeatureGeometry:
    return FeatureGeometry(words.astype(np.uint32), f.xy, f.sizes, np.asarray(f.angles, np.float32))


def encode_query(
    image: ImageSource,
    box: Optional[Sequence[float]],
    *,
    max_side: int,
    with_rois: bool,
    bow: "BowIndex",
    extractor: "RoIExtractor",
    coder: "CodeProjector",
    lock: "AbstractContextManager[object]",
) -> PreparedQuery:
    """A query's BoW words (keypoints in ``box``) and RoIs (of the crop), boxes in pixels of
    the query image as given."""
    t0 = time.perf_counter()
    if box is not None:
        check_box(box)  # a malformed box fails before the image is read
    small, scale, (width, height) = load_shrunk(image, max_side)
    sbox = None
    if box is not None:
        b = check_query_box(box, width, height)
        sbox = (b[0] * scale, b[1] * scale, b[2] * scale, b[3] * scale)
    t1 = time.perf_counter()
    with lock:
        feats = bow.extractor.extract(small, box=sbox)
        feature_words = bow.assign_features(feats)
        words, counts = bag_of_words(feature_words, bow.vocabulary.size)
        t2 = time.perf_counter()
        rois = None
        if with_rois:
            rois = extractor.extract([small], boxes=None if sbox is None else [sbox], progress=False)[0]
        t3 = time.perf_counter()
    if float(np.sum(counts)) < MIN_QUERY_FEATURES:
        warn_caller(
            f"the query{'' if box is None else ' box'} has {int(np.sum(counts))} local features: the "
            "first stage has next to nothing to match",
            BoxWarning,
        )
    codes = global_code = None
    q_boxes = np.zeros((0, 4), np.float32)
    if rois is not None:
        codes, global_code = coder(rois)
        qb = rois.boxes.astype(np.float64)
        if sbox is not None:  # crop pixels -> image pixels
            qb[:, 0::2] += np.floor(max(sbox[0], 0.0))
            qb[:, 1::2] += np.floor(max(sbox[1], 0.0))
        q_boxes = (qb / scale).astype(np.float32)
    geometry = _geometry(feature_words, feats).scaled(1.0 / scale)
    timings = {"load": t1 - t0, "bow_features": t2 - t1, "cnn": t3 - t2}
    return PreparedQuery(words, counts, rois, q_boxes, timings, codes, global_code, geometry)
