"""Training and scoring the candidate models.

Artifacts are native and non-executable, never pickles: LightGBM's model text plus a JSON
sidecar, or the logistic model's coefficients and preprocessing as JSON. The categorical
encoding is fixed by the training window (its levels are saved with the model) and never
refitted when a later month is scored: an unseen level scores as missing.
LightGBM and scikit-learn load when a model is trained or read, not with the code location.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import pandas as pd

from ml_assets.model_config import FeatureList, ModelSpec

ARTIFACT_FORMAT = 1
SIDECAR = "model.json"
LIGHTGBM_TEXT = "model.txt"


def category_levels(frame: pd.DataFrame, names: tuple[str, ...]) -> dict[str, list[str]]:
    """The levels each categorical feature takes in the training data, sorted."""
    return {name: sorted(frame[name].dropna().astype(str).unique().tolist()) for name in names}


def numeric_matrix(frame: pd.DataFrame, names: tuple[str, ...]) -> np.ndarray:
    """The numeric features as floats (booleans as 0/1), missing values as NaN."""
    columns = frame[list(names)]
    if any(dtype.kind == "O" for dtype in columns.dtypes):  # nullable columns come as objects
        columns = columns.apply(pd.to_numeric, errors="coerce")
    return columns.to_numpy(dtype=np.float64, na_value=np.nan)


def category_codes(frame: pd.DataFrame, levels: dict[str, list[str]]) -> np.ndarray:
    """Each categorical as the index of its level in the training levels; NaN if missing or
    unseen in training."""
    columns = []
    for name, known in levels.items():
        codes = pd.Categorical(frame[name], categories=known).codes.astype(np.float64)
        columns.append(np.where(codes < 0, np.nan, codes))
    return np.column_stack(columns) if columns else np.empty((len(frame), 0))


def fingerprint(frame: pd.DataFrame) -> str:
    """A hash of a frame's content (rows in order, columns by name)."""
    hashed = pd.util.hash_pandas_object(frame[sorted(frame.columns)], index=False)
    return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()[:16]


def feature_schema_hash(features: FeatureList) -> str:
    schema = [[n, "numeric"] for n in features.numeric]
    schema += [[n, "categorical"] for n in features.categorical]
    return hashlib.sha256(json.dumps(schema).encode()).hexdigest()[:16]


class Model(ABC):
    algorithm: str
    features: FeatureList

    @abstractmethod
    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Probability of default for each row of `frame`."""

    @abstractmethod
    def save(self, folder: Path) -> None: ...

    @abstractmethod
    def importances(self) -> dict[str, float]:
        """How much each feature drives the score (LightGBM gain, |coefficient| for logistic)."""

    def _sidecar(self, extra: dict) -> str:
        return json.dumps({"format": ARTIFACT_FORMAT, "algorithm": self.algorithm,
                           "features": {"numeric": list(self.features.numeric),
                                        "categorical": list(self.features.categorical)},
                           **extra}, indent=1, sort_keys=True)


class LightGBMModel(Model):
    algorithm = "lightgbm"

    def __init__(self, booster, features: FeatureList, levels: dict[str, list[str]]):
        self.booster, self.features, self.levels = booster, features, levels

    def matrix(self, frame: pd.DataFrame) -> np.ndarray:
        return np.hstack([numeric_matrix(frame, self.features.numeric),
                          category_codes(frame, self.levels)])

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.booster.predict(self.matrix(frame))

    def save(self, folder: Path) -> None:
        (folder / LIGHTGBM_TEXT).write_text(self.booster.model_to_string())
        (folder / SIDECAR).write_text(self._sidecar({"levels": self.levels}))

    def importances(self) -> dict[str, float]:
        gains = self.booster.feature_importance(importance_type="gain")
        return dict(zip(self.features.names, map(float, gains), strict=True))

    @classmethod
    def train(cls, spec: ModelSpec, features: FeatureList, train: pd.DataFrame,
              test: pd.DataFrame, seed: int) -> LightGBMModel:
        import lightgbm as lgb

        levels = category_levels(train, features.categorical)
        model = cls(None, features, levels)
        categorical = list(range(len(features.numeric), len(features.names)))
        params = {"objective": "binary", "metric": "binary_logloss", "verbose": -1,
                  "seed": seed, "deterministic": True, "force_row_wise": True,
                  **spec.params}
        train_set = lgb.Dataset(model.matrix(train), train["label"].to_numpy(),
                                feature_name=list(features.names),
                                categorical_feature=categorical, free_raw_data=False)
        test_set = train_set.create_valid(model.matrix(test), test["label"].to_numpy())
        model.booster = lgb.train(
            params, train_set, num_boost_round=spec.max_rounds, valid_sets=[test_set],
            callbacks=[lgb.early_stopping(spec.early_stopping_rounds, verbose=False)],
        )
        # keep only the trees up to the best test iteration
        model.booster = lgb.Booster(
            model_str=model.booster.model_to_string(num_iteration=model.booster.best_iteration))
        return model


class LogisticModel(Model):
    """Median imputation with a missing flag and standardisation for numbers, one-hot levels
    for categories, then a logistic regression; all kept as plain numbers in JSON."""

    algorithm = "logistic_regression"

    def __init__(self, features: FeatureList, preprocessing: dict, coefficients: list[float],
                 intercept: float):
        self.features, self.preprocessing = features, preprocessing
        self.coefficients, self.intercept = np.asarray(coefficients), intercept

    def design(self, frame: pd.DataFrame) -> np.ndarray:
        numeric = self.preprocessing["numeric"]
        values = numeric_matrix(frame, self.features.numeric)
        columns = []
        for i, name in enumerate(self.features.numeric):
            stats = numeric[name]
            column = values[:, i]
            missing = np.isnan(column)
            columns.append((np.where(missing, stats["median"], column) - stats["mean"])
                           / stats["scale"])
            if stats["missing_flag"]:
                columns.append(missing.astype(np.float64))
        for name, levels in self.preprocessing["levels"].items():
            observed = frame[name].to_numpy(dtype=object)
            columns += [(observed == level).astype(np.float64) for level in levels]
        return np.column_stack(columns)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.design(frame) @ self.coefficients + self.intercept)))

    def columns(self) -> list[tuple[str, str]]:
        """(design column, feature it comes from), in design order."""
        names = []
        for name in self.features.numeric:
            names.append((name, name))
            if self.preprocessing["numeric"][name]["missing_flag"]:
                names.append((f"{name}__missing", name))
        for name, levels in self.preprocessing["levels"].items():
            names += [(f"{name}={level}", name) for level in levels]
        return names

    def save(self, folder: Path) -> None:
        (folder / SIDECAR).write_text(self._sidecar({
            "preprocessing": self.preprocessing,
            "columns": [column for column, _ in self.columns()],
            "coefficients": self.coefficients.tolist(),
            "intercept": self.intercept,
        }))

    def importances(self) -> dict[str, float]:
        totals = dict.fromkeys(self.features.names, 0.0)
        for (_, feature), coefficient in zip(self.columns(), self.coefficients, strict=True):
            totals[feature] += abs(float(coefficient))
        return totals

    @classmethod
    def train(cls, spec: ModelSpec, features: FeatureList, train: pd.DataFrame,
              test: pd.DataFrame, seed: int) -> LogisticModel:
        values = numeric_matrix(train, features.numeric)
        numeric = {}
        for i, name in enumerate(features.numeric):
            column = values[:, i]
            median = float(np.nanmedian(column)) if np.isfinite(column).any() else 0.0
            imputed = np.where(np.isnan(column), median, column)
            scale = float(imputed.std())
            numeric[name] = {"median": median, "mean": float(imputed.mean()),
                             "scale": scale if scale > 0 else 1.0,
                             "missing_flag": bool(np.isnan(column).any())}
        preprocessing = {"numeric": numeric,
                         "levels": category_levels(train, features.categorical)}
        from sklearn.linear_model import LogisticRegression

        model = cls(features, preprocessing, [], 0.0)
        fitted = LogisticRegression(random_state=seed, **spec.params).fit(
            model.design(train), train["label"].to_numpy())
        model.coefficients = fitted.coef_[0].copy()
        model.intercept = float(fitted.intercept_[0])
        return model


MODEL_CLASSES = {cls.algorithm: cls for cls in (LightGBMModel, LogisticModel)}


def train_model(spec: ModelSpec, features: FeatureList, train: pd.DataFrame,
                test: pd.DataFrame, seed: int) -> Model:
    return MODEL_CLASSES[spec.algorithm].train(spec, features, train, test, seed)


def load_model(folder: Path) -> Model:
    sidecar = json.loads((folder / SIDECAR).read_text())
    if sidecar.get("format") != ARTIFACT_FORMAT:
        raise ValueError(f"{folder}: unknown artifact format {sidecar.get('format')!r}")
    features = FeatureList(tuple(sidecar["features"]["numeric"]),
                           tuple(sidecar["features"]["categorical"]))
    if sidecar["algorithm"] == LightGBMModel.algorithm:
        import lightgbm as lgb

        booster = lgb.Booster(model_str=(folder / LIGHTGBM_TEXT).read_text())
        return LightGBMModel(booster, features, sidecar["levels"])
    if sidecar["algorithm"] == LogisticModel.algorithm:
        return LogisticModel(features, sidecar["preprocessing"], sidecar["coefficients"],
                             sidecar["intercept"])
    raise ValueError(f"{folder}: unknown algorithm {sidecar['algorithm']!r}")
