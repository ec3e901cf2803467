"""Why the paper's re-ranking loses to BoW on Oxford5k-dev, and what fixes it.

    python benchmarks/rerank_study.py ../shared/datasets/oxford5k-dev --index /tmp/eval/<an index folder>

Takes a saved roiret index of the dataset (for its BoW first stage and its CNN), extracts
the K RoI descriptors of every database image and query once (L2-normalised, not
whitened, cached under --cache), then re-ranks the BoW top N with many variants of the
second stage, all from the same descriptors and the same candidate lists:

* code: the paper's bits (f_i > mean f, 256 bits) with and without PCA-whitening learned on
  the database RoIs (all / 128 / 64 dimensions), or sign bits of a seeded Gaussian
  projection (256 / 512 / 1024 bits), or float cosine (no binarisation);
* score: the best RoI pair alone (the paper), or fused with the BoW score — linearly on raw
  scores, on standardised scores (z), on min-max scores, or by reciprocal rank;
* N: how many BoW candidates are re-ranked.

Prints mAP (%) classic / revisited Medium / Hard, and BoW recall@N.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np


def standardize(x, ok):
    v = x[ok]
    sd = v.std() if len(v) else 0.0
    return (x - v.mean()) / sd if sd > 0 else np.zeros_like(x)


def fuse(roi, bow, how, w):
    ok = np.isfinite(roi)
    r = np.where(ok, roi, 0.0)
    if how == "roi":
        s = r
    elif how == "linear":
        s = (1 - w) * r + w * bow
    elif how == "z":
        s = (1 - w) * standardize(r, ok) + w * standardize(bow, ok)
    elif how == "minmax":

        def mm(x):
            v = x[ok]
            return (x - v.min()) / (v.max() - v.min()) if len(v) and v.max() > v.min() else np.zeros_like(x)

        s = (1 - w) * mm(r) + w * mm(bow)
    elif how == "rrf":
        rank = np.empty(len(r))
        rank[np.argsort(-np.where(ok, r, -np.inf), kind="stable")] = np.arange(len(r))
        s = 1 / (w + rank) + 1 / (w + np.arange(len(r)))
    else:
        raise ValueError(how)
    return np.where(ok, s, -np.inf)


def main(argv=None):
    import roiret
    from roiret.cnn.whitening import PCAWhitening
    from roiret.eval import load_gnd
    from roiret.search.retriever import Retriever

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset")
    ap.add_argument(
        "--index", required=True, help="a saved roiret index of the dataset (e.g. from roiret eval --cache)"
    )
    ap.add_argument("--cache", default="/tmp/roiret-rerank-study.pkl")
    ap.add_argument("-N", type=int, nargs="+", default=[30, 100])
    a = ap.parse_args(argv)

    root = Path(a.dataset)
    if not (root / "gnd.json").exists():
        print(f"skipped: no dataset at {root}")
        return 0
    gt = load_gnd(root / "gnd.json")
    stems = list(gt.images)
    row = {s: i for i, s in enumerate(stems)}
    r = Retriever.load(a.index, progress=False)
    ex = r.extractor
    ex.whitening = None  # raw, L2-normalised descriptors
    keys = sorted({(q.image, tuple(q.bbox)) for p in ("classic", "revisited") for q in gt.protocol(p).queries})
    cache = Path(a.cache)
    if cache.exists():
        db, qs, cands = pickle.load(open(cache, "rb"))
    else:
        db = [
            (x.descriptors, x.global_descriptor)
            for x in ex.extract([str(gt.image_path(s)) for s in stems], progress=True)
        ]
        qs, cands = {}, {}
        for key in keys:
            x = ex.extract([gt.image_path(key[0])], boxes=[key[1]], progress=False)[0]
            qs[key] = (x.descriptors, x.global_descriptor)
            pq = r.prepare_query(gt.image_path(key[0]), key[1], with_rois=False)
            res = r.rank(pq, top=len(r), mode="bow")
            cands[key] = (res.names, np.array([h.bow_score for h in res.hits]))
        pickle.dump((db, qs, cands), open(cache, "wb"))

    train = np.concatenate([np.concatenate([d, g[None]]) for d, g in db]).astype(np.float32)
    rng = np.random.default_rng(0)
    dim = train.shape[1]

    def l2(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    codes = {"paper bits (256)": lambda x: x}
    for dims in (None, 128, 64):
        w = PCAWhitening(dims=dims).fit(train)
        codes[f"whitened{'' if dims is None else f' to {dims}'} + paper bits"] = lambda x, w=w: np.asarray(
            w.transform(x)
        )
    for bits in (256, 512, 1024):
        P = rng.standard_normal((dim, bits)).astype(np.float32)
        codes[f"projected {bits} bits"] = lambda x, P=P: l2(x) @ P

    def scorer(tf):
        if tf is None:  # float cosine
            D = [l2(d) if len(d) else None for d, _ in db]
            Q = {k: l2(v[0]) for k, v in qs.items()}
            return lambda key, i: float((Q[key] @ D[i].T).max()) if D[i] is not None and len(Q[key]) else -np.inf
        D = [roiret.pack_codes(np.ascontiguousarray(tf(d), np.float32)) if len(d) else None for d, _ in db]
        Q = {k: roiret.pack_codes(np.ascontiguousarray(tf(v[0]), np.float32)) for k, v in qs.items()}
        nb = tf(train[:1]).shape[1]
        return lambda key, i: (
            1 - roiret.hamming_matrix(Q[key], D[i], nb).min() / nb if D[i] is not None and len(Q[key]) else -np.inf
        )

    def evaluate(score, N, how, w):
        out = []
        for p in ("classic", "revisited"):
            proto = gt.protocol(p)
            allowed = set(proto.database)
            rk = {}
            for q in proto.queries:
                key = (q.image, tuple(q.bbox))
                names, bs = cands[key]
                top = names[:N]
                s = fuse(np.array([score(key, row[n]) for n in top]), bs[:N], how, w)
                order = np.argsort(-s, kind="stable")
                rk[q.id] = [n for n in [top[i] for i in order] + list(names[N:]) if n in allowed]
            m = proto.evaluate(rk).map
            out += [m["classic"]] if p == "classic" else [m["medium"], m["hard"]]
        return " / ".join(f"{100 * v:.2f}" for v in out)

    bow = []
    for p in ("classic", "revisited"):
        proto = gt.protocol(p)
        allowed = set(proto.database)
        m = proto.evaluate(
            {q.id: [n for n in cands[(q.image, tuple(q.bbox))][0] if n in allowed] for q in proto.queries}
        ).map
        bow += [m["classic"]] if p == "classic" else [m["medium"], m["hard"]]
    print(f"BoW only: {' / '.join(f'{100 * v:.2f}' for v in bow)}  (classic / medium / hard)")
    proto = gt.protocol("classic")
    for N in (10, 20, 50, 100, 200):
        rec = [
            len(q.positives("classic") & set(cands[(q.image, tuple(q.bbox))][0][:N])) / len(q.positives("classic"))
            for q in proto.queries
        ]
        print(f"BoW recall@{N} (classic): {np.mean(rec):.3f}")
    print("\n| codes | N | RoI score alone (paper) | linear 0.7 | z 0.3 | z 0.5 | min-max 0.5 | RRF 60 |")
    print("|---|---|---|---|---|---|---|---|")
    variants = [("roi", 0), ("linear", 0.7), ("z", 0.3), ("z", 0.5), ("minmax", 0.5), ("rrf", 60)]
    for name, tf in list(codes.items()) + [("float cosine", None)]:
        score = scorer(tf)
        for N in a.N:
            cells = [evaluate(score, N, how, w) for how, w in variants]
            print(f"| {name} | {N} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
