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

from typing import (
    Collection,
    Dict,
    Hashable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import numpy as np

__all__ = ["average_precision", "mean_average_precision", "ukbench_score"]

Ranking = Union[Sequence[Hashable], np.ndarray]


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
        raise TypeError(f"{name}: expected an array of integer positions or names, got dtype {ranking.dtype}")
    try:
        items = list(ranking)
    except TypeError:
        raise TypeError(
            f"{name}: expected a sequence of names or integer positions, got {type(ranking).__name__}"
        ) from None
    return [int(v) if isinstance(v, np.integer) else v for v in items]


def average_precision(ranking: Ranking, positives: Collection[Hashable], junk: Collection[Hashable] = ()) -> float:
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
