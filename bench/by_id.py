"""Predicting by student id vs sending the features: what the feature store lookup costs (make bench).

    uv run python bench/by_id.py               # alone (seeds its own store; a minute or two)
    (bench/run.py runs it after the main grid unless --no-by-id)

One export, one feature store seeded with 1000 synthetic students (the features are read back from the
store, so both request kinds predict the very same rows). Each server is our inference service (logging
on, like `ours`) with the store's online store: SQLite (cached per thread until the store changes, the
default), SQLite with FEATURE_CACHE_STUDENTS=0 (every request reads the store), and Redis when it answers
at TEST_REDIS_URL. At concurrency 1, in turns (the kind that goes first alternates each round):

* batch 1: p50 of `{"student_id": ...}` minus p50 of the full record (target: <= 2 ms);
* batch 1000: p50 of `{"student_ids": [1000 ids]}` / p50 of `{"records": [1000 records]}` (target <= 2x).

Next to each p50, the server's CPU time per request (user + system of the service process, over the same
load window): on a machine shared with other work the wall-clock figures swing with the load, the CPU
time much less. Before the requests, each store's server is cold-started ``cold_starts`` times in turns
with a server without a feature store (process launch -> /ready, median; target <= 2 s).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import CAPS, load, ours, prepare  # noqa: E402

STUDENTS = 1000
ADDED_MS_TARGET = 2.0
RATIO_TARGET = 2.0
COLD_START_TARGET = 2.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (the service process)."""
    import psutil

    proc = psutil.Process(pid)
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        t = p.cpu_times()
        total += t.user + t.system
    return total


def _cold_starts(work: Path, env: dict[str, str], bodies: dict[str, Path], name: str, n: int) -> Any:
    """``n`` cold starts (launch -> /ready) of the server with this store, in turns with one without a
    store; the last server with the store is left running (returned with both lists of seconds)."""
    ready: dict[str, list[float]] = {"store": [], "none": []}
    server = None
    for k in range(max(1, n)):
        for kind in ("store", "none") if k % 2 == 0 else ("none", "store"):
            if kind == "none":
                if n < 1:
                    continue
                s = ours(work, True, {"LOG_LEVEL": "WARNING"}, f"by-id-{name}-nostore")
                s.start(bodies["full-1"].read_bytes())
                s.stop()
            else:
                if server is not None:
                    server.stop()
                s = server = ours(work, True, {**env, "LOG_LEVEL": "WARNING"}, f"by-id-{name}")
                s.start(bodies["id-1"].read_bytes())
            assert s.ready_at is not None
            ready[kind].append(s.ready_at)
    return server, ready


def _bodies(work: Path, seeded: Any, features: list[str]) -> dict[str, Path]:
    ids = seeded.ids[:STUDENTS]
    frame = seeded.online(ids)
    records = [
        {f: (None if isinstance(v := row[f], float) and math.isnan(v) else v) for f in features}
        for row in frame.to_dict(orient="records")
    ]
    out = {
        "full-1": records[0],
        "id-1": {"student_id": ids[0]},
        "full-1000": {"records": records},
        "id-1000": {"student_ids": ids},
    }
    paths = {}
    for k, v in out.items():
        p = work / f"by-id-{k}.json"
        p.write_text(json.dumps(v, default=lambda x: x.item()))
        paths[k] = p
    return paths


def _stores(work: Path) -> dict[str, tuple[Any, dict[str, str]]]:
    from gradeflow_testkit.feature_store import seeded_store
    from gradeflow_testkit.services import REDIS_URL, redis_problem

    sqlite = seeded_store(work / "fs-sqlite", students=STUDENTS)
    env = {"FEATURE_STORE_DIR": str(sqlite.settings.feature_store_path)}
    stores: dict[str, tuple[Any, dict[str, str]]] = {
        "sqlite": (sqlite, env),
        "sqlite-nocache": (sqlite, {**env, "FEATURE_CACHE_STUDENTS": "0"}),
    }
    problem = redis_problem()
    if problem:
        print(f"by-id: Redis not measured ({problem})")
        return stores
    project = f"bench{uuid.uuid4().hex[:8]}"
    redis = seeded_store(
        work / "fs-redis", students=STUDENTS, feature_online_store_url=REDIS_URL, feature_project=project
    )
    stores["redis"] = (
        redis,
        {
            "FEATURE_STORE_DIR": str(redis.settings.feature_store_path),
            "FEATURE_ONLINE_STORE_URL": REDIS_URL,
            "FEATURE_PROJECT": project,
        },
    )
    return stores


def _drop_redis_keys(project: str) -> None:
    import redis

    from gradeflow_testkit.services import REDIS_URL

    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=b"*" + project.encode(), count=1000):
        client.delete(key)
    client.close()


def run(
    work: Path,
    features: list[str],
    duration: float,
    rounds: int,
    cold_starts: int = 3,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Every store's figures: {store: {"added_ms": .., "p50": {kind: [..]}, "ratio_1000": .., "cpu_ms": ..,
    "ready": {"store": [..], "none": [..]}}}."""
    stores = _stores(work)
    results: dict[str, Any] = {}
    try:
        for name, (seeded, env) in stores.items():
            if only and name not in only:
                continue
            bodies = _bodies(work, seeded, features)
            server, ready = _cold_starts(work, env, bodies, name, cold_starts)
            try:
                p50: dict[str, list[float]] = {k: [] for k in bodies}
                cpu: dict[str, list[float]] = {k: [] for k in bodies}
                pid = server.proc.proc.pid
                for k in range(rounds):
                    for pair in (("full-1", "id-1"), ("full-1000", "id-1000")):
                        for kind in pair if k % 2 == 0 else pair[::-1]:
                            n = 1 if kind.endswith("-1") else 1000
                            c0 = _cpu_seconds(pid)
                            r = load(server, bodies[kind], 1, CAPS[n], duration)
                            if r["errors"]:
                                raise RuntimeError(
                                    f"{name} {kind}: {r['errors']} errors:\n{server.proc.tail()}"
                                )
                            p50[kind].append(r["p50_ms"])
                            # loadgen sends 3 warm-up requests before the timed ones
                            cpu[kind].append((_cpu_seconds(pid) - c0) * 1000 / (r["requests"] + 3))
            finally:
                server.stop()
            med = {k: statistics.median(v) for k, v in p50.items()}
            cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
            results[name] = {
                "p50": p50,
                "median": med,
                "added_ms": med["id-1"] - med["full-1"],
                "ratio_1000": med["id-1000"] / med["full-1000"],
                "cpu_ms": cpu_med,
                "cpu_ratio_1000": cpu_med["id-1000"] / cpu_med["full-1000"],
                "ready": ready,
            }
            r = results[name]
            print(
                f"  by-id {name:15s} batch 1: full {med['full-1']:.2f} ms, by id {med['id-1']:.2f} ms "
                f"(+{r['added_ms']:.2f} ms); batch 1000: full {med['full-1000']:.1f} ms, ids "
                f"{med['id-1000']:.1f} ms ({r['ratio_1000']:.2f}x; CPU per request {cpu_med['full-1000']:.1f} "
                f"vs {cpu_med['id-1000']:.1f} ms, {r['cpu_ratio_1000']:.2f}x); ready "
                f"{statistics.median(ready['store']):.2f} s"
                + (f" (no store {statistics.median(ready['none']):.2f} s)" if ready["none"] else "")
            )
    finally:
        if "redis" in stores:
            _drop_redis_keys(stores["redis"][1]["FEATURE_PROJECT"])
    return results


def _secs(v: list[float]) -> str:
    return f"{statistics.median(v):.2f} s ({', '.join(f'{x:.2f}' for x in v)})"


def section(results: dict[str, Any], rounds: int, duration: float) -> str:
    """The Markdown section of bench/results.md."""
    lines = [
        "",
        "## Predict by student id (feature store lookup)",
        "",
        f"Concurrency 1, logging on, p50 per request; {rounds} rounds of {duration:g}s per kind, in turns, "
        "median of the rounds' p50s. 1000 students seeded in the store; full records are the store's "
        "values (same rows, same predictions).",
        "",
        "| online store | batch 1 full | batch 1 by id | added | batch 1000 full | 1000 ids | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        m = r["median"]
        lines.append(
            f"| {name} | {m['full-1']:.2f} ms | {m['id-1']:.2f} ms | {r['added_ms']:+.2f} ms | "
            f"{m['full-1000']:.1f} ms | {m['id-1000']:.1f} ms | {r['ratio_1000']:.2f}x |"
        )
    lines += [
        "",
        "Server CPU time per request (user + system of the service process over the same windows, median "
        "of the rounds; less sensitive to the machine's load than the latencies), and cold start "
        "(process launch -> /ready, in turns with a server without a feature store; median, every start):",
        "",
        "| online store | CPU batch 1 full / by id | CPU 1000 records / 1000 ids | ratio | ready with the store | "
        "ready without |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        c = r["cpu_ms"]
        lines.append(
            f"| {name} | {c['full-1']:.2f} / {c['id-1']:.2f} ms | {c['full-1000']:.1f} / {c['id-1000']:.1f} ms "
            f"| {r['cpu_ratio_1000']:.2f}x | {_secs(r['ready']['store'])} | "
            f"{_secs(r['ready']['none']) if r['ready']['none'] else '-'} |"
        )
    lines += ["", "| target | met | measured |", "|---|---|---|"]
    for name, r in results.items():
        lines.append(
            f"| by id adds <= {ADDED_MS_TARGET:g} ms p50 at batch 1 ({name}) | "
            f"{'yes' if r['added_ms'] <= ADDED_MS_TARGET else 'NO'} | {r['added_ms']:+.2f} ms |"
        )
        lines.append(
            f"| 1000 ids <= {RATIO_TARGET:g}x 1000 full records ({name}) | "
            f"{'yes' if r['ratio_1000'] <= RATIO_TARGET else 'NO'} | {r['ratio_1000']:.2f}x |"
        )
        ready = statistics.median(r["ready"]["store"])
        lines.append(
            f"| cold start to /ready <= {COLD_START_TARGET:g} s ({name}) | "
            f"{'yes' if ready <= COLD_START_TARGET else 'NO'} | {ready:.2f} s |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument(
        "--cold-starts",
        type=int,
        default=3,
        help="cold starts per store, in turns with no store (0: one, alone)",
    )
    ap.add_argument("--stores", default="", help="only these stores (e.g. sqlite-nocache,redis)")
    ap.add_argument("--out", default="", help="also write the section to this file")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gradeflow-bench-by-id-"))
    try:
        from gradeflow_shared.synth import COLUMNS

        prepare(work, args.rows, args.trees)
        res = run(
            work,
            [c.name for c in COLUMNS],
            args.duration,
            args.rounds,
            args.cold_starts,
            [s for s in args.stores.split(",") if s],
        )
        text = section(res, args.rounds, args.duration)
        print(text)
        if args.out:
            Path(args.out).write_text(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
