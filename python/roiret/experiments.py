"""Reproduce the paper's Tables 1–2 layout on an Oxford-style dataset (``roiret eval``).

For every RoI descriptor (rows: ``conv-max``, ``conv-sum``, ...) one index is built with
the public :class:`~roiret.Retriever` at the largest K — vocabulary (shared by all rows) and
PCA-whitening learned on the database images without labels — and evaluated:

* **BoW**: the first stage alone (TF-IDF ranking);
* **baseline**: the BoW top N re-ranked by the whole-image code (the paper's "global"
  representation), the rest in BoW order;
* **K = 5, 10, 15, 20**: the BoW top N re-ranked with K RoIs per image and per query, fast
  strategy (n, k). Smaller K are the first K RoIs of the largest K (RoIs are kept in
  selection order), i.e. exactly what indexing with that K gives;
* the exhaustive strategy at the largest K, for the fast-vs-exhaustive comparison.

mAP follows :mod:`roiret.eval` (classic: good + ok positive, junk ignored; revisited:
Medium and Hard). Rankings are restricted to each protocol's database. Query = the crop of
its box. Query latency percentiles and indexing throughput are measured on the way.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = ["EvalTable", "oxford_table"]


@dataclass
class EvalTable:
    dataset: str
    levels: List[str]                      # e.g. ["classic", "revisited/medium", "revisited/hard"]
    Ks: List[int]
    bow: Dict[str, float]                  # level -> mAP
    rows: Dict[str, Dict[str, Dict[str, float]]]  # feature -> column -> level -> mAP
    dims: Dict[str, int]
    settings: Dict[str, object]
    speed: Dict[str, Dict[str, float]] = field(default_factory=dict)

    def markdown(self) -> str:
        out = [f"### {self.dataset}: mAP (%)", ""]
        s = self.settings
        out.append(f"Settings: {s}")
        out.append("")
        for lvl in self.levels:
            out.append(f"**{lvl}**")
            out.append("")
            cols = ["Baseline"] + [f"K={k}" for k in self.Ks] + [f"K={max(self.Ks)} exhaustive"]
            out.append("| Feature | Dim | " + " | ".join(cols) + " |")
            out.append("|---|---|" + "---|" * len(cols))
            out.append(f"| BoW only (RootSIFT, {s['vocab_size']} words) | – | "
                       + " | ".join([f"{100 * self.bow[lvl]:.2f}"] + ["–"] * (len(cols) - 1)) + " |")
            for feat, row in self.rows.items():
                vals = [row["baseline"][lvl]] + [row[f"K={k}"][lvl] for k in self.Ks] + [row["exhaustive"][lvl]]
                out.append(f"| {feat} | {self.dims[feat]} | " + " | ".join(f"{100 * v:.2f}" for v in vals) + " |")
            out.append("")
        if self.speed:
            out.append("**Speed** (this machine)")
            out.append("")
            out.append("| Feature | index img/s | query p50 ms | query p95 ms | rank-only p50 ms (fast) | "
                       "rank-only p50 ms (exhaustive) | bytes / image |")
            out.append("|---|---|---|---|---|---|---|")
            for feat, sp in self.speed.items():
                out.append(f"| {feat} | {sp['index_img_s']:.2f} | {sp['query_p50_ms']:.0f} | {sp['query_p95_ms']:.0f} | "
                           f"{sp['rank_fast_p50_ms']:.2f} | {sp['rank_exhaustive_p50_ms']:.2f} | "
                           f"{sp['bytes_per_image']:.0f} |")
            out.append("")
        return "\n".join(out)


def _restrict(hits, allowed: set) -> List[str]:
    return [h.name for h in hits if h.name in allowed]


def oxford_table(
    root,
    *,
    features: Sequence[str] = ("conv-max", "conv-sum"),
    Ks: Sequence[int] = (5, 10, 15, 20),
    vocab_size: int = 50_000,
    max_keypoints: Optional[int] = 2000,
    N: int = 100,
    n: int = 10,
    k: int = 5,
    backbone: str = "alexnet",
    device: str = "cpu",
    weights="auto",
    allow_download: bool = False,
    cache: Optional[str] = None,
    progress: Optional[bool] = None,
    seed: int = 0,
    print_fn=print,
) -> EvalTable:
    """Build the table (see the module docstring). ``cache``: a folder where the indexes
    are saved and reused by later runs with the same settings."""
    from .eval import load_gnd
    from .retriever import Retriever

    root = Path(root)
    gt = load_gnd(root / "gnd.json")
    stems = list(gt.images)
    paths = [str(gt.image_path(s)) for s in stems]
    Ks = sorted(int(x) for x in Ks)
    Kmax = Ks[-1]
    protocols = [p for p in ("classic", "revisited") if p in gt.protocols]
    levels = []
    for p in protocols:
        proto = gt.protocol(p)
        for lvl in proto.levels:
            if p == "revisited" and lvl == "easy":
                continue
            levels.append(f"{p}/{lvl}" if p != "classic" else "classic")
    settings = {"backbone": backbone, "vocab_size": vocab_size, "max_keypoints": max_keypoints, "N": N, "n": n,
                "k": k, "images": len(stems)}

    queries = []  # (protocol, query)
    for p in protocols:
        for q in gt.protocol(p).queries:
            queries.append((p, q))

    def evaluate(rank_fn) -> Dict[str, float]:
        out = {}
        for p in protocols:
            proto = gt.protocol(p)
            allowed = set(proto.database)
            rankings = {q.id: _restrict(rank_fn(p, q), allowed) for q in proto.queries}
            res = proto.evaluate(rankings)
            for lvl, v in res.map.items():
                if p == "revisited" and lvl == "easy":
                    continue
                out["classic" if p == "classic" else f"{p}/{lvl}"] = v
        return out

    vocabulary = None
    rows, dims, speed = {}, {}, {}
    bow_map = None
    for feat in features:
        t0 = time.perf_counter()
        r = Retriever(backbone=backbone, feature=feat, K=Kmax, vocab_size=vocab_size, max_keypoints=max_keypoints,
                      N=N, n=n, k=k, device=device, weights=weights, allow_download=allow_download,
                      progress=progress, seed=seed)
        cpath = None
        if cache:
            cpath = Path(cache) / f"{root.name}-{backbone}-{feat}-K{Kmax}-V{vocab_size}-F{max_keypoints}-s{seed}"
        if cpath is not None and (cpath / "manifest.json").exists():
            r = Retriever.load(cpath, device=device, weights=weights, progress=progress)
            r.config.N, r.config.n, r.config.k = N, n, k
            index_rate = float("nan")
            print_fn(f"[{feat}] loaded cached index {cpath}")
        else:
            r.train(paths, vocabulary=vocabulary)
            t1 = time.perf_counter()
            r.add(paths, names=stems)
            index_rate = len(paths) / (time.perf_counter() - t1)
            print_fn(f"[{feat}] trained in {t1 - t0:.0f} s, indexed {len(r)} images at {index_rate:.2f} img/s")
            if cpath is not None:
                r.save(cpath)
        vocabulary = r.bow.vocabulary
        dims[feat] = r.nbits

        prepared = {}
        lat = []
        for p, q in queries:
            key = (q.image, q.bbox)
            if key not in prepared:
                t = time.perf_counter()
                prepared[key] = r.prepare_query(gt.image_path(q.image), q.bbox)
                r.rank(prepared[key], top=len(r))
                lat.append(time.perf_counter() - t)

        def ranker(mode, view):
            def fn(p, q):
                return view.rank(prepared[(q.image, q.bbox)], top=len(view), mode=mode).hits
            return fn

        row = {"baseline": evaluate(ranker("global", r))}
        for K in Ks:
            row[f"K={K}"] = evaluate(ranker("fast", r.with_K(K) if K < Kmax else r))
        row["exhaustive"] = evaluate(ranker("exhaustive", r))
        if bow_map is None:
            bow_map = evaluate(ranker("bow", r))
        rows[feat] = row
        # re-ranking cost alone, fast vs exhaustive (features already extracted)
        rank_t = {"fast": [], "exhaustive": []}
        for pq in prepared.values():
            for mode in rank_t:
                t = time.perf_counter()
                r.rank(pq, top=N, mode=mode)
                rank_t[mode].append(time.perf_counter() - t)
        store_bytes = r._store.nbytes() + r.bow.inverted_file.memory_bytes()
        speed[feat] = {
            "index_img_s": index_rate,
            "query_p50_ms": 1000 * float(np.percentile(lat, 50)),
            "query_p95_ms": 1000 * float(np.percentile(lat, 95)),
            "rank_fast_p50_ms": 1000 * float(np.percentile(rank_t["fast"], 50)),
            "rank_exhaustive_p50_ms": 1000 * float(np.percentile(rank_t["exhaustive"], 50)),
            "bytes_per_image": store_bytes / max(1, len(r)),
        }
        print_fn(f"[{feat}] " + ", ".join(f"{c}: {100 * v['classic']:.2f}" for c, v in row.items()) +
                 f"; BoW {100 * bow_map['classic']:.2f}")
    return EvalTable(root.name, levels, Ks, bow_map, rows, dims, settings, speed)
