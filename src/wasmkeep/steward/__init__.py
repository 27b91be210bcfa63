"""The Steward: the certificate authority for attested keeps.

A keep proves what it is with the evidence in its CSR; the Steward appraises
that CSR (:mod:`wasmkeep.attestation.appraise`) against its operator's policy
and, if every check passes, issues a short-lived certificate whose extension
carries the verified claims. Clients that trust the Steward's CA therefore
trust the keep, and can read what it is from its certificate.

Modules: `ca` (the CA's key and certificate, on disk with mode 0600, its key
encrypted at rest), `issuer` (the certificates it issues), `service` (the
decision: appraise, check the names, issue, log), `app` (the HTTP API, Enarx
compatible, with an OpenAPI description), `server` (TLS and uvicorn),
`limits`, `errors`.

This is the part of wasmkeep that faces the untrusted network: everything a
client sends is bounded (`limits`) and parsed by the attestation package's
parsers, which raise only EvidenceFormatError.
"""
