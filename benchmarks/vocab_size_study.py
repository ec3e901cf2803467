#!/usr/bin/env python
"""How many visual words for a collection of a given size: the measurement behind
``vocab_size="auto"`` (:func:`roiret.params.auto_vocab_size`).

For each collection, RootSIFT features are extracted as the Retriever does (images shrunk to
500 px, at most 2000 keypoints), vocabularies of ``n_descriptors / d`` words are learned on
the collection's own descriptors (no labels, seed 0, 10 k-means iterations, as the
Retriever) for several descriptors-per-word ratios ``d``, and the BoW first stage alone is
scored:

* ``ukbench-56`` (``../shared/datasets``): 56 photos, 14 objects × 4 views; N-S score (top 4,
  max 4.0) — a "folder of one's own photos";
* ``demo``: the ``roiret demo`` collection (40 cluttered scenes, 7 box queries); mAP (%).

Oxford5k-dev (709 images, ~800 k descriptors) was measured by ``benchmarks/bow_map.py``:
10k / 50k / 200k words (≈ 83 / 16.5 / 4 descriptors per word) gave classic mAP 51.09 /
62.99 / 59.57 — the optimum near 16 per word. Usage::

    python benchmarks/vocab_size_study.py ../shared/datasets --ratios 4 8 16 32 64
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np


def _features(images: List, boxes=None):
    from roiret.bow import LocalFeatureExtractor
    from roiret.io.images import load_shrunk

    fe = LocalFeatureExtractor("rootsift", max_keypoints=2000, max_side=None)
    feats, scales = [], []
    for img in images:
        small, scale, _ = load_shrunk(img, 500)
        feats.append(fe.extract(small))
        scales.append(scale)
    return fe, feats, scales


def _index(fe, feats, size: int):
    from roiret.bow import BowIndex, Vocabulary

    t0 = time.perf_counter()
    voc = Vocabulary.fit(
        feats, size, seed=0, kmeans_iterations=10, max_train_descriptors=500_000, progress=False, descriptor="rootsift"
    )
    secs = time.perf_counter() - t0
    bow = BowIndex(voc, fe)
    bow.add_features(feats)
    return bow, secs


def ukbench(root: Path, ratios: List[float]) -> List[Dict]:
    from roiret.eval import load_gnd

    gt = load_gnd(root / "gnd.json")
    names = list(gt.images)
    fe, feats, _ = _features([str(gt.image_path(n)) for n in names])
    n_desc = sum(len(f) for f in feats)
    rows = []
    for d in ratios:
        size = max(8, int(round(n_desc / d)))
        bow, secs = _index(fe, feats, size)
        rankings = {
            names[i]: [names[j] for j in bow.search_features(f, top=len(names)).ids] for i, f in enumerate(feats)
        }
        rows.append(
            {
                "collection": "ukbench-56",
                "images": len(names),
                "descriptors": n_desc,
                "per_word": d,
                "words": size,
                "kmeans_s": secs,
                "score": gt.score(rankings),
            }
        )
        print(rows[-1], flush=True)
    return rows


def demo(ratios: List[float]) -> List[Dict]:
    from roiret.apps.demo import make_collection
    from roiret.eval import average_precision

    col = make_collection(4, 12, seed=0)
    fe, feats, scales = _features(col.database)
    _, qfeats, qscales = _features([photo for _, photo, _ in col.queries])
    n_desc = sum(len(f) for f in feats)
    rows = []
    for d in ratios:
        size = max(8, int(round(n_desc / d)))
        bow, secs = _index(fe, feats, size)
        aps = []
        for (name, _, box), f, s in zip(col.queries, qfeats, qscales):
            b: Tuple[float, float, float, float] = (box[0] * s, box[1] * s, box[2] * s, box[3] * s)
            ids = bow.search_features(f, box=b, top=len(feats)).ids.tolist()
            aps.append(average_precision(ids, set(col.positives[name])))
        rows.append(
            {
                "collection": "demo",
                "images": len(feats),
                "descriptors": n_desc,
                "per_word": d,
                "words": size,
                "kmeans_s": secs,
                "score": 100 * float(np.mean(aps)),
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", help="the shared datasets folder (ukbench-56 is read from it)")
    ap.add_argument("--ratios", type=float, nargs="+", default=[4, 8, 16, 32, 64], help="descriptors per word")
    ap.add_argument("--out", help="write the rows as JSON here")
    a = ap.parse_args()
    rows = demo(a.ratios)
    ukb = Path(a.datasets) / "ukbench-56"
    if ukb.exists():
        rows += ukbench(ukb, a.ratios)
    else:
        print(f"skipped ukbench-56: no {ukb}")
    print("\n| collection | images | descriptors | descriptors / word | words | k-means s | BoW score |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        score = f"{r['score']:.3f}" if r["collection"] == "ukbench-56" else f"{r['score']:.2f}"
        print(
            f"| {r['collection']} | {r['images']} | {r['descriptors']:,} | {r['per_word']:g} | {r['words']:,} | "
            f"{r['kmeans_s']:.1f} | {score} |"
        )
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
