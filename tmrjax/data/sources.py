"""Image sources: the one way every command, benchmark and the trainer reads images.

An `ImageSource` is a random-access sequence of images with string ids; `iter_batches` streams
any source (or some of its rows) as fixed-shape batches on one worker pool, logging and skipping
what cannot be read. Sources are named by one string syntax, parsed by `open_source`:

    PATH                      a folder, walked recursively (ids: relative paths)
    tfds:NAME[/CONFIG]:SPLIT  a prepared tfds split, or several joined by '+' (ids: the records' id)

and benchmarks by `open_benchmark`: queries with groups + distractors (`Benchmark`), or a database and
query crops with easy / hard / junk ground truth (`RevisitedBenchmark`):

    folder:PATH                 a labelled folder benchmark (`FolderBenchmark` says the layout)
    revisited_landmarks/CONFIG  Revisited Oxford5k / Paris6k (roxford5k, rparis6k): splits `database`, `queries`
    [tfds:]NAME[/CONFIG]        a tfds benchmark with splits `queries` and `gallery`
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..fileio import read_json
from .images import (
    Batch,
    FailureLog,
    ImageError,
    as_rgb,
    assemble_batches,
    check_positive,
    check_sizes,
    list_images,
    load_image,
    pixels_key,
    prepare_multi,
)
from .pool import ordered_map
from .salient_points import padded_points

TFDS_PREFIX = "tfds:"
FOLDER_PREFIX = "folder:"
NO_GROUP = -1
LOAD_WORKERS = 4


class ImageSource(Protocol):
    """Random access to decoded images: `load(i)` is the uint8 (H, W, 3) image of `ids[i]`.

    `load` raises `ImageError` for an unreadable image; `unreadable` lists the entries that could
    not even be listed (a symlink loop, a folder without permission).
    """

    ids: Sequence[str]
    unreadable: FailureLog

    def __len__(self) -> int: ...

    def load(self, index: int) -> np.ndarray: ...

    def describe(self) -> str: ...


class FolderSource:
    """Every image under a folder, recursively, in sorted order; ids are paths relative to it."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.unreadable = FailureLog()
        self.ids = list_images(self.root, self.unreadable)

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> np.ndarray:
        return load_image(self.root / self.ids[index])

    def describe(self) -> str:
        return str(self.root.absolute())


class PathSource:
    """Given image paths (relative to `root`, default the working directory); ids are the paths as given."""

    def __init__(self, paths: Sequence[str | os.PathLike], root: str | os.PathLike | None = None,
                 name: str | None = None, unreadable: FailureLog | None = None):
        self.root = Path(root) if root is not None else None
        self.ids = [os.fspath(p) for p in paths]
        self.name = name
        self.unreadable = unreadable if unreadable is not None else FailureLog()

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> np.ndarray:
        path = self.ids[index]
        return load_image(self.root / path if self.root is not None else path)

    def describe(self) -> str:
        if self.name:
            return f"{self.name} ({len(self)} images)"
        return f"{len(self.ids)} files" + (f" under {self.root.absolute()}" if self.root is not None else "")


class ArraySource:
    """In-memory inputs (arrays, PIL images or file paths, see `as_rgb`); ids are their indices."""

    def __init__(self, images: Sequence[Any]):
        self.images = list(images)
        self.ids = [str(i) for i in range(len(self.images))]
        self.unreadable = FailureLog()

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> np.ndarray:
        return as_rgb(self.images[index], index)

    def describe(self) -> str:
        return f"{len(self)} in-memory images"


class RecordSource:
    """A random-access sequence of records with ``image`` (uint8 H x W x 3), ``id`` and optionally
    ``group``: a tfds data source, or a list of dicts. `fields` is the same sequence without
    decoded images (tfds' SkipDecoding), read for ids and groups without decoding every image."""

    def __init__(self, records: Sequence[dict], name: str, fields: Sequence[dict] | None = None):
        self.records = records
        self.fields = fields if fields is not None else records
        self.name = name
        self.unreadable = FailureLog()

    def __len__(self) -> int:
        return len(self.records)

    @functools.cached_property
    def ids(self) -> list[str]:
        return [_text(self.fields[i].get("id", str(i))) for i in range(len(self))]

    @functools.cached_property
    def groups(self) -> np.ndarray:
        """Each record's ``group`` (>= 0 for members of a group), `NO_GROUP` where it has none."""
        return np.array([int(self.fields[i].get("group", NO_GROUP)) for i in range(len(self))], np.int64)

    def load(self, index: int) -> np.ndarray:
        image = np.asarray(self.records[index]["image"])
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ImageError(f"{self.name}[{index}]", f"expected uint8 (H, W, 3), got {image.dtype} {image.shape}")
        return image

    def describe(self) -> str:
        return f"{self.name} ({len(self)} images)"


class ConcatSource:
    """Sources one after another (e.g. the splits of `tfds:NAME:queries+gallery`)."""

    def __init__(self, parts: Sequence[ImageSource], name: str):
        self.parts = list(parts)
        self.name = name
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.ids = [i for p in self.parts for i in p.ids]
        self.unreadable = FailureLog([f for p in self.parts for f in p.unreadable.failures])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, index: int) -> tuple[ImageSource, int]:
        part = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.parts[part], index - int(self.offsets[part])

    def load(self, index: int) -> np.ndarray:
        source, row = self._locate(index)
        return source.load(row)

    @property
    def groups(self) -> np.ndarray:
        return np.concatenate([np.asarray(getattr(p, "groups", np.full(len(p), NO_GROUP))) for p in self.parts])

    def describe(self) -> str:
        return f"{self.name} ({len(self)} images)"


class SubsetSource:
    """Some rows of a source, in the given order (a gallery subset, a fit sample)."""

    def __init__(self, source: ImageSource, rows: Sequence[int], name: str | None = None):
        self.source = source
        self.rows = np.asarray(rows, np.int64)
        self.name = name
        self.ids = [source.ids[int(r)] for r in self.rows]
        self.unreadable = source.unreadable

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int) -> np.ndarray:
        return self.source.load(int(self.rows[index]))

    @property
    def groups(self) -> np.ndarray:
        return np.asarray(self.source.groups)[self.rows]

    def describe(self) -> str:
        return f"{self.name} ({len(self)} images)" if self.name else f"{len(self)} of {self.source.describe()}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def open_tfds(spec: str, data_dir: str | os.PathLike | None = None) -> ImageSource:
    """``NAME[/CONFIG]:SPLIT[+SPLIT...]`` (without the ``tfds:`` prefix) as one source."""
    from .tfds_source import open_split, parse_spec

    name, splits = parse_spec(spec)
    parts = [RecordSource(open_split(f"{name}:{split}", data_dir), f"{name}:{split}",
                          fields=open_split(f"{name}:{split}", data_dir, images=False)) for split in splits.split("+")]
    return parts[0] if len(parts) == 1 else ConcatSource(parts, spec)


def open_source(
    spec: str | os.PathLike | Sequence[str | os.PathLike] | ImageSource,
    root: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
) -> ImageSource:
    """The source a user names: ``tfds:NAME:SPLITS``, a folder, or a list of paths (relative to `root`);
    an `ImageSource` is returned as it is."""
    if hasattr(spec, "load"):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if text.startswith(TFDS_PREFIX):
            return open_tfds(text[len(TFDS_PREFIX):], data_dir)
        if not Path(text).is_dir():
            raise FileNotFoundError(f"{text}: not a folder of images (nor tfds:NAME:SPLIT)")
        return FolderSource(text)
    return PathSource(spec, root)


class PointsMemo(Protocol):
    """Where a job keeps the salient points it has detected, by (size, pixels key) (`runner.FeatureMemo`)."""

    def get_points(self, key: tuple) -> tuple[np.ndarray, np.ndarray] | None: ...

    def put_points(self, key: tuple, points: tuple[np.ndarray, np.ndarray]) -> None: ...


def iter_batches(
    source: ImageSource,
    sizes: tuple[int, ...],
    batch_size: int,
    failures: FailureLog,
    rows: Sequence[int] | None = None,
    workers: int = LOAD_WORKERS,
    point_sizes: tuple[int, ...] = (),
    points_memo: PointsMemo | None = None,
) -> Iterator[Batch]:
    """`rows` of `source` (default all), in order, as fixed-shape Batches padded to white squares at
    every size; ids are the source's ids. At each of `point_sizes` (some of `sizes`), the workers also
    detect the salient points of the square image (`Batch.points`, jeong2017 Sec. 2), or take them from
    `points_memo` when an earlier pass of the job detected them. An image that
    cannot be read or searched for points, for any reason, is recorded in `failures` with its id and
    left out; the stream goes on."""
    check_sizes(sizes)
    check_positive(batch_size=batch_size, workers=workers)
    if not set(point_sizes) <= set(sizes):
        raise ValueError(f"point_sizes {point_sizes!r} must be among the sizes {sizes!r}")
    point_sizes = tuple(sorted(set(point_sizes)))
    rows = range(len(source)) if rows is None else rows

    def points_of(key: str, size: int, square: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found = points_memo.get_points((size, key)) if points_memo is not None else None
        if found is None:
            found = padded_points(square)
            if points_memo is not None:
                points_memo.put_points((size, key), found)
        return found

    def prepared(row: int) -> tuple[str, tuple[np.ndarray, ...], tuple[tuple[np.ndarray, np.ndarray], ...]]:
        image = source.load(int(row))
        squares = prepare_multi(image, sizes)
        by_size, key = dict(zip(sizes, squares)), pixels_key(image)
        return key, squares, tuple(points_of(key, s, by_size[s]) for s in point_sizes)

    def items() -> Iterator[tuple]:
        for row, result in ordered_map(prepared, rows, workers=workers, in_flight=max(2 * batch_size, 2 * workers),
                                       catch=True):
            if isinstance(result, ImageError):
                failures.add(source.ids[int(row)], result.reason)
            elif isinstance(result, Exception):  # one odd file must not end a run over a million
                failures.add(source.ids[int(row)], f"unexpected {type(result).__name__}: {result}")
            else:
                yield source.ids[int(row)], *result

    return assemble_batches(items(), sizes, batch_size, point_sizes)


# ----------------------------------------------------------------------------------------
# Benchmarks: queries in groups + distractors


@dataclasses.dataclass(frozen=True, eq=False)
class Benchmark:
    """A labelled retrieval benchmark: the database is queries (rows < num_queries, each in a
    group >= 0) then distractors (group -1); every query is also in the database (METU protocol).
    Fitting reads `gallery()`, the distractors only."""

    name: str
    database: ImageSource
    groups: np.ndarray  # (N,) int64
    num_queries: int

    def __post_init__(self) -> None:
        if len(self.groups) != len(self.database):
            raise ValueError(f"{self.name}: {len(self.groups)} group labels for {len(self.database)} images")
        if (self.groups[: self.num_queries] < 0).any() or (self.groups[self.num_queries:] >= 0).any():
            raise ValueError(f"{self.name}: queries must come first, each in a group >= 0, then distractors")

    @classmethod
    def from_records(cls, name: str, queries: Sequence[dict], gallery: Sequence[dict],
                     gallery_rows: Sequence[int] | None = None, queries_fields: Sequence[dict] | None = None,
                     gallery_fields: Sequence[dict] | None = None) -> Benchmark:
        """Record sequences (tfds splits or lists of dicts) of queries and distractors; `gallery_rows`
        picks the distractors used (default all)."""
        q = RecordSource(queries, f"{name}:queries", queries_fields)
        g: ImageSource = RecordSource(gallery, f"{name}:gallery", gallery_fields)
        if gallery_rows is not None:
            g = SubsetSource(g, gallery_rows, f"{name}:gallery")
        groups = np.concatenate([q.groups, np.full(len(g), NO_GROUP, np.int64)])
        return cls(name, ConcatSource([q, g], name), groups, len(q))

    def __len__(self) -> int:
        return len(self.database)

    @property
    def images(self) -> ImageSource:
        """Every image to embed, in order: the database (the queries are in it)."""
        return self.database

    @property
    def num_distractors(self) -> int:
        return len(self) - self.num_queries

    @property
    def query_rows(self) -> np.ndarray:
        return np.arange(self.num_queries)

    @property
    def relevant(self) -> list[np.ndarray]:
        from ..metrics import group_relevance

        return group_relevance(self.query_rows, self.groups[: self.num_queries])

    def id(self, row: int) -> str:
        return self.database.ids[row]

    def image(self, row: int) -> np.ndarray:
        return self.database.load(row)

    def gallery(self) -> ImageSource:
        """The distractors as a source of their own (what PCA-w and codebooks are fitted on)."""
        return SubsetSource(self.database, range(self.num_queries, len(self)), f"{self.name}:gallery")

    def describe(self) -> str:
        groups = len(set(self.groups[: self.num_queries].tolist()))
        return f"{self.name}: {self.num_queries} queries in {groups} groups + {self.num_distractors} distractors"


@dataclasses.dataclass(frozen=True, eq=False)
class RevisitedBenchmark:
    """A database and query crops that are not in it, each query with the database indices of its `easy`,
    `hard` and `junk` images (Revisited Oxford / Paris, `data.revisited_landmarks`; scored by `tmrjax.revisited`).
    The queries are cropped to their object's box, so a region pipeline queries with the whole crop only
    (jeong2017 Sec. 5: R_M). Fitting reads `gallery()`, the database only."""

    name: str
    database: ImageSource
    queries: ImageSource
    ground_truth: tuple[dict[str, np.ndarray], ...]  # per query: easy, hard, junk (int64 database indices)

    def __post_init__(self) -> None:
        if len(self.ground_truth) != len(self.queries):
            raise ValueError(f"{self.name}: {len(self.ground_truth)} ground-truth entries for "
                             f"{len(self.queries)} queries")

    @classmethod
    def from_records(cls, name: str, database: Sequence[dict], queries: Sequence[dict],
                     database_fields: Sequence[dict] | None = None,
                     queries_fields: Sequence[dict] | None = None) -> RevisitedBenchmark:
        """Record sequences (tfds splits or lists of dicts) of the database and of the queries, whose records
        carry ``easy``, ``hard`` and ``junk``."""
        fields = queries_fields if queries_fields is not None else queries
        truth = tuple({key: np.asarray(fields[i][key], np.int64).reshape(-1) for key in ("easy", "hard", "junk")}
                      for i in range(len(fields)))
        return cls(name, RecordSource(database, f"{name}:database", database_fields),
                   RecordSource(queries, f"{name}:queries", queries_fields), truth)

    def __len__(self) -> int:
        return len(self.database)

    @property
    def num_queries(self) -> int:
        return len(self.queries)

    @property
    def images(self) -> ImageSource:
        """Every image to embed, in order: the database, then the queries (rows len(self) on)."""
        return ConcatSource([self.database, self.queries], self.name)

    def id(self, row: int) -> str:
        return self.database.ids[row]

    def image(self, row: int) -> np.ndarray:
        return self.database.load(row)

    def gallery(self) -> ImageSource:
        """The database (what PCA-w and codebooks are fitted on; never the queries)."""
        return self.database

    def describe(self) -> str:
        return f"{self.name}: {self.num_queries} cropped queries, not in the database of {len(self)} images"


class FolderBenchmark:
    """The layout of a labelled folder benchmark (``--dataset folder:PATH``), either

        PATH/queries/<group>/<image>   every subfolder is one group; its images are all queries
        PATH/gallery/**/<image>        distractors (optional)

    or a flat folder of images with ``PATH/groups.json`` beside them: ``{"groups": {"<group>":
    ["<image path relative to PATH>", ...], ...}}``; images in no group are distractors. Groups
    are numbered in sorted order of their names; with `max_distractors`, the first N
    distractors in sorted order are used, so smaller subsets are nested in larger ones."""

    GROUPS_FILE = "groups.json"

    @classmethod
    def open(cls, root: str | os.PathLike, max_distractors: int | None = None) -> Benchmark:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not a folder (folder benchmark: {root}/queries/<group>/<image>)")
        if (root / cls.GROUPS_FILE).is_file():
            members, distractors, unreadable = cls._from_groups_file(root)
        elif (root / "queries").is_dir():
            members, distractors, unreadable = cls._from_folders(root)
        else:
            raise FileNotFoundError(
                f"{root}: neither {root / 'queries'}/<group>/<image> nor {root / cls.GROUPS_FILE}: not a "
                "labelled folder benchmark")
        if not members:
            raise ValueError(f"{root}: no query groups")
        distractors = sorted(distractors)[:max_distractors] if max_distractors is not None else sorted(distractors)
        names = sorted({g for _, g in members})
        number = {g: i for i, g in enumerate(names)}
        members = sorted(members, key=lambda m: (number[m[1]], m[0]))
        source = PathSource([p for p, _ in members] + distractors, root, f"folder:{root}", unreadable)
        groups = np.array([number[g] for _, g in members] + [NO_GROUP] * len(distractors), np.int64)
        return Benchmark(f"folder:{root}", source, groups, len(members))

    @staticmethod
    def _from_folders(root: Path) -> tuple[list[tuple[str, str]], list[str], FailureLog]:
        unreadable = FailureLog()
        members = []
        for rel in list_images(root / "queries", unreadable):
            group, sep, _ = rel.partition("/")
            if not sep:
                raise ValueError(f"{root / 'queries' / rel}: a query must lie in a group folder, "
                                 f"{root}/queries/<group>/<image>")
            members.append((f"queries/{rel}", group))
        distractors = []
        if (root / "gallery").is_dir():
            distractors = [f"gallery/{rel}" for rel in list_images(root / "gallery", unreadable)]
        return members, distractors, unreadable

    @classmethod
    def _from_groups_file(cls, root: Path) -> tuple[list[tuple[str, str]], list[str], FailureLog]:
        record = read_json(root / cls.GROUPS_FILE).record("groups")
        unreadable = FailureLog()
        present = set(list_images(root, unreadable))  # listed inside root: a stored name cannot leave it
        members, seen = [], set()
        for group in sorted(record.doc):
            paths = record.value(group)
            if not isinstance(paths, list) or not paths:
                record.fail(paths, "a non-empty list of image paths relative to the folder", group)
            for rel in paths:
                if rel not in present:
                    record.fail(rel, f"an image under {root} (the paths of this folder's images)", group)
                if rel in seen:
                    record.fail(rel, "an image in one group only", group)
                seen.add(rel)
                members.append((rel, group))
        return members, [p for p in present if p not in seen], unreadable


REVISITED = "revisited_landmarks"


def open_benchmark(
    spec: str, max_distractors: int | None = None, data_dir: str | os.PathLike | None = None, seed: int = 0
) -> Benchmark | RevisitedBenchmark:
    """``folder:PATH`` (`FolderBenchmark`), ``revisited_landmarks/CONFIG`` (`RevisitedBenchmark`, the whole
    database: `max_distractors` must be None) or ``[tfds:]NAME[/CONFIG]``, a tfds benchmark with splits
    ``queries`` and ``gallery``; for those, `max_distractors` keeps a seeded random subset of the gallery."""
    if spec.startswith(FOLDER_PREFIX):
        return FolderBenchmark.open(spec[len(FOLDER_PREFIX):], max_distractors)
    from .tfds_source import open_split

    name = spec[len(TFDS_PREFIX):] if spec.startswith(TFDS_PREFIX) else spec
    if name.partition("/")[0] == REVISITED:
        if max_distractors is not None:
            raise ValueError(f"{name}: max_distractors={max_distractors}, but the revisited protocol's ground truth "
                             "indexes the whole database; leave it unset")
        return RevisitedBenchmark.from_records(
            name, open_split(f"{name}:database", data_dir), open_split(f"{name}:queries", data_dir),
            database_fields=open_split(f"{name}:database", data_dir, images=False),
            queries_fields=open_split(f"{name}:queries", data_dir, images=False))
    gallery = open_split(f"{name}:gallery", data_dir)
    rows = np.arange(len(gallery))
    if max_distractors is not None and max_distractors < len(gallery):
        rows = np.sort(np.random.default_rng(seed).choice(len(gallery), max_distractors, replace=False))
    return Benchmark.from_records(
        name, open_split(f"{name}:queries", data_dir), gallery, rows,
        queries_fields=open_split(f"{name}:queries", data_dir, images=False),
        gallery_fields=open_split(f"{name}:gallery", data_dir, images=False))
