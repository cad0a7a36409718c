"""Request validation built from the serving model's manifest (plain Python, no pydantic per request).

``RecordValidator(manifest)`` checks parsed JSON records against the feature schema and builds the
column arrays the predict paths need. Rules (each error names the field, the rule and, for batches,
the record index):

* ``missing``: every feature of the schema must be present as a key; ``null`` is allowed for a
  nullable feature (the pipeline imputes it), refused (rule ``null``) otherwise.
* ``extra_forbidden``: a key that is not a feature of the serving model.
* ``type``: numeric features take JSON numbers (``int`` features: integral numbers; booleans are
  not numbers), categorical features take strings, ``bool`` features take true/false.
* ``greater_than_equal`` / ``less_than_equal``: a numeric value outside the manifest's hard
  ``min``/``max`` bounds.
* ``string_too_long``: a categorical value longer than ``max_string_length`` characters.
* unseen categories are accepted (the encoder's unknown handling predicts them) and counted.

Keys the client chose (unknown fields) are echoed at most MAX_FIELD_ECHO characters long.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np
import orjson

from gradeflow_shared.errors import MAX_FIELD_ECHO, MAX_PROBLEMS, InvalidInput
from gradeflow_shared.manifest import MISSING_CATEGORY, FeatureSpec, Manifest

DEFAULT_MAX_STRING_LENGTH = 200  # the MAX_STRING_LENGTH setting's default
_NONE = type(None)
_NUM_TYPES = frozenset({int, float, _NONE})
_STR_TYPES = frozenset({str, _NONE})


@dataclass(frozen=True)
class _Feature:
    name: str
    numeric: bool
    dtype: str
    nullable: bool
    lo: float | None
    hi: float | None
    categories: frozenset[str] | None


@dataclass
class Batch:
    """Validated records as columns: numeric -> float32 [N,1] (NaN = missing), categorical -> object [N,1]."""

    n: int
    # feature -> list or tuple of values (float64 array for numeric columns of big batches)
    columns: dict[str, Any]
    unseen: dict[str, int] = field(default_factory=dict)  # feature -> count of unseen categories

    def onnx_feed(self, validator: RecordValidator) -> dict[str, np.ndarray]:
        feed: dict[str, np.ndarray] = {}
        for f in validator.features:
            col = self.columns[f.name]
            if f.numeric:
                feed[f.name] = np.asarray(col, dtype=np.float32).reshape(self.n, 1)
            else:
                feed[f.name] = object_column(col, MISSING_CATEGORY).reshape(self.n, 1)
        return feed


def object_column(col: Any, missing: Any) -> np.ndarray:
    """A 1-d object array of the values in ``col`` with None replaced by ``missing`` (vectorised)."""
    arr = np.empty(len(col), dtype=object)
    arr[:] = col
    if None in col:
        arr[np.equal(arr, None)] = missing  # type: ignore[call-overload]
    return arr


def echo_key(key: Any) -> str:
    """A client-chosen key as echoed in an error (truncated: it may be huge)."""
    k = str(key)
    return k if len(k) <= MAX_FIELD_ECHO else k[:MAX_FIELD_ECHO] + "..."


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


class RecordValidator:
    """Validates records against one manifest's feature schema (immutable, shared by threads)."""

    def __init__(
        self, manifest: Manifest | list[FeatureSpec], max_string_length: int = DEFAULT_MAX_STRING_LENGTH
    ) -> None:
        """``manifest``: the serving model's (or a bare list of features: the feature store's schema)."""
        self.max_string_length = max_string_length
        specs = manifest if isinstance(manifest, list) else manifest.features
        self.features: tuple[_Feature, ...] = tuple(self._compile(f) for f in specs)
        self.feature_names: tuple[str, ...] = tuple(f.name for f in self.features)
        self.names: frozenset[str] = frozenset(self.feature_names)
        # one getter per feature: a column is list(map(getter, records)), a loop in C
        self._getters: tuple[Callable[[dict[str, Any]], Any], ...] = tuple(
            itemgetter(f.name) for f in self.features
        )

    @staticmethod
    def _compile(f: FeatureSpec) -> _Feature:
        return _Feature(
            name=f.name,
            numeric=f.kind == "numeric",
            dtype=f.dtype,
            nullable=f.nullable,
            lo=f.min,
            hi=f.max,
            categories=frozenset(f.categories) if f.categories is not None else None,
        )

    def validate(self, records: list[Any], batch: bool, partial: bool = False) -> Batch:
        """Check every record; raise InvalidInput (422) listing the problems, else return the columns.

        ``partial``: a record may leave features out (feature store readings carry some features only;
        an absent one is None in the columns). Big full batches take a column-wise fast path (set of value
        types + numpy bound checks); any doubt falls back to the record-by-record path, which produces the
        exact error list."""
        if partial:
            return self._validate_records(records, batch, partial=True)
        if len(records) > 8:
            fast = self._validate_columns(records)
            if fast is not None:
                return fast
        return self._validate_records(records, batch)

    def _validate_columns(self, records: list[Any]) -> Batch | None:
        """The fast path: no Python work per record (C-level map/zip/set, numpy); None = let the
        record-by-record path decide (and name the field and index of every problem)."""
        if set(map(type, records)) != {dict} or set(map(len, records)) != {len(self.names)}:
            return None  # not all objects, or a missing/extra key somewhere
        columns: dict[str, Any] = {}
        unseen: dict[str, int] = {}
        for f, get in zip(self.features, self._getters, strict=True):
            name = f.name
            try:
                col = list(map(get, records))
            except KeyError:
                return None  # a key of the schema is missing (and an unknown one is there instead)
            if f.numeric:
                types = set(map(type, col))
                if (_NONE in types and not f.nullable) or f.dtype == "bool" or not types <= _NUM_TYPES:
                    return None
                arr = np.array(col, dtype=np.float64)  # None -> NaN
                present = arr[~np.isnan(arr)] if _NONE in types else arr
                if not np.isfinite(present).all():
                    return None
                if f.dtype == "int" and float in types and not (present == np.floor(present)).all():
                    return None
                if (f.lo is not None and (present < f.lo).any()) or (
                    f.hi is not None and (present > f.hi).any()
                ):
                    return None
                columns[name] = arr
            else:
                try:
                    distinct = set(col)  # few distinct values: check their types, not every value's
                except TypeError:
                    return None  # an array or object value
                types = set(map(type, distinct))  # (a str never equals a non-str: none hides another)
                if (_NONE in types and not f.nullable) or not types <= _STR_TYPES:
                    return None
                if max(map(len, distinct.difference((None,))), default=0) > self.max_string_length:
                    return None
                cats = f.categories
                if cats is not None:
                    new = distinct.difference(cats)
                    new.discard(None)
                    if new:
                        unseen[name] = (
                            sum(map(col.count, new)) if len(new) <= 8 else sum(v in new for v in col)
                        )
                columns[name] = col
        return Batch(n=len(records), columns=columns, unseen=unseen)

    def _validate_records(self, records: list[Any], batch: bool, partial: bool = False) -> Batch:
        n = len(records)
        columns: dict[str, list[Any]] = {f.name: [None] * n for f in self.features}
        unseen: dict[str, int] = {}
        errors: list[dict[str, Any]] = []
        names = self.names
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                errors.append(
                    self._err(batch, i, None, "type", f"record must be a JSON object, got {_type_name(rec)}")
                )
                if len(errors) >= MAX_PROBLEMS:
                    break
                continue
            if len(rec) != len(names) or not names.issuperset(rec):
                for key in rec:
                    if key not in names:
                        errors.append(
                            self._err(
                                batch,
                                i,
                                echo_key(key),
                                "extra_forbidden",
                                "unknown field (not a model feature)",
                            )
                        )
                        if len(errors) >= MAX_PROBLEMS:
                            break
            for f in self.features:
                name = f.name
                if name not in rec:
                    if not partial:
                        errors.append(self._err(batch, i, name, "missing", "field required"))
                    continue
                v = rec[name]
                if v is None:
                    if not f.nullable:
                        errors.append(self._err(batch, i, name, "null", "value must not be null"))
                    continue  # columns already hold None (NaN / missing category at feed time)
                if f.numeric:
                    if f.dtype == "bool":
                        if not isinstance(v, bool):
                            errors.append(
                                self._err(batch, i, name, "type", f"expected boolean, got {_type_name(v)}")
                            )
                            continue
                        x = 1.0 if v else 0.0
                    else:
                        if isinstance(v, bool) or not isinstance(v, (int, float)):
                            errors.append(
                                self._err(batch, i, name, "type", f"expected number, got {_type_name(v)}")
                            )
                            continue
                        x = float(v)
                        if not math.isfinite(x):
                            errors.append(self._err(batch, i, name, "type", "expected a finite number"))
                            continue
                        if f.dtype == "int" and not x.is_integer():
                            errors.append(
                                self._err(batch, i, name, "int_type", f"expected an integer, got {v}")
                            )
                            continue
                    if f.lo is not None and x < f.lo:
                        errors.append(
                            self._err(batch, i, name, "greater_than_equal", f"must be >= {f.lo:g}, got {v}")
                        )
                        continue
                    if f.hi is not None and x > f.hi:
                        errors.append(
                            self._err(batch, i, name, "less_than_equal", f"must be <= {f.hi:g}, got {v}")
                        )
                        continue
                    columns[name][i] = x
                else:
                    if not isinstance(v, str):
                        errors.append(
                            self._err(batch, i, name, "type", f"expected string, got {_type_name(v)}")
                        )
                        continue
                    if len(v) > self.max_string_length:
                        errors.append(
                            self._err(
                                batch,
                                i,
                                name,
                                "string_too_long",
                                f"at most {self.max_string_length} characters, got {len(v)}",
                            )
                        )
                        continue
                    if f.categories is not None and v not in f.categories:
                        unseen[name] = unseen.get(name, 0) + 1
                    columns[name][i] = v
            if len(errors) >= MAX_PROBLEMS:
                break
        if errors:
            errors = errors[:MAX_PROBLEMS]
            summary = "; ".join(
                (f"records[{e['index']}]." if "index" in e else "")
                + f"{e['field'] or '<record>'}: {e['message']}"
                for e in errors[:5]
            )
            if len(errors) > 5:
                summary += f"; ... ({len(errors)} problems)"
            raise InvalidInput(summary, details=errors)
        return Batch(n=n, columns=columns, unseen=unseen)

    @staticmethod
    def _err(batch: bool, index: int, fld: str | None, rule: str, message: str) -> dict[str, Any]:
        e: dict[str, Any] = {"field": fld or "", "rule": rule, "message": message}
        if batch:
            e["index"] = index
        return e

    def json_schema(self, manifest: Manifest | list[FeatureSpec]) -> dict[str, Any]:
        """JSON schema of one record (for GET /model and the OpenAPI docs)."""
        specs = manifest if isinstance(manifest, list) else manifest.features
        props: dict[str, Any] = {}
        for spec in specs:
            p: dict[str, Any]
            if spec.kind == "numeric":
                p = {
                    "type": "boolean"
                    if spec.dtype == "bool"
                    else ("integer" if spec.dtype == "int" else "number")
                }
                if spec.min is not None:
                    p["minimum"] = spec.min
                if spec.max is not None:
                    p["maximum"] = spec.max
            else:
                p = {"type": "string", "maxLength": self.max_string_length}
                if spec.categories:
                    p["examples"] = spec.categories[:20]
                    p["description"] = "known categories: " + ", ".join(spec.categories[:50])
            if spec.nullable:
                p = {
                    "anyOf": [p, {"type": "null"}],
                    **({"description": p["description"]} if "description" in p else {}),
                }
            if spec.description:
                p["title"] = spec.description
            props[spec.name] = p
        return {
            "type": "object",
            "properties": props,
            "required": [f.name for f in specs],
            "additionalProperties": False,
        }


def load_json(body: bytes) -> Any:
    """The parsed body (orjson: strict JSON, no NaN/Infinity); InvalidInput (json_invalid) otherwise."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(
            f"body is not valid JSON: {exc}",
            details=[{"field": "", "rule": "json_invalid", "message": str(exc)}],
        ) from None


def _batch_list(data: dict[str, Any], key: str, max_records: int) -> list[Any]:
    """The array under ``key`` of a batch body (the only key allowed there), bounded in length."""
    extra = [echo_key(k) for k in data if k != key][:MAX_PROBLEMS]
    if extra:
        raise InvalidInput(
            f"{extra[0]}: unknown field next to '{key}'",
            details=[{"field": k, "rule": "extra_forbidden", "message": "unknown field"} for k in extra],
        )
    items = data[key]
    if not isinstance(items, list):
        raise InvalidInput(
            f"{key}: must be an array",
            details=[{"field": key, "rule": "list_type", "message": "must be an array"}],
        )
    if not items:
        raise InvalidInput(
            f"{key}: at least one item required",
            details=[{"field": key, "rule": "too_short", "message": "at least 1 item"}],
        )
    if len(items) > max_records:
        raise InvalidInput(
            f"{key}: at most {max_records} items per request, got {len(items)}",
            details=[{"field": key, "rule": "too_long", "message": f"at most {max_records}"}],
        )
    return items


def parse_body(body: bytes, names: frozenset[str], max_records: int) -> tuple[list[Any], bool]:
    """The records of a POST /predict body and whether it was a batch.

    A batch is ``{"records": [...]}`` or ``{"student_ids": [...]}`` (each id becomes the record
    ``{"student_id": id}``, resolved from the feature store later). ``names`` are the serving model's
    features (a model with a feature called ``records`` takes one record only). Raises InvalidInput for a
    body that is not JSON, not an object, or a bad batch."""
    data = load_json(body)
    if isinstance(data, dict):
        if "records" in data and "records" not in names:
            return _batch_list(data, "records", max_records), True
        if "student_ids" in data and "student_ids" not in names:
            return [{"student_id": sid} for sid in _batch_list(data, "student_ids", max_records)], True
        return [data], False
    raise InvalidInput(
        'body must be a JSON object (one record) or {"records": [...]} or {"student_ids": [...]}',
        details=[{"field": "", "rule": "model_type", "message": "expected a JSON object"}],
    )


def example_record(manifest: Manifest) -> dict[str, Any]:
    """A plausible record for the docs (mid-range numbers, the first known category)."""
    rec: dict[str, Any] = {}
    for f in manifest.features:
        if f.kind == "numeric":
            if f.dtype == "bool":
                rec[f.name] = False
                continue
            lo = f.train_min if f.train_min is not None else f.min
            hi = f.train_max if f.train_max is not None else f.max
            x = ((lo or 0.0) + (hi if hi is not None else (lo or 0.0) + 2.0)) / 2
            rec[f.name] = int(round(x)) if f.dtype == "int" else round(x, 2)
        else:
            rec[f.name] = (f.categories or ["unknown"])[0]
    return rec
