"""Check severities and the recommendation rules, on hand-made values."""

from datetime import date

import dagster as dg
import pytest

from ml_assets.assets.monitoring import (
    STABILITY_CHECKS,
    THRESHOLDS,
    describe_reasons,
    psi_band_check,
    recommend,
)

MONTH = date(2024, 9, 1)


@pytest.mark.parametrize("psi,passed,severity", [
    (0.05, True, dg.AssetCheckSeverity.ERROR),   # passing checks keep the default severity
    (0.1, False, dg.AssetCheckSeverity.WARN),
    (0.2499, False, dg.AssetCheckSeverity.WARN),
    (0.25, False, dg.AssetCheckSeverity.ERROR),
    (1.3, False, dg.AssetCheckSeverity.ERROR),
    (None, True, dg.AssetCheckSeverity.ERROR),
])
def test_score_psi_check_severity_follows_the_bands(psi, passed, severity):
    result = psi_band_check(STABILITY_CHECKS["score_psi"], MONTH, psi, {})
    assert (result.passed, result.severity) == (passed, severity)
    assert result.partition == "2024-09-01"


def test_stable_everything_means_retain():
    action, reasons = recommend(0.02, {"age": 0.01, "fe_1_mean": 0.09},
                                {"auc": 0.8, "auc_drop": 0.01})
    assert (action, reasons) == ("retain", [])
    assert describe_reasons(reasons) == "every metric within its threshold"


def test_watch_band_score_or_an_acting_feature_means_watch():
    assert recommend(0.15, {}, None)[0] == "watch"
    action, reasons = recommend(0.02, {"fe_1_mean": 0.4, "age": 0.05}, None)
    assert action == "watch"
    assert reasons == [{"action": "watch", "metric": "csi:fe_1_mean", "value": 0.4,
                        "threshold": THRESHOLDS.psi_act, "comparison": ">="}]


@pytest.mark.parametrize("score_psi,performance,metric", [
    (0.3, None, "score_psi"),
    (0.02, {"auc": 0.65, "auc_drop": 0.0}, "auc"),
    (0.02, {"auc": 0.75, "auc_drop": 0.08}, "auc_drop"),
])
def test_act_band_or_lost_discrimination_means_retrain(score_psi, performance, metric):
    action, reasons = recommend(score_psi, {}, performance)
    assert action == "retrain"
    assert [r["metric"] for r in reasons if r["action"] == "retrain"] == [metric]
    assert metric in describe_reasons(reasons)
