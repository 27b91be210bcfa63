"""Intel DCAP quotes (SGX and TDX), parsed into frozen dataclasses.

Formats, all little-endian:

* v3, SGX: "Intel SGX ECDSA Quote Library API", appendix A.4 (Quote Format):
  48-byte header, 384-byte enclave report body, u32 signature data length,
  then the ECDSA signature data (A.4.9): quote signature r||s, attestation
  key X||Y, QE report, QE report signature, QE authentication data (u16 size
  and bytes), certification data (u16 type, u32 size, data).
* v4, TDX 1.0 (or SGX): "Intel TDX DCAP Quoting Library API", A.3: the same
  header, a 584-byte TD report body (TDX) or the 384-byte enclave report
  body (SGX), then signature data whose certification data has type 6 (QE
  report certification data) and nests the QE report, its signature, the QE
  authentication data and a type-5 certification data.
* v5: A.4 of the same document: after the header, body type (u16) and body
  size (u32): type 1 = SGX enclave report (384), 2 = TD report 1.0 (584),
  3 = TD report 1.5 (648: adds TEE_TCB_SVN_2 and MRSERVICETD).

The signed part of a quote is everything before the signature data length:
header + body (v3, v4) or header + body type + body size + body (v5).

A quote buffer may be longer than the quote (captures pad it, test vectors
append bytes): what follows the signature data is not part of the quote, is
never read, and is only counted (:attr:`Quote.trailing_length`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import struct
from dataclasses import dataclass

from cryptography import x509

from wasmkeep.attestation import der
from wasmkeep.attestation.dcap_limits import (
    MAX_CERTIFICATION_DATA_BYTES,
    MAX_CHAIN_CERTIFICATES,
    MAX_QE_AUTH_DATA_BYTES,
    MAX_QUOTE_BYTES,
)
from wasmkeep.attestation.errors import EvidenceFormatError
from wasmkeep.attestation.verdict import Tee
from wasmkeep.attestation.x509_checked import X509_PARSE_ERRORS, checked_certificate

__all__ = [
    "ATTESTATION_KEY_ECDSA_P256",
    "BODY_SGX",
    "BODY_TDX_10",
    "BODY_TDX_15",
    "CERTIFICATION_DATA_PCK_CHAIN",
    "CERTIFICATION_DATA_QE_REPORT",
    "INTEL_QE_VENDOR_ID",
    "TEE_TYPE_SGX",
    "TEE_TYPE_TDX",
    "EcdsaSignatureData",
    "Quote",
    "QuoteHeader",
    "SgxAttributes",
    "SgxReportBody",
    "TdAttributes",
    "TdReportBody",
    "load_certificate",
    "parse_pem_chain",
    "parse_quote",
    "parse_sgx_report_body",
]

#: Attestation key type 2: ECDSA-256-with-P-256 curve (the only one Intel's QE uses).
ATTESTATION_KEY_ECDSA_P256 = 2
TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081
#: Intel's QE vendor ID (939A7233-F79C-4CA9-940A-0DB3957F0607).
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
#: v5 body types.
BODY_SGX = 1
BODY_TDX_10 = 2
BODY_TDX_15 = 3
#: Certification data types (A.4.11): 5 = PCK certificate chain, PEM; 6 = QE
#: report certification data (v4, v5).
CERTIFICATION_DATA_PCK_CHAIN = 5
CERTIFICATION_DATA_QE_REPORT = 6

HEADER_SIZE = 48
SGX_REPORT_BODY_SIZE = 384
TD_REPORT_BODY_10_SIZE = 584
TD_REPORT_BODY_15_SIZE = 648
_BODY_SIZES = {
    BODY_SGX: SGX_REPORT_BODY_SIZE,
    BODY_TDX_10: TD_REPORT_BODY_10_SIZE,
    BODY_TDX_15: TD_REPORT_BODY_15_SIZE,
}
_SIGNATURE_SIZE = 64
_KEY_SIZE = 64


def _check_size(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, not {len(value)}")


@dataclass(frozen=True, slots=True)
class QuoteHeader:
    """The 48-byte quote header (A.4.6).

    `qe_svn` and `pce_svn` are the QE and PCE security versions in v3; v4 and
    v5 name these two fields "reserved" (the TD QE leaves them zero).
    """

    version: int
    attestation_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes

    def __post_init__(self) -> None:
        _check_size("qe_vendor_id", self.qe_vendor_id, 16)
        _check_size("user_data", self.user_data, 20)


@dataclass(frozen=True, slots=True)
class SgxAttributes:
    """SGX ATTRIBUTES (SDM vol. 3D, 38.7.1): FLAGS (u64) then XFRM (u64)."""

    raw: bytes

    def __post_init__(self) -> None:
        _check_size("attributes", self.raw, 16)

    @property
    def flags(self) -> int:
        return int.from_bytes(self.raw[:8], "little")

    @property
    def xfrm(self) -> int:
        return int.from_bytes(self.raw[8:], "little")

    @property
    def debug(self) -> bool:
        """Bit 1 DEBUG: the enclave's memory can be read by a debugger."""
        return bool(self.flags & (1 << 1))

    @property
    def names(self) -> tuple[str, ...]:
        """The FLAGS bits that are set, by their SDM names."""
        return _bit_names(self.flags, _SGX_FLAG_NAMES)


_SGX_FLAG_NAMES = {
    0: "INIT",
    1: "DEBUG",
    2: "MODE64BIT",
    4: "PROVISIONKEY",
    5: "EINITTOKENKEY",
    6: "CET",
    7: "KSS",
    10: "AEXNOTIFY",
}


@dataclass(frozen=True, slots=True)
class TdAttributes:
    """TD ATTRIBUTES (TDX module ABI spec, TD_PARAMS): TUD bits 7:0, SEC bits
    31:8, OTHER bits 63:32."""

    raw: bytes

    def __post_init__(self) -> None:
        _check_size("tdattributes", self.raw, 8)

    @property
    def value(self) -> int:
        return int.from_bytes(self.raw, "little")

    @property
    def debug(self) -> bool:
        """Bit 0 DEBUG: the host VMM can read and change the TD's state."""
        return bool(self.value & 1)

    @property
    def sept_ve_disable(self) -> bool:
        return bool(self.value & (1 << 28))

    @property
    def names(self) -> tuple[str, ...]:
        return _bit_names(self.value, _TD_ATTRIBUTE_NAMES)


_TD_ATTRIBUTE_NAMES = {
    0: "DEBUG",
    28: "SEPT_VE_DISABLE",
    29: "MIGRATABLE",
    30: "PKS",
    31: "KL",
    63: "PERFMON",
}


def _bit_names(value: int, names: dict[int, str]) -> tuple[str, ...]:
    return tuple(names.get(bit, f"bit{bit}") for bit in range(64) if value >> bit & 1)


@dataclass(frozen=True, slots=True)
class SgxReportBody:
    """An SGX enclave report body (A.4.10; SDM REPORTBODY), 384 bytes.

    Also the layout of the QE report inside the signature data. Reserved
    fields are not kept (they are covered by the signatures all the same).
    """

    cpusvn: bytes
    miscselect: int
    isvextprodid: bytes
    attributes: SgxAttributes
    mrenclave: bytes
    mrsigner: bytes
    configid: bytes
    isvprodid: int
    isvsvn: int
    configsvn: int
    isvfamilyid: bytes
    reportdata: bytes

    def __post_init__(self) -> None:
        _check_size("cpusvn", self.cpusvn, 16)
        _check_size("isvextprodid", self.isvextprodid, 16)
        _check_size("mrenclave", self.mrenclave, 32)
        _check_size("mrsigner", self.mrsigner, 32)
        _check_size("configid", self.configid, 64)
        _check_size("isvfamilyid", self.isvfamilyid, 16)
        _check_size("reportdata", self.reportdata, 64)


@dataclass(frozen=True, slots=True)
class TdReportBody:
    """A TD report body: TDX 1.0 (584 bytes) or 1.5 (648 bytes, with
    `tee_tcb_svn_2` and `mrservicetd`; None for 1.0)."""

    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seamattributes: bytes
    tdattributes: TdAttributes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    reportdata: bytes
    tee_tcb_svn_2: bytes | None = None
    mrservicetd: bytes | None = None

    def __post_init__(self) -> None:
        _check_size("tee_tcb_svn", self.tee_tcb_svn, 16)
        _check_size("seamattributes", self.seamattributes, 8)
        _check_size("xfam", self.xfam, 8)
        for name in (
            "mrseam",
            "mrsignerseam",
            "mrtd",
            "mrconfigid",
            "mrowner",
            "mrownerconfig",
            "rtmr0",
            "rtmr1",
            "rtmr2",
            "rtmr3",
        ):
            _check_size(name, getattr(self, name), 48)
        _check_size("reportdata", self.reportdata, 64)
        if (self.tee_tcb_svn_2 is None) != (self.mrservicetd is None):
            raise ValueError("tee_tcb_svn_2 and mrservicetd come together (TDX 1.5)")
        if self.tee_tcb_svn_2 is not None and self.mrservicetd is not None:
            _check_size("tee_tcb_svn_2", self.tee_tcb_svn_2, 16)
            _check_size("mrservicetd", self.mrservicetd, 48)

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)


@dataclass(frozen=True, slots=True)
class EcdsaSignatureData:
    """The ECDSA 256-bit quote signature data (A.4.9), flattened: in v4 and v5
    the QE report and what follows it come from the type-6 certification data.

    `certification_data_type` and `certification_data` are the innermost
    certification data; `pck_chain` is its certificates when the type is 5
    (PCK leaf first), else empty.
    """

    signature: bytes
    attestation_key: bytes
    qe_report: SgxReportBody
    qe_report_raw: bytes
    qe_report_signature: bytes
    qe_auth_data: bytes
    certification_data_type: int
    certification_data: bytes
    pck_chain: tuple[x509.Certificate, ...]

    def __post_init__(self) -> None:
        _check_size("signature", self.signature, _SIGNATURE_SIZE)
        _check_size("attestation_key", self.attestation_key, _KEY_SIZE)
        _check_size("qe_report_raw", self.qe_report_raw, SGX_REPORT_BODY_SIZE)
        _check_size("qe_report_signature", self.qe_report_signature, _SIGNATURE_SIZE)


@dataclass(frozen=True, slots=True)
class Quote:
    """A parsed DCAP quote. `signed_data` is the part the attestation key signs."""

    header: QuoteHeader
    body_type: int
    body: SgxReportBody | TdReportBody
    signed_data: bytes
    signature_data: EcdsaSignatureData
    trailing_length: int = 0

    def __post_init__(self) -> None:
        expected = SgxReportBody if self.body_type == BODY_SGX else TdReportBody
        if self.body_type not in _BODY_SIZES or not isinstance(self.body, expected):
            raise ValueError(f"body type {self.body_type} does not match the body")

    @property
    def tee(self) -> Tee:
        return Tee.SGX if self.body_type == BODY_SGX else Tee.TDX

    @property
    def report_data(self) -> bytes:
        return self.body.reportdata


class _Reader:
    """Reads fields in order from data[offset:end], naming each in its errors."""

    __slots__ = ("data", "end", "offset", "what")

    def __init__(self, data: bytes, offset: int, end: int, what: str) -> None:
        self.data = data
        self.offset = offset
        self.end = end
        self.what = what

    def take(self, size: int, field: str) -> bytes:
        if self.offset + size > self.end:
            raise EvidenceFormatError(
                f"{self.what}: {field} at offset {self.offset} needs {size} bytes, "
                f"{max(self.end - self.offset, 0)} left"
            )
        value = self.data[self.offset : self.offset + size]
        self.offset += size
        return value

    def u16(self, field: str) -> int:
        value: int = struct.unpack("<H", self.take(2, field))[0]
        return value

    def u32(self, field: str) -> int:
        value: int = struct.unpack("<I", self.take(4, field))[0]
        return value

    def done(self) -> None:
        if self.offset != self.end:
            raise EvidenceFormatError(
                f"{self.what}: {self.end - self.offset} unexpected bytes at offset {self.offset}"
            )


def parse_quote(data: bytes) -> Quote:
    """Parse a v3, v4 or v5 DCAP quote with an ECDSA P-256 attestation key.

    Checks the format only (sizes, versions, types): signatures, certificates
    and collateral are the verifier's. Raises EvidenceFormatError naming the
    field and its offset.
    """
    data = bytes(data)
    if len(data) > MAX_QUOTE_BYTES:
        raise EvidenceFormatError(f"quote: {len(data)} bytes exceed the limit of {MAX_QUOTE_BYTES}")
    reader = _Reader(data, 0, len(data), "quote header")
    header = _parse_header(reader)

    # Body (A.4.7 / TDX A.3.2; v5: A.4.2 body type and size).
    reader.what = "quote body"
    if header.version == 5:
        body_type = reader.u16("body type")
        body_size_offset = reader.offset
        body_size = reader.u32("body size")
        if body_type not in _BODY_SIZES:
            raise EvidenceFormatError(
                f"quote body: body type {body_type} at offset {HEADER_SIZE} is not 1, 2 or 3"
            )
        if body_size != _BODY_SIZES[body_type]:
            raise EvidenceFormatError(
                f"quote body: body size {body_size} at offset {body_size_offset} is not "
                f"{_BODY_SIZES[body_type]} for body type {body_type}"
            )
        if (body_type == BODY_SGX) != (header.tee_type == TEE_TYPE_SGX):
            raise EvidenceFormatError(
                f"quote body: body type {body_type} at offset {HEADER_SIZE} does not match "
                f"TEE type 0x{header.tee_type:x} at offset 4"
            )
    else:
        body_type = BODY_SGX if header.tee_type == TEE_TYPE_SGX else BODY_TDX_10
    raw_body = reader.take(_BODY_SIZES[body_type], "report body")
    body: SgxReportBody | TdReportBody
    if body_type == BODY_SGX:
        body = parse_sgx_report_body(raw_body)
    else:
        body = _parse_td_report_body(raw_body)
    signed_end = reader.offset

    # Signature data (A.4.8, A.4.9).
    reader.what = "quote signature data"
    length_offset = reader.offset
    length = reader.u32("signature data length")
    if length > len(data) - reader.offset:
        raise EvidenceFormatError(
            f"quote signature data: length {length} at offset {length_offset} runs past the "
            f"end of the quote ({len(data) - reader.offset} bytes left)"
        )
    signature_end = reader.offset + length
    signature_data = _parse_signature_data(
        _Reader(data, reader.offset, signature_end, "quote signature data"), header.version
    )
    return Quote(
        header=header,
        body_type=body_type,
        body=body,
        signed_data=data[:signed_end],
        signature_data=signature_data,
        trailing_length=len(data) - signature_end,
    )


def _parse_header(reader: _Reader) -> QuoteHeader:
    version = reader.u16("version")
    if version not in (3, 4, 5):
        raise EvidenceFormatError(
            f"quote header: version {version} at offset 0 is not supported (3, 4 or 5)"
        )
    key_type = reader.u16("attestation key type")
    if key_type != ATTESTATION_KEY_ECDSA_P256:
        raise EvidenceFormatError(
            f"quote header: attestation key type {key_type} at offset 2 is not supported "
            f"(2 = ECDSA-256-with-P-256)"
        )
    tee_type = reader.u32("TEE type")
    if tee_type not in (TEE_TYPE_SGX, TEE_TYPE_TDX) or (version == 3 and tee_type != TEE_TYPE_SGX):
        raise EvidenceFormatError(
            f"quote header: TEE type 0x{tee_type:x} at offset 4 is not valid for a "
            f"v{version} quote (0x0 = SGX, 0x81 = TDX from v4)"
        )
    qe_svn = reader.u16("QE SVN")
    pce_svn = reader.u16("PCE SVN")
    qe_vendor_id = reader.take(16, "QE vendor ID")
    user_data = reader.take(20, "user data")
    return QuoteHeader(version, key_type, tee_type, qe_svn, pce_svn, qe_vendor_id, user_data)


def parse_sgx_report_body(raw: bytes) -> SgxReportBody:
    """An SGX REPORTBODY (384 bytes): the enclave report of a v3 quote, or a QE report."""
    raw = bytes(raw)
    if len(raw) != SGX_REPORT_BODY_SIZE:
        raise EvidenceFormatError(
            f"SGX report body: {len(raw)} bytes, expected {SGX_REPORT_BODY_SIZE}"
        )
    # Offsets from A.4.10 (Enclave Report Body); reserved: 20..32, 96..128,
    # 160..192, 262..304.
    return SgxReportBody(
        cpusvn=raw[0:16],
        miscselect=int.from_bytes(raw[16:20], "little"),
        isvextprodid=raw[32:48],
        attributes=SgxAttributes(raw[48:64]),
        mrenclave=raw[64:96],
        mrsigner=raw[128:160],
        configid=raw[192:256],
        isvprodid=int.from_bytes(raw[256:258], "little"),
        isvsvn=int.from_bytes(raw[258:260], "little"),
        configsvn=int.from_bytes(raw[260:262], "little"),
        isvfamilyid=raw[304:320],
        reportdata=raw[320:384],
    )


def _parse_td_report_body(raw: bytes) -> TdReportBody:
    # Offsets from the TDX DCAP API, A.3.2 (TD Quote Body) and A.4.3 (TD 1.5).
    # The caller checked the size; no field can be malformed.
    is_15 = len(raw) == TD_REPORT_BODY_15_SIZE
    return TdReportBody(
        tee_tcb_svn=raw[0:16],
        mrseam=raw[16:64],
        mrsignerseam=raw[64:112],
        seamattributes=raw[112:120],
        tdattributes=TdAttributes(raw[120:128]),
        xfam=raw[128:136],
        mrtd=raw[136:184],
        mrconfigid=raw[184:232],
        mrowner=raw[232:280],
        mrownerconfig=raw[280:328],
        rtmr0=raw[328:376],
        rtmr1=raw[376:424],
        rtmr2=raw[424:472],
        rtmr3=raw[472:520],
        reportdata=raw[520:584],
        tee_tcb_svn_2=raw[584:600] if is_15 else None,
        mrservicetd=raw[600:648] if is_15 else None,
    )


def _parse_signature_data(reader: _Reader, version: int) -> EcdsaSignatureData:
    signature = reader.take(_SIGNATURE_SIZE, "quote signature")
    attestation_key = reader.take(_KEY_SIZE, "attestation key")
    if version >= 4:
        # The outer certification data must be type 6, holding the QE report
        # certification data (TDX DCAP API, A.3.11).
        type_offset = reader.offset
        outer_type = reader.u16("certification data type")
        if outer_type != CERTIFICATION_DATA_QE_REPORT:
            raise EvidenceFormatError(
                f"quote signature data: certification data type {outer_type} at offset "
                f"{type_offset} is not 6 (QE report certification data)"
            )
        size_offset = reader.offset
        outer_size = reader.u32("certification data size")
        if outer_size > reader.end - reader.offset:
            raise EvidenceFormatError(
                f"quote signature data: certification data size {outer_size} at offset "
                f"{size_offset} runs past the signature data"
            )
        inner = _Reader(
            reader.data, reader.offset, reader.offset + outer_size, "QE report certification data"
        )
        reader.offset += outer_size
        reader.done()
        reader = inner
    qe_report_raw = reader.take(SGX_REPORT_BODY_SIZE, "QE report")
    qe_report = parse_sgx_report_body(qe_report_raw)
    qe_report_signature = reader.take(_SIGNATURE_SIZE, "QE report signature")
    auth_offset = reader.offset
    auth_size = reader.u16("QE authentication data size")
    if auth_size > MAX_QE_AUTH_DATA_BYTES:
        raise EvidenceFormatError(
            f"{reader.what}: QE authentication data size {auth_size} at offset {auth_offset} "
            f"exceeds {MAX_QE_AUTH_DATA_BYTES}"
        )
    qe_auth_data = reader.take(auth_size, "QE authentication data")
    type_offset = reader.offset
    cert_type = reader.u16("certification data type")
    if not 1 <= cert_type <= 5:
        raise EvidenceFormatError(
            f"{reader.what}: certification data type {cert_type} at offset {type_offset} "
            f"is not 1..5"
        )
    size_offset = reader.offset
    cert_size = reader.u32("certification data size")
    if cert_size > MAX_CERTIFICATION_DATA_BYTES:
        raise EvidenceFormatError(
            f"{reader.what}: certification data size {cert_size} at offset {size_offset} "
            f"exceeds {MAX_CERTIFICATION_DATA_BYTES}"
        )
    cert_offset = reader.offset
    cert_data = reader.take(cert_size, "certification data")
    reader.done()
    chain: tuple[x509.Certificate, ...] = ()
    if cert_type == CERTIFICATION_DATA_PCK_CHAIN:
        chain = parse_pem_chain(cert_data, what=f"PCK certificate chain at offset {cert_offset}")
    return EcdsaSignatureData(
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_raw=qe_report_raw,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        certification_data_type=cert_type,
        certification_data=cert_data,
        pck_chain=chain,
    )


_PEM_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n([A-Za-z0-9+/=\r\n]*?)-----END CERTIFICATE-----"
)


def parse_pem_chain(
    data: bytes, *, what: str = "certificate chain"
) -> tuple[x509.Certificate, ...]:
    """PEM certificates in order (leaf first, as Intel sends them).

    Between and around the blocks only whitespace and NUL bytes are allowed
    (the QE ends its chain with a NUL). Raises EvidenceFormatError.
    """
    return _parse_pem_chain_cached(bytes(data), what)


@functools.lru_cache(maxsize=256)
def _parse_pem_chain_cached(data: bytes, what: str) -> tuple[x509.Certificate, ...]:
    # Cached: the same chain arrives with every quote of a platform, and
    # certificates are immutable. Errors are not cached (lru_cache only
    # stores returned values).
    bodies: list[bytes] = []
    position = 0
    for match in _PEM_BLOCK.finditer(data):
        gap = data[position : match.start()]
        if gap.strip(b" \t\r\n\x00"):
            raise EvidenceFormatError(f"{what}: unexpected bytes at offset {position}")
        bodies.append(match.group(1))
        position = match.end()
        if len(bodies) > MAX_CHAIN_CERTIFICATES:
            raise EvidenceFormatError(f"{what}: more than {MAX_CHAIN_CERTIFICATES} certificates")
    if data[position:].strip(b" \t\r\n\x00"):
        raise EvidenceFormatError(f"{what}: unexpected bytes at offset {position}")
    if not bodies:
        raise EvidenceFormatError(f"{what}: no PEM certificate")
    certificates = []
    for index, body in enumerate(bodies):
        try:
            der_bytes = base64.b64decode(
                body.replace(b"\r", b"").replace(b"\n", b""), validate=True
            )
        except binascii.Error:
            raise EvidenceFormatError(f"{what}: certificate {index} is not valid base64") from None
        certificates.append(load_certificate(der_bytes, f"{what}: certificate {index}"))
    return tuple(certificates)


def load_certificate(data: bytes, what: str) -> x509.Certificate:
    """A DER certificate, with the parts the verifier reads checked now.

    pyca parses names and extensions lazily and warns about (later: refuses)
    serial numbers that are not positive: such certificates are malformed
    evidence here, refused before pyca sees them (RFC 5280, 4.1.2.2).
    Raises EvidenceFormatError.
    """
    try:
        tbs = der.parse_der(data, what).fields(
            der.SEQUENCE, what, ("tbsCertificate", "signatureAlgorithm", "signatureValue")
        )[0]
        tbs.expect(der.SEQUENCE, f"{what} tbsCertificate")
        items = list(tbs.children())
        if items and items[0].tag == 0xA0:  # [0] EXPLICIT version
            items.pop(0)
        if not items:
            raise EvidenceFormatError(f"{what}: tbsCertificate has no serial number")
        serial = items[0]
        serial.expect(der.INTEGER, f"{what} serialNumber")
        if not serial.value or serial.value[0] & 0x80 or not any(serial.value):
            raise EvidenceFormatError(
                f"{what}: serial number at offset {serial.offset} is not positive"
            )
        certificate = x509.load_der_x509_certificate(data)
    except X509_PARSE_ERRORS as error:
        raise EvidenceFormatError(f"{what} is not valid: {str(error)[:120]}") from None
    return checked_certificate(certificate, what)
