"""Candidate regions of jeong2017 Sec. 2: salient points -> L clusters -> convex hulls of every subset.

Salient points come from the map itself (`alpha_peaks`) or from an image detector, ranked by alpha
(`salient_point_set`, the paper's rule; the detector runs on the host, `tmrjax.data.salient_points`).
Static shapes throughout: points come padded to N with a valid flag, the M = 2^L masks come with
a valid flag (a subset without a valid point, or a hull covering no cell centre, is not a
region), so the whole proposal jits and vmaps over images. The empty subset is replaced by the
whole map (the paper's "set of all the positions in I"), which is always valid and is the last
region, R_M.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np


def alpha_peaks(alpha: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
    """Salient points from the map itself: the `count` strongest local maxima of the spatial weights
    alpha (Eq. 1), the feature-map alternative to an image detector (jeong2017 falls back to the
    largest values of alpha when the detector finds too few points).

    alpha: (H, W). A cell is a peak when it is > 0 and >= its 8 neighbours. Returns (points
    (count, 2) float32 (row, column) cell centres, strongest first; valid (count,) bool, False
    for padding when the map has fewer peaks).
    """
    h, w = alpha.shape
    padded = jnp.pad(alpha.astype(jnp.float32), 1, constant_values=-jnp.inf)
    neighbours = jnp.stack([padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                            for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)])
    peak = (alpha > 0) & jnp.all(alpha >= neighbours, axis=0)
    return _largest_cells(jnp.where(peak, alpha, -jnp.inf), count)


def salient_point_set(
    points: jax.Array, valid: jax.Array, alpha: jax.Array, image_size: int, count: int, n_max: int, n_min: int
) -> tuple[jax.Array, jax.Array]:
    """jeong2017 Sec. 2's salient point set P from points detected in the image, ranked by the spatial
    weights alpha (Eq. 1): the numpy `tmrjax.data.salient_points.salient_points`, with static shapes.

    points: (P, 2) (row, column) pixel positions in the image_size-pixel square that alpha (h, w)
    covers, in the order that breaks ties (the detector's, strongest first); valid: (P,) bool. Each
    point takes the alpha of the cell it falls in; points with alpha <= 0 are dropped, the rest sorted
    by alpha, descending (ties in input order), and the n_max largest kept. When fewer than n_min are
    left, P is the centres of the n_min cells of largest alpha instead (ties in row-major order;
    cells with alpha <= 0 left out). Returns (points (count, 2) float32 map cells, valid (count,)
    bool), truncated to `count` or padded with (0, 0), False.
    """
    h, w = alpha.shape
    alpha = alpha.astype(jnp.float32)
    scaled = points.astype(jnp.float32) * jnp.array([h, w], jnp.float32)  # exact for pixel centres
    cells = scaled / image_size
    index = jnp.floor(cells)
    index = jnp.where(index * image_size > scaled, index - 1, index)  # a quotient rounded up onto a cell edge
    row = jnp.clip(index[:, 0].astype(jnp.int32), 0, h - 1)
    col = jnp.clip(index[:, 1].astype(jnp.int32), 0, w - 1)
    at_points = alpha[row, col]
    score, order = jax.lax.top_k(jnp.where(valid & (at_points > 0), at_points, -jnp.inf),
                                 min(n_max, points.shape[0]))
    detected = _padded(cells[order], jnp.isfinite(score), count)
    fallback = _largest_cells(jnp.where(alpha > 0, alpha, -jnp.inf), min(count, n_min))
    fallback = _padded(*fallback, count)
    too_few = jnp.sum(jnp.isfinite(score)) < n_min
    valid = jnp.where(too_few, fallback[1], detected[1])
    return jnp.where(valid[:, None], jnp.where(too_few, fallback[0], detected[0]), 0.0), valid


def _largest_cells(scores: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
    """The centres of the `count` cells of largest finite score (h, w), largest first, ties in row-major
    order (`lax.top_k` keeps the lower index first), padded as `alpha_peaks` returns them."""
    w = scores.shape[1]
    top, index = jax.lax.top_k(scores.ravel(), min(count, scores.size))
    points = jnp.stack([index // w, index % w], axis=-1).astype(jnp.float32) + 0.5
    return _padded(points, jnp.isfinite(top), count)


def _padded(points: jax.Array, valid: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
    """The first `count` of (N, 2) points and their (N,) valid flags, padded with (0, 0), False."""
    points, valid = points[:count], valid[:count]
    missing = count - points.shape[0]
    if missing > 0:
        points = jnp.concatenate([points, jnp.zeros((missing, 2), points.dtype)])
        valid = jnp.concatenate([valid, jnp.zeros((missing,), bool)])
    return points, valid


def cluster_points(points: jax.Array, valid: jax.Array, num_clusters: int, iterations: int = 20) -> jax.Array:
    """k-means of 2-D positions into `num_clusters` groups; returns each point's label (N,) int32.

    Deterministic farthest-point initialisation (the first valid point, then repeatedly the valid
    point farthest from the chosen centres), then `iterations` Lloyd steps over the valid points.
    jeong2017 uses global fast k-means, which reaches the same kind of partition of a point cloud
    without random restarts. points: (N, 2) float; valid: (N,) bool.
    """
    points = points.astype(jnp.float32)
    first = jnp.argmax(valid)
    centres = jnp.zeros((num_clusters, 2), jnp.float32).at[0].set(points[first])
    nearest = jnp.sum((points - points[first]) ** 2, axis=-1)
    for c in range(1, num_clusters):
        pick = jnp.argmax(jnp.where(valid, nearest, -1.0))
        centres = centres.at[c].set(points[pick])
        nearest = jnp.minimum(nearest, jnp.sum((points - points[pick]) ** 2, axis=-1))
    # Coordinates apart and sums of products instead of (N, L, 2) differences and a matmul: the same
    # numbers, 2.5x faster on XLA:CPU for the 4,000 padded points of detected salient points.
    rows, cols, weight = points[:, 0:1], points[:, 1:2], valid.astype(jnp.float32)[:, None]

    def labels_of(centres):
        return jnp.argmin((rows - centres[None, :, 0]) ** 2 + (cols - centres[None, :, 1]) ** 2, axis=-1)

    def step(centres, _):
        member = (labels_of(centres)[:, None] == jnp.arange(num_clusters)[None]) * weight  # (N, L)
        count = jnp.sum(member, axis=0)
        mean = jnp.stack([jnp.sum(member * rows, axis=0), jnp.sum(member * cols, axis=0)], axis=-1)
        return jnp.where(count[:, None] > 0, mean / jnp.maximum(count, 1.0)[:, None], centres), None

    centres, _ = jax.lax.scan(step, centres, None, length=iterations)
    return labels_of(centres).astype(jnp.int32)


def cluster_subsets(num_clusters: int) -> np.ndarray:
    """(2^L - 1, L) bool: every non-empty subset of the clusters, smaller subsets first."""
    subsets = [s for r in range(1, num_clusters + 1) for s in itertools.combinations(range(num_clusters), r)]
    out = np.zeros((len(subsets), num_clusters), bool)
    for i, s in enumerate(subsets):
        out[i, list(s)] = True
    return out


def hull_masks(
    points: jax.Array, valid: jax.Array, labels: jax.Array, num_clusters: int, h: int, w: int, directions: int = 64
) -> tuple[jax.Array, jax.Array]:
    """jeong2017's M = 2^L candidate regions on an h x w map: (masks (M, h, w) float32, valid (M,) bool).

    Region i < M - 1 is the convex hull of the points of the i-th non-empty subset of clusters
    (`cluster_subsets`); region M - 1 is the whole map. `points` are (N, 2) (row, column) positions
    in map cells (a cell's centre is at (y + 0.5, x + 0.5)). A cell is inside a hull when its centre
    lies within the hull's support in each of `directions` evenly spaced directions: the hull's
    circumscribed `directions`-gon, which holds every cell of the exact hull and adds, at most, cells
    whose centres lie within L tan(pi / directions) / 2 outside a hull edge of length L (the corner
    of two neighbouring support lines; 0.03 cells for a 10-cell edge and 64 directions). A
    hull of one or two points covers no cell centre unless one lies on it; a region without a cell
    is invalid.
    """
    subsets = jnp.asarray(cluster_subsets(num_clusters))  # (S, L)
    angles = np.arange(directions) * (2 * np.pi / directions)
    normals = jnp.asarray(np.stack([np.sin(angles), np.cos(angles)], axis=-1), jnp.float32)  # (D, 2)
    projections = points.astype(jnp.float32) @ normals.T  # (N, D)
    # A subset's support is the largest of its clusters': the clusters' first (one pass over the points,
    # invalid ones in an extra segment), -inf for an empty one.
    segment = jnp.where(valid, labels, num_clusters)
    per_cluster = jax.ops.segment_max(projections, segment, num_segments=num_clusters + 1)[:num_clusters]  # (L, D)
    support = jnp.max(jnp.where(subsets[:, :, None], per_cluster[None], -jnp.inf), axis=1)  # (S, D)
    ys, xs = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    centres = jnp.asarray(np.stack([ys.ravel(), xs.ravel()], axis=-1), jnp.float32) @ normals.T  # (h*w, D)
    tolerance = 1e-4
    inside = jnp.all(centres[None] <= support[:, None, :] + tolerance, axis=-1)  # (S, h*w)
    masks = jnp.concatenate([inside.reshape(-1, h, w), jnp.ones((1, h, w), bool)]).astype(jnp.float32)
    region_valid = jnp.concatenate([jnp.any(inside, axis=-1), jnp.ones((1,), bool)])
    return masks, region_valid
