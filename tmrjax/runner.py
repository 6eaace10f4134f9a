"""The one loop of every job: images from a source, one backbone pass, then each pipeline's function.

`fit`, `eval`, `index`, `search`, the benchmarks and the trainer's evaluation are this loop with a
different sink (artefact fitting, scoring, index writing, timing):

    for batch in iter_batches(source):             one decode, the union of every pipeline's sizes
                                                   (and salient points where a pipeline ranks them)
        maps = BackboneRunner.feature_maps(batch)  one pass per (weights, tap) and resolution
        out  = [fn(pipeline, maps[pipeline], pipeline.points_of(batch.points))]
                                                   e.g. Pipeline.embed_features, or raw regions for fit
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from .data.images import Batch, FailureLog, ImageError
from .data.salient_points import N_MAX
from .data.sources import LOAD_WORKERS, ArraySource, ImageSource, PointsMemo, iter_batches, open_source
from .pipeline import CombinedPipeline, Pipeline
from .progress import progress_bar
from .vector_cache import PipelineVectors, VectorCache

if TYPE_CHECKING:
    from .stages import DetectedPoints


def _memo_budget() -> int:
    """A quarter of the machine's memory, at most 4 GiB."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 8 << 30
    return min(physical // 4, 4 << 30)


class FeatureMemo:
    """Backbone feature maps of the images a job has passed through the backbone, on the host, by
    (backbone key, resolution, pixels key): a job that reads the same images several times (the
    passes of `fit`, then embedding the database that contains the fitting sample) runs each
    image through the backbone once per resolution.

    It also keeps the salient points detected in the images (jeong2017's "hessian" regions), by
    (resolution, pixels key), which the load workers look up before detecting them again
    (`get_points`, `put_points`; `iter_batches(points_memo=...)`).

    Maps and points are admitted until `max_bytes` is reached and then kept (never evicted): a job
    scans its images in the same order pass after pass, which an LRU would miss every time, while a
    full memo still serves its first images. A memo belongs to one job; it is freed with it.
    """

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = _memo_budget() if max_bytes is None else max_bytes
        self.bytes = 0
        self._maps: dict[tuple, np.ndarray] = {}
        self._points: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()  # the load workers put points from their threads
        self.computed = 0  # image maps computed (put) and served (get): what a test can count
        self.served = 0

    @property
    def full(self) -> bool:
        return self.bytes >= self.max_bytes

    def get(self, key: tuple) -> np.ndarray | None:
        found = self._maps.get(key)
        self.served += found is not None
        return found

    def put(self, key: tuple, features: np.ndarray) -> None:
        with self._lock:
            self.computed += 1
            if key not in self._maps and self.bytes + features.nbytes <= self.max_bytes:
                self._maps[key] = features
                self.bytes += features.nbytes

    def get_points(self, key: tuple) -> tuple[np.ndarray, np.ndarray] | None:
        with self._lock:
            return self._points.get(key)

    def put_points(self, key: tuple, points: tuple[np.ndarray, np.ndarray]) -> None:
        size = sum(a.nbytes for a in points)
        with self._lock:
            if key not in self._points and self.bytes + size <= self.max_bytes:
                self._points[key] = points
                self.bytes += size


class BackboneRunner:
    """Feature maps for pipelines that may share backbones: pipelines with equal `backbone_key`
    (weights and tap) get the maps of one forward pass per resolution of the union of theirs;
    with a `memo`, images it holds are not passed through the backbone again."""

    def __init__(self, pipelines: Sequence[Pipeline], memo: FeatureMemo | None = None):
        self.pipelines = list(pipelines)
        self.memo = memo
        self.leads: dict[tuple, Pipeline] = {}
        for p in self.pipelines:
            self.leads.setdefault(p.backbone_key, p)
        self.sizes = tuple(sorted({r for p in self.pipelines for r in p.resolutions}))
        self.point_sizes = tuple(sorted({r for p in self.pipelines for r in p.point_sizes}))

    def feature_maps(self, batch: Batch, needed: Sequence[bool] | None = None) -> list[list[jax.Array] | None]:
        """Per pipeline, per resolution of that pipeline: the backbone tap (B, h, w, C) of `batch`,
        whose images are at `sizes`; None for the pipelines not `needed` (default: all are), whose
        backbones run only for the sizes the needed ones use."""
        needed = [True] * len(self.pipelines) if needed is None else needed
        sizes_of: dict[tuple, set[int]] = {}
        for p, need in zip(self.pipelines, needed):
            if need:
                sizes_of.setdefault(p.backbone_key, set()).update(p.resolutions)
        by_size = dict(zip(self.sizes, batch.images))
        maps = {key: {s: self._tap(key, s, by_size[s], batch) for s in sorted(sizes)}
                for key, sizes in sizes_of.items()}
        return [[maps[p.backbone_key][r] for r in p.resolutions] if need else None
                for p, need in zip(self.pipelines, needed)]

    def _tap(self, key: tuple, size: int, images: np.ndarray, batch: Batch) -> jax.Array | np.ndarray:
        """The (B, h, w, C) maps of one backbone at one size. With a memo, only the images it lacks go
        through the backbone (packed at the front of a white batch of the same shape, so nothing
        compiles again); padding rows of the result repeat the first image, and their outputs are discarded."""
        lead = self.leads[key]
        if self.memo is None:
            return lead.features_batch(images)
        found = [self.memo.get((key, size, k)) for k in batch.keys]
        missing = [i for i, f in enumerate(found) if f is None]
        if len(missing) == len(found):
            maps = lead.features_batch(images)
            if not self.memo.full:
                for k, features in zip(batch.keys, np.asarray(maps)):
                    self.memo.put((key, size, k), features)
            else:
                self.memo.computed += len(missing)
            return maps
        if missing:
            packed = np.full_like(images, 255)  # white padding, as a batch's last rows
            packed[:len(missing)] = images[missing]
            computed = np.asarray(lead.features_batch(packed))
            for i, features in zip(missing, computed):
                found[i] = features
                self.memo.put((key, size, batch.keys[i]), features)
        return np.stack(found + [found[0]] * (len(batch.valid) - len(found)))


def run_pipelines(
    source: ImageSource,
    pipelines: Sequence[Pipeline],
    fn: Callable[[Pipeline, list[jax.Array], list[DetectedPoints | None]], Any],
    failures: FailureLog,
    rows: Sequence[int] | None = None,
    batch_size: int | None = None,
    desc: str | None = None,
    progress: bool = True,
    workers: int = LOAD_WORKERS,
    known: Callable[[Pipeline, Batch], Any | None] | None = None,
    memo: FeatureMemo | None = None,
    points_memo: PointsMemo | None = None,
) -> Iterator[tuple[Batch, list[Any]]]:
    """(batch, [fn(pipeline, its feature maps, its salient points (`Pipeline.points_of`)) for each
    pipeline]) for every batch of `rows` of `source` (default all). Unreadable images are logged in
    `failures` and skipped; outputs cover the padded batch, rows where `batch.valid` is true are
    images. The batch size is the largest of the pipelines' (`batch_size` overrides it).
    `known(pipeline, batch)`, when given, may return a pipeline's output for the batch without its
    backbone (e.g. cached vectors); a backbone runs only for the pipelines left without one, and not
    for the images `memo` holds. Salient points come from `points_memo` (default `memo`) where it has them."""
    runner = BackboneRunner(pipelines, memo)
    batch_size = batch_size or max(p.config.batch_size for p in pipelines)
    total = len(source) if rows is None else len(rows)
    desc = desc or "embed " + "+".join(p.name for p in pipelines)
    with progress_bar(total, desc, progress) as bar:
        reported = len(failures)
        for batch in iter_batches(source, runner.sizes, batch_size, failures, rows, workers, runner.point_sizes,
                                  points_memo=memo if points_memo is None else points_memo):
            ready = [known(p, batch) for p in pipelines] if known else [None] * len(pipelines)
            maps = runner.feature_maps(batch, [r is None for r in ready])
            yield batch, [fn(p, m, p.points_of(batch.points)) if r is None else r
                          for p, m, r in zip(pipelines, maps, ready)]
            bar.update(len(batch.ids) + len(failures) - reported)
            reported = len(failures)


class CachedImagesUndetected:
    """Salient points for a loop whose vectors a cache may hold: an image whose vectors are cached for
    every pipeline ranking points at that size gets none detected (no points at all, in the padded
    shape), since `embed_source` yields its cached vectors whatever the batch computes for it; other
    images' points come from `memo` or are detected (and kept in `memo`). A `PointsMemo`."""

    def __init__(self, stores_by_size: dict[int, list[PipelineVectors]], memo: FeatureMemo | None):
        self.stores_by_size, self.memo = stores_by_size, memo
        self.none = (np.zeros((N_MAX, 2), np.float32), np.zeros(N_MAX, bool))

    def get_points(self, key: tuple) -> tuple[np.ndarray, np.ndarray] | None:
        size, pixels = key
        found = self.memo.get_points(key) if self.memo is not None else None
        if found is None and all(store.has(pixels) for store in self.stores_by_size[size]):
            return self.none
        return found

    def put_points(self, key: tuple, points: tuple[np.ndarray, np.ndarray]) -> None:
        if self.memo is not None:
            self.memo.put_points(key, points)


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
    cache: VectorCache | None = None,
    memo: FeatureMemo | None = None,
) -> Iterator[tuple[list[str], list[np.ndarray]]]:
    """(ids, [(B_valid, d) float32 unit vectors per pipeline]) for every batch of `source`.

    All pipelines read each image once; pipelines (and combined pipelines' parts) that share
    backbone weights and tap share its forward passes, so adding a method to a run costs its
    pooling, not another backbone pass. With a `cache`, a batch whose vectors it holds for a
    pipeline (by pixels, `vector_cache`) skips that pipeline's backbone, and new vectors are added;
    an image it holds gets its cached vectors also in a batch computed for others, and is not searched
    for salient points (`CachedImagesUndetected`). With a `memo`, feature maps computed earlier in the
    job are reused (`FeatureMemo`).
    """
    for p in pipelines:
        p.check_artefacts()
    singles = single_pipelines(pipelines)
    index = {id(p): i for i, p in enumerate(singles)}
    stores = {id(p): cache.of(p.info()["vectors_hash"], p.vector_shape) for p in singles} if cache else {}

    looked_up: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # per pipeline, the current batch's cached vectors

    def cached(p: Pipeline, batch: Batch) -> np.ndarray | None:
        found, vectors = looked_up[id(p)] = stores[id(p)].lookup(batch.keys)
        if not found.all():
            return None
        full = np.zeros((len(batch.valid), *p.vector_shape), np.float32)
        full[batch.valid] = vectors
        return full

    points_memo = None
    if cache and any(p.point_sizes for p in singles):
        points_memo = CachedImagesUndetected(
            {size: [stores[id(p)] for p in singles if size in p.point_sizes]
             for size in {s for p in singles for s in p.point_sizes}}, memo)
    desc = desc or "embed " + "+".join(p.name for p in pipelines)
    try:
        for batch, vectors in run_pipelines(source, singles, lambda p, maps, points: p.embed_features(maps, points),
                                            failures, rows, batch_size, desc, progress, workers,
                                            known=cached if cache else None, memo=memo, points_memo=points_memo):
            valid = [np.array(v[batch.valid]) for v in vectors]
            for p, v in zip(singles, valid):
                if cache:  # a cached image gets its cached vectors, whatever else its batch holds
                    found, cached_vectors = looked_up[id(p)]
                    v[found] = cached_vectors
                    stores[id(p)].put(batch.keys, v)
            yield list(batch.ids), [
                p.combine({name: valid[index[id(part)]] for name, part in p.parts.items()})
                if isinstance(p, CombinedPipeline) else valid[index[id(p)]] for p in pipelines]
    finally:
        if cache:
            cache.flush()


def embed_all(
    source: ImageSource,
    pipelines: Sequence[Pipeline | CombinedPipeline],
    failures: FailureLog,
    rows: Sequence[int] | None = None,
    progress: bool = True,
    cache: VectorCache | None = None,
    memo: FeatureMemo | None = None,
) -> tuple[list[str], list[np.ndarray]]:
    """`embed_source` collected: (ids of the readable images, [(N, d) vectors per pipeline])."""
    ids: list[str] = []
    parts: list[list[np.ndarray]] = [[np.zeros((0, *p.vector_shape), np.float32)] for p in pipelines]
    for batch_ids, vectors in embed_source(source, pipelines, failures, rows, progress=progress, cache=cache,
                                           memo=memo):
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
    cache: VectorCache | None = None,
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Stream (ids, vectors) batches over a source: an `ImageSource`, or what `open_source` reads (a
    folder, walked recursively with relative paths as ids; a list of paths relative to `root`;
    ``"tfds:NAME/CONFIG:SPLIT"`` with the records' ids). Unreadable files are recorded in
    `failures` (a FailureLog) and skipped. `cache`: as in `embed_source`."""
    failures = failures if failures is not None else FailureLog()
    source = open_source(source, root)
    for path, reason in source.unreadable.failures:
        failures.add(path, reason)
    for ids, (vectors,) in embed_source(source, [pipeline], failures, batch_size=batch_size,
                                        desc=f"embed {pipeline.name}", progress=progress, workers=workers,
                                        cache=cache):
        yield ids, vectors
