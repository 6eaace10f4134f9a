"""Fault injection for `tmrjax index` and `tmrjax search`: SIGKILLed index runs and corrupted index files.

    .venv/bin/python benchmarks/fault_injection.py     # 300 marks, 20 kills, 50 corruptions: ~12 min, 2 CPU cores
    .venv/bin/python benchmarks/fault_injection.py --images 80 --kills 4 --corruptions 10   # ~2 min check

Opt-in, not a pytest test. Everything runs through the command line as a user runs it, with the
`thumbnail` pipeline (no network, no fitting) on synthetic marks drawn into a temporary folder.

1. Reference: a clean `tmrjax index` build of the folder, timed, and the top-10 of a fixed set of
   query images (half of them gallery marks, half unseen) from `tmrjax search -k 10 --json`.
2. Kill phase: each trial starts `tmrjax index` (in turn: a fresh build, a --rebuild, a plain run on
   a folder that grew by a few marks, a --rebuild of a grown folder), SIGKILLs it after a random delay
   in [0, the clean build's duration], and runs the same command again to completion. Where an index
   exists, a `tmrjax search` runs while the killed run works. Then every mark of the folder must be
   in the index exactly once, and the top-10 must equal a clean build's of the same folder (same ids
   in the same order, similarities within 1e-5).
3. Corruption phase: a copy of a reference index that has deltas (the clean build plus two
   checkpoints of extra marks) gets 1-16 bytes changed at a random offset (a third of the time within
   the first 64 bytes) of one of its files, taking the faiss index, the id table, a delta and meta.json
   in turn; then `tmrjax search` on it is one of: detected (non-zero exit, an error message, no
   traceback), traceback, crashed (killed by a signal, no message, or no exit within the timeout),
   harmless (exit 0, the reference's results) or silent wrong result (exit 0, other results).

Prints a markdown table (progress goes to stderr) and exits 1 if a figure that must be 0 is not.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tmrjax.fileio import file_sha256
from tmrjax.index import GalleryIndex

PIPELINE = "thumbnail"
K = 10
SCORE_TOLERANCE = 1e-5
QUERIES = 10
GROW_BY = 5  # marks added before each run on a grown folder
HEADER_BYTES = 64
# (rebuild?, grow the folder first?) per kill trial, in turn; "fresh" runs start from no index.
KILL_RUNS = (("fresh", False, False), ("rebuild", True, False), ("grown", False, True), ("grown, rebuild", True, True))
FILE_KINDS = ("faiss index", "id table", "delta", "meta.json")
OUTCOMES = ("detected", "traceback", "crashed", "harmless", "silent wrong result")
TRACEBACK = "Traceback (most recent call last)"
_TEMPORARY = re.compile(r"^\..+\.\d+\.tmp$")  # write_atomic's half-written files
_PALETTE = [(200, 30, 30), (20, 120, 40), (30, 60, 200), (240, 170, 0), (120, 0, 140), (0, 0, 0), (0, 150, 160)]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=300, help="synthetic marks in the gallery (default: %(default)s)")
    p.add_argument("--kills", type=int, default=20, help="SIGKILLed index runs (default: %(default)s)")
    p.add_argument("--corruptions", type=int, default=50, help="corrupted index copies (default: %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=25,
                   help="tmrjax index --checkpoint-every; small, so that deltas and generations both occur "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="keep the marks and indexes here (default: a temporary folder, deleted)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    if args.images < 2 * K:
        p.error(f"--images must be at least {2 * K}")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Synthetic marks


def draw_mark(seed: int) -> Image.Image:
    """A deterministic synthetic logo on white: a few filled shapes, a frame and a word."""
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(64, 160)), int(rng.integers(64, 160))
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 5))):
        colour = _PALETTE[int(rng.integers(len(_PALETTE)))]
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        x1, y1 = int(rng.integers(x0 + 8, w)), int(rng.integers(y0 + 8, h))
        shape = int(rng.integers(3))
        if shape == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=colour)
    draw.rectangle((1, 1, w - 2, h - 2), outline=_PALETTE[seed % len(_PALETTE)], width=1 + seed % 3)
    word = "".join(chr(65 + int(c)) for c in rng.integers(0, 26, int(rng.integers(3, 7))))
    draw.text((4 + seed % 9, h // 2), word, fill=(0, 0, 0), font=ImageFont.load_default())
    return img


def write_marks(root: Path, seeds) -> list[str]:
    """Draw one mark per seed under `root`, in a few nested folders; their relative paths."""
    rels = []
    for seed in seeds:
        rel = f"{('', 'a/', 'a/b/', 'c/')[seed % 4]}mark_{seed:06d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        draw_mark(seed).save(root / rel)
        rels.append(rel)
    return rels


# ----------------------------------------------------------------------------------------------------------------
# The command line


def tmrjax(*args) -> list[str]:
    return [sys.executable, "-m", "tmrjax.cli", *map(str, args)]


def index_command(gallery: Path, out: Path, checkpoint_every: int, rebuild: bool = False) -> list[str]:
    extra = ["--rebuild"] if rebuild else []
    return tmrjax("index", gallery, "--pipeline", PIPELINE, "--out", out, "--checkpoint-every", checkpoint_every,
                  *extra)


def search_command(index: Path, queries: list[Path]) -> list[str]:
    return tmrjax("search", index, *queries, "-k", K, "--json")


def run(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run to completion; a run past `timeout` is killed and reported as exit code None."""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(command, None, e.stdout or "", f"no exit within {timeout:.0f} s")


def start(command: list[str], stderr=subprocess.DEVNULL) -> subprocess.Popen:
    """Start in a process group of its own, so that a kill reaches anything it started."""
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)


def kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def rankings(stdout: str) -> list[list[tuple[str, float]]] | None:
    """The (id, similarity) rankings of `tmrjax search --json` output, or None if it is not that."""
    try:
        return [[(r["id"], float(r["similarity"])) for r in q["ranking"]] for q in json.loads(stdout)["results"]]
    except (ValueError, KeyError, TypeError):
        return None


def differing(got: list | None, expected: list) -> int:
    """Queries whose ranking differs from `expected`: other ids or order, or a similarity off by more
    than SCORE_TOLERANCE (all of them when `got` is missing or of another length)."""
    if got is None or len(got) != len(expected):
        return len(expected)
    return sum(
        [i for i, _ in g] != [i for i, _ in e] or any(abs(a - b) > SCORE_TOLERANCE for (_, a), (_, b) in zip(g, e))
        for g, e in zip(got, expected)
    )


def first_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["(no message)"])[-1][:240]


# ----------------------------------------------------------------------------------------------------------------
# References


def reference_build(gallery: Path, out: Path, queries: list[Path], checkpoint_every: int) -> tuple[float, list]:
    """A clean build of `gallery` into `out` (seconds taken) and its top-K for `queries`."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    build = run(index_command(gallery, out, checkpoint_every), timeout=600)
    seconds = time.perf_counter() - t0
    if build.returncode != 0:
        raise SystemExit(f"reference build of {gallery} failed (exit {build.returncode}):\n{build.stderr}")
    search = run(search_command(out, queries), timeout=600)
    expected = rankings(search.stdout)
    if search.returncode != 0 or expected is None:
        raise SystemExit(f"search of the reference index {out} failed (exit {search.returncode}):\n{search.stderr}")
    return seconds, expected


def add_deltas(index_dir: Path, extra: Path, seeds: list[int]) -> None:
    """Add the marks of `seeds` (drawn under `extra`) to the committed index in `index_dir` in two
    checkpoints, so that it has a generation and two deltas, as a killed run leaves it."""
    from tmrjax import embed
    from tmrjax.gallery import pipeline_of_index

    index = GalleryIndex.open(str(index_dir))
    pipeline = pipeline_of_index(index)
    half = len(seeds) // 2
    for batch in (seeds[:half], seeds[half:]):
        rels = write_marks(extra, batch)
        files = [extra / r for r in rels]
        stats = [f.stat() for f in files]
        index.add([f"extra/{r}" for r in rels], [file_sha256(f) for f in files], [s.st_size for s in stats],
                  [s.st_mtime_ns for s in stats], embed(files, pipeline))
        index.checkpoint()
    deltas = json.loads((index_dir / "meta.json").read_text())["deltas"]
    if len(deltas) != 2:
        raise SystemExit(f"{index_dir}: expected two deltas after two checkpoints, meta.json names {len(deltas)}")


# ----------------------------------------------------------------------------------------------------------------
# Kill phase


def half_written(*folders: Path) -> bool:
    return any(_TEMPORARY.match(f.name) for folder in folders if folder.is_dir() for f in folder.iterdir())


def indexed_ids(index_dir: Path) -> tuple[list[str], str | None]:
    """The ids of the committed index in `index_dir`, or [] and why it cannot be opened."""
    try:
        return GalleryIndex.open(str(index_dir)).ids, None
    except (OSError, ValueError, RuntimeError) as e:  # its marks count as lost
        return [], f"{type(e).__name__}: {e}"


def kill_trial(command: list[str], out: Path, queries: list[Path], delay: float, search_at: float | None,
               timeout: float) -> dict:
    """Start `command`, SIGKILL it after `delay` s (with a search of `out` started at `search_at` s),
    then run it again to completion; what happened."""
    started = time.perf_counter()
    process = start(command)
    search = None
    if search_at is not None:
        time.sleep(search_at)
        search = start(search_command(out, queries), stderr=subprocess.PIPE)
    time.sleep(max(0.0, delay - (time.perf_counter() - started)))
    killed = process.poll() is None
    if killed:
        kill(process)
    trial = {"killed": killed, "exit": process.returncode,
             "half_written": half_written(out, out.with_name(out.name + ".rebuild"))}
    if search is not None:
        try:
            _, stderr = search.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill(search)
            stderr = f"no exit within {timeout:.0f} s"
        trial["search_failed"] = search.returncode != 0
        trial["search_error"] = first_error_line(stderr.decode() if isinstance(stderr, bytes) else stderr)
    resume = run(command, timeout)
    trial["resumed"] = resume.returncode == 0
    if not trial["resumed"]:
        trial["resume_error"] = first_error_line(resume.stderr)
    return trial


def kill_phase(args, gallery: Path, work: Path, queries: list[Path], clean_seconds: float, expected: list,
               rng: random.Random) -> dict:
    out = work / "index"
    refs = {len(list_marks(gallery)): expected}
    next_seed = args.seed * 1_000_000 + args.images
    timeout = max(120.0, 20 * clean_seconds)
    figures = {"killed": 0, "finished_before_kill": 0, "half_written": 0, "resumed": 0, "resume_failed": 0,
               "lost": 0, "duplicated": 0, "stale": 0, "top10_mismatches": 0, "rankings_checked": 0,
               "searches_during_indexing": 0, "searches_failed": 0, "errors": []}
    for trial in range(args.kills):
        name, rebuild, grow = KILL_RUNS[trial % len(KILL_RUNS)]
        if grow:
            write_marks(gallery, range(next_seed, next_seed + GROW_BY))
            next_seed += GROW_BY
        marks = list_marks(gallery)
        if len(marks) not in refs:
            _, refs[len(marks)] = reference_build(gallery, work / f"reference.{len(marks)}", queries,
                                                  args.checkpoint_every)
        if name == "fresh":
            for suffix in ("", ".rebuild", ".old"):
                shutil.rmtree(out.with_name(out.name + suffix), ignore_errors=True)
        delay = rng.uniform(0, clean_seconds)
        search_at = rng.uniform(0, delay) if (out / "meta.json").is_file() else None
        result = kill_trial(index_command(gallery, out, args.checkpoint_every, rebuild), out, queries, delay,
                            search_at, timeout)

        ids, error = indexed_ids(out)
        if error:
            figures["errors"].append(f"opening the index after the {name} run: {error}")
        lost, duplicated, stale = len(set(marks) - set(ids)), len(ids) - len(set(ids)), len(set(ids) - set(marks))
        search = run(search_command(out, queries), timeout)
        mismatches = differing(rankings(search.stdout) if search.returncode == 0 else None, refs[len(marks)])

        figures["killed"] += result["killed"]
        figures["finished_before_kill"] += not result["killed"]
        figures["half_written"] += result["half_written"]
        figures["resumed"] += result["killed"] and result["resumed"]
        figures["resume_failed"] += not result["resumed"]
        figures["lost"] += lost
        figures["duplicated"] += duplicated
        figures["stale"] += stale
        figures["top10_mismatches"] += mismatches
        figures["rankings_checked"] += len(queries)
        if "search_failed" in result:
            figures["searches_during_indexing"] += 1
            figures["searches_failed"] += result["search_failed"]
            if result["search_failed"]:
                figures["errors"].append(f"search during {name} run: {result['search_error']}")
        if not result["resumed"]:
            figures["errors"].append(f"resume of {name} run: {result['resume_error']}")
        status = "killed" if result["killed"] else f"finished (exit {result['exit']}) before the kill"
        print(f"  kill {trial + 1}/{args.kills}: {name} run of {len(marks)} marks, {status} at {delay:.2f} s"
              f"{', half-written file left' if result['half_written'] else ''}; "
              f"resume {'ok' if result['resumed'] else 'FAILED'}; lost {lost}, duplicated {duplicated}, "
              f"stale {stale}, top-10 mismatches {mismatches}"
              + (f"; search during it {'FAILED' if result['search_failed'] else 'ok'}" if search_at is not None
                 else ""), file=sys.stderr, flush=True)
    return figures


def list_marks(gallery: Path) -> list[str]:
    return sorted(p.relative_to(gallery).as_posix() for p in gallery.rglob("*.png"))


# ----------------------------------------------------------------------------------------------------------------
# Corruption phase


def index_files(index_dir: Path) -> dict[str, list[Path]]:
    """The files the committed index in `index_dir` consists of, by kind."""
    meta = json.loads((index_dir / "meta.json").read_text())
    return {
        "faiss index": [index_dir / meta["files"]["index"]["name"]],
        "id table": [index_dir / meta["files"]["table"]["name"]],
        "delta": [index_dir / d["name"] for d in meta["deltas"]],
        "meta.json": [index_dir / "meta.json"],
    }


def corrupt(path: Path, rng: random.Random) -> str:
    """Change 1-16 consecutive bytes of `path` (each to another value), a third of the time within the
    first HEADER_BYTES; where."""
    data = bytearray(path.read_bytes())
    n = min(rng.randint(1, 16), len(data))
    end = min(HEADER_BYTES, len(data)) if rng.random() < 1 / 3 else len(data)
    offset = rng.randrange(0, max(1, end - n + 1))
    for i in range(offset, offset + n):
        data[i] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))
    return f"{path.name} bytes {offset}..{offset + n - 1}"


def outcome(search: subprocess.CompletedProcess, expected: list) -> str:
    if search.returncode == 0:
        return "harmless" if differing(rankings(search.stdout), expected) == 0 else "silent wrong result"
    if TRACEBACK in search.stderr:
        return "traceback"
    if search.returncode is None or search.returncode < 0 or not search.stderr.strip():
        return "crashed"
    return "detected"


def corruption_phase(args, clean: Path, work: Path, queries: list[Path], timeout: float,
                     rng: random.Random) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    reference = work / "with_deltas"
    shutil.copytree(clean, reference)
    first = args.seed * 1_000_000 + 800_000
    add_deltas(reference, work / "extra", list(range(first, first + 2 * GROW_BY)))
    expected = run(search_command(reference, queries), timeout)
    expected = rankings(expected.stdout) if expected.returncode == 0 else None
    if expected is None:
        raise SystemExit(f"search of {reference} failed before any corruption")
    by_kind = {kind: dict.fromkeys(OUTCOMES, 0) for kind in FILE_KINDS}
    examples: dict[str, list[str]] = {o: [] for o in OUTCOMES}
    for trial in range(args.corruptions):
        copy = work / "corrupt"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(reference, copy)
        kind = FILE_KINDS[trial % len(FILE_KINDS)]
        where = corrupt(rng.choice(index_files(copy)[kind]), rng)
        search = run(search_command(copy, queries), timeout)
        result = outcome(search, expected)
        by_kind[kind][result] += 1
        message = first_error_line(search.stderr).replace(f"{copy}/", "") if search.returncode != 0 else "exit 0"
        if result != "harmless":
            examples[result].append(f"{where}: {message}")
        print(f"  corruption {trial + 1}/{args.corruptions}: {where}: {result} ({message})", file=sys.stderr,
              flush=True)
    totals = {o: sum(k[o] for k in by_kind.values()) for o in OUTCOMES}
    return {"totals": totals, "by_kind": by_kind, "examples": examples}


# ----------------------------------------------------------------------------------------------------------------
# Report


def format_report(args, kills: dict, corruptions: dict, seconds: float, clean_seconds: float) -> tuple[str, bool]:
    """The markdown table, and whether every figure that must be 0 is."""
    t = corruptions["totals"]
    rows = [
        ("runs killed", kills["killed"], False),
        ("runs that finished before the kill", kills["finished_before_kill"], False),
        ("kills that left a half-written file", kills["half_written"], False),
        ("runs resumed (killed, then completed)", kills["resumed"], False),
        ("re-runs that failed", kills["resume_failed"], True),
        ("marks lost", kills["lost"], True),
        ("marks duplicated", kills["duplicated"], True),
        ("marks indexed but not in the folder", kills["stale"], True),
        (f"top-10 mismatches after resume (of {kills['rankings_checked']} rankings)", kills["top10_mismatches"], True),
        (f"searches failed during indexing (of {kills['searches_during_indexing']})", kills["searches_failed"], False),
        ("corruptions detected", t["detected"], False),
        ("corruptions giving a traceback", t["traceback"], True),
        ("corruptions crashing (signal, no message, hang)", t["crashed"], True),
        ("corruptions harmless", t["harmless"], False),
        ("corruptions giving silent wrong results", t["silent wrong result"], True),
    ]
    ok = all(value == 0 for _, value, must in rows if must)
    lines = [
        f"## fault injection: {args.images} marks, {args.kills} kills, {args.corruptions} corruptions, "
        f"--checkpoint-every {args.checkpoint_every}, seed {args.seed}",
        "",
        f"clean build {clean_seconds:.1f} s; total wall time {seconds:.0f} s",
        "",
        "| figure | value | must be 0 |",
        "|---|---:|:---:|",
        *(f"| {label} | {value} | {'yes' if must else ''} |" for label, value, must in rows),
        "",
        "| corrupted file | " + " | ".join(OUTCOMES) + " |",
        "|---|" + "---:|" * len(OUTCOMES),
        *(f"| {kind} | " + " | ".join(str(counts[o]) for o in OUTCOMES) + " |"
          for kind, counts in corruptions["by_kind"].items()),
    ]
    notes = [*kills["errors"][:5],
             *(f"{o}: {e}" for o in OUTCOMES if o != "detected" for e in corruptions["examples"][o][:3]),
             *(f"detected: {e}" for e in corruptions["examples"]["detected"][:2])]
    if notes:
        lines += ["", "Examples:", "", *(f"- {n}" for n in notes)]
    lines += ["", "PASS: every must-be-0 figure is 0" if ok else "FAIL: a must-be-0 figure is not 0"]
    return "\n".join(lines), ok


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    rng = random.Random(args.seed)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tmrjax-fault-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        base = args.seed * 1_000_000
        gallery = work / "gallery"
        shutil.rmtree(gallery, ignore_errors=True)
        write_marks(gallery, range(base, base + args.images))
        query_dir = work / "queries"
        shutil.rmtree(query_dir, ignore_errors=True)
        query_dir.mkdir()
        for rel in rng.sample(list_marks(gallery), QUERIES // 2):  # gallery marks, found first
            shutil.copy(gallery / rel, query_dir / Path(rel).name)
        write_marks(query_dir, range(base + 900_000, base + 900_000 + QUERIES - QUERIES // 2))  # unseen marks
        queries = sorted(query_dir.rglob("*.png"))

        print(f"reference build of {args.images} marks", file=sys.stderr, flush=True)
        clean = work / "reference"
        clean_seconds, expected = reference_build(gallery, clean, queries, args.checkpoint_every)
        print(f"  {clean_seconds:.1f} s", file=sys.stderr, flush=True)

        print(f"kill phase: {args.kills} runs", file=sys.stderr, flush=True)
        kills = kill_phase(args, gallery, work / "kills", queries, clean_seconds, expected, rng)
        print(f"corruption phase: {args.corruptions} copies", file=sys.stderr, flush=True)
        corruptions = corruption_phase(args, clean, work / "corruptions", queries, max(120.0, 20 * clean_seconds),
                                       rng)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - t0
    report, ok = format_report(args, kills, corruptions, seconds, clean_seconds)
    print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"settings": vars(args), "wall_s": seconds, "clean_build_s": clean_seconds, "kills": kills,
             "corruptions": corruptions, "ok": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
