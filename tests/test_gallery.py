"""tmrjax/gallery.py: indexing a folder of marks (incrementally, surviving a crash) and searching it."""

import os
import shutil

import numpy as np
import pytest

import tmrjax
from tmrjax.data.images import list_images
from tmrjax.fit import fit_pipeline
from tmrjax.gallery import index_folder, search_images
from tmrjax.index import GalleryIndex
from tmrjax.pipeline import Pipeline, PipelineError

pytestmark = pytest.mark.usefixtures("fast_random_init")


@pytest.fixture(scope="module")
def indexed(ura_fitted, marks_dir, tmp_path_factory):
    """(gallery folder, index folder, report): the 12 marks indexed in one run, flat."""
    base = tmp_path_factory.mktemp("gallery")
    root = shutil.copytree(marks_dir, base / "marks")
    report = index_folder(root, ura_fitted[0], base / "index", progress=False)
    return root, base / "index", report


@pytest.fixture
def indexed_copy(indexed, tmp_path):
    """A copy of the gallery and its index (file times kept), free to change."""
    root, index, _ = indexed
    return shutil.copytree(root, tmp_path / "marks"), shutil.copytree(index, tmp_path / "index")


def test_every_mark_is_indexed_exactly_once(indexed):
    root, index_dir, report = indexed
    expected = list_images(root)
    assert len(expected) == 12
    assert (report.total, report.added, report.replaced, report.unchanged, len(report.failures)) == (12, 12, 0, 0, 0)
    index = GalleryIndex.open(str(index_dir))
    assert sorted(index.ids) == expected and len(index) == 12
    expected = "12 marks (12 added, 0 re-embedded after a content change, 0 unchanged, 0 removed as deleted, 0 skipped)"
    assert expected in report.summary()


def test_each_mark_finds_itself_first(indexed, ura_fitted):
    root, index_dir, _ = indexed
    ids = list_images(root)
    pipeline, results = search_images(index_dir, [root / i for i in ids], k=3)
    assert pipeline.info()["config_hash"] == ura_fitted[0].info()["config_hash"]
    for query, ranking in zip(ids, results):
        assert len(ranking) == 3
        (top, similarity), (_, runner_up) = ranking[0], ranking[1]
        assert top == query and similarity == pytest.approx(1.0, abs=1e-4)
        assert runner_up < 0.9999, f"{query}: another mark is indistinguishable from it"


def test_rerun_embeds_only_new_and_changed_files(indexed_copy, embedded_ids, ura_fitted, mark_factory):
    root, index_dir = indexed_copy
    draw_mark, write_marks = mark_factory
    new = write_marks(root, count=2, start=12)
    edited = "a/mark_001.png"
    draw_mark(77, (96, 96)).save(root / edited)
    touched = root / "mark_000.png"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))

    report = index_folder(root, ura_fitted[0], index_dir, progress=False)
    assert sorted(embedded_ids) == sorted(new + [edited])
    assert (report.total, report.added, report.replaced, report.unchanged) == (14, 2, 1, 11)
    assert sorted(GalleryIndex.open(str(index_dir)).ids) == list_images(root)
    _, [ranking] = search_images(index_dir, [root / edited], k=2)
    assert ranking[0][0] == edited and ranking[0][1] == pytest.approx(1.0, abs=1e-4)

    embedded_ids.clear()
    report = index_folder(root, ura_fitted[0], index_dir, progress=False)
    assert embedded_ids == [] and (report.added, report.replaced, report.unchanged) == (0, 0, 14)


def test_interrupted_run_keeps_its_checkpoints_and_resumes(
    indexed, ura_fitted, marks_dir, tmp_path, monkeypatch, embedded_ids
):
    pipeline = ura_fitted[0]
    root = shutil.copytree(marks_dir, tmp_path / "marks")
    out = tmp_path / "index"
    original, calls = Pipeline.embed_features, []

    def crash_on_the_third_batch(self, maps, points=None):
        calls.append(len(maps[0]))
        if len(calls) == 3:
            raise RuntimeError("simulated crash (power cut)")
        return original(self, maps, points)

    with monkeypatch.context() as patch:
        patch.setattr(Pipeline, "embed_features", crash_on_the_third_batch)
        with pytest.raises(RuntimeError, match="simulated crash"):
            index_folder(root, pipeline, out, checkpoint_every=4, progress=False)

    everything = list_images(root)
    after_crash = GalleryIndex.open(str(out))
    assert sorted(after_crash.ids) == everything[:8]  # two batches of 4, each checkpointed
    query = tmrjax.embed([root / everything[5]], pipeline)
    _, [ids] = after_crash.search(query, 1)
    assert ids == [everything[5]]

    embedded_ids.clear()
    report = index_folder(root, pipeline, out, checkpoint_every=4, progress=False)
    assert embedded_ids == everything[8:]
    assert (report.total, report.added, report.unchanged) == (12, 4, 8)

    _, one_shot_dir, _ = indexed
    resumed, one_shot = GalleryIndex.open(str(out)), GalleryIndex.open(str(one_shot_dir))
    assert sorted(resumed.ids) == sorted(one_shot.ids)
    queries = tmrjax.embed([root / i for i in everything[::3]], pipeline)
    resumed_scores, resumed_ids = resumed.search(queries, 5)
    one_shot_scores, one_shot_ids = one_shot.search(queries, 5)
    assert resumed_ids == one_shot_ids
    np.testing.assert_allclose(resumed_scores, one_shot_scores, atol=1e-5)


def test_an_indexed_file_that_became_a_broken_link_is_dropped_and_reported(indexed_copy, ura_fitted):
    root, index_dir = indexed_copy
    gone = "a/mark_005.png"
    (root / gone).unlink()
    (root / gone).symlink_to(root / "nowhere.png")
    report = index_folder(root, ura_fitted[0], index_dir, progress=False)
    assert report.failures.failures == [(gone, "broken symbolic link")]
    assert (report.total, report.added, report.replaced, report.unchanged) == (11, 0, 0, 11)
    assert gone not in GalleryIndex.open(str(index_dir)).ids


def test_a_file_deleted_from_the_folder_leaves_the_index(indexed_copy, embedded_ids, ura_fitted):
    root, index_dir = indexed_copy
    gone = "a/mark_005.png"
    (root / gone).unlink()
    report = index_folder(root, ura_fitted[0], index_dir, progress=False)
    assert embedded_ids == []
    assert (report.total, report.added, report.removed, report.unchanged) == (11, 0, 1, 11)
    assert gone not in GalleryIndex.open(str(index_dir)).ids
    _, [ranking] = search_images(index_dir, [root / "mark_000.png"], k=20)
    assert gone not in [i for i, _ in ranking]


def test_an_index_refuses_vectors_of_another_pipeline(indexed, tiny_config):
    root, index_dir, _ = indexed
    other = Pipeline.create(tiny_config("mac", (64,)))
    with pytest.raises(ValueError, match="vectors of two pipelines must not mix"):
        index_folder(root, other, index_dir, progress=False)


def test_an_index_refuses_vectors_of_a_refit_of_the_same_config(indexed_copy, ura_fitted, small_fitted, tmp_path):
    """Same config, fitted on other marks: other PCA-whitening and codebook, so other vectors."""
    root, index_dir = indexed_copy
    refit = fit_pipeline(Pipeline.create(ura_fitted[0].config), small_fitted[3], tmp_path / "refit", progress=False)
    assert np.abs(refit.artefacts.pca_mean - ura_fitted[0].artefacts.pca_mean).max() > 1e-3
    (root / "mark_000.png").rename(root / "renamed.png")  # one new file to embed
    with pytest.raises(ValueError, match="must not mix"):
        index_folder(root, refit, index_dir, progress=False)


def test_an_index_keeps_its_kind_unless_rebuilt(indexed, ura_fitted):
    root, index_dir, _ = indexed
    with pytest.raises(PipelineError, match="is a 'flat' index, not 'hnsw'; use --rebuild"):
        index_folder(root, ura_fitted[0], index_dir, kind="hnsw", progress=False)


def test_a_region_matching_pipeline_indexes_and_searches_a_folder(marks_dir, tiny_config, tmp_path):
    """jeong2017 end to end on a folder: fit (local PCA bases + PCA-w), a region index, search."""
    config = tiny_config("jeong2017", (96,))
    config.embed.pca_whitening_dim = 8
    pipeline = fit_pipeline(Pipeline.create(config), marks_dir, tmp_path / "fitted", progress=False)
    root = shutil.copytree(marks_dir, tmp_path / "marks")
    report = index_folder(root, pipeline, tmp_path / "index", progress=False)
    index = GalleryIndex.open(str(tmp_path / "index"))
    assert report.total == 12 and index.regions == pipeline.regions_per_image == 8
    ids = list_images(root)
    _, exact = search_images(tmp_path / "index", [root / i for i in ids], k=3)
    _, approximate = search_images(tmp_path / "index", [root / i for i in ids], k=3, region_k=200)
    for query, ranking, other in zip(ids, exact, approximate):
        assert ranking[0][0] == query and ranking[0][1] == pytest.approx(1.0, abs=1e-4)
        assert [i for i, _ in other] == [i for i, _ in ranking]


def _reference_ranking(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Eval's ranking of `queries` against `database` (`metrics.similarities`): top k (rows, scores),
    ties to the lower row."""
    from tmrjax.metrics import similarities

    scores = similarities(database, np.zeros(len(queries), np.int64), query_vectors=queries)
    order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores), axis=1)[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def _assert_ranked_as(results, ids: list[str], rows: np.ndarray, scores: np.ndarray) -> None:
    """The same ids in the same order and the same scores; only within a run of scores less than 1e-5
    apart (a near-tie, which faiss and numpy may round either way) may the order differ."""
    for ranking, want_rows, want_scores in zip(results, rows, scores):
        got = [i for i, _ in ranking]
        want = [ids[r] for r in want_rows]
        np.testing.assert_allclose([s for _, s in ranking], want_scores, atol=1e-4)
        assert len(got) == len(want)
        start = 0
        for end in range(1, len(want) + 1):
            if end == len(want) or want_scores[end - 1] - want_scores[end] > 1e-5:
                assert sorted(got[start:end]) == sorted(want[start:end]), (got, want)
                start = end


@pytest.fixture
def dba_qe_mac(tiny_config):
    """Tiny MAC with DBA (n = 2) and alpha-QE (n = 3) in its config's search section."""
    config = tiny_config("mac", (64,))
    config.search.database_augmentation, config.search.dba_alpha = 2, 1.0
    config.search.query_expansion, config.search.qe_alpha = 3, 2.0
    return Pipeline.create(config)


def test_a_folder_search_with_dba_and_qe_ranks_as_rerank_does(dba_qe_mac, marks_dir, mark_factory, tmp_path):
    from tmrjax.rerank import augment_database, expand_queries

    pipeline, search = dba_qe_mac, dba_qe_mac.config.search
    root = shutil.copytree(marks_dir, tmp_path / "marks")
    index_folder(root, pipeline, tmp_path / "index", progress=False)
    ids = GalleryIndex.open(str(tmp_path / "index")).ids  # label order
    new = tmp_path / "new.png"
    mark_factory[0](40).save(new)
    _, results = search_images(tmp_path / "index", [root / i for i in ids] + [new], k=5)

    raw = tmrjax.embed([root / i for i in ids], pipeline)
    augmented = augment_database(raw, search)
    # indexed queries search as their (augmented) database row, never their own expansion image
    expanded = expand_queries(augmented, np.arange(len(ids)), search)
    _assert_ranked_as(results[:-1], ids, *_reference_ranking(augmented, expanded, 5))
    # a new image: alpha-QE over its top 3 augmented images, by the formula
    q = tmrjax.embed([new], pipeline)[0].astype(np.float64)
    scores = augmented @ q
    total = q + sum(max(scores[t], 0) ** 2.0 * augmented[t] for t in np.argsort(-scores, kind="stable")[:3])
    _assert_ranked_as(results[-1:], ids, *_reference_ranking(augmented, (total / np.linalg.norm(total))[None], 5))


def test_adding_files_re_derives_the_augmented_database(dba_qe_mac, marks_dir, mark_factory, tmp_path):
    from tmrjax.gallery import _dba_params
    from tmrjax.rerank import augment_database

    params = _dba_params(dba_qe_mac.config.search)
    root = shutil.copytree(marks_dir, tmp_path / "marks")
    index_folder(root, dba_qe_mac, tmp_path / "index", progress=False)
    first = GalleryIndex.open(str(tmp_path / "index"))
    entry = first._meta["augmented"]
    assert first.augmented(params) is not None and first.augmented({**params, "dba_alpha": 2.0}) is None

    mark_factory[1](root, count=2, start=12)
    index_folder(root, dba_qe_mac, tmp_path / "index", progress=False)
    grown = GalleryIndex.open(str(tmp_path / "index"))
    assert len(grown) == 14 and grown._meta["augmented"]["labels_sha256"] != entry["labels_sha256"]
    assert not (tmp_path / "index" / entry["name"]).exists()
    view = grown.augmented(params)
    np.testing.assert_allclose(view.vectors(), augment_database(grown.vectors(), dba_qe_mac.config.search),
                               atol=1e-6)

    # a commit that changes the vectors without deriving again leaves no augmented database behind
    grown.remove([grown.ids[0]])
    grown.checkpoint()
    reopened = GalleryIndex.open(str(tmp_path / "index"))
    assert "augmented" not in reopened._meta and reopened.augmented(params) is None
    _, [ranking] = search_images(tmp_path / "index", [root / grown.ids[0]], k=13)  # derived at search time
    assert len(ranking) == 13


def test_a_region_index_with_regional_qe_and_dba_ranks_as_rerank_does(marks_dir, tiny_config, tmp_path):
    from tmrjax.rerank import augment_database, expand_queries

    config = tiny_config("jeong2017", (96,))
    config.embed.pca_whitening_dim = 8
    config.search.database_augmentation, config.search.query_expansion = 2, 3
    pipeline = fit_pipeline(Pipeline.create(config), marks_dir, tmp_path / "fitted", progress=False)
    root = shutil.copytree(marks_dir, tmp_path / "marks")
    index_folder(root, pipeline, tmp_path / "index", progress=False)
    ids = GalleryIndex.open(str(tmp_path / "index")).ids
    _, exact = search_images(tmp_path / "index", [root / i for i in ids], k=4)
    _, approximate = search_images(tmp_path / "index", [root / i for i in ids], k=4, region_k=200)

    augmented = augment_database(tmrjax.embed([root / i for i in ids], pipeline), config.search)
    expanded = expand_queries(augmented, np.arange(len(ids)), config.search)
    assert expanded.shape == (len(ids), 1, 8)  # Eq. 8: a one-region query
    want = _reference_ranking(augmented, expanded, 4)
    _assert_ranked_as(exact, ids, *want)
    _assert_ranked_as(approximate, ids, *want)
