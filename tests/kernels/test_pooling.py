"""kernels/pooling.py against slow numpy loops over regions and pixels."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tmrjax.kernels import (
    gem,
    l2_normalize,
    mac,
    regional_gem,
    regional_mac,
    regional_smac,
    regional_spoc,
    rmac_regions,
    smac,
    spoc,
)

# Non-square maps, batch sizes 1 and 7.
SHAPES = [(1, 7, 11, 6), (7, 13, 5, 4)]


# ------------------------------------------------------------ slow references


def ref_max(x):
    b, h, w, c = x.shape
    out = np.full((b, c), -np.inf)
    for i in range(h):
        for j in range(w):
            out = np.maximum(out, x[:, i, j, :])
    return out


def ref_sum(x, weights=None):
    b, h, w, c = x.shape
    out = np.zeros((b, c))
    for i in range(h):
        for j in range(w):
            out += (1.0 if weights is None else weights[i, j]) * x[:, i, j, :]
    return out


def ref_center_prior(h, w):
    """Babenko & Lempitsky: sigma = 1/3 of the centre-to-closest-border distance."""
    sigma = min(h, w) / 2 / 3
    weights = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            dy, dx = i + 0.5 - h / 2, j + 0.5 - w / 2
            weights[i, j] = math.exp(-(dy * dy + dx * dx) / (2 * sigma * sigma))
    return weights


def ref_gem(x, p, eps):
    clipped = np.maximum(x, eps) ** p
    return (ref_sum(clipped) / (x.shape[1] * x.shape[2])) ** (1 / p)


def ref_regional(pool, x, boxes):
    """Pool each region with ``pool`` (B, h, w, C) -> (B, C), one region at a time."""
    return np.stack([pool(x[:, y0:y1, x0:x1, :]) for y0, x0, y1, x1 in boxes], axis=1)


def random_map(shape, seed, positive=False):
    x = np.random.default_rng(seed).standard_normal(shape)
    return np.maximum(x, 0.0) if positive else x


def assert_close(got, expected, rtol=1e-5, atol=1e-5):
    assert got.dtype == jnp.float32
    assert got.shape == expected.shape
    np.testing.assert_allclose(np.asarray(got), expected, rtol=rtol, atol=atol)


def check_batched_jit_and_vmap(kernel, reference, positive=False):
    """kernel(x) == reference(x) for each shape, jitted on the batch and vmapped per image."""
    for seed, shape in enumerate(SHAPES):
        x = random_map(shape, seed, positive)
        expected = reference(x)
        x32 = jnp.asarray(x, jnp.float32)
        assert_close(jax.jit(kernel)(x32), expected)
        assert_close(jax.jit(jax.vmap(kernel))(x32), expected)


# ----------------------------------------------------------------- global


def test_mac_matches_pixel_loop_jit_and_vmap():
    check_batched_jit_and_vmap(mac, ref_max)


def test_spoc_is_a_sum_matching_pixel_loop_jit_and_vmap():
    check_batched_jit_and_vmap(spoc, ref_sum)


def test_spoc_center_prior_matches_pixel_loop_jit_and_vmap():
    def reference(x):
        return ref_sum(x, ref_center_prior(x.shape[1], x.shape[2]))

    check_batched_jit_and_vmap(lambda x: spoc(x, center_prior=True), reference)


def test_spoc_center_prior_on_3x3_ones_worked_by_hand():
    # sigma = 1.5 / 3 = 0.5: centre 1, 4 edge cells at distance 1, 4 corners at sqrt(2).
    got = jax.jit(lambda v: spoc(v, center_prior=True))(jnp.ones((3, 3, 1)))
    np.testing.assert_allclose(got, [1 + 4 * math.exp(-2) + 4 * math.exp(-4)], rtol=1e-6)


def test_gem_matches_pixel_loop_jit_and_vmap():
    check_batched_jit_and_vmap(gem, lambda x: ref_gem(x, 3.0, 1e-6), positive=True)
    x = random_map((2, 7, 11, 3), 5, positive=True)
    got = jax.jit(lambda v: gem(v, p=1.7))(jnp.asarray(x, jnp.float32))
    assert_close(got, ref_gem(x, 1.7, 1e-6))


def test_gem_accepts_traced_p():
    x = jnp.asarray(random_map((2, 5, 4, 3), 2, positive=True), jnp.float32)
    got = jax.jit(gem)(x, jnp.float32(2.0))
    assert_close(got, ref_gem(np.asarray(x, np.float64), 2.0, 1e-6))


def test_smac_is_sum_then_max():
    check_batched_jit_and_vmap(smac, lambda x: np.concatenate([ref_sum(x), ref_max(x)], -1))


def test_global_pooling_on_2x2_worked_by_hand():
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]])[:, :, None]  # (2, 2, 1)
    got = jax.jit(lambda v: (mac(v), spoc(v), gem(v, p=1.0), smac(v)))(x)
    for value, expected in zip(got, ([4.0], [10.0], [2.5], [10.0, 4.0])):
        np.testing.assert_allclose(value, expected, rtol=1e-6)


# ----------------------------------------------------------------- regional

REGIONAL = {
    "mac": (regional_mac, ref_max, False),
    "spoc": (regional_spoc, ref_sum, False),
    "gem": (regional_gem, lambda r: ref_gem(r, 3.0, 1e-6), True),
    "smac": (
        regional_smac,
        lambda r: np.concatenate([ref_sum(r), ref_max(r)], axis=-1),
        False,
    ),
}


@pytest.mark.parametrize("name", sorted(REGIONAL))
def test_regional_pooling_matches_loop_over_regions_jit_and_vmap(name):
    kernel, pool, positive = REGIONAL[name]
    for seed, shape in enumerate(SHAPES):
        x = random_map(shape, seed, positive)
        boxes = rmac_regions(shape[1], shape[2], levels=3, include_full_map=True)
        expected = ref_regional(pool, x, boxes)
        x32 = jnp.asarray(x, jnp.float32)
        pooled = jax.jit(lambda v, boxes=boxes: kernel(v, boxes))
        assert_close(pooled(x32), expected)
        assert_close(jax.jit(jax.vmap(pooled))(x32), expected)


def test_regional_mac_with_boxes_worked_by_hand():
    x = jnp.arange(12.0).reshape(3, 4, 1)  # rows [0..3], [4..7], [8..11]
    boxes = np.array([[0, 0, 1, 1], [0, 1, 2, 3], [1, 0, 3, 2], [0, 0, 3, 4]])
    maxima, sums = jax.jit(lambda v: (regional_mac(v, boxes), regional_spoc(v, boxes)))(x)
    np.testing.assert_array_equal(maxima[:, 0], [0.0, 6.0, 9.0, 11.0])
    np.testing.assert_array_equal(sums[:, 0], [0.0, 14.0, 26.0, 66.0])


def test_regional_mac_handles_all_negative_maps():
    x = -1.0 - jnp.asarray(random_map((2, 5, 8, 3), 9, positive=True), jnp.float32)
    boxes = rmac_regions(5, 8, levels=3)
    got = jax.jit(lambda v: regional_mac(v, boxes))(x)
    assert_close(got, ref_regional(ref_max, np.asarray(x, np.float64), boxes))


def test_regional_pooling_of_full_map_equals_global_pooling():
    x = jnp.asarray(random_map((3, 13, 5, 4), 3, positive=True), jnp.float32)
    full = np.array([[0, 0, 13, 5]])
    pairs = ((regional_mac, mac), (regional_spoc, spoc), (regional_gem, gem))

    @jax.jit
    def both(v):
        return [(regional(v, full)[:, 0], global_(v)) for regional, global_ in pairs]

    for regional_value, global_value in both(x):
        np.testing.assert_allclose(regional_value, global_value, rtol=1e-5)


def test_bfloat16_input_accumulates_in_float32():
    x16 = jnp.asarray(random_map((7, 13, 5, 16), 4, positive=True) * 30.0, jnp.bfloat16)
    x = np.asarray(x16.astype(jnp.float32), np.float64)  # the values bfloat16 holds
    boxes = rmac_regions(13, 5, levels=3)

    def ref_smac(r):
        return np.concatenate([ref_sum(r), ref_max(r)], axis=-1)

    @jax.jit
    def pooled(v):
        return {
            "regional_smac": regional_smac(v, boxes),
            "regional_gem": regional_gem(v, boxes),
            "smac": smac(v),
            "spoc_center_prior": spoc(v, center_prior=True),
            "gem": gem(v),
            "l2_normalize": l2_normalize(v[:, 0, 0]),
        }

    got = pooled(x16)
    vectors = x[:, 0, 0]
    expected = {
        "regional_smac": ref_regional(ref_smac, x, boxes),
        "regional_gem": ref_regional(lambda r: ref_gem(r, 3.0, 1e-6), x, boxes),
        "smac": ref_smac(x),
        "spoc_center_prior": ref_sum(x, ref_center_prior(13, 5)),
        "gem": ref_gem(x, 3.0, 1e-6),
        "l2_normalize": vectors / (np.linalg.norm(vectors, axis=-1, keepdims=True) + 1e-6),
    }
    for name in expected:
        assert_close(got[name], expected[name])


def test_regional_mac_on_resnet50_conv4_never_builds_region_by_pixel_tensor():
    # B=64, 20x20x1024 (320x320 input), 30 regions: the masked (B, R, H, W, C) tensor
    # would be 3.1 GB; the separable max needs about one (B, H, Uc, C) buffer.
    b, h, w, c = 64, 20, 20, 1024
    boxes = rmac_regions(h, w, levels=4)
    spec = jax.ShapeDtypeStruct((b, h, w, c), jnp.float32)
    budget = b * len(boxes) * (h + w) * c * 4  # O(B R (H + W) C) bytes
    for kernel in (regional_mac, regional_smac):
        compiled = jax.jit(lambda v, k=kernel: k(v, boxes)).lower(spec).compile()
        stats = compiled.memory_analysis()
        if stats is None:
            pytest.skip("backend reports no memory analysis")
        assert stats.temp_size_in_bytes < budget, (kernel.__name__, stats.temp_size_in_bytes)


def test_l2_normalize_matches_formula_and_keeps_zero_vectors_finite():
    x = random_map((7, 5), 6)

    @jax.jit
    def normalized(v):
        zero = jnp.zeros_like(v)
        grad_at_zero = jax.grad(lambda z: l2_normalize(z).sum())(zero)
        return l2_normalize(v), l2_normalize(v, axis=0), l2_normalize(zero), grad_at_zero

    rows, columns, zero, grad_at_zero = normalized(jnp.asarray(x, jnp.float32))
    assert_close(rows, x / (np.sqrt((x**2).sum(-1, keepdims=True)) + 1e-6))
    assert_close(columns, x / (np.linalg.norm(x, axis=0, keepdims=True) + 1e-6))
    np.testing.assert_array_equal(zero, np.zeros_like(x))
    assert np.all(np.isfinite(grad_at_zero))
