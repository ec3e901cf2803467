"""Indexing a collection too large for one process on a Ray cluster (``pip install
roiret[ray]``), into a sharded index folder that :meth:`roiret.Retriever.load` and
``roiret search`` use unchanged (:mod:`roiret.search.sharded`; docs/SCALING.md).

>>> from roiret import distributed                                       # doctest: +SKIP
>>> report = distributed.index(paths, "big.index", shards=64, address="auto")  # doctest: +SKIP
>>> r = distributed.serve("big.index", actors=8)    # shards held by Ray actors  # doctest: +SKIP
>>> r.search("query.jpg", top=10)                    # exactly as Retriever.load  # doctest: +SKIP

``import roiret`` (and this package) never imports ray: :func:`index` and :func:`serve`
import it when called.
"""

from __future__ import annotations

from .ray_index import IndexReport, index, plan_shards
from .serve import release, serve

__all__ = ["IndexReport", "index", "plan_shards", "release", "serve"]
