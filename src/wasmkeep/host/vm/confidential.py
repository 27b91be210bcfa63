"""What makes a VM keep a confidential VM: AMD SEV-SNP or Intel TDX.

A confidential keep is the same keep image booted the same way (qemu's
``-kernel``, ``-initrd``, ``-append``), with these differences on qemu's
command line (QEMU's docs/system/i386/amd-memory-encryption.rst, "Launching
(SEV-SNP)", and docs/system/i386/tdx.rst, "Launching a TD"):

- the machine is ``q35`` with ``confidential-guest-support`` naming the
  object below (``microvm`` supports neither); TDX also needs the split
  kernel irqchip;
- ``-object sev-snp-guest,...,kernel-hashes=on`` (QEMU 9.1+), or
  ``-object tdx-guest`` (QEMU 10.1+) with a quote-generation socket to the
  host's Quote Generation Service, without which the guest gets a TDREPORT
  but no quote;
- ``-bios`` a firmware the hardware measures: for SNP an OVMF built from
  ``OvmfPkg/AmdSev/AmdSevX64.dsc``, whose kernel-hashes page makes the launch
  digest cover the kernel, the initrd and the command line (QEMU writes their
  SHA-256 there, the firmware refuses to boot anything else); for TDX a TDVF
  (``OvmfPkg/IntelTdx``, or an OVMF with TDX support);
- the virtio-serial port is on PCI, and its device must use the platform's
  DMA API (``iommu_platform=on``, modern only): a confidential guest's memory
  is private, and Linux refuses virtio devices that would read it directly;
- the vCPU model is fixed for SNP (`SNP_CPU`): its signature is part of the
  launch digest, so `wasmkeep vm measure` computes the same one.

Private memory comes from KVM's guest_memfd, which QEMU 9.1+ sets up for a
confidential machine by itself: no memory backend is named here.

What is checked before launching (`choose_confidential`): the platform probes
(`wasmkeep platform info`: kvm_amd.sev_snp or kvm_intel.tdx, /dev/sev, KVM
that runs guests), qemu's version, and the firmware. Nothing here has run on
SEV-SNP or TDX hardware: the command lines follow QEMU's documentation and
are tested as text.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wasmkeep.errors import EXIT_USAGE, BackendUnavailable, WasmkeepError
from wasmkeep.printable import shown

if TYPE_CHECKING:
    from wasmkeep.host.platform import BackendReport

__all__ = [
    "CPUID_DEVICE",
    "DEFAULT_CBITPOS",
    "DEFAULT_REDUCED_PHYS_BITS",
    "FIRMWARE_CANDIDATES",
    "KINDS",
    "MIN_QEMU",
    "SERIAL_DEVICE",
    "SNP_CPU",
    "SNP_GUEST_FEATURES",
    "SNP_VCPUS",
    "TDX_QUOTE_SOCKET",
    "ConfidentialChoice",
    "FirmwareError",
    "FirmwareNotFound",
    "SevBits",
    "check_firmware",
    "choose_confidential",
    "choose_for_run",
    "confidential_args",
    "find_firmware",
    "host_flags",
    "parse_qemu_version",
    "probe_sev_bits",
    "qemu_unsupported",
    "qemu_version",
]

#: The kinds of confidential VM, in the order `auto` tries them.
KINDS = ("snp", "tdx")
_NAMES = {"snp": "SEV-SNP", "tdx": "TDX"}
#: The first QEMU with each guest object.
MIN_QEMU = {"snp": (9, 1), "tdx": (10, 1)}
_OBJECTS = {"snp": "sev-snp-guest", "tdx": "tdx-guest"}

#: The vCPU model of an SNP keep. Its CPUID signature is in every VMSA the
#: launch digest covers, so `-cpu host` would make the digest depend on the
#: machine; EPYC-v4 (family 23) runs on every SNP-capable EPYC.
SNP_CPU = "EPYC-v4"
#: vCPUs of a VM keep (qemu -smp): each one's VMSA is in the launch digest.
SNP_VCPUS = 1
#: The VMSA's SEV_FEATURES: SNPActive only, QEMU's default (debug-swap and
#: the like are off unless asked for).
SNP_GUEST_FEATURES = 0x1
#: The C-bit position and the physical-address bits lost to it, used when
#: /dev/cpu/0/cpuid cannot be read: 51 and 1 on Milan, Genoa and Turin. QEMU
#: refuses values that differ from the host's CPUID 0x8000001F, so a wrong
#: guess fails the launch loudly, never silently.
DEFAULT_CBITPOS = 51
DEFAULT_REDUCED_PHYS_BITS = 1
#: Where the host's CPUID is readable (the `cpuid` kernel module; root only).
CPUID_DEVICE = Path("/dev/cpu/0/cpuid")
_SEV_LEAF = 0x8000001F

#: Where the host's Quote Generation Service listens, as QEMU's
#: `quote-generation-socket` takes it: vsock port 4050 on the host (CID 2),
#: Intel's default for QGS.
TDX_QUOTE_SOCKET: Mapping[str, str] = {"type": "vsock", "cid": "2", "port": "4050"}

#: The virtio-serial device of a confidential keep (see the module docstring).
SERIAL_DEVICE = "virtio-serial-pci,disable-legacy=on,iommu_platform=on"

#: Firmware looked for when none is given: the names Ubuntu (ovmf, ovmf-amdsev)
#: and Fedora (edk2-ovmf) install. Debian 12's ovmf has neither: its OVMF.fd
#: carries SEV metadata but no kernel-hashes page, so it cannot measure the
#: keep's kernel, initrd and command line.
FIRMWARE_CANDIDATES: Mapping[str, tuple[Path, ...]] = {
    "snp": (
        Path("/usr/share/ovmf/OVMF.amdsev.fd"),
        Path("/usr/share/edk2/ovmf/OVMF.amdsev.fd"),
        Path("/usr/share/OVMF/OVMF.amdsev.fd"),
    ),
    "tdx": (
        Path("/usr/share/ovmf/OVMF.inteltdx.fd"),
        Path("/usr/share/edk2/ovmf/OVMF.inteltdx.fd"),
        Path("/usr/share/OVMF/OVMF.inteltdx.fd"),
    ),
}
_FIRMWARE_HINTS = {
    "snp": "pass --firmware with an OVMF built for SEV from OvmfPkg/AmdSev/AmdSevX64.dsc, "
    "as Ubuntu's ovmf installs in /usr/share/ovmf/OVMF.amdsev.fd; Debian 12's ovmf has none",
    "tdx": "pass --firmware with a TDVF built from OvmfPkg/IntelTdx/IntelTdxX64.dsc, "
    "as Ubuntu installs in /usr/share/ovmf/OVMF.inteltdx.fd; Debian 12's ovmf has none",
}
#: Larger than any OVMF; a guard against reading a wrong file whole.
MAX_FIRMWARE = 64 << 20
_PAGE = 4096

_QEMU_VERSION = re.compile(r"version (\d+)\.(\d+)(?:\.(\d+))?")
#: Host-side switches, read first: only a host with one of them on is probed further.
_HOST_FLAGS = {
    "snp": "sys/module/kvm_amd/parameters/sev_snp",
    "tdx": "sys/module/kvm_intel/parameters/tdx",
}


class FirmwareError(WasmkeepError):
    """The firmware for a confidential VM is missing or cannot be used."""

    exit_status = EXIT_USAGE


class FirmwareNotFound(FirmwareError):
    """No firmware for this kind of confidential VM is installed where looked."""


def find_firmware(kind: str, candidates: Sequence[Path] | None = None) -> Path:
    """The first usable firmware for `kind` among `candidates` (default
    `FIRMWARE_CANDIDATES`); FirmwareNotFound naming every place looked."""
    looked = FIRMWARE_CANDIDATES[kind] if candidates is None else tuple(candidates)
    problems = []
    for path in looked:
        if not path.exists():
            continue
        try:
            check_firmware(kind, path)
        except FirmwareError as error:
            problems.append(str(error))
            continue
        return path
    where = ", ".join(shown(path) for path in looked)
    text = f"no {_NAMES[kind]} firmware found (looked for {where})"
    if problems:
        text += "; " + "; ".join(problems)
    raise FirmwareNotFound(text, hint=_FIRMWARE_HINTS[kind])


def check_firmware(kind: str, path: Path) -> None:
    """FirmwareError unless `path` is a firmware `kind` can boot measured.

    For SNP that means the SEV metadata of an AmdSev build with its
    kernel-hashes page (read as sev-snp-measure reads it); for TDX, a file.
    """
    hint = _FIRMWARE_HINTS[kind]
    try:
        size = path.stat().st_size
    except OSError as error:
        raise FirmwareError(
            f"cannot read the firmware {shown(path)}: {error.strerror}", hint=hint
        ) from None
    if not path.is_file() or size == 0 or size > MAX_FIRMWARE or size % _PAGE:
        raise FirmwareError(
            f"{shown(path)} is not a firmware image: a regular file of whole 4 KiB pages, "
            f"at most {MAX_FIRMWARE >> 20} MiB",
            hint=hint,
        )
    if kind != "snp":
        return
    from sevsnpmeasure.ovmf import OVMF, SectionType

    try:
        ovmf = OVMF(os.fspath(path))
    except (RuntimeError, ValueError, OSError) as error:
        raise FirmwareError(
            f"{shown(path)}: its SEV metadata cannot be read: {error}", hint=hint
        ) from None
    if not any(ovmf.has_metadata_section(section) for section in SectionType):
        raise FirmwareError(
            f"{shown(path)} has no SEV metadata: it is not an OVMF built for SEV", hint=hint
        )
    if not ovmf.has_metadata_section(SectionType.SNP_KERNEL_HASHES):
        raise FirmwareError(
            f"{shown(path)} has no kernel-hashes page: it is not an AmdSev build, and would "
            "not measure the keep's kernel, initrd and command line",
            hint=hint,
        )


@dataclass(frozen=True, slots=True)
class SevBits:
    """CPUID 0x8000001F EBX: where the C-bit is, and the address bits it costs."""

    cbitpos: int
    reduced_phys_bits: int


def probe_sev_bits(device: Path = CPUID_DEVICE) -> SevBits | None:
    """The host's SEV C-bit position from CPUID 0x8000001F (AMD APM vol. 3,
    E.4.17: EBX[5:0] the C-bit, EBX[11:6] the reduction), read through the
    cpuid driver (the file offset is the leaf); None if it cannot be read."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        raw = os.pread(fd, 16, _SEV_LEAF)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(raw) != 16:
        return None
    _eax, ebx, _ecx, _edx = struct.unpack("<4I", raw)
    cbitpos, reduced = ebx & 0x3F, (ebx >> 6) & 0x3F
    if cbitpos == 0:  # no SEV: the leaf is zero
        return None
    return SevBits(cbitpos, reduced)


def confidential_args(kind: str, firmware: Path, sev_bits: SevBits | None = None) -> list[str]:
    """qemu's machine, CPU, guest object and firmware for a `kind` guest.

    `sev_bits` (SNP only) defaults to `DEFAULT_CBITPOS` and
    `DEFAULT_REDUCED_PHYS_BITS`. The caller adds ``-accel kvm``, the memory,
    the kernel, the console and the sallyport port (on `SERIAL_DEVICE`).
    """
    if kind == "snp":
        bits = sev_bits or SevBits(DEFAULT_CBITPOS, DEFAULT_REDUCED_PHYS_BITS)
        guest = (
            f"{_OBJECTS['snp']},id=sev0,cbitpos={bits.cbitpos},"
            f"reduced-phys-bits={bits.reduced_phys_bits},kernel-hashes=on"
        )
        return [
            *("-machine", "q35,confidential-guest-support=sev0"),
            *("-cpu", SNP_CPU),
            *("-object", guest),
            *("-bios", os.fspath(firmware)),
        ]
    if kind == "tdx":
        guest = json.dumps(
            {
                "qom-type": _OBJECTS["tdx"],
                "id": "tdx0",
                "quote-generation-socket": dict(TDX_QUOTE_SOCKET),
            },
            separators=(",", ":"),
        )
        return [
            *("-machine", "q35,kernel-irqchip=split,confidential-guest-support=tdx0"),
            *("-cpu", "host"),
            *("-object", guest),
            *("-bios", os.fspath(firmware)),
        ]
    raise ValueError(f"unknown kind of confidential VM {kind!r}")


# -- which one, if any --------------------------------------------------------------------


def parse_qemu_version(text: str) -> tuple[int, int, int] | None:
    """(major, minor, micro) from `qemu-system-x86_64 --version`'s first line."""
    match = _QEMU_VERSION.search(text)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def qemu_version(executable: str) -> tuple[int, int, int] | None:
    """The version of the qemu at `executable`, asked (None if it does not say)."""
    from wasmkeep.host.platform._probes import probe_qemu_version

    try:
        result = probe_qemu_version(executable)
    except OSError:
        return None
    return parse_qemu_version(result.detail) if result.passed else None


def qemu_unsupported(kind: str, version: tuple[int, ...] | None) -> str | None:
    """Why a qemu of `version` cannot launch a `kind` guest, or None if it can."""
    needed = MIN_QEMU[kind]
    wanted = f"QEMU {needed[0]}.{needed[1]} or later (the first with {_OBJECTS[kind]})"
    if version is None:
        return f"qemu's version is unknown; {wanted} is needed"
    if tuple(version[:2]) < needed:
        shown_version = ".".join(str(part) for part in version)
        return f"QEMU {shown_version} is too old: {wanted} is needed"
    return None


def host_flags(root: Path = Path("/")) -> tuple[str, ...]:
    """The kinds whose KVM switch is on (kvm_amd.sev_snp, kvm_intel.tdx): a cheap
    first look, so that a host with neither is not probed further."""
    kinds = []
    for kind, relative in _HOST_FLAGS.items():
        try:
            value = (root / relative).read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            continue
        if value in ("Y", "y", "1"):
            kinds.append(kind)
    return tuple(kinds)


def _host_unsupported(kind: str, reports: Sequence[BackendReport]) -> str | None:
    """The first failed host check of `kind`'s platform report, or None."""
    report = next((report for report in reports if report.name == kind), None)
    if report is None:
        return f"no platform report for {kind}"
    host = [check for check in report.checks if check.name.startswith("host: ")]
    failed = next((check for check in host if not check.passed), None)
    if not host:
        return f"no host checks for {kind}"
    if failed is not None:
        return f"{failed.name.removeprefix('host: ')}: {failed.detail}"
    return None


@dataclass(frozen=True, slots=True)
class ConfidentialChoice:
    """How the VM keep is launched: `kind` ("snp", "tdx", or None: an ordinary
    VM), the firmware for it, and why (one line, for the log)."""

    kind: str | None
    firmware: Path | None
    why: str


def choose_confidential(
    requested: str,
    reports: Sequence[BackendReport],
    version: tuple[int, ...] | None,
    *,
    firmware: Path | None = None,
    candidates: Mapping[str, Sequence[Path]] = FIRMWARE_CANDIDATES,
) -> ConfidentialChoice:
    """Which confidential VM to launch, from what the platform probes found.

    `requested` is "auto", "snp", "tdx" or "off". Each kind needs the host's
    support (every "host: " check of its report passed), a qemu of `version`
    new enough, and a firmware (`firmware`, else the first usable one of
    `candidates`). "auto" takes the first kind that has all three and an
    ordinary VM otherwise; a kind asked for by name that lacks any of them is
    BackendUnavailable, naming everything missing.
    """
    if requested == "off":
        return ConfidentialChoice(None, None, "confidential VMs are turned off")
    if requested not in (*KINDS, "auto"):
        raise ValueError(f"requested must be auto, off, snp or tdx, not {requested!r}")
    kinds = KINDS if requested == "auto" else (requested,)
    reasons = []
    hints = ["`wasmkeep platform info` shows what this host supports"]
    for kind in kinds:
        missing = []
        host = _host_unsupported(kind, reports)
        if host is not None:
            missing.append(f"this host cannot launch {_NAMES[kind]} guests ({host})")
        old = qemu_unsupported(kind, version)
        if old is not None:
            missing.append(old)
        chosen = None
        if requested != "auto" or not missing:
            try:
                if firmware is not None:
                    check_firmware(kind, firmware)
                    chosen = firmware
                else:
                    chosen = find_firmware(kind, candidates[kind])
            except FirmwareError as error:
                missing.append(str(error))
                hints.insert(0, error.hint or "")
        if not missing and chosen is not None:
            return ConfidentialChoice(
                kind, chosen, f"launching the VM keep as a {_NAMES[kind]} guest"
            )
        if requested != "auto":
            raise BackendUnavailable(
                f"cannot launch the VM keep as {_article(kind)} {_NAMES[kind]} guest: "
                + "; ".join(missing),
                hint="; ".join([*filter(None, hints), "--confidential off runs an ordinary VM"]),
            )
        reasons.append(f"{_NAMES[kind]}: {missing[0]}")
    return ConfidentialChoice(None, None, "an ordinary VM: " + "; ".join(reasons))


def _article(kind: str) -> str:
    return "an" if kind == "snp" else "a"


def choose_for_run(requested: str, accel: str, firmware: Path | None) -> ConfidentialChoice:
    """What `run --backend vm --confidential REQUESTED --accel ACCEL` launches:
    SEV-SNP, TDX or an ordinary VM (BackendUnavailable if asked for what cannot be).

    auto probes only a host whose kvm_amd.sev_snp or kvm_intel.tdx is on, so
    an ordinary host pays nothing for it; never a warning (the workload's
    stderr is the same on every keep): -v logs the choice and why.
    """
    if requested != "off" and accel == "tcg":
        if requested != "auto":
            raise BackendUnavailable(
                "a confidential VM keep needs KVM, and --accel tcg emulates",
                hint="use --accel auto or kvm",
            )
        requested = "off"
    if requested == "auto" and not host_flags():
        chosen = ConfidentialChoice(
            None, None, "an ordinary VM: neither kvm_amd.sev_snp nor kvm_intel.tdx is on"
        )
    else:
        from wasmkeep.host.platform import probe_platform
        from wasmkeep.host.vm.launch import QEMU

        reports = probe_platform() if requested != "off" else []
        version = qemu_version(QEMU) if requested != "off" else None
        chosen = choose_confidential(requested, reports, version, firmware=firmware)
    logging.getLogger("wasmkeep.cli.run").info("vm keep: %s", chosen.why)
    return chosen
