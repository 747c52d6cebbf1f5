"""Grading speed: nbgrader autograde vs python -m autograder grade, side by side in one run.

    python bench/bench_grading.py [--submissions 50] [--assignment 03_softmax] [--jobs 2]

Both graders grade the same N submissions (the reference solution and the
fixture mistakes, each made unique) of one assignment; our grader runs with its
sandbox on. Also measures the in-notebook latency of the public checks.
Prints a table and writes bench/results/grading.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_file import add_smoke_flag, write_results  # noqa: E402
from tests.fixtures.submissions import all_fixtures  # noqa: E402
from tests.nbgrader_course import Course  # noqa: E402


def make_submissions(assignment: str, count: int) -> list[dict]:
    variants = [f.build() for f in all_fixtures() if f.assignment == assignment]
    notebooks = []
    for i in range(count):
        notebook = json.loads(json.dumps(variants[i % len(variants)]))
        notebook["cells"].append({"cell_type": "code", "execution_count": None, "id": f"bench{i}", "metadata": {},
                                  "outputs": [], "source": f"student_number = {i}"})
        notebooks.append(notebook)
    return notebooks


def in_notebook_latency(assignment: str) -> dict:
    """Seconds for each public check() call in a fresh kernel-like process with the reference code."""
    reference = json.loads((ROOT / "solutions" / assignment / f"{assignment}.ipynb").read_text())
    code = "\n\n".join("".join(c["source"]) for c in reference["cells"]
                       if c["cell_type"] == "code" and not c["metadata"].get("nbgrader", {}).get("grade"))
    from autograder.grading.registry import assignments

    script = code + "\nimport time, contextlib, io, json\nout = {}\n"
    for target in assignments()[assignment]:
        script += (f"t = time.perf_counter()\nwith contextlib.redirect_stdout(io.StringIO()):\n"
                   f"    check({target!r})\nout[{target!r}] = time.perf_counter() - t\n")
    script += "print(json.dumps(out))\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--submissions", type=int, default=50)
    parser.add_argument("--assignment", default="03_softmax")
    parser.add_argument("--jobs", type=int, default=2)
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        args.submissions = 2
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    notebooks = make_submissions(args.assignment, args.submissions)
    with tempfile.TemporaryDirectory() as scratch:
        course = Course(Path(scratch) / "course")
        course.release(args.assignment)
        students = [f"student{i:03d}" for i in range(len(notebooks))]
        for student, notebook in zip(students, notebooks):
            course.submit(student, args.assignment, notebook)

        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "autograder", "grade", str(course.folder / "submitted"), "--out",
                        str(Path(scratch) / "ours"), "--jobs", str(args.jobs), "--quiet"], check=True, cwd=ROOT)
        ours = time.perf_counter() - start

        start = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "nbgrader"), "autograde", args.assignment, "--force",
                        f"--CourseDirectory.db_url={course.db_url}", "--CourseDirectory.source_directory=solutions",
                        "--CourseDirectory.release_directory=release", "--log-level=ERROR"],
                       check=True, cwd=course.folder, capture_output=True)
        theirs = time.perf_counter() - start

    latency = in_notebook_latency(args.assignment)
    n = len(notebooks)
    results = {
        "assignment": args.assignment, "submissions": n, "jobs": args.jobs, "cpus": os.cpu_count(),
        "nbgrader_autograde_seconds": round(theirs, 1), "autograder_grade_seconds": round(ours, 1),
        "nbgrader_per_submission": round(theirs / n, 2), "autograder_per_submission": round(ours / n, 2),
        "speedup": round(theirs / ours, 2),
        "in_notebook_check_seconds": {k: round(v, 3) for k, v in latency.items()},
    }
    print(f"{n} submissions of {args.assignment}, {os.cpu_count()} CPUs")
    print(f"  nbgrader autograde:                  {theirs:7.1f} s  ({theirs / n:.2f} s per submission)")
    print(f"  autograder grade --jobs {args.jobs} (bwrap):  {ours:7.1f} s  ({ours / n:.2f} s per submission)")
    print(f"  speed-up: {theirs / ours:.1f}x")
    print("  in-notebook public checks: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in latency.items()))
    write_results("grading", results, smoke=args.smoke)


def summary(results: dict) -> list[tuple[str, str]]:
    """The README's rows: (figure, value)."""
    return [(f"grading {results['submissions']} notebooks of `{results['assignment']}`, per notebook",
             f"{results['autograder_per_submission']:.2f} s (sandboxed, {results['jobs']} jobs) against "
             f"{results['nbgrader_per_submission']:.2f} s for `nbgrader autograde`: {results['speedup']:.1f}x")]


if __name__ == "__main__":
    main()
