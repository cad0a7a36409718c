"""Dataset specs: what a training CSV looks like, how to load and validate it.

A ``DatasetSpec`` names the file, its separator, the target, optional column declarations
(kind, dtype, hard bounds, categories) and clean-up steps (``renames`` applied first, then
``drop``). ``load_dataset`` reads the file (or generates synthetic data), validates it and
returns ``(X, y, columns)``. It refuses malformed files with a ``DatasetError`` whose message
names the column; it never drops bad feature values silently: missing values, unseen
categories and out-of-range numbers stay in ``X`` (the pipeline imputes / ignores them) and
are counted in the log. Rows whose *target* is missing are dropped, counted and logged.

Builtin specs name their CSV relative to a data folder: a folder given by the caller
(``DATASET_ROOT`` in the trainer) is tried first, then the public files shipped inside this
package (``public_data/``, see its README for source and licence).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from .errors import DatasetError
from .manifest import FeatureSpec

logger = logging.getLogger(__name__)

SHIPPED_DATA = Path(__file__).resolve().parent / "public_data"
"""The public CSVs that ship with the package (only files whose licence allows it)."""


class ColumnSpec(BaseModel):
    """One feature column of a dataset."""

    name: str
    kind: Literal["numeric", "categorical"]
    dtype: Literal["int", "float", "str", "bool"] = "float"
    min: float | None = None  # numeric: hard lower bound (None = unbounded)
    max: float | None = None
    categories: list[str] | None = None  # categorical: the known values (None = whatever is seen)
    description: str = ""


class DatasetSpec(BaseModel):
    """Where a dataset lives and how to read it."""

    name: str
    path: str | None = None  # None = the synthetic generator
    sep: str = ","
    target: str
    target_min: float | None = None
    target_max: float | None = None
    columns: list[ColumnSpec] | None = None  # None = infer numeric / categorical from the data
    renames: dict[str, str] = Field(default_factory=dict)  # applied first
    drop: list[str] = Field(default_factory=list)  # applied after renames
    na_values: list[str] = Field(default_factory=list)
    rows: int = 5000  # synthetic only
    seed: int = 0  # synthetic only
    scenario: str | None = None  # synthetic only (see gradeflow_shared.synth.SCENARIOS)
    severity: float = 1.0  # synthetic only
    description: str = ""
    # Feature columns that change during a term (the feature store's activity view); the others are
    # slowly changing profile facts. Only the feature store reads it.
    activity_columns: list[str] = Field(default_factory=list)


# ------------------------------------------------------------------ builtin specs
def _uci_columns() -> list[ColumnSpec]:
    """The 30 UCI features as described in the archive's student.txt (types, codes, bounds)."""

    def num(name: str, lo: float, hi: float, desc: str) -> ColumnSpec:
        return ColumnSpec(name=name, kind="numeric", dtype="int", min=lo, max=hi, description=desc)

    def cat(name: str, values: list[str], desc: str) -> ColumnSpec:
        return ColumnSpec(name=name, kind="categorical", dtype="str", categories=values, description=desc)

    yes_no = ["yes", "no"]
    jobs = ["teacher", "health", "services", "at_home", "other"]
    edu = "0 none, 1 primary (4th grade), 2 5th-9th grade, 3 secondary, 4 higher"
    return [
        cat("school", ["GP", "MS"], "GP Gabriel Pereira or MS Mousinho da Silveira"),
        cat("sex", ["F", "M"], "student's sex"),
        num("age", 15, 22, "student's age"),
        cat("address", ["U", "R"], "home address: urban or rural"),
        cat("famsize", ["LE3", "GT3"], "family size <= 3 or > 3"),
        cat("Pstatus", ["T", "A"], "parents living together or apart"),
        num("Medu", 0, 4, f"mother's education ({edu})"),
        num("Fedu", 0, 4, f"father's education ({edu})"),
        cat("Mjob", jobs, "mother's job"),
        cat("Fjob", jobs, "father's job"),
        cat("reason", ["home", "reputation", "course", "other"], "reason to choose this school"),
        cat("guardian", ["mother", "father", "other"], "student's guardian"),
        num("traveltime", 1, 4, "home to school: 1 <15 min, 2 15-30 min, 3 30-60 min, 4 >1 h"),
        num("studytime", 1, 4, "weekly study: 1 <2 h, 2 2-5 h, 3 5-10 h, 4 >10 h"),
        num("failures", 0, 4, "past class failures (n if 1<=n<3, else 4)"),
        cat("schoolsup", yes_no, "extra educational support"),
        cat("famsup", yes_no, "family educational support"),
        cat("paid", yes_no, "extra paid classes in the course subject"),
        cat("activities", yes_no, "extra-curricular activities"),
        cat("nursery", yes_no, "attended nursery school"),
        cat("higher", yes_no, "wants to take higher education"),
        cat("internet", yes_no, "Internet access at home"),
        cat("romantic", yes_no, "in a romantic relationship"),
        num("famrel", 1, 5, "quality of family relationships (1 very bad - 5 excellent)"),
        num("freetime", 1, 5, "free time after school (1 very low - 5 very high)"),
        num("goout", 1, 5, "going out with friends (1 very low - 5 very high)"),
        num("Dalc", 1, 5, "workday alcohol consumption (1 very low - 5 very high)"),
        num("Walc", 1, 5, "weekend alcohol consumption (1 very low - 5 very high)"),
        num("health", 1, 5, "current health status (1 very bad - 5 very good)"),
        num("absences", 0, 93, "number of school absences"),
    ]


def _builtin(name: str) -> DatasetSpec | None:
    if name == "synthetic":
        from .synth import synthetic_spec

        return synthetic_spec()
    if name in ("uci-por", "uci-mat"):
        course = "por" if name == "uci-por" else "mat"
        return DatasetSpec(
            name=name,
            path=f"uci-student-performance/student-{course}.csv",
            sep=";",
            target="G3",
            target_min=0,
            target_max=20,
            # G1 / G2 are the first and second period grades of the same year: they leak the target.
            drop=["G1", "G2"],
            columns=_uci_columns(),
            activity_columns=["studytime", "absences", "health"],  # the feature store's activity view
            description=f"UCI Student Performance ({'Portuguese' if course == 'por' else 'Mathematics'})",
        )
    if name == "spf":
        return DatasetSpec(
            name=name,
            path="kaggle-student-performance-factors/StudentPerformanceFactors.csv",
            target="Exam_Score",
            target_min=0,
            target_max=101,  # the file holds one score of 101
            description="Kaggle StudentPerformanceFactors (has missing values)",
        )
    if name == "sp":
        return DatasetSpec(
            name=name,
            path="kaggle-student-performance-mlr/Student_Performance.csv",
            target="performance_index",
            target_min=0,
            target_max=100,
            renames={
                "Hours Studied": "hours_studied",
                "Previous Scores": "previous_scores",
                "Extracurricular Activities": "extracurricular_activities",
                "Sleep Hours": "sleep_hours",
                "Sample Question Papers Practiced": "sample_question_papers_practiced",
                "Performance Index": "performance_index",
            },
            description="Kaggle Student_Performance (multiple linear regression data)",
        )
    return None


BUILTINS = ("synthetic", "uci-por", "uci-mat", "spf", "sp")


def _builtin_file(spec: DatasetSpec, relative: str, data_root: Path | None) -> Path:
    """The builtin's CSV: under ``data_root`` when it is there, else the shipped copy.

    Raises DatasetError naming the file and DATASET_ROOT when neither has it (the Kaggle files
    are not shipped: their licence is not established).
    """
    tried = [data_root / relative] if data_root is not None else []
    tried.append(SHIPPED_DATA / relative)
    for candidate in tried:
        if candidate.is_file():
            return candidate
    where = " or ".join(str(t) for t in tried)
    raise DatasetError(
        f"dataset '{spec.name}': file {relative} not found (looked in {where}); it does not ship with "
        f"GradeFlow: download it and set DATASET_ROOT to the folder that holds {relative}",
        details={"dataset": spec.name, "path": relative, "variable": "DATASET_ROOT"},
    )


def load_spec(name_or_path: str, data_root: Path | None = None) -> DatasetSpec:
    """A builtin spec by name, or a DatasetSpec read from a JSON file.

    Relative CSV paths are resolved against ``data_root`` then the shipped data (builtins),
    or against the JSON file's folder, ``data_root`` and the shipped data, in that order (JSON
    specs; when none has the file, the JSON file's folder, so loading names that path).
    """
    root = Path(data_root).expanduser() if data_root is not None else None
    spec = _builtin(name_or_path)
    if spec is not None:
        if spec.path is not None:
            spec.path = str(_builtin_file(spec, spec.path, root))
        return spec
    p = Path(name_or_path).expanduser()
    if not p.is_file():
        raise DatasetError(
            f"unknown dataset '{name_or_path}': not a builtin ({', '.join(BUILTINS)}) and no such JSON spec file",
            details={"dataset": name_or_path},
        )
    try:
        spec = DatasetSpec.model_validate_json(p.read_text())
    except ValueError as exc:
        raise DatasetError(f"invalid dataset spec {p}: {exc}") from exc
    if spec.path is not None and not Path(spec.path).is_absolute():
        local = (p.parent / spec.path).resolve()
        others = [b / spec.path for b in (root, SHIPPED_DATA) if b is not None]
        found = [c for c in (local, *others) if c.exists()]
        spec.path = str(found[0] if found else local)
    return spec


# ------------------------------------------------------------------ loading
def _read_csv(spec: DatasetSpec) -> pd.DataFrame:
    assert spec.path is not None
    path = Path(spec.path)
    if not path.is_file():
        raise DatasetError(f"dataset '{spec.name}': file {path} does not exist", details={"path": str(path)})
    if path.stat().st_size == 0:
        raise DatasetError(f"dataset '{spec.name}': file {path} is empty", details={"path": str(path)})
    try:
        df = pd.read_csv(path, sep=spec.sep, na_values=spec.na_values or None, skipinitialspace=True)
    except pd.errors.EmptyDataError as exc:
        raise DatasetError(f"dataset '{spec.name}': file {path} is empty (no header)") from exc
    except pd.errors.ParserError as exc:
        raise DatasetError(
            f"dataset '{spec.name}': cannot parse {path} with sep={spec.sep!r}: {exc}"
        ) from exc
    df.columns = [str(c).strip().lstrip("\ufeff") for c in df.columns]
    if df.shape[1] == 1:
        only = df.columns[0]
        other = [s for s in (",", ";", "\t", "|") if s != spec.sep and s in only]
        hint = f"; the header contains {other[0]!r}: wrong separator? set sep={other[0]!r}" if other else ""
        raise DatasetError(
            f"dataset '{spec.name}': reading {path} with sep={spec.sep!r} gave a single column "
            f"'{only[:80]}'{hint}",
            details={"column": only, "sep": spec.sep},
        )
    if len(df) == 0:
        raise DatasetError(f"dataset '{spec.name}': file {path} has a header but no rows")
    return df


def _bad_numeric(s: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(coerced float series, mask of values present but not numeric)."""
    if pd.api.types.is_bool_dtype(s):
        num = s.astype(float)
        return num, pd.Series(False, index=s.index)
    if pd.api.types.is_numeric_dtype(s):
        return s.astype(float), pd.Series(False, index=s.index)
    stripped = s.astype(object).where(s.isna(), s.astype(str).str.strip())
    stripped = stripped.where(stripped != "", np.nan)
    num = pd.to_numeric(stripped, errors="coerce").astype(float)
    bad = num.isna() & stripped.notna()
    return num, bad


def _raise_bad_numeric(spec: DatasetSpec, col: str, raw: pd.Series, bad: pd.Series) -> None:
    positions = np.flatnonzero(bad.to_numpy())
    pos = int(positions[0])
    value = raw.iloc[pos]
    label = raw.index[pos]  # the file's row number survives dropped rows (RangeIndex from read_csv)
    pos = int(label) if isinstance(label, (int, np.integer)) else pos
    raise DatasetError(
        f"dataset '{spec.name}': numeric column '{col}' has {len(positions)} non-numeric value(s), "
        f"e.g. {value!r} in data row {pos + 1} (file line {pos + 2})",
        details={"column": col, "value": str(value), "row": pos + 1, "count": len(positions)},
    )


def _as_category(s: pd.Series) -> pd.Series:
    """Strings (object dtype) with np.nan for missing."""
    out = s.astype(object)
    mask = s.notna()
    out = out.where(~mask, s[mask].astype(str).str.strip())
    return out.where(mask, np.nan).astype(object)


def _infer_columns(df: pd.DataFrame) -> list[ColumnSpec]:
    cols: list[ColumnSpec] = []
    for c in df.columns:
        s = df[c]
        if pd.api.types.is_bool_dtype(s):
            cols.append(ColumnSpec(name=c, kind="categorical", dtype="bool"))
        elif pd.api.types.is_numeric_dtype(s):
            vals = s.dropna().to_numpy(dtype=float)
            is_int = bool(len(vals)) and bool(np.all(np.mod(vals, 1) == 0))
            cols.append(ColumnSpec(name=c, kind="numeric", dtype="int" if is_int else "float"))
        else:
            num, bad = _bad_numeric(s)
            present = int(s.notna().sum())
            n_bad = int(bad.sum())
            if present and n_bad and (present - n_bad) / present >= 0.95:
                # almost all numbers: a numeric column with a few corrupt cells
                cols.append(ColumnSpec(name=c, kind="numeric", dtype="float"))
            elif present and n_bad == 0:
                cols.append(ColumnSpec(name=c, kind="numeric", dtype="float"))
            else:
                cols.append(ColumnSpec(name=c, kind="categorical", dtype="str"))
    return cols


def load_dataset(spec: DatasetSpec) -> tuple[pd.DataFrame, pd.Series, list[ColumnSpec]]:
    """Read (or generate), clean and validate a dataset: ``(X, y, columns)``.

    Numeric features come back as float64 (NaN for missing), categorical ones as object
    strings (NaN for missing). Raises DatasetError naming the offending column.
    """
    if spec.path is None:
        from .synth import generate

        df = generate(spec.rows, seed=spec.seed, scenario=spec.scenario, severity=spec.severity)
    else:
        df = _read_csv(spec)

    if spec.renames:
        df = df.rename(columns=spec.renames)
    if spec.drop:
        df = df.drop(columns=[c for c in spec.drop if c in df.columns])
    if df.columns.duplicated().any():
        dup = df.columns[df.columns.duplicated()][0]
        raise DatasetError(f"dataset '{spec.name}': column '{dup}' appears twice", details={"column": dup})

    target = spec.target
    if target not in df.columns:
        raise DatasetError(
            f"dataset '{spec.name}': target column '{target}' is missing (columns: {', '.join(df.columns)})",
            details={"column": target},
        )
    y_raw = df[target]
    y, bad = _bad_numeric(y_raw)
    if bad.any():
        _raise_bad_numeric(spec, target, y_raw, bad)
    missing_y = y.isna()
    if missing_y.any():
        logger.warning(
            "dataset %s: dropping %d of %d rows with a missing target '%s'",
            spec.name,
            int(missing_y.sum()),
            len(y),
            target,
        )
        df = df.loc[~missing_y]
        y = y.loc[~missing_y]
    if len(df) == 0:
        raise DatasetError(f"dataset '{spec.name}': no row has a value for target '{target}'")
    if spec.target_min is not None or spec.target_max is not None:
        lo = spec.target_min if spec.target_min is not None else -np.inf
        hi = spec.target_max if spec.target_max is not None else np.inf
        out = (y < lo) | (y > hi)
        if out.any():
            logger.warning("dataset %s: %d target values outside [%s, %s]", spec.name, int(out.sum()), lo, hi)

    features = df.drop(columns=[target])
    if spec.columns is None:
        columns = _infer_columns(features)
    else:
        columns = [c.model_copy() for c in spec.columns]
        missing = [c.name for c in columns if c.name not in features.columns]
        if missing:
            raise DatasetError(
                f"dataset '{spec.name}': declared column '{missing[0]}' is missing"
                + (f" (and {len(missing) - 1} more: {', '.join(missing[1:])})" if len(missing) > 1 else ""),
                details={"column": missing[0], "missing": missing},
            )
        extra = [c for c in features.columns if c not in {s.name for s in columns}]
        if extra:
            logger.info("dataset %s: ignoring undeclared columns %s", spec.name, extra)
    if not columns:
        raise DatasetError(f"dataset '{spec.name}': no feature columns besides the target '{target}'")

    X = pd.DataFrame(index=features.index)
    for col in columns:
        raw = features[col.name]
        if col.kind == "numeric":
            num, bad = _bad_numeric(raw)
            if bad.any():
                _raise_bad_numeric(spec, col.name, raw, bad)
            X[col.name] = num
            lo = col.min if col.min is not None else -np.inf
            hi = col.max if col.max is not None else np.inf
            n_out = int(((num < lo) | (num > hi)).sum())
            if n_out:
                logger.warning(
                    "dataset %s: column %s has %d values outside [%s, %s]",
                    spec.name,
                    col.name,
                    n_out,
                    col.min,
                    col.max,
                )
        else:
            cat = _as_category(raw)
            X[col.name] = cat
            if col.categories is not None:
                unseen = cat.notna() & ~cat.isin(col.categories)
                if unseen.any():
                    logger.warning(
                        "dataset %s: column %s has %d values outside its categories, e.g. %r",
                        spec.name,
                        col.name,
                        int(unseen.sum()),
                        cat[unseen].iloc[0],
                    )
        n_na = int(X[col.name].isna().sum())
        if n_na:
            logger.info(
                "dataset %s: column %s has %d missing values (imputed by the pipeline)",
                spec.name,
                col.name,
                n_na,
            )
    X = X.reset_index(drop=True)
    y = pd.Series(y.to_numpy(dtype=float), name=target)
    return X, y, columns


# ------------------------------------------------------------------ helpers
def fingerprint(df: pd.DataFrame | pd.Series) -> str:
    """sha256 of the frame's canonical content (column order and index ignored)."""
    frame = df.to_frame() if isinstance(df, pd.Series) else df
    frame = frame.reindex(columns=sorted(map(str, frame.columns))).reset_index(drop=True)
    h = hashlib.sha256()
    h.update(",".join(frame.columns).encode())
    h.update(frame.to_csv(index=False, header=False, na_rep="", lineterminator="\n").encode())
    return h.hexdigest()


def feature_specs(columns: list[ColumnSpec], X: pd.DataFrame) -> list[FeatureSpec]:
    """The manifest's feature schema: declared bounds plus what training actually saw."""
    out: list[FeatureSpec] = []
    for col in columns:
        s = X[col.name] if col.name in X.columns else pd.Series(dtype=object)
        if col.kind == "numeric":
            num = pd.to_numeric(s, errors="coerce")
            present = num.dropna()
            out.append(
                FeatureSpec(
                    name=col.name,
                    kind="numeric",
                    dtype=col.dtype,
                    min=col.min,
                    max=col.max,
                    train_min=float(present.min()) if len(present) else None,
                    train_max=float(present.max()) if len(present) else None,
                    description=col.description,
                )
            )
        else:
            seen = sorted({str(v) for v in s.dropna()})
            out.append(
                FeatureSpec(
                    name=col.name,
                    kind="categorical",
                    dtype=col.dtype,
                    categories=seen,
                    description=col.description,
                )
            )
    return out
