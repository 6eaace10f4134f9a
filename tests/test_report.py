"""tmrjax/report.py: the HTML page of `tmrjax eval` on a small in-memory benchmark."""

import dataclasses
import json
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

import tmrjax.report as report
from tmrjax.data.sources import Benchmark
from tmrjax.evaluation import Row
from tmrjax.metrics import evaluate
from tmrjax.report import LABEL, PAD, THUMB, shorten, tile_origin, write_report

GROUPS = 12
HOSTILE = "\"><script>alert('id')</script>"


@pytest.fixture
def bench(mark_factory):
    """12 groups of 2 + 5 distractors; one query id is hostile HTML, one id is long."""
    draw_mark = mark_factory[0]
    queries = []
    for group in range(GROUPS):
        for member, size in enumerate([(96, 96), (128, 80)]):
            uid = f"icons:group-{group:02d}-member-{member}"
            if (group, member) == (3, 1):
                uid = HOSTILE
            queries.append({"image": np.asarray(draw_mark(group, size).convert("RGB")), "id": uid.encode(),
                            "group": group})
    gallery = [{"image": np.asarray(draw_mark(200 + i).convert("RGB")), "id": f"d{i}".encode(), "group": -1}
               for i in range(5)]
    return Benchmark.from_records("tiny/<report>", queries, gallery)


def _vectors(bench: Benchmark, seed: int) -> np.ndarray:
    """Group centroids plus noise: members of a group are each other's nearest neighbours, mostly."""
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((GROUPS + 1, 16))
    v = centroids[np.where(bench.groups >= 0, bench.groups, GROUPS)] + 0.6 * rng.standard_normal((len(bench), 16))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _inputs(bench, weights=("vgg16-tv-1a2b3c4d", "random-init")):
    names = ["spoc", "<b>r_smac</b>"]
    vectors = {name: _vectors(bench, seed) for seed, name in enumerate(names)}
    evaluations = {n: evaluate(v, bench.query_rows, bench.relevant, k=100) for n, v in vectors.items()}
    rows = [Row(n, f"paper row of {n} & co", 16, e.nar, e.map_at_k, e.map, e.protocol, w)
            for (n, e), w in zip(evaluations.items(), weights)]
    return vectors, evaluations, rows


class _Page(HTMLParser):
    """Start tags (with unescaped attributes) and text, each tagged with the section it is in."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict, str | None]] = []
        self.text: dict[str | None, list[str]] = {}
        self.section = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.section = attrs["id"]
        self.tags.append((tag, attrs, self.section))

    def handle_endtag(self, tag):
        if tag == "section":
            self.section = None

    def handle_data(self, data):
        self.text.setdefault(self.section, []).append(data)

    def find(self, tag: str, section="any") -> list[dict]:
        return [a for t, a, s in self.tags if t == tag and (section == "any" or s == section)]

    def words(self, section=None) -> str:
        return " ".join(" ".join(self.text.get(section, [])).split())


def test_page_begins_with_a_summary_of_every_pipeline_and_its_weights_linking_to_its_section(bench, tmp_path):
    vectors, evaluations, rows = _inputs(bench)
    page_path = write_report(tmp_path / "report", bench, vectors, evaluations, rows)
    text = page_path.read_text()
    page = _Page(text)
    assert text.index("<table class='summary'>") < text.index("<section")
    sections = [a["id"] for a in page.find("section")]
    assert sections == ["01-spoc", "02-_b_r_smac__b_"]  # table order; names made safe for files and anchors
    links = [a["href"] for a in page.find("a")]
    assert links[-2:] == ["#01-spoc", "#02-_b_r_smac__b_"]
    summary = text[text.index("<table class='summary'>"): text.index("</table>")]
    for r in rows:
        for cell in (r.method, r.paper_row, r.protocol, r.weights, f"{r.nar:.4f}", f"{100 * r.map_at_100:.2f}",
                     f"{100 * r.map:.2f}"):
            assert report.html.escape(cell, quote=True) in summary
    # Each section names its pipeline's weights too.
    assert "Backbone weights: vgg16-tv-1a2b3c4d" in page.words("01-spoc")
    assert "Backbone weights: random-init" in page.words("02-_b_r_smac__b_")


def test_random_init_weights_are_flagged_on_the_page_and_in_their_section_only(bench, tmp_path):
    vectors, evaluations, rows = _inputs(bench)
    page = _Page(write_report(tmp_path / "report", bench, vectors, evaluations, rows).read_text())
    assert "1 of 2 pipelines ran on a randomly initialised backbone" in page.words()
    assert "RANDOM INIT: not trained" in page.words()  # its summary row
    assert "Random initialisation." in page.words("02-_b_r_smac__b_")
    assert "Random" not in page.words("01-spoc") and "RANDOM" not in page.words("01-spoc")
    assert [a.get("class") for a in page.find("tr")] == [None, "trained", "random"]

    _, _, trained = _inputs(bench, weights=("vgg16-tv-1a2b3c4d", "resnet50-tv-0badf00d"))
    calm = write_report(tmp_path / "trained", bench, vectors, evaluations, trained).read_text()
    assert "class='warn'" not in calm and "RANDOM" not in calm


def test_one_query_per_group_for_every_group_and_the_legend_says_so(bench, tmp_path):
    vectors, evaluations, rows = _inputs(bench)
    page_path = write_report(tmp_path / "report", bench, vectors, evaluations, rows)
    page = _Page(page_path.read_text())
    assert f"one query per group for all {GROUPS} groups of the benchmark" in page.words()
    top10 = json.loads((page_path.parent / "top10.json").read_text())
    assert list(top10) == ["spoc", "<b>r_smac</b>"]
    for listed in top10.values():
        assert [q["group"] for q in listed] == list(range(GROUPS))
        assert [q["query"] for q in listed] == [bench.id(2 * g) for g in range(GROUPS)]
        assert all(len(q["results"]) == 10 for q in listed)
        assert all(0.0 <= q["ap_at_100"] <= 1.0 for q in listed)
    sheets = [a["src"] for a in page.find("img")]
    assert sheets == ["01-spoc.png", "02-_b_r_smac__b_.png"]
    for src in sheets:
        size = Image.open(page_path.parent / src).size
        assert size == (PAD + 11 * (THUMB + PAD), PAD + GROUPS * (THUMB + LABEL + PAD))


def test_a_cap_on_the_sample_queries_is_stated_exactly(bench, tmp_path):
    vectors, evaluations, rows = _inputs(bench)
    page_path = write_report(tmp_path / "report", bench, vectors, evaluations, rows, num_queries=5)
    legend = _Page(page_path.read_text()).words()
    assert "one query per group for 5 of the benchmark's 12 groups (the first 5)" in legend
    assert [len(v) for v in json.loads((page_path.parent / "top10.json").read_text()).values()] == [5, 5]
    with pytest.raises(ValueError, match="num_queries=0; expected a positive count or None"):
        write_report(tmp_path / "bad", bench, vectors, evaluations, rows, num_queries=0)


def test_many_groups_are_split_into_several_sheets_per_pipeline(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "SHEET_ROWS", 5)
    vectors, evaluations, rows = _inputs(bench)
    page_path = write_report(tmp_path / "report", bench, vectors, evaluations, rows)
    page = _Page(page_path.read_text())
    assert "Each pipeline's rows are split into 3 sheets of up to 5." in page.words()
    srcs = [a["src"] for a in page.find("img", "01-spoc")]
    assert srcs == ["01-spoc-1.png", "01-spoc-2.png", "01-spoc-3.png"]
    heights = [Image.open(page_path.parent / s).height for s in srcs]
    assert heights == [PAD + n * (THUMB + LABEL + PAD) for n in (5, 5, 2)]
    assert "Groups 11\u201312 of 12" in page.words("01-spoc")


def test_every_thumbnail_has_its_rank_similarity_and_id(bench, tmp_path):
    vectors, evaluations, rows = _inputs(bench)
    page_path = write_report(tmp_path / "report", bench, vectors, evaluations, rows)
    page = _Page(page_path.read_text())
    top10 = json.loads((page_path.parent / "top10.json").read_text())
    for stem, (method, listed) in zip(["01-spoc", "02-_b_r_smac__b_"], top10.items()):
        tips = [a["title"] for a in page.find("span", stem) if "title" in a]
        expected = []
        for q in listed:
            expected.append(f"query, group {q['group']}: {q['query']}")
            expected += [f"rank {r['rank']}, similarity {r['similarity']:.3f}, "
                         f"{'relevant' if r['relevant'] else 'not relevant'}: {r['id']}" for r in q["results"]]
        assert tips == expected, method
        # Two lines of text are drawn under every tile of the sheet.
        sheet = np.asarray(Image.open(page_path.parent / f"{stem}.png").convert("L"))
        for i in range(GROUPS):
            for j in range(11):
                x, y = tile_origin(i, j)
                for top, bottom in ((y + THUMB + 2, y + THUMB + 15), (y + THUMB + 16, y + THUMB + LABEL)):
                    assert (sheet[top:bottom, x: x + THUMB] < 128).any(), (method, i, j)


def test_ids_too_long_for_a_thumbnail_keep_their_end():
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font = ImageFont.load_default(size=report.FONT_SIZE)
    long = "trademark_dataset/1234567.jpg"
    short = shorten(long, draw, font, THUMB - 2)
    assert short.startswith("\u2026") and long.endswith(short[1:]) and len(short) > 6
    assert draw.textlength(short, font=font) <= THUMB - 2
    assert shorten("d1", draw, font, THUMB - 2) == "d1"


def test_hostile_ids_and_names_are_escaped(bench, tmp_path):
    vectors, evaluations, rows = _inputs(bench)
    text = write_report(tmp_path / "report", bench, vectors, evaluations, rows).read_text()
    assert "<script>" not in text and "<b>" not in text and "tiny/<report>" not in text
    assert "&quot;&gt;&lt;script&gt;alert(&#x27;id&#x27;)&lt;/script&gt;" in text
    assert "&lt;b&gt;r_smac&lt;/b&gt;" in text and "tiny/&lt;report&gt;" in text and "&amp; co" in text
    page = _Page(text)
    assert any(a["title"].endswith(": " + HOSTILE) for a in page.find("span") if "title" in a)


# A file name and anchor that would end its attribute, add one and open a tag if written unescaped.
HOSTILE_STEM = "\"' onerror='alert(1)' x=\"<script>alert(1)<"
TAG_ATTRIBUTES = {
    "html": {"lang"}, "meta": {"charset"}, "title": set(), "style": set(), "h1": set(), "h2": set(), "p": {"class"},
    "a": {"href"}, "span": {"class", "style", "title"}, "div": {"class", "style"}, "strong": set(),
    "table": {"class"}, "tr": {"class"}, "th": {"class"}, "td": {"class"}, "code": set(), "section": {"id"},
    "img": {"src", "width", "height", "alt", "loading"},
}


def test_hostile_file_names_and_anchors_stay_inside_their_attributes(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "_file_stem", lambda index, method: f"{index:02d}{HOSTILE_STEM}")
    vectors, evaluations, rows = _inputs(bench)
    vectors = {name + HOSTILE_STEM: v for name, v in vectors.items()}  # the method names end up in alt
    evaluations = {name + HOSTILE_STEM: e for name, e in evaluations.items()}
    rows = [dataclasses.replace(r, method=r.method + HOSTILE_STEM) for r in rows]
    page_path = write_report(tmp_path / "report", bench, vectors, evaluations, rows)
    page = _Page(page_path.read_text())
    for tag, attrs, _ in page.tags:
        assert set(attrs) <= TAG_ATTRIBUTES.get(tag, set()), (tag, attrs)
    stems = [f"{i:02d}{HOSTILE_STEM}" for i in (1, 2)]
    assert [a["src"] for a in page.find("img")] == [f"{stem}.png" for stem in stems]
    assert all((page_path.parent / f"{stem}.png").is_file() for stem in stems)
    assert [a["id"] for a in page.find("section")] == stems
    assert [a["href"] for a in page.find("a")][-2:] == [f"#{stem}" for stem in stems]
    assert [a["alt"].split(":")[0] for a in page.find("img")] == [r.method for r in rows]


def test_links_to_top10_json_and_the_runs_results(bench, tmp_path):
    vectors, evaluations, rows = _inputs(bench)
    alone = _Page(write_report(tmp_path / "alone", bench, vectors, evaluations, rows).read_text())
    assert [a["href"] for a in alone.find("a")][:1] == ["top10.json"]
    assert not any(a["href"].startswith("../") for a in alone.find("a"))

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{}\n")
    (tmp_path / "run" / "results.txt").write_text("table\n")
    page_path = write_report(tmp_path / "run" / "report", bench, vectors, evaluations, rows)
    hrefs = [a["href"] for a in _Page(page_path.read_text()).find("a")]
    assert hrefs[:3] == ["top10.json", "../results.json", "../results.txt"]
    for href in hrefs[:3]:
        assert (page_path.parent / href).is_file()


def test_rows_without_vectors_are_refused(bench, tmp_path):
    vectors, evaluations, rows = _inputs(bench)
    with pytest.raises(ValueError, match=r"no vectors or evaluation for \['spoc'\]"):
        write_report(tmp_path / "report", bench, {k: v for k, v in vectors.items() if k != "spoc"}, evaluations, rows)
