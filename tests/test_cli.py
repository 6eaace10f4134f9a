"""The `tmrjax` command line end to end: fit, index and search a folder of marks with bad files in it."""

import contextlib
import io
import json
import os
import re
import shutil

import numpy as np
import pytest
import tmrjax.configs.mac
from PIL import Image

from tmrjax.cli import main
from tmrjax.data.images import list_images
from tmrjax.index import GalleryIndex

pytestmark = pytest.mark.usefixtures("fast_random_init")

TINY_CONFIG = '''"""MR-R-SMAC w/URA (tursun2021 Table 2 'MR-R-SMAC w/URA') shrunk to test size."""

from tmrjax.configs.mr_rsmac_ura import get_config as paper_config


def get_config():
    c = paper_config()
    c.name = "tiny_mr_rsmac_ura"
    c.backbone.tap = "conv2"
    c.backbone.weights = "random"
    c.embed.resolutions = (64,)
    c.embed.pca_whitening_dim = 16
    c.embed.codebook_size = 8
    c.fit.kmeans_iterations = 10
    c.index.hnsw_m = 8
    c.index.ef_construction = 40
    c.index.ef_search = 40
    c.batch_size = 4
    return c
'''

# Files no decoder can use, and the reason the summary must give for each.
BAD_FILES = {
    "a/corrupt.png": "corrupt|not an image",
    "empty.jpg": r"empty file \(0 bytes\)",
    "c/notes.jpg": "not an image",
    "a/b/truncated.jpg": "truncated",
}
# Unusual but valid images: each must be indexed like any other mark.
ODD_FILES = ("odd/cmyk.jpg", "odd/grey16.png", "odd/rgba.png", "odd/one_pixel.png")


def tmrjax_cli(*args):
    """Run `tmrjax ARGS...` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def write_gallery(root, write_marks, draw_mark):
    """20 marks in nested folders, 4 odd-but-valid images and 4 broken files; returns the good ids."""
    good = write_marks(root, count=20)
    (root / "odd").mkdir()
    draw_mark(40).convert("CMYK").save(root / "odd/cmyk.jpg", quality=95)
    grey = np.asarray(draw_mark(41).convert("L"), np.uint16) * 257
    Image.fromarray(grey).save(root / "odd/grey16.png")
    rgba = draw_mark(42).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.where(np.asarray(draw_mark(42).convert("L")) < 250, 255, 0).astype(np.uint8)))
    rgba.save(root / "odd/rgba.png")
    Image.new("RGB", (1, 1), (200, 30, 30)).save(root / "odd/one_pixel.png")
    with Image.open(root / "odd/rgba.png") as img:
        assert img.mode == "RGBA"
    with Image.open(root / "odd/grey16.png") as img:
        assert img.mode.startswith("I")

    (root / "a/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (root / "empty.jpg").write_bytes(b"")
    (root / "c/notes.jpg").write_text("this is a text file with a .jpg name\n")
    buffer = io.BytesIO()
    draw_mark(43).save(buffer, "JPEG", quality=95)
    (root / "a/b/truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return sorted(good + list(ODD_FILES))


@pytest.fixture(scope="module")
def run(tmp_path_factory, mark_factory):
    """`tmrjax fit` then `tmrjax index` on the gallery, once for the module; their outputs."""
    draw_mark, write_marks = mark_factory
    base = tmp_path_factory.mktemp("cli")
    root = base / "gallery"
    good = write_gallery(root, write_marks, draw_mark)
    config = base / "tiny_mr_rsmac_ura.py"
    config.write_text(TINY_CONFIG)
    fit = tmrjax_cli("fit", root, "--pipeline", config, "--out", base / "fitted")
    index = tmrjax_cli(
        "index", root, "--pipeline", base / "fitted", "--out", base / "index", "--failures-json", base / "failures.json"
    )
    return {"base": base, "root": root, "good": good, "fitted": base / "fitted", "index": base / "index",
            "fit": fit, "index_run": index}


@pytest.fixture
def copy(run, tmp_path):
    """A copy of the gallery and its index, free to change: (root, index)."""
    return shutil.copytree(run["root"], tmp_path / "gallery"), shutil.copytree(run["index"], tmp_path / "index")


def summary_counts(stdout):
    """(total, added, re-embedded, unchanged, skipped) from `tmrjax index`'s summary line."""
    match = re.search(
        r"(\d+) marks \((\d+) added, (\d+) re-embedded after a content change, (\d+) unchanged, "
        r"\d+ removed as deleted, (\d+) skipped\)",
        stdout
    )
    assert match, stdout
    return tuple(int(g) for g in match.groups())


def top_results(stdout):
    """[(query, [(similarity, id), ...]), ...] from `tmrjax search`'s text output."""
    out = []
    for line in stdout.splitlines():
        if line.startswith("query "):
            out.append((line.split()[1], []))
        elif re.match(r"\s+\d+\s", line):
            _, similarity, id_ = line.split()
            out[-1][1].append((float(similarity), id_))
    return out


def copy_marks(source, root, count):
    """Copy the first `count` marks of the module gallery to `root`; return their ids."""
    ids = [i for i in list_images(source) if i.split("/")[-1].startswith("mark_")][:count]
    for i in ids:
        (root / i).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / i, root / i)
    return ids


@pytest.fixture
def tiny_mac(monkeypatch, shrink):
    """Make the config *name* `mac` give MAC on VGG16 at 64 px (the paper's is 300 px)."""
    paper = tmrjax.configs.mac.get_config
    monkeypatch.setattr(tmrjax.configs.mac, "get_config", lambda: shrink(paper(), (64,)))


# ----------------------------------------------------------------------------------------


def test_fit_exits_0_and_reports_every_unreadable_file(run):
    code, stdout, stderr = run["fit"]
    assert code == 0, stderr
    assert "RANDOMLY INITIALISED" in stdout
    took = r"in (\d+ min )?\d+ s"
    assert re.search(r"^fitted     PCA-whitening 512 -> 16 dims \(from [\d,]+ descriptors\) and a URA codebook of "
                     rf"8 words \(IDF [\d.]+ \.\. [\d.]+\) on 24 images \(4 skipped\) {took} -> ", stdout, re.M), stdout
    assert "\r" not in stderr and re.search(rf"^fit PCA-w tiny_mr_rsmac_ura: 28 img {took} \(", stderr, re.M), stderr
    assert "4 files skipped:" in stderr
    for path, reason in BAD_FILES.items():
        assert re.search(rf"^  {re.escape(path)}: .*({reason})", stderr, re.M), (path, stderr)
    info = json.loads((run["fitted"] / "pipeline.json").read_text())
    assert (info["name"], info["data"]["images_used"], info["data"]["images_skipped"]) == ("tiny_mr_rsmac_ura", 24, 4)


def test_index_exits_0_indexes_every_good_file_once_and_reports_every_bad_one(run):
    code, stdout, stderr = run["index_run"]
    assert code == 0, stderr
    assert summary_counts(stdout) == (24, 24, 0, 0, 4)
    assert "4 files skipped:" in stdout
    for path, reason in BAD_FILES.items():
        assert re.search(rf"^  {re.escape(path)}: .*({reason})", stdout, re.M), (path, stdout)
    ids = GalleryIndex.open(str(run["index"])).ids
    assert sorted(ids) == run["good"] and len(ids) == len(set(ids))
    failures = json.loads((run["base"] / "failures.json").read_text())
    assert failures["skipped"] == 4 and sorted(f["path"] for f in failures["failures"]) == sorted(BAD_FILES)


def test_search_finds_each_query_first_with_similarity_1(run):
    queries = ["mark_000.png", "a/b/mark_002.png", "c/d/e/mark_003.png", "mark_004.jpg", *ODD_FILES]
    code, stdout, stderr = tmrjax_cli("search", run["index"], *[run["root"] / q for q in queries], "-k", "3")
    assert code == 0, stderr
    results = top_results(stdout)
    assert [q for q, _ in results] == [str(run["root"] / q) for q in queries]
    for query, (_, ranking) in zip(queries, results):
        assert len(ranking) == 3
        assert ranking[0][1] == query and ranking[0][0] == pytest.approx(1.0, abs=1e-3), (query, ranking)
        assert ranking[0][0] >= ranking[1][0] >= ranking[2][0]


def test_search_json_parses_and_has_k_results(run):
    code, stdout, stderr = tmrjax_cli("search", run["index"], run["root"] / "a/mark_001.png", "-k", "5", "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["k"] == 5 and doc["pipeline"]["name"] == "tiny_mr_rsmac_ura" and doc["pipeline"]["dim"] == 16
    [result] = doc["results"]
    assert result["query"] == str(run["root"] / "a/mark_001.png")
    assert [r["rank"] for r in result["ranking"]] == [1, 2, 3, 4, 5]
    assert result["ranking"][0]["id"] == "a/mark_001.png"
    assert result["ranking"][0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    similarities = [r["similarity"] for r in result["ranking"]]
    assert similarities == sorted(similarities, reverse=True)
    assert {r["id"] for r in result["ranking"]} <= set(run["good"])


def test_indexing_again_after_adding_two_files_embeds_only_those(run, copy, mark_factory, embedded_ids):
    root, index = copy
    new = mark_factory[1](root / "new", count=2, start=50)
    code, stdout, stderr = tmrjax_cli("index", root, "--pipeline", run["fitted"], "--out", index)
    assert code == 0, stderr
    assert summary_counts(stdout) == (26, 2, 0, 24, 4)
    assert sorted(embedded_ids) == [f"new/{p}" for p in new]
    assert sorted(GalleryIndex.open(str(index)).ids) == sorted(run["good"] + [f"new/{p}" for p in new])


def test_editing_a_file_re_embeds_it(run, copy, mark_factory):
    root, index = copy
    edited = "c/d/e/mark_003.png"
    mark_factory[0](60, (100, 70)).save(root / edited)
    code, stdout, stderr = tmrjax_cli("index", root, "--pipeline", run["fitted"], "--out", index)
    assert code == 0, stderr
    assert summary_counts(stdout) == (24, 0, 1, 23, 4)
    code, stdout, _ = tmrjax_cli("search", index, root / edited, "-k", "2")
    [(_, ranking)] = top_results(stdout)
    assert ranking[0][1] == edited and ranking[0][0] == pytest.approx(1.0, abs=1e-3)


def test_hnsw_index_works(run, tmp_path):
    root = tmp_path / "gallery"
    good = copy_marks(run["root"], root, 8)
    code, stdout, stderr = tmrjax_cli("index", root, "--pipeline", run["fitted"], "--out", tmp_path / "hnsw",
                                      "--kind", "hnsw")
    assert code == 0, stderr
    assert summary_counts(stdout) == (8, 8, 0, 0, 0)
    index = GalleryIndex.open(str(tmp_path / "hnsw"))
    assert index.params["kind"] == "hnsw" and sorted(index.ids) == sorted(good)
    code, stdout, stderr = tmrjax_cli("search", tmp_path / "hnsw", root / good[5], "-k", "3", "--json")
    assert code == 0, stderr
    ranking = json.loads(stdout)["results"][0]["ranking"]
    assert len(ranking) == 3
    assert ranking[0]["id"] == good[5] and ranking[0]["similarity"] == pytest.approx(1.0, abs=1e-4)


def test_a_config_that_needs_no_fit_is_used_by_name(run, tmp_path, tiny_mac):
    root = tmp_path / "gallery"
    good = copy_marks(run["root"], root, 8)
    code, stdout, stderr = tmrjax_cli("index", root, "--pipeline", "mac", "--out", tmp_path / "index")
    assert code == 0, stderr
    assert "mac (MAC): vgg16 conv5_3" in stdout and summary_counts(stdout) == (8, 8, 0, 0, 0)
    code, stdout, stderr = tmrjax_cli("search", tmp_path / "index", root / good[3], "-k", "4", "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["pipeline"]["name"] == "mac" and doc["pipeline"]["dim"] == 512 and doc["pipeline"]["path"] is None
    ranking = doc["results"][0]["ranking"]
    assert len(ranking) == 4 and ranking[0]["id"] == good[3]
    assert ranking[0]["similarity"] == pytest.approx(1.0, abs=1e-4)


def test_indexing_with_an_unfitted_pca_config_name_fails_clearly(run, tmp_path):
    code, _, stderr = tmrjax_cli("index", run["root"], "--pipeline", "mr_rsmac_ura", "--out", tmp_path / "index")
    assert code == 2
    assert "tmrjax index: error: pipeline 'mr_rsmac_ura' needs fitted PCA-whitening/codebook" in stderr
    assert "`tmrjax fit IMAGES --pipeline mr_rsmac_ura --out DIR`" in stderr
    assert not (tmp_path / "index").exists()


def test_search_of_a_missing_index_fails_clearly(run, tmp_path):
    code, _, stderr = tmrjax_cli("search", tmp_path / "nowhere", run["root"] / "mark_000.png")
    assert code == 2 and "tmrjax search: error:" in stderr and "not a tmrjax index" in stderr


def test_a_broken_query_fails_clearly(run):
    """An unreadable query is reported (exit 1: the other queries, here none, are answered)."""
    code, _, stderr = tmrjax_cli("search", run["index"], run["root"] / "a/b/truncated.jpg")
    assert code == 1
    assert re.search(r"1 of 1 queries could not be read.*\n.*a/b/truncated.jpg: corrupt or truncated", stderr), stderr


def test_indexing_into_an_index_of_another_pipeline_fails_clearly(run, copy, tiny_mac):
    """A user error (wrong --pipeline for an existing index) must end in a message, not a traceback."""
    root, index = copy
    code, _, stderr = tmrjax_cli("index", root, "--pipeline", "mac", "--out", index)
    assert code == 2
    assert "tmrjax index: error:" in stderr and "vectors of two pipelines must not mix" in stderr


def test_search_with_k_0_fails_clearly(run, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse rejects it before anything runs
        main(["search", str(run["index"]), str(run["root"] / "mark_000.png"), "-k", "0"])
    assert exit_info.value.code == 2
    assert "argument -k: must be >= 1, got 0" in capsys.readouterr().err


def test_an_index_made_with_a_config_file_can_be_searched(run, tmp_path):
    """`tmrjax index --pipeline my_config.py` (a config that needs no fit) must give a searchable index."""
    config = tmp_path / "small_mac.py"
    config.write_text(
        '"""MAC (tursun2019 Table 5 \'MAC [25]\') at 64 px."""\n'
        "from tmrjax.configs.mac import get_config as paper_config\n\n\n"
        "def get_config():\n    c = paper_config()\n    c.name = 'small_mac'\n"
        "    c.embed.resolutions = (64,)\n    c.batch_size = 4\n    return c\n"
    )
    root = tmp_path / "gallery"
    good = copy_marks(run["root"], root, 8)
    code, stdout, stderr = tmrjax_cli("index", root, "--pipeline", config, "--out", tmp_path / "index",
                                      "--weights", "random")
    assert code == 0, stderr
    assert "RANDOMLY INITIALISED" in stdout
    code, stdout, stderr = tmrjax_cli("search", tmp_path / "index", root / good[0], "-k", "2")
    assert code == 0, stderr
    [(_, ranking)] = top_results(stdout)
    assert ranking[0][1] == good[0]


def test_version_and_help_name_the_workflow_and_the_pipelines(capsys):
    from tmrjax._version import __version__
    from tmrjax.cli import main

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"tmrjax {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "tmrjax fit GALLERY" in out and "tmrjax index FOLDER" in out and "tmrjax search INDEX" in out
    assert "jeong2017_lite0" in out and "rmac_lite0_hed" in out


def test_fitting_gives_scipys_openblas_every_core_and_then_one_again():
    """`tmrjax fit` runs under the CLI's one-thread limit; its large eigendecompositions lift it for their
    duration (8,256-d PCA-whitening: 46 s on one thread, 25 s on two)."""
    from threadpoolctl import threadpool_info

    from tmrjax.cli import single_threaded_lapack
    from tmrjax.lapack_threads import every_core_for_lapack, inside_scipy

    def scipys():
        return {i["filepath"]: i["num_threads"] for i in threadpool_info() if inside_scipy(i["filepath"])}

    limiter = single_threaded_lapack()
    try:
        if not scipys():
            pytest.skip("this scipy has no OpenBLAS of its own")
        with every_core_for_lapack():
            assert set(scipys().values()) == {os.cpu_count()}
        assert set(scipys().values()) == {1}
    finally:
        limiter.restore_original_limits()


def test_the_cli_runs_scipys_openblas_on_one_thread_and_leaves_numpys():
    """jaxlib's CPU eigh calls scipy's bundled OpenBLAS; numpy's is another library and keeps its threads."""
    from threadpoolctl import threadpool_info

    from tmrjax.cli import single_threaded_lapack
    from tmrjax.lapack_threads import inside_scipy

    before = {i["filepath"]: i["num_threads"] for i in threadpool_info()}
    limiter = single_threaded_lapack()
    try:
        after = {i["filepath"]: i["num_threads"] for i in threadpool_info()}
        scipys = [path for path in after if inside_scipy(path)]
        if not scipys:
            pytest.skip("this scipy has no OpenBLAS of its own")
        assert all(after[path] == 1 for path in scipys)
        assert all(after[path] == before[path] for path in after if path in before and not inside_scipy(path))
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
