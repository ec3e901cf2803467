"""The fusion variants of benchmarks/rerank_study.py on the demo collection (`roiret demo`),
where BoW is weak and RoIs are strong — the opposite of Oxford5k-dev.

    python benchmarks/demo_fusion.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from rerank_study import fuse  # noqa: E402


def main() -> int:
    from roiret.apps.demo import make_collection
    from roiret.eval import average_precision
    from roiret.search.retriever import Retriever

    col = make_collection()
    r = Retriever(
        vocab_size=1000, K=20, N=len(col.database), n=6, k=5, max_keypoints=1500, progress=False, batch_size=8
    )
    r.train(col.database)
    ids = r.add(col.database, names=col.names)
    variants = [("roi", 0), ("linear", 0.7), ("z", 0.3), ("z", 0.5), ("minmax", 0.5), ("rrf", 60)]
    aps = {v: [] for v in variants + [("bow", 0)]}
    for name, photo, box in col.queries:
        pos = {int(ids[i]) for i in col.positives[name]}
        q = r.prepare_query(photo, box)
        roi = {h.id: h.roi_score for h in r.rank(q, top=len(r), mode="fast", fusion=0.0).hits}
        bow = r.rank(q, top=len(r), mode="bow").hits
        bid = [h.id for h in bow]
        bs = np.array([h.bow_score for h in bow])
        aps[("bow", 0)].append(average_precision(bid, pos))
        for how, w in variants:
            s = fuse(np.array([roi[i] for i in bid]), bs, how, w)
            aps[(how, w)].append(average_precision([bid[i] for i in np.argsort(-s, kind="stable")], pos))
    print("| BoW only | RoI score alone (paper) | linear 0.7 | z 0.3 | z 0.5 | min-max 0.5 | RRF 60 |")
    print("|---|---|---|---|---|---|---|")
    print("| " + " | ".join(f"{100 * np.mean(aps[v]):.2f}" for v in [("bow", 0)] + variants) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
