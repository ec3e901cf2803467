"""The first stage alone on Oxford5k-dev: mAP, recall@N and query time of saved indexes.

    python benchmarks/first_stage_recall.py ../shared/datasets/oxford5k-dev INDEX [INDEX ...]

For each index folder (built by ``roiret eval --cache`` or ``roiret index``; TF-IDF or ASMK),
every query's features are extracted once (the keypoints in its box), the first stage ranks
the whole database (``mode="bow"``, no verification or expansion), and printed are: mAP %
(classic / revisited Medium / Hard), recall@N of the classic protocol (positives = good + ok
found in the top N, over all queries' positives, junk not counted) for N = 10 … 1000, and the
first stage's search time with the query's features given (p50 / p95 over the queries, best
of 5 per query, one thread).
"""

from __future__ import annotations

import argparse
import time
from typing import Dict, List

import numpy as np

NS = (10, 20, 50, 100, 200, 500, 1000)


def measure(dataset: str, folder: str) -> Dict[str, object]:
    from roiret import Retriever
    from roiret.eval import load_gnd
    from roiret.eval.table import evaluate_oxford

    r = Retriever.load(folder, progress=False)
    gt = load_gnd(f"{dataset}/gnd.json")
    prep = {}
    for p in gt.protocols:
        for q in gt.protocol(p).queries:
            if (q.image, q.bbox) not in prep:
                prep[(q.image, q.bbox)] = r.prepare_query(gt.image_path(q.image), q.bbox, with_rois=False)

    def bow(q):  # the first stage alone
        return r.rank(prep[(q.image, q.bbox)], top=len(r), mode="bow", R=0, qe=0).hits

    maps = evaluate_oxford(gt, bow)
    proto = gt.protocol("classic")
    allowed = set(proto.database)
    found = {n: 0 for n in NS}
    total = 0
    for q in proto.queries:
        names = [h.name for h in bow(q) if h.name in allowed and h.name not in q.junk("classic")]
        pos = q.positives("classic")
        total += len(pos)
        for n in NS:
            found[n] += len(pos & set(names[:n]))
    times: List[float] = []
    for pq in prep.values():
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            r.index.search_bow(pq.words, pq.counts, 1000)
            best = min(best, time.perf_counter() - t)
        times.append(best)
    return {
        "stage": r.config.first_stage,
        "words": r.config.vocab_size,
        "map": maps,
        "recall": {n: found[n] / total for n in NS},
        "ms": (1000 * float(np.percentile(times, 50)), 1000 * float(np.percentile(times, 95))),
        "bytes": r.index.bow.inverted_file.memory_bytes() / max(1, len(r)),
        "postings": r.index.bow.inverted_file.num_postings,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("indexes", nargs="+")
    args = ap.parse_args()
    print(
        "| first stage | classic / Medium / Hard | "
        + " | ".join(f"R@{n}" for n in NS)
        + " | search p50 / p95 ms | inverted file bytes / image (postings) |"
    )
    print("|---|---|" + "---|" * len(NS) + "---|---|")
    for folder in args.indexes:
        m = measure(args.dataset, folder)
        maps = " / ".join(f"{100 * v:.2f}" for v in m["map"].values())  # type: ignore[attr-defined]
        rec = " | ".join(f"{v:.3f}" for v in m["recall"].values())  # type: ignore[attr-defined]
        ms = m["ms"]
        print(
            f"| {m['stage']}, {m['words']} words | {maps} | {rec} | {ms[0]:.2f} / {ms[1]:.2f} | "  # type: ignore[index]
            f"{m['bytes']:,.0f} ({m['postings']:,}) |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
