"""Search a database where every image is M region vectors (jeong2017 Sec. 4.1, Eq. 7).

The similarity of two images is the cosine of their best-matched pair of valid regions. Exact
search scores every pair, block by block over the database, with the jitted kernel
`tmrjax.kernels.matching.region_similarity`. Approximate search puts every valid database region
in a faiss inner-product index: each valid query region retrieves its `per_region_k` nearest
regions, and an image scores the best of its retrieved pairs (an image none of whose regions is
retrieved is not found). Both return the top k images best first, ties broken by the lower
database index, with the database region of the best pair (for regional query expansion,
`tmrjax.kernels.expansion`).
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import jax
import jax.numpy as jnp
import numpy as np

from .kernels.matching import region_similarity

# Search batches of a few hundred queries go through BLAS instead of the per-query loop (~6x faster).
faiss.cvar.distance_compute_blas_threshold = 20

_NORM_TOLERANCE = 1e-3
DEFAULT_BLOCK = 512  # database images per exact-search step: Q x 512 x M x M scores at a time
# faiss indexes of region vectors, by name; similarity is the inner product (cosine of unit vectors).
REGION_INDEX_KINDS = {
    "flat": lambda dim: faiss.IndexFlatIP(dim),
    "hnsw": lambda dim: faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT),  # efConstruction 40
}
_ADD_CHUNK = 16_384  # images whose valid regions go to faiss in one `add`
# A real image with no valid region scores this inside the running top-k, so that it still ranks
# above the list's empty slots (-inf); it is -inf again in the result.
_NO_MATCH = float(np.finfo(np.float32).min)


@dataclass(frozen=True)
class RegionVectors:
    """N images of M region vectors each: vectors (N, M, D) float32, l2-normalised where valid;
    valid (N, M) bool. Invalid regions (padding, images with fewer regions) are never matched."""

    vectors: np.ndarray
    valid: np.ndarray

    def __post_init__(self) -> None:
        vectors, valid = np.asarray(self.vectors), np.asarray(self.valid)
        if vectors.ndim != 3 or vectors.dtype != np.float32:
            raise ValueError(
                f"RegionVectors.vectors must be (N, M, D) float32, got shape {vectors.shape} {vectors.dtype}"
            )
        if valid.shape != vectors.shape[:2] or valid.dtype != np.bool_:
            raise ValueError(
                f"RegionVectors.valid must be (N, M) = {vectors.shape[:2]} bool, got shape {valid.shape} {valid.dtype}"
            )
        norms = np.sqrt(np.einsum("nmd,nmd->nm", vectors, vectors))
        bad = valid & ~(np.abs(norms - 1.0) <= _NORM_TOLERANCE)  # NaN and inf are bad too
        if bad.any():
            i, m = np.argwhere(bad)[0]
            raise ValueError(
                f"RegionVectors.vectors[{i}, {m}] is valid but has norm {norms[i, m]}, expected 1 "
                f"(l2-normalised, within {_NORM_TOLERANCE}); {int(bad.sum())} such regions"
            )
        object.__setattr__(self, "vectors", vectors)
        object.__setattr__(self, "valid", valid)


def _check_pair(queries: RegionVectors, database: RegionVectors, k: int, where: str) -> None:
    for name, value in (("queries", queries), ("database", database)):
        if not isinstance(value, RegionVectors):
            raise ValueError(f"tmrjax.region_search.{where}: {name} must be RegionVectors, got {type(value).__name__}")
    if queries.vectors.shape[2] != database.vectors.shape[2]:
        raise ValueError(
            f"tmrjax.region_search.{where}: queries have dim {queries.vectors.shape[2]}, "
            f"the database {database.vectors.shape[2]}"
        )
    n = len(database.vectors)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"tmrjax.region_search.{where}: k must be an int in [1, {n}] (database images), got {k!r}")


@jax.jit
def _merge_block(top_scores, top_images, top_regions, queries, query_valid, block, block_valid, start, count):
    """The running top-k (Q, k) merged with the images of one database block (starting at `start`)."""
    scores, regions = region_similarity(queries, query_valid, block, block_valid)
    images = start + jnp.arange(block.shape[0], dtype=jnp.int32)
    scores = jnp.where(jnp.isneginf(scores) & (images < count)[None], _NO_MATCH, scores)  # padding stays -inf
    scores = jnp.concatenate([top_scores, scores], axis=1)  # earlier blocks first: lower indices win ties
    images = jnp.concatenate([top_images, jnp.broadcast_to(images, regions.shape)], axis=1)
    regions = jnp.concatenate([top_regions, regions], axis=1)
    top_scores, at = jax.lax.top_k(scores, top_scores.shape[1])  # ties: the lower position first
    return top_scores, jnp.take_along_axis(images, at, axis=1), jnp.take_along_axis(regions, at, axis=1)


def exact_search(
    queries: RegionVectors, database: RegionVectors, k: int, block: int = DEFAULT_BLOCK
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top k database images of each query by Eq. 7, scoring every pair of valid regions.

    The database goes through `region_similarity` `block` images at a time (one compiled shape;
    the last block is padded with invalid rows). -> (scores (Q, k) float32, indices (Q, k) int64,
    best_region (Q, k) int32: the database region of the best pair). Images with no valid region
    (and every image, for a query with none) score -inf and come last, best_region 0.
    """
    _check_pair(queries, database, k, "exact_search")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"tmrjax.region_search.exact_search: block must be a positive int, got {block!r}")
    n, m, dim = database.vectors.shape
    block = min(block, n)
    q = len(queries.vectors)
    top = (jnp.full((q, k), -jnp.inf, jnp.float32), jnp.zeros((q, k), jnp.int32), jnp.zeros((q, k), jnp.int32))
    query_vectors, query_valid = jnp.asarray(queries.vectors), jnp.asarray(queries.valid)
    for start in range(0, n, block):
        vectors, valid = database.vectors[start : start + block], database.valid[start : start + block]
        if len(vectors) < block:
            vectors = np.concatenate([vectors, np.zeros((block - len(vectors), m, dim), np.float32)])
            valid = np.concatenate([valid, np.zeros((block - len(valid), m), bool)])
        top = _merge_block(*top, query_vectors, query_valid, vectors, valid, np.int32(start), np.int32(n))
    scores, indices, regions = (np.asarray(a) for a in top)
    return np.where(scores == _NO_MATCH, -np.inf, scores).astype(np.float32), indices.astype(np.int64), regions


def region_index(database: RegionVectors, kind: str = "flat") -> faiss.Index:
    """A faiss inner-product index of the database's valid region vectors, in (image, region) order:
    ``REGION_INDEX_KINDS[kind]``, "flat" (exact) or "hnsw" (M = 32, faiss's defaults efConstruction 40
    and efSearch 16: set ``index.hnsw.efSearch`` to at least the per_region_k it is searched with)."""
    if not isinstance(database, RegionVectors):
        raise ValueError(f"tmrjax.region_search.region_index: database must be RegionVectors, got {type(database)}")
    if kind not in REGION_INDEX_KINDS:
        raise ValueError(f"tmrjax.region_search.region_index: unknown kind {kind!r}, expected one of "
                         f"{sorted(REGION_INDEX_KINDS)}")
    index = REGION_INDEX_KINDS[kind](database.vectors.shape[2])
    for start in range(0, len(database.vectors), _ADD_CHUNK):
        chunk = slice(start, start + _ADD_CHUNK)
        index.add(np.ascontiguousarray(database.vectors[chunk][database.valid[chunk]]))
    return index


def approximate_search(
    queries: RegionVectors, database: RegionVectors, k: int, per_region_k: int, index: faiss.Index | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top k images of each query by the best pair among the regions faiss retrieves.

    Each valid query region retrieves its `per_region_k` most similar database regions from
    `index` (`region_index(database, ...)`; a flat one is built when None); an image scores the
    best retrieved pair. With a flat index and per_region_k >= the number of valid database
    regions this is `exact_search`, except that images with no valid region are never found.
    -> (scores (Q, k) float32, indices (Q, k) int64, best_region (Q, k) int32), best first, ties by
    the lower index; slots beyond the images found are score -inf, index -1, region -1.
    """
    _check_pair(queries, database, k, "approximate_search")
    if isinstance(per_region_k, bool) or not isinstance(per_region_k, int) or per_region_k < 1:
        raise ValueError(
            f"tmrjax.region_search.approximate_search: per_region_k must be a positive int, got {per_region_k!r}"
        )
    _, m, dim = database.vectors.shape
    # faiss row -> (image, region): the valid regions in (image, region) order, as region_index adds them
    labels = np.flatnonzero(database.valid.reshape(-1))
    if index is None:
        index = region_index(database)
    if index.d != dim or index.ntotal != len(labels):
        raise ValueError(
            f"tmrjax.region_search.approximate_search: index holds {index.ntotal} vectors of dim {index.d}, "
            f"expected the database's {len(labels)} valid regions of dim {dim} (build it with region_index)"
        )
    owner = np.nonzero(queries.valid)[0]  # the query of each valid query region
    found_scores, rows = index.search(np.ascontiguousarray(queries.vectors[queries.valid]), per_region_k)
    hit = rows >= 0
    query = np.broadcast_to(owner[:, None], rows.shape)[hit]
    return best_images(query, labels[rows[hit]], found_scores[hit], len(queries.vectors), m, k)


def best_images(query: np.ndarray, label: np.ndarray, score: np.ndarray, num_queries: int, regions: int,
                k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Retrieved region pairs -> each query's top k images by its best pair (Eq. 7 over what was retrieved).

    query, label, score: one entry per retrieved pair, label = image * `regions` + region of the
    retrieved region. -> (scores (num_queries, k) float32, images int64, best_region int32), best
    first, ties by the lower image; slots beyond the images found are score -inf, image -1, region -1.
    """
    image, region = label // regions, (label % regions).astype(np.int32)
    # best pair per (query, image): the first of each group sorted by query, image, score down
    order = np.lexsort((region, -score, image, query))
    query, image, region, score = query[order], image[order], region[order], score[order]
    first = np.ones(len(query), bool)
    first[1:] = (query[1:] != query[:-1]) | (image[1:] != image[:-1])
    query, image, region, score = query[first], image[first], region[first], score[first]
    # top k per query: sorted by query, score down, image up
    order = np.lexsort((image, -score, query))
    query, image, region, score = query[order], image[order], region[order], score[order]
    rank = np.arange(len(query)) - np.searchsorted(query, query, side="left")
    keep = rank < k
    out_scores = np.full((num_queries, k), -np.inf, np.float32)
    out_images = np.full((num_queries, k), -1, np.int64)
    out_regions = np.full((num_queries, k), -1, np.int32)
    out_scores[query[keep], rank[keep]] = score[keep]
    out_images[query[keep], rank[keep]] = image[keep]
    out_regions[query[keep], rank[keep]] = region[keep]
    return out_scores, out_images, out_regions


def recall_at_k(exact_indices: np.ndarray, approx_indices: np.ndarray) -> float:
    """Mean over queries of the fraction of the exact top-k (Q, k) found in the approximate list
    (Q, k') of the same queries; an index -1 (no result) matches nothing."""
    exact, approx = np.asarray(exact_indices), np.asarray(approx_indices)
    if exact.ndim != 2 or approx.ndim != 2 or len(exact) != len(approx) or exact.shape[1] == 0:
        raise ValueError(
            f"tmrjax.region_search.recall_at_k: expected (Q, k) and (Q, k') index arrays of the same queries, "
            f"got {exact.shape} and {approx.shape}"
        )
    found = (exact[:, :, None] == approx[:, None, :]).any(axis=2) & (exact >= 0)
    return float(found.mean())
