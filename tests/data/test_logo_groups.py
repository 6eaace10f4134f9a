"""Tests for the tmrjax.data.logo_groups builder: a tiny build from the synthetic package of conftest.py, read back
through `tmrjax.data.sources.open_benchmark`."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from tmrjax.data import iconify
from tmrjax.data import logo_groups as lg
from tmrjax.data import logo_marks as lm
from tmrjax.data.sources import open_benchmark
from tmrjax.data.tfds_source import open_split

resvg = pytest.importorskip("resvg_py", reason="resvg-py renders the SVGs (pip install resvg-py)")


def test_dev_brands_are_unique_keys():
    assert len(lg.DEV_BRANDS) == 140
    assert len(set(lg.DEV_BRANDS)) == len(lg.DEV_BRANDS)
    assert all(lm.brand_keys(b) >= {b} for b in lg.DEV_BRANDS)


def _column(records: list[dict], field: str) -> np.ndarray:
    return np.array([r[field].decode() if isinstance(r[field], bytes) else r[field] for r in records])


def test_build_and_read_back(tmp_path, iconify_package, latin_font):
    tfds = pytest.importorskip("tensorflow_datasets")
    root = iconify_package
    words = tmp_path / "words"
    words.write_text("house\nriver\nstone\nalphabet\n")
    font_root = tmp_path / "fonts"
    if latin_font is not None:  # one installed font, laid out as FONT_FILES expects
        (font_root / "truetype" / "dejavu").mkdir(parents=True)
        (font_root / "truetype" / "dejavu" / "Test.ttf").write_bytes(pathlib.Path(latin_font).read_bytes())
    texts = 3 if latin_font else 0
    config = lg.LogoGroupsConfig(
        name="tiny",
        brands=("alpha", "beta", "gamma"),
        num_logo_distractors=None,
        num_text_distractors=texts,
        min_group_size=5,
        max_group_size=6,
        min_group_families=5,
    )
    plan = lm.plan_benchmark(config, root, font_roots=[font_root], words_file=words)
    assert plan.words == (["house", "river", "stone"] if latin_font else [])  # "alphabet" is related to alpha
    data_dir = tmp_path / "tfds"
    built = lg.build_logo_groups(
        config, data_dir, iconify_dir=root, font_roots=[font_root], words_file=words, num_workers=1
    )

    bench = open_benchmark("logo_groups/tiny", data_dir=data_dir)
    stored = [open_split(f"logo_groups/tiny:{split}", data_dir, images=False) for split in ("queries", "gallery")]
    records = [split[i] for split in stored for i in range(len(split))]  # the fields as stored, PNG undecoded
    assert [r["id"].decode() for r in records] == [bench.id(row) for row in range(len(bench))]
    ids, kinds, sets = _column(records, "id"), _column(records, "kind"), _column(records, "set")
    queries = bench.query_rows
    assert bench.num_queries == 6 and (bench.groups[queries] == 0).all()
    assert (_column(records, "brand")[queries] == "alpha").all()
    assert (_column(records, "group")[bench.num_queries :] == -1).all()
    assert len(set(sets[queries])) == 6  # 6 families: one set each
    assert "logos:alpha-wordmark" not in ids  # same brand: neither query nor distractor
    assert not any("alpha-tools" in i for i in ids)  # related to a group brand: not a distractor
    assert "logos:white" not in ids  # blank on white
    assert set(kinds[bench.num_queries :]) == ({"logo", "text"} if latin_font else {"logo"})
    assert (kinds == "text").sum() == texts
    assert "tabler:home" not in ids  # not a brand icon
    assert "cbi:gizmo" in ids and not _column(records, "commercial")[list(ids).index("cbi:gizmo")]
    assert "logos:beta-fill" in ids  # beta formed no group: its icons are distractors
    images = np.stack([bench.image(row) for row in range(len(bench))])
    assert images.shape == (len(bench), 224, 224, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[0], lm.decode_png(records[0]["image"]))  # the PNG as stored
    meta = tfds.builder_from_directory(str(built)).info.metadata
    assert meta["iconify_version"] == iconify.ICONIFY_VERSION
    assert meta["groups"][0]["brand"] == "alpha" and set(meta["failed_brands"]) == {"beta", "gamma"}
    assert meta["counts"]["queries"] == 6 and meta["counts"]["gallery_dropped_blank"] == 1
    assert meta["config"]["seed"] == 0

    # deterministic: planning again gives the same groups and distractor order
    again = lm.plan_benchmark(config, root, font_roots=[font_root], words_file=words)
    assert again.groups == plan.groups and [l.uid for l in again.logo_pool] == [l.uid for l in plan.logo_pool]


def test_reading_a_missing_build_names_the_build_call(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_logo_groups"):
        open_benchmark("logo_groups/small", data_dir=tmp_path)
