"""The 'bare' peer: FastAPI + the scikit-learn pipeline, nothing else (no validation, no log).

BARE_MODEL=path/to/model.joblib uvicorn bench.bare_app:app  (or: python bench/bare_app.py PORT MODEL)
"""

from __future__ import annotations

import os
import sys
from typing import Any

import joblib
import pandas as pd
import uvicorn
from fastapi import FastAPI

app = FastAPI()
_model: dict[str, Any] = {}


@app.on_event("startup")
def _load() -> None:
    _model["pipe"] = joblib.load(os.environ["BARE_MODEL"])


@app.post("/predict")
def predict(body: dict[str, Any]) -> dict[str, Any]:
    records = body.get("records", [body])
    pred = _model["pipe"].predict(pd.DataFrame.from_records(records))
    return {"predictions": [float(p) for p in pred]}


if __name__ == "__main__":
    os.environ["BARE_MODEL"] = sys.argv[2]
    uvicorn.run(
        app, host="127.0.0.1", port=int(sys.argv[1]), workers=1, access_log=False, log_level="warning"
    )
