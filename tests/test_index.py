"""Tests for tmrjax/index.py: search against numpy brute force, incremental updates, atomic persistence."""

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import faiss
import numpy as np
import pytest

from tmrjax import index as index_mod
from tmrjax.index import GalleryIndex, search_index

PIPELINE = {"name": "rmac-test", "vectors_hash": "c0ffee", "weights": "none"}
IVFPQ = {"kind": "ivfpq", "nlist": 16, "m": 32, "nbits": 8, "nprobe": 16}
HNSW = {"kind": "hnsw", "M": 16, "efConstruction": 100, "efSearch": 64}
KINDS = {"flat": {"kind": "flat"}, "ivfpq": IVFPQ, "hnsw": HNSW}


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    # Test machines are small and shared; faiss's OpenMP threads and its BLAS threads then spin
    # against each other (10x slower). One thread keeps this file fast and deterministic.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def unit_vectors(seed: int, n: int, dim: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fake_rows(start: int, n: int) -> tuple[list[str], list[str], list[int], list[int]]:
    """Ids and made-up file metadata for rows start..start+n (no files behind them)."""
    ids = [f"marks/{i:05d}.png" for i in range(start, start + n)]
    return ids, [hashlib.sha256(i.encode()).hexdigest() for i in ids], [1000 + i for i in range(n)], [7] * n


def add_rows(gallery: GalleryIndex, vectors: np.ndarray, start: int) -> list[str]:
    ids, shas, sizes, mtimes = fake_rows(start, len(vectors))
    gallery.add(ids, shas, sizes, mtimes, vectors)
    return ids


def exact_topk(gallery_vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ gallery_vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def recall_at(found: list[list[str]], exact: np.ndarray, ids: list[str]) -> float:
    return float(np.mean([len(set(f) & {ids[j] for j in e}) / len(e) for f, e in zip(found, exact)]))


def write_file(path, data: bytes, mtime_ns: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def index_files(gallery: GalleryIndex, root, rels: list[str], seed: int) -> None:
    """Add files under root the way the indexing loop does: stat, hash, embed (here: random)."""
    stats = [os.stat(root / r) for r in rels]
    shas = [index_mod.file_sha256(str(root / r)) for r in rels]
    gallery.add(rels, shas, [s.st_size for s in stats], [s.st_mtime_ns for s in stats],
                unit_vectors(seed, len(rels), gallery.dim))


def test_flat_search_equals_numpy_brute_force_topk(tmp_path):
    vectors, queries = unit_vectors(0, 1500, 256), unit_vectors(1, 40, 256)
    gallery = GalleryIndex.create(str(tmp_path / "idx"), 256, {"kind": "flat"}, PIPELINE)
    ids = add_rows(gallery, vectors, 0)
    scores, found = gallery.search(queries, 10)
    want_scores, want_pos = exact_topk(vectors, queries, 10)
    assert scores.shape == (40, 10) and scores.dtype == np.float32
    assert found == [[ids[j] for j in row] for row in want_pos]
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


@pytest.mark.parametrize("kind, bound", [("ivfpq", 0.7), ("hnsw", 0.9)])
def test_approximate_kinds_recall_at_10_vs_exact_above_bound(tmp_path, kind, bound):
    vectors, queries = unit_vectors(2, 3000, 64), unit_vectors(3, 100, 64)
    gallery = GalleryIndex.create(str(tmp_path / "idx"), 64, KINDS[kind], PIPELINE)
    ids = add_rows(gallery, vectors, 0)
    _, found = gallery.search(queries, 10)
    assert recall_at(found, exact_topk(vectors, queries, 10)[1], ids) > bound


def test_incremental_add_with_checkpoints_equals_one_shot_add(tmp_path):
    vectors, queries = unit_vectors(4, 1000, 64), unit_vectors(5, 30, 64)
    one_shot = GalleryIndex.create(str(tmp_path / "one"), 64, {"kind": "flat"}, PIPELINE)
    add_rows(one_shot, vectors, 0)
    incremental = GalleryIndex.create(str(tmp_path / "inc"), 64, {"kind": "flat"}, PIPELINE)
    for start in range(0, 1000, 200):
        add_rows(incremental, vectors[start:start + 200], start)
        incremental.checkpoint()
    reopened = GalleryIndex.open(str(tmp_path / "inc"))
    want = one_shot.search(queries, 20)
    for gallery in (incremental, reopened):
        assert gallery.ids == one_shot.ids
        got = gallery.search(queries, 20)
        assert got[1] == want[1]
        np.testing.assert_array_equal(got[0], want[0])


def test_plan_update_finds_new_changed_and_unchanged_files(tmp_path, monkeypatch):
    root = tmp_path / "gallery"
    for name in ("a.png", "b.png", "sub/c.png"):
        write_file(root / name, name.encode() * 10, 1_600_000_000_000_000_000)
    gallery = GalleryIndex.create(str(tmp_path / "idx"), 16, {"kind": "flat"}, PIPELINE)
    index_files(gallery, root, ["a.png", "b.png", "sub/c.png"], seed=6)
    gallery.save()

    write_file(root / "b.png", b"edited content", 1_700_000_000_000_000_000)  # content edited, same path
    write_file(root / "sub/c.png", b"sub/c.png" * 10, 1_700_000_000_000_000_000)  # touched only
    write_file(root / "d.png", b"new", 1_700_000_000_000_000_000)
    rels = ["a.png", "b.png", "sub/c.png", "d.png"]
    assert gallery.plan_update(str(root), rels) == (["d.png"], ["b.png"], 2)

    # The touched file's new mtime is kept (through a checkpoint), so it is not hashed again.
    gallery.checkpoint()
    hashed = []
    monkeypatch.setattr(index_mod, "file_sha256", lambda p: hashed.append(p) or "0" * 64)
    assert GalleryIndex.open(str(tmp_path / "idx")).plan_update(str(root), rels) == (["d.png"], ["b.png"], 2)
    assert hashed == [str(root / "b.png")]


def test_plan_update_lists_unreadable_files_for_the_loader_to_report(tmp_path):
    root = tmp_path / "gallery"
    write_file(root / "a.png", b"aaa", 1_600_000_000_000_000_000)
    gallery = GalleryIndex.create(str(tmp_path / "idx"), 16, {"kind": "flat"}, PIPELINE)
    index_files(gallery, root, ["a.png"], seed=31)
    (root / "a.png").unlink()
    (root / "a.png").symlink_to(root / "gone.png")  # indexed file, now a broken link
    (root / "b.png").symlink_to(root / "gone.png")  # new broken link
    assert gallery.plan_update(str(root), ["a.png", "b.png"]) == (["b.png"], ["a.png"], 0)


def test_interrupted_run_resumes_after_last_checkpoint(tmp_path):
    root = tmp_path / "gallery"
    rels = [f"m{i:03d}.png" for i in range(60)]
    for i, rel in enumerate(rels):
        write_file(root / rel, bytes([i]) * 50, 1_600_000_000_000_000_000 + i)
    path = str(tmp_path / "idx")
    gallery = GalleryIndex.create(path, 32, {"kind": "flat"}, PIPELINE)
    index_files(gallery, root, rels[:20], seed=7)
    gallery.checkpoint()
    index_files(gallery, root, rels[20:40], seed=8)
    gallery.checkpoint()
    index_files(gallery, root, rels[40:50], seed=9)  # killed before the next checkpoint
    del gallery

    resumed = GalleryIndex.open(path, PIPELINE)
    assert len(resumed) == 40
    assert resumed.plan_update(str(root), rels) == (rels[40:], [], 40)


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_removed_ids_are_never_returned_by_search(tmp_path, kind):
    vectors = unit_vectors(10, 1200, 64)
    path = str(tmp_path / "idx")
    gallery = GalleryIndex.create(path, 64, KINDS[kind], PIPELINE)
    ids = add_rows(gallery, vectors[:1000], 0)
    gallery.save()
    ids += add_rows(gallery, vectors[1000:], 1000)
    removed = set(ids[::3])  # from the saved generation and from the rows added since
    gallery.remove(sorted(removed))
    gallery.checkpoint()
    assert len(gallery) == 1200 - len(removed)
    for g in (gallery, GalleryIndex.open(path)):
        assert removed.isdisjoint(g.ids)
        _, found = g.search(vectors[::3], 50)  # queries equal to the removed vectors
        assert all(removed.isdisjoint(row) for row in found)
        assert all(len(row) == 50 for row in found)


def test_hnsw_remove_raises_and_asks_for_rebuild(tmp_path):
    gallery = GalleryIndex.create(str(tmp_path / "idx"), 16, HNSW, PIPELINE)
    ids = add_rows(gallery, unit_vectors(11, 50, 16), 0)
    gallery.remove([])  # nothing to remove is fine
    with pytest.raises(ValueError, match="--rebuild"):
        gallery.remove(ids[:2])


@pytest.mark.parametrize("kind", ["flat", "ivfpq", "hnsw"])
def test_reopen_after_save_gives_identical_results(tmp_path, kind):
    vectors, queries = unit_vectors(12, 2000, 64), unit_vectors(13, 30, 64)
    path = str(tmp_path / "idx")
    gallery = GalleryIndex.create(path, 64, KINDS[kind], PIPELINE)
    add_rows(gallery, vectors, 0)
    gallery.save()
    want = gallery.search(queries, 10)
    reopened = GalleryIndex.open(path, PIPELINE)
    assert reopened.ids == gallery.ids and reopened.params == gallery.params
    for got in (reopened.search(queries, 10), search_index(path, queries, 10, PIPELINE)):
        assert got[1] == want[1]
        np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_checkpoint_writes_small_deltas_that_reopen_to_the_same_state(tmp_path, kind):
    vectors, queries = unit_vectors(14, 1300, 64), unit_vectors(15, 30, 64)
    path = str(tmp_path / "idx")
    gallery = GalleryIndex.create(path, 64, KINDS[kind], PIPELINE)
    ids = add_rows(gallery, vectors[:1000], 0)
    gallery.checkpoint()  # first checkpoint of an empty generation: a full generation
    ids += add_rows(gallery, vectors[1000:1200], 1000)
    gallery.checkpoint()
    gallery.remove([ids[5], ids[1100]])
    ids += add_rows(gallery, vectors[1200:], 1200)
    gallery.checkpoint()
    files = sorted(os.listdir(path))
    assert files == ["delta.000001.000001.npz", "delta.000001.000002.npz", "index.000001.faiss",
                     "meta.json", "table.000001.npz"]
    reopened = GalleryIndex.open(path)
    assert reopened.ids == gallery.ids and len(reopened) == 1298
    want = gallery.search(queries, 10)
    got = reopened.search(queries, 10)
    assert got[1] == want[1]
    np.testing.assert_allclose(got[0], want[0], atol=1e-6)

    gallery.save()  # folds the deltas into a new generation and deletes the old files
    assert sorted(os.listdir(path)) == ["index.000002.faiss", "meta.json", "table.000002.npz"]
    assert GalleryIndex.open(path).search(queries, 10)[1] == want[1]


@pytest.mark.parametrize("failing_replace", [1, 2, 3], ids=["index-file", "table-file", "meta-json"])
def test_crash_during_save_leaves_previous_generation_openable(tmp_path, monkeypatch, failing_replace):
    vectors, queries = unit_vectors(16, 600, 32), unit_vectors(17, 20, 32)
    path = str(tmp_path / "idx")
    gallery = GalleryIndex.create(path, 32, {"kind": "flat"}, PIPELINE)
    add_rows(gallery, vectors[:400], 0)
    gallery.save()
    want = gallery.search(queries, 10)
    add_rows(gallery, vectors[400:], 400)
    gallery.remove(gallery.ids[:10])

    real_replace, calls = os.replace, []

    def crashing_replace(src, dst):
        calls.append(dst)
        if len(calls) == failing_replace:
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        gallery.save()
    monkeypatch.setattr(os, "replace", real_replace)

    previous = GalleryIndex.open(path, PIPELINE)
    assert len(previous) == 400
    got = previous.search(queries, 10)
    assert got[1] == want[1]
    np.testing.assert_array_equal(got[0], want[0])
    # The same in-memory state can still be saved; leftovers of the failed attempt are cleaned.
    gallery.save()
    assert len(GalleryIndex.open(path)) == 590
    assert sorted(os.listdir(path)) == ["index.000002.faiss", "meta.json", "table.000002.npz"]


def test_crash_during_checkpoint_leaves_previous_checkpoint_openable(tmp_path, monkeypatch):
    path = str(tmp_path / "idx")
    gallery = GalleryIndex.create(path, 32, {"kind": "flat"}, PIPELINE)
    add_rows(gallery, unit_vectors(18, 400, 32), 0)
    gallery.checkpoint()
    add_rows(gallery, unit_vectors(19, 50, 32), 400)
    real_replace = os.replace

    def crash_on_meta(src, dst):
        if dst.endswith("meta.json"):
            raise OSError("crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_meta)
    with pytest.raises(OSError, match="crash"):
        gallery.checkpoint()  # the delta file is written, meta.json is not
    assert len(GalleryIndex.open(path)) == 400


def test_process_killed_while_saving_leaves_a_consistent_index(tmp_path):
    path = str(tmp_path / "idx")
    script = textwrap.dedent(f"""
        import numpy as np
        from tmrjax.index import GalleryIndex
        g = GalleryIndex.create({path!r}, 64, {{"kind": "flat"}}, {PIPELINE!r})
        rng = np.random.default_rng(0)
        for step in range(100000):
            x = rng.standard_normal((500, 64)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            ids = [f"{{step}}/{{i}}.png" for i in range(500)]
            g.add(ids, ["ab" * 32] * 500, [1] * 500, [1] * 500, x)
            (g.save if step % 2 else g.checkpoint)()
            print(step, flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(8):  # let it commit a few times, then kill it mid-write
            child.stdout.readline()
        time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    gallery = GalleryIndex.open(path, PIPELINE)
    assert len(gallery) >= 8 * 500 and len(gallery) % 500 == 0
    queries = unit_vectors(27, 5, 64)
    assert all(len(row) == 10 for row in gallery.search(queries, 10)[1])


def test_checkpoint_keeps_its_own_copy_of_added_vectors(tmp_path):
    path = str(tmp_path / "idx")
    gallery = GalleryIndex.create(path, 16, {"kind": "flat"}, PIPELINE)
    add_rows(gallery, unit_vectors(28, 100, 16), 0)
    gallery.save()
    batch = unit_vectors(29, 10, 16)
    add_rows(gallery, batch, 100)
    want = gallery.search(batch, 1)
    batch[:] = unit_vectors(30, 10, 16)  # the indexing loop refills its batch buffer
    gallery.checkpoint()
    assert GalleryIndex.open(path).search(unit_vectors(29, 10, 16), 1)[1] == want[1]


def test_open_with_a_different_pipeline_hash_fails(tmp_path):
    path = str(tmp_path / "idx")
    GalleryIndex.create(path, 16, {"kind": "flat"}, PIPELINE)
    other = {**PIPELINE, "vectors_hash": "deadbeef"}
    with pytest.raises(ValueError, match="c0ffee.*deadbeef.*must not mix"):
        GalleryIndex.open(path, other)
    with pytest.raises(ValueError, match="must not mix"):
        search_index(path, unit_vectors(0, 1, 16), 5, other)
    assert GalleryIndex.open(path, PIPELINE).pipeline_info == PIPELINE


@pytest.mark.parametrize(
    "params, message",
    [
        ({"kind": "lsh"}, "unknown kind 'lsh'"),
        ({"kind": "ivfpq", "m": 7}, "dim 64 must be divisible by m=7"),
        ({"kind": "flat", "nlist": 4}, r"unknown keys \['nlist'\]"),
        ({"kind": "ivfpq", "nlist": 8, "nprobe": 16}, "nprobe=16 exceeds nlist=8"),
        ({"kind": "ivfpq", "nbits": 20}, "nbits must be in 1..16"),
        ({"kind": "hnsw", "M": "32"}, "M must be a positive int, got '32'"),
        ({"kind": "hnsw", "efSearch": 0}, "efSearch must be a positive int"),
        ("flat", "must be a dict"),
    ],
)
def test_bad_index_params_raise_clear_errors(tmp_path, params, message):
    with pytest.raises(ValueError, match=message):
        GalleryIndex.create(str(tmp_path / "idx"), 64, params, PIPELINE)
    assert not (tmp_path / "idx").exists()


def test_bad_pipeline_info_raises(tmp_path):
    with pytest.raises(ValueError, match="vectors_hash"):
        GalleryIndex.create(str(tmp_path / "idx"), 16, {"kind": "flat"}, {"name": "x"})


def test_ivfpq_first_add_with_too_few_training_vectors_raises(tmp_path):
    gallery = GalleryIndex.create(str(tmp_path / "idx"), 64, IVFPQ, PIPELINE)
    assert gallery.train_size == 256
    with pytest.raises(ValueError, match="needs at least 256 vectors.*got 100"):
        add_rows(gallery, unit_vectors(20, 100, 64), 0)
    assert len(gallery) == 0
    add_rows(gallery, unit_vectors(21, 300, 64), 0)
    assert gallery.train_size == 0 and len(gallery) == 300


@pytest.mark.parametrize("kind", ["flat", "ivfpq", "hnsw"])
def test_empty_index_search_returns_no_results(tmp_path, kind):
    path = str(tmp_path / "idx")
    GalleryIndex.create(path, 64, KINDS[kind], PIPELINE)
    scores, found = search_index(path, unit_vectors(22, 3, 64), 10)
    assert scores.shape == (3, 0) and scores.dtype == np.float32
    assert found == [[], [], []]


def test_search_clips_k_to_index_size(tmp_path):
    gallery = GalleryIndex.create(str(tmp_path / "idx"), 16, {"kind": "flat"}, PIPELINE)
    add_rows(gallery, unit_vectors(23, 5, 16), 0)
    scores, found = gallery.search(unit_vectors(24, 2, 16), 100)
    assert scores.shape == (2, 5) and [len(r) for r in found] == [5, 5]


def test_add_rejects_bad_input(tmp_path):
    gallery = GalleryIndex.create(str(tmp_path / "idx"), 16, {"kind": "flat"}, PIPELINE)
    ids, shas, sizes, mtimes = fake_rows(0, 4)
    vectors = unit_vectors(25, 4, 16)
    with pytest.raises(ValueError, match="l2-normalised"):
        gallery.add(ids, shas, sizes, mtimes, vectors * 2)
    with pytest.raises(ValueError, match=r"expected \(4, 16\)"):
        gallery.add(ids, shas, sizes, mtimes, vectors[:, :8])
    with pytest.raises(ValueError, match="duplicates"):
        gallery.add(ids[:2] * 2, shas, sizes, mtimes, vectors)
    with pytest.raises(ValueError, match="64 hex"):
        gallery.add(ids, ["xyz"] * 4, sizes, mtimes, vectors)
    gallery.add(ids, shas, sizes, mtimes, vectors)
    with pytest.raises(ValueError, match="already indexed"):
        gallery.add(ids[:1], shas[:1], sizes[:1], mtimes[:1], vectors[:1])
    with pytest.raises(ValueError, match="not in"):
        gallery.remove(["never/added.png"])


def test_create_refuses_an_existing_index(tmp_path):
    path = str(tmp_path / "idx")
    GalleryIndex.create(path, 16, {"kind": "flat"}, PIPELINE)
    with pytest.raises(FileExistsError, match="meta.json already exists"):
        GalleryIndex.create(path, 16, {"kind": "flat"}, PIPELINE)


def test_open_detects_files_that_do_not_match_meta(tmp_path):
    path = str(tmp_path / "idx")
    gallery = GalleryIndex.create(path, 16, {"kind": "flat"}, PIPELINE)
    add_rows(gallery, unit_vectors(26, 10, 16), 0)
    gallery.save()
    with open(os.path.join(path, "table.000001.npz"), "ab") as f:
        f.write(b"garbage")
    with pytest.raises(ValueError, match=r"table\.000001\.npz: \d+ bytes, but .*meta\.json recorded"):
        GalleryIndex.open(path)


# ------------------------------------------------------------------------------ region indexes


def region_vectors(seed: int, n: int, regions: int, dim: int) -> np.ndarray:
    """Unit region vectors, every third item lacking its last region (all zero)."""
    x = unit_vectors(seed, n * regions, dim).reshape(n, regions, dim)
    x[::3, -1] = 0.0
    return x


def best_pair_topk(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """jeong2017 Eq. 7 by brute force: items ranked by their best pair of present regions."""
    pairs = np.einsum("qmd,ntd->qnmt", queries, database)
    present = np.any(database != 0, axis=-1)[None, :, None, :] & np.any(queries != 0, axis=-1)[:, None, :, None]
    scores = np.where(present, pairs, -np.inf).max(axis=(2, 3))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def test_region_index_ranks_items_by_their_best_matched_region_pair(tmp_path):
    database, queries = region_vectors(1, 120, 3, 8), region_vectors(2, 5, 3, 8)
    gallery = GalleryIndex.create(str(tmp_path / "idx"), 8, {"kind": "flat"}, {"vectors_hash": "r"}, regions=3)
    ids = add_rows(gallery, database, 0)
    assert gallery._index.ntotal == 120 * 3 - 40  # absent regions are not stored
    expected_scores, expected = best_pair_topk(database, queries, 10)
    scores, found = gallery.search(queries, 10)  # exact: every stored pair
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    assert found == [[ids[j] for j in row] for row in expected]
    # from the nearest regions of each query region: with all of them, the same ranking
    scores, found = gallery.search(queries, 10, region_k=360)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    assert found == [[ids[j] for j in row] for row in expected]
    _, few = gallery.search(queries, 10, region_k=5)
    assert all(len(row) <= 10 for row in few) and recall_at(few, expected, ids) > 0.3
    # a one-region query (regional query expansion, Eq. 8) against the same index
    one, expected_one = queries[:, :1], best_pair_topk(database, queries[:, :1], 10)[1]
    assert gallery.search(one, 10)[1] == [[ids[j] for j in row] for row in expected_one]


def test_region_index_survives_checkpoints_removal_and_reopening(tmp_path):
    path = str(tmp_path / "idx")
    database, queries = region_vectors(3, 90, 4, 8), region_vectors(4, 4, 4, 8)
    gallery = GalleryIndex.create(path, 8, {"kind": "flat"}, {"vectors_hash": "r"}, regions=4)
    ids = add_rows(gallery, database[:60], 0)
    gallery.save()
    ids += add_rows(gallery, database[60:], 60)
    gallery.remove(ids[10:20])
    gallery.checkpoint()  # a delta holding (n, R * dim) vectors
    assert GalleryIndex.open(path)._meta["deltas"]
    reopened = GalleryIndex.open(path)
    keep = np.r_[0:10, 20:90]
    _, expected = best_pair_topk(database[keep], queries, 15)
    assert reopened.search(queries, 15)[1] == [[ids[keep[j]] for j in row] for row in expected]
    assert reopened.regions == 4 and len(reopened) == 80


def test_region_index_refuses_bad_vectors_and_hnsw(tmp_path):
    gallery = GalleryIndex.create(str(tmp_path / "idx"), 4, {"kind": "flat"}, {"vectors_hash": "r"}, regions=2)
    empty = np.zeros((1, 2, 4), np.float32)
    with pytest.raises(ValueError, match="one at least present"):
        add_rows(gallery, empty, 0)
    with pytest.raises(ValueError, match=r"expected \(1, 2, 4\)"):
        add_rows(gallery, np.ones((1, 4), np.float32), 0)
    with pytest.raises(ValueError, match="region index needs faiss ids"):
        GalleryIndex.create(str(tmp_path / "h"), 4, {"kind": "hnsw"}, {"vectors_hash": "r"}, regions=2)


def test_region_index_answers_no_queries_with_no_rankings(tmp_path):
    gallery = GalleryIndex.create(str(tmp_path / "idx"), 4, {"kind": "flat"}, {"vectors_hash": "r"}, regions=2)
    add_rows(gallery, region_vectors(5, 6, 2, 4), 0)
    scores, ids = gallery.search(np.zeros((0, 2, 4), np.float32), 3)
    assert scores.shape == (0, 3) and ids == []
