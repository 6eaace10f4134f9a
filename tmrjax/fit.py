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

import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import jax.numpy as jnp
import numpy as np

from .data.images import Batch, FailureLog, iter_batches, list_images
from .kernels import idf as idf_kernels
from .kernels import whitening
from .pipeline import Artefacts, Pipeline, PipelineError, needs_fit


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
        self.ids = list_images(self.root)

    def describe(self) -> str:
        return str(self.root.absolute())

    def batches(self, ids: Sequence[str], sizes: tuple[int, ...], batch_size: int, failures: FailureLog) -> Iterator[Batch]:
        return iter_batches(ids, self.root, sizes, batch_size, failures=failures)


def sample_ids(ids: Sequence[str], num_images: int, seed: int) -> list[str]:
    """`num_images` of `ids` (all if fewer), chosen uniformly at random by `seed`, in input order."""
    if len(ids) <= num_images:
        return list(ids)
    rng = np.random.default_rng(seed)
    return [ids[i] for i in sorted(rng.choice(len(ids), num_images, replace=False))]


def _regional_batches(
    pipeline: Pipeline, images, ids: Sequence[str], failures: FailureLog, desc: str, progress: bool
) -> Iterator[list[np.ndarray]]:
    """Per valid image of each batch, raw regional descriptors of every resolution: list of (B, R, D')."""
    from tqdm.auto import tqdm

    batches = images.batches(ids, pipeline.resolutions, pipeline.config.batch_size, failures)
    with tqdm(total=len(ids), unit="img", desc=desc, disable=not progress) as bar:
        reported = len(failures)
        for batch in batches:
            yield [pipeline.describe_batch(images)[batch.valid] for images in batch.images]
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
    import faiss

    config = pipeline.config
    if not needs_fit(config):
        raise PipelineError(f"{config.name}: nothing to fit (no PCA-whitening, no attention)")
    fit = config.fit
    if isinstance(images, (str, os.PathLike)):
        images = FolderImages(images)
    if not images.ids:
        raise PipelineError(f"{images.describe()}: no images to fit on")
    failures = failures if failures is not None else FailureLog()
    paths = sample_ids(images.ids, num_images or fit.num_images, fit.seed)
    rng = np.random.default_rng(fit.seed)
    started = time.time()

    # Pass 1: PCA-whitening from a uniform sample of l2-normalised raw regional descriptors.
    reservoir = _Reservoir(fit.max_descriptors, pipeline.raw_dim, rng)
    images_used = 0
    for per_resolution in _regional_batches(pipeline, images, paths, failures, "fit: PCA-w", progress):
        images_used += len(per_resolution[0])
        for descriptors in per_resolution:
            x = np.asarray(descriptors, np.float32).reshape(-1, descriptors.shape[-1])
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            reservoir.add(x / np.maximum(norms, 1e-6))
    sample = reservoir.sample()
    dim = config.embed.pca_whitening_dim
    if len(sample) < dim + 1:
        raise PipelineError(
            f"{images.describe()}: {len(sample)} regional descriptors from {images_used} images cannot fit "
            f"PCA-whitening to {dim} dims; fit on more images"
        )
    mean, projection = whitening.learn_pca_whitening(jnp.asarray(sample), dim)
    pipeline.artefacts = Artefacts(pca_mean=np.asarray(mean), pca_projection=np.asarray(projection))
    pipeline.__post_init__()

    # Pass 2 (URA): codebook of post-processed regions, IDF over images as documents.
    if config.embed.attention == "idf":
        k = config.embed.codebook_size
        # float32 (R_total, d) per image, 90 x 256 x 4 bytes = 92 KB (2.8 GB for 30,000 marks):
        # words are assigned on exactly the values embedding will see.
        per_image = []
        for per_resolution in _regional_batches(pipeline, images, paths, FailureLog(), "fit: URA", progress):
            post = np.concatenate([np.asarray(pipeline.postprocess_batch(d)) for d in per_resolution], axis=1)
            per_image.extend(post.astype(np.float32))
        regions = np.stack(per_image)  # (N, R_total, d)
        flat = regions.reshape(-1, dim).astype(np.float32)
        if len(flat) < k:
            raise PipelineError(f"{images.describe()}: {len(flat)} regional descriptors cannot train {k} visual words")
        train = flat[rng.choice(len(flat), min(len(flat), fit.max_descriptors), replace=False)]
        kmeans = faiss.Kmeans(dim, k, niter=fit.kmeans_iterations, seed=fit.seed, verbose=False)
        kmeans.train(np.ascontiguousarray(train))
        centroids = np.asarray(kmeans.centroids, np.float32)
        _, words = kmeans.index.search(np.ascontiguousarray(flat), 1)
        words = words.reshape(regions.shape[:2])
        df = idf_kernels.document_frequency(jnp.asarray(words), jnp.ones(words.shape, bool), k)
        idf = idf_kernels.idf_from_document_frequency(df, len(regions))
        pipeline.artefacts.centroids = centroids
        pipeline.artefacts.idf = np.asarray(idf, np.float32)
        pipeline.__post_init__()

    pipeline.check_artefacts()
    pipeline.save(
        out_dir,
        data={
            "images": images.describe(),
            "images_sampled": len(paths),
            "images_used": images_used,
            "images_skipped": len(failures),
            "pca_descriptors": int(len(sample)),
            "seed": int(fit.seed),
            "seconds": round(time.time() - started, 1),
        },
    )
    return pipeline


def describe_fit(pipeline: Pipeline) -> dict[str, Any]:
    """Small numbers that show what was learned (for the CLI summary)."""
    arts = pipeline.artefacts or Artefacts()
    out: dict[str, Any] = {}
    if arts.pca_projection is not None:
        out["pca_whitening"] = f"{arts.pca_projection.shape[0]} -> {arts.pca_projection.shape[1]}"
    if arts.idf is not None:
        out["codebook_words"] = len(arts.idf)
        out["idf_range"] = f"{arts.idf.min():.3f} .. {arts.idf.max():.3f}"
    return out
