"""Benchmarks and `tmrjax eval`: fit, embed and score pipelines on a labelled dataset.

A benchmark is a tfds dataset with splits ``queries`` (group members, ``group`` >= 0) and
``gallery`` (distractors, ``group`` = -1): `logo_groups` (built offline from icon sets) or
`metu_trademark` (manual download). The database is queries + gallery (METU protocol);
fitting (PCA-w, URA codebook) uses the gallery only, as the papers fit on unlabelled marks.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from ml_collections import ConfigDict

from .data.images import Batch, FailureLog, assemble_batches, prepare_multi
from .metrics import Evaluation, evaluate, group_relevance
from .pipeline import (
    NO_WEIGHTS,
    RANDOM_WEIGHTS,
    CombinedPipeline,
    Pipeline,
    backbone_weights,
    config_hash,
    is_combined,
    load_config,
    needs_fit,
)


@dataclasses.dataclass
class Benchmark:
    """Queries + gallery of a tfds benchmark, read lazily (no TensorFlow)."""

    name: str
    queries: object  # tfds data source
    gallery: object
    gallery_rows: np.ndarray  # which gallery records are used (all, or a seeded subset)
    # The same splits without image decoding, for ids and groups (default: queries / gallery).
    queries_fields: object = None
    gallery_fields: object = None

    @property
    def num_queries(self) -> int:
        return len(self.queries)

    def __len__(self) -> int:
        return self.num_queries + len(self.gallery_rows)

    def record(self, row: int) -> dict:
        """Database row -> tfds record (queries first, then the used gallery records)."""
        if row < self.num_queries:
            return self.queries[row]
        return self.gallery[int(self.gallery_rows[row - self.num_queries])]

    def _fields(self, row: int) -> dict:
        """The record of a database row without its decoded image (ids, groups, licences)."""
        if row < self.num_queries:
            return (self.queries_fields or self.queries)[row]
        return (self.gallery_fields or self.gallery)[int(self.gallery_rows[row - self.num_queries])]

    def _text(self, row: int, field: str) -> str:
        value = self._fields(row).get(field, b"")
        return value.decode() if isinstance(value, bytes) else str(value)

    def id(self, row: int) -> str:
        return self._text(row, "id")

    @functools.cached_property
    def groups(self) -> np.ndarray:
        q = np.array([int(self._fields(i)["group"]) for i in range(self.num_queries)], np.int64)
        return np.concatenate([q, np.full(len(self.gallery_rows), -1, np.int64)])

    @property
    def query_rows(self) -> np.ndarray:
        return np.arange(self.num_queries)

    @property
    def relevant(self) -> list[np.ndarray]:
        return group_relevance(self.query_rows, self.groups[: self.num_queries])

    def image(self, row: int) -> np.ndarray:
        return np.asarray(self.record(row)["image"], np.uint8)

    def images_at(self, size: int) -> np.ndarray:
        """Every database image padded to a white square and resized to `size` (uint8 stack)."""
        return np.stack([prepare_multi(self.image(r), (size,))[0] for r in range(len(self))])

    def batches(self, rows: Sequence[int], sizes: tuple[int, ...], batch_size: int) -> Iterator[Batch]:
        items = ((str(r), prepare_multi(self.image(int(r)), sizes)) for r in rows)
        return assemble_batches(items, sizes, batch_size)


class GalleryImages:
    """A benchmark's gallery as a fitting source for `fit_pipeline` (ids = database rows)."""

    def __init__(self, benchmark: Benchmark):
        self.benchmark = benchmark
        self.ids = [str(r) for r in range(benchmark.num_queries, len(benchmark))]

    def describe(self) -> str:
        return f"{self.benchmark.name}:gallery ({len(self.ids)} marks)"

    def batches(self, ids, sizes, batch_size, failures: FailureLog) -> Iterator[Batch]:
        return self.benchmark.batches([int(i) for i in ids], sizes, batch_size)


def load_benchmark(
    name: str, max_distractors: int | None = None, data_dir: str | os.PathLike | None = None, seed: int = 0
) -> Benchmark:
    """``logo_groups/small``, ``metu_trademark`` ...; `max_distractors` keeps a seeded subset of the gallery."""
    from .data.tfds_source import open_split

    name = name[len("tfds:"):] if name.startswith("tfds:") else name
    queries = open_split(f"{name}:queries", data_dir)
    gallery = open_split(f"{name}:gallery", data_dir)
    rows = np.arange(len(gallery))
    if max_distractors is not None and max_distractors < len(gallery):
        rows = np.sort(np.random.default_rng(seed).choice(len(gallery), max_distractors, replace=False))
    return Benchmark(name=name, queries=queries, gallery=gallery, gallery_rows=rows,
                     queries_fields=open_split(f"{name}:queries", data_dir, images=False),
                     gallery_fields=open_split(f"{name}:gallery", data_dir, images=False))


def export_benchmark(benchmark: Benchmark, out_dir: str | os.PathLike) -> Path:
    """Write the database as PNG files: queries/GROUP-ID.png and gallery/ID.png (a folder to index)."""
    from PIL import Image

    out = Path(out_dir)
    for row in range(len(benchmark)):
        group = int(benchmark.groups[row])
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in benchmark.id(row))
        folder, file = ("queries", f"{group:03d}-{safe}.png") if group >= 0 else ("gallery", f"{safe}.png")
        path = out / folder / file
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(benchmark.image(row)).save(path)
    return out


# ----------------------------------------------------------------------------------------
# Embedding several pipelines with shared backbone passes


def embed_benchmark(benchmark: Benchmark, pipelines: Sequence[Pipeline], progress: bool = True) -> list[np.ndarray]:
    """(N, d) vectors of every database image for each pipeline.

    Pipelines with the same backbone weights and tap share one forward pass per resolution
    (e.g. R-MAC, R-SMAC and MR-R-SMAC on ResNet50 conv4), so adding a method to the table
    costs its pooling, not another backbone pass. A combined pipeline's parts join the passes
    of their backbones.
    """
    singles = [part for p in pipelines for part in (p.parts.values() if isinstance(p, CombinedPipeline) else [p])]
    vectors = iter(_embed_single(benchmark, singles, progress))
    return [p.combine({name: next(vectors) for name in p.parts}) if isinstance(p, CombinedPipeline)
            else next(vectors) for p in pipelines]


def _embed_single(benchmark: Benchmark, pipelines: Sequence[Pipeline], progress: bool) -> list[np.ndarray]:
    """`embed_benchmark` for pipelines of one backbone each."""
    from .progress import progress_bar

    out: list[list[np.ndarray]] = [[] for _ in pipelines]
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(pipelines):
        groups.setdefault(p.backbone_key, []).append(i)
    batch_size = max(p.config.batch_size for p in pipelines)
    for members in groups.values():
        sizes = tuple(sorted({r for i in members for r in pipelines[i].resolutions}))
        lead = pipelines[members[0]]
        desc = f"embed {'+'.join(pipelines[i].name for i in members)}"
        with progress_bar(len(benchmark), desc, progress) as bar:
            for batch in benchmark.batches(range(len(benchmark)), sizes, batch_size):
                features = {s: lead.features_batch(images) for s, images in zip(sizes, batch.images)}
                for i in members:
                    vectors = pipelines[i].embed_features([features[r] for r in pipelines[i].resolutions])
                    out[i].append(vectors[batch.valid])
                bar.update(len(batch.ids))
    return [np.concatenate(parts) for parts in out]


# ----------------------------------------------------------------------------------------
# tmrjax eval


@dataclasses.dataclass
class Row:
    """One line of the results table."""

    method: str
    paper_row: str
    dim: int
    nar: float
    map_at_100: float
    map: float
    protocol: str
    weights: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def format_table(rows: Sequence[Row], dataset: str) -> str:
    """The papers' table: method, DIM, NAR (lower is better), MAP@100 and MAP in %.

    Columns fit their longest entry; with more than one backbone (e.g. VGG16 and ResNet50
    weights), each row names its own.
    """
    protocols = sorted({r.protocol for r in rows})
    weights = sorted({r.weights for r in rows})
    method = max([len("Method")] + [len(r.method) for r in rows])
    paper = max([len("paper row")] + [len(r.paper_row) for r in rows])
    header = f"{'Method':<{method}}  {'paper row':<{paper}}  {'DIM':>5} {'NAR':>7} {'MAP@100':>8} {'MAP':>6}"
    per_row = len(weights) > 1
    if per_row:
        header += "  weights"
    lines = [f"{dataset}  (protocol: {', '.join(protocols)}; backbone weights: {', '.join(weights)})",
             header, "-" * (len(header) + (max(len(w) for w in weights) - len("weights") if per_row else 0))]
    for r in rows:
        line = (f"{r.method:<{method}}  {r.paper_row:<{paper}}  {r.dim:>5} {r.nar:>7.4f} "
                f"{100 * r.map_at_100:>8.2f} {100 * r.map:>6.2f}")
        lines.append(line + (f"  {r.weights}" if per_row else ""))
    return "\n".join(lines)


def weights_tag(weights: str) -> str:
    """A short name for resolved backbone weights (`backbone_weights`): ``random-init``, ``none``
    (no network) or the checkpoint folder's name and the first digits of its source sha256."""
    if weights == RANDOM_WEIGHTS:
        return "random-init"
    if weights == NO_WEIGHTS:
        return NO_WEIGHTS
    from .weights import read_meta

    sha = read_meta(weights)["source"].get("sha256")
    return f"{Path(weights).name}-{(sha or 'nosha')[:8]}"


def weights_by_arch(weights: str | os.PathLike | Sequence[str | os.PathLike] | None) -> dict[str, str]:
    """{arch: directory} of converted backbones or exported encoders (each meta.json names its
    architecture).

    `tmrjax eval` compares VGG16, ResNet50 and hu2024-encoder pipelines in one table, so it
    takes one checkpoint per architecture and gives each pipeline the one it needs.
    """
    from .weights import WeightsError, read_meta

    paths = [weights] if isinstance(weights, (str, os.PathLike)) else list(weights or [])
    out: dict[str, str] = {}
    for path in paths:
        if str(path) == RANDOM_WEIGHTS:
            continue
        arch = read_meta(path)["arch"]
        if arch in out:
            raise WeightsError(f"{out[arch]} and {path} are both {arch} backbones; give one per architecture")
        out[arch] = str(path)
    return out


def run_eval(
    dataset: str,
    pipeline_names: Sequence[str | ConfigDict],
    out_dir: str | os.PathLike,
    weights: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    max_distractors: int | None = None,
    fit_images: int | None = None,
    protocol: str = "metu-official",
    data_dir: str | os.PathLike | None = None,
    report_queries: int | None = None,
    progress: bool = True,
    log=print,
) -> tuple[list[Row], Path]:
    """Fit what each pipeline needs on the gallery, embed the database, score, report.

    `pipeline_names`: config names, ``.py`` config files or configs. `weights`: converted
    backbone directories, at most one per architecture, and/or ``"random"``; each pipeline
    uses the one of its backbone's architecture, else random initialisation if ``"random"`` is
    among them, else its config's default (a shipped backbone; `backbone_weights`). Vectors and
    fitted artefacts are cached under `out_dir/cache/` per (dataset subset, pipeline config
    hash, weights), so a second run only evaluates.
    """
    from .fit import fit_pipelines

    out = Path(out_dir)
    benchmark = load_benchmark(dataset, max_distractors=max_distractors, data_dir=data_dir)
    subset = f"{benchmark.name.replace('/', '_')}-q{benchmark.num_queries}-g{len(benchmark.gallery_rows)}"
    log(f"dataset    {benchmark.name}: {benchmark.num_queries} queries in "
        f"{len(set(benchmark.groups[benchmark.groups >= 0]))} groups + {len(benchmark.gallery_rows)} distractors")
    configs = [name if isinstance(name, ConfigDict) else load_config(name) for name in pipeline_names]
    labels = [c.name for c in configs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"pipelines {list(pipeline_names)} repeat a config name: {labels}")
    given = [weights] if isinstance(weights, (str, os.PathLike)) else list(weights or [])
    by_arch = weights_by_arch(given)
    fallback = RANDOM_WEIGHTS if RANDOM_WEIGHTS in map(str, given) else None
    # Each pipeline's weights, resolved now: a combined config's parts get theirs written in.
    configs = [c.copy_and_resolve_references() if is_combined(c) else c for c in configs]
    chosen: list[str | None] = []
    tags: list[str] = []
    for config in configs:
        resolved = []
        for part in config.parts.values() if is_combined(config) else [config]:
            w = backbone_weights(part, by_arch.get(part.backbone.arch, fallback))
            if w == RANDOM_WEIGHTS:
                log(f"note       {part.name}: its {part.backbone.arch} backbone is RANDOMLY INITIALISED "
                    "(--weights random): the row measures untrained features")
            if is_combined(config):
                part.backbone.weights = w
            resolved.append(w)
        chosen.append(None if is_combined(config) else resolved[0])
        tags.append("+".join(weights_tag(w) for w in resolved))
    used = {part.backbone.arch for c in configs for part in (c.parts.values() if is_combined(c) else [c])}
    for arch, path in by_arch.items():
        if arch not in used:
            log(f"note       {path} ({arch}): no pipeline of this run uses it")
    caches = [out / "cache" / subset / f"{c.name}-{config_hash(c)}-{tag}" for c, tag in zip(configs, tags)]
    vectors: dict[str, np.ndarray] = {}
    todo: list[Pipeline] = []
    to_fit: list[tuple[Pipeline, Path]] = []
    for config, cache, backbone in zip(configs, caches, chosen):
        if (cache / "vectors.npy").is_file():
            vectors[config.name] = np.load(cache / "vectors.npy")
            log(f"cached     {config.name}: {cache}")
            continue
        if needs_fit(config) and (cache / "pipeline" / "pipeline.json").is_file():
            pipeline = Pipeline.load(cache / "pipeline", weights=backbone)
        else:
            pipeline = Pipeline.create(config, weights=backbone)
            if needs_fit(config):
                to_fit.append((pipeline, cache / "pipeline"))
        todo.append(pipeline)
    if to_fit:
        started = time.time()
        fit_pipelines([p for p, _ in to_fit], GalleryImages(benchmark), [d for _, d in to_fit],
                      num_images=fit_images, progress=progress)
        fitted_on = min(fit_images or max(p.config.fit.num_images for p, _ in to_fit), len(benchmark.gallery_rows))
        log(f"fitted     {', '.join(p.name for p, _ in to_fit)} on the gallery in {time.time() - started:.0f} s "
            f"({fitted_on} marks)")
    if todo:
        for pipeline, v in zip(todo, embed_benchmark(benchmark, todo, progress=progress)):
            cache = caches[labels.index(pipeline.name)]
            cache.mkdir(parents=True, exist_ok=True)
            np.save(cache / "vectors.npy", v)
            vectors[pipeline.name] = v

    rows: list[Row] = []
    evaluations: dict[str, Evaluation] = {}
    for config, tag in zip(configs, tags):
        result = evaluate(vectors[config.name], benchmark.query_rows, benchmark.relevant, k=100, protocol=protocol)
        evaluations[config.name] = result
        rows.append(Row(config.name, config.paper_row, int(vectors[config.name].shape[1]), result.nar,
                        result.map_at_k, result.map, result.protocol, tag))
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(rows, benchmark.name)
    (out / "results.json").write_text(json.dumps(
        {"dataset": benchmark.name, "subset": subset, "rows": [r.to_dict() for r in rows]}, indent=2) + "\n")
    (out / "results.txt").write_text(table + "\n")
    # Per-query scores, for paired comparisons of two rows (`tmrjax.metrics.paired_bootstrap`).
    np.savez(out / "per_query.npz", **{f"{name}/{field}": getattr(e, f"{field}_per_query")
                                      for name, e in evaluations.items() for field in ("nar", "ap_at_k", "ap")})
    from .report import write_report

    report = write_report(out / "report", benchmark, {n: vectors[n] for n in labels}, evaluations, rows,
                          num_queries=report_queries)
    return rows, report
