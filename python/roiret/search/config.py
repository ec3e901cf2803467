"""The retriever's configuration: one flat record (what the manifest stores and what users
pass as keywords), made of the validated parameter groups of :mod:`roiret.params`.

Imports NumPy only, so the command line can show its defaults quickly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional, Tuple, Union

from ..params import (
    DEFAULT_GEM_P,
    DEFAULT_KMEANS_ITERATIONS,
    DEFAULT_MIN_INLIERS,
    DEFAULT_QE,
    DEFAULT_QE_MARGIN,
    DEFAULT_R,
    DEFAULT_T_MIN,
    DEFAULT_T_RATE,
    DEFAULT_THRESHOLD,
    DEFAULT_THRESHOLD_MODE,
    FEATURES,
    AsmkParams,
    BowParams,
    CodeParams,
    Fusion,
    RegionParams,
    RerankParams,
    VerifyParams,
    check_gem_p,
    check_scales,
    normalize_backbone,
    positive_int,
)

__all__ = ["RetrieverConfig"]


@dataclass(frozen=True)
class RetrieverConfig:
    """Parameters of a :class:`~roiret.Retriever`, with the paper's names; immutable
    (:meth:`replace` makes a changed copy, validated again).

    CNN RoIs: ``backbone`` (``"alexnet"``, ``"vgg16"``, ``"efficientnet-lite0"``,
    ``"efficientnet-lite2"``), ``feature`` (``"conv-max"``, ``"conv-sum"``, ``"conv-gem"``
    with exponent ``gem_p``, ``"fc7"``, ``"roialign-fc"``), ``scales`` the trunk runs at
    (``conv-*``: RoIs found at scale 1, pooled at every scale and summed), and the
    :class:`~roiret.params.RegionParams`: ``K`` RoIs per image, ``t_min`` (T_min),
    ``t_rate`` (T_rate), ``t_iou`` (T_iou), ``threshold_mode`` / ``threshold`` (``None``:
    the measured defaults).

    Codes (:class:`~roiret.params.CodeParams`): ``whitening`` (learn PCA-whitening in
    :meth:`Retriever.train`) with ``whitening_dims`` output dimensions (``None``: all),
    ``code_bits`` (``None``: the paper's codes, bit i = f_i > mean(f); an integer: that many
    bits from a fixed random projection seeded by ``seed``).

    BoW (:class:`~roiret.params.BowParams`): ``vocab_size`` visual words (``"auto"``, the
    default: with the ASMK first stage one per 100 training descriptors, at least 1 000 (one
    per 4 when that is fewer); with TF-IDF one per 4; at most 50 000 — the ratios measured
    best on small collections and on Oxford5k-dev, :func:`roiret.params.auto_vocab_size`;
    the trained size replaces it),
    ``local_features`` (``"rootsift"``, ``"sift"``, ``"surf"``), ``max_keypoints`` per
    image, ``max_train_descriptors`` (a seeded sample) and ``kmeans_iterations``.

    First stage (:class:`~roiret.params.AsmkParams`, beyond the paper): ``first_stage``
    (``"asmk"``: the selective match kernel on Hamming-embedded words; ``"tfidf"``: the
    paper's TF-IDF), and for ASMK the signature length ``he_bits``, ``he_thresholds``, the
    selectivity ``asmk_alpha`` / ``asmk_tau`` and multiple assignment
    (``query_assignments``, ``db_assignments``, ``assignment_ratio``), and ``verify_cells``
    sub-cells per word for spatial verification.

    Re-ranking (:class:`~roiret.params.RerankParams`): ``N`` BoW candidates re-ranked,
    ``n`` of them matched exhaustively, ``k`` query RoIs kept for the others, ``mode``
    (``"fast"``, ``"exhaustive"``, ``"global"`` — the whole-image baseline —, ``"bow"``),
    ``fusion`` (how the first-stage score enters the re-ranking score of the top N:
    ``"adaptive"``, a query-adaptive weight; a fixed weight in [0, 1]; 0, ``"none"`` or
    ``None``: the RoI score alone, the paper — stored as 0.0; see :mod:`roiret.search.rerank`).

    Spatial verification and query expansion (:class:`~roiret.params.VerifyParams`, beyond
    the paper): ``R`` first-stage candidates verified geometrically with their local
    features (0: off), ``min_inliers`` to count as verified (the least: more are needed when
    query and image share many visual words, :func:`roiret.search.verify.required_inliers`;
    verified hits rank first, by inliers), ``qe`` verified results averaged into an expanded
    query searched again (0: off), ``qe_margin`` what of each goes into it (None: the whole
    image; m >= 0: the words of its features inside the query box mapped by the verified
    affine, grown by m box sizes on each side; 1.0, chosen on Oxford5k-dev, the demo and
    10^5 / 10^6 distractors: docs/RESULTS.md).

    Images: ``max_side`` (500, the paper's) for both stages. ``seed``: every seeded choice
    (k-means sample and initialisation, code projection, training sample).

    Defaults. ``backbone="efficientnet-lite0"`` with ``feature="conv-gem"`` (GeM, p = 2, one
    scale) was chosen on Oxford5k-dev and the demo collection (docs/RESULTS.md, "A stronger
    RoI stage"): its RoI score alone is the first to rank above BoW on Oxford5k-dev classic
    and Medium, the default pipeline gains in all three protocols, and GeM beat max pooling
    with every backbone on both collections. Its CNN costs 5× AlexNet's, a whole image
    1.7× to index (benchmarks/README.md).
    The RoI thresholds come from :mod:`roiret.cnn.regions`. ``whitening=False``,
    ``code_bits=512`` and ``fusion="adaptive"`` were chosen by measurement
    (docs/RESULTS.md): on Oxford5k-dev, PCA-whitening learned on the collection's own RoIs
    (~15k descriptors) amplified noisy directions (classic mAP of the RoI re-ranking 47.7
    with it, 59.7 without), 512 projected bits beat the 256 paper bits, and the RoI score
    alone (AlexNet conv5) ranks slightly worse than 50k-word RootSIFT BoW there, while on
    the demo collection (small objects on textured backgrounds) it is far better than BoW;
    fusing both beats BoW on Oxford5k-dev, and choosing the weight per query beat every
    fixed weight that does so, on both. :meth:`paper` gives the paper's own settings.
    """

    backbone: str = "efficientnet-lite0"
    feature: str = "conv-gem"
    gem_p: float = DEFAULT_GEM_P
    scales: Tuple[float, ...] = (1.0,)
    K: int = 20
    t_min: Optional[float] = None
    t_rate: Optional[float] = None
    t_iou: float = 0.95
    threshold_mode: Optional[str] = None
    threshold: Optional[float] = None
    whitening: bool = False
    whitening_dims: Optional[int] = None
    code_bits: Optional[int] = 512
    vocab_size: Union[int, str] = "auto"
    local_features: str = "rootsift"
    max_keypoints: Optional[int] = 2000
    max_train_descriptors: Optional[int] = 500_000
    kmeans_iterations: int = DEFAULT_KMEANS_ITERATIONS
    first_stage: str = "asmk"
    he_bits: int = 128
    he_thresholds: str = "zero"
    asmk_alpha: float = 3.0
    asmk_tau: float = 0.0
    query_assignments: int = 3
    db_assignments: int = 1
    assignment_ratio: float = 1.5
    verify_cells: int = 1
    N: int = 100
    n: int = 10
    k: int = 5
    mode: str = "fast"
    fusion: Fusion = "adaptive"
    R: int = DEFAULT_R
    min_inliers: int = DEFAULT_MIN_INLIERS
    qe: int = DEFAULT_QE
    qe_margin: Optional[float] = DEFAULT_QE_MARGIN
    max_side: int = 500
    seed: int = 0
    # The validated groups, set per instance by __post_init__. Declared ClassVar so that the
    # dataclass does not make it a field: it stays out of to_dict, ==, repr and __init__.
    _groups: ClassVar[Tuple[RegionParams, CodeParams, BowParams, RerankParams, VerifyParams, AsmkParams]]

    def __post_init__(self) -> None:
        # Every value is checked here, by the group it belongs to, so that a bad value (or
        # a damaged manifest) fails when the configuration is made, not when the CNN is
        # first built. The flat fields keep the groups' normalised values.
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("backbone", normalize_backbone(self.backbone))
        if self.feature not in FEATURES:
            raise ValueError(f"feature must be one of {list(FEATURES)}, got {self.feature!r}")
        put("gem_p", check_gem_p(self.gem_p))
        put("scales", check_scales(self.scales, self.feature))  # a manifest's list comes back a tuple
        regions = RegionParams(
            self.K,
            DEFAULT_T_MIN if self.t_min is None else self.t_min,
            DEFAULT_T_RATE if self.t_rate is None else self.t_rate,
            self.t_iou,
            DEFAULT_THRESHOLD_MODE if self.threshold_mode is None else self.threshold_mode,
            DEFAULT_THRESHOLD if self.threshold is None else self.threshold,
        )
        codes = CodeParams(self.whitening, self.whitening_dims, self.code_bits, self.seed)
        bow = BowParams(
            self.vocab_size, self.local_features, self.max_keypoints, self.max_train_descriptors, self.kmeans_iterations
        )
        rerank = RerankParams(self.N, self.n, self.k, self.mode, self.fusion)
        verify = VerifyParams(self.R, self.min_inliers, self.qe, self.qe_margin)
        asmk = AsmkParams(**{f.name: getattr(self, f.name) for f in dataclasses.fields(AsmkParams)})
        for group in (regions, codes, bow, rerank, verify, asmk):
            for name, value in group.to_dict().items():
                put(name, value)
        put("max_side", positive_int("max_side", self.max_side))
        put("_groups", (regions, codes, bow, rerank, verify, asmk))  # not a field: rebuilt by every __init__

    # -- the groups ------------------------------------------------------------------------
    @property
    def regions(self) -> RegionParams:
        """K, T_min, T_rate, T_iou and the binarisation rule."""
        return self._groups[0]

    @property
    def codes(self) -> CodeParams:
        """Whitening and code length."""
        return self._groups[1]

    @property
    def bow(self) -> BowParams:
        """Vocabulary and local features."""
        return self._groups[2]

    @property
    def rerank(self) -> RerankParams:
        """N, n, k, mode and fusion."""
        return self._groups[3]

    @property
    def verify(self) -> VerifyParams:
        """R, min_inliers, qe and qe_margin."""
        return self._groups[4]

    @property
    def asmk(self) -> AsmkParams:
        """The first stage: TF-IDF or ASMK, and the kernel's settings."""
        return self._groups[5]

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def paper(cls, **overrides: Any) -> "RetrieverConfig":
        """The paper's pipeline: AlexNet conv5 max-pooled in each RoI, PCA-whitened
        descriptors binarised against their mean (as many bits as dimensions), top N
        re-ranked by the best RoI-pair similarity alone; no spatial verification or query
        expansion; the TF-IDF first stage."""
        paper = {
            "backbone": "alexnet",
            "feature": "conv-max",
            "whitening": True,
            "code_bits": None,
            "first_stage": "tfidf",
        }
        return cls(**{**paper, "fusion": 0.0, "R": 0, "qe": 0, **overrides})

    def replace(self, **changes: Any) -> "RetrieverConfig":
        """A copy with ``changes`` applied (unknown keys: ValueError; validated again)."""
        return self.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RetrieverConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown configuration keys: {sorted(unknown)}")
        return cls(**d)
