"""Check severities and the recommendation rules, on hand-made values."""

import dataclasses

import dagster as dg
import pandas as pd
import pytest

from ml_assets.assets.monitoring import (
    columns_to_test,
    describe_reasons,
    performance_evaluations,
    psi_band_check,
    recommend,
    stability_evaluations,
)
from ml_assets.settings import MonitoringSettings

THRESHOLDS = MonitoringSettings(psi_watch=0.1, psi_act=0.25, psi_floor=1e-4, auc_floor=0.7,
                                early_read_auc_floor=0.7,
                                max_auc_drop=0.05, outage_missing_increase=0.3, min_loans=50,
                                drift_report=True, drift_report_features=15)


@pytest.mark.parametrize("psi,passed,severity", [
    (0.05, True, dg.AssetCheckSeverity.ERROR),   # passing checks keep the default severity
    (0.1, False, dg.AssetCheckSeverity.WARN),
    (0.2499, False, dg.AssetCheckSeverity.WARN),
    (0.25, False, dg.AssetCheckSeverity.ERROR),
    (1.3, False, dg.AssetCheckSeverity.ERROR),
    (None, True, dg.AssetCheckSeverity.ERROR),
])
def test_score_psi_check_severity_follows_the_bands(psi, passed, severity):
    result = psi_band_check(THRESHOLDS, psi, {})
    assert (result.check, result.passed, result.severity) == ("score_psi", passed, severity)


def test_stable_everything_means_retain():
    action, reasons = recommend(THRESHOLDS, 0.02, {"age": 0.01, "fe_1_mean": 0.09},
                                {"auc": 0.8, "auc_drop": 0.01, "n": 500})
    assert (action, reasons) == ("retain", [])
    assert describe_reasons(reasons) == "every metric within its threshold"


def test_watch_band_score_or_an_acting_feature_means_watch():
    assert recommend(THRESHOLDS, 0.15, {}, None)[0] == "watch"
    action, reasons = recommend(THRESHOLDS, 0.02, {"fe_1_mean": 0.4, "age": 0.05}, None)
    assert action == "watch"
    assert reasons == [{"action": "watch", "metric": "csi:fe_1_mean", "value": 0.4,
                        "threshold": THRESHOLDS.psi_act, "comparison": ">="}]


@pytest.mark.parametrize("score_psi,performance,metric", [
    (0.3, None, "score_psi"),
    (0.02, {"auc": 0.65, "auc_drop": 0.0, "n": 500}, "auc"),
    (0.02, {"auc": 0.75, "auc_drop": 0.08, "n": 500}, "auc_drop"),
])
def test_act_band_or_lost_discrimination_means_retrain(score_psi, performance, metric):
    action, reasons = recommend(THRESHOLDS, score_psi, {}, performance)
    assert action == "retrain"
    assert [r["metric"] for r in reasons if r["action"] == "retrain"] == [metric]
    assert metric in describe_reasons(reasons)


def test_auc_on_too_few_loans_is_no_reason_to_retrain():
    action, reasons = recommend(THRESHOLDS, 0.02, {}, {"auc": 0.55, "auc_drop": 0.25, "n": 12})
    assert (action, reasons) == ("retain", [])


def test_an_outage_means_data_outage_not_retrain():
    action, reasons = recommend(
        THRESHOLDS, 0.4, {"outstanding_debt": 0.3}, None,
        failing_sources={"feature_clickstream": (0.0, 0.5)},
        missing_features={"fe_1_mean": (1.0, 0.28), "fe_2_latest": (1.0, 0.3)})
    assert action == "data_outage"
    assert [(r["action"], r["metric"]) for r in reasons] == [
        ("data_outage", "coverage:feature_clickstream"),
        ("data_outage", "missing:feature_clickstream (2 features)"),
        ("retrain", "score_psi"), ("watch", "csi:outstanding_debt")]
    assert reasons[1]["threshold"] == pytest.approx(0.3 + THRESHOLDS.outage_missing_increase)
    assert describe_reasons(reasons).startswith(
        "coverage:feature_clickstream 0.0000 < 0.5 (data_outage); missing:feature_clickstream")


def test_the_thresholds_are_the_ones_passed_in():
    lenient = dataclasses.replace(THRESHOLDS, psi_watch=0.2, psi_act=0.5, min_loans=5)
    assert psi_band_check(lenient, 0.15, {}).passed
    assert recommend(lenient, 0.3, {}, {"auc": 0.55, "auc_drop": 0.0, "n": 12})[0] == "retrain"
    assert [r["metric"] for r in recommend(lenient, 0.3, {}, None)[1]] == ["score_psi"]


def test_psi_on_too_few_loans_only_warns():
    result = psi_band_check(THRESHOLDS, 0.9, {}, loans=8)
    assert (result.passed, result.severity) == (False, dg.AssetCheckSeverity.WARN)
    assert "on only 8 loans: too few to judge" in result.description


def stability_frame(rows: dict[str, tuple[float, str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"variable": name, "psi": psi, "band": band,
                          "reference_missing_share": ref, "actual_missing_share": act}
                         for name, (psi, band, ref, act) in rows.items()]).set_index("variable")


def test_features_in_an_outage_are_reported_as_missing_data_not_drift():
    frame = stability_frame({"score": (0.3, "act", 0.0, 0.0),
                             "fe_1_mean": (5.6, "outage", 0.28, 1.0),
                             "clickstream_months": (7.2, "outage", 0.0, 0.0),
                             "outstanding_debt": (0.4, "act", 0.0, 0.0),
                             "age": (0.01, "stable", 0.05, 0.05)})
    score, csi, missing = stability_evaluations(THRESHOLDS, frame, 500)
    assert (score.passed, score.severity) == (False, dg.AssetCheckSeverity.ERROR)
    assert "during a data outage, not drift: feature_clickstream" in score.description
    assert not csi.passed
    assert csi.description == f"CSI >= {THRESHOLDS.psi_act}: outstanding_debt 0.400"
    assert (missing.passed, missing.severity) == (False, dg.AssetCheckSeverity.ERROR)
    assert missing.description == (
        "data outage, not drift: feature_clickstream: 2 feature(s) missing in up to 100% of 500 "
        "loans against up to 28% in the reference (fe_1_mean, clickstream_months)")


def test_a_month_without_outage_passes_the_missing_data_check():
    frame = stability_frame({"score": (0.02, "stable", 0.0, 0.0),
                             "age": (0.01, "stable", 0.05, 0.06)})
    verdicts = stability_evaluations(THRESHOLDS, frame, 500)
    assert [(v.check, v.passed) for v in verdicts] == [
        ("score_psi", True), ("feature_csi", True), ("features_missing", True)]


@pytest.mark.parametrize("summary,description", [
    ({"auc": None, "n": 40, "defaults": 0}, "not measurable: 40 loans, 0 defaults (one class"),
    ({"auc": 0.52, "n": 9, "defaults": 3}, "on only 9 loans: too few to judge"),
])
def test_auc_checks_only_warn_on_one_class_or_few_loans(summary, description):
    for result in performance_evaluations(THRESHOLDS, "m-2024-01", summary, 0.8, None):
        assert (result.passed, result.severity) == (False, dg.AssetCheckSeverity.WARN)
        assert description in result.description


def test_auc_checks_on_enough_loans():
    floor, drop = performance_evaluations(THRESHOLDS, "m-2024-01",
                                          {"auc": 0.66, "n": 400, "defaults": 100}, 0.8, 0.14)
    assert (floor.passed, floor.severity) == (False, dg.AssetCheckSeverity.ERROR)
    assert floor.description == f"AUC 0.6600 of m-2024-01 below the floor {THRESHOLDS.auc_floor}"
    assert not drop.passed and "0.1400 below its OOT AUC 0.8000" in drop.description


def test_columns_without_values_on_a_side_are_not_drift_tested():
    reference = pd.DataFrame({"a": [1.0, 2.0], "b": [None, None], "c": ["x", "y"]})
    current = pd.DataFrame({"a": [None, None], "b": [1.0, 2.0], "c": ["x", "x"]})
    tested, notes = columns_to_test(reference, current, ["a", "b", "c"])
    assert tested == ["c"]
    assert notes == {"a": "not tested: no value in the month",
                     "b": "not tested: no value in the reference"}
