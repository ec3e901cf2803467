"""Spatial verification and query expansion: the ablation table of docs/RESULTS.md and the
grid the defaults (R, min_inliers, qe) were chosen from, on Oxford5k-dev (an index folder
built by ``roiret eval --cache``) and on the demo collection (three seeds).

    roiret eval ../shared/datasets/oxford5k-dev --features conv-max --variants roiret \\
        --cache /tmp/roiret-eval
    python benchmarks/verify_study.py --dataset ../shared/datasets/oxford5k-dev \\
        --index /tmp/roiret-eval/oxford5k-dev-conv-max-roiret-* [--grid] [--ransac] [--margins 0.5,1]

Every cell comes from ``Retriever.rank`` on the same prepared queries (features extracted
once), evaluated as ``roiret eval`` does. Times: ``rank`` alone (query features given), p50
/ p95 over the queries, this machine. ``--ransac`` replaces the verifier by OpenCV's
``estimateAffinePartial2D`` (RANSAC) or ``estimateAffine2D`` (USAC MAGSAC++) on the same
tentative correspondences, one call per candidate, to compare mAP and time. ``--margins``:
query expansion with whole images against each ``qe_margin`` (only the verified images'
features inside the mapped query box), with and without the RoI fusion.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROWS = [
    ("BoW", dict(mode="bow", R=0, qe=0)),
    ("+ spatial verification", dict(mode="bow", qe=0)),
    ("+ query expansion", dict(mode="bow")),
    ("+ RoI fusion (default)", dict()),
    ("RoI score alone after SV + QE", dict(fusion=0.0)),
    ("RoI fusion, no SV / QE (0.2 default)", dict(R=0, qe=0)),
]


def _cells(rank_fn, evaluate, settings):
    """{label: (metrics, p50 ms, p95 ms)} for each settings dict."""
    out = {}
    for label, kw in settings:
        times = []

        def ranked(q, kw=kw, times=times):
            t = time.perf_counter()
            hits = rank_fn(q, **kw)
            times.append(time.perf_counter() - t)
            return hits

        m = evaluate(ranked)
        out[label] = (m, 1000 * float(np.percentile(times, 50)), 1000 * float(np.percentile(times, 95)))
    return out


def oxford(index: str, dataset: Path, settings):
    from roiret.eval import load_gnd
    from roiret.eval.table import evaluate_oxford
    from roiret.search.retriever import Retriever, RetrieverConfig

    gt = load_gnd(dataset / "gnd.json")
    r = Retriever.load(index, progress=False)
    # search-time settings: today's defaults, not those the index was saved with
    d = RetrieverConfig()
    r.config = r.config.replace(
        **{k: getattr(d, k) for k in ("N", "n", "k", "mode", "fusion", "R", "min_inliers", "qe", "qe_margin")}
    )
    prepared = {}
    for p in gt.protocols:
        for q in gt.protocol(p).queries:
            if (q.image, q.bbox) not in prepared:
                prepared[(q.image, q.bbox)] = r.prepare_query(gt.image_path(q.image), q.bbox)

    def rank_fn(q, **kw):
        return r.rank(prepared[(q.image, q.bbox)], top=len(r), **kw).hits

    cells = _cells(rank_fn, lambda f: evaluate_oxford(gt, f), settings)
    out = {}
    for label, (m, p50, p95) in cells.items():
        out[label] = ([100 * m[k] for k in ("classic", "revisited/medium", "revisited/hard")], p50, p95)
    return out, r.index.nbytes() / len(r)


def demo(seed: int, settings):
    from roiret.apps.demo import make_collection
    from roiret.eval import average_precision
    from roiret.search.retriever import Retriever

    col = make_collection(seed=seed)
    r = Retriever(  # the settings of `roiret demo` (roiret.apps.demo)
        vocab_size=1000, K=20, N=len(col.database), n=6, k=5, max_keypoints=1500, progress=False, batch_size=8
    )
    r.train(col.database)
    ids = r.add(col.database, names=col.names)
    prepared = [
        (r.prepare_query(photo, box), {int(ids[i]) for i in col.positives[name]}) for name, photo, box in col.queries
    ]
    out = {}
    for label, kw in settings:
        aps, times = [], []
        for q, pos in prepared:
            t = time.perf_counter()
            res = r.rank(q, top=len(r), **kw)
            times.append(time.perf_counter() - t)
            aps.append(average_precision(res.ids.tolist(), pos))
        out[label] = (
            [100 * float(np.mean(aps))],
            1000 * float(np.median(times)),
            1000 * float(np.percentile(times, 95)),
        )
    return out, r.index.nbytes() / len(r)


def grid():
    rows = []
    for qe in (0, 5, 10, 15, 20):
        for mi in (4, 5, 6, 8):
            rows.append((f"R=100 min_inliers={mi} qe={qe}", dict(min_inliers=mi, qe=qe)))
    for qe in (30, 40, 50, 60):  # measured after the ASMK first stage and EfficientNet-Lite0 RoIs landed
        for mi in (5, 6):
            rows.append((f"R=100 min_inliers={mi} qe={qe}", dict(min_inliers=mi, qe=qe)))
    for R in (50, 200):
        rows.append((f"R={R} min_inliers=5, qe the default", dict(R=R)))
    return rows


def margin_rows(margins):
    """Expansion with whole images, then with each qe_margin: first stage + SV + QE, and the default."""
    rows = []
    for m in [None] + list(margins):
        name = "whole images" if m is None else f"qe_margin={m:g}"
        rows.append((f"+ query expansion, {name}", dict(mode="bow", qe_margin=m)))
        rows.append((f"default, {name}", dict(qe_margin=m)))
    return rows


def _use_ransac(method_name: str):
    """Swap the verifier for OpenCV's estimateAffinePartial2D on the same correspondences."""
    import cv2

    from roiret.search import ranking
    from roiret.search.verify import INLIER_THRESHOLD, MAX_PER_WORD, Verification

    method = getattr(cv2, method_name)
    # OpenCV 5 takes MAGSAC++ for the full affine model only
    estimate = cv2.estimateAffine2D if method_name == "USAC_MAGSAC" else cv2.estimateAffinePartial2D

    def verify_rows(query, geometry, rows, *, threads=None):
        out = {}
        order = np.argsort(query.words, kind="stable")
        qw = query.words[order]
        for r in np.asarray(rows, np.int64):
            f = geometry.features_of(int(r))
            pairs = []
            for w in np.intersect1d(qw, f.words):
                a = order[np.searchsorted(qw, w) : np.searchsorted(qw, w, "right")][:MAX_PER_WORD]
                b = np.nonzero(f.words == w)[0][:MAX_PER_WORD]
                pairs += [(i, j) for i in a for j in b]
            nan = np.full(4, np.nan, np.float32)
            if len(pairs) < 3:
                out[int(r)] = Verification(0, np.full((2, 3), np.nan), nan, nan, len(pairs))
                continue
            p = np.array(pairs)
            src, dst = query.xy[p[:, 0]].astype(np.float32), f.xy[p[:, 1]].astype(np.float32)
            thr = INLIER_THRESHOLD * float(geometry.arrays()["sides"][int(r)])
            A, mask = estimate(src, dst, method=method, ransacReprojThreshold=thr)
            m = np.zeros(len(p), bool) if mask is None else mask.ravel().astype(bool)
            if A is None or not m.any():
                out[int(r)] = Verification(0, np.full((2, 3), np.nan), nan, nan, len(p))
                continue
            qb = np.r_[src[m].min(0), src[m].max(0)].astype(np.float32)
            db = np.r_[dst[m].min(0), dst[m].max(0)].astype(np.float32)
            out[int(r)] = Verification(len(np.unique(p[m, 0])), A, qb, db, len(p))
        return out

    ranking.verify_rows = verify_rows


def _print(title, results, levels):
    print(f"\n### {title}\n")
    print("| row | " + " | ".join(levels) + " | rank p50 / p95 ms |")
    print("|---|" + "---|" * len(levels) + "---|")
    for label, (vals, p50, p95) in results.items():
        print(f"| {label} | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {p50:.1f} / {p95:.1f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, help="Oxford-style dataset root (gnd.json, jpg/)")
    ap.add_argument("--index", help="an index of that dataset built with geometry (roiret eval --cache)")
    ap.add_argument("--seeds", default="0,1,2", help="demo collection seeds ('' to skip the demo)")
    ap.add_argument("--grid", action="store_true", help="the grid of R / min_inliers / qe instead of the ablation")
    ap.add_argument("--margins", help="qe_margin values to compare with whole-image expansion, e.g. 0.5,1")
    ap.add_argument("--ransac", choices=["RANSAC", "USAC_MAGSAC"], help="OpenCV's verifier instead of roiret's")
    args = ap.parse_args(argv)
    if args.ransac:
        _use_ransac(args.ransac)
    settings = grid() if args.grid else ROWS
    if args.margins:
        settings = margin_rows(float(m) for m in args.margins.split(","))
    if args.index:
        res, bpi = oxford(args.index, args.dataset, settings)
        _print(f"Oxford5k-dev ({bpi:.0f} bytes / image)", res, ["classic", "medium", "hard"])
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if seeds:
        per = [demo(s, settings) for s in seeds]
        merged = {
            label: ([per[i][0][label][0][0] for i in range(len(seeds))], per[0][0][label][1], per[0][0][label][2])
            for label, _ in settings
        }
        _print(f"demo collection, seeds {seeds} ({per[0][1]:.0f} bytes / image)", merged, [f"seed {s}" for s in seeds])
    return 0


if __name__ == "__main__":
    sys.exit(main())
