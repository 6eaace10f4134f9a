"""Which tap, resolution, pooling and whitening suit marks on a shipped backbone? Measured, not guessed.

    python benchmarks/settings_sweep.py --backbone efficientnet_lite0 --taps stage6,stage7,head
    python benchmarks/settings_sweep.py --backbone hed_vgg16 --taps conv4_3,conv5_3 --resolutions 224

Builds one config per combination of --taps x --resolutions x --poolings x --whitening and
scores them all with `tmrjax.evaluation.run_eval` on a benchmark (default logo_groups/small,
1,000 distractors): PCA-whitening is fitted on the gallery (distractors) only, never on the query
groups; pipelines of one tap share their backbone passes. Prints a markdown table sorted by
MAP@100 (the rows of benchmarks/RESULTS.md's settings tables) and keeps run_eval's results,
per-query scores and report under --out.

Poolings: ``mac``, ``gem`` (p = 3), ``rmac`` (regional MAC, R-MAC grid L = 3), ``rsmac``.
Whitening: ``none``, or ``DIM`` / ``DIM@POWER`` (PCA-w to DIM dims with eigenvalue ** -POWER,
default power 0.5); a DIM above the descriptor length is skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tmrjax.configs.common import retrieval_config

from tmrjax.convert import SHIPPED
from tmrjax.evaluation import run_eval

POOLINGS = {"mac": ("mac", 0), "gem": ("gem", 0), "rmac": ("mac", 3), "rsmac": ("smac", 3)}


def sweep_configs(backbone: str, taps, resolutions, poolings, whitening, channels: dict[str, int]):
    """One ConfigDict per combination, named ``tap-res-pooling-whitening``."""
    _, arch = SHIPPED[backbone]
    for tap in taps:
        for res in resolutions:
            for pooling in poolings:
                name, levels = POOLINGS[pooling]
                for w in whitening:
                    dim, power = (0, 0.5) if w == "none" else (int(w.split("@")[0]), float(w.split("@")[1])
                                                                if "@" in w else 0.5)
                    width = channels[tap] * (2 if name == "smac" else 1)
                    if dim > width:
                        continue  # PCA cannot give more dims than the descriptor has
                    c = retrieval_config()
                    c.name = f"{tap}-{'+'.join(map(str, res))}-{pooling}-{w}"
                    c.paper_row = f"{backbone} sweep"
                    c.backbone.arch, c.backbone.tap, c.backbone.weights = arch, tap, backbone
                    c.embed.resolutions = tuple(res)
                    c.embed.pooling, c.embed.region_levels = name, levels
                    c.embed.pca_whitening_dim, c.embed.whitening_power = dim, power
                    c.batch_size = 16
                    yield c


def tap_channels(backbone: str, taps) -> dict[str, int]:
    import jax
    import jax.numpy as jnp

    from tmrjax.convert import shipped_backbone
    from tmrjax.weights import load_backbone

    module, variables, _ = load_backbone(shipped_backbone(backbone), taps=tuple(taps))
    shapes = jax.eval_shape(lambda x: module.apply(variables, x), jnp.zeros((1, 64, 64, 3)))
    return {t: shapes[t].shape[-1] for t in taps}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", required=True, choices=sorted(SHIPPED))
    p.add_argument("--taps", required=True, help="comma-separated taps, e.g. stage6,stage7,head")
    p.add_argument("--resolutions", default="224", help="comma-separated; '+' joins a multi-resolution set")
    p.add_argument("--poolings", default="mac,gem,rmac", help=f"some of {', '.join(POOLINGS)}")
    p.add_argument("--whitening", default="none,256,256@0.25", help="none | DIM | DIM@POWER, comma-separated")
    p.add_argument("--dataset", default="logo_groups/small")
    p.add_argument("--max-distractors", type=int, default=1000)
    p.add_argument("--fit-images", type=int, default=1000)
    p.add_argument("--out", type=Path, default=Path("runs/sweep"))
    args = p.parse_args(argv)

    taps = args.taps.split(",")
    resolutions = [tuple(int(r) for r in group.split("+")) for group in args.resolutions.split(",")]
    configs = list(sweep_configs(args.backbone, taps, resolutions, args.poolings.split(","),
                                 args.whitening.split(","), tap_channels(args.backbone, taps)))
    print(f"{len(configs)} configs on {args.backbone}", file=sys.stderr)
    rows, _ = run_eval(args.dataset, configs, args.out / args.backbone, max_distractors=args.max_distractors,
                       fit_images=args.fit_images, log=lambda *a: print(*a, file=sys.stderr))
    print(f"\n{args.dataset}, {args.max_distractors} distractors, PCA-w fitted on {args.fit_images} of them; "
          f"{args.backbone} ({rows[0].weights})\n")
    print("| tap | resolution | pooling | PCA-w | DIM | NAR | MAP@100 | MAP |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -r.map_at_100):
        tap, res, pooling, w = r.method.split("-")
        print(f"| {tap} | {res} | {pooling} | {w} | {r.dim} | {r.nar:.4f} | {100 * r.map_at_100:.2f} | "
              f"{100 * r.map:.2f} |")


if __name__ == "__main__":
    main()
