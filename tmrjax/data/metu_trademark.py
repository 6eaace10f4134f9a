"""`metu_trademark`: the METU trademark retrieval benchmark as a tfds dataset, built from the files its authors send.

What METU is and how it reaches you (found in public sources, not assumed):

- METU v2 holds 923,343 JPEG trademarks from 30x30 to 1800x1800 pixels; it is "available per request only", from
  Prof. Sinan Kalkan, for university researchers, and no download address or archive name is published
  (README of github.com/neouyghur/METU-TRADEMARK-DATASET). Its evaluation set is 417 queries in 35 groups of
  10 to 14 similar marks (Tursun et al. 2021, Sec. 4.1); Hu et al. 2024 (Sec. 4.1) split it as 922,926 unlabelled
  images + the 417 labelled queries.
- Two folders: the authors' evaluation code (evaluation/matlab/getDataInfo.m, same repository) reads the query
  logos from `queries/` and "other logos except for queries" from `pool/` (in their `square/` and `autocrop/`
  preprocessed copies); published code of METU users names the folders as shipped: `new_queryset_allinone/`
  (the queries) and `930k_logo_v3/` (922,926 `*.jpg`): an `evaluate_metu.py` and its README (FADE release, public
  GitHub code), and a preprocessing script reading `930k_logo_v3` with a `METU_logo_type_info.csv`.
- The groups are in the query file names, `<instance>-<group>.jpg` (`1-1.jpg`): getSll.m takes the digits right
  before `.jpg` as the group number, 1..35. There is no separate ground-truth file.
- Protocol (getRankResults.m): the database is queries + pool, and a query's relevant set is its whole group,
  itself included. Here: search each query of `queries` against `queries` + `gallery` (see tmrjax.metrics).

The dataset has the splits and features of `logo_groups`, so one evaluator reads both:
`queries` (every group member, `group` = the number from its file name, >= 1) and `gallery` (`group` = -1);
`image` uint8 (H, W, 3) at the file's own resolution (no resize: pipelines pad and resize themselves), `id` the
file's path inside its folder (its file name, as METU's folders are flat).

Check what the manual_dir holds with `metu_info(manual_dir)`, then build (long for the full set; `num_workers`
processes decode) and read, without TensorFlow (the `tfds build` command itself imports TensorFlow):

    from tmrjax.data.metu_trademark import MetuTrademark
    MetuTrademark(data_dir=D).download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=M))
    tfds.data_source("metu_trademark", split="queries", data_dir=D)  # after importing this module

Every image is decoded with `tmrjax.data.images.load_image` (EXIF orientation, palette, CMYK, transparency on
white) and stored as PNG, so a reader gets exactly load_image's pixels. A file that fails to decode is logged with
its name and skipped; skipped files are listed in the metadata (`skipped`). A gallery file that is a query's copy,
the same file name or the same bytes (SHA-1) as a query, is dropped, so that each query is in the database once,
and listed in the metadata (`gallery_copies_of_queries`): with such copies present the gallery count falls below
922,926 by their number. Pixel-equal images under other names are kept: METU holds many registrations of one mark
(687,842 unique of 923,343), and the official protocol ranks those as non-relevant.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import io
import logging
import os
import pathlib
import re
import shutil
import tarfile
import zipfile
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from tmrjax.data.images import IMAGE_EXTENSIONS, ImageError, list_images, load_image
from tmrjax.data.pool import ordered_map

log = logging.getLogger(__name__)

QUERY_DIR_NAMES = ("new_queryset_allinone", "queries")
"""Folder names of the query set: as shipped, and in the authors' evaluation code."""
GALLERY_DIR_NAMES = ("930k_logo_v3", "pool")
"""Folder names of the gallery (the images that are not queries)."""
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")

_DIR_KINDS = {**dict.fromkeys(QUERY_DIR_NAMES, "queries"), **dict.fromkeys(GALLERY_DIR_NAMES, "gallery")}
_EXPECTED = {"queries": QUERY_DIR_NAMES, "gallery": GALLERY_DIR_NAMES}
_GROUP_IN_NAME = re.compile(r"(\d+)\.[^.]+$")  # the digits right before the extension (getSll.m)
_EXTRACTED_MARKER = ".extracted"


# --------------------------------------------------------------------------------------------------------------
# Finding the query and gallery folders in the manual_dir


@dataclasses.dataclass(frozen=True)
class MetuFiles:
    """The query and gallery folders found, and their image files (sorted POSIX paths relative to each folder).

    A folder that is still inside an archive (`metu_info`) is named `<archive>/<path inside it>`.
    """

    queries_dir: pathlib.Path
    gallery_dir: pathlib.Path
    queries: list[str]
    gallery: list[str]


@dataclasses.dataclass(frozen=True)
class MetuInfo:
    """What a manual_dir holds, counted from file names only (nothing is decoded)."""

    queries_dir: str
    gallery_dir: str
    num_queries: int
    num_groups: int
    group_sizes: dict[int, int]
    num_gallery_files: int
    gallery_name_copies_of_queries: int

    def __str__(self) -> str:
        sizes = sorted(self.group_sizes.values())
        size_range = f"{sizes[0]}-{sizes[-1]}" if sizes else "-"
        return (
            f"METU: {self.num_queries} queries in {self.num_groups} groups of {size_range} ({self.queries_dir}); "
            f"{self.num_gallery_files:,} gallery files ({self.gallery_dir}), "
            f"{self.gallery_name_copies_of_queries} of them named like a query"
        )


def is_archive(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _is_image_member(name: str) -> bool:
    path = pathlib.PurePosixPath(name)
    hidden = any(p.startswith(".") for p in path.parts)
    return bool(path.parts) and not hidden and path.suffix.lower() in IMAGE_EXTENSIONS


def _archive_members(archive: pathlib.Path) -> list[str]:
    """Image files inside an archive, by name (a .tar.gz is read through once)."""
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
    else:
        with tarfile.open(archive) as tf:
            names = [m.name for m in tf if m.isfile()]
    return sorted(n for n in names if _is_image_member(n))


def extract_archive(archive: pathlib.Path, root: pathlib.Path) -> pathlib.Path:
    """The image files of `archive` extracted under root/<archive name>/, once: a marker records a finished run."""
    target = root / archive.name
    st = archive.stat()
    stamp = f"{st.st_size} {st.st_mtime_ns}"
    marker = target / _EXTRACTED_MARKER
    if marker.is_file() and marker.read_text() == stamp:
        return target
    partial = target.with_name(target.name + ".partial")
    for stale in (target, partial):
        if stale.exists():
            shutil.rmtree(stale)
    partial.mkdir(parents=True)
    log.info("metu_trademark: extracting %s to %s", archive, target)
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:  # extract() drops absolute and '..' parts of member names
            for info in zf.infolist():
                if not info.is_dir() and _is_image_member(info.filename):
                    zf.extract(info, partial)
    else:
        with tarfile.open(archive) as tf:
            members = (m for m in tf if m.isfile() and _is_image_member(m.name))
            tf.extractall(partial, members=members, filter="data")
    (partial / _EXTRACTED_MARKER).write_text(stamp)
    partial.rename(target)
    return target


def _candidates(root: pathlib.Path, rel_paths: Sequence[str]) -> dict[str, dict[pathlib.Path, list[str]]]:
    """Per kind, each folder with a METU name among the paths' ancestors (the nearest), with its files."""
    found: dict[str, dict[pathlib.Path, list[str]]] = {"queries": {}, "gallery": {}}
    for rel in rel_paths:
        parts = rel.split("/")
        for i in range(len(parts) - 2, -1, -1):
            kind = _DIR_KINDS.get(parts[i])
            if kind:
                found[kind].setdefault(root.joinpath(*parts[: i + 1]), []).append("/".join(parts[i + 1 :]))
                break
    return found


def find_metu(manual_dir: str | os.PathLike, extract_root: str | os.PathLike | None = None) -> MetuFiles:
    """Find the query and gallery folders in `manual_dir`, as folders (at any depth) or inside archives placed
    directly in it. Folders win; archives are searched for what the folders lack, all of them: extracted under
    `extract_root` when given, else only listed (then the returned folders are not readable paths).

    Raises FileNotFoundError naming manual_dir and the expected names when a folder is missing, and ValueError
    when one kind is found in more than one folder.
    """
    manual_dir = pathlib.Path(manual_dir).expanduser()
    if not manual_dir.is_dir():
        raise FileNotFoundError(f"METU manual_dir {manual_dir} does not exist.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")
    found = _candidates(manual_dir, list_images(manual_dir))
    archives = sorted(p for p in manual_dir.iterdir() if p.is_file() and is_archive(p))
    missing = [kind for kind, dirs in found.items() if not dirs]
    if missing:
        for archive in archives:
            if extract_root is None:
                root, rels = archive, _archive_members(archive)
            else:
                root = extract_archive(archive, pathlib.Path(extract_root))
                rels = list_images(root)
            for kind, dirs in _candidates(root, rels).items():
                if kind in missing:
                    found[kind].update(dirs)
    _check_found(found, manual_dir, archives)
    (queries_dir, queries), = found["queries"].items()
    (gallery_dir, gallery), = found["gallery"].items()
    return MetuFiles(queries_dir, gallery_dir, sorted(queries), sorted(gallery))


def _check_found(found: dict[str, dict], manual_dir: pathlib.Path, archives: list[pathlib.Path]) -> None:
    for kind, dirs in found.items():
        if len(dirs) > 1:
            listing = "\n".join(f"  {d} ({len(files)} images)" for d, files in sorted(dirs.items()))
            raise ValueError(
                f"METU manual_dir {manual_dir}: {len(dirs)} {kind} folders found, expected one:\n{listing}\n"
                "Keep one of them in the manual_dir."
            )
    missing = [kind for kind, dirs in found.items() if not dirs]
    if missing:
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in manual_dir.iterdir())
        shown = ", ".join(entries[:20]) + (f" ... ({len(entries)} entries)" if len(entries) > 20 else "")
        wanted = "; ".join(f"{k}: a folder named {' or '.join(n + '/' for n in _EXPECTED[k])}" for k in missing)
        raise FileNotFoundError(
            f"METU manual_dir {manual_dir}: no {' and no '.join(missing)} found. Expected {wanted} (with image files, "
            f"at any depth, or inside a {'/'.join(ARCHIVE_SUFFIXES)} archive placed directly in the manual_dir). "
            f"It holds: {shown or 'nothing'}; archives searched: {[a.name for a in archives]}.\n"
            f"{MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )


def query_group(name: str) -> int:
    """The group number in a METU query file name: '12-3.jpg' -> 3 (the digits right before the extension)."""
    m = _GROUP_IN_NAME.search(pathlib.PurePosixPath(name).name)
    if m is None:
        raise ValueError(f"METU query file {name!r}: its name does not end in a group number; expected "
                         "<instance>-<group>.jpg, e.g. 1-1.jpg")
    return int(m.group(1))


def _name_copies(files: MetuFiles) -> set[str]:
    """Gallery files with the file name of a query."""
    names = {pathlib.PurePosixPath(q).name for q in files.queries}
    return {g for g in files.gallery if pathlib.PurePosixPath(g).name in names}


def metu_info(manual_dir: str | os.PathLike) -> MetuInfo:
    """Count the queries, groups and gallery files a manual_dir holds, without decoding or extracting anything."""
    files = find_metu(manual_dir)
    sizes = collections.Counter(query_group(q) for q in files.queries)
    return MetuInfo(
        queries_dir=str(files.queries_dir),
        gallery_dir=str(files.gallery_dir),
        num_queries=len(files.queries),
        num_groups=len(sizes),
        group_sizes=dict(sorted(sizes.items())),
        num_gallery_files=len(files.gallery),
        gallery_name_copies_of_queries=len(_name_copies(files)),
    )


# --------------------------------------------------------------------------------------------------------------
# Decoding, in worker processes


def _sha1(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def _load_job(path: str, copies_of: frozenset[str] = frozenset()) -> tuple[str, object]:
    """("ok", PNG bytes), ("copy", sha1) when the file's bytes are in `copies_of`, or ("skip", reason)."""
    try:
        if copies_of:
            digest = _sha1(path)
            if digest in copies_of:
                return "copy", digest
        out = io.BytesIO()
        Image.fromarray(load_image(path)).save(out, format="PNG")
        return "ok", out.getvalue()
    except ImageError as e:
        return "skip", e.reason
    except Exception as e:  # noqa: BLE001 -- one odd file must not end a build over a million
        return "skip", f"unexpected {type(e).__name__}: {e}"


# --------------------------------------------------------------------------------------------------------------
# The TFDS builder

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
METU is available from its authors on request (Prof. Sinan Kalkan, METU Ankara; university researchers; see
https://github.com/neouyghur/METU-TRADEMARK-DATASET). Put what you receive in the manual_dir (default
<data_dir>/downloads/manual/, i.e. ~/tensorflow_datasets/downloads/manual/, or DownloadConfig(manual_dir=DIR)):

    <manual_dir>/new_queryset_allinone/   the 417 queries, named <instance>-<group>.jpg (e.g. 1-1.jpg, group 1..35)
    <manual_dir>/930k_logo_v3/            the 922,926 gallery JPEGs

The authors' folder names queries/ and pool/ are accepted too. Either folder may sit deeper (e.g.
<manual_dir>/METU/930k_logo_v3/) or stay packed in a .zip, .tar, .tar.gz or .tgz archive (any name) placed directly
in the manual_dir; archives are extracted once under <download_dir>/extracted/metu_trademark/ (as much free disk as
their content). Keep exactly one query folder and one gallery folder. Check with
`python -c "from tmrjax.data.metu_trademark import metu_info; print(metu_info('DIR'))"`.
"""


class MetuTrademark(tfds.core.GeneratorBasedBuilder):
    """METU v2 trademark retrieval: 417 queries in 35 groups of similar marks, and the gallery of the rest."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: queries and gallery at original resolution, PNG of load_image's RGB."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def __init__(self, *, num_workers: int | None = None, **kwargs):
        """Decoding runs on `num_workers` spawned processes (default: all cores; 1 decodes in this process), so a
        building script needs the usual `if __name__ == "__main__":` guard."""
        self._num_workers = num_workers or os.cpu_count() or 1
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "METU v2 trademark retrieval benchmark (Tursun et al.): `queries` holds the 417 query marks, "
                "`group` = the similarity group (1..35) from the file name <instance>-<group>.jpg; `gallery` holds "
                "the other marks (`group` = -1). Search each query against queries + gallery; relevant = its group, "
                "itself included. Images are at their original resolution. Files that failed to decode "
                "(`skipped`, with their count `num_skipped`) and gallery copies of queries that were dropped "
                "(`gallery_copies_of_queries`) are listed in the metadata."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                    "id": tfds.features.Text(),
                    "group": np.int32,
                }
            ),
            metadata=tfds.core.MetadataDict(),
            homepage="https://github.com/neouyghur/METU-TRADEMARK-DATASET",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        try:
            manual_dir = pathlib.Path(dl_manager.manual_dir)
        except AssertionError as e:  # tfds: the manual_dir does not exist or is empty
            raise FileNotFoundError(str(e)) from None
        files = find_metu(manual_dir, extract_root=pathlib.Path(dl_manager.download_dir) / "extracted" / self.name)
        queries = [(q, query_group(q)) for q in files.queries]  # every name is checked before any decoding
        query_sha1 = {}
        for q, _ in queries:
            with contextlib.suppress(OSError):  # unreadable: reported as skipped when the queries are decoded
                query_sha1.setdefault(_sha1(str(files.queries_dir / q)), q)
        by_name = _name_copies(files)
        query_names = {pathlib.PurePosixPath(q).name: q for q in files.queries}
        copies = [
            {"id": g, "query": query_names[pathlib.PurePosixPath(g).name], "match": "name"} for g in sorted(by_name)
        ]
        gallery = [g for g in files.gallery if g not in by_name]
        self.info.metadata.update(
            {
                "queries_dir": _shown(files.queries_dir, manual_dir),
                "gallery_dir": _shown(files.gallery_dir, manual_dir),
                "query_files": len(files.queries),
                "gallery_files": len(files.gallery),
                "skipped": [],
                "num_skipped": 0,
                "gallery_copies_of_queries": copies,
            }
        )
        return {
            "queries": self._generate_examples("queries", files.queries_dir, queries, {}),
            "gallery": self._generate_examples("gallery", files.gallery_dir, [(g, -1) for g in gallery], query_sha1),
        }

    def _generate_examples(
        self, split: str, folder: pathlib.Path, items: list[tuple[str, int]], query_sha1: dict[str, str]
    ):
        """Decode `items` ((path in `folder`, group)) in order; drop those whose bytes are a query's (`query_sha1`:
        sha1 -> query id); record what was skipped or dropped, and the counts, in the metadata."""
        job = functools.partial(_load_job, copies_of=frozenset(query_sha1))
        written, skipped, copies = 0, [], []
        groups = set()
        paths = [str(folder / rel) for rel, _ in items]
        decoded = ordered_map(job, paths, workers=self._num_workers, processes=True, chunk=64)
        for (rel, group), (_, (status, value)) in zip(items, decoded):
            if status == "ok":
                written += 1
                groups.add(group)
                yield rel, {"image": value, "id": rel, "group": group}
            elif status == "copy":
                copies.append({"id": rel, "query": query_sha1[value], "match": "sha1"})
            else:
                log.warning("metu_trademark: skipped %s file %s: %s", split, folder / rel, value)
                skipped.append({"split": split, "id": rel, "reason": value})
        meta = self.info.metadata
        meta["skipped"] = meta["skipped"] + skipped
        meta["num_skipped"] = len(meta["skipped"])
        meta["gallery_copies_of_queries"] = meta["gallery_copies_of_queries"] + copies
        meta[f"num_{split}"] = written
        if split == "queries":
            meta["num_groups"] = len(groups)
        log.info(
            "metu_trademark: %s: %d written, %d skipped, %d copies of queries dropped",
            split, written, len(skipped), len(copies),
        )


def _shown(folder: pathlib.Path, manual_dir: pathlib.Path) -> str:
    """A folder as the metadata records it: relative to the manual_dir, or as given when extracted elsewhere."""
    try:
        return folder.relative_to(manual_dir).as_posix()
    except ValueError:
        return str(folder)


_CITATION = """\
@inproceedings{tursun2015metu,
  title={{METU} dataset: A big dataset for benchmarking trademark retrieval},
  author={Tursun, Osman and Kalkan, Sinan},
  booktitle={14th IAPR International Conference on Machine Vision Applications (MVA)},
  pages={514--517},
  year={2015}
}
@article{tursun2017large,
  title={A large-scale dataset and benchmark for similar trademark retrieval},
  author={Tursun, Osman and Aker, Cemal and Kalkan, Sinan},
  journal={arXiv preprint arXiv:1701.05766},
  year={2017}
}
"""
