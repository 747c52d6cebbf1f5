"""Command line: ``python -m autograder grade PATH... [--out DIR] [--jobs N] [--timeout S]``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder",
                                     description="Grade LLM Foundations exercise notebooks in a sandbox.")
    commands = parser.add_subparsers(dest="command", required=True)
    from autograder.classrun import grade

    grade.add_arguments(commands.add_parser("grade", help="grade notebooks; writes JSON reports and grades.csv",
                                            description=grade.__doc__,
                                            formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    if args.command == "grade":
        return grade.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
