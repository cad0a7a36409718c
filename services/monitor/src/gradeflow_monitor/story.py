"""What a person reads first in a run's report: the story of the check in one block.

``story(run, ...)`` gathers it as plain data (the JSON report carries it as is); ``header_html`` renders
it as an HTML block (every value escaped) that ``inject_header`` puts at the top of Evidently's page.
Fields: the model (version, MLflow run id) and the check (run id, time, trigger); the window as a time
range (first and last prediction timestamps, ids, rows); the verdict (drift yes/no, drifted columns,
performance degraded or not); the window's error against the model's performance baseline; the
decision and action (retrain called, cooldown, retrain in flight, none ...) with the trainer job and
its link; a link back to the index.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import quote

from . import guards
from .storage import Run, _aware

INDEX_LINK = "../reports"  # relative to /reports/{id}: works behind a path prefix too

# a person's words for the action stored on the run (action, skip code) -> label
_SKIP_LABELS = {
    guards.SKIP_COOLDOWN: "cooldown: no retrain yet",
    guards.SKIP_IN_FLIGHT: "retrain in flight",
    guards.SKIP_LABELLED: "waiting for new labels",
    guards.SKIP_WINDOW: "window too small",
    guards.SKIP_BACKOFF: "trainer unreachable: backing off",
    guards.SKIP_AUTO_OFF: "alert only (AUTO_RETRAIN off)",
    guards.SKIP_SUPERSEDED: "new model promoted: judged on its own traffic next",
    guards.SKIP_ROLLOUT: "challenger under rollout: its decision comes first",
}
SETTLED = "settled"  # action code of a drift the serving model was already validated on
# action code of a drift against the rows the model was promoted on, not backed by degradation, seen by
# one check only: the next check must see it too before it retrains
UNCONFIRMED = "unconfirmed"


def action_label(action: str, code: str = "") -> str:
    if action == guards.TRIGGERED:
        return "retrain called"
    if action in (guards.SKIPPED, guards.ALERT_ONLY):
        return _SKIP_LABELS.get(code, "retrain skipped")
    if action == guards.FAILED:
        return "retrain call failed"
    if action == guards.NO_VERDICT:
        return "none (no verdict)"
    if action == guards.ERROR:
        return "error"
    if code == SETTLED:
        return "none (settled: drift the model was validated on)"
    if code == UNCONFIRMED:
        return "none yet (drift without degradation: the next check must confirm it)"
    return "none"


def job_url(trainer_url: str, job_id: str | None) -> str | None:
    """``{trainer}/jobs/{id}`` when a trainer URL is configured (http/https only) and a job is named."""
    base = (trainer_url or "").rstrip("/")
    if not job_id or not base.lower().startswith(("http://", "https://")):
        return None
    return f"{base}/jobs/{quote(job_id, safe='')}"


def _iso(dt: datetime | None) -> str | None:
    dt = _aware(dt)
    return dt.isoformat() if dt else None


def story(
    run: Run,
    *,
    model_run_id: str | None = None,
    job_id: str | None = None,
    trainer_url: str = "",
    performance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The header's fields as JSON-ready data. ``job_id``: the job the action names (called, or the
    one in flight / in cooldown); ``performance``: ``PerformanceResult.as_dict()``."""
    perf = performance or {}
    job = run.retrain_job_id or job_id
    role = None
    if job:
        if run.retrain_job_id:
            role = "called"
        elif run.action_code == guards.SKIP_IN_FLIGHT:
            role = "in flight"
        elif run.action_code == guards.SKIP_SUPERSEDED:
            role = "promoted a newer version"
        else:
            role = "last retrain"
    drifted = run.drifted_columns
    return {
        "run_id": run.id,
        "model_version": run.model_version,
        "model_run_id": model_run_id,
        "checked_at": _iso(run.finished_at or run.started_at),
        "trigger": run.trigger,
        "window": {
            "first_at": _iso(run.window_first_at),
            "last_at": _iso(run.window_last_at),
            "first_id": run.window_first_id,
            "last_id": run.window_last_id,
            "rows": run.rows,
            "labelled_rows": run.labelled_rows,
        },
        "verdict": {
            "status": run.status,
            "drift_verdict": run.drift_share is not None,
            "dataset_drift": bool(run.dataset_drift),
            "drifted_columns": len(drifted),
            "columns": len(run.columns),
            "drifted": drifted,
            "drift_share": run.drift_share,
            "drift_share_threshold": run.drift_share_threshold,
            "reference": run.reference_set,
            "reference_rows": run.reference_rows,
            "degraded": bool(run.degraded),
            "performance_verdict": perf.get("ratio") is not None
            and 0 < perf.get("labelled_rows", 0) >= perf.get("min_labelled_rows", 0),
            "summary": run.verdict_reason,
        },
        "performance_vs_baseline": {
            "window_mae": run.mae,
            "baseline_mae": perf.get("baseline_mae"),
            "ratio": perf.get("ratio"),
            "degradation_ratio": perf.get("degradation_ratio"),
            "labelled_rows": run.labelled_rows,
            "min_labelled_rows": perf.get("min_labelled_rows"),
            "baseline_set": perf.get("baseline_set"),
            "baseline_rows": perf.get("baseline_rows"),
            "baseline_measured_at": perf.get("baseline_measured_at"),
            "test_mae": perf.get("test_mae"),
            "reason": perf.get("reason", ""),
        },
        "action": {
            "action": run.action,
            "label": action_label(run.action, run.action_code),
            "code": run.action_code,
            "reason": run.action_reason,
            "job_id": job,
            "job_role": role,
            "job_url": job_url(trainer_url, job),
        },
        "links": {
            "index": INDEX_LINK,
            "html": f"/reports/{run.id}",
            "json": f"/reports/{run.id}.json",
        },
    }


def _e(v: Any) -> str:
    return escape("—" if v is None or v == "" else str(v), quote=True)


def _num(v: Any, digits: int = 3) -> str:
    return _e(None if v is None else f"{float(v):.{digits}f}")


def _time(v: str | None) -> str:
    """An ISO timestamp as 'YYYY-MM-DD HH:MM:SS UTC'."""
    if not v:
        return "—"
    return _e(v.replace("T", " ")[:19] + " UTC")


_BOX = (
    "font-family:sans-serif;font-size:14px;line-height:1.45;margin:0 0 12px 0;padding:12px 16px;"
    "border-bottom:2px solid #888;background:#f6f6f6;color:#222"
)
_BAD, _GOOD = "color:#b03a2e;font-weight:bold", "color:#1e8449;font-weight:bold"


def header_html(s: dict[str, Any]) -> str:
    """The story as one HTML block; every value is escaped (links: escaped attribute values)."""
    w, v, p, a = s["window"], s["verdict"], s["performance_vs_baseline"], s["action"]
    drift = (
        f'<span style="{_BAD}">drift: yes</span> ({_e(v["drifted_columns"])} of {_e(v["columns"])} columns: '
        f"{_e(', '.join(v['drifted']))})"
        if v["dataset_drift"]
        else (
            f'<span style="{_GOOD}">drift: no</span> ({_e(v["drifted_columns"])} of {_e(v["columns"])} '
            "columns drifted)"
            if v["drift_verdict"]
            else "drift: no verdict"
        )
    )
    if v["drift_verdict"] and v["reference"]:
        drift += f" vs the {_e(v['reference'])} reference ({_e(v['reference_rows'])} rows)"
    if v["degraded"]:
        perf_word = f'<span style="{_BAD}">performance: degraded</span>'
    elif v["performance_verdict"]:
        perf_word = f'<span style="{_GOOD}">performance: not degraded</span>'
    else:
        perf_word = "performance: no verdict"
    base = f"{_num(p['baseline_mae'])} ({_e(p['baseline_set'])}"
    if p["baseline_rows"] is not None:
        base += f", {_e(p['baseline_rows'])} rows"
    if p["baseline_measured_at"]:
        base += f", measured {_time(p['baseline_measured_at'])}"
    base += ")"
    ratio = "—" if p["ratio"] is None else f"{float(p['ratio']):.2f}"
    limit = "" if p["degradation_ratio"] is None else f" (degraded above {_e(p['degradation_ratio'])}x)"
    job = "no job"
    if a["job_id"]:
        jid = _e(a["job_id"])
        job = (
            f'job <a href="{_e(a["job_url"])}" rel="noreferrer">{jid}</a> ({_e(a["job_role"])})'
            if a["job_url"]
            else f"job {jid} ({_e(a['job_role'])})"
        )
    rows = [
        ("Model", f"v{_e(s['model_version'])} · MLflow run {_e(s['model_run_id'])}"),
        ("Check", f"run {_e(s['run_id'])} · {_time(s['checked_at'])} · trigger {_e(s['trigger'])}"),
        (
            "Window",
            f"{_time(w['first_at'])} → {_time(w['last_at'])} · {_e(w['rows'])} predictions, "
            f"{_e(w['labelled_rows'])} labelled",
        ),
        ("Verdict", f"{drift} · {perf_word}"),
        (
            "Performance",
            f"window MAE {_num(p['window_mae'])} vs baseline MAE {base} · ratio {_e(ratio)}{limit} · "
            f"{_e(p['labelled_rows'])} rows labelled",
        ),
        ("Decision", f"<b>{_e(a['label'])}</b> [{_e(a['action'])}] · {job}"),
        ("Why", _e(a["reason"])),
    ]
    json_href = _e(f"{s['run_id']}.json")  # relative to /reports/{id}
    body = "".join(
        f'<tr><th style="text-align:left;padding:2px 12px 2px 0;vertical-align:top">{k}</th>'
        f'<td style="padding:2px 0">{val}</td></tr>'
        for k, val in rows
    )
    return (
        f'<section id="gradeflow-story" style="{_BOX}">'
        f'<div style="margin-bottom:6px"><a href="{_e(s["links"]["index"])}">← all checks</a> · '
        f'<a href="{json_href}">JSON</a></div>'
        f'<div style="font-size:17px;font-weight:bold;margin-bottom:4px">GradeFlow monitor check '
        f"{_e(s['run_id'])}: {_e(a['label'])}</div>"
        f'<table style="border-collapse:collapse">{body}</table></section>'
    )


def inject_header(page: str, header: str) -> str:
    """``header`` as the first thing inside ``<body>`` (prepended when the page has no body tag)."""
    i = page.find("<body")
    if i < 0:
        return header + page
    j = page.find(">", i)
    return page[: j + 1] + header + page[j + 1 :]


def standalone_page(header: str, note: str) -> str:
    """A page with the header only, for a run without an Evidently report (no drift verdict)."""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>GradeFlow monitor check</title></head>"
        f"<body>{header}<p style='font-family:sans-serif'>{escape(note)}</p></body></html>"
    )
