"""The retriever's index folder (format ``roiret-index``, version 1), on
:class:`roiret.io.folder.IndexFolder` — the guarantees (atomic save, checksums, locking,
damage → :class:`~roiret.errors.IndexFormatError` naming the file) are that module's.

Manifest fields: ``roiret_version``, ``config`` (:class:`RetrieverConfig` as a dict),
``local_features`` (the extractor's settings), ``backbone_fingerprint`` (SHA-256 of the CNN
weights), ``nbits``, ``images``, ``rois``. Data files by role: the first stage's, written and
read by :class:`~roiret.bow.BowIndex` (:meth:`~roiret.bow.BowIndex.write` /
:meth:`~roiret.bow.BowIndex.read`; ``vocabulary`` ``.npz``, ``inverted_file`` in the native
format with CRCs, ``embedding`` ``.npz`` for ASMK), ``whitening`` (``.npz``, when learned),
``projection`` (``.npy``, for projected codes), ``rois.<array>`` (``.npy``, one per
:class:`RoIStore` array, memory-mapped on load) and ``geometry.<array>`` (``.npy``, one per
:class:`~roiret.search.geometry.GeometryStore` array, memory-mapped; absent from indexes
saved before roiret kept it, which then load without spatial verification). No pickle
anywhere. A loaded index holds no open file descriptor: the arrays are mapped by
:func:`roiret._kernels.map_npy`, which closes each file once it is mapped.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple, Union

import numpy as np

from .. import __version__
from ..bow import BowEncoder, BowIndex, Vocabulary
from ..errors import IndexFormatError
from ..io import PathLike
from ..io.arrays import save_npy
from ..io.folder import MANIFEST, IndexFolder, IndexWriter, Manifest, as_format_error
from .config import RetrieverConfig
from .geometry import GeometryStore
from .index import TwoStageIndex
from .store import RoIStore

if TYPE_CHECKING:  # pragma: no cover
    from .sharded import ShardedIndex

__all__ = [
    "AnyIndex",
    "FORMAT",
    "Frontend",
    "SavedIndex",
    "VERSION",
    "load_frontend",
    "load_index",
    "read_manifest",
    "save_index",
]

FORMAT = "roiret-index"
VERSION = 1
_WHAT = "roiret index"

#: the images a retriever holds: one index, or a sharded one (:mod:`roiret.search.sharded`,
#: whose folder holds ordinary index folders); both are what ranking reads
#: (:class:`~roiret.search.collection.Collection`)
AnyIndex = Union[TwoStageIndex, "ShardedIndex"]


@dataclass
class SavedIndex:
    """What an index folder holds, parsed and checked (the CNN side is checked by the
    :class:`~roiret.Retriever` that loads it: weights fingerprint, code length)."""

    config: RetrieverConfig
    index: AnyIndex  # a ShardedIndex from roiret.search.sharded.load_sharded
    nbits: int
    fingerprint: Optional[str]
    whitening: Any  # Optional[PCAWhitening]
    code_state: Dict[str, np.ndarray]
    manifest: Manifest


def save_index(
    folder: PathLike,
    *,
    config: RetrieverConfig,
    index: TwoStageIndex,
    nbits: int,
    fingerprint: Optional[str],
    whitening: Any,
    code_state: Dict[str, np.ndarray],
) -> None:
    """Write an index folder (atomic, locked; see :mod:`roiret.io.folder`)."""

    def write(w: IndexWriter) -> Dict[str, Any]:
        index.bow.write(w)
        if whitening is not None:
            w.put("whitening", "whitening", "npz", whitening.save)
        for key, arr in code_state.items():
            w.put(key, key, "npy", functools.partial(save_npy, arr=arr))
        for key, arr in index.store.state_dict().items():
            w.put(f"rois.{key}", f"rois-{key}", "npy", functools.partial(save_npy, arr=arr))
        if index.geometry is not None:
            for key, arr in index.geometry.state_dict().items():
                w.put(f"geometry.{key}", f"geometry-{key}", "npy", functools.partial(save_npy, arr=arr))
        return {
            "roiret_version": __version__,
            "config": config.to_dict(),
            "local_features": index.encoder.extractor.config(),
            "backbone_fingerprint": fingerprint,
            "nbits": nbits,
            "images": len(index),
            "rois": index.store.num_rois,
            "features": None if index.geometry is None else index.geometry.num_features,
        }

    IndexFolder(folder, FORMAT, VERSION, _WHAT).save(write)


def _fields(m: Manifest) -> Tuple[RetrieverConfig, int, Dict[str, Any], Optional[str]]:
    """(configuration, bits per code, local feature settings, weights fingerprint)."""
    with as_format_error(m.path, "incomplete or invalid manifest"):
        # keys added after format version 1 was first written keep the old behaviour
        config = RetrieverConfig.from_dict({"code_bits": None, "first_stage": "tfidf", **m.fields["config"]})
        nbits = int(m.fields["nbits"])
        lf_config = m.fields["local_features"]
        fingerprint = m.fields.get("backbone_fingerprint")
        if not isinstance(lf_config, dict) or not (fingerprint is None or isinstance(fingerprint, str)):
            raise ValueError("local_features must be an object and backbone_fingerprint a string")
    if nbits < 1:
        raise m.invalid(f"nbits must be >= 1, got {nbits}")
    return config, nbits, lf_config, fingerprint


def _read_npy(path: Path, mmap: bool) -> np.ndarray:
    """A saved array, read — or memory-mapped holding no file descriptor (a loaded index
    keeps none open: a process can hold thousands of shards)."""
    from .._kernels import map_npy

    return map_npy(path) if mmap else np.load(path, allow_pickle=False)


def _store(m: Manifest, words: int, mmap: bool) -> RoIStore:
    state = {}
    for key in RoIStore.FILES:
        with m.parsing(f"rois.{key}", "not a valid .npy array"):
            state[key] = _read_npy(m.paths[f"rois.{key}"], mmap and key != "names")
    with as_format_error(m.folder, "inconsistent RoI arrays"):
        store = RoIStore.from_state(words, state, where=str(m.folder))
    images, rois = m.fields.get("images", len(store)), m.fields.get("rois", store.num_rois)
    if images != len(store) or rois != store.num_rois:
        raise m.invalid(
            f"the manifest lists {images} images / {rois} RoIs, the arrays hold {len(store)} / {store.num_rois}"
        )
    return store


def _geometry(m: Manifest, images: int, mmap: bool) -> Optional[GeometryStore]:
    roles = [f"geometry.{k}" for k in GeometryStore.FILES]
    present = [r for r in roles if r in m.paths]
    if not present:
        return None
    if len(present) != len(roles):
        missing = sorted(set(roles) - set(present))
        raise m.invalid(f"the manifest lists part of the feature geometry (missing {', '.join(missing)})")
    state = {}
    for key in GeometryStore.FILES:
        with m.parsing(f"geometry.{key}", "not a valid .npy array"):
            state[key] = _read_npy(m.paths[f"geometry.{key}"], mmap)
    with as_format_error(m.folder, "inconsistent feature geometry"):
        geometry = GeometryStore.from_state(state, images, where=str(m.folder))
    listed = m.fields.get("features", geometry.num_features)
    if listed != geometry.num_features:
        raise m.invalid(f"the manifest lists {listed} local features, the geometry arrays hold {geometry.num_features}")
    return geometry


def read_manifest(folder: PathLike, *, verify: bool = True) -> Manifest:
    """The checked manifest of a retriever's index folder (every data file present, of the
    listed size and, with ``verify``, checksum), without parsing the data files."""
    required = BowIndex.FILES + tuple(f"rois.{k}" for k in RoIStore.FILES)
    return IndexFolder(folder, FORMAT, VERSION, _WHAT).read(verify=verify, required=required)


@dataclass
class Frontend:
    """What encoding queries (and codes) for an index needs, without its images: the
    configuration, code length, weights fingerprint, whitening, code state and the first
    stage's :class:`~roiret.bow.BowEncoder` (vocabulary, local features, embedding)."""

    config: RetrieverConfig
    nbits: int
    fingerprint: Optional[str]
    whitening: Any  # Optional[PCAWhitening]
    code_state: Dict[str, np.ndarray]
    encoder: BowEncoder
    manifest: Manifest


def vocabulary_sha(folder: PathLike) -> Optional[str]:
    """The SHA-256 an index folder's manifest lists for its vocabulary (None when unreadable)."""
    try:
        spec = json.loads((Path(folder) / MANIFEST).read_text("utf-8"))["files"]["vocabulary"]
        return str(spec["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


#: ``(SHA-256, vocabulary)``: a vocabulary already in memory, used by an index folder whose
#: manifest lists that SHA-256 for its vocabulary file (the shards of one collection)
SharedVocabulary = Tuple[str, Vocabulary]


def _frontend(m: Manifest, shared: Optional[SharedVocabulary] = None) -> Frontend:
    from ..cnn.whitening import PCAWhitening

    config, nbits, lf_config, fingerprint = _fields(m)
    # Every file is untrusted input: whatever a damaged one makes a parser raise is
    # reported as IndexFormatError naming it. Nothing is unpickled.
    vocabulary = None
    if shared is not None and vocabulary_sha(m.folder) == shared[0]:
        vocabulary = shared[1]  # the same file, already parsed: one vocabulary in memory
    encoder = BowEncoder.read(m, lf_config, config.asmk, vocabulary=vocabulary)
    whitening = None
    if "whitening" in m.paths:
        with m.parsing("whitening"):
            whitening = PCAWhitening.load(m.paths["whitening"])
    code_state = {}
    if config.code_bits:
        if "projection" not in m.paths:
            raise m.invalid(f"no projection file listed for {config.code_bits}-bit codes")
        with m.parsing("projection", "not a valid .npy array"):
            code_state["projection"] = np.load(m.paths["projection"], allow_pickle=False)
    return Frontend(config, nbits, fingerprint, whitening, code_state, encoder, m)


def load_frontend(folder: PathLike, *, verify: bool = True) -> Frontend:
    """The query side of an index folder (:class:`Frontend`): its manifest checked, its
    images' arrays and inverted file not read."""
    return _frontend(read_manifest(folder, verify=verify))


def load_index(
    folder: PathLike, *, verify: bool = True, mmap: bool = True, shared_vocabulary: Optional[SharedVocabulary] = None
) -> SavedIndex:
    """Read and check an index folder written by :func:`save_index`. ``shared_vocabulary``:
    use that vocabulary instead of parsing the folder's when it is the same file. ``mmap``
    maps the RoI and geometry arrays and the ASMK inverted file's signatures instead of
    reading them."""
    m = read_manifest(folder, verify=verify)
    f = _frontend(m, shared_vocabulary)
    bow = BowIndex.read(m, f.encoder, mmap=mmap)
    store = _store(m, (f.nbits + 63) // 64, mmap)
    index = TwoStageIndex(bow, store, _geometry(m, len(store), mmap))
    index.check_consistent(str(m.folder))
    return SavedIndex(f.config, index, f.nbits, f.fingerprint, f.whitening, f.code_state, m)


def refuse(saved: SavedIndex, message: str) -> IndexFormatError:
    """An IndexFormatError about the folder of ``saved``."""
    return IndexFormatError(f"{saved.manifest.folder}: {message}")
