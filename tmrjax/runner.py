"""The one loop of every job: images from a source, one backbone pass, then each pipeline's function.

`fit`, `eval`, `index`, `search`, the benchmarks and the trainer's evaluation are this loop with a
different sink (artefact fitting, scoring, index writing, timing):

    for batch in iter_batches(source):             one decode, the union of every pipeline's sizes
        maps = BackboneRunner.feature_maps(batch)  one pass per (weights, tap) and resolution
        out  = [fn(pipeline, maps[pipeline])]      e.g. Pipeline.embed_features, or raw regions for fit
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from .data.images import Batch, FailureLog, ImageError
from .data.sources import LOAD_WORKERS, ArraySource, ImageSource, iter_batches, open_source
from .pipeline import CombinedPipeline, Pipeline
from .progress import progress_bar


class BackboneRunner:
    """Feature maps for pipelines that may share backbones: pipelines with equal `backbone_key`
    (weights and tap) get the maps of one forward pass per resolution of the union of theirs."""

    def __init__(self, pipelines: Sequence[Pipeline]):
        self.pipelines = list(pipelines)
        self.leads: dict[tuple, Pipeline] = {}
        self.sizes_of: dict[tuple, set[int]] = {}
        for p in self.pipelines:
            self.leads.setdefault(p.backbone_key, p)
            self.sizes_of.setdefault(p.backbone_key, set()).update(p.resolutions)
        self.sizes = tuple(sorted({r for p in self.pipelines for r in p.resolutions}))

    def feature_maps(self, batch: Batch) -> list[list[jax.Array]]:
        """Per pipeline, per resolution of that pipeline: the backbone tap (B, h, w, C) of `batch`,
        whose images are at `sizes`."""
        by_size = dict(zip(self.sizes, batch.images))
        maps = {key: {s: lead.features_batch(by_size[s]) for s in sorted(self.sizes_of[key])}
                for key, lead in self.leads.items()}
        return [[maps[p.backbone_key][r] for r in p.resolutions] for p in self.pipelines]


def run_pipelines(
    source: ImageSource,
    pipelines: Sequence[Pipeline],
    fn: Callable[[Pipeline, list[jax.Array]], Any],
    failures: FailureLog,
    rows: Sequence[int] | None = None,
    batch_size: int | None = None,
    desc: str | None = None,
    progress: bool = True,
    workers: int = LOAD_WORKERS,
) -> Iterator[tuple[Batch, list[Any]]]:
    """(batch, [fn(pipeline, its feature maps) for each pipeline]) for every batch of `rows` of
    `source` (default all). Unreadable images are logged in `failures` and skipped; outputs cover
    the padded batch, rows where `batch.valid` is true are images. The batch size is the largest
    of the pipelines' (`batch_size` overrides it)."""
    runner = BackboneRunner(pipelines)
    batch_size = batch_size or max(p.config.batch_size for p in pipelines)
    total = len(source) if rows is None else len(rows)
    desc = desc or "embed " + "+".join(p.name for p in pipelines)
    with progress_bar(total, desc, progress) as bar:
        reported = len(failures)
        for batch in iter_batches(source, runner.sizes, batch_size, failures, rows, workers):
            maps = runner.feature_maps(batch)
            yield batch, [fn(p, m) for p, m in zip(pipelines, maps)]
            bar.update(len(batch.ids) + len(failures) - reported)
            reported = len(failures)


def single_pipelines(pipelines: Sequence[Pipeline | CombinedPipeline]) -> list[Pipeline]:
    """The one-backbone pipelines that `pipelines` consist of (a combined pipeline's parts), each once."""
    out: dict[int, Pipeline] = {}
    for p in pipelines:
        for single in p.parts.values() if isinstance(p, CombinedPipeline) else [p]:
            out.setdefault(id(single), single)
    return list(out.values())


def embed_source(
    source: ImageSource,
    pipelines: Sequence[Pipeline | CombinedPipeline],
    failures: FailureLog,
    rows: Sequence[int] | None = None,
    batch_size: int | None = None,
    desc: str | None = None,
    progress: bool = True,
    workers: int = LOAD_WORKERS,
) -> Iterator[tuple[list[str], list[np.ndarray]]]:
    """(ids, [(B_valid, d) float32 unit vectors per pipeline]) for every batch of `source`.

    All pipelines read each image once; pipelines (and combined pipelines' parts) that share
    backbone weights and tap share its forward passes, so adding a method to a run costs its
    pooling, not another backbone pass.
    """
    for p in pipelines:
        p.check_artefacts()
    singles = single_pipelines(pipelines)
    index = {id(p): i for i, p in enumerate(singles)}
    desc = desc or "embed " + "+".join(p.name for p in pipelines)
    for batch, vectors in run_pipelines(source, singles, lambda p, maps: p.embed_features(maps), failures,
                                        rows, batch_size, desc, progress, workers):
        valid = [v[batch.valid] for v in vectors]
        yield list(batch.ids), [
            p.combine({name: valid[index[id(part)]] for name, part in p.parts.items()})
            if isinstance(p, CombinedPipeline) else valid[index[id(p)]] for p in pipelines]


def embed_all(
    source: ImageSource,
    pipelines: Sequence[Pipeline | CombinedPipeline],
    failures: FailureLog,
    rows: Sequence[int] | None = None,
    progress: bool = True,
) -> tuple[list[str], list[np.ndarray]]:
    """`embed_source` collected: (ids of the readable images, [(N, d) vectors per pipeline])."""
    ids: list[str] = []
    parts: list[list[np.ndarray]] = [[np.zeros((0, *p.vector_shape), np.float32)] for p in pipelines]
    for batch_ids, vectors in embed_source(source, pipelines, failures, rows, progress=progress):
        ids += batch_ids
        for out, v in zip(parts, vectors):
            out.append(v)
    return ids, [np.concatenate(p) for p in parts]


def embed(images: Sequence[Any], pipeline: Pipeline | CombinedPipeline, batch_size: int | None = None) -> np.ndarray:
    """Embed images (uint8 arrays, PIL images or paths) -> (N, d) float32, l2-normalised ((N, R, d)
    region vectors for a region-matching pipeline, `Pipeline.vector_shape`).

    Images are padded to a white square and resized to each of the pipeline's resolutions
    (no centre crop, tursun2019 Sec. 4.4). A bad input raises ImageError naming it.
    """
    failures = FailureLog()
    vectors = [np.zeros((0, *pipeline.vector_shape), np.float32)]
    for _, (v,) in embed_source(ArraySource(images), [pipeline], failures, batch_size=batch_size, progress=False):
        if len(failures):
            break
        vectors.append(v)
    if len(failures):
        raise ImageError(*failures.failures[0])
    return np.concatenate(vectors)


def embed_stream(
    source: str | os.PathLike | Sequence[str] | ImageSource,
    pipeline: Pipeline | CombinedPipeline,
    batch_size: int | None = None,
    failures: FailureLog | None = None,
    root: str | os.PathLike | None = None,
    progress: bool = True,
    workers: int = LOAD_WORKERS,
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Stream (ids, vectors) batches over a source: an `ImageSource`, or what `open_source` reads (a
    folder, walked recursively with relative paths as ids; a list of paths relative to `root`;
    ``"tfds:NAME/CONFIG:SPLIT"`` with the records' ids). Unreadable files are recorded in
    `failures` (a FailureLog) and skipped."""
    failures = failures if failures is not None else FailureLog()
    source = open_source(source, root)
    for path, reason in source.unreadable.failures:
        failures.add(path, reason)
    for ids, (vectors,) in embed_source(source, [pipeline], failures, batch_size=batch_size,
                                        desc=f"embed {pipeline.name}", progress=progress, workers=workers):
        yield ids, vectors
