"""roiret — instance retrieval with RoI-based CNN features and a C++ core.

The public surface is listed in ``__all__``. Heavy parts (torch, OpenCV, faiss) are
imported on first use, so ``import roiret`` stays fast.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
    "simd_level": "_kernels",
    "supported_simd_levels": "_kernels",
    "set_simd_level": "_kernels",
    "get_num_threads": "_kernels",
    "set_num_threads": "_kernels",
    # errors
    "ImageError": "errors",
    "IndexFormatError": "errors",
    "WeightsError": "errors",
    "WeightsNotFoundError": "errors",
    # images
    "load_image": "imageio",
    # CNN RoI extraction
    "RoIExtractor": "extractor",
    "RoIResult": "extractor",
    "PCAWhitening": "whitening",
    "build_backbone": "backbones",
    "detect_rois": "regions",
    # bag of words
    "BowIndex": "bow",
    "Vocabulary": "bow",
    "LocalFeatureExtractor": "bow",
    # the retriever
    "Retriever": "retriever",
    "RetrieverConfig": "retriever",
    "SearchResult": "retriever",
    "Hit": "retriever",
    "rerank": "rerank",
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


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # pragma: no cover
    from ._kernels import (  # noqa: F401
        CrossMatchResult,
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
    from .errors import ImageError, IndexFormatError, WeightsError, WeightsNotFoundError  # noqa: F401
    from .imageio import load_image  # noqa: F401
    from .backbones import build_backbone  # noqa: F401
    from .bow import BowIndex, LocalFeatureExtractor, Vocabulary  # noqa: F401
    from .extractor import RoIExtractor, RoIResult  # noqa: F401
    from .regions import detect_rois  # noqa: F401
    from .rerank import rerank  # noqa: F401
    from .retriever import Hit, Retriever, RetrieverConfig, SearchResult  # noqa: F401
    from .whitening import PCAWhitening  # noqa: F401
    from .eval import average_precision, load_gnd, mean_average_precision, ukbench_score  # noqa: F401
