"""torchvision ImageNet checkpoints (ResNet50 v1.5, VGG16, VGG19) -> tmrjax Flax variables.

A torchvision state dict names modules ``layer3.5.conv2.weight`` or ``features.28.bias``;
tmrjax uses Keras' stage numbering (``conv4_block6/conv2/kernel``) and the papers' VGG names
(``conv5_3/bias``). Convolution kernels go from torch's OIHW to Flax's HWIO. Only tensors
are read, without torch: ``.pth``/``.pt`` by :func:`.torch_pickle.load_torch_tensors`, which
unpickles nothing but tensors, or ``.safetensors``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from ..models.resnet import STAGES
from ..models.vgg import CONVS_PER_BLOCK
from ..weights import VariablePath, WeightsError, expected_variables
from .download import OfficialFile
from .torch_pickle import load_torch_tensors

LAYOUT = "torchvision"

# The publisher's files, V1 first: the retrieval papers used the original (V1-era) weights.
# VGG16's IMAGENET1K_FEATURES (ported from SSD) expects another input normalisation: not listed.
OFFICIAL = {
    "resnet50": (
        OfficialFile("https://download.pytorch.org/models/resnet50-0676ba61.pth", "sha256", "0676ba61"),
        OfficialFile("https://download.pytorch.org/models/resnet50-11ad3fa6.pth", "sha256", "11ad3fa6"),
    ),
    "vgg16": (OfficialFile("https://download.pytorch.org/models/vgg16-397923af.pth", "sha256", "397923af"),),
    "vgg19": (OfficialFile("https://download.pytorch.org/models/vgg19-dcbb9e9d.pth", "sha256", "dcbb9e9d"),),
}

# Top-level modules of the ImageNet classifier head, which tmrjax does not use.
HEAD_MODULES = ("fc", "classifier")

# Torch parameter name -> (Flax collection, Flax name), per module kind.
CONV_LEAVES = {"weight": ("params", "kernel"), "bias": ("params", "bias")}
BN_LEAVES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}

# Signatures for recognising which network a state dict belongs to.
RESNET_BLOCKS = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}
VGG_CONVS = {8: "vgg11", 10: "vgg13", 13: "vgg16", 16: "vgg19"}


def read_checkpoint(path: str | os.PathLike, arch: str) -> tuple[dict[VariablePath, np.ndarray], list[str]]:
    """Read a torchvision `arch` state dict into flat Flax variables.

    Returns (flat, dropped): `flat` maps Flax paths to arrays; a torch key with no place in
    the backbone is kept under its own name, ``(torch_key,)``, so that
    `assemble_variables` reports it as unexpected. `dropped` lists the classifier-head keys.
    """
    path = Path(path)
    state = load_state_dict(path)
    guessed = guess_arch(state)
    if guessed is not None and guessed != arch:
        raise WeightsError(
            f"{path}: this looks like a torchvision {guessed} checkpoint, not {arch}; "
            f"pass the architecture the file was saved from"
        )
    modules = _module_names(arch)
    return map_state_dict(state, expected_variables(arch, LAYOUT), lambda module, leaf: _flax_path(
        modules.get(module), leaf), lambda module: module.split(".")[0] in HEAD_MODULES)


def map_state_dict(
    state: Mapping[str, np.ndarray],
    expected: Mapping[VariablePath, tuple[int, ...]],
    flax_path: Callable[[str, str], VariablePath | None],
    is_head: Callable[[str], bool],
) -> tuple[dict[VariablePath, np.ndarray], list[str]]:
    """A torch state dict -> (flat Flax variables, dropped head keys), for every torch reader.

    `flax_path(module, leaf)` names a key's Flax variable (None if it has none); a key whose
    module `is_head` is dropped; a key with no place in `expected` is kept under its own name so
    that `assemble_variables` reports it. Kernels go from OIHW to HWIO; BN counters are skipped.
    """
    flat: dict[VariablePath, np.ndarray] = {}
    dropped: list[str] = []
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked":
            continue
        if is_head(module):
            dropped.append(key)
            continue
        target = flax_path(module, leaf)
        if target is None or target not in expected:
            flat[(key,)] = value
            continue
        if target[-1] == "kernel" and value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        flat[target] = value
    return flat, dropped


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a ``.pth``/``.pt``/``.safetensors`` file as numpy, "module." prefixes removed.

    A ``{"state_dict": ...}`` or ``{"model": ...}`` training checkpoint is unwrapped.
    """
    suffix = path.suffix.lower()
    if suffix in (".pth", ".pt"):
        return load_torch_tensors(path)
    if suffix != ".safetensors":
        raise WeightsError(f"{path}: unknown checkpoint type {suffix!r}; expected .pth, .pt or .safetensors")
    from safetensors.numpy import load_file

    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error type for a bad header
        raise WeightsError(f"{path}: cannot read safetensors file ({e}); it is truncated or corrupt") from e
    return {key.removeprefix("module."): value for key, value in state.items()}


def guess_arch(state: Mapping[str, np.ndarray]) -> str | None:
    """Name the torchvision network a state dict comes from, or None when unrecognised."""
    parts = [key.split(".") for key in state]
    features = {p[1] for p in parts if p[0] == "features" and len(p) == 3}
    if features:
        norms = {p[1] for p in parts if p[0] == "features" and p[-1] == "running_mean"}
        name = VGG_CONVS.get(len(features - norms))
        return None if name is None else name + ("_bn" if norms else "")
    if any(p[0] == "layer1" for p in parts):
        blocks = tuple(len({p[1] for p in parts if p[0] == f"layer{n}"}) for n in range(1, 5))
        bottleneck = any(len(p) > 2 and p[2] == "conv3" for p in parts if p[0].startswith("layer"))
        return RESNET_BLOCKS.get((blocks, bottleneck))
    return None


def _module_names(arch: str) -> dict[str, tuple[tuple[str, ...], Mapping[str, tuple[str, str]]]]:
    """torch module name -> (Flax module path, leaf table) for every module of the backbone."""
    if arch == "resnet50":
        table = {"conv1": (("conv1",), CONV_LEAVES), "bn1": (("bn1",), BN_LEAVES)}
        for layer, (stage, _, blocks, _) in enumerate(STAGES, start=1):
            for i in range(blocks):
                block = f"{stage}_block{i + 1}"
                for j in (1, 2, 3):
                    table[f"layer{layer}.{i}.conv{j}"] = ((block, f"conv{j}"), CONV_LEAVES)
                    table[f"layer{layer}.{i}.bn{j}"] = ((block, f"bn{j}"), BN_LEAVES)
            first = f"{stage}_block1"
            table[f"layer{layer}.0.downsample.0"] = ((first, "shortcut_conv"), CONV_LEAVES)
            table[f"layer{layer}.0.downsample.1"] = ((first, "shortcut_bn"), BN_LEAVES)
        return table
    if arch in CONVS_PER_BLOCK:
        # torchvision's `features`: each conv is followed by a ReLU, each block by a max-pool.
        table, index = {}, 0
        for block, n in enumerate(CONVS_PER_BLOCK[arch], start=1):
            for i in range(1, n + 1):
                table[f"features.{index}"] = ((f"conv{block}_{i}",), CONV_LEAVES)
                index += 2
            index += 1
        return table
    raise WeightsError(f"torchvision conversion does not know architecture {arch!r}")


def _flax_path(
    module: tuple[tuple[str, ...], Mapping[str, tuple[str, str]]] | None, leaf: str
) -> VariablePath | None:
    if module is None:
        return None
    names, leaves = module
    if leaf not in leaves:
        return None
    collection, name = leaves[leaf]
    return (collection, *names, name)
