"""Pure-NumPy references of the native kernels used by the RoI extraction stage.

They are oracles for tests (and a stand-in while the native module is being built, when
``ROIRET_TEST_REFERENCE_KERNELS=1``); the package itself ships no Python fallback.
Written from the contract in the kernels' docstrings, as plainly as possible.
"""

from __future__ import annotations

import numpy as np


def select_rois_ref(boxes, scores, image_sizes, k, t_min, t_rate, t_iou):
    """(B, D, 4) boxes, (B, D) scores, (B, 2) sizes (W, H) -> (B, k) int64, -1 padded."""
    boxes = np.asarray(boxes)
    scores = np.asarray(scores)
    sizes = np.asarray(image_sizes)
    if np.isnan(boxes).any() or np.isnan(scores).any():
        raise ValueError("NaN in boxes or scores")
    B, D = scores.shape
    out = np.full((B, k), -1, dtype=np.int64)
    for b in range(B):
        W, H = float(sizes[b, 0]), float(sizes[b, 1])
        cand = []
        for d in range(D):
            x1, y1, x2, y2 = (float(v) for v in boxes[b, d])
            w, h = x2 - x1, y2 - y1
            if w <= 0 or h <= 0:
                continue
            if (w * h) / (W * H) < t_min:
                continue
            if max(w, h) / min(w, h) > t_rate:
                continue
            cand.append(d)
        cand.sort(key=lambda d: (-float(scores[b, d]), d))
        kept = []
        for d in cand:
            if len(kept) == k:
                break
            ok = True
            for e in kept:
                if _iou(boxes[b, d], boxes[b, e]) >= t_iou:
                    ok = False
                    break
            if ok:
                kept.append(d)
        out[b, : len(kept)] = kept
    return out


def _iou(a, b):
    ax1, ay1, ax2, ay2 = (float(v) for v in a)
    bx1, by1, bx2, by2 = (float(v) for v in b)
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    a1 = (ax2 - ax1) * (ay2 - ay1)
    a2 = (bx2 - bx1) * (by2 - by1)
    return inter / (a1 + a2 - inter)


def pack_codes_ref(x):
    """(n, d) floats -> (n, ceil(d/64)) uint64; bit i = x_i > mean(row), word i//64, LSB first."""
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    words = (d + 63) // 64
    bits = np.zeros((n, words * 64), dtype=np.uint64)
    bits[:, :d] = x > x.mean(axis=1, keepdims=True)
    weights = np.uint64(1) << np.arange(64, dtype=np.uint64)  # bit position i % 64
    return (bits.reshape(n, words, 64) * weights).sum(axis=2, dtype=np.uint64)


def hamming_sim_ref(a, b, nbits):
    """1 - Hamming / nbits between two packed code rows."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    ones = sum(bin(int(v)).count("1") for v in x.ravel())
    return 1.0 - ones / nbits
