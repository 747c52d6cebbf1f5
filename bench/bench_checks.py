"""How long each public check takes in a student's notebook, with the reference solutions.

    python bench/bench_checks.py [--repeat 5] [--load 0] [--unpinned]

Each public check runs as ``check(...)`` runs it in a notebook (in-process,
one torch thread, the notebook's time limit), against the names the reference
solution notebook defines. ``--load N`` keeps N busy processes spinning
meanwhile, as other work on a shared machine would; ``--unpinned`` runs the
checks with torch's own thread count instead of the one thread ``check()``
uses, to show why it does. Prints the median and
the slowest of the runs per check, and writes bench/results/checks.json.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_file import add_smoke_flag, write_results  # noqa: E402


def spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--load", type=int, default=0, help="busy processes running meanwhile")
    parser.add_argument("--unpinned", action="store_true", help="torch's default threads, not check()'s one")
    parser.add_argument("--assignment", action="append", help="only this assignment (repeatable)")
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        args.repeat, args.assignment = 1, args.assignment or ["03_softmax"]

    import autograder
    from autograder.grading.api import LocalSubmission
    from autograder.grading.registry import assignments, checks_for
    from autograder.grading.runner import run_check
    from tools.exercises import solution_namespace

    stop = multiprocessing.Event()
    hogs = [multiprocessing.Process(target=spin, args=(stop,), daemon=True) for _ in range(args.load)]
    for hog in hogs:
        hog.start()
    rows = []
    try:
        for assignment in args.assignment or assignments():
            names = solution_namespace(assignment)
            submission = LocalSubmission(names)
            for entry in checks_for(assignment, include_hidden=False):
                times = []
                for _ in range(args.repeat):
                    start = time.perf_counter()
                    if args.unpinned:
                        status, output = run_check(entry, submission)
                    else:
                        status, output = autograder.run_one(entry, submission, names, autograder.NOTEBOOK_TIME_LIMIT)
                    times.append(time.perf_counter() - start)
                    if status != "passed":
                        raise SystemExit(f"{entry.id} did not pass on the reference solution: {output}")
                rows.append({"check": entry.id, "median_ms": 1000 * statistics.median(times),
                             "max_ms": 1000 * max(times)})
    finally:
        stop.set()
        for hog in hogs:
            hog.join()
    import torch

    threads = torch.get_num_threads() if args.unpinned else 1
    print(f"{'check':42s} {'median':>9s} {'slowest':>9s}   ({args.repeat} runs each, {args.load} busy processes, "
          f"{threads} torch thread{'s' if threads != 1 else ''})")
    for row in rows:
        print(f"{row['check']:42s} {row['median_ms']:7.1f} ms {row['max_ms']:7.1f} ms")
    write_results("checks", {"repeat": args.repeat, "load": args.load, "torch_threads": threads, "checks": rows},
                  smoke=args.smoke)


def summary(results: dict) -> list[tuple[str, str]]:
    """The README's rows: (figure, value)."""
    slowest = max(results["checks"], key=lambda row: row["median_ms"])
    return [("public checks in a notebook, the slowest (median)",
             f"{slowest['median_ms']:.0f} ms (`{slowest['check']}`), {len(results['checks'])} checks")]


if __name__ == "__main__":
    main()
