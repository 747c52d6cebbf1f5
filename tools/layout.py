"""The autograder's package map, and the directions its imports may take.

    python -m tools.layout              # print the map; exit 1 naming each import that runs the wrong way
    python -m tools.layout --root DIR   # the same for another copy of the package (DIR: its autograder/)

The package has four layers, each a subpackage, and the modules other programs
call by name at its top (the entry points). A layer imports only the layers
below it (:data:`MAY_IMPORT`), so the sandbox knows nothing of grading, the
grading of one notebook nothing of the class run, and the outputs nothing of
the sandbox. The checks (``checks/``, ``hidden/``) import only the API written
for them (:data:`CHECK_API`) and each other; a public check never imports a
hidden one (``hidden/`` never reaches the students).

Imports are read with :mod:`ast` from every ``import`` statement, wherever it
stands (a function's body included), so an import made late to save start-up
time counts like one at the top.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "autograder"
DEFAULT_ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Each layer and what it may import besides itself: lowest first.
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "sandbox": (),
    "grading": ("sandbox",),
    "outputs": ("grading",),
    "classrun": ("outputs", "grading", "sandbox"),
}
# The modules at the top of the package: each is called by name from outside
# (a notebook, the command line, pytest, nbgrader_config.py, Gradescope), and may import any layer.
ENTRY_POINTS = ("__init__", "__main__", "conftest", "nbgrader_hooks", "gradescope")
# What a check (public or hidden) may import from the package, besides the other checks.
CHECK_API = ("autograder", "autograder.grading.api", "autograder.grading.expect", "autograder.grading.registry",
             "autograder.sandbox.forbidden")
CHECK_FOLDERS = ("checks", "hidden")
DATA_FOLDERS = ("contracts",)  # no Python in them


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the module imported (or the package, where the name imported is not a module)
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def modules(root: Path = DEFAULT_ROOT) -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    return {module_name(p, root): p for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts}


def part_of(module: str) -> str:
    """The part of the package a module belongs to: a layer, a check folder, or "entry points"."""
    parts = module.split(".")
    if len(parts) == 1 or (len(parts) == 2 and parts[1] in ENTRY_POINTS):
        return "entry points"
    return parts[1]


def imports(root: Path = DEFAULT_ROOT) -> list[Import]:
    """Every import of a module of the package by a module of the package."""
    known = modules(root)
    found = []
    for source, path in known.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's own package, up level - 1 more
                    here = source.split(".") if is_package else source.split(".")[:-1]
                    here = here[:len(here) - (node.level - 1)]
                    base = ".".join(here + ([base] if base else []))
                # `from package import name`: the submodule where name is one, else the package
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
            else:
                continue
            for target in dict.fromkeys(targets):  # one arrow per module named, however many names
                if target == PACKAGE or target.startswith(PACKAGE + "."):
                    found.append(Import(source, target, node.lineno))
    return found


def allowed(source: str, target: str) -> bool:
    """May module ``source`` import ``target`` (both of the package)?"""
    mine, theirs = part_of(source), part_of(target)
    if mine in CHECK_FOLDERS:
        if theirs == "checks" or (theirs == "hidden" and mine == "hidden"):
            return True
        return target in CHECK_API
    if mine == "entry points":
        return True
    if target == PACKAGE:
        return True  # the package itself: its flags (in_grader), read by the worker; it imports nothing at import time
    if theirs == mine:
        return True
    return theirs in MAY_IMPORT.get(mine, ())


def violations(root: Path = DEFAULT_ROOT) -> list[Import]:
    return [i for i in imports(root) if not allowed(i.source, i.target)]


def unplaced(root: Path = DEFAULT_ROOT) -> list[str]:
    """Modules in no known part: a new folder must be given a place in the map first."""
    known = set(MAY_IMPORT) | set(CHECK_FOLDERS) | {"entry points"}
    return [m for m in modules(root) if part_of(m) not in known]


def describe(root: Path = DEFAULT_ROOT) -> str:
    by_part: dict[str, list[str]] = {}
    for name in modules(root):
        by_part.setdefault(part_of(name), []).append(name.rsplit(".", 1)[-1] if name != PACKAGE else "__init__")
    arrows = imports(root)
    lines = ["autograder/ by responsibility (a layer imports only those below it; any part may import",
             "the package itself, autograder/__init__.py, which imports nothing of it when imported)", ""]
    order = ["entry points", *reversed(list(MAY_IMPORT)), *CHECK_FOLDERS]
    for part in order + sorted(set(by_part) - set(order)):
        names = sorted(set(by_part.get(part, [])) - {part})
        if part in MAY_IMPORT:
            rule = ", ".join(MAY_IMPORT[part]) or "no other layer"
        elif part in CHECK_FOLDERS:
            rule = "the check API (" + ", ".join(CHECK_API) + ") and " + (
                "the public and hidden checks" if part == "hidden" else "the public checks")
        elif part == "entry points":
            rule = "anything"
        else:
            rule = "NOT IN THE MAP"
        lines.append(f"{part + '/' if part != 'entry points' else part}: {', '.join(names)}")
        lines.append(f"    may import: {rule}")
        used = sorted({"the package itself" if a.target == PACKAGE else part_of(a.target)
                       for a in arrows if part_of(a.source) == part} - {part})
        lines.append(f"    imports: {', '.join(used) or 'nothing else'}")
    bad = violations(root)
    lines.append("")
    lines.append(f"{len(arrows)} imports within the package, {len(bad)} against the direction"
                 + (":" if bad else "."))
    for v in bad:
        lines.append(f"  {v.source} (line {v.line}) imports {v.target}")
    for name in unplaced(root):
        lines.append(f"  {name} is in no part of the map")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.layout", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the autograder package's folder")
    args = parser.parse_args(argv)
    print(describe(args.root))
    return 1 if violations(args.root) or unplaced(args.root) else 0


if __name__ == "__main__":
    sys.exit(main())
