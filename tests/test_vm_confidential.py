"""Confidential VM keeps (SEV-SNP, TDX), the snp and tdx backends that run in
place inside such a guest, and the expected SNP launch digest.

This machine has no SEV-SNP or TDX hardware and QEMU 7.2 (older than
sev-snp-guest and tdx-guest): everything here is tested without booting
anything. qemu's command lines are checked as text against QEMU's
documentation; the choice of a confidential VM against fake platform reports
(a fake /sys and /dev behind the real probes, as in test_platform.py); the
keep's own choice of backend against fake trees and the fake configfs-tsm of
test_evidence_collection.py; the launch digest against a synthetic AmdSev
firmware made here (`synthetic_ovmf`), since Debian 12 ships none. Debian's
own OVMF.fd is used where it is installed, to show it is refused.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.steward_double import Authority, run_steward
from tests.test_evidence_collection import REPORT_DATA, FakeTsm
from tests.test_platform import make_tree, stub_probes, tsm_reader, with_qemu
from wasmkeep.cli.main import main
from wasmkeep.config import parse_config
from wasmkeep.errors import BackendUnavailable, KeepError
from wasmkeep.host import backends
from wasmkeep.host.platform import probe_platform
from wasmkeep.host.process_keep import ProcessKeepOptions, run_in_process_keep
from wasmkeep.host.setup import prepare_host
from wasmkeep.host.vm import confidential
from wasmkeep.host.vm.confidential import (
    FirmwareError,
    FirmwareNotFound,
    SevBits,
    check_firmware,
    choose_confidential,
    confidential_args,
    find_firmware,
    host_flags,
    parse_qemu_version,
    probe_sev_bits,
    qemu_unsupported,
)
from wasmkeep.host.vm.image import VmImage
from wasmkeep.host.vm.launch import PLAIN_MACHINE, VmKeepOptions, qemu_command
from wasmkeep.host.vm.measure import MeasurementError, measure_snp
from wasmkeep.keep import process
from wasmkeep.keep.evidence import (
    SEV_GUEST_DEVICE,
    TDX_GUEST_DEVICE,
    TSM_REPORT_DIR,
    CollectionError,
    EvidenceKind,
    collect_evidence,
)
from wasmkeep.keep.vm import guest_backend
from wasmkeep.workload import Workload

Build = Callable[[str], Path]
DEBIAN_OVMF = Path("/usr/share/ovmf/OVMF.fd")
SNP_HOST = {"sys/module/kvm_amd/parameters/sev_snp": "Y\n", "dev/sev": "", "dev/kvm": ""}
TDX_HOST = {"sys/module/kvm_intel/parameters/tdx": "Y\n", "dev/kvm": ""}


# -- a synthetic AmdSev firmware ----------------------------------------------------------
#
# What sev-snp-measure reads of an OVMF (sevsnpmeasure/ovmf.py, after edk2's
# OvmfPkg/ResetVector): a table of GUID-tagged entries that ends 32 bytes
# before the end of the image, read backwards from a footer entry; each entry
# is its data, then a 2-byte size (data + 18) and its GUID. The SEV metadata
# entry gives the offset from the end of an "ASEV" header listing sections
# (gpa, size, type); SNP_KERNEL_HASHES (0x10) is what only AmdSev builds have.

_FOOTER = "96b582de-1fb2-45f7-baea-a366c55a082d"
_HASH_TABLE = "7255371f-3a3b-4b04-927b-1da6efa8d454"
_RESET_BLOCK = "00f771de-1a7e-4fcb-890e-68c77e2fb44e"
_METADATA = "dc886566-984a-4798-a75e-5585a7bf67cc"
_SECTIONS = ((0x800000, 0x1000, 1), (0x801000, 0x1000, 2), (0x802000, 0x1000, 3))
_KERNEL_HASHES = (0x803000, 0x1000, 0x10)


def _entry(guid: str, data: bytes) -> bytes:
    return data + struct.pack("<H", len(data) + 18) + uuid.UUID(guid).bytes_le


def synthetic_ovmf(path: Path, *, kernel_hashes: bool = True, pages: int = 16) -> Path:
    """A firmware image with the tables of an AmdSev OVMF and no code."""
    image = bytearray(pages * 4096)
    sections = (*_SECTIONS, _KERNEL_HASHES) if kernel_hashes else _SECTIONS
    header_at = len(image) - 2 * 4096
    header = b"ASEV" + struct.pack("<III", 16 + 12 * len(sections), 1, len(sections))
    header += b"".join(struct.pack("<III", *section) for section in sections)
    image[header_at : header_at + len(header)] = header
    table = _entry(_RESET_BLOCK, struct.pack("<II", 0xFFFFF000, 0))
    table += _entry(_HASH_TABLE, struct.pack("<II", 0x803C00, 0x400))
    table += _entry(_METADATA, struct.pack("<I", len(image) - header_at))
    table += struct.pack("<H", len(table) + 18) + uuid.UUID(_FOOTER).bytes_le  # the footer
    end = len(image) - 32
    image[end - len(table) : end] = table
    path.write_bytes(bytes(image))
    return path


def fake_image(directory: Path, cmdline: str = "console=ttyS0 panic=-1") -> VmImage:
    """A keep image as VmImage.load reads it: a kernel, an initrd, image.json."""
    import hashlib

    directory.mkdir(parents=True, exist_ok=True)
    kernel, initrd = b"MZ a kernel " * 100, b"\x1f\x8b an initrd " * 100
    (directory / "vmlinuz").write_bytes(kernel)
    (directory / "initrd.img").write_bytes(initrd)
    (directory / "files.txt").write_text("")
    document = {
        "format": 1,
        "key": "0123456789abcdef",
        "cmdline": cmdline,
        "kernel": {
            "version": "6.1.0-test",
            "sha256": hashlib.sha256(kernel).hexdigest(),
            "size": len(kernel),
        },
        "initrd": {
            "sha256": hashlib.sha256(initrd).hexdigest(),
            "size": len(initrd),
            "files": 0,
        },
        "python": {"version": "3.11.2"},
        "packages": {},
        "wasmkeep": "0.1.0",
    }
    (directory / "image.json").write_text(json.dumps(document))
    return VmImage.load(directory, verify=True)


# -- qemu's command line --------------------------------------------------------------------


def options(kind: str | None, firmware: Path | None = Path("/fw/firmware.fd")) -> VmKeepOptions:
    return VmKeepOptions(
        keep=ProcessKeepOptions(max_memory=64 << 20),
        kernel=Path("/images/vmlinuz"),
        initrd=Path("/images/initrd.img"),
        cmdline="console=ttyS0 panic=-1",
        confidential=kind,
        firmware=firmware,
    )


def command(kind: str, sev_bits: SevBits | None = None) -> list[str]:
    return qemu_command(
        options(kind), "kvm", Path("/p/sallyport"), Path("/p/console"), 900, sev_bits
    )


def argument(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, item in enumerate(command) if item == flag]


def test_an_snp_keep_is_a_q35_guest_with_measured_kernel_initrd_and_cmdline() -> None:
    snp = command("snp")
    assert argument(snp, "-machine") == ["q35,confidential-guest-support=sev0"]
    assert argument(snp, "-object") == [
        "sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on"
    ]
    assert argument(snp, "-bios") == ["/fw/firmware.fd"]
    assert argument(snp, "-accel") == ["kvm"]
    # The vCPU model is in the launch digest: the one `vm measure` assumes.
    assert argument(snp, "-cpu") == [confidential.SNP_CPU]
    assert argument(snp, "-smp") == [str(confidential.SNP_VCPUS)]
    assert argument(snp, "-kernel") == ["/images/vmlinuz"]
    assert argument(snp, "-initrd") == ["/images/initrd.img"]
    assert argument(snp, "-append") == ["console=ttyS0 panic=-1"]
    assert argument(snp, "-m") == ["900M"]
    # The port is on PCI, through the DMA API: the guest's memory is private.
    assert argument(snp, "-device") == [
        "virtio-serial-pci,disable-legacy=on,iommu_platform=on",
        "virtserialport,chardev=sallyport,name=sallyport",
    ]
    assert not any("microvm" in item for item in snp)
    for absent in ("-netdev", "-nic", "-drive", "-virtfs", "-vnc", "-pflash"):
        assert absent not in snp
    probed = command("snp", SevBits(47, 5))
    assert argument(probed, "-object") == [
        "sev-snp-guest,id=sev0,cbitpos=47,reduced-phys-bits=5,kernel-hashes=on"
    ]


def test_a_tdx_keep_is_a_q35_guest_with_a_split_irqchip_and_a_quote_socket() -> None:
    tdx = command("tdx")
    assert argument(tdx, "-machine") == ["q35,kernel-irqchip=split,confidential-guest-support=tdx0"]
    (guest,) = argument(tdx, "-object")
    assert json.loads(guest) == {
        "qom-type": "tdx-guest",
        "id": "tdx0",
        "quote-generation-socket": {"type": "vsock", "cid": "2", "port": "4050"},
    }
    assert argument(tdx, "-bios") == ["/fw/firmware.fd"]
    assert argument(tdx, "-cpu") == ["host"]
    assert argument(tdx, "-accel") == ["kvm"]
    assert argument(tdx, "-device")[0] == confidential.SERIAL_DEVICE


def test_an_ordinary_vm_is_unchanged() -> None:
    plain = qemu_command(options(None), "tcg", Path("/s"), Path("/c"), 700)
    assert argument(plain, "-machine") == [PLAIN_MACHINE]
    assert "-bios" not in plain
    assert "-object" not in plain
    assert argument(plain, "-device")[0] == "virtio-serial-pci"


def test_a_confidential_command_line_needs_a_known_kind_and_firmware() -> None:
    with pytest.raises(ValueError, match="needs its firmware"):
        qemu_command(options("snp", firmware=None), "kvm", Path("/s"), Path("/c"), 700)
    with pytest.raises(ValueError, match="unknown kind"):
        confidential_args("sev", Path("/fw"))


# -- the firmware ---------------------------------------------------------------------------


def test_no_firmware_names_where_it_looked_and_the_way_out(tmp_path: Path) -> None:
    looked = [tmp_path / "OVMF.amdsev.fd", tmp_path / "elsewhere" / "OVMF.amdsev.fd"]
    with pytest.raises(FirmwareNotFound) as caught:
        find_firmware("snp", looked)
    text = caught.value.diagnostics()
    assert f"looked for {looked[0]}, {looked[1]}" in text
    assert "--firmware" in text
    assert "OvmfPkg/AmdSev" in text
    assert caught.value.exit_status == 2
    with pytest.raises(FirmwareNotFound, match="no TDX firmware found"):
        find_firmware("tdx", looked)


def test_a_firmware_without_kernel_hashes_is_passed_over(tmp_path: Path) -> None:
    plain = synthetic_ovmf(tmp_path / "plain.fd", kernel_hashes=False)
    amdsev = synthetic_ovmf(tmp_path / "amdsev.fd")
    assert find_firmware("snp", [tmp_path / "absent.fd", plain, amdsev]) == amdsev
    with pytest.raises(FirmwareNotFound, match="has no kernel-hashes page: it is not an AmdSev"):
        find_firmware("snp", [plain])
    # A TDVF is not parsed here: any image of whole pages is taken.
    assert find_firmware("tdx", [plain]) == plain


@pytest.mark.skipif(not DEBIAN_OVMF.is_file(), reason="Debian's ovmf is not installed")
def test_debians_ovmf_cannot_measure_the_keep() -> None:
    """Debian 12's OVMF.fd has SEV metadata but no kernel-hashes page."""
    with pytest.raises(FirmwareError, match="no kernel-hashes page"):
        check_firmware("snp", DEBIAN_OVMF)


@pytest.mark.parametrize(
    ("contents", "message"),
    [(b"", "not a firmware image"), (b"x" * 5000, "not a firmware image")],
)
def test_what_is_not_a_firmware(tmp_path: Path, contents: bytes, message: str) -> None:
    path = tmp_path / "firmware.fd"
    path.write_bytes(contents)
    with pytest.raises(FirmwareError, match=message):
        check_firmware("snp", path)
    with pytest.raises(FirmwareError, match="cannot read"):
        check_firmware("snp", tmp_path / "absent.fd")
    with pytest.raises(FirmwareError, match="not a firmware image"):
        check_firmware("tdx", tmp_path)
    path.write_bytes(bytes(8192))  # pages, but no tables
    with pytest.raises(FirmwareError, match="no SEV metadata"):
        check_firmware("snp", path)


# -- qemu's version and the choice ----------------------------------------------------------


def test_qemu_versions() -> None:
    debian = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"
    assert parse_qemu_version(debian) == (7, 2, 22)
    assert parse_qemu_version("/usr/bin/qemu: QEMU emulator version 10.1.0") == (10, 1, 0)
    assert parse_qemu_version("QEMU emulator version 9.1") == (9, 1, 0)
    assert parse_qemu_version("nothing like it") is None
    assert qemu_unsupported("snp", (7, 2, 22)) == (
        "QEMU 7.2.22 is too old: QEMU 9.1 or later (the first with sev-snp-guest) is needed"
    )
    assert qemu_unsupported("snp", (9, 1, 0)) is None
    assert qemu_unsupported("tdx", (9, 2, 0)) is not None
    assert qemu_unsupported("tdx", (10, 1, 0)) is None
    assert qemu_unsupported("tdx", (11, 0, 0)) is None
    assert "version is unknown" in str(qemu_unsupported("snp", None))


def test_this_machines_qemu_predates_both() -> None:
    version = confidential.qemu_version("qemu-system-x86_64")
    if version is None:
        pytest.skip("no qemu here")
    if version >= (10, 1):
        pytest.skip(f"this qemu is {version}")
    assert qemu_unsupported("tdx", version) is not None


class Chooser:
    """choose_confidential over a fake machine, with a firmware for `kind` only."""

    def __init__(self, tmp_path: Path, tree: dict[str, str], kind: str = "snp") -> None:
        make_tree(tmp_path / "root", tree)
        self.reports = probe_platform(tmp_path / "root", with_qemu())
        absent = (tmp_path / "absent.fd",)
        self.candidates = {"snp": absent, "tdx": absent}
        self.candidates[kind] = (synthetic_ovmf(tmp_path / f"{kind}.fd"),)

    def __call__(
        self, requested: str, version: tuple[int, ...] | None, firmware: Path | None = None
    ) -> confidential.ConfidentialChoice:
        return choose_confidential(
            requested, self.reports, version, firmware=firmware, candidates=self.candidates
        )


def test_auto_launches_snp_where_the_host_qemu_and_firmware_allow(tmp_path: Path) -> None:
    choose = Chooser(tmp_path, SNP_HOST)
    chosen = choose("auto", (9, 1, 0))
    assert (chosen.kind, chosen.firmware) == ("snp", tmp_path / "snp.fd")
    assert choose("snp", (9, 2, 0)).kind == "snp"
    assert choose("off", (9, 2, 0)).kind is None
    # QEMU 7.2, as here: an ordinary VM, and why.
    old = choose("auto", (7, 2, 22))
    assert old.kind is None
    assert "QEMU 7.2.22 is too old" in old.why
    # Asked for by name: refused, naming what is missing.
    with pytest.raises(BackendUnavailable, match=r"as an SEV-SNP guest: QEMU 7\.2\.22 is too old"):
        choose("snp", (7, 2, 22))
    with pytest.raises(BackendUnavailable, match="this host cannot launch TDX guests"):
        choose("tdx", (10, 1, 0))


def test_auto_without_a_firmware_is_an_ordinary_vm(tmp_path: Path) -> None:
    choose = Chooser(tmp_path, SNP_HOST, kind="tdx")  # a TDVF, no SNP firmware
    chosen = choose("auto", (9, 1, 0))
    assert chosen.kind is None
    assert "no SEV-SNP firmware found" in chosen.why
    with pytest.raises(BackendUnavailable, match="no SEV-SNP firmware found") as caught:
        choose("snp", (9, 1, 0))
    assert "--firmware" in caught.value.diagnostics()
    # Given on the command line, it is checked, not searched for.
    given = synthetic_ovmf(tmp_path / "given.fd")
    assert choose("snp", (9, 1, 0), firmware=given).firmware == given
    with pytest.raises(BackendUnavailable, match="no kernel-hashes page"):
        choose("snp", (9, 1, 0), firmware=synthetic_ovmf(tmp_path / "p.fd", kernel_hashes=False))


def test_auto_launches_tdx_on_a_tdx_host(tmp_path: Path) -> None:
    choose = Chooser(tmp_path, TDX_HOST, kind="tdx")
    assert choose("auto", (10, 1, 0)).kind == "tdx"
    assert choose("auto", (9, 2, 0)).kind is None
    with pytest.raises(BackendUnavailable, match=r"QEMU 10\.1 or later"):
        choose("tdx", (9, 2, 0))


def test_an_ordinary_host_gets_an_ordinary_vm(tmp_path: Path) -> None:
    choose = Chooser(tmp_path, {"dev/kvm": ""})
    chosen = choose("auto", (10, 1, 0))
    assert chosen.kind is None
    assert "SEV-SNP: this host cannot launch SEV-SNP guests (kvm_amd sev_snp:" in chosen.why
    with pytest.raises(BackendUnavailable, match=r"\(kvm_amd sev_snp: kvm_amd is not loaded"):
        choose("snp", (10, 1, 0))
    # An SNP host whose KVM cannot run guests is no SNP host.
    make_tree(tmp_path / "kvmless", {"sys/module/kvm_amd/parameters/sev_snp": "Y", "dev/sev": ""})
    reports = probe_platform(tmp_path / "kvmless", stub_probes())
    assert choose_confidential("auto", reports, (10, 1, 0)).kind is None


def test_the_first_look_reads_only_the_kvm_switches(tmp_path: Path) -> None:
    assert host_flags(tmp_path) == ()
    make_tree(tmp_path, {"sys/module/kvm_amd/parameters/sev_snp": "N\n"})
    assert host_flags(tmp_path) == ()
    make_tree(tmp_path, {"sys/module/kvm_amd/parameters/sev_snp": "Y\n"})
    make_tree(tmp_path, {"sys/module/kvm_intel/parameters/tdx": "1\n"})
    assert host_flags(tmp_path) == ("snp", "tdx")


def test_the_c_bit_comes_from_cpuid_0x8000001f(tmp_path: Path) -> None:
    device = tmp_path / "cpuid"
    assert probe_sev_bits(device) is None
    with device.open("wb") as file:  # sparse: the leaf is the file offset
        file.seek(0x8000001F)
        file.write(struct.pack("<4I", 0x1B, 51 | (1 << 6), 509, 100))
    assert probe_sev_bits(device) == SevBits(51, 1)
    with device.open("r+b") as file:
        file.seek(0x8000001F)
        file.write(bytes(16))
    assert probe_sev_bits(device) is None  # no SEV: the leaf is empty


# -- the keep decides its own backend ---------------------------------------------------


def test_the_vm_keep_is_snp_or_tdx_from_what_its_kernel_offers(tmp_path: Path) -> None:
    assert guest_backend(tmp_path / "plain") == "vm"
    tsm = tmp_path / "tsm"
    (tsm / TSM_REPORT_DIR).mkdir(parents=True)
    fake = FakeTsm(provider=b"sev_guest\n")
    assert guest_backend(tsm, fake) == "snp"
    assert guest_backend(tsm, FakeTsm(provider=b"tdx_guest\n")) == "tdx"
    assert guest_backend(tsm, FakeTsm(provider=b"arm_cca_guest\n")) == "vm"
    assert fake.entries == {}  # the entry it made to ask is gone
    assert "outblob" not in fake.reads  # and no report was made
    refused = FakeTsm(mkdir_error=13)
    assert guest_backend(tsm, refused) == "vm"
    for relative, backend in ((SEV_GUEST_DEVICE, "snp"), (TDX_GUEST_DEVICE, "tdx")):
        root = make_tree(tmp_path / backend, {relative: ""})
        assert guest_backend(root) == backend
        assert guest_backend(root, refused) == backend


def test_a_vm_keep_that_is_snp_shows_hardware_evidence_or_none(tmp_path: Path) -> None:
    """What the keep decided is what evidence it must show: the fake configfs
    answers with the Genoa report; without it, there is no evidence at all,
    never software evidence (the rest is test_evidence_collection.py)."""
    (tmp_path / TSM_REPORT_DIR).mkdir(parents=True)
    fake = FakeTsm()
    backend = guest_backend(tmp_path, fake)
    collected = collect_evidence(REPORT_DATA, root=tmp_path, backend=backend, configfs=fake)
    assert collected.kind is EvidenceKind.SNP_REPORT
    (tmp_path / TSM_REPORT_DIR).rmdir()
    with pytest.raises(CollectionError, match="no snp evidence on this machine"):
        collect_evidence(REPORT_DATA, root=tmp_path, backend=backend)


# -- --backend snp and tdx: a process keep inside the guest ---------------------------------


def test_the_process_keep_is_process_snp_or_tdx() -> None:
    assert process._parse(["--sallyport-fd", "3"]) == (3, "process")
    assert process._parse(["--sallyport-fd", "3", "--backend", "snp"]) == (3, "snp")
    assert process._parse(["--sallyport-fd", "3", "--backend", "tdx"]) == (3, "tdx")
    for wrong in (["--sallyport-fd", "3", "--backend", "vm"], ["--sallyport-fd", "3", "snp"]):
        assert process._parse(wrong) is None
    snp = process.process_platform("snp")
    assert snp.backend == "snp"
    # The same lockdown as any process keep.
    for step in ("isolate", "leave_files", "seal"):
        assert getattr(snp, step) is getattr(process.PROCESS_KEEP, step)
    with pytest.raises(ValueError, match="not 'nil'"):
        process.process_platform("nil")


def test_the_keep_refuses_another_backend_from_its_command_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wasmkeep.keep", "--sallyport-fd", "0", "--backend", "nil"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert b"--backend process|snp|tdx" in result.stderr


def test_inside_a_guest_the_backend_is_available(tmp_path: Path) -> None:
    snp = make_tree(tmp_path / "snp", {"dev/sev-guest": ""})
    assert backends.confidential_guest_unsupported("snp", snp, stub_probes()) is None
    tdx = make_tree(tmp_path / "tdx", {"sys/kernel/config/tsm/report/": ""})
    tdx_guest = stub_probes(tsm_provider=tsm_reader("tdx_guest"))
    assert backends.confidential_guest_unsupported("tdx", tdx, tdx_guest) is None
    reason = backends.confidential_guest_unsupported("snp", tdx, tdx_guest)
    assert reason is not None
    assert reason == (
        "not inside an SEV-SNP guest: /dev/sev-guest is absent; "
        "configfs-tsm: provider is tdx_guest, not sev_guest"
    )


@pytest.mark.parametrize(("backend", "guest"), [("snp", "an SEV-SNP"), ("tdx", "a TDX")])
def test_run_in_place_refuses_outside_a_guest(example: Build, backend: str, guest: str) -> None:
    if backends.confidential_guest_unsupported(backend) is None:
        pytest.skip(f"this machine is {guest} guest")
    result = CliRunner().invoke(main, ["run", "--backend", backend, str(example("hello"))])
    assert result.exit_code == 1, result.output
    assert f"wasmkeep: error: not inside {guest} guest: " in result.output
    assert f"--backend {backend} runs the workload in place" in result.output
    assert "--backend vm makes its keep one" in result.output


def test_a_confidential_vm_keep_asked_for_here_is_refused(example: Build) -> None:
    """This machine has QEMU 7.2 and no SNP host support: named, not guessed."""
    result = CliRunner().invoke(
        main, ["run", "--backend", "vm", "--confidential", "snp", str(example("hello"))]
    )
    assert result.exit_code == 1, result.output
    assert "cannot launch the VM keep as an SEV-SNP guest: " in result.output
    result = CliRunner().invoke(
        main, ["run", "--backend", "vm", "--accel", "tcg", "--confidential", "tdx", "x.wasm"]
    )
    assert result.exit_code != 0


@pytest.mark.skipif(backends.process_keep_unsupported() is not None, reason="no process keep here")
def test_an_snp_process_keep_never_shows_software_evidence(example: Build, tmp_path: Path) -> None:
    """The whole way: the host starts the keep with --backend snp, the keep's
    platform is snp, its enrolment asks for snp evidence, and on a machine
    without any the run fails before the Steward hears a word."""
    if backends.confidential_guest_unsupported("snp") is None:
        pytest.skip("this machine is an SEV-SNP guest")
    ca = Authority.make(tmp_path)
    with run_steward(ca, tmp_path) as steward:
        text = f'steward = "{steward.url}"\nsteward_ca = "{ca.pem}"\n'
        executor, manifest = prepare_host(parse_config(text, base_dir=tmp_path), "hello.wasm")
        try:
            with pytest.raises(KeepError) as caught:
                run_in_process_keep(
                    Workload.from_file(example("hello")),
                    manifest,
                    executor,
                    ProcessKeepOptions(1 << 28, backend="snp"),
                )
        finally:
            executor.close_all()
        assert steward.received == []
    message = str(caught.value)
    assert "no evidence to present: no snp evidence on this machine" in message
    assert "software" not in message


# -- the expected launch digest -------------------------------------------------------------


def test_the_launch_digest_covers_firmware_kernel_initrd_cmdline_and_vcpus(
    tmp_path: Path,
) -> None:
    firmware = synthetic_ovmf(tmp_path / "OVMF.amdsev.fd")
    image = fake_image(tmp_path / "image")
    first = measure_snp(image, firmware)
    assert len(first.measurement) == 48
    assert len(first.hex) == 96
    assert measure_snp(image, firmware).measurement == first.measurement
    # Computed by sev-snp-measure from exactly the keep's launch.
    from sevsnpmeasure.guest import calc_launch_digest
    from sevsnpmeasure.sev_mode import SevMode
    from sevsnpmeasure.vcpu_types import CPU_SIGS

    direct = calc_launch_digest(
        SevMode.SEV_SNP,
        1,
        CPU_SIGS["EPYC-v4"],
        str(firmware),
        str(image.kernel),
        str(image.initrd),
        image.cmdline,
        0x1,
    )
    assert first.measurement == direct
    others = {
        "cmdline": measure_snp(fake_image(tmp_path / "other", "console=ttyS0"), firmware),
        "vcpus": measure_snp(image, firmware, vcpus=2),
        "vcpu type": measure_snp(image, firmware, vcpu_type="EPYC-Milan"),
        "features": measure_snp(image, firmware, guest_features=0x21),
    }
    (image.directory / "initrd.img").write_bytes(image.initrd.read_bytes()[:-1] + b"!")
    others["initrd"] = measure_snp(image, firmware)
    for what, other in others.items():
        assert other.measurement != first.measurement, what
    document = first.document()
    assert document["measurement"] == first.hex
    assert document["policy"] == {"snp": {"measurements": [first.hex]}}
    assert document["vcpu_type"] == "EPYC-v4"
    assert document["tool"].startswith("sev-snp-measure ")


def test_the_launch_digest_refuses_what_cannot_be_measured(tmp_path: Path) -> None:
    image = fake_image(tmp_path / "image")
    firmware = synthetic_ovmf(tmp_path / "OVMF.amdsev.fd")
    with pytest.raises(FirmwareError, match="no kernel-hashes page"):
        measure_snp(image, synthetic_ovmf(tmp_path / "plain.fd", kernel_hashes=False))
    with pytest.raises(MeasurementError, match="unknown vCPU type 'Pentium'"):
        measure_snp(image, firmware, vcpu_type="Pentium")
    with pytest.raises(MeasurementError, match="vCPUs"):
        measure_snp(image, firmware, vcpus=0)


def test_vm_measure_prints_the_digest_and_the_policy_to_pin_it(tmp_path: Path) -> None:
    firmware = synthetic_ovmf(tmp_path / "OVMF.amdsev.fd")
    image = fake_image(tmp_path / "image")
    expected = measure_snp(image, firmware).hex
    arguments = ["vm", "measure", "--image", str(image.directory), "--firmware", str(firmware)]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    assert expected in result.output
    assert f'[snp]\nmeasurements = ["{expected}"]' in result.output
    assert "1 x EPYC-v4" in result.output
    result = CliRunner().invoke(main, [*arguments, "--json", "--vcpus", "2"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["vcpus"] == 2
    assert document["measurement"] == measure_snp(image, firmware, vcpus=2).hex
    assert document["cmdline"] == image.cmdline
    assert document["firmware"]["path"] == str(firmware)


def test_vm_measure_without_a_firmware_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    looked = (tmp_path / "OVMF.amdsev.fd",)
    monkeypatch.setitem(confidential.FIRMWARE_CANDIDATES, "snp", looked)
    result = CliRunner().invoke(main, ["vm", "measure", "--image", str(tmp_path)])
    assert result.exit_code == 2
    assert f"no SEV-SNP firmware found (looked for {looked[0]})" in result.output
    assert "pass --firmware" in result.output
    plain = synthetic_ovmf(tmp_path / "plain.fd", kernel_hashes=False)
    result = CliRunner().invoke(main, ["vm", "measure", "--firmware", str(plain)])
    assert result.exit_code == 2
    assert "not an AmdSev build" in result.output
    bad = ["vm", "measure", "--image", str(tmp_path), "--firmware", str(plain)]
    result = CliRunner().invoke(main, [*bad[:-1], str(synthetic_ovmf(tmp_path / "ok.fd"))])
    assert result.exit_code == 1  # no image there
    assert "not a usable keep image" in result.output


def test_the_synthetic_firmware_is_read_as_sev_snp_measure_reads_ovmf(tmp_path: Path) -> None:
    """The generator above, checked against the parser it imitates."""
    from sevsnpmeasure.ovmf import OVMF, SectionType

    ovmf = OVMF(str(synthetic_ovmf(tmp_path / "OVMF.amdsev.fd")))
    assert ovmf.sev_es_reset_eip() == 0xFFFFF000
    assert ovmf.sev_hashes_table_gpa() == 0x803C00
    assert ovmf.has_metadata_section(SectionType.SNP_KERNEL_HASHES)
    assert ovmf.gpa() == (1 << 32) - 16 * 4096


def test_inside_a_guest_run_defaults_to_its_backend(tmp_path: Path) -> None:
    assert backends.confidential_guest(tmp_path) is None
    assert backends.confidential_guest(make_tree(tmp_path / "a", {"dev/sev-guest": ""})) == "snp"
    assert backends.confidential_guest(make_tree(tmp_path / "b", {"dev/tdx_guest": ""})) == "tdx"


def test_the_image_takes_the_confidential_modules_the_kernel_has(tmp_path: Path) -> None:
    from wasmkeep.host.vm import image as vm_image

    make_tree(
        tmp_path,
        {
            "modules.dep": "kernel/fs/configfs/configfs.ko:\n"
            "kernel/drivers/virt/coco/tsm.ko: kernel/fs/configfs/configfs.ko\n"
            "kernel/drivers/virt/coco/sev-guest/sev-guest.ko.xz: kernel/drivers/virt/coco/tsm.ko\n",
            "modules.builtin": "",
        },
    )
    found = vm_image._resolve_modules(tmp_path, vm_image.CONFIDENTIAL_MODULES, optional=True)
    assert [module.image_relative for module in found] == [
        "kernel/fs/configfs/configfs.ko",
        "kernel/drivers/virt/coco/tsm.ko",
        "kernel/drivers/virt/coco/sev-guest/sev-guest.ko",
    ]  # dependencies first; tsm_report and tdx_guest are not in this kernel
    with pytest.raises(vm_image.VmImageError, match="tdx_guest is neither"):
        vm_image._resolve_modules(tmp_path, ("tdx_guest",))


def test_the_guest_passes_over_confidential_modules_it_cannot_load(tmp_path: Path) -> None:
    from wasmkeep.keep import vm as keep_vm

    listing = tmp_path / "confidential-modules"
    listing.write_text(f"{tmp_path / 'absent.ko'}\n\n")
    keep_vm._load_modules(listing, required=False)
    with pytest.raises(FileNotFoundError):
        keep_vm._load_modules(listing)
