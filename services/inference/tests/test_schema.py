"""Validation rules of the hand-written validator (unit, no HTTP)."""

from __future__ import annotations

from typing import Any

import pytest

from gradeflow_inference.schema import MISSING_CATEGORY, RecordValidator, example_record
from gradeflow_shared.errors import InvalidInput
from gradeflow_shared.manifest import FeatureSpec, Manifest


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return Manifest(
        model_name="m",
        version=3,
        run_id="r",
        target="y",
        features=[
            FeatureSpec(name="age", kind="numeric", dtype="int", min=15, max=22),
            FeatureSpec(name="hours", kind="numeric", dtype="float", min=0, max=40),
            FeatureSpec(name="strict", kind="numeric", dtype="float", nullable=False),
            FeatureSpec(name="school", kind="categorical", dtype="str", categories=["public", "private"]),
        ],
    )


def good() -> dict[str, Any]:
    return {"age": 17, "hours": 3.5, "strict": 1.0, "school": "public"}


def problems(v: RecordValidator, recs: list[Any], batch: bool = False) -> list[dict[str, Any]]:
    with pytest.raises(InvalidInput) as ei:
        v.validate(recs, batch)
    assert ei.value.status_code == 422
    return ei.value.details  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"age": "17"}, "age", "type"),
        ({"age": True}, "age", "type"),
        ({"age": 17.5}, "age", "int_type"),
        ({"age": 14}, "age", "greater_than_equal"),
        ({"age": 23}, "age", "less_than_equal"),
        ({"hours": -0.1}, "hours", "greater_than_equal"),
        ({"hours": [1]}, "hours", "type"),
        ({"school": 1}, "school", "type"),
        ({"strict": None}, "strict", "null"),
        ({"bogus": 1}, "bogus", "extra_forbidden"),
    ],
)
def test_each_rule_names_field_and_rule(
    manifest: Manifest, change: dict[str, Any], field: str, rule: str
) -> None:
    v = RecordValidator(manifest)
    rec = {**good(), **change}
    (p,) = problems(v, [rec])
    assert (p["field"], p["rule"]) == (field, rule)
    assert "index" not in p


def test_missing_field(manifest: Manifest) -> None:
    rec = good()
    del rec["hours"]
    (p,) = problems(RecordValidator(manifest), [rec])
    assert (p["field"], p["rule"]) == ("hours", "missing")


def test_batch_errors_carry_index_and_message_names_record(manifest: Manifest) -> None:
    v = RecordValidator(manifest)
    with pytest.raises(InvalidInput) as ei:
        v.validate([good(), good(), {**good(), "age": 99}, "nope"], batch=True)
    details = ei.value.details
    assert {(d["index"], d["field"], d["rule"]) for d in details} == {
        (2, "age", "less_than_equal"),
        (3, "", "type"),
    }
    assert "records[2].age" in ei.value.message


def test_int_accepts_integral_float_and_null_for_nullable(manifest: Manifest) -> None:
    b = RecordValidator(manifest).validate([{**good(), "age": 18.0, "hours": None}], batch=False)
    assert b.columns["age"] == [18.0]
    assert b.columns["hours"] == [None]


def test_unseen_category_accepted_and_counted(manifest: Manifest) -> None:
    v = RecordValidator(manifest)
    b = v.validate([{**good(), "school": "online"}, good(), {**good(), "school": None}], batch=True)
    assert b.unseen == {"school": 1}
    feed = b.onnx_feed(v)
    assert feed["school"][:, 0].tolist() == ["online", "public", MISSING_CATEGORY]
    assert feed["hours"].dtype.name == "float32" and feed["hours"].shape == (3, 1)


def test_example_record_is_valid_and_schema_lists_rules(manifest: Manifest) -> None:
    v = RecordValidator(manifest)
    v.validate([example_record(manifest)], batch=False)
    schema = v.json_schema(manifest)
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"age", "hours", "strict", "school"}
    assert schema["properties"]["strict"] == {"type": "number"}


def test_big_batch_fast_path_matches_record_path(manifest: Manifest) -> None:
    v = RecordValidator(manifest)
    recs = [
        {
            **good(),
            "age": 15 + i % 8,
            "hours": None if i % 7 == 0 else i / 10,
            "school": "online" if i % 5 == 0 else "public",
        }
        for i in range(40)
    ]
    fast = v.validate(recs, batch=True)
    slow = v._validate_records(recs, batch=True)
    assert fast.unseen == slow.unseen == {"school": 8}
    for name in ("age", "hours", "school"):
        assert fast.onnx_feed(v)[name].tolist() == slow.onnx_feed(v)[name].tolist() or name == "hours"
    assert str(fast.onnx_feed(v)["hours"].tolist()) == str(slow.onnx_feed(v)["hours"].tolist())  # NaN-aware
    # one bad value deep in a big batch: the same precise error as the record path, with its index
    for bad in (
        {"age": 30},
        {"age": 16.5},
        {"hours": "3"},
        {"school": 3},
        {"school": True},
        {"school": ["public"]},
        {"strict": None},
        {"extra": 1},
    ):
        broken = [dict(r) for r in recs]
        broken[33].update(bad)
        details = problems(v, broken, batch=True)
        assert [d["index"] for d in details] == [33]
    # a schema key swapped for an unknown one (same number of keys): missing + extra_forbidden, index 33
    broken = [dict(r) for r in recs]
    del broken[33]["hours"]
    broken[33]["hourz"] = 1.0
    details = problems(v, broken, batch=True)
    assert {(d["index"], d["field"], d["rule"]) for d in details} == {
        (33, "hourz", "extra_forbidden"),
        (33, "hours", "missing"),
    }
