"""``gradeflow-features``: set up, fill and feed the feature store from a shell.

    gradeflow-features seed [--dataset synthetic]   # apply the repository, write the dataset's history
                                                    # once, materialize it (make up runs this)
    gradeflow-features apply                        # the definitions only
    gradeflow-features materialize                  # history -> online store, now
    gradeflow-features ingest readings.jsonl        # POST /readings in batches (ADMIN_TOKEN)

Every command that opens the store writes ``online_layout.json`` (what inference reads to serve by id).
Configuration: the same environment as the services (DATA_DIR, FEATURE_STORE_DIR,
FEATURE_OFFLINE_STORE_URL, FEATURE_ONLINE_STORE_URL, INFERENCE_PORT, ADMIN_TOKEN).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gradeflow_shared.logging import configure_logging

from ..config import InferenceSettings, get_settings
from .layout import layout_of, write_layout

logger = logging.getLogger(__name__)

INGEST_BATCH = 500


def _say(msg: str, stream: Any = None) -> None:
    """One line for the person at the shell (a command's result, not a log record)."""
    (stream or sys.stdout).write(msg + "\n")


def _open(settings: InferenceSettings, dataset: str | None = None) -> tuple[Any, Any]:
    from gradeflow_shared.datasets import load_spec
    from gradeflow_shared.features.seed import store_spec
    from gradeflow_shared.features.store import feature_store

    spec = store_spec(load_spec(dataset or "synthetic"))
    return feature_store(settings), spec


def _publish(settings: InferenceSettings, store: Any, spec: Any) -> None:
    path = write_layout(settings.feature_store_path, layout_of(store, list(spec.columns or [])))
    logger.info("online layout written to %s", path)


def cmd_apply(settings: InferenceSettings, args: argparse.Namespace) -> int:
    from gradeflow_shared.features.store import apply

    store, spec = _open(settings, args.dataset)
    views = apply(store, spec)
    _publish(settings, store, spec)
    _say(f"applied feature views {', '.join(views)} ({store.project})")
    return 0


def seed_store(settings: InferenceSettings, dataset: str | None = None) -> tuple[Any, Any]:
    """Apply, write the dataset's history once, materialize, publish the layout: (store, History)."""
    from gradeflow_shared.features.seed import seed

    store, spec = _open(settings, dataset)
    hist = seed(store, spec)
    _publish(settings, store, spec)
    return store, hist


def cmd_seed(settings: InferenceSettings, args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    store, hist = seed_store(settings, args.dataset)
    spec_name = store.project
    example = str(hist.labels["student_id"].iloc[0]) if len(hist.labels) else "-"
    _say(
        f"feature store {spec_name} seeded: {hist.students} students (e.g. {example}) "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    return 0


def cmd_materialize(settings: InferenceSettings, args: argparse.Namespace) -> int:
    from gradeflow_shared.features.store import materialize

    from .journal import WORK_LOCK, FileLock

    t0 = time.perf_counter()
    store, spec = _open(settings, args.dataset)
    lock = FileLock(settings.feature_store_path / WORK_LOCK)  # not while a running inference pushes
    if not lock.acquire(timeout=300):
        _say(f"another process held {lock.path} for 300 s: not materialized", sys.stderr)
        return 1
    try:
        materialize(store)
    finally:
        lock.release()
    _publish(settings, store, spec)
    _say(f"materialized in {time.perf_counter() - t0:.1f}s")
    return 0


def _readings(path: Path) -> Iterator[dict[str, Any]]:
    """JSON lines, or one JSON array, or ``{"readings": [...]}``."""
    text = path.read_text()
    stripped = text.lstrip()
    if stripped.startswith("[") or stripped.startswith('{"readings"'):
        data = json.loads(text)
        yield from data["readings"] if isinstance(data, dict) else data
        return
    for line in text.splitlines():
        if line.strip():
            yield json.loads(line)


def post_readings(url: str, token: str, readings: list[dict[str, Any]]) -> dict[str, Any]:
    """POST one batch to ``url``/readings; the error body's message on a refusal (RuntimeError)."""
    import httpx

    r = httpx.post(
        f"{url}/readings",
        json={"readings": readings},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:2000]}")
    return r.json()  # type: ignore[no-any-return]


def cmd_ingest(settings: InferenceSettings, args: argparse.Namespace) -> int:
    url = args.url or f"http://127.0.0.1:{settings.inference_port}"
    batch: list[dict[str, Any]] = []
    sent = 0

    def flush() -> None:
        nonlocal sent
        res = post_readings(url, settings.admin_token, batch)
        sent += res["accepted"]
        batch.clear()

    try:
        for r in _readings(Path(args.file)):
            batch.append(r)
            if len(batch) >= args.batch:
                flush()
        if batch:
            flush()
    except RuntimeError as exc:
        _say(f"refused after {sent} accepted readings: {exc}", sys.stderr)
        return 1
    _say(f"{sent} readings accepted by {url}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="gradeflow-features", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn in (("apply", cmd_apply), ("seed", cmd_seed), ("materialize", cmd_materialize)):
        sp = sub.add_parser(name)
        sp.add_argument(
            "--dataset", default=None, help="builtin dataset name or JSON spec (default synthetic)"
        )
        sp.set_defaults(fn=fn)
    sp = sub.add_parser("ingest")
    sp.add_argument("file", help='readings: JSON lines, a JSON array or {"readings": [...]}')
    sp.add_argument("--url", default="", help="inference base URL (default http://127.0.0.1:INFERENCE_PORT)")
    sp.add_argument("--batch", type=int, default=INGEST_BATCH, help="readings per request")
    sp.set_defaults(fn=cmd_ingest)
    args = p.parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json, service="features")
    return int(args.fn(settings, args))


if __name__ == "__main__":
    sys.exit(main())
