"""kernels/candidates.py: jeong2017's candidate regions, against scipy's exact convex hulls and the
numpy ranking of detected salient points (tmrjax/data/salient_points.py)."""

import functools

import jax
import numpy as np
import pytest
from scipy.spatial import ConvexHull
from tmrjax.kernels.candidates import alpha_peaks, cluster_points, cluster_subsets, hull_masks, salient_point_set

from tmrjax.data.salient_points import salient_points


def _blobs(rng, centres, per, spread=1.0):
    return np.concatenate([c + rng.normal(scale=spread, size=(per, 2)) for c in centres]).astype(np.float32)


def test_subsets_are_every_non_empty_subset_once():
    subsets = cluster_subsets(3)
    assert subsets.shape == (7, 3) and len({tuple(s) for s in subsets.tolist()}) == 7
    assert subsets.sum(1).tolist() == [1, 1, 1, 2, 2, 2, 3]


def test_clusters_recover_well_separated_blobs_and_ignore_padding():
    rng = np.random.default_rng(0)
    points = _blobs(rng, [(5, 5), (5, 30), (30, 15)], 20)
    padded = np.concatenate([points, np.full((10, 2), 1000.0, np.float32)])  # padding far away
    valid = np.arange(70) < 60
    labels = np.asarray(jax.jit(cluster_points, static_argnums=(2,))(padded, valid, 3))[:60]
    assert labels.shape == (60,) and labels.dtype == np.int32
    groups = [set(labels[i * 20:(i + 1) * 20].tolist()) for i in range(3)]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_hull_masks_match_exact_hulls_up_to_the_polygon_approximation(seed):
    rng = np.random.default_rng(seed)
    h, w = 24, 32
    points = _blobs(rng, [(5, 6), (6, 25), (18, 16)], 15, spread=2.0).clip(0, [h - 1e-3, w - 1e-3])
    valid = np.ones(len(points), bool)
    labels = np.repeat(np.arange(3), 15).astype(np.int32)
    masks, region_valid = (np.asarray(a) for a in jax.jit(hull_masks, static_argnums=(3, 4, 5))(
        points, valid, labels, 3, h, w))
    assert masks.shape == (8, h, w) and region_valid.tolist() == [True] * 8
    assert (masks[-1] == 1).all()  # R_M: the whole map
    centres = np.stack(np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij"), -1).reshape(-1, 2)
    for subset, mask in zip(cluster_subsets(3), masks[:-1]):
        hull = ConvexHull(points[np.isin(labels, np.flatnonzero(subset))])
        violation = (centres @ hull.equations[:, :2].T + hull.equations[:, 2]).max(axis=1)  # <= 0 inside
        exact = violation <= 1e-6
        ours = mask.ravel() > 0
        assert (ours >= exact).all()  # every cell centre inside the hull is in the mask
        diameter = np.ptp(hull.points, axis=0).max()
        # extras hug the boundary: a corner of two support lines 2 pi / 64 apart over one hull edge of
        # length L lies at most L tan(pi / 64) / 2 outside it
        assert (violation[ours & ~exact] <= diameter * np.tan(np.pi / 64) / 2).all()


def test_a_cluster_without_valid_points_gives_invalid_regions_of_no_cells():
    points = np.array([[2.0, 2.0], [2.0, 9.0], [9.0, 5.0], [5.0, 5.0]], np.float32)
    valid = np.array([True, True, True, False])
    labels = np.array([0, 0, 0, 1], np.int32)  # cluster 1 holds only the padded point
    masks, region_valid = (np.asarray(a) for a in hull_masks(points, valid, labels, 2, 12, 12))
    # subsets: {0}, {1}, {0, 1}; then the whole map
    assert region_valid.tolist() == [True, False, True, True]
    assert masks[1].sum() == 0 and (masks[0] == masks[2]).all() and masks[0].sum() > 10


def test_vmap_over_images():
    rng = np.random.default_rng(3)
    points = rng.uniform(0, 16, size=(4, 30, 2)).astype(np.float32)
    valid = np.ones((4, 30), bool)
    labels = jax.vmap(cluster_points, in_axes=(0, 0, None))(points, valid, 3)
    masks, region_valid = jax.vmap(hull_masks, in_axes=(0, 0, 0, None, None, None))(points, valid, labels, 3, 16, 16)
    assert masks.shape == (4, 8, 16, 16) and region_valid.shape == (4, 8)
    single, _ = hull_masks(points[2], valid[2], labels[2], 3, 16, 16)
    np.testing.assert_array_equal(np.asarray(masks[2]), np.asarray(single))


def test_alpha_peaks_are_the_strongest_local_maxima_padded_with_invalid_points():
    alpha = np.zeros((6, 7), np.float32)
    alpha[1, 1], alpha[1, 2] = 0.9, 0.5  # one peak and its weaker neighbour
    alpha[4, 5] = 0.7
    alpha[3, 0] = 0.2
    points, valid = (np.asarray(a) for a in jax.jit(alpha_peaks, static_argnums=1)(alpha, 5))
    assert valid.tolist() == [True, True, True, False, False]
    np.testing.assert_array_equal(points[:3], [[1.5, 1.5], [4.5, 5.5], [3.5, 0.5]])
    few, few_valid = alpha_peaks(np.zeros((2, 2), np.float32), 6)  # more asked than cells, none positive
    assert few.shape == (6, 2) and not np.asarray(few_valid).any()


# ----------------------------------------------------------------------------------------
# salient_point_set against the numpy salient_points


@functools.partial(jax.jit, static_argnames=("image_size", "count", "n_max", "n_min"))
def _point_set(points, valid, alpha, image_size, count, n_max, n_min):
    return salient_point_set(points, valid, alpha, image_size, count, n_max, n_min)


def _assert_ranked_as_numpy(points, valid, alpha, image_size, count, n_max, n_min):
    """The device ranking of padded points equals numpy's of the valid ones, in order; returns its valid."""
    got, got_valid = _point_set(points, valid, alpha, image_size=image_size, count=count, n_max=n_max, n_min=n_min)
    assert got.shape == (count, 2) and got.dtype == np.float32
    assert got_valid.shape == (count,) and got_valid.dtype == bool
    expected, expected_valid = salient_points(points[valid], alpha, image_size, count=count, n_max=n_max, n_min=n_min)
    np.testing.assert_array_equal(np.asarray(got_valid), expected_valid)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6, atol=0)
    return expected_valid


def _pixel_centres(rng, count, image_size):
    return (rng.integers(0, image_size, size=(count, 2)) + 0.5).astype(np.float32)


@pytest.mark.parametrize(("seed", "image_size", "map_shape"), [(0, 64, (8, 8)), (1, 96, (6, 6)), (2, 100, (7, 9)),
                                                             (3, 320, (10, 10)), (4, 448, (28, 28))])
def test_salient_point_set_ranks_detected_points_as_numpy(seed, image_size, map_shape):
    rng = np.random.default_rng(seed)
    alpha = rng.random(map_shape).astype(np.float32) * (rng.random(map_shape) > 0.3)  # some cells at zero
    points = _pixel_centres(rng, 60, image_size)
    valid = rng.random(60) > 0.2
    kept = _assert_ranked_as_numpy(points, valid, alpha, image_size, count=40, n_max=30, n_min=5)
    assert kept.sum() == 30  # more valid points of alpha > 0 than n_max: the detected points, capped


def test_salient_point_set_falls_back_to_the_largest_alpha_cells_below_n_min():
    rng = np.random.default_rng(5)
    alpha = rng.random((6, 6)).astype(np.float32)
    points = _pixel_centres(rng, 8, 96)
    kept = _assert_ranked_as_numpy(points, np.ones(8, bool), alpha, 96, count=20, n_max=16, n_min=10)
    assert kept.sum() == 10  # 8 < n_min points: the 10 largest cells instead


def test_salient_point_set_without_points_or_without_alpha():
    rng = np.random.default_rng(6)
    alpha = rng.random((4, 5)).astype(np.float32)
    points = _pixel_centres(rng, 12, 80)
    none = np.zeros(12, bool)
    assert _assert_ranked_as_numpy(points, none, alpha, 80, count=30, n_max=25, n_min=25).sum() == 20  # every cell
    assert _assert_ranked_as_numpy(points, np.ones(12, bool), np.zeros((4, 5), np.float32), 80,
                                   count=8, n_max=6, n_min=3).sum() == 0  # an all-zero map: no point at all


def test_salient_point_set_breaks_ties_in_detector_order_and_row_major_order():
    alpha = np.array([[0.5, 0.5, 0.0], [0.5, 0.2, 0.5]], np.float32)  # cells of 6 x 4 px in a 12 px square
    # in a detector's order: four points in cells of equal alpha, one in a zero cell, one weaker
    points = np.array([[7.5, 9.5], [0.5, 5.5], [3.0, 2.0], [1.5, 9.5], [9.5, 6.5], [11.5, 1.5]], np.float32)
    valid = np.ones(6, bool)
    _assert_ranked_as_numpy(points, valid, alpha, 12, count=6, n_max=6, n_min=1)
    got, got_valid = _point_set(points, valid, alpha, image_size=12, count=4, n_max=3, n_min=1)
    np.testing.assert_allclose(np.asarray(got), [[7.5 / 6, 9.5 / 4], [0.5 / 6, 5.5 / 4], [0.5, 0.5], [0, 0]],
                               rtol=1e-6)
    assert np.asarray(got_valid).tolist() == [True, True, True, False]
    # no point: the cells, equal alpha in row-major order, the zero cell left out
    cells, cells_valid = _point_set(points, np.zeros(6, bool), alpha, image_size=12, count=6, n_max=6, n_min=6)
    np.testing.assert_array_equal(np.asarray(cells), [[0.5, 0.5], [0.5, 1.5], [1.5, 0.5], [1.5, 2.5], [1.5, 1.5],
                                                      [0, 0]])
    assert np.asarray(cells_valid).tolist() == [True] * 5 + [False]


def test_salient_point_set_on_cell_edges_and_the_image_border():
    """A point on a cell edge belongs to the cell after it; one on the far border to the last cell."""
    alpha = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    for image_size in (12, 30):  # 6 px per cell; 15 x 10 px cells
        step = np.array([image_size / 2, image_size / 3], np.float32)
        points = np.array([[1, 1], [1, 2], [0, 2], [2, 3], [0, 0], [2, 0]], np.float32) * step
        _assert_ranked_as_numpy(points, np.ones(6, bool), alpha, image_size, count=6, n_max=6, n_min=1)


def test_salient_point_set_vmaps_over_images():
    rng = np.random.default_rng(7)
    alpha = rng.random((3, 8, 8)).astype(np.float32)
    points = np.stack([_pixel_centres(rng, 50, 64) for _ in range(3)])
    valid = rng.random((3, 50)) > 0.5
    batched, batched_valid = jax.vmap(lambda p, v, a: salient_point_set(p, v, a, 64, 20, 20, 4))(points, valid, alpha)
    assert batched.shape == (3, 20, 2) and batched_valid.shape == (3, 20)
    for i in range(3):
        single, single_valid = salient_point_set(points[i], valid[i], alpha[i], 64, 20, 20, 4)
        np.testing.assert_array_equal(np.asarray(batched[i]), np.asarray(single))
        np.testing.assert_array_equal(np.asarray(batched_valid[i]), np.asarray(single_valid))
