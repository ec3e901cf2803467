"""The RoI stage on the demo collection: backbones, pooling and scales side by side.

    python benchmarks/roi_stage_study.py                       # the default grid, seeds 0 1 2
    python benchmarks/roi_stage_study.py --variants alexnet:conv-max efficientnet-lite0:conv-gem:1,0.707,0.5

Each variant is ``backbone:feature[:scales]``; for every seed the demo collection (`roiret
demo`, scikit-image photos pasted on textured backgrounds) is built, indexed with the demo's
settings and that RoI stage, and queried. Printed: mAP % per seed for the global baseline
(whole-image codes re-rank the BoW list), the RoI score alone (the paper's fast re-ranking)
and the library default (spatial verification + query expansion + fusion), and the CNN cost
per image on this machine. The same rows on Oxford5k-dev come from ``roiret eval --variants
roi,roiret --backbone B --features F [--scales S]`` (docs/RESULTS.md, "A stronger RoI stage").

    python benchmarks/roi_stage_study.py --index-cost ../shared/datasets/oxford5k-dev/jpg --images 64

times indexing instead (``Retriever.add``: decoding, RootSIFT, word assignment, CNN, codes,
geometry) of the same photos with each variant, round-robin so that every variant sees the
same machine load; prints images/s and the time per image relative to the first variant.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Dict, List

DEFAULT_VARIANTS = [
    "alexnet:conv-max",
    "alexnet:conv-gem",
    "alexnet:conv-gem:1,0.707,0.5",
    "efficientnet-lite0:conv-max",
    "efficientnet-lite0:conv-gem",
    "efficientnet-lite0:conv-gem:1,0.707,0.5",
    "efficientnet-lite2:conv-gem",
]
ROWS = {"global": "global baseline", "paper": "RoI score alone", "roiret": "default"}


def run(variant: str, seeds: List[int], gem_p: float) -> Dict[str, List[float]]:
    from roiret.apps.demo import run_demo

    parts = variant.split(":")
    config = {"backbone": parts[0], "feature": parts[1], "gem_p": gem_p}
    if len(parts) > 2:
        config["scales"] = tuple(float(s) for s in parts[2].split(","))
    out: Dict[str, List[float]] = {m: [] for m in ROWS}
    out["seconds"] = []
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            maps = run_demo(tmp, seed=seed, progress=False, print_fn=lambda s: None, **config)
            out["seconds"].append(time.perf_counter() - t)
        for m in ROWS:
            out[m].append(100 * maps[m])
    return out


def index_cost(folder: str, variants: List[str], n_images: int, rounds: int) -> None:
    import statistics
    from pathlib import Path

    from roiret.search.retriever import Retriever

    paths = sorted(str(p) for p in Path(folder).glob("*.jpg"))[:n_images]
    retrievers = []
    for v in variants:
        parts = v.split(":")
        config = {"backbone": parts[0], "feature": parts[1]}
        if len(parts) > 2:
            config["scales"] = tuple(float(s) for s in parts[2].split(","))
        r = Retriever(vocab_size=2000, progress=False, **config)
        r.train(paths)
        r.add(paths[:8])  # warm-up: the network built, first batches run
        retrievers.append(r)
    times: List[List[float]] = [[] for _ in variants]
    for _ in range(rounds):
        for i, r in enumerate(retrievers):
            if len(r) > 8:
                r.remove(r.index.ids[8:].tolist())
            t = time.perf_counter()
            r.add(paths[8:])
            times[i].append((time.perf_counter() - t) / (len(paths) - 8))
    print(f"indexing {len(paths) - 8} images of {folder}, {rounds} rounds (median), round-robin")
    print("| variant | images/s | × first |\n|---|---|---|")
    for v, ts in zip(variants, times):
        ratio = statistics.median(t / r for t, r in zip(ts, times[0]))
        print(f"| {v} | {1 / statistics.median(ts):.2f} | {ratio:.2f} |", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--gem-p", type=float, default=3.0)
    ap.add_argument("--index-cost", metavar="FOLDER", help="time indexing the photos of FOLDER instead")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.index_cost:
        variants = (
            args.variants if args.variants != DEFAULT_VARIANTS else ["alexnet:conv-max", "efficientnet-lite0:conv-gem"]
        )
        index_cost(args.index_cost, variants, args.images, args.rounds)
        return 0
    seeds = [int(s) for s in args.seeds.split(",") if s]
    print("| variant | " + " | ".join(ROWS.values()) + " | demo run s |")
    print("|---" * (len(ROWS) + 2) + "|")
    for v in args.variants:
        res = run(v, seeds, args.gem_p)
        cells = [" / ".join(f"{x:.2f}" for x in res[m]) for m in ROWS]
        print(f"| {v} | " + " | ".join(cells) + f" | {sum(res['seconds']) / len(seeds):.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
