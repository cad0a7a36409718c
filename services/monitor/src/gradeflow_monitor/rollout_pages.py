"""The rollout report pages: every evaluation of a rollout (``rollout.RolloutJudge``) as a chart of both
models' live errors with the decision point, and a table. No script; every value is escaped."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from .pages import INDEX_STYLE, _series, _xs, _y
from .rollout import ROLLOUT_ID

CHAMPION, CANDIDATE = "#1f77b4", "#d62728"


def read_timeline(directory: Path, rollout_id: str) -> list[dict[str, Any]] | None:
    """The evaluations of ``rollout_id`` (None: an id that is not one, or no such rollout)."""
    if not ROLLOUT_ID.fullmatch(rollout_id):
        return None
    path = directory / f"{rollout_id}.jsonl"
    if not path.is_file():
        return None
    out = []
    for line in path.read_text().splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            out.append(item)
    return out


def list_rollouts(directory: Path) -> list[tuple[str, list[dict[str, Any]]]]:
    """Every rollout with evaluations, newest first."""
    files = sorted(directory.glob("*.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [(p.stem, read_timeline(directory, p.stem) or []) for p in files if ROLLOUT_ID.fullmatch(p.stem)]


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def chart(items: list[dict[str, Any]], width: int = 720, height: int = 220) -> str:
    """Both models' MAE on the stage's labelled comparisons, one point per evaluation; a dashed line at
    each stage change and at the decision."""
    champ = [_num(i.get("champion_mae")) for i in items]
    cand = [_num(i.get("candidate_mae")) for i in items]
    values = [v for v in champ + cand if v is not None]
    if not values:
        return "<p>No labelled comparison yet.</p>"
    top = max(values) * 1.15
    xs = _xs(len(items), width)
    marks = []
    for k, it in enumerate(items):
        if it.get("decision") not in (None, "continue"):
            label = escape(str(it.get("decision")))
            marks.append(
                f'<line x1="{xs[k]:.1f}" y1="15" x2="{xs[k]:.1f}" y2="{height - 20}" stroke="#555" '
                f'stroke-dasharray="4 3"/><text x="{xs[k] + 3:.1f}" y="25" font-size="11">{label}</text>'
            )
    axis = (
        f'<text x="2" y="{_y(top / 1.15, top, height) + 4:.1f}" font-size="10">{top / 1.15:.2f}</text>'
        f'<line x1="28" y1="{height - 20}" x2="{width - 5}" y2="{height - 20}" stroke="#999"/>'
    )
    legend = (
        f'<text x="40" y="{height - 4}" font-size="11" fill="{CHAMPION}">champion MAE</text>'
        f'<text x="150" y="{height - 4}" font-size="11" fill="{CANDIDATE}">challenger MAE</text>'
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="live errors of both models">{axis}{"".join(marks)}'
        f"{_series(champ, xs, top, height, CHAMPION)}{_series(cand, xs, top, height, CANDIDATE)}{legend}</svg>"
    )


def _fmt(v: Any, spec: str = ".3f") -> str:
    n = _num(v)
    return "" if n is None else format(n, spec)


def rollout_page(rollout_id: str, items: list[dict[str, Any]]) -> str:
    first = items[0] if items else {}
    title = (
        f"rollout {rollout_id}: challenger v{first.get('candidate_version')} against champion "
        f"v{first.get('champion_version')}"
    )
    rows = []
    for it in items:
        cells = [
            escape(str(it.get("at", ""))[:19]),
            escape(str(it.get("stage", ""))),
            escape(str(it.get("n", ""))),
            _fmt(it.get("champion_mae")),
            _fmt(it.get("candidate_mae")),
            escape(f"[{_fmt(it.get('low'), '+.3f')}, {_fmt(it.get('high'), '+.3f')}]"),
            f"<b>{escape(str(it.get('decision', '')))}</b>",
            escape(str(it.get("reason", ""))),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    heads = [
        "time (UTC)",
        "stage",
        "comparisons",
        "champion MAE",
        "challenger MAE",
        "MAE difference, always-valid interval",
        "decision",
        "why",
    ]
    head = "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in heads) + "</tr>"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{INDEX_STYLE}</style></head><body><h1>{escape(title)}</h1>"
        "<p>Live errors of both models on the labelled requests of the stage; the dashed lines are the "
        "decisions (a stage change, the promotion, a rollback or an abort).</p>"
        f"{chart(items)}<table>{head}{''.join(reversed(rows))}</table>"
        "<p><a href='../rollouts'>all rollouts</a></p></body></html>"
    )


def rollouts_index(rollouts: list[tuple[str, list[dict[str, Any]]]]) -> str:
    rows = []
    for rid, items in rollouts:
        last = items[-1] if items else {}
        cells = [
            f"<a href='rollouts/{escape(rid)}'>{escape(rid)}</a>",
            escape(f"v{last.get('candidate_version')} vs v{last.get('champion_version')}"),
            escape(str(last.get("stage", ""))),
            escape(str(last.get("decision", ""))),
            escape(str(last.get("at", ""))[:19]),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = (
        "<tr>"
        + "".join(f"<th>{h}</th>" for h in ("rollout", "versions", "stage", "last decision", "time"))
        + "</tr>"
    )
    body = f"<table>{head}{''.join(rows)}</table>" if rows else "<p>No rollout has been evaluated yet.</p>"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>GradeFlow rollouts</title>"
        f"<style>{INDEX_STYLE}</style></head><body><h1>Rollouts</h1>{body}"
        "<p><a href='../reports'>drift and performance checks</a></p></body></html>"
    )
