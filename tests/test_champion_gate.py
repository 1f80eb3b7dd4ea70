"""The champion gate's decision on hand-made candidates."""

from datetime import date

import pytest

from ml_assets.assets.models import CONFIG, decide

MONTH = date(2024, 6, 1)


def candidate(version: str, auc: float, passed: bool = True) -> dict:
    return {"model_version": version, "model_name": version.rsplit("-", 2)[0],
            "trained_month": MONTH, "oot_auc": auc, "checks_passed": passed,
            "checks": "{}", "oot_month": date(2024, 5, 1)}


INCUMBENT = {"model_version": "logistic-2024-05", "model_name": "logistic",
             "trained_month": date(2024, 5, 1)}


def test_the_first_trained_model_becomes_champion():
    row = decide(MONTH, [candidate("lightgbm-2024-06", 0.70), candidate("logistic-2024-06", 0.75)],
                 None, None)
    assert (row["decision"], row["model_version"]) == ("first", "logistic-2024-06")
    assert row["trained_month"] == MONTH and row["model_name"] == "logistic"


def test_a_challenger_must_beat_the_champion_by_the_margin():
    margin = CONFIG.min_auc_gain
    just_enough = decide(MONTH, [candidate("lightgbm-2024-06", 0.80 + margin)], INCUMBENT, 0.80)
    assert just_enough["decision"] == "promoted"
    assert just_enough["model_version"] == "lightgbm-2024-06"
    assert just_enough["previous_version"] == "logistic-2024-05"
    short = decide(MONTH, [candidate("lightgbm-2024-06", 0.80 + margin / 2)], INCUMBENT, 0.80)
    assert (short["decision"], short["model_version"]) == ("kept", "logistic-2024-05")
    assert "does not beat champion" in short["reason"]


def test_a_candidate_failing_its_checks_cannot_be_promoted():
    row = decide(MONTH, [candidate("lightgbm-2024-06", 0.99, passed=False)], INCUMBENT, 0.70)
    assert (row["decision"], row["model_version"]) == ("kept", "logistic-2024-05")
    assert "no candidate passed its checks" in row["reason"]


def test_no_candidates_keeps_the_champion_or_records_none():
    assert decide(MONTH, [], INCUMBENT, None)["decision"] == "kept"
    row = decide(MONTH, [], None, None)
    assert (row["decision"], row["model_version"]) == ("none", None)


@pytest.mark.parametrize("aucs,winner", [((0.7, 0.8), "logistic-2024-06"),
                                         ((0.81, 0.8), "lightgbm-2024-06")])
def test_the_best_candidate_challenges(aucs, winner):
    row = decide(MONTH, [candidate("lightgbm-2024-06", aucs[0]),
                         candidate("logistic-2024-06", aucs[1])], INCUMBENT, 0.5)
    assert row["challenger_version"] == winner == row["model_version"]
