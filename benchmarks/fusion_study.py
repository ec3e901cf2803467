"""How the BoW score should enter the final score: the RoI score alone (the paper), fixed
fusion weights, and roiret's query-adaptive weight (``fusion="adaptive"``, see
:mod:`roiret.search.rerank`), on Oxford5k-dev (saved indexes, e.g. from ``roiret eval --cache``)
and on the demo collection (three seeds), where BoW is weak.

    python benchmarks/fusion_study.py --dataset ../shared/datasets/oxford5k-dev \\
        --index /tmp/roiret-eval/oxford5k-dev-conv-max-roiret-*

Every number comes from ``Retriever.rank`` itself (the same prepared query ranked with
each ``fusion`` value), evaluated with :mod:`roiret.eval` as ``roiret eval`` does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

FUSIONS = [
    ("BoW only", "bow", None),
    ("RoI score alone (paper)", "fast", 0.0),
    ("w = 0.3", "fast", 0.3),
    ("w = 0.5", "fast", 0.5),
    ("w = 0.7", "fast", 0.7),
    ("adaptive (default)", "fast", "adaptive"),
]


def oxford(index: str, dataset: Path):
    from roiret.eval import load_gnd
    from roiret.eval.table import evaluate_oxford
    from roiret.search.retriever import Retriever

    gt = load_gnd(dataset / "gnd.json")
    r = Retriever.load(index, progress=False)
    prepared = {}

    def query(q):
        key = (q.image, q.bbox)
        if key not in prepared:
            prepared[key] = r.prepare_query(gt.image_path(q.image), q.bbox)
        return prepared[key]

    cells = {}
    for label, mode, fusion in FUSIONS:
        m = evaluate_oxford(
            gt, lambda q, mode=mode, fusion=fusion: r.rank(query(q), top=len(r), mode=mode, fusion=fusion).hits
        )
        cells[label] = [m[k] for k in ("classic", "revisited/medium", "revisited/hard") if k in m]
    name = f"Oxford5k-dev, {r.config.backbone} {r.config.feature} (classic / medium / hard)"
    return name, cells


def demo(seed: int):
    from roiret.apps.demo import make_collection
    from roiret.eval import average_precision
    from roiret.search.retriever import Retriever

    col = make_collection(seed=seed)
    r = Retriever(
        vocab_size=1000, K=20, N=len(col.database), n=6, k=5, max_keypoints=1500, progress=False, batch_size=8
    )
    r.train(col.database)
    ids = r.add(col.database, names=col.names)
    cells = {label: [] for label, _, _ in FUSIONS}
    weights = []
    for name, photo, box in col.queries:
        pos = {int(ids[i]) for i in col.positives[name]}
        q = r.prepare_query(photo, box)
        for label, mode, fusion in FUSIONS:
            res = r.rank(q, top=len(r), mode=mode, fusion=fusion)
            cells[label].append(average_precision(res.ids.tolist(), pos))
            if fusion == "adaptive":
                weights.append(res.bow_weight)
    return {label: [float(np.mean(v))] for label, v in cells.items()}, float(np.mean(weights))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="../shared/datasets/oxford5k-dev")
    ap.add_argument("--index", nargs="*", default=[], help="saved roiret indexes of the dataset")
    ap.add_argument("--demo-seeds", type=int, nargs="*", default=[0, 1, 2])
    a = ap.parse_args(argv)

    columns, table = [], {label: [] for label, _, _ in FUSIONS}
    for index in a.index:
        if not (Path(a.dataset) / "gnd.json").exists():
            print(f"skipped {index}: no dataset at {a.dataset}")
            break
        name, cells = oxford(index, Path(a.dataset))
        columns.append(name)
        for label, v in cells.items():
            table[label].append(" / ".join(f"{100 * x:.2f}" for x in v))
    if a.demo_seeds:
        per_seed, mean_w = zip(*(demo(s) for s in a.demo_seeds))
        columns.append(
            f"demo collection, seeds {', '.join(map(str, a.demo_seeds))} (mean adaptive w {np.mean(mean_w):.2f})"
        )
        for label in table:
            table[label].append(" / ".join(f"{100 * d[label][0]:.2f}" for d in per_seed))
    print("| fusion | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for label, cells in table.items():
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
