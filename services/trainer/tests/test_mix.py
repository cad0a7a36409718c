"""How much the labelled production rows count: the candidates, the validation on the most recent
rows, the residual model (ONNX-exportable) and how fit_candidate reports the choice."""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd
import pytest

from gradeflow_shared.synth import COLUMNS, TARGET, generate
from gradeflow_trainer import mix
from gradeflow_trainer import pipeline as P

SMALL = [("rf", {"n_estimators": 20, "min_samples_leaf": 3})]
fit_small = functools.partial(P.fit, candidates=SMALL)


def frame(n: int, seed: int, shift: float = 0.0) -> tuple[pd.DataFrame, pd.Series]:
    df = generate(n, seed=seed)
    return P.prepare_frame(df, COLUMNS), (df[TARGET].astype(float) + shift).clip(0, 20).reset_index(drop=True)


def test_a_shifted_population_is_not_ignored_and_every_candidate_is_scored() -> None:
    Xb, yb = frame(600, 0)
    Xp, yp = frame(150, 1, shift=-4.0)  # the same features, grades 4 points lower
    choice = mix.choose(mix.Rows(Xb, yb, Xp, yp), COLUMNS, fitter=fit_small)
    assert set(choice.scores) == set(mix.CANDIDATES)
    assert choice.validation_rows == 45 and choice.fit_rows == 105 and "lowest MAE" in choice.reason
    assert choice.chosen != "base_only" and choice.scores["base_only"] > 2 * choice.scores[choice.chosen]
    assert choice.chosen in choice.reason
    assert json.loads(choice.as_json())["validation_mae"] == choice.scores


def test_a_mix_beats_pooling_only_beyond_one_standard_error() -> None:
    rng = np.random.default_rng(0)
    pooled = rng.uniform(0.0, 4.0, 40)
    noisy = {"pooled": pooled, "residual": np.clip(pooled - 0.05 + rng.normal(0, 1.0, 40), 0, None)}
    noisy["residual"] += (pooled.mean() - 0.05) - noisy["residual"].mean()  # 0.05 better on average
    chosen, reason = mix.pick(noisy)
    assert chosen == "pooled" and "residual not better than pooled by more than one standard error" in reason
    clear = {"pooled": pooled, "residual": pooled - 0.5 + rng.normal(0, 0.2, 40)}
    assert mix.pick(clear)[0] == "residual"
    assert mix.pick({"pooled": pooled, "base_only": pooled + 0.1})[0] == "pooled"


def test_validation_uses_the_most_recent_rows_only() -> None:
    Xb, yb = frame(400, 0)
    Xp, yp = frame(100, 1)
    yp.iloc[70:] = yp.iloc[70:] + 6.0  # only the most recent 30 rows moved: base + old rows cannot know
    choice = mix.choose(mix.Rows(Xb, yb, Xp, yp), COLUMNS, fitter=fit_small)
    assert choice.validation_rows == 30
    # every candidate trained on the older 70 rows only: all of them miss the recent shift
    assert min(choice.scores.values()) > 3.0


def test_too_few_rows_to_validate_use_the_default_and_a_fixed_weight_skips_validation() -> None:
    Xb, yb = frame(300, 0)
    Xp, yp = frame(20, 1)
    choice = mix.choose(mix.Rows(Xb, yb, Xp, yp), COLUMNS, fitter=fit_small)
    assert choice.chosen == mix.DEFAULT and choice.scores == {} and "too few" in choice.reason
    assert mix.fixed(3).chosen == "weighted_x3"
    assert mix.production_row_weight("weighted_x3", 300, 20) == pytest.approx(45.0)


def test_residual_model_adds_the_residual_forest_and_compiles_to_onnx() -> None:
    Xb, yb = frame(500, 0)
    Xp, yp = frame(200, 1, shift=-3.0)
    base = fit_small(Xb, yb, COLUMNS, search=False)
    res = mix.refit("residual", mix.Rows(Xb, yb, Xp, yp), COLUMNS, search=False, fitter=fit_small)
    Xt, yt = frame(200, 2, shift=-3.0)
    assert P.evaluate(res.pipeline, Xt, yt)["mae"] < P.evaluate(base.pipeline, Xt, yt)["mae"] - 1.0
    _, diff = P.compile_onnx(res.pipeline, COLUMNS, Xt.head(50))
    assert diff <= P.ONNX_TOLERANCE
    with pytest.raises(ValueError, match="unknown production mix"):
        mix.refit("half", mix.Rows(Xb, yb, Xp, yp), COLUMNS, fitter=fit_small)
