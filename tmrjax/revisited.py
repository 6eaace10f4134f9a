"""The revisited Oxford / Paris evaluation protocol: Easy, Medium and Hard mAP and mP@k.

Radenovic, Iscen, Tolias, Avrithis, Chum, "Revisiting Oxford and Paris: Large-Scale Image Retrieval
Benchmarking", CVPR 2018, Sec. 3; computed exactly as the official code does (revisitop, python/evaluate.py
`compute_map` and `compute_ap`, with the setups of python/example_evaluate.py). Each query's database images are
`easy`, `hard` or `junk` (or negatives, the rest); a setup says which are positives and which are ignored:

    Easy      positives = easy           ignored = junk + hard
    Medium    positives = easy + hard    ignored = junk
    Hard      positives = hard           ignored = junk + easy

Ignored images are removed from the ranking. With r_i the 0-based rank of the i-th positive (i = 0, 1, ...) in
what remains and n the number of positives the ground truth lists:

    AP     = sum_i (P0_i + P1_i) / 2 / n,    P0_i = i / r_i (1 when r_i = 0),    P1_i = (i + 1) / (r_i + 1)
    P@k    = #{i : r_i + 1 <= k'} / k',      k' = min(k, max_i (r_i + 1))

(the trapezoid between the precision just before and just after each positive; k' is the official cap, so a
query whose last positive is at rank 3 has P@5 = 3/3). A query without positives in a setup gets AP and P@k NaN
and is left out of that setup's mean, as in the official code; mAP is NaN when no query has positives.

Rankings are (Q, N): row q lists all N database indices, the best first (the official code takes the transpose,
(N, Q)). `ranking_from_scores` ranks a (Q, N) score matrix by a stable descending sort: equal scores keep the
order of their database indices (the official example's `np.argsort(-sim, axis=0)` is not stable, so its order
among ties is unspecified).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_KS = (1, 5, 10)
"""The ranks of the official mP@k."""

SETUPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}
"""setup -> (the ground-truth keys of its positives, of its ignored images)."""


@dataclass(frozen=True)
class MapResult:
    """One setup's scores: `ap` (Q,) and `precision_at_k` (Q, len(ks)) are NaN for a query without positives;
    the means are over the `num_evaluated` other queries."""

    mean_ap: float
    mean_precision_at_k: np.ndarray
    ap: np.ndarray
    precision_at_k: np.ndarray
    ks: tuple[int, ...]
    num_evaluated: int

    def __str__(self) -> str:
        mp = ", ".join(f"mP@{k} {100 * p:.2f}" for k, p in zip(self.ks, self.mean_precision_at_k))
        return f"mAP {100 * self.mean_ap:.2f}, {mp} ({self.num_evaluated} queries)"


def ranking_from_scores(scores: Any) -> np.ndarray:
    """(Q, N) scores, higher is better -> (Q, N) int64 database indices, best first; ties in index order."""
    s = np.asarray(scores)
    if s.ndim != 2 or 0 in s.shape:
        raise ValueError(f"tmrjax.revisited: scores must be a non-empty (Q, N) array, got shape {s.shape}")
    if not (np.issubdtype(s.dtype, np.number) and not np.issubdtype(s.dtype, np.complexfloating)):
        raise ValueError(f"tmrjax.revisited: scores must be real numbers, got dtype {s.dtype}")
    if np.issubdtype(s.dtype, np.floating) and not np.isfinite(s).all():
        rows = np.flatnonzero(~np.isfinite(s).all(axis=1))
        raise ValueError(f"tmrjax.revisited: scores of queries {rows[:5].tolist()} are not all finite")
    return np.argsort(-s.astype(np.float64), axis=1, kind="stable")  # float64: exact for float32, no int overflow


def compute_ap(ranks: np.ndarray, num_positives: int) -> float:
    """AP of one query from the sorted 0-based ranks of its positives once ignored images are removed, and the
    number of positives the ground truth lists (revisitop `compute_ap`)."""
    r = np.asarray(ranks, dtype=np.float64)
    i = np.arange(r.size, dtype=np.float64)
    precision_0 = np.where(r > 0, i / np.maximum(r, 1), 1.0)
    precision_1 = (i + 1) / (r + 1)
    return float(((precision_0 + precision_1) / 2).sum() / num_positives)


def compute_map(
    ranks: Any, positives: Sequence[Any], ignored: Sequence[Any], ks: Sequence[int] = DEFAULT_KS
) -> MapResult:
    """mAP and mP@k of a (Q, N) ranking (N = the database size), with the database indices of each query's
    positives and ignored images (revisitop `compute_map`, its `ok` and `junk`)."""
    ranking = _check_ranking(ranks)
    q, n = ranking.shape
    ks = _check_ks(ks)
    positives = _check_sets(positives, "positives", q, n)
    ignored = _check_sets(ignored, "ignored", q, n)
    ap = np.full(q, np.nan)
    precision = np.full((q, len(ks)), np.nan)
    for query in range(q):
        if positives[query].size == 0:
            continue
        at = np.flatnonzero(np.isin(ranking[query], positives[query]))
        skip = np.flatnonzero(np.isin(ranking[query], ignored[query]))
        r = at - np.searchsorted(skip, at, side="left")  # minus the ignored images ranked above each positive
        ap[query] = compute_ap(r, positives[query].size)
        ranks_1 = r + 1
        for j, k in enumerate(ks):
            cut = min(int(ranks_1.max()), k)
            precision[query, j] = (ranks_1 <= cut).sum() / cut
    evaluated = ~np.isnan(ap)
    count = int(evaluated.sum())
    mean_ap = float(ap[evaluated].mean()) if count else float("nan")
    mean_p = precision[evaluated].mean(axis=0) if count else np.full(len(ks), np.nan)
    return MapResult(mean_ap, mean_p, ap, precision, ks, count)


def evaluate_revisited(
    ranks: Any, gnd: Sequence[Mapping[str, Any]], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, MapResult]:
    """Easy, Medium and Hard scores of a (Q, N) ranking; `gnd[q]` holds query q's `easy`, `hard` and `junk`
    database indices (revisitop's `cfg['gnd']`, or the `queries` records of `revisited_landmarks`)."""
    gnd = list(gnd)
    for q, entry in enumerate(gnd):
        absent = [key for key in ("easy", "hard", "junk") if key not in entry]
        if absent:
            raise ValueError(f"tmrjax.revisited: gnd[{q}] lacks {absent}; expected easy, hard and junk indices")
    out = {}
    for setup, (positive_keys, ignored_keys) in SETUPS.items():
        positives = [_joined(entry, positive_keys) for entry in gnd]
        ignored = [_joined(entry, ignored_keys) for entry in gnd]
        out[setup] = compute_map(ranks, positives, ignored, ks)
    return out


def _joined(entry: Mapping[str, Any], keys: tuple[str, ...]) -> np.ndarray:
    parts = [np.asarray(entry[key]).reshape(-1) for key in keys]
    return np.concatenate([p if p.size else np.zeros(0, np.int64) for p in parts])  # [] is float64 to numpy


# --------------------------------------------------------------------------- input checks


def _check_ranking(ranks: Any) -> np.ndarray:
    r = np.asarray(ranks)
    if r.ndim != 2 or 0 in r.shape:
        raise ValueError(f"tmrjax.revisited: ranks must be a non-empty (Q, N) array, got shape {r.shape}")
    if not np.issubdtype(r.dtype, np.integer):
        raise ValueError(
            f"tmrjax.revisited: ranks must hold integer database indices, got dtype {r.dtype}; "
            "rank a score matrix with ranking_from_scores"
        )
    r = r.astype(np.int64)
    bad = np.flatnonzero((np.sort(r, axis=1) != np.arange(r.shape[1])).any(axis=1))
    if bad.size:
        raise ValueError(
            f"tmrjax.revisited: ranks must be (Q, N), each row a permutation of the N = {r.shape[1]} database "
            f"indices (a full ranking, best first); rows {bad[:5].tolist()} are not (a truncated top-k list, "
            "or the official (N, Q) layout, which is the transpose)"
        )
    return r


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1 for k in ks):
        raise ValueError(f"tmrjax.revisited: ks must be positive integers, got {ks!r}")
    return tuple(int(k) for k in ks)


def _check_sets(sets: Sequence[Any], what: str, num_queries: int, num_database: int) -> list[np.ndarray]:
    sets = list(sets)
    if len(sets) != num_queries:
        raise ValueError(
            f"tmrjax.revisited: {what} must hold one array of database indices per query ({num_queries} rows of "
            f"ranks), got {len(sets)}"
        )
    out = []
    for q, values in enumerate(sets):
        rows = np.asarray(values).reshape(-1)
        if rows.size and not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(f"tmrjax.revisited: {what}[{q}] must hold integer indices, got dtype {rows.dtype}")
        rows = rows.astype(np.int64)
        outside = rows[(rows < 0) | (rows >= num_database)]
        if outside.size:
            raise ValueError(
                f"tmrjax.revisited: {what}[{q}] has indices {outside[:5].tolist()} outside the database "
                f"[0, {num_database})"
            )
        out.append(rows)
    return out
