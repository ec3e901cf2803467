"""Many shards in one search process (issue 21): open file descriptors, load and search time.

Run (script)::

    python benchmarks/bench_many_shards.py [--shards 1000] [--limit 1024] [--json out/many_shards.json]

A tiny retriever (AlexNet, 64 words) is trained on the embedded demo collection; one image
is encoded once and copied under new ids into ``--shards`` shards of one image each
(``ShardedIndex.add`` with ``shard_size=1``, saved with ``Retriever.save``; fsync is
skipped while building: not what is measured). Then a fresh process whose soft limit of
open files is ``--limit`` (1 024: the usual default) loads the folder with
``Retriever.load`` and searches it once, reporting the seconds of each, the shards and
images loaded and its open descriptors before and after loading; and again with the RoI
and geometry arrays opened by ``np.load(mmap_mode="r")`` (how roiret mapped them before:
one descriptor per array, ~13 per shard), which fails past ``limit / 13`` shards.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List

from roiret.apps.demo import make_collection
from roiret.search.retriever import Retriever
from roiret.search.sharded import ShardedIndex, shard_entry, shard_name, write_sharded_manifest

PARAMS = dict(backbone="alexnet", vocab_size=64, K=5, max_keypoints=300, progress=False, batch_size=2)

LOAD = """
import json, os, resource, sys, time, warnings
import numpy as np
FOLDER, LIMIT, OLD = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "old"
resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
warnings.simplefilter("ignore")
from roiret.apps.demo import make_collection
from roiret.search import persist
from roiret.search.retriever import Retriever
if OLD:  # before issue 21: np.load(mmap_mode="r") keeps a descriptor per mapped array
    persist._read_npy = lambda p, mmap: np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
photo = make_collection(scenes_per_object=1, distractors=1, seed=1).database[6]
fds = lambda: len(os.listdir("/proc/self/fd"))
before = fds()
t0 = time.perf_counter()
try:
    r = Retriever.load(FOLDER, weights="auto", progress=False)
except OSError as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"[:200], "fds_before": before}))
    sys.exit(0)
t1 = time.perf_counter()
hits = r.search(photo, top=10).hits
t2 = time.perf_counter()
print(json.dumps({"shards": len(r.index.shards), "images": len(r), "load_s": round(t1 - t0, 2),
                  "search_s": round(t2 - t1, 2), "fds_before": before, "fds_after": fds(),
                  "best": hits[0].name}))
"""


def build(folder: Path, shards: int) -> None:
    """``folder/index``: ``shards`` shards of one image each, one encoded image under
    ``shards`` ids (``folder/one``: the first of them as a sharded folder)."""
    photos = make_collection(scenes_per_object=1, distractors=1, seed=1).database
    r = Retriever(weights="auto", **PARAMS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r.train(photos[:6])
    seen: List[Any] = []
    add = r.index.add
    r.index.add = lambda entries: (seen.extend(entries), add(entries))[1]  # type: ignore[method-assign]
    r.add(photos[6:7], ids=[0])
    r.save(folder / "one" / shard_name(0))
    write_sharded_manifest(folder / "one", [shard_entry(folder / "one", shard_name(0))], shard_size=1)
    s = Retriever.load(folder / "one", weights="auto", progress=False)
    assert isinstance(s.index, ShardedIndex)
    s.index.add([dataclasses.replace(seen[0], id=k, name=f"copy-{k}") for k in range(1, shards)])  # a shard each
    fsync = os.fsync
    os.fsync = lambda fd: None
    try:
        s.save(folder / "index")
    finally:
        os.fsync = fsync


def load(folder: Path, limit: int, old: bool) -> Dict[str, Any]:
    how = "old" if old else "now"
    out = subprocess.run(
        [sys.executable, "-c", LOAD, str(folder), str(limit), how], capture_output=True, text=True, check=True
    )
    result: Dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=int, default=1000)
    ap.add_argument("--limit", type=int, default=1024, help="soft RLIMIT_NOFILE of the loading process")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="roiret-many-") as tmp:
        build(Path(tmp), args.shards)
        out = {
            "shards": args.shards,
            "limit": args.limit,
            "now": load(Path(tmp) / "index", args.limit, old=False),
            "np.load mmap (before)": load(Path(tmp) / "index", args.limit, old=True),
        }
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
