"""Cross-service request/response models (used by both ends of every HTTP call)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool


def _json_integer(value: Any) -> Any:
    """A JSON integer (2 or 2.0), not a string or a boolean that pydantic's lax mode would turn into one."""
    if isinstance(value, (str, bool, bytes)):
        raise ValueError("expected a JSON integer")
    return value


# admin input: a JSON number with no fraction, never "3" or true (JSON Schema's "integer" allows 3.0)
JsonInteger = Annotated[int, BeforeValidator(_json_integer)]

JobState = Literal["queued", "running", "succeeded", "failed"]


# ---------------------------------------------------------------- trainer
class RetrainRequest(BaseModel):
    """Body of the trainer's ``POST /retrain``."""

    reason: str = Field(
        default="manual", max_length=2000, description="Why a retrain is asked for (shown in the job)."
    )
    monitor_run_id: str | None = Field(
        default=None, max_length=100, description="The monitor run that triggered it."
    )
    use_production_data: StrictBool = Field(
        default=True, description="Also train on labelled production data pulled from inference."
    )


class GateDecision(BaseModel):
    """The approval gate's verdict on a challenger."""

    promoted: bool
    reason: str
    challenger_version: int | None = None
    champion_version: int | None = None
    metric: str = "rmse"
    margin: float = 0.0
    challenger: dict[str, float] = Field(default_factory=dict)  # metrics per evaluation set
    champion: dict[str, float] = Field(default_factory=dict)
    evaluated_on: list[str] = Field(default_factory=list)  # e.g. ["base_holdout", "recent_labelled"]
    # the evidence (all optional: decisions recorded before it existed still parse)
    method: str | None = None  # "paired-bootstrap" (recent labelled rows decide) or "margin"
    rows: int | None = None  # recent labelled rows both models were compared on, row by row
    min_rows: int | None = None  # GATE_MIN_ROWS when it applied
    effect: float | None = None  # mean per-row squared-error difference, challenger - champion (< 0: better)
    effect_low: float | None = None  # its paired bootstrap interval
    effect_high: float | None = None
    confidence: float | None = None  # of that interval (GATE_CONFIDENCE)
    resamples: int | None = None  # bootstrap resamples
    effect_relative: float | None = None  # relative RMSE improvement on the deciding set (> 0: better)
    p_value: float | None = None  # one-sided paired t-test of the same differences
    labels_needed: int | None = None  # more labelled production rows needed before a gain could be shown
    drifted: bool | None = None  # recent data drifted from the base holdout (the guard's verdict)
    # both populations' errors of both models: {"recent_labelled": {"challenger_rmse": ..}, "base_holdout": ..}
    errors: dict[str, dict[str, float]] = Field(default_factory=dict)


class MixScore(BaseModel):
    """One candidate training mix, scored on time-ordered validation folds of the training production rows."""

    name: str
    val_mae: float
    val_rmse: float
    validation_rows: int


class TrainingMix(BaseModel):
    """How the training rows were mixed (base data, labelled production rows) and why."""

    chosen: str  # e.g. weight_3, balanced, production_only, residual_boost, auto_weight (fixed weight)
    kind: Literal["base_only", "weighted", "production_only", "residual"]
    production_weight: float = 0.0  # sample weight of a production row (weighted mixes)
    reason: str
    selected: bool = False  # False = no validation (too few rows, TRAIN_MIX off): the fixed weight
    candidates: list[MixScore] = Field(default_factory=list)


class TrainResult(BaseModel):
    run_id: str
    version: int
    model_name: str
    metrics: dict[str, float]
    decision: GateDecision
    exported: bool
    export_dir: str | None = None
    rows: dict[str, int] = Field(default_factory=dict)  # train / test / production rows
    mix: TrainingMix | None = None  # the training mix chosen (None: no production rows used)


class Job(BaseModel):
    """A trainer job as answered by ``POST /retrain`` and ``GET /jobs/{id}``."""

    id: str
    kind: str = "retrain"
    state: JobState
    progress: float = 0.0  # 0..1
    stage: str = ""
    reason: str = ""
    monitor_run_id: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: TrainResult | None = None
    error: str | None = None


MAX_VERSION = 2**31 - 1  # registry versions are 32-bit integers


class PromoteRequest(BaseModel):
    version: JsonInteger = Field(ge=1, le=MAX_VERSION, description="Model version to make champion.")
    reason: str = Field(default="manual promotion", max_length=500, description="Recorded with the event.")


class RollbackRequest(BaseModel):
    reason: str = Field(default="manual rollback", max_length=500, description="Recorded with the event.")


class PromotionEvent(BaseModel):
    at: datetime
    model_name: str
    version: int
    previous_version: int | None
    # rollout_* (progressive delivery, see gradeflow_shared.rollout): only rollout_promote moves the alias
    action: Literal[
        "promote",
        "rollback",
        "gate",
        "rollout_start",
        "rollout_stage",
        "rollout_promote",
        "rollout_rollback",
        "rollout_expire",
        "rollout_abort",
    ]
    reason: str
    event_id: str | None = None  # derived from the promotion's intent: a repair never appends it twice


# ---------------------------------------------------------------- inference
class PredictionItem(BaseModel):
    request_id: str
    prediction: float


class PredictResponse(BaseModel):
    model_version: int
    predictions: list[PredictionItem]


# Labels beyond this magnitude are refused even when the model declares no target bounds (sums of such
# values overflow to infinity in any error metric).
LABEL_ABS_MAX = 1e9


class FeedbackItem(BaseModel):
    """One true outcome for a logged prediction (a label: privileged input, checked strictly)."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(
        min_length=1, max_length=64, strict=True, description="A request id answered by POST /predict."
    )
    actual: float = Field(
        strict=True,
        allow_inf_nan=False,
        ge=-LABEL_ABS_MAX,
        le=LABEL_ABS_MAX,
        description="The true outcome: a finite JSON number (not a string, not a boolean) inside the "
        "serving model's target bounds (manifest target_min/target_max).",
    )


class FeedbackRequest(BaseModel):
    """Body of inference's ``POST /feedback`` (needs the labeller or admin bearer token)."""

    model_config = ConfigDict(extra="forbid")

    items: list[FeedbackItem] = Field(min_length=1, max_length=10_000)
    overwrite: bool = Field(
        default=False,
        strict=True,
        description="Replace labels given before (the earlier values are kept in an audit trail); "
        "without it a second label for a prediction is refused with 409.",
    )


class FeedbackResponse(BaseModel):
    accepted: int = Field(description="Items stored: their request id matched a logged prediction.")
    unknown_request_ids: list[str] = Field(
        default_factory=list, description="Request ids with no logged prediction (not stored)."
    )
    overwritten_request_ids: list[str] = Field(
        default_factory=list, description="Request ids whose earlier label was replaced (overwrite: true)."
    )


class LoggedPrediction(BaseModel):
    """One row of ``GET /predictions``."""

    id: int
    request_id: str
    ts: datetime
    model_version: int
    features: dict[str, Any]
    prediction: float
    latency_ms: float
    actual: float | None = None
    feedback_at: datetime | None = None
    # progressive delivery: which model answered (model_version is that model's) and, when the request was
    # shadowed, the challenger's prediction on the same record (None: not shadowed)
    arm: Literal["champion", "candidate"] = "champion"
    shadow_version: int | None = None
    shadow_prediction: float | None = None


# The columns of a logged prediction other than its features (a frame of the log = features + these).
LOG_META_COLUMNS: tuple[str, ...] = tuple(n for n in LoggedPrediction.model_fields if n != "features")
# A logged record's id is (its request's batch id) * RECORD_ID_STRIDE + (its position in the batch), so
# ids ascend in log order and one request holds at most RECORD_ID_STRIDE records.
RECORD_ID_STRIDE = 10_000


class PredictionPage(BaseModel):
    items: list[LoggedPrediction]
    next_since_id: int | None = Field(description="Pass as since_id to get the next page; None at the end.")


# ---------------------------------------------------------------- monitor
class DriftVerdict(BaseModel):
    """``GET /drift`` of the monitor (latest run)."""

    run_id: str | None
    at: datetime | None = None
    model_version: int | None = None
    rows: int = 0
    drift_share: float | None = None
    dataset_drift: bool = False
    degraded: bool = False
    drifted_columns: list[str] = Field(default_factory=list)
    performance: dict[str, float] = Field(default_factory=dict)
    action: str = "none"
    action_reason: str = ""
    report_url: str | None = None
    retrain_job_id: str | None = None
