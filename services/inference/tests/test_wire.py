"""The online-store byte formats read without Feast, checked against Feast's own encoders."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gradeflow_inference.online.wire import decode_timestamp, decode_value, entity_key
from gradeflow_shared.features.feast_env import quiet_feast_import

with quiet_feast_import():  # feast's encoders are the oracle (imported the project's way)
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import DoubleList, Value


def test_entity_key_is_feasts() -> None:
    for sid in ("S-00001", "", "é-ü-" * 40):
        ek = EntityKey(join_keys=["student_id"], entity_values=[Value(string_val=sid)])
        assert entity_key("student_id", sid) == serialize_entity_key(ek, entity_key_serialization_version=3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"string_val": "yes"},
        {"string_val": ""},
        {"string_val": "x" * 300},
        {"double_val": 3.25},
        {"double_val": 0.0},
        {"double_val": -1e300},
        {"float_val": 1.5},
        {"int64_val": 0},
        {"int64_val": 127},
        {"int64_val": 128},
        {"int64_val": -5},
        {"int64_val": 2**62},
        {"int32_val": -1},
        {"int32_val": 3},
        {"bool_val": True},
        {"bool_val": False},
        {"unix_timestamp_val": 1_700_000_000},
        {"bytes_val": b"\x00\x01"},
    ],
)
def test_values_decode_like_feast(kwargs: dict[str, object]) -> None:
    assert decode_value(Value(**kwargs).SerializeToString()) == next(iter(kwargs.values()))  # type: ignore[arg-type]


def test_null_empty_and_unsupported_values() -> None:
    assert decode_value(b"") is None and decode_value(None) is None
    assert decode_value(Value(null_val=0).SerializeToString()) is None
    with pytest.raises(ValueError, match="unsupported feast value"):
        decode_value(Value(double_list_val=DoubleList(val=[1.0])).SerializeToString())


def test_timestamp_decodes_like_protobuf() -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    when = datetime(2026, 12, 2, 7, 0, 1, 500000, tzinfo=UTC)
    ts = Timestamp()
    ts.FromDatetime(when)
    assert decode_timestamp(ts.SerializeToString()) == when.timestamp()
    assert decode_timestamp(None) is None
