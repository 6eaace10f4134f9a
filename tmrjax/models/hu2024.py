"""The hu2024 encoder: ResNet50 + ECA + Coordinate Attention + AWFF + LAFF (+ MoCo v2 head).

Hu & Li 2024, "A Trademark Retrieval Method Based on Self-Supervised Learning", Sec. 3.5, Fig. 2:

- ``ECA`` after each ResNet50 stage (Wang et al. 2020; Eq. 7 gives its kernel size), inline:
  the re-weighted map is what the next stage sees.
- ``CoordinateAttention`` at the end of the backbone (Hou et al. 2021; Eq. 8-10).
- ``AWFF`` (Eq. 11) over groups of three adjacent maps of the sequence
  ``[conv2, conv3, conv4, conv5, end]`` (``end`` = the CA output, or conv5 when CA is off):
  ``(conv2, conv3, conv4) -> 256``, ``(conv3, conv4, conv5) -> 512`` and
  ``(conv4, conv5, end) -> 1024`` channels. The paper says "we input the output features of the
  four stages ... in groups of three adjacent features in sequence, setting the output feature
  channel numbers to 256, 512, and 1024", and the fusion network "receives output features from
  ECA at various stages and the CA module at the end of the backbone network": four stage maps
  plus the CA output give exactly three windows of three, and each window's output width is
  the channel count of its reference (largest) map.
- ``LAFF`` (Hu et al. 2022) with d = 512 over the three average-pooled AWFF outputs: the
  retrieval feature (512-d; PCA-whitened to 256-d downstream).
- MoCo v2 projection head (Linear-ReLU-Linear to 128-d) for training only; "we ... remove the
  Projection Head, which is unnecessary for the evaluation phase".

With every switch off the encoder is the plain ResNet50 + global average pooling of conv5 (the
"SSL" row of Fig. 6). The trunk is ``params["backbone"]`` / ``batch_stats["backbone"]`` with the
exact paths of :class:`tmrjax.models.ResNet50`, so converted ImageNet weights go in with
:func:`tmrjax.weights.init_from_backbone`; the new modules sit beside it (``eca_conv2`` ...,
``coordinate_attention``, ``awff_256`` ..., ``laff``, ``projection_head``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .resnet import STAGES, Bottleneck, ResNet50

# Output channels of the three AWFF blocks (Sec. 3.5) and LAFF's hidden size d.
AWFF_CHANNELS = (256, 512, 1024)
LAFF_DIM = 512
BACKBONE = "backbone"
# What the encoder serves as a retrieval backbone (``Hu2024Encoder(taps=...)``): the trunk's stage
# maps (after ECA, when on: what the next stage sees) and the retrieval feature as a 1 x 1 map.
TAPS = ("conv2", "conv3", "conv4", "conv5", "feature")


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA's adaptive 1-D kernel size, hu2024 Eq. 7: ``k = |log2(C)/gamma + b/gamma|_odd``.

    The nearest odd number, ties (``t`` an even integer) rounded up, which is ECA-Net's own
    rule (floor, then +1 if even): 64 -> 3, 128 -> 5, 256/512/1024 -> 5, 2048 -> 7.
    """
    if not isinstance(channels, (int, np.integer)) or channels < 1:
        raise ValueError(f"eca_kernel_size: channels must be a positive int, got {channels!r}")
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


def global_average_pool(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, C) mean over H and W, accumulated and returned in float32."""
    return jnp.mean(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axis=(1, 2))


class ECA(nn.Module):
    """Efficient Channel Attention (hu2024 Fig. 3, Eq. 7): ``x * sigmoid(conv1d_k(GAP(x)))``.

    The 1-D convolution (no bias, zero padding) runs along the channel axis of the pooled
    vector; k comes from the channel count. (B, H, W, C) -> (B, H, W, C).
    """

    gamma: int = 2
    b: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = eca_kernel_size(x.shape[-1], self.gamma, self.b)
        y = global_average_pool(x)[..., None]  # (B, C, 1): channels as the 1-D axis
        y = nn.Conv(1, (k,), padding=(((k - 1) // 2, (k - 1) // 2),), use_bias=False,
                    dtype=self.dtype, name="conv")(y)
        weights = nn.sigmoid(y[..., 0])  # (B, C)
        return x * weights[:, None, None, :].astype(x.dtype)


class CoordinateAttention(nn.Module):
    """Coordinate Attention (Hou et al. 2021; hu2024 Eq. 8-10). (B, H, W, C) -> (B, H, W, C).

    ``z_h`` averages over W (one value per row), ``z_w`` over H; both are concatenated along
    the spatial axis, squeezed by a shared 1x1 conv to ``max(8, C // reduction)`` channels +
    BatchNorm + h-swish (Hou et al.'s activation), split, and expanded back to C by two 1x1
    convs + sigmoid: ``Y = X * a_h * a_w``. ``conv1`` keeps its bias before BatchNorm as in the
    authors' code (houqb/CoordAttention): BN cancels it, so its gradient is zero up to rounding.
    """

    reduction: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        h, c = x.shape[1], x.shape[3]
        mip = max(8, c // self.reduction)
        z_h = jnp.mean(x, axis=2)  # (B, H, C)  Pool_h: C x H x 1
        z_w = jnp.mean(x, axis=1)  # (B, W, C)  Pool_w: C x 1 x W
        y = jnp.concatenate([z_h, z_w], axis=1)  # (B, H + W, C)
        y = nn.Conv(mip, (1,), dtype=self.dtype, name="conv1")(y)
        y = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         dtype=self.dtype, name="bn1")(y)
        y = nn.hard_swish(y)
        y_h, y_w = y[:, :h], y[:, h:]
        a_h = nn.sigmoid(nn.Conv(c, (1,), dtype=self.dtype, name="conv_h")(y_h))  # (B, H, C)
        a_w = nn.sigmoid(nn.Conv(c, (1,), dtype=self.dtype, name="conv_w")(y_w))  # (B, W, C)
        return x * a_h[:, :, None, :].astype(x.dtype) * a_w[:, None, :, :].astype(x.dtype)


class AWFF(nn.Module):
    """Adaptive Weighted Feature Fusion, hu2024 Eq. 11: ``O = sum_i softmax(p)_i f'_i``.

    ``maps[0]`` (f1, the largest) is the reference; every map goes through a 1x1 conv to
    ``out_channels``, is resized to f1's size (bilinear, half-pixel centres: PyTorch's
    ``align_corners=False``), then BatchNorm + ReLU. The conv runs before the resize, which
    equals the paper's resize-then-conv exactly (both linear, interpolation weights sum to 1)
    at a fraction of the cost; BN sees the resized map as in the paper (and cancels the convs'
    biases, which the resize preserves, as in CA above).
    [(B, H_i, W_i, C_i)] -> (B, H_1, W_1, out_channels).
    """

    out_channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, maps: Sequence[jax.Array], train: bool = False) -> jax.Array:
        batch, height, width = maps[0].shape[:3]
        for i, m in enumerate(maps):
            if m.shape[1] > height or m.shape[2] > width:
                raise ValueError(
                    f"AWFF: map {i} is {m.shape[1]}x{m.shape[2]}, larger than the reference "
                    f"map 0 ({height}x{width}); maps must be ordered from the largest"
                )
        p = self.param("p", nn.initializers.zeros, (len(maps),), jnp.float32)
        weights = jax.nn.softmax(p).astype(self.dtype)
        out = None
        for i, m in enumerate(maps):
            y = nn.Conv(self.out_channels, (1, 1), dtype=self.dtype, name=f"conv{i + 1}")(m)
            if y.shape[1:3] != (height, width):
                y = jax.image.resize(y, (batch, height, width, self.out_channels), "bilinear")
            y = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             dtype=self.dtype, name=f"bn{i + 1}")(y)
            y = weights[i] * nn.relu(y)
            out = y if out is None else out + y
        return out


class LAFF(nn.Module):
    """Lightweight Attentional Feature Fusion (Hu et al. 2022; hu2024 Fig. 5). [(B, d_i)] -> (B, d).

    ``f'_i = tanh(W_i f_i + b_i)`` (d-dim each), ``a = softmax_i(w^T f'_i)`` over the k inputs,
    output ``sum_i a_i f'_i``: LAFF's convex combination, so the fused vector is d-dim. The
    attention linear has no bias (a bias shared by the k logits cancels in the softmax).
    """

    d: int = LAFF_DIM
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> jax.Array:
        projected = jnp.stack(
            [jnp.tanh(nn.Dense(self.d, dtype=self.dtype, name=f"linear{i + 1}")(f))
             for i, f in enumerate(features)],
            axis=1,
        )  # (B, k, d)
        logits = nn.Dense(1, use_bias=False, dtype=self.dtype, name="attention")(projected)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=1).astype(projected.dtype)
        return jnp.sum(weights * projected, axis=1)


class ProjectionHead(nn.Module):
    """MoCo v2 projection head: Linear(hidden) - ReLU - Linear(out). (B, D) -> (B, out)."""

    hidden_dim: int
    out_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Dense(self.hidden_dim, dtype=self.dtype, name="fc1")(x))
        return nn.Dense(self.out_dim, dtype=self.dtype, name="fc2")(x)


class ResNet50Trunk(nn.Module):
    """ResNet50 run stage by stage, with :class:`ResNet50`'s exact variable paths.

    The stem is the lead's ``ResNet50`` cut at its ``conv1`` tap (preprocessing included),
    sharing this module's scope so its ``conv1``/``bn1`` sit beside ``conv2_block1`` ... .
    """

    layout: str = "torchvision"
    dtype: Any = jnp.float32
    blocks_per_stage: Sequence[int] = (3, 4, 6, 3)  # ResNet50; smaller for CPU experiments
    width: int = 64

    def setup(self) -> None:
        self.stem_net = ResNet50(
            layout=self.layout, taps=("conv1",), dtype=self.dtype,
            blocks_per_stage=self.blocks_per_stage, width=self.width,
        )
        nn.share_scope(self, self.stem_net)
        for (name, width, _, stride), blocks in zip(STAGES, self.blocks_per_stage):
            for block in range(blocks):
                setattr(self, f"{name}_block{block + 1}", Bottleneck(
                    width=width * self.width // 64,
                    strides=stride if block == 0 else 1,
                    layout=self.layout,
                    project_shortcut=block == 0,
                    dtype=self.dtype,
                ))

    def stem(self, images: jax.Array, train: bool = False) -> jax.Array:
        """RGB [0, 255] images -> the stride-4 input of conv2 (after the 3x3/2 max pool)."""
        x = self.stem_net(images, train=train)["conv1"]
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    def stage(self, index: int, x: jax.Array, train: bool = False) -> jax.Array:
        """Stage ``index`` (0 = conv2 ... 3 = conv5)."""
        name = STAGES[index][0]
        for block in range(self.blocks_per_stage[index]):
            x = getattr(self, f"{name}_block{block + 1}")(x, train=train)
        return x


class Hu2024Encoder(nn.Module):
    """hu2024's encoder with the switches of its ablation (Fig. 6); defaults = the full model.

    ``__call__(images, train, project)``: RGB [0, 255] images (B, H, W, 3) -> the retrieval
    feature (B, feature_dim) float32; with ``project=True``, ``(feature, projection)`` where
    the projection is (B, projection_dim) float32. Initialise with ``project=True`` so the head
    has parameters. Feature: GAP of the end map (2048) without AWFF; the three pooled AWFF
    outputs concatenated (1792) with AWFF but not LAFF; LAFF's d = 512 with both.
    """

    eca: bool = True
    coordinate_attention: bool = True
    awff: bool = True
    laff: bool = True
    projection_dim: int = 128  # 0: no projection head
    layout: str = "torchvision"
    dtype: Any = jnp.float32
    # ResNet50 trunk by default; a narrower/shallower member of the family scales the AWFF
    # channels and LAFF's d by width / 64 (for CPU experiments; ImageNet weights need the default).
    blocks_per_stage: Sequence[int] = (3, 4, 6, 3)
    width: int = 64
    # Retrieval-backbone mode (``tmrjax.models.build_backbone``): when set, ``__call__`` returns
    # {tap: (B, h, w, C)} for these TAPS instead, "feature" as (B, 1, 1, feature_dim), and runs
    # no further than the deepest one.
    taps: Sequence[str] = ()

    @property
    def awff_channels(self) -> tuple[int, ...]:
        return tuple(c * self.width // 64 for c in AWFF_CHANNELS)

    @property
    def laff_dim(self) -> int:
        return LAFF_DIM * self.width // 64

    def _check_config(self) -> None:
        if self.laff and not self.awff:
            raise ValueError(
                "Hu2024Encoder: laff=True needs awff=True (LAFF fuses the AWFF branches, "
                "hu2024 Sec. 3.5)"
            )
        if self.projection_dim < 0:
            raise ValueError(f"Hu2024Encoder: projection_dim must be >= 0, got {self.projection_dim}")

    @property
    def feature_dim(self) -> int:
        """Length of the retrieval feature (before the projection head)."""
        self._check_config()
        if self.laff:
            return self.laff_dim
        if self.awff:
            return sum(self.awff_channels)
        return 4 * STAGES[-1][1] * self.width // 64

    @nn.compact
    def __call__(
        self, images: jax.Array, train: bool = False, project: bool = False
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        self._check_config()
        if project and not self.projection_dim:
            raise ValueError("Hu2024Encoder: project=True but projection_dim=0 (no head)")
        unknown = [t for t in self.taps if t not in TAPS]
        if unknown:
            raise ValueError(f"Hu2024Encoder: unknown taps {unknown}; expected some of {TAPS}")
        if self.taps and project:
            raise ValueError("Hu2024Encoder: taps (retrieval backbone) and project=True exclude each other")
        deepest = max((TAPS.index(t) for t in self.taps), default=len(TAPS) - 1)
        trunk = ResNet50Trunk(
            layout=self.layout, dtype=self.dtype, blocks_per_stage=tuple(self.blocks_per_stage),
            width=self.width, name=BACKBONE,
        )
        x = trunk.stem(images, train=train)
        maps = []
        for index, (name, *_) in enumerate(STAGES):
            x = trunk.stage(index, x, train=train)
            if self.eca:
                x = ECA(dtype=self.dtype, name=f"eca_{name}")(x)
            maps.append(x)
            if index == deepest:
                return {t: maps[TAPS.index(t)] for t in self.taps}
        end = x
        if self.coordinate_attention:
            end = CoordinateAttention(dtype=self.dtype, name="coordinate_attention")(x, train=train)

        if self.awff:
            sequence = maps + [end]
            vectors = [
                global_average_pool(
                    AWFF(channels, dtype=self.dtype, name=f"awff_{channels}")(
                        sequence[i:i + 3], train=train)
                )
                for i, channels in enumerate(self.awff_channels)
            ]
            if self.laff:
                feature = LAFF(self.laff_dim, dtype=self.dtype, name="laff")(vectors)
            else:
                feature = jnp.concatenate(vectors, axis=-1)
        else:
            feature = global_average_pool(end)
        feature = feature.astype(jnp.float32)
        if self.taps:
            return {t: feature[:, None, None, :] if t == "feature" else maps[TAPS.index(t)] for t in self.taps}
        if not project:
            return feature
        head = ProjectionHead(self.feature_dim, self.projection_dim, dtype=self.dtype,
                              name="projection_head")
        return feature, head(feature).astype(jnp.float32)


# The settings a training config's ``model`` section (and an exported encoder's meta.json) holds.
SETTINGS = ("eca", "coordinate_attention", "awff", "laff", "projection_dim", "layout", "blocks_per_stage", "width")


def encoder_from_settings(model: Mapping[str, Any], dtype: Any = None, taps: Sequence[str] = ()) -> Hu2024Encoder:
    """The encoder a config's ``model`` section (or an export's meta) describes.

    ``dtype``: the compute dtype; default ``model["dtype"]`` ("bfloat16" or "float32").
    Settings missing from ``model`` take the full hu2024 model's values.
    """
    unknown = sorted(set(model) - set(SETTINGS) - {"dtype"})
    if unknown:
        raise ValueError(f"Hu2024Encoder settings: unknown fields {unknown}; expected some of {SETTINGS + ('dtype',)}")
    if dtype is None:
        dtype = jnp.bfloat16 if model.get("dtype") == "bfloat16" else jnp.float32
    fields = {k: model[k] for k in SETTINGS if k in model}
    if "blocks_per_stage" in fields:
        fields["blocks_per_stage"] = tuple(fields["blocks_per_stage"])
    return Hu2024Encoder(**fields, dtype=dtype, taps=tuple(taps))


def feature_dim(encoder: Hu2024Encoder, size: int) -> int:
    """Length of ``encoder``'s retrieval feature for size x size images (traced, not computed)."""
    images = jnp.zeros((1, size, size, 3))

    def feature(images):
        variables = encoder.init(jax.random.key(0), images, train=False, project=False)
        return encoder.apply(variables, images, train=False, project=False)

    return int(jax.eval_shape(feature, images).shape[-1])

