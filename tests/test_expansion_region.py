"""Query expansion from the query's region of each verified image (``qe_margin``): the
mapped box against hand-checked cases, the parameter's checks; the restricted reads and
the rankings are tested on built indexes in test_retriever.py and test_sharded.py."""

from __future__ import annotations

import numpy as np
import pytest

from roiret.params import CONFIGURED, DEFAULT_QE_MARGIN, SearchParams, VerifyParams
from roiret.search.config import RetrieverConfig
from roiret.search.expansion import as_boxes, expanded_terms, expansion_box, inside_box

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def test_the_box_of_the_query_features_grown_by_the_margin():
    xy = np.array([[10, 20], [30, 60], [15, 25]], np.float32)  # extent 10..30 x 20..60
    assert expansion_box(IDENTITY, xy, 0.0).tolist() == [10, 20, 30, 60]
    # 20 wide, 40 high: half of each added on every side
    assert expansion_box(IDENTITY, xy, 0.5).tolist() == [0, 0, 40, 80]
    assert expansion_box(IDENTITY, xy, 2).tolist() == [-30, -60, 70, 140]


def test_the_corners_are_mapped_by_the_affine():
    # (x, y) -> (100 - 2y, 5 + 2x): scaled by 2, turned by 90 degrees, shifted
    a = np.array([[0.0, -2.0, 100.0], [2.0, 0.0, 5.0]])
    xy = np.array([[10.0, 20.0], [30.0, 60.0]])
    # corners (10,20) -> (60,25), (30,20) -> (60,65), (10,60) -> (-20,25), (30,60) -> (-20,65)
    assert np.allclose(expansion_box(a, xy, 0.0), [-20, 25, 60, 65])
    assert np.allclose(expansion_box(a, xy, 0.25), [-40, 15, 80, 75])
    # a shear maps the box to a parallelogram: its bounding box
    s = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0]])
    assert np.allclose(expansion_box(s, xy, 0.0), [20, 20, 60, 60])


def test_a_failed_verification_or_no_query_feature_gives_an_empty_box():
    xy = np.array([[1.0, 2.0]])
    for a in (np.full((2, 3), np.nan), np.array([[1.0, 0, np.inf], [0, 1, 0]])):
        box = expansion_box(a, xy, 1.0)
        assert box.shape == (4,) and np.isnan(box).all()
        assert not inside_box(np.array([[0.0, 0.0], [1.0, 2.0]]), box).any()
    assert np.isnan(expansion_box(IDENTITY, np.zeros((0, 2)), 1.0)).all()


def test_inside_box_counts_the_borders():
    pts = np.array([[0, 0], [10, 5], [10.001, 5], [5, -0.001], [3, 3]])
    assert inside_box(pts, [0, 0, 10, 5]).tolist() == [True, True, False, False, True]
    assert inside_box(np.zeros((0, 2)), [0, 0, 1, 1]).shape == (0,)


def test_boxes_are_checked():
    assert as_boxes([[0, 0, 1, 1], [np.nan] * 4], 2).dtype == np.float64
    with pytest.raises(ValueError, match=r"expected shape \(2, 4\)"):
        as_boxes([[0, 0, 1, 1]], 2)
    with pytest.raises(ValueError, match="finite"):
        as_boxes([[0, 0, np.inf, 1]], 1)
    with pytest.raises(ValueError, match="boxes"):
        as_boxes([["a", 0, 1, 1]], 1)


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), "1", True])
def test_a_bad_margin_is_refused_everywhere(bad):
    for make in (VerifyParams, SearchParams, RetrieverConfig):
        with pytest.raises(ValueError, match="qe_margin"):
            make(qe_margin=bad)


def test_the_margin_through_configuration_and_overrides():
    assert VerifyParams().qe_margin == DEFAULT_QE_MARGIN == RetrieverConfig().qe_margin == 1.0
    c = RetrieverConfig(qe_margin=2)
    assert c.verify.qe_margin == 2.0 and isinstance(c.qe_margin, float)
    assert RetrieverConfig.from_dict(c.to_dict()) == c
    whole = RetrieverConfig(qe_margin=None)  # whole images, saved as such
    assert RetrieverConfig.from_dict(whole.to_dict()).qe_margin is None
    old = c.to_dict()
    del old["qe_margin"]  # a manifest written before the setting existed: today's default
    assert RetrieverConfig.from_dict(old).qe_margin == DEFAULT_QE_MARGIN
    assert SearchParams().qe_margin is CONFIGURED
    assert SearchParams().verify(c.verify).qe_margin == 2.0
    assert SearchParams(qe_margin=None).verify(c.verify).qe_margin is None
    assert SearchParams.of(None, qe_margin=0).verify(VerifyParams()).qe_margin == 0.0


def test_an_image_with_no_feature_in_its_box_adds_no_term():
    """A verified image whose box holds none of its features brings an empty bag: the
    expanded query is the others' terms, each bag still weighted 1 / (number of bags)."""
    idf = np.array([0.5, 1.0, 2.0, 4.0])
    q = (np.array([0, 2]), np.array([[1, 2], [3, 4]], np.uint64))  # 128-bit signatures: 2 words
    img = (np.array([1, 2, 3]), np.arange(6, dtype=np.uint64).reshape(3, 2))
    empty = (np.zeros(0, np.int64), np.zeros((0, 2), np.uint64))
    w, sig, wt = expanded_terms([q, empty, img], idf)
    assert w.tolist() == [0, 2, 1, 2, 3] and sig.shape == (5, 2)
    assert np.array_equal(sig, np.concatenate([q[1], img[1]]))
    np.testing.assert_allclose(wt[:2], 1 / np.sqrt(2.5) / 3, rtol=1e-6)  # the query's norm over 3 bags
    np.testing.assert_allclose(wt[2:], 1 / np.sqrt(7.0) / 3, rtol=1e-6)
    flat = (np.zeros(0, np.int64), np.zeros(0, np.uint64))  # as a reader may return it: 1-D
    w2, sig2, wt2 = expanded_terms([q, flat, img], idf)
    assert np.array_equal(w2, w) and np.array_equal(sig2, sig) and np.array_equal(wt2, wt)
