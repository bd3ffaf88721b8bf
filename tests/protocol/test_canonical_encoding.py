"""The canonical encoding: what it writes, what it refuses, and that it parses back."""

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.canonical import (
    MAX_SAFE_INT,
    JsonValue,
    canonical_bytes,
    decode_canonical,
    from_hex,
    sha256_hex,
    signing_input,
    to_hex,
)
from protocol.errors import MalformedMessageError, ProtocolError


def test_sorts_keys_and_drops_whitespace() -> None:
    value: JsonValue = {"b": [3, {"d": None, "c": True}], "a": "x", "B": False}
    assert canonical_bytes(value) == b'{"B":false,"a":"x","b":[3,{"c":true,"d":null}]}'


def test_writes_utf8_and_escapes_only_what_rfc8785_escapes() -> None:
    value: JsonValue = {"s": 'é😀\u2028\x7f/\x1f\x00\n\t\b\f\r"\\'}
    expected = '{"s":"é😀\u2028\x7f/\\u001f\\u0000\\n\\t\\b\\f\\r\\"\\\\"}'
    assert canonical_bytes(value) == expected.encode("utf-8")


def test_tuples_encode_as_arrays() -> None:
    assert canonical_bytes({"a": (1, 2)}) == b'{"a":[1,2]}'


def test_integer_range_is_the_ijson_safe_range() -> None:
    assert canonical_bytes([MAX_SAFE_INT, -MAX_SAFE_INT]) == b"[9007199254740991,-9007199254740991]"
    for big in (MAX_SAFE_INT + 1, -MAX_SAFE_INT - 1, 10**30):
        with pytest.raises(MalformedMessageError, match="decimal string"):
            canonical_bytes({"a": big})


@pytest.mark.parametrize("bad", [1.0, 0.5, math.nan, math.inf, -math.inf, -0.0])
def test_floats_are_refused_with_their_path(bad: float) -> None:
    with pytest.raises(MalformedMessageError, match=r"\$\.energy\.items\[1\]: floats"):
        canonical_bytes({"energy": {"items": [1, bad]}})  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"é": 1}, "ASCII"),
        ({1: 1}, "ASCII"),
        ({"a": b"\x00"}, "bytes is not a JSON value"),
        ({"a": {1, 2}}, "set is not a JSON value"),
        ({"a": "\ud800"}, "lone surrogate"),
    ],
)
def test_non_json_values_are_refused(value: object, reason: str) -> None:
    with pytest.raises(MalformedMessageError, match=reason):
        canonical_bytes(value)  # type: ignore[arg-type]


def test_errors_are_protocol_errors() -> None:
    assert issubclass(MalformedMessageError, ProtocolError)
    assert MalformedMessageError.code == "malformed_message"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INT, MAX_SAFE_INT)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(st.characters(max_codepoint=127)), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_canonical_bytes_parse_back_and_match_plain_json(value: JsonValue) -> None:
    data = canonical_bytes(value)
    assert decode_canonical(data) == value
    plain = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert data == plain.encode("utf-8")


@pytest.mark.parametrize(
    "data", [b"\xff", b"{", b'{"a":1} ', b'{"a":01}', b"[1.5]", b'{"b":1,"a":1}']
)
def test_decode_refuses_non_canonical_input(data: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        decode_canonical(data)


def test_signing_input_layout() -> None:
    data = signing_input("receipt", {"a": 1})
    assert data == b'joule-market/v1\x00receipt\x00{"a":1}'


@pytest.mark.parametrize("tag", ["", "Receipt", "re\x00ceipt", "1abc", "a-b", "ré"])
def test_signing_input_refuses_bad_type_tags(tag: str) -> None:
    with pytest.raises(MalformedMessageError, match="type tag"):
        signing_input(tag, {})


def test_hex_round_trip_and_strictness() -> None:
    raw = bytes(range(32))
    assert from_hex(to_hex(raw), 32) == raw
    good = to_hex(raw)
    for bad in (good.upper(), good[2:], good + "00", good[:-2], "0x" + "g" * 64, good[:-1] + " "):
        with pytest.raises(MalformedMessageError, match="lowercase hex of 32 bytes"):
            from_hex(bad, 32)


def test_sha256_hex() -> None:
    assert sha256_hex(b"") == ("0xe3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
