"""File helpers shared by checkpoints, pipelines and indexes.

Content hashes and atomic writes; and reading what a folder from someone else holds: every
JSON and .npz file is checked where it enters (`read_json` + `Record`, `load_npz`), stored
file names are resolved inside their folder only (`name_inside`), nothing is unpickled or
executed. `WriterLock` keeps a second writer off a folder.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import sys
import zipfile
import zlib
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

# A JSON file of ours (meta.json, pipeline.json) is a few kB; anything this large is not one.
MAX_JSON_BYTES = 64 * 2**20


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> int:
    """Write `path` through a fsynced temporary in the same directory and `os.replace`; return its size.

    A reader sees the old file or the new one, never a partial one, even if the writer is killed.
    """
    head, name = os.path.split(os.fspath(path))
    tmp = os.path.join(head, f".{name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    return os.path.getsize(path)


def file_digest_matches(path: str | os.PathLike, expected: str, recorded_in: str | os.PathLike) -> None:
    """Raise StoredFileError unless the sha256 of `path` is `expected` (as recorded in `recorded_in`)."""
    try:
        actual = file_sha256(path)
    except FileNotFoundError as e:
        raise StoredFileError(path, f"missing, but {recorded_in} names it") from e
    if actual != expected:
        raise StoredFileError(
            path, f"sha256 {actual}, but {recorded_in} recorded {expected}: the file is damaged or was "
            "changed after it was written")


# --------------------------------------------------------------------------------------------------------------
# Reading folders that others may have written


class FileError(ValueError):
    """A file that cannot be used; `path` names it, `reason` says why (picklable across processes)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        return type(self), (self.path, self.reason)


class StoredFileError(FileError):
    """A file in a folder that is missing, damaged, tampered with or not what its reader expects.

    The message names the file, and where it applies the field, the value found and what was expected.
    """


def read_json(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES) -> Record:
    """A JSON object file as a `Record`; a missing, oversized, non-UTF-8 or non-JSON file, or one
    that holds anything but an object, is a StoredFileError naming it."""
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise StoredFileError(path, f"{size:,} bytes; a tmrjax JSON file is at most {max_bytes:,}")
        text = Path(path).read_bytes().decode("utf-8")
        doc = json.loads(text)
    except FileNotFoundError as e:
        raise StoredFileError(path, "file not found") from e
    except OSError as e:
        raise StoredFileError(path, f"cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise StoredFileError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise StoredFileError(path, f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise StoredFileError(path, "JSON nested too deeply") from None
    return Record(doc, path)


class Record:
    """A JSON object read from a file, whose fields are taken with their expected type and range.

    Every accessor raises StoredFileError naming the file, the field's dotted path, the value
    found and what was expected, so a damaged or hand-edited file fails where it enters.
    """

    def __init__(self, doc: Any, path: str | os.PathLike, where: str = ""):
        self.path, self.where = os.fspath(path), where
        if not isinstance(doc, dict):
            self.fail(doc, "a JSON object")
        self.doc: dict = doc

    def _field(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, value: Any, expected: str, key: str | None = None) -> None:
        name = self._field(key) if key is not None else (self.where or "top level")
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise StoredFileError(self.path, f"field {name!r} is {shown} ({type(value).__name__}), expected {expected}")

    def get(self, key: str, default: Any = None) -> Any:
        return self.doc.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.doc

    def value(self, key: str) -> Any:
        if key not in self.doc:
            raise StoredFileError(self.path, f"field {self._field(key)!r} is missing")
        return self.doc[key]

    def str(self, key: str, pattern: str | None = None, choices: tuple[str, ...] | None = None) -> str:
        value = self.value(key)
        if not isinstance(value, str):
            self.fail(value, "a string", key)
        if pattern is not None and not re.fullmatch(pattern, value):
            self.fail(value, f"a string matching {pattern}", key)
        if choices is not None and value not in choices:
            self.fail(value, f"one of {list(choices)}", key)
        return value

    def int(self, key: str, low: int = 0, high: int = 2**62) -> int:
        value = self.value(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(value, f"an integer in [{low}, {high}]", key)
        return value

    def record(self, key: str) -> Record:
        value = self.value(key)
        if not isinstance(value, dict):
            self.fail(value, "a JSON object", key)
        return Record(value, self.path, self._field(key))

    def records(self, key: str, max_items: int = 1_000_000) -> list[Record]:
        value = self.value(key)
        if not isinstance(value, list) or len(value) > max_items:
            self.fail(value, f"a list of at most {max_items:,} objects", key)
        return [Record(item, self.path, f"{self._field(key)}[{i}]") for i, item in enumerate(value)]


def load_npz(
    path: str | os.PathLike, schema: Mapping[str, tuple[str, int]], optional: Collection[str] = ()
) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, fully read and checked; never unpickled.

    `schema` maps each array to (dtype kinds, ndim), e.g. ``{"label": ("iu", 1)}``; all are
    required but those in `optional`. A missing or unknown array, a damaged file (bad zip, bad
    CRC, truncated) or an array of another dtype or rank is a StoredFileError naming the file.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            missing, extra = sorted(set(schema) - names - set(optional)), sorted(names - set(schema))
            if missing or extra:
                raise StoredFileError(
                    path, f"holds arrays {sorted(names)}, expected {sorted(schema)}"
                    + (f" (missing {missing})" if missing else "") + (f" (unknown {extra})" if extra else ""))
            arrays = {name: np.asarray(z[name]) for name in schema if name in names}
    except StoredFileError:
        raise
    except FileNotFoundError as e:
        raise StoredFileError(path, "file not found") from e
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError, OSError) as e:
        raise StoredFileError(path, f"damaged or not an .npz archive ({type(e).__name__}: {e})") from None
    for name, a in arrays.items():
        kinds, ndim = schema[name]
        if a.dtype.kind not in kinds or a.ndim != ndim:
            raise StoredFileError(
                path, f"array {name!r} is {a.dtype} with {a.ndim} dims, expected {ndim} dims of kind {kinds!r}")
    return arrays


def name_inside(folder: str | os.PathLike, name: str, pattern: str, recorded_in: str | os.PathLike) -> Path:
    """`folder/name` for a file name stored in `recorded_in`; refused unless `name` fully matches
    `pattern` (a plain name: no separator, no '..') and the file resolves inside `folder`."""
    if not isinstance(name, str) or not re.fullmatch(pattern, name) or "/" in name or "\\" in name or ".." in name:
        raise StoredFileError(recorded_in, f"file name {name!r} is not a name of this folder's files ({pattern})")
    path = Path(folder) / name
    real, top = os.path.realpath(path), os.path.realpath(folder)
    if os.path.commonpath([real, top]) != top:
        raise StoredFileError(recorded_in, f"file {name!r} resolves to {real}, outside {top}")
    return path


# --------------------------------------------------------------------------------------------------------------
# One writer per folder


class FolderLockedError(RuntimeError):
    """Another process holds the writer lock of a folder; the message names it."""


class WriterLock:
    """An exclusive, advisory lock for writing a folder, held by one process at a time.

    The lock is `fcntl.flock` on ``.<name>.lock`` beside the folder (beside, not inside: a rebuild
    replaces the folder itself). The kernel releases it when the holder exits, even by kill -9;
    the file keeps the last holder's pid, host, command and start time for the message a second
    writer gets. Readers take no lock: every write is atomic (`write_atomic`, commit by meta.json).
    """

    def __init__(self, folder: str | os.PathLike):
        folder = Path(folder).absolute()
        self.folder = folder
        self.path = folder.with_name(f".{folder.name}.lock")
        self._fd: int | None = None

    def __enter__(self) -> WriterLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = ""
            with contextlib.suppress(OSError):
                holder = self.path.read_text(encoding="utf-8", errors="replace").strip()
            raise FolderLockedError(
                f"{self.folder}: another tmrjax process is writing it ({holder or 'holder unknown'}; lock "
                f"{self.path}); wait for it to finish, or write to another folder") from None
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {now}: {' '.join(sys.argv)[:300]}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode("utf-8", "replace") + b"\n", 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def allowed_global(module: str, name: str, allowed: Mapping[str, Any]) -> tuple[str, Any | None]:
    """For a restricted `pickle.Unpickler.find_class`: the global's Python 3 qualified name (protocol 2
    names Python 2's modules, ``__builtin__.list``) and the object `allowed` maps it to, or None (the
    caller refuses it, naming the file)."""
    import _compat_pickle

    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    qualified = f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"
    return qualified, allowed.get(qualified)
