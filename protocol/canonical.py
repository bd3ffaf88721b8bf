"""The one canonical byte encoding of signed messages, and the signing input built on it.

Encoding: JSON Canonicalization Scheme (RFC 8785, "JCS"), restricted to a subset on
which JCS and Python's `json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False)` produce the same bytes, so any JCS library can check us:

- values are objects, arrays, strings, integers, `true`, `false` and `null`;
  no floats anywhere (`1.0`, `NaN`, `Infinity` are rejected);
- integers lie in the I-JSON safe range -(2**53 - 1) .. 2**53 - 1, which every
  JSON parser reads exactly; larger quantities travel as decimal strings;
- object keys are ASCII, so Python's code-point sort equals the UTF-16 sort of JCS;
- no whitespace; UTF-8; strings escape only `"`, `\\` and U+0000..U+001F (`\\b \\t \\n
  \\f \\r` short, the rest as lowercase `\\u00xx`); lone surrogates are rejected.

Field conventions (enforced by `protocol.messages`): bytes are 0x-prefixed lowercase
hex, EVM addresses EIP-55 checksummed, times integer unix milliseconds (UTC), energy
integer millijoules, booleans never stand in for integers.

Signing input = b"joule-market/v1\\x00" + type tag (ASCII) + b"\\x00" + canonical bytes.
The prefix names the protocol and version, the tag the message type, so a signature
over one kind of message can never be read as another. See docs/protocol.md.
"""

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import TypeAlias

from protocol.errors import MalformedMessageError

JsonValue: TypeAlias = bool | int | str | Sequence["JsonValue"] | Mapping[str, "JsonValue"] | None

MAX_SAFE_INT = 2**53 - 1
SIGNING_PREFIX = b"joule-market/v1\x00"
_TAG = re.compile(r"[a-z][a-z0-9_]*")
_HEX = re.compile(r"0x[0-9a-f]*")
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)


class _NotCanonicalError(Exception):
    """Internal: carries the reason and the path (built while unwinding) of a bad value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []


def _check(value: object) -> None:
    """Raise `_NotCanonicalError` unless `value` lies in the encodable JSON subset."""
    if value is None or isinstance(value, str | bool):
        return
    if isinstance(value, int):
        if -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            return
        raise _NotCanonicalError("integer outside +-(2**53 - 1); send it as a decimal string")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not key.isascii():
                raise _NotCanonicalError(f"object key {key!r} is not an ASCII string")
            try:
                _check(item)
            except _NotCanonicalError as exc:
                exc.path.append(f".{key}")
                raise
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            try:
                _check(item)
            except _NotCanonicalError as exc:
                exc.path.append(f"[{index}]")
                raise
        return
    if isinstance(value, float):
        raise _NotCanonicalError("floats are not allowed; use integers (millijoules, base units)")
    raise _NotCanonicalError(f"{type(value).__name__} is not a JSON value")


def canonical_bytes(value: JsonValue) -> bytes:
    """Encode `value` canonically; raise `MalformedMessageError` if it has no canonical form."""
    try:
        _check(value)
    except _NotCanonicalError as exc:
        where = "$" + "".join(reversed(exc.path))
        raise MalformedMessageError(f"not canonically encodable at {where}: {exc.reason}") from None
    try:
        return _ENCODER.encode(value).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedMessageError("string is not valid Unicode (lone surrogate)") from exc


def decode_canonical(data: bytes) -> JsonValue:
    """Parse bytes that must already be canonical; reject any other spelling of the value."""
    try:
        value: JsonValue = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedMessageError(f"not UTF-8 JSON: {exc}") from exc
    if canonical_bytes(value) != data:
        raise MalformedMessageError("JSON is not in canonical form")
    return value


def signing_input(type_tag: str, payload: Mapping[str, JsonValue]) -> bytes:
    """Bytes that get signed: protocol prefix, type tag, NUL, canonical payload."""
    if not _TAG.fullmatch(type_tag):
        raise MalformedMessageError(f"bad type tag {type_tag!r}")
    return b"".join((SIGNING_PREFIX, type_tag.encode("ascii"), b"\x00", canonical_bytes(payload)))


def to_hex(data: bytes) -> str:
    """Bytes as the protocol writes them: 0x-prefixed lowercase hex."""
    return "0x" + data.hex()


def from_hex(text: str, length: int) -> bytes:
    """Parse 0x-prefixed lowercase hex of exactly `length` bytes (else `MalformedMessageError`)."""
    if len(text) != 2 + 2 * length or not _HEX.fullmatch(text):
        raise MalformedMessageError(f"expected 0x-prefixed lowercase hex of {length} bytes")
    return bytes.fromhex(text[2:])


def sha256_hex(data: bytes) -> str:
    """SHA-256 of `data` as 0x-prefixed lowercase hex (the form every digest field uses)."""
    return "0x" + hashlib.sha256(data).hexdigest()
