"""tmrjax.metrics: hand-worked METU examples, the hu2024 variant, and a slow argsort reference."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tmrjax import metrics

# --------------------------------------------------------------------------- the hand-worked example
#
# Query row 0 = (1, 0), so each item's score is its x coordinate (exact in float32: x * 1 + y * 0).
#
#   row  vector        score  relevant
#    0   (1, 0)         1.0    yes (the query itself)
#    1   (1, 0)         1.0    no  (exact duplicate of the query)
#    2   (0.8, 0.6)     0.8    yes
#    3   (0.8, -0.6)    0.8    no
#    4   (0.6, 0.8)     0.6    no
#    5   (0, 1)         0.0    yes
#    6   (0, -1)        0.0    no
#    7   (-1, 0)       -1.0    yes
EXAMPLE = np.array(
    [[1, 0], [1, 0], [0.8, 0.6], [0.8, -0.6], [0.6, 0.8], [0, 1], [0, -1], [-1, 0]], np.float32
)
EXAMPLE_RELEVANT = [[0, 2, 5, 7]]


def test_official_hand_example_ranks_nar_and_ap():
    # Worst case: a relevant item ranks behind every item with an equal score.
    #   row 0: 0 greater + 1 equal (row 1)      -> rank 2
    #   row 2: 2 greater (0, 1) + 1 equal (3)   -> rank 4
    #   row 5: 5 greater + 1 equal (6)          -> rank 7
    #   row 7: 7 greater                        -> rank 8
    # NAR = (2 + 4 + 7 + 8 - 4*5/2) / (8 * 4) = 11/32
    # AP  = (1/2 + 2/4 + 3/7 + 4/8) / 4 = 27/56
    ev = metrics.evaluate(EXAMPLE, [0], EXAMPLE_RELEVANT, k=100)
    assert ev.protocol == "metu-official"
    assert ev.num_database == 8
    np.testing.assert_array_equal(ev.relevant_rows[0], [0, 2, 5, 7])
    np.testing.assert_array_equal(ev.ranks[0], [2, 4, 7, 8])
    assert ev.ranks[0].dtype == np.int64
    assert ev.nar == pytest.approx(11 / 32)
    assert ev.map == pytest.approx(27 / 56)
    # k = 100 > every rank: AP@100 is the full AP.
    assert ev.map_at_k == pytest.approx(27 / 56)


def test_official_ap_at_k_is_strict_an_item_at_rank_k_does_not_count():
    # k = 7: ranks 2 and 4 count (7 is not < 7): (1/2 + 2/4) / 4 = 1/4
    assert metrics.evaluate(EXAMPLE, [0], EXAMPLE_RELEVANT, k=7).map_at_k == pytest.approx(1 / 4)
    # k = 8: ranks 2, 4, 7 count: (1/2 + 2/4 + 3/7) / 4 = 5/14
    assert metrics.evaluate(EXAMPLE, [0], EXAMPLE_RELEVANT, k=8).map_at_k == pytest.approx(5 / 14)
    # Same rule on bare ranks: [1, 100] at k = 100 keeps only rank 1: (1/1) / 2
    assert metrics.average_precision([1, 100], 100) == pytest.approx(0.5)
    assert metrics.average_precision([1, 99], 100) == pytest.approx((1 + 2 / 99) / 2)


def test_hu2024_hand_example_drops_the_query_and_counts_rank_k():
    # The query (row 0) leaves the database (N = 7) and its relevant set (rows 2, 5, 7; Nrel = 3).
    #   row 2: 1 greater (row 1) + 1 equal (row 3) -> rank 3
    #   row 5: 4 greater (1, 2, 3, 4) + 1 equal   -> rank 6
    #   row 7: 6 greater                           -> rank 7
    # NAR = (3 + 6 + 7 - 3*4/2) / (7 * 3) = 10/21
    # AP  = (1/3 + 2/6 + 3/7) / 3 = 23/63
    # AP@6 (rank <= 6, divided by min(3, 6) = 3) = (1/3 + 2/6) / 3 = 2/9
    # AP@5 = (1/3) / 3 = 1/9
    ev = metrics.evaluate(EXAMPLE, [0], EXAMPLE_RELEVANT, k=6, protocol="hu2024")
    assert ev.protocol == "hu2024"
    assert ev.num_database == 7
    np.testing.assert_array_equal(ev.relevant_rows[0], [2, 5, 7])
    np.testing.assert_array_equal(ev.ranks[0], [3, 6, 7])
    assert ev.nar == pytest.approx(10 / 21)
    assert ev.map == pytest.approx(23 / 63)
    assert ev.map_at_k == pytest.approx(2 / 9)
    assert metrics.evaluate(EXAMPLE, [0], EXAMPLE_RELEVANT, k=5, protocol="hu2024").map_at_k == pytest.approx(1 / 9)


def test_hu2024_ap_at_k_divides_by_min_nrel_k_official_by_nrel():
    # Perfect top-4 with k = 2. hu2024: ranks 1, 2 count (<= 2), (1/1 + 2/2) / min(4, 2) = 1.
    # Official: only rank 1 counts (< 2), (1/1) / 4 = 1/4.
    assert metrics.average_precision([1, 2, 3, 4], 2, "hu2024") == pytest.approx(1.0)
    assert metrics.average_precision([1, 2, 3, 4], 2, "metu-official") == pytest.approx(0.25)
    # Full AP (k=None) divides by Nrel under both: (1/1 + 2/4) / 2
    for protocol in metrics.PROTOCOLS:
        assert metrics.average_precision([4, 1], None, protocol) == pytest.approx(0.75)


PERFECT = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1], [-1, 0]], np.float32)


def test_perfect_ranking_gives_nar_0_and_ap_1_under_both_protocols():
    # Scores 1, .8, .6, 0, -1; relevant rows 0, 1, 2 take ranks 1, 2, 3 (official) or 1, 2 (hu2024).
    for protocol, ranks in [("metu-official", [1, 2, 3]), ("hu2024", [1, 2])]:
        ev = metrics.evaluate(PERFECT, [0], [[0, 1, 2]], k=100, protocol=protocol)
        np.testing.assert_array_equal(ev.ranks[0], ranks)
        assert ev.nar == 0.0
        assert ev.map == 1.0
        assert ev.map_at_k == 1.0


WORST = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1], [-0.6, 0.8], [-1, 0]], np.float32)


def test_worst_ranking_puts_relevant_items_last():
    # Scores 1, .8, .6, 0, -.6, -1; relevant rows 0 (the query), 4, 5.
    # Official: ranks 1, 5, 6. NAR = (12 - 6) / (6 * 3) = 1/3; AP = (1/1 + 2/5 + 3/6) / 3 = 1.9/3
    ev = metrics.evaluate(WORST, [0], [[0, 4, 5]])
    np.testing.assert_array_equal(ev.ranks[0], [1, 5, 6])
    assert ev.nar == pytest.approx(1 / 3)
    assert ev.map == pytest.approx(1.9 / 3)
    # hu2024: 5 items, rows 4, 5 at ranks 4, 5: NAR = (9 - 3) / (5 * 2) = 3/5 = (N - Nrel) / N, its maximum.
    # AP = (1/4 + 2/5) / 2 = 0.325
    ev = metrics.evaluate(WORST, [0], [[0, 4, 5]], protocol="hu2024")
    np.testing.assert_array_equal(ev.ranks[0], [4, 5])
    assert ev.nar == pytest.approx(3 / 5)
    assert ev.map == pytest.approx(0.325)


def test_tie_between_relevant_items_gives_both_the_last_rank():
    # Rows 0 (query) and 1 are both (1, 0) and both relevant; row 2 = (0, 1) is not.
    # Each is ranked behind the other: ranks 2, 2. NAR = (4 - 3) / (3 * 2) = 1/6; AP = (1/2 + 2/2) / 2 = 3/4
    db = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    ev = metrics.evaluate(db, [0], [[0, 1]])
    np.testing.assert_array_equal(ev.ranks[0], [2, 2])
    assert ev.nar == pytest.approx(1 / 6)
    assert ev.map == pytest.approx(3 / 4)


def test_item_scoring_above_the_query_itself_ties_with_it_official():
    # Row 1 = (1.0005, 0) is within the norm tolerance and out-scores the query's own 1.0 by rounding.
    # Official caps scores at the query's own, so rows 0 and 1 tie at the top: both rank 2 if relevant,
    # and the query ranks 2 with row 1 irrelevant. Row 2 = (0, 1) ranks 3.
    db = np.array([[1, 0], [1.0005, 0], [0, 1]], np.float32)
    assert metrics.similarities(db, [0])[0, 1] > metrics.similarities(db, [0])[0, 0]
    np.testing.assert_array_equal(metrics.ranks_of_relevant(db, [0], [[0, 1]])[0], [2, 2])
    np.testing.assert_array_equal(metrics.ranks_of_relevant(db, [0], [[0, 2]])[0], [2, 3])
    # hu2024 has no query in the database, hence no cap: row 1 is simply first.
    np.testing.assert_array_equal(metrics.ranks_of_relevant(db, [0], [[0, 1]], protocol="hu2024")[0], [1])


def test_several_queries_average_and_rank_in_relevant_order():
    # Two queries of group A = rows {0, 2}: query 0 = (1, 0) scores are x; query 2 = (0.8, 0.6).
    # Query 0: row 0 -> 2 (tie with row 1), row 2 -> 4 (tie with row 3). NAR = (6 - 3) / 16; AP = (1/2 + 2/4) / 2
    # Query 2 scores: rows 0,1 0.8; row 2 1.0; row 3 0.28; row 4 0.96; row 5 0.6; row 6 -0.6; row 7 -0.8
    #   row 2 -> 1, row 0 -> 4 (behind 2, 4 and its twin row 1). NAR = (5 - 3) / 16; AP = (1/1 + 2/4) / 2
    ev = metrics.evaluate(EXAMPLE, [0, 2], [[0, 2], [2, 0]])
    np.testing.assert_array_equal(ev.ranks[0], [2, 4])
    np.testing.assert_array_equal(ev.ranks[1], [1, 4])
    np.testing.assert_allclose(ev.nar_per_query, [3 / 16, 2 / 16])
    np.testing.assert_allclose(ev.ap_per_query, [0.5, 0.75])
    assert ev.nar == pytest.approx(5 / 32)
    assert ev.map == pytest.approx(0.625)


def test_to_dict_is_json_and_names_its_protocol():
    for protocol in metrics.PROTOCOLS:
        d = json.loads(json.dumps(metrics.evaluate(EXAMPLE, [0], EXAMPLE_RELEVANT, k=7, protocol=protocol).to_dict()))
        assert d["protocol"] == protocol
        assert d["k"] == 7 and d["num_queries"] == 1
        assert set(d) >= {"nar", "map_at_k", "map", "num_database", "per_query"}
        assert d["per_query"][0]["query_row"] == 0
    assert d["per_query"][0]["ranks"] == [3, 6, 7]


def test_group_relevance_lists_each_querys_group_itself_included():
    rel = metrics.group_relevance([10, 11, 12, 13], ["a", "b", "a", "a"])
    assert [r.tolist() for r in rel] == [[10, 12, 13], [11], [10, 12, 13], [10, 12, 13]]


# --------------------------------------------------------------------------- slow reference


def reference_ranks(scores: np.ndarray, query: int, relevant: list[int], protocol: str) -> list[int]:
    """Full descending argsort of one query's scores; each relevant item moves to the end of its tie run."""
    items = np.arange(scores.size)
    if protocol == "metu-official":
        scores = np.minimum(scores, scores[query])
    else:
        items = items[items != query]
        scores = scores[items]
        relevant = [r for r in relevant if r != query]
    order = np.argsort(-scores, kind="stable")
    ordered = scores[order]
    position = np.empty(scores.size, np.int64)
    position[order] = np.arange(scores.size)
    ranks = []
    for r in relevant:
        p = position[np.searchsorted(items, r)]
        while p + 1 < ordered.size and ordered[p + 1] == ordered[p]:
            p += 1
        ranks.append(p + 1)
    return ranks


def reference_metrics(ranks: list[int], num_database: int, k: int, protocol: str) -> tuple[float, float, float]:
    ranks = sorted(ranks)
    nrel = len(ranks)
    nar = (sum(ranks) - nrel * (nrel + 1) / 2) / (num_database * nrel)
    ap = ap_k = 0.0
    for i, rank in enumerate(ranks, start=1):
        ap += i / rank
        if (rank <= k) if protocol == "hu2024" else (rank < k):
            ap_k += i / rank
    return nar, ap_k / (min(nrel, k) if protocol == "hu2024" else nrel), ap / nrel


def random_problem(rng: np.random.Generator, num_db: int, dim: int, num_groups: int, group_size: int):
    """Gaussian unit vectors; groups of queries around shared centres; duplicates injected for ties."""
    db = rng.standard_normal((num_db, dim)).astype(np.float32)
    query_rows = rng.choice(num_db, num_groups * group_size, replace=False)
    groups = np.repeat(np.arange(num_groups), group_size)
    centres = rng.standard_normal((num_groups, dim)).astype(np.float32)
    db[query_rows] = centres[groups] + 0.8 * db[query_rows]
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    free = np.setdiff1d(np.arange(num_db), query_rows)
    targets = rng.choice(free, 3 * query_rows.size, replace=False)
    # Exact copies of queries (irrelevant twins of a relevant item) and of random gallery rows.
    db[targets[: query_rows.size]] = db[query_rows]
    db[targets[query_rows.size:]] = db[rng.choice(free, 2 * query_rows.size)]
    # Two queries of a group made identical: a tie among relevant items.
    db[query_rows[1]] = db[query_rows[0]]
    return db, query_rows, metrics.group_relevance(query_rows, groups)


@pytest.mark.parametrize("protocol", sorted(metrics.PROTOCOLS))
def test_vectorised_ranks_match_slow_argsort_reference_on_random_data_with_ties(protocol):
    rng = np.random.default_rng(0)
    db, query_rows, relevant = random_problem(rng, num_db=3001, dim=16, num_groups=5, group_size=6)
    chunk = 256  # several blocks and a padded last one
    ev = metrics.evaluate(db, query_rows, relevant, k=20, protocol=protocol, chunk_rows=chunk)
    scores = metrics.similarities(db, query_rows, chunk_rows=chunk)
    num_database = db.shape[0] - (protocol == "hu2024")
    ties_seen = 0
    for i, q in enumerate(query_rows):
        expected = reference_ranks(scores[i], q, list(relevant[i]), protocol)
        np.testing.assert_array_equal(ev.ranks[i], expected)
        nar, ap_k, ap = reference_metrics(expected, num_database, 20, protocol)
        assert ev.nar_per_query[i] == pytest.approx(nar)
        assert ev.ap_at_k_per_query[i] == pytest.approx(ap_k)
        assert ev.ap_per_query[i] == pytest.approx(ap)
        ties_seen += np.count_nonzero(np.isin(scores[i], scores[i][relevant[i]])) - len(relevant[i])
    assert ties_seen > 0  # the injected duplicates did produce ties with relevant items


def dyadic_problem(rng: np.random.Generator, num_db: int):
    """Unit vectors with coordinates in {0, +-1/4, +-1/2, +-1}: every dot product is exact, ties are common."""
    dim = 16
    db = np.zeros((num_db, dim), np.float32)
    kind = rng.integers(0, 3, num_db)
    for row, kd in enumerate(kind):
        count, value = [(1, 1.0), (4, 0.5), (16, 0.25)][kd]
        cols = rng.choice(dim, count, replace=False)
        db[row, cols] = value * rng.choice([-1.0, 1.0], count)
    query_rows = rng.choice(num_db, 24, replace=False)
    return db, query_rows, metrics.group_relevance(query_rows, np.arange(24) % 4)


@pytest.mark.parametrize("protocol", sorted(metrics.PROTOCOLS))
def test_ranks_match_reference_on_exact_dyadic_scores_for_any_block_size(protocol):
    # Scores are exact whatever the BLAS kernel, so a plain full matmul is an independent reference.
    db, query_rows, relevant = dyadic_problem(np.random.default_rng(1), 777)
    scores = db[query_rows] @ db.T
    expected = [reference_ranks(scores[i], q, list(relevant[i]), protocol) for i, q in enumerate(query_rows)]
    for chunk in (1, 64, 100, None):
        got = metrics.ranks_of_relevant(db, query_rows, relevant, protocol=protocol, chunk_rows=chunk)
        for i in range(query_rows.size):
            np.testing.assert_array_equal(got[i], expected[i])


def test_ranks_are_recounted_when_presumed_relevant_scores_differ(monkeypatch):
    # If the pre-computed threshold scores ever disagree with the counting pass, the pass is redone
    # against the scores it actually saw: perturb them by one ulp and expect the same ranks.
    db, query_rows, relevant = random_problem(np.random.default_rng(2), num_db=1000, dim=8, num_groups=3,
                                              group_size=4)
    expected = metrics.ranks_of_relevant(db, query_rows, relevant, chunk_rows=128)
    original = metrics._presumed_scores
    monkeypatch.setattr(metrics, "_presumed_scores",
                        lambda *a: np.nextafter(original(*a), np.float32(np.inf)))
    got = metrics.ranks_of_relevant(db, query_rows, relevant, chunk_rows=128)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)


def test_scale_50_queries_200k_database_64d_runs():
    rng = np.random.default_rng(3)
    db = rng.standard_normal((200_000, 64), dtype=np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    query_rows = np.arange(50)
    ev = metrics.evaluate(db, query_rows, metrics.group_relevance(query_rows, np.arange(50) % 5))
    assert ev.nar_per_query.shape == (50,) and ev.ap_per_query.shape == (50,)
    assert all(r.shape == (10,) and r.min() >= 1 and r.max() <= 200_000 for r in ev.ranks)
    assert 0.0 <= ev.nar <= 1.0 and 0.0 < ev.map <= 1.0


# --------------------------------------------------------------------------- input validation


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(database_vectors=EXAMPLE[:, 0]), "non-empty \\(N, D\\)"),
        (dict(database_vectors=EXAMPLE.astype(np.int32)), "floating point"),
        (dict(database_vectors=EXAMPLE * 2), "l2-normalised.*row 0: 2"),
        (dict(database_vectors=np.where(np.arange(8)[:, None] == 3, np.nan, EXAMPLE)), "row 3: nan"),
        (dict(query_rows=[8]), "outside the database \\[0, 8\\)"),
        (dict(query_rows=[0.0]), "integer"),
        (dict(relevant=[]), "one array of rows per query \\(1\\)"),
        (dict(relevant=[[]]), "relevant\\[0\\] must be a non-empty"),
        (dict(relevant=[[0, 2, 2]]), "lists a row twice"),
        (dict(relevant=[[2, 5]]), "must contain its query's own row 0"),
        (dict(relevant=[[0, 9]]), "relevant\\[0\\] has rows \\[9\\] outside"),
        (dict(relevant=[[0]], protocol="hu2024"), "no relevant item besides itself"),
        (dict(protocol="metu"), "unknown protocol 'metu'"),
        (dict(k=0), "k must be a positive int"),
        (dict(chunk_rows=0), "chunk_rows must be a positive int"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, message):
    args = dict(database_vectors=EXAMPLE, query_rows=[0], relevant=EXAMPLE_RELEVANT)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        metrics.evaluate(**args)


def test_paired_bootstrap_interval():
    """A constant difference has a zero-width interval at it; noise around 0 straddles 0."""
    from tmrjax.metrics import paired_bootstrap

    rng = np.random.default_rng(0)
    a = rng.random(400)
    assert paired_bootstrap(a, a - 0.1) == pytest.approx((0.1, 0.1, 0.1))
    mean, low, high = paired_bootstrap(a, a + rng.normal(0, 0.05, 400))
    assert low < 0 < high and low < mean < high
    shifted = paired_bootstrap(a + 0.05 + rng.normal(0, 0.05, 400), a)
    assert 0 < shifted[1] < 0.05 < shifted[2]
    # the percentile interval of the resampled means, as a hand-written loop computes it
    means = []
    r = np.random.default_rng(7)
    d = a - a[::-1]
    for _ in range(500):
        means.append(d[r.integers(0, d.size, d.size)].mean())
    expected = tuple(np.percentile(means, [2.5, 97.5]))
    assert paired_bootstrap(a, a[::-1], resamples=500, seed=7)[1:] == pytest.approx(expected)
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap([1.0, 2.0], [1.0])


def best_region_pair_scores(db: np.ndarray, query_rows: np.ndarray) -> np.ndarray:
    """jeong2017 Eq. 7 by loops: each (query, image) scores its best pair of present (non-zero) regions."""
    out = np.full((query_rows.size, db.shape[0]), -np.inf, np.float32)
    for i, q in enumerate(query_rows):
        for n in range(db.shape[0]):
            for a in db[q]:
                for b in db[n]:
                    if a.any() and b.any():
                        out[i, n] = max(out[i, n], np.float32(a @ b))
    return out


@pytest.mark.parametrize("protocol", sorted(metrics.PROTOCOLS))
def test_region_vectors_rank_by_their_best_matched_region_pair(protocol):
    rng = np.random.default_rng(3)
    num_db, regions = 301, 3
    # Unit vectors with four entries of +-1/2: every product is a multiple of 1/4, exact in any order,
    # so ties are ties; every third image lacks its last region.
    db = np.zeros((num_db, regions, 8), np.float32)
    for n in range(num_db):
        for r in range(regions):
            db[n, r, rng.choice(8, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    db[::3, 2] = 0.0
    query_rows = rng.choice(num_db, 12, replace=False)
    groups = np.repeat(np.arange(4), 3)
    db[query_rows[1::3], 0] = db[query_rows[0::3], 1]  # group members share a region
    relevant = metrics.group_relevance(query_rows, groups)
    ev = metrics.evaluate(db, query_rows, relevant, k=20, protocol=protocol, chunk_rows=64)
    scores = best_region_pair_scores(db, query_rows)
    np.testing.assert_allclose(metrics.similarities(db, query_rows, chunk_rows=64), scores, rtol=0, atol=1e-6)
    for i, q in enumerate(query_rows):
        np.testing.assert_array_equal(ev.ranks[i], reference_ranks(scores[i], q, list(relevant[i]), protocol))


def test_region_vectors_must_be_unit_or_absent():
    db = np.zeros((4, 2, 3), np.float32)
    db[:, 0, 0] = 1.0
    db[2, 1] = [0.5, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"all zero for an absent region.*row \(2, 1\): 0.5"):
        metrics.evaluate(db, [0], [[0]])
