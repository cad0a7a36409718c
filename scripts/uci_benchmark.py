"""Benchmark the trainer's default fit against a RandomForest-300 and the naive mean on UCI data.

Usage: python scripts/uci_benchmark.py [--seeds 0 1 2 3 4] [--datasets uci-por uci-mat]

For every dataset and split seed: the same 80/20 split for all three models; the UCI files are
loaded through the builtin dataset specs (all features, G1 and G2 dropped: they leak G3).
Prints a markdown table per seed and the mean over seeds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.ensemble import RandomForestRegressor

from gradeflow_shared.datasets import load_dataset, load_spec
from gradeflow_trainer import pipeline as P


def run(dataset: str, seed: int) -> dict[str, object]:
    X, y, cols = load_dataset(load_spec(dataset))
    X_tr, X_te, y_tr, y_te = P.split(X, y, test_size=0.2, seed=seed)
    t0 = time.monotonic()
    ours = P.fit(X_tr, y_tr, cols, seed=0, search=True)
    secs = time.monotonic() - t0
    m_ours = P.evaluate(ours.pipeline, P.prepare_frame(X_te, cols), y_te)
    rf = P.build_pipeline(cols, "rf", {})
    rf.steps[-1] = ("model", RandomForestRegressor(n_estimators=300, random_state=0))
    rf.fit(P.prepare_frame(X_tr, cols), y_tr)
    m_rf = P.evaluate(rf, P.prepare_frame(X_te, cols), y_te)
    m_naive = P.naive_metrics(y_tr, y_te)
    return {
        "dataset": dataset,
        "seed": seed,
        "ours": m_ours,
        "rf": m_rf,
        "naive": m_naive,
        "chosen": P._label(ours.family, ours.params),
        "secs": secs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--datasets", nargs="+", default=["uci-por", "uci-mat"])
    args = ap.parse_args()
    rows = [run(d, s) for d in args.datasets for s in args.seeds]
    print(
        "| dataset | split seed | ours RMSE | RF-300 RMSE | naive RMSE | ours MAE | RF-300 MAE | naive MAE | "
        "ours <= RF | chosen (fit s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        o, f, n = r["ours"], r["rf"], r["naive"]
        assert isinstance(o, dict) and isinstance(f, dict) and isinstance(n, dict)
        print(
            f"| {r['dataset']} | {r['seed']} | {o['rmse']:.3f} | {f['rmse']:.3f} | {n['rmse']:.3f} | "
            f"{o['mae']:.3f} | {f['mae']:.3f} | {n['mae']:.3f} | {'yes' if o['rmse'] <= f['rmse'] else 'no'} | "
            f"{r['chosen']} ({r['secs']:.1f}) |"
        )
    print()
    print(
        "| dataset | mean ours RMSE | mean RF-300 RMSE | mean naive RMSE | mean ours MAE | mean RF-300 MAE | "
        "mean naive MAE | seeds ours <= RF |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for d in args.datasets:
        rs = [r for r in rows if r["dataset"] == d]

        def mean(key: str, metric: str, rs: list[dict[str, object]] = rs) -> float:
            return float(np.mean([r[key][metric] for r in rs]))  # type: ignore[index]

        wins = sum(r["ours"]["rmse"] <= r["rf"]["rmse"] for r in rs)  # type: ignore[index]
        print(
            f"| {d} | {mean('ours', 'rmse'):.3f} | {mean('rf', 'rmse'):.3f} | {mean('naive', 'rmse'):.3f} | "
            f"{mean('ours', 'mae'):.3f} | {mean('rf', 'mae'):.3f} | {mean('naive', 'mae'):.3f} | "
            f"{wins}/{len(rs)} |"
        )


if __name__ == "__main__":
    main()
