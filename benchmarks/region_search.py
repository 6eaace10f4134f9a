"""Region search (jeong2017 Eq. 7): exact region matching in tmrjax and PyTorch, and faiss over regions.

Every image is M region vectors (random unit vectors, about 10% of the regions invalid); two
images are as similar as their best-matched pair of valid regions. Three ways to get each
query's top k images:

- exact, tmrjax: `tmrjax.region_search.exact_search`, the jitted `kernels.matching.region_similarity`
  over the database `--block` images at a time, top-k merged across blocks;
- exact, PyTorch: the same computation as a PyTorch user writes it, `torch.einsum` of all region
  pairs of a block, masked, `amax` over the pairs, `torch.topk` merged across blocks (same block
  size); checked to give the same top-k;
- approximate: `tmrjax.region_search.approximate_search` over a faiss index of all valid database
  regions (IndexFlatIP, and HNSW M=32), each valid query region retrieving its `per_region_k`
  nearest regions (HNSW searched with efSearch = max(16, per_region_k)); recall@k against the
  exact top-k.

    python benchmarks/region_search.py --quick                  # 100 queries x 5k images, < 1 minute
    python benchmarks/region_search.py                          # 1000 queries x 100k images x 8 regions x 256
    python benchmarks/region_search.py --images 20000 --json runs/region_search.json

Times are for all queries in one call, also given per 1000 queries; warm-up (compilation) is a
call on the first two blocks, not timed. The two exact sides run in alternating rounds (`--rounds`)
of `--repeats` calls each, so that the drift of a shared machine's load is spread over both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import harness
import numpy as np
import torch


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=1000, help="query images (default: %(default)s)")
    p.add_argument("--images", type=int, default=100_000, help="database images (default: %(default)s)")
    p.add_argument("--regions", type=int, default=8, help="region vectors per image, M (default: %(default)s)")
    p.add_argument("--dim", type=int, default=256, help="region vector dim (default: %(default)s)")
    p.add_argument("--invalid", type=float, default=0.1, help="fraction of invalid regions (default: %(default)s)")
    p.add_argument("-k", type=int, default=100, help="images returned per query (default: %(default)s)")
    p.add_argument("--block", type=int, default=None,
                   help="database images per exact-search step, both sides (default: tmrjax's DEFAULT_BLOCK)")
    p.add_argument("--per-region-k", default="25,100",
                   help="faiss results per query region, comma-separated (default: %(default)s)")
    p.add_argument("--kinds", default="flat,hnsw", help="faiss index kinds (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=1, help="timed calls of each search per round (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternating rounds of tmrjax and torch exact calls; the median of all is reported "
                        "(default: %(default)s)")
    p.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                   help="torch.set_num_threads (default: os.cpu_count() = %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="100 queries x 5,000 images, under a minute (overrides --queries, --images)")
    p.add_argument("--json", help="also write the raw timings to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.queries, args.images = 100, 5_000
    return args


def region_vectors(n: int, m: int, dim: int, invalid: float, rng: np.random.Generator):
    """RegionVectors of n images: uniform unit vectors, each region invalid with probability `invalid`."""
    from tmrjax.region_search import RegionVectors

    vectors = np.empty((n, m, dim), np.float32)
    for start in range(0, n, 10_000):  # chunks keep temporaries small
        x = rng.standard_normal((min(n, start + 10_000) - start, m, dim), dtype=np.float32)
        vectors[start : start + len(x)] = x / np.linalg.norm(x, axis=2, keepdims=True)
    return RegionVectors(vectors, rng.uniform(size=(n, m)) >= invalid)


def torch_exact_search(queries, database, k: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 7 as a PyTorch user writes it: einsum over all region pairs of a block, mask, amax, topk."""
    q, q_valid = torch.from_numpy(queries.vectors), torch.from_numpy(queries.valid)
    top_scores = torch.full((len(q), k), -torch.inf)
    top_images = torch.zeros((len(q), k), dtype=torch.long)
    with torch.inference_mode():
        for start in range(0, len(database.vectors), block):
            t = torch.from_numpy(database.vectors[start : start + block])
            t_valid = torch.from_numpy(database.valid[start : start + block])
            pairs = torch.einsum("qmd,ntd->qnmt", q, t)
            pairs = pairs.masked_fill(~(q_valid[:, None, :, None] & t_valid[None, :, None, :]), -torch.inf)
            scores = pairs.amax(dim=(2, 3))
            images = torch.arange(start, start + len(t)).expand(len(q), -1)
            top_scores, at = torch.topk(torch.cat([top_scores, scores], dim=1), k, dim=1)
            top_images = torch.cat([top_images, images], dim=1).gather(1, at)
    return top_scores.numpy(), top_images.numpy()


def same_top_k(a_scores, a_indices, b_scores, b_indices) -> dict:
    """How far two top-k lists agree: identical rows, differing positions, and whether every
    difference is a near-tie (the scores at that rank agree to 1e-5)."""
    differ = a_indices != b_indices
    finite = np.isfinite(a_scores) & np.isfinite(b_scores)
    delta = float(np.abs(a_scores - b_scores)[finite].max()) if finite.any() else 0.0
    return {
        "identical_queries": int((~differ.any(axis=1)).sum()),
        "queries": len(a_indices),
        "differing_positions": int(differ.sum()),
        "only_near_ties": bool(np.all(np.abs(a_scores - b_scores)[differ & finite] < 1e-5)),
        "max_abs_score_diff": delta,
    }


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def log(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    import faiss

    from tmrjax.region_search import (
        DEFAULT_BLOCK,
        RegionVectors,
        approximate_search,
        exact_search,
        recall_at_k,
        region_index,
    )

    torch.set_num_threads(args.torch_threads)
    block = args.block or DEFAULT_BLOCK
    per_region_ks = harness.csv_ints(args.per_region_k)
    load = harness.LoadMonitor()
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    database = region_vectors(args.images, args.regions, args.dim, args.invalid, rng)
    queries = region_vectors(args.queries, args.regions, args.dim, args.invalid, rng)
    log(f"data: {args.queries} queries, {args.images:,} images x {args.regions} regions x {args.dim} "
        f"({database.vectors.nbytes / 1e6:.0f} MB), {int(database.valid.sum()):,} valid regions "
        f"({time.perf_counter() - start:.1f}s)")

    # ---------------------------------------------------------------------------- exact
    head = RegionVectors(database.vectors[: 2 * block], database.valid[: 2 * block])
    exact_search(queries, head, min(args.k, len(head.vectors)), block=block)  # compiles the block step
    torch_exact_search(queries, head, min(args.k, len(head.vectors)), block)
    found = {}

    def run_tmrjax():
        found["tmrjax"] = exact_search(queries, database, args.k, block=block)

    def run_torch():
        found["torch"] = torch_exact_search(queries, database, args.k, block)

    exact_times = harness.measure_blocks({"tmrjax": run_tmrjax, "torch": run_torch}, 0, args.repeats, args.rounds, load)
    for name, times in exact_times.items():
        log(f"exact {name}: {harness.median(times):.1f}s")
    exact_scores, exact_indices, _ = found["tmrjax"]
    agreement = same_top_k(exact_scores, exact_indices, *found["torch"])

    # ---------------------------------------------------------------------- approximate
    approx = []
    for kind in harness.csv_list(args.kinds):
        load.sample()
        build_start = time.perf_counter()
        index = region_index(database, kind)
        build_s = time.perf_counter() - build_start
        log(f"{kind}: built over {index.ntotal:,} region vectors in {build_s:.1f}s")
        for per_region_k in per_region_ks:
            out = {}

            if kind == "hnsw":
                index.hnsw.efSearch = max(16, per_region_k)

            def run(per_region_k=per_region_k, out=out, index=index):
                out["found"] = approximate_search(queries, database, args.k, per_region_k, index=index)

            times = harness.measure_blocks({kind: run}, 0, args.repeats, 1, load)[kind]
            recall = recall_at_k(exact_indices, out["found"][1])
            ef_search = index.hnsw.efSearch if kind == "hnsw" else None
            approx.append({"kind": kind, "build_s": build_s, "per_region_k": per_region_k, "ef_search": ef_search,
                           "search_s": times, "recall": recall})
            log(f"{kind} per_region_k={per_region_k}: {harness.median(times):.1f}s, recall@{args.k} {recall:.3f}")
        del index

    # --------------------------------------------------------------------------- tables
    per_1000 = 1000 / args.queries
    flops = 2 * args.dim * args.queries * args.images * args.regions**2  # every region pair's dot product
    print("## region search (tmrjax.region_search, jeong2017 Eq. 7)\n")
    print(harness.machine_header())
    print(f"- torch threads: {torch.get_num_threads()}; faiss OpenMP threads: {faiss.omp_get_max_threads()}")
    print(f"- load during the run: {load.summary()}")
    print(f"- data: {args.queries:,} queries, {args.images:,} database images x {args.regions} regions x dim "
          f"{args.dim} ({database.vectors.nbytes / 1e6:.0f} MB float32), random unit vectors, "
          f"{100 * (1 - database.valid.mean()):.1f}% of database regions invalid; k={args.k}; "
          f"exact: median of {args.repeats * args.rounds} call(s) per side in {args.rounds} alternating round(s), "
          f"approximate: median of {args.repeats}; peak RSS {peak_rss_gb():.2f} GB; whole run "
          f"{time.perf_counter() - start:.0f}s\n")
    print("### exact: every pair of valid regions\n")
    tmrjax_s = harness.median(exact_times["tmrjax"])
    rows = []
    for name, label in (("tmrjax", "tmrjax exact_search (jax, jit)"), ("torch", "PyTorch einsum + amax + topk")):
        s = harness.median(exact_times[name])
        rows.append([label, block, f"{s:.1f}", f"{s * per_1000:.1f}", f"{flops / s / 1e9:.1f}",
                     f"{tmrjax_s / s:.2f}" if name == "torch" else "1.00"])
    print(harness.markdown_table(
        ["exact search", "block (images)", "s (all queries)", "s per 1000 queries", "GFLOP/s",
         "torch speed / tmrjax speed"], rows))
    a = agreement
    ties = "" if not a["differing_positions"] else " (all near-ties)" if a["only_near_ties"] else " (NOT near-ties)"
    print(f"\nsame top-{args.k}: {a['identical_queries']} of {a['queries']} queries identical, "
          f"{a['differing_positions']} positions differ{ties}, "
          f"max |score difference| {a['max_abs_score_diff']:.1e}\n")
    print("### approximate: faiss over all valid region vectors\n")
    rows = []
    for r in approx:
        s = harness.median(r["search_s"])
        rows.append([r["kind"], f"{r['build_s']:.1f}", r["per_region_k"], r["ef_search"] or "-", f"{s:.2f}",
                     f"{s * per_1000:.2f}", f"{tmrjax_s / s:.1f}", f"{r['recall']:.3f}"])
    print(harness.markdown_table(
        ["index", "build s", "per_region_k", "efSearch", "search s (all queries)", "s per 1000 queries",
         "speed-up vs tmrjax exact", f"recall@{args.k} vs exact"], rows))
    print(
        "\nexact: `exact_search` of all queries against the whole database, blocks of `block` images (the "
        "PyTorch side the same blocks, no padding); GFLOP/s counts 2 x dim per region pair. approximate: "
        "`approximate_search` with an index from `region_index` (flat = IndexFlatIP; hnsw = IndexHNSWFlat "
        "M=32, efConstruction 40, searched with efSearch = max(16, per_region_k)); build = adding every "
        "valid region vector. recall: fraction of the exact top-k found, averaged over queries."
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": harness.machine_lines(), "load": load.samples, "args": vars(args),
                       "exact_s": exact_times, "agreement": agreement, "approximate": approx}, f, indent=1)


if __name__ == "__main__":
    main()
