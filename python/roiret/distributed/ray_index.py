"""Indexing on Ray: the driver trains once, workers build shards, the manifest comes last.

1. **Train once** (driver): the vocabulary (and whitening, projection) is learned on a
   seeded sample exactly as :meth:`Retriever.train <roiret.Retriever.train>` does, and saved
   as an ordinary, empty index folder ``OUT/trained``. A re-run reuses it, so shards built
   before an interruption stay valid.
2. **Plan**: the ordered image list is cut into ``shards`` consecutive runs; image ``i``
   (its position in the list) gets id ``i`` — the ids the single-process path gives — so a
   sharded index ranks id for id like one process (:mod:`roiret.search.sharded`).
3. **Build** (workers): one Ray task per shard, its CNN built once on the worker, reading
   the images itself (paths travel, pixels do not), shipped the trained state through the
   object store; it indexes its run with :meth:`Retriever.add <roiret.Retriever.add>`
   (``on_error="skip"``: unreadable images are skipped and listed, as in one process) and
   saves ``OUT/shard-NNNNN`` atomically (``failures.json`` first, the shard's manifest
   last). A task whose worker dies is retried by Ray (``max_retries``); a shard folder
   without a complete, verified manifest is never listed.
4. **Resume**: a shard is kept when its manifest and files verify, its vocabulary is the
   trained one and it holds exactly its planned images (ids, paths) less its listed
   failures; the others are built again.
5. **Manifest**: ``OUT/manifest.json`` (format ``roiret-sharded-index``) lists every shard
   with its size and manifest checksum, written atomically once all of them are complete;
   shard folders it does not list (versions an earlier ``Retriever.save`` wrote, see
   :mod:`roiret.search.sharded`) are removed after it.

Workers write to ``OUT`` directly: on a cluster, ``OUT`` is a path every node sees (NFS,
a cluster file system) — images likewise. Each task asks for ``num_cpus`` cores and, when
the cluster has GPUs and ``device`` is ``"auto"`` or CUDA, one GPU.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import IndexFormatError
from ..io import PathLike
from ..io.folder import MANIFEST, atomic_write
from ..io.images import SkippedImageWarning
from ..search import persist
from ..search.retriever import Retriever
from ..search.sharded import (
    ShardEntry,
    default_shard_size,
    shard_entry,
    shard_name,
    vocabulary_sha,
    write_sharded_manifest,
)

__all__ = ["IndexReport", "index", "plan_shards"]

TRAINED = "trained"
FAILURES = "failures.json"

#: a failure: (image id = position in the list, name, reason)
Failure = Tuple[int, str, str]


@dataclass
class IndexReport:
    """What :func:`index` did: ``images`` listed, ``indexed``, shard names ``built`` and
    ``kept`` (complete from an earlier run), ``failures`` (id, name, reason) of the skipped
    images, and seconds spent training and in total."""

    folder: Path
    images: int
    indexed: int
    shards: int
    built: List[str] = field(default_factory=list)
    kept: List[str] = field(default_factory=list)
    failures: List[Failure] = field(default_factory=list)
    train_seconds: float = 0.0
    seconds: float = 0.0


def plan_shards(n: int, shards: int) -> List[Tuple[int, int]]:
    """``shards`` consecutive runs ``[start, stop)`` of ``n`` images (sizes differ by at most 1)."""
    if int(shards) < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    s = min(int(shards), max(1, int(n)))
    return [(n * i // s, n * (i + 1) // s) for i in range(s)]


# -- the worker side -------------------------------------------------------------------------
def _state_files(folder: Path) -> Dict[str, bytes]:
    """The files of a (small, empty) index folder, to ship through the object store."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}


def _load_state(state: Dict[str, bytes], options: Dict[str, Any]) -> Retriever:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="roiret-state-") as tmp:
        for name, data in state.items():
            (Path(tmp) / name).write_bytes(data)
        return Retriever.load(
            tmp,
            mmap=False,
            device=options["device"],
            weights=options["weights"],
            progress=False,
            batch_size=options["batch_size"],
            threads=options["threads"],
        )


def build_shard(
    state: Dict[str, bytes],
    folder: str,
    name: str,
    paths: List[str],
    ids: List[int],
    options: Dict[str, Any],
) -> Dict[str, Any]:
    """One Ray task: index ``paths`` with ``ids`` into the shard folder ``folder/name``;
    returns its manifest entry and failures. (A plain function: ``ray.remote`` wraps it.)"""
    r = _load_state(state, options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImageWarning)  # listed by the driver
        r.add(paths, ids=ids, on_error="skip")
    fault = options.get("fault")
    if fault is not None and fault[0] == name and not os.path.exists(fault[1]):
        Path(fault[1]).touch()  # testing hook: this worker dies once, mid-job, before saving
        os.kill(os.getpid(), 9)
    failures = [(int(ids[i]), n, msg) for i, n, msg in r.last_failures]
    target = Path(folder) / name
    target.mkdir(parents=True, exist_ok=True)
    text = json.dumps([list(f) for f in failures]).encode("utf-8")
    atomic_write(target / FAILURES, lambda f: f.write(text))
    r.save(target)
    return {"entry": shard_entry(folder, name).to_dict(), "failures": failures, "timings": dict(r.add_timings)}


# -- resume ----------------------------------------------------------------------------------
def _complete_shard(
    out: Path, name: str, paths: Sequence[str], ids: Sequence[int], vocab_sha: Optional[str]
) -> Optional[Tuple[ShardEntry, List[Failure]]]:
    """The entry and failures of a shard folder that a previous run completed with this
    vocabulary and these images, else None (to be built again)."""
    folder = out / name
    if not (folder / MANIFEST).is_file() or vocab_sha is None or vocabulary_sha(folder) != vocab_sha:
        return None
    try:
        m = persist.read_manifest(folder, verify=True)
        stored = np.load(m.paths["rois.ids"], allow_pickle=False).astype(np.int64)
        names = [str(x) for x in np.load(m.paths["rois.names"], allow_pickle=False)]
        failures = [(int(i), str(n), str(msg)) for i, n, msg in json.loads((folder / FAILURES).read_text("utf-8"))]
    except (IndexFormatError, OSError, ValueError, TypeError, KeyError):
        return None
    planned = dict(zip((int(i) for i in ids), paths))
    seen = [int(i) for i in stored] + [f[0] for f in failures]
    if sorted(seen) != sorted(planned) or any(planned[int(i)] != n for i, n in zip(stored, names)):
        return None
    return shard_entry(out, name, verify=False), failures  # its files verified just above


# -- the driver ------------------------------------------------------------------------------
def _trained(out: Path, images: Sequence[str], retriever: Optional[Retriever], train_max: int, **kw: Any) -> Retriever:
    """The trained, empty retriever: ``retriever``, else the one a previous run saved in
    ``OUT/trained`` (its configuration must match), else trained now on a seeded sample."""
    folder = out / TRAINED
    if retriever is None and (folder / MANIFEST).is_file():
        old = Retriever.load(folder, weights=kw.get("weights", "auto"), progress=kw.get("progress"))
        wanted = Retriever(**kw).config
        if old.config.replace(vocab_size=wanted.vocab_size) != wanted:
            raise ValueError(
                f"{out}: holds a job with another configuration ({folder}); index into a new folder or remove it"
            )
        return old
    if retriever is None:
        retriever = Retriever(**kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SkippedImageWarning)
            retriever.train(list(images), max_images=train_max)
    if len(retriever):
        raise ValueError("retriever: pass a trained retriever holding no images (its state is shipped to the workers)")
    retriever.save(folder)
    return retriever


def _connect(address: Optional[str], num_cpus: Optional[int]) -> bool:
    """Connect to (``address``) or start a Ray cluster unless already connected; True when
    this call did (and :func:`index` shuts it down at the end)."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: Dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address is None:
        kwargs["num_cpus"] = num_cpus
    ray.init(address=address, **kwargs)
    return True


def _run_tasks(
    todo: List[int],
    submit: Any,
    names: List[str],
    workers: Optional[int],
    progress: bool,
) -> Dict[int, Dict[str, Any]]:
    """Submit the shards' tasks (at most ``workers`` at a time) and gather their results;
    a shard that fails after its retries stops the job (completed shards stay for a re-run)."""
    import ray

    queue = list(todo)
    running: Dict[Any, int] = {}
    done: Dict[int, Dict[str, Any]] = {}
    while queue or running:
        while queue and (workers is None or len(running) < workers):
            i = queue.pop(0)
            running[submit(i)] = i
        ready, _ = ray.wait(list(running), num_returns=1)
        for ref in ready:
            i = running.pop(ref)
            try:
                done[i] = ray.get(ref)
            except Exception as e:
                for other in running:
                    ray.cancel(other)
                raise RuntimeError(
                    f"shard {names[i]} failed after its retries ({type(e).__name__}: {e}); "
                    "completed shards are kept: run the same command again to resume"
                ) from None
            if progress:
                print(f"roiret: {names[i]} done ({len(done)}/{len(todo)})", file=sys.stderr)
    return done


def _resources(device: str, num_gpus: Optional[float]) -> Tuple[str, float]:
    """(device for the workers' CNN, GPUs per task): a GPU each when the cluster has GPUs
    and ``device`` is ``"auto"`` or CUDA, else the CPU."""
    import ray

    have = float(ray.cluster_resources().get("GPU", 0.0))
    if device == "auto":
        device = "cuda" if have > 0 else "cpu"
    gpus = (1.0 if device.startswith("cuda") and have > 0 else 0.0) if num_gpus is None else float(num_gpus)
    return device, gpus


def index(
    images: Sequence[PathLike],
    output: PathLike,
    *,
    shards: Optional[int] = None,
    address: Optional[str] = None,
    workers: Optional[int] = None,
    num_cpus: int = 1,
    num_gpus: Optional[float] = None,
    retriever: Optional[Retriever] = None,
    train_max: int = 5000,
    device: str = "auto",
    weights: str = "auto",
    batch_size: int = 16,
    max_retries: int = 3,
    progress: Optional[bool] = None,
    _fault: Optional[Tuple[str, str]] = None,
    **params: Any,
) -> IndexReport:
    """Index ``images`` (file paths, in the order that gives their ids) into the sharded
    folder ``output`` on Ray (module docstring). ``shards``: how many (default: one per
    task slot of the cluster, at most one per image); ``address``: the cluster (``"auto"``,
    ``"ray://host:10001"``; default: the current connection or a new local one);
    ``workers``: shard tasks running at once (default: as many as the cluster fits, each
    asking ``num_cpus`` cores and ``num_gpus`` GPUs); ``retriever``: a trained, empty
    retriever to use instead of training one from ``params``
    (:class:`~roiret.RetrieverConfig` fields) on ``train_max`` sampled images. Running the
    same call again resumes: complete shards are kept."""
    import ray

    t0 = time.perf_counter()
    paths = [os.path.abspath(str(p)) for p in images]  # the names the shards store (Retriever.add)
    if not paths:
        raise ValueError("index: no images")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    show = bool(progress) if progress is not None else sys.stderr.isatty()
    started = _connect(address, None if workers is None else workers * num_cpus)
    try:
        _trained(out, paths, retriever, train_max, weights=weights, progress=progress, **params)
        t1 = time.perf_counter()
        device, gpus = _resources(device, num_gpus)
        slots = max(1, int(ray.cluster_resources().get("CPU", 1) // max(1, num_cpus)))
        plan = plan_shards(len(paths), shards or (workers or slots))
        names = [shard_name(i) for i in range(len(plan))]
        vocab_sha = vocabulary_sha(out / TRAINED)
        kept = {
            i: _complete_shard(out, names[i], paths[a:b], list(range(a, b)), vocab_sha) for i, (a, b) in enumerate(plan)
        }
        todo = [i for i in range(len(plan)) if kept[i] is None]
        options = {"device": device, "weights": weights, "batch_size": batch_size, "threads": num_cpus, "fault": _fault}
        state = ray.put(_state_files(out / TRAINED))
        task = ray.remote(build_shard).options(num_cpus=num_cpus, num_gpus=gpus, max_retries=max_retries)

        def submit(i: int) -> Any:
            a, b = plan[i]
            return task.remote(state, str(out), names[i], paths[a:b], list(range(a, b)), options)

        built = _run_tasks(todo, submit, names, workers, show)
    finally:
        if started:
            ray.shutdown()
    return _finish(out, names, plan, kept, built, len(paths), t0, t1)


def _finish(
    out: Path,
    names: List[str],
    plan: List[Tuple[int, int]],
    kept: Dict[int, Optional[Tuple[ShardEntry, List[Failure]]]],
    built: Dict[int, Dict[str, Any]],
    n: int,
    t0: float,
    t1: float,
) -> IndexReport:
    """Verify the shards the workers built (the kept ones were verified when planning) and
    write the top-level manifest, last."""
    failures: List[Failure] = []
    entries: List[ShardEntry] = []
    for i, name in enumerate(names):
        k = kept[i]
        failures += k[1] if k is not None else [(int(a), str(b), str(c)) for a, b, c in built[i]["failures"]]
        entries.append(k[0] if k is not None else shard_entry(out, name))  # built: checksums verified here
    largest = max(b - a for a, b in plan)
    write_sharded_manifest(
        out,
        entries,
        shard_size=default_shard_size(largest, 1),
        extra={"failures": [{"id": i, "name": nm, "reason": msg} for i, nm, msg in failures]},
    )
    return IndexReport(
        folder=out,
        images=n,
        indexed=sum(e.images for e in entries),
        shards=len(entries),
        built=[names[i] for i in sorted(built)],
        kept=[names[i] for i in sorted(kept) if kept[i] is not None],
        failures=sorted(failures),
        train_seconds=t1 - t0,
        seconds=time.perf_counter() - t0,
    )
