"""The search side: the two-stage index and the :class:`~.retriever.Retriever` facade.

* :mod:`.config` — :class:`~.config.RetrieverConfig` (the validated parameter groups);
* :mod:`.results` — :class:`~.results.Hit`, :class:`~.results.SearchResult`, :class:`~.results.PreparedQuery`;
* :mod:`.store` — :class:`~.store.RoIStore`, RoI codes and boxes per image (CSR, memory-mappable);
* :mod:`.index` — :class:`~.index.TwoStageIndex`, inverted file + RoI store kept in step;
* :mod:`.collection` — :class:`~.collection.Collection`, the protocol ranking reads of an index;
* :mod:`.geometry`, :mod:`.verify`, :mod:`.expansion` — the local features' geometry, spatial
  verification of the top R and query expansion;
* :mod:`.rerank` — re-ranking the BoW candidates with RoI codes (fast / exhaustive / global, fusion);
* :mod:`.ranking` — :func:`~.ranking.rank`, a pure function of query, index and parameters;
* :mod:`.explain` — the RoI pair that best explains a match, for showing results;
* :mod:`.encoding` — images → index entries (BoW bag + RoI codes) and prepared queries;
* :mod:`.training` — what training reads from the images;
* :mod:`.persist` — the retriever's index folder;
* :mod:`.sharded` — :class:`~.sharded.ShardedIndex`, shards searched exactly as one index;
* :mod:`.locks` — the in-process reader/writer lock;
* :mod:`.retriever` — :class:`~.retriever.Retriever`, the facade over all of these.
"""

from .config import RetrieverConfig
from .results import Hit, PreparedQuery, SearchResult
from .retriever import Retriever

__all__ = ["Hit", "PreparedQuery", "Retriever", "RetrieverConfig", "SearchResult"]
