"""A seeded synthetic generator of student records, with named drift scenarios.

The grade (0-20, like the Portuguese scale of the UCI data) depends on the features
non-linearly: a saturating effect of study hours, a penalty that switches on below ~70%
attendance, a sleep optimum, interactions (motivation x study, extracurricular x study,
internet x study) and Gaussian noise. ``generate(n, seed)`` is deterministic: the same
arguments give an identical frame. Every random draw happens in the same order whatever the
scenario, so a scenario changes only what it says it changes.

Two modes: ``generate`` gives flat rows (one per student, no time); ``generate_term`` gives the
same students with ids over a term of dated readings and final grades with label times, for the
feature store.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from .datasets import ColumnSpec, DatasetSpec
from .history import EVENT_TIMESTAMP, STUDENT_ID, History, student_ids

TARGET = "final_grade"
TARGET_MIN = 0.0
TARGET_MAX = 20.0

SCENARIOS: dict[str, str] = {
    "none": "No drift: the training distribution.",
    "covariate_attendance": (
        "Covariate shift: attendance falls (about -25 points at severity 1) and absences rise; "
        "the grade still follows the same function of the features."
    ),
    "concept_study_hours": (
        "Concept drift: the effect of study hours on the grade changes (a new exam format rewards "
        "hours linearly and punishes little study) while the features keep their distribution; "
        "y|x changes, so a model trained before the change errs a lot more."
    ),
    "new_category": (
        "A category unseen in training appears: school_type 'online' (about 40% of students at "
        "severity 1, no commute) with its own grade effect."
    ),
    "missing_values": "Data quality: about 20% of attendance_pct, sleep_hours and motivation values are missing.",
}

COLUMNS: list[ColumnSpec] = [
    ColumnSpec(name="age", kind="numeric", dtype="int", min=15, max=22, description="Age in years."),
    ColumnSpec(
        name="school_type",
        kind="categorical",
        dtype="str",
        categories=["public", "private"],
        description="Type of school.",
    ),
    ColumnSpec(
        name="parental_education",
        kind="categorical",
        dtype="str",
        categories=["none", "primary", "secondary", "higher"],
        description="Highest education of a parent.",
    ),
    ColumnSpec(
        name="family_support",
        kind="categorical",
        dtype="str",
        categories=["yes", "no"],
        description="Family helps with school work.",
    ),
    ColumnSpec(
        name="internet_access",
        kind="categorical",
        dtype="str",
        categories=["yes", "no"],
        description="Internet access at home.",
    ),
    ColumnSpec(
        name="extracurricular",
        kind="categorical",
        dtype="str",
        categories=["yes", "no"],
        description="Takes part in extracurricular activities.",
    ),
    ColumnSpec(
        name="motivation",
        kind="categorical",
        dtype="str",
        categories=["low", "medium", "high"],
        description="Self-reported motivation.",
    ),
    ColumnSpec(
        name="study_hours_per_week",
        kind="numeric",
        dtype="float",
        min=0,
        max=40,
        description="Hours of study outside class per week.",
    ),
    ColumnSpec(
        name="attendance_pct",
        kind="numeric",
        dtype="float",
        min=0,
        max=100,
        description="Share of classes attended (%).",
    ),
    ColumnSpec(
        name="absences",
        kind="numeric",
        dtype="int",
        min=0,
        max=60,
        description="Days absent in the school year.",
    ),
    ColumnSpec(
        name="previous_grade",
        kind="numeric",
        dtype="float",
        min=0,
        max=20,
        description="Final grade of the previous year (0-20).",
    ),
    ColumnSpec(
        name="sleep_hours",
        kind="numeric",
        dtype="float",
        min=3,
        max=12,
        description="Average hours of sleep per night.",
    ),
    ColumnSpec(
        name="tutoring_sessions",
        kind="numeric",
        dtype="int",
        min=0,
        max=10,
        description="Tutoring sessions per month.",
    ),
    ColumnSpec(
        name="commute_minutes",
        kind="numeric",
        dtype="float",
        min=0,
        max=120,
        description="One-way commute to school in minutes.",
    ),
]

FEATURES = [c.name for c in COLUMNS]

TERM_GRADE = ColumnSpec(
    name="term_grade",
    kind="numeric",
    dtype="float",
    min=0,
    max=20,
    description="Average of the grades posted so far this term (0-20); the term mode only.",
)
ACTIVITY_COLUMNS = [
    "study_hours_per_week",
    "attendance_pct",
    "absences",
    "sleep_hours",
    "tutoring_sessions",
    "term_grade",
]
"""Columns of the term mode that arrive as dated readings during the term (the rest are profile facts)."""


def _choice(u: np.ndarray, values: list[str], probs: np.ndarray) -> np.ndarray:
    """Inverse-CDF categorical draw from uniforms ``u`` (probs may vary per row: shape [n, k])."""
    probs = np.broadcast_to(probs, (len(u), len(values)))
    cdf = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
    idx = (u[:, None] > cdf).sum(axis=1)
    return np.asarray(values, dtype=object)[np.minimum(idx, len(values) - 1)]


def study_effect(study: np.ndarray, concept: float = 0.0) -> np.ndarray:
    """Grade points from study hours: saturating before the change, linear after it."""
    before = 4.5 * (1.0 - np.exp(-study / 8.0))
    after = 0.32 * study - 2.0
    return (1.0 - concept) * before + concept * after


def generate(n: int, seed: int = 0, scenario: str | None = None, severity: float = 1.0) -> pd.DataFrame:
    """``n`` student records (features + ``final_grade``); same arguments -> identical frame."""
    scenario = scenario or "none"
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario '{scenario}' (known: {', '.join(SCENARIOS)})")
    if n < 0:
        raise ValueError("n must be >= 0")
    s = float(np.clip(severity, 0.0, 3.0))
    rng = np.random.default_rng(seed)
    # -- all draws, always in this order --------------------------------------------------
    u_school, u_pedu, u_fam, u_net, u_extra, u_mot, u_age = rng.random((7, n))
    z_age, z_att, z_prev, z_sleep, z_noise, z_comm = rng.standard_normal((6, n))
    g_study = rng.gamma(2.2, 1.0, n)
    g_att = rng.gamma(1.6, 1.0, n)
    p_abs = rng.poisson(2.0, n)
    p_tut = rng.poisson(1.0, n)
    g_comm = rng.gamma(2.0, 1.0, n)
    u_online, u_missing = rng.random((2, n))
    del z_comm

    # -- features ----------------------------------------------------------------------------
    school = _choice(u_school, ["public", "private"], np.array([0.75, 0.25]))
    if scenario == "new_category":
        school = np.where(u_online < min(1.0, 0.4 * s), "online", school).astype(object)
    pedu = _choice(u_pedu, ["none", "primary", "secondary", "higher"], np.array([0.08, 0.25, 0.4, 0.27]))
    higher = pedu == "higher"
    fam = _choice(u_fam, ["yes", "no"], np.array([0.6, 0.4]))
    net = np.where(u_net < np.where(higher | (school == "private"), 0.95, 0.8), "yes", "no").astype(object)
    extra = _choice(u_extra, ["yes", "no"], np.array([0.45, 0.55]))
    mot_probs = np.where(higher[:, None], [[0.15, 0.45, 0.40]], [[0.28, 0.5, 0.22]])
    mot = _choice(u_mot, ["low", "medium", "high"], mot_probs)
    mot_level = np.select([mot == "low", mot == "high"], [0.0, 2.0], 1.0)
    age = np.clip(15 + np.floor(u_age * 4 + 1.2 * np.abs(z_age)), 15, 22).astype(float)

    study = np.clip(g_study * (2.6 + 1.6 * mot_level), 0, 40).round(1)
    attendance = 100.0 - g_att * (9.0 - 2.0 * mot_level) - 2.0 * np.abs(z_att)
    if scenario == "covariate_attendance":
        attendance = attendance - 25.0 * s
    attendance = np.clip(attendance, 0, 100).round(1)
    absences = (100.0 - attendance) * 0.35 + p_abs
    if scenario == "covariate_attendance":
        absences = absences + 4.0 * s
    absences = np.clip(np.round(absences), 0, 60)
    prev = np.clip(11.0 + 1.3 * (mot_level - 1) + 0.8 * higher + 2.7 * z_prev, 0, 20).round(1)
    sleep = np.clip(7.3 + 1.1 * z_sleep - 0.15 * (mot_level - 1), 3, 12).round(1)
    tutoring = np.clip(p_tut + (school == "private") * 1 + (fam == "yes") * (p_tut > 0), 0, 10).astype(float)
    commute = np.clip(g_comm * 12.0, 0, 120).round(0)
    if scenario == "new_category":
        commute = np.where(school == "online", 0.0, commute)

    # -- target ------------------------------------------------------------------------------
    concept = s if scenario == "concept_study_hours" else 0.0
    grade = (
        2.0
        + 0.52 * prev
        + study_effect(study, concept)
        - 3.0 / (1.0 + np.exp((attendance - 70.0) / 4.0))  # attendance threshold around 70%
        + 0.015 * (attendance - 85.0)
        - 0.04 * absences
        - 0.25 * np.minimum((sleep - 7.5) ** 2, 12.0)  # sleep optimum
        + 1.6 * (1.0 - np.exp(-tutoring / 2.5))
        + 0.05 * np.minimum(study, 20.0) * (mot == "high")  # motivation x study
        - 0.6 * (mot == "low")
        + np.where(extra == "yes", np.where(study > 8.0, 0.5, -0.4), 0.0)  # extracurricular x study
        - np.where(net == "no", 0.4 + 0.04 * np.minimum(study, 20.0), 0.0)  # no internet hurts studying
        + np.select([pedu == "none", pedu == "primary", pedu == "higher"], [-0.7, -0.25, 0.45], 0.0)
        + 0.5 * (fam == "yes")
        + 0.5 * (school == "private")
        - 0.8 * (school == "online")
        - 0.012 * commute
        - 0.35 * np.maximum(age - 18.0, 0.0)  # older students: often repeaters
        + 0.9 * z_noise
    )
    grade = np.clip(grade, TARGET_MIN, TARGET_MAX).round(2)

    df = pd.DataFrame(
        {
            "age": age,
            "school_type": school,
            "parental_education": pedu,
            "family_support": fam,
            "internet_access": net,
            "extracurricular": extra,
            "motivation": mot,
            "study_hours_per_week": study,
            "attendance_pct": attendance,
            "absences": absences,
            "previous_grade": prev,
            "sleep_hours": sleep,
            "tutoring_sessions": tutoring,
            "commute_minutes": commute,
            TARGET: grade,
        }
    )
    if scenario == "missing_values":
        share = min(1.0, 0.2 * s)
        for i, col in enumerate(("attendance_pct", "sleep_hours", "motivation")):
            mask = ((u_missing * 3 + i) % 1.0) < share if i else u_missing < share
            df.loc[mask, col] = np.nan
    for col in ("age", "absences", "tutoring_sessions"):
        df[col] = df[col].astype("Int64") if df[col].isna().any() else df[col].astype(int)
    for c in COLUMNS:
        if c.kind == "categorical":
            df[c.name] = df[c.name].astype(object)
    return df


def synthetic_spec(
    rows: int = 5000, seed: int = 0, scenario: str | None = None, severity: float = 1.0
) -> DatasetSpec:
    """The DatasetSpec of the generator (``path=None``)."""
    return DatasetSpec(
        name="synthetic",
        path=None,
        target=TARGET,
        target_min=TARGET_MIN,
        target_max=TARGET_MAX,
        columns=[c.model_copy() for c in COLUMNS],
        rows=rows,
        seed=seed,
        scenario=scenario,
        severity=severity,
        description="GradeFlow synthetic student records",
    )


def timeline_spec(
    students: int = 1000, seed: int = 0, scenario: str | None = None, severity: float = 1.0
) -> DatasetSpec:
    """The DatasetSpec of the term mode (``generate_term``): the flat columns plus ``term_grade``."""
    spec = synthetic_spec(rows=students, seed=seed, scenario=scenario, severity=severity)
    spec.name = "synthetic-term"
    spec.columns = [*(spec.columns or []), TERM_GRADE.model_copy()]
    spec.activity_columns = list(ACTIVITY_COLUMNS)
    spec.description = (
        "GradeFlow synthetic students over a term (dated readings, final grades with label times)"
    )
    return spec


TERM_WEEKS = 16
TERM_START = datetime(2026, 1, 5, tzinfo=UTC)
"""Default first Monday of the generated term (any timezone-aware datetime may be given)."""
SURVEY_WEEKS = (2, 6, 10, 14)  # study-hour and sleep surveys
GRADE_WEEKS = (1, 6, 11, 16)  # term grades posted (week 1: the diagnostic test)
LABEL_DELAY = timedelta(days=3)  # the final grade is known three days after the last week


def generate_term(
    students: int,
    seed: int = 0,
    scenario: str | None = None,
    severity: float = 1.0,
    start: datetime = TERM_START,
    weeks: int = TERM_WEEKS,
) -> History:
    """A term of dated readings for ``students`` students (ids ``S-00001`` ...), and their final grades.

    Each student's final state and final grade are the flat mode's row for the same arguments
    (``generate(students, seed, scenario, severity)``), so the grade keeps its function of the
    features. Around it the term unfolds week by week: attendance readings converge to the final
    attendance, absences accumulate to the final count, study hours and sleep come from surveys
    (noisy measurements carried forward until the next one), tutoring is counted from week one,
    term grades are posted four times (``term_grade`` = their running mean). Profile facts are
    dated the day before the term; the final grade's label time is three days after the last week.
    Same arguments -> identical frames.
    """
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    if weeks < max(GRADE_WEEKS[-1], SURVEY_WEEKS[-1]) or weeks > 52:
        raise ValueError(f"weeks must be between {GRADE_WEEKS[-1]} and 52")
    flat = generate(students, seed=seed, scenario=scenario, severity=severity)
    ids = student_ids(students, "S")
    rng = np.random.default_rng([seed, 20260105])  # a stream of its own: the flat draws stay as they are
    hours = rng.integers(8, 8 + 5 * 24, size=(weeks, students))  # when in the week the reading came
    z_att, z_grade = rng.standard_normal((2, weeks, students))
    z_study, z_sleep = rng.standard_normal((2, len(SURVEY_WEEKS), students))

    profile_cols = [c.name for c in COLUMNS if c.name not in ACTIVITY_COLUMNS]
    profile = pd.DataFrame({STUDENT_ID: ids, EVENT_TIMESTAMP: pd.Timestamp(start - timedelta(days=1))})
    profile = pd.concat([profile, flat[profile_cols].reset_index(drop=True)], axis=1)

    attendance = flat["attendance_pct"].to_numpy(dtype=float)
    absences = flat["absences"].to_numpy(dtype=float)
    study = flat["study_hours_per_week"].to_numpy(dtype=float)
    sleep = flat["sleep_hours"].to_numpy(dtype=float)
    final = flat[TARGET].to_numpy(dtype=float)
    weekly = []
    study_now = sleep_now = np.full(students, np.nan)
    posted: list[np.ndarray] = []
    for w in range(1, weeks + 1):
        if w in SURVEY_WEEKS:
            k = SURVEY_WEEKS.index(w)
            study_now = np.clip(study + 2.0 * z_study[k], 0, 40).round(1)
            sleep_now = np.clip(sleep + 0.5 * z_sleep[k], 3, 12).round(1)
        elif w == 1:  # before the first survey: last year's answers, i.e. the same noisy measurement
            study_now = np.clip(study + 2.0 * z_study[0], 0, 40).round(1)
            sleep_now = np.clip(sleep + 0.5 * z_sleep[0], 3, 12).round(1)
        if w in GRADE_WEEKS:
            posted.append(np.clip(final + 1.5 * z_grade[w - 1], 0, 20))
        att = attendance if w == weeks else np.clip(attendance + 8.0 * z_att[w - 1] / np.sqrt(w), 0, 100)
        weekly.append(
            pd.DataFrame(
                {
                    STUDENT_ID: ids,
                    EVENT_TIMESTAMP: pd.Timestamp(start + timedelta(weeks=w - 1))
                    + pd.to_timedelta(hours[w - 1], unit="h"),
                    "study_hours_per_week": study_now,
                    "attendance_pct": np.round(att, 1),
                    "absences": np.round(absences * w / weeks).astype(int),
                    "sleep_hours": sleep_now,
                    "tutoring_sessions": flat["tutoring_sessions"].to_numpy(),
                    "term_grade": np.mean(posted, axis=0).round(2),
                }
            )
        )
    activity = pd.concat(weekly, ignore_index=True).sort_values(
        [EVENT_TIMESTAMP, STUDENT_ID], ignore_index=True
    )
    labels = pd.DataFrame(
        {
            STUDENT_ID: ids,
            EVENT_TIMESTAMP: pd.Timestamp(start + timedelta(weeks=weeks) + LABEL_DELAY),
            TARGET: final,
        }
    )
    return History(profile=profile, activity=activity, labels=labels, target=TARGET)
