"""``make fuzz``: schemathesis against the inference, trainer and monitor APIs, as real processes.

Starts mlflow and the three services on free ports with a temporary DATA_DIR and fresh random
tokens, waits until inference serves the first model (so that /predict answers for real), then runs
``schemathesis run <service>/openapi.json --checks all`` against each with the admin token, a fixed
seed and a bounded number of examples, one worker. Every service is stopped in the end, whatever
happens. Exit code 0 only when no check failed in any service (no server error, no response that the
schema does not document); the schemathesis output of each service is printed and kept in
``<DATA_DIR>/fuzz/<service>.txt`` (DATA_DIR is kept when something failed).

    python -m scripts.fuzz                         # what make fuzz runs
    python -m scripts.fuzz --services inference --max-examples 50 --seed 7
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from gradeflow_shared.procs import bin_path
from gradeflow_shared.synth import synthetic_spec
from gradeflow_testkit.loop import Urls
from gradeflow_testkit.stack import local_stack, print_logs, stop_stack, wait_model_served

SERVICES = ("inference", "trainer", "monitor")
# cheap retrains (POST /retrain with the token trains for real): a small synthetic dataset, no search;
# no scheduled drift check while fuzzing; accepted readings stay in the journal (pushing the fuzzer's
# partial, back-dated students online would turn its by-id predictions into the 422s the rules ask for)
STACK_ENV = {
    "TRAIN_SEARCH": "false",
    "CHECK_INTERVAL_SECONDS": "86400",
    "FEATURE_PUSH_INTERVAL": "86400",
    "FEATURE_MATERIALIZE_INTERVAL": "0",
}
DATASET_ROWS = 1500


def schemathesis_cmd(base_url: str, token: str, seed: int, max_examples: int, report: Path) -> list[str]:
    return [
        bin_path("schemathesis"),
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        "all",
        "--seed",
        str(seed),
        "--max-examples",
        str(max_examples),
        "--workers",
        "1",
        "--continue-on-failure",  # every distinct failure of an operation, not only the first
        "--header",
        f"Authorization: Bearer {token}",
        "--request-timeout",
        "30",
        # promote and rollback export a real model (seconds; 18 s seen on a slow shared machine): the
        # response-time check allows what the request timeout allows, not its 10 s default
        "--max-response-time",
        "30",
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
    ]


def fuzz_service(name: str, urls: Urls, args: argparse.Namespace, out_dir: Path) -> tuple[int, float]:
    """Run schemathesis against one service; its exit code (124 on timeout) and the seconds it took."""
    cmd = schemathesis_cmd(
        getattr(urls, name), urls.token, args.seed, args.max_examples, out_dir / f"{name}.junit.xml"
    )
    log = out_dir / f"{name}.txt"
    print(f"\n=== schemathesis: {name} ({getattr(urls, name)}), output in {log}", flush=True)
    t0 = time.monotonic()
    with log.open("w") as fh:
        # in out_dir: schemathesis keeps a cache of earlier crashes (.schemathesis/) in its working
        # folder and replays them first; each run starts fresh and leaves nothing in the repository
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=out_dir)
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # schemathesis then prints what it found so far
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            fh.write(f"\nschemathesis did not finish in {args.timeout}s: interrupted\n")
            rc = 124
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    print(log.read_text(errors="replace"), flush=True)
    return rc, time.monotonic() - t0


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops every service


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", default=",".join(SERVICES), help="comma-separated subset of %(default)s")
    p.add_argument("--seed", type=int, default=20261202)
    p.add_argument("--max-examples", type=int, default=50, help="per operation and phase")
    p.add_argument("--timeout", type=int, default=150, help="seconds for one service's schemathesis run")
    p.add_argument("--keep", action="store_true", help="keep DATA_DIR even when everything passed")
    args = p.parse_args(argv)
    names = [s.strip() for s in args.services.split(",") if s.strip()]
    unknown = sorted(set(names) - set(SERVICES))
    if unknown:
        p.error(f"unknown service(s) {unknown}; choose from {SERVICES}")

    signal.signal(signal.SIGTERM, _terminate)
    data_dir = Path(tempfile.mkdtemp(prefix="gradeflow-fuzz-"))
    out_dir = data_dir / "fuzz"
    out_dir.mkdir()
    results: dict[str, tuple[int, float]] = {}
    t0 = time.monotonic()
    print(f"starting mlflow, trainer, inference, monitor (DATA_DIR {data_dir}) ...", flush=True)
    dataset = data_dir / "synthetic-small.json"
    dataset.write_text(synthetic_spec(rows=DATASET_ROWS, seed=0).model_dump_json())
    # an applied (empty) feature store: POST /readings and /features/materialize answer for real
    subprocess.run(
        [bin_path("gradeflow-features"), "apply"],
        env={**os.environ, "DATA_DIR": str(data_dir)},
        check=True,
        stdout=subprocess.DEVNULL,
    )
    urls, procs = local_stack(data_dir, {**STACK_ENV, "DATASET": str(dataset)})
    try:
        wait_model_served(urls)
        print(f"a model is served after {time.monotonic() - t0:.0f}s", flush=True)
        for name in names:
            results[name] = fuzz_service(name, urls, args, out_dir)
        dead = [pr.name for pr in procs if not pr.alive()]
        if dead:
            print(f"\nservices that died while fuzzed: {dead}", flush=True)
            print_logs(procs)
            for name in set(dead) & set(results):
                results[name] = (1, results[name][1])
    finally:
        stop_stack(procs)

    failed = [n for n in names if results.get(n, (1, 0.0))[0] != 0]
    print(f"\n=== make fuzz summary (seed {args.seed}, up to {args.max_examples} examples an operation)")
    for name in names:
        rc, took = results.get(name, (1, 0.0))
        print(f"  {name:<10} {'ok' if rc == 0 else f'FAILED (exit {rc})':<16} {took:5.0f}s")
    print(f"  total {time.monotonic() - t0:.0f}s")
    if failed or args.keep:
        print(f"  outputs and service logs kept in {data_dir} (fuzz/, logs/)")
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
