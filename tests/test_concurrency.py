"""Thread safety as documented in roiret.search.retriever and on InvertedFile: many threads
searching give exactly the serial results; searching while images are added (and removed,
and the index saved) is safe: every result equals the serial result on the index as it
was before or after some batch — never a half-added batch — and nothing raises.
"""

from __future__ import annotations

import random
import threading
import warnings

import numpy as np
import pytest

import _robust_index as RI
from roiret import InvertedFile

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

MODES = ("fast", "exhaustive", "global", "bow")


def key(res):
    """Everything a search returns, comparable exactly (NaN equal to NaN)."""
    rows = [(h.id, h.name, h.score, h.bow_score, h.roi_score, h.query_box, h.db_box, h.reranked) for h in res.hits]
    return repr(rows)  # repr(float('nan')) == 'nan': equal NaNs compare equal


def run_threads(n, target):
    errors = []

    def wrap(i):
        try:
            target(i)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    return RI.saved_index(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def queries():
    p = RI.photos()
    h, w = p[2].shape[:2]
    return [(p[1], None), (p[2], (w * 0.2, h * 0.2, w * 0.7, h * 0.8)), (p[4], None)]


def test_many_threads_searching_give_the_serial_results(base_path, queries):
    r = RI.load(base_path)
    prepared = [r.prepare_query(img, box) for img, box in queries]
    serial_rank = {(q, m): key(r.rank(prepared[q], mode=m, top=len(r))) for q in range(len(queries)) for m in MODES}
    serial_search = [key(r.search(img, box, top=len(r))) for img, box in queries]
    results, lock = [], threading.Lock()

    def ranker(i):
        jobs = list(serial_rank) * 3
        random.Random(i).shuffle(jobs)
        for q, m in jobs:
            got = key(r.rank(prepared[q], mode=m, top=len(r)))
            with lock:
                results.append(("rank", (q, m), got))

    def searcher(i):  # the whole path: image reading, SIFT, CNN, ranking
        q = i % len(queries)
        got = key(r.search(queries[q][0], queries[q][1], top=len(r)))
        with lock:
            results.append(("search", q, got))

    run_threads(8, lambda i: ranker(i) if i < 5 else searcher(i))
    assert len(results) == 5 * 3 * len(serial_rank) + 3
    for kind, k, got in results:
        assert got == (serial_rank[k] if kind == "rank" else serial_search[k]), (kind, k)


def test_adding_removing_and_saving_while_searching(base_path, queries, tmp_path):
    """Reference: the same changes made serially, with the serial results after each
    batch. Concurrent: 4 threads rank, 1 thread searches end to end and 1 thread saves,
    while the main thread adds two batches and removes an image. Each result must equal the
    reference for the index it saw (identified by its set of ids: top covers every image)."""
    spare = RI.photos()[6:8]
    ref = RI.load(base_path, batch_size=1)
    prepared = [ref.prepare_query(img, box) for img, box in queries]
    expected = {}

    def record(r):
        ids = frozenset(r.store.ids.tolist())
        expected[ids] = {(q, m): key(r.rank(prepared[q], mode=m, top=100)) for q in range(len(queries)) for m in MODES}
        expected[ids]["search"] = key(r.search(queries[0][0], queries[0][1], top=100))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record(ref)
        for img in spare:  # batch_size=1: one state per image
            ref.add([img])
            record(ref)
        ref.remove([2])
        record(ref)

    r = RI.load(base_path, batch_size=1)
    stop = threading.Event()
    seen, lock = [], threading.Lock()
    saved = tmp_path / "saved"

    def ranker(i):
        rng = random.Random(i)
        jobs = [(q, m) for q in range(len(queries)) for m in MODES]
        while not stop.is_set():
            q, m = rng.choice(jobs)
            res = r.rank(prepared[q], mode=m, top=100)
            with lock:
                seen.append((frozenset(res.ids.tolist()), (q, m), key(res)))

    def searcher():
        while not stop.is_set():
            res = r.search(queries[0][0], queries[0][1], top=100)
            with lock:
                seen.append((frozenset(res.ids.tolist()), "search", key(res)))

    def saver():
        while not stop.is_set():
            r.save(saved)

    def worker(i):
        (ranker(i) if i < 4 else searcher() if i == 4 else saver())

    threads = threading.Thread(target=lambda: run_threads(6, worker))
    threads.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for img in spare:
                r.add([img])
            r.remove([2])
    finally:
        stop.set()
        threads.join()
    assert len(r) == len(ref) and RI.same_index(r, ref)
    assert seen
    for ids, job, got in seen:
        assert ids in expected, f"a search saw an index that never existed: {sorted(ids)}"
        assert got == expected[ids][job], job
    loaded = RI.load(saved)  # the last save completed: some state of the index, whole
    state = frozenset(loaded.store.ids.tolist())
    assert state in expected
    assert key(loaded.rank(prepared[1], mode="fast", top=100)) == expected[state][(1, "fast")]


def test_concurrent_adds_are_serialised(base_path):
    r = RI.load(base_path, batch_size=1)
    n0 = len(r)
    spare = RI.photos()[6:8]
    out = [None, None]

    def add(i):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[i] = r.add([spare[i]])

    run_threads(2, add)
    ids = sorted(int(x) for o in out for x in o)
    assert ids == [n0, n0 + 1] and len(r) == n0 + 2
    assert sorted(r.bow.inverted_file.ids().tolist()) == sorted(r.store.ids.tolist())


# ---------------------------------------------------------------------------------------
# InvertedFile
# ---------------------------------------------------------------------------------------
def bag(rng, vocab, n=30):
    return rng.integers(0, vocab, size=n)


def test_inverted_file_threads_give_serial_results_while_documents_come_and_go():
    rng = np.random.default_rng(12)
    V, D = 500, 60
    docs = [bag(rng, V) for _ in range(D)]
    queries = [bag(rng, V, 15) for _ in range(6)]
    removed = [3, 30, 57]

    def ops():  # the sequence of changes: one document per add, then removals
        for d in range(D):
            yield ("add", d)
        for d in removed:
            yield ("remove", d)

    # reference: the results after every change, keyed by the set of ids held
    ref = InvertedFile(V)
    expected = {}

    def record(ivf):
        ids = frozenset(ivf.ids().tolist())
        expected[ids] = [tuple(map(tuple, ivf.search(q, None, D + 10))) for q in queries]

    def apply(ivf, op):
        kind, d = op
        if kind == "add":
            ivf.add([d], [0, len(docs[d])], docs[d], None)
        else:
            ivf.remove([d])

    record(ref)
    for op in ops():
        apply(ref, op)
        record(ref)

    ivf = InvertedFile(V)
    stop = threading.Event()
    seen, lock = [], threading.Condition()

    def searcher(i):
        k = 0
        while not stop.is_set() or k < 3:
            q = (i + k) % len(queries)
            if k % 2:
                ids, scores = ivf.search_batch([0, len(queries[q])], queries[q], None, D + 10, threads=2)
                valid = ids[0] >= 0
                res = (tuple(ids[0][valid]), tuple(scores[0][valid]))
            else:
                res = tuple(map(tuple, ivf.search(queries[q], None, D + 10)))
            with lock:
                seen.append((q, res))
                lock.notify_all()
            k += 1

    t = threading.Thread(target=lambda: run_threads(4, searcher))
    t.start()
    try:
        for op in ops():
            with lock:  # let at least one search finish between two changes (so that the
                n = len(seen)  # searches see many states), without relying on timing
                lock.wait_for(lambda n=n: len(seen) > n, timeout=10)
            apply(ivf, op)
    finally:
        stop.set()
        t.join()
    assert len(ivf) == D - len(removed)
    assert len({frozenset(ids) for _, (ids, _) in seen}) > D // 2  # many states were searched
    for q, (ids, scores) in seen:
        state = frozenset(ids)  # top_n exceeds the collection: every id is listed
        assert state in expected, "a search saw an index that never existed"
        assert (ids, scores) == expected[state][q]
