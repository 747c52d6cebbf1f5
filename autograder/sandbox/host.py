"""Starting and talking to sandboxed worker processes.

Workers are forked by a *zygote* (:mod:`autograder.sandbox.zygote`) that imported
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
* ``user``: for containers that forbid the user namespaces bubblewrap needs
  (Docker's default profile does), where the grader runs as root (Gradescope).
  The zygote stays root (trusted code); each worker, before it runs a line of
  the submission, confines itself with Landlock where the kernel has it (the
  same file view as the sandbox above: the system's libraries, the Python
  installation, the public code, nothing else; writes only to a scratch folder
  of its own; no TCP) and then becomes a dedicated unprivileged user
  (``autograder-sandbox``, which the Gradescope ``setup.sh`` creates), with no
  capabilities, not dumpable. File permissions keep that user away from the
  grader, the hidden checks and the reports even without Landlock, and the
  grader checks that, as that user, before it grades (:func:`user_problem`).
  Its scratch folder is on disk, so the grader stops a worker that writes more
  than a tmpfs would hold. All its workers are one user, so a run grades one
  submission at a time, and every process of that user dies with each worker.
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
import pwd
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


PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the autograder package
TMP_PREFIX = "autograder-"
SANDBOX_USER = "autograder-sandbox"  # the "user" level's account; AUTOGRADER_SANDBOX_USER names another
# What a worker may read besides the Python installation and the public code (as bubblewrap shows it).
SYSTEM_PATHS = ("/usr", "/bin", "/lib", "/lib64", "/lib32", "/etc/ld.so.cache", "/etc/alternatives",
                "/sys/devices/system/cpu")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
MAX_SCRATCH_ENTRIES = 10_000  # files and folders in a "user" worker's scratch folder


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
    nested = (f"import sys; sys.path.insert(0, {str(PACKAGE_DIR.parent)!r}); from autograder.sandbox.zygote import "
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


# ---------------------------------------------------------------- the "user" level

@dataclass(frozen=True)
class SandboxUser:
    name: str
    uid: int
    gid: int


def sandbox_user() -> SandboxUser | None:
    name = os.environ.get("AUTOGRADER_SANDBOX_USER", SANDBOX_USER)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return SandboxUser(name, entry.pw_uid, entry.pw_gid)


def landlock_abi() -> int:
    """The Landlock ABI the "user" level confines workers with (0: none; AUTOGRADER_NO_LANDLOCK=1 forces 0)."""
    from autograder.sandbox.zygote import landlock_abi as kernel_abi

    return 0 if os.environ.get("AUTOGRADER_NO_LANDLOCK") == "1" else kernel_abi()


# Run as the sandbox user, without Landlock: what do file permissions alone let it reach?
# Arguments: "private:PATH" (neither read nor write) or "readonly:PATH" (no write).
_REACH_PROBE = r"""
import json, os, sys
reached = []
for argument in sys.argv[1:]:
    kind, path = argument.split(":", 1)
    try:
        if kind == "private":
            if os.path.isdir(path):
                os.listdir(path)
            else:
                open(path, "rb").close()
            reached.append(["read", path])
    except OSError:
        pass
    try:
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        probe = os.path.join(folder, ".autograder-write-probe")
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
        reached.append(["write", path])
    except OSError:
        pass
print(json.dumps(reached))
"""


def as_user(user: SandboxUser, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(argv, user=user.uid, group=user.gid, extra_groups=[], env={"PATH": "/usr/bin:/bin"},
                          cwd="/", stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def user_problem(protected: list[Path]) -> str | None:
    """Why the "user" level cannot grade safely here, or None when it can.

    It needs Linux, root (to start workers as another user), the sandbox user, a
    Python installation that user can run but not change (the grader imports
    from it), and file permissions that keep the ``protected`` paths (the grader,
    the hidden checks, the reports) out of that user's reach, tried as that
    user; Landlock is not counted on for them.
    """
    if not sys.platform.startswith("linux"):
        return "it needs Linux"
    if os.geteuid() != 0:
        return "the grader must run as root to start each worker as the sandbox user"
    user = sandbox_user()
    if user is None:
        name = os.environ.get("AUTOGRADER_SANDBOX_USER", SANDBOX_USER)
        return (f"there is no user {name!r} (create it: useradd --system --user-group --no-create-home "
                f"--shell /usr/sbin/nologin {name})")
    if user.uid == 0 or user.gid == 0:
        return f"the sandbox user {user.name!r} is root"
    import sysconfig

    installation = {*python_prefixes(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    paths = [f"private:{p}" for p in protected if os.path.lexists(p)]
    paths += [f"readonly:{p}" for p in sorted(installation) if os.path.isdir(p)]
    try:
        probe = as_user(user, [sys.executable, "-S", "-c", _REACH_PROBE, *paths])
    except (OSError, subprocess.SubprocessError) as error:
        return f"Python could not start as {user.name!r} ({error})"
    if probe.returncode != 0:
        return (f"Python ({sys.executable}) could not start as {user.name!r}, so that user cannot read the "
                f"Python installation: {probe.stderr.strip()[-300:]}")
    reached = json.loads(probe.stdout)
    if reached:
        how, path = reached[0]
        fix = "chmod go-rwx" if how == "read" else "chmod -R go-w"
        return f"the sandbox user {user.name!r} can {how} {path} ({fix} it)"
    return None


def cgroups_work() -> bool:
    """May this process make a pids cgroup for each worker (root, cgroup v1 or v2 writable)?"""
    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        return False
    groups = _cgroup_for(os.getpid(), Limits(), probe=True)
    for group in groups:
        _remove_cgroup(group)
    return bool(groups)


def describe(isolation: str) -> dict:
    """What isolated the workers, for the reports (extra_data) and the Gradescope output."""
    info: dict = {"level": isolation}
    if isolation == "bwrap":
        info["summary"] = "bubblewrap: namespaces of its own, a read-only view of the public code only, no network"
    elif isolation == "user":
        user, abi = sandbox_user(), landlock_abi()
        info.update(user=user.name if user else None, landlock_abi=abi, pids_cgroup=cgroups_work())
        confined = (f"Landlock (ABI {abi}): reads only the public code and the system's libraries, writes only "
                    "its scratch folder" + (", no TCP" if abi >= 4 else "")) if abi else \
            "no Landlock here (the kernel or a seccomp filter lacks it): file permissions alone keep the grader, " \
            "the checks and the results out of its reach"
        info["summary"] = f"an unprivileged user ({info['user']}), no capabilities; {confined}"
    else:
        info["summary"] = "resource limits only, as the grading user: for trusted code"
    return info


def _scratch_overflows(folder: Path, limit: int) -> bool:
    """More than ``limit`` bytes (or MAX_SCRATCH_ENTRIES entries) under folder?"""
    total, entries, stack = 0, 0, [str(folder)]
    while stack:
        try:
            with os.scandir(stack.pop()) as listing:
                for entry in listing:
                    entries += 1
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += info.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    if total > limit or entries > MAX_SCRATCH_ENTRIES:
                        return True
        except OSError:
            continue
    return False


def kill_user_processes(user: SandboxUser) -> None:
    """SIGKILL every process of the sandbox user (kill(-1) sent as that user: it reaches nothing else)."""
    try:
        as_user(user, [sys.executable, "-S", "-c", "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\n"
                                                   "except ProcessLookupError:\n    pass"])
    except (OSError, subprocess.SubprocessError):
        pass


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
    # Public code: readable by the "user" level's worker, writable by nobody but the grader.
    for folder, _, files in os.walk(root):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
    return root


# ---------------------------------------------------------------- cgroups

def _cgroup_for(pid: int, limits: Limits, probe: bool = False) -> list[Path]:
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
        if not probe:
            (group / "cgroup.procs").write_text(str(pid))
    except OSError:
        _remove_cgroup(group)
        return []
    return [group]


def _kill_cgroup(group: Path) -> None:
    """SIGKILL every process in the group: those that left the worker's session and process group too."""
    for _ in range(50):
        try:
            pids = [int(line) for line in (group / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def _remove_cgroup(group: Path) -> None:
    _kill_cgroup(group)
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
    """The grader's end of one zygote (see :mod:`autograder.sandbox.zygote`): starts it, asks it for workers.

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
        worker = [sys.executable, "-s", "-m", "autograder.sandbox.worker", str(control_fd)]
        env = self.environment()
        if self.isolation != "bwrap":
            return ["env", "-i"] + [f"{k}={v}" for k, v in env.items()] + worker
        command = [bwrap_path(), "--unshare-all", "--die-with-parent", "--new-session",
                   "--cap-drop", "ALL", "--uid", "65534", "--gid", "65534", "--hostname", "sandbox",
                   "--clearenv", "--proc", "/proc"]
        # Only the device nodes Python needs; a writable /dev could be filled.
        for device in DEVICES:
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
        for path in SYSTEM_PATHS:
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
    isolation: str = "bwrap"  # or "user", "rlimits"

    @property
    def nested(self) -> bool:
        """Namespaces of its own inside the run's shared sandbox (else a sandbox of its own, or none)."""
        return self.isolation == "bwrap" and self.own_spawner is None

    def setup(self) -> dict:
        home = "/tmp" if self.isolation == "bwrap" else str(self.scratch or self.home)
        setup = {
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
        if self.isolation == "user":
            setup["user"] = {"uid": self.user.uid, "gid": self.user.gid}
            # What bubblewrap would show it, through Landlock: the same system paths, Python and public code.
            setup["landlock"] = {"read": [*SYSTEM_PATHS, *python_prefixes(), str(self.runtime)],
                                 "write": [home], "devices": list(DEVICES)} if landlock_abi() else None
        return setup

    def start(self) -> None:
        self.home = make_folder("worker")
        self.scratch: Path | None = None
        self.user: SandboxUser | None = None
        if self.isolation == "user":
            self.user = sandbox_user()
            if self.user is None:
                raise WorkerError("crashed", "the sandbox user does not exist")
            # Its HOME and TMPDIR, the one folder it may write (the grader's files stay in self.home).
            self.scratch = make_folder("scratch")
            os.chown(self.scratch, self.user.uid, self.user.gid)
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
        from autograder.sandbox import wire  # here, not at import: the grader starts its zygote before importing torch

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
        step = 0.1 if self.scratch is not None else 1.0  # how often a scratch folder on disk is measured
        while True:
            self._check_scratch()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise WorkerError("timeout", "time limit exceeded")
            if poller.poll(min(remaining, step) * 1000):
                self._check_scratch()
                return

    def _check_scratch(self) -> None:
        """A scratch folder on disk has no size of its own: stop a worker that fills it past a tmpfs's size."""
        if self.scratch is not None and _scratch_overflows(self.scratch, self.limits.scratch_bytes):
            self.kill()
            raise WorkerError("crashed", f"the worker was stopped: it wrote more than "
                                         f"{self.limits.scratch_bytes >> 20} MB of files")

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
        self._kill_strays()

    def _kill_strays(self) -> None:
        """Processes the submission started that left the worker's process group (daemons)."""
        for group in self.cgroups:
            _kill_cgroup(group)
        if self.user is not None:  # one submission at a time: every process of this user is the worker's
            kill_user_processes(self.user)

    def close(self) -> None:
        """Kill the worker and free what it held; safe after a failed start, and twice."""
        if getattr(self, "home", None) is None:
            return
        self.kill()
        self._kill_strays()  # also when the worker itself had ended
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
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
        self.home = self.spawner = self.scratch = None
