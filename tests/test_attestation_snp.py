"""AMD SEV-SNP evidence: parsing the report and its carriers, and verifying
it to AMD's pinned roots.

The real vectors are in tests/assets/attestation (PROVENANCE.md lists their
sources and the facts checked here). Cases that need a key nobody outside AMD
has (a revoked VCEK, a debug policy, a VLEK) use a synthetic chain built
below with the same algorithms (RSASSA-PSS SHA-384 salt 48, ECDSA P-384),
passed to the verifier as injected roots.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from wasmkeep.attestation import der, snp_capture
from wasmkeep.attestation.errors import EvidenceFormatError
from wasmkeep.attestation.snp import (
    CHECK_NAMES,
    AmdRoots,
    ProductRoots,
    SnpProduct,
    SnpVerifier,
    TcbVersion,
    load_amd_certificate,
    load_amd_crl,
    parse_enarx_snp_extension,
    parse_snp_report,
    parse_tsm_capture,
    parse_tsm_json,
    verify_snp,
)
from wasmkeep.attestation.snp_certs import PINNED_ARK_SHA256, fingerprint, serial_number
from wasmkeep.attestation.snp_report import REPORT_SIZE, SIGNED_SIZE, GuestPolicy
from wasmkeep.attestation.verdict import Tee, Verdict

SNP = Path(__file__).parent / "assets" / "attestation" / "snp"
ENARX = Path(__file__).parent / "assets" / "attestation" / "enarx-csr"
ENARX_OID = x509.ObjectIdentifier("1.3.6.1.4.1.58270.1.3")


def utc(year: int, month: int = 1, day: int = 1) -> datetime.datetime:
    return datetime.datetime(year, month, day, tzinfo=datetime.UTC)


#: Times inside every certificate's validity, per vector.
MILAN_NOW = utc(2025, 1, 1)
GENOA_NOW = utc(2025, 6, 1)  # the Genoa VCEK is valid from 2025-04-20
TURIN_NOW = utc(2025, 6, 1)
ENARX_NOW = utc(2023, 1, 1)  # inside the embedded Milan CRL's [thisUpdate, nextUpdate]


MilanVirtee = tuple[bytes, x509.Certificate, x509.Certificate, x509.Certificate]


def failed(verdict: Verdict) -> set[str]:
    return {check.name for check in verdict.failures}


def check(verdict: Verdict, name: str) -> str:
    (found,) = [c for c in verdict.checks if c.name == name]
    return found.detail


def pem_chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


@pytest.fixture(scope="module")
def milan_virtee() -> MilanVirtee:
    ask, ark = pem_chain(SNP / "milan-virtee" / "ask_ark.pem")
    vcek = load_amd_certificate((SNP / "milan-virtee" / "vcek.der").read_bytes())
    return (SNP / "milan-virtee" / "report.bin").read_bytes(), vcek, ask, ark


@pytest.fixture(scope="module")
def milan_trustee() -> tuple[bytes, x509.Certificate]:
    vcek = load_amd_certificate((SNP / "milan-trustee" / "vcek.der").read_bytes())
    return (SNP / "milan-trustee" / "report.bin").read_bytes(), vcek


# -- the real vectors ----------------------------------------------------------


def test_milan_virtee_report_fields(milan_virtee: MilanVirtee) -> None:
    raw, vcek, _, _ = milan_virtee
    report = parse_snp_report(raw)
    assert report.version == 2
    assert report.policy.raw == 0x30000
    assert report.policy.smt_allowed and report.policy.reserved_bit_17
    assert not report.policy.debug_allowed
    assert not report.policy.migrate_ma_allowed
    assert not report.policy.single_socket_required
    assert (report.policy.abi_major, report.policy.abi_minor) == (0, 0)
    assert report.vmpl == 0
    tcb = report.reported_tcb
    assert (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode, tcb.fmc) == (3, 0, 8, 115, None)
    assert report.signature_algo == 1
    assert report.signing_key == 0 and not report.mask_chip_key and not report.author_key_en
    assert report.cpuid_fam_id is None and report.product is None  # v2 names no CPU
    assert report.launch_mit_vector is None
    assert (report.current_major, report.current_minor, report.current_build) == (1, 0x34, 4)
    hwid = vcek.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4"))
    assert isinstance(hwid.value, x509.UnrecognizedExtension)
    assert report.chip_id == hwid.value.value
    assert report.signed_bytes == raw[:0x2A0]


def test_milan_virtee_verifies(milan_virtee: MilanVirtee) -> None:
    raw, vcek, ask, ark = milan_virtee
    verdict = verify_snp(raw, vcek, ask=ask, ark=ark, product="Milan", now=MILAN_NOW)
    assert verdict.accepted, verdict.failures
    assert tuple(c.name for c in verdict.checks) == CHECK_NAMES
    claims = verdict.claims
    assert claims is not None
    assert claims.tee is Tee.SNP and not claims.debug
    assert claims.measurement == raw[0x90:0xC0]
    assert claims.report_data == raw[0x50:0x90]
    fields = claims.fields
    assert fields["product"] == "Milan"
    assert fields["vmpl"] == 0
    assert fields["smt_allowed"] is True
    assert fields["migrate_ma_allowed"] is False
    assert fields["single_socket_required"] is False
    assert fields["revocation_checked"] is False
    assert fields["reported_tcb"] == {
        "raw": "0x7308000000000003",
        "bootloader": 3,
        "tee": 0,
        "snp": 8,
        "microcode": 115,
    }
    assert fields["chip_id"] == raw[0x1A0:0x1E0].hex()
    assert "no CRL given" in check(verdict, "crl")
    # The same with nothing but the VCEK: the pinned ASK and ARK complete the chain.
    assert verify_snp(raw, vcek, now=MILAN_NOW).accepted


def test_milan_trustee_verifies_against_the_roots(
    milan_trustee: tuple[bytes, x509.Certificate],
) -> None:
    raw, vcek = milan_trustee
    report = parse_snp_report(raw)
    assert report.version == 2
    assert report.policy.raw == 0x3001F
    assert report.policy.abi_minor == 0x1F
    assert report.guest_svn == 4
    assert report.family_id == b"\x01" + bytes(15)
    assert report.image_id == b"\x02" + bytes(15)
    ask, ark, asvk = pem_chain(SNP / "roots" / "milan_ask_ark_asvk.pem")
    assert "VLEK" in asvk.subject.rfc4514_string()
    verdict = verify_snp(report, vcek, ask=ask, ark=ark, now=MILAN_NOW)
    assert verdict.accepted, verdict.failures
    assert verify_snp(report, vcek, now=MILAN_NOW).accepted


@pytest.mark.parametrize("name", ["vcek-invalid-legacy.der", "vcek-invalid-new.der"])
def test_milan_trustee_invalid_vceks_fail(
    milan_trustee: tuple[bytes, x509.Certificate], name: str
) -> None:
    raw, _ = milan_trustee
    vcek = load_amd_certificate((SNP / "milan-trustee" / name).read_bytes())
    verdict = verify_snp(raw, vcek, now=MILAN_NOW)
    assert not verdict.accepted
    # Not signed by AMD's ASK, did not sign the report, other TCB, other chip.
    assert failed(verdict) == {
        "vcek_signed_by_ask",
        "report_signature",
        "tcb_matches_vcek",
        "chip_id_matches_vcek",
    }
    assert "RSASSA-PSS" in check(verdict, "vcek_signed_by_ask")
    assert "report != certificate" in check(verdict, "tcb_matches_vcek")


def test_genoa_tsm_capture_parses_and_verifies() -> None:
    evidence = parse_tsm_json((SNP / "genoa-veraison-tsm" / "tsm-report.json").read_bytes())
    report = evidence.report
    assert report.version == 3
    assert (report.cpuid_fam_id, report.cpuid_mod_id, report.cpuid_step) == (0x19, 0x11, 1)
    assert report.product is SnpProduct.GENOA
    assert evidence.vcek is not None and evidence.ask is not None and evidence.ark is not None
    assert not evidence.vlek
    assert fingerprint(evidence.ark) == PINNED_ARK_SHA256[SnpProduct.GENOA]
    verdict = verify_snp(report, evidence.vcek, ask=evidence.ask, ark=evidence.ark, now=GENOA_NOW)
    assert verdict.accepted, verdict.failures
    assert "report CPUID family 0x19 model 0x11: Genoa" in check(verdict, "product")
    assert verdict.claims is not None and verdict.claims.fields["product"] == "Genoa"


def test_genoa_tsm_capture_from_its_blobs() -> None:
    document = json.loads((SNP / "genoa-veraison-tsm" / "tsm-report.json").read_bytes())

    def blob(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    evidence = parse_tsm_capture(blob(document["outblob"]), blob(document["auxblob"]))
    assert evidence.report.raw == blob(document["outblob"])
    # The capture's certificates are PEM; the same table with DER certificates reads the same.
    assert evidence.vcek is not None and evidence.ask is not None and evidence.ark is not None
    der_table = cert_table(
        [
            (snp_capture.GUID_VCEK, evidence.vcek.public_bytes(serialization.Encoding.DER)),
            (snp_capture.GUID_ASK, evidence.ask.public_bytes(serialization.Encoding.DER)),
            (snp_capture.GUID_ARK, evidence.ark.public_bytes(serialization.Encoding.DER)),
        ]
    )
    again = parse_tsm_capture(evidence.report.raw, der_table)
    assert again.vcek == evidence.vcek and again.ask == evidence.ask and again.ark == evidence.ark
    # Without the auxblob, the pinned ASK/ARK complete the chain; the VCEK comes from the KDS.
    bare = parse_tsm_capture(evidence.report.raw, b"")
    assert bare.vcek is None and bare.ask is None and bare.ark is None
    assert verify_snp(bare.report, evidence.vcek, now=GENOA_NOW).accepted


def turin_report_for(vcek: x509.Certificate, *, cpu: tuple[int, int] = (0x1A, 0x02)) -> bytes:
    """An unsigned v3 Turin report whose TCB and CHIP_ID match the VCEK's extensions."""
    values = vcek_extension_values(vcek)
    tcb = bytes([values["9"], values["1"], values["2"], values["3"], 0, 0, 0, values["8"]])
    hwid = vcek_hwid(vcek)
    return make_report(
        version=3,
        cpuid=(*cpu, 0),
        tcb=int.from_bytes(tcb, "little"),
        chip_id=hwid + bytes(64 - len(hwid)),
    )


def test_turin_chain_verifies_with_turins_layout() -> None:
    ask, ark = pem_chain(SNP / "turin-chain-virtee" / "ask_ark.pem")
    vcek = load_amd_certificate((SNP / "turin-chain-virtee" / "vcek.der").read_bytes())
    assert fingerprint(ark) == PINNED_ARK_SHA256[SnpProduct.TURIN]
    values = vcek_extension_values(vcek)
    assert "9" in values  # Turin's fmcSPL, 1.3.6.1.4.1.3704.1.3.9
    assert len(vcek_hwid(vcek)) == 8  # Turin's CHIP_ID is 8 bytes
    # The vector has no report: ours is unsigned, so only its signature fails.
    report = parse_snp_report(turin_report_for(vcek))
    assert report.product is SnpProduct.TURIN and report.reported_tcb.turin_layout
    assert report.reported_tcb.fmc == values["9"]
    assert report.reported_tcb.microcode == values["8"]
    verdict = verify_snp(report, vcek, ask=ask, ark=ark, now=TURIN_NOW)
    assert failed(verdict) == {"report_signature"}
    assert "Turin" in check(verdict, "product")
    assert "fmc" in check(verdict, "tcb_matches_vcek")
    assert "8 bytes" in check(verdict, "chip_id_matches_vcek")
    # A Turin CHIP_ID must be zero after its 8 bytes.
    raw = bytearray(turin_report_for(vcek))
    raw[0x1A0 + 8] = 1
    assert "chip_id_matches_vcek" in failed(verify_snp(bytes(raw), vcek, now=TURIN_NOW))
    # A report whose CPUID says Milan does not go with a Turin VCEK.
    milan = verify_snp(turin_report_for(vcek, cpu=(0x19, 0x01)), vcek, now=TURIN_NOW)
    assert "product" in failed(milan)
    assert "report CPUID family 0x19 model 0x01: Milan" in check(milan, "product")


def enarx_csr() -> x509.CertificateSigningRequest:
    return x509.load_der_x509_csr((ENARX / "milan.signed.crl.csr").read_bytes())


def enarx_extension(csr: x509.CertificateSigningRequest) -> bytes:
    extension = csr.extensions.get_extension_for_oid(ENARX_OID)
    assert isinstance(extension.value, x509.UnrecognizedExtension)
    assert not extension.critical
    return extension.value.value


def test_enarx_milan_csr_evidence_verifies() -> None:
    csr = enarx_csr()
    report, vcek, crls = parse_enarx_snp_extension(enarx_extension(csr))
    spki = csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    binding = hashlib.sha384(spki).digest()
    assert report.report_data[:48] == binding
    assert len(crls) == 2  # Genoa's and Milan's, as the keep fetched them
    verdict = verify_snp(report, vcek, crls=crls, now=ENARX_NOW, expected_report_data=binding)
    assert verdict.accepted, verdict.failures
    assert "not revoked in 1 CRL(s) of ARK-Milan" in check(verdict, "crl")
    assert "REPORT_DATA[0:48]" in check(verdict, "report_data")
    assert verdict.claims is not None and verdict.claims.fields["revocation_checked"] is True
    # The embedded CRLs are from 2022: a year later they are stale.
    stale = verify_snp(report, vcek, crls=crls, now=utc(2024), expected_report_data=binding)
    assert failed(stale) == {"crl"} and "stale" in check(stale, "crl")


@pytest.mark.parametrize(("name", "product"), [("milan", "Milan"), ("genoa", "Genoa")])
def test_enarx_pkipaths_are_the_pinned_roots(name: str, product: str) -> None:
    pkipath = der.parse_der((ENARX / f"{name}.pkipath").read_bytes(), "PkiPath")
    ark_tlv, ask_tlv = pkipath.fields(der.SEQUENCE, "PkiPath", ("ark", "ask"))
    ark = load_amd_certificate(ark_tlv.encoded)
    ask = load_amd_certificate(ask_tlv.encoded)
    roots = AmdRoots.builtin().get(SnpProduct.parse(product))
    assert roots is not None
    assert fingerprint(ark) == PINNED_ARK_SHA256[roots.product]
    _, vcek, crls = parse_enarx_snp_extension(enarx_extension(enarx_csr()))
    (crl,) = [crl for crl in crls if crl.issuer == ark.subject]
    ark_key = ark.public_key()
    assert isinstance(ark_key, rsa.RSAPublicKey)
    assert crl.is_signature_valid(ark_key)
    if name == "milan":
        assert ask == roots.ask
        report, vcek, _ = parse_enarx_snp_extension(enarx_extension(enarx_csr()))
        assert verify_snp(report, vcek, ask=ask, ark=ark, now=ENARX_NOW).accepted
        assert len(list(crl)) == 0
    else:
        # AMD re-issued Genoa's ASK: the Enarx copy is the old one, and the
        # Genoa CRL the keep sent revokes exactly it (real revocation data).
        assert ask != roots.ask
        assert [entry.serial_number for entry in crl] == [serial_number(ask)] == [0x20001]


# -- the report format -----------------------------------------------------------


def make_report(
    *,
    version: int = 2,
    policy: int = 0x30000,
    tcb: int = 0x7308000000000003,
    chip_id: bytes = bytes(range(64)),
    report_data: bytes = bytes(64),
    signing_key: int = 0,
    cpuid: tuple[int, int, int] | None = None,
    mit: tuple[int, int] | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> bytes:
    """A report laid out as the ABI spec's table says, signed by `key` if given."""
    raw = bytearray(REPORT_SIZE)
    struct.pack_into("<IIQ", raw, 0x00, version, 1, policy)
    raw[0x10:0x20] = b"F" * 16
    raw[0x20:0x30] = b"I" * 16
    struct.pack_into("<IIQQI", raw, 0x30, 0, 1, tcb, 0b11, signing_key << 2)
    raw[0x50:0x90] = report_data
    raw[0x90:0xC0] = hashlib.sha384(b"measurement").digest()
    raw[0x140:0x160] = b"R" * 32
    struct.pack_into("<Q", raw, 0x180, tcb)
    if cpuid is not None:
        raw[0x188:0x18B] = bytes(cpuid)
    raw[0x1A0:0x1E0] = chip_id
    struct.pack_into("<Q4B4BQ", raw, 0x1E0, tcb, 9, 55, 1, 0, 9, 55, 1, 0, tcb)
    if mit is not None:
        struct.pack_into("<QQ", raw, 0x1F8, *mit)
    if key is not None:
        r, s = decode_dss_signature(key.sign(bytes(raw[:SIGNED_SIZE]), ec.ECDSA(hashes.SHA384())))
        raw[0x2A0:0x2E8] = r.to_bytes(72, "little")
        raw[0x2E8:0x330] = s.to_bytes(72, "little")
    return bytes(raw)


def test_every_version_parses_with_its_fields() -> None:
    v2 = parse_snp_report(make_report(version=2))
    assert v2.cpuid_fam_id is None and v2.launch_mit_vector is None
    v3 = parse_snp_report(make_report(version=3, cpuid=(0x19, 0x11, 1)))
    assert (v3.cpuid_fam_id, v3.cpuid_mod_id, v3.cpuid_step) == (0x19, 0x11, 1)
    assert v3.product is SnpProduct.GENOA
    v4 = parse_snp_report(make_report(version=4, cpuid=(0x19, 0x01, 1)))
    assert v4.product is SnpProduct.MILAN and v4.current_mit_vector is None
    v5 = parse_snp_report(make_report(version=5, cpuid=(0x1A, 0x02, 0), mit=(3, 5)))
    assert (v5.launch_mit_vector, v5.current_mit_vector) == (3, 5)
    assert v5.product is SnpProduct.TURIN and v5.reported_tcb.turin_layout
    assert v5.platform_info.as_dict()["smt_enabled"] is True
    assert v5.fields()["current_version"] == "1.55.9"
    # v3+ with an unknown CPU: no product, the layout the caller states.
    unknown = parse_snp_report(make_report(version=3, cpuid=(0x17, 0x31, 0)), product="turin")
    assert unknown.cpuid_product is None and unknown.product is SnpProduct.TURIN


def test_tcb_layouts() -> None:
    raw = int.from_bytes(bytes([1, 2, 3, 4, 5, 6, 7, 8]), "little")
    legacy = TcbVersion(raw, turin_layout=False)
    assert (legacy.fmc, legacy.bootloader, legacy.tee, legacy.snp, legacy.microcode) == (
        None, 1, 2, 7, 8,
    )  # fmt: skip
    turin = TcbVersion(raw, turin_layout=True)
    assert (turin.fmc, turin.bootloader, turin.tee, turin.snp, turin.microcode) == (1, 2, 3, 4, 8)
    assert str(turin) == "fmc 1 bl 2 tee 3 snp 4 ucode 8"
    # A v2 report decodes with the product the caller states.
    report = make_report(tcb=raw)
    assert parse_snp_report(report, product="Turin").reported_tcb.fmc == 1
    assert parse_snp_report(report, product="Milan").reported_tcb.snp == 7
    with pytest.raises(ValueError, match="unknown SEV-SNP product"):
        parse_snp_report(report, product="Naples")


@pytest.mark.parametrize(
    ("bit", "name"),
    [
        (16, "smt_allowed"),
        (17, "reserved_bit_17"),
        (18, "migrate_ma_allowed"),
        (19, "debug_allowed"),
        (20, "single_socket_required"),
        (21, "cxl_allowed"),
        (22, "mem_aes_256_xts_required"),
        (23, "rapl_disabled"),
        (24, "ciphertext_hiding_required"),
        (25, "page_swap_disabled"),
    ],
)
def test_policy_bits(bit: int, name: str) -> None:
    policy = GuestPolicy(1 << bit | 0x0102)
    assert (policy.abi_major, policy.abi_minor) == (1, 2)
    decoded = policy.as_dict()
    assert decoded[name] is True
    assert [k for k, v in decoded.items() if v is True] == [name]


@pytest.mark.parametrize("size", [0, 1, REPORT_SIZE - 1, REPORT_SIZE + 1, 4000])
def test_wrong_sizes_are_refused(size: int) -> None:
    data = make_report() + bytes(size - REPORT_SIZE) if size > REPORT_SIZE else bytes(size)
    with pytest.raises(EvidenceFormatError, match=f"{size} bytes"):
        parse_snp_report(data)


@pytest.mark.parametrize("version", [0, 1, 6, 0xFFFFFFFF])
def test_unknown_versions_are_refused(version: int) -> None:
    with pytest.raises(EvidenceFormatError, match=r"VERSION at offset 0x0 is \d+"):
        parse_snp_report(make_report(version=version))


@pytest.mark.parametrize(
    ("version", "offset", "field"),
    [
        (2, 0x4C, "after SIGNING_KEY at offset 0x4c"),
        (2, 0x188, "after REPORTED_TCB at offset 0x188"),
        (3, 0x18B, "after CPUID_STEP at offset 0x18b"),
        (3, 0x19F, "after CPUID_STEP at offset 0x18b"),
        (2, 0x1EB, "after CURRENT_MAJOR at offset 0x1eb"),
        (2, 0x1EF, "after COMMITTED_MAJOR at offset 0x1ef"),
        (3, 0x1F8, "after LAUNCH_TCB at offset 0x1f8"),
        (5, 0x208, "after CURRENT_MIT_VECTOR at offset 0x208"),
        (5, 0x29F, "after CURRENT_MIT_VECTOR at offset 0x208"),
        (2, 0x330, "SIGNATURE reserved part at offset 0x330"),
        (2, 0x49F, "SIGNATURE reserved part at offset 0x330"),
    ],
)
def test_reserved_fields_must_be_zero(version: int, offset: int, field: str) -> None:
    raw = bytearray(make_report(version=version, cpuid=(0x19, 1, 1) if version > 2 else None))
    raw[offset] = 0x40
    with pytest.raises(EvidenceFormatError, match=f"reserved field RESERVED {field}|{field}") as e:
        parse_snp_report(bytes(raw))
    assert f"byte 0x{offset:x} is 0x40" in str(e.value)


def test_reserved_key_info_bits_must_be_zero() -> None:
    raw = bytearray(make_report())
    raw[0x48] |= 0x20
    with pytest.raises(EvidenceFormatError, match="bits 31:5 of the field at offset 0x48"):
        parse_snp_report(bytes(raw))


# -- a synthetic chain: our own ARK, ASK (or ASVK) and VCEK (or VLEK) ----------------

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
T0 = utc(2024)
T1 = utc(2034)
OID_SPL = "1.3.6.1.4.1.3704.1.3."


def name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def vcek_extension_values(vcek: x509.Certificate) -> dict[str, int]:
    values = {}
    for extension in vcek.extensions:
        dotted = extension.oid.dotted_string
        if dotted.startswith(OID_SPL) and isinstance(extension.value, x509.UnrecognizedExtension):
            values[dotted.removeprefix(OID_SPL)] = der.parse_der(extension.value.value).as_unsigned(
                dotted
            )
    return values


def vcek_hwid(vcek: x509.Certificate) -> bytes:
    extension = vcek.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4"))
    assert isinstance(extension.value, x509.UnrecognizedExtension)
    return extension.value.value


@dataclass
class Chain:
    product: SnpProduct
    ark_key: rsa.RSAPrivateKey
    ask_key: rsa.RSAPrivateKey
    ark: x509.Certificate
    ask: x509.Certificate
    vcek_key: ec.EllipticCurvePrivateKey
    vcek: x509.Certificate
    vlek: bool

    @property
    def roots(self) -> AmdRoots:
        return AmdRoots.of(
            ProductRoots(
                product=self.product,
                ark=self.ark,
                ask=self.ask if not self.vlek else self.other_ask(),
                asvk=self.ask if self.vlek else None,
                ark_sha256=fingerprint(self.ark),
            )
        )

    def other_ask(self) -> x509.Certificate:
        return certificate(
            name(f"SEV-{self.product}"), self.ark.subject, self.ask_key, self.ark_key, 2
        )

    def crl(
        self,
        revoked: tuple[int, ...] = (),
        *,
        signer: rsa.RSAPrivateKey | None = None,
        issuer: x509.Name | None = None,
        last: datetime.datetime = T0,
        next_: datetime.datetime = T1,
    ) -> x509.CertificateRevocationList:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer or self.ark.subject)
            .last_update(last)
            .next_update(next_)
        )
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(utc(2025))
                .build()
            )
        return builder.sign(signer or self.ark_key, hashes.SHA384(), rsa_padding=PSS)

    def report(self, **fields: object) -> bytes:
        fields.setdefault("chip_id", bytes(range(1, 65)) if not self.vlek else bytes(range(64)))
        fields.setdefault("signing_key", 1 if self.vlek else 0)
        return make_report(key=self.vcek_key, **fields)  # type: ignore[arg-type]


def certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    signer: rsa.RSAPrivateKey,
    serial: int,
    extensions: list[tuple[str, bytes]] = (),  # type: ignore[assignment]
    not_before: datetime.datetime = T0,
    not_after: datetime.datetime = T1,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for oid, value in extensions:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False
        )
    return builder.sign(signer, hashes.SHA384(), rsa_padding=PSS)


_RSA_KEYS: list[rsa.RSAPrivateKey] = []


def rsa_key(index: int) -> rsa.RSAPrivateKey:
    while len(_RSA_KEYS) <= index:  # 2048 bits: AMD's are 4096, the scheme is the same
        _RSA_KEYS.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _RSA_KEYS[index]


def make_chain(
    product: SnpProduct = SnpProduct.MILAN,
    *,
    vlek: bool = False,
    tcb: tuple[int, ...] = (3, 0, 8, 115),
    fmc: int | None = None,
    hwid: bytes = bytes(range(1, 65)),
    vcek_dates: tuple[datetime.datetime, datetime.datetime] = (T0, T1),
) -> Chain:
    ark_key, ask_key = rsa_key(0), rsa_key(1)
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    ark = certificate(name(f"ARK-{product}"), name(f"ARK-{product}"), ark_key, ark_key, 1)
    middle = f"SEV-VLEK-{product}" if vlek else f"SEV-{product}"
    ask = certificate(name(middle), ark.subject, ask_key, ark_key, 0x10001)
    spl = [f"{OID_SPL}1", f"{OID_SPL}2", f"{OID_SPL}3", f"{OID_SPL}8"]
    extensions = [(oid, bytes([2, 1, value])) for oid, value in zip(spl, tcb, strict=True)]
    if fmc is not None:
        extensions.append((f"{OID_SPL}9", bytes([2, 1, fmc])))
    if not vlek:
        extensions.append(("1.3.6.1.4.1.3704.1.4", hwid))
    vcek = certificate(
        name("SEV-VLEK" if vlek else "SEV-VCEK"),
        ask.subject,
        vcek_key,
        ask_key,
        0x4242,
        extensions,
        *vcek_dates,
    )
    return Chain(product, ark_key, ask_key, ark, ask, vcek_key, vcek, vlek)


@pytest.fixture(scope="module")
def chain() -> Chain:
    return make_chain()


def test_synthetic_chain_verifies(chain: Chain) -> None:
    verdict = verify_snp(chain.report(), chain.vcek, now=utc(2026), roots=chain.roots)
    assert verdict.accepted, verdict.failures
    # ... and not against AMD's roots.
    amd = verify_snp(chain.report(), chain.vcek, now=utc(2026))
    assert failed(amd) == {"vcek_signed_by_ask"}


def test_revoked_vcek_fails(chain: Chain) -> None:
    report, roots, now = chain.report(), chain.roots, utc(2026)
    clean = verify_snp(report, chain.vcek, crls=[chain.crl((7,))], now=now, roots=roots)
    assert clean.accepted and "not revoked" in check(clean, "crl")
    revoked = verify_snp(report, chain.vcek, crls=[chain.crl((0x4242,))], now=now, roots=roots)
    assert failed(revoked) == {"crl"}
    assert "the VCEK (serial 0x4242) is revoked" in check(revoked, "crl")
    ask_revoked = verify_snp(report, chain.vcek, crls=[chain.crl((0x10001,))], now=now, roots=roots)
    assert "the ASK (serial 0x10001) is revoked" in check(ask_revoked, "crl")


def test_bad_crls_fail(chain: Chain) -> None:
    report, roots, now = chain.report(), chain.roots, utc(2026)
    forged = verify_snp(
        report, chain.vcek, crls=[chain.crl(signer=rsa_key(2))], now=now, roots=roots
    )
    assert failed(forged) == {"crl"} and "does not verify" in check(forged, "crl")
    stale = chain.crl(last=utc(2024), next_=utc(2025))
    assert "stale" in check(
        verify_snp(report, chain.vcek, crls=[stale], now=now, roots=roots), "crl"
    )
    future = chain.crl(last=utc(2027))
    assert "not issued yet" in check(
        verify_snp(report, chain.vcek, crls=[future], now=now, roots=roots), "crl"
    )
    # A CRL of another issuer is not this chain's: revocation is then not checked.
    other = chain.crl((0x4242,), issuer=name("ARK-Genoa"))
    verdict = verify_snp(report, chain.vcek, crls=[other], now=now, roots=roots)
    assert verdict.accepted and "none of the 1 CRLs given" in check(verdict, "crl")
    assert verdict.claims is not None and verdict.claims.fields["revocation_checked"] is False


def test_debug_policy_fails(chain: Chain) -> None:
    verdict = verify_snp(
        chain.report(policy=0x30000 | 1 << 19), chain.vcek, now=utc(2026), roots=chain.roots
    )
    assert failed(verdict) == {"debug_disabled"}
    assert "allows debugging (DEBUG, bit 19)" in check(verdict, "debug_disabled")
    assert verdict.claims is not None and verdict.claims.debug


def test_report_data_binding(chain: Chain) -> None:
    data = hashlib.sha512(b"keep key and workload").digest()
    report, roots, now = chain.report(report_data=data), chain.roots, utc(2026)
    assert verify_snp(report, chain.vcek, now=now, roots=roots, expected_report_data=data).accepted
    wrong = verify_snp(report, chain.vcek, now=now, roots=roots, expected_report_data=bytes(64))
    assert failed(wrong) == {"report_data"} and "expected 0000" in check(wrong, "report_data")
    prefix = verify_snp(report, chain.vcek, now=now, roots=roots, expected_report_data=data[:48])
    assert prefix.accepted and "REPORT_DATA[0:48]" in check(prefix, "report_data")
    for bad in (b"", bytes(65)):
        with pytest.raises(ValueError, match="1 to 64 bytes"):
            verify_snp(report, chain.vcek, now=now, roots=roots, expected_report_data=bad)


def test_masked_chip_id_is_not_compared(chain: Chain) -> None:
    verdict = verify_snp(
        chain.report(chip_id=bytes(64)), chain.vcek, now=utc(2026), roots=chain.roots
    )
    assert verdict.accepted and "masked" in check(verdict, "chip_id_matches_vcek")


def test_signature_algo_must_be_ecdsa_p384(chain: Chain) -> None:
    raw = bytearray(chain.report())
    raw[0x34] = 2
    verdict = verify_snp(bytes(raw), chain.vcek, now=utc(2026), roots=chain.roots)
    assert {"signature_algo", "report_signature"} <= failed(verdict)


def test_vlek_chain() -> None:
    vlek_chain = make_chain(vlek=True)
    verdict = verify_snp(
        vlek_chain.report(), vlek_chain.vcek, now=utc(2026), roots=vlek_chain.roots
    )
    assert verdict.accepted, verdict.failures
    assert "ASVK" in check(verdict, "ask_signed_by_ark")
    assert "VLEK has no hwID" in check(verdict, "chip_id_matches_vcek")
    assert verdict.claims is not None and verdict.claims.fields["endorsement_key"] == "vlek"
    # The report says the VCEK signed it: that is not what the certificate is.
    wrong = verify_snp(
        vlek_chain.report(signing_key=0), vlek_chain.vcek, now=utc(2026), roots=vlek_chain.roots
    )
    assert failed(wrong) == {"signing_key"}
    none = verify_snp(
        vlek_chain.report(signing_key=7), vlek_chain.vcek, now=utc(2026), roots=vlek_chain.roots
    )
    assert "SIGNING_KEY is 7 (none)" in check(none, "signing_key")


def test_synthetic_turin_layout() -> None:
    turin = make_chain(SnpProduct.TURIN, tcb=(2, 3, 4, 5), fmc=1, hwid=b"\x11" * 8)
    tcb = int.from_bytes(bytes([1, 2, 3, 4, 0, 0, 0, 5]), "little")
    chip_id = b"\x11" * 8 + bytes(56)
    roots, now = turin.roots, utc(2026)
    v3 = turin.report(version=3, cpuid=(0x1A, 0x11, 0), tcb=tcb, chip_id=chip_id)
    verdict = verify_snp(v3, turin.vcek, now=now, roots=roots)
    assert verdict.accepted, verdict.failures
    assert "fmc 1 bl 2 tee 3 snp 4 ucode 5" in check(verdict, "tcb_matches_vcek")
    # A v2 report names no CPU: the VCEK's issuer (SEV-Turin) decides the layout.
    v2 = turin.report(version=2, tcb=tcb, chip_id=chip_id)
    assert parse_snp_report(v2).reported_tcb.turin_layout is False
    assert verify_snp(v2, turin.vcek, now=now, roots=roots).accepted
    # The legacy layout of the same bytes would not match.
    wrong = turin.report(
        version=3,
        cpuid=(0x1A, 0x11, 0),
        tcb=int.from_bytes(bytes([2, 3, 0, 0, 0, 0, 4, 5]), "little"),
        chip_id=chip_id,
    )
    assert "tcb_matches_vcek" in failed(verify_snp(wrong, turin.vcek, now=now, roots=roots))


def test_tcb_mismatch_is_named(chain: Chain) -> None:
    verdict = verify_snp(
        chain.report(tcb=0x7309000000000003), chain.vcek, now=utc(2026), roots=chain.roots
    )
    assert failed(verdict) == {"tcb_matches_vcek"}
    assert "snp 9 != 8" in check(verdict, "tcb_matches_vcek")


# -- negatives on the real vectors ----------------------------------------------


def test_every_bit_flip_in_the_signed_part_is_rejected(
    milan_virtee: MilanVirtee,
) -> None:
    raw, vcek, _, _ = milan_virtee
    verifier = SnpVerifier()
    assert verifier.verify(raw, vcek, now=MILAN_NOW).accepted
    outcomes = {"format": 0, "signature": 0}
    for position in range(SIGNED_SIZE):
        for bit in (position % 8, (position * 5 + 3) % 8):
            flipped = bytearray(raw)
            flipped[position] ^= 1 << bit
            try:
                verdict = verifier.verify(bytes(flipped), vcek, now=MILAN_NOW)
            except EvidenceFormatError:
                outcomes["format"] += 1  # a reserved field, or an unknown version
                continue
            assert "report_signature" in failed(verdict), (position, bit)
            outcomes["signature"] += 1
    assert outcomes["signature"] > outcomes["format"] > 0


@settings(max_examples=200, deadline=None)
@given(position=st.integers(0x2A0, 0x32F), bit=st.integers(0, 7))
def test_bit_flips_in_the_signature_are_rejected(position: int, bit: int) -> None:
    raw = bytearray((SNP / "milan-virtee" / "report.bin").read_bytes())
    vcek = milan_vcek()
    raw[position] ^= 1 << bit
    verdict = _VERIFIER.verify(bytes(raw), vcek, now=MILAN_NOW)
    assert failed(verdict) == {"report_signature"}


_VERIFIER = SnpVerifier()


def milan_vcek() -> x509.Certificate:
    return _CACHE.setdefault(
        "vcek", load_amd_certificate((SNP / "milan-virtee" / "vcek.der").read_bytes())
    )


_CACHE: dict[str, x509.Certificate] = {}


def test_swapped_vceks_fail(
    milan_virtee: MilanVirtee, milan_trustee: tuple[bytes, x509.Certificate]
) -> None:
    virtee_raw, virtee_vcek, _, _ = milan_virtee
    trustee_raw, trustee_vcek = milan_trustee
    # The other Milan vector's VCEK: a real AMD chain, but another chip.
    verdict = verify_snp(trustee_raw, virtee_vcek, now=MILAN_NOW)
    assert failed(verdict) == {"report_signature", "chip_id_matches_vcek"}
    verdict = verify_snp(virtee_raw, trustee_vcek, now=MILAN_NOW)
    assert failed(verdict) == {"report_signature", "chip_id_matches_vcek"}
    # The Genoa report with a Milan VCEK: its CPUID says Genoa.
    genoa = parse_tsm_json((SNP / "genoa-veraison-tsm" / "tsm-report.json").read_bytes())
    verdict = verify_snp(genoa.report, virtee_vcek, now=GENOA_NOW)
    assert {"product", "report_signature"} <= failed(verdict)
    assert "sources disagree" in check(verdict, "product")


def test_wrong_roots_fail(milan_virtee: MilanVirtee) -> None:
    raw, vcek, ask, _ = milan_virtee
    genoa = AmdRoots.builtin().get(SnpProduct.GENOA)
    assert genoa is not None
    # Milan evidence against Genoa's roots only.
    verdict = verify_snp(raw, vcek, now=MILAN_NOW, roots=AmdRoots.of(genoa))
    assert "no pinned roots for Milan" in check(verdict, "ark_pinned")
    # The caller says Genoa.
    verdict = verify_snp(raw, vcek, product="Genoa", now=MILAN_NOW)
    assert "product" in failed(verdict) and "caller: Genoa" in check(verdict, "product")
    # An ARK named ARK-Milan that is not AMD's.
    fake = make_chain()
    verdict = verify_snp(raw, vcek, ark=fake.ark, now=MILAN_NOW)
    assert failed(verdict) == {"ark_pinned"}
    assert "is not the pinned ARK-Milan" in check(verdict, "ark_pinned")
    # An ASK named SEV-Milan that AMD's ARK did not sign.
    fake_ask = certificate(ask.subject, ask.issuer, rsa_key(2), rsa_key(2), 5)
    verdict = verify_snp(raw, vcek, ask=fake_ask, now=MILAN_NOW)
    assert failed(verdict) == {"ask_signed_by_ark", "vcek_signed_by_ask"}
    # Our own roots for Milan: AMD's VCEK is not signed by them.
    verdict = verify_snp(raw, vcek, now=MILAN_NOW, roots=fake.roots)
    assert "vcek_signed_by_ask" in failed(verdict)
    # An unknown product name.
    verdict = verify_snp(raw, vcek, product="Naples", now=MILAN_NOW)
    assert "unknown SEV-SNP product 'Naples'" in check(verdict, "product")
    assert "not checked" in check(verdict, "ark_pinned")


@pytest.mark.parametrize(
    ("now", "message"),
    [
        (utc(2023, 4, 3), "the VCEK is not valid before 2023-04-03T19:23:43Z"),
        (utc(2030, 4, 4), "the VCEK expired at 2030-04-03T19:23:43Z"),
        (utc(2046), "the ARK expired at 2045-10-22T17:23:05Z"),
        (utc(2019), "the ARK is not valid before 2020-10-22T17:23:05Z"),
    ],
)
def test_dates_outside_validity_fail(
    milan_virtee: MilanVirtee, now: datetime.datetime, message: str
) -> None:
    raw, vcek, _, _ = milan_virtee
    verdict = verify_snp(raw, vcek, now=now)
    assert failed(verdict) == {"certificates_valid"}
    assert message in check(verdict, "certificates_valid")


def test_now_must_be_aware(milan_virtee: MilanVirtee) -> None:
    raw, vcek, _, _ = milan_virtee
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_snp(raw, vcek, now=datetime.datetime(2025, 1, 1))


def test_verifier_caches_the_chain(
    milan_virtee: MilanVirtee, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wasmkeep.attestation import snp

    raw, vcek, ask, ark = milan_virtee
    calls: list[int] = []
    build = snp._build_chain

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return build(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(snp, "_build_chain", counting)
    verifier = SnpVerifier(cache_size=2)
    first = verifier.verify(raw, vcek, ask=ask, ark=ark, now=MILAN_NOW)
    second = verifier.verify(raw, vcek, ask=ask, ark=ark, now=MILAN_NOW)
    assert first == second == verify_snp(raw, vcek, ask=ask, ark=ark, now=MILAN_NOW)
    assert len(calls) == 2  # one for the verifier, one for verify_snp
    # Time is checked again on every call, with the chain from the cache.
    assert failed(verifier.verify(raw, vcek, ask=ask, ark=ark, now=utc(2031))) == {
        "certificates_valid"
    }
    assert len(calls) == 2
    # Other certificates are another entry.
    verifier.verify(raw, vcek, now=MILAN_NOW)
    assert len(calls) == 3


# -- the builtin roots -------------------------------------------------------------


def test_builtin_roots_are_pinned_and_complete() -> None:
    roots = AmdRoots.builtin()
    assert set(roots.products) == set(SnpProduct)
    for product, pinned in roots.products.items():
        assert fingerprint(pinned.ark) == PINNED_ARK_SHA256[product]
        assert pinned.ask.subject.rfc4514_string().startswith(f"CN=SEV-{product},")
        assert pinned.asvk is not None
        assert pinned.asvk.subject.rfc4514_string().startswith(f"CN=SEV-VLEK-{product},")
        # The same certificates as the vectors' copies.
        ask, ark, asvk = pem_chain(SNP / "roots" / f"{product.value.lower()}_ask_ark_asvk.pem")
        assert (pinned.ask, pinned.ark, pinned.asvk) == (ask, ark, asvk)
    with pytest.raises(ValueError, match="not the pinned"):
        ProductRoots(
            product=SnpProduct.MILAN,
            ark=roots.products[SnpProduct.GENOA].ark,
            ask=roots.products[SnpProduct.GENOA].ask,
            asvk=None,
            ark_sha256=PINNED_ARK_SHA256[SnpProduct.MILAN],
        )


def test_amd_serial_zero_is_read_without_warnings(
    milan_virtee: MilanVirtee,
) -> None:
    _, vcek, _, _ = milan_virtee
    assert serial_number(vcek) == 0  # pytest turns warnings into errors


# -- the carriers: configfs-tsm and Enarx ------------------------------------------


def cert_table(entries: list[tuple[uuid.UUID, bytes]], *, terminate: bool = True) -> bytes:
    header = bytearray()
    body = bytearray()
    start = 24 * (len(entries) + 1)
    for guid, blob in entries:
        header += struct.pack("<16sII", guid.bytes, start + len(body), len(blob))
        body += blob
    if terminate:
        header += bytes(24)
    return bytes(header + body)


def test_certificate_table_variants(milan_virtee: MilanVirtee) -> None:
    raw, vcek, _, _ = milan_virtee
    vcek_der = vcek.public_bytes(serialization.Encoding.DER)
    unknown = uuid.UUID("00000000-1111-2222-3333-444444444444")
    evidence = parse_tsm_capture(
        raw, cert_table([(unknown, b"whatever"), (snp_capture.GUID_VCEK, vcek_der)])
    )
    assert evidence.vcek == vcek and evidence.ask is None and not evidence.vlek
    vlek = parse_tsm_capture(raw, cert_table([(snp_capture.GUID_VLEK, vcek_der)]))
    assert vlek.vlek and vlek.vcek == vcek


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (bytes(23), "entry 0 at offset 0 is truncated"),
        (cert_table([(snp_capture.GUID_VCEK, b"x")], terminate=False)[:24], "entry 1 at offset 24"),
        (
            struct.pack("<16sII", snp_capture.GUID_VCEK.bytes, 48, 5000) + bytes(24),
            "are not within",
        ),
        (struct.pack("<16sII", snp_capture.GUID_VCEK.bytes, 0, 10) + bytes(24), "are not within"),
        (struct.pack("<16sII", snp_capture.GUID_VCEK.bytes, 48, 0) + bytes(24), "length 0"),
        (
            cert_table([(snp_capture.GUID_ASK, b"a"), (snp_capture.GUID_ASK, b"b")]),
            "listed twice",
        ),
        (cert_table([(snp_capture.GUID_VCEK, b"not a certificate")]), "not an X.509 certificate"),
        (bytes(snp_capture.MAX_AUXBLOB_SIZE + 1), "over the limit"),
        (
            cert_table(
                [
                    (uuid.UUID(int=i + 1), b"x")
                    for i in range(snp_capture.MAX_CERT_TABLE_ENTRIES + 1)
                ]
            ),
            "more than 16 entries",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_bad_certificate_tables_are_refused(table: bytes, message: str) -> None:
    with pytest.raises(EvidenceFormatError, match=message):
        parse_tsm_capture(make_report(), table)


def tsm_json(**document: object) -> bytes:
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[]", "not an object"),
        (b"{", "not JSON"),
        (b"\xff", "not JSON"),
        (b"[" * 100000 + b"]" * 100000, "not JSON|over the limit"),
        (tsm_json(outblob="AA"), "no 'provider'"),
        (tsm_json(provider="sev_guest"), "no 'outblob'"),
        (tsm_json(provider="tdx_guest", outblob="AA"), "is not 'sev_guest'"),
        (tsm_json(provider="sev_guest", outblob=5), "must be a base64 string"),
        (tsm_json(provider="sev_guest", outblob="A*=="), "is not base64"),
        (tsm_json(provider="sev_guest", outblob="ab-/"), "mixes base64 alphabets"),
        (tsm_json(provider="sev_guest", outblob="é"), "non-ASCII"),
        (tsm_json(provider="sev_guest", outblob="AAAA"), "3 bytes"),
        (b'{"provider": "sev_guest", "provider": "x", "outblob": ""}', "appears twice"),
        (b" " * (snp_capture.MAX_TSM_JSON_SIZE + 1), "over the limit"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_bad_tsm_json_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(EvidenceFormatError, match=message):
        parse_tsm_json(data)


def test_tsm_json_accepts_both_base64_alphabets() -> None:
    report = make_report()
    for encoded in (
        base64.b64encode(report).decode(),
        base64.urlsafe_b64encode(report).decode().rstrip("="),
    ):
        evidence = parse_tsm_json(tsm_json(provider="sev_guest\n", outblob=encoded, inblob="AA"))
        assert evidence.report.raw == report and evidence.vcek is None


def test_bad_enarx_extensions_are_refused() -> None:
    value = enarx_extension(enarx_csr())
    top = der.parse_der(value)
    crts, report = top.children()
    with pytest.raises(EvidenceFormatError, match="bytes after the value"):
        parse_enarx_snp_extension(value + b"\x00")
    with pytest.raises(EvidenceFormatError, match="runs past the end"):
        parse_enarx_snp_extension(value[:-1])
    swapped = bytes([0x30]) + top.encoded[1:4] + report.encoded + crts.encoded
    with pytest.raises(EvidenceFormatError, match=r"Evidence.crts at offset 4: expected SEQUENCE"):
        parse_enarx_snp_extension(swapped)
    short_report = der_encode(0x30, crts.encoded + der_encode(0x04, report.value[:-1]))
    with pytest.raises(EvidenceFormatError, match="1183 bytes"):
        parse_enarx_snp_extension(short_report)
    with pytest.raises(EvidenceFormatError, match="Evidence at offset 0: expected 2 fields"):
        parse_enarx_snp_extension(der_encode(0x30, crts.encoded))
    with pytest.raises(EvidenceFormatError, match="over the limit"):
        parse_enarx_snp_extension(bytes(snp_capture.MAX_ENARX_EXTENSION_SIZE + 1))


def der_encode(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + content


def test_certificates_load_from_der_or_pem(milan_virtee: MilanVirtee) -> None:
    _, vcek, _, _ = milan_virtee
    pem = vcek.public_bytes(serialization.Encoding.PEM)
    assert load_amd_certificate(pem) == vcek
    _, _, crls = parse_enarx_snp_extension(enarx_extension(enarx_csr()))
    crl_pem = crls[1].public_bytes(serialization.Encoding.PEM)
    assert load_amd_crl(crl_pem) == crls[1]
    assert load_amd_crl(crls[1].public_bytes(serialization.Encoding.DER)) == crls[1]


def test_load_helpers_refuse_garbage() -> None:
    with pytest.raises(EvidenceFormatError, match=r"not an X\.509 certificate"):
        load_amd_certificate(b"\x30\x03\x02\x01\x00")
    with pytest.raises(EvidenceFormatError, match="2 PEM certificates"):
        load_amd_certificate((SNP / "milan-virtee" / "ask_ark.pem").read_bytes())
    with pytest.raises(EvidenceFormatError, match="over the limit"):
        load_amd_certificate(bytes(20000))
    with pytest.raises(EvidenceFormatError, match="not a valid CRL"):
        load_amd_crl(b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")


# -- property tests: every parser raises only EvidenceFormatError ----------------------


def only_format_errors(parse: Callable[[], object]) -> None:
    with contextlib.suppress(EvidenceFormatError):
        parse()


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=2 * REPORT_SIZE), st.binary(min_size=REPORT_SIZE, max_size=REPORT_SIZE)
    )
)
def test_parse_snp_report_fuzz(data: bytes) -> None:
    only_format_errors(lambda: parse_snp_report(data))


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, REPORT_SIZE - 1),
    st.integers(0, 255),
    st.sampled_from([2, 3, 4, 5]),
)
def test_parse_snp_report_mutations(position: int, value: int, version: int) -> None:
    raw = bytearray(make_report(version=version, cpuid=(0x19, 1, 1) if version > 2 else None))
    raw[position] = value
    only_format_errors(lambda: parse_snp_report(bytes(raw)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096), st.data())
def test_parse_tsm_capture_fuzz(aux: bytes, data: st.DataObject) -> None:
    outblob = data.draw(st.sampled_from([make_report(), b"", bytes(REPORT_SIZE)]))
    only_format_errors(lambda: parse_tsm_capture(outblob, aux))
    # A well-formed table pointing at arbitrary bytes.
    guid = data.draw(
        st.sampled_from([snp_capture.GUID_VCEK, snp_capture.GUID_ASK, snp_capture.GUID_ARK])
    )
    only_format_errors(lambda: parse_tsm_capture(make_report(), cert_table([(guid, aux)])))


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=2048),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=50),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=10), inner, max_size=4)
            ),
            max_leaves=10,
        ).map(lambda doc: json.dumps(doc).encode()),
        st.fixed_dictionaries(
            {
                "provider": st.sampled_from(["sev_guest", "sev_guest\n", 1]),
                "outblob": st.text(max_size=40),
            },
            optional={"auxblob": st.text(max_size=40)},
        ).map(lambda doc: json.dumps(doc).encode()),
    )
)
def test_parse_tsm_json_fuzz(data: bytes) -> None:
    only_format_errors(lambda: parse_tsm_json(data))


_ENARX_VALUE: list[bytes] = []


def _enarx_value() -> bytes:
    if not _ENARX_VALUE:
        _ENARX_VALUE.append(enarx_extension(enarx_csr()))
    return _ENARX_VALUE[0]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_parse_enarx_extension_fuzz(data: bytes) -> None:
    only_format_errors(lambda: parse_enarx_snp_extension(data))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_parse_enarx_extension_mutations(data: st.DataObject) -> None:
    value = bytearray(_enarx_value())
    # Mutate the DER structure, not the opaque insides of certificates: headers live in the
    # first bytes of each element, so aim at offsets near the structure's TLV headers.
    position = data.draw(
        st.sampled_from(
            [
                0,
                1,
                2,
                3,
                4,
                5,
                6,
                7,
                8,
                9,
                1368,
                1369,
                1372,
                1376,
                1380,
                2313,
                3226,
                3227,
                3228,
                3229,
            ]
        )
        | st.integers(0, len(value) - 1)
    )
    value[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(value)))
    only_format_errors(lambda: parse_enarx_snp_extension(bytes(value[:cut])))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, REPORT_SIZE - 1), st.integers(0, 255)), min_size=1, max_size=4
    )
)
def test_verify_mutated_reports_never_crashes(changes: list[tuple[int, int]]) -> None:
    raw = bytearray((SNP / "milan-virtee" / "report.bin").read_bytes())
    original = bytes(raw)
    for position, value in changes:
        raw[position] = value
    try:
        verdict = _VERIFIER.verify(bytes(raw), milan_vcek(), now=MILAN_NOW)
    except EvidenceFormatError:
        return
    # Only a change that left the report as it was is accepted.
    assert verdict.accepted == (bytes(raw) == original)
    assert tuple(c.name for c in verdict.checks) == CHECK_NAMES
