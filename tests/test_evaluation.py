"""tmrjax/evaluation.py and tmrjax/report.py: `tmrjax eval` on a tiny in-memory benchmark."""

import json

import numpy as np
import pytest
from PIL import Image

import tmrjax
import tmrjax.evaluation as evaluation
from tmrjax.evaluation import embed_benchmark, export_benchmark, format_table, run_eval
from tmrjax.metrics import evaluate
from tmrjax.pipeline import Pipeline

pytestmark = pytest.mark.usefixtures("fast_random_init")

# the configs `configs_dir` (conftest) writes, in table order
TINY_CONFIGS = ("tiny_mac", "tiny_rmac", "tiny_mr_rsmac_ura")


def test_benchmark_rows_groups_and_relevance(bench):
    assert len(bench) == 15 and bench.num_queries == 9
    assert bench.groups.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] + [-1] * 6
    assert [r.tolist() for r in bench.relevant][:4] == [[0, 1, 2], [0, 1, 2], [0, 1, 2], [3, 4, 5]]
    assert bench.id(9) == "d0" and bench.image(0).shape == (96, 96, 3)
    assert bench.gallery().ids == [f"d{i}" for i in range(6)]


def test_shared_backbone_passes_give_the_same_vectors_as_embed(configs_dir, bench):
    config = evaluation.load_config(str(configs_dir / "tiny_rmac.py"))
    config.embed.pca_whitening_dim = 0  # no fit needed for this comparison
    a = Pipeline.create(config)
    config = config.copy_and_resolve_references()
    config.embed.pooling = "smac"
    b = Pipeline.create(config)
    assert a.backbone_key == b.backbone_key
    shared = embed_benchmark(bench, [a, b], progress=False)
    images = [bench.image(r) for r in range(len(bench))]
    np.testing.assert_allclose(shared[0], tmrjax.embed(images, a), atol=1e-5)
    np.testing.assert_allclose(shared[1], tmrjax.embed(images, b), atol=1e-5)


def test_eval_prints_the_papers_table_writes_results_and_report_and_caches(configs_dir, fake_benchmark, tmp_path,
                                                                          monkeypatch):
    names = [str(configs_dir / f"{n}.py") for n in TINY_CONFIGS]
    out = tmp_path / "run"
    rows, report = run_eval("tiny/bench", names, out, fit_images=6, progress=False, log=lambda *_: None)
    assert [r.method for r in rows] == list(TINY_CONFIGS)
    assert [r.dim for r in rows] == [512, 8, 8]
    for r in rows:
        assert 0.0 <= r.nar <= 1.0 and 0.0 <= r.map_at_100 <= 1.0 and r.protocol == "metu-official"
        assert r.weights == "random-init"

    # The table's numbers are the metric on the cached vectors.
    vectors = sorted((out / "cache").glob("*/*/vectors.npy"))
    assert len(vectors) == 3
    mac_vectors = np.load(next(v for v in vectors if "tiny_mac" in str(v)))
    direct = evaluate(mac_vectors, fake_benchmark.query_rows, fake_benchmark.relevant, k=100)
    assert rows[0].nar == pytest.approx(direct.nar) and rows[0].map_at_100 == pytest.approx(direct.map_at_k)

    table = format_table(rows, "tiny/bench")
    assert "Method" in table and "DIM" in table and "NAR" in table and "MAP@100" in table
    assert "protocol: metu-official" in table and "random-init" in table
    saved = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in saved["rows"]] == list(TINY_CONFIGS)

    assert report.name == "index.html" and report.is_file()
    page = report.read_text()
    sheets = sorted(report.parent.glob("*.png"))
    assert len(sheets) == 3
    from tmrjax.report import LABEL, PAD, THUMB

    # 8 sample queries requested, but one per group and only 3 groups: 3 rows of query + top 10.
    assert Image.open(sheets[0]).size == (PAD + 11 * (THUMB + PAD), PAD + 3 * (THUMB + LABEL + PAD))
    assert "Green frame" in page
    top10 = json.loads((report.parent / "top10.json").read_text())
    first = top10["tiny_mac"][0]
    assert first["query"] == "g0-0" and len(first["results"]) == 10
    assert [r["rank"] for r in first["results"]] == list(range(1, 11))

    # A second run evaluates from the cache: nothing is built, fitted or embedded.
    def refuse(*a, **k):
        raise AssertionError("a cached pipeline was rebuilt")

    monkeypatch.setattr(evaluation.Pipeline, "create", refuse)
    again, _ = run_eval("tiny/bench", names, out, fit_images=6, progress=False, log=lambda *_: None)
    assert [(r.nar, r.map_at_100, r.map) for r in again] == [(r.nar, r.map_at_100, r.map) for r in rows]


def test_hu2024_protocol_is_reported_as_such(configs_dir, fake_benchmark, tmp_path):
    rows, _ = run_eval("tiny/bench", [str(configs_dir / "tiny_mac.py")], tmp_path / "run", protocol="hu2024",
                       progress=False, log=lambda *_: None, report_queries=2)
    assert rows[0].protocol == "hu2024"
    assert "protocol: hu2024" in format_table(rows, "tiny/bench")


def test_export_writes_the_labelled_folder_layout(tmp_path, bench):
    out = export_benchmark(bench, tmp_path / "marks")
    queries = sorted(str(p.relative_to(out / "queries")) for p in (out / "queries").rglob("*.png"))
    gallery = sorted(p.name for p in (out / "gallery").iterdir())
    assert queries[:3] == ["000/g0-0.png", "000/g0-1.png", "000/g0-2.png"] and len(queries) == 9
    assert gallery == [f"d{i}.png" for i in range(6)]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "queries" / "000" / "g0-1.png")), bench.image(1))


def test_a_labelled_folder_evaluates_like_the_benchmark_it_was_exported_from(configs_dir, bench, tmp_path,
                                                                              monkeypatch):
    """`--dataset folder:PATH` on an export: the same database order, groups, vectors and table."""
    folder = export_benchmark(bench, tmp_path / "marks")
    names = [str(configs_dir / f"{n}.py") for n in TINY_CONFIGS]
    with monkeypatch.context() as patch:
        patch.setattr(evaluation, "open_benchmark", lambda *a, **k: bench)
        expected, _ = run_eval("tiny/bench", names, tmp_path / "a", fit_images=6, progress=False, log=lambda *_: None)
    rows, report = run_eval(f"folder:{folder}", names, tmp_path / "b", fit_images=6, progress=False,
                            log=lambda *_: None)
    assert [(r.method, r.dim, r.nar, r.map_at_100, r.map) for r in rows] == [
        (r.method, r.dim, r.nar, r.map_at_100, r.map) for r in expected]
    assert report.is_file() and "queries/000/g0-0.png" in report.read_text()


def _converted(root, arch, seed):
    from tmrjax.weights import random_variables, save_backbone

    return save_backbone(root / f"{arch}-{seed}", arch, "torchvision", random_variables(arch, "torchvision", seed),
                         {"file": f"{arch}.pth", "sha256": f"{seed:064x}"})


def test_each_pipeline_takes_the_weights_of_its_architecture(configs_dir, fake_benchmark, tmp_path):
    vgg = _converted(tmp_path, "vgg16", 1)
    lines = []
    names = [str(configs_dir / "tiny_mac.py"), str(configs_dir / "tiny_rmac.py")]
    rows, _ = run_eval("tiny/bench", names, tmp_path / "run", weights=[vgg], progress=False,
                       log=lines.append, report_queries=2)
    assert [r.weights for r in rows] == ["vgg16-1-00000000", "random-init"]  # directory name + sha256[:8]
    assert any("tiny_rmac: its resnet50 backbone is RANDOMLY INITIALISED" in line for line in lines)  # its config's
    # The VGG row used the converted weights: the same vectors as a pipeline built on them.
    expected = embed_benchmark(fake_benchmark, [Pipeline.create(evaluation.load_config(names[0]), weights=vgg)],
                               progress=False)[0]
    cached = next((tmp_path / "run" / "cache").glob("*/tiny_mac-*/vectors.npy"))
    np.testing.assert_allclose(np.load(cached), expected, atol=1e-6)


def test_weights_by_arch_refuses_two_of_one_architecture_and_non_backbones(tmp_path):
    from tmrjax.weights import WeightsError

    first, second = _converted(tmp_path, "vgg16", 1), _converted(tmp_path, "vgg16", 2)
    assert evaluation.weights_by_arch(first) == {"vgg16": str(first)}
    assert evaluation.weights_by_arch(None) == {}
    with pytest.raises(WeightsError, match="are both vgg16 backbones; give one per architecture"):
        evaluation.weights_by_arch([first, second])
    with pytest.raises(WeightsError, match="no meta.json; not a tmrjax backbone checkpoint"):
        evaluation.weights_by_arch([tmp_path])


def test_table_columns_fit_their_longest_entry_and_name_each_rows_weights():
    from tmrjax.evaluation import Row

    rows = [Row("spoc", "SPoC with centre prior", 256, 0.2118, 0.3307, 0.3455, "metu-official", "vgg16-tv-1a2b3c4d"),
            Row("mr_rsmac_ura", "MR-R-SMAC w/URA", 256, 0.2284, 0.2501, 0.2685, "metu-official", "random-init")]
    lines = format_table(rows, "logo_groups/small").splitlines()
    header, rule, *body = lines[1:]
    assert len(rule) >= max(len(line) for line in body)
    for column in ("DIM", "NAR", "MAP@100"):  # right-aligned numbers end where their heading ends
        end = header.index(column) + len(column)
        assert all(line[end - 1] != " " and line[end] == " " for line in body), column
    assert body[0].endswith("vgg16-tv-1a2b3c4d") and body[1].endswith("random-init")
    single = format_table(rows[1:], "x").splitlines()
    assert "weights" not in single[1] and single[2] == "-" * len(single[1])


# ----------------------------------------------------------------------------------------
# Revisited Oxford / Paris: query crops that are not in the database, Easy / Medium / Hard


REVISITED_DB = [f"landmark{mark}_{i:06d}" for mark in range(2) for i in range(4)]
REVISITED_QUERIES = ["landmark0_000100", "landmark1_000100", "landmark0_000101"]
REVISITED_SIZES = [(96, 80), (120, 96), (80, 110), (100, 100)]


def _revisited_gnd() -> list[dict]:
    """Per query of landmark m: its first two images easy, the third hard, the fourth junk (revisitop's dicts)."""
    gnd = []
    for name in REVISITED_QUERIES:
        first = 4 * int(name[len("landmark")])
        gnd.append({"bbx": [8.0, 6.0, 112.0, 100.0], "easy": [first, first + 1], "hard": np.array([first + 2]),
                    "junk": [first + 3]})
    return gnd


@pytest.fixture
def revisited_data(tmp_path, mark_factory):
    """A tiny `revisited_landmarks/roxford5k` built from a manual_dir in the official format: JPEGs of two
    synthetic landmarks (one mark each, drawn at several sizes) and gnd_roxford5k.pkl; returns the tfds data_dir."""
    import pickle

    from tmrjax.data.revisited_landmarks import build_revisited

    draw_mark = mark_factory[0]
    manual = tmp_path / "manual" / "jpg"
    manual.mkdir(parents=True)
    for i, name in enumerate(REVISITED_DB):
        draw_mark(int(name[len("landmark")]), REVISITED_SIZES[i % 4]).convert("RGB").save(manual / f"{name}.jpg")
    for name in REVISITED_QUERIES:
        draw_mark(int(name[len("landmark")]), (120, 108)).convert("RGB").save(manual / f"{name}.jpg")
    gnd = {"imlist": REVISITED_DB, "qimlist": REVISITED_QUERIES, "gnd": _revisited_gnd()}
    (manual.parent / "gnd_roxford5k.pkl").write_bytes(pickle.dumps(gnd, protocol=4))
    build_revisited("roxford5k", tmp_path / "tfds", manual_dir=manual.parent, num_workers=1)
    return tmp_path / "tfds"


@pytest.fixture
def fitted_on(monkeypatch):
    """The ids of every source `fit_pipelines` is given during the test."""
    import tmrjax.fit

    seen, original = [], tmrjax.fit.fit_pipelines

    def spy(pipelines, images, *args, **kwargs):
        seen.extend(images.ids)
        return original(pipelines, images, *args, **kwargs)

    monkeypatch.setattr(tmrjax.fit, "fit_pipelines", spy)
    return seen


def _independent_revisited(vectors: np.ndarray):
    """evaluate_revisited of the cached vectors, scored here: queries are the rows after the database; region
    vectors score their best pair of present regions (jeong2017 Eq. 7)."""
    from tmrjax.revisited import evaluate_revisited

    database, queries = vectors[: len(REVISITED_DB)], vectors[len(REVISITED_DB):]
    if vectors.ndim == 2:
        scores = queries @ database.T
    else:
        pairs = np.einsum("qmd,nrd->qnmr", queries, database)
        present = (np.abs(queries).sum(-1) > 0)[:, None, :, None] & (np.abs(database).sum(-1) > 0)[None, :, None, :]
        scores = np.where(present, pairs, -np.inf).max(axis=(2, 3))
    return evaluate_revisited(np.argsort(-scores, axis=1, kind="stable"), _revisited_gnd())


def test_revisited_eval_scores_query_crops_against_the_database_fitted_without_queries(configs_dir, revisited_data,
                                                                                        fitted_on, tmp_path):
    names = [str(configs_dir / f"{n}.py") for n in ("tiny_mac", "tiny_rmac")]
    out = tmp_path / "run"
    rows, report = run_eval("revisited_landmarks/roxford5k", names, out, data_dir=revisited_data, fit_images=8,
                            progress=False, log=lambda *_: None)
    assert [r.method for r in rows] == ["tiny_mac", "tiny_rmac"] and {r.protocol for r in rows} == {"revisited"}
    # Fitting (tiny_rmac's PCA-w) read the database only, never a query crop.
    assert sorted(fitted_on) == sorted(REVISITED_DB)
    for row in rows:
        vectors = np.load(next((out / "cache").glob(f"*/{row.method}-*/vectors.npy")))
        assert vectors.shape[0] == len(REVISITED_DB) + len(REVISITED_QUERIES)  # queries are extra rows
        expected = _independent_revisited(vectors)
        for setup, result in expected.items():
            assert row.map[setup] == pytest.approx(result.mean_ap), (row.method, setup)
            np.testing.assert_allclose(row.mp_at_k[setup], result.mean_precision_at_k)
    assert rows[0].ks == (1, 5, 10)

    table = format_table(rows, "revisited_landmarks/roxford5k")
    for heading in ("DIM", "E mAP", "E mP@10", "M mAP", "M mP@10", "H mAP", "H mP@10", "protocol: revisited"):
        assert heading in table
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"][1]["map"] == rows[1].map
    assert set(np.load(out / "per_query.npz")) >= {"tiny_mac/medium_ap", "tiny_rmac/hard_p_at_10"}

    # The report: every query, its top results (the 8 database images) marked by the ground truth.
    assert report.is_file() and "blue frame: hard" in report.read_text()
    top10 = json.loads((report.parent / "top10.json").read_text())
    gnd = _revisited_gnd()
    for q, listed in enumerate(top10["tiny_mac"]):
        assert listed["query"] == f"query_{q:03d}" and len(listed["results"]) == len(REVISITED_DB)
        truth = {REVISITED_DB[int(r)]: key for key in ("junk", "hard", "easy") for r in gnd[q][key]}
        for result in listed["results"]:
            assert result["label"] == truth.get(result["id"], "negative")
            assert result["relevant"] == (result["label"] in ("easy", "hard"))


def test_region_pipelines_query_a_crop_with_its_whole_region_only(revisited_data, tiny_config, tmp_path):
    config = tiny_config("jeong2017", resolutions=(64,))
    config.embed.pca_whitening_dim = 8
    config.embed.candidate_points = 20
    rows, _ = run_eval("revisited_landmarks/roxford5k", [config], tmp_path / "run", data_dir=revisited_data,
                       progress=False, log=lambda *_: None, report_queries=1)
    vectors = np.load(next((tmp_path / "run" / "cache").glob("*/jeong2017-*/vectors.npy")))
    assert vectors.ndim == 3 and vectors.shape[1] == 8
    present = np.abs(vectors).sum(-1) > 0
    assert (present[len(REVISITED_DB):].sum(axis=1) == 1).all()  # a query: R_M, the last candidate region
    assert present[len(REVISITED_DB):, -1].all() and present[: len(REVISITED_DB), -1].all()
    for setup, result in _independent_revisited(vectors).items():
        assert rows[0].map[setup] == pytest.approx(result.mean_ap), setup


def test_revisited_eval_applies_the_configs_search_post_processing(configs_dir, revisited_data, tmp_path):
    from tmrjax.evaluation import revisited_scores
    from tmrjax.revisited import evaluate_revisited, ranking_from_scores

    config = evaluation.load_config(str(configs_dir / "tiny_mac.py"))
    config.search.query_expansion = 2
    config.search.database_augmentation = 1
    rows, _ = run_eval("revisited_landmarks/roxford5k", [config], tmp_path / "run", data_dir=revisited_data,
                       progress=False, log=lambda *_: None)
    vectors = np.load(next((tmp_path / "run" / "cache").glob("*/tiny_mac-*/vectors.npy")))
    bench = evaluation.open_benchmark("revisited_landmarks/roxford5k", data_dir=revisited_data)
    scores = revisited_scores(bench, vectors, config.search)
    plain = revisited_scores(bench, vectors, evaluation.load_config(str(configs_dir / "tiny_mac.py")).search)
    assert not np.allclose(scores, plain)  # QE and DBA changed what is ranked
    np.testing.assert_allclose(plain, vectors[len(REVISITED_DB):] @ vectors[: len(REVISITED_DB)].T, atol=1e-6)
    expected = evaluate_revisited(ranking_from_scores(scores), _revisited_gnd())
    assert rows[0].map == {s: r.mean_ap for s, r in expected.items()}


def test_revisited_eval_without_the_data_says_what_to_download_and_where(configs_dir, tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        run_eval("revisited_landmarks/roxford5k", [str(configs_dir / "tiny_mac.py")], tmp_path / "run",
                 data_dir=tmp_path / "tfds", progress=False, log=lambda *_: None)
    message = str(info.value)
    for needed in ("not prepared in", "gnd_roxford5k.pkl", "oxbuild_images-v1.tgz",
                   "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/", "build_revisited('roxford5k'",
                   f"{tmp_path / 'tfds'}/downloads/manual/"):
        assert needed in message, needed
