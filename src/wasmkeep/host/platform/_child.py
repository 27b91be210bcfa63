"""Probes that change process state, run in a throw-away child process.

wasmkeep runs this file as a script (``python -I -S _child.py PROBE [ARG]``):
unsharing namespaces, setting ``no_new_privs`` or creating a KVM virtual machine
must not touch the process that asked, and a guest that hangs must not hang
``platform info``. It therefore uses the standard library only, and the tests
import it only to check :func:`guest_image` on QEMU.

It prints one JSON line, ``{"passed": bool, "detail": str}``, and exits 0;
anything else is read by the parent as a failed probe.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import mmap
import os
import signal
import struct
import sys
from collections.abc import Callable

# Seconds the KVM probe may take before SIGALRM (default action: terminate) ends
# this process; the guest itself needs microseconds.
KVM_ALARM_SECONDS = 1

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39

# KVM ioctls (linux/kvm.h): _IO(0xAE, n), or _IOR/_IOW with the structure's size.
KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46  # struct kvm_userspace_memory_region, 32 bytes
KVM_SET_TSS_ADDR = 0xAE47
KVM_RUN = 0xAE80
KVM_GET_REGS = 0x8090AE81  # struct kvm_regs, 144 bytes
KVM_SET_REGS = 0x4090AE82
KVM_GET_SREGS = 0x8138AE83  # struct kvm_sregs, 312 bytes
KVM_SET_SREGS = 0x4138AE84
KVM_REGS_SIZE = 144
KVM_SREGS_SIZE = 312

# struct kvm_run: exit_reason at 8, the per-exit union at 32.
RUN_EXIT_REASON = 8
RUN_UNION = 32
# struct kvm_regs: rip and rflags are the 17th and 18th u64.
REGS_RIP = 16 * 8
REGS_RFLAGS = 17 * 8
# struct kvm_sregs starts with cs, a struct kvm_segment: base u64, limit u32, selector u16.
SREGS_CS_BASE = 0
SREGS_CS_SELECTOR = 12

KVM_EXIT_IO = 2
KVM_EXIT_HLT = 5
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_IO_OUT = 1
KVM_EXIT_NAMES = {
    0: "UNKNOWN",
    1: "EXCEPTION",
    2: "IO",
    3: "HYPERCALL",
    4: "DEBUG",
    5: "HLT",
    6: "MMIO",
    8: "SHUTDOWN (triple fault)",
    9: "FAIL_ENTRY",
    17: "INTERNAL_ERROR",
}
KVM_INTERNAL_ERRORS = {
    1: "instruction emulation failed",
    2: "exception while delivering an exception",
    3: "event delivery failed",
    4: "unexpected exit",
}

# The guest, at guest-physical GUEST_ADDR, does what every boot loader does
# first: from real mode it loads a GDT and an IDT, enters 32-bit protected mode
# and takes a software interrupt through its IDT; the handler writes GUEST_BYTE
# to I/O port GUEST_PORT (0xE9, the QEMU/Bochs debug console) and halts.
# A simpler guest proves too little: a KVM that cannot run ordinary guests (PVM,
# which runs only paravirtualized 64-bit kernels) still runs real-mode code, and
# sometimes a mode switch, in its instruction emulator, but that emulator cannot
# deliver an interrupt in protected mode.
GUEST_ADDR = 0x1000
GUEST_SIZE = 0x1000
GUEST_PORT = 0xE9
GUEST_BYTE = 0x42
GUEST_VECTOR = 3
# Where Intel VMX keeps the real-mode TSS: outside guest memory, where QEMU puts it.
TSS_ADDR = 0xFFFBD000


class ProbeFailed(Exception):
    """The probe ran and found the feature missing; the message says why."""


def guest_image(base: int) -> bytes:
    """The guest's code and tables, to be loaded at guest-physical `base`.

    It expects real mode with CS = 0 and IP = `base` (below 0xF000), as
    :func:`probe_kvm_run` sets it up and as a BIOS starts a boot sector, and uses
    the GUEST_SIZE bytes from `base` (its stack is at their top).
    """
    protected_mode, handler = base + 0x30, base + 0x50
    gdtr, gdt = base + 0x60, base + 0x68
    idtr, idt = base + 0x80, base + 0x88
    parts = {
        protected_mode - 0x30: b"".join(  # 16-bit real mode
            [
                b"\xfa",  # cli
                b"\x31\xc0\x8e\xd8",  # xor ax, ax; mov ds, ax
                b"\x0f\x01\x16" + struct.pack("<H", gdtr),  # lgdt [gdtr]
                b"\x0f\x01\x1e" + struct.pack("<H", idtr),  # lidt [idtr]
                b"\x0f\x20\xc0\x0c\x01\x0f\x22\xc0",  # mov eax, cr0; or al, 1; mov cr0, eax
                b"\xea" + struct.pack("<HH", protected_mode, 0x08),  # jmp 0x08:protected_mode
            ]
        ),
        protected_mode: b"".join(  # 32-bit protected mode
            [
                b"\x66\xb8\x10\x00",  # mov ax, 0x10
                b"\x8e\xd8\x8e\xd0",  # mov ds, ax; mov ss, ax
                b"\xbc" + struct.pack("<I", base + GUEST_SIZE),  # mov esp, top of guest memory
                b"\xcd" + bytes([GUEST_VECTOR]),  # int GUEST_VECTOR
                b"\xf4",  # hlt (not reached: the handler halts)
            ]
        ),
        handler: b"".join(
            [
                b"\xb0" + bytes([GUEST_BYTE]),  # mov al, GUEST_BYTE
                b"\xe6" + bytes([GUEST_PORT]),  # out GUEST_PORT, al
                b"\xf4",  # hlt
            ]
        ),
        gdtr: struct.pack("<HI", 3 * 8 - 1, gdt),
        gdt: b"".join(
            [
                bytes(8),  # null descriptor
                bytes.fromhex("ffff0000009acf00"),  # 0x08: code, base 0, 4 GiB, 32-bit
                bytes.fromhex("ffff00000092cf00"),  # 0x10: data, base 0, 4 GiB
            ]
        ),
        idtr: struct.pack("<HI", (GUEST_VECTOR + 1) * 8 - 1, idt),
        # Lower vectors are left not present; GUEST_VECTOR is a 32-bit interrupt gate.
        idt + GUEST_VECTOR * 8: struct.pack(
            "<HHBBH", handler & 0xFFFF, 0x08, 0, 0x8E, handler >> 16
        ),
    }
    image = bytearray(idt + (GUEST_VECTOR + 1) * 8 - base)
    for address, part in parts.items():
        image[address - base : address - base + len(part)] = part
    return bytes(image)


def _errno_text(number: int) -> str:
    name = errno.errorcode.get(number, f"errno {number}")
    return f"{name} ({os.strerror(number)})"


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result == -1:
        raise ProbeFailed(f"{what} failed: {_errno_text(ctypes.get_errno())}")
    return result


def probe_user_namespaces() -> str:
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC
    if _libc().unshare(ctypes.c_int(flags)) == -1:
        number = ctypes.get_errno()
        hint = {
            errno.EPERM: "; unprivileged user namespaces may be disabled (sysctl "
            "kernel.unprivileged_userns_clone, kernel.apparmor_restrict_unprivileged_userns)",
            errno.ENOSPC: "; user.max_user_namespaces is 0 or used up",
        }.get(number, "")
        raise ProbeFailed(f"unshare failed: {_errno_text(number)}{hint}")
    return "unshare created user, mount, pid, net and ipc namespaces"


def probe_no_new_privs() -> str:
    libc = _libc()
    one, zero = ctypes.c_ulong(1), ctypes.c_ulong(0)
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, one, zero, zero, zero), "prctl(PR_SET_NO_NEW_PRIVS)")
    state = _check(libc.prctl(PR_GET_NO_NEW_PRIVS, zero, zero, zero, zero), "PR_GET_NO_NEW_PRIVS")
    if state != 1:
        raise ProbeFailed("PR_SET_NO_NEW_PRIVS succeeded but the flag reads back as unset")
    return "set and read back in a child process"


def _ioctl(fd: int, request: int, what: str, arg: int | bytearray = 0) -> int:
    """ioctl(2) through libc: `fcntl.ioctl` takes only a C int as a value argument."""
    value: ctypes.c_ulong | ctypes.Array[ctypes.c_char]
    if isinstance(arg, bytearray):
        value = (ctypes.c_char * len(arg)).from_buffer(arg)
    else:
        value = ctypes.c_ulong(arg)
    return _check(_libc().ioctl(fd, ctypes.c_ulong(request), value), what)


def probe_kvm_run(device: str) -> str:
    """Run :func:`guest_image` on one vCPU: expect its OUT, then its HLT."""
    signal.alarm(KVM_ALARM_SECONDS)
    kvm = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    vm = _ioctl(kvm, KVM_CREATE_VM, "KVM_CREATE_VM")
    # Needed by Intel CPUs without "unrestricted guest"; harmless elsewhere.
    with contextlib.suppress(ProbeFailed):
        _ioctl(vm, KVM_SET_TSS_ADDR, "KVM_SET_TSS_ADDR", TSS_ADDR)

    memory = mmap.mmap(-1, GUEST_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    image = guest_image(GUEST_ADDR)
    memory[: len(image)] = image
    address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    region = struct.pack("<IIQQQ", 0, 0, GUEST_ADDR, GUEST_SIZE, address)
    _ioctl(vm, KVM_SET_USER_MEMORY_REGION, "KVM_SET_USER_MEMORY_REGION", bytearray(region))

    vcpu = _ioctl(vm, KVM_CREATE_VCPU, "KVM_CREATE_VCPU")
    run_size = _ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, "KVM_GET_VCPU_MMAP_SIZE")
    run = mmap.mmap(vcpu, run_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    sregs = bytearray(KVM_SREGS_SIZE)
    _ioctl(vcpu, KVM_GET_SREGS, "KVM_GET_SREGS", sregs)
    struct.pack_into("<Q", sregs, SREGS_CS_BASE, 0)
    struct.pack_into("<H", sregs, SREGS_CS_SELECTOR, 0)
    _ioctl(vcpu, KVM_SET_SREGS, "KVM_SET_SREGS", sregs)
    regs = bytearray(KVM_REGS_SIZE)
    struct.pack_into("<Q", regs, REGS_RIP, GUEST_ADDR)
    struct.pack_into("<Q", regs, REGS_RFLAGS, 0x2)  # bit 1 is reserved and must be set
    _ioctl(vcpu, KVM_SET_REGS, "KVM_SET_REGS", regs)

    _ioctl(vcpu, KVM_RUN, "KVM_RUN")
    reason = struct.unpack_from("<I", run, RUN_EXIT_REASON)[0]
    if reason != KVM_EXIT_IO:
        raise ProbeFailed(f"the guest stopped before its OUT: {_exit_text(run, reason, vcpu)}")
    direction, size, port, count, offset = struct.unpack_from("<BBHIQ", run, RUN_UNION)
    value = run[offset] if offset < run_size else None
    if (direction, size, port, count, value) != (KVM_EXIT_IO_OUT, 1, GUEST_PORT, 1, GUEST_BYTE):
        raise ProbeFailed(
            f"unexpected I/O exit: direction {direction}, size {size}, port {port:#x}, "
            f"count {count}, value {value!r}"
        )

    _ioctl(vcpu, KVM_RUN, "KVM_RUN")
    reason = struct.unpack_from("<I", run, RUN_EXIT_REASON)[0]
    if reason != KVM_EXIT_HLT:
        raise ProbeFailed(f"the guest did not halt: {_exit_text(run, reason, vcpu)}")
    signal.alarm(0)
    return (
        f"ran a guest from real to protected mode; its interrupt handler "
        f"wrote {GUEST_BYTE:#x} to port {GUEST_PORT:#x} and halted"
    )


def _exit_text(run: mmap.mmap, reason: int, vcpu: int) -> str:
    text = f"exit {KVM_EXIT_NAMES.get(reason, 'unknown')} ({reason})"
    if reason == KVM_EXIT_FAIL_ENTRY:
        (code,) = struct.unpack_from("<Q", run, RUN_UNION)
        text += f", hardware entry failure {code:#x}"
    elif reason == KVM_EXIT_INTERNAL_ERROR:
        (code,) = struct.unpack_from("<I", run, RUN_UNION)
        text += f": {KVM_INTERNAL_ERRORS.get(code, f'suberror {code}')}"
    regs = bytearray(KVM_REGS_SIZE)
    try:
        _ioctl(vcpu, KVM_GET_REGS, "KVM_GET_REGS", regs)
    except ProbeFailed:
        return text
    (rip,) = struct.unpack_from("<Q", regs, REGS_RIP)
    return f"{text} at rip {rip:#x}"


PROBES: dict[str, Callable[..., str]] = {
    "user-namespaces": probe_user_namespaces,
    "no-new-privs": probe_no_new_privs,
    "kvm-run": probe_kvm_run,
}


def main(argv: list[str]) -> int:
    name, *args = argv
    try:
        detail, passed = PROBES[name](*args), True
    except ProbeFailed as failure:
        detail, passed = str(failure), False
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        detail, passed = f"{_errno_text(error.errno or 0)}{where}", False
    print(json.dumps({"passed": passed, "detail": detail}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
