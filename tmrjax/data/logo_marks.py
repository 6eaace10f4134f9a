"""The marks of the `logo_groups` benchmark: which icons are brand logos, how they are drawn, how they group.

Stages, each a small function: choose brand icons (`BRAND_SETS`) -> read names as brands (`name_key`) ->
render (`render_icon`, `render_text_mark`) -> form groups (`form_groups`) -> choose distractors (`plan_benchmark`).
The tfds builder that writes the result is `tmrjax.data.logo_groups`.
"""

from __future__ import annotations

import collections
import colorsys
import dataclasses
import hashlib
import io
import logging
import os
import pathlib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tmrjax.data import iconify
from tmrjax.data.pool import ordered_map

if TYPE_CHECKING:
    from tmrjax.data.logo_groups import LogoGroupsConfig

_log = logging.getLogger(__name__)

IMAGE_SIZE = 224
MARGIN = 0.06
"""Fraction of the side left white on each side of a mark's drawn content."""

# --------------------------------------------------------------------------------------------------------------
# Which icons are brand logos: a selector per icon set, derived by reading @iconify/json 2.2.535.
# "*": the whole set is brand logos; "category:<c>": the set's own category <c>; "name:<regex>": names matching.
# Left out: sets of UI icons whose brand icons carry no marker (bi, akar-icons, jam, la, mingcute, lineicons, ...),
# where a "steam" logo cannot be told from a steam (vapour) icon by name; and code-editor icon themes
# (vscode-icons, material-icon-theme), which draw file types rather than marks.

BRAND_SETS: dict[str, str] = {
    # whole sets of brand logos
    "logos": "*",
    "simple-icons": "*",
    "cib": "*",
    "fa-brands": "*",
    "fa6-brands": "*",
    "fa7-brands": "*",
    "bxl": "*",
    "devicon": "*",
    "devicon-plain": "*",
    "skill-icons": "*",
    "thesvg": "*",
    "thesvg-color": "*",
    "selfhst": "*",
    "streamline-logos": "*",
    "arcticons": "*",
    "cbi": "*",
    "brandico": "*",
    "entypo-social": "*",
    "token-branded": "*",
    "cryptocurrency": "*",
    "cryptocurrency-color": "*",
    # brand categories of mixed sets
    "mdi": "category:Brand / Logo",
    "ri": "category:Logos",
    "fontisto": "category:Brand",
    "icon-park": "category:Brand",
    "icon-park-outline": "category:Brand",
    "icon-park-solid": "category:Brand",
    "icon-park-twotone": "category:Brand",
    "uil": "category:Brand Logos",
    "uim": "category:Brand Logos",
    "uit": "category:Brand Logos",
    "basil": "category:Brands",
    "flowbite": "category:Brands",
    "qlementine-icons": "category:Brand",
    "streamline-ultimate": "category:Logos",
    "streamline-ultimate-color": "category:Logos",
    "streamline-pixel": "category:Logo",
    # brand-marked names in mixed sets
    "tabler": "name:^brand-",
    "carbon": "name:^logo-",
    "ion": "name:^logo-",
    "famicons": "name:^logo-",
    "gravity-ui": "name:^logo-",
    "tdesign": "name:^logo-",
    "f7": "name:^logo-",
    "humbleicons": "name:^brand-",
    "ph": "name:-logo(-bold|-duotone|-fill|-light|-thin)?$",
    "radix-icons": "name:-logo$",
    "ix": "name:-logo$",
    "simple-line-icons": "name:^social-",
    "typcn": "name:^social-",
    "foundation": "name:^social-",
    "octicon": "name:^mark-github",
}

DISTRACTOR_ONLY_SETS = frozenset({"token-branded", "cryptocurrency", "cryptocurrency-color", "arcticons"})
"""Sets whose names do not reliably name a brand: gallery only, never group members. The token sets are named by
ticker (npm, lua, zig, atm are crypto tokens there); arcticons by Android app (arcticons:react is some app's
"R", arcticons:telegram-alt-3 a star)."""

# --------------------------------------------------------------------------------------------------------------
# Names -> brands

PREFIX_TOKENS = frozenset(
    "logo logos brand brands social media icon icons mark language lang cc browser square circle".split()
)
"""Leading tokens that say "a logo" rather than which (brand-github, language-css3, cc-paypal, square-github)."""

SUFFIX_TOKENS = frozenset(
    """
    icon icons logo logos brand browser symbol plain original line lines fill filled solid outline outlined stroke
    circle circled circular square squared rect rounded round alt alternate alternative simple official dark light
    color colored colour coloured mono monochrome black white bold duotone thin regular twotone block flat remix
    sharp inverse inverted background bg badge box small with one o
    """.split()
)
"""Trailing tokens that name a drawing variant of the same mark (github-fill, github-alt, 500px-with-circle)."""

WORDMARK_TOKENS = frozenset({"wordmark", "text", "lockup", "logotype", "word"})
"""Tokens marking a wordmark or lockup (the name set in type): such icons never join a group."""

# alt2, v2, one letter (facebook-f, bluetooth-b, medium-m), pixel sizes (mark-github-16)
_VARIANT_SUFFIX = re.compile(r"alt\d+|v\d+|[a-z]|12|16|20|24|32|48")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def name_key(name: str) -> str:
    """The brand an icon name denotes: decoration and variant tokens stripped, the rest joined.

    "brand-github-filled" -> "github"; "github-logo-2-block" -> "github" (a number after a decoration numbers the
    decoration); "css-3-official" -> "css3" (a number after the name belongs to it); "vuedotjs" -> "vuejs"
    (simple-icons spells "." as "dot"); "microsoft-windows" -> "microsoftwindows" (owners are kept: Amazon's
    "amazon-appstore" is not Apple's App Store). A token is never stripped when it is the last one left.
    """
    tokens = [t for t in _NON_ALNUM.split(name.lower()) if t and t not in WORDMARK_TOKENS]
    while len(tokens) > 1 and tokens[0] in PREFIX_TOKENS:
        tokens = tokens[1:]
    while len(tokens) > 1 and (
        tokens[-1] in SUFFIX_TOKENS
        or _VARIANT_SUFFIX.fullmatch(tokens[-1])
        or (tokens[-1].isdigit() and len(tokens) > 2 and tokens[-2] in SUFFIX_TOKENS)
    ):
        tokens = tokens[:-1]
    key = "".join(tokens)
    return key[:-5] + "js" if key.endswith("dotjs") and len(key) > 5 else key


def is_wordmark(name: str) -> bool:
    """Whether the name marks a wordmark or lockup (devicon "-wordmark", brandico "-text", octicon "lockup")."""
    return any(t in WORDMARK_TOKENS for t in _NON_ALNUM.split(name.lower()))


def brand_keys(brand: str) -> frozenset[str]:
    """The name keys a listed brand accepts: its letters and digits, and for an "X.js" project also "X".

    "vuejs" accepts "vuejs" and "vue"; "discord" does not accept "discordjs" (discord.js has its own mark).
    """
    key = _NON_ALNUM.sub("", brand.lower())
    return frozenset({key, key[:-2]} if key.endswith("js") and len(key) > 4 else {key})


def merge_brands(brands: Sequence[str]) -> tuple[dict[str, frozenset[str]], dict[str, str]]:
    """{brand: accepted keys}, spellings of one brand merged into the first listed ("vuejs" takes "vue"), and
    {merged spelling: the brand it went into}."""
    kept: dict[str, frozenset[str]] = {}
    merged = {}
    for brand in brands:
        keys = brand_keys(brand)
        same = next((b for b, accepted in kept.items() if accepted & keys), None)
        if same is None:
            kept[brand] = keys
        else:
            kept[same] |= keys
            merged[brand] = same
    return kept, merged


def related_to_brand(key: str, brand_keys_: Iterable[str]) -> bool:
    """Whether a mark named `key` may show one of the brands: either name contains the other.

    Keeps same-brand marks out of the gallery, so it errs towards "related": "amazonaws" (contains "aws"),
    "photoshop" (inside "adobephotoshop"), "js" (inside "javascript"). One-letter keys are never inside a brand.
    """
    return any(b in key or (len(key) >= 2 and key in b) for b in brand_keys_)


# --------------------------------------------------------------------------------------------------------------
# Reading the brand icons


def select_brand_icons(
    icons: Sequence[iconify.Icon], categories: dict[str, list[str]], selector: str
) -> list[iconify.Icon]:
    """The icons of one set that `selector` (a `BRAND_SETS` value) names as brand logos, in set order."""
    kind, _, arg = selector.partition(":")
    if selector == "*":
        return list(icons)
    if kind == "category":
        if arg not in categories:
            raise ValueError(f"selector {selector!r}: the set has no category {arg!r}; it has {sorted(categories)}")
        names = set(categories[arg])
        return [i for i in icons if i.name in names]
    if kind == "name":
        pattern = re.compile(arg)
        return [i for i in icons if pattern.search(i.name)]
    raise ValueError(f"selector {selector!r}: expected '*', 'category:<name>' or 'name:<regex>'")


@dataclasses.dataclass(frozen=True)
class LogoIcon:
    """A brand-logo icon and what the benchmark records about it."""

    icon: iconify.Icon
    family: str  # the set's author: sets by one designer (fa-brands, fa6-brands, fa7-brands) are one family
    licence: str
    commercial: bool
    key: str  # name_key(icon.name)
    group_eligible: bool  # not a wordmark, not from a DISTRACTOR_ONLY_SETS set

    @property
    def uid(self) -> str:
        return f"{self.icon.prefix}:{self.icon.name}"

    @property
    def body_hash(self) -> str:
        i = self.icon
        return hashlib.sha1(f"{i.left} {i.top} {i.width} {i.height} {i.body}".encode()).hexdigest()


def read_logo_icons(
    root: str | os.PathLike, *, commercial_only: bool = False
) -> tuple[list[LogoIcon], dict[str, dict]]:
    """The brand-logo icons of the `BRAND_SETS` in the package at `root`, and {prefix: what was taken and why}.

    Raises ValueError unless the package is the pinned version.
    """
    version = iconify.package_version(root)
    if version != iconify.ICONIFY_VERSION:
        raise ValueError(
            f"{pathlib.Path(root) / 'package.json'}: {iconify.ICONIFY_PACKAGE} {version}, expected "
            f"{iconify.ICONIFY_VERSION} (run scripts/setup_logobench.sh)"
        )
    sets = iconify.read_collections(root)
    logos, summary = [], {}
    for prefix, selector in BRAND_SETS.items():
        info = sets.get(prefix)
        if info is None:
            summary[prefix] = {"selector": selector, "skipped": "not in this package"}
            continue
        if commercial_only and not info.commercial:
            summary[prefix] = {"selector": selector, "licence": info.licence, "skipped": "non-commercial licence"}
            continue
        chosen = select_brand_icons(*iconify.read_icons(root, prefix), selector)
        names = {icon.name for icon in chosen}
        for icon in chosen:
            # "X" beside "X-icon" is X's lockup (symbol and name): the convention of the `logos` set.
            wordmark = is_wordmark(icon.name) or f"{icon.name}-icon" in names
            eligible = not wordmark and prefix not in DISTRACTOR_ONLY_SETS
            logos.append(
                LogoIcon(icon, info.author or prefix, info.licence, info.commercial, name_key(icon.name), eligible)
            )
        summary[prefix] = {
            "selector": selector,
            "name": info.name,
            "author": info.author,
            "licence": info.licence,
            "commercial": info.commercial,
            "icons": len(chosen),
            "group_members": prefix not in DISTRACTOR_ONLY_SETS,
        }
    return logos, summary


# --------------------------------------------------------------------------------------------------------------
# Rendering


def _rasterise(svg: str) -> np.ndarray:
    import resvg_py  # here, so that reading a built dataset never needs it

    png = resvg_py.svg_to_bytes(svg_string=svg, skip_system_fonts=True)
    return np.asarray(Image.open(io.BytesIO(bytes(png))).convert("RGBA"))


def _on_white(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def is_blank(image: np.ndarray, *, min_ink: float = 0.003) -> bool:
    """Whether a mark on white shows (almost) nothing, e.g. a white logo drawn for dark backgrounds."""
    return float((image.min(axis=-1) < 235).mean()) < min_ink


def render_icon(icon: iconify.Icon, size: int = IMAGE_SIZE, margin: float = MARGIN) -> np.ndarray | None:
    """An icon as uint8 (size, size, 3) RGB on white: its drawn content centred, aspect kept, `margin` around.

    A 96 px pass finds the drawn content inside the icon's box (to within a pixel, 1 % of the box); a second
    pass draws that content, made square and with the margin, at `size`, so marks fill the image alike whatever
    padding their set uses. `currentColor` is black. Returns None when nothing visible is drawn.
    """
    probe = 96
    alpha = _rasterise(iconify.icon_svg(icon, probe))[..., 3]
    ys, xs = np.nonzero(alpha)
    if len(xs) == 0:
        return None
    scale = probe / max(icon.width, icon.height)
    ox, oy = (probe - icon.width * scale) / 2, (probe - icon.height * scale) / 2
    x0, x1 = icon.left + (xs.min() - ox) / scale, icon.left + (xs.max() + 1 - ox) / scale
    y0, y1 = icon.top + (ys.min() - oy) / scale, icon.top + (ys.max() + 1 - oy) / scale
    side = max(x1 - x0, y1 - y0) / (1 - 2 * margin)
    view = ((x0 + x1 - side) / 2, (y0 + y1 - side) / 2, side, side)
    image = _on_white(_rasterise(iconify.icon_svg(icon, size, view=view)))
    return None if is_blank(image) else image


def ink_thumbnail(image: np.ndarray, size: int = 32) -> np.ndarray:
    """Mean ink (1 - grey / 255) over each cell of a size x size grid: float32 (size, size) in [0, 1]."""
    grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    h, w = grey.shape
    if h % size or w % size:
        raise ValueError(f"image of {h}x{w} pixels: expected sides divisible by the thumbnail size {size}")
    return (1.0 - grey / 255.0).reshape(size, h // size, size, w // size).mean(axis=(1, 3))


def thumbnail_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean absolute difference of ink thumbnails, a (..., s, s) against b (..., s, s), broadcast."""
    return np.abs(a - b).mean(axis=(-2, -1))


NEAR_COPY_DISTANCE = 0.05
"""`thumbnail_distance` under which two marks count as one drawing (near copies).

Chosen by viewing pairs of brand candidates of @iconify/json 2.2.535 ordered by distance: below 0.05 they are
the same drawing (copies between sets: simple-icons -> cib, fa6 -> fa7, thesvg -> selfhst; or redrawings that
differ in a detail such as a (R) sign); from 0.05 on they differ visibly (colour, weight, style, proportions).
"""

# Text-only marks ------------------------------------------------------------------------------------------------

FONT_ROOTS = ("/usr/share/fonts", "/usr/share/texmf/fonts")
FONT_FILES: tuple[tuple[str, str], ...] = (
    ("truetype/dejavu/*.ttf", "Bitstream-Vera"),  # fonts-dejavu, fonts-dejavu-extra
    ("truetype/liberation/*.ttf", "OFL-1.1"),  # fonts-liberation
    ("truetype/noto/*.ttf", "OFL-1.1"),  # fonts-noto-core
    ("opentype/urw-base35/*.otf", "AGPL-3.0-only WITH PS-or-PDF-font-exception-20170817"),  # fonts-urw-base35
    ("truetype/freefont/*.ttf", "GPL-3.0-or-later WITH Font-exception-2.0"),  # fonts-freefont-ttf
    ("truetype/open-sans/*.ttf", "Apache-2.0"),  # fonts-open-sans
    ("truetype/roboto/unhinted/RobotoTTF/*.ttf", "Apache-2.0"),  # fonts-roboto
    ("truetype/lato/*.ttf", "OFL-1.1"),  # fonts-lato
    ("opentype/cantarell/*.otf", "OFL-1.1"),  # fonts-cantarell
    ("truetype/crosextra/Carlito-*.ttf", "OFL-1.1"),  # fonts-crosextra-carlito
    ("truetype/crosextra/Caladea-*.ttf", "Apache-2.0"),  # fonts-crosextra-caladea
    ("opentype/linux-libertine/*.otf", "OFL-1.1"),  # fonts-linuxlibertine
    ("opentype/ebgaramond/*.otf", "OFL-1.1"),  # fonts-ebgaramond
    ("opentype/comic-neue/*.otf", "OFL-1.1"),  # fonts-comic-neue
    ("opentype/public/tex-gyre/*.otf", "GUST-Font-License"),  # fonts-texgyre
)
"""(glob under a font root, licence) for the Debian font packages that scripts/setup_logobench.sh installs."""

WORDS_FILE = "/usr/share/dict/american-english"  # Debian package wamerican
_NOT_TEXT_FONTS = re.compile(r"symbol|dingbat|d050000l|math|music|emoji", re.IGNORECASE)
_COVERAGE = "aegkqstxyzAGMQRW"


def covers_latin(path: str | os.PathLike) -> bool:
    """Whether a font draws Latin letters (not its missing-glyph box) and is not a symbol font."""
    if _NOT_TEXT_FONTS.search(pathlib.Path(path).name):
        return False
    try:
        font = ImageFont.truetype(os.fspath(path), 40)
    except OSError:
        return False
    missing = font.getmask("\U0010fffd")
    missing = (missing.size, bytes(missing))
    for char in _COVERAGE:
        mask = font.getmask(char)
        if mask.size[0] == 0 or (mask.size, bytes(mask)) == missing:
            return False
    return True


def find_fonts(roots: Sequence[str | os.PathLike] = FONT_ROOTS) -> list[tuple[str, str]]:
    """(path, licence) of each `FONT_FILES` font under `roots` that covers Latin text, sorted by path."""
    found: dict[str, str] = {}
    for root in roots:
        for pattern, licence in FONT_FILES:
            for path in pathlib.Path(root).glob(pattern):
                found.setdefault(str(path), licence)
    return sorted((path, licence) for path, licence in found.items() if covers_latin(path))


_BLOCKED_WORDS = frozenset(
    """
    0147fee25f60 035547f67529 037b3e936d13 03a15bf82365 05e649048fba 05f7a21ed68c 0b77230a89e4 13faf08613c8
    15aaf1a6e8e5 1a0d502e7835 1ee5e2ee8eba 1f45855e4097 1f956b5138bf 21554666d275 22bb59c3d876 266f83d202fa
    26fe597d2aa3 2a0383c2cb7f 2e71777dff35 2ec2f2c895bc 2f61cb7837b8 3844f1150f73 3889b2ee9854 38cbc7bbe54a
    38fb54a57bb0 39f6f95327b3 3a24983b161f 3bf858ffe8f9 3c280ce8e7f4 3cc97fd9bfd8 3dd7b32af3d6 42141a201d44
    44294ed032c4 44a92124be4d 4717776eff52 48391cd64f4e 48b2bcd8b70a 495eb2dad093 4b8cfc115af4 4dbc8c31da4f
    5199c39a5c15 57456e092ee2 593c5f8b50fe 5b65fbafb7c1 5b899fc7e7e9 5c9b0c957784 5eb49668eeda 63aef6ff8e1e
    65bb0284ebfb 6719c46a0a0a 68bb04bd54b8 6a3022e49109 6a3578663cb2 6b7b1987ddad 71bcdde68808 71d9f3fcb4ff
    72744971ef28 7325ce15998d 737de7673447 772035a33a7b 7e4d42d1944f 7f50fd4afd66 819d7c152e96 82da4c33e3a5
    842df0e20f51 867268472cd8 8b7cef62e842 8f709233af3e 926dee392274 9473d93666ab 96fa6f5afa88 9d3ec51f6f84
    a054cb112b3c a1782eb36ebd a27ec0deeaf8 a7a9e7e59519 aa5bfe00ca4f ab240565f063 ab440bfa3242 ac04b70e6de3
    aeb1effa247b b8100ed7368f b8cd807d4f3a bbbb7904a751 bc662cc4703e bcee59cecbc4 bf5afc18dfbc c0e2b3a5d60c
    c588f48003e9 c71230fc13c6 c74a895b08c4 c79f5fd8553f c8645c4a303b ca41bd367508 cd89a20adde7 ce970b2798bd
    d64a57b064fd d6d222dbed66 d7eb2aa54ec8 d822527d724f d94815182526 dbdd6c927706 dbe289c69141 dcd6732d222b
    dd48bac63c1c e25c8f72bd1a e4819bc11867 e49524050d4b e60a7eb67994 e6c9c06c4a28 e7099027c876 ebbe2e8ed1f6
    eccbad6466bd ecdf2e97bf24 ed6f9ebf2e62 f1358a077206 f4560fe525c6 f69c25333392 f76ed590b7a5 f9c8390832e5
    feeff8200cb1 fefacb3323cc
    """.split()
)
"""SHA-1 (first 12 hex digits) of offensive words: slurs, obscenities, sexual terms."""

_BLOCKED_STEMS = frozenset(
    """
    02ac484597c8 03913c546d46 0391a1e58f32 1ac5f681171f 308849fd41a2 320d1a474a0d 3417fa9d4857 35ed5406781e
    3852a12677f0 38d0f91a99c5 3b19ecd69b49 3e83b13d99bf 5c9b48992283 6e2e70adb2a7 8c4947e96c7c 921f208a404d
    9bce895f1d4c a2b7429c2d54 a5c55fbe9f58 a9c241cebb7c ad2009afc154 b1ce540f4898 bff272e9d673 c22d4a0c9612
    c976720ffb80 d286c1126ceb f73127d74a6a fad48239fbee
    """.split()
)
"""SHA-1 (first 12 hex digits) of offensive stems: a word containing one is dropped ("therapist" too)."""


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def is_offensive(word: str) -> bool:
    """Whether a lower-case word is on the blocklist (kept as hashes, not spelled out) or contains a blocked stem.

    Debian's word lists hold slurs and obscenities; no text mark of the benchmark may show one. Best effort.
    """
    if _digest(word) in _BLOCKED_WORDS:
        return True
    return any(_digest(word[i:j]) in _BLOCKED_STEMS for i in range(len(word)) for j in range(i + 4, len(word) + 1))


def read_words(path: str | os.PathLike, brand_keys_: Iterable[str] = ()) -> list[str]:
    """Sorted lower-case words of 3-10 letters (no proper nouns, no possessives), neither offensive nor related to
    the brands."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: word list not found; install Debian's wamerican (scripts/setup_logobench.sh)")
    brand_keys_ = list(brand_keys_)
    words = {w for w in path.read_text(errors="ignore").split() if re.fullmatch(r"[a-z]{3,10}", w)}
    return sorted(w for w in words if not related_to_brand(w, brand_keys_) and not is_offensive(w))


@dataclasses.dataclass(frozen=True)
class TextMark:
    """How to draw one text-only mark."""

    text: str  # one or two words, "\n" between them when stacked
    font: str  # font file
    colour: tuple[int, int, int]
    style: str  # "plain", "boxed" (framed) or "reversed" (white text on a filled panel)
    scale: float  # the mark's longer side as a fraction of the space inside the margin


def sample_text_mark(rng: np.random.Generator, words: Sequence[str], fonts: Sequence[str]) -> TextMark:
    """One text mark's words, case, layout, font, colour, style and size, drawn from `rng`."""
    chosen = [words[i] for i in rng.integers(0, len(words), 1 if rng.random() < 0.6 else 2)]
    case = rng.choice(["lower", "title", "upper"], p=[0.25, 0.45, 0.3])
    chosen = [w.title() if case == "title" else w.upper() if case == "upper" else w for w in chosen]
    text = ("\n" if rng.random() < 0.5 else " ").join(chosen)
    if rng.random() < 0.35:
        colour = (0, 0, 0)
    else:
        rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.45, 1.0), rng.uniform(0.25, 0.8))
        colour = tuple(round(255 * c) for c in rgb)
    style = str(rng.choice(["plain", "boxed", "reversed"], p=[0.7, 0.15, 0.15]))
    return TextMark(text, fonts[int(rng.integers(len(fonts)))], colour, style, float(rng.uniform(0.6, 1.0)))


def render_text_mark(mark: TextMark, size: int = IMAGE_SIZE, margin: float = MARGIN) -> np.ndarray:
    """A text mark as uint8 (size, size, 3) RGB on white, centred, aspect kept."""
    font = ImageFont.truetype(mark.font, 96)
    spacing = 12
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox(
        (0, 0), mark.text, font=font, align="center", spacing=spacing
    )
    pad = 4 if mark.style == "plain" else 32
    canvas = Image.new("RGB", (int(np.ceil(right - left)) + 2 * pad, int(np.ceil(bottom - top)) + 2 * pad), "white")
    draw = ImageDraw.Draw(canvas)
    ink = mark.colour
    if mark.style == "reversed":
        draw.rounded_rectangle((0, 0, canvas.width - 1, canvas.height - 1), radius=18, fill=mark.colour)
        ink = (255, 255, 255)
    elif mark.style == "boxed":
        draw.rectangle((0, 0, canvas.width - 1, canvas.height - 1), outline=mark.colour, width=6)
    draw.multiline_text((pad - left, pad - top), mark.text, font=font, fill=ink, align="center", spacing=spacing)
    scale = mark.scale * (1 - 2 * margin) * size / max(canvas.size)
    canvas = canvas.resize(
        (max(1, round(canvas.width * scale)), max(1, round(canvas.height * scale))), Image.Resampling.LANCZOS
    )
    out = Image.new("RGB", (size, size), "white")
    out.paste(canvas, ((size - canvas.width) // 2, (size - canvas.height) // 2))
    return np.asarray(out)


# --------------------------------------------------------------------------------------------------------------
# Query groups


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A rendered icon that may join its brand's group."""

    uid: str
    brand: str
    family: str
    set: str
    body_hash: str
    pixel_hash: str
    thumbnail: np.ndarray  # ink_thumbnail of the render


@dataclasses.dataclass(frozen=True)
class Group:
    brand: str
    members: tuple[str, ...]  # uids, in the order chosen
    families: int
    sets: int


def _round_robin_over_families(cands: Sequence[Candidate], rng: np.random.Generator) -> list[Candidate]:
    """Candidates ordered round-robin over families; family order and order within a family drawn from rng."""
    by_family = collections.defaultdict(list)
    for i in rng.permutation(len(cands)):
        by_family[cands[i].family].append(cands[i])
    families = sorted(by_family)
    queues = [by_family[families[i]] for i in rng.permutation(len(families))]
    return [q[r] for r in range(max(map(len, queues))) for q in queues if r < len(q)]


def form_groups(
    candidates: Sequence[Candidate],
    brands: Sequence[str],
    *,
    seed: int,
    min_size: int = 10,
    max_size: int = 14,
    min_families: int = 8,
    near_copy: float = NEAR_COPY_DISTANCE,
) -> tuple[list[Group], dict[str, str]]:
    """One group per brand from its candidates, or the reason there is none.

    Members are taken round-robin over families (designers), in an order drawn from `seed` and the brand's
    name (not its place in the list), so a group spreads over as many designers as it can; a candidate is
    skipped when it is an exact copy (same SVG body or pixels) or a near copy (`thumbnail_distance` <
    `near_copy`) of a member already taken. Taking stops at `max_size`; a group needs `min_size` members from
    `min_families` families (and so from at least as many sets). Returns the groups in `brands` order and
    {brand: reason} for the others.
    """
    if not 1 <= min_size <= max_size:
        raise ValueError(f"group sizes: expected 1 <= min_size <= max_size, got {min_size} and {max_size}")
    by_brand = collections.defaultdict(list)
    for c in candidates:
        by_brand[c.brand].append(c)
    groups, failures = [], {}
    for brand in brands:
        cands = sorted(by_brand.get(brand, []), key=lambda c: c.uid)
        if not cands:
            failures[brand] = "no icon of the brand sets has this name (after normalisation)"
            continue
        chosen: list[Candidate] = []
        copies = 0
        brand_seed = int(hashlib.sha1(brand.encode()).hexdigest()[:8], 16)
        for c in _round_robin_over_families(cands, np.random.default_rng([seed, brand_seed])):
            if len(chosen) == max_size:
                break
            if any(
                c.body_hash == m.body_hash
                or c.pixel_hash == m.pixel_hash
                or thumbnail_distance(c.thumbnail, m.thumbnail) < near_copy
                for m in chosen
            ):
                copies += 1
                continue
            chosen.append(c)
        families = len({c.family for c in chosen})
        if len(chosen) < min_size or families < min_families:
            failures[brand] = (
                f"{len(chosen)} distinct marks from {families} families ({len(cands)} candidates, {copies} copies); "
                f"need {min_size} from {min_families}"
            )
            continue
        groups.append(Group(brand, tuple(c.uid for c in chosen), families, len({c.set for c in chosen})))
    return groups, failures


# --------------------------------------------------------------------------------------------------------------
# Planning a build


def _png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 (H, W, 3) RGB."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def render_icon_png(icon: iconify.Icon) -> bytes | None:
    """`render_icon` as PNG bytes, None when blank: what a rendering process sends back."""
    image = render_icon(icon)
    return None if image is None else _png(image)


def render_text_png(mark: TextMark) -> bytes:
    """`render_text_mark` as PNG bytes."""
    return _png(render_text_mark(mark))


_RENDER_CHUNK = 16  # items per task sent to a rendering process


def render_all(fn: Callable, items: Sequence, workers: int) -> Iterator[tuple]:
    """(item, fn(item)) in order, on `workers` spawned processes with at most 4 tasks per worker in flight; in
    this process when workers <= 1 or the items fit one task."""
    workers = workers if len(items) > _RENDER_CHUNK else 1
    return ordered_map(fn, items, workers=workers, processes=True, chunk=_RENDER_CHUNK, in_flight=4 * workers)


@dataclasses.dataclass
class Plan:
    """Everything decided before examples are written: groups with their renders, and the distractor sources."""

    groups: list[Group]
    failures: dict[str, str]
    merged: dict[str, str]
    members: dict[str, tuple[LogoIcon, bytes]]  # uid -> (icon, png) for every group member
    logo_pool: list[LogoIcon]  # gallery logos unrelated to the group brands, in the seeded order they are taken
    fonts: list[tuple[str, str]]
    words: list[str]
    sets: dict[str, dict]
    candidates: int

    @property
    def member_thumbnails(self) -> np.ndarray:
        return np.stack([ink_thumbnail(decode_png(png)) for _, png in self.members.values()])


def plan_benchmark(
    config: LogoGroupsConfig,
    iconify_dir: str | os.PathLike,
    *,
    font_roots: Sequence[str | os.PathLike] = FONT_ROOTS,
    words_file: str | os.PathLike = WORDS_FILE,
    num_workers: int = 1,
) -> Plan:
    """Read the brand icons, render the candidates of the listed brands, form the groups, and list the sources
    of the distractors (logos unrelated to any group brand, in seeded order; fonts; words)."""
    logos, sets = read_logo_icons(iconify_dir, commercial_only=config.commercial_only)
    brands, merged = merge_brands(config.brands)
    matched = [(logo, b) for logo in logos if logo.group_eligible for b in brands if logo.key in brands[b]]
    _log.info("logo_groups: rendering %d candidates of %d brands", len(matched), len(brands))
    candidates, pngs = [], {}
    renders = render_all(render_icon_png, [logo.icon for logo, _ in matched], num_workers)
    for (logo, brand), (_, png) in zip(matched, renders):
        if png is None:
            continue
        image = decode_png(png)
        pixel_hash = hashlib.sha1(image.tobytes()).hexdigest()
        candidates.append(
            Candidate(logo.uid, brand, logo.family, logo.icon.prefix, logo.body_hash, pixel_hash, ink_thumbnail(image))
        )
        pngs[logo.uid] = (logo, png)
    groups, failures = form_groups(
        candidates,
        list(brands),
        seed=config.seed,
        min_size=config.min_group_size,
        max_size=config.max_group_size,
        min_families=config.min_group_families,
        near_copy=config.near_copy_distance,
    )
    excluded = frozenset().union(*(brands[g.brand] for g in groups))
    pool, bodies = [], set()
    for logo in logos:
        if related_to_brand(logo.key, excluded) or logo.body_hash in bodies:
            continue
        bodies.add(logo.body_hash)
        pool.append(logo)
    pool = [pool[i] for i in np.random.default_rng([config.seed, 1]).permutation(len(pool))]
    fonts, words = [], []
    if config.num_text_distractors:
        fonts = find_fonts(font_roots)
        if not fonts:
            raise FileNotFoundError(
                f"no Latin text font under {list(map(str, font_roots))}; run scripts/setup_logobench.sh"
            )
        words = read_words(words_file, excluded)
        if not words:
            raise ValueError(f"{words_file}: no word of 3-10 lower-case letters unrelated to the group brands")
    return Plan(
        groups=groups,
        failures=failures,
        merged=merged,
        members={uid: pngs[uid] for g in groups for uid in g.members},
        logo_pool=pool,
        fonts=fonts,
        words=words,
        sets=sets,
        candidates=len(candidates),
    )
