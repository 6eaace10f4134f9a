"""Combined pipelines: several pipelines' vectors side by side (tmrjax.pipeline.CombinedPipeline).

Checked against the parts themselves: the combined vector is each part's vector scaled by
sqrt(w / sum w), concatenated; so its cosine is the w-weighted mean of the parts' cosines.
Fitting, saving, loading, indexing, searching and `tmrjax eval` must all give those vectors.
"""

from __future__ import annotations

import numpy as np
import pytest
from tmrjax.configs.common import combined_config

from tmrjax import embed
from tmrjax.fileio import StoredFileError
from tmrjax.pipeline import CombinedPipeline, Pipeline, PipelineError, config_hash

pytestmark = pytest.mark.usefixtures("fast_random_init")


@pytest.fixture(scope="module")
def combined(tiny_config):
    """Tiny R-MAC on ResNet50 conv2 (64 px, fitted) + MAC on VGG16 (96 px, no fit), weights 3 : 1."""
    parts = {"resnet": tiny_config("rmac", resolutions=(64,)), "vgg": tiny_config("mac", resolutions=(96,))}
    return combined_config("tiny_pair", "R-MAC + MAC", parts, {"resnet": 3.0, "vgg": 1.0})


@pytest.fixture(scope="module")
def fitted(combined, marks_dir, tmp_path_factory):
    from tmrjax.fit import fit_pipeline

    out = tmp_path_factory.mktemp("combined") / "pair"
    return fit_pipeline(Pipeline.create(combined), marks_dir, out, progress=False), out


def test_create_gives_a_combined_pipeline_over_the_union_of_resolutions(combined):
    pipe = Pipeline.create(combined)
    assert isinstance(pipe, CombinedPipeline)
    assert list(pipe.parts) == ["resnet", "vgg"] and pipe.resolutions == (64, 96)
    assert pipe.dim == 16 + 512  # PCA-w 16 (tiny) + VGG16 conv5_3 MAC
    assert pipe.backbone["weights"] == "random-init(seed=0) + random-init(seed=0)"
    with pytest.raises(PipelineError, match="parts name their own weights"):
        Pipeline.create(combined, weights="random")


def test_vectors_are_the_scaled_parts_and_cosines_their_weighted_mean(fitted, marks_dir):
    pipe, _ = fitted
    files = [str(p) for p in sorted(marks_dir.rglob("*.png"))[:5]]
    got = embed(files, pipe)
    parts = {name: embed(files, part) for name, part in pipe.parts.items()}
    expected = np.concatenate([np.sqrt(0.75) * parts["resnet"], np.sqrt(0.25) * parts["vgg"]], axis=1)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosines = {name: v @ v.T for name, v in parts.items()}
    np.testing.assert_allclose(got @ got.T, 0.75 * cosines["resnet"] + 0.25 * cosines["vgg"], atol=1e-5)


def test_fit_saves_every_part_and_load_gives_the_same_vectors(fitted, marks_dir):
    pipe, out = fitted
    assert (out / "pipeline.json").is_file()
    assert (out / "parts" / "resnet" / "artefacts.npz").is_file()  # fitted part
    assert (out / "parts" / "vgg" / "pipeline.json").is_file()  # MAC: nothing to fit, still recorded
    loaded = Pipeline.load(out)
    assert isinstance(loaded, CombinedPipeline) and config_hash(loaded.config) == config_hash(pipe.config)
    assert loaded.info()["vectors_hash"] == pipe.info()["vectors_hash"]
    files = [str(p) for p in sorted(marks_dir.rglob("*.png"))[:3]]
    np.testing.assert_allclose(embed(files, loaded), embed(files, pipe), atol=1e-6)


def test_a_changed_part_is_refused(fitted, tmp_path):
    import json
    import shutil

    _, out = fitted
    copy = tmp_path / "pair"
    shutil.copytree(out, copy)
    info = json.loads((copy / "pipeline.json").read_text())
    info["config"]["parts"]["vgg"]["embed"]["pooling"] = "spoc"
    (copy / "pipeline.json").write_text(json.dumps(info))
    with pytest.raises(StoredFileError, match="does not match its recorded hash"):
        Pipeline.load(copy)


def test_index_and_search_a_folder_with_a_combined_pipeline(fitted, marks_dir, tmp_path):
    from tmrjax.gallery import index_folder, search_images

    pipe, _ = fitted
    report = index_folder(marks_dir, pipe, tmp_path / "index", progress=False)
    assert report.total > 0 and not len(report.failures)
    query = sorted(marks_dir.rglob("*.png"))[2]
    searched, [ranking] = search_images(tmp_path / "index", [query], k=3)
    assert isinstance(searched, CombinedPipeline)
    assert ranking[0][0] == str(query.relative_to(marks_dir)) and ranking[0][1] == pytest.approx(1.0, abs=1e-4)


def test_eval_scores_the_combined_vectors(combined, fake_benchmark, tmp_path):
    from tmrjax.evaluation import run_eval

    rows, _ = run_eval("tiny/bench", [combined, combined.parts.resnet, combined.parts.vgg], tmp_path / "run",
                       fit_images=6, progress=False, log=lambda *_: None, report_queries=1)
    assert [r.method for r in rows] == ["tiny_pair", "rmac", "mac"]
    assert rows[0].dim == rows[1].dim + rows[2].dim
    assert rows[0].weights == "random-init+random-init"
    cache = tmp_path / "run" / "cache"
    pair, rmac, mac = (np.load(next(cache.glob(f"*/{n}-*/vectors.npy"))) for n in ("tiny_pair", "rmac", "mac"))
    np.testing.assert_allclose(pair, np.concatenate([np.sqrt(0.75) * rmac, np.sqrt(0.25) * mac], axis=1), atol=1e-6)


def test_fitting_names_a_part_by_its_combined_pipeline_in_progress_lines(combined, tiny_config, marks_dir,
                                                                       tmp_path, capsys):
    """A part's config may share its name with a pipeline fitted beside it (rmac_lite0_hed's parts are
    rmac_lite0 and rmac_hed at other settings): fitting both says which is which."""
    from tmrjax.fit import fit_pipelines

    alone = tiny_config("rmac", resolutions=(64,))
    fit_pipelines([Pipeline.create(alone), Pipeline.create(combined)], marks_dir, [tmp_path / "a", tmp_path / "b"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fit PCA-w")]
    assert lines and all(line.startswith(f"fit PCA-w {alone.name}+tiny_pair.resnet:") for line in lines), lines
