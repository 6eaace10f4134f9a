"""keras.applications ImageNet checkpoints (HDF5) -> tmrjax variables, read with h5py only.

Three on-disk formats hold the same layers:

- legacy weights file (the official downloads, ``model.save_weights('x.h5')`` in Keras 2):
  root attribute ``layer_names``; each layer group lists its datasets in ``weight_names``;
- legacy full model (``model.save('x.h5')``): the same under a ``model_weights`` group;
- Keras 3 weights file (``model.save_weights('x.weights.h5')``): ``layers/<auto name>/vars/<i>``
  with the layer's own name in the ``name`` attribute of ``vars``; a subclassed model nests its
  attributes (``block4/layers/conv2d_2/vars/<i>`` in the HED edge detector), so every ``vars``
  group of the file is a layer, wherever it is.

A layer's weights are identified by their position, as Keras' own loaders do: Conv2D
(kernel, bias), BatchNormalization (gamma, beta, moving_mean, moving_variance). The
official VGG files predate the ``kernel:0`` names (``block1_conv1_W_1:0``), so names are
only kept to report what was dropped or not understood. Kernels are HWIO in both Keras and
Flax, so no array is transposed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

import h5py
import numpy as np

from ..models import ARCHITECTURES
from ..weights import VariablePath, WeightsError
from .download import OfficialFile

LAYOUT = "keras"

_BASE = "https://storage.googleapis.com/tensorflow/keras-applications"

# (notop, full): notop first, it is what a backbone needs. Digests as in keras.applications.
OFFICIAL: dict[str, tuple[OfficialFile, OfficialFile]] = {
    "resnet50": (
        OfficialFile(
            f"{_BASE}/resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "md5",
            "4d473c1dd8becc155b73f8504c6f6626",
        ),
        OfficialFile(
            f"{_BASE}/resnet/resnet50_weights_tf_dim_ordering_tf_kernels.h5",
            "md5",
            "2cb95161c43110f7111970584f804107",
        ),
    ),
    "vgg16": (
        OfficialFile(
            f"{_BASE}/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "md5",
            "6d6bbae143d832006294945121d1f1fc",
        ),
        OfficialFile(
            f"{_BASE}/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5",
            "md5",
            "64373286793e3c8b2b4e3219cbf3544b",
        ),
    ),
    "vgg19": (
        OfficialFile(
            f"{_BASE}/vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "md5",
            "253f8cb515780f3b799900260a226db6",
        ),
        OfficialFile(
            f"{_BASE}/vgg19/vgg19_weights_tf_dim_ordering_tf_kernels.h5",
            "md5",
            "cbe5617147190e668d6c5d5026f83318",
        ),
    ),
}

# The ImageNet classifier of the full (include_top=True) files; tmrjax never uses it.
HEAD_LAYERS = frozenset({"predictions", "fc1", "fc2"})

# Flax (collection, name) of each weight, in the order Keras stores a layer's weights.
_CONV = (("params", "kernel"), ("params", "bias"))
_BN = (("params", "scale"), ("params", "bias"), ("batch_stats", "mean"), ("batch_stats", "var"))

_RESNET_STEM = re.compile(r"conv1_(conv|bn)")
_RESNET_BLOCK = re.compile(r"(conv[2-5]_block\d+)_([0-3])_(conv|bn)")
_VGG_CONV = re.compile(r"block(\d)_conv(\d)")

_Weights = list[tuple[str, h5py.Dataset]]  # (source key "layer/weight", dataset), in file order


def read_checkpoint(
    path: str | os.PathLike, arch: str
) -> tuple[dict[VariablePath, np.ndarray], list[str]]:
    """Read a keras.applications HDF5 file into flat Flax variables of `arch` (layout 'keras').

    Returns (flat, dropped): `flat` maps Flax paths to arrays; a weight with no place in the
    backbone is kept under its source key, ``("layer/weight",)``, so that `assemble_variables`
    reports it as unexpected. `dropped` lists the classifier-head keys.
    """
    return read_layers(path, arch, lambda layer, keys: layer in HEAD_LAYERS)


def read_layers(
    path: str | os.PathLike, arch: str, is_head: Callable[[str, list[str]], bool]
) -> tuple[dict[VariablePath, np.ndarray], list[str]]:
    """`read_checkpoint` with the layers to drop chosen by `is_head(layer name, source keys)`."""
    try:
        with h5py.File(path, "r") as f:
            layers = _layer_weights(f, path)
            _check_architecture(path, layers, arch)
            flat: dict[VariablePath, np.ndarray] = {}
            dropped: list[str] = []
            for layer, weights in layers.items():
                if is_head(layer, [key for key, _ in weights]):
                    dropped += [key for key, _ in weights]
                    continue
                module, roles = _flax_module(layer)
                for i, (key, dataset) in enumerate(weights):
                    if module is not None and i < len(roles):
                        collection, name = roles[i]
                        target = (collection, *module, name)
                    else:
                        target = (key,)  # assemble_variables lists it as unexpected
                    flat[target] = np.asarray(dataset[()])
    except OSError as e:  # h5py: not HDF5, truncated, unreadable dataset
        raise WeightsError(
            f"{path}: cannot read HDF5 file ({e}); it is truncated or corrupt, or not HDF5 at all"
        ) from e
    return flat, dropped


def _layer_weights(f: h5py.File, path: str | os.PathLike) -> dict[str, _Weights]:
    """{layer name: its weights} of whichever of the three Keras HDF5 formats `f` is."""
    if _has_attr(f, "layer_names"):
        return _legacy_layers(f, path)
    if isinstance(f.get("model_weights"), h5py.Group) and _has_attr(f["model_weights"], "layer_names"):
        return _legacy_layers(f["model_weights"], path)
    if layers := _keras3_layers(f, path):
        return layers
    raise WeightsError(
        f"{path}: an HDF5 file but not Keras weights: no 'layer_names' attribute, no "
        f"'model_weights' group and no 'layers' group (top-level keys: {sorted(f.keys())[:10]})"
    )


def _legacy_layers(root: h5py.Group, path: str | os.PathLike) -> dict[str, _Weights]:
    layers: dict[str, _Weights] = {}
    for layer in _str_attr(root, "layer_names"):
        group = root.get(layer)
        if not isinstance(group, h5py.Group):
            raise WeightsError(f"{path}: layer_names lists {layer!r} but the file has no such group")
        weights: _Weights = []
        for name in _str_attr(group, "weight_names"):
            dataset = group.get(name)
            if not isinstance(dataset, h5py.Dataset):
                raise WeightsError(
                    f"{path}: layer {layer!r} lists weight {name!r} but the file has no such dataset"
                )
            key = name if name.startswith(layer + "/") else f"{layer}/{name}"
            weights.append((key, dataset))
        layers[layer] = weights
    return layers


def _keras3_layers(f: h5py.File, path: str | os.PathLike) -> dict[str, _Weights]:
    """Every non-empty ``vars`` group of a Keras 3 file, by the layer name in its ``name`` attribute.

    Source keys are the datasets' paths in the file (``block4/layers/conv2d_2/vars/0``).
    """
    groups: list[tuple[str, h5py.Group]] = []
    f.visititems(lambda name, obj: groups.append((name, obj))
                 if isinstance(obj, h5py.Group) and name.rsplit("/", 1)[-1] == "vars" and len(obj) else None)
    layers: dict[str, _Weights] = {}
    for group_path, variables in groups:
        if "name" not in variables.attrs:
            raise WeightsError(
                f"{path}: Keras 3 weights file without layer names ({group_path} has "
                "no 'name' attribute); re-save it with a newer Keras or as a legacy .h5 file"
            )
        layer = _decode(variables.attrs["name"])
        if layer in layers:
            raise WeightsError(f"{path}: two Keras layers named {layer!r} ({layers[layer][0][0]}, {group_path})")
        indices = sorted(variables, key=lambda i: (len(i), i))  # "0", "1", ..., "10"
        layers[layer] = [(f"{group_path}/{i}", variables[i]) for i in indices]
    return layers


def _flax_module(layer: str) -> tuple[tuple[str, ...] | None, tuple[tuple[str, str], ...]]:
    """Flax module path and weight roles of a Keras layer name; (None, ()) if unknown."""
    if m := _RESNET_STEM.fullmatch(layer):
        return ("conv1",) if m[1] == "conv" else ("bn1",), _CONV if m[1] == "conv" else _BN
    if m := _RESNET_BLOCK.fullmatch(layer):
        block, index, kind = m[1], m[2], m[3]
        name = f"shortcut_{kind}" if index == "0" else f"{kind}{index}"
        return (block, name), _CONV if kind == "conv" else _BN
    if m := _VGG_CONV.fullmatch(layer):
        return (f"conv{m[1]}_{m[2]}",), _CONV
    return None, ()


def _looks_like(layers: Mapping[str, _Weights]) -> str | None:
    """The keras.applications model a file's layer names come from, if recognisable."""
    names = list(layers)
    if any("_preact_" in n for n in names):
        return "ResNet v2 (resnet50v2/101v2/152v2)"
    conv4 = [int(m[1]) for n in names if (m := re.match(r"conv4_block(\d+)_", n))]
    if conv4:
        blocks = max(conv4)  # 6, 23, 36 in keras.applications; fewer: a damaged resnet50
        if blocks <= 6:
            return "resnet50"
        return {23: "resnet101", 36: "resnet152"}.get(blocks, f"ResNet with {blocks} conv4 blocks")
    if any(re.fullmatch(r"block[345]_conv4", n) for n in names):
        return "vgg19"
    if any(_VGG_CONV.fullmatch(n) for n in names):
        return "vgg16"
    return None


def _check_architecture(path: str | os.PathLike, layers: Mapping[str, _Weights], arch: str) -> None:
    found = _looks_like(layers)
    if found is None or found == arch:
        return
    hint = f"convert it as {found!r}" if found in ARCHITECTURES else f"tmrjax supports {ARCHITECTURES}"
    raise WeightsError(f"{path}: this looks like a Keras {found} checkpoint, not {arch}; {hint}")


def _has_attr(group: h5py.Group, name: str) -> bool:
    return name in group.attrs or f"{name}0" in group.attrs


def _str_attr(group: h5py.Group, name: str) -> list[str]:
    """A list-of-strings attribute, including Keras' split form name0, name1, ... ."""
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks, i = [], 0
        while f"{name}{i}" in group.attrs:
            chunks.append(group.attrs[f"{name}{i}"])
            i += 1
    return [_decode(item) for chunk in chunks for item in np.atleast_1d(chunk)]


def _decode(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)
