"""tmrjax/region_search.py: exact and faiss region search against a brute-force loop over region pairs."""

import numpy as np
import pytest

from tmrjax.region_search import RegionVectors, approximate_search, exact_search, recall_at_k, region_index


def _unit(rng, *shape):
    x = rng.normal(size=shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _random_regions(rng, n, m, dim, invalid=0.3):
    valid = rng.uniform(size=(n, m)) > invalid
    valid[:, 0] = True
    return _unit(rng, n, m, dim), valid


def _brute_force(queries, database, k):
    """Eq. 7 by loops over every pair of valid regions, in float64; ranked by (score down, index up)."""
    q_vectors, q_valid = queries
    d_vectors, d_valid = database
    scores = np.full((len(q_vectors), len(d_vectors)), -np.inf)
    best = np.zeros(scores.shape, int)
    for i in range(len(q_vectors)):
        for j in range(len(d_vectors)):
            for a in np.flatnonzero(q_valid[i]):
                for b in np.flatnonzero(d_valid[j]):
                    s = float(q_vectors[i, a].astype(np.float64) @ d_vectors[j, b])
                    if s > scores[i, j]:
                        scores[i, j], best[i, j] = s, b
    order = np.stack([np.lexsort((np.arange(len(row)), -row))[:k] for row in scores])
    return np.take_along_axis(scores, order, 1), order, np.take_along_axis(best, order, 1)


def _signed_basis(rng, n, m, dim):
    """Regions that are +-e_i: every cosine is exactly -1, 0 or 1, so ties are exact in any order of sums."""
    vectors = np.zeros((n, m, dim), np.float32)
    axes = rng.integers(0, dim, (n, m))
    signs = rng.choice(np.array([-1.0, 1.0], np.float32), (n, m))
    np.put_along_axis(vectors, axes[..., None], signs[..., None], axis=2)
    return vectors


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    db_vectors, db_valid = _random_regions(rng, 23, 4, 8)
    db_valid[5] = False  # an image with no valid region
    q_vectors, q_valid = _random_regions(rng, 6, 3, 8)
    return (q_vectors, q_valid), (db_vectors, db_valid)


def test_exact_search_is_the_best_pair_of_every_image(data):
    queries, database = data
    k, block = 23, 4  # k larger than a block; the last block is padded; all images ranked
    scores, indices, best = exact_search(RegionVectors(*queries), RegionVectors(*database), k, block=block)
    assert scores.shape == indices.shape == best.shape == (6, k)
    assert (scores.dtype, indices.dtype, best.dtype) == (np.float32, np.int64, np.int32)
    ref_scores, ref_indices, ref_best = _brute_force(queries, database, k)
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6)
    finite = np.isfinite(ref_scores)
    np.testing.assert_array_equal(best[finite], ref_best[finite])
    assert np.isneginf(scores[:, -1]).all() and (indices[:, -1] == 5).all()  # no valid region: last
    one_block = exact_search(RegionVectors(*queries), RegionVectors(*database), 7)
    np.testing.assert_array_equal(one_block[1], ref_indices[:, :7])


def test_exact_search_breaks_ties_by_the_lower_index_across_blocks():
    rng = np.random.default_rng(1)
    database = (_signed_basis(rng, 30, 3, 4), np.ones((30, 3), bool))
    database[1][[2, 17, 29]] = False  # no valid region: -inf ties, after every 0 and -1
    queries = (_signed_basis(rng, 5, 2, 4), np.ones((5, 2), bool))
    queries[1][4] = False  # a query with no valid region: every image ties at -inf
    scores, indices, _ = exact_search(RegionVectors(*queries), RegionVectors(*database), 30, block=7)
    ref_scores, ref_indices, _ = _brute_force(queries, database, 30)
    np.testing.assert_array_equal(scores, ref_scores)
    np.testing.assert_array_equal(indices, ref_indices)
    assert len(np.unique(ref_scores[0])) < 5  # the data is mostly ties
    np.testing.assert_array_equal(indices[4], np.arange(30))


def test_approximate_search_with_a_flat_index_retrieving_everything_is_exact(data):
    queries, database = RegionVectors(*data[0]), RegionVectors(*data[1])
    everything = int(database.valid.size)
    exact = exact_search(queries, database, 22)  # the 22 images with a valid region
    approx = approximate_search(queries, database, 22, everything, index=region_index(database, "flat"))
    np.testing.assert_array_equal(approx[1], exact[1])
    np.testing.assert_array_equal(approx[2], exact[2])
    np.testing.assert_allclose(approx[0], exact[0], atol=1e-6)
    assert (approx[0].dtype, approx[1].dtype, approx[2].dtype) == (np.float32, np.int64, np.int32)
    # the image with no valid region is never retrieved: an empty slot, not a -inf image
    scores, indices, regions = approximate_search(queries, database, 23, everything)
    assert np.isneginf(scores[:, 22]).all() and (indices[:, 22] == -1).all() and (regions[:, 22] == -1).all()


def test_approximate_search_breaks_ties_like_exact_search():
    rng = np.random.default_rng(2)
    database = RegionVectors(_signed_basis(rng, 30, 3, 4), np.ones((30, 3), bool))
    queries = RegionVectors(_signed_basis(rng, 5, 2, 4), np.ones((5, 2), bool))
    exact = exact_search(queries, database, 30, block=8)
    approx = approximate_search(queries, database, 30, 90)
    np.testing.assert_array_equal(approx[1], exact[1])
    np.testing.assert_array_equal(approx[0], exact[0])


def test_approximate_search_scores_an_image_by_its_best_retrieved_pair(data):
    queries, database = RegionVectors(*data[0]), RegionVectors(*data[1])
    index = region_index(database, "hnsw")
    assert index.ntotal == database.valid.sum()
    scores, indices, regions = approximate_search(queries, database, 5, 2, index=index)
    exact_scores, _, _ = _brute_force(data[0], data[1], 23)
    for i in range(len(indices)):
        found = indices[i][indices[i] >= 0]
        assert len(found) == len(set(found.tolist())) <= 2 * queries.valid[i].sum()
        for s, j, r in zip(scores[i], indices[i], regions[i]):
            if j >= 0:  # a retrieved pair's score is a real pair's cosine, at most the image's Eq. 7 score
                pair = database.vectors[j, r] @ queries.vectors[i][queries.valid[i]].T
                assert np.isclose(pair.max(), s, atol=1e-5) and s <= exact_scores[i].max() + 1e-5


def test_recall_at_k_by_hand():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    approx = np.array([[4, 9, 1, -1], [8, 7, 6, 5]])
    assert recall_at_k(exact, approx) == pytest.approx((2 / 4 + 4 / 4) / 2)
    assert recall_at_k(exact, approx[:, :2]) == pytest.approx((1 / 4 + 2 / 4) / 2)
    with pytest.raises(ValueError, match="same queries"):
        recall_at_k(exact, approx[:1])


def test_region_vectors_checks_shapes_dtypes_and_norms():
    vectors, valid = np.ones((2, 3, 4), np.float32) / 2, np.ones((2, 3), bool)
    RegionVectors(vectors, valid)
    with pytest.raises(ValueError, match=r"\(N, M, D\) float32"):
        RegionVectors(vectors.astype(np.float64), valid)
    with pytest.raises(ValueError, match=r"\(N, M\) = \(2, 3\) bool"):
        RegionVectors(vectors, valid[:, :2])
    with pytest.raises(ValueError, match="bool"):
        RegionVectors(vectors, valid.astype(np.uint8))
    bad = vectors.copy()
    bad[1, 2] *= 2
    with pytest.raises(ValueError, match=r"vectors\[1, 2\] is valid but has norm 2"):
        RegionVectors(bad, valid)
    invalid = valid.copy()
    invalid[1, 2] = False
    RegionVectors(bad, invalid)  # an invalid region may hold anything


def test_searches_check_their_arguments(data):
    queries, database = RegionVectors(*data[0]), RegionVectors(*data[1])
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 23\]"):
        exact_search(queries, database, 24)
    with pytest.raises(ValueError, match="dim"):
        exact_search(RegionVectors(np.ones((1, 1, 1), np.float32), np.ones((1, 1), bool)), database, 1)
    with pytest.raises(ValueError, match="block"):
        exact_search(queries, database, 3, block=0)
    with pytest.raises(ValueError, match="valid regions"):
        approximate_search(queries, database, 3, 4, index=region_index(RegionVectors(*data[0])))
    with pytest.raises(ValueError, match="unknown kind"):
        region_index(database, "ivfpq")
