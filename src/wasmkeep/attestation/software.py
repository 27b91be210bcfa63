"""Software evidence, for keeps without TEE hardware; and THE report_data binding.

**The binding.** Every keep, on every backend, binds two things into the 64
bytes of report_data its evidence carries: the public key of its TLS identity
(the SubjectPublicKeyInfo, DER) and the digest of the workload it runs.
:func:`report_data` computes those 64 bytes; the same function is used for
AMD SEV-SNP (REPORT_DATA), Intel TDX (REPORTDATA) and SGX (REPORTDATA), and for
the software evidence below, so that a verifier does the same thing for all of
them: compute ``report_data(key of the peer, workload digest)`` and compare it
with what the evidence carries. Evidence whose report_data matches was made
for that key (whoever holds the private key is the keep the evidence speaks
of) and that workload. (Enarx keeps bind differently, SHA-384 or SHA-256 of the
key alone; the CLI checks their CSRs the way Enarx does.)

**Software evidence** is what a keep without TEE hardware (nil, process, a vm
under TCG or plain KVM) presents in place of a hardware report, so that the
flow is the same on every backend. It is plainly marked insecure: its magic is
``WASMKEEP-INSECURE-EVIDENCE``, its claims say ``tee = software`` and
``debug = True`` (the host can read and change such a keep's memory at will,
which is what "debug" means for a hardware keep), and verification always adds
a check named ``insecure_evidence`` saying that no hardware protects the keep,
so that only a policy that explicitly allows it (``[insecure] allow = true``)
accepts it.

It is not signed, on purpose. A signature or a MAC needs a key the verifier
trusts and only the keep holds; without hardware there is no such key. A
signature with the keep's own TLS key would prove only possession of that key,
which the CSR or TLS handshake carrying the evidence proves already, and says
nothing about what the keep runs. So the honest content of software evidence is
"this keep claims to be a <backend> keep running <workload>, unverifiable":
what it proves is the binding (report_data) and nothing more. Anyone can make
software evidence for any key and any workload.

Encoding, version 1 (143 bytes, integers big-endian)::

    offset size  field
    0      27    magic  b"WASMKEEP-INSECURE-EVIDENCE\\0"
    27     2     version  (1)
    29     1     backend  (1 nil, 2 process, 3 vm)
    30     1     flags  (bit 0: a workload digest is present; other bits 0)
    31     16    nonce  (random, drawn when the evidence was made)
    47     32    workload SHA-256  (all zero when flag bit 0 is clear)
    79     64    report_data

The claimed workload digest is shown to people (the CLI prints it); a verifier
does not trust it: the workload it accepts is the one it bound through
report_data.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import serialization

from wasmkeep.attestation.errors import EvidenceFormatError
from wasmkeep.attestation.verdict import Check, Claims, Tee, Verdict

__all__ = [
    "REPORT_DATA_SIZE",
    "SOFTWARE_BACKENDS",
    "SOFTWARE_MAGIC",
    "SoftwareEvidence",
    "parse_software_evidence",
    "report_data",
    "verify_software",
]

#: Bytes of report_data in every TEE's evidence (SNP, TDX, SGX) and in ours.
REPORT_DATA_SIZE: Final = 64
#: The first bytes of software evidence; "INSECURE" is meant to be read.
SOFTWARE_MAGIC: Final = b"WASMKEEP-INSECURE-EVIDENCE\0"
#: The backends that make software evidence: keeps without TEE hardware.
SOFTWARE_BACKENDS: Final = ("nil", "process", "vm")

# Domain separation: these 64 bytes cannot be mistaken for a hash made for any
# other purpose, and a later binding gets a new label, not a new meaning.
_BINDING_LABEL = b"wasmkeep report_data v1\0"
_WORKLOAD_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_MAX_SPKI_SIZE = 16 * 1024  # an RSA-16384 key is ~2 KiB; anything larger is not a key

_VERSION = 1
_BACKEND_CODES: Mapping[str, int] = {"nil": 1, "process": 2, "vm": 3}
_BACKEND_NAMES: Mapping[int, str] = {code: name for name, code in _BACKEND_CODES.items()}
_FLAG_WORKLOAD = 0x01
_NONCE_SIZE = 16
_HEADER = len(SOFTWARE_MAGIC)  # 27
_OFFSETS = {  # field -> (offset, size), as in the module docstring
    "version": (_HEADER, 2),
    "backend": (_HEADER + 2, 1),
    "flags": (_HEADER + 3, 1),
    "nonce": (_HEADER + 4, _NONCE_SIZE),
    "workload": (_HEADER + 4 + _NONCE_SIZE, 32),
    "report_data": (_HEADER + 4 + _NONCE_SIZE + 32, REPORT_DATA_SIZE),
}
_SIZE = _HEADER + 4 + _NONCE_SIZE + 32 + REPORT_DATA_SIZE  # 143


def _check_workload_digest(digest: object) -> str:
    if not isinstance(digest, str) or not _WORKLOAD_DIGEST.fullmatch(digest):
        raise ValueError(
            f"a workload digest is 'sha256:' and 64 lowercase hex digits, got {digest!r:.80}"
        )
    return digest


def report_data(public_key_spki_der: bytes, workload_digest: str) -> bytes:
    """THE 64 bytes every wasmkeep keep binds into its evidence, on every TEE.

    SHA-512 over a domain-separated encoding of the keep's public key (its
    SubjectPublicKeyInfo in DER, exactly as in its certificate or CSR) and the
    workload digest (``sha256:<hex>``, as :class:`wasmkeep.workload.Workload`
    names it)::

        SHA-512( b"wasmkeep report_data v1\\0"
                 || u32be(len(spki)) || spki
                 || u32be(len(digest)) || digest (ASCII) )

    The lengths make the encoding unambiguous. The key must be a valid SPKI in
    its canonical DER form, so that one key has one report_data: a key written
    with a different (BER) encoding is refused rather than given a second
    binding. Raises ValueError for a malformed key or digest: these come from
    the caller, not from evidence.
    """
    if not isinstance(public_key_spki_der, bytes) or not public_key_spki_der:
        raise ValueError("the public key must be a non-empty SubjectPublicKeyInfo (DER)")
    if len(public_key_spki_der) > _MAX_SPKI_SIZE:
        raise ValueError(f"the public key is larger than {_MAX_SPKI_SIZE} bytes")
    try:
        key = serialization.load_der_public_key(public_key_spki_der)
    except (ValueError, TypeError) as error:
        raise ValueError(f"the public key is not a SubjectPublicKeyInfo in DER: {error}") from None
    canonical = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if canonical != public_key_spki_der:
        raise ValueError("the public key is not in canonical DER (re-encode it as DER)")
    digest = _check_workload_digest(workload_digest).encode("ascii")
    encoded = b"".join(
        (
            _BINDING_LABEL,
            len(public_key_spki_der).to_bytes(4, "big"),
            public_key_spki_der,
            len(digest).to_bytes(4, "big"),
            digest,
        )
    )
    return hashlib.sha512(encoded).digest()


@dataclass(frozen=True, slots=True)
class SoftwareEvidence:
    """Evidence of a keep without TEE hardware: claims nobody vouches for.

    Checked when built: a known backend, a 16-byte nonce, 64 bytes of
    report_data, a well-formed workload digest or None.
    """

    #: "nil", "process" or "vm".
    backend: str
    #: The 64 bytes the keep bound: :func:`report_data` of its key and workload.
    report_data: bytes
    #: Random, drawn when the evidence was made: two pieces never look alike.
    nonce: bytes
    #: The workload the keep says it runs (``sha256:<hex>``), if it said; a claim.
    workload_digest: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in _BACKEND_CODES:
            raise ValueError(
                f"backend must be one of {', '.join(SOFTWARE_BACKENDS)}, got {self.backend!r:.40}"
            )
        if not isinstance(self.report_data, bytes) or len(self.report_data) != REPORT_DATA_SIZE:
            raise ValueError(f"report_data must be {REPORT_DATA_SIZE} bytes")
        if not isinstance(self.nonce, bytes) or len(self.nonce) != _NONCE_SIZE:
            raise ValueError(f"the nonce must be {_NONCE_SIZE} bytes")
        if self.workload_digest is not None:
            _check_workload_digest(self.workload_digest)

    @property
    def version(self) -> int:
        return _VERSION

    def encode(self) -> bytes:
        """The version 1 encoding (module docstring); :func:`parse_software_evidence` reads it."""
        flags = 0
        workload = bytes(32)
        if self.workload_digest is not None:
            flags |= _FLAG_WORKLOAD
            workload = bytes.fromhex(self.workload_digest.removeprefix("sha256:"))
        return b"".join(
            (
                SOFTWARE_MAGIC,
                _VERSION.to_bytes(2, "big"),
                bytes((_BACKEND_CODES[self.backend], flags)),
                self.nonce,
                workload,
                self.report_data,
            )
        )


def parse_software_evidence(data: bytes) -> SoftwareEvidence:
    """Read software evidence; raise EvidenceFormatError naming the field and offset.

    Strict: the exact size of version 1, the magic, a known version and
    backend, no unknown flag, a zero workload field when no digest is claimed.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EvidenceFormatError("software evidence must be bytes")
    data = bytes(data[: _SIZE + 1])  # more than one byte past the size is not read at all
    if not data.startswith(SOFTWARE_MAGIC):
        if SOFTWARE_MAGIC.startswith(data):
            raise EvidenceFormatError(
                f"software evidence: magic at offset 0: truncated after {len(data)} bytes"
            )
        raise EvidenceFormatError(
            "software evidence: magic at offset 0: not WASMKEEP-INSECURE-EVIDENCE"
        )

    def field(name: str) -> bytes:
        offset, size = _OFFSETS[name]
        if len(data) < offset + size:
            raise EvidenceFormatError(
                f"software evidence: {name} at offset {offset}: truncated "
                f"({len(data)} bytes, version 1 is {_SIZE})"
            )
        return data[offset : offset + size]

    version = int.from_bytes(field("version"), "big")
    if version != _VERSION:
        raise EvidenceFormatError(
            f"software evidence: version at offset {_OFFSETS['version'][0]}: "
            f"unsupported version {version} (this wasmkeep reads version {_VERSION})"
        )
    backend_code = field("backend")[0]
    backend = _BACKEND_NAMES.get(backend_code)
    if backend is None:
        raise EvidenceFormatError(
            f"software evidence: backend at offset {_OFFSETS['backend'][0]}: "
            f"unknown backend code {backend_code}"
        )
    flags = field("flags")[0]
    if flags & ~_FLAG_WORKLOAD:
        raise EvidenceFormatError(
            f"software evidence: flags at offset {_OFFSETS['flags'][0]}: "
            f"unknown flags 0x{flags & ~_FLAG_WORKLOAD:02x}"
        )
    nonce = field("nonce")
    workload = field("workload")
    if flags & _FLAG_WORKLOAD:
        workload_digest: str | None = "sha256:" + workload.hex()
    elif any(workload):
        raise EvidenceFormatError(
            f"software evidence: workload at offset {_OFFSETS['workload'][0]}: "
            "not zero although no workload digest is claimed (flag bit 0 clear)"
        )
    else:
        workload_digest = None
    bound = field("report_data")
    if len(data) != _SIZE:
        raise EvidenceFormatError(
            f"software evidence: at offset {_SIZE}: trailing bytes after the end of version 1"
        )
    return SoftwareEvidence(backend, bound, nonce, workload_digest)


def verify_software(
    evidence: SoftwareEvidence | bytes, *, expected_report_data: bytes | None
) -> Verdict:
    """The verdict on software evidence: never accepted by itself in spirit.

    Checks, in order:

    1. ``insecure_evidence`` passes, saying that no hardware protects the keep
       and nothing is signed; a policy decides whether that is acceptable
       (:class:`wasmkeep.attestation.policy.Policy` refuses it by default).
    2. ``report_data``: the evidence carries `expected_report_data` (compared in
       constant time). Without an expected value the check passes saying it
       compared nothing, as for SNP and DCAP evidence: a verifier that trusts
       the evidence for a key must pass that key's report_data.

    Raw bytes are parsed first (EvidenceFormatError if malformed).
    """
    if not isinstance(evidence, SoftwareEvidence):
        evidence = parse_software_evidence(evidence)
    # 1. Nothing protects this keep: say so in a check every verdict lists.
    checks = [
        Check(
            "insecure_evidence",
            True,
            f"software evidence from a {evidence.backend} keep: no hardware protects this "
            "keep and nothing is signed; only a policy that allows insecure keeps accepts it",
        )
    ]
    # 2. The binding: the verifier's report_data (its peer's key and workload).
    if expected_report_data is None:
        # As for hardware evidence: inspecting evidence without a key to bind
        # it to is allowed, and the check says nothing was compared.
        checks.append(Check("report_data", True, "no expected report_data given: not compared"))
    elif hmac.compare_digest(evidence.report_data, expected_report_data):
        checks.append(Check("report_data", True, "report_data is the expected value"))
    else:
        checks.append(
            Check(
                "report_data",
                False,
                f"report_data {evidence.report_data.hex()[:16]}... is not the expected "
                f"{expected_report_data.hex()[:16]}...: the evidence was made for another "
                "key or workload",
            )
        )
    fields: dict[str, object] = {
        "version": evidence.version,
        "backend": evidence.backend,
        "nonce": evidence.nonce.hex(),
    }
    if evidence.workload_digest is not None:
        fields["workload_digest"] = evidence.workload_digest
    claims = Claims(
        tee=Tee.SOFTWARE,
        measurement=b"",  # nothing measured the keep
        report_data=evidence.report_data,
        debug=True,  # the host can read and change the keep's memory at will
        fields=fields,
    )
    return Verdict(claims, tuple(checks))
