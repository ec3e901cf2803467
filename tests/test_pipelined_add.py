"""The pipelined ``Retriever.add`` (the BoW stage of the next batch in a second thread while
the CNN runs on this one): the same index as the sequential path, bit for bit; errors in
either thread stop it as the sequential path stops (the batches before stay added, no
thread left behind, no lock held); searches running meanwhile see whole batches only."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

import _robust_index as RI
from roiret import ImageError
from roiret.search.encoding import encode_batches

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

THREAD = "roiret-add-ahead"  # the pipeline's thread (roiret.search.encoding._run_ahead)
TIMEOUT = 300  # seconds: a call taking longer is taken for a deadlock


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    return RI.saved_index(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """11 images of three kinds (arrays, a file, bytes) — the same photo twice, too."""
    from PIL import Image

    p = RI.photos()
    path = tmp_path_factory.mktemp("src") / "photo-7.png"
    Image.fromarray(p[7]).save(path)
    png = path.read_bytes()
    return [p[6], str(path), *p[:6], png, p[0], p[3]]


def within(seconds, fn):
    """``fn()`` in a thread; fails (instead of hanging) after ``seconds``; its exception re-raised."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # re-raised below
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s: a deadlock?"
    if "error" in out:
        raise out["error"]
    return out["value"]


def pipeline_threads():
    return [t for t in threading.enumerate() if t.name == THREAD]


def same_everything(a, b, tmp_path):
    """RoI store, geometry and inverted file (its saved bytes) of two retrievers."""
    assert RI.same_index(a, b)
    for part in ("store", "geometry"):
        sa, sb = getattr(a.index, part).state_dict(), getattr(b.index, part).state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
    fa, fb = tmp_path / "a.bin", tmp_path / "b.bin"
    a.bow.inverted_file.save(str(fa))
    b.bow.inverted_file.save(str(fb))
    assert fa.read_bytes() == fb.read_bytes()


def search_keys(r, queries):
    rows = []
    for img, box in queries:
        for mode in ("fast", "exhaustive", "bow"):
            res = r.search(img, box, top=len(r), mode=mode)
            rows.append([(h.id, h.name, h.score, h.bow_score, h.roi_score, h.query_box, h.db_box) for h in res.hits])
    return repr(rows)  # equal NaNs compare equal


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_pipelined_add_equals_sequential(base_path, sources, batch_size, tmp_path):
    seq = RI.load(base_path, batch_size=batch_size, pipeline=False)
    pip = RI.load(base_path, batch_size=batch_size, pipeline=True)
    assert pip.pipeline and not seq.pipeline
    ids_seq = seq.add(sources)
    ids_pip = within(TIMEOUT, lambda: pip.add(sources))
    assert ids_seq.tolist() == ids_pip.tolist() and len(ids_pip) == len(sources)
    same_everything(seq, pip, tmp_path)
    assert seq.store.names == pip.store.names
    h, w = RI.photos()[2].shape[:2]
    queries = [(RI.photos()[1], None), (RI.photos()[2], (w * 0.2, h * 0.2, w * 0.7, h * 0.8))]
    assert search_keys(seq, queries) == search_keys(pip, queries)
    for r in (seq, pip):
        t = r.add_timings
        assert t["images"] == len(sources) and t["wall"] > 0
        assert all(t[k] > 0 for k in ("sift", "quantize", "cnn_trunk"))
    assert not pipeline_threads()


def test_entries_are_bit_identical(base_path, sources):
    """One level down: every field of every IndexedImage of encode_batches, both ways."""
    r = RI.load(base_path, batch_size=3)
    ids = np.arange(100, 100 + len(sources))

    def entries(pipeline):
        timings = {k: 0.0 for k in r.add_timings}
        stream = encode_batches(
            r._batches(sources, "raise"),
            ids,
            None,
            encoder=r.encoder,
            extractor=r.extractor,
            coder=r._coder,
            lock=r._query_lock,
            timings=timings,
            pipeline=pipeline,
        )
        return [e for batch in stream for e in batch], timings

    (a, ta), (b, tb) = entries(False), entries(True)
    assert len(a) == len(b) == len(sources)
    for x, y in zip(a, b):
        assert (x.id, x.name, x.size) == (y.id, y.name, y.size)
        for key in ("words", "counts", "codes", "boxes", "scores", "global_code"):
            np.testing.assert_array_equal(getattr(x, key), getattr(y, key), err_msg=key)
            assert getattr(x, key).dtype == getattr(y, key).dtype
        for key in ("words", "xy", "sizes", "angles"):
            np.testing.assert_array_equal(getattr(x.geometry, key), getattr(y.geometry, key), err_msg=key)
    assert ta["images"] == tb["images"] == len(sources)


def with_bad(tmp_path):
    """5 good images, an unreadable file, 2 good ones."""
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"<html>not an image</html>")
    p = RI.photos()
    return [*p[:5], str(bad), p[6], p[7]], str(bad)


@pytest.mark.parametrize("pipeline", [False, True])
def test_raise_stops_at_the_first_bad_image(base_path, tmp_path, pipeline):
    images, bad = with_bad(tmp_path)
    r = RI.load(base_path, batch_size=2, pipeline=pipeline)
    n0 = len(r)
    with pytest.raises(ImageError, match="bad.jpg") as e:
        within(TIMEOUT, lambda: r.add(images))
    # batches [0, 1] and [2, 3] were added; [4, bad] was not
    assert e.value.added_ids.tolist() == [n0, n0 + 1, n0 + 2, n0 + 3]
    assert len(r) == n0 + 4 and r.ids[-4:].tolist() == e.value.added_ids.tolist()
    assert not pipeline_threads()
    more = within(TIMEOUT, lambda: r.add(images[6:]))  # nothing left locked
    assert len(more) == 2 and len(r) == n0 + 6


def test_skip_reports_failures_as_the_sequential_path(base_path, tmp_path):
    images, bad = with_bad(tmp_path)
    out = []
    for pipeline in (False, True):
        r = RI.load(base_path, batch_size=2, pipeline=pipeline)
        with pytest.warns(RuntimeWarning, match="1 of 8 images skipped"):
            ids = within(TIMEOUT, lambda r=r: r.add(images, on_error="skip"))
        assert [(i, name) for i, name, _ in r.last_failures] == [(5, bad)]
        out.append((r, ids))
        assert not pipeline_threads()
    (a, ids_a), (b, ids_b) = out
    assert ids_a.tolist() == ids_b.tolist() and len(ids_a) == 7
    same_everything(a, b, tmp_path)


def test_a_failing_cnn_stops_the_pipeline(base_path, monkeypatch):
    """The consumer (CNN) raises on the second batch while the thread works ahead: the
    first batch stays added, the thread is stopped and joined, the lock is free."""
    r = RI.load(base_path, batch_size=2, pipeline=True)
    n0 = len(r)
    real, calls = r.extractor.extract, []

    def failing(images, **kw):
        calls.append(len(images))
        if len(calls) == 2:
            raise ValueError("the CNN failed")
        return real(images, **kw)

    monkeypatch.setattr(r.extractor, "extract", failing)
    with pytest.raises(ValueError, match="the CNN failed") as e:
        within(TIMEOUT, lambda: r.add(RI.photos()))
    assert e.value.added_ids.tolist() == [n0, n0 + 1] and len(r) == n0 + 2
    assert not pipeline_threads()
    monkeypatch.setattr(r.extractor, "extract", real)
    assert len(within(TIMEOUT, lambda: r.add(RI.photos()[:3]))) == 3
    assert len(within(TIMEOUT, lambda: r.search(RI.photos()[1]))) > 0  # the extractor lock is free


def test_an_error_in_the_thread_is_raised_in_the_caller(base_path, monkeypatch):
    """The producer (RootSIFT) raises on the fifth image — a kind of error add does not
    annotate: it still reaches the caller, after the two batches before it."""
    r = RI.load(base_path, batch_size=2, pipeline=True)
    n0 = len(r)
    lfe = r.encoder.extractor
    real, calls = lfe.extract, []

    def failing(image, **kw):
        calls.append(threading.current_thread().name)
        if len(calls) == 5:
            raise RuntimeError("SIFT failed")
        return real(image, **kw)

    monkeypatch.setattr(lfe, "extract", failing)
    with pytest.raises(RuntimeError, match="SIFT failed"):
        within(TIMEOUT, lambda: r.add(RI.photos()))
    assert calls[0] == THREAD  # it did run in the pipeline's thread
    assert len(r) == n0 + 4
    assert not pipeline_threads()


def test_progress_bar(base_path, capsys):
    r = RI.load(base_path, batch_size=3, progress=True, pipeline=True)
    within(TIMEOUT, lambda: r.add(RI.photos()))
    err = capsys.readouterr().err
    assert "indexing" in err and "8/8" in err


def test_searches_during_a_pipelined_add_see_whole_batches(base_path):
    """Reference: the index after each batch (added one batch per call, sequentially).
    Concurrent: 2 threads search end to end (SIFT and CNN of the query, beside the
    pipeline's SIFT) while one pipelined add indexes the same batches."""
    spare = RI.photos()[2:8]
    queries = [(RI.photos()[1], None), (RI.photos()[4], None)]
    ref = RI.load(base_path, batch_size=2, pipeline=False)
    expected = {}

    def record():
        ids = frozenset(ref.store.ids.tolist())
        expected[ids] = [search_keys_one(ref, q) for q in queries]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record()
        for i in range(0, len(spare), 2):
            ref.add(spare[i : i + 2])
            record()
    r = RI.load(base_path, batch_size=2, pipeline=True)
    stop, seen, errors = threading.Event(), [], []

    def searcher(q):
        try:
            while not stop.is_set():
                res = r.search(*queries[q], top=100)
                seen.append((frozenset(res.ids.tolist()), q, key_of(res)))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=searcher, args=(q,)) for q in range(2)]
    for t in threads:
        t.start()
    try:
        within(TIMEOUT, lambda: r.add(spare))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert RI.same_index(r, ref) and seen
    for ids, q, got in seen:
        assert ids in expected, f"a search saw an index that never existed: {sorted(ids)}"
        assert got == expected[ids][q]


def key_of(res):
    return repr([(h.id, h.name, h.score, h.bow_score, h.roi_score, h.query_box, h.db_box) for h in res.hits])


def search_keys_one(r, q):
    return key_of(r.search(*q, top=100))
