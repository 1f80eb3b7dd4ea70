"""The rating master scale (config/models.yaml `rating_scale`) and calibration by grade: a
prediction's grade, and per grade of a month's matured predictions the loans, mean PD, default
rate and the binomial and Jeffreys tests (ml_assets.metrics)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ml_assets import metrics

Scale = Sequence[tuple[str, float]]


def grade_of(scores: np.ndarray, scale: Scale) -> np.ndarray:
    """The grade of each score (PD in [0, 1], shape (n,)): the first grade of `scale`
    ((grade, upper bound), bounds increasing, the last 1.0) whose bound exceeds the score; a
    score of 1 takes the last grade."""
    bounds = np.array([bound for _, bound in scale])
    names = np.array([grade for grade, _ in scale], dtype=object)
    index = np.searchsorted(bounds, np.asarray(scores, dtype=float), side="right")
    return names[np.minimum(index, len(bounds) - 1)]


def calibration_by_grade(matured: pd.DataFrame, scale: Scale) -> list[dict]:
    """One row per grade of `scale` (every grade, one with no loans has no statistics) for the
    matured predictions `matured` (columns grade, score, label; one model, label definition and
    month): pd_lower, pd_upper (the grade's bounds), loans, defaults, predicted_pd (mean
    score), observed_rate (defaults / loans), binomial_p_value and jeffreys_p_value, both
    testing whether the grade's predicted_pd is too low (`metrics.binomial_p_value`,
    `metrics.jeffreys_p_value`)."""
    rows, lower = [], 0.0
    for grade, upper in scale:
        group = matured[matured["grade"] == grade]
        loans, defaults = len(group), int(group["label"].sum())
        predicted = float(group["score"].mean()) if loans else None
        rows.append({
            "grade": grade, "pd_lower": lower, "pd_upper": upper, "loans": loans,
            "defaults": defaults, "predicted_pd": predicted,
            "observed_rate": defaults / loans if loans else None,
            "binomial_p_value": (metrics.binomial_p_value(defaults, loans, predicted)
                                 if loans else None),
            "jeffreys_p_value": (metrics.jeffreys_p_value(defaults, loans, predicted)
                                 if loans else None),
        })
        lower = upper
    return rows
