"""jeong2017 Sec. 2 on the host: salient points detected in the image, ranked by the spatial weights alpha (Eq. 1).

Detector. jeong2017 uses the Hessian-affine detector (Mikolajczyk & Schmid 2004), which neither OpenCV
nor scikit-image ships. `detect_points` is scikit-image's determinant-of-Hessian detector, the
Fast-Hessian of SURF (Bay et al. 2008): `skimage.feature.hessian_matrix_det` (box filters over an
integral image standing in for Gaussian second derivatives) at the five integer scales `SIGMAS`; a
point is a response above `threshold` that is the largest of its 3 x 3 x 3 neighbourhood in (scale,
row, column). That is `skimage.feature.blob_doh` without its pruning of overlapping blobs, which is
quadratic in their number (170 ms for one 224 px mark at its defaults, 56 s at threshold 1e-3).

How it differs from Hessian-affine: that detector takes det-H maxima in space, selects each point's
scale by the Laplacian (Hessian-Laplace) over a wider range of Gaussian scales, then iterates an
affine adaptation of the region to the local second-moment matrix. Adaptation changes the region's
shape and moves the point by a pixel or so; jeong2017 uses only the locations (ranked by alpha,
clustered, wrapped in convex hulls), so no scale or shape is kept here. A box filter of scale sigma
reaches 1.5 sigma, so with sigma <= 8 (for speed) a disc up to ~20 px across is found at its centre
and larger shapes along their outlines (corners, stroke ends, bends). A plateau of equal maxima, common
on flat-coloured marks, yields each of its pixels. The image is mirrored at its borders first: unpadded,
`hessian_matrix_det`'s box sums go wrong within half a box of the bottom and right borders.

In a pipeline (`embed.salient_points = "hessian"`) the load workers detect the points of every image
at each resolution (`data.sources.iter_batches`, `padded_points`), `Batch.points` carries them padded
to N_MAX, and `kernels.candidates.salient_point_set` ranks them on the device, as `salient_points` here
(the reference it is tested against) does.

Frames. Run the detector on the square uint8 image the backbone sees (`data.images.prepare(image, S)`,
or a row of `Batch.images[k]`): the feature map covers exactly that image, so a pixel position maps to
map cells by one scaling (`to_cells`), with no padding offset to undo. Positions are continuous, as in
`kernels/candidates.py`: pixel (i, j) covers [i, i + 1) x [j, j + 1), its centre is (i + 0.5, j + 0.5).

Speed of `detect_points` (CPU time, median of 51 calls after a warm-up, OMP_NUM_THREADS=1, numpy 2.4,
scikit-image 0.26, on a 2-core x86 VM shared with other jobs, load ~5; skimage's `camera` photo
through `prepare` and a synthetic mark of discs, bars and text): 14 ms at 224 x 224, 52 ms at
448 x 448, 65 ms at 512 x 512 (wall time, with the load: 21, 79 and 99 ms). Five calls of
`hessian_matrix_det` (each building its own integral image) are most of it.
"""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2gray
from skimage.feature import hessian_matrix_det

SIGMAS = (2, 3, 4, 6, 8)
"""Scales of the box-filter Hessian, in pixels of the image searched: integers only (see `detect_points`)."""

THRESHOLD = 1e-3
"""Lowest det-H response of a point, for grey values in [0, 1] (a black disc on white peaks at ~0.04)."""

N_MAX, N_MIN = 4000, 300
"""jeong2017 Sec. 5: at most N_max detected points are kept; below N_min the largest alpha cells are used."""


def padded_points(image: np.ndarray, count: int = N_MAX) -> tuple[np.ndarray, np.ndarray]:
    """`detect_points` of one square uint8 image (a row of `Batch.images[k]`) as fixed-shape arrays for
    the ranking on the device (`kernels.candidates.salient_point_set`): (positions (count, 2) float32,
    valid (count,) bool). Of more than `count` points, the `count` of strongest response are kept."""
    positions, _ = detect_points(image)
    n = min(len(positions), count)
    out = np.zeros((count, 2), np.float32)
    out[:n] = positions[:n]
    return out, np.arange(count) < n


def batch_points(images: np.ndarray, count: int = N_MAX) -> tuple[np.ndarray, np.ndarray]:
    """`padded_points` of every row of a (B, S, S, 3) uint8 batch: ((B, count, 2) float32, (B, count) bool)."""
    positions, valid = np.zeros((len(images), count, 2), np.float32), np.zeros((len(images), count), bool)
    for i, image in enumerate(images):
        positions[i], valid[i] = padded_points(image, count)
    return positions, valid


def detect_points(
    image: np.ndarray, sigmas: tuple[int, ...] = SIGMAS, threshold: float = THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """Salient points of a uint8 (H, W, 3) RGB or (H, W) grey image: (positions (P, 2) float32 (row,
    column) pixel centres, responses (P,) float32), strongest response first.

    A position found at several scales is returned once, with its largest response. A plateau of equal
    maxima yields each of its pixels. `sigmas` must be integers: the box filters of `hessian_matrix_det`
    balance only when 3 sigma is a whole multiple of 3, and otherwise a flat region responds.
    """
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and (
            image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)) and 0 not in image.shape):
        shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"detect_points expects a non-empty uint8 (H, W, 3) or (H, W) image, got shape {shape} "
                         f"dtype {dtype}")
    if not sigmas or not all(isinstance(s, (int, np.integer)) and s >= 1 for s in sigmas):
        raise ValueError(f"sigmas must be a non-empty tuple of integers >= 1, got {sigmas!r}")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0 (a det-H response), got {threshold!r}")
    grey = rgb2gray(image) if image.ndim == 3 else image.astype(np.float64) / 255.0
    w = grey.shape[1]
    cube = np.stack([_hessian_det(grey, int(s)) for s in sigmas], dtype=np.float32)  # (scales, H, W)
    peak = (cube == _neighbourhood_max(cube)) & (cube > threshold)
    k, rows, cols = np.nonzero(peak)
    flat = rows * w + cols
    response = cube[k, rows, cols]
    order = np.lexsort((flat, -response))  # strongest first, ties in row-major order
    flat, response = flat[order], response[order]
    _, first = np.unique(flat, return_index=True)  # a position's first occurrence is its largest response
    first = np.sort(first)
    flat, response = flat[first], response[first]
    positions = np.stack([flat // w, flat % w], axis=-1).astype(np.float32) + 0.5
    return positions, response.astype(np.float32)


def _hessian_det(grey: np.ndarray, sigma: int) -> np.ndarray:
    """`hessian_matrix_det` of the image mirrored at its borders. Unpadded, its box sums go wrong within
    half a box of the bottom and right borders (a flat white corner answers ~0.03, as strongly as a blob)."""
    margin = 3 * sigma // 2 + 2
    h, w = grey.shape
    return hessian_matrix_det(np.pad(grey, margin, mode="symmetric"), sigma=sigma)[margin:margin + h, margin:margin + w]


def _neighbourhood_max(cube: np.ndarray) -> np.ndarray:
    """The maximum over each element's 3 x 3 x 3 neighbourhood (separably, one axis at a time); outside
    the cube counts as -inf, so the first and last scales have one neighbouring scale."""
    out = cube
    for axis in range(3):
        before = (slice(None),) * axis + (slice(None, -1),)
        after = (slice(None),) * axis + (slice(1, None),)
        source, out = out, out.copy()
        np.maximum(out[after], source[before], out=out[after])
        np.maximum(out[before], source[after], out=out[before])
    return out


def to_cells(image_points: np.ndarray, image_size: int, map_shape: tuple[int, int]) -> np.ndarray:
    """(P, 2) (row, column) positions in an image_size-pixel square -> the same positions in cells of the
    (h, w) feature map covering it: (y h / S, x w / S), float32."""
    h, w = map_shape
    scale = np.array([h / image_size, w / image_size], np.float64)
    return (np.asarray(image_points, np.float64) * scale).astype(np.float32)


def salient_points(
    image_points: np.ndarray,
    alpha: np.ndarray,
    image_size: int,
    *,
    count: int,
    n_max: int = N_MAX,
    n_min: int = N_MIN,
) -> tuple[np.ndarray, np.ndarray]:
    """jeong2017's salient point set P, in feature-map cells, padded to `count` for the jax kernels:
    (points (count, 2) float32 (row, column), valid (count,) bool), as `kernels.candidates.alpha_peaks`.

    image_points: (P, 2) positions in the image_size-pixel square the (h, w) map `alpha` (Eq. 1) covers,
    in the order that breaks ties (`detect_points`: strongest first). Each point takes the alpha of the
    cell it falls in (alpha resized to the image by nearest cell), they are sorted by it, descending, and
    the n_max largest kept. When fewer than n_min points are left, P is instead the centres of the n_min
    cells of largest alpha (every cell, descending, on a map of fewer cells; ties in row-major order).
    Points and cells with alpha <= 0 are dropped before counting: they are where the map has no response,
    which the ranking is there to avoid (alpha is >= 0 after a ReLU), and an all-zero map yields no
    point at all. The set is then truncated or padded (zeros, valid False) to `count`; count >= n_max
    keeps every point of P.
    """
    points = np.asarray(image_points)
    if points.ndim != 2 or points.shape[1] != 2 or not np.all(np.isfinite(points)):
        raise ValueError(f"image_points must be finite (P, 2) (row, column) positions, got shape {points.shape}")
    if not (isinstance(image_size, (int, np.integer)) and image_size > 0):
        raise ValueError(f"image_size must be a positive int (the square image's side), got {image_size!r}")
    if len(points) and (points.min() < 0 or points.max() > image_size):
        raise ValueError(f"image_points must lie in the {image_size}-pixel square [0, {image_size}], got "
                         f"values from {points.min()} to {points.max()}")
    alpha = np.asarray(alpha)
    if alpha.ndim != 2 or 0 in alpha.shape or not np.all(np.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite, non-empty (h, w) map, got shape {alpha.shape}")
    for name, value in (("count", count), ("n_max", n_max), ("n_min", n_min)):
        if not (isinstance(value, (int, np.integer)) and value >= 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if n_min > n_max:
        raise ValueError(f"n_min ({n_min}) must not exceed n_max ({n_max})")

    h, w = alpha.shape
    cells = to_cells(points, image_size, (h, w))
    exact = points.astype(np.float64) * [h / image_size, w / image_size]  # float32 could round up to a cell edge
    row = np.clip(np.floor(exact[:, 0]).astype(np.int64), 0, h - 1)
    col = np.clip(np.floor(exact[:, 1]).astype(np.int64), 0, w - 1)
    at_points = alpha[row, col]
    order = np.argsort(-at_points, kind="stable")
    order = order[at_points[order] > 0][:n_max]
    chosen = cells[order]
    if len(chosen) < n_min:
        flat = alpha.ravel()
        best = np.argsort(-flat, kind="stable")
        best = best[flat[best] > 0][:n_min]
        chosen = np.stack([best // w, best % w], axis=-1).astype(np.float32) + 0.5

    chosen = chosen[:count]
    out = np.zeros((count, 2), np.float32)
    out[: len(chosen)] = chosen
    return out, np.arange(count) < len(chosen)
