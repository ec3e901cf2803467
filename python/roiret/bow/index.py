"""The bag-of-visual-words first stage: an encoder (:class:`~roiret.bow.encoder.BowEncoder`:
images → local features → words → bags) and an inverted file of the bags → top-N
candidates. Two scorers: the selective match kernel on Hamming-embedded words (ASMK*;
native :class:`roiret.EmbeddedInvertedFile`, a bag is ``(words, signatures)``:
:mod:`roiret.bow.embedding`), the retriever's default, and TF-IDF (the paper's; native
:class:`roiret.InvertedFile`, a bag is ``(words, counts)``).

Query by image, or by a box inside it (the Oxford protocol's query crop: features are
computed on the whole query image and only those whose centre lies in the box are kept).
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from ..io import PathLike
from ..io.folder import IndexFolder, IndexWriter, Manifest, as_format_error
from ..io.images import ImageSource, image_list
from ..params import AsmkParams, positive_int
from .embedding import HammingEmbedding
from .encode import bags_to_csr
from .encoder import BowEncoder
from .features import Box, LocalFeatureExtractor, LocalFeatures
from .vocabulary import Vocabulary

if TYPE_CHECKING:  # pragma: no cover
    from .._core import EmbeddedInvertedFile, InvertedFile

__all__ = ["BowHits", "BowIndex", "FirstStage", "IdsLike", "as_ids", "consecutive_ids", "query_weights"]

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


class BowHits(NamedTuple):
    """Top-N result of a BoW query: ``ids`` int64 and ``scores`` float32 (the ASMK*
    similarity or the TF-IDF cosine), best first. Unpacks as ``ids, scores = hits``."""

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


class FirstStage(abc.ABC):
    """Searching a first stage on its :class:`~roiret.bow.encoder.BowEncoder` (``encoder``):
    by image (:meth:`search`), by local features or by encoded bags. :class:`BowIndex`
    implements it on its own inverted file; the first stage of a sharded index
    (:class:`roiret.search.sharded.ShardedBow`) by merging its shards' lists. A subclass
    gives ``encoder``, ``__len__``, :meth:`search_bag` and :meth:`bag_of`.

    Thread safety: the searches may run concurrently from several threads.
    """

    encoder: BowEncoder

    @property
    def vocabulary(self) -> Vocabulary:
        """The encoder's visual vocabulary."""
        return self.encoder.vocabulary

    @property
    def extractor(self) -> LocalFeatureExtractor:
        """The encoder's local features."""
        return self.encoder.extractor

    @property
    def embedding(self) -> Optional[HammingEmbedding]:
        """The encoder's Hamming embedding (None: TF-IDF)."""
        return self.encoder.embedding

    @property
    def asmk(self) -> AsmkParams:
        """The first stage's settings (:class:`~roiret.params.AsmkParams`)."""
        return self.encoder.asmk

    @property
    def embedded(self) -> bool:
        """Whether this first stage scores with the selective match kernel (ASMK*)."""
        return self.encoder.embedded

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def search_bag(
        self, words: np.ndarray, counts: np.ndarray, top: int = 100, *, weights: Optional[np.ndarray] = None
    ) -> BowHits:
        """Top-N images for an encoded query (a bag: ``(words, counts)``, or ``(words,
        signatures)`` for an embedded first stage, whose ``weights`` per term default to
        the query's normalisation, :func:`query_weights`)."""

    @abc.abstractmethod
    def bag_of(self, image_id: int, words: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """The stored bag ``(words, signatures)`` of an image of an embedded first stage
        (what query expansion adds to the query); ``words``: only its pairs whose word is
        among these (any order, repeats allowed) — given the image's own feature words, the
        whole bag, found without searching the rest of the vocabulary."""

    def search_bags(self, bags: Sequence[Tuple[np.ndarray, np.ndarray]], top: int = 100) -> List[BowHits]:
        """Top-N images for many encoded queries. Returns one :class:`BowHits` per query,
        as :meth:`search_bag`."""
        top = positive_int("top", top)
        return [self.search_bag(w, v, top) for w, v in bags]

    def search_features(self, features: LocalFeatures, *, box: Optional[Box] = None, top: int = 100) -> BowHits:
        """Top-N images for a query given by its local features (optionally a box)."""
        return self.search_bag(*self.encoder.encode_features(features, box=box, query=True), top=top)

    def search(self, image: ImageSource, *, box: Optional[Box] = None, top: int = 100) -> BowHits:
        """Top-N database images for a query image, or for the box ``(x1, y1, x2, y2)``
        (image pixels) inside it.

        Returns
        -------
        BowHits
            ``(ids, scores)`` best first; fewer than ``top`` when fewer images share a
            word with the query; empty when the query has no keypoint (in the box).
        """
        return self.search_bag(*self.encoder.encode(image, box=box, query=True), top=top)


class BowIndex(FirstStage):
    """The first stage of one index: an encoder (:class:`~roiret.bow.encoder.BowEncoder`)
    and the native inverted file of the images' bags.

    Parameters
    ----------
    encoder:
        The :class:`~roiret.bow.encoder.BowEncoder` (vocabulary, local features, and for
        ASMK* the Hamming embedding and the kernel's settings) — or, as a shorthand, a
        :class:`~roiret.bow.Vocabulary`: ``BowIndex(vocabulary, extractor, embedding=...,
        asmk=...)`` is ``BowIndex(BowEncoder(vocabulary, extractor, embedding=...,
        asmk=...))`` (``extractor``, ``embedding`` and ``asmk`` are only taken with a
        vocabulary). Without an embedding the index scores with TF-IDF.
    inverted_file:
        An existing :class:`roiret.InvertedFile` (or, for an embedded encoder,
        :class:`roiret.EmbeddedInvertedFile` with signatures of the embedding's length) of
        the vocabulary's size (default: a new empty one).
    next_id:
        The id given to the next image added without ids (default: one more than the
        largest id in ``inverted_file``, or 0).

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

    #: the roles of the files every saved first stage lists (:meth:`write`; the embedding
    #: too for ASMK*)
    FILES = ("vocabulary", "inverted_file")

    def __init__(
        self,
        encoder: Union[BowEncoder, Vocabulary],
        extractor: Optional[LocalFeatureExtractor] = None,
        *,
        inverted_file: Optional[Union[InvertedFile, EmbeddedInvertedFile]] = None,
        next_id: Optional[int] = None,
        embedding: Optional[HammingEmbedding] = None,
        asmk: Optional[AsmkParams] = None,
    ):
        if isinstance(encoder, Vocabulary):
            encoder = BowEncoder(encoder, extractor, embedding=embedding, asmk=asmk)
        elif not isinstance(encoder, BowEncoder):
            kind = type(encoder).__name__
            raise TypeError(f"encoder: expected a roiret.bow.BowEncoder (or a roiret.bow.Vocabulary), got {kind}")
        elif extractor is not None or embedding is not None or asmk is not None:
            raise TypeError(
                "extractor, embedding and asmk are the encoder's: BowIndex(BowEncoder(vocabulary, extractor, "
                "embedding=..., asmk=...)), or BowIndex(vocabulary, extractor, embedding=..., asmk=...)"
            )
        if inverted_file is None:
            emb = encoder.embedding
            size = encoder.vocabulary.size
            inverted_file = _inverted_file_class()(size) if emb is None else _inverted_file_class(True)(size, emb.bits)
        else:
            self._check_inverted_file(encoder, inverted_file)
        #: images → bags: vocabulary, local features, Hamming embedding, the kernel's settings
        self.encoder = encoder
        #: the native file: an InvertedFile (TF-IDF) or an EmbeddedInvertedFile (ASMK), by the encoder
        self.inverted_file: Any = inverted_file
        ids = inverted_file.ids()
        #: the id the next image added without an explicit id gets
        self._next_id = int(ids.max()) + 1 if len(ids) else 0
        if next_id is not None:
            self._next_id = max(self._next_id, int(next_id))

    @staticmethod
    def _check_inverted_file(encoder: BowEncoder, inverted_file: Any) -> None:
        kind = type(inverted_file).__name__
        if encoder.embedding is None:
            if not isinstance(inverted_file, _inverted_file_class()):
                raise TypeError(f"inverted_file: expected a roiret.InvertedFile, got {kind}")
        else:
            if not isinstance(inverted_file, _inverted_file_class(True)):
                raise TypeError(f"inverted_file: an embedded index needs a roiret.EmbeddedInvertedFile, got {kind}")
            if inverted_file.nbits != encoder.embedding.bits:
                raise ValueError(
                    f"inverted_file has {inverted_file.nbits}-bit signatures, the embedding {encoder.embedding.bits}"
                )
        if inverted_file.vocab_size != encoder.vocabulary.size:
            raise ValueError(
                f"inverted_file has {inverted_file.vocab_size} words, the vocabulary {encoder.vocabulary.size}"
            )

    @classmethod
    def train(cls, images: Iterable[ImageSource], vocab_size: Any, **options: Any) -> "BowIndex":
        """An empty index on a vocabulary learned from the local features of ``images``
        (:meth:`BowEncoder.train <roiret.bow.encoder.BowEncoder.train>`, which takes the
        ``options``; the training images are *not* added: call :meth:`add`)."""
        return cls(BowEncoder.train(images, vocab_size, **options))

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
        values = np.ascontiguousarray(counts, dtype=np.uint64 if self.embedded else np.float32)
        self.inverted_file.add(new, offsets, np.ascontiguousarray(words, dtype=np.int64), values)
        if n:
            self._next_id = max(self._next_id, int(new.max()) + 1)
        return new

    def add_features(self, features: Sequence[LocalFeatures], ids: Optional[IdsLike] = None) -> np.ndarray:
        """Add images given by their local features. Returns the ids (``ids`` or, when
        ``None``, consecutive integers after the largest id added so far)."""
        feats = list(features)
        ids = self._new_ids(ids, len(feats))
        bags = [self.encoder.encode_features(f) for f in feats]  # database side
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
            bags.append(self.encoder.encode(img))
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
        """The one place the first stage calls the native search."""
        words = np.ascontiguousarray(words, dtype=np.int64)
        fn = self.inverted_file.search_exact if exact else self.inverted_file.search
        if not self.embedded:
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

    def bag_of(self, image_id: int, words: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """The stored bag ``(words, signatures)`` of an image of an embedded index (what query
        expansion adds to the query); ``words``: only the pairs whose word is among these."""
        if not self.embedded:
            raise ValueError("bag_of: a TF-IDF index keeps no per-image bags (use the feature geometry's words)")
        got, sigs = self.inverted_file.document(int(image_id), words)
        return np.asarray(got, np.int64), np.asarray(sigs, np.uint64)

    def search_bags(self, bags: Sequence[Tuple[np.ndarray, np.ndarray]], top: int = 100) -> List[BowHits]:
        """Top-N images for many encoded queries at once (TF-IDF: the native batch search,
        run on several threads). Returns one :class:`BowHits` per query, as :meth:`search_bag`."""
        top = positive_int("top", top)
        bags = list(bags)
        if self.embedded:  # one native search each (the batch search is TF-IDF's)
            return super().search_bags(bags, top)
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

    # -- persistence ----------------------------------------------------------------------
    def write(self, w: IndexWriter) -> None:
        """Put the first stage's files into an index folder being saved: the encoder's
        (:meth:`BowEncoder.write <roiret.bow.encoder.BowEncoder.write>`) and
        ``inverted_file`` (the native format). Used by :meth:`save` and by the retriever's
        folder (:mod:`roiret.search.persist`)."""
        self.encoder.write(w)
        w.put("inverted_file", "inverted_file", "bin", lambda p: self.inverted_file.save(str(p)))

    @classmethod
    def read(cls, m: Manifest, encoder: BowEncoder, *, next_id: Optional[int] = None, mmap: bool = False) -> "BowIndex":
        """The first stage whose files the checked manifest ``m`` lists (:meth:`write`), on
        ``encoder`` (:meth:`BowEncoder.read <roiret.bow.encoder.BowEncoder.read>` of the same
        manifest). ``mmap``: an ASMK inverted file maps its signatures instead of reading
        them (:meth:`EmbeddedInvertedFile.load <roiret.EmbeddedInvertedFile.load>`; a TF-IDF
        one has none and is read). A damaged inverted file, or one that does not fit the
        encoder: :class:`~roiret.errors.IndexFormatError` naming the file."""
        with m.parsing("inverted_file"):
            path = str(m.paths["inverted_file"])
            ivf = (
                _inverted_file_class(True).load(path, mmap=mmap)
                if encoder.embedded
                else _inverted_file_class().load(path)
            )
        with m.parsing("inverted_file", "does not fit the vocabulary or the embedding"):
            return cls(encoder, inverted_file=ivf, next_id=next_id)

    def save(self, folder: PathLike) -> None:
        """Save to ``folder`` (created if needed) as an index folder (:mod:`roiret.io.folder`:
        ``manifest.json`` with format version, feature settings, file names, sizes and
        SHA-256; the vocabulary as ``.npz``, no pickle; the inverted file in its native
        format). Atomic and locked: a reader sees the old index or the new one, never a
        mix; files of the previous save are removed afterwards."""

        def write(w: IndexWriter) -> Dict[str, Any]:
            self.write(w)
            return {
                "asmk": self.asmk.to_dict(),
                "extractor": self.extractor.config(),
                "next_id": self._next_id,
                "vocabulary_size": self.vocabulary.size,
                "images": len(self),
            }

        IndexFolder(folder, _FORMAT, _VERSION, _WHAT).save(write)

    @classmethod
    def load(cls, folder: PathLike, *, verify: bool = True, mmap: bool = False) -> "BowIndex":
        """Load an index saved by :meth:`save` (``verify``: check every file's SHA-256;
        ``mmap``: map an ASMK index's signatures instead of reading them, :meth:`read`).

        Raises
        ------
        FileNotFoundError
            No such folder.
        roiret.errors.IndexFormatError
            No manifest, wrong kind, newer version, or a data file that is missing,
            truncated, corrupt or does not match its checksum.
        """
        m = IndexFolder(folder, _FORMAT, _VERSION, _WHAT).read(verify=verify, required=cls.FILES)
        with as_format_error(m.path, "incomplete or invalid manifest"):
            extractor = m.fields["extractor"]
            next_id = int(m.fields["next_id"])
            asmk = AsmkParams(**m.fields.get("asmk", {"first_stage": "tfidf"}))  # version 1 before ASMK: TF-IDF
        return cls.read(m, BowEncoder.read(m, extractor, asmk), next_id=next_id, mmap=mmap)
