"""tmrjax/pipeline.py: configs, the embedding against a numpy composition of the paper's
formulas (tursun2021 Eq. 1-4), input handling, and fitted artefacts on disk."""

import importlib
import json
import re
import shutil

import jax
import numpy as np
import pytest
from PIL import Image, ImageDraw
from tmrjax.kernels.aggregation import spatial_weights
from tmrjax.kernels.candidates import cluster_points, hull_masks
from tmrjax.kernels.regions import rmac_regions

import tmrjax
import tmrjax.pipeline
from tmrjax.data.images import FailureLog, prepare
from tmrjax.data.salient_points import detect_points, salient_points
from tmrjax.data.sources import ArraySource, iter_batches
from tmrjax.fileio import StoredFileError
from tmrjax.method_configs import PipelineError, available_configs, load_config
from tmrjax.pipeline import Pipeline, config_hash, validate_config
from tmrjax.stages import REGIONS, StageError

pytestmark = pytest.mark.usefixtures("fast_random_init")

# The methods the issue asks for (tursun2019 Table 5, tursun2021 Tables 1-2, and GeM).
ISSUE_METHODS = {"mac", "spoc", "spoc_pcaw", "crow", "gem", "rmac", "rsmac", "mr_rmac", "rmac_ura", "mr_rmac_ura",
                 "mr_rsmac_ura"}


# ----------------------------------------------------------------------------------------
# Configs


def test_every_method_of_the_issue_has_a_config():
    assert ISSUE_METHODS <= set(available_configs())


@pytest.mark.parametrize("name", available_configs())
def test_config_loads_validates_and_names_its_paper_table_row(name):
    config = load_config(name)
    validate_config(config)
    assert config.name == name
    doc = importlib.import_module(f"tmrjax.configs.{name}").__doc__
    assert doc and re.search(r"Table \d|Fig\. \d|^Not a paper row", doc, re.M), \
        f"configs/{name}.py: docstring names no paper table or figure (nor says it is not a paper row)"
    assert config.paper_row and config.paper_row in doc, \
        f"configs/{name}.py: paper_row {config.paper_row!r} not in docstring"


@pytest.mark.parametrize("name", sorted(ISSUE_METHODS))
def test_config_fields_agree_with_the_method_name(name):
    e = load_config(name).embed
    assert (len(e.resolutions) == 3) == name.startswith("mr_"), e.resolutions
    assert (e.region_weights == "idf") == name.endswith("_ura")
    regional = name.startswith("r") or name.startswith("mr_")
    assert (e.region_levels == 4) == regional and (e.regions == "rmac") == regional, (e.regions, e.region_levels)
    assert (e.pooling == "smac") == ("rsmac" in name)
    assert (e.pca_whitening_dim == 0) == (name == "mac")
    if name.startswith("mr_"):
        assert tuple(e.resolutions) == (160, 224, 320)


@pytest.mark.parametrize("name", sorted(ISSUE_METHODS))
def test_create_gives_the_paper_dimension(name):
    pipeline = Pipeline.create(name, weights="random")
    assert pipeline.dim == (512 if name == "mac" else 256)
    assert pipeline.backbone["arch"] == pipeline.config.backbone.arch
    assert pipeline.backbone["weights"] == "random-init(seed=0)"
    # D' before PCA-w: VGG16 conv5_3 has 512 channels, ResNet50 conv4 1,024; SMAC doubles it
    if name in ("mac", "rsmac"):
        assert pipeline.raw_dim == {"mac": 512, "rsmac": 2048}[name]


def test_create_refuses_pca_whitening_wider_than_the_descriptors():
    config = load_config("spoc_pcaw")  # VGG16 conv5_3: 512-d SPoC
    config.embed.pca_whitening_dim = 600
    with pytest.raises(PipelineError, match=r"spoc_pcaw: embed.pca_whitening_dim=600 exceeds the 512-d "
                                            r"descriptors of vgg16 conv5_3 \(weights: random-init"):
        Pipeline.create(config, weights="random")


def test_paper_configs_without_shipped_weights_ask_for_weights():
    """ImageNet VGG16/ResNet50 are a user-side conversion: no silent random initialisation."""
    with pytest.raises(PipelineError, match=r"mac: no default weights for its vgg16 backbone; pass converted "
                                            r"ones \(--weights DIR, see `tmrjax convert`\) or --weights random"):
        Pipeline.create("mac")


def test_distinct_configs_have_distinct_hashes():
    """Configs that make different vectors hash differently; those that differ only at search time
    (`search`: query expansion, DBA) make the same vectors and share their hash."""
    configs = {name: load_config(name) for name in available_configs()}
    hashes = {name: config_hash(c) for name, c in configs.items()}
    vectors_of = {}
    for name in configs:
        vectors_of.setdefault(hashes[name], []).append(name)
    for names in vectors_of.values():
        same = [{k: v for k, v in configs[n].to_dict().items() if k not in ("name", "paper_row", "search")}
                for n in names]
        assert all(s == same[0] for s in same), f"{names} share a hash but differ in more than search"
    assert len(vectors_of) == len(hashes) - sum(configs[n].search.query_expansion > 0 for n in configs), hashes
    assert all(re.fullmatch(r"[0-9a-f]{16}", h) for h in hashes.values())


def test_hash_covers_backbone_and_embed_only():
    base = load_config("mr_rsmac_ura")
    for section, field, value in [("embed", "region_levels", 3), ("embed", "resolutions", (224,)),
                                  ("backbone", "tap", "conv5"), ("embed", "include_full_map", True)]:
        c = load_config("mr_rsmac_ura")
        c[section][field] = value
        assert config_hash(c) != config_hash(base), (section, field)
    c = load_config("mr_rsmac_ura")
    c.batch_size, c.fit.seed, c.index.kind = 3, 7, "hnsw"
    assert config_hash(c) == config_hash(base)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("pooling", "max", "embed.pooling='max'"),
        ("region_weights", "softmax", "embed.region_weights='softmax'"),
        ("regions", "grid", "embed.regions='grid'"),
        ("spatial_attention", "cam", "embed.spatial_attention='cam'"),
        ("output", "pairs", "embed.output='pairs'"),
        ("resolutions", (16,), "embed.resolutions=(16,)"),
        ("region_levels", -1, "embed.region_levels=-1"),
    ],
)
def test_validate_config_names_the_bad_field(field, value, message):
    c = load_config("rmac")
    c.embed[field] = value
    with pytest.raises(PipelineError, match=re.escape(message)):
        validate_config(c)


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"salient_points": "harris"}, "embed.salient_points='harris'; expected one of ['alpha_peaks', 'hessian']"),
        ({"regions": "global", "pooling": "second_order"}, "salient_points='hessian' picks the points of candidate "
                                                           "regions; regions='global' has none"),
        ({"candidate_points_min": 500, "candidate_points": 400}, "candidate_points_min=500 (N_min) and "
                                                                 "candidate_points=400 (N_max) must satisfy"),
        ({"candidate_points": 5000}, "N_min <= N_max <= 4000"),
    ],
)
def test_validate_config_checks_the_salient_points(edit, message):
    c = load_config("jeong2017_hessian")
    c.embed.update(edit)
    with pytest.raises(PipelineError, match=re.escape(message)):
        validate_config(c)


def test_validate_config_rejects_ura_without_pca_whitening():
    c = load_config("rmac_ura")
    c.embed.pca_whitening_dim = 0
    with pytest.raises(PipelineError, match="rmac_ura: URA"):
        validate_config(c)


def test_unknown_config_name_lists_the_available_ones():
    with pytest.raises(PipelineError, match="unknown pipeline 'r_mac'.*mr_rsmac_ura"):
        load_config("r_mac")


def test_config_from_a_python_file(tmp_path):
    path = tmp_path / "my_method.py"
    path.write_text(
        "from tmrjax.configs.rmac import get_config as rmac\n\n"
        "def get_config():\n    c = rmac()\n    c.name = 'my_method'\n    c.embed.region_levels = 3\n    return c\n"
    )
    c = load_config(str(path))
    assert (c.name, c.embed.region_levels, c.embed.pooling) == ("my_method", 3, "mac")


# ----------------------------------------------------------------------------------------
# The embedding against numpy


def square_marks(draw_mark, count, size):
    return [np.asarray(draw_mark(seed, (size, size))) for seed in range(100, 100 + count)]


def resize(image, size):
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def numpy_mr_rsmac_ura(pipeline, images_per_resolution):
    """tursun2021 Eq. 1-4 with numpy loops: per region [sum, max] (SMAC), l2, PCA-w, l2,
    weight = IDF of the nearest centroid; sum over regions and resolutions; l2.

    Returns the (B, d) embeddings and the IDF weight given to every region."""
    e, arts, tap = pipeline.config.embed, pipeline.artefacts, pipeline.config.backbone.tap
    assert e.pooling == "smac" and e.region_weights == "idf"
    mean, projection = arts.pca_mean.astype(np.float64), arts.pca_projection.astype(np.float64)
    centroids, idf = arts.centroids.astype(np.float64), arts.idf.astype(np.float64)
    backbone = jax.jit(lambda variables, images: pipeline.module.apply(variables, images)[tap])
    total, weights = np.zeros((len(images_per_resolution[0]), projection.shape[1])), []
    for images in images_per_resolution:
        fmap = np.asarray(backbone(pipeline.variables, images), np.float64)
        boxes = rmac_regions(fmap.shape[1], fmap.shape[2], levels=e.region_levels, include_full_map=e.include_full_map)
        assert len(boxes) == 30  # S = 4 on a square map (tursun2021: N = 30)
        for b in range(len(fmap)):
            for y0, x0, y1, x1 in boxes:
                cells = fmap[b, y0:y1, x0:x1].reshape(-1, fmap.shape[3])
                region = np.concatenate([cells.sum(axis=0), cells.max(axis=0)])
                region = region / np.linalg.norm(region)
                white = (region - mean) @ projection
                white = white / np.linalg.norm(white)
                weight = idf[np.argmin(((centroids - white) ** 2).sum(axis=1))]
                total[b] += weight * white
                weights.append(weight)
    return total / np.linalg.norm(total, axis=1, keepdims=True), np.array(weights)


def test_embed_matches_numpy_composition_of_the_paper_formulas(ura_fitted, mark_factory):
    pipeline, _ = ura_fitted
    draw_mark, _ = mark_factory
    images = square_marks(draw_mark, 4, 80)  # 80 px: resized to both 64 and 96
    per_resolution = [np.stack([resize(im, s) for im in images]) for s in pipeline.resolutions]
    expected, weights = numpy_mr_rsmac_ura(pipeline, per_resolution)
    assert np.ptp(weights) > 0.1, "all regions weigh the same: the check could not see the IDF"
    np.testing.assert_allclose(pipeline.embed_batch(per_resolution), expected, atol=1e-4)
    np.testing.assert_allclose(tmrjax.embed(images, pipeline), expected, atol=1e-4)


def test_mac_embedding_is_the_l2_normalised_global_max(fast_random_init, tiny_config, mark_factory):
    pipeline = Pipeline.create(tiny_config("mac", resolutions=(64,)))
    images = np.stack(square_marks(mark_factory[0], 4, 64))
    backbone = jax.jit(lambda variables, x: pipeline.module.apply(variables, x)["conv5_3"])
    fmap = np.asarray(backbone(pipeline.variables, images), np.float64)
    expected = np.stack([m.reshape(-1, m.shape[-1]).max(axis=0) for m in fmap])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    got = tmrjax.embed(list(images), pipeline)
    assert got.shape == (4, 512)
    np.testing.assert_allclose(got, expected, atol=1e-5)


# jeong2017 variants that differ from a tested one only in PCA-w dimension, search-time fields or the
# shipped backbone of another tested variant take the same code path (~20 s each on two cores).
SAME_PATH = {"jeong2017_128", "jeong2017_512", "jeong2017_qe", "jeong2017_qe_lite0", "jeong2017_qe_hed",
             "jeong2017_first_order_lite0", "jeong2017_first_order_hed", "jeong2017_whole_lite0", "jeong2017_whole_hed",
             "jeong2017_hessian_lite0"}


@pytest.mark.parametrize("name", [n for n in available_configs()
                                  if "parts" not in load_config(n) and n not in SAME_PATH])
def test_every_pipeline_config_fits_and_embeds(name, tiny_config, marks_dir, mark_factory, tmp_path):
    from tmrjax.fit import fit_pipeline
    from tmrjax.pipeline import needs_fit

    multi_resolution = len(load_config(name).embed.resolutions) > 1
    config = tiny_config(name, resolutions=(64, 96) if multi_resolution else (96,))
    if config.embed.regions != "rmac" and config.embed.pca_whitening_dim:
        config.embed.pca_whitening_dim = 8  # global pooling: 12 marks give 12 descriptors (candidates: a few more)
    pipeline = Pipeline.create(config)
    if needs_fit(config):
        pipeline = fit_pipeline(pipeline, marks_dir, tmp_path / name, progress=False)
    vectors = tmrjax.embed([np.asarray(mark_factory[0](s)) for s in range(3)], pipeline)
    assert vectors.shape == (3, *pipeline.vector_shape) and np.isfinite(vectors).all()
    norms = np.linalg.norm(vectors, axis=-1)
    np.testing.assert_allclose(norms[norms > 0], 1.0, atol=1e-5)  # region vectors: invalid regions are zero
    assert (norms > 0).any(axis=-1).all() if vectors.ndim == 3 else True
    assert pipeline.dim == (pipeline.raw_dim if not config.embed.pca_whitening_dim else config.embed.pca_whitening_dim)


# ----------------------------------------------------------------------------------------
# jeong2017's salient points detected in the image (embed.salient_points = "hessian")


def _hessian_marks(draw_mark):
    """Six marks with more than 50 detected points at 96 px, a small disc with fewer, and a white square."""
    disc = Image.new("RGB", (96, 96), "white")
    ImageDraw.Draw(disc).ellipse([40, 40, 52, 52], fill="black")
    blank = np.full((80, 80, 3), 255, np.uint8)
    return [np.asarray(draw_mark(s).convert("RGB")) for s in range(6)] + [np.asarray(disc), blank]


def test_hessian_candidate_regions_are_the_hulls_of_detected_points_ranked_by_alpha(tiny_config, mark_factory):
    """jeong2017 Sec. 2 end to end: the masks a pipeline builds from the points its load workers detect
    equal those built by hand from `detect_points`, the numpy `salient_points` (N_max, N_min fallback),
    `cluster_points` and `hull_masks` on the same square image and map."""
    config = tiny_config("jeong2017_hessian", (96,))
    config.embed.candidate_points_min = 50  # N_min: the marks have more points at 96 px, the disc and white fewer
    pipeline, e = Pipeline.create(config), config.embed
    images = _hessian_marks(mark_factory[0])
    (batch,) = iter_batches(ArraySource(images), (96,), 8, FailureLog(), point_sizes=pipeline.point_sizes)
    features = pipeline.features_batch(batch.images[0])
    (points,) = pipeline.points_of(batch.points)
    found = REGIONS["candidates"](features, e, points)
    assert found.masks.shape == (8, 8, 6, 6) and found.valid.shape == (8, 8)
    fallbacks = 0
    for i, image in enumerate(images):
        square = prepare(image, 96)
        np.testing.assert_array_equal(batch.images[0][i], square)
        detected, _ = detect_points(square)
        alpha = np.asarray(spatial_weights(features[i]))
        kept, valid = salient_points(detected, alpha, 96, count=e.candidate_points, n_max=e.candidate_points,
                                     n_min=e.candidate_points_min)
        fallbacks += len(detected) < e.candidate_points_min
        labels = cluster_points(kept, valid, e.candidate_clusters)
        masks, masks_valid = hull_masks(kept, valid, labels, e.candidate_clusters, 6, 6)
        np.testing.assert_array_equal(np.asarray(found.masks[i]), np.asarray(masks), err_msg=f"image {i}")
        np.testing.assert_array_equal(np.asarray(found.valid[i]), np.asarray(masks_valid), err_msg=f"image {i}")
        alone = REGIONS["candidates"](features[i:i + 1], e, jax.tree.map(lambda x, i=i: x[i:i + 1], points))
        np.testing.assert_array_equal(np.asarray(alone.masks[0]), np.asarray(masks), err_msg=f"image {i} alone")
    assert fallbacks == 2  # the disc and the white square: their N_min largest-alpha cells


def test_hessian_pipeline_detects_points_wherever_images_come_in(tiny_config, mark_factory):
    """`tmrjax.embed` (through the load workers) and `Pipeline.embed_batch` (prepared squares) detect the
    same points; the vectors differ from those on the map's own peaks; without points the regions refuse."""
    def config(salient_points):
        c = tiny_config("jeong2017_hessian", (64, 96))
        c.embed.pooling, c.embed.pca_whitening_dim, c.embed.salient_points = "first_order", 0, salient_points
        return c  # nothing to fit

    pipeline = Pipeline.create(config("hessian"))
    assert pipeline.point_sizes == (64, 96)
    images = _hessian_marks(mark_factory[0])[:4]
    vectors = tmrjax.embed(images, pipeline, batch_size=3)
    assert vectors.shape == (4, 16, 512) and vectors.dtype == np.float32
    squares = [np.stack([prepare(image, size) for image in images]) for size in pipeline.resolutions]
    np.testing.assert_array_equal(pipeline.embed_batch(squares), vectors)
    peaks = Pipeline.create(config("alpha_peaks"))
    assert peaks.point_sizes == () and peaks.points_of({}) == [None, None]
    assert np.abs(tmrjax.embed(images, peaks) - vectors).max() > 1e-2
    with pytest.raises(StageError, match="salient_points='hessian' builds regions on points detected"):
        pipeline.embed_features([pipeline.features_batch(s) for s in squares])
    with pytest.raises(PipelineError, match=r"none came for sizes \[64, 96\]"):
        pipeline.points_of({})


def test_embed_gives_unit_float32_rows(ura_fitted, mark_factory):
    pipeline, _ = ura_fitted
    vectors = tmrjax.embed([np.asarray(mark_factory[0](s)) for s in range(5)], pipeline)
    assert vectors.shape == (5, 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert tmrjax.embed([], pipeline).shape == (0, 16)


def test_arrays_pil_images_and_paths_give_the_same_vectors(ura_fitted, marks_dir):
    pipeline, _ = ura_fitted
    paths = sorted(str(p) for p in marks_dir.rglob("*.png"))[:3] + sorted(str(p) for p in marks_dir.rglob("*.jpg"))[:1]
    pils = [Image.open(p) for p in paths]
    arrays = [np.asarray(pil.convert("RGB")) for pil in pils]
    from_paths = tmrjax.embed(paths, pipeline)
    assert from_paths.shape == (4, 16)
    np.testing.assert_allclose(tmrjax.embed(pils, pipeline), from_paths, atol=1e-6)
    np.testing.assert_allclose(tmrjax.embed(arrays, pipeline), from_paths, atol=1e-6)
    for pil in pils:
        pil.close()


def test_wide_and_tall_images_are_padded_to_a_white_square(ura_fitted, mark_factory):
    pipeline, _ = ura_fitted
    draw_mark, _ = mark_factory
    wide, tall = np.asarray(draw_mark(7, (120, 60))), np.asarray(draw_mark(8, (50, 110)))
    wide_square = np.full((120, 120, 3), 255, np.uint8)
    wide_square[30:90] = wide
    tall_square = np.full((110, 110, 3), 255, np.uint8)
    tall_square[:, 30:80] = tall
    got = tmrjax.embed([wide, tall], pipeline)
    np.testing.assert_allclose(got, tmrjax.embed([wide_square, tall_square], pipeline), atol=1e-6)
    # and not, say, stretched to the square
    stretched = resize(wide, 120)
    assert np.abs(got[0] - tmrjax.embed([stretched], pipeline)[0]).max() > 1e-2


def test_batch_size_does_not_change_the_vectors(small_fitted, mark_factory):
    pipeline = small_fitted[0]
    images = [np.asarray(mark_factory[0](s)) for s in range(20, 26)]  # 6 images: last batch of 4 padded
    by_four = tmrjax.embed(images, pipeline, batch_size=4)
    by_one = tmrjax.embed(images, pipeline, batch_size=1)
    assert by_four.shape == by_one.shape == (6, 16)
    np.testing.assert_allclose(by_one, by_four, atol=1e-5)
    np.testing.assert_allclose(tmrjax.embed(images[4:], pipeline), by_four[4:], atol=1e-5)


# ----------------------------------------------------------------------------------------
# Fitted artefacts on disk


@pytest.fixture
def fitted_copy(ura_fitted, tmp_path):
    """A copy of the fitted directory, free to edit."""
    return shutil.copytree(ura_fitted[1], tmp_path / "fitted")


def edit_json(path, edit):
    info = json.loads(path.read_text())
    edit(info)
    path.write_text(json.dumps(info))


def test_load_round_trips_a_fitted_directory(ura_fitted, mark_factory):
    pipeline, directory = ura_fitted
    loaded = Pipeline.load(directory)
    assert config_hash(loaded.config) == config_hash(pipeline.config)
    assert json.loads(loaded.config.to_json()) == json.loads(pipeline.config.to_json())
    assert loaded.path == directory and loaded.dim == 16 and loaded.backbone == pipeline.backbone
    for name, array in pipeline.artefacts.arrays().items():
        np.testing.assert_array_equal(getattr(loaded.artefacts, name), array, err_msg=name)
    images = [np.asarray(mark_factory[0](s)) for s in range(4)]
    np.testing.assert_allclose(tmrjax.embed(images, loaded), tmrjax.embed(images, pipeline), atol=1e-6)
    assert loaded.info()["config_hash"] == pipeline.info()["config_hash"]


def test_load_refuses_a_pipeline_json_whose_config_was_edited(fitted_copy):
    edit_json(fitted_copy / "pipeline.json", lambda info: info["config"]["embed"].update(region_levels=3))
    with pytest.raises(StoredFileError, match="does not match its recorded hash"):
        Pipeline.load(fitted_copy)


def test_load_refuses_artefacts_of_the_wrong_shape(fitted_copy):
    from ml_collections import ConfigDict

    def edit(info):
        info["config"]["embed"]["pca_whitening_dim"] = 8
        info["config_hash"] = config_hash(ConfigDict(info["config"]))

    edit_json(fitted_copy / "pipeline.json", edit)
    with pytest.raises(PipelineError, match=r"PCA projection is \(512, 16\), expected \(512, 8\)"):
        Pipeline.load(fitted_copy)


def test_load_refuses_artefacts_fitted_for_another_config(fitted_copy, small_fitted):
    """artefacts.npz of a one-resolution variant has the same shapes; it must still be refused."""
    shutil.copy(small_fitted[1] / "artefacts.npz", fitted_copy / "artefacts.npz")
    with pytest.raises(PipelineError):
        Pipeline.load(fitted_copy)


def _fake_load_backbone(path, arch, taps, dtype):
    """Two fake converted checkpoints, .../weights_a and .../weights_b, of different sources."""
    from tmrjax.models import build_backbone

    sha = {"weights_a": "a" * 64, "weights_b": "b" * 64}[str(path).rsplit("/", 1)[-1]]
    meta = {"layout": "torchvision", "source": {"sha256": sha}}
    variables = tmrjax.pipeline.random_variables(arch, "torchvision")  # conftest's fast init
    return build_backbone(arch, "torchvision", taps, dtype=dtype), variables, meta


def test_load_refuses_other_backbone_weights_than_the_fitted_ones(fitted_copy, monkeypatch):
    monkeypatch.setattr(tmrjax.pipeline, "load_backbone", _fake_load_backbone)
    # fitted on random init, given converted weights
    with pytest.raises(PipelineError, match="fitted with backbone weights"):
        Pipeline.load(fitted_copy, weights="/ckpt/weights_a")
    # fitted on weights_a (as pipeline.json records), given weights_b
    edit_json(
        fitted_copy / "pipeline.json",
        lambda info: info["backbone"].update(weights="/ckpt/weights_a", source_sha256="a" * 64),
    )
    assert Pipeline.load(fitted_copy).backbone["source_sha256"] == "a" * 64
    with pytest.raises(PipelineError, match="fitted with backbone weights"):
        Pipeline.load(fitted_copy, weights="/ckpt/weights_b")


def test_pca_whitened_config_refuses_to_embed_without_artefacts(tiny_config, mark_factory):
    pipeline = Pipeline.create(tiny_config("rmac", resolutions=(64,)))
    with pytest.raises(PipelineError, match=r"rmac: needs PCA-whitening; run `tmrjax fit`"):
        tmrjax.embed([np.asarray(mark_factory[0](0))], pipeline)
    with pytest.raises(PipelineError, match=r"needs fitted PCA-whitening.*`tmrjax fit IMAGES --pipeline rmac"):
        Pipeline.load("rmac")


def test_ura_config_refuses_to_embed_without_a_codebook(ura_fitted, mark_factory):
    fitted, _ = ura_fitted
    arts = tmrjax.pipeline.Artefacts(pca_mean=fitted.artefacts.pca_mean, pca_projection=fitted.artefacts.pca_projection)
    pipeline = Pipeline(fitted.config, fitted.module, fitted.variables, fitted.backbone, arts)
    with pytest.raises(PipelineError, match=r"needs a URA codebook and IDF; run `tmrjax fit`"):
        tmrjax.embed([np.asarray(mark_factory[0](0))], pipeline)


def test_load_of_a_folder_without_pipeline_json_says_so(tmp_path):
    with pytest.raises(PipelineError, match=r"no pipeline.json; not a fitted pipeline \(see `tmrjax fit`\)"):
        Pipeline.load(tmp_path)
