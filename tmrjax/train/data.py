"""Training input: random access to unlabelled marks, deterministic batches by step.

The batch of step s is a pure function of (seed, s): an epoch is a seeded permutation of
the dataset, so a resumed run sees exactly the batches it would have seen. Each process
of a multi-host run loads only its own slice of every global batch.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ..data.images import FailureLog, ImageError, list_images, load_image, prepare


class ImageSource(Protocol):
    """Random access to square uint8 RGB marks of one size."""

    size: int

    def __len__(self) -> int: ...

    def load(self, index: int) -> np.ndarray: ...

    def name(self, index: int) -> str: ...


class FolderSource:
    """Every image under a folder (recursively), padded to a white square and resized.

    `labelled`: folder-per-class data for supervised pre-training; an image's class is its
    top-level subfolder under `root` (`root/<class>/.../image.png`), classes numbered in
    sorted order. Images directly in `root` have no class and are refused.
    """

    def __init__(self, root: str | os.PathLike, size: int, labelled: bool = False):
        self.root = Path(root)
        self.size = size
        self.paths = list_images(self.root)
        if not self.paths:
            raise ValueError(f"{self.root}: no images to train on")
        self.labels = self.class_names = None
        if labelled:
            loose = [p for p in self.paths if "/" not in p]
            if loose:
                raise ValueError(
                    f"{self.root}: {len(loose)} images (e.g. {loose[0]}) lie outside a class folder; "
                    f"labelled training reads <root>/<class>/<image>"
                )
            classes = [p.split("/", 1)[0] for p in self.paths]
            self.class_names = sorted(set(classes))
            index = {name: i for i, name in enumerate(self.class_names)}
            self.labels = np.array([index[c] for c in classes], np.int32)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> np.ndarray:
        return prepare(load_image(self.root / self.paths[index]), self.size)

    def name(self, index: int) -> str:
        return self.paths[index]


class TfdsSource:
    """One or more splits of a tfds dataset read through `tfds.data_source` (no TensorFlow).

    `spec` is ``NAME/CONFIG:SPLIT[+SPLIT...]``, e.g. ``logo_groups/small:queries+gallery``.
    """

    def __init__(self, spec: str, size: int, data_dir: str | os.PathLike | None = None, labelled: bool = False):
        from ..data.tfds_source import open_split, parse_spec

        name, splits = parse_spec(spec)
        self.spec = spec
        self.size = size
        self.sources = [open_split(f"{name}:{split}", data_dir) for split in splits.split("+")]
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])
        self.rows = np.arange(int(self.offsets[-1]))
        self.labels = self.class_names = None
        if labelled:  # records with a "group" >= 0 (e.g. logo_groups' and METU's queries)
            fields = [open_split(f"{name}:{split}", data_dir, images=False) for split in splits.split("+")]
            groups = np.array([int(source[i].get("group", -1)) for source in fields for i in range(len(source))])
            self.rows = self.rows[groups >= 0]
            if not len(self.rows):
                raise ValueError(f"{spec}: no record has a group label >= 0 to train on")
            self.class_names = [str(g) for g in sorted(set(groups[self.rows].tolist()))]
            index = {int(g): i for i, g in enumerate(self.class_names)}
            self.labels = np.array([index[int(g)] for g in groups[self.rows]], np.int32)

    def __len__(self) -> int:
        return len(self.rows)

    def _record(self, index: int) -> dict:
        row = int(self.rows[index])
        which = int(np.searchsorted(self.offsets, row, side="right") - 1)
        return self.sources[which][row - int(self.offsets[which])]

    def load(self, index: int) -> np.ndarray:
        image = np.asarray(self._record(index)["image"])
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ImageError(self.name(index), f"expected (H, W, 3) image, got {image.shape}")
        return prepare(image.astype(np.uint8), self.size)

    def name(self, index: int) -> str:
        return f"{self.spec}[{index}]"


def open_source(spec: str, size: int, labelled: bool = False) -> ImageSource:
    """``tfds:NAME/CONFIG:SPLITS`` or a folder path; `labelled` adds `labels` (see the sources)."""
    if spec.startswith("tfds:"):
        return TfdsSource(spec[len("tfds:"):], size, labelled=labelled)
    return FolderSource(spec, size, labelled=labelled)


def batch_indices(
    step: int, global_batch: int, num_items: int, seed: int, process_index: int = 0, process_count: int = 1
) -> np.ndarray:
    """Dataset indices of this process's slice of global batch `step`.

    Epoch e is ``permutation(seed, e)``; batches run through it without crossing epochs
    (the last incomplete batch of an epoch is dropped).
    """
    per_epoch = num_items // global_batch
    if per_epoch == 0:
        raise ValueError(f"dataset of {num_items} items is smaller than the global batch {global_batch}")
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_items)
    batch = order[position * global_batch : (position + 1) * global_batch]
    local = global_batch // process_count
    return batch[process_index * local : (process_index + 1) * local]


class BatchLoader:
    """Loads the uint8 batches of consecutive steps ahead of time in a thread pool.

    A file that cannot be read is reported once in `failures` and replaced in its batch by
    the next readable item of the dataset (deterministically), so shapes stay static.
    """

    def __init__(
        self,
        source: ImageSource,
        global_batch: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        workers: int = 8,
        prefetch_steps: int = 2,
    ):
        if global_batch % process_count:
            raise ValueError(f"global batch {global_batch} not divisible by {process_count} processes")
        self.source = source
        self.global_batch = global_batch
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self.failures = FailureLog()
        self._bad: set[int] = set()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tmrjax-train")
        self.prefetch_steps = prefetch_steps

    def _load_one(self, index: int) -> tuple[np.ndarray, int]:
        """The image of item `index` (or of the next readable item) and that item's index."""
        n = len(self.source)
        for attempt in range(n):
            i = (index + attempt) % n
            if i in self._bad:
                continue
            try:
                return self.source.load(i), i
            except ImageError as e:
                self._report(i, e.reason)
            except Exception as e:  # noqa: BLE001 -- one odd file must not end a training run
                self._report(i, f"unexpected {type(e).__name__}: {e}")
        raise RuntimeError(f"no readable image in the training source ({len(self._bad)} failures)")

    def _report(self, index: int, reason: str) -> None:
        if index not in self._bad:
            self._bad.add(index)
            self.failures.add(self.source.name(index), reason)

    def _load_step(self, step: int) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        indices = batch_indices(
            step, self.global_batch, len(self.source), self.seed, self.process_index, self.process_count
        )
        images, loaded = zip(*self._pool.map(self._load_one, indices.tolist()))
        labels = getattr(self.source, "labels", None)
        if labels is None:
            return np.stack(images)
        return np.stack(images), labels[np.array(loaded)]  # a replaced item brings its own label

    def iterate(self, start_step: int, num_steps: int) -> Iterator[tuple[int, np.ndarray]]:
        """(step, uint8 (local_batch, S, S, 3)) for steps start_step .. num_steps - 1; for a
        labelled source (step, (images, int32 labels (local_batch,)))."""
        ahead: list[tuple[int, concurrent.futures.Future]] = []
        step = start_step
        feeder = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        try:
            while step < num_steps or ahead:
                while step < num_steps and len(ahead) < self.prefetch_steps:
                    ahead.append((step, feeder.submit(self._load_step, step)))
                    step += 1
                s, future = ahead.pop(0)
                yield s, future.result()
        finally:
            feeder.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def take_images(source: ImageSource, indices: Sequence[int]) -> np.ndarray:
    """uint8 stack of the given items (for evaluation sets)."""
    return np.stack([source.load(int(i)) for i in indices])
