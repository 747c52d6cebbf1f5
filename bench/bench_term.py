"""A 300-student term: grade the class, open its similarity report, regrade one student.

    python bench/bench_term.py [--students 300] [--jobs 2] [--seed 0] [--keep DIR]
    python bench/bench_term.py --reuse DIR      # a class graded earlier with --keep DIR: regrades only
    python bench/bench_term.py --smoke          # four students: checks that it still runs

The class is generated (seeded) from the realistic class of
tests/fixtures/classroom.py: every student submits 03_softmax and 04_attention,
each a copy of one of that class's submissions (correct work in two styles, the
usual mistakes, never-run notebooks, syntax errors, infinite loops, heavy
printing, renamed and stray notebooks, truncated uploads, a misspelt folder),
perturbed so that no two are byte-identical (a comment of their own in each
solution cell, a scratch cell, a submission time: mostly on time, some late,
a few with extensions in the course file). Short limits (--timeout 2,
--cell-timeout 5) keep the infinite loops cheap; they are CPU seconds, so load
does not change a score.

Measured, each in its own process as an instructor runs it:

1. the whole class graded from nothing (`python -m autograder grade ... --course`);
2. a rerun with nothing changed;
3. one student resubmits (their 03_softmax notebook edited) and is regraded with
   `--student NAME`: the time of the whole command, three students in turn, each
   beside the time a bare `python -c` takes to import the checks (and torch), the
   floor of any grading command on this machine at that moment;
4. the similarity reports: size on disk, and the time Chromium takes to load
   and lay out each (when Debian's chromium and Playwright are installed);
5. the peak resident memory of any process of each run (getrusage of children).

Prints a table and writes bench/results/term.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_file import add_smoke_flag, write_results  # noqa: E402
from tests.fixtures import classroom  # noqa: E402

LIMITS = ["--timeout", "2", "--cell-timeout", "5"]
DUE = "2026-11-01T23:59:00-05:00"
DUE_UTC = datetime(2026, 11, 2, 4, 59)


def build_class(folder: Path, count: int, seed: int) -> tuple[list[str], dict[str, str]]:
    """Write the class into folder/submitted; return the student names and their extensions."""
    rng = random.Random(seed)
    templates = {"03_softmax": classroom.softmax_class(), "04_attention": classroom.attention_class()}
    names = [f"s{i:03d}" for i in range(count)]
    extensions = {}
    for i, name in enumerate(names):
        for assignment, pool in templates.items():
            template = rng.choice(pool)
            student = classroom.Student(**{**template.__dict__, "name": name})
            marker = f"  # {name}'s note {rng.randrange(10**6)}"
            original = student.change

            def perturb(notebook: dict, original=original, marker=marker, i=i) -> dict:
                notebook = original(notebook) if original else notebook
                for cell in notebook["cells"]:
                    if cell["cell_type"] == "code" and cell["metadata"].get("nbgrader", {}).get("solution"):
                        cell["source"] = "".join(cell["source"]).rstrip("\n") + "\n" + marker + "\n"
                notebook["cells"].append(classroom.code_cell(f"# scratch\nmy_number = {i}"))
                return notebook

            student.change = perturb
            roll = rng.random()
            if template.timestamp == classroom.LATE or roll < 0.1:  # late by up to three days
                stamp = DUE_UTC + timedelta(hours=rng.uniform(0.1, 72))
                student.timestamp = stamp.strftime("%Y-%m-%d %H:%M:%S.000000 UTC")
                if roll < 0.02:
                    extensions.setdefault(name, {})[assignment] = "3d"
            student.write(folder / "submitted")
    return names, extensions


def course_file(extensions: dict[str, dict[str, str]]) -> str:
    text = '[late]\npenalty = "10%/day"\ngrace = "15min"\ncap = "50%"\n\n'
    text += "".join(f'[assignments.{a}]\ndue = "{DUE}"\n\n' for a in ("03_softmax", "04_attention"))
    text += "[extensions]\n" + "".join(f"{s} = {{ " + ", ".join(f'{a} = "{d}"' for a, d in e.items()) + " }\n"
                                       for s, e in sorted(extensions.items()))
    return text


CPU_SECONDS: list[float] = []  # CPU time (user + system) of each timed command and every process it started


def timed(command: list[str]) -> tuple[float, int, str]:
    """(seconds, peak RSS of any child process in MB so far, stderr); the CPU time goes to CPU_SECONDS.

    CPU time does not stretch with the machine's load; on a quiet machine with enough cores the
    wall-clock time of a command is about its CPU time on the longest chain of processes.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_SECONDS.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return seconds, after.ru_maxrss // 1024, result.stderr


def load_in_chromium(pages: list[Path]) -> dict[str, float] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not chromium:
        return None
    times = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        for path in pages:
            best = []
            for _ in range(3):
                start = time.perf_counter()
                page.goto(path.as_uri(), wait_until="load")
                page.evaluate("document.body.getBoundingClientRect().height")  # layout done
                best.append(time.perf_counter() - start)
            times[path.name] = min(best)
        browser.close()
    return times


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", metavar="DIR", help="build and grade in DIR and keep it (default: a temporary folder)")
    parser.add_argument("--reuse", metavar="DIR", help="a class built and graded by an earlier --keep DIR: measure the "
                        "rerun and the regrades only")
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        args.students = 4
    scratch = Path(args.reuse or args.keep or tempfile.mkdtemp(prefix="bench-term-"))
    if args.keep and scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        if not args.reuse:
            names, extensions = build_class(scratch, args.students, args.seed)
            (scratch / "course.toml").write_text(course_file(extensions))
        names = sorted(p.name for p in (scratch / "submitted").iterdir() if p.is_dir())
        notebooks = sum(1 for _ in (scratch / "submitted").rglob("*.ipynb"))
        base = [sys.executable, "-m", "autograder", "grade", str(scratch / "submitted"), "--course",
                str(scratch / "course.toml"), "--out", str(scratch / "grades"), "--jobs", str(args.jobs), *LIMITS,
                "--quiet"]
        load_before = load_average()
        full, full_rss = (None, None) if args.reuse else timed(base)[:2]
        load_after = load_average()
        rerun, _, _ = timed(base)
        regrades, floors, regrade_cpu, floors_cpu = [], [], [], []  # floors: a bare import of the checks (torch)
        for name in (names[len(names) // 2], names[len(names) // 3], names[-1]):
            notebook = next((scratch / "submitted" / name / "03_softmax").glob("*.ipynb"), None)
            try:  # the student resubmits: one more cell in their notebook (a truncated upload stays so)
                data = json.loads(notebook.read_text()) if notebook is not None else None
            except ValueError:
                data = None
            if data is not None:
                data["cells"].append(classroom.code_cell(f"# {name} resubmitted"))
                notebook.write_text(json.dumps(data, indent=1))
            floor, _, _ = timed([sys.executable, "-c", "from autograder.grading.registry import assignments; assignments()"])
            floor_cpu = CPU_SECONDS[-1]
            seconds, _, stderr = timed(base[:-1] + ["--student", name, "--quiet"])
            regrades.append(seconds)
            regrade_cpu.append(CPU_SECONDS[-1])
            floors.append(floor)
            floors_cpu.append(floor_cpu)
        out = scratch / "grades"
        pages = sorted(out.glob("similarity-*.html"))
        sizes = {p.name: p.stat().st_size for p in pages}
        chromium = load_in_chromium(pages)
        reports = len(list(out.glob("*.json")))
    finally:
        if not (args.keep or args.reuse):
            shutil.rmtree(scratch, ignore_errors=True)
    results = {
        "students": len(names), "notebooks": notebooks, "reports": reports, "jobs": args.jobs,
        "cpus": os.cpu_count(), "limits": " ".join(LIMITS),
        "load_average_before_full_run": load_before, "load_average_after_full_run": load_after,
        "full_run_seconds": full and round(full, 1), "per_notebook_seconds": full and round(full / notebooks, 3),
        "peak_rss_mb_any_process": full_rss,
        "rerun_nothing_changed_seconds": round(rerun, 1),
        "regrade_one_student_seconds": [round(s, 2) for s in regrades],
        "regrade_one_student_median_seconds": round(statistics.median(regrades), 2),
        "regrade_one_student_cpu_seconds_all_processes": [round(s, 2) for s in regrade_cpu],
        "import_checks_and_torch_seconds_before_each_regrade": [round(s, 2) for s in floors],
        "import_checks_and_torch_cpu_seconds": [round(s, 2) for s in floors_cpu],
        "similarity_report_bytes": sizes,
        "similarity_report_chromium_load_seconds": {k: round(v, 3) for k, v in chromium.items()} if chromium else None,
    }
    print(f"{len(names)} students, {notebooks} notebooks, {os.cpu_count()} CPUs, --jobs {args.jobs}, {' '.join(LIMITS)}")
    if full is not None:
        print(f"  whole class graded:           {full:7.1f} s ({full / notebooks:.2f} s per notebook; load average "
              f"{load_before} before, {load_after} after)")
    else:
        print(f"  (class graded earlier; load average {load_before} at the start)")
    print(f"  rerun, nothing changed:       {rerun:7.1f} s")
    print(f"  one student regraded:         {', '.join(f'{s:.2f}' for s in regrades)} s "
          f"(median {statistics.median(regrades):.2f} s; just starting Python and importing the checks and torch, "
          f"measured before each: {', '.join(f'{s:.2f}' for s in floors)} s)")
    print(f"  ... in CPU time, all processes: {', '.join(f'{s:.2f}' for s in regrade_cpu)} s (the bare import: "
          f"{', '.join(f'{s:.2f}' for s in floors_cpu)} s)")
    print("  similarity reports:           " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()))
    if chromium:
        print("  opened in chromium:           " + ", ".join(f"{k} {v:.2f} s" for k, v in chromium.items()))
    if full_rss is not None:
        print(f"  peak memory of any process:   {full_rss} MB")
    write_results("term-regrade" if args.reuse else "term", results, smoke=args.smoke)


def summary(results: dict) -> list[tuple[str, str]]:
    """The README's rows: (figure, value)."""
    rows = []
    if results.get("full_run_seconds"):
        rows.append((f"a class of {results['students']} ({results['notebooks']} notebooks) graded from nothing, "
                     f"{results['jobs']} jobs", f"{results['full_run_seconds']:.0f} s "
                     f"({results['per_notebook_seconds']:.2f} s per notebook)"))
    rows.append(("one student of that class regraded (`--student`), median of three",
                 f"{results['regrade_one_student_median_seconds']:.1f} s"))
    sizes = results["similarity_report_bytes"].values()
    rows.append(("its similarity reports, the largest", f"{max(sizes) / 1e6:.2f} MB" if sizes else "none"))
    return rows


if __name__ == "__main__":
    main()
