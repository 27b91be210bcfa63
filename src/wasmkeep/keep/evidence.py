"""Evidence collection inside a keep: the hardware's report, or software evidence.

A keep asks the kernel for evidence that binds its `report_data` (the 64 bytes
of :func:`wasmkeep.attestation.software.report_data`: its public key and
workload), in this order:

1. **configfs-tsm** (Linux 6.7+, Documentation/ABI/testing/configfs-tsm): make
   a fresh entry ``sys/kernel/config/tsm/report/<unique name>``, write
   ``inblob`` (and ``privlevel`` if asked), read ``provider`` (``sev_guest`` or
   ``tdx_guest``), ``outblob`` (an SNP ATTESTATION_REPORT or a TDX quote) and
   ``auxblob`` (SNP: the host's certificate table), and check that
   ``generation`` counts exactly our writes: a different count means another
   writer changed the entry between our write and our read, so the outblob may
   not hold our report_data. Then try again in a new entry (a few times), and
   always remove the entry.
2. **/dev/sev-guest** (linux/sev-guest.h): SNP_GET_EXT_REPORT (report and
   certificate table), else SNP_GET_REPORT.
3. **/dev/tdx_guest** (linux/tdx-guest.h): TDX_CMD_GET_REPORT0 gives a TDREPORT,
   which only this machine can check (its MAC key never leaves the CPU); a
   remote verifier needs a quote, which only a quoting service makes (the
   host's QGS, reached through configfs-tsm). The result says so.
4. **Software evidence** for the nil, process and vm backends, when no TEE
   interface answers: :class:`~wasmkeep.attestation.software.SoftwareEvidence`,
   marked insecure. A keep whose backend is ``snp`` or ``tdx`` never falls back
   to software evidence: that would be a silent downgrade.

This is keep-side code and does I/O, behind two small interfaces so tests can
play the kernel: :class:`ConfigfsOps` (mkdir, rmdir, read, write of configfs
attributes) and an `ioctl` function. The file-system root is a parameter.
Tested here only against fakes of configfs-tsm and of the guest devices: this
machine has no SEV-SNP or TDX guest.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from wasmkeep.attestation.limits import DEFAULT_ATTESTATION_LIMITS
from wasmkeep.attestation.software import (
    REPORT_DATA_SIZE,
    SOFTWARE_BACKENDS,
    SoftwareEvidence,
)
from wasmkeep.errors import KeepError

__all__ = [
    "BACKENDS",
    "SNP_GET_EXT_REPORT",
    "SNP_GET_REPORT",
    "TDX_CMD_GET_REPORT0",
    "TSM_PROVIDERS",
    "TSM_REPORT_DIR",
    "CollectedEvidence",
    "CollectionError",
    "ConfigfsOps",
    "EvidenceKind",
    "Ioctl",
    "OsConfigfs",
    "SnpExtReportReq",
    "SnpGuestRequestIoctl",
    "SnpReportReq",
    "SnpReportResp",
    "TdxReportReq",
    "collect_evidence",
]

_LIMITS = DEFAULT_ATTESTATION_LIMITS

#: The backends a keep may collect evidence for.
BACKENDS = (*SOFTWARE_BACKENDS, "snp", "tdx")
TSM_REPORT_DIR = "sys/kernel/config/tsm/report"
SEV_GUEST_DEVICE = "dev/sev-guest"
TDX_GUEST_DEVICE = "dev/tdx_guest"
#: Entries tried before giving up when other writers keep racing us.
TSM_ATTEMPTS = 3
#: configfs-tsm providers wasmkeep knows, and the backend each is evidence for.
TSM_PROVIDERS: Mapping[str, str] = {"sev_guest": "snp", "tdx_guest": "tdx"}
_SMALL_ATTRIBUTE = 4096  # provider, generation: a line of text


class EvidenceKind(StrEnum):
    """What the collected bytes are."""

    #: An SEV-SNP ATTESTATION_REPORT (0x4A0 bytes), certificate table beside it.
    SNP_REPORT = "snp-report"
    #: A TDX quote (DCAP v4/v5), for remote verification.
    TDX_QUOTE = "tdx-quote"
    #: A TDREPORT (1024 bytes): checkable only on this machine, not a quote.
    TDX_REPORT = "tdx-report"
    #: Software evidence: no hardware protects this keep.
    SOFTWARE = "software"


class CollectionError(KeepError):
    """No evidence could be collected; the message says what was tried and why it failed."""


@dataclass(frozen=True, slots=True)
class CollectedEvidence:
    """Evidence as the kernel (or the software fallback) produced it.

    `evidence` is the report or quote (or software evidence); `auxblob` the SNP
    certificate table when the host supplied one; `source` where it came from
    ("configfs-tsm", "/dev/sev-guest", "/dev/tdx_guest", "software"); `notes`
    why earlier sources were not used, and caveats.
    """

    kind: EvidenceKind
    source: str
    evidence: bytes
    report_data: bytes
    auxblob: bytes = b""
    provider: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def remote_verifiable(self) -> bool:
        """Whether a party elsewhere can verify it (a TDREPORT cannot be)."""
        return self.kind is not EvidenceKind.TDX_REPORT

    def to_file(self) -> bytes:
        """The form `wasmkeep attest verify` reads: an SNP report with its
        certificate table as a configfs-tsm JSON capture, anything else raw."""
        if self.kind is EvidenceKind.SNP_REPORT:
            document = {
                "provider": self.provider or "sev_guest",
                "outblob": base64.urlsafe_b64encode(self.evidence).decode("ascii"),
                "auxblob": base64.urlsafe_b64encode(self.auxblob).decode("ascii"),
            }
            return (json.dumps(document, indent=2) + "\n").encode("ascii")
        return self.evidence


# -- configfs-tsm ------------------------------------------------------------------------


class ConfigfsOps(Protocol):
    """The file operations configfs-tsm needs; a test fake plays the kernel."""

    def mkdir(self, path: Path) -> None: ...

    def rmdir(self, path: Path) -> None: ...

    def read(self, path: Path, limit: int) -> bytes:
        """The attribute's whole content; OSError(EFBIG) beyond `limit` bytes."""
        ...

    def write(self, path: Path, data: bytes) -> None:
        """Write `data` in one write(2): configfs takes a binary attribute whole."""
        ...


class OsConfigfs:
    """The real thing: the kernel's configfs through os calls."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path, 0o700)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def read(self, path: Path, limit: int) -> bytes:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks: list[bytes] = []
            size = 0
            while chunk := os.read(fd, 64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise OSError(errno.EFBIG, f"more than {limit} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def write(self, path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.EIO, f"short write ({written} of {len(data)} bytes)")
        finally:
            os.close(fd)


class _Raced(Exception):
    """Another writer changed our entry between our write and our read."""


def _error_text(error: OSError) -> str:
    return error.strerror or str(error)


def _read_generation(ops: ConfigfsOps, entry: Path) -> int:
    text = ops.read(entry / "generation", _SMALL_ATTRIBUTE).decode("ascii", "replace").strip()
    if not text.isdigit():
        raise OSError(errno.EINVAL, f"generation is not a number: {text[:40]!r}")
    return int(text)


def _tsm_once(
    ops: ConfigfsOps, report_dir: Path, report_data: bytes, privlevel: int | None
) -> CollectedEvidence:
    entry = report_dir / f"wasmkeep-{os.getpid()}-{secrets.token_hex(8)}"
    ops.mkdir(entry)
    try:
        provider = ops.read(entry / "provider", _SMALL_ATTRIBUTE).decode("ascii", "replace").strip()
        tee = TSM_PROVIDERS.get(provider)
        if tee is None:
            raise CollectionError(
                f"configfs-tsm: provider {provider[:40]!r} is not one wasmkeep knows "
                f"({', '.join(TSM_PROVIDERS)})"
            )
        # The generation counts every write to the entry: ours are inblob and
        # (maybe) privlevel. Any other count means someone else wrote too.
        before = _read_generation(ops, entry)
        ops.write(entry / "inblob", report_data)
        writes = 1
        if privlevel is not None:
            ops.write(entry / "privlevel", str(privlevel).encode("ascii"))
            writes += 1
        outblob = ops.read(entry / "outblob", _LIMITS.max_tsm_blob_size)
        try:
            auxblob = ops.read(entry / "auxblob", _LIMITS.max_tsm_blob_size)
        except FileNotFoundError:  # the attribute exists only for providers that have one
            auxblob = b""
        after = _read_generation(ops, entry)
        if after != before + writes:
            raise _Raced(f"generation went from {before} to {after}, expected {before + writes}")
    finally:
        # A leftover entry holds nothing secret (report_data is public); failing
        # to remove it must not hide the report or the real error.
        with contextlib.suppress(OSError):
            ops.rmdir(entry)
    if not outblob:
        raise CollectionError("configfs-tsm: the provider returned an empty outblob")
    kind = EvidenceKind.SNP_REPORT if tee == "snp" else EvidenceKind.TDX_QUOTE
    return CollectedEvidence(
        kind=kind,
        source="configfs-tsm",
        evidence=outblob,
        report_data=report_data,
        auxblob=auxblob if tee == "snp" else b"",
        provider=provider,
    )


def _from_tsm(
    ops: ConfigfsOps, report_dir: Path, report_data: bytes, privlevel: int | None
) -> CollectedEvidence:
    reasons: list[str] = []
    for _attempt in range(TSM_ATTEMPTS):
        try:
            return _tsm_once(ops, report_dir, report_data, privlevel)
        except _Raced as raced:
            reasons.append(str(raced))
    raise CollectionError(
        f"configfs-tsm: another writer raced every one of {TSM_ATTEMPTS} attempts "
        f"({'; '.join(reasons)})"
    )


# -- the guest devices ---------------------------------------------------------------------

#: ``ioctl(fd, request, argument)``: fcntl.ioctl with a mutable argument; tests
#: inject a fake that plays the driver.
Ioctl = Callable[[int, int, ctypes.Structure], int]


def _system_ioctl(fd: int, request: int, argument: ctypes.Structure) -> int:
    result: int = fcntl.ioctl(fd, request, argument, True)
    return result


def _iowr(kind: str, number: int, size: int) -> int:
    """_IOWR from asm-generic/ioctl.h: read-write, the argument's size, type, number."""
    return (3 << 30) | (size << 16) | (ord(kind) << 8) | number


class SnpReportReq(ctypes.Structure):
    """struct snp_report_req (linux/sev-guest.h)."""

    _fields_ = [
        ("user_data", ctypes.c_uint8 * 64),
        ("vmpl", ctypes.c_uint32),
        ("rsvd", ctypes.c_uint8 * 28),
    ]


class SnpReportResp(ctypes.Structure):
    """struct snp_report_resp: the firmware's MSG_REPORT_RSP (SEV-SNP ABI spec, 7.3)."""

    _fields_ = [("data", ctypes.c_uint8 * 4000)]


class SnpGuestRequestIoctl(ctypes.Structure):
    """struct snp_guest_request_ioctl; exitinfo2 holds fw_error and vmm_error."""

    _fields_ = [
        ("msg_version", ctypes.c_uint8),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("exitinfo2", ctypes.c_uint64),
    ]


class SnpExtReportReq(ctypes.Structure):
    """struct snp_ext_report_req: the request and a buffer for the certificate table."""

    _fields_ = [
        ("data", SnpReportReq),
        ("certs_address", ctypes.c_uint64),
        ("certs_len", ctypes.c_uint32),
    ]


class TdxReportReq(ctypes.Structure):
    """struct tdx_report_req (linux/tdx-guest.h)."""

    _fields_ = [("reportdata", ctypes.c_uint8 * 64), ("tdreport", ctypes.c_uint8 * 1024)]


SNP_GET_REPORT = _iowr("S", 0x0, ctypes.sizeof(SnpGuestRequestIoctl))
SNP_GET_EXT_REPORT = _iowr("S", 0x2, ctypes.sizeof(SnpGuestRequestIoctl))
TDX_CMD_GET_REPORT0 = _iowr("T", 0x1, ctypes.sizeof(TdxReportReq))
#: vmm_error (upper half of exitinfo2) when the certificate buffer is too small.
SNP_GUEST_VMM_ERR_INVALID_LEN = 1
_SNP_REPORT_SIZE = 0x4A0
_MSG_REPORT_RSP_HEADER = 0x20  # status u32, report_size u32, 24 reserved bytes
_PAGE = 4096


def _snp_response(response: SnpReportResp) -> bytes:
    """The report inside MSG_REPORT_RSP (SEV-SNP ABI spec, 7.3, Table "MSG_REPORT_RSP")."""
    raw = bytes(response.data)
    status = int.from_bytes(raw[0:4], "little")
    size = int.from_bytes(raw[4:8], "little")
    if status != 0:
        raise CollectionError(
            f"/dev/sev-guest: the firmware refused the report (status 0x{status:x})"
        )
    if size != _SNP_REPORT_SIZE:
        raise CollectionError(
            f"/dev/sev-guest: the report is {size} bytes, "
            f"an ATTESTATION_REPORT is {_SNP_REPORT_SIZE}"
        )
    return raw[_MSG_REPORT_RSP_HEADER : _MSG_REPORT_RSP_HEADER + size]


def _report_request(report_data: bytes, privlevel: int | None) -> SnpReportReq:
    request = SnpReportReq()
    ctypes.memmove(request.user_data, report_data, REPORT_DATA_SIZE)
    request.vmpl = privlevel or 0
    return request


def _from_sev_guest(
    device: Path, report_data: bytes, privlevel: int | None, ioctl: Ioctl
) -> CollectedEvidence:
    fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    try:
        response = SnpReportResp()
        notes: list[str] = []
        # 1. SNP_GET_EXT_REPORT: the report and the host's certificate table. A
        #    too-small buffer gets EIO with vmm_error INVALID_LEN and the size
        #    needed in certs_len; one retry with that size.
        size = 4 * _PAGE
        for _attempt in range(2):
            certs = ctypes.create_string_buffer(size)
            extended = SnpExtReportReq(
                _report_request(report_data, privlevel), ctypes.addressof(certs), size
            )
            request = SnpGuestRequestIoctl(
                1, ctypes.addressof(extended), ctypes.addressof(response), 0
            )
            try:
                ioctl(fd, SNP_GET_EXT_REPORT, request)
            except OSError as error:
                vmm_error = request.exitinfo2 >> 32
                needed = int(extended.certs_len)
                if vmm_error == SNP_GUEST_VMM_ERR_INVALID_LEN and size < needed:
                    if needed > _LIMITS.max_snp_certs_size:
                        raise CollectionError(
                            f"/dev/sev-guest: the certificate table needs {needed} bytes, "
                            f"more than the limit of {_LIMITS.max_snp_certs_size}"
                        ) from None
                    size = needed
                    continue
                notes.append(f"SNP_GET_EXT_REPORT failed: {_error_text(error)}")
                break
            table = certs.raw
            return CollectedEvidence(
                EvidenceKind.SNP_REPORT,
                "/dev/sev-guest",
                _snp_response(response),
                report_data,
                # All zeros: the host gave no certificates (an empty table).
                auxblob=table if any(table) else b"",
                provider="sev_guest",
            )
        # 2. SNP_GET_REPORT: the report alone; the verifier fetches the VCEK.
        plain = _report_request(report_data, privlevel)
        request = SnpGuestRequestIoctl(1, ctypes.addressof(plain), ctypes.addressof(response), 0)
        try:
            ioctl(fd, SNP_GET_REPORT, request)
        except OSError as error:
            raise CollectionError(
                f"/dev/sev-guest: SNP_GET_REPORT failed: {_error_text(error)} "
                f"(firmware error 0x{request.exitinfo2 & 0xFFFFFFFF:x})"
            ) from None
        return CollectedEvidence(
            EvidenceKind.SNP_REPORT,
            "/dev/sev-guest",
            _snp_response(response),
            report_data,
            provider="sev_guest",
            notes=(*notes, "no certificate table: the verifier needs the VCEK from AMD's KDS"),
        )
    finally:
        os.close(fd)


def _from_tdx_guest(device: Path, report_data: bytes, ioctl: Ioctl) -> CollectedEvidence:
    fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    try:
        request = TdxReportReq()
        ctypes.memmove(request.reportdata, report_data, REPORT_DATA_SIZE)
        try:
            ioctl(fd, TDX_CMD_GET_REPORT0, request)
        except OSError as error:
            raise CollectionError(
                f"/dev/tdx_guest: TDX_CMD_GET_REPORT0 failed: {_error_text(error)}"
            ) from None
        return CollectedEvidence(
            EvidenceKind.TDX_REPORT,
            "/dev/tdx_guest",
            bytes(request.tdreport),
            report_data,
            provider="tdx_guest",
            notes=(
                "a TDREPORT, not a quote: only this machine can check its MAC; a remote "
                "verifier needs a quote from a quoting service (the host's QGS, through "
                "configfs-tsm on Linux 6.7+)",
            ),
        )
    finally:
        os.close(fd)


# -- collection --------------------------------------------------------------------------------


def collect_evidence(
    report_data: bytes,
    *,
    root: Path = Path("/"),
    backend: str,
    workload_digest: str | None = None,
    privlevel: int | None = None,
    configfs: ConfigfsOps | None = None,
    ioctl: Ioctl | None = None,
) -> CollectedEvidence:
    """Evidence binding `report_data`, from the best source this keep has.

    `root` is where the file system starts (``/`` in a keep; a fake tree in
    tests). `backend` is the keep's: for ``snp`` and ``tdx`` hardware evidence
    is required (CollectionError without it); for ``nil``, ``process`` and
    ``vm`` software evidence is made when no TEE interface answers, claiming
    `workload_digest` if given. `privlevel` (SNP VMPL, 0-3) is passed on when
    set. Raises CollectionError when nothing works; ValueError for bad arguments.
    """
    if not isinstance(report_data, bytes) or len(report_data) != REPORT_DATA_SIZE:
        raise ValueError(f"report_data must be {REPORT_DATA_SIZE} bytes")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r:.40}")
    if privlevel is not None and not 0 <= privlevel <= 3:
        raise ValueError("privlevel is 0 to 3")
    ops = configfs if configfs is not None else OsConfigfs()
    call = ioctl if ioctl is not None else _system_ioctl
    notes: list[str] = []

    # 1. configfs-tsm.
    report_dir = root / TSM_REPORT_DIR
    if report_dir.is_dir():
        try:
            found = _from_tsm(ops, report_dir, report_data, privlevel)
            return _with_notes(found, notes)
        except OSError as error:
            notes.append(f"configfs-tsm: {_error_text(error)}")
    else:
        notes.append(f"configfs-tsm: no {report_dir}")

    # 2. and 3. The guest devices.
    for device in (root / SEV_GUEST_DEVICE, root / TDX_GUEST_DEVICE):
        if not device.exists():
            notes.append(f"no {device}")
            continue
        try:
            if device.name == "sev-guest":
                found = _from_sev_guest(device, report_data, privlevel, call)
            else:
                found = _from_tdx_guest(device, report_data, call)
        except OSError as error:  # opening it: not ours to use (permissions, no driver)
            notes.append(f"{device}: {_error_text(error)}")
            continue
        return _with_notes(found, notes)

    # 4. No TEE: software evidence, for the backends that have no hardware.
    if backend not in SOFTWARE_BACKENDS:
        raise CollectionError(
            f"no {backend} evidence on this machine: " + "; ".join(notes),
            hint=f"a {backend} keep must run in a {backend} guest; "
            "`wasmkeep platform info` shows what this machine offers",
        )
    software = SoftwareEvidence(backend, report_data, secrets.token_bytes(16), workload_digest)
    return CollectedEvidence(
        EvidenceKind.SOFTWARE,
        "software",
        software.encode(),
        report_data,
        notes=(*notes, "software evidence: no hardware protects this keep"),
    )


def _with_notes(found: CollectedEvidence, notes: list[str]) -> CollectedEvidence:
    if not notes:
        return found
    return CollectedEvidence(
        found.kind,
        found.source,
        found.evidence,
        found.report_data,
        found.auxblob,
        found.provider,
        (*notes, *found.notes),
    )
