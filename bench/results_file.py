"""Where every benchmark writes its numbers, and the smoke mode every benchmark has.

A full run writes ``bench/results/<name>.json``; those files are committed, and the
README's table of figures is printed from them (``python -m bench.table``). A run
with ``--smoke`` (tiny sizes, seconds; the test suite runs every benchmark so) writes
to ``$BENCH_RESULTS_DIR`` or a temporary folder instead, never over a stored result.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def add_smoke_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, a few seconds: only checks that the benchmark still runs "
                             "(its results go to $BENCH_RESULTS_DIR or a temporary folder)")


def provenance() -> dict:
    """When, on what and on which commit a result was measured (the README's table prints it)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=RESULTS.parent, capture_output=True,
                            text=True).stdout.strip()
    return {"date": datetime.date.today().isoformat(), "commit": commit or None, "cpus": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def write_results(name: str, results: dict, smoke: bool = False) -> Path:
    results = {**results, "measured": provenance()}
    if smoke:
        folder = Path(os.environ.get("BENCH_RESULTS_DIR") or tempfile.mkdtemp(prefix="bench-smoke-"))
        results = {**results, "smoke": True}
    else:
        folder = RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def read_results(name: str) -> dict | None:
    """A stored full run's results, or None when that benchmark has not been run and committed."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None
