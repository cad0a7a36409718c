"""Feast's online-store byte formats, read without importing Feast (``import feast`` takes ~6 s here).

Inference reads the latest feature values straight from the online store Feast writes (SQLite table
rows, Redis hashes). Three formats matter, all fixed by Feast 0.67 and checked against Feast itself in
the tests (a value pushed through Feast is read back here):

* the entity key (``serialize_entity_key``, version 3): counts and lengths as little-endian uint32;
* a feature value: a serialized ``feast.types.Value`` protobuf message (one field of a oneof);
* the Redis event time: a serialized ``google.protobuf.Timestamp`` (seconds, nanos).

Protobuf's wire format is decoded here by hand for the scalar value kinds a tabular model uses (bytes,
string, int32, int64, double, float, bool, unix timestamp, null); a list or map value raises
``ValueError`` (no model feature has one).
"""

from __future__ import annotations

import functools
import struct
from typing import Any

STRING_TYPE = 2  # feast ValueType.STRING
_U32 = struct.Struct("<I")
_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")


@functools.lru_cache(maxsize=8)
def _key_prefix(join_key: str) -> bytes:
    k = join_key.encode()
    return b"".join((_U32.pack(1), _U32.pack(STRING_TYPE), _U32.pack(len(k)), k, _U32.pack(STRING_TYPE)))


def entity_key(join_key: str, value: str) -> bytes:
    """Feast's serialized entity key (version 3) of one string join key, e.g. ``student_id = "s1"``."""
    v = value.encode()
    return _key_prefix(join_key) + _U32.pack(len(v)) + v


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _signed(v: int) -> int:
    """A varint-encoded int32/int64 (negative numbers are sign-extended to 64 bits)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def decode_value(buf: bytes | None) -> Any:
    """The Python value of a serialized ``feast.types.Value`` (None for an empty message or null)."""
    if not buf:
        return None
    tag = buf[0]
    # fast paths for the common kinds (one-byte tag, short string)
    if tag == 0x29:  # field 5 double, fixed64
        return _DOUBLE.unpack_from(buf, 1)[0]
    if tag == 0x12 and buf[1] < 0x80:  # field 2 string, length < 128
        return buf[2 : 2 + buf[1]].decode()
    if (tag == 0x20 or tag == 0x18) and len(buf) == 2:  # field 4 int64 / 3 int32, 0..127
        return buf[1]
    tag, pos = _varint(buf, 0)
    field, wire = tag >> 3, tag & 7
    if wire == 0:
        v, _ = _varint(buf, pos)
        if field in (3, 4, 8):  # int32, int64, unix_timestamp
            return _signed(v)
        if field == 7:
            return bool(v)
        if field == 19:  # null_val
            return None
    elif wire == 1 and field == 5:
        return _DOUBLE.unpack_from(buf, pos)[0]
    elif wire == 5 and field == 6:
        return _FLOAT.unpack_from(buf, pos)[0]
    elif wire == 2 and field in (1, 2):
        n, pos = _varint(buf, pos)
        raw = buf[pos : pos + n]
        return raw.decode() if field == 2 else bytes(raw)
    raise ValueError(f"unsupported feast value (protobuf field {field}, wire type {wire})")


def decode_timestamp(buf: bytes | None) -> float | None:
    """Seconds since the epoch of a serialized ``google.protobuf.Timestamp`` (None when absent)."""
    if buf is None:
        return None
    seconds = nanos = 0
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        v, pos = _varint(buf, pos)
        if tag >> 3 == 1:
            seconds = _signed(v)
        elif tag >> 3 == 2:
            nanos = v
    return seconds + nanos / 1e9
