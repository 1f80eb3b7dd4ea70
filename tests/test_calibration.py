"""Rating grades and calibration statistics on hand-made scores, each against an independent
recomputation (scipy's distributions and special functions, and DuckDB's ntile for the score
deciles); the checks' severities; the calibrators (Platt, isotonic) saved as numbers."""

from __future__ import annotations

import json

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import optimize, special, stats
from sklearn.isotonic import IsotonicRegression

from ml_assets import metrics
from ml_assets.assets.credit_review import calibration_evaluations
from ml_assets.model_config import FeatureList, ModelSpec, load_model_config
from ml_assets.modeling import Calibrator, load_model, train_model
from ml_assets.rating import calibration_by_grade, grade_of
from ml_assets.settings import CONFIG_DIR, MonitoringSettings, SettingsError

SCALE = (("A", 0.05), ("B", 0.1), ("C", 0.2), ("D", 0.35), ("E", 0.6), ("F", 1.0))
THRESHOLDS = MonitoringSettings(psi_watch=0.1, psi_act=0.25, psi_floor=1e-4, auc_floor=0.7,
                                early_read_auc_floor=0.65,
                                max_auc_drop=0.05, outage_missing_increase=0.3, min_loans=50,
                                drift_report=True, drift_report_features=15,
                                calibration_warn_p=0.05, calibration_error_p=0.01)


def test_a_score_takes_the_first_grade_whose_bound_exceeds_it():
    scores = np.array([0.0, 0.0499, 0.05, 0.0999, 0.1, 0.35, 0.5999, 0.6, 0.99, 1.0])
    assert grade_of(scores, SCALE).tolist() == ["A", "A", "B", "B", "C", "E", "E", "F", "F", "F"]


def scored_loans(n: int, seed: int, bias: float = 0.0) -> pd.DataFrame:
    """Loans whose default probability is their score plus `bias`."""
    rng = np.random.default_rng(seed)
    score = rng.beta(2, 6, n)
    label = (rng.random(n) < np.clip(score + bias, 0, 1)).astype(int)
    return pd.DataFrame({"loan_id": [f"L{i:05d}" for i in range(n)], "score": score,
                         "grade": grade_of(score, SCALE), "label": label})


def test_calibration_by_grade_equals_scipy():
    loans = scored_loans(3000, 1)
    # dirty: one loan alone in the best grade, and no loan in the worst
    loans = pd.concat([loans[~loans["grade"].isin(["A", "F"])],
                       pd.DataFrame({"loan_id": ["ONE"], "score": [0.01], "grade": ["A"],
                                     "label": [1]})], ignore_index=True)
    rows = {r["grade"]: r for r in calibration_by_grade(loans, SCALE)}
    assert list(rows) == [grade for grade, _ in SCALE]
    assert rows["F"]["loans"] == 0 and rows["F"]["jeffreys_p_value"] is None
    assert (rows["A"]["pd_lower"], rows["A"]["pd_upper"], rows["B"]["pd_lower"]) == (0, 0.05, 0.05)
    for grade, group in loans.groupby("grade"):
        n, d, pd_ = len(group), int(group["label"].sum()), group["score"].mean()
        row = rows[grade]
        assert (row["loans"], row["defaults"]) == (n, d)
        assert row["predicted_pd"] == pytest.approx(pd_)
        assert row["observed_rate"] == pytest.approx(d / n)
        # P(X >= d) under Binomial(n, pd): the survival function at d - 1
        assert row["binomial_p_value"] == pytest.approx(stats.binom.sf(d - 1, n, pd_))
        # the Beta(d + 1/2, n - d + 1/2) posterior's mass below pd: the regularised beta
        assert row["jeffreys_p_value"] == pytest.approx(special.betainc(d + 0.5, n - d + 0.5, pd_))
    assert rows["A"]["jeffreys_p_value"] < 0.01  # one default at a PD of 1%


def test_hosmer_lemeshow_equals_deciles_in_sql_and_scipy():
    loans = scored_loans(1003, 2)  # 1003: the first three deciles get the extra loans
    loans.loc[:40, "score"] = 0.2  # ties, split by loan id
    with duckdb.connect() as con:
        con.register("loans", loans)
        groups = con.execute(
            "SELECT count(*), sum(label), sum(score) FROM (SELECT *, ntile(10) OVER "
            "(ORDER BY score, loan_id) AS decile FROM loans) GROUP BY decile").fetchall()
    statistic = sum((o - e) ** 2 / (e * (1 - e / n)) for n, o, e in groups)
    result = metrics.hosmer_lemeshow(loans["label"], loans["score"], loans["loan_id"])
    assert result["statistic"] == pytest.approx(statistic)
    assert result["p_value"] == pytest.approx(stats.chi2.sf(statistic, 8))
    assert metrics.hosmer_lemeshow([0, 1], [0.2, 0.3])["p_value"] is None


def test_scores_too_low_fail_calibration_with_an_error():
    good = scored_loans(4000, 3)
    bad = scored_loans(4000, 3, bias=0.1)
    for loans, passed in ((good, True), (bad, False)):
        rows = calibration_by_grade(loans, SCALE)
        hl = metrics.hosmer_lemeshow(loans["label"], loans["score"], loans["loan_id"])
        grade, fit = calibration_evaluations(THRESHOLDS, "m-2024-01", rows, hl)
        assert (grade.check, fit.check) == ("grade_calibration", "hosmer_lemeshow")
        assert grade.passed == fit.passed == passed
        if not passed:
            assert grade.severity == fit.severity == dg.AssetCheckSeverity.ERROR
            assert "PD too low in grade" in grade.description


def test_on_few_loans_a_calibration_failure_only_warns():
    loans = scored_loans(40, 4, bias=0.4)
    rows = calibration_by_grade(loans, SCALE)
    hl = metrics.hosmer_lemeshow(loans["label"], loans["score"], loans["loan_id"])
    for verdict in calibration_evaluations(THRESHOLDS, "m-2024-01", rows, hl):
        assert not verdict.passed
        assert verdict.severity == dg.AssetCheckSeverity.WARN


def test_platt_calibrator_is_the_maximum_likelihood_fit():
    loans = scored_loans(2000, 5, bias=0.05)
    platt = Calibrator.fit("platt", loans["score"].to_numpy(), loans["label"].to_numpy())
    x = special.logit(loans["score"].to_numpy())
    y = loans["label"].to_numpy()

    def loss(ab):
        p = special.expit(ab[0] * x + ab[1])
        return -np.sum(y * np.log(p) + (1 - y) * np.log(1 - p))

    best = optimize.minimize(loss, [1.0, 0.0], method="Nelder-Mead",
                             options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 5000}).x
    assert [platt.params["a"], platt.params["b"]] == pytest.approx(best, abs=1e-3)
    assert platt.apply(np.array([0.3]))[0] == pytest.approx(special.expit(best[0] * special.logit(
        0.3) + best[1]), abs=1e-4)


def test_isotonic_calibrator_scores_like_scikit_learn():
    loans = scored_loans(2000, 6, bias=-0.05)
    iso = Calibrator.fit("isotonic", loans["score"].to_numpy(), loans["label"].to_numpy())
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(
        loans["score"], loans["label"])
    probe = np.r_[0.0, np.linspace(-0.1, 1.1, 50), 1.0]
    assert np.allclose(iso.apply(probe), reference.predict(probe), atol=1e-12)
    assert (np.diff(iso.apply(np.sort(probe))) >= 0).all()


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_a_calibrated_model_saves_its_calibrator_as_numbers(method, tmp_path):
    rng = np.random.default_rng(7)

    def frame(n):
        income = rng.normal(50, 15, n)
        label = (rng.random(n) < special.expit(-0.08 * (income - 50) - 1)).astype(int)
        return pd.DataFrame({"income": income, "label": label})

    features = FeatureList(("income",), ())
    spec = ModelSpec("logistic", "logistic_regression", {"C": 1.0}, features,
                     calibration=method)
    train, test, oot = frame(2000), frame(800), frame(500)
    model = train_model(spec, features, train, test, seed=1)
    expected = Calibrator.fit(method, model.uncalibrated(test), test["label"].to_numpy())
    assert np.allclose(model.predict(oot), expected.apply(model.uncalibrated(oot)))
    model.save(tmp_path)
    sidecar = json.loads((tmp_path / "model.json").read_text())
    assert sidecar["calibration"]["method"] == method
    assert np.allclose(load_model(tmp_path).predict(oot), model.predict(oot), atol=1e-12)


@pytest.mark.parametrize("change,message", [
    (lambda raw: raw.pop("rating_scale"), "rating_scale"),
    (lambda raw: raw.update(rating_scale={"A": 0.2, "B": 0.1, "C": 1.0}), "rating_scale"),
    (lambda raw: raw.update(rating_scale={"A": 0.2, "B": 0.9}), "rating_scale"),
    (lambda raw: raw["models"]["logistic"].update(calibration="beta"), "calibration"),
    (lambda raw: raw["predictions"].update(cutoff_mode="profit"), "cutoff_mode"),
    (lambda raw: raw["woe"].update(iv_strong=0.05), "woe"),
])
def test_a_bad_rating_calibration_cutoff_or_woe_setting_is_refused(change, message, tmp_path):
    raw = yaml.safe_load((CONFIG_DIR / "models.yaml").read_text())
    change(raw)
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SettingsError, match=message):
        load_model_config(path)
