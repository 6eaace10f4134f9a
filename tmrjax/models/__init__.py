"""Flax backbones with named feature taps, and the registry that builds them."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from .preprocessing import LAYOUT_PREPROCESSING, PREPROCESSING, Preprocessing
from .resnet import LAYOUTS, ResNet50
from .resnet import TAPS as RESNET50_TAPS
from .vgg import VGG, vgg_taps

ARCHITECTURES = ("resnet50", "vgg16", "vgg19")


def available_taps(arch: str) -> tuple[str, ...]:
    """Feature taps an architecture can return, in forward order."""
    if arch == "resnet50":
        return RESNET50_TAPS
    if arch in ("vgg16", "vgg19"):
        return vgg_taps(arch)
    raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")


def build_backbone(
    arch: str, layout: str, taps: Sequence[str], dtype: Any = jnp.float32
) -> nn.Module:
    """The Flax module for `arch` in weight `layout`, returning `taps` in one forward pass."""
    available_taps(arch)  # validates arch
    if arch == "resnet50":
        return ResNet50(layout=layout, taps=tuple(taps), dtype=dtype)
    return VGG(arch=arch, layout=layout, taps=tuple(taps), dtype=dtype)


def preprocessing_for(layout: str) -> Preprocessing:
    """The input normalisation the weights of `layout` expect."""
    if layout not in LAYOUT_PREPROCESSING:
        raise ValueError(f"unknown weight layout {layout!r}; expected one of {LAYOUTS}")
    return PREPROCESSING[LAYOUT_PREPROCESSING[layout]]


__all__ = [
    "ARCHITECTURES", "LAYOUTS", "PREPROCESSING", "Preprocessing", "ResNet50", "VGG",
    "available_taps", "build_backbone", "preprocessing_for",
]
