"""Database-side augmentation (DBA) time: tmrjax.rerank.augment_database against the PyTorch way.

For each gallery size: clustered unit vectors (dim 256, as the PCA-whitened pipelines give; the
generator of faiss_search.py), each replaced by l2(x + sum of its n nearest other vectors weighted
by max(score, 0)^alpha), n = 3 and alpha = 3 as the `*_dba_*` configs. Three ways, each timed
whole (neighbour search and aggregation):

- tmrjax: `augment_database` (faiss's exact k-nearest-neighbour search, rows whose n-th neighbour
  ties scored whole);
- tmrjax, whole rows: the same with every row's scores against the whole gallery partitioned
  (`rerank._nearest_others_by_rows`, what it did before);
- PyTorch: blocks of 1,024 rows, `torch.mm` against the gallery, the row's own column masked,
  `torch.topk`, the weighted sum (the way cirtorch-style code does it, blocked so that it fits).

    python benchmarks/database_augmentation.py                     # 20k and 50k vectors
    python benchmarks/database_augmentation.py --sizes 20000       # quick

Agreement with the whole-row path: the rows whose n neighbours differ from its (near-ties that
another matrix product rounds the other way), and the largest difference of an augmented vector.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import harness
import numpy as np
from faiss_search import unit_vectors
from ml_collections import ConfigDict

ROWS_PER_STEP = 1024


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="20000,50000", help="gallery sizes (default: %(default)s)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("-n", type=int, default=3, help="neighbours per vector (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=3.0, help="score exponent (default: %(default)s)")
    p.add_argument("--json", help="also write the raw timings to this file")
    return p.parse_args(argv)


def torch_dba(database: np.ndarray, n: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(augmented (N, D), neighbours (N, n)) the PyTorch way, a block of rows at a time."""
    import torch

    x = torch.from_numpy(database)
    out, found = torch.empty_like(x), torch.empty((len(x), n), dtype=torch.int64)
    with torch.no_grad():
        for start in range(0, len(x), ROWS_PER_STEP):
            block = x[start:start + ROWS_PER_STEP]
            scores = block @ x.T
            rows = torch.arange(len(block))
            scores[rows, start + rows] = -torch.inf
            top, where = torch.topk(scores, n, dim=1)
            total = block + torch.sum(torch.clamp(top, min=0)[..., None] ** alpha * x[where], dim=1)
            out[start:start + len(block)] = total / torch.linalg.vector_norm(total, dim=1, keepdim=True)
            found[start:start + len(block)] = where
    return out.numpy(), found.numpy()


def tmrjax_dba(gallery: np.ndarray, search: ConfigDict, nearest) -> tuple[np.ndarray, np.ndarray]:
    """(augmented, neighbours) of `rerank.augment_database` with its neighbour lists found by `nearest`."""
    from tmrjax import rerank

    found = {}

    def recorded(database, n):
        found["lists"] = nearest(database, n)
        return found["lists"]

    original = rerank._nearest_others
    rerank._nearest_others = recorded
    try:
        out = rerank.augment_database(gallery, search)
    finally:
        rerank._nearest_others = original
    return out, found["lists"][0]


def whole_rows(database: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    from tmrjax import rerank

    return rerank._nearest_others_by_rows(database, n, np.arange(len(database)))


def bench_size(size: int, args, search: ConfigDict, load: harness.LoadMonitor) -> list[dict]:
    """The three ways on one gallery of `size` vectors, compared with the whole-row path."""
    from tmrjax import rerank

    rng = np.random.default_rng(0)
    gallery = unit_vectors(size, args.dim, rng, unit_vectors(max(size // 100, 10), args.dim, rng, None))
    ways = {
        "whole rows": lambda: tmrjax_dba(gallery, search, whole_rows),
        "tmrjax": lambda: tmrjax_dba(gallery, search, rerank._nearest_others),
        "PyTorch": lambda: torch_dba(gallery, args.n, args.alpha),
    }
    outputs, lists, times = {}, {}, {}
    for name, fn in ways.items():
        load.sample()
        start = time.perf_counter()
        outputs[name], lists[name] = fn()
        times[name] = time.perf_counter() - start
        load.sample()
        print(f"  n={size} {name}: {times[name]:.1f} s", file=sys.stderr, flush=True)
    return [{"size": size, "way": name, "seconds": times[name],
             "other_neighbours": int(np.sum(np.any(lists[name] != lists["whole rows"], axis=1))),
             "max_abs_diff": float(np.abs(outputs[name] - outputs["whole rows"]).max())}
            for name in ("tmrjax", "whole rows", "PyTorch")]


def main(argv=None) -> None:
    args = parse_args(argv)
    import faiss
    import torch

    search = ConfigDict({"database_augmentation": args.n, "dba_alpha": args.alpha})
    load = harness.LoadMonitor()
    results = [r for size in harness.csv_ints(args.sizes) for r in bench_size(size, args, search, load)]

    print("## database-side augmentation (tmrjax.rerank.augment_database)\n")
    print(harness.machine_header())
    print(f"- faiss OpenMP threads: {faiss.omp_get_max_threads()}, torch threads: {torch.get_num_threads()}")
    print(f"- load during the run: {load.summary()}")
    print(f"- data: clustered unit vectors, dim {args.dim}; n = {args.n}, alpha = {args.alpha:g}; one timed run each\n")
    by_size = {(r["size"], r["way"]): r["seconds"] for r in results}
    rows = [[f"{r['size']:,}", r["way"], f"{r['seconds']:.1f}", f"{by_size[(r['size'], 'PyTorch')] / r['seconds']:.2f}",
             f"{r['other_neighbours']:,}", f"{r['max_abs_diff']:.1e}"] for r in results]
    print(harness.markdown_table(["gallery", "way", "s", "speed-up vs PyTorch", "rows with other neighbours",
                                  "max abs diff"], rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": harness.machine_lines(), "load": load.samples, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
