"""kernels/crow.py against slow numpy loops of Kalantidis et al. 2016 (CRoW)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from tmrjax.kernels.crow import crow, crow_channel_weights, crow_spatial_weights

SHAPES = [(1, 7, 11, 6), (7, 13, 5, 4)]  # non-square maps, batch sizes 1 and 7


def ref_spatial(x, a=2.0, b=2.0):
    n, h, w, c = x.shape
    summed = np.zeros((n, h, w))
    for i in range(h):
        for j in range(w):
            for k in range(c):
                summed[:, i, j] += x[:, i, j, k]
    weights = np.zeros((n, h, w))
    for m in range(n):
        norm = (summed[m] ** a).sum() ** (1 / a)
        if norm > 0:
            weights[m] = (summed[m] / norm) ** (1 / b)
    return weights


def ref_channel(x, eps=1e-6):
    n, h, w, c = x.shape
    weights = np.zeros((n, c))
    for m in range(n):
        fraction = [np.count_nonzero(x[m, :, :, k]) / (h * w) for k in range(c)]
        for k in range(c):
            weights[m, k] = math.log((c * eps + sum(fraction)) / (eps + fraction[k]))
    return weights


def ref_crow(x):
    spatial = ref_spatial(x)
    n, h, w, c = x.shape
    out = np.zeros((n, c))
    for i in range(h):
        for j in range(w):
            out += spatial[:, i, j, None] * x[:, i, j, :]
    return out * ref_channel(x)


def relu_map(shape, seed):
    return np.maximum(np.random.default_rng(seed).standard_normal(shape), 0.0)


@jax.jit
def all_crow(x):
    return crow_spatial_weights(x), crow_channel_weights(x), crow(x)


def test_crow_matches_pixel_loop_jit_and_vmap():
    for seed, shape in enumerate(SHAPES):
        x = relu_map(shape, seed)
        x[:, :, :, 0] = 0.0  # a dead channel: Q = 0, largest (finite) channel weight
        expected = ref_spatial(x), ref_channel(x), ref_crow(x)
        x32 = jnp.asarray(x, jnp.float32)
        for got in (all_crow(x32), jax.jit(jax.vmap(all_crow))(x32)):
            for value, reference in zip(got, expected):
                assert value.dtype == jnp.float32 and value.shape == reference.shape
                np.testing.assert_allclose(value, reference, rtol=1e-5, atol=1e-5)


def test_crow_spatial_weights_undo_to_channel_sum():
    # S = (S' / ||S'||_2)^(1/2), so S^2 ||S'||_2 gives back S' = sum over channels.
    x = relu_map((7, 13, 5, 4), 3)
    weights, _, _ = all_crow(jnp.asarray(x, jnp.float32))
    summed = x.sum(-1)
    norm = np.sqrt((summed**2).sum(axis=(1, 2), keepdims=True))
    np.testing.assert_allclose(np.asarray(weights) ** 2 * norm, summed, rtol=1e-5, atol=1e-6)


def test_crow_on_1x2_map_worked_by_hand():
    x = jnp.array([[[1.0, 0.0], [0.0, 3.0]]])  # (H=1, W=2, C=2)
    spatial, channel, feature = all_crow(x)
    # S' = [1, 3], ||S'||_2 = sqrt(10); Q = [1/2, 1/2], Omega = log((2e + 1) / (e + 1/2)).
    s = np.sqrt(np.array([1.0, 3.0]) / math.sqrt(10.0))
    omega = math.log((2e-6 + 1.0) / (1e-6 + 0.5))
    np.testing.assert_allclose(spatial, [s], rtol=1e-6)
    np.testing.assert_allclose(channel, [omega, omega], rtol=1e-6)
    np.testing.assert_allclose(feature, [s[0] * omega, 3 * s[1] * omega], rtol=1e-6)


def test_crow_of_all_zero_map_is_zero_not_nan():
    spatial, channel, feature = all_crow(jnp.zeros((2, 5, 4, 3)))
    np.testing.assert_array_equal(spatial, np.zeros((2, 5, 4)))
    np.testing.assert_allclose(channel, np.full((2, 3), math.log(3.0)), rtol=1e-6)
    np.testing.assert_array_equal(feature, np.zeros((2, 3)))


def test_crow_bfloat16_input_accumulates_in_float32():
    x16 = jnp.asarray(relu_map((7, 13, 5, 16), 4) * 30.0, jnp.bfloat16)
    x = np.asarray(x16.astype(jnp.float32), np.float64)
    got = all_crow(x16)
    for value, reference in zip(got, (ref_spatial(x), ref_channel(x), ref_crow(x))):
        assert value.dtype == jnp.float32
        np.testing.assert_allclose(value, reference, rtol=1e-5, atol=1e-5)
