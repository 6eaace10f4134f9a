"""kernels/aggregation.py: log-covariance regional pooling (jeong2017 Eq. 5) against numpy and scipy."""

import jax
import numpy as np
import pytest
import scipy.linalg
from tmrjax.kernels.aggregation import (
    _log_grams_batched,
    _log_grams_by_size,
    first_order_pool,
    log_cov_pool,
    reduce_local,
    region_sizes,
    spatial_weights,
    spd_log,
    vec_upper,
)
from tmrjax.kernels.crow import crow_channel_weights


def _spd(rng, k, rank=None):
    a = rng.normal(size=(k, rank or k))
    return a @ a.T / (rank or k) + (0 if rank else 0.1) * np.eye(k)


def _reference(local, alpha, masks, floor=1e-4):
    """A slow float64 loop written from Eq. 5: G, log with eigenvalues floored at floor * the largest
    (at least the smallest normal float32), upper triangle, l2."""
    out = np.zeros(local.shape[:-3] + (len(masks), local.shape[-1] * (local.shape[-1] + 1) // 2))
    for b in np.ndindex(local.shape[:-3]):
        for m, mask in enumerate(masks):
            weights = alpha[b] * mask
            gram = sum(weights[y, x] * np.outer(local[b][y, x], local[b][y, x])
                       for y in range(mask.shape[0]) for x in range(mask.shape[1]))
            gram = gram / max(weights.sum(), 1e-12)
            values, vectors = np.linalg.eigh(gram)
            lowest = max(floor * values.max(), np.finfo(np.float32).tiny)
            log = vectors @ np.diag(np.log(np.maximum(values, lowest))) @ vectors.T
            rows, cols = np.triu_indices(len(log))
            vec = log[rows, cols] * np.where(rows == cols, 1.0, np.sqrt(2.0))
            out[b + (m,)] = vec / np.linalg.norm(vec)
    return out


def test_spd_log_matches_scipy_logm():
    rng = np.random.default_rng(0)
    matrices = np.stack([_spd(rng, 6) for _ in range(3)]).astype(np.float32)
    ours = np.asarray(spd_log(matrices))
    for m, mine in zip(matrices, ours):
        np.testing.assert_allclose(mine, scipy.linalg.logm(m.astype(np.float64)).real, atol=2e-4)


def test_vec_upper_keeps_the_frobenius_norm_and_the_inner_product():
    rng = np.random.default_rng(1)
    a, b = _spd(rng, 5), _spd(rng, 5)
    va, vb = np.asarray(vec_upper(a.astype(np.float32))), np.asarray(vec_upper(b.astype(np.float32)))
    assert va.shape == (15,)
    np.testing.assert_allclose(np.linalg.norm(va), np.linalg.norm(a), rtol=1e-5)
    np.testing.assert_allclose(va @ vb, np.sum(a * b), rtol=1e-5)  # <vec A, vec B> = <A, B>_F


def test_log_cov_pool_matches_the_equation_batched_over_images_and_regions():
    rng = np.random.default_rng(2)
    local = rng.normal(size=(2, 5, 6, 4)).astype(np.float32)
    alpha = rng.uniform(0.1, 1.0, size=(2, 5, 6)).astype(np.float32)
    masks = np.zeros((3, 5, 6), bool)
    masks[0] = True
    masks[1, :3, :4] = True
    masks[2, 2:, 3:] = True
    ours = np.asarray(jax.jit(log_cov_pool)(local, alpha, masks))
    assert ours.shape == (2, 3, 10) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, _reference(local.astype(np.float64), alpha, masks), atol=1e-4)


def test_per_image_masks_and_vmap_agree():
    rng = np.random.default_rng(3)
    local = rng.normal(size=(3, 4, 4, 3)).astype(np.float32)
    alpha = np.ones((3, 4, 4), np.float32)
    masks = rng.uniform(size=(3, 2, 4, 4)) > 0.4
    batched = np.asarray(log_cov_pool(local, alpha, masks))
    mapped = np.asarray(jax.vmap(log_cov_pool)(local, alpha, masks))
    np.testing.assert_allclose(batched, mapped, atol=1e-5)


@pytest.mark.parametrize("side", [4, 2], ids=["K' x K' eigh", "N x N dual"])  # 16 cells >= 5 dims, 4 < 5
@pytest.mark.parametrize("case", ["rank-1 region", "all-zero map", "empty mask", "flat region"])
def test_degenerate_regions_stay_finite_and_match_the_floored_reference(case, side):
    rng = np.random.default_rng(4)
    local = rng.normal(size=(side, side, 5)).astype(np.float32)
    masks = np.ones((1, side, side), bool)
    if case == "rank-1 region":
        masks[:] = False
        masks[0, 1, 1] = True  # one cell: G = f f^T has rank 1
    elif case == "all-zero map":
        local[:] = 0
    elif case == "empty mask":
        masks[:] = False
    else:
        local[:] = local[0, 0]  # every cell the same descriptor: rank 1 again
    alpha = np.ones((side, side), np.float32)
    ours = np.asarray(log_cov_pool(local, alpha, masks))
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ours, _reference(local.astype(np.float64), alpha, masks), atol=2e-4)


def test_float32_agrees_with_float64():
    """The kernel computes in float32 whatever it is given; on post-ReLU-like (non-negative, sparse)
    features of a real map size it stays within 1e-4 of the float64 reference."""
    rng = np.random.default_rng(5)
    local = rng.gamma(1.0, size=(10, 10, 16)) * (rng.uniform(size=(10, 10, 16)) > 0.5)
    alpha = rng.uniform(size=(10, 10))
    masks = np.ones((1, 10, 10), bool)
    narrow = np.asarray(log_cov_pool(local, alpha, masks))
    assert narrow.dtype == np.float32
    np.testing.assert_allclose(narrow, _reference(local, alpha, masks), atol=1e-4)


def test_rank_deficient_regions_agree_in_float32_and_float64():
    """A 10 x 10 map of 128-d local descriptors (Lite0's head after Eq. 4): every region has fewer
    cells than dimensions, so most eigenvalues of G are float32 noise; the relative floor maps them
    all to one value and float32 stays close to float64 (an absolute 1e-6 floor differed by 3e-3 here)."""
    rng = np.random.default_rng(7)
    local = rng.gamma(1.0, size=(10, 10, 128)) * (rng.uniform(size=(10, 10, 128)) > 0.5)
    alpha = rng.uniform(size=(10, 10))
    masks = np.zeros((3, 10, 10), bool)
    masks[0] = True  # 100 cells, rank <= 100 < 128
    masks[1, 2:7, 3:8] = True  # 25 cells
    masks[2, 4, 4:7] = True  # 3 cells
    narrow = np.asarray(log_cov_pool(local.astype(np.float32), alpha, masks))
    np.testing.assert_allclose(narrow, _reference(local, alpha, masks), atol=1e-4)


def test_eigendecompositions_sized_to_each_region_give_the_whole_map_sized_matrices():
    """The CPU path (one region at a time, the dual of its weighted cells padded to the next multiple of
    8) against the batched path (every region at the whole map's size) and the float64 loop, on regions
    of every size class: empty, 1 cell, exactly a size (8, 16), one over it (9, 17), and the whole map."""
    side, dims = 10, 128
    rng = np.random.default_rng(8)
    local = (rng.gamma(1.0, size=(2, side, side, dims)) * (rng.uniform(size=(2, side, side, dims)) > 0.5))
    alpha = rng.uniform(size=(2, side, side))
    counts = [0, 1, 8, 9, 16, 17, side * side // 2, side * side]
    order = rng.permutation(side * side)
    masks = np.zeros((len(counts), side * side), bool)
    for m, count in enumerate(counts):
        masks[m, order[:count]] = True  # scattered cells, not a box
    masks = masks.reshape(-1, side, side)
    assert region_sizes(side * side)[-2:] == (16, 8)
    weights = alpha[:, None] * masks
    weights = (weights / np.maximum(weights.sum(axis=(-2, -1), keepdims=True), 1e-12)).astype(np.float32)
    f32 = local.astype(np.float32)
    by_size = np.asarray(jax.jit(lambda x, w: _log_grams_by_size(x, w, 1e-4))(f32, weights))
    batched = np.asarray(jax.jit(lambda x, w: _log_grams_batched(x, w, 1e-4))(f32, weights))
    np.testing.assert_allclose(by_size[:, 1:], batched[:, 1:], atol=2e-3, rtol=1e-4)  # log-space entries, up to ~20
    np.testing.assert_allclose(by_size[:, 0], batched[:, 0], rtol=1e-5)  # empty: log(tiny) I on both
    ours = np.asarray(log_cov_pool(f32, alpha, masks))
    np.testing.assert_allclose(ours, _reference(local, alpha, masks), atol=1e-4)


def test_on_a_cpu_only_maps_of_fewer_cells_than_dimensions_go_region_by_region():
    def lowered(side, dims):
        local = np.ones((1, side, side, dims), np.float32)
        alpha, masks = np.ones((1, side, side), np.float32), np.ones((2, side, side), bool)
        return jax.jit(log_cov_pool).lower(local, alpha, masks).as_text()

    assert jax.default_backend() == "cpu"
    assert "stablehlo.while" in lowered(3, 16)  # 9 cells < 16 dims: the region loop
    assert "stablehlo.while" not in lowered(4, 16)  # 16 cells: one batched K' x K' eigh


def test_spatial_weights_are_the_l2_normalised_channel_sum():
    rng = np.random.default_rng(6)
    f = rng.gamma(1.0, size=(2, 3, 4, 5)).astype(np.float32)
    alpha = np.asarray(spatial_weights(f))
    total = f.sum(-1)
    np.testing.assert_allclose(alpha, total / np.sqrt((total ** 2).sum(axis=(1, 2), keepdims=True)), rtol=1e-5)
    assert np.all(np.asarray(spatial_weights(np.zeros((3, 4, 5), np.float32))) == 0)


def test_first_order_pool_is_eq9_and_eq3_with_unit_alpha():
    rng = np.random.default_rng(7)
    f = rng.gamma(1.0, size=(4, 5, 6)).astype(np.float32)
    beta = np.asarray(crow_channel_weights(f))
    alpha = np.asarray(spatial_weights(f))
    masks = np.zeros((2, 4, 5), bool)
    masks[0] = True
    masks[1, 1:3, 2:] = True
    ours = np.asarray(first_order_pool(f, beta, alpha, masks))
    for m, mask in enumerate(masks):
        ref = beta * sum(alpha[y, x] * f[y, x] for y in range(4) for x in range(5) if mask[y, x])
        np.testing.assert_allclose(ours[m], ref / np.linalg.norm(ref), rtol=1e-5)
    plain = np.asarray(first_order_pool(f, beta, np.ones((4, 5), np.float32), masks[:1]))[0]
    ref = beta * f.sum(axis=(0, 1))
    np.testing.assert_allclose(plain, ref / np.linalg.norm(ref), rtol=1e-5)


def test_reduce_local_projects_the_channel_weighted_descriptors():
    rng = np.random.default_rng(8)
    f = rng.normal(size=(2, 3, 3, 6)).astype(np.float32)
    beta = rng.uniform(size=(2, 6)).astype(np.float32)
    u = rng.normal(size=(6, 4)).astype(np.float32)
    ours = np.asarray(reduce_local(f, beta, u))
    np.testing.assert_allclose(ours, (f * beta[:, None, None, :]) @ u, rtol=1e-5, atol=1e-6)
