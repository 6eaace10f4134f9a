"""Visual report of retrieval results: top-10 contact sheets (tursun2021 Fig. 2) and an HTML page."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .metrics import Evaluation, similarities

THUMB = 96
PAD = 6
LABEL = 16
GREEN, RED, GREY = (0, 160, 60), (210, 40, 40), (120, 120, 120)


def sample_queries(groups: np.ndarray, query_rows: np.ndarray, count: int) -> list[int]:
    """The first query of each group, for up to `count` groups (deterministic)."""
    chosen, seen = [], set()
    for row in query_rows:
        g = int(groups[row])
        if g not in seen:
            seen.add(g)
            chosen.append(int(row))
        if len(chosen) == count:
            break
    return chosen


def _thumb(image: np.ndarray, border: tuple[int, int, int], width: int) -> Image.Image:
    tile = Image.new("RGB", (THUMB, THUMB), border)
    inner = Image.fromarray(image).convert("RGB")
    inner.thumbnail((THUMB - 2 * width, THUMB - 2 * width))
    canvas = Image.new("RGB", (THUMB - 2 * width, THUMB - 2 * width), "white")
    canvas.paste(inner, ((canvas.width - inner.width) // 2, (canvas.height - inner.height) // 2))
    tile.paste(canvas, (width, width))
    return tile


def contact_sheet(
    benchmark, vectors: np.ndarray, queries: list[int], relevant: list[set[int]], top: int = 10
) -> tuple[Image.Image, list[dict]]:
    """Rows: query then its top-`top` results (query excluded); relevant ones framed green."""
    scores = similarities(vectors, np.asarray(queries))
    cols = top + 1
    sheet = Image.new("RGB", (PAD + cols * (THUMB + PAD), PAD + len(queries) * (THUMB + LABEL + PAD)), "white")
    draw = ImageDraw.Draw(sheet)
    rows = []
    for i, (q, rel) in enumerate(zip(queries, relevant)):
        order = [int(r) for r in np.argsort(-scores[i], kind="stable") if r != q][:top]
        y = PAD + i * (THUMB + LABEL + PAD)
        sheet.paste(_thumb(benchmark.image(q), GREY, 3), (PAD, y))
        draw.text((PAD, y + THUMB + 2), "query", fill=(0, 0, 0))
        results = []
        for j, r in enumerate(order, start=1):
            ok = r in rel
            x = PAD + j * (THUMB + PAD)
            sheet.paste(_thumb(benchmark.image(r), GREEN if ok else RED, 4 if ok else 1), (x, y))
            draw.text((x, y + THUMB + 2), f"{j}: {scores[i, r]:.3f}", fill=GREEN if ok else (0, 0, 0))
            results.append({"rank": j, "id": benchmark.id(r), "similarity": float(scores[i, r]), "relevant": ok})
        rows.append({"query": benchmark.id(q), "results": results})
    return sheet, rows


def write_report(
    out_dir: str | Path,
    benchmark,
    vectors: Mapping[str, np.ndarray],
    evaluations: Mapping[str, Evaluation],
    num_queries: int = 8,
) -> Path:
    """One PNG contact sheet per pipeline plus index.html; returns the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = benchmark.groups
    queries = sample_queries(groups, benchmark.query_rows, num_queries)
    relevant = [set(np.flatnonzero(groups == groups[q]).tolist()) - {q} for q in queries]
    sections, listing = [], {}
    for name, v in vectors.items():
        sheet, rows = contact_sheet(benchmark, v, queries, relevant)
        png = out / f"{name}.png"
        sheet.save(png)
        listing[name] = rows
        e = evaluations[name]
        sections.append(
            f"<h2>{html.escape(name)}</h2><p>NAR {e.nar:.4f} &middot; MAP@100 {100 * e.map_at_k:.2f} "
            f"&middot; MAP {100 * e.map:.2f} ({html.escape(e.protocol)})</p><img src='{png.name}'>"
        )
    (out / "top10.json").write_text(json.dumps(listing, indent=2) + "\n")
    page = (
        "<!doctype html><meta charset='utf-8'><title>tmrjax retrieval report</title>"
        f"<h1>{html.escape(benchmark.name)}: top-10 per query</h1>"
        "<p>Leftmost: the query (one per group). Green frame: a member of the query's group "
        "(relevant); red: not relevant. Numbers: rank and cosine similarity.</p>" + "".join(sections)
    )
    path = out / "index.html"
    path.write_text(page)
    return path
