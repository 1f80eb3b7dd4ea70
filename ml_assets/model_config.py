"""The model configuration, `config/models.yaml` (or the file VINTAGE_MODELS names)."""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ml_assets.settings import CONFIG_DIR, SettingsError, read_yaml

ALGORITHMS = ("lightgbm", "logistic_regression")
CALIBRATIONS = ("none", "platt", "isotonic")
CUTOFF_MODES = ("pd", "approval_rate", "bad_rate")  # ml_assets.cutoffs
APPROVAL_MODES = ("auto", "manual")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


@dataclass(frozen=True)
class FeatureList:
    """Feature names or patterns; `resolve` turns them into columns of the feature store."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]

    def resolve(self, columns: list[str]) -> FeatureList:
        def expand(patterns: tuple[str, ...]) -> tuple[str, ...]:
            names: list[str] = []
            for pattern in patterns:
                matched = [c for c in columns if fnmatch.fnmatchcase(c, pattern)]
                if not matched:
                    raise SettingsError(f"feature {pattern!r} matches no feature store column")
                names += [c for c in matched if c not in names]
            return tuple(names)

        return FeatureList(expand(self.numeric), expand(self.categorical))

    @property
    def names(self) -> tuple[str, ...]:
        return self.numeric + self.categorical


@dataclass(frozen=True)
class ModelSpec:
    name: str
    algorithm: str
    params: dict
    features: FeatureList
    max_rounds: int = 1000
    early_stopping_rounds: int = 50
    calibration: str = "none"  # none | platt | isotonic (ml_assets.modeling.Calibrator)


@dataclass(frozen=True)
class TrackingConfig:
    """`mlflow:` of config/models.yaml: where every candidate is logged as an MLflow run
    (ml_assets.tracking). No `tracking_uri` (the default): nothing is logged and mlflow is
    never imported."""

    tracking_uri: str | None = None  # e.g. http://127.0.0.1:5000, sqlite:///mlflow.db
    experiment: str = "vintage"  # the MLflow experiment of the runs
    registered_model: str = "vintage-pd"  # every candidate a version; alias champion

    @property
    def enabled(self) -> bool:
        return bool(self.tracking_uri)


@dataclass(frozen=True)
class ModelConfig:
    window_months: int
    min_labelled_months: int
    test_fraction: float
    seed: int
    max_training_rows: int | None
    min_auc_gain: float
    min_oot_auc: float
    decision_cutoff: float  # a PD, approval share or bad rate, by cutoff_mode
    approval: str = "auto"  # champion.approval: auto (the gate promotes) | manual (it proposes)
    models: tuple[ModelSpec, ...] = field(default_factory=tuple)
    # the rating master scale: (grade, upper PD bound), bounds increasing, the last 1.0;
    # `load_model_config` requires one (`rating_scale:`), a ModelConfig built in code has one
    # grade unless given its own
    rating_scale: tuple[tuple[str, float], ...] = (("all", 1.0),)
    # reason codes: (feature name or pattern, readable description), first match wins
    reason_descriptions: tuple[tuple[str, str], ...] = ()
    cutoff_mode: str = "pd"  # pd | approval_rate | bad_rate (ml_assets.cutoffs)
    cutoff_bands: int = 20
    # WoE / IV (ml_assets.woe): optimal binning's bin limits and the IV band bounds
    woe_max_bins: int = 10
    woe_min_bin_size: float = 0.05
    iv_bounds: tuple[float, float, float, float] = (0.02, 0.1, 0.3, 0.5)
    tracking: TrackingConfig = TrackingConfig()

    def describe(self, feature: str) -> str:
        """A feature's readable description (`reason_descriptions`), else its name."""
        for pattern, text in self.reason_descriptions:
            if fnmatch.fnmatchcase(feature, pattern):
                return text.replace("{feature}", feature)
        return feature


def _rating_scale(raw, where: str) -> tuple[tuple[str, float], ...]:
    """`rating_scale:` {grade: upper PD bound}, best grade first: a score s falls in the first
    grade whose bound exceeds s (the last bound is 1.0 and takes s = 1)."""
    if not isinstance(raw, dict) or not raw:
        raise SettingsError(f"{where}: give grades and their upper PD bounds, e.g. A: 0.05")
    scale = tuple((str(grade), float(bound)) for grade, bound in raw.items())
    bounds = [bound for _, bound in scale]
    if any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)) or bounds[0] <= 0 \
            or bounds[-1] != 1.0:
        raise SettingsError(f"{where}: upper PD bounds must increase from above 0 to 1.0")
    return scale


def _features(raw: dict, where: str) -> FeatureList:
    if not isinstance(raw, dict) or not (raw.get("numeric") or raw.get("categorical")):
        raise SettingsError(f"{where}: give `numeric` and/or `categorical` feature lists")
    return FeatureList(tuple(raw.get("numeric") or ()), tuple(raw.get("categorical") or ()))


def _tracking(raw, where: str) -> TrackingConfig:
    """`mlflow:` (tracking_uri, experiment, registered_model); VINTAGE_MLFLOW_TRACKING_URI
    overrides `tracking_uri`. A tracking URI with MLflow not installed is refused here, naming
    the extra, rather than when the first candidate is logged."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise SettingsError(f"{where}: give tracking_uri, experiment, registered_model")
    config = TrackingConfig(
        tracking_uri=os.environ.get("VINTAGE_MLFLOW_TRACKING_URI") or raw.get("tracking_uri"),
        experiment=str(raw.get("experiment") or TrackingConfig.experiment),
        registered_model=str(raw.get("registered_model") or TrackingConfig.registered_model))
    if config.enabled and importlib.util.find_spec("mlflow") is None:
        raise SettingsError(f"{where}.tracking_uri is {config.tracking_uri!r} but MLflow is not "
                            "installed: install the extra mlflow (`uv sync --extra mlflow`, or "
                            "`pip install 'vintage-ml[mlflow]'`), or unset tracking_uri")
    return config


def load_model_config(path: Path | None = None) -> ModelConfig:
    """The model configuration of `path` (default: VINTAGE_MODELS, else config/models.yaml),
    read when called (the code location reads it once, in `load_build`). Raises SettingsError
    for an unknown algorithm or calibration, a bad model name, no models, a share or count out
    of range, a missing or unordered rating scale, an unknown cut-off mode, IV bands out of
    order, or an MLflow tracking URI without MLflow installed."""
    path = Path(path or os.environ.get("VINTAGE_MODELS") or CONFIG_DIR / "models.yaml")
    raw = read_yaml(path, f"{path} not found (set by VINTAGE_MODELS, or the project's config "
                          "folder)")
    training, champion = raw.get("training", {}), raw.get("champion", {})
    predictions, woe = raw.get("predictions") or {}, raw.get("woe") or {}
    default_features = _features(raw.get("features", {}), f"{path}: features")
    models = []
    for name, spec in (raw.get("models") or {}).items():
        if not _NAME.match(str(name)):
            raise SettingsError(f"{path}: model name {name!r}: lower-case letters, digits, _")
        if spec.get("algorithm") not in ALGORITHMS:
            raise SettingsError(f"{path}: model {name}: algorithm must be one of {ALGORITHMS}")
        if spec.get("calibration", "none") not in CALIBRATIONS:
            raise SettingsError(f"{path}: model {name}: calibration must be one of "
                                f"{CALIBRATIONS}")
        features = (_features(spec["features"], f"{path}: model {name}")
                    if "features" in spec else default_features)
        models.append(ModelSpec(
            name=name, algorithm=spec["algorithm"], params=dict(spec.get("params") or {}),
            features=features, max_rounds=int(spec.get("max_rounds", 1000)),
            early_stopping_rounds=int(spec.get("early_stopping_rounds", 50)),
            calibration=spec.get("calibration", "none"),
        ))
    if not models:
        raise SettingsError(f"{path}: no models configured")
    config = ModelConfig(
        window_months=int(training.get("window_months", 12)),
        min_labelled_months=int(training.get("min_labelled_months", 6)),
        test_fraction=float(training.get("test_fraction", 0.2)),
        seed=int(training.get("seed", 42)),
        max_training_rows=training.get("max_training_rows"),
        min_auc_gain=float(champion.get("min_auc_gain", 0.005)),
        min_oot_auc=float(champion.get("min_oot_auc", 0.6)),
        decision_cutoff=float(predictions.get("decision_cutoff", 0.5)),
        cutoff_mode=predictions.get("cutoff_mode", "pd"),
        cutoff_bands=int(predictions.get("cutoff_bands", 20)),
        approval=str(champion.get("approval", "auto")),
        models=tuple(models),
        rating_scale=_rating_scale(raw.get("rating_scale"), f"{path}: rating_scale"),
        woe_max_bins=int(woe.get("max_bins", 10)),
        woe_min_bin_size=float(woe.get("min_bin_size", 0.05)),
        iv_bounds=tuple(float(woe.get(k, d)) for k, d in (
            ("iv_weak", 0.02), ("iv_medium", 0.1), ("iv_strong", 0.3), ("iv_suspicious", 0.5))),
        reason_descriptions=tuple((str(k), str(v)) for k, v in
                                  (raw.get("reason_descriptions") or {}).items()),
        tracking=_tracking(raw.get("mlflow"), f"{path}: mlflow"),
    )
    if config.cutoff_mode not in CUTOFF_MODES:
        raise SettingsError(f"{path}: predictions.cutoff_mode must be one of {CUTOFF_MODES}")
    if not 0 <= config.decision_cutoff <= 1 or config.cutoff_bands < 1:
        raise SettingsError(f"{path}: predictions.decision_cutoff must be in [0, 1], "
                            "cutoff_bands at least 1")
    if not 0 < config.iv_bounds[0] < config.iv_bounds[1] < config.iv_bounds[2] \
            < config.iv_bounds[3] or not 0 < config.woe_min_bin_size < 0.5 \
            or config.woe_max_bins < 2:
        raise SettingsError(f"{path}: woe: need 0 < iv_weak < iv_medium < iv_strong < "
                            "iv_suspicious, 0 < min_bin_size < 0.5, max_bins >= 2")
    if config.approval not in APPROVAL_MODES:
        raise SettingsError(f"{path}: champion.approval must be one of {APPROVAL_MODES}, got "
                            f"{config.approval!r}")
    if not 0 < config.test_fraction < 1:
        raise SettingsError(f"{path}: training.test_fraction must be between 0 and 1")
    if not 1 <= config.min_labelled_months <= config.window_months:
        raise SettingsError(f"{path}: training.min_labelled_months must be 1..window_months")
    return config
