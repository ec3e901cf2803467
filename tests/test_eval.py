"""Tests for roiret.eval: AP (Oxford compute_ap.cpp trapezoid rule), mAP, protocols, N-S."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roiret.eval import (
    OxfordGroundTruth,
    UKBenchGroundTruth,
    average_precision,
    load_gnd,
    mean_average_precision,
    ukbench_score,
)

DATASETS = Path(os.environ.get("ROIRET_DATASETS", Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"))


# ----------------------------------------------------------------------------------------
# average_precision: hand-computed cases
# ----------------------------------------------------------------------------------------
def test_ap_perfect_ranking_is_one():
    assert average_precision(["a", "b", "x", "y"], {"a", "b"}) == pytest.approx(1.0)


def test_ap_trapezoid_hand_computed():
    # positives {a, b}; ranking a, x, b, y
    # rank 1: a hit  -> recall 1/2, precision 1   ; += (1/2 - 0)  * (1   + 1  )/2 = 0.5
    # rank 2: x miss -> recall 1/2, precision 1/2 ; += 0
    # rank 3: b hit  -> recall 1,   precision 2/3 ; += (1 - 1/2) * (1/2 + 2/3)/2 = 0.291666…
    # rank 4: y miss -> recall 1                  ; += 0
    # AP = 0.791666… (the non-interpolated AP would be (1 + 2/3)/2 = 0.8333: not what Oxford does)
    ap = average_precision(["a", "x", "b", "y"], {"a", "b"})
    assert ap == pytest.approx(0.5 + 0.5 * (0.5 + 2 / 3) / 2, abs=1e-12)
    assert ap == pytest.approx(0.7916666666666666, abs=1e-12)


def test_ap_first_result_wrong():
    # rank 1: miss -> recall 0, precision 0; rank 2: hit -> recall 1, precision 1/2
    # AP = (1 - 0) * (0 + 1/2) / 2 = 0.25  (the precision of the rank before is 0, not 1)
    assert average_precision(["x", "a"], {"a"}) == pytest.approx(0.25, abs=1e-12)


def test_ap_three_positives_hand_computed():
    # positives {a, b, c}; ranking x, a, y, b, c
    # r1 x: R 0,   P 0                    -> 0
    # r2 a: R 1/3, P 1/2 ; (1/3)(0   + 1/2)/2 = 1/12
    # r3 y: R 1/3, P 1/3                  -> 0
    # r4 b: R 2/3, P 1/2 ; (1/3)(1/3 + 1/2)/2 = 5/36
    # r5 c: R 1,   P 3/5 ; (1/3)(1/2 + 3/5)/2 = 11/60
    expected = 1 / 12 + 5 / 36 + 11 / 60
    assert average_precision(["x", "a", "y", "b", "c"], {"a", "b", "c"}) == pytest.approx(expected, abs=1e-12)


def test_ap_junk_is_skipped():
    # junk j is removed before ranks are counted: the ranking is effectively [x, a]
    # -> AP = 0.25 (as in test_ap_first_result_wrong). Counting j as a miss would give
    # (1)(0 + 1/3)/2 = 1/6.
    assert average_precision(["j", "x", "a"], {"a"}, junk={"j"}) == pytest.approx(0.25)
    assert average_precision(["j", "x", "a"], {"a"}) == pytest.approx(1 / 6)
    # junk anywhere never changes a perfect ranking
    assert average_precision(["j1", "a", "j2", "b"], {"a", "b"}, {"j1", "j2"}) == 1.0


def test_ap_missing_positives_count_as_missed():
    # positives {a, b}; only a retrieved: recall stops at 1/2 -> AP = 1/2 * (1 + 1)/2 = 0.5
    assert average_precision(["a", "x"], {"a", "b"}) == pytest.approx(0.5)
    assert average_precision([], {"a"}) == 0.0
    assert average_precision(["x", "y"], {"a"}) == 0.0


def test_ap_junk_that_is_also_positive_is_junk():
    # as in compute_ap.cpp: ambiguous is tested first, but |pos| still counts it
    # ranking [a, b], pos {a, b}, junk {b}: a -> R 1/2, P 1 -> AP 0.5
    assert average_precision(["a", "b"], {"a", "b"}, {"b"}) == pytest.approx(0.5)


def test_ap_positives_are_a_set():
    # duplicates in the positive list (the Oxford-dev gnd has one) do not inflate |pos|
    assert average_precision(["a"], ["a", "a"]) == 1.0


def test_ap_errors():
    with pytest.raises(ValueError, match="no positives"):
        average_precision(["a"], set())
    with pytest.raises(ValueError, match="repeats"):
        average_precision(["a", "b", "a"], {"a"})
    with pytest.raises(TypeError):
        average_precision("abc", {"a"})
    with pytest.raises(TypeError):
        average_precision(5, {"a"})
    with pytest.raises(ValueError, match="1-D"):
        average_precision(np.zeros((2, 2), dtype=np.int64), {0})


def test_ap_accepts_integer_arrays():
    r = np.array([3, 1, 2], dtype=np.int64)
    assert average_precision(r, {3, 2}) == average_precision([3, 1, 2], {3, 2})


# ----------------------------------------------------------------------------------------
# average_precision against an independent formulation (revisitop's compute_ap, which
# works on the ranks of the positives after junk removal)
# ----------------------------------------------------------------------------------------
def _ap_revisitop(ranking, pos, junk):
    ranking = [r for r in ranking if r not in junk]
    ranks = [i for i, r in enumerate(ranking) if r in pos]
    nres = len(pos)
    ap = 0.0
    step = 1.0 / nres
    for j, rank in enumerate(ranks):
        p0 = 1.0 if rank == 0 else j / rank
        p1 = (j + 1) / (rank + 1)
        ap += (p0 + p1) * step / 2.0
    return ap


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 40), unique=True, max_size=30),
    st.sets(st.integers(0, 40), min_size=1, max_size=10),
    st.sets(st.integers(0, 40), max_size=8),
)
def test_ap_matches_revisitop_formulation(ranking, pos, junk):
    pos = pos - junk  # revisitop's lists are disjoint
    if not pos:
        return
    assert average_precision(ranking, pos, junk) == pytest.approx(_ap_revisitop(ranking, pos, junk), abs=1e-12)


# ----------------------------------------------------------------------------------------
# mAP
# ----------------------------------------------------------------------------------------
def test_map_skips_queries_without_positives():
    m, aps = mean_average_precision(
        [["a", "x", "b"], ["x"], ["y", "c"]],
        [{"a", "b"}, set(), {"c"}],
        [set(), set(), set()],
    )
    assert math.isnan(aps[1])
    assert aps[0] == pytest.approx(0.7916666666666666)
    assert aps[2] == pytest.approx(0.25)
    assert m == pytest.approx((0.7916666666666666 + 0.25) / 2)


def test_map_errors():
    with pytest.raises(ValueError, match="no query has a positive"):
        mean_average_precision([["a"]], [set()])
    with pytest.raises(ValueError, match="one of each"):
        mean_average_precision([["a"], ["b"]], [{"a"}])


# ----------------------------------------------------------------------------------------
# protocols from gnd.json
# ----------------------------------------------------------------------------------------
def _toy_gnd(tmp_path: Path) -> Path:
    db = ["q1", "a", "b", "c", "d", "e"]
    data = {
        "name": "toy",
        "max_side": 500,
        "images": db,
        "protocols": {
            "classic": {
                "database": db,
                "queries": [
                    {
                        "id": "Q1",
                        "landmark": "l",
                        "image": "q1",
                        "bbox": [1, 2, 30, 40],
                        "good": ["q1", "a"],
                        "ok": ["b"],
                        "junk": ["c"],
                    },
                    {
                        "id": "Q2",
                        "landmark": "l",
                        "image": "d",
                        "bbox": [0, 0, 10, 10],
                        "good": ["d"],
                        "ok": [],
                        "junk": [],
                    },
                ],
            },
            "revisited": {
                "database": ["a", "b", "c", "d", "e"],
                "queries": [
                    {"id": "R1", "image": "q1", "bbox": [1, 2, 30, 40], "easy": ["a"], "hard": ["b"], "junk": ["c"]},
                    {"id": "R2", "image": "q1", "bbox": [1, 2, 30, 40], "easy": ["d"], "hard": [], "junk": []},
                ],
            },
        },
    }
    p = tmp_path / "gnd.json"
    p.write_text(json.dumps(data))
    return p


def test_protocols_classic_and_revisited(tmp_path):
    gnd = load_gnd(_toy_gnd(tmp_path).parent)  # the folder works too
    assert isinstance(gnd, OxfordGroundTruth)
    assert gnd.max_side == 500
    assert gnd.image_path("a") == tmp_path / "jpg" / "a.jpg"
    c = gnd.protocol("classic")
    assert c.levels == ("classic",)
    q1 = c.query("Q1")
    assert q1.positives("classic") == {"q1", "a", "b"}
    assert q1.junk("classic") == {"c"}
    assert q1.bbox == (1.0, 2.0, 30.0, 40.0)
    # Q1: ranking q1, c(junk), e, a, b -> q1 hit, e miss, a hit, b hit (junk skipped)
    #   r1 R 1/3 P 1; r2 R 1/3 P 1/2; r3 R 2/3 P 2/3; r4 R 1 P 3/4
    #   AP = 1/3 + (1/3)(1/2 + 2/3)/2 + (1/3)(2/3 + 3/4)/2
    ap_q1 = 1 / 3 + (1 / 3) * (0.5 + 2 / 3) / 2 + (1 / 3) * (2 / 3 + 0.75) / 2
    names = {"Q1": ["q1", "c", "e", "a", "b", "d"], "Q2": ["d"]}
    res = c.evaluate(names)
    assert res.aps["classic"]["Q1"] == pytest.approx(ap_q1)
    assert res.aps["classic"]["Q2"] == 1.0
    assert res.map["classic"] == pytest.approx((ap_q1 + 1.0) / 2)
    # the same rankings as integer positions in the database, in query order
    pos = [[0, 3, 5, 1, 2, 4], np.array([4])]
    assert c.evaluate(pos).map == res.map

    r = gnd.protocol("revisited")
    assert r.levels == ("easy", "medium", "hard")
    # R1 ranking: b, c, a. easy: pos {a}, ignore {c, b} -> a first -> 1
    #   medium: pos {a, b}, ignore {c} -> b, a -> 1; hard: pos {b}, ignore {c, a} -> 1
    # R2 ranking: a, d: easy/medium pos {d}: rank 2 -> 0.25; hard: no positives -> skipped
    res = r.evaluate({"R1": ["b", "c", "a"], "R2": ["a", "d"]})
    assert res.map["easy"] == pytest.approx((1 + 0.25) / 2)
    assert res.map["medium"] == pytest.approx((1 + 0.25) / 2)
    assert res.map["hard"] == pytest.approx(1.0)
    assert res.skipped["hard"] == ("R2",)
    assert "R2" not in res.aps["hard"]
    assert "easy" in str(res)


def test_protocol_errors(tmp_path):
    gnd = load_gnd(_toy_gnd(tmp_path))
    c = gnd.protocol("classic")
    with pytest.raises(ValueError, match="no ranking"):
        c.evaluate({"Q1": ["a"]})
    with pytest.raises(ValueError, match="2 queries"):
        c.evaluate([["a"]])
    with pytest.raises(ValueError, match="outside the database"):
        c.evaluate([[0, 99], [1]])
    with pytest.raises(TypeError, match="names"):
        c.evaluate([[0.5], [1]])
    with pytest.raises(ValueError, match="unknown level"):
        c.query("Q1").positives("hard")
    # a name outside the protocol's database is refused, not silently counted as a negative
    ok = c.evaluate([list(c.database), list(c.database)])
    with pytest.raises(ValueError, match=r"1 names are not in protocol 'classic'.*first: 'stranger'"):
        c.evaluate([["stranger"] + list(c.database), list(c.database)])
    assert c.evaluate([list(c.database), list(c.database)]) == ok
    with pytest.raises(ValueError, match="no protocol"):
        gnd.protocol("paris")
    with pytest.raises(KeyError):
        c.query("nope")


def test_load_gnd_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_gnd(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_gnd(bad)
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="neither"):
        load_gnd(bad)
    bad.write_text(
        json.dumps(
            {
                "protocols": {
                    "classic": {
                        "database": ["a"],
                        "queries": [{"id": "q", "image": "a", "bbox": [5, 5, 1, 1], "good": ["a"]}],
                    }
                }
            }
        )
    )
    with pytest.raises(ValueError, match="empty"):
        load_gnd(bad)
    bad.write_text(json.dumps({"protocols": {"other": {"database": ["a"], "queries": []}}}))
    with pytest.raises(ValueError, match="positives"):
        load_gnd(bad)


# ----------------------------------------------------------------------------------------
# UKBench N-S
# ----------------------------------------------------------------------------------------
def test_ukbench_score_hand_computed():
    groups = [["a0", "a1", "a2", "a3"], ["b0", "b1", "b2", "b3"]]
    rankings = {
        "a0": ["a0", "a1", "a2", "a3", "b0"],  # 4
        "a1": ["a1", "b0", "a0", "b1", "a2"],  # 2 (a2 is 5th)
        "b0": ["a0", "a1", "a2", "a3"],  # 0
        "b3": ["b3"],  # 1 (short ranking)
    }
    assert ukbench_score(rankings, groups) == pytest.approx((4 + 2 + 0 + 1) / 4)
    # sequence form, aligned with queries
    assert ukbench_score(list(rankings.values()), groups, queries=list(rankings)) == pytest.approx(1.75)
    assert ukbench_score(rankings, groups, top=1) == pytest.approx((1 + 1 + 0 + 1) / 4)


def test_ukbench_errors():
    groups = [["a", "b"], ["c"]]
    with pytest.raises(ValueError, match="no group"):
        ukbench_score({"z": ["a"]}, groups)
    with pytest.raises(ValueError, match="more than one group"):
        ukbench_score({"a": ["a"]}, [["a"], ["a"]])
    with pytest.raises(ValueError, match="queries"):
        ukbench_score([["a"]], groups)
    with pytest.raises(ValueError, match="top"):
        ukbench_score({"a": ["a"]}, groups, top=0)
    with pytest.raises(ValueError, match="no query"):
        ukbench_score({}, groups)


# ----------------------------------------------------------------------------------------
# the real ground-truth files, when present
# ----------------------------------------------------------------------------------------
OXF = DATASETS / "oxford5k-dev" / "gnd.json"
UKB = DATASETS / "ukbench-56" / "gnd.json"


@pytest.mark.skipif(not OXF.exists(), reason=f"{OXF} not present")
def test_oxford_dev_gnd_perfect_and_reversed_rankings():
    gnd = load_gnd(OXF)
    assert isinstance(gnd, OxfordGroundTruth)
    c, r = gnd.protocol("classic"), gnd.protocol("revisited")
    assert len(c) == 25 and len(r) == 34
    for proto in (c, r):
        for lvl in proto.levels:
            perfect = []
            for q in proto.queries:
                pos = sorted(q.positives(lvl))
                perfect.append(pos + [n for n in proto.database if n not in set(pos)])
            res = proto.evaluate(perfect, levels=[lvl])
            assert res.map[lvl] == pytest.approx(1.0)
            if proto is r:  # the query images are not in the revisited database: ranking them is refused
                with pytest.raises(ValueError, match="not in protocol 'revisited'"):
                    proto.evaluate([[q.image] + p for q, p in zip(proto.queries, perfect)], levels=[lvl])
            # a ranking that puts every positive last scores far below 1
            worst = [list(reversed(p)) for p in perfect]
            assert proto.evaluate(worst, levels=[lvl]).map[lvl] < 0.5
    # every query image exists and its box lies inside it
    from roiret.io.images import probe_image_size

    for q in c.queries + r.queries:
        _, (w, h) = probe_image_size(gnd.image_path(q.image).read_bytes())
        x1, y1, x2, y2 = q.bbox
        assert 0 <= x1 < x2 <= w + 1 and 0 <= y1 < y2 <= h + 1, (q.id, q.bbox, w, h)


@pytest.mark.skipif(not UKB.exists(), reason=f"{UKB} not present")
def test_ukbench_gnd_perfect_score():
    gnd = load_gnd(UKB)
    assert isinstance(gnd, UKBenchGroundTruth)
    assert len(gnd.images) == 56 and len(gnd.groups) == 14
    perfect = {q: [q] + [n for g in gnd.groups if q in g for n in g if n != q] for q in gnd.images}
    assert gnd.score(perfect) == 4.0
    # integer positions in images
    idx = {n: i for i, n in enumerate(gnd.images)}
    assert gnd.score([[idx[n] for n in perfect[q]] for q in gnd.images]) == 4.0
