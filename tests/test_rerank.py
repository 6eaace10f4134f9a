"""Search-time post-processing (tmrjax.rerank) against loops written from the formulas."""

from __future__ import annotations

import numpy as np
import pytest
from ml_collections import ConfigDict

from tmrjax import metrics
from tmrjax.rerank import _nearest_others, _nearest_others_by_rows, _top, augment_database, expand_queries


def search(query_expansion=0, qe_alpha=3.0, database_augmentation=0, dba_alpha=3.0) -> ConfigDict:
    return ConfigDict(dict(query_expansion=query_expansion, qe_alpha=qe_alpha,
                           database_augmentation=database_augmentation, dba_alpha=dba_alpha))


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def top_others(scores: np.ndarray, row: int, n: int) -> list[int]:
    """The n best columns other than `row`, ties to the lower index (a stable sort of -scores)."""
    order = [int(c) for c in np.argsort(-scores, kind="stable") if c != row]
    return order[:n]


@pytest.mark.parametrize("n", [1, 3, 10, 40, 60])
def test_neighbour_lists_equal_a_stable_sort_also_where_ties_straddle_the_cut(n):
    rng = np.random.default_rng(11)
    scores = np.round(rng.uniform(-1, 1, size=(30, 40)), 1).astype(np.float32)  # 21 values: many ties
    scores[5] = 0.5  # a row all tied
    exclude = np.where(np.arange(30) % 3 == 0, np.arange(30), -1)  # some rows leave one column out
    got, got_scores = _top(scores, n, exclude)
    for i, (row, row_scores) in enumerate(zip(got, got_scores)):
        masked = scores[i].copy()
        if exclude[i] >= 0:
            masked[exclude[i]] = -np.inf
        want = np.argsort(-masked, kind="stable")[:min(n, 40)]
        np.testing.assert_array_equal(row, want)
        np.testing.assert_array_equal(row_scores, masked[want])


def test_off_by_default_leaves_everything_as_it_is():
    db = unit(np.random.default_rng(0).standard_normal((20, 4)))
    assert augment_database(db, search()) is db
    assert expand_queries(db, np.arange(3), search()) is None


def test_alpha_qe_adds_the_top_images_weighted_by_score_to_the_power_alpha():
    rng = np.random.default_rng(1)
    db = unit(rng.standard_normal((40, 6)))
    rows = np.array([3, 17, 30])
    out = expand_queries(db, rows, search(query_expansion=4, qe_alpha=2.0))
    for q, got in zip(rows, out):
        scores = db @ db[q]
        total = db[q].astype(np.float64).copy()
        for t in top_others(scores, q, 4):
            total += max(scores[t], 0.0) ** 2.0 * db[t]
        np.testing.assert_allclose(got, total / np.linalg.norm(total), atol=1e-5)


def test_dba_sums_each_image_with_its_nearest_other_images():
    rng = np.random.default_rng(2)
    db = unit(rng.standard_normal((30, 5)))
    out = augment_database(db, search(database_augmentation=3, dba_alpha=1.0))
    for j in range(len(db)):
        scores = db @ db[j]
        total = db[j].astype(np.float64).copy()
        for t in top_others(scores, j, 3):
            total += max(scores[t], 0.0) * db[t]
        np.testing.assert_allclose(out[j], total / np.linalg.norm(total), atol=1e-5)


def region_database(rng, n=25, regions=3, dim=6):
    db = unit(rng.standard_normal((n, regions, dim)))
    db[::4, 1] = 0.0  # absent regions
    return db


def best_pair(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """jeong2017 Eq. 7 by loops: the best score of a present region pair and b's region in it."""
    best, region = -np.inf, 0
    for x in a:
        for r, y in enumerate(b):
            if x.any() and y.any() and float(x @ y) > best:
                best, region = float(x @ y), r
    return best, region


def test_regional_qe_is_the_mean_of_the_best_matched_regions_of_the_top_images():
    rng = np.random.default_rng(3)
    db = region_database(rng)
    rows = np.array([0, 5, 11])
    out = expand_queries(db, rows, search(query_expansion=4))
    assert out.shape == (3, 1, db.shape[-1])
    for q, got in zip(rows, out):
        matched = [best_pair(db[q], db[t]) for t in range(len(db))]
        scores = np.array([m[0] for m in matched], np.float32)
        total = sum(db[t, matched[t][1]].astype(np.float64) for t in top_others(scores, q, 4))
        np.testing.assert_allclose(got[0], total / np.linalg.norm(total), atol=1e-5)
    # searched as a one-region query (Eq. 8): the metrics take it as such
    ev = metrics.evaluate(db, rows, [[r] for r in rows], query_vectors=out)
    assert len(ev.ranks) == 3


def test_region_dba_keeps_absent_regions_absent_and_present_ones_unit():
    db = region_database(np.random.default_rng(4))
    out = augment_database(db, search(database_augmentation=2))
    present = np.any(db != 0, axis=-1)
    assert np.all(out[~present] == 0)
    np.testing.assert_allclose(np.linalg.norm(out[present], axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("protocol", sorted(metrics.PROTOCOLS))
def test_query_vectors_equal_to_the_query_rows_change_nothing(protocol):
    db = unit(np.random.default_rng(5).standard_normal((200, 8)))
    rows = np.arange(0, 40, 4)
    relevant = metrics.group_relevance(rows, np.repeat(np.arange(5), 2))
    plain = metrics.evaluate(db, rows, relevant, protocol=protocol)
    given = metrics.evaluate(db, rows, relevant, protocol=protocol, query_vectors=db[rows])
    np.testing.assert_array_equal(plain.ap_per_query, given.ap_per_query)
    with pytest.raises(ValueError, match="query_vectors"):
        metrics.evaluate(db, rows, relevant, query_vectors=db[:3])


def test_dba_found_in_row_blocks_equals_one_block(monkeypatch):
    import tmrjax.rerank

    db = region_database(np.random.default_rng(6), n=30)  # region databases are scored a block of rows at a time
    whole = augment_database(db, search(database_augmentation=3))
    monkeypatch.setattr(tmrjax.rerank, "_DBA_ROWS_PER_STEP", 7)
    np.testing.assert_array_equal(augment_database(db, search(database_augmentation=3)), whole)


@pytest.mark.parametrize("n", [1, 3, 10])
def test_dba_neighbours_from_faiss_equal_whole_rows_sorted_also_with_ties_and_duplicates(n):
    rng = np.random.default_rng(12)
    # unit rows of four +-0.5 among eight zeros: inner products are exact multiples of 0.25, many tied
    db = np.zeros((300, 8), np.float32)
    for row in db:
        row[rng.choice(8, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    db[50:60] = db[7]  # a row with ten copies: more tied at the top than faiss is asked for
    got, got_scores = _nearest_others(db, n)
    want, want_scores = _nearest_others_by_rows(db, n, np.arange(len(db)))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_scores, want_scores)
    assert not np.any(got == np.arange(len(db))[:, None])  # never the row itself


def test_dba_neighbours_from_faiss_equal_whole_rows_sorted_on_untied_scores():
    db = unit(np.random.default_rng(14).standard_normal((500, 16)))  # no ties: every row from faiss alone
    got, got_scores = _nearest_others(db, 5)
    want, want_scores = _nearest_others_by_rows(db, 5, np.arange(len(db)))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-6)


def test_dba_neighbours_of_a_database_smaller_than_n_plus_two_are_all_the_other_rows():
    db = unit(np.random.default_rng(13).standard_normal((4, 5)))
    got, _ = _nearest_others(db, 3)
    assert [sorted(row) for row in got.tolist()] == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]


def test_a_query_outside_the_database_expands_with_its_own_vector_and_excludes_nothing():
    rng = np.random.default_rng(7)
    db = unit(rng.standard_normal((40, 6)))
    outside = unit(rng.standard_normal((2, 6)))
    rows = np.array([-1, 12, -1])
    given = np.stack([outside[0], db[12], outside[1]])
    out = expand_queries(db, rows, search(query_expansion=4, qe_alpha=2.0), query_vectors=given)
    for q, own, got in zip(given, rows, out):
        scores = db @ q
        total = q.astype(np.float64).copy()
        for t in top_others(scores, own, 4):  # own = -1: no column is the query's
            total += max(scores[t], 0.0) ** 2.0 * db[t]
        np.testing.assert_allclose(got, total / np.linalg.norm(total), atol=1e-5)
    np.testing.assert_array_equal(out[1], expand_queries(db, rows[1:2], search(query_expansion=4, qe_alpha=2.0))[0])
