"""Image loading, padding to square, folder listing and fixed-shape batches.

Every image entering tmrjax comes through `load_image` (files) or `as_rgb` (in-memory inputs) and leaves
as uint8 (H, W, 3) RGB on white. Trademarks are kept whole: images are padded with white to a square and
resized, never cropped (Tursun et al. 2019, Sec. 4.1). A file that cannot be read raises `ImageError` naming
the file and the reason; `data.sources.iter_batches` records it in a `FailureLog` and goes on with the rest,
as `list_images` does with an entry or folder it cannot read.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import stat
import struct
import sys
import threading
import warnings
import zlib
from collections.abc import Iterable, Iterator
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..fileio import FileError
from .salient_points import N_MAX

# PIL's own default (Image.MAX_IMAGE_PIXELS), ~ 9459 x 9459.
DEFAULT_MAX_PIXELS = 89_478_485

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})
"""Lower-case suffixes `list_images` picks up; matched case-insensitively."""

# Exceptions PIL raises for malformed data; anything else is a bug, not a bad file, and is not renamed.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error, zlib.error)

# EXIF orientation tag (0x0112) -> the transpose that shows the image upright (as PIL.ImageOps.exif_transpose).
_ORIENTATION_TAG = 0x0112
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Warning filters are process-global and not thread-safe; loader threads take turns while they are changed.
_OPEN_LOCK = threading.Lock()


class ImageError(FileError):
    """An input image that cannot be used; `path` names it, `reason` says why."""


# --------------------------------------------------------------------------------------------------------------
# Decoding


def load_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file fully and return it upright as uint8 (H, W, 3) RGB, transparency on white.

    Images whose header declares more than `max_pixels` pixels are refused before decoding. PIL's own
    limit (`PIL.Image.MAX_IMAGE_PIXELS`, twice of which is a hard error) still applies on top of it.
    Raises ImageError for a missing, unreadable, empty, non-image, corrupt, truncated or oversized file.
    """
    name = os.fspath(path)
    try:
        st = os.stat(name)
    except FileNotFoundError:
        raise ImageError(name, "broken symbolic link" if os.path.islink(name) else "file not found") from None
    except PermissionError:
        raise ImageError(name, "permission denied") from None
    except OSError as e:
        raise ImageError(name, f"cannot stat file ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(name, "is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(name, "not a regular file")
    if st.st_size == 0:
        raise ImageError(name, "empty file (0 bytes)")
    try:
        f = open(name, "rb")  # noqa: SIM115 -- closed by the `with f:` below, after the error mapping
    except PermissionError:
        raise ImageError(name, "permission denied") from None
    except OSError as e:
        raise ImageError(name, f"cannot open file ({e.strerror or e})") from None
    with f:
        img = _open(f, name, st.st_size)
        return _decode(img, name, max_pixels)


def _open(f: IO[bytes], name: str, n_bytes: int) -> Image.Image:
    """Parse the header only; PIL's decompression-bomb warning is left to our own `max_pixels` check."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(f)
    except UnidentifiedImageError:
        raise ImageError(name, f"not an image, or a format PIL cannot read ({n_bytes} bytes)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(name, f"refused as a possible decompression bomb: {e}") from None
    except _DECODE_ERRORS as e:
        raise ImageError(name, f"corrupt image header: {e}") from None


def _decode(img: Image.Image, name: str, max_pixels: int | None) -> np.ndarray:
    """Check the declared size, decode every pixel, turn upright and convert to RGB on white."""
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(
            name, f"{w}x{h} = {w * h:,} pixels exceeds max_pixels={max_pixels:,} (possible decompression bomb)"
        )
    try:
        img.load()  # full decode: truncated data raises here (ImageFile.LOAD_TRUNCATED_IMAGES is left False)
    except Image.DecompressionBombError as e:
        raise ImageError(name, f"refused as a possible decompression bomb: {e}") from None
    except _DECODE_ERRORS as e:
        raise ImageError(name, f"corrupt or truncated {img.format or 'image'} data: {e}") from None
    try:
        rgb = _to_rgb(img)
    except _DECODE_ERRORS as e:
        raise ImageError(name, f"cannot convert colour mode {img.mode!r} to RGB: {e}") from None
    transpose = _ORIENTATION.get(_orientation(img))
    if transpose is not None:
        rgb = np.array(Image.fromarray(rgb).transpose(transpose), dtype=np.uint8)
    return rgb


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 -- a garbled EXIF block says nothing about the pixels, which decoded fine
        return 1


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 (H, W, 3): high-bit grey rescaled, alpha and transparency composited on white."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        grey = _rescale_to_uint8(np.asarray(img))
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.has_transparency_data:
        return _over_white(np.asarray(img.convert("RGBA")))
    return np.array(img.convert("RGB"), dtype=np.uint8)


def _rescale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map the image's own value range [min, max] linearly onto [0, 255] (PIL's convert would clip at 255).

    A constant image carries no contrast: it becomes black if its value is <= 0, else white. Non-finite
    values (float images) are treated as the minimum.
    """
    v = values.astype(np.float64)
    finite = np.isfinite(v)
    if not finite.any():
        return np.zeros(v.shape, np.uint8)
    lo, hi = v[finite].min(), v[finite].max()
    if hi == lo:
        return np.full(v.shape, 255 if lo > 0 else 0, np.uint8)
    v = np.where(finite, v, lo)
    return np.rint((v - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """Composite straight-alpha RGBA over white, rounding to nearest: out = (c * a + 255 * (255 - a)) / 255."""
    c = rgba[..., :3].astype(np.uint32)
    a = rgba[..., 3:].astype(np.uint32)
    return ((c * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------
# Geometry


def pad_to_square(img: np.ndarray, fill: int = 255) -> np.ndarray:
    """Pad an (H, W, ...) image with `fill` to (S, S, ...), S = max(H, W), keeping it centred.

    When the difference is odd the extra row/column goes after the image (bottom/right).
    """
    if img.ndim < 2:
        raise ValueError(f"pad_to_square expects an (H, W, ...) image, got shape {img.shape}")
    h, w = img.shape[:2]
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    pad = [(top, s - h - top), (left, s - w - left)] + [(0, 0)] * (img.ndim - 2)
    return np.pad(img, pad, mode="constant", constant_values=fill)


def prepare(img: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (size, size, 3): pad to square with white, then PIL bicubic (antialiased) resize."""
    return prepare_multi(img, (size,))[0]


def prepare_multi(img: np.ndarray, sizes: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """`prepare` at several sizes at once (multi-scale descriptors), padding only once."""
    if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3):
        shape, dtype = getattr(img, "shape", None), getattr(img, "dtype", type(img).__name__)
        raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got shape {shape} dtype {dtype}")
    if 0 in img.shape:
        raise ValueError(f"expected a non-empty image, got shape {img.shape}")
    check_sizes(sizes)
    square = pad_to_square(img)
    pil = Image.fromarray(square)
    out = []
    for s in sizes:
        if s == square.shape[0]:
            out.append(square.copy())
        else:
            out.append(np.array(pil.resize((int(s), int(s)), Image.Resampling.BICUBIC), dtype=np.uint8))
    return tuple(out)


def check_sizes(sizes: tuple[int, ...]) -> None:
    positive = all(isinstance(s, (int, np.integer)) and s > 0 for s in sizes) if isinstance(sizes, tuple) else False
    if not sizes or not positive:
        raise ValueError(f"sizes must be a non-empty tuple of positive ints, got {sizes!r}")


# --------------------------------------------------------------------------------------------------------------
# Files


def list_images(root: str | os.PathLike, failures: FailureLog | None = None) -> list[str]:
    """All image files under `root` (by suffix, see IMAGE_EXTENSIONS), as sorted relative POSIX paths.

    Hidden files and folders (name starting with '.') are skipped. Symbolic links are followed, but each
    real directory is visited once, so links back up the tree end and linked copies are not listed twice.
    A broken link with an image suffix is listed, so that loading reports it rather than it vanishing silently.
    An entry or subfolder that cannot be read (a symbolic link loop, permission denied, any other OSError) is
    left out and the walk goes on: it is recorded in `failures` by relative path, or, without one, named in a
    warning. Raises FileNotFoundError, NotADirectoryError or OSError when `root` itself cannot be listed.
    """
    top = os.fspath(root)
    if not os.path.exists(top):
        raise FileNotFoundError(f"{top}: image folder does not exist")
    if not os.path.isdir(top):
        raise NotADirectoryError(f"{top}: not a directory")

    def skip(rel: str, reason: str) -> None:
        if failures is None:
            warnings.warn(f"{os.path.join(top, rel)}: {reason}; skipped", stacklevel=3)
        else:
            failures.add(rel, reason)

    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[str, str]] = [(top, "")]
    while stack:
        directory, rel = stack.pop()
        try:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            if not rel:
                raise type(e)(f"{top}: image folder {_unreadable(e)}") from e
            skip(rel, f"folder {_unreadable(e)}; its files are skipped")
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child = f"{rel}/{entry.name}" if rel else entry.name
            try:
                if entry.is_dir(follow_symlinks=True):
                    subdirs.append((entry.path, child))
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and (
                    entry.is_file(follow_symlinks=True) or entry.is_symlink()
                ):
                    found.append(child)
            except OSError as e:
                skip(child, _unreadable(e))
        stack.extend(reversed(subdirs))
    return sorted(found)


def _unreadable(e: OSError) -> str:
    """Why a folder or an entry in one cannot be read, in words."""
    if e.errno == errno.ELOOP:
        return f"symbolic link loop ({e.strerror})"
    return f"cannot be read ({'permission denied' if isinstance(e, PermissionError) else e.strerror or e})"


# --------------------------------------------------------------------------------------------------------------
# Batching


@dataclasses.dataclass(frozen=True)
class Batch:
    """A fixed-shape batch: row i < len(ids) is image `ids[i]`; the rest are white padding with valid False.

    images[k] is uint8 (batch_size, sizes[k], sizes[k], 3); valid is bool (batch_size,); keys[i] is
    `pixels_key` of image i as decoded (what its vectors are a function of, with the pipeline).
    points[size], for the sizes asked for (`point_sizes`), is the salient points detected in images[k]
    of that size (`salient_points.padded_points`): (positions (batch_size, P, 2) float32, valid
    (batch_size, P) bool); padding rows have none.
    """

    ids: list[str]
    keys: list[str]
    images: tuple[np.ndarray, ...]
    valid: np.ndarray
    points: dict[int, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)


def pixels_key(img: np.ndarray) -> str:
    """sha256 (hex) of a decoded uint8 image's shape and pixels: equal keys, equal input to every pipeline,
    whatever file format, metadata or path the pixels came from."""
    h = hashlib.sha256(f"{img.dtype.name}:{img.shape};".encode())
    h.update(np.ascontiguousarray(img).data)
    return h.hexdigest()


@dataclasses.dataclass
class FailureLog:
    """The (path, reason) of every file or folder skipped while listing or streaming, in the order met."""

    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def add(self, path: str, reason: str) -> None:
        self.failures.append((path, reason))

    def __len__(self) -> int:
        return len(self.failures)

    def summary(self) -> str:
        """'N files skipped:' followed by one 'path: reason' line per file."""
        lines = [f"{len(self.failures)} files skipped" + (":" if self.failures else ".")]
        lines += [f"  {path}: {reason}" for path, reason in self.failures]
        return "\n".join(lines)

    def print_summary(self, file: IO[str] | None = None) -> None:
        print(self.summary(), file=sys.stderr if file is None else file)

    def write_json(self, path: str | os.PathLike) -> None:
        """Write {"skipped": N, "failures": [{"path": ..., "reason": ...}, ...]}."""
        doc = {"skipped": len(self.failures), "failures": [{"path": p, "reason": r} for p, r in self.failures]}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, ensure_ascii=False)
            f.write("\n")


def as_rgb(x: np.ndarray | Image.Image | str | os.PathLike, index: int) -> np.ndarray:
    """An in-memory input (a uint8 (H, W), (H, W, 3) or (H, W, 4) array, uint16/int32/float32 (H, W)
    rescaled; a PIL image; a file path) as uint8 (H, W, 3), converted as files are; a bad input
    raises ImageError naming it ``images[index]``."""
    if isinstance(x, (str, os.PathLike)):
        return load_image(x)
    name = f"images[{index}]"
    if isinstance(x, np.ndarray):
        if x.ndim == 3 and x.shape[2] == 1:
            x = x[:, :, 0]
        try:
            pil = Image.fromarray(x)
        except (TypeError, ValueError, KeyError) as e:
            raise ImageError(name, f"unsupported array of shape {x.shape} dtype {x.dtype} ({e})") from None
        return _decode(pil, name, None)
    if isinstance(x, Image.Image):
        return _decode(x, name, None)
    raise ImageError(name, f"expected a numpy array, PIL image or file path, got {type(x).__name__}")


def assemble_batches(
    items: Iterable[tuple[str, str, tuple[np.ndarray, ...], tuple[tuple[np.ndarray, np.ndarray], ...]]],
    sizes, batch_size, point_sizes: tuple[int, ...] = (),
) -> Iterator[Batch]:
    """Pack (id, pixels key, per-size arrays, per-point-size (positions (P, 2), valid (P,))) into Batches
    of exactly batch_size rows, padding the last with white images without points."""

    def empty():
        images = tuple(np.full((batch_size, s, s, 3), 255, np.uint8) for s in sizes)
        return [], [], images, {s: (np.zeros((batch_size, N_MAX, 2), np.float32), np.zeros((batch_size, N_MAX), bool))
                                for s in point_sizes}

    def batch(ids, keys, arrays, points):
        return Batch(ids, keys, arrays, np.arange(batch_size) < len(ids), points)

    ids, keys, arrays, points = empty()
    for id_, key, prepared, detected in items:
        for array, image in zip(arrays, prepared):
            array[len(ids)] = image
        for (positions, valid), (found, found_valid) in zip(points.values(), detected):
            positions[len(ids)], valid[len(ids)] = found, found_valid
        ids.append(id_)
        keys.append(key)
        if len(ids) == batch_size:
            yield batch(ids, keys, arrays, points)
            ids, keys, arrays, points = empty()
    if ids:
        yield batch(ids, keys, arrays, points)


def check_positive(**values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
