"""Images → what the index holds (:func:`encode_images`: BoW bag + RoI codes per image;
:func:`encode_batches`: batch after batch, the BoW stage of the next batch overlapping the
CNN of this one) and what a query needs (:func:`encode_query`: the bag of the keypoints in
the box, the RoIs of the crop). The CNN is shared with concurrent searches: callers pass
the lock that serialises its users."""

from __future__ import annotations

import os
import queue
import threading
import time
from contextlib import AbstractContextManager, closing
from typing import (
    TYPE_CHECKING,
    Dict,
    Generator,
    Iterable,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    cast,
)

import numpy as np

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
    from ..bow import BowEncoder, LocalFeatures
    from ..cnn.codes import CodeProjector
    from ..cnn.extractor import RoIExtractor, RoIResult

__all__ = [
    "MIN_QUERY_FEATURES",
    "PIPELINE_DEPTH",
    "BowStage",
    "encode_batches",
    "encode_bow",
    "encode_images",
    "encode_query",
    "encode_rois",
]

#: a query with fewer local features than this gets a BoxWarning (BoW has next to nothing to match)
MIN_QUERY_FEATURES = 5
#: batches whose first stage a pipelined add computes ahead of the CNN (a bounded queue)
PIPELINE_DEPTH = 1

T = TypeVar("T")


#: one image of a batch to index: (position in the add call, source, the decoded image)
BatchItem = Tuple[int, ImageSource, PreparedImage]


class BowStage(NamedTuple):
    """The first-stage result of a batch: each image's local features, their words (the
    labels spatial verification pairs them by: :meth:`BowEncoder.geometry_words`) and its bag
    (``(words, counts)``, or ``(words, signatures)``); ``seconds`` spent (``sift``,
    ``quantize``)."""

    feats: List["LocalFeatures"]
    words: List[np.ndarray]
    bags: List[Tuple[np.ndarray, np.ndarray]]
    seconds: Dict[str, float]


def encode_bow(smalls: Sequence[np.ndarray], encoder: "BowEncoder") -> BowStage:
    """RootSIFT, word assignment and the bag of words of each image. Thread-safe
    (:meth:`LocalFeatureExtractor.extract <roiret.bow.LocalFeatureExtractor.extract>` and
    :meth:`Vocabulary.assign <roiret.bow.Vocabulary.assign>` are), so a pipelined add runs
    it outside the extractor lock, beside the CNN."""
    t0 = time.perf_counter()
    feats = [encoder.extractor.extract(s) for s in smalls]
    t1 = time.perf_counter()
    words, bags = zip(*[encoder.assign_and_bag(f) for f in feats]) if feats else ((), ())
    labels = [encoder.geometry_words(f, w) for f, w in zip(feats, words)]  # what verification pairs by
    t2 = time.perf_counter()
    return BowStage(feats, labels, list(bags), {"sift": t1 - t0, "quantize": t2 - t1})


def encode_images(
    batch: Sequence[BatchItem],
    ids: np.ndarray,
    names: Optional[Sequence[str]],
    *,
    encoder: "BowEncoder",
    extractor: "RoIExtractor",
    coder: "CodeProjector",
    lock: "AbstractContextManager[object]",
    timings: Dict[str, float],
) -> List[IndexedImage]:
    """The index entries of a batch of ``(position, source, prepared image)``: ids and names
    are taken at each position (a name defaults to the path, or ``image-<id>``). Adds the
    seconds spent per stage to ``timings`` (sift, quantize, cnn_trunk, regions_codes, images).
    The two stages one after the other: :func:`encode_bow` (thread-safe, outside ``lock``),
    then :func:`encode_rois` (the CNN under ``lock``); :func:`encode_batches` can overlap
    them."""
    first = encode_bow([item.image for _, _, item in batch], encoder)
    return encode_rois(batch, first, ids, names, extractor=extractor, coder=coder, lock=lock, timings=timings)


def encode_rois(
    batch: Sequence[BatchItem],
    first: BowStage,
    ids: np.ndarray,
    names: Optional[Sequence[str]],
    *,
    extractor: "RoIExtractor",
    coder: "CodeProjector",
    lock: "AbstractContextManager[object]",
    timings: Dict[str, float],
) -> List[IndexedImage]:
    """The second stage of :func:`encode_images`, for a batch whose :func:`encode_bow`
    result is ``first``: the CNN (under ``lock``), then codes and geometry."""
    smalls = [item.image for _, _, item in batch]
    with lock:
        rois, seconds = _run_cnn(smalls, extractor)
    _account(timings, {**first.seconds, **seconds, "images": len(smalls)})
    return _entries(batch, first, rois, ids, names, coder)


def _run_cnn(
    smalls: List[np.ndarray], extractor: "RoIExtractor"
) -> Tuple[List[Optional["RoIResult"]], Dict[str, float]]:
    """The RoIs of each image, and the seconds of the trunk and of the rest."""
    trunk0 = extractor.timings["trunk"]
    t0 = time.perf_counter()
    rois = extractor.extract(smalls, progress=False)
    t1 = time.perf_counter()
    trunk = extractor.timings["trunk"] - trunk0
    return rois, {"cnn_trunk": trunk, "regions_codes": (t1 - t0) - trunk}


def _account(timings: Dict[str, float], spent: Dict[str, float]) -> None:
    for key, dt in spent.items():
        timings[key] += dt


def indexed_name(src: ImageSource, image_id: int) -> str:
    """The name an image is indexed under when none is given: its absolute path (so that
    whoever reads the index from another folder finds the file), ``image-<id>`` for bytes
    and arrays."""
    name = source_name(src, f"image-{image_id}")
    return os.path.abspath(name) if isinstance(src, (str, os.PathLike)) else name


def _entries(
    batch: Sequence[BatchItem],
    first: BowStage,
    rois: List[Optional["RoIResult"]],
    ids: np.ndarray,
    names: Optional[Sequence[str]],
    coder: "CodeProjector",
) -> List[IndexedImage]:
    entries = []
    for (i, src, item), (bag_words, counts), f, w, r in zip(batch, first.bags, first.feats, first.words, rois):
        assert r is not None  # on_error="raise": every (already decoded) image gives a result
        image_id = int(ids[i])
        codes, global_code = coder(r)
        name = names[i] if names is not None else indexed_name(src, image_id)
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


def encode_batches(
    batches: Iterable[Sequence[BatchItem]],
    ids: np.ndarray,
    names: Optional[Sequence[str]],
    *,
    encoder: "BowEncoder",
    extractor: "RoIExtractor",
    coder: "CodeProjector",
    lock: "AbstractContextManager[object]",
    timings: Dict[str, float],
    pipeline: bool,
) -> Generator[List[IndexedImage], None, None]:
    """The index entries of each batch of ``batches``, in order (:func:`encode_images`).

    ``pipeline``: a second thread takes the batches (decoding the images, when ``batches``
    reads them) and runs :func:`encode_bow` on them, up to :data:`PIPELINE_DEPTH` batches
    ahead, while the calling thread runs the CNN on the batch before (:func:`encode_rois`,
    under ``lock``): OpenCV, faiss and torch release the GIL, so the stages overlap. Each
    stage computes what it computes alone, so the entries are those of the sequential
    path. An exception raised ahead (an unreadable image, a failing stage) is raised here
    in its turn, after the entries of the batches before it; closing this generator stops
    the thread and waits for it (it finishes the batch in hand). ``timings`` is updated
    by the calling thread only."""
    if not pipeline:
        for batch in batches:
            yield encode_images(
                batch, ids, names, encoder=encoder, extractor=extractor, coder=coder, lock=lock, timings=timings
            )
        return
    ahead = ((batch, encode_bow([item.image for _, _, item in batch], encoder)) for batch in batches)
    with closing(_run_ahead(ahead, PIPELINE_DEPTH)) as stream:
        for batch, first in stream:
            yield encode_rois(batch, first, ids, names, extractor=extractor, coder=coder, lock=lock, timings=timings)


class _Raised(NamedTuple):
    error: BaseException


_END = object()


def _run_ahead(items: Iterator[T], depth: int) -> Generator[T, None, None]:
    """``items``, produced by a background thread at most ``depth`` items ahead (a bounded
    queue). The producer's exception is raised here in its turn; closing stops the producer
    (after the item in hand) and joins it, so no thread outlives the iteration."""
    q: "queue.Queue[object]" = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            try:
                for item in items:
                    q.put(item)
                    if stop.is_set():
                        break
            finally:
                close = getattr(items, "close", None)  # a generator's cleanup (progress bar) runs here
                if close is not None:
                    close()
        except BaseException as e:  # handed to the consuming thread
            q.put(_Raised(e))
        finally:
            q.put(_END)

    thread = threading.Thread(target=produce, name="roiret-add-ahead", daemon=True)
    thread.start()
    try:
        while True:
            got = q.get()
            if got is _END:
                return
            if isinstance(got, _Raised):
                raise got.error
            yield cast(T, got)
    finally:
        stop.set()
        while thread.is_alive():  # take what it still puts, so that it never blocks
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()


def _geometry(words: np.ndarray, f: "LocalFeatures") -> FeatureGeometry:
    return FeatureGeometry(words.astype(np.uint32), f.xy, f.sizes, np.asarray(f.angles, np.float32))


def encode_query(
    image: ImageSource,
    box: Optional[Sequence[float]],
    *,
    max_side: int,
    with_rois: bool,
    encoder: "BowEncoder",
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
        feats = encoder.extractor.extract(small, box=sbox)
        feature_words, (words, counts) = encoder.assign_and_bag(feats, query=True)
        t2 = time.perf_counter()
        rois = None
        if with_rois:
            rois = extractor.extract([small], boxes=None if sbox is None else [sbox], progress=False)[0]
        t3 = time.perf_counter()
    if len(feats) < MIN_QUERY_FEATURES:
        warn_caller(
            f"the query{'' if box is None else ' box'} has {len(feats)} local features: the "
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
    geometry = _geometry(encoder.geometry_words(feats, feature_words), feats).scaled(1.0 / scale)
    timings = {"load": t1 - t0, "bow_features": t2 - t1, "cnn": t3 - t2}
    return PreparedQuery(words, counts, rois, q_boxes, timings, codes, global_code, geometry)
