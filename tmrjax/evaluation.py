"""`tmrjax eval`: fit, embed and score pipelines on a labelled benchmark.

A group benchmark (`data.sources.Benchmark`) is a tfds dataset with splits ``queries`` (group
members, ``group`` >= 0) and ``gallery`` (distractors): `logo_groups` (built offline from icon
sets) or `metu_trademark` (manual download); or a labelled folder (``folder:PATH``). The
database is queries + gallery (METU protocol); fitting (PCA-w, URA codebook) uses the gallery
only, as the papers fit on unlabelled marks.

A revisited benchmark (`data.sources.RevisitedBenchmark`: ``revisited_landmarks/roxford5k`` or
``/rparis6k``, manual download) has query crops that are not in the database; fitting uses the database
only, and scores are the revisited protocol's Easy / Medium / Hard mAP and mP@k (`tmrjax.revisited`). Region
pipelines describe such a query by its whole region R_M only (jeong2017 Sec. 5: the crop is the object).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ml_collections import ConfigDict

from .data.images import FailureLog, ImageError
from .data.sources import Benchmark, RevisitedBenchmark, open_benchmark
from .metrics import Evaluation, evaluate, similarities
from .pipeline import (
    NO_WEIGHTS,
    RANDOM_WEIGHTS,
    Pipeline,
    backbone_weights,
    config_hash,
    is_combined,
    load_config,
    needs_fit,
)
from .rerank import augment_database, expand_queries
from .revisited import SETUPS, evaluate_revisited, ranking_from_scores
from .runner import FeatureMemo, embed_all
from .vector_cache import VectorCache


def export_benchmark(benchmark: Benchmark, out_dir: str | os.PathLike) -> Path:
    """Write the database as PNG files in the labelled folder layout (`FolderBenchmark`):
    queries/GROUP/ID.png and gallery/ID.png, a folder to index or to evaluate as ``folder:PATH``."""
    from PIL import Image

    out = Path(out_dir)
    for row in range(len(benchmark)):
        group = int(benchmark.groups[row])
        safe = _safe_name(benchmark.id(row))
        folder, file = (f"queries/{group:03d}", f"{safe}.png") if group >= 0 else ("gallery", f"{safe}.png")
        path = out / folder / file
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(benchmark.image(row)).save(path)
    return out


# ----------------------------------------------------------------------------------------
# Embedding several pipelines with shared backbone passes


def embed_benchmark(benchmark: Benchmark | RevisitedBenchmark, pipelines: Sequence[Pipeline], progress: bool = True,
                    cache: VectorCache | None = None, memo: FeatureMemo | None = None) -> list[np.ndarray]:
    """(N, d) vectors of every image of `benchmark.images` for each pipeline, in that order (the database;
    for a revisited benchmark, then its queries).

    One loop over the database (`runner.embed_source`): pipelines with the same backbone
    weights and tap share one forward pass per resolution (e.g. R-MAC, R-SMAC and MR-R-SMAC on
    ResNet50 conv4), so adding a method to the table costs its pooling, not another backbone
    pass. A benchmark image that cannot be read is an error: the protocol needs every one.
    `cache`: vectors computed before (`vector_cache`), by pixels; `memo`: feature maps of this job.
    """
    failures = FailureLog()
    _, vectors = embed_all(benchmark.images, pipelines, failures, progress=progress, cache=cache, memo=memo)
    if len(failures):
        path, reason = failures.failures[0]
        raise ImageError(path, f"{reason} ({len(failures)} unreadable images in benchmark {benchmark.name}; "
                               "remove or replace them)")
    return vectors


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

    def cells(self) -> list[tuple[str, str]]:
        """(heading, value) of the table's number columns: DIM, NAR (lower is better), MAP@100 and MAP in %."""
        return [("DIM", str(self.dim)), ("NAR", f"{self.nar:.4f}"), ("MAP@100", f"{100 * self.map_at_100:.2f}"),
                ("MAP", f"{100 * self.map:.2f}")]


@dataclasses.dataclass
class RevisitedRow:
    """One line of a revisited benchmark's table: per setup (easy, medium, hard) mAP and mP@k, fractions."""

    method: str
    paper_row: str
    dim: int
    map: dict[str, float]
    mp_at_k: dict[str, list[float]]  # per setup, one value per k of `ks`
    ks: tuple[int, ...]
    protocol: str
    weights: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def cells(self) -> list[tuple[str, str]]:
        """DIM, then mAP and mP@k for the largest k (10) of each setup in %, as the revisited papers' tables."""
        return [("DIM", str(self.dim))] + [
            cell for setup in SETUPS for cell in ((f"{setup[0].upper()} mAP", f"{100 * self.map[setup]:.2f}"),
                                                  (f"{setup[0].upper()} mP@{self.ks[-1]}",
                                                   f"{100 * self.mp_at_k[setup][-1]:.2f}"))]


def format_table(rows: Sequence[Row | RevisitedRow], dataset: str) -> str:
    """The papers' table: method, paper row and the rows' `cells` (METU: DIM, NAR, MAP@100, MAP; revisited:
    DIM, then mAP and mP@10 of Easy, Medium and Hard).

    Columns fit their longest entry; with more than one backbone (e.g. VGG16 and ResNet50
    weights), each row names its own.
    """
    protocols = sorted({r.protocol for r in rows})
    weights = sorted({r.weights for r in rows})
    method = max([len("Method")] + [len(r.method) for r in rows])
    paper = max([len("paper row")] + [len(r.paper_row) for r in rows])
    cells = [r.cells() for r in rows]
    widths = [max([len(heading)] + [len(c[i][1]) for c in cells]) for i, (heading, _) in enumerate(cells[0])]
    header = f"{'Method':<{method}}  {'paper row':<{paper}}  " + " ".join(
        f"{heading:>{w}}" for (heading, _), w in zip(cells[0], widths))
    per_row = len(weights) > 1
    if per_row:
        header += "  weights"
    lines = [f"{dataset}  (protocol: {', '.join(protocols)}; backbone weights: {', '.join(weights)})",
             header, "-" * (len(header) + (max(len(w) for w in weights) - len("weights") if per_row else 0))]
    for r, row_cells in zip(rows, cells):
        line = f"{r.method:<{method}}  {r.paper_row:<{paper}}  " + " ".join(
            f"{value:>{w}}" for (_, value), w in zip(row_cells, widths))
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


def fit_and_embed(
    benchmark: Benchmark | RevisitedBenchmark,
    pipelines: Sequence[Pipeline],
    fit_dirs: Sequence[Path | None],
    fit_images: int | None = None,
    progress: bool = True,
    log=print,
    cache: VectorCache | None = None,
) -> tuple[list[Pipeline], list[np.ndarray]]:
    """The pipelines with a fit folder fitted there on the benchmark's gallery (never its queries),
    then the vectors of each over `benchmark.images`: (pipelines as fitted, [(N, d) vectors]). `tmrjax
    eval` and the trainer's evaluation both score through this. The fitting passes and the embedding share
    one `FeatureMemo`: a gallery image goes through each backbone once per resolution. A revisited
    benchmark's query rows keep only their whole-map regions (`whole_query_regions`)."""
    from .fit import fit_pipelines

    memo = FeatureMemo()
    gallery = benchmark.gallery()
    to_fit = [(p, d) for p, d in zip(pipelines, fit_dirs) if d is not None]
    pipelines = list(pipelines)
    if to_fit:
        started = time.time()
        fitted = fit_pipelines([p for p, _ in to_fit], gallery, [d for _, d in to_fit],
                               num_images=fit_images, progress=progress, memo=memo)
        by_id = {id(p): f for (p, _), f in zip(to_fit, fitted)}
        pipelines = [by_id.get(id(p), p) for p in pipelines]
        fitted_on = min(fit_images or max(p.config.fit.num_images for p, _ in to_fit), len(gallery))
        log(f"fitted     {', '.join(p.name for p, _ in to_fit)} on the gallery in {time.time() - started:.0f} s "
            f"({fitted_on} images)")
    vectors = embed_benchmark(benchmark, pipelines, progress=progress, cache=cache, memo=memo)
    if isinstance(benchmark, RevisitedBenchmark):
        vectors = [whole_query_regions(p, v, len(benchmark)) for p, v in zip(pipelines, vectors)]
    return pipelines, vectors


def whole_query_regions(pipeline: Pipeline, vectors: np.ndarray, first_query: int) -> np.ndarray:
    """Region vectors (N, R, d) whose rows from `first_query` on, queries cropped to their object, keep only
    the whole-map regions (`Pipeline.whole_map_regions`; the others all zero, absent, never matched): jeong2017
    Sec. 5 describes a cropped Oxford / Paris query by R_M alone. One vector per image is returned as it is."""
    if vectors.ndim != 3:
        return vectors
    out = vectors.copy()
    out[first_query:, np.setdiff1d(np.arange(vectors.shape[1]), pipeline.whole_map_regions)] = 0.0
    return out


def _safe_name(name: str) -> str:
    """A dataset name or image id as one path component (``logo_groups/small`` -> ``logo_groups_small``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def run_eval(
    dataset: str,
    pipeline_names: Sequence[str | ConfigDict],
    out_dir: str | os.PathLike,
    weights: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    max_distractors: int | None = None,
    fit_images: int | None = None,
    protocol: str | None = None,
    data_dir: str | os.PathLike | None = None,
    report_queries: int | None = None,
    progress: bool = True,
    log=print,
    cache: VectorCache | None = None,
) -> tuple[list[Row], Path]:
    """Fit what each pipeline needs on the gallery, embed the database, score, report.

    `pipeline_names`: config names, ``.py`` config files or configs. `weights`: converted
    backbone directories, at most one per architecture, and/or ``"random"``; each pipeline
    uses the one of its backbone's architecture, else random initialisation if ``"random"`` is
    among them, else its config's default (a shipped backbone; `backbone_weights`). Vectors and
    fitted artefacts are cached under `out_dir/cache/` per (dataset subset, pipeline config
    hash, weights), so a second run only evaluates; `cache` (`vector_cache`) shares vectors with
    other commands, by pixels. `protocol`: a group benchmark's "metu-official" (default) or "hu2024"; a
    revisited benchmark has its own, "revisited".
    """
    out = Path(out_dir)
    benchmark = open_benchmark(dataset, max_distractors=max_distractors, data_dir=data_dir)
    score, protocols = SCORING[type(benchmark)]
    protocol = protocol or protocols[0]
    if protocol not in protocols:
        raise ValueError(f"{benchmark.name}: protocol {protocol!r}; this benchmark is scored by {protocols}")
    subset = f"{_safe_name(benchmark.name)}-q{benchmark.num_queries}-g{len(benchmark.gallery())}"
    log(f"dataset    {benchmark.describe()}")
    for path, reason in benchmark.database.unreadable.failures:
        log(f"note       {path}: {reason}; not in the benchmark")
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
    fit_dirs: list[Path | None] = []
    for config, folder, backbone in zip(configs, caches, chosen):
        if (folder / "vectors.npy").is_file():
            vectors[config.name] = np.load(folder / "vectors.npy")
            log(f"cached     {config.name}: {folder}")
            continue
        if needs_fit(config) and (folder / "pipeline" / "pipeline.json").is_file():
            todo.append(Pipeline.load(folder / "pipeline", weights=backbone))
            fit_dirs.append(None)
        else:
            todo.append(Pipeline.create(config, weights=backbone))
            fit_dirs.append(folder / "pipeline" if needs_fit(config) else None)
    if todo:
        for pipeline, v in zip(*fit_and_embed(benchmark, todo, fit_dirs, fit_images, progress, log, cache)):
            folder = caches[labels.index(pipeline.name)]
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / "vectors.npy", v)
            vectors[pipeline.name] = v

    rows, per_query, write_report = score(benchmark, configs, tags, vectors, protocol)
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(rows, benchmark.name)
    (out / "results.json").write_text(json.dumps(
        {"dataset": benchmark.name, "subset": subset, "rows": [r.to_dict() for r in rows]}, indent=2) + "\n")
    (out / "results.txt").write_text(table + "\n")
    # Per-query scores, for paired comparisons of two rows (`tmrjax.metrics.paired_bootstrap`).
    np.savez(out / "per_query.npz", **per_query)
    return rows, write_report(out / "report", report_queries)


def _score_groups(benchmark: Benchmark, configs: Sequence[ConfigDict], tags: Sequence[str],
                  vectors: dict[str, np.ndarray], protocol: str):
    """A group benchmark's rows (NAR, MAP@100, MAP), per-query scores and report writer, after the search-time
    post-processing of each config (`config.search`): DBA replaces the database, QE the queries."""
    rows: list[Row] = []
    evaluations: dict[str, Evaluation] = {}
    searched: dict[str, np.ndarray | None] = {}
    augmented: dict[str, np.ndarray] = {}
    for config, tag in zip(configs, tags):
        augmented[config.name] = augment_database(vectors[config.name], config.search)
        searched[config.name] = expand_queries(augmented[config.name], np.asarray(benchmark.query_rows), config.search)
        result = evaluate(augmented[config.name], benchmark.query_rows, benchmark.relevant, k=100, protocol=protocol,
                          query_vectors=searched[config.name])
        evaluations[config.name] = result
        rows.append(Row(config.name, config.paper_row, int(vectors[config.name].shape[-1]), result.nar,
                        result.map_at_k, result.map, result.protocol, tag))
    per_query = {f"{name}/{field}": getattr(e, f"{field}_per_query")
                 for name, e in evaluations.items() for field in ("nar", "ap_at_k", "ap")}

    def write_report(out: Path, num_queries: int | None) -> Path:
        from .report import write_report

        return write_report(out, benchmark, augmented, evaluations, rows, num_queries=num_queries,
                            query_vectors=searched)

    return rows, per_query, write_report


def revisited_scores(benchmark: RevisitedBenchmark, vectors: np.ndarray, search: ConfigDict) -> np.ndarray:
    """(Q, N) scores of a revisited benchmark's queries (`vectors` rows N on) against its database (rows < N)
    after the search-time post-processing `search`: DBA over the database, then QE of each query over it
    (the queries are not database rows, so none is excluded from its own expansion images)."""
    n = len(benchmark)
    database, queries = augment_database(vectors[:n], search), vectors[n:]
    outside = np.full(len(queries), -1)
    searched = expand_queries(database, outside, search, query_vectors=queries)
    return similarities(database, np.zeros(len(queries), np.int64),
                        query_vectors=queries if searched is None else searched)


def _score_revisited(benchmark: RevisitedBenchmark, configs: Sequence[ConfigDict], tags: Sequence[str],
                     vectors: dict[str, np.ndarray], protocol: str):
    """A revisited benchmark's rows (Easy / Medium / Hard mAP and mP@1, 5, 10, junk ignored), per-query scores
    and report writer (`revisited_scores`, `tmrjax.revisited.evaluate_revisited`)."""
    rows: list[RevisitedRow] = []
    scores: dict[str, np.ndarray] = {}
    per_query: dict[str, np.ndarray] = {}
    for config, tag in zip(configs, tags):
        scores[config.name] = revisited_scores(benchmark, vectors[config.name], config.search)
        results = evaluate_revisited(ranking_from_scores(scores[config.name]), benchmark.ground_truth)
        ks = results["medium"].ks
        rows.append(RevisitedRow(config.name, config.paper_row, int(vectors[config.name].shape[-1]),
                                 {s: r.mean_ap for s, r in results.items()},
                                 {s: r.mean_precision_at_k.tolist() for s, r in results.items()}, ks, protocol, tag))
        for setup, r in results.items():
            per_query[f"{config.name}/{setup}_ap"] = r.ap
            per_query.update({f"{config.name}/{setup}_p_at_{k}": r.precision_at_k[:, j] for j, k in enumerate(ks)})
    medium_ap = {name: per_query[f"{name}/medium_ap"] for name in scores}

    def write_report(out: Path, num_queries: int | None) -> Path:
        from .report import write_revisited_report

        return write_revisited_report(out, benchmark, scores, medium_ap, rows, num_queries=num_queries)

    return rows, per_query, write_report


# The scoring of each kind of benchmark, and its protocols (the first is the default).
SCORING = {
    Benchmark: (_score_groups, ("metu-official", "hu2024")),
    RevisitedBenchmark: (_score_revisited, ("revisited",)),
}
