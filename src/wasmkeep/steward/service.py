"""The Steward's decision on one CSR, apart from HTTP: appraise, check, issue, log.

:meth:`Steward.decide` is what every endpoint calls. It appraises the CSR
(:func:`~wasmkeep.attestation.appraise.appraise_csr`: its signature, the
binding, the evidence, the policy), adds the Steward's own checks (the key is
one it certifies, the names are ones it issues), and issues a certificate only
if every check passed. It logs one line per decision, accepted or refused and
why, with nothing secret in it (no keys; the evidence is not logged).

The verifiers and their caches are shared by every call, and the object is
safe to use from several threads at once.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from wasmkeep.attestation.appraise import Appraisal, SnpCertificates, appraise_csr
from wasmkeep.attestation.dcap import Collateral, DcapVerifier
from wasmkeep.attestation.errors import EvidenceFormatError
from wasmkeep.attestation.policy import Policy
from wasmkeep.attestation.snp import SnpVerifier
from wasmkeep.attestation.verdict import Check, Verdict
from wasmkeep.steward.ca import CertificateAuthority
from wasmkeep.steward.issuer import (
    DEFAULT_LIFETIME,
    IssuedCertificate,
    check_key,
    check_names,
    issue,
    name_text,
)
from wasmkeep.steward.limits import DEFAULT_STEWARD_LIMITS, StewardLimits

__all__ = ["Clock", "Decision", "Steward", "utc_now"]

_LOG = logging.getLogger("wasmkeep.steward")

#: Where the Steward reads the time: injectable, so that tests can appraise
#: evidence at the time its certificates were valid.
Clock = Callable[[], datetime.datetime]


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True, slots=True)
class Decision:
    """The Steward's answer to one CSR: every check, and the certificate if accepted."""

    appraisal: Appraisal
    #: The appraisal's verdict with the Steward's checks (csr_key, requested_names) after it.
    verdict: Verdict
    issued: IssuedCertificate | None

    @property
    def accepted(self) -> bool:
        return self.issued is not None

    @property
    def failures(self) -> tuple[Check, ...]:
        return self.verdict.failures

    def reason(self) -> str:
        """One line: the failed checks with their details (empty when accepted)."""
        return "; ".join(f"{check.name}: {check.detail}" for check in self.failures)


class Steward:
    """Decides on CSRs: the CA, the policy and what verification needs, held once."""

    def __init__(
        self,
        ca: CertificateAuthority,
        *,
        policy: Policy,
        lifetime: datetime.timedelta = DEFAULT_LIFETIME,
        clock: Clock = utc_now,
        collateral: Collateral | None = None,
        snp_certificates: SnpCertificates | None = None,
        snp_verifier: SnpVerifier | None = None,
        dcap_verifier: DcapVerifier | None = None,
        limits: StewardLimits = DEFAULT_STEWARD_LIMITS,
    ) -> None:
        if not limits.min_lifetime <= lifetime <= limits.max_lifetime:
            raise ValueError(
                f"the certificate lifetime must be from {limits.min_lifetime} "
                f"to {limits.max_lifetime}"
            )
        self.ca = ca
        self.policy = policy
        self.lifetime = lifetime
        self.clock = clock
        self.collateral = collateral
        self.snp_certificates = snp_certificates
        self.snp_verifier = snp_verifier or SnpVerifier()
        self.dcap_verifier = dcap_verifier or DcapVerifier()
        self.limits = limits

    def decide(self, csr: bytes, *, client: str = "-") -> Decision:
        """Appraise `csr` and issue a certificate if every check passes.

        Raises EvidenceFormatError for a malformed CSR (logged as refused);
        `client` names the requester in the log line.
        """
        now = self.clock()
        try:
            appraisal = appraise_csr(
                csr,
                policy=self.policy,
                now=now,
                collateral=self.collateral,
                snp_certificates=self.snp_certificates,
                snp_verifier=self.snp_verifier,
                dcap_verifier=self.dcap_verifier,
            )
        except EvidenceFormatError as error:
            _LOG.info("refused a malformed CSR from %s: %s", client, _one_line(str(error)))
            raise
        names_check, names = check_names(appraisal.names, self.limits)
        verdict = appraisal.verdict.plus([check_key(appraisal), names_check])
        issued = None
        if verdict.accepted:
            issued = issue(appraisal, self.ca, names=names, now=now, lifetime=self.lifetime)
        decision = Decision(appraisal, verdict, issued)
        _log(decision, client)
        return decision


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def _log(decision: Decision, client: str) -> None:
    appraisal = decision.appraisal
    claims = appraisal.claims
    what = (
        f"{appraisal.form.value} evidence, {claims.tee.value if claims else '?'} "
        f"({appraisal.backend}), workload {appraisal.workload_digest or 'not bound'}"
    )
    if decision.issued is not None:
        certificate = decision.issued.certificate
        names = ", ".join(name_text(name) for name in _names(certificate)) or "no names"
        _LOG.info(
            "accepted CSR from %s: %s; issued serial %x for %s until %s",
            client,
            what,
            certificate.serial_number,
            names,
            certificate.not_valid_after_utc.isoformat(),
        )
    else:
        _LOG.info(
            "refused CSR from %s: %s; failed %s",
            client,
            what,
            _one_line(decision.reason()),
        )


def _names(certificate: x509.Certificate) -> list[x509.GeneralName]:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value)
