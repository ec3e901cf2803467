"""Average query expansion (Chum et al., ICCV 2007, "Total recall") in the BoW space.

The query's TF-IDF vector and those of its best verified results are L2-normalised and
summed; the sum is searched again. A verified result is another view of the object, so its
words bring back views the query alone missed (other sides of the building, other
lighting) — the first stage's recall is what re-ranking can never recover. Only results
that spatial verification confirmed are used, so a wrong top result cannot drift the query.

The inverted file weights a query's counts by idf and normalises; :func:`expanded_bag`
returns counts that, weighted so, give exactly the averaged vector (words with idf 0 —
in every image — carry no weight and are left out).
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

__all__ = ["expanded_bag", "tfidf"]


def tfidf(words: np.ndarray, counts: np.ndarray, idf: np.ndarray) -> np.ndarray:
    """The L2-normalised TF-IDF weights of a bag (``words`` unique int64, ``counts``), as
    the inverted file computes them (the zero vector when the norm is 0)."""
    v = np.asarray(counts, np.float64) * idf[np.asarray(words, np.int64)]
    n = float(np.linalg.norm(v))
    return np.asarray(v / n if n > 0 else v)


def expanded_bag(bags: List[Tuple[np.ndarray, np.ndarray]], idf: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(words, counts)`` whose TF-IDF vector is proportional to the sum of the
    normalised TF-IDF vectors of ``bags`` (the query's first, then the results')."""
    idf = np.asarray(idf, np.float64)
    words = np.concatenate([np.asarray(w, np.int64) for w, _ in bags]) if bags else np.zeros(0, np.int64)
    weights = np.concatenate([tfidf(w, c, idf) for w, c in bags]) if bags else np.zeros(0)
    u, inverse = np.unique(words, return_inverse=True)
    total = np.zeros(len(u))
    np.add.at(total, inverse, weights)
    keep = (idf[u] > 0) & (total > 0)
    u, total = u[keep], total[keep]
    return u, (total / idf[u]).astype(np.float32)
