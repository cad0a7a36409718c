"""The container test (`make compose-test`): build the images, `docker compose up -d --wait`, then
drive the platform through its published ports.

1. smoke: MLflow's login (401 without it) and its UI and API with it, the champion exported and
   served, predict, feedback (with a bearer token), GET /predictions, trainer /model, a monitor check
   and its report page;
   then predict by student id from the seeded feature store (Redis online store), a 404 for an unknown
   student, a reading sent to POST /readings changing that student's prediction, and the trainer
   building point-in-time training rows from the same store volume (FEATURE_SOURCE=feast);
2. observability: the `observability` profile added to the running stack; Prometheus loads its alert
   rules, scrapes all four services (MLflow through its login) and holds the smoke's figures
   (predictions, live MAE from the feedback, the champion version);
3. restart the inference container: it comes back serving the same model version with its
   prediction log intact (rows counted through GET /predictions before and after);
4. the closed loop (tests/e2e/test_loop.py) against the containers (skip with --no-loop);
5. the store switch (skip with --no-switch): the running SQLite platform is brought up again with the
   PostgreSQL profile, volumes kept, as a user would by editing .env. MLflow comes back on an empty
   registry while MODEL_DIR still holds the old champion's export; the trainer must withdraw that
   export and train the new registry's first champion, and inference must end up serving exactly that
   run (version and run id as MLflow's alias says), not the old model under the same version number;
6. progressive delivery (skip with --no-rollout): the running platform brought up again with
   tests/e2e/compose.rollout.yml (ROLLOUT=shadow+canary, the rollout judged every second; trainer and
   monitor recreated), then only prediction traffic and its labels, as in tests/e2e/test_rollout.py:
   drifted traffic -> the monitor retrains -> a challenger in shadow -> a manual POST /rollout/abort
   (champion untouched, candidate withdrawn); drifted traffic -> a new challenger in shadow -> the labels
   return to the original relation, on which it is worse -> rolled back by the monitor (reason in the
   trainer's /rollout, its history and the version's MLflow tags); drifted traffic -> a third challenger
   -> shadow -> canary -> promoted by the monitor (the registry's alias and inference's model move).

Every service's log is printed on failure, and `docker compose down -v` always runs (also on
Ctrl-C / SIGTERM). Host ports are picked free, the project name is unique, the images get their own
prefix (IMAGE_PREFIX=gradeflow-compose-test, or COMPOSE_TEST_IMAGE_PREFIX, so a test build never replaces the images a platform of
yours runs from), and the repository's own .env is not read (a generated env file is passed; the
variables it sets are removed from the environment compose sees, where they would win), so it never
touches a platform you run yourself.

    python scripts/compose_test.py [--no-build] [--no-loop] [--no-switch] [--no-rollout] [--postgres] [--keep]
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from gradeflow_testkit.loop import wait_for

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILES = [ROOT / "docker-compose.yml", ROOT / "tests/e2e/compose.test.yml"]
ROLLOUT_FILE = ROOT / "tests/e2e/compose.rollout.yml"
# the synthetic scenario the rollout phase drifts to (as tests/e2e/test_rollout.py)
DRIFT = "concept_study_hours"
SERVICES = ["mlflow", "trainer", "inference", "monitor"]
ALERTS = {
    "GradeflowDataDrift",
    "GradeflowPerformanceDegraded",
    "GradeflowRolloutRolledBack",
    "GradeflowInference5xxRate",
    "GradeflowInferenceP99Latency",
    "GradeflowTargetDown",
}
IMAGE_PREFIX = os.environ.get("COMPOSE_TEST_IMAGE_PREFIX", "gradeflow-compose-test")
MLFLOW_USER = "admin"
SMOKE_ROWS = 250
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[compose-test {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Compose:
    def __init__(
        self,
        project: str,
        env_file: Path,
        profiles: list[str],
        settings: dict[str, Any],
        extra_files: tuple[Path, ...] = (),
    ) -> None:
        self.project, self.env_file, self.profiles, self.settings = project, env_file, profiles, settings
        self.base = ["docker", "compose", "-p", project, "--env-file", str(env_file)]
        for f in [*COMPOSE_FILES, *extra_files]:
            self.base += ["-f", str(f)]
        for p in profiles:
            self.base += ["--profile", p]
        self.env = {**os.environ, "COMPOSE_BAKE": "false"}
        # a variable of the shell beats the env file in compose's interpolation: drop ours from it
        for name in [*settings, "COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME", "COMPOSE_FILE"]:
            self.env.pop(name, None)

    def run(
        self, *args: str, check: bool = True, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.base, *args], cwd=ROOT, env=self.env, check=check, timeout=timeout, text=True
        )

    def output(self, *args: str) -> str:
        return subprocess.run(
            [*self.base, *args], cwd=ROOT, env=self.env, check=True, text=True, capture_output=True
        ).stdout

    def logs(self) -> None:
        for svc in self.output("ps", "-a", "--services").split():
            print(f"\n----- {svc} log -----", flush=True)
            self.run("logs", "--no-color", "--tail", "200", svc, check=False)


def up_wait(compose: Compose, trainer_url: str, timeout: int, *extra: str) -> None:
    """`up -d --wait [extra]`, but give up at once when the first training job fails (inference would
    otherwise stay unhealthy until the wait timeout)."""
    proc = subprocess.Popen(
        [*compose.base, "up", "-d", "--wait", "--wait-timeout", str(timeout), *extra],
        cwd=ROOT,
        env=compose.env,
    )
    try:
        while proc.poll() is None:
            time.sleep(5)
            try:
                jobs = httpx.get(f"{trainer_url}/jobs", timeout=5).json()
            except (httpx.HTTPError, ValueError):
                continue
            items = jobs["items"] if isinstance(jobs, dict) else jobs
            failed = [j for j in items if j.get("state") == "failed"]
            if failed:
                raise RuntimeError(f"the first training job failed: {failed[0].get('error')}")
        if proc.returncode != 0:
            raise RuntimeError(f"docker compose up --wait failed (exit {proc.returncode})")
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)


def count_predictions(inf: httpx.Client) -> int:
    n, since = 0, 0
    while True:
        r = inf.get("/predictions", params={"since_id": since, "limit": 1000})
        r.raise_for_status()
        page = r.json()
        n += len(page["items"])
        if page.get("next_since_id") is None or not page["items"]:
            return n
        since = page["next_since_id"]


def smoke(urls: dict[str, str], token: str, mlflow_password: str) -> int:
    """The platform answers end to end; returns the served model version."""
    from gradeflow_shared import synth
    from gradeflow_testkit.loop import to_records

    auth = {"Authorization": f"Bearer {token}"}
    # ENVIRONMENT=production: MLflow's login is on, for the UI and the API alike
    for path in ("/", "/api/2.0/mlflow/registered-models/search"):
        r = httpx.get(urls["mlflow"] + path, timeout=30)
        assert r.status_code == 401, f"MLflow {path} without a login: {r.status_code}"
    with (
        httpx.Client(base_url=urls["mlflow"], timeout=30, auth=(MLFLOW_USER, mlflow_password)) as ml,
        httpx.Client(base_url=urls["trainer"], timeout=30, headers=auth) as tr,
        httpx.Client(base_url=urls["inference"], timeout=60) as inf,
        httpx.Client(base_url=urls["monitor"], timeout=120) as mon,
    ):
        r = ml.get("/")
        assert r.status_code == 200 and "<html" in r.text.lower(), f"MLflow UI: {r.status_code}"
        r = ml.get("/api/2.0/mlflow/registered-models/search")
        assert r.status_code == 200, f"MLflow API from the host: {r.status_code} {r.text[:200]}"
        names = [m["name"] for m in r.json().get("registered_models", [])]
        log(f"MLflow: 401 without the login; UI 200 with it; registered models: {names}")
        assert names, "no registered model after `up --wait`"

        assert inf.get("/ready").status_code == 200
        served = inf.get("/model").json()
        version = int(served["version"])
        champion = tr.get("/model")
        assert champion.status_code == 200, champion.text
        log(f"inference serves version {version}; trainer champion: {champion.json().get('version')}")
        assert int(champion.json()["version"]) == version

        df = synth.generate(SMOKE_ROWS, seed=5)
        records = to_records(df.drop(columns=[synth.TARGET]))
        one = inf.post("/predict", json=records[0])
        assert one.status_code == 200, one.text
        batch = inf.post("/predict", json={"records": records[1:]})
        assert batch.status_code == 200, batch.text
        body = batch.json()
        assert body["model_version"] == version and len(body["predictions"]) == len(records) - 1
        ids = [one.json()["predictions"][0]["request_id"]] + [p["request_id"] for p in body["predictions"]]
        anon = inf.post("/feedback", json={"items": [{"request_id": ids[0], "actual": 10.0}]})
        assert anon.status_code == 401, f"feedback without a token: {anon.status_code} {anon.text[:200]}"
        fb = inf.post(
            "/feedback",
            headers=auth,
            json={
                "items": [
                    {"request_id": i, "actual": float(a)} for i, a in zip(ids, df[synth.TARGET], strict=True)
                ]
            },
        )
        assert fb.status_code == 200 and fb.json()["accepted"] == len(ids), fb.text
        rows = wait_for(
            "the prediction log to hold the smoke rows", lambda: count_predictions(inf) >= len(ids), 30
        )
        log(f"predict (1 + {len(records) - 1} rows) and feedback ok; prediction log complete: {rows}")

        def check_now() -> Any:
            # POST /checks runs one check on the window that now holds the smoke rows and answers
            # with its verdict; 409 = the scheduled check is running right now, so try again.
            r = mon.post("/checks")
            if r.status_code == 409:
                return None
            assert r.status_code == 200, r.text
            return r.json()

        verdict = wait_for("a monitor check of the smoke window", check_now, 180, interval=2)
        run_id = verdict["run_id"]
        log(
            f"monitor verdict: rows={verdict.get('rows')} drift={verdict.get('dataset_drift')} "
            f"action={verdict.get('action')}"
        )
        listing = mon.get("/reports")
        assert listing.status_code == 200 and f"reports/{run_id}" in listing.text, listing.text[:500]
        page = mon.get(f"/reports/{run_id}")
        assert page.status_code == 200, page.text[:300]
        assert page.headers["content-type"].startswith("text/html"), page.status_code
        assert "<html" in page.text.lower(), page.text[:300]
        summary = mon.get(f"/reports/{run_id}.json")
        assert summary.status_code == 200, summary.status_code
        summary.json()
        log(f"monitor: run {run_id} listed in /reports; drift report page {len(page.content)} bytes; JSON ok")
        return version


def check_observability(compose: Compose, url: str, version: int, rows: int) -> None:
    """Bring Prometheus up next to the running stack (profile observability) and read, through its HTTP
    API, that the rules are loaded, every target is up and the smoke's figures arrived."""
    compose.run("up", "-d", "--wait", "--wait-timeout", "120", "prometheus")
    with httpx.Client(base_url=url, timeout=10) as prom:
        rules = prom.get("/api/v1/rules").json()["data"]["groups"]
        loaded = {r["name"] for g in rules for r in g["rules"]}
        assert loaded >= ALERTS, f"alert rules loaded: {sorted(loaded)}"

        def targets_up() -> dict[str, str] | None:
            active = prom.get("/api/v1/targets").json()["data"]["activeTargets"]
            health = {t["labels"]["job"]: t["health"] for t in active}
            return health if health == dict.fromkeys(SERVICES, "up") else None

        def scalar(query: str) -> float | None:
            result = prom.get("/api/v1/query", params={"query": query}).json()["data"]["result"]
            return float(result[0]["value"][1]) if result else None

        health = wait_for("every Prometheus target up", targets_up, 60, interval=2)
        figures = {
            "predicted records": "sum(inference_predictions_total)",
            "labels in the live MAE": "sum(inference_live_abs_error_count)",
            "champion version": "max(gradeflow_trainer_champion_version)",
            "MLflow requests": "sum(mlflow_http_request_total)",
        }
        got = wait_for(
            "the smoke's figures in Prometheus",
            lambda: (lambda v: v if None not in v.values() else None)(
                {k: scalar(q) for k, q in figures.items()}
            ),
            60,
            interval=2,
        )
        assert got["predicted records"] >= rows and got["labels in the live MAE"] >= rows, got
        assert got["champion version"] == version, got
        log(f"prometheus: {len(loaded)} rules, targets {health}; figures {got}")


def by_id(urls: dict[str, str], token: str) -> None:
    """Predict by student id from the store the `features` job seeded, and a reading that changes it."""
    auth = {"Authorization": f"Bearer {token}"}
    sid = "S-00001"
    with httpx.Client(base_url=urls["inference"], timeout=60) as inf:
        r = inf.post("/predict", json={"student_id": sid})
        assert r.status_code == 200, f"predict by id: {r.status_code} {r.text[:300]}"
        before = r.json()["predictions"][0]["prediction"]
        r = inf.post("/predict", json={"student_ids": [sid, "S-00002", "S-00003"]})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 3, r.text[:300]
        r = inf.post("/predict", json={"student_id": "nobody-here"})
        assert r.status_code == 404 and "nobody-here" in r.json()["message"], r.text[:300]
        reading = {
            "student_id": sid,
            "event_timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "attendance_pct": 10.0,
            "study_hours_per_week": 0.0,
        }
        r = inf.post("/readings", json={"readings": [reading]})
        assert r.status_code == 401, f"readings without the token: {r.status_code}"
        r = inf.post("/readings", json={"readings": [reading]}, headers=auth)
        assert r.status_code == 200, r.text[:300]

        def changed() -> float | None:
            p = inf.post("/predict", json={"student_id": sid}).json()["predictions"][0]["prediction"]
            return p if abs(p - before) > 1e-6 else None

        after = wait_for("the reading to reach the online store", changed, 120, interval=1)
        log(f"predict by id ok (Redis online store); {sid}: {before:.2f} -> {after:.2f} after a reading")


# run inside the trainer container: point-in-time training rows from the store the `features` job seeded
# (the first 50 label rows of the seeded term: the same join a training run makes, kept short)
TRAINER_READS_STORE = """
from gradeflow_shared.datasets import load_spec
from gradeflow_shared.features import store as fs
from gradeflow_shared.features.seed import seed, store_spec
from gradeflow_trainer.config import get_settings
s = get_settings()
store = fs.feature_store(s)
hist = seed(store, store_spec(load_spec(s.dataset)))
rows = fs.historical_features(store, hist.labels.head(50), ["attendance_pct", "age"])
print(s.feature_store_path, int(rows.notna().all(axis=1).sum()), store.config.online_store.type)
"""


def trainer_reads_store(compose: Compose) -> None:
    """The trainer sees the feature store volume at the path inference uses (FEATURE_SOURCE=feast works)."""
    t = time.monotonic()
    out = compose.output(
        "exec", "-T", "-e", "FEATURE_SOURCE=feast", "trainer", "python", "-c", TRAINER_READS_STORE
    ).split()
    assert out[0] == "/features" and int(out[1]) == 50 and out[2] == "redis", out
    log(
        f"trainer reads the feature store: {out[1]} of 50 label rows complete, point-in-time, from "
        f"{out[0]} in {time.monotonic() - t:.0f}s (mostly `import feast`)"
    )


def check_postgres_stores(compose: Compose) -> None:
    """With the postgres profile, each service's store really is its PostgreSQL database."""
    for db in ("mlflow", "inference", "monitor"):
        out = compose.output(
            "exec",
            "-T",
            "postgres",
            "psql",
            "-U",
            "gradeflow",
            "-d",
            db,
            "-Atc",
            "select count(*) from information_schema.tables where table_schema = 'public'",
        )
        log(f"postgres database {db}: {out.strip()} tables")
        assert int(out.strip()) > 0, f"nothing stored in PostgreSQL database {db}"


def postgres_env(password: str) -> dict[str, str]:
    """The settings of the postgres profile: the three stores in their PostgreSQL databases."""
    env = {"POSTGRES_PASSWORD": password}
    for var, db in (
        ("MLFLOW_BACKEND_STORE_URI", "mlflow"),
        ("PREDICTION_DB_URL", "inference"),
        ("MONITOR_DB_URL", "monitor"),
    ):
        env[var] = f"postgresql+psycopg2://gradeflow:{password}@postgres:5432/{db}"
    return env


def registry_champion(mlflow_url: str, mlflow_password: str) -> tuple[int, str] | None:
    """(version, run id) of the champion alias, asked of MLflow itself; None while it has none."""
    r = httpx.get(
        f"{mlflow_url}/api/2.0/mlflow/registered-models/alias",
        params={"name": "student-grade", "alias": "champion"},
        auth=(MLFLOW_USER, mlflow_password),
        timeout=30,
    )
    if r.status_code != 200:
        return None
    mv = r.json()["model_version"]
    return int(mv["version"]), str(mv["run_id"])


def switch_to_postgres(
    old: Compose,
    env: dict[str, Any],
    env_file: Path,
    urls: dict[str, str],
    mlflow_password: str,
    timeout: int,
) -> Compose:
    """SQLite -> PostgreSQL on the running platform with volumes kept; inference must end up serving
    the new registry's champion. Returns the compose of the switched platform."""
    with httpx.Client(base_url=urls["inference"], timeout=30) as inf:
        before = inf.get("/model").json()
        old_champion = registry_champion(urls["mlflow"], mlflow_password)
        log(
            f"switch: SQLite registry champion {old_champion}; inference serves v{before['version']} "
            f"run {before.get('run_id')}"
        )
        env.update(postgres_env(secrets.token_hex(12)))
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        new = Compose(old.project, env_file, ["postgres"], env)
        t = time.monotonic()
        up_wait(new, urls["trainer"], timeout)
        log(f"switch: `up --wait` with the postgres profile returned after {time.monotonic() - t:.0f}s")

        def converged() -> tuple[int, str] | None:
            champion = registry_champion(urls["mlflow"], mlflow_password)
            if champion is None:
                return None
            served = inf.get("/model")
            if served.status_code != 200:
                return None
            m = served.json()
            return champion if (int(m["version"]), m.get("run_id")) == champion else None

        champion = wait_for("inference to serve the new registry's champion", converged, timeout, interval=2)
        log(
            f"switch: inference serves the PostgreSQL registry's champion v{champion[0]} run {champion[1]} "
            f"{time.monotonic() - t:.0f}s after the switch"
        )
        assert old_champion is None or champion[1] != old_champion[1], (old_champion, champion)
        ready = inf.get("/ready")
        assert ready.status_code == 200, ready.text
    check_postgres_stores(new)
    return new


def _started_at(container_id: str) -> str:
    return subprocess.run(
        ["docker", "inspect", "--format", "{{.State.StartedAt}}", container_id],
        check=True,
        text=True,
        capture_output=True,
    ).stdout.strip()


def restart_inference(compose: Compose, urls: dict[str, str]) -> None:
    with httpx.Client(base_url=urls["inference"], timeout=30) as inf:
        version = inf.get("/model").json()["version"]
        rows = count_predictions(inf)
        cid = compose.output("ps", "-q", "inference").strip()
        started = _started_at(cid)
        t = time.monotonic()
        compose.run("restart", "inference")
        assert _started_at(cid) != started, "the inference container was not restarted"
        wait_for("inference to serve again", lambda: inf.get("/ready").status_code == 200, 180)
        after_version = inf.get("/model").json()["version"]
        after_rows = count_predictions(inf)
        log(
            f"inference restarted in {time.monotonic() - t:.1f}s: version {version} -> {after_version}, "
            f"prediction log rows {rows} -> {after_rows}"
        )
        assert after_version == version, (version, after_version)
        assert after_rows == rows, (rows, after_rows)


def rollout_phase(
    old: Compose, urls: dict[str, str], token: str, mlflow_password: str, timeout: int
) -> Compose:
    """Progressive delivery in the containers, decided by the monitor on live labels (see the module
    docstring, step 6). Returns the compose of the reconfigured platform."""
    from gradeflow_shared import synth
    from gradeflow_testkit.loop import send_labelled

    auth = {"Authorization": f"Bearer {token}"}
    new = Compose(old.project, old.env_file, old.profiles, old.settings, (ROLLOUT_FILE,))
    t0 = time.monotonic()

    def step(msg: str) -> None:
        log(f"rollout +{time.monotonic() - t0:5.1f}s: {msg}")

    # only the two services whose settings change, side by side (the images are built already)
    up_wait(new, urls["trainer"], timeout, "--no-build", "--no-deps", "trainer", "monitor")
    with (
        httpx.Client(base_url=urls["trainer"], timeout=60, headers=auth) as tr,
        httpx.Client(base_url=urls["inference"], timeout=60) as inf,
        httpx.Client(base_url=urls["mlflow"], timeout=30, auth=(MLFLOW_USER, mlflow_password)) as ml,
    ):
        mode = tr.get("/rollout").json()
        assert mode["mode"] == "shadow+canary" and not mode["active"], mode
        v1 = int(tr.get("/model").json()["version"])
        wait_for(f"inference to serve v{v1}", lambda: int(inf.get("/model").json()["version"]) == v1, 60)
        step(f"`up --wait` with {ROLLOUT_FILE.name}: ROLLOUT=shadow+canary, champion v{v1}")
        seed = [2000]

        def labelled(scenario: str | None) -> None:
            seed[0] += 1
            df = synth.generate(100, seed=seed[0], scenario=scenario)
            send_labelled(inf, df, synth.TARGET, batch=50, headers=auth)

        def training() -> bool:
            jobs = tr.get("/jobs").json()
            items = jobs["items"] if isinstance(jobs, dict) else jobs
            return any(j.get("state") in ("queued", "running") for j in items)

        def until(what: str, cond: Any, scenario: str | None, limit: float = 300) -> Any:
            """Labelled traffic of ``scenario``, 100 rows at a time, until ``cond()`` holds; paused while a
            retrain runs (more rows would only make it slower: they are its training data)."""

            def tick() -> Any:
                got = cond()
                if got:
                    return got
                if not training():
                    labelled(scenario)
                return None

            return wait_for(what, tick, limit, interval=0.2)

        def rollout() -> dict[str, Any]:
            return tr.get("/rollout").json()  # type: ignore[no-any-return]

        def challenger(not_version: int | None = None) -> dict[str, Any] | None:
            """The rollout in progress once its candidate is not ``not_version`` (any stage: a decided
            shadow may already have moved on)."""
            r = rollout()
            ro = r["rollout"]
            return ro if r["active"] and ro["candidate_version"] != not_version else None

        def recorded(version: int) -> dict[str, Any] | None:
            ro = rollout()["rollout"]
            return ro if ro and ro["candidate_version"] == version and ro["recorded"] else None

        def champion_untouched(version: int) -> None:
            assert int(tr.get("/model").json()["version"]) == version
            champion = registry_champion(urls["mlflow"], mlflow_password)
            assert champion is not None and champion[0] == version, champion
            wait_for(
                f"inference to drop the candidate and serve v{version}",
                lambda: (
                    not inf.get("/rollout").json()["active"]
                    and int(inf.get("/model").json()["version"]) == version
                ),
                60,
                interval=0.5,
            )

        def tags(version: int) -> dict[str, str]:
            r = ml.get(
                "/api/2.0/mlflow/model-versions/get",
                params={"name": "student-grade", "version": str(version)},
            )
            r.raise_for_status()
            return {t["key"]: t["value"] for t in r.json()["model_version"].get("tags", [])}

        # c. drifted traffic -> the monitor retrains -> a challenger in shadow; the traffic stops (no labels,
        # no decision) and an admin aborts it by hand
        ro = until("a challenger in shadow", challenger, DRIFT)
        va = int(ro["candidate_version"])
        assert int(ro["champion_version"]) == v1, ro
        step(
            f"drifted traffic -> the monitor retrained -> v{va} in {ro['stage']} next to v{v1}; traffic stops"
        )
        r = tr.post("/rollout/abort", json={"reason": "compose-test: manual abort"})
        assert r.status_code == 200, r.text
        ro = r.json()["rollout"]
        assert (ro["candidate_version"], ro["decision"], r.json()["active"]) == (va, "aborted", False), ro
        champion_untouched(v1)
        last = tr.get("/history").json()[-1]
        assert (last["action"], last["version"]) == ("rollout_abort", va) and "manual abort" in last["reason"]
        assert tags(va)["rollout.decision"] == "aborted", tags(va)
        step(f"manual POST /rollout/abort: v{va} aborted and withdrawn, v{v1} still champion and served")

        # b. drifted traffic -> a new challenger; then the labels follow the original relation, on which it is
        # worse -> the monitor rolls it back
        ro = until("a new challenger in shadow", lambda: challenger(va), DRIFT)
        vb = int(ro["candidate_version"])
        step(f"drifted traffic -> retrained -> v{vb} in {ro['stage']}")
        ro = until("the worse challenger rolled back", lambda: recorded(vb), None)
        assert ro["decision"] == "rolled_back" and "worse" in ro["reason"], ro
        assert ro["evidence"]["high"] < 0, ro["evidence"]
        champion_untouched(v1)
        last = tr.get("/history").json()[-1]
        assert (last["action"], last["version"]) == ("rollout_rollback", vb), last
        assert "worse" in last["reason"] and last["reason"].startswith("monitor:"), last
        t = tags(vb)
        assert t["rollout.decision"] == "rolled_back" and "worse" in t["rollout.reason"], t
        step(
            f"original-relation labels -> v{vb} rolled back by the monitor on {ro['evidence'].get('n')} "
            f"comparisons ({ro['reason'][:120]}...); v{v1} champion and served; history and MLflow tags agree"
        )

        # a. drifted traffic -> a third challenger -> shadow -> canary -> promoted, by itself
        ro = until("a third challenger in shadow", lambda: challenger(vb), DRIFT)
        vc = int(ro["candidate_version"])
        step(f"drifted traffic -> retrained -> v{vc} in {ro['stage']}")
        seen = {ro["stage"]}

        def promoted() -> dict[str, Any] | None:
            r = rollout()
            now = r["rollout"]
            if r["active"] and now["stage"] not in seen:
                seen.add(now["stage"])
                step(f"v{vc} passed shadow -> {now['stage']}")
            return recorded(vc)

        ro = until("the promotion", promoted, DRIFT)
        assert ro["decision"] == "promoted", ro
        champion = registry_champion(urls["mlflow"], mlflow_password)
        assert champion is not None and champion[0] == vc, champion
        assert int(tr.get("/model").json()["version"]) == vc
        wait_for(f"inference to serve v{vc}", lambda: int(inf.get("/model").json()["version"]) == vc, 60)
        events = [e for e in tr.get("/history").json() if e["version"] == vc]
        actions = [e["action"] for e in events]
        assert actions == ["rollout_start", "rollout_stage", "rollout_promote"], actions
        # the stage change and the promotion were the monitor's, not a call of ours
        assert all(e["reason"].startswith("monitor:") for e in events[1:]), events
        assert tags(vc)["rollout.decision"] == "promoted"
        step(
            f"v{vc} promoted by the monitor: registry alias and inference on v{vc} ({ro['reason'][:120]}...)"
        )
    return new


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-build", action="store_true", help="use the images as they are")
    ap.add_argument(
        "--no-loop", action="store_true", help="smoke + restart only, skip tests/e2e/test_loop.py"
    )
    ap.add_argument(
        "--no-switch",
        action="store_true",
        help="skip the SQLite -> PostgreSQL switch of the running platform (volumes kept)",
    )
    ap.add_argument(
        "--no-rollout",
        action="store_true",
        help="skip the progressive-delivery phase (abort, automatic rollback, automatic promotion)",
    )
    ap.add_argument(
        "--postgres", action="store_true", help="profile postgres: MLflow, log and monitor in PostgreSQL"
    )
    ap.add_argument("--loop-test", default="tests/e2e/test_loop.py", help="the closed-loop pytest file")
    ap.add_argument("--keep", action="store_true", help="leave the stack running (no down -v) for debugging")
    ap.add_argument("--wait-timeout", type=int, default=int(os.environ.get("COMPOSE_WAIT_TIMEOUT", "900")))
    args = ap.parse_args()

    token = secrets.token_urlsafe(24)
    mlflow_password = secrets.token_urlsafe(24)
    ports = {svc: free_port() for svc in [*SERVICES, "postgres", "prometheus"]}
    project = f"gradeflow-test-{os.getpid()}"
    env: dict[str, Any] = {
        "COMPOSE_PROJECT_NAME": project,
        "IMAGE_PREFIX": IMAGE_PREFIX,
        "IMAGE_TAG": "latest",
        "ADMIN_TOKEN": token,
        "LABELLER_TOKEN": secrets.token_urlsafe(24),
        "MLFLOW_TRACKING_USERNAME": MLFLOW_USER,
        "MLFLOW_TRACKING_PASSWORD": mlflow_password,
        "ENVIRONMENT": "production",
        "LOG_LEVEL": "INFO",
        "MLFLOW_HOST_PORT": ports["mlflow"],
        "TRAINER_HOST_PORT": ports["trainer"],
        "INFERENCE_HOST_PORT": ports["inference"],
        "MONITOR_HOST_PORT": ports["monitor"],
        "POSTGRES_HOST_PORT": ports["postgres"],
        "PROMETHEUS_HOST_PORT": ports["prometheus"],
    }
    if args.postgres:
        env.update(postgres_env(secrets.token_hex(12)))
    switch = not args.postgres and not args.no_switch
    env_file = Path(tempfile.mkstemp(prefix="gradeflow-compose-", suffix=".env")[1])
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    compose = Compose(project, env_file, ["postgres"] if args.postgres else [], env)
    urls = {svc: f"http://127.0.0.1:{ports[svc]}" for svc in [*SERVICES, "prometheus"]}

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    ok = False
    timings: dict[str, float] = {}
    try:
        if not args.no_build:
            t = time.monotonic()
            # the switch needs the postgres image too, the observability check the prometheus one
            profiles = ["observability", *(["postgres"] if switch or args.postgres else [])]
            Compose(project, env_file, profiles, env).run("build")
            timings["build"] = time.monotonic() - t
            log(f"images built in {timings['build']:.0f}s")
        t = time.monotonic()
        log(f"docker compose -p {project} up -d --wait (timeout {args.wait_timeout}s); ports {ports}")
        up_wait(compose, urls["trainer"], args.wait_timeout)
        timings["up --wait (trained and serving)"] = time.monotonic() - t
        log(f"platform trained and serving after {timings['up --wait (trained and serving)']:.0f}s")
        compose.run("ps")

        t = time.monotonic()
        version = smoke(urls, token, mlflow_password)
        by_id(urls, token)
        trainer_reads_store(compose)
        timings["smoke"] = time.monotonic() - t
        t = time.monotonic()
        check_observability(
            Compose(project, env_file, ["observability"], env), urls["prometheus"], version, SMOKE_ROWS
        )
        timings["observability"] = time.monotonic() - t
        if args.postgres:
            check_postgres_stores(compose)
        t = time.monotonic()
        restart_inference(compose, urls)
        timings["inference restart"] = time.monotonic() - t

        if not args.no_loop:
            t = time.monotonic()
            e2e_env = {
                **os.environ,
                "E2E_MLFLOW_URL": urls["mlflow"],
                "E2E_TRAINER_URL": urls["trainer"],
                "E2E_INFERENCE_URL": urls["inference"],
                "E2E_MONITOR_URL": urls["monitor"],
                "E2E_ADMIN_TOKEN": token,
            }
            log(f"closed loop: pytest {args.loop_test} against the containers")
            rc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    args.loop_test,
                    "-q",
                    "-s",
                    "-p",
                    "no:cacheprovider",
                ],
                cwd=ROOT,
                env=e2e_env,
            ).returncode
            timings["closed loop"] = time.monotonic() - t
            if rc != 0:
                raise RuntimeError(f"{args.loop_test} failed (exit {rc})")
        if switch:
            t = time.monotonic()
            compose = switch_to_postgres(compose, env, env_file, urls, mlflow_password, args.wait_timeout)
            timings["switch to postgres"] = time.monotonic() - t
        if not args.no_rollout:
            t = time.monotonic()
            compose = rollout_phase(compose, urls, token, mlflow_password, args.wait_timeout)
            timings["rollout"] = time.monotonic() - t
        ok = True
    except (Exception, KeyboardInterrupt) as exc:
        log(f"FAILED: {type(exc).__name__}: {exc}")
        try:
            compose.run("ps", "-a", check=False)
            compose.logs()
        except Exception as log_exc:  # best effort: the original failure is what matters
            log(f"could not collect logs: {log_exc}")
    finally:
        if args.keep:
            log(f"--keep: left running; stop with: {' '.join(compose.base)} down -v")
        else:
            t = time.monotonic()
            # with every profile, so that their containers and volumes go too
            down = Compose(project, env_file, ["postgres", "observability"], env)
            down.run("down", "-v", "--remove-orphans", "--timeout", "20", check=False)
            timings["down -v"] = time.monotonic() - t
            env_file.unlink(missing_ok=True)
    log("timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    log("PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
