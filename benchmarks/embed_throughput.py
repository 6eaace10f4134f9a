"""Embedding throughput of tmrjax pipelines, and the share of time spent outside the backbone.

For each pipeline and batch size, times the whole embed (uint8 images already in host memory
-> l2-normalised vectors on the host, `Pipeline.embed_batch`) and the part after the backbone
(`Pipeline.embed_features` on feature maps computed beforehand: regional pooling, l2,
PCA-whitening, URA weights, sums). Compilation is excluded by warm-up calls; each number is the
median of --repeats timed calls, the measurements interleaved.

    python benchmarks/embed_throughput.py                                  # CPU defaults
    JAX_PLATFORMS=cuda python benchmarks/embed_throughput.py --batch-sizes 1,64 --dtype bfloat16

Configs without default weights run on random ones (shipped backbones on their real weights), and
fitted pipelines get random stand-in artefacts of the right shapes: the work, hence the time, is
the same as with real ones.
"""

from __future__ import annotations

import argparse
import json
import sys

import harness
import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipelines", default=",".join(harness.DEFAULT_PIPELINES),
                   help="comma-separated config names (default: %(default)s)")
    p.add_argument("--batch-sizes", default="1,16",
                   help="comma-separated batch sizes (default: %(default)s; 1,64 on an accelerator)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                   help="backbone compute dtype; kernels accumulate in float32 either way")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (the first one compiles)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls; the median is reported")
    p.add_argument("--images", metavar="DIR",
                   help="embed B images of this folder (evenly spaced over its sorted names; e.g. `tmrjax "
                        "export`'s marks) instead of uniform noise: candidate regions (jeong2017) cost more or "
                        "less with the content")
    p.add_argument("--one-lapack-thread", action="store_true",
                   help="run scipy's OpenBLAS (jaxlib's CPU eigh) on one thread, as the tmrjax commands do "
                        "(tmrjax.cli.single_threaded_lapack); default: the library's default, one per core")
    p.add_argument("--json", help="also write the raw timings to this file")
    return p.parse_args(argv)


def _calls(pipe, images: list, features: list) -> dict:
    """The three timed calls: whole embed, backbone only, everything after the backbone. A pipeline whose
    regions rank points detected in the images gets them detected beforehand for the kernels call, as
    `embed_batch` detects them on the host (counted in its time, not in the kernels')."""
    from tmrjax.data.salient_points import batch_points

    detected = {size: batch_points(x) for size, x in zip(pipe.resolutions, images) if size in pipe.point_sizes}
    points = pipe.points_of(detected) if detected else None
    return {
        "embed": lambda: pipe.embed_batch(images),  # returns numpy: blocks
        "backbone": lambda: jax.block_until_ready([pipe.features_batch(x) for x in images]),
        "kernels": lambda: pipe.embed_features(features, points),
    }


def bench_pipeline(name: str, batch_sizes: list[int], dtype, args, load: harness.LoadMonitor) -> list[dict]:
    from tmrjax.pipeline import RANDOM_WEIGHTS, Pipeline, load_config

    # A config without default weights (ImageNet ResNet50/VGG: a user-side conversion) runs on random ones.
    weights = None if load_config(name).backbone.weights else RANDOM_WEIGHTS
    pipe = Pipeline.create(name, weights=weights, dtype=dtype)
    pipe, arts = harness.stand_in_artefacts(pipe)
    stand_in = arts is not None
    results = []
    for batch in batch_sizes:
        images = (harness.folder_images(args.images, pipe.resolutions, batch) if args.images
                  else harness.random_images(pipe.resolutions, batch))
        features = [pipe.features_batch(x) for x in images]
        jax.block_until_ready(features)
        times = harness.measure_interleaved(
            _calls(pipe, images, features), warmup=args.warmup, repeats=args.repeats, load=load
        )
        embed_s, kernels_s = harness.median(times["embed"]), harness.median(times["kernels"])
        results.append({
            "pipeline": name,
            "backbone": f"{pipe.backbone['arch']} {pipe.config.backbone.tap}",
            "resolutions": list(pipe.resolutions),
            "dim": pipe.dim,
            "dtype": args.dtype,
            "batch": batch,
            "stand_in_artefacts": stand_in,
            "embed_s": times["embed"],
            "backbone_s": times["backbone"],
            "kernels_s": times["kernels"],
            "images_per_s": batch / embed_s,
            "kernel_share": kernels_s / embed_s,
        })
        r = results[-1]
        print(f"  {name} B={batch}: {r['images_per_s']:.2f} img/s, kernels {100 * r['kernel_share']:.1f}%",
              file=sys.stderr, flush=True)
    return results


def table(results: list[dict]) -> str:
    rows = [
        [
            r["pipeline"] + (" *" if r["stand_in_artefacts"] else ""),
            r["backbone"],
            "/".join(map(str, r["resolutions"])),
            r["dtype"],
            r["batch"],
            f"{r['images_per_s']:.2f}",
            f"{1e3 * harness.median(r['embed_s']):.0f}",
            harness.spread(r["embed_s"]),
            f"{1e3 * harness.median(r['backbone_s']):.0f}",
            f"{1e3 * harness.median(r['kernels_s']):.1f}",
            f"{100 * r['kernel_share']:.2f}%",
        ]
        for r in results
    ]
    headers = ["pipeline", "backbone", "input", "dtype", "B", "img/s", "embed ms", "spread", "backbone ms",
               "kernels ms", "kernels share"]
    return harness.markdown_table(headers, rows)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.one_lapack_thread:
        from tmrjax.cli import single_threaded_lapack

        single_threaded_lapack()
    batch_sizes = harness.csv_ints(args.batch_sizes)
    load = harness.LoadMonitor()
    load.sample()
    results, failures = harness.measure_each(
        harness.csv_list(args.pipelines),
        lambda name: bench_pipeline(name, batch_sizes, DTYPES[args.dtype], args, load),
    )
    print("## embed throughput (tmrjax)\n")
    print(harness.machine_header())
    print(f"- load during the run: {load.summary()}")
    print(f"- warm-up {args.warmup} call(s) (compile excluded), median of {args.repeats} timed calls")
    print(f"- images: {'B evenly spaced of ' + args.images if args.images else 'uniform noise'}; scipy's OpenBLAS "
          f"on {'one thread' if args.one_lapack_thread else 'its default threads'}\n")
    print(table(results))
    for f in failures:
        print(f"\n**{f['pipeline']}: failed, not measured**: `{f['error']}`")
    print(
        "\nimg/s: B / median time of `embed_batch` (uint8 in host memory -> vectors in host memory); "
        "embed ms is that time per batch. backbone ms: `features_batch` for every resolution, blocked on. "
        "kernels: median time of `embed_features` on precomputed feature maps; share = kernels / embed. "
        "In `embed_batch` the backbone is dispatched asynchronously and the Python work after it overlaps "
        "with it, so embed ms can be less than backbone ms + kernels ms. "
        "spread: (max - min) / median of the embed timings. "
        f"* {harness.STAND_IN_NOTE}."
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": harness.machine_lines(), "load": load.samples, "results": results,
                       "failures": failures}, f, indent=1)


if __name__ == "__main__":
    main()
