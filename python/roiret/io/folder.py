"""One persistence format for every saved index: a folder with ``manifest.json`` and data files.

The manifest is JSON: ``format`` (the kind of index), ``version`` (an integer), the
caller's fields, and ``files``: role → ``{"name", "bytes", "sha256"}`` of every data file.
The guarantees, the same for every kind of index (:class:`~roiret.Retriever`,
:class:`~roiret.bow.BowIndex`, any future one):

* **atomic save** — data files get fresh names (``<stem>-<12 hex>.<ext>``) and are
  fsync'ed; the folder is fsync'ed so their names are durable; the manifest is written to
  a temporary file, fsync'ed and renamed over the old one (``os.replace``), and the folder
  fsync'ed again. A crash or SIGKILL at any moment leaves the previous index loadable.
* **cleanup** — after the new manifest is in place, the previous save's files and what
  interrupted saves left behind (names of the data-file pattern, temporaries) are removed;
  on an error during save, the files written so far are removed and the old index stays.
* **nested indexes** — a kind of index made of others (the shards of
  :mod:`roiret.search.sharded`) writes each changed one into a fresh sub-folder
  (:meth:`IndexWriter.subfolder`, ``<stem>-<12 hex>``), never into one the current
  manifest lists, and lists the unchanged ones (:meth:`IndexWriter.keep`): its manifest,
  replaced last, is the single commit point; sub-folders of its pattern that no manifest
  lists (earlier versions, interrupted saves) are removed after the commit.
* **one file mode** — every file of a save (manifest and data files) gets the permissions
  ``open()`` gives a new file, 0o666 less the umask, whatever wrote it
  (:func:`new_file_mode`): who can read one file of an index can read all of them.
* **locking** — saves to one folder are serialised across threads and processes (an
  exclusive ``flock`` on the folder, released if the process dies).
* **verified load** — kind, version, file names (no path components, no symbolic links:
  nothing listed may lead outside the folder), sizes and SHA-256 are checked before any
  data file is parsed; every failure is an
  :class:`~roiret.errors.IndexFormatError` naming the file (a missing folder is a
  ``FileNotFoundError``). :meth:`Manifest.parsing` maps what a parser raises on a damaged
  file to the same error.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Dict, Iterable, List, Literal, Optional, Sequence, Type

from ..errors import IndexFormatError
from . import PathLike

__all__ = [
    "IndexFolder",
    "IndexWriter",
    "Manifest",
    "as_format_error",
    "atomic_write",
    "fsync_path",
    "new_file_mode",
    "own_entry",
    "remove_files",
    "remove_folders",
    "sha256_file",
]


MANIFEST = "manifest.json"

#: names of data files and of their temporaries: what an interrupted save left behind
#: matches this and is removed by the next successful save
_DATA_NAME = re.compile(
    r"^\.?[a-z][a-z_]*(-[a-z_]+)?-[0-9a-f]{12}\.(npz|bin|npy)"
    r"(\.tmp-\d+-\d+|\.tmp|\.[A-Za-z0-9_]+\.tmp)?$"
)
_MANIFEST_TMP = re.compile(r"^\.manifest\.json\.[A-Za-z0-9_]+\.tmp$")
_STEM = re.compile(r"^[a-z][a-z_]*(-[a-z_]+)?$")


def sha256_file(path: PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def fsync_path(path: PathLike, directory: bool = False) -> None:
    """fsync a file (or, with ``directory=True``, a folder: its entries become durable)."""
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory
        if not directory:
            raise
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[Any], None]) -> None:
    """Call ``write(binary_file)`` on a temporary file next to ``path``, fsync it and rename it
    over ``path``. On any error the temporary file is removed and ``path`` is untouched. The
    file gets the permissions ``open()`` gives a new file (0o666 less the umask)."""
    path = Path(path)
    tmp = str(path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_files(path.parent, [os.path.basename(tmp)])
        raise


def new_file_mode() -> int:
    """The permission bits ``open()`` gives a new file: 0o666 less the process's umask."""
    return 0o666 & ~_umask()


def _umask() -> int:
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # no /proc: read it by setting it (briefly stricter, never looser)
    os.umask(mask)
    return mask


def remove_files(folder: PathLike, names: Iterable[str]) -> None:
    """Delete ``folder/name`` for each name; names already gone are fine."""
    for name in names:
        try:
            os.unlink(Path(folder) / name)
        except FileNotFoundError:
            pass


def own_entry(folder: PathLike, name: str, what: str, *, directory: bool = False) -> os.stat_result:
    """``lstat`` of ``folder/name``, a file (or, with ``directory``, a folder) of an index
    folder: IndexFormatError naming it when it is a symbolic link (whatever it points to,
    inside or outside) or not a regular file / a folder. An index folder holds its own
    files: nothing it lists may lead elsewhere."""
    path = Path(folder) / name
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise IndexFormatError(
            f"{path}: {what} is a symbolic link (to {os.readlink(path)!r}); an index folder's files "
            "and folders must be its own"
        )
    if not (stat.S_ISDIR if directory else stat.S_ISREG)(st.st_mode):
        raise IndexFormatError(f"{path}: {what} is not a {'folder' if directory else 'regular file'}")
    return st


def remove_folders(folder: PathLike, names: Iterable[str]) -> None:
    """Delete the sub-folders ``folder/name`` with their contents (a symbolic link: the link
    alone); names already gone are fine."""
    for name in names:
        path = Path(folder) / name
        try:
            if path.is_symlink():
                os.unlink(path)
            else:
                shutil.rmtree(path)
        except FileNotFoundError:  # gone already (what is left of it goes on the next save)
            pass


class as_format_error:
    """Context manager: what parsing a damaged file raises becomes an IndexFormatError naming
    it (but not ``OSError`` with an errno — a real I/O failure —, ``MemoryError``,
    ``KeyboardInterrupt`` or an IndexFormatError that already names a file)."""

    def __init__(self, path: PathLike, what: str = "corrupt or not the expected kind of file"):
        self.path, self.what = path, what

    def __enter__(self) -> "as_format_error":
        return self

    def __exit__(
        self, typ: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]
    ) -> Literal[False]:
        if e is None or isinstance(e, (IndexFormatError, MemoryError)) or not isinstance(e, Exception):
            return False
        if isinstance(e, OSError) and e.errno is not None:
            return False
        msg = str(e)
        if msg.startswith(str(self.path)):  # already names the file
            raise IndexFormatError(msg) from None
        raise IndexFormatError(f"{self.path}: {self.what} ({type(e).__name__}: {msg})") from None


class FolderLock:
    """Exclusive advisory lock on a folder (``flock`` on its descriptor; released when the
    process dies). A no-op where ``fcntl`` does not exist or the file system has no flock."""

    def __init__(self, folder: PathLike):
        self.folder, self.fd = Path(folder), None  # type: Path, Optional[int]

    def __enter__(self) -> "FolderLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        self.fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError:  # a file system without flock: go on unlocked
            os.close(self.fd)
            self.fd = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None


@dataclass
class Manifest:
    """A verified manifest: ``fields`` (everything but ``files``), its ``version``, and the
    path of every data file by role (each one checked: present, size, SHA-256)."""

    folder: Path
    version: int
    fields: Dict[str, Any]
    paths: Dict[str, Path]

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST

    def require(self, roles: Iterable[str]) -> None:
        """IndexFormatError unless every role in ``roles`` has a file."""
        for role in roles:
            if role not in self.paths:
                raise IndexFormatError(f"{self.path}: no {role} file listed")

    def parsing(self, role: str, what: str = "corrupt or not the expected kind of file") -> as_format_error:
        """``with manifest.parsing(role): parse(manifest.paths[role])`` — damage in the file
        becomes an IndexFormatError naming it."""
        return as_format_error(self.paths[role], what)

    def invalid(self, message: str) -> IndexFormatError:
        """An IndexFormatError about the manifest itself."""
        return IndexFormatError(f"{self.path}: {message}")


class IndexWriter:
    """Writes one save of an :class:`IndexFolder` (see :meth:`IndexFolder.save`)."""

    def __init__(self, folder: Path, fmt: str, version: int):
        self.folder, self.fmt, self.version = folder, fmt, version
        self.tag = uuid.uuid4().hex[:12]
        self.files: Dict[str, str] = {}
        self.written: List[str] = []
        self.mode = new_file_mode()
        #: sub-folders the new manifest lists (kept or new), and the new ones
        self.folders: List[str] = []
        self.new_folders: List[str] = []

    def put(self, role: str, stem: str, ext: str, write: Callable[[Path], None]) -> Path:
        """Write the data file of ``role`` with ``write(path)`` under a fresh name
        ``<stem>-<tag>.<ext>``, give it the mode of a new file (:func:`new_file_mode`) and
        fsync it (on disk before the manifest names it)."""
        if not _STEM.match(stem) or ext not in ("npz", "bin", "npy"):
            raise ValueError(f"data file stem {stem!r} / extension {ext!r} outside the folder's name pattern")
        name = f"{stem}-{self.tag}.{ext}"
        self.written.append(name)
        path = self.folder / name
        write(path)
        os.chmod(path, self.mode)  # one mode for every file, whatever the writer used
        fsync_path(path)
        self.files[role] = name
        return path

    def subfolder(self, stem: str) -> Path:
        """A new, empty sub-folder ``<stem>-<tag>`` for a nested index (a shard), listed by
        this save; removed again if the save fails."""
        name = f"{stem}-{self.tag}"
        (self.folder / name).mkdir()
        self.new_folders.append(name)
        self.folders.append(name)
        return self.folder / name

    def keep(self, name: str) -> None:
        """List the existing sub-folder ``name`` (a nested index this save leaves as it is):
        the cleanup after the save keeps it."""
        self.folders.append(name)

    def commit(self, fields: Dict[str, Any]) -> None:
        """Write the manifest (``fields`` + format, version and the files' sizes and
        checksums) atomically, making this save the folder's index."""
        manifest = {
            **fields,
            "format": self.fmt,
            "version": self.version,
            "files": {
                role: {
                    "name": name,
                    "bytes": (self.folder / name).stat().st_size,
                    "sha256": sha256_file(self.folder / name),
                }
                for role, name in self.files.items()
            },
        }
        text = json.dumps(manifest, indent=2, sort_keys=True)
        fsync_path(self.folder, directory=True)  # the data files' names are durable ...
        atomic_write(self.folder / MANIFEST, lambda f: f.write(text.encode("utf-8")))
        fsync_path(self.folder, directory=True)  # ... and so is the new manifest, before old files go


class IndexFolder:
    """A folder holding one saved index of kind ``fmt`` (format versions 1 to ``version``).

    >>> folder = IndexFolder(path, "roiret.bow_index", 1)                      # doctest: +SKIP
    >>> def write(w):                                                           # doctest: +SKIP
    ...     w.put("vocabulary", "vocabulary", "npz", voc.save)  # role, file stem, extension
    ...     return {"images": n}                                # the manifest's own fields
    >>> folder.save(write)                                                      # doctest: +SKIP
    >>> m = folder.read(); voc = Vocabulary.load(m.paths["vocabulary"])         # doctest: +SKIP
    """

    def __init__(
        self,
        path: PathLike,
        fmt: str,
        version: int,
        what: Optional[str] = None,
        *,
        folders: Optional["re.Pattern[str]"] = None,
    ):
        self.path, self.fmt, self.version = Path(path), fmt, int(version)
        self.what = what or fmt  # how messages name this kind of index
        #: names of the sub-folders this kind of index owns (nested indexes: shards); after
        #: a save, those its manifest does not list are removed
        self.folders = folders

    def __repr__(self) -> str:
        return f"IndexFolder({str(self.path)!r}, {self.fmt!r}, version {self.version})"

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def save(self, write: Callable[[IndexWriter], Dict[str, Any]]) -> None:
        """One atomic save: ``write(writer)`` puts the data files (and sub-folders) and
        returns the manifest's fields; then the manifest is committed and stale files (and
        sub-folders) removed (module docstring). The folder is created if needed and locked
        for the whole save."""
        self.path.mkdir(parents=True, exist_ok=True)
        with FolderLock(self.path):
            old = self._listed_files()
            w = IndexWriter(self.path, self.fmt, self.version)
            try:
                w.commit(write(w))
            except BaseException:
                remove_files(self.path, w.written)
                remove_folders(self.path, w.new_folders)
                raise
            entries = [p.name for p in self.path.iterdir()]
            stale = set(old) | {n for n in entries if _DATA_NAME.match(n) or _MANIFEST_TMP.match(n)}
            remove_files(self.path, stale - set(w.written))
            if self.folders is not None:
                remove_folders(self.path, {n for n in entries if self.folders.match(n)} - set(w.folders))

    def _listed_files(self) -> List[str]:
        try:
            m = json.loads(self.manifest_path.read_text("utf-8"))
            return [f["name"] for f in m.get("files", {}).values() if "/" not in f["name"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return []

    def read(self, *, verify: bool = True, required: Sequence[str] = ()) -> Manifest:
        """The verified manifest (module docstring); ``verify=False`` skips the SHA-256 of
        the data files (sizes are still checked). ``required``: roles that must be listed."""
        mpath = self.manifest_path
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such index folder")
        if not os.path.lexists(mpath):
            raise IndexFormatError(f"{self.path}: no {MANIFEST}; not a {self.what}")
        own_entry(self.path, MANIFEST, "the manifest")
        try:
            m = json.loads(mpath.read_text("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise IndexFormatError(f"{mpath}: not valid JSON ({type(e).__name__}: {e})") from None
        if not isinstance(m, dict) or m.get("format") != self.fmt:
            got = m.get("format") if isinstance(m, dict) else None
            raise IndexFormatError(f"{mpath}: not a {self.what} manifest (format {got!r})")
        ver = m.get("version")
        if not isinstance(ver, int) or isinstance(ver, bool) or not 1 <= ver <= self.version:
            from .. import __version__

            raise IndexFormatError(
                f"{mpath}: {self.what} format version {ver!r}, this roiret {__version__} "
                f"reads versions 1 to {self.version}; upgrade roiret"
            )
        try:
            paths = {role: self._check_file(role, spec, verify) for role, spec in m["files"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            if isinstance(e, IndexFormatError):
                raise
            raise IndexFormatError(f"{mpath}: incomplete or invalid manifest ({e})") from None
        fields = {k: v for k, v in m.items() if k != "files"}
        out = Manifest(self.path, ver, fields, paths)
        out.require(required)
        return out

    def _check_file(self, role: str, spec: Dict[str, Any], verify: bool) -> Path:
        mpath = self.manifest_path
        name = spec["name"]
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith(".") or not name:
            raise IndexFormatError(f"{mpath}: bad file name {name!r}")
        p = self.path / name
        if not os.path.lexists(p):
            raise IndexFormatError(f"{mpath}: {role} file {name!r} is missing")
        size = own_entry(self.path, name, f"the {role} file").st_size
        if size != spec["bytes"]:
            raise IndexFormatError(
                f"{mpath}: {role} file {name!r} is truncated or altered ({size} bytes, expected {spec['bytes']})"
            )
        if verify and sha256_file(p) != spec["sha256"]:
            raise IndexFormatError(f"{mpath}: {role} file {name!r} does not match its checksum (corrupt)")
        return p
