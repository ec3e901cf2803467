"""Pickle-free, atomic, versioned array files (``.npz`` + a JSON header).

A file holds named NumPy arrays plus ``__header__``: UTF-8 JSON with ``format`` (a kind
name), ``version`` (an integer), the caller's fields, and ``sha256`` of every array's bytes.
Files are written to a temporary name in the target folder, flushed, fsync'ed and renamed
over the target (``os.replace``), so a reader never sees a half-written file; they are read
with ``allow_pickle=False`` and every checksum is verified before anything is returned.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np

from ..errors import IndexFormatError
from . import PathLike
from .folder import atomic_write

_HEADER = "__header__"


def sha256_of(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).view(np.uint8).reshape(-1).data).hexdigest()


def open_npz(path: PathLike) -> "np.lib.npyio.NpzFile":
    """``np.load(path, allow_pickle=False)`` of an ``.npz`` archive (to use as a context
    manager); ValueError for a file NumPy reads as something else (a bare ``.npy`` array)."""
    z = np.load(path, allow_pickle=False)
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"a {type(z).__name__}, not an .npz archive")
    return z


def save_arrays(path: PathLike, fmt: str, version: int, header: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> None:
    """Write ``arrays`` and ``header`` to ``path`` atomically (see the module docstring)."""
    hdr = dict(header)
    hdr["format"] = fmt
    hdr["version"] = int(version)
    hdr["arrays"] = {
        k: {"dtype": str(v.dtype), "shape": list(v.shape), "sha256": sha256_of(v)} for k, v in arrays.items()
    }
    blob = np.frombuffer(json.dumps(hdr, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    payload = {_HEADER: blob, **{k: np.ascontiguousarray(v) for k, v in arrays.items()}}

    def write(f: Any) -> None:
        np.savez(f, **payload)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle

    atomic_write(path, write)


def load_arrays(path: PathLike, fmt: str, max_version: int) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """Read a file written by :func:`save_arrays`; verify kind, version and checksums.

    Raises
    ------
    FileNotFoundError
        No such file.
    roiret.errors.IndexFormatError
        Not such a file, of another kind, of a newer version, truncated or corrupt.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open_npz(path) as z:
            if _HEADER not in z.files:
                raise IndexFormatError(f"{path}: not a roiret {fmt} file (no header)")
            hdr = json.loads(bytes(z[_HEADER]).decode("utf-8"))
            if not isinstance(hdr, dict) or hdr.get("format") != fmt:
                got = hdr.get("format") if isinstance(hdr, dict) else None
                raise IndexFormatError(f"{path}: expected a {fmt!r} file, found {got!r}")
            ver = hdr.get("version")
            if not isinstance(ver, int) or ver < 1 or ver > max_version:
                raise IndexFormatError(
                    f"{path}: {fmt} format version {ver!r}; this roiret reads versions 1 to "
                    f"{max_version} (upgrade roiret to read newer files)"
                )
            specs = hdr.get("arrays", {})
            arrays = {}
            for name, spec in specs.items():
                if name not in z.files:
                    raise IndexFormatError(f"{path}: array {name!r} is missing")
                a = z[name]
                if str(a.dtype) != spec["dtype"] or list(a.shape) != spec["shape"]:
                    raise IndexFormatError(
                        f"{path}: array {name!r} is {a.dtype} {a.shape}, header says "
                        f"{spec['dtype']} {tuple(spec['shape'])}"
                    )
                if sha256_of(a) != spec["sha256"]:
                    raise IndexFormatError(f"{path}: array {name!r} is corrupt (checksum mismatch)")
                arrays[name] = a
    except IndexFormatError:
        raise
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError, UnicodeDecodeError) as e:
        if isinstance(e, OSError) and not isinstance(e, zipfile.BadZipFile) and e.errno is not None:
            raise
        raise IndexFormatError(f"{path}: not a readable {fmt} file ({type(e).__name__}: {e})") from None
    return hdr, arrays


def save_npy(path: PathLike, arr: np.ndarray) -> None:
    """Write one array as ``.npy`` (no pickle), flushed and fsync'ed."""
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
