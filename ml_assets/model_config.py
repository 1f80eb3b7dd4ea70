"""The model configuration, `config/models.yaml` (or the file VINTAGE_MODELS names)."""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ml_assets.settings import CONFIG_DIR, SettingsError, read_yaml

ALGORITHMS = ("lightgbm", "logistic_regression")
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


@dataclass(frozen=True)
class ModelConfig:
    window_months: int
    min_labelled_months: int
    test_fraction: float
    seed: int
    max_training_rows: int | None
    min_auc_gain: float
    min_oot_auc: float
    decision_cutoff: float
    models: tuple[ModelSpec, ...] = field(default_factory=tuple)


def _features(raw: dict, where: str) -> FeatureList:
    if not isinstance(raw, dict) or not (raw.get("numeric") or raw.get("categorical")):
        raise SettingsError(f"{where}: give `numeric` and/or `categorical` feature lists")
    return FeatureList(tuple(raw.get("numeric") or ()), tuple(raw.get("categorical") or ()))


def load_model_config(path: Path | None = None) -> ModelConfig:
    """The model configuration of `path` (default: VINTAGE_MODELS, else config/models.yaml),
    read when called (the code location reads it once, in `load_build`). Raises SettingsError
    for an unknown algorithm, a bad model name, no models, or a share or count out of range."""
    path = Path(path or os.environ.get("VINTAGE_MODELS") or CONFIG_DIR / "models.yaml")
    raw = read_yaml(path, f"{path} not found (set by VINTAGE_MODELS, or the project's config "
                          "folder)")
    training, champion = raw.get("training", {}), raw.get("champion", {})
    default_features = _features(raw.get("features", {}), f"{path}: features")
    models = []
    for name, spec in (raw.get("models") or {}).items():
        if not _NAME.match(str(name)):
            raise SettingsError(f"{path}: model name {name!r}: lower-case letters, digits, _")
        if spec.get("algorithm") not in ALGORITHMS:
            raise SettingsError(f"{path}: model {name}: algorithm must be one of {ALGORITHMS}")
        features = (_features(spec["features"], f"{path}: model {name}")
                    if "features" in spec else default_features)
        models.append(ModelSpec(
            name=name, algorithm=spec["algorithm"], params=dict(spec.get("params") or {}),
            features=features, max_rounds=int(spec.get("max_rounds", 1000)),
            early_stopping_rounds=int(spec.get("early_stopping_rounds", 50)),
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
        decision_cutoff=float(raw.get("predictions", {}).get("decision_cutoff", 0.5)),
        models=tuple(models),
    )
    if not 0 < config.test_fraction < 1:
        raise SettingsError(f"{path}: training.test_fraction must be between 0 and 1")
    if not 1 <= config.min_labelled_months <= config.window_months:
        raise SettingsError(f"{path}: training.min_labelled_months must be 1..window_months")
    return config
