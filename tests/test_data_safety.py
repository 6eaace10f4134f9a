"""Hostile and damaged folders: index and pipeline folders from others, flipped bytes, two writers.

Every case here failed before (a traceback, garbage results, code run from data, marks lost);
each must now end in a clear error naming the file, or in the right answer.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tmrjax.cli import main
from tmrjax.data.images import FailureLog, list_images
from tmrjax.fileio import FolderLockedError, StoredFileError, WriterLock
from tmrjax.gallery import index_folder, search_images
from tmrjax.index import GalleryIndex
from tmrjax.pipeline import Pipeline, PipelineError

from .conftest import write_marks

# The pixel baseline: no network and no fit, so every case runs in seconds.
PIPELINE = "thumbnail"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(marks folder, index folder) of 30 marks, indexed with checkpoints every 8 (so deltas exist)."""
    base = tmp_path_factory.mktemp("safety")
    write_marks(base / "marks", count=30)
    pipeline = Pipeline.load(PIPELINE)
    index_folder(base / "marks", pipeline, base / "index", checkpoint_every=8, progress=False)
    return base / "marks", base / "index"


@pytest.fixture
def index_copy(built, tmp_path):
    return shutil.copytree(built[1], tmp_path / "index")


def _meta(index: Path) -> dict:
    return json.loads((index / "meta.json").read_text())


def _write_meta(index: Path, meta: dict) -> None:
    (index / "meta.json").write_text(json.dumps(meta))


def _index_files(index: Path) -> list[Path]:
    meta = _meta(index)
    names = [meta["files"]["index"]["name"], meta["files"]["table"]["name"], *(d["name"] for d in meta["deltas"])]
    return [index / n for n in names]


# 1. Code from data ---------------------------------------------------------------------------------


def test_an_index_pointing_at_a_py_file_never_runs_it(index_copy, tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').write('ran')\ndef get_config():\n    raise SystemExit\n")
    meta = _meta(index_copy)
    meta["pipeline"]["path"] = str(evil)
    _write_meta(index_copy, meta)
    with pytest.raises(PipelineError, match="not a pipeline folder"):
        search_images(index_copy, [], k=3)
    assert not marker.exists()


def test_a_pipeline_folder_is_read_as_data(tmp_path):
    """Pipeline.load_folder refuses a folder without pipeline.json, and never imports anything from it."""
    marker = tmp_path / "marker"
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "pipeline.py").write_text(f"open({str(marker)!r}, 'w')\n")
    with pytest.raises(PipelineError, match="no pipeline.json"):
        Pipeline.load_folder(tmp_path / "p")
    assert not marker.exists()


# 2. Byte flips -----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", [0, 1, -1])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_a_flipped_byte_in_any_index_file_is_refused(index_copy, which, where):
    file = _index_files(index_copy)[which]
    data = bytearray(file.read_bytes())
    offset = {"start": 10, "middle": len(data) // 2, "end": len(data) - 3}[where]
    data[offset] ^= 0x5A
    file.write_bytes(bytes(data))
    with pytest.raises(StoredFileError, match=rf"{file.name}: sha256 [0-9a-f]{{64}}, but .*meta.json recorded"):
        GalleryIndex.open(str(index_copy))


def test_no_verify_still_refuses_a_damaged_faiss_header(index_copy):
    file = _index_files(index_copy)[0]
    data = bytearray(file.read_bytes())
    data[0:4] = b"XXXX"
    file.write_bytes(bytes(data))
    with pytest.raises(StoredFileError, match="damaged faiss index"):
        GalleryIndex.open(str(index_copy), verify=False)


def test_the_cli_reports_a_damaged_index_without_a_traceback(index_copy, built, capsys):
    file = _index_files(index_copy)[1]
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 1
    file.write_bytes(bytes(data))
    query = sorted(built[0].glob("*.png"))[0]
    assert main(["search", str(index_copy), str(query), "-k", "3"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and file.name in err and "Traceback" not in err


# 5. Damaged and ill-formed files ---------------------------------------------------------------------


def test_garbled_npz_is_refused_naming_the_file(index_copy):
    table = _index_files(index_copy)[1]
    table.write_bytes(b"PK\x03\x04" + os.urandom(200))
    meta = _meta(index_copy)
    meta["files"]["table"]["bytes"] = table.stat().st_size
    _write_meta(index_copy, meta)
    with pytest.raises(StoredFileError, match=rf"{table.name}: damaged or not an .npz archive"):
        GalleryIndex.open(str(index_copy), verify=False)


def test_meta_json_that_is_not_json_names_the_file(index_copy):
    (index_copy / "meta.json").write_text("{not json")
    with pytest.raises(StoredFileError, match=r"meta.json: not valid JSON"):
        GalleryIndex.open(str(index_copy))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("files"), "field 'files' is missing"),
    (lambda m: m.update(dim="256"), "field 'dim' is '256'"),
    (lambda m: m.update(deltas={"a": 1}), "field 'deltas'"),
    (lambda m: m["files"]["index"].update(bytes=-1), r"field 'files.index.bytes' is -1"),
])
def test_meta_json_fields_are_checked(index_copy, edit, message):
    meta = _meta(index_copy)
    edit(meta)
    _write_meta(index_copy, meta)
    with pytest.raises(StoredFileError, match=message):
        GalleryIndex.open(str(index_copy))


def _fitted_folder(ura_fitted, tmp_path) -> Path:
    return shutil.copytree(ura_fitted[1], tmp_path / "fitted")


@pytest.mark.usefixtures("fast_random_init")
def test_pipeline_json_with_a_missing_key_or_a_wrong_type_names_the_field(ura_fitted, tmp_path):
    folder = _fitted_folder(ura_fitted, tmp_path)
    info = json.loads((folder / "pipeline.json").read_text())
    (folder / "pipeline.json").write_text(json.dumps({k: v for k, v in info.items() if k != "config"}))
    with pytest.raises(StoredFileError, match="field 'config' is missing"):
        Pipeline.load(folder)
    (folder / "pipeline.json").write_text(json.dumps({**info, "config": [1, 2]}))
    with pytest.raises(StoredFileError, match="field 'config' is \\[1, 2\\] \\(list\\), expected a JSON object"):
        Pipeline.load(folder)
    (folder / "pipeline.json").write_text(json.dumps([info]))
    with pytest.raises(StoredFileError, match="pipeline.json: field 'top level'"):
        Pipeline.load(folder)


@pytest.mark.usefixtures("fast_random_init")
def test_a_pipeline_fitted_before_a_config_field_existed_is_told_to_be_fitted_again(ura_fitted, tmp_path):
    folder = _fitted_folder(ura_fitted, tmp_path)
    info = json.loads((folder / "pipeline.json").read_text())
    del info["config"]["embed"]["salient_points"]  # added to every config after this folder's tmrjax
    (folder / "pipeline.json").write_text(json.dumps(info))
    with pytest.raises(StoredFileError, match="field 'embed.salient_points' is missing; fitted by an earlier "
                                              "tmrjax.*fit the pipeline again"):
        Pipeline.load(folder)


@pytest.mark.usefixtures("fast_random_init")
def test_a_truncated_artefacts_npz_is_refused(ura_fitted, tmp_path):
    folder = _fitted_folder(ura_fitted, tmp_path)
    data = (folder / "artefacts.npz").read_bytes()
    (folder / "artefacts.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(StoredFileError, match="artefacts.npz: damaged or not an .npz archive"):
        Pipeline.load(folder)


@pytest.mark.usefixtures("fast_random_init")
def test_an_absurd_batch_size_is_refused_before_anything_is_allocated(ura_fitted, tmp_path):
    from ml_collections import ConfigDict

    from tmrjax.pipeline import config_hash

    folder = _fitted_folder(ura_fitted, tmp_path)
    info = json.loads((folder / "pipeline.json").read_text())
    info["config"]["batch_size"] = 10**12
    info["config_hash"] = config_hash(ConfigDict(info["config"]))  # a careful forger fixes the hash
    (folder / "pipeline.json").write_text(json.dumps(info))
    with pytest.raises(StoredFileError, match=r"batch_size=1000000000000 is outside \[1, 4096\]"):
        Pipeline.load(folder)


# 6. Names that leave the folder -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../other/index.000002.faiss", "/etc/passwd", "index.000002.faiss/../x"])
def test_stored_names_outside_the_folder_are_refused(index_copy, name):
    meta = _meta(index_copy)
    meta["files"]["index"]["name"] = name
    _write_meta(index_copy, meta)
    with pytest.raises(StoredFileError, match="is not a name of this folder's files"):
        GalleryIndex.open(str(index_copy), verify=False)


def test_a_symlinked_file_that_leaves_the_folder_is_refused(index_copy, tmp_path):
    file = _index_files(index_copy)[0]
    outside = tmp_path / "outside.faiss"
    shutil.move(file, outside)
    file.symlink_to(outside)
    with pytest.raises(StoredFileError, match="outside"):
        GalleryIndex.open(str(index_copy))


# 3 and 7. Folder walk, empty and missing inputs ---------------------------------------------------------


def test_a_symlink_loop_is_reported_and_the_rest_indexed(tmp_path):
    write_marks(tmp_path / "marks", count=5)
    (tmp_path / "marks" / "a.png").symlink_to(tmp_path / "marks" / "b.png")
    (tmp_path / "marks" / "b.png").symlink_to(tmp_path / "marks" / "a.png")
    report = index_folder(tmp_path / "marks", Pipeline.load(PIPELINE), tmp_path / "index", progress=False)
    assert report.total == 5
    assert {p for p, _ in report.failures.failures} == {"a.png", "b.png"}
    assert all("symbolic link loop" in r for _, r in report.failures.failures)


@pytest.mark.parametrize("folder", ["empty", "missing"])
def test_an_empty_or_missing_folder_indexes_nothing_and_leaves_nothing(tmp_path, folder):
    if folder == "empty":
        (tmp_path / "empty").mkdir()
    with pytest.raises((PipelineError, FileNotFoundError), match="no images found|does not exist"):
        index_folder(tmp_path / folder, Pipeline.load(PIPELINE), tmp_path / "index", progress=False)
    assert not (tmp_path / "index").exists()


@pytest.mark.usefixtures("fast_random_init")
def test_fit_refuses_a_codebook_too_large_for_its_images(tiny_config, tmp_path):
    from tmrjax.fit import fit_pipeline

    write_marks(tmp_path / "marks", count=3)
    config = tiny_config("rmac_ura", resolutions=(64,))
    config.embed.codebook_size = 64
    with pytest.raises(PipelineError, match=r"codebook of 64 words needs at least 640 regional descriptors.*"
                                            r"fit on at least \d+ images"):
        fit_pipeline(Pipeline.create(config), tmp_path / "marks", tmp_path / "fitted", progress=False)
    assert not (tmp_path / "fitted").exists()


# 4. Two writers -----------------------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_holder(built, tmp_path):
    out = tmp_path / "index"
    holder = rf"another tmrjax process is writing it \(pid {os.getpid()}"
    with WriterLock(out), pytest.raises(FolderLockedError, match=holder):
        index_folder(built[0], Pipeline.load(PIPELINE), out, progress=False)


def test_two_concurrent_index_runs_lose_no_mark(built, tmp_path):
    root = shutil.copytree(built[0], tmp_path / "marks")
    write_marks(root, count=60, start=100)
    out = tmp_path / "index"
    command = [sys.executable, "-m", "tmrjax.cli", "index", str(root), "--pipeline", PIPELINE, "--out", str(out),
               "--checkpoint-every", "10"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [(run.wait(timeout=600), run.stderr.read()) for run in runs]
    for code, err in outcomes:  # each run either finished or was turned away by the lock
        assert code == 0 or (code == 2 and "another tmrjax process is writing it" in err), err
        assert "Traceback" not in err
    assert any(code == 0 for code, _ in outcomes)
    if any(code != 0 for code, _ in outcomes):  # the refused run, re-run, finds nothing left to do
        assert subprocess.run(command, capture_output=True, text=True).returncode == 0
    index = GalleryIndex.open(str(out))
    assert sorted(index.ids) == list_images(root) and len(index) == 90


# 8. Queries and empty indexes ----------------------------------------------------------------------


def test_one_unreadable_query_does_not_cancel_the_others(built, tmp_path, capsys):
    good = sorted(built[0].glob("*.png"))[:2]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["search", str(built[1]), str(good[0]), str(bad), str(good[1]), "-k", "2", "--json"]) == 1
    captured = capsys.readouterr()
    results = json.loads(captured.out)["results"]
    assert [r.get("ranking", [{}])[0].get("id") for r in results] == [good[0].name, None, good[1].name]
    assert "not an image" in results[1]["error"] and str(bad) in captured.err
    failures = FailureLog()
    _, rankings = search_images(built[1], [bad, good[0]], k=1, failures=failures)
    assert rankings[0] is None and rankings[1][0][0] == good[0].name and len(failures) == 1


def test_searching_an_empty_index_says_so(built, tmp_path, capsys):
    pipeline = Pipeline.load(PIPELINE)
    GalleryIndex.create(str(tmp_path / "empty"), pipeline.dim, {"kind": "flat"}, pipeline.info())
    query = sorted(built[0].glob("*.png"))[0]
    assert main(["search", str(tmp_path / "empty"), str(query)]) == 0
    assert "is empty: nothing to rank" in capsys.readouterr().out


def test_format_1_indexes_open_without_verification_and_are_upgraded(index_copy, built):
    meta = _meta(index_copy)
    meta["format_version"] = 1
    for entry in [meta["files"]["index"], meta["files"]["table"], *meta["deltas"]]:
        del entry["sha256"]
    _write_meta(index_copy, meta)
    with pytest.raises(StoredFileError, match="records no checksums"):
        GalleryIndex.open(str(index_copy))
    index = GalleryIndex.open(str(index_copy), verify=False)
    index.save()
    assert _meta(index_copy)["format_version"] == 2
    assert len(GalleryIndex.open(str(index_copy))) == 30
    assert sorted(index.ids) == list_images(built[0])
