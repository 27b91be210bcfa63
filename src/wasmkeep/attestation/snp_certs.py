"""AMD's SEV-SNP certificates: the pinned roots, and loading the certificates
and CRLs that come with evidence.

The chain is ARK (AMD Root Key, self-signed) -> ASK (AMD SEV Key) -> VCEK
(Versioned Chip Endorsement Key), or ARK -> ASVK (AMD SEV VLEK Key) -> VLEK
(Versioned Loaded Endorsement Key); every link is RSASSA-PSS with SHA-384,
MGF1-SHA-384 and a 48-byte salt (VCEK specification, AMD publication 57230,
"Certificate Chain"; VLEK specification, AMD publication 58369). The ARK, ASK and ASVK
of each product ship in this package (``data/amd/``, as AMD's KDS serves them
at ``/vcek/v1/{product}/cert_chain``) and are pinned by the SHA-256 of the
ARK below: a changed file does not load.

AMD's VCEKs have the serial number 0, which RFC 5280 forbids and pyca warns
about on loading; the loaders here silence exactly that warning, and only
around AMD certificates.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from wasmkeep.attestation.errors import EvidenceFormatError
from wasmkeep.attestation.snp_report import SnpProduct
from wasmkeep.attestation.x509_checked import X509_PARSE_ERRORS, checked_certificate, load_crl

__all__ = [
    "MAX_CERTIFICATE_SIZE",
    "MAX_CRL_SIZE",
    "PINNED_ARK_SHA256",
    "AmdRoots",
    "ProductRoots",
    "load_amd_certificate",
    "load_amd_crl",
    "serial_number",
]

#: Largest certificate accepted, in bytes (AMD's are about 1.4 KiB DER, 2.3 KiB PEM).
MAX_CERTIFICATE_SIZE = 16 * 1024
#: Largest CRL accepted, in bytes (AMD's ARK CRLs are about 1 KiB).
MAX_CRL_SIZE = 256 * 1024

#: SHA-256 of the DER of each product's ARK, as AMD's KDS serves it.
PINNED_ARK_SHA256: Mapping[SnpProduct, bytes] = MappingProxyType(
    {
        SnpProduct.MILAN: bytes.fromhex(
            "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd"
        ),
        SnpProduct.GENOA: bytes.fromhex(
            "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1"
        ),
        SnpProduct.TURIN: bytes.fromhex(
            "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a"
        ),
    }
)

_SERIAL_WARNING = "Parsed a serial number which wasn't positive"


@contextmanager
def _amd_serial_numbers() -> Iterator[None]:
    # AMD issues every VCEK with serial number 0 (RFC 5280 wants positive
    # serials); pyca warns on parsing and on reading it. Ignore exactly that.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=_SERIAL_WARNING, category=CryptographyDeprecationWarning
        )
        yield


def serial_number(certificate: x509.Certificate) -> int:
    """The serial number of an AMD certificate (0 for every VCEK), without pyca's warning."""
    with _amd_serial_numbers():
        return certificate.serial_number


def _is_pem(data: bytes) -> bool:
    return data.lstrip().startswith(b"-----BEGIN")


def load_amd_certificate(data: bytes, what: str = "certificate") -> x509.Certificate:
    """One certificate, DER or PEM (exactly one PEM block). EvidenceFormatError if it is not."""
    if len(data) > MAX_CERTIFICATE_SIZE:
        raise EvidenceFormatError(
            f"{what}: {len(data)} bytes is over the limit of {MAX_CERTIFICATE_SIZE}"
        )
    try:
        with _amd_serial_numbers():
            if _is_pem(data):
                found = x509.load_pem_x509_certificates(bytes(data))
                if len(found) != 1:
                    raise EvidenceFormatError(f"{what}: {len(found)} PEM certificates, expected 1")
                certificate = found[0]
            else:
                certificate = x509.load_der_x509_certificate(bytes(data))
            return checked_certificate(certificate, what)
    except X509_PARSE_ERRORS as error:
        raise EvidenceFormatError(f"{what}: not an X.509 certificate ({error})") from None


def load_amd_crl(data: bytes, what: str = "CRL") -> x509.CertificateRevocationList:
    """One CRL, DER or PEM. EvidenceFormatError if it is not one."""
    if len(data) > MAX_CRL_SIZE:
        raise EvidenceFormatError(f"{what}: {len(data)} bytes is over the limit of {MAX_CRL_SIZE}")
    return load_crl(bytes(data), what, pem=_is_pem(data))


def fingerprint(certificate: x509.Certificate) -> bytes:
    """SHA-256 of the certificate's DER."""
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest()


def common_name(name: x509.Name) -> str:
    """The (first) common name of a distinguished name, or ""."""
    for attribute in name.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
        value = attribute.value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return ""


@dataclass(frozen=True, slots=True)
class ProductRoots:
    """The trust anchor of one product: its ARK, pinned by `ark_sha256`, and
    the ASK and ASVK the ARK signed (used when evidence brings none)."""

    product: SnpProduct
    ark: x509.Certificate
    ask: x509.Certificate
    asvk: x509.Certificate | None
    ark_sha256: bytes

    def __post_init__(self) -> None:
        if fingerprint(self.ark) != self.ark_sha256:
            raise ValueError(
                f"the {self.product} ARK's SHA-256 is {fingerprint(self.ark).hex()}, "
                f"not the pinned {self.ark_sha256.hex()}"
            )
        if self.ark.subject != self.ark.issuer:
            raise ValueError(f"the {self.product} ARK is not self-issued")
        for name, intermediate in (("ASK", self.ask), ("ASVK", self.asvk)):
            if intermediate is not None and intermediate.issuer != self.ark.subject:
                raise ValueError(f"the {self.product} {name} is not issued by its ARK")


def _load_builtin(product: SnpProduct) -> ProductRoots:
    name = f"{product.value.lower()}_ask_ark_asvk.pem"
    data = resources.files("wasmkeep.attestation").joinpath("data", "amd", name).read_bytes()
    by_name = {common_name(c.subject): c for c in x509.load_pem_x509_certificates(data)}
    return ProductRoots(
        product=product,
        ark=by_name[f"ARK-{product.value}"],
        ask=by_name[f"SEV-{product.value}"],
        asvk=by_name.get(f"SEV-VLEK-{product.value}"),
        ark_sha256=PINNED_ARK_SHA256[product],
    )


@dataclass(frozen=True, slots=True)
class AmdRoots:
    """The trust anchors verification starts from, one per product.

    :meth:`builtin` gives AMD's, pinned; tests and private deployments can
    build their own from :class:`ProductRoots`.
    """

    products: Mapping[SnpProduct, ProductRoots]

    def __post_init__(self) -> None:
        for product, roots in self.products.items():
            if roots.product is not product:
                raise ValueError(f"roots of {roots.product} filed under {product}")
        object.__setattr__(self, "products", MappingProxyType(dict(self.products)))

    @classmethod
    def of(cls, *roots: ProductRoots) -> AmdRoots:
        return cls({r.product: r for r in roots})

    @classmethod
    def builtin(cls) -> AmdRoots:
        """AMD's ARK, ASK and ASVK of Milan, Genoa and Turin, from this package, pinned."""
        return _builtin_roots()

    def get(self, product: SnpProduct) -> ProductRoots | None:
        return self.products.get(product)


@functools.cache
def _builtin_roots() -> AmdRoots:
    return AmdRoots.of(*(_load_builtin(product) for product in SnpProduct))
