"""The loop on real data: does retraining on labelled rows of a new population heal the model?

Usage: python bench/loop_benchmark.py [--seeds 0 1 2 3 4] [--scenarios ...] [--out results/loop_benchmark.md]

A scenario splits a real file on a column that defines a population (e.g. school GP -> MS): the
base model is trained on the source population, then labelled rows of the target population
arrive. For every split seed the target rows get a random arrival order: the first
``LABELLED_SHARE`` are the labelled production rows, the rest are held out and scored. The
platform's own functions run in-process (no HTTP, no MLflow): ``service.assemble_data`` on the
source population (v1: base data only; v2: base + the labelled rows, handed over in place of the
pull from inference), ``service.fit_candidate`` (v2 includes the production-mix choice), and the
gate's ``decide`` on the v2-vs-v1 errors of the recent labelled holdout. Scored on the held-out
target rows (MAE):

* ``old``: v1, the model trained on the source population;
* ``platform``: v2, the platform's retrained model (what the gate judges; its training rows
  exclude the gate's holdout, the most recent ``PRODUCTION_HOLDOUT`` of the labelled rows);
* ``rf_base+lab``: a 300-tree random forest on the source training rows + ALL labelled rows;
* ``rf_lab``: a 300-tree random forest on ALL labelled rows only.

Rule: the platform is "at least as good as the best reference" when its mean MAE over seeds is
<= the best reference's mean MAE + that reference's standard error (SD over seeds / sqrt(seeds)).

The Kaggle files do not ship: their scenarios run only when DATASET_ROOT holds them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestRegressor

from gradeflow_shared.contracts import RetrainRequest
from gradeflow_shared.datasets import DatasetSpec, load_dataset, load_spec
from gradeflow_shared.errors import DatasetError
from gradeflow_trainer import gate, service
from gradeflow_trainer import pipeline as P
from gradeflow_trainer.config import TrainerSettings
from gradeflow_trainer.labelled import LabelledRows

LABELLED_SHARE = 0.6
REFERENCES = ("rf_base+lab", "rf_lab")
MODELS = ("old", "platform", *REFERENCES)


@dataclass(frozen=True)
class Scenario:
    name: str
    dataset: str  # builtin dataset name
    column: str
    source: str
    target: str
    shipped: bool = True  # False: needs DATASET_ROOT


SCENARIOS = (
    Scenario("por-school-GP-to-MS", "uci-por", "school", "GP", "MS"),
    Scenario("por-address-U-to-R", "uci-por", "address", "U", "R"),
    Scenario("por-sex-F-to-M", "uci-por", "sex", "F", "M"),
    Scenario("spf-school-public-to-private", "spf", "School_Type", "Public", "Private", shipped=False),
    Scenario("sp-extracurricular-no-to-yes", "sp", "extracurricular_activities", "No", "Yes", shipped=False),
)


def _rf(columns: Any, X: pd.DataFrame, y: pd.Series, trees: int, seed: int) -> Any:
    pipe = P.build_pipeline(columns, "rf", {})
    pipe.steps[-1] = ("model", RandomForestRegressor(n_estimators=trees, random_state=seed, n_jobs=1))
    pipe.fit(P.prepare_frame(X, columns), np.asarray(y, dtype=float))
    return pipe


def _mae(pipe: Any, X: pd.DataFrame, y: pd.Series) -> float:
    return float(np.mean(np.abs(np.asarray(pipe.predict(X), dtype=float) - np.asarray(y, dtype=float))))


def load_population(sc: Scenario, data_root: str) -> tuple[DatasetSpec, pd.DataFrame, pd.DataFrame]:
    """The scenario's spec and its (source, target) rows, target column included."""
    spec = load_spec(sc.dataset, data_root=Path(data_root) if data_root else None)
    X, y, _ = load_dataset(spec)
    full = X.copy()
    full[spec.target] = y.to_numpy()
    col = full[sc.column].astype(str)
    return spec, full[col == sc.source].reset_index(drop=True), full[col == sc.target].reset_index(drop=True)


def run_one(
    sc: Scenario, seed: int, settings: TrainerSettings, tmp: Path, trees: int = 300
) -> dict[str, Any]:
    """One scenario, one split seed: every model's MAE on the held-out target rows + what was chosen."""
    spec, src, tgt = load_population(sc, settings.dataset_root)
    csv = tmp / f"{sc.name}-source.csv"
    src.to_csv(csv, index=False, sep=spec.sep)
    source_spec = spec.model_copy(update={"name": f"{sc.name}-source", "path": str(csv)})
    spec_file = tmp / f"{sc.name}-source.json"
    spec_file.write_text(source_spec.model_dump_json())
    s = settings.model_copy(update={"dataset": str(spec_file), "seed": seed})

    order = np.random.default_rng(seed).permutation(len(tgt))
    n_lab = int(round(len(tgt) * LABELLED_SHARE))
    lab, held = tgt.iloc[order[:n_lab]].reset_index(drop=True), tgt.iloc[order[n_lab:]].reset_index(drop=True)
    base1 = service.assemble_data(s, RetrainRequest(use_production_data=False))
    cols = base1.columns
    X_lab, y_lab = P.prepare_frame(lab, cols), lab[spec.target].astype(float).reset_index(drop=True)
    X_held, y_held = P.prepare_frame(held, cols), held[spec.target].astype(float)

    t0 = time.monotonic()
    v1 = service.fit_candidate(s, base1)
    data2 = service.assemble_data(s, RetrainRequest(), pull=lambda *_: LabelledRows(X_lab, y_lab))
    notes: list[str] = []
    v2 = service.fit_candidate(s, data2, lambda stage, _f: notes.append(stage))
    platform_secs = time.monotonic() - t0
    sets = data2.eval_sets()
    e1, e2 = service.abs_errors(v1.pipeline, sets), service.abs_errors(v2.pipeline, sets)
    decision = gate.decide(
        v2.challenger,
        service._eval_sets(v1.pipeline, sets),
        v2.naive,
        margin=s.promotion_min_improvement,
        base_tolerance=s.gate_base_tolerance,
        drift_ratio=s.gate_drift_ratio,
        errors={k: (e2[k], e1[k]) for k in sets},
        min_rows=s.gate_min_rows,
        seed=seed,
    )
    Xb_tr, yb_tr = base1.X_train, base1.y_train
    rf_both = _rf(cols, pd.concat([Xb_tr, X_lab], ignore_index=True), pd.concat([yb_tr, y_lab]), trees, seed)
    rf_lab = _rf(cols, X_lab, y_lab, trees, seed)
    return {
        "scenario": sc.name,
        "seed": seed,
        "rows": {"source": len(src), "labelled": n_lab, "held_out": len(held)},
        "mae": {
            "old": _mae(v1.pipeline, X_held, y_held),
            "platform": _mae(v2.pipeline, X_held, y_held),
            "rf_base+lab": _mae(rf_both, X_held, y_held),
            "rf_lab": _mae(rf_lab, X_held, y_held),
        },
        "mix": v2.mix.chosen if v2.mix else "none",
        "promoted": decision.promoted,
        "more_labels": decision.more_labels_needed,
        "platform_secs": platform_secs,
    }


def _mean_se(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), se


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario: mean ± SE per model, the best reference and whether the platform is as good."""
    out = []
    for name in dict.fromkeys(r["scenario"] for r in results):
        rs = [r for r in results if r["scenario"] == name]
        stats = {m: _mean_se([r["mae"][m] for r in rs]) for m in MODELS}
        best = min(REFERENCES, key=lambda m: stats[m][0])
        bmean, bse = stats[best]
        ok = stats["platform"][0] <= bmean + (0.0 if math.isnan(bse) else bse)
        paired = {ref: _mean_se([r["mae"]["platform"] - r["mae"][ref] for r in rs]) for ref in ("old", best)}
        out.append(
            {
                "scenario": name,
                "seeds": len(rs),
                "rows": rs[0]["rows"],
                "stats": stats,
                "best": best,
                "ok": ok,
                "paired": paired,
                "mix": Counter(r["mix"] for r in rs),
                "promoted": sum(r["promoted"] for r in rs),
                "secs": float(np.mean([r["platform_secs"] for r in rs])),
            }
        )
    return out


def table(summary: list[dict[str, Any]]) -> str:
    head = (
        "| scenario | source / labelled / held-out rows | old (v1) | platform (v2) | RF-300 base+labelled | "
        "RF-300 labelled only | best reference | platform <= best + SE | platform - best (paired) | "
        "platform - old (paired) | mixes chosen | gate promoted v2 |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        st = s["stats"]
        cells = [f"{st[m][0]:.3f} ± {st[m][1]:.3f}" for m in MODELS]
        rows = s["rows"]
        mixes = ", ".join(f"{k} {v}" for k, v in s["mix"].most_common())
        lines.append(
            f"| {s['scenario']} | {rows['source']} / {rows['labelled']} / {rows['held_out']} | "
            + " | ".join(cells)
            + f" | {s['best']} | {'yes' if s['ok'] else 'NO'} | "
            + " | ".join(f"{s['paired'][k][0]:+.3f} ± {s['paired'][k][1]:.3f}" for k in (s["best"], "old"))
            + f" | {mixes} | {s['promoted']}/{s['seeds']} |"
        )
    return "\n".join(lines)


def report(
    summary: list[dict[str, Any]],
    results: list[dict[str, Any]],
    seeds: list[int],
    search: bool,
    trees: int,
    secs: float,
) -> str:
    """The markdown of results/loop_benchmark.md."""
    per_seed = [
        f"| {r['scenario']} | {r['seed']} | "
        + " | ".join(f"{r['mae'][m]:.3f}" for m in MODELS)
        + f" | {r['mix']} | {'promoted' if r['promoted'] else 'kept'}"
        + (f" (needs ≈{r['more_labels']} more labels)" if r["more_labels"] else "")
        + " |"
        for r in results
    ]
    return "\n".join(
        [
            "# Loop benchmark: retraining on labelled rows of a new population (real data)",
            "",
            "Generated by `make loop-benchmark` (`bench/loop_benchmark.py`; its docstring has the whole setup).",
            f"Split seeds {', '.join(map(str, seeds))}; TRAIN_SEARCH={'true' if search else 'false'} (the default "
            f"model family, no search, to stay within ~10 min on the shared 2-core machine); "
            f"reference forests {trees} trees; {LABELLED_SHARE:.0%} of the target population arrives labelled "
            f"(random order per seed), the rest is held out and scored; total {secs:.0f} s.",
            "",
            "MAE on the held-out target rows, mean over seeds ± standard error (SD over seeds / sqrt(seeds)). "
            "Rule: the platform is at least as good as the best reference when its mean <= the best "
            "reference's mean + that reference's standard error. The platform trains on the labelled rows "
            "minus the gate's holdout (the most recent PRODUCTION_HOLDOUT share); the references train on all "
            "of them. 'paired': the per-seed difference in MAE, mean ± SE over seeds (negative = the platform "
            "is better). 'gate promoted v2': the gate's verdict on v2 vs v1 on the recent labelled holdout "
            "(GATE_MIN_ROWS, paired bootstrap).",
            "",
            table(summary),
            "",
            "## Per seed",
            "",
            "| scenario | seed | " + " | ".join(MODELS) + " | mix chosen | gate |",
            "|---|---|" + "---|" * len(MODELS) + "---|---|",
            *per_seed,
            "",
        ]
    )


def run(
    scenarios: list[Scenario], seeds: list[int], settings: TrainerSettings, trees: int = 300
) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="gradeflow-loop-") as tmpd:
        for sc in scenarios:
            for seed in seeds:
                r = run_one(sc, seed, settings, Path(tmpd), trees)
                print(
                    f"{sc.name} seed {seed}: "
                    + ", ".join(f"{k} {v:.3f}" for k, v in r["mae"].items())
                    + f" | mix {r['mix']} | gate {'promoted' if r['promoted'] else 'kept'}"
                    f" | {r['platform_secs']:.1f}s",
                    flush=True,
                )
                results.append(r)
    return results


def available(names: list[str] | None, data_root: str) -> list[Scenario]:
    """The scenarios asked for (all by default) whose data is there; a note for each one skipped."""
    out = []
    for sc in SCENARIOS:
        if names and sc.name not in names:
            continue
        if not sc.shipped:
            try:
                load_spec(sc.dataset, data_root=Path(data_root) if data_root else None)
            except DatasetError:
                print(f"note: {sc.name} skipped: {sc.dataset} does not ship, set DATASET_ROOT to run it")
                continue
        out.append(sc)
    return out


def settings_for_bench(tmp: Path, search: bool) -> TrainerSettings:
    return TrainerSettings(
        data_dir=tmp,
        inference_url="",
        admin_token="loop-benchmark-token",
        train_on_start=False,
        train_search=search,
        dataset_root=os.environ.get("DATASET_ROOT", ""),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--scenarios", nargs="+", default=None)
    ap.add_argument("--trees", type=int, default=300, help="trees of the reference forests")
    ap.add_argument("--search", action="store_true", help="TRAIN_SEARCH on (slower; off by default)")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gradeflow-loop-data-") as tmpd:
        settings = settings_for_bench(Path(tmpd), args.search)
        scenarios = available(args.scenarios, settings.dataset_root)
        results = run(scenarios, args.seeds, settings, args.trees)
    summary = summarise(results)
    secs = time.monotonic() - t0
    print(table(summary))
    print(f"total {secs:.0f}s")
    if args.out:
        Path(args.out).write_text(report(summary, results, args.seeds, args.search, args.trees, secs))
    return 0 if all(s["ok"] for s in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
