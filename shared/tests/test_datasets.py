"""Dataset specs and loading: builtins load, malformed files fail naming the column."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gradeflow_shared.datasets import (
    SHIPPED_DATA,
    ColumnSpec,
    DatasetSpec,
    feature_specs,
    fingerprint,
    load_dataset,
    load_spec,
)
from gradeflow_shared.errors import DatasetError

UCI = SHIPPED_DATA / "uci-student-performance"


def _write_spf(root: Path) -> Path:
    """A small file shaped like Kaggle's StudentPerformanceFactors.csv (that file is not shipped):
    CRLF line endings, blanks in categorical columns, one score of 101."""
    folder = root / "kaggle-student-performance-factors"
    folder.mkdir(parents=True)
    header = "Hours_Studied,Attendance,Parental_Involvement,Teacher_Quality,Distance_from_Home,Exam_Score"
    rows = [
        f"{1 + i % 44},{60 + i % 41},{('Low', 'Medium', 'High')[i % 3]},"
        f"{'' if i % 7 == 0 else ('Low', 'Medium', 'High')[i % 3]},{'' if i % 11 == 0 else 'Near'},"
        f"{101 if i == 5 else 55 + i % 40}"
        for i in range(60)
    ]
    path = folder / "StudentPerformanceFactors.csv"
    path.write_bytes(("\r\n".join([header, *rows]) + "\r\n").encode())
    return path


def _write_sp(root: Path) -> Path:
    """A small file shaped like Kaggle's Student_Performance.csv: spaces in the column names and a
    target written as a float."""
    folder = root / "kaggle-student-performance-mlr"
    folder.mkdir(parents=True)
    path = folder / "Student_Performance.csv"
    path.write_text(
        "Hours Studied,Previous Scores,Extracurricular Activities,Sleep Hours,"
        "Sample Question Papers Practiced,Performance Index\n7,99,Yes,9,1,91.0\n4,82,No,4,2,65.0\n"
    )
    return path


# ------------------------------------------------------------------ builtins
def test_synthetic_builtin() -> None:
    spec = load_spec("synthetic")
    spec.rows = 300
    X, y, cols = load_dataset(spec)
    assert len(X) == 300 and y.name == "final_grade" and "final_grade" not in X.columns
    assert [c.name for c in cols] == list(X.columns)
    assert X["study_hours_per_week"].dtype == float and X["school_type"].dtype == object


@pytest.mark.parametrize("name, rows", [("uci-por", 649), ("uci-mat", 395)])
def test_uci_builtins_drop_the_leaking_grades(name: str, rows: int) -> None:
    spec = load_spec(name)  # the shipped copy: nothing outside the repository is needed
    assert Path(spec.path or "").is_relative_to(SHIPPED_DATA)
    assert spec.sep == ";" and spec.target == "G3"
    X, y, cols = load_dataset(spec)
    assert len(X) == rows and X.shape[1] == 30
    assert "G1" not in X.columns and "G2" not in X.columns and "G3" not in X.columns
    kinds = {c.name: c.kind for c in cols}
    # "absences" is quoted in the file ("4"): it must still come back numeric
    assert kinds["absences"] == "numeric" and kinds["age"] == "numeric" and kinds["school"] == "categorical"
    assert X["absences"].dtype == float and y.between(0, 20).all()


def test_spf_keeps_missing_values(tmp_path: Path) -> None:
    _write_spf(tmp_path)
    X, y, cols = load_dataset(load_spec("spf", data_root=tmp_path))
    assert len(X) == 60 and y.name == "Exam_Score" and y.max() == 101
    assert X["Teacher_Quality"].isna().sum() == 9 and X["Distance_from_Home"].isna().sum() == 6  # kept
    kinds = {c.name: c.kind for c in cols}
    assert kinds["Hours_Studied"] == "numeric" and kinds["Teacher_Quality"] == "categorical"
    assert not X["Parental_Involvement"].str.endswith("\r").any()  # CRLF read cleanly


def test_sp_renames_spaced_columns(tmp_path: Path) -> None:
    _write_sp(tmp_path)
    X, y, cols = load_dataset(load_spec("sp", data_root=tmp_path))
    assert len(X) == 2 and y.name == "performance_index" and y.tolist() == [91.0, 65.0]
    assert "hours_studied" in X.columns and "Hours Studied" not in X.columns
    assert {c.name: c.kind for c in cols}["extracurricular_activities"] == "categorical"


@pytest.mark.parametrize(
    "name, relative",
    [
        ("spf", "kaggle-student-performance-factors/StudentPerformanceFactors.csv"),
        ("sp", "kaggle-student-performance-mlr/Student_Performance.csv"),
    ],
)
def test_unshipped_builtin_names_the_file_and_the_variable(tmp_path: Path, name: str, relative: str) -> None:
    """The Kaggle files do not ship (licence not established): a clear error, not a bare path."""
    with pytest.raises(DatasetError) as exc:
        load_spec(name, data_root=tmp_path)
    msg = str(exc.value)
    assert relative in msg and "DATASET_ROOT" in msg and str(tmp_path) in msg
    assert exc.value.details["variable"] == "DATASET_ROOT"
    with pytest.raises(DatasetError, match="DATASET_ROOT"):
        load_spec(name)


def test_data_root_takes_precedence_over_the_shipped_copy(tmp_path: Path) -> None:
    folder = tmp_path / "uci-student-performance"
    folder.mkdir()
    head = (UCI / "student-por.csv").read_text().splitlines()[:4]  # the header and 3 students
    (folder / "student-por.csv").write_text("\n".join(head) + "\n")
    spec = load_spec("uci-por", data_root=tmp_path)
    assert spec.path == str(folder / "student-por.csv")
    X, _, _ = load_dataset(spec)
    assert len(X) == 3
    # uci-mat is not in that folder: the shipped copy is used
    assert load_spec("uci-mat", data_root=tmp_path).path == str(UCI / "student-mat.csv")


def test_shipped_files_match_the_checksums_of_their_readme() -> None:
    """The shipped CSVs are the unchanged public files the README describes (source, licence, sha256)."""
    readme = (SHIPPED_DATA / "README.md").read_text()
    listed = dict(re.findall(r"`([\w.-]+)` \| [^|]+ \| `([0-9a-f]{64})`", readme))
    shipped = sorted(p.name for p in UCI.iterdir())
    assert sorted(listed) == shipped == ["student-mat.csv", "student-por.csv", "student.txt"]
    for name, digest in listed.items():
        assert hashlib.sha256((UCI / name).read_bytes()).hexdigest() == digest, name
    assert "CC BY 4.0" in readme and "10.24432/C5TG7T" in readme and "Cortez" in readme


def test_unknown_name_is_refused() -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        load_spec("nope")


def test_json_spec_relative_path(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,b,score\n1,x,3\n2,y,4\n")
    spec = DatasetSpec(
        name="tiny",
        path="d.csv",
        target="score",
        columns=[
            ColumnSpec(name="a", kind="numeric", dtype="int", min=0, max=5),
            ColumnSpec(name="b", kind="categorical", dtype="str", categories=["x", "y"]),
        ],
    )
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    loaded = load_spec(str(tmp_path / "spec.json"))
    assert loaded.path == str(tmp_path / "d.csv")
    X, y, cols = load_dataset(loaded)
    assert list(X.columns) == ["a", "b"] and y.tolist() == [3.0, 4.0]


# ------------------------------------------------------------------ malformed files
def _spec(path: Path, **kw: object) -> DatasetSpec:
    return DatasetSpec(name="t", path=str(path), target=kw.pop("target", "grade"), **kw)  # type: ignore[arg-type]


def test_missing_target_names_it(tmp_path: Path) -> None:
    p = tmp_path / "f.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match="target column 'grade' is missing"):
        load_dataset(_spec(p))


def test_missing_declared_column_names_it(tmp_path: Path) -> None:
    p = tmp_path / "f.csv"
    p.write_text("a,grade\n1,2\n")
    cols = [ColumnSpec(name="a", kind="numeric"), ColumnSpec(name="hours", kind="numeric")]
    with pytest.raises(DatasetError, match="declared column 'hours' is missing") as exc:
        load_dataset(_spec(p, columns=cols))
    assert exc.value.details["column"] == "hours"


def test_non_numeric_value_names_column_value_and_row(tmp_path: Path) -> None:
    p = tmp_path / "f.csv"
    p.write_text("hours,grade\n1,10\n2,11\nthree,12\n4,13\n")
    cols = [ColumnSpec(name="hours", kind="numeric")]
    with pytest.raises(DatasetError) as exc:
        load_dataset(_spec(p, columns=cols))
    msg = str(exc.value)
    assert "'hours'" in msg and "'three'" in msg and "row 3" in msg


def test_inferred_numeric_column_with_a_stray_string(tmp_path: Path) -> None:
    rows = "\n".join(f"{i},{i % 7}" for i in range(40))
    p = tmp_path / "f.csv"
    p.write_text("hours,grade\n" + rows + "\nn/a?,3\n")
    with pytest.raises(DatasetError, match="numeric column 'hours'.*'n/a\\?'"):
        load_dataset(_spec(p))


def test_non_numeric_target(tmp_path: Path) -> None:
    p = tmp_path / "f.csv"
    p.write_text("a,grade\n1,10\n2,A+\n")
    with pytest.raises(DatasetError, match="'grade'.*'A\\+'"):
        load_dataset(_spec(p))


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    p = tmp_path / "empty.csv"
    p.write_text("")
    with pytest.raises(DatasetError, match="empty"):
        load_dataset(_spec(p))
    h = tmp_path / "header.csv"
    h.write_text("a,grade\n")
    with pytest.raises(DatasetError, match="no rows"):
        load_dataset(_spec(h))


def test_wrong_separator_is_explained(tmp_path: Path) -> None:
    p = tmp_path / "semi.csv"
    p.write_text("a;b;grade\n1;2;3\n")
    with pytest.raises(DatasetError, match="single column.*wrong separator.*';'"):
        load_dataset(_spec(p))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(_spec(tmp_path / "nope.csv"))


def test_bad_values_are_kept_not_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "f.csv"
    p.write_text("hours,kind,grade\n1,x,10\n,y,11\n99,z,12\n3,,\n4,x,13\n")
    cols = [
        ColumnSpec(name="hours", kind="numeric", min=0, max=40),
        ColumnSpec(name="kind", kind="categorical", dtype="str", categories=["x", "y"]),
    ]
    with caplog.at_level(logging.INFO, logger="gradeflow_shared.datasets"):
        X, y, _ = load_dataset(_spec(p, columns=cols))
    # the row with a missing target is dropped and counted; the rest stays as is
    assert len(X) == 4 and y.tolist() == [10, 11, 12, 13]
    assert np.isnan(X.loc[1, "hours"]) and X.loc[2, "hours"] == 99 and X.loc[2, "kind"] == "z"
    text = caplog.text
    assert "dropping 1 of 5 rows with a missing target" in text
    assert "outside [0.0, 40.0]" in text and "outside its categories" in text


def test_renames_then_drop(tmp_path: Path) -> None:
    p = tmp_path / "f.csv"
    p.write_text("Hours Studied,Secret,Final Score\n1,9,10\n2,9,11\n")
    X, y, _ = load_dataset(
        _spec(p, target="score", renames={"Hours Studied": "hours", "Final Score": "score"}, drop=["Secret"])
    )
    assert list(X.columns) == ["hours"] and y.tolist() == [10, 11]


# ------------------------------------------------------------------ helpers
def test_fingerprint_is_canonical_and_sensitive() -> None:
    df = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", None]})
    assert fingerprint(df) == fingerprint(df[["b", "a"]].set_index(pd.Index([7, 8])))
    changed = df.copy()
    changed.loc[1, "a"] = 2.5
    assert fingerprint(changed) != fingerprint(df)
    assert len(fingerprint(df)) == 64


def test_feature_specs_record_bounds_and_what_training_saw() -> None:
    X = pd.DataFrame({"h": [1.0, np.nan, 7.0], "k": ["x", "y", np.nan]})
    cols = [
        ColumnSpec(name="h", kind="numeric", dtype="float", min=0, max=40),
        ColumnSpec(name="k", kind="categorical", dtype="str", categories=["x", "y", "z"]),
    ]
    h, k = feature_specs(cols, X)
    assert (h.kind, h.min, h.max, h.train_min, h.train_max) == ("numeric", 0, 40, 1.0, 7.0)
    assert k.kind == "categorical" and k.categories == ["x", "y"]


def test_json_spec_falls_back_to_the_data_root(tmp_path: Path) -> None:
    """A JSON spec's relative CSV path: its own folder first, then data_root, then the shipped data."""
    specs, data = tmp_path / "specs", tmp_path / "data"
    specs.mkdir()
    _write_sp(data)
    spec = DatasetSpec(
        name="mine", path="kaggle-student-performance-mlr/Student_Performance.csv", target="Performance Index"
    )
    (specs / "spec.json").write_text(spec.model_dump_json())
    assert load_spec(str(specs / "spec.json"), data_root=data).path == str(data / spec.path)
    shipped = DatasetSpec(name="por", path="uci-student-performance/student-por.csv", sep=";", target="G3")
    (specs / "por.json").write_text(shipped.model_dump_json())
    assert load_spec(str(specs / "por.json")).path == str(UCI / "student-por.csv")
    # found nowhere: the spec's own folder, so the load error names a path next to the spec
    (specs / "gone.json").write_text(DatasetSpec(name="gone", path="x.csv", target="g").model_dump_json())
    assert load_spec(str(specs / "gone.json")).path == str(specs / "x.csv")


def test_invalid_json_spec(tmp_path: Path) -> None:
    p = tmp_path / "spec.json"
    p.write_text('{"name": "x"}')  # no target
    with pytest.raises(DatasetError, match="invalid dataset spec"):
        load_spec(str(p))


def test_uci_specs_declare_the_documented_schema() -> None:
    """student.txt's types, codes and bounds reach the manifest (so inference can refuse age 40)."""
    from gradeflow_shared.datasets import feature_specs, load_dataset, load_spec

    for name in ("uci-por", "uci-mat"):
        spec = load_spec(name)
        X, _, cols = load_dataset(spec)
        feats = {f.name: f for f in feature_specs(cols, X)}
        assert len(feats) == 30 and "G1" not in feats and "G2" not in feats
        assert (feats["age"].min, feats["age"].max) == (15, 22)
        assert (feats["absences"].min, feats["absences"].max) == (0, 93)
        assert feats["Mjob"].kind == "categorical" and set(feats["Mjob"].categories or []) <= {
            "teacher",
            "health",
            "services",
            "at_home",
            "other",
        }
        for f in feats.values():
            if f.kind == "numeric":
                assert f.min is not None and f.max is not None
                assert f.min <= (f.train_min or 0) and (f.train_max or 0) <= f.max
