"""README.md's snippets run as written: its Python session (doctest) and every `tmrjax` command line.

The Python block is a doctest run in a folder holding the two image files it names; the shell
blocks' `tmrjax ...` lines must parse with the real command-line parser, and every config and
shipped backbone they name must exist, so that a renamed flag or pipeline breaks this test
rather than a newcomer's first try.
"""

from __future__ import annotations

import doctest
import re
import shlex
from pathlib import Path

import pytest

from tmrjax.cli import build_parser
from tmrjax.convert import SHIPPED
from tmrjax.method_configs import available_configs

README = Path(__file__).resolve().parents[1] / "README.md"


def shell_commands() -> list[list[str]]:
    """Every `tmrjax ...` command of README's bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and "=" in words[0] and not words[0].startswith("-"):
                words = words[1:]  # VAR=value prefixes
            if words and words[0].endswith("tmrjax"):
                commands.append(words[1:])
    return commands


def test_readme_has_commands_for_every_subcommand_it_documents():
    assert {c[0] for c in shell_commands()} >= {"convert", "fit", "index", "search", "eval", "train"}


@pytest.mark.parametrize("words", shell_commands(), ids=" ".join)
def test_readme_command_parses_and_names_real_pipelines_and_weights(words):
    args = build_parser().parse_args(words)
    configs = set(available_configs()) | {"moco_hu2024", "moco_small_cpu", "cosface_hu2024"}
    for name in (getattr(args, "pipelines", None) or "").split(",") + [getattr(args, "pipeline", None) or ""]:
        if name and "/" not in name:
            assert name in configs, f"README names pipeline {name!r}, which is no config"
    for weights in getattr(args, "weights", None) or []:
        if isinstance(weights, str) and "/" not in weights:
            assert weights in SHIPPED or weights == "random", f"README names weights {weights!r}"


def test_readme_python_session_runs_as_written(tmp_path, monkeypatch, mark_factory):
    draw_mark, _ = mark_factory
    draw_mark(1).save(tmp_path / "a.png")
    draw_mark(2).convert("RGB").save(tmp_path / "b.jpg")
    monkeypatch.chdir(tmp_path)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testfile(str(README), module_relative=False, optionflags=flags)
    assert result.attempted > 0, "README.md has no Python session (>>> lines)"
    assert result.failed == 0, f"{result.failed} of README's Python examples failed (see the doctest output above)"
