"""Attestation evidence: parse and verify what keeps present, pure and without I/O.

The keep (to collect) and the Steward (to verify) share this package, so it
does no I/O of its own: callers pass bytes, certificates, collateral and the
current time. Every untrusted format has one parse function raising
:class:`~wasmkeep.attestation.errors.EvidenceFormatError`; verification returns
a :class:`~wasmkeep.attestation.verdict.Verdict` listing every check with its
reason, never a bare boolean.

Modules: `snp` (AMD SEV-SNP), `dcap` (Intel SGX and TDX quotes and
collateral), `software` (evidence of keeps without TEE hardware, marked
insecure), `policy` (the operator's rules), `enarx` (the evidence extensions
of Enarx CSRs).
"""
