"""roiret — instance retrieval with RoI-based CNN features and a C++ core.

The public surface is listed in ``__all__``. Heavy parts (torch, OpenCV, faiss) are
imported on first use, so ``import roiret`` stays fast.

Sub-packages follow the data (docs/ARCHITECTURE.md): :mod:`roiret.io` (images, array
files, index folders), :mod:`roiret.cnn` (weights, backbones, RoIs, descriptors, codes),
:mod:`roiret.bow` (local features, vocabulary, encoder, inverted file), :mod:`roiret.search`
(configuration, two-stage index, re-ranking, :class:`Retriever`), :mod:`roiret.eval`
(ground truth, mAP, the paper's table) and :mod:`roiret.apps` (command line, demo,
pictures); :mod:`roiret.params` holds the choices and parameter groups, :mod:`roiret.errors`
the exceptions, and ``roiret._kernels`` the native kernels.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any, List

# torch and faiss each bring an OpenMP runtime whose threads, by default, spin for a while
# after every parallel region; the CNN and the word assignment alternate, so each runtime's
# spinning threads take the cores the other one needs. Sleeping instead (PASSIVE), measured
# on the 2-core machine (benchmarks/README.md, "OpenMP threads that sleep"): query p50
# 108-116 -> 85-87 ms, p95 219-221 -> 144-155 ms; indexing (the default configuration)
# 9.2-9.4 -> 10.4-12.6 images/s, the paper's configuration unchanged; results are
# identical. Set here, before roiret loads torch or faiss (a runtime loaded earlier keeps its
# setting); a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

# name -> submodule that defines it (resolved lazily by __getattr__)
_LAZY = {
    # native kernels (roiret._kernels wraps roiret._core)
    "pack_codes": "_kernels",
    "unpack_codes": "_kernels",
    "hamming_matrix": "_kernels",
    "hamming_knn": "_kernels",
    "cross_match": "_kernels",
    "CrossMatchResult": "_kernels",
    "select_rois": "_kernels",
    "InvertedFile": "_kernels",
    "EmbeddedInvertedFile": "_kernels",
    "simd_level": "_kernels",
    "supported_simd_levels": "_kernels",
    "set_simd_level": "_kernels",
    "get_num_threads": "_kernels",
    "set_num_threads": "_kernels",
    # errors
    "RoiretError": "errors",
    "ImageError": "errors",
    "IndexFormatError": "errors",
    "NotTrainedError": "errors",
    "UnknownIdError": "errors",
    "WeightsError": "errors",
    "WeightsNotFoundError": "errors",
    # parameters
    "RegionParams": "params",
    "CodeParams": "params",
    "BowParams": "params",
    "RerankParams": "params",
    "SearchParams": "params",
    # images and index folders
    "load_image": "io.images",
    "IndexFolder": "io.folder",
    # CNN RoI extraction
    "RoIExtractor": "cnn.extractor",
    "RoIResult": "cnn.extractor",
    "PCAWhitening": "cnn.whitening",
    "build_backbone": "cnn.backbones",
    "detect_rois": "cnn.regions",
    # bag of words
    "BowEncoder": "bow",
    "BowIndex": "bow",
    "Vocabulary": "bow",
    "LocalFeatureExtractor": "bow",
    # the retriever
    "Retriever": "search",
    "RetrieverConfig": "search",
    "SearchResult": "search",
    "PreparedQuery": "search",
    "Hit": "search",
    "rerank": "search.rerank",
    # evaluation
    "load_gnd": "eval",
    "average_precision": "eval",
    "mean_average_precision": "eval",
    "ukbench_score": "eval",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'roiret' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # pragma: no cover
    from ._kernels import (  # noqa: F401
        CrossMatchResult,
        EmbeddedInvertedFile,
        InvertedFile,
        cross_match,
        get_num_threads,
        hamming_knn,
        hamming_matrix,
        pack_codes,
        select_rois,
        set_num_threads,
        set_simd_level,
        simd_level,
        supported_simd_levels,
        unpack_codes,
    )
    from .bow import BowEncoder, BowIndex, LocalFeatureExtractor, Vocabulary  # noqa: F401
    from .cnn.backbones import build_backbone  # noqa: F401
    from .cnn.extractor import RoIExtractor, RoIResult  # noqa: F401
    from .cnn.regions import detect_rois  # noqa: F401
    from .cnn.whitening import PCAWhitening  # noqa: F401
    from .errors import (  # noqa: F401
        ImageError,
        IndexFormatError,
        NotTrainedError,
        RoiretError,
        UnknownIdError,
        WeightsError,
        WeightsNotFoundError,
    )
    from .eval import average_precision, load_gnd, mean_average_precision, ukbench_score  # noqa: F401
    from .io.folder import IndexFolder  # noqa: F401
    from .io.images import load_image  # noqa: F401
    from .params import BowParams, CodeParams, RegionParams, RerankParams, SearchParams  # noqa: F401
    from .search import Hit, PreparedQuery, Retriever, RetrieverConfig, SearchResult  # noqa: F401
    from .search.rerank import rerank  # noqa: F401
