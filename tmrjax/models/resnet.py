"""ResNet50 in the two layouts users hold ImageNet weights for.

- ``torchvision`` (ResNet v1.5): stride in the 3x3 conv, convs without bias, BN eps 1e-5.
- ``keras`` (ResNet v1, keras.applications): stride in the first 1x1 conv and the shortcut,
  convs with bias, BN eps 1.001e-5, zero-padded stem.

Module names follow Keras' stage numbering (``conv4_block6`` is torchvision's ``layer3[5]``)
so that the taps read the same in both layouts.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from .preprocessing import LAYOUT_PREPROCESSING, PREPROCESSING

# (tap name, bottleneck width, number of blocks, stride of the first block)
STAGES = (("conv2", 64, 3, 1), ("conv3", 128, 4, 2), ("conv4", 256, 6, 2), ("conv5", 512, 3, 2))
# conv1: stem after ReLU (stride 2); conv2..conv5: stage outputs (strides 4, 8, 16, 32).
TAPS = ("conv1",) + tuple(stage[0] for stage in STAGES)
LAYOUTS = ("torchvision", "keras")


def check_layout_and_taps(
    layout: str, layouts: Sequence[str], taps: Sequence[str], available: Sequence[str]
) -> None:
    """Refuse a weight layout or feature taps the architecture does not have."""
    if layout not in layouts:
        raise ValueError(f"unknown weight layout {layout!r}; expected one of {tuple(layouts)}")
    if not taps:
        raise ValueError(f"at least one feature tap is needed; available: {tuple(available)}")
    unknown = [t for t in taps if t not in available]
    if unknown:
        raise ValueError(f"unknown feature tap(s) {unknown}; available: {tuple(available)}")


class PointwiseConv(nn.Module):
    """A 1x1 convolution (optionally strided) computed as a matmul over channels.

    The same parameters as ``nn.Conv(features, (1, 1), strides, padding="VALID")`` (``kernel``
    (1, 1, C_in, C_out), ``bias``) and the same result up to float32 summation order, but
    XLA:CPU runs a 1x1 convolution through its generic convolution path at about half the
    speed of the equivalent matmul (benchmarks/RESULTS.md); on GPUs both are one GEMM.
    """

    features: int
    strides: int = 1
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (1, 1, x.shape[-1], self.features), self.param_dtype
        )
        bias = None
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
        if self.strides > 1:  # a VALID 1x1 convolution with stride s reads every s-th pixel
            x = x[:, :: self.strides, :: self.strides, :]
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = jnp.einsum("bhwc,cd->bhwd", x, kernel[0, 0])
        return y if bias is None else y + bias


class Bottleneck(nn.Module):
    """Bottleneck residual block (1x1 -> 3x3 -> 1x1, expansion 4)."""

    width: int
    strides: int
    layout: str
    project_shortcut: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        keras = self.layout == "keras"
        conv = functools.partial(nn.Conv, use_bias=keras, dtype=self.dtype)
        pointwise = functools.partial(PointwiseConv, use_bias=keras, dtype=self.dtype)
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1.001e-5 if keras else 1e-5,
            dtype=self.dtype,
        )
        stride_1x1, stride_3x3 = (self.strides, 1) if keras else (1, self.strides)
        s3 = (stride_3x3, stride_3x3)

        y = pointwise(self.width, strides=stride_1x1, name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv(self.width, (3, 3), strides=s3, padding=((1, 1), (1, 1)), name="conv2")(y)
        y = nn.relu(norm(name="bn2")(y))
        y = pointwise(4 * self.width, name="conv3")(y)
        y = norm(name="bn3")(y)
        if self.project_shortcut:
            x = pointwise(4 * self.width, strides=self.strides, name="shortcut_conv")(x)
            x = norm(name="shortcut_bn")(x)
        return nn.relu(x + y)


class ResNet50(nn.Module):
    """ResNet50 returning the requested feature taps; stops at the deepest one.

    Input: RGB images in [0, 255], (B, H, W, 3). Output: {tap: (B, h, w, C)}.
    """

    layout: str = "torchvision"
    taps: Sequence[str] = ("conv4",)
    dtype: Any = jnp.float32
    # ResNet50 is (3, 4, 6, 3) blocks with stem width 64; smaller values give the same
    # architecture family for quick CPU experiments (ImageNet weights fit only the default).
    blocks_per_stage: Sequence[int] = (3, 4, 6, 3)
    width: int = 64

    @nn.compact
    def __call__(self, images: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
        check_layout_and_taps(self.layout, LAYOUTS, self.taps, TAPS)
        keras = self.layout == "keras"
        deepest = max(TAPS.index(t) for t in self.taps)
        out: dict[str, jnp.ndarray] = {}

        x = PREPROCESSING[LAYOUT_PREPROCESSING[self.layout]](images).astype(self.dtype)
        x = nn.Conv(
            self.width, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=keras,
            dtype=self.dtype, name="conv1",
        )(x)
        x = nn.BatchNorm(
            use_running_average=not train, momentum=0.9,
            epsilon=1.001e-5 if keras else 1e-5, dtype=self.dtype, name="bn1",
        )(x)
        x = nn.relu(x)
        if "conv1" in self.taps:
            out["conv1"] = x
        if deepest == 0:
            return out
        # Zero padding (Keras) and -inf padding (torchvision) agree after the ReLU.
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage_index, ((name, width, _, stride), blocks) in enumerate(
            zip(STAGES, self.blocks_per_stage), start=1
        ):
            for block in range(blocks):
                x = Bottleneck(
                    width=width * self.width // 64,
                    strides=stride if block == 0 else 1,
                    layout=self.layout,
                    project_shortcut=block == 0,
                    dtype=self.dtype,
                    name=f"{name}_block{block + 1}",
                )(x, train=train)
            if name in self.taps:
                out[name] = x
            if stage_index == deepest:
                break
        return out
