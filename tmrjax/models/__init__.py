"""Flax backbones with named feature taps, and the registry that builds them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from .preprocessing import LAYOUT_PREPROCESSING, PREPROCESSING, Preprocessing
from .resnet import LAYOUTS, ResNet50
from .resnet import TAPS as RESNET50_TAPS
from .vgg import VGG, vgg_taps

# Architectures whose ImageNet checkpoints `tmrjax convert` reads.
ARCHITECTURES = ("resnet50", "vgg16", "vgg19")
# hu2024's self-supervised encoder (a ResNet50 trunk + ECA/CA/AWFF/LAFF), as `tmrjax train
# --export` writes it: a retrieval backbone too, but trained here, never converted.
HU2024 = "hu2024-resnet50"
BACKBONES = ARCHITECTURES + (HU2024,)


def available_taps(arch: str) -> tuple[str, ...]:
    """Feature taps an architecture can return, in forward order."""
    if arch == "resnet50":
        return RESNET50_TAPS
    if arch in ("vgg16", "vgg19"):
        return vgg_taps(arch)
    if arch == HU2024:
        from .hu2024 import TAPS  # imported here: hu2024 uses tmrjax.weights, which imports this module

        return TAPS
    raise ValueError(f"unknown architecture {arch!r}; expected one of {BACKBONES}")


def build_backbone(
    arch: str, layout: str, taps: Sequence[str], dtype: Any = jnp.float32, model: Mapping[str, Any] | None = None
) -> nn.Module:
    """The Flax module for `arch` in weight `layout`, returning `taps` in one forward pass.

    `model`: for HU2024 only, the encoder's settings (an export's meta.json ``model``);
    default the full hu2024 model.
    """
    available_taps(arch)  # validates arch
    if model is not None and arch != HU2024:
        raise ValueError(f"build_backbone: model settings apply to {HU2024} only, not {arch!r}")
    if arch == HU2024:
        from .hu2024 import encoder_from_settings

        return encoder_from_settings({**(model or {}), "layout": layout}, dtype=dtype, taps=taps)
    if arch == "resnet50":
        return ResNet50(layout=layout, taps=tuple(taps), dtype=dtype)
    return VGG(arch=arch, layout=layout, taps=tuple(taps), dtype=dtype)


def preprocessing_for(layout: str) -> Preprocessing:
    """The input normalisation the weights of `layout` expect."""
    if layout not in LAYOUT_PREPROCESSING:
        raise ValueError(f"unknown weight layout {layout!r}; expected one of {LAYOUTS}")
    return PREPROCESSING[LAYOUT_PREPROCESSING[layout]]


__all__ = [
    "ARCHITECTURES",
    "BACKBONES",
    "HU2024",
    "LAYOUTS",
    "PREPROCESSING",
    "VGG",
    "Preprocessing",
    "ResNet50",
    "available_taps",
    "build_backbone",
    "preprocessing_for",
]
