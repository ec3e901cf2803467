"""The ASMK first stage's settings on Oxford5k-dev, measured with a NumPy model of the kernel
(the grid behind docs/RESULTS.md, "A Hamming-embedded first stage"):

    python benchmarks/asmk_study.py ../shared/datasets/oxford5k-dev --cache /tmp/asmk \\
        mode=tfidf,k=50000 k=8000,mq=3,thr=1 k=8000,mq=3 k=8000,mq=3,bits=64 k=4000,mq=3 ...

Each argument is one row: ``k`` words (faiss k-means on 500 000 of the database's RootSIFT
descriptors, seed 0, 10 iterations; ``--vocabulary`` gives a ``.npy`` of centroids for
``k`` = its size instead), ``bits`` signature bits (the first rows of a seeded random
rotation), ``thr`` 1: per-word median thresholds (HE), 0: zero (ASMK*, default), ``mq`` /
``mdb`` words per query / database descriptor (multiple assignment within 1.5 × the nearest's
squared distance), ``a`` / ``tau`` the kernel's alpha / tau, ``mode`` asmk (aggregated per
word, default), he (one signature per descriptor), tfidf. Features (at most 4000 RootSIFT
keypoints per image, a query's in its box), vocabularies and assignments are cached under
``--cache``. Prints mAP % (classic / Medium / Hard) and classic recall@10/100/1000. The
library's own rows: ``roiret eval`` and ``benchmarks/first_stage_recall.py``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np


class Study:
    def __init__(self, dataset: Path, cache: Path, vocabulary: str = ""):
        from roiret.eval import load_gnd

        self.gt = load_gnd(dataset / "gnd.json")
        self.dataset, self.cache, self.given = dataset, cache, vocabulary
        cache.mkdir(parents=True, exist_ok=True)
        self._features()

    def _features(self) -> None:
        from roiret.bow import LocalFeatureExtractor

        f = self.cache / "features.npz"
        if not f.exists():
            ex = LocalFeatureExtractor()
            names = list(self.gt.images)
            feats = ex.extract_many([self.gt.image_path(n) for n in names], progress=True)
            qs: Dict[str, np.ndarray] = {}
            for p in self.gt.protocols:
                for q in self.gt.protocol(p).queries:
                    qs.setdefault(
                        f"{q.image}|{q.bbox}", ex.extract(self.gt.image_path(q.image), box=q.bbox).descriptors
                    )
            np.savez(
                f,
                names=np.array(names),
                offsets=np.concatenate([[0], np.cumsum([len(x) for x in feats])]),
                desc=np.concatenate([x.descriptors for x in feats]),
                keys=np.array(list(qs)),
                qoffsets=np.concatenate([[0], np.cumsum([len(v) for v in qs.values()])]),
                qdesc=np.concatenate(list(qs.values())),
            )
        z = np.load(f)
        self.names, self.off, self.X = list(z["names"]), z["offsets"], z["desc"]
        self.qkeys, self.qoff, self.QX = list(z["keys"]), z["qoffsets"], z["qdesc"]

    def vocab(self, k: int) -> np.ndarray:
        import faiss

        f = self.cache / f"voc{k}.npy"
        if self.given and np.load(self.given, mmap_mode="r").shape[0] == k:
            return np.load(self.given).astype(np.float32)
        if not f.exists():
            rng = np.random.default_rng(0)
            s = self.X[rng.choice(len(self.X), min(500_000, len(self.X)), replace=False)]
            t = time.time()
            km = faiss.Kmeans(s.shape[1], k, niter=10, seed=0)
            km.train(s)
            print(f"k-means {k}: {time.time() - t:.0f} s", flush=True)
            np.save(f, km.centroids)
        return np.load(f).astype(np.float32)

    def assign(self, k: int, c: np.ndarray, which: str, x: np.ndarray, m: int) -> Tuple[np.ndarray, np.ndarray]:
        import faiss

        f = self.cache / f"assign{k}-{which}-{m}.npz"
        if not f.exists():
            idx = faiss.IndexHNSWFlat(c.shape[1], 32)
            idx.hnsw.efSearch = 128
            idx.add(c)
            d, i = idx.search(x, m)
            np.savez(f, i=i, d=d)
        z = np.load(f)
        return z["i"], z["d"]

    def evaluate(self, S: np.ndarray) -> Tuple[Dict[str, float], Dict[int, float]]:
        rank = {key: np.argsort(-S[j], kind="stable") for j, key in enumerate(self.qkeys)}
        maps: Dict[str, float] = {}
        rec: Dict[int, float] = {}
        for p in self.gt.protocols:
            proto = self.gt.protocol(p)
            allowed = set(proto.database)
            rk = {
                q.id: [self.names[i] for i in rank[f"{q.image}|{q.bbox}"] if self.names[i] in allowed]
                for q in proto.queries
            }
            for lvl, v in proto.evaluate(rk).map.items():
                if lvl != "easy":
                    maps[lvl] = round(100 * v, 2)
            if p == "classic":
                for n in (10, 100, 1000):
                    pos = [q.positives("classic") for q in proto.queries]
                    hit = sum(len(ps & set(rk[q.id][:n])) for q, ps in zip(proto.queries, pos))
                    rec[n] = round(hit / sum(len(ps) for ps in pos), 3)
        return maps, rec


def train_he(c: np.ndarray, words: np.ndarray, x: np.ndarray, bits: int, median: bool) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    P = np.linalg.qr(rng.standard_normal((x.shape[1], x.shape[1])))[0][:bits]
    T = np.zeros((len(c), bits), np.float32)
    if median:
        z = (x - c[words]) @ P.T
        order = np.argsort(words, kind="stable")
        starts = np.searchsorted(words[order], np.arange(len(c) + 1))
        for w in np.flatnonzero(np.diff(starts)):
            T[w] = np.median(z[order[starts[w] : starts[w + 1]]], axis=0)
    return P.astype(np.float32), T


def aggregate(words, x, c, P, T, img, mode):  # type: ignore[no-untyped-def]
    n, m = words.shape
    w = words.reshape(-1)
    xi = np.repeat(np.arange(n), m)
    ok = w >= 0
    w, xi = w[ok], xi[ok]
    im = img[xi]
    z = (x[xi] - c[w]) @ P.T - T[w]
    if mode == "asmk":
        key = im.astype(np.int64) * len(c) + w
        uk, inv = np.unique(key, return_inverse=True)
        agg = np.zeros((len(uk), z.shape[1]), np.float32)
        np.add.at(agg, inv, z)
        return (uk // len(c)).astype(np.int64), (uk % len(c)).astype(np.int64), np.packbits(agg > 0, axis=1)
    return im.astype(np.int64), w.astype(np.int64), np.packbits(z > 0, axis=1)


def kernel_scores(dbi, dbw, dbb, qi, qw, qb, nimg, k, alpha, tau, mode, bits):  # type: ignore[no-untyped-def]
    order = np.lexsort((dbi, dbw))
    dbi, dbw, dbb = dbi[order], dbw[order], dbb[order]
    starts = np.searchsorted(dbw, np.arange(k + 1))
    df = np.array([len(np.unique(dbi[starts[w] : starts[w + 1]])) for w in range(k)], np.float64)
    idf = np.where(df > 0, np.log(nimg / np.maximum(df, 1)), 0.0)
    u = 1 - 2 * np.arange(bits + 1) / bits
    sigma = np.where(u > tau, np.sign(u) * np.abs(u) ** alpha, 0.0)
    key = dbi * k + dbw
    uk, cnt = np.unique(key, return_counts=True)
    selfn = np.zeros(nimg)
    np.add.at(selfn, uk // k, idf[uk % k] * (1.0 if mode == "asmk" else cnt.astype(float) ** 2))
    gdb = 1 / np.sqrt(np.maximum(selfn, 1e-12))
    S = np.zeros((qi.max() + 1, nimg))
    for j in range(len(S)):
        sel = qi == j
        acc = np.zeros(nimg)
        for w, b in zip(qw[sel], qb[sel]):
            a, e = starts[w], starts[w + 1]
            if e > a:
                h = np.bitwise_count(np.bitwise_xor(dbb[a:e], b)).sum(1)
                np.add.at(acc, dbi[a:e], idf[w] * sigma[h])
        S[j] = acc * gdb / np.sqrt(max(float(idf[qw[sel]].sum()), 1e-12))
    return S


def tfidf_scores(st: Study, k: int, w: np.ndarray, wq: np.ndarray, img: np.ndarray, qimg: np.ndarray) -> np.ndarray:
    import scipy.sparse as sp

    A = sp.csr_matrix((np.ones(len(w)), (img, w)), shape=(len(st.names), k))
    df = np.asarray((A > 0).sum(0)).ravel()
    idf = np.where(df > 0, np.log(len(st.names) / np.maximum(df, 1)), 0)
    A = sp.csr_matrix(A.multiply(idf[None]))
    A = sp.diags(1 / np.maximum(np.sqrt(np.asarray(A.multiply(A).sum(1)).ravel()), 1e-12)) @ A
    Q = sp.csr_matrix(sp.csr_matrix((np.ones(len(wq)), (qimg, wq)), shape=(len(st.qkeys), k)).multiply(idf[None]))
    return np.asarray((Q @ A.T).toarray())


def run(st: Study, spec: str) -> str:
    kw: Dict[str, Any] = dict(x.split("=") for x in spec.split(","))
    k, bits, mode = int(kw.get("k", 8000)), int(kw.get("bits", 128)), kw.get("mode", "asmk")
    mq, mdb = int(kw.get("mq", 1)), int(kw.get("mdb", 1))
    c = st.vocab(k)
    img = np.repeat(np.arange(len(st.names)), np.diff(st.off))
    qimg = np.repeat(np.arange(len(st.qkeys)), np.diff(st.qoff))
    wdb, _ = st.assign(k, c, "db", st.X, max(mdb, 1))
    wq, dq = st.assign(k, c, "q", st.QX, 5)
    if mode == "tfidf":
        S = tfidf_scores(st, k, wdb[:, 0], wq[:, 0], img, qimg)
    else:
        P, T = train_he(c, wdb[:, 0], st.X, bits, median=kw.get("thr", "0") == "1")
        wq = wq[:, :mq].copy()
        wq[dq[:, :mq] > 1.5 * dq[:, :1]] = -1
        db = aggregate(wdb[:, :mdb], st.X, c, P, T, img, mode)
        q = aggregate(wq, st.QX, c, P, T, qimg, mode)
        S = kernel_scores(*db, *q, len(st.names), k, float(kw.get("a", 3)), float(kw.get("tau", 0)), mode, bits)
    maps, rec = st.evaluate(S)
    return (
        f"| {spec} | {' / '.join(f'{v:.2f}' for v in maps.values())} | {' / '.join(f'{v:.3f}' for v in rec.values())} |"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("rows", nargs="+")
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--vocabulary", default="", help="a .npy of centroids to use for k = its size")
    args = ap.parse_args()
    if not (args.dataset / "gnd.json").exists():
        print(f"{args.dataset}: no gnd.json; nothing to measure")
        return 0
    st = Study(args.dataset, args.cache, args.vocabulary)
    print("| row | classic / Medium / Hard | recall@10 / 100 / 1000 |\n|---|---|---|")
    for spec in args.rows:
        print(run(st, spec), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
