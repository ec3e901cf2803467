"""Hostile arguments to the public API (issue 21): boxes, ``top``, ids for ``add`` and
``remove``, ``add`` given one image instead of a list, arrays beyond the pixel limit. Each
is refused with a ValueError / TypeError (or an :class:`~roiret.errors.ImageError`) whose
message says what was expected and what came — and the index is exactly as before."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import _robust_index as RI
from roiret.bow.index import as_ids
from roiret.errors import ImageError
from roiret.io.images import SkippedImageWarning, check_box, image_list, load_image

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

#: an array claiming 10**10 pixels (28 GiB as uint8 RGB) that costs nothing to make
HUGE = np.broadcast_to(np.uint8(7), (100_000, 100_000, 3))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return RI.saved_index(tmp_path_factory.getbasetemp())


@pytest.fixture
def r(base):
    return RI.load(base)


def unchanged(r, base):
    """The retriever holds exactly what the saved index holds."""
    return RI.same_index(r, RI.load(base)) and r.ids.tolist() == list(range(6))


@pytest.mark.parametrize(
    "box, error, match",
    [
        ((0, 0, 10**400, 10), ValueError, r"must be finite, got \(0, 0, 100000\.\.\.\(401 digits\), 10\)"),
        ((0, 0, 1e400, 10), ValueError, "must be finite"),
        ((0, 0, float("nan"), 10), ValueError, "must be finite"),
        ((0, 0, "10", 10), TypeError, "expected four numbers"),
        ((0, 0, True, 10), TypeError, "expected four numbers"),
        ((0, 0, 10), TypeError, "expected four numbers"),
        ("0,0,10,10", TypeError, "expected four numbers"),
        (5, TypeError, "expected four numbers"),
        ((10, 0, 5, 10), ValueError, "x2 > x1"),
    ],
)
def test_bad_boxes(r, box, error, match):
    with pytest.raises(error, match=match):
        r.search(RI.photos()[0], box=box)
    with pytest.raises(error, match=match):
        check_box(box)


def test_good_boxes_of_every_number_type():
    want = (1.0, 2.0, 30.0, 40.0)
    for box in [(1, 2, 30, 40), np.array([1, 2, 30, 40], np.int64), (np.float32(1), 2.0, np.int8(30), 40)]:
        assert check_box(box) == want


@pytest.mark.parametrize(
    "settings, error, match",
    [
        (dict(R=-1), ValueError, "R must be a non-negative integer, got -1"),
        (dict(n=500), ValueError, "n must be <= N"),  # the configured N is 100: an n given is never cut
        (dict(fusion=2), ValueError, "fusion must be 'adaptive'"),
        (dict(params={"R": 0}), TypeError, "params: expected roiret.params.SearchParams, got dict"),
        (dict(radius=3), TypeError, "unknown search setting 'radius'"),
        (dict(top=0), ValueError, "top must be a positive integer"),
    ],
)
def test_search_settings_are_checked_before_the_query_is_read(r, tmp_path, settings, error, match):
    with pytest.raises(error, match=match):
        r.search(str(tmp_path / "no such query.jpg"), **settings)


def test_search_params_and_keywords_rank_alike(r):
    from roiret.params import SearchParams

    q = r.prepare_query(RI.photos()[0])
    key = lambda res: [(h.id, h.score, h.bow_score, h.inliers) for h in res.hits]  # noqa: E731
    for mode in ("exhaustive", "bow"):
        a = r.rank(q, top=len(r), params=SearchParams(mode=mode, R=0, qe=0))
        b = r.rank(q, top=len(r), mode=mode, R=0, qe=0)
        c = r.rank(q, top=len(r), params=SearchParams(mode=mode, R=50), R=0, qe=0)  # keywords on top
        assert key(a) == key(b) == key(c) and a.mode == mode
    assert key(r.search(RI.photos()[0], params=SearchParams(N=3, n=2))) == key(r.rank(q, N=3, n=2))


@pytest.mark.parametrize("top", [2.5, 3.0, float("inf"), float("nan"), True, 0, -1, "3"])
def test_top_must_be_a_positive_integer(r, top):
    q = r.prepare_query(RI.photos()[0])
    with pytest.raises(ValueError, match=r"top must be a positive integer, got"):
        r.rank(q, top=top)
    with pytest.raises(ValueError, match=r"top must be a positive integer, got"):
        r.bow.search(RI.photos()[0], top=top)


def test_top_of_any_integer_type(r):
    q = r.prepare_query(RI.photos()[0])
    assert len(r.rank(q, top=np.int64(2)).hits) == 2
    assert len(r.rank(q, top=2**70).hits) == len(r)  # more than the index holds: all of it


@pytest.mark.parametrize(
    "ids, error, match",
    [
        ([2**63], ValueError, "id 9223372036854775808 is outside the int64 range"),
        ([2**64 - 1], ValueError, "id 18446744073709551615 is outside the int64 range"),
        ([-(2**63) - 1], ValueError, "outside the int64 range"),
        (np.array([2**64 - 1], np.uint64), ValueError, "outside the int64 range"),
        ([1.5], TypeError, r"expected integers, got 1\.5 \(float\)"),
        ([7.0], TypeError, r"expected integers, got 7\.0"),
        (np.array([7.0]), TypeError, "expected integers, got dtype float64"),
        ([True], TypeError, r"expected integers, got True \(bool\)"),
        (np.array([True]), TypeError, "got dtype bool"),
        (["7"], TypeError, "expected integers, got '7'"),
        ("7", TypeError, "expected a sequence of integer ids, got str"),
        (7, TypeError, r"got int 7 \(wrap one id in a list\)"),
        ([[7]], TypeError, "expected integers"),
        ([7, 8], ValueError, "expected 1 ids"),
        ([3], ValueError, "image id 3 is already in the index"),
    ],
)
def test_bad_ids_for_add(r, base, ids, error, match):
    with pytest.raises(error, match=match):
        r.add([RI.photos()[6]], ids=ids)
    assert unchanged(r, base)


@pytest.mark.parametrize(
    "ids, error, match",
    [
        ([1.5], TypeError, r"expected integers, got 1\.5"),
        ("12", TypeError, "expected a sequence of integer ids, got str '12'"),
        (b"12", TypeError, "got bytes"),
        ([2**70], ValueError, "id 1180591620717411303424 is outside the int64 range"),
        (np.array([2**63], np.uint64), ValueError, "outside the int64 range"),
        ([True], TypeError, "got True"),
        (1, TypeError, "wrap one id in a list"),
        (np.array([[1, 2]]), ValueError, "1-D"),
        ([1, 99], KeyError, "image id 99 is not in the index"),
    ],
)
def test_bad_ids_for_remove(r, base, ids, error, match):
    with pytest.raises(error, match=match):
        r.remove(ids)
    assert unchanged(r, base)


def test_ids_of_every_integer_kind_are_taken():
    for ids in ([1, 2], (1, 2), range(1, 3), {1: 0, 2: 0}.keys(), np.array([1, 2], np.uint8), [np.int32(1), 2]):
        assert as_ids(ids).tolist() == [1, 2] and as_ids(ids).dtype == np.int64
    assert as_ids([-(2**63), 2**63 - 1]).tolist() == [-(2**63), 2**63 - 1]  # the whole range, exactly
    assert as_ids([5, 5], distinct=False).tolist() == [5, 5] and as_ids([]).shape == (0,)


def test_remove_takes_any_iterable_of_ids(r):
    assert r.remove({1, 2}) == 2 and r.remove(iter([np.int64(3)])) == 1
    assert r.ids.tolist() == [0, 4, 5]


@pytest.mark.parametrize(
    "images, match",
    [
        (RI.photos()[6], r"got one numpy array of shape \(\d+, \d+, 3\); wrap a single image in a list"),
        ("photo.jpg", "got one str; wrap a single image in a list"),
        (b"\x89PNG", "got one bytes"),
        (42, "expected a sequence of images .* got int"),
    ],
)
def test_one_image_instead_of_a_list(r, base, images, match):
    with pytest.raises(TypeError, match=match):
        r.add(images)
    with pytest.raises(TypeError, match=match):
        image_list(images)
    assert unchanged(r, base)


def test_an_array_beyond_the_pixel_limit_is_refused_before_any_allocation(r, base):
    match = r"array of shape \(100000, 100000, 3\) has 100000x100000 = 10,000,000,000 pixels, more than the limit"
    with pytest.raises(ImageError, match=match):
        load_image(HUGE)  # a copy would need 28 GiB: MemoryError, or the machine swapping
    with pytest.raises(ImageError, match=match):
        r.add([HUGE])
    assert unchanged(r, base)
    with pytest.raises(ImageError, match=match):
        r.search(HUGE)
    assert load_image(np.zeros((10, 10), np.uint8), max_pixels=100).shape == (10, 10, 3)
    with pytest.raises(ImageError, match="10x11 = 110 pixels, more than the limit of 100"):
        load_image(np.zeros((11, 10), np.uint8), max_pixels=100)


def test_skip_records_an_oversized_array_and_adds_the_rest(r):
    with pytest.warns(SkippedImageWarning, match="1 of 2 images skipped"):
        added = r.add([HUGE, RI.photos()[6]], on_error="skip")
    # ids follow the positions in the call (the skipped image's id stays unused)
    assert added.tolist() == [7] and r.ids.tolist() == [0, 1, 2, 3, 4, 5, 7]
    assert len(r.last_failures) == 1 and r.last_failures[0][:2] == (0, "image 0")
    assert "more than the limit" in r.last_failures[0][2]


def test_default_ids_never_leave_the_int64_range(r, base):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r.add([RI.photos()[6]], ids=[2**63 - 1])
    with pytest.raises(ValueError, match=r"ids after the largest one so far \(9223372036854775807\) leave the int64"):
        r.add([RI.photos()[7]])
    assert r.ids.tolist() == list(range(6)) + [2**63 - 1]
