"""The candidate models: deterministic, saved without pickles, scored the same after loading."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from ml_assets.model_config import FeatureList, ModelSpec
from ml_assets.modeling import load_model, train_model

FEATURES = FeatureList(("income", "debt", "flag"), ("mix",))
LGBM = ModelSpec("lightgbm", "lightgbm", {"num_leaves": 7, "num_threads": 2,
                                           "min_data_in_leaf": 20}, FEATURES, 200, 20)
LOGISTIC = ModelSpec("logistic", "logistic_regression", {"C": 1.0, "max_iter": 1000}, FEATURES)


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    income = rng.normal(50, 15, n)
    debt = rng.normal(10, 5, n)
    mix = rng.choice(["Good", "Standard", "Bad", None], n)
    risk = -0.08 * (income - 50) + 0.2 * (debt - 10) + np.where(mix == "Bad", 1.0, 0.0)
    label = (rng.random(n) < 1 / (1 + np.exp(-(risk - 1)))).astype(int)
    income[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame({"income": income, "debt": debt, "flag": rng.random(n) < 0.3,
                         "mix": mix, "label": label})


@pytest.fixture(scope="module")
def data():
    return frame(3000, 1), frame(800, 2), frame(800, 3)


@pytest.mark.parametrize("spec", [LGBM, LOGISTIC], ids=lambda s: s.name)
def test_saved_model_scores_like_the_trained_one(spec, data, tmp_path):
    train, test, oot = data
    model = train_model(spec, FEATURES, train, test, seed=42)
    model.save(tmp_path)
    loaded = load_model(tmp_path)
    assert np.allclose(model.predict(oot), loaded.predict(oot), rtol=0, atol=1e-12)
    scores = loaded.predict(oot)
    assert ((scores > 0) & (scores < 1)).all()
    assert {p.suffix for p in tmp_path.iterdir()} <= {".txt", ".json"}
    assert set(model.importances()) == set(FEATURES.names)


@pytest.mark.parametrize("spec", [LGBM, LOGISTIC], ids=lambda s: s.name)
def test_training_twice_gives_byte_identical_artifacts(spec, data, tmp_path):
    train, test, _ = data
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        train_model(spec, FEATURES, train, test, seed=42).save(tmp_path / run)
    for path in (tmp_path / "a").iterdir():
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name


def test_logistic_json_model_equals_scikit_learn(data):
    train, test, oot = data
    model = train_model(LOGISTIC, FEATURES, train, test, seed=42)
    reference = LogisticRegression(C=1.0, max_iter=1000, random_state=42).fit(
        model.design(train), train["label"])
    assert np.allclose(model.predict(oot), reference.predict_proba(model.design(oot))[:, 1],
                       atol=1e-12)


@pytest.mark.parametrize("spec", [LGBM, LOGISTIC], ids=lambda s: s.name)
def test_categories_keep_the_training_encoding(spec, data):
    train, test, oot = data
    model = train_model(spec, FEATURES, train, test, seed=42)
    unseen = oot.assign(mix="Excellent")  # a level the training window never had
    missing = oot.assign(mix=None)
    assert np.allclose(model.predict(unseen), model.predict(missing))
    # scoring one month alone gives the same scores as scoring it among others
    assert np.allclose(model.predict(oot.iloc[:10]), model.predict(oot)[:10])
    only_bad = oot[oot["mix"] == "Bad"]
    assert np.allclose(model.predict(only_bad), model.predict(oot)[oot["mix"] == "Bad"])


@pytest.mark.parametrize("spec", [LGBM, LOGISTIC], ids=lambda s: s.name)
def test_contributions_plus_bias_give_the_raw_score(spec, data):
    train, test, oot = data
    model = train_model(spec, FEATURES, train, test, seed=42)
    contributions, bias = model.contributions(oot)
    assert contributions.shape == (len(oot), len(FEATURES.names))
    raw = model.raw_score(oot)
    assert np.allclose(contributions.sum(axis=1) + bias, raw, atol=1e-9)
    assert np.allclose(1 / (1 + np.exp(-raw)), model.predict(oot), atol=1e-12)
    if spec is LGBM:  # LightGBM's own raw score, independently of the contributions
        assert np.allclose(raw, model.booster.predict(model.matrix(oot), raw_score=True))


def test_logistic_contribution_is_coefficient_times_standardised_value(data):
    train, test, oot = data
    model = train_model(LOGISTIC, FEATURES, train, test, seed=42)
    contributions, bias = model.contributions(oot)
    column = [c for c, _ in model.columns()].index("debt")
    mean, std = train["debt"].mean(), train["debt"].std(ddof=0)
    expected = model.coefficients[column] * (oot["debt"] - mean) / std
    assert np.allclose(contributions[:, FEATURES.names.index("debt")], expected)
    assert np.allclose(bias, model.intercept)
