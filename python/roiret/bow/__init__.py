"""Bag-of-visual-words first stage (DESIGN.md stage 6).

* :class:`LocalFeatureExtractor` / :class:`LocalFeatures` — SIFT / RootSIFT (default) / SURF
  (when OpenCV has the nonfree module: :func:`surf_available`).
* :class:`Vocabulary` — k-means with faiss (exact, or approximate with HNSW for large
  vocabularies), word assignment (exact below ``hnsw_threshold`` words, HNSW above),
  pickle-free save/load.
* :func:`bag_of_words`, :func:`bags_to_csr` — (word, count) lists.
* :class:`BowIndex` — TF-IDF search on the native :class:`roiret.InvertedFile`; query by
  image or by a box in it; top-N ``(ids, scores)``.

Only :class:`BowIndex` needs the native core, and imports it on first use.
"""

from .encode import bag_of_words, bags_to_csr
from .features import FEATURE_KINDS, LocalFeatureExtractor, LocalFeatures, rootsift, surf_available
from .index import BowHits, BowIndex
from .vocabulary import DEFAULT_HNSW_THRESHOLD, Vocabulary

__all__ = [
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
