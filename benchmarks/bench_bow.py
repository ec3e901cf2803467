"""Throughput of the BoW first stage (pytest-benchmark).

Run::

    pytest benchmarks/bench_bow.py --benchmark-only --benchmark-columns=min,median,max,rounds

* local features: RootSIFT descriptors per second on bundled photos (OpenCV SIFT + RootSIFT);
* word assignment: roiret's exact and HNSW assignment against faiss ``IndexFlatL2`` used
  directly, for vocabularies of 1k, 10k and 50k words (descriptors/s in ``extra_info``,
  HNSW recall against exact too);
* query latency: ``BowIndex.search_bag`` (native InvertedFile, TF-IDF) against the same
  TF-IDF scoring with scipy.sparse, on 20 000 synthetic images of 500 words each.

All data are bundled scikit-image photos or seeded synthetic arrays.
"""

from __future__ import annotations

import numpy as np
import pytest

from roiret.bow import LocalFeatureExtractor, Vocabulary, bags_to_csr

skimage_data = pytest.importorskip("skimage.data")
faiss = pytest.importorskip("faiss")

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "brick", "camera", "immunohistochemistry"]


@pytest.fixture(scope="module")
def photos():
    return [getattr(skimage_data, n)() for n in PHOTOS]


@pytest.fixture(scope="module")
def descriptors(photos):
    fe = LocalFeatureExtractor(max_keypoints=None)
    return np.concatenate([fe.extract(p).descriptors for p in photos])


N_QUERY = 4000  # descriptors[:N_QUERY] are assigned; the vocabulary comes from the others


def _fake_vocab(descriptors, k, seed=0):
    """k centroids near real RootSIFT descriptors (jittered copies of descriptors not among
    the assigned ones, renormalised)."""
    rng = np.random.default_rng(seed)
    c = descriptors[N_QUERY:][rng.integers(0, len(descriptors) - N_QUERY, k)]
    c = np.abs(c + rng.normal(0, 0.02, c.shape)).astype(np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["rootsift", "sift"])
def test_extract(benchmark, photos, kind):
    fe = LocalFeatureExtractor(kind, max_keypoints=None)
    n = sum(len(fe.extract(p)) for p in photos)

    def run():
        for p in photos:
            fe.extract(p)

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["descriptors"] = n
    benchmark.extra_info["descriptors_per_s"] = n / benchmark.stats.stats.median


@pytest.mark.parametrize("k", [1_000, 10_000, 50_000])
@pytest.mark.parametrize("method", ["faiss_flat", "roiret_exact", "roiret_hnsw"])
def test_assign(benchmark, descriptors, k, method):
    c = _fake_vocab(descriptors, k)
    x = descriptors[:N_QUERY]
    if method == "faiss_flat":
        index = faiss.IndexFlatL2(c.shape[1])
        index.add(c)

        def run():
            return index.search(x, 1)[1][:, 0]

    else:
        voc = Vocabulary(c, hnsw_threshold=1 if method == "roiret_hnsw" else 10**9)
        voc.assign(x[:10])  # build the index outside the timing
        run = voc.assign
        if method == "roiret_hnsw":
            benchmark.extra_info["recall_vs_exact"] = voc.assignment_recall(x)
            benchmark.extra_info["ef_search"] = voc.hnsw_ef_search
        run = (lambda f: lambda: f(x))(run)
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["descriptors_per_s"] = len(x) / benchmark.stats.stats.median


# ----------------------------------------------------------------------------------------
# query latency
# ----------------------------------------------------------------------------------------
VOCAB = 100_000
N_IMAGES = 20_000
WORDS_PER_IMAGE = 500


def _bags(rng, n):
    out = []
    for _ in range(n):
        w = np.minimum(rng.zipf(1.2, WORDS_PER_IMAGE) - 1, VOCAB - 1)
        w = (w * 7919) % VOCAB  # spread popular words
        u, c = np.unique(w, return_counts=True)
        out.append((u.astype(np.int64), c.astype(np.float32)))
    return out


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    return _bags(rng, N_IMAGES), _bags(rng, 20)


def test_query_roiret_invertedfile(benchmark, corpus):
    pytest.importorskip("roiret._kernels")
    from roiret._kernels import InvertedFile

    db, queries = corpus
    ivf = InvertedFile(VOCAB)
    ivf.add(np.arange(len(db), dtype=np.int64), *bags_to_csr(db))
    ivf.search(*queries[0], 100)  # merge pending additions outside the timing

    def run():
        for w, c in queries:
            ivf.search(w, c, 100)

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["ms_per_query"] = 1e3 * benchmark.stats.stats.median / len(queries)


def test_query_scipy_sparse(benchmark, corpus):
    sp = pytest.importorskip("scipy.sparse")
    db, queries = corpus
    off, w, c = bags_to_csr(db)
    C = sp.csr_matrix((c, w, off), shape=(len(db), VOCAB), dtype=np.float64)
    df = np.bincount(w, minlength=VOCAB)
    idf = np.where(df > 0, np.log(len(db) / np.maximum(df, 1)), 0.0)
    D = sp.csr_matrix(C.multiply(idf[None, :]))
    norms = np.sqrt(np.asarray(D.multiply(D).sum(1)).ravel())
    D = sp.csr_matrix(sp.diags(1 / np.maximum(norms, 1e-30)) @ D)
    Dt = D.T.tocsr()  # word-major, like postings

    def run():
        for qw, qc in queries:
            q = qc * idf[qw]
            q = q / np.linalg.norm(q)
            s = Dt[qw].T @ q
            top = np.argpartition(-s, 100)[:100]
            top[np.argsort(-s[top], kind="stable")]

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["ms_per_query"] = 1e3 * benchmark.stats.stats.median / len(queries)
