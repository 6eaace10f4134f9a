"""Learning the pipeline's post-processing on gallery images (`tmrjax fit`).

tursun2021 Sec. 3: PCA-whitening learned on regional features of 30,000 sampled marks
(256 dims), then URA: a 1,024-word k-means codebook (faiss) of the post-processed regional
features and the IDF of each word over the sampled images (one image = one document).

Two passes over the sample when URA is on: the first learns PCA-whitening from a uniform
sample of raw regional descriptors; the second post-processes every region with it,
clusters a sample of them and counts document frequencies. Raw descriptors (up to
2,048-d x 90 regions per image) are never all kept in memory.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .data.images import Batch, FailureLog, iter_batches, list_images
from .kernels import idf as idf_kernels
from .kernels import whitening
from .pipeline import Artefacts, CombinedPipeline, Pipeline, PipelineError, needs_fit


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


class FolderImages:
    """The images under a folder as a fitting source: ids are relative paths."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.unreadable = FailureLog()  # entries of the folder that could not be listed
        self.ids = list_images(self.root, self.unreadable)

    def describe(self) -> str:
        return str(self.root.absolute())

    def batches(
        self, ids: Sequence[str], sizes: tuple[int, ...], batch_size: int, failures: FailureLog
    ) -> Iterator[Batch]:
        return iter_batches(ids, self.root, sizes, batch_size, failures=failures)


def sample_ids(ids: Sequence[str], num_images: int, seed: int) -> list[str]:
    """`num_images` of `ids` (all if fewer), chosen uniformly at random by `seed`, in input order."""
    if len(ids) <= num_images:
        return list(ids)
    rng = np.random.default_rng(seed)
    return [ids[i] for i in sorted(rng.choice(len(ids), num_images, replace=False))]


def _regional_batches(
    pipelines: Sequence[Pipeline], images, ids: Sequence[str], failures: FailureLog, desc: str, progress: bool
) -> Iterator[list[list[jax.Array]]]:
    """Per batch, per pipeline, per resolution: raw regional descriptors (B_valid, R, D').

    The pipelines share one backbone (equal `backbone_key`): each resolution's feature map is
    computed once and every pipeline pools its own regions from it.
    """
    from .progress import progress_bar

    sizes = tuple(sorted({r for p in pipelines for r in p.resolutions}))
    lead = pipelines[0]
    batch_size = max(p.config.batch_size for p in pipelines)
    batches = images.batches(ids, sizes, batch_size, failures)
    with progress_bar(len(ids), desc, progress) as bar:
        reported = len(failures)
        for batch in batches:
            features = {s: lead.features_batch(x) for s, x in zip(sizes, batch.images)}
            yield [[p.describe_features(features[r])[batch.valid] for r in p.resolutions] for p in pipelines]
            bar.update(len(batch.ids) + len(failures) - reported)
            reported = len(failures)


def fit_pipeline(
    pipeline: Pipeline,
    images,
    out_dir: str | os.PathLike,
    num_images: int | None = None,
    failures: FailureLog | None = None,
    progress: bool = True,
) -> Pipeline:
    """Learn PCA-whitening (and the URA codebook + IDF) on gallery images.

    `images` is a folder (str/Path) or an object with `ids`, `describe()` and
    `batches(ids, sizes, batch_size, failures)` (e.g. a benchmark's gallery). Writes
    `out_dir/pipeline.json` + `artefacts.npz` and returns the fitted pipeline.
    """
    return fit_pipelines([pipeline], images, [out_dir], num_images, failures, progress)[0]


def fit_pipelines(
    pipelines: Sequence[Pipeline],
    images,
    out_dirs: Sequence[str | os.PathLike],
    num_images: int | None = None,
    failures: FailureLog | None = None,
    progress: bool = True,
) -> list[Pipeline]:
    """`fit_pipeline` for several pipelines, sharing backbone passes where they can.

    Pipelines with the same backbone (weights and tap) and the same image sample (fit
    `num_images` and `seed`) read each image once per resolution, as `tmrjax eval` embeds
    them: fitting R-MAC, R-SMAC and MR-R-SMAC+URA costs about one ResNet50 pass per
    resolution and pass, not one per pipeline. Each result equals fitting it alone.
    """
    if len(pipelines) != len(out_dirs):
        raise ValueError(f"{len(pipelines)} pipelines but {len(out_dirs)} output directories")
    for pipeline in pipelines:
        if not needs_fit(pipeline.config):
            raise PipelineError(f"{pipeline.name}: nothing to fit (no PCA-whitening, no attention)")
    # A combined pipeline fits its parts that need it, each into parts/<name>/ of its folder.
    single: list[Pipeline] = []
    single_dirs: list[Path] = []
    for pipeline, out_dir in zip(pipelines, out_dirs):
        parts = pipeline.parts if isinstance(pipeline, CombinedPipeline) else {None: pipeline}
        for name, part in parts.items():
            if needs_fit(part.config):
                single.append(part)
                single_dirs.append(Path(out_dir) if name is None else Path(out_dir) / "parts" / name)
    _fit_single(single, images, single_dirs, num_images, failures, progress)
    for pipeline, out_dir in zip(pipelines, out_dirs):
        if isinstance(pipeline, CombinedPipeline):
            fitted = next(part for part in pipeline.parts.values() if needs_fit(part.config))
            pipeline.save(out_dir, data=json.loads((fitted.path / "pipeline.json").read_text())["data"])
    return list(pipelines)


def _fit_single(
    pipelines: Sequence[Pipeline],
    images,
    out_dirs: Sequence[str | os.PathLike],
    num_images: int | None,
    failures: FailureLog | None,
    progress: bool,
) -> None:
    """`fit_pipelines` for pipelines of one backbone each."""
    if isinstance(images, (str, os.PathLike)):
        images = FolderImages(images)
    if not images.ids:
        raise PipelineError(f"{images.describe()}: no images to fit on")
    failures = failures if failures is not None else FailureLog()
    for path, reason in getattr(images, "unreadable", FailureLog()).failures:
        failures.add(path, reason)
    samples = [sample_ids(images.ids, num_images or p.config.fit.num_images, p.config.fit.seed) for p in pipelines]
    groups: dict[tuple, list[int]] = {}
    for i, (pipeline, paths) in enumerate(zip(pipelines, samples)):
        groups.setdefault((pipeline.backbone_key, tuple(paths)), []).append(i)
    for members in groups.values():
        skipped = FailureLog()
        _fit_group([pipelines[i] for i in members], images, samples[members[0]],
                   [out_dirs[i] for i in members], skipped, progress)
        known = set(failures.failures)
        for path, reason in skipped.failures:  # each unreadable file reported once
            if (path, reason) not in known:
                failures.add(path, reason)


def _fit_group(
    pipelines: Sequence[Pipeline], images, paths: list[str], out_dirs: Sequence[str | os.PathLike],
    failures: FailureLog, progress: bool,
) -> None:
    """Fit pipelines that share a backbone and an image sample (see `fit_pipelines`)."""
    import faiss

    for pipeline in pipelines:  # global pooling: one descriptor per image and resolution
        dim, resolutions = pipeline.config.embed.pca_whitening_dim, len(pipeline.resolutions)
        if pipeline.config.embed.region_levels == 0 and len(paths) * resolutions <= dim:
            raise PipelineError(
                f"{images.describe()}: {pipeline.name} pools one descriptor per image and resolution, so "
                f"{len(paths)} images give at most {len(paths) * resolutions}, too few to fit PCA-whitening "
                f"to {dim} dims; fit on more than {dim // resolutions} images"
            )
    started = time.time()
    rngs = [np.random.default_rng(p.config.fit.seed) for p in pipelines]
    names = "+".join(p.name for p in pipelines)

    # Pass 1: PCA-whitening from a uniform sample of l2-normalised raw regional descriptors.
    reservoirs = [_Reservoir(p.config.fit.max_descriptors, p.raw_dim, rng) for p, rng in zip(pipelines, rngs)]
    images_used = 0
    for per_pipeline in _regional_batches(pipelines, images, paths, failures, f"fit PCA-w {names}", progress):
        images_used += len(per_pipeline[0][0])
        for reservoir, per_resolution in zip(reservoirs, per_pipeline):
            for descriptors in per_resolution:
                x = np.asarray(descriptors, np.float32).reshape(-1, descriptors.shape[-1])
                norms = np.linalg.norm(x, axis=1, keepdims=True)
                reservoir.add(x / np.maximum(norms, 1e-6))
    samples = [r.sample() for r in reservoirs]
    for pipeline, sample in zip(pipelines, samples):
        dim = pipeline.config.embed.pca_whitening_dim
        if len(sample) < dim + 1:
            raise PipelineError(
                f"{images.describe()}: {len(sample)} regional descriptors from {images_used} images cannot fit "
                f"{pipeline.name}'s PCA-whitening to {dim} dims; fit on more images"
            )
        mean, projection = whitening.learn_pca_whitening(
            jnp.asarray(sample), dim, power=pipeline.config.embed.get("whitening_power", 0.5))
        pipeline.artefacts = Artefacts(pca_mean=np.asarray(mean), pca_projection=np.asarray(projection))
        pipeline.__post_init__()

    # Pass 2 (URA): codebook of post-processed regions, IDF over images as documents.
    ura = [i for i, p in enumerate(pipelines) if p.config.embed.attention == "idf"]
    if ura:
        # float32 (R_total, d) per image, 90 x 256 x 4 bytes = 92 KB (2.8 GB for 30,000 marks):
        # words are assigned on exactly the values embedding will see.
        per_image: dict[int, list[np.ndarray]] = {i: [] for i in ura}
        members = [pipelines[i] for i in ura]
        for per_pipeline in _regional_batches(members, images, paths, FailureLog(), "fit URA " + "+".join(
                p.name for p in members), progress):
            for i, per_resolution in zip(ura, per_pipeline):
                pipeline = pipelines[i]
                post = np.concatenate([np.asarray(pipeline.postprocess_batch(d)) for d in per_resolution], axis=1)
                per_image[i].extend(post.astype(np.float32))
        for i in ura:
            _fit_codebook(pipelines[i], np.stack(per_image.pop(i)), rngs[i], images, faiss)

    for pipeline, sample, out_dir in zip(pipelines, samples, out_dirs):
        pipeline.check_artefacts()
        pipeline.save(
            out_dir,
            data={
                "images": images.describe(),
                "images_sampled": len(paths),
                "images_used": images_used,
                "images_skipped": len(failures),
                "pca_descriptors": len(sample),
                "seed": int(pipeline.config.fit.seed),
                "seconds": round(time.time() - started, 1),
                "fitted_with": [p.name for p in pipelines],
            },
        )


# k-means of the URA codebook needs several points per word; below this it only memorises them.
MIN_DESCRIPTORS_PER_WORD = 10


def _fit_codebook(pipeline: Pipeline, regions: np.ndarray, rng: np.random.Generator, images, faiss) -> None:
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
    pipeline.artefacts.centroids = centroids
    pipeline.artefacts.idf = np.asarray(idf, np.float32)
    pipeline.__post_init__()


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
    arts = pipeline.artefacts or Artefacts()
    data = json.loads((Path(pipeline.path) / "pipeline.json").read_text())["data"]
    learned = []
    if arts.pca_projection is not None:
        d_in, d_out = arts.pca_projection.shape
        learned.append(f"PCA-whitening {d_in:,} -> {d_out:,} dims (from {data['pca_descriptors']:,} descriptors)")
    if arts.idf is not None:
        learned.append(f"a URA codebook of {len(arts.idf):,} words (IDF {arts.idf.min():.2f} .. {arts.idf.max():.2f})")
    skipped = f" ({data['images_skipped']:,} skipped)" if data["images_skipped"] else ""
    return (f"{' and '.join(learned)} on {data['images_used']:,} images{skipped} "
            f"in {format_duration(data['seconds'])}")
