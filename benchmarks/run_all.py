"""Run every benchmark with one command and print their tables (markdown), one after another.

    python benchmarks/run_all.py                                   # CPU defaults (~30 minutes on 2 shared cores)
    python benchmarks/run_all.py --out runs/bench                  # also keep each table (.md) and raw timings (.json)
    JAX_PLATFORMS=cuda python benchmarks/run_all.py --dtype bfloat16 --batch-sizes 1,64

Each benchmark runs in its own process (so one's threads and memory do not disturb the next),
in the order cheapest first. Options given here override the benchmarks' own defaults.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipelines", help="for embed_throughput and torch_reference")
    p.add_argument("--batch-sizes", help="for embed_throughput and torch_reference")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="for embed_throughput and torch_reference")
    p.add_argument("--faiss-sizes", help="gallery sizes for faiss_search, e.g. 100000")
    p.add_argument("--out", type=Path, help="folder for each benchmark's table (.md) and raw timings (.json)")
    args = p.parse_args(argv)

    embed_args = []
    for flag, value in (("--pipelines", args.pipelines), ("--batch-sizes", args.batch_sizes), ("--dtype", args.dtype)):
        if value:
            embed_args += [flag, value]
    runs = [
        ("embed_throughput", embed_args),
        ("torch_reference", embed_args),
        ("conv_layers", []),
        ("efficientnet_lite", embed_args[2:] if args.pipelines else embed_args),  # all but --pipelines
        ("faiss_search", ["--sizes", args.faiss_sizes] if args.faiss_sizes else []),
        ("database_augmentation", []),
    ]
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name, extra in runs:
        cmd = [sys.executable, str(HERE / f"{name}.py"), *extra]
        if args.out:
            cmd += ["--json", str(args.out / f"{name}.json")]
        print(f"\n<!-- {' '.join(cmd)} -->", flush=True)
        start = time.perf_counter()
        # progress goes to stderr as it comes
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        print(done.stdout, flush=True)
        print(f"<!-- {name}: {time.perf_counter() - start:.0f} s, exit status {done.returncode} -->", flush=True)
        if args.out:
            (args.out / f"{name}.md").write_text(done.stdout)
        if done.returncode:
            failed.append(name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
