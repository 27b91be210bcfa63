"""Evidence collection inside a keep (`wasmkeep.keep.evidence`), against fakes.

No SEV-SNP or TDX guest is available here: a fake plays the kernel, both for
configfs-tsm (a temporary directory tree whose attributes the fake answers)
and for the guest devices (a plain file and an injected ioctl that fills the
driver's structures in memory, as the kernel would).
"""

from __future__ import annotations

import base64
import ctypes
import errno
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from wasmkeep.attestation.snp_capture import parse_tsm_json
from wasmkeep.attestation.software import parse_software_evidence
from wasmkeep.errors import KeepError
from wasmkeep.keep.evidence import (
    SNP_GET_EXT_REPORT,
    SNP_GET_REPORT,
    TDX_CMD_GET_REPORT0,
    TSM_REPORT_DIR,
    CollectionError,
    EvidenceKind,
    OsConfigfs,
    SnpExtReportReq,
    SnpGuestRequestIoctl,
    SnpReportReq,
    SnpReportResp,
    TdxReportReq,
    collect_evidence,
)

ASSETS = Path(__file__).parent / "assets" / "attestation"
REPORT_DATA = bytes(range(64))
DIGEST = "sha256:" + "ab" * 32


def genoa_capture() -> tuple[bytes, bytes]:
    """outblob and auxblob of the real Genoa configfs-tsm capture (its
    report_data is the vector's, not ours: collection does not check it)."""
    document = json.loads((ASSETS / "snp/genoa-veraison-tsm/tsm-report.json").read_text())

    def decode(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    return decode(document["outblob"]), decode(document["auxblob"])


OUTBLOB, AUXBLOB = genoa_capture()
TDX_QUOTE = (ASSETS / "tdx/trustee/tdx_quote_4.dat").read_bytes()


# -- a fake configfs-tsm ------------------------------------------------------------------


@dataclass
class _Entry:
    generation: int = 0
    inblob: bytes | None = None
    privlevel: bytes | None = None


@dataclass
class FakeTsm:
    """The kernel's configfs-tsm, played over a real directory tree.

    Entries are real directories (so cleanup can be seen); their attributes are
    answered here. `outblob(inblob)` makes the report; `races` is how many
    outblob reads another writer spoils by writing the entry in between.
    """

    provider: bytes = b"sev_guest\n"
    outblob: Callable[[bytes], bytes] = lambda inblob: OUTBLOB
    auxblob: bytes | None = AUXBLOB
    races: int = 0
    outblob_error: int | None = None
    mkdir_error: int | None = None
    entries: dict[Path, _Entry] = field(default_factory=dict)
    made: list[Path] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)

    def mkdir(self, path: Path) -> None:
        if self.mkdir_error is not None:
            raise OSError(self.mkdir_error, "fake mkdir refused")
        path.mkdir()
        self.entries[path] = _Entry()
        self.made.append(path)

    def rmdir(self, path: Path) -> None:
        path.rmdir()
        del self.entries[path]

    def read(self, path: Path, limit: int) -> bytes:
        entry = self.entries[path.parent]
        self.reads.append(path.name)
        if path.name == "provider":
            return self.provider
        if path.name == "generation":
            return f"{entry.generation}\n".encode()
        if path.name == "outblob":
            if self.outblob_error is not None:
                raise OSError(self.outblob_error, "fake outblob failed")
            assert entry.inblob is not None, "outblob read before inblob was written"
            if self.races:
                self.races -= 1
                entry.generation += 1  # someone else wrote inblob meanwhile
            return self.outblob(entry.inblob)
        if path.name == "auxblob":
            if self.auxblob is None:
                raise FileNotFoundError(errno.ENOENT, "no auxblob")
            return self.auxblob
        raise FileNotFoundError(errno.ENOENT, path.name)

    def write(self, path: Path, data: bytes) -> None:
        entry = self.entries[path.parent]
        if path.name == "inblob":
            assert len(data) <= 64
            entry.inblob = data
        elif path.name == "privlevel":
            entry.privlevel = data
        else:
            raise PermissionError(errno.EACCES, path.name)
        entry.generation += 1


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path


def tsm_root(root: Path) -> Path:
    report_dir = root / TSM_REPORT_DIR
    report_dir.mkdir(parents=True)
    return report_dir


def with_report_data(inblob: bytes) -> bytes:
    """The Genoa report with our report_data, as a real provider would give."""
    report = bytearray(OUTBLOB)
    report[0x50:0x90] = inblob
    return bytes(report)


# -- configfs-tsm -----------------------------------------------------------------------------


def test_configfs_tsm_snp(root: Path) -> None:
    report_dir = tsm_root(root)
    fake = FakeTsm()
    collected = collect_evidence(REPORT_DATA, root=root, backend="snp", configfs=fake)
    assert collected.kind is EvidenceKind.SNP_REPORT
    assert collected.source == "configfs-tsm"
    assert collected.provider == "sev_guest"
    assert collected.evidence == OUTBLOB
    assert collected.auxblob == AUXBLOB
    assert collected.report_data == REPORT_DATA
    assert collected.remote_verifiable
    # What the keep wrote is our report_data; the entry is gone afterwards.
    (entry,) = fake.made
    assert entry.parent == report_dir
    assert entry.name.startswith("wasmkeep-")
    assert not any(report_dir.iterdir())
    assert not fake.entries
    # generation read before the write and after both reads.
    assert fake.reads == ["provider", "generation", "outblob", "auxblob", "generation"]


def test_the_report_carries_our_report_data(root: Path) -> None:
    tsm_root(root)
    fake = FakeTsm(outblob=with_report_data)
    collected = collect_evidence(REPORT_DATA, root=root, backend="snp", configfs=fake)
    assert collected.evidence[0x50:0x90] == REPORT_DATA


def test_the_capture_file_is_what_the_verifier_reads(root: Path) -> None:
    tsm_root(root)
    collected = collect_evidence(REPORT_DATA, root=root, backend="snp", configfs=FakeTsm())
    evidence = parse_tsm_json(collected.to_file())
    assert evidence.report.raw == OUTBLOB
    assert evidence.vcek is not None and evidence.ask is not None and evidence.ark is not None


def test_configfs_tsm_tdx(root: Path) -> None:
    tsm_root(root)
    fake = FakeTsm(provider=b"tdx_guest\n", outblob=lambda inblob: TDX_QUOTE, auxblob=None)
    collected = collect_evidence(REPORT_DATA, root=root, backend="tdx", configfs=fake)
    assert collected.kind is EvidenceKind.TDX_QUOTE
    assert collected.provider == "tdx_guest"
    assert collected.evidence == TDX_QUOTE
    assert collected.auxblob == b""
    assert collected.to_file() == TDX_QUOTE


def test_privlevel_is_written_and_counted(root: Path) -> None:
    tsm_root(root)
    fake = FakeTsm()
    seen: list[bytes | None] = []

    def outblob(inblob: bytes) -> bytes:
        seen.append(next(iter(fake.entries.values())).privlevel)
        return OUTBLOB

    fake.outblob = outblob
    collected = collect_evidence(REPORT_DATA, root=root, backend="snp", privlevel=2, configfs=fake)
    assert collected.evidence == OUTBLOB
    assert seen == [b"2"]


def test_a_race_is_retried_in_a_new_entry(root: Path) -> None:
    report_dir = tsm_root(root)
    fake = FakeTsm(races=1)
    collected = collect_evidence(REPORT_DATA, root=root, backend="snp", configfs=fake)
    assert collected.evidence == OUTBLOB
    assert len(fake.made) == 2
    assert fake.made[0] != fake.made[1]
    assert not any(report_dir.iterdir())


def test_endless_races_give_up_and_clean_up(root: Path) -> None:
    report_dir = tsm_root(root)
    fake = FakeTsm(races=100)
    with pytest.raises(CollectionError, match="another writer raced every one of 3 attempts"):
        collect_evidence(REPORT_DATA, root=root, backend="snp", configfs=fake)
    assert len(fake.made) == 3
    assert not any(report_dir.iterdir())


def test_the_entry_is_removed_when_reading_fails(root: Path) -> None:
    report_dir = tsm_root(root)
    fake = FakeTsm(outblob_error=errno.EIO)
    # A process keep falls back to software evidence, saying why.
    collected = collect_evidence(REPORT_DATA, root=root, backend="process", configfs=fake)
    assert collected.kind is EvidenceKind.SOFTWARE
    assert any("configfs-tsm: fake outblob failed" in note for note in collected.notes)
    assert not any(report_dir.iterdir())


def test_a_tdx_keep_without_a_quoting_service_does_not_downgrade(root: Path) -> None:
    tsm_root(root)
    fake = FakeTsm(provider=b"tdx_guest\n", outblob_error=errno.EIO)
    with pytest.raises(CollectionError, match="no tdx evidence on this machine") as raised:
        collect_evidence(REPORT_DATA, root=root, backend="tdx", configfs=fake)
    assert "configfs-tsm: fake outblob failed" in str(raised.value)
    assert isinstance(raised.value, KeepError)


def test_an_unknown_provider_is_refused(root: Path) -> None:
    tsm_root(root)
    fake = FakeTsm(provider=b"arm_cca_guest\n")
    with pytest.raises(CollectionError, match="provider 'arm_cca_guest' is not one"):
        collect_evidence(REPORT_DATA, root=root, backend="process", configfs=fake)


def test_an_empty_outblob_is_refused(root: Path) -> None:
    tsm_root(root)
    fake = FakeTsm(outblob=lambda inblob: b"")
    with pytest.raises(CollectionError, match="empty outblob"):
        collect_evidence(REPORT_DATA, root=root, backend="snp", configfs=fake)


def test_an_entry_we_may_not_make_falls_through(root: Path) -> None:
    tsm_root(root)
    fake = FakeTsm(mkdir_error=errno.EACCES)
    collected = collect_evidence(REPORT_DATA, root=root, backend="vm", configfs=fake)
    assert collected.kind is EvidenceKind.SOFTWARE
    assert "configfs-tsm: fake mkdir refused" in collected.notes[0]


# -- the guest devices ---------------------------------------------------------------------------


def test_the_ioctl_numbers_and_structures_are_the_kernels() -> None:
    assert ctypes.sizeof(SnpReportReq) == 96
    assert ctypes.sizeof(SnpReportResp) == 4000
    assert ctypes.sizeof(SnpGuestRequestIoctl) == 32
    assert ctypes.sizeof(SnpExtReportReq) == 112
    assert ctypes.sizeof(TdxReportReq) == 1088
    assert SNP_GET_REPORT == 0xC0205300
    assert SNP_GET_EXT_REPORT == 0xC0205302
    assert TDX_CMD_GET_REPORT0 == 0xC4405401


def make_device(root: Path, name: str) -> Path:
    device = root / "dev" / name
    device.parent.mkdir(exist_ok=True)
    device.write_bytes(b"")
    return device


def msg_report_rsp(report: bytes, status: int = 0) -> bytes:
    """MSG_REPORT_RSP: status, report size, 24 reserved bytes, the report."""
    return status.to_bytes(4, "little") + len(report).to_bytes(4, "little") + bytes(24) + report


@dataclass
class FakeSevGuest:
    """The sev-guest driver: fills the response and certificate buffers."""

    certs: bytes = AUXBLOB
    needs: int | None = None  # certificate room the host asks for, if more than given
    ext_error: int | None = None
    status: int = 0
    calls: list[int] = field(default_factory=list)

    def __call__(self, fd: int, request: int, argument: ctypes.Structure) -> int:
        assert isinstance(argument, SnpGuestRequestIoctl)
        assert argument.msg_version == 1
        self.calls.append(request)
        if request == SNP_GET_EXT_REPORT:
            extended = SnpExtReportReq.from_address(argument.req_data)
            if self.ext_error is not None:
                raise OSError(self.ext_error, "fake")
            if self.needs is not None and extended.certs_len < self.needs:
                extended.certs_len = self.needs
                argument.exitinfo2 = 1 << 32  # vmm_error INVALID_LEN
                raise OSError(errno.EIO, "fake: certificate buffer too small")
            user_data = bytes(extended.data.user_data)
            ctypes.memmove(extended.certs_address, self.certs, len(self.certs))
        else:
            assert request == SNP_GET_REPORT
            user_data = bytes(SnpReportReq.from_address(argument.req_data).user_data)
        response = msg_report_rsp(with_report_data(user_data), self.status)
        ctypes.memmove(argument.resp_data, response, len(response))
        return 0


def test_sev_guest_extended_report(root: Path) -> None:
    make_device(root, "sev-guest")
    driver = FakeSevGuest()
    collected = collect_evidence(REPORT_DATA, root=root, backend="snp", ioctl=driver)
    assert driver.calls == [SNP_GET_EXT_REPORT]
    assert collected.kind is EvidenceKind.SNP_REPORT
    assert collected.source == "/dev/sev-guest"
    assert collected.evidence == with_report_data(REPORT_DATA)
    assert collected.auxblob.startswith(AUXBLOB)
    assert f"configfs-tsm: no {root / TSM_REPORT_DIR}" in collected.notes
    # The capture written for the verifier parses, certificates included.
    evidence = parse_tsm_json(collected.to_file())
    assert evidence.report.report_data == REPORT_DATA
    assert evidence.vcek is not None


def test_sev_guest_asks_for_a_larger_certificate_buffer(root: Path) -> None:
    make_device(root, "sev-guest")
    driver = FakeSevGuest(needs=8 * 4096)
    collected = collect_evidence(REPORT_DATA, root=root, backend="snp", ioctl=driver)
    assert driver.calls == [SNP_GET_EXT_REPORT, SNP_GET_EXT_REPORT]
    assert len(collected.auxblob) == 8 * 4096


def test_sev_guest_refuses_an_oversized_certificate_table(root: Path) -> None:
    make_device(root, "sev-guest")
    with pytest.raises(CollectionError, match="more than the limit"):
        collect_evidence(
            REPORT_DATA, root=root, backend="snp", ioctl=FakeSevGuest(needs=1024 * 1024)
        )


def test_sev_guest_falls_back_to_the_plain_report(root: Path) -> None:
    make_device(root, "sev-guest")
    driver = FakeSevGuest(ext_error=errno.ENOTTY)
    collected = collect_evidence(REPORT_DATA, root=root, backend="snp", ioctl=driver)
    assert driver.calls == [SNP_GET_EXT_REPORT, SNP_GET_REPORT]
    assert collected.evidence[0x50:0x90] == REPORT_DATA
    assert collected.auxblob == b""
    assert any("SNP_GET_EXT_REPORT failed" in note for note in collected.notes)
    assert any("VCEK from AMD's KDS" in note for note in collected.notes)


def test_sev_guest_firmware_refusal(root: Path) -> None:
    make_device(root, "sev-guest")
    with pytest.raises(CollectionError, match=r"firmware refused the report \(status 0x16\)"):
        collect_evidence(REPORT_DATA, root=root, backend="snp", ioctl=FakeSevGuest(status=0x16))


def test_sev_guest_with_the_real_ioctl_on_a_plain_file(root: Path) -> None:
    """The default ioctl reaches the kernel, which refuses it for a plain file."""
    make_device(root, "sev-guest")
    with pytest.raises(CollectionError, match="SNP_GET_REPORT failed"):
        collect_evidence(REPORT_DATA, root=root, backend="snp")


def test_tdx_guest_gives_a_report_and_says_it_is_not_a_quote(root: Path) -> None:
    make_device(root, "tdx_guest")
    calls: list[int] = []

    def driver(fd: int, request: int, argument: ctypes.Structure) -> int:
        assert isinstance(argument, TdxReportReq)
        calls.append(request)
        tdreport = b"TDREPORT" + bytes(argument.reportdata) + bytes(1024 - 72)
        ctypes.memmove(argument.tdreport, tdreport, 1024)
        return 0

    collected = collect_evidence(REPORT_DATA, root=root, backend="tdx", ioctl=driver)
    assert calls == [TDX_CMD_GET_REPORT0]
    assert collected.kind is EvidenceKind.TDX_REPORT
    assert not collected.remote_verifiable
    assert collected.evidence[8:72] == REPORT_DATA
    assert len(collected.evidence) == 1024
    assert any("not a quote" in note and "quoting service" in note for note in collected.notes)


def test_tdx_guest_failure(root: Path) -> None:
    make_device(root, "tdx_guest")

    def driver(fd: int, request: int, argument: ctypes.Structure) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    with pytest.raises(CollectionError, match="TDX_CMD_GET_REPORT0 failed: Invalid argument"):
        collect_evidence(REPORT_DATA, root=root, backend="tdx", ioctl=driver)


def test_an_unopenable_device_falls_through(root: Path) -> None:
    device = make_device(root, "sev-guest")
    device.unlink()
    device.mkdir()  # opening a directory O_RDWR fails: EISDIR
    collected = collect_evidence(REPORT_DATA, root=root, backend="process", ioctl=FakeSevGuest())
    assert collected.kind is EvidenceKind.SOFTWARE
    assert any("Is a directory" in note for note in collected.notes)


# -- software evidence -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["nil", "process", "vm"])
def test_without_a_tee_software_evidence_is_made(root: Path, backend: str) -> None:
    collected = collect_evidence(REPORT_DATA, root=root, backend=backend, workload_digest=DIGEST)
    assert collected.kind is EvidenceKind.SOFTWARE
    assert collected.source == "software"
    evidence = parse_software_evidence(collected.evidence)
    assert evidence.backend == backend
    assert evidence.report_data == REPORT_DATA
    assert evidence.workload_digest == DIGEST
    assert collected.to_file() == collected.evidence
    assert collected.notes[-1] == "software evidence: no hardware protects this keep"
    assert f"no {root / 'dev/sev-guest'}" in collected.notes


def test_each_software_evidence_has_its_own_nonce(root: Path) -> None:
    first = parse_software_evidence(
        collect_evidence(REPORT_DATA, root=root, backend="nil").evidence
    )
    second = parse_software_evidence(
        collect_evidence(REPORT_DATA, root=root, backend="nil").evidence
    )
    assert first.nonce != second.nonce
    assert first.workload_digest is None


@pytest.mark.parametrize("backend", ["snp", "tdx"])
def test_a_confidential_backend_never_downgrades_to_software(root: Path, backend: str) -> None:
    with pytest.raises(CollectionError, match=f"no {backend} evidence on this machine") as raised:
        collect_evidence(REPORT_DATA, root=root, backend=backend)
    assert raised.value.hint is not None and "platform info" in raised.value.hint


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"report_data": bytes(63), "backend": "nil"}, "64 bytes"),
        ({"report_data": "00" * 64, "backend": "nil"}, "64 bytes"),
        ({"report_data": REPORT_DATA, "backend": "sgx"}, "backend must be one of"),
        ({"report_data": REPORT_DATA, "backend": "nil", "privlevel": 4}, "privlevel"),
        ({"report_data": REPORT_DATA, "backend": "nil", "workload_digest": "x"}, "digest"),
    ],
)
def test_bad_arguments(root: Path, arguments: dict[str, object], message: str) -> None:
    data = arguments.pop("report_data")
    with pytest.raises(ValueError, match=message):
        collect_evidence(data, root=root, **arguments)  # type: ignore[arg-type]


# -- the real configfs operations, on plain files ----------------------------------------------


def test_os_configfs_on_plain_files(tmp_path: Path) -> None:
    ops = OsConfigfs()
    entry = tmp_path / "entry"
    ops.mkdir(entry)
    assert entry.stat().st_mode & 0o777 == 0o700
    (entry / "inblob").write_bytes(b"")
    ops.write(entry / "inblob", REPORT_DATA)
    assert ops.read(entry / "inblob", 64) == REPORT_DATA
    (entry / "big").write_bytes(bytes(200 * 1024))
    assert len(ops.read(entry / "big", 200 * 1024)) == 200 * 1024
    with pytest.raises(OSError, match="more than 1000 bytes") as raised:
        ops.read(entry / "big", 1000)
    assert raised.value.errno == errno.EFBIG
    with pytest.raises(FileNotFoundError):
        ops.read(entry / "auxblob", 10)
    for name in ("inblob", "big"):
        (entry / name).unlink()
    ops.rmdir(entry)
    assert not entry.exists()
