"""Bag-of-visual-words first stage.

* :class:`LocalFeatureExtractor` / :class:`LocalFeatures` — SIFT / RootSIFT (default) / SURF
  (when OpenCV has the nonfree module: :func:`surf_available`).
* :class:`Vocabulary` — k-means with faiss (exact, or approximate with HNSW for large
  vocabularies), word assignment (exact below ``hnsw_threshold`` words, HNSW above),
  pickle-free save/load.
* :func:`bag_of_words`, :func:`bags_to_csr` — (word, count) lists.
* :class:`BowEncoder` — image → bag: the vocabulary, the local features and, for the
  selective match kernel (ASMK*), the Hamming embedding (:mod:`roiret.bow.embedding`).
* :class:`BowIndex` — an encoder and the native inverted file: ASMK* on
  :class:`roiret.EmbeddedInvertedFile` (with an embedding; the retriever's default) or
  TF-IDF on :class:`roiret.InvertedFile`; query by image or by a box in it; top-N
  ``(ids, scores)``; saves through :class:`roiret.io.folder.IndexFolder`.

Only :class:`BowIndex` needs the native core, and imports it on first use.
"""

from .encode import bag_of_words, bags_to_csr
from .encoder import BowEncoder
from .features import FEATURE_KINDS, LocalFeatureExtractor, LocalFeatures, rootsift, surf_available
from .index import BowHits, BowIndex
from .vocabulary import DEFAULT_HNSW_THRESHOLD, Vocabulary

__all__ = [
    "BowEncoder",
    "BowHits",
    "BowIndex",
    "DEFAULT_HNSW_THRESHOLD",
    "FEATURE_KINDS",
    "LocalFeatureExtractor",
    "LocalFeatures",
    "Vocabulary",
    "bag_of_words",
    "bags_to_csr",
    "rootsift",
    "surf_available",
]
