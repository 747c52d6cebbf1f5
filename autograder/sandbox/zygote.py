"""The fork server inside the sandbox: import torch once, then fork one worker per submission.

Starting Python and importing torch takes about two seconds, far longer than
grading a notebook, so the grader starts one *zygote* per run (inside
bubblewrap, see :mod:`autograder.sandbox.host`) and asks it for workers. For each
worker the zygote forks a small *keeper* process, which

* enters new user, mount, PID, IPC, network and UTS namespaces, so the worker
  sees no other worker: not their processes, files, sockets or shared memory;
* mounts a fresh, size-limited ``/tmp`` and ``/dev/shm``, a read-only
  ``/submission`` holding a copy of this one notebook, and an empty ``/proc``;
* forks the worker as PID 1 of the new PID namespace, so killing it kills every
  process the submission started, and waits to report how it ended.

The worker drops every capability, starts its own session, sets its resource
limits and only then answers the grader's requests (:func:`autograder.sandbox.worker.serve`)
on a socket the grader passed in. Where bubblewrap cannot start, the sandbox's
``user`` level runs this zygote as root, with no namespaces; each worker then
confines itself with Landlock where the kernel has it (:func:`confine`) and
becomes the dedicated unprivileged user (:func:`become_user`) before it runs a
line of the submission. The zygote, the keepers and the workers' setup
are trusted code; the submission's code runs only in the worker, after all of it.

Control messages are JSON over a SOCK_SEQPACKET socket, file descriptors
travelling with them (SCM_RIGHTS). Grader to zygote: ``spawn`` (id, setup; fds:
the worker's socket, its stderr file and, in the sandbox, the notebook copy) and
``kill`` (id). Zygote to grader: ``ready``, then per worker ``status`` (the raw
wait status of the worker, or of its keeper when that was killed) or ``error``.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import selectors
import signal
import socket
import stat
import sys
import traceback

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
LINUX_CAPABILITY_VERSION_3 = 0x20080522
MAX_CONTROL_MESSAGE = 1 << 20


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux); a no-op elsewhere."""
    if sys.platform.startswith("linux"):
        _check(_libc().prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0), "prctl(PDEATHSIG)")


def close_all_but(keep: set[int]) -> None:
    """Close every file descriptor not in keep (close_range, so it is cheap)."""
    top = max(resource.getrlimit(resource.RLIMIT_NOFILE)[0], max(keep) + 1, 1024)
    start = 0
    for end in [*sorted(keep), top]:
        if start < end:  # os.closerange(n, n) closes everything from n on (close_range(n, n - 1))
            os.closerange(start, end)
        start = end + 1


# ---------------------------------------------------------------- the keeper's namespaces

def _mount(libc, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None):
    encode = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data)),
           f"mount {target}")


def enter_namespaces(setup: dict, submission_fd: int | None) -> None:
    """New namespaces and private mounts for one worker (runs in the keeper, before the worker exists)."""
    libc = _libc()
    uid, gid = os.getuid(), os.getgid()
    _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWUTS),
           "unshare")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as handle:
            handle.write(text)
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    # The Python installation may live under /tmp (a checkout there): keep a handle on
    # it (in this mount namespace), so it can be mounted again on top of the fresh /tmp.
    keep = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in setup.get("keep_under_tmp", [])}
    private = MS_NOSUID | MS_NODEV
    _mount(libc, "tmpfs", "/tmp", "tmpfs", private, f"size={setup['scratch_bytes']},mode=1777")
    for path, fd in keep.items():
        os.makedirs(path, exist_ok=True)
        _mount(libc, f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)  # read-only, as its source
        os.close(fd)
    _mount(libc, "tmpfs", "/dev/shm", "tmpfs", private, f"size={setup['scratch_bytes'] // 4},mode=1777")
    if submission_fd is not None:
        size = os.fstat(submission_fd).st_size
        _mount(libc, "tmpfs", "/submission", "tmpfs", private, f"size={size + (1 << 20)},mode=0755")
        with open("/submission/submission.ipynb", "wb") as copy, os.fdopen(submission_fd, "rb") as original:
            while chunk := original.read(1 << 20):
                copy.write(chunk)
        _mount(libc, None, "/submission", None, MS_REMOUNT | MS_RDONLY | private)
    # Hide the zygote's /proc: it would list the other workers.
    _mount(libc, "tmpfs", "/proc", "tmpfs", MS_RDONLY | MS_NOEXEC | private, "size=4k,mode=0555")


def drop_capabilities() -> None:
    """No capabilities left in the worker's own user namespace (it had all of them)."""
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    libc = _libc()
    for capability in range(64):  # the bounding set too (EINVAL past the last one the kernel knows)
        libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0)
    _check(libc.capset(ctypes.byref(Header(LINUX_CAPABILITY_VERSION_3, 0)), (Data * 2)()), "capset")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    # Not dumpable: even a process that could see it may not read its memory.
    _check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(DUMPABLE)")


def apply_limits(limits: dict, for_another_user: bool = False) -> None:
    """Hard limits, so the submission cannot raise them again.

    RLIMIT_NPROC counts the processes of the real user; root is exempt, so it is
    left alone there unless the worker is about to become another user.
    """
    for name, value in limits.items():
        limit = getattr(resource, f"RLIMIT_{name}", None)
        if limit is not None and not (name == "NPROC" and os.getuid() == 0 and not for_another_user):
            resource.setrlimit(limit, (int(value), int(value)))


# ---------------------------------------------------------------- the "user" level: Landlock, then another user

# Landlock (Linux 5.13+, Documentation/userspace-api/landlock.rst): an unprivileged process
# restricts what it, and every process it starts, may do to files (and, from ABI 4, TCP).
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION, LANDLOCK_RULE_PATH_BENEATH = 1, 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_ABI1 = (1 << 13) - 1  # execute .. make_sym: every right of ABI 1
FS_REFER, FS_TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _syscall(*args) -> int:
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    return libc.syscall(*args)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where there is none (or a seccomp filter forbids it)."""
    if not sys.platform.startswith("linux"):
        return 0
    version = _syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                       ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    return max(int(version), 0)


def confine(read: list[str], write: list[str], devices: list[str]) -> int:
    """Landlock this process and its children: read ``read``, read and write ``write``, use ``devices``.

    Everything else on the file system is out of reach (even what file permissions
    allow), as are TCP connections and bindings from ABI 4 on, and abstract Unix
    sockets and signals to processes outside the sandbox from ABI 6 on. Returns the
    ABI used. Needs no privilege; the caller must have set no_new_privs.
    """
    abi = landlock_abi()
    if abi < 1:
        raise OSError("Landlock is not available on this kernel")
    handled = FS_ABI1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)
    attr = _RulesetAttr(handled, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    ruleset = _syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
                       ctypes.c_uint32(0))
    if ruleset < 0:
        _check(-1, "landlock_create_ruleset")
    file_rights = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | (FS_TRUNCATE if abi >= 3 else 0)
    reading = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
    try:
        rules = [(p, reading) for p in read] + [(p, handled) for p in write] + \
                [(p, FS_READ_FILE | FS_WRITE_FILE) for p in devices]
        for path, rights in rules:
            try:
                target = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                if not stat.S_ISDIR(os.fstat(target).st_mode):
                    rights &= file_rights  # a file takes only file rights
                rule = _PathBeneath(rights, target)
                _check(0 if _syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH,
                                     ctypes.byref(rule), ctypes.c_uint32(0)) == 0 else -1, f"landlock rule {path}")
            finally:
                os.close(target)
        _check(0 if _syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)) == 0 else -1,
               "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


def become_user(user: dict, landlock: dict | None) -> None:
    """Leave root for the sandbox's unprivileged user, for good (Landlocked first, where asked)."""
    libc = _libc()
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    if landlock is not None:
        confine(landlock["read"], landlock["write"], landlock["devices"])
    uid, gid = int(user["uid"]), int(user["gid"])
    if uid == 0 or gid == 0:
        raise RuntimeError("the sandbox user must not be root")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # a change of every user id from root clears every capability
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise RuntimeError("the worker could take root back")
    die_with_parent()  # a change of user clears the parent-death signal
    # Not dumpable: another process of this user may not read its memory.
    _check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(DUMPABLE)")


# ---------------------------------------------------------------- keeper and worker

def run_worker(setup: dict, sock: int, stderr: int) -> None:
    """The worker: set itself up, say it is ready, then serve the grader. Never returns."""
    code = 0
    try:
        die_with_parent()  # with its keeper
        os.setsid()  # its own process group: kill(0, ...) reaches only the submission
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(stderr, 2)
        close_all_but({0, 1, 2, sock})
        if setup["isolated"]:
            drop_capabilities()
        os.chdir(setup["home"])
        os.environ.update(setup["environment"])
        apply_limits(setup["limits"], for_another_user=bool(setup.get("user")))
        if setup.get("user"):
            become_user(setup["user"], setup.get("landlock"))
        # The grader takes this process's PID from the kernel (SCM_CREDENTIALS) where it
        # can; the number written here serves platforms without that.
        os.write(sock, str(os.getpid()).encode())
        from autograder.sandbox.worker import serve

        serve(sock)
    except BaseException:  # noqa: BLE001 - trusted set-up failed: say why on stderr
        traceback.print_exc()
        code = 70
    finally:
        os._exit(code)


def run_keeper(setup: dict, fds: list[int], status_pipe: int, zygote: int) -> None:
    """Between zygote and worker: namespaces, then the worker, then its wait status. Never returns."""
    try:
        die_with_parent()
        if os.getppid() != zygote:  # the zygote died before the line above
            os._exit(1)
        sock, stderr = fds[0], fds[1]
        os.dup2(stderr, 2)  # a failure here belongs in this worker's stderr file
        submission = fds[2] if len(fds) > 2 else None
        if setup["isolated"]:
            enter_namespaces(setup, submission)
        elif submission is not None:
            os.close(submission)
        worker = os.fork()
        if worker == 0:
            os.close(status_pipe)
            run_worker(setup, sock, stderr)
        os.close(sock)
        os.close(stderr)
        _, status = os.waitpid(worker, 0)
        os.write(status_pipe, str(status).encode())
        os._exit(0)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    finally:
        os._exit(71)


# ---------------------------------------------------------------- the zygote

class Zygote:
    def __init__(self, control_fd: int):
        self.control = socket.socket(fileno=control_fd)
        self.selector = selectors.DefaultSelector()
        self.keepers: dict[int, tuple[int, int]] = {}  # status pipe -> (worker id, keeper pid)

    def send(self, message: dict) -> None:
        try:
            self.control.send(json.dumps(message).encode())
        except OSError:
            pass  # the grader is gone; we are about to be killed too

    def spawn(self, worker_id: int, setup: dict, fds: list[int]) -> None:
        if len(fds) < 2:
            self.send({"id": worker_id, "error": "spawn needs a socket and a stderr file"})
            return
        status_read, status_write = os.pipe()
        zygote = os.getpid()
        try:
            keeper = os.fork()
        except OSError as error:
            for fd in (*fds, status_read, status_write):
                os.close(fd)
            self.send({"id": worker_id, "error": f"fork failed: {error}"})
            return
        if keeper == 0:
            try:  # the keeper must never return into this loop
                self.control.detach()
                self.selector.close()
                close_all_but({0, 1, 2, status_write, *fds})
                run_keeper(setup, fds, status_write, zygote)
            finally:
                os._exit(72)
        os.close(status_write)
        for fd in fds:
            os.close(fd)
        self.keepers[status_read] = (worker_id, keeper)
        self.selector.register(status_read, selectors.EVENT_READ)

    def kill(self, worker_id: int) -> None:
        for keeper_id, keeper in self.keepers.values():
            if keeper_id == worker_id:
                try:
                    os.kill(keeper, signal.SIGKILL)  # its worker follows (parent-death signal)
                except ProcessLookupError:
                    pass

    def finish(self, status_read: int) -> None:
        worker_id, keeper = self.keepers.pop(status_read)
        self.selector.unregister(status_read)
        data = b""
        while chunk := os.read(status_read, 64):
            data += chunk
        os.close(status_read)
        _, keeper_status = os.waitpid(keeper, 0)
        self.send({"id": worker_id, "status": int(data) if data.strip().isdigit() else keeper_status})

    def serve(self) -> None:
        self.selector.register(self.control, selectors.EVENT_READ)
        self.send({"ready": True})
        while True:
            for key, _ in self.selector.select():
                if key.fileobj is not self.control:
                    self.finish(key.fd)
                    continue
                message, fds, _, _ = socket.recv_fds(self.control, MAX_CONTROL_MESSAGE, 8)
                if not message:  # the grader closed the socket: stop every worker
                    for _, keeper in self.keepers.values():
                        os.kill(keeper, signal.SIGKILL)
                    return
                request = json.loads(message)
                if request.get("op") == "spawn":
                    self.spawn(request["id"], request["setup"], fds)
                elif request.get("op") == "kill":
                    self.kill(request["id"])
