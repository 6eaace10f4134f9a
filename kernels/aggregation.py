"""Regional deep feature aggregation, jeong2017 Sec. 2-3: spatial weights (Eq. 1), first-order
(Eq. 3, 9) and second-order, log-covariance (Eq. 4-5) pooling over region masks.

Masks are (M, H, W) at the feature map's size (or one set per image), so regions of any shape
(the convex hulls of jeong2017's candidate regions, R-MAC boxes) share one static-shape path.
In second-order pooling, each region's alpha-weighted average of outer products of its (PCA-reduced, Eq. 4) local
descriptors is mapped to the log-Euclidean space by the matrix logarithm and vectorised by its
upper triangle, the off-diagonal entries scaled by sqrt(2) so that the vector's l2 norm is the
matrix's Frobenius norm. Eigenvalues are floored at a fraction of the largest before the logarithm,
so regions of few cells (rank-deficient), flat regions and all-zero maps stay finite and do not
depend on float32 rounding. The channel weights
beta of Eq. 2 are CRoW's (`kernels.crow.crow_channel_weights`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .pooling import L2_EPS, l2_normalize


def spatial_weights(features: jax.Array) -> jax.Array:
    """jeong2017 Eq. 1: alpha_p = (sum_k f_pk) / ||sum_k f||_2 over the map. (..., H, W, K) -> (..., H, W).

    An all-zero map gives all-zero weights."""
    total = jnp.sum(features.astype(jnp.float32), axis=-1)
    norm = jnp.sqrt(jnp.sum(total * total, axis=(-2, -1), keepdims=True))
    return total / jnp.maximum(norm, 1e-12)


def first_order_pool(features: jax.Array, beta: jax.Array, alpha: jax.Array, masks: jax.Array) -> jax.Array:
    """jeong2017 Eq. 9 (Eq. 3 with alpha = 1): l2(beta o sum_{p in R_m} alpha_p f_p) per region.

    features (..., H, W, K); beta (..., K) channel weights (Eq. 2); alpha (..., H, W); masks
    (M, H, W) or (..., M, H, W). -> (..., M, K) float32.
    """
    weights = alpha.astype(jnp.float32)[..., None, :, :] * masks.astype(jnp.float32)
    pooled = jnp.einsum("...mhw,...hwk->...mk", weights, features.astype(jnp.float32))
    return l2_normalize(pooled * beta.astype(jnp.float32)[..., None, :])


def reduce_local(features: jax.Array, beta: jax.Array, projection: jax.Array) -> jax.Array:
    """jeong2017 Eq. 4: local descriptors U^T (beta o f_p), (..., H, W, K) -> (..., H, W, K'), with
    `projection` U (K, K') the PCA bases learned from first-order regional descriptors."""
    return jnp.einsum("...hwk,kj->...hwj", features.astype(jnp.float32) * beta.astype(jnp.float32)[..., None, None, :],
                      projection.astype(jnp.float32))


def spd_log(matrix: jax.Array, floor: float = 1e-4) -> jax.Array:
    """Matrix logarithm of symmetric positive semi-definite matrices, eigenvalues floored relative to the largest.

    (..., K, K) -> (..., K, K), through `eigh`: U diag(log max(lambda, floor * lambda_max)) U^T. A
    rank-deficient matrix (a region of fewer cells than K dimensions) has eigenvalues that are 0 in
    exact arithmetic and float32 rounding noise of about K * 6e-8 * lambda_max after `eigh`; a floor
    relative to lambda_max (1e-4, an order of magnitude above that noise for K = 128) maps all of
    them to one value, so the log no longer depends on the noise (an absolute floor left them
    anywhere between it and the noise). An all-zero matrix gives log(1.2e-38) I, finite. Each matrix
    is divided by its largest |entry| before `eigh` and the eigenvalues scaled back (the same U and
    lambda in exact arithmetic): LAPACK's eigensolver slows down by two orders of magnitude on
    float32 matrices with entries near 1e16, which unbounded feature maps produce.
    """
    scale = jnp.max(jnp.abs(matrix), axis=(-2, -1), keepdims=True)
    scale = jnp.where(scale > 0, scale, 1.0)
    values, vectors = jnp.linalg.eigh(matrix / scale)
    lowest = jnp.maximum(floor * values[..., -1:], np.finfo(np.float32).tiny)  # eigh sorts ascending
    logs = jnp.log(jnp.maximum(values, lowest)) + jnp.log(scale[..., 0])
    return jnp.einsum("...ik,...k,...jk->...ij", vectors, logs, vectors)


def vec_upper(matrix: jax.Array) -> jax.Array:
    """The upper triangle (diagonal included) of symmetric matrices, off-diagonal entries times sqrt(2):
    ||vec_upper(M)||_2 = ||M||_F. (..., K, K) -> (..., K (K + 1) / 2), row by row."""
    k = matrix.shape[-1]
    rows, cols = np.triu_indices(k)
    scale = np.where(rows == cols, 1.0, np.sqrt(2.0)).astype(np.float32)
    return matrix[..., rows, cols] * scale


def _dual_log(rows: jax.Array, floor: float) -> jax.Array:
    """`spd_log` of G = Y^T Y, Y = `rows` (..., n, K'), through the n x n dual Y Y^T, for n < K'.

    G and Y Y^T share their nonzero eigenvalues, and G's eigenvector of lambda is Y^T v / sqrt(lambda);
    every other eigenvalue of G is 0. With `spd_log`'s floor l = max(floor * lambda_max, tiny):
    log G = log(l) I + Y^T V diag((log max(lambda, l) - log l) / lambda) V^T Y, the same matrix as
    the K' x K' path (eigenvalues at or below l add nothing), from an eigendecomposition of n x n
    instead of K' x K' matrices. Rows of zeros add zero eigenvalues only. -> (..., K', K').
    """
    dual = jnp.einsum("...ik,...jk->...ij", rows, rows)
    scale = jnp.max(jnp.abs(dual), axis=(-2, -1), keepdims=True)
    scale = jnp.where(scale > 0, scale, 1.0)
    values, vectors = jnp.linalg.eigh(dual / scale)
    values = values * scale[..., 0]
    lowest = jnp.maximum(floor * values[..., -1:], np.finfo(np.float32).tiny)
    kept = values > lowest
    coefficients = jnp.where(kept, (jnp.log(jnp.where(kept, values, 1.0)) - jnp.log(lowest)) /
                             jnp.where(kept, values, 1.0), 0.0)
    z = jnp.einsum("...nk,...nj->...kj", rows, vectors)  # (..., K', n): Y^T V
    identity = jnp.eye(rows.shape[-1], dtype=jnp.float32)
    return jnp.log(lowest)[..., None] * identity + jnp.einsum("...kn,...n,...jn->...kj", z, coefficients, z)


def _log_grams_batched(local: jax.Array, weights: jax.Array, floor: float) -> jax.Array:
    """log G_m of every region in one batched eigendecomposition, each the size of the whole map's:
    the N x N dual when the map has N = H W < K' cells, K' x K' otherwise. local (..., H, W, K');
    weights (..., M, H, W), summing to 1 per region -> (..., M, K', K')."""
    h, w, k = local.shape[-3:]
    if h * w < k:
        cells = local.reshape(*local.shape[:-3], -1, k)  # (..., N, K')
        rows = jnp.sqrt(weights.reshape(*weights.shape[:-2], -1))[..., None] * cells[..., None, :, :]
        return _dual_log(rows, floor)
    return spd_log(jnp.einsum("...mhw,...hwi,...hwj->...mij", weights, local, local), floor)


def region_sizes(cells: int) -> tuple[int, ...]:
    """The cell counts `_log_grams_by_size` sizes eigendecompositions for, below the whole map's N:
    the multiples of 8 under N, largest first (a region is padded by fewer than 8 zero rows; smaller
    sizes would cost less than the loop around them)."""
    return tuple(range((cells - 1) // 8 * 8, 0, -8))


def _log_grams_by_size(local: jax.Array, weights: jax.Array, floor: float) -> jax.Array:
    """`_log_grams_batched`'s matrices for a map of N < K' cells, one region at a time, each from the
    dual of its own cells: a region of n cells has rank <= n, so the dual of its n largest-weight rows
    (padded with zero rows up to the smallest `region_sizes` entry >= n) gives the same log G at
    (n / N)^3 of the cost. On a CPU, where LAPACK solves batched eigenproblems one after another anyway,
    this is what candidate hulls need: on Lite0's 10 x 10 map, 7 of the 8 regions cover 1-60 cells."""
    h, w, k = local.shape[-3:]
    lead, regions, n = local.shape[:-3], weights.shape[-3], h * w
    if n >= k:
        raise ValueError(f"_log_grams_by_size: a map of {h} x {w} cells has rank up to K' = {k}: no dual")
    cells = local.reshape(-1, n, k)  # (I, N, K')
    region_weights = jnp.broadcast_to(weights, (*lead, regions, h, w)).reshape(-1, n)  # (I M, N)
    image = jnp.repeat(jnp.arange(cells.shape[0]), regions)

    def covering(size):
        def log_gram(x, wts):
            top, where = jax.lax.top_k(wts, size)  # every weighted cell, then zero-weight ones
            return _dual_log(jnp.sqrt(top)[:, None] * x[where], floor)
        return log_gram

    sizes = (n,) + region_sizes(n)
    branches = [covering(size) for size in sizes]
    capacity = jnp.asarray(sizes)

    def one(args):
        i, wts = args
        branch = jnp.sum(capacity >= jnp.sum(wts != 0)) - 1  # the smallest size that holds every weighted cell
        return jax.lax.switch(branch, branches, cells[i], wts)

    return jax.lax.map(one, (image, region_weights)).reshape(*lead, regions, k, k)


def log_cov_pool(local: jax.Array, alpha: jax.Array, masks: jax.Array, floor: float = 1e-4) -> jax.Array:
    """jeong2017 Eq. 5: per region, l2(vec(log(G))) with G the alpha-weighted mean of f f^T over its cells.

    local: (..., H, W, K') reduced local descriptors (Eq. 4); alpha: (..., H, W) spatial weights
    (Eq. 1; ones for a plain average); masks: (M, H, W) or (..., M, H, W) region masks (bool or
    0/1); `floor`: `spd_log`'s eigenvalue floor, relative to the largest. A region with no weight
    (an empty mask, or alpha 0 over it) has G = 0 and gives the direction of I; callers mask such
    regions out. -> (..., M, K' (K' + 1) / 2) float32.

    A map of N < K' cells (EfficientNet-Lite0's 10 x 10 head at 320 px, K' = 128) makes every G
    rank-deficient, and its log is computed from the N x N dual of the cells (`_dual_log`), the same
    matrix at (N / K')^3 of the eigendecomposition's cost; on a CPU each region gets a dual sized to
    its own cells (`_log_grams_by_size`), on an accelerator all are solved in one batch at the map's
    size (`_log_grams_batched`). Larger maps (VGG's 28 x 28) take one batched K' x K' `eigh`: their
    candidate hulls cover 200-800 cells, well above K'.
    """
    local = jnp.asarray(local, jnp.float32)
    weights = alpha.astype(jnp.float32)[..., None, :, :] * masks.astype(jnp.float32)  # (..., M, H, W)
    total = jnp.sum(weights, axis=(-2, -1))
    weights = weights / jnp.maximum(total, 1e-12)[..., None, None]
    h, w, k = local.shape[-3:]
    if h * w < k:  # on a CPU one region at a time, each dual sized to its cells; elsewhere all in one batch
        log_gram = jax.lax.platform_dependent(local, weights, cpu=functools.partial(_log_grams_by_size, floor=floor),
                                              default=functools.partial(_log_grams_batched, floor=floor))
    else:
        log_gram = _log_grams_batched(local, weights, floor)
    # l2_normalize(vec_upper(log G)) with its norm taken as ||log G||_F, the same number: XLA:CPU fuses
    # the upper triangle's gather into the norm's reduction otherwise, 3x slower than both apart.
    squared = jnp.sum(log_gram * log_gram, axis=(-2, -1))[..., None]
    return vec_upper(log_gram) / (jnp.sqrt(jnp.maximum(squared, np.finfo(np.float32).tiny)) + L2_EPS)
