"""docs/DESIGN.md's table of places is true: each place imports exactly the places its row names.

The import graph is read from the source with `ast` (module-level and deferred imports; imports
under `if TYPE_CHECKING:` only name types and are left out), so the table cannot drift from the code.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "DESIGN.md"
# where the installed packages' modules live in the repository
PACKAGE_DIRS = {"tmrjax": "tmrjax", "tmrjax.kernels": "kernels", "tmrjax.configs": "configs"}


def _paths(cell: str) -> list[str]:
    return [p for p in re.findall(r"`([^`]+)`", cell) if p.endswith(("/", ".py"))]


def _rows() -> list[tuple[list[str], list[str]]]:
    """(paths of the first column, paths of the last) of every row of the table."""
    rows = []
    for line in DESIGN.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and _paths(cells[0]):
            rows.append((_paths(cells[0]), _paths(cells[-1])))
    return rows


def _row_paths() -> dict[str, str]:
    """{path in a first column: the row it belongs to, named by the row's first path}."""
    return {p: paths[0] for paths, _ in _rows() for p in paths}


def places() -> dict[str, set[str]]:
    """{row: the rows it depends on}."""
    name_of = _row_paths()
    return {paths[0]: {name_of.get(d, d) for d in depends} for paths, depends in _rows()}


def modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGE_DIRS.items():
        for file in sorted((ROOT / folder).rglob("*.py")):
            parts = list(file.relative_to(ROOT / folder).with_suffix("").parts)
            if package == "tmrjax" and parts[0] in ("kernels", "configs"):
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = file
    return out


def place_of(file: Path, rows: dict[str, str]) -> str:
    rel = file.relative_to(ROOT).as_posix()
    matches = [p for p in rows if rel == p or (p.endswith("/") and rel.startswith(p))]
    assert matches, f"{rel} is in no row of {DESIGN.name}'s table"
    return rows[max(matches, key=len)]


def imported_modules(name: str, file: Path, known: dict[str, Path]) -> set[str]:
    """The tmrjax modules `name` imports, outside `if TYPE_CHECKING:` blocks."""
    is_package = file.name == "__init__.py"
    package = name.split(".") if is_package else name.split(".")[:-1]
    found = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = package[: len(package) - child.level + 1] if child.level else []
                module = ".".join(base + ([child.module] if child.module else []))
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in child.names]
            else:
                visit(child)
                continue
            for target in targets:
                parts = target.split(".")
                for i in range(len(parts), 0, -1):
                    if ".".join(parts[:i]) in known:
                        found.add(".".join(parts[:i]))
                        break

    visit(ast.parse(file.read_text()))
    return found - {name}


def graph() -> dict[str, set[str]]:
    rows, known = _row_paths(), modules()
    out: dict[str, set[str]] = {row: set() for row in places()}
    for name, file in known.items():
        here = place_of(file, rows)
        for target in imported_modules(name, file, known):
            there = place_of(known[target], rows)
            if there != here:
                out[here].add(there)
    return out


def test_every_place_imports_only_what_its_row_says():
    table = places()
    assert len(table) > 10, f"{DESIGN} has no table of places"
    for place, depends in graph().items():
        assert depends <= table[place], f"{place} imports {sorted(depends - table[place])}, not in its row"


@pytest.mark.parametrize("place", sorted(places()))
def test_every_dependency_a_row_names_is_real(place):
    unused = places()[place] - graph()[place]
    assert not unused, f"{DESIGN.name}: {place} is said to depend on {sorted(unused)}, which it does not import"
