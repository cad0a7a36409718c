# ruff: noqa: T201  (the CLI prints its progress and summary; the service logs)
"""``gradeflow-trainer``: run the trainer service (default) or train once.

    gradeflow-trainer                 # serve the HTTP API on HOST:TRAINER_PORT
    gradeflow-trainer serve
    gradeflow-trainer train [--dataset X] [--no-search] [--reason TEXT]

``train`` prints progress lines and a summary with the MLflow run URL and exits 0; on a bad
dataset (or any platform error) it prints the message and exits 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from gradeflow_shared.errors import GradeflowError
from gradeflow_shared.logging import configure_logging

from .config import TrainerSettings, get_settings

logger = logging.getLogger(__name__)


def _serve(settings: TrainerSettings) -> None:
    import uvicorn

    from .app import create_app

    host = "localhost" if settings.host in ("0.0.0.0", "127.0.0.1") else settings.host
    logger.info(
        "trainer: http://%s:%d  (docs: http://%s:%d/docs)",
        host,
        settings.trainer_port,
        host,
        settings.trainer_port,
    )
    logger.info("MLflow UI: %s", settings.ui_url)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.trainer_port, log_config=None)


def _train(settings: TrainerSettings, dataset: str | None, reason: str) -> int:
    from gradeflow_shared.contracts import RetrainRequest

    from . import mlflow_io as mio
    from . import service

    def progress(stage: str, fraction: float) -> None:
        print(f"[{fraction * 100:5.1f}%] {stage}", flush=True)

    try:
        mio.wait_for_server(settings, timeout=min(settings.mlflow_wait, 30.0))
        result = service.train_once(settings, RetrainRequest(reason=reason), progress, dataset=dataset)
    except GradeflowError as exc:
        print(f"error: {exc.error_code}: {exc.message}", file=sys.stderr)
        return 2
    d = result.decision
    print()
    print(f"model      : {result.model_name} version {result.version}")
    print(f"rows       : {result.rows}")
    print("metrics    : " + ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()))
    print(f"gate       : {'PROMOTED to champion' if d.promoted else 'not promoted'}: {d.reason}")
    print(f"export     : {result.export_dir or '(unchanged)'}")
    print(f"MLflow run : {mio.run_url(settings, result.run_id)}")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gradeflow-trainer", description="GradeFlow trainer")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the HTTP service (default)")
    tr = sub.add_parser("train", help="train once, gate, export, and exit")
    tr.add_argument("--dataset", default=None, help="override DATASET (builtin name or JSON spec path)")
    tr.add_argument(
        "--no-search", action="store_true", help="fit the default model only (TRAIN_SEARCH=false)"
    )
    tr.add_argument("--reason", default="cli: gradeflow-trainer train", help="reason recorded with the run")
    args = parser.parse_args(argv)

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json, service="trainer")
    if args.command == "train":
        if args.no_search:
            settings = settings.model_copy(update={"train_search": False})
        sys.exit(_train(settings, args.dataset, args.reason))
    _serve(settings)


if __name__ == "__main__":
    main()
