"""The first stage's encoder: image → local features → visual words → a bag. It holds the
vocabulary, the local-feature extractor, and for the selective match kernel (ASMK*) the
Hamming embedding and the kernel's settings; it knows nothing of any inverted file, so
that one index, the shards of a sharded one and a query-only front end share it.

A bag is ``(words, counts)`` for TF-IDF — words int64 sorted and unique, counts float32 —
or ``(words, signatures)`` for ASMK* — signatures uint64 ``(u, ceil(bits / 64))``, one per
word (:mod:`roiret.bow.embedding`).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Tuple

import numpy as np

from ..io.folder import IndexWriter, Manifest, as_format_error
from ..io.images import ImageSource
from ..params import AsmkParams
from .embedding import HammingEmbedding, embedding_for
from .encode import bag_of_words
from .features import Box, LocalFeatureExtractor, LocalFeatures
from .vocabulary import DEFAULT_QUERY_HNSW_THRESHOLD, Vocabulary

__all__ = ["BowEncoder"]


class BowEncoder:
    """Images → bags of visual words (see the module docstring).

    Parameters
    ----------
    vocabulary:
        The visual vocabulary (:meth:`Vocabulary.fit` or :meth:`BowEncoder.train`).
    extractor:
        Local features; default: ``LocalFeatureExtractor(kind)`` with the descriptor kind the
        vocabulary was trained on (RootSIFT when unrecorded). Its dimension must match
        the vocabulary's.
    embedding:
        A :class:`~roiret.bow.embedding.HammingEmbedding` of this vocabulary: bags of
        signatures for the selective match kernel (ASMK*) instead of counts for TF-IDF.
    asmk:
        The kernel's settings (:class:`roiret.params.AsmkParams`: α, τ, multiple
        assignment); its ``first_stage`` must say ``"asmk"`` exactly when ``embedding`` is
        given (default: the defaults of that first stage).

    Thread safety: every method only reads the encoder and may run from several threads
    at once (the extractor and the vocabulary's assignment are thread-safe).
    """

    def __init__(
        self,
        vocabulary: Vocabulary,
        extractor: Optional[LocalFeatureExtractor] = None,
        *,
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
        if embedding is not None:
            if not isinstance(embedding, HammingEmbedding):
                raise TypeError(f"embedding: expected a HammingEmbedding, got {type(embedding).__name__}")
            if (embedding.vocab_size, embedding.dim) != (vocabulary.size, vocabulary.dim):
                raise ValueError(
                    f"the embedding was made for {embedding.vocab_size} × {embedding.dim} words, the vocabulary "
                    f"has {vocabulary.size} × {vocabulary.dim}"
                )
        if asmk is not None and not isinstance(asmk, AsmkParams):
            raise TypeError(f"asmk: expected roiret.params.AsmkParams, got {type(asmk).__name__}")
        if asmk is not None and (asmk.first_stage == "asmk") != (embedding is not None):
            raise ValueError(
                f"asmk: first_stage={asmk.first_stage!r} "
                + ("needs an embedding" if embedding is None else "but an embedding was given")
            )
        self.vocabulary = vocabulary
        self.extractor = extractor
        #: the Hamming embedding (None: TF-IDF) and the kernel's settings
        self.embedding = embedding
        self.asmk = asmk if asmk is not None else AsmkParams(first_stage="tfidf" if embedding is None else "asmk")

    @property
    def embedded(self) -> bool:
        """Whether the bags carry signatures for the selective match kernel (ASMK*)."""
        return self.embedding is not None

    def __repr__(self) -> str:
        return (
            f"BowEncoder(vocabulary={self.vocabulary.size} words, features={self.extractor.kind!r}, "
            f"first_stage={self.asmk.first_stage!r})"
        )

    # -- training -------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        images: Iterable[ImageSource],
        vocab_size: Any,
        *,
        extractor: Optional[LocalFeatureExtractor] = None,
        seed: int = 0,
        max_train_descriptors: Optional[int] = None,
        kmeans_iterations: int = 20,
        kmeans: str = "auto",
        progress: bool = True,
        asmk: Optional[AsmkParams] = None,
        **vocabulary_options: Any,
    ) -> "BowEncoder":
        """Learn a vocabulary of ``vocab_size`` words (an integer or ``"auto"``) from the
        local features of ``images``.

        ``seed``, ``max_train_descriptors``, ``kmeans_iterations``, ``kmeans`` and ``vocabulary_options`` (HNSW
        settings) go to :meth:`Vocabulary.fit`. ``asmk``: the first stage
        (:class:`~roiret.params.AsmkParams`; left out: TF-IDF, the class's plain form); with
        ``first_stage="asmk"`` the Hamming embedding is made too (``vocab_size="auto"`` then
        follows the ASMK rule). Train on database images (or other images), never on
        ground-truth labels.
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

    @property
    def geometry_words_are_bag_words(self) -> bool:
        """Whether a database image's :meth:`geometry_words` are exactly the words of its
        bag (ASMK*: one word per feature and no verification sub-cells, the defaults), so
        the stored feature words say where its pairs are in the inverted file."""
        return self.embedding is not None and self.embedding.fine is None and self._assignments(False) == 1

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

    # -- persistence (the encoder's files in an index folder) -------------------------------
    def write(self, w: IndexWriter) -> None:
        """Put the encoder's files into an index folder being saved: ``vocabulary``
        (``.npz``) and, for ASMK*, ``embedding`` (``.npz``). The local features' settings
        and the first stage's are manifest fields, which each kind of folder names its own
        way (:meth:`read` takes them)."""
        w.put("vocabulary", "vocabulary", "npz", self.vocabulary.save)
        if self.embedding is not None:
            w.put("embedding", "embedding", "npz", self.embedding.save)

    @classmethod
    def read(
        cls,
        m: Manifest,
        extractor: Dict[str, Any],
        asmk: AsmkParams,
        *,
        vocabulary: Optional[Vocabulary] = None,
    ) -> "BowEncoder":
        """The encoder whose files the checked manifest ``m`` lists (:meth:`write`), with the
        local features ``extractor`` (:meth:`LocalFeatureExtractor.config
        <roiret.bow.LocalFeatureExtractor.config>`, as the manifest records it) and the first
        stage ``asmk``. ``vocabulary``: use it instead of parsing the folder's vocabulary file
        (the same file, already in memory). A damaged file or setting, an ASMK first stage
        without its embedding or one that does not fit the vocabulary:
        :class:`~roiret.errors.IndexFormatError` naming the file."""
        if vocabulary is None:
            with m.parsing("vocabulary"):
                vocabulary = Vocabulary.load(m.paths["vocabulary"])
        with as_format_error(m.path, "incomplete or invalid manifest"):
            lfe = LocalFeatureExtractor.from_config(extractor)
        embedding = None
        if asmk.first_stage == "asmk":
            if "embedding" not in m.paths:
                raise m.invalid("an ASMK first stage without its embedding file")
            with m.parsing("embedding"):
                embedding = HammingEmbedding.load(m.paths["embedding"], vocabulary.centroids)
        with as_format_error(m.path):
            return cls(vocabulary, lfe, embedding=embedding, asmk=asmk)
