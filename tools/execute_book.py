"""Execute the book's chapters in parallel into MyST-NB's cache, before the Sphinx build reads them.

    python -m tools.execute_book              # as many chapters at a time as there are cores
    python -m tools.execute_book --jobs 1     # one at a time (the serial build)

``jupyter-book build`` executes the chapters one after the other, on one core.
This step runs ``--jobs`` of them at once, each kernel on one thread (so two
kernels on two cores do not fight over them, and a busy machine slows them
down in proportion instead of many times over), and stores the results in the
jupyter-cache that MyST-NB reads (``execute_notebooks: cache``): the Sphinx
build then finds every chapter executed. A chapter that fails is left out, and
the Sphinx build runs it again and reports the error as usual.

MyST-NB's cache is keyed by the chapter's code only. This step also keys each
chapter on what its code imports: the tinyllm modules it imports (followed
through their own imports) and the corpus. When one of those changes, that
chapter's cached result is dropped and it runs again; the others stay cached.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import yaml

from tinyllm.book import library_closure
from tools.bookconfig import ROOT, toc_files

CACHE = ROOT / "_build" / ".jupyter_cache"
STATE = CACHE / "tinyllm-inputs.json"  # per chapter: the hash of its inputs, and its last execution time
PACKAGE = ROOT / "tinyllm"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def chapters() -> list[Path]:
    """The table of contents' pages that MyST-NB executes (those with a kernelspec), in book order."""
    pages = [ROOT / f"{name}.md" for name in toc_files()]
    return [p for p in pages if p.exists() and "kernelspec:" in p.read_text(encoding="utf-8")[:1000]]


def read_notebook(path: Path):
    """The chapter as MyST-NB reads it: the same cells, so the same cache key."""
    from myst_nb.core.read import read_myst_markdown_notebook
    from myst_parser.config.main import MdParserConfig

    return read_myst_markdown_notebook(path.read_text(encoding="utf-8"), MdParserConfig(), add_source_map=True,
                                       path=str(path))


def inputs_hash(notebook) -> str:
    """A hash of what the chapter's results depend on besides its code: the library it imports, the corpus."""
    code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    digest = hashlib.sha256()
    for name in library_closure(code, PACKAGE):
        digest.update(name.encode() + b"\0" + (PACKAGE / f"{name}.py").read_bytes())
    for data in sorted((PACKAGE / "_data").glob("*")):
        digest.update(data.name.encode() + b"\0" + data.read_bytes())
    return digest.hexdigest()


def expected_seconds(path: Path, notebook, state: dict) -> float:
    """How long the chapter ran last time; never run (a fresh clone): a guess from its code.

    The guess only orders the chapters: those that train models (the longest
    by far) first, then by the length of their code.
    """
    last = state.get(str(path.relative_to(ROOT)), {}).get("seconds")
    if last is not None:
        return last
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    trains = len(re.findall(r"trained_tiny_gpt|compare_runs|trained_part3|Trainer\(|\.train\(", code))
    return 1000.0 * trains + len(code) / 100


def _execute(path: str, notebook, timeout: int, cache_path: Path = CACHE):
    """Run in a worker process: execute one chapter in its own directory, as MyST-NB would."""
    from jupyter_cache.executors.utils import single_nb_execution

    os.environ.update(ONE_THREAD)  # the kernel inherits this process's environment
    # The kernels' own start-up chatter goes to a log, not the terminal; errors come back in the result.
    log = open(cache_path / "kernels.log", "a", encoding="utf-8")
    os.dup2(log.fileno(), 2)
    result = single_nb_execution(notebook, cwd=str(Path(path).parent), allow_errors=False, timeout=timeout,
                                 meta_override=True)
    error = None if result.err is None else f"{type(result.err).__name__}: {str(result.err)[-2000:]}"
    return path, notebook, result.time, error


def execute(jobs: int, timeout: int = 900, log=print, cache_path: Path = CACHE,
            order: str = "longest", shipped: bool = True) -> dict[str, float]:
    """Execute every chapter that the cache lacks, ``jobs`` at a time; returns {chapter: seconds} of those run.

    ``order``: "longest" first as last measured (the build's), or "book" / "reverse" (the
    table of contents' order, or its reverse: a test executes the book both ways).
    ``shipped``: first copy the shipped training runs (``trained/``, see
    tools.trained) into the model cache, so that the chapters read them instead of
    training; False trains every run the cache lacks (``make runs``). Either way,
    what the chapters trained is listed in ``cache_path``'s record (tools.trained.RECORD).
    """
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    from tinyllm.book import cache_dir
    from tools import trained

    models = cache_dir()
    if shipped:
        copied = trained.seed(models)
        if copied:
            log(f"execute_book: {copied} shipped training runs copied into {models}")

    cache_path.mkdir(parents=True, exist_ok=True)
    cache = get_cache(str(cache_path))
    state_path = cache_path / STATE.name
    state = json.loads(state_path.read_text(encoding="utf-8")) if state_path.exists() else {}
    todo = []
    for path in chapters():
        key = str(path.relative_to(ROOT))
        notebook = read_notebook(path)
        inputs = inputs_hash(notebook)
        record = None
        try:
            record = cache.match_cache_notebook(notebook)
        except KeyError:
            pass
        if record is not None and state.get(key, {}).get("inputs") != inputs:
            cache.remove_cache(record.pk)  # its code is unchanged, but what it imports is not
            record = None
        if record is None:
            todo.append((path, notebook, inputs))
    if order == "longest":  # no long chapter should start last
        todo.sort(key=lambda item: expected_seconds(item[0], item[1], state), reverse=True)
    elif order == "reverse":
        todo.reverse()
    log(f"execute_book: {len(todo)} of {len(chapters())} chapters to execute, {jobs} at a time")
    ran: dict[str, float] = {}
    if not todo:
        if not (cache_path / trained.RECORD).exists():  # a build that executes nothing trains nothing
            (cache_path / trained.RECORD).write_text("", encoding="utf-8")
        return ran
    start = time.perf_counter()
    before = set(trained.entries(models))
    # spawn: fresh workers, not copies of this process (which may hold threads and open databases)
    with ProcessPoolExecutor(max(1, jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_execute, str(path), notebook, timeout, cache_path): inputs
                   for path, notebook, inputs in todo}
        for n, future in enumerate(as_completed(futures), start=1):
            path, executed, seconds, error = future.result()
            key = str(Path(path).relative_to(ROOT))
            if error is not None:
                plain = re.sub(r"\x1b\[[0-9;]*m", "", error)  # the traceback's terminal colours
                lines = [line.strip() for line in plain.splitlines() if re.search(r"\w", line)]
                # the exception itself: a traceback's last line; a timeout's first (a preview of the cell follows it)
                last = lines[:1] if plain.startswith("CellTimeoutError") else lines[-1:]
                log(f"  [{n}/{len(todo)}] {key} failed after {seconds:.1f} s ({' / '.join(last)}); "
                    "the Sphinx build runs it again and reports it")
                continue
            cache.cache_notebook_bundle(CacheBundleIn(executed, path, data={"execution_seconds": seconds}),
                                        check_validity=False, overwrite=True)
            state[key] = {"inputs": futures[future], "seconds": round(seconds, 2)}
            state_path.write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
            ran[key] = seconds
            log(f"  [{n}/{len(todo)}] {key} executed in {seconds:.1f} s "
                f"({time.perf_counter() - start:.0f} s since the start)")
    new = trained.record(cache_path / trained.RECORD, models, before)
    if new:
        log(f"execute_book: the chapters trained {len(new)} runs that the model cache lacked "
            f"(listed in {cache_path / trained.RECORD})")
    return ran


def glued_values(cache_path: Path = CACHE) -> dict[str, dict[str, str]]:
    """{chapter: {name: text/plain}} of every value the chapters cached under cache_path glued."""
    from jupyter_cache import get_cache

    cache = get_cache(str(cache_path))
    values = {}
    for path in chapters():
        try:
            record = cache.match_cache_notebook(read_notebook(path))
        except KeyError:
            continue
        glued = {}
        for cell in cache.get_cache_bundle(record.pk).nb.cells:
            for output in cell.get("outputs", []):
                name = output.get("metadata", {}).get("scrapbook", {}).get("name")
                if name is not None:
                    glued[name] = output["data"].get("application/papermill.record/text/plain")
        values[str(path.relative_to(ROOT))] = glued
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.execute_book", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="chapters executed at a time (default: the number of cores)")
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    parser.add_argument("--timeout", type=int, default=config.get("execute", {}).get("timeout", 900),
                        help="seconds a cell may run (default: _config.yml's execute.timeout)")
    parser.add_argument("--no-shipped", dest="shipped", action="store_false",
                        help="train every run the model cache lacks instead of copying the shipped ones (make runs)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    execute(args.jobs, args.timeout, shipped=args.shipped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
