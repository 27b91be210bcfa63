"""Appraise a keep's certificate request: what a Steward decides before it issues.

A keep asks for a certificate with a PKCS #10 CSR that carries its evidence
(:mod:`~wasmkeep.attestation.keep_csr`). :func:`appraise_csr` takes the CSR's
bytes and returns an :class:`Appraisal`: the final :class:`Verdict` with every
check made (the CSR's signature, the binding, the verifier's checks and the
policy's), and what the certificate would say (the key, the bound workload
digest, the backend, the names asked for). Both the Steward and
``wasmkeep attest verify`` use it, so a CSR is judged the same way by both.

Two kinds of CSR are read:

- **wasmkeep's**: the extensions :data:`~.keep_csr.EVIDENCE_OID` (software
  evidence, an SEV-SNP report with its certificate table, or a TDX quote) and
  :data:`~.keep_csr.WORKLOAD_DIGEST_OID`. The evidence binds both the CSR's key
  and the workload: its report_data must be
  ``software.report_data(CSR SubjectPublicKeyInfo, digest)`` on every form.
- **Enarx's**: :data:`~.keep_csr.ENARX_SNP_OID` or :data:`~.keep_csr.ENARX_SGX_OID`,
  binding the key only (SNP: REPORT_DATA[0:48] = SHA-384 of the SubjectPublicKeyInfo;
  SGX: REPORTDATA = SHA-256 of it and 32 zero bytes); no workload is bound.

Pure and without I/O: the caller passes the policy, the time, collateral and
the (shared, caching) verifiers. What is promised: for any bytes whatsoever,
:func:`appraise_csr` returns an Appraisal or raises
:class:`~wasmkeep.attestation.errors.EvidenceFormatError` naming what is wrong
(not a CSR, no evidence or evidence of two kinds, malformed evidence, SNP
evidence without the VCEK that signed it). A CSR that is well formed but not
trustworthy (a bad signature, evidence for another key, a policy that refuses
it) is an Appraisal whose verdict is refused, naming the failed checks.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import threading
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from wasmkeep.attestation.dcap import (
    Collateral,
    DcapVerifier,
    Quote,
    enarx_sgx_report_data,
    parse_enarx_sgx_extension,
    parse_quote,
)
from wasmkeep.attestation.errors import EvidenceFormatError
from wasmkeep.attestation.keep_csr import (
    ENARX_SGX_OID,
    ENARX_SNP_OID,
    EVIDENCE_OID,
    WORKLOAD_DIGEST_OID,
    EvidenceForm,
    decode_evidence,
    decode_workload_digest,
)
from wasmkeep.attestation.policy import Policy
from wasmkeep.attestation.snp import (
    SnpReport,
    SnpVerifier,
    parse_enarx_snp_extension,
    parse_tsm_capture,
)
from wasmkeep.attestation.software import (
    parse_software_evidence,
    report_data,
    verify_software,
)
from wasmkeep.attestation.verdict import Check, Claims, Verdict
from wasmkeep.attestation.x509_checked import X509_PARSE_ERRORS

__all__ = [
    "ENARX_KVM_OID",
    "MAX_CSR_SIZE",
    "Appraisal",
    "CsrForm",
    "SnpCertificates",
    "appraise_csr",
    "parse_csr",
]

#: Largest CSR read, in bytes (DER or PEM): the evidence extension's limit
#: (128 KiB) as PEM, with room for the rest of the request.
MAX_CSR_SIZE = 256 * 1024

#: Enarx's KVM "evidence" extension: an empty claim that no hardware backs.
ENARX_KVM_OID = "1.3.6.1.4.1.58270.1.1"

#: How much of a foreign error message is worth showing.
_DETAIL = 160


class CsrForm(StrEnum):
    """Which evidence a CSR carried, and so how it was bound and verified."""

    SOFTWARE = "software"
    SNP_REPORT = "snp-report"
    TDX_QUOTE = "tdx-quote"
    ENARX_SNP = "enarx-snp"
    ENARX_SGX = "enarx-sgx"

    @property
    def enarx(self) -> bool:
        """True for Enarx's evidence extensions, which bind the key but no workload."""
        return self in (CsrForm.ENARX_SNP, CsrForm.ENARX_SGX)


@dataclass(frozen=True, slots=True)
class SnpCertificates:
    """AMD certificates and CRLs the caller supplies for SNP evidence.

    A given VCEK (or VLEK), ASK or ARK replaces the one the evidence came with
    (the certificate table of a wasmkeep CSR, the VCEK of an Enarx CSR); the
    CRLs are added to the evidence's. Every one is checked against AMD's pinned
    roots by the verifier, so a caller may pass whatever it was handed.
    """

    vcek: x509.Certificate | None = None
    ask: x509.Certificate | None = None
    ark: x509.Certificate | None = None
    crls: tuple[x509.CertificateRevocationList, ...] = ()


@dataclass(frozen=True, slots=True)
class Appraisal:
    """What a Steward decided about a CSR, and what a certificate for it would say.

    `verdict` lists every check in order: ``csr_signature``, ``binding``, the
    verifier's, then the policy's; the CSR is acceptable only if all passed.
    `workload_digest` is the workload the evidence binds (None for Enarx
    evidence, which binds none, and when the binding failed). `backend` is the
    software evidence's backend (nil, process, vm) or else the TEE (snp, tdx,
    sgx). `names` are the SubjectAlternativeName entries the CSR asks for, as
    given: the issuer decides which it accepts.
    """

    verdict: Verdict
    csr: x509.CertificateSigningRequest
    spki: bytes
    workload_digest: str | None
    backend: str
    names: tuple[x509.GeneralName, ...]
    form: CsrForm

    @property
    def accepted(self) -> bool:
        return self.verdict.accepted

    @property
    def claims(self) -> Claims | None:
        return self.verdict.claims

    @property
    def failures(self) -> tuple[Check, ...]:
        return self.verdict.failures


@dataclass(frozen=True, slots=True)
class _Parsed:
    csr: x509.CertificateSigningRequest
    spki: bytes
    signed: bool
    extensions: dict[str, x509.Extension[x509.ExtensionType]]
    names: tuple[x509.GeneralName, ...]


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:_DETAIL]


def parse_csr(data: bytes) -> x509.CertificateSigningRequest:
    """A PKCS #10 CSR from DER or PEM bytes, with every part :func:`appraise_csr`
    reads parsed now; EvidenceFormatError if it is not one."""
    return _parse(data).csr


def _parse(data: bytes) -> _Parsed:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EvidenceFormatError("a CSR is bytes")
    data = bytes(data)
    if not data:
        raise EvidenceFormatError("not a CSR: the request is empty")
    if len(data) > MAX_CSR_SIZE:
        raise EvidenceFormatError(f"the CSR is {len(data)} bytes, over the limit of {MAX_CSR_SIZE}")
    try:
        if data.lstrip()[:10] == b"-----BEGIN":
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
        # pyca parses lazily: read now every part used below, so that a damaged
        # one is a format error here rather than a ValueError later.
        extensions = {extension.oid.dotted_string: extension for extension in csr.extensions}
        spki = csr.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        _ = csr.subject, csr.signature_hash_algorithm
        signed = csr.is_signature_valid
        names: tuple[x509.GeneralName, ...] = ()
        san = extensions.get(x509.SubjectAlternativeName.oid.dotted_string)
        if san is not None:
            value = san.value
            if not isinstance(value, x509.SubjectAlternativeName):
                raise EvidenceFormatError("the CSR's SubjectAlternativeName is not readable")
            names = tuple(value)
    except X509_PARSE_ERRORS as error:
        raise EvidenceFormatError(f"not a CSR (PKCS #10, DER or PEM): {_one_line(error)}") from None
    return _Parsed(csr, spki, signed, extensions, names)


def _raw(extension: x509.Extension[x509.ExtensionType], what: str) -> bytes:
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise EvidenceFormatError(f"the CSR's {what} extension is not raw bytes")
    return value.value


# Verifiers used when the caller passes none: shared so that their caches serve
# every call in the process (made on first use: building one reads AMD's roots).
_DEFAULTS_LOCK = threading.Lock()
_DEFAULT_SNP: SnpVerifier | None = None
_DEFAULT_DCAP: DcapVerifier | None = None


def _default_snp() -> SnpVerifier:
    global _DEFAULT_SNP  # noqa: PLW0603 - a lazily made process-wide cache
    with _DEFAULTS_LOCK:
        if _DEFAULT_SNP is None:
            _DEFAULT_SNP = SnpVerifier()
        return _DEFAULT_SNP


def _default_dcap() -> DcapVerifier:
    global _DEFAULT_DCAP  # noqa: PLW0603 - a lazily made process-wide cache
    with _DEFAULTS_LOCK:
        if _DEFAULT_DCAP is None:
            _DEFAULT_DCAP = DcapVerifier()
        return _DEFAULT_DCAP


@dataclass(frozen=True, slots=True)
class _Context:
    now: datetime.datetime
    collateral: Collateral | None
    snp_certificates: SnpCertificates
    snp_verifier: SnpVerifier
    dcap_verifier: DcapVerifier
    product: str | None


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One form's result: the binding check, the verifier's verdict, the backend."""

    binding: Check
    verdict: Verdict
    backend: str


def appraise_csr(
    csr: bytes,
    *,
    policy: Policy,
    now: datetime.datetime,
    collateral: Collateral | None = None,
    snp_certificates: SnpCertificates | None = None,
    snp_verifier: SnpVerifier | None = None,
    dcap_verifier: DcapVerifier | None = None,
    product: str | None = None,
) -> Appraisal:
    """Appraise a keep's CSR (DER, or PEM) at time `now` under `policy`.

    `collateral` is Intel's, for TDX quotes and Enarx SGX CSRs (it fills in and
    replaces what an Enarx CSR carries); `snp_certificates` the AMD
    certificates and CRLs the caller has (see :class:`SnpCertificates`);
    `snp_verifier` and `dcap_verifier` are the caches to use (shared ones when
    None); `product` names the EPYC product for SNP reports that name none.
    Raises EvidenceFormatError for malformed input (see the module docstring),
    ValueError for a naive `now`.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("`now` must be timezone-aware")
    context = _Context(
        now=now,
        collateral=collateral,
        snp_certificates=snp_certificates or SnpCertificates(),
        snp_verifier=snp_verifier or _default_snp(),
        dcap_verifier=dcap_verifier or _default_dcap(),
        product=product,
    )
    # 1. Parse the CSR (PKCS #10, RFC 2986): DER, or PEM for people.
    parsed = _parse(csr)

    # 2. Proof of possession (RFC 2986, 4.2): the CSR is signed by the key it
    #    carries, so whoever made it holds that key, the key the evidence binds.
    possession = Check(
        "csr_signature",
        parsed.signed,
        "the CSR is signed by the key its evidence binds"
        if parsed.signed
        else "the CSR's signature does not verify with its own key",
    )

    # 3. Find the evidence: exactly one kind, wasmkeep's or Enarx's.
    form, value, digest = _find_evidence(parsed.extensions)

    # 4. The binding: recompute the report_data the evidence must carry from the
    #    CSR's key (and, for wasmkeep evidence, the workload digest), compare it;
    # 5. verify the evidence itself, passing the same report_data so that the
    #    verifier's own report_data check compares it too.
    try:
        if form is CsrForm.ENARX_SNP:
            outcome = _enarx_snp(value, parsed.spki, context)
        elif form is CsrForm.ENARX_SGX:
            outcome = _enarx_sgx(value, parsed.spki, context)
        else:
            assert digest is not None  # _find_evidence pairs the evidence with a digest
            outcome = _wasmkeep(value, parsed.spki, digest, context)
    except EvidenceFormatError as error:
        raise EvidenceFormatError(f"the CSR's {form.value} evidence: {error}") from None

    bound = digest if outcome.binding.passed else None
    verified = Verdict(
        outcome.verdict.claims, (possession, outcome.binding, *outcome.verdict.checks)
    )
    # 6. The operator's policy, with the workload digest the evidence binds
    #    (policy.evaluate trusts the caller for that: here it is the bound one).
    final = policy.evaluate(verified, workload_digest=bound)
    return Appraisal(
        verdict=final,
        csr=parsed.csr,
        spki=parsed.spki,
        workload_digest=bound,
        backend=outcome.backend,
        names=parsed.names,
        form=form,
    )


def _find_evidence(
    extensions: dict[str, x509.Extension[x509.ExtensionType]],
) -> tuple[CsrForm, bytes, str | None]:
    """The CSR's evidence extension (its form and raw value) and the workload
    digest a wasmkeep CSR names (None for Enarx's)."""
    present = [oid for oid in (EVIDENCE_OID, ENARX_SNP_OID, ENARX_SGX_OID) if oid in extensions]
    if not present:
        if ENARX_KVM_OID in extensions:
            raise EvidenceFormatError(
                f"the CSR carries only Enarx's KVM extension ({ENARX_KVM_OID}): "
                "it is no evidence, nothing vouches for such a keep"
            )
        raise EvidenceFormatError(
            f"the CSR carries no Enarx evidence extension ({ENARX_SNP_OID} for SNP, "
            f"{ENARX_SGX_OID} for SGX) and no wasmkeep evidence extension ({EVIDENCE_OID})"
        )
    if len(present) > 1:
        raise EvidenceFormatError(
            f"the CSR carries {len(present)} evidence extensions ({', '.join(present)}): "
            "a keep presents one piece of evidence"
        )
    (oid,) = present
    has_digest = WORKLOAD_DIGEST_OID in extensions
    if oid in (ENARX_SNP_OID, ENARX_SGX_OID):
        if has_digest:
            raise EvidenceFormatError(
                "the CSR pairs Enarx evidence with a wasmkeep workload digest: "
                "Enarx evidence binds no workload, so the digest would be unverified"
            )
        form = CsrForm.ENARX_SNP if oid == ENARX_SNP_OID else CsrForm.ENARX_SGX
        return form, _raw(extensions[oid], f"Enarx evidence ({oid})"), None
    if not has_digest:
        raise EvidenceFormatError(
            f"the CSR carries wasmkeep evidence but no workload digest extension "
            f"({WORKLOAD_DIGEST_OID}): the evidence binds one"
        )
    digest = decode_workload_digest(
        _raw(extensions[WORKLOAD_DIGEST_OID], "wasmkeep workload digest")
    )
    evidence = _raw(extensions[EVIDENCE_OID], "wasmkeep evidence")
    # The form is read here so that it is known before verification; the
    # evidence is decoded again (cheaply) where it is verified.
    return CsrForm(decode_evidence(evidence).form.value), evidence, digest


def _matches(actual: bytes, expected: bytes) -> bool:
    return hmac.compare_digest(actual, expected)


def _short(digest: str) -> str:
    return digest[: len("sha256:") + 16] + "..."


def _wasmkeep(value: bytes, spki: bytes, digest: str, context: _Context) -> _Outcome:
    keep_evidence = decode_evidence(value)
    try:
        expected = report_data(spki, digest)
    except ValueError as error:  # a key pyca re-encoded, so canonical: not expected
        raise EvidenceFormatError(f"the CSR's key cannot be bound: {error}") from None
    bound_text = f"report_data(the CSR's key, {_short(digest)})"

    def binding(actual: bytes, extra_problem: str | None = None) -> Check:
        if not _matches(actual, expected):
            return Check(
                "binding",
                False,
                f"the evidence's report_data is not {bound_text}: it was made for another "
                "key or another workload",
            )
        if extra_problem is not None:
            return Check("binding", False, extra_problem)
        return Check(
            "binding", True, f"report_data is {bound_text}: the evidence binds key and workload"
        )

    if keep_evidence.form is EvidenceForm.SOFTWARE:
        software = parse_software_evidence(keep_evidence.evidence)
        claimed = software.workload_digest
        problem = None
        if claimed is not None and claimed != digest:
            problem = (
                f"the software evidence claims workload {_short(claimed)}, the CSR {_short(digest)}"
            )
        verdict = verify_software(software, expected_report_data=expected)
        return _Outcome(binding(software.report_data, problem), verdict, software.backend)

    if keep_evidence.form is EvidenceForm.SNP_REPORT:
        captured = parse_tsm_capture(
            keep_evidence.evidence, keep_evidence.auxblob, product=context.product
        )
        verdict = _verify_snp(
            captured.report,
            captured.vcek,
            captured.ask,
            captured.ark,
            (),
            expected,
            context,
        )
        return _Outcome(binding(captured.report.report_data), verdict, "snp")

    quote = _quote(keep_evidence.evidence, "tdx", "wasmkeep tdx-quote evidence")
    verdict = context.dcap_verifier.verify_quote(
        quote, context.collateral or Collateral(), now=context.now, expected_report_data=expected
    )
    return _Outcome(binding(quote.report_data), verdict, "tdx")


def _quote(data: bytes, tee: str, what: str) -> Quote:
    try:
        quote = parse_quote(data)
    except EvidenceFormatError as error:
        raise EvidenceFormatError(f"{what}: {error}") from None
    if quote.tee.value != tee:
        raise EvidenceFormatError(f"{what}: a {quote.tee.value} quote, not {tee}")
    return quote


def _verify_snp(
    report: SnpReport,
    vcek: x509.Certificate | None,
    ask: x509.Certificate | None,
    ark: x509.Certificate | None,
    crls: Sequence[x509.CertificateRevocationList],
    expected: bytes,
    context: _Context,
) -> Verdict:
    given = context.snp_certificates
    vcek = given.vcek or vcek
    if vcek is None:
        raise EvidenceFormatError(
            "SNP evidence without the VCEK (or VLEK) that signed it: the keep's host "
            "supplied no certificate table, and none was given"
        )
    return context.snp_verifier.verify(
        report,
        vcek,
        product=context.product,
        ask=given.ask or ask,
        ark=given.ark or ark,
        crls=(*crls, *given.crls),
        now=context.now,
        expected_report_data=expected,
    )


def _enarx_snp(value: bytes, spki: bytes, context: _Context) -> _Outcome:
    report, vcek, crls = parse_enarx_snp_extension(value, product=context.product)
    # Enarx binds the key alone: REPORT_DATA[0:48] = SHA-384(SubjectPublicKeyInfo).
    expected = hashlib.sha384(spki).digest()
    verdict = _verify_snp(report, vcek, None, None, crls, expected, context)
    if _matches(report.report_data[:48], expected):
        binding = Check(
            "binding",
            True,
            "REPORT_DATA[0:48] is SHA-384 of the CSR's key (Enarx binds the key, no workload)",
        )
    else:
        binding = Check(
            "binding",
            False,
            "REPORT_DATA[0:48] is not SHA-384 of the CSR's key: the evidence was made for "
            "another key",
        )
    return _Outcome(binding, verdict, "snp")


def _enarx_sgx(value: bytes, spki: bytes, context: _Context) -> _Outcome:
    quote, carried = parse_enarx_sgx_extension(value)
    if quote.tee.value != "sgx":
        raise EvidenceFormatError(f"Enarx SGX evidence: a {quote.tee.value} quote, not sgx")
    # Enarx binds the key alone: REPORTDATA = SHA-256(SubjectPublicKeyInfo) || 32 zeros.
    expected = enarx_sgx_report_data(spki)
    collateral = _overlay(carried, context.collateral)
    verdict = context.dcap_verifier.verify_quote(
        quote, collateral, now=context.now, expected_report_data=expected
    )
    if _matches(quote.report_data, expected):
        binding = Check(
            "binding",
            True,
            "REPORTDATA is SHA-256 of the CSR's key and zeros (Enarx binds the key, no workload)",
        )
    else:
        binding = Check(
            "binding",
            False,
            "REPORTDATA is not SHA-256 of the CSR's key and zeros: the evidence was made for "
            "another key",
        )
    return _Outcome(binding, verdict, "sgx")


def _overlay(carried: Collateral, given: Collateral | None) -> Collateral:
    """`carried` with each part `given` has replaced: the operator's collateral
    is what it chose to fetch, and may be fresher than what the keep sent.
    Every part is verified to Intel's root either way."""
    if given is None:
        return carried
    values: dict[str, Any] = {}
    for item in fields(given):
        mine = getattr(given, item.name)
        if mine not in (None, ()):
            values[item.name] = mine
    return replace(carried, **values)
