"""`wasmkeep attest`: verify attestation evidence against a policy, or collect it here.

``attest verify`` reads evidence in any of the forms keeps present (an SEV-SNP
report, a configfs-tsm capture, a DCAP quote for TDX or SGX, wasmkeep's
software evidence, an Enarx keep's CSR), verifies it (:mod:`wasmkeep.attestation`),
applies a policy (the default one without ``--policy``) and prints the claims
and every check. Exit status: 0 accepted, 1 refused, 2 bad input (unreadable
or malformed evidence, a bad policy, a bad flag).

The binding: the verifier must know which key (and workload) the evidence is
for. ``--public-key`` with ``--workload-digest`` computes report_data as every
wasmkeep keep binds it (:func:`wasmkeep.attestation.software.report_data`);
``--report-data`` gives the 64 bytes directly. A CSR carries its key and is
appraised as a Steward appraises it (:func:`wasmkeep.attestation.appraise.appraise_csr`):
a wasmkeep keep's CSR binds its key and its workload digest, an Enarx keep's
its key alone (SNP: SHA-384 of the SubjectPublicKeyInfo in report_data[0:48];
SGX: SHA-256 in [0:32]). Without any of these the report_data check says
nothing was compared. A workload digest reaches the policy only when
report_data binds it.

The clock is read here, not in verification: ``--now`` replaces it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from wasmkeep.cli._errors import report_errors
from wasmkeep.cli._terminal import check_marks
from wasmkeep.errors import ConfigError
from wasmkeep.printable import escaped, quote, shown

if TYPE_CHECKING:
    from cryptography import x509

    from wasmkeep.attestation.appraise import SnpCertificates
    from wasmkeep.attestation.dcap import Collateral
    from wasmkeep.attestation.policy import Policy
    from wasmkeep.attestation.snp import SnpReport
    from wasmkeep.attestation.verdict import Claims, Verdict

__all__ = ["attest", "read_collateral"]

#: "enarx-csr" and "wasmkeep-csr" both read any keep's CSR; the output names
#: the kind found.
FORMATS = ("auto", "snp", "snp-tsm", "tdx", "sgx", "software", "enarx-csr", "wasmkeep-csr")
_CSR_FORMATS = ("enarx-csr", "wasmkeep-csr")
_SNP_REPORT_SIZE = 0x4A0
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)


@click.group()
def attest() -> None:
    """Verify attestation evidence, or collect it on this machine."""


# -- verify --------------------------------------------------------------------------------


@attest.command()
@click.argument("evidence", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "form",
    type=click.Choice(FORMATS),
    default="auto",
    show_default=True,
    help="The evidence's form; auto detects it.",
)
@click.option(
    "--certs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="SNP: certificates (VCEK/VLEK, ASK, ARK) and AMD CRLs, PEM or DER. Repeatable.",
)
@click.option(
    "--collateral",
    multiple=True,
    type=click.Path(path_type=Path),
    help="TDX/SGX: dcap-qvl collateral JSON, TCB Info, QE Identity, CRLs, issuer chains. "
    "Repeatable.",
)
@click.option("--policy", "policy_path", type=click.Path(path_type=Path), help="A policy file.")
@click.option("--now", "now_text", help="The time to verify at (ISO 8601; default: now).")
@click.option("--report-data", "report_data_hex", help="The expected report_data: 64 bytes, hex.")
@click.option(
    "--public-key",
    type=click.Path(path_type=Path),
    help="The keep's public key (PEM/DER SPKI, or a certificate): with --workload-digest, "
    "report_data is computed as wasmkeep keeps bind it.",
)
@click.option("--workload-digest", help="sha256:<hex> of the workload report_data binds.")
@click.option(
    "--product",
    type=click.Choice(["Milan", "Genoa", "Turin"], case_sensitive=False),
    help="SNP: the EPYC product, for reports that name none.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of tables.")
@report_errors
def verify(
    evidence: Path,
    form: str,
    certs: tuple[Path, ...],
    collateral: tuple[Path, ...],
    policy_path: Path | None,
    now_text: str | None,
    report_data_hex: str | None,
    public_key: Path | None,
    workload_digest: str | None,
    product: str | None,
    as_json: bool,
) -> None:
    """Verify EVIDENCE, apply the policy, and print the claims and every check.

    Exit status 0 when the evidence is accepted, 1 when it is refused, 2 for
    bad input.
    """
    from wasmkeep.attestation.limits import DEFAULT_ATTESTATION_LIMITS
    from wasmkeep.attestation.policy import default_policy, load_policy

    limits = DEFAULT_ATTESTATION_LIMITS
    now = _parse_now(now_text)
    policy = load_policy(policy_path) if policy_path is not None else default_policy()
    data = _read(evidence, limits.max_evidence_size, "evidence")
    if form == "auto":
        form = _detect(data, evidence)
    _check_inputs(form, certs, collateral)
    expected, digest = _binding(report_data_hex, public_key, workload_digest, form)
    request = _Request(
        data=data,
        source=shown(evidence),
        certs=certs,
        collateral=collateral,
        now=now,
        expected=expected,
        product=product.capitalize() if product else None,
    )
    if form in _CSR_FORMATS:
        final, form, digest = _appraise_csr(request, policy)
    else:
        verdict = _VERIFIERS[form](request)
        final = policy.evaluate(verdict, workload_digest=digest)
    if as_json:
        click.echo(json.dumps(_document(final, form, policy_path, now, digest), indent=2))
    else:
        _print_verdict(final, form, digest)
    click.get_current_context().exit(0 if final.accepted else 1)


@dataclasses.dataclass(frozen=True)
class _Request:
    data: bytes
    source: str
    certs: tuple[Path, ...]
    collateral: tuple[Path, ...]
    now: datetime.datetime
    expected: bytes | None
    product: str | None


def _parse_now(text: str | None) -> datetime.datetime:
    if text is None:
        return datetime.datetime.now(datetime.UTC)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--now {quote(text)}: not an ISO 8601 time",
            hint="for example 2025-06-19T12:00:00Z",
        ) from None
    if moment.tzinfo is None:  # a time without a zone is taken as UTC
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment


def _read(path: Path, limit: int, what: str) -> bytes:
    try:
        with open(path, "rb") as file:
            data = file.read(limit + 1)
    except OSError as error:
        raise ConfigError(
            f"{shown(path)}: cannot read the {what}: {error.strerror or error}"
        ) from None
    if len(data) > limit:
        raise ConfigError(f"{shown(path)}: the {what} is larger than the limit of {limit} bytes")
    return data


def _detect(data: bytes, path: Path) -> str:
    """The evidence's form, from its first bytes."""
    from wasmkeep.attestation.software import SOFTWARE_MAGIC

    stripped = data.lstrip()
    if data.startswith(SOFTWARE_MAGIC):
        return "software"
    if stripped.startswith((b"-----BEGIN CERTIFICATE REQUEST", b"-----BEGIN NEW CERTIFICATE")):
        return "enarx-csr"
    if stripped.startswith(b"{"):
        return "snp-tsm"
    if len(data) >= 8:
        version = int.from_bytes(data[0:2], "little")
        key_type = int.from_bytes(data[2:4], "little")
        tee_type = int.from_bytes(data[4:8], "little")
        if version in (3, 4, 5) and key_type in (2, 3):  # ECDSA P-256 or P-384 (A.4.6)
            if tee_type == 0x81:
                return "tdx"
            if tee_type == 0:
                return "sgx"
    if len(data) == _SNP_REPORT_SIZE and int.from_bytes(data[0:4], "little") in (2, 3, 4, 5):
        return "snp"
    if data[:1] == b"\x30":
        return "enarx-csr"  # DER: the CSR parser says if it is not one
    raise ConfigError(
        f"{shown(path)}: not evidence wasmkeep knows (an SNP report, a configfs-tsm capture, "
        "a DCAP quote, software evidence, or an Enarx CSR)",
        hint="name the form with --format",
    )


def _check_inputs(form: str, certs: Sequence[Path], collateral: Sequence[Path]) -> None:
    """Refuse inputs the form does not use, rather than ignore them."""
    if certs and form in ("tdx", "sgx", "software"):  # a CSR may carry SNP evidence
        raise ConfigError(f"--certs does not apply to {form} evidence (SNP certificates and CRLs)")
    if collateral and form in ("snp", "snp-tsm", "software"):
        raise ConfigError(f"--collateral does not apply to {form} evidence (TDX and SGX quotes)")


def _binding(
    report_data_hex: str | None,
    public_key: Path | None,
    workload_digest: str | None,
    form: str,
) -> tuple[bytes | None, str | None]:
    """The expected report_data and the workload digest it binds (each may be None)."""
    if form in _CSR_FORMATS and (report_data_hex or public_key or workload_digest):
        raise ConfigError(
            "--report-data, --public-key and --workload-digest do not apply to an Enarx CSR "
            "or a wasmkeep CSR: a CSR carries its key (and a wasmkeep CSR its workload digest)"
        )
    if report_data_hex is not None and public_key is not None:
        raise ConfigError("give --report-data or --public-key, not both")
    if workload_digest is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", workload_digest):
        raise ConfigError(
            f"--workload-digest {quote(workload_digest)}: expected sha256: and 64 lowercase "
            "hex digits"
        )
    if public_key is not None:
        if workload_digest is None:
            raise ConfigError("--public-key needs --workload-digest: report_data binds both")
        from wasmkeep.attestation.software import report_data

        return report_data(_spki_of(public_key), workload_digest), workload_digest
    if report_data_hex is not None:
        try:
            expected = bytes.fromhex(report_data_hex)
        except ValueError:
            expected = b""
        if len(expected) != 64:
            raise ConfigError(
                f"--report-data {quote(report_data_hex)}: expected 128 hex digits (64 bytes)"
            )
        return expected, workload_digest
    if workload_digest is not None:
        raise ConfigError(
            "--workload-digest needs --public-key or --report-data: "
            "nothing else binds the workload to the evidence"
        )
    return None, None


def _spki_of(path: Path) -> bytes:
    """The SubjectPublicKeyInfo (DER) in a PEM or DER public key or certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

    from wasmkeep.attestation.x509_checked import X509_PARSE_ERRORS

    data = _read(path, 64 * 1024, "public key")
    key: PublicKeyTypes
    pem = data.lstrip().startswith(b"-----BEGIN")
    try:
        if pem and b"CERTIFICATE" in data.split(b"\n", 1)[0]:
            key = x509.load_pem_x509_certificate(data).public_key()
        elif pem:
            key = serialization.load_pem_public_key(data)
        else:
            try:
                key = serialization.load_der_public_key(data)
            except ValueError:
                key = x509.load_der_x509_certificate(data).public_key()
    except X509_PARSE_ERRORS:
        pass
    else:
        return key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    raise ConfigError(f"{shown(path)}: not a public key or certificate (PEM or DER)")


# -- the forms ---------------------------------------------------------------------------


def _verify_software(request: _Request) -> Verdict:
    from wasmkeep.attestation.software import parse_software_evidence, verify_software

    evidence = parse_software_evidence(request.data)
    return verify_software(evidence, expected_report_data=request.expected)


def _verify_snp(request: _Request) -> Verdict:
    from wasmkeep.attestation.snp import parse_snp_report

    report = parse_snp_report(request.data, product=request.product)
    return _snp_with(request, report, None, None, None, ())


def _verify_snp_tsm(request: _Request) -> Verdict:
    from wasmkeep.attestation.snp import parse_tsm_json

    evidence = parse_tsm_json(request.data, product=request.product)
    return _snp_with(request, evidence.report, evidence.vcek, evidence.ask, evidence.ark, ())


def _snp_with(
    request: _Request,
    report: SnpReport,
    vcek: x509.Certificate | None,
    ask: x509.Certificate | None,
    ark: x509.Certificate | None,
    crls: Sequence[x509.CertificateRevocationList],
) -> Verdict:
    from wasmkeep.attestation.snp import verify_snp

    given = _given_amd(request)
    vcek = given.vcek or vcek
    ask = given.ask or ask
    ark = given.ark or ark
    if vcek is None:
        raise ConfigError(
            f"{request.source}: an SNP report needs the VCEK that signed it",
            hint="pass --certs vcek.der (AMD's KDS serves it for the chip and TCB)",
        )
    return verify_snp(
        report,
        vcek,
        product=request.product,
        ask=ask,
        ark=ark,
        crls=(*crls, *given.crls),
        now=request.now,
        expected_report_data=request.expected,
    )


def _given_amd(request: _Request) -> SnpCertificates:
    """The AMD certificates and CRLs of --certs, each in its role by its name."""
    from wasmkeep.attestation.appraise import SnpCertificates

    certificates, crls = _read_pki(request.certs)
    roles: dict[str, x509.Certificate] = {}
    for certificate in certificates:
        name = _common_name(certificate)
        if name in ("SEV-VCEK", "SEV-VLEK"):
            roles["vcek"] = certificate
        elif name.startswith("ARK-"):
            roles["ark"] = certificate
        elif name.startswith("SEV-"):
            roles["ask"] = certificate
        else:
            raise ConfigError(
                f"--certs: {quote(name)} is not an AMD certificate (VCEK, VLEK, ASK, ASVK, ARK)"
            )
    return SnpCertificates(crls=tuple(crls), **roles)


def _verify_quote(request: _Request, tee: str) -> Verdict:
    from wasmkeep.attestation.dcap import parse_quote, verify_quote
    from wasmkeep.attestation.errors import EvidenceFormatError

    quote = parse_quote(request.data)
    if quote.tee.value != tee:
        raise EvidenceFormatError(f"{request.source}: a {quote.tee.value} quote, not {tee}")
    return verify_quote(
        quote,
        read_collateral(request.collateral),
        now=request.now,
        expected_report_data=request.expected,
    )


def _appraise_csr(request: _Request, policy: Policy) -> tuple[Verdict, str, str | None]:
    """A keep's CSR, appraised as a Steward does: the final verdict, the kind
    of CSR ("enarx-csr" or "wasmkeep-csr") and the workload digest it binds."""
    from wasmkeep.attestation.appraise import appraise_csr
    from wasmkeep.attestation.errors import EvidenceFormatError

    given = _given_amd(request)
    collateral = read_collateral(request.collateral) if request.collateral else None
    try:
        appraisal = appraise_csr(
            request.data,
            policy=policy,
            now=request.now,
            collateral=collateral,
            snp_certificates=given,
            product=request.product,
        )
    except EvidenceFormatError as error:
        raise EvidenceFormatError(f"{request.source}: {error}") from None
    kind = "enarx-csr" if appraisal.form.enarx else "wasmkeep-csr"
    return appraisal.verdict, kind, appraisal.workload_digest


_VERIFIERS: dict[str, Callable[[_Request], Verdict]] = {
    "software": _verify_software,
    "snp": _verify_snp,
    "snp-tsm": _verify_snp_tsm,
    "tdx": lambda request: _verify_quote(request, "tdx"),
    "sgx": lambda request: _verify_quote(request, "sgx"),
}


# -- certificates and collateral ------------------------------------------------------------


def _read_pki(
    paths: Sequence[Path],
) -> tuple[list[x509.Certificate], list[x509.CertificateRevocationList]]:
    """Certificates and CRLs from files: PEM (any number of blocks), or DER (one
    certificate, one CRL, or a PkiPath: a SEQUENCE of certificates)."""
    from wasmkeep.attestation import der
    from wasmkeep.attestation.errors import EvidenceFormatError
    from wasmkeep.attestation.limits import DEFAULT_ATTESTATION_LIMITS
    from wasmkeep.attestation.snp import load_amd_certificate, load_amd_crl

    certificates: list[x509.Certificate] = []
    crls: list[x509.CertificateRevocationList] = []
    for path in paths:
        source = shown(path)
        data = _read(path, DEFAULT_ATTESTATION_LIMITS.max_certificates_size, "certificate file")
        if b"-----BEGIN" in data:
            blocks = list(_PEM_BLOCK.finditer(data))
            if not blocks:
                raise EvidenceFormatError(f"{source}: no complete PEM block")
            for index, block in enumerate(blocks):
                label = block.group(1).decode("ascii")
                where = f"{source}: PEM block {index} ({label})"
                if label == "CERTIFICATE":
                    certificates.append(load_amd_certificate(block.group(0), where))
                elif label == "X509 CRL":
                    crls.append(load_amd_crl(block.group(0), where))
                else:
                    raise EvidenceFormatError(f"{where}: expected CERTIFICATE or X509 CRL")
            continue
        try:
            certificates.append(load_amd_certificate(data, source))
            continue
        except EvidenceFormatError:
            pass
        try:
            crls.append(load_amd_crl(data, source))
            continue
        except EvidenceFormatError:
            pass
        # A PkiPath (Enarx's milan.pkipath: SEQUENCE { ARK, ASK }).
        try:
            top = der.parse_der(data, f"{source} (PkiPath)")
            children = top.expect(der.SEQUENCE, f"{source} (PkiPath)").children()
        except EvidenceFormatError:
            raise EvidenceFormatError(
                f"{source}: not a certificate, a CRL or a PkiPath (DER), nor PEM"
            ) from None
        for index, child in enumerate(children):
            certificates.append(
                load_amd_certificate(child.encoded, f"{source}: certificate {index}")
            )
    return certificates, crls


def read_collateral(paths: Sequence[Path]) -> Collateral:
    """Collateral from files, merged: dcap-qvl's one-file JSON, a PCS TCB Info
    or QE Identity response, a CRL (root CA's or a PCK CA's), an issuer chain."""
    from wasmkeep.attestation.dcap import (
        Collateral,
        parse_crl,
        parse_issuer_chain,
    )
    from wasmkeep.attestation.errors import EvidenceFormatError
    from wasmkeep.attestation.limits import DEFAULT_ATTESTATION_LIMITS

    merged = Collateral()
    for path in paths:
        source = shown(path)
        data = _read(path, DEFAULT_ATTESTATION_LIMITS.max_collateral_size, "collateral")
        stripped = data.lstrip()
        try:
            if stripped.startswith(b"{"):
                part = _json_collateral(data)
            elif stripped.startswith((b"-----BEGIN CERTIFICATE", b"%2D")):
                chain = parse_issuer_chain(data)
                leaf = _common_name(chain[0]) if chain else ""
                if "PCK" in leaf:
                    part = Collateral(pck_crl_issuer_chain=chain)
                else:
                    part = Collateral(tcb_info_issuer_chain=chain, qe_identity_issuer_chain=chain)
            else:
                crl = parse_crl(data)
                issuer = crl.issuer.rfc4514_string()
                if "Root CA" in issuer:
                    part = Collateral(root_ca_crl=crl)
                else:
                    part = Collateral(pck_crl=crl)
        except EvidenceFormatError as error:
            raise EvidenceFormatError(f"{source}: {error}") from None
        merged = _merge_collateral(merged, part, source)
    return merged


def _json_collateral(data: bytes) -> Collateral:
    from wasmkeep.attestation.dcap import (
        Collateral,
        parse_qe_identity,
        parse_qvl_collateral,
        parse_tcb_info,
    )
    from wasmkeep.attestation.errors import EvidenceFormatError

    # Which document this is, by its top-level keys; its own parser then reads
    # it strictly (the signed parts byte for byte).
    try:
        keys = set(json.loads(data))
    except (ValueError, TypeError, RecursionError):
        raise EvidenceFormatError("not JSON") from None
    if "tcb_info" in keys or "qe_identity" in keys:
        return parse_qvl_collateral(data)
    if "tcbInfo" in keys:
        return Collateral(tcb_info=parse_tcb_info(data))
    if "enclaveIdentity" in keys or "qeIdentity" in keys:
        return Collateral(qe_identity=parse_qe_identity(data))
    raise EvidenceFormatError(
        "JSON that is neither dcap-qvl collateral, a TCB Info nor a QE Identity"
    )


def _merge_collateral(base: Collateral, part: Collateral, source: str = "") -> Collateral:
    """`base` with the parts `part` has; a part given twice is an error."""
    values: dict[str, Any] = {}
    for item in dataclasses.fields(part):
        mine = getattr(part, item.name)
        if mine in (None, ()):
            continue
        theirs = getattr(base, item.name)
        if theirs not in (None, ()) and theirs != mine:
            raise ConfigError(f"{source}: a second {item.name.replace('_', ' ')}")
        values[item.name] = mine
    return dataclasses.replace(base, **values)


def _common_name(certificate: x509.Certificate) -> str:
    from cryptography.x509.oid import NameOID

    for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attribute.value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return ""


# -- output ---------------------------------------------------------------------------------


def _jsonable(value: object) -> object:
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, bytes):
        return value.hex()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _claims_document(claims: Claims | None) -> dict[str, object] | None:
    if claims is None:
        return None
    return {
        "tee": claims.tee.value,
        "measurement": claims.measurement.hex(),
        "report_data": claims.report_data.hex(),
        "debug": claims.debug,
        "tcb_status": claims.tcb_status,
        "advisories": list(claims.advisories),
        "fields": _jsonable(claims.fields),
    }


def _document(
    verdict: Verdict,
    form: str,
    policy_path: Path | None,
    now: datetime.datetime,
    digest: str | None,
) -> dict[str, object]:
    """The stable JSON shape of `attest verify --json`."""
    return {
        "accepted": verdict.accepted,
        "format": form,
        "now": now.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z"),
        "policy": str(policy_path) if policy_path is not None else None,
        "workload_digest": digest,
        "claims": _claims_document(verdict.claims),
        "checks": [
            {"name": check.name, "passed": check.passed, "detail": check.detail}
            for check in verdict.checks
        ],
        "failures": [check.name for check in verdict.failures],
    }


def _tcb_text(claims: Claims) -> str:
    fields = claims.fields
    tcb = fields.get("reported_tcb")
    if isinstance(tcb, Mapping):
        fmc = f"fmc {tcb['fmc']} " if tcb.get("fmc") is not None else ""
        return (
            f"{fmc}bootloader {tcb.get('bootloader')} tee {tcb.get('tee')} "
            f"snp {tcb.get('snp')} microcode {tcb.get('microcode')}"
        )
    if "tee_tcb_svn" in fields:
        return f"TEE_TCB_SVN {fields['tee_tcb_svn']}"
    if "isvsvn" in fields:
        return f"ISVSVN {fields['isvsvn']}, CPUSVN {fields.get('cpusvn')}"
    return "-"


def _claim_rows(claims: Claims, form: str, digest: str | None) -> list[tuple[str, str]]:
    fields = claims.fields
    tee = claims.tee.value
    if tee == "software":
        tee += " (INSECURE: no hardware protects this keep)"
    rows = [("evidence", form), ("TEE", tee)]
    if fields.get("product"):
        rows.append(("product", str(fields["product"])))
    if "backend" in fields:
        rows.append(("backend", str(fields["backend"])))
    rows.append(("measurement", claims.measurement.hex() or "none"))
    if "mrsigner" in fields and claims.tee.value == "sgx":
        rows.append(("MRSIGNER", str(fields["mrsigner"])))
    rows.append(("TCB", _tcb_text(claims)))
    status = claims.tcb_status or "-"
    if claims.advisories:
        status += f" ({', '.join(claims.advisories)})"
    rows.append(("TCB status", status))
    rows.append(("debug", "yes" if claims.debug else "no"))
    rows.append(("report data", claims.report_data.hex()))
    if "workload_digest" in fields:
        rows.append(("claimed workload", f"{fields['workload_digest']} (unverified claim)"))
    rows.append(("bound workload", digest or "none"))
    return rows


def _print_verdict(verdict: Verdict, form: str, digest: str | None) -> None:
    # Imported here: rich is slow to import and only this output needs it.
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False)
    if verdict.claims is not None:
        claims_table = Table(
            title="claims", title_justify="left", title_style="bold", show_header=False
        )
        claims_table.add_column("claim", no_wrap=True, style="dim")
        claims_table.add_column("value", overflow="fold")
        for name, value in _claim_rows(verdict.claims, form, digest):
            claims_table.add_row(Text(name), Text(escaped(value)))
        console.print(claims_table)
    passed_mark, failed_mark = check_marks()
    checks_table = Table(title="checks", title_justify="left", title_style="bold")
    checks_table.add_column("check", no_wrap=True)
    checks_table.add_column("", no_wrap=True)
    checks_table.add_column("detail")
    for check in verdict.checks:
        mark = Text(passed_mark, style="green") if check.passed else Text(failed_mark, style="red")
        checks_table.add_row(Text(check.name), mark, Text(escaped(check.detail)))
    console.print(checks_table)
    if verdict.accepted:
        console.print(Text("accepted", style="bold green"))
    else:
        failed = [check.name for check in verdict.failures]
        console.print(
            Text(
                f"refused: {len(failed)} of {len(verdict.checks)} checks failed "
                f"({', '.join(failed)})",
                style="bold red",
            )
        )


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:200]


# -- collect --------------------------------------------------------------------------------


@attest.command()
@click.option(
    "--report-data",
    "report_data_hex",
    help="The 64 bytes to bind, in hex (default: 64 zero bytes).",
)
@click.option(
    "--backend",
    type=click.Choice(["nil", "process", "vm", "snp", "tdx"]),
    default="nil",
    show_default=True,
    help="The keep backend the evidence is for; snp and tdx require the hardware.",
)
@click.option("--workload-digest", help="sha256:<hex>: the workload software evidence claims.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the evidence here, in the form `attest verify` reads ('-' for stdout).",
)
@report_errors
def collect(
    report_data_hex: str | None, backend: str, workload_digest: str | None, out: Path | None
) -> None:
    """Collect evidence on this machine: configfs-tsm, the SNP or TDX guest
    device, else (nil, process, vm) software evidence, which is insecure."""
    from wasmkeep.keep.evidence import EvidenceKind, collect_evidence

    if report_data_hex is None:
        report_data = bytes(64)
    else:
        try:
            report_data = bytes.fromhex(report_data_hex)
        except ValueError:
            report_data = b""
        if len(report_data) != 64:
            raise ConfigError(
                f"--report-data {quote(report_data_hex)}: expected 128 hex digits (64 bytes)"
            )
    if workload_digest is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", workload_digest):
        raise ConfigError(
            f"--workload-digest {quote(workload_digest)}: expected sha256: and 64 lowercase "
            "hex digits"
        )
    collected = collect_evidence(report_data, backend=backend, workload_digest=workload_digest)
    to_stdout = out is not None and str(out) == "-"
    say = (lambda text: click.echo(text, err=True)) if to_stdout else click.echo
    if collected.kind is EvidenceKind.SOFTWARE:
        say("evidence: software (no TEE interface answered)")
    else:
        say(f"evidence: {collected.kind.value} from {collected.source}")
    for note in collected.notes:
        say(f"  note: {escaped(note)}")
    if collected.kind is EvidenceKind.SOFTWARE:
        click.echo(
            "wasmkeep: warning: software evidence: no hardware protects this keep; "
            "only a policy with [insecure] allow = true accepts it",
            err=True,
        )
    if not collected.remote_verifiable:
        click.echo("wasmkeep: warning: this evidence can be checked only on this machine", err=True)
    if out is None:
        say("not written (pass --out FILE)")
        return
    content = collected.to_file()
    if to_stdout:
        sys.stdout.buffer.write(content)
        sys.stdout.buffer.flush()
        return
    try:
        out.write_bytes(content)
    except OSError as error:
        raise ConfigError(f"{shown(out)}: cannot write: {error.strerror or error}") from None
    say(f"wrote {shown(out)} ({len(content)} bytes); check it with `wasmkeep attest verify`")
