"""Tests for tmrjax.data.logo_marks and tmrjax.data.iconify, on tiny synthetic icon sets (no npm package)."""

from __future__ import annotations

import json
import pathlib
import zlib

import numpy as np
import pytest

from tmrjax.data import iconify
from tmrjax.data import logo_marks as lm

resvg = pytest.importorskip("resvg_py", reason="resvg-py renders the SVGs (pip install resvg-py)")

# --------------------------------------------------------------------------------------------------------------
# Names


@pytest.mark.parametrize(
    "name, key",
    [
        ("github", "github"),
        ("brand-github", "github"),  # tabler
        ("brand-github-filled", "github"),
        ("logo-github", "github"),  # ion, carbon, gravity-ui
        ("github-logo-fill", "github"),  # ph
        ("github-logo-2-block", "github"),  # streamline-logos: the 2 numbers the decoration
        ("github-logo-1", "github"),
        ("social-github-circular", "github"),  # typcn
        ("mark-github-16", "github"),  # octicon size
        ("github-fill-24", "github"),  # qlementine
        ("github-alt", "github"),
        ("github-alt2", "github"),
        ("github-square", "github"),
        ("square-github", "github"),  # fa6
        ("github-with-circle", "github"),  # entypo-social
        ("github-original", "github"),  # devicon
        ("github-plain", "github"),
        ("github-dark", "github"),  # skill-icons, selfhst
        ("github-light", "github"),
        ("github-icon", "github"),  # logos
        ("github-one", "github"),  # icon-park
        ("github-o", "github"),  # uiw
        ("github-box", "github"),  # mdi
        ("github-line", "github"),  # ri
        ("github-original-wordmark", "github"),  # wordmark tokens are dropped from the key
        ("css-3", "css3"),  # a number after the name is part of it
        ("css3-alt", "css3"),
        ("css-3-official", "css3"),
        ("language-css3", "css3"),  # mdi
        ("html-5", "html5"),
        ("playstation-4", "playstation4"),
        ("windows-8", "windows8"),
        ("500px", "500px"),
        ("500px-with-circle", "500px"),
        ("c-plus-plus", "cplusplus"),
        ("c-plusplus", "cplusplus"),
        ("google-drive", "googledrive"),
        ("google-plus-g", "googleplus"),  # one-letter variant (fa)
        ("facebook-f", "facebook"),
        ("bluetooth-b", "bluetooth"),
        ("medium-m", "medium"),
        ("cc-paypal", "paypal"),  # fa credit-card marks
        ("browser-chrome", "chrome"),  # icon-park
        ("firefox-browser", "firefox"),  # fa6
        ("steam-symbol", "steam"),
        ("logo-social-media-tiktok-circle", "tiktok"),  # streamline-pixel
        ("vuedotjs", "vuejs"),  # simple-icons spells "." as "dot"
        ("nodedotjs", "nodejs"),
        ("vue-js", "vuejs"),
        ("discorddotjs", "discordjs"),
        ("microsoft-windows", "microsoftwindows"),  # owners are kept
        ("amazon-appstore", "amazonappstore"),
        ("stack_overflow", "stackoverflow"),
        ("Stack.Overflow", "stackoverflow"),
        ("logo", "logo"),  # the last token is never stripped
        ("square", "square"),
        ("x", "x"),
        ("logo-x", "x"),
        ("box", "box"),
        ("dropbox", "dropbox"),
    ],
)
def test_name_key(name, key):
    assert lm.name_key(name) == key


@pytest.mark.parametrize(
    "name, expected",
    [
        ("github-wordmark", True),
        ("github-original-wordmark", True),
        ("github-text", True),
        ("lockup-github-16", True),
        ("github", False),
        ("textpattern", False),
        ("github-icon", False),
    ],
)
def test_is_wordmark(name, expected):
    assert lm.is_wordmark(name) is expected


def test_brand_keys_and_merging():
    assert lm.brand_keys("vuejs") == {"vuejs", "vue"}
    assert lm.brand_keys("Node.js") == {"nodejs", "node"}
    assert lm.brand_keys("discord") == {"discord"}
    assert lm.brand_keys("js") == {"js"}
    kept, merged = lm.merge_brands(["vuejs", "github", "vue", "VueJS"])
    assert list(kept) == ["vuejs", "github"]
    assert kept["vuejs"] == {"vuejs", "vue"}
    assert merged == {"vue": "vuejs", "VueJS": "vuejs"}


@pytest.mark.parametrize(
    "key, related",
    [
        ("github", True),
        ("githubactions", True),
        ("refinedgithub", True),
        ("git", True),
        ("gitlab", False),
        ("hub", True),
        ("x", False),
        ("python", False),
    ],
)
def test_related_to_brand(key, related):
    assert lm.related_to_brand(key, ["github"]) is related


def _icon(name, body, prefix="s", size=24.0):
    return iconify.Icon(prefix=prefix, name=name, body=body, left=0.0, top=0.0, width=size, height=size)


def test_select_brand_icons():
    icons = [_icon(n, "") for n in ("brand-github", "home", "brand-x", "github-logo")]
    cats = {"Brand": ["home", "brand-x"]}

    def names(selector):
        return [i.name for i in lm.select_brand_icons(icons, cats, selector)]

    assert names("*") == ["brand-github", "home", "brand-x", "github-logo"]
    assert names("category:Brand") == ["home", "brand-x"]
    assert names("name:^brand-") == ["brand-github", "brand-x"]
    assert names("name:-logo$") == ["github-logo"]
    with pytest.raises(ValueError, match="no category 'Logos'"):
        lm.select_brand_icons(icons, cats, "category:Logos")
    with pytest.raises(ValueError, match="expected"):
        lm.select_brand_icons(icons, cats, "all")


# --------------------------------------------------------------------------------------------------------------
# Rendering

SQUARE = '<path fill="currentColor" d="M4 8h8v8H4z"/>'  # an 8x8 square, off-centre in a 24x24 box


def test_render_icon_current_colour_white_background_fitted():
    image = lm.render_icon(_icon("sq", SQUARE))
    assert image.shape == (224, 224, 3) and image.dtype == np.uint8
    dark = image.min(axis=-1) < 128
    ys, xs = np.nonzero(dark)
    # currentColor is drawn black (grey only where an edge cuts a pixel), everything else is white
    assert image[112, 112].tolist() == [0, 0, 0] and image[0, 0].tolist() == [255, 255, 255]
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    assert (image[dark] < 10).mean() > 0.97 and (image[~dark] > 245).mean() > 0.97
    # the content is fitted and centred, with the margin left around it (+-2 px of anti-aliasing)
    margin = lm.MARGIN * 224
    assert abs(xs.min() - margin) <= 3 and abs(223 - xs.max() - margin) <= 3
    assert abs(ys.min() - margin) <= 3 and abs(223 - ys.max() - margin) <= 3


def test_render_icon_keeps_aspect_and_colour():
    wide = _icon("wide", '<path fill="#ff0000" d="M0 10h24v4H0z"/>')  # 24 x 4 bar
    image = lm.render_icon(wide)
    red = (image[..., 0] > 200) & (image[..., 1] < 60) & (image[..., 2] < 60)
    ys, xs = np.nonzero(red)
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    assert width / height == pytest.approx(6.0, rel=0.1)
    assert abs((ys.min() + ys.max()) / 2 - 111.5) <= 2  # centred vertically


def test_render_icon_clips_to_own_box():
    # content touching the right edge: the view (content plus margin) reaches past the icon's box, where a
    # second rectangle lies that the icon's own box clips away
    edge = '<path fill="#000" d="M16 8h8v8h-8z"/>'
    icon = _icon("clip", edge + '<path fill="#000" d="M24 4h6v16h-6z"/>')
    alone, clipped = lm.render_icon(_icon("edge", edge)), lm.render_icon(icon)
    right = np.nonzero(alone.min(axis=(0, 2)) < 250)[0].max()  # the last column the square reaches
    assert right < 215
    assert (clipped[:, right + 2 :] == 255).all()  # nothing beyond the box (one column of anti-aliasing aside)
    np.testing.assert_array_equal(clipped[:, : right - 1], alone[:, : right - 1])


def test_render_icon_blank_is_none():
    assert lm.render_icon(_icon("empty", "<g/>")) is None
    assert lm.render_icon(_icon("white", '<path fill="#fff" d="M0 0h24v24H0z"/>')) is None


def test_icon_svg_replaces_current_colour():
    svg = iconify.icon_svg(_icon("sq", SQUARE), 64)
    assert "currentColor" not in svg and 'fill="#000"' in svg and 'width="64"' in svg


def test_ink_thumbnail_and_distance():
    white = np.full((224, 224, 3), 255, np.uint8)
    black = np.zeros_like(white)
    assert lm.ink_thumbnail(white).shape == (32, 32)
    assert lm.thumbnail_distance(lm.ink_thumbnail(white), lm.ink_thumbnail(black)) == pytest.approx(1.0)
    half = white.copy()
    half[:, :112] = 0
    assert lm.thumbnail_distance(lm.ink_thumbnail(half), lm.ink_thumbnail(white)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="divisible"):
        lm.ink_thumbnail(np.zeros((100, 100, 3), np.uint8))


def test_render_text_mark(latin_font):
    font = latin_font
    if font is None:
        pytest.skip("no Latin font of FONT_FILES installed (run scripts/setup_logobench.sh)")
    words = ["house", "river", "stone"]
    marks = [lm.sample_text_mark(np.random.default_rng([0, i]), words, [font]) for i in range(20)]
    assert marks == [lm.sample_text_mark(np.random.default_rng([0, i]), words, [font]) for i in range(20)]
    assert {m.style for m in marks} >= {"plain"}
    for mark in marks[:6]:
        image = lm.render_text_mark(mark)
        assert image.shape == (224, 224, 3) and image.dtype == np.uint8
        assert image[0, 0].tolist() == [255, 255, 255]
        assert not lm.is_blank(image)
    plain = lm.TextMark("Stone", font, (200, 0, 0), "plain", 1.0)
    image = lm.render_text_mark(plain)
    inked = np.nonzero(image.min(axis=-1) < 200)
    assert (image[inked][:, 0] > image[inked][:, 1]).all()  # drawn in its colour
    assert abs(inked[1].min() - (223 - inked[1].max())) <= 3  # centred


def test_find_fonts_keeps_latin_text_fonts_only():
    fonts = lm.find_fonts()
    if not fonts:
        pytest.skip("no font of FONT_FILES installed (run scripts/setup_logobench.sh)")
    names = [pathlib.Path(p).name for p, _ in fonts]
    assert not any("Symbol" in n or "Math" in n for n in names)
    assert all(lic for _, lic in fonts)


def test_read_words(tmp_path):
    words = tmp_path / "words"
    words.write_text("House\nhouse\nrivers\nriver's\ngithubber\ncat\nab\nextraordinary\nhub\ncrap\ntherapist\n")
    assert lm.read_words(words, ["github"]) == ["cat", "house", "rivers"]
    with pytest.raises(FileNotFoundError, match="wamerican"):
        lm.read_words(tmp_path / "missing")


def test_is_offensive():
    assert lm.is_offensive("crap") and lm.is_offensive("crappy")
    assert lm.is_offensive("therapist")  # contains a blocked stem: dropped too
    assert not lm.is_offensive("house") and not lm.is_offensive("cocktail")


def test_render_all_keeps_order_on_processes_and_stops_early():
    items = [f"w{i}" for i in range(40)]
    assert list(lm.render_all(lm._digest, items, 2)) == [(w, lm._digest(w)) for w in items]
    run = lm.render_all(lm._digest, items, 2)
    assert [next(run) for _ in range(5)] == [(w, lm._digest(w)) for w in items[:5]]
    run.close()  # shuts the processes down


# --------------------------------------------------------------------------------------------------------------
# Groups


def _cand(uid, brand, family, *, body=None, pixels=None, thumb=None, set_=None):
    rng = np.random.default_rng(zlib.crc32(uid.encode()))
    return lm.Candidate(
        uid=uid,
        brand=brand,
        family=family,
        set=set_ or family,
        body_hash=body or f"b-{uid}",
        pixel_hash=pixels or f"p-{uid}",
        thumbnail=rng.random((32, 32)).astype(np.float32) if thumb is None else thumb,
    )


def test_form_groups_sizes_and_families():
    cands = [_cand(f"f{f}:a{i}", "alpha", f"f{f}") for f in range(5) for i in range(3)]  # 15 marks, 5 families
    cands += [_cand(f"f{f}:b", "beta", f"f{f}") for f in range(2)]  # 2 families only
    groups, failures = lm.form_groups(cands, ["alpha", "beta", "gamma"], seed=0, min_size=4, max_size=6, min_families=3)
    assert [g.brand for g in groups] == ["alpha"]
    (alpha,) = groups
    assert len(alpha.members) == 6
    # round-robin over families: 5 families, so the first 5 members are one per family
    assert alpha.families == 5 and len({m.split(":")[0] for m in alpha.members[:5]}) == 5
    assert set(failures) == {"beta", "gamma"}
    assert "2 families" in failures["beta"] and "need 4 from 3" in failures["beta"]
    assert "no icon" in failures["gamma"]


def test_form_groups_is_deterministic_by_seed():
    cands = [_cand(f"f{f}:a{i}", "alpha", f"f{f}") for f in range(6) for i in range(4)]

    def run(seed, cands=cands, brands=("alpha",)):
        return lm.form_groups(cands, brands, seed=seed, min_size=3, max_size=8, min_families=3)[0][0].members

    assert run(0) == run(0)
    assert run(0) == run(0, cands=cands[::-1])  # the input order does not matter
    assert any(run(s) != run(0) for s in range(1, 5))
    assert run(0, brands=("zeta", "alpha")) == run(0)  # nor do the other brands listed


@pytest.mark.parametrize(
    "second, kept",
    [
        ({"body": "b-a:1"}, 1),  # the same SVG body
        ({"pixels": "p-a:1"}, 1),  # the same pixels
        ({"thumb": "near"}, 1),  # a near copy
        ({"thumb": "far"}, 2),  # another drawing
    ],
)
def test_form_groups_drops_exact_and_near_copies(second, kept):
    base = np.random.default_rng(0).random((32, 32)).astype(np.float32) * 0.5
    thumbs = {"near": base + 0.9 * lm.NEAR_COPY_DISTANCE, "far": base + 1.1 * lm.NEAR_COPY_DISTANCE, None: None}
    first = _cand("a:1", "alpha", "a", thumb=base)
    other = _cand("b:1", "alpha", "b", **{**second, "thumb": thumbs[second.get("thumb")]})
    groups, _ = lm.form_groups([first, other], ["alpha"], seed=0, min_size=1, max_size=5, min_families=1)
    assert len(groups[0].members) == kept
    groups, failures = lm.form_groups([first, other], ["alpha"], seed=0, min_size=2, max_size=5, min_families=1)
    assert bool(groups) == (kept == 2)
    if kept == 1:
        assert "1 distinct marks" in failures["alpha"] and "1 copies" in failures["alpha"]


def test_form_groups_counts_families_not_sets():
    # three sets by one designer are one family
    cands = [_cand(f"fa{v}:a", "alpha", "Dave", set_=f"fa{v}") for v in range(3)] + [_cand("x:a", "alpha", "X")]
    groups, failures = lm.form_groups(cands, ["alpha"], seed=0, min_size=4, max_size=4, min_families=3)
    assert not groups and "2 families" in failures["alpha"]
    groups, _ = lm.form_groups(cands, ["alpha"], seed=0, min_size=4, max_size=4, min_families=2)
    assert groups[0].sets == 4 and groups[0].families == 2


def test_form_groups_rejects_bad_sizes():
    with pytest.raises(ValueError, match="min_size <= max_size"):
        lm.form_groups([], ["a"], seed=0, min_size=5, max_size=4)


# --------------------------------------------------------------------------------------------------------------
# Reading a package (the synthetic one of conftest.py)


def test_iconify_reading(tmp_path, iconify_package):
    root = iconify_package
    data = json.loads((root / "json" / "logos.json").read_text())
    data["icons"]["hidden-one"] = {"body": SQUARE, "hidden": True}
    (root / "json" / "logos.json").write_text(json.dumps(data))
    assert iconify.package_version(root) == iconify.ICONIFY_VERSION
    sets = iconify.read_collections(root)
    assert sets["cbi"].licence == "CC-BY-NC-SA-4.0" and not sets["cbi"].commercial
    assert sets["logos"].commercial and sets["fa6-brands"].author == "Dave"
    icons, categories = iconify.read_icons(root, "logos")
    assert "hidden-one" not in {i.name for i in icons} and categories == {}
    assert icons[0].width == 24 and icons[0].left == 0
    with pytest.raises(FileNotFoundError, match="setup_logobench"):
        iconify.package_version(tmp_path / "nowhere")


def test_read_logo_icons(iconify_package):
    root = iconify_package
    logos, summary = lm.read_logo_icons(root)
    by_uid = {l.uid: l for l in logos}
    assert "tabler:home" not in by_uid and by_uid["tabler:brand-alpha"].key == "alpha"
    assert not by_uid["logos:alpha-wordmark"].group_eligible and by_uid["logos:alpha"].group_eligible
    assert by_uid["fa6-brands:alpha"].family == "Dave"
    assert summary["mdi"]["skipped"] == "not in this package" and summary["logos"]["icons"] == 7
    logos, summary = lm.read_logo_icons(root, commercial_only=True)
    assert not any(l.icon.prefix == "cbi" for l in logos) and summary["cbi"]["skipped"] == "non-commercial licence"
    (root / "package.json").write_text(json.dumps({"name": "@iconify/json", "version": "2.2.1"}))
    with pytest.raises(ValueError, match="expected 2.2.535"):
        lm.read_logo_icons(root)
