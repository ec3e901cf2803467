"""Bags of visual words: word lists → (word, count) pairs, and batches of them as CSR."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["bag_of_words", "bags_to_csr"]


def bag_of_words(words: np.ndarray, vocab_size: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Count the words of one image.

    Parameters
    ----------
    words:
        1-D integer array, one word per local feature (any order, repeats allowed).
    vocab_size:
        When given, every word must be in ``[0, vocab_size)``.

    Returns
    -------
    (words, counts):
        ``words`` int64, sorted and unique; ``counts`` float32, how often each occurs.
    """
    w = np.asarray(words)
    if w.ndim != 1:
        raise ValueError(f"words: expected a 1-D array, got shape {w.shape}")
    if w.size and w.dtype.kind not in "iu":
        raise TypeError(f"words: expected an integer array, got dtype {w.dtype}")
    w = w.astype(np.int64, copy=False)
    if w.size:
        lo, hi = int(w.min()), int(w.max())
        if lo < 0 or (vocab_size is not None and hi >= int(vocab_size)):
            bound = f"[0, {int(vocab_size)})" if vocab_size is not None else ">= 0"
            raise ValueError(f"words: expected values in {bound}, got min {lo}, max {hi}")
    u, c = np.unique(w, return_counts=True)
    return u.astype(np.int64, copy=False), c.astype(np.float32)


def bags_to_csr(
    bags: Sequence[Tuple[np.ndarray, np.ndarray]],
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack bags ``[(words, counts), ...]`` into CSR arrays ``(offsets, words, counts)``:
    image ``i`` owns ``words[offsets[i]:offsets[i+1]]``. ``offsets`` is int64 (n+1,),
    ``words`` int64, ``counts`` float32 — the layout ``InvertedFile.add`` takes. Bags of an
    embedded index carry signatures (uint64 ``(u, words)``) instead of counts: they are
    stacked row-wise, uint64 (``EmbeddedInvertedFile.add``)."""
    n = len(bags)
    lengths = np.fromiter((len(b[0]) for b in bags), dtype=np.int64, count=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    for i, (w, c) in enumerate(bags):
        if len(w) != len(c):
            raise ValueError(f"bag {i}: {len(w)} words but {len(c)} counts")
    words = np.concatenate([np.asarray(b[0], dtype=np.int64) for b in bags]) if n else np.zeros(0, np.int64)
    if n and np.asarray(bags[0][1]).ndim == 2:  # signatures
        return offsets, words, np.concatenate([np.asarray(b[1], dtype=np.uint64) for b in bags])
    counts = np.concatenate([np.asarray(b[1], dtype=np.float32) for b in bags]) if n else np.zeros(0, np.float32)
    return offsets, words, counts
