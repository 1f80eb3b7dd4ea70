"""The champion gate's decision on hand-made candidates."""

import dataclasses
from datetime import date, datetime

import pytest

from ml_assets.assets.models import AliasRecord, ModelRecord, decide

MONTH = date(2024, 6, 1)
GAIN = 0.005
TEMPLATE = ModelRecord(
    model_version="", model_name="", algorithm="lightgbm", trained_month=MONTH,
    window_first=date(2023, 6, 1), window_last=date(2024, 5, 1), oot_month=date(2024, 5, 1),
    label_def="30dpd_6mob", features=["age"], categorical_features=[], importances="{}",
    feature_schema_hash="", data_fingerprint="", params="{}", n_train=1, n_test=1, n_oot=1,
    train_auc=None, test_auc=None, oot_auc=None, oot_gini=None, oot_ks=None,
    oot_log_loss=None, oot_brier=None, metrics="{}", checks_passed=True, checks="{}",
    artifact_path="", artifact_digest="", code_version="", trained_at=datetime(2024, 6, 2),
    input_versions="{}", training_config="{}", calibration='{"method": "none"}')


def candidate(version: str, auc: float, passed: bool = True) -> ModelRecord:
    return dataclasses.replace(TEMPLATE, model_version=version,
                               model_name=version.rsplit("-", 2)[0], oot_auc=auc,
                               checks_passed=passed)


INCUMBENT = AliasRecord(
    alias="champion", month=date(2024, 5, 1), model_version="logistic-2024-05",
    model_name="logistic", trained_month=date(2024, 5, 1), decision="first", reason="",
    previous_version=None, challenger_version="logistic-2024-05", challenger_oot_auc=0.8,
    champion_oot_auc=None, min_auc_gain=GAIN, oot_month=date(2024, 4, 1),
    decided_at=datetime(2024, 5, 2))


def test_the_first_trained_model_becomes_champion():
    row = decide(MONTH, [candidate("lightgbm-2024-06", 0.70), candidate("logistic-2024-06", 0.75)],
                 None, None, GAIN)
    assert (row.decision, row.model_version) == ("first", "logistic-2024-06")
    assert row.trained_month == MONTH and row.model_name == "logistic"
    assert row.alias == "champion" and row.month == MONTH


def test_a_challenger_must_beat_the_champion_by_the_margin():
    just_enough = decide(MONTH, [candidate("lightgbm-2024-06", 0.80 + GAIN)], INCUMBENT, 0.80,
                         GAIN)
    assert just_enough.decision == "promoted"
    assert just_enough.model_version == "lightgbm-2024-06"
    assert just_enough.previous_version == "logistic-2024-05"
    short = decide(MONTH, [candidate("lightgbm-2024-06", 0.80 + GAIN / 2)], INCUMBENT, 0.80,
                   GAIN)
    assert (short.decision, short.model_version) == ("kept", "logistic-2024-05")
    assert short.trained_month == date(2024, 5, 1)
    assert "does not beat champion" in short.reason


def test_a_candidate_failing_its_checks_cannot_be_promoted():
    row = decide(MONTH, [candidate("lightgbm-2024-06", 0.99, passed=False)], INCUMBENT, 0.70,
                 GAIN)
    assert (row.decision, row.model_version) == ("kept", "logistic-2024-05")
    assert "no candidate passed its checks" in row.reason


def test_no_candidates_keeps_the_champion_or_records_none():
    assert decide(MONTH, [], INCUMBENT, None, GAIN).decision == "kept"
    row = decide(MONTH, [], None, None, GAIN)
    assert (row.decision, row.model_version) == ("none", None)
    # a month decided `none` passes on no champion
    none = dataclasses.replace(INCUMBENT, model_version=None, model_name=None,
                               trained_month=None, decision="none")
    first = decide(MONTH, [candidate("lightgbm-2024-06", 0.7)], none, None, GAIN)
    assert (first.decision, first.previous_version) == ("first", None)


def test_a_champion_that_cannot_be_scored_is_kept():
    row = decide(MONTH, [candidate("lightgbm-2024-06", 0.99)], INCUMBENT, None, GAIN)
    assert (row.decision, row.model_version) == ("kept", "logistic-2024-05")
    assert "could not be scored" in row.reason


@pytest.mark.parametrize("aucs,winner", [((0.7, 0.8), "logistic-2024-06"),
                                         ((0.81, 0.8), "lightgbm-2024-06")])
def test_the_best_candidate_challenges(aucs, winner):
    row = decide(MONTH, [candidate("lightgbm-2024-06", aucs[0]),
                         candidate("logistic-2024-06", aucs[1])], INCUMBENT, 0.5, GAIN)
    assert row.challenger_version == winner == row.model_version
