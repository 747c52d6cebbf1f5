"""The process that runs a submission's code, inside the sandbox.

It executes the notebook's code cells in one namespace, then answers the
grader's requests (describe a name, call a function, build an object, call
its methods) over a socket in the length-prefixed JSON of :mod:`wire`. It
only ever *answers*: the grader decides every score, in its own process, from
the values it receives. Whatever the submission does in here (patching torch,
printing scores, exiting) can change its own answers, never the grading.

    python -m autograder.sandbox.worker CONTROL_FD   (the zygote, which forks the workers)
"""

from __future__ import annotations

import importlib
import inspect
import linecache
import contextlib
import os
import signal
import sys
import traceback
from typing import Any

CELL_FILENAME = "<cell {}>"


# The library modules grading depends on: the hidden checks' oracle, and what the
# worker imports for submissions. Editing another module (the training loop, the
# book's helpers) must not invalidate every report.
ORACLE_MODULES = ["tinyllm.attention", "tinyllm.bpe", "tinyllm.data", "tinyllm.embedding", "tinyllm.encoder",
                  "tinyllm.layers", "tinyllm.model",
                  "tinyllm.ngram", "tinyllm.optim", "tinyllm.positional", "tinyllm.posttrain", "tinyllm.quantize",
                  "tinyllm.sampling", "tinyllm.softmax", "tinyllm.speculative", "tinyllm.train", "tinyllm.batches",
                  "tinyllm.evaluation"]


class OverTime(BaseException):
    """Raised into the submission's code when a request has used its CPU time.

    A BaseException, so that ``except Exception`` in a student's loop does not
    swallow it; the timer repeats, so a bare ``except:`` gets it again shortly.
    """


@contextlib.contextmanager
def cpu_limit(seconds: float | None):
    """Raise :class:`OverTime` once the process has used ``seconds`` of CPU time.

    CPU time (ITIMER_PROF: user + system, every thread) rather than wall-clock
    time, so that a loaded machine, which stretches wall-clock time, does not
    change whether a cell or check finishes in time. The grader keeps a
    wall-clock limit of its own for code that sleeps or blocks the signal.
    """
    if not seconds or seconds <= 0:
        yield
        return

    def expire(signum, frame):
        raise OverTime(f"used more than {seconds:g} s of CPU time")

    previous = signal.signal(signal.SIGPROF, expire)
    signal.setitimer(signal.ITIMER_PROF, seconds, 0.25)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def quiet_print(*args, sep=" ", end="\n", file=None, flush=False):
    """``print`` for graded code: output to the screen is dropped before it is even formatted.

    Nobody reads a graded notebook's printout, and formatting 20,000 tensors
    takes long enough to matter; printing to a file the code opened still works.
    """
    if file is not None and file not in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        print(*args, sep=sep, end=end, file=file, flush=flush)


def trimmed_traceback(error: BaseException) -> str:
    """The traceback restricted to frames in the student's cells."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename.startswith("<cell ")]
    lines = traceback.format_list(frames) if frames else []
    lines += traceback.format_exception_only(type(error), error)
    return "".join(lines)[-4000:]


def error_kind(error: BaseException) -> str:
    text = str(error)
    if type(error).__name__ == "WireError":
        return "wire"
    if isinstance(error, OverTime):
        return "timeout"
    if isinstance(error, MemoryError) or "can't allocate memory" in text or "not enough memory" in text:
        return "memory"
    if isinstance(error, (SystemExit, KeyboardInterrupt)):
        return "exit"
    return "exception"


def describe_object(obj: Any) -> dict:
    """What a check needs to know about a name before using it: kind, origin, signature."""
    from autograder.sandbox import forbidden

    kind = "class" if inspect.isclass(obj) else "function" if callable(obj) else "other"
    info: dict[str, Any] = {"kind": kind, "module": str(getattr(obj, "__module__", "") or ""),
                            "type": type(obj).__name__}
    if kind == "class":
        info["bases"] = [f"{c.__module__}.{c.__qualname__}" for c in inspect.getmro(obj)[1:]]
    try:
        signature = inspect.signature(obj)
        info["params"] = [{"name": p.name, "kind": p.kind.name, "default": p.default is not p.empty}
                          for p in signature.parameters.values()]
    except (TypeError, ValueError):
        info["params"] = None
    info["references"] = sorted(forbidden.referenced(obj))
    return info


ABSENT = object()  # a name a substitution added, to remove again


def library_object(target: str) -> Any:
    """The public library's object named "module:attr" (a module of tinyllm only)."""
    module, _, attr = target.partition(":")
    if not (module == "tinyllm" or module.startswith("tinyllm.")) or not attr.isidentifier():
        raise ValueError(f"not a library object: {target}")
    return getattr(importlib.import_module(module), attr)


def substitute(namespace: dict, saved: dict, names: dict[str, str]) -> None:
    """Bind each name of ``namespace`` to the library object ``names[name]``, keeping what it held in ``saved``."""
    replacements = {name: library_object(target) for name, target in names.items()}
    for name, replacement in replacements.items():
        saved.setdefault(name, namespace.get(name, ABSENT))
        namespace[name] = replacement


def restore(namespace: dict, saved: dict) -> None:
    """Undo :func:`substitute`: every name holds again what it held (or is gone again)."""
    for name, value in saved.items():
        if value is ABSENT:
            namespace.pop(name, None)
        else:
            namespace[name] = value
    saved.clear()


def attribute_kinds(obj: Any, names: list[str]) -> dict[str, str]:
    """What each dotted name ("base.weight") is on ``obj``: parameter, tensor, module, missing or a type name."""
    import torch

    kinds = {}
    for name in names[:64]:
        value = obj
        for part in name.split("."):
            value = getattr(value, part, None) if isinstance(value, torch.nn.Module) else None
        kinds[name] = ("missing" if value is None else "parameter" if isinstance(value, torch.nn.Parameter)
                       else "tensor" if isinstance(value, torch.Tensor)
                       else "module" if isinstance(value, torch.nn.Module) else type(value).__name__)
    return kinds


def error_payload(error: BaseException) -> dict:
    message = str(error)
    if isinstance(error, SystemExit):
        message = f"the code called exit()/sys.exit({error.code!r})"
    return {"type": type(error).__name__, "message": message[:2000], "kind": error_kind(error),
            "traceback": trimmed_traceback(error)}


class Session:
    """State of one worker: the submission's namespace and the objects built for checks."""

    def __init__(self) -> None:
        from autograder.sandbox import forbidden

        self.forbidden = forbidden
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
        # Test cells call check(...); inside the grader they must do nothing.
        self.namespace["check"] = self.namespace["run_hidden"] = lambda *a, **k: None
        # Jupyter's display() exists in every kernel; here it shows nothing, like print.
        self.namespace["print"] = quiet_print
        self.namespace["display"] = lambda *a, **k: None
        self.handles: dict[int, Any] = {}
        self.changed: list[str] = []
        self.saved: dict[str, Any] = {}  # names a substitution replaced, with what they held
        import autograder

        autograder.in_grader = True  # the notebook's progress cell runs no check here

    # ---------------------------------------------------------------- ops

    def op_cell(self, index: int, source: str) -> dict:
        """Run one top-level cell; an exception it raises is reported, not fatal."""
        filename = CELL_FILENAME.format(index)
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        try:
            code = compile(source, filename, "exec")
            exec(code, self.namespace)
        except OverTime:
            raise  # the cell did not finish: the grader leaves it out
        except BaseException as error:  # noqa: BLE001 - a student's cell may raise anything
            return {"error": {"cell": index, **error_payload(error)}}
        return {"error": None}

    def lookup(self, target: str) -> Any:
        """A name of the submission, or 'module:attr' from the public library."""
        if ":" in target:
            module, _, attr = target.partition(":")
            if not module.startswith(("tinyllm", "torch")):
                raise ValueError(f"cannot import {module}")
            return getattr(importlib.import_module(module), attr)
        if target not in self.namespace:
            raise NameError(target)
        return self.namespace[target]

    def op_substitute(self, names: dict) -> dict:
        """Bind each name of the namespace to a library object (the reference of a wrong dependency)."""
        if not isinstance(names, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in names.items()):
            raise ValueError("substitute takes {name: 'module:attr'}")
        substitute(self.namespace, self.saved, names)
        return {}

    def op_restore(self) -> dict:
        restore(self.namespace, self.saved)
        return {}

    def op_describe(self, name: str) -> dict:
        if name not in self.namespace or name in ("check", "run_hidden"):
            return {"kind": "missing"}
        return describe_object(self.namespace[name])

    def run(self, function, args, kwargs, forbid: list[str]) -> tuple[Any, list[str]]:
        from autograder.sandbox import inputs

        watch = inputs.Watch(function, args, kwargs)
        with self.forbidden.recording() as used:
            value = function(*args, **kwargs)
        self.changed = watch.changed() if inputs.student_code(function) else []
        return value, sorted(used & set(forbid))

    def op_call(self, target: str, args: list, kwargs: dict, forbid: list[str]) -> dict:
        from autograder.sandbox import wire

        function = self.lookup(target)
        args = wire.decode(args, handles=self.handles)
        kwargs = wire.decode(kwargs, handles=self.handles)
        value, used = self.run(function, args, kwargs, forbid)
        return {"value": wire.encode(value), "used": used, "changed": self.changed}

    def op_new(self, target: str, args: list, kwargs: dict, forbid: list[str]) -> dict:
        from autograder.sandbox import wire

        cls = self.lookup(target)
        obj, used = self.run(cls, wire.decode(args, handles=self.handles),
                             wire.decode(kwargs, handles=self.handles), forbid)
        number = len(self.handles) + 1
        self.handles[number] = obj
        return {"handle": number, "used": used, "changed": self.changed}

    def op_method(self, handle: int, method: str, args: list, kwargs: dict, forbid: list[str]) -> dict:
        from autograder.sandbox import wire

        obj = self.handles[handle]
        if method == "state_dict_keys":
            return {"value": list(obj.state_dict().keys()), "used": []}
        if method == "attribute_kinds":
            names = args[0] if args and isinstance(args[0], list) else []
            return {"value": wire.encode(attribute_kinds(obj, [n for n in names if isinstance(n, str)])), "used": []}
        if method == "__getattr__":
            return {"value": wire.encode(getattr(obj, args[0])), "used": []}
        function = getattr(obj, method)
        value, used = self.run(function, wire.decode(args, handles=self.handles),
                               wire.decode(kwargs, handles=self.handles), forbid)
        if method in ("eval", "train", "to") or value is obj:
            value = None  # these return the module itself, which cannot travel
        return {"value": wire.encode(value), "used": used, "changed": self.changed}


def read_exactly(fd: int, count: int) -> bytes:
    chunks = []
    while count:
        chunk = os.read(fd, count)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def serve(fd: int) -> None:
    """Answer requests on the socket ``fd`` until the grader closes it."""
    from autograder.sandbox import wire

    session = Session()
    ops = {"cell": session.op_cell, "describe": session.op_describe, "call": session.op_call,
           "new": session.op_new, "method": session.op_method,
           "substitute": session.op_substitute, "restore": session.op_restore}
    while True:
        try:
            length = wire.unpack_length(read_exactly(fd, 4))
            request = wire.parse(read_exactly(fd, length))
        except EOFError:
            return
        op = ops.get(request.pop("op", None))
        cpu_seconds = request.pop("cpu_seconds", None)
        try:
            if op is None:
                raise ValueError("unknown operation")
            with cpu_limit(cpu_seconds if isinstance(cpu_seconds, (int, float)) else None):
                response = {"ok": True, **op(**request)}
        except BaseException as error:  # noqa: BLE001
            response = {"ok": False, "error": error_payload(error)}
        try:
            message = wire.pack(response)
        except (wire.WireError, TypeError, ValueError) as error:
            message = wire.pack({"ok": False, "error": {"type": "WireError", "kind": "wire",
                                                        "message": str(error), "traceback": ""}})
        view = memoryview(message)
        while view:  # a socket may take a long message in parts
            view = view[os.write(fd, view):]


def main() -> None:
    """The zygote (see :mod:`autograder.sandbox.zygote`): import once, then fork a worker per request."""
    from autograder.sandbox import zygote

    zygote.die_with_parent()  # with the grader, even without bubblewrap's --die-with-parent
    # Import what submissions use before any of their code runs, and wrap the
    # forbidden built-ins so that any later reference to them is a wrapper.
    import torch  # noqa: F401

    from autograder.sandbox import forbidden

    for name in ORACLE_MODULES:
        importlib.import_module(name)
    forbidden.install()
    zygote.Zygote(int(sys.argv[1])).serve()


if __name__ == "__main__":
    main()
