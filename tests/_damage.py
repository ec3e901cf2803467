"""Checks shared by the index-file tests: a damaged file is refused with IndexFormatError,
never loaded and never a crash."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from roiret import IndexFormatError


def assert_refuses_truncations(load: Callable[[Path], object], blob: bytes, path: Path) -> None:
    """Every prefix of ``blob`` is refused as truncated (or, shorter than the header, by its
    magic), and so is ``blob`` with a byte appended."""
    for n in range(len(blob)):
        path.write_bytes(blob[:n])
        with pytest.raises(IndexFormatError, match="truncated|magic"):
            load(path)
    path.write_bytes(blob + b"\0")
    with pytest.raises(IndexFormatError, match="unexpected bytes"):
        load(path)


def assert_refuses_flips(load: Callable[[Path], object], blob: bytes, path: Path, bit: int) -> None:
    """``blob`` with ``bit`` flipped in any one byte is refused: every byte of every section
    and of the header is covered by a checksum."""
    for pos in range(len(blob)):
        b = bytearray(blob)
        b[pos] ^= bit
        path.write_bytes(bytes(b))
        with pytest.raises(IndexFormatError):
            load(path)
