"""jeong2017's regional second-order pooling in tmrjax against the same computation in PyTorch.

Per image and region mask (the candidate hulls tmrjax proposes, handed to both sides): channel
weights beta (Eq. 2), local descriptors reduced by PCA bases (Eq. 4), alpha-weighted covariance,
matrix logarithm through the eigendecomposition, vec of the upper triangle, l2 (Eq. 5), then
PCA-whitening to D and l2 (Eq. 6): `tmrjax.stages.describe` + `postprocess` for tmrjax,
`torch.linalg.eigh` for PyTorch. Feature maps are random non-negative arrays of the shapes the
jeong2017 configs tap; the PCA bases and whitening are random stand-ins of the fitted shapes.

    python benchmarks/second_order.py                        # ~3 min on 2 shared CPU cores
    python benchmarks/second_order.py --batch-sizes 1,8 --json runs/second_order.json

Both sides get the same inputs; the table says whether their descriptors agree (max |difference|
over valid regions) before it says how fast each is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import harness
import jax
import jax.numpy as jnp
import numpy as np

# name -> (h, w, C) of the tap: EfficientNet-Lite0 head at 320 px, HED VGG16 conv4_3 at 224 px,
# VGG19 conv5_4 at 448 px (jeong2017's layer).
MAPS = {"lite0 head 320": (10, 10, 1280), "hed conv4_3 224": (28, 28, 512), "vgg19 conv5_4 448": (28, 28, 512)}
LOCAL_DIM, WHITENED = 128, 256


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="also write the raw timings to this file")
    return p.parse_args(argv)


def torch_second_order(torch, features, masks, alpha, local_projection, mean, projection, floor=1e-4):
    """Eq. 2, 4, 5, 6 as a PyTorch user writes them, on (B, h, w, C) maps and (B, M, h, w) masks."""
    k = features.shape[-1]
    q = (features > 0).float().mean(dim=(1, 2))  # Eq. 2: the fraction of positive cells per channel
    beta = torch.log((k * 1e-6 + q.sum(dim=-1, keepdim=True)) / (1e-6 + q))
    local = torch.einsum("bhwk,kj->bhwj", features * beta[:, None, None, :], local_projection)  # Eq. 4
    weights = alpha[:, None] * masks
    gram = torch.einsum("bmhw,bhwi,bhwj->bmij", weights, local, local)
    gram = gram / weights.sum(dim=(-2, -1)).clamp_min(1e-12)[..., None, None]
    scale = gram.abs().amax(dim=(-2, -1), keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    values, vectors = torch.linalg.eigh(gram / scale)
    lowest = (floor * values[..., -1:]).clamp_min(torch.finfo(torch.float32).tiny)  # eigh sorts ascending
    logs = torch.log(torch.maximum(values, lowest)) + torch.log(scale[..., 0])
    log_gram = torch.einsum("bmik,bmk,bmjk->bmij", vectors, logs, vectors)
    rows, cols = torch.triu_indices(LOCAL_DIM, LOCAL_DIM)
    vec = log_gram[..., rows, cols] * torch.where(rows == cols, 1.0, 2.0 ** 0.5)
    vec = vec / vec.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # Eq. 5's l2
    white = (vec - mean) @ projection  # Eq. 6
    return white / white.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def bench(name: str, shape, batch: int, args, load) -> dict:
    import torch
    from tmrjax.kernels import aggregation

    from tmrjax.pipeline import load_config
    from tmrjax.stages import REGIONS, describe, postprocess

    torch.set_num_threads(os.cpu_count())
    embed = load_config("jeong2017").embed
    rng = np.random.default_rng(0)
    h, w, c = shape
    features = np.maximum(rng.standard_normal((batch, h, w, c)), 0).astype(np.float32)
    dim = LOCAL_DIM * (LOCAL_DIM + 1) // 2
    arts = {
        "local_projection": np.linalg.qr(rng.standard_normal((c, c)))[0][:, :LOCAL_DIM].astype(np.float32),
        "pca_mean": (rng.standard_normal(dim) * 0.01).astype(np.float32),
        "pca_projection": (rng.standard_normal((dim, WHITENED)) / np.sqrt(dim)).astype(np.float32),
    }
    device_arts = {k: jnp.asarray(v) for k, v in arts.items()}
    ours = jax.jit(lambda f, a: (lambda raw_valid: (postprocess(raw_valid[0], a), raw_valid[1]))(describe(f, embed, a)))
    x = jnp.asarray(features)
    found = REGIONS["candidates"](x, embed, None)  # alpha peaks: no detected points
    masks, valid = np.asarray(found.masks), np.asarray(found.valid)
    alpha = np.asarray(aggregation.spatial_weights(x))
    t = {k: torch.from_numpy(v) for k, v in dict(features=features, masks=masks, alpha=alpha, **arts).items()}

    def run_torch():
        with torch.no_grad():
            return torch_second_order(torch, t["features"], t["masks"], t["alpha"], t["local_projection"],
                                      t["pca_mean"], t["pca_projection"])

    mine, _ = ours(x, device_arts)
    theirs = run_torch().numpy()
    difference = float(np.abs(np.asarray(mine) - theirs)[valid].max())
    times = harness.measure_interleaved(
        {"tmrjax": lambda: jax.block_until_ready(ours(x, device_arts)), "pytorch": run_torch},
        warmup=args.warmup, repeats=args.repeats, load=load)
    result = {"map": name, "shape": list(shape), "batch": batch, "regions": int(masks.shape[1]),
              "valid_regions": int(valid.sum()), "max_abs_difference": difference,
              **{f"{k}_s": v for k, v in times.items()}}
    print(f"  {name} B={batch}: tmrjax {1e3 * harness.median(times['tmrjax']):.1f} ms, "
          f"pytorch {1e3 * harness.median(times['pytorch']):.1f} ms", file=sys.stderr, flush=True)
    return result


def main(argv=None) -> None:
    args = parse_args(argv)
    load = harness.LoadMonitor()
    load.sample()
    results = [bench(name, shape, batch, args, load) for name, shape in MAPS.items()
               for batch in harness.csv_ints(args.batch_sizes)]
    rows = [[r["map"], r["batch"], f"{r['valid_regions']}/{r['batch'] * r['regions']}",
             f"{r['max_abs_difference']:.1e}",
             f"{1e3 * harness.median(r['tmrjax_s']) / r['batch']:.1f}", harness.spread(r["tmrjax_s"]),
             f"{1e3 * harness.median(r['pytorch_s']) / r['batch']:.1f}", harness.spread(r["pytorch_s"]),
             f"{harness.median(r['pytorch_s']) / harness.median(r['tmrjax_s']):.2f}"] for r in results]
    print("## jeong2017 second-order pooling: tmrjax against PyTorch\n")
    print(harness.machine_header())
    print(f"- load during the run: {load.summary()}\n")
    print(harness.markdown_table(["tap", "B", "valid regions", "max abs diff", "tmrjax ms/image", "spread",
                                  "PyTorch ms/image", "spread", "tmrjax speed-up"], rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
