"""Parameter groups validated once (roiret.params), the immutable configuration made of them,
and NotTrainedError from every public method of an untrained retriever."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import roiret
from roiret import NotTrainedError, RoiretError
from roiret.params import (
    CONFIGURED,
    FIRST_STAGE_ONLY,
    BowParams,
    CodeParams,
    RegionParams,
    RerankParams,
    SearchParams,
    VerifyParams,
)
from roiret.search.config import RetrieverConfig

# (field, bad value, part of the message) — each must be refused wherever it is given
BAD = [
    ("K", 0, "K must be a positive integer"),
    ("K", 2.5, "K must be a positive integer"),
    ("K", True, "K must be a positive integer"),
    ("t_min", 1.5, "t_min"),
    ("t_min", float("nan"), "t_min must be a finite number"),
    ("t_rate", 0.5, "t_rate"),
    ("t_iou", 0.0, "t_iou"),
    ("threshold_mode", "median", "threshold_mode must be one of"),
    ("threshold", float("inf"), "threshold must be a finite number"),
    ("code_bits", 0, "code_bits must be a positive integer"),
    ("whitening", "yes", "whitening must be True or False"),
    ("whitening_dims", -3, "whitening_dims must be a positive integer"),
    ("vocab_size", 0, "vocab_size must be a positive integer"),
    ("local_features", "orb", "local_features must be one of"),
    ("max_keypoints", 0, "max_keypoints must be a positive integer"),
    ("kmeans_iterations", -1, "kmeans_iterations must be a positive integer"),
    ("N", 0, "N must be a positive integer"),
    ("n", 200, "n must be <= N"),
    ("k", 0, "k must be a positive integer"),
    ("mode", "fastest", "mode must be one of"),
    ("fusion", 1.5, r"fusion must be 'adaptive', a weight in \[0, 1\], or 0 / 'none' / None"),
    ("fusion", "sometimes", "fusion must be 'adaptive', a weight"),
    ("backbone", "resnet", "backbone must be one of"),
    ("feature", "conv-avg", "feature must be one of"),
    ("max_side", 0, "max_side must be a positive integer"),
    ("seed", -1, "seed must be a non-negative integer"),
    ("R", -1, "R must be a non-negative integer"),
    ("R", 1.5, "R must be a non-negative integer"),
    ("min_inliers", 0, "min_inliers must be a positive integer"),
    ("qe", True, "qe must be a non-negative integer"),
    ("qe_margin", -0.5, "qe_margin must be >= 0"),
    ("qe_margin", "1", "qe_margin must be a finite number"),
]
GROUP_OF = {
    f.name: g for g in (RegionParams, CodeParams, BowParams, RerankParams, VerifyParams) for f in dataclasses.fields(g)
}


@pytest.mark.parametrize("name, value, message", BAD)
def test_config_refuses_bad_values(name, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        RetrieverConfig(**{name: value})


@pytest.mark.parametrize("name, value, message", [b for b in BAD if b[0] in GROUP_OF])
def test_the_group_gives_the_same_message(name, value, message):
    """The configuration's check is its group's: one message, from one place."""
    with pytest.raises(ValueError) as from_group:
        GROUP_OF[name](**{name: value})
    with pytest.raises(ValueError) as from_config:
        RetrieverConfig(**{name: value})
    assert str(from_group.value) == str(from_config.value)


@pytest.mark.parametrize(
    "name, value, message", [b for b in BAD if b[0] in {f.name for f in dataclasses.fields(SearchParams)} - {"n"}]
)
def test_a_search_override_is_checked_as_the_configuration_checks_it(name, value, message):
    with pytest.raises(ValueError) as override:
        SearchParams(**{name: value})
    with pytest.raises(ValueError) as config:
        RetrieverConfig(**{name: value})
    assert str(override.value) == str(config.value)
    with pytest.raises(ValueError) as both:
        SearchParams(N=5, n=6)
    with pytest.raises(ValueError) as group:
        RerankParams(N=5, n=6)
    assert str(both.value) == str(group.value)


def test_search_params_override_the_configured_groups():
    c = RetrieverConfig(N=50, n=10, k=5, fusion=0.5, R=30, qe=7)
    nothing = SearchParams()
    assert nothing.fusion is CONFIGURED and nothing == SearchParams.of()
    assert nothing.rerank(c.rerank) == c.rerank and nothing.verify(c.verify) == c.verify
    p = SearchParams(mode="exhaustive", N=8, fusion=None, R=0)
    assert p.fusion == 0.0  # None: the RoI score alone, as in the configuration
    assert p.rerank(c.rerank) == RerankParams(N=8, n=8, k=5, mode="exhaustive", fusion=0.0)  # configured n cut to N
    assert p.verify(c.verify) == VerifyParams(R=0, min_inliers=5, qe=7)
    assert SearchParams(n=3, k=np.int64(2)).rerank(c.rerank) == RerankParams(N=50, n=3, k=2, fusion=0.5)
    with pytest.raises(ValueError, match="n must be <= N"):
        SearchParams(n=60).rerank(c.rerank)  # an n given is never cut
    assert FIRST_STAGE_ONLY.rerank(c.rerank).mode == "bow" and FIRST_STAGE_ONLY.verify(c.verify).R == 0
    # keywords on top of a SearchParams; what is not a setting is refused by name
    assert SearchParams.of(p, R=4, qe=2) == SearchParams(mode="exhaustive", N=8, fusion=0.0, R=4, qe=2)
    with pytest.raises(TypeError, match="unknown search setting 'top'; the settings are mode, N, n, k, fusion"):
        SearchParams.of(top=3)
    with pytest.raises(TypeError, match="params: expected roiret.params.SearchParams, got dict"):
        SearchParams.of({"R": 0})  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.R = 3  # type: ignore[misc]


def test_region_params_are_checked_once_for_every_entry_point(kernels):
    import torch

    from roiret.cnn import regions

    fmap = torch.rand(1, 8, 6, 6)
    with pytest.raises(ValueError) as a:
        regions.detect_rois(fmap, [[96.0, 96.0]], stride=16, t_iou=1.5)
    with pytest.raises(ValueError) as b:
        RetrieverConfig(t_iou=1.5)
    with pytest.raises(ValueError) as c:
        regions.select_regions(torch.zeros(1, 8, 4), torch.zeros(1, 8), torch.tensor([[6.0, 6.0]]), t_iou=1.5)
    assert str(a.value) == str(b.value) == str(c.value)


def test_config_is_immutable_and_replace_validates():
    c = RetrieverConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.K = 5  # type: ignore[misc]
    d = c.replace(K=5, fusion=0.25)
    assert (c.K, d.K, d.fusion) == (20, 5, 0.25) and d.regions.K == 5 and d.rerank.fusion == 0.25
    with pytest.raises(ValueError, match="K must be a positive integer"):
        c.replace(K=-1)
    with pytest.raises(ValueError, match="unknown configuration keys"):
        c.replace(k_rois=3)


def test_groups_and_defaults():
    c = RetrieverConfig(backbone="VGG16", t_min=None, N=50, n=5)
    assert c.backbone == "vgg16"  # normalised once
    assert c.regions == RegionParams()  # None: the measured defaults
    assert (c.rerank.N, c.rerank.n, c.rerank.k) == (50, 5, 5)
    assert c.codes == CodeParams() and c.bow == BowParams()
    assert RetrieverConfig.from_dict(c.to_dict()) == c
    p = RetrieverConfig.paper()
    assert (p.whitening, p.code_bits, p.fusion) == (True, None, 0.0)
    assert (p.R, p.qe) == (0, 0) and c.verify == VerifyParams() and (c.R, c.min_inliers, c.qe) == (100, 5, 40)
    assert isinstance(c.regions.t_min, float) and isinstance(RegionParams(K=np.int64(7)).K, int)


def test_untrained_retriever_says_so_from_every_public_method(tmp_path):
    r = roiret.Retriever(weights="random")
    assert not r.trained and len(r) == 0 and r.ids.tolist() == []
    img = np.zeros((32, 32, 3), np.uint8)
    calls = {
        "add": lambda: r.add([img]),
        "remove": lambda: r.remove([0]),
        "prepare_query": lambda: r.prepare_query(img),
        "search": lambda: r.search(img),
        "with_K": lambda: r.with_K(5),
        "save": lambda: r.save(tmp_path / "idx"),
        "index": lambda: r.index,
        "bow": lambda: r.bow,
        "store": lambda: r.store,
    }
    for call in calls.values():
        with pytest.raises(NotTrainedError, match="not trained: call train"):
            call()
    assert not (tmp_path / "idx").exists()  # nothing was written
    with pytest.raises(NotTrainedError):
        r.rank(
            roiret.PreparedQuery(
                np.zeros(0, np.int64), np.zeros(0, np.float32), None, np.zeros((0, 4), np.float32), {}
            ),
            mode="bow",
        )
    # one base class for every deliberate error, and the built-in a caller would catch
    assert issubclass(NotTrainedError, RuntimeError) and issubclass(NotTrainedError, RoiretError)
    for e in (roiret.ImageError, roiret.IndexFormatError, roiret.WeightsError, roiret.WeightsNotFoundError):
        assert issubclass(e, RoiretError)


def test_auto_vocabulary_size_rule():
    from roiret.params import AUTO_MAX_WORDS, auto_vocab_size

    # hand-checked: one word per 4 descriptors, two significant digits, at most 50 000
    assert auto_vocab_size(59_774) == 15_000  # ukbench-56's RootSIFT descriptors
    assert auto_vocab_size(13_341) == 3_300  # 11 photos (the failing case)
    assert auto_vocab_size(802_000) == AUTO_MAX_WORDS == 50_000  # Oxford5k-dev keeps today's size
    assert auto_vocab_size(10**9) == 50_000 and auto_vocab_size(7) == 2 and auto_vocab_size(1) == 1
    sizes = [auto_vocab_size(n) for n in range(1, 400_000, 997)]
    assert sizes == sorted(sizes)  # never fewer words for more descriptors
    assert RetrieverConfig().vocab_size == "auto" and RetrieverConfig(vocab_size=2000).bow.vocab_size == 2000
    with pytest.raises(ValueError, match="vocab_size must be a positive integer"):
        RetrieverConfig(vocab_size="big")


def test_auto_vocabulary_fit_and_a_clear_error_when_too_large():
    pytest.importorskip("faiss")
    from roiret.bow import Vocabulary
    from roiret.params import auto_vocab_size

    rng = np.random.default_rng(0)
    parts = [rng.random((n, 16), dtype=np.float32) for n in (300, 500, 401)]
    v = Vocabulary.fit(parts, "auto", kmeans_iterations=2, progress=False)
    assert v.size == auto_vocab_size(1201) == 300
    with pytest.raises(ValueError) as e:
        Vocabulary.fit(parts, 5000, kmeans_iterations=2, progress=False)
    msg = str(e.value)
    assert "vocab_size=5000" in msg and "use vocab_size <= 1201 (--vocab-size" in msg and "'auto' (300 words" in msg
