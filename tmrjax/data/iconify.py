"""Reading icon sets from the npm package `@iconify/json` (IconifyJSON format) and turning icons into SVG.

The package is installed by `scripts/setup_logobench.sh` with `npm install --prefix`; nothing here touches the
network. Layout read: `package.json` (version), `collections.json` (set prefix -> name, author, licence,
category) and `json/<prefix>.json` (`icons: {name: {body, left?, top?, width?, height?, hidden?}}`, defaults for
the box at the top level). Aliases are not read: they re-use a parent's body under another name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

ICONIFY_VERSION = "2.2.535"
"""The pinned `@iconify/json` release; `scripts/setup_logobench.sh` installs this one."""

ICONIFY_PACKAGE = "@iconify/json"


@dataclasses.dataclass(frozen=True)
class IconSet:
    """One icon set's metadata from `collections.json`."""

    prefix: str
    name: str
    author: str
    category: str
    licence: str  # SPDX identifier where the package gives one, else the licence title
    licence_title: str

    @property
    def commercial(self) -> bool:
        """Whether the set's licence allows commercial use (every licence here except the CC *-NC* ones)."""
        return "-NC" not in self.licence.upper() and "NONCOMMERCIAL" not in self.licence_title.upper()


@dataclasses.dataclass(frozen=True)
class Icon:
    """One drawable icon: its set prefix, name, SVG body and view box."""

    prefix: str
    name: str
    body: str
    left: float
    top: float
    width: float
    height: float


def default_iconify_dir() -> pathlib.Path:
    """Where `scripts/setup_logobench.sh` puts the package: `$TMRJAX_ICONIFY_DIR`, else under `$TMRJAX_CACHE`."""
    if os.environ.get("TMRJAX_ICONIFY_DIR"):
        return pathlib.Path(os.environ["TMRJAX_ICONIFY_DIR"])
    cache = pathlib.Path(os.environ.get("TMRJAX_CACHE", pathlib.Path.home() / ".cache" / "tmrjax"))
    return cache / "iconify" / "node_modules" / "@iconify" / "json"


def package_version(root: str | os.PathLike) -> str:
    """The `version` field of the package's `package.json`; raises FileNotFoundError naming the setup script."""
    path = pathlib.Path(root) / "package.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not found; install {ICONIFY_PACKAGE}@{ICONIFY_VERSION} with scripts/setup_logobench.sh "
            "or point TMRJAX_ICONIFY_DIR at an installed copy"
        )
    return json.loads(path.read_text())["version"]


def read_collections(root: str | os.PathLike) -> dict[str, IconSet]:
    """All non-hidden sets listed in `collections.json`, by prefix."""
    path = pathlib.Path(root) / "collections.json"
    sets = {}
    for prefix, info in json.loads(path.read_text()).items():
        if info.get("hidden"):
            continue
        lic = info.get("license") or {}
        title = lic.get("title", "unknown")
        sets[prefix] = IconSet(
            prefix=prefix,
            name=info.get("name", prefix),
            author=(info.get("author") or {}).get("name", ""),
            category=info.get("category", ""),
            licence=lic.get("spdx") or title,
            licence_title=title,
        )
    return sets


def read_icons(root: str | os.PathLike, prefix: str) -> tuple[list[Icon], dict[str, list[str]]]:
    """One set's non-hidden icons (aliases left out) in the file's order, and its {category: icon names}."""
    path = pathlib.Path(root) / "json" / f"{prefix}.json"
    data = json.loads(path.read_text())
    if data.get("prefix", prefix) != prefix:
        raise ValueError(f"{path}: prefix {data.get('prefix')!r}, expected {prefix!r}")
    defaults = {k: data.get(k, v) for k, v in (("left", 0), ("top", 0), ("width", 16), ("height", 16))}
    icons = []
    for name, icon in data["icons"].items():
        if icon.get("hidden"):
            continue
        box = {k: float(icon.get(k, defaults[k])) for k in defaults}
        icons.append(Icon(prefix=prefix, name=name, body=icon["body"], **box))
    return icons, data.get("categories", {})


def icon_svg(icon: Icon, size: int, view: tuple[float, float, float, float] | None = None) -> str:
    """A standalone SVG document drawing `icon` into a `size` x `size` square, aspect ratio kept, centred.

    `view` (left, top, width, height) is the region shown, by default the icon's own box; the icon stays clipped
    to its own box either way. `currentColor` (what monochrome sets paint with) becomes black.
    """
    body = icon.body.replace("currentColor", "#000")
    own = f"{icon.left:g} {icon.top:g} {icon.width:g} {icon.height:g}"
    shown = own if view is None else " ".join(f"{v:.6g}" for v in view)
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'viewBox="{shown}" width="{size}" height="{size}" preserveAspectRatio="xMidYMid meet">'
        f'<clipPath id="iconify-own-box"><rect x="{icon.left:g}" y="{icon.top:g}" width="{icon.width:g}" '
        f'height="{icon.height:g}"/></clipPath><g clip-path="url(#iconify-own-box)">{body}</g></svg>'
    )
