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
QE reads the queries' (Q, N) score matrix of the initial search (`metrics.similarities`). DBA of
one-vector databases finds every row's neighbours with faiss's exact k-nearest-neighbour search
(blocked inner products keeping the k best in a heap, 6-7x faster than scoring whole rows and
partitioning them: benchmarks/RESULTS.md); region databases score blocks of rows against all
images by their best region pair.
"""

from __future__ import annotations

import faiss
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from .kernels import expansion, matching
from .metrics import similarities

# Database rows whose DBA neighbour lists are found at once: a (rows, N) score matrix at a time.
_DBA_ROWS_PER_STEP = 1024


def _top(scores: np.ndarray, n: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The n best columns of each row of `scores` (ties: lower index first), without row i's column
    exclude[i] (none where it is -1): (indices (Q, n) int64, their scores).

    A partial selection (`np.argpartition`, linear in the row) finds each row's n best; only rows where
    tied scores straddle the n-th place, so that the selection alone does not say which of them lower
    indices keep, are sorted whole."""
    scores = scores.copy()
    own = np.flatnonzero(exclude >= 0)
    scores[own, exclude[own]] = -np.inf
    n = min(n, scores.shape[1])
    if n == 0:
        return np.zeros((len(scores), 0), np.int64), np.zeros((len(scores), 0), scores.dtype)
    picked = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    nth = np.take_along_axis(scores, picked, axis=1).min(axis=1, keepdims=True)
    straddling = np.flatnonzero(np.sum(scores >= nth, axis=1) > n)  # more tied at the n-th value than fit
    if len(straddling):
        columns = np.broadcast_to(np.arange(scores.shape[1]), (len(straddling), scores.shape[1]))
        picked[straddling] = np.lexsort((columns, -scores[straddling]), axis=1)[:, :n]
    picked_scores = np.take_along_axis(scores, picked, axis=1)
    order = np.lexsort((picked, -picked_scores), axis=1)  # best first, ties by lower index
    picked = np.take_along_axis(picked, order, axis=1).astype(np.int64)
    return picked, np.take_along_axis(picked_scores, order, axis=1)


def _best_regions(queries: np.ndarray, database: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """For each (query, neighbour image): the neighbour's region of the best-matched region pair (Eq. 7)."""
    best = np.zeros(neighbours.shape, np.int32)
    present = np.any(database != 0, axis=-1)
    for i, q in enumerate(queries):
        _, found = matching.region_similarity(jnp.asarray(q[None]), jnp.asarray(np.any(q != 0, axis=-1)[None]),
                                              jnp.asarray(database[neighbours[i]]), jnp.asarray(present[neighbours[i]]))
        best[i] = np.asarray(found[0])
    return best


def _nearest_others_by_rows(database: np.ndarray, n: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_top` of the scores of `rows` against the whole database, their own columns left out, found
    _DBA_ROWS_PER_STEP rows at a time."""
    lists = [_top(similarities(database, step), n, exclude=step)
             for step in np.array_split(rows, max(1, -(-len(rows) // _DBA_ROWS_PER_STEP)))]
    return tuple(np.concatenate(parts) for parts in zip(*lists))


def _nearest_others(database: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every row's n best other rows, as `_top` gives them (best first, ties to the lower index):
    (indices (N, n) int64, scores).

    A one-vector database goes through `faiss.knn` (exact inner products), asked for n + 2 rows so
    that n + 1 others remain once the row itself is dropped; a row whose n-th and (n+1)-th other
    score tie, where faiss's heap need not have kept the lower indices, is scored whole instead.
    Region databases (best region pair per image) are scored whole, a block of rows at a time."""
    rows = np.arange(len(database))
    if database.ndim != 2 or len(database) < n + 2:
        return _nearest_others_by_rows(database, n, rows)
    scores, found = faiss.knn(database, database, n + 2, metric=faiss.METRIC_INNER_PRODUCT)
    own = found == rows[:, None]
    # drop the row's own entry, else (it tied with n + 2 others and fell off) the last one
    drop = np.where(own.any(axis=1), own.argmax(axis=1), n + 1)
    keep = np.arange(n + 2)[None, :] != drop[:, None]
    found, scores = found[keep].reshape(-1, n + 1), scores[keep].reshape(-1, n + 1)
    order = np.lexsort((found, -scores), axis=1)  # best first, ties by lower index
    found, scores = np.take_along_axis(found, order, axis=1), np.take_along_axis(scores, order, axis=1)
    straddling = np.flatnonzero(scores[:, n - 1] == scores[:, n])
    found, scores = found[:, :n], scores[:, :n]
    if len(straddling):
        found[straddling], scores[straddling] = _nearest_others_by_rows(database, n, straddling)
    return found, scores


def augment_database(database: np.ndarray, search: ConfigDict) -> np.ndarray:
    """DBA over the database itself, or `database` as it is when ``search.database_augmentation`` is 0."""
    n = search.database_augmentation
    if n <= 0:
        return database
    rows = np.arange(len(database))
    others, scores = _nearest_others(np.ascontiguousarray(database, np.float32), n)
    neighbours = np.concatenate([rows[:, None], others], axis=1)  # each list starts with the image itself
    if database.ndim == 2:
        scores = np.concatenate([np.ones((len(rows), 1), np.float32), scores], axis=1)
        return np.asarray(expansion.database_augmentation(database, neighbours, scores, search.dba_alpha))
    present = np.any(database != 0, axis=-1)
    out = np.asarray(expansion.regional_database_augmentation(database, present, neighbours, search.dba_alpha))
    return np.where(present[..., None], out, 0.0).astype(np.float32)


def expand_queries(database: np.ndarray, query_rows: np.ndarray, search: ConfigDict,
                   query_vectors: np.ndarray | None = None) -> np.ndarray | None:
    """The vectors the queries search with after query expansion ((Q, D), or (Q, 1, D) for region
    vectors: Eq. 8's one-region query), or None when ``search.query_expansion`` is 0.

    query_rows (Q,): each query's own database row, never one of its expansion images; -1 for a query
    that is not in the database (a folder search's new image). query_vectors: what the queries search
    with first ((Q, D) or (Q, M, D)), given when some are not database rows; else database[query_rows].
    """
    n = search.query_expansion
    if n <= 0:
        return None
    query_rows = np.asarray(query_rows, np.int64)
    queries = database[query_rows] if query_vectors is None else np.asarray(query_vectors, np.float32)
    neighbours, scores = _top(similarities(database, np.maximum(query_rows, 0), query_vectors=queries), n,
                              exclude=query_rows)
    if database.ndim == 2:
        return np.asarray(expansion.average_query_expansion(queries, database, neighbours, scores, search.qe_alpha))
    best = _best_regions(queries, database, neighbours)
    expanded = [matching.regional_query_expansion(jnp.asarray(database[neighbours[i]]), jnp.asarray(scores[i][None]),
                                                  jnp.asarray(best[i][None]), n)
                for i in range(len(query_rows))]
    return np.asarray(jnp.concatenate(expanded))[:, None, :].astype(np.float32)


def describe(search: ConfigDict, regions: bool) -> str:
    """What `augment_database` and `expand_queries` apply for ``search``, in a few words, e.g.
    ``DBA n=5 alpha=3, alpha-QE n=10 alpha=3``; ``none`` when neither; `regions`: a region database."""
    steps = []
    if search.database_augmentation > 0:
        steps.append(f"{'regional ' if regions else ''}DBA n={search.database_augmentation} alpha={search.dba_alpha:g}")
    if search.query_expansion > 0:
        steps.append(f"regional QE n={search.query_expansion} (jeong2017 Eq. 8)" if regions else
                     f"alpha-QE n={search.query_expansion} alpha={search.qe_alpha:g}")
    return ", ".join(steps) or "none"
