"""Every file a save writes — manifest, arrays, ``.npz`` files, the native inverted file, in
one index folder or a sharded one — has the permissions ``open()`` gives a new file, 0o666
less the umask (issue 21: the manifest, embedding and vocabulary were 0600, written through
``mkstemp``, the rest 0644: another user could read some files of an index but not load
it). Checked under two umasks."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

import _robust_index as RI
from roiret import InvertedFile
from roiret.io.folder import new_file_mode

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def modes(folder):
    return {p.relative_to(folder).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


def test_new_file_mode_is_what_open_gives(umask, tmp_path):
    with open(tmp_path / "plain", "w"):
        pass
    assert new_file_mode() == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o666 & ~umask


def test_every_file_of_a_saved_index_has_one_mode(umask, tmp_path, tmp_path_factory):
    root = tmp_path_factory.getbasetemp()
    RI.load(RI.saved_index(root)).save(tmp_path / "single")
    RI.load(RI.sharded_index(root)).save(tmp_path / "sharded")
    got = {**modes(tmp_path / "single"), **{f"sharded/{k}": v for k, v in modes(tmp_path / "sharded").items()}}
    kinds = {name.rsplit(".", 1)[-1] for name in got}
    assert kinds == {"json", "npy", "npz", "bin"} and len(got) > 40  # every kind of file is there
    assert set(got.values()) == {0o666 & ~umask}, got


def test_a_native_inverted_file_gets_the_mode_of_a_new_file(umask, tmp_path):
    ivf = InvertedFile(10)
    ivf.add(np.array([1]), np.array([0, 2]), np.array([3, 4]), None)
    ivf.save(tmp_path / "x.ivf")
    assert stat.S_IMODE((tmp_path / "x.ivf").stat().st_mode) == 0o666 & ~umask
