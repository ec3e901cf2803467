"""The CNN side: from an image to RoI codes (the right-hand path in docs/ARCHITECTURE.md).

* :mod:`.weights` — finding and safely reading pretrained weights (restricted unpickler);
* :mod:`.backbones` — the conv trunks (AlexNet, VGG16, EfficientNet-Lite0) and fc heads;
* :mod:`.regions` — RoIs from a feature map (the paper's K, T_min, T_rate, T_iou);
* :mod:`.descriptors` — pooling a descriptor per RoI (conv max / sum, fc7, RoIAlign + fc);
* :mod:`.whitening` — PCA-whitening learned without labels;
* :mod:`.extractor` — :class:`~.extractor.RoIExtractor`, images → RoIs, descriptors, codes;
* :mod:`.codes` — :class:`~.codes.CodeProjector`, the indexed binary codes.

Nothing is imported here: torch loads only when a module that needs it is imported.
"""
