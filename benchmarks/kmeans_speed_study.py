#!/usr/bin/env python
"""Vocabulary training time against BoW quality: the measurement behind approximate k-means'
defaults (``Vocabulary.fit(kmeans="approximate")``: efSearch, iterations, one HNSW graph).

For each setting ``it=<iterations>,ef=<efSearch>[,rebuild=1]`` and each seed, a vocabulary is
learned as ``Retriever.train`` learns the TF-IDF one (RootSIFT, images as stored, at most
2000 keypoints, a seeded sample of 500 000 descriptors) and the first stage alone is scored:

* Oxford5k-dev: 50 000 words (its ``"auto"`` size); BoW mAP classic / Medium / Hard (TF-IDF,
  the native inverted file, full rankings; ``benchmarks/bow_map.py``'s protocol);
* ukbench-56: its ``"auto"`` vocabulary (one word per 4 descriptors) with approximate
  k-means forced; the N-S score (top 4, max 4).

``rebuild=1`` rebuilds the HNSW graph at every iteration and searches it from the top, as
``Vocabulary.fit`` did before (the reference row, with ``ef=128``, its efSearch then).
k-means time only (features are cached under ``--cache``). Usage::

    python benchmarks/kmeans_speed_study.py ../shared/datasets --cache /tmp/roiret-kmeans \\
        --settings it=10,ef=128,rebuild=1 it=10,ef=16 --seeds 0 1 2

Exits cleanly (status 0, with a message) when the data set folder is absent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _parse(spec: str) -> Dict[str, int]:
    kv = dict(p.split("=", 1) for p in spec.split(","))
    unknown = set(kv) - {"it", "ef", "rebuild"}
    if unknown:
        raise SystemExit(f"--settings {spec!r}: unknown keys {sorted(unknown)} (it, ef, rebuild)")
    return {"it": int(kv.get("it", 10)), "ef": int(kv.get("ef", 32)), "rebuild": int(kv.get("rebuild", 0))}


def _fit(descs: Any, k: int, s: Dict[str, int], seed: int) -> Any:
    from roiret.bow import Vocabulary
    from roiret.bow import vocabulary as V

    original = V._CentroidGraph.search
    if s["rebuild"]:  # the graph rebuilt and searched from the top every iteration

        def rebuilt(self: Any, cents: np.ndarray, x: np.ndarray, rebuild: bool) -> Any:
            self._words = None
            return original(self, cents, x, True)

        V._CentroidGraph.search = rebuilt  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        voc = Vocabulary.fit(
            descs,
            k,
            seed=seed,
            kmeans_iterations=s["it"],
            max_train_descriptors=500_000,
            kmeans="approximate",
            kmeans_ef_search=s["ef"],
            progress=False,
        )
        voc.info["seconds"] = time.perf_counter() - t0
    finally:
        V._CentroidGraph.search = original  # type: ignore[method-assign]
    return voc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", type=Path, help="folder holding oxford5k-dev/ (and ukbench-56/)")
    ap.add_argument(
        "--cache", type=Path, default=Path("/tmp/roiret-kmeans"), help="feature cache (default %(default)s)"
    )
    ap.add_argument("--settings", nargs="+", default=["it=10,ef=128,rebuild=1", "it=10,ef=16"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--words", type=int, default=50_000, help="Oxford5k-dev vocabulary size (default %(default)s)")
    ap.add_argument(
        "--collections",
        nargs="+",
        choices=["oxford", "ukbench"],
        default=["oxford", "ukbench"],
        help="oxford5k-dev (BoW mAP) and / or ukbench-56 (N-S, approximate k-means forced)",
    )
    ap.add_argument("--out", type=Path, help="append the rows here as JSON lines")
    a = ap.parse_args()
    settings = [(spec, _parse(spec)) for spec in a.settings]
    wanted = {
        c: a.datasets / folder
        for c, folder in (("oxford", "oxford5k-dev"), ("ukbench", "ukbench-56"))
        if c in a.collections and (a.datasets / folder / "gnd.json").exists()
    }
    if not wanted:
        print(f"skipped: no gnd.json of {a.collections} under {a.datasets} (the data sets are not on this machine)")
        return 0
    import bow_map as bm
    from roiret._kernels import InvertedFile
    from roiret.bow import LocalFeatureExtractor, bag_of_words, bags_to_csr
    from roiret.eval import load_gnd
    from roiret.params import auto_vocab_size

    a.cache.mkdir(parents=True, exist_ok=True)
    ext = LocalFeatureExtractor("rootsift", max_keypoints=2000)
    gnd = ugnd = ufeats = None
    if "oxford" in wanted:  # features read (or extracted) only for the collections asked for
        gnd = load_gnd(wanted["oxford"])
        names = list(gnd.images)
        feats, descs, _ = bm._features_cache(a.cache, "oxford5k-dev", ext, [gnd.image_path(n) for n in names])
    if "ukbench" in wanted:
        ugnd = load_gnd(wanted["ukbench"])
        ufeats, udescs, _ = bm._features_cache(a.cache, "ukbench-56", ext, [ugnd.image_path(n) for n in ugnd.images])
    rows: List[Dict[str, Any]] = []
    for spec, s in settings:
        for seed in a.seeds:
            row: Dict[str, Any] = {"setting": spec, "seed": seed}
            if gnd is not None:
                voc = _fit(descs, a.words, s, seed)
                res: Dict[str, Any] = {}
                bags, _, _ = bm._assign_all(voc, feats)
                bm._evaluate_oxford(voc, gnd, feats, bags, names, res, a.words)
                row.update(
                    seconds=voc.info["seconds"],
                    objective=voc.info["objective"][-1],
                    classic=100 * res["map_classic"],
                    medium=100 * res["map_medium"],
                    hard=100 * res["map_hard"],
                )
            if ugnd is not None and ufeats is not None:
                uvoc = _fit(udescs, auto_vocab_size(len(udescs)), s, seed)
                ubags = [bag_of_words(uvoc.assign(f.descriptors), uvoc.size) for f in ufeats]
                ivf = InvertedFile(uvoc.size)
                ivf.add(np.arange(len(ubags), dtype=np.int64), *bags_to_csr(ubags))
                row["ukbench_ns"] = ugnd.score([np.asarray(ivf.search(w, c, 4)[0]) for w, c in ubags])
                row["ukbench_seconds"] = uvoc.info["seconds"]
            rows.append(row)
            print(json.dumps(row), flush=True)
            if a.out:
                with a.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    print("\n| setting | seeds | Oxford k-means s | classic | Medium | Hard | ukbench-56 k-means s | N-S |")
    print("|---|---|---|---|---|---|---|---|")
    for spec, _ in settings:
        rs = [r for r in rows if r["setting"] == spec]

        def m(key: str, rs: List[Dict[str, Any]] = rs) -> str:
            vals = [r[key] for r in rs if key in r]
            return f"{statistics.mean(vals):.2f}" if vals else "—"

        print(
            f"| {spec} | {len(rs)} | {m('seconds')} | {m('classic')} | {m('medium')} | {m('hard')} "
            f"| {m('ukbench_seconds')} | {m('ukbench_ns')} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
