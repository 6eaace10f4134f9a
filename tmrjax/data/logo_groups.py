"""`logo_groups`: a METU-like trademark retrieval benchmark built offline from real brand marks.

Query groups are one brand drawn by different icon-set designers (the brand-logo sets of the pinned npm package
`@iconify/json`); the gallery holds every other brand logo plus text-only marks rendered from dictionary words in
Debian fonts (about 60 % of METU is text-only). The evaluator's database is `queries` + `gallery`; a query's
relevant images are the other members of its `group` (the METU protocol, Tursun et al. 2017).

Install the inputs with `scripts/setup_logobench.sh`, then

    python -c "from tmrjax.data.logo_groups import build_logo_groups; build_logo_groups('small')"
    bench = tmrjax.data.sources.open_benchmark("logo_groups/small")

The build is deterministic by `seed` given the package version, fonts and word list, which it records in the
dataset's metadata with the counts, the sets and licences, and why each listed brand without a group has none.
Which icons are taken, how they are drawn and grouped is `tmrjax.data.logo_marks`; this module writes the result.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import pathlib
import time
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from tmrjax.data import iconify
from tmrjax.data.logo_marks import (
    FONT_ROOTS,
    IMAGE_SIZE,
    NEAR_COPY_DISTANCE,
    WORDS_FILE,
    LogoIcon,
    Plan,
    decode_png,
    ink_thumbnail,
    plan_benchmark,
    render_all,
    render_icon_png,
    render_text_png,
    sample_text_mark,
    thumbnail_distance,
)

DEV_BRANDS: tuple[str, ...] = tuple(
    """
    github bluetooth behance dribbble pinterest paypal dropbox windows whatsapp telegram slack spotify skype discord
    tiktok wordpress twitch snapchat npm codepen stackoverflow chrome soundcloud medium steam docker python appstore
    react javascript googledrive flickr firefox css3 safari php html5 creativecommons yarn microsoft bitbucket
    googleplus deviantart gemini nodejs laravel atm playstation xbox mastercard vuejs lastfm drupal alipay wikipedia
    quora firebase digg 500px kotlin unsplash ruby producthunt kubernetes jenkins bluesky vercel raspberrypi hardhat
    graphql cplusplus cloudflare bing terraform stumbleupon rust openai nfc netflix gatsby digitalocean debian claude
    slideshare shopify redhat kickstarter joomla etsy centos airbnb adobephotoshop weibo webpack visualstudio
    squarespace mysql mongodb magento lua jira imdb huggingface codesandbox aws algolia vue uber odnoklassniki nginx
    nextjs meetup jquery eslint bento vite tailwindcss symfony salesforce redux postgresql jsfiddle heroku
    googlecloud ebay django deno bilibili baidu arduino archlinux zig yandex xrp wix viber typo3 tripadvisor strava
    prisma
    """.split()
)
"""The development brand list (dev_brands.txt of the project's shared logobench folder), in its order."""


@dataclasses.dataclass
class LogoGroupsConfig(tfds.core.BuilderConfig):
    """What to build: distractor counts (`num_logo_distractors=None`: every logo), group rules, brands, seed."""

    num_logo_distractors: int | None = None
    num_text_distractors: int = 0
    commercial_only: bool = False  # leave out sets whose licence forbids commercial use (cbi: CC-BY-NC-SA-4.0)
    brands: tuple[str, ...] = DEV_BRANDS
    min_group_size: int = 10
    max_group_size: int = 14
    min_group_families: int = 8
    near_copy_distance: float = NEAR_COPY_DISTANCE
    seed: int = 0


_SMALL = {"num_logo_distractors": 2_000, "num_text_distractors": 3_000}
_FULL = {"num_logo_distractors": None, "num_text_distractors": 60_000}


class LogoGroups(tfds.core.GeneratorBasedBuilder):
    """Brand query groups drawn by different icon-set designers, with logo and text-only distractors."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": f"First release, from {iconify.ICONIFY_PACKAGE} {iconify.ICONIFY_VERSION}."}
    BUILDER_CONFIGS = [
        LogoGroupsConfig(name="small", description="All groups; 2k logo + 3k text distractors (CI, demo).", **_SMALL),
        LogoGroupsConfig(name="full", description="All groups; every logo distractor + 60k text marks.", **_FULL),
        LogoGroupsConfig(
            name="small_commercial", description="`small` without non-commercial sets.", commercial_only=True, **_SMALL
        ),
        LogoGroupsConfig(
            name="full_commercial", description="`full` without non-commercial sets.", commercial_only=True, **_FULL
        ),
    ]
    DEFAULT_CONFIG_NAME = "small"

    def __init__(
        self,
        *,
        iconify_dir: str | os.PathLike | None = None,
        font_roots: Sequence[str | os.PathLike] = FONT_ROOTS,
        words_file: str | os.PathLike = WORDS_FILE,
        num_workers: int | None = None,
        **kwargs,
    ):
        """Inputs come from `iconify_dir` (default: `iconify.default_iconify_dir()`), `font_roots` and
        `words_file`; rendering runs on `num_workers` processes (default: one per core). Files are array_record,
        which tfds writes and reads without TensorFlow."""
        self._iconify_dir = pathlib.Path(iconify_dir) if iconify_dir else iconify.default_iconify_dir()
        self._font_roots = tuple(font_roots)
        self._words_file = words_file
        self._workers = num_workers or os.cpu_count() or 1
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                f"METU-like trademark retrieval benchmark built from {iconify.ICONIFY_PACKAGE} "
                f"{iconify.ICONIFY_VERSION}. `queries`: groups of one brand drawn by different icon-set designers "
                "(`group` >= 0). `gallery`: logo and text-only distractors (`group` = -1). Search every query in "
                "queries + gallery; its relevant images are the other members of its group. The metadata holds the "
                "package version, counts, sets and licences, fonts, and why listed brands have no group."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format="png"),
                    "id": tfds.features.Text(),  # "<set>:<icon>" or "text:<n>"
                    "group": np.int32,  # -1 in the gallery
                    "brand": tfds.features.Text(),  # the group's brand; a gallery logo's name key; "" for text
                    "set": tfds.features.Text(),  # icon set prefix, or "font:<font file stem>"
                    "icon": tfds.features.Text(),  # icon name, or the words of a text mark
                    "licence": tfds.features.Text(),  # SPDX id of the icon set's (or font's) licence
                    "commercial": np.bool_,  # whether that licence allows commercial use
                    "kind": tfds.features.Text(),  # "logo" or "text"
                }
            ),
            metadata=tfds.core.MetadataDict(),
            homepage="https://github.com/iconify/icon-sets",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing is downloaded: the inputs come from package registries (setup script)
        self._start = time.time()
        cfg = self.builder_config
        plan = plan_benchmark(
            cfg, self._iconify_dir, font_roots=self._font_roots, words_file=self._words_file, num_workers=self._workers
        )
        self._counts = collections.Counter()
        own = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
        self.info.metadata.update(
            {
                "iconify_package": iconify.ICONIFY_PACKAGE,
                "iconify_version": iconify.ICONIFY_VERSION,
                "config": {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in own},
                "candidates": plan.candidates,
                "groups": [{"group": i, **dataclasses.asdict(g)} for i, g in enumerate(plan.groups)],
                "failed_brands": plan.failures,
                "merged_brands": plan.merged,
                "sets": plan.sets,
                "logo_pool": len(plan.logo_pool),
                "fonts": [{"file": pathlib.Path(p).name, "licence": lic} for p, lic in plan.fonts],
                "words": {"file": str(self._words_file), "count": len(plan.words)} if plan.words else None,
                "counts": self._counts,
            }
        )
        return {
            "queries": self._generate_examples("queries", plan),
            "gallery": self._generate_examples("gallery", plan),
        }

    def _generate_examples(self, split: str, plan: Plan):
        yield from (self._queries(plan) if split == "queries" else self._gallery(plan))
        self.info.metadata["build_seconds"] = round(time.time() - self._start, 1)

    def _queries(self, plan: Plan):
        for gid, group in enumerate(plan.groups):
            for uid in group.members:
                logo, png = plan.members[uid]
                self._counts["queries"] += 1
                yield uid, _logo_example(png, logo, gid, group.brand)

    def _gallery(self, plan: Plan):
        cfg = self.builder_config
        wanted = len(plan.logo_pool) if cfg.num_logo_distractors is None else cfg.num_logo_distractors
        members = plan.member_thumbnails if plan.members else np.zeros((0, 32, 32), np.float32)
        seen = set()
        renders = render_all(render_icon_png, [logo.icon for logo in plan.logo_pool], self._workers)
        try:
            for logo, (_, png) in zip(plan.logo_pool, renders):
                if self._counts["gallery_logos"] == wanted:
                    break
                if png is None:
                    self._counts["gallery_dropped_blank"] += 1
                    continue
                image = decode_png(png)
                digest = hashlib.sha1(image.tobytes()).hexdigest()
                if digest in seen:
                    self._counts["gallery_dropped_pixel_copy"] += 1
                    continue
                if len(members) and thumbnail_distance(members, ink_thumbnail(image)).min() < cfg.near_copy_distance:
                    self._counts["gallery_dropped_near_copy_of_query"] += 1
                    continue
                seen.add(digest)
                self._counts["gallery_logos"] += 1
                yield logo.uid, _logo_example(png, logo, -1, logo.key)
        finally:
            renders.close()  # stops the render processes when enough logos were taken
        licences = dict(plan.fonts)
        paths = [path for path, _ in plan.fonts]
        marks = [
            sample_text_mark(np.random.default_rng([cfg.seed, 2, i]), plan.words, paths)
            for i in range(cfg.num_text_distractors)
        ]
        for i, (mark, png) in enumerate(render_all(render_text_png, marks, self._workers)):
            uid = f"text:{i:06d}"
            self._counts["gallery_texts"] += 1
            yield (
                uid,
                {
                    "image": png,
                    "id": uid,
                    "group": -1,
                    "brand": "",
                    "set": f"font:{pathlib.Path(mark.font).stem}",
                    "icon": mark.text.replace("\n", " "),
                    "licence": licences[mark.font],
                    "commercial": True,
                    "kind": "text",
                },
            )


def _logo_example(png: bytes, logo: LogoIcon, group: int, brand: str) -> dict:
    # PNG bytes go into the dataset as they are (tfds would encode arrays with TensorFlow).
    return {
        "image": png,
        "id": logo.uid,
        "group": group,
        "brand": brand,
        "set": logo.icon.prefix,
        "icon": logo.icon.name,
        "licence": logo.licence,
        "commercial": logo.commercial,
        "kind": "logo",
    }


def build_logo_groups(
    config: str | LogoGroupsConfig = "small", data_dir: str | os.PathLike | None = None, **builder_kwargs
) -> pathlib.Path:
    """Build `logo_groups/<config>` into `data_dir` (tfds' default when None) unless already built; returns
    its folder. `builder_kwargs` go to `LogoGroups` (iconify_dir, font_roots, words_file, num_workers)."""
    builder = LogoGroups(config=config, data_dir=data_dir, **builder_kwargs)
    builder.download_and_prepare()
    return pathlib.Path(builder.data_dir)
