"""Input and output: images (:mod:`.images`: reading any image source safely, boxes),
array files (:mod:`.arrays`: pickle-free, checksummed ``.npz``) and index folders
(:mod:`.folder`: the one persistence format of every saved index). Imports nothing of the
rest of the package but :mod:`roiret.errors`."""

from __future__ import annotations

import os
from typing import Union

__all__ = ["PathLike"]

#: a file or folder name: ``str`` or ``os.PathLike`` (``pathlib.Path``)
PathLike = Union[str, "os.PathLike[str]"]
