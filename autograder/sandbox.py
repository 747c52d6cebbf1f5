"""Starting and talking to sandboxed worker processes.

Isolation, strongest available first (what a report records under "sandbox"):

* ``bwrap``: bubblewrap (Debian's ``bubblewrap`` package), the unprivileged
  sandbox Flatpak is built on. The worker gets new user, PID, network, IPC and
  UTS namespaces, a read-only view of the Python installation and of the
  public code only (the book's library and the public part of this package,
  staged into a fresh folder: never ``solutions/``, the hidden checks or other
  submissions), a size-limited private ``/tmp``, an empty environment, no
  capabilities, and dies with the grader.
* ``rlimits``: where bubblewrap is missing (macOS, Windows/WSL without it) the
  worker is still a separate process with resource limits, but it can read
  what the grading user can read and reach the network. Use it only for work
  you trust; the grader refuses it unless asked (``--unsafe-no-sandbox``).

Limits everywhere: wall-clock per request (enforced by the grader, which kills
the worker), address space (RLIMIT_AS), file size
(RLIMIT_FSIZE), open files, no core dumps. The process-count limit uses a
``pids`` cgroup when the grader may create one (root on cgroup v1/v2), and
otherwise RLIMIT_NPROC set by the worker on itself inside its user namespace.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from autograder import wire

PACKAGE_DIR = Path(__file__).resolve().parent
TMP_PREFIX = "autograder-"


@dataclass(frozen=True)
class Limits:
    call_seconds: float = 10.0  # one check (and running the notebook's cells) -- the CLI's --timeout
    startup_seconds: float = 30.0  # extra, once per worker: starting Python and importing torch
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


# ---------------------------------------------------------------- temp folders

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_folders(base: Path | None = None) -> int:
    """Delete folders left by graders that were killed; returns how many."""
    base = Path(base or tempfile.gettempdir())
    removed = 0
    for folder in base.glob(f"{TMP_PREFIX}*"):
        parts = folder.name.split("-")
        if len(parts) >= 3 and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
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

def _cgroup_dirs(name: str, limits: Limits) -> list[Path]:
    """Create per-worker pids (and memory) cgroups when allowed; [] otherwise."""
    created = []
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    try:
        if v2.exists():
            group = Path("/sys/fs/cgroup") / f"autograder-{name}"
            group.mkdir()
            created.append(group)
            (group / "pids.max").write_text(str(limits.processes))
        else:
            pids = Path("/sys/fs/cgroup/pids") / f"autograder-{name}"
            pids.mkdir()
            created.append(pids)
            (pids / "pids.max").write_text(str(limits.processes))
    except OSError:
        for group in created:
            _remove_cgroup(group)
        return []
    return created


def _remove_cgroup(group: Path) -> None:
    for _ in range(50):
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)  # its last processes are still exiting


# ---------------------------------------------------------------- the worker

@dataclass
class Worker:
    runtime: Path
    submission_file: Path | None
    limits: Limits = field(default_factory=Limits)
    isolation: str = "bwrap"  # or "rlimits"
    process: subprocess.Popen | None = None

    def command(self, fd_in: int, fd_out: int, home: Path) -> list[str]:
        python = sys.executable
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONPATH": "/opt/autograder-runtime" if self.isolation == "bwrap" else str(self.runtime),
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1",  # one core per worker: --jobs decides the parallelism
            "MKL_NUM_THREADS": "1",
            "MPLBACKEND": "Agg",
            "MPLCONFIGDIR": "/tmp/matplotlib",
            "AUTOGRADER_NPROC": str(self.limits.processes),
            # The worker sets these on itself before any submission code runs (hard limits,
            # so they cannot be raised again); portable, unlike the prlimit tool.
            "AUTOGRADER_RLIMITS": json.dumps({
                "AS": self.limits.memory_bytes, "FSIZE": self.limits.file_bytes, "NOFILE": self.limits.open_files,
                "CORE": 0, "CPU": int(self.limits.startup_seconds + 20 * self.limits.call_seconds)}),
        }
        worker = [python, "-s", "-m", "autograder.worker", str(fd_in), str(fd_out)]
        if self.isolation != "bwrap":
            env["HOME"] = str(home)
            env["MPLCONFIGDIR"] = str(home / "matplotlib")
            return ["env", "-i"] + [f"{k}={v}" for k, v in env.items()] + worker
        command = [bwrap_path(), "--unshare-all", "--die-with-parent", "--new-session",
                   "--cap-drop", "ALL", "--uid", "65534", "--gid", "65534", "--hostname", "sandbox",
                   "--clearenv", "--proc", "/proc"]
        # Only the device nodes Python needs; a writable /dev could be filled.
        for device in ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"):
            command += ["--dev-bind", device, device]
        for name, value in env.items():
            command += ["--setenv", name, value]
        for path in ("/usr", "/bin", "/lib", "/lib64", "/lib32", "/etc/ld.so.cache",
                     "/etc/alternatives", "/sys/devices/system/cpu"):
            command += ["--ro-bind-try", path, path]
        for prefix in sorted({sys.base_prefix, sys.prefix, os.path.dirname(os.path.dirname(os.path.realpath(python)))}):
            command += ["--ro-bind", prefix, prefix]
        command += ["--ro-bind", str(self.runtime), "/opt/autograder-runtime"]
        if self.submission_file is not None:
            command += ["--ro-bind", str(self.submission_file), "/submission/submission.ipynb"]
        # The root is a tmpfs that bwrap builds the mount points in; once they exist it
        # must be read-only, or a submission could fill it (it has no size limit).
        command += ["--size", str(self.limits.scratch_bytes), "--tmpfs", "/tmp",
                    "--size", str(self.limits.scratch_bytes // 4), "--tmpfs", "/dev/shm",
                    "--remount-ro", "/", "--chdir", "/tmp", "--"]
        return command + worker

    def start(self) -> None:
        home = make_folder("worker")
        self.home = home
        child_in, self.to_worker = os.pipe()
        self.from_worker, child_out = os.pipe()
        name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.cgroups = _cgroup_dirs(name, self.limits) if os.geteuid() == 0 else []
        # A shell joins the cgroups before exec-ing the sandbox, so every process the
        # submission starts is counted; it also ignores SIGXFSZ, so writing past the
        # file-size limit fails with an error instead of killing the worker.
        join = "".join(f'echo $$ > "{g}/cgroup.procs" && ' for g in self.cgroups)
        shell = ["/bin/sh", "-c", f'{join}trap "" XFSZ; exec "$@"', "sh"]
        self.stderr_path = home / "stderr.txt"
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                shell + self.command(child_in, child_out, home),
                pass_fds=(child_in, child_out), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=stderr, start_new_session=True, cwd=home,
            )
        os.close(child_in)
        os.close(child_out)
        self.started = time.monotonic()

    # ---------------------------------------------------------------- requests

    def request(self, message: dict, timeout: float) -> dict:
        """Send one request and wait at most ``timeout`` seconds for its answer."""
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
            self._wait(self.to_worker, select.POLLOUT, deadline)
            try:
                written = os.write(self.to_worker, view)
            except BrokenPipeError:
                raise self._died() from None
            view = view[written:]

    def _read(self, count: int, deadline: float) -> bytes:
        chunks = []
        while count:
            self._wait(self.from_worker, select.POLLIN, deadline)
            chunk = os.read(self.from_worker, min(count, 1 << 20))
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

    def _died(self) -> WorkerError:
        code = self.process.wait() if self.process else None
        self.kill()
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            if -code == signal.SIGKILL:
                return WorkerError("crashed", "the worker process was killed (SIGKILL), "
                                              "usually by running out of memory or processes")
            return WorkerError("crashed", f"the worker process died from signal {name}")
        return WorkerError("crashed", f"the worker process exited (status {code}) while running the "
                                      "code: did it call exit() or os._exit()?")

    def stderr_tail(self, size: int = 2000) -> str:
        try:
            data = self.stderr_path.read_bytes()[-size:]
        except OSError:
            return ""
        return data.decode("utf-8", errors="replace")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()

    def close(self) -> None:
        self.kill()
        for fd in (getattr(self, "to_worker", None), getattr(self, "from_worker", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.to_worker = self.from_worker = None
        for group in getattr(self, "cgroups", []):
            _remove_cgroup(group)
        shutil.rmtree(getattr(self, "home", ""), ignore_errors=True) if getattr(self, "home", None) else None
