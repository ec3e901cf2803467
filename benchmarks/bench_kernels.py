"""Kernel throughput, each case side by side with the library a user would otherwise pick.

Run (single-threaded, as the goals are stated):

    pytest benchmarks/bench_kernels.py --benchmark-only --benchmark-json=out/kernels.json
    python benchmarks/report.py out/kernels.json

Groups (pytest-benchmark ``group``) pair roiret with its peer on identical data:

* ``cross_match-<bits>``: 20 query RoI codes x 1000 images x 20 RoIs. roiret's grouped
  cross-match (per-image best pair + votes) vs faiss ``IndexBinaryFlat.search(k=1)`` over
  the same 20 000 codes (the same 400 000 distances, without the per-image grouping).
* ``knn-1M-256``: 1 query x 1 000 000 codes, k = 1: ``hamming_knn`` vs faiss.
* ``select_rois``: 64 images x 256 boxes, K = 20, T_iou = 0.95: ``select_rois`` vs
  ``torchvision.ops.batched_nms`` + per-image top-K (after the same area/aspect filter).
* ``ivf-<images>x<words>``: TF-IDF top-100 on Zipf-distributed postings: ``InvertedFile``
  vs a ``scipy.sparse`` inverted matrix (words x images CSR) product + ``argpartition``.
* ``spatial_verify``: one query of 1000 features against R = 100 candidate images of 1000
  quantised features each, every image feature sharing a visual word with the query, 15 %
  of them placed by a planted similarity (scale 0.6-1.0, rotation +-30 degrees, 1 px
  noise), the rest at random: about 1000 tentative correspondences per candidate (2 per
  word at most), 15 % inliers, threshold 0.03 x 1024 px. ``spatial_verify`` (all 100 in one
  call: correspondences, all hypotheses, 3 LO steps) vs a loop over the candidates of
  OpenCV ``estimateAffinePartial2D(method=RANSAC)`` (similarity, 2-point samples) and of
  ``estimateAffine2D(method=USAC_MAGSAC)`` (``estimateAffinePartial2D`` refuses USAC
  methods in OpenCV 5), both on the same correspondences, built outside the timed part.
"""

from __future__ import annotations

import numpy as np
import pytest

import roiret
from roiret._kernels import spatial_verify

faiss = pytest.importorskip("faiss")
torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
sp = pytest.importorskip("scipy.sparse")
cv2 = pytest.importorskip("cv2")


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    roiret.set_num_threads(1)
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    yield
    roiret.set_num_threads(None)
    cv2.setNumThreads(cv_threads)


# ---------------------------------------------------------------------------------------
# Hamming
# ---------------------------------------------------------------------------------------
def _codes(rng, n, bits):
    return rng.integers(0, 2**64, size=(n, bits // 64), dtype=np.uint64)


@pytest.fixture(scope="module", params=[256, 1024, 4096])
def rois(request):
    bits = request.param
    rng = np.random.default_rng(bits)
    db = _codes(rng, 1000 * 20, bits)
    q = _codes(rng, 20, bits)
    offsets = np.arange(0, 1000 * 20 + 1, 20, dtype=np.int64)
    index = faiss.IndexBinaryFlat(bits)
    index.add(db.view(np.uint8))
    return bits, q, db, offsets, index


@pytest.mark.parametrize("lib", ["roiret", "faiss"])
def test_cross_match(benchmark, rois, lib):
    bits, q, db, offsets, index = rois
    benchmark.group = f"cross_match-{bits}"
    benchmark.extra_info.update(lib=lib, peer="faiss", simd=roiret.simd_level(), distances=len(q) * len(db))
    if lib == "roiret":
        r = benchmark(roiret.cross_match, q, db, offsets, bits, threads=1)
        assert len(r.score) == 1000
    else:
        d, i = benchmark(index.search, q.view(np.uint8), 1)
        assert d.shape == (20, 1)


@pytest.fixture(scope="module")
def million():
    rng = np.random.default_rng(0)
    db = _codes(rng, 1_000_000, 256)
    q = _codes(rng, 1, 256)
    index = faiss.IndexBinaryFlat(256)
    index.add(db.view(np.uint8))
    return q, db, index


@pytest.mark.parametrize("lib", ["roiret", "faiss"])
def test_knn_1m(benchmark, million, lib):
    q, db, index = million
    benchmark.group = "knn-1M-256"
    benchmark.extra_info.update(lib=lib, peer="faiss", simd=roiret.simd_level())
    if lib == "roiret":
        d, i = benchmark(roiret.hamming_knn, q, db, 1, threads=1)
        fd, fi = index.search(q.view(np.uint8), 1)
        assert d[0, 0] == fd[0, 0]
    else:
        benchmark(index.search, q.view(np.uint8), 1)


# ---------------------------------------------------------------------------------------
# RoI selection
# ---------------------------------------------------------------------------------------
K, T_MIN, T_RATE, T_IOU = 20, 0.01, 3.0, 0.95


@pytest.fixture(scope="module")
def boxes():
    rng = np.random.default_rng(1)
    B, D, S = 64, 256, 31.0  # a 500 px image has a ~31 x 31 AlexNet conv5 map
    xy = np.sort(rng.uniform(0, S, size=(B, D, 2, 2)), axis=2)  # x1 < x2, y1 < y2
    b = np.stack([xy[..., 0, 0], xy[..., 0, 1], xy[..., 1, 0], xy[..., 1, 1]], -1).astype(np.float32)
    s = rng.uniform(0, 100, size=(B, D)).astype(np.float32)
    sizes = np.full((B, 2), S, np.float32)
    return b, s, sizes


def torchvision_select(b, s, sizes):
    """The torchvision way: filter, batched NMS over all boxes, then the first K per image."""
    B, D = s.shape
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    area = w * h
    ok = (w > 0) & (h > 0) & (area / (sizes[:, :1] * sizes[:, 1:]) >= T_MIN)
    ok &= torch.maximum(w, h) / torch.minimum(w, h).clamp_min(1e-12) <= T_RATE
    img = torch.arange(B).unsqueeze(1).expand(B, D)[ok]
    flat = torch.arange(B * D).reshape(B, D)[ok]
    keep = torchvision.ops.batched_nms(b[ok], s[ok], img, T_IOU)  # sorted by score
    kimg = img[keep]
    order = torch.argsort(kimg, stable=True)
    kimg, kflat = kimg[order], flat[keep][order]
    start = torch.searchsorted(kimg, torch.arange(B))
    rank = torch.arange(len(kimg)) - start[kimg]
    return kflat[rank < K]


@pytest.mark.parametrize("lib", ["roiret", "torchvision"])
def test_select_rois(benchmark, boxes, lib):
    b, s, sizes = boxes
    benchmark.group = "select_rois"
    benchmark.extra_info.update(lib=lib, peer="torchvision")
    if lib == "roiret":
        out = benchmark(roiret.select_rois, b, s, sizes, K, T_MIN, T_RATE, T_IOU, threads=1)
        assert out.shape == (64, K)
    else:
        tb, ts, tz = torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(sizes)
        benchmark(torchvision_select, tb, ts, tz)


# ---------------------------------------------------------------------------------------
# Inverted file
# ---------------------------------------------------------------------------------------
def zipf_bags(rng, n_images, words_per_image, vocab, a=1.2):
    """Per image, `words_per_image` draws from a Zipf law over the vocabulary, as (word,
    count) runs. Returns CSR (offsets, words, counts)."""
    ranks = rng.zipf(a, size=(n_images, words_per_image)) - 1
    perm = np.random.default_rng(0).permutation(vocab)  # the same word ranking for every call
    w = perm[ranks % vocab].astype(np.int64)
    w.sort(axis=1)
    new = np.ones_like(w, dtype=bool)
    new[:, 1:] = w[:, 1:] != w[:, :-1]
    starts = np.flatnonzero(new.ravel())
    words = w.ravel()[starts]
    counts = np.diff(np.append(starts, w.size)).astype(np.float32)
    per_image = new.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(per_image)]).astype(np.int64)
    return offsets, words, counts


class ScipyTfidf:
    """The scipy.sparse way: words x images CSR of normalised tf-idf weights."""

    def __init__(self, offsets, words, counts, vocab):
        n = len(offsets) - 1
        rows = np.repeat(np.arange(n), np.diff(offsets))
        X = sp.csr_matrix((counts, (rows, words)), shape=(n, vocab), dtype=np.float32)
        df = np.bincount(words, minlength=vocab)
        self.idf = np.where(df > 0, np.log(n / np.maximum(df, 1)), 0).astype(np.float32)
        X = X.multiply(self.idf).tocsr()
        norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
        X = sp.diags(1 / np.maximum(norms, 1e-12)).astype(np.float32) @ X
        X.eliminate_zeros()  # words in every image (idf 0) carry no weight: drop them too
        self.W = X.T.tocsr()  # inverted: one row (posting list) per word
        self.vocab = vocab

    def search(self, words, counts, top_n):
        """Sparse query row times the inverted matrix (a CSR x CSR product)."""
        q = sp.csr_matrix((counts * self.idf[words], (np.zeros_like(words), words)), shape=(1, self.vocab))
        q = q / max(sp.linalg.norm(q), 1e-12)
        scores = (q @ self.W).toarray().ravel()
        top = np.argpartition(-scores, top_n)[:top_n]
        return top[np.argsort(-scores[top], kind="stable")], scores

    def search_gather(self, words, counts, top_n):
        """The faster scipy idiom: gather the query words' posting rows, then a sparse
        matrix - dense vector product."""
        q = counts * self.idf[words]
        q = q / max(np.linalg.norm(q), 1e-12)
        scores = self.W[words].T @ q
        top = np.argpartition(-scores, top_n)[:top_n]
        return top[np.argsort(-scores[top], kind="stable")], scores

    def nbytes(self):
        return self.W.data.nbytes + self.W.indices.nbytes + self.W.indptr.nbytes


@pytest.fixture(scope="module", params=[(5_000, 2_000, 100_000), (100_000, 1_000, 100_000)], ids=["5kx2k", "100kx1k"])
def ivf_case(request):
    import scipy.sparse.linalg  # noqa: F401  (sp.linalg.norm)

    n_images, per_image, vocab = request.param
    rng = np.random.default_rng(7)
    offsets, words, counts = zipf_bags(rng, n_images, per_image, vocab)
    ivf = roiret.InvertedFile(vocab)
    step = 10_000
    for a in range(0, n_images, step):
        b = min(n_images, a + step)
        o = offsets[a : b + 1]
        ivf.add(np.arange(a, b), o - o[0], words[o[0] : o[-1]], counts[o[0] : o[-1]])
    ref = ScipyTfidf(offsets, words, counts, vocab)
    q_off, q_words, q_counts = zipf_bags(np.random.default_rng(8), 1, per_image, vocab)
    ivf.search(q_words, q_counts, 100)  # merge pending additions before timing
    return f"{n_images // 1000}kx{per_image // 1000}k", ivf, ref, q_words, q_counts


@pytest.mark.parametrize("lib", ["roiret", "roiret-2threads", "scipy-product", "scipy-gather"])
def test_ivf_search(benchmark, ivf_case, lib):
    """roiret single-threaded (like scipy), and the same search split over 2 threads."""
    name, ivf, ref, qw, qc = ivf_case
    benchmark.group = f"ivf-{name}"
    nnz = ivf.num_postings
    peers = ["scipy-product", "scipy-gather"]
    if lib.startswith("roiret"):
        threads = 2 if lib == "roiret-2threads" else 1
        benchmark.extra_info.update(
            lib=lib,
            peer=peers,
            bytes_per_posting=ivf.memory_bytes() / nnz,
            postings_scanned=int(np.asarray(ivf.document_frequencies())[qw].sum()),
            threads=threads,
        )
        ids, scores = benchmark(ivf.search, qw, qc, 100, threads)
        top, s = ref.search_gather(qw, qc, 100)
        np.testing.assert_allclose(scores[:10], s[top[:10]], rtol=1e-4)
    else:
        benchmark.extra_info.update(lib=lib, peer=peers, bytes_per_posting=ref.nbytes() / nnz)
        benchmark(ref.search if lib == "scipy-product" else ref.search_gather, qw, qc, 100)


# ---------------------------------------------------------------------------------------
# Spatial verification
# ---------------------------------------------------------------------------------------
SV_FEATURES, SV_CANDIDATES, SV_SIDE, SV_INLIERS = 1000, 100, 1024.0, 0.15


def _sv_candidate(rng, qw, qxy, qs, qa):
    """One candidate's features: SV_INLIERS of them are query features moved by a random
    similarity about the image centre, the others share a random query word at a random
    place, scale and orientation."""
    n_in = int(SV_INLIERS * SV_FEATURES)
    s, t = rng.uniform(0.6, 1.0), np.deg2rad(rng.uniform(-30, 30))
    lin = s * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    c = np.array([SV_SIDE / 2, SV_SIDE * 3 / 8])
    pick = rng.choice(SV_FEATURES, n_in, replace=False)
    xy = (qxy[pick] - c) @ lin.T + c + rng.normal(0, 1.0, (n_in, 2))
    xy = np.concatenate([xy, rng.uniform(0, [SV_SIDE, SV_SIDE * 3 / 4], (SV_FEATURES - n_in, 2))])
    sizes = np.concatenate(
        [qs[pick] * s * np.exp(rng.normal(0, 0.05, n_in)), np.exp(rng.uniform(0.5, 4, SV_FEATURES - n_in))]
    )
    angles = np.concatenate(
        [qa[pick] + np.rad2deg(t) + rng.normal(0, 3, n_in), rng.uniform(0, 360, SV_FEATURES - n_in)]
    )
    words = np.concatenate([qw[pick], rng.choice(qw, SV_FEATURES - n_in)]).astype(np.uint32)
    o = np.argsort(words, kind="stable")
    xq = np.clip(np.rint(xy / SV_SIDE * 65535), 0, 65535).astype(np.uint16)
    sq = np.clip(np.rint(16 * (np.log2(sizes) + 2)), 0, 255).astype(np.uint8)
    aq = (np.rint(np.mod(angles, 360) * 256 / 360).astype(np.int64) % 256).astype(np.uint8)
    return words[o], xq[o], sq[o], aq[o]


def _sv_pairs(qw, words, P=2, max_m=1000):
    """The kernel's tentative correspondences (query index, image index), for the peers."""
    by_q, by_d = {}, {}
    for i in np.argsort(qw, kind="stable").tolist():
        by_q.setdefault(int(qw[i]), []).append(i)
    for k, w in enumerate(words.tolist()):
        by_d.setdefault(w, []).append(k)
    pairs = [(i, k) for w in sorted(set(by_q) & set(by_d)) for i in by_q[w][:P] for k in by_d[w][:P]]
    return np.array(pairs[:max_m])


@pytest.fixture(scope="module")
def sv_case():
    rng = np.random.default_rng(11)
    qw = rng.choice(1_000_000, SV_FEATURES, replace=False).astype(np.uint32)
    qxy = rng.uniform(0, [SV_SIDE, SV_SIDE * 3 / 4], (SV_FEATURES, 2)).astype(np.float32)
    qs = np.exp(rng.uniform(0.5, 4, SV_FEATURES)).astype(np.float32)
    qa = rng.uniform(0, 360, SV_FEATURES).astype(np.float32)
    cands = [_sv_candidate(rng, qw, qxy, qs, qa) for _ in range(SV_CANDIDATES)]
    db = [np.concatenate([c[i] for c in cands]) for i in range(4)]
    offsets = np.arange(0, SV_FEATURES * SV_CANDIDATES + 1, SV_FEATURES, dtype=np.int64)
    sides = np.full(SV_CANDIDATES, SV_SIDE, np.float32)
    args = (qw, qxy, qs, qa, *db, offsets, sides, np.arange(SV_CANDIDATES))
    peer = []  # (query points, dequantised image points) per candidate
    for words, xq, _, _ in cands:
        pairs = _sv_pairs(qw, words)
        peer.append((qxy[pairs[:, 0]].astype(np.float64), xq[pairs[:, 1]].astype(np.float64) / 65535 * SV_SIDE))
    return args, peer


def _opencv_loop(peer, estimate, method):
    return [estimate(src, dst, method=method, ransacReprojThreshold=0.03 * SV_SIDE) for src, dst in peer]


@pytest.mark.parametrize("lib", ["roiret", "roiret-2threads", "opencv-ransac-similarity", "opencv-magsac-affine"])
def test_spatial_verify(benchmark, sv_case, lib):
    args, peer = sv_case
    benchmark.group = "spatial_verify"
    peers = ["opencv-ransac-similarity", "opencv-magsac-affine"]
    correspondences = int(sum(len(src) for src, _ in peer))
    if lib.startswith("roiret"):
        threads = 2 if lib == "roiret-2threads" else 1
        benchmark.extra_info.update(lib=lib, peer=peers, threads=threads, correspondences=correspondences)
        r = benchmark(spatial_verify, *args, threads=threads)
        assert (r.inliers >= 0.8 * SV_INLIERS * SV_FEATURES).all(), r.inliers.min()
        benchmark.extra_info.update(median_inliers=float(np.median(r.inliers)))
    else:
        benchmark.extra_info.update(lib=lib, peer=None, correspondences=correspondences)
        estimate, method = (
            (cv2.estimateAffinePartial2D, cv2.RANSAC)
            if lib == "opencv-ransac-similarity"
            else (cv2.estimateAffine2D, cv2.USAC_MAGSAC)
        )
        out = benchmark(_opencv_loop, peer, estimate, method)
        inliers = [int(mask.sum()) for _, mask in out]
        benchmark.extra_info.update(median_inliers=float(np.median(inliers)))
        assert np.median(inliers) >= 0.8 * SV_INLIERS * SV_FEATURES
