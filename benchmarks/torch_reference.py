"""tmrjax against the same pipelines written the way a PyTorch user writes them, on identical weights.

The reference is what a user of the PyTorch originals would run: a torchvision ResNet50 cut
after `layer3` (conv4) or VGG16 `features` up to the ReLU of conv5_3, then cirtorch-style
pooling: a Python loop over the R-MAC regions with slicing and max/sum, l2, a PCA-whitening
matmul, the URA weight as the IDF of the nearest centroid, sums and l2. Each torchvision
backbone gets random weights (BatchNorm with random affine parameters and calibrated
statistics), is saved as a state dict and converted with `tmrjax.convert.convert_checkpoint`;
the tmrjax pipeline loads the converted backbone, and both share the same stand-in
PCA-whitening / codebook / IDF arrays. So both compute the same vectors (checked first, on a
small batch) and the speed ratio compares equal work.

    python benchmarks/torch_reference.py                                           # CPU, float32
    JAX_PLATFORMS=cuda python benchmarks/torch_reference.py --batch-sizes 1,64 --dtype bfloat16

Timings: uint8 images in host memory -> vectors in host memory, both sides, each in blocks of
calls of its own (--rounds alternating blocks), warm-up excluded, median of all timed calls. torch runs under
`torch.inference_mode()` with `torch.set_num_threads(os.cpu_count())` (--torch-threads); with --dtype
bfloat16 the torch backbone runs under `torch.autocast(bfloat16)` and the tmrjax backbone in bfloat16 (both
pool in float32).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import harness
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torchvision

DTYPES = {"float32": (jnp.float32, torch.float32), "bfloat16": (jnp.bfloat16, torch.bfloat16)}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EPS = 1e-6


# ----------------------------------------------------------------------------------------
# Backbones: one random torchvision model per architecture, converted once for tmrjax


def random_torchvision(arch: str, seed: int = 0) -> torch.nn.Module:
    """torchvision `arch` with random weights; BatchNorm gets random affine params and stats
    calibrated on random inputs, so that no layer is an identity."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in norms:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.2)
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration batches
        if norms:
            model.train()
            for _ in range(2):
                model(torch.randn(4, 3, 96, 96))
    return model.eval()


def truncate(model: torch.nn.Module, arch: str, tap: str) -> torch.nn.Module:
    """The part of a torchvision model that computes the tap tmrjax pools."""
    if (arch, tap) == ("resnet50", "conv4"):
        m = model
        return torch.nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3)
    if (arch, tap) == ("vgg16", "conv5_3"):
        return model.features[:30]  # conv5_3 (index 28) and its ReLU (29); 30 is pool5
    raise ValueError(f"torch_reference: no torchvision cut for {arch} {tap}; add one to truncate()")


class Backbones:
    """Random torchvision models and their tmrjax conversions, made once per architecture."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.models: dict[str, torch.nn.Module] = {}
        self.converted: dict[str, Path] = {}

    def get(self, arch: str) -> tuple[torch.nn.Module, Path]:
        if arch not in self.models:
            from tmrjax.convert import convert_checkpoint

            model = random_torchvision(arch)
            state = self.workdir / f"{arch}-random.pth"
            torch.save(model.state_dict(), state)
            self.converted[arch] = convert_checkpoint("torchvision", arch, state, self.workdir / f"{arch}-random")
            self.models[arch] = model
        return self.models[arch], self.converted[arch]


# ----------------------------------------------------------------------------------------
# The PyTorch pipeline, cirtorch style: small functions, a loop over regions


def l2n(x: torch.Tensor) -> torch.Tensor:
    return x / (torch.norm(x, p=2, dim=-1, keepdim=True) + EPS)


def rmac_grid(H: int, W: int, L: int) -> list[tuple[int, int, int, int]]:
    """R-MAC regions (Tolias et al.) as cirtorch's `rmac` computes them: (y0, x0, y1, x1)."""
    ovr = 0.4
    steps = torch.tensor([2, 3, 4, 5, 6, 7], dtype=torch.float32)
    w = min(W, H)
    b = (max(H, W) - w) / (steps - 1)
    idx = torch.argmin(torch.abs(((w**2 - w * b) / w**2) - ovr)).item()
    Wd = idx + 1 if H < W else 0
    Hd = idx + 1 if H > W else 0
    boxes = []
    for level in range(1, L + 1):
        wl = math.floor(2 * w / (level + 1))
        if wl == 0:
            continue
        for y in _window_starts(H, wl, level + Hd):
            for x in _window_starts(W, wl, level + Wd):
                boxes.append((y, x, y + wl, x + wl))
    return boxes


def _window_starts(length: int, wl: int, n: int) -> list[int]:
    """First cells of n windows of width wl spread over length (centres floored, as cirtorch)."""
    wl2 = math.floor(wl / 2 - 1)
    step = 0 if n == 1 else (length - wl) / (n - 1)
    return (torch.floor(wl2 + torch.arange(n, dtype=torch.float32) * step) - wl2).int().tolist()


def region_pool(x: torch.Tensor, boxes, pooling: str) -> torch.Tensor:
    """(B, C, H, W) -> (B, R, D'): one slice and one reduction per region."""
    out = []
    for y0, x0, y1, x1 in boxes:
        r = x[:, :, y0:y1, x0:x1]
        if pooling == "mac":
            out.append(r.amax(dim=(2, 3)))
        elif pooling == "smac":  # tursun2021: [sum, max]
            out.append(torch.cat([r.sum(dim=(2, 3)), r.amax(dim=(2, 3))], dim=1))
        else:
            raise ValueError(f"torch_reference: no regional {pooling!r}")
    return torch.stack(out, dim=1)


def spoc_center_prior(x: torch.Tensor) -> torch.Tensor:
    """SPoC with the Gaussian centre prior, sigma = min(H, W) / 6 (Babenko & Lempitsky 2015)."""
    H, W = x.shape[-2:]
    sigma = min(H, W) / 6.0
    dy = torch.arange(H, device=x.device, dtype=torch.float32) + 0.5 - H / 2.0
    dx = torch.arange(W, device=x.device, dtype=torch.float32) + 0.5 - W / 2.0
    prior = torch.exp(-(dy[:, None] ** 2 + dx[None, :] ** 2) / (2 * sigma**2))
    return (x * prior).sum(dim=(2, 3))


def crow(x: torch.Tensor, a: float = 2.0, b: float = 2.0) -> torch.Tensor:
    """CRoW (Kalantidis et al. 2016): spatial weights from summed activations, channel IDF."""
    s = x.sum(dim=1)
    norm = (s**a).sum(dim=(1, 2), keepdim=True) ** (1.0 / a)
    s = (s / norm) ** (1.0 / b)
    weighted = (x * s[:, None]).sum(dim=(2, 3))
    q = (x != 0).float().mean(dim=(2, 3))
    omega = torch.log((x.shape[1] * EPS + q.sum(dim=1, keepdim=True)) / (EPS + q))
    return weighted * omega


GLOBAL_POOLS = {
    ("mac", False): lambda x: x.amax(dim=(2, 3)),
    ("spoc", True): spoc_center_prior,
    ("crow", False): crow,
}


class TorchPipeline:
    """A config's pipeline in PyTorch: backbone, pooling, l2 -> PCA-w -> l2, URA, sums, l2."""

    def __init__(self, config, backbone: torch.nn.Module, arts, device: torch.device, dtype: torch.dtype):
        self.embed_cfg = config.embed
        self.backbone = backbone.to(device)
        self.device, self.dtype = device, dtype
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

        def as_t(a):
            return None if a is None else torch.from_numpy(np.asarray(a)).to(device)

        self.pca_mean = as_t(arts.pca_mean) if arts else None
        self.pca_proj = as_t(arts.pca_projection) if arts else None
        self.centroids = as_t(arts.centroids) if arts else None
        self.idf = as_t(arts.idf) if arts else None

    def features(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        x = (x - self.mean) / self.std
        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype)
            if self.dtype != torch.float32 else contextlib.nullcontext()
        )
        with autocast:
            return self.backbone(x).float()

    def aggregate(self, f: torch.Tensor) -> torch.Tensor:
        e = self.embed_cfg
        if e.region_levels == 0:
            v = GLOBAL_POOLS[(e.pooling, bool(e.center_prior))](f)[:, None]
        else:
            v = region_pool(f, rmac_grid(f.shape[2], f.shape[3], e.region_levels), e.pooling)
        v = l2n(v)
        if self.pca_proj is not None:
            v = l2n((v - self.pca_mean) @ self.pca_proj)
        if self.idf is not None:
            d = (self.centroids**2).sum(dim=1) - 2.0 * v @ self.centroids.T
            v = v * self.idf[d.argmin(dim=-1)][..., None]
        return v.sum(dim=1)

    def embed(self, images_per_resolution) -> np.ndarray:
        with torch.inference_mode():
            total = sum(self.aggregate(self.features(x)) for x in images_per_resolution)
            return l2n(total).cpu().numpy()


# ----------------------------------------------------------------------------------------
# Check and time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipelines", default=",".join(harness.DEFAULT_PIPELINES),
                   help="comma-separated config names (default: %(default)s)")
    p.add_argument("--batch-sizes", default="1,8",
                   help="comma-separated batch sizes (default: %(default)s, to stay near 10 minutes on a "
                        "shared 2-core CPU; 1,16 or 1,64 where there is time or an accelerator)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--check-batch", type=int, default=2, help="images in the equality check (float32)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed calls of each side before its first block (the first tmrjax call compiles); "
                        "later blocks start with one")
    p.add_argument("--repeats", type=int, default=2, help="timed calls of each side per round")
    p.add_argument("--rounds", type=int, default=2,
                   help="alternating blocks of calls per side (default: %(default)s); the median over all "
                        "rounds x repeats calls is reported")
    p.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                   help="torch.set_num_threads (default: os.cpu_count() = %(default)s); for tmrjax set "
                        "XLA_FLAGS='--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1' for 1")
    p.add_argument("--json", help="also write the raw timings to this file")
    return p.parse_args(argv)


def make_pair(name: str, backbones: Backbones, jax_dtype, torch_dtype, device):
    """The tmrjax pipeline and its PyTorch twin on the same weights and stand-in artefacts."""
    from tmrjax.pipeline import Pipeline, load_config

    config = load_config(name)
    model, converted = backbones.get(config.backbone.arch)
    pipe = Pipeline.create(config, weights=converted, dtype=jax_dtype)
    pipe, arts = harness.stand_in_artefacts(pipe)
    twin = TorchPipeline(config, truncate(model, config.backbone.arch, config.backbone.tap), arts, device, torch_dtype)
    return pipe, twin


def check_equal(name: str, pipe, twin, batch: int) -> dict:
    """Both sides on the same small float32 batch: max |difference| of the vectors and of the maps."""
    from tmrjax.kernels.regions import rmac_regions

    images = harness.random_images(pipe.resolutions, batch, seed=1)
    ours, theirs = pipe.embed_batch(images), twin.embed(images)
    f_ours = np.asarray(pipe.features_batch(images[0]))
    with torch.inference_mode():
        f_theirs = twin.features(images[0]).permute(0, 2, 3, 1).cpu().numpy()
    e = pipe.config.embed
    grids_equal = all(
        np.array_equal(
            rmac_regions(*f.shape[1:3], levels=e.region_levels, include_full_map=e.include_full_map),
            np.asarray(rmac_grid(*f.shape[1:3], e.region_levels)),
        )
        for f in [pipe.features_batch(x) for x in images]
    ) if e.region_levels else None
    return {
        "vector_max_abs_diff": float(np.max(np.abs(ours - theirs))),
        "min_cosine": float(np.min(np.sum(ours * theirs, axis=1))),
        "feature_max_abs_diff_rel": float(np.max(np.abs(f_ours - f_theirs)) / np.max(np.abs(f_theirs))),
        "region_grids_equal": grids_equal,
    }


def _calls(pipe, twin: TorchPipeline, images: list) -> dict:
    return {"torch": lambda: twin.embed(images), "tmrjax": lambda: pipe.embed_batch(images)}


def compare_pipeline(name: str, backbones: Backbones, device, args, checks: list, load) -> list[dict]:
    """Check one pipeline against its twin (appended to `checks`), then time both per batch size."""
    pipe, twin = make_pair(name, backbones, jnp.float32, torch.float32, device)
    checks.append({"pipeline": name, **check_equal(name, pipe, twin, args.check_batch)})
    print(f"  {name}: check {checks[-1]}", file=sys.stderr, flush=True)
    if args.dtype != "float32":
        pipe, twin = make_pair(name, backbones, *DTYPES[args.dtype], device)
    results = []
    for batch in harness.csv_ints(args.batch_sizes):
        images = harness.random_images(pipe.resolutions, batch)
        times = harness.measure_blocks(_calls(pipe, twin, images), warmup=args.warmup, repeats=args.repeats,
                                       rounds=args.rounds, load=load)
        results.append({"pipeline": name, "batch": batch, "dtype": args.dtype, **times})
        print(f"  {name} B={batch}: " + ", ".join(f"{k} {harness.median(v):.3f}s" for k, v in times.items()),
              file=sys.stderr, flush=True)
    return results


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu")
    load = harness.LoadMonitor()
    load.sample()
    checks = []
    with tempfile.TemporaryDirectory(prefix="tmrjax-bench-") as tmp:
        backbones = Backbones(Path(tmp))
        results, failures = harness.measure_each(
            harness.csv_list(args.pipelines),
            lambda name: compare_pipeline(name, backbones, device, args, checks, load),
        )

    print("## tmrjax vs PyTorch reference\n")
    print(harness.machine_header())
    print(f"- torch device {device}, {torch.get_num_threads()} threads; dtype {args.dtype}")
    print(f"- load during the run: {load.summary()}")
    print(f"- each side timed in its own blocks of calls, {args.rounds} round(s) alternating torch and tmrjax; "
          f"warm-up {args.warmup} call(s) in the first block, 1 in later ones (compile excluded); median of "
          f"{args.rounds * args.repeats} calls\n")
    print(f"### same vectors? (float32, batch {args.check_batch}, identical converted weights)\n")
    print(harness.markdown_table(
        ["pipeline", "max |Δ| vectors", "min cosine", "max |Δ| features / max |f|", "region grids equal"],
        [[c["pipeline"], f"{c['vector_max_abs_diff']:.2e}", f"{c['min_cosine']:.6f}",
          f"{c['feature_max_abs_diff_rel']:.2e}",
          {None: "n/a (global)", True: "yes", False: "NO"}[c["region_grids_equal"]]]
         for c in checks]))
    print("\n### speed\n")
    rows = []
    for r in results:
        ours, theirs = harness.median(r["tmrjax"]), harness.median(r["torch"])
        rows.append([
            r["pipeline"], r["batch"], f"{r['batch'] / theirs:.2f}", f"{r['batch'] / ours:.2f}",
            f"{theirs / ours:.2f}", f"{harness.spread(r['torch'])} / {harness.spread(r['tmrjax'])}",
        ])
    print(harness.markdown_table(
        ["pipeline", "B", "torch img/s", "tmrjax img/s", "ratio", "spread torch / tmrjax"], rows))
    for f in failures:
        print(f"\n**{f['pipeline']}: failed, not compared**: `{f['error']}`")
    print(
        "\nratio = tmrjax img/s / torch img/s (> 1: tmrjax faster). "
        "spread: (max - min) / median of the timed calls. "
        f"{harness.STAND_IN_NOTE}; both sides use the same ones."
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": harness.machine_lines(), "load": load.samples, "checks": checks,
                       "results": results, "failures": failures}, f, indent=1)


if __name__ == "__main__":
    main()
