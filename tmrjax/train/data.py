"""Training input: random access to unlabelled marks, deterministic batches by step.

The batch of step s is a pure function of (seed, s): an epoch is a seeded permutation of
the dataset, so a resumed run sees exactly the batches it would have seen. Each process
of a multi-host run loads only its own slice of every global batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..data.images import FailureLog, ImageError, prepare
from ..data.pool import ordered_map
from ..data.sources import FolderSource, ImageSource, open_source


class TrainingImages:
    """The images of an `ImageSource` a run trains on, prepared as white-padded squares of one size.

    `labelled`: class labels for supervised pre-training, numbered in sorted order of the class
    names: a folder's class is an image's top-level subfolder (``root/<class>/.../image.png``;
    images directly in root have none and are refused), a tfds record's is its ``group`` (records
    without one, group < 0, are left out).
    """

    def __init__(self, source: ImageSource, size: int, labelled: bool = False):
        self.source = source
        self.size = size
        if not len(source):
            raise ValueError(f"{source.describe()}: no images to train on")
        self.rows = np.arange(len(source))
        self.labels = self.class_names = None
        if labelled:
            classes = _class_names(source)
            self.rows = self.rows[[c is not None for c in classes]]
            if not len(self.rows):
                raise ValueError(f"{source.describe()}: no image has a class (group) label to train on")
            self.class_names = sorted({classes[r] for r in self.rows})
            index = {name: i for i, name in enumerate(self.class_names)}
            self.labels = np.array([index[classes[r]] for r in self.rows], np.int32)

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int) -> np.ndarray:
        return prepare(self.source.load(int(self.rows[index])), self.size)

    def name(self, index: int) -> str:
        return self.source.ids[int(self.rows[index])]


def _class_names(source: ImageSource) -> list[str | None]:
    """Each image's class: its record's group (>= 0), or a folder's top-level subfolder."""
    if isinstance(source, FolderSource):
        loose = [p for p in source.ids if "/" not in p]
        if loose:
            raise ValueError(
                f"{source.root}: {len(loose)} images (e.g. {loose[0]}) lie outside a class folder; "
                f"labelled training reads <root>/<class>/<image>"
            )
        return [p.split("/", 1)[0] for p in source.ids]
    groups = getattr(source, "groups", None)
    if groups is None:
        raise ValueError(f"{source.describe()}: has no class labels (a folder per class or tfds records with groups)")
    return [str(int(g)) if g >= 0 else None for g in groups]


def open_training_images(spec: str, size: int, labelled: bool = False) -> TrainingImages:
    """A training set from a source string (`data.sources.open_source`: a folder or ``tfds:NAME:SPLITS``)."""
    return TrainingImages(open_source(spec), size, labelled=labelled)


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
    """Loads the uint8 batches of consecutive steps ahead of time (`data.pool.ordered_map` threads).

    A file that cannot be read is reported once in `failures` and replaced in its batch by
    the next readable item of the dataset (deterministically), so shapes stay static.
    """

    def __init__(
        self,
        source: TrainingImages,
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
        self.workers = workers
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
        images, loaded = zip(*(v for _, v in ordered_map(self._load_one, indices.tolist(), workers=self.workers)))
        labels = getattr(self.source, "labels", None)
        if labels is None:
            return np.stack(images)
        return np.stack(images), labels[np.array(loaded)]  # a replaced item brings its own label

    def iterate(self, start_step: int, num_steps: int) -> Iterator[tuple[int, np.ndarray]]:
        """(step, uint8 (local_batch, S, S, 3)) for steps start_step .. num_steps - 1, `prefetch_steps`
        ahead; for a labelled source (step, (images, int32 labels (local_batch,)))."""
        yield from ordered_map(self._load_step, range(start_step, num_steps),
                               workers=self.prefetch_steps, in_flight=self.prefetch_steps)
