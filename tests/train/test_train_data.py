"""tmrjax/train/data.py: deterministic batches by (seed, step), process slices, the
prefetching loader and its handling of unreadable files, the folder source."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tmrjax.data.images import ImageError
from tmrjax.train.data import BatchLoader, TrainingImages, batch_indices, open_training_images


class ArraySource:
    """Item i is a 2 x 2 image filled with i; items in `bad` raise ImageError, items in
    `broken` an unexpected OSError. Counts the loads of every item."""

    size = 2

    def __init__(self, n, bad=(), broken=()):
        self.n, self.bad, self.broken = n, set(bad), set(broken)
        self.loads = {}
        self._lock = threading.Lock()

    def __len__(self):
        return self.n

    def load(self, index):
        with self._lock:
            self.loads[index] = self.loads.get(index, 0) + 1
        if index in self.bad:
            raise ImageError(self.name(index), "truncated file")
        if index in self.broken:
            raise OSError("input/output error")
        return np.full((2, 2, 3), index, np.uint8)

    def name(self, index):
        return f"item{index:03d}.png"


def ids_of(batch):
    """The item each row of an ArraySource batch holds."""
    assert batch.dtype == np.uint8 and batch.shape[1:] == (2, 2, 3)
    return batch[:, 0, 0, 0].astype(int)


def run(loader, start, end):
    return list(loader.iterate(start, end))


# ------------------------------------------------------------------------- batch_indices


def test_batch_indices_is_a_function_of_seed_and_step():
    a = batch_indices(5, 16, 50, seed=3)
    assert a.shape == (16,) and np.issubdtype(a.dtype, np.integer)
    np.testing.assert_array_equal(a, batch_indices(5, 16, 50, seed=3))
    assert not np.array_equal(a, batch_indices(5, 16, 50, seed=4))
    assert not np.array_equal(a, batch_indices(6, 16, 50, seed=3))


def test_each_epoch_visits_items_at_most_once_in_a_new_order():
    num_items, batch = 50, 16  # 3 steps per epoch, 2 items left out of each
    epochs = [np.concatenate([batch_indices(e * 3 + s, batch, num_items, seed=0) for s in range(3)])
              for e in range(3)]
    for order in epochs:
        assert len(order) == 48 and len(set(order.tolist())) == 48
        assert order.min() >= 0 and order.max() < num_items
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    # Not the same order shifted or restricted: the left-out items move too.
    left_out = [set(range(num_items)) - set(order.tolist()) for order in epochs]
    assert len({frozenset(s) for s in left_out}) > 1


def test_process_slices_partition_the_global_batch():
    for step in (0, 4, 7):
        whole = batch_indices(step, 16, 50, seed=1)
        slices = [batch_indices(step, 16, 50, seed=1, process_index=p, process_count=4) for p in range(4)]
        assert all(s.shape == (4,) for s in slices)
        np.testing.assert_array_equal(np.concatenate(slices), whole)
        assert len(set(np.concatenate(slices).tolist())) == 16


def test_batch_indices_rejects_a_dataset_smaller_than_a_batch():
    with pytest.raises(ValueError, match="15 items is smaller than the global batch 16"):
        batch_indices(0, 16, 15, seed=0)


# ---------------------------------------------------------------------------- BatchLoader


def test_loader_yields_the_batches_of_batch_indices_in_step_order():
    source = ArraySource(50)
    steps = run(BatchLoader(source, 16, seed=2, workers=3), 0, 7)
    assert [s for s, _ in steps] == list(range(7))
    for step, images in steps:
        assert images.shape == (16, 2, 2, 3)
        np.testing.assert_array_equal(ids_of(images), batch_indices(step, 16, 50, seed=2))


def test_loader_resumes_at_any_step_with_the_same_batches():
    full = run(BatchLoader(ArraySource(50), 16, seed=2), 0, 6)
    resumed = run(BatchLoader(ArraySource(50), 16, seed=2), 4, 6)
    assert [s for s, _ in resumed] == [4, 5]
    for (_, a), (_, b) in zip(full[4:], resumed):
        np.testing.assert_array_equal(a, b)


def test_loader_process_slice():
    whole = run(BatchLoader(ArraySource(50), 16, seed=2), 0, 3)
    halves = [run(BatchLoader(ArraySource(50), 16, seed=2, process_index=p, process_count=2), 0, 3)
              for p in range(2)]
    for step in range(3):
        assert halves[0][step][1].shape == (8, 2, 2, 3)
        np.testing.assert_array_equal(np.concatenate([h[step][1] for h in halves]), whole[step][1])


def test_unreadable_items_are_replaced_by_the_next_readable_and_reported_once():
    # 49 is the last item: its replacement wraps to 0. 10 and 11 are consecutive: 10 -> 12.
    bad, broken = {10, 11, 49}, {30}
    expected_replacement = {10: 12, 11: 12, 49: 0, 30: 31}
    num_steps = 9  # 3 epochs of 3 steps
    loaders = [BatchLoader(ArraySource(50, bad, broken), 16, seed=0, workers=4) for _ in range(2)]
    runs = [run(loader, 0, num_steps) for loader in loaders]
    for step in range(num_steps):
        wanted = batch_indices(step, 16, 50, seed=0)
        got = ids_of(runs[0][step][1])
        np.testing.assert_array_equal(got, [expected_replacement.get(int(i), int(i)) for i in wanted])
        np.testing.assert_array_equal(runs[1][step][1], runs[0][step][1])  # deterministic
    for loader in loaders:
        failures = dict(loader.failures.failures)
        assert len(loader.failures) == 4, loader.failures.summary()  # once each, over 3 epochs
        assert failures["item010.png"] == "truncated file"
        assert failures["item049.png"] == "truncated file"
        assert failures["item030.png"] == "unexpected OSError: input/output error"
        assert loader.source.loads[10] == 1 and loader.source.loads[11] == 1  # never retried


def test_loader_with_nothing_readable_raises():
    loader = BatchLoader(ArraySource(20, bad=range(20)), 16, seed=0, workers=2)
    with pytest.raises(RuntimeError, match="no readable image in the training source"):
        run(loader, 0, 1)


def test_loader_rejects_a_batch_it_cannot_split_between_processes():
    with pytest.raises(ValueError, match="global batch 16 not divisible by 3 processes"):
        BatchLoader(ArraySource(50), 16, seed=0, process_count=3)


# --------------------------------------------------------------------------- a folder to train on


def test_folder_source_with_a_bad_file(tmp_path, mark_factory):
    _, write_marks = mark_factory
    paths = write_marks(tmp_path, count=19)
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    source = open_training_images(str(tmp_path), 24)
    assert isinstance(source, TrainingImages) and source.size == 24
    assert len(source) == 20
    names = [source.name(i) for i in range(len(source))]
    assert names == sorted(paths + ["a/broken.png"])
    good = source.load(names.index(paths[0]))
    assert good.shape == (24, 24, 3) and good.dtype == np.uint8
    broken = names.index("a/broken.png")
    with pytest.raises(ImageError):
        source.load(broken)

    loader = BatchLoader(source, 8, seed=0, workers=2)
    steps = run(loader, 0, 6)  # 3 epochs of 2 steps (16 of the 20 files each)
    hits = sum(broken in batch_indices(step, 8, 20, seed=0) for step in range(6))
    assert hits >= 2  # the broken file is drawn in more than one epoch, and reported once
    assert all(images.shape == (8, 24, 24, 3) and images.dtype == np.uint8 for _, images in steps)
    assert [path for path, _ in loader.failures.failures] == ["a/broken.png"]
    replacement = source.load(broken + 1)
    for step, images in steps:
        for row, index in enumerate(batch_indices(step, 8, 20, seed=0)):
            np.testing.assert_array_equal(images[row], replacement if index == broken else source.load(index))


def test_folder_source_without_images(tmp_path):
    (tmp_path / "notes.txt").write_text("no marks here")
    with pytest.raises(ValueError, match="no images to train on"):
        open_training_images(str(tmp_path), 24)
