"""Opening a prepared tensorflow-datasets split without TensorFlow (`data.sources` reads it).

Datasets written as array_record are read with `tfds.data_source`; each record must have
an ``image`` (H, W, 3) uint8 and an ``id`` string.
"""

from __future__ import annotations

import os


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

    from . import logo_groups, metu_trademark, revisited_landmarks  # noqa: F401  (registers the builders with tfds)

    name, split = parse_spec(spec)
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
    try:  # never start a (possibly hour-long) build as a side effect of reading
        decoders = None if images else {"image": tfds.decode.SkipDecoding()}
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False, decoders=decoders)
    except (AssertionError, KeyError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError) as e:
        where = data_dir or "~/tensorflow_datasets"
        if name.startswith("logo_groups"):
            hint = ("build it with `python -c \"from tmrjax.data.logo_groups import build_logo_groups; "
                    f"build_logo_groups('{name.partition('/')[2] or 'small'}', '{where}')\"` (after "
                    "scripts/setup_logobench.sh)")
        elif name.partition("/")[0] == "revisited_landmarks" and name.partition("/")[2] in revisited_landmarks.DATASETS:
            hint = revisited_landmarks.prepare_hint(name.partition("/")[2], str(where))
        else:
            hint = "see the dataset's builder for how to prepare it"
        raise FileNotFoundError(f"tfds dataset {name}:{split} is not prepared in {where}: {hint} ({e})") from None
