"""The pipeline's choices, defaults and parameter groups, validated once.

Every stage takes its parameters from one of these frozen groups, so a value is checked in
exactly one place (here) whether it comes from Python, the command line or a saved
manifest. The names are the paper's (Chen et al.): K RoIs per image, T_min, T_rate, T_iou
for the RoI selection; N BoW candidates re-ranked, n of them matched exhaustively, k query
RoIs kept for the other N − n.

This module imports NumPy only (no torch, OpenCV or the native core), so that the command
line can build its ``--help`` from these constants quickly.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, TypeVar, Union

import numpy as np

__all__ = [
    "BACKBONES",
    "AsmkParams",
    "BowParams",
    "CONFIGURED",
    "Configured",
    "FIRST_STAGES",
    "CodeParams",
    "DEFAULT_K",
    "DEFAULT_QE_MARGIN",
    "DEFAULT_THRESHOLD",
    "DEFAULT_THRESHOLD_MODE",
    "DEFAULT_GEM_P",
    "DEFAULT_T_IOU",
    "DEFAULT_T_MIN",
    "DEFAULT_T_RATE",
    "FEATURES",
    "FIRST_STAGE_ONLY",
    "Fusion",
    "LOCAL_FEATURES",
    "MODES",
    "RegionParams",
    "RerankParams",
    "SearchParams",
    "THRESHOLD_MODES",
    "VerifyParams",
    "auto_vocab_size",
    "check_fusion",
    "check_gem_p",
    "check_qe_margin",
    "check_scales",
    "normalize_backbone",
]

#: CNN backbones (:mod:`roiret.cnn.backbones` holds their strides and channels)
BACKBONES: Tuple[str, ...] = ("alexnet", "vgg16", "efficientnet-lite0", "efficientnet-lite2")
#: RoI descriptors (:mod:`roiret.cnn.descriptors`)
FEATURES: Tuple[str, ...] = ("conv-max", "conv-sum", "conv-gem", "fc7", "roialign-fc")
#: local features of the BoW stage (:mod:`roiret.bow.features`)
LOCAL_FEATURES: Tuple[str, ...] = ("rootsift", "sift", "surf")
#: base-region binarisation rules (:func:`roiret.cnn.regions.binarize`)
THRESHOLD_MODES: Tuple[str, ...] = ("absolute", "relative", "mean")
#: first-stage scorers: the selective match kernel on Hamming-embedded words (ASMK*,
#: :mod:`roiret.bow.embedding`) or the paper's TF-IDF (:class:`roiret.InvertedFile`)
FIRST_STAGES: Tuple[str, ...] = ("asmk", "tfidf")
#: re-ranking modes (:mod:`roiret.search.rerank`)
MODES: Tuple[str, ...] = ("fast", "exhaustive", "global", "bow")

# Chosen on Oxford5k-dev by benchmarks/tune_regions.py (see roiret.cnn.regions).
DEFAULT_THRESHOLD_MODE = "relative"
DEFAULT_THRESHOLD = 0.3
DEFAULT_T_MIN = 0.1
DEFAULT_T_RATE = 3.0
#: the paper's value
DEFAULT_T_IOU = 0.95
#: GeM's exponent p (conv-gem): 2 was the best of 2 / 3 / 4 on Oxford5k-dev (RoI score alone,
#: EfficientNet-Lite0) and on the demo collection (docs/RESULTS.md, "A stronger RoI stage")
DEFAULT_GEM_P = 2.0
#: the largest K of the paper's tables
DEFAULT_K = 20
#: spatial verification and query expansion (VerifyParams), chosen in docs/RESULTS.md
DEFAULT_R = 100
DEFAULT_MIN_INLIERS = 5
#: 20 until the ASMK first stage and EfficientNet-Lite0 RoIs: then 40 gained 2.4 / 2.4 / 3.1
#: (ASMK) and 2.4 / 2.3 / 2.2 (TF-IDF) on Oxford5k-dev, a plateau from there (50, 60), and
#: changed nothing on the demo collection (docs/RESULTS.md, "A Hamming-embedded first stage")
DEFAULT_QE = 40
#: query expansion with the whole of each verified image (None) or only its features inside
#: the query box mapped into it by the verified affine, grown by this fraction of the box's
#: width and height on each side (:func:`roiret.search.expansion.expansion_box`). 1.0 was
#: measured within 0.5 point of whole images on Oxford5k-dev, the demo collection and
#: Oxford5k-dev with 10^5 and 10^6 synthetic distractors, where it scans 19-20 % fewer
#: postings in the expanded search (docs/RESULTS.md, "Expansion from the query's region")
DEFAULT_QE_MARGIN: Optional[float] = 1.0

#: ``vocab_size="auto"``: one word per this many training descriptors, at most AUTO_MAX_WORDS.
#: Measured (benchmarks/vocab_size_study.py, benchmarks/bow_map.py; BoW alone, vocabulary
#: learned on the collection itself): ukbench-56 (60k descriptors) N-S 3.93 at 4 per word vs
#: 3.89 at 16 and 3.70 at 64; the demo collection (49k) mAP 72.4 at 4 vs 30.5 at 16; Oxford5k-dev
#: (800k) classic 62.99 at 50k words (16 per word) vs 59.57 at 200k (4 per word) and 51.09 at
#: 10k — so 4 per word for small collections, capped at today's 50k, which large ones reach.
AUTO_DESCRIPTORS_PER_WORD = 4
AUTO_MAX_WORDS = 50_000

#: Lloyd iterations of the vocabulary's k-means. 3 were measured 3.5× faster at equal BoW mAP
#: on Oxford5k-dev, but `roiret demo`'s default pipeline fell from 99.20 to 94.14 mAP with
#: them (benchmarks/README.md, "Vocabulary training time"): the default stays 10.
DEFAULT_KMEANS_ITERATIONS = 10


#: ``vocab_size="auto"`` with the ASMK first stage: one word per this many training
#: descriptors, but at least AUTO_ASMK_MIN_WORDS (when there are 4 descriptors a word for
#: them) and at most AUTO_MAX_WORDS. The signatures separate the features inside a word, so
#: coarser words do better for the kernel (Oxford5k-dev: 8 000 words best of 2 000 / 4 000 /
#: 8 000 / 16 000 / 50 000; the demo collection: 1 000 better than 500), while spatial
#: verification pairs features by the same words and suffers from very coarse ones (docs/RESULTS.md,
#: "A Hamming-embedded first stage").
AUTO_ASMK_DESCRIPTORS_PER_WORD = 100
AUTO_ASMK_MIN_WORDS = 1000


def auto_vocab_size(n_descriptors: int, first_stage: str = "tfidf") -> int:
    """The vocabulary size ``"auto"`` picks for ``n_descriptors`` training descriptors:
    ``n / AUTO_DESCRIPTORS_PER_WORD`` (``first_stage="asmk"``: ``n /
    AUTO_ASMK_DESCRIPTORS_PER_WORD``, at least ``min(AUTO_ASMK_MIN_WORDS, n /
    AUTO_DESCRIPTORS_PER_WORD)``) rounded to two significant digits, at most
    ``AUTO_MAX_WORDS`` (and at most ``n``, at least 1)."""
    _choice("first_stage", first_stage, FIRST_STAGES)
    raw = float(n_descriptors) / AUTO_DESCRIPTORS_PER_WORD
    if first_stage == "asmk":
        raw = max(float(n_descriptors) / AUTO_ASMK_DESCRIPTORS_PER_WORD, min(float(AUTO_ASMK_MIN_WORDS), raw))
    if raw >= 100:
        step = 10 ** (len(str(int(raw))) - 2)
        raw = round(raw / step) * step
    return int(max(1, min(AUTO_MAX_WORDS, int(round(raw)), int(n_descriptors))))


#: how the first-stage score enters the re-ranking score: ``"adaptive"`` (a weight chosen per
#: query), a weight in [0, 1], or the RoI score alone — ``0``, ``"none"`` or ``None``, which
#: :func:`check_fusion` makes ``0.0``. The same everywhere: configuration, ``Retriever(...)``,
#: a ``search`` / ``rank`` override and ``--fusion``.
Fusion = Union[float, str, None]


class Configured(enum.Enum):
    """The type of :data:`CONFIGURED`."""

    CONFIGURED = "configured"

    def __repr__(self) -> str:
        return "CONFIGURED"


#: an override left out: ``Retriever.search(..., fusion=CONFIGURED)`` (the default) ranks with
#: the configuration's fusion. (``None`` is a value of its own: the RoI score alone.)
CONFIGURED = Configured.CONFIGURED

_G = TypeVar("_G")


def positive_int(name: str, v: Any) -> int:
    """``v`` as an int if it is an integer >= 1 (not a bool), else ValueError naming it."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def finite_number(name: str, v: Any) -> float:
    """``v`` as a float if it is a finite real number (not a bool), else ValueError."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    return float(v)


def check_qe_margin(v: Any) -> Optional[float]:
    """``v`` (None: whole images) as a float if it is a finite number >= 0, else ValueError."""
    if v is None:
        return None
    m = finite_number("qe_margin", v)
    if m < 0:
        raise ValueError(f"qe_margin must be >= 0 (or None: whole images), got {v!r}")
    return m


def _choice(name: str, v: Any, choices: Tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {v!r}")
    return v


def normalize_backbone(name: Any) -> str:
    """A backbone name in canonical form (``"EfficientNet_Lite0"`` → ``"efficientnet-lite0"``)."""
    if not isinstance(name, str):
        raise ValueError(f"backbone must be one of {list(BACKBONES)}, got {name!r}")
    return _choice("backbone", name.lower().replace("_", "-"), BACKBONES)


#: the largest GeM exponent (beyond it GeM is the max to float precision: use conv-max)
MAX_GEM_P = 64.0


def check_gem_p(p: Any) -> float:
    """``p`` as a float if it is a number in [1, MAX_GEM_P] (GeM's exponent), else ValueError."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) or not 1 <= p <= MAX_GEM_P:
        raise ValueError(f"gem_p must be a number in [1, {MAX_GEM_P:g}], got {p!r}")
    return float(p)


def check_scales(scales: Any, feature: str) -> Tuple[float, ...]:
    """``scales`` as a tuple of floats: 1.0 first (the RoIs are found on that map), then the
    others in the order given; each in (0, 2], no repeats. Only ``conv-*`` features pool
    across scales (ValueError otherwise)."""
    if isinstance(scales, (str, bytes)) or not isinstance(scales, (list, tuple, np.ndarray)) or len(scales) == 0:
        raise ValueError(f"scales: expected a non-empty sequence of numbers, got {scales!r}")
    out = []
    for v in scales:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not 0 < float(v) <= 2:
            raise ValueError(f"scales: every scale must be a number in (0, 2], got {v!r}")
        out.append(float(v))
    if len(set(out)) != len(out) or 1.0 not in out:
        raise ValueError(f"scales: expected distinct scales including 1.0 (the RoIs' map), got {list(scales)}")
    if len(out) > 1 and not feature.startswith("conv-"):
        raise ValueError(f"scales: only the conv-* features pool across scales, not {feature!r}")
    return (1.0, *[v for v in out if v != 1.0])


_FUSION_VALUES = "'adaptive', a weight in [0, 1], or 0 / 'none' / None (the RoI score alone)"


def check_fusion(fusion: Any) -> Union[float, str]:
    """``"adaptive"``, or the BoW weight as a float in [0, 1] — ``None`` and ``"none"`` (the RoI
    score alone) give ``0.0``; anything else ValueError."""
    if isinstance(fusion, str) and fusion in ("adaptive", "none"):
        return fusion if fusion == "adaptive" else 0.0
    if fusion is None:
        return 0.0
    if isinstance(fusion, (bool, str)) or not isinstance(fusion, (int, float, np.integer, np.floating)):
        raise ValueError(f"fusion must be {_FUSION_VALUES}, got {fusion!r}")
    f = float(fusion)
    if not 0.0 <= f <= 1.0:  # NaN fails too
        raise ValueError(f"fusion must be {_FUSION_VALUES}, got {fusion!r}")
    return f


class _Group:
    """Shared helpers of the parameter groups (frozen dataclasses)."""

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def replace(self: _G, **changes: Any) -> _G:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalise a field of a frozen instance


@dataclass(frozen=True)
class RegionParams(_Group):
    """RoI detection on a conv feature map (the paper's 3.2.1–3.2.2).

    ``K`` RoIs per image; ``t_min``: minimum box area as a fraction of the image (T_min);
    ``t_rate``: maximum aspect ratio (T_rate); ``t_iou``: the IoU above which a box is a
    duplicate of a kept one (T_iou); ``threshold_mode`` / ``threshold``: how each channel
    is binarised into base regions (:func:`roiret.cnn.regions.binarize`).
    """

    K: int = DEFAULT_K
    t_min: float = DEFAULT_T_MIN
    t_rate: float = DEFAULT_T_RATE
    t_iou: float = DEFAULT_T_IOU
    threshold_mode: str = DEFAULT_THRESHOLD_MODE
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        self._set("K", positive_int("K", self.K))
        for name in ("threshold", "t_min", "t_rate", "t_iou"):
            self._set(name, finite_number(name, getattr(self, name)))
        _choice("threshold_mode", self.threshold_mode, THRESHOLD_MODES)
        if not 0.0 <= self.t_min <= 1.0:
            raise ValueError(f"t_min (T_min) is a fraction of the image area in [0, 1], got {self.t_min}")
        if not self.t_rate >= 1.0:
            raise ValueError(f"t_rate (T_rate) is a maximum aspect ratio >= 1, got {self.t_rate}")
        if not 0.0 < self.t_iou <= 1.0:
            raise ValueError(f"t_iou (T_iou) must be in (0, 1], got {self.t_iou}")


@dataclass(frozen=True)
class CodeParams(_Group):
    """How RoI descriptors become binary codes.

    ``whitening``: learn PCA-whitening of the RoI descriptors at training time, keeping
    ``whitening_dims`` dimensions (``None``: all). ``code_bits``: ``None`` for the paper's
    codes (bit i = f_i > mean(f), as many bits as dimensions), or that many bits from a
    fixed random projection seeded by ``seed`` (Hamming distance then estimates the angle
    between descriptors).
    """

    whitening: bool = False
    whitening_dims: Optional[int] = None
    code_bits: Optional[int] = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.whitening, (bool, np.bool_)):
            raise ValueError(f"whitening must be True or False, got {self.whitening!r}")
        self._set("whitening", bool(self.whitening))
        if self.whitening_dims is not None:
            self._set("whitening_dims", positive_int("whitening_dims", self.whitening_dims))
        if self.code_bits is not None:
            self._set("code_bits", positive_int("code_bits", self.code_bits))
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        self._set("seed", int(self.seed))


@dataclass(frozen=True)
class BowParams(_Group):
    """The bag-of-words first stage: ``vocab_size`` visual words (``"auto"``: from the number of
    training descriptors, :func:`auto_vocab_size`) learned by k-means
    (``kmeans_iterations`` iterations on at most ``max_train_descriptors`` descriptors, a
    seeded sample; ``None``: all) over ``local_features`` (at most ``max_keypoints`` per
    image; ``None``: all)."""

    vocab_size: Union[int, str] = "auto"
    local_features: str = "rootsift"
    max_keypoints: Optional[int] = 2000
    max_train_descriptors: Optional[int] = 500_000
    kmeans_iterations: int = DEFAULT_KMEANS_ITERATIONS

    def __post_init__(self) -> None:
        _choice("local_features", self.local_features, LOCAL_FEATURES)
        if self.vocab_size != "auto":
            self._set("vocab_size", positive_int("vocab_size", self.vocab_size))
        self._set("kmeans_iterations", positive_int("kmeans_iterations", self.kmeans_iterations))
        for name in ("max_keypoints", "max_train_descriptors"):
            v = getattr(self, name)
            if v is not None:
                self._set(name, positive_int(name, v))


@dataclass(frozen=True)
class AsmkParams(_Group):
    """The Hamming-embedded first stage (``first_stage="asmk"``; :mod:`roiret.bow.embedding`,
    :class:`roiret.EmbeddedInvertedFile`): ``he_bits`` signature bits per (image, word)
    (at most the descriptor dimension), ``he_thresholds`` (``"zero"``: the sign of the
    aggregated residual, ASMK*; ``"median"``: per-word medians, HE), the selectivity
    ``asmk_alpha`` and threshold ``asmk_tau`` of σ(u) = u^α for u > τ (u = 1 − 2h/bits),
    and multiple assignment: each query descriptor counted in its ``query_assignments``
    nearest words (within ``assignment_ratio`` × the nearest's squared distance), each
    database descriptor in ``db_assignments``. ``verify_cells``: sub-cells per word for the
    tentative correspondences of spatial verification (its words are finer than the
    kernel's; 1: the words themselves)."""

    first_stage: str = "asmk"
    he_bits: int = 128
    he_thresholds: str = "zero"
    asmk_alpha: float = 3.0
    asmk_tau: float = 0.0
    query_assignments: int = 3
    db_assignments: int = 1
    assignment_ratio: float = 1.5
    verify_cells: int = 1

    def __post_init__(self) -> None:
        _choice("first_stage", self.first_stage, FIRST_STAGES)
        cells = positive_int("verify_cells", self.verify_cells)
        if cells > 256:
            raise ValueError(f"verify_cells must be at most 256, got {cells}")
        self._set("verify_cells", cells)
        self._set("he_bits", positive_int("he_bits", self.he_bits))
        if self.he_bits > 1024:
            raise ValueError(f"he_bits must be at most 1024, got {self.he_bits}")
        _choice("he_thresholds", self.he_thresholds, ("zero", "median"))
        alpha = finite_number("asmk_alpha", self.asmk_alpha)
        if alpha <= 0:
            raise ValueError(f"asmk_alpha must be > 0, got {alpha}")
        tau = finite_number("asmk_tau", self.asmk_tau)
        if not -1.0 <= tau < 1.0:
            raise ValueError(f"asmk_tau must be in [-1, 1), got {tau}")
        for name in ("query_assignments", "db_assignments"):
            v = positive_int(name, getattr(self, name))
            if v > 64:
                raise ValueError(f"{name} must be at most 64, got {v}")
            self._set(name, v)
        ratio = finite_number("assignment_ratio", self.assignment_ratio)
        if ratio < 1:
            raise ValueError(f"assignment_ratio must be >= 1, got {ratio}")
        self._set("asmk_alpha", alpha)
        self._set("asmk_tau", tau)
        self._set("assignment_ratio", ratio)

    @property
    def learns_from_descriptors(self) -> bool:
        """Whether the Hamming embedding is learned from training descriptors (per-word
        median thresholds or verification sub-cells) rather than drawn from the seed alone."""
        return self.first_stage == "asmk" and (self.he_thresholds == "median" or self.verify_cells > 1)


@dataclass(frozen=True)
class RerankParams(_Group):
    """Re-ranking the BoW top ``N`` with RoI codes (the paper's 3.2.4): ``mode`` (``"fast"``:
    the ``n`` best candidates matched with every query RoI, the other N − n with the ``k``
    most frequently matched query RoIs; ``"exhaustive"``; ``"global"``: whole-image codes;
    ``"bow"``: no re-ranking) and ``fusion`` (:func:`check_fusion`)."""

    N: int = 100
    n: int = 10
    k: int = 5
    mode: str = "fast"
    fusion: Fusion = "adaptive"

    def __post_init__(self) -> None:
        for name in ("N", "n", "k"):
            self._set(name, positive_int(name, getattr(self, name)))
        if self.n > self.N:
            raise ValueError(
                f"n must be <= N (n of the N candidates are matched exhaustively), got n={self.n}, N={self.N}"
            )
        _choice("mode", self.mode, MODES)
        self._set("fusion", check_fusion(self.fusion))


def non_negative_int(name: str, v: Any) -> int:
    """``v`` as an int if it is an integer >= 0 (not a bool), else ValueError naming it."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    return int(v)


@dataclass(frozen=True)
class VerifyParams(_Group):
    """Beyond the paper: spatial verification and query expansion
    (:mod:`roiret.search.verify`, :mod:`roiret.search.expansion`).

    ``R``: the first-stage candidates whose local features are verified geometrically (0:
    no verification); a candidate with at least ``min_inliers`` inliers — more when it has
    many tentative correspondences (:func:`roiret.search.verify.required_inliers`) — is
    *verified* and ranks above every unverified one, by its inliers. ``qe``: the best
    verified results averaged with the query into an expanded query that is searched again
    (0: no query expansion). ``qe_margin``: what of a verified image goes into the
    expanded query — None: all its words; a number m >= 0: only the words of its features
    inside the query's box mapped into it by the verified affine, grown by m times the
    mapped box's width and height on each side (the object, not the rest of the photo:
    fewer postings to scan; 1.0 by default). Defaults measured on Oxford5k-dev and the demo
    collection (docs/RESULTS.md).
    """

    R: int = DEFAULT_R
    min_inliers: int = DEFAULT_MIN_INLIERS
    qe: int = DEFAULT_QE
    qe_margin: Optional[float] = DEFAULT_QE_MARGIN

    def __post_init__(self) -> None:
        self._set("R", non_negative_int("R", self.R))
        self._set("min_inliers", positive_int("min_inliers", self.min_inliers))
        self._set("qe", non_negative_int("qe", self.qe))
        self._set("qe_margin", check_qe_margin(self.qe_margin))


@dataclass(frozen=True)
class SearchParams(_Group):
    """One search's overrides of the configuration (:meth:`Retriever.search
    <roiret.Retriever.search>` / :meth:`~roiret.Retriever.rank`, ``roiret search``, the
    evaluation): each field left out — ``None``, or for ``fusion`` :data:`CONFIGURED` — is
    the configuration's. ``mode``, ``N``, ``n``, ``k`` and ``fusion`` override the
    :class:`RerankParams`, ``R``, ``min_inliers``, ``qe`` and ``qe_margin`` the
    :class:`VerifyParams` (the same values, checked here the same way; ``qe_margin`` left
    out — :data:`CONFIGURED` — is the configuration's, ``None`` overrides it with whole
    images); ``n`` left out is the configuration's, cut to an overriding ``N`` when larger.
    """

    mode: Optional[str] = None
    N: Optional[int] = None
    n: Optional[int] = None
    k: Optional[int] = None
    fusion: Union[Fusion, Configured] = CONFIGURED
    R: Optional[int] = None
    min_inliers: Optional[int] = None
    qe: Optional[int] = None
    qe_margin: Union[Optional[float], Configured] = CONFIGURED

    def __post_init__(self) -> None:
        if self.qe_margin is not CONFIGURED:
            self._set("qe_margin", check_qe_margin(self.qe_margin))
        if self.mode is not None:
            _choice("mode", self.mode, MODES)
        for name in ("N", "n", "k", "min_inliers"):
            if getattr(self, name) is not None:
                self._set(name, positive_int(name, getattr(self, name)))
        for name in ("R", "qe"):
            if getattr(self, name) is not None:
                self._set(name, non_negative_int(name, getattr(self, name)))
        if self.fusion is not CONFIGURED:
            self._set("fusion", check_fusion(self.fusion))
        if self.N is not None and self.n is not None and self.n > self.N:
            raise ValueError(
                f"n must be <= N (n of the N candidates are matched exhaustively), got n={self.n}, N={self.N}"
            )

    @classmethod
    def of(cls, params: Optional["SearchParams"] = None, **overrides: Any) -> "SearchParams":
        """``params`` (``None``: no override) with ``overrides``, keywords named as the
        fields, on top. TypeError for ``params`` that is not a SearchParams or an unknown
        keyword; ValueError for a bad value."""
        if params is not None and not isinstance(params, SearchParams):
            raise TypeError(f"params: expected roiret.params.SearchParams, got {type(params).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise TypeError(f"unknown search setting {unknown[0]!r}; the settings are {', '.join(names)}")
        return (params or cls()).replace(**overrides)

    def rerank(self, configured: RerankParams) -> RerankParams:
        """The re-ranking parameters: ``configured`` with these overrides (ValueError when
        they contradict it, as an ``n`` larger than ``N``)."""
        N = configured.N if self.N is None else self.N
        n = min(configured.n, N) if self.n is None else self.n
        p = configured.replace(N=N, n=n, **{k: v for k, v in (("mode", self.mode), ("k", self.k)) if v is not None})
        return p if self.fusion is CONFIGURED else p.replace(fusion=self.fusion)

    def verify(self, configured: VerifyParams) -> VerifyParams:
        """The verification parameters: ``configured`` with these overrides."""
        changes = {"R": self.R, "min_inliers": self.min_inliers, "qe": self.qe}
        v = configured.replace(**{k: v for k, v in changes.items() if v is not None})
        return v if self.qe_margin is CONFIGURED else v.replace(qe_margin=self.qe_margin)


#: the first stage's own order: no re-ranking, no spatial verification or query expansion
FIRST_STAGE_ONLY = SearchParams(mode="bow", R=0, qe=0)
