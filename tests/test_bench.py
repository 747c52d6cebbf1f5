"""Every benchmark still runs: each bench/bench_*.py in its smoke mode (tiny sizes, seconds).

A benchmark that nothing runs between releases of its numbers rots (an API it calls
changes under it); the README's figures come from the stored full runs in
bench/results/, printed by ``python -m bench.table``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = sorted((ROOT / "bench").glob("bench_*.py"))


def test_benchmarks_are_found():
    assert len(BENCHMARKS) >= 7, BENCHMARKS


@pytest.mark.slow
@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.stem)
def test_benchmark_runs_in_smoke_mode(script, tmp_path):
    env = {**os.environ, "BENCH_RESULTS_DIR": str(tmp_path / "results"), "TINYLLM_CACHE": str(tmp_path / "models"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run([sys.executable, str(script), "--smoke"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, f"{script.name} --smoke failed:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    written = list((tmp_path / "results").glob("*.json"))
    # bench_NAME.py writes NAME.json: bench/table.py finds a benchmark's stored run by that name
    assert [p.name for p in written] == [f"{script.stem.removeprefix('bench_')}.json"], written
    assert json.loads(written[0].read_text())["smoke"] is True
    stored = ROOT / "bench" / "results" / written[0].name
    # A smoke run never overwrites a stored full run.
    assert not stored.exists() or "smoke" not in json.loads(stored.read_text())


def test_readme_table_is_printed_from_the_stored_results():
    from bench.table import table

    text = (ROOT / "README.md").read_text()
    assert table() in text, "README.md's figures differ from bench/results/: run python -m bench.table --write"
