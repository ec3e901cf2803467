#!/usr/bin/env python
"""Query latency end to end, with feature extraction, stage by stage (``SearchResult.timings``).

Runs every query of Oxford5k-dev (the 25 classic + 34 revisited crops) ``--rounds`` times
through ``Retriever.search`` on a saved index of the collection and prints the median of each
stage over the queries (ms) with the end-to-end p50 / p95. The index is one that
``roiret eval`` (``--cache``) or ``roiret index`` saved for the same photos; it is searched
with the default configuration's query-time settings (mode, N, n, k, fusion, R,
min_inliers, qe: those of ``RetrieverConfig()``), whatever the index was saved with. Usage::

    python benchmarks/query_latency.py ../shared/datasets/oxford5k-dev <saved index> --rounds 2

Exits cleanly (status 0, with a message) when the data set folder is absent.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path, help="the oxford5k-dev folder (gnd.json, jpg/)")
    ap.add_argument("index", type=Path, help="a saved roiret index of the collection")
    ap.add_argument("--rounds", type=int, default=2, help="passes over the queries (default %(default)s)")
    ap.add_argument("--top", type=int, default=100, help="hits returned per query (default %(default)s)")
    ap.add_argument("--out", type=Path, help="write the per-stage medians as JSON here")
    a = ap.parse_args()
    if not (a.dataset / "gnd.json").exists():
        print(f"skipped: {a.dataset}/gnd.json not found (the data set is not on this machine)")
        return 0
    from roiret import Retriever, RetrieverConfig
    from roiret.eval import load_gnd

    gnd = load_gnd(a.dataset)
    r = Retriever.load(a.index)
    queries = [(q.image, q.bbox) for p in ("classic", "revisited") for q in gnd.protocol(p).queries]
    d = RetrieverConfig()
    query_time = dict(mode=d.mode, N=d.N, n=d.n, k=d.k, fusion=d.fusion, R=d.R, min_inliers=d.min_inliers, qe=d.qe)
    r.search(str(gnd.image_path(queries[0][0])), box=queries[0][1], top=a.top, **query_time)  # warm-up
    per_stage: Dict[str, List[float]] = defaultdict(list)
    total: List[float] = []
    for _ in range(a.rounds):
        for image, box in queries:
            t0 = time.perf_counter()
            res = r.search(str(gnd.image_path(image)), box=box, top=a.top, **query_time)
            total.append(time.perf_counter() - t0)
            for k, v in res.timings.items():
                per_stage[k].append(v)
    med = {k: 1e3 * float(np.median(v)) for k, v in per_stage.items()}
    print(f"{platform.processor() or platform.machine()}; {len(queries)} queries x {a.rounds} rounds; {a.index}")
    print(f"first stage {r.config.first_stage}, backbone {r.config.backbone}, query-time settings {query_time}")
    print("\n| stage | median ms |\n|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} |")
    p50, p95 = (1e3 * float(np.percentile(total, q)) for q in (50, 95))
    print(f"| **end to end (wall) p50 / p95** | **{p50:.1f} / {p95:.1f}** |")
    if a.out:
        a.out.write_text(json.dumps({"stages_ms": med, "p50_ms": p50, "p95_ms": p95}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
