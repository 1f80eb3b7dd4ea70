"""MLflow tracking of the candidate models: the optional extra `mlflow` (README, Models: MLflow).

With `mlflow.tracking_uri` set (config/models.yaml, or VINTAGE_MLFLOW_TRACKING_URI), every
candidate ml/model_registry trains is logged as a run of the experiment `mlflow.experiment`:
- params: the model's hyper-parameters as the registry records them (`params`), the training
  window (`training.*`), the label definition (`label.*`), the feature list (`features`,
  `features.categorical`) and the calibration;
- metrics: the registry's `metrics` by split, `<split>_<metric>` for train, test and oot
  (auc, gini, ks, log_loss, brier, default_rate, mean_score, n, defaults), the same floats;
- artifacts: the model store's files of the version under `model/` (LightGBM's model text and
  its JSON sidecar, or the logistic model's JSON): the platform's native, non-executable
  format, loadable with `ml_assets.modeling.load_model`, never a pickle;
- inputs: each Delta table the training read (gold.training_set, gold.label_store,
  gold.feature_store) as a dataset (a DeltaDatasetSource: the table's URI and version) with
  the input tags `delta_version` (always: MLflow's source JSON leaves a version 0 out) and
  `rows`, the rows of the months read at that version;
- tags: `vintage.model_version` (e.g. `logistic-2025-06`), `vintage.trained_month`, digests.
Each run's model is registered as a version of `mlflow.registered_model` (one registered model
for the champion line, so that MLflow's alias `champion`, unique per registered model, mirrors
the platform's one champion); the champion gate moves the alias.

The platform's registry stays the source of truth: the assets call this module after their
tables are published, and an MLflow failure (a server down, a refused request) becomes a
warning in the log and in the asset's metadata, never a failed step. mlflow is imported here
only when tracking is on; HTTP calls are retried MAX_RETRIES times with a REQUEST_TIMEOUT
unless MLflow's own variables (MLFLOW_HTTP_REQUEST_MAX_RETRIES, _TIMEOUT) say otherwise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ml_assets.model_config import TrackingConfig

if TYPE_CHECKING:
    from ml_assets.assets.models import ModelRecord

PARAM_LIMIT = 6000  # characters of an MLflow param value (mlflow.utils.validation)
SPLITS = ("train", "test", "oot")
# retries and seconds of an HTTP call: MLflow's defaults (7, 120) wait minutes on a dead server
MAX_RETRIES, REQUEST_TIMEOUT = 2, 30
VERSION_TAG = "vintage.model_version"


@dataclass(frozen=True)
class InputDataset:
    """A Delta table version a candidate was trained from: the table's name
    (`gold.label_store`), its URI, its Delta version and the rows of the months read."""

    name: str
    uri: str
    version: int
    rows: int


def run_params(record: ModelRecord) -> dict[str, str]:
    """A candidate's MLflow params from its registry record: the hyper-parameters (`params`),
    `training.*` (window, OOT month, training config), `label.*`, the features and the
    calibration method. Values as strings, as MLflow keeps them."""
    config = json.loads(record.training_config)
    params = {
        **json.loads(record.params),
        "model_name": record.model_name, "algorithm": record.algorithm,
        "training.trained_month": f"{record.trained_month:%Y-%m}",
        "training.window_first": f"{record.window_first:%Y-%m}",
        "training.window_last": f"{record.window_last:%Y-%m}",
        "training.oot_month": f"{record.oot_month:%Y-%m}",
        **{f"training.{key}": value for key, value in config.items() if key != "label_mob"},
        "label.definition": record.label_def, "label.mob": config["label_mob"],
        "features": _listed(record.features),
        "features.categorical": _listed(record.categorical_features),
        "features.count": len(record.features),
        "calibration": json.loads(record.calibration)["method"],
    }
    return {key: str(value) for key, value in params.items()}


def _listed(names: Sequence[str]) -> str:
    """Names comma-separated; a list longer than an MLflow param holds is named by its count
    (the artifact model/model.json lists every feature)."""
    text = ",".join(names)
    return text if len(text) <= PARAM_LIMIT else f"{len(names)} features: see model/model.json"


def run_metrics(record: ModelRecord) -> dict[str, float]:
    """The registry's metrics of every split (`metrics`, JSON {split: metrics.summary}) as
    `<split>_<metric>`: train, test and oot (out-of-time). A metric the registry has no value
    for (AUC of one class) is left out."""
    summary = json.loads(record.metrics)
    return {f"{split}_{name}": float(value) for split in SPLITS
            for name, value in summary[split].items() if value is not None}


def run_tags(record: ModelRecord) -> dict[str, str]:
    """The platform's names of a candidate: its model version and month, digests, checks."""
    return {VERSION_TAG: record.model_version,
            "vintage.trained_month": f"{record.trained_month:%Y-%m}",
            "vintage.model_name": record.model_name,
            "vintage.artifact_digest": record.artifact_digest,
            "vintage.artifact_path": record.artifact_path,
            "vintage.data_fingerprint": record.data_fingerprint,
            "vintage.feature_schema_hash": record.feature_schema_hash,
            "vintage.code_version": record.code_version,
            "vintage.checks_passed": str(record.checks_passed).lower(),
            "vintage.input_versions": record.input_versions}


class Tracker:
    """An MLflow client for the tracking config: logs candidates, moves the champion alias.
    Every method raises what MLflow raises (MlflowException, a requests error)."""

    def __init__(self, config: TrackingConfig):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(MAX_RETRIES))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(REQUEST_TIMEOUT))
        # a run's console is the platform's progress: no "View run" link per candidate (to
        # a UI the extra does not serve; the metadata names each run) nor MLflow's INFO lines
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        from mlflow import MlflowClient

        if "MLFLOW_LOGGING_LEVEL" not in os.environ:  # set, it is the user's choice
            logging.getLogger("mlflow").setLevel(logging.WARNING)

        self.config = config
        self.client = MlflowClient(tracking_uri=config.tracking_uri,
                                   registry_uri=config.tracking_uri)
        self._experiment_id: str | None = None

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.config.experiment)
            self._experiment_id = (found.experiment_id if found else
                                   self.client.create_experiment(self.config.experiment))
        return self._experiment_id

    def log_candidate(self, record: ModelRecord, files: Mapping[str, bytes],
                      inputs: Sequence[InputDataset]) -> str:
        """Log one candidate as a run (params, metrics, its artifact `files` under `model/`,
        its `inputs`) and register it as a version of the registered model; returns
        `<run id> (model version N)`. A run that fails half way is marked FAILED."""
        from mlflow.data.delta_dataset_source import DeltaDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag, Metric, Param

        run = self.client.create_run(self.experiment_id, run_name=record.model_version,
                                     tags=run_tags(record))
        run_id = run.info.run_id
        try:
            at = int(record.trained_at.timestamp() * 1000)
            self.client.log_batch(
                run_id, params=[Param(k, v) for k, v in run_params(record).items()],
                metrics=[Metric(k, v, at, 0) for k, v in run_metrics(record).items()])
            with tempfile.TemporaryDirectory(prefix="mlflow-model-") as folder:
                for name, data in files.items():
                    (Path(folder) / name).write_bytes(data)
                self.client.log_artifacts(run_id, folder, "model")
            # a Dataset becomes the client's DatasetInput as mlflow.log_input makes it
            self.client.log_inputs(run_id, datasets=[DatasetInput(
                MetaDataset(DeltaDatasetSource(path=item.uri, delta_table_version=item.version),
                            name=item.name)._to_mlflow_entity(),
                tags=[InputTag("mlflow.data.context", "training"),
                      InputTag("delta_version", str(item.version)),
                      InputTag("rows", str(item.rows))]) for item in inputs])
            version = self._register(record, run_id)
        except BaseException:
            with contextlib.suppress(Exception):  # the server may be what failed
                self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id)
        return f"{run_id} (model version {version})"

    def _register(self, record: ModelRecord, run_id: str) -> str:
        from mlflow.exceptions import MlflowException

        name = self.config.registered_model
        try:
            self.client.get_registered_model(name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            self.client.create_registered_model(
                name, description="Vintage's default models (PD): every candidate of the "
                                  "model registry; the alias champion is the platform's.")
        version = self.client.create_model_version(
            name, source=f"runs:/{run_id}/model", run_id=run_id,
            tags={VERSION_TAG: record.model_version,
                  "vintage.trained_month": f"{record.trained_month:%Y-%m}"})
        return version.version

    def set_alias(self, alias: str, model_version: str) -> str:
        """Point `alias` (the champion's) at the newest MLflow version of the platform's
        `model_version`; says what it did (nothing when that version was trained before
        tracking was on)."""
        name = self.config.registered_model
        found = self.client.search_model_versions(
            f"name = '{name}' and tags.`{VERSION_TAG}` = '{model_version}'")
        if not found:
            return f"{model_version} has no version in {name} (trained before tracking was on)"
        newest = max(found, key=lambda v: int(v.version))
        self.client.set_registered_model_alias(name, alias, newest.version)
        return f"{name} version {newest.version} ({model_version}) has the alias {alias}"


def tracked(config: TrackingConfig, action: Callable[[Tracker], str],
            warn: Callable[[str], None] | None = None) -> dict[str, str]:
    """Run `action` with a Tracker of `config` and return the asset metadata saying what it
    did ({"mlflow": ...}); any error (the server down, a refused request, MLflow missing) is
    caught: the metadata, and `warn` (the step's log), say what failed and that the
    platform's tables are published all the same."""
    try:
        return {"mlflow": f"{config.tracking_uri}: {action(Tracker(config))}"}
    except Exception as error:  # noqa: BLE001 - MLflow never fails the platform's registry
        text = (f"MLflow tracking at {config.tracking_uri} failed, the platform's tables are "
                f"published all the same: {type(error).__name__}: {error}")
        if warn:
            warn(text)
        return {"mlflow": f"WARNING {text}"}
