"""Official ImageNet checkpoint files and a checked download for users who are online."""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from ..weights import WeightsError


@dataclasses.dataclass(frozen=True)
class OfficialFile:
    """A publisher's checkpoint: where it lives and the digest it must have.

    `digest` is checked as a prefix of the file's `hash_name` hex digest (torchvision puts the
    first 8 sha256 hex digits in the file name; Keras publishes full md5 digests).
    """

    url: str
    hash_name: str  # "sha256" or "md5"
    digest: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def verify(self, path: str | os.PathLike) -> None:
        h = hashlib.new(self.hash_name)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if not h.hexdigest().startswith(self.digest):
            raise WeightsError(
                f"{path}: {self.hash_name} {h.hexdigest()} does not match the published "
                f"{self.digest} of {self.url}; the file is corrupt or not the official one"
            )


def fetch(official: OfficialFile, dest_dir: str | os.PathLike, timeout: float = 30.0) -> Path:
    """Download `official` into `dest_dir` (kept if already there and valid), checking its digest."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / official.filename
    if dest.is_file():
        try:
            official.verify(dest)
        except WeightsError as e:
            raise WeightsError(f"{e}. Delete {dest} and run the command again.") from None
        return dest
    part = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(official.url, timeout=timeout) as response, open(part, "wb") as f:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                f.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as e:
        part.unlink(missing_ok=True)
        raise WeightsError(
            f"cannot download {official.url} ({e}). Offline? Download it on a connected machine, "
            f"place it at {dest}, and run the same command with --input {dest} instead of --download."
        ) from e
    try:
        official.verify(part)
    except WeightsError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest
