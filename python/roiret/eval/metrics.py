"""Retrieval evaluation: Oxford/Paris ground truth, average precision, mAP, UKBench N-S score.

Ground truth
------------
:func:`load_gnd` reads a ``gnd.json`` file (or the folder holding it) in one of two layouts:

* **Oxford / Paris style** (:class:`OxfordGroundTruth`): ``images`` (file stems under
  ``jpg/``), ``protocols.classic`` and/or ``protocols.revisited``, each with a ``database``
  (names of the ranked images) and ``queries`` (``id``, ``landmark``, ``image``, ``bbox``
  ``[x1, y1, x2, y2]`` and lists of image names: ``good``/``ok``/``junk`` for the classic
  protocol, ``easy``/``hard``/``junk`` for the revisited one). A protocol may say which lists
  are positives and which are ignored, per level, in ``positives`` / ``ignore``; when it does
  not, the standard definitions are used:

  ============  ====================  ======================
  level         positives             ignored (junk)
  ============  ====================  ======================
  ``classic``   good + ok             junk
  ``easy``      easy                  junk + hard
  ``medium``    easy + hard           junk
  ``hard``      hard                  junk + easy
  ============  ====================  ======================

* **UKBench style** (:class:`UKBenchGroundTruth`): ``images`` and ``groups`` (lists of the
  names that show the same object).

Scores
------
:func:`average_precision` is the official Oxford ``compute_ap.cpp`` (Philbin et al., 2007),
also used unchanged by the revisited protocol (Radenović et al., 2018): walk down the ranking,
skip ignored (junk) images entirely, and add the area of a trapezoid at every step::

    ap += (recall_i - recall_{i-1}) * (precision_i + precision_{i-1}) / 2

with ``precision_0 = 1`` and ``recall_0 = 0``. Recall is divided by the *total* number of
positives, so a positive that never appears in the ranking counts as missed. The only
difference from the C++ file is that sums are done in double rather than single precision.

:func:`mean_average_precision` averages over queries and *skips* queries that have no positive
(at that level): they are reported, not counted as 0 — as the revisited protocol does.

:func:`ukbench_score` is the N-S score of Nistér & Stewénius (2006): the mean, over queries,
of how many of the query's own group (the query included) appear in its top 4.

Rankings
--------
Everywhere a *ranking* is a sequence (list, tuple, 1-D array) of database items, best first:
either image names (``str``) or integer positions in the protocol's ``database`` list. It may
be a prefix of the database (a top-N list); items must not repeat.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Any,
    Collection,
    Dict,
    FrozenSet,
    Hashable,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import numpy as np

__all__ = [
    "average_precision",
    "mean_average_precision",
    "ukbench_score",
    "load_gnd",
    "Query",
    "Protocol",
    "EvalResult",
    "OxfordGroundTruth",
    "UKBenchGroundTruth",
    "DEFAULT_LEVELS",
]

PathLike = Union[str, "os.PathLike[str]"]
Ranking = Union[Sequence[Hashable], np.ndarray]

#: Positives / ignored lists per evaluation level, used when gnd.json does not say.
DEFAULT_LEVELS: Dict[str, Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]]] = {
    "classic": {"classic": (("good", "ok"), ("junk",))},
    "revisited": {
        "easy": (("easy",), ("junk", "hard")),
        "medium": (("easy", "hard"), ("junk",)),
        "hard": (("hard",), ("junk", "easy")),
    },
}


# ----------------------------------------------------------------------------------------
# AP / mAP / N-S
# ----------------------------------------------------------------------------------------
def _as_item_list(ranking: Ranking, name: str = "ranking") -> List[Hashable]:
    if isinstance(ranking, (str, bytes)):
        raise TypeError(f"{name}: expected a sequence of items, got a single {type(ranking).__name__}")
    if isinstance(ranking, np.ndarray):
        if ranking.ndim != 1:
            raise ValueError(f"{name}: expected a 1-D array, got shape {ranking.shape}")
        if ranking.dtype.kind in "iu":
            return [int(v) for v in ranking]
        if ranking.dtype.kind in "UO":
            return [v.item() if isinstance(v, np.generic) else v for v in ranking]
        raise TypeError(
            f"{name}: expected an array of integer positions or names, got dtype {ranking.dtype}"
        )
    try:
        items = list(ranking)
    except TypeError:
        raise TypeError(
            f"{name}: expected a sequence of names or integer positions, got {type(ranking).__name__}"
        ) from None
    return [int(v) if isinstance(v, np.integer) else v for v in items]


def average_precision(
    ranking: Ranking, positives: Collection[Hashable], junk: Collection[Hashable] = ()
) -> float:
    """Average precision of one ranking, exactly as the official Oxford ``compute_ap.cpp``.

    Parameters
    ----------
    ranking:
        Retrieved items, best first (names, integer ids, anything hashable). May be shorter
        than the database; items must not repeat.
    positives:
        The relevant items. Duplicates are ignored (it is a set). Positives that are not in
        ``ranking`` are counted as missed (recall never reaches 1).
    junk:
        Items to skip: they are removed from the ranking before precision and recall are
        computed. An item that is both junk and positive is junk (as in ``compute_ap.cpp``).

    Returns
    -------
    float
        AP in [0, 1].

    Raises
    ------
    ValueError
        ``positives`` is empty (AP is undefined; :func:`mean_average_precision` skips such
        queries), or ``ranking`` repeats an item.
    TypeError
        ``ranking`` is not a sequence.

    Examples
    --------
    Positives {a, b}, ranking [a, x, b]: recall steps 1/2 at rank 1 (precision 1) and 1/2 at
    rank 3 (precision 2/3, previous 1/2): AP = 1/2·(1+1)/2 + 1/2·(1/2+2/3)/2 = 0.7916…

    >>> round(average_precision(["a", "x", "b"], {"a", "b"}), 4)
    0.7917
    """
    items = _as_item_list(ranking)
    pos = set(positives)
    amb = set(junk)
    if not pos:
        raise ValueError("average_precision: no positives (AP is undefined for this query)")
    if len(set(items)) != len(items):
        seen, dup = set(), None
        for it in items:
            if it in seen:
                dup = it
                break
            seen.add(it)
        raise ValueError(f"average_precision: the ranking repeats item {dup!r}")
    # Positives that are also junk are junk (compute_ap.cpp tests `amb` first), and they
    # still count in |pos| there; mirror that exactly.
    n_pos = float(len(pos))
    old_recall, old_precision, ap = 0.0, 1.0, 0.0
    hits, j = 0, 0
    for it in items:
        if it in amb:
            continue
        if it in pos:
            hits += 1
        recall = hits / n_pos
        precision = hits / (j + 1.0)
        ap += (recall - old_recall) * ((old_precision + precision) / 2.0)
        old_recall, old_precision = recall, precision
        j += 1
    return ap


def mean_average_precision(
    rankings: Sequence[Ranking],
    positives: Sequence[Collection[Hashable]],
    junk: Optional[Sequence[Collection[Hashable]]] = None,
) -> Tuple[float, np.ndarray]:
    """Mean AP over queries; queries without positives are skipped.

    Parameters
    ----------
    rankings, positives, junk:
        One entry per query (same length), as in :func:`average_precision`. ``junk=None``
        means no junk for any query.

    Returns
    -------
    (mAP, aps):
        ``aps`` is a float64 array with one AP per query, NaN for skipped queries; ``mAP``
        is the mean of the non-NaN entries.

    Raises
    ------
    ValueError
        The lengths differ, or no query has a positive.
    """
    nq = len(rankings)
    if len(positives) != nq or (junk is not None and len(junk) != nq):
        raise ValueError(
            f"mean_average_precision: got {nq} rankings, {len(positives)} positive sets and "
            f"{'no' if junk is None else len(junk)} junk sets; expected one of each per query"
        )
    aps = np.full(nq, np.nan, dtype=np.float64)
    for i in range(nq):
        pos = set(positives[i])
        if not pos:
            continue
        aps[i] = average_precision(rankings[i], pos, () if junk is None else junk[i])
    valid = ~np.isnan(aps)
    if not valid.any():
        raise ValueError("mean_average_precision: no query has a positive; mAP is undefined")
    return float(aps[valid].mean()), aps


def ukbench_score(
    rankings: Union[Mapping[Hashable, Ranking], Sequence[Ranking]],
    groups: Sequence[Collection[Hashable]],
    *,
    queries: Optional[Sequence[Hashable]] = None,
    top: int = 4,
) -> float:
    """UKBench N-S score: mean number of a query's own group found in its top ``top``.

    The query image itself counts (it is in the database and in its group), so the
    maximum is ``min(top, group size)`` — 4.0 for UKBench.

    Parameters
    ----------
    rankings:
        Either a mapping query item → ranking, or a sequence of rankings aligned with
        ``queries``.
    groups:
        The groups (each a collection of items that show the same object). Every query
        must belong to exactly one group.
    queries:
        The query items when ``rankings`` is a sequence; default: every item of every group,
        in group order.
    top:
        How many leading results to look at (4 in the standard score).

    Raises
    ------
    ValueError
        A query is in no group or in several; lengths differ; ``top`` < 1; no query.
    """
    if int(top) < 1:
        raise ValueError(f"ukbench_score: top must be >= 1, got {top}")
    group_of: Dict[Hashable, int] = {}
    gsets = [set(g) for g in groups]
    for gi, g in enumerate(gsets):
        for it in g:
            if it in group_of:
                raise ValueError(f"ukbench_score: item {it!r} is in more than one group")
            group_of[it] = gi
    if isinstance(rankings, Mapping):
        pairs = list(rankings.items())
    else:
        qs = list(queries) if queries is not None else [it for g in groups for it in g]
        if len(qs) != len(rankings):
            raise ValueError(
                f"ukbench_score: {len(rankings)} rankings for {len(qs)} queries; pass queries= "
                "or a mapping query -> ranking"
            )
        pairs = list(zip(qs, rankings))
    if not pairs:
        raise ValueError("ukbench_score: no query")
    total = 0
    for q, r in pairs:
        if q not in group_of:
            raise ValueError(f"ukbench_score: query {q!r} is in no group")
        g = gsets[group_of[q]]
        head = _as_item_list(r)[: int(top)]
        total += sum(1 for it in head if it in g)
    return total / len(pairs)


# ----------------------------------------------------------------------------------------
# ground truth
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Query:
    """One query of a protocol.

    ``lists`` holds the raw name lists of gnd.json (``good``/``ok``/``junk`` or
    ``easy``/``hard``/``junk``); :meth:`positives` and :meth:`junk` combine them per level.
    ``bbox`` is ``(x1, y1, x2, y2)`` in the pixels of the image file, or ``None``.
    """

    id: str
    image: str
    bbox: Optional[Tuple[float, float, float, float]]
    landmark: Optional[str]
    lists: Mapping[str, Tuple[str, ...]]
    _levels: Mapping[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = field(repr=False)

    def positives(self, level: str) -> FrozenSet[str]:
        """The positive image names of this query at ``level``."""
        return frozenset(n for key in self._level(level)[0] for n in self.lists.get(key, ()))

    def junk(self, level: str) -> FrozenSet[str]:
        """The ignored image names of this query at ``level``."""
        return frozenset(n for key in self._level(level)[1] for n in self.lists.get(key, ()))

    def _level(self, level: str):
        try:
            return self._levels[level]
        except KeyError:
            raise ValueError(
                f"query {self.id!r}: unknown level {level!r}; expected one of {sorted(self._levels)}"
            ) from None


@dataclass(frozen=True)
class EvalResult:
    """Scores of one protocol.

    ``map``: level → mAP (over the queries that have positives at that level).
    ``aps``: level → {query id: AP}, skipped queries absent.
    ``skipped``: level → ids of the queries without positives at that level.
    """

    protocol: str
    map: Dict[str, float]
    aps: Dict[str, Dict[str, float]]
    skipped: Dict[str, Tuple[str, ...]]

    def __str__(self) -> str:
        parts = [f"{lvl}: {100 * v:.2f}" for lvl, v in self.map.items()]
        return f"{self.protocol} mAP (%) " + ", ".join(parts)


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: the database (ranked images), its queries and levels."""

    name: str
    database: Tuple[str, ...]
    queries: Tuple[Query, ...]
    levels: Tuple[str, ...]

    def __len__(self) -> int:
        return len(self.queries)

    def query(self, qid: str) -> Query:
        """The query with id ``qid``."""
        for q in self.queries:
            if q.id == qid:
                return q
        raise KeyError(f"protocol {self.name!r} has no query {qid!r}")

    def _names(self, ranking: Ranking, qid: str) -> List[Hashable]:
        items = _as_item_list(ranking, name=f"ranking of query {qid!r}")
        if items and all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            n = len(self.database)
            bad = [v for v in items if v < 0 or v >= n]
            if bad:
                raise ValueError(
                    f"ranking of query {qid!r}: position {bad[0]} outside the database "
                    f"(0..{n - 1})"
                )
            return [self.database[v] for v in items]
        if not all(isinstance(v, str) for v in items):
            kinds = sorted({type(v).__name__ for v in items})
            raise TypeError(
                f"ranking of query {qid!r}: expected image names (str) or integer positions in "
                f"the database, got items of type {', '.join(kinds)}"
            )
        return items

    def evaluate(
        self,
        rankings: Union[Mapping[str, Ranking], Sequence[Ranking]],
        levels: Optional[Iterable[str]] = None,
    ) -> EvalResult:
        """Score rankings under this protocol.

        Parameters
        ----------
        rankings:
            A mapping query id → ranking covering every query, or a sequence of rankings in
            the order of :attr:`queries`. Items are image names or integer positions in
            :attr:`database`.
        levels:
            Levels to report (default: all of :attr:`levels`).

        Raises
        ------
        ValueError
            A query has no ranking, or a ranking is invalid (repeats, out-of-range positions),
            or a level has no query with positives.
        """
        if isinstance(rankings, Mapping):
            missing = [q.id for q in self.queries if q.id not in rankings]
            if missing:
                raise ValueError(
                    f"protocol {self.name!r}: no ranking for {len(missing)} queries "
                    f"(first: {missing[0]!r})"
                )
            ordered = [rankings[q.id] for q in self.queries]
        else:
            ordered = list(rankings)
            if len(ordered) != len(self.queries):
                raise ValueError(
                    f"protocol {self.name!r}: got {len(ordered)} rankings for "
                    f"{len(self.queries)} queries"
                )
        names = [self._names(r, q.id) for r, q in zip(ordered, self.queries)]
        lvls = list(self.levels if levels is None else levels)
        out_map: Dict[str, float] = {}
        out_aps: Dict[str, Dict[str, float]] = {}
        out_skip: Dict[str, Tuple[str, ...]] = {}
        for lvl in lvls:
            pos = [q.positives(lvl) for q in self.queries]
            junk = [q.junk(lvl) for q in self.queries]
            m, aps = mean_average_precision(names, pos, junk)
            out_map[lvl] = m
            out_aps[lvl] = {
                q.id: float(a) for q, a in zip(self.queries, aps) if not math.isnan(a)
            }
            out_skip[lvl] = tuple(q.id for q, a in zip(self.queries, aps) if math.isnan(a))
        return EvalResult(self.name, out_map, out_aps, out_skip)


def _bad(path: Optional[Path], msg: str) -> ValueError:
    return ValueError(f"{path}: {msg}" if path is not None else msg)


def _str_list(v: Any, what: str, path: Optional[Path]) -> Tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise _bad(path, f"{what}: expected a list of names, got {type(v).__name__}")
    return tuple(v)


def _parse_levels(pname: str, pdata: Mapping[str, Any], path: Optional[Path]):
    pos, ign = pdata.get("positives"), pdata.get("ignore")
    if pos is None and ign is None:
        if pname not in DEFAULT_LEVELS:
            raise _bad(
                path,
                f"protocol {pname!r} does not say which lists are positives "
                "(add 'positives' and 'ignore')",
            )
        return dict(DEFAULT_LEVELS[pname])
    # single level: lists of list names; several: {level: list of list names}
    if isinstance(pos, list):
        if ign is not None and not isinstance(ign, list):
            raise _bad(path, f"protocol {pname!r}: 'ignore' must be a list like 'positives'")
        return {pname: (tuple(pos), tuple(ign or ()))}
    if isinstance(pos, dict):
        ign = ign or {}
        if not isinstance(ign, dict):
            raise _bad(path, f"protocol {pname!r}: 'ignore' must be a mapping like 'positives'")
        return {lvl: (tuple(p), tuple(ign.get(lvl, ()))) for lvl, p in pos.items()}
    raise _bad(path, f"protocol {pname!r}: 'positives' must be a list or a mapping")


def _parse_bbox(v: Any, qid: str, path: Optional[Path]):
    if v is None:
        return None
    if not isinstance(v, (list, tuple)) or len(v) != 4:
        raise _bad(path, f"query {qid!r}: bbox must be [x1, y1, x2, y2], got {v!r}")
    x1, y1, x2, y2 = (float(c) for c in v)
    if not (x2 > x1 and y2 > y1):
        raise _bad(path, f"query {qid!r}: bbox {v!r} is empty (need x2 > x1 and y2 > y1)")
    return (x1, y1, x2, y2)


_LIST_KEYS = ("good", "ok", "junk", "easy", "hard")


def _parse_protocol(pname: str, pdata: Any, path: Optional[Path]) -> Protocol:
    if not isinstance(pdata, dict):
        raise _bad(path, f"protocol {pname!r}: expected an object")
    for key in ("database", "queries"):
        if key not in pdata:
            raise _bad(path, f"protocol {pname!r}: missing {key!r}")
    database = _str_list(pdata["database"], f"protocol {pname!r} database", path)
    if len(set(database)) != len(database):
        raise _bad(path, f"protocol {pname!r}: the database repeats names")
    levels = _parse_levels(pname, pdata, path)
    queries = []
    for i, qd in enumerate(pdata["queries"]):
        if not isinstance(qd, dict) or "image" not in qd:
            raise _bad(path, f"protocol {pname!r}: query #{i} has no 'image'")
        qid = str(qd.get("id", f"{pname}_{i}"))
        lists = {
            k: _str_list(qd[k], f"query {qid!r} {k}", path) for k in _LIST_KEYS if k in qd
        }
        for k in {k for lv in levels.values() for grp in lv for k in grp}:
            lists.setdefault(k, ())
        queries.append(
            Query(
                id=qid,
                image=str(qd["image"]),
                bbox=_parse_bbox(qd.get("bbox"), qid, path),
                landmark=qd.get("landmark"),
                lists=lists,
                _levels=levels,
            )
        )
    ids = [q.id for q in queries]
    if len(set(ids)) != len(ids):
        raise _bad(path, f"protocol {pname!r}: query ids repeat")
    return Protocol(pname, database, tuple(queries), tuple(levels))


@dataclass(frozen=True)
class OxfordGroundTruth:
    """An Oxford/Paris-style data set: images, protocols, and where the files are."""

    name: str
    images: Tuple[str, ...]
    protocols: Dict[str, Protocol]
    root: Optional[Path] = None
    max_side: Optional[int] = None
    image_dir: str = "jpg"
    image_ext: str = ".jpg"

    def protocol(self, name: str) -> Protocol:
        """The protocol ``name`` (``"classic"`` or ``"revisited"``)."""
        try:
            return self.protocols[name]
        except KeyError:
            raise ValueError(
                f"{self.name}: no protocol {name!r}; available: {sorted(self.protocols)}"
            ) from None

    def image_path(self, stem: str) -> Path:
        """Path of the image file for the name ``stem``."""
        if self.root is None:
            raise ValueError("this ground truth was not loaded from a file; its root is unknown")
        return self.root / self.image_dir / f"{stem}{self.image_ext}"


@dataclass(frozen=True)
class UKBenchGroundTruth:
    """A UKBench-style data set: images and groups of views of the same object."""

    name: str
    images: Tuple[str, ...]
    groups: Tuple[Tuple[str, ...], ...]
    root: Optional[Path] = None
    image_dir: str = "jpg"
    image_ext: str = ".jpg"

    def image_path(self, stem: str) -> Path:
        """Path of the image file for the name ``stem``."""
        if self.root is None:
            raise ValueError("this ground truth was not loaded from a file; its root is unknown")
        return self.root / self.image_dir / f"{stem}{self.image_ext}"

    def score(self, rankings: Union[Mapping[str, Ranking], Sequence[Ranking]], top: int = 4) -> float:
        """N-S score (:func:`ukbench_score`); a sequence of rankings follows :attr:`images`,
        integer items are positions in :attr:`images`."""
        if isinstance(rankings, Mapping):
            pairs = dict(rankings)
        else:
            if len(rankings) != len(self.images):
                raise ValueError(f"got {len(rankings)} rankings for {len(self.images)} images")
            pairs = dict(zip(self.images, rankings))
        named = {}
        for q, r in pairs.items():
            items = _as_item_list(r, name=f"ranking of {q!r}")
            named[q] = [self.images[v] if isinstance(v, int) else v for v in items]
        return ukbench_score(named, self.groups, top=top)


def load_gnd(path: PathLike) -> Union[OxfordGroundTruth, UKBenchGroundTruth]:
    """Load a ``gnd.json`` (or the folder that contains one).

    Returns an :class:`OxfordGroundTruth` when the file has ``protocols``, a
    :class:`UKBenchGroundTruth` when it has ``groups``.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file is not valid JSON or not in either layout (the message says what is wrong).
    """
    p = Path(path)
    if p.is_dir():
        p = p / "gnd.json"
    with open(p, "r", encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise _bad(p, f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise _bad(p, "expected a JSON object at the top level")
    name = str(data.get("name", p.parent.name))
    root = p.parent
    if "protocols" in data:
        protos = data["protocols"]
        if not isinstance(protos, dict) or not protos:
            raise _bad(p, "'protocols' must be a non-empty object")
        images = _str_list(data.get("images", []), "images", p)
        parsed = {pn: _parse_protocol(pn, pd, p) for pn, pd in protos.items()}
        ms = data.get("max_side")
        return OxfordGroundTruth(
            name=name,
            images=images,
            protocols=parsed,
            root=root,
            max_side=int(ms) if ms is not None else None,
        )
    if "groups" in data:
        groups = data["groups"]
        if not isinstance(groups, list):
            raise _bad(p, "'groups' must be a list of lists of names")
        g = tuple(_str_list(gr, f"group #{i}", p) for i, gr in enumerate(groups))
        images = _str_list(data.get("images", [n for gr in g for n in gr]), "images", p)
        return UKBenchGroundTruth(name=name, images=images, groups=g, root=root)
    raise _bad(p, "neither 'protocols' (Oxford/Paris layout) nor 'groups' (UKBench layout) found")
