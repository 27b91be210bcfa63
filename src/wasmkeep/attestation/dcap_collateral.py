"""DCAP collateral: TCB Info, QE Identity, their issuer chains, and the CRLs.

Formats: Intel PCS API v4, "Get TCB Info" (TCB Info v3, and v2 for SGX) and
"Get Quoting Enclave Identity" (Enclave Identity v2). Both responses are
``{"<object>": {...}, "signature": "<hex r||s>"}`` and the signature (ECDSA
P-256, SHA-256) covers the bytes of the inner object exactly as served: this
module finds that object's span in the raw text and keeps those bytes, never
a re-serialization. The issuer chains come from the response headers
(``TCB-Info-Issuer-Chain``, ``SGX-Enclave-Identity-Issuer-Chain``,
URL-encoded PEM) and the CRLs from the PCK CRL and root CA CRL endpoints
(DER or PEM).

Parsing checks the format only; signatures, dates and matching are the
verifier's (:mod:`wasmkeep.attestation.dcap`).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from cryptography import x509

from wasmkeep.attestation.dcap_limits import (
    MAX_CERTIFICATION_DATA_BYTES,
    MAX_COLLATERAL_JSON_BYTES,
    MAX_CRL_BYTES,
    MAX_TCB_LEVELS,
)
from wasmkeep.attestation.dcap_quote import parse_pem_chain
from wasmkeep.attestation.errors import EvidenceFormatError
from wasmkeep.attestation.x509_checked import load_crl

__all__ = [
    "ENCLAVE_TCB_STATUSES",
    "TCB_STATUSES",
    "Collateral",
    "EnclaveTcbLevel",
    "QeIdentity",
    "TcbInfo",
    "TcbLevel",
    "TdxModule",
    "TdxModuleIdentity",
    "load_crl",
    "parse_crl",
    "parse_issuer_chain",
    "parse_qe_identity",
    "parse_qvl_collateral",
    "parse_tcb_info",
]

#: tcbStatus values of a TCB Info's TCB levels (PCS API v4, TCB Info v3).
TCB_STATUSES = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "Revoked",
    }
)
#: tcbStatus values of a QE Identity's or a TDX module identity's TCB levels.
ENCLAVE_TCB_STATUSES = frozenset({"UpToDate", "OutOfDate", "Revoked"})

_SVN_COUNT = 16


@dataclass(frozen=True, slots=True)
class TcbLevel:
    """One TCB level: the minimum SVNs it requires, and the status it gives.

    `tdx_components` is set for TDX TCB Info only.
    """

    sgx_components: tuple[int, ...]
    pce_svn: int
    tdx_components: tuple[int, ...] | None
    tcb_date: datetime
    tcb_status: str
    advisory_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.sgx_components) != _SVN_COUNT:
            raise ValueError("a TCB level has 16 SGX TCB components")
        if self.tdx_components is not None and len(self.tdx_components) != _SVN_COUNT:
            raise ValueError("a TCB level has 16 TDX TCB components")
        if self.tcb_status not in TCB_STATUSES:
            raise ValueError(f"unknown TCB status {self.tcb_status!r}")


@dataclass(frozen=True, slots=True)
class EnclaveTcbLevel:
    """A TCB level of a QE Identity or of a TDX module identity: an ISVSVN."""

    isvsvn: int
    tcb_date: datetime
    tcb_status: str
    advisory_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.tcb_status not in ENCLAVE_TCB_STATUSES:
            raise ValueError(f"unknown enclave TCB status {self.tcb_status!r}")


@dataclass(frozen=True, slots=True)
class TdxModule:
    """The TDX module's expected signer and attributes (TCB Info ``tdxModule``)."""

    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes

    def __post_init__(self) -> None:
        if len(self.mrsigner) != 48 or len(self.attributes) != 8 or len(self.attributes_mask) != 8:
            raise ValueError("tdxModule: mrsigner is 48 bytes, attributes and mask 8")


@dataclass(frozen=True, slots=True)
class TdxModuleIdentity:
    """One entry of ``tdxModuleIdentities``: a module version's identity and TCB levels."""

    id: str
    module: TdxModule
    tcb_levels: tuple[EnclaveTcbLevel, ...]


@dataclass(frozen=True, slots=True)
class TcbInfo:
    """A TCB Info, with the exact bytes its signature covers (`body`)."""

    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_type: int
    tcb_evaluation_data_number: int
    tdx_module: TdxModule | None
    tdx_module_identities: tuple[TdxModuleIdentity, ...]
    tcb_levels: tuple[TcbLevel, ...]
    body: bytes
    signature: bytes

    def __post_init__(self) -> None:
        if len(self.fmspc) != 6 or len(self.pce_id) != 2 or len(self.signature) != 64:
            raise ValueError("TcbInfo: fmspc is 6 bytes, pceId 2, signature 64")
        if self.id not in ("SGX", "TDX"):
            raise ValueError(f"TcbInfo: unknown id {self.id!r}")


@dataclass(frozen=True, slots=True)
class QeIdentity:
    """A QE Identity (Enclave Identity v2), with the exact bytes its signature covers."""

    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    miscselect: int
    miscselect_mask: int
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isvprodid: int
    tcb_levels: tuple[EnclaveTcbLevel, ...]
    body: bytes
    signature: bytes

    def __post_init__(self) -> None:
        if (
            len(self.attributes) != 16
            or len(self.attributes_mask) != 16
            or len(self.mrsigner) != 32
            or len(self.signature) != 64
        ):
            raise ValueError("QeIdentity: attributes and mask 16 bytes, mrsigner 32, signature 64")


@dataclass(frozen=True, slots=True)
class Collateral:
    """What a verifier needs besides the quote, as fetched from Intel's PCS or a PCCS.

    Any part may be missing: the verifier then fails the checks that need it
    and says so, rather than skipping them. `pck_crl_issuer_chain` is kept
    for completeness; the verifier checks the PCK CRL against the
    intermediate CA of the quote's own PCK chain.
    """

    tcb_info: TcbInfo | None = None
    tcb_info_issuer_chain: tuple[x509.Certificate, ...] = ()
    qe_identity: QeIdentity | None = None
    qe_identity_issuer_chain: tuple[x509.Certificate, ...] = ()
    root_ca_crl: x509.CertificateRevocationList | None = None
    pck_crl: x509.CertificateRevocationList | None = None
    pck_crl_issuer_chain: tuple[x509.Certificate, ...] = ()


# --- strict JSON ---------------------------------------------------------------


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not allowed")


def _reject_float(text: str) -> object:
    raise ValueError(f"non-integer number {text[:20]} is not allowed")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:40]!r}")
        out[key] = value
    return out


_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicates, parse_constant=_reject_constant, parse_float=_reject_float
)
_WHITESPACE = " \t\n\r"


def _decode_text(raw: bytes, what: str) -> str:
    if len(raw) > MAX_COLLATERAL_JSON_BYTES:
        raise EvidenceFormatError(
            f"{what}: {len(raw)} bytes exceed the limit of {MAX_COLLATERAL_JSON_BYTES}"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise EvidenceFormatError(f"{what}: not UTF-8 at offset {error.start}") from None


def _skip(text: str, index: int) -> int:
    while index < len(text) and text[index] in _WHITESPACE:
        index += 1
    return index


def _top_level_members(text: str, what: str) -> dict[str, tuple[int, int, object]]:
    """The members of the JSON object `text`, each with its value's span.

    Walks the top-level object by hand (so the spans are those of the text
    as served) and decodes every value strictly: no duplicate keys, no NaN
    or Infinity, no fractions.
    """
    members: dict[str, tuple[int, int, object]] = {}
    try:
        index = _skip(text, 0)
        if text[index : index + 1] != "{":
            raise EvidenceFormatError(f"{what}: expected a JSON object at offset {index}")
        index = _skip(text, index + 1)
        if text[index : index + 1] == "}":
            index += 1
        else:
            while True:
                if text[index : index + 1] != '"':
                    raise EvidenceFormatError(f"{what}: expected a key at offset {index}")
                key, index = json.decoder.scanstring(text, index + 1, True)  # type: ignore[attr-defined]
                index = _skip(text, index)
                if text[index : index + 1] != ":":
                    raise EvidenceFormatError(f"{what}: expected ':' at offset {index}")
                start = _skip(text, index + 1)
                value, end = _DECODER.raw_decode(text, start)
                if key in members:
                    raise EvidenceFormatError(f"{what}: duplicate key {key[:40]!r}")
                members[key] = (start, end, value)
                index = _skip(text, end)
                if text[index : index + 1] == ",":
                    index = _skip(text, index + 1)
                    continue
                if text[index : index + 1] == "}":
                    index += 1
                    break
                raise EvidenceFormatError(f"{what}: expected ',' or '}}' at offset {index}")
        index = _skip(text, index)
        if index != len(text):
            raise EvidenceFormatError(f"{what}: unexpected text at offset {index}")
    except (ValueError, RecursionError) as error:
        if isinstance(error, EvidenceFormatError):
            raise
        raise EvidenceFormatError(f"{what}: invalid JSON: {str(error)[:120]}") from None
    return members


def _decode_object(text: str, what: str) -> Mapping[str, object]:
    try:
        value = _DECODER.decode(text)
    except (ValueError, RecursionError) as error:
        raise EvidenceFormatError(f"{what}: invalid JSON: {str(error)[:120]}") from None
    if not isinstance(value, dict):
        raise EvidenceFormatError(f"{what}: expected a JSON object")
    return value


# --- typed field access -----------------------------------------------------------


class _Fields:
    """Typed access to a JSON object's fields, naming the JSON path in errors."""

    __slots__ = ("object", "path", "what")

    def __init__(self, value: object, path: str, what: str) -> None:
        if not isinstance(value, dict):
            raise EvidenceFormatError(f"{what}: {path} must be an object")
        self.object: Mapping[str, object] = value
        self.path = path
        self.what = what

    def error(self, key: str, expected: str) -> EvidenceFormatError:
        return EvidenceFormatError(f"{self.what}: {self.path}.{key} must be {expected}")

    def has(self, key: str) -> bool:
        return key in self.object

    def integer(self, key: str, maximum: int = 0xFFFF) -> int:
        value = self.object.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
            raise self.error(key, f"an integer 0..{maximum}")
        return value

    def string(self, key: str) -> str:
        value = self.object.get(key)
        if not isinstance(value, str):
            raise self.error(key, "a string")
        return value

    def hex(self, key: str, size: int) -> bytes:
        value = self.string(key)
        if len(value) != 2 * size or not _HEX.fullmatch(value):
            raise self.error(key, f"{size} bytes in hex")
        return bytes.fromhex(value)

    def date(self, key: str) -> datetime:
        value = self.string(key)
        if not _DATE.fullmatch(value):
            raise self.error(key, "a UTC date like 2024-01-31T12:00:00Z")
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
        except ValueError:
            raise self.error(key, "a valid date") from None

    def status(self, key: str, allowed: frozenset[str]) -> str:
        value = self.string(key)
        if value not in allowed:
            raise self.error(key, f"one of {', '.join(sorted(allowed))}")
        return value

    def array(self, key: str, *, limit: int = MAX_TCB_LEVELS) -> list[object]:
        value = self.object.get(key)
        if not isinstance(value, list) or len(value) > limit:
            raise self.error(key, f"an array of at most {limit} items")
        return value

    def child(self, key: str) -> _Fields:
        return _Fields(self.object.get(key), f"{self.path}.{key}", self.what)

    def advisories(self) -> tuple[str, ...]:
        if "advisoryIDs" not in self.object:
            return ()
        items = self.array("advisoryIDs")
        if not all(isinstance(item, str) and _ADVISORY.fullmatch(item) for item in items):
            raise self.error("advisoryIDs", "advisory IDs like INTEL-SA-00123")
        return tuple(str(item) for item in items)


_HEX = re.compile(r"[0-9A-Fa-f]*")
_DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z")
_ADVISORY = re.compile(r"[A-Z0-9-]{1,40}")


# --- TCB Info -------------------------------------------------------------------


def parse_tcb_info(raw_json: bytes) -> TcbInfo:
    """A PCS "Get TCB Info" response body: ``{"tcbInfo": {...}, "signature": "..."}``.

    Keeps the raw bytes of the ``tcbInfo`` object as served, which its
    signature covers. Raises EvidenceFormatError.
    """
    what = "TCB Info"
    text = _decode_text(bytes(raw_json), what)
    members = _top_level_members(text, what)
    if set(members) != {"tcbInfo", "signature"}:
        raise EvidenceFormatError(f"{what}: expected exactly the keys tcbInfo and signature")
    start, end, value = members["tcbInfo"]
    signature = _signature(members["signature"][2], what)
    return _tcb_info_from_body(text[start:end], value, signature, what)


def _signature(value: object, what: str) -> bytes:
    if not isinstance(value, str) or len(value) != 128 or not _HEX.fullmatch(value):
        raise EvidenceFormatError(f"{what}: signature must be 64 bytes in hex (r||s)")
    return bytes.fromhex(value)


def _tcb_info_from_body(body_text: str, value: object, signature: bytes, what: str) -> TcbInfo:
    fields = _Fields(value, "tcbInfo", what)
    version = fields.integer("version")
    if version == 3:
        tcb_id = fields.string("id")
        if tcb_id not in ("SGX", "TDX"):
            raise fields.error("id", '"SGX" or "TDX"')
    elif version == 2:
        tcb_id = "SGX"  # v2 has no id: it is SGX only
    else:
        raise fields.error("version", "2 or 3")
    tdx = tcb_id == "TDX"
    tdx_module = _tdx_module(fields.child("tdxModule")) if tdx else None
    identities: tuple[TdxModuleIdentity, ...] = ()
    if tdx and fields.has("tdxModuleIdentities"):
        identities = tuple(
            _tdx_module_identity(_Fields(item, f"tcbInfo.tdxModuleIdentities[{index}]", what))
            for index, item in enumerate(fields.array("tdxModuleIdentities"))
        )
    levels = fields.array("tcbLevels")
    if not levels:
        raise fields.error("tcbLevels", "a non-empty array")
    tcb_levels = tuple(
        _tcb_level(_Fields(item, f"tcbInfo.tcbLevels[{index}]", what), version, tdx)
        for index, item in enumerate(levels)
    )
    return TcbInfo(
        id=tcb_id,
        version=version,
        issue_date=fields.date("issueDate"),
        next_update=fields.date("nextUpdate"),
        fmspc=fields.hex("fmspc", 6),
        pce_id=fields.hex("pceId", 2),
        tcb_type=fields.integer("tcbType") if version == 3 else 0,
        tcb_evaluation_data_number=fields.integer("tcbEvaluationDataNumber", 0xFFFFFFFF),
        tdx_module=tdx_module,
        tdx_module_identities=identities,
        tcb_levels=tcb_levels,
        body=body_text.encode("utf-8"),
        signature=signature,
    )


def _tcb_level(fields: _Fields, version: int, tdx: bool) -> TcbLevel:
    tcb = fields.child("tcb")
    if version == 2:
        sgx = tuple(tcb.integer(f"sgxtcbcomp{index:02d}svn", 0xFF) for index in range(1, 17))
    else:
        sgx = _components(tcb, "sgxtcbcomponents")
    return TcbLevel(
        sgx_components=sgx,
        pce_svn=tcb.integer("pcesvn"),
        tdx_components=_components(tcb, "tdxtcbcomponents") if tdx else None,
        tcb_date=fields.date("tcbDate"),
        tcb_status=fields.status("tcbStatus", TCB_STATUSES),
        advisory_ids=fields.advisories(),
    )


def _components(tcb: _Fields, key: str) -> tuple[int, ...]:
    items = tcb.array(key, limit=_SVN_COUNT)
    if len(items) != _SVN_COUNT:
        raise tcb.error(key, f"an array of {_SVN_COUNT} components")
    return tuple(
        _Fields(item, f"{tcb.path}.{key}[{index}]", tcb.what).integer("svn", 0xFF)
        for index, item in enumerate(items)
    )


def _tdx_module(fields: _Fields) -> TdxModule:
    return TdxModule(
        mrsigner=fields.hex("mrsigner", 48),
        attributes=fields.hex("attributes", 8),
        attributes_mask=fields.hex("attributesMask", 8),
    )


def _tdx_module_identity(fields: _Fields) -> TdxModuleIdentity:
    identity_id = fields.string("id")
    if not re.fullmatch(r"TDX_[0-9A-Fa-f]{2}", identity_id):
        raise fields.error("id", "TDX_ and two hex digits")
    return TdxModuleIdentity(
        id=identity_id,
        module=_tdx_module(fields),
        tcb_levels=_enclave_levels(fields),
    )


def _enclave_levels(fields: _Fields) -> tuple[EnclaveTcbLevel, ...]:
    items = fields.array("tcbLevels")
    if not items:
        raise fields.error("tcbLevels", "a non-empty array")
    levels = []
    for index, item in enumerate(items):
        level = _Fields(item, f"{fields.path}.tcbLevels[{index}]", fields.what)
        levels.append(
            EnclaveTcbLevel(
                isvsvn=level.child("tcb").integer("isvsvn"),
                tcb_date=level.date("tcbDate"),
                tcb_status=level.status("tcbStatus", ENCLAVE_TCB_STATUSES),
                advisory_ids=level.advisories(),
            )
        )
    return tuple(levels)


# --- QE Identity ------------------------------------------------------------------


def parse_qe_identity(raw_json: bytes) -> QeIdentity:
    """A PCS "Get QE Identity" response body: ``{"enclaveIdentity": {...}, "signature": "..."}``.

    Keeps the raw bytes of the ``enclaveIdentity`` object as served.
    Raises EvidenceFormatError.
    """
    what = "QE Identity"
    text = _decode_text(bytes(raw_json), what)
    members = _top_level_members(text, what)
    if set(members) != {"enclaveIdentity", "signature"}:
        raise EvidenceFormatError(
            f"{what}: expected exactly the keys enclaveIdentity and signature"
        )
    start, end, value = members["enclaveIdentity"]
    signature = _signature(members["signature"][2], what)
    return _qe_identity_from_body(text[start:end], value, signature, what)


def _qe_identity_from_body(
    body_text: str, value: object, signature: bytes, what: str
) -> QeIdentity:
    fields = _Fields(value, "enclaveIdentity", what)
    version = fields.integer("version")
    if version != 2:
        raise fields.error("version", "2")
    identity_id = fields.string("id")
    if identity_id not in ("QE", "QVE", "TD_QE"):
        raise fields.error("id", '"QE", "QVE" or "TD_QE"')
    return QeIdentity(
        id=identity_id,
        version=version,
        issue_date=fields.date("issueDate"),
        next_update=fields.date("nextUpdate"),
        tcb_evaluation_data_number=fields.integer("tcbEvaluationDataNumber", 0xFFFFFFFF),
        # MISCSELECT is printed as a big-endian u32 (as Intel's QVL reads it).
        miscselect=int.from_bytes(fields.hex("miscselect", 4), "big"),
        miscselect_mask=int.from_bytes(fields.hex("miscselectMask", 4), "big"),
        attributes=fields.hex("attributes", 16),
        attributes_mask=fields.hex("attributesMask", 16),
        mrsigner=fields.hex("mrsigner", 32),
        isvprodid=fields.integer("isvprodid"),
        tcb_levels=_enclave_levels(fields),
        body=body_text.encode("utf-8"),
        signature=signature,
    )


# --- certificates and CRLs ------------------------------------------------------------


def parse_issuer_chain(data: bytes) -> tuple[x509.Certificate, ...]:
    """An issuer chain header value: PEM certificates, URL-encoded or not."""
    data = bytes(data)
    if len(data) > MAX_CERTIFICATION_DATA_BYTES:
        raise EvidenceFormatError(
            f"issuer chain: {len(data)} bytes exceed the limit of {MAX_CERTIFICATION_DATA_BYTES}"
        )
    if data.lstrip().startswith(b"%2D"):
        try:
            data = urllib.parse.unquote_to_bytes(data.strip())
        except ValueError:  # pragma: no cover - unquote_to_bytes accepts any bytes
            raise EvidenceFormatError("issuer chain: bad URL encoding") from None
    return parse_pem_chain(data, what="issuer chain")


def parse_crl(data: bytes) -> x509.CertificateRevocationList:
    """A CRL, DER or PEM. Raises EvidenceFormatError."""
    data = bytes(data)
    if len(data) > MAX_CRL_BYTES:
        raise EvidenceFormatError(f"CRL: {len(data)} bytes exceed the limit of {MAX_CRL_BYTES}")
    if data.lstrip().startswith(b"-----BEGIN X509 CRL-----"):
        return load_crl(data, "CRL", pem=True)
    if data[:1] == b"\x30":
        return load_crl(data, "CRL")
    raise EvidenceFormatError("CRL: neither DER (SEQUENCE at offset 0) nor PEM")


# --- dcap-qvl's one-file collateral -------------------------------------------------


def parse_qvl_collateral(raw_json: bytes) -> Collateral:
    """The collateral JSON of Phala's dcap-qvl (``QuoteCollateralV3``).

    Keys: ``tcb_info`` and ``qe_identity`` (the inner objects as signed,
    strings), their ``*_signature`` (hex) and ``*_issuer_chain`` (PEM),
    ``root_ca_crl`` and ``pck_crl`` (DER in hex), ``pck_crl_issuer_chain``
    (PEM). Other keys are ignored. Raises EvidenceFormatError.
    """
    what = "dcap-qvl collateral"
    text = _decode_text(bytes(raw_json), what)
    fields = _Fields(_decode_object(text, what), "$", what)

    def crl(key: str) -> x509.CertificateRevocationList:
        value = fields.string(key)
        if len(value) > 2 * MAX_CRL_BYTES or len(value) % 2 or not _HEX.fullmatch(value):
            raise fields.error(key, "a DER CRL in hex")
        return parse_crl(bytes.fromhex(value))

    def chain(key: str) -> tuple[x509.Certificate, ...]:
        return parse_issuer_chain(fields.string(key).encode("utf-8"))

    return Collateral(
        tcb_info=_signed_body(fields, "tcb_info", _tcb_info_from_body, what),
        tcb_info_issuer_chain=chain("tcb_info_issuer_chain"),
        qe_identity=_signed_body(fields, "qe_identity", _qe_identity_from_body, what),
        qe_identity_issuer_chain=chain("qe_identity_issuer_chain"),
        root_ca_crl=crl("root_ca_crl"),
        pck_crl=crl("pck_crl"),
        pck_crl_issuer_chain=chain("pck_crl_issuer_chain"),
    )


_T = TypeVar("_T")


def _signed_body(
    fields: _Fields, key: str, build: Callable[[str, object, bytes, str], _T], what: str
) -> _T:
    # dcap-qvl keeps the signed object as a string: its UTF-8 bytes are
    # exactly what the signature covers.
    text = fields.string(key)
    if len(text) > MAX_COLLATERAL_JSON_BYTES:
        raise fields.error(key, f"at most {MAX_COLLATERAL_JSON_BYTES} characters")
    value = _decode_object(text, f"{what} {key}")
    return build(text, value, _signature(fields.string(f"{key}_signature"), what), what)
