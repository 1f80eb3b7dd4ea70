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
