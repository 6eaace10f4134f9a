"""Indexing a folder of marks and searching it: the pipeline and the faiss index put together."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from .data.images import FailureLog, ImageError, list_images
from .data.sources import PathSource
from .fileio import Record, WriterLock, file_sha256
from .index import GalleryIndex
from .index_kinds import INDEX_KINDS
from .pipeline import Pipeline, PipelineError, config_from_record, weights_of
from .rerank import augment_database, expand_queries
from .runner import embed_stream
from .vector_cache import VectorCache


def index_params(config: ConfigDict, kind: str | None = None) -> dict[str, Any]:
    """The faiss index parameters of a pipeline config (`config.index`), optionally another kind."""
    kind = kind or config.index.kind
    if kind not in INDEX_KINDS:
        raise PipelineError(f"unknown index kind {kind!r}; expected one of {', '.join(INDEX_KINDS)}")
    return {"kind": kind, **{name: config.index[p.config_field] for name, p in INDEX_KINDS[kind].params.items()}}


@dataclasses.dataclass
class IndexReport:
    """What an index run did."""

    path: Path
    total: int
    added: int
    replaced: int
    unchanged: int
    removed: int
    failures: FailureLog

    def summary(self) -> str:
        lines = [
            f"index {self.path}: {self.total} marks ({self.added} added, {self.replaced} re-embedded "
            f"after a content change, {self.unchanged} unchanged, {self.removed} removed as deleted, "
            f"{len(self.failures)} skipped)"
        ]
        if len(self.failures):
            lines.append(self.failures.summary())
        return "\n".join(lines)


def index_folder(
    images_dir: str | os.PathLike,
    pipeline: Pipeline,
    out_dir: str | os.PathLike,
    kind: str | None = None,
    rebuild: bool = False,
    checkpoint_every: int = 2000,
    progress: bool = True,
    verify: bool = True,
    cache: VectorCache | None = None,
) -> IndexReport:
    """Embed every image under `images_dir` that the index at `out_dir` lacks, and add it.

    Re-running on a grown folder embeds only new (and content-changed) files; an interrupted
    run keeps what was checkpointed (every `checkpoint_every` images) and resumes from there.
    `cache` (`vector_cache`): images embedded before by any command are not embedded again.
    """
    root = Path(images_dir)
    final = Path(out_dir)
    failures = FailureLog()
    paths = list_images(root, failures)  # a missing folder fails here, before anything is written
    if not paths:
        raise PipelineError(
            f"{root}: no images found ({len(failures)} entries could not be read); nothing indexed"
            + (f"; {final} left as it was" if final.exists() else ""))
    with WriterLock(final):
        return _index_locked(root, paths, failures, pipeline, final, kind, rebuild, checkpoint_every, progress,
                             verify, cache)


def _index_locked(
    root: Path, paths: list[str], failures: FailureLog, pipeline: Pipeline, final: Path, kind: str | None,
    rebuild: bool, checkpoint_every: int, progress: bool, verify: bool, cache: VectorCache | None,
) -> IndexReport:
    """`index_folder` while holding the writer lock of `final`."""
    # A rebuild goes to a sibling directory and replaces the old index only when complete.
    out = final.with_name(final.name + ".rebuild") if rebuild else final
    info = pipeline.info()
    if (out / "meta.json").is_file():
        index = GalleryIndex.open(str(out), pipeline_info=info, verify=verify)
        if kind is not None and index.params["kind"] != kind:
            raise PipelineError(f"{out}: is a {index.params['kind']!r} index, not {kind!r}; use --rebuild")
    else:
        index = GalleryIndex.create(str(out), pipeline.dim, index_params(pipeline.config, kind), info,
                                    regions=pipeline.regions_per_image)
    search = pipeline.config.search
    if search.database_augmentation > 0 and not INDEX_KINDS[index.params["kind"]].keeps_vectors:
        raise PipelineError(f"{out}: search.database_augmentation = {search.database_augmentation} needs the "
                            f"vectors, which a {index.params['kind']!r} index does not keep; use --kind flat or hnsw")

    to_add, changed, unchanged = index.plan_update(str(root), paths)
    deleted = sorted(set(index.ids) - set(paths))  # files gone from the folder leave the index
    if changed or deleted:
        index.remove(changed + deleted)
    todo = sorted(to_add + changed)
    pending: list[tuple[list[str], np.ndarray]] = []  # held back until an IVF-PQ index can train
    since_checkpoint = 0
    for ids, vectors in embed_stream(PathSource(todo, root), pipeline, failures=failures, progress=progress,
                                     cache=cache):
        ids, vectors = _drop_empty(ids, vectors, failures)
        pending.append((ids, vectors))
        if index.train_size and sum(len(i) for i, _ in pending) < index.train_size:
            continue
        since_checkpoint += _add_pending(index, root, pending)
        if since_checkpoint >= checkpoint_every:
            index.checkpoint()
            since_checkpoint = 0
    if pending:
        if index.train_size and sum(len(i) for i, _ in pending) < index.train_size:
            raise PipelineError(
                f"{out}: an IVF-PQ index needs {index.train_size} training vectors, the folder gave "
                f"{sum(len(i) for i, _ in pending)}; use --kind flat for a gallery this small"
            )
        _add_pending(index, root, pending)
    index.save()
    if search.database_augmentation > 0 and len(index) and not index.has_augmented(_dba_params(search)):
        index.save_augmented(_dba_params(search), augment_database(index.vectors(), search))
    if rebuild:
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(out, final)
        shutil.rmtree(old, ignore_errors=True)
        out = final
    failed = {path for path, _ in failures.failures}
    added = sum(p not in failed for p in to_add)
    replaced = sum(p not in failed for p in changed)
    return IndexReport(out, len(index), added, replaced, unchanged, len(deleted), failures)


def _drop_empty(ids: list[str], vectors: np.ndarray, failures: FailureLog) -> tuple[list[str], np.ndarray]:
    """Record and leave out images whose embedding is the zero vector, or that have no region (nothing
    to rank them by)."""
    ok = np.linalg.norm(vectors.reshape(len(vectors), -1, vectors.shape[-1]), axis=-1).max(axis=1) > 0.5
    for i in np.flatnonzero(~ok):
        failures.add(ids[i], "embedding is the zero vector (all features or region weights are 0)")
    return [i for i, keep in zip(ids, ok) if keep], vectors[ok]


def _add_pending(index: GalleryIndex, root: Path, pending: list[tuple[list[str], np.ndarray]]) -> int:
    ids = [i for batch_ids, _ in pending for i in batch_ids]
    vectors = np.concatenate([v for _, v in pending])
    stats = [os.stat(root / i) for i in ids]
    index.add(
        ids,
        [file_sha256(root / i) for i in ids],
        [s.st_size for s in stats],
        [s.st_mtime_ns for s in stats],
        vectors,
    )
    pending.clear()
    return len(ids)


def search_images(
    index_dir: str | os.PathLike, queries: list[str | os.PathLike], k: int = 100, verify: bool = True,
    failures: FailureLog | None = None, region_k: int | None = None, cache: VectorCache | None = None,
) -> tuple[Pipeline, list[list[tuple[str, float]] | None]]:
    """Rank the indexed marks for each query image: [[(id, similarity), ...], ...].

    A query that cannot be read is recorded in `failures` (when given; else it raises) and its
    ranking is None; the other queries are answered. `region_k`: see `GalleryIndex.search`; `cache`:
    see `index_folder` (a query already indexed is not embedded again).
    """
    index = GalleryIndex.open(str(index_dir), verify=verify)
    pipeline = pipeline_of_index(index)
    names = [os.fspath(q) for q in queries]
    skipped = FailureLog()
    vectors_of = {i: v for ids, vectors in embed_stream(PathSource(names), pipeline, failures=skipped, progress=False,
                                                           cache=cache)
                  for i, v in zip(ids, vectors)}
    if len(skipped) and failures is None:
        raise ImageError(*skipped.failures[0])
    for path, reason in skipped.failures:
        failures.add(path, reason)
    answered = [n for n in names if n in vectors_of]
    vectors = (np.stack([vectors_of[n] for n in answered]) if answered
               else np.zeros((0, *pipeline.vector_shape), np.float32))
    search = pipeline.config.search
    database = augmented_database(index, search)
    if answered and len(index) and (search.query_expansion > 0 or search.database_augmentation > 0):
        # A query that is itself indexed searches as its database row, as in `tmrjax eval`: with its
        # augmented vector under DBA, and never one of its own expansion images.
        own = index.rows_with_content([file_sha256(n) for n in answered])
        if search.database_augmentation > 0:
            vectors[own >= 0] = database.vectors()[own[own >= 0]]
        if search.query_expansion > 0:
            vectors = expand_queries(database.vectors(), own, search, query_vectors=vectors)
    scores, ids = database.search(vectors, k, region_k)
    ranking_of = {n: list(zip(row_ids, map(float, row_scores)))
                  for n, row_ids, row_scores in zip(answered, ids, scores)}
    return pipeline, [ranking_of.get(n) for n in names]


def _dba_params(search: ConfigDict) -> dict[str, Any]:
    """The config fields that make an index's augmented database, as `GalleryIndex.augmented` compares them."""
    return {"database_augmentation": int(search.database_augmentation), "dba_alpha": float(search.dba_alpha)}


def augmented_database(index: GalleryIndex, search: ConfigDict) -> GalleryIndex:
    """What a search under config section `search` ranks: the index itself, or with DBA its augmented
    database, the one `index_folder` committed, else (missing, or stale after the index changed)
    derived now from the indexed vectors."""
    if search.database_augmentation <= 0 or not len(index):
        return index
    params = _dba_params(search)
    return index.augmented(params) or index.with_vectors(augment_database(index.vectors(), search))


def pipeline_of_index(index: GalleryIndex) -> Pipeline:
    """Rebuild the pipeline an index was made with, from what its meta.json recorded.

    Only data is read: a fitted pipeline's folder (pipeline.json + artefacts, never a config
    file, which would run code), or the config the index keeps. Either must give the vectors
    hash the index records.
    """
    info = index.pipeline_info
    weights = weights_of(info["backbone"]) if isinstance(info.get("backbone"), dict) else None
    folder = info.get("path")
    if folder:
        if not isinstance(folder, str) or not Path(folder).is_dir():
            raise PipelineError(
                f"{index.path}/meta.json: the index was built with the fitted pipeline {folder!r}, which is not "
                "a pipeline folder here; pass the pipeline folder with the index, or rebuild the index")
        pipeline = Pipeline.load_folder(folder, weights=weights)
    elif isinstance(info.get("config"), dict):  # an unfitted config: rebuilt from the copy the index keeps
        pipeline = Pipeline.create(config_from_record(Record(info, f"{index.path}/meta.json", "pipeline")),
                                   weights=weights)
    else:
        raise PipelineError(f"{index.path}/meta.json: records neither a pipeline folder nor a config")
    index.check_pipeline(pipeline.info())
    return pipeline
