"""Fixtures of the logo_groups tests: a tiny synthetic @iconify/json package (no npm) and an installed font."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from tmrjax.data import iconify
from tmrjax.data.logo_marks import find_fonts


def _blocks(seed: int) -> str:
    """A drawing of three random rectangles in a 24x24 box: different seeds give different marks."""
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(3):
        x, y = rng.integers(0, 14, 2)
        w, h = rng.integers(3, 10, 2)
        parts.append(f"M{x} {y}h{w}v{h}h-{w}z")
    return f'<path fill="currentColor" d="{"".join(parts)}"/>'


def _write_package(root: pathlib.Path, sets: dict[str, dict]) -> pathlib.Path:
    """sets: prefix -> {"author", "licence", "icons": {name: body}, "categories"?}."""
    (root / "json").mkdir(parents=True)
    (root / "package.json").write_text(json.dumps({"name": "@iconify/json", "version": iconify.ICONIFY_VERSION}))
    collections_ = {}
    for prefix, spec in sets.items():
        collections_[prefix] = {
            "name": prefix.title(),
            "author": {"name": spec["author"]},
            "license": {"title": spec["licence"], "spdx": spec["licence"]},
            "category": "Logos",
        }
        data = {
            "prefix": prefix,
            "width": 24,
            "height": 24,
            "icons": {n: {"body": b} for n, b in spec["icons"].items()},
        }
        if "categories" in spec:
            data["categories"] = spec["categories"]
        (root / "json" / f"{prefix}.json").write_text(json.dumps(data))
    (root / "collections.json").write_text(json.dumps(collections_))
    return root


def _synthetic_sets() -> dict[str, dict]:
    """alpha in 6 families (7 sets), beta in 2, plus distractors; one hidden icon, one non-commercial set."""
    sets = {}
    whole = ["logos", "simple-icons", "bxl", "devicon", "skill-icons", "fa6-brands", "fa7-brands"]
    authors = ["Gil", "Simple", "Box", "Konpa", "Skill", "Dave", "Dave"]
    for k, (prefix, author) in enumerate(zip(whole, authors)):
        icons = {"alpha": _blocks(100 + k), f"other{k}": _blocks(200 + k), f"alpha-tools{k}": _blocks(300 + k)}
        if k < 2:
            icons[f"beta-{['fill', 'line'][k]}"] = _blocks(400 + k)
        if k == 0:
            icons["alpha-wordmark"] = _blocks(500)
            icons["white"] = '<path fill="#fff" d="M0 0h24v24H0z"/>'
        sets[prefix] = {"author": author, "licence": "MIT", "icons": icons}
    sets["logos"]["icons"]["alpha-copy"] = sets["logos"]["icons"]["alpha"]  # exact copy within a set
    sets["tabler"] = {
        "author": "Tabler",
        "licence": "MIT",
        "icons": {"brand-alpha": _blocks(600), "home": _blocks(601)},
    }
    sets["cbi"] = {
        "author": "Cbi",
        "licence": "CC-BY-NC-SA-4.0",
        "icons": {"alpha": _blocks(700), "gizmo": _blocks(701)},
    }
    return sets


@pytest.fixture
def iconify_package(tmp_path) -> pathlib.Path:
    """The synthetic sets as an @iconify/json package of the pinned version, in tmp_path/pkg."""
    return _write_package(tmp_path / "pkg", _synthetic_sets())


@pytest.fixture(scope="session")
def latin_font() -> str | None:
    """An installed Latin font of FONT_FILES (DejaVuSans when there), or None."""
    fonts = find_fonts()
    return next((p for p, _ in fonts if "DejaVuSans.ttf" in p), fonts[0][0] if fonts else None)
