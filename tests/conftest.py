"""Shared pytest fixtures (keep this file small)."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/_reference.py


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


#: parametrize a test over devices: ``@pytest.mark.parametrize("device", DEVICES)``;
#: the CUDA entry carries the ``cuda`` mark and is skipped without a GPU.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not _cuda_available(), reason="no CUDA device")]),
]


@pytest.fixture
def kernels(monkeypatch):
    """The native ``select_rois`` / ``pack_codes``. When ``roiret._kernels`` cannot be
    imported the test is skipped — unless ``ROIRET_TEST_REFERENCE_KERNELS=1``, which
    substitutes the NumPy references of ``_reference.py`` (development only)."""
    try:
        import roiret._kernels as k

        return k
    except ImportError as e:
        if os.environ.get("ROIRET_TEST_REFERENCE_KERNELS") != "1":
            pytest.skip(f"native kernels not importable ({e})")
    import roiret.cnn.regions
    from _reference import pack_codes_ref, select_rois_ref

    ns = types.SimpleNamespace(select_rois=select_rois_ref, pack_codes=pack_codes_ref)
    monkeypatch.setattr(roiret.cnn.regions, "_kernels_module", lambda: ns)
    return ns


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """Point torch hub at an empty folder (no torchvision checkpoints) for the test."""
    import torch

    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)
