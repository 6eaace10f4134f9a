"""The page `tmrjax eval` leaves in out/report/: a summary of every pipeline, the backbone weights
each one used, and top-10 contact sheets (tursun2021 Fig. 2) of one query per group, or of every query of
a revisited benchmark with its easy / hard / junk / negative marks (jeong2017 Fig. 2)."""

from __future__ import annotations

import dataclasses
import functools
import html
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .metrics import Evaluation, similarities

if TYPE_CHECKING:
    from .evaluation import Row

THUMB = 96
PAD = 6
LABEL = 30  # two text lines under each thumbnail: rank and similarity, then the end of the image id
FONT_SIZE = 11
SHEET_ROWS = 50  # queries per PNG: a benchmark with more groups gets several sheets per pipeline
TOP = 10
GREEN, RED, GREY, BLUE = (0, 150, 60), (210, 40, 40), (120, 120, 120), (20, 90, 200)
INK, MUTED = (20, 20, 20), (90, 90, 90)
# A result's judgement -> (frame colour, frame width, whether it counts as relevant): group members, or the
# revisited ground truth (easy and hard are the Medium setup's positives; junk is ignored by every setup).
JUDGEMENTS: dict[str, tuple[tuple[int, int, int], int, bool]] = {
    "relevant": (GREEN, 4, True), "not relevant": (RED, 1, False),
    "easy": (GREEN, 4, True), "hard": (BLUE, 4, True), "junk": (GREY, 2, False), "negative": (RED, 1, False),
}


@dataclasses.dataclass(frozen=True)
class SampleQuery:
    """One row of a contact sheet: the query, its scores against every database row, and the judgement of the
    database rows that are not negatives (`JUDGEMENTS`; the others get `otherwise`)."""

    id: str
    image: Callable[[], np.ndarray]
    title: str  # the start of the query's tooltip, e.g. "query, group 3"
    caption: str  # the first line under the query, e.g. "query   AP 0.53"
    scores: np.ndarray  # (N,) float32
    judged: Mapping[int, str]
    otherwise: str
    skip: int | None  # the query's own database row, never listed among its results
    listed: dict  # the query's fields in top10.json


def _e(value: object) -> str:
    """Text or attribute value, escaped for HTML."""
    return html.escape(str(value), quote=True)


def is_random_init(weights: str) -> bool:
    """Whether a `Row.weights` tag says the backbone had no trained weights."""
    return weights.startswith("random-init")


def sample_queries(groups: np.ndarray, query_rows: np.ndarray, count: int | None = None) -> list[int]:
    """The first query of each group, in query order, for every group or the first `count` (deterministic)."""
    chosen, seen = [], set()
    for row in query_rows:
        if count is not None and len(chosen) == count:
            break
        g = int(groups[row])
        if g not in seen:
            seen.add(g)
            chosen.append(int(row))
    return chosen


def shorten(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> str:
    """`text`, or its last characters after an ellipsis, so that it fits `width` pixels (ids end in the name)."""
    if draw.textlength(text, font=font) <= width:
        return text
    for start in range(1, len(text)):
        short = "\u2026" + text[start:]
        if draw.textlength(short, font=font) <= width:
            return short
    return "\u2026"


def tile_origin(row: int, column: int) -> tuple[int, int]:
    """Top-left pixel of a thumbnail on a contact sheet: column 0 is the query, 1..10 its results."""
    return PAD + column * (THUMB + PAD), PAD + row * (THUMB + LABEL + PAD)


def _thumb(image: np.ndarray, border: tuple[int, int, int], width: int) -> Image.Image:
    tile = Image.new("RGB", (THUMB, THUMB), border)
    inner = Image.fromarray(image).convert("RGB")
    inner.thumbnail((THUMB - 2 * width - 4, THUMB - 2 * width - 4))  # a white gap inside the frame
    canvas = Image.new("RGB", (THUMB - 2 * width, THUMB - 2 * width), "white")
    canvas.paste(inner, ((canvas.width - inner.width) // 2, (canvas.height - inner.height) // 2))
    tile.paste(canvas, (width, width))
    return tile


def group_samples(benchmark, vectors: np.ndarray, evaluation: Evaluation, num_queries: int | None = None,
                  query_vectors: np.ndarray | None = None) -> list[SampleQuery]:
    """The first query of each group (or of the first `num_queries` groups), relevant = the rest of its group.

    Under the query: its AP@k in `evaluation`. `query_vectors`: what each of `evaluation.query_rows` searched
    with, if not its database row (query expansion)."""
    groups = benchmark.groups
    queries = sample_queries(groups, np.asarray(benchmark.query_rows), num_queries)
    position = {int(r): i for i, r in enumerate(evaluation.query_rows)}
    searched = None if query_vectors is None else query_vectors[[position[q] for q in queries]]
    scores = similarities(vectors, np.asarray(queries), query_vectors=searched)
    ap = f"ap_at_{evaluation.k}"
    samples = []
    for q, row_scores in zip(queries, scores):
        group, value = int(groups[q]), float(evaluation.ap_at_k_per_query[position[q]])
        members = set(np.flatnonzero(groups == groups[q]).tolist()) - {q}
        samples.append(SampleQuery(benchmark.id(q), functools.partial(benchmark.image, q), f"query, group {group}",
                                   f"query   AP {value:.2f}", row_scores, dict.fromkeys(members, "relevant"),
                                   "not relevant", q, {"query": benchmark.id(q), "group": group, ap: value}))
    return samples


def revisited_samples(benchmark, scores: np.ndarray, ap: np.ndarray,
                      num_queries: int | None = None) -> list[SampleQuery]:
    """Every query of a `RevisitedBenchmark` (or the first `num_queries`) with its easy / hard / junk database
    rows; `scores` (Q, N) what it searched with against the database, `ap` (Q,) its Medium AP."""
    samples = []
    for q in range(benchmark.num_queries if num_queries is None else min(num_queries, benchmark.num_queries)):
        truth = benchmark.ground_truth[q]
        judged = {int(r): key for key in ("junk", "hard", "easy") for r in truth[key]}
        query = benchmark.queries.ids[q]
        samples.append(SampleQuery(query, functools.partial(benchmark.queries.load, q), f"query {q}",
                                   f"query   AP {ap[q]:.2f}", scores[q], judged, "negative", None,
                                   {"query": query, "medium_ap": float(ap[q])}))
    return samples


def contact_sheet(benchmark, samples: Sequence[SampleQuery], top: int = TOP) -> tuple[Image.Image, list[dict]]:
    """Rows: query then its top-`top` database images (never the query's own row), framed by their judgement.

    Under each thumbnail: rank and score (the query: its caption), then the end of the image id.
    Returns the sheet and, per query, its results with full ids.
    """
    width, height = tile_origin(len(samples), top + 1)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=FONT_SIZE)

    def tile(i: int, j: int, image: np.ndarray, name: str, border, frame: int, first: str, colour) -> None:
        x, y = tile_origin(i, j)
        sheet.paste(_thumb(image, border, frame), (x, y))
        draw.text((x + 1, y + THUMB + 2), shorten(first, draw, font, THUMB - 2), fill=colour, font=font)
        draw.text((x + 1, y + THUMB + 16), shorten(name, draw, font, THUMB - 2), fill=MUTED, font=font)

    rows = []
    for i, sample in enumerate(samples):
        tile(i, 0, sample.image(), sample.id, GREY, 3, sample.caption, INK)
        order = [int(r) for r in np.argsort(-sample.scores, kind="stable") if r != sample.skip][:top]
        results = []
        for j, r in enumerate(order, start=1):
            label = sample.judged.get(r, sample.otherwise)
            border, frame, ok = JUDGEMENTS[label]
            tile(i, j, benchmark.image(r), benchmark.id(r), border, frame, f"#{j}   {sample.scores[r]:.3f}",
                 border if ok else INK)
            results.append({"rank": j, "id": benchmark.id(r), "similarity": float(sample.scores[r]),
                            "relevant": ok, "label": label})
        rows.append({**sample.listed, "title": sample.title, "results": results})
    return sheet, rows


# ----------------------------------------------------------------------------------------
# The HTML page


_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1a1a1a;
       margin: 24px auto; max-width: 1180px; padding: 0 16px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 0 0 6px; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f2f2f2;
       padding: 1px 4px; border-radius: 3px; }
.meta { color: #555; margin: 0 0 12px; }
.files a { margin-right: 12px; }
table.summary { border-collapse: collapse; margin: 8px 0 20px; font-size: 14px; }
table.summary th, table.summary td { padding: 5px 10px; border-bottom: 1px solid #ddd; text-align: left; }
table.summary th { background: #f5f5f5; border-bottom: 2px solid #bbb; }
table.summary td.num, table.summary th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.random td { background: #fff4f2; }
.warn { background: #fdecea; border: 2px solid #d93025; color: #8c1d18; padding: 8px 12px;
        border-radius: 6px; margin: 8px 0; }
.badge { background: #d93025; color: #fff; font-size: 12px; font-weight: 600; padding: 1px 6px;
         border-radius: 3px; margin-left: 6px; white-space: nowrap; }
.legend { background: #f7f9fc; border: 1px solid #d6dfeb; padding: 8px 12px; border-radius: 6px; }
.legend p { margin: 4px 0; }
section { border-top: 1px solid #ccc; margin-top: 28px; padding-top: 16px; }
.paper { color: #555; font-weight: normal; font-size: 15px; margin-left: 8px; }
.scores { margin: 4px 0 10px; font-variant-numeric: tabular-nums; }
.part { color: #555; margin: 10px 0 4px; }
.scroll { overflow-x: auto; }
.sheet { position: relative; }
.sheet img { display: block; }
.sheet span { position: absolute; }
.green { color: #00963c; font-weight: 600; }
.red { color: #d22828; font-weight: 600; }
"""


def _files_html(out: Path) -> str:
    """Links to the run's machine-readable results: top10.json here, results.json/.txt beside the folder."""
    links = [("top10.json", "top10.json", "every result shown, with full ids")]
    links += [(f"../{name}", name, what) for name, what in
              (("results.json", "the results table"), ("results.txt", "the table as printed"))
              if (out.parent / name).is_file()]
    return "<p class='files'>Files: " + "".join(
        f"<a href='{_e(href)}'>{_e(name)}</a> <span class='meta'>({_e(what)})</span> " for href, name, what in links
    ) + "</p>"


def _weights_html(weights: str) -> str:
    badge = "<span class='badge'>RANDOM INIT: not trained</span>" if is_random_init(weights) else ""
    return f"<code>{_e(weights)}</code>{badge}"


def _summary_html(rows: Sequence[Row], anchors: Sequence[str]) -> str:
    """The results table: method, paper row, each row's `cells` (DIM and its scores), protocol, weights."""
    numbers = "".join(f"<th class='num'>{_e(h)}</th>" for h, _ in rows[0].cells())
    head = f"<tr><th>Method</th><th>paper row</th>{numbers}<th>protocol</th><th>backbone weights</th></tr>"
    body = "".join(
        f"<tr class='{'random' if is_random_init(r.weights) else 'trained'}'>"
        f"<td><a href='#{_e(a)}'>{_e(r.method)}</a></td><td>{_e(r.paper_row)}</td>"
        + "".join(f"<td class='num'>{_e(v)}</td>" for _, v in r.cells())
        + f"<td>{_e(r.protocol)}</td><td>{_weights_html(r.weights)}</td></tr>"
        for r, a in zip(rows, anchors)
    )
    return f"<table class='summary'>{head}{body}</table>"


def _random_init_html(rows: Sequence[Row]) -> str:
    methods = [r.method for r in rows if is_random_init(r.weights)]
    if not methods:
        return ""
    return (f"<div class='warn'><strong>{len(methods)} of {len(rows)} pipelines ran on a randomly initialised "
            f"backbone</strong> (no trained weights given for its architecture): {_e(', '.join(methods))}. "
            "Their scores and rankings measure an untrained network, not the papers' methods.</div>")


def _legend_html(which: str, sheets: int, marks: str, caption: str, excluded: str) -> str:
    split = f" Each pipeline's rows are split into {sheets} sheets of up to {SHEET_ROWS}." if sheets > 1 else ""
    return (
        "<div class='legend'>"
        f"<p><strong>Contact sheets</strong>: {_e(which)}.{_e(split)} Each row: the query "
        f"(grey frame, leftmost), then its {TOP} nearest database images{_e(excluded)}.</p>"
        f"<p>{marks}</p>"
        "<p>Under each result: its rank and cosine similarity, then the end of its image id; under the query: "
        f"{_e(caption)}. Hover a thumbnail for the full id; top10.json lists them all.</p></div>"
    )


def _sheet_html(src: str, size: tuple[int, int], listed: list[dict], caption: str) -> str:
    """The sheet PNG with one transparent box per thumbnail whose tooltip is its full id."""
    boxes = []
    for i, entry in enumerate(listed):
        tips = [f"{entry['title']}: {entry['query']}"]
        tips += [f"rank {r['rank']}, similarity {r['similarity']:.3f}, {r['label']}: {r['id']}"
                 for r in entry["results"]]
        for j, tip in enumerate(tips):
            x, y = tile_origin(i, j)
            boxes.append(f"<span style='left:{x}px;top:{y}px;width:{THUMB}px;height:{THUMB + LABEL}px' "
                         f"title='{_e(tip)}'></span>")
    width, height = size
    return (f"<div class='scroll'><div class='sheet' style='width:{width}px;height:{height}px'>"
            f"<img src='{_e(src)}' width='{width}' height='{height}' alt='{_e(caption)}' loading='lazy'>"
            + "".join(boxes) + "</div></div>")


def _file_stem(index: int, method: str) -> str:
    """A file name and anchor for a pipeline: its place in the table, then its name made safe."""
    return f"{index:02d}-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in method)


def write_report(
    out_dir: str | Path,
    benchmark,
    vectors: Mapping[str, np.ndarray],
    evaluations: Mapping[str, Evaluation],
    rows: Sequence[Row],
    num_queries: int | None = None,
    query_vectors: Mapping[str, np.ndarray | None] | None = None,
) -> Path:
    """The report of a group benchmark (`data.sources.Benchmark`): index.html, the contact-sheet PNGs and
    top10.json under `out_dir`; returns the HTML path.

    `rows`: the results table (`run_eval`'s), in its order: the page begins with it and gives
    each pipeline a section naming its backbone weights. `vectors` and `evaluations` are keyed by
    `Row.method`. `num_queries`: how many groups get a sample query (default: every group).
    `query_vectors`: per method, what its queries searched with when not their database rows
    (`metrics.evaluate`'s `query_vectors`).
    """
    missing = [r.method for r in rows if r.method not in vectors or r.method not in evaluations]
    if missing:
        raise ValueError(f"write_report: no vectors or evaluation for {missing} (vectors: {sorted(vectors)}, "
                         f"evaluations: {sorted(evaluations)})")
    _check_report(rows, num_queries)
    groups, query_rows = benchmark.groups, np.asarray(benchmark.query_rows)
    total = len(set(groups[query_rows].tolist()))
    samples = {r.method: group_samples(benchmark, vectors[r.method], evaluations[r.method], num_queries,
                                       (query_vectors or {}).get(r.method)) for r in rows}
    shown = len(samples[rows[0].method])
    which = (f"one query per group for all {total} groups of the benchmark, its first query" if shown == total else
             f"one query per group for {shown} of the benchmark's {total} groups (the first {shown}), its first query")
    marks = ("Green frame: a member of the query's group (<span class='green'>relevant</span>); thin red frame: "
             "<span class='red'>not relevant</span>.")
    meta = f"{len(query_rows)} queries in {total} groups + {int((groups < 0).sum())} distractors"
    return write_page(out_dir, benchmark, samples, rows, meta, which, marks,
                      f"its AP@{evaluations[rows[0].method].k}", "Groups", ", the query itself excluded")


def write_revisited_report(
    out_dir: str | Path,
    benchmark,
    scores: Mapping[str, np.ndarray],
    medium_ap: Mapping[str, np.ndarray],
    rows: Sequence[Row],
    num_queries: int | None = None,
) -> Path:
    """The report of a `data.sources.RevisitedBenchmark`, as `write_report`: every query (or the first
    `num_queries`) with its top 10 marked by the ground truth; `scores` (Q, N) of what each method's queries
    searched with against the database, `medium_ap` (Q,) their Medium AP, keyed by `Row.method`."""
    missing = [r.method for r in rows if r.method not in scores or r.method not in medium_ap]
    if missing:
        raise ValueError(f"write_revisited_report: no scores or AP for {missing}")
    _check_report(rows, num_queries)
    samples = {r.method: revisited_samples(benchmark, scores[r.method], medium_ap[r.method], num_queries)
               for r in rows}
    shown = len(samples[rows[0].method])
    which = (f"all {shown} queries" if shown == benchmark.num_queries else
             f"the first {shown} of the {benchmark.num_queries} queries") + ", each cropped to its box"
    marks = ("Green frame: <span class='green'>easy</span>; blue frame: hard (both positives of the Medium "
             "setup); grey frame: junk, ignored by every setup; thin red frame: <span class='red'>negative</span>.")
    return write_page(out_dir, benchmark, samples, rows, benchmark.describe(), which, marks, "its Medium AP",
                      "Queries", " (a cropped query is not in the database)")


def _check_report(rows: Sequence[Row], num_queries: int | None) -> None:
    if not rows:
        raise ValueError("write_report: no pipelines (rows is empty)")
    if num_queries is not None and num_queries < 1:
        raise ValueError(f"write_report: num_queries={num_queries}; expected a positive count or None (all groups)")


def write_page(out_dir: str | Path, benchmark, samples: Mapping[str, Sequence[SampleQuery]], rows: Sequence[Row],
               meta: str, which: str, marks: str, caption: str, noun: str, excluded: str) -> Path:
    """index.html (summary, legend, one section per row), the contact-sheet PNGs and top10.json of the
    `samples` of each row's method; `benchmark` gives the database images and ids; `excluded` ends the
    legend's sentence on what the nearest database images leave out."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    count = len(samples[rows[0].method])
    parts = [slice(start, start + SHEET_ROWS) for start in range(0, count, SHEET_ROWS)]
    anchors = [_file_stem(i, r.method) for i, r in enumerate(rows, start=1)]

    sections, listing = [], {}
    for row, stem in zip(rows, anchors):
        listing[row.method], sheets = [], []
        for n, part in enumerate(parts, start=1):
            sheet, listed = contact_sheet(benchmark, samples[row.method][part])
            png = out / (f"{stem}.png" if len(parts) == 1 else f"{stem}-{n}.png")
            sheet.save(png)
            listing[row.method] += listed
            first, last = part.start + 1, part.start + len(listed)
            alt = f"{row.method}: top-{TOP} of sample queries {first}-{last} of {count}"
            heading = f"<p class='part'>{noun} {first}&ndash;{last} of {count}</p>" if len(parts) > 1 else ""
            sheets.append(heading + _sheet_html(png.name, sheet.size, listed, alt))
        warning = ("<div class='warn'><strong>Random initialisation.</strong> This pipeline's backbone has no "
                   f"trained weights (<code>{_e(row.weights)}</code>): its scores and rankings measure an "
                   "untrained network, not the method.</div>") if is_random_init(row.weights) else ""
        scores = " &middot; ".join(f"{_e(h)} {_e(v)}" for h, v in row.cells())
        sections.append(
            f"<section id='{_e(stem)}'><h2>{_e(row.method)}<span class='paper'>{_e(row.paper_row)}</span></h2>"
            f"<p>Backbone weights: {_weights_html(row.weights)}</p>{warning}"
            f"<p class='scores'>{scores} &middot; protocol {_e(row.protocol)}</p>" + "".join(sheets) + "</section>"
        )
    (out / "top10.json").write_text(json.dumps(listing, indent=2) + "\n")

    page = (
        "<!doctype html><html lang='en'><meta charset='utf-8'>"
        f"<title>{_e(benchmark.name)}: tmrjax retrieval report</title><style>{_STYLE}</style>"
        f"<h1>{_e(benchmark.name)}: retrieval report</h1>"
        f"<p class='meta'>{_e(meta)}; {len(rows)} pipelines.</p>" + _files_html(out) + _random_init_html(rows)
        + "<h2>Summary</h2>" + _summary_html(rows, anchors)
        + _legend_html(which, len(parts), marks, caption, excluded) + "".join(sections) + "</html>\n"
    )
    path = out / "index.html"
    path.write_text(page)
    return path
