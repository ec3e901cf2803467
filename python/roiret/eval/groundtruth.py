"""Ground truth of retrieval data sets (:func:`load_gnd`): Oxford / Paris protocols with
their levels, and UKBench groups. Scores come from :mod:`roiret.eval.metrics`; the layout
of ``gnd.json`` is described there."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, FrozenSet, Hashable, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ..io import PathLike
from .metrics import Ranking, _as_item_list, mean_average_precision, ukbench_score

__all__ = ["DEFAULT_LEVELS", "EvalResult", "OxfordGroundTruth", "Protocol", "Query", "UKBenchGroundTruth", "load_gnd"]

#: Positives / ignored lists per evaluation level, used when gnd.json does not say.
DEFAULT_LEVELS: Dict[str, Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]]] = {
    "classic": {"classic": (("good", "ok"), ("junk",))},
    "revisited": {
        "easy": (("easy",), ("junk", "hard")),
        "medium": (("easy", "hard"), ("junk",)),
        "hard": (("hard",), ("junk", "easy")),
    },
}


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

    def _level(self, level: str) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
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
            positions = [v for v in items if isinstance(v, int)]  # all of them (checked above)
            n = len(self.database)
            bad = [v for v in positions if v < 0 or v >= n]
            if bad:
                raise ValueError(f"ranking of query {qid!r}: position {bad[0]} outside the database (0..{n - 1})")
            return [self.database[v] for v in positions]
        if not all(isinstance(v, str) for v in items):
            kinds = sorted({type(v).__name__ for v in items})
            raise TypeError(
                f"ranking of query {qid!r}: expected image names (str) or integer positions in "
                f"the database, got items of type {', '.join(kinds)}"
            )
        unknown = [v for v in items if v not in self._database_set]
        if unknown:  # counting them as negatives would lower AP without saying why
            raise ValueError(
                f"ranking of query {qid!r}: {len(unknown)} names are not in protocol {self.name!r}'s database "
                f"(first: {unknown[0]!r}); rank only Protocol.database (e.g. drop the query images for the "
                "revisited protocol)"
            )
        return items

    @functools.cached_property
    def _database_set(self) -> FrozenSet[str]:
        return frozenset(self.database)

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
                    f"protocol {self.name!r}: no ranking for {len(missing)} queries (first: {missing[0]!r})"
                )
            ordered = [rankings[q.id] for q in self.queries]
        else:
            ordered = list(rankings)
            if len(ordered) != len(self.queries):
                raise ValueError(f"protocol {self.name!r}: got {len(ordered)} rankings for {len(self.queries)} queries")
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
            out_aps[lvl] = {q.id: float(a) for q, a in zip(self.queries, aps) if not math.isnan(a)}
            out_skip[lvl] = tuple(q.id for q, a in zip(self.queries, aps) if math.isnan(a))
        return EvalResult(self.name, out_map, out_aps, out_skip)


def _bad(path: Optional[Path], msg: str) -> ValueError:
    return ValueError(f"{path}: {msg}" if path is not None else msg)


def _str_list(v: Any, what: str, path: Optional[Path]) -> Tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise _bad(path, f"{what}: expected a list of names, got {type(v).__name__}")
    return tuple(v)


def _parse_levels(
    pname: str, pdata: Mapping[str, Any], path: Optional[Path]
) -> Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]]:
    pos, ign = pdata.get("positives"), pdata.get("ignore")
    if pos is None and ign is None:
        if pname not in DEFAULT_LEVELS:
            raise _bad(
                path,
                f"protocol {pname!r} does not say which lists are positives (add 'positives' and 'ignore')",
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


def _parse_bbox(v: Any, qid: str, path: Optional[Path]) -> Optional[Tuple[float, float, float, float]]:
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
        lists = {k: _str_list(qd[k], f"query {qid!r} {k}", path) for k in _LIST_KEYS if k in qd}
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
            raise ValueError(f"{self.name}: no protocol {name!r}; available: {sorted(self.protocols)}") from None

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
        named: Dict[Hashable, Ranking] = {}
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
