"""The SGX extension of PCK certificates: the platform's TCB, FMSPC and PCE ID.

"Intel SGX PCK Certificate and Certificate Revocation List Profile
Specification", 1.3.5 (Intel SGX Extensions), OID 1.2.840.113741.1.13.1:
a SEQUENCE of (OID, value) pairs:

* .1 PPID (OCTET STRING, 16)
* .2 TCB: a SEQUENCE of (OID .2.1 to .2.16 INTEGER: the 16 SGX TCB component
  SVNs; .2.17 INTEGER: PCESVN; .2.18 OCTET STRING (16): CPUSVN)
* .3 PCE-ID (OCTET STRING, 2), .4 FMSPC (OCTET STRING, 6), .5 SGX Type
  (ENUMERATED: 0 standard, 1 scalable, 2 scalable with integrity)
* Platform CA certificates only: .6 Platform Instance ID (OCTET STRING, 16),
  .7 Configuration (SEQUENCE of .7.1 dynamicPlatform, .7.2 cachedKeys,
  .7.3 SMTEnabled, BOOLEAN each, all optional)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from cryptography import x509

from wasmkeep.attestation import der
from wasmkeep.attestation.errors import EvidenceFormatError

__all__ = ["SGX_EXTENSION_OID", "PckExtensions", "parse_pck_extensions"]

SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
_ENUMERATED = 0x0A


def _encode_oid(dotted: str) -> bytes:
    """The content octets of an OBJECT IDENTIFIER (X.690 8.19): entries are
    matched by their encoding, so nothing from outside is decoded."""
    arcs = [int(arc) for arc in dotted.split(".")]
    out = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        out.extend(reversed(chunk))
    return bytes(out)


_PPID = _encode_oid(SGX_EXTENSION_OID + ".1")
_TCB = SGX_EXTENSION_OID + ".2"
_PCE_ID = _encode_oid(SGX_EXTENSION_OID + ".3")
_FMSPC = _encode_oid(SGX_EXTENSION_OID + ".4")
_SGX_TYPE = _encode_oid(SGX_EXTENSION_OID + ".5")
_PLATFORM_INSTANCE_ID = _encode_oid(SGX_EXTENSION_OID + ".6")
_CONFIGURATION = _encode_oid(SGX_EXTENSION_OID + ".7")
_TCB_COMPONENTS = tuple(_encode_oid(f"{_TCB}.{index}") for index in range(1, 17))
_PCESVN = _encode_oid(f"{_TCB}.17")
_CPUSVN = _encode_oid(f"{_TCB}.18")
_DYNAMIC_PLATFORM = _encode_oid(SGX_EXTENSION_OID + ".7.1")
_CACHED_KEYS = _encode_oid(SGX_EXTENSION_OID + ".7.2")
_SMT_ENABLED = _encode_oid(SGX_EXTENSION_OID + ".7.3")


@dataclass(frozen=True, slots=True)
class PckExtensions:
    """What a PCK certificate says about its platform."""

    ppid: bytes
    sgx_components: tuple[int, ...]
    pce_svn: int
    cpusvn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int
    platform_instance_id: bytes | None = None
    dynamic_platform: bool | None = None
    cached_keys: bool | None = None
    smt_enabled: bool | None = None

    def __post_init__(self) -> None:
        if len(self.sgx_components) != 16 or len(self.cpusvn) != 16:
            raise ValueError("a PCK TCB has 16 components and a 16-byte CPUSVN")
        if len(self.ppid) != 16 or len(self.pce_id) != 2 or len(self.fmspc) != 6:
            raise ValueError("PPID is 16 bytes, PCE-ID 2, FMSPC 6")


def parse_pck_extensions(certificate: x509.Certificate) -> PckExtensions:
    """The SGX extension of a PCK certificate. Raises EvidenceFormatError."""
    try:
        extension = certificate.extensions.get_extension_for_oid(
            x509.ObjectIdentifier(SGX_EXTENSION_OID)
        )
    except x509.ExtensionNotFound:
        raise EvidenceFormatError(
            f"PCK certificate: no SGX extension ({SGX_EXTENSION_OID})"
        ) from None
    except ValueError as error:
        raise EvidenceFormatError(f"PCK certificate: bad extensions: {error}") from None
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):  # pragma: no cover - pyca has no parser
        raise EvidenceFormatError("PCK certificate: SGX extension has an unexpected type")
    return _parse(value.value)


# Cached: the same PCK comes with every quote of a platform. The result
# depends on the extension's bytes only; errors are not cached.
@functools.lru_cache(maxsize=256)
def _parse(data: bytes) -> PckExtensions:
    what = "PCK SGX extension"
    entries = _pairs(der.parse_der(data, what), what)

    def need(oid: bytes, name: str) -> der.Tlv:
        if oid not in entries:
            raise EvidenceFormatError(f"{what}: no {name}")
        return entries[oid]

    components, pce_svn, cpusvn = _tcb(need(_encode_oid(_TCB), "TCB"))
    sgx_type = need(_SGX_TYPE, "SGX Type")
    flags: dict[bytes, bool] = {}
    if _CONFIGURATION in entries:
        flags = _configuration(entries[_CONFIGURATION])
    return PckExtensions(
        ppid=_octets(need(_PPID, "PPID"), 16, "PPID"),
        sgx_components=components,
        pce_svn=pce_svn,
        cpusvn=cpusvn,
        pce_id=_octets(need(_PCE_ID, "PCE-ID"), 2, "PCE-ID"),
        fmspc=_octets(need(_FMSPC, "FMSPC"), 6, "FMSPC"),
        sgx_type=_small_unsigned(sgx_type, _ENUMERATED, "SGX Type"),
        platform_instance_id=(
            _octets(entries[_PLATFORM_INSTANCE_ID], 16, "Platform Instance ID")
            if _PLATFORM_INSTANCE_ID in entries
            else None
        ),
        dynamic_platform=flags.get(_DYNAMIC_PLATFORM),
        cached_keys=flags.get(_CACHED_KEYS),
        smt_enabled=flags.get(_SMT_ENABLED),
    )


def _pairs(sequence: der.Tlv, what: str) -> dict[bytes, der.Tlv]:
    """A SEQUENCE OF SEQUENCE { OBJECT IDENTIFIER, value }, by encoded OID."""
    sequence.expect(der.SEQUENCE, what)
    entries: dict[bytes, der.Tlv] = {}
    for entry in sequence.children():
        oid, value = entry.fields(der.SEQUENCE, what, ("OBJECT IDENTIFIER", "value"))
        oid.expect(der.OID, f"{what} entry")
        if oid.value in entries:
            raise EvidenceFormatError(f"{what}: an OBJECT IDENTIFIER twice at offset {oid.offset}")
        entries[oid.value] = value
    return entries


def _octets(tlv: der.Tlv, size: int, name: str) -> bytes:
    tlv.expect(der.OCTET_STRING, f"PCK SGX extension {name}")
    if len(tlv.value) != size:
        raise EvidenceFormatError(
            f"PCK SGX extension {name} at offset {tlv.offset}: {len(tlv.value)} bytes, not {size}"
        )
    return tlv.value


def _small_unsigned(tlv: der.Tlv, tag: int, name: str, maximum: int = 0xFFFF) -> int:
    what = f"PCK SGX extension {name}"
    tlv.expect(tag, what)
    # An ENUMERATED is encoded as an INTEGER (X.690 8.4): read it as one.
    value = der.Tlv(der.INTEGER, tlv.value, tlv.encoded, tlv.offset, tlv.depth).as_unsigned(what)
    if value > maximum:
        raise EvidenceFormatError(f"{what} at offset {tlv.offset}: {value} is above {maximum}")
    return value


def _tcb(tcb: der.Tlv) -> tuple[tuple[int, ...], int, bytes]:
    what = "PCK SGX extension TCB"
    values = _pairs(tcb, what)

    def need(oid: bytes, name: str) -> der.Tlv:
        if oid not in values:
            raise EvidenceFormatError(f"{what}: no {name}")
        return values[oid]

    components = tuple(
        _small_unsigned(need(oid, f"component {index}"), der.INTEGER, f"SVN {index}", 0xFF)
        for index, oid in enumerate(_TCB_COMPONENTS, start=1)
    )
    pce_svn = _small_unsigned(need(_PCESVN, "PCESVN"), der.INTEGER, "PCESVN")
    return components, pce_svn, _octets(need(_CPUSVN, "CPUSVN"), 16, "CPUSVN")


def _configuration(configuration: der.Tlv) -> dict[bytes, bool]:
    what = "PCK SGX extension Configuration"
    flags: dict[bytes, bool] = {}
    for oid, value in _pairs(configuration, what).items():
        value.expect(der.BOOLEAN, what)
        if value.value not in (b"\x00", b"\xff"):
            raise EvidenceFormatError(f"{what} at offset {value.offset}: BOOLEAN not DER")
        flags[oid] = value.value == b"\xff"
    return flags
