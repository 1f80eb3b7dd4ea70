"""Sign-off of the champion and swap sets: the sign-off rules and the swap counts on hand-made
records; then, on a small generated warehouse in manual mode, the gate proposing without
promoting, the job champion_approval (in process) and `vintage model approve|reject`
re-deciding the later months, predictions by approved champions only, and the swap sets
against a recomputation from ml.score_reference and the old champion's scores."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml

from ml_assets.assets.models import AliasRecord
from ml_assets.jobs import approval_run_config, champion_approval
from ml_assets.model_config import load_model_config
from ml_assets.months import month_range
from ml_assets.settings import SettingsError
from ml_assets.signoff import (
    GATE,
    SWAP_KINDS,
    ApprovalRecord,
    SignOffError,
    approval_problem,
    sign_off,
    swap_sets,
    version_month,
)
from ml_assets.tables import (
    MODEL_ALIASES,
    MODEL_APPROVALS,
    MODEL_REGISTRY,
    PREDICTIONS,
    SCORE_REFERENCE,
    SWAP_SETS,
    TRAINING_SET,
    VALIDATION_REPORTS,
)
from tests.conftest import run_vintage
from tests.test_champion_gate import INCUMBENT, MONTH, candidate
from tests.test_models_delta import (
    Warehouse,
    failures,
    one_thread_models_file,
    rows,
    succeeded,
)

pytestmark = pytest.mark.xdist_group("signoff")

FIRST, FIRST_TRAINED, LAST = date(2023, 1, 1), date(2024, 1, 1), date(2024, 3, 1)
AT = datetime(2024, 6, 3, 12)


# -- the rules, on hand-made records ----------------------------------------------------------


def verdict(decision: str, version: str | None = "lightgbm-2024-06") -> AliasRecord:
    """A gate verdict of MONTH against INCUMBENT."""
    chosen = version if decision in ("first", "promoted") else INCUMBENT.model_version
    return dataclasses.replace(
        INCUMBENT, month=MONTH, model_version=chosen, model_name=chosen.rsplit("-", 2)[0],
        trained_month=MONTH if chosen == version else INCUMBENT.trained_month,
        decision=decision, reason="the gate's reason", previous_version=INCUMBENT.model_version,
        challenger_version=version, decided_at=AT)


def decision(version: str, action: str, minutes: int = 0, by: str = "ana") -> ApprovalRecord:
    return ApprovalRecord(month=MONTH, model_version=version, model_name=version.rsplit("-", 2)[0],
                          action=action, decided_by=by, reason=f"{action} it",
                          decided_at=datetime(2024, 6, 5, 9, minutes))


CANDIDATES = [candidate("lightgbm-2024-06", 0.80), candidate("logistic-2024-06", 0.78),
              candidate("broken-2024-06", 0.90, passed=False)]


def test_manual_mode_proposes_and_keeps_the_champion():
    row = sign_off(verdict("promoted"), INCUMBENT, CANDIDATES, [], "manual")
    assert (row.model_version, row.decision, row.status) == ("logistic-2024-05", "kept",
                                                             "proposed")
    assert row.challenger_version == "lightgbm-2024-06" and row.signed_off_by is None
    assert "awaiting sign-off" in row.reason
    # the first champion too: no champion until a person approves
    first = sign_off(verdict("first"), None, CANDIDATES, [], "manual")
    assert (first.model_version, first.decision, first.status) == (None, "none", "proposed")


def test_auto_mode_is_signed_off_by_the_gate():
    row = sign_off(verdict("promoted"), INCUMBENT, CANDIDATES, [], "auto")
    assert (row.model_version, row.decision, row.status, row.signed_off_by) == (
        "lightgbm-2024-06", "promoted", "approved", GATE)
    assert row.signed_off_at == AT
    kept = sign_off(verdict("kept"), INCUMBENT, CANDIDATES, [], "auto")
    assert (kept.model_version, kept.status) == ("logistic-2024-05", None)


@pytest.mark.parametrize("mode", ["auto", "manual"])
def test_an_approval_promotes_whatever_the_gate_said(mode):
    # the gate kept the champion (margin not met): a person promotes the second best by hand
    row = sign_off(verdict("kept"), INCUMBENT, CANDIDATES,
                   [decision("logistic-2024-06", "approve")], mode)
    assert (row.model_version, row.trained_month, row.decision, row.status) == (
        "logistic-2024-06", MONTH, "promoted", "approved")
    assert (row.signed_off_by, row.sign_off_reason) == ("ana", "approve it")
    assert row.reason.startswith("approved by ana: approve it; the gate: the gate's reason")


def test_a_rejection_keeps_the_previous_champion_and_the_latest_decision_counts():
    rejected = sign_off(verdict("promoted"), INCUMBENT, CANDIDATES,
                        [decision("lightgbm-2024-06", "reject")], "auto")
    assert (rejected.model_version, rejected.decision, rejected.status) == (
        "logistic-2024-05", "kept", "rejected")
    assert rejected.signed_off_by == "ana"
    # approved, then rejected: rejected; rejected, then approved: approved
    later = [decision("lightgbm-2024-06", "approve", 1), decision("lightgbm-2024-06", "reject",
                                                                   2, by="bo")]
    assert sign_off(verdict("promoted"), INCUMBENT, CANDIDATES, later, "manual").status == \
        "rejected"
    again = [*later, decision("lightgbm-2024-06", "approve", 3, by="cy")]
    row = sign_off(verdict("promoted"), INCUMBENT, CANDIDATES, again, "manual")
    assert (row.status, row.signed_off_by, row.model_version) == ("approved", "cy",
                                                                  "lightgbm-2024-06")
    # a version that failed its checks is never promoted, even if a decision says so
    forced = sign_off(verdict("kept"), INCUMBENT, CANDIDATES,
                      [decision("broken-2024-06", "approve")], "auto")
    assert (forced.model_version, forced.status) == ("logistic-2024-05", None)


def test_approval_problems_are_named():
    assert approval_problem("lightgbm-2024-06", "approve", "ana", "ok", CANDIDATES) is None
    assert "is not a model version" in approval_problem("xgb-2024-06", "approve", "ana", "ok",
                                                        CANDIDATES)
    assert "failed its checks" in approval_problem("broken-2024-06", "approve", "a", "b",
                                                   CANDIDATES)
    assert approval_problem("broken-2024-06", "reject", "a", "b", CANDIDATES) is None
    assert "--by" in approval_problem("lightgbm-2024-06", "approve", " ", "ok", CANDIDATES)
    assert "--reason" in approval_problem("lightgbm-2024-06", "approve", "a", "", CANDIDATES)
    assert version_month("logistic-2024-06") == MONTH
    with pytest.raises(SignOffError, match="expected a model version"):
        version_month("logistic-2024-13")


def test_the_approval_mode_is_checked(tmp_path):
    raw = yaml.safe_load(one_thread_models_file(tmp_path).read_text())
    raw["champion"]["approval"] = "sometimes"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SettingsError, match="champion.approval must be one of"):
        load_model_config(path)


def test_swap_sets_match_a_recomputation():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 200)
    new, old = rng.random(200), rng.random(200)
    records = {r.swap: r for r in swap_sets(MONTH, "new-2024-06", "old-2024-05", "approved",
                                            date(2024, 5, 1), labels, new, old, "pd", 0.3)}
    assert {(r.new_cutoff, r.old_cutoff, r.cutoff_mode) for r in records.values()} == {
        (0.3, 0.3, "pd")}
    frame = pd.DataFrame({"label": labels, "new": new >= 0.3, "old": old >= 0.3})
    expected = {("swap_in" if not n and o else "swap_out" if n and not o else
                 "both_decline" if n else "both_approve"): group
                for (n, o), group in frame.groupby(["new", "old"])}
    assert set(records) == set(SWAP_KINDS) == set(expected)
    for kind, group in expected.items():
        assert records[kind].loans == len(group)
        assert records[kind].bads == group["label"].sum()
        assert records[kind].bad_rate == pytest.approx(group["label"].mean())
        assert records[kind].loan_share == pytest.approx(len(group) / 200)
    # a kind without loans: counted as none, no bad rate
    empty = {r.swap: r for r in swap_sets(MONTH, "n", "o", None, MONTH, [1, 0], [0.1, 0.2],
                                          [0.1, 0.2], "pd", 0.5)}
    assert (empty["swap_in"].loans, empty["swap_in"].bad_rate) == (0, None)
    assert (empty["both_approve"].loans, empty["both_approve"].bads) == (2, 1)


@pytest.mark.parametrize("mode, value", [("approval_rate", 0.7), ("bad_rate", 0.2)])
def test_swap_sets_compare_the_models_at_the_same_strategy(mode, value):
    """Outside `pd` mode each model gets its own cut-off on the OOT loans: at a target
    approval rate both approve the same number of loans (70% of 200: 140), so swap-in and
    swap-out are equal in size; at a target bad rate each approves the most loans whose
    observed bad rate stays at or under it."""
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 2, 200)
    new = np.clip(labels * 0.3 + rng.random(200) * 0.7, 0, 1)  # the better model
    old = rng.random(200)
    records = {r.swap: r for r in swap_sets(MONTH, "n", "o", None, MONTH, labels, new, old,
                                            mode, value)}
    [(new_cutoff, old_cutoff)] = {(r.new_cutoff, r.old_cutoff) for r in records.values()}
    new_approved, old_approved = new < new_cutoff, old < old_cutoff
    for approved, scores in ((new_approved, new), (old_approved, old)):
        if mode == "approval_rate":
            assert approved.sum() <= value * 200
            # the next distinct score would approve more than the target
            assert (scores <= scores[~approved].min()).sum() > value * 200
        else:
            assert labels[approved].mean() <= value
            assert labels[scores <= scores[~approved].min()].mean() > value
    assert records["swap_in"].loans == int((new_approved & ~old_approved).sum())
    assert records["swap_out"].loans == int((~new_approved & old_approved).sum())
    if mode == "approval_rate":
        assert records["swap_in"].loans == records["swap_out"].loans


# -- on a generated warehouse in manual mode --------------------------------------------------


def manual_models_file(folder):
    path = one_thread_models_file(folder)
    raw = yaml.safe_load(path.read_text())
    raw["champion"]["approval"] = "manual"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Warehouse:
    """Generated data (scale 0.2) through raw .. predictions, 2023-01..2024-03, in manual mode:
    models are trained from 2024-01 on, and nobody has approved any."""
    from ml_assets.demo.generator import generate

    folder = tmp_path_factory.mktemp("signoff")
    generate(folder / "source", scale=0.2, seed=3)
    # with the credit-review tables: the job champion_approval writes the validation reports
    built = Warehouse(folder / "warehouse", folder / "source", manual_models_file(folder),
                      review=True)
    succeeded(built.materialise(FIRST, LAST))
    return built


def aliases(warehouse: Warehouse) -> list[dict]:
    return sorted(rows(warehouse, MODEL_ALIASES), key=lambda r: r["month"])


def approve_in_process(warehouse: Warehouse, version: str, action: str, first: date,
                       last: date) -> dg.ExecuteInProcessResult:
    """The job champion_approval, as the UI launches it: its config, months first..last."""
    defs = warehouse.definitions([champion_approval])
    return defs.resolve_job_def(champion_approval.name).execute_in_process(
        run_config=approval_run_config(version, action, "Ana Risk", "validated on 2023 OOT"),
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
        tags={"dagster/asset_partition_range_start": first.isoformat(),
              "dagster/asset_partition_range_end": last.isoformat()})


def assert_consistent(warehouse: Warehouse) -> None:
    """Every month's decision follows from the month before: its previous champion is the
    month before's champion; a champion changes only by an approved promotion; predictions
    are by the month's (approved) champion."""
    history = aliases(warehouse)
    for before, row in zip(history, history[1:], strict=False):
        assert row["previous_version"] == before["model_version"], row
        if row["model_version"] != before["model_version"]:
            assert row["decision"] in ("first", "promoted") and row["status"] == "approved", row
        else:
            assert row["decision"] in ("kept", "none"), row
    scored = {}
    for prediction in rows(warehouse, PREDICTIONS):
        scored.setdefault(prediction["application_month"], set()).add(
            prediction["model_version"])
    for row in history:
        expected = {row["model_version"]} if row["model_version"] else set()
        assert scored.get(row["month"], set()) == expected, row["month"]


def manual_mode_proposes_and_does_not_promote(warehouse):
    history = aliases(warehouse)
    assert [r["month"] for r in history] == list(month_range(FIRST, LAST))
    assert {r["model_version"] for r in history} == {None}
    first = next(r for r in history if r["month"] == FIRST_TRAINED)
    registry = [r for r in rows(warehouse, MODEL_REGISTRY)
                if r["trained_month"] == FIRST_TRAINED and r["checks_passed"]]
    best = max(registry, key=lambda r: (r["oot_auc"], r["model_version"]))
    assert (first["decision"], first["status"]) == ("none", "proposed")
    assert first["challenger_version"] == best["model_version"]
    # its validation report says so
    report = next(r for r in rows(warehouse, VALIDATION_REPORTS)
                  if r["model_version"] == best["model_version"])
    assert report["sign_off"] == "proposed" and "awaiting sign-off" in report["gate"]
    assert not rows(warehouse, PREDICTIONS)  # no approved champion: nothing scored
    assert rows(warehouse, MODEL_APPROVALS) == []
    assert warehouse.lake().published_months(MODEL_APPROVALS) == list(month_range(FIRST, LAST))


def the_job_approves_and_redecides_the_later_months(warehouse):
    proposal = next(r for r in aliases(warehouse) if r["month"] == FIRST_TRAINED)
    refused = approve_in_process(warehouse, proposal["challenger_version"], "approve",
                                 date(2024, 2, 1), LAST)
    assert not refused.success
    assert "re-decides the gate from 2024-01 on: run it for 2024-01" in "\n".join(
        failures(refused))
    result = approve_in_process(warehouse, proposal["challenger_version"], "approve",
                                FIRST_TRAINED, LAST)
    succeeded(result)
    history = {r["month"]: r for r in aliases(warehouse)}
    # the predictions' metadata names the approved champion, and a proposal still pending
    materialisations = [event.event_specific_data.materialization
                        for event in result.get_asset_materialization_events()]
    notes = {m.partition: m.metadata["champion_sign_off"].value for m in materialisations
             if m.asset_key == dg.AssetKey(["gold", "predictions"])}
    for month, row in history.items():
        if month < FIRST_TRAINED:
            continue
        note = notes[month.isoformat()]
        assert note.startswith(f"scored by {row['model_version']}, the last approved champion")
        if row["status"] == "proposed":
            assert f"{row['challenger_version']} is proposed and awaits sign-off" in note
    # a pending proposal has its swap sets already, in the table and on the gate's page
    gate = {m.partition: m.metadata for m in materialisations
            if m.asset_key == dg.AssetKey(["ml", "model_aliases"])}
    swaps = rows(warehouse, SWAP_SETS)
    for month, row in history.items():
        if month < FIRST_TRAINED:
            continue
        kinds = {(s["swap"], s["new_version"], s["status"]) for s in swaps if s["month"] == month}
        if row["status"] == "proposed" and row["previous_version"]:
            assert kinds == {(k, row["challenger_version"], "proposed") for k in SWAP_KINDS}
            assert "swap_in" in gate[month.isoformat()]["swap_sets"].value
        else:
            assert not kinds and "swap_sets" not in gate[month.isoformat()]
    approved = history[FIRST_TRAINED]
    assert (approved["model_version"], approved["decision"], approved["status"]) == (
        proposal["challenger_version"], "first", "approved")
    assert (approved["signed_off_by"], approved["sign_off_reason"]) == (
        "Ana Risk", "validated on 2023 OOT")
    # the later months now compare their challengers with it
    assert all(history[m]["model_version"] for m in month_range(FIRST_TRAINED, LAST))
    assert_consistent(warehouse)
    recorded = rows(warehouse, MODEL_APPROVALS)
    assert [(r["month"], r["model_version"], r["action"], r["decided_by"]) for r in recorded] \
        == [(FIRST_TRAINED, proposal["challenger_version"], "approve", "Ana Risk")]


def the_cli_promotes_by_hand(warehouse):
    """Approve a 2024-02 candidate that is not champion (a hand promotion, the one with the
    lowest OOT AUC): the months after it are re-decided, consistently. It follows the job's
    approval."""
    history = {r["month"]: r for r in aliases(warehouse)}
    month = date(2024, 2, 1)
    registry = [r for r in rows(warehouse, MODEL_REGISTRY)
                if r["trained_month"] == month and r["checks_passed"]]
    chosen = next(r["model_version"] for r in sorted(registry, key=lambda r: r["oot_auc"])
                  if r["model_version"] != history[month]["model_version"])
    env = {**warehouse.environ}
    done = run_vintage("model", "approve", chosen, "--by", "Bo Validator", "--reason",
                       "better rank ordering on the 2023-12 OOT", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"approve {chosen} by Bo Validator recorded" in done.stdout
    after = {r["month"]: r for r in aliases(warehouse)}
    assert (after[month]["model_version"], after[month]["decision"],
            after[month]["status"]) == (chosen, "promoted", "approved")
    assert after[month]["previous_version"] == history[FIRST_TRAINED]["model_version"]
    assert_consistent(warehouse)
    swaps = [r for r in rows(warehouse, SWAP_SETS) if r["month"] == month]
    assert {r["swap"] for r in swaps} == set(SWAP_KINDS)
    assert {(r["new_version"], r["old_version"], r["status"]) for r in swaps} == {
        (chosen, history[FIRST_TRAINED]["model_version"], "approved")}


def approval_rate_cutoff(scores: np.ndarray, share: float) -> float:
    """Written apart from ml_assets/cutoffs.py: the highest cut-off (a score of the set, or 1.0)
    that approves (score < cut-off) at most `share` of the loans."""
    candidates = sorted({*scores.tolist(), 1.0})
    return max(c for c in candidates if (scores < c).sum() <= share * len(scores))


def swap_sets_match_the_reference_scores(warehouse):
    """Recomputed here from ml.score_reference (the new model's OOT scores and labels) and the
    old champion scored on the same OOT loans of gold.training_set; the warehouse's cut-off
    mode is approval_rate, so each model approves the same share of those loans at its own
    cut-off."""
    store = warehouse.store()
    swaps = rows(warehouse, SWAP_SETS)
    assert swaps, "no month with a challenge"
    models = warehouse.build().models
    assert models.cutoff_mode == "approval_rate"
    for (month, new, old), published in pd.DataFrame(swaps).groupby(
            ["month", "new_version", "old_version"]):
        reference = pd.DataFrame(rows(warehouse, SCORE_REFERENCE,
                                      where=f"WHERE model_version = '{new}'"))
        oot = pd.DataFrame(rows(warehouse, TRAINING_SET, where=(
            f"WHERE training_month = DATE '{month}' AND split = 'oot' ORDER BY loan_id")))
        old_model = store.load(old.rsplit("-", 2)[0], old)
        oot["old"] = old_model.predict(oot)
        both = reference.merge(oot[["loan_id", "old"]], on="loan_id", how="inner")
        assert len(both) == len(reference) == len(oot)
        new_cutoff = approval_rate_cutoff(both["score"].to_numpy(), models.decision_cutoff)
        old_cutoff = approval_rate_cutoff(both["old"].to_numpy(), models.decision_cutoff)
        assert published["new_cutoff"].tolist() == pytest.approx([new_cutoff] * 4)
        assert published["old_cutoff"].tolist() == pytest.approx([old_cutoff] * 4)
        with duckdb.connect() as con:
            con.register("paired", both)
            expected = {row[0]: row[1:] for row in con.execute(f"""
                SELECT CASE WHEN score < {new_cutoff} AND old >= {old_cutoff} THEN 'swap_in'
                            WHEN score >= {new_cutoff} AND old < {old_cutoff} THEN 'swap_out'
                            WHEN score < {new_cutoff} THEN 'both_approve'
                            ELSE 'both_decline' END AS swap,
                       count(*), sum(label), avg(label)
                FROM paired GROUP BY 1""").fetchall()}
        for row in published.itertuples():
            loans, bads, rate = expected.get(row.swap, (0, 0, None))
            assert (row.loans, row.bads) == (loans, bads), (month, row.swap)
            assert (row.bad_rate is None or np.isnan(row.bad_rate)) if rate is None \
                else row.bad_rate == pytest.approx(rate)


def the_cli_rejects(warehouse):
    """Reject the version promoted by hand: the champion of 2024-01 is back, later months too."""
    month = date(2024, 2, 1)
    before = {r["month"]: r for r in aliases(warehouse)}
    chosen = before[month]["model_version"]
    assert before[month]["signed_off_by"] == "Bo Validator"
    env = {**warehouse.environ}
    done = run_vintage("model", "reject", chosen, "--by", "Cy Committee", "--reason",
                       "not explainable enough", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    rejected = {r["month"]: r for r in aliases(warehouse)}
    assert rejected[month]["model_version"] == before[FIRST_TRAINED]["model_version"]
    assert_consistent(warehouse)
    decisions = sorted(rows(warehouse, MODEL_APPROVALS), key=lambda r: r["decided_at"])
    assert [(r["model_version"], r["action"]) for r in decisions][-2:] == [
        (chosen, "approve"), (chosen, "reject")]
    # the job re-wrote its validation report: rejected, by whom
    report = next(r for r in rows(warehouse, VALIDATION_REPORTS) if r["model_version"] == chosen)
    assert (report["sign_off"], report["signed_off_by"]) == ("rejected", "Cy Committee")
    assert "not explainable enough" in Path(report["report_uri"]).read_text()


def test_the_sign_off_of_a_manual_warehouse_step_by_step(warehouse):
    """One warehouse through a validator's sequence, in this order (one test: pytest-xdist
    does not keep a module's tests in order): manual mode proposes and promotes nothing; the
    job approves the first proposal and re-decides the later months; the CLI promotes another
    version by hand; the swap sets match the reference scores; the CLI rejects that version."""
    manual_mode_proposes_and_does_not_promote(warehouse)
    the_job_approves_and_redecides_the_later_months(warehouse)
    the_cli_promotes_by_hand(warehouse)
    swap_sets_match_the_reference_scores(warehouse)
    the_cli_rejects(warehouse)


def test_the_cli_refuses_what_it_cannot_sign_off(warehouse):
    env = warehouse.environ
    unknown = run_vintage("model", "approve", "lightgbm-2031-01", "--by", "a", "--reason", "b",
                          env=env)
    assert unknown.returncode == 2
    assert "lightgbm-2031-01 is not a model version of ml.model_registry" in unknown.stderr
    for missing in (["--by", "a"], ["--reason", "b"]):
        done = run_vintage("model", "reject", "lightgbm-2024-01", *missing, env=env)
        assert done.returncode == 2 and "the following arguments are required" in done.stderr
    blank = run_vintage("model", "approve", "lightgbm-2024-01", "--by", " ", "--reason", "b",
                        env=env)
    assert blank.returncode == 2 and "--by: expected a non-empty text" in blank.stderr
    assert "Traceback" not in unknown.stderr + blank.stderr
