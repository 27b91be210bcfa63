"""Hard limits on the attestation inputs that come from outside, kept in one place.

Evidence, certificates, collateral and policies reach wasmkeep from parties it
does not trust (a keep's host, a file an operator was handed, a collateral
service): each bound below keeps a hostile input from costing unbounded memory
or time. The SNP and DCAP parsers keep the limits of their own formats (report
and quote sizes, chain depth) beside their parse functions; these are the
limits of the policy, the software evidence, the files the CLI reads and what
a keep reads from the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_ATTESTATION_LIMITS", "AttestationLimits"]

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True, slots=True)
class AttestationLimits:
    #: Largest policy file, in bytes (a policy listing a thousand measurements
    #: is ~100 KiB of hex).
    max_policy_size: int = 256 * KiB
    #: Entries in any one list of a policy (measurements, digests, advisories, ...).
    max_policy_entries: int = 1024
    #: Largest evidence file `wasmkeep attest verify` reads: an SNP report is
    #: 1184 bytes, a DCAP quote with its PCK chain 5-8 KiB, an Enarx CSR with
    #: CRLs and TCB info ~13 KiB, a configfs-tsm capture ~10 KiB.
    max_evidence_size: int = 1 * MiB
    #: Largest certificate file (`--certs`): a few PEM or DER certificates.
    max_certificates_size: int = 1 * MiB
    #: Largest collateral file (`--collateral`): TCB info, QE identity, CRLs and
    #: their issuer chains in one JSON document (~16 KiB; a PCK CRL can grow).
    max_collateral_size: int = 4 * MiB
    #: Largest blob a keep reads from configfs-tsm (`outblob`, `auxblob`); the
    #: kernel caps `outblob` at 32 KiB (TSM_OUTBLOB_MAX), the SNP certificate
    #: table is a few pages.
    max_tsm_blob_size: int = 256 * KiB
    #: Largest SNP certificate table a keep accepts from SNP_GET_EXT_REPORT;
    #: the kernel asks for more room when its first buffer is too small.
    max_snp_certs_size: int = 64 * KiB


DEFAULT_ATTESTATION_LIMITS = AttestationLimits()
