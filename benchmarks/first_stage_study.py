"""The first stage on the demo collection: TF-IDF against the selective match kernel (ASMK*)
on Hamming-embedded words, vocabulary sizes and multiple assignment side by side.

    python benchmarks/first_stage_study.py                     # the default grid, seeds 0 1 2
    python benchmarks/first_stage_study.py --variants tfidf:1000 asmk:1000 asmk:300:qa=3,da=2

Each variant is ``first_stage:vocab_size[:key=value,...]`` (keys: ``qa`` query_assignments,
``da`` db_assignments, ``bits`` he_bits, ``alpha`` asmk_alpha, ``tau`` asmk_tau, ``qe``,
``mi`` min_inliers). For every
seed the demo collection (`roiret demo`) is built, indexed with the demo's settings and that
first stage, and queried; printed: mAP % per seed of the first stage alone, the paper's RoI
re-ranking and the library default (verification + expansion + fusion). The same rows on
Oxford5k-dev come from ``roiret eval --variants roi,roiret --first-stage S --vocab-size V``
(docs/RESULTS.md, "A Hamming-embedded first stage").
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from typing import Any, Dict, List

DEFAULT_VARIANTS = ["tfidf:1000", "asmk:1000", "asmk:500", "asmk:1000:da=2", "asmk:2000"]
ROWS = {"bow": "first stage alone", "paper": "RoI score alone", "roiret": "default"}
KEYS = {
    "qa": "query_assignments",
    "da": "db_assignments",
    "bits": "he_bits",
    "alpha": "asmk_alpha",
    "tau": "asmk_tau",
    "qe": "qe",
    "mi": "min_inliers",
}


def parse(variant: str) -> Dict[str, Any]:
    parts = variant.split(":")
    config: Dict[str, Any] = {"first_stage": parts[0], "vocab_size": int(parts[1])}
    for item in parts[2].split(",") if len(parts) > 2 else []:
        key, value = item.split("=")
        config[KEYS[key]] = float(value) if key in ("alpha", "tau") else int(value)
    return config


def run(variant: str, seeds: List[int]) -> Dict[str, List[float]]:
    from roiret.apps.demo import run_demo

    out: Dict[str, List[float]] = {m: [] for m in ROWS}
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            maps = run_demo(tmp, seed=seed, progress=False, print_fn=lambda s: None, **parse(variant))
        for m in ROWS:
            out[m].append(100 * maps[m])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    print(
        "| first stage | "
        + " | ".join(f"{label} (seeds {' / '.join(map(str, args.seeds))}; mean)" for label in ROWS.values())
        + " |"
    )
    print("|---|" + "---|" * len(ROWS))
    for v in args.variants:
        res = run(v, args.seeds)
        cells = [" / ".join(f"{x:.2f}" for x in res[m]) + f"; {statistics.mean(res[m]):.2f}" for m in ROWS]
        print(f"| {v} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
