"""The bag-of-visual-words first stage: images → local features → words → TF-IDF inverted
file (native :class:`roiret.InvertedFile`) → top-N candidates.

Query by image, or by a box inside it (the Oxford protocol's query crop: features are
computed on the whole query image and only those whose centre lies in the box are kept).
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..errors import IndexFormatError
from ..imageio import ImageSource
from ._io import PathLike, atomic_write, remove_files, sha256_file
from .encode import bag_of_words, bags_to_csr
from .features import Box, LocalFeatureExtractor, LocalFeatures
from .vocabulary import Vocabulary

__all__ = ["BowHits", "BowIndex"]

_FORMAT = "roiret.bow_index"
_VERSION = 1
_MANIFEST = "manifest.json"


def _inverted_file_class():
    from .._kernels import InvertedFile  # native core; imported on first use

    return InvertedFile


class BowHits(NamedTuple):
    """Top-N result of a BoW query: ``ids`` int64 and ``scores`` float32 (TF-IDF cosine),
    best first. Unpacks as ``ids, scores = hits``."""

    ids: np.ndarray
    scores: np.ndarray


def _as_ids(ids: Any, n: int) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim != 1:
        raise ValueError(f"ids: expected a 1-D array of integers, got shape {a.shape}")
    if a.size and a.dtype.kind not in "iu":
        raise TypeError(f"ids: expected integers, got dtype {a.dtype}")
    if a.shape[0] != n:
        raise ValueError(f"ids: expected {n} ids (one per image), got {a.shape[0]}")
    a = a.astype(np.int64, copy=False)
    if np.unique(a).size != a.size:
        raise ValueError("ids: contain repeats; every image needs its own id")
    return np.ascontiguousarray(a)


def _check_top_n(top_n: int) -> int:
    if isinstance(top_n, bool) or int(top_n) != top_n or top_n < 1:
        raise ValueError(f"top_n: expected a positive integer, got {top_n!r}")
    return int(top_n)


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
        An existing :class:`roiret.InvertedFile` of the same vocabulary size (default: a new
        empty one).

    TF-IDF (computed by the native inverted file): ``idf_t = ln(N / df_t)``; image and query
    vectors ``count · idf`` L2-normalised; score = their dot product (cosine).

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
        inverted_file: Any = None,
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
                f"the vocabulary was trained on {trained_on!r} descriptors, the extractor gives "
                f"{extractor.kind!r}"
            )
        if inverted_file is None:
            inverted_file = _inverted_file_class()(vocabulary.size)
        self.vocabulary = vocabulary
        self.extractor = extractor
        self.inverted_file = inverted_file
        self._next_id = 0

    # -- training -------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        images: Iterable[ImageSource],
        n_words: int,
        *,
        extractor: Optional[LocalFeatureExtractor] = None,
        seed: int = 0,
        max_train: Optional[int] = None,
        n_iter: int = 20,
        kmeans: str = "auto",
        progress: bool = True,
        **vocabulary_options: Any,
    ) -> "BowIndex":
        """Learn a vocabulary from the local features of ``images`` and return an empty
        index using it (the training images are *not* added; call :meth:`add`).

        ``seed``, ``max_train``, ``n_iter``, ``kmeans`` and ``vocabulary_options`` (HNSW
        settings) go to :meth:`Vocabulary.fit`. Train on database images (or other images),
        never on ground-truth labels.
        """
        extractor = extractor or LocalFeatureExtractor()
        feats = extractor.extract_many(images, progress=progress, desc="features for k-means")
        voc = Vocabulary.fit(
            feats,
            n_words,
            seed=seed,
            max_train=max_train,
            n_iter=n_iter,
            kmeans=kmeans,
            descriptor=extractor.kind,
            progress=progress,
            **vocabulary_options,
        )
        return cls(voc, extractor)

    # -- encoding -------------------------------------------------------------------------
    def encode_features(
        self, features: LocalFeatures, *, box: Optional[Box] = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """(words int64 sorted unique, counts float32) of an image's local features,
        optionally only those inside ``box``."""
        if not isinstance(features, LocalFeatures):
            raise TypeError(f"features: expected LocalFeatures, got {type(features).__name__}")
        if features.kind != self.extractor.kind or features.dim != self.vocabulary.dim:
            raise ValueError(
                f"features are {features.dim}-d {features.kind!r}; this index uses "
                f"{self.vocabulary.dim}-d {self.extractor.kind!r}"
            )
        if box is not None:
            features = features.in_box(box)
        return bag_of_words(self.vocabulary.assign(features.descriptors), self.vocabulary.size)

    def encode(self, image: ImageSource, *, box: Optional[Box] = None) -> Tuple[np.ndarray, np.ndarray]:
        """(words, counts) of an image (path, bytes or array), optionally of a box in it."""
        return self.encode_features(self.extractor.extract(image, box=box))

    # -- adding ---------------------------------------------------------------------------
    def _new_ids(self, ids: Any, n: int) -> np.ndarray:
        if ids is None:
            return np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        return _as_ids(ids, n)

    def add_bags(self, ids: Any, offsets: np.ndarray, words: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Add already-encoded images (CSR, as :func:`~roiret.bow.bags_to_csr` makes them).
        Returns the ids."""
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        n = offsets.shape[0] - 1
        ids = self._new_ids(ids, n)
        self.inverted_file.add(
            ids,
            offsets,
            np.ascontiguousarray(words, dtype=np.int64),
            np.ascontiguousarray(counts, dtype=np.float32),
        )
        if n:
            self._next_id = max(self._next_id, int(ids.max()) + 1)
        return ids

    def add_features(self, features: Sequence[LocalFeatures], ids: Any = None) -> np.ndarray:
        """Add images given by their local features. Returns the ids (``ids`` or, when
        ``None``, consecutive integers after the largest id added so far)."""
        feats = list(features)
        ids = self._new_ids(ids, len(feats))
        bags = [self.encode_features(f) for f in feats]
        return self.add_bags(ids, *bags_to_csr(bags))

    def add(
        self,
        images: Iterable[ImageSource],
        ids: Any = None,
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
        imgs = list(images)
        ids = self._new_ids(ids, len(imgs))
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
                self.add_bags(ids[start : start + len(bags)], *bags_to_csr(bags))
                start += len(bags)
                bags = []
        if bags:
            self.add_bags(ids[start : start + len(bags)], *bags_to_csr(bags))
        return ids

    def remove(self, ids: Any) -> None:
        """Remove images by id (see :meth:`roiret.InvertedFile.remove`)."""
        a = np.ascontiguousarray(np.asarray(ids), dtype=np.int64).reshape(-1)
        self.inverted_file.remove(a)

    def __len__(self) -> int:
        return len(self.inverted_file)

    def __repr__(self) -> str:
        return (
            f"BowIndex(images={len(self)}, vocabulary={self.vocabulary.size} words, "
            f"features={self.extractor.kind!r})"
        )

    # -- search ---------------------------------------------------------------------------
    def search_bag(self, words: np.ndarray, counts: np.ndarray, top_n: int = 100) -> BowHits:
        """Top-N images for an encoded query (words, counts)."""
        top_n = _check_top_n(top_n)
        words = np.ascontiguousarray(words, dtype=np.int64)
        counts = np.ascontiguousarray(counts, dtype=np.float32)
        if words.size == 0:
            return BowHits(np.zeros(0, np.int64), np.zeros(0, np.float32))
        ids, scores = self.inverted_file.search(words, counts, top_n)
        return BowHits(np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float32))

    def search_bags(
        self, bags: Sequence[Tuple[np.ndarray, np.ndarray]], top_n: int = 100
    ) -> List[BowHits]:
        """Top-N images for many encoded queries at once (the native batch search, run on
        several threads). Returns one :class:`BowHits` per query, as :meth:`search_bag`."""
        top_n = _check_top_n(top_n)
        bags = list(bags)
        out: List[Optional[BowHits]] = [None] * len(bags)
        nonempty = [i for i, (w, _) in enumerate(bags) if len(w)]
        for i, (w, _) in enumerate(bags):
            if not len(w):
                out[i] = BowHits(np.zeros(0, np.int64), np.zeros(0, np.float32))
        if nonempty:
            off, w, c = bags_to_csr([bags[i] for i in nonempty])
            ids, scores = self.inverted_file.search_batch(off, w, c, top_n)
            ids = np.asarray(ids, dtype=np.int64).reshape(len(nonempty), -1)
            scores = np.asarray(scores, dtype=np.float32).reshape(len(nonempty), -1)
            for row, i in enumerate(nonempty):
                keep = ids[row] >= 0
                out[i] = BowHits(
                    np.ascontiguousarray(ids[row][keep]), np.ascontiguousarray(scores[row][keep])
                )
        return out  # type: ignore[return-value]

    def search_features(
        self, features: LocalFeatures, *, box: Optional[Box] = None, top_n: int = 100
    ) -> BowHits:
        """Top-N images for a query given by its local features (optionally a box)."""
        return self.search_bag(*self.encode_features(features, box=box), top_n=top_n)

    def search(self, image: ImageSource, *, box: Optional[Box] = None, top_n: int = 100) -> BowHits:
        """Top-N database images for a query image, or for the box ``(x1, y1, x2, y2)``
        (image pixels) inside it.

        Returns
        -------
        BowHits
            ``(ids, scores)`` best first; fewer than ``top_n`` when fewer images share a
            word with the query; empty when the query has no keypoint (in the box).
        """
        return self.search_bag(*self.encode(image, box=box), top_n=top_n)

    # -- persistence ----------------------------------------------------------------------
    def save(self, folder: PathLike) -> None:
        """Save to ``folder`` (created if needed): ``manifest.json`` (format version,
        feature settings, file names, sizes and SHA-256), the vocabulary (``.npz``, no
        pickle) and the inverted file (native format). New data files get fresh names and
        the manifest is replaced atomically last, so a reader sees the old index or the new
        one, never a mix; files of the previous save are removed afterwards."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:12]
        voc_name, ivf_name = f"vocabulary-{tag}.npz", f"inverted_file-{tag}.bin"
        old = self._manifest_files(folder)
        written = []
        try:
            self.vocabulary.save(folder / voc_name)
            written.append(voc_name)
            self.inverted_file.save(str(folder / ivf_name))
            written.append(ivf_name)
            manifest = {
                "format": _FORMAT,
                "version": _VERSION,
                "extractor": self.extractor.config(),
                "next_id": self._next_id,
                "vocabulary_size": self.vocabulary.size,
                "images": len(self),
                "files": {
                    role: {
                        "name": name,
                        "bytes": (folder / name).stat().st_size,
                        "sha256": sha256_file(folder / name),
                    }
                    for role, name in (("vocabulary", voc_name), ("inverted_file", ivf_name))
                },
            }
            text = json.dumps(manifest, indent=2, sort_keys=True)
            atomic_write(folder / _MANIFEST, lambda f: f.write(text.encode("utf-8")))
        except BaseException:
            remove_files(folder, written)
            raise
        remove_files(folder, [name for name in old if name not in (voc_name, ivf_name)])

    @staticmethod
    def _manifest_files(folder: Path) -> List[str]:
        try:
            m = json.loads((folder / _MANIFEST).read_text("utf-8"))
            return [f["name"] for f in m.get("files", {}).values() if "/" not in f["name"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return []

    @classmethod
    def load(cls, folder: PathLike) -> "BowIndex":
        """Load an index saved by :meth:`save`.

        Raises
        ------
        FileNotFoundError
            No such folder or manifest.
        roiret.errors.IndexFormatError
            Wrong kind, newer version, or a data file that is missing, truncated or does
            not match its checksum.
        """
        folder = Path(folder)
        mpath = folder / _MANIFEST
        if not mpath.exists():
            raise FileNotFoundError(f"{folder}: no {_MANIFEST} (not a saved BowIndex)")
        try:
            m = json.loads(mpath.read_text("utf-8"))
        except ValueError as e:
            raise IndexFormatError(f"{mpath}: not valid JSON ({e})") from None
        if not isinstance(m, dict) or m.get("format") != _FORMAT:
            raise IndexFormatError(f"{mpath}: not a roiret BoW index manifest")
        ver = m.get("version")
        if not isinstance(ver, int) or not 1 <= ver <= _VERSION:
            raise IndexFormatError(
                f"{mpath}: format version {ver!r}; this roiret reads versions 1 to {_VERSION}"
            )
        try:
            files = m["files"]
            paths = {}
            for role in ("vocabulary", "inverted_file"):
                spec = files[role]
                name = spec["name"]
                if "/" in name or "\\" in name or name.startswith(".."):
                    raise IndexFormatError(f"{mpath}: bad file name {name!r}")
                p = folder / name
                if not p.exists():
                    raise IndexFormatError(f"{mpath}: {role} file {name!r} is missing")
                if p.stat().st_size != spec["bytes"] or sha256_file(p) != spec["sha256"]:
                    raise IndexFormatError(f"{mpath}: {role} file {name!r} is truncated or corrupt")
                paths[role] = p
            extractor = LocalFeatureExtractor.from_config(m["extractor"])
            next_id = int(m["next_id"])
        except (KeyError, TypeError) as e:
            raise IndexFormatError(f"{mpath}: incomplete manifest ({e})") from None
        voc = Vocabulary.load(paths["vocabulary"])
        ivf = _inverted_file_class().load(str(paths["inverted_file"]))
        out = cls(voc, extractor, inverted_file=ivf)
        out._next_id = next_id
        return out
