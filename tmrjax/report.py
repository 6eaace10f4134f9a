"""The page `tmrjax eval` leaves in out/report/: a summary of every pipeline, the backbone weights
each one used, and top-10 contact sheets (tursun2021 Fig. 2) of one query per group."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
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
GREEN, RED, GREY = (0, 150, 60), (210, 40, 40), (120, 120, 120)
INK, MUTED = (20, 20, 20), (90, 90, 90)


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


def contact_sheet(
    benchmark, vectors: np.ndarray, evaluation: Evaluation, queries: list[int], relevant: list[set[int]],
    top: int = TOP, query_vectors: np.ndarray | None = None,
) -> tuple[Image.Image, list[dict]]:
    """Rows: query then its top-`top` results (query excluded); relevant ones framed green.

    Under each thumbnail: rank and cosine similarity (the query: its AP@k in `evaluation`),
    then the end of the image id. `query_vectors`: what each of `evaluation.query_rows` searched
    with, if not its database row (query expansion). Returns the sheet and, per query, its results
    with full ids.
    """
    position = {int(r): i for i, r in enumerate(evaluation.query_rows)}
    searched = None if query_vectors is None else query_vectors[[position[int(q)] for q in queries]]
    scores = similarities(vectors, np.asarray(queries), query_vectors=searched)
    ap = f"ap_at_{evaluation.k}"
    width, height = tile_origin(len(queries), top + 1)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=FONT_SIZE)

    def tile(i: int, j: int, row: int, border, frame: int, first: str, colour) -> None:
        x, y = tile_origin(i, j)
        sheet.paste(_thumb(benchmark.image(row), border, frame), (x, y))
        draw.text((x + 1, y + THUMB + 2), shorten(first, draw, font, THUMB - 2), fill=colour, font=font)
        draw.text((x + 1, y + THUMB + 16), shorten(benchmark.id(row), draw, font, THUMB - 2), fill=MUTED, font=font)

    rows = []
    for i, (q, rel) in enumerate(zip(queries, relevant)):
        listed = {"query": benchmark.id(q), "group": int(benchmark.groups[q]),
                  ap: float(evaluation.ap_at_k_per_query[position[q]])}
        tile(i, 0, q, GREY, 3, f"query   AP {listed[ap]:.2f}", INK)
        order = [int(r) for r in np.argsort(-scores[i], kind="stable") if r != q][:top]
        results = []
        for j, r in enumerate(order, start=1):
            ok = r in rel
            tile(i, j, r, GREEN if ok else RED, 4 if ok else 1, f"#{j}   {scores[i, r]:.3f}", GREEN if ok else INK)
            results.append({"rank": j, "id": benchmark.id(r), "similarity": float(scores[i, r]), "relevant": ok})
        rows.append({**listed, "results": results})
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
    head = ("<tr><th>Method</th><th>paper row</th><th class='num'>DIM</th><th class='num'>NAR &darr;</th>"
            "<th class='num'>MAP@100 (%)</th><th class='num'>MAP (%)</th><th>protocol</th>"
            "<th>backbone weights</th></tr>")
    body = "".join(
        f"<tr class='{'random' if is_random_init(r.weights) else 'trained'}'>"
        f"<td><a href='#{_e(a)}'>{_e(r.method)}</a></td><td>{_e(r.paper_row)}</td><td class='num'>{_e(r.dim)}</td>"
        f"<td class='num'>{r.nar:.4f}</td><td class='num'>{100 * r.map_at_100:.2f}</td>"
        f"<td class='num'>{100 * r.map:.2f}</td><td>{_e(r.protocol)}</td><td>{_weights_html(r.weights)}</td></tr>"
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


def _legend_html(shown: int, total_groups: int, sheets: int, k: int) -> str:
    which = (f"one query per group for all {total_groups} groups of the benchmark" if shown == total_groups else
             f"one query per group for {shown} of the benchmark's {total_groups} groups (the first {shown})")
    split = f" Each pipeline's rows are split into {sheets} sheets of up to {SHEET_ROWS}." if sheets > 1 else ""
    return (
        "<div class='legend'>"
        f"<p><strong>Contact sheets</strong>: {_e(which)}, its first query.{_e(split)} Each row: the query "
        f"(grey frame, leftmost), then its {TOP} nearest database images, the query itself excluded.</p>"
        "<p>Green frame: a member of the query's group (<span class='green'>relevant</span>); thin red frame: "
        "<span class='red'>not relevant</span>.</p>"
        "<p>Under each result: its rank and cosine similarity, then the end of its image id; under the query: "
        f"its AP@{_e(k)}. Hover a thumbnail for the full id; top10.json lists them all.</p></div>"
    )


def _sheet_html(src: str, size: tuple[int, int], listed: list[dict], caption: str) -> str:
    """The sheet PNG with one transparent box per thumbnail whose tooltip is its full id."""
    boxes = []
    for i, entry in enumerate(listed):
        tips = [f"query, group {entry['group']}: {entry['query']}"]
        tips += [f"rank {r['rank']}, similarity {r['similarity']:.3f}, "
                 f"{'relevant' if r['relevant'] else 'not relevant'}: {r['id']}" for r in entry["results"]]
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
    """index.html, the contact-sheet PNGs and top10.json under `out_dir`; returns the HTML path.

    `rows`: the results table (`run_eval`'s), in its order: the page begins with it and gives
    each pipeline a section naming its backbone weights. `vectors` and `evaluations` are keyed by
    `Row.method`. `num_queries`: how many groups get a sample query (default: every group).
    `query_vectors`: per method, what its queries searched with when not their database rows
    (`metrics.evaluate`'s `query_vectors`).
    """
    if not rows:
        raise ValueError("write_report: no pipelines (rows is empty)")
    missing = [r.method for r in rows if r.method not in vectors or r.method not in evaluations]
    if missing:
        raise ValueError(f"write_report: no vectors or evaluation for {missing} (vectors: {sorted(vectors)}, "
                         f"evaluations: {sorted(evaluations)})")
    if num_queries is not None and num_queries < 1:
        raise ValueError(f"write_report: num_queries={num_queries}; expected a positive count or None (all groups)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = benchmark.groups
    query_rows = np.asarray(benchmark.query_rows)
    total_groups = len(set(groups[query_rows].tolist()))
    queries = sample_queries(groups, query_rows, num_queries)
    relevant = [set(np.flatnonzero(groups == groups[q]).tolist()) - {q} for q in queries]
    parts = [slice(start, start + SHEET_ROWS) for start in range(0, len(queries), SHEET_ROWS)]
    anchors = [_file_stem(i, r.method) for i, r in enumerate(rows, start=1)]

    sections, listing = [], {}
    for row, stem in zip(rows, anchors):
        evaluation = evaluations[row.method]
        listing[row.method], sheets = [], []
        for n, part in enumerate(parts, start=1):
            sheet, listed = contact_sheet(benchmark, vectors[row.method], evaluation, queries[part], relevant[part],
                                          query_vectors=(query_vectors or {}).get(row.method))
            png = out / (f"{stem}.png" if len(parts) == 1 else f"{stem}-{n}.png")
            sheet.save(png)
            listing[row.method] += listed
            first, last = part.start + 1, part.start + len(listed)
            caption = f"{row.method}: top-{TOP} of sample queries {first}-{last} of {len(queries)}"
            heading = f"<p class='part'>Groups {first}&ndash;{last} of {len(queries)}</p>" if len(parts) > 1 else ""
            sheets.append(heading + _sheet_html(png.name, sheet.size, listed, caption))
        warning = ("<div class='warn'><strong>Random initialisation.</strong> This pipeline's backbone has no "
                   f"trained weights (<code>{_e(row.weights)}</code>): its scores and rankings measure an "
                   "untrained network, not the method.</div>") if is_random_init(row.weights) else ""
        sections.append(
            f"<section id='{_e(stem)}'><h2>{_e(row.method)}<span class='paper'>{_e(row.paper_row)}</span></h2>"
            f"<p>Backbone weights: {_weights_html(row.weights)}</p>{warning}"
            f"<p class='scores'>DIM {_e(row.dim)} &middot; NAR {row.nar:.4f} (lower is better) &middot; "
            f"MAP@100 {100 * row.map_at_100:.2f} % &middot; MAP {100 * row.map:.2f} % &middot; "
            f"protocol {_e(row.protocol)}</p>" + "".join(sheets) + "</section>"
        )
    (out / "top10.json").write_text(json.dumps(listing, indent=2) + "\n")

    num_distractors = int((groups < 0).sum())
    k = evaluations[rows[0].method].k
    page = (
        "<!doctype html><html lang='en'><meta charset='utf-8'>"
        f"<title>{_e(benchmark.name)}: tmrjax retrieval report</title><style>{_STYLE}</style>"
        f"<h1>{_e(benchmark.name)}: retrieval report</h1>"
        f"<p class='meta'>{len(query_rows)} queries in {total_groups} groups + {num_distractors} distractors; "
        f"{len(rows)} pipelines.</p>" + _files_html(out) + _random_init_html(rows)
        + "<h2>Summary</h2>" + _summary_html(rows, anchors)
        + _legend_html(len(queries), total_groups, len(parts), k) + "".join(sections) + "</html>\n"
    )
    path = out / "index.html"
    path.write_text(page)
    return path
