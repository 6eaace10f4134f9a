"""Shared fixtures for the pipeline / fit / gallery / CLI tests: tiny configs, synthetic marks.

Two things keep these tests fast on a CPU without changing what they check:

- a persistent XLA compilation cache in a per-session temporary directory: every `Pipeline`
  jits its own closures, so two pipelines of one config (or `fit`, then `index`, then
  `search` in the CLI) would otherwise compile the same backbone again;
- `fast_random_init`: random backbone variables drawn with numpy (He-normal kernels, identity
  batch norm) and cached per (arch, layout, seed), instead of jitting the full `module.init`
  (~30 s for ResNet50 on two busy cores). They stand in for `tmrjax.weights.random_variables`
  inside `tmrjax.pipeline` only; nothing here checks the values of the random weights;
- one BLAS / OpenMP thread for numpy and faiss: on a shared, overloaded CPU their thread
  pools spin against each other (a 512 x 512 eigvalsh: 2.6 s with threads, 0.01 s without).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile

# Eight CPU devices for the data-parallel training tests; must be set before jax is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import faiss
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

faiss.omp_set_num_threads(1)

# The commands' user cache (compiled functions, vectors; `tmrjax.vector_cache`) in a per-session
# temporary directory, never the user's own.
os.environ["TMRJAX_CACHE"] = tempfile.mkdtemp(prefix="tmrjax-test-cache-")
_COMPILATION_CACHE = os.path.join(os.environ["TMRJAX_CACHE"], "jax")
jax.config.update("jax_compilation_cache_dir", _COMPILATION_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def pytest_unconfigure(config):
    shutil.rmtree(os.environ["TMRJAX_CACHE"], ignore_errors=True)


# ----------------------------------------------------------------------------------------
# Backbones and configs


@functools.cache
def _numpy_random_variables(arch: str, layout: str, seed: int = 0) -> dict:
    from tmrjax.weights import full_backbone

    module = full_backbone(arch, layout)
    shapes = jax.eval_shape(module.init, jax.random.key(seed), jnp.zeros((1, 64, 64, 3)))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":  # He-normal over the fan-in (all axes but the output channels)
            std = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.standard_normal(leaf.shape, np.float32) * std)
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="session")
def fast_random_init():
    """Make `Pipeline.create(config)` (no weights) use cached numpy random variables."""
    import tmrjax.pipeline

    patch = pytest.MonkeyPatch()
    patch.setattr(tmrjax.pipeline, "random_variables", _numpy_random_variables)
    yield
    patch.undo()


def make_tiny_config(name: str, resolutions=(64, 96)):
    """A method config shrunk to test size (see `shrink_config`)."""
    from tmrjax.pipeline import load_config

    return shrink_config(load_config(name), resolutions)


def shrink_config(c, resolutions=(64, 96)):
    """The same method at test size: a few seconds to fit and embed a few dozen marks.

    ResNet50 configs tap conv2 (256 channels, R-SMAC 512-d) instead of conv4 so that the
    PCA eigen-decomposition stays small (1,024-d costs ~10 s more per fit on a busy CPU);
    PCA-w to 16 dims, 8 visual words, 8-d local descriptors (second order), batches of 4;
    randomly initialised backbones.
    """
    c.embed.resolutions = tuple(resolutions)
    c.backbone.weights = "random"  # the tests check the machinery, not the features
    if c.backbone.arch == "resnet50":
        c.backbone.tap = "conv2"
    if c.embed.pca_whitening_dim:
        c.embed.pca_whitening_dim = 16
    c.embed.codebook_size = 8
    c.embed.local_dim = 8  # second-order pooling: 36-d log-covariance vectors
    c.batch_size = 4
    c.fit.num_images = 1000
    c.fit.max_descriptors = 100_000
    c.fit.kmeans_iterations = 10
    c.index.hnsw_m = 8
    c.index.ef_construction = 40
    c.index.ef_search = 40
    return c


@pytest.fixture(scope="session")
def tiny_config():
    """`tiny_config(name, resolutions=(64, 96))`: see `shrink_config`."""
    return make_tiny_config


@pytest.fixture(scope="session")
def shrink():
    """`shrink(config, resolutions=(64, 96))`: see `shrink_config`."""
    return shrink_config


# ----------------------------------------------------------------------------------------
# Synthetic trademarks


_PALETTE = [(200, 30, 30), (20, 120, 40), (30, 60, 200), (240, 170, 0), (120, 0, 140), (0, 0, 0), (0, 150, 160)]
_SIZES = [(96, 96), (128, 80), (72, 120), (64, 64), (150, 100)]


def draw_mark(seed: int, size: tuple[int, int] | None = None) -> Image.Image:
    """A deterministic synthetic logo on white: a few filled shapes, an outline and a word."""
    rng = np.random.default_rng(1000 + seed)
    w, h = size or _SIZES[seed % len(_SIZES)]
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    for k in range(2 + seed % 3):
        colour = _PALETTE[(seed + 3 * k) % len(_PALETTE)]
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        x1, y1 = int(rng.integers(x0 + 8, w)), int(rng.integers(y0 + 8, h))
        shape = (seed + k) % 4
        if shape == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif shape == 2:
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=3 + seed % 5)
    draw.rectangle((1, 1, w - 2, h - 2), outline=_PALETTE[seed % len(_PALETTE)], width=1 + seed % 3)
    word = "".join(chr(65 + int(c)) for c in rng.integers(0, 26, 3 + seed % 4))
    draw.text((4 + seed % 9, h // 2), word, fill=(0, 0, 0), font=ImageFont.load_default())
    return img


MARK_FOLDERS = ("", "a", "a/b", "c/d/e")


def write_marks(root, count: int = 20, start: int = 0) -> list[str]:
    """Write `count` marks under `root` in nested folders; return their relative paths, sorted."""
    paths = []
    for seed in range(start, start + count):
        folder = MARK_FOLDERS[seed % len(MARK_FOLDERS)]
        suffix = ".jpg" if seed % 5 == 4 else ".png"
        rel = f"{folder}/mark_{seed:03d}{suffix}".lstrip("/")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        image = draw_mark(seed)
        if suffix == ".jpg":
            image.save(root / rel, quality=95)
        else:
            image.save(root / rel)
        paths.append(rel)
    return sorted(paths)


@pytest.fixture(scope="session")
def marks_dir(tmp_path_factory):
    """A read-only gallery of 12 synthetic marks in nested folders (copy it before changing it)."""
    root = tmp_path_factory.mktemp("marks")
    write_marks(root, count=12)
    return root


def assert_taps_match(got: dict, expected: dict, taps, rtol: float, label: str, record_property) -> None:
    """Every tap of a converted backbone against the original framework's activations: same
    names, shapes and float32, and max|diff| / max|activation| <= rtol (recorded per tap)."""
    import json

    assert sorted(got) == sorted(expected) == sorted(taps)
    errors = {}
    for tap, ref in expected.items():
        assert got[tap].shape == ref.shape, tap
        assert got[tap].dtype == np.float32, tap
        scale = float(np.abs(ref).max())
        assert scale > 0, f"{tap}: all-zero reference activations"
        errors[tap] = float(np.abs(got[tap] - ref).max()) / scale
    record_property("max_relative_error", json.dumps(errors))
    bad = {tap: e for tap, e in errors.items() if not e <= rtol}
    assert not bad, f"{label}: max|diff| / max|activation| above {rtol}: {bad}"


@pytest.fixture(scope="session")
def taps_match():
    """`taps_match(got, expected, taps, rtol, label, record_property)`: see `assert_taps_match`."""
    return assert_taps_match


@pytest.fixture(scope="session")
def mark_factory():
    """`draw_mark(seed, size=None) -> PIL image` and `write_marks(root, count, start)`."""
    return draw_mark, write_marks


@pytest.fixture
def embedded_ids(monkeypatch):
    """The ids that `index_folder` (and so `tmrjax index`) sends through the pipeline, in order."""
    import tmrjax.gallery

    seen = []
    original = tmrjax.gallery.embed_stream

    def spy(*args, **kwargs):
        for ids, vectors in original(*args, **kwargs):
            seen.extend(ids)
            yield ids, vectors

    monkeypatch.setattr(tmrjax.gallery, "embed_stream", spy)
    return seen


# ----------------------------------------------------------------------------------------
# Fitted MR-R-SMAC w/URA pipelines shared by the pipeline, fit and gallery tests


@pytest.fixture(scope="session")
def ura_fitted(fast_random_init, marks_dir, tmp_path_factory):
    """(pipeline, directory): tiny `mr_rsmac_ura` (64 + 96 px) fitted on `marks_dir`."""
    from tmrjax.fit import fit_pipeline
    from tmrjax.pipeline import Pipeline

    out = tmp_path_factory.mktemp("fitted") / "mr_rsmac_ura"
    pipeline = fit_pipeline(Pipeline.create(make_tiny_config("mr_rsmac_ura")), marks_dir, out, progress=False)
    return pipeline, out


@pytest.fixture(scope="session")
def small_fitted(fast_random_init, tmp_path_factory):
    """(pipeline, directory, failures, folder): tiny `mr_rsmac_ura` at 64 px only, fitted on
    6 marks and one broken file; its artefacts have the shapes of `ura_fitted`'s."""
    from tmrjax.data.images import FailureLog
    from tmrjax.fit import fit_pipeline
    from tmrjax.pipeline import Pipeline

    base = tmp_path_factory.mktemp("small")
    write_marks(base / "marks", count=6, start=30)
    (base / "marks" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    failures = FailureLog()
    config = make_tiny_config("mr_rsmac_ura", resolutions=(64,))
    pipeline = fit_pipeline(Pipeline.create(config), base / "marks", base / "fitted", failures=failures, progress=False)
    return pipeline, base / "fitted", failures, base / "marks"


# ----------------------------------------------------------------------------------------
# A tiny in-memory benchmark for `tmrjax eval`


def tiny_benchmark(draw_mark):
    """3 groups of 3 (one mark drawn at three sizes) + 6 distractors, as tfds-like records."""
    from tmrjax.data.sources import Benchmark

    queries, gallery = [], []
    for group in range(3):
        for member, size in enumerate([(96, 96), (128, 80), (72, 120)]):
            image = np.asarray(draw_mark(group, size).convert("RGB"))
            queries.append({"image": image, "id": f"g{group}-{member}".encode(), "group": group})
    for i in range(6):
        gallery.append({"image": np.asarray(draw_mark(100 + i).convert("RGB")), "id": f"d{i}".encode(), "group": -1})
    return Benchmark.from_records("tiny/bench", queries, gallery)


@pytest.fixture
def bench():
    return tiny_benchmark(draw_mark)


@pytest.fixture
def fake_benchmark(monkeypatch, bench):
    """`bench`, returned by `tmrjax.evaluation.open_benchmark` whatever it is asked for."""
    import tmrjax.evaluation

    monkeypatch.setattr(tmrjax.evaluation, "open_benchmark", lambda *a, **k: bench)
    return bench


# ----------------------------------------------------------------------------------------
# Tiny config files for `tmrjax eval`

TINY_EVAL_CONFIGS = {
    "tiny_mac": "c = mac.get_config(); c.name = 'tiny_mac'",
    "tiny_rmac": "c = rmac.get_config(); c.name = 'tiny_rmac'; c.backbone.tap = 'conv2'",
    "tiny_mr_rsmac_ura": (
        "c = mr_rsmac_ura.get_config(); c.name = 'tiny_mr_rsmac_ura'; c.backbone.tap = 'conv2'; "
        "c.embed.resolutions = (64, 96)"
    ),
}


@pytest.fixture
def configs_dir(tmp_path):
    """A folder of tiny eval configs (.py files, random weights, batches of 4): TINY_EVAL_CONFIGS."""
    for name, body in TINY_EVAL_CONFIGS.items():
        (tmp_path / f"{name}.py").write_text(
            "from tmrjax.configs import mac, rmac, mr_rsmac_ura\n\n\n"
            "def get_config():\n"
            f"    {body}\n"
            "    c.backbone.weights = 'random'\n"
            "    if c.backbone.arch == 'vgg16':\n"
            "        c.embed.resolutions = (64,)\n"
            "    if c.embed.pca_whitening_dim:\n"
            "        c.embed.pca_whitening_dim = 8\n"
            "    c.embed.codebook_size = 8\n"
            "    c.batch_size = 4\n"
            "    return c\n"
        )
    return tmp_path
