"""metu_trademark on tiny METU-like manual_dirs: folders, one zip with the authors' names, folder + tar.gz.

Each holds 3 query groups, 6 good gallery images (one CMYK), one truncated JPEG, one query copied into the gallery
under its own name and one under another name (same bytes).
"""

from __future__ import annotations

import pathlib
import shutil
import tarfile
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

from tmrjax.data import metu_trademark
from tmrjax.data.images import load_image
from tmrjax.data.metu_trademark import MetuTrademark, find_metu, metu_info, query_group

QUERIES = {"1-1.jpg": 1, "2-1.jpg": 1, "3-1.jpg": 1, "4-2.jpg": 2, "5-2.jpg": 2, "6-3.jpg": 3, "7-3.jpg": 3}
GOOD_GALLERY = ["100001.jpg", "100002.jpg", "100003.jpg", "100004.jpg", "100005.jpg", "100006_cmyk.jpg"]
CORRUPT = "100099.jpg"
NAME_COPY = "1-1.jpg"  # a query's own file, also in the gallery folder
BYTE_COPY = ("100050.jpg", "4-2.jpg")  # a query's bytes under a gallery name


def _mark(path: pathlib.Path, i: int, size: tuple[int, int], mode: str = "RGB") -> None:
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.ellipse([3 + i % 5, 4, size[0] - 5, size[1] - 3 - i % 7], fill=((40 * i) % 256, 90, 200 - 10 * i))
    d.rectangle([2, 2, 6 + 3 * i, 9], fill="black")
    (img.convert("CMYK") if mode == "CMYK" else img).save(path, format="JPEG", quality=92)


@pytest.fixture(scope="module")
def metu_source(tmp_path_factory) -> pathlib.Path:
    """<src>/new_queryset_allinone/ and <src>/930k_logo_v3/, the files every layout is made from."""
    src = tmp_path_factory.mktemp("metu_src")
    q, g = src / "new_queryset_allinone", src / "930k_logo_v3"
    q.mkdir()
    g.mkdir()
    for i, name in enumerate(QUERIES):
        _mark(q / name, i, (40 + 3 * i, 30 + 2 * i))
    for i, name in enumerate(GOOD_GALLERY):
        _mark(g / name, 20 + i, (50 + i, 33 + 5 * i), mode="CMYK" if "cmyk" in name else "RGB")
    good = (g / GOOD_GALLERY[0]).read_bytes()
    (g / CORRUPT).write_bytes(good[: len(good) // 2])
    shutil.copy(q / NAME_COPY, g / NAME_COPY)
    shutil.copy(q / BYTE_COPY[1], g / BYTE_COPY[0])
    (g / "list.txt").write_text("not an image, ignored\n")
    return src


def _layout(kind: str, src: pathlib.Path, manual: pathlib.Path) -> pathlib.Path:
    manual.mkdir()
    if kind == "folders":  # as shipped, extracted
        for name in ("new_queryset_allinone", "930k_logo_v3"):
            shutil.copytree(src / name, manual / name)
    elif kind == "zip":  # one archive, the authors' folder names, one level down
        with zipfile.ZipFile(manual / "METU_TRADEMARK_DATASET.zip", "w") as zf:
            for name, as_ in (("new_queryset_allinone", "METU/queries"), ("930k_logo_v3", "METU/pool")):
                for f in sorted((src / name).iterdir()):
                    zf.write(f, f"{as_}/{f.name}")
    elif kind == "folder+tgz":  # queries extracted, gallery still packed
        shutil.copytree(src / "new_queryset_allinone", manual / "new_queryset_allinone")
        with tarfile.open(manual / "930k_logo_v3.tar.gz", "w:gz") as tf:
            tf.add(src / "930k_logo_v3", arcname="930k_logo_v3")
    return manual


def _read(data_dir: pathlib.Path, split: str) -> dict[str, dict]:
    source = tfds.data_source("metu_trademark", split=split, data_dir=str(data_dir), download=False)
    records = [source[i] for i in range(len(source))]
    return {(r["id"].decode() if isinstance(r["id"], bytes) else r["id"]): r for r in records}


@pytest.mark.parametrize("kind, workers", [("folders", 1), ("zip", 1), ("folder+tgz", 2)])
def test_build_and_read_back(metu_source, tmp_path, kind, workers, caplog):
    manual = _layout(kind, metu_source, tmp_path / "manual")
    data_dir = tmp_path / "tfds"
    builder = MetuTrademark(data_dir=str(data_dir), num_workers=workers)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))

    assert any(CORRUPT in r.getMessage() and "skipped gallery file" in r.getMessage() for r in caplog.records)

    queries, gallery = _read(data_dir, "queries"), _read(data_dir, "gallery")
    assert {i: int(r["group"]) for i, r in queries.items()} == QUERIES
    assert sorted(gallery) == sorted(GOOD_GALLERY)  # no corrupt file, no copy of a query
    assert all(int(r["group"]) == -1 for r in gallery.values())

    q_dir = metu_source / "new_queryset_allinone"
    g_dir = metu_source / "930k_logo_v3"
    for folder, records in ((q_dir, queries), (g_dir, gallery)):
        for name, record in records.items():
            image = np.asarray(record["image"])
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            expected = load_image(folder / name)  # original resolution, load_image's pixels exactly (PNG)
            assert image.shape == expected.shape
            np.testing.assert_array_equal(image, expected)
    assert Image.open(g_dir / "100006_cmyk.jpg").mode == "CMYK"

    meta = MetuTrademark(data_dir=str(data_dir)).info.metadata  # as written to disk
    assert meta["num_queries"] == 7 and meta["num_groups"] == 3 and meta["num_gallery"] == len(GOOD_GALLERY)
    assert meta["num_skipped"] == 1
    assert [(s["split"], s["id"]) for s in meta["skipped"]] == [("gallery", CORRUPT)]
    copies = sorted((c["id"], c["query"], c["match"]) for c in meta["gallery_copies_of_queries"])
    assert copies == [(NAME_COPY, NAME_COPY, "name"), (BYTE_COPY[0], BYTE_COPY[1], "sha1")]
    assert meta["query_files"] == 7 and meta["gallery_files"] == len(GOOD_GALLERY) + 3


def test_ids_and_groups_are_read_without_decoding_images(metu_source, tmp_path):
    """A labelled training source and a benchmark read the group labels and ids of every record
    from the split opened without image decoding; the images they serve are still decoded."""
    from tmrjax.data.sources import open_benchmark, open_tfds
    from tmrjax.data.tfds_source import open_split
    from tmrjax.train.data import TrainingImages

    manual = _layout("folders", metu_source, tmp_path / "manual")
    data_dir = tmp_path / "tfds"
    MetuTrademark(data_dir=str(data_dir)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    fields = open_split("metu_trademark:queries", data_dir, images=False)
    decoded = open_split("metu_trademark:queries", data_dir)
    assert isinstance(fields[0]["image"], bytes) and np.asarray(decoded[0]["image"]).ndim == 3
    assert [fields[i]["id"] for i in range(len(fields))] == [decoded[i]["id"] for i in range(len(decoded))]

    source = TrainingImages(open_tfds("metu_trademark:gallery+queries", data_dir), 32, labelled=True)
    assert len(source) == len(QUERIES)  # the unlabelled gallery (group -1) is left out
    assert source.class_names == ["1", "2", "3"]
    names = [decoded[i]["id"].decode() for i in range(len(decoded))]
    assert source.labels.tolist() == [QUERIES[n] - 1 for n in names]
    assert source.load(0).shape == (32, 32, 3)

    bench = open_benchmark("metu_trademark", data_dir=data_dir)
    assert [bench.id(r) for r in range(bench.num_queries)] == names
    assert bench.groups.tolist() == [QUERIES[n] for n in names] + [-1] * bench.num_distractors
    np.testing.assert_array_equal(bench.image(0), np.asarray(decoded[0]["image"]))


def test_metu_info_counts_without_extracting(metu_source, tmp_path):
    manual = _layout("folder+tgz", metu_source, tmp_path / "manual")
    info = metu_info(manual)
    assert (info.num_queries, info.num_groups, info.group_sizes) == (7, 3, {1: 3, 2: 2, 3: 2})
    assert info.num_gallery_files == len(GOOD_GALLERY) + 3 and info.gallery_name_copies_of_queries == 1
    assert info.gallery_dir.endswith("930k_logo_v3.tar.gz/930k_logo_v3")
    assert "7 queries in 3 groups of 2-3" in str(info)
    assert sorted(p.name for p in manual.iterdir()) == ["930k_logo_v3.tar.gz", "new_queryset_allinone"]


def test_missing_manual_dir_names_path_and_files(tmp_path):
    manual = tmp_path / "nowhere"
    builder = MetuTrademark(data_dir=str(tmp_path / "tfds"), num_workers=1)
    with pytest.raises(FileNotFoundError) as e:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    assert str(manual) in str(e.value) and "new_queryset_allinone" in str(e.value) and "930k_logo_v3" in str(e.value)


def test_missing_gallery_names_path_and_expected_folder(metu_source, tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    shutil.copytree(metu_source / "new_queryset_allinone", manual / "new_queryset_allinone")
    builder = MetuTrademark(data_dir=str(tmp_path / "tfds"), num_workers=1)
    with pytest.raises(FileNotFoundError, match="no gallery found") as e:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    assert str(manual) in str(e.value) and "930k_logo_v3/ or pool/" in str(e.value)
    assert "new_queryset_allinone/" in str(e.value)  # what the manual_dir does hold


def test_two_query_folders_are_refused(metu_source, tmp_path):
    manual = _layout("folders", metu_source, tmp_path / "manual")
    shutil.copytree(metu_source / "new_queryset_allinone", manual / "autocrop" / "queries")
    with pytest.raises(ValueError, match="2 queries folders found"):
        find_metu(manual)


def test_query_group_from_file_name():
    assert query_group("12-3.jpg") == 3 and query_group("sub/1-35.JPG") == 35
    with pytest.raises(ValueError, match="abc.jpg"):
        query_group("abc.jpg")


def test_archive_extracted_once(metu_source, tmp_path):
    manual = _layout("zip", metu_source, tmp_path / "manual")
    root = tmp_path / "extracted"
    first = find_metu(manual, extract_root=root)
    marker = root / "METU_TRADEMARK_DATASET.zip" / metu_trademark._EXTRACTED_MARKER
    stamp = marker.stat().st_mtime_ns
    second = find_metu(manual, extract_root=root)
    assert first == second and marker.stat().st_mtime_ns == stamp
    assert first.queries_dir == root / "METU_TRADEMARK_DATASET.zip" / "METU" / "queries"
    assert "list.txt" not in first.gallery
