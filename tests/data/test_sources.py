"""tmrjax/data/sources.py: image sources, the one source syntax, and labelled folder benchmarks."""

import json

import numpy as np
import pytest
from PIL import Image

from tmrjax.data.images import FailureLog
from tmrjax.data.sources import (
    Benchmark,
    ConcatSource,
    FolderSource,
    PathSource,
    RecordSource,
    SubsetSource,
    iter_batches,
    open_benchmark,
    open_source,
)
from tmrjax.fileio import StoredFileError


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 4), (value, value, value)).save(path)


@pytest.fixture
def folder_bench(tmp_path):
    root = tmp_path / "bench"
    for group, members in {"beta": 2, "alpha": 3}.items():
        for i in range(members):
            _png(root / "queries" / group / f"{i}.png", 10 * i)
    for i in range(5):
        _png(root / "gallery" / ("sub" if i % 2 else "") / f"d{i}.png", 200 + i)
    return root


def test_folder_benchmark_groups_are_subfolders_in_sorted_order(folder_bench):
    bench = open_benchmark(f"folder:{folder_bench}")
    assert bench.num_queries == 5 and bench.num_distractors == 5
    assert [bench.id(r) for r in range(5)] == [
        "queries/alpha/0.png", "queries/alpha/1.png", "queries/alpha/2.png", "queries/beta/0.png", "queries/beta/1.png"]
    assert bench.groups.tolist() == [0, 0, 0, 1, 1] + [-1] * 5
    assert [r.tolist() for r in bench.relevant] == [[0, 1, 2]] * 3 + [[3, 4]] * 2
    assert bench.gallery().ids == ["gallery/d0.png", "gallery/d2.png", "gallery/d4.png",
                                   "gallery/sub/d1.png", "gallery/sub/d3.png"]
    assert bench.image(3).shape == (4, 6, 3) and bench.image(3)[0, 0, 0] == 0


def test_max_distractors_takes_the_first_in_sorted_order_so_subsets_nest(folder_bench):
    ids = {n: open_benchmark(f"folder:{folder_bench}", max_distractors=n).gallery().ids for n in (1, 3, 5, 99)}
    assert ids[1] == ids[3][:1] and ids[3] == ids[5][:3] and ids[5] == ids[99]


def test_groups_json_beside_a_flat_folder(tmp_path):
    for name in ("a1.png", "a2.png", "b1.png", "x.png", "y.png"):
        _png(tmp_path / name, 1)
    (tmp_path / "groups.json").write_text(json.dumps({"groups": {"b": ["b1.png", "x.png"], "a": ["a2.png", "a1.png"]}}))
    bench = open_benchmark(f"folder:{tmp_path}")
    assert [bench.id(r) for r in range(bench.num_queries)] == ["a1.png", "a2.png", "b1.png", "x.png"]
    assert bench.groups.tolist() == [0, 0, 1, 1, -1] and bench.gallery().ids == ["y.png"]


@pytest.mark.parametrize("doc, message", [
    ({"groups": {"a": ["missing.png"]}}, "an image under"),
    ({"groups": {"a": ["x.png"], "b": ["x.png"]}}, "in one group only"),
    ({"groups": {"a": "x.png"}}, "a non-empty list"),
    ({"groups": []}, "a JSON object"),
])
def test_a_bad_groups_json_names_the_file_and_the_field(tmp_path, doc, message):
    _png(tmp_path / "x.png", 1)
    (tmp_path / "groups.json").write_text(json.dumps(doc))
    with pytest.raises(StoredFileError, match=message) as error:
        open_benchmark(f"folder:{tmp_path}")
    assert "groups.json" in str(error.value)


def test_a_folder_that_is_not_a_benchmark_says_what_layout_it_needs(tmp_path, folder_bench):
    with pytest.raises(FileNotFoundError, match="queries/<group>/<image>"):
        open_benchmark(f"folder:{tmp_path / 'nowhere'}")
    _png(tmp_path / "flat" / "a.png", 1)
    with pytest.raises(FileNotFoundError, match="not a labelled folder benchmark"):
        open_benchmark(f"folder:{tmp_path / 'flat'}")
    _png(folder_bench / "queries" / "loose.png", 1)
    with pytest.raises(ValueError, match="must lie in a group folder"):
        open_benchmark(f"folder:{folder_bench}")


def test_open_source_parses_the_one_syntax(folder_bench, tmp_path):
    folder = open_source(folder_bench / "gallery")
    assert isinstance(folder, FolderSource) and folder.ids[0] == "d0.png"
    paths = open_source(["gallery/d0.png"], root=folder_bench)
    assert isinstance(paths, PathSource) and paths.load(0)[0, 0, 0] == 200
    with pytest.raises(FileNotFoundError, match="not a folder of images"):
        open_source(tmp_path / "missing")
    with pytest.raises(ValueError, match="expected NAME"):
        open_source("tfds:no_split")


def test_records_subsets_and_concatenations_keep_ids_groups_and_images():
    records = [{"image": np.full((2, 2, 3), i, np.uint8), "id": f"r{i}".encode(), "group": i % 2 - (i > 3)}
               for i in range(6)]
    source = RecordSource(records, "mem")
    assert source.ids == [f"r{i}" for i in range(6)] and source.groups.tolist() == [0, 1, 0, 1, -1, 0]
    subset = SubsetSource(source, [4, 1])
    assert subset.ids == ["r4", "r1"] and subset.load(0)[0, 0, 0] == 4 and subset.groups.tolist() == [-1, 1]
    both = ConcatSource([subset, source], "both")
    assert len(both) == 8 and both.ids[2:4] == ["r0", "r1"] and both.load(3)[0, 0, 0] == 1
    bad = RecordSource([{"image": np.zeros((2, 2), np.uint8), "id": b"grey"}], "mem")
    failures = FailureLog()
    assert list(iter_batches(bad, (4,), 2, failures)) == []
    assert failures.failures == [("grey", "expected uint8 (H, W, 3), got uint8 (2, 2)")]


def test_a_benchmark_puts_queries_first():
    source = RecordSource([{"image": np.zeros((2, 2, 3), np.uint8), "id": b"a"}] * 2, "mem")
    with pytest.raises(ValueError, match="queries must come first"):
        Benchmark("b", source, np.array([-1, 0]), 1)
