"""Flax backbones with named feature taps, and the one registry that builds them.

`BACKBONES` maps an architecture name to what every other part needs to know of it: its taps,
the weight layouts it comes in, and how to build it. The converters, `tmrjax.load_backbone`
and the pipelines read it; a new architecture is one entry here.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from . import efficientnet_lite, hu2024, resnet, thumbnail, vgg
from .preprocessing import LAYOUT_PREPROCESSING, PREPROCESSING, Preprocessing
from .resnet import ResNet50
from .vgg import VGG


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A backbone family member: its taps (forward order), weight layouts, and its builder."""

    name: str
    taps: tuple[str, ...]
    layouts: tuple[str, ...]
    # (layout, taps, dtype) -> module; hu2024 also takes the encoder settings (`model`).
    build: Callable[..., nn.Module]
    # Trained by tmrjax (`tmrjax train --export`), not converted from a publisher's checkpoint.
    trained_here: bool = False
    # No variables at all (the pixel baseline): nothing to convert, load or initialise.
    has_weights: bool = True


def _resnet50(layout: str, taps: tuple[str, ...], dtype: Any) -> nn.Module:
    return ResNet50(layout=layout, taps=taps, dtype=dtype)


def _vgg(arch: str, layout: str, taps: tuple[str, ...], dtype: Any) -> nn.Module:
    return VGG(arch=arch, layout=layout, taps=taps, dtype=dtype)


def _efficientnet_lite(variant: str, layout: str, taps: tuple[str, ...], dtype: Any) -> nn.Module:
    return efficientnet_lite.EfficientNetLite(variant=variant, layout=layout, taps=taps, dtype=dtype)


def _thumbnail(layout: str, taps: tuple[str, ...], dtype: Any) -> nn.Module:
    return thumbnail.InkThumbnail(layout=layout, taps=taps, dtype=dtype)


def _hu2024(layout: str, taps: tuple[str, ...], dtype: Any, model: Mapping[str, Any] | None = None) -> nn.Module:
    return hu2024.encoder_from_settings({**(model or {}), "layout": layout}, dtype=dtype, taps=taps)


# hu2024's self-supervised encoder (a ResNet50 trunk + ECA/CA/AWFF/LAFF), as `tmrjax train
# --export` writes it: a retrieval backbone too, but trained here, never converted.
HU2024 = "hu2024-resnet50"

BACKBONES: dict[str, Architecture] = {
    "resnet50": Architecture("resnet50", resnet.TAPS, resnet.LAYOUTS, _resnet50),
    **{arch: Architecture(arch, vgg.vgg_taps(arch), vgg.LAYOUTS[arch], functools.partial(_vgg, arch))
       for arch in vgg.CONVS_PER_BLOCK},
    **{variant: Architecture(variant, efficientnet_lite.TAPS, (efficientnet_lite.LAYOUT,),
                             functools.partial(_efficientnet_lite, variant))
       for variant in efficientnet_lite.VARIANTS},
    HU2024: Architecture(HU2024, hu2024.TAPS, resnet.LAYOUTS, _hu2024, trained_here=True),
    "ink-thumbnail": Architecture("ink-thumbnail", thumbnail.TAPS, (thumbnail.LAYOUT,), _thumbnail,
                                  has_weights=False),
}
# Architectures whose publishers' checkpoints `tmrjax convert` reads.
ARCHITECTURES = tuple(name for name, a in BACKBONES.items() if not a.trained_here and a.has_weights)


def architecture(arch: str) -> Architecture:
    """The registry entry of `arch`; an unknown name is an error that lists the known ones."""
    if arch not in BACKBONES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {tuple(BACKBONES)}")
    return BACKBONES[arch]


def available_taps(arch: str) -> tuple[str, ...]:
    """Feature taps an architecture can return, in forward order."""
    return architecture(arch).taps


def build_backbone(
    arch: str, layout: str, taps: Sequence[str], dtype: Any = jnp.float32, model: Mapping[str, Any] | None = None
) -> nn.Module:
    """The Flax module for `arch` in weight `layout`, returning `taps` in one forward pass.

    `model`: for an architecture trained here (hu2024) only, the encoder's settings (an
    export's meta.json ``model``); default the full hu2024 model.
    """
    spec = architecture(arch)
    if layout not in spec.layouts:
        raise ValueError(f"{arch} has no weight layout {layout!r}; expected one of {spec.layouts}")
    if not spec.trained_here:
        if model is not None:
            raise ValueError(f"build_backbone: model settings apply to {HU2024} only, not {arch!r}")
        return spec.build(layout, tuple(taps), dtype)
    return spec.build(layout, tuple(taps), dtype, model)


def preprocessing_for(layout: str) -> Preprocessing:
    """The input normalisation the weights of `layout` expect."""
    if layout not in LAYOUT_PREPROCESSING:
        raise ValueError(f"unknown weight layout {layout!r}; expected one of {tuple(LAYOUT_PREPROCESSING)}")
    return PREPROCESSING[LAYOUT_PREPROCESSING[layout]]


__all__ = [
    "ARCHITECTURES",
    "BACKBONES",
    "HU2024",
    "PREPROCESSING",
    "VGG",
    "Architecture",
    "Preprocessing",
    "ResNet50",
    "architecture",
    "available_taps",
    "build_backbone",
    "preprocessing_for",
]
