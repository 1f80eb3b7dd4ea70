"""Reason codes: the features that raise a prediction's PD most, from the model's per-feature
contributions to its log-odds (ml_assets.modeling `Model.contributions`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

REASONS = 3


def reason_codes(contributions: np.ndarray, names: Sequence[str], declined: np.ndarray,
                 count: int = REASONS) -> list[np.ndarray]:
    """`count` arrays of feature names (object, shape (n,)): the k-th holds each row's feature
    with the k-th largest contribution (`contributions`, (n, len(names)), log-odds) when that
    contribution raises the PD (> 0), else None; a `declined` row (bool, (n,)) always has its
    first reason, the feature that pushes its PD up most (or lowers it least). Ties keep the
    order of `names`."""
    labels = np.array(list(names), dtype=object)
    order = np.argsort(-contributions, axis=1, kind="stable")[:, :count]
    values = np.take_along_axis(contributions, order, axis=1)
    reasons = []
    for k in range(min(count, len(labels))):
        shown = values[:, k] > 0
        if k == 0:
            shown |= np.asarray(declined, dtype=bool)
        reasons.append(np.where(shown, labels[order[:, k]], None))
    reasons += [np.full(len(contributions), None, dtype=object)] * (count - len(reasons))
    return reasons
