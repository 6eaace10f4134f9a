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
