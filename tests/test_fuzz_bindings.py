"""Hypothesis throws random shapes, dtypes, strides, byte orders, alignments and values
(NaN, infinities, huge and negative numbers), ``None``, lists, scalars, strings and random
files at every function and method of ``roiret._core``. The contract: a clean exception of
an allowed type, or a well-formed result — never a crash, hang or native error.

Bounded (``max_examples`` per test, derandomized) so the whole file stays around a minute
on two cores. Sizes that would make the *output* huge are drawn only where they overflow
and must be refused before any allocation (e.g. ``k = 2**62``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from roiret import _core
from roiret.errors import IndexFormatError

ALLOWED = (TypeError, ValueError, OverflowError, IndexFormatError, OSError)
# float64 weights beyond float32 overflow to inf while converting, then are refused
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")

settings.register_profile(
    "roiret-fuzz",
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
FUZZ = settings.get_profile("roiret-fuzz")


def examples(n):
    return settings(FUZZ, max_examples=n)


# ---------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------
DTYPES = [
    np.uint64,
    np.ulonglong,
    np.int64,
    np.uint32,
    np.int32,
    np.uint8,
    np.int8,
    np.float32,
    np.float64,
    np.float16,
    np.bool_,
    np.complex64,
    ">u8",
    ">i8",
    ">f4",
    "<U3",
    object,
]
HUGE_INTS = [
    0,
    1,
    -1,
    2,
    3,
    7,
    64,
    2**31 - 1,
    2**31,
    -(2**31),
    2**32,
    2**32 + 1,
    2**62,
    2**63 - 1,
    2**63,
    -(2**63),
    2**64,
    10**30,
]
SPECIAL_FLOATS = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    1e-45,
    1e38,
    3.5e38,
    -3.5e38,
    1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
]


def _representable(dt, v):
    with np.errstate(over="ignore"):
        x = float(dt.type(v))
    return np.isnan(v) or x == v


def _values_for(dtype):
    dt = np.dtype(dtype)
    if dt.kind == "f":
        special = [v for v in SPECIAL_FLOATS if _representable(dt, v)]
        return st.one_of(st.sampled_from(special), st.floats(-1e4, 1e4, width=min(64, dt.itemsize * 8)))
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return st.one_of(st.integers(max(info.min, -8), min(info.max, 40)), st.sampled_from([info.min, info.max]))
    return None


@st.composite
def arrays(draw, dtypes=DTYPES, max_dims=3, max_side=7):
    """Any array: dtype, shape (0-size and 0-d included), values, then maybe a strided
    view (step, transpose, Fortran order), an unaligned view of a buffer, or read-only."""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=max_side))
    if dtype.kind == "O":
        a = np.empty(shape, dtype=object)
        a.fill(draw(st.sampled_from([None, "x", 1, 1.5, [1, 2]])))
    elif dtype.kind == "U":
        a = np.full(shape, draw(st.sampled_from(["", "ab", "1"])), dtype=dtype)
    elif dtype.kind == "c":
        a = np.zeros(shape, dtype=dtype)
    else:
        a = draw(hnp.arrays(dtype, shape, elements=_values_for(dtype)))
    view = draw(st.sampled_from(["plain", "plain", "step", "transpose", "fortran", "unaligned", "readonly"]))
    if view == "step" and a.ndim >= 1:
        a = np.repeat(a, 2, axis=-1)[..., ::2]
    elif view == "transpose" and a.ndim >= 2:
        a = a.T
    elif view == "fortran":
        a = np.asfortranarray(a)
    elif view == "unaligned" and dtype.kind not in "OU" and dtype.itemsize > 1:
        buf = np.zeros(a.nbytes + 1, np.uint8)
        u = buf[1:].view(dtype).reshape(a.shape) if a.size else np.empty(a.shape, dtype)
        u[...] = a
        a = u
    elif view == "readonly":
        a = a.copy()
        a.flags.writeable = False
    return a


junk = st.one_of(
    st.none(),
    st.sampled_from(HUGE_INTS),
    st.sampled_from(SPECIAL_FLOATS),
    st.booleans(),
    st.text(max_size=4),
    st.binary(max_size=8),
    st.lists(st.one_of(st.integers(-5, 50), st.floats(allow_nan=True)), max_size=6),
    st.lists(st.lists(st.integers(0, 3), max_size=3), max_size=3),
    st.just([[1, 2], [3]]),
    st.just({"a": 1}),
    st.just(object()),
    arrays(),
)


def mostly(good, bad, p_bad=0.2):
    """``good`` most of the time, ``bad`` with probability ``p_bad`` (so that the deep
    paths are reached as well as the argument checks)."""
    n = 20
    return st.integers(0, n - 1).flatmap(lambda i: bad if i < p_bad * n else good)


@st.composite
def valid_codes(draw, words=None, max_n=9):
    w = draw(st.integers(1, 3)) if words is None else words
    n = draw(st.integers(0, max_n))
    return draw(hnp.arrays(np.uint64, (n, w), elements=st.integers(0, 2**64 - 1)))


@st.composite
def spoiled_codes(draw, words=None):
    """Codes that must be refused or handled: strided, another dtype, byte-swapped,
    unaligned, 0 words, wrong ndim — or anything at all."""
    a = draw(valid_codes(words))
    how = draw(st.sampled_from(["strided", "int64", "swapped", "unaligned", "zero_words", "1d", "3d", "junk"]))
    if how == "strided":
        return np.repeat(a, 2, axis=0)[::2]
    if how == "int64":
        return a.view(np.int64)
    if how == "swapped":
        return a.astype(">u8")
    if how == "unaligned":
        buf = np.zeros(a.nbytes + 1, np.uint8)
        u = buf[1:].view(np.uint64).reshape(a.shape)
        u[...] = a
        return u
    if how == "zero_words":
        return np.zeros((a.shape[0], 0), np.uint64)
    if how == "1d":
        return a.reshape(-1)
    if how == "3d":
        return a[None]
    return draw(junk)


def codes(words=None):
    return mostly(valid_codes(words), spoiled_codes(words))


# junk that cannot name a file (no str / bytes: the fuzzer must not write into the cwd)
not_a_path = st.one_of(
    st.none(),
    st.sampled_from(HUGE_INTS),
    st.sampled_from(SPECIAL_FLOATS),
    st.just([1, 2]),
    st.just(object()),
    arrays(max_dims=1),
)

small_int = mostly(st.integers(-3, 12), st.sampled_from(HUGE_INTS), 0.3)
# k / top_n: small, or so large that the (n, k) output cannot exist and must be refused;
# never sizes in between that a test machine could actually try to allocate.
big_k = mostly(st.integers(1, 12), st.sampled_from([0, -1, -3, 2**62, 2**63 - 1, 2**63, 2**64, -(2**63), 1.5, None]))
threads = mostly(
    st.sampled_from([None, 0, 1, 2, 3]), st.sampled_from([-1, 2**31 - 1, -(2**31), 2**31, 10**20, 4096, 2.0, "2"]), 0.3
)


def nbits_for(words):
    return mostly(
        st.one_of(st.none(), st.integers(64 * max(words, 1) - 70, 64 * max(words, 1))),
        st.one_of(st.integers(-2, 64 * max(words, 1) + 2), st.sampled_from(HUGE_INTS), junk),
        0.3,
    )


def thread_kw(t):
    return {} if t is None else {"threads": t}


def attempt(fn, *args, **kwargs):
    """Run fn -> (True, result) or (False, None) for an allowed exception; anything else
    (another exception type) fails the test."""
    name = getattr(fn, "__name__", "?")
    try:
        out = fn(*args, **kwargs)
    except ALLOWED as e:
        event(f"{name}: {type(e).__name__}")  # --hypothesis-show-statistics
        return False, None
    event(f"{name}: ok")
    return True, out


def call(fn, *args, **kwargs):
    return attempt(fn, *args, **kwargs)[1]


# ---------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------
@st.composite
def descriptors(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n, d = draw(st.integers(0, 6)), draw(st.integers(1, 140))
    finite = st.floats(-1e6, 1e6, width=np.dtype(dtype).itemsize * 8)
    return draw(hnp.arrays(dtype, (n, d), elements=mostly(finite, _values_for(dtype), 0.1)))


@examples(600)
@given(
    x=mostly(
        descriptors(),
        st.one_of(
            arrays(dtypes=[np.float32, np.float64, np.float16, np.int64, ">f8", ">f4"], max_dims=3, max_side=9), junk
        ),
        0.4,
    ),
    threads=threads,
)
def test_pack_codes(x, threads):
    ok, out = attempt(_core.pack_codes, x, **thread_kw(threads))
    if ok:
        assert out.dtype == np.uint64 and out.shape == (x.shape[0], (x.shape[1] + 63) // 64)
        assert np.isfinite(x).all()  # NaN / inf must have been refused


@examples(500)
@given(data=st.data())
def test_hamming_matrix_and_knn(data):
    a = data.draw(codes())
    w = a.shape[1] if isinstance(a, np.ndarray) and a.ndim == 2 else 1
    b = data.draw(st.one_of(codes(words=w), codes()))
    nbits = data.draw(nbits_for(w))
    kw = thread_kw(data.draw(threads))
    out = call(_core.hamming_matrix, a, b, nbits, **kw)
    if out is not None:
        assert out.dtype == np.uint32 and out.shape == (a.shape[0], b.shape[0])
        limit = 64 * w if nbits is None else nbits
        assert (out <= limit).all()
    k = data.draw(big_k)
    res = call(_core.hamming_knn, a, b, k, nbits, **kw)
    if res is not None:
        dist, idx = res
        assert dist.shape == idx.shape == (a.shape[0], k)
        assert ((idx >= -1) & (idx < max(b.shape[0], 1))).all()


@examples(500)
@given(data=st.data())
def test_cross_match(data):
    q = data.draw(codes())
    w = q.shape[1] if isinstance(q, np.ndarray) and q.ndim == 2 and q.shape[1] else 1
    db = data.draw(mostly(valid_codes(w, max_n=30), codes(), 0.15))
    ndb = db.shape[0] if isinstance(db, np.ndarray) and db.ndim >= 1 else 3
    cuts = sorted(data.draw(st.lists(st.integers(0, ndb), min_size=0, max_size=6)))
    good_offsets = np.array([data.draw(st.integers(0, cuts[0])) if cuts else 0] + cuts, np.int64)
    offsets = data.draw(
        mostly(
            st.just(good_offsets),
            st.one_of(
                st.just(good_offsets[::-1].copy()),
                st.just(good_offsets + 1),
                st.just(good_offsets - 1),
                st.just(good_offsets.astype(np.int32)),
                st.just(good_offsets.astype(np.float64)),
                junk,
                arrays(dtypes=[np.int64, np.int32, np.uint64, np.float64], max_dims=2),
            ),
        )
    )
    nbits = data.draw(
        mostly(
            st.integers(64 * w - 63, 64 * w), st.one_of(st.integers(-2, 64 * w + 2), st.sampled_from(HUGE_INTS), junk)
        )
    )
    nq = q.shape[0] if isinstance(q, np.ndarray) and q.ndim >= 1 else 2
    n_groups = len(good_offsets) - 1
    mask = data.draw(
        mostly(
            st.one_of(st.none(), hnp.arrays(np.bool_, (nq,)), hnp.arrays(np.uint8, (nq,))),
            st.one_of(junk, arrays(dtypes=[np.bool_, np.uint8, np.int64], max_dims=2)),
        )
    )
    images = data.draw(
        mostly(
            st.one_of(st.none(), st.lists(st.integers(0, max(n_groups - 1, 0)), max_size=5)),
            st.one_of(st.lists(st.integers(-2, n_groups + 2), max_size=5), junk),
        )
    )
    res = call(_core.cross_match, q, db, offsets, nbits, mask, images, **thread_kw(data.draw(threads)))
    if res is not None:
        score, bq, bd, votes = res
        assert score.shape == bq.shape == bd.shape and votes.shape == (q.shape[0],)
        ok = np.isfinite(score)
        assert ((score[ok] >= 0) & (score[ok] <= 1)).all()
        assert (bq[~ok] == -1).all() and ((bq[ok] >= 0) & (bq[ok] < q.shape[0])).all()
        assert ((bd[ok] >= 0) & (bd[ok] < db.shape[0])).all()


@examples(500)
@given(data=st.data())
def test_select_rois(data):
    B = data.draw(st.integers(0, 4))
    D = data.draw(st.integers(0, 8))
    coords = mostly(st.floats(-20, 120, width=32), _values_for(np.float32), 0.1)
    boxes = data.draw(
        mostly(
            hnp.arrays(np.float32, (B, D, 4), elements=coords),
            st.one_of(
                junk,
                arrays(dtypes=[np.float32, np.float64], max_dims=3),
                st.just(np.zeros((B, D, 4), np.float32)[:, ::-1]),
            ),
        )
    )
    scores = data.draw(
        mostly(
            hnp.arrays(np.float32, (B, D), elements=coords),
            st.one_of(junk, arrays(dtypes=[np.float32, np.float64], max_dims=2)),
        )
    )
    sizes = data.draw(
        mostly(
            st.just(np.full((B, 2), 100, np.float32)), st.one_of(hnp.arrays(np.float32, (B, 2), elements=coords), junk)
        )
    )
    k = data.draw(big_k)
    unit = mostly(st.floats(0, 1), st.sampled_from(SPECIAL_FLOATS + [2.0, -0.5]), 0.2)
    t_min, t_iou = data.draw(unit), data.draw(unit)
    t_rate = data.draw(mostly(st.floats(1, 10), st.sampled_from(SPECIAL_FLOATS), 0.2))
    out = call(_core.select_rois, boxes, scores, sizes, k, t_min, t_rate, t_iou, **thread_kw(data.draw(threads)))
    if out is not None:
        assert out.shape == (B, k) and out.dtype == np.int64
        assert ((out >= -1) & (out < max(D, 1))).all()
        for row in out:  # kept indices first, then -1 padding; no repeats
            kept = row[row >= 0]
            assert (row[: len(kept)] == kept).all() and len(set(kept.tolist())) == len(kept)


@examples(200)
@given(
    level=mostly(st.sampled_from(["generic", "popcnt", "avx2", "avx512", "AVX2", "", "sse"]), junk, 0.3),
    n=mostly(small_int, junk, 0.3),
    data=mostly(st.binary(max_size=40), junk, 0.3),
    crc=mostly(st.integers(0, 2**32 - 1), st.one_of(small_int, junk), 0.3),
)
def test_dispatch_threads_and_crc(level, n, data, crc):
    before_level, before_n = _core.simd_level(), _core.get_num_threads()
    try:
        ok, prev = attempt(_core.set_simd_level, level)
        if ok:
            assert _core.simd_level() == level and prev == before_level
        else:
            assert _core.simd_level() == before_level
        attempt(_core.set_num_threads, n)
        assert 1 <= _core.get_num_threads() <= 1024
        c = call(_core.crc32, data, crc)
        if c is not None:
            import zlib

            assert c == zlib.crc32(bytes(data), crc)
        assert _core.detected_simd_level() in _core.supported_simd_levels()
    finally:
        _core.set_simd_level(before_level)
        _core.set_num_threads(0)
        _core.set_num_threads(before_n)


# ---------------------------------------------------------------------------------------
# InvertedFile
# ---------------------------------------------------------------------------------------
int_arrays = arrays(
    dtypes=[np.int64, np.int32, np.uint64, np.uint8, np.float64, np.bool_, object, ">i8"], max_dims=2, max_side=6
)
num_arrays = arrays(dtypes=[np.float32, np.float64, np.int64, np.float16, np.bool_, object], max_dims=2, max_side=6)


def check_add(index, ids, *rest):
    """add() either takes every image or changes nothing (validated before any change)."""
    before = (index.ids().tolist(), index.num_postings)
    ok, _ = attempt(index.add, ids, *rest)
    if ok:
        assert index.ids().tolist() == before[0] + [int(i) for i in ids]
    else:
        assert (index.ids().tolist(), index.num_postings) == before


def check_remove(data, index):
    """remove() of present, absent or junk ids: all or nothing."""
    ids = data.draw(
        mostly(
            st.lists(st.sampled_from(index.ids().tolist() or [0]), max_size=3),
            st.one_of(st.lists(st.integers(0, 30), max_size=4), junk, int_arrays),
        )
    )
    before = index.ids().tolist()
    got = call(index.remove, ids)
    if got is None:
        assert index.ids().tolist() == before
    else:
        assert len(index) == len(before) - got


@st.composite
def bags(draw, vocab):
    """CSR bags: usually valid, sometimes with bad ids, offsets, words or weights."""
    n = draw(st.integers(0, 4))
    lens = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    words = draw(hnp.arrays(np.int64, (int(offsets[-1]),), elements=st.integers(0, max(vocab - 1, 0))))
    counts = draw(
        st.one_of(
            st.none(),
            hnp.arrays(
                np.float32, (int(offsets[-1]),), elements=st.one_of(st.floats(0, 10, width=32), _values_for(np.float32))
            ),
        )
    )
    ids = draw(
        st.one_of(
            st.lists(st.integers(0, 30), min_size=n, max_size=n, unique=True),
            st.lists(st.sampled_from(HUGE_INTS[:14]), min_size=n, max_size=n),
        )
    )
    spoil = draw(st.integers(0, 6))
    if spoil == 1:
        ids = draw(st.one_of(junk, int_arrays))
    elif spoil == 2:
        offsets = draw(st.one_of(junk, int_arrays))
    elif spoil == 3:
        words = draw(st.one_of(junk, int_arrays, st.just(words + vocab)))
    elif spoil == 4:
        counts = draw(st.one_of(junk, num_arrays))
    return ids, offsets, words, counts


@examples(400)
@given(data=st.data())
def test_inverted_file_methods(data, tmp_path_factory):
    vocab = data.draw(
        mostly(
            st.integers(1, 40), st.one_of(st.sampled_from([0, -1, 2**32 + 1, 2**63, -(2**63), 2**64, 2.0]), junk), 0.1
        )
    )
    ivf = call(_core.InvertedFile, vocab)
    if ivf is None:
        return
    V = ivf.vocab_size
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["add", "add", "search", "batch", "remove", "contains", "info", "save"]))
        n_before = len(ivf)
        if op == "add":
            check_add(ivf, *data.draw(bags(V)))
        elif op == "search":
            m = data.draw(st.integers(0, 6))
            words = data.draw(
                mostly(
                    hnp.arrays(np.int64, (m,), elements=st.integers(0, V - 1)),
                    st.one_of(hnp.arrays(np.int64, (m,), elements=st.integers(-1, V)), junk, int_arrays),
                )
            )
            counts = data.draw(
                mostly(
                    st.one_of(st.none(), hnp.arrays(np.float32, (m,), elements=st.floats(0, 5, width=32))),
                    st.one_of(junk, num_arrays, hnp.arrays(np.float32, (m,), elements=_values_for(np.float32))),
                )
            )
            top = data.draw(big_k)
            res = call(ivf.search, words, counts, top)
            if res is not None:
                ids, scores = res
                assert len(ids) == len(scores) <= min(top, len(ivf))
                assert np.all(np.isfinite(scores)) and np.all(np.diff(scores) <= 1e-6)
        elif op == "batch":
            lens = data.draw(st.lists(st.integers(0, 4), max_size=4))
            off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
            off = data.draw(mostly(st.just(off), st.one_of(st.just(off[::-1].copy()), junk, int_arrays)))
            words = data.draw(
                mostly(hnp.arrays(np.int64, (sum(lens),), elements=st.integers(0, V - 1)), st.one_of(junk, int_arrays))
            )
            res = call(
                ivf.search_batch,
                off,
                words,
                data.draw(mostly(st.none(), st.one_of(junk, num_arrays))),
                data.draw(big_k),
                **thread_kw(data.draw(threads)),
            )
            if res is not None:
                assert res[0].shape == res[1].shape and res[0].ndim == 2
        elif op == "remove":
            check_remove(data, ivf)
        elif op == "contains":
            x = data.draw(mostly(st.integers(0, 30), st.one_of(st.sampled_from(HUGE_INTS), junk)))
            r = call(ivf.__contains__, x)
            assert r in (None, True, False)
        elif op == "info":
            assert ivf.memory_bytes() >= 0 and ivf.num_postings >= 0
            assert len(ivf.document_frequencies()) == len(ivf.idf()) == V
            assert np.isfinite(ivf.idf()).all() and repr(ivf).startswith("InvertedFile(")
        else:
            folder = tmp_path_factory.mktemp("ivf")
            target = data.draw(st.sampled_from(["file", "missing_dir", "dir", "bytes", "junk"]))
            path = {
                "file": folder / "x.ivf",
                "missing_dir": folder / "no" / "x.ivf",
                "dir": folder,
                "bytes": os.fsencode(folder / "y.ivf"),
                "junk": data.draw(not_a_path),
            }[target]
            ok, _ = attempt(ivf.save, path)
            assert ok == (target in ("file", "bytes"))
            if ok:
                loaded = _core.InvertedFile.load(path)
                assert loaded.ids().tolist() == ivf.ids().tolist() and loaded.num_postings == ivf.num_postings
        if op not in ("add", "remove"):
            assert len(ivf) == n_before


@pytest.fixture(scope="module")
def valid_ivf_bytes(tmp_path_factory):
    ivf = _core.InvertedFile(20)
    rng = np.random.default_rng(0)
    ivf.add(np.arange(12) * 3, np.arange(0, 61, 5), rng.integers(0, 20, size=60), None)
    path = tmp_path_factory.mktemp("ivf") / "v.ivf"
    ivf.save(path)
    return path.read_bytes()


@examples(600)
@given(data=st.data())
def test_inverted_file_load_random_files(data, valid_ivf_bytes, tmp_path_factory):
    """Random bytes, and valid files with random edits (splices, truncations, flips,
    insertions): refused with IndexFormatError, or — when the edit left it valid — loaded
    whole."""
    blob = bytearray(valid_ivf_bytes)
    kind = data.draw(st.sampled_from(["random", "edit", "edit", "edit", "header"]))
    if kind == "random":
        blob = bytearray(data.draw(st.binary(max_size=200)))
    elif kind == "header":
        import struct
        import zlib

        fields = data.draw(
            st.tuples(*(st.sampled_from([0, 1, 20, 12, 60, 2**32, 2**40, 2**63, 2**64 - 1]) for _ in range(3)))
        )
        blob[16:40] = struct.pack("<QQQ", *fields)
        blob[60:64] = struct.pack("<I", zlib.crc32(bytes(blob[:60])))
    else:
        for _ in range(data.draw(st.integers(1, 3))):
            pos = data.draw(st.integers(0, max(len(blob) - 1, 0)))
            how = data.draw(st.sampled_from(["flip", "cut", "insert", "set"]))
            if how == "flip" and blob:
                blob[pos] ^= 1 << data.draw(st.integers(0, 7))
            elif how == "cut":
                del blob[pos:]
            elif how == "insert":
                blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
            elif blob:
                blob[pos] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.mktemp("load") / "f.ivf"
    path.write_bytes(bytes(blob))
    try:
        ivf = _core.InvertedFile.load(path)
    except IndexFormatError:
        return
    assert bytes(blob) == valid_ivf_bytes or kind == "header"  # only an intact file loads
    assert len(ivf) == 12


# ---------------------------------------------------------------------------------------
# EmbeddedInvertedFile
# ---------------------------------------------------------------------------------------
@st.composite
def embedded_images(draw, vocab, words_per_sig):
    """CSR images of (word, signature) pairs, distinct words per image: usually valid,
    sometimes with bad ids, offsets, words (out of range, repeated in an image) or signatures."""
    per = draw(st.lists(st.lists(st.integers(0, vocab - 1), unique=True, max_size=min(5, vocab)), max_size=4))
    n = len(per)
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in per])]).astype(np.int64)
    words = np.array([w for p in per for w in p], np.int64)
    sigs = draw(hnp.arrays(np.uint64, (len(words), words_per_sig), elements=st.integers(0, 2**64 - 1)))
    ids = draw(st.lists(st.integers(0, 30), min_size=n, max_size=n, unique=True))
    spoil = draw(st.integers(0, 6))
    if spoil == 1:
        ids = draw(st.one_of(junk, int_arrays))
    elif spoil == 2:
        offsets = draw(st.one_of(junk, int_arrays))
    elif spoil == 3:
        twice = np.concatenate([words[:1], words]) if len(words) else words
        words = draw(st.one_of(junk, int_arrays, st.just(words + vocab), st.just(twice)))
    elif spoil == 4:
        sigs = draw(st.one_of(spoiled_codes(words_per_sig), codes()))
    return ids, offsets, words, sigs


@examples(300)
@given(data=st.data())
def test_embedded_file_methods(data, tmp_path_factory):
    vocab = data.draw(mostly(st.integers(1, 30), st.one_of(st.sampled_from([0, -1, 2**63, 2.0]), junk), 0.1))
    nbits = data.draw(
        mostly(st.sampled_from([1, 63, 64, 65, 128, 200]), st.one_of(st.sampled_from([0, -1, 1025, 2**64]), junk), 0.1)
    )
    f = call(_core.EmbeddedInvertedFile, vocab, nbits)
    if f is None:
        return
    V, W = f.vocab_size, (f.nbits + 63) // 64
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["add", "add", "search", "remove", "document", "info", "save"]))
        n_before = len(f)
        if op == "add":
            check_add(f, *data.draw(embedded_images(V, W)))
        elif op == "search":
            m = data.draw(st.integers(0, 6))
            words = data.draw(
                mostly(
                    hnp.arrays(np.int64, (m,), elements=st.integers(0, V - 1)),
                    st.one_of(hnp.arrays(np.int64, (m,), elements=st.integers(-1, V)), junk, int_arrays),
                )
            )
            sigs = data.draw(mostly(hnp.arrays(np.uint64, (m, W), elements=st.integers(0, 2**64 - 1)), codes()))
            weights = data.draw(
                mostly(
                    st.one_of(st.none(), hnp.arrays(np.float32, (m,), elements=st.floats(0, 5, width=32))),
                    st.one_of(junk, num_arrays, hnp.arrays(np.float32, (m,), elements=_values_for(np.float32))),
                )
            )
            alpha = data.draw(mostly(st.floats(0.1, 5), st.one_of(st.sampled_from(SPECIAL_FLOATS), junk)))
            tau = data.draw(mostly(st.floats(-1, 0.99), st.one_of(st.sampled_from(SPECIAL_FLOATS), junk)))
            top = data.draw(big_k)
            res = call(f.search, words, sigs, weights, top, alpha, tau, **thread_kw(data.draw(threads)))
            if res is not None:
                ids, scores = res
                assert len(ids) == len(scores) <= min(top, len(f))
                assert np.all(np.isfinite(scores)) and np.all(np.diff(scores) <= 1e-6)
        elif op == "remove":
            check_remove(data, f)
        elif op == "document":
            x = data.draw(mostly(st.sampled_from(f.ids().tolist() or [0]), st.one_of(st.sampled_from(HUGE_INTS), junk)))
            m = data.draw(st.integers(0, 6))
            cand = data.draw(
                mostly(
                    st.one_of(st.none(), hnp.arrays(np.int64, (m,), elements=st.integers(0, V - 1))),
                    st.one_of(hnp.arrays(np.int64, (m,), elements=st.integers(-1, V)), junk, int_arrays),
                )
            )
            res = call(f.document, x, cand)
            if res is not None:
                assert res[1].shape == (len(res[0]), W) and np.all(np.diff(res[0]) > 0)
                if cand is not None:  # only candidate words, and all of the image's among them
                    full = f.document(x)[0]
                    assert np.array_equal(res[0], full[np.isin(full, np.asarray(cand).ravel())])
        elif op == "info":
            assert f.memory_bytes() >= 0 and f.num_postings >= 0
            assert len(f.document_frequencies()) == len(f.idf()) == V
            assert np.isfinite(f.idf()).all() and repr(f).startswith("EmbeddedInvertedFile(")
        else:
            folder = tmp_path_factory.mktemp("eivf")
            good = folder / "x.ask"
            path = data.draw(st.one_of(st.just(good), st.just(folder), not_a_path))
            ok, _ = attempt(f.save, path)
            assert ok == (path is good)
            if ok:
                loaded = _core.EmbeddedInvertedFile.load(path)
                assert loaded.ids().tolist() == f.ids().tolist() and loaded.num_postings == f.num_postings
        if op not in ("add", "remove"):
            assert len(f) == n_before


@examples(300)
@given(data=st.data())
def test_embedded_file_load_random_files(data, tmp_path_factory):
    """Valid files with random edits: refused with IndexFormatError, or loaded whole."""
    f = _core.EmbeddedInvertedFile(20, 100)
    rng = np.random.default_rng(0)
    words = np.concatenate([rng.permutation(20)[:5] for _ in range(8)])
    f.add(np.arange(8) * 3, np.arange(0, 41, 5), words, rng.integers(0, 2**64, size=(40, 2), dtype=np.uint64))
    folder = tmp_path_factory.mktemp("eload")
    f.save(folder / "v.ask")
    valid = (folder / "v.ask").read_bytes()
    blob = bytearray(valid)
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, max(len(blob) - 1, 0)))
        how = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if how == "flip" and blob:
            blob[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif how == "cut":
            del blob[pos:]
        else:
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    (folder / "f.ask").write_bytes(bytes(blob))
    try:
        loaded = _core.EmbeddedInvertedFile.load(folder / "f.ask")
    except IndexFormatError:
        return
    assert bytes(blob) == valid and len(loaded) == 8


# ---------------------------------------------------------------------------------------
# MappedFile (and map_npy, which reads .npy files through it)
# ---------------------------------------------------------------------------------------
@examples(60)
@given(path=not_a_path)
def test_mapped_file_refuses_what_is_not_a_path(path):
    ok, _ = attempt(_core.MappedFile, path)
    assert not ok


@examples(300)
@given(data=st.data())
def test_map_npy_random_files(data, tmp_path_factory):
    """Random bytes, and .npy files of random arrays with random edits: an allowed
    exception, or — when the edit left a valid file — the array np.load reads, read-only."""
    from roiret._kernels import map_npy

    folder = tmp_path_factory.mktemp("npy")
    a = data.draw(arrays(dtypes=[np.uint64, np.int32, np.float32, np.uint8, ">f4", "<U3"], max_side=5))
    np.save(folder / "a.npy", np.asarray(a))
    blob = bytearray((folder / "a.npy").read_bytes())
    kind = data.draw(st.sampled_from(["intact", "random", "edit", "edit"]))
    if kind == "random":
        blob = bytearray(data.draw(st.binary(max_size=300)))
    elif kind == "edit":
        pos = data.draw(st.integers(0, len(blob) - 1))
        how = data.draw(st.sampled_from(["cut", "set", "insert"]))
        if how == "cut":
            del blob[pos:]
        elif how == "set":
            blob[pos] = data.draw(st.integers(0, 255))
        else:
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
    (folder / "b.npy").write_bytes(bytes(blob))
    ok, got = attempt(map_npy, folder / "b.npy")
    if kind == "intact":
        assert ok
    if ok:
        want = np.load(folder / "b.npy", allow_pickle=False)
        assert got.dtype == want.dtype and got.shape == want.shape and not got.flags.writeable
        assert np.array_equal(got, want) or (got.dtype.kind == "f" and np.array_equal(got, want, equal_nan=True))


# ---------------------------------------------------------------------------------------
# resource exhaustion: threads that cannot start
# ---------------------------------------------------------------------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses RLIMIT_AS and /proc")
def test_kernels_survive_threads_that_cannot_start():
    """With the address space capped so that only a few thread stacks fit, a call asking
    for 1000 threads runs the remaining chunks on the calling thread and returns the same
    result (before the fix: std::terminate, the process aborted)."""
    code = textwrap.dedent("""
        import resource, numpy as np
        from roiret import _core
        rng = np.random.default_rng(0)
        q = rng.integers(0, 2**63, size=(4000, 2), dtype=np.uint64)
        ref = _core.hamming_knn(q, q[:50], 3, None, 1)
        refm = _core.hamming_matrix(q, q[:50], None, 1)
        vm = int([l for l in open('/proc/self/status') if l.startswith('VmSize')][0].split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (48 << 20), resource.RLIM_INFINITY))
        got = _core.hamming_knn(q, q[:50], 3, None, 1000)
        gotm = _core.hamming_matrix(q, q[:50], None, 1000)
        assert all((a == b).all() for a, b in zip(ref, got)) and (refm == gotm).all()
        print("ok")
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr[-2000:]


# ---------------------------------------------------------------------------------------
# regressions found by the fuzzer (each once crashed or gave a wrong error type)
# ---------------------------------------------------------------------------------------
def test_regressions_found_by_fuzzing(tmp_path):
    # a .npy header damaged into an unclosed bracket: numpy's parser raised
    # tokenize.TokenError through map_npy, now a ValueError naming the file
    from roiret._kernels import map_npy

    np.save(tmp_path / "h.npy", np.arange(4))
    blob = (tmp_path / "h.npy").read_bytes()
    (tmp_path / "h.npy").write_bytes(blob.replace(b"}", b"(", 1))
    with pytest.raises(ValueError, match=r"h\.npy: not a valid \.npy header \(TokenError"):
        map_npy(tmp_path / "h.npy")
    (tmp_path / "h.npy").unlink()  # the folder must end empty (below)
    a = np.arange(6, dtype=np.uint64).reshape(3, 2)
    # nbits beyond int64: was RuntimeError ("Unable to cast Python instance"), now ValueError
    with pytest.raises(ValueError, match="out of range"):
        _core.hamming_matrix(a, a, 2**63)
    with pytest.raises(TypeError, match="nbits: expected an integer"):
        _core.hamming_matrix(a, a, 1.5)
    # np.ulonglong is uint64 on Linux: was refused as "expected uint64, got uint64"
    np.testing.assert_array_equal(_core.hamming_matrix(a.astype(np.ulonglong), a), _core.hamming_matrix(a, a))
    # byte-swapped and unaligned code arrays are refused (unaligned loads are undefined behaviour)
    with pytest.raises(TypeError, match=">u8"):
        _core.hamming_matrix(a.astype(">u8"), a)
    buf = np.zeros(a.nbytes + 1, np.uint8)
    unaligned = buf[1:].view(np.uint64).reshape(a.shape)
    unaligned[...] = a
    with pytest.raises(ValueError, match="unaligned"):
        _core.hamming_knn(unaligned, a, 1)
    x = np.zeros(9, np.uint8)[1:].view(np.float32).reshape(1, 2)
    with pytest.raises(ValueError, match="unaligned"):
        _core.pack_codes(x)
    # integer inputs are copied when unaligned (accepted, same result)
    ivf = _core.InvertedFile(5)
    ivf.add([1, 2], [0, 1, 2], [3, 4])
    w = np.zeros(17, np.uint8)[1:].view(np.int64)
    w[:] = [3, 4]
    assert ivf.search(w)[0].tolist() == ivf.search(np.array([3, 4]))[0].tolist()
    # a path with a NUL byte: C would open another file than the one named
    with pytest.raises(ValueError, match="null byte"):
        ivf.save(str(tmp_path / "a\0b"))
    with pytest.raises(ValueError, match="null byte"):
        _core.InvertedFile.load(str(tmp_path / "a\0b"))
    assert not list(tmp_path.iterdir())
    # 40000 threads requested for 40000 queries: was std::terminate (thread creation
    # failed with EAGAIN past the process limit); clamped to 1024 now, same result
    q = np.random.default_rng(0).integers(0, 2**63, size=(40000, 1), dtype=np.uint64)
    ref = _core.hamming_knn(q, q[:10], 3, None, 1)
    got = _core.hamming_knn(q, q[:10], 3, None, 40000)
    np.testing.assert_array_equal(ref[0], got[0])
    np.testing.assert_array_equal(ref[1], got[1])
    # an output whose row stride overflows, even with 0 rows: was signed overflow inside
    # pybind11 (UBSan, found by running this file against a sanitized build), now refused
    for call_ in (
        lambda: _core.hamming_knn(a[:0], a, 2**62),
        lambda: _core.hamming_knn(a, a, 2**61),
        lambda: _core.select_rois(
            np.zeros((0, 3, 4), np.float32),
            np.zeros((0, 3), np.float32),
            np.zeros((0, 2), np.float32),
            2**62,
            0.0,
            3.0,
            0.95,
        ),
        lambda: ivf.search_batch([0], [], None, 2**62),
    ):
        with pytest.raises(ValueError, match="too large"):
            call_()
    _core.set_num_threads(2**31 - 1)
    try:
        assert _core.get_num_threads() == 1024
    finally:
        _core.set_num_threads(0)
