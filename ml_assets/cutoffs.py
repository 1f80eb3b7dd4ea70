"""Cut-off strategy: what a PD cut-off approves and what bad rate that brings, on a champion's
out-of-time reference (ml.score_reference: its scores and the observed labels of its OOT
loans); and the cut-off a mode chooses (config/models.yaml `predictions`):

- `pd`: decline a score at or above the configured PD;
- `approval_rate`: the cut-off that approves at most the target share of the reference loans
  (the highest such);
- `bad_rate`: the highest cut-off whose approved reference loans default at most at the target
  rate (observed on the OOT loans; none approved when even the best-scored loan's rate is over).

An application is approved when its score is below the cut-off (ml_assets.assets.models
`decide_applications`). A cut-off of 1.0 approves every reference loan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ml_assets.model_config import CUTOFF_MODES


@dataclass(frozen=True)
class CutoffOutcome:
    """A cut-off and what it does to the reference: the share approved (score < cutoff), the
    observed default rate of the approved (expected bad rate; None when none approved) and
    their mean PD."""

    cutoff: float
    approval_rate: float
    expected_bad_rate: float | None
    mean_pd: float | None


class Reference:
    """A champion's reference: scores (PD, shape (n,)) and labels (0/1, (n,)), n >= 1."""

    def __init__(self, scores, labels):
        order = np.argsort(np.asarray(scores, dtype=float), kind="stable")
        self.scores = np.asarray(scores, dtype=float)[order]
        self.labels = np.asarray(labels, dtype=float)[order]
        if not len(self.scores):
            raise ValueError("a cut-off needs reference scores")

    def outcome(self, cutoff: float) -> CutoffOutcome:
        approved = self.scores < cutoff
        n = int(approved.sum())
        return CutoffOutcome(
            cutoff=float(cutoff), approval_rate=n / len(self.scores),
            expected_bad_rate=float(self.labels[approved].mean()) if n else None,
            mean_pd=float(self.scores[approved].mean()) if n else None)

    def boundaries(self) -> list[tuple[int, float]]:
        """(loans approved, cut-off) of every cut-off that approves a different set: each
        distinct score (approving the loans below it), and 1.0 (approving all)."""
        first = np.r_[True, self.scores[1:] > self.scores[:-1]]
        return [*((int(k), float(self.scores[k])) for k in np.flatnonzero(first)),
                (len(self.scores), 1.0)]

    def choose(self, mode: str, value: float) -> CutoffOutcome:
        """The cut-off of `mode` (CUTOFF_MODES) for the configured `value` (a PD, a target
        approval share or a target bad rate) and its outcome on the reference."""
        if mode == "pd":
            return self.outcome(value)
        defaults = np.r_[0.0, np.cumsum(self.labels)]
        if mode == "approval_rate":
            fits = [c for k, c in self.boundaries() if k <= value * len(self.scores)]
        elif mode == "bad_rate":
            fits = [c for k, c in self.boundaries() if k == 0 or defaults[k] / k <= value]
        else:
            raise ValueError(f"unknown cut-off mode {mode!r}: one of {CUTOFF_MODES}")
        return self.outcome(fits[-1])

    def bands(self, count: int) -> list[dict]:
        """The strategy table: the reference cut into `count` bands of equal size by score
        (sizes differing by at most one; fewer when there are fewer loans); per band its loans,
        score range and default rate, and the outcome of approving it and every better band
        (cut-off: the next band's lowest score, 1.0 after the last)."""
        groups = [g for g in np.array_split(np.arange(len(self.scores)), count) if len(g)]
        rows = []
        for band, group in enumerate(groups, start=1):
            cutoff = (float(self.scores[groups[band][0]]) if band < len(groups) else 1.0)
            outcome = self.outcome(cutoff)
            rows.append({
                "band": band, "loans": len(group),
                "min_score": float(self.scores[group[0]]),
                "max_score": float(self.scores[group[-1]]),
                "band_default_rate": float(self.labels[group].mean()),
                "cutoff_pd": cutoff, "approval_rate": outcome.approval_rate,
                "expected_bad_rate": outcome.expected_bad_rate, "mean_pd": outcome.mean_pd})
        return rows
