"""CSRs as keeps make them, for the Steward's tests: wasmkeep's with software
evidence made here, and the real Enarx CSRs of tests/assets/attestation/enarx-csr."""

from __future__ import annotations

import datetime
import ipaddress
import os
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from wasmkeep.attestation.keep_csr import (
    EVIDENCE_OID,
    WORKLOAD_DIGEST_OID,
    EvidenceForm,
    KeepEvidence,
    encode_evidence,
    encode_workload_digest,
)
from wasmkeep.attestation.software import SoftwareEvidence, report_data

ENARX = Path(__file__).parent / "assets" / "attestation" / "enarx-csr"
MILAN_CSR = ENARX / "milan.signed.crl.csr"
ICELAKE_CSR = ENARX / "icelake.signed.tcb.crl.multi.xeon.csr"
#: The Milan report's launch MEASUREMENT (PROVENANCE: Enarx's test vector).
MILAN_MEASUREMENT = (
    "ff717ae719840c93c1fca3b7db96488454c3c21b43531488eecff51cfed3febc"
    "d91da8be87a4cbcbc52a3bae770987c3"
)
#: Times at which the Enarx vectors' certificates and collateral are valid.
MILAN_NOW = datetime.datetime(2023, 1, 1, tzinfo=datetime.UTC)
ICELAKE_NOW = datetime.datetime(2023, 1, 27, tzinfo=datetime.UTC)

DIGEST = "sha256:" + "5a" * 32
OTHER_DIGEST = "sha256:" + "a5" * 32

INSECURE_POLICY = "[insecure]\nallow = true\n"
ICELAKE_POLICY = (
    "[sgx]\n"
    'allowed_tcb_statuses = ["UpToDate", "OutOfDate"]\n'
    'allowed_advisories = ["INTEL-SA-00586", "INTEL-SA-00614", "INTEL-SA-00615", '
    '"INTEL-SA-00657"]\n'
    "allow_unchecked_qe_identity = true\n"
)


def spki_of(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def san(names: Sequence[str]) -> list[x509.GeneralName]:
    result: list[x509.GeneralName] = []
    for name in names:
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name))
    return result


@dataclass(frozen=True)
class KeepCsr:
    der: bytes
    key: CertificateIssuerPrivateKeyTypes

    @property
    def spki(self) -> bytes:
        return spki_of(self.key)


def csr_with(
    extensions: Sequence[tuple[str, bytes]],
    *,
    names: Sequence[str] = (),
    key: CertificateIssuerPrivateKeyTypes | None = None,
) -> KeepCsr:
    """A CSR requesting `extensions` (OID, raw value) and SAN `names`, signed by `key`."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    for oid, value in extensions:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False
        )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(san(names)), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return KeepCsr(csr.public_bytes(serialization.Encoding.DER), key)


def wasmkeep_csr(
    evidence: KeepEvidence,
    *,
    digest: str = DIGEST,
    names: Sequence[str] = (),
    key: CertificateIssuerPrivateKeyTypes | None = None,
) -> KeepCsr:
    """A wasmkeep keep's CSR carrying `evidence` as it is (bound or not)."""
    return csr_with(
        [
            (EVIDENCE_OID, encode_evidence(evidence)),
            (WORKLOAD_DIGEST_OID, encode_workload_digest(digest)),
        ],
        names=names,
        key=key,
    )


def cert_table(entries: Sequence[tuple[uuid.UUID, bytes]]) -> bytes:
    """An SNP certificate table (GHCB spec): entries, an all-zero entry, the blobs."""
    header = bytearray()
    body = bytearray()
    start = 24 * (len(entries) + 1)
    for guid, blob in entries:
        header += struct.pack("<16sII", guid.bytes, start + len(body), len(blob))
        body += blob
    return bytes(header + bytes(24) + body)


def software_csr(
    *,
    digest: str = DIGEST,
    backend: str = "process",
    names: Sequence[str] = ("keep.example", "127.0.0.1"),
    bind_spki: bytes | None = None,
    bind_digest: str | None = None,
    claimed_digest: str | None = None,
    general_names: Sequence[x509.GeneralName] | None = None,
    key: CertificateIssuerPrivateKeyTypes | None = None,
) -> KeepCsr:
    """A wasmkeep keep's CSR with software evidence, bound as a keep binds it,
    unless `bind_spki` or `bind_digest` binds something else."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    spki = spki_of(key)
    bound = report_data(bind_spki or spki, bind_digest or digest)
    evidence = SoftwareEvidence(backend, bound, os.urandom(16), claimed_digest or digest)
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier(EVIDENCE_OID),
                encode_evidence(KeepEvidence(EvidenceForm.SOFTWARE, evidence.encode())),
            ),
            critical=False,
        )
        .add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier(WORKLOAD_DIGEST_OID), encode_workload_digest(digest)
            ),
            critical=False,
        )
    )
    entries = list(general_names) if general_names is not None else san(names)
    if entries:
        builder = builder.add_extension(x509.SubjectAlternativeName(entries), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return KeepCsr(csr.public_bytes(serialization.Encoding.DER), key)
