"""The trainer killed (SIGKILL, TRAINER_FAULT_POINT) at every step of a champion change, then restarted.

A real MLflow server and the trainer as a real process. One chain of cases per registry: the trainer
started with the fault point of a case runs that case's operation (a retrain's publish,
``POST /promote`` or ``POST /rollback``) and dies at the step; the next trainer is started with the
NEXT case's fault point (fault points act only inside a champion change, never in the start-up
repair), reconciles, and the test checks that the registry's alias, the head of the promotion
history, ``MODEL_DIR/current`` and ``champion.json`` name the same version and run, that no intent is
left, that the killed job got a final state and that its MLflow run is not left RUNNING. Then it
runs the next case; a final trainer without a fault point checks the last one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from gradeflow_shared import manifest as mf
from gradeflow_shared.contracts import PromotionEvent
from gradeflow_shared.procs import ServiceProcess, bin_path
from gradeflow_shared.synth import synthetic_spec
from gradeflow_testkit.servers import free_port
from gradeflow_testkit.services import start_mlflow
from gradeflow_trainer.history import champion_stack
from gradeflow_trainer.promotion import INTENT_FILE, MARKER_FILE, STEPS

pytestmark = pytest.mark.integration

TOKEN = "it-token-of-the-crash-point-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BOUND = 240.0  # generous bound of every wait: never reached unless something is broken
PUBLISH = ("intent", "staged", "alias", "event", "current", "marker")
# Every step of POST /promote and POST /rollback. A retrain (~50 s here) publishes through the same
# ``promotion.publish`` after its own steps: its cases are the steps only a retrain has (the gate's
# tags, its own staged export) and the commit point; the unit tests crash a retrain at every step.
TRAIN_STEPS = ("decided", "staged", "alias")
ALL_CASES = [("train", s) for s in TRAIN_STEPS] + [(op, s) for op in ("promote", "rollback") for s in PUBLISH]
assert set(TRAIN_STEPS) | set(PUBLISH) == set(STEPS)


class Chain:
    """One model dir, one registered model, trainers started one after the other."""

    def __init__(self, tmp: Path, mlflow_url: str) -> None:
        self.tmp = tmp
        self.mlflow_url = mlflow_url
        self.model = f"it-crash-{uuid.uuid4().hex[:6]}"
        tmp.mkdir(parents=True, exist_ok=True)
        spec = tmp / "synthetic.json"
        spec.write_text(synthetic_spec(rows=500, seed=0).model_dump_json())
        self.env = {
            "DATA_DIR": str(tmp / "data"),
            "MLFLOW_TRACKING_URI": mlflow_url,
            "MODEL_NAME": self.model,
            "EXPERIMENT_NAME": self.model,
            "DATASET": str(spec),
            "TRAIN_SEARCH": "false",
            "TRAIN_ON_START": "false",
            "PROMOTION_MIN_IMPROVEMENT": "0",  # an equal retrain is promoted: every retrain publishes
            "REFERENCE_ROWS": "100",
            "INFERENCE_URL": "",
            "ADMIN_TOKEN": TOKEN,
            "HOST": "127.0.0.1",
            # MLflow's pip-requirements inference (a subprocess, ~20 s a model here) is not under test
            "MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT": "1",
        }
        self.models = tmp / "data" / "models"
        self.n = 0
        self.svc: ServiceProcess | None = None
        self.url = ""
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)

    def start(self, fault: str = "") -> None:
        """A trainer with ``fault`` as TRAINER_FAULT_POINT, returned once its start-up repair is done."""
        self.n += 1
        port = free_port()
        log = self.tmp / f"trainer-{self.n:02d}.log"
        self.svc = ServiceProcess(
            name="trainer",
            cmd=[bin_path("gradeflow-trainer")],
            env={**self.env, "TRAINER_PORT": str(port), "TRAINER_FAULT_POINT": fault},
            log_path=log,
            health_url=f"http://127.0.0.1:{port}/health",
        )
        self.svc.start(wait=BOUND)
        self.url = f"http://127.0.0.1:{port}"
        self.wait(lambda: f"champion of {self.model} is version" in log.read_text(), "start-up repair")

    def wait(self, done: Any, what: str) -> None:
        deadline = time.monotonic() + BOUND
        while not done():
            assert time.monotonic() < deadline, f"{what} not done within {BOUND:.0f}s:\n{self.tail()}"
            assert self.svc is not None and self.svc.alive(), f"trainer died during {what}:\n{self.tail()}"
            time.sleep(0.2)

    def tail(self) -> str:
        return self.svc.tail() if self.svc else ""

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        with httpx.Client(base_url=self.url, timeout=BOUND) as c:
            return c.request(method, path, headers=AUTH, **kw)

    def history(self) -> list[PromotionEvent]:
        return [PromotionEvent.model_validate(e) for e in self.call("GET", "/history").json()]

    def alias(self) -> tuple[int, str] | None:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(self.model, "champion")
        except MlflowException:
            return None
        return int(mv.version), str(mv.run_id)

    def versions(self) -> list[int]:
        return sorted(int(v.version) for v in self.client.search_model_versions(f"name='{self.model}'"))

    def expect_death(self, send: Any, case: str) -> None:
        """``send()`` starts the operation; the trainer must SIGKILL itself at the fault point."""
        assert self.svc is not None and self.svc.proc is not None
        with contextlib.suppress(httpx.TransportError):  # the process died under the request
            send()
        try:
            code: int | None = self.svc.proc.wait(BOUND)
        except subprocess.TimeoutExpired:
            code = None
        assert code == -9, f"{case}: trainer did not die at the fault point (exit {code}):\n{self.tail()}"

    def check(self, case: str, job_id: str | None) -> tuple[int, str] | None:
        """alias == history head == current == champion.json (versions and run ids); no intent; the job
        settled; its run not RUNNING."""
        alias = self.alias()
        stack = champion_stack(self.history())
        head = stack[-1] if stack else None
        cur = mf.read_current(self.models)
        marker_path = self.models / MARKER_FILE
        marker = json.loads(marker_path.read_text()) if marker_path.is_file() else None
        seen = {
            "alias": alias,
            "history head": head,
            "current": (cur[1].version, cur[1].run_id) if cur else None,
            "champion.json": (marker["version"], marker["run_id"]) if marker else None,
        }
        msg = f"{case}: {seen}\n{self.tail()}"
        assert seen["current"] == seen["champion.json"] == alias, msg
        assert head == (alias[0] if alias else None), msg
        assert not (self.models / INTENT_FILE).exists(), msg
        if job_id is not None:
            job = self.call("GET", f"/jobs/{job_id}").json()
            assert job["state"] in ("succeeded", "failed"), (case, job)
            if alias is not None and job["state"] == "succeeded":
                assert job["result"]["version"] == alias[0] or not job["result"]["decision"]["promoted"], job
            experiment = self.client.get_experiment_by_name(self.model)
            assert experiment is not None
            runs = self.client.search_runs(
                [experiment.experiment_id],
                filter_string=f"tags.`gradeflow.job_id` = '{job_id}'",
            )
            assert runs and all(r.info.status != "RUNNING" for r in runs), (
                case,
                [r.info.status for r in runs],
            )
        for v in self.client.search_model_versions(f"name='{self.model}'"):
            assert "gate.promoted" in (v.tags or {}), (case, v.version, v.tags)
        return alias

    def stop(self) -> None:
        if self.svc is not None:
            self.svc.stop()


def run_chain(tmp: Path, mlflow_url: str, cases: list[tuple[str, str]]) -> None:
    chain = Chain(tmp, mlflow_url)
    try:
        chain.start(f"{cases[0][0]}:{cases[0][1]}")
        for i, (op, step) in enumerate(cases):
            case = f"{op}:{step}"
            job_id: str | None = None
            if op == "train":
                job_id = chain.call("POST", "/retrain", json={"reason": case}).json()["id"]
                chain.expect_death(lambda: None, case)
            else:
                if chain.alias() is None or len(chain.versions()) < 2:
                    raise AssertionError(f"{case}: needs a champion and two versions (order of the cases)")
                champ = chain.alias()[0]  # type: ignore[index]
                other = next(v for v in reversed(chain.versions()) if v != champ)
                if op == "rollback" and len(champion_stack(chain.history())) < 2:
                    r = chain.call("POST", "/promote", json={"version": other, "reason": "set-up"})
                    assert r.status_code == 200, r.text
                body = {"version": other, "reason": case} if op == "promote" else {"reason": case}
                chain.expect_death(functools.partial(chain.call, "POST", f"/{op}", json=body), case)
            nxt = cases[i + 1] if i + 1 < len(cases) else None
            chain.start(f"{nxt[0]}:{nxt[1]}" if nxt else "")
            chain.check(case, job_id)
        # the last trainer has no fault point: a normal promotion still works after all the repairs
        champ = chain.alias()
        assert champ is not None
        other = next(v for v in chain.versions() if v != champ[0])
        assert chain.call("POST", "/promote", json={"version": other}).status_code == 200
        chain.check("final promote", None)
    finally:
        chain.stop()


@pytest.mark.timeout(900)
def test_crash_at_every_step_is_repaired_on_restart(mlflow_server: ServiceProcess, tmp_path: Path) -> None:
    run_chain(tmp_path, mlflow_server.url, ALL_CASES)  # type: ignore[attr-defined]


@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_crash_points_with_mlflow_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    mlflow_svc = start_mlflow(tmp_path / "mlflow", backend=postgres_url)
    try:
        cases = [("train", "staged"), ("train", "alias"), ("promote", "event"), ("rollback", "current")]
        run_chain(tmp_path / "chain", mlflow_svc.url, cases)  # type: ignore[attr-defined]
    finally:
        mlflow_svc.stop()


def _wait_job(chain: Chain, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + BOUND
    while True:
        job = chain.call("GET", f"/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed"):
            return job  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"job {job_id} not done:\n{chain.tail()}"
        time.sleep(0.5)


def _candidate(chain: Chain) -> int | None:
    from gradeflow_shared import rollout as ro

    link = ro.resolve_candidate(chain.models)
    return mf.read_manifest(link).version if link is not None else None


@pytest.mark.timeout(900)
def test_rollout_crash_points_are_repaired_on_restart(mlflow_server: ServiceProcess, tmp_path: Path) -> None:
    """ROLLOUT=shadow: the trainer SIGKILLed before the commit point of a rollout's start (the candidate
    link written, rollout.json not), after it, and after the commit point of its end; each restart leaves
    the champion, the candidate slot, rollout.json and the history consistent."""
    chain = Chain(tmp_path, mlflow_server.url)  # type: ignore[attr-defined]
    chain.env["ROLLOUT"] = "shadow"
    try:
        chain.start("rollout_start:candidate")
        v1 = _wait_job(chain, chain.call("POST", "/retrain", json={"reason": "v1"}).json()["id"])
        assert v1["state"] == "succeeded" and chain.alias() is not None  # no champion yet: direct
        champ = chain.alias()

        # killed after the candidate link, before rollout.json: the restart removes the link
        chain.call("POST", "/retrain", json={"reason": "v2"})
        chain.expect_death(lambda: None, "rollout_start:candidate")
        chain.start("rollout_start:state")
        ro_view = chain.call("GET", "/rollout").json()
        assert not ro_view["active"] and _candidate(chain) is None, (ro_view, chain.tail())
        assert chain.alias() == champ
        chain.check("rollout_start:candidate", None)

        # killed right after rollout.json (the commit point): the restart keeps the rollout, records its start
        chain.call("POST", "/retrain", json={"reason": "v3"})
        chain.expect_death(lambda: None, "rollout_start:state")
        chain.start("rollout_end:state")
        ro_view = chain.call("GET", "/rollout").json()
        assert ro_view["active"], (ro_view, chain.tail())
        v3 = ro_view["rollout"]["candidate_version"]
        assert _candidate(chain) == v3 and chain.alias() == champ
        starts = [e for e in chain.history() if e.action == "rollout_start" and e.version == v3]
        assert len(starts) == 1, chain.history()

        # killed after the abort's decision was written: the restart withdraws the link and records it
        chain.expect_death(
            functools.partial(chain.call, "POST", "/rollout/abort", json={"reason": "crash test abort"}),
            "rollout_end:state",
        )
        chain.start("")
        ro_view = chain.call("GET", "/rollout").json()
        assert ro_view["rollout"]["decision"] == "aborted" and ro_view["rollout"]["recorded"], ro_view
        assert _candidate(chain) is None and chain.alias() == champ
        last = chain.history()[-1]
        assert (last.action, last.version, last.reason) == ("rollout_abort", v3, "crash test abort"), last
        chain.check("rollout_end:state", None)
    finally:
        chain.stop()
