"""Indexing on Ray against one process, and the cost of searching shards (issue 12).

Run (script; a local Ray cluster of 2 CPUs is started)::

    python benchmarks/bench_distributed.py [--images ../shared/datasets/ukbench-56/jpg]
        [--merge-images DIR] [--shards 1,2,4,8] [--json out/distributed.json]

1. **Indexing throughput**, the same images with the same trained state (trained once,
   not timed): ``Retriever.add`` in this process (torch and the kernels on every core) and
   the same with one thread each for torch, OpenCV, faiss and the kernels (what a Ray task
   with ``num_cpus=1`` runs: Ray sets ``OMP_NUM_THREADS``), and
   :func:`roiret.distributed.index` with 1 worker × 2 cores, 1 worker × 1 core and 2 workers
   × 1 core (one shard per worker), plus a 2-image job (the fixed cost of a job: the CNN
   built in the task, the state shipped, the shard saved and verified), interleaved over
   ``--rounds`` rounds (best and median).
   Ray's times are wall-clock from the call to the written top manifest: task start (worker
   processes are started by a warm-up run first, but each task loads the CNN again), the
   shipped trained state, the shard saves. The load average before and after is recorded:
   the machine is shared.
2. **Searching S shards**: the images of ``--merge-images`` encoded once; one index holding
   them all and :class:`~roiret.search.sharded.ShardedIndex` of S shards (consecutive runs)
   built from the same entries; every image is a query (features extracted once, not timed);
   ``rank`` at the default configuration (verification, expansion, fusion), median ms per
   query over all queries × 3 rounds. Rankings are checked to be identical first.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

import roiret
from roiret import InvertedFile, distributed
from roiret.bow import BowIndex
from roiret.search.geometry import GeometryStore
from roiret.search.index import TwoStageIndex
from roiret.search.ranking import rank
from roiret.search.retriever import Retriever
from roiret.search.sharded import ShardedIndex, merge_bow_lists
from roiret.search.store import RoIStore

WEIGHTS = "auto"


def _paths(folder: str) -> List[str]:
    exts = {".jpg", ".jpeg", ".png"}
    return sorted(str(p) for p in Path(folder).rglob("*") if p.suffix.lower() in exts)


def _load(folder: Path) -> Retriever:
    return Retriever.load(folder, weights=WEIGHTS, progress=False)


CONFIGS = [("Ray, 1 worker × 2 cores", 1, 2), ("Ray, 1 worker × 1 core", 1, 1), ("Ray, 2 workers × 1 core", 2, 1)]


def _set_threads(n: Any) -> Any:
    """Threads of torch, OpenCV, faiss and roiret's kernels; returns the previous setting."""
    import cv2
    import faiss
    import torch

    before = (torch.get_num_threads(), cv2.getNumThreads(), faiss.omp_get_max_threads(), roiret.get_num_threads())
    t, c, f, k = n if isinstance(n, tuple) else (n, n, n, n)
    torch.set_num_threads(t)
    cv2.setNumThreads(c)
    faiss.omp_set_num_threads(f)
    roiret.set_num_threads(k)
    return before


def _one_process(paths: List[str], trained: Path, threads: Any = None) -> float:
    before = _set_threads(threads) if threads else None
    try:
        r = _load(trained)
        t = time.perf_counter()
        r.add(paths)
        return time.perf_counter() - t
    finally:
        if before:
            _set_threads(before)


def _on_ray(paths: List[str], trained: Path, out: Path, workers: int, cpus: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    rep = distributed.index(
        paths, out, retriever=_load(trained), shards=workers, workers=workers, num_cpus=cpus, weights=WEIGHTS
    )
    seconds = time.perf_counter() - t
    assert rep.indexed == len(paths) - len(rep.failures) and len(rep.built) == workers
    return seconds


def throughput(paths: List[str], trained: Path, work: Path, rounds: int) -> List[Dict[str, Any]]:
    """Every configuration once per round, interleaved (a shared machine drifts); the best
    and the median round per configuration."""
    # warm-up: start the workers and import torch in them
    distributed.index(paths[:4], work / "warm", retriever=_load(trained), shards=2, weights=WEIGHTS)
    times: Dict[str, List[float]] = {"one process (2 cores)": [], "one process, 1 thread": []}
    for _ in range(rounds):
        times["one process (2 cores)"].append(_one_process(paths, trained))
        times["one process, 1 thread"].append(_one_process(paths, trained, threads=1))
        for label, workers, cpus in CONFIGS:
            times.setdefault(label, []).append(_on_ray(paths, trained, work / "ray", workers, cpus))
        times.setdefault("Ray job of 2 images, 1 worker × 1 core (fixed cost)", []).append(
            _on_ray(paths[:2], trained, work / "ray", 1, 1)
        )
        print({k: [round(x, 1) for x in v] for k, v in times.items()}, file=sys.stderr)
    single = min(times["one process (2 cores)"])
    return [
        {
            "engine": label,
            "best_s": min(ts),
            "median_s": statistics.median(ts),
            "images_per_s": (2 if "2 images" in label else len(paths)) / min(ts),
            "vs_one_process": single / min(ts),
        }
        for label, ts in times.items()
    ]


def _entries(paths: List[str], trained: Path) -> Any:
    """The index entries of ``paths`` (encoded once) and the retriever that made them."""
    r = _load(trained)
    captured: List[Any] = []
    add = r.index.add

    def keep(entries: Any) -> Any:
        captured.extend(entries)
        return add(entries)

    r.index.add = keep  # type: ignore[method-assign]
    r.add(paths)
    return captured, r


def merge_times(paths: List[str], trained: Path, shard_counts: List[int], rounds: int = 3) -> List[Dict[str, Any]]:
    entries, r = _entries(paths, trained)

    def index_of(part: List[Any]) -> TwoStageIndex:
        idx = TwoStageIndex(BowIndex(r.encoder), RoIStore(r.index.store.words), GeometryStore())
        idx.add(part)
        return idx

    one = index_of(entries)
    queries = [r.prepare_query(p) for p in paths]
    c = r.config

    def run(index: Any) -> List[Any]:
        return [rank(q, index, r.nbits, c.rerank, K=c.K, top=c.N, verify=c.verify) for q in queries]

    def timed(index: Any) -> float:
        ts = []
        for _ in range(rounds):
            for q in queries:
                t = time.perf_counter()
                rank(q, index, r.nbits, c.rerank, K=c.K, top=c.N, verify=c.verify)
                ts.append(time.perf_counter() - t)
        return 1000 * statistics.median(ts)

    want = [[(h.id, h.score, h.inliers) for h in res.hits] for res in run(one)]
    base = timed(one)
    rows = []
    n = len(entries)
    for s in shard_counts:
        shards = ShardedIndex([index_of(entries[n * i // s : n * (i + 1) // s]) for i in range(s)])
        got = [[(h.id, h.score, h.inliers) for h in res.hits] for res in run(shards)]
        assert json.dumps(got) == json.dumps(want), f"{s} shards rank differently"
        ms = timed(shards)
        rows.append({"shards": s, "one_index_ms": base, "sharded_ms": ms, "overhead_ms": ms - base})
        print(f"{s} shards: {ms:.2f} ms per query (one index {base:.2f} ms)", file=sys.stderr)
    return rows


def bow_fanout(n: int, shard_counts: List[int], vocab: int = 100_000, words: int = 500, queries: int = 20) -> Any:
    """BoW search at scale, synthetic (the part of a query that grows with the collection):
    ``n`` images of ``words`` Zipf-distributed words; one inverted file against S shard files
    with the collection's statistics, searched in a thread pool and merged by
    :func:`~roiret.search.sharded.merge_bow_lists` (what ``ShardedIndex.search_bow`` runs).
    Top 100, median ms per query; each file's own search single-threaded."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(0)
    lengths = np.full(n, words)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    w = ((rng.zipf(1.1, size=int(offsets[-1])) - 1) % vocab).astype(np.int64)
    c = np.ones(len(w), np.float32)
    ids = np.arange(n, dtype=np.int64)

    def build(a: int, b: int) -> Any:
        f = InvertedFile(vocab)
        f.add(ids[a:b], offsets[a : b + 1] - offsets[a], w[offsets[a] : offsets[b]], c[offsets[a] : offsets[b]])
        return f

    qs = [((rng.zipf(1.1, size=words) - 1) % vocab).astype(np.int64) for _ in range(queries)]
    whole = build(0, n)
    rows = []
    base = statistics.median(_timed(lambda q: whole.search(q, None, 100, threads=1), qs))
    for s in shard_counts:
        files = [build(n * i // s, n * (i + 1) // s) for i in range(s)]
        df = sum(np.asarray(f.document_frequencies(), np.int64) for f in files)
        for f in files:
            f.set_collection_stats(n, df)
        pool = ThreadPoolExecutor(max_workers=s)

        one = functools.partial(_fanout_search, pool, files)

        for q in qs:
            assert np.array_equal(one(q)[0], whole.search(q, None, 100)[0])
        ms = statistics.median(_timed(one, qs))
        rows.append({"images": n, "shards": s, "one_file_ms": base, "sharded_ms": ms})
        print(f"BoW {n} images, {s} shards: {ms:.2f} ms (one file {base:.2f} ms)", file=sys.stderr)
        pool.shutdown()
    return rows


def served_times(folder: str, query_paths: List[str], actor_counts: List[int], rounds: int = 3) -> Any:
    """A sharded folder searched in this process (threads) and served by Ray actors
    (``distributed.serve``, 0 CPUs reserved each): ``rank`` per query at the default
    configuration, features extracted once; rankings checked identical first."""
    local = Retriever.load(folder, weights=WEIGHTS, progress=False)
    queries = [local.prepare_query(p) for p in query_paths]

    def run(r: Retriever) -> Any:
        return [[(h.id, h.score, h.inliers, h.name) for h in r.rank(q).hits] for q in queries]

    def timed(r: Retriever) -> float:
        ts = []
        for _ in range(rounds):
            for q in queries:
                t = time.perf_counter()
                r.rank(q)
                ts.append(1000 * (time.perf_counter() - t))
        return statistics.median(ts)

    want = run(local)
    rows = [{"where": f"one process, {len(local.index.shards)} shards (threads)", "ms": timed(local)}]
    for n in actor_counts:
        served = distributed.serve(folder, actors=n, num_cpus=0, weights=WEIGHTS, progress=False)
        try:
            assert json.dumps(run(served)) == json.dumps(want), "served rankings differ"
            rows.append({"where": f"{n} Ray actors", "ms": timed(served)})
        finally:
            distributed.release(served)
        print(rows[-1], file=sys.stderr)
    return rows


def _fanout_search(pool: Any, files: List[Any], q: np.ndarray) -> Any:
    parts = list(pool.map(lambda f: f.search_exact(q, None, 100, threads=1), files))
    return merge_bow_lists(parts, 100)


def _timed(fn: Any, qs: List[np.ndarray], rounds: int = 3) -> List[float]:
    ts = []
    for _ in range(rounds):
        for q in qs:
            t = time.perf_counter()
            fn(q)
            ts.append(1000 * (time.perf_counter() - t))
    return ts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default="../shared/datasets/ukbench-56/jpg")
    ap.add_argument("--merge-images", help="images for the merge timing (default: --images)")
    ap.add_argument("--shards", default="1,2,4,8")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-merge", action="store_true")
    ap.add_argument("--bow-images", type=int, default=0, help="also time the synthetic BoW fan-out at this size")
    ap.add_argument("--bow-words", type=int, default=500, help="distinct words per synthetic image")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the throughput configurations")
    ap.add_argument("--served", help="a sharded folder: time searching it locally and served by Ray actors")
    ap.add_argument("--served-queries", type=int, default=20, help="its first images used as queries")
    ap.add_argument("--json")
    args = ap.parse_args()
    import ray

    paths = _paths(args.images)
    merge_paths = _paths(args.merge_images) if args.merge_images else paths
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    out: Dict[str, Any] = {"cpu": cpu, "simd": roiret.simd_level(), "images": len(paths), "ray": ray.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.skip_throughput and args.skip_merge:
            paths = []
        r = Retriever(weights=WEIGHTS, progress=False)
        if paths:
            t = time.perf_counter()
            r.train(sorted(set(paths) | set(merge_paths)))
            out["train_seconds"] = time.perf_counter() - t
            r.save(work / "trained")
        if not args.skip_throughput:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            out["load_before"] = os.getloadavg()
            out["throughput"] = throughput(paths, work / "trained", work, args.rounds)
            out["load_after"] = os.getloadavg()
            ray.shutdown()
        if not args.skip_merge:
            out["merge"] = merge_times(merge_paths, work / "trained", [int(s) for s in args.shards.split(",")])
            out["merge_images"] = len(merge_paths)
    if args.served:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        from roiret.search.sharded import read_sharded_manifest

        _, entries = read_sharded_manifest(args.served)
        first = Retriever.load(Path(args.served) / entries[0].name, weights=WEIGHTS, progress=False)
        qpaths = first.store.names[: args.served_queries]
        out["served"] = served_times(args.served, qpaths, [1, 2, len(entries)])
        ray.shutdown()
    if args.bow_images:
        shards = [int(s) for s in args.shards.split(",")]
        out["bow_fanout"] = bow_fanout(args.bow_images, shards, words=args.bow_words)
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
