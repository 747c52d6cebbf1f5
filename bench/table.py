"""The README's table of figures, printed from the stored benchmark results.

    python -m bench.table            # print the table (Markdown)
    python -m bench.table --write    # put it into README.md between its markers

Each ``bench/bench_*.py`` has a ``summary(results)`` that turns its stored full
run (``bench/results/<name>.json``, committed) into rows; a benchmark without a
stored run is listed as not measured. Nothing here is typed by hand, so the
README cannot quote a figure that no run produced.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START, END = "<!-- bench-table: printed by python -m bench.table --write -->", "<!-- /bench-table -->"


def table() -> str:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    lines = ["| benchmark | figure | value | measured |", "| --- | --- | --- | --- |"]
    for script in sorted((ROOT / "bench").glob("bench_*.py")):
        module = importlib.import_module(f"bench.{script.stem}")
        # bench_NAME.py stores its full run in bench/results/NAME.json (tests/test_bench.py holds it to that)
        path = ROOT / "bench" / "results" / f"{script.stem.removeprefix('bench_')}.json"
        command = f"`python bench/{script.name}`"
        if not path.exists():
            lines.append(f"| {command} | (not measured yet) | | |")
            continue
        results = json.loads(path.read_text())
        meta = results.get("measured", {})
        when = f"{meta.get('date', '?')}, {meta.get('cpus', '?')} cores, commit {meta.get('commit', '?')}"
        for figure, value in module.summary(results):
            lines.append(f"| {command} | {figure} | {value} | {when} |")
    return "\n".join(lines)


def write() -> None:
    text = README.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"README.md has no {START} ... {END} section")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{table()}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="replace the table in README.md")
    args = parser.parse_args(argv)
    if args.write:
        write()
    else:
        print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
