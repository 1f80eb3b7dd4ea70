"""Training and scoring the candidate models.

Artifacts are native and non-executable, never pickles: LightGBM's model text plus a JSON
sidecar, or the logistic model's coefficients and preprocessing as JSON. The categorical
encoding is fixed by the training window (its levels are saved with the model) and never
refitted when a later month is scored: an unseen level scores as missing.
A model may calibrate its scores (`calibration: platt | isotonic` in config/models.yaml): the
calibrator is fitted on the training window's test split (loans the model did not learn from,
before the out-of-time month; LightGBM chose its number of trees on them too, a mild reuse
of the same loans) and saved in the sidecar as numbers (Platt's two coefficients, isotonic
regression's thresholds). The out-of-time month stays untouched for the gate.
LightGBM and scikit-learn load when a model is trained or read, not with the code location.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import pandas as pd

from ml_assets.model_config import CALIBRATIONS, FeatureList, ModelSpec

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


def logit(scores: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(scores, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(clipped / (1 - clipped))


class Calibrator:
    """A monotone map from a model's scores to calibrated probabilities of default.

    platt: p' = 1 / (1 + exp(-(a * logit(p) + b))) (Platt 1999, "Probabilistic outputs for
    support vector machines"), `a`, `b` fitted by unpenalised logistic regression;
    isotonic: the step-wise linear interpolation through the thresholds of scikit-learn's
    IsotonicRegression (increasing, clipped to [0, 1] and to the fitted range), as its
    `predict` does."""

    def __init__(self, method: str, params: dict):
        if method not in CALIBRATIONS[1:]:
            raise ValueError(f"unknown calibration {method!r}: one of {CALIBRATIONS[1:]}")
        self.method, self.params = method, params

    @classmethod
    def fit(cls, method: str, scores: np.ndarray, labels: np.ndarray) -> Calibrator:
        """Fit `method` on scores (probabilities, shape (n,)) and 0/1 labels (n,)."""
        if method == "platt":
            from sklearn.linear_model import LogisticRegression

            fitted = LogisticRegression(C=np.inf).fit(logit(scores)[:, None], labels)
            return cls(method, {"a": float(fitted.coef_[0][0]),
                                "b": float(fitted.intercept_[0])})
        from sklearn.isotonic import IsotonicRegression

        fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
            scores, labels)
        return cls(method, {"x": fitted.X_thresholds_.tolist(),
                            "y": fitted.y_thresholds_.tolist()})

    def apply(self, scores: np.ndarray) -> np.ndarray:
        if self.method == "platt":
            return 1.0 / (1.0 + np.exp(-(self.params["a"] * logit(scores) + self.params["b"])))
        return np.interp(scores, self.params["x"], self.params["y"])

    def to_dict(self) -> dict:
        return {"method": self.method, **self.params}

    @classmethod
    def from_dict(cls, raw: dict | None) -> Calibrator | None:
        if not raw:
            return None
        params = dict(raw)
        return cls(params.pop("method"), params)


class Model(ABC):
    algorithm: str
    features: FeatureList
    calibrator: Calibrator | None = None

    @abstractmethod
    def uncalibrated(self, frame: pd.DataFrame) -> np.ndarray:
        """The model's own probability of default for each row of `frame`."""

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Probability of default for each row of `frame`, calibrated if the model is."""
        scores = self.uncalibrated(frame)
        return self.calibrator.apply(scores) if self.calibrator else scores

    @abstractmethod
    def raw_score(self, frame: pd.DataFrame) -> np.ndarray:
        """The model's log-odds of default for each row (before calibration), shape (n,)."""

    @abstractmethod
    def contributions(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """How much each feature moves each row's log-odds of default: an (n, features) array
        in the order of `features.names`, and the bias (n,); contributions plus bias give
        `raw_score`."""

    @abstractmethod
    def save(self, folder: Path) -> None: ...

    @abstractmethod
    def importances(self) -> dict[str, float]:
        """How much each feature drives the score (LightGBM gain, |coefficient| for logistic)."""

    def _sidecar(self, extra: dict) -> str:
        return json.dumps({"format": ARTIFACT_FORMAT, "algorithm": self.algorithm,
                           "features": {"numeric": list(self.features.numeric),
                                        "categorical": list(self.features.categorical)},
                           **({"calibration": self.calibrator.to_dict()}
                              if self.calibrator else {}),
                           **extra}, indent=1, sort_keys=True)


class LightGBMModel(Model):
    algorithm = "lightgbm"

    def __init__(self, booster, features: FeatureList, levels: dict[str, list[str]]):
        self.booster, self.features, self.levels = booster, features, levels

    def matrix(self, frame: pd.DataFrame) -> np.ndarray:
        return np.hstack([numeric_matrix(frame, self.features.numeric),
                          category_codes(frame, self.levels)])

    def uncalibrated(self, frame: pd.DataFrame) -> np.ndarray:
        return self.booster.predict(self.matrix(frame))

    def raw_score(self, frame: pd.DataFrame) -> np.ndarray:
        return self.booster.predict(self.matrix(frame), raw_score=True)

    def contributions(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """LightGBM's per-feature contributions (`pred_contrib=True`: TreeSHAP values, Lundberg
        et al. 2018), the last column its bias (the expected raw score)."""
        values = self.booster.predict(self.matrix(frame), pred_contrib=True)
        return values[:, :-1], values[:, -1]

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

    def uncalibrated(self, frame: pd.DataFrame) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.raw_score(frame)))

    def raw_score(self, frame: pd.DataFrame) -> np.ndarray:
        return self.design(frame) @ self.coefficients + self.intercept

    def contributions(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Coefficient times standardised value, summed over a feature's design columns (its
        value and missing flag, or its one-hot levels); the bias is the intercept."""
        terms = self.design(frame) * self.coefficients
        index = {name: i for i, name in enumerate(self.features.names)}
        owner = np.array([index[feature] for _, feature in self.columns()])
        totals = np.zeros((len(frame), len(index)))
        np.add.at(totals.T, owner, terms.T)
        return totals, np.full(len(frame), self.intercept)

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
    """Train `spec` on `train` (early stopping on `test`); with `spec.calibration` platt or
    isotonic, calibrate its scores on `test`, the window's loans it did not learn from."""
    model = MODEL_CLASSES[spec.algorithm].train(spec, features, train, test, seed)
    if spec.calibration != "none":
        model.calibrator = Calibrator.fit(spec.calibration, model.uncalibrated(test),
                                          test["label"].to_numpy())
    return model


def load_model(folder: Path) -> Model:
    sidecar = json.loads((folder / SIDECAR).read_text())
    if sidecar.get("format") != ARTIFACT_FORMAT:
        raise ValueError(f"{folder}: unknown artifact format {sidecar.get('format')!r}")
    features = FeatureList(tuple(sidecar["features"]["numeric"]),
                           tuple(sidecar["features"]["categorical"]))
    if sidecar["algorithm"] == LightGBMModel.algorithm:
        import lightgbm as lgb

        booster = lgb.Booster(model_str=(folder / LIGHTGBM_TEXT).read_text())
        model: Model = LightGBMModel(booster, features, sidecar["levels"])
    elif sidecar["algorithm"] == LogisticModel.algorithm:
        model = LogisticModel(features, sidecar["preprocessing"], sidecar["coefficients"],
                              sidecar["intercept"])
    else:
        raise ValueError(f"{folder}: unknown algorithm {sidecar['algorithm']!r}")
    model.calibrator = Calibrator.from_dict(sidecar.get("calibration"))
    return model
