"""tmrjax/fit.py: PCA-whitening and the URA codebook + IDF learned on a gallery (tursun2021 Sec. 3)."""

import json

import numpy as np
import pytest
from tmrjax.kernels.idf import idf_from_document_frequency

from tmrjax.data.images import FailureLog, list_images
from tmrjax.data.sources import FolderSource, iter_batches
from tmrjax.fit import describe_fit, fit_pipeline, fit_pipelines, sample_rows
from tmrjax.pipeline import Pipeline, PipelineError, config_hash
from tmrjax.progress import format_duration

pytestmark = pytest.mark.usefixtures("fast_random_init")


def l2(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def fit_sample(ura_fitted, marks_dir):
    """Raw regional descriptors of every mark at every resolution: [(N, R, D') per resolution]."""
    pipeline, _ = ura_fitted
    per_resolution = [[] for _ in pipeline.resolutions]
    for batch in iter_batches(FolderSource(marks_dir), pipeline.resolutions, 4, FailureLog()):
        for out, images in zip(per_resolution, batch.images):
            raw, _ = pipeline.describe_features(pipeline.features_batch(images))
            out.append(np.asarray(raw, np.float64)[batch.valid])
    return [np.concatenate(out) for out in per_resolution]


def test_fit_writes_pipeline_json_and_artefacts(ura_fitted, marks_dir):
    pipeline, directory = ura_fitted
    info = json.loads((directory / "pipeline.json").read_text())
    assert info["format"] == "tmrjax-pipeline/2"
    assert info["name"] == "mr_rsmac_ura" and info["config_hash"] == config_hash(pipeline.config)
    assert info["dim"] == 16 and info["backbone"]["arch"] == "resnet50"
    assert info["data"]["images_used"] == 12 and info["data"]["images_skipped"] == 0
    assert info["data"]["pca_descriptors"] == 12 * 30 * 2  # every region of both resolutions
    with np.load(directory / "artefacts.npz") as z:
        assert sorted(z.files) == ["centroids", "idf", "pca_mean", "pca_projection"]
    idf = pipeline.artefacts.idf
    assert describe_fit(pipeline) == (
        f"PCA-whitening 512 -> 16 dims (from 720 descriptors) and a URA codebook of 8 words "
        f"(IDF {idf.min():.2f} .. {idf.max():.2f}) on 12 images in {format_duration(info['data']['seconds'])}"
    )


def test_pca_whitening_has_the_right_shape_and_whitens_the_fit_sample(ura_fitted, fit_sample):
    arts = ura_fitted[0].artefacts
    assert arts.pca_mean.shape == (512,) and arts.pca_projection.shape == (512, 16)
    assert arts.pca_mean.dtype == arts.pca_projection.dtype == np.float32
    sample = l2(np.concatenate([d.reshape(-1, d.shape[-1]) for d in fit_sample]))
    np.testing.assert_allclose(arts.pca_mean, sample.mean(axis=0), atol=1e-6)
    white = (sample - arts.pca_mean) @ arts.pca_projection.astype(np.float64)
    np.testing.assert_allclose(white.mean(axis=0), 0, atol=1e-4)
    covariance = np.cov(white, rowvar=False)
    np.testing.assert_allclose(covariance - np.diag(np.diag(covariance)), 0, atol=1e-4)
    # Identity up to the eps = 1e-6 that learn_pca_whitening adds to each eigenvalue.
    eigenvalues = np.linalg.eigvalsh(np.cov(sample, rowvar=False))[::-1][:16]
    np.testing.assert_allclose(np.diag(covariance), eigenvalues / (eigenvalues + 1e-6), rtol=1e-3)
    assert np.diag(covariance).min() > 0.95


def test_codebook_and_idf_are_the_document_frequencies_of_the_visual_words(ura_fitted, fit_sample):
    arts = ura_fitted[0].artefacts
    assert arts.centroids.shape == (8, 16) and arts.idf.shape == (8,)
    assert np.isfinite(arts.centroids).all() and np.isfinite(arts.idf).all()
    assert (arts.idf > 0).all()
    # Recount: every post-processed region's nearest word; one image = one document.
    mean, projection = arts.pca_mean, arts.pca_projection.astype(np.float64)
    regions = np.concatenate([l2((l2(d) - mean) @ projection) for d in fit_sample], axis=1)  # (N, 60, 16)
    distances = ((regions[:, :, None, :] - arts.centroids[None, None]) ** 2).sum(-1)
    words = distances.argmin(-1)
    df = np.array([sum(k in set(image) for image in words) for k in range(8)])
    assert df.sum() >= len(words)  # every image holds at least one word
    np.testing.assert_allclose(arts.idf, idf_from_document_frequency(df, len(words)), atol=1e-6)


def test_fit_is_deterministic_with_the_same_seed(small_fitted, tmp_path):
    first, _, _, folder = small_fitted
    again = fit_pipeline(Pipeline.create(first.config), folder, tmp_path / "again", progress=False)
    for name, array in first.artefacts.arrays().items():
        np.testing.assert_array_equal(getattr(again.artefacts, name), array, err_msg=name)
    assert (tmp_path / "again" / "pipeline.json").is_file()


def test_fitting_together_shares_backbone_passes_and_equals_fitting_alone(tiny_config, small_fitted, tmp_path,
                                                                          monkeypatch):
    ura, _, _, folder = small_fitted  # mr_rsmac_ura at 64 px, folder with one broken file
    other_tap = tiny_config("rmac", (64,))  # a second backbone group: another feature map
    other_tap.backbone.tap, other_tap.name = "conv3", "rmac_conv3"
    configs = [tiny_config("rmac", (64,)), tiny_config("rsmac", (64,)), ura.config, other_tap]
    alone = [fit_pipeline(Pipeline.create(c), folder, tmp_path / f"alone{i}", progress=False)
             for i, c in enumerate(configs)]

    passes = []
    original = Pipeline.features_batch
    monkeypatch.setattr(Pipeline, "features_batch",
                        lambda self, images: passes.append((self.name, images.shape[1])) or original(self, images))
    failures = FailureLog()
    together = fit_pipelines([Pipeline.create(c) for c in configs], folder,
                             [tmp_path / f"together{i}" for i in range(4)], failures=failures, progress=False)
    for a, b in zip(alone, together):
        for name, array in a.artefacts.arrays().items():
            np.testing.assert_allclose(getattr(b.artefacts, name), array, atol=1e-6, err_msg=f"{a.name} {name}")
    # 7 files in batches of 4: conv2 group 2 batches for PCA-w, its URA pass served by the feature
    # memo; conv3 2 for PCA-w. (Fitting alone: 2 + 2 + 2 + 2 = 8 passes.)
    assert len(passes) == 4 and [name for name, _ in passes].count("rmac_conv3") == 2
    assert [f[0] for f in failures.failures] == ["broken.png"]  # read by both groups, reported once
    info = json.loads((tmp_path / "together1" / "pipeline.json").read_text())
    assert info["data"]["fitted_with"] == ["rmac", "rsmac", "mr_rsmac_ura", "rmac_conv3"]  # one read of the sample


def test_fit_skips_unreadable_files_and_records_them(small_fitted):
    pipeline, directory, failures, _ = small_fitted
    [(path, reason)] = failures.failures
    assert path == "broken.png" and reason
    info = json.loads((directory / "pipeline.json").read_text())
    assert (info["data"]["images_used"], info["data"]["images_skipped"]) == (6, 1)
    assert info["data"]["pca_descriptors"] == 6 * 30
    assert pipeline.artefacts.idf.shape == (8,) and np.isfinite(pipeline.artefacts.idf).all()


def test_global_pooling_with_too_few_images_for_pca_whitening_fails_before_reading_them(
        tiny_config, marks_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(Pipeline, "features_batch", lambda *_: pytest.fail("read images before refusing"))
    config = tiny_config("spoc_pcaw", (96,))  # VGG16 SPoC, PCA-w to 16 dims; 12 marks
    with pytest.raises(PipelineError, match="spoc_pcaw pools one descriptor per image and resolution, so "
                                            "12 images give at most 12, too few to fit PCA-whitening to 16 dims; "
                                            "fit on more than 16"):
        fit_pipeline(Pipeline.create(config), marks_dir, tmp_path / "out", progress=False)


def test_fit_refuses_a_config_with_nothing_to_fit(tiny_config, marks_dir, tmp_path):
    with pytest.raises(PipelineError, match="mac: nothing to fit"):
        fit_pipeline(Pipeline.create(tiny_config("mac", (64,))), marks_dir, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_fit_refuses_a_folder_without_images(ura_fitted, tmp_path):
    (tmp_path / "notes.txt").write_text("no marks here")
    with pytest.raises(PipelineError, match="no images to fit on"):
        fit_pipeline(ura_fitted[0], tmp_path, tmp_path / "out", progress=False)


def test_sample_rows_is_a_seeded_subset_in_input_order(marks_dir):
    everything = FolderSource(marks_dir).ids
    assert everything == list_images(marks_dir) and len(everything) == 12
    assert sample_rows(len(everything), 100, seed=0) == list(range(12))
    subset = sample_rows(12, 5, seed=3)
    assert len(subset) == 5 and len(set(subset)) == 5 and set(subset) <= set(range(12))
    assert subset == sorted(subset)  # input order
    assert sample_rows(12, 5, seed=3) == subset
    assert any(sample_rows(12, 5, seed=s) != subset for s in range(4, 8))


def test_fitting_detects_the_points_of_each_image_once_over_its_passes(marks_dir, tiny_config, tmp_path, monkeypatch):
    """jeong2017_hessian's fit reads the images twice (first-order regions for the PCA bases, then
    second-order ones for PCA-w); the job's memo keeps the points detected in the first pass."""
    import tmrjax.data.sources as sources

    detected = []
    real = sources.padded_points
    monkeypatch.setattr(sources, "padded_points", lambda square: detected.append(square.shape) or real(square))
    config = tiny_config("jeong2017_hessian", (96,))
    config.embed.pca_whitening_dim = 8
    config.embed.candidate_points_min = 50
    fit_pipeline(Pipeline.create(config), marks_dir, tmp_path / "jeong", progress=False)
    images = len(list_images(marks_dir))
    assert detected == [(96, 96, 3)] * images


@pytest.mark.parametrize("name", ["jeong2017", "jeong2017_hessian"])
def test_second_order_fit_learns_local_pca_bases_from_first_order_regions(name, marks_dir, tiny_config, tmp_path):
    """jeong2017 Eq. 4: U^1 = the K' leading principal directions of the l2-normalised first-order
    descriptors (Eq. 3) of every valid candidate region of the fit images, checked against numpy's eigh;
    candidate regions on the map's peaks, or on the points detected in the images (`Batch.points`)."""
    config = tiny_config(name, (96,))
    config.embed.pca_whitening_dim = 8
    config.embed.candidate_points_min = 50  # hessian's N_min: the marks have more points at 96 px
    pipeline = fit_pipeline(Pipeline.create(config), marks_dir, tmp_path / "jeong", progress=False)
    first = []
    for batch in iter_batches(FolderSource(marks_dir), pipeline.resolutions, 4, FailureLog(),
                              point_sizes=pipeline.point_sizes):
        (points,) = pipeline.points_of(batch.points)
        descriptors, valid = pipeline.first_order_features(pipeline.features_batch(batch.images[0]), points)
        keep = np.asarray(valid) & batch.valid[:, None]
        first.append(np.asarray(descriptors, np.float64)[keep])
    sample = l2(np.concatenate(first))
    _, vectors = np.linalg.eigh(np.cov(sample, rowvar=False))
    leading = vectors[:, ::-1][:, :config.embed.local_dim]
    bases = pipeline.artefacts.local_projection.astype(np.float64)
    assert bases.shape == (pipeline.first_order_features_dim, config.embed.local_dim)
    # the same subspace, direction by direction (up to sign)
    np.testing.assert_allclose(np.abs(np.sum(bases * leading, axis=0)), 1.0, atol=1e-3)
    info = json.loads((tmp_path / "jeong" / "pipeline.json").read_text())
    assert info["data"]["local_descriptors"] == len(sample)
    assert "PCA bases of local descriptors" in describe_fit(pipeline)
