"""A time limit for a check run in the student's own notebook.

A check whose student code never returns (a ``merge_pair`` that forgets to
advance its index hangs ``train_bpe`` forever, its list growing by megabytes a
second) must stop after a few seconds and say which function did not return.
A thread cannot be killed in CPython, so the check runs in the kernel's own
thread and is interrupted from inside it:

* in the main thread (Jupyter, Colab, a script) by ``SIGALRM`` from
  ``signal.setitimer``: the handler raises :class:`TimeLimitExceeded` in
  whatever Python code is running. Code stuck inside one long C call (a huge
  matrix product) is interrupted when that call returns;
* in any other thread, where signals cannot be delivered, by a trace function
  (``sys.settrace``) that checks the clock at every line: slower, but it stops
  a pure-Python loop just the same.

The exception derives from ``BaseException`` so that a student's
``except Exception:`` cannot swallow it, and it comes again every half second
for code that swallows even that. The grader does not use this: it
kills the sandboxed worker instead (``--timeout``).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from types import FrameType
from typing import Iterator


class TimeLimitExceeded(BaseException):
    """Raised inside the running code when the check's time is up."""

    def __init__(self, seconds: float, stack: list[str]):
        super().__init__(f"the check did not finish within {seconds:g} s")
        self.seconds = seconds
        self.stack = stack  # the notebook's functions that were running, outermost first


def notebook_stack(frame: FrameType | None, namespace: dict) -> list[str]:
    """Names of the functions defined in the notebook (globals ``namespace``) on the stack, outermost first."""
    names = []
    while frame is not None:
        if frame.f_globals is namespace and frame.f_code.co_name != "<module>":
            names.append(frame.f_code.co_qualname if hasattr(frame.f_code, "co_qualname") else frame.f_code.co_name)
        frame = frame.f_back
    return names[::-1]


@contextlib.contextmanager
def time_limit(seconds: float, namespace: dict) -> Iterator[None]:
    """Run the block for at most ``seconds``; then raise TimeLimitExceeded inside it."""
    if seconds <= 0:
        yield
        return
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        with _alarm(seconds, namespace):
            yield
    else:
        with _traced(seconds, namespace):
            yield


@contextlib.contextmanager
def _alarm(seconds: float, namespace: dict) -> Iterator[None]:
    def on_alarm(signum, frame):
        raise TimeLimitExceeded(seconds, notebook_stack(frame, namespace))

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    # Then again every half second: code that swallows the first (a bare `except:`) gets the next.
    previous_delay, _ = signal.setitimer(signal.ITIMER_REAL, seconds, 0.5)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay:  # someone else's alarm was pending: give back what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(previous_delay - (time.monotonic() - started), 1e-3))


@contextlib.contextmanager
def _traced(seconds: float, namespace: dict) -> Iterator[None]:
    deadline = time.monotonic() + seconds

    def tracer(frame, event, arg):
        if time.monotonic() > deadline:
            raise TimeLimitExceeded(seconds, notebook_stack(frame, namespace))
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(previous)
