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

from roiret.backbones import build_backbone, images_to_tensor  # noqa: E402
from roiret.errors import WeightsNotFoundError  # noqa: E402
from roiret.extractor import RoIExtractor  # noqa: E402

BATCH = 8
K = 20
DEVICE = os.environ.get("ROIRET_BENCH_DEVICE", "cpu")


@pytest.fixture(scope="module")
def images():
    names = ["astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "immunohistochemistry",
             "hubble_deep_field", "page"]
    out = []
    for n in names:
        f = getattr(skdata, n, None)
        if f is None:
            continue
        try:
            im = f()
        except Exception:  # some need pooch downloads
            continue
        if im.ndim == 2:
            im = np.repeat(im[:, :, None], 3, axis=2)
        out.append(np.ascontiguousarray(cv2.resize(im[:, :, :3], (500, 375), interpolation=cv2.INTER_AREA)))
    while len(out) < BATCH:
        out.append(np.ascontiguousarray(out[len(out) % 4][:, ::-1]))
    return out[:BATCH]


@pytest.fixture(scope="module")
def backbone():
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("ROIRET_BENCH_DEVICE=cuda but no CUDA device")
    try:
        return build_backbone("alexnet", "auto", device=DEVICE)
    except WeightsNotFoundError:
        torch.manual_seed(0)
        return build_backbone("alexnet", "random", device=DEVICE)


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
    ex = RoIExtractor(backbone, "conv-max", k=K, max_side=500, batch_size=BATCH,
                      progress=False, num_workers=0, device=DEVICE)

    def fn():
        res = ex.extract(images)
        assert len(res) == BATCH
        return res

    _run(benchmark, fn, {"case": "trunk+regions+conv-max", "k": K})


@pytest.mark.benchmark(group="fc-alexnet-500")
@pytest.mark.parametrize("feature", ["fc7", "roialign-fc"])
def test_fc_features(benchmark, images, backbone, feature):
    torch.manual_seed(0)
    ex = RoIExtractor(backbone, feature, k=K, max_side=500, batch_size=BATCH,
                      head_weights="random", progress=False, num_workers=0, device=DEVICE)
    _run(benchmark, lambda: ex.extract(images), {"case": feature, "k": K})
