"""Second-order (log-covariance) regional pooling, jeong2017 Sec. 3 (Eq. 5).

Each region's alpha-weighted average of outer products of its (PCA-reduced, Eq. 4) local
descriptors is mapped to the log-Euclidean space by the matrix logarithm and vectorised by its
upper triangle, the off-diagonal entries scaled by sqrt(2) so that the vector's l2 norm is the
matrix's Frobenius norm. Eigenvalues are floored at `eps` before the logarithm, so regions of
few cells (rank-deficient), flat regions and all-zero maps stay finite. The channel weights
beta of Eq. 2 are CRoW's (`kernels.crow.crow_channel_weights`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .pooling import l2_normalize


def spd_log(matrix: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Matrix logarithm of symmetric positive semi-definite matrices, eigenvalues floored at `eps`.

    (..., K, K) -> (..., K, K), through `eigh` (U diag(log max(lambda, eps)) U^T).
    """
    values, vectors = jnp.linalg.eigh(matrix)
    logs = jnp.log(jnp.maximum(values, eps))
    return jnp.einsum("...ik,...k,...jk->...ij", vectors, logs, vectors)


def vec_upper(matrix: jax.Array) -> jax.Array:
    """The upper triangle (diagonal included) of symmetric matrices, off-diagonal entries times sqrt(2):
    ||vec_upper(M)||_2 = ||M||_F. (..., K, K) -> (..., K (K + 1) / 2), row by row."""
    k = matrix.shape[-1]
    rows, cols = np.triu_indices(k)
    scale = np.where(rows == cols, 1.0, np.sqrt(2.0)).astype(np.float32)
    return matrix[..., rows, cols] * scale


def log_cov_pool(local: jax.Array, alpha: jax.Array, masks: jax.Array, eps: float = 1e-6) -> jax.Array:
    """jeong2017 Eq. 5: per region, l2(vec(log(G))) with G the alpha-weighted mean of f f^T over its cells.

    local: (..., H, W, K') reduced local descriptors (Eq. 4); alpha: (..., H, W) spatial weights
    (Eq. 1; ones for a plain average); masks: (M, H, W) or (..., M, H, W) region masks (bool or
    0/1). A region with no weight (an empty mask, or alpha 0 over it) has G = 0 and gives the
    vector of log(eps) I; callers mask such regions out. -> (..., M, K' (K' + 1) / 2) float32.
    """
    local = local.astype(jnp.float32)
    weights = alpha.astype(jnp.float32)[..., None, :, :] * masks.astype(jnp.float32)  # (..., M, H, W)
    total = jnp.sum(weights, axis=(-2, -1))
    gram = jnp.einsum("...mhw,...hwi,...hwj->...mij", weights, local, local)
    gram = gram / jnp.maximum(total, 1e-12)[..., None, None]
    return l2_normalize(vec_upper(spd_log(gram, eps)))
