"""Reload benchmark: time from the ``current`` swap to serving, with CPU load alongside (a training job).

    .venv/bin/python bench/reload.py                       # uci-por, the trainer's blend model, 7 swaps, 2 load procs
    .venv/bin/python bench/reload.py --dataset synthetic   # the synthetic default (boosted trees)
    .venv/bin/python bench/reload.py --load 0              # an idle machine

Fits two versions of the model the trainer's search would pick for the dataset (with the trainer's code),
exports both, starts ``gradeflow-inference`` as a real process on a free port and serves v1. Then ``--load``
processes run training fits in a loop (the trainer's pipeline on the same data: what a retrain job does to
the machine), and each turn stages the other version, swaps ``current`` (``point_current``: the one rename)
and polls, every 10 ms, ``GET /model`` until it names the new version and then ``POST /predict`` until an
answer comes from it. Printed per swap: the time to /model, the time to the first answer from the new
version, and the breakdown the service reports in ``GET /model`` -> ``load``. The median over the swaps is
the figure in the README.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from gradeflow_shared import manifest as mf
from gradeflow_shared.procs import ServiceProcess, bin_path
from gradeflow_testkit.exports import republish
from gradeflow_testkit.loop import to_records
from gradeflow_testkit.servers import free_port


def _data(dataset: str) -> tuple[Any, Any, list[Any]]:
    from gradeflow_shared.datasets import load_dataset, load_spec

    spec = load_spec(dataset)
    X, y, columns = load_dataset(spec)
    return X, y, columns


def _candidate(dataset: str, n_rows: int) -> tuple[str, dict[str, Any]]:
    """The model the trainer's search picks on this data (its heaviest, for uci-por: the blend)."""
    from gradeflow_trainer.pipeline import search_space

    space = search_space(n_rows)
    return space[1] if dataset != "synthetic" else space[0]


def prepare(work: Path, dataset: str) -> tuple[list[Path], list[dict[str, Any]], str]:
    from gradeflow_trainer.export import export_model
    from gradeflow_trainer.pipeline import fit

    X, y, columns = _data(dataset)
    family, params = _candidate(dataset, len(X))
    out = []
    for v, seed in ((1, 0), (2, 1)):
        t = time.perf_counter()
        res = fit(X, y, columns, seed=seed, search=False, candidates=[(family, params)])
        print(f"fitted v{v} {family} on {len(X)} rows in {time.perf_counter() - t:.1f}s", flush=True)
        out.append(
            export_model(
                work / "seed" / f"v{v}",
                res.pipeline,
                columns,
                X,
                y,
                target=str(y.name),
                model_name="bench-reload",
                version=v,
                run_id=f"run-{v}",
                metrics={"mae": 1.0},
                reference_rows=2000,
            )
        )
    onnx_mb = (out[0] / mf.ONNX_FILE).stat().st_size / 1e6
    joblib_mb = (out[0] / mf.MODEL_FILE).stat().st_size / 1e6
    desc = f"{dataset}: {family} ({onnx_mb:.1f} MB ONNX, {joblib_mb:.1f} MB joblib)"
    return out, to_records(X.head(5)), desc


def load_worker(dataset: str, stop: Any) -> None:
    """Training fits in a loop (the CPU a retrain job takes), until ``stop`` is set."""
    from gradeflow_trainer.pipeline import fit

    X, y, columns = _data(dataset)
    family, params = _candidate(dataset, len(X))
    while not stop.is_set():
        fit(X, y, columns, search=False, candidates=[(family, params)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="uci-por")
    ap.add_argument("--swaps", type=int, default=7)
    ap.add_argument("--load", type=int, default=2, help="processes running training fits alongside")
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the inference process")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gradeflow-reload-bench-"))
    srcs, records, desc = prepare(work, args.dataset)
    model_dir = work / "models"
    model_dir.mkdir()
    mf.point_current(model_dir, republish(model_dir, srcs[0], 1, "bench", swap_current=False), version=1)
    port = free_port()
    svc = ServiceProcess(
        name="inference",
        cmd=[bin_path("gradeflow-inference")],
        env={
            "DATA_DIR": str(work / "data"),
            "MODEL_DIR": str(model_dir),
            "INFERENCE_PORT": str(port),
            "HOST": "127.0.0.1",
            "ADMIN_TOKEN": secrets.token_urlsafe(24),
            "INFERENCE_LOG_ENABLED": "false",
            **dict(kv.split("=", 1) for kv in args.env),
        },
        log_path=work / "inference.log",
        health_url=f"http://127.0.0.1:{port}/health",
    )
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    loaders = [
        ctx.Process(target=load_worker, args=(args.dataset, stop), daemon=True) for _ in range(args.load)
    ]
    rows: list[dict[str, Any]] = []
    svc.start(wait=120)
    try:
        c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        deadline = time.monotonic() + 120
        while c.get("/model").status_code != 200 or not c.get("/model").json()["predict_paths"]["sklearn"]:
            if time.monotonic() > deadline:
                raise TimeoutError("v1 not fully loaded")
            time.sleep(0.2)
        for p in loaders:
            p.start()
        time.sleep(3 if args.load else 0)  # let the fits get going
        print(f"\nmodel {desc}; {args.load} training processes alongside; {os.cpu_count()} cores")
        print(
            f"{'swap':>4} {'version':>7} {'/model s':>9} {'/predict s':>10}  service breakdown (GET /model load, ms)"
        )
        for i in range(args.swaps):
            version = i + 2
            export = republish(model_dir, srcs[(version - 1) % 2], version, "bench", swap_current=False)
            t0 = time.monotonic()
            mf.point_current(model_dir, export, version=version)
            t_model = t_pred = None
            info: dict[str, Any] = {}
            while time.monotonic() - t0 < args.timeout:
                if t_model is None:
                    r = c.get("/model")
                    if r.status_code == 200 and r.json()["version"] == version:
                        t_model = time.monotonic() - t0
                        info = r.json()
                if t_model is not None:
                    r = c.post("/predict", json={"records": records[:1]})
                    if r.status_code == 200 and r.json()["model_version"] == version:
                        t_pred = time.monotonic() - t0
                        break
                time.sleep(0.01)
            if t_pred is None:
                print(f"swap {i + 1}: v{version} not served within {args.timeout}s\n{svc.tail()}")
                return 1
            load = info.get("load") or {}
            rows.append({"model": t_model, "predict": t_pred, "load": load})
            brk = ", ".join(f"{k} {v}" for k, v in load.items() if k.endswith("_ms"))
            print(
                f"{i + 1:>4} {version:>7} {t_model:>9.3f} {t_pred:>10.3f}  {brk or '(no breakdown)'}",
                flush=True,
            )
            # let the background attach of the scikit-learn path finish, as between two real promotions
            time.sleep(2.0)
        med = statistics.median(r["predict"] for r in rows)
        print(
            f"\nmedian swap -> first answer from the new version: {med:.3f}s over {len(rows)} swaps "
            f"(min {min(r['predict'] for r in rows):.3f}, max {max(r['predict'] for r in rows):.3f}); "
            f"/model median {statistics.median(r['model'] for r in rows):.3f}s"
        )
    finally:
        stop.set()
        for p in loaders:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
        svc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
