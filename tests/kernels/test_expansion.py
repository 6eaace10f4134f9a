"""kernels/expansion.py: alpha-QE and DBA (global and regional) against numpy loops of the formulas."""

import jax
import numpy as np
import pytest
from tmrjax.kernels.expansion import average_query_expansion, database_augmentation, regional_database_augmentation
from tmrjax.kernels.matching import region_similarity, regional_query_expansion


def _unit(rng, *shape):
    x = rng.normal(size=shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _l2(x):
    return x / np.linalg.norm(x)


def _top(scores, n):
    """Top n columns of each row of a score matrix, ties by lower index: (indices, scores)."""
    order = np.stack([np.lexsort((np.arange(row.size), -row))[:n] for row in scores])
    return order, np.take_along_axis(scores, order, axis=1)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 3.0])
def test_average_query_expansion_is_the_weighted_sum_of_query_and_top_results(alpha):
    rng = np.random.default_rng(0)
    queries, database = _unit(rng, 4, 8), _unit(rng, 20, 8)
    neighbours, scores = _top(queries @ database.T, 5)
    scores[1, 3] = -0.25  # a negative score weighs 0 (alpha > 0) or 1 (alpha = 0)
    neighbours[2, 4], scores[3, 2] = -1, -np.inf  # missing neighbours add nothing
    got = np.asarray(jax.jit(average_query_expansion)(queries, database, neighbours, scores, alpha))
    assert got.shape == (4, 8) and got.dtype == np.float32
    for q in range(4):
        total = queries[q].astype(np.float64)
        for i in range(5):
            if neighbours[q, i] >= 0 and np.isfinite(scores[q, i]):
                total = total + max(scores[q, i], 0.0) ** alpha * database[neighbours[q, i]]
        np.testing.assert_allclose(got[q], _l2(total), atol=1e-6)


def test_plain_average_query_expansion_is_the_mean_of_query_and_top_n():
    rng = np.random.default_rng(1)
    queries, database = _unit(rng, 3, 6), _unit(rng, 9, 6)
    neighbours, scores = _top(queries @ database.T, 4)
    got = np.asarray(average_query_expansion(queries, database, neighbours, scores, alpha=0.0))
    for q in range(3):
        mean = (queries[q] + database[neighbours[q]].sum(axis=0)) / 5
        np.testing.assert_allclose(got[q], _l2(mean), atol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 3.0])
def test_database_augmentation_is_the_weighted_sum_of_each_row_and_its_neighbours(alpha):
    rng = np.random.default_rng(2)
    database = _unit(rng, 12, 8)
    neighbours, scores = _top(database @ database.T, 4)
    np.testing.assert_array_equal(neighbours[:, 0], np.arange(12))  # each row is its own first neighbour
    got = np.asarray(jax.jit(database_augmentation)(database, neighbours, scores, alpha))
    assert got.shape == (12, 8) and got.dtype == np.float32
    for j in range(12):
        total = sum(max(scores[j, i], 0.0) ** alpha * database[neighbours[j, i]].astype(np.float64) for i in range(4))
        np.testing.assert_allclose(got[j], _l2(total), atol=1e-6)
    one = np.asarray(database_augmentation(database, neighbours[:, :1], scores[:, :1], alpha))
    np.testing.assert_allclose(one, database, atol=1e-6)  # n = 1 (only itself) changes nothing


def _regional_dba_reference(vectors, valid, neighbours, alpha):
    out = vectors.astype(np.float64).copy()
    for j in range(len(vectors)):
        for r in np.flatnonzero(valid[j]):
            total = np.zeros(vectors.shape[2])
            for t in neighbours[j]:
                if t < 0 or not valid[t].any():
                    continue
                cosines = {rt: float(vectors[j, r] @ vectors[t, rt]) for rt in np.flatnonzero(valid[t])}
                best = max(cosines, key=cosines.get)
                total += max(cosines[best], 0.0) ** alpha * vectors[t, best]
            out[j, r] = _l2(total)
    return out


@pytest.mark.parametrize("alpha", [0.0, 3.0])
def test_regional_database_augmentation_adds_the_best_matched_region_of_each_neighbour(alpha):
    rng = np.random.default_rng(3)
    vectors = _unit(rng, 9, 4, 6)
    valid = rng.uniform(size=(9, 4)) > 0.3
    valid[:, 0] = True
    valid[7] = False  # an image with no valid region: listed, it adds nothing
    scores, _ = region_similarity(vectors, valid, vectors, valid)
    neighbours, _ = _top(np.asarray(scores), 3)
    neighbours[:7, 0] = np.arange(7)  # (row 7 matches nothing: its list is any three images)
    neighbours[2, 1], neighbours[3, 2] = 7, -1
    got = np.asarray(jax.jit(regional_database_augmentation)(vectors, valid, neighbours, alpha))
    assert got.shape == (9, 4, 6) and got.dtype == np.float32
    ref = _regional_dba_reference(vectors, valid, neighbours, alpha)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_array_equal(got[~valid], vectors[~valid])  # invalid regions unchanged


def test_regional_database_augmentation_of_one_region_images_is_database_augmentation():
    rng = np.random.default_rng(4)
    database = _unit(rng, 10, 5)
    neighbours, scores = _top(database @ database.T, 3)
    regional = regional_database_augmentation(database[:, None], np.ones((10, 1), bool), neighbours, 3.0)
    np.testing.assert_allclose(
        np.asarray(regional)[:, 0], np.asarray(database_augmentation(database, neighbours, scores, 3.0)), atol=1e-6
    )


def test_regional_database_augmentation_steps_over_more_rows_than_one_step():
    rng = np.random.default_rng(5)
    vectors, valid = _unit(rng, 300, 2, 4), np.ones((300, 2), bool)
    neighbours = np.stack([np.arange(300), (np.arange(300) + 1) % 300], axis=1)
    got = np.asarray(regional_database_augmentation(vectors, valid, neighbours, 0.0))
    np.testing.assert_allclose(got, _regional_dba_reference(vectors, valid, neighbours, 0.0), atol=1e-5)


def test_regional_query_expansion_from_a_top_k_list_is_the_flattened_average_query_expansion():
    rng = np.random.default_rng(6)
    q, t = _unit(rng, 3, 4, 6), _unit(rng, 11, 5, 6)
    qv, tv = np.ones((3, 4), bool), rng.uniform(size=(11, 5)) > 0.2
    tv[:, 0] = True
    scores, best = (np.asarray(a) for a in region_similarity(q, qv, t, tv))
    expanded = np.asarray(regional_query_expansion(t, scores, best, num_expansion=4))
    top, top_scores = _top(scores, 4)
    flat = average_query_expansion(
        np.zeros((3, 6), np.float32), t.reshape(-1, 6), top * 5 + np.take_along_axis(best, top, 1), top_scores, 0.0
    )
    np.testing.assert_allclose(np.asarray(flat), expanded, atol=1e-6)


def test_shapes_are_checked_where_they_enter():
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"neighbours must be \(2, n\)"):
        average_query_expansion(x[:2], x, np.zeros((3, 2), int), np.zeros((3, 2)), 0.0)
    with pytest.raises(ValueError, match="scores"):
        database_augmentation(x, np.zeros((4, 2), int), np.zeros((4, 3)), 0.0)
    with pytest.raises(ValueError, match="integer"):
        database_augmentation(x, np.zeros((4, 2)), np.zeros((4, 2)), 0.0)
    with pytest.raises(ValueError, match=r"\(N, M, D\)"):
        regional_database_augmentation(x, np.ones((4, 3), bool), np.zeros((4, 2), int), 0.0)
