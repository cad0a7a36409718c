"""Loop benchmark: does the platform's retrain heal a natural shift as well as a careful analyst?

Usage: python scripts/loop_benchmark.py [--seeds 0 1 2 3 4] [--search] [--label-share 0.5] [--data-root DIR]
                                        [--scenarios uci-por:school ...] [--out results/loop_benchmark.md]

Scenarios split a shipped real file on a population column: the source population is the base
dataset, the target population arrives in production. For each scenario and split seed:

1. the target rows are shuffled (seed) into an arrival order; the first ``--label-share`` of
   them arrive labelled (oldest first), the rest are held out and never fed back;
2. "old model": the trainer's own stages on the source rows only (``service.training_data`` +
   ``service.fit_candidate``, the service's default settings, TRAIN_SEARCH off unless ``--search``);
3. "platform": the same stages with the labelled target rows as the labelled production rows,
   in arrival order (the most recent PRODUCTION_HOLDOUT share held out for the gate, the training
   mix chosen by ``mix.choose``, then the normal fit, evaluated on the holdouts, then refit with the
   same mix, family and hyper-parameters on the training rows + the gate's recent holdout (+ the base
   holdout with REFIT_ON_BASE_HOLDOUT) when REFIT_ON_ALL_ROWS is on, the defaults): the retrained
   challenger as registered and served; the
   gate (``service.champion_evidence`` + ``service.verdict``, the service's code) judges its
   pre-refit fit against the old model on the recent holdout, as the service would;
4. references a careful analyst would fit, given everything the platform was given: a 300-tree
   random forest on all source rows + all labelled target rows, and one on the labelled target
   rows only;
5. every model is scored (MAE) on the held-out target rows.

The goal of a scenario: the platform's mean MAE <= the best reference's mean MAE. The Kaggle
files of the builtins ``spf`` and ``sp`` do not ship with GradeFlow (licence not established):
their scenarios (school type Public -> Private, extracurricular activities No -> Yes) run when
``--data-root`` (default: the DATASET_ROOT variable) names a folder that holds them, and are listed
as not run otherwise.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from gradeflow_shared.contracts import GateDecision
from gradeflow_shared.datasets import load_dataset, load_spec
from gradeflow_shared.errors import DatasetError
from gradeflow_trainer import pipeline as P
from gradeflow_trainer import service
from gradeflow_trainer.config import TrainerSettings
from gradeflow_trainer.labelled import LabelledRows

ROOT = Path(__file__).resolve().parents[1]

# (dataset, column, source value, target value)
SCENARIOS: dict[str, tuple[str, str, str, str]] = {
    "uci-por:school": ("uci-por", "school", "GP", "MS"),
    "uci-por:address": ("uci-por", "address", "U", "R"),
    "uci-mat:school": ("uci-mat", "school", "GP", "MS"),
    "uci-mat:address": ("uci-mat", "address", "U", "R"),
    # not shipped: run with --data-root / DATASET_ROOT
    "spf:school_type": ("spf", "School_Type", "Public", "Private"),
    "sp:extracurricular": ("sp", "extracurricular_activities", "No", "Yes"),
}
MODELS = ("old", "platform", "rf_base_labelled", "rf_labelled_only")
# why the gate kept the champion, from its reason (gate.py words them)
KEEP_WHY = (
    ("not enough evidence", "too few rows"),
    ("inconclusive", "inconclusive"),
    ("not better", "not better"),
    ("below the required", "gain < margin"),
    ("worse on the base holdout", "base guard"),
)


def gate_word(decision: GateDecision) -> str:
    """The gate's decision in a table cell: promote / keep, why, the recent rows and labels_needed."""
    if decision.promoted:
        return f"promote (n={decision.rows})"
    why = next((w for key, w in KEEP_WHY if key in decision.reason), "other")
    needs = f", needs {decision.labels_needed} more labels" if decision.labels_needed else ""
    return f"keep: {why} (n={decision.rows}{needs})"


@dataclass
class Outcome:
    scenario: str
    seed: int
    mae: dict[str, float]
    mix: str
    rows: dict[str, int]
    seconds: float
    retrain_seconds: float  # the platform's retrain alone: mix selection, fit, refit
    gate: str  # "promote (n=..)" / "keep: <why> (n=.., needs .. more labels)"
    gate_reason: str


def _rf300(X: pd.DataFrame, y: pd.Series, columns: list, seed: int = 0) -> object:  # type: ignore[type-arg]
    pipe = P.build_pipeline(columns, "rf", {"n_estimators": 300, "max_features": 1.0}, seed)
    return pipe.fit(P.prepare_frame(X, columns), np.asarray(y, dtype=float))


def _mae(pipe: object, X: pd.DataFrame, y: pd.Series, columns: list) -> float:  # type: ignore[type-arg]
    return P.evaluate(pipe, P.prepare_frame(X, columns), y)["mae"]  # type: ignore[arg-type]


def run(
    name: str, seed: int, settings: TrainerSettings, label_share: float, data_root: Path | None = None
) -> Outcome:
    dataset, col, src, tgt = SCENARIOS[name]
    spec = load_spec(dataset, data_root)
    X, y, columns = load_dataset(spec)
    s_mask, t_mask = (X[col] == src).to_numpy(), (X[col] == tgt).to_numpy()
    Xs, ys = X[s_mask].reset_index(drop=True), y[s_mask].reset_index(drop=True)
    order = np.random.default_rng(seed).permutation(int(t_mask.sum()))
    Xt, yt = X[t_mask].reset_index(drop=True).iloc[order], y[t_mask].reset_index(drop=True).iloc[order]
    n_lab = int(round(len(Xt) * label_share))
    X_lab, y_lab = Xt.iloc[:n_lab].reset_index(drop=True), yt.iloc[:n_lab].reset_index(drop=True)
    X_out, y_out = Xt.iloc[n_lab:].reset_index(drop=True), yt.iloc[n_lab:].reset_index(drop=True)
    t0 = time.monotonic()
    old_data = service.training_data(settings, spec, columns, Xs, ys, None)
    old = service.fit_candidate(settings, old_data)
    prod = LabelledRows(P.prepare_frame(X_lab, columns), y_lab.astype(float))
    t1 = time.monotonic()
    new_data = service.training_data(settings, spec, columns, Xs, ys, prod)
    new = service.fit_candidate(settings, new_data)
    secs, retrain = time.monotonic() - t0, time.monotonic() - t1
    champ_metrics, paired = service.champion_evidence(new, new_data.eval_sets(), old.pipeline)
    decision = service.verdict(settings, 2, new, 1, champ_metrics, paired)
    rf_both = _rf300(
        pd.concat([Xs, X_lab], ignore_index=True), pd.concat([ys, y_lab], ignore_index=True), columns
    )
    rf_lab = _rf300(X_lab, y_lab, columns)
    # for context, not a goal: the rows of the platform's served model (its refit: base training rows, + the base
    # holdout with REFIT_ON_BASE_HOLDOUT, + every labelled row; without the refit, its training rows)
    rf_same = _rf300(new_data.X_ref, new_data.y_ref, columns)
    mae = {
        "old": _mae(old.pipeline, X_out, y_out, columns),
        "platform": _mae(new.pipeline, X_out, y_out, columns),
        "platform_no_refit": _mae(new.evaluated, X_out, y_out, columns),
        "rf_base_labelled": _mae(rf_both, X_out, y_out, columns),
        "rf_labelled_only": _mae(rf_lab, X_out, y_out, columns),
        "rf_platform_rows": _mae(rf_same, X_out, y_out, columns),
    }
    mix = new_data.mix.chosen if new_data.mix is not None else "base only"
    rows = {
        "source": len(Xs),
        "labelled": n_lab,
        "held_out": len(X_out),
        "platform_production_train": new_data.rows.get("production_train", 0),
        "gate_holdout": new_data.rows.get("production_holdout", 0),
        "refit": new_data.rows.get("refit", 0) if new.refit is not None else 0,
    }
    return Outcome(name, seed, mae, mix, rows, secs, retrain, gate_word(decision), decision.reason)


def _mean_se(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")
    return float(a.mean()), se


def table(outcomes: list[Outcome], scenarios: list[str]) -> list[str]:
    lines = [
        "| scenario (source -> target) | rows: source / labelled / held out | old model | platform retrained "
        "| RF-300 base + labelled | RF-300 labelled only | best reference | goal met (platform <= best ref) "
        "| mixes chosen | gate vs old model: promotions / seeds | seeds where the retrain is better than the old "
        "model on the held-out rows | context: platform before its refit "
        "| context: RF-300 on the served model's rows | retrain s, median (time to heal's training part) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in scenarios:
        rs = [o for o in outcomes if o.scenario == name]
        if not rs:
            continue
        dataset, col, src, tgt = SCENARIOS[name]
        stats = {m: _mean_se([o.mae[m] for o in rs]) for m in MODELS}
        best = min(("rf_base_labelled", "rf_labelled_only"), key=lambda m: stats[m][0])
        met = stats["platform"][0] <= stats[best][0]
        mixes = Counter(o.mix for o in rs)
        r0 = rs[0].rows
        cells = " | ".join(f"{stats[m][0]:.3f} ± {stats[m][1]:.3f}" for m in MODELS)
        lines.append(
            f"| {dataset} {col} {src} -> {tgt} | {r0['source']} / {r0['labelled']} / {r0['held_out']} | {cells} | "
            f"{best.replace('rf_', 'RF ').replace('_', ' ')} | {'met' if met else 'NOT met'} "
            f"({stats['platform'][0] - stats[best][0]:+.3f}) | "
            + ", ".join(f"{k} x{v}" for k, v in mixes.most_common())
            + f" | {sum(o.gate.startswith('promote') for o in rs)} / {len(rs)}"
            + f" | {sum(o.mae['platform'] < o.mae['old'] for o in rs)} / {len(rs)}"
            + " | {:.3f} ± {:.3f}".format(*_mean_se([o.mae["platform_no_refit"] for o in rs]))
            + " | {:.3f} ± {:.3f}".format(*_mean_se([o.mae["rf_platform_rows"] for o in rs]))
            + f" | {float(np.median([o.retrain_seconds for o in rs])):.1f} |"
        )
    return lines


def per_seed(outcomes: list[Outcome]) -> list[str]:
    lines = [
        "| scenario | seed | old | platform | platform before refit | RF base + labelled | RF labelled only "
        "| RF on platform rows | mix chosen | production rows trained on / gate holdout / refit rows "
        "| gate vs old (recent rows n, labels_needed) | retrain better than old on held-out rows | old + platform fit s | platform retrain s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        m = o.mae
        lines.append(
            f"| {o.scenario} | {o.seed} | {m['old']:.3f} | {m['platform']:.3f} | {m['platform_no_refit']:.3f} | "
            f"{m['rf_base_labelled']:.3f} | {m['rf_labelled_only']:.3f} | {m['rf_platform_rows']:.3f} | {o.mix} | "
            f"{o.rows['platform_production_train']} / {o.rows['gate_holdout']} / {o.rows['refit'] or '-'} | "
            f"{o.gate} | {'yes' if m['platform'] < m['old'] else 'no'} ({m['platform'] - m['old']:+.3f}) | "
            f"{o.seconds:.1f} | {o.retrain_seconds:.1f} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    ap.add_argument("--search", action="store_true", help="TRAIN_SEARCH on (slower)")
    ap.add_argument(
        "--label-share", type=float, default=0.5, help="share of the target rows fed back labelled"
    )
    ap.add_argument("--no-refit", action="store_true", help="REFIT_ON_ALL_ROWS off")
    ap.add_argument("--out", default=str(ROOT / "results" / "loop_benchmark.md"))
    ap.add_argument(
        "--data-root",
        default=os.environ.get("DATASET_ROOT") or None,
        help="folder holding the Kaggle files (spf, sp scenarios); default DATASET_ROOT",
    )
    args = ap.parse_args()
    data_root = Path(args.data_root).expanduser() if args.data_root else None
    not_run: dict[str, str] = {}
    for name in list(args.scenarios):
        try:
            load_spec(SCENARIOS[name][0], data_root)
        except DatasetError as exc:
            not_run[name] = str(exc).split(";")[0]
            args.scenarios.remove(name)
            print(f"{name}: not run ({not_run[name]})", flush=True)
    settings = TrainerSettings(
        train_search=args.search,
        refit_on_all_rows=not args.no_refit,
        inference_url="",
        train_on_start=False,
        admin_token="loop-benchmark-0123456789",
    )
    t0 = time.monotonic()
    outcomes: list[Outcome] = []
    total = len(args.scenarios) * len(args.seeds)
    for name in args.scenarios:
        for seed in args.seeds:
            o = run(name, seed, settings, args.label_share, data_root)
            outcomes.append(o)
            m = o.mae
            print(
                f"[{len(outcomes)}/{total} {time.monotonic() - t0:5.0f}s] {name} seed {seed}: old {m['old']:.3f}  "
                f"platform {m['platform']:.3f} ({o.mix}; before refit {m['platform_no_refit']:.3f}; gate {o.gate})  "
                f"RF base+labelled {m['rf_base_labelled']:.3f}  "
                f"RF labelled only {m['rf_labelled_only']:.3f}",
                flush=True,
            )
    elapsed = time.monotonic() - t0
    summary = table(outcomes, args.scenarios)
    print("\n".join(summary))
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    doc = [
        "# Loop benchmark: natural shifts in the shipped real data",
        "",
        "Command: `make loop-benchmark` (`.venv/bin/python scripts/loop_benchmark.py"
        + (" --search" if args.search else "")
        + (" --no-refit" if args.no_refit else "")
        + (" --data-root <a folder with the Kaggle files>" if data_root is not None else "")
        + f" --seeds {' '.join(map(str, args.seeds))} --label-share {args.label_share:g}`).",
        "",
        f"Measured {stamp} on a shared, loaded 2-core machine (other jobs running); total {elapsed:.0f} s. "
        f"TRAIN_SEARCH {'on' if args.search else 'off'}, every other trainer setting at its default "
        f"(PRODUCTION_HOLDOUT {settings.production_holdout}, PRODUCTION_MIN_ROWS {settings.production_min_rows}, "
        f"MIX_MIN_ROWS {settings.mix_min_rows}, REFIT_ON_ALL_ROWS {str(settings.refit_on_all_rows).lower()}, "
        f"REFIT_ON_BASE_HOLDOUT {str(settings.refit_on_base_holdout).lower()}, "
        f"GATE_MIN_ROWS {settings.gate_min_rows}, GATE_CONFIDENCE {settings.gate_confidence}).",
        "",
        "What it does (see the docstring of `scripts/loop_benchmark.py`): the source population is the base "
        "dataset; the target rows arrive in a seeded random order, the first "
        f"{args.label_share:.0%} labelled, the rest held out and never fed back. *old model* = the trainer's "
        "stages (`service.training_data` + `service.fit_candidate`) on the source rows; *platform retrained* = "
        "the same stages with the labelled target rows as labelled production rows (the newest "
        f"{settings.production_holdout:.0%} of them held out for the gate; training mix chosen by `mix.choose`; "
        "evaluated on the holdouts, then, with REFIT_ON_ALL_ROWS, refit with the same mix, family and "
        "hyper-parameters on its training rows + the gate's recent holdout + (REFIT_ON_BASE_HOLDOUT) the base "
        "holdout, 20 % of the source rows: the model registered and served; a later gate uses the base-holdout "
        "error recorded before that refit); the references get all source rows and all labelled rows. MAE on the "
        "held-out target rows, mean ± standard error over the split seeds. *gate vs old model*: the service's "
        "gate (`service.champion_evidence` + `service.verdict`: paired bootstrap on the recent holdout, "
        "GATE_MIN_ROWS) judging the pre-refit challenger against the old model as champion; `keep: <why> (n=.., "
        "needs .. more labels)`: why it kept the old model (`too few rows` < GATE_MIN_ROWS, `inconclusive` = the "
        "interval reaches 0, `not better`, `gain < margin`, `base guard`), the recent rows it judged on and its "
        "`labels_needed`. *retrain better than old on held-out rows*: whether the served retrain's MAE on the "
        "held-out target rows is lower than the old model's: what a perfect gate would have known.",
        "",
        "## Summary (MAE, mean ± standard error over seeds)",
        "",
        *summary,
        "",
        "Mixes: `weight_1` = base + production rows counting the same (the default a challenger must clearly "
        "beat), `auto_weight` = no selection (fewer training production rows than MIX_MIN_ROWS): the fixed "
        "PRODUCTION_WEIGHT rule (balanced, at most 10), `base only` = fewer labelled rows than "
        "PRODUCTION_MIN_ROWS. All candidates: `services/trainer/src/gradeflow_trainer/mix.py`.",
        "",
        "*retrain s*: the platform's retrain alone (mix selection, fit, refit), the part of the time to heal "
        "that depends on the data; the rest (the check that flags, the gate's evidence, MLflow logging, export "
        "and reload) is measured end to end by `make demo`, which prints the time to heal of a real run "
        '(README, "Time to heal").',
        "",
        "## Per seed",
        "",
        *per_seed(outcomes),
        "",
        "The Kaggle files of the builtins `spf` and `sp` are not shipped (their licence is not established; "
        "see `shared/src/gradeflow_shared/public_data/README.md`); their scenarios run with `--data-root` "
        "(or DATASET_ROOT) naming a folder that holds them"
        + (
            ": run here from such a folder."
            if any(n.startswith(("spf", "sp:")) for n in args.scenarios)
            else ". Not run here: " + "; ".join(f"{k}: {v}" for k, v in not_run.items()) + "."
            if not_run
            else "."
        ),
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(doc))
    print(f"\nwrote {out} ({elapsed:.0f} s)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
