"""The ASMK first stage in Python: Hamming-embedding signatures against a direct NumPy
computation, multiple assignment against brute force, BowIndex search against the NumPy
kernel reference, average query expansion as the mean of normalised kernel scores,
persistence (and damage), the Retriever's default and TF-IDF configurations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _reference import asmk_index_ref, asmk_scores_ref, top_ref
from roiret import IndexFormatError, RetrieverConfig
from roiret.bow import BowIndex, LocalFeatures, Vocabulary
from roiret.bow.embedding import HammingEmbedding, pack_signs
from roiret.bow.index import query_weights
from roiret.params import AsmkParams, auto_vocab_size
from roiret.search.expansion import expanded_terms

D = 128  # descriptor dimension of the synthetic data (RootSIFT's)


def _data(seed=0, n=600, k=12):
    rng = np.random.default_rng(seed)
    cents = rng.normal(size=(k, D)).astype(np.float32) * 4
    x = (cents[rng.integers(0, k, n)] + rng.normal(size=(n, D))).astype(np.float32)
    return cents, x


def _signature_loop(emb, x, words):
    """Per word: the sum of P (x - q_c) - t_c over its descriptors, bit i = (sum_i > 0), packed
    bit by bit (bit i of the code in bit i % 64 of word i // 64)."""
    P = emb.projection.astype(np.float64)
    out = {}
    for c in sorted(set(int(w) for w in words)):
        z = np.zeros(emb.bits)
        for xi, wi in zip(x, words):
            if wi == c:
                z += P @ (xi.astype(np.float64) - emb._centroids[c])
                if emb.thresholds is not None:
                    z -= emb.thresholds[c]
        code = np.zeros(emb.words, np.uint64)
        for i in range(emb.bits):
            if z[i] > 0:
                code[i // 64] |= np.uint64(1) << np.uint64(i % 64)
        out[c] = code
    return out


@pytest.mark.parametrize("bits", [1, 7, 16])
@pytest.mark.parametrize("thresholds", ["zero", "median"])
def test_signatures_match_a_direct_computation(bits, thresholds):
    cents, x = _data()
    words = Vocabulary(cents).assign_exact(x)
    emb = HammingEmbedding.fit(cents, x, words, bits=bits, thresholds=thresholds, seed=3)
    assert np.allclose(emb.projection @ emb.projection.T, np.eye(bits), atol=1e-5)
    if thresholds == "median":  # the per-word median of the projected residuals
        z = (x - cents[words]) @ emb.projection.T
        for c in range(len(cents)):
            assert np.allclose(emb.thresholds[c], np.median(z[words == c], axis=0), atol=1e-5)
    sub = slice(0, 50)
    u, sigs = emb.aggregate(x[sub], words[sub])
    want = _signature_loop(emb, x[sub], words[sub])
    assert u.tolist() == sorted(want) and sigs.dtype == np.uint64 and sigs.shape == (len(u), emb.words)
    for c, s in zip(u, sigs):
        assert s.tolist() == want[int(c)].tolist()


def test_multiple_assignment_sums_every_assigned_word():
    cents, x = _data(1)
    emb = HammingEmbedding.fit(cents, bits=16, seed=0)
    voc = Vocabulary(cents)
    m = voc.assign_multiple(x[:40], 3, ratio=1.3)
    # against brute force: the 3 nearest, nearest first, those beyond 1.3 x the nearest dropped
    d = ((x[:40, None, :].astype(np.float64) - cents[None].astype(np.float64)) ** 2).sum(-1)
    near = np.argsort(d, axis=1, kind="stable")[:, :3]
    far = np.take_along_axis(d, near, 1) > 1.3 * d[np.arange(40), near[:, 0]][:, None]
    assert np.array_equal(m, np.where(far, -1, near))
    u, sigs = emb.aggregate(x[:40], m)
    rows, cols = np.nonzero(m >= 0)
    u2, sigs2 = emb.aggregate(x[:40][rows], m[rows, cols])
    assert u.tolist() == u2.tolist() and np.array_equal(sigs, sigs2)
    assert np.array_equal(voc.assign_multiple(x[:5], 1)[:, 0], voc.assign(x[:5]))
    # the nearest of m is the nearest word, also through HNSW (what assign_and_bag relies on)
    hnsw = Vocabulary(cents, hnsw_threshold=2)
    assert hnsw.approximate and np.array_equal(hnsw.assign_multiple(x, 3)[:, 0], hnsw.assign(x))


def test_multiple_assignment_either_way_on_request():
    """``approximate=True`` searches the HNSW graph even below ``hnsw_threshold`` (built on
    first use; here it finds the brute-force answer), ``False`` searches exactly even above."""
    cents, x = _data(3, n=2000, k=300)
    d = ((x[:, None, :].astype(np.float64) - cents[None].astype(np.float64)) ** 2).sum(-1)
    near = np.argsort(d, axis=1, kind="stable")[:, :3]
    far = np.take_along_axis(d, near, 1) > 1.5 * d[np.arange(len(x)), near[:, 0]][:, None]
    want = np.where(far, -1, near)
    small = Vocabulary(cents)  # exact by its own rule
    assert not small.approximate and not small.graph_built
    got = small.assign_multiple(x, 3, approximate=True)
    assert small.graph_built and (got == want).all(axis=1).mean() > 0.99
    assert np.array_equal(small.assign_multiple(x, 3), want)
    big = Vocabulary(cents, hnsw_threshold=2)
    assert big.approximate and np.array_equal(big.assign_multiple(x, 3, approximate=False), want)


def test_query_multiple_assignment_uses_the_graph_from_the_threshold(asmk_index, monkeypatch):
    """From DEFAULT_QUERY_HNSW_THRESHOLD words a query's nearest words come from the HNSW
    graph, through assign_and_bag and bag alike; below it, and for the database, the
    vocabulary's own rule."""
    import roiret.bow.encoder as bi

    bow, feats = asmk_index
    calls = []
    original = Vocabulary.assign_multiple

    def spy(self, x, m, ratio=1.5, *, approximate=None):
        calls.append(approximate)
        return original(self, x, m, ratio, approximate=approximate)

    monkeypatch.setattr(Vocabulary, "assign_multiple", spy)
    exact_words, exact_bag = bow.encoder.assign_and_bag(feats[4], query=True)
    b2 = BowIndex(bow.vocabulary, embedding=bow.embedding, asmk=bow.asmk.replace(db_assignments=2))
    b2.encoder.assign_and_bag(feats[4], query=False)
    assert calls == [None, None]
    monkeypatch.setattr(bi, "DEFAULT_QUERY_HNSW_THRESHOLD", bow.vocabulary.size)
    words, (w, s) = bow.encoder.assign_and_bag(feats[4], query=True)
    w2, s2 = bow.encoder.bag(feats[4], words, query=True)
    b2.encoder.assign_and_bag(feats[4], query=False)
    assert calls[2:] == [True, True, None]
    # 40 well-separated words: the graph finds what brute force finds
    assert np.array_equal(words, exact_words) and np.array_equal(w, exact_bag[0]) and np.array_equal(s, exact_bag[1])
    assert np.array_equal(w, w2) and np.array_equal(s, s2)


def test_verification_sub_cells_are_each_words_k_means():
    cents, x = _data(4, n=4000, k=6)
    words = Vocabulary(cents).assign_exact(x)
    emb = HammingEmbedding.fit(cents, x, words, bits=16, cells=4, seed=2)
    assert emb.cells == 4 and emb.fine.shape == (6, 4, 16)
    labels = emb.fine_words(x, words)
    assert labels.dtype == np.uint32 and np.array_equal(labels // 4, words)
    # the direct computation: each descriptor's nearest sub-centroid of its own word
    z = (x.astype(np.float64) - cents[words]) @ emb.projection[:16].T.astype(np.float64)
    for i in range(0, len(x), 97):
        d = ((emb.fine[words[i]] - z[i]) ** 2).sum(1)
        assert labels[i] % 4 == int(np.argmin(d))
    # k-means: the sub-cells cut the distortion well below each word's own mean, and are
    # near a fixed point (each sub-centroid close to the mean of the members it now has)
    within = sum(((z[words == c] - z[words == c].mean(0)) ** 2).sum() for c in range(6))
    cells = sum(((z[i] - emb.fine[words[i], labels[i] % 4]) ** 2).sum() for i in range(len(x)))
    assert cells < 0.95 * within  # isotropic noise: a modest cut
    moved = [
        np.linalg.norm(emb.fine[c, j] - z[(words == c) & (labels % 4 == j)].mean(0))
        for c in range(6)
        for j in range(4)
        if ((words == c) & (labels % 4 == j)).any()
    ]
    assert np.median(moved) < 0.05 * np.sqrt(within / len(x))
    back = HammingEmbedding.from_state(emb.state_dict(), cents)
    assert np.array_equal(back.fine_words(x, words), labels)
    plain = HammingEmbedding.fit(cents, bits=16)
    assert np.array_equal(plain.fine_words(x, words), words.astype(np.uint32))


def test_bad_settings_are_refused():
    cents, x = _data()
    with pytest.raises(ValueError, match="bits"):
        HammingEmbedding.fit(cents, bits=D + 1)
    with pytest.raises(ValueError, match="thresholds"):
        HammingEmbedding.fit(cents, bits=8, thresholds="mean")
    with pytest.raises(ValueError, match="need training descriptors"):
        HammingEmbedding.fit(cents, bits=8, thresholds="median")
    emb = HammingEmbedding.fit(cents, bits=8)
    with pytest.raises(ValueError, match="descriptors"):
        emb.aggregate(x[:, :5], np.zeros(len(x), np.int64))
    with pytest.raises(ValueError, match="words"):
        emb.aggregate(x, np.full(len(x), len(cents)))
    with pytest.raises(ValueError, match="m: expected"):
        Vocabulary(cents).assign_multiple(x, 0)
    with pytest.raises(ValueError, match="asmk_tau"):
        AsmkParams(asmk_tau=1.0)
    with pytest.raises(ValueError, match="asmk_alpha"):
        AsmkParams(asmk_alpha=0)
    with pytest.raises(ValueError, match="first_stage"):
        RetrieverConfig(first_stage="bm25")


def test_auto_vocabulary_is_coarser_for_asmk():
    assert auto_vocab_size(800_000) == 50_000 and auto_vocab_size(800_000, "asmk") == 8_000
    assert auto_vocab_size(40_000, "asmk") == 1000  # at least 1 000 words ...
    assert auto_vocab_size(2_000, "asmk") == 500  # ... when there are 4 descriptors a word for them


def _features(x, rng):
    n = len(x)
    return LocalFeatures(
        xy=rng.uniform(0, 100, (n, 2)).astype(np.float32),
        sizes=np.ones(n, np.float32),
        descriptors=x,
        image_size=(100, 100),
        kind="rootsift",
    )


@pytest.fixture(scope="module")
def asmk_index():
    cents, x = _data(2, n=3000, k=40)
    rng = np.random.default_rng(5)
    voc = Vocabulary(cents, info={"descriptor": "rootsift"})
    emb = HammingEmbedding.fit(cents, bits=100, seed=1)  # two words, the second's tail masked
    bow = BowIndex(voc, embedding=emb, asmk=AsmkParams(query_assignments=2, asmk_alpha=3.0, asmk_tau=-0.25))
    feats = [_features(x[i * 100 : (i + 1) * 100], rng) for i in range(30)]
    return bow, feats


def _kernel_oracle(bow, feats, q_words, q_sigs, q_weights):
    bags = [bow.encoder.bag(f, bow.vocabulary.assign(f.descriptors)) for f in feats]
    offsets = np.concatenate([[0], np.cumsum([len(w) for w, _ in bags])])
    ref = asmk_index_ref(
        offsets,
        np.concatenate([w for w, _ in bags]),
        np.concatenate([s for _, s in bags]),
        bow.embedding.bits,
        bow.vocabulary.size,
    )
    return ref, asmk_scores_ref(ref, q_words, q_sigs, q_weights, bow.asmk.asmk_alpha, bow.asmk.asmk_tau)


def _add(bow, feats):
    from roiret.bow import bags_to_csr

    bags = [bow.encoder.bag(f, bow.vocabulary.assign(f.descriptors)) for f in feats]
    return bow.add_bags(np.arange(len(feats)), *bags_to_csr(bags))


def test_bow_search_matches_the_kernel_reference(asmk_index):
    bow, feats = asmk_index
    b = BowIndex(bow.vocabulary, embedding=bow.embedding, asmk=bow.asmk)
    _add(b, feats)
    q = feats[7]
    words, sigs = b.encoder.bag(q, b.vocabulary.assign(q.descriptors), query=True)
    ref, scores = _kernel_oracle(b, feats, words, sigs, query_weights(words, np.asarray(b.inverted_file.idf())))
    assert np.allclose(np.asarray(b.inverted_file.idf()), ref.idf)
    ids, got = b.search_bag(words, sigs, top=10)
    want_ids, want = top_ref(scores, np.arange(len(feats)), 10)
    assert ids.tolist() == want_ids.tolist() and ids[0] == 7
    assert np.allclose(got, want, rtol=1e-6)
    _, exact = b.search_exact(words, sigs, 10)
    assert np.allclose(exact, want, rtol=1e-12)


def test_assign_and_bag_is_assign_then_bag(asmk_index):
    bow, feats = asmk_index
    for query in (False, True):
        words, (w, s) = bow.encoder.assign_and_bag(feats[2], query=query)
        assert np.array_equal(words, bow.encoder.assign_features(feats[2]))
        w2, s2 = bow.encoder.bag(feats[2], words, query=query)
        assert np.array_equal(w, w2) and np.array_equal(s, s2)
    with pytest.raises(ValueError, match="first_stage='asmk' needs an embedding"):
        BowIndex(bow.vocabulary, asmk=AsmkParams())


def test_expanded_query_scores_the_mean_of_normalised_kernels(asmk_index):
    bow, feats = asmk_index
    b = BowIndex(bow.vocabulary, embedding=bow.embedding, asmk=bow.asmk)
    _add(b, feats)
    idf = np.asarray(b.inverted_file.idf())
    bags = [b.encoder.bag(feats[i], b.vocabulary.assign(feats[i].descriptors), query=True) for i in (3, 11, 12)]
    stored = b.bag_of(11)
    assert np.array_equal(stored[0], b.encoder.bag(feats[11], b.vocabulary.assign(feats[11].descriptors))[0])
    words, sigs, weights = expanded_terms(bags, idf)
    _, exact = b.search_exact(words, sigs, len(feats), weights=weights)
    ids, _ = b.search_exact(words, sigs, len(feats), weights=weights)
    singles = np.zeros(len(feats))
    for w, s in bags:
        i, e = b.search_exact(w, s, len(feats))
        singles[i] += e / len(bags)
    assert np.allclose(exact, singles[ids], rtol=1e-6, atol=1e-12)  # weights are float32


def test_bow_index_save_load_and_damage(asmk_index, tmp_path):
    bow, feats = asmk_index
    b = BowIndex(bow.vocabulary, embedding=bow.embedding, asmk=bow.asmk)
    _add(b, feats)
    b.save(tmp_path / "i")
    back = BowIndex.load(tmp_path / "i")
    assert back.embedded and back.asmk == b.asmk and back.embedding.bits == 100
    q = feats[4]
    bag = b.encoder.bag(q, b.vocabulary.assign(q.descriptors), query=True)
    assert [x.tolist() for x in back.search_bag(*bag)] == [x.tolist() for x in b.search_bag(*bag)]
    manifest = json.loads((tmp_path / "i" / "manifest.json").read_text())
    emb_file = tmp_path / "i" / manifest["files"]["embedding"]["name"]
    data = bytearray(emb_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    emb_file.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="embedding"):
        BowIndex.load(tmp_path / "i")


def test_embedding_for_another_vocabulary_is_refused(tmp_path):
    cents, _ = _data()
    emb = HammingEmbedding.fit(cents, bits=8)
    emb.save(tmp_path / "e.npz")
    back = HammingEmbedding.load(tmp_path / "e.npz", cents)
    assert np.array_equal(back.projection, emb.projection) and back.thresholds is None
    with pytest.raises(IndexFormatError, match="made for"):
        HammingEmbedding.load(tmp_path / "e.npz", cents[:5])
    with pytest.raises(ValueError, match="embedding was made"):
        BowIndex(Vocabulary(cents[:5], info={"descriptor": "rootsift"}), embedding=emb)


def test_pack_signs_layout():
    z = np.zeros((1, 70))
    z[0, [0, 3, 64, 69]] = 1.0
    assert pack_signs(z).tolist() == [[(1 << 0) | (1 << 3), (1 << 0) | (1 << 5)]]


def test_paper_config_keeps_tfidf():
    assert RetrieverConfig().first_stage == "asmk"
    assert RetrieverConfig.paper().first_stage == "tfidf"


def test_bow_index_train_makes_an_embedded_index():
    import skimage.data

    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    bow = BowIndex.train(photos, "auto", asmk=AsmkParams(), progress=False, seed=1)
    assert bow.embedded and bow.embedding.bits == 128 and bow.vocabulary.size >= 100
    ids = bow.add(photos, progress=False)
    hits = bow.search(photos[1], top=3)
    assert hits.ids[0] == ids[1] and hits.scores[0] > 2 * hits.scores[1]
    plain = BowIndex.train(photos, 200, progress=False)
    assert not plain.embedded
