"""What the benchmarks share: inputs, stand-in artefacts, timing, machine description, tables.

Imported by the scripts beside it (`python benchmarks/embed_throughput.py` puts this folder on
sys.path). Nothing here is part of the library.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

DEFAULT_PIPELINES = ("mac", "spoc", "crow", "rmac", "rsmac", "mr_rsmac_ura")
STAND_IN_NOTE = (
    "pipelines with PCA-w/URA use random stand-in artefacts of the fitted shapes "
    "(PCA mean/projection, unit-norm codebook, IDF in [1, 1+log 30000]); backbones use random weights"
)


def error_text(e: BaseException) -> str:
    """One line naming an exception, for a table row that reports a failed measurement."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}"[:200]


def csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def csv_ints(text: str) -> list[int]:
    values = [int(t) for t in csv_list(text)]
    if not values or min(values) < 1:
        raise ValueError(f"expected comma-separated positive integers, got {text!r}")
    return values


def random_images(resolutions: Sequence[int], batch: int, seed: int = 0) -> list[np.ndarray]:
    """One uint8 (B, S, S, 3) batch per resolution, already in memory (no decoding is timed)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (batch, s, s, 3), dtype=np.uint8) for s in resolutions]


def folder_images(folder: str, resolutions: Sequence[int], batch: int) -> list[np.ndarray]:
    """`random_images`' batches from `batch` images of `folder`, evenly spaced over its sorted names (all
    of them, cycled, when it holds fewer), prepared as the pipelines prepare them (white-padded square, resized)."""
    from tmrjax.data.images import list_images, load_image, prepare_multi

    paths = list_images(folder)
    if not paths:
        raise SystemExit(f"--images {folder}: no images there")
    picks = [paths[i * len(paths) // batch] for i in range(batch)]
    prepared = [prepare_multi(load_image(os.path.join(folder, path)), tuple(resolutions)) for path in picks]
    return [np.stack([one[r] for one in prepared]) for r in range(len(resolutions))]


def stand_in_artefacts(pipeline, seed: int = 0):
    """(`pipeline` with random Artefacts of the shapes `tmrjax fit` would produce, those artefacts),
    so a reference implementation can use the very same arrays; artefacts None when nothing is fitted."""
    from tmrjax.pipeline import Artefacts, needs_fit
    from tmrjax.stages import POOLINGS

    if not needs_fit(pipeline.config):
        return pipeline, None
    e = pipeline.config.embed
    rng = np.random.default_rng(seed)
    raw, dim = pipeline.raw_dim, e.pca_whitening_dim
    arts = Artefacts()
    if dim:
        arts = Artefacts(
            pca_mean=(rng.standard_normal(raw) * 0.01).astype(np.float32),
            pca_projection=(rng.standard_normal((raw, dim)) / np.sqrt(raw)).astype(np.float32),
        )
    if e.region_weights == "idf":
        centroids = rng.standard_normal((e.codebook_size, dim))
        arts = dataclasses.replace(
            arts, centroids=(centroids / np.linalg.norm(centroids, axis=1, keepdims=True)).astype(np.float32),
            idf=(1.0 + rng.uniform(0.0, np.log(30001.0), e.codebook_size)).astype(np.float32))
    if POOLINGS[e.pooling].local_projection:  # drawn last: the other arrays stay those of earlier versions
        channels = pipeline.first_order_features_dim
        bases = np.linalg.qr(rng.standard_normal((channels, channels)))[0][:, :e.local_dim]
        arts = dataclasses.replace(arts, local_projection=bases.astype(np.float32))
    pipeline = pipeline.with_artefacts(arts)
    pipeline.check_artefacts()
    return pipeline, arts


class LoadMonitor:
    """The 1-minute load average, sampled around every measurement (min / median / max)."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def sample(self) -> None:
        if hasattr(os, "getloadavg"):
            self.samples.append(os.getloadavg()[0])

    def summary(self) -> str:
        if not self.samples:
            return "n/a"
        s = self.samples
        return f"{min(s):.1f} / {statistics.median(s):.1f} / {max(s):.1f} (min / median / max, 1-min load average)"


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` takes; `fn` must block until its result is ready."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _timed_sample(fn: Callable[[], object], load: LoadMonitor | None) -> float:
    """`timed(fn)`, sampling the load just before the call."""
    if load is not None:
        load.sample()
    return timed(fn)


def measure_interleaved(
    fns: dict[str, Callable[[], object]], warmup: int, repeats: int, load: LoadMonitor | None = None
) -> dict[str, list[float]]:
    """Warm every function up, then time them in turn, `repeats` rounds: {name: [seconds, ...]}.

    Interleaving spreads the drift of a shared machine's load evenly over the functions
    compared, so their ratio is steadier than that of back-to-back blocks of repeats.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed_sample(fn, load))
    if load is not None:
        load.sample()
    return times


def measure_blocks(
    fns: dict[str, Callable[[], object]], warmup: int, repeats: int, rounds: int,
    load: LoadMonitor | None = None,
) -> dict[str, list[float]]:
    """Time each function in a block of its own: {name: [seconds, ...]}, `rounds` x `repeats` each.

    For comparing frameworks that run side by side in one process: a block gives each one the
    machine (caches, thread pools) to itself, as in real use, while alternating blocks over
    `rounds` spreads the drift of a shared machine's load over both. Each block starts with
    untimed calls: `warmup` in the first round, one in later rounds.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_index in range(rounds):
        for name, fn in fns.items():
            for _ in range(warmup if round_index == 0 else min(warmup, 1)):
                fn()
            for _ in range(repeats):
                times[name].append(_timed_sample(fn, load))
    if load is not None:
        load.sample()
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """Relative spread of repeated timings, (max - min) / median, as a percentage."""
    m = statistics.median(values)
    return f"{100.0 * (max(values) - min(values)) / m:.0f}%" if m > 0 else "n/a"


def measure_each(
    pipelines: Sequence[str], measure: Callable[[str], list[dict]]
) -> tuple[list[dict], list[dict]]:
    """`measure(name)` for each pipeline: (all result rows, failures). A pipeline that fails is
    reported on stderr and in the failures ({"pipeline", "error"}); the others go on."""
    results: list[dict] = []
    failures: list[dict] = []
    for name in pipelines:
        try:
            results += measure(name)
        except Exception as e:  # noqa: BLE001 -- reported in the output; the other pipelines go on
            failures.append({"pipeline": name, "error": error_text(e)})
            print(f"  {name}: FAILED {failures[-1]['error']}", file=sys.stderr, flush=True)
    return results, failures


def machine_header() -> str:
    """`machine_lines()` as the markdown list that opens every benchmark's output."""
    return "\n".join(f"- {line}" for line in machine_lines())


def machine_lines() -> list[str]:
    """The machine and software the numbers come from."""
    import jax

    lines = [f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}"]
    model = _cpu_model()
    lines.append(f"cpu: {model}, {os.cpu_count()} logical cores visible; {platform.machine()}, {platform.system()}")
    devices = jax.devices()
    lines.append(f"jax {jax.__version__} on {devices[0].platform}: {', '.join(d.device_kind for d in devices)}")
    for name in ("flax", "numpy", "torch", "torchvision", "faiss"):
        try:
            module = __import__(name)
            lines.append(f"{name} {module.__version__}")
        except ImportError:
            pass
    flags = os.environ.get("XLA_FLAGS")
    if flags:
        lines.append(f"XLA_FLAGS={flags}")
    return lines


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
