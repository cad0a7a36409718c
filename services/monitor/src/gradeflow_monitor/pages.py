"""The HTML index of runs (newest first) with a small inline SVG chart of drift share and window MAE,
and the security headers of every page the monitor serves."""

from __future__ import annotations

import base64
import hashlib
from html import escape

from .storage import Run

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


def _polyline(values: list[float | None], width: int, height: int, top: float) -> str:
    pts = []
    n = len(values)
    for i, v in enumerate(values):
        if v is None:
            continue
        x = 30 + (width - 40) * (i / max(n - 1, 1))
        y = height - 20 - (height - 35) * (v / top if top > 0 else 0)
        pts.append(f"{x:.1f},{y:.1f}")
    return " ".join(pts)


def chart(runs_oldest_first: list[Run], width: int = 640, height: int = 180) -> str:
    """Two lines on one chart: drift share (0..1, left scale) and window MAE (right scale)."""
    shares = [r.drift_share for r in runs_oldest_first]
    maes = [r.mae for r in runs_oldest_first]
    top_mae = max([m for m in maes if m is not None] or [1.0]) * 1.1
    thr = next(
        (r.drift_share_threshold for r in reversed(runs_oldest_first) if r.drift_share_threshold), None
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="drift share and window MAE over time">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fafafa" stroke="#ddd"/>',
        '<text x="30" y="12" font-size="11" fill="#c0392b">drift share (0-1)</text>',
        f'<text x="{width - 170}" y="12" font-size="11" fill="#2471a3">window MAE (max {top_mae:.2f})</text>',
    ]
    if thr is not None:
        y = height - 20 - (height - 35) * thr
        parts.append(
            f'<line x1="30" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#c0392b" '
            f'stroke-dasharray="4 3" stroke-width="0.8"/>'
        )
    for vals, top, colour in ((shares, 1.0, "#c0392b"), (maes, top_mae, "#2471a3")):
        pts = _polyline(vals, width, height, top)
        if pts:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{pts}"/>')
    parts.append(
        f'<text x="30" y="{height - 5}" font-size="10" fill="#666">{len(runs_oldest_first)} runs, '
        f"oldest left</text></svg>"
    )
    return "".join(parts)


def index_page(runs_newest_first: list[Run]) -> str:
    rows = []
    for r in runs_newest_first:
        link = (
            f'<a href="reports/{r.id}">HTML</a> · <a href="reports/{r.id}.json">JSON</a>'
            if r.report_html
            else (f'<a href="reports/{r.id}.json">JSON</a>' if r.report_json else "")
        )
        share = "" if r.drift_share is None else f"{r.drift_share:.2f}"
        mae = "" if r.mae is None else f"{r.mae:.3f}"
        verdict = ("DRIFT" if r.dataset_drift else "ok") if r.status == "ok" else r.status
        if r.degraded:
            verdict += " + DEGRADED"
        drifted = ", ".join(r.drifted_columns)
        rows.append(
            "<tr>"
            f"<td>{r.id}</td><td>{escape(str(r.finished_at or r.started_at)[:19])}</td>"
            f"<td>{'' if r.model_version is None else r.model_version}</td>"
            f"<td>{r.window_first_id or ''}–{r.window_last_id or ''}</td><td>{r.rows}</td>"
            f"<td>{share}</td><td>{escape(drifted)}</td><td>{mae}</td><td>{r.labelled_rows}</td>"
            f"<td><b>{escape(verdict)}</b></td><td>{escape(r.action)}</td>"
            f"<td>{escape(r.action_reason or r.verdict_reason or '')}</td><td>{link}</td>"
            "</tr>"
        )
    head = (
        "<tr><th>run</th><th>time (UTC)</th><th>model</th><th>window ids</th><th>rows</th>"
        "<th>drift share</th><th>drifted columns</th><th>MAE</th><th>labelled</th><th>verdict</th>"
        "<th>action</th><th>why</th><th>report</th></tr>"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>GradeFlow monitor reports</title>"
        f"<style>{INDEX_STYLE}</style></head><body>"
        "<h1>GradeFlow monitor: drift and performance checks</h1>"
        f"{chart(list(reversed(runs_newest_first)))}"
        f"<table>{head}{''.join(rows)}</table></body></html>"
    )
