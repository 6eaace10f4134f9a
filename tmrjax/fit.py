"""Learning the pipeline's post-processing on gallery images (`tmrjax fit`).

tursun2021 Sec. 3: PCA-whitening learned on regional features of 30,000 sampled marks
(256 dims), then URA: a 1,024-word k-means codebook (faiss) of the post-processed regional
features and the IDF of each word over the sampled images (one image = one document).

jeong2017 Sec. 3: second-order pooling reduces local descriptors with PCA bases learned on
first-order regional descriptors (Eq. 4), then PCA-whitens the pooled ones (Eq. 6).

Up to three passes over the sample, each only for the pipelines that need it: pass 0 learns
the local PCA bases (second-order pooling needs them before it can pool); pass 1 learns
PCA-whitening from a uniform sample of raw regional descriptors; pass 2 (URA) post-processes
every region with it, clusters a sample of them and counts document frequencies. Invalid
regions (candidate subsets without a cell) are never sampled. Raw descriptors (up to
2,048-d x 90 regions per image) are never all kept in memory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .data.images import FailureLog
from .data.sources import ImageSource, open_source
from .kernels import idf as idf_kernels
from .kernels import whitening
from .lapack_threads import every_core_for_lapack
from .pipeline import Artefacts, CombinedPipeline, Pipeline, PipelineError, needs_fit
from .runner import FeatureMemo, run_pipelines
from .stages import POOLINGS, DetectedPoints


class _Reservoir:
    """A uniform random sample of at most `capacity` rows from a stream (Vitter's algorithm R)."""

    def __init__(self, capacity: int, dim: int, rng: np.random.Generator, dtype=np.float32):
        self.rows = np.empty((capacity, dim), dtype)
        self.seen = 0
        self.rng = rng

    def add(self, x: np.ndarray) -> None:
        capacity = len(self.rows)
        n = len(x)
        fill = max(0, min(capacity - self.seen, n))
        self.rows[self.seen : self.seen + fill] = x[:fill]
        if fill < n:  # each later row i (0-based stream index t) replaces a random slot with p = cap/(t+1)
            t = self.seen + np.arange(fill, n)
            slots = (self.rng.random(n - fill) * (t + 1)).astype(np.int64)
            keep = slots < capacity
            self.rows[slots[keep]] = x[fill:][keep]
        self.seen += n

    def sample(self) -> np.ndarray:
        return self.rows[: min(self.seen, len(self.rows))]


def sample_rows(count: int, num_images: int, seed: int) -> list[int]:
    """`num_images` of `count` rows (all if fewer), chosen uniformly at random by `seed`, in order."""
    if count <= num_images:
        return list(range(count))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(count, num_images, replace=False))


# The passes' functions (`run_pipelines`): one batch's feature maps and salient points (`Pipeline.points_of`),
# per resolution -> what the pass samples.
Points = list[DetectedPoints | None]


def _regional_descriptors(
    pipeline: Pipeline, maps: list[jax.Array], points: Points
) -> list[tuple[jax.Array, jax.Array]]:
    return [pipeline.describe_features(m, pts) for m, pts in zip(maps, points)]


def _first_order_descriptors(
    pipeline: Pipeline, maps: list[jax.Array], points: Points
) -> list[tuple[jax.Array, jax.Array]]:
    return [pipeline.first_order_features(m, pts) for m, pts in zip(maps, points)]


def _postprocessed_regions(pipeline: Pipeline, maps: list[jax.Array], points: Points) -> np.ndarray:
    return np.concatenate([np.asarray(pipeline.postprocess_batch(raw))
                           for raw, _ in _regional_descriptors(pipeline, maps, points)], axis=1)


def _sample_regions(pipelines: Sequence[Pipeline], fn, dims: Sequence[int], rngs, images: ImageSource,
                    rows: list[int], failures: FailureLog, desc: str, progress: bool,
                    memo: FeatureMemo) -> tuple[list[np.ndarray], int]:
    """A uniform sample (at most fit.max_descriptors) of the l2-normalised valid regional descriptors
    `fn(pipeline, maps)` gives for each pipeline over `rows`, and the number of images read."""
    reservoirs = [_Reservoir(p.config.fit.max_descriptors, dim, rng) for p, dim, rng in zip(pipelines, dims, rngs)]
    images_used = 0
    for batch, per_pipeline in run_pipelines(images, pipelines, fn, failures, rows, desc=desc, progress=progress,
                                             memo=memo):
        images_used += len(batch.ids)
        for reservoir, per_resolution in zip(reservoirs, per_pipeline):
            for descriptors, valid in per_resolution:
                keep = np.asarray(valid) & batch.valid[:, None]
                x = np.asarray(descriptors, np.float32)[keep]
                norms = np.linalg.norm(x, axis=1, keepdims=True)
                reservoir.add(x / np.maximum(norms, 1e-6))
    return [r.sample() for r in reservoirs], images_used


def fit_pipeline(
    pipeline: Pipeline | CombinedPipeline,
    images: ImageSource | str | os.PathLike,
    out_dir: str | os.PathLike,
    num_images: int | None = None,
    failures: FailureLog | None = None,
    progress: bool = True,
) -> Pipeline | CombinedPipeline:
    """Learn PCA-whitening (and the URA codebook + IDF) on gallery images.

    `images` is an `ImageSource` (e.g. a benchmark's gallery) or what `open_source` reads (a
    folder). Writes `out_dir/pipeline.json` + `artefacts.npz` and returns the fitted pipeline.
    """
    return fit_pipelines([pipeline], images, [out_dir], num_images, failures, progress)[0]


def fit_pipelines(
    pipelines: Sequence[Pipeline | CombinedPipeline],
    images: ImageSource | str | os.PathLike,
    out_dirs: Sequence[str | os.PathLike],
    num_images: int | None = None,
    failures: FailureLog | None = None,
    progress: bool = True,
    memo: FeatureMemo | None = None,
) -> list[Pipeline | CombinedPipeline]:
    """`fit_pipeline` for several pipelines, sharing backbone passes where they can.

    Pipelines with the same image sample (fit `num_images` and `seed`) read each image once,
    and those that share a backbone (weights and tap) share its passes (`runner.run_pipelines`),
    as `tmrjax eval` embeds them: fitting R-MAC, R-SMAC and MR-R-SMAC+URA costs about one
    ResNet50 pass per resolution, not one per pipeline, and the passes over the sample (local PCA,
    PCA-w, URA) share a `FeatureMemo` (`memo`, else one of this fit's): an image goes through the
    backbone once per resolution while the memo has room. Each result equals fitting it alone.
    """
    if len(pipelines) != len(out_dirs):
        raise ValueError(f"{len(pipelines)} pipelines but {len(out_dirs)} output directories")
    for pipeline in pipelines:
        if not needs_fit(pipeline.config):
            raise PipelineError(f"{pipeline.name}: nothing to fit (no PCA-whitening, no attention)")
    # A combined pipeline fits its parts that need it, each into parts/<name>/ of its folder.
    single: list[Pipeline] = []
    single_dirs: list[Path] = []
    labels: list[str] = []  # for progress lines: a part as combined.part (its config may share a name)
    for pipeline, out_dir in zip(pipelines, out_dirs):
        parts = pipeline.parts if isinstance(pipeline, CombinedPipeline) else {None: pipeline}
        for name, part in parts.items():
            if needs_fit(part.config):
                single.append(part)
                single_dirs.append(Path(out_dir) if name is None else Path(out_dir) / "parts" / name)
                labels.append(part.name if name is None else f"{pipeline.name}.{name}")
    memo = memo if memo is not None else FeatureMemo()
    fitted = iter(_fit_single(single, images, single_dirs, num_images, failures, progress, memo, labels))
    out = []
    for pipeline, out_dir in zip(pipelines, out_dirs):
        if isinstance(pipeline, CombinedPipeline):
            parts = {name: next(fitted) for name, part in pipeline.parts.items() if needs_fit(part.config)}
            data = json.loads((next(iter(parts.values())).path / "pipeline.json").read_text())["data"]
            out.append(pipeline.with_parts(parts).save(out_dir, data=data))
        else:
            out.append(next(fitted))
    return out


def _fit_single(
    pipelines: Sequence[Pipeline],
    images: ImageSource | str | os.PathLike,
    out_dirs: Sequence[str | os.PathLike],
    num_images: int | None,
    failures: FailureLog | None,
    progress: bool,
    memo: FeatureMemo,
    labels: Sequence[str],
) -> list[Pipeline]:
    """`fit_pipelines` for pipelines of one backbone each, named `labels` in progress lines; returns them
    fitted, in order."""
    images = open_source(images)
    if not len(images):
        raise PipelineError(f"{images.describe()}: no images to fit on")
    failures = failures if failures is not None else FailureLog()
    for path, reason in images.unreadable.failures:
        failures.add(path, reason)
    samples = [sample_rows(len(images), num_images or p.config.fit.num_images, p.config.fit.seed) for p in pipelines]
    groups: dict[tuple, list[int]] = {}
    for i, rows in enumerate(samples):
        groups.setdefault(tuple(rows), []).append(i)
    fitted: dict[int, Pipeline] = {}
    for members in groups.values():
        skipped = FailureLog()
        results = _fit_group([pipelines[i] for i in members], images, samples[members[0]],
                             [out_dirs[i] for i in members], skipped, progress, memo, [labels[i] for i in members])
        fitted.update(zip(members, results))
        known = set(failures.failures)
        for path, reason in skipped.failures:  # each unreadable file reported once
            if (path, reason) not in known:
                failures.add(path, reason)
    return [fitted[i] for i in range(len(pipelines))]


def _learn_pca_whitening(sample: np.ndarray, dim: int, power: float) -> tuple[np.ndarray, np.ndarray]:
    """`whitening.learn_pca_whitening` with scipy's OpenBLAS on every core for its one large
    eigendecomposition (8,256^2 for second-order PCA-whitening); waits for it inside that window."""
    with every_core_for_lapack():
        mean, projection = jax.block_until_ready(whitening.learn_pca_whitening(jnp.asarray(sample), dim, power=power))
    return np.asarray(mean), np.asarray(projection)


def _fit_group(
    pipelines: Sequence[Pipeline], images: ImageSource, rows: list[int], out_dirs: Sequence[str | os.PathLike],
    failures: FailureLog, progress: bool, memo: FeatureMemo, labels: Sequence[str],
) -> list[Pipeline]:
    """Fit pipelines that share an image sample (see `fit_pipelines`; `labels` name them in progress lines);
    returns them fitted and saved."""
    import faiss

    for pipeline in pipelines:  # global pooling: one descriptor per image and resolution
        dim, resolutions = pipeline.config.embed.pca_whitening_dim, len(pipeline.resolutions)
        if pipeline.config.embed.regions == "global" and len(rows) * resolutions <= dim:
            raise PipelineError(
                f"{images.describe()}: {pipeline.name} pools one descriptor per image and resolution, so "
                f"{len(rows)} images give at most {len(rows) * resolutions}, too few to fit PCA-whitening "
                f"to {dim} dims; fit on more than {dim // resolutions} images"
            )
    started = time.time()
    rngs = [np.random.default_rng(p.config.fit.seed) for p in pipelines]
    names = "+".join(labels)

    pipelines = list(pipelines)
    images_used = 0

    # Pass 0 (second-order pooling): PCA bases of first-order regional descriptors (jeong2017 Eq. 4),
    # which reduce the local descriptors before the covariance; pass 1 pools with them.
    local = [i for i, p in enumerate(pipelines) if POOLINGS[p.config.embed.pooling].local_projection]
    local_counts: dict[int, int] = {}
    if local:
        members = [pipelines[i] for i in local]
        first, images_used = _sample_regions(
            members, _first_order_descriptors, [p.first_order_features_dim for p in members],
            [rngs[i] for i in local], images, rows, failures, f"fit local PCA {'+'.join(labels[i] for i in local)}",
            progress, memo)
        for i, sample in zip(local, first):
            dim, local_counts[i] = pipelines[i].config.embed.local_dim, len(sample)
            if len(sample) < dim + 1:
                raise PipelineError(
                    f"{images.describe()}: {len(sample)} first-order regional descriptors from {images_used} images "
                    f"cannot fit {pipelines[i].name}'s {dim} PCA bases of local descriptors; fit on more images")
            _, bases = _learn_pca_whitening(sample, dim, power=0.0)
            pipelines[i] = pipelines[i].with_artefacts(Artefacts(local_projection=bases))

    # Pass 1: PCA-whitening from a uniform sample of l2-normalised raw regional descriptors.
    whiten = [i for i, p in enumerate(pipelines) if p.config.embed.pca_whitening_dim > 0]
    samples: dict[int, np.ndarray] = {}
    if whiten:
        members = [pipelines[i] for i in whiten]
        log = FailureLog() if local else failures  # pass 0 has reported the unreadable images
        raw, used = _sample_regions(members, _regional_descriptors, [p.raw_dim for p in members],
                                    [rngs[i] for i in whiten], images, rows, log, f"fit PCA-w {names}", progress,
                                    memo)
        images_used = max(images_used, used)
        samples = dict(zip(whiten, raw))
    for i, sample in samples.items():
        pipeline, dim = pipelines[i], pipelines[i].config.embed.pca_whitening_dim
        if len(sample) < dim + 1:
            raise PipelineError(
                f"{images.describe()}: {len(sample)} regional descriptors from {images_used} images cannot fit "
                f"{pipeline.name}'s PCA-whitening to {dim} dims; fit on more images"
            )
        mean, projection = _learn_pca_whitening(sample, dim, power=pipeline.config.embed.whitening_power)
        pipelines[i] = pipeline.with_artefacts(dataclasses.replace(
            pipeline.artefacts, pca_mean=mean, pca_projection=projection))

    # Pass 2 (URA): codebook of post-processed regions, IDF over images as documents.
    ura = [i for i, p in enumerate(pipelines) if p.config.embed.region_weights == "idf"]
    if ura:
        # float32 (R_total, d) per image, 90 x 256 x 4 bytes = 92 KB (2.8 GB for 30,000 marks):
        # words are assigned on exactly the values embedding will see.
        per_image: dict[int, list[np.ndarray]] = {i: [] for i in ura}
        members = [pipelines[i] for i in ura]
        for batch, per_pipeline in run_pipelines(images, members, _postprocessed_regions, FailureLog(), rows,
                                                 desc="fit URA " + "+".join(labels[i] for i in ura),
                                                 progress=progress, memo=memo):
            for i, post in zip(ura, per_pipeline):
                per_image[i].extend(post[batch.valid].astype(np.float32))
        for i in ura:
            pipelines[i] = _fit_codebook(pipelines[i], np.stack(per_image.pop(i)), rngs[i], images, faiss)

    for pipeline in pipelines:
        pipeline.check_artefacts()
    return [
        pipeline.save(
            out_dir,
            data={
                "images": images.describe(),
                "images_sampled": len(rows),
                "images_used": images_used,
                "images_skipped": len(failures),
                **({"local_descriptors": local_counts[i]} if i in local_counts else {}),
                **({"pca_descriptors": len(samples[i])} if i in samples else {}),
                "seed": int(pipeline.config.fit.seed),
                "seconds": round(time.time() - started, 1),
                "fitted_with": [p.name for p in pipelines],
            },
        )
        for i, (pipeline, out_dir) in enumerate(zip(pipelines, out_dirs))
    ]


# k-means of the URA codebook needs several points per word; below this it only memorises them.
MIN_DESCRIPTORS_PER_WORD = 10


def _fit_codebook(pipeline: Pipeline, regions: np.ndarray, rng: np.random.Generator, images, faiss) -> Pipeline:
    """URA: k-means words of post-processed regions (N, R_total, d) and their IDF over images."""
    fit, embed = pipeline.config.fit, pipeline.config.embed
    k, dim = embed.codebook_size, embed.pca_whitening_dim
    flat = regions.reshape(-1, dim).astype(np.float32)
    need = k * MIN_DESCRIPTORS_PER_WORD
    if len(flat) < need:
        per_image = regions.shape[1]
        raise PipelineError(
            f"{images.describe()}: {pipeline.name}'s URA codebook of {k:,} words needs at least {need:,} regional "
            f"descriptors ({MIN_DESCRIPTORS_PER_WORD} per word), but {len(regions):,} images gave {len(flat):,} "
            f"({per_image} each): fit on at least {-(-need // per_image):,} images, or lower embed.codebook_size")
    train = flat[rng.choice(len(flat), min(len(flat), fit.max_descriptors), replace=False)]
    kmeans = faiss.Kmeans(dim, k, niter=fit.kmeans_iterations, seed=fit.seed, verbose=False,
                          min_points_per_centroid=MIN_DESCRIPTORS_PER_WORD)
    kmeans.train(np.ascontiguousarray(train))
    centroids = np.asarray(kmeans.centroids, np.float32)
    _, words = kmeans.index.search(np.ascontiguousarray(flat), 1)
    words = words.reshape(regions.shape[:2])
    df = idf_kernels.document_frequency(jnp.asarray(words), jnp.ones(words.shape, bool), k)
    idf = idf_kernels.idf_from_document_frequency(df, len(regions))
    return pipeline.with_artefacts(dataclasses.replace(
        pipeline.artefacts, centroids=centroids, idf=np.asarray(idf, np.float32)))


def describe_fit(pipeline: Pipeline) -> str:
    """What a saved fit learned, on how many images and how fast, as one sentence (CLI summary).

    E.g. "PCA-whitening 1,024 -> 256 dims (from 100,000 descriptors) and a URA codebook of
    1,024 words (IDF 0.41 .. 7.82) on 812 images (3 skipped) in 48 s"; the numbers come from
    the artefacts and pipeline.json's "data" of `pipeline.path`.
    """
    from .progress import format_duration

    if isinstance(pipeline, CombinedPipeline):
        return "; ".join(f"{name}: {describe_fit(part)}" for name, part in pipeline.parts.items()
                         if needs_fit(part.config))
    arts = pipeline.artefacts
    data = json.loads((Path(pipeline.path) / "pipeline.json").read_text())["data"]
    learned = []
    if arts.local_projection is not None:
        d_in, d_out = arts.local_projection.shape
        learned.append(f"PCA bases of local descriptors {d_in:,} -> {d_out:,} dims "
                       f"(from {data['local_descriptors']:,} first-order regions)")
    if arts.pca_projection is not None:
        d_in, d_out = arts.pca_projection.shape
        learned.append(f"PCA-whitening {d_in:,} -> {d_out:,} dims (from {data['pca_descriptors']:,} descriptors)")
    if arts.idf is not None:
        learned.append(f"a URA codebook of {len(arts.idf):,} words (IDF {arts.idf.min():.2f} .. {arts.idf.max():.2f})")
    skipped = f" ({data['images_skipped']:,} skipped)" if data["images_skipped"] else ""
    return (f"{' and '.join(learned)} on {data['images_used']:,} images{skipped} "
            f"in {format_duration(data['seconds'])}")
