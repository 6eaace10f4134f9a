"""`revisited_landmarks`: the Revisited Oxford5k and Paris6k retrieval benchmarks as a tfds dataset, from the
official files placed in the manual_dir (nothing is downloaded).

What the benchmarks are (Radenovic et al. 2018, "Revisiting Oxford and Paris", CVPR; the revisitop code,
github.com/filipradenovic/revisitop):

- The images are those of Oxford Buildings (Philbin et al. 2007) and Paris (Philbin et al. 2008), published by
  the Oxford VGG group as `oxbuild_images-v1.tgz` and `paris_1-v1.tgz` + `paris_2-v1.tgz` (revisitop's
  python/download.py). The revisited ground truth `gnd_roxford5k.pkl` / `gnd_rparis6k.pkl` (revisitop's
  python/dataset.py) is a pickled dict: `imlist` (database image names without `.jpg`), `qimlist` (query image
  names) and `gnd`, one dict per query: `bbx` (x1, y1, x2, y2 in the query image's pixels), `easy`, `hard` and
  `junk` (indices into `imlist`). The paper counts 4,993 database images for ROxford5k and 6,322 for RParis6k,
  70 queries each; the query images are not in the database.
- Protocol: a query image is cropped to its `bbx` before any processing (example_process_images.py:
  `pil_loader(path).crop(bbx)`), and the database is searched; Easy / Medium / Hard mAP are `tmrjax.revisited`.

Two configs, `roxford5k` and `rparis6k`; two splits, in the official order (shuffling is disabled, so record i of
`database` is `imlist[i]` and record i of `queries` is `gnd[i]`):

- `database`: every image of `imlist`; `id` = `image_id` = its name, `index` its position in `imlist`, `bbx`
  the whole image (0, 0, W, H) and empty `easy` / `hard` / `junk`;
- `queries`: `id` = `query_<index>` (three digits), `image_id` the full image's name in `qimlist`, `index` the
  position in `qimlist`, `image` the query CROPPED to `bbx` (the file's exact values), `bbx` as published (in
  float32), and `easy` / `hard` / `junk` (int32 database indices).

`image` is uint8 (H, W, 3) PNG, decoded by `tmrjax.data.images.load_image` (EXIF orientation turns an image
upright; a query's box is applied in the file's stored pixel grid, as the official loader sees it, and the crop
is then turned upright with its image). A file that fails to decode stops the build with its name: skipping one
would shift every database index after it.

The ground-truth pickle is read by an unpickler that knows only the globals such a file is made of (builtin
containers and numpy arrays) and refuses any other by name, so the file cannot run code; its structure is then
checked field by field.

Check what the manual_dir holds, read records without tfds, or build and read back (tfds without TensorFlow):

    files = find_revisited("roxford5k", M)                     # names the missing files, if any
    records = read_records(files, "queries")                   # the builder's records, image as an array
    RevisitedLandmarks(config="roxford5k", data_dir=D).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=M))
    tfds.data_source("revisited_landmarks/roxford5k", split="queries", data_dir=D)  # after importing this module
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import hashlib
import io
import logging
import math
import os
import pathlib
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from tmrjax.data.images import list_images, load_image
from tmrjax.data.metu_trademark import extract_archive
from tmrjax.data.pool import ordered_map
from tmrjax.fileio import FileError, allowed_global

try:  # numpy >= 2 pickles arrays through numpy._core, older numpy through numpy.core (an alias in numpy 2)
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover -- numpy < 2
    from numpy.core import multiarray as _multiarray

log = logging.getLogger(__name__)

REVISITOP_URL = "http://cmp.felk.cvut.cz/revisitop/"
SPLITS = ("database", "queries")
GND_FIELDS = ("bbx", "easy", "hard", "junk")


@dataclasses.dataclass(frozen=True)
class RevisitedSpec:
    """What one benchmark needs in the manual_dir, and where each file is published."""

    name: str
    title: str
    archives: tuple[str, ...]  # the image tarballs as published now (revisitop's download.py)
    old_archives: tuple[str, ...]  # the same tarballs under their earlier names (before "-v1")
    images_url: str
    num_database: int  # the paper's counts, for the description; the files decide
    num_queries: int

    @property
    def gnd_file(self) -> str:
        return f"gnd_{self.name}.pkl"

    @property
    def gnd_url(self) -> str:
        return f"{REVISITOP_URL}data/datasets/{self.name}/{self.gnd_file}"


DATASETS: dict[str, RevisitedSpec] = {
    "roxford5k": RevisitedSpec(
        "roxford5k", "Revisited Oxford5k", ("oxbuild_images-v1.tgz",), ("oxbuild_images.tgz",),
        "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/", num_database=4993, num_queries=70,
    ),
    "rparis6k": RevisitedSpec(
        "rparis6k", "Revisited Paris6k", ("paris_1-v1.tgz", "paris_2-v1.tgz"), ("paris_1.tgz", "paris_2.tgz"),
        "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/", num_database=6322, num_queries=70,
    ),
}


def get_spec(name: str) -> RevisitedSpec:
    if name not in DATASETS:
        raise ValueError(f"revisited_landmarks: unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name]


# --------------------------------------------------------------------------------------------------------------
# The ground-truth pickle, read without trusting it


class GroundTruthError(FileError):
    """A ground-truth file that cannot be used: unsafe, damaged, or not the structure revisitop publishes."""


_SAFE_GLOBALS: dict[str, Any] = {
    **{f"builtins.{t.__name__}": t for t in (dict, list, str, int, float, tuple)},
    **{f"{m}._reconstruct": _multiarray._reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{f"{m}.scalar": _multiarray.scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    "numpy.ndarray": np.ndarray,
    "numpy.dtype": np.dtype,
    "_codecs.encode": codecs.encode,  # protocol 2 writes an array's raw bytes as _codecs.encode(str, "latin1")
}


class _GroundTruthUnpickler(pickle.Unpickler):
    """Unpickles builtin containers and numpy arrays only; refuses every other global by name."""

    def __init__(self, file: io.BufferedIOBase, path: pathlib.Path):
        super().__init__(file, encoding="latin1")  # latin1: numpy arrays pickled by Python 2 keep their bytes
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        qualified, found = allowed_global(module, name, _SAFE_GLOBALS)
        if found is not None:
            return found
        raise GroundTruthError(
            self.path,
            f"refuses to unpickle the global {qualified}: a revisitop ground-truth file holds only dicts, lists, "
            f"strings, numbers and numpy arrays, so this file is not one (or was tampered with); take the "
            f"official file from {REVISITOP_URL}",
        )


@dataclasses.dataclass(frozen=True)
class GroundTruth:
    """A checked ground-truth file: `gnd[i]` is a dict with `bbx` (float64 (4,): x1, y1, x2, y2) and `easy`,
    `hard`, `junk` (int64 1-D indices into `imlist`), as revisitop's `cfg['gnd']`."""

    path: pathlib.Path
    imlist: list[str]
    qimlist: list[str]
    gnd: list[dict[str, np.ndarray]]


def load_ground_truth(path: str | os.PathLike) -> GroundTruth:
    """Read `gnd_<dataset>.pkl` safely and check its structure.

    Raises GroundTruthError naming the file: for a global other than those of builtin containers and numpy
    arrays (the file could run code), for a damaged pickle, and for a missing or malformed field (named as
    `gnd[3]['junk']`: its value and what was expected).
    """
    path = pathlib.Path(path)
    try:
        with path.open("rb") as f:
            obj = _GroundTruthUnpickler(f, path).load()
    except GroundTruthError:
        raise
    except OSError as e:
        raise GroundTruthError(path, f"cannot read the ground-truth file ({e.strerror or e})") from e
    except Exception as e:  # unpickling damaged bytes raises many kinds of error
        raise GroundTruthError(
            path, f"cannot unpickle ({type(e).__name__}: {e}); the file is truncated or not a pickle"
        ) from e
    return _check_ground_truth(obj, path)


def _check_ground_truth(obj: Any, path: pathlib.Path) -> GroundTruth:
    if not isinstance(obj, dict):
        raise GroundTruthError(path, f"holds a {type(obj).__name__}, expected a dict with imlist, qimlist and gnd")
    missing = [k for k in ("imlist", "qimlist", "gnd") if k not in obj]
    if missing:
        raise GroundTruthError(path, f"lacks the keys {missing}; it has {sorted(map(str, obj))}")
    imlist = _names(obj["imlist"], "imlist", path)
    qimlist = _names(obj["qimlist"], "qimlist", path)
    gnd = obj["gnd"]
    if not isinstance(gnd, (list, tuple)) or len(gnd) != len(qimlist):
        shown = f"{len(gnd)} entries" if isinstance(gnd, (list, tuple)) else f"a {type(gnd).__name__}"
        raise GroundTruthError(path, f"field gnd: expected a list of one dict per query ({len(qimlist)}), got {shown}")
    checked = []
    for i, entry in enumerate(gnd):
        if not isinstance(entry, dict):
            raise GroundTruthError(path, f"field gnd[{i}]: expected a dict, got a {type(entry).__name__}")
        absent = [k for k in GND_FIELDS if k not in entry]
        if absent:
            raise GroundTruthError(path, f"field gnd[{i}]: lacks {absent}; it has {sorted(map(str, entry))}")
        fields = {"bbx": _bbx(entry["bbx"], f"gnd[{i}]['bbx']", path)}
        for key in ("easy", "hard", "junk"):
            fields[key] = _indices(entry[key], f"gnd[{i}][{key!r}]", len(imlist), path)
        checked.append(fields)
    return GroundTruth(path, imlist, qimlist, checked)


def _names(value: Any, field: str, path: pathlib.Path) -> list[str]:
    items = value.tolist() if isinstance(value, np.ndarray) and value.ndim == 1 else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(n, str) and n for n in items):
        raise GroundTruthError(
            path, f"field {field}: expected a non-empty list of image names (str), got {_shown(value)}"
        )
    twice = sorted(n for n, count in collections.Counter(items).items() if count > 1)
    if twice:
        raise GroundTruthError(path, f"field {field}: names listed more than once: {twice[:5]}")
    return list(items)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _bbx(value: Any, field: str, path: pathlib.Path) -> np.ndarray:
    items = value.tolist() if isinstance(value, np.ndarray) else value
    if not isinstance(items, (list, tuple)) or len(items) != 4 or not all(_is_number(x) for x in items):
        raise GroundTruthError(path, f"field {field}: expected 4 numbers x1, y1, x2, y2, got {_shown(value)}")
    box = np.asarray(items, dtype=np.float64)
    if not (np.isfinite(box).all() and box[0] < box[2] and box[1] < box[3]):
        raise GroundTruthError(path, f"field {field}: expected finite x1 < x2 and y1 < y2, got {box.tolist()}")
    return box


def _indices(value: Any, field: str, num_database: int, path: pathlib.Path) -> np.ndarray:
    """Database indices: a list or 1-D array of integers (integral floats too: MATLAB stored them as doubles)."""
    items = value.tolist() if isinstance(value, np.ndarray) and value.ndim <= 1 else value
    if not isinstance(items, (list, tuple)) or not all(_is_number(x) for x in items):
        raise GroundTruthError(path, f"field {field}: expected a list of database indices, got {_shown(value)}")
    if not all(math.isfinite(x) and x == int(x) for x in items):
        raise GroundTruthError(path, f"field {field}: expected integer indices, got {_shown(value)}")
    rows = np.asarray([int(x) for x in items], dtype=np.int64)
    out = rows[(rows < 0) | (rows >= num_database)]
    if out.size:
        raise GroundTruthError(
            path, f"field {field}: indices {out[:5].tolist()} outside the database [0, {num_database}) of imlist"
        )
    return rows


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:80]}{'...' if len(text) > 80 else ''}"


# --------------------------------------------------------------------------------------------------------------
# Finding the files in the manual_dir


@dataclasses.dataclass(frozen=True)
class RevisitedFiles:
    """The ground truth of one benchmark and the file of every image it names (database and queries)."""

    spec: RevisitedSpec
    ground_truth: GroundTruth
    images: dict[str, pathlib.Path]  # image name (without .jpg) -> file

    def __str__(self) -> str:
        gt = self.ground_truth
        return (
            f"{self.spec.title}: {len(gt.imlist):,} database images and {len(gt.qimlist)} queries "
            f"({gt.path}), every image found"
        )


def _instructions(spec: RevisitedSpec) -> str:
    archives = " + ".join(spec.archives)
    return (
        f"{spec.title} needs, in the manual_dir (default <data_dir>/downloads/manual/, or "
        f"DownloadConfig(manual_dir=DIR)):\n"
        f"    {spec.gnd_file}    the revisited ground truth, from {spec.gnd_url} (see {REVISITOP_URL})\n"
        f"    {archives}    the images, from {spec.images_url}\n"
        f"The ground truth may sit at any depth (e.g. revisitop's data/datasets/{spec.name}/{spec.gnd_file}). The "
        f"tarballs go directly in the manual_dir (also accepted under their earlier names "
        f"{' + '.join(spec.old_archives)}), or their .jpg files extracted anywhere under it (e.g. "
        f"data/datasets/{spec.name}/jpg/); tarballs are extracted once, under <download_dir>/extracted/ when "
        f"building, or under `extract_root` when reading with `find_revisited`."
    )


def _jpgs(root: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """{file name without .jpg: its files} for every .jpg under root."""
    found: dict[str, list[pathlib.Path]] = {}
    for rel in list_images(root):
        file = root / rel
        if file.suffix.lower() == ".jpg":
            found.setdefault(file.stem, []).append(file)
    return found


def find_revisited(
    dataset: str, manual_dir: str | os.PathLike, extract_root: str | os.PathLike | None = None
) -> RevisitedFiles:
    """Find `dataset`'s ground truth and every image it names in `manual_dir`: .jpg files at any depth, or inside
    the official tarballs placed directly in it, which are extracted under `extract_root` (once) when the
    folders lack images. The ground truth is read and checked (`load_ground_truth`).

    Raises FileNotFoundError naming the files that are missing, where to put them and where they are published;
    ValueError when the ground truth, or an image, is found more than once.
    """
    spec = get_spec(dataset)
    manual_dir = pathlib.Path(manual_dir).expanduser()
    if not manual_dir.is_dir():
        raise FileNotFoundError(f"revisited_landmarks: manual_dir {manual_dir} does not exist.\n{_instructions(spec)}")
    gnd_files = sorted(manual_dir.rglob(spec.gnd_file))
    archives = [manual_dir / a for a in (*spec.archives, *spec.old_archives) if (manual_dir / a).is_file()]
    if not gnd_files:
        have = [a.name for a in archives] or "none"
        raise FileNotFoundError(
            f"revisited_landmarks/{spec.name}: no {spec.gnd_file} in manual_dir {manual_dir} (image tarballs found: "
            f"{have}).\n{_instructions(spec)}"
        )
    if len(gnd_files) > 1:
        raise ValueError(
            f"revisited_landmarks/{spec.name}: {len(gnd_files)} copies of {spec.gnd_file} in manual_dir {manual_dir}: "
            f"{[str(p) for p in gnd_files]}; keep one"
        )
    gt = load_ground_truth(gnd_files[0])
    wanted = [*gt.imlist, *gt.qimlist]
    found = _jpgs(manual_dir)
    if archives and any(name not in found for name in wanted):
        if extract_root is None:
            raise FileNotFoundError(
                f"revisited_landmarks/{spec.name}: the images are inside {[a.name for a in archives]} in manual_dir "
                f"{manual_dir}; pass extract_root=DIR to extract them there once, or extract them into the manual_dir"
            )
        for archive in archives:
            for name, files in _jpgs(extract_archive(archive, pathlib.Path(extract_root))).items():
                found.setdefault(name, files)  # a file in the manual_dir's folders wins over an archive's
    missing = [name for name in wanted if name not in found]
    if missing:
        raise FileNotFoundError(
            f"revisited_landmarks/{spec.name}: {len(missing)} of the {len(wanted)} images named in {gt.path} are "
            f"not in manual_dir {manual_dir} (as <name>.jpg, at any depth) nor in its tarballs "
            f"{[a.name for a in archives] or 'none found'}: {missing[:10]}{' ...' if len(missing) > 10 else ''}\n"
            f"{_instructions(spec)}"
        )
    twice = {name: files for name in wanted if len(files := found[name]) > 1}
    if twice:
        shown = "; ".join(f"{n}: {[str(f) for f in fs]}" for n, fs in list(twice.items())[:5])
        raise ValueError(
            f"revisited_landmarks/{spec.name}: {len(twice)} images are in manual_dir {manual_dir} more than once "
            f"({shown}); keep one copy of each"
        )
    return RevisitedFiles(spec, gt, {name: found[name][0] for name in wanted})


# --------------------------------------------------------------------------------------------------------------
# Records


def crop_to_bbx(image: np.ndarray, bbx: np.ndarray) -> np.ndarray:
    """The query's box [x1, x2) x [y1, y2) of an (H, W, C) image, the corners rounded as PIL's `Image.crop`
    (the official example's `.crop(bbx)`) and clipped to the image, where PIL would pad with black (revisitop's
    MATLAB crop_qim.m clips too). Raises ValueError when nothing of the box is inside the image."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (round(float(v)) for v in bbx)  # Python's round, as PIL's crop
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if x1 >= x2 or y1 >= y2:
        raise ValueError(f"bbx {np.asarray(bbx).tolist()} holds no pixel of a {w}x{h} image")
    return image[y1:y2, x1:x2]


# EXIF orientation -> the transpose load_image applies, and its inverse (the other five are their own inverse).
_ORIENTATION_TAG = 0x0112
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_INVERSE = {
    Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270, Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90,
}


def _transpose(image: np.ndarray, how: Image.Transpose) -> np.ndarray:
    return np.asarray(Image.fromarray(image).transpose(how))


def _load_query(name: str, path: pathlib.Path, bbx: np.ndarray) -> np.ndarray:
    """load_image's pixels of the query's box, the box taken in the file's stored pixel grid (before the EXIF
    orientation that load_image applies), as the official PIL loader sees the file."""
    image = load_image(path)
    with Image.open(path) as img:
        try:
            upright = _UPRIGHT.get(int(img.getexif().get(_ORIENTATION_TAG, 1)))
        except Exception:  # noqa: BLE001 -- a garbled EXIF block: load_image kept the stored grid too
            upright = None
    stored = image if upright is None else _transpose(image, _INVERSE.get(upright, upright))
    try:
        crop = np.ascontiguousarray(crop_to_bbx(stored, bbx))
    except ValueError as e:
        raise FileError(path, f"query {name}: {e}") from None
    return crop if upright is None else _transpose(crop, upright)


def _decode_job(job: tuple[str, pathlib.Path, np.ndarray | None]) -> np.ndarray:
    """(name, file, bbx or None) -> the whole image, or the query's crop."""
    name, path, bbx = job
    return load_image(path) if bbx is None else _load_query(name, path, bbx)


def read_records(files: RevisitedFiles, split: str, *, workers: int = 1) -> Iterator[dict[str, Any]]:
    """The records of `split` ('database' or 'queries') in the official order, as the builder writes them
    (`image` as a uint8 (H, W, 3) array here); images are decoded on `workers` threads.

    Raises ImageError naming the file that cannot be decoded (no image is skipped: indices would shift).
    """
    if split not in SPLITS:
        raise ValueError(f"revisited_landmarks: unknown split {split!r}; expected one of {SPLITS}")
    gt = files.ground_truth
    if split == "database":
        jobs = [(name, files.images[name], None) for name in gt.imlist]
    else:
        jobs = [(name, files.images[name], g["bbx"]) for name, g in zip(gt.qimlist, gt.gnd)]
    decoded = ordered_map(_decode_job, jobs, workers=workers, chunk=4)
    for index, ((name, _, bbx), image) in enumerate(decoded):
        h, w = image.shape[:2]
        if split == "database":
            empty = np.zeros(0, np.int32)
            yield {
                "id": name, "image_id": name, "index": index, "image": image,
                "bbx": np.array([0, 0, w, h], np.float32), "easy": empty, "hard": empty, "junk": empty,
            }
        else:
            g = gt.gnd[index]
            yield {
                "id": f"query_{index:03d}", "image_id": name, "index": index, "image": image,
                "bbx": bbx.astype(np.float32),
                **{k: g[k].astype(np.int32) for k in ("easy", "hard", "junk")},
            }


# --------------------------------------------------------------------------------------------------------------
# The TFDS builder


MANUAL_DOWNLOAD_INSTRUCTIONS = "\n\n".join(_instructions(spec) for spec in DATASETS.values())


class RevisitedLandmarks(tfds.core.GeneratorBasedBuilder):
    """Revisited Oxford5k / Paris6k: database images and cropped queries with their Easy / Hard / Junk sets."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: database and cropped queries at original resolution, official order."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=spec.name, description=f"{spec.title} (Radenovic et al. 2018)")
        for spec in DATASETS.values()
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def __init__(self, *, num_workers: int | None = None, **kwargs):
        """Images are decoded on `num_workers` threads (default: all cores)."""
        self._num_workers = num_workers or os.cpu_count() or 1
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        spec = get_spec(self.builder_config.name)
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                f"{spec.title} (Radenovic et al. 2018), from the official files: `database` holds the images of "
                f"imlist ({spec.num_database:,} in the paper), `queries` the {spec.num_queries} queries cropped to "
                "their bbx, with their easy / hard / junk database indices. Records are in the official order; "
                "`index` is the position in imlist (database) or qimlist (queries). Evaluate with "
                "tmrjax.revisited (Easy, Medium, Hard mAP and mP@k)."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                    "id": tfds.features.Text(),
                    "image_id": tfds.features.Text(),
                    "index": np.int32,
                    "bbx": tfds.features.Tensor(shape=(4,), dtype=np.float32),  # tf.Example floats are 32-bit
                    **{k: tfds.features.Tensor(shape=(None,), dtype=np.int32) for k in ("easy", "hard", "junk")},
                }
            ),
            metadata=tfds.core.MetadataDict(),
            homepage=REVISITOP_URL,
            citation=_CITATION,
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        try:
            manual_dir = pathlib.Path(dl_manager.manual_dir)
        except AssertionError as e:  # tfds: the manual_dir does not exist or is empty
            raise FileNotFoundError(f"{e}\n{_instructions(get_spec(self.builder_config.name))}") from None
        extract_root = pathlib.Path(dl_manager.download_dir) / "extracted" / self.name
        files = find_revisited(self.builder_config.name, manual_dir, extract_root=extract_root)
        gt = files.ground_truth
        with gt.path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        self.info.metadata.update(
            {
                "gnd_file": gt.path.name,
                "gnd_sha256": digest,
                "num_database": len(gt.imlist),
                "num_queries": len(gt.qimlist),
            }
        )
        return {split: self._generate_examples(files, split) for split in SPLITS}

    def _generate_examples(self, files: RevisitedFiles, split: str):
        for record in read_records(files, split, workers=self._num_workers):
            png = io.BytesIO()
            Image.fromarray(record["image"]).save(png, format="PNG")
            yield record["id"], {**record, "image": png.getvalue()}
        log.info("revisited_landmarks/%s: %s written", files.spec.name, split)


def build_revisited(
    config: str, data_dir: str | os.PathLike | None = None, manual_dir: str | os.PathLike | None = None,
    num_workers: int | None = None,
) -> pathlib.Path:
    """Build `revisited_landmarks/<config>` into `data_dir` (tfds' default when None) from the official files in
    `manual_dir` (default <data_dir>/downloads/manual/) unless already built; returns its folder."""
    builder = RevisitedLandmarks(config=config, data_dir=data_dir, num_workers=num_workers)
    manual = None if manual_dir is None else os.fspath(manual_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    return pathlib.Path(builder.data_dir)


def prepare_hint(config: str, data_dir: str) -> str:
    """What to download, where to put it and how to build `revisited_landmarks/<config>` into `data_dir`: the
    message of a `tmrjax eval --dataset revisited_landmarks/<config>` that finds no prepared dataset."""
    return (
        f"{_instructions(get_spec(config))}\nThen build it once with `python -c \"from tmrjax.data.revisited_landmarks "
        f"import build_revisited; build_revisited('{config}', '{data_dir}', manual_dir='DIR')\"` (manual_dir: "
        f"the folder holding those files; default {data_dir}/downloads/manual/)."
    )


_CITATION = """\
@inproceedings{radenovic2018revisiting,
  title={Revisiting {O}xford and {P}aris: Large-Scale Image Retrieval Benchmarking},
  author={Radenovi{\\'c}, Filip and Iscen, Ahmet and Tolias, Giorgos and Avrithis, Yannis and Chum, Ond{\\v{r}}ej},
  booktitle={CVPR},
  year={2018}
}
@inproceedings{philbin2007object,
  title={Object retrieval with large vocabularies and fast spatial matching},
  author={Philbin, James and Chum, Ondrej and Isard, Michael and Sivic, Josef and Zisserman, Andrew},
  booktitle={CVPR},
  year={2007}
}
@inproceedings{philbin2008lost,
  title={Lost in quantization: Improving particular object retrieval in large scale image databases},
  author={Philbin, James and Chum, Ondrej and Isard, Michael and Sivic, Josef and Zisserman, Andrew},
  booktitle={CVPR},
  year={2008}
}
"""
