"""Sign-off of the champion and the swap sets a validator reviews before it.

Where the human decisions live: `ml.model_approvals`, one row per decision (approve or reject a
model version, who, why, when), in the month the version was trained: the gate month whose
proposal it answers. The table is written by the job `champion_approval` (from the UI, or
`vintage model approve|reject`), which re-materialises it, the gate and the predictions from
that month on; the gate reads the month's decisions as a declared input, so re-running the gate
for any month honours them, and the months after it are decided against the champion they
leave (`sign_off`). The latest decision about a version counts.

`champion.approval` (config/models.yaml) says what a proposal without a decision becomes:
`auto`, champion (signed off by the gate); `manual`, a pending proposal while the last approved
champion keeps the alias. A person's decision counts in either mode: an approval makes the
version champion from its month (a hand promotion, whatever the margin), a rejection keeps the
previous champion.

Swap sets (the usual comparison of two scorecards under one cut-off strategy in scorecard
validation, e.g. N. Siddiqi, *Credit Risk Scorecards*, Wiley): on the gate month's out-of-time
loans, each model declines a score at or above its cut-off under the configured cut-off mode
(`predictions.cutoff_mode`, ml_assets/cutoffs.py), chosen on these loans: in `pd` mode both use
the configured PD; in `approval_rate` mode each approves the target share of them; in
`bad_rate` mode each approves as many as keep their observed bad rate at the target. Swap-in
are the loans the new model approves and the champion declines, swap-out the reverse;
both_approve and both_decline the rest. Each kind's loans, defaults (`bads`) and observed bad
rate tell whether the new model trades good loans for bad ones at the same strategy.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

import dagster as dg
import numpy as np

from ml_assets.cutoffs import Reference
from ml_assets.months import MonthError, folder_label, parse_month

ACTIONS = ("approve", "reject")
GATE = "gate"  # signed_off_by of a promotion the gate made itself (champion.approval: auto)
SWAP_KINDS = ("swap_in", "swap_out", "both_approve", "both_decline")
_VERSION = re.compile(r"[a-z][a-z0-9_]*-(\d{4}-\d{2})")

# the run config of ml/model_approvals (the job champion_approval): all optional, so that a
# run of the whole graph republishes the recorded decisions unchanged
APPROVAL_CONFIG = {
    "version": dg.Field(str, is_required=False, description="model version, e.g. "
                        "lightgbm-2025-01"),
    "action": dg.Field(str, is_required=False, description="approve | reject"),
    "by": dg.Field(str, is_required=False, description="who decides"),
    "reason": dg.Field(str, is_required=False, description="why"),
}


class SignOffError(ValueError):
    """A sign-off the platform refuses: an unknown version, a failed candidate, no name or
    reason, or months that do not start at the version's month."""


@dataclass(frozen=True)
class ApprovalRecord:
    """A row of ml.model_approvals: a person's decision about a model version."""

    month: date  # the version's trained month: the gate month it applies to
    model_version: str
    model_name: str
    action: str  # approve | reject
    decided_by: str
    reason: str
    decided_at: datetime


@dataclass(frozen=True)
class SwapSetRecord:
    """A row of ml.swap_sets: one kind of swap on a gate month's out-of-time loans."""

    month: date  # the gate month
    swap: str  # swap_in | swap_out | both_approve | both_decline
    new_version: str  # the challenger proposed, promoted, approved or rejected this month
    old_version: str  # the champion it challenged (the previous month's)
    status: str | None  # the challenge's sign-off: approved | proposed | rejected
    oot_month: date  # the label month of the out-of-time loans
    cutoff_mode: str  # pd | approval_rate | bad_rate (predictions.cutoff_mode)
    new_cutoff: float  # the new model declines a score >= new_cutoff
    old_cutoff: float  # the champion declines a score >= old_cutoff
    loans: int
    loan_share: float  # of the month's out-of-time loans
    bads: int  # loans that defaulted (label 1)
    bad_rate: float | None  # bads / loans; None without loans
    mean_new_score: float | None
    mean_old_score: float | None


def version_month(version: str) -> date:
    """The trained month of a model version `<name>-YYYY-MM`. Raises SignOffError otherwise."""
    match = _VERSION.fullmatch(version)
    try:
        if match:
            return parse_month(match.group(1))
    except MonthError:
        pass
    raise SignOffError(f"expected a model version <model name>-YYYY-MM, e.g. lightgbm-2024-06, "
                       f"got {version!r}")


def approval_problem(version: str, action: str, by: str, reason: str,
                     candidates: Sequence) -> str | None:
    """Why a sign-off cannot be recorded, or None. `candidates`: the registry records
    (ModelRecord) of the version's trained month. A version that failed its checks cannot be
    approved (it may be rejected)."""
    if action not in ACTIONS:
        return f"action must be approve or reject, got {action!r}"
    if not by.strip():
        return "--by must name who decides"
    if not reason.strip():
        return "--reason must say why"
    found = {c.model_version: c for c in candidates}
    if version not in found:
        month = folder_label(version_month(version))
        return (f"{version} is not a model version of ml.model_registry (trained in {month}: "
                f"{', '.join(sorted(found)) or 'nothing'})")
    if action == "approve" and not found[version].checks_passed:
        return (f"{version} failed its checks ({found[version].checks}): it cannot be "
                "champion")
    return None


def sign_off(verdict, previous, candidates: Sequence, decisions: Sequence[ApprovalRecord],
             mode: str):
    """The month's alias row (an AliasRecord) from the gate's `verdict` (`decide`), the
    people's `decisions` about this month's versions and the approval `mode` (auto | manual):

    - an approval of a candidate that passed its checks makes it champion (decision `first` or
      `promoted`, status `approved`, by the person), the latest approval if several;
    - else a proposal (the verdict's `first` or `promoted`) that a person rejected keeps the
      previous champion (`kept`, or `none` without one; status `rejected`);
    - else a proposal is champion in auto mode (status `approved` by `gate`) and pending in
      manual mode (status `proposed`, the previous champion kept);
    - else (nothing proposed) the verdict as it is, status None.

    `previous`: last month's alias row (None before the first month); `candidates`: this
    month's registry records."""
    latest = {d.model_version: d for d in sorted(decisions, key=lambda d: d.decided_at)}
    passing = {c.model_version: c for c in candidates if c.checks_passed}
    incumbent = previous if previous and previous.model_version else None
    proposal = verdict.challenger_version if verdict.decision in ("first", "promoted") else None
    approvals = [d for d in latest.values() if d.action == "approve" and d.model_version
                 in passing]

    def signed(row, decision, by, reason, at, status):
        return dataclasses.replace(row, status=status, signed_off_by=by, sign_off_reason=reason,
                                   signed_off_at=at, decision=decision)

    def kept(why: str):
        return dataclasses.replace(
            verdict, model_version=incumbent.model_version if incumbent else None,
            model_name=incumbent.model_name if incumbent else None,
            trained_month=incumbent.trained_month if incumbent else None,
            decision="kept" if incumbent else "none", reason=f"{why}; the gate: {verdict.reason}")

    if approvals:
        chosen = max(approvals, key=lambda d: d.decided_at)
        record = passing[chosen.model_version]
        row = dataclasses.replace(
            verdict, model_version=record.model_version, model_name=record.model_name,
            trained_month=record.trained_month,
            reason=f"approved by {chosen.decided_by}: {chosen.reason}; the gate: "
                   f"{verdict.reason}")
        return signed(row, "promoted" if incumbent else "first", chosen.decided_by,
                      chosen.reason, chosen.decided_at, "approved")
    if proposal is None:
        return dataclasses.replace(verdict, status=None)
    rejection = latest.get(proposal)
    if rejection is not None and rejection.action == "reject":
        row = kept(f"{proposal} rejected by {rejection.decided_by}: {rejection.reason}")
        return signed(row, row.decision, rejection.decided_by, rejection.reason,
                      rejection.decided_at, "rejected")
    if mode == "manual":
        row = kept(f"{proposal} proposed, awaiting sign-off (champion.approval: manual)")
        return dataclasses.replace(row, status="proposed")
    return signed(verdict, verdict.decision, GATE, "champion.approval: auto",
                  verdict.decided_at, "approved")


def challenged_version(row) -> str | None:
    """The version this month's swap sets compare with the previous champion: the one promoted
    (by the gate or a person), or the proposal pending or rejected; None when nothing
    challenged a champion (a first champion, a month kept without a proposal)."""
    if row.previous_version is None:
        return None
    if row.decision == "promoted":
        return row.model_version
    if row.status in ("proposed", "rejected"):
        return row.challenger_version
    return None


def swap_sets(month: date, new_version: str, old_version: str, status: str | None,
              oot_month: date, labels: np.ndarray, new_scores: np.ndarray,
              old_scores: np.ndarray, mode: str, value: float) -> list[SwapSetRecord]:
    """The four swap kinds of one gate month: each loan (aligned arrays of shape (n,), n >= 1:
    its label 0/1 and both models' default probabilities) is approved by a model when its score
    is below the model's cut-off, chosen on these loans by the cut-off `mode` (CUTOFF_MODES)
    for the configured `value` (a PD, a target approval share or a target bad rate;
    `Reference.choose`). Returns one record per kind of SWAP_KINDS, a kind without loans
    included (bad rate None)."""
    labels = np.asarray(labels, dtype=float)
    new_scores, old_scores = np.asarray(new_scores, float), np.asarray(old_scores, float)
    new_cutoff = Reference(new_scores, labels).choose(mode, value).cutoff
    old_cutoff = Reference(old_scores, labels).choose(mode, value).cutoff
    new_approves, old_approves = new_scores < new_cutoff, old_scores < old_cutoff
    masks = {"swap_in": new_approves & ~old_approves, "swap_out": ~new_approves & old_approves,
             "both_approve": new_approves & old_approves,
             "both_decline": ~new_approves & ~old_approves}
    total = len(labels)
    records = []
    for kind in SWAP_KINDS:
        mask = masks[kind]
        loans = int(mask.sum())
        records.append(SwapSetRecord(
            month=month, swap=kind, new_version=new_version, old_version=old_version,
            status=status, oot_month=oot_month, cutoff_mode=mode, new_cutoff=new_cutoff,
            old_cutoff=old_cutoff, loans=loans,
            loan_share=loans / total if total else 0.0, bads=int(labels[mask].sum()),
            bad_rate=float(labels[mask].mean()) if loans else None,
            mean_new_score=float(new_scores[mask].mean()) if loans else None,
            mean_old_score=float(old_scores[mask].mean()) if loans else None))
    return records
