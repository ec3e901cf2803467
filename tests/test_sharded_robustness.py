"""A sharded folder tried as a hostile user would (issue 21): shard folders and files that
are symbolic links, a top manifest whose entries were removed, altered, repeated or too
many, a folder of the layout roiret wrote before format version 2; how a save lays out new
shard versions; and a search process holding hundreds of shards under a low limit of open
files. The folder is the robustness suite's six images as 3 shards of 2
(``_robust_index.sharded_index``). Kills during a sharded save: tests/test_interrupted_save.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import _robust_index as RI
from roiret.errors import IndexFormatError
from roiret.search import persist, sharded

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
VERSIONED = r"shard-0000\d-[0-9a-f]{12}"


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    root = tmp_path_factory.getbasetemp()
    return RI.snapshot(RI.load(RI.sharded_index(root)))


@pytest.fixture
def folder(tmp_path, tmp_path_factory):
    return RI.copy_sharded(tmp_path_factory.getbasetemp(), tmp_path / "sharded")


def top(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def write_top(path: Path, m: dict) -> None:
    (path / "manifest.json").write_text(json.dumps(m))


def listing(path: Path) -> dict:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def refused(path: Path, match: str) -> None:
    before = listing(path)
    with pytest.raises(IndexFormatError, match=match):
        RI.load(path)
    assert listing(path) == before  # nothing written, nothing removed


def test_the_folder_loads_as_three_shards(folder, original):
    r = RI.load(folder)
    assert [len(s) for s in r.index.shards] == [2, 2, 2] and RI.snapshot(r) == original


# -- symbolic links -------------------------------------------------------------------------
def test_a_shard_folder_that_is_a_symlink_is_refused(folder, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.move(str(folder / "shard-00001"), outside)
    os.symlink(outside, folder / "shard-00001")  # the same files, reached through a link
    refused(folder, r"shard-00001: shard folder shard-00001 is a symbolic link \(to '.*elsewhere'\)")
    os.unlink(folder / "shard-00001")
    os.symlink("shard-00002", folder / "shard-00001")  # a link inside the folder is refused too
    refused(folder, "shard-00001: shard folder shard-00001 is a symbolic link")


@pytest.mark.parametrize("role", ["rois.codes", "geometry.xy", "inverted_file", "vocabulary"])
def test_a_data_file_that_is_a_symlink_is_refused(folder, tmp_path, role):
    shard = folder / "shard-00002"
    name = json.loads((shard / "manifest.json").read_text())["files"][role]["name"]
    shutil.move(str(shard / name), tmp_path / name)
    os.symlink(tmp_path / name, shard / name)  # same bytes, same checksum: only the link is wrong
    refused(folder, f"shard-00002/{name}: the {role} file is a symbolic link")


def test_manifests_that_are_symlinks_are_refused(folder, tmp_path):
    shutil.move(str(folder / "shard-00000" / "manifest.json"), tmp_path / "m0.json")
    os.symlink(tmp_path / "m0.json", folder / "shard-00000" / "manifest.json")
    refused(folder, "shard-00000/manifest.json: the manifest is a symbolic link")
    os.unlink(folder / "shard-00000" / "manifest.json")
    shutil.copy(tmp_path / "m0.json", folder / "shard-00000" / "manifest.json")
    shutil.move(str(folder / "manifest.json"), tmp_path / "top.json")
    os.symlink(tmp_path / "top.json", folder / "manifest.json")
    refused(folder, "sharded/manifest.json: the manifest is a symbolic link")


def test_a_symlinked_file_of_a_single_index_is_refused(tmp_path, tmp_path_factory):
    single = RI.copy_index(tmp_path_factory.getbasetemp(), tmp_path / "single")
    name = json.loads((single / "manifest.json").read_text())["files"]["rois.ids"]["name"]
    shutil.move(str(single / name), tmp_path / name)
    os.symlink(tmp_path / name, single / name)
    refused(single, f"single/{name}: the rois.ids file is a symbolic link")


# -- counts, repeats, bounds ----------------------------------------------------------------
def test_a_removed_entry_is_refused_even_when_the_total_is_kept(folder):
    m = top(folder)
    del m["shards"][1]  # the total still says 6
    write_top(folder, m)
    refused(folder, "lists 6 images in all, its 2 shard entries add up to 4")
    m["images"] = 4  # made consistent: then the folder is another, smaller index — as listed
    write_top(folder, m)
    assert RI.load(folder).ids.tolist() == [0, 1, 4, 5]


def test_an_entry_that_lies_about_its_shard_is_refused(folder):
    m = top(folder)
    m["shards"][0]["images"], m["shards"][1]["images"] = 3, 1  # the total still adds up
    write_top(folder, m)
    refused(folder, r"lists 3 images / (\d+) RoIs for shard-00000, it holds 2 / \1$")


def test_a_shard_listed_many_times_is_refused_before_any_shard_is_read(folder, monkeypatch):
    m = top(folder)
    m["shards"] = [m["shards"][0]] * 2000
    m["images"] = 2 * 2000
    write_top(folder, m)

    def no_shard_read(*a, **kw):
        raise AssertionError("a shard was read")

    monkeypatch.setattr(sharded, "_check_shard", no_shard_read)
    monkeypatch.setattr(persist, "load_index", no_shard_read)
    refused(folder, "lists shard shard-00000 2000 times")


def test_more_shards_than_the_bound_are_refused(folder, monkeypatch):
    monkeypatch.setattr(sharded, "MAX_SHARDS", 2)
    refused(folder, "lists 3 shards, more than the 2 a sharded index may have")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m["shards"][2].update(name="../shard-00002"), "bad shard name or negative counts: '../shard-00002'"),
        (lambda m: m["shards"][2].update(name="shard-00002-ABC"), "bad shard name"),
        (lambda m: m["shards"][2].update(rois=-1), "negative counts"),
        (lambda m: m.update(shards={"a": 1}), "shards must be a list"),
        (lambda m: m.update(shard_size=0), "shard_size >= 1"),
        (lambda m: m.update(shards=[]), "lists no shards"),
    ],
)
def test_malformed_entries_are_refused(folder, edit, match):
    m = top(folder)
    edit(m)
    write_top(folder, m)
    refused(folder, match)


# -- layout of saves ------------------------------------------------------------------------
def test_a_save_writes_changed_shards_as_new_versions_and_keeps_the_rest(folder, original):
    r = RI.load(folder)
    assert r.remove([2]) == 1  # shard 1 changes
    r.save(folder)
    names = [e["name"] for e in top(folder)["shards"]]
    assert names[0] == "shard-00000" and names[2] == "shard-00002"  # untouched: not rewritten
    assert re.fullmatch(VERSIONED, names[1]) and names[1].startswith("shard-00001-")
    assert top(folder)["version"] == sharded.VERSION == 2
    assert sorted(p.name for p in folder.iterdir()) == sorted(names + ["manifest.json"])  # the old one is gone
    back = RI.load(folder)
    assert back.ids.tolist() == [0, 1, 3, 4, 5] and RI.snapshot(back) == RI.snapshot(r)
    before = listing(folder)
    back.save(folder)  # nothing changed: nothing rewritten but the top manifest
    after = listing(folder)
    assert {k: v for k, v in after.items() if k != "manifest.json"} == {
        k: v for k, v in before.items() if k != "manifest.json"
    }


def test_a_shard_replaced_by_another_process_is_written_again(folder):
    a, b = RI.load(folder), RI.load(folder)
    b.remove([0])
    b.save(folder)  # b's save removes shard-00000, which a still lists as unchanged
    a.save(folder)
    assert RI.load(folder).ids.tolist() == list(range(6))  # a's index, whole


def test_a_save_that_fails_midway_leaves_the_folder_as_it_was(folder, original, monkeypatch):
    r = RI.load(folder)
    r.remove([0, 2])  # shards 0 and 1 change: the second one's write fails (a full disk)
    before = listing(folder)
    save_index, calls = persist.save_index, []

    def second_fails(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return save_index(*args, **kwargs)

    monkeypatch.setattr(persist, "save_index", second_fails)
    with pytest.raises(OSError, match="No space left"):
        r.save(folder)
    assert listing(folder) == before and RI.snapshot(RI.load(folder)) == original  # nothing left over
    monkeypatch.undo()
    r.save(folder)
    assert RI.load(folder).ids.tolist() == [1, 3, 4, 5]


def test_a_version_1_folder_loads_and_moves_to_versions_on_save(folder, original):
    m = top(folder)
    write_top(folder, {**m, "version": 1})  # what roiret wrote before format version 2
    r = RI.load(folder)
    assert RI.snapshot(r) == original
    r.remove([5])
    r.save(folder)
    names = [e["name"] for e in top(folder)["shards"]]
    assert names[:2] == ["shard-00000", "shard-00001"] and names[2].startswith("shard-00002-")
    assert not (folder / "shard-00002").exists() and RI.load(folder).ids.tolist() == [0, 1, 2, 3, 4]


def test_a_newer_version_is_refused_with_the_way_out(folder):
    write_top(folder, {**top(folder), "version": sharded.VERSION + 1})
    refused(folder, r"format version 3, this roiret .* reads versions 1 to 2; upgrade roiret")


# -- open files -----------------------------------------------------------------------------
def test_a_loaded_index_holds_no_open_file(folder):
    def fds():
        return set(os.listdir("/proc/self/fd"))

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc/self/fd")
    RI.load(folder)  # imports, the CNN
    before = fds()
    held = [RI.load(folder) for _ in range(3)]
    assert len(fds() - before) == 0 and sum(len(r.index.shards) for r in held) == 9


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    """300 shards: the 3 of the sharded folder, then one image in each (copies of one
    encoded image under new ids: no CNN run)."""
    import dataclasses

    r = RI.load(RI.sharded_index(tmp_path_factory.getbasetemp()))
    r.index.shard_size = 1
    seen = []
    add = r.index.add
    r.index.add = lambda entries: (seen.extend(entries), add(entries))[1]  # the encoded entries
    r.add([RI.photos()[6]])
    copies = [dataclasses.replace(seen[0], id=100 + k, name=f"copy-{k}") for k in range(296)]
    add(copies)  # one new shard per image
    out = tmp_path_factory.mktemp("many") / "index"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(os, "fsync", lambda fd: None)  # 12 000 fsyncs are not what is tested here
        r.save(out)
    assert len(top(out)["shards"]) == 300
    return out


def test_300_shards_load_and_search_under_a_limit_of_256_open_files(many_shards):
    code = f"""
import os, resource, sys, warnings
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
sys.path.insert(0, {str(Path(__file__).parent)!r})
warnings.simplefilter("ignore")
import _robust_index as RI
r = RI.load({str(many_shards)!r})
res = r.search(RI.photos()[6], top=10)
print(len(r.index.shards), len(r), res.hits[0].name, len(os.listdir("/proc/self/fd")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    shards, images, best, fds = out.stdout.split()
    assert (shards, images) == ("300", "303") and int(fds) < 256
    assert best == "image-6" or best.startswith("copy-")  # the query image itself, or a copy of it
