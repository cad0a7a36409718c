"""Serving benchmark: GradeFlow inference vs ``mlflow models serve`` vs a bare FastAPI + sklearn endpoint.

    uv run python bench/run.py                 # full grid (a few minutes), writes bench/results.md
    uv run python bench/run.py --duration 2    # shorter cells

One run, one machine, one model version: the benchmark fits a RandomForest-100 pipeline on synthetic
data with the trainer's code, exports it (our service reads the export), logs the same fitted pipeline
to a local MLflow store (SQLite) and serves it with ``mlflow models serve --env-manager local``, and
serves it once more from a bare FastAPI endpoint. Each server runs alone (one uvicorn worker each),
and a load generator in a separate process (bench/loadgen.py, asyncio keep-alive connections)
measures requests/s and p50/p99 latency at batch sizes 1, 100, 1000 and concurrency 1, 8, 32, plus
the cold start to the first prediction. Our service runs twice: prediction logging on (SQLite) and off.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from gradeflow_shared.loop import to_records
from gradeflow_shared.procs import ServiceProcess, bin_path, free_port

BENCH = Path(__file__).resolve().parent
BATCHES = (1, 100, 1000)
CONCURRENCY = (1, 8, 32)
CAPS = {1: 20_000, 100: 4_000, 1000: 600}


# ------------------------------------------------------------------ model and bodies
def prepare(work: Path, rows: int, trees: int) -> dict[str, Any]:

    from gradeflow_shared.synth import COLUMNS, TARGET, generate
    from gradeflow_trainer.export import export_model
    from gradeflow_trainer.pipeline import fit, prepare_frame

    names = [c.name for c in COLUMNS]
    df = generate(rows, seed=0)
    X, y = df[names], df[TARGET]
    t = time.perf_counter()
    res = fit(X, y, COLUMNS, search=False, candidates=[("rf", {"n_estimators": trees})])
    print(f"fitted RandomForest-{trees} on {rows} rows in {time.perf_counter() - t:.1f}s")
    export = export_model(
        work / "models",
        res.pipeline,
        COLUMNS,
        X,
        y,
        target=TARGET,
        model_name="student-grade",
        version=1,
        run_id="bench",
        metrics={},
        reference_rows=500,
    )
    records = to_records(generate(1000, seed=7)[names])
    bodies: dict[tuple[str, int], Path] = {}
    for n in BATCHES:
        for kind, payload in (
            ("ours", records[0] if n == 1 else {"records": records[:n]}),
            ("bare", {"records": records[:n]}),
            ("mlflow", {"dataframe_records": records[:n]}),
        ):
            p = work / f"body-{kind}-{n}.json"
            p.write_text(json.dumps(payload))
            bodies[(kind, n)] = p
    Xp = prepare_frame(X, COLUMNS)
    return {"pipeline": res.pipeline, "export": export, "bodies": bodies, "X": Xp, "records": records}


def log_to_mlflow(work: Path, pipeline: Any, X: Any) -> Path:
    import mlflow
    from mlflow.models import infer_signature

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    mlflow.set_experiment("bench")
    with mlflow.start_run():
        sig = infer_signature(X.head(20), pipeline.predict(X.head(20)))
        info = mlflow.sklearn.log_model(
            pipeline, name="model", signature=sig, serialization_format="cloudpickle"
        )
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(work / "mlflow-model")))
    print(f"logged to MLflow as {info.model_uri} -> {local}")
    return local


# ------------------------------------------------------------------ servers
class Server:
    def __init__(
        self,
        name: str,
        kind: str,
        cmd: list[str],
        env: dict[str, str],
        port: int,
        path: str,
        health: str,
        log: Path,
    ) -> None:
        self.name, self.kind, self.port, self.path = name, kind, port, path
        self.proc = ServiceProcess(name=name, cmd=cmd, env=env, log_path=log, health_url=None)
        self.health = f"http://127.0.0.1:{port}{health}"
        self.cold_start: float | None = None
        self.ready_at: float | None = None

    def start(self, body: bytes, timeout: float = 180.0) -> None:
        """Start and time the cold start: process launch -> first successful prediction."""
        url = f"http://127.0.0.1:{self.port}{self.path}"
        t0 = time.perf_counter()
        self.proc.start(wait=0)
        with httpx.Client(timeout=10) as c:
            while True:
                if not self.proc.alive():
                    raise RuntimeError(f"{self.name} exited:\n{self.proc.tail()}")
                if time.perf_counter() - t0 > timeout:
                    raise TimeoutError(f"{self.name} not serving after {timeout}s:\n{self.proc.tail()}")
                try:
                    if self.ready_at is None and c.get(self.health).status_code == 200:
                        self.ready_at = time.perf_counter() - t0
                    r = c.post(url, content=body, headers={"content-type": "application/json"})
                    if r.status_code == 200:
                        self.cold_start = time.perf_counter() - t0
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.01)

    def stop(self) -> None:
        self.proc.stop()


def ours(work: Path, log_enabled: bool, extra_env: dict[str, str] | None = None) -> Server:
    port = free_port()
    name = "ours" if log_enabled else "ours-nolog"
    data = work / f"{name}-data"
    shutil.rmtree(data, ignore_errors=True)
    env = {
        "DATA_DIR": str(data),
        "MODEL_DIR": str(work / "models"),
        "INFERENCE_PORT": str(port),
        "HOST": "127.0.0.1",
        "INFERENCE_LOG_ENABLED": str(log_enabled).lower(),
        "LOG_LEVEL": "WARNING",
        "INFERENCE_WORKERS": "1",
        **(extra_env or {}),
    }
    return Server(
        name,
        "ours",
        [bin_path("gradeflow-inference")],
        env,
        port,
        "/predict",
        "/ready",
        work / "logs" / f"{name}.log",
    )


def mlflow_serve(work: Path, model_path: Path) -> Server:
    port = free_port()
    cmd = [
        bin_path("mlflow"),
        "models",
        "serve",
        "-m",
        str(model_path),
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        "1",
    ]
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        # mlflow runs `uvicorn` from PATH: use this environment's
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return Server("mlflow", "mlflow", cmd, env, port, "/invocations", "/ping", work / "logs" / "mlflow.log")


def bare(work: Path, model_file: Path) -> Server:
    port = free_port()
    return Server(
        "bare",
        "bare",
        [sys.executable, str(BENCH / "bare_app.py"), str(port), str(model_file)],
        {},
        port,
        "/predict",
        "/docs",
        work / "logs" / "bare.log",
    )


def wait_sklearn_attached(server: Server, timeout: float = 120.0) -> dict[str, Any]:
    """Our service verifies and attaches the scikit-learn path after it is ready: wait for it."""
    deadline = time.monotonic() + timeout
    m: dict[str, Any] = {}
    while time.monotonic() < deadline:
        m = httpx.get(f"http://127.0.0.1:{server.port}/model").json()
        if m["predict_paths"]["sklearn"]:
            return m
        time.sleep(0.2)
    return m


def load(server: Server, body: Path, concurrency: int, requests: int, duration: float) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH / "loadgen.py"),
            "--port",
            str(server.port),
            "--path",
            server.path,
            "--body",
            str(body),
            "--concurrency",
            str(concurrency),
            "--requests",
            str(requests),
            "--duration",
            str(duration),
            "--warmup",
            "3",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration * 10 + 120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# ------------------------------------------------------------------ floor
class Floor:
    """In-process floor at batch 1000: decode the JSON body + the predict path our service picks for 1000 rows.

    Per repetition: ``orjson.loads`` of the request body, the feature columns taken out of the records
    (one C-level ``map`` per feature, numeric columns as float64 arrays, exactly what the service's
    validator hands to the predict path, but without its checks) and ``LoadedModel.predict`` on the
    path the running service reports for 1000 rows (``GET /model``). Measured right before every round
    of the batch-1000 conc-1 cell (servers idle), best of ``reps``; the best over the rounds is kept.
    """

    def __init__(self, export: Path, body: Path) -> None:
        from gradeflow_inference.model import load_export

        self.model = load_export(export)
        self.raw = body.read_bytes()
        self.path = "onnx"
        self.samples: list[dict[str, Any]] = []

    def use_path_of(self, sklearn_from: float | None, n: int = 1000) -> None:
        self.path = "sklearn" if sklearn_from is not None and n >= sklearn_from else "onnx"

    def measure(self, reps: int = 20) -> dict[str, Any]:
        from operator import itemgetter

        import numpy as np
        import orjson

        from gradeflow_inference.schema import Batch

        m, raw, path = self.model, self.raw, self.path
        feats = [(f.name, f.numeric, itemgetter(f.name)) for f in m.validator.features]
        times = []
        for _ in range(reps + 2):
            t = time.perf_counter()
            records = orjson.loads(raw)["records"]
            cols = {
                name: np.array(list(map(get, records)), dtype=np.float64)
                if numeric
                else list(map(get, records))
                for name, numeric, get in feats
            }
            m.predict(Batch(n=len(records), columns=cols), path)
            times.append(time.perf_counter() - t)
        times = sorted(times[2:])  # two warm-up repetitions
        s = {
            "best_ms": times[0] * 1000,
            "median_ms": statistics.median(times) * 1000,
            "loadavg": os.getloadavg()[0],
        }
        self.samples.append(s)
        return s

    def result(self) -> dict[str, Any]:
        best = min(self.samples, key=lambda s: s["best_ms"])
        return {
            "ms": best["best_ms"],
            "median_ms": best["median_ms"],
            "path": self.path,
            "rounds": [round(s["best_ms"], 2) for s in self.samples],
            "loadavg": [round(s["loadavg"], 1) for s in self.samples],
        }


# ------------------------------------------------------------------ report
def fmt(x: float, nd: int = 1) -> str:
    return f"{x:,.{nd}f}"


def report(
    results: dict[str, dict[tuple[int, int], dict[str, float]]],
    servers: dict[str, Server],
    floor: dict[str, Any] | None,
    model_info: dict[str, Any],
    args: argparse.Namespace,
    secs: float,
) -> str:
    ml = results.get("mlflow", {})
    lines = [
        "# Serving benchmark",
        "",
        f"Command: `uv run python bench/run.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
        f"Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs (shared with other work: load average before the run "
        f"{model_info['loadavg']}), Python {platform.python_version()}; total bench time {secs:.0f}s.",
        f"Model: RandomForest-{args.trees} pipeline (16 features: impute + one-hot + forest), one version "
        f"served by all; each server alone, 1 uvicorn worker; load generator bench/loadgen.py in its own "
        f"process (asyncio keep-alive connections); each cell {args.duration:g}s or a request cap per server, "
        f"{args.rounds} rounds with the servers interleaved, best round kept (all rounds' req/s in the log).",
        f"Our service: validation on, prediction log on (SQLite WAL) unless 'ours-nolog' "
        f"(INFERENCE_LOG_ENABLED=false). Predict path per batch size measured at load: "
        f"`{json.dumps(model_info.get('crossover'))}` (ms); scikit-learn from batch size "
        f"{model_info.get('sklearn_from')}.",
        "",
        "## Cold start (process launch -> first successful prediction)",
        "",
        "| server | ready (s) | first prediction (s) |",
        "|---|---:|---:|",
    ]
    for s in servers.values():
        lines.append(
            f"| {s.name} | {fmt(s.ready_at or float('nan'), 2)} | {fmt(s.cold_start or float('nan'), 2)} |"
        )
    lines += [
        "",
        "## Throughput and latency",
        "",
        "| batch | conc | server | req/s | rows/s | p50 ms | p99 ms | req/s vs mlflow | p99 vs mlflow | errors "
        "| req/s of each round |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n in BATCHES:
        for c in CONCURRENCY:
            for name in results:
                r = results[name].get((n, c))
                if r is None:
                    continue
                m = ml.get((n, c))
                ratio = f"{r['rps'] / m['rps']:.1f}x" if m and m["rps"] else "-"
                p99r = f"{r['p99_ms'] / m['p99_ms']:.2f}x" if m and m["p99_ms"] else "-"
                lines.append(
                    f"| {n} | {c} | {name} | {fmt(r['rps'])} | {fmt(r['rps'] * n, 0)} | {fmt(r['p50_ms'], 2)} | "
                    f"{fmt(r['p99_ms'], 2)} | {ratio} | {p99r} | {int(r['errors'])} | {r.get('rounds_rps', '')} |"
                )
    # targets
    checks: list[tuple[str, bool | None, str]] = []
    o, off = results.get("ours", {}), results.get("ours-nolog", {})

    def get(d: dict[tuple[int, int], dict[str, float]], n: int, c: int, k: str) -> float | None:
        return d.get((n, c), {}).get(k)

    a, b = get(o, 1, 8, "rps"), get(ml, 1, 8, "rps")
    if a and b:
        checks.append(("batch 1, conc 8: req/s >= 10x MLflow", a >= 10 * b, f"{a / b:.1f}x"))
    a, b = get(o, 1, 8, "p99_ms"), get(ml, 1, 8, "p99_ms")
    if a and b:
        checks.append(("batch 1, conc 8: p99 <= 1/5 of MLflow's", a <= b / 5, f"{a:.2f} ms vs {b:.2f} ms"))
    a, b = get(o, 1000, 8, "rps"), get(ml, 1000, 8, "rps")
    if a and b:
        checks.append(("batch 1000, conc 8: rows/s >= 2x MLflow", a >= 2 * b, f"{a / b:.2f}x"))
    a, p50 = get(o, 1000, 1, "mean_ms"), get(o, 1000, 1, "p50_ms")
    if a and p50 and floor:
        f = floor["ms"]
        checks.append(
            (
                "batch 1000, conc 1: time per request <= 1.25x in-process floor",
                a <= 1.25 * f,
                f"{a:.1f} ms (mean; p50 {p50:.1f} ms = {p50 / f:.2f}x) vs floor {f:.1f} ms "
                f"({floor['path']} path, best of 20) = {a / f:.2f}x",
            )
        )
    so = servers.get("ours")
    if so and so.ready_at is not None and so.cold_start is not None:
        checks.append(
            (
                "cold start to ready <= 2 s",
                so.ready_at <= 2.0,
                f"ready {so.ready_at:.2f} s, first prediction {so.cold_start:.2f} s",
            )
        )
    for n, c in ((1, 8), (100, 8), (1000, 8)):
        a, b = get(o, n, c, "rps"), get(off, n, c, "rps")
        if a and b:
            checks.append(
                (
                    f"logging on costs <= 10% (batch {n}, conc {c})",
                    a >= 0.9 * b,
                    f"costs {(1 - a / b) * 100:.1f}% ({a:.0f} vs {b:.0f} req/s)",
                )
            )
    lines += ["", "## Targets", "", "| target | met | measured |", "|---|---|---|"]
    for what, ok, val in checks:
        lines.append(f"| {what} | {'yes' if ok else 'NO'} | {val} |")
    lines.append("")
    if floor:
        lines += [
            f"In-process floor at batch 1000 (JSON decode + feature columns + {floor['path']} predict, the "
            f"path the service reports for 1000 rows), measured right before each round of the batch-1000 "
            f"conc-1 cell: best of 20 per round {floor['rounds']} ms (load average then "
            f"{floor['loadavg']}); kept {floor['ms']:.2f} ms (that round's median {floor['median_ms']:.2f} ms).",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per cell and server (default 3)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per cell, best kept (default 2)")
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--rows", type=int, default=3000, help="training rows")
    ap.add_argument("--servers", default="ours,ours-nolog,mlflow,bare")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)), help="batch sizes (e.g. 100,1000)")
    ap.add_argument("--conc", default=",".join(map(str, CONCURRENCY)), help="concurrency levels (e.g. 1,8)")
    ap.add_argument(
        "--env",
        action="append",
        default=[],
        help="KEY=VALUE for our service (repeatable), e.g. INFERENCE_THREADS=2",
    )
    ap.add_argument("--out", default=str(BENCH / "results.md"))
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    t_start = time.perf_counter()
    loadavg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    work = Path(tempfile.mkdtemp(prefix="gradeflow-bench-"))
    print(f"work folder {work}")
    try:
        prep = prepare(work, args.rows, args.trees)
        model_file = prep["export"] / "model.joblib"
        wanted = args.servers.split(",")
        extra = dict(kv.split("=", 1) for kv in args.env)
        batches = [int(x) for x in args.batches.split(",")]
        concs = [int(x) for x in args.conc.split(",")]
        factories = {
            "ours": lambda: ours(work, True, extra),
            "ours-nolog": lambda: ours(work, False, extra),
            "mlflow": lambda: mlflow_serve(work, log_to_mlflow(work, prep["pipeline"], prep["X"])),
            "bare": lambda: bare(work, model_file),
        }
        floor = Floor(prep["export"], prep["bodies"][("ours", 1000)])
        results: dict[str, dict[tuple[int, int], dict[str, float]]] = {}
        servers: dict[str, Server] = {}
        info: dict[str, Any] = {"loadavg": loadavg}
        try:
            # cold starts one server at a time (nothing else running), then keep them all up
            for name in wanted:
                server = factories[name]()
                servers[name] = server
                server.start(prep["bodies"][(server.kind, 1)].read_bytes())
                print(f"{name}: ready {server.ready_at:.2f}s, first prediction {server.cold_start:.2f}s")
                if server.kind == "ours":
                    m = wait_sklearn_attached(server)
                    info["crossover"] = m["verification"].get("crossover_ms")
                    info["sklearn_from"] = m["predict_paths"]["sklearn_from_batch_size"]
                    if name == "ours" or "ours" not in wanted:
                        floor.use_path_of(info["sklearn_from"])  # the path the service picks for 1000 rows
                results[name] = {}
            # every cell runs the servers one after the other (idle servers use no CPU), `rounds` times in
            # rotating order; the best round per server is kept: on a machine shared with other work this
            # compares the servers under the same background load instead of minutes apart
            for n in batches:
                for c in concs:
                    runs: dict[str, list[dict[str, float]]] = {name: [] for name in wanted}
                    for k in range(args.rounds):
                        order = wanted[k % len(wanted) :] + wanted[: k % len(wanted)]
                        if n == 1000 and c == 1:
                            fl = floor.measure()  # servers idle: the floor under the load of this moment
                            print(
                                f"  floor ({floor.path}) best {fl['best_ms']:.2f} ms median {fl['median_ms']:.2f} "
                                f"ms (load average {fl['loadavg']:.1f})"
                            )
                        for name in order:
                            server = servers[name]
                            runs[name].append(
                                load(server, prep["bodies"][(server.kind, n)], c, CAPS[n], args.duration)
                            )
                    for name in wanted:
                        r = max(runs[name], key=lambda x: x["rps"])
                        r["rounds_rps"] = [round(x["rps"], 1) for x in runs[name]]  # type: ignore[assignment]
                        results[name][(n, c)] = r
                        print(
                            f"  {name:10s} batch {n:4d} conc {c:2d}: {r['rps']:8.1f} req/s "
                            f"p50 {r['p50_ms']:7.2f} ms p99 {r['p99_ms']:7.2f} ms errors {r['errors']} "
                            f"(rounds {r['rounds_rps']})"
                        )
        finally:
            for server in servers.values():
                server.stop()
        floor_result = floor.result() if floor.samples else None
        text = report(results, servers, floor_result, info, args, time.perf_counter() - t_start)
        Path(args.out).write_text(text)
        print()
        print(text)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
