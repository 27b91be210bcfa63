"""The Steward's certificate authority: its key and certificate, made, saved and loaded.

The CA is an ECDSA key (P-256 or P-384) and a self-signed certificate
(BasicConstraints CA with path length 0: it issues only end-entity
certificates; KeyUsage keyCertSign and cRLSign; a SubjectKeyIdentifier that
the certificates it issues name in their AuthorityKeyIdentifier).

On disk, in PEM: ``ca.key`` (PKCS #8; encrypted with the passphrase when one is
given) and ``ca.crt``. Every private key file is written with mode 0600 from
the moment it exists (``O_CREAT | O_EXCL`` with the mode, never a chmod after
the fact), its bytes synced, then moved into place atomically; a CA that
exists is never overwritten.

The passphrase comes from a file (``--ca-passphrase-file``) or the environment
variable :data:`PASSPHRASE_ENV`; it is never a command-line argument, which
other users can read in the process list.

The Steward's own TLS server certificate is issued by the same CA
(:func:`server_credentials`), so a client that has only ``ca.crt`` can check
both the Steward and the keeps.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import os
import secrets
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wasmkeep.attestation.x509_checked import X509_PARSE_ERRORS
from wasmkeep.printable import shown
from wasmkeep.steward.errors import CaError

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CURVES",
    "LEAF_KEY_USAGE",
    "PASSPHRASE_ENV",
    "CertificateAuthority",
    "generate_ca",
    "load_ca",
    "open_ca_directory",
    "read_passphrase",
    "save_ca",
    "server_credentials",
    "write_private_file",
    "write_public_file",
]

_LOG = logging.getLogger(__name__)

CA_KEY_FILE = "ca.key"
CA_CERT_FILE = "ca.crt"
#: The environment variable that holds the CA key's passphrase.
PASSPHRASE_ENV = "WASMKEEP_CA_PASSPHRASE"  # noqa: S105 - a variable's name, not a secret
#: The curves a CA key may use, by name.
CURVES: Mapping[str, type[ec.EllipticCurve]] = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1}
#: A CA generated here is valid this long.
CA_LIFETIME = datetime.timedelta(days=3650)
#: The Steward's own server certificate (made anew at every start) at most this long.
SERVER_LIFETIME = datetime.timedelta(days=397)
#: Largest key, certificate or passphrase file read.
_MAX_FILE = 64 * 1024
#: Certificates start a little before "now", for clients whose clock is behind.
BACKDATE = datetime.timedelta(minutes=1)
#: The key usage of every end-entity certificate the CA signs (the Steward's
#: TLS server, keeps): signatures only, never certificates or CRLs.
LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A CA key and its certificate, checked to belong together when built.

    The certificate must be a CA (BasicConstraints cA), allowed to sign
    certificates (KeyUsage keyCertSign), for this ECDSA P-256 or P-384 key.
    """

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    def __post_init__(self) -> None:
        if not isinstance(self.key, ec.EllipticCurvePrivateKey) or self.key.curve.name not in (
            "secp256r1",
            "secp384r1",
        ):
            raise CaError("the CA key must be an ECDSA P-256 or P-384 key")
        own = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        try:
            theirs = self.certificate.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            constraints = self.certificate.extensions.get_extension_for_class(
                x509.BasicConstraints
            ).value
            usage = self.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            raise CaError(
                "the CA certificate lacks BasicConstraints or KeyUsage: it is no CA"
            ) from None
        except X509_PARSE_ERRORS as error:
            raise CaError(f"the CA certificate cannot be read: {error}") from None
        if own != theirs:
            raise CaError("the CA key does not belong to the CA certificate")
        if not constraints.ca:
            raise CaError("the CA certificate is not a CA (BasicConstraints cA is false)")
        if not usage.key_cert_sign:
            raise CaError("the CA certificate may not sign certificates (KeyUsage keyCertSign)")

    @property
    def hash_algorithm(self) -> hashes.SHA256 | hashes.SHA384:
        """SHA-256 for a P-256 key, SHA-384 for P-384 (matched strengths)."""
        return hashes.SHA384() if self.key.curve.name == "secp384r1" else hashes.SHA256()

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def certificate_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def subject_key_identifier(self) -> x509.SubjectKeyIdentifier:
        try:
            return self.certificate.extensions.get_extension_for_class(
                x509.SubjectKeyIdentifier
            ).value
        except x509.ExtensionNotFound:
            return x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())

    @property
    def not_valid_after(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc

    def sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        """`builder` signed by this CA, with its issuer and AuthorityKeyIdentifier set."""
        return (
            builder.issuer_name(self.certificate.subject)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                    self.subject_key_identifier
                ),
                critical=False,
            )
            .sign(self.key, self.hash_algorithm)
        )


def generate_ca(
    *,
    now: datetime.datetime,
    curve: str = "P-256",
    common_name: str = "wasmkeep Steward CA",
    lifetime: datetime.timedelta = CA_LIFETIME,
) -> CertificateAuthority:
    """A new CA: a fresh key on `curve` and its self-signed certificate."""
    if curve not in CURVES:
        raise CaError(f"unknown curve {curve!r} (known: {', '.join(CURVES)})")
    key = ec.generate_private_key(CURVES[curve]())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA384() if curve == "P-384" else hashes.SHA256())
    )
    return CertificateAuthority(key, certificate)


# -- files ------------------------------------------------------------------------------------


def _write_atomically(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    """Write `data` to `path` with `mode` from creation, synced, moved into place.

    The temporary file is made with O_CREAT | O_EXCL | O_NOFOLLOW and `mode`
    (then fchmod to `mode` exactly, whatever the umask), so no other user can
    open it at any moment. Without `overwrite`, an existing `path` is an
    error (link(2) does not replace, unlike rename(2)).
    """
    directory = path.parent
    temporary = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    descriptor = os.open(temporary, flags, mode)
    try:
        try:
            os.fchmod(descriptor, mode)
            view = memoryview(data)
            while view:
                written = os.write(descriptor, view)
                view = view[written:]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        if overwrite:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    # The new directory entry survives a crash only once the directory is synced.
    directory_descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory_descriptor)
    finally:
        os.close(directory_descriptor)


def write_private_file(
    path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False
) -> None:
    """Write a secret (a private key) with mode 0600, atomically; see the module docstring."""
    try:
        _write_atomically(Path(path), data, 0o600, overwrite=overwrite)
    except FileExistsError:
        raise CaError(f"{shown(path)} exists already: not overwritten") from None
    except OSError as error:
        raise CaError(f"{shown(path)}: cannot write: {error.strerror or error}") from None


def write_public_file(
    path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False
) -> None:
    """Write a public file (a certificate) with mode 0644, atomically."""
    try:
        _write_atomically(Path(path), data, 0o644, overwrite=overwrite)
    except FileExistsError:
        raise CaError(f"{shown(path)} exists already: not overwritten") from None
    except OSError as error:
        raise CaError(f"{shown(path)}: cannot write: {error.strerror or error}") from None


def _read(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as file:
            data = file.read(_MAX_FILE + 1)
    except OSError as error:
        raise CaError(f"{shown(path)}: cannot read the {what}: {error.strerror or error}") from None
    if len(data) > _MAX_FILE:
        raise CaError(f"{shown(path)}: the {what} is larger than {_MAX_FILE} bytes")
    return data


def read_passphrase(
    file: str | os.PathLike[str] | None, environment: Mapping[str, str] | None = None
) -> bytes | None:
    """The CA key's passphrase: the first line of `file`, else $WASMKEEP_CA_PASSPHRASE,
    else None (the key is stored unencrypted)."""
    if file is not None:
        text = _read(Path(file), "passphrase file")
        passphrase = text.split(b"\n", 1)[0].rstrip(b"\r")
        source = shown(file)
    else:
        value = (os.environ if environment is None else environment).get(PASSPHRASE_ENV)
        if value is None:
            return None
        passphrase = value.encode("utf-8")
        source = f"${PASSPHRASE_ENV}"
    if not passphrase:
        raise CaError(f"{source}: the passphrase is empty")
    return passphrase


def save_ca(
    ca: CertificateAuthority, directory: str | os.PathLike[str], *, passphrase: bytes | None
) -> tuple[Path, Path]:
    """Write ``ca.key`` (0600; encrypted if `passphrase`) and ``ca.crt`` into
    `directory`, which must exist; existing files are not overwritten."""
    folder = Path(directory)
    encryption: serialization.KeySerializationEncryption
    if passphrase:
        encryption = serialization.BestAvailableEncryption(passphrase)
    else:
        encryption = serialization.NoEncryption()
    key_pem = ca.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    key_path, cert_path = folder / CA_KEY_FILE, folder / CA_CERT_FILE
    write_private_file(key_path, key_pem)
    write_public_file(cert_path, ca.certificate_pem)
    return key_path, cert_path


def _load_key(path: Path, passphrase: bytes | None) -> ec.EllipticCurvePrivateKey:
    data = _read(path, "CA key")
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        _LOG.warning(
            "%s is readable by other users (mode %o): chmod 600 it", shown(path), mode & 0o777
        )
    encrypted = b"ENCRYPTED" in data[:4096]
    if encrypted and passphrase is None:
        raise CaError(
            f"{shown(path)} is encrypted: give its passphrase in ${PASSPHRASE_ENV} "
            "or with --ca-passphrase-file"
        )
    try:
        key = serialization.load_pem_private_key(data, passphrase if encrypted else None)
    except ValueError as error:
        if encrypted:
            raise CaError(f"{shown(path)}: wrong passphrase (or a damaged key file)") from None
        raise CaError(f"{shown(path)}: not a PEM private key: {error}") from None
    except X509_PARSE_ERRORS as error:  # TypeError among them
        raise CaError(f"{shown(path)}: not a usable private key: {error}") from None
    if passphrase is not None and not encrypted:
        _LOG.warning("%s is not encrypted: the passphrase given was not needed", shown(path))
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaError(f"{shown(path)}: the CA key must be an ECDSA P-256 or P-384 key")
    return key


def load_ca(
    key_path: str | os.PathLike[str],
    cert_path: str | os.PathLike[str],
    *,
    passphrase: bytes | None,
    now: datetime.datetime | None = None,
) -> CertificateAuthority:
    """The CA in `key_path` (PEM, encrypted or not) and `cert_path` (PEM or DER).

    With `now`, a CA certificate not valid at that time is refused.
    """
    key = _load_key(Path(key_path), passphrase)
    data = _read(Path(cert_path), "CA certificate")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            certificate = x509.load_pem_x509_certificate(data)
        else:
            certificate = x509.load_der_x509_certificate(data)
        not_before, not_after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    except X509_PARSE_ERRORS as error:
        raise CaError(f"{shown(cert_path)}: not a certificate: {error}") from None
    try:
        ca = CertificateAuthority(key, certificate)
    except CaError as error:
        raise CaError(f"{shown(cert_path)}: {error}") from None
    if now is not None and not not_before <= now <= not_after:
        raise CaError(
            f"{shown(cert_path)}: the CA certificate is valid from {not_before:%Y-%m-%d} "
            f"to {not_after:%Y-%m-%d}, not at {now:%Y-%m-%d %H:%M} UTC"
        )
    return ca


def open_ca_directory(
    directory: str | os.PathLike[str],
    *,
    passphrase: bytes | None,
    now: datetime.datetime,
    curve: str = "P-256",
) -> tuple[CertificateAuthority, bool]:
    """The CA in `directory`, made there first if it holds none: (CA, whether made now).

    The directory is created with mode 0700. A directory with ``ca.key`` and
    ``ca.crt`` is reused as it is; one with only one of them is an error
    (nothing is overwritten).
    """
    folder = Path(directory)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise CaError(f"{shown(folder)}: cannot create: {error.strerror or error}") from None
    key_path, cert_path = folder / CA_KEY_FILE, folder / CA_CERT_FILE
    have_key, have_cert = key_path.exists(), cert_path.exists()
    if have_key and have_cert:
        return load_ca(key_path, cert_path, passphrase=passphrase, now=now), False
    if have_key or have_cert:
        present, missing = (key_path, cert_path) if have_key else (cert_path, key_path)
        raise CaError(
            f"{shown(folder)} holds {present.name} but no {missing.name}: "
            "not overwritten; move it away, or pass --ca-key and --ca-cert"
        )
    ca = generate_ca(now=now, curve=curve)
    if passphrase is None:
        _LOG.warning(
            "the new CA key %s is not encrypted (set $%s or --ca-passphrase-file to encrypt it)",
            shown(key_path),
            PASSPHRASE_ENV,
        )
    save_ca(ca, folder, passphrase=passphrase)
    return ca, True


# -- the Steward's own TLS identity -----------------------------------------------------------


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def server_credentials(
    ca: CertificateAuthority,
    names: Sequence[str],
    *,
    now: datetime.datetime,
    lifetime: datetime.timedelta = SERVER_LIFETIME,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh key and a server certificate for `names` (DNS names or IP
    addresses), issued by `ca`, valid for `lifetime` or until the CA expires."""
    unique = list(dict.fromkeys(names))
    if not unique:
        raise ValueError("a server certificate needs at least one name")
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(now + lifetime, ca.not_valid_after)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wasmkeep Steward")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(name) for name in unique]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            LEAF_KEY_USAGE,
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return key, ca.sign(builder)
