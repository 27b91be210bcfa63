"""The strict DER reader of the attestation package (X.690, section 10)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wasmkeep.attestation import der
from wasmkeep.attestation.errors import EvidenceFormatError


def encode(tag: int, content: bytes) -> bytes:
    """A DER TLV (shortest length form), for building test inputs."""
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + content


def walk(tlv: der.Tlv) -> int:
    """Read every constructed value down to the leaves; the number of values."""
    return 1 + sum(walk(child) for child in tlv.children()) if tlv.constructed else 1


def test_reads_a_nested_structure_with_offsets() -> None:
    inner = encode(der.INTEGER, b"\x05") + encode(der.UTF8_STRING, "héllo".encode())
    data = encode(der.SEQUENCE, encode(der.SEQUENCE, inner) + encode(der.OCTET_STRING, b"x" * 200))
    top = der.parse_der(data)
    assert top.tag == der.SEQUENCE and top.offset == 0 and top.encoded == data
    first, second = top.children()
    assert first.offset == 3 and first.depth == 1  # 0x30 0x81 0xd7: a long-form length
    number, text = first.children()
    assert number.as_unsigned("n") == 5
    assert text.as_utf8("t") == "héllo"
    assert number.offset == 5 and text.offset == 8
    assert second.tag == der.OCTET_STRING and second.value == b"x" * 200
    assert second.value_offset == second.offset + 3  # 0x04 0x81 0xc8


def test_long_lengths_are_read() -> None:
    value = encode(der.OCTET_STRING, bytes(70000))
    assert value[1] == 0x83
    assert len(der.parse_der(value).value) == 70000


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no identifier octet"),
        (b"\x30", "no length octet"),
        (b"\x30\x80\x00\x00", "indefinite length"),
        (b"\x04\x81\x05hello", "long form for a short length"),
        (b"\x04\x82\x00\x05hello", "leading zero"),
        (b"\x04\x85\x01\x00\x00\x00\x00", "length octets is too many"),
        (b"\x04\x82\x01", "truncated length"),
        (b"\x04\x05hell", "runs past the end"),
        (b"\x1f\x01\x00", "high tag numbers"),
        (b"\x41\x00", "tag class"),
        (b"\xc1\x00", "tag class"),
        (b"\x04\x00\x00", "bytes after the value"),
    ],
)
def test_non_der_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(EvidenceFormatError, match=message):
        walk(der.parse_der(data))


def test_a_child_running_past_its_parent_is_refused() -> None:
    # The inner OCTET STRING claims 5 bytes, but its SEQUENCE holds only 4 after the header.
    data = b"\x30\x06\x04\x05abcd"
    with pytest.raises(EvidenceFormatError, match=r"at offset 2: length 5 runs past"):
        walk(der.parse_der(data))


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    data = encode(der.NULL, b"")
    for _ in range(der.MAX_DEPTH):
        data = encode(der.SEQUENCE, data)
    assert walk(der.parse_der(data)) == der.MAX_DEPTH + 1
    with pytest.raises(EvidenceFormatError, match="nesting deeper"):
        walk(der.parse_der(encode(der.SEQUENCE, data)))


def test_oversized_input_is_refused() -> None:
    with pytest.raises(EvidenceFormatError, match="over the limit"):
        der.parse_der(encode(der.OCTET_STRING, bytes(der.MAX_INPUT)))


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"\x00", 0), (b"\x7f", 127), (b"\x00\x80", 128), (b"\x00\xff", 255), (b"\x01\x00", 256)],
)
def test_unsigned_integers(content: bytes, expected: int) -> None:
    assert der.parse_der(encode(der.INTEGER, content)).as_unsigned("n") == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty INTEGER"),
        (b"\x00\x05", "not minimal"),
        (b"\xff\x80", "not minimal"),
        (b"\x80", "negative"),
        (b"\x01\x00", "larger than 1 octets"),
    ],
)
def test_bad_integers_are_refused(content: bytes, message: str) -> None:
    with pytest.raises(EvidenceFormatError, match=message):
        der.parse_der(encode(der.INTEGER, content)).as_unsigned("n", max_octets=1)


def test_expectations_name_the_field_and_offset() -> None:
    data = encode(der.SEQUENCE, encode(der.INTEGER, b"\x01") + encode(der.BOOLEAN, b"\xff"))
    top = der.parse_der(data)
    with pytest.raises(EvidenceFormatError, match=r"Thing at offset 0: expected 3 fields"):
        top.fields(der.SEQUENCE, "Thing", ("a", "b", "c"))
    a, b = top.fields(der.SEQUENCE, "Thing", ("a", "b"))
    with pytest.raises(EvidenceFormatError, match=r"Thing.b at offset 5: expected OCTET STRING"):
        b.expect(der.OCTET_STRING, "Thing.b")
    with pytest.raises(EvidenceFormatError, match="primitive"):
        a.children()
    with pytest.raises(EvidenceFormatError, match="invalid UTF-8"):
        der.parse_der(encode(der.UTF8_STRING, b"\xff")).as_utf8("s")


# -- property tests ----------------------------------------------------------

_leaf = st.tuples(
    st.sampled_from([der.INTEGER, der.OCTET_STRING, der.UTF8_STRING, der.NULL, 0x80, 0x81]),
    st.binary(max_size=300),
)
_tree = st.recursive(
    _leaf,
    lambda children: st.tuples(
        st.sampled_from([der.SEQUENCE, der.SET, 0xA0, 0xA3]), st.lists(children, max_size=4)
    ),
    max_leaves=20,
)


def _encode_tree(node: tuple[int, object]) -> bytes:
    tag, content = node
    if isinstance(content, list):
        return encode(tag, b"".join(_encode_tree(child) for child in content))
    assert isinstance(content, bytes)
    return encode(tag, content)


def _decode_tree(tlv: der.Tlv) -> tuple[int, object]:
    if tlv.constructed:
        return tlv.tag, [_decode_tree(child) for child in tlv.children()]
    return tlv.tag, tlv.value


@settings(max_examples=200, deadline=None)
@given(_tree)
def test_what_is_encoded_reads_back(tree: tuple[int, object]) -> None:
    assert _decode_tree(der.parse_der(_encode_tree(tree))) == tree


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_format_errors(data: bytes) -> None:
    with contextlib.suppress(EvidenceFormatError):
        walk(der.parse_der(data))


@settings(max_examples=300, deadline=None)
@given(_tree, st.data())
def test_mutated_encodings_raise_only_format_errors(
    tree: tuple[int, object], data: st.DataObject
) -> None:
    encoded = bytearray(_encode_tree(tree))
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    with contextlib.suppress(EvidenceFormatError):
        walk(der.parse_der(bytes(encoded[:cut])))
