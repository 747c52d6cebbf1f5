"""The book's build time: cold serial and parallel, warm, and cold under load, in one run on this machine.

    python bench/bench_build.py                  # everything (three cold builds: about 13 minutes on 2 cores)
    python bench/bench_build.py --skip-load      # without the build under load
    python bench/bench_build.py --smoke          # a one-chapter book, built cold: checks that it runs

Each build runs in a fresh copy of the checkout's tracked files, with an empty
``_build`` and a model cache that starts empty, as on a fresh clone with the
virtual environment installed: the build fills it from the shipped training runs
(``trained/``, tools/trained.py), so it trains only what they lack. The copy's
own ``tinyllm`` is imported. A build is what
``make book`` does: ``tools.execute_book --jobs N`` (the chapters N at a time,
one thread per kernel), then the strict Sphinx build. Measured:

* cold, serial (``--jobs 1``) and cold, parallel (``--jobs`` = the cores), with
  each chapter's execution time; every glued value except wall-clock
  measurements must be equal in the two, or the run fails;
* the warm rebuild after a prose-only change (a sentence added to a chapter),
  and after a change to one chapter's code (only that chapter re-executes);
* cold, parallel, while two busy loops keep the cores occupied, against quiet.

Targets (issue 19): parallel cold build <= 5 minutes, under load <= 2x quiet,
warm prose rebuild <= 20 s. Prints a table and writes bench/results/build.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_file import add_smoke_flag, write_results  # noqa: E402

BIN = Path(sys.executable).parent


def checkout_copy(destination: Path) -> Path:
    """The checkout's tracked files (as they are in the working tree) under destination."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and (ROOT / name).is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target)
    return destination


def environment(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["JUPYTER_PREFER_ENV_PATH"] = "1"
    env["PYTHONPATH"] = str(copy)  # the copy's tinyllm and tools, not the installed checkout's
    env["TINYLLM_CACHE"] = str(copy / "_build" / "models")
    return env


def build(copy: Path, jobs: int, strict: bool = True) -> dict:
    """`make book` in the copy; returns wall seconds of each step and the chapters' execution times.

    ``strict=False`` (the smoke run's one-chapter book, whose links to other chapters dangle)
    leaves out ``-n -W``.
    """
    env = environment(copy)
    start = time.perf_counter()
    execute = subprocess.run([str(BIN / "python"), "-m", "tools.execute_book", "--jobs", str(jobs)], cwd=copy,
                             env=env, capture_output=True, text=True)
    executed = time.perf_counter()
    sphinx = subprocess.run([str(BIN / "jupyter-book"), "build", *(["-n", "-W"] if strict else []), "--keep-going", "."], cwd=copy,
                            env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    end = time.perf_counter()
    if execute.returncode or sphinx.returncode:
        sys.exit(f"build failed in {copy}:\n{execute.stdout[-3000:]}{execute.stderr[-3000:]}"
                 f"{sphinx.stdout[-3000:]}{sphinx.stderr[-3000:]}")
    ran = [line.split()[1] for line in execute.stdout.splitlines() if " executed in " in line]
    return {"seconds": end - start, "execute_seconds": executed - start, "sphinx_seconds": end - executed,
            "executed": ran, "log": execute.stdout}


def chapter_seconds(copy: Path) -> dict[str, float]:
    import json

    state = copy / "_build" / ".jupyter_cache" / "tinyllm-inputs.json"
    return {k: v["seconds"] for k, v in json.loads(state.read_text()).items()}


def glued(copy: Path) -> dict:
    from tools.execute_book import glued_values

    return glued_values(copy / "_build" / ".jupyter_cache")


SMOKE_CHAPTER = "book/04_softmax"


def smoke_book(copy: Path) -> None:
    """Cut the copy down to one short chapter (and the bibliography its citations need)."""
    (copy / "book" / "smoke.md").write_text("# Smoke build\n\nOne chapter, to check that the benchmark runs.\n")
    (copy / "_toc.yml").write_text(f"format: jb-book\nroot: book/smoke\nchapters:\n  - file: {SMOKE_CHAPTER}\n"
                                   "  - file: book/bibliography\n")


def busy_loops(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel jobs (default: cores)")
    parser.add_argument("--skip-load", action="store_true", help="leave out the cold build under two busy loops")
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        return smoke(args.jobs)
    from tools.notebooks import measured

    results: dict = {"machine": {"cores": os.cpu_count(), "load_before": os.getloadavg()}}
    with tempfile.TemporaryDirectory(prefix="bench_build_") as scratch:
        scratch = Path(scratch)
        serial_copy, parallel_copy = checkout_copy(scratch / "serial"), checkout_copy(scratch / "parallel")
        print("cold build, serial ...", flush=True)
        results["cold_serial"] = build(serial_copy, jobs=1)
        results["cold_serial"]["chapters"] = chapter_seconds(serial_copy)
        print(f"  {results['cold_serial']['seconds']:.0f} s", flush=True)
        print(f"cold build, {args.jobs} at a time ...", flush=True)
        results["cold_parallel"] = build(parallel_copy, jobs=args.jobs)
        results["cold_parallel"]["chapters"] = chapter_seconds(parallel_copy)
        print(f"  {results['cold_parallel']['seconds']:.0f} s", flush=True)

        serial_values, parallel_values = glued(serial_copy), glued(parallel_copy)
        differences = {f"{chapter}:{name}": [value, parallel_values.get(chapter, {}).get(name)]
                       for chapter, values in serial_values.items() for name, value in values.items()
                       if not measured(ROOT / chapter, name) and parallel_values.get(chapter, {}).get(name) != value}
        results["glued_values_compared"] = sum(
            not measured(ROOT / c, n) for c, values in serial_values.items() for n in values)
        results["glued_value_differences"] = differences

        prose = parallel_copy / "book" / "04_softmax.md"
        prose.write_text(prose.read_text() + "\nOne more sentence of prose, for the warm rebuild.\n")
        results["warm_prose"] = build(parallel_copy, jobs=args.jobs)
        print(f"warm rebuild after a prose change: {results['warm_prose']['seconds']:.1f} s", flush=True)
        code = parallel_copy / "book" / "04_softmax.md"  # one more code cell: the chapter's code changed
        code.write_text(code.read_text() + "\n```{code-cell} ipython3\nchanged = True\n```\n")
        results["warm_code"] = build(parallel_copy, jobs=args.jobs)
        print(f"warm rebuild after one chapter's code changed: {results['warm_code']['seconds']:.1f} s, "
              f"re-executed {results['warm_code']['executed']}", flush=True)

        if not args.skip_load:
            loaded_copy = checkout_copy(scratch / "loaded")
            print("cold build, parallel, with two busy loops ...", flush=True)
            loops = busy_loops(2)
            try:
                results["cold_parallel_loaded"] = build(loaded_copy, jobs=args.jobs)
            finally:
                for loop in loops:
                    loop.kill()
            results["cold_parallel_loaded"]["chapters"] = chapter_seconds(loaded_copy)
            results["load_slowdown"] = results["cold_parallel_loaded"]["seconds"] / results["cold_parallel"]["seconds"]
    for run in ("cold_serial", "cold_parallel", "warm_prose", "warm_code", "cold_parallel_loaded"):
        results.get(run, {}).pop("log", None)

    print()
    print(f"{'chapter':32} {'serial s':>9} {'parallel s':>11}" + ("" if args.skip_load else f" {'loaded s':>9}"))
    for chapter, seconds in results["cold_serial"]["chapters"].items():
        row = f"{chapter:32} {seconds:9.1f} {results['cold_parallel']['chapters'].get(chapter, float('nan')):11.1f}"
        if not args.skip_load:
            row += f" {results['cold_parallel_loaded']['chapters'].get(chapter, float('nan')):9.1f}"
        print(row)
    print()
    print(f"cold build, serial:                 {results['cold_serial']['seconds']:6.0f} s")
    print(f"cold build, {args.jobs} at a time:           {results['cold_parallel']['seconds']:6.0f} s "
          f"(Sphinx alone {results['cold_parallel']['sphinx_seconds']:.0f} s); "
          f"{results['cold_serial']['seconds'] / results['cold_parallel']['seconds']:.2f}x faster")
    print(f"warm rebuild, prose changed:        {results['warm_prose']['seconds']:6.1f} s")
    print(f"warm rebuild, one chapter's code:   {results['warm_code']['seconds']:6.1f} s "
          f"({len(results['warm_code']['executed'])} chapter re-executed)")
    if not args.skip_load:
        print(f"cold build under two busy loops:    {results['cold_parallel_loaded']['seconds']:6.0f} s "
              f"({results['load_slowdown']:.2f}x the quiet build)")
    print(f"glued values compared: {results['glued_values_compared']}; different: {len(differences)}")
    write_results("build", results)
    if differences:
        print("glued values differ between the serial and the parallel build:", differences, file=sys.stderr)
        return 1
    return 0


def smoke(jobs: int) -> int:
    """A cold build of a one-chapter copy of the book: the same steps as the full run, in seconds."""
    with tempfile.TemporaryDirectory(prefix="bench_build_smoke_") as scratch:
        copy = checkout_copy(Path(scratch) / "book")
        smoke_book(copy)
        results = {"cold_parallel": build(copy, jobs=jobs, strict=False)}
        results["cold_parallel"]["chapters"] = chapter_seconds(copy)
    results["cold_parallel"].pop("log", None)
    print(f"smoke: a one-chapter book built cold in {results['cold_parallel']['seconds']:.0f} s")
    write_results("build", results, smoke=True)
    return 0


def summary(results: dict) -> list[tuple[str, str]]:
    """The README's rows: (figure, value)."""
    cores = results["machine"]["cores"]
    rows = [(f"`make book` from a fresh clone, {cores} cores (chapters executed, then Sphinx)",
             f"{results['cold_parallel']['seconds']:.0f} s"),
            ("`make book` again after a prose change", f"{results['warm_prose']['seconds']:.1f} s")]
    if "load_slowdown" in results:
        rows.append(("`make book` from a fresh clone under two busy loops / quiet",
                     f"{results['load_slowdown']:.2f}x"))
    return rows


if __name__ == "__main__":
    sys.exit(main())
