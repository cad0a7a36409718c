"""What the search's time budget (TRAIN_SEARCH_BUDGET_SECONDS) costs: time and error, with and without it.

    .venv/bin/python bench/search_budget.py                                  # synthetic and uci-por
    .venv/bin/python bench/search_budget.py --datasets uci-por --budgets none 0 30

For each dataset: the trainer's split (TEST_SIZE 0.2, SEED 0) and its ``fit`` with the search on, once per
budget ("none" = unbounded; 0 = the first, preferred candidate only). Printed: seconds of the whole fit,
candidates tried, the model chosen, its CV RMSE, and MAE / RMSE on the held-out test rows.
"""

from __future__ import annotations

import argparse
import os
import time

from gradeflow_shared.datasets import load_dataset, load_spec
from gradeflow_trainer.pipeline import _label, evaluate, fit, prepare_frame, split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["synthetic", "uci-por"])
    ap.add_argument("--budgets", nargs="+", default=["none", "0", "30"])
    args = ap.parse_args()
    print(f"{os.cpu_count()} cores; load average at start {os.getloadavg()[0]:.1f}")
    print("| dataset | budget s | fit s | tried | chosen | CV RMSE | test MAE | test RMSE |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.datasets:
        X, y, columns = load_dataset(load_spec(name))
        X_tr, X_te, y_tr, y_te = split(X, y, test_size=0.2, seed=0)
        for b in args.budgets:
            budget = None if b == "none" else float(b)
            t = time.monotonic()
            res = fit(X_tr, y_tr, columns, seed=0, search=True, budget_seconds=budget)
            secs = time.monotonic() - t
            m = evaluate(res.pipeline, prepare_frame(X_te, columns), y_te)
            chosen_cv = res.cv_rmse.get(_label(res.family, res.params), float("nan"))
            print(
                f"| {name} | {b} | {secs:.1f} | {res.tried}/{res.candidates}"
                f"{' (budget)' if res.budget_stopped else ''} | {res.family} | {chosen_cv:.3f} | "
                f"{m['mae']:.3f} | {m['rmse']:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
