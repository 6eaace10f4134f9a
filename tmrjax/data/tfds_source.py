"""Streaming a tensorflow-datasets split as fixed-shape batches, without TensorFlow.

Datasets written as array_record are read with `tfds.data_source`; each record must have
an ``image`` (H, W, 3) uint8 and an ``id`` string.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from .images import Batch, ImageError, assemble_batches, prepare_multi


def parse_spec(spec: str) -> tuple[str, str]:
    """``"logo_groups/small:gallery"`` -> (``"logo_groups/small"``, ``"gallery"``)."""
    name, sep, split = spec.rpartition(":")
    if not sep or not name or not split:
        raise ValueError(f"tfds source {spec!r}: expected NAME[/CONFIG]:SPLIT, e.g. logo_groups/small:gallery")
    return name, split


def open_split(spec: str, data_dir: str | os.PathLike | None = None, images: bool = True):
    """A random-access tfds data source for ``NAME/CONFIG:SPLIT``.

    ``images=False``: records carry the encoded image bytes instead of the decoded array, for
    reading ids and group labels of a large split without decoding every image (~6x faster).
    """
    import tensorflow_datasets as tfds

    from . import logo_groups, metu_trademark  # noqa: F401  (registers the builders with tfds)

    name, split = parse_spec(spec)
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
    try:  # never start a (possibly hour-long) build as a side effect of reading
        decoders = None if images else {"image": tfds.decode.SkipDecoding()}
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False, decoders=decoders)
    except (AssertionError, KeyError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError) as e:
        where = data_dir or "~/tensorflow_datasets"
        hint = (
            "build it with `python -c \"from tmrjax.data.logo_groups import build_logo_groups; "
            f"build_logo_groups('{name.partition('/')[2] or 'small'}', '{where}')\"` (after scripts/setup_logobench.sh)"
            if name.startswith("logo_groups")
            else "see the dataset's builder for how to prepare it"
        )
        raise FileNotFoundError(f"tfds dataset {name}:{split} is not prepared in {where}: {hint} ({e})") from None


def _record_id(record: dict, index: int) -> str:
    value = record.get("id", index)
    return value.decode() if isinstance(value, bytes) else str(value)


def iter_tfds_batches(
    spec: str, sizes: tuple[int, ...], batch_size: int, data_dir: str | os.PathLike | None = None
) -> tuple[Iterator[Batch], int]:
    """(batches, number of records) over a tfds split; ids from the records' ``id`` field."""
    source = open_split(spec, data_dir)

    def items():
        for i in range(len(source)):
            record = source[i]
            image = np.asarray(record["image"])
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ImageError(f"{spec}[{i}]", f"expected uint8 (H, W, 3), got {image.dtype} {image.shape}")
            yield _record_id(record, i), prepare_multi(image, sizes)

    return assemble_batches(items(), sizes, batch_size), len(source)
