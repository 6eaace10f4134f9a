"""VGG16 and VGG19 (torchvision, keras.applications and the HED edge detector share one structure).

The torchvision and keras layouts differ only in their input normalisation. The ``hed`` layout
is VGG16 as the HED edge detector (Xie & Tu 2015) was trained with it: Caffe's mean, and max
pooling that rounds odd sizes up (Caffe's ceil mode, Keras 'same'), so a 300-pixel input gives
38 x 38 conv4 maps, not 37 x 37. Taps are named as in the papers: ``conv5_3`` is VGG16's last
conv (after ReLU), ``pool5`` the max-pool after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from .preprocessing import LAYOUT_PREPROCESSING, PREPROCESSING
from .resnet import check_layout_and_taps

WIDTHS = (64, 128, 256, 512, 512)
CONVS_PER_BLOCK = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
LAYOUTS = {"vgg16": ("torchvision", "keras", "hed"), "vgg19": ("torchvision", "keras")}
# Max-pool padding per layout: 'SAME' rounds odd sizes up, as Caffe (and so HED) pools.
POOL_PADDING = {"torchvision": "VALID", "keras": "VALID", "hed": "SAME"}


def vgg_taps(arch: str) -> tuple[str, ...]:
    """All tap names of a VGG, in forward order: conv1_1, conv1_2, pool1, ..., pool5."""
    taps = []
    for block, n in enumerate(CONVS_PER_BLOCK[arch], start=1):
        taps += [f"conv{block}_{i}" for i in range(1, n + 1)] + [f"pool{block}"]
    return tuple(taps)


class VGG(nn.Module):
    """VGG16/VGG19 convolutional trunk (no classifier); stops at the deepest tap.

    Input: RGB images in [0, 255], (B, H, W, 3). Output: {tap: (B, h, w, C)}.
    """

    arch: str = "vgg16"
    layout: str = "torchvision"
    taps: Sequence[str] = ("conv5_3",)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
        if self.arch not in CONVS_PER_BLOCK:
            raise ValueError(f"unknown VGG {self.arch!r}; expected one of {tuple(CONVS_PER_BLOCK)}")
        order = vgg_taps(self.arch)
        check_layout_and_taps(self.layout, LAYOUTS[self.arch], self.taps, order)
        deepest = order[max(order.index(t) for t in self.taps)]
        out: dict[str, jnp.ndarray] = {}

        x = PREPROCESSING[LAYOUT_PREPROCESSING[self.layout]](images).astype(self.dtype)
        for block, (n, width) in enumerate(zip(CONVS_PER_BLOCK[self.arch], WIDTHS), start=1):
            for i in range(1, n + 1):
                name = f"conv{block}_{i}"
                x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name=name)(x)
                x = nn.relu(x)
                if name in self.taps:
                    out[name] = x
                if name == deepest:
                    return out
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding=POOL_PADDING[self.layout])
            name = f"pool{block}"
            if name in self.taps:
                out[name] = x
            if name == deepest:
                return out
        return out
