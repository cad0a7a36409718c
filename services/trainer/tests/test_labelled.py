"""Labelled production rows are re-checked before training: poisoned rows are dropped and counted."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gradeflow_shared.synth import COLUMNS, TARGET, generate, synthetic_spec
from gradeflow_trainer import service
from gradeflow_trainer.config import TrainerSettings
from gradeflow_trainer.labelled import clean_labelled

SPEC = synthetic_spec(rows=200, seed=0)  # target 0-20, bounded numeric features, categorical strings
NOW = datetime.now(UTC).isoformat()


def good_rows(n: int, start: int = 1) -> list[dict[str, Any]]:
    df = generate(n, seed=4)
    out = []
    for i, rec in enumerate(df.to_dict(orient="records")):
        features = {
            k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items() if k != TARGET
        }
        out.append(
            {
                "id": start + i,
                "request_id": f"req-{start + i}",
                "ts": NOW,
                "model_version": 1,
                "features": features,
                "prediction": 10.0,
                "latency_ms": 1.0,
                "actual": float(rec[TARGET]),
                "feedback_at": NOW,
            }
        )
    return out


def poisoned(base: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(expected reason, row) for each kind of poison; ids after the good rows."""

    def with_(n: int, **changes: Any) -> dict[str, Any]:
        row = json.loads(json.dumps(base))
        row.update(id=1000 + n, request_id=f"poison-{n}", **changes)
        return row

    def feature(n: int, name: str, value: Any) -> dict[str, Any]:
        row = with_(n)
        row["features"][name] = value
        return row

    return [
        ("label_not_finite", with_(1, actual=float("nan"))),
        ("label_out_of_range", with_(2, actual=-5.0)),
        ("label_out_of_range", with_(3, actual=21.0)),
        ("label_out_of_range", with_(4, actual=1e308)),
        ("label_not_finite", with_(5, actual="12")),
        ("label_not_finite", with_(6, actual=float("inf"))),
        ("label_not_finite", with_(7, actual=None)),
        ("label_not_finite", with_(8, actual=True)),
        ("request_id_duplicate", {**with_(9), "request_id": base["request_id"]}),
        ("request_id_missing", {**with_(10), "request_id": ""}),
        ("request_id_missing", {k: v for k, v in with_(11).items() if k != "request_id"}),
        ("feature_invalid", feature(12, "study_hours_per_week", "twelve")),
        ("feature_invalid", feature(13, "attendance_pct", 1e308)),
        ("feature_invalid", feature(14, "age", 17.5)),  # an int feature
        ("feature_invalid", feature(15, "age", float("nan"))),
        ("feature_invalid", feature(16, "school_type", 3)),
        ("malformed", {**with_(17), "features": "age=17"}),
        ("malformed", {**with_(18), "id": "x"}),
        ("malformed", "not an object"),
    ]


def test_poisoned_rows_are_dropped_and_counted_per_reason() -> None:
    good = good_rows(30)
    bad = poisoned(good[0])
    out = clean_labelled([*good, *(row for _, row in bad)], SPEC, list(COLUMNS), max_rows=10_000)
    expected: dict[str, int] = {}
    for reason, _ in bad:
        expected[reason] = expected.get(reason, 0) + 1
    assert out.dropped == expected and out.n_dropped == len(bad)
    assert len(out.X) == len(out.y) == 30
    assert out.y.tolist() == [r["actual"] for r in good]  # the good rows, oldest first, untouched
    assert out.y.between(0, 20).all() and list(out.X.columns) == [c.name for c in COLUMNS]


def test_missing_feature_values_are_kept_and_the_most_recent_rows_win() -> None:
    good = good_rows(20)
    good[3]["features"]["attendance_pct"] = None
    del good[4]["features"]["sleep_hours"]
    out = clean_labelled(list(reversed(good)), SPEC, list(COLUMNS), max_rows=15)
    assert out.dropped == {} and len(out.X) == 15
    assert out.y.tolist() == [r["actual"] for r in good[5:]]


class FakeClient:
    """Answers GET /predictions with the pages given (like inference, paged by since_id)."""

    pages: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def get(self, path: str, params: dict[str, Any]) -> Any:
        FakeClient.calls.append(params)
        return FakeClient.pages[len(FakeClient.calls) - 1]


def test_pull_labelled_pages_checks_and_records_the_drops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = good_rows(60)
    bad = [row for _, row in poisoned(good[0])]
    FakeClient.calls = []
    FakeClient.pages = [
        {"items": good[:30] + bad[:10], "next_since_id": 1009},
        {"items": good[30:] + bad[10:], "next_since_id": None},
    ]
    monkeypatch.setattr(service, "ServiceClient", FakeClient)
    s = TrainerSettings(data_dir=tmp_path, inference_url="http://inference.test", admin_token="x" * 20)
    out = service.pull_labelled(s, SPEC, list(COLUMNS))
    assert out is not None and len(out.X) == 60 and out.n_dropped == len(bad)
    assert [c.get("since_id") for c in FakeClient.calls] == [None, 1009]
    assert all(c["labelled"] == "true" for c in FakeClient.calls)


def test_a_page_that_does_not_advance_stops_the_pull(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = good_rows(5)
    FakeClient.calls = []
    FakeClient.pages = [{"items": good, "next_since_id": 5}, {"items": good, "next_since_id": 5}]
    monkeypatch.setattr(service, "ServiceClient", FakeClient)
    s = TrainerSettings(data_dir=tmp_path, inference_url="http://inference.test", admin_token="x" * 20)
    out = service.pull_labelled(s, SPEC, list(COLUMNS))
    assert out is not None and len(out.X) == 5 and out.dropped == {"request_id_duplicate": 5}
    assert len(FakeClient.calls) == 2
