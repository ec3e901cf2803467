"""What the ``roiret`` commands that write an index share: where it may be written (an
existing index is replaced only when asked, and then whole), adding images with a line of
progress every tenth when nobody watches a progress bar, and the summary line (images,
time, images/s, size on disk)."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple

import numpy as np

from ..io.folder import MANIFEST, fsync_path

if TYPE_CHECKING:  # pragma: no cover
    from ..search.retriever import Retriever

__all__ = [
    "LOG_STEPS",
    "add_in_steps",
    "check_output",
    "folder_bytes",
    "holds_index",
    "human_bytes",
    "log_progress",
    "plural",
    "staging_folder",
    "summary",
    "swap_in",
]

#: without a terminal, adding images prints a line after each of this many equal parts
LOG_STEPS = 10
#: what an unfinished ``--engine ray`` build holds (it resumes from them)
_RAY_PARTS = ("trained", "shard-")


def plural(n: int, one: str, many: str) -> str:
    """``"1 image"``, ``"2 images"``."""
    return f"{n} {one if n == 1 else many}"


def human_bytes(n: int) -> str:
    """Bytes as a short number with a unit (``"840 bytes"``, ``"12.3 kB"``, ``"65.3 MB"``)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def folder_bytes(folder: Path) -> int:
    """The bytes of every file under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def holds_index(folder: Path) -> bool:
    """Whether ``folder`` holds a saved index (a manifest of one of roiret's formats)."""
    try:
        m = json.loads((folder / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(m, dict) and str(m.get("format", "")).startswith("roiret")


def check_output(out: Path, *, force: bool, engine: str = "local") -> bool:
    """Refuse (ValueError) an output folder ``roiret index`` must not write into: an existing
    index unless ``force``, or a folder with other files in it (an unfinished ``--engine
    ray`` build of the same folder resumes). Returns whether an index is there to replace.
    Called before any work."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder: choose another output")
    if holds_index(out):
        if not force:
            raise ValueError(f"{out} already holds an index: pass --force to replace it, or choose another folder")
        return True
    entries = [p.name for p in out.iterdir()]
    if engine == "ray" and entries and all(n.startswith(_RAY_PARTS) or n.startswith(".") for n in entries):
        return False  # an unfinished build: the ray engine resumes it
    if entries:
        raise ValueError(
            f"{out} is not empty and holds no roiret index ({plural(len(entries), 'entry', 'entries')}, "
            f"e.g. {sorted(entries)[0]!r}): "
            "choose a new or empty folder (--force replaces an existing index only)"
        )
    return False


def staging_folder(out: Path) -> Path:
    """Where a replacement index is built before :func:`swap_in` puts it at ``out``: a
    hidden sibling (same file system, so the swap is two renames)."""
    return out.parent / f".{out.name}.roiret-new"


def swap_in(new: Path, out: Path) -> None:
    """Put the finished index folder ``new`` at ``out``, replacing the index there whole:
    ``out`` is renamed aside, ``new`` renamed to ``out``, then the old one removed — at no
    moment does ``out`` hold files of both (a crash between the renames leaves the old index
    at ``.<name>.roiret-old-<pid>`` beside it)."""
    if out.exists() and any(out.iterdir()):
        old = out.parent / f".{out.name}.roiret-old-{os.getpid()}"
        os.rename(out, old)
        os.rename(new, out)
        fsync_path(out.parent, directory=True)
        shutil.rmtree(old)
    else:
        os.replace(new, out)
        fsync_path(out.parent, directory=True)


def add_in_steps(
    r: "Retriever", images: Sequence[str], *, on_error: str, log: bool, verb: str = "indexing"
) -> Tuple[np.ndarray, List[Tuple[int, str, str]]]:
    """``r.add(images)`` — with ``log``, in :data:`LOG_STEPS` parts of whole batches (the
    index is the same: batches are what ``add`` makes visible at once), a line on stderr
    after each (images done, seconds, images/s). Returns the ids added and the failures
    (position in ``images``, name, reason)."""
    if not log:
        ids = r.add(images, on_error=on_error)
        return ids, list(r.last_failures)
    step = max(1, math.ceil(len(images) / LOG_STEPS / r.batch_size)) * r.batch_size
    added: List[np.ndarray] = []
    failures: List[Tuple[int, str, str]] = []
    t0 = time.perf_counter()
    for start in range(0, len(images), step):
        added.append(r.add(images[start : start + step], on_error=on_error))
        failures += [(start + i, name, why) for i, name, why in r.last_failures]
        done, dt = min(start + step, len(images)), time.perf_counter() - t0
        print(
            f"{verb}: {done}/{len(images)} images ({100 * done / len(images):.0f} %), {dt:.1f} s, "
            f"{done / max(dt, 1e-9):.2f} images/s",
            file=sys.stderr,
            flush=True,
        )
    return (np.concatenate(added) if added else np.zeros(0, np.int64)), failures


def summary(done: str, n: int, where: Path, seconds: float, total: int, failures: Sequence[Any] = ()) -> None:
    """``<done> <where> in T s (X images/s): <total> images, <size> on disk`` (``done``: e.g.
    ``"indexed 9 images into"``; ``n`` images for the rate), then the skipped images one a
    line (name: reason), on stderr."""
    rate = f" ({n / seconds:.2f} images/s)" if n and seconds > 0 else ""
    print(
        f"{done} {where} in {seconds:.1f} s{rate}: {total} images, {human_bytes(folder_bytes(where))} on disk"
        + (f"; {len(failures)} skipped:" if failures else ""),
        file=sys.stderr,
    )
    for _, name, msg in failures:
        print(f"  {name}: {msg}", file=sys.stderr)


def log_progress(progress: Optional[bool]) -> bool:
    """Whether to print progress lines: no bars asked for or against (``None``) and stderr
    is not a terminal."""
    return progress is None and not sys.stderr.isatty()
