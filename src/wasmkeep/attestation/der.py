"""A small, strict DER reader (ITU-T X.690, section 10: the Distinguished
Encoding Rules) for the few ASN.1 structures attestation evidence wraps around
certificates: the Enarx CSR evidence extension and the AMD VCEK extensions.

Certificates and CRLs themselves are parsed by pyca/cryptography once their
bytes are found; this reader only walks the outer structures. It accepts DER
only: single-octet tags of the universal or context class (no high tag
numbers), definite lengths in their shortest form, and no more than
:data:`MAX_DEPTH` nested constructed values. Every error is an
:class:`~wasmkeep.attestation.errors.EvidenceFormatError` naming what was read
and its offset in the outermost input.
"""

from __future__ import annotations

from dataclasses import dataclass

from wasmkeep.attestation.errors import EvidenceFormatError

__all__ = [
    "BIT_STRING",
    "BOOLEAN",
    "CONSTRUCTED",
    "INTEGER",
    "MAX_DEPTH",
    "MAX_INPUT",
    "NULL",
    "OCTET_STRING",
    "OID",
    "SEQUENCE",
    "SET",
    "UTF8_STRING",
    "Tlv",
    "encode",
    "encode_sequence",
    "parse_der",
    "tag_name",
]

BOOLEAN = 0x01
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
UTF8_STRING = 0x0C
SEQUENCE = 0x30
SET = 0x31
#: The constructed bit of an identifier octet (X.690 8.1.2.5).
CONSTRUCTED = 0x20

#: Deepest nesting of constructed values accepted (a certificate needs ~8).
MAX_DEPTH = 32
#: Largest DER input accepted by :func:`parse_der`, in bytes.
MAX_INPUT = 1024 * 1024
#: Length octets beyond the initial one: 4 is up to 4 GiB, far beyond MAX_INPUT.
_MAX_LENGTH_OCTETS = 4

_NAMES = {
    BOOLEAN: "BOOLEAN",
    INTEGER: "INTEGER",
    BIT_STRING: "BIT STRING",
    OCTET_STRING: "OCTET STRING",
    NULL: "NULL",
    OID: "OBJECT IDENTIFIER",
    UTF8_STRING: "UTF8String",
    SEQUENCE: "SEQUENCE",
    SET: "SET",
}


def tag_name(tag: int) -> str:
    """A readable name of an identifier octet, for error messages."""
    if tag in _NAMES:
        return _NAMES[tag]
    if tag & 0xC0 == 0x80:
        return f"[{tag & 0x1F}]"
    return f"tag 0x{tag:02x}"


@dataclass(frozen=True, slots=True)
class Tlv:
    """One DER value: its identifier octet, its content octets, the whole
    encoding, where it starts in the outermost input, and how deep it sits."""

    tag: int
    value: bytes
    encoded: bytes
    offset: int
    depth: int

    @property
    def constructed(self) -> bool:
        return bool(self.tag & CONSTRUCTED)

    @property
    def value_offset(self) -> int:
        """Where the content octets start in the outermost input."""
        return self.offset + len(self.encoded) - len(self.value)

    def expect(self, tag: int, what: str) -> Tlv:
        """This value, if it has the identifier `tag`; else a format error naming `what`."""
        if self.tag != tag:
            raise EvidenceFormatError(
                f"{what} at offset {self.offset}: expected {tag_name(tag)}, "
                f"found {tag_name(self.tag)}"
            )
        return self

    def children(self) -> tuple[Tlv, ...]:
        """The values inside a constructed value, in order, filling it exactly."""
        if not self.constructed:
            raise EvidenceFormatError(
                f"{tag_name(self.tag)} at offset {self.offset} is primitive: it has no children"
            )
        if self.depth + 1 > MAX_DEPTH:
            raise EvidenceFormatError(
                f"DER nesting deeper than {MAX_DEPTH} at offset {self.value_offset}"
            )
        items: list[Tlv] = []
        position = 0
        while position < len(self.value):
            item, position = _read(self.value, position, self.value_offset, self.depth + 1)
            items.append(item)
        return tuple(items)

    def fields(self, tag: int, what: str, names: tuple[str, ...]) -> tuple[Tlv, ...]:
        """The children of a value of identifier `tag` that must have exactly
        the fields `names` (used only in error messages)."""
        self.expect(tag, what)
        items = self.children()
        if len(items) != len(names):
            raise EvidenceFormatError(
                f"{what} at offset {self.offset}: expected {len(names)} fields "
                f"({', '.join(names)}), found {len(items)}"
            )
        return items

    def as_unsigned(self, what: str, *, max_octets: int = 8) -> int:
        """A non-negative INTEGER (X.690 8.3) in its minimal encoding."""
        self.expect(INTEGER, what)
        content = self.value
        if not content:
            raise EvidenceFormatError(f"{what} at offset {self.offset}: empty INTEGER")
        if len(content) > 1 and (
            (content[0] == 0x00 and content[1] < 0x80)
            or (content[0] == 0xFF and content[1] >= 0x80)
        ):
            raise EvidenceFormatError(f"{what} at offset {self.offset}: INTEGER not minimal")
        if content[0] & 0x80:
            raise EvidenceFormatError(f"{what} at offset {self.offset}: negative INTEGER")
        significant = content[1:] if content[0] == 0 else content
        if len(significant) > max_octets:
            raise EvidenceFormatError(
                f"{what} at offset {self.offset}: INTEGER larger than {max_octets} octets"
            )
        return int.from_bytes(content, "big")

    def as_utf8(self, what: str) -> str:
        """The text of a UTF8String."""
        self.expect(UTF8_STRING, what)
        try:
            return self.value.decode("utf-8")
        except UnicodeDecodeError as error:
            raise EvidenceFormatError(
                f"{what} at offset {self.offset}: invalid UTF-8 at octet {error.start}"
            ) from None


def _read(data: bytes, position: int, base: int, depth: int) -> tuple[Tlv, int]:
    """The value starting at `position` in `data` (which sits at `base` in the
    outermost input), and the position just past it."""
    start = position
    where = base + start
    if position >= len(data):
        raise EvidenceFormatError(f"DER value at offset {where}: no identifier octet")
    tag = data[position]
    if tag & 0x1F == 0x1F:
        raise EvidenceFormatError(f"DER value at offset {where}: high tag numbers are not used")
    if tag & 0xC0 not in (0x00, 0x80):
        raise EvidenceFormatError(
            f"DER value at offset {where}: tag class of 0x{tag:02x} is not used here"
        )
    position += 1
    if position >= len(data):
        raise EvidenceFormatError(f"{tag_name(tag)} at offset {where}: no length octet")
    first = data[position]
    position += 1
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise EvidenceFormatError(
            f"{tag_name(tag)} at offset {where}: indefinite length is not DER"
        )
    else:
        count = first & 0x7F
        if count > _MAX_LENGTH_OCTETS:
            raise EvidenceFormatError(
                f"{tag_name(tag)} at offset {where}: {count} length octets is too many"
            )
        if position + count > len(data):
            raise EvidenceFormatError(f"{tag_name(tag)} at offset {where}: truncated length")
        length_octets = data[position : position + count]
        position += count
        if length_octets[0] == 0:
            raise EvidenceFormatError(
                f"{tag_name(tag)} at offset {where}: length has a leading zero octet (not DER)"
            )
        length = int.from_bytes(length_octets, "big")
        if length < 0x80:
            raise EvidenceFormatError(
                f"{tag_name(tag)} at offset {where}: long form for a short length (not DER)"
            )
    end = position + length
    if end > len(data):
        raise EvidenceFormatError(
            f"{tag_name(tag)} at offset {where}: length {length} runs past the end "
            f"of its container ({len(data) - position} octets left)"
        )
    return (
        Tlv(
            tag=tag,
            value=bytes(data[position:end]),
            encoded=bytes(data[start:end]),
            offset=where,
            depth=depth,
        ),
        end,
    )


def parse_der(data: bytes, what: str = "DER value") -> Tlv:
    """The single DER value that `data` holds, with nothing after it.

    Only the outermost value is read; its children are read on demand with
    :meth:`Tlv.children`, each read checking lengths and depth again.
    """
    if len(data) > MAX_INPUT:
        raise EvidenceFormatError(f"{what}: {len(data)} bytes is over the limit of {MAX_INPUT}")
    item, end = _read(bytes(data), 0, 0, 0)
    if end != len(data):
        raise EvidenceFormatError(
            f"{what}: {len(data) - end} bytes after the value that ends at offset {end}"
        )
    return item


# -- writing (the few forms wasmkeep itself emits) --------------------------------------


def encode(tag: int, value: bytes) -> bytes:
    """One DER value: `tag`, the definite length in its shortest form, `value`."""
    length = len(value)
    if length < 0x80:
        header = bytes([tag, length])
    else:
        octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
        header = bytes([tag, 0x80 | len(octets), *octets])
    return header + value


def encode_sequence(*items: bytes) -> bytes:
    """A SEQUENCE of already encoded values."""
    return encode(SEQUENCE, b"".join(items))
