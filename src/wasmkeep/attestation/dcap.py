"""Intel DCAP quotes (SGX and TDX): verify them against Intel's collateral.

Pure and without I/O: callers pass the quote, the collateral (as fetched
from Intel's PCS or a PCCS by someone else), the trust anchor and the current
time. The formats are parsed in :mod:`~wasmkeep.attestation.dcap_quote` and
:mod:`~wasmkeep.attestation.dcap_collateral`; this module re-exports their
public names, so callers import from here.

:func:`verify_quote` follows Intel's quote verification (the "Intel SGX/TDX
DCAP Quote Verification Library" and its reference code, sections 4.1.2.4.x
cited below, and the PCS API v4 for TCB Info and QE Identity) as numbered
steps; it returns a :class:`~wasmkeep.attestation.verdict.Verdict` with every
check, passed or failed, and raises only for malformed input.

Which TCB statuses are acceptable is the Steward's policy, not this module's:
the `tcb_status` check fails only for Revoked or when no TCB level matches;
the status found and its advisory IDs are in the claims. Besides the TCB
Info statuses, a TDX 1.5 quote can get Intel's TDRelaunchAdvised and
TDRelaunchAdvisedConfigurationNeeded (the platform is updated, the TD runs
on the old module).

A :class:`DcapVerifier` remembers which signatures over which bytes it has
already verified (certificate links, CRLs, collateral, QE reports), keyed by
a digest of those bytes, so that verifying many quotes of the same platforms
costs about one ECDSA verification each (the quote's own signature).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from wasmkeep.attestation.dcap_collateral import (
    ENCLAVE_TCB_STATUSES,
    TCB_STATUSES,
    Collateral,
    EnclaveTcbLevel,
    QeIdentity,
    TcbInfo,
    TcbLevel,
    TdxModule,
    TdxModuleIdentity,
    parse_crl,
    parse_issuer_chain,
    parse_qe_identity,
    parse_qvl_collateral,
    parse_tcb_info,
)
from wasmkeep.attestation.dcap_enarx import (
    ENARX_SGX_OID,
    enarx_sgx_report_data,
    parse_enarx_sgx_extension,
)
from wasmkeep.attestation.dcap_pck import PckExtensions, parse_pck_extensions
from wasmkeep.attestation.dcap_quote import (
    BODY_TDX_15,
    CERTIFICATION_DATA_PCK_CHAIN,
    INTEL_QE_VENDOR_ID,
    EcdsaSignatureData,
    Quote,
    QuoteHeader,
    SgxAttributes,
    SgxReportBody,
    TdAttributes,
    TdReportBody,
    parse_quote,
)
from wasmkeep.attestation.errors import EvidenceFormatError
from wasmkeep.attestation.verdict import Check, Claims, Tee, Verdict

__all__ = [
    "ENARX_SGX_OID",
    "ENCLAVE_TCB_STATUSES",
    "PINNED_INTEL_ROOT",
    "PINNED_INTEL_ROOT_SHA256",
    "TCB_STATUSES",
    "Collateral",
    "DcapVerifier",
    "EcdsaSignatureData",
    "EnclaveTcbLevel",
    "PckExtensions",
    "QeIdentity",
    "Quote",
    "QuoteHeader",
    "SgxAttributes",
    "SgxReportBody",
    "TcbInfo",
    "TcbLevel",
    "TdAttributes",
    "TdReportBody",
    "TdxModule",
    "TdxModuleIdentity",
    "enarx_sgx_report_data",
    "parse_crl",
    "parse_enarx_sgx_extension",
    "parse_issuer_chain",
    "parse_pck_extensions",
    "parse_qe_identity",
    "parse_quote",
    "parse_qvl_collateral",
    "parse_tcb_info",
    "verify_quote",
]

#: SHA-256 of the DER of the Intel SGX Root CA (CN=Intel SGX Root CA, serial
#: 22650cd6..., valid 2018-05-21 to 2049-12-31): the root of every PCK chain
#: and of the TCB Signing certificate, as go-tdx-guest (verify/trusted_root.pem)
#: and Enarx (root.der) pin it too.
PINNED_INTEL_ROOT_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"


def _load_pinned_root() -> x509.Certificate:
    # Package data shipped with wasmkeep, not input: checked against the pin
    # so that a modified installation cannot swap the trust anchor.
    pem = (
        importlib.resources.files("wasmkeep.attestation")
        .joinpath("data/intel/intel_sgx_root_ca.pem")
        .read_bytes()
    )
    root = x509.load_pem_x509_certificate(pem)
    if hashlib.sha256(root.public_bytes(Encoding.DER)).hexdigest() != PINNED_INTEL_ROOT_SHA256:
        raise RuntimeError("the packaged Intel SGX Root CA does not match its pinned fingerprint")
    return root


#: The Intel SGX Root CA every DCAP chain must end in.
PINNED_INTEL_ROOT: x509.Certificate = _load_pinned_root()

_PCK_CA_NAMES = ("Intel SGX PCK Platform CA", "Intel SGX PCK Processor CA")
_PCK_LEAF_PHRASE = "SGX PCK Certificate"
_TCB_SIGNING_NAME = "Intel SGX TCB Signing"

#: Intel's quoting enclaves as their QE Identity collateral names them: the
#: signer and product every QE Identity of that kind has carried. Checked when
#: no QE Identity is given, so that a quote certified for some other enclave on
#: genuine hardware is still refused (Enarx keeps send no QE Identity).
_INTEL_QE_SIGNERS = {
    "QE": (bytes.fromhex("8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff"), 1),
    "TD_QE": (
        bytes.fromhex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5"),
        2,
    ),
}
_REVOKED = "Revoked"
_OUT_OF_DATE = "OutOfDate"
_CONFIGURATION_STATUSES = frozenset(
    {
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDateConfigurationNeeded",
        "TDRelaunchAdvisedConfigurationNeeded",
    }
)


class _Cache:
    """Bounded memory of verification outcomes, keyed by a digest of the bytes
    they are about. Only outcomes that cannot change are stored: whether a
    signature over given bytes verifies with a given key."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[bytes, str | None] = OrderedDict()
        self._ders: OrderedDict[
            int, tuple[x509.Certificate | x509.CertificateRevocationList, bytes]
        ] = OrderedDict()
        self._lock = threading.Lock()

    def outcome(self, parts: Sequence[bytes], compute: Callable[[], str | None]) -> str | None:
        digest = hashlib.sha256()
        for part in parts:
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        key = digest.digest()
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        result = compute()
        with self._lock:
            self._entries[key] = result
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return result

    def der(self, item: x509.Certificate | x509.CertificateRevocationList) -> bytes:
        """The DER of a certificate or CRL, remembered per object: pyca
        re-encodes on every call (about 6 us for a certificate, 45 us for a
        CRL), and the same objects come back with every quote."""
        key = id(item)
        with self._lock:
            entry = self._ders.get(key)
            # The entry holds the object itself, so its id cannot be reused
            # by another object while the entry exists.
            if entry is not None and entry[0] is item:
                return entry[1]
        der = item.public_bytes(Encoding.DER)
        with self._lock:
            self._ders[key] = (item, der)
            while len(self._ders) > self._size:
                self._ders.popitem(last=False)
        return der

    def __len__(self) -> int:
        return len(self._entries)


class DcapVerifier:
    """Verifies DCAP quotes against one trust anchor, caching signature checks.

    Thread-safe. The cache holds at most `cache_size` outcomes.
    """

    def __init__(
        self, *, root: x509.Certificate = PINNED_INTEL_ROOT, cache_size: int = 4096
    ) -> None:
        if cache_size < 0:
            raise ValueError("cache_size must not be negative")
        self.root = root
        self._cache = _Cache(cache_size)

    def verify_quote(
        self,
        quote: Quote,
        collateral: Collateral,
        *,
        now: datetime,
        expected_report_data: bytes | None = None,
    ) -> Verdict:
        """Verify `quote` with `collateral` at time `now`; see :func:`verify_quote`."""
        return self._verify(quote, collateral, now, self.root, expected_report_data)

    def _verify(
        self,
        quote: Quote,
        collateral: Collateral,
        now: datetime,
        root: x509.Certificate,
        expected_report_data: bytes | None,
    ) -> Verdict:
        # The cache is keyed by the bytes of both signer and signed, so it is
        # sound to share it between trust anchors.
        return _Verification(
            quote, collateral, _utc(now), root, expected_report_data, self._cache
        ).run()


_SHARED = DcapVerifier()


def verify_quote(
    quote: Quote,
    collateral: Collateral,
    *,
    now: datetime,
    root: x509.Certificate = PINNED_INTEL_ROOT,
    expected_report_data: bytes | None = None,
) -> Verdict:
    """Verify a DCAP quote and its collateral at time `now`, to `root`.

    Returns a Verdict with the checks, in order: qe_vendor_id, pck_chain,
    root_ca_crl, pck_crl, qe_report_signature, qe_report_data,
    quote_signature, tcb_info_signature, tcb_info_validity,
    tcb_info_applies, qe_identity_signature, qe_identity_validity,
    qe_identity_match, qe_identity_tcb, tcb_level, tdx_module (TDX only),
    tcb_status, debug_disabled, report_data (passing, "not compared", when
    no `expected_report_data` is given). Missing collateral fails the checks
    that need it, except a QE Identity: without one the QE is checked against
    Intel's pinned signer and the claim ``qe_identity_checked`` is false, for
    the policy to decide. Uses a shared :class:`DcapVerifier` cache.
    """
    return _SHARED._verify(quote, collateral, now, root, expected_report_data)


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(UTC)


# --- helpers -------------------------------------------------------------------------


def _name(certificate: x509.Certificate) -> str:
    try:
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:  # pragma: no cover - pyca parses names when loading
        names = []
    value = names[0].value if names else certificate.subject.rfc4514_string()
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _public_key(certificate: x509.Certificate) -> object:
    """The certificate's key, or None if pyca does not support its algorithm."""
    try:
        return certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return None


def _is_p256(key: object) -> bool:
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)


def _raw_signature(signature: bytes) -> bytes:
    """An r||s signature (32 + 32 bytes, big-endian) in DER, as pyca takes it."""
    return encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )


def _ecdsa_problem(key: object, signature: bytes, data: bytes) -> str | None:
    if not _is_p256(key):
        return "the key is not an ECDSA P-256 key"
    assert isinstance(key, ec.EllipticCurvePublicKey)
    try:
        key.verify(_raw_signature(signature), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return "the signature does not verify"
    return None


def _link_problem(child: x509.Certificate, parent: x509.Certificate) -> str | None:
    """Why `parent` did not issue `child` (ECDSA P-256 with SHA-256), or None."""
    if child.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA256:
        return f"{_name(child)} is not signed with ecdsa-with-SHA256"
    if not _is_p256(_public_key(parent)):
        return f"{_name(parent)} has no ECDSA P-256 key"
    try:
        constraints = parent.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return f"{_name(parent)} is not a CA (no basic constraints)"
    except ValueError as error:
        return f"{_name(parent)} has malformed extensions: {error}"
    if not constraints.ca:
        return f"{_name(parent)} is not a CA"
    try:
        child.verify_directly_issued_by(parent)
    except ValueError:
        return f"{_name(child)} was not issued by {_name(parent)} (issuer name differs)"
    except (InvalidSignature, TypeError):
        return f"the signature of {_name(parent)} on {_name(child)} does not verify"
    return None


def _dates_problem(certificate: x509.Certificate, now: datetime) -> str | None:
    if now < certificate.not_valid_before_utc:
        return f"{_name(certificate)} is not valid before {_date(certificate.not_valid_before_utc)}"
    if now > certificate.not_valid_after_utc:
        return (
            f"{_name(certificate)} expired at {certificate.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
        )
    return None


def _crl_dates_problem(crl: x509.CertificateRevocationList, now: datetime, what: str) -> str | None:
    if now < crl.last_update_utc:
        return f"{what} is not valid before {crl.last_update_utc:%Y-%m-%dT%H:%M:%SZ}"
    if crl.next_update_utc is None:
        return f"{what} has no nextUpdate"
    if now >= crl.next_update_utc:
        return f"{what} expired at {crl.next_update_utc:%Y-%m-%dT%H:%M:%SZ}"
    return None


def _date(moment: datetime) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%SZ}"


def _masked_equal(actual: bytes, expected: bytes, mask: bytes) -> bool:
    return all(a & m == e & m for a, e, m in zip(actual, expected, mask, strict=True))


def _converge(status: str, other: str | None) -> str:
    """Combine a TCB level's status with the QE's or the TDX module's (Intel
    QVL, convergeTcbStatusWithQeTcbStatus / ...WithTdxModuleStatus,
    4.1.2.4.17.4-5)."""
    if other == _OUT_OF_DATE:
        if status in ("UpToDate", "SWHardeningNeeded"):
            return _OUT_OF_DATE
        if status in ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"):
            return "OutOfDateConfigurationNeeded"
    if other == _REVOKED:
        return _REVOKED
    return status


def _merge(*groups: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(advisory for group in groups for advisory in group))


@dataclass(frozen=True, slots=True)
class _Level:
    """A matched level: its status, its advisories, and what it was."""

    status: str
    advisories: tuple[str, ...]
    description: str


# --- the verification ----------------------------------------------------------------


class _Verification:
    """One run of the numbered steps over one quote; collects the checks."""

    def __init__(
        self,
        quote: Quote,
        collateral: Collateral,
        now: datetime,
        root: x509.Certificate,
        expected_report_data: bytes | None,
        cache: _Cache,
    ) -> None:
        if expected_report_data is not None and len(expected_report_data) != 64:
            raise ValueError("expected_report_data must be 64 bytes")
        self.quote = quote
        self.collateral = collateral
        self.now = now
        self.root = root
        self.der = cache.der
        self.root_der = cache.der(root)
        self.expected_report_data = expected_report_data
        self.cache = cache
        self.checks: list[Check] = []
        self.tdx = quote.tee is Tee.TDX
        signature_data = quote.signature_data
        chain = signature_data.pck_chain
        self.pck: x509.Certificate | None = chain[0] if chain else None
        self.pck_ca: x509.Certificate | None = chain[1] if len(chain) > 1 else None
        self.pck_extensions: PckExtensions | None = None
        self.pck_extensions_problem: str | None = None
        if self.pck is not None:
            try:
                self.pck_extensions = parse_pck_extensions(self.pck)
            except EvidenceFormatError as error:
                self.pck_extensions_problem = str(error)
        self.root_crl_trusted = False
        self.platform: _Level | None = None
        self.sgx_level: TcbLevel | None = None
        self.module: _Level | None = None
        self.qe: _Level | None = None
        self.qe_identity_checked = False
        self.final: tuple[str, tuple[str, ...]] | None = None

    def check(self, name: str, problem: str | None, success: str) -> None:
        self.checks.append(Check(name, problem is None, problem if problem else success))

    def run(self) -> Verdict:
        self.step_qe_vendor()
        self.step_pck_chain()
        self.step_crls()
        self.step_qe_report_signature()
        self.step_qe_report_data()
        self.step_quote_signature()
        self.step_tcb_info()
        self.step_qe_identity()
        self.step_tcb_level()
        self.step_debug()
        self.step_report_data()
        return Verdict(self.claims(), tuple(self.checks))

    # 0. The quote comes from Intel's QE (QE vendor ID, A.4.6).
    def step_qe_vendor(self) -> None:
        vendor = self.quote.header.qe_vendor_id
        self.check(
            "qe_vendor_id",
            None
            if vendor == INTEL_QE_VENDOR_ID
            else f"QE vendor ID {vendor.hex()} is not Intel's ({INTEL_QE_VENDOR_ID.hex()})",
            "the quote was made by Intel's quoting enclave",
        )

    def chain_problem(self, chain: Sequence[x509.Certificate]) -> str | None:
        """Why `chain` (leaf first) does not lead to the trusted root at `now`."""
        links = list(chain)
        if not links:
            return "the chain is empty"
        if self.der(links[-1]) != self.root_der:
            if links[-1].subject == links[-1].issuer:
                return f"the chain ends in {_name(links[-1])}, which is not the trusted root"
            links.append(self.root)
        for child, parent in itertools.pairwise(links):
            if self.der(child) == self.root_der:
                return "the trusted root appears before the end of the chain"
            problem = self.cache.outcome(
                (b"link", self.der(child), self.der(parent)),
                functools.partial(_link_problem, child, parent),
            )
            if problem:
                return problem
        for certificate in links:
            problem = _dates_problem(certificate, self.now)
            if problem:
                return problem
        return None

    # 1. PCK chain: PCK -> Platform/Processor CA -> Intel SGX Root CA, ECDSA
    #    P-256 with SHA-256, valid at `now` (QVL 4.1.2.4.4; PCK Certificate
    #    and CRL Profile 1.3).
    def step_pck_chain(self) -> None:
        signature_data = self.quote.signature_data
        chain = signature_data.pck_chain
        problem: str | None = None
        if signature_data.certification_data_type != CERTIFICATION_DATA_PCK_CHAIN:
            problem = (
                f"certification data type {signature_data.certification_data_type} carries no "
                f"PCK chain (only type 5, a PEM chain, is supported)"
            )
        else:
            problem = self.chain_problem(chain)
            full = [*chain] if self.der(chain[-1]) == self.root_der else [*chain, self.root]
            if problem is None and len(full) != 3:
                problem = f"the chain has {len(full)} certificates with the root, not 3"
            if problem is None:
                problem = self._pck_names_problem()
        if problem is None and self.pck_extensions_problem:
            problem = self.pck_extensions_problem
        issuer = _name(self.pck_ca) if self.pck_ca is not None else "?"
        self.check(
            "pck_chain",
            problem,
            f"PCK certificate issued by {issuer}, chained to the trusted root (sha256 "
            f"{hashlib.sha256(self.root_der).hexdigest()[:16]}...), valid at {_date(self.now)}",
        )

    def _pck_names_problem(self) -> str | None:
        assert self.pck is not None
        assert self.pck_ca is not None
        if _PCK_LEAF_PHRASE not in _name(self.pck):
            return f"the leaf {_name(self.pck)!r} is not an SGX PCK Certificate"
        if _name(self.pck_ca) not in _PCK_CA_NAMES:
            return f"the intermediate {_name(self.pck_ca)!r} is not an Intel SGX PCK CA"
        if not _is_p256(_public_key(self.pck)):
            return "the PCK key is not an ECDSA P-256 key"
        return None

    # 2. Revocation: the root CA CRL, signed by the root, does not list the
    #    PCK CA; the PCK CRL, signed by that CA, does not list the PCK (QVL
    #    4.1.2.4.6-7). Both current at `now`.
    def step_crls(self) -> None:
        collateral = self.collateral
        root_crl = collateral.root_ca_crl
        if root_crl is None:
            self.check("root_ca_crl", "no root CA CRL was given", "")
        else:
            problem = self._crl_problem(root_crl, self.root, "root CA CRL")
            self.root_crl_trusted = problem is None
            if problem is None and self.pck_ca is not None:
                problem = self._revoked(root_crl, self.pck_ca, "root CA CRL")
            self.check(
                "root_ca_crl",
                problem,
                f"root CA CRL of {_date(root_crl.last_update_utc)} verified; "
                f"the PCK CA is not revoked",
            )
        pck_crl = collateral.pck_crl
        if pck_crl is None:
            self.check("pck_crl", "no PCK CRL was given", "")
        elif self.pck is None or self.pck_ca is None:
            self.check("pck_crl", "the quote has no PCK chain to check the PCK CRL with", "")
        else:
            problem = self._crl_problem(pck_crl, self.pck_ca, "PCK CRL")
            if problem is None:
                problem = self._revoked(pck_crl, self.pck, "PCK CRL")
            self.check(
                "pck_crl",
                problem,
                f"PCK CRL of {_name(self.pck_ca)} ({_date(pck_crl.last_update_utc)}) verified; "
                f"the PCK certificate is not revoked",
            )

    def _crl_problem(
        self, crl: x509.CertificateRevocationList, issuer: x509.Certificate, what: str
    ) -> str | None:
        def verify() -> str | None:
            if crl.issuer != issuer.subject:
                return f"{what} was issued by {crl.issuer.rfc4514_string()}, not {_name(issuer)}"
            if crl.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA256:
                return f"{what} is not signed with ecdsa-with-SHA256"
            key = _public_key(issuer)
            if not _is_p256(key):
                return f"{_name(issuer)} has no ECDSA P-256 key"
            assert isinstance(key, ec.EllipticCurvePublicKey)
            return None if crl.is_signature_valid(key) else f"{what}: the signature does not verify"

        # The outcome depends on the bytes of both only, and is remembered
        # (with `what` in the key, as the message names it).
        problem = self.cache.outcome(
            (b"crl", what.encode(), self.der(issuer), self.der(crl)), verify
        )
        return problem or _crl_dates_problem(crl, self.now, what)

    @staticmethod
    def _revoked(
        crl: x509.CertificateRevocationList, certificate: x509.Certificate, what: str
    ) -> str | None:
        entry = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
        if entry is None:
            return None
        return (
            f"{what} revokes {_name(certificate)} (serial {certificate.serial_number:x}) "
            f"since {_date(entry.revocation_date_utc)}"
        )

    # 3. The QE report is signed by the PCK key (QVL 4.1.2.4.12).
    def step_qe_report_signature(self) -> None:
        signature_data = self.quote.signature_data
        if self.pck is None:
            self.check("qe_report_signature", "no PCK certificate to verify it with", "")
            return
        pck = self.pck
        problem = self.cache.outcome(
            (
                b"qe-report",
                self.der(pck),
                signature_data.qe_report_raw,
                signature_data.qe_report_signature,
            ),
            lambda: _ecdsa_problem(
                _public_key(pck),
                signature_data.qe_report_signature,
                signature_data.qe_report_raw,
            ),
        )
        self.check(
            "qe_report_signature",
            f"QE report: {problem} with the PCK key" if problem else None,
            "the QE report is signed by the PCK key",
        )

    # 4. The QE vouches for the attestation key: QE report_data[0:32] =
    #    SHA-256(attestation key || QE authentication data), [32:64] zero
    #    (QVL 4.1.2.4.13).
    def step_qe_report_data(self) -> None:
        signature_data = self.quote.signature_data
        expected = hashlib.sha256(
            signature_data.attestation_key + signature_data.qe_auth_data
        ).digest()
        report_data = signature_data.qe_report.reportdata
        problem: str | None = None
        if report_data[:32] != expected:
            problem = (
                "QE report_data[0:32] is not SHA-256(attestation key || QE authentication data)"
            )
        elif any(report_data[32:]):
            problem = "QE report_data[32:64] is not zero"
        self.check(
            "qe_report_data",
            problem,
            "the QE report binds the attestation key and the QE authentication data",
        )

    # 5. The quote (header and body) is signed by the attestation key (QVL
    #    4.1.2.4.16).
    def step_quote_signature(self) -> None:
        signature_data = self.quote.signature_data
        try:
            key: object = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), b"\x04" + signature_data.attestation_key
            )
        except ValueError:
            self.check("quote_signature", "the attestation key is not a P-256 point", "")
            return
        problem = _ecdsa_problem(key, signature_data.signature, self.quote.signed_data)
        self.check(
            "quote_signature",
            f"quote: {problem} with the attestation key" if problem else None,
            "header and report body are signed by the attestation key",
        )

    def signer_problem(
        self, chain: Sequence[x509.Certificate], body: bytes, signature: bytes, what: str
    ) -> str | None:
        """Why `signature` over `body` is not Intel's TCB Signing key's, chained to the root."""
        if not chain:
            return f"no {what} issuer chain was given"
        problem = self.chain_problem(chain)
        if problem:
            return f"{what} issuer chain: {problem}"
        signer = chain[0]
        links = [*chain] if self.der(chain[-1]) == self.root_der else [*chain, self.root]
        if len(links) != 2 or _name(signer) != _TCB_SIGNING_NAME:
            # Any other certificate under the root (a PCK, whose key is on
            # some platform) must not be able to vouch for collateral.
            return (
                f"{what} is signed by {_name(signer)!r}, not by {_TCB_SIGNING_NAME!r} "
                f"under the root"
            )
        # Revocation of the signing certificate is checked when the root CA
        # CRL verified; when it did not, the root_ca_crl check fails already.
        root_crl = self.collateral.root_ca_crl
        if self.root_crl_trusted and root_crl is not None:
            revoked = self._revoked(root_crl, signer, "root CA CRL")
            if revoked:
                return revoked
        return self.cache.outcome(
            (b"collateral", self.der(signer), body, signature),
            lambda: _ecdsa_problem(_public_key(signer), signature, body),
        )

    # 6. TCB Info: signed by Intel's TCB Signing key over its raw bytes, current,
    #    and about this platform (QVL 4.1.2.4.9-10; PCS API v4, TCB Info v3).
    def step_tcb_info(self) -> None:
        tcb_info = self.collateral.tcb_info
        if tcb_info is None:
            for name in ("tcb_info_signature", "tcb_info_validity", "tcb_info_applies"):
                self.check(name, "no TCB Info was given", "")
            return
        problem = self.signer_problem(
            self.collateral.tcb_info_issuer_chain, tcb_info.body, tcb_info.signature, "TCB Info"
        )
        self.check(
            "tcb_info_signature",
            problem,
            f"TCB Info signed by {_TCB_SIGNING_NAME} under the trusted root"
            f"{self._revocation_note()}",
        )
        self.check(
            "tcb_info_validity",
            self._window_problem("TCB Info", tcb_info.issue_date, tcb_info.next_update),
            f"TCB Info issued {_date(tcb_info.issue_date)}, next update "
            f"{_date(tcb_info.next_update)}",
        )
        self.check(
            "tcb_info_applies",
            self._tcb_info_mismatch(tcb_info),
            f"TCB Info v{tcb_info.version} {tcb_info.id} for FMSPC {tcb_info.fmspc.hex()}, "
            f"PCE ID {tcb_info.pce_id.hex()}",
        )

    def _revocation_note(self) -> str:
        if self.root_crl_trusted:
            return ", not revoked"
        return " (its revocation is unchecked: see root_ca_crl)"

    def _window_problem(self, what: str, issued: datetime, next_update: datetime) -> str | None:
        if self.now < issued:
            return f"{what} is issued {_date(issued)}, after now ({_date(self.now)})"
        if self.now >= next_update:
            return f"{what} expired at its next update {_date(next_update)}"
        return None

    def _tcb_info_mismatch(self, tcb_info: TcbInfo) -> str | None:
        if self.tdx and (tcb_info.id != "TDX" or tcb_info.version != 3):
            return f"TCB Info v{tcb_info.version} {tcb_info.id} is not for TDX (TDX TCB Info v3)"
        if not self.tdx and (tcb_info.id != "SGX" or tcb_info.version not in (2, 3)):
            return f"TCB Info v{tcb_info.version} {tcb_info.id} is not for SGX"
        if tcb_info.tcb_type != 0:
            return f"TCB type {tcb_info.tcb_type} is not supported (0)"
        if self.pck_extensions is None:
            return "no PCK certificate to match FMSPC and PCE ID with"
        if tcb_info.fmspc != self.pck_extensions.fmspc:
            return (
                f"TCB Info FMSPC {tcb_info.fmspc.hex()} is not the PCK's "
                f"{self.pck_extensions.fmspc.hex()}"
            )
        if tcb_info.pce_id != self.pck_extensions.pce_id:
            return (
                f"TCB Info PCE ID {tcb_info.pce_id.hex()} is not the PCK's "
                f"{self.pck_extensions.pce_id.hex()}"
            )
        return None

    # 7. QE Identity: signed like the TCB Info, current, and matching the QE
    #    report: MRSIGNER, ISVPRODID, MISCSELECT and ATTRIBUTES under their
    #    masks; the QE's ISVSVN gives its TCB status (QVL 4.1.2.4.14-15,
    #    4.1.2.9.5-10; PCS API v4, Enclave Identity v2).
    def step_qe_identity(self) -> None:
        identity = self.collateral.qe_identity
        if identity is None:
            self.step_pinned_qe()
            return
        self.qe_identity_checked = True
        self.check(
            "qe_identity_signature",
            self.signer_problem(
                self.collateral.qe_identity_issuer_chain,
                identity.body,
                identity.signature,
                "QE Identity",
            ),
            f"QE Identity signed by {_TCB_SIGNING_NAME} under the trusted root"
            f"{self._revocation_note()}",
        )
        self.check(
            "qe_identity_validity",
            self._window_problem("QE Identity", identity.issue_date, identity.next_update),
            f"QE Identity issued {_date(identity.issue_date)}, next update "
            f"{_date(identity.next_update)}",
        )
        self.check(
            "qe_identity_match",
            self._qe_mismatch(identity),
            f"the QE is {identity.id} (MRSIGNER {identity.mrsigner.hex()[:16]}..., "
            f"ISVPRODID {identity.isvprodid})",
        )
        qe_report = self.quote.signature_data.qe_report
        level = next((lv for lv in identity.tcb_levels if qe_report.isvsvn >= lv.isvsvn), None)
        if level is None:
            self.check(
                "qe_identity_tcb",
                f"QE ISVSVN {qe_report.isvsvn} is below every TCB level of the QE Identity",
                "",
            )
            return
        self.qe = _Level(level.tcb_status, level.advisory_ids, f"QE ISVSVN {qe_report.isvsvn}")
        self.check(
            "qe_identity_tcb",
            None,
            f"QE ISVSVN {qe_report.isvsvn}: TCB level {level.isvsvn} of "
            f"{_date(level.tcb_date)}, {level.tcb_status}",
        )

    def step_pinned_qe(self) -> None:
        """Without QE Identity collateral: the QE must still be Intel's (its
        signer and product are fixed), but its own TCB stays unknown; the
        claim ``qe_identity_checked`` is false and the policy decides."""
        unchecked = "not checked: no QE Identity was given"
        self.check("qe_identity_signature", None, unchecked)
        self.check("qe_identity_validity", None, unchecked)
        expected_id = "TD_QE" if self.tdx else "QE"
        signer, product = _INTEL_QE_SIGNERS[expected_id]
        report = self.quote.signature_data.qe_report
        if report.mrsigner != signer:
            problem: str | None = (
                f"QE MRSIGNER {report.mrsigner.hex()} is not Intel's {expected_id} signer"
            )
        elif report.isvprodid != product:
            problem = f"QE ISVPRODID {report.isvprodid} is not Intel's {expected_id} ({product})"
        elif report.attributes.debug:
            problem = "the QE is a debug enclave"
        else:
            problem = None
        self.check(
            "qe_identity_match",
            problem,
            f"the QE is Intel's {expected_id} (pinned MRSIGNER and ISVPRODID; "
            "no QE Identity was given)",
        )
        self.check("qe_identity_tcb", None, f"{unchecked}: the QE's TCB status is unknown")

    def _qe_mismatch(self, identity: QeIdentity) -> str | None:
        expected_id = "TD_QE" if self.tdx else "QE"
        if identity.id != expected_id or identity.version != 2:
            return f"QE Identity {identity.id} v{identity.version} is not {expected_id} v2"
        report = self.quote.signature_data.qe_report
        if report.mrsigner != identity.mrsigner:
            return f"QE MRSIGNER {report.mrsigner.hex()} is not {identity.mrsigner.hex()}"
        if report.isvprodid != identity.isvprodid:
            return f"QE ISVPRODID {report.isvprodid} is not {identity.isvprodid}"
        mask = identity.miscselect_mask
        if report.miscselect & mask != identity.miscselect & mask:
            return (
                f"QE MISCSELECT {report.miscselect:08x} does not match {identity.miscselect:08x} "
                f"under mask {mask:08x}"
            )
        if not _masked_equal(report.attributes.raw, identity.attributes, identity.attributes_mask):
            return (
                f"QE ATTRIBUTES {report.attributes.raw.hex()} do not match "
                f"{identity.attributes.hex()} under mask {identity.attributes_mask.hex()}"
            )
        return None

    # 8. TCB level: the first level of the TCB Info whose SGX components and
    #    PCESVN are at or below the PCK's (and, for TDX, whose TDX components
    #    are at or below TEE_TCB_SVN); for TDX the module identity too; the
    #    statuses converge with the QE's (QVL 4.1.2.4.17, TcbLevelCheck).
    def step_tcb_level(self) -> None:
        tcb_info = self.collateral.tcb_info
        problem: str | None = None
        if tcb_info is None:
            problem = "no TCB Info was given"
        elif self.pck_extensions is None:
            problem = "no PCK certificate to read the platform's TCB from"
        elif (tcb_info.id == "TDX") != self.tdx:
            problem = f"TCB Info is for {tcb_info.id}, the quote is {self.quote.tee.value.upper()}"
        else:
            problem = self._match_platform(tcb_info, self.pck_extensions)
        self.check(
            "tcb_level",
            problem,
            self.platform.description if self.platform else "",
        )
        if self.tdx:
            self.step_tdx_module()
        self.step_tcb_status()

    def _match_platform(self, tcb_info: TcbInfo, pck: PckExtensions) -> str | None:
        tee_tcb_svn = (
            self.quote.body.tee_tcb_svn if isinstance(self.quote.body, TdReportBody) else None
        )
        # With a TDX module version (TEE_TCB_SVN[1] > 0), the module's SVN is
        # judged by its module identity, not by tdxtcbcomponents 0 and 1.
        first_tdx = 2 if tee_tcb_svn is not None and tee_tcb_svn[1] > 0 else 0
        for level in tcb_info.tcb_levels:
            if pck.pce_svn < level.pce_svn or any(
                have < need
                for have, need in zip(pck.sgx_components, level.sgx_components, strict=True)
            ):
                continue
            if self.sgx_level is None:
                self.sgx_level = level
            if tee_tcb_svn is not None:
                assert level.tdx_components is not None
                if any(
                    tee_tcb_svn[index] < level.tdx_components[index]
                    for index in range(first_tdx, 16)
                ):
                    continue
            self.platform = _Level(
                level.tcb_status,
                level.advisory_ids,
                f"TCB level of {_date(level.tcb_date)}: {level.tcb_status}"
                + (f" ({', '.join(level.advisory_ids)})" if level.advisory_ids else ""),
            )
            return None
        platform = f"SGX components {list(pck.sgx_components)}, PCESVN {pck.pce_svn}"
        if tee_tcb_svn is not None:
            platform += f", TEE_TCB_SVN {tee_tcb_svn.hex()}"
        return (
            f"no TCB level of the TCB Info (FMSPC {tcb_info.fmspc.hex()}) is at or below "
            f"the platform's TCB ({platform})"
        )

    # 8b. TDX module: MRSIGNERSEAM and SEAMATTRIBUTES as the TCB Info's
    #     tdxModule (or the tdxModuleIdentities entry TDX_<version>) expects;
    #     the module's ISVSVN gives its TCB status (QVL 4.1.2.4.11,
    #     TdxModuleCheck).
    def step_tdx_module(self) -> None:
        tcb_info = self.collateral.tcb_info
        body = self.quote.body
        assert isinstance(body, TdReportBody)
        if tcb_info is None:
            self.check("tdx_module", "no TCB Info was given", "")
            return
        if tcb_info.tdx_module is None:
            self.check("tdx_module", f"the {tcb_info.id} TCB Info has no tdxModule", "")
            return
        version, isvsvn = body.tee_tcb_svn[1], body.tee_tcb_svn[0]
        expected = tcb_info.tdx_module
        identity: TdxModuleIdentity | None = None
        if version > 0:
            wanted = f"TDX_{version:02X}"
            identity = next(
                (item for item in tcb_info.tdx_module_identities if item.id.upper() == wanted),
                None,
            )
            if identity is None:
                self.check("tdx_module", f"the TCB Info has no TDX module identity {wanted}", "")
                return
            expected = identity.module
        problem = self._module_mismatch(body, expected)
        if problem is None and identity is not None:
            level = next((lv for lv in identity.tcb_levels if isvsvn >= lv.isvsvn), None)
            if level is None:
                problem = f"TDX module ISVSVN {isvsvn} is below every level of {identity.id}"
            else:
                self.module = _Level(
                    level.tcb_status,
                    level.advisory_ids,
                    f"{identity.id} ISVSVN {isvsvn}: {level.tcb_status}",
                )
        detail = (
            self.module.description
            if self.module
            else "TDX module version 0: MRSIGNERSEAM and SEAMATTRIBUTES as tdxModule expects"
        )
        self.check("tdx_module", problem, detail)

    @staticmethod
    def _module_mismatch(body: TdReportBody, expected: TdxModule) -> str | None:
        if body.mrsignerseam != expected.mrsigner:
            return f"MRSIGNERSEAM {body.mrsignerseam.hex()} is not {expected.mrsigner.hex()}"
        if not _masked_equal(body.seamattributes, expected.attributes, expected.attributes_mask):
            return (
                f"SEAMATTRIBUTES {body.seamattributes.hex()} do not match "
                f"{expected.attributes.hex()} under mask {expected.attributes_mask.hex()}"
            )
        return None

    def final_status(self) -> tuple[str, tuple[str, ...]] | None:
        """The converged TCB status and advisory IDs, if the levels were found."""
        if self.platform is None:
            return None
        if self.tdx and self.collateral.tcb_info is not None:
            body = self.quote.body
            assert isinstance(body, TdReportBody)
            if body.tee_tcb_svn[1] > 0 and self.module is None:
                return None
        status = self.platform.status
        module_status = self.module.status if self.module else None
        if self.tdx:
            status = _converge(status, module_status)
            if status != _REVOKED and self.quote.body_type == BODY_TDX_15:
                status = self._relaunch(status, module_status)
        qe_status = self.qe.status if self.qe else None
        status = _converge(status, qe_status)
        advisories = _merge(
            self.platform.advisories,
            self.module.advisories if self.module else (),
            self.qe.advisories if self.qe else (),
        )
        return status, advisories

    def _relaunch(self, tdx_status: str, module_status: str | None) -> str:
        """TDX 1.5: whether relaunching the TD on the already updated platform
        would make it current (QVL TDRelaunchCheck, 4.1.2.4.17.4.3)."""
        tcb_info = self.collateral.tcb_info
        body = self.quote.body
        assert tcb_info is not None
        assert isinstance(body, TdReportBody)
        assert body.tee_tcb_svn_2 is not None
        sgx_status = self.sgx_level.tcb_status if self.sgx_level else None
        qe_status = self.qe.status if self.qe else None
        if (
            qe_status in (_OUT_OF_DATE, _REVOKED)
            or sgx_status
            not in (
                "UpToDate",
                "SWHardeningNeeded",
                "ConfigurationNeeded",
                "ConfigurationAndSWHardeningNeeded",
            )
            or tdx_status not in (_OUT_OF_DATE, "OutOfDateConfigurationNeeded")
            or module_status != _OUT_OF_DATE
        ):
            return tdx_status
        latest = tcb_info.tcb_levels[0]
        assert latest.tdx_components is not None
        svn2 = body.tee_tcb_svn_2
        if svn2[1] == 0:
            current = svn2[0] >= latest.tdx_components[0]
        else:
            identity = next(
                (
                    item
                    for item in tcb_info.tdx_module_identities
                    if item.id.upper() == f"TDX_{svn2[1]:02X}"
                ),
                None,
            )
            if identity is None:
                return tdx_status
            current = svn2[0] >= identity.tcb_levels[0].isvsvn
        if not current or svn2[2] < latest.tdx_components[2]:
            return tdx_status
        if sgx_status in _CONFIGURATION_STATUSES or tdx_status in _CONFIGURATION_STATUSES:
            return "TDRelaunchAdvisedConfigurationNeeded"
        return "TDRelaunchAdvised"

    # 8c. The TCB status found: the policy decides which are acceptable; only
    #     Revoked, or no matching level, fails here.
    def step_tcb_status(self) -> None:
        final = self.final = self.final_status()
        if final is None:
            missing = "no TCB level was matched (see tcb_level)"
            if self.platform is not None:
                missing = "the TDX module was not matched (see tdx_module)"
            self.check("tcb_status", f"no TCB status: {missing}", "")
            return
        status, advisories = final
        parts = [f"platform {self.platform.status}" if self.platform else ""]
        if self.module:
            parts.append(f"TDX module {self.module.status}")
        if self.qe:
            parts.append(f"QE {self.qe.status}")
        summary = f"TCB status {status} ({', '.join(parts)})"
        if advisories:
            summary += f"; advisories {', '.join(advisories)}"
        self.check(
            "tcb_status",
            f"{summary}: revoked" if status == _REVOKED else None,
            summary,
        )

    # 9. Debug: a debuggable enclave or TD has no confidentiality (SGX
    #    ATTRIBUTES.DEBUG, bit 1; TD ATTRIBUTES.DEBUG, bit 0).
    def step_debug(self) -> None:
        body = self.quote.body
        if isinstance(body, SgxReportBody):
            problem = (
                "the enclave is a debug enclave (ATTRIBUTES.DEBUG)"
                if body.attributes.debug
                else None
            )
        else:
            problem = (
                "the TD is a debug TD (TDATTRIBUTES.DEBUG)" if body.tdattributes.debug else None
            )
        self.check("debug_disabled", problem, "not in debug mode")

    # 10. report_data binds what the keep wanted bound (its key, its workload).
    def step_report_data(self) -> None:
        if self.expected_report_data is None:
            self.check("report_data", None, "no expected report_data given: not compared")
            return
        actual = self.quote.report_data
        self.check(
            "report_data",
            None
            if actual == self.expected_report_data
            else f"report_data {actual.hex()[:32]}... is not the expected "
            f"{self.expected_report_data.hex()[:32]}...",
            "report_data is the expected value",
        )

    def claims(self) -> Claims:
        quote = self.quote
        body = quote.body
        header = quote.header
        fields: dict[str, object] = {
            "quote_version": header.version,
            "tee_type": header.tee_type,
            "qe_svn": header.qe_svn,
            "pce_svn": header.pce_svn,
            "qe_vendor_id": header.qe_vendor_id.hex(),
            "user_data": header.user_data.hex(),
        }
        if isinstance(body, SgxReportBody):
            measurement = body.mrenclave
            debug = body.attributes.debug
            fields.update(_sgx_fields(body))
        else:
            measurement = body.mrtd
            debug = body.tdattributes.debug
            fields.update(_td_fields(body))
        fields["qe_isvsvn"] = quote.signature_data.qe_report.isvsvn
        if self.pck_extensions is not None:
            fields["fmspc"] = self.pck_extensions.fmspc.hex()
            fields["pce_id"] = self.pck_extensions.pce_id.hex()
            fields["platform_sgx_components"] = self.pck_extensions.sgx_components
            fields["platform_pce_svn"] = self.pck_extensions.pce_svn
        if self.platform is not None:
            fields["platform_tcb_status"] = self.platform.status
        if self.module is not None:
            fields["tdx_module_tcb_status"] = self.module.status
        if self.qe is not None:
            fields["qe_tcb_status"] = self.qe.status
        fields["qe_identity_checked"] = self.qe_identity_checked
        final = self.final
        return Claims(
            tee=quote.tee,
            measurement=measurement,
            report_data=body.reportdata,
            debug=debug,
            tcb_status=final[0] if final else None,
            advisories=final[1] if final else (),
            fields=fields,
        )


def _sgx_fields(body: SgxReportBody) -> dict[str, object]:
    return {
        "cpusvn": body.cpusvn.hex(),
        "miscselect": body.miscselect,
        "isvextprodid": body.isvextprodid.hex(),
        "attributes": body.attributes.raw.hex(),
        "attributes_flags": body.attributes.names,
        "xfrm": f"{body.attributes.xfrm:016x}",
        "mrenclave": body.mrenclave.hex(),
        "mrsigner": body.mrsigner.hex(),
        "configid": body.configid.hex(),
        "isvprodid": body.isvprodid,
        "isvsvn": body.isvsvn,
        "configsvn": body.configsvn,
        "isvfamilyid": body.isvfamilyid.hex(),
        "reportdata": body.reportdata.hex(),
    }


def _td_fields(body: TdReportBody) -> dict[str, object]:
    fields: dict[str, object] = {
        "tee_tcb_svn": body.tee_tcb_svn.hex(),
        "mrseam": body.mrseam.hex(),
        "mrsignerseam": body.mrsignerseam.hex(),
        "seamattributes": body.seamattributes.hex(),
        "tdattributes": body.tdattributes.raw.hex(),
        "tdattributes_flags": body.tdattributes.names,
        "xfam": body.xfam.hex(),
        "mrtd": body.mrtd.hex(),
        "mrconfigid": body.mrconfigid.hex(),
        "mrowner": body.mrowner.hex(),
        "mrownerconfig": body.mrownerconfig.hex(),
        "rtmr0": body.rtmr0.hex(),
        "rtmr1": body.rtmr1.hex(),
        "rtmr2": body.rtmr2.hex(),
        "rtmr3": body.rtmr3.hex(),
        "reportdata": body.reportdata.hex(),
    }
    if body.tee_tcb_svn_2 is not None and body.mrservicetd is not None:
        fields["tee_tcb_svn_2"] = body.tee_tcb_svn_2.hex()
        fields["mrservicetd"] = body.mrservicetd.hex()
    return fields
