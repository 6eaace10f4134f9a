"""Region matching and regional query expansion, jeong2017 Sec. 4 (Eq. 7, 8).

An image is a set of M l2-normalised region vectors with a valid flag; two images are as similar
as their best-matched pair of regions. These kernels score one block of database images; a
search over a large gallery calls them block by block (Q x N x M_q x M_t scores per call).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .pooling import l2_normalize


def region_similarity(
    query: jax.Array, query_valid: jax.Array, targets: jax.Array, target_valid: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """jeong2017 Eq. 7: ImSim(q, t) = max over valid region pairs of their cosine.

    query (Q, M_q, D), query_valid (Q, M_q); targets (N, M_t, D), target_valid (N, M_t).
    Returns (scores (Q, N) float32, -inf where a side has no valid region; best (Q, N) int32,
    the target region of the best-matched pair, for regional query expansion).
    """
    pairs = jnp.einsum("qmd,ntd->qnmt", query.astype(jnp.float32), targets.astype(jnp.float32))
    valid = query_valid[:, None, :, None] & target_valid[None, :, None, :]
    pairs = jnp.where(valid, pairs, -jnp.inf)
    flat = pairs.reshape(pairs.shape[0], pairs.shape[1], -1)
    best = jnp.argmax(flat, axis=-1)
    scores = jnp.take_along_axis(flat, best[..., None], axis=-1)[..., 0]
    return scores, (best % targets.shape[1]).astype(jnp.int32)


def regional_query_expansion(
    targets: jax.Array, scores: jax.Array, best: jax.Array, num_expansion: int = 10
) -> jax.Array:
    """jeong2017 Sec. 4.2: the l2-normalised mean of the best-matched region vectors of each query's
    `num_expansion` top-ranked images (N_QE = 10 in the paper), one vector per query.

    targets (N, M_t, D); scores, best (Q, N) from `region_similarity`. -> (Q, D) float32. Eq. 8
    then scores it as a one-region query: `region_similarity(expanded[:, None], ones, targets, valid)`.
    """
    top_scores, top = jax.lax.top_k(scores, min(num_expansion, scores.shape[1]))  # (Q, n)
    regions = targets.astype(jnp.float32)[top, jnp.take_along_axis(best, top, axis=1)]  # (Q, n, D)
    keep = jnp.isfinite(top_scores)[..., None]
    return l2_normalize(jnp.sum(jnp.where(keep, regions, 0.0), axis=1))
