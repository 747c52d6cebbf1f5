"""Starting and talking to sandboxed worker processes.

Workers are forked by a *zygote* (:mod:`autograder.zygote`) that imported
torch once, so a submission costs a fork (about 20 ms), not a Python start and
a torch import (about 2 s). One zygote serves a whole run.

Isolation, strongest available first (what a report records under "sandbox"):

* ``bwrap``: the zygote runs in bubblewrap (Debian's ``bubblewrap`` package),
  the unprivileged sandbox Flatpak is built on: new user, PID, network, IPC and
  UTS namespaces, a read-only root, a read-only view of the Python installation
  and of the public code only (the book's library and the public part of this
  package, staged into a fresh folder: never ``solutions/``, the hidden checks
  or other submissions), an empty environment, no capabilities, and it dies
  with the grader. Each worker then gets namespaces of its own inside that
  sandbox (user, mount, PID, IPC, network, UTS), so it cannot see or signal
  another worker; a private size-limited ``/tmp`` and ``/dev/shm``; a read-only
  ``/submission`` with a copy of its notebook only; an empty ``/proc``; and it
  is PID 1 of its namespace, so killing it kills everything it started.
  Where a process inside bwrap may not create namespaces (see ``nesting_works``)
  each worker gets a bubblewrap sandbox, and a zygote, of its own instead.
* ``rlimits``: where bubblewrap is missing (macOS, Windows/WSL without it) the
  worker is still a separate process with resource limits, but it can read
  what the grading user can read and reach the network. Use it only for work
  you trust; the grader refuses it unless asked (``--unsafe-no-sandbox``).

Limits everywhere: wall-clock per request (enforced by the grader, which kills
the worker), address space (RLIMIT_AS), file size (RLIMIT_FSIZE), open files,
no core dumps, CPU time. The process-count limit uses a ``pids`` cgroup per
worker when the grader may create one (root on cgroup v1/v2; the grader learns
the worker's PID from the kernel through SCM_CREDENTIALS), and otherwise
RLIMIT_NPROC, which the kernel counts per user namespace.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path


PACKAGE_DIR = Path(__file__).resolve().parent
TMP_PREFIX = "autograder-"


@dataclass(frozen=True)
class Limits:
    call_seconds: float = 10.0  # CPU seconds for each request of a check -- the CLI's --timeout
    cell_seconds: float = 120.0  # CPU seconds for each top-level cell (nbgrader's default) -- --cell-timeout
    startup_seconds: float = 30.0  # once per run for the zygote (Python, torch); and per worker, its fork
    memory_bytes: int = 2560 * 2**20  # address space; importing torch alone takes ~0.7 GB
    processes: int = 32  # tasks (processes and threads)
    file_bytes: int = 16 * 2**20  # largest file the worker may write
    scratch_bytes: int = 64 * 2**20  # its private /tmp
    open_files: int = 256


class WorkerError(Exception):
    """The worker could not answer: ``kind`` is timeout, crashed, memory or protocol."""

    def __init__(self, kind: str, message: str, whole_notebook: bool = False):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.whole_notebook = whole_notebook  # running the cells failed: no check could run


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def bwrap_works() -> bool:
    """bwrap is installed and may create namespaces here (containers sometimes forbid it)."""
    path = bwrap_path()
    if not path:
        return False
    probe = subprocess.run([path, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@functools.lru_cache(maxsize=None)
def nesting_works() -> bool:
    """May a process inside bwrap make each worker's own namespaces and mounts?

    Ubuntu's AppArmor restriction of unprivileged user namespaces is meant to forbid
    it (and bwrap --disable-userns does). Then every worker gets a bubblewrap sandbox
    of its own instead: as isolated, but it pays for starting Python and torch each
    time. AUTOGRADER_NO_NESTING=1 forces that.
    """
    path = bwrap_path()
    if not path or os.environ.get("AUTOGRADER_NO_NESTING") == "1":
        return False
    # What a keeper does for each worker: namespaces and private mounts (no torch: -S). The
    # host's /tmp stays visible until then: the checkout or the venv may be there.
    setup = {"scratch_bytes": 1 << 20, "keep_under_tmp": [p for p in python_prefixes() if _under(p, "/tmp")]}
    nested = (f"import sys; sys.path.insert(0, {str(PACKAGE_DIR.parent)!r}); from autograder.zygote import "
              f"enter_namespaces; enter_namespaces({setup!r}, None)")
    probe = subprocess.run([path, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "--cap-drop", "ALL",
                            "--uid", "65534", "--gid", "65534", "--proc", "/proc", "--",
                            sys.executable, "-S", "-c", nested], capture_output=True, timeout=30)
    return probe.returncode == 0


def shares_a_zygote(isolation: str) -> bool:
    """Do this run's workers come from one shared zygote (else each from a sandbox of its own)?"""
    return isolation != "bwrap" or nesting_works()


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def python_prefixes() -> list[str]:
    """The Python installation, which the sandbox shows read-only."""
    python = sys.executable
    return sorted({sys.base_prefix, sys.prefix, os.path.dirname(os.path.dirname(os.path.realpath(python)))})


# ---------------------------------------------------------------- temp folders

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _left_by_dead_grader(path: Path) -> bool:
    parts = path.name.split("-")  # autograder-<grader pid>-...
    return len(parts) >= 3 and parts[1].isdigit() and not _pid_alive(int(parts[1]))


def remove_stale_folders(base: Path | None = None) -> int:
    """Delete temporary folders (and empty cgroups) left by graders that were killed; returns how many."""
    base = Path(base or tempfile.gettempdir())
    removed = 0
    for folder in base.glob(f"{TMP_PREFIX}*"):
        if _left_by_dead_grader(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    for cgroups in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/pids")):
        for group in cgroups.glob(f"{TMP_PREFIX}*") if os.geteuid() == 0 else []:
            if _left_by_dead_grader(group):
                try:
                    group.rmdir()  # only an empty cgroup can go; its processes died with the grader
                except OSError:
                    pass
    return removed


def make_folder(kind: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-{kind}-"))


def stage_runtime() -> Path:
    """Copy the public code a worker may import into a fresh folder.

    Only ``tinyllm`` and ``autograder`` without ``hidden/`` travel; the copy (not
    the checkout) is what the sandbox can see.
    """
    import tinyllm

    root = make_folder("runtime")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "hidden", "gradescope_build")
    shutil.copytree(Path(tinyllm.__file__).resolve().parent, root / "tinyllm", ignore=ignore)
    shutil.copytree(PACKAGE_DIR, root / "autograder", ignore=ignore)
    assert not (root / "autograder" / "hidden").exists()
    return root


# ---------------------------------------------------------------- cgroups

def _cgroup_for(pid: int, limits: Limits) -> list[Path]:
    """Put a worker in its own pids cgroup when allowed (root on cgroup v1/v2); [] otherwise."""
    v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    base = Path("/sys/fs/cgroup") if v2 else Path("/sys/fs/cgroup/pids")
    group = base / f"autograder-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
    except OSError:
        return []
    try:
        (group / "pids.max").write_text(str(limits.processes))
        (group / "cgroup.procs").write_text(str(pid))
    except OSError:
        _remove_cgroup(group)
        return []
    return [group]


def _remove_cgroup(group: Path) -> None:
    for _ in range(50):
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)  # its last processes are still exiting


# ---------------------------------------------------------------- the zygote

class Spawner:
    """The grader's end of one zygote (see :mod:`autograder.zygote`): starts it, asks it for workers.

    One serves a whole run (every ``--jobs`` thread); it is started once, from
    the thread that will outlive the run, because the sandbox dies with it.
    """

    def __init__(self, runtime: Path, isolation: str, limits: Limits, submission_file: Path | None = None):
        # With a submission file the sandbox serves that one worker (no nesting, see nesting_works).
        self.runtime, self.isolation, self.submission_file = runtime, isolation, submission_file
        self.scratch_bytes = limits.scratch_bytes
        self.lock = threading.Lock()
        self.changed = threading.Condition()
        self.ready = False
        self.dead = False
        self.events: dict[int, dict] = {}
        self.home = make_folder("zygote")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.control = ours
        with open(self.home / "stderr.txt", "wb") as stderr:
            self.process = subprocess.Popen(
                self.command(theirs.fileno()), pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True, cwd=self.home)
        theirs.close()
        self.reader = threading.Thread(target=self._read, name="autograder-zygote", daemon=True)
        self.reader.start()

    def environment(self) -> dict[str, str]:
        return {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "PYTHONPATH": "/opt/autograder-runtime" if self.isolation == "bwrap" else str(self.runtime),
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1",  # one core per worker: --jobs decides the parallelism
            "MKL_NUM_THREADS": "1",
            "MPLBACKEND": "Agg",
        }

    def command(self, control_fd: int) -> list[str]:
        worker = [sys.executable, "-s", "-m", "autograder.worker", str(control_fd)]
        env = self.environment()
        if self.isolation != "bwrap":
            return ["env", "-i"] + [f"{k}={v}" for k, v in env.items()] + worker
        command = [bwrap_path(), "--unshare-all", "--die-with-parent", "--new-session",
                   "--cap-drop", "ALL", "--uid", "65534", "--gid", "65534", "--hostname", "sandbox",
                   "--clearenv", "--proc", "/proc"]
        # Only the device nodes Python needs; a writable /dev could be filled.
        for device in ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"):
            command += ["--dev-bind", device, device]
        for name, value in env.items():
            command += ["--setenv", name, value]
        # /tmp first, so that a Python installation under /tmp is mounted on top of it.
        command += ["--size", str(self.scratch_bytes), "--tmpfs", "/tmp",
                    "--size", str(self.scratch_bytes // 4), "--tmpfs", "/dev/shm"]
        if self.submission_file is not None:
            command += ["--ro-bind", str(self.submission_file), "/submission/submission.ipynb"]
        else:
            command += ["--dir", "/submission"]
        for path in ("/usr", "/bin", "/lib", "/lib64", "/lib32", "/etc/ld.so.cache",
                     "/etc/alternatives", "/sys/devices/system/cpu"):
            command += ["--ro-bind-try", path, path]
        for prefix in python_prefixes():
            command += ["--ro-bind", prefix, prefix]
        command += ["--ro-bind", str(self.runtime), "/opt/autograder-runtime"]
        # The root is a tmpfs that bwrap builds the mount points in; once they exist it
        # must be read-only, or a submission could fill it (it has no size limit).
        return command + ["--remount-ro", "/", "--chdir", "/", "--"] + worker

    # ---------------------------------------------------------------- messages

    def _read(self) -> None:
        while True:
            try:
                data = self.control.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                break
            try:
                message = json.loads(data)
            except ValueError:
                continue
            with self.changed:
                if message.get("ready"):
                    self.ready = True
                elif isinstance(message.get("id"), int):
                    self.events[message["id"]] = message
                self.changed.notify_all()
        with self.changed:
            self.dead = True
            self.changed.notify_all()

    def wait_ready(self, timeout: float) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: self.ready or self.dead, timeout):
                raise WorkerError("crashed", f"the sandbox did not start within {timeout:g} s")
        if self.dead:
            raise WorkerError("crashed", f"the sandbox could not start: {self.stderr_tail()}")

    def spawn(self, worker_id: int, setup: dict, fds: list[int]) -> None:
        message = json.dumps({"op": "spawn", "id": worker_id, "setup": setup}).encode()
        with self.lock:
            try:
                socket.send_fds(self.control, [message], fds)
            except OSError as error:
                raise WorkerError("crashed", f"the sandbox stopped ({error})") from None

    def kill(self, worker_id: int) -> None:
        with self.lock:
            try:
                self.control.send(json.dumps({"op": "kill", "id": worker_id}).encode())
            except OSError:
                pass

    def outcome(self, worker_id: int, timeout: float) -> dict | None:
        """The zygote's last word on a worker ({"status": ...} or {"error": ...}), or None."""
        with self.changed:
            self.changed.wait_for(lambda: worker_id in self.events or self.dead, timeout)
            return self.events.pop(worker_id, None)

    def alive(self) -> bool:
        return not self.dead and self.process.poll() is None

    def stderr_tail(self, size: int = 2000) -> str:
        try:
            return (self.home / "stderr.txt").read_bytes()[-size:].decode("utf-8", errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        try:
            self.control.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.control.close()
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        self.reader.join(timeout=5)
        shutil.rmtree(self.home, ignore_errors=True)


_spawners: dict[tuple[str, str], Spawner] = {}
_spawners_lock = threading.Lock()


def spawner_for(runtime: Path, isolation: str, limits: Limits, wait: bool = True) -> Spawner:
    """The run's zygote, started on first use (and again if it died); ``wait=False`` returns while it boots."""
    key = (str(runtime), isolation)
    with _spawners_lock:
        spawner = _spawners.get(key)
        if spawner is None or not spawner.alive():
            if spawner is not None:
                spawner.close()
            spawner = _spawners[key] = Spawner(runtime, isolation, limits)
    if wait:
        spawner.wait_ready(limits.startup_seconds)
    return spawner


def close_spawners() -> None:
    """Stop every zygote (the end of a run); the next worker starts a new one."""
    with _spawners_lock:
        spawners = list(_spawners.values())
        _spawners.clear()
    for spawner in spawners:
        spawner.close()


atexit.register(close_spawners)


# ---------------------------------------------------------------- the worker

_worker_ids = itertools.count(1)


@dataclass
class Worker:
    """One submission's worker process, forked by the zygote; the grader talks to it over a socket."""

    runtime: Path
    submission_file: Path | None
    limits: Limits = field(default_factory=Limits)
    isolation: str = "bwrap"  # or "rlimits"

    @property
    def nested(self) -> bool:
        """Namespaces of its own inside the run's shared sandbox (else a sandbox of its own, or none)."""
        return self.isolation == "bwrap" and self.own_spawner is None

    def setup(self) -> dict:
        home = "/tmp" if self.isolation == "bwrap" else str(self.home)
        return {
            "isolated": self.nested,
            "home": home,
            "environment": {"HOME": home, "TMPDIR": home, "MPLCONFIGDIR": f"{home}/matplotlib"},
            "scratch_bytes": self.limits.scratch_bytes,
            "keep_under_tmp": [p for p in python_prefixes() if _under(p, "/tmp")],
            "limits": {"AS": self.limits.memory_bytes, "FSIZE": self.limits.file_bytes,
                       "NOFILE": self.limits.open_files, "CORE": 0, "NPROC": self.limits.processes,
                       "CPU": int(self.limits.startup_seconds + 2 * self.limits.cell_seconds
                                  + 20 * self.limits.call_seconds)},
        }

    def start(self) -> None:
        self.home = make_folder("worker")
        self.id = next(_worker_ids)
        self.pid = self.pidfd = None
        self.cgroups: list[Path] = []
        self.finished: dict | None = None
        self.spawned = False
        self.sock = self.spawner = self.own_spawner = None
        if not shares_a_zygote(self.isolation):
            self.own_spawner = Spawner(self.runtime, self.isolation, self.limits, self.submission_file)
            self.spawner = self.own_spawner
            self.spawner.wait_ready(self.limits.startup_seconds)
        else:
            self.spawner = spawner_for(self.runtime, self.isolation, self.limits)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        if hasattr(socket, "SO_PASSCRED"):
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock = ours
        self.fd = ours.fileno()
        self.stderr_path = self.home / "stderr.txt"
        files = [open(self.stderr_path, "wb")]
        if self.nested and self.submission_file is not None:
            files.append(open(self.submission_file, "rb"))
        try:
            self.spawner.spawn(self.id, self.setup(), [theirs.fileno()] + [f.fileno() for f in files])
            self.spawned = True
        finally:
            theirs.close()
            for handle in files:
                handle.close()
        try:
            self._await_ready(time.monotonic() + self.limits.startup_seconds)
        except WorkerError as error:
            if error.kind == "timeout":
                raise WorkerError("crashed", f"the worker did not start within {self.limits.startup_seconds:g} s") \
                    from None
            raise

    def _await_ready(self, deadline: float) -> None:
        """The worker's first message: its PID, from the kernel where it can say."""
        self._wait(self.fd, select.POLLIN, deadline)
        size = socket.CMSG_SPACE(12) if hasattr(socket, "SCM_CREDENTIALS") else 0
        data, ancillary, _, _ = self.sock.recvmsg(64, size)
        if not data:
            raise self._died()
        pid = int(data) if data.isdigit() else 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == getattr(socket, "SCM_CREDENTIALS", None):
                pid = struct.unpack("i", payload[:4])[0]
        self.pid = pid
        if hasattr(os, "pidfd_open"):
            try:
                self.pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                raise self._died() from None
            except OSError:  # a kernel without pidfds (< 5.3): the zygote kills it instead
                self.pidfd = None
        if os.geteuid() == 0 and sys.platform.startswith("linux"):
            self.cgroups = _cgroup_for(pid, self.limits)

    # ---------------------------------------------------------------- requests

    def request(self, message: dict, timeout: float) -> dict:
        """Send one request and wait at most ``timeout`` seconds for its answer."""
        from autograder import wire  # here, not at import: the grader starts its zygote before importing torch

        deadline = time.monotonic() + timeout
        try:
            self._write(wire.pack(message), deadline)
            length = wire.unpack_length(self._read(4, deadline))
            return wire.parse(self._read(length, deadline))
        except WorkerError as error:
            if error.kind == "timeout":
                raise WorkerError("timeout", f"{timeout:g} s") from None
            raise
        except wire.WireError as error:
            self.kill()
            raise WorkerError("protocol", f"the worker sent something unreadable ({error})") from None

    def _write(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            self._wait(self.fd, select.POLLOUT, deadline)
            try:
                written = os.write(self.fd, view)
            except (BrokenPipeError, ConnectionResetError):
                raise self._died() from None
            view = view[written:]

    def _read(self, count: int, deadline: float) -> bytes:
        chunks = []
        while count:
            self._wait(self.fd, select.POLLIN, deadline)
            try:
                chunk = os.read(self.fd, min(count, 1 << 20))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise self._died()
            chunks.append(chunk)
            count -= len(chunk)
        return b"".join(chunks)

    def _wait(self, fd: int, event: int, deadline: float) -> None:
        poller = select.poll()
        poller.register(fd, event | select.POLLHUP | select.POLLERR)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise WorkerError("timeout", "time limit exceeded")
            if poller.poll(min(remaining, 1.0) * 1000):
                return

    def _outcome(self, timeout: float) -> dict | None:
        if self.finished is None:
            self.finished = self.spawner.outcome(self.id, timeout)
        return self.finished

    def _died(self) -> WorkerError:
        # The connection closed: normally the worker ended; if it merely closed the
        # socket and lives on, it is killed.
        outcome = self._outcome(5.0)
        self.kill()
        outcome = outcome or self._outcome(5.0) or {}
        if "error" in outcome:
            return WorkerError("crashed", f"the worker could not start ({outcome['error']})")
        status = outcome.get("status")
        if status is None:
            return WorkerError("crashed", "the worker process disappeared")
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            if number == signal.SIGKILL:
                return WorkerError("crashed", "the worker process was killed (SIGKILL), "
                                              "usually by running out of memory or processes")
            return WorkerError("crashed", f"the worker process died from signal {signal.Signals(number).name}")
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
        if self.pid is None:  # before any submission code ran: our set-up failed
            return WorkerError("crashed", f"the worker could not start (status {code}): "
                                          f"{self.stderr_tail()[-500:]}")
        return WorkerError("crashed", f"the worker process exited (status {code}) while running the "
                                      "code: did it call exit() or os._exit()?")

    def stderr_tail(self, size: int = 2000) -> str:
        try:
            data = self.stderr_path.read_bytes()[-size:]
        except OSError:
            return ""
        return data.decode("utf-8", errors="replace")

    def kill(self) -> None:
        """Kill the worker and every process it started; return once they are gone."""
        if getattr(self, "spawner", None) is None or not self.spawned or self.finished is not None:
            return
        if self.pidfd is not None and self.nested:
            try:  # PID 1 of its namespace: the kernel kills everything in it
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
        elif self.pid is not None:
            try:  # its session; a sandbox of its own dies whole when closed
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.spawner.kill(self.id)  # its keeper, whose death takes the worker along
        self._outcome(10.0)

    def close(self) -> None:
        """Kill the worker and free what it held; safe after a failed start, and twice."""
        if getattr(self, "home", None) is None:
            return
        self.kill()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        if self.own_spawner is not None:
            self.own_spawner.close()
            self.own_spawner = None
        for group in self.cgroups:
            _remove_cgroup(group)
        self.cgroups = []
        shutil.rmtree(self.home, ignore_errors=True)
        self.home = self.spawner = None
