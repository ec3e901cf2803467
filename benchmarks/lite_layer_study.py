"""EfficientNet-Lite0's feature layer for the RoIs: the head (1280 channels after ReLU6, the
default) against the last MBConv block's output (320 channels; a linear projection, so ReLU
is applied for the base regions and GeM, which need non-negative activations). The same
harness as ``roiret eval --variants roi,roiret`` (docs/RESULTS.md, "A stronger RoI stage"):

    python benchmarks/lite_layer_study.py ../shared/datasets/oxford5k-dev --vocabulary <index folder> \\
        [--cache /tmp/lite-layer]

The block variant is made by replacing the network's ``extract_features`` in this process
only. Give it a cache folder of its own: its configuration, and so its cache key, is the
default's.
"""

from __future__ import annotations

import argparse

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--vocabulary", help="reuse the vocabulary of this index folder (as roiret eval)")
    ap.add_argument("--cache", default="/tmp/lite-layer")
    ap.add_argument("--gem-p", type=float, default=2.0)
    args = ap.parse_args()

    from efficientnet_lite_pytorch import EfficientNet

    import roiret.cnn.backbones as B
    from roiret.eval.table import oxford_table

    def blocks_only(self, inputs):  # the package's extract_features without the head
        x = self._swish(self._bn0(self._conv_stem(inputs)))
        for block in self._blocks:
            x = block(x)
        return torch.relu(x)

    EfficientNet.extract_features = blocks_only
    B.BACKBONES["efficientnet-lite0"] = (320, 32)
    table = oxford_table(
        args.dataset,
        features=["conv-gem"],
        variants=["roi", "roiret"],
        backbone="efficientnet-lite0",
        gem_p=args.gem_p,
        cache=args.cache,
        vocabulary=args.vocabulary,
        progress=False,
    )
    print(table.markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
