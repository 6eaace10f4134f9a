"""Global and regional pooling of NHWC feature maps: MAC, SPoC, GeM, SMAC and R-* variants.

Every kernel takes ``x`` of shape (..., H, W, C) (any leading batch axes, so it is
also the unbatched kernel under ``jax.vmap``), accumulates in float32 (bfloat16 input
is fine) and returns float32. Regional kernels take static boxes from
``rmac_regions`` and pool all R regions in one op, returning (..., R, C).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import regions

_HIGHEST = jax.lax.Precision.HIGHEST


def _float_dtype(x: jax.Array) -> jnp.dtype:
    """Accumulation and output dtype: at least float32."""
    return jnp.promote_types(x.dtype, jnp.float32)


def _map_size(x: jax.Array, where: str) -> tuple[int, int]:
    if x.ndim < 3:
        raise ValueError(
            f"tmrjax.kernels.pooling.{where}: x must be (..., H, W, C), got shape {x.shape}"
        )
    return x.shape[-3], x.shape[-2]


L2_EPS = 1e-6  # added to every l2 norm before dividing by it


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = L2_EPS) -> jax.Array:
    """``x / (||x||_2 + eps)`` along ``axis`` (cirtorch ``l2n``); a zero vector stays zero.

    The norm is floored at the smallest normal float before the square root so the
    gradient at a zero vector is finite.
    """
    x = jnp.asarray(x)
    x = x.astype(_float_dtype(x))
    squared = jnp.sum(x * x, axis=axis, keepdims=True)
    norm = jnp.sqrt(jnp.maximum(squared, jnp.finfo(x.dtype).tiny))
    return x / (norm + eps)


# --------------------------------------------------------------------------- global


def mac(x: jax.Array) -> jax.Array:
    """Maximum activation of convolutions, tursun2021 Eq. 1: ``f_c = max_{h,w} x_{h,w,c}``.

    (..., H, W, C) -> (..., C).
    """
    _map_size(x, "mac")
    return jnp.max(x, axis=(-3, -2)).astype(_float_dtype(x))


def _center_prior(h: int, w: int) -> np.ndarray:
    """Babenko & Lempitsky (ICCV 2015) centre prior on an ``h x w`` map, (H, W) float32.

    ``exp(-d^2 / (2 sigma^2))`` with d the distance of a cell centre ``(i + 0.5, j + 0.5)``
    to the map centre ``(h / 2, w / 2)`` and sigma one third of the distance from the
    map centre to the closest border, ``min(h, w) / 6``.
    """
    sigma = min(h, w) / 6.0
    dy = np.arange(h) + 0.5 - h / 2.0
    dx = np.arange(w) + 0.5 - w / 2.0
    squared = dy[:, None] ** 2 + dx[None, :] ** 2
    return np.exp(-squared / (2.0 * sigma**2)).astype(np.float32)


def spoc(x: jax.Array, center_prior: bool = False) -> jax.Array:
    """Sum-pooled convolutional features (SPoC, Babenko & Lempitsky 2015).

    ``f_c = sum_{h,w} alpha_{h,w} x_{h,w,c}`` with ``alpha = 1``, or with the Gaussian
    centre prior (sigma = 1/3 of the centre-to-closest-border distance) when
    ``center_prior``. A sum, not cirtorch's mean: tursun2021's SMAC concatenates the
    sum with the max. (..., H, W, C) -> (..., C).
    """
    h, w = _map_size(x, "spoc")
    x = x.astype(_float_dtype(x))
    if center_prior:
        x = x * _center_prior(h, w)[:, :, None]
    return jnp.sum(x, axis=(-3, -2))


def gem(x: jax.Array, p: float | jax.Array = 3.0, eps: float = 1e-6) -> jax.Array:
    """Generalised mean pooling (Radenovic et al. 2018): ``(mean_{h,w} max(x, eps)^p)^(1/p)``.

    ``p`` may be a traced scalar (a learned GeM exponent). (..., H, W, C) -> (..., C).
    """
    _map_size(x, "gem")
    x = jnp.maximum(x.astype(_float_dtype(x)), eps) ** p
    return jnp.mean(x, axis=(-3, -2)) ** (1.0 / p)


def smac(x: jax.Array) -> jax.Array:
    """Sum and max activation of convolutions, tursun2021 Sec. 3 (SMAC).

    ``concat([spoc(x), mac(x)])``: sum first, then max. (..., H, W, C) -> (..., 2C).
    """
    return jnp.concatenate([spoc(x), mac(x)], axis=-1)


# ------------------------------------------------------------------------- regional


def _regional_sum(x: jax.Array, boxes: np.ndarray, where: str) -> jax.Array:
    """Sum of x over each box as one mask matmul: (..., H, W, C) -> (..., R, C)."""
    h, w = _map_size(x, where)
    masks = regions.region_masks(boxes, h, w)
    return jnp.einsum(
        "...hwc,rhw->...rc",
        x,
        jnp.asarray(masks, dtype=x.dtype),  # 0/1 is exact in any float dtype
        precision=_HIGHEST,
        preferred_element_type=_float_dtype(x),
    )


def _box_areas(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes)
    return ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).astype(np.float32)


def _interval_max(values: jax.Array, masks: np.ndarray, axis: int) -> jax.Array:
    """Max of ``values`` over each interval ``masks[u]`` (U, L) along ``axis`` (length L).

    A running max over the L cells of ``axis`` (unrolled, so XLA fuses it into one
    loop): the result replaces that axis by U, and nothing larger is ever formed.
    Each interval must hold at least one cell (empty ones give -inf).
    """
    axis = axis % values.ndim
    lowest = jnp.array(-jnp.inf, dtype=values.dtype)
    masks = jnp.asarray(masks)
    inside_shape = (masks.shape[0],) + (1,) * (values.ndim - axis - 1)

    def step(i, running):
        cells = jax.lax.dynamic_index_in_dim(values, i, axis, keepdims=True)
        inside = jax.lax.dynamic_index_in_dim(masks, i, 1, keepdims=False)
        return jnp.maximum(running, jnp.where(inside.reshape(inside_shape), cells, lowest))

    shape = values.shape[:axis] + (masks.shape[0],) + values.shape[axis + 1 :]
    return jax.lax.fori_loop(
        0, values.shape[axis], step, jnp.full(shape, lowest, values.dtype), unroll=True
    )


def regional_mac(x: jax.Array, boxes: np.ndarray) -> jax.Array:
    """MAC of every box (tursun2021 Eq. 1 per region ``R_i``, the terms of Eq. 2).

    Separable max: the max over each distinct column interval, (..., H, Uc, C), then
    over each distinct row interval, (..., Ur, Uc, C), then one gather of the R
    (row, column) pairs. The masked (..., R, H, W, C) tensor is never formed: peak
    extra memory is (..., H, Uc, C), e.g. 52 MB for B=64, 20x20x1024, levels=4.
    (..., H, W, C), (R, 4) -> (..., R, C).
    """
    h, w = _map_size(x, "regional_mac")
    intervals = regions.region_intervals(boxes, h, w)
    column_max = _interval_max(x, intervals.cols, axis=-2)
    table = _interval_max(column_max, intervals.rows, axis=-3)
    region_max = table[..., intervals.row_index, intervals.col_index, :]
    return region_max.astype(_float_dtype(x))


def regional_spoc(x: jax.Array, boxes: np.ndarray) -> jax.Array:
    """Sum pooling of every box (SPoC per region, no centre prior).

    (..., H, W, C), (R, 4) -> (..., R, C).
    """
    return _regional_sum(x, boxes, "regional_spoc")


def regional_gem(
    x: jax.Array, boxes: np.ndarray, p: float | jax.Array = 3.0, eps: float = 1e-6
) -> jax.Array:
    """GeM of every box: ``(mean_{(h,w) in R_i} max(x, eps)^p)^(1/p)``.

    (..., H, W, C), (R, 4) -> (..., R, C).
    """
    _map_size(x, "regional_gem")
    powered = jnp.maximum(x.astype(_float_dtype(x)), eps) ** p
    sums = _regional_sum(powered, boxes, "regional_gem")
    return (sums / _box_areas(boxes)[:, None]) ** (1.0 / p)


def regional_smac(x: jax.Array, boxes: np.ndarray) -> jax.Array:
    """R-SMAC regional features, tursun2021 Sec. 3: ``concat([sum, max])`` per box.

    (..., H, W, C), (R, 4) -> (..., R, 2C).
    """
    return jnp.concatenate([regional_spoc(x, boxes), regional_mac(x, boxes)], axis=-1)
