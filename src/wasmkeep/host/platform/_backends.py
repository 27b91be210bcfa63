"""The checks behind each backend, and the verdict drawn from them.

Every lookup under `/sys`, `/dev` and `/proc` is made under `root`, and every
kernel-facing probe comes from a :class:`Probes` table, so tests can put a fake
tree and fake probes behind `probe_platform`. No probe may crash the report: an
OSError becomes a failed check naming the errno.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from wasmkeep.host.platform._probes import MAX_ATTRIBUTE_BYTES, ProbeResult, Probes, errno_text
from wasmkeep.host.platform._report import BackendReport, Check

__all__ = ["probe_platform"]

#: What each backend protects, in a phrase (DESIGN.md, trust model).
ISOLATION = {
    "nil": "none: runs in the host process (development only)",
    "process": "separate locked-down process; not hidden from the host's root",
    "vm": "micro-VM (QEMU); not hidden from the host unless confidential",
    "snp": "confidential VM: memory encrypted by AMD SEV-SNP",
    "tdx": "confidential VM: memory encrypted by Intel TDX",
    "sgx": "process-based enclave: memory encrypted by Intel SGX",
}

#: Backends this version of wasmkeep can run workloads on. snp and tdx run the
#: workload in place, in a process keep inside an SEV-SNP or TDX guest; on a
#: host that can launch such guests, the vm backend launches its keep as one.
IMPLEMENTED = frozenset({"nil", "process", "vm", "snp", "tdx"})

QEMU = "qemu-system-x86_64"
TSM_REPORT_DIR = "sys/kernel/config/tsm/report"
# Bytes of /proc/cpuinfo read while looking for the first `flags` line.
MAX_CPUINFO_BYTES = 1 << 20


def probe_platform(root: Path = Path("/"), probes: Probes | None = None) -> list[BackendReport]:
    """Probe this machine for every backend: nil, process, vm, snp, tdx, sgx.

    `root` is where `/sys`, `/dev` and `/proc` are looked up; `probes` replaces
    the kernel-facing probes. Never raises for what it finds on the machine.
    """
    probes = probes or Probes()
    vm = _vm(root, probes)
    tsm = _tsm(root, probes)
    return [
        _nil(),
        _process(probes),
        vm,
        _snp(root, vm, tsm),
        _tdx(root, vm, tsm),
        _sgx(root),
    ]


def _attempt(probe: Callable[[], ProbeResult]) -> ProbeResult:
    try:
        return probe()
    except OSError as error:
        return ProbeResult(False, errno_text(error))


def _check(name: str, result: ProbeResult) -> Check:
    return Check(name, result.passed, result.detail)


def _report(
    name: str,
    checks: list[Check],
    *,
    available: bool,
    how: str,
    why_not: str,
    accelerator: str | None = None,
) -> BackendReport:
    implemented = name in IMPLEMENTED
    if available and implemented:
        summary = f"usable: {how}"
    elif available:
        summary = f"supported here: {how}; not implemented in this version"
    else:
        summary = f"unavailable: {why_not}"
        if not implemented:
            summary += "; not implemented in this version"
    return BackendReport(
        name=name,
        available=available,
        implemented=implemented,
        checks=tuple(checks),
        isolation=ISOLATION[name],
        summary=summary,
        accelerator=accelerator,
    )


def _first_failure(checks: list[Check], *, named: bool = True) -> str:
    failed = next((check for check in checks if not check.passed), None)
    if failed is None:
        return "every check passed"
    return f"{failed.name}: {failed.detail}" if named else failed.detail


# -- filesystem lookups, each one line of detail ---------------------------------


def _present(root: Path, relative: str) -> ProbeResult:
    path = root / relative
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return ProbeResult(False, f"/{relative} is absent")
    except OSError as error:
        return ProbeResult(False, errno_text(error))
    kind = "character device" if stat.S_ISCHR(mode) else "present"
    return ProbeResult(True, f"/{relative}: {kind}")


def _read_attribute(path: Path) -> str:
    with path.open("rb") as attribute:
        return attribute.read(MAX_ATTRIBUTE_BYTES).decode("utf-8", "replace").strip()


def _module_flag(root: Path, module: str, parameter: str) -> ProbeResult:
    """A boolean kernel module parameter, e.g. kvm_amd's sev_snp: Y or 1 is on."""
    relative = f"sys/module/{module}/parameters/{parameter}"
    try:
        value = _read_attribute(root / relative)
    except (FileNotFoundError, NotADirectoryError):
        return ProbeResult(False, f"{module} is not loaded or has no {parameter} parameter")
    except OSError as error:
        return ProbeResult(False, errno_text(error))
    if value in ("Y", "y", "1"):
        return ProbeResult(True, f"{module}.{parameter} = {value}")
    return ProbeResult(False, f"{module}.{parameter} = {value or '(empty)'}: not enabled")


def _cpu_flags(root: Path) -> set[str]:
    """The first `flags` line of /proc/cpuinfo (x86), as a set."""
    with (root / "proc/cpuinfo").open("rb") as cpuinfo:
        read = 0
        for raw in cpuinfo:
            read += len(raw)
            if read > MAX_CPUINFO_BYTES:
                break
            key, _, value = raw.decode("utf-8", "replace").partition(":")
            if key.strip() == "flags":
                return set(value.split())
    return set()


# -- the backends ----------------------------------------------------------------


def _nil() -> BackendReport:
    checks = [
        Check(
            "runs in the host process",
            True,
            "always available: no isolation at all, for development only",
        )
    ]
    return _report(
        "nil", checks, available=True, how="no isolation, for development only", why_not=""
    )


def _process(probes: Probes) -> BackendReport:
    checks = [
        _check("seccomp filters", _attempt(probes.seccomp)),
        _check("Landlock", _attempt(probes.landlock)),
        _check("user namespaces", _attempt(probes.user_namespaces)),
        _check("no_new_privs", _attempt(probes.no_new_privs)),
    ]
    available = all(check.passed for check in checks)
    return _report(
        "process",
        checks,
        available=available,
        how="namespaces, Landlock and seccomp",
        why_not=_first_failure(checks),
    )


def _qemu(probes: Probes) -> ProbeResult:
    try:
        executable = probes.find_executable(QEMU)
    except OSError as error:
        return ProbeResult(False, errno_text(error))
    if executable is None:
        return ProbeResult(False, f"{QEMU} not found on PATH")
    return _attempt(lambda: probes.qemu_version(executable))


def _vm(root: Path, probes: Probes) -> BackendReport:
    qemu = _qemu(probes)
    device = root / "dev/kvm"
    present = _present(root, "dev/kvm")
    opened = _attempt(lambda: probes.open_read_write(device)) if present.passed else present
    if opened.passed:
        api = _attempt(lambda: probes.kvm_api_version(device))
    else:
        api = ProbeResult(False, "not tried: /dev/kvm cannot be opened")
    if api.passed:
        runs = _attempt(lambda: probes.kvm_run_guest(device))
    else:
        runs = ProbeResult(False, "not tried: no working KVM API")
    checks = [
        _check(QEMU, qemu),
        _check("/dev/kvm read-write", opened),
        _check("KVM API version", api),
        _check("KVM runs a guest", runs),
    ]

    accelerator = ("kvm" if runs.passed else "tcg") if qemu.passed else None
    how = "KVM acceleration" if accelerator == "kvm" else "software emulation (TCG), slow"
    return _report(
        "vm",
        checks,
        available=accelerator is not None,
        how=how,
        why_not=qemu.detail,
        accelerator=accelerator,
    )


def _tsm(root: Path, probes: Probes) -> tuple[ProbeResult, ProbeResult]:
    """Whether the configfs-tsm report interface exists, and its provider's name.

    Asked once and shared by snp and tdx: the provider says which one this is.
    """
    interface = _present(root, TSM_REPORT_DIR)
    if not interface.passed:
        if not (root / "sys/kernel/config").is_dir():
            interface = ProbeResult(
                False, f"{interface.detail}; is configfs mounted at /sys/kernel/config?"
            )
        return interface, ProbeResult(False, "not tried: no configfs-tsm report interface")
    try:
        provider = probes.tsm_provider(root / TSM_REPORT_DIR)
    except OSError as error:
        return interface, ProbeResult(False, f"report entry failed: {errno_text(error)}")
    return interface, ProbeResult(True, provider or "(empty)")


def _tsm_checks(tsm: tuple[ProbeResult, ProbeResult], expected: str) -> list[Check]:
    interface, provider = tsm
    if provider.passed and provider.detail != expected:
        provider = ProbeResult(False, f"provider is {provider.detail}, not {expected}")
    elif provider.passed:
        provider = ProbeResult(True, f"provider is {expected}")
    return [
        _check("configfs-tsm report interface", interface),
        _check("configfs-tsm provider", provider),
    ]


def _kvm_guests(vm: BackendReport, what: str) -> Check:
    name = "vm backend with KVM"
    if vm.accelerator == "kvm":
        return Check(name, True, f"{what} guests are launched by QEMU with KVM")
    missing = "KVM cannot run guests" if vm.accelerator == "tcg" else "no QEMU"
    return Check(name, False, f"{what} guests are launched by QEMU with KVM; here: {missing}")


def _confidential_vm(
    name: str,
    what: str,
    host_checks: list[Check],
    guest_checks: tuple[Check, Check, Check],
) -> BackendReport:
    """The snp or tdx report, from the host's checks and the guest's (the
    device, the configfs-tsm interface, its provider).

    The backend runs the workload in place, in a process keep inside the
    guest: it is available where the device or the configfs-tsm provider is.
    A host that can launch such guests is said so in the summary: there the
    vm backend launches its keep as one.
    """
    device, interface, provider = guest_checks
    guest = device.passed or provider.passed
    failed = [device.detail, interface.detail if not interface.passed else provider.detail]
    why_not = f"not a {what} guest ({'; '.join(failed)})"
    if all(check.passed for check in host_checks):
        why_not += (
            f"; this host can launch {what} guests: `wasmkeep run --backend vm` launches its "
            "keep as one"
        )
    return _report(
        name,
        host_checks + list(guest_checks),
        available=guest,
        how=f"this machine is a {what} guest: the workload runs here, with {what} evidence",
        why_not=why_not,
    )


def _snp(root: Path, vm: BackendReport, tsm: tuple[ProbeResult, ProbeResult]) -> BackendReport:
    host_checks = [
        _check("host: kvm_amd sev_snp", _module_flag(root, "kvm_amd", "sev_snp")),
        _check("host: /dev/sev", _present(root, "dev/sev")),
        _prefixed("host", _kvm_guests(vm, "SNP")),
    ]
    device = _check("guest: /dev/sev-guest", _present(root, "dev/sev-guest"))
    interface, provider = (_prefixed("guest", check) for check in _tsm_checks(tsm, "sev_guest"))
    # Either gives a report AMD's chain verifies: configfs-tsm (Linux 6.7+), or
    # the device's SNP_GET_EXT_REPORT ioctl.
    return _confidential_vm("snp", "SEV-SNP", host_checks, (device, interface, provider))


def _tdx(root: Path, vm: BackendReport, tsm: tuple[ProbeResult, ProbeResult]) -> BackendReport:
    host_checks = [
        _check("host: kvm_intel tdx", _module_flag(root, "kvm_intel", "tdx")),
        _prefixed("host", _kvm_guests(vm, "TDX")),
    ]
    device = _check("guest: /dev/tdx_guest", _present(root, "dev/tdx_guest"))
    interface, provider = (_prefixed("guest", check) for check in _tsm_checks(tsm, "tdx_guest"))
    # A quote needs configfs-tsm (the host's QGS through it); the device alone
    # gives a TDREPORT, which no one elsewhere can verify, but it is a TDX guest.
    return _confidential_vm("tdx", "TDX", host_checks, (device, interface, provider))


def _prefixed(side: str, check: Check) -> Check:
    return Check(f"{side}: {check.name}", check.passed, check.detail)


def _sgx(root: Path) -> BackendReport:
    try:
        flags = _cpu_flags(root)
    except OSError as error:
        cpu = ProbeResult(False, f"cannot read /proc/cpuinfo: {errno_text(error)}")
    else:
        if "sgx" in flags:
            cpu = ProbeResult(True, "CPU flag sgx" + (", sgx_lc" if "sgx_lc" in flags else ""))
        else:
            cpu = ProbeResult(False, "no sgx flag in /proc/cpuinfo")
    checks = [
        _check("CPU supports SGX", cpu),
        _check("/dev/sgx_enclave", _present(root, "dev/sgx_enclave")),
        _check("/dev/sgx_provision", _present(root, "dev/sgx_provision")),
    ]
    return _report(
        "sgx",
        checks,
        available=all(check.passed for check in checks),
        how="SGX enclaves with DCAP attestation",
        why_not=_first_failure(checks),
    )
