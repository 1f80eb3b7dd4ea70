"""Discrimination and calibration metrics of default scores; one implementation for training,
the champion gate and monitoring."""

from __future__ import annotations

import numpy as np

_EPS = 1e-15


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, tied values sharing the mean of their ranks (as scipy's rankdata)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.r_[first[1:], len(values)] - 1
    ranks = np.empty(len(values))
    ranks[order] = (first[group] + last[group]) / 2 + 1
    return ranks


def _validated(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=float)
    p = np.asarray(scores, dtype=float)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError("labels and scores must be 1-d and of the same length")
    return y, p


def auc(labels, scores) -> float | None:
    """Area under the ROC curve by ranks (Mann-Whitney U), ties counted half; None without
    both classes."""
    y, p = _validated(labels, scores)
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = average_ranks(p)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def gini(labels, scores) -> float | None:
    value = auc(labels, scores)
    return None if value is None else 2 * value - 1


def ks(labels, scores) -> float | None:
    """Kolmogorov-Smirnov: the largest gap between the score distributions of defaults and
    non-defaults, over every threshold."""
    y, p = _validated(labels, scores)
    positives, negatives = y.sum(), len(y) - y.sum()
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(-p, kind="stable")
    y_sorted, p_sorted = y[order], p[order]
    last_of_tie = np.r_[p_sorted[1:] != p_sorted[:-1], True]
    tpr = np.cumsum(y_sorted)[last_of_tie] / positives
    fpr = np.cumsum(1 - y_sorted)[last_of_tie] / negatives
    return float(np.max(np.abs(tpr - fpr)))


def log_loss(labels, scores) -> float | None:
    y, p = _validated(labels, scores)
    if len(y) == 0:
        return None
    p = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def brier(labels, scores) -> float | None:
    y, p = _validated(labels, scores)
    return float(np.mean((p - y) ** 2)) if len(y) else None


def summary(labels, scores) -> dict[str, float | int | None]:
    y, p = _validated(labels, scores)
    return {
        "n": len(y),
        "defaults": int(y.sum()),
        "default_rate": float(y.mean()) if len(y) else None,
        "mean_score": float(p.mean()) if len(p) else None,
        "auc": auc(y, p),
        "gini": gini(y, p),
        "ks": ks(y, p),
        "log_loss": log_loss(y, p),
        "brier": brier(y, p),
    }


# -- calibration tests of a rating grade and of a score --------------------------------------

HL_GROUPS = 10


def binomial_p_value(defaults: int, loans: int, pd_: float) -> float:
    """One-sided binomial test of a grade: the probability of at least `defaults` defaults
    among `loans` independent loans that each default with probability `pd_` (the grade's PD).
    Small: the grade's PD is too low. scipy.stats.binomtest(alternative="greater")."""
    from scipy.stats import binomtest

    return float(binomtest(int(defaults), int(loans), float(pd_), alternative="greater").pvalue)


def jeffreys_p_value(defaults: int, loans: int, pd_: float) -> float:
    """Jeffreys test of a grade: the probability, under the Beta(d + 1/2, n - d + 1/2)
    posterior of the default rate (Jeffreys prior, d defaults of n loans), that the rate is at
    most the grade's PD `pd_`, i.e. that the PD is at least the default rate. Small: the PD is
    too low. Source: ECB, "Instructions for reporting the validation results of internal
    models - IRB Pillar I models for credit risk" (2019), PD back-testing, the Jeffreys test
    (also EBA/GL/2017/16 on PD estimation)."""
    from scipy.stats import beta

    d, n = int(defaults), int(loans)
    return float(beta.cdf(float(pd_), d + 0.5, n - d + 0.5))


def hosmer_lemeshow(labels, scores, order_key=None) -> dict[str, float | int | None]:
    """Hosmer-Lemeshow over HL_GROUPS score deciles: loans sorted by score (ties by
    `order_key`, e.g. the loan id, so the split is reproducible) and cut into 10 groups of
    sizes differing by at most one (the first groups take the remainder, as SQL's ntile);
    statistic sum over groups of (O - E)^2 / (E (1 - E / n)), O the group's defaults, E its
    sum of scores, n its loans; p-value from chi-square with 10 - 2 = 8 degrees of freedom
    (Hosmer & Lemeshow, Applied Logistic Regression, 2nd ed., section 5.2.2). None with fewer
    loans than groups."""
    from scipy.stats import chi2

    y, p = _validated(labels, scores)
    if len(y) < HL_GROUPS:
        return {"statistic": None, "p_value": None, "groups": 0}
    keys = np.arange(len(y)) if order_key is None else np.asarray(order_key)
    order = np.lexsort((keys, p))
    statistic = 0.0
    for group in np.array_split(order, HL_GROUPS):
        observed, expected, n = y[group].sum(), p[group].sum(), len(group)
        variance = expected * (1 - expected / n)
        statistic += (observed - expected) ** 2 / variance if variance > 0 else 0.0
    dof = HL_GROUPS - 2
    return {"statistic": float(statistic), "p_value": float(chi2.sf(statistic, dof)),
            "groups": HL_GROUPS}
