"""Locks of the search side: many readers or one writer, in one process. (Saves to one
folder are serialised across processes by :class:`roiret.io.folder.FolderLock`.)"""

from __future__ import annotations

import threading
from typing import Callable

__all__ = ["RWLock"]


class RWLock:
    """Many readers or one writer (writers are not starved: new readers wait for a
    waiting writer)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    class _Ctx:
        def __init__(self, enter: Callable[[], None], leave: Callable[[], None]):
            self.enter, self.leave = enter, leave

        def __enter__(self) -> None:
            self.enter()

        def __exit__(self, *exc: object) -> None:
            self.leave()

    def _acquire_read(self) -> None:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1

    def _release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def _acquire_write(self) -> None:
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True

    def _release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()

    def read(self) -> "RWLock._Ctx":
        """``with lock.read():`` — shared."""
        return self._Ctx(self._acquire_read, self._release_read)

    def write(self) -> "RWLock._Ctx":
        """``with lock.write():`` — exclusive."""
        return self._Ctx(self._acquire_write, self._release_write)
