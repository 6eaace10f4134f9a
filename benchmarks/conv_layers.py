"""Where the backbone time goes: each distinct convolution of ResNet50 (to conv4) and VGG16
(to conv5_3), as XLA compiles it and as PyTorch runs it, on the same machine and inputs.

    python benchmarks/conv_layers.py                 # batch 8, ~3 min on 2 CPU cores
    python benchmarks/conv_layers.py --batch 1 --nets resnet50

The embedding pipelines spend over 95% of their time in the backbone (embed_throughput.py),
so the tmrjax/PyTorch ratio of torch_reference.py is decided here. Per layer: XLA's
``lax.conv_general_dilated`` (what ``nn.Conv`` emits), for 1x1 layers also the matmul that
``tmrjax.models.resnet.PointwiseConv`` emits, and ``torch.nn.Conv2d`` (oneDNN on CPU), each
followed by a ReLU. ``x n`` is how often the shape occurs in the network; the last row sums
time x n, using for 1x1 layers what the tmrjax model runs (the matmul).
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

# (name, input size at 224 / 300 px, C_in, C_out, kernel, stride, occurrences)
RESNET50_CONV4 = (
    ("stem 7x7/2", 224, 3, 64, 7, 2, 1),
    ("conv2 1x1 64->64", 56, 64, 64, 1, 1, 1),
    ("conv2 1x1 256->64", 56, 256, 64, 1, 1, 2),
    ("conv2 3x3 64", 56, 64, 64, 3, 1, 3),
    ("conv2 1x1 64->256", 56, 64, 256, 1, 1, 4),
    ("conv3 1x1 256->128", 56, 256, 128, 1, 1, 1),
    ("conv3 3x3/2 128", 56, 128, 128, 3, 2, 1),
    ("conv3 3x3 128", 28, 128, 128, 3, 1, 3),
    ("conv3 1x1 128->512", 28, 128, 512, 1, 1, 4),
    ("conv3 1x1 512->128", 28, 512, 128, 1, 1, 3),
    ("conv3 shortcut 1x1/2 256->512", 56, 256, 512, 1, 2, 1),
    ("conv4 1x1 512->256", 28, 512, 256, 1, 1, 1),
    ("conv4 3x3/2 256", 28, 256, 256, 3, 2, 1),
    ("conv4 3x3 256", 14, 256, 256, 3, 1, 5),
    ("conv4 1x1 256->1024", 14, 256, 1024, 1, 1, 6),
    ("conv4 1x1 1024->256", 14, 1024, 256, 1, 1, 5),
    ("conv4 shortcut 1x1/2 512->1024", 28, 512, 1024, 1, 2, 1),
)
VGG16_CONV5_3 = (
    ("conv1_1", 300, 3, 64, 3, 1, 1),
    ("conv1_2", 300, 64, 64, 3, 1, 1),
    ("conv2_1", 150, 64, 128, 3, 1, 1),
    ("conv2_2", 150, 128, 128, 3, 1, 1),
    ("conv3_1", 75, 128, 256, 3, 1, 1),
    ("conv3_2/3", 75, 256, 256, 3, 1, 2),
    ("conv4_1", 37, 256, 512, 3, 1, 1),
    ("conv4_2/3", 37, 512, 512, 3, 1, 2),
    ("conv5_1/2/3", 18, 512, 512, 3, 1, 3),
)
NETS = {"resnet50": RESNET50_CONV4, "vgg16": VGG16_CONV5_3}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", default="resnet50,vgg16", help="resnet50 (to conv4 at 224), vgg16 (to conv5_3 at 300)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per layer and side; the median is reported")
    p.add_argument("--torch-threads", type=int, default=os.cpu_count())
    p.add_argument("--json", help="also write the raw timings to this file")
    return p.parse_args(argv)


def main(argv=None) -> None:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    rng = np.random.default_rng(0)
    raw = []
    print("## convolution layers: XLA vs PyTorch\n")
    print(harness.machine_header())
    print(f"- batch {args.batch}, float32, torch {args.torch_threads} threads, median of {args.repeats} calls\n")
    for net in harness.csv_list(args.nets):
        rows, total_xla, total_tmrjax, total_torch = [], 0.0, 0.0, 0.0
        for name, size, cin, cout, k, stride, count in NETS[net]:
            x = rng.standard_normal((args.batch, size, size, cin), dtype=np.float32)
            w = (rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin)).astype(np.float32)
            xj, wj, pad = jnp.asarray(x), jnp.asarray(w), k // 2
            conv = jax.jit(lambda a, b, s=stride, p=pad: jax.nn.relu(jax.lax.conv_general_dilated(
                a, b, (s, s), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"))))
            # Each call is measured in this iteration, so the closures see this layer's arrays.
            calls = {"xla conv": lambda: conv(xj, wj).block_until_ready()}  # noqa: B023
            if k == 1:
                matmul = jax.jit(
                    lambda a, b, s=stride: jax.nn.relu(jnp.einsum("bhwc,cd->bhwd", a[:, ::s, ::s], b[0, 0])))
                calls["xla matmul"] = lambda: matmul(xj, wj).block_until_ready()  # noqa: B023
            xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
            layer = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=False).eval()
            with torch.inference_mode():
                layer.weight.copy_(torch.from_numpy(w).permute(3, 2, 0, 1))
                calls["torch"] = lambda: torch.relu_(layer(xt))  # noqa: B023
                times = harness.measure_blocks(calls, warmup=2, repeats=args.repeats, rounds=1)
            t = {side: harness.median(v) for side, v in times.items()}
            ours = t.get("xla matmul", t["xla conv"])
            total_xla += count * t["xla conv"]
            total_tmrjax += count * ours
            total_torch += count * t["torch"]
            matmul_ms = f"{1e3 * t['xla matmul']:.2f}" if "xla matmul" in t else ""
            rows.append([name, f"x{count}", f"{size}", f"{1e3 * t['xla conv']:.2f}", matmul_ms,
                         f"{1e3 * t['torch']:.2f}", f"{t['torch'] / ours:.2f}"])
            raw.append({"net": net, "layer": name, "count": count, **times})
            print(f"  {net} {name}: {t}", file=sys.stderr, flush=True)
        rows.append(["**sum (time x n)**", "", "", f"{1e3 * total_xla:.0f}", f"tmrjax {1e3 * total_tmrjax:.0f}",
                     f"{1e3 * total_torch:.0f}", f"{total_torch / total_tmrjax:.2f}"])
        print(f"### {net}\n")
        print(harness.markdown_table(
            ["layer", "n", "input", "xla conv ms", "xla matmul ms", "torch ms", "torch / tmrjax"], rows))
        print()
    print("torch / tmrjax > 1: the layer as tmrjax runs it (matmul for 1x1, XLA conv otherwise) is faster.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": harness.machine_lines(), "batch": args.batch, "layers": raw}, f, indent=1)


if __name__ == "__main__":
    main()
