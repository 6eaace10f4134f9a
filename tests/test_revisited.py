"""tmrjax.revisited: Easy / Medium / Hard AP worked by hand, and against a loop transcribed from revisitop."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from tmrjax.revisited import (
    DEFAULT_KS,
    compute_ap,
    compute_map,
    evaluate_revisited,
    ranking_from_scores,
)

# Worked example: a database of 6 images, two queries.
#
# Query 0: easy = {1, 4}, hard = {3}, junk = {0}; ranking 2, 0, 1, 5, 3, 4 (image 2 first).
#   Easy (ignored 0, 3): the ranking without them is 2, 1, 5, 4 -> positives 1 and 4 at 0-based ranks 1 and 3.
#     i=0, r=1: P0 = 0/1 = 0,    P1 = 1/2        -> (0 + 1/2) / 2 / 2     = 1/8
#     i=1, r=3: P0 = 1/3,        P1 = 2/4 = 1/2  -> (1/3 + 1/2) / 2 / 2   = 5/24      AP = 1/8 + 5/24 = 1/3
#     1-based ranks 2, 4: P@1 = 0/1; P@5: k' = min(5, 4) = 4 -> 2/4; P@10 = 2/4.
#   Medium (ignored 0): 2, 1, 5, 3, 4 -> positives 1, 3, 4 at ranks 1, 3, 4 (n = 3).
#     i=0, r=1: (0 + 1/2) / 2 / 3   = 1/12
#     i=1, r=3: (1/3 + 2/4) / 2 / 3 = 5/36
#     i=2, r=4: (2/4 + 3/5) / 2 / 3 = 11/60                                   AP = 1/12 + 5/36 + 11/60 = 73/180
#     1-based ranks 2, 4, 5: P@1 = 0; P@5: k' = 5 -> 3/5; P@10: k' = min(10, 5) = 5 -> 3/5.
#   Hard (ignored 0, 1, 4): 2, 5, 3 -> positive 3 at rank 2 (n = 1).
#     i=0, r=2: (0/2 + 1/3) / 2 / 1 = 1/6                                     AP = 1/6
#     1-based rank 3: P@1 = 0; P@5: k' = min(5, 3) = 3 -> 1/3; P@10 = 1/3.
# Query 1: easy = {5}, no hard, no junk; ranking 5, 0, 1, 2, 3, 4.
#   Easy and Medium: positive 5 at rank 0: P0 = 1 (rank 0), P1 = 1/1 -> AP = 1; P@k = 1/1 for every k.
#   Hard: no positives -> excluded (NaN), so Hard's means are query 0's alone.
RANKS = np.array([[2, 0, 1, 5, 3, 4], [5, 0, 1, 2, 3, 4]])
GND = [{"easy": [1, 4], "hard": [3], "junk": [0]}, {"easy": [5], "hard": [], "junk": []}]
EXPECTED_AP = {
    "easy": [Fraction(1, 3), Fraction(1)],
    "medium": [Fraction(73, 180), Fraction(1)],
    "hard": [Fraction(1, 6), None],
}
EXPECTED_P = {  # P@1, P@5, P@10 per query
    "easy": [[0, Fraction(1, 2), Fraction(1, 2)], [1, 1, 1]],
    "medium": [[0, Fraction(3, 5), Fraction(3, 5)], [1, 1, 1]],
    "hard": [[0, Fraction(1, 3), Fraction(1, 3)], None],
}


def test_worked_example():
    results = evaluate_revisited(RANKS, GND)
    assert sorted(results) == ["easy", "hard", "medium"]
    for setup, result in results.items():
        assert result.ks == DEFAULT_KS == (1, 5, 10)
        assert result.ap.shape == (2,) and result.ap.dtype == np.float64
        assert result.precision_at_k.shape == (2, 3)
        assert result.mean_precision_at_k.shape == (3,)
        counted = [q for q, ap in enumerate(EXPECTED_AP[setup]) if ap is not None]
        assert result.num_evaluated == len(counted)
        for q, ap in enumerate(EXPECTED_AP[setup]):
            if ap is None:
                assert np.isnan(result.ap[q]) and np.isnan(result.precision_at_k[q]).all()
            else:
                assert result.ap[q] == pytest.approx(float(ap), abs=1e-15)
                np.testing.assert_allclose(result.precision_at_k[q], [float(p) for p in EXPECTED_P[setup][q]])
        mean_ap = sum(EXPECTED_AP[setup][q] for q in counted) / len(counted)
        assert result.mean_ap == pytest.approx(float(mean_ap), abs=1e-15)
        mean_p = [sum(Fraction(EXPECTED_P[setup][q][j]) for q in counted) / len(counted) for j in range(3)]
        np.testing.assert_allclose(result.mean_precision_at_k, [float(p) for p in mean_p])
    assert results["easy"].mean_ap == pytest.approx(2 / 3)  # (1/3 + 1) / 2
    assert results["medium"].mean_ap == pytest.approx(253 / 360)  # (73/180 + 1) / 2
    assert results["hard"].mean_ap == pytest.approx(1 / 6)  # query 1 excluded, not counted as 0


def test_compute_ap_by_hand():
    # positives at 0-based ranks 0, 2 of 3 listed: (1 + 1)/2/3 + (1/2 + 2/3)/2/3 = 1/3 + 7/36 = 19/36
    # (the third positive is not in the ranking and adds nothing)
    assert compute_ap(np.array([0, 2]), 3) == pytest.approx(19 / 36, abs=1e-15)
    assert compute_ap(np.arange(4), 4) == 1.0  # a perfect ranking


def test_no_query_with_positives_gives_nan():
    result = compute_map(np.array([[0, 1, 2]]), [[]], [[1]])
    assert result.num_evaluated == 0 and np.isnan(result.mean_ap) and np.isnan(result.mean_precision_at_k).all()


def test_ranking_from_scores_is_stable_descending():
    scores = np.array([[0.5, 0.9, 0.5, 0.9, 0.1], [3, 1, 2, 3, 3]])
    ranks = ranking_from_scores(scores)
    np.testing.assert_array_equal(ranks, [[1, 3, 0, 2, 4], [0, 3, 4, 2, 1]])  # ties in index order
    assert ranks.dtype == np.int64
    int_scores = np.array([[np.iinfo(np.int64).min, 0, 5]])  # negation must not overflow
    np.testing.assert_array_equal(ranking_from_scores(int_scores), [[2, 1, 0]])


@pytest.mark.parametrize(
    "ranks, message",
    [
        (np.array([[0, 1, 1]]), "permutation"),
        (np.array([[0, 2, 3]]), "permutation"),  # a top-3 list of a larger database
        (np.array([[0.0, 1.0, 2.0]]), "ranking_from_scores"),
        (np.array([0, 1, 2]), r"\(Q, N\)"),
    ],
)
def test_bad_rankings_are_refused(ranks, message):
    with pytest.raises(ValueError, match=message):
        compute_map(ranks, [[1]] * len(np.atleast_2d(ranks)), [[]] * len(np.atleast_2d(ranks)))


def test_bad_ground_truth_is_refused():
    with pytest.raises(ValueError, match=r"positives\[0\] has indices \[7\] outside the database \[0, 3\)"):
        compute_map(np.array([[0, 1, 2]]), [[7]], [[]])
    with pytest.raises(ValueError, match="one array of database indices per query"):
        compute_map(np.array([[0, 1, 2]]), [[1], [2]], [[], []])
    with pytest.raises(ValueError, match=r"gnd\[0\] lacks \['hard'\]"):
        evaluate_revisited(np.array([[0, 1, 2]]), [{"easy": [1], "junk": []}])


# --------------------------------------------------------------------------- the official loop, transcribed


def _official_compute_ap(ranks, nres):
    ap = 0.0
    recall_step = 1.0 / nres
    for j in range(len(ranks)):
        rank = ranks[j]
        precision_0 = 1.0 if rank == 0 else float(j) / rank
        precision_1 = float(j + 1) / (rank + 1)
        ap += (precision_0 + precision_1) * recall_step / 2.0
    return ap


def _official_compute_map(ranks_nq, gnd, kappas):
    """revisitop python/evaluate.py compute_map, with ranks (N, Q), written out as loops."""
    nq = len(gnd)
    aps, prs = np.zeros(nq), np.zeros((nq, len(kappas)))
    total, pr, nempty = 0.0, np.zeros(len(kappas)), 0
    for i in range(nq):
        qgnd = np.array(gnd[i]["ok"])
        if qgnd.shape[0] == 0:
            aps[i], prs[i, :] = np.nan, np.nan
            nempty += 1
            continue
        qgndj = np.array(gnd[i]["junk"])
        pos = np.array([p for p in range(ranks_nq.shape[0]) if ranks_nq[p, i] in set(qgnd.tolist())])
        junk = [p for p in range(ranks_nq.shape[0]) if ranks_nq[p, i] in set(qgndj.tolist())]
        k, ij, ip = 0, 0, 0
        while ip < len(pos):
            while ij < len(junk) and pos[ip] > junk[ij]:
                k += 1
                ij += 1
            pos[ip] = pos[ip] - k
            ip += 1
        ap = _official_compute_ap(pos, len(qgnd))
        total += ap
        aps[i] = ap
        pos = pos + 1
        for j in range(len(kappas)):
            kq = min(max(pos), kappas[j])
            prs[i, j] = (pos <= kq).sum() / kq
        pr = pr + prs[i, :]
    return total / (nq - nempty), aps, pr / (nq - nempty), prs


def _random_case(rng, q, n, overlapping):
    gnd = []
    for _ in range(q):
        labels = rng.integers(0, 4, n)  # 0 negative, 1 easy, 2 hard, 3 junk
        entry = {key: np.flatnonzero(labels == v) for v, key in ((1, "easy"), (2, "hard"), (3, "junk"))}
        if overlapping:  # the official code does not require disjoint sets; neither does this one
            entry["junk"] = np.concatenate([entry["junk"], rng.choice(n, 3, replace=False)])
        gnd.append(entry)
    gnd[0]["hard"] = np.zeros(0, np.int64)  # a query without hard positives: excluded from Hard
    scores = rng.integers(0, 5, (q, n)).astype(np.float32)  # many ties: the stable order decides
    return scores, gnd


@pytest.mark.parametrize("seed, overlapping", [(0, False), (1, False), (2, True), (3, True)])
def test_matches_the_official_loop_on_random_cases(seed, overlapping):
    rng = np.random.default_rng(seed)
    scores, gnd = _random_case(rng, q=7, n=40, overlapping=overlapping)
    ranks = ranking_from_scores(scores)
    results = evaluate_revisited(ranks, gnd, ks=(1, 3, 5, 10))
    for setup, (positive_keys, ignored_keys) in {
        "easy": (["easy"], ["junk", "hard"]),
        "medium": (["easy", "hard"], ["junk"]),
        "hard": (["hard"], ["junk", "easy"]),
    }.items():
        official_gnd = [
            {"ok": np.concatenate([g[k] for k in positive_keys]), "junk": np.concatenate([g[k] for k in ignored_keys])}
            for g in gnd
        ]
        mean_ap, aps, mean_p, prs = _official_compute_map(ranks.T, official_gnd, [1, 3, 5, 10])
        got = results[setup]
        assert got.mean_ap == pytest.approx(mean_ap, abs=1e-12)
        np.testing.assert_allclose(got.ap, aps, atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(got.mean_precision_at_k, mean_p, atol=1e-12)
        np.testing.assert_allclose(got.precision_at_k, prs, atol=1e-12, equal_nan=True)
    assert np.isnan(results["hard"].ap[0]) and results["hard"].num_evaluated == 6
