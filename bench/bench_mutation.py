"""Grading strength: every mutant of every assignment's reference solution, graded by the real grader.

    python bench/bench_mutation.py [--assignment 07_modern_block ...] [--jobs 2] [--timeout 5]
                                   [--survivors FILE]
    python bench/bench_mutation.py --smoke     # three mutants of one assignment: checks that it still runs

For each assignment (discovered from the checks, as the grader does) it makes
every mutant of the solution code (tools/mutation.py: mutmut's operators),
grades each one with public and hidden checks in the sandbox, and prints the
table: mutants, killed, equivalent (listed with a reason in
autograder/contracts/<assignment>.toml), survived (neither), the share of
non-equivalent mutants killed, and how many were killed by hidden checks
alone (a mistake the notebook's public checks would not have shown). Survivors are printed with their keys (and
written to --survivors); a listed equivalent that the checks kill anyway is
reported too, since its reason must be wrong. Writes bench/results/mutation.json; with
--assignment it replaces only those assignments' rows there (each row keeps the commit it
was measured on), so one assignment can be re-measured after its checks change.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_file import add_smoke_flag, provenance, read_results, write_results  # noqa: E402
from tools import mutation  # noqa: E402

GOAL = 0.95


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assignment", action="append", help="only this assignment (repeatable)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="CPU seconds per call into a mutant (the reference needs well under 1)")
    parser.add_argument("--survivors", type=Path, help="write the survivors' keys to this file")
    parser.add_argument("--in-notebook", action="store_true",
                        help="a quicker screen: run each mutant in this process as the notebook's check() does, "
                             "stopping at its first failing check (tools.mutation.grade_in_notebook), not in the "
                             "sandboxed grader; rows say which")
    add_smoke_flag(parser)
    args = parser.parse_args()
    chosen = args.assignment or mutation.assignments()
    if args.smoke:
        chosen = chosen[:1]
    from autograder.grading.registry import load_checks

    hidden = {c.id: c.hidden for c in load_checks()}
    rows, survivors, wrongly_listed, hidden_only = [], {}, {}, {}
    for assignment in chosen:
        found = mutation.mutants(assignment)
        if args.smoke:
            found = mutation.sample(found, 3, seed=0)
        listed = mutation.equivalents(assignment)
        began = time.perf_counter()
        outcomes = (mutation.grade_in_notebook(found) if args.in_notebook else
                    mutation.grade(found, jobs=args.jobs, timeout=args.timeout))
        killed = [o for o in outcomes if o.killed]
        alive = [o for o in outcomes if not o.killed]
        equivalent = [o for o in alive if o.mutant.key in listed]
        survived = [o for o in alive if o.mutant.key not in listed]
        survivors[assignment] = [o.mutant.key for o in survived]
        hidden_only[assignment] = [o.mutant.key for o in killed if all(hidden.get(c, False) for c in o.failed)]
        wrongly_listed[assignment] = [o.mutant.key for o in killed if o.mutant.key in listed]
        stale = sorted(set(listed) - {m.key for m in found})
        strength = len(killed) / max(1, len(found) - len(equivalent))
        rows.append({"assignment": assignment, "mutants": len(found), "killed": len(killed),
                     "equivalent": len(equivalent), "survived": len(survived),
                     "killed_share": round(strength, 4), "hidden_only": len(hidden_only[assignment]),
                     "seconds": round(time.perf_counter() - began, 1),
                     "stale_equivalents": [] if args.smoke else stale, "commit": provenance()["commit"],
                     "graded_by": "notebook check(), first failure" if args.in_notebook else "grader (sandbox)"})
        for o in survived:
            print(f"  survived  {o.mutant.key}", flush=True)
        for key in hidden_only[assignment]:
            print(f"  killed by hidden checks only  {key}", flush=True)
        print(f"{assignment}: {len(found)} mutants, {len(killed)} killed, {len(equivalent)} equivalent, "
              f"{len(survived)} survived ({strength:.1%} of the non-equivalent killed), "
              f"{len(hidden_only[assignment])} killed by hidden checks only "
              f"in {time.perf_counter() - began:.0f} s", flush=True)
    stored = None if args.smoke or not args.assignment else read_results("mutation")
    if stored:  # re-measured assignments replace their rows; the others keep theirs
        survivors = {**stored.get("survivors", {}), **survivors}
        hidden_only = {**stored.get("hidden_only", {}), **hidden_only}
        fresh = {r["assignment"]: r for r in rows}
        rows = [fresh.pop(r["assignment"], r) for r in stored["rows"]] + list(fresh.values())
        rows.sort(key=lambda r: r["assignment"])
        chosen = [r["assignment"] for r in rows]
    total = {k: sum(r[k] for r in rows) for k in ("mutants", "killed", "equivalent", "survived", "hidden_only")}
    print()
    print("| assignment | mutants | killed | equivalent | survived | killed of non-equivalent | by hidden checks only |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['assignment']} | {r['mutants']} | {r['killed']} | {r['equivalent']} | {r['survived']} | "
              f"{r['killed_share']:.1%} | {r['hidden_only']} |")
    share = total["killed"] / max(1, total["mutants"] - total["equivalent"])
    print(f"| all | {total['mutants']} | {total['killed']} | {total['equivalent']} | {total['survived']} | "
          f"{share:.1%} | {total['hidden_only']} |")
    for assignment, keys in wrongly_listed.items():
        for key in keys:
            print(f"killed, yet listed as equivalent  {assignment}  {key}")
    for r in rows:
        for key in r["stale_equivalents"]:
            print(f"listed as equivalent, no such mutant  {r['assignment']}  {key}")
    if args.survivors:
        args.survivors.write_text("".join(f"{a}\t{k}\n" for a, keys in survivors.items() for k in keys))
    write_results("mutation", {"rows": rows, "total": total, "jobs": args.jobs, "timeout": args.timeout,
                               "cpus": os.cpu_count(), "seconds": round(sum(r["seconds"] for r in rows), 1),
                               "survivors": survivors, "hidden_only": hidden_only}, smoke=args.smoke)
    weak = [r["assignment"] for r in rows if r["killed_share"] < GOAL]
    if args.smoke:  # three mutants say nothing about the goal
        return 0
    if weak:
        print(f"below the goal of {GOAL:.0%}: {', '.join(weak)}")
    return 1 if weak else 0


def summary(results: dict) -> list[tuple[str, str]]:
    """The README's rows: (figure, value)."""
    total = results["total"]
    share = total["killed"] / max(1, total["mutants"] - total["equivalent"])
    weakest = min(results["rows"], key=lambda r: r["killed_share"])
    return [(f"mutants of the reference solutions killed by the checks, {len(results['rows'])} assignments",
             f"{total['killed']} of {total['mutants'] - total['equivalent']} non-equivalent ({share:.1%}; "
             f"{total['equivalent']} equivalent, {total['survived']} survived)"),
            ("the assignment whose checks kill the smallest share",
             f"{weakest['assignment']}: {weakest['killed_share']:.1%}")] + [
            (f"{r['assignment']}: graded by", r["graded_by"]) for r in results["rows"]
            if r.get("graded_by", "grader (sandbox)") != "grader (sandbox)"]


if __name__ == "__main__":
    sys.exit(main())
