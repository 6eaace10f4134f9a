"""revisited_landmarks on tiny synthetic manual_dirs: a pickle written here, a few generated JPEGs, as folders
(rOxford5k) and as the two official Paris tarballs (rParis6k)."""

from __future__ import annotations

import os
import pathlib
import pickle
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

from tmrjax.data.images import ImageError, load_image
from tmrjax.data.revisited_landmarks import (
    GroundTruthError,
    RevisitedLandmarks,
    crop_to_bbx,
    find_revisited,
    load_ground_truth,
    read_records,
)

OXFORD_DB = ["all_souls_000001", "all_souls_000002", "radcliffe_camera_000001", "magdalen_000001", "ashmolean_000001"]
OXFORD_Q = ["all_souls_000013", "radcliffe_camera_000002"]
PARIS_DB = ["paris_defense_000001", "paris_defense_000002", "paris_louvre_000001", "paris_louvre_000002"]
PARIS_Q = ["paris_defense_000010", "paris_louvre_000010"]


def _gnd(num_queries: int, num_database: int, bbx_type=list) -> list[dict]:
    boxes = [[3.4, 5.6, 31.5, 22.5], [0, 2, 40, 27]]  # rounded as PIL: (3, 6, 32, 22) and (0, 2, 40, 27)
    gnd = []
    for q in range(num_queries):
        gnd.append({
            "bbx": bbx_type(boxes[q % 2]),
            "easy": [q % num_database],
            "hard": np.array([(q + 1) % num_database]),  # lists and numpy arrays, as either may be in the file
            "junk": [] if q else [num_database - 1],
        })
    return gnd


def _write_jpg(path: pathlib.Path, seed: int, size=(48, 32), exif_orientation: int | None = None) -> None:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = (int(v) for v in rng.integers(0, 20, 2))
        draw.rectangle([x0, y0, x0 + 15, y0 + 9], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    if exif_orientation is None:
        img.save(path, quality=95)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        img.save(path, quality=95, exif=exif)


def _write_pickle(path: pathlib.Path, obj, protocol: int = 4) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.fixture(scope="module")
def oxford_dir(tmp_path_factory) -> pathlib.Path:
    """revisitop's layout: data/datasets/roxford5k/{gnd_roxford5k.pkl, jpg/*.jpg}; the second query has an EXIF
    orientation (rotate 90 degrees to show it upright)."""
    root = tmp_path_factory.mktemp("oxford")
    base = root / "datasets" / "roxford5k"
    for i, name in enumerate(OXFORD_DB + OXFORD_Q):
        _write_jpg(base / "jpg" / f"{name}.jpg", i, exif_orientation=6 if name == OXFORD_Q[1] else None)
    obj = {"imlist": OXFORD_DB, "qimlist": OXFORD_Q, "gnd": _gnd(len(OXFORD_Q), len(OXFORD_DB), np.array)}
    _write_pickle(base / "gnd_roxford5k.pkl", obj, protocol=2)  # protocol 2: arrays through _codecs.encode
    return root


@pytest.fixture(scope="module")
def paris_dir(tmp_path_factory) -> pathlib.Path:
    """The official Paris tarballs (paris/<landmark>/<name>.jpg inside), and the pickle beside them."""
    root = tmp_path_factory.mktemp("paris")
    src = tmp_path_factory.mktemp("paris_src")
    for i, name in enumerate(PARIS_DB + PARIS_Q):
        landmark = name.split("_")[1]
        _write_jpg(src / "paris" / landmark / f"{name}.jpg", 50 + i, size=(44, 30))
    for archive, landmark in (("paris_1-v1.tgz", "defense"), ("paris_2-v1.tgz", "louvre")):
        with tarfile.open(root / archive, "w:gz") as tf:
            tf.add(src / "paris" / landmark, arcname=f"paris/{landmark}")
    _write_pickle(root / "gnd_rparis6k.pkl", {"imlist": PARIS_DB, "qimlist": PARIS_Q, "gnd": _gnd(2, len(PARIS_DB))})
    return root


def _file(root: pathlib.Path, name: str) -> pathlib.Path:
    (path,) = root.rglob(f"{name}.jpg")
    return path


# --------------------------------------------------------------------------------------------------------------
# Reading without tfds


def test_read_records_from_folders(oxford_dir):
    files = find_revisited("roxford5k", oxford_dir)
    assert "5 database images and 2 queries" in str(files)
    database = list(read_records(files, "database"))
    assert [r["id"] for r in database] == [r["image_id"] for r in database] == OXFORD_DB
    assert [r["index"] for r in database] == list(range(len(OXFORD_DB)))
    for record in database:
        expected = load_image(_file(oxford_dir, record["id"]))
        assert record["image"].dtype == np.uint8 and record["image"].shape == expected.shape == (32, 48, 3)
        np.testing.assert_array_equal(record["image"], expected)
        np.testing.assert_array_equal(record["bbx"], [0, 0, 48, 32])
        assert all(record[k].dtype == np.int32 and record[k].size == 0 for k in ("easy", "hard", "junk"))

    queries = list(read_records(files, "queries", workers=2))
    assert [r["id"] for r in queries] == ["query_000", "query_001"]
    assert [r["image_id"] for r in queries] == OXFORD_Q
    first = queries[0]
    assert first["bbx"].dtype == np.float32
    np.testing.assert_array_equal(first["bbx"], np.float32([3.4, 5.6, 31.5, 22.5]))
    np.testing.assert_array_equal(first["easy"], [0])
    np.testing.assert_array_equal(first["hard"], [1])
    np.testing.assert_array_equal(first["junk"], [4])
    assert first["easy"].dtype == np.int32
    assert queries[1]["junk"].size == 0


def test_queries_are_cropped_to_bbx(oxford_dir):
    files = find_revisited("roxford5k", oxford_dir)
    first, second = read_records(files, "queries")
    # bbx (3.4, 5.6, 31.5, 22.5) rounds as PIL's crop to x 3..32, y 6..22 (round(31.5) = 32, round(22.5) = 22)
    full = load_image(_file(oxford_dir, OXFORD_Q[0]))
    assert first["image"].shape == (16, 29, 3)
    np.testing.assert_array_equal(first["image"], full[6:22, 3:32])
    with Image.open(_file(oxford_dir, OXFORD_Q[0])) as img:  # the official loader: PIL's crop of the file
        np.testing.assert_array_equal(first["image"], np.asarray(img.convert("RGB").crop((3.4, 5.6, 31.5, 22.5))))
    # The second query's file is stored 48x32 with EXIF orientation 6: the box (0, 2, 40, 27) is in the stored
    # grid (as PIL reads the file), and the crop is then turned upright like the whole image.
    with Image.open(_file(oxford_dir, OXFORD_Q[1])) as img:
        stored = img.convert("RGB")
        expected = np.asarray(stored.crop((0, 2, 40, 27)).transpose(Image.Transpose.ROTATE_270))
    assert load_image(_file(oxford_dir, OXFORD_Q[1])).shape == (48, 32, 3)  # load_image turns it upright
    assert second["image"].shape == expected.shape == (40, 25, 3)
    np.testing.assert_array_equal(second["image"], expected)


def test_crop_to_bbx_clips_to_the_image():
    image = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    np.testing.assert_array_equal(crop_to_bbx(image, [-2, 1, 10, 3]), image[1:3, 0:6])
    with pytest.raises(ValueError, match="holds no pixel of a 6x5 image"):
        crop_to_bbx(image, [7, 1, 9, 3])


def test_read_records_from_the_official_tarballs(paris_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="pass extract_root"):
        find_revisited("rparis6k", paris_dir)
    files = find_revisited("rparis6k", paris_dir, extract_root=tmp_path / "x")
    database = list(read_records(files, "database"))
    assert [r["id"] for r in database] == PARIS_DB
    assert all(r["image"].shape == (30, 44, 3) for r in database)
    assert [r["image_id"] for r in read_records(files, "queries")] == PARIS_Q
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["paris_1-v1.tgz", "paris_2-v1.tgz"]


def test_a_database_image_that_fails_to_decode_stops_the_read(oxford_dir, tmp_path):
    import shutil

    manual = tmp_path / "m"
    shutil.copytree(oxford_dir, manual)
    broken = _file(manual, OXFORD_DB[2])
    broken.write_bytes(broken.read_bytes()[:100])
    with pytest.raises(ImageError, match=OXFORD_DB[2]):
        list(read_records(find_revisited("roxford5k", manual), "database"))


# --------------------------------------------------------------------------------------------------------------
# Missing files


def test_missing_files_are_named_with_where_to_get_them(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here yet")
    with pytest.raises(FileNotFoundError) as info:
        find_revisited("roxford5k", tmp_path)
    message = str(info.value)
    for needed in (
        "no gnd_roxford5k.pkl",
        "http://cmp.felk.cvut.cz/revisitop/data/datasets/roxford5k/gnd_roxford5k.pkl",
        "oxbuild_images-v1.tgz",
        "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/",
        str(tmp_path),
        "DownloadConfig(manual_dir=DIR)",
    ):
        assert needed in message, needed
    with pytest.raises(FileNotFoundError) as info:
        find_revisited("rparis6k", tmp_path)
    assert "paris_1-v1.tgz + paris_2-v1.tgz" in str(info.value)
    assert "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/" in str(info.value)


def test_missing_images_are_listed(oxford_dir, tmp_path):
    import shutil

    manual = tmp_path / "m"
    shutil.copytree(oxford_dir, manual)
    _file(manual, OXFORD_DB[1]).unlink()
    _file(manual, OXFORD_Q[0]).unlink()
    with pytest.raises(FileNotFoundError) as info:
        find_revisited("roxford5k", manual)
    message = str(info.value)
    assert "2 of the 7 images named in" in message and "gnd_roxford5k.pkl" in message
    assert repr([OXFORD_DB[1], OXFORD_Q[0]]) in message
    assert "oxbuild_images-v1.tgz" in message


# --------------------------------------------------------------------------------------------------------------
# The ground-truth pickle


class _RunsAShellCommand:
    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_malicious_pickle_is_refused(tmp_path, protocol):
    marker = tmp_path / "ran"
    obj = {"imlist": ["a"], "qimlist": ["b"], "gnd": [{"bbx": _RunsAShellCommand(marker)}]}
    path = _write_pickle(tmp_path / "gnd_roxford5k.pkl", obj, protocol)
    with pytest.raises(GroundTruthError) as info:
        load_ground_truth(path)
    assert str(path) in str(info.value)
    assert f"the global {os.system.__module__}.system" in str(info.value)  # posix.system
    assert not marker.exists()


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda o: o.pop("qimlist"), "lacks the keys ['qimlist']"),
        (lambda o: o["gnd"][1].pop("hard"), "field gnd[1]: lacks ['hard']"),
        (lambda o: o["gnd"][0].update(bbx=[1, 2, 3]), "field gnd[0]['bbx']: expected 4 numbers"),
        (lambda o: o["gnd"][0].update(bbx=[30, 2, 10, 20]), "field gnd[0]['bbx']: expected finite x1 < x2"),
        (lambda o: o["gnd"][1].update(junk=[0, 5]), "field gnd[1]['junk']: indices [5] outside the database [0, 5)"),
        (lambda o: o["gnd"][0].update(easy=[0.5]), "field gnd[0]['easy']: expected integer indices"),
        (lambda o: o["gnd"][0].update(easy="0 1"), "field gnd[0]['easy']: expected a list of database indices"),
        (lambda o: o["gnd"].pop(), "field gnd: expected a list of one dict per query (2), got 1 entries"),
        (lambda o: o.update(imlist=["a", 3]), "field imlist: expected a non-empty list of image names"),
        (lambda o: o.update(imlist=["a", "b", "a", "c", "d"]), "field imlist: names listed more than once: ['a']"),
    ],
)
def test_a_pickle_with_a_bad_structure_names_the_field(tmp_path, change, field):
    obj = {"imlist": OXFORD_DB, "qimlist": OXFORD_Q, "gnd": _gnd(2, len(OXFORD_DB))}
    change(obj)
    path = _write_pickle(tmp_path / "gnd_roxford5k.pkl", obj)
    with pytest.raises(GroundTruthError) as info:
        load_ground_truth(path)
    assert str(path) in str(info.value)
    assert field in str(info.value)


def test_numpy_arrays_and_integral_floats_are_read(tmp_path):
    gnd = _gnd(2, len(OXFORD_DB), np.array)
    gnd[0]["easy"] = np.array([0.0, 2.0])  # MATLAB doubles
    obj = {"imlist": np.array(OXFORD_DB), "qimlist": OXFORD_Q, "gnd": gnd}
    gt = load_ground_truth(_write_pickle(tmp_path / "gnd_roxford5k.pkl", obj))
    assert gt.imlist == OXFORD_DB
    assert gt.gnd[0]["easy"].dtype == np.int64 and gt.gnd[0]["easy"].tolist() == [0, 2]
    assert gt.gnd[0]["bbx"].dtype == np.float64 and gt.gnd[0]["bbx"].tolist() == [3.4, 5.6, 31.5, 22.5]


def test_a_truncated_pickle_is_named(tmp_path):
    path = tmp_path / "gnd_roxford5k.pkl"
    path.write_bytes(pickle.dumps({"imlist": OXFORD_DB}, protocol=4)[:20])
    with pytest.raises(GroundTruthError, match="cannot unpickle"):
        load_ground_truth(path)


# --------------------------------------------------------------------------------------------------------------
# The tfds builder


def _read(data_dir: pathlib.Path, config: str, split: str) -> list[dict]:
    source = tfds.data_source(f"revisited_landmarks/{config}", split=split, data_dir=str(data_dir), download=False)
    return [source[i] for i in range(len(source))]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.mark.parametrize("config", ["roxford5k", "rparis6k"])
def test_build_and_read_back(oxford_dir, paris_dir, tmp_path, config):
    manual = oxford_dir if config == "roxford5k" else paris_dir
    data_dir = tmp_path / "tfds"
    builder = RevisitedLandmarks(config=config, data_dir=str(data_dir), num_workers=2)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    files = find_revisited(config, manual, extract_root=tmp_path / "x")
    for split in ("database", "queries"):
        stored, expected = _read(data_dir, config, split), list(read_records(files, split))
        assert len(stored) == len(expected)
        for got, want in zip(stored, expected):  # the official order: shuffling is disabled
            assert _text(got["id"]) == want["id"] and _text(got["image_id"]) == want["image_id"]
            assert int(got["index"]) == want["index"]
            np.testing.assert_array_equal(np.asarray(got["image"]), want["image"])  # PNG: lossless
            np.testing.assert_array_equal(got["bbx"], want["bbx"])
            for key in ("easy", "hard", "junk"):
                np.testing.assert_array_equal(got[key], want[key])
    meta = RevisitedLandmarks(config=config, data_dir=str(data_dir)).info.metadata
    assert meta["gnd_file"] == f"gnd_{config}.pkl" and len(meta["gnd_sha256"]) == 64
    assert meta["num_database"] == len(files.ground_truth.imlist) and meta["num_queries"] == 2


def test_build_without_files_says_what_it_needs(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "readme.txt").write_text("x")
    builder = RevisitedLandmarks(config="rparis6k", data_dir=str(tmp_path / "tfds"), num_workers=1)
    with pytest.raises(FileNotFoundError, match=r"no gnd_rparis6k\.pkl(.|\n)*paris_1-v1\.tgz"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
