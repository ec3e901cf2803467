"""A saved Retriever folder that has been damaged: every data file truncated at several
points and with flipped bytes at sampled positions, a damaged / foreign / newer manifest,
pickles and object arrays in place of arrays (refused, never executed), crafted files
whose checksums were fixed up, and ``verify=False``.

The contract: ``Retriever.load`` raises IndexFormatError naming the problem (or
FileNotFoundError), returns no object, changes nothing on disk — or, where the damage is
only in array *values* and ``verify=False`` skipped the checksums, returns a consistent
index that searches without error.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

import _robust_index as RI
from roiret.errors import IndexFormatError

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = RI.saved_index(tmp_path_factory.getbasetemp())
    manifest = json.loads((path / "manifest.json").read_text())
    original = RI.load(path)
    query = original.prepare_query(RI.photos()[1])
    return path, manifest, original, query


@pytest.fixture
def folder(base, tmp_path):
    path = tmp_path / "idx"
    shutil.copytree(base[0], path)
    return path


def snapshot(path: Path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def file_of(path: Path, role: str) -> Path:
    return path / json.loads((path / "manifest.json").read_text())["files"][role]["name"]


def fix_manifest(path: Path, role: str, size_only: bool = False) -> None:
    """Make the manifest agree with the file's current size (and checksum): what an
    attacker, or a tool that 'repaired' the folder, would do."""
    m = json.loads((path / "manifest.json").read_text())
    p = path / m["files"][role]["name"]
    m["files"][role]["bytes"] = p.stat().st_size
    if not size_only:
        m["files"][role]["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(m))


def refused(path: Path, match=None, **kw) -> IndexFormatError:
    before = snapshot(path)
    with pytest.raises(IndexFormatError, match=match) as e:
        RI.load(path, **kw)
    assert snapshot(path) == before  # nothing written, nothing removed
    return e.value


def loads_consistently(path: Path, base, **kw) -> None:
    """Loaded despite the edit: same images, consistent parts, a search that works."""
    _, _, original, query = base
    r = RI.load(path, **kw)
    assert len(r) == len(original) and r.store.ids.tolist() == original.store.ids.tolist()
    assert sorted(r.bow.inverted_file.ids().tolist()) == sorted(r.store.ids.tolist())
    res = r.rank(query, top=len(r))
    assert sorted(res.ids.tolist()) == sorted(r.store.ids.tolist())


def roles(base):
    return sorted(base[1]["files"])


def test_the_base_index_loads_and_equals_the_original(base, folder):
    r = RI.load(folder)
    assert RI.same_index(r, base[2])
    assert set(roles(base)) == {"vocabulary", "embedding", "inverted_file", "whitening", "projection"} | {
        f"rois.{k}" for k in ("codes", "boxes", "scores", "offsets", "ids", "sizes", "global_codes", "names")
    } | {f"geometry.{k}" for k in ("words", "xy", "scales", "angles", "offsets", "sides")}


# ---------------------------------------------------------------------------------------
# truncation and flipped bytes, every data file
# ---------------------------------------------------------------------------------------
def cut_points(n, rng):
    return sorted({0, 1, 8, 20, 64, 128, n // 3, n // 2, n - 8, n - 1} | set(rng.integers(1, n, 4).tolist()))


def test_every_file_truncated_at_several_points(base, folder):
    rng = np.random.default_rng(0)
    for role in roles(base):
        p = file_of(folder, role)
        blob = p.read_bytes()
        for cut in cut_points(len(blob), rng):
            if cut >= len(blob):
                continue
            p.write_bytes(blob[:cut])
            refused(folder, "truncated or altered")  # the manifest's size check
            for verify in (True, False):  # and the parsers themselves
                fix_manifest(folder, role, size_only=not verify)
                e = refused(folder, verify=verify)
                assert p.name in str(e) or str(folder) in str(e), str(e)
            fix_manifest(folder, role)  # restore sizes / checksums for the next cut
            p.write_bytes(blob)
            fix_manifest(folder, role)
    RI.load(folder)  # intact again


def test_flipped_bytes_are_caught_by_the_checksums(base, folder):
    rng = np.random.default_rng(1)
    for role in roles(base):
        p = file_of(folder, role)
        blob = p.read_bytes()
        for pos in sorted({0, 1, 7, len(blob) // 2, len(blob) - 1} | set(rng.integers(0, len(blob), 8).tolist())):
            b = bytearray(blob)
            b[pos] ^= 1 << int(rng.integers(0, 8))
            p.write_bytes(bytes(b))
            refused(folder, "checksum")
        p.write_bytes(blob)


def test_flipped_bytes_without_verification(base, folder):
    """verify=False skips the SHA-256 of each file: structural damage (headers, zip
    structure, the inverted file, which has its own CRCs) is still refused; a flip inside
    an array's values may load, and then the index is consistent and searches."""
    rng = np.random.default_rng(2)
    outcomes = {"refused": 0, "loaded": 0}
    for role in roles(base):
        p = file_of(folder, role)
        blob = p.read_bytes()
        positions = set(range(0, min(len(blob), 128), 9)) | set(rng.integers(0, len(blob), 10).tolist())
        for pos in sorted(positions):
            b = bytearray(blob)
            b[pos] ^= 0x10
            p.write_bytes(bytes(b))
            try:
                loads_consistently(folder, base, verify=False)
                outcomes["loaded"] += 1
                assert role.startswith(("rois.", "geometry.")) or role in (
                    "vocabulary",
                    "embedding",
                    "whitening",
                    "projection",
                ), role
            except IndexFormatError:
                outcomes["refused"] += 1
        p.write_bytes(blob)
    assert outcomes["refused"] > 0 and outcomes["loaded"] > 0, outcomes


def test_inverted_file_and_header_damage_is_refused_even_without_verification(base, folder):
    p = file_of(folder, "inverted_file")
    blob = p.read_bytes()
    for pos in range(0, len(blob), max(1, len(blob) // 40)):
        b = bytearray(blob)
        b[pos] ^= 0x04
        p.write_bytes(bytes(b))
        refused(folder, verify=False)
    p.write_bytes(blob)
    for role in [r for r in roles(base) if r.startswith("rois.")]:
        q = file_of(folder, role)
        data = q.read_bytes()
        header_len = 10 + int.from_bytes(data[8:10], "little")
        for pos in (0, 3, 6, 8, 9) + tuple(range(10, header_len - 1, 7)):
            b = bytearray(data)
            b[pos] ^= 0x40  # e.g. '{' -> ';', 'd' -> '$', '<' -> '|', digits -> 'p'...
            q.write_bytes(bytes(b))
            try:
                loads_consistently(folder, base, verify=False)
            except IndexFormatError:
                pass
        q.write_bytes(data)


# ---------------------------------------------------------------------------------------
# the manifest
# ---------------------------------------------------------------------------------------
def write_manifest(folder: Path, m) -> None:
    (folder / "manifest.json").write_text(m if isinstance(m, str) else json.dumps(m))


def test_damaged_manifest(base, folder):
    text = (folder / "manifest.json").read_text()
    rng = np.random.default_rng(3)
    for cut in sorted({0, 1, len(text) // 2, len(text) - 1} | set(rng.integers(1, len(text), 6).tolist())):
        write_manifest(folder, text[:cut])
        refused(folder, "not valid JSON")
    # every byte of the configuration (where a flipped letter once escaped as a plain
    # ValueError from the CNN builder), plus random positions elsewhere
    start = text.index('"config": {')
    config_span = range(start, text.index("}", start) + 1)
    for pos in sorted(set(config_span) | set(rng.integers(0, len(text), 30).tolist())):
        b = bytearray(text.encode())
        b[pos] ^= 0x01
        (folder / "manifest.json").write_bytes(bytes(b))
        try:  # a flip in a free-text field (the library version) may be harmless
            r = RI.load(folder)
        except IndexFormatError:
            continue
        assert RI.same_index(r, base[2])
    (folder / "manifest.json").write_bytes(b"\xff\xfe\x00garbage")
    refused(folder, "not valid JSON")
    write_manifest(folder, "[" * 100_000 + "]" * 100_000)  # nesting beyond the recursion limit
    refused(folder, "not valid JSON|not a roiret index")
    write_manifest(folder, text)
    RI.load(folder)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: {**m, "format": "roiret.bow_index"}, "not a roiret index manifest"),
        (lambda m: {**m, "format": None}, "not a roiret index manifest"),
        (lambda m: [m], "not a roiret index manifest"),
        (lambda m: {**m, "version": 2}, "version 2.*upgrade roiret"),
        (lambda m: {**m, "version": 99}, "version 99"),
        (lambda m: {**m, "version": "1"}, "version '1'"),
        (lambda m: {**m, "version": 0}, "version 0"),
        (lambda m: {k: v for k, v in m.items() if k != "files"}, "incomplete or invalid manifest"),
        (lambda m: {**m, "files": []}, "incomplete or invalid manifest"),
        (lambda m: {**m, "files": {k: v for k, v in m["files"].items() if k != "rois.codes"}}, "no rois.codes file"),
        (lambda m: {**m, "config": {**m["config"], "K": "twenty"}}, "incomplete or invalid manifest"),
        (lambda m: {**m, "config": {**m["config"], "surprise": 1}}, "unknown configuration keys"),
        (lambda m: {**m, "local_features": "rootsift"}, "incomplete or invalid manifest"),
        (lambda m: {**m, "local_features": {"kind": "magic"}}, "kind"),
        (lambda m: {**m, "nbits": "many"}, "incomplete or invalid manifest"),
        (lambda m: {**m, "nbits": 12345}, "12345-bit codes|array 'codes'"),
        (lambda m: {**m, "images": 999}, "999 images"),
        (lambda m: {**m, "backbone_fingerprint": "0" * 64}, "weights"),
        (
            lambda m: {
                **m,
                "files": {**m["files"], "vocabulary": {**m["files"]["vocabulary"], "name": "../../etc/passwd"}},
            },
            "bad file name",
        ),
        (
            lambda m: {**m, "files": {**m["files"], "vocabulary": {**m["files"]["vocabulary"], "name": ".hidden"}}},
            "bad file name",
        ),
        (
            lambda m: {**m, "files": {**m["files"], "vocabulary": {**m["files"]["vocabulary"], "bytes": "12"}}},
            "truncated or altered|incomplete",
        ),
        (lambda m: {**m, "files": {**m["files"], "vocabulary": m["files"]["whitening"]}}, "vocabulary"),
    ],
)
def test_manifest_of_another_kind_version_or_content(base, folder, edit, match):
    write_manifest(folder, edit(base[1]))
    refused(folder, match)


def test_other_kinds_of_folders_and_files(base, tmp_path):
    from roiret.bow import BowIndex

    original = base[2]
    bow_folder = tmp_path / "bow"
    original.bow.save(bow_folder)  # a BoW index folder: a manifest of another format
    refused(bow_folder, "not a roiret index manifest")
    ivf_file = tmp_path / "x.ivf"
    original.bow.inverted_file.save(ivf_file)
    with pytest.raises(IndexFormatError, match="no manifest.json"):
        RI.load(ivf_file)  # a file, not a folder
    with pytest.raises(FileNotFoundError):
        RI.load(tmp_path / "nowhere")
    assert isinstance(BowIndex.load(bow_folder), BowIndex)


# ---------------------------------------------------------------------------------------
# pickles: refused, never executed
# ---------------------------------------------------------------------------------------
class Payload:
    """Unpickling this creates (opens for writing) the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickles_are_refused_and_never_executed(base, folder, tmp_path):
    marker = tmp_path / "PWNED"
    evil = np.array([Payload(marker), 1], dtype=object)

    def npy_bytes(arr):
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=True)
        return buf.getvalue()

    def npz_bytes(**arrays):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    # the payload is real: loading it with pickles allowed runs it
    probe = tmp_path / "probe.npy"
    probe.write_bytes(npy_bytes(evil))
    np.load(probe, allow_pickle=True)
    assert marker.exists()
    marker.unlink()

    attacks = {
        "rois.codes": npy_bytes(evil),  # an object array .npy
        "rois.names": pickle.dumps(Payload(marker)),  # a bare pickle
        "vocabulary": npz_bytes(__header__=evil, centroids=evil),  # object arrays in the .npz
        "whitening": npz_bytes(meta=evil, mean=evil, projection=evil, eigenvalues=evil),
        "projection": npy_bytes(evil),
    }
    for role, data in attacks.items():
        p = file_of(folder, role)
        original = p.read_bytes()
        p.write_bytes(data)
        fix_manifest(folder, role)  # checksums agree: only the parsers stand in the way
        for verify, mmap in ((True, True), (False, True), (True, False)):
            e = refused(folder, "pickle|Object arrays|Python objects", verify=verify, mmap=mmap)
            assert file_of(folder, role).name in str(e)
            assert not marker.exists(), f"{role}: the pickle was executed"
        p.write_bytes(original)
        fix_manifest(folder, role)
    (folder / "manifest.json").write_bytes(pickle.dumps(Payload(marker)))
    refused(folder, "not valid JSON")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------
# crafted files with valid checksums but inconsistent contents
# ---------------------------------------------------------------------------------------
def replace_array(folder, key, arr):
    role = f"rois.{key}"
    p = file_of(folder, role)
    with open(p, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    fix_manifest(folder, role)


@pytest.mark.parametrize(
    "key, make, match",
    [
        ("offsets", lambda a: a[::-1].copy(), "offsets are inconsistent"),
        ("offsets", lambda a: a + 1, "offsets are inconsistent"),
        ("offsets", lambda a: a[:-1].copy(), "array 'offsets'"),
        ("ids", lambda a: np.zeros_like(a), "not unique"),
        ("ids", lambda a: a + 1000, "different images"),
        ("ids", lambda a: np.int64(a[0]), "inconsistent RoI arrays|array 'ids'"),  # a 0-d array
        ("codes", lambda a: a[:, :1].copy() if a.shape[1] > 1 else a.astype(np.int64), "array 'codes'"),
        ("codes", lambda a: a[:-1].copy(), "offsets are inconsistent|different lengths"),
        ("boxes", lambda a: a.astype(np.float64), "array 'boxes'"),
        ("sizes", lambda a: a[:, :1].copy(), "array 'sizes'"),
        ("global_codes", lambda a: a[:1].copy(), "array 'global_codes'"),
        ("names", lambda a: np.arange(len(a)), "array 'names'"),
        ("names", lambda a: a[:1].copy(), "array 'names'"),
    ],
)
def test_consistent_checksums_inconsistent_arrays(base, folder, key, make, match):
    arrays = base[2].store.state_dict()
    replace_array(folder, key, make(arrays[key]))
    refused(folder, match)


def test_failed_load_leaves_no_object_and_good_load_after(base, folder):
    """load is a constructor: it returns a complete object or raises; the folder is
    usable again as soon as the damage is undone."""
    p = file_of(folder, "rois.scores")
    blob = p.read_bytes()
    p.write_bytes(blob[:-4])
    result = None
    with pytest.raises(IndexFormatError):
        result = RI.load(folder)
    assert result is None
    p.write_bytes(blob)
    assert RI.same_index(RI.load(folder), base[2])
