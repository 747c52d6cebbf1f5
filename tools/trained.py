"""The book's training runs, shipped in ``trained/``: what a cold build reads instead of training again.

    make runs                                   # train every run from nothing and ship the results
    python -m tools.trained ship DIR            # replace trained/ by the entries of the model cache DIR
    python -m tools.trained check               # the last build trained nothing that is not shipped

Training the chapters' models and seeded comparisons (chapter 10 alone runs
24) keeps two cores busy for over 13 minutes: ``make runs`` executed the
chapters in 811 s. ``tinyllm.book`` caches each result under a key
that hashes everything it depends on: its arguments, the corpus and the source
of the library modules that train it. Those results are shipped here, so a
fresh clone's build copies them into its model cache (``_build/models``) and
executes every chapter without training. A change to the training code
changes the keys: the build then trains what it lacks, as before, lists it in
``_build/.jupyter_cache/trained-by-the-last-build.txt``, and
``tests/test_trained.py`` fails until ``make runs`` ships the new results.

Checkpoints of ``trained_tiny_gpt`` are shipped without their optimiser state
and their copy of the best weights (a finished run's weights are the ones it
kept), a quarter of their size; everything else is shipped as it is.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from tools.bookconfig import ROOT

SHIPPED = ROOT / "trained"
# Beside the executed chapters it describes, so a test that executes them into a cache of its own
# (tests/test_book_build.py) leaves the build's record alone.
RECORD = "trained-by-the-last-build.txt"
BUILD_RECORD = ROOT / "_build" / ".jupyter_cache" / RECORD


def entries(folder: Path) -> dict[str, Path]:
    """{name: path} of a model cache's finished entries (no locks, no half-written files)."""
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in (".json", ".pt")}


def seed(cache: Path, shipped: Path | None = None) -> int:
    """Copy into ``cache`` every shipped entry it lacks; returns how many were copied."""
    shipped = shipped or SHIPPED
    cache.mkdir(parents=True, exist_ok=True)
    have = entries(cache)
    copied = 0
    for name, path in entries(shipped).items():
        if name not in have:
            tmp = cache / (name + ".tmp")
            shutil.copyfile(path, tmp)
            tmp.replace(cache / name)  # a chapter reading the cache meanwhile sees all of it or nothing
            copied += 1
    return copied


def record(path: Path, cache: Path, before: set[str]) -> list[str]:
    """Write to ``path`` (and return) the entries that appeared in ``cache`` since ``before``: what was trained."""
    trained = sorted(set(entries(cache)) - before)
    path.write_text("".join(name + "\n" for name in trained), encoding="utf-8")
    return trained


def slim_copy(source: Path, target: Path) -> None:
    """Copy one cache entry for shipping; a TinyGPT checkpoint loses what only resuming its training needs."""
    if not source.name.startswith("tiny_gpt_"):
        shutil.copyfile(source, target)
        return
    import torch

    payload = torch.load(source, map_location="cpu", weights_only=True)
    if not payload.get("finished"):
        raise ValueError(f"{source} is an unfinished run: a shipped model must be one the book reads")
    payload["optimizer"] = None  # a finished run is never resumed
    payload["best_model"] = None  # "model" already holds the weights the run kept
    torch.save(payload, target)


def ship(cache: Path, shipped: Path | None = None) -> list[str]:
    """Replace ``shipped``'s entries by ``cache``'s; returns the names shipped."""
    shipped = shipped or SHIPPED
    found = entries(cache)
    if not found:
        raise SystemExit(f"tools.trained: {cache} holds no trained runs: nothing to ship")
    shipped.mkdir(parents=True, exist_ok=True)
    for path in entries(shipped).values():
        path.unlink()
    for name, path in found.items():
        slim_copy(path, shipped / name)
    return sorted(found)


def stale(path: Path | None = None, shipped: Path | None = None) -> list[str]:
    """What the last build that executed a chapter trained (its record, ``path``), less what is shipped since."""
    path, shipped = path or BUILD_RECORD, shipped or SHIPPED
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make book` first")
    have = entries(shipped)
    return [name for name in path.read_text(encoding="utf-8").split() if name not in have]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.trained", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ship_parser = commands.add_parser("ship", help="replace trained/ by the entries of a model cache")
    ship_parser.add_argument("cache", type=Path)
    commands.add_parser("check", help="fail if the last build trained something that is not shipped")
    args = parser.parse_args(argv)
    if args.command == "ship":
        names = ship(args.cache)
        size = sum(p.stat().st_size for p in entries(SHIPPED).values())
        print(f"tools.trained: shipped {len(names)} runs into {SHIPPED.relative_to(ROOT)}/ ({size / 1e6:.1f} MB)")
        return 0
    missing = stale()
    if missing:
        print(f"tools.trained: the last build trained {len(missing)} runs that trained/ lacks "
              f"(e.g. {missing[0]}): run `make runs` and commit trained/", file=sys.stderr)
        return 1
    print("tools.trained: the last build trained nothing that is not shipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
