"""The bag-of-visual-words first stage: images → local features → words → an inverted
file → top-N candidates. Two scorers: TF-IDF (the paper's; native
:class:`roiret.InvertedFile`, a bag is ``(words, counts)``) and the selective match kernel
on Hamming-embedded words (ASMK*; native :class:`roiret.EmbeddedInvertedFile`, a bag is
``(words, signatures)``: :mod:`roiret.bow.embedding`).

Query by image, or by a box inside it (the Oxford protocol's query crop: features are
computed on the whole query image and only those whose centre lies in the box are kept).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from ..io import PathLike
from ..io.folder import IndexFolder, IndexWriter, Manifest, as_format_error
from ..io.images import ImageSource, image_list
from ..params import AsmkParams, positive_int
from .embedding import HammingEmbedding, embedding_for
from .encode import bag_of_words, bags_to_csr
from .features import Box, LocalFeatureExtractor, LocalFeatures
from .vocabulary import DEFAULT_QUERY_HNSW_THRESHOLD, Vocabulary

if TYPE_CHECKING:  # pragma: no cover
    from .._core import EmbeddedInvertedFile, InvertedFile

__all__ = ["BowHits", "BowIndex", "IdsLike", "as_ids", "consecutive_ids"]

#: image ids: a sequence or 1-D array of integers
IdsLike = Union[Sequence[int], np.ndarray]

_FORMAT = "roiret.bow_index"
_VERSION = 1
_WHAT = "roiret BoW index"


def _inverted_file_class(embedded: bool = False) -> Any:
    from .._kernels import EmbeddedInvertedFile, InvertedFile  # native core; imported on first use

    return EmbeddedInvertedFile if embedded else InvertedFile


def query_weights(words: np.ndarray, idf: np.ndarray) -> np.ndarray:
    """The per-term weights of one embedded query: ``1 / sqrt(Σ idf)`` over its words (the
    kernel's self-similarity normalisation; zeros when that sum is 0), float32."""
    total = float(np.sum(np.asarray(idf, np.float64)[np.asarray(words, np.int64)]))
    g = 1.0 / np.sqrt(total) if total > 0 else 0.0
    return np.full(len(words), g, np.float32)


def read_embedding(m: Manifest, first_stage: str, vocabulary: Vocabulary) -> Optional[HammingEmbedding]:
    """The Hamming embedding an index folder's manifest lists (``None`` for TF-IDF);
    IndexFormatError when an ASMK index lacks it or it does not fit the vocabulary."""
    if first_stage != "asmk":
        return None
    if "embedding" not in m.paths:
        raise m.invalid("an ASMK first stage without its embedding file")
    with m.parsing("embedding"):
        return HammingEmbedding.load(m.paths["embedding"], vocabulary.centroids)


class BowHits(NamedTuple):
    """Top-N result of a BoW query: ``ids`` int64 and ``scores`` float32 (TF-IDF cosine),
    best first. Unpacks as ``ids, scores = hits``."""

    ids: np.ndarray
    scores: np.ndarray


_INT64 = np.iinfo(np.int64)


def as_ids(ids: Union[Iterable[Any], np.ndarray], n: Optional[int] = None, *, distinct: bool = True) -> np.ndarray:
    """``ids`` as a contiguous int64 array: integers (Python or NumPy, not bools) within the
    int64 range, from a 1-D array or any iterable but a string — ``n`` of them when ``n`` is
    given, all different unless ``distinct=False``. TypeError for anything else (a string,
    floats, bools, a single number), ValueError for a value outside int64, a wrong shape,
    count or repeats; nothing is cast or wrapped around."""
    if isinstance(ids, np.ndarray):
        a = ids
    elif isinstance(ids, (str, bytes, bytearray)) or not isinstance(ids, Iterable):
        hint = " (wrap one id in a list)" if isinstance(ids, (int, np.integer)) else ""
        raise TypeError(f"ids: expected a sequence of integer ids, got {type(ids).__name__} {ids!r:.60}{hint}")
    else:
        a = _id_array(list(ids))
    if a.ndim != 1:
        raise ValueError(f"ids: expected a 1-D array of integers, got shape {a.shape}")
    if a.size and a.dtype.kind not in "iu":
        raise TypeError(f"ids: expected integers, got dtype {a.dtype}")
    if a.dtype.kind == "u" and a.size and int(a.max()) > _INT64.max:
        raise ValueError(f"ids: id {int(a.max())} is outside the int64 range [{_INT64.min}, {_INT64.max}]")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"ids: expected {n} ids (one per image), got {a.shape[0]}")
    a = a.astype(np.int64, copy=False)
    if distinct and np.unique(a).size != a.size:
        raise ValueError("ids: contain repeats; every image needs its own id")
    return np.ascontiguousarray(a)


def consecutive_ids(start: int, n: int) -> np.ndarray:
    """The ``n`` ids ``start, start + 1, ...`` (the default ids of new images); ValueError
    when they would leave the int64 range."""
    if n and int(start) + n - 1 > _INT64.max:
        raise ValueError(
            f"ids: the {n} ids after the largest one so far ({int(start) - 1}) leave the int64 range; pass ids="
        )
    return np.arange(int(start), int(start) + n, dtype=np.int64)


def _id_array(ids: List[Any]) -> np.ndarray:
    """Ids given one by one as an int64 array, each checked: an integer, not a bool, in
    range (NumPy alone would take ``True`` as 1, keep ``1.5`` a float, ``2**63`` a uint64)."""
    for v in ids:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"ids: expected integers, got {v!r} ({type(v).__name__})")
        if not _INT64.min <= int(v) <= _INT64.max:
            raise ValueError(f"ids: id {int(v)} is outside the int64 range [{_INT64.min}, {_INT64.max}]")
    return np.array([int(v) for v in ids], dtype=np.int64)


class BowIndex:
    """Bag-of-visual-words retrieval with TF-IDF over an inverted file.

    Parameters
    ----------
    vocabulary:
        The visual vocabulary (:meth:`Vocabulary.fit` or :meth:`BowIndex.train`).
    extractor:
        Local features; default: ``LocalFeatureExtractor(kind)`` with the descriptor kind the
        vocabulary was trained on (RootSIFT when unrecorded). Its dimension must match
        the vocabulary's.
    inverted_file:
        An existing :class:`roiret.InvertedFile` (or, with ``embedding``,
        :class:`roiret.EmbeddedInvertedFile`) of the same vocabulary size (default: a new
        empty one).
    next_id:
        The id given to the next image added without ids (default: one more than the
        largest id in ``inverted_file``, or 0).
    embedding:
        A :class:`~roiret.bow.embedding.HammingEmbedding` of this vocabulary: score with the
        selective match kernel (ASMK*) instead of TF-IDF.
    asmk:
        The kernel's settings (:class:`roiret.params.AsmkParams`: α, τ, multiple
        assignment); used with ``embedding`` only.

    TF-IDF (computed by the native inverted file): ``idf_t = ln(N / df_t)``; image and query
    vectors ``count · idf`` L2-normalised; score = their dot product (cosine). ASMK*:
    ``Σ_c idf_c σ(signatures' Hamming similarity)`` over the words both images hold, each
    image normalised by ``sqrt(Σ idf)`` of its words (:class:`roiret.EmbeddedInvertedFile`).

    Thread safety
    -------------
    :meth:`search` and its variants may run concurrently from several threads. :meth:`add`,
    :meth:`remove` and :meth:`save` change or read the whole index and must not overlap with
    any other call on the same object.
    """

    def __init__(
        self,
        vocabulary: Vocabulary,
        extractor: Optional[LocalFeatureExtractor] = None,
        *,
        inverted_file: Optional[Union[InvertedFile, EmbeddedInvertedFile]] = None,
        next_id: Optional[int] = None,
        embedding: Optional[HammingEmbedding] = None,
        asmk: Optional[AsmkParams] = None,
    ):
        if not isinstance(vocabulary, Vocabulary):
            raise TypeError(f"vocabulary: expected a roiret.bow.Vocabulary, got {type(vocabulary).__name__}")
        trained_on = vocabulary.info.get("descriptor")
        if extractor is None:
            extractor = LocalFeatureExtractor(trained_on or "rootsift")
        if not isinstance(extractor, LocalFeatureExtractor):
            raise TypeError(f"extractor: expected a LocalFeatureExtractor, got {type(extractor).__name__}")
        if extractor.dim != vocabulary.dim:
            raise ValueError(
                f"extractor gives {extractor.dim}-d {extractor.kind} descriptors but the vocabulary "
                f"has {vocabulary.dim}-d words"
            )
        if trained_on is not None and trained_on != extractor.kind:
            raise ValueError(
                f"the vocabulary was trained on {trained_on!r} descriptors, the extractor gives {extractor.kind!r}"
            )
        self._check_embedding(vocabulary, embedding, inverted_file)
        if inverted_file is None:
            if embedding is None:
                inverted_file = _inverted_file_class()(vocabulary.size)
            else:
                inverted_file = _inverted_file_class(True)(vocabulary.size, embedding.bits)
        if asmk is not None and not isinstance(asmk, AsmkParams):
            raise TypeError(f"asmk: expected roiret.params.AsmkParams, got {type(asmk).__name__}")
        if asmk is not None and (asmk.first_stage == "asmk") != (embedding is not None):
            raise ValueError(
                f"asmk: first_stage={asmk.first_stage!r} "
                + ("needs an embedding" if embedding is None else "but an embedding was given")
            )
        #: the Hamming embedding (None: TF-IDF) and the kernel's settings
        self.embedding = embedding
        self.asmk = asmk if asmk is not None else AsmkParams(first_stage="tfidf" if embedding is None else "asmk")
        self.vocabulary = vocabulary
        self.extractor = extractor
        #: the native file: an InvertedFile (TF-IDF) or an EmbeddedInvertedFile (ASMK), by ``embedding``
        self.inverted_file: Any = inverted_file
        ids = inverted_file.ids()
        #: the id the next image added without an explicit id gets
        self._next_id = int(ids.max()) + 1 if len(ids) else 0
        if next_id is not None:
            self._next_id = max(self._next_id, int(next_id))

    @staticmethod
    def _check_embedding(vocabulary: Vocabulary, embedding: Any, inverted_file: Any) -> None:
        if embedding is None:
            if inverted_file is not None and not isinstance(inverted_file, _inverted_file_class()):
                raise TypeError(f"inverted_file: expected a roiret.InvertedFile, got {type(inverted_file).__name__}")
            return
        if not isinstance(embedding, HammingEmbedding):
            raise TypeError(f"embedding: expected a HammingEmbedding, got {type(embedding).__name__}")
        if (embedding.vocab_size, embedding.dim) != (vocabulary.size, vocabulary.dim):
            raise ValueError(
                f"the embedding was made for {embedding.vocab_size} × {embedding.dim} words, the vocabulary "
                f"has {vocabulary.size} × {vocabulary.dim}"
            )
        if inverted_file is not None:
            if not isinstance(inverted_file, _inverted_file_class(True)):
                kind = type(inverted_file).__name__
                raise TypeError(f"inverted_file: an embedded index needs a roiret.EmbeddedInvertedFile, got {kind}")
            if inverted_file.nbits != embedding.bits:
                raise ValueError(
                    f"inverted_file has {inverted_file.nbits}-bit signatures, the embedding {embedding.bits}"
                )

    @property
    def embedded(self) -> bool:
        """Whether this index scores with the selective match kernel (ASMK*)."""
        return self.embedding is not None

    # -- training -------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        images: Iterable[ImageSource],
        vocab_size: int,
        *,
        extractor: Optional[LocalFeatureExtractor] = None,
        seed: int = 0,
        max_train_descriptors: Optional[int] = None,
        kmeans_iterations: int = 20,
        kmeans: str = "auto",
        progress: bool = True,
        asmk: Optional[AsmkParams] = None,
        **vocabulary_options: Any,
    ) -> "BowIndex":
        """Learn a vocabulary from the local features of ``images`` and return an empty
        index using it (the training images are *not* added; call :meth:`add`).

        ``seed``, ``max_train_descriptors``, ``kmeans_iterations``, ``kmeans`` and ``vocabulary_options`` (HNSW
        settings) go to :meth:`Vocabulary.fit`. ``asmk``: the first stage
        (:class:`~roiret.params.AsmkParams`; default: TF-IDF); with ``first_stage="asmk"``
        the Hamming embedding is made too (``vocab_size="auto"`` then follows the ASMK rule).
        Train on database images (or other images), never on ground-truth labels.
        """
        extractor = extractor or LocalFeatureExtractor()
        feats = extractor.extract_many(images, progress=progress, desc="features for k-means")
        voc = Vocabulary.fit(
            feats,
            vocab_size,
            seed=seed,
            max_train_descriptors=max_train_descriptors,
            kmeans_iterations=kmeans_iterations,
            kmeans=kmeans,
            descriptor=extractor.kind,
            progress=progress,
            auto_rule=asmk.first_stage if asmk is not None else "tfidf",
            **vocabulary_options,
        )
        embedding = embedding_for(voc, feats, asmk, seed) if asmk is not None else None
        return cls(voc, extractor, embedding=embedding, asmk=asmk)

    # -- encoding -------------------------------------------------------------------------
    def _check_features(self, features: LocalFeatures) -> None:
        if not isinstance(features, LocalFeatures):
            raise TypeError(f"features: expected LocalFeatures, got {type(features).__name__}")
        if features.kind != self.extractor.kind or features.dim != self.vocabulary.dim:
            raise ValueError(
                f"features are {features.dim}-d {features.kind!r}; this index uses "
                f"{self.vocabulary.dim}-d {self.extractor.kind!r}"
            )

    def assign_features(self, features: LocalFeatures, *, box: Optional[Box] = None) -> np.ndarray:
        """The visual word (int64) of each of an image's local features, optionally only
        those inside ``box``."""
        self._check_features(features)
        if box is not None:
            features = features.in_box(box)
        return np.asarray(self.vocabulary.assign(features.descriptors), np.int64)

    def _assignments(self, query: bool) -> int:
        """Words each feature is counted in: the query's or the database's multiple
        assignment (ASMK), 1 for TF-IDF."""
        if self.embedding is None:
            return 1
        return self.asmk.query_assignments if query else self.asmk.db_assignments

    def _bag_of(self, features: LocalFeatures, assigned: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        if self.embedding is None:
            return bag_of_words(assigned, self.vocabulary.size)
        return self.embedding.aggregate(features.descriptors, assigned)

    def bag(self, features: LocalFeatures, words: np.ndarray, *, query: bool = False) -> Tuple[np.ndarray, np.ndarray]:
        """The bag of an image's ``features`` given their nearest ``words``
        (:meth:`assign_features`): ``(words, counts)`` for TF-IDF, ``(words, signatures)``
        for ASMK* (with the query's or the database's multiple assignment: ``query``)."""
        m = self._assignments(query)
        if m == 1 or len(features) == 0:
            return self._bag_of(features, np.asarray(words, np.int64))
        return self._bag_of(features, self._assign_multiple(features, m, query))

    def _assign_multiple(self, features: LocalFeatures, m: int, query: bool) -> np.ndarray:
        """Each feature's ``m`` nearest words. A query's come from the HNSW graph from
        DEFAULT_QUERY_HNSW_THRESHOLD words (the database's follow the vocabulary's own rule):
        the same 3-nearest sets for 99.5-100 % of the features, several times faster."""
        voc = self.vocabulary
        approximate = True if query and voc.size >= DEFAULT_QUERY_HNSW_THRESHOLD else None
        return voc.assign_multiple(features.descriptors, m, self.asmk.assignment_ratio, approximate=approximate)

    def assign_and_bag(
        self, features: LocalFeatures, *, query: bool = False
    ) -> Tuple[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
        """``(the nearest word of each feature, the bag)`` — :meth:`assign_features` and
        :meth:`bag` with one vocabulary search: with multiple assignment the nearest word is
        the first of each feature's ``m`` (for a query from DEFAULT_QUERY_HNSW_THRESHOLD words,
        the graph's nearest: :meth:`_assign_multiple`)."""
        m = self._assignments(query)
        if m == 1 or len(features) == 0:
            words = self.assign_features(features)
            return words, self._bag_of(features, words)
        self._check_features(features)
        assigned = self._assign_multiple(features, m, query)
        return np.ascontiguousarray(assigned[:, 0]), self._bag_of(features, assigned)

    def geometry_words(self, features: LocalFeatures, words: np.ndarray) -> np.ndarray:
        """The labels spatial verification pairs features by (uint32): the words, or with an
        embedding that has verification sub-cells, ``word · cells + sub-cell``."""
        if self.embedding is None or self.embedding.fine is None:
            return np.asarray(words).astype(np.uint32)
        return self.embedding.fine_words(features.descriptors, words)

    def encode_features(
        self, features: LocalFeatures, *, box: Optional[Box] = None, query: bool = False
    ) -> Tuple[np.ndarray, np.ndarray]:
        """The bag (:meth:`bag`: ``(words, counts)`` or ``(words, signatures)``) of an image's
        local features, optionally only those inside ``box``; ``query``: encode as a query."""
        if box is not None:
            features = features.in_box(box)
        return self.assign_and_bag(features, query=query)[1]

    def encode(
        self, image: ImageSource, *, box: Optional[Box] = None, query: bool = False
    ) -> Tuple[np.ndarray, np.ndarray]:
        """The bag of an image (path, bytes or array), optionally of a box in it."""
        return self.encode_features(self.extractor.extract(image, box=box), query=query)

    # -- adding ---------------------------------------------------------------------------
    def _new_ids(self, ids: Optional[IdsLike], n: int) -> np.ndarray:
        if ids is None:
            return consecutive_ids(self._next_id, n)
        return as_ids(ids, n)

    def add_bags(
        self, ids: Optional[IdsLike], offsets: np.ndarray, words: np.ndarray, counts: np.ndarray
    ) -> np.ndarray:
        """Add already-encoded images (CSR, as :func:`~roiret.bow.bags_to_csr` makes them;
        ``counts`` are the signatures, uint64 ``(nnz, words)``, of an embedded index).
        Returns the ids."""
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        n = offsets.shape[0] - 1
        new = self._new_ids(ids, n)
        values = np.ascontiguousarray(counts, dtype=np.float32 if self.embedding is None else np.uint64)
        self.inverted_file.add(new, offsets, np.ascontiguousarray(words, dtype=np.int64), values)
        if n:
            self._next_id = max(self._next_id, int(new.max()) + 1)
        return new

    def add_features(self, features: Sequence[LocalFeatures], ids: Optional[IdsLike] = None) -> np.ndarray:
        """Add images given by their local features. Returns the ids (``ids`` or, when
        ``None``, consecutive integers after the largest id added so far)."""
        feats = list(features)
        ids = self._new_ids(ids, len(feats))
        bags = [self.encode_features(f) for f in feats]  # database side
        return self.add_bags(ids, *bags_to_csr(bags))

    def add(
        self,
        images: Iterable[ImageSource],
        ids: Optional[IdsLike] = None,
        *,
        progress: bool = True,
        batch_size: int = 256,
    ) -> np.ndarray:
        """Extract, encode and add images (paths, bytes or arrays).

        Parameters
        ----------
        images:
            The images. An image without any keypoint is added with an empty bag (it is
            counted in ``N`` for the idf but can never be retrieved).
        ids:
            int64 ids, new and unique (default: consecutive integers after the largest id
            added so far).
        progress:
            Show a progress bar (tqdm).
        batch_size:
            Images encoded before each insertion into the inverted file.

        Returns
        -------
        np.ndarray
            The ids, int64.
        """
        imgs = image_list(images)
        new = self._new_ids(ids, len(imgs))
        if int(batch_size) < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        it: Iterable[Any] = imgs
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(imgs, desc="BoW add", unit="img")
        bags: List[Tuple[np.ndarray, np.ndarray]] = []
        start = 0
        for img in it:
            bags.append(self.encode(img))
            if len(bags) == batch_size:
                self.add_bags(new[start : start + len(bags)], *bags_to_csr(bags))
                start += len(bags)
                bags = []
        if bags:
            self.add_bags(new[start : start + len(bags)], *bags_to_csr(bags))
        return new

    def remove(self, ids: IdsLike) -> None:
        """Remove images by id (see :meth:`roiret.InvertedFile.remove`)."""
        self.inverted_file.remove(as_ids(ids, distinct=False))

    def __len__(self) -> int:
        return len(self.inverted_file)

    @property
    def next_id(self) -> int:
        """The id the next image added without explicit ids gets."""
        return self._next_id

    def __repr__(self) -> str:
        return (
            f"BowIndex(images={len(self)}, vocabulary={self.vocabulary.size} words, features={self.extractor.kind!r})"
        )

    # -- search ---------------------------------------------------------------------------
    def search_bag(
        self, words: np.ndarray, counts: np.ndarray, top: int = 100, *, weights: Optional[np.ndarray] = None
    ) -> BowHits:
        """Top-N images for an encoded query (a bag: ``(words, counts)``, or ``(words,
        signatures)`` for an embedded index, whose ``weights`` per term default to the
        query's normalisation, :func:`query_weights`)."""
        top = positive_int("top", top)
        if len(words) == 0:
            return BowHits(np.zeros(0, np.int64), np.zeros(0, np.float32))
        ids, scores = self._search(words, counts, top, weights, exact=False)
        return BowHits(np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float32))

    def search_exact(
        self, words: np.ndarray, counts: np.ndarray, top: int, *, weights: Optional[np.ndarray] = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """As :meth:`search_bag`, with the float64 scores the results are ordered by (what a
        merge of several shards' lists needs)."""
        top = positive_int("top", top)
        if len(words) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        ids, exact = self._search(words, counts, top, weights, exact=True)
        return np.asarray(ids, np.int64), np.asarray(exact, np.float64)

    def _search(
        self, words: np.ndarray, values: np.ndarray, top: int, weights: Optional[np.ndarray], exact: bool
    ) -> Tuple[np.ndarray, np.ndarray]:
        words = np.ascontiguousarray(words, dtype=np.int64)
        fn = self.inverted_file.search_exact if exact else self.inverted_file.search
        if self.embedding is None:
            if weights is not None:
                raise ValueError("weights: only an embedded (ASMK) index takes per-term weights")
            out: Tuple[np.ndarray, np.ndarray] = fn(words, np.ascontiguousarray(values, dtype=np.float32), top)
            return out
        sigs = np.ascontiguousarray(values, dtype=np.uint64).reshape(len(words), -1)
        if weights is None:
            weights = query_weights(words, self.inverted_file.idf())
        w = np.ascontiguousarray(weights, dtype=np.float32)
        a = self.asmk
        # threads=0: a large search splits over the default threads, as InvertedFile's does
        res: Tuple[np.ndarray, np.ndarray] = fn(words, sigs, w, top=top, alpha=a.asmk_alpha, tau=a.asmk_tau, threads=0)
        return res

    def bag_of(self, image_id: int) -> Tuple[np.ndarray, np.ndarray]:
        """The stored bag ``(words, signatures)`` of an image of an embedded index (what query
        expansion adds to the query)."""
        if self.embedding is None:
            raise ValueError("bag_of: a TF-IDF index keeps no per-image bags (use the feature geometry's words)")
        words, sigs = self.inverted_file.document(int(image_id))
        return np.asarray(words, np.int64), np.asarray(sigs, np.uint64)

    def search_bags(self, bags: Sequence[Tuple[np.ndarray, np.ndarray]], top: int = 100) -> List[BowHits]:
        """Top-N images for many encoded queries at once (the native batch search, run on
        several threads). Returns one :class:`BowHits` per query, as :meth:`search_bag`."""
        top = positive_int("top", top)
        bags = list(bags)
        if self.embedding is not None:  # one native search each (the batch search is TF-IDF's)
            return [self.search_bag(w, v, top) for w, v in bags]
        out: List[Optional[BowHits]] = [None] * len(bags)
        nonempty = [i for i, (w, _) in enumerate(bags) if len(w)]
        for i, (w, _) in enumerate(bags):
            if not len(w):
                out[i] = BowHits(np.zeros(0, np.int64), np.zeros(0, np.float32))
        if nonempty:
            off, w, c = bags_to_csr([bags[i] for i in nonempty])
            ids, scores = self.inverted_file.search_batch(off, w, c, top)
            ids = np.asarray(ids, dtype=np.int64).reshape(len(nonempty), -1)
            scores = np.asarray(scores, dtype=np.float32).reshape(len(nonempty), -1)
            for row, i in enumerate(nonempty):
                keep = ids[row] >= 0
                out[i] = BowHits(np.ascontiguousarray(ids[row][keep]), np.ascontiguousarray(scores[row][keep]))
        return out  # type: ignore[return-value]

    def search_features(self, features: LocalFeatures, *, box: Optional[Box] = None, top: int = 100) -> BowHits:
        """Top-N images for a query given by its local features (optionally a box)."""
        return self.search_bag(*self.encode_features(features, box=box, query=True), top=top)

    def search(self, image: ImageSource, *, box: Optional[Box] = None, top: int = 100) -> BowHits:
        """Top-N database images for a query image, or for the box ``(x1, y1, x2, y2)``
        (image pixels) inside it.

        Returns
        -------
        BowHits
            ``(ids, scores)`` best first; fewer than ``top`` when fewer images share a
            word with the query; empty when the query has no keypoint (in the box).
        """
        return self.search_bag(*self.encode(image, box=box, query=True), top=top)

    # -- persistence ----------------------------------------------------------------------
    def save(self, folder: PathLike) -> None:
        """Save to ``folder`` (created if needed) as an index folder (:mod:`roiret.io.folder`:
        ``manifest.json`` with format version, feature settings, file names, sizes and
        SHA-256; the vocabulary as ``.npz``, no pickle; the inverted file in its native
        format). Atomic and locked: a reader sees the old index or the new one, never a
        mix; files of the previous save are removed afterwards."""

        def write(w: IndexWriter) -> Dict[str, Any]:
            w.put("vocabulary", "vocabulary", "npz", self.vocabulary.save)
            w.put("inverted_file", "inverted_file", "bin", lambda p: self.inverted_file.save(str(p)))
            if self.embedding is not None:
                w.put("embedding", "embedding", "npz", self.embedding.save)
            return {
                "asmk": self.asmk.to_dict(),
                "extractor": self.extractor.config(),
                "next_id": self._next_id,
                "vocabulary_size": self.vocabulary.size,
                "images": len(self),
            }

        IndexFolder(folder, _FORMAT, _VERSION, _WHAT).save(write)

    @classmethod
    def load(cls, folder: PathLike, *, verify: bool = True) -> "BowIndex":
        """Load an index saved by :meth:`save` (``verify``: check every file's SHA-256).

        Raises
        ------
        FileNotFoundError
            No such folder.
        roiret.errors.IndexFormatError
            No manifest, wrong kind, newer version, or a data file that is missing,
            truncated, corrupt or does not match its checksum.
        """
        m = IndexFolder(folder, _FORMAT, _VERSION, _WHAT).read(verify=verify, required=("vocabulary", "inverted_file"))
        with as_format_error(m.path, "incomplete or invalid manifest"):
            extractor = LocalFeatureExtractor.from_config(m.fields["extractor"])
            next_id = int(m.fields["next_id"])
            asmk = AsmkParams(**m.fields.get("asmk", {"first_stage": "tfidf"}))  # version 1 before ASMK: TF-IDF
        with m.parsing("vocabulary"):
            voc = Vocabulary.load(m.paths["vocabulary"])
        embedding = read_embedding(m, asmk.first_stage, voc)
        with m.parsing("inverted_file"):
            ivf = _inverted_file_class(embedding is not None).load(str(m.paths["inverted_file"]))
        with as_format_error(m.path):
            return cls(voc, extractor, inverted_file=ivf, next_id=next_id, embedding=embedding, asmk=asmk)
