"""Reproduce the paper's Tables 1–2 layout on an Oxford-style dataset (``roiret eval``).

One index is built per (variant, RoI descriptor) with the public :class:`~roiret.Retriever`
at the largest K — the RootSIFT vocabulary (shared by all rows) and, where the variant
asks for it, the PCA-whitening are learned on the database images without labels — and
evaluated:

* **BoW**: the first stage alone (ASMK or TF-IDF: the first row's ``first_stage``);
* **Baseline**: the BoW top N re-ranked by the whole-image code (the paper's global
  representation), the rest in BoW order;
* **K = 5, 10, 15, 20**: the BoW top N re-ranked with K RoIs per image and per query, fast
  strategy (n, k). Smaller K are the first K RoIs of the largest K (RoIs are kept in
  selection order), i.e. exactly what indexing with that K gives;
* **exhaustive**: every query RoI against every candidate, at the largest K.

Variants: ``paper`` — :meth:`RetrieverConfig.paper` (PCA-whitened descriptors binarised
against their mean, the RoI score alone, the TF-IDF first stage); ``roi`` — the library's codes (512 projected
bits), the RoI score alone on the BoW top N (no verification, expansion or fusion: the RoI
stage's own strength); ``roiret`` — the library's defaults (spatial verification, query
expansion, query-adaptive fusion of the BoW and RoI scores). Variants that differ only in
search-time settings share one index (and one cache folder).

mAP follows :mod:`roiret.eval.metrics` (classic: good + ok positive, junk ignored; revisited:
Medium and Hard). Rankings are restricted to each protocol's database; the query is the
crop of its box. Indexing throughput (with its breakdown), query latency and memory per
image are measured on the way.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..params import (
    DEFAULT_GEM_P,
    DEFAULT_MIN_INLIERS,
    DEFAULT_QE,
    DEFAULT_QE_MARGIN,
    DEFAULT_R,
    FIRST_STAGE_ONLY,
    SearchParams,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..bow import Vocabulary
    from ..io import PathLike
    from ..io.images import Box
    from ..search.config import RetrieverConfig
    from ..search.results import Hit, PreparedQuery
    from ..search.retriever import Retriever
    from .groundtruth import OxfordGroundTruth, Query

__all__ = ["EvalTable", "VARIANTS", "evaluate_oxford", "oxford_table"]

# settings that only matter at search time: left out of the cache key, taken from the
# current configuration when a cached index is loaded
SEARCH_TIME = {
    "N": 0, "n": 0, "k": 0, "fusion": None, "mode": "fast", "R": 0, "min_inliers": 1, "qe": 0, "qe_margin": None
}  # fmt: skip

#: configuration overrides of each variant (see the module docstring)
VARIANTS: Dict[str, Dict[str, Any]] = {
    "paper": {"whitening": True, "code_bits": None, "fusion": None, "R": 0, "qe": 0, "first_stage": "tfidf"},
    "roi": {"fusion": None, "R": 0, "qe": 0},
    "roiret": {},
}


@dataclass
class EvalTable:
    dataset: str
    levels: List[str]  # "classic", "revisited/medium", ...
    Ks: List[int]
    bow: Dict[str, float]  # level -> mAP
    rows: Dict[str, Dict[str, Dict[str, float]]]  # row -> column -> level -> mAP
    dims: Dict[str, int]  # row -> code bits
    settings: Dict[str, object]
    speed: Dict[str, Dict[str, float]] = field(default_factory=dict)

    def markdown(self) -> str:
        s = self.settings
        out = [f"### {self.dataset}: mAP (%)", "", "Settings: " + ", ".join(f"{k}={v}" for k, v in s.items()), ""]
        cols = ["Baseline"] + [f"K={k}" for k in self.Ks] + [f"K={max(self.Ks)} exhaustive"]
        for lvl in self.levels:
            out += [f"**{lvl}**", "", "| Feature | Bits | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
            out.append(
                f"| BoW only ({str(s.get('first_stage', 'tfidf')).upper()}, RootSIFT, {s['vocab_size']} words) | – | "
                + " | ".join([f"{100 * self.bow[lvl]:.2f}"] + ["–"] * (len(cols) - 1))
                + " |"
            )
            for name, row in self.rows.items():
                vals = [row["baseline"][lvl]] + [row[f"K={k}"][lvl] for k in self.Ks] + [row["exhaustive"][lvl]]
                out.append(f"| {name} | {self.dims[name]} | " + " | ".join(f"{100 * v:.2f}" for v in vals) + " |")
            out.append("")
        if self.speed:
            out += [
                "**Speed and size** (this machine, CPU)",
                "",
                "| Row | index img/s | SIFT | quantise | CNN trunk | regions+codes | query p50 / p95 ms "
                "| re-ranking p50 ms, fast / exhaustive | bytes / image |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for name, sp in self.speed.items():
                if not np.isfinite(sp.get("index_img_s", np.nan)):
                    idx = "cached"
                    parts = ["–"] * 4
                else:
                    idx = f"{sp['index_img_s']:.2f}"
                    parts = [f"{1000 * sp[k]:.0f} ms/img" for k in ("sift", "quantize", "cnn_trunk", "regions_codes")]
                out.append(
                    f"| {name} | {idx} | "
                    + " | ".join(parts)
                    + f" | {sp['query_p50_ms']:.0f} / {sp['query_p95_ms']:.0f} | "
                    f"{sp['rank_fast_p50_ms']:.3f} / {sp['rank_exhaustive_p50_ms']:.3f} | "
                    f"{sp['bytes_per_image']:.0f} |"
                )
            out.append("")
        return "\n".join(out)

    def to_json(self) -> str:
        return json.dumps(
            {
                "dataset": self.dataset,
                "levels": self.levels,
                "Ks": self.Ks,
                "bow": self.bow,
                "rows": self.rows,
                "dims": self.dims,
                "settings": self.settings,
                "speed": self.speed,
            },
            indent=2,
            default=float,
        )


def evaluate_oxford(gt: OxfordGroundTruth, rank_fn: Callable[[Query], Iterable[Hit]]) -> Dict[str, float]:
    """mAP of ``rank_fn(query) -> hits`` (objects with ``.name``) on an Oxford-style ground
    truth: ``{"classic": …, "revisited/medium": …, "revisited/hard": …}`` for the protocols
    present (revisited Easy left out). Each ranking is restricted to its protocol's
    database."""
    out = {}
    for p in gt.protocols:
        proto = gt.protocol(p)
        allowed = set(proto.database)
        rankings = {q.id: [h.name for h in rank_fn(q) if h.name in allowed] for q in proto.queries}
        for lvl, v in proto.evaluate(rankings).map.items():
            if p == "revisited" and lvl == "easy":
                continue
            out["classic" if p == "classic" else f"{p}/{lvl}"] = v
    return out


def _levels(gt: OxfordGroundTruth, protocols: Sequence[str]) -> List[str]:
    out = []
    for p in protocols:
        for lvl in gt.protocol(p).levels:
            if p == "revisited" and lvl == "easy":
                continue
            out.append("classic" if p == "classic" else f"{p}/{lvl}")
    return out


def _build_or_load(
    config: RetrieverConfig,
    paths: List[str],
    stems: List[str],
    cpath: Optional[Path],
    vocabulary: Optional[Vocabulary],
    name: str,
    opts: Dict[str, Any],
    print_fn: Callable[[str], None],
) -> Tuple[Retriever, float]:
    """A retriever of ``config`` over ``paths`` — loaded from the cache folder ``cpath`` when it
    holds one (search-time settings taken from ``config``), else built (and cached) — and its
    indexing rate (NaN when loaded)."""
    from ..search.retriever import Retriever

    t0 = time.perf_counter()
    if cpath is not None and (cpath / "manifest.json").exists():
        r = Retriever.load(cpath, device=opts["device"], weights=opts["weights"], progress=opts["progress"])
        r.config = r.config.replace(**{key: getattr(config, key) for key in SEARCH_TIME})
        print_fn(f"[{name}] loaded cached index {cpath}")
        return r, float("nan")
    r = Retriever(config, **opts)
    r.train(paths, vocabulary=vocabulary)
    t1 = time.perf_counter()
    r.add(paths, names=stems)
    rate = len(paths) / (time.perf_counter() - t1)
    print_fn(f"[{name}] trained in {t1 - t0:.0f} s, indexed {len(r)} images at {rate:.2f} img/s")
    if cpath is not None:
        r.save(cpath)
    return r, rate


def _evaluate_row(
    r: Retriever, gt: OxfordGroundTruth, queries: Sequence[Tuple[str, Query]], Ks: List[int], with_bow: bool
) -> Tuple[Dict[str, Dict[str, float]], Dict[str, float], Dict[Tuple[str, Optional[Box]], PreparedQuery], List[float]]:
    """(row: column -> level -> mAP, BoW-only mAPs if ``with_bow`` (else empty), prepared
    queries, query latencies)."""
    prepared, lat = {}, []
    for _, q in queries:
        key = (q.image, q.bbox)
        if key not in prepared:
            t = time.perf_counter()
            prepared[key] = r.prepare_query(gt.image_path(q.image), q.bbox)
            r.rank(prepared[key], top=len(r))
            lat.append(time.perf_counter() - t)

    def ranker(mode: str, view: Retriever) -> Callable[[Query], List[Hit]]:
        params = FIRST_STAGE_ONLY if mode == "bow" else SearchParams(mode=mode)  # the BoW column: the first stage alone
        return lambda q: view.rank(prepared[(q.image, q.bbox)], top=len(view), params=params).hits

    Kmax = Ks[-1]
    row = {"baseline": evaluate_oxford(gt, ranker("global", r))}
    for K in Ks:
        row[f"K={K}"] = evaluate_oxford(gt, ranker("fast", r.with_K(K) if K < Kmax else r))
    row["exhaustive"] = evaluate_oxford(gt, ranker("exhaustive", r))
    return row, evaluate_oxford(gt, ranker("bow", r)) if with_bow else {}, prepared, lat


def _speed(
    r: Retriever, index_rate: float, prepared: Dict[Tuple[str, Optional[Box]], PreparedQuery], lat: List[float], N: int
) -> Dict[str, float]:
    rank_t: Dict[str, List[float]] = {"fast": [], "exhaustive": []}
    for pq in prepared.values():  # the re-ranking step alone (cross-matching the top N)
        for mode, times in rank_t.items():
            params = SearchParams(mode=mode)
            times.append(min(r.rank(pq, top=N, params=params).timings["rerank"] for _ in range(3)))
    at = r.add_timings
    per = max(1, at["images"])
    return {
        "index_img_s": index_rate,
        "sift": at["sift"] / per,
        "quantize": at["quantize"] / per,
        "cnn_trunk": at["cnn_trunk"] / per,
        "regions_codes": at["regions_codes"] / per,
        "query_p50_ms": 1000 * float(np.percentile(lat, 50)),
        "query_p95_ms": 1000 * float(np.percentile(lat, 95)),
        "rank_fast_p50_ms": 1000 * float(np.percentile(rank_t["fast"], 50)),
        "rank_exhaustive_p50_ms": 1000 * float(np.percentile(rank_t["exhaustive"], 50)),
        "bytes_per_image": r.index.nbytes() / max(1, len(r)),
    }


def _cache_path(cache: Optional[str], dataset: str, feat: str, config: RetrieverConfig) -> Optional[Path]:
    """Where the index of ``config`` is cached (the key leaves out search-time settings, so
    variants that differ only in those share it)."""
    if not cache:
        return None
    key = hashlib.sha256(json.dumps({**config.to_dict(), **SEARCH_TIME}, sort_keys=True).encode()).hexdigest()[:10]
    return Path(cache) / f"{dataset}-{config.backbone}-{feat}-{key}"


def _read_vocabulary(path: PathLike) -> "Vocabulary":
    """The vocabulary of an index folder, or of a vocabulary file."""
    from ..bow import Vocabulary
    from ..search.persist import read_manifest

    if Path(path).is_dir():
        # only its path is needed here: Vocabulary.load checks the file itself
        return Vocabulary.load(read_manifest(path, verify=False).paths["vocabulary"])
    return Vocabulary.load(path)


def oxford_table(
    root: PathLike,
    *,
    features: Sequence[str] = ("conv-max", "conv-sum"),
    variants: Sequence[str] = ("paper", "roiret"),
    Ks: Sequence[int] = (5, 10, 15, 20),
    vocab_size: Union[int, str] = "auto",
    max_keypoints: Optional[int] = 2000,
    N: int = 100,
    n: int = 10,
    k: int = 5,
    R: int = DEFAULT_R,
    min_inliers: int = DEFAULT_MIN_INLIERS,
    qe: int = DEFAULT_QE,
    qe_margin: Optional[float] = DEFAULT_QE_MARGIN,
    backbone: str = "alexnet",
    gem_p: float = DEFAULT_GEM_P,
    scales: Sequence[float] = (1.0,),
    code_bits: Optional[int] = 512,
    first_stage: Optional[Dict[str, Any]] = None,
    device: str = "cpu",
    weights: Optional[PathLike] = "auto",
    allow_download: bool = False,
    cache: Optional[str] = None,
    vocabulary: Optional[PathLike] = None,
    progress: Optional[bool] = None,
    seed: int = 0,
    print_fn: Callable[[str], None] = print,
) -> EvalTable:
    """Build the table (see the module docstring). ``cache``: a folder where the indexes
    are saved and reused by later runs with the same settings. ``vocabulary``: reuse the
    visual vocabulary of an index folder (or a vocabulary ``.npz``) instead of learning one
    (it replaces ``vocab_size``). ``first_stage``: RetrieverConfig fields of the first stage
    (``first_stage``, ``he_bits``, ...; a variant may override them: ``paper`` is TF-IDF);
    rows of the same first stage share one learned vocabulary."""
    from ..search.config import RetrieverConfig
    from .groundtruth import OxfordGroundTruth, load_gnd

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; expected some of {sorted(VARIANTS)}")
    root = Path(root)
    gt = load_gnd(root / "gnd.json")
    if not isinstance(gt, OxfordGroundTruth):
        raise ValueError(f"{root / 'gnd.json'}: UKBench-style groups; the table needs Oxford-style protocols")
    stems = list(gt.images)
    paths = [str(gt.image_path(s)) for s in stems]
    Ks = sorted(int(x) for x in Ks)
    protocols = [p for p in ("classic", "revisited") if p in gt.protocols]
    verify = {"R": R, "min_inliers": min_inliers, "qe": qe, "qe_margin": qe_margin}
    cnn = dict(backbone=backbone, gem_p=gem_p, scales=tuple(scales), code_bits=code_bits)
    stage = dict(first_stage or {})
    base = dict(cnn, K=max(Ks), max_keypoints=max_keypoints, N=N, n=n, k=k, seed=seed, **verify, **stage)
    given = _read_vocabulary(vocabulary) if vocabulary is not None else None
    if given is not None:
        vocab_size = given.size
    vocabularies: Dict[str, Optional[Vocabulary]] = {}  # learned once per first stage
    settings: Dict[str, object] = dict(
        cnn, vocab_size=vocab_size, max_keypoints=max_keypoints, N=N, n=n, k=k, **verify, **stage
    )
    settings.update(images=len(stems), seed=seed)
    queries = [(p, q) for p in protocols for q in gt.protocol(p).queries]
    opts = {"device": device, "weights": weights, "allow_download": allow_download, "progress": progress}
    rows, dims, speed = {}, {}, {}
    bow_map: Dict[str, float] = {}
    for variant in variants:
        for feat in features:
            name = f"{feat} ({variant})"
            config = RetrieverConfig(**{**base, "vocab_size": vocab_size, "feature": feat, **VARIANTS[variant]})
            cpath = _cache_path(cache, root.name, feat, config)
            voc = given or vocabularies.get(config.first_stage)
            r, index_rate = _build_or_load(config, paths, stems, cpath, voc, name, opts, print_fn)
            vocabularies[config.first_stage] = r.encoder.vocabulary
            dims[name] = r.nbits
            rows[name], bow, prepared, lat = _evaluate_row(r, gt, queries, Ks, with_bow=not bow_map)
            if not bow_map:  # the BoW column is this row's first stage: name its vocabulary as trained
                settings["vocab_size"] = r.config.vocab_size
                settings["first_stage"] = r.config.first_stage
            bow_map = bow_map or bow
            speed[name] = _speed(r, index_rate, prepared, lat, N)
            print_fn(
                f"[{name}] classic: "
                + ", ".join(f"{c} {100 * v['classic']:.2f}" for c, v in rows[name].items())
                + f"; BoW {100 * bow_map['classic']:.2f}"
            )
    return EvalTable(root.name, _levels(gt, protocols), Ks, bow_map, rows, dims, settings, speed)
