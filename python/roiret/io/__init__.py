"""Input and output: images (:mod:`.images`: reading any image source safely, boxes),
array files (:mod:`.arrays`: pickle-free, checksummed ``.npz``) and index folders
(:mod:`.folder`: the one persistence format of every saved index). Imports nothing of the
rest of the package but :mod:`roiret.errors`."""
