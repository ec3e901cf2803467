"""The first stage at a million images on one node: Oxford5k-dev's photos among synthetic
distractors (the Revisited Oxford + 1M protocol, with distractors drawn to match real ones).

    python benchmarks/scale_first_stage.py ../shared/datasets/oxford5k-dev --cache /tmp/scale \\
        validate                                   # synthetic against real unrelated images
    python benchmarks/scale_first_stage.py ../shared/datasets/oxford5k-dev --cache /tmp/scale \\
        run --sizes 10000,100000,1000000 --budgets 0,0.02

**The real part.** Oxford5k-dev's 709 database images and its queries (the keypoints in each
query's box), RootSIFT as the library extracts it, a vocabulary of ``--words`` words learned on
the database's descriptors (``roiret.bow.Vocabulary.fit``, seed 0) and the Hamming embedding
of ``--bits`` bits: the bags the library's ``BowIndex`` makes (database side: one word per
feature; query side: the 3 nearest). Cached under ``--cache``.

**The distractors** (:class:`DistractorModel`) are fitted on the database images that are
positive or junk for no query (407 of 709: other colleges, streets, people), so that nothing
about the queries' landmarks leaks into them:

* *postings per image* — each synthetic image takes a richness ``s`` = the postings of a real
  unrelated image (drawn at random) over their mean;
* *word frequencies* — word ``c`` enters ``Binomial(n, π_c)`` images of a batch of ``n``, with
  ``π_c`` its document frequency among the real unrelated images, the images drawn in
  proportion to ``s`` (so the df of every word and the spread of postings per image are the
  real ones; co-occurrence between words is not modelled);
* *signatures* — a real signature is the sign of an image's summed, projected residuals in
  the word. Their unit-normalised sums ``ẑ`` are modelled as Gaussian: the word's own mean
  (shrunk towards 0 by one pseudo-count) plus a covariance pooled over all words (the bits'
  correlations). Each word has a pool of ``POOL`` signatures ``sign(μ_c + L g)`` drawn once;
  a posting takes one at random. So a query's signature meets synthetic ones at the Hamming
  distances real unrelated images' signatures show (``validate`` measures it).

Synthetic images are generated in batches of ``BATCH`` images from ``(seed, batch index)``,
the same bags whatever builds them (one process, or Ray tasks), and added through the
ordinary ``BowIndex.add_bags`` (the path ``Retriever.add`` takes for the first stage), after
the 709 real images (ids 0…708; distractors from 10⁹).

**Validation** (``validate``): the model fitted on half of the real unrelated images (seeded
split) against the other, held-out half: per query, the kernel's scores of held-out real
images and of as many synthetic ones (quantiles), the Hamming distances between query and
database signatures in the words they share, and the mAP of the queries with either as the
only distractors (hard distractors lower it; equal mAP = equally hard).

**Run** (``run``): for each size (total images), the index is built (or loaded from
``--cache``), and reported: build time (images/s of ``add_bags`` after the bags are made),
RAM (``EmbeddedInvertedFile.memory_bytes`` per image, and the process's resident set), file
size and load time; then for each posting budget (a fraction of the collection's postings a
search may scan, ``max_postings``; 0 = every term), the first stage's p50 / p95 search time
without and with expansion (2 threads) and mAP % (classic / Medium / Hard) of the first stage
alone and of first stage + spatial verification + expansion: the top ``R`` = 100 verified
with the library's kernel (real images only: a distractor has no geometry, so it is never
verified — see the note in docs/SCALING.md), the query expanded with the verified images'
stored bags (``roiret.search.expansion.expanded_terms``, ``qe`` = 40) and searched again;
verified images first (by inliers), then the expanded list — the default pipeline's order for
every query with a verified result. "With expansion" times the base search, reading the
verified images' stored bags (``EmbeddedInvertedFile.document`` given their feature words, as
``Retriever.search`` reads them), building the expanded query and searching it. Rankings
are the top ``TOP`` = 10 000; a positive below them counts as not found.

**Sharded** (``run --shards S``): each size is built again as ``S`` shards (consecutive whole
batches; the real images in the first), one Ray task per shard on a local cluster (a task per
core), each adding its batches through ``BowIndex.add_bags`` and saving its file; the shards
are then searched as one collection the way ``roiret``'s ``ShardedIndex`` searches them (the
collection's N and df in every shard, exact lists merged by score) and every query's first
stage and expanded ranking (top 10 000 ids) is compared with the single index's.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

#: images per generated batch (the unit of generation and of add_bags)
BATCH = 50_000
#: synthetic signatures drawn per word
POOL = 512
#: the first distractor's id
DISTRACTOR_BASE = 10**9
#: ranking depth for mAP
TOP = 10_000
#: spatial verification depth, expansion images, inliers (the library's defaults)
R, QE = 100, 40

Bag = Tuple[np.ndarray, np.ndarray]


# -- the real images --------------------------------------------------------------------------
def _stack(feats: Sequence[Any], prefix: str) -> Dict[str, np.ndarray]:
    return {
        prefix + "offsets": np.concatenate([[0], np.cumsum([len(f) for f in feats])]).astype(np.int64),
        prefix + "desc": np.concatenate([f.descriptors for f in feats]),
        prefix + "xy": np.concatenate([f.xy for f in feats]),
        prefix + "sizes": np.concatenate([f.sizes for f in feats]),
        prefix + "angles": np.concatenate([np.asarray(f.angles, np.float32) for f in feats]),
        prefix + "imsize": np.array([f.image_size for f in feats], np.int64),
    }


def _unstack(a: Dict[str, np.ndarray], prefix: str) -> List[Any]:
    from roiret.bow import LocalFeatures

    o = a[prefix + "offsets"]
    return [
        LocalFeatures(
            a[prefix + "xy"][s:e],
            a[prefix + "sizes"][s:e],
            np.ascontiguousarray(a[prefix + "desc"][s:e]),
            (int(a[prefix + "imsize"][i][0]), int(a[prefix + "imsize"][i][1])),
            "rootsift",
            a[prefix + "angles"][s:e],
        )
        for i, (s, e) in enumerate(zip(o[:-1], o[1:]))
    ]


class RealCollection:
    """Oxford5k-dev's features, vocabulary, embedding, bags and feature geometry (cached)."""

    def __init__(self, dataset: Path, cache: Path, words: int, bits: int, seed: int = 0):
        from roiret.bow import BowIndex, LocalFeatureExtractor, Vocabulary
        from roiret.bow.embedding import HammingEmbedding
        from roiret.eval import load_gnd
        from roiret.params import AsmkParams

        self.gt: Any = load_gnd(dataset / "gnd.json")
        self.names = list(self.gt.images)
        cache.mkdir(parents=True, exist_ok=True)
        feats, queries = self._features(cache)
        vpath = cache / f"vocabulary-{words}.npz"
        if not vpath.exists():
            t = time.perf_counter()
            desc = np.concatenate([f.descriptors for f in feats])
            Vocabulary.fit(desc, words, seed=seed, descriptor="rootsift", progress=False).save(vpath)
            print(f"vocabulary of {words} words learned in {time.perf_counter() - t:.0f} s", flush=True)
        voc = Vocabulary.load(vpath)
        emb = HammingEmbedding.fit(voc.centroids, bits=bits, seed=seed)
        self.bow = BowIndex(
            voc, LocalFeatureExtractor("rootsift"), embedding=emb, asmk=AsmkParams(first_stage="asmk", he_bits=bits)
        )
        self.feats = feats
        assigned = [self.bow.encoder.assign_and_bag(f) for f in feats]
        self.word_of_feature = [a[0] for a in assigned]
        self.bags: List[Bag] = [a[1] for a in assigned]
        self.queries = {k: self.bow.encoder.encode_features(f, query=True) for k, f in queries.items()}
        self.query_geometry = {k: self._geometry(f, self.bow.encoder.assign_features(f)) for k, f in queries.items()}
        self._store: Any = None

    def _features(self, cache: Path) -> Tuple[List[Any], Dict[str, Any]]:
        from roiret.bow import LocalFeatureExtractor

        path = cache / "features.npz"
        if not path.exists():
            ex = LocalFeatureExtractor()
            t = time.perf_counter()
            feats = ex.extract_many([self.gt.image_path(n) for n in self.names], progress=True)
            qs = {self.key(q): ex.extract(self.gt.image_path(q.image), box=q.bbox) for q in self.all_queries()}
            np.savez(path, qkeys=np.array(list(qs)), **_stack(feats, ""), **_stack(list(qs.values()), "q"))
            print(f"RootSIFT of {len(feats)} images in {time.perf_counter() - t:.0f} s", flush=True)
        a = dict(np.load(path))
        return _unstack(a, ""), dict(zip((str(k) for k in a["qkeys"]), _unstack(a, "q")))

    @staticmethod
    def key(q: Any) -> str:
        return f"{q.image}|{list(q.bbox)}"

    def all_queries(self) -> Iterator[Any]:
        for p in self.gt.protocols:
            yield from self.gt.protocol(p).queries

    @staticmethod
    def _geometry(f: Any, words: np.ndarray) -> Any:
        from roiret.search.geometry import FeatureGeometry

        return FeatureGeometry(np.asarray(words, np.uint32), f.xy, f.sizes, np.asarray(f.angles, np.float32))

    def geometry_store(self) -> Any:
        """The real images' feature geometry, as a retriever stores it (rows = ids 0…708)."""
        if self._store is None:
            from roiret.search.geometry import GeometryStore

            self._store = GeometryStore()
            for f, w in zip(self.feats, self.word_of_feature):
                self._store.add(self._geometry(f, w), f.image_size)
        return self._store

    def unrelated(self) -> np.ndarray:
        """Rows of the database images that are positive or junk for no query (nor a query)."""
        seen = set()
        for p in self.gt.protocols:
            proto = self.gt.protocol(p)
            for q in proto.queries:
                seen.add(q.image)
                for lvl in proto.levels:
                    seen |= set(q.positives(lvl)) | set(q.junk(lvl))
        return np.array([i for i, n in enumerate(self.names) if n not in seen], np.int64)

    def residual_directions(self, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """``(words, ẑ)`` of every (image, word) pair of ``rows``: the unit-normalised sum of
        the image's projected residuals in the word (what its signature is the sign of)."""
        emb = self.bow.embedding
        cents, proj = self.bow.vocabulary.centroids, emb.projection
        out_w, out_z = [], []
        for r in rows:
            x, w = self.feats[r].descriptors, np.asarray(self.word_of_feature[r], np.int64)
            if len(w) == 0:
                continue
            z = (x - cents[w]) @ proj.T
            u, inv = np.unique(w, return_inverse=True)
            s = np.zeros((len(u), z.shape[1]))
            np.add.at(s, inv, z)
            out_w.append(u)
            out_z.append(s / np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-12))
        return np.concatenate(out_w), np.concatenate(out_z)


# -- the distractors --------------------------------------------------------------------------
@dataclass
class DistractorModel:
    """Synthetic images' bags drawn to match real unrelated ones (module docstring)."""

    postings: np.ndarray  # postings per image of the real images it was fitted on
    inclusion: np.ndarray  # (V,) fraction of those images holding each word
    pool: np.ndarray  # (V, POOL, W) uint64 signatures
    seed: int
    template_offsets: np.ndarray  # CSR word sets of those images (co-occurrence templates)
    template_words: np.ndarray
    rho: float = 1.0  # share of a template's words replaced by independently drawn ones

    @classmethod
    def fit(
        cls,
        real: RealCollection,
        rows: np.ndarray,
        seed: int = 0,
        pool: int = POOL,
        kappa: float = 1.0,
        rho: float = 1.0,
    ) -> "DistractorModel":
        from roiret.bow.embedding import pack_signs

        V, bits = real.bow.vocabulary.size, real.bow.embedding.bits
        postings = np.array([len(real.bags[r][0]) for r in rows], np.int64)
        df = np.bincount(np.concatenate([real.bags[r][0] for r in rows]), minlength=V)
        words, z = real.residual_directions(rows)
        n_c = np.bincount(words, minlength=V).astype(np.float64)
        mu = np.zeros((V, bits))
        np.add.at(mu, words, z)
        mu /= (n_c + 1.0)[:, None]  # one pseudo-count towards 0
        resid = z - mu[words]
        cov = resid.T @ resid / len(resid)
        L = np.linalg.cholesky(cov + 1e-9 * np.eye(bits))
        order = np.argsort(words, kind="stable")
        starts = np.searchsorted(words[order], np.arange(V + 1))
        rng = np.random.default_rng([seed, 1])
        sigs = np.zeros((V, pool, (bits + 63) // 64), np.uint64)
        for c0 in range(0, V, 1024):
            c1 = min(V, c0 + 1024)
            g = rng.standard_normal((c1 - c0, pool, bits)) @ L.T
            # a real sample of the word (kappa of its deviation from the mean) plus Gaussian noise
            has = n_c[c0:c1] > 0
            pick = starts[c0:c1, None] + (rng.random((c1 - c0, pool)) * n_c[c0:c1, None]).astype(np.int64)
            dev = np.where(has[:, None, None], resid[order[np.minimum(pick, len(order) - 1)]], 0.0)
            w = np.where(has, kappa, 0.0)[:, None, None]
            sample = mu[c0:c1, None, :] + w * dev + np.sqrt(1 - w**2) * g
            sigs[c0:c1] = pack_signs(sample.reshape(-1, bits)).reshape(c1 - c0, pool, -1)
        t_off = np.concatenate([[0], np.cumsum(postings)]).astype(np.int64)
        t_words = np.concatenate([real.bags[r][0] for r in rows]).astype(np.int64)
        return cls(postings, df / len(rows), sigs, seed, t_off, t_words, float(rho))

    @property
    def mean_postings(self) -> float:
        return float(self.postings.mean())

    def batch(self, index: int, n: int, chunk: int = 2048) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batch ``index`` of ``n`` synthetic images: CSR ``(offsets, words, signatures)``,
        the same for the same ``(seed, index, n)``. Image ``i`` holds word ``c`` with
        probability ``min(1, s_i π_c)`` (Poisson sampling), ``s_i`` its richness."""
        rng = np.random.default_rng([self.seed, 2, index])
        template = rng.integers(0, len(self.postings), size=n)
        richness = self.postings[template] / self.mean_postings
        pi = self.inclusion.astype(np.float32)
        parts_w, counts = [], []
        for a in range(0, n, chunk):
            t = template[a : a + chunk]
            p = np.minimum(1.0, richness[a : a + chunk, None].astype(np.float32) * (self.rho * pi)[None, :])
            keep = rng.random(p.shape, dtype=np.float32) < p
            if self.rho < 1.0:  # each template word kept with probability 1 - rho
                lens = self.template_offsets[t + 1] - self.template_offsets[t]
                img = np.repeat(np.arange(len(t)), lens)
                src = np.concatenate(
                    [self.template_words[self.template_offsets[i] : self.template_offsets[i + 1]] for i in t]
                )
                kept = rng.random(len(src)) >= self.rho
                keep[img[kept], src[kept]] = True
            img, w = np.nonzero(keep)
            parts_w.append(w.astype(np.int64))
            counts.append(np.bincount(img, minlength=len(p)))
        words = np.concatenate(parts_w)
        offsets = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64)
        sigs = self.pool[words, rng.integers(0, self.pool.shape[1], size=len(words))]
        return offsets, words, np.ascontiguousarray(sigs)


def distractor_ids(index: int, n: int) -> np.ndarray:
    return DISTRACTOR_BASE + index * BATCH + np.arange(n, dtype=np.int64)


def batches(total: int) -> Iterator[Tuple[int, int]]:
    """``(batch index, images)`` of ``total`` distractors."""
    for i, start in enumerate(range(0, total, BATCH)):
        yield i, min(BATCH, total - start)


# -- measurement helpers ----------------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def mean_ap(real: RealCollection, rank_fn: Callable[[Any], Sequence[int]]) -> Dict[str, float]:
    """mAP % per protocol level of ``rank_fn(query) -> ids`` (real ids are rows, the rest
    distractors: negatives), the Oxford protocols' positives and junk."""
    from roiret.eval.metrics import average_precision

    out: Dict[str, float] = {}
    for p in real.gt.protocols:
        proto = real.gt.protocol(p)
        allowed = set(proto.database)
        rankings = {q.id: [real.names[i] if i < len(real.names) else i for i in rank_fn(q)] for q in proto.queries}
        for lvl in proto.levels:
            if p == "revisited" and lvl == "easy":
                continue
            aps = []
            for q in proto.queries:
                pos = set(q.positives(lvl))
                if not pos:
                    continue
                ranking = [x for x in rankings[q.id] if not isinstance(x, str) or x in allowed]
                aps.append(average_precision(ranking, pos, set(q.junk(lvl))))
            out["classic" if p == "classic" else lvl] = 100 * float(np.mean(aps))
    return out


def fmt_map(m: Dict[str, float]) -> str:
    return " / ".join(f"{m[k]:.2f}" for k in ("classic", "medium", "hard"))


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(a ^ b).sum(axis=-1)


def validate(real: RealCollection, copies: int = 10, seed: int = 0, kappa: float = 1.0, rho: float = 1.0) -> None:
    """The distractor model fitted on half of the real unrelated images against the other
    half (module docstring)."""
    from roiret import EmbeddedInvertedFile
    from roiret.bow import bags_to_csr

    rows = real.unrelated()
    perm = np.random.default_rng(seed).permutation(rows)
    fit_rows, held = np.sort(perm[: len(perm) // 2]), np.sort(perm[len(perm) // 2 :])
    model = DistractorModel.fit(real, fit_rows, seed=seed, kappa=kappa, rho=rho)
    others = np.setdiff1d(np.arange(len(real.names)), rows)  # positives and junk of some query
    keep = np.concatenate([others, held])
    n_syn = copies * len(held)
    off, words, sigs = model.batch(0, n_syn)
    f = EmbeddedInvertedFile(real.bow.vocabulary.size, real.bow.embedding.bits)
    o, w, c = bags_to_csr([real.bags[r] for r in keep])
    f.add(keep, o, w, c)
    f.add(distractor_ids(0, n_syn), off, words, sigs)
    held_set = set(held.tolist())
    print(f"fitted on {len(fit_rows)} real unrelated images, held out {len(held)}; {n_syn} synthetic images")
    print(
        f"postings per image: held-out real {np.mean([len(real.bags[r][0]) for r in held]):.0f}, "
        f"synthetic {np.diff(off).mean():.0f} (fitted {model.mean_postings:.0f})"
    )
    # scores: quantiles per query, the median over queries
    qs = {"real": [], "synthetic": []}
    aps_real: List[float] = []
    aps_syn: List[List[float]] = []
    from roiret.eval.metrics import average_precision

    proto = real.gt.protocol("classic")
    for q in proto.queries:
        qw, qsig = real.queries[real.key(q)]
        ids, sc = f.search_exact(qw, qsig, None, top=len(f))
        real_sc = sc[np.isin(ids, held)]
        syn_mask = ids >= DISTRACTOR_BASE
        qs["real"].append(np.quantile(real_sc, [0.5, 0.9, 0.99, 1.0]))
        qs["synthetic"].append(np.quantile(sc[syn_mask], [0.5, 0.9, 0.99, 1.0]))
        pos, junk = set(q.positives("classic")), set(q.junk("classic"))
        names = [real.names[i] if i < DISTRACTOR_BASE else int(i) for i in ids]
        aps_real.append(average_precision([x for i, x in zip(ids, names) if i < DISTRACTOR_BASE], pos, junk))
        per_copy = []
        syn_ids = ids[syn_mask]
        for k in range(copies):  # the same number of synthetic distractors as held-out real ones
            chosen = set(syn_ids[(syn_ids - DISTRACTOR_BASE) % copies == k].tolist())
            ranking = [x for i, x in zip(ids, names) if (i < DISTRACTOR_BASE and i not in held_set) or i in chosen]
            per_copy.append(average_precision(ranking, pos, junk))
        aps_syn.append(per_copy)
    for k, v in qs.items():
        m = np.median(np.array(v), axis=0)
        print(
            f"score quantiles (median over queries) {k:9s}: "
            f"q50 {m[0]:.5f}  q90 {m[1]:.5f}  q99 {m[2]:.5f}  max {m[3]:.5f}"
        )
    print(f"classic mAP with the held-out real unrelated images as distractors: {100 * np.mean(aps_real):.2f}")
    print(
        f"classic mAP with as many synthetic ones: {100 * np.mean(aps_syn):.2f} "
        f"(copies {', '.join(f'{100 * x:.2f}' for x in np.mean(aps_syn, axis=0))})"
    )
    _hamming_report(real, model, held, off, words, sigs)


def _hamming_report(
    real: RealCollection, model: DistractorModel, held: np.ndarray, off: np.ndarray, words: np.ndarray, sigs: np.ndarray
) -> None:
    """Hamming distances between the queries' signatures and the database's in shared words."""
    bits = real.bow.embedding.bits
    by_word_real: Dict[int, List[np.ndarray]] = {}
    for r in held:
        for w, s in zip(*real.bags[r]):
            by_word_real.setdefault(int(w), []).append(s)
    order = np.argsort(words, kind="stable")
    starts = np.searchsorted(words[order], np.arange(len(model.inclusion) + 1))
    h_real, h_syn = [], []
    for qw, qsig in real.queries.values():
        for w, s in zip(qw, qsig):
            if int(w) in by_word_real:
                h_real.append(_hamming(np.array(by_word_real[int(w)]), s))
            idx = order[starts[w] : starts[w + 1]]
            if len(idx):
                h_syn.append(_hamming(sigs[idx], s))
    hr, hs = np.concatenate(h_real), np.concatenate(h_syn)
    sigma = lambda h: np.clip(1 - 2 * h / bits, 0, None) ** 3  # noqa: E731
    print(
        f"Hamming distance query-database in shared words ({bits} bits): "
        f"real mean {hr.mean():.1f} sd {hr.std():.1f}, synthetic mean {hs.mean():.1f} sd {hs.std():.1f}"
    )
    for t in (0.25, 0.35, 0.45):
        print(
            f"  share below {t * bits:.0f}: real {np.mean(hr < t * bits):.4f}, synthetic {np.mean(hs < t * bits):.4f}"
        )
    print(f"  mean kernel value sigma(h): real {sigma(hr).mean():.5f}, synthetic {sigma(hs).mean():.5f}")


# -- building and searching at scale ------------------------------------------------------------
def add_distractors(
    bow: Any, model: "DistractorModel", todo: Iterable[Tuple[int, int]], progress: Optional[int] = None
) -> Tuple[float, float]:
    """Generates the distractor batches ``todo`` and adds each through ``bow.add_bags``;
    returns the seconds spent generating and adding. ``progress``: print a line per batch
    (the number of images already in ``bow`` before the first)."""
    t_gen = t_add = 0.0
    for i, n in todo:
        t = time.perf_counter()
        off, words, sigs = model.batch(i, n)
        t_gen += time.perf_counter() - t
        t = time.perf_counter()
        bow.add_bags(distractor_ids(i, n), off, words, sigs)
        t_add += time.perf_counter() - t
        if progress is not None:
            print(f"  {i * BATCH + n + progress} images: generate {t_gen:.0f} s, add {t_add:.0f} s", flush=True)
    return t_gen, t_add


def build(real: RealCollection, model: DistractorModel, total: int, cache: Path) -> Tuple[Any, Dict[str, float]]:
    """The index of the 709 real images and ``total - 709`` distractors (saved under ``cache``
    and loaded from there next time), with what building and loading it cost."""
    from roiret import EmbeddedInvertedFile
    from roiret.bow import BowIndex, bags_to_csr

    emb = real.bow.embedding
    path = cache / f"index-{real.bow.vocabulary.size}-{emb.bits}-{total}.bin"
    stats: Dict[str, float] = {}
    if not path.exists():
        bow = BowIndex(real.bow.vocabulary, real.bow.extractor, embedding=emb, asmk=real.bow.asmk)
        bow.add_bags(np.arange(len(real.bags)), *bags_to_csr(real.bags))
        t_gen, t_add = add_distractors(bow, model, batches(total - len(real.bags)), progress=len(real.bags))
        t = time.perf_counter()
        bow.inverted_file.save(str(path))
        stats.update(generate_s=t_gen, add_s=t_add, save_s=time.perf_counter() - t)
        del bow
    rss0 = rss_bytes()
    t = time.perf_counter()
    f = EmbeddedInvertedFile.load(str(path))
    stats["load_s"] = time.perf_counter() - t
    f.search(np.zeros(1, np.int64), np.zeros((1, emb.words), np.uint64), top=1)  # nothing pending
    stats.update(
        images=len(f),
        postings=f.num_postings,
        ram_bytes=f.memory_bytes(),
        rss_bytes=rss_bytes() - rss0,
        file_bytes=path.stat().st_size,
    )
    return f, stats


class ShardedFile:
    """Inverted-file shards searched as one collection, as ``roiret``'s ShardedIndex does:
    every shard scores with the collection's N and df (``set_collection_stats``) and the
    shards' exact lists are merged by (float64 score, shard, position)
    (``roiret.search.sharded.merge_bow_lists``)."""

    def __init__(self, shards: Sequence[Any]):
        self.shards = list(shards)
        n = sum(len(s) for s in self.shards)
        df = np.sum([s.document_frequencies() for s in self.shards], axis=0)
        for s in self.shards:
            s.set_collection_stats(n, df)
        self.num_postings = sum(s.num_postings for s in self.shards)

    def idf(self) -> np.ndarray:
        return np.asarray(self.shards[0].idf())

    def search(self, *args: Any, top: int, **kw: Any) -> Tuple[np.ndarray, np.ndarray]:
        from roiret.search.sharded import merge_bow_lists

        return merge_bow_lists([s.search_exact(*args, top=top, **kw) for s in self.shards], top)

    def selected_terms(self, *args: Any) -> Tuple[np.ndarray, int]:
        return self.shards[0].selected_terms(*args)  # the collection's df: the same in every shard

    def document(self, image_id: int, words: Any = None) -> Tuple[np.ndarray, np.ndarray]:
        return next(s for s in self.shards if image_id in s).document(image_id, words)


def _build_shard(
    vocabulary: str, bits: int, model: "DistractorModel", real_bags: List[Bag], todo: List[Tuple[int, int]], path: str
) -> Dict[str, float]:
    """A Ray task: one shard — the real images (shard 0 only) and distractor batches ``todo``
    added through ``BowIndex.add_bags`` as :func:`build` adds them — saved to ``path``. The
    vocabulary comes from its file and the embedding is fitted again (seeded: the same)."""
    from roiret.bow import BowIndex, LocalFeatureExtractor, Vocabulary, bags_to_csr
    from roiret.bow.embedding import HammingEmbedding
    from roiret.params import AsmkParams

    voc = Vocabulary.load(vocabulary)
    emb = HammingEmbedding.fit(voc.centroids, bits=bits, seed=0)
    asmk = AsmkParams(first_stage="asmk", he_bits=bits)
    bow = BowIndex(voc, LocalFeatureExtractor("rootsift"), embedding=emb, asmk=asmk)
    if real_bags:
        bow.add_bags(np.arange(len(real_bags)), *bags_to_csr(real_bags))
    t_gen, t_add = add_distractors(bow, model, todo)
    t = time.perf_counter()
    bow.inverted_file.save(path)
    return {"generate_s": t_gen, "add_s": t_add, "save_s": time.perf_counter() - t}


def build_sharded(
    real: RealCollection, model: "DistractorModel", total: int, cache: Path, shards: int
) -> Tuple[ShardedFile, Dict[str, float]]:
    """The same collection as :func:`build`, in ``shards`` files each built by a Ray task on
    a local cluster (one task per core): shard k holds consecutive batches (the real
    images in shard 0), so the ids keep :func:`build`'s order. Loaded as a :class:`ShardedFile`."""
    from roiret import EmbeddedInvertedFile
    from roiret.distributed.ray_index import plan_shards

    emb = real.bow.embedding
    todo = list(batches(total - len(real.bags)))
    plan = plan_shards(len(todo), shards)  # whole batches: fewer shards than asked if fewer batches
    name = f"index-{real.bow.vocabulary.size}-{emb.bits}-{total}"
    paths = [cache / f"{name}-shard{k}of{len(plan)}.bin" for k in range(len(plan))]
    stats: Dict[str, float] = {}
    if not all(p.exists() for p in paths):
        import ray

        t = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False)
        try:
            task = ray.remote(_build_shard).options(num_cpus=1, max_retries=0)
            vocabulary = str(cache / f"vocabulary-{real.bow.vocabulary.size}.npz")
            shared = ray.put(model)
            refs = [
                task.remote(vocabulary, emb.bits, shared, real.bags if k == 0 else [], todo[a:b], str(paths[k]))
                for k, (a, b) in enumerate(plan)
            ]
            parts = ray.get(refs)
        finally:
            ray.shutdown()
        stats["wall_s"] = time.perf_counter() - t
        for key in ("generate_s", "add_s", "save_s"):
            stats[key] = sum(p[key] for p in parts)
    t = time.perf_counter()
    files = [EmbeddedInvertedFile.load(str(p)) for p in paths]
    stats["load_s"] = time.perf_counter() - t
    return ShardedFile(files), stats


def words_in_projected_box(
    real: RealCollection, row: int, affine: np.ndarray, qxy: np.ndarray, margin: float
) -> np.ndarray:
    """The words of image ``row``'s features inside the query's box (the extent of the query
    features ``qxy``) mapped by the verified ``affine`` (2×3, query → image), grown by
    ``margin`` × its width and height on each side: what ``qe_margin`` expands with
    (:func:`roiret.search.expansion.expansion_box`)."""
    from roiret.search.expansion import expansion_box, inside_box

    inside = inside_box(real.feats[row].xy, expansion_box(affine, qxy, margin))
    return np.asarray(real.word_of_feature[row], np.int64)[inside]


def search_all(
    real: RealCollection, f: Any, budget: float, threads: int = 0, margin: Optional[float] = None
) -> Tuple[Dict[str, List[int]], Dict[str, List[int]], Dict[str, np.ndarray]]:
    """Per query: the first stage's ranking, the ranking after verification and expansion,
    and (base, expanded) search times and postings scanned. ``f``: an EmbeddedInvertedFile
    or a :class:`ShardedFile`. ``margin``: expand with only the verified images' words
    inside the projected query box (:func:`words_in_projected_box`); None: whole images."""
    from roiret.params import DEFAULT_MIN_INLIERS
    from roiret.search.expansion import expanded_terms
    from roiret.search.verify import verify_rows

    a = real.bow.asmk
    max_postings = int(budget * f.num_postings) if budget else 0
    idf = np.asarray(f.idf())
    store = real.geometry_store()
    first, final, cost = {}, {}, {}
    for key, (qw, qs) in real.queries.items():
        wts = np.full(len(qw), 1.0 / np.sqrt(idf[qw].sum()), np.float32)
        t0 = time.perf_counter()
        ids, _ = f.search(qw, qs, wts, top=TOP, alpha=a.asmk_alpha, tau=a.asmk_tau, threads=threads,
                          max_postings=max_postings)  # fmt: skip
        t1 = time.perf_counter()
        first[key] = ids.tolist()
        rows = ids[:R][ids[:R] < len(real.bags)]
        checks = verify_rows(real.query_geometry[key], store, rows) if len(rows) else {}
        verified = sorted(
            (r for r, c in checks.items() if c.verified(DEFAULT_MIN_INLIERS)), key=lambda r: -checks[r].inliers
        )
        scanned = [f.selected_terms(qw, wts, max_postings)[1], 0]
        t2 = t3 = time.perf_counter()
        if verified:
            # as the library expands: the verified images' stored bags, read by their feature words
            qxy = np.asarray(real.query_geometry[key].xy, np.float64)
            stored = [
                f.document(r, np.asarray(real.word_of_feature[r], np.int64) if margin is None
                           else words_in_projected_box(real, r, checks[r].affine, qxy, margin))
                for r in verified[:QE]
            ]  # fmt: skip
            ew, es, ewt = expanded_terms([(qw, qs)] + stored, idf)
            ids, _ = f.search(ew, es, ewt, top=TOP, alpha=a.asmk_alpha, tau=a.asmk_tau, threads=threads,
                              max_postings=max_postings)  # fmt: skip
            t3 = time.perf_counter()
            scanned[1] = f.selected_terms(ew, ewt, max_postings)[1]
        v = set(verified)
        final[key] = verified + [i for i in ids.tolist() if i not in v]
        cost[key] = np.array([t1 - t0, t1 - t0 + t3 - t2, scanned[0], scanned[1]])
    return first, final, cost


def p50_p95(ms: np.ndarray) -> str:
    return f"{np.median(ms):.1f} / {np.percentile(ms, 95):.1f}"


def run(
    real: RealCollection, cache: Path, sizes: Sequence[int], budgets: Sequence[float], shards: int = 0,
    margins: Sequence[Optional[float]] = (None,),
) -> None:  # fmt: skip
    model = DistractorModel.fit(real, real.unrelated())
    by_key = lambda table: lambda q: table[real.key(q)]  # noqa: E731
    print(
        "| images | budget | first stage mAP | + verification + expansion | search p50 / p95 ms | "
        "with expansion p50 / p95 ms | postings scanned (mean, % of all; expanded) |"
    )
    for total in sizes:
        f, st = build(real, model, total, cache)
        print(f"{total} images: {st['postings'] / total:.0f} postings/image, RAM {st['ram_bytes'] / total:.0f} B/image "
              f"(resident {st['rss_bytes'] / total:.0f}), file {st['file_bytes'] / total:.0f} B/image, "
              f"load {st['load_s']:.1f} s; " + ", ".join(f"{k} {v:.0f} s" for k, v in st.items() if k.endswith("_s")
                                                        and k != "load_s"), flush=True)  # fmt: skip
        full: Any = None
        for b, m in [(b, m) for b in budgets for m in margins]:
            first, final, cost = search_all(real, f, b, margin=m)
            if not b and m is None:
                full = (first, final)
            c = np.array(list(cost.values()))
            ms = 1000 * c[:, :2]
            label = f"{b or 'none'}" + ("" if m is None else f", expansion margin {m}")
            print(
                f"| {total} | {label} | {fmt_map(mean_ap(real, by_key(first)))} | "
                f"{fmt_map(mean_ap(real, by_key(final)))} | {p50_p95(ms[:, 0])} | {p50_p95(ms[:, 1])} | "
                f"{c[:, 2].mean():.3g} ({100 * c[:, 2].mean() / st['postings']:.2f} %); "
                f"{c[:, 3].mean():.3g} ({100 * c[:, 3].mean() / st['postings']:.2f} %) |",
                flush=True,
            )
        del f
        if shards and full is not None:
            compare_sharded(real, model, total, cache, shards, *full)


def compare_sharded(
    real: RealCollection, model: "DistractorModel", total: int, cache: Path, shards: int,
    first: Dict[str, List[int]], final: Dict[str, List[int]],
) -> None:  # fmt: skip
    """Builds the collection again as ``shards`` shards with Ray and checks that the first
    stage and the expanded search rank every query exactly as the single index did."""
    sf, st = build_sharded(real, model, total, cache, shards)
    s_first, s_final, cost = search_all(real, sf, 0.0)
    same = [first[k] == s_first[k] and final[k] == s_final[k] for k in first]
    ms = 1000 * np.array(list(cost.values()))[:, :2]
    build_s = ", ".join(f"{k} {v:.0f} s" for k, v in st.items() if k != "load_s")
    p50 = np.median(ms, axis=0)
    print(
        f"{total} images in {len(sf.shards)} shards built by Ray tasks ({build_s}; load {st['load_s']:.1f} s): "
        f"{sum(same)} of {len(same)} queries ranked identically (first stage and after expansion, top {TOP}); "
        f"search p50 {p50[0]:.1f} ms, with expansion {p50[1]:.1f} ms",
        flush=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--words", type=int, default=8000)
    ap.add_argument("--bits", type=int, default=128)
    sub = ap.add_subparsers(dest="cmd", required=True)
    val = sub.add_parser("validate")
    val.add_argument("--kappa", type=float, default=1.0)
    val.add_argument("--rho", type=float, default=1.0)
    runp = sub.add_parser("run")
    runp.add_argument("--sizes", default="10000,100000,1000000")
    runp.add_argument("--budgets", default="0,0.02")
    runp.add_argument("--shards", type=int, default=0, help="also build each size as this many shards with Ray")
    runp.add_argument(
        "--margins", default="none",
        help="expansion with only the verified images' words in the projected query box grown by these "
        "margins (none: whole images), e.g. none,1.0,0.5",
    )  # fmt: skip
    args = ap.parse_args()
    real = RealCollection(args.dataset, args.cache, args.words, args.bits)
    if args.cmd == "validate":
        validate(real, kappa=args.kappa, rho=args.rho)
    else:
        sizes = [int(float(x)) for x in args.sizes.split(",")]
        margins = [None if x == "none" else float(x) for x in args.margins.split(",")]
        run(real, args.cache, sizes, [float(x) for x in args.budgets.split(",")], args.shards, margins)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
