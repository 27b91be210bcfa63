"""Locking the keep process down before any guest code runs.

The steps, in the order `keep/process.py` takes them:

1. `isolate()`: new user, mount, network, IPC, UTS and PID namespaces. Entering
   a PID namespace takes a fork: the child is PID 1 of the new namespace and
   becomes the keep; the parent stays behind only to wait for it and pass its
   exit status on (it is locked down too). Both die with their parent
   (PR_SET_PDEATHSIG), so a keep never outlives its host process.
2. `empty_root()`: the root becomes an empty, read-only tmpfs (pivot_root), so
   nothing of the host's file system is even named in the keep.
3. The module is compiled and instantiated (this needs no file system).
4. `seal()`: resource limits (address space for data, CPU time, no new files),
   all capabilities dropped, `no_new_privs`, Landlock with every file-system
   access (and TCP, and abstract sockets and signals where the kernel's ABI
   knows them) handled and none allowed, and a seccomp allow-list that leaves
   memory management, futexes, clocks, getrandom, signals for wasmtime's trap
   handling, threads for the keep's ticker, and read/write on the sallyport fd.
   Anything else kills the process (SIGSYS).

Each step that fails raises :class:`LockdownError`: the keep never runs a
workload half locked down.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import resource
import signal
import struct
from typing import NoReturn

# Imported here, not where it is used: importing reads files (and runs
# ldconfig), which the keep can no longer do once it is locked down.
import pyseccomp as seccomp

from wasmkeep.errors import KeepError

__all__ = ["LockdownError", "empty_root", "isolate", "seal"]

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_THREAD = 0x00010000

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

# x86_64 syscall numbers for what libc does not wrap (same on aarch64 for Landlock).
_SYS_PIVOT_ROOT = 155
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1

# Landlock access rights per ABI version (linux/landlock.h).
_LANDLOCK_FS_ACCESS = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_LANDLOCK_NET_ALL = 0b11  # bind and connect TCP, ABI 4+
_LANDLOCK_SCOPE_ALL = 0b11  # abstract unix sockets and signals, ABI 6+


class LockdownError(KeepError):
    """A lockdown step failed; the keep stops rather than run less isolated."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"keep lockdown failed at {step}: {detail}")


def _check(result: int, step: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise LockdownError(step, f"{errno.errorcode.get(code, code)} ({os.strerror(code)})")
    return result


def _die_with_parent(expected_parent: int | None) -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "PR_SET_PDEATHSIG")
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)  # the parent died before the prctl took effect


def isolate() -> None:
    """Enter fresh namespaces; returns in the new PID namespace's first process.

    Must run while the process has a single thread (user namespaces require it).
    """
    _die_with_parent(os.getppid())
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID
    _check(_libc.unshare(flags), "unshare (user, mount, net, ipc, uts, pid namespaces)")
    # Be root inside the user namespace (for mounts), the caller's ids outside.
    try:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {uid} 1")
        _write("/proc/self/gid_map", f"0 {gid} 1")
    except OSError as error:
        raise LockdownError("uid/gid maps", str(error)) from None
    child = os.fork()
    if child == 0:
        # The launcher is outside this PID namespace, so getppid() says 0 and
        # cannot confirm it is still alive; the host ends the keep's whole
        # process group in any case (host/process_keep.py).
        _die_with_parent(None)
        return
    _wait_and_exit(child)


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _wait_and_exit(child: int) -> NoReturn:
    """The launcher's whole life after the fork: pass the keep's status on."""
    for fd in range(3, 1024):  # the keep alone holds sallyport
        with contextlib.suppress(OSError):
            os.close(fd)
    try:
        seal(None, memory_bytes=64 << 20, cpu_seconds=None, allow_threads=False)
    except LockdownError:
        os.kill(child, signal.SIGKILL)
        os._exit(1)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except ChildProcessError:
            os._exit(1)
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def empty_root() -> None:
    """Replace the file system with an empty read-only tmpfs."""
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making mounts private")
    new_root = b"/tmp"
    _check(
        _libc.mount(
            b"keep", new_root, b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, b"size=64k,mode=0555"
        ),
        "mounting the keep's tmpfs",
    )
    old = b"/tmp/.old"
    _check(_libc.mkdir(old, 0o700), "creating the old-root mount point")
    _check(_libc.syscall(_SYS_PIVOT_ROOT, new_root, old), "pivot_root")
    _check(_libc.chdir(b"/"), "chdir to the new root")
    _check(_libc.umount2(b"/.old", MNT_DETACH), "detaching the host's file system")
    _check(_libc.rmdir(b"/.old"), "removing the old-root mount point")
    _check(
        _libc.mount(
            None,
            b"/",
            None,
            MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
            None,
        ),
        "making the root read-only",
    )


def seal(
    sallyport_fd: int | None,
    *,
    memory_bytes: int,
    cpu_seconds: int | None,
    allow_threads: bool = True,
) -> None:
    """Limits, no capabilities, no_new_privs, Landlock, then seccomp (last: it
    forbids the very calls the steps before it make)."""
    _limit_resources(memory_bytes, cpu_seconds)
    _drop_capabilities()
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _landlock()
    _seccomp(sallyport_fd, allow_threads)


def _limit_resources(memory_bytes: int, cpu_seconds: int | None) -> None:
    try:
        # RLIMIT_DATA counts the memory the keep can write (heap, guest memory
        # once committed), not the guard regions wasmtime only reserves.
        resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))
        if cpu_seconds is not None:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    except (OSError, ValueError) as error:
        raise LockdownError("resource limits", str(error)) from None


def _drop_capabilities() -> None:
    # capset(2) with version 3 and two empty 32-bit data words.
    header = struct.pack("<Ii", 0x20080522, 0)
    data = bytes(24)
    _check(_libc.capset(header, data), "dropping capabilities")


def _landlock() -> None:
    abi = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 0:
        raise LockdownError("Landlock", f"not available ({os.strerror(ctypes.get_errno())})")
    fs = _LANDLOCK_FS_ACCESS[max(version for version in _LANDLOCK_FS_ACCESS if version <= abi)]
    # struct landlock_ruleset_attr: handled_access_fs u64, handled_access_net u64, scoped u64.
    attr = struct.pack(
        "<QQQ", fs, _LANDLOCK_NET_ALL if abi >= 4 else 0, _LANDLOCK_SCOPE_ALL if abi >= 6 else 0
    )
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = _check(
        _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, attr[:size], size, 0), "Landlock ruleset"
    )
    try:
        # No rules: every handled access is denied.
        _check(_libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "Landlock restrict_self")
    finally:
        os.close(ruleset)


# What the keep runtime needs once locked down, with why (checked with strace
# over the test suite's workloads; anything else kills the keep).
_ALWAYS = (
    # memory: Python's allocator, wasmtime's linear memory and code
    "brk", "mmap", "munmap", "mprotect", "mremap", "madvise",
    # threads waiting for each other; poll_oneoff's sleep; sched_yield
    "futex", "clock_nanosleep", "sched_yield",
    # clocks (the vDSO answers most; these are its fallbacks) and randomness
    "clock_gettime", "clock_getres", "getrandom",
    # signals: wasmtime turns traps into SIGSEGV/SIGILL/SIGFPE and returns
    "rt_sigreturn", "rt_sigprocmask", "rt_sigaction", "sigaltstack",
    # glibc and Python ask who they are
    "getpid", "gettid",
    # the end, and closing what the runtime opened before lockdown
    "exit", "exit_group", "close",
)  # fmt: skip
# Starting the keep's ticker thread (clone itself is allowed only for threads).
_THREADS = ("set_robust_list", "rseq", "sched_getaffinity")
# The launcher's one job.
_LAUNCHER = ("wait4",)


def _seccomp(sallyport_fd: int | None, allow_threads: bool) -> None:
    try:
        rules = seccomp.SyscallFilter(seccomp.KILL_PROCESS)
        for name in _ALWAYS:
            rules.add_rule(seccomp.ALLOW, name)
        if sallyport_fd is not None:
            for name in ("read", "write", "readv", "writev"):
                rules.add_rule(seccomp.ALLOW, name, seccomp.Arg(0, seccomp.EQ, sallyport_fd))
        if sallyport_fd is None:
            for name in _LAUNCHER:
                rules.add_rule(seccomp.ALLOW, name)
        if allow_threads:
            for name in _THREADS:
                rules.add_rule(seccomp.ALLOW, name)
            rules.add_rule(
                seccomp.ALLOW,
                "clone",
                seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_THREAD, CLONE_THREAD),
            )
            # clone3 takes its flags in memory, out of a filter's reach: it fails
            # with ENOSYS and glibc falls back to clone, whose flags are checked.
            rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
        rules.load()
    except OSError as error:
        raise LockdownError("seccomp", str(error)) from None
