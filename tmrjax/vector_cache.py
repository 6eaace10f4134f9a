"""Vectors already computed, kept across commands: `tmrjax index` over marks that `tmrjax eval` just
embedded embeds nothing.

A vector is stored under (the pipeline's ``vectors_hash``, the image's `pixels_key`): the hash
covers the config, the fitted artefacts and the backbone weights, the key the decoded pixels, and
a vector is a function of those two only. A PNG re-encoded from the same pixels, a copy under
another name, or a tfds record and its exported file all hit the same entry.

Layout, under ``$TMRJAX_CACHE/vectors`` (default ``~/.cache/tmrjax/vectors``)::

    <vectors_hash>/<chunk>.vectors.npy   (n, *vector_shape) float32
    <vectors_hash>/<chunk>.keys.npy      (n,) the pixels keys, written last: the chunk's commit point

Each chunk is written once through a temporary file and a rename, under a fresh name, so runs
that write the same pipeline's vectors at the same time, or that are killed, never leave a
partial chunk; a chunk whose keys file is missing is not read. ``TMRJAX_CACHE=off`` turns the
cache (and the compilation cache) off.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .fileio import write_atomic

CACHE_ENV = "TMRJAX_CACHE"
CACHE_OFF = "off"
FLUSH_ROWS = 4096  # an interrupted run loses at most this many vectors per pipeline


def user_cache_dir() -> Path | None:
    """``$TMRJAX_CACHE`` (default ``~/.cache/tmrjax``); None when it is ``off``."""
    value = os.environ.get(CACHE_ENV, "~/.cache/tmrjax")
    return None if value == CACHE_OFF else Path(value).expanduser()


class PipelineVectors:
    """The cached vectors of one pipeline (one ``vectors_hash``): look up by pixels keys, add new ones."""

    def __init__(self, folder: Path, vector_shape: tuple[int, ...]):
        self.folder = folder
        self.vector_shape = tuple(vector_shape)
        self._where: dict[str, tuple[int, int]] = {}  # key -> (chunk number, row)
        self._chunks: list[Path] = []
        self._arrays: dict[int, np.ndarray] = {}
        self._pending: dict[str, np.ndarray] = {}  # added since the last flush, in order
        for keys_file in sorted(folder.glob("*.keys.npy")):
            chunk = Path(str(keys_file)[: -len(".keys.npy")])
            try:
                keys = np.load(keys_file)
            except (OSError, ValueError):
                continue  # unreadable chunk: its vectors are computed again
            self._chunks.append(chunk)
            for row, key in enumerate(keys.tolist()):
                self._where.setdefault(key, (len(self._chunks) - 1, row))

    def __len__(self) -> int:
        return len(self._where) + len(self._pending)

    def _chunk(self, number: int) -> np.ndarray:
        if number not in self._arrays:
            self._arrays[number] = np.load(f"{self._chunks[number]}.vectors.npy", mmap_mode="r")
        return self._arrays[number]

    def _vector(self, key: str) -> np.ndarray | None:
        # One read of each dict: `flush` replaces `_pending` (after adding its keys to `_where`) rather
        # than emptying it, so a load worker asking here while the main thread flushes finds the key.
        vector = self._pending.get(key)
        if vector is not None:
            return vector
        where = self._where.get(key)
        if where is None:
            return None
        vector = self._chunk(where[0])[where[1]]
        return vector if vector.shape == self.vector_shape else None

    def get(self, keys: Sequence[str]) -> np.ndarray | None:
        """(len(keys), *vector_shape) float32 when every key is cached, else None."""
        found, vectors = self.lookup(keys)
        return vectors if found.all() else None

    def lookup(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(found (len(keys),) bool, the vectors of the keys found (found.sum(), *vector_shape) float32)."""
        vectors = [self._vector(key) for key in keys]
        found = np.array([v is not None for v in vectors], bool)
        return found, np.array([v for v in vectors if v is not None], np.float32).reshape(-1, *self.vector_shape)

    def has(self, key: str) -> bool:
        """Whether `key`'s vector is cached. Safe from other threads while this one adds vectors: a key,
        once added, stays (pending until `flush`, then in a chunk)."""
        return self._vector(key) is not None

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Add (len(keys), *vector_shape) vectors; written to disk every FLUSH_ROWS rows and by `flush`."""
        for key, vector in zip(keys, vectors):
            if key not in self._where and key not in self._pending:
                self._pending[key] = np.asarray(vector, np.float32)
        if len(self._pending) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        """Write the vectors added since the last flush as one chunk."""
        if not self._pending:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        chunk = self.folder / secrets.token_hex(8)
        keys = list(self._pending)
        vectors = np.stack(list(self._pending.values()))
        write_atomic(f"{chunk}.vectors.npy", lambda f: np.save(f, vectors))
        write_atomic(f"{chunk}.keys.npy", lambda f: np.save(f, np.array(keys)))
        self._chunks.append(chunk)
        for row, key in enumerate(keys):
            self._where[key] = (len(self._chunks) - 1, row)
        self._arrays[len(self._chunks) - 1] = vectors
        self._pending = {}


class VectorCache:
    """Cached vectors of every pipeline, one folder per ``vectors_hash`` under `root`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._open: dict[str, PipelineVectors] = {}

    @classmethod
    def user(cls) -> VectorCache | None:
        """The user's cache (`user_cache_dir` / vectors); None when the cache is off."""
        root = user_cache_dir()
        return None if root is None else cls(root / "vectors")

    def of(self, vectors_hash: str, vector_shape: tuple[int, ...]) -> PipelineVectors:
        """The cached vectors of the pipeline with this ``vectors_hash``."""
        if vectors_hash not in self._open:
            self._open[vectors_hash] = PipelineVectors(self.root / vectors_hash, vector_shape)
        return self._open[vectors_hash]

    def flush(self) -> None:
        for store in self._open.values():
            store.flush()
