"""Exception types raised by roiret.

Every one derives from :class:`RoiretError` (``except roiret.RoiretError`` catches all of
them) and from the built-in exception a caller would naturally catch (``ValueError`` for
bad data, ``FileNotFoundError`` for missing files, ``RuntimeError`` for a call made too
early), so ``except ValueError`` keeps working; the subclasses let callers tell cases apart.
The native core raises :class:`IndexFormatError` itself (it looks the class up here).
"""

from __future__ import annotations

import os
from typing import Optional, Union

__all__ = [
    "ImageError",
    "IndexFormatError",
    "NotTrainedError",
    "RoiretError",
    "UnknownIdError",
    "WeightsError",
    "WeightsNotFoundError",
]


class RoiretError(Exception):
    """Base class of every exception roiret raises on purpose."""


class ImageError(RoiretError, ValueError):
    """An image could not be read or is unusable (empty, truncated, not an image,
    too many pixels, unsupported layout). ``path`` names the file when there is one."""

    def __init__(self, message: str, path: Optional[Union[str, "os.PathLike[str]"]] = None):
        self.path = None if path is None else os.fspath(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


class IndexFormatError(RoiretError, ValueError):
    """A saved index file is truncated, corrupt, of another kind, or of a newer format
    version. Nothing is loaded when this is raised."""


class WeightsError(RoiretError, ValueError):
    """A weight file exists but cannot be used (corrupt, wrong shapes, unsafe pickle)."""


class WeightsNotFoundError(RoiretError, FileNotFoundError):
    """No source of weights was found; the message lists every place that was tried."""


class NotTrainedError(RoiretError, RuntimeError):
    """A method that needs a trained model (vocabulary, index) was called before
    ``train(...)`` or ``load(...)``."""

    def __init__(self, what: str = "the retriever", how: str = "call train(images) or load(path) first"):
        super().__init__(f"{what} is not trained: {how}")


class UnknownIdError(RoiretError, KeyError):
    """An image id (or other key) that is not in the index. A ``KeyError`` whose message reads
    as a sentence (``KeyError`` itself shows its argument in quotes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
