"""Gallery index build and search time, and recall of the approximate indexes, via GalleryIndex.

For each gallery size: random unit vectors (dim 256, as the PCA-whitened pipelines give),
417 queries (the METU query set's size), k = 100. Each index kind is built with
`tmrjax.index.GalleryIndex` and the library's default parameters (`tmrjax.index_kinds.INDEX_KINDS`),
searched with all queries in one call, and compared with the exact (flat) top-k:
recall@k = |approximate top-k ∩ exact top-k| / k, averaged over queries. The same search
straight on the wrapped faiss index shows what the id table adds.

    python benchmarks/faiss_search.py                       # 100k and 1M
    python benchmarks/faiss_search.py --sizes 100000        # quick
    python benchmarks/faiss_search.py --data clustered      # vectors with cluster structure

Uniform random unit vectors have no structure: every gallery vector is almost equally far
from a query, the hardest case for IVF-PQ and HNSW. `--data clustered` draws gallery and
queries from a mixture of Gaussians on the sphere, closer to real descriptors.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import tempfile
import time

import harness
import numpy as np

QUERIES = 417  # METU trademark queries
K = 100


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100000,1000000", help="gallery sizes (default: %(default)s)")
    p.add_argument("--kinds", default="flat,ivfpq,hnsw", help="index kinds; flat is always built (the exact reference)")
    p.add_argument("--hnsw-max-size", type=int, default=100_000,
                   help="build hnsw only for galleries up to this size (default: %(default)s; on a shared 2-core "
                        "CPU it takes about 6 minutes for 100k vectors, so 1M would take over an hour)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=QUERIES)
    p.add_argument("-k", type=int, default=K)
    p.add_argument("--data", choices=("uniform", "clustered"), default="uniform")
    p.add_argument("--repeats", type=int, default=3, help="timed searches; the median is reported")
    p.add_argument("--json", help="also write the raw timings to this file")
    return p.parse_args(argv)


def unit_vectors(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray | None) -> np.ndarray:
    """(n, dim) float32 unit vectors: uniform on the sphere, or around random `centres`."""
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # chunks keep temporaries small
        stop = min(n, start + 100_000)
        x = rng.standard_normal((stop - start, dim), dtype=np.float32)
        if centres is not None:
            # noise of norm ~0.7 around a unit centre: neighbours share a centre, cos ~0.65
            x = centres[rng.integers(0, len(centres), stop - start)] + x * np.float32(0.7 / np.sqrt(dim))
        out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def bench_kind(kind: str, gallery: np.ndarray, queries: np.ndarray, k: int, repeats: int, exact_ids) -> dict:
    from tmrjax.index import PIPELINE_HASH_KEY, GalleryIndex
    from tmrjax.index_kinds import INDEX_KINDS

    n, dim = gallery.shape
    ids = [f"{i:07d}.png" for i in range(n)]
    sha = [format(i, "064x") for i in range(n)]
    ones = [1] * n
    with tempfile.TemporaryDirectory(prefix="tmrjax-faiss-bench-") as tmp:
        start = time.perf_counter()
        index = GalleryIndex.create(
            tmp, dim, {"kind": kind}, {PIPELINE_HASH_KEY: "benchmark", "name": "random vectors"})
        index.add(ids, sha, ones, ones, gallery)  # ivfpq: trains on this first add
        build_s = time.perf_counter() - start
        del ids, sha
        search_s, raw_s = [], []
        for _ in range(repeats):
            search_s.append(harness.timed(lambda: index.search(queries, k)))
            raw_s.append(harness.timed(lambda: index._index.search(queries, k)))  # the wrapped faiss index
        _, found = index.search(queries, k)
    if exact_ids is None:
        recall = 1.0
    else:
        recall = float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(found, exact_ids)]))
    return {
        "kind": kind,
        "params": INDEX_KINDS[kind].defaults,
        "n": n,
        "build_s": build_s,
        "search_s": search_s,
        "raw_search_s": raw_s,
        "recall": recall,
        "found": found,
        "peak_rss_gb": peak_rss_gb(),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    import faiss

    kinds = ["flat"] + [k for k in harness.csv_list(args.kinds) if k != "flat"]
    load = harness.LoadMonitor()
    results, skipped = [], []
    for n in harness.csv_ints(args.sizes):
        rng = np.random.default_rng(0)
        centres = None
        if args.data == "clustered":
            centres = unit_vectors(max(n // 100, 10), args.dim, rng, None)
        gallery = unit_vectors(n, args.dim, rng, centres)
        queries = unit_vectors(args.queries, args.dim, rng, centres)
        exact = None
        for kind in kinds:
            if kind == "hnsw" and n > args.hnsw_max_size:
                skipped.append(f"hnsw at {n:,} vectors: not built (--hnsw-max-size {args.hnsw_max_size:,})")
                continue
            load.sample()
            r = bench_kind(kind, gallery, queries, args.k, args.repeats, exact)
            load.sample()
            if kind == "flat":
                exact = r["found"]
            del r["found"]
            results.append(r)
            print(f"  n={n} {kind}: build {r['build_s']:.1f}s, search {harness.median(r['search_s']):.3f}s, "
                  f"recall {r['recall']:.3f}", file=sys.stderr, flush=True)
        del gallery
        gc.collect()

    print("## gallery index (tmrjax.index.GalleryIndex over faiss)\n")
    print(harness.machine_header())
    print(f"- faiss OpenMP threads: {faiss.omp_get_max_threads()}")
    print(f"- load during the run: {load.summary()}")
    print(f"- data: {args.data} unit vectors, dim {args.dim}; {args.queries} queries, k={args.k}; "
          f"median of {args.repeats} searches; peak RSS of the process {peak_rss_gb():.2f} GB\n")
    rows = []
    for r in results:
        search, raw = harness.median(r["search_s"]), harness.median(r["raw_search_s"])
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "exact"
        rows.append([
            f"{r['n']:,}", r["kind"], params, f"{r['build_s']:.1f}", f"{1e3 * search:.0f}",
            f"{1e3 * search / args.queries:.2f}", f"{args.queries / search:.0f}", f"{1e3 * raw:.0f}",
            f"{r['recall']:.3f}",
        ])
    print(harness.markdown_table(
        ["gallery", "index", "params", "build s", "search ms (all queries)", "ms/query", "queries/s",
         "raw faiss search ms", f"recall@{args.k} vs flat"], rows))
    for line in skipped:
        print(f"\n{line}")
    print(
        "\nbuild: `GalleryIndex.create` + one `add` of the whole gallery (for ivfpq this includes training "
        "on it). search: `GalleryIndex.search` of all queries in one call (faiss search + label -> id "
        "lookup); raw faiss: the same search on the wrapped faiss index. recall: fraction of the exact "
        "(flat) top-k found, averaged over queries."
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": harness.machine_lines(), "load": load.samples, "data": args.data,
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
