#!/usr/bin/env python
"""BoW-only retrieval quality and speed of roiret's first stage.

Measures, for vocabularies of several sizes learned (without labels) from a seeded sample of
the Oxford5k-dev database images' RootSIFT descriptors:

* mAP on Oxford5k-dev, classic protocol and revisited Easy / Medium / Hard (query = the
  features of the query image whose centre lies in its box; full rankings of the
  protocol's database, TF-IDF on the native InvertedFile);
* the N-S score on ukbench-56 (the Oxford vocabularies: learned on other images);
* descriptors/s of extraction, assignment throughput (exact vs HNSW, with HNSW's recall
  against exact), k-means time, query latency.

Usage::

    python benchmarks/bow_map.py ../shared/datasets --cache /tmp/roiret-bow-cache \\
        --vocab 10000 50000 200000 --out /tmp/roiret-bow-cache/results.json

Extracted features and vocabularies are cached under ``--cache`` (outside the repository),
so re-running, or adding a vocabulary size, does not redo earlier work. Exits cleanly
(status 0, with a message) when the data set folder is absent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np


def _log(msg: str) -> None:
    print(msg, flush=True)


def _features_cache(cache: Path, tag: str, extractor, paths: List[Path]):
    """Features of every image, cached as one npz (descriptors stacked, CSR offsets, xy)."""
    from roiret.bow import LocalFeatures

    cfg = json.dumps(extractor.config(), sort_keys=True)
    key = hashlib.sha256((cfg + "|" + "|".join(str(p) for p in paths)).encode()).hexdigest()[:16]
    f = cache / f"features-{tag}-{key}.npz"
    if f.exists():
        with np.load(f, allow_pickle=False) as z:
            off, desc, xy, sizes, wh = z["offsets"], z["descriptors"], z["xy"], z["sizes"], z["wh"]
            secs = float(z["seconds"])
        _log(f"[{tag}] features from cache {f}")
    else:
        t0 = time.perf_counter()
        feats = extractor.extract_many(paths, desc=f"{tag} features")
        secs = time.perf_counter() - t0
        off = np.zeros(len(feats) + 1, np.int64)
        np.cumsum([len(x) for x in feats], out=off[1:])
        desc = np.concatenate([x.descriptors for x in feats])
        xy = np.concatenate([x.xy for x in feats])
        sizes = np.concatenate([x.sizes for x in feats])
        wh = np.array([x.image_size for x in feats], np.int64)
        tmp = f.with_name(f.name + ".tmp.npz")
        np.savez(tmp, offsets=off, descriptors=desc, xy=xy, sizes=sizes, wh=wh, seconds=secs)
        os.replace(tmp, f)
    feats = [
        LocalFeatures(xy[a:b], sizes[a:b], desc[a:b], (int(wh[i, 0]), int(wh[i, 1])), extractor.kind)
        for i, (a, b) in enumerate(zip(off[:-1], off[1:]))
    ]
    return feats, desc, secs


def _vocabulary(cache: Path, feats_key: str, descs, k: int, max_train, args):
    from roiret.bow import Vocabulary

    efs = f"-ef{args.kmeans_ef_search}" if args.kmeans_ef_search else ""
    name = f"vocab-{feats_key}-k{k}-n{max_train or 'all'}-it{args.n_iter}-s{args.seed}-{args.kmeans}{efs}.npz"
    p = cache / name
    if p.exists():
        voc = Vocabulary.load(p)
        _log(f"[k={k}] vocabulary from cache {p} (k-means took {voc.info.get('seconds', float('nan')):.0f} s)")
        return voc
    t0 = time.perf_counter()
    voc = Vocabulary.fit(
        descs,
        k,
        seed=args.seed,
        kmeans_iterations=args.n_iter,
        max_train_descriptors=max_train,
        kmeans=args.kmeans,
        kmeans_ef_search=args.kmeans_ef_search,
        descriptor="rootsift",
    )
    voc.info["seconds"] = time.perf_counter() - t0
    voc.save(p)
    return voc


def _assign_all(voc, feats):
    from roiret.bow import bag_of_words

    allx = np.concatenate([f.descriptors for f in feats])
    t0 = time.perf_counter()
    words = voc.assign(allx)
    secs = time.perf_counter() - t0
    off = np.zeros(len(feats) + 1, np.int64)
    np.cumsum([len(f) for f in feats], out=off[1:])
    bags = [bag_of_words(words[a:b], voc.size) for a, b in zip(off[:-1], off[1:])]
    return bags, words, allx.shape[0] / secs


def _index(voc, bags, names, subset):
    from roiret._kernels import InvertedFile
    from roiret.bow import bags_to_csr

    pos = {n: i for i, n in enumerate(names)}
    sel = [pos[n] for n in subset]
    ivf = InvertedFile(voc.size)
    ivf.add(np.arange(len(sel), dtype=np.int64), *bags_to_csr([bags[i] for i in sel]))
    return ivf


def _evaluate_oxford(voc, gnd, feats, bags, names, results: Dict, k: int):
    from roiret.bow import bag_of_words

    pos = {n: i for i, n in enumerate(names)}
    lat_search, lat_encode = [], []
    for pname in ("classic", "revisited"):
        proto = gnd.protocol(pname)
        ivf = _index(voc, bags, names, proto.database)
        n_db = len(proto.database)
        rankings = []
        for q in proto.queries:
            t0 = time.perf_counter()
            qf = feats[pos[q.image]].in_box(q.bbox)
            qw, qc = bag_of_words(voc.assign(qf.descriptors), voc.size)
            t1 = time.perf_counter()
            ids, _ = ivf.search(qw, qc, n_db)
            t2 = time.perf_counter()
            ivf.search(qw, qc, 100)
            t3 = time.perf_counter()
            lat_encode.append(t1 - t0)
            lat_search.append(t3 - t2)
            rankings.append(np.asarray(ids, dtype=np.int64))
        res = proto.evaluate(rankings)
        for lvl, m in res.map.items():
            results[f"map_{lvl}"] = m
        _log(f"[k={k}] Oxford5k-dev {res}")
    results["query_assign_ms_median"] = 1e3 * float(np.median(lat_encode))
    results["query_search_top100_ms_median"] = 1e3 * float(np.median(lat_search))


def _evaluate_ukbench(voc, ugnd, ufeats, results: Dict, k: int):
    from roiret._kernels import InvertedFile
    from roiret.bow import bag_of_words, bags_to_csr

    bags = [bag_of_words(voc.assign(f.descriptors), voc.size) for f in ufeats]
    ivf = InvertedFile(voc.size)
    ivf.add(np.arange(len(bags), dtype=np.int64), *bags_to_csr(bags))
    rankings = [np.asarray(ivf.search(w, c, 4)[0]) for w, c in bags]
    results["ukbench_ns"] = ugnd.score(rankings)
    _log(f"[k={k}] ukbench-56 N-S = {results['ukbench_ns']:.3f}")


def _assignment_speed(voc, descs, results: Dict, k: int, n: int, seed: int, held_out=None):
    rng = np.random.default_rng(seed)
    x = descs[np.sort(rng.choice(descs.shape[0], size=min(n, descs.shape[0]), replace=False))]
    voc.assign(x[:100])  # build the index outside the timing
    t0 = time.perf_counter()
    voc.assign_exact(x)
    t_exact = time.perf_counter() - t0
    results["assign_exact_per_s"] = x.shape[0] / t_exact
    if voc.approximate:
        t0 = time.perf_counter()
        voc.assign(x)
        results["assign_hnsw_per_s"] = x.shape[0] / (time.perf_counter() - t0)
        results["hnsw_recall"] = voc.assignment_recall(x)
        results["hnsw_ef_search"] = voc.hnsw_ef_search
        if held_out is not None:
            # descriptors of other images (not used for k-means): the harder case
            results["hnsw_recall_held_out"] = voc.assignment_recall(held_out)
    _log(
        f"[k={k}] assignment: exact {results['assign_exact_per_s']:.0f} desc/s"
        + (
            f", HNSW {results['assign_hnsw_per_s']:.0f} desc/s (efSearch {voc.hnsw_ef_search}, "
            f"recall vs exact {results['hnsw_recall']:.4f} on database descriptors, "
            f"{results.get('hnsw_recall_held_out', float('nan')):.4f} on ukbench-56's)"
            if voc.approximate
            else ""
        )
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("datasets", type=Path, help="folder holding oxford5k-dev/ and ukbench-56/")
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path("/tmp/roiret-bow-cache"),
        help="cache folder for features and vocabularies (default: %(default)s)",
    )
    ap.add_argument(
        "--vocab",
        type=int,
        nargs="+",
        default=[10_000, 50_000, 200_000],
        help="vocabulary sizes (default: %(default)s)",
    )
    ap.add_argument(
        "--max-train",
        type=int,
        nargs="+",
        default=None,
        help="k-means sample size: one value for all vocabularies or one per --vocab "
        "entry; 0 = all (default: all database descriptors, at most 256/word)",
    )
    ap.add_argument("--n-iter", type=int, default=20, help="k-means iterations (default: %(default)s)")
    ap.add_argument(
        "--kmeans",
        default="auto",
        choices=["auto", "exact", "approximate"],
        help="k-means assignment (default: %(default)s = HNSW from 32768 words)",
    )
    ap.add_argument(
        "--kmeans-ef-search",
        type=int,
        default=None,
        help="HNSW efSearch inside approximate k-means (default: the vocabulary's)",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of sample and init (default: %(default)s)")
    ap.add_argument("--max-features", type=int, default=4000, help="keypoints per image (default: %(default)s)")
    ap.add_argument(
        "--speed-sample", type=int, default=20_000, help="descriptors used to time assignment (default: %(default)s)"
    )
    ap.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    args = ap.parse_args(argv)
    mt = args.max_train or [0]
    if len(mt) not in (1, len(args.vocab)):
        ap.error(f"--max-train: give one value or {len(args.vocab)} (one per --vocab)")
    max_trains = [(m or None) for m in (mt * len(args.vocab) if len(mt) == 1 else mt)]

    oxf = args.datasets / "oxford5k-dev"
    if not (oxf / "gnd.json").exists():
        print(f"skipped: {oxf}/gnd.json not found (the data set is not on this machine)")
        return 0
    try:
        import roiret._kernels  # noqa: F401
    except ImportError as e:
        print(f"skipped: the native core is not built ({e})")
        return 0
    import faiss

    from roiret.bow import LocalFeatureExtractor
    from roiret.eval import load_gnd

    args.cache.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[1]
    if repo in args.cache.resolve().parents:
        ap.error("--cache must be outside the repository")

    gnd = load_gnd(oxf)
    names = list(gnd.images)
    extractor = LocalFeatureExtractor("rootsift", max_keypoints=args.max_features)
    feats, descs, secs = _features_cache(args.cache, "oxford5k-dev", extractor, [gnd.image_path(n) for n in names])
    n_desc = descs.shape[0]
    summary = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"faiss threads {faiss.omp_get_max_threads()}",
        "extractor": extractor.config(),
        "oxford_images": len(names),
        "oxford_descriptors": int(n_desc),
        "descriptors_per_image": n_desc / len(names),
        "extract_desc_per_s": n_desc / secs,
        "extract_img_per_s": len(names) / secs,
        "vocabularies": {},
    }
    _log(
        f"Oxford5k-dev: {len(names)} images, {n_desc} RootSIFT descriptors "
        f"({n_desc / len(names):.0f}/image), extraction {n_desc / secs:.0f} desc/s"
    )
    feats_key = hashlib.sha256(descs[:: max(1, n_desc // 1000)].tobytes()).hexdigest()[:10]

    ukb = args.datasets / "ukbench-56"
    ugnd = ufeats = None
    if (ukb / "gnd.json").exists():
        ugnd = load_gnd(ukb)
        ufeats, _, _ = _features_cache(args.cache, "ukbench-56", extractor, [ugnd.image_path(n) for n in ugnd.images])

    for k, max_train in zip(args.vocab, max_trains):
        res: Dict = {}
        voc = _vocabulary(args.cache, feats_key, descs, k, max_train, args)
        res.update(
            kmeans=voc.info.get("kmeans"),
            kmeans_seconds=voc.info.get("seconds"),
            n_train=voc.info.get("n_train"),
            n_iter=voc.info.get("n_iter"),
            kmeans_ef_search=voc.info.get("kmeans_ef_search"),
            final_mse=(voc.info.get("objective") or [None])[-1],
        )
        bags, _, rate = _assign_all(voc, feats)
        res["assign_all_per_s"] = rate
        _evaluate_oxford(voc, gnd, feats, bags, names, res, k)
        if ugnd is not None:
            _evaluate_ukbench(voc, ugnd, ufeats, res, k)
        held_out = None
        if ufeats is not None:
            held_out = np.concatenate([f.descriptors for f in ufeats])
            rng = np.random.default_rng(args.seed)
            held_out = held_out[
                np.sort(rng.choice(len(held_out), min(len(held_out), args.speed_sample), replace=False))
            ]
        _assignment_speed(voc, descs, res, k, args.speed_sample, args.seed, held_out)
        summary["vocabularies"][str(k)] = res
        if args.out:
            args.out.write_text(json.dumps(summary, indent=2))

    # table
    print()
    print(
        "| words | k-means (sample, iters, time) | classic mAP | R-Easy | R-Medium | R-Hard | "
        "UKB-56 N-S | assign desc/s | query assign / search (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for k, r in summary["vocabularies"].items():
        km = (
            f"{r['kmeans']}, {r['n_train']:,}, {r['n_iter']}, {r['kmeans_seconds'] / 60:.1f} min"
            if r.get("kmeans_seconds")
            else f"{r['kmeans']}, {r['n_train']:,}, {r['n_iter']}"
        )
        assign = (
            (
                f"{r['assign_hnsw_per_s']:,.0f} HNSW (recall {r['hnsw_recall']:.4f} db, "
                f"{r.get('hnsw_recall_held_out', float('nan')):.4f} held-out); "
                f"{r['assign_exact_per_s']:,.0f} exact"
            )
            if "assign_hnsw_per_s" in r
            else f"{r['assign_exact_per_s']:,.0f} exact"
        )
        print(
            f"| {int(k):,} | {km} | {100 * r['map_classic']:.2f} | {100 * r['map_easy']:.2f} | "
            f"{100 * r['map_medium']:.2f} | {100 * r['map_hard']:.2f} | "
            f"{r.get('ukbench_ns', float('nan')):.3f} | {assign} | "
            f"{r['query_assign_ms_median']:.1f} / {r['query_search_top100_ms_median']:.2f} |"
        )
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))
        print(f"\nresults written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
