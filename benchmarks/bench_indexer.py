"""Indexing throughput: ``Retriever.add`` one stage after the other vs pipelined (issue 13).

    python benchmarks/bench_indexer.py                         # default + paper configs, 48 photos
    python benchmarks/bench_indexer.py --words 50000           # a 50k-word vocabulary (HNSW assignment)
    python benchmarks/bench_indexer.py --variants sequential pipelined pipelined:torch=1

For each configuration (``RetrieverConfig()``: EfficientNet-Lite0 conv-gem; ``.paper()``:
AlexNet conv-max, whitened) one retriever is trained on the photos (a ``--vocab-size``
k-means vocabulary, as ``roi_stage_study.py --index-cost``; or with ``--words N`` N words
drawn from the photos' RootSIFT descriptors: no k-means, but the assignment cost of a real
N-word vocabulary), warmed up (one add of every photo: the CNN has seen every input size),
then the same photos are indexed again and again, the variants alternating (A, B, A, B, …)
so that the load of the machine falls on all of them alike. Variants: ``sequential``
(``pipeline=False``), ``pipelined``, and ``pipelined:torch=N`` / ``:cv=N`` / ``:faiss=N``
(torch intra-op, OpenCV or faiss threads set to N for the add, restored after).

Printed per configuration and variant, medians over the rounds: images/s, the time of each
stage per image (``Retriever.add_timings``; ``decode`` timed apart, ``rest`` = the wall time
the stages leave: codes, geometry, index insertion), the cores kept busy (process CPU time /
wall time), and the ratio of the throughput to the rate of the slowest stage measured alone
(in the sequential runs). Every add is checked to give the same index as the first add
with the same thread settings (torch's thread count changes the CNN's last bits).
Skips (exit 0) when the photos are missing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

STAGES = ("decode", "sift", "quantize", "cnn_trunk", "regions_codes", "rest")
DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "oxford5k-dev" / "jpg"


def photos(folder: Path, n: int) -> List[str]:
    return sorted(str(p) for p in folder.glob("*.jpg"))[:n]


def sampled_vocabulary(paths: List[str], config, words: int, seed: int = 0):
    """``words`` RootSIFT descriptors of the photos as a vocabulary (timing only)."""
    import numpy as np

    from roiret.bow import LocalFeatureExtractor, Vocabulary
    from roiret.io.images import load_shrunk

    lfe = LocalFeatureExtractor(config.local_features, max_keypoints=config.max_keypoints, max_side=None)
    desc = np.concatenate([lfe.extract(load_shrunk(p, config.max_side).image).descriptors for p in paths])
    if len(desc) < words:
        raise SystemExit(f"--words {words}: the photos have only {len(desc)} descriptors")
    rows = np.random.default_rng(seed).choice(len(desc), words, replace=False)
    return Vocabulary(desc[np.sort(rows)], info={"descriptor": lfe.kind})


def build(name: str, paths: List[str], vocab_size: int, words: Optional[int]):
    from roiret.search.retriever import Retriever, RetrieverConfig

    config = RetrieverConfig() if name == "default" else RetrieverConfig.paper()
    r = Retriever(config, vocab_size=vocab_size, progress=False)
    r.train(paths, vocabulary=None if words is None else sampled_vocabulary(paths, config, words))
    r.add(paths, ids=range(len(paths)))  # warm-up: every input size through the CNN once
    return r


@contextlib.contextmanager
def variant_settings(r, variant: str) -> Iterator[None]:
    """``r.pipeline`` and the thread counts ``variant`` asks for, restored afterwards."""
    import cv2
    import faiss
    import torch

    kind, *opts = variant.split(":")
    if kind not in ("sequential", "pipelined"):
        raise SystemExit(f"unknown variant {variant!r}")
    knobs = {
        "torch": (torch.get_num_threads, torch.set_num_threads),
        "cv": (cv2.getNumThreads, cv2.setNumThreads),
        "faiss": (faiss.omp_get_max_threads, faiss.omp_set_num_threads),
    }
    restore = []
    r.pipeline = kind == "pipelined"
    try:
        for opt in opts:
            key, value = opt.split("=")
            get, put = knobs[key]
            restore.append((put, get()))
            put(int(value))
        yield
    finally:
        for put, old in reversed(restore):
            put(old)


def digest(r) -> str:
    h = hashlib.sha256()
    for arrays in (r.store.state_dict(), r.index.geometry.state_dict()):
        for k in sorted(arrays):
            h.update(k.encode() + arrays[k].tobytes())
    h.update(r.index.bow.inverted_file.ids().tobytes() + r.index.bow.inverted_file.document_frequencies().tobytes())
    return h.hexdigest()


def one_add(r, paths: List[str], variant: str) -> Dict[str, float]:
    """Index ``paths`` into the emptied ``r`` once; ms per image of each stage, images/s, cores."""
    from roiret.io.images import load_shrunk

    r.remove(r.ids.tolist())
    for k in r.add_timings:
        r.add_timings[k] = 0.0 if k != "images" else 0
    n = len(paths)
    t = time.perf_counter()
    for p in paths:
        load_shrunk(p, r.config.max_side)
    decode = (time.perf_counter() - t) / n
    with variant_settings(r, variant):
        c0 = time.process_time()
        r.add(paths, ids=range(n))
        cpu = time.process_time() - c0
    at = r.add_timings
    assert at["images"] == n, at
    out = {k: 1000 * at[k] / n for k in STAGES if k in at}
    out["decode"] = 1000 * decode
    out["rest"] = 1000 * at["wall"] / n - sum(out[k] for k in STAGES if k not in ("decode", "rest"))
    out.update(images_s=n / at["wall"], cores=cpu / at["wall"], load=os.getloadavg()[0])
    return out


def report(name: str, variants: List[str], runs: Dict[str, List[Dict[str, float]]]) -> None:
    med = {v: {k: statistics.median(run[k] for run in runs[v]) for k in runs[v][0]} for v in variants}
    seq = med.get("sequential", med[variants[0]])
    slowest = max(STAGES, key=lambda k: seq[k])
    bound = 1000 / seq[slowest]  # images/s of the slowest stage, measured alone
    ahead = seq["decode"] + seq["sift"] + seq["quantize"]  # the pipeline's thread
    behind = seq["cnn_trunk"] + seq["regions_codes"] + seq["rest"]  # the calling thread
    two = 1000 / max(ahead, behind)
    print(
        f"\n{name}: slowest stage alone {slowest} {seq[slowest]:.1f} ms = {bound:.1f} images/s; "
        f"two-thread bound {two:.1f} images/s"
    )
    print("| variant | images/s | " + " | ".join(f"{s} ms" for s in STAGES) + " | cores busy | ÷ slowest stage |")
    print("|---" * (len(STAGES) + 4) + "|")
    for v in variants:
        m = med[v]  # stages overlap in a pipelined add: no "rest" there
        cells = " | ".join("–" if s == "rest" and v.startswith("pipelined") else f"{m[s]:.1f}" for s in STAGES)
        print(f"| {v} | {m['images_s']:.2f} | {cells} | {m['cores']:.2f} | {m['images_s'] / bound:.2f} |", flush=True)
    loads = [run["load"] for v in variants for run in runs[v]]
    print(f"load average (1 min) after the adds: {min(loads):.1f}–{max(loads):.1f}")
    for v in variants:
        print(f"{v}: images/s per round " + ", ".join(f"{run['images_s']:.2f}" for run in runs[v]))
    if "sequential" in med:
        for v in variants:
            if v != "sequential":
                ratios = [b["images_s"] / a["images_s"] for a, b in zip(runs["sequential"], runs[v])]
                print(f"{v} / sequential: {statistics.median(ratios):.2f}× (median of per-round ratios)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="the photos (*.jpg)")
    ap.add_argument("--images", type=int, default=48, help="photos indexed per round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds; each runs every variant once")
    ap.add_argument("--configs", nargs="+", default=["default", "paper"], choices=["default", "paper"])
    ap.add_argument("--variants", nargs="+", default=["sequential", "pipelined"])
    ap.add_argument("--vocab-size", type=int, default=2000, help="k-means vocabulary size")
    ap.add_argument("--words", type=int, default=None, help="instead: this many words drawn from the descriptors")
    args = ap.parse_args()
    paths = photos(args.folder, args.images)
    if len(paths) < args.images:
        print(f"skipped: {args.images} photos needed in {args.folder}, found {len(paths)}")
        return 0
    import roiret

    vocab = f"{args.words} sampled words" if args.words else f"{args.vocab_size}-word k-means vocabulary"
    print(
        f"{len(paths)} photos of {args.folder}, {vocab}, {args.rounds} rounds (medians), variants alternating; "
        f"{os.cpu_count()} CPUs, SIMD {roiret.simd_level()}, python {sys.version.split()[0]}"
    )
    for name in args.configs:
        r = build(name, paths, args.vocab_size, args.words)
        runs: Dict[str, List[Dict[str, float]]] = {v: [] for v in args.variants}
        first: Dict[str, str] = {}  # thread settings -> the index they gave first
        for _ in range(args.rounds):
            for v in args.variants:
                runs[v].append(one_add(r, paths, v))
                threads = v.partition(":")[2]  # the CNN's results depend on torch's thread count
                if first.setdefault(threads, digest(r)) != digest(r):
                    raise SystemExit(f"{name}, {v}: the index differs from the first add with these threads")
        words = r.encoder.vocabulary.size
        report(f"{name} ({r.config.backbone} {r.config.feature}, {words} words)", args.variants, runs)
        print(
            "every add gave the same index as the first with the same thread settings (RoI store, geometry, "
            f"inverted file); {len(set(first.values()))} distinct indexes over {len(first)} thread settings"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
