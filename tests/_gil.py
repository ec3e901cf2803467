"""A check shared by the kernel tests: a native call lets other Python threads run."""

from __future__ import annotations

import threading
from typing import Callable


def assert_releases_gil(call: Callable[[], object]) -> None:
    """Another Python thread makes progress while ``call`` runs: the count it makes while the
    main thread is inside the call would stay near zero if the GIL were held."""
    inside, done, started, counter = threading.Event(), threading.Event(), threading.Event(), [0]

    def spin() -> None:
        started.set()
        while not done.is_set():
            if inside.is_set():
                counter[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    started.wait()  # the other thread is running before the call starts (a loaded machine is slow to start it)
    try:
        inside.set()
        call()
        inside.clear()
    finally:
        done.set()
        t.join()
    assert counter[0] > 1000, counter[0]
