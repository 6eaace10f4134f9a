"""tmrjax/progress.py: live bars on a terminal, plain lines in logs; and `describe_fit`'s sentence."""

import contextlib
import io
import json
import re

import pytest

import tmrjax.progress
from tmrjax.fit import describe_fit
from tmrjax.pipeline import Pipeline
from tmrjax.progress import format_duration, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_bar(stream, updates, total=10, enabled=True):
    """Drive `progress_bar` over `updates` with stderr sent to `stream`; what it wrote."""
    with contextlib.redirect_stderr(stream), progress_bar(total, "embed mac", enabled) as bar:
        for n in updates:
            bar.update(n)
    return stream.getvalue()


def test_a_log_gets_one_line_when_the_pass_ends_and_no_carriage_returns():
    out = run_bar(io.StringIO(), [4, 4, 2])
    assert "\r" not in out
    assert re.fullmatch(r"embed mac: 10 img in \d+ s \(\d+\.\d+ img/s\)\n", out), out


def test_a_log_says_where_a_pass_stopped_early():
    stream = io.StringIO()
    with pytest.raises(RuntimeError), contextlib.redirect_stderr(stream), progress_bar(10, "embed mac", True) as bar:
        bar.update(4)
        raise RuntimeError("unreadable shard")
    assert re.fullmatch(r"embed mac: stopped at 4 of 10 img after \d+ s \(.* img/s\)\n", stream.getvalue())


def test_a_long_pass_writes_a_line_every_interval_then_the_final_one(monkeypatch):
    monkeypatch.setattr(tmrjax.progress, "LOG_INTERVAL_S", 0.0)
    lines = run_bar(io.StringIO(), [4, 4, 2]).splitlines()
    assert len(lines) == 3 and "\r" not in "".join(lines)
    assert re.fullmatch(r"embed mac: 4 of 10 img after \d+ s \(.* img/s, about \d+ s left\)", lines[0])
    assert lines[1].startswith("embed mac: 8 of 10 img after ")
    assert lines[2].startswith("embed mac: 10 img in ")


def test_a_terminal_gets_the_live_bar():
    out = run_bar(Terminal(), [4, 4, 2])
    assert "\r" in out and "embed mac" in out and "10/10" in out


@pytest.mark.parametrize("stream", [io.StringIO, Terminal])
def test_a_disabled_bar_writes_nothing(stream):
    assert run_bar(stream(), [4, 6], enabled=False) == ""


@pytest.mark.parametrize("seconds, text", [(0.4, "0 s"), (41.4, "41 s"), (725, "12 min 5 s"), (7390, "2 h 3 min")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_describe_fit_tells_what_pipeline_json_records(fast_random_init, small_fitted):
    pipeline, directory, failures, _ = small_fitted
    data = json.loads((directory / "pipeline.json").read_text())["data"]
    assert (data["images_used"], data["images_skipped"], len(failures)) == (6, 1, 1)
    idf = pipeline.artefacts.idf
    expected = (
        f"PCA-whitening 512 -> 16 dims (from {data['pca_descriptors']:,} descriptors) and a URA codebook of "
        f"8 words (IDF {idf.min():.2f} .. {idf.max():.2f}) on 6 images (1 skipped) "
        f"in {format_duration(data['seconds'])}"
    )
    assert describe_fit(pipeline) == expected
    assert describe_fit(Pipeline.load(directory)) == expected
