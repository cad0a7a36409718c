"""The POST /predict answer as bytes, built without Python code per record."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import orjson

from ..predlog.ids import ID_STRIDE


@functools.lru_cache(maxsize=1)
def _index_parts() -> tuple[bytes, ...]:
    # the JSON text after the batch key of record i's request id, up to its prediction value
    return tuple(b'%04x","prediction":' % i for i in range(ID_STRIDE))


def predict_response(version: int, batch_key: str, predictions: Sequence[float]) -> bytes:
    """The JSON answer of POST /predict.

    Byte for byte ``orjson.dumps({"model_version": version, "predictions": [{"request_id": rid,
    "prediction": p}, ...]})`` with ``rid`` from ids.request_ids(batch_key, n): orjson encodes the
    predictions once, and the records are joined from a cached table of index suffixes (slice
    assignments and one bytes.join, all in C)."""
    n = len(predictions)
    if n == 0 or n > ID_STRIDE:
        raise ValueError(f"a batch holds 1..{ID_STRIDE} predictions, got {n}")
    key = batch_key.encode()
    values = orjson.dumps(predictions, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
    parts = [b'},{"request_id":"' + key] * (3 * n)
    parts[0] = b'{"model_version":%d,"predictions":[{"request_id":"%s' % (version, key)
    parts[1::3] = _index_parts()[:n]
    parts[2::3] = values
    parts.append(b"}]}")
    return b"".join(parts)
