"""Search-time post-processing of a database's vectors, for any pipeline (config section ``search``).

- Database-side augmentation (``search.database_augmentation`` = n > 0): every database image is
  replaced by the alpha-weighted sum of itself and its n nearest other images (Arandjelovic &
  Zisserman 2012; alpha-weighted, Radenovic et al. 2018), `kernels.expansion.database_augmentation`;
  for region vectors each region by its best-matched regions of those images
  (`kernels.expansion.regional_database_augmentation`).
- Query expansion (``search.query_expansion`` = n > 0): the query is searched again with
  alpha-QE, l2(q + sum of its n top-ranked images weighted by score^alpha) (Radenovic et al.
  2018; alpha = 0 is Chum et al. 2007's average QE); for region vectors with jeong2017's
  regional QE (Sec. 4.2, Eq. 8): the mean of the best-matched regions of the n top-ranked images,
  searched as a one-region query.

A query's own database row is never one of its expansion images (it matches itself trivially).
Both read the whole (Q, N) score matrix of the initial search (`metrics.similarities`), which
suits evaluation-sized databases (a 5,000-image benchmark: 100 MB).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from .kernels import expansion, matching
from .metrics import similarities


def _top(scores: np.ndarray, n: int, exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The n best columns of each row of `scores` (ties: lower index first), without row i's column
    exclude[i]: (indices (Q, n) int64, their scores)."""
    scores = scores.copy()
    if exclude is not None:
        scores[np.arange(len(scores)), exclude] = -np.inf
    n = min(n, scores.shape[1])
    order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores), axis=1)[:, :n]
    return order, np.take_along_axis(scores, order, axis=1)


def _best_regions(queries: np.ndarray, database: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """For each (query, neighbour image): the neighbour's region of the best-matched region pair (Eq. 7)."""
    best = np.zeros(neighbours.shape, np.int32)
    present = np.any(database != 0, axis=-1)
    for i, q in enumerate(queries):
        _, found = matching.region_similarity(jnp.asarray(q[None]), jnp.asarray(np.any(q != 0, axis=-1)[None]),
                                              jnp.asarray(database[neighbours[i]]), jnp.asarray(present[neighbours[i]]))
        best[i] = np.asarray(found[0])
    return best


def augment_database(database: np.ndarray, search: ConfigDict) -> np.ndarray:
    """DBA over the database itself, or `database` as it is when ``search.database_augmentation`` is 0."""
    n = search.database_augmentation
    if n <= 0:
        return database
    rows = np.arange(len(database))
    others, scores = _top(similarities(database, rows), n, exclude=rows)
    neighbours = np.concatenate([rows[:, None], others], axis=1)  # each list starts with the image itself
    if database.ndim == 2:
        scores = np.concatenate([np.ones((len(rows), 1), np.float32), scores], axis=1)
        return np.asarray(expansion.database_augmentation(database, neighbours, scores, search.dba_alpha))
    present = np.any(database != 0, axis=-1)
    out = np.asarray(expansion.regional_database_augmentation(database, present, neighbours, search.dba_alpha))
    return np.where(present[..., None], out, 0.0).astype(np.float32)


def expand_queries(database: np.ndarray, query_rows: np.ndarray, search: ConfigDict) -> np.ndarray | None:
    """The vectors the queries search with after query expansion ((Q, D), or (Q, 1, D) for region
    vectors: Eq. 8's one-region query), or None when ``search.query_expansion`` is 0."""
    n = search.query_expansion
    if n <= 0:
        return None
    query_rows = np.asarray(query_rows)
    neighbours, scores = _top(similarities(database, query_rows), n, exclude=query_rows)
    queries = database[query_rows]
    if database.ndim == 2:
        return np.asarray(expansion.average_query_expansion(queries, database, neighbours, scores, search.qe_alpha))
    best = _best_regions(queries, database, neighbours)
    expanded = [matching.regional_query_expansion(jnp.asarray(database[neighbours[i]]), jnp.asarray(scores[i][None]),
                                                  jnp.asarray(best[i][None]), n)
                for i in range(len(query_rows))]
    return np.asarray(jnp.concatenate(expanded))[:, None, :].astype(np.float32)
