"""The HTML index of runs (newest first) with a small inline SVG chart of drift share and window MAE,
and the security headers of every page the monitor serves."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from html import escape

from . import story
from .storage import Run, _aware

INDEX_STYLE = (
    "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:13px}"
    "td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}th{background:#eee}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(INDEX_STYLE.encode()).digest()).decode()
_LOCKED = "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
# the index: no script at all, only its own style block (by hash) and the inline SVG
INDEX_CSP = f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; {_LOCKED}"
# Evidently's offline report inlines its JavaScript bundle, its data, styles and its icon font (data:),
# so inline script and style must run; what keeps request data out of those scripts is drift.UNSEEN.
# Nothing may be loaded from or sent to anywhere (no connect-src, no external src).
REPORT_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; font-src data:; "
    f"img-src data: blob:; {_LOCKED}"
)


def page_headers(csp: str | None = None) -> dict[str, str]:
    """Headers of a served page or file: no MIME sniffing, and its Content-Security-Policy."""
    headers = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
    if csp:
        headers["Content-Security-Policy"] = csp
    return headers


def time_range(first: datetime | None, last: datetime | None) -> str:
    """A window's time range: 'YYYY-MM-DD HH:MM:SS – HH:MM:SS UTC' (the date again when it changes)."""
    first, last = _aware(first), _aware(last)
    if first is None or last is None:
        return ""
    a, b = first.astimezone(UTC), last.astimezone(UTC)
    end = b.strftime("%H:%M:%S") if a.date() == b.date() else b.strftime("%Y-%m-%d %H:%M:%S")
    return f"{a.strftime('%Y-%m-%d %H:%M:%S')} – {end} UTC"


def _xs(n: int, width: int) -> list[float]:
    """x of each run, oldest left; a single run sits in the middle."""
    if n == 1:
        return [width / 2]
    return [30 + (width - 40) * (i / max(n - 1, 1)) for i in range(n)]


def _y(v: float, top: float, height: int) -> float:
    return height - 20 - (height - 35) * (v / top if top > 0 else 0)


def _series(values: list[float | None], xs: list[float], top: float, height: int, colour: str) -> str:
    """A line through the points (two or more) and a dot on each point (one run = one dot)."""
    pts = [(x, _y(v, top, height)) for x, v in zip(xs, values, strict=True) if v is not None]
    out = []
    if len(pts) >= 2:
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{line}"/>')
    out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in pts]
    return "".join(out)


def chart(runs_oldest_first: list[Run], width: int = 640, height: int = 180) -> str:
    """Drift share (0..1, left scale) and window MAE (its own scale, with the baseline MAE dashed) over
    the runs; a series with no value in any run is left out, with its label."""
    n = len(runs_oldest_first)
    xs = _xs(n, width)
    shares = [r.drift_share for r in runs_oldest_first]
    maes = [r.mae for r in runs_oldest_first]
    baselines = [r.baseline_mae if r.mae is not None else None for r in runs_oldest_first]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="checks over time">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fafafa" stroke="#ddd"/>',
    ]
    if any(v is not None for v in shares):
        parts.append('<text x="30" y="12" font-size="11" fill="#c0392b">drift share (0–1)</text>')
        thr = next(
            (r.drift_share_threshold for r in reversed(runs_oldest_first) if r.drift_share_threshold), None
        )
        if thr is not None:
            y = _y(thr, 1.0, height)
            parts.append(
                f'<line x1="30" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#c0392b" '
                f'stroke-dasharray="4 3" stroke-width="0.8"/>'
                f'<text x="{width - 12}" y="{y - 3:.1f}" font-size="9" fill="#c0392b" text-anchor="end">'
                f"drift threshold {thr:g}</text>"
            )
        parts.append(_series(shares, xs, 1.0, height, "#c0392b"))
    known = [m for m in maes + baselines if m is not None]
    if known:
        top = max(known) * 1.1
        parts.append(
            f'<text x="{width - 10}" y="12" font-size="11" fill="#2471a3" text-anchor="end">'
            f"window MAE (0–{top:.2f}; dashed: baseline MAE)</text>"
        )
        base_pts = [(x, _y(b, top, height)) for x, b in zip(xs, baselines, strict=True) if b is not None]
        if len(base_pts) >= 2:
            line = " ".join(f"{x:.1f},{y:.1f}" for x, y in base_pts)
            parts.append(
                f'<polyline fill="none" stroke="#2471a3" stroke-dasharray="2 3" stroke-width="1" points="{line}"/>'
            )
        elif base_pts:
            x, y = base_pts[0]
            parts.append(
                f'<line x1="{x - 12:.1f}" x2="{x + 12:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="#2471a3" '
                f'stroke-dasharray="2 3" stroke-width="1"/>'
            )
        parts.append(_series(maes, xs, top, height, "#2471a3"))
    label = "1 run" if n == 1 else f"{n} runs, oldest left"
    parts.append(f'<text x="30" y="{height - 5}" font-size="10" fill="#666">{label}</text></svg>')
    return "".join(parts)


def index_page(runs_newest_first: list[Run]) -> str:
    """The runs as a table (a column is left out when no run has a value for it) under the chart."""
    runs = runs_newest_first
    show_share = any(r.drift_share is not None for r in runs)
    show_mae = any(r.mae is not None for r in runs)
    rows = []
    for r in runs:
        link = (
            f'<a href="reports/{r.id}">HTML</a> · <a href="reports/{r.id}.json">JSON</a>'
            if r.report_html
            else (f'<a href="reports/{r.id}.json">JSON</a>' if r.report_json else "")
        )
        verdict = ("DRIFT" if r.dataset_drift else "ok") if r.status == "ok" else r.status
        if r.degraded:
            verdict += " + DEGRADED"
        cells = [
            str(r.id),
            escape(str(r.finished_at or r.started_at)[:19]),
            "" if r.model_version is None else str(r.model_version),
            escape(time_range(r.window_first_at, r.window_last_at)),
            str(r.rows),
        ]
        if show_share:
            cells += [
                "" if r.drift_share is None else f"{r.drift_share:.2f}",
                escape(", ".join(r.drifted_columns)),
            ]
        if show_mae:
            mae = "" if r.mae is None else f"{r.mae:.3f}"
            if r.mae is not None and r.baseline_mae:
                mae += f" vs {r.baseline_mae:.3f} ({r.mae / r.baseline_mae:.2f}x)"
            cells.append(escape(mae))
        cells += [
            str(r.labelled_rows),
            f"<b>{escape(verdict)}</b>",
            f"{escape(story.action_label(r.action, r.action_code))}<br><small>{escape(r.action)}</small>"
            + (f"<br><small>job {escape(r.retrain_job_id)}</small>" if r.retrain_job_id else ""),
            escape(r.action_reason or r.verdict_reason or ""),
            link,
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    heads = ["run", "time (UTC)", "model", "window (prediction times)", "rows"]
    if show_share:
        heads += ["drift share", "drifted columns"]
    if show_mae:
        heads.append("window MAE vs baseline")
    heads += ["labelled", "verdict", "action", "why", "report"]
    head = "<tr>" + "".join(f"<th>{h}</th>" for h in heads) + "</tr>"
    graph = chart(list(reversed(runs))) if runs else "<p>No check has run yet.</p>"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>GradeFlow monitor reports</title>"
        f"<style>{INDEX_STYLE}</style></head><body>"
        "<h1>GradeFlow monitor: drift and performance checks</h1>"
        "<p><a href='reports/rollouts'>Rollouts: challengers judged on live labels</a></p>"
        f"{graph}"
        f"<table>{head}{''.join(rows)}</table></body></html>"
    )
