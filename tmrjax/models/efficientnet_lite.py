"""EfficientNet-Lite0/1/2 (Tan & Le 2019; the Lite variant of the TensorFlow TPU models).

The Lite variant is EfficientNet without squeeze-excitation, with ReLU6 activations and the
32-channel stem and 1280-channel head kept fixed when the width grows. The layers are those of
the ImageNet checkpoints tmrjax ships (EfficientNet-PyTorch key names, trained in TensorFlow):
TF 'same' padding (asymmetric for stride 2), BatchNorm epsilon 1e-3, convolutions without bias,
inputs scaled to [-1, 1] (mean = std = 0.5 on [0, 1]).

Taps, in forward order: ``stem`` (stride 2), ``stage1`` ... ``stage7`` (the last block of each
stage: strides 2, 4, 8, 16, 16, 32, 32), ``head`` (the 1x1 conv to 1280 channels after ReLU6,
stride 32). Module names follow the checkpoints' flat block numbering: ``block{i}`` is
EfficientNet-PyTorch's ``_blocks.{i}``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from .preprocessing import LAYOUT_PREPROCESSING, PREPROCESSING
from .resnet import PointwiseConv

LAYOUT = "efficientnet-lite"
# EfficientNet-B0's stages: (kernel, stride, expansion, output channels, repeats).
BASE_STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
               (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
# name: (width multiplier, depth multiplier, the input size it was trained at)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
}
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
TAPS = ("stem",) + tuple(f"stage{i}" for i in range(1, len(BASE_STAGES) + 1)) + ("head",)
BN_EPSILON = 1e-3


def round_channels(channels: float, divisor: int = 8) -> int:
    """Channels scaled by the width multiplier, rounded to a multiple of 8 and never below 90%."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def stages(variant: str) -> tuple[tuple[int, int, int, int, int], ...]:
    """The variant's (kernel, stride, expansion, channels, repeats) per stage.

    Depth scales every stage but the first and the last (Lite keeps them), rounding up.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; expected one of {tuple(VARIANTS)}")
    width, depth, _ = VARIANTS[variant]
    out = []
    for i, (kernel, stride, expand, channels, repeats) in enumerate(BASE_STAGES):
        fixed = i in (0, len(BASE_STAGES) - 1)
        out.append((kernel, stride, expand, round_channels(channels * width),
                    repeats if fixed else math.ceil(repeats * depth)))
    return tuple(out)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'same' padding of one axis: the output has ceil(size / stride) positions, and an odd
    total pad puts the extra row after (stride 2 on an even size pads (k - 2) // 2, k // 2)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """k x k depthwise convolution with TF 'same' padding, as a sum of k*k shifted products.

    (B, H, W, C), kernel (k, k, 1, C) -> (B, ceil(H/s), ceil(W/s), C). The same result as
    ``lax.conv_general_dilated(..., feature_group_count=C)`` up to float32 summation order, but
    XLA fuses the k*k multiply-adds into one loop, where XLA:CPU runs a grouped convolution 4-25x
    slower (benchmarks/RESULTS.md, "Depthwise convolution").
    """
    k = kernel.shape[0]
    (top, bottom), (left, right) = (same_padding(n, k, stride) for n in x.shape[1:3])
    out_h, out_w = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
    padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out = None
    for i in range(k):
        for j in range(k):
            window = padded[:, i : i + (out_h - 1) * stride + 1 : stride, j : j + (out_w - 1) * stride + 1 : stride]
            term = window * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


class DepthwiseConv(nn.Module):
    """A k x k depthwise convolution with TF 'same' padding; kernel (k, k, 1, C) as Flax stores it."""

    kernel_size: int
    strides: int = 1
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (self.kernel_size, self.kernel_size, 1, x.shape[-1]), jnp.float32)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        return depthwise_conv(x, kernel, self.strides)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation: [1x1 expand] -> kxk depthwise -> 1x1 project."""

    kernel_size: int
    strides: int
    expand: int
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.99,
                                 epsilon=BN_EPSILON, dtype=self.dtype)
        y = x
        if self.expand != 1:
            y = PointwiseConv(x.shape[-1] * self.expand, use_bias=False, dtype=self.dtype, name="expand_conv")(y)
            y = nn.relu6(norm(name="expand_bn")(y))
        y = DepthwiseConv(self.kernel_size, self.strides, dtype=self.dtype, name="depthwise_conv")(y)
        y = nn.relu6(norm(name="depthwise_bn")(y))
        y = PointwiseConv(self.features, use_bias=False, dtype=self.dtype, name="project_conv")(y)
        y = norm(name="project_bn")(y)
        if self.strides == 1 and x.shape[-1] == self.features:
            y = y + x
        return y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0/1/2 returning the requested taps; stops at the deepest one.

    Input: RGB images in [0, 255], (B, H, W, 3). Output: {tap: (B, h, w, C)}.
    """

    variant: str = "efficientnet_lite0"
    layout: str = LAYOUT
    taps: Sequence[str] = ("head",)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
        if self.layout != LAYOUT:
            raise ValueError(f"EfficientNet-Lite weights come in layout {LAYOUT!r}, not {self.layout!r}")
        unknown = [t for t in self.taps if t not in TAPS]
        if not self.taps or unknown:
            raise ValueError(f"unknown or no feature taps {list(self.taps)}; available: {TAPS}")
        deepest = max(TAPS.index(t) for t in self.taps)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.99,
                                 epsilon=BN_EPSILON, dtype=self.dtype)
        out: dict[str, jnp.ndarray] = {}

        def keep(name: str, value: jnp.ndarray) -> bool:
            if name in self.taps:
                out[name] = value
            return TAPS.index(name) == deepest

        x = PREPROCESSING[LAYOUT_PREPROCESSING[self.layout]](images).astype(self.dtype)
        x = nn.Conv(STEM_CHANNELS, (3, 3), strides=(2, 2), padding="SAME", use_bias=False,
                    dtype=self.dtype, name="stem_conv")(x)
        x = nn.relu6(norm(name="stem_bn")(x))
        if keep("stem", x):
            return out
        block = 0
        for stage, (kernel, stride, expand, channels, repeats) in enumerate(stages(self.variant), start=1):
            for i in range(repeats):
                x = MBConv(kernel, stride if i == 0 else 1, expand, channels, dtype=self.dtype,
                           name=f"block{block}")(x, train=train)
                block += 1
            if keep(f"stage{stage}", x):
                return out
        x = PointwiseConv(HEAD_CHANNELS, use_bias=False, dtype=self.dtype, name="head_conv")(x)
        x = nn.relu6(norm(name="head_bn")(x))
        keep("head", x)
        return out
