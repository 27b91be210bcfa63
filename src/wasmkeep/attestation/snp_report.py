"""The SEV-SNP attestation report, parsed.

Layout: SEV Secure Nested Paging Firmware ABI Specification (AMD publication
56860), section 7.3, Table "ATTESTATION_REPORT Structure", versions 2 to 5;
TCB_VERSION from section 2.2, Table "TCB_VERSION Structure" (the Turin layout,
with the FMC SVN first, from the same table's Turin rows); guest policy from
section 4.3, Table "Guest Policy Structure"; PLATFORM_INFO from the report
table's notes. All fields are little-endian.

:func:`parse_snp_report` is the one entry point for report bytes: it checks
the size, the version and every reserved field that must be zero, and raises
:class:`~wasmkeep.attestation.errors.EvidenceFormatError` naming the field and
its offset. The signature is not checked here (see :mod:`.snp`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from wasmkeep.attestation.errors import EvidenceFormatError

__all__ = [
    "REPORT_SIZE",
    "SIGNED_SIZE",
    "GuestPolicy",
    "PlatformInfo",
    "SigningKey",
    "SnpProduct",
    "SnpReport",
    "TcbVersion",
    "parse_snp_report",
    "product_from_cpuid",
]

#: Size of an ATTESTATION_REPORT, in bytes (every version).
REPORT_SIZE = 0x4A0
#: The signature covers bytes [0, SIGNED_SIZE) of the report.
SIGNED_SIZE = 0x2A0
#: Report versions this parser knows (v3 adds CPUID, v5 the mitigation vectors;
#: v4 has the v3 layout).
KNOWN_VERSIONS = (2, 3, 4, 5)
#: SIGNATURE_ALGO value of ECDSA P-384 with SHA-384 (ABI spec, Table
#: "Signature Algorithm Encodings").
ECDSA_P384_SHA384 = 1


class SnpProduct(enum.StrEnum):
    """An EPYC generation with SEV-SNP, named as AMD's KDS names it."""

    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"

    @classmethod
    def parse(cls, name: str) -> SnpProduct:
        """The product named `name` (case-insensitive); ValueError for another name."""
        for product in cls:
            if name.casefold() == product.value.casefold():
                return product
        known = ", ".join(product.value for product in cls)
        raise ValueError(f"unknown SEV-SNP product {name!r} (known: {known})")

    @property
    def turin_tcb_layout(self) -> bool:
        """Whether this product's TCB_VERSION has the FMC SVN first (Turin and later)."""
        return self is SnpProduct.TURIN


def product_from_cpuid(family: int, model: int) -> SnpProduct | None:
    """The product of a CPUID family and model (extended family and model
    combined, as the report's CPUID_FAM_ID and CPUID_MOD_ID hold them), or None."""
    if family == 0x19:
        if model <= 0x0F:
            return SnpProduct.MILAN
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return SnpProduct.GENOA  # Genoa, Bergamo and Siena share the Genoa ARK
    if family == 0x1A and model <= 0x11:
        return SnpProduct.TURIN
    return None


class SigningKey(enum.IntEnum):
    """SIGNING_KEY (report offset 0x48, bits 4:2): which key signed the report."""

    VCEK = 0
    VLEK = 1
    NONE = 7


@dataclass(frozen=True, slots=True)
class TcbVersion:
    """A TCB_VERSION: the security version numbers of the platform's firmware.

    Before Turin: byte 0 BOOT_LOADER, 1 TEE, 2-5 reserved, 6 SNP, 7 MICROCODE.
    Turin: byte 0 FMC, 1 BOOT_LOADER, 2 TEE, 3 SNP, 4-6 reserved, 7 MICROCODE.
    """

    raw: int
    turin_layout: bool

    def __post_init__(self) -> None:
        if not 0 <= self.raw < 1 << 64:
            raise ValueError("a TCB_VERSION is 64 bits")

    @property
    def _bytes(self) -> bytes:
        return self.raw.to_bytes(8, "little")

    @property
    def fmc(self) -> int | None:
        return self._bytes[0] if self.turin_layout else None

    @property
    def bootloader(self) -> int:
        return self._bytes[1] if self.turin_layout else self._bytes[0]

    @property
    def tee(self) -> int:
        return self._bytes[2] if self.turin_layout else self._bytes[1]

    @property
    def snp(self) -> int:
        return self._bytes[3] if self.turin_layout else self._bytes[6]

    @property
    def microcode(self) -> int:
        return self._bytes[7]

    def as_dict(self) -> Mapping[str, object]:
        decoded: dict[str, object] = {"raw": f"0x{self.raw:016x}"}
        if self.turin_layout:
            decoded["fmc"] = self.fmc
        decoded |= {
            "bootloader": self.bootloader,
            "tee": self.tee,
            "snp": self.snp,
            "microcode": self.microcode,
        }
        return MappingProxyType(decoded)

    def __str__(self) -> str:
        fmc = f"fmc {self.fmc} " if self.turin_layout else ""
        return f"{fmc}bl {self.bootloader} tee {self.tee} snp {self.snp} ucode {self.microcode}"


def _bit(value: int, number: int) -> bool:
    return bool(value >> number & 1)


@dataclass(frozen=True, slots=True)
class GuestPolicy:
    """The guest policy the owner fixed at launch (ABI spec, section 4.3)."""

    raw: int

    def __post_init__(self) -> None:
        if not 0 <= self.raw < 1 << 64:
            raise ValueError("a guest policy is 64 bits")

    @property
    def abi_minor(self) -> int:
        return self.raw & 0xFF

    @property
    def abi_major(self) -> int:
        return self.raw >> 8 & 0xFF

    @property
    def smt_allowed(self) -> bool:
        return _bit(self.raw, 16)

    @property
    def reserved_bit_17(self) -> bool:
        """Bit 17 is reserved and must be one (the firmware refuses a launch without it)."""
        return _bit(self.raw, 17)

    @property
    def migrate_ma_allowed(self) -> bool:
        return _bit(self.raw, 18)

    @property
    def debug_allowed(self) -> bool:
        return _bit(self.raw, 19)

    @property
    def single_socket_required(self) -> bool:
        return _bit(self.raw, 20)

    @property
    def cxl_allowed(self) -> bool:
        return _bit(self.raw, 21)

    @property
    def mem_aes_256_xts_required(self) -> bool:
        return _bit(self.raw, 22)

    @property
    def rapl_disabled(self) -> bool:
        return _bit(self.raw, 23)

    @property
    def ciphertext_hiding_required(self) -> bool:
        return _bit(self.raw, 24)

    @property
    def page_swap_disabled(self) -> bool:
        return _bit(self.raw, 25)

    def as_dict(self) -> Mapping[str, object]:
        return MappingProxyType(
            {
                "raw": f"0x{self.raw:x}",
                "abi_major": self.abi_major,
                "abi_minor": self.abi_minor,
                "smt_allowed": self.smt_allowed,
                "reserved_bit_17": self.reserved_bit_17,
                "migrate_ma_allowed": self.migrate_ma_allowed,
                "debug_allowed": self.debug_allowed,
                "single_socket_required": self.single_socket_required,
                "cxl_allowed": self.cxl_allowed,
                "mem_aes_256_xts_required": self.mem_aes_256_xts_required,
                "rapl_disabled": self.rapl_disabled,
                "ciphertext_hiding_required": self.ciphertext_hiding_required,
                "page_swap_disabled": self.page_swap_disabled,
            }
        )


@dataclass(frozen=True, slots=True)
class PlatformInfo:
    """PLATFORM_INFO: what the platform had enabled when the report was made."""

    raw: int

    def __post_init__(self) -> None:
        if not 0 <= self.raw < 1 << 64:
            raise ValueError("PLATFORM_INFO is 64 bits")

    def as_dict(self) -> Mapping[str, object]:
        return MappingProxyType(
            {
                "raw": f"0x{self.raw:x}",
                "smt_enabled": _bit(self.raw, 0),
                "tsme_enabled": _bit(self.raw, 1),
                "ecc_enabled": _bit(self.raw, 2),
                "rapl_disabled": _bit(self.raw, 3),
                "ciphertext_hiding_enabled": _bit(self.raw, 4),
                "alias_check_complete": _bit(self.raw, 5),
                "tio_enabled": _bit(self.raw, 7),
            }
        )


def _u8(raw: bytes, offset: int) -> int:
    return raw[offset]


def _u32(raw: bytes, offset: int) -> int:
    return int.from_bytes(raw[offset : offset + 4], "little")


def _u64(raw: bytes, offset: int) -> int:
    return int.from_bytes(raw[offset : offset + 8], "little")


def _must_be_zero(raw: bytes, start: int, end: int, name: str) -> None:
    chunk = raw[start:end]
    if any(chunk):
        first = start + next(i for i, byte in enumerate(chunk) if byte)
        raise EvidenceFormatError(
            f"SNP report: reserved field {name} at offset 0x{start:x} "
            f"({end - start} bytes) must be zero; byte 0x{first:x} is 0x{raw[first]:02x}"
        )


@dataclass(frozen=True, slots=True)
class SnpReport:
    """An ATTESTATION_REPORT, decoded from its bytes when built.

    Build it with :func:`parse_snp_report`. `stated_product` is the caller's
    word for the product, used to decode the TCB fields of a report without
    CPUID fields (v2); the CPUID fields of a v3+ report take precedence.
    """

    raw: bytes = field(repr=False)
    stated_product: SnpProduct | None = None

    version: int = field(init=False)
    guest_svn: int = field(init=False)
    policy: GuestPolicy = field(init=False)
    family_id: bytes = field(init=False)
    image_id: bytes = field(init=False)
    vmpl: int = field(init=False)
    signature_algo: int = field(init=False)
    current_tcb: TcbVersion = field(init=False)
    platform_info: PlatformInfo = field(init=False)
    author_key_en: bool = field(init=False)
    mask_chip_key: bool = field(init=False)
    signing_key: int = field(init=False)
    report_data: bytes = field(init=False)
    measurement: bytes = field(init=False)
    host_data: bytes = field(init=False)
    id_key_digest: bytes = field(init=False)
    author_key_digest: bytes = field(init=False)
    report_id: bytes = field(init=False)
    report_id_ma: bytes = field(init=False)
    reported_tcb: TcbVersion = field(init=False)
    cpuid_fam_id: int | None = field(init=False)
    cpuid_mod_id: int | None = field(init=False)
    cpuid_step: int | None = field(init=False)
    chip_id: bytes = field(init=False)
    committed_tcb: TcbVersion = field(init=False)
    current_build: int = field(init=False)
    current_minor: int = field(init=False)
    current_major: int = field(init=False)
    committed_build: int = field(init=False)
    committed_minor: int = field(init=False)
    committed_major: int = field(init=False)
    launch_tcb: TcbVersion = field(init=False)
    launch_mit_vector: int | None = field(init=False)
    current_mit_vector: int | None = field(init=False)
    signature_r: bytes = field(init=False, repr=False)
    signature_s: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        raw = bytes(self.raw)
        if len(raw) != REPORT_SIZE:
            raise EvidenceFormatError(
                f"SNP report: {len(raw)} bytes, an ATTESTATION_REPORT is {REPORT_SIZE} (0x4a0)"
            )
        version = _u32(raw, 0x00)
        if version not in KNOWN_VERSIONS:
            raise EvidenceFormatError(
                f"SNP report: VERSION at offset 0x0 is {version}, known versions are 2 to 5"
            )
        key_info = _u32(raw, 0x48)
        if key_info >> 5:
            raise EvidenceFormatError(
                "SNP report: reserved bits 31:5 of the field at offset 0x48 "
                f"(AUTHOR_KEY_EN, MASK_CHIP_KEY, SIGNING_KEY) must be zero; it is 0x{key_info:08x}"
            )
        _must_be_zero(raw, 0x4C, 0x50, "RESERVED after SIGNING_KEY")
        if version >= 3:
            _must_be_zero(raw, 0x18B, 0x1A0, "RESERVED after CPUID_STEP")
        else:
            _must_be_zero(raw, 0x188, 0x1A0, "RESERVED after REPORTED_TCB")
        _must_be_zero(raw, 0x1EB, 0x1EC, "RESERVED after CURRENT_MAJOR")
        _must_be_zero(raw, 0x1EF, 0x1F0, "RESERVED after COMMITTED_MAJOR")
        if version >= 5:
            _must_be_zero(raw, 0x208, SIGNED_SIZE, "RESERVED after CURRENT_MIT_VECTOR")
        else:
            _must_be_zero(raw, 0x1F8, SIGNED_SIZE, "RESERVED after LAUNCH_TCB")
        _must_be_zero(raw, 0x330, REPORT_SIZE, "SIGNATURE reserved part")

        cpuid: tuple[int, int, int] | None = None
        if version >= 3:
            cpuid = (_u8(raw, 0x188), _u8(raw, 0x189), _u8(raw, 0x18A))
        product = product_from_cpuid(cpuid[0], cpuid[1]) if cpuid else None
        turin = (product or self.stated_product) is SnpProduct.TURIN

        def tcb(offset: int) -> TcbVersion:
            return TcbVersion(_u64(raw, offset), turin_layout=turin)

        values: dict[str, object] = {
            "raw": raw,
            "version": version,
            "guest_svn": _u32(raw, 0x04),
            "policy": GuestPolicy(_u64(raw, 0x08)),
            "family_id": raw[0x10:0x20],
            "image_id": raw[0x20:0x30],
            "vmpl": _u32(raw, 0x30),
            "signature_algo": _u32(raw, 0x34),
            "current_tcb": tcb(0x38),
            "platform_info": PlatformInfo(_u64(raw, 0x40)),
            "author_key_en": _bit(key_info, 0),
            "mask_chip_key": _bit(key_info, 1),
            "signing_key": key_info >> 2 & 0b111,
            "report_data": raw[0x50:0x90],
            "measurement": raw[0x90:0xC0],
            "host_data": raw[0xC0:0xE0],
            "id_key_digest": raw[0xE0:0x110],
            "author_key_digest": raw[0x110:0x140],
            "report_id": raw[0x140:0x160],
            "report_id_ma": raw[0x160:0x180],
            "reported_tcb": tcb(0x180),
            "cpuid_fam_id": cpuid[0] if cpuid else None,
            "cpuid_mod_id": cpuid[1] if cpuid else None,
            "cpuid_step": cpuid[2] if cpuid else None,
            "chip_id": raw[0x1A0:0x1E0],
            "committed_tcb": tcb(0x1E0),
            "current_build": _u8(raw, 0x1E8),
            "current_minor": _u8(raw, 0x1E9),
            "current_major": _u8(raw, 0x1EA),
            "committed_build": _u8(raw, 0x1EC),
            "committed_minor": _u8(raw, 0x1ED),
            "committed_major": _u8(raw, 0x1EE),
            "launch_tcb": tcb(0x1F0),
            "launch_mit_vector": _u64(raw, 0x1F8) if version >= 5 else None,
            "current_mit_vector": _u64(raw, 0x200) if version >= 5 else None,
            "signature_r": raw[0x2A0:0x2E8],
            "signature_s": raw[0x2E8:0x330],
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def signed_bytes(self) -> bytes:
        """The bytes the signature covers: [0, 0x2A0)."""
        return self.raw[:SIGNED_SIZE]

    @property
    def cpuid_product(self) -> SnpProduct | None:
        """The product the report's own (signed) CPUID fields name, for v3+ reports."""
        if self.cpuid_fam_id is None or self.cpuid_mod_id is None:
            return None
        return product_from_cpuid(self.cpuid_fam_id, self.cpuid_mod_id)

    @property
    def product(self) -> SnpProduct | None:
        """The product whose TCB layout decoded this report: its CPUID's, else the stated one."""
        return self.cpuid_product or self.stated_product

    @property
    def signing_key_name(self) -> str:
        try:
            return SigningKey(self.signing_key).name.lower()
        except ValueError:
            return f"reserved ({self.signing_key})"

    @property
    def chip_id_masked(self) -> bool:
        """CHIP_ID is all zeros when the host set MASK_CHIP_ID (SNP_CONFIG)."""
        return not any(self.chip_id)

    def fields(self) -> Mapping[str, object]:
        """Every field by the name the ABI spec gives it (lower case); bytes as
        hex, TCBs, policy and platform info decoded."""
        return MappingProxyType(
            {
                "version": self.version,
                "guest_svn": self.guest_svn,
                "policy": self.policy.as_dict(),
                "family_id": self.family_id.hex(),
                "image_id": self.image_id.hex(),
                "vmpl": self.vmpl,
                "signature_algo": self.signature_algo,
                "current_tcb": self.current_tcb.as_dict(),
                "platform_info": self.platform_info.as_dict(),
                "author_key_en": self.author_key_en,
                "mask_chip_key": self.mask_chip_key,
                "signing_key": self.signing_key_name,
                "report_data": self.report_data.hex(),
                "measurement": self.measurement.hex(),
                "host_data": self.host_data.hex(),
                "id_key_digest": self.id_key_digest.hex(),
                "author_key_digest": self.author_key_digest.hex(),
                "report_id": self.report_id.hex(),
                "report_id_ma": self.report_id_ma.hex(),
                "reported_tcb": self.reported_tcb.as_dict(),
                "cpuid_fam_id": self.cpuid_fam_id,
                "cpuid_mod_id": self.cpuid_mod_id,
                "cpuid_step": self.cpuid_step,
                "chip_id": self.chip_id.hex(),
                "committed_tcb": self.committed_tcb.as_dict(),
                "current_version": f"{self.current_major}.{self.current_minor}."
                f"{self.current_build}",
                "current_build": self.current_build,
                "current_minor": self.current_minor,
                "current_major": self.current_major,
                "committed_build": self.committed_build,
                "committed_minor": self.committed_minor,
                "committed_major": self.committed_major,
                "launch_tcb": self.launch_tcb.as_dict(),
                "launch_mit_vector": self.launch_mit_vector,
                "current_mit_vector": self.current_mit_vector,
                "product": self.product.value if self.product else None,
            }
        )


def parse_snp_report(data: bytes, *, product: str | None = None) -> SnpReport:
    """The ATTESTATION_REPORT in `data` (exactly 0x4A0 bytes).

    `product` ("Milan", "Genoa", "Turin") decodes the TCB fields of a v2
    report, which names no CPU; a v3+ report's CPUID fields decide for
    themselves. Raises EvidenceFormatError naming the field and offset.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EvidenceFormatError(f"SNP report: expected bytes, got {type(data).__name__}")
    stated = SnpProduct.parse(product) if product is not None else None
    return SnpReport(bytes(data), stated)
