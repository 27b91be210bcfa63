"""AMD SEV-SNP evidence: verify an attestation report against AMD's chain.

References: SEV Secure Nested Paging Firmware ABI Specification (AMD
publication 56860; "ABI spec"), section 7.3 (attestation) and its Table
"ATTESTATION_REPORT Structure"; Versioned Chip Endorsement Key (VCEK)
Certificate and KDS Interface Specification (AMD publication 57230; "VCEK
spec"), chapter 3 (the VCEK certificate and its extensions) and its chain
ARK -> ASK -> VCEK; the VLEK specification (AMD publication 58369) for ARK ->
ASVK -> VLEK.

Public API::

    parse_snp_report(data, *, product=None) -> SnpReport       (snp_report)
    parse_tsm_capture(outblob, auxblob) / parse_tsm_json(data)  (snp_capture)
    parse_enarx_snp_extension(der) -> (report, vcek, crls)      (snp_capture)
    verify_snp(report, vcek, *, product, now, ...) -> Verdict
    SnpVerifier(roots).verify(...)       the same, with verified chains cached
    AmdRoots.builtin()                   AMD's pinned ARK/ASK/ASVK per product

Verification does no I/O and reads no clock: the caller passes the
certificates, the CRLs and the current time. It returns a Verdict listing
every check below, in this order, each passed or failed with its reason; a
check whose inputs are missing because an earlier one failed is listed as
failed ("not checked: ..."):

    product, ark_pinned, ark_self_signed, ask_signed_by_ark,
    vcek_signed_by_ask, signing_key, certificates_valid, crl,
    signature_algo, report_signature, tcb_matches_vcek,
    chip_id_matches_vcek, debug_disabled, report_data
"""

from __future__ import annotations

import datetime
import hmac
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from wasmkeep.attestation import der
from wasmkeep.attestation.errors import EvidenceFormatError
from wasmkeep.attestation.snp_capture import (
    SnpEvidence,
    parse_enarx_snp_extension,
    parse_tsm_capture,
    parse_tsm_json,
)
from wasmkeep.attestation.snp_certs import (
    AmdRoots,
    ProductRoots,
    common_name,
    fingerprint,
    load_amd_certificate,
    load_amd_crl,
    serial_number,
)
from wasmkeep.attestation.snp_report import (
    ECDSA_P384_SHA384,
    SigningKey,
    SnpProduct,
    SnpReport,
    TcbVersion,
    parse_snp_report,
)
from wasmkeep.attestation.verdict import Check, Claims, Tee, Verdict

__all__ = [
    "CHECK_NAMES",
    "AmdRoots",
    "ProductRoots",
    "SnpEvidence",
    "SnpProduct",
    "SnpReport",
    "SnpVerifier",
    "TcbVersion",
    "load_amd_certificate",
    "load_amd_crl",
    "parse_enarx_snp_extension",
    "parse_snp_report",
    "parse_tsm_capture",
    "parse_tsm_json",
    "verify_snp",
]

#: The checks of a verdict, in order (see the module docstring).
CHECK_NAMES = (
    "product",
    "ark_pinned",
    "ark_self_signed",
    "ask_signed_by_ark",
    "vcek_signed_by_ask",
    "signing_key",
    "certificates_valid",
    "crl",
    "signature_algo",
    "report_signature",
    "tcb_matches_vcek",
    "chip_id_matches_vcek",
    "debug_disabled",
    "report_data",
)

#: Every link of AMD's chain: RSASSA-PSS, SHA-384, MGF1-SHA-384, 48-byte salt.
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_RSASSA_PSS = x509.ObjectIdentifier("1.2.840.113549.1.1.10")

# VCEK spec, chapter 3, Table "VCEK Certificate Extensions" (and Turin's fmcSPL).
_OID_BL_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.1")
_OID_TEE_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.2")
_OID_SNP_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.3")
_OID_UCODE_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.8")
_OID_FMC_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.9")
_OID_HWID = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4")
_TCB_OIDS = (
    ("bootloader", _OID_BL_SPL, "blSPL"),
    ("tee", _OID_TEE_SPL, "teeSPL"),
    ("snp", _OID_SNP_SPL, "snpSPL"),
    ("microcode", _OID_UCODE_SPL, "ucodeSPL"),
)

#: Chips' hwID length: 64 bytes, but Turin's CHIP_ID is 8 bytes, left-aligned.
_HWID_LENGTH = {SnpProduct.MILAN: 64, SnpProduct.GENOA: 64, SnpProduct.TURIN: 8}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _check(name: str, passed: bool, detail: str) -> Check:
    return Check(name, passed, _one_line(detail))


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pss_signed_by(
    subject: x509.Certificate | x509.CertificateRevocationList, issuer: x509.Certificate
) -> str | None:
    """None if `issuer`'s key made `subject`'s RSASSA-PSS signature; else why not."""
    if subject.signature_algorithm_oid != _RSASSA_PSS:
        return (
            f"signature algorithm {subject.signature_algorithm_oid.dotted_string} is not RSASSA-PSS"
        )
    try:
        key = issuer.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return "the issuer's public key cannot be read"
    if not isinstance(key, rsa.RSAPublicKey):
        return "the issuer's key is not RSA"
    signed = (
        subject.tbs_certificate_bytes
        if isinstance(subject, x509.Certificate)
        else subject.tbs_certlist_bytes
    )
    try:
        key.verify(subject.signature, signed, _PSS, hashes.SHA384())
    except InvalidSignature:
        return "the RSASSA-PSS (SHA-384, salt 48) signature does not verify"
    return None


def _product_of_name(cn: str) -> SnpProduct | None:
    """The product an AMD CN names: ARK-Milan, SEV-Milan, SEV-VLEK-Milan."""
    for prefix in ("SEV-VLEK-", "SEV-", "ARK-"):
        if cn.startswith(prefix):
            try:
                return SnpProduct.parse(cn.removeprefix(prefix))
            except ValueError:
                return None
    return None


@dataclass(frozen=True, slots=True)
class _Extensions:
    """The VCEK's TCB and hwID extensions, or why they could not be read."""

    tcb: dict[str, int]
    fmc: int | None
    hwid: bytes | None
    problems: tuple[str, ...]


def _der_small_int(value: bytes, name: str) -> int:
    return der.parse_der(value, name).as_unsigned(name, max_octets=1)


def _read_extensions(vcek: x509.Certificate) -> _Extensions:
    values: dict[x509.ObjectIdentifier, bytes] = {}
    try:
        extensions = vcek.extensions
    except (ValueError, x509.DuplicateExtension) as error:
        return _Extensions({}, None, None, (f"the extensions cannot be read ({error})",))
    for extension in extensions:
        if isinstance(extension.value, x509.UnrecognizedExtension):
            values[extension.oid] = extension.value.value
    tcb: dict[str, int] = {}
    problems: list[str] = []
    for component, oid, name in _TCB_OIDS:
        if oid not in values:
            problems.append(f"no {name} extension ({oid.dotted_string})")
            continue
        try:
            tcb[component] = _der_small_int(values[oid], name)
        except EvidenceFormatError as error:
            problems.append(str(error))
    fmc = None
    if _OID_FMC_SPL in values:
        try:
            fmc = _der_small_int(values[_OID_FMC_SPL], "fmcSPL")
        except EvidenceFormatError as error:
            problems.append(str(error))
    hwid = values.get(_OID_HWID)
    if hwid is not None and len(hwid) not in (8, 64):
        # Newer VCEKs wrap the hwID in a DER OCTET STRING; older ones hold it raw.
        try:
            hwid = der.parse_der(hwid, "hwID").expect(der.OCTET_STRING, "hwID").value
        except EvidenceFormatError as error:
            problems.append(str(error))
            hwid = None
    return _Extensions(tcb, fmc, hwid, tuple(problems))


@dataclass(frozen=True, slots=True)
class _Chain:
    """What the certificates establish, independent of the report's contents
    and of the time: steps 1 to 4 and the CRLs' signatures. Cached by
    :class:`SnpVerifier`."""

    product: SnpProduct | None
    checks: tuple[Check, ...]
    vlek: bool
    #: (role, certificate) of the chain that was checked, root first.
    certificates: tuple[tuple[str, x509.Certificate], ...]
    vcek_key: ec.EllipticCurvePublicKey | None
    vcek_key_problem: str
    extensions: _Extensions
    #: The CRLs issued by this product's ARK: (CRL, why its signature is bad or None).
    crls: tuple[tuple[x509.CertificateRevocationList, str | None], ...]
    crls_given: int
    #: Serials to look up in the CRLs: (role, serial).
    serials: tuple[tuple[str, int], ...]
    ark_name: str


def _identify_product(
    stated: str | None,
    report: SnpReport,
    vcek: x509.Certificate,
    ask: x509.Certificate | None,
    ark: x509.Certificate | None,
) -> tuple[SnpProduct | None, Check]:
    # 1. Product: every source that names one must agree. Each product has its
    #    own ARK and ASK, named ARK-<product> and SEV-<product> (VCEK spec,
    #    "Certificate Chain"); a v3+ report names its CPU in CPUID_FAM_ID and
    #    CPUID_MOD_ID (ABI spec, Table "ATTESTATION_REPORT Structure").
    sources: list[tuple[str, SnpProduct | None]] = []
    if stated is not None:
        try:
            sources.append(("caller", SnpProduct.parse(stated)))
        except ValueError as error:
            return None, _check("product", False, str(error))
    if report.stated_product is not None:
        sources.append(("report's parse", report.stated_product))
    issuer = common_name(vcek.issuer)
    sources.append((f"VCEK issuer CN={issuer}", _product_of_name(issuer)))
    if ask is not None:
        subject = common_name(ask.subject)
        sources.append((f"ASK CN={subject}", _product_of_name(subject)))
    if ark is not None:
        subject = common_name(ark.subject)
        sources.append((f"ARK CN={subject}", _product_of_name(subject)))
    if report.cpuid_fam_id is not None:
        sources.append(
            (
                f"report CPUID family 0x{report.cpuid_fam_id:02x} model "
                f"0x{report.cpuid_mod_id or 0:02x}",
                report.cpuid_product,
            )
        )
    named = {product for _, product in sources if product is not None}
    said = ", ".join(f"{where}: {product or '?'}" for where, product in sources)
    if len(named) == 1:
        (product,) = named
        return product, _check("product", True, f"{product} ({said})")
    if not named:
        return None, _check("product", False, f"no source names a known product ({said})")
    return None, _check("product", False, f"sources disagree ({said})")


def _build_chain(
    report: SnpReport,
    vcek: x509.Certificate,
    *,
    product: str | None,
    ask: x509.Certificate | None,
    ark: x509.Certificate | None,
    crls: Sequence[x509.CertificateRevocationList],
    roots: AmdRoots,
) -> _Chain:
    resolved, product_check = _identify_product(product, report, vcek, ask, ark)
    checks = [product_check]
    vlek = common_name(vcek.subject) == "SEV-VLEK"
    leaf = "VLEK" if vlek else "VCEK"
    middle = "ASVK" if vlek else "ASK"

    vcek_key: ec.EllipticCurvePublicKey | None = None
    vcek_key_problem = ""
    try:
        key = vcek.public_key()
    except (ValueError, UnsupportedAlgorithm) as error:
        vcek_key_problem = f"the {leaf}'s public key cannot be read ({error})"
    else:
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1):
            vcek_key = key
        else:
            vcek_key_problem = f"the {leaf}'s key is not ECDSA P-384 (VCEK spec, chapter 3)"

    pinned: ProductRoots | None = roots.get(resolved) if resolved else None
    certificates: list[tuple[str, x509.Certificate]] = []
    chain_crls: list[tuple[x509.CertificateRevocationList, str | None]] = []
    serials: list[tuple[str, int]] = []
    ark_name = "ARK"
    if resolved is None:
        reason = "not checked: the product is not known"
        checks += [
            _check("ark_pinned", False, reason),
            _check("ark_self_signed", False, reason),
            _check("ask_signed_by_ark", False, reason),
            _check("vcek_signed_by_ask", False, reason),
        ]
        certificates.append((leaf, vcek))
    elif pinned is None:
        reason = f"no pinned roots for {resolved}"
        checks += [
            _check("ark_pinned", False, reason),
            _check("ark_self_signed", False, f"not checked: {reason}"),
            _check("ask_signed_by_ark", False, f"not checked: {reason}"),
            _check("vcek_signed_by_ask", False, f"not checked: {reason}"),
        ]
        certificates.append((leaf, vcek))
    else:
        root = pinned.ark
        ark_name = common_name(root.subject) or "ARK"
        # 2. The ARK is the pinned root of the product, and self-signed with
        #    RSASSA-PSS SHA-384 (VCEK spec, "Certificate Chain").
        if ark is not None and fingerprint(ark) != pinned.ark_sha256:
            checks.append(
                _check(
                    "ark_pinned",
                    False,
                    f"the ARK given (SHA-256 {fingerprint(ark).hex()}) is not the pinned "
                    f"{ark_name} (SHA-256 {pinned.ark_sha256.hex()})",
                )
            )
        else:
            checks.append(
                _check("ark_pinned", True, f"{ark_name}, SHA-256 {pinned.ark_sha256.hex()}")
            )
        problem = _pss_signed_by(root, root) if root.issuer == root.subject else "not self-issued"
        checks.append(
            _check(
                "ark_self_signed",
                problem is None,
                f"{ark_name} is self-signed (RSASSA-PSS SHA-384)"
                if problem is None
                else f"{ark_name}: {problem}",
            )
        )
        # 3. The ASK (or, for a VLEK, the ASVK) is signed by the ARK.
        intermediate = ask if ask is not None else (pinned.asvk if vlek else pinned.ask)
        if intermediate is None:
            checks.append(_check("ask_signed_by_ark", False, f"no {middle} for {resolved}"))
            checks.append(_check("vcek_signed_by_ask", False, f"not checked: no {middle}"))
            certificates += [("ARK", root), (leaf, vcek)]
        else:
            source = "given" if ask is not None else "pinned"
            middle_name = common_name(intermediate.subject) or middle
            if intermediate.issuer != root.subject:
                problem = f"issued by {common_name(intermediate.issuer)!r}, not {ark_name}"
            else:
                problem = _pss_signed_by(intermediate, root)
            checks.append(
                _check(
                    "ask_signed_by_ark",
                    problem is None,
                    f"{middle} {middle_name} ({source}) is signed by {ark_name}"
                    if problem is None
                    else f"{middle} {middle_name} ({source}): {problem}",
                )
            )
            # 4. The VCEK (or VLEK) is signed by the ASK (or ASVK).
            if vcek.issuer != intermediate.subject:
                problem = f"issued by {common_name(vcek.issuer)!r}, not {middle_name}"
            else:
                problem = _pss_signed_by(vcek, intermediate)
            checks.append(
                _check(
                    "vcek_signed_by_ask",
                    problem is None,
                    f"{leaf} is signed by {middle_name}"
                    if problem is None
                    else f"{leaf}: {problem}",
                )
            )
            certificates += [("ARK", root), (middle, intermediate), (leaf, vcek)]
            serials += [(middle, serial_number(intermediate)), (leaf, serial_number(vcek))]
            for crl in crls:
                if crl.issuer == root.subject:
                    chain_crls.append((crl, _pss_signed_by(crl, root)))

    return _Chain(
        product=resolved,
        checks=tuple(checks),
        vlek=vlek,
        certificates=tuple(certificates),
        vcek_key=vcek_key,
        vcek_key_problem=vcek_key_problem,
        extensions=_read_extensions(vcek),
        crls=tuple(chain_crls),
        crls_given=len(crls),
        serials=tuple(serials),
        ark_name=ark_name,
    )


def _signing_key_check(report: SnpReport, chain: _Chain) -> Check:
    # ABI spec, Table "ATTESTATION_REPORT Structure", SIGNING_KEY (0x48 bits 4:2):
    # 0 the VCEK signed the report, 1 the VLEK, 7 no key.
    leaf = "VLEK" if chain.vlek else "VCEK"
    expected = SigningKey.VLEK if chain.vlek else SigningKey.VCEK
    if report.signing_key == expected:
        return _check("signing_key", True, f"SIGNING_KEY {report.signing_key}: the {leaf}")
    return _check(
        "signing_key",
        False,
        f"SIGNING_KEY is {report.signing_key} ({report.signing_key_name}) "
        f"but the certificate is a {leaf}",
    )


def _validity_check(chain: _Chain, now: datetime.datetime) -> Check:
    # 5. Every certificate of the chain is valid at `now` (RFC 5280, 4.1.2.5).
    for role, certificate in chain.certificates:
        if now < certificate.not_valid_before_utc:
            return _check(
                "certificates_valid",
                False,
                f"the {role} is not valid before {_iso(certificate.not_valid_before_utc)}; "
                f"now is {_iso(now)}",
            )
        if now > certificate.not_valid_after_utc:
            return _check(
                "certificates_valid",
                False,
                f"the {role} expired at {_iso(certificate.not_valid_after_utc)}; "
                f"now is {_iso(now)}",
            )
    roles = ", ".join(role for role, _ in chain.certificates)
    leaf_until = _iso(chain.certificates[-1][1].not_valid_after_utc)
    return _check(
        "certificates_valid", True, f"{roles} valid at {_iso(now)} (leaf until {leaf_until})"
    )


def _crl_check(chain: _Chain, now: datetime.datetime) -> tuple[Check, bool]:
    # 6. Revocation: the CRLs the ARK issued (KDS serves one per product at
    #    /vcek/v1/{product}/crl), signed by the ARK, current at `now`, list
    #    neither the ASK/ASVK nor the VCEK/VLEK.
    if not chain.serials:
        return _check("crl", False, "not checked: the chain was not built"), False
    if not chain.crls:
        why = (
            "no CRL given"
            if chain.crls_given == 0
            else f"none of the {chain.crls_given} CRLs given is issued by {chain.ark_name}"
        )
        return _check("crl", True, f"{why}: revocation not checked"), False
    for crl, problem in chain.crls:
        number = f"{chain.ark_name} CRL of {_iso(crl.last_update_utc)}"
        if problem is not None:
            return _check("crl", False, f"{number}: {problem}"), False
        if now < crl.last_update_utc:
            return _check("crl", False, f"{number} is not issued yet at {_iso(now)}"), False
        next_update = crl.next_update_utc
        if next_update is not None and now > next_update:
            return _check(
                "crl", False, f"{number} is stale: next update was {_iso(next_update)}"
            ), False
        for role, serial in chain.serials:
            try:
                revoked = crl.get_revoked_certificate_by_serial_number(serial)
            except ValueError as error:
                return _check("crl", False, f"{number}: unreadable entries ({error})"), False
            if revoked is not None:
                return _check(
                    "crl",
                    False,
                    f"the {role} (serial {serial:#x}) is revoked since "
                    f"{_iso(revoked.revocation_date_utc)} by the {number}",
                ), True
    names = " and ".join(role for role, _ in chain.serials)
    return _check(
        "crl", True, f"{names} not revoked in {len(chain.crls)} CRL(s) of {chain.ark_name}"
    ), True


def _signature_checks(report: SnpReport, chain: _Chain) -> list[Check]:
    # 7. The report's signature: ECDSA P-384 with SHA-384 over bytes [0, 0x2A0),
    #    R and S little-endian in 72-byte fields at 0x2A0 and 0x2E8 (ABI spec,
    #    Table "ATTESTATION_REPORT Structure" and Table "ECDSA P-384 with
    #    SHA-384 Signature").
    checks = []
    algo_ok = report.signature_algo == ECDSA_P384_SHA384
    checks.append(
        _check(
            "signature_algo",
            algo_ok,
            "SIGNATURE_ALGO 1: ECDSA P-384 with SHA-384"
            if algo_ok
            else f"SIGNATURE_ALGO is {report.signature_algo}, only 1 (ECDSA P-384) is known",
        )
    )
    leaf = "VLEK" if chain.vlek else "VCEK"
    if chain.vcek_key is None:
        checks.append(_check("report_signature", False, chain.vcek_key_problem))
        return checks
    r = int.from_bytes(report.signature_r, "little")
    s = int.from_bytes(report.signature_s, "little")
    try:
        chain.vcek_key.verify(
            encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384())
        )
    except InvalidSignature:
        masked = (
            " (MASK_CHIP_KEY is set: the firmware did not sign)" if report.mask_chip_key else ""
        )
        checks.append(
            _check(
                "report_signature",
                False,
                f"the signature over bytes [0, 0x2a0) does not verify with the {leaf}{masked}",
            )
        )
    else:
        checks.append(
            _check("report_signature", True, f"ECDSA P-384 signature verifies with the {leaf}")
        )
    return checks


def _tcb_check(report: SnpReport, chain: _Chain) -> Check:
    # 8. The VCEK was derived for the REPORTED_TCB: its SPL extensions equal the
    #    TCB's components (VCEK spec, chapter 3; Turin adds fmcSPL).
    extensions = chain.extensions
    if extensions.problems:
        return _check("tcb_matches_vcek", False, "; ".join(extensions.problems))
    tcb = report.reported_tcb
    mismatches = [
        f"{component} {getattr(tcb, component)} != {extensions.tcb[component]}"
        for component, _, _ in _TCB_OIDS
        if getattr(tcb, component) != extensions.tcb[component]
    ]
    if tcb.turin_layout and extensions.fmc is not None and tcb.fmc != extensions.fmc:
        mismatches.insert(0, f"fmc {tcb.fmc} != {extensions.fmc}")
    if not tcb.turin_layout and extensions.fmc is not None:
        mismatches.insert(0, "the certificate has fmcSPL but the TCB layout has no FMC")
    leaf = "VLEK" if chain.vlek else "VCEK"
    if mismatches:
        return _check(
            "tcb_matches_vcek",
            False,
            f"REPORTED_TCB ({tcb}) differs from the {leaf}'s: {', '.join(mismatches)} "
            "(report != certificate)",
        )
    return _check("tcb_matches_vcek", True, f"REPORTED_TCB {tcb} equals the {leaf}'s")


def _chip_id_check(report: SnpReport, chain: _Chain) -> Check:
    # 9. The VCEK belongs to this chip: its hwID extension is the CHIP_ID (VCEK
    #    spec, chapter 3). A VLEK is not bound to a chip; a host that set
    #    MASK_CHIP_ID reports zeros (ABI spec, SNP_CONFIG).
    if chain.vlek:
        return _check("chip_id_matches_vcek", True, "a VLEK has no hwID: not bound to a chip")
    if report.chip_id_masked:
        return _check(
            "chip_id_matches_vcek",
            True,
            "CHIP_ID is masked (MASK_CHIP_ID): not compared; the VCEK's signature binds the chip",
        )
    hwid = chain.extensions.hwid
    if hwid is None:
        return _check("chip_id_matches_vcek", False, "the VCEK has no readable hwID extension")
    expected_length = _HWID_LENGTH.get(chain.product, 64) if chain.product else 64
    if len(hwid) != expected_length:
        return _check(
            "chip_id_matches_vcek",
            False,
            f"the VCEK's hwID is {len(hwid)} bytes, {chain.product}'s are {expected_length}",
        )
    if report.chip_id[: len(hwid)] != hwid or any(report.chip_id[len(hwid) :]):
        return _check(
            "chip_id_matches_vcek",
            False,
            f"CHIP_ID {report.chip_id[: len(hwid)].hex()[:16]}... is not the VCEK's hwID "
            f"{hwid.hex()[:16]}...",
        )
    return _check(
        "chip_id_matches_vcek", True, f"CHIP_ID equals the VCEK's hwID ({len(hwid)} bytes)"
    )


def _report_data_check(report: SnpReport, expected: bytes | None) -> Check:
    # 11. REPORT_DATA is what the caller expects (the keep's key and workload).
    if expected is None:
        return _check("report_data", True, "no expected REPORT_DATA given: not compared")
    n = len(expected)
    if hmac.compare_digest(report.report_data[:n], expected):
        scope = "REPORT_DATA" if n == len(report.report_data) else f"REPORT_DATA[0:{n}]"
        return _check("report_data", True, f"{scope} equals the expected value")
    return _check(
        "report_data",
        False,
        f"REPORT_DATA[0:{n}] is {report.report_data[:n].hex()[:32]}..., "
        f"expected {expected.hex()[:32]}...",
    )


def _claims(report: SnpReport, chain: _Chain, revocation_checked: bool) -> Claims:
    fields = dict(report.fields())
    policy = report.policy
    fields |= {
        "product": chain.product.value if chain.product else None,
        "endorsement_key": "vlek" if chain.vlek else "vcek",
        "smt_allowed": policy.smt_allowed,
        "migrate_ma_allowed": policy.migrate_ma_allowed,
        "single_socket_required": policy.single_socket_required,
        "debug_allowed": policy.debug_allowed,
        "revocation_checked": revocation_checked,
    }
    return Claims(
        tee=Tee.SNP,
        measurement=report.measurement,
        report_data=report.report_data,
        debug=policy.debug_allowed,
        fields=MappingProxyType(fields),
    )


def _verdict(
    report: SnpReport,
    chain: _Chain,
    now: datetime.datetime,
    expected_report_data: bytes | None,
) -> Verdict:
    if chain.product is not None and report.product is not chain.product:
        # A v2 report names no CPU: decode its TCBs with the product's layout.
        report = SnpReport(report.raw, chain.product)
    checks = list(chain.checks)
    checks.append(_signing_key_check(report, chain))
    checks.append(_validity_check(chain, now))
    crl_check, revocation_checked = _crl_check(chain, now)
    checks.append(crl_check)
    checks += _signature_checks(report, chain)
    checks.append(_tcb_check(report, chain))
    checks.append(_chip_id_check(report, chain))
    # 10. Policy: a guest whose policy allows debugging can be read by the host
    #     (ABI spec, section 4.3, DEBUG bit 19). MIGRATE_MA, SMT, SINGLE_SOCKET and
    #     the VMPL are claims for the Steward's policy.
    debug = report.policy.debug_allowed
    checks.append(
        _check(
            "debug_disabled",
            not debug,
            f"policy 0x{report.policy.raw:x} allows debugging (DEBUG, bit 19): "
            "the host can read the guest"
            if debug
            else f"policy 0x{report.policy.raw:x} does not allow debugging",
        )
    )
    checks.append(_report_data_check(report, expected_report_data))
    return Verdict(_claims(report, chain, revocation_checked), tuple(checks))


def _validate_arguments(now: datetime.datetime, expected_report_data: bytes | None) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("`now` must be timezone-aware")
    if expected_report_data is not None and not 1 <= len(expected_report_data) <= 64:
        raise ValueError("expected_report_data is 1 to 64 bytes (a prefix of REPORT_DATA)")


def _as_report(report: SnpReport | bytes, product: str | None) -> SnpReport:
    if isinstance(report, SnpReport):
        return report
    try:
        stated = SnpProduct.parse(product).value if product is not None else None
    except ValueError:
        stated = None  # step 1 reports the unknown name
    return parse_snp_report(report, product=stated)


def verify_snp(
    report: SnpReport | bytes,
    vcek: x509.Certificate,
    *,
    product: str | None = None,
    ask: x509.Certificate | None = None,
    ark: x509.Certificate | None = None,
    crls: Sequence[x509.CertificateRevocationList] = (),
    now: datetime.datetime,
    expected_report_data: bytes | None = None,
    roots: AmdRoots | None = None,
) -> Verdict:
    """Verify an SEV-SNP report and its VCEK (or VLEK) chain to AMD's pinned roots.

    `product` is the caller's word ("Milan", "Genoa", "Turin"), checked against
    the certificates and the report's CPUID fields; `ask` and `ark` are those
    the evidence came with (the pinned ones are used when absent; a given ARK
    must be the pinned one). `crls` are CRLs from AMD's KDS; without them the
    `crl` check passes saying revocation was not checked, and the claim
    ``revocation_checked`` is False: the Steward's policy decides.
    `expected_report_data`, 1 to 64 bytes, must equal the start of REPORT_DATA.
    `roots` replaces AMD's pinned roots (tests, private chains).

    Raises EvidenceFormatError only if `report` is bytes that are not a report.
    """
    _validate_arguments(now, expected_report_data)
    parsed = _as_report(report, product)
    chain = _build_chain(
        parsed,
        vcek,
        product=product,
        ask=ask,
        ark=ark,
        crls=crls,
        roots=roots or AmdRoots.builtin(),
    )
    return _verdict(parsed, chain, now, expected_report_data)


class SnpVerifier:
    """:func:`verify_snp` with the chain's verification cached.

    The work that depends only on the certificates (the product, the ARK, ASK
    and VCEK signatures, the CRLs' signatures, the VCEK's extensions) is done
    once per distinct (ARK, ASK, VCEK, CRLs, product) and kept in a bounded
    LRU cache keyed by their DER; each call still checks the times, the
    revocation lists, the report's signature and every field. Thread-safe.
    """

    def __init__(self, roots: AmdRoots | None = None, *, cache_size: int = 256) -> None:
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self._roots = roots or AmdRoots.builtin()
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[object, ...], _Chain] = OrderedDict()
        self._lock = threading.Lock()

    def verify(
        self,
        report: SnpReport | bytes,
        vcek: x509.Certificate,
        *,
        product: str | None = None,
        ask: x509.Certificate | None = None,
        ark: x509.Certificate | None = None,
        crls: Sequence[x509.CertificateRevocationList] = (),
        now: datetime.datetime,
        expected_report_data: bytes | None = None,
    ) -> Verdict:
        """As :func:`verify_snp`, with this verifier's roots."""
        _validate_arguments(now, expected_report_data)
        parsed = _as_report(report, product)
        key = (
            product,
            parsed.stated_product,
            parsed.cpuid_product,
            vcek.public_bytes(Encoding.DER),
            ask.public_bytes(Encoding.DER) if ask is not None else None,
            ark.public_bytes(Encoding.DER) if ark is not None else None,
            tuple(crl.public_bytes(Encoding.DER) for crl in crls),
        )
        with self._lock:
            chain = self._cache.get(key)
            if chain is not None:
                self._cache.move_to_end(key)
        if chain is None:
            chain = _build_chain(
                parsed, vcek, product=product, ask=ask, ark=ark, crls=crls, roots=self._roots
            )
            if self._cache_size:
                with self._lock:
                    self._cache[key] = chain
                    while len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
        return _verdict(parsed, chain, now, expected_report_data)
