"""`wasmkeep platform info` and the probes behind it.

Most tests put a fake machine behind `probe_platform`: a fake `/sys`, `/dev` and
`/proc` under tmp_path, and a `Probes` table whose kernel-facing probes are
stubs. The tests at the end run the real probes on this machine.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NoReturn

import pytest
from click.testing import CliRunner

from wasmkeep.cli.main import main
from wasmkeep.host import platform
from wasmkeep.host.platform import (
    BackendReport,
    Check,
    ProbeResult,
    Probes,
    _child,
    _probes,
    most_isolating_available,
    platform_document,
    probe_platform,
)

PASS = ProbeResult(True, "stub: works")
FAIL = ProbeResult(False, "stub: does not work")
QEMU_PATH = "/fake/bin/qemu-system-x86_64"


def _returns(result: ProbeResult) -> Callable[..., ProbeResult]:
    return lambda *_args: result


def stub_probes(**overrides: object) -> Probes:
    """Probes that touch nothing: the process probes pass, no QEMU, KVM works."""
    defaults: dict[str, object] = {
        "seccomp": _returns(PASS),
        "landlock": _returns(ProbeResult(True, "ABI version 6")),
        "user_namespaces": _returns(PASS),
        "no_new_privs": _returns(PASS),
        "find_executable": lambda _name: None,
        "qemu_version": _returns(ProbeResult(True, "QEMU emulator version 9.2.0")),
        "open_read_write": _returns(PASS),
        "kvm_api_version": _returns(ProbeResult(True, "API version 12")),
        "kvm_run_guest": _returns(PASS),
        "tsm_provider": _no_tsm,
    }
    defaults.update(overrides)
    return Probes(**defaults)  # type: ignore[arg-type]


def _no_tsm(report_dir: Path) -> str:
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(report_dir))


def with_qemu(**overrides: object) -> Probes:
    return stub_probes(find_executable=lambda _name: QEMU_PATH, **overrides)


def make_tree(root: Path, files: dict[str, str]) -> Path:
    """Files (relative path -> content; a trailing / makes a directory) under root."""
    for relative, content in files.items():
        path = root / relative
        if relative.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


def report(reports: list[BackendReport], name: str) -> BackendReport:
    return next(r for r in reports if r.name == name)


def checks(backend: BackendReport) -> dict[str, Check]:
    return {check.name: check for check in backend.checks}


def fake_configfs_tsm(provider: str) -> tuple[Callable[[Path], None], Callable[[Path], None]]:
    """mkdir and rmdir that behave as configfs-tsm does: a new entry has a `provider`."""

    def mkdir(entry: Path) -> None:
        os.mkdir(entry)
        (entry / "provider").write_text(provider + "\n")
        (entry / "outblob").write_bytes(b"")

    def rmdir(entry: Path) -> None:
        shutil.rmtree(entry)

    return mkdir, rmdir


def tsm_reader(provider: str) -> Callable[[Path], str]:
    mkdir, rmdir = fake_configfs_tsm(provider)
    return lambda report_dir: _probes.read_tsm_provider(report_dir, mkdir=mkdir, rmdir=rmdir)


def test_backends_are_reported_in_order_and_nil_process_and_vm_are_implemented(
    tmp_path: Path,
) -> None:
    reports = probe_platform(tmp_path, stub_probes())
    assert [r.name for r in reports] == ["nil", "process", "vm", "snp", "tdx", "sgx"]
    assert [r.name for r in reports if r.implemented] == ["nil", "process", "vm", "snp", "tdx"]
    for backend in reports:
        assert backend.isolation
        assert backend.checks
        if not backend.implemented:
            assert "not implemented in this version" in backend.summary


# -- nil -------------------------------------------------------------------------


def test_nil_is_always_usable_and_says_it_does_not_isolate(tmp_path: Path) -> None:
    nil = report(probe_platform(tmp_path, stub_probes()), "nil")
    assert nil.available
    assert nil.implemented
    assert nil.usable
    assert all(check.passed for check in nil.checks)
    assert "no isolation" in nil.summary
    assert "development" in nil.summary
    assert nil.isolation.startswith("none")


# -- process ---------------------------------------------------------------------


def test_process_is_supported_when_every_probe_passes(tmp_path: Path) -> None:
    process = report(probe_platform(tmp_path, stub_probes()), "process")
    assert process.available
    assert process.implemented
    assert process.summary.startswith("usable")
    assert set(checks(process)) == {
        "seccomp filters",
        "Landlock",
        "user namespaces",
        "no_new_privs",
    }
    assert checks(process)["Landlock"].detail == "ABI version 6"


@pytest.mark.parametrize("failing", ["seccomp", "landlock", "user_namespaces", "no_new_privs"])
def test_process_is_unavailable_when_one_probe_fails(tmp_path: Path, failing: str) -> None:
    probes = stub_probes(**{failing: _returns(FAIL)})
    process = report(probe_platform(tmp_path, probes), "process")
    assert not process.available
    assert process.summary.startswith("unavailable: ")
    assert FAIL.detail in process.summary
    assert [c.passed for c in process.checks].count(False) == 1


def test_an_oserror_in_a_probe_becomes_a_failed_check(tmp_path: Path) -> None:
    def denied() -> ProbeResult:
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    process = report(probe_platform(tmp_path, stub_probes(landlock=denied)), "process")
    landlock = checks(process)["Landlock"]
    assert not landlock.passed
    assert landlock.detail == "EPERM (Operation not permitted)"


# -- vm --------------------------------------------------------------------------


def test_vm_is_unavailable_without_qemu_on_path(tmp_path: Path) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    probes = stub_probes(find_executable=functools.partial(shutil.which, path=str(empty_bin)))
    vm = report(probe_platform(tmp_path, probes), "vm")
    assert not vm.available
    assert vm.accelerator is None
    qemu = checks(vm)["qemu-system-x86_64"]
    assert not qemu.passed
    assert qemu.detail == "qemu-system-x86_64 not found on PATH"
    assert "qemu-system-x86_64 not found" in vm.summary


def test_vm_finds_qemu_on_a_path_and_reports_its_version(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    qemu = bin_dir / "qemu-system-x86_64"
    qemu.write_text("#!/bin/sh\necho 'QEMU emulator version 9.9.9'\necho 'Copyright'\n")
    qemu.chmod(0o755)
    probes = stub_probes(
        find_executable=functools.partial(shutil.which, path=str(bin_dir)),
        qemu_version=_probes.probe_qemu_version,
    )
    vm = report(probe_platform(tmp_path, probes), "vm")
    found = checks(vm)["qemu-system-x86_64"]
    assert found.passed
    assert found.detail == f"{qemu}: QEMU emulator version 9.9.9"


def test_vm_fails_qemu_that_does_not_run(tmp_path: Path) -> None:
    broken = tmp_path / "qemu-system-x86_64"
    broken.write_text("#!/bin/sh\nexit 3\n")
    broken.chmod(0o755)
    result = _probes.probe_qemu_version(str(broken))
    assert not result.passed
    assert "exit 3" in result.detail


def test_vm_uses_kvm_when_kvm_runs_a_guest(tmp_path: Path) -> None:
    make_tree(tmp_path, {"dev/kvm": ""})
    vm = report(probe_platform(tmp_path, with_qemu()), "vm")
    assert vm.available
    assert vm.accelerator == "kvm"
    assert all(check.passed for check in vm.checks)
    assert "KVM acceleration" in vm.summary


def test_vm_falls_back_to_tcg_when_kvm_cannot_run_a_guest(tmp_path: Path) -> None:
    make_tree(tmp_path, {"dev/kvm": ""})
    stopped = ProbeResult(False, "the guest stopped before its OUT: exit INTERNAL_ERROR (17)")
    vm = report(probe_platform(tmp_path, with_qemu(kvm_run_guest=_returns(stopped))), "vm")
    assert vm.available
    assert vm.accelerator == "tcg"
    assert checks(vm)["KVM runs a guest"] == Check("KVM runs a guest", False, stopped.detail)
    assert "software emulation (TCG), slow" in vm.summary


def test_vm_does_not_try_kvm_when_dev_kvm_is_absent(tmp_path: Path) -> None:
    def must_not_run(_device: Path) -> ProbeResult:
        raise AssertionError("probed a device that is not there")

    probes = with_qemu(
        open_read_write=must_not_run, kvm_api_version=must_not_run, kvm_run_guest=must_not_run
    )
    vm = report(probe_platform(tmp_path, probes), "vm")
    assert vm.accelerator == "tcg"
    found = checks(vm)
    assert found["/dev/kvm read-write"].detail == "/dev/kvm is absent"
    assert found["KVM API version"].detail.startswith("not tried")
    assert found["KVM runs a guest"].detail.startswith("not tried")


def test_vm_does_not_run_a_guest_when_dev_kvm_cannot_be_opened(tmp_path: Path) -> None:
    make_tree(tmp_path, {"dev/kvm": ""})

    def denied(device: Path) -> ProbeResult:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(device))

    vm = report(probe_platform(tmp_path, with_qemu(open_read_write=denied)), "vm")
    found = checks(vm)
    assert found["/dev/kvm read-write"].detail == (
        f"EACCES (Permission denied): {tmp_path / 'dev/kvm'}"
    )
    assert found["KVM runs a guest"].detail.startswith("not tried")
    assert vm.accelerator == "tcg"


def test_real_kvm_probes_on_a_plain_file_fail_without_raising(tmp_path: Path) -> None:
    fake_kvm = make_tree(tmp_path, {"dev/kvm": ""}) / "dev/kvm"
    assert _probes.probe_open_read_write(fake_kvm).passed
    with pytest.raises(OSError, match="Inappropriate ioctl"):
        _probes.probe_kvm_api_version(fake_kvm)
    probes = dataclasses.replace(with_qemu(), kvm_api_version=_probes.probe_kvm_api_version)
    api = checks(report(probe_platform(tmp_path, probes), "vm"))["KVM API version"]
    assert not api.passed
    assert api.detail.startswith("ENOTTY")


def test_kvm_guest_probe_in_a_child_reports_a_missing_device(tmp_path: Path) -> None:
    result = _probes.probe_kvm_run_guest(tmp_path / "no-kvm")
    assert not result.passed
    assert result.detail.startswith("ENOENT")


# -- snp -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "enabled"), [("Y", True), ("1", True), ("N", False), ("0", False)]
)
def test_snp_host_needs_sev_snp_enabled(tmp_path: Path, value: str, enabled: bool) -> None:
    make_tree(
        tmp_path,
        {"sys/module/kvm_amd/parameters/sev_snp": value + "\n", "dev/sev": "", "dev/kvm": ""},
    )
    snp = report(probe_platform(tmp_path, with_qemu()), "snp")
    assert checks(snp)["host: kvm_amd sev_snp"].passed is enabled
    assert checks(snp)["host: /dev/sev"].passed
    # The snp backend runs in place, inside a guest: a host is not one. There
    # the vm backend launches its keep as an SEV-SNP guest, and it says so.
    assert not snp.available
    assert snp.implemented
    launches = "this host can launch SEV-SNP guests: `wasmkeep run --backend vm` launches"
    assert snp.summary.startswith("unavailable: not a SEV-SNP guest (/dev/sev-guest is absent; ")
    assert (launches in snp.summary) is enabled


def test_snp_host_needs_dev_sev_and_kvm_that_runs_guests(tmp_path: Path) -> None:
    make_tree(tmp_path, {"sys/module/kvm_amd/parameters/sev_snp": "Y\n", "dev/kvm": ""})
    probes = with_qemu(kvm_run_guest=_returns(FAIL))
    snp = report(probe_platform(tmp_path, probes), "snp")
    assert not snp.available
    found = checks(snp)
    assert found["host: /dev/sev"].detail == "/dev/sev is absent"
    assert not found["host: vm backend with KVM"].passed
    assert "KVM cannot run guests" in found["host: vm backend with KVM"].detail


def test_snp_guest_is_found_through_configfs_tsm(tmp_path: Path) -> None:
    make_tree(tmp_path, {"dev/sev-guest": "", "sys/kernel/config/tsm/report/": ""})
    reports = probe_platform(tmp_path, stub_probes(tsm_provider=tsm_reader("sev_guest")))
    snp, tdx = report(reports, "snp"), report(reports, "tdx")
    assert snp.available
    assert "this machine is a SEV-SNP guest" in snp.summary
    assert checks(snp)["guest: configfs-tsm provider"] == Check(
        "guest: configfs-tsm provider", True, "provider is sev_guest"
    )
    assert not tdx.available
    assert checks(tdx)["guest: configfs-tsm provider"].detail == (
        "provider is sev_guest, not tdx_guest"
    )
    # The probe removed the report entry it made.
    assert list((tmp_path / "sys/kernel/config/tsm/report").iterdir()) == []


def test_snp_guest_without_configfs_tsm_has_its_device(tmp_path: Path) -> None:
    """/dev/sev-guest alone (Linux before 6.7) gives reports AMD's chain verifies."""
    make_tree(tmp_path, {"dev/sev-guest": ""})
    snp = report(probe_platform(tmp_path, stub_probes()), "snp")
    assert snp.available
    assert snp.summary == (
        "usable: this machine is a SEV-SNP guest: the workload runs here, with SEV-SNP evidence"
    )
    found = checks(snp)
    assert found["guest: /dev/sev-guest"].passed
    assert "is configfs mounted" in found["guest: configfs-tsm report interface"].detail
    assert found["guest: configfs-tsm provider"].detail.startswith("not tried")


def test_tsm_provider_is_asked_once_for_snp_and_tdx(tmp_path: Path) -> None:
    make_tree(tmp_path, {"sys/kernel/config/tsm/report/": ""})
    asked: list[Path] = []

    def provider(report_dir: Path) -> str:
        asked.append(report_dir)
        return "sev_guest"

    probe_platform(tmp_path, stub_probes(tsm_provider=provider))
    assert asked == [tmp_path / "sys/kernel/config/tsm/report"]


def test_read_tsm_provider_makes_a_unique_entry_and_removes_it(tmp_path: Path) -> None:
    made: list[Path] = []
    fake_mkdir, fake_rmdir = fake_configfs_tsm("sev_guest")

    def mkdir(entry: Path) -> None:
        made.append(entry)
        fake_mkdir(entry)

    for _ in range(2):
        assert _probes.read_tsm_provider(tmp_path, mkdir=mkdir, rmdir=fake_rmdir) == "sev_guest"
    assert len(set(made)) == 2
    assert all(entry.parent == tmp_path for entry in made)
    assert list(tmp_path.iterdir()) == []


def test_read_tsm_provider_removes_its_entry_when_provider_is_missing(tmp_path: Path) -> None:
    # A plain directory has no attributes: the real mkdir/rmdir, and no provider.
    with pytest.raises(FileNotFoundError):
        _probes.read_tsm_provider(tmp_path)
    assert list(tmp_path.iterdir()) == []
    make_tree(tmp_path, {"sys/kernel/config/tsm/report/": ""})
    probes = stub_probes(tsm_provider=_probes.read_tsm_provider)
    snp = report(probe_platform(tmp_path, probes), "snp")
    assert checks(snp)["guest: configfs-tsm provider"].detail.startswith(
        "report entry failed: ENOENT"
    )


# -- tdx -------------------------------------------------------------------------


def test_tdx_guest_is_found_through_configfs_tsm(tmp_path: Path) -> None:
    make_tree(tmp_path, {"dev/tdx_guest": "", "sys/kernel/config/tsm/report/": ""})
    reports = probe_platform(tmp_path, stub_probes(tsm_provider=tsm_reader("tdx_guest")))
    tdx, snp = report(reports, "tdx"), report(reports, "snp")
    assert tdx.available
    assert "this machine is a TDX guest" in tdx.summary
    assert all(c.passed for c in tdx.checks if c.name.startswith("guest: "))
    assert not snp.available


def test_tdx_guest_needs_its_device_or_configfs_tsm(tmp_path: Path) -> None:
    make_tree(tmp_path, {"sys/kernel/config/tsm/report/": ""})
    tdx = report(probe_platform(tmp_path, stub_probes(tsm_provider=tsm_reader("tdx_guest"))), "tdx")
    assert tdx.available  # quotes come through configfs-tsm
    assert not checks(tdx)["guest: /dev/tdx_guest"].passed
    tdx = report(probe_platform(tmp_path / "nothing", stub_probes()), "tdx")
    assert not tdx.available
    assert "/dev/tdx_guest is absent" in tdx.summary


@pytest.mark.parametrize(("value", "enabled"), [("Y", True), ("1", True), ("N", False)])
def test_tdx_host_needs_kvm_intel_tdx(tmp_path: Path, value: str, enabled: bool) -> None:
    make_tree(tmp_path, {"sys/module/kvm_intel/parameters/tdx": value, "dev/kvm": ""})
    tdx = report(probe_platform(tmp_path, with_qemu()), "tdx")
    assert checks(tdx)["host: kvm_intel tdx"].passed is enabled
    assert not tdx.available  # a host, not a guest
    assert ("this host can launch TDX guests" in tdx.summary) is enabled


def test_tdx_host_without_qemu_is_unavailable(tmp_path: Path) -> None:
    make_tree(tmp_path, {"sys/module/kvm_intel/parameters/tdx": "Y", "dev/kvm": ""})
    tdx = report(probe_platform(tmp_path, stub_probes()), "tdx")
    assert not tdx.available
    assert checks(tdx)["host: vm backend with KVM"].detail.endswith("here: no QEMU")


# -- sgx -------------------------------------------------------------------------

CPUINFO_SGX = "processor\t: 0\nflags\t\t: fpu vme sgx sgx_lc avx2\n\nprocessor\t: 1\n"


def test_sgx_is_supported_with_cpu_flag_and_both_devices(tmp_path: Path) -> None:
    make_tree(
        tmp_path,
        {"proc/cpuinfo": CPUINFO_SGX, "dev/sgx_enclave": "", "dev/sgx_provision": ""},
    )
    sgx = report(probe_platform(tmp_path, stub_probes()), "sgx")
    assert sgx.available
    assert checks(sgx)["CPU supports SGX"].detail == "CPU flag sgx, sgx_lc"
    assert sgx.summary.startswith("supported here")


@pytest.mark.parametrize(
    ("files", "missing"),
    [
        ({"proc/cpuinfo": CPUINFO_SGX, "dev/sgx_enclave": ""}, "/dev/sgx_provision"),
        ({"proc/cpuinfo": CPUINFO_SGX, "dev/sgx_provision": ""}, "/dev/sgx_enclave"),
        (
            {"proc/cpuinfo": "flags\t: fpu avx2\n", "dev/sgx_enclave": "", "dev/sgx_provision": ""},
            "CPU supports SGX",
        ),
    ],
)
def test_sgx_is_unavailable_when_something_is_missing(
    tmp_path: Path, files: dict[str, str], missing: str
) -> None:
    make_tree(tmp_path, files)
    sgx = report(probe_platform(tmp_path, stub_probes()), "sgx")
    assert not sgx.available
    assert [c.name for c in sgx.checks if not c.passed] == [missing]


# -- most_isolating_available ----------------------------------------------------


def fake_report(
    name: str, *, available: bool = True, implemented: bool = True, accelerator: str | None = None
) -> BackendReport:
    if name == "vm" and available and accelerator is None:
        accelerator = "kvm"
    return BackendReport(
        name=name,
        available=available,
        implemented=implemented,
        checks=(Check("stub", available, "stub"),),
        isolation="stub",
        summary="stub",
        accelerator=accelerator,
    )


def every_backend(**changes: Mapping[str, object]) -> list[BackendReport]:
    return [
        fake_report(name, **changes.get(name, {}))  # type: ignore[arg-type]
        for name in platform.BACKENDS
    ]


def test_most_isolating_prefers_hardware_backends_in_order() -> None:
    reports = every_backend()
    expected = ["snp", "tdx", "sgx", "process", "vm", "nil"]
    for name in expected:
        assert most_isolating_available(reports) == name
        reports = [r for r in reports if r.name != name]


def test_most_isolating_skips_unavailable_and_unimplemented_backends() -> None:
    reports = every_backend(
        snp={"available": False},
        tdx={"implemented": False},
        sgx={"available": False},
        process={"available": False},
    )
    assert most_isolating_available(reports) == "vm"


def test_the_vm_backend_is_taken_only_when_asked_even_with_kvm() -> None:
    """A VM boots per run: the default stays the process keep where it works."""
    reports = every_backend(snp={"available": False}, tdx={"available": False})
    reports = [r for r in reports if r.name != "sgx"]
    assert most_isolating_available(reports) == "process"


def test_most_isolating_ranks_a_tcg_vm_above_nil() -> None:
    tcg = {"accelerator": "tcg"}
    reports = every_backend(snp={"available": False}, tdx={"available": False}, vm=tcg)
    reports = [r for r in reports if r.name != "sgx"]
    assert most_isolating_available(reports) == "process"
    without_process = [r for r in reports if r.name != "process"]
    assert most_isolating_available(without_process) == "vm"


def test_most_isolating_is_process_on_an_snp_host(tmp_path: Path) -> None:
    """An SNP host runs SNP guests through the vm backend; snp itself runs in place."""
    make_tree(
        tmp_path, {"dev/kvm": "", "dev/sev": "", "sys/module/kvm_amd/parameters/sev_snp": "Y"}
    )
    reports = probe_platform(tmp_path, with_qemu())
    assert all(c.passed for c in report(reports, "snp").checks if c.name.startswith("host: "))
    assert not report(reports, "snp").available
    assert most_isolating_available(reports) == "process"


def test_most_isolating_is_snp_inside_an_snp_guest(tmp_path: Path) -> None:
    make_tree(tmp_path, {"dev/sev-guest": ""})
    assert most_isolating_available(probe_platform(tmp_path, stub_probes())) == "snp"


def test_most_isolating_without_a_usable_backend_is_an_error() -> None:
    with pytest.raises(ValueError, match="no backend"):
        most_isolating_available([fake_report("nil", available=False)])


def test_reports_are_valid_from_birth() -> None:
    with pytest.raises(ValueError, match="one line"):
        Check("name", True, "two\nlines")
    with pytest.raises(ValueError, match="unknown backend"):
        fake_report("docker")
    with pytest.raises(ValueError, match="accelerator"):
        fake_report("process", accelerator="kvm")
    with pytest.raises(ValueError, match="accelerator"):
        fake_report("vm", accelerator="hvf")
    with pytest.raises(ValueError, match="exactly when"):
        BackendReport("vm", True, False, (), "stub", "stub", accelerator=None)


# -- nothing crashes -------------------------------------------------------------


def test_an_empty_root_raises_nothing(tmp_path: Path) -> None:
    reports = probe_platform(tmp_path / "nothing-here")
    assert [r.name for r in reports] == list(platform.BACKENDS)
    # The process keep's probes ask the kernel, not the file tree.
    assert most_isolating_available(reports) == "process"
    for name in ("snp", "tdx", "sgx"):
        assert not report(reports, name).available


def test_files_where_directories_should_be_raise_nothing(tmp_path: Path) -> None:
    make_tree(tmp_path, {"sys": "", "dev": "", "proc": ""})
    reports = probe_platform(tmp_path, with_qemu())
    assert not report(reports, "sgx").available
    assert report(reports, "vm").accelerator == "tcg"


def test_every_probe_raising_oserror_raises_nothing(tmp_path: Path) -> None:
    make_tree(tmp_path, {"dev/kvm": "", "sys/kernel/config/tsm/report/": ""})

    def broken(*_args: object) -> NoReturn:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    probes = Probes(**{field.name: broken for field in dataclasses.fields(Probes)})
    reports = probe_platform(tmp_path, probes)
    vm = report(reports, "vm")
    assert not vm.available
    assert checks(vm)["qemu-system-x86_64"].detail == "EIO (Input/output error)"
    assert not report(reports, "process").available
    assert checks(report(reports, "snp"))["guest: configfs-tsm provider"].detail.endswith(
        "EIO (Input/output error)"
    )


def test_a_child_probe_that_takes_too_long_is_a_failed_check() -> None:
    result = _probes.run_child_probe("no-new-privs", timeout=0.001)
    assert result == ProbeResult(False, "the probe did not finish within 0.001 s")


def test_a_child_probe_that_crashes_is_a_failed_check() -> None:
    result = _probes.run_child_probe("no-such-probe")
    assert not result.passed
    assert result.detail.startswith("the probe process failed (1): KeyError")


# -- the command line ------------------------------------------------------------


def test_platform_info_json_has_a_stable_shape() -> None:
    result = CliRunner().invoke(main, ["platform", "info", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert set(document) == {"version", "backends", "default_backend"}
    assert document["version"] == 1
    assert document["default_backend"] == "process"
    assert [b["name"] for b in document["backends"]] == list(platform.BACKENDS)
    for backend in document["backends"]:
        assert set(backend) == {
            "name",
            "available",
            "implemented",
            "accelerator",
            "isolation",
            "summary",
            "checks",
        }
        assert isinstance(backend["available"], bool)
        assert backend["implemented"] is (backend["name"] != "sgx")
        for check in backend["checks"]:
            assert set(check) == {"name", "passed", "detail"}
            assert isinstance(check["passed"], bool)


def test_platform_document_matches_the_reports(tmp_path: Path) -> None:
    reports = probe_platform(tmp_path, with_qemu())
    document = platform_document(reports)
    vm = document["backends"][2]
    assert vm["name"] == "vm"
    assert vm["accelerator"] == "tcg"
    assert vm["checks"][0] == {
        "name": "qemu-system-x86_64",
        "passed": True,
        "detail": "QEMU emulator version 9.2.0",
    }


def test_platform_info_prints_a_table_per_backend_and_the_default() -> None:
    result = CliRunner().invoke(main, ["platform", "info"])
    assert result.exit_code == 0, result.output
    for name in platform.BACKENDS:
        assert f"{name}: " in result.output
    assert "Landlock" in result.output
    assert result.output.rstrip().endswith("default backend: process")


# -- the real probes, on this machine ----------------------------------------------


def test_real_process_probes_pass_here() -> None:
    for probe in (
        _probes.probe_seccomp,
        _probes.probe_landlock,
        _probes.probe_user_namespaces,
        _probes.probe_no_new_privs,
    ):
        result = probe()
        assert result.passed, f"{probe.__name__}: {result.detail}"
    assert _probes.probe_landlock().detail.startswith("ABI version ")


def test_probes_that_change_process_state_leave_the_caller_alone() -> None:
    nnp_before = _proc_status_field("NoNewPrivs")
    namespace_before = os.readlink("/proc/self/ns/user")
    assert _probes.probe_no_new_privs().passed
    assert _probes.probe_user_namespaces().passed
    assert _proc_status_field("NoNewPrivs") == nnp_before
    assert os.readlink("/proc/self/ns/user") == namespace_before


def _proc_status_field(name: str) -> str:
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    raise AssertionError(f"no {name} in /proc/self/status")


def test_real_kvm_guest_probe_fails_on_a_kvm_that_only_emulates() -> None:
    # This machine's KVM is PVM (kvm_pvm): it cannot run ordinary guests, and the
    # probe must say so rather than pass on the real-mode code PVM does emulate.
    if not Path("/sys/module/kvm_pvm").exists() or not Path("/dev/kvm").exists():
        pytest.skip("needs the PVM-backed /dev/kvm of the development machine")
    result = _probes.probe_kvm_run_guest(Path("/dev/kvm"))
    assert not result.passed
    assert "emulation failed" in result.detail


def test_guest_image_reaches_its_interrupt_handler_on_qemu(tmp_path: Path) -> None:
    """The KVM probe's guest is correct x86: on QEMU's TCG, as a boot sector, it
    enters protected mode and its interrupt handler writes its byte."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("needs qemu-system-x86_64")
    image = _child.guest_image(0x7C00)
    boot_sector = tmp_path / "boot.img"
    boot_sector.write_bytes(image + bytes(510 - len(image)) + b"\x55\xaa")
    debug_console = tmp_path / "debugcon.out"
    command = [qemu, "-accel", "tcg", "-display", "none", "-no-reboot", "-nodefaults"]
    command += ["-debugcon", f"file:{debug_console}", "-drive", f"format=raw,file={boot_sector}"]
    with subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    ) as process:
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and process.poll() is None:
                if debug_console.exists() and debug_console.read_bytes():
                    break
                time.sleep(0.05)
        finally:
            process.kill()
    assert debug_console.read_bytes() == bytes([_child.GUEST_BYTE])


def test_real_platform_info_is_consistent_and_fast() -> None:
    started = time.monotonic()
    reports = probe_platform()
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"probe_platform took {elapsed:.2f} s"
    process = report(reports, "process")
    assert process.available, process.summary
    vm = report(reports, "vm")
    qemu, runs = checks(vm)["qemu-system-x86_64"], checks(vm)["KVM runs a guest"]
    if not qemu.passed:
        assert vm.accelerator is None
    else:
        assert vm.accelerator == ("kvm" if runs.passed else "tcg")
    if Path("/sys/module/kvm_pvm").exists() and qemu.passed:
        assert vm.accelerator == "tcg"
        assert "software emulation (TCG), slow" in vm.summary
    assert most_isolating_available(reports) == "process"


def test_the_child_script_uses_the_standard_library_only() -> None:
    # It runs with -I -S: no site-packages, so no wasmkeep and no third party.
    completed = subprocess.run(
        [sys.executable, "-I", "-S", "-c", f"import runpy; runpy.run_path({_child.__file__!r})"],
        capture_output=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
