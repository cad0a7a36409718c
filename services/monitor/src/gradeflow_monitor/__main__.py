"""``gradeflow-monitor``: the monitor service (no arguments) or one check (``check``).

``gradeflow-monitor check --current cur.csv --reference ref.csv --out drift_report.html`` needs no
service: it compares the two CSVs (feature kinds from the export's manifest when MODEL_DIR has one,
else numeric columns are numeric and the rest categorical) and writes the Evidently report. Without
``--current`` the window is pulled from inference (INFERENCE_URL); without ``--reference`` the
reference sample is the serving export's (MODEL_DIR). A check with both pulled is a full check:
stored in the run history, guards applied, retrain triggered if allowed (like ``POST /checks``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import pandas as pd

from gradeflow_shared.contracts import LOG_META_COLUMNS
from gradeflow_shared.logging import configure_logging
from gradeflow_shared.manifest import Manifest

from .config import get_settings

logger = logging.getLogger(__name__)

NOT_FEATURES = set(LOG_META_COLUMNS)


def _kinds(df: pd.DataFrame, manifest: Manifest | None, target: str | None) -> tuple[list[str], list[str]]:
    if manifest is not None:
        nums = [f.name for f in manifest.features if f.kind == "numeric" and f.name in df]
        cats = [f.name for f in manifest.features if f.kind == "categorical" and f.name in df]
        return nums, cats
    skip = NOT_FEATURES | ({target} if target else set())
    cols = [c for c in df.columns if c not in skip]
    nums = [c for c in cols if pd.api.types.is_numeric_dtype(df[c])]
    return nums, [c for c in cols if c not in nums]


def cmd_check(args: argparse.Namespace) -> int:
    from gradeflow_shared.manifest import read_current

    from .drift import evaluate_drift
    from .performance import baseline_of, evaluate_performance
    from .service import CheckInputs, Monitor, known_categories, policy_from_settings, write_report
    from .sources import InferenceWindow, read_csv_frame, reference_frame
    from .storage import Store

    s = get_settings()
    out = Path(args.out)
    if args.current is None and args.reference is None:
        # the full check, as the service runs it
        store = Store(s.db_url())
        monitor = Monitor(s, store)
        try:
            run = monitor.run_check("cli", html_out=out)
        finally:
            monitor.close()
            store.close()
        print(json.dumps(monitor.verdict(run).model_dump(mode="json"), indent=1))  # noqa: T201
        if run.status == "error":
            return 2
        return 0

    current_export = read_current(s.models_path)
    manifest = current_export[1] if current_export else None
    if args.reference is not None:
        reference = read_csv_frame(Path(args.reference), manifest)
    elif current_export is not None:
        reference = reference_frame(*current_export)
    else:
        print(f"no --reference and no export in {s.models_path}", file=sys.stderr)  # noqa: T201
        return 2
    if args.current is not None:
        current = read_csv_frame(Path(args.current), manifest)
    else:
        if manifest is None:
            msg = "pulling the window needs the serving model's version: no export in MODEL_DIR"
            print(msg, file=sys.stderr)  # noqa: T201
            return 2
        from gradeflow_shared.http import ServiceClient

        with ServiceClient(s.inference_url, retries=s.http_retries, backoff=s.http_backoff_seconds) as c:
            current = InferenceWindow(c, s.window_size, s.page_size).fetch(manifest.version)
    nums, cats = _kinds(reference, manifest, args.target or (manifest.target if manifest else None))
    inputs = CheckInputs(current, reference, nums, cats, manifest)
    policy = policy_from_settings(s)
    drift = evaluate_drift(
        inputs.current, inputs.reference, nums, cats, policy, categories=known_categories(manifest)
    )
    perf = evaluate_performance(
        current,
        manifest.metrics if manifest else {},
        s.degradation_ratio,
        s.min_labelled_rows,
        baseline=baseline_of(manifest),
    )
    json_path = out.with_suffix(".json")
    write_report(drift, perf, {"current": args.current, "reference": args.reference}, out, json_path)
    summary = {
        "rows": drift.rows,
        "reference_rows": drift.reference_rows,
        "verdict": drift.verdict,
        "reason": drift.reason,
        "drift_share": drift.drift_share,
        "dataset_drift": drift.dataset_drift,
        "drifted_columns": drift.drifted_columns,
        "performance": perf.figures(),
        "degraded": perf.degraded,
        "html": str(out) if drift.snapshot is not None else None,
        "json": str(json_path),
    }
    print(json.dumps(summary, indent=1))  # noqa: T201
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    s = get_settings()
    uvicorn.run(
        create_app(s), host=s.host, port=args.port or s.monitor_port, log_level=s.log_level.lower(), workers=1
    )
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gradeflow-monitor", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=None, help="override MONITOR_PORT")
    sub = parser.add_subparsers(dest="command")
    chk = sub.add_parser("check", help="run one check and write drift_report.html")
    chk.add_argument(
        "--current", type=Path, default=None, help="CSV of the current window (default: inference)"
    )
    chk.add_argument(
        "--reference", type=Path, default=None, help="reference CSV (default: the serving export)"
    )
    chk.add_argument("--out", type=Path, default=Path("drift_report.html"), help="HTML report to write")
    chk.add_argument("--target", default=None, help="target column to leave out (CSV mode, no manifest)")
    sub.add_parser("serve", help="run the HTTP service (the default)")
    args = parser.parse_args(argv)
    s = get_settings()
    configure_logging(s.log_level, s.log_json, service="monitor")
    if args.command == "check":
        sys.exit(cmd_check(args))
    sys.exit(cmd_serve(args))


if __name__ == "__main__":
    main()
