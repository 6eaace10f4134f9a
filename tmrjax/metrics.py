"""METU trademark retrieval metrics: NAR and MAP@k, under the official protocol or hu2024's.

``"metu-official"`` is the MATLAB evaluation by the dataset's authors (Tursun et al. 2017): the
database holds every image, queries included; each query stays in the database and counts among
its own relevant items (its group, itself included); ranks are 1-based and ties are broken
against the system (a relevant item gets the last rank among items with an equal score)::

    NAR    = (sum_r rank_r - Nrel (Nrel + 1) / 2) / (N Nrel)
    AP@K   = sum_{i : rank_i < K} (i / rank_i) / Nrel        (strict cutoff, all Nrel in the divisor)
    AP     = sum_i (i / rank_i) / Nrel                       (K = infinity)

with rank_1 <= rank_2 <= ... the ranks of the relevant items and i the position of an item among
them. ``"hu2024"`` writes it as in Hu et al. 2024, Eq. 13-14: the query is removed from the database
(N - 1 items) and from its relevant set, and ``AP@k = sum_{i=1}^{k} P(i) rel(i) / min(Nrel, k)``.
Eq. 13 sums positions 1..k, so here an item counts when rank <= k (inclusive), and each counted
item contributes P(rank_i) = i / rank_i as in the official code.

Scores are float32 inner products of l2-normalised vectors (the ranking of squared Euclidean
distance) and exact float equality is a tie, under both protocols. Ties are therefore only as good
as the scores are consistent, which this module makes sure of:

* every score comes from the same BLAS call shape (all queries, fixed-size database blocks with the
  last block zero-padded), so identical stored vectors get bitwise-identical scores wherever they
  sit; BLAS kernels otherwise change with the matrix shape and round differently;
* a query's own score is taken from that same product (the query *is* its stored database row),
  and the scores of the relevant items used as thresholds are read back from the pass that counts
  against them; if they ever differ from the pre-computed ones, the pass is repeated with the
  read-back values, so a rank is always a count over one and the same set of scores;
* under the official protocol, a score is capped at the query's own score,
  ``s'(x) = min(s(x), s(q))``: in distance terms nothing is closer to the query than itself, but
  a near-duplicate whose stored norm is a little above 1 can out-score the query by rounding.
  Such an item ties with the query instead of ranking ahead of it.

Rank of a relevant item r, counted over the database without sorting it:
``rank_r = #{x : s'(x) >= s'(r)}`` (= 1 + #greater + #other equal; r counts itself).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Rows whose l2 norm is further than this from 1 are rejected (same tolerance as tmrjax.index).
NORM_TOLERANCE = 1e-3
# Scores held in memory at once (per block of database rows, for all queries): 2**25 float32 = 128 MiB.
_BLOCK_SCORES = 1 << 25
# Fewer query rows than this send matrix products down BLAS paths that round differently.
_MIN_QUERY_ROWS = 8


@dataclass(frozen=True)
class Protocol:
    """How the query and the cutoff k are treated; the formulas are in the module docstring."""

    name: str
    query_in_database: bool  # the query is ranked among the database and is one of its relevant items
    cutoff_inclusive: bool  # AP@k counts rank <= k (else rank < k)
    divide_by_min_nrel_k: bool  # AP@k divides by min(Nrel, k) (else by Nrel)


PROTOCOLS: dict[str, Protocol] = {
    "metu-official": Protocol("metu-official", query_in_database=True, cutoff_inclusive=False,
                              divide_by_min_nrel_k=False),
    "hu2024": Protocol("hu2024", query_in_database=False, cutoff_inclusive=True, divide_by_min_nrel_k=True),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"tmrjax.metrics: unknown protocol {name!r}; expected one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


# --------------------------------------------------------------------------- per-query formulas


def normalized_average_rank(ranks: np.ndarray, num_database: int) -> float:
    """NAR of one query (tursun2017; hu2024 Eq. 14): 0 when the relevant items fill the top ranks."""
    ranks = np.asarray(ranks, dtype=np.int64)
    nrel = ranks.size
    return float((ranks.sum() - nrel * (nrel + 1) / 2) / (num_database * nrel))


def average_precision(ranks: np.ndarray, k: int | None = None, protocol: str = "metu-official") -> float:
    """AP@k of one query from the 1-based ranks of all its relevant items; ``k=None`` is the full AP.

    Official: items with rank < k, divided by Nrel. hu2024 (Eq. 13): rank <= k, divided by min(Nrel, k).
    """
    proto = get_protocol(protocol)
    ranks = np.sort(np.asarray(ranks, dtype=np.int64))
    nrel = ranks.size
    precision = np.arange(1, nrel + 1) / ranks
    if k is None:
        return float(precision.sum() / nrel)
    kept = ranks <= k if proto.cutoff_inclusive else ranks < k
    divisor = min(nrel, k) if proto.divide_by_min_nrel_k else nrel
    return float(precision[kept].sum() / divisor)


# --------------------------------------------------------------------------- input checks


def _check_database(database_vectors: Any) -> np.ndarray:
    db = np.asarray(database_vectors)
    if db.ndim not in (2, 3) or 0 in db.shape:
        raise ValueError(f"tmrjax.metrics: database_vectors must be a non-empty (N, D) array, or (N, R, D) region "
                         f"vectors, got shape {db.shape}")
    if not np.issubdtype(db.dtype, np.floating):
        raise ValueError(f"tmrjax.metrics: database_vectors must be floating point, got dtype {db.dtype}")
    db = np.ascontiguousarray(db, dtype=np.float32)
    norms = np.sqrt(np.einsum("...d,...d->...", db, db, dtype=np.float64))
    # Region vectors: an absent region is all zero (norm 0) and is never matched.
    wrong = ~(np.abs(norms - 1.0) <= NORM_TOLERANCE) & ~((norms == 0) & (db.ndim == 3))  # NaN/inf land here too
    bad = np.argwhere(wrong)
    if bad.size:
        shown = ", ".join(f"row {tuple(int(i) for i in r) if len(r) > 1 else int(r[0])}: {norms[tuple(r)]:.6g}"
                          for r in bad[:5])
        raise ValueError(
            f"tmrjax.metrics: database_vectors must be l2-normalised (|norm - 1| <= {NORM_TOLERANCE}"
            f"{'; or all zero for an absent region' if db.ndim == 3 else ''}); "
            f"{len(bad)} rows are not ({shown}{', ...' if len(bad) > 5 else ''}). Normalise them where they "
            "are produced, so that the evaluation scores exactly what the index holds."
        )
    return db


def _check_rows(values: Any, what: str, num_database: int) -> np.ndarray:
    rows = np.asarray(values)
    if rows.ndim != 1 or rows.size == 0:
        raise ValueError(
            f"tmrjax.metrics: {what} must be a non-empty 1-D array of database rows, got shape {rows.shape}"
        )
    if not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"tmrjax.metrics: {what} must hold integer database rows, got dtype {rows.dtype}")
    rows = rows.astype(np.int64)
    out = rows[(rows < 0) | (rows >= num_database)]
    if out.size:
        raise ValueError(f"tmrjax.metrics: {what} has rows {out[:5].tolist()} outside the database [0, {num_database})")
    return rows


def _check_relevant(relevant: Sequence[Any], query_rows: np.ndarray, num_database: int,
                    proto: Protocol) -> list[np.ndarray]:
    """The protocol's relevant rows per query: the group as given (official) or without the query (hu2024)."""
    relevant = list(relevant)
    if len(relevant) != query_rows.size:
        raise ValueError(
            f"tmrjax.metrics: relevant must hold one array of rows per query ({query_rows.size}), got {len(relevant)}"
        )
    sets = []
    for i, (query, group) in enumerate(zip(query_rows, relevant)):
        rows = _check_rows(group, f"relevant[{i}]", num_database)
        if np.unique(rows).size != rows.size:
            raise ValueError(f"tmrjax.metrics: relevant[{i}] lists a row twice: {rows.tolist()}")
        if query not in rows:
            raise ValueError(
                f"tmrjax.metrics: relevant[{i}] must contain its query's own row {query} (the query's group, "
                f"itself included), got {rows.tolist()}"
            )
        if not proto.query_in_database:
            rows = rows[rows != query]
            if rows.size == 0:
                raise ValueError(
                    f"tmrjax.metrics: query {i} (row {query}) has no relevant item besides itself, which "
                    f"protocol {proto.name!r} removes; AP and NAR are undefined"
                )
        sets.append(rows)
    return sets


def _block_rows(chunk_rows: int | None, num_queries: int, num_database: int, region_pairs: int = 1) -> int:
    if chunk_rows is None:
        chunk_rows = _BLOCK_SCORES // (max(num_queries, _MIN_QUERY_ROWS) * region_pairs)
    elif isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise ValueError(f"tmrjax.metrics: chunk_rows must be a positive int, got {chunk_rows!r}")
    chunk_rows = max(1, min(int(chunk_rows), num_database))
    return -(-chunk_rows // 64) * 64  # a multiple of 64 so that packed masks view as uint64


# --------------------------------------------------------------------------- scoring and counting


def _query_block(database: np.ndarray, query_rows: np.ndarray, chunk_rows: int | None,
                 query_vectors: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """The queries (the database's `query_rows`, or `query_vectors`) padded to at least
    `_MIN_QUERY_ROWS` with zeros, and the database block size."""
    vectors = database[query_rows] if query_vectors is None else query_vectors
    queries = np.zeros((max(query_rows.size, _MIN_QUERY_ROWS), *vectors.shape[1:]), np.float32)
    queries[: query_rows.size] = vectors
    region_pairs = database.shape[1] * queries.shape[1] if database.ndim == 3 else 1
    return queries, _block_rows(chunk_rows, queries.shape[0], database.shape[0], region_pairs)


def _check_queries(query_vectors: Any, database: np.ndarray, query_rows: np.ndarray) -> np.ndarray | None:
    """Query vectors that replace the database's query rows (an expanded query, `tmrjax.rerank`):
    (Q, D) for a database of vectors, (Q, R_q, D) for region vectors, unit or absent like the database."""
    if query_vectors is None:
        return None
    vectors = _check_database(query_vectors)
    want = database.ndim == vectors.ndim and vectors.shape[-1] == database.shape[-1]
    if not want or vectors.shape[0] != query_rows.size:
        raise ValueError(f"tmrjax.metrics: query_vectors {vectors.shape} must be one per query row ({query_rows.size}) "
                         f"of the database's kind {database.shape[1:]}")
    return vectors


def _score_blocks(database: np.ndarray, queries: np.ndarray, block: int,
                  rows: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(start, scores (Qp, block)) over database[rows] (all rows if None), every product the same shape.

    Columns past the end are -inf. For region vectors (N, R, D), an image pair scores its best pair of
    present regions (jeong2017 Eq. 7), -inf without one. The yielded array is reused: consume it
    before the next step.
    """
    total = database.shape[0] if rows is None else rows.size
    scores = np.empty((queries.shape[0], block), np.float32)
    padded = np.zeros((block, *database.shape[1:]), np.float32)
    regional = database.ndim == 3
    if regional:
        regions, query_regions = database.shape[1], queries.shape[1]
        flat_queries = queries.reshape(-1, queries.shape[-1])
        absent_query = ~np.any(flat_queries != 0, axis=1)
        pairs = np.empty((flat_queries.shape[0], block * regions), np.float32)
    for start in range(0, total, block):
        stop = min(start + block, total)
        if rows is not None:
            padded[: stop - start] = database[rows[start:stop]]
            padded[stop - start:] = 0
            vectors = padded
        elif stop - start < block:
            padded[: stop - start] = database[start:stop]
            padded[stop - start:] = 0
            vectors = padded
        else:
            vectors = database[start:stop]
        if regional:
            flat = vectors.reshape(-1, vectors.shape[-1])
            np.matmul(flat_queries, flat.T, out=pairs)
            pairs[absent_query] = -np.inf
            pairs[:, ~np.any(flat != 0, axis=1)] = -np.inf
            np.max(pairs.reshape(queries.shape[0], query_regions, block, regions), axis=(1, 3), out=scores)
        else:
            np.matmul(queries, vectors.T, out=scores)
        scores[:, stop - start:] = -np.inf
        yield start, scores


def _gather(scores: np.ndarray, start: int, pair_query: np.ndarray, pair_col: np.ndarray,
            out: np.ndarray) -> None:
    """Copy the scores of the (query, column) pairs whose column falls in this block (pairs sorted by column)."""
    lo, hi = np.searchsorted(pair_col, [start, start + scores.shape[1]])
    out[lo:hi] = scores[pair_query[lo:hi], pair_col[lo:hi] - start]


def _presumed_scores(database: np.ndarray, queries: np.ndarray, block: int, pair_query: np.ndarray,
                     pair_row: np.ndarray) -> np.ndarray:
    """Scores of the (query, row) pairs, by the same product shape as the counting pass."""
    rows, pair_col = np.unique(pair_row, return_inverse=True)
    order = np.argsort(pair_col, kind="stable")
    out = np.empty(pair_row.size, np.float32)
    sorted_out = np.empty(pair_row.size, np.float32)
    for start, scores in _score_blocks(database, queries, block, rows):
        _gather(scores, start, pair_query[order], pair_col[order], sorted_out)
    out[order] = sorted_out
    return out


def _count_at_least(database: np.ndarray, queries: np.ndarray, block: int, thresholds: np.ndarray,
                    pair_query: np.ndarray, pair_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """counts[q, j] = #{x : s(q, x) >= thresholds[q, j]}, and the scores of the pairs (sorted by row) on the way."""
    counts = np.zeros(thresholds.shape, np.int64)
    seen = np.empty(pair_row.size, np.float32)
    mask = np.empty((queries.shape[0], block), bool)
    for start, scores in _score_blocks(database, queries, block):
        _gather(scores, start, pair_query, pair_row, seen)
        for j in range(thresholds.shape[1]):
            np.greater_equal(scores, thresholds[:, j:j + 1], out=mask)
            words = np.packbits(mask, axis=1).view(np.uint64)
            counts[:, j] += np.bitwise_count(words).sum(axis=1, dtype=np.int64)
    return counts, seen


def _ranks(database: np.ndarray, query_rows: np.ndarray, rel_sets: list[np.ndarray], proto: Protocol,
           chunk_rows: int | None, query_vectors: np.ndarray | None = None) -> list[np.ndarray]:
    num_queries, max_rel = query_rows.size, max(r.size for r in rel_sets)
    queries, block = _query_block(database, query_rows, chunk_rows, query_vectors)

    # Pairs whose scores are needed: (query, each relevant row) in slots [0, max_rel), (query, itself) in slot max_rel.
    slot_query = np.repeat(np.arange(num_queries), [r.size for r in rel_sets])
    slot_index = np.concatenate([np.arange(r.size) for r in rel_sets])
    pair_query = np.concatenate([slot_query, np.arange(num_queries)])
    pair_slot = np.concatenate([slot_index, np.full(num_queries, max_rel)])
    pair_row = np.concatenate(rel_sets + [query_rows])
    order = np.argsort(pair_row, kind="stable")
    pair_query, pair_slot, pair_row = pair_query[order], pair_slot[order], pair_row[order]

    def thresholds_from(pair_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        table = np.full((queries.shape[0], max_rel + 1), np.inf, np.float32)
        table[pair_query, pair_slot] = pair_scores
        rel, own = table[:, :max_rel], table[:, max_rel:]
        return (np.minimum(rel, own) if proto.query_in_database else rel), own

    presumed = _presumed_scores(database, queries, block, pair_query, pair_row)
    counts, seen = _count_at_least(database, queries, block, thresholds_from(presumed)[0], pair_query, pair_row)
    if not np.array_equal(seen, presumed):
        # BLAS rounded the pre-computation differently: count again against the scores actually ranked.
        counts, again = _count_at_least(database, queries, block, thresholds_from(seen)[0], pair_query, pair_row)
        if not np.array_equal(again, seen):
            raise RuntimeError("tmrjax.metrics: BLAS returned different scores for the same product twice")
    thresholds, own = thresholds_from(seen)
    if not proto.query_in_database:
        counts -= own >= thresholds  # the query's own row is not part of the database
    return [counts[q, : rel_sets[q].size].copy() for q in range(num_queries)]


# --------------------------------------------------------------------------- public API


def similarities(database_vectors: np.ndarray, query_rows: Sequence[int] | np.ndarray,
                 chunk_rows: int | None = None, query_vectors: np.ndarray | None = None) -> np.ndarray:
    """(Q, N) float32 scores the evaluation ranks by (before the official cap at the query's own score).

    Materialises Q x N floats: meant for small problems, tests and inspection (and the neighbour
    lists of query expansion). `query_vectors` as in `evaluate`.
    """
    database = _check_database(database_vectors)
    rows = _check_rows(query_rows, "query_rows", database.shape[0])
    queries, block = _query_block(database, rows, chunk_rows, _check_queries(query_vectors, database, rows))
    out = np.empty((rows.size, database.shape[0]), np.float32)
    for start, scores in _score_blocks(database, queries, block):
        stop = min(start + block, database.shape[0])
        out[:, start:stop] = scores[: rows.size, : stop - start]
    return out


def ranks_of_relevant(database_vectors: np.ndarray, query_rows: Sequence[int] | np.ndarray,
                      relevant: Sequence[Sequence[int] | np.ndarray], protocol: str = "metu-official",
                      chunk_rows: int | None = None) -> list[np.ndarray]:
    """Worst-case 1-based ranks of each query's relevant items, in the order of ``relevant[i]``.

    ``relevant[i]`` is the query's group as database rows, the query's own row included; under
    hu2024 the query's row is dropped from it (and from the database) and the ranks follow the
    remaining rows in order.
    """
    proto = get_protocol(protocol)
    database = _check_database(database_vectors)
    rows = _check_rows(query_rows, "query_rows", database.shape[0])
    rel_sets = _check_relevant(relevant, rows, database.shape[0], proto)
    return _ranks(database, rows, rel_sets, proto, chunk_rows)


@dataclass(frozen=True)
class Evaluation:
    """NAR, MAP@k and MAP over a query set, per query and averaged; fractions in [0, 1], not percent."""

    protocol: str
    k: int
    num_database: int  # N in NAR: all images (official) or all but the query (hu2024)
    query_rows: np.ndarray  # (Q,)
    relevant_rows: tuple[np.ndarray, ...]  # the protocol's relevant rows per query
    ranks: tuple[np.ndarray, ...]  # 1-based worst-case ranks, aligned with relevant_rows
    nar_per_query: np.ndarray  # (Q,)
    ap_at_k_per_query: np.ndarray  # (Q,)
    ap_per_query: np.ndarray  # (Q,)
    nar: float = field(init=False)
    map_at_k: float = field(init=False)
    map: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nar", float(self.nar_per_query.mean()))
        object.__setattr__(self, "map_at_k", float(self.ap_at_k_per_query.mean()))
        object.__setattr__(self, "map", float(self.ap_per_query.mean()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary plus per-query detail."""
        return {
            "protocol": self.protocol,
            "k": self.k,
            "num_queries": int(self.query_rows.size),
            "num_database": self.num_database,
            "nar": self.nar,
            "map_at_k": self.map_at_k,
            "map": self.map,
            "per_query": [
                {
                    "query_row": int(q),
                    "relevant_rows": rel.tolist(),
                    "ranks": ranks.tolist(),
                    "nar": float(nar),
                    "ap_at_k": float(ap_k),
                    "ap": float(ap),
                }
                for q, rel, ranks, nar, ap_k, ap in zip(
                    self.query_rows, self.relevant_rows, self.ranks, self.nar_per_query,
                    self.ap_at_k_per_query, self.ap_per_query,
                )
            ],
        }


def evaluate(database_vectors: np.ndarray, query_rows: Sequence[int] | np.ndarray,
             relevant: Sequence[Sequence[int] | np.ndarray], *, k: int = 100,
             protocol: str = "metu-official", chunk_rows: int | None = None,
             query_vectors: np.ndarray | None = None) -> Evaluation:
    """Evaluate retrieval of ``database_vectors[query_rows]`` against the whole database.

    database_vectors: (N, D) l2-normalised rows (cast to float32; a row whose norm is off by more
        than ``NORM_TOLERANCE`` is an error, never silently renormalised: the evaluation must score
        what the index holds). For METU: queries + gallery, every image once. Or (N, R, D) region
        vectors (an absent region all zero): two images score their best-matched pair of regions
        (jeong2017 Eq. 7).
    query_rows: (Q,) the database row of each query.
    relevant: per query, the rows of its group, the query's own row included.
    k: cutoff of MAP@k (100 on METU); the full MAP is always reported too.
    protocol: "metu-official" (default) or "hu2024"; see the module docstring.
    chunk_rows: database rows scored per block (default: 2**25 scores in memory at once).
    query_vectors: what each query searches with, if not its database row: an expanded query
        (`tmrjax.rerank`), (Q, D), or (Q, R_q, D) against region vectors. The protocol is unchanged:
        the query's row stays in the database, relevant to itself, scored by the query vector.
    """
    proto = get_protocol(protocol)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"tmrjax.metrics: k must be a positive int, got {k!r}")
    database = _check_database(database_vectors)
    rows = _check_rows(query_rows, "query_rows", database.shape[0])
    rel_sets = _check_relevant(relevant, rows, database.shape[0], proto)
    ranks = _ranks(database, rows, rel_sets, proto, chunk_rows, _check_queries(query_vectors, database, rows))
    num_database = database.shape[0] - (0 if proto.query_in_database else 1)
    return Evaluation(
        protocol=proto.name,
        k=int(k),
        num_database=num_database,
        query_rows=rows,
        relevant_rows=tuple(rel_sets),
        ranks=tuple(ranks),
        nar_per_query=np.array([normalized_average_rank(r, num_database) for r in ranks]),
        ap_at_k_per_query=np.array([average_precision(r, int(k), proto.name) for r in ranks]),
        ap_per_query=np.array([average_precision(r, None, proto.name) for r in ranks]),
    )


def group_relevance(query_rows: Sequence[int] | np.ndarray, groups: Sequence[Any] | np.ndarray) -> list[np.ndarray]:
    """``relevant`` for evaluate(): for each query, the rows of all queries in its group, itself included.

    groups: (Q,) the group label of each query (METU: its similarity group among the 35).
    """
    rows = np.asarray(query_rows)
    labels = np.asarray(groups)
    if rows.ndim != 1 or labels.shape != rows.shape:
        raise ValueError(f"tmrjax.metrics: query_rows {rows.shape} and groups {labels.shape} must be two (Q,) arrays")
    return [rows[labels == label] for label in labels]


def paired_bootstrap(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, resamples: int = 5000, seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Mean of a - b over queries and its percentile bootstrap interval (queries resampled in pairs).

    `a`, `b`: one score per query of two systems on the same queries (e.g. AP@100). Returns
    (mean difference, lower, upper) at `level`: an interval that excludes 0 says the difference
    is not an accident of which queries the benchmark happens to hold.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_bootstrap: need two equal-length 1-d score arrays, got {a.shape} and {b.shape}")
    diff = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 500):  # blocks of 500 resamples bound the index array's memory
        count = min(500, resamples - start)
        means[start : start + count] = diff[rng.integers(0, diff.size, (count, diff.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(diff.mean()), float(low), float(high)
