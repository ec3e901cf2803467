"""RoI extraction throughput at 500 px, AlexNet, K = 20 — side by side with the plain trunk.

Run::

    pytest benchmarks/bench_extraction.py --benchmark-only --benchmark-json=out/extraction.json

Groups (pytest-benchmark ``group``), each call handling one batch of 8 images of 500×375
(bundled scikit-image photos), already decoded (decoding is the same for everyone):

* ``extract-alexnet-500``:
  ``trunk`` — uint8 → normalised tensor → AlexNet up to relu5, nothing else (what a user
  of torchvision alone would run); ``trunk+regions+conv-max`` — :class:`RoIExtractor`
  end to end: the same trunk pass, base regions, native RoI selection, conv-max pooling,
  L2, packed codes, the global region, per-image results. Goal: ≤ 15 % over ``trunk``.
* ``fc-alexnet-500``: ``fc7`` (20 crops per image resized to 224² through AlexNet +
  fc6/fc7, the paper's feature) and ``roialign-fc`` (one trunk pass, RoIAlign → fc6/fc7).
  The fc layers have random weights here (no torchvision checkpoint offline); speed does
  not depend on the values.

* ``rois-by-backbone-500``: :class:`RoIExtractor` end to end for the RoI stages compared in
  docs/RESULTS.md ("A stronger RoI stage"): AlexNet conv-max (the paper's, the previous
  default), EfficientNet-Lite0 conv-gem (the default), Lite2 conv-gem, VGG16 conv-gem, and
  Lite0 at three scales.

On a shared machine the two groups drift apart between tests; for the ratio, the script
mode interleaves the two cases call by call and reports the median of the per-pair ratios::

    python benchmarks/bench_extraction.py --rounds 20 [--threads 1]
    python benchmarks/bench_extraction.py --backbones --rounds 5   # the RoI stages, interleaved

``extra_info.images_per_s`` is recorded for each case. Threads: torch's default (all cores;
set ``OMP_NUM_THREADS`` to pin). ``ROIRET_BENCH_DEVICE=cuda`` runs the same cases on a GPU
(fp16 autocast on; every timed call ends with the results on the host, or a synchronize).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")
skdata = pytest.importorskip("skimage.data")

from roiret.cnn.backbones import build_backbone, images_to_tensor  # noqa: E402
from roiret.cnn.extractor import RoIExtractor  # noqa: E402
from roiret.errors import WeightsNotFoundError  # noqa: E402

BATCH = 8
K = 20
DEVICE = os.environ.get("ROIRET_BENCH_DEVICE", "cpu")


def _make_images():
    names = [
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "immunohistochemistry",
        "camera",
        "hubble_deep_field",
        "coins",
    ]  # all bundled with scikit-image
    out = []
    for n in names:
        f = getattr(skdata, n, None)
        if f is None:
            continue
        try:
            im = f()
        except Exception:  # a data file missing from this install
            continue
        if im.ndim == 2:
            im = np.repeat(im[:, :, None], 3, axis=2)
        out.append(np.ascontiguousarray(cv2.resize(im[:, :, :3], (500, 375), interpolation=cv2.INTER_AREA)))
    while len(out) < BATCH:
        out.append(np.ascontiguousarray(out[len(out) % 4][:, ::-1]))
    return out[:BATCH]


def _make_backbone():
    try:
        return build_backbone("alexnet", "auto", device=DEVICE)
    except WeightsNotFoundError:
        torch.manual_seed(0)
        return build_backbone("alexnet", "random", device=DEVICE)


@pytest.fixture(scope="module")
def images():
    return _make_images()


@pytest.fixture(scope="module")
def backbone():
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("ROIRET_BENCH_DEVICE=cuda but no CUDA device")
    return _make_backbone()


def _run(benchmark, fn, info):
    fn()  # warm-up (allocations, lazy imports)
    benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(info)
    benchmark.extra_info["images_per_s"] = BATCH / benchmark.stats.stats.mean
    benchmark.extra_info["threads"] = torch.get_num_threads()
    benchmark.extra_info["device"] = DEVICE


@pytest.mark.benchmark(group="extract-alexnet-500")
def test_trunk(benchmark, images, backbone):
    dev = torch.device(DEVICE)
    amp = dev.type == "cuda"

    def fn():
        with torch.no_grad(), torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=amp):
            x = images_to_tensor(images, backbone.mean, backbone.std, dev)
            f = backbone(x)
        if amp:
            torch.cuda.synchronize()
        return f

    _run(benchmark, fn, {"case": "trunk", "weights": backbone.weights_source})


@pytest.mark.benchmark(group="extract-alexnet-500")
def test_trunk_regions_convmax(benchmark, images, backbone):
    ex = RoIExtractor(
        backbone, "conv-max", K=K, max_side=500, batch_size=BATCH, progress=False, num_workers=0, device=DEVICE
    )

    def fn():
        res = ex.extract(images)
        assert len(res) == BATCH
        return res

    _run(benchmark, fn, {"case": "trunk+regions+conv-max", "k": K})


@pytest.mark.benchmark(group="fc-alexnet-500")
@pytest.mark.parametrize("feature", ["fc7", "roialign-fc"])
def test_fc_features(benchmark, images, backbone, feature):
    torch.manual_seed(0)
    ex = RoIExtractor(
        backbone,
        feature,
        K=K,
        max_side=500,
        batch_size=BATCH,
        head_weights="random",
        progress=False,
        num_workers=0,
        device=DEVICE,
    )
    _run(benchmark, lambda: ex.extract(images), {"case": feature, "k": K})


#: (backbone, feature, scales) of the ``rois-by-backbone-500`` group, the first the reference
STAGES = [
    ("alexnet", "conv-max", (1.0,)),
    ("efficientnet-lite0", "conv-gem", (1.0,)),
    ("efficientnet-lite2", "conv-gem", (1.0,)),
    ("vgg16", "conv-gem", (1.0,)),
    ("efficientnet-lite0", "conv-gem", (1.0, 0.707, 0.5)),
]


def _stage_extractor(backbone: str, feature: str, scales) -> RoIExtractor:
    try:
        bb = build_backbone(backbone, "auto", device=DEVICE)
    except (WeightsNotFoundError, ImportError) as e:
        pytest.skip(f"{backbone}: {e}")
    return RoIExtractor(
        bb, feature, scales=scales, K=K, max_side=500, batch_size=BATCH, progress=False, num_workers=0, device=DEVICE
    )


@pytest.mark.benchmark(group="rois-by-backbone-500")
@pytest.mark.parametrize("stage", STAGES, ids=lambda s: f"{s[0]}-{s[1]}-x{len(s[2])}")
def test_roi_stage(benchmark, images, stage):
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("ROIRET_BENCH_DEVICE=cuda but no CUDA device")
    ex = _stage_extractor(*stage)
    _run(benchmark, lambda: ex.extract(images), {"case": "/".join(map(str, stage)), "k": K})


def _by_backbone(rounds: int) -> None:
    """The RoI stages of STAGES timed round-robin (the same conditions for all); ms per
    image and the ratio to the first (AlexNet conv-max), median over rounds."""
    import statistics
    import time

    imgs = _make_images()
    exs = [_stage_extractor(*st) for st in STAGES]
    times = [[] for _ in exs]
    for ex in exs:
        ex.extract(imgs)  # warm-up
    for _ in range(rounds):
        for i, ex in enumerate(exs):
            t = time.perf_counter()
            ex.extract(imgs)
            times[i].append(time.perf_counter() - t)
    print(
        f"device={DEVICE} threads={torch.get_num_threads()}, {BATCH} images of 500x375 per call, K={K}, {rounds} rounds"
    )
    print("| RoI stage | ms / image | × AlexNet conv-max |\n|---|---|---|")
    for st, ts in zip(STAGES, times):
        ratio = statistics.median(t / r for t, r in zip(ts, times[0]))
        name = f"{st[0]} {st[1]}" + (f", scales {', '.join(map(str, st[2]))}" if len(st[2]) > 1 else "")
        print(f"| {name} | {1e3 * statistics.median(ts) / BATCH:.1f} | {ratio:.2f} |")


def _interleaved(rounds: int, feature_rounds: int):
    """Trunk and trunk+regions+codes timed alternately (same conditions for both)."""
    import statistics
    import time

    imgs = _make_images()
    bb = _make_backbone()
    dev = torch.device(DEVICE)
    ex = RoIExtractor(bb, "conv-max", K=K, max_side=500, batch_size=BATCH, progress=False, num_workers=0, device=DEVICE)

    def trunk():
        with torch.no_grad():
            bb(images_to_tensor(imgs, bb.mean, bb.std, dev))
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def full():
        ex.extract(imgs)

    def timed(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    trunk(), full()
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(timed(trunk))
        tb.append(timed(full))
    ratios = [b / a for a, b in zip(ta, tb)]
    med_a, med_b = statistics.median(ta), statistics.median(tb)
    print(f"device={DEVICE} threads={torch.get_num_threads()} weights={bb.weights_source}")
    print(f"AlexNet, {BATCH} images of 500x375 per call, K={K}, {rounds} interleaved rounds")
    print(f"trunk                   : {BATCH / med_a:6.2f} images/s (median {1e3 * med_a:.1f} ms)")
    print(f"trunk+regions+conv-max  : {BATCH / med_b:6.2f} images/s (median {1e3 * med_b:.1f} ms)")
    print(
        f"ratio (median of pairs) : {statistics.median(ratios):.3f}  "
        f"[quartiles {statistics.quantiles(ratios, n=4)[0]:.3f} .. {statistics.quantiles(ratios, n=4)[2]:.3f}]"
    )
    for feature in ("roialign-fc", "fc7"):
        torch.manual_seed(0)
        fx = RoIExtractor(
            bb,
            feature,
            K=K,
            max_side=500,
            batch_size=BATCH,
            head_weights="random",
            progress=False,
            num_workers=0,
            device=DEVICE,
        )
        fx.extract(imgs)
        tf = statistics.median(timed(lambda fx=fx: fx.extract(imgs)) for _ in range(feature_rounds))
        print(f"{feature:<24}: {BATCH / tf:6.2f} images/s (median {1e3 * tf:.1f} ms, random fc weights)")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="interleaved trunk vs trunk+regions+codes timing")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--feature-rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--backbones", action="store_true", help="time the RoI stages of STAGES instead")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.backbones:
        _by_backbone(a.rounds)
    else:
        _interleaved(a.rounds, a.feature_rounds)
