"""Gallery index: faiss vectors plus an id table, kept in one directory that is always consistent.

Vectors are float32 and l2-normalised; similarity is the inner product. A region index (meta.json
`regions` R > 1, a pipeline of `Output.REGIONS`) holds up to R region vectors per item, faiss id
label * R + r for region r (absent regions are not stored), and ranks items by their best-matched
region pair (jeong2017 Eq. 7): exactly over every stored region with a flat index, or from the
best `region_k` regions each query region retrieves. Each indexed item has a
row in the id table (`id` = path relative to the gallery root, `sha256`, `size`, `mtime_ns`,
`label`), rows in ascending `label` order, and `label` is the item's id inside faiss. Labels only
grow, so removing rows never renumbers anything. The kinds of faiss index (flat, ivfpq, hnsw) and
their parameters are the table `tmrjax.index_kinds.INDEX_KINDS`.

On-disk layout of an index directory::

    meta.json                  the commit point: format version, dim, index params, count, next
                               label, pipeline description, created/updated times, generation,
                               and the names, byte sizes and sha256 of the files below
    index.<gen>.faiss          faiss index of generation <gen> (six digits)
    table.<gen>.npz            id table of generation <gen> (ids as NUL-joined utf-8, sha256 bytes,
                               size, mtime_ns, label)
    delta.<gen>.<k>.npz        checkpoint k on top of generation <gen>: rows added since (with their
                               vectors), labels removed, refreshed size/mtime of unchanged files
    augmented.<key>.faiss      optional: a faiss index of the same kind and ids over vectors derived
                               from the whole set (database-side augmentation, `tmrjax.rerank`);
                               meta.json's `augmented` names it with the parameters that made it and
                               the sha256 of the labels it was derived from

The indexed vectors are the truth; an augmented database is derived from all of them at once, so it
is committed only beside the labels it came from (a label's vector never changes: a changed file
gets a new label). A commit whose labels differ drops it, and `augmented` refuses one whose labels
are not the index's: a search never sees augmented vectors of another set.

Every file is written to a temporary name in the directory, fsynced and `os.replace`d into place;
meta.json is replaced last, so a run killed at any point leaves the previous state readable. Files
that meta.json does not name are deleted after each commit.

An index folder may come from someone else or from a damaged disk. `open` reads nothing that
meta.json does not name, refuses names that are not the plain names above (no path leaves the
folder), checks every field of meta.json and every array of the tables, and, unless
`verify=False`, the sha256 of every file before it is parsed. `save()` writes a new generation;
`checkpoint()` appends a small delta instead while the deltas stay smaller than the generation, so
checkpointing every N images costs O(total) writes overall rather than O(total^2).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from .fileio import (
    Record,
    StoredFileError,
    file_digest_matches,
    file_sha256,
    fsync_dir,
    load_npz,
    name_inside,
    read_json,
    write_atomic,
)
from .index_kinds import DEFAULT_KIND, INDEX_KINDS

# Search batches of a few hundred queries go through BLAS instead of the per-query loop (~6x faster).
faiss.cvar.distance_compute_blas_threshold = 20

# 2: every file entry of meta.json has its sha256. Indexes of format 1 open with verify=False
# (their files are hashed then) and are written as format 2 at their next commit.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
META_NAME = "meta.json"
# The key of the pipeline description whose value must match between an index and its caller.
PIPELINE_HASH_KEY = "vectors_hash"

_NORM_TOLERANCE = 1e-3
_INDEX_FILE, _TABLE_FILE, _DELTA_FILE = r"index\.\d{6,}\.faiss", r"table\.\d{6,}\.npz", r"delta\.\d{6,}\.\d{6,}\.npz"
_AUGMENTED_FILE = r"augmented\.[0-9a-f]{16}\.faiss"
_DATA_FILE = f"({_INDEX_FILE}|{_TABLE_FILE}|{_DELTA_FILE}|{_AUGMENTED_FILE})"
_SHA256 = r"[0-9a-f]{64}"
# Upper bounds for fields of meta.json: far above any real index, low enough to refuse absurd values.
_MAX_DIM = 1 << 16
_MAX_DELTAS = 100_000
_MAX_REGIONS = 1 << 10
DEFAULT_REGION_K = 100  # regions each query region retrieves in an approximate region search
_TABLE_SCHEMA = {"ids": ("u", 1), "sha256": ("u", 2), "size": ("iu", 1), "mtime_ns": ("iu", 1), "label": ("iu", 1)}
_DELTA_SCHEMA = {**_TABLE_SCHEMA, "vectors": ("f", 2), "removed": ("iu", 1), "refresh_label": ("iu", 1),
                 "refresh_size": ("iu", 1), "refresh_mtime_ns": ("iu", 1)}
# Files a commit may delete when meta.json does not name them: data files and our temporaries.
_OWN_FILE = re.compile(rf"^({_DATA_FILE}|\.({_DATA_FILE}|meta\.json)\.\d+\.tmp)$")


def validate_index_params(index_params: dict, dim: int) -> dict:
    """Check an index parameter dict (e.g. from a config) for `dim`-dim vectors; return it with defaults filled in."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"index dim must be a positive int, got {dim!r}")
    if not isinstance(index_params, dict):
        raise ValueError(f"index params must be a dict like {{'kind': 'flat'}}, got {index_params!r}")
    kind = index_params.get("kind", DEFAULT_KIND)
    if kind not in INDEX_KINDS:
        raise ValueError(f"index params {index_params}: unknown kind {kind!r}, expected one of {sorted(INDEX_KINDS)}")
    defaults = INDEX_KINDS[kind].defaults
    unknown = sorted(set(index_params) - set(defaults) - {"kind"})
    if unknown:
        raise ValueError(
            f"index params {index_params}: unknown keys {unknown} for kind {kind!r},"
            f" expected some of {sorted(defaults)}"
        )
    params = {"kind": kind, **defaults, **{k: v for k, v in index_params.items() if k != "kind"}}
    for key in defaults:
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"index params {index_params}: {key} must be a positive int, got {value!r}")
    problem = INDEX_KINDS[kind].check(params, dim)
    if problem:
        raise ValueError(f"index params {index_params}: {problem}")
    return params


@dataclass
class _Rows:
    """Id table columns, in ascending label order."""

    ids: list[str]
    sha256: np.ndarray  # (n, 32) uint8
    size: np.ndarray  # (n,) int64
    mtime_ns: np.ndarray  # (n,) int64
    label: np.ndarray  # (n,) int64, strictly increasing

    @classmethod
    def empty(cls) -> _Rows:
        return cls([], np.zeros((0, 32), np.uint8), *(np.zeros(0, np.int64) for _ in range(3)))

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def concat(cls, parts: Sequence[_Rows]) -> _Rows:
        return cls(
            [i for p in parts for i in p.ids],
            np.concatenate([p.sha256 for p in parts]),
            np.concatenate([p.size for p in parts]),
            np.concatenate([p.mtime_ns for p in parts]),
            np.concatenate([p.label for p in parts]),
        )

    def take(self, keep: np.ndarray) -> _Rows:
        ids = [i for i, k in zip(self.ids, keep.tolist()) if k]
        return _Rows(ids, self.sha256[keep], self.size[keep], self.mtime_ns[keep], self.label[keep])

    def arrays(self) -> dict[str, np.ndarray]:
        blob = "\0".join(self.ids).encode("utf-8")
        return {
            "ids": np.frombuffer(blob, np.uint8),
            "sha256": self.sha256,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "label": self.label,
        }

    @classmethod
    def from_arrays(cls, z: dict[str, np.ndarray], path: str) -> _Rows:
        """The table of checked arrays `z` (see `load_npz`) from file `path`; inconsistent columns,
        ids that are not UTF-8 and labels out of order are a StoredFileError naming it."""
        label = z["label"].astype(np.int64)
        try:
            ids = z["ids"].astype(np.uint8).tobytes().decode("utf-8").split("\0") if len(label) else []
        except UnicodeDecodeError as e:
            raise StoredFileError(path, f"id table is not UTF-8 ({e.reason} at byte {e.start})") from None
        rows = cls(ids, z["sha256"].astype(np.uint8), z["size"].astype(np.int64), z["mtime_ns"].astype(np.int64), label)
        if not len(ids) == len(rows.sha256) == len(rows.size) == len(rows.mtime_ns) == len(label):
            raise StoredFileError(
                path, f"id table columns have different lengths: {len(ids)} ids, {len(rows.sha256)} sha256, "
                f"{len(rows.size)} sizes, {len(rows.mtime_ns)} mtimes, {len(label)} labels")
        if rows.sha256.shape[1:] != (32,):
            raise StoredFileError(path, f"sha256 column has shape {rows.sha256.shape}, expected ({len(label)}, 32)")
        if len(label) and (label[0] < 0 or not np.all(np.diff(label) > 0)):
            raise StoredFileError(path, "labels are not non-negative and strictly increasing")
        return rows


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _new_faiss_index(dim: int, params: dict) -> faiss.Index:
    """An empty faiss index for validated `params`, built by faiss's own factory string."""
    kind = INDEX_KINDS[params["kind"]]
    index = faiss.index_factory(dim, kind.factory.format(**params), faiss.METRIC_INNER_PRODUCT)
    kind.configure(index, params)
    return index


def _checked_meta(record: Record, meta_path: str, version: int) -> dict:
    """meta.json's fields, each checked for type and range (StoredFileError names the field)."""
    dim = record.int("dim", 1, _MAX_DIM)
    count, next_label = record.int("count"), record.int("next_label")
    if count > next_label:
        raise StoredFileError(meta_path, f"count {count} exceeds next_label {next_label}")
    files = record.record("files")

    def entry(r: Record, delta: bool = False) -> dict:
        e = {"name": r.str("name"), "bytes": r.int("bytes")}
        if version >= 2:
            e["sha256"] = r.str("sha256", _SHA256)
        if delta:
            e["rows"] = r.int("rows")
        return e

    pipeline = record.record("pipeline")
    pipeline.str(PIPELINE_HASH_KEY)
    regions = record.int("regions", 1, _MAX_REGIONS) if "regions" in record.doc else 1
    augmented = {}
    if "augmented" in record.doc:
        derived = record.record("augmented")
        augmented = {**entry(derived), "params": derived.record("params").doc,
                     "labels_sha256": derived.str("labels_sha256", _SHA256)}
    return {
        **record.doc,
        "format_version": FORMAT_VERSION,  # what the next commit writes
        "dim": dim,
        "regions": regions,
        "index": record.record("index").doc,
        "count": count,
        "next_label": next_label,
        "generation": record.int("generation", -1, 10**9),
        "files": {"index": entry(files.record("index")), "table": entry(files.record("table"))},
        "deltas": [entry(d, delta=True) for d in record.records("deltas", _MAX_DELTAS)],
        "pipeline": pipeline.doc,
        **({"augmented": augmented} if augmented else {}),
    }


def _checked_file(folder: str, entry: dict, pattern: str, verify: bool) -> str:
    """The path of a file meta.json names (`entry`), after checking its name, size and (with `verify`) sha256."""
    meta_path = os.path.join(folder, META_NAME)
    file = str(name_inside(folder, entry["name"], pattern, meta_path))
    try:
        size = os.path.getsize(file)
    except FileNotFoundError as e:
        raise StoredFileError(file, f"missing, but {meta_path} names it") from e
    if size != entry["bytes"]:
        raise StoredFileError(file, f"{size} bytes, but {meta_path} recorded {entry['bytes']}")
    if "sha256" not in entry:  # format 1: hashed now, recorded at the next commit
        entry["sha256"] = file_sha256(file)
    elif verify:
        file_digest_matches(file, entry["sha256"], meta_path)
    return file


def _read_faiss(path: str, kind: str) -> faiss.Index:
    """A faiss index file of `kind`; faiss's own errors on a damaged file become a StoredFileError."""
    try:
        index = faiss.read_index(path)
    except RuntimeError as e:
        if not os.path.exists(path):  # replaced by a concurrent writer's commit: `open` tries again
            raise StoredFileError(path, "removed while it was read") from FileNotFoundError(path)
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise StoredFileError(path, f"damaged faiss index ({reason})") from None
    expected = INDEX_KINDS[kind].faiss_class
    if type(index).__name__ != expected:
        raise StoredFileError(path, f"holds a faiss {type(index).__name__}, expected {expected} ({kind})")
    return index


class GalleryIndex:
    """A directory holding the gallery's vectors, their id table and meta.json; see the module docstring.

    Build one with `create` or `open`. Changes (`add`, `remove`, stat refreshes in `plan_update`) stay
    in memory until `checkpoint()` or `save()` commits them atomically.
    """

    def __init__(self, path: str, meta: dict, index: faiss.Index, rows: _Rows):
        self.path = path
        self._meta = meta
        self._index = index
        self._rows = rows
        self._chunks: list[_Rows] = []  # rows added since the table was last consolidated
        self._label_of: dict[str, int] | None = None
        self._next_label = int(meta["next_label"])
        self._mark_durable(base_count=len(rows))  # `rows` is the generation's table, before any delta
        self._kind = INDEX_KINDS[meta["index"]["kind"]]
        self._kind.set_search(index, meta["index"])
        self._verify = True  # `open` sets what it was asked for; `augmented` reads its file the same way
        self._dense: np.ndarray | None = None  # `vectors()`, read back from faiss once
        self._derived = False  # an augmented view (`with_vectors`, `augmented`): searched, never saved

    def _mark_durable(self, base_count: int | None = None) -> None:
        """Everything in memory is now what meta.json describes; start tracking changes afresh."""
        if base_count is not None:
            self._base_count = base_count
        self._durable_next_label = self._next_label
        self._removed: list[np.ndarray] = []  # labels below _durable_next_label removed since
        self._stat_refresh: dict[int, tuple[int, int]] = {}  # label -> (size, mtime_ns) refreshed since
        self._pending: list[tuple[np.ndarray, np.ndarray]] | None = []  # (labels, vectors) added since

    # ----------------------------------------------------------------------------------------- open

    @classmethod
    def create(cls, path: str, dim: int, index_params: dict, pipeline_info: dict, regions: int = 1) -> GalleryIndex:
        """Make a new empty index in directory `path` (created if missing) and commit it at once;
        `regions` > 1: a region index of up to that many vectors per item."""
        params = validate_index_params(index_params, dim)
        if isinstance(regions, bool) or not isinstance(regions, int) or not 1 <= regions <= _MAX_REGIONS:
            raise ValueError(f"regions must be an int in [1, {_MAX_REGIONS}], got {regions!r}")
        if regions > 1 and not INDEX_KINDS[params["kind"]].takes_ids:
            raise ValueError(f"a region index needs faiss ids (label * R + region); kind {params['kind']!r} numbers "
                             "vectors itself: use flat or ivfpq")
        if not isinstance(pipeline_info, dict) or not isinstance(pipeline_info.get(PIPELINE_HASH_KEY), str):
            raise ValueError(f"pipeline_info must be a dict with a string {PIPELINE_HASH_KEY!r}, got {pipeline_info!r}")
        try:
            pipeline_info = json.loads(json.dumps(pipeline_info))
        except (TypeError, ValueError) as e:
            raise ValueError(f"pipeline_info must be JSON-serialisable: {e}") from None
        meta_path = os.path.join(path, META_NAME)
        if os.path.exists(meta_path):
            raise FileExistsError(f"{meta_path} already exists: open the index to update it, or delete it to rebuild")
        os.makedirs(path, exist_ok=True)
        now = _now()
        meta = {
            "format_version": FORMAT_VERSION,
            "dim": dim,
            "regions": regions,
            "index": params,
            "count": 0,
            "next_label": 0,
            "pipeline": pipeline_info,
            "created": now,
            "updated": now,
            "generation": -1,
            "files": {},
            "deltas": [],
        }
        gallery = cls(path, meta, _new_faiss_index(dim, params), _Rows.empty())
        gallery.save()
        return gallery

    @classmethod
    def open(cls, path: str, pipeline_info: dict | None = None, verify: bool = True) -> GalleryIndex:
        """Load the last committed state of the index in `path`.

        With `pipeline_info`, fail unless its config hash is the one the index was built with.
        With `verify` (the default) every file's sha256 is checked against meta.json before it
        is read; `verify=False` skips that (for very large indexes) but keeps every other check.
        A damaged or tampered folder is a StoredFileError naming the file.
        """
        meta_path = os.path.join(path, META_NAME)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{meta_path} not found: {path} is not a tmrjax index (create one first)")
        for _ in range(3):  # a concurrent writer may delete the files of the meta.json we just read
            meta = read_json(meta_path)
            try:
                gallery = cls._load(path, meta, verify)
                break
            except StoredFileError as e:
                if not isinstance(e.__cause__, FileNotFoundError):
                    raise
                again = read_json(meta_path)
                if again.get("generation") == meta.get("generation") and again.get("deltas") == meta.get("deltas"):
                    raise
        else:
            raise RuntimeError(f"{meta_path}: changed under every one of 3 attempts to open it")
        if pipeline_info is not None:
            gallery.check_pipeline(pipeline_info)
        return gallery

    @classmethod
    def _load(cls, path: str, record: Record, verify: bool) -> GalleryIndex:
        meta_path = os.path.join(path, META_NAME)
        version = record.int("format_version", 0, 1 << 20)
        if version not in READABLE_VERSIONS:
            raise StoredFileError(meta_path, f"format_version {version}, this tmrjax reads {list(READABLE_VERSIONS)}")
        if version < 2 and verify:
            raise StoredFileError(
                meta_path, f"format_version {version} records no checksums, so its files cannot be verified: "
                "open it with verification off (--no-verify) to use it (the next update writes checksums), "
                "or rebuild it (tmrjax index --rebuild)")
        meta = _checked_meta(record, meta_path, version)
        try:
            validate_index_params(meta["index"], meta["dim"])
        except ValueError as e:
            raise StoredFileError(meta_path, f"index parameters: {e}") from None

        def checked(entry: dict, pattern: str) -> str:
            return _checked_file(path, entry, pattern, verify)

        index_file = checked(meta["files"]["index"], _INDEX_FILE)
        index = _read_faiss(index_file, meta["index"]["kind"])
        table_file = checked(meta["files"]["table"], _TABLE_FILE)
        rows = _Rows.from_arrays(load_npz(table_file, _TABLE_SCHEMA), table_file)
        regions = meta["regions"]
        if index.d != meta["dim"] or not len(rows) <= index.ntotal <= len(rows) * regions or (
                regions == 1 and index.ntotal != len(rows)):
            raise StoredFileError(
                index_file, f"dim {index.d} with {index.ntotal} vectors, but {table_file} has {len(rows)} rows"
                f" of {regions} region(s) and {meta_path} says dim {meta['dim']}")
        if isinstance(index, faiss.IndexIDMap):
            ids = faiss.vector_to_array(index.id_map)
            if not (np.array_equal(np.unique(ids // regions), rows.label) and np.all(np.diff(ids) > 0)):
                raise StoredFileError(index_file, f"its vector ids are not the labels of {table_file}"
                                      + (f" times {regions} plus a region" if regions > 1 else ""))
        if len(rows) and rows.label[-1] >= meta["next_label"]:
            raise StoredFileError(table_file, f"label {rows.label[-1]} is not below next_label {meta['next_label']}")
        gallery = cls(path, meta, index, rows)
        for entry in meta["deltas"]:
            delta_file = checked(entry, _DELTA_FILE)
            gallery._apply_delta(load_npz(delta_file, _DELTA_SCHEMA), delta_file)
        if len(gallery) != meta["count"]:
            raise StoredFileError(meta_path, f"count {meta['count']}, but its files hold {len(gallery)} rows")
        gallery._next_label = int(meta["next_label"])
        gallery._mark_durable()
        gallery._verify = verify
        return gallery

    def _apply_delta(self, z: dict[str, np.ndarray], path: str) -> None:
        removed = z["removed"].astype(np.int64)
        rows = self._table()
        if not np.all(np.isin(removed, rows.label)) or len(np.unique(removed)) != len(removed):
            raise StoredFileError(path, "removes labels that are not in the index")
        self._remove_labels(removed)
        rows = self._table()
        refresh = z["refresh_label"].astype(np.int64)
        if not len(refresh) == len(z["refresh_size"]) == len(z["refresh_mtime_ns"]) or not np.all(
                np.isin(refresh, rows.label)):
            raise StoredFileError(path, "refreshes rows that are not in the index")
        refreshed = np.searchsorted(rows.label, refresh)
        rows.size[refreshed] = z["refresh_size"]
        rows.mtime_ns[refreshed] = z["refresh_mtime_ns"]
        added = _Rows.from_arrays(z, path)
        if z["vectors"].shape != (len(added), self.regions * self.dim):
            raise StoredFileError(path, f"vectors have shape {z['vectors'].shape}, expected "
                                        f"({len(added)}, {self.regions * self.dim})")
        above = int(rows.label[-1]) + 1 if len(rows) else 0
        if len(added) and (added.label[0] < above or added.label[-1] >= self._meta["next_label"]):
            raise StoredFileError(path, f"adds labels {added.label[0]}..{added.label[-1]} outside "
                                        f"[{above}, {self._meta['next_label']})")
        if not set(added.ids).isdisjoint(self._labels_by_id()):
            raise StoredFileError(path, "adds ids that are already indexed")
        vectors = np.ascontiguousarray(z["vectors"], np.float32)
        self._append(added, vectors.reshape(len(added), self.regions, self.dim) if self.regions > 1 else vectors)

    def check_pipeline(self, pipeline_info: dict) -> None:
        """Fail unless `pipeline_info` has the config hash this index's vectors were made with."""
        ours, theirs = self._meta["pipeline"], pipeline_info.get(PIPELINE_HASH_KEY)
        if ours.get(PIPELINE_HASH_KEY) != theirs:
            raise ValueError(
                f"{os.path.join(self.path, META_NAME)}: index was built by pipeline {ours.get('name')!r} with"
                f" {PIPELINE_HASH_KEY} {ours.get(PIPELINE_HASH_KEY)!r}, but the caller's pipeline"
                f" {pipeline_info.get('name')!r} has {theirs!r}; vectors of two pipelines must not mix:"
                " use the matching config, or re-index with --rebuild"
            )

    # ---------------------------------------------------------------------------------- properties

    def __len__(self) -> int:
        return len(self._rows) + sum(len(c) for c in self._chunks)

    @property
    def ids(self) -> list[str]:
        """Indexed ids (relative paths), in faiss label order."""
        return list(self._table().ids)

    @property
    def dim(self) -> int:
        return int(self._meta["dim"])

    @property
    def regions(self) -> int:
        """R: region vectors per item (1: one vector per item)."""
        return int(self._meta["regions"])

    @property
    def vector_shape(self) -> tuple[int, ...]:
        return (self.regions, self.dim) if self.regions > 1 else (self.dim,)

    @property
    def params(self) -> dict:
        return dict(self._meta["index"])

    @property
    def pipeline_info(self) -> dict:
        return json.loads(json.dumps(self._meta["pipeline"]))

    @property
    def train_size(self) -> int:
        """Vectors the next `add` must bring at once to train the index (0 once trained or never needed)."""
        return 0 if self._index.is_trained else self._kind.train_size(self._meta["index"])

    def _table(self) -> _Rows:
        if self._chunks:
            self._rows = _Rows.concat([self._rows, *self._chunks])
            self._chunks = []
        return self._rows

    def _labels_by_id(self) -> dict[str, int]:
        if self._label_of is None:
            rows = self._table()
            self._label_of = dict(zip(rows.ids, rows.label.tolist()))
        return self._label_of

    # ------------------------------------------------------------------------------------- update

    def plan_update(self, root: str, rel_paths: Sequence[str]) -> tuple[list[str], list[str], int]:
        """Sort the files `rel_paths` under `root` into (new, changed content, count unchanged).

        A file whose size and mtime match its row is unchanged without reading it; otherwise it is
        re-hashed and only a different sha256 makes it changed. Unchanged files with a new size/mtime
        get their row refreshed (kept at the next checkpoint/save) so they are not re-hashed again.
        Indexed ids missing from `rel_paths` are not reported. An indexed file that can no longer be
        read (e.g. now a broken link) counts as changed, so that re-embedding it reports why.
        """
        label_of = self._labels_by_id()
        rows = self._table()
        to_add: list[str] = []
        changed: list[str] = []
        unchanged = 0
        seen: set[str] = set()
        for rel in rel_paths:
            if rel in seen:
                raise ValueError(f"plan_update: {rel!r} is listed twice")
            seen.add(rel)
            label = label_of.get(rel)
            if label is None:
                to_add.append(rel)
                continue
            file = os.path.join(root, rel)
            pos = int(np.searchsorted(rows.label, label))
            try:
                stat = os.stat(file)
                if stat.st_size == rows.size[pos] and stat.st_mtime_ns == rows.mtime_ns[pos]:
                    unchanged += 1
                    continue
                digest = bytes.fromhex(file_sha256(file))
            except OSError:
                changed.append(rel)
                continue
            if digest != rows.sha256[pos].tobytes():
                changed.append(rel)
                continue
            unchanged += 1
            rows.size[pos], rows.mtime_ns[pos] = stat.st_size, stat.st_mtime_ns
            if label < self._durable_next_label:
                self._stat_refresh[label] = (stat.st_size, stat.st_mtime_ns)
        return to_add, changed, unchanged

    def add(
        self,
        ids: Sequence[str],
        sha256s: Sequence[str],
        sizes: Sequence[int],
        mtimes: Sequence[int],
        vectors: np.ndarray,
    ) -> None:
        """Index new items: ids (relative paths), hex sha256, size in bytes, mtime_ns, and (n, dim) unit vectors
        ((n, R, dim) for a region index: unit, or all zero for an absent region, at least one present).

        On an untrained ivfpq index the first call trains it and must bring `train_size` vectors.
        """
        n = len(ids)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (n, *self.vector_shape):
            raise ValueError(f"add: vectors have shape {vectors.shape}, expected {(n, *self.vector_shape)} for {n} ids")
        if not len(sha256s) == len(sizes) == len(mtimes) == n:
            raise ValueError(
                f"add: {n} ids but {len(sha256s)} sha256s, {len(sizes)} sizes and {len(mtimes)} mtimes"
            )
        if not np.all(np.isfinite(vectors)):
            raise ValueError("add: vectors contain NaN or inf")
        norms = np.linalg.norm(vectors, axis=-1).reshape(n, -1)
        wrong = (np.abs(norms - 1) > _NORM_TOLERANCE) & ((norms != 0) | (self.regions == 1))
        bad = np.flatnonzero(wrong.any(axis=1) | ~(norms > 0).any(axis=1))
        if bad.size:
            raise ValueError(f"add: vectors must be l2-normalised; {ids[bad[0]]!r} has norms {norms[bad[0]].round(4)}"
                             + (" (a region index: unit or all-zero regions, one at least present)"
                                if self.regions > 1 else ""))
        label_of = self._labels_by_id()
        for i in ids:
            if not isinstance(i, str) or not i or "\0" in i:
                raise ValueError(f"add: id must be a non-empty str without NUL, got {i!r}")
            if i in label_of:
                raise ValueError(f"add: {i!r} is already indexed; remove() it first")
        if len(set(ids)) != n:
            raise ValueError("add: ids contain duplicates")
        for s in sha256s:
            if not (isinstance(s, str) and len(s) == 64 and re.fullmatch(r"[0-9a-fA-F]{64}", s)):
                raise ValueError(f"add: sha256 must be 64 hex characters, got {s!r}")
        if n == 0:
            return
        if not self._index.is_trained:
            if n < self.train_size:
                p = self._meta["index"]
                raise ValueError(
                    f"add: the first add() to ivfpq index {self.path} trains it and needs at least"
                    f" {self.train_size} vectors (nlist={p['nlist']}, 2**nbits={2 ** p['nbits']}; faiss advises"
                    f" ~39x nlist), got {n}: add more vectors at once, lower nlist/nbits, or use kind 'flat'"
                )
            self._index.train(self._present(vectors, np.zeros(n, np.int64))[0])
        labels = np.arange(self._next_label, self._next_label + n, dtype=np.int64)
        rows = _Rows(
            list(ids),
            np.frombuffer(bytes.fromhex("".join(sha256s)), np.uint8).reshape(n, 32).copy(),
            np.array(sizes, np.int64).reshape(n),
            np.array(mtimes, np.int64).reshape(n),
            labels,
        )
        self._append(rows, vectors)
        if self._pending is not None:
            self._pending.append((labels, vectors.copy()))  # callers may reuse their batch buffer
            if self._delta_rows() > self._base_count:
                self._pending = None  # the next checkpoint writes a full generation; stop keeping copies

    def _present(self, vectors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The vectors faiss stores for items `labels`, and their faiss ids: every vector, ids = labels; for
        a region index the present regions (not all zero), ids = label * R + region."""
        if self.regions == 1:
            return vectors, labels
        ids = labels[:, None] * self.regions + np.arange(self.regions)
        present = np.any(vectors != 0, axis=-1)
        return np.ascontiguousarray(vectors[present]), ids[present]

    def _append(self, rows: _Rows, vectors: np.ndarray) -> None:
        """Add rows (labels above all present) and their vectors to faiss and the table."""
        if not len(rows):
            return
        if not self._kind.takes_ids:
            # faiss numbers the vectors itself; with no removal its numbers are the labels.
            assert self._index.ntotal == rows.label[0]
            self._index.add(vectors)
        else:
            self._index.add_with_ids(*self._present(vectors, rows.label))
        self._chunks.append(rows)
        self._dense = None
        if self._label_of is not None:
            self._label_of.update(zip(rows.ids, rows.label.tolist()))
        self._next_label = max(self._next_label, int(rows.label[-1]) + 1)

    def remove(self, ids: Sequence[str]) -> None:
        """Drop items (e.g. files whose content changed) from the index; not possible for hnsw."""
        if not len(ids):
            return
        if not self._kind.takes_ids:
            raise ValueError(
                f"{self.path}: cannot remove {len(ids)} items (e.g. {ids[0]!r}): faiss {self._kind.faiss_class}"
                f" indexes ({self._meta['index']['kind']}) do not support removal; rebuild the index with --rebuild"
            )
        label_of = self._labels_by_id()
        missing = [i for i in ids if i not in label_of]
        if missing:
            raise ValueError(f"remove: {len(missing)} ids are not in {self.path}, e.g. {missing[0]!r}")
        labels = np.unique(np.array([label_of.pop(i) for i in set(ids)], np.int64))
        self._remove_labels(labels)
        old = labels[labels < self._durable_next_label]
        self._removed.append(old)
        for label in old.tolist():
            self._stat_refresh.pop(label, None)

    def _remove_labels(self, labels: np.ndarray) -> None:
        if not labels.size:
            return
        ids = (labels[:, None] * self.regions + np.arange(self.regions)).ravel()
        removed = self._index.remove_ids(ids)
        self._dense = None
        rows = self._table()
        keep = ~np.isin(rows.label, labels)
        if not labels.size <= removed <= ids.size or (self.regions == 1 and removed != labels.size) or \
                keep.sum() != len(rows) - labels.size:
            raise RuntimeError(f"{self.path}: removing {labels.size} labels removed {removed} vectors")
        self._rows = rows.take(keep)

    # --------------------------------------------------------------------------------------- search

    def search(self, queries: np.ndarray, k: int, region_k: int | None = None) -> tuple[np.ndarray, list[list[str]]]:
        """Top-k gallery items by inner product for (Q, dim) queries.

        A region index takes (Q, R_q, dim) queries (absent regions all zero) and ranks items by their
        best-matched region pair (jeong2017 Eq. 7): over every stored region (exact) for a flat index
        when `region_k` is None, else from the `region_k` best regions each query region retrieves
        (ivfpq: `DEFAULT_REGION_K` when None), an item scoring its best retrieved pair.

        Returns scores (Q, min(k, len)) float32, best first, and the matching ids per query; where faiss
        finds fewer than k (approximate kinds) the ids list is shorter and the missing scores are -inf.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        want = "(Q, R_q, {})" if self.regions > 1 else "(Q, {})"
        if queries.ndim != (3 if self.regions > 1 else 2) or queries.shape[-1] != self.dim:
            raise ValueError(f"search: queries have shape {queries.shape}, expected {want.format(self.dim)}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"search: k must be a positive int, got {k!r}")
        k = min(int(k), len(self))
        if k == 0 or not len(queries):
            return np.zeros((len(queries), k), np.float32), [[] for _ in range(len(queries))]
        rows = self._table()
        if self.regions == 1:
            scores, labels = self._index.search(queries, k)
        elif region_k is None and self._meta["index"]["kind"] == "flat":
            scores, labels = self._exact_region_search(queries, k, rows)
        else:
            scores, labels = self._approximate_region_search(queries, k, region_k or DEFAULT_REGION_K)
        found = labels >= 0
        positions = np.searchsorted(rows.label, np.where(found, labels, 0))
        scores = np.where(found, scores, -np.inf).astype(np.float32)
        ids = [
            [rows.ids[p] for p, f in zip(pos_row, found_row) if f]
            for pos_row, found_row in zip(positions.tolist(), found.tolist())
        ]
        return scores, ids

    def _exact_region_search(self, queries: np.ndarray, k: int, rows: _Rows) -> tuple[np.ndarray, np.ndarray]:
        """Every stored region pair scored (`region_search.exact_search`); (scores, labels) (Q, k)."""
        from .region_search import RegionVectors, exact_search

        database = self.vectors()
        scores, items, _ = exact_search(RegionVectors(queries, np.any(queries != 0, axis=-1)),
                                        RegionVectors(database, np.any(database != 0, axis=-1)), k)
        return scores, np.where(np.isfinite(scores), rows.label[items], -1)

    def _approximate_region_search(self, queries: np.ndarray, k: int, region_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each present query region's `region_k` nearest stored regions; an item scores its best pair."""
        from .region_search import best_images

        present = np.any(queries != 0, axis=-1)
        found_scores, found_ids = self._index.search(np.ascontiguousarray(queries[present]),
                                                     min(region_k, self._index.ntotal))
        hit = found_ids >= 0
        owner = np.broadcast_to(np.nonzero(present)[0][:, None], found_ids.shape)[hit]
        scores, labels, _ = best_images(owner, found_ids[hit], found_scores[hit], len(queries), self.regions, k)
        return scores, labels

    # ------------------------------------------------------------------------- augmented database

    def vectors(self) -> np.ndarray:
        """Every indexed vector in label order, (N, dim), or (N, R, dim) for a region index (absent regions
        all zero): read back from faiss once, kept until the next `add` or `remove`."""
        if not self._kind.keeps_vectors:
            raise ValueError(
                f"{self.path}: a {self._meta['index']['kind']!r} index keeps compressed codes, not the vectors that "
                "query expansion and database-side augmentation (config `search`) read; index with --kind flat or "
                "hnsw, or set search.query_expansion and search.database_augmentation to 0")
        if self._dense is None:
            if isinstance(self._index, faiss.IndexIDMap):
                stored, ids = self._index.index, faiss.vector_to_array(self._index.id_map)
            else:  # faiss numbers the vectors itself; with no removal its numbers are the labels
                stored, ids = self._index, np.arange(self._index.ntotal, dtype=np.int64)
            rows = self._table()
            dense = np.zeros((len(rows), self.regions, self.dim), np.float32)
            dense[np.searchsorted(rows.label, ids // self.regions), ids % self.regions] = \
                stored.reconstruct_n(0, stored.ntotal)
            self._dense = dense if self.regions > 1 else dense[:, 0]
        return self._dense

    def with_vectors(self, vectors: np.ndarray) -> GalleryIndex:
        """This index over other vectors of the same items (`vectors()`'s shape and order; e.g. their DBA,
        `tmrjax.rerank.augment_database`): same ids, kind, parameters and trained state, in memory, to
        search and never to save."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        rows = self._table()
        if vectors.shape != (len(rows), *self.vector_shape):
            raise ValueError(f"with_vectors: vectors have shape {vectors.shape}, expected "
                             f"{(len(rows), *self.vector_shape)} (one per indexed item, in label order)")
        index = faiss.clone_index(self._index)
        index.reset()
        view = GalleryIndex(self.path, self._meta, index, _Rows.empty())
        view._append(rows, vectors)
        view._derived = True
        return view

    def augmented(self, params: dict) -> GalleryIndex | None:
        """The committed augmented database (see `save_augmented`) as a view like `with_vectors`'s, if it
        was made with `params` from the items indexed now; None otherwise."""
        if not self.has_augmented(params):
            return None
        entry = self._meta["augmented"]
        file = _checked_file(self.path, entry, _AUGMENTED_FILE, self._verify)
        index = _read_faiss(file, self._meta["index"]["kind"])
        ours = faiss.vector_to_array(self._index.id_map) if isinstance(self._index, faiss.IndexIDMap) else None
        theirs = faiss.vector_to_array(index.id_map) if isinstance(index, faiss.IndexIDMap) else None
        if index.d != self.dim or index.ntotal != self._index.ntotal or not np.array_equal(ours, theirs):
            raise StoredFileError(file, f"holds {index.ntotal} vectors of dim {index.d} under other ids than "
                                        f"the index's {self._index.ntotal} of dim {self.dim}")
        view = GalleryIndex(self.path, self._meta, index, self._table())
        view._derived = True
        return view

    def has_augmented(self, params: dict) -> bool:
        """Whether meta.json names an augmented database made with `params` from the items indexed now
        (what `augmented` would open; its file is not read)."""
        entry = self._meta.get("augmented")
        return bool(entry) and entry["params"] == params and entry["labels_sha256"] == self._labels_sha256()

    def save_augmented(self, params: dict, vectors: np.ndarray) -> None:
        """Commit `vectors`, derived from all of `vectors()` by `params` (e.g. DBA and its config fields),
        as the index's augmented database; only on a committed state (after `save` or `checkpoint`)."""
        if self._next_label != self._durable_next_label or self._removed:
            raise RuntimeError(f"{self.path}: save() the index before deriving its augmented database")
        view = self.with_vectors(vectors)
        params = json.loads(json.dumps(params))
        labels = self._labels_sha256()
        name = f"augmented.{hashlib.sha256(json.dumps([params, labels]).encode()).hexdigest()[:16]}.faiss"
        entry = self._write_file(name, lambda f: faiss.write_index(view._index, faiss.PyCallbackIOWriter(f.write)))
        self._meta = {**self._meta, "augmented": {**entry, "params": params, "labels_sha256": labels}}
        self._commit(generation=self._meta["generation"], files=self._meta["files"], deltas=self._meta["deltas"])

    def rows_with_content(self, sha256s: Sequence[str]) -> np.ndarray:
        """For each hex sha256, the row (label order, as in `vectors()`) of the first indexed item with
        that content, or -1: a query that is itself indexed, found by its bytes. -> (len(sha256s),) int64."""
        rows = self._table()
        if not len(rows) or not len(sha256s):
            return np.full(len(sha256s), -1, np.int64)
        void = np.dtype((np.void, 32))
        keys, first = np.unique(rows.sha256.view(void).ravel(), return_index=True)
        wanted = np.frombuffer(bytes.fromhex("".join(sha256s)), np.uint8).reshape(-1, 32).view(void).ravel()
        at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        return np.where(keys[at] == wanted, first[at], -1).astype(np.int64)

    def _labels_sha256(self) -> str:
        """Names the set of indexed vectors: a label's vector never changes (a changed file gets a new label)."""
        return hashlib.sha256(self._table().label.astype("<i8").tobytes()).hexdigest()

    # ----------------------------------------------------------------------------------------- save

    def save(self) -> None:
        """Commit the current state as a new generation (index + table + meta.json), atomically."""
        generation = self._meta["generation"] + 1
        rows = self._table()
        index_name, table_name = f"index.{generation:06d}.faiss", f"table.{generation:06d}.npz"
        files = {
            "index": self._write_file(
                index_name, lambda f: faiss.write_index(self._index, faiss.PyCallbackIOWriter(f.write))),
            "table": self._write_file(table_name, lambda f: np.savez(f, **rows.arrays())),
        }
        self._commit(generation=generation, files=files, deltas=[])
        self._mark_durable(base_count=len(rows))

    def checkpoint(self) -> None:
        """Make all changes so far durable, cheaply: a delta on top of the last generation, or a new one.

        Called by the indexing loop every N images; after a crash, `open` + `plan_update` resume from here.
        """
        if not (self._next_label != self._durable_next_label or self._removed or self._stat_refresh):
            return
        if self._pending is None or self._base_count == 0 or self._delta_rows() > self._base_count:
            self.save()
            return
        rows = self._table()
        added = rows.take(rows.label >= self._durable_next_label)
        if self._pending:
            labels = np.concatenate([p[0] for p in self._pending])
            vectors = np.concatenate([p[1] for p in self._pending])[np.isin(labels, added.label)]
        else:
            vectors = np.zeros((0, *self.vector_shape), np.float32)
        vectors = vectors.reshape(len(vectors), self.regions * self.dim)  # a region index's deltas: (n, R * dim)
        assert len(vectors) == len(added), "pending vectors out of step with the id table"
        refresh = sorted(self._stat_refresh.items())
        arrays = {
            **added.arrays(),
            "vectors": vectors,
            "removed": np.concatenate([np.zeros(0, np.int64), *self._removed]),
            "refresh_label": np.array([r[0] for r in refresh], np.int64),
            "refresh_size": np.array([r[1][0] for r in refresh], np.int64),
            "refresh_mtime_ns": np.array([r[1][1] for r in refresh], np.int64),
        }
        generation = self._meta["generation"]
        name = f"delta.{generation:06d}.{len(self._meta['deltas']) + 1:06d}.npz"
        entry = {**self._write_file(name, lambda f: np.savez(f, **arrays)), "rows": len(added)}
        deltas = [*self._meta["deltas"], entry]
        self._commit(generation=generation, files=self._meta["files"], deltas=deltas)
        self._mark_durable()

    def _write_file(self, name: str, write) -> dict:
        """Write one file of the index atomically; its meta.json entry (name, bytes, sha256)."""
        file = os.path.join(self.path, name)
        size = write_atomic(file, write)
        return {"name": name, "bytes": size, "sha256": file_sha256(file)}

    def _delta_rows(self) -> int:
        """Rows that deltas on top of the last generation would hold after the next checkpoint."""
        pending = sum(len(p[0]) for p in self._pending) if self._pending is not None else 0
        return sum(d["rows"] for d in self._meta["deltas"]) + pending

    def _commit(self, generation: int, files: dict, deltas: list[dict]) -> None:
        """Point meta.json at `files` + `deltas` (already written), then delete files it does not name.

        The augmented database stays named only while the labels are the ones it was derived from."""
        if self._derived:
            raise RuntimeError(f"{self.path}: an augmented view of the index is searched, never saved")
        augmented = self._meta.get("augmented")
        if augmented and augmented["labels_sha256"] != self._labels_sha256():
            augmented = None
        meta = {
            **{key: value for key, value in self._meta.items() if key != "augmented"},
            **({"augmented": augmented} if augmented else {}),
            "count": len(self),
            "next_label": self._next_label,
            "updated": _now(),
            "generation": generation,
            "files": files,
            "deltas": deltas,
        }
        fsync_dir(self.path)  # the new files' names are durable before meta.json points at them
        write_atomic(
            os.path.join(self.path, META_NAME),
            lambda f: f.write(json.dumps(meta, indent=2, sort_keys=True).encode("utf-8")),
        )
        fsync_dir(self.path)
        self._meta = meta
        keep = {files["index"]["name"], files["table"]["name"], *(d["name"] for d in deltas),
                *([augmented["name"]] if augmented else [])}
        for name in os.listdir(self.path):
            if _OWN_FILE.match(name) and name not in keep:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self.path, name))


def search_index(
    path: str, queries: np.ndarray, k: int, pipeline_info: dict | None = None, verify: bool = True,
    region_k: int | None = None,
) -> tuple[np.ndarray, list[list[str]]]:
    """Open the index in `path` (checking the pipeline when given) and search it; see `GalleryIndex.open`, `search`."""
    return GalleryIndex.open(path, pipeline_info, verify=verify).search(queries, k, region_k)
