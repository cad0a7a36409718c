"""Run the whole platform as local processes: ``make up`` (foreground) or ``make start`` (background).

Starts mlflow first (it alone opens its SQLite file, and its schema migration must finish before
anyone uses it), then the trainer (which trains the first model when none is exported yet),
inference and the monitor. Prints where everything is, follows the first training job, and on
Ctrl-C (or ``make down``) stops every service cleanly. Configuration comes from the environment
and ``.env`` (see ``.env.example``); ports are overridable (MLFLOW_PORT, TRAINER_PORT, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from gradeflow_shared.local_secrets import ensure_local_secrets
from gradeflow_shared.procs import ServiceProcess, bin_path, port_in_use

REPO = Path(__file__).resolve().parent.parent


def load_dotenv(path: Path) -> None:
    """Put .env values into os.environ (existing environment variables win)."""
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        os.environ.setdefault(key.strip(), value.strip().strip('"').strip("'"))


def config() -> dict[str, str]:
    env = os.environ
    data_dir = Path(env.get("DATA_DIR", str(REPO / "data"))).resolve()
    ports = {
        "mlflow": int(env.get("MLFLOW_PORT", "5000")),
        "trainer": int(env.get("TRAINER_PORT", "8001")),
        "inference": int(env.get("INFERENCE_PORT", "8000")),
        "monitor": int(env.get("MONITOR_PORT", "8002")),
    }
    common = {
        "DATA_DIR": str(data_dir),
        "HOST": env.get("HOST", "127.0.0.1"),
        "MLFLOW_DISABLE_TELEMETRY": "true",  # no usage telemetry from the server or the trainer's client
        "DO_NOT_TRACK": "true",
        "MLFLOW_PORT": str(ports["mlflow"]),
        "TRAINER_PORT": str(ports["trainer"]),
        "INFERENCE_PORT": str(ports["inference"]),
        "MONITOR_PORT": str(ports["monitor"]),
        "MLFLOW_TRACKING_URI": env.get("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{ports['mlflow']}"),
        "TRAINER_URL": env.get("TRAINER_URL", f"http://127.0.0.1:{ports['trainer']}"),
        "INFERENCE_URL": env.get("INFERENCE_URL", f"http://127.0.0.1:{ports['inference']}"),
        "MONITOR_URL": env.get("MONITOR_URL", f"http://127.0.0.1:{ports['monitor']}"),
    }
    tokens, secrets_path, created = ensure_local_secrets(data_dir, dict(env))
    common.update(tokens)
    common["_SECRETS_FILE"] = str(secrets_path)
    common["_SECRETS_CREATED"] = "1" if created else ""
    common.update({f"_PORT_{k}": str(v) for k, v in ports.items()})
    return common


def services(cfg: dict[str, str]) -> list[ServiceProcess]:
    logs = Path(cfg["DATA_DIR"]) / "logs"
    env = {k: v for k, v in cfg.items() if not k.startswith("_")}
    out = []
    for name in ("mlflow", "trainer", "inference", "monitor"):
        port = cfg[f"_PORT_{name}"]
        out.append(
            ServiceProcess(
                name=name,
                cmd=[bin_path(f"gradeflow-{name}")],
                env=env,
                log_path=logs / f"{name}.log",
                health_url=f"http://127.0.0.1:{port}/health",
            )
        )
    return out


def pid_file(cfg: dict[str, str]) -> Path:
    return Path(cfg["DATA_DIR"]) / "run" / "pids.json"


def banner(cfg: dict[str, str]) -> str:
    p = {k[6:]: v for k, v in cfg.items() if k.startswith("_PORT_")}
    lines = [
        "",
        "GradeFlow is up:",
        f"  MLflow UI            http://localhost:{p['mlflow']}",
        f"  Inference API        http://localhost:{p['inference']}/docs   (POST /predict, /feedback, /readings)",
        f"  Predict by id        curl -s -XPOST localhost:{p['inference']}/predict -H 'content-type: application/json' "
        '-d \'{"student_id": "S-00001"}\'',
        f"  Trainer API          http://localhost:{p['trainer']}/docs   (POST /retrain, /promote, /rollback)",
        f"  Monitor reports      http://localhost:{p['monitor']}/reports   (GET /drift, POST /checks)",
        f"  Data folder          {cfg['DATA_DIR']}   (logs in {cfg['DATA_DIR']}/logs)",
        f"  Tokens               {cfg['_SECRETS_FILE']}   (ADMIN_TOKEN, LABELLER_TOKEN, MLFLOW_TRACKING_PASSWORD; mode 0600"
        + (", created now)" if cfg["_SECRETS_CREATED"] else ")"),
        "",
    ]
    return "\n".join(lines)


def follow_first_training(cfg: dict[str, str], timeout: float = 600.0) -> None:
    """Print the trainer's job progress until a model is served (or the job fails)."""
    trainer, inference = cfg["TRAINER_URL"], cfg["INFERENCE_URL"]
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            ready = httpx.get(f"{inference}/ready", timeout=2).status_code == 200
            if ready:
                model = httpx.get(f"{inference}/model", timeout=2).json()
                print(f"  inference serves model version {model.get('version')}", flush=True)
                return
            jobs = httpx.get(f"{trainer}/jobs", timeout=2).json()
            job = (jobs.get("items") if isinstance(jobs, dict) else jobs) or []
            if job:
                j = job[0] if isinstance(job, list) else job
                line = (
                    f"  training job {j.get('id')}: {j.get('state')} {j.get('stage', '')} "
                    f"{100 * float(j.get('progress') or 0):.0f}%"
                )
                if line != last:
                    print(line, flush=True)
                    last = line
                if j.get("state") == "failed":
                    print(f"  training failed: {j.get('error')}", flush=True)
                    return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(1)
    print("  (no model served yet; see the trainer log)", flush=True)


def seed_feature_store(cfg: dict[str, str]) -> bool:
    """Apply the feature store and seed it with DATASET's students (once; later runs only re-apply), so
    inference serves POST /predict by student id from the first minute. Its output goes to logs/features.log."""
    env = {**os.environ, **{k: v for k, v in cfg.items() if not k.startswith("_")}}
    cmd = [bin_path("gradeflow-features"), "seed"]
    if os.environ.get("DATASET"):
        cmd += ["--dataset", os.environ["DATASET"]]
    log = Path(cfg["DATA_DIR"]) / "logs" / "features.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"seeding the feature store (log: {log})", flush=True)
    with log.open("a") as fh:
        rc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
    lines = log.read_text(errors="replace").splitlines()
    if rc != 0:
        print(
            f"  feature store NOT seeded (exit {rc}); predict by id answers 404 until it is:", file=sys.stderr
        )
        print("\n".join("  " + line for line in lines[-10:]), file=sys.stderr)
        return False
    print("  " + (lines[-1] if lines else "seeded"), flush=True)
    return True


def start(detach: bool) -> int:
    cfg = config()
    procs = services(cfg)
    busy = [(s.name, cfg[f"_PORT_{s.name}"]) for s in procs if port_in_use(int(cfg[f"_PORT_{s.name}"]))]
    if busy:
        for name, port in busy:
            print(
                f"port {port} for {name} is in use: stop what holds it, `make down`, or set "
                f"{name.upper()}_PORT=<free port>",
                file=sys.stderr,
            )
        return 2
    seed_feature_store(cfg)
    started: list[ServiceProcess] = []
    try:
        for svc in procs:
            print(f"starting {svc.name:<9} (log: {svc.log_path})", flush=True)
            svc.start(wait=180)
            started.append(svc)
    except (RuntimeError, TimeoutError) as exc:
        print(f"\n{exc}", file=sys.stderr)
        for s in reversed(started):
            s.stop()
        return 1
    pf = pid_file(cfg)
    pf.parent.mkdir(parents=True, exist_ok=True)
    pf.write_text(json.dumps({s.name: s.proc.pid for s in started if s.proc}))
    print(banner(cfg), flush=True)
    follow_first_training(cfg)
    if detach:
        print("running in the background; `make down` stops it", flush=True)
        return 0
    print("press Ctrl-C to stop", flush=True)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    while not stop:
        for s in started:
            if not s.alive():
                print(
                    f"{s.name} exited ({s.proc.returncode if s.proc else '?'}); last log lines:\n{s.tail(30)}",
                    file=sys.stderr,
                )
                stop = True
                break
        time.sleep(0.5)
    print("stopping ...", flush=True)
    for s in reversed(started):
        s.stop()
    pf.unlink(missing_ok=True)
    return 0


def down() -> int:
    cfg = config()
    pf = pid_file(cfg)
    if not pf.is_file():
        print("nothing to stop (no pid file)")
        return 0
    pids = json.loads(pf.read_text())
    for name in reversed(list(pids)):
        try:
            os.killpg(pids[name], signal.SIGTERM)
            print(f"stopping {name} (pid {pids[name]})")
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 20
    for pid in pids.values():
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
    pf.unlink(missing_ok=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "start", "down"], nargs="?", default="up")
    args = parser.parse_args()
    load_dotenv(REPO / ".env")
    if args.command == "down":
        return down()
    return start(detach=args.command == "start")


if __name__ == "__main__":
    sys.exit(main())
