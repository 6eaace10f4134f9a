"""kernels/candidates.py: jeong2017's candidate regions, against scipy's exact convex hulls."""

import jax
import numpy as np
import pytest
from scipy.spatial import ConvexHull
from tmrjax.kernels.candidates import alpha_peaks, cluster_points, cluster_subsets, hull_masks


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
