"""Query expansion and database-side augmentation: alpha-QE and DBA, global and regional.

alpha-QE (Radenovic, Tolias & Chum, TPAMI 2018): a query is replaced by the l2-normalised sum of
itself and its top n results, each weighted by its score to the power alpha; alpha = 0 is the
average query expansion of Chum et al. (ICCV 2007). DBA (Arandjelovic & Zisserman, CVPR 2012,
alpha-weighted as in Radenovic 2018) does the same to every database vector, with its top n
neighbours in the database, before the index is built.

Neighbour lists are what a top-n search returns: integer rows of the database, best first, and
their scores. A neighbour whose index is negative (faiss's "no result") or whose score is not
finite (an image with no valid region, jeong2017 Eq. 7) adds nothing. A negative score counts as
0, so weights are ``max(s, 0) ** alpha`` (a fractional power of a negative number is undefined;
``0 ** 0 = 1``, so alpha = 0 weighs every listed neighbour 1).

Region databases, where an image is M region vectors with a valid flag (jeong2017 Sec. 4):
QE is `tmrjax.kernels.matching.regional_query_expansion` (jeong2017 Sec. 4.2, Eq. 8), see
`average_query_expansion`; DBA is `regional_database_augmentation`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .pooling import l2_normalize

_HIGHEST = jax.lax.Precision.HIGHEST
# Images augmented per step of `regional_database_augmentation` (memory: rows x n x M x D floats).
_ROWS_PER_STEP = 256


def _check_lists(neighbours: jax.Array, scores: jax.Array | None, rows: int, where: str) -> None:
    if neighbours.ndim != 2 or neighbours.shape[0] != rows:
        raise ValueError(f"tmrjax.kernels.expansion.{where}: neighbours must be ({rows}, n), got {neighbours.shape}")
    if not jnp.issubdtype(neighbours.dtype, jnp.integer):
        raise ValueError(
            f"tmrjax.kernels.expansion.{where}: neighbours must be integer indices, got {neighbours.dtype}"
        )
    if scores is not None and scores.shape != neighbours.shape:
        raise ValueError(
            f"tmrjax.kernels.expansion.{where}: scores {scores.shape} must have the shape of neighbours "
            f"{neighbours.shape}"
        )


def _weights(neighbours: jax.Array, scores: jax.Array, alpha: float) -> jax.Array:
    """``max(s, 0) ** alpha``, 0 where the neighbour is missing (index < 0 or score not finite)."""
    scores = scores.astype(jnp.float32)
    keep = (neighbours >= 0) & jnp.isfinite(scores)
    return jnp.where(keep, jnp.power(jnp.maximum(scores, 0.0), alpha), 0.0)


def _weighted_sum(database: jax.Array, neighbours: jax.Array, scores: jax.Array, alpha: float) -> jax.Array:
    """``sum_i w_i x_{neighbours_i}`` per row: (B, n) lists into database (N, D) -> (B, D) float32."""
    weights = _weights(neighbours, scores, alpha)
    rows = database.astype(jnp.float32)[jnp.maximum(neighbours, 0)]  # (B, n, D)
    return jnp.sum(weights[..., None] * rows, axis=1)


def average_query_expansion(
    queries: jax.Array, database: jax.Array, neighbours: jax.Array, scores: jax.Array, alpha: float
) -> jax.Array:
    """alpha-QE (Radenovic et al. 2018): ``q' = l2(q + sum_{i<n} max(s_i, 0)^alpha x_{n_i})``.

    queries (Q, D); database (N, D); neighbours (Q, n) int, the top-n database rows of each query
    (the query itself is not among them: it is the ``q`` term, weight ``1 = 1^alpha``); scores
    (Q, n) their similarities. alpha = 0 is average QE (Chum et al. 2007). -> (Q, D) float32.

    Region form (jeong2017 Sec. 4.2): a query of M regions has no single vector to add to, so the
    expanded query is the l2-normalised sum of the best-matched region of each of the top n images,
    `kernels.matching.regional_query_expansion`, searched as a one-region query (Eq. 8). From a
    region search's top-k (scores, indices, best_region) over vectors (N, M, D), that vector is
    ``average_query_expansion(zeros (Q, D), vectors.reshape(N * M, D), indices * M + best_region,
    scores, alpha=0)``; alpha > 0 weighs the regions as above.
    """
    queries, database = jnp.asarray(queries), jnp.asarray(database)
    neighbours, scores = jnp.asarray(neighbours), jnp.asarray(scores)
    if queries.ndim != 2 or database.ndim != 2 or queries.shape[1] != database.shape[1]:
        raise ValueError(
            "tmrjax.kernels.expansion.average_query_expansion: queries (Q, D) and database (N, D) must be "
            f"matrices of one dim D, got {queries.shape} and {database.shape}"
        )
    _check_lists(neighbours, scores, queries.shape[0], "average_query_expansion")
    return l2_normalize(queries.astype(jnp.float32) + _weighted_sum(database, neighbours, scores, alpha))


def database_augmentation(database: jax.Array, neighbours: jax.Array, scores: jax.Array, alpha: float) -> jax.Array:
    """DBA (Arandjelovic & Zisserman 2012; alpha-weighted, Radenovic et al. 2018):
    ``x_j' = l2(sum_{i<n} max(s_ji, 0)^alpha x_{n_ji})``.

    database (N, D); neighbours (N, n) int, row j the top n database rows of x_j searched against
    the database itself, so the list starts with j itself, score 1 (weight 1); scores (N, n).
    -> (N, D) float32, to be indexed (and searched with queries) in place of ``database``.
    """
    database = jnp.asarray(database)
    neighbours, scores = jnp.asarray(neighbours), jnp.asarray(scores)
    if database.ndim != 2:
        raise ValueError(
            f"tmrjax.kernels.expansion.database_augmentation: database must be (N, D), got {database.shape}"
        )
    _check_lists(neighbours, scores, database.shape[0], "database_augmentation")
    return l2_normalize(_weighted_sum(database, neighbours, scores, alpha))


def regional_database_augmentation(
    vectors: jax.Array, valid: jax.Array, neighbours: jax.Array, alpha: float
) -> jax.Array:
    """DBA of a region database: each region is augmented with its best-matched region in each of
    the image's top n neighbour images (the 'best region' of jeong2017 Eq. 8, per region).

    vectors (N, M, D) l2-normalised regions, valid (N, M) bool; neighbours (N, n) int, row j the
    top n images of image j searched against the database itself with Eq. 7, so the list starts
    with j itself. For a valid region r of image j and each listed image t:
    ``c_t = max_{r' valid in t} <x_jr, x_tr'>`` (Eq. 8 with x_jr as a one-region query) and
    ``y_t`` the region attaining it; then ``x_jr' = l2(sum_t max(c_t, 0)^alpha y_t)``. In j itself
    the best match of x_jr is x_jr, c = 1; an image with no valid region adds nothing. The weight
    is the region-level score, not the image score of the list: the two agree for the region of
    the best-matched pair. Invalid regions are returned unchanged. -> (N, M, D) float32.
    """
    vectors, valid, neighbours = jnp.asarray(vectors), jnp.asarray(valid), jnp.asarray(neighbours)
    if vectors.ndim != 3 or valid.shape != vectors.shape[:2] or valid.dtype != jnp.bool_:
        raise ValueError(
            "tmrjax.kernels.expansion.regional_database_augmentation: vectors must be (N, M, D) and valid "
            f"(N, M) bool, got {vectors.shape} and {valid.shape} {valid.dtype}"
        )
    _check_lists(neighbours, None, vectors.shape[0], "regional_database_augmentation")
    vectors = vectors.astype(jnp.float32)

    def augment(row):
        x, x_valid, listed = row  # (M, D), (M,), (n,)
        present = listed >= 0
        targets = vectors[jnp.maximum(listed, 0)]  # (n, M, D)
        target_valid = valid[jnp.maximum(listed, 0)] & present[:, None]
        cosines = jnp.einsum("md,ntd->mnt", x, targets, precision=_HIGHEST)
        cosines = jnp.where(target_valid[None], cosines, -jnp.inf)
        best = jnp.argmax(cosines, axis=-1)  # (M, n)
        scores = jnp.take_along_axis(cosines, best[..., None], axis=-1)[..., 0]
        matched = targets[jnp.arange(targets.shape[0])[None, :], best]  # (M, n, D)
        weights = _weights(jnp.broadcast_to(listed, scores.shape), scores, alpha)
        augmented = l2_normalize(jnp.sum(weights[..., None] * matched, axis=1))
        return jnp.where(x_valid[:, None], augmented, x)

    return jax.lax.map(augment, (vectors, valid, neighbours), batch_size=_ROWS_PER_STEP)
