"""Work done once per bytes: the vector cache across commands, the feature memo within a job,
and a start-up that imports only what a command needs."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import tmrjax.evaluation
import tmrjax.fit
from tmrjax.data.images import FailureLog, pixels_key
from tmrjax.data.sources import ArraySource, FolderSource
from tmrjax.evaluation import export_benchmark, fit_and_embed, run_eval
from tmrjax.fit import fit_pipeline
from tmrjax.gallery import index_folder, search_images
from tmrjax.pipeline import Pipeline
from tmrjax.runner import FeatureMemo, embed_all
from tmrjax.vector_cache import PipelineVectors, VectorCache

pytestmark = pytest.mark.usefixtures("fast_random_init")


@pytest.fixture
def backbone_rows(monkeypatch):
    """sha256 of every image row sent through a backbone, per resolution (white padding left out)."""
    seen: dict[int, list[str]] = {}
    original = Pipeline.features_batch

    def spy(self, images):
        white = np.full(images.shape[1:], 255, np.uint8)
        for row in np.asarray(images):
            if not np.array_equal(row, white):
                seen.setdefault(images.shape[1], []).append(hashlib.sha256(row.tobytes()).hexdigest())
        return original(self, images)

    monkeypatch.setattr(Pipeline, "features_batch", spy)
    return seen


# ----------------------------------------------------------------------------------------
# The store


def test_vectors_come_back_after_a_flush_and_from_a_new_process_view(tmp_path):
    store = PipelineVectors(tmp_path / "h", (3,))
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3)
    store.put(["a", "b"], vectors)
    np.testing.assert_array_equal(store.get(["b", "a"]), vectors[::-1])  # served before any flush
    assert store.get(["a", "c"]) is None  # one missing key: none served
    store.flush()
    again = PipelineVectors(tmp_path / "h", (3,))
    assert len(again) == 2
    np.testing.assert_array_equal(again.get(["a", "b"]), vectors)
    assert again.get([]).shape == (0, 3)


def test_a_chunk_without_its_keys_file_or_with_a_broken_one_is_not_read(tmp_path):
    store = PipelineVectors(tmp_path, (2,))
    store.put(["a"], np.ones((1, 2), np.float32))
    store.flush()
    [keys] = tmp_path.glob("*.keys.npy")
    (tmp_path / "0000.vectors.npy").write_bytes(b"half written")  # killed before its keys
    (tmp_path / "ffff.keys.npy").write_bytes(b"not an npy file")
    again = PipelineVectors(tmp_path, (2,))
    assert len(again) == 1 and again.get(["a"]) is not None
    keys.unlink()
    assert len(PipelineVectors(tmp_path, (2,))) == 0


def test_vectors_of_another_shape_under_the_same_hash_are_not_served(tmp_path):
    store = PipelineVectors(tmp_path, (2,))
    store.put(["a"], np.ones((1, 2), np.float32))
    store.flush()
    assert PipelineVectors(tmp_path, (4,)).get(["a"]) is None


def test_pixels_key_follows_the_pixels_not_the_file(tmp_path, mark_factory):
    image = mark_factory[0](3).convert("RGB")
    image.save(tmp_path / "a.png", compress_level=1)
    image.save(tmp_path / "b.png", compress_level=9, optimize=True)
    a, b = (np.asarray(Image.open(tmp_path / n).convert("RGB")) for n in ("a.png", "b.png"))
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()
    assert pixels_key(a) == pixels_key(b)
    c = a.copy()
    c[0, 0, 0] ^= 1
    assert pixels_key(c) != pixels_key(a)
    assert pixels_key(a) != pixels_key(np.ascontiguousarray(a.transpose(1, 0, 2)))  # same bytes count, other shape


# ----------------------------------------------------------------------------------------
# Embedding through the cache


def test_a_second_embedding_of_the_same_pixels_runs_no_backbone_and_gives_the_same_vectors(
        tmp_path, tiny_config, mark_factory, backbone_rows):
    pipeline = Pipeline.create(tiny_config("mac"))
    images = [np.asarray(mark_factory[0](s).convert("RGB")) for s in range(6)]
    cache = VectorCache(tmp_path)
    _, (first,) = embed_all(ArraySource(images), [pipeline], FailureLog(), progress=False, cache=cache)
    assert {size: len(rows) for size, rows in backbone_rows.items()} == {64: 6, 96: 6}
    backbone_rows.clear()
    _, (again,) = embed_all(ArraySource(images[::-1]), [pipeline], FailureLog(), progress=False,
                            cache=VectorCache(tmp_path))
    assert backbone_rows == {}
    np.testing.assert_array_equal(again, first[::-1])
    config = tiny_config("mac")
    config.embed.resolutions = (64,)
    other = Pipeline.create(config)  # another config, another vectors_hash: nothing shared
    embed_all(ArraySource(images), [other], FailureLog(), progress=False, cache=VectorCache(tmp_path))
    assert {size: len(rows) for size, rows in backbone_rows.items()} == {64: 6}


def test_cached_images_are_not_searched_for_salient_points_and_keep_their_vectors(
        marks_dir, tiny_config, tmp_path, monkeypatch):
    """jeong2017_hessian ranks points detected in the image: embedding 5 of 12 marks, then all 12, then
    all again, detects each mark's points once; the second batch of 4 holds one cached mark and three
    new ones, and the cached one keeps its vector."""
    import tmrjax.data.sources as sources

    config = tiny_config("jeong2017_hessian", (96,))
    config.embed.pca_whitening_dim = 8
    config.embed.candidate_points_min = 50
    pipeline = fit_pipeline(Pipeline.create(config), marks_dir, tmp_path / "fit", progress=False)
    detected = []
    real = sources.padded_points
    monkeypatch.setattr(sources, "padded_points", lambda square: detected.append(square.tobytes()) or real(square))
    source = FolderSource(marks_dir)

    def embed(rows=None):
        _, (vectors,) = embed_all(source, [pipeline], FailureLog(), rows=rows, progress=False,
                                  cache=VectorCache(tmp_path / "cache"))
        return vectors

    first = embed(range(5))
    assert len(detected) == 5
    everything = embed()
    assert len(detected) == len(set(detected)) == len(source)
    np.testing.assert_array_equal(everything[:5], first)
    again = embed()
    assert len(detected) == len(source)
    np.testing.assert_array_equal(again, everything)
    fresh = embed_all(source, [pipeline], FailureLog(), progress=False)[1][0]  # no cache: all detected again
    assert len(detected) == 2 * len(source)
    np.testing.assert_allclose(fresh, everything, atol=1e-5)


def test_index_and_search_after_eval_embed_nothing(configs_dir, bench, tmp_path, backbone_rows):
    """`tmrjax eval` on a labelled folder, then `tmrjax index` of the same marks with the pipeline it
    fitted, then a search with one of them: one backbone pass per image and resolution in all."""
    folder = export_benchmark(bench, tmp_path / "marks")
    cache = VectorCache(tmp_path / "cache")
    run_eval(f"folder:{folder}", [str(configs_dir / "tiny_rmac.py")], tmp_path / "eval", fit_images=6,
             progress=False, log=lambda *_: None, cache=cache)
    [fitted] = (tmp_path / "eval" / "cache").glob("*/tiny_rmac-*/pipeline")
    counts = {size: len(rows) for size, rows in backbone_rows.items()}
    assert all(len(rows) == len(set(rows)) == len(bench) for rows in backbone_rows.values()), counts
    report = index_folder(folder, Pipeline.load(fitted), tmp_path / "index", progress=False, cache=cache)
    assert report.added == len(bench)
    query = folder / "queries" / "000" / "g0-1.png"
    _, [ranking] = search_images(tmp_path / "index", [query], k=3, cache=cache)
    assert ranking[0] == ("queries/000/g0-1.png", pytest.approx(1.0, abs=1e-5))
    assert {size: len(rows) for size, rows in backbone_rows.items()} == counts


# ----------------------------------------------------------------------------------------
# The feature memo of one job


def test_fit_and_embed_pass_each_image_through_the_backbone_once_per_resolution(configs_dir, bench, tmp_path,
                                                                                backbone_rows, monkeypatch):
    """PCA-w and URA fitting (two passes over the gallery sample) and embedding the database
    (which holds the sample) share one memo; the vectors equal those of a job without one."""
    config = str(configs_dir / "tiny_mr_rsmac_ura.py")
    _, (memoised,) = fit_and_embed(bench, [Pipeline.create(config)], [tmp_path / "fit"], fit_images=6,
                                   progress=False, log=lambda *_: None)
    assert sorted(backbone_rows) == [64, 96]
    for size, rows in backbone_rows.items():
        assert len(rows) == len(set(rows)) == len(bench), size
    backbone_rows.clear()
    for module in (tmrjax.evaluation, tmrjax.fit):  # a memo without room: every pass runs the backbone
        monkeypatch.setattr(module, "FeatureMemo", lambda: FeatureMemo(max_bytes=0))
    _, (without,) = fit_and_embed(bench, [Pipeline.create(config)], [tmp_path / "fit2"], fit_images=6,
                                  progress=False, log=lambda *_: None)
    # the 6 sampled marks: once per fitting pass (PCA-w, URA), then once more embedded
    assert {size: len(rows) for size, rows in backbone_rows.items()} == {64: len(bench) + 12, 96: len(bench) + 12}
    np.testing.assert_allclose(without, memoised, atol=1e-6)


def test_a_memo_admits_until_full_and_then_keeps_what_it_holds():
    memo = FeatureMemo(max_bytes=2 * 4 * 3)
    for key in "abc":
        memo.put(("k", 8, key), np.zeros(3, np.float32))
    assert memo.full and memo.get(("k", 8, "a")) is not None and memo.get(("k", 8, "c")) is None
    assert (memo.computed, memo.served) == (3, 1)


# ----------------------------------------------------------------------------------------
# Start-up


def test_help_and_version_do_not_import_jax():
    code = ("import sys; from tmrjax.cli import main\n"
            "for argv in (['--help'], ['--version']):\n"
            "    try: main(argv)\n"
            "    except SystemExit: pass\n"
            "assert 'jax' not in sys.modules and 'flax' not in sys.modules\n"
            "import tmrjax; assert 'jax' not in sys.modules\n"
            "tmrjax.Pipeline; assert 'jax' in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert "tmrjax fit GALLERY" in result.stdout and "jeong2017_lite0" in result.stdout
