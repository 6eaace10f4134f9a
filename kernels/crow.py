"""Cross-dimensional weighting and pooling (CRoW, Kalantidis, Mellina & Osindero, ECCV 2016 W).

Feature maps are (..., H, W, C), non-negative (after a ReLU), any float dtype;
results are float32. An all-zero map gives all-zero spatial weights and features.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _float(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim < 3:
        raise ValueError(
            f"tmrjax.kernels.crow: x must be (..., H, W, C), got shape {x.shape}"
        )
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def crow_spatial_weights(x: jax.Array, a: float = 2.0, b: float = 2.0) -> jax.Array:
    """CRoW spatial weights ``S = (S' / ||S'||_a)^(1/b)``, ``S'_{hw} = sum_c x_{hwc}``.

    Kalantidis et al. 2016 Sec. 3.2 (the paper uses a = b = 2). (..., H, W, C) -> (..., H, W).
    """
    summed = jnp.sum(_float(x), axis=-1)
    norm = jnp.sum(summed**a, axis=(-2, -1), keepdims=True) ** (1.0 / a)
    # An all-zero map has S' = 0 and norm 0: dividing by 1 keeps S = 0 instead of NaN.
    return (summed / jnp.where(norm > 0, norm, 1.0)) ** (1.0 / b)


def crow_channel_weights(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """CRoW channel weights ``Omega_k = log((K eps + sum_h Q_h) / (eps + Q_k))``.

    Kalantidis et al. 2016 Sec. 3.3, with ``Q_k`` the fraction of non-zero activations
    of channel k and K the number of channels. (..., H, W, C) -> (..., C).
    """
    nonzero = jnp.mean(_float(x) != 0, axis=(-3, -2), dtype=jnp.float32)
    num_channels = x.shape[-1]
    total = jnp.sum(nonzero, axis=-1, keepdims=True)
    return jnp.log((num_channels * eps + total) / (eps + nonzero))


def crow(x: jax.Array, a: float = 2.0, b: float = 2.0, eps: float = 1e-6) -> jax.Array:
    """CRoW feature: ``f_k = Omega_k sum_{h,w} S_{hw} x_{hwk}`` (before l2 / PCA-whitening).

    Kalantidis et al. 2016 Sec. 3.1-3.3. (..., H, W, C) -> (..., C).
    """
    x = _float(x)
    spatial = crow_spatial_weights(x, a, b)
    weighted = jnp.sum(x * spatial[..., None], axis=(-3, -2))
    return weighted * crow_channel_weights(x, eps)
