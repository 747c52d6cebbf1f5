"""What a check sees: a submission whose names it can look up, call and build.

The same check code runs in two places:

* ``RemoteSubmission``: the grader's view of a sandboxed worker. Every call
  crosses the process boundary; values come back through :mod:`wire`.
* ``LocalSubmission``: a student's own notebook (``check(...)`` in a cell),
  where the names are the notebook's globals. Values take the same
  encode/decode round trip, so both see identical plain tensors.

A check fails by raising :class:`CheckFailure` with a status and a message
written for the student.
"""

from __future__ import annotations

import contextlib
import traceback
from typing import Any, Callable, Iterator

from autograder.sandbox import forbidden, inputs, wire

# Statuses a check can end with (and what the report calls them).
PASSED, FAILED = "passed", "failed"
MISSING, SIGNATURE, FORBIDDEN, EXCEPTION = "missing", "signature", "forbidden", "exception"
NOT_IMPLEMENTED = "not_implemented"
TIMEOUT, MEMORY, CRASHED = "timeout", "memory", "crashed"


class CheckFailure(Exception):
    def __init__(self, message: str, status: str = FAILED):
        super().__init__(message)
        self.status = status
        self.message = message


class DependencyFailure(CheckFailure):
    """A check failed and a function of the notebook it calls fails its own check (see expect.blame).

    ``wrong`` lists those functions: (name, the id of their own check, what it
    finds, the library object that is the reference for them, "" if none).
    """

    def __init__(self, message: str, status: str, wrong: list[tuple[str, str, str, str]]):
        super().__init__(message, status)
        self.wrong = wrong


def _signature_text(name: str, params: list[dict] | None) -> str:
    if params is None:
        return f"{name}(...)"
    shown = []
    for p in params:
        prefix = "*" if p["kind"] == "VAR_POSITIONAL" else "**" if p["kind"] == "VAR_KEYWORD" else ""
        shown.append(prefix + p["name"] + ("=..." if p["default"] else ""))
    return f"{name}({', '.join(shown)})"


def check_description(name: str, info: dict, expected: list[str] | None, kind: str, allowed_library: bool) -> None:
    """Raise the right CheckFailure when ``info`` (from describe) does not fit the contract."""
    if info["kind"] == "missing":
        raise CheckFailure(f"Your notebook does not define `{name}`. Define it with exactly this name "
                           "(check the spelling, and run the cell that defines it).", MISSING)
    if kind == "class" and info["kind"] != "class":
        raise CheckFailure(f"`{name}` should be a class (an nn.Module), but it is a {info['type']}.", SIGNATURE)
    if kind == "function" and info["kind"] != "function":
        raise CheckFailure(f"`{name}` should be a function, but it is a {info['type']}.", SIGNATURE)
    from_library = info["module"].startswith("tinyllm") or any(
        base.startswith("tinyllm.") and base.rsplit(".", 1)[-1] == name for base in info.get("bases", []))
    if from_library and not allowed_library:
        raise CheckFailure(f"`{name}` comes from the book's library (tinyllm). The exercise is to write it "
                           "yourself: define it in your notebook.", FORBIDDEN)
    params = info.get("params")
    if expected is None or params is None:
        return
    if any(p["kind"] in ("VAR_POSITIONAL", "VAR_KEYWORD") for p in params) and len(params) <= 2:
        return  # f(*args, **kwargs) accepts any call
    names = [p["name"] for p in params if p["kind"] in ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD", "KEYWORD_ONLY")]
    extra_required = [p["name"] for p in params[len(expected):]
                      if not p["default"] and p["kind"] in ("POSITIONAL_OR_KEYWORD", "KEYWORD_ONLY")]
    if names[: len(expected)] != expected or extra_required:
        raise CheckFailure(
            f"`{name}` has the wrong signature: expected {name}({', '.join(expected)}), "
            f"found {_signature_text(name, params)}. The checks call it with these parameter names.",
            SIGNATURE)


def not_implemented(label: str) -> CheckFailure:
    return CheckFailure(f"`{label}` is not written yet: it still raises NotImplementedError. Replace "
                        "`raise NotImplementedError()` with your code.", NOT_IMPLEMENTED)


def changed_failure(label: str, names: list[str]) -> CheckFailure:
    return CheckFailure(inputs.changed_message(label, names))


def forbidden_failure(name: str, used: list[str] | set[str]) -> CheckFailure:
    return CheckFailure(
        f"`{name}` uses {forbidden.describe(used)}, which this exercise asks you not to use: "
        "the point is to write the computation yourself.", FORBIDDEN)


class Proxy:
    """A function or class of the submission, callable as if it were local."""

    def __init__(self, submission: "Submission", name: str, forbid: tuple[str, ...]):
        self.submission, self.name, self.forbid = submission, name, list(forbid)

    def __call__(self, *args, **kwargs):
        return self.submission._call(self.name, args, kwargs, self.submission.allowed(self.forbid))


class ClassProxy(Proxy):
    def __call__(self, *args, **kwargs) -> "ObjectProxy":
        return self.submission._new(self.name, args, kwargs, self.submission.allowed(self.forbid))


class ObjectProxy:
    """An object built by a check inside the submission (a module to compare)."""

    def __init__(self, submission: "Submission", ref: Any, label: str, forbid: list[str]):
        self.submission, self.ref, self.label, self.forbid = submission, ref, label, forbid

    def __call__(self, *args, **kwargs):
        return self.method("__call__", *args, **kwargs)

    def method(self, name: str, *args, **kwargs):
        return self.submission._method(self, name, args, kwargs, self.submission.allowed(self.forbid))

    def eval(self) -> "ObjectProxy":
        self.method("eval")
        return self

    def state_dict_keys(self) -> list[str]:
        return self.submission._method(self, "state_dict_keys", (), {}, [])

    def why_missing(self, missing: list[str], unexpected: bool = False) -> str:
        """Advice for parameters the module lacks: a plain tensor where a parameter belongs, or another name."""
        kinds = self.submission._method(self, "attribute_kinds", (missing,), {}, []) if missing else {}
        plain = [k for k in missing if isinstance(kinds, dict) and kinds.get(k) == "tensor"]
        advice = []
        if plain:
            one = len(plain) == 1
            advice.append(f"In yours {', '.join(plain)} {'is a plain tensor' if one else 'are plain tensors'}, "
                          f"not {'a parameter' if one else 'parameters'}: wrap {'it' if one else 'each'} in "
                          "nn.Parameter(...) so that the module registers it (a registered parameter is in "
                          "state_dict() and parameters(), and trains).")
        if len(plain) < len(missing) or unexpected:
            advice.append("Name the parameters and submodules as the exercise does: the expected names above.")
        return " ".join(advice)

    def load_state_dict(self, state: dict) -> None:
        """Load reference weights by name; a naming mismatch lists the names expected."""
        keys = self.state_dict_keys()
        expected = list(state)
        if sorted(keys) != sorted(expected):
            missing = [k for k in expected if k not in keys]
            unexpected = [k for k in keys if k not in expected]
            raise CheckFailure(
                f"{self.label} does not have the parameters the exercise names, so the reference weights "
                f"cannot be loaded into it.\n  expected parameters: {', '.join(expected)}\n"
                + (f"  missing in yours: {', '.join(missing)}\n" if missing else "")
                + (f"  not expected: {', '.join(unexpected)}\n" if unexpected else "")
                + self.why_missing(missing, bool(unexpected)), SIGNATURE)
        self.submission._method(self, "load_state_dict", (state,), {}, [])


class Submission:
    """Common logic; subclasses move values and run code."""

    # True while a check re-runs with the library's reference in place of a wrong dependency.
    substituting = False
    # The references put in place ("tinyllm.layers.rms_norm"): a check that forbids one (LlamaBlock may not
    # call the library's rms_norm) allows it while it stands in for the student's own.
    exempt: frozenset[str] = frozenset()

    def allowed(self, forbid) -> list[str]:
        return [key for key in forbid if key not in self.exempt]

    @contextlib.contextmanager
    def substituted(self, names: dict[str, str]) -> Iterator[None]:
        """Within the block, the submission's ``name`` is the library object ``names[name]`` ("module:attr").

        The student's own code looks the name up where it runs (a notebook's
        globals), so their other functions call the reference instead. Put back
        afterwards; a worker restarted meanwhile replays the notebook as written.
        """
        self._substitute(names)
        self.substituting, self.exempt = True, _exempt(names.values())
        try:
            yield
        finally:
            self.substituting, self.exempt = False, frozenset()
            self._restore()

    def function(self, name: str, params: list[str] | None = None, forbid: tuple[str, ...] = ()) -> Proxy:
        check_description(name, self.describe(name), params, "function", allowed_library=False)
        self._check_references(name, forbid)
        return Proxy(self, name, forbid)

    def cls(self, name: str, params: list[str] | None = None, forbid: tuple[str, ...] = ()) -> ClassProxy:
        check_description(name, self.describe(name), params, "class", allowed_library=False)
        self._check_references(name, forbid)
        return ClassProxy(self, name, forbid)

    def library(self, target: str) -> ClassProxy | Proxy:
        """A public library object ("tinyllm.model:TinyGPT") built inside the submission's process."""
        return ClassProxy(self, target, ())

    def _check_references(self, name: str, forbid: tuple[str, ...]) -> None:
        used = set(self.describe(name).get("references", [])) & set(self.allowed(forbid))
        if used:
            raise forbidden_failure(name, used)

    # Implemented by subclasses.
    def describe(self, name: str) -> dict:
        raise NotImplementedError

    def _call(self, name, args, kwargs, forbid):
        raise NotImplementedError

    def _new(self, name, args, kwargs, forbid):
        raise NotImplementedError

    def _method(self, obj, method, args, kwargs, forbid):
        raise NotImplementedError

    def _substitute(self, names: dict[str, str]) -> None:
        raise NotImplementedError

    def _restore(self) -> None:
        raise NotImplementedError


def _exempt(targets) -> frozenset[str]:
    """The forbidden keys a reference standing in may reach: itself, the library objects its code calls, and
    theirs (tinyllm.softmax.cross_entropy calls log_softmax, which calls logsumexp: the exercise forbids the
    student all three)."""
    import importlib

    keys: set[str] = set()
    todo = []
    for target in targets:
        module, _, attr = target.partition(":")
        todo.append((f"{module}.{attr}", getattr(importlib.import_module(module), attr)))
    while todo:
        key, obj = todo.pop()
        if key in keys:
            continue
        keys.add(key)
        for found in forbidden.referenced(obj) - keys:
            owner, attr = forbidden.BUILTINS[found]
            if found.startswith("tinyllm."):  # the book's own code: follow what it calls in turn
                todo.append((found, getattr(forbidden._resolve(owner), attr)))
            else:
                keys.add(found)
    return frozenset(keys)


def _label(name: str, method: str) -> str:
    return name if method == "__call__" else f"{name}.{method}"


# ---------------------------------------------------------------- in the notebook

def _student_traceback(error: BaseException) -> str:
    import autograder

    package = autograder.__file__.rsplit("/", 1)[0]
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not f.filename.startswith(package) and "site-packages" not in f.filename]
    return "".join(traceback.format_list(frames) + traceback.format_exception_only(type(error), error))


class LocalSubmission(Submission):
    """The names defined in a notebook's namespace (the student's own kernel)."""

    def __init__(self, namespace: dict):
        self.namespace = namespace
        self._saved: dict[str, Any] = {}

    def _substitute(self, names: dict[str, str]) -> None:
        from autograder.sandbox.worker import substitute

        substitute(self.namespace, self._saved, names)

    def _restore(self) -> None:
        from autograder.sandbox.worker import restore

        restore(self.namespace, self._saved)

    def describe(self, name: str) -> dict:
        from autograder.sandbox.worker import ABSENT, describe_object

        # While a reference stands in for the student's own (substituted), a name is described as the student
        # wrote it, as the grader's worker does (it described each name before the substitution).
        own = self._saved[name] if name in self._saved else self.namespace.get(name, ABSENT)
        if own is ABSENT:
            return {"kind": "missing"}
        return describe_object(own)

    def _resolve(self, name: str):
        if ":" in name:
            import importlib

            module, _, attr = name.partition(":")
            return getattr(importlib.import_module(module), attr)
        return self.namespace[name]

    def _run(self, label: str, function: Callable, args, kwargs, forbid) -> Any:
        watch = inputs.Watch(function, args, kwargs)
        restore = forbidden.install()
        try:
            with forbidden.recording() as used:
                value = function(*args, **kwargs)
        except NotImplementedError:
            raise not_implemented(label) from None
        except Exception as error:  # noqa: BLE001 - the student's code
            raise CheckFailure(f"`{label}` raised an exception:\n{_student_traceback(error)}", EXCEPTION) from None
        finally:
            restore()
        if used & set(forbid):
            raise forbidden_failure(label, used & set(forbid))
        if inputs.student_code(function) and watch.changed():
            raise changed_failure(label, watch.changed())
        return value

    def _plain(self, label: str, value: Any) -> Any:
        try:
            return wire.roundtrip(value)
        except wire.WireError as error:
            raise CheckFailure(f"`{label}` returned something the checks cannot read: {error}.") from None

    @staticmethod
    def _unwrap(args, kwargs):
        """What the code is called with: copies of the check's data, as the grader's worker decodes them (so
        that nothing the code does to them reaches the check's own values), and the objects built for it."""
        def real(value):
            return value.ref if isinstance(value, ObjectProxy) else inputs.private_copy(value)
        return tuple(real(a) for a in args), {k: real(v) for k, v in kwargs.items()}

    def _call(self, name, args, kwargs, forbid):
        args, kwargs = self._unwrap(args, kwargs)
        return self._plain(name, self._run(name, self._resolve(name), args, kwargs, forbid))

    def _new(self, name, args, kwargs, forbid):
        args, kwargs = self._unwrap(args, kwargs)
        obj = self._run(name, self._resolve(name), args, kwargs, forbid)
        return ObjectProxy(self, obj, name.rpartition(":")[2], forbid)

    def _method(self, obj, method, args, kwargs, forbid):
        target = obj.ref
        label = _label(obj.label, method)
        if method == "state_dict_keys":
            return list(target.state_dict().keys())
        if method == "attribute_kinds":
            from autograder.sandbox.worker import attribute_kinds

            return attribute_kinds(target, args[0])
        args, kwargs = self._unwrap(args, kwargs)
        value = self._run(label, getattr(target, method), args, kwargs, forbid)
        if method in ("eval", "train", "to", "load_state_dict") or value is target:
            return None
        return self._plain(label, value)


# ---------------------------------------------------------------- in the grader

class RemoteSubmission(Submission):
    """A sandboxed worker's names, reached through requests (see runner.WorkerSession)."""

    def __init__(self, session):
        self.session = session
        self._descriptions: dict[str, dict] = {}

    def _substitute(self, names: dict[str, str]) -> None:
        response = self.session.request({"op": "substitute", "names": names})
        if not response.get("ok"):
            raise CheckFailure(f"the reference could not be put in place: {response.get('error', {}).get('message')}")

    def _restore(self) -> None:
        # A worker that stopped meanwhile is restarted by the next check, from the notebook as written.
        if self.session.worker is None:
            return
        try:
            restored = self.session.request({"op": "restore"}).get("ok")
        except Exception:  # noqa: BLE001 - the worker stopped: nothing of the substitution survives it
            restored = False
        if not restored:
            self.session.close()  # the next check starts a worker that holds the student's names again

    def describe(self, name: str) -> dict:
        if name not in self._descriptions:
            self._descriptions[name] = self.session.request({"op": "describe", "name": name})
        return self._descriptions[name]

    def _answer(self, label: str, response: dict) -> dict:
        if not response.get("ok"):
            error = response.get("error", {})
            kind = error.get("kind")
            if kind == "memory":
                raise CheckFailure(f"`{label}` ran out of memory (the limit is "
                                   f"{self.session.limits.memory_bytes // 2**20} MB): {error.get('message', '')}", MEMORY)
            if kind == "wire":
                raise CheckFailure(f"`{label}` returned something the checks cannot read: {error.get('message')}.")
            if error.get("type") == "NotImplementedError":
                raise not_implemented(label)
            raise CheckFailure(f"`{label}` raised an exception:\n{error.get('traceback') or error.get('message')}",
                               EXCEPTION)
        if response.get("used"):
            raise forbidden_failure(label, response["used"])
        changed = response.get("changed")
        if isinstance(changed, list) and changed and all(isinstance(n, str) for n in changed):
            raise changed_failure(label, changed)
        return response

    def _encode_args(self, args, kwargs):
        def swap(value):
            return wire.Handle(value.ref) if isinstance(value, ObjectProxy) else value
        return wire.encode([swap(a) for a in args]), wire.encode({k: swap(v) for k, v in kwargs.items()})

    def _decode(self, label: str, data: Any) -> Any:
        try:
            return wire.decode(data)
        except wire.WireError as error:
            raise CheckFailure(f"`{label}` returned something the checks cannot read: {error}.") from None

    def _call(self, name, args, kwargs, forbid):
        a, k = self._encode_args(args, kwargs)
        response = self._answer(name, self.session.request(
            {"op": "call", "target": name, "args": a, "kwargs": k, "forbid": forbid}))
        return self._decode(name, response.get("value"))

    def _new(self, name, args, kwargs, forbid):
        a, k = self._encode_args(args, kwargs)
        response = self._answer(name, self.session.request(
            {"op": "new", "target": name, "args": a, "kwargs": k, "forbid": forbid}))
        handle = response.get("handle")
        if not isinstance(handle, int):
            raise CheckFailure(f"`{name}` could not be built.")
        return ObjectProxy(self, handle, name.rpartition(":")[2], forbid)

    def _method(self, obj, method, args, kwargs, forbid):
        label = _label(obj.label, method)
        a, k = self._encode_args(args, kwargs)
        response = self._answer(label, self.session.request(
            {"op": "method", "handle": obj.ref, "method": method, "args": a, "kwargs": k, "forbid": forbid}))
        value = self._decode(label, response.get("value"))
        if method == "state_dict_keys":
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise CheckFailure(f"{obj.label}.state_dict() returned something unexpected.")
        return value
