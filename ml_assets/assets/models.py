"""ML: the training set, the candidate models (one registry asset), the champion gate and the
monthly predictions, as table specs.

Time rules (DESIGN section 3), all through partition mappings:
- training month T learns from labels observed in T-window..T-1 (never T or later), with the
  features of their application months;
- the champion of month M was trained in M or before, so predictions for M never use a label
  the model could not have seen; the gate at T compares candidates with the champion of T-1
  on T's out-of-time month.

Every record the ML tables hold is a frozen dataclass below: its fields are the table's columns
and give the Arrow schema (`arrow_schema`), so a column is declared in one place. Training a
candidate (`train_candidate`) and scoring a month (`predictions_compute`) are the functions the
assets run and `vintage model reproduce` / `vintage predictions reproduce` run again
(`ml_assets/reproduce.py`).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from ml_assets import metrics
from ml_assets.assets.monitoring import report_link, report_store, validation_file
from ml_assets.cutoffs import CutoffOutcome, Reference
from ml_assets.metadata import markdown_table
from ml_assets.model_config import ModelConfig, ModelSpec
from ml_assets.modeling import Model, feature_schema_hash, fingerprint, train_model
from ml_assets.months import folder_label
from ml_assets.partitions import upstream_months, window_pairs
from ml_assets.plots import bar_chart
from ml_assets.rating import grade_of
from ml_assets.reasons import reason_codes
from ml_assets.settings import source_of_feature
from ml_assets.signoff import (
    APPROVAL_CONFIG,
    ApprovalRecord,
    SignOffError,
    SwapSetRecord,
    approval_problem,
    challenged_version,
    sign_off,
    swap_sets,
    version_month,
)
from ml_assets.spec import (
    RESULT,
    WARN,
    Build,
    Check,
    Input,
    Step,
    StepFailed,
    TableSpec,
    asset_key,
)
from ml_assets.tables import (
    FEATURE_STORE,
    LABEL_STORE,
    MODEL_ALIASES,
    MODEL_APPROVALS,
    MODEL_REGISTRY,
    PREDICTIONS,
    SCORE_REFERENCE,
    SOURCE_COVERAGE,
    SWAP_SETS,
    TRAINING_SET,
)
from ml_assets.tracking import InputDataset, tracked
from resources.lake import MONTHS_KEY, Lake, LakeError, Table
from resources.model_store import ModelStore, code_version
from resources.storage import FileStore

ALIAS = "champion"
CHAMPION = asset_key(MODEL_ALIASES)  # the champion gate's asset, ml/model_aliases
TOP_FEATURES = 15
# the training set's columns that are not features
SPLIT_COLUMNS = ("training_month", "loan_id", "customer_id", "application_month",
                 "observation_month", "label", "label_def", "split")


# -- records: one frozen dataclass per table row, whose fields give the Arrow schema ----------

_ARROW_TYPES = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_(),
                date: pa.date32(), datetime: pa.timestamp("us")}


def _arrow_type(hint) -> pa.DataType:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # `X | None`: Arrow columns are nullable
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _arrow_type(inner)
    if origin is Annotated:  # `Annotated[int, pa.int8()]`: a narrower Arrow type
        return typing.get_args(hint)[1]
    if origin is list:
        return pa.list_(_arrow_type(typing.get_args(hint)[0]))
    return _ARROW_TYPES[hint]


def arrow_schema(record_type: type) -> pa.Schema:
    """The Arrow schema of a record dataclass: a column per field, in field order; `str`,
    `int` (int64), `float`, `bool`, `date` (date32), `datetime` (timestamp[us]), `list[...]`,
    `X | None`, and `Annotated[X, <arrow type>]` for another width."""
    hints = typing.get_type_hints(record_type, include_extras=True)
    return pa.schema([pa.field(f.name, _arrow_type(hints[f.name]))
                      for f in dataclasses.fields(record_type)])


def records_table(record_type: type, records: Sequence) -> pa.Table:
    """Records (instances of `record_type`) as an Arrow table of its schema."""
    names = [f.name for f in dataclasses.fields(record_type)]
    return pa.Table.from_pylist([{n: getattr(r, n) for n in names} for r in records],
                                schema=arrow_schema(record_type))


def frame_table(record_type: type, frame: pd.DataFrame) -> pa.Table:
    """A frame with a column per field of `record_type` as an Arrow table of its schema."""
    names = [f.name for f in dataclasses.fields(record_type)]
    return pa.Table.from_pandas(frame[names], schema=arrow_schema(record_type),
                                preserve_index=False)


def read_records(con: duckdb.DuckDBPyConnection, query: str, record_type: type,
                 params: Mapping | None = None) -> list:
    """The rows of `query` as `record_type` records (columns it does not declare are left)."""
    result = con.execute(query, dict(params or {}))
    columns = [d[0] for d in result.description]
    names = {f.name for f in dataclasses.fields(record_type)}
    return [record_type(**{c: v for c, v in zip(columns, row, strict=True) if c in names})
            for row in result.fetchall()]


@dataclass(frozen=True)
class ModelRecord:
    """A row of ml.model_registry: one trained model version."""

    model_version: str  # <name>-YYYY-MM
    model_name: str
    algorithm: str
    trained_month: date
    window_first: date  # first and last label (observation) month of the training window
    window_last: date
    oot_month: date
    label_def: str
    features: list[str]  # numeric, then categorical
    categorical_features: list[str]
    importances: str  # JSON {feature: importance}, most important first
    feature_schema_hash: str
    data_fingerprint: str  # hash of the training rows (ml_assets.modeling.fingerprint)
    params: str  # JSON: the model's parameters, max_rounds, early_stopping_rounds
    calibration: str  # JSON: {"method": "none"}, or platt's a, b or isotonic's x, y thresholds
    n_train: int
    n_test: int
    n_oot: int
    train_auc: float | None
    test_auc: float | None
    oot_auc: float | None
    oot_gini: float | None
    oot_ks: float | None
    oot_log_loss: float | None
    oot_brier: float | None
    metrics: str  # JSON {split: metrics.summary}
    checks_passed: bool
    checks: str  # JSON {check: passed}
    artifact_path: str
    artifact_digest: str  # resources.model_store.artifact_digest of the artifacts
    code_version: str
    trained_at: datetime
    input_versions: str  # JSON {table: Delta version}: the training set and what it read
    training_config: str  # JSON TrainingConfig: how to build the training set and train again


@dataclass(frozen=True)
class ReferenceScore:
    """A row of ml.score_reference: a model version's score of one out-of-time loan."""

    model_version: str
    trained_month: date
    loan_id: str
    observation_month: date
    label: Annotated[int, pa.int8()]
    score: float


@dataclass(frozen=True)
class AliasRecord:
    """A row of ml.model_aliases: the champion of a month, and why it moved or stayed."""

    alias: str
    month: date
    model_version: str | None
    model_name: str | None
    trained_month: date | None
    decision: str  # first | promoted | kept | none
    reason: str
    previous_version: str | None
    challenger_version: str | None
    challenger_oot_auc: float | None
    champion_oot_auc: float | None  # the previous champion's AUC on this month's OOT set
    min_auc_gain: float
    oot_month: date | None
    decided_at: datetime
    # the sign-off (ml_assets.signoff): approved | proposed | rejected, None when nothing was
    # proposed; who decided (`gate` for an automatic promotion), why, and when
    status: str | None = None
    signed_off_by: str | None = None
    sign_off_reason: str | None = None
    signed_off_at: datetime | None = None


@dataclass(frozen=True)
class Prediction:
    """A row of gold.predictions: a loan of the application month scored by its champion."""

    loan_id: str
    customer_id: str
    application_month: date
    model_version: str
    score: float  # probability of default, 0..1
    grade: str  # the score's grade on the rating master scale (config/models.yaml rating_scale)
    decision: str  # approve | decline | refer
    decision_cutoff: float  # the month's PD cut-off: decline at or above (ml_assets.cutoffs)
    reason_1: str | None  # the features that raise the PD most (ml_assets.reasons), best first
    reason_2: str | None
    reason_3: str | None
    reason_text: str | None  # their descriptions (config/models.yaml reason_descriptions)
    missing_sources: str | None  # comma-separated sources the loan has no data from
    coverage_status: str  # ok | warn | error, for the sources the model uses
    coverage_issue: str | None


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def as_dates(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """DuckDB hands DATE columns to pandas as timestamps unless asked (`df(date_as_object=
    True)`); the platform compares dates."""
    for column in columns:
        frame[column] = pd.to_datetime(frame[column]).dt.date
    return frame


# -- training set -----------------------------------------------------------------------------


def training_set_compute(step: Step) -> dict[Table, str]:
    """gold.training_set (sql/gold/training_set.sql): each training month's window of labels
    with their application features, split train/test/oot; a month with fewer labelled months
    than training.min_labelled_months gets no rows, and its metadata says why. Only the target
    label definition (label:) is learned from."""
    models, con = step.models, step.con
    con.register("training_window", window_pairs(step.rules.training_labels, step.months,
                                                 step.partitions))
    step.sql("gold/training_set", {"seed": models.seed, "test_fraction": models.test_fraction,
                                   "label_def": step.config.label.name})
    coverage = {row[0]: row[1:] for row in con.execute(
        f"SELECT training_month, max(labelled_months), min(observation_month), "
        f"max(observation_month), count_if(split = 'train'), count_if(split = 'test'), "
        f"count_if(split = 'oot'), avg(label) FROM {RESULT} GROUP BY ALL").fetchall()}
    con.execute(f"CREATE OR REPLACE TEMP TABLE training_rows AS SELECT * EXCLUDE "
                f"(labelled_months) FROM {RESULT} WHERE labelled_months >= $minimum",
                {"minimum": models.min_labelled_months})
    for month in step.months:
        labelled, first, last, n_train, n_test, n_oot, rate = coverage.get(
            month, (0, None, None, 0, 0, 0, None))
        trainable = labelled >= models.min_labelled_months
        step.metadata(month, {
            "trainable": trainable,
            "labelled_months": int(labelled),
            "window": f"{folder_label(first)}..{folder_label(last)}" if first else "none",
            "reason": (f"{labelled} labelled months in the window" if trainable else
                       f"nothing to train: {labelled} labelled months in the window, "
                       f"{models.min_labelled_months} needed"),
            **({"rows_train": n_train, "rows_test": n_test, "rows_oot": n_oot,
                "label_rate": float(rate)} if trainable else {}),
        })
    return {TRAINING_SET: "SELECT * FROM training_rows"}


def training_frame(con: duckdb.DuckDBPyConnection, source: str, month: date,
                   split: str | None = None) -> pd.DataFrame:
    """Training month `month`'s rows of `source` (a view or table of `con` with the training
    set's columns), of one `split` or all, ordered by loan id, dates as `date`s."""
    query = f"SELECT * FROM {source} WHERE training_month = $month"
    params: dict = {"month": month}
    if split:
        query += " AND split = $split"
        params["split"] = split
    return con.execute(query + " ORDER BY loan_id", params).df(date_as_object=True)


# -- lineage ----------------------------------------------------------------------------------


def month_commit(lake: Lake, table: Table, month: date, version: int | None = None) -> int:
    """The version of the commit that last published `month` of `table` at or before
    `version` (default: the current one): whose rows a reader of that version sees. A
    LakeError if no commit up to `version` published the month."""
    delta = lake.delta(table)
    if delta is None:
        raise LakeError(f"{table.qualified_name} has no commit")
    for commit in sorted(delta.history(), key=lambda c: -c["version"]):
        if version is not None and commit["version"] > version:
            continue
        if month.isoformat() in json.loads(commit.get(MONTHS_KEY) or "[]"):
            return commit["version"]
    raise LakeError(f"{table.qualified_name} has no published month {folder_label(month)} "
                    f"at version {version}")


def training_lineage(lake: Lake, training_set_version: int, month: date) -> dict[str, int]:
    """{table: Delta version} of what training month `month` was built from: the training set
    at `training_set_version`, and the label and feature store versions the commit that
    published that month read."""
    publishing = month_commit(lake, TRAINING_SET, month, training_set_version)
    read = lake.commit_metadata(TRAINING_SET, publishing)["input_versions"]
    return dict(sorted({TRAINING_SET.qualified_name: training_set_version, **read}.items()))


# -- candidate models -------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingConfig:
    """What a training set and its models depend on besides the data (config/models.yaml's
    `training`, and the label's months on book): recorded with every model version, so that
    it can be built and trained again the same way."""

    window_months: int
    min_labelled_months: int
    test_fraction: float
    seed: int
    max_training_rows: int | None
    label_mob: int

    @classmethod
    def of(cls, build: Build) -> TrainingConfig:
        models = build.models
        return cls(window_months=models.window_months,
                   min_labelled_months=models.min_labelled_months,
                   test_fraction=models.test_fraction, seed=models.seed,
                   max_training_rows=models.max_training_rows, label_mob=build.config.label.mob)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainingConfig:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Candidate:
    """A trained candidate: its registry record, its out-of-time scores (ReferenceScore rows),
    its check outcomes {check: (passed, details)} and the model."""

    record: ModelRecord
    reference: pa.Table
    checks: dict[str, tuple[bool, dict]]
    model: Model


def _sample(frame: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    """At most `limit` rows, chosen by a hash of the loan id: the same rows on every run."""
    if not limit or len(frame) <= limit:
        return frame
    order = np.argsort(pd.util.hash_array(frame["loan_id"].to_numpy()), kind="stable")
    return frame.iloc[np.sort(order[:limit])]


def model_params(model: ModelSpec) -> str:
    """The registry's `params`: the model's parameters, max_rounds and early_stopping_rounds."""
    return json.dumps({**model.params, "max_rounds": model.max_rounds,
                       "early_stopping_rounds": model.early_stopping_rounds}, sort_keys=True)


def train_candidate(model: ModelSpec, month: date, frame: pd.DataFrame, store: ModelStore,
                    config: TrainingConfig, input_versions: Mapping[str, int],
                    min_oot_auc: float) -> Candidate:
    """Train `model` on training month `month`'s `frame` (every split of gold.training_set's
    month, as `training_frame` reads it), save its artifacts in `store` as version
    `<name>-YYYY-MM` (replacing that version's folder), and score its out-of-time split.
    `input_versions` (table -> Delta version) and `config` go into the record as they are;
    `min_oot_auc` is the floor of the `oot_auc_floor` check. Deterministic given the frame,
    the model and the config: training the same month again gives byte-identical artifacts.
    Raises SettingsError when a configured feature matches no column of the frame."""
    features = model.features.resolve([c for c in frame.columns if c not in SPLIT_COLUMNS])
    parts = {split: frame[frame["split"] == split] for split in ("train", "test", "oot")}
    parts["train"] = _sample(parts["train"], config.max_training_rows)
    fitted = train_model(model, features, parts["train"], parts["test"], config.seed)
    scores = {split: fitted.predict(part) for split, part in parts.items()}
    summary = {split: metrics.summary(part["label"], scores[split])
               for split, part in parts.items()}
    version = f"{model.name}-{month:%Y-%m}"
    artifact_uri = store.save(fitted, model.name, version)
    oot_scores = scores["oot"]
    checks = {
        "scores_valid": (bool(np.isfinite(oot_scores).all()
                              and ((oot_scores >= 0) & (oot_scores <= 1)).all()),
                         {"min_score": float(oot_scores.min()),
                          "max_score": float(oot_scores.max())}),
        "oot_auc_floor": ((summary["oot"]["auc"] or 0) >= min_oot_auc,
                          {"oot_auc": summary["oot"]["auc"], "floor": min_oot_auc}),
        "past_labels_only": (bool((frame["observation_month"] < month).all()),
                             {"latest_label_month": str(frame["observation_month"].max())}),
    }
    record = ModelRecord(
        model_version=version, model_name=model.name, algorithm=model.algorithm,
        trained_month=month, window_first=frame["observation_month"].min(),
        window_last=frame["observation_month"].max(),
        oot_month=parts["oot"]["observation_month"].max(),
        label_def=frame["label_def"].iloc[0], features=list(features.names),
        categorical_features=list(features.categorical),
        importances=json.dumps(dict(sorted(fitted.importances().items(),
                                           key=lambda kv: -kv[1]))),
        feature_schema_hash=feature_schema_hash(features),
        data_fingerprint=fingerprint(frame[[*SPLIT_COLUMNS[1:], *features.names]]),
        params=model_params(model),
        calibration=json.dumps(fitted.calibrator.to_dict() if fitted.calibrator
                               else {"method": "none"}, sort_keys=True),
        n_train=len(parts["train"]), n_test=len(parts["test"]), n_oot=len(parts["oot"]),
        train_auc=summary["train"]["auc"], test_auc=summary["test"]["auc"],
        oot_auc=summary["oot"]["auc"], oot_gini=summary["oot"]["gini"],
        oot_ks=summary["oot"]["ks"], oot_log_loss=summary["oot"]["log_loss"],
        oot_brier=summary["oot"]["brier"], metrics=json.dumps(summary, sort_keys=True),
        checks_passed=all(passed for passed, _ in checks.values()),
        checks=json.dumps({n: passed for n, (passed, _) in checks.items()}, sort_keys=True),
        artifact_path=artifact_uri, artifact_digest=store.digest(model.name, version),
        code_version=code_version(), trained_at=_now(),
        input_versions=json.dumps(dict(input_versions), sort_keys=True),
        training_config=config.to_json(),
    )
    reference = frame_table(ReferenceScore, pd.DataFrame({
        "model_version": version, "trained_month": month,
        "loan_id": parts["oot"]["loan_id"].to_numpy(),
        "observation_month": parts["oot"]["observation_month"].to_numpy(),
        "label": parts["oot"]["label"].to_numpy(), "score": oot_scores,
    }))
    return Candidate(record, reference, checks, fitted)


MODEL_CHECKS = {
    "scores_valid": "Every candidate's out-of-time scores are finite probabilities in [0, 1]",
    "oot_auc_floor": "Every candidate's out-of-time AUC at least {floor} (champion.min_oot_auc); "
                     "a candidate below it cannot be champion",
    "past_labels_only": "Every training row's label was observed before the training month",
}


def _record_model_checks(step: Step, month: date, candidates: Sequence[Candidate]) -> None:
    """One evaluation per check and month, over every candidate of the month, naming each."""
    for name in MODEL_CHECKS:
        outcomes = {c.record.model_version: c.checks[name] for c in candidates}
        failed = [version for version, (passed, _) in outcomes.items() if not passed]
        passed = [version for version in outcomes if version not in failed]
        step.check(name, month, not failed, {
            version: dg.MetadataValue.json({"passed": ok, **details})
            for version, (ok, details) in outcomes.items()},
            description="; ".join(part for part in (
                f"failed: {', '.join(failed)}" if failed else "",
                f"passed: {', '.join(passed)}" if passed else "") if part))


def _model_metadata(record: ModelRecord, model: Model, reports: FileStore) -> dict:
    """A candidate's metrics table, top features (table and chart), artifact and the link to
    its validation report (written by ml/validation_reports into `reports`), keyed by its
    model name."""
    summary = json.loads(record.metrics)
    names = ["auc", "gini", "ks", "log_loss", "brier", "n", "default_rate"]
    rows = [[split, *[summary[split][m] for m in names]] for split in ("train", "test", "oot")]
    importances = dict(sorted(model.importances().items(), key=lambda kv: -kv[1])[:TOP_FEATURES])
    prefix = record.model_name
    return {
        f"{prefix}_metrics": dg.MetadataValue.md(markdown_table(["split", *names], rows)),
        f"{prefix}_top_features": dg.MetadataValue.md(markdown_table(
            ["feature", "importance"], [[k, v] for k, v in importances.items()])),
        f"{prefix}_importance_chart": dg.MetadataValue.md(bar_chart(
            importances, f"{record.model_version}: top features", "importance")),
        f"{prefix}_artifact": dg.MetadataValue.path(record.artifact_path),
        f"{prefix}_validation_report": dg.MetadataValue.url(report_link(
            reports.uri_of(validation_file(record.model_version)))),
    }


def _registry_metadata(candidates: Sequence[Candidate], reports: FileStore) -> dict:
    first = candidates[0].record
    table = markdown_table(
        ["model_version", "algorithm", "oot_auc", "oot_gini", "oot_ks", "checks_passed",
         "data_fingerprint", "artifact_digest"],
        [[c.record.model_version, c.record.algorithm, c.record.oot_auc, c.record.oot_gini,
          c.record.oot_ks, c.record.checks_passed, c.record.data_fingerprint,
          c.record.artifact_digest] for c in candidates])
    metadata = {
        "trained": True,
        "model_versions": ", ".join(c.record.model_version for c in candidates),
        "training_window": f"{folder_label(first.window_first)}.."
                           f"{folder_label(first.window_last)} "
                           f"(OOT {folder_label(first.oot_month)})",
        "candidates": dg.MetadataValue.md(table),
        "training_lineage": dg.MetadataValue.json(json.loads(first.input_versions)),
    }
    for candidate in candidates:
        metadata.update(_model_metadata(candidate.record, candidate.model, reports))
    return metadata


def training_inputs(step: Step, record: ModelRecord) -> list[InputDataset]:
    """The Delta tables candidate `record` was trained from, at the versions its record names
    (`input_versions`): its training set month, and the label and feature store months that
    month was built from (the training partition mappings), with their rows at those versions
    (the Delta log's statistics)."""
    versions = json.loads(record.input_versions)
    read = ((TRAINING_SET, None), (LABEL_STORE, step.rules.training_labels),
            (FEATURE_STORE, step.rules.training_features))
    return [InputDataset(
        table.qualified_name, step.lake.table_uri(table), versions[table.qualified_name],
        sum(step.lake.month_rows(table, month, versions[table.qualified_name]) for month in
            upstream_months(mapping, [record.trained_month], step.partitions)))
        for table, mapping in read]


def _warn(step: Step):
    return step.context.log.warning if step.context else None


def track_candidates(step: Step, records: Sequence[ModelRecord]) -> dict:
    """Log the step's published candidates to MLflow (ml_assets.tracking): a run each, with
    the model store's artifacts and the training inputs; the asset's `mlflow` metadata."""
    store: ModelStore = step.resources["model_store"]

    def log(tracker) -> str:
        return "; ".join(
            f"{r.model_version} run " + tracker.log_candidate(
                r, store.files(r.model_name, r.model_version), training_inputs(step, r))
            for r in records)

    return tracked(step.models.tracking, log, _warn(step))


def registry_compute(step: Step) -> dict[Table, str]:
    """ml.model_registry and ml.score_reference: every candidate of config/models.yaml trained
    on each month's training set, its artifacts saved in the model store; one registry record
    per candidate and trainable month, with the Delta versions its training set read."""
    store: ModelStore = step.resources["model_store"]
    config = TrainingConfig.of(step.build)
    read_version = step.read_versions[TRAINING_SET.qualified_name]
    records, references = [], []
    for month in step.months:
        frame = training_frame(step.con, "training_set", month)
        if frame.empty:
            step.metadata(month, {"trained": False, "reason": "no training rows this month: too "
                                  "few labelled months in its window (see gold/training_set)"})
            for name in MODEL_CHECKS:
                step.check(name, month, True, {"trained": False},
                           description="nothing trained this month")
            continue
        lineage = training_lineage(step.lake, read_version, month)
        candidates = [train_candidate(model, month, frame, store, config, lineage,
                                      step.models.min_oot_auc)
                      for model in step.models.models]
        _record_model_checks(step, month, candidates)
        step.metadata(month, _registry_metadata(candidates, report_store(step.lake)))
        records += [c.record for c in candidates]
        references += [c.reference for c in candidates]
    if step.models.tracking.enabled and records:
        step.after_publish.append(lambda _versions: track_candidates(step, records))
    step.con.register("registry_rows", records_table(ModelRecord, records))
    step.con.register("reference_rows", pa.concat_tables(references) if references
                      else arrow_schema(ReferenceScore).empty_table())
    return {MODEL_REGISTRY: "SELECT * FROM registry_rows",
            SCORE_REFERENCE: "SELECT * FROM reference_rows"}


# -- champion gate ----------------------------------------------------------------------------


def decide(month: date, candidates: Sequence[ModelRecord], previous: AliasRecord | None,
           champion_auc_on_oot: float | None, min_auc_gain: float,
           decided_at: datetime | None = None) -> AliasRecord:
    """The gate: the best candidate that passed its checks (highest OOT AUC, then version)
    replaces the champion only if its OOT AUC beats the champion's on the same OOT month by
    `min_auc_gain`; the first model becomes champion. `previous` is last month's alias
    (None before the first month), `candidates` this month's registry records,
    `champion_auc_on_oot` the previous champion's AUC on this month's OOT set (None when it
    could not be measured)."""
    incumbent = previous if previous and previous.model_version else None
    passing = [c for c in candidates if c.checks_passed]
    best = max(passing, key=lambda c: (c.oot_auc, c.model_version), default=None)
    chosen: ModelRecord | AliasRecord | None
    if best is None:
        chosen = incumbent
        decision = "kept" if incumbent else "none"
        reason = ("no candidate trained this month" if not candidates else
                  "no candidate passed its checks: " + "; ".join(
                      f"{c.model_version} {c.checks}" for c in candidates))
    elif incumbent is None:
        chosen, decision = best, "first"
        reason = f"first champion: {best.model_version}, OOT AUC {best.oot_auc:.4f}"
    elif champion_auc_on_oot is None:
        chosen, decision = incumbent, "kept"
        reason = "the champion could not be scored on this month's OOT set (one class only)"
    elif best.oot_auc >= champion_auc_on_oot + min_auc_gain:
        chosen, decision = best, "promoted"
        reason = (f"{best.model_version} OOT AUC {best.oot_auc:.4f} beats champion "
                  f"{incumbent.model_version} {champion_auc_on_oot:.4f} by "
                  f"{best.oot_auc - champion_auc_on_oot:.4f} >= {min_auc_gain}")
    else:
        chosen, decision = incumbent, "kept"
        reason = (f"challenger {best.model_version} OOT AUC {best.oot_auc:.4f} does not "
                  f"beat champion {incumbent.model_version} {champion_auc_on_oot:.4f} by "
                  f"{min_auc_gain}")
    return AliasRecord(
        alias=ALIAS, month=month,
        model_version=chosen.model_version if chosen else None,
        model_name=chosen.model_name if chosen else None,
        trained_month=chosen.trained_month if chosen else None,
        decision=decision, reason=reason,
        previous_version=incumbent.model_version if incumbent else None,
        challenger_version=best.model_version if best else None,
        challenger_oot_auc=best.oot_auc if best else None,
        champion_oot_auc=champion_auc_on_oot, min_auc_gain=min_auc_gain,
        oot_month=best.oot_month if best else None, decided_at=decided_at or _now())


def _published_alias(step: Step) -> AliasRecord | None:
    """The decision of the month before the step's first month, from ml.model_aliases (None
    before the first partition). That month must be published: the gate goes month by month."""
    before = upstream_months(step.rules.previous, step.months[:1], step.partitions)
    if not before:
        return None
    try:
        step.read("previous_aliases", before)
    except LakeError as error:
        raise LakeError(f"the champion gate goes month by month: {error}") from None
    found = read_records(step.con, "SELECT * FROM previous_aliases WHERE alias = $alias",
                         AliasRecord, {"alias": ALIAS})
    return found[0] if found else None


def current_champion(lake: Lake, version: int | None = None) -> AliasRecord | None:
    """The decision of the latest month of ml.model_aliases at `version` (default: the
    current one), whose model_version is the platform's current approved champion; None
    before the gate's first month."""
    if lake.version(MODEL_ALIASES) is None:
        return None
    with duckdb.connect() as con:
        lake.read(con, "model_aliases", MODEL_ALIASES, None, version)
        found = read_records(con, "SELECT * FROM model_aliases WHERE alias = $alias "
                             "ORDER BY month DESC LIMIT 1", AliasRecord, {"alias": ALIAS})
    return found[0] if found else None


def track_champion(step: Step, aliases_version: int) -> dict:
    """Move MLflow's alias champion to the platform's current champion, as the gate just
    published it (ml.model_aliases at `aliases_version`); the asset's `mlflow` metadata."""
    def move(tracker) -> str:
        champion = current_champion(step.lake, aliases_version)
        if champion is None or champion.model_version is None:
            return "no approved champion yet: the alias is left as it is"
        return tracker.set_alias(ALIAS, champion.model_version)

    return tracked(step.models.tracking, move, _warn(step))


def approvals_compute(step: Step) -> dict[Table, str]:
    """ml.model_approvals: the decisions recorded for the run's months, kept, plus the run
    config's (`APPROVAL_CONFIG`: version, action, by, reason) when it has one, checked against
    the version's registry records (`approval_problem`). A decision is recorded in its
    version's trained month, which must be the run's first month: the months after it are
    re-decided in the same run. Raises SignOffError for a sign-off it refuses."""
    lake, con, wanted = step.lake, step.con, step.run_config
    published = set(lake.published_months(MODEL_APPROVALS))
    recorded: list[ApprovalRecord] = []
    if published & set(step.months):
        lake.read(con, "recorded_approvals", MODEL_APPROVALS,
                  sorted(published & set(step.months)))
        recorded = read_records(con, "SELECT * FROM recorded_approvals ORDER BY decided_at",
                                ApprovalRecord)
    if wanted.get("version"):
        version, action = wanted["version"], wanted.get("action", "")
        month = version_month(version)
        if month != step.months[0]:
            raise SignOffError(
                f"a sign-off of {version} re-decides the gate from {folder_label(month)} on: "
                f"run it for {folder_label(month)} to the last month, not "
                f"{folder_label(step.months[0])}..{folder_label(step.months[-1])}")
        candidates = read_records(con, "SELECT * FROM model_registry WHERE trained_month = "
                                  "$month", ModelRecord, {"month": month})
        problem = approval_problem(version, action, wanted.get("by", ""),
                                   wanted.get("reason", ""), candidates)
        if problem:
            raise SignOffError(problem)
        [record] = [c for c in candidates if c.model_version == version]
        decision = ApprovalRecord(month=month, model_version=version,
                                  model_name=record.model_name, action=action,
                                  decided_by=wanted["by"].strip(),
                                  reason=wanted["reason"].strip(), decided_at=_now())
        recorded.append(decision)
        step.metadata(month, {"recorded": f"{action} {version} by {decision.decided_by}: "
                                          f"{decision.reason}"})
    for month in step.months:
        step.metadata(month, {"decisions": sum(r.month == month for r in recorded)})
    con.register("approval_rows", records_table(ApprovalRecord, recorded))
    return {MODEL_APPROVALS: "SELECT * FROM approval_rows"}


def _swap_sets(step: Step, row: AliasRecord, oot: pd.DataFrame | None,
               old_scores: np.ndarray | None) -> list[SwapSetRecord]:
    """The month's swap sets (`ml_assets.signoff.swap_sets`) of the challenged version (its
    OOT scores from ml.score_reference) against the previous champion (`old_scores`, on the
    same `oot` loans); none when nothing challenged the champion."""
    new = challenged_version(row)
    if new is None or oot is None or old_scores is None or not len(oot):
        return []
    scores = dict(step.con.execute(
        "SELECT loan_id, score FROM score_reference WHERE model_version = $version",
        {"version": new}).fetchall())
    return swap_sets(row.month, new, row.previous_version, row.status,
                     oot["observation_month"].max(), oot["label"].to_numpy(),
                     oot["loan_id"].map(scores).to_numpy(), old_scores,
                     step.models.cutoff_mode, step.models.decision_cutoff)


def _gate_metadata(row: AliasRecord, swaps: Sequence[SwapSetRecord]) -> dict:
    metadata = {"champion": row.model_version or "none", "decision": row.decision,
                "status": row.status or "nothing proposed", "reason": row.reason,
                "challenger_oot_auc": row.challenger_oot_auc,
                "champion_oot_auc": row.champion_oot_auc,
                "signed_off_by": row.signed_off_by or "none"}
    if swaps:
        metadata["swap_sets"] = dg.MetadataValue.md(
            f"{swaps[0].new_version} vs {swaps[0].old_version} on the OOT loans of "
            f"{folder_label(swaps[0].oot_month)}, cut-off mode {swaps[0].cutoff_mode}: "
            f"{swaps[0].new_version} declines at {swaps[0].new_cutoff:.4f}, "
            f"{swaps[0].old_version} at {swaps[0].old_cutoff:.4f}\n\n"
            + markdown_table(["swap", "loans", "loan_share", "bads", "bad_rate", "mean_new_score",
                              "mean_old_score"],
                             [[s.swap, s.loans, s.loan_share, s.bads, s.bad_rate, s.mean_new_score,
                               s.mean_old_score] for s in swaps]))
    return metadata


def aliases_compute(step: Step) -> dict[Table, str]:
    """ml.model_aliases and ml.swap_sets: month after month, the best candidate of the month
    challenges the previous month's champion on the month's OOT set (`decide`), the month's
    sign-offs and champion.approval make the verdict (`sign_off`), and the loans the two models
    decide differently are counted (`_swap_sets`)."""
    store: ModelStore = step.resources["model_store"]
    previous = _published_alias(step)
    models: dict[str, Model] = {}
    decisions, swaps = [], []
    for month in step.months:
        candidates = read_records(
            step.con, "SELECT * FROM model_registry WHERE trained_month = $month "
            "ORDER BY model_version", ModelRecord, {"month": month})
        champion_auc, oot, old_scores = None, None, None
        if previous and previous.model_version and candidates:
            oot = training_frame(step.con, "training_set", month, "oot")
            if previous.model_version not in models:
                models[previous.model_version] = store.load(previous.model_name,
                                                            previous.model_version)
            old_scores = models[previous.model_version].predict(oot)
            champion_auc = metrics.auc(oot["label"], old_scores)
        verdict = decide(month, candidates, previous, champion_auc, step.models.min_auc_gain)
        signed = read_records(step.con, "SELECT * FROM model_approvals WHERE month = $month",
                              ApprovalRecord, {"month": month})
        row = sign_off(verdict, previous, candidates, signed, step.models.approval)
        month_swaps = _swap_sets(step, row, oot, old_scores)
        step.metadata(month, _gate_metadata(row, month_swaps))
        decisions.append(row)
        swaps += month_swaps
        previous = row
    if step.models.tracking.enabled:
        step.after_publish.append(lambda versions: track_champion(
            step, versions[MODEL_ALIASES.qualified_name]))
    step.con.register("alias_rows", records_table(AliasRecord, decisions))
    step.con.register("swap_rows", records_table(SwapSetRecord, swaps))
    return {MODEL_ALIASES: "SELECT * FROM alias_rows", SWAP_SETS: "SELECT * FROM swap_rows"}


# -- predictions ------------------------------------------------------------------------------

PREDICTION_CHECKS = {
    "one_valid_score_per_loan":
        "One prediction per loan of the feature store's month, each score in [0, 1] (none when "
        "the month is blocked for a source outage)",
    "champion_not_from_the_future":
        "The scoring model was trained in the prediction month or before",
    "sources_covered":
        "Every source the champion's features come from covered the month's applications "
        "(gold.source_coverage): ERROR when one is below its floor (the month is flagged or "
        "blocked, coverage.on_failure), WARN when one is well below its usual level",
}
# a loan's missing sources, from the feature store's flags
MISSING_SOURCE = {"features_attributes": "NOT has_attributes",
                  "features_financials": "NOT has_financials",
                  "feature_clickstream": "clickstream_months = 0"}
# the SQL column of a gold.feature_store row's missing sources, comma-separated, NULL for none
MISSING_SOURCES_SQL = "nullif(concat_ws(',', {}), '') AS missing_sources".format(", ".join(
    f"CASE WHEN {condition} THEN '{source}' END" for source, condition in MISSING_SOURCE.items()))


def coverage_verdict(coverage_rows: list[tuple], features: list[str]) -> tuple[str, list, str]:
    """The month's coverage for a model: its status (ok, warn, error), the failing sources the
    model's `features` use, and the issue text. `coverage_rows`: (source, status, message) of
    gold.source_coverage for the month; a source the model does not use cannot fail it."""
    used = {source_of_feature(f) for f in features}
    relevant = [(s, status, message) for s, status, message in coverage_rows if s in used]
    failing = [s for s, status, _ in relevant if status == "error"]
    status = "error" if failing else "warn" if any(r[1] == "warn" for r in relevant) else "ok"
    issue = "; ".join(message for _, st, message in relevant if st != "ok")
    return status, failing, issue


def decide_applications(scores: np.ndarray, missing: pd.Series, failing: list[str],
                        cutoff: float) -> np.ndarray:
    """decline when the score is at least `cutoff`, else approve; an application missing a
    `failing` source (a feed outage) is `refer`red to a person instead: its score lacks data
    the model relies on. `missing`: each loan's missing sources, comma-separated or None."""
    decision = np.where(scores >= cutoff, "decline", "approve").astype(object)
    if failing:
        lacks = missing.fillna("").map(lambda text: any(s in text.split(",") for s in failing))
        decision[lacks.to_numpy(dtype=bool)] = "refer"
    return decision


def reference_of(con: duckdb.DuckDBPyConnection, version: str) -> Reference | None:
    """Model `version`'s out-of-time reference scores and labels from the `ml_score_reference`
    view of `con`; None when it has none."""
    [(scores, labels)] = con.execute(
        "SELECT list(score ORDER BY loan_id), list(label ORDER BY loan_id) FROM "
        "ml_score_reference WHERE model_version = $version", {"version": version}).fetchall()
    return Reference(scores, labels) if scores else None


def champion_reference(step: Step, version: str, trained: date) -> Reference | None:
    """Model `version`'s out-of-time reference (`reference_of`), the `ml_score_reference` view
    read at its trained month `trained`."""
    step.read("ml_score_reference", [trained])
    return reference_of(step.con, version)


def month_cutoff(models: ModelConfig, reference: Reference | None,
                 version: str) -> CutoffOutcome | None:
    """The cut-off of champion `version` under predictions.cutoff_mode of `models`, chosen on
    its `reference` (`champion_reference`); None in `pd` mode for a champion without one.
    Raises StepFailed when an approval_rate or bad_rate mode has no reference to choose on."""
    if reference is None:
        if models.cutoff_mode == "pd":
            return None
        raise StepFailed(f"predictions.cutoff_mode {models.cutoff_mode} needs the reference "
                         f"scores of {version} (ml.score_reference): none published")
    return reference.choose(models.cutoff_mode, models.decision_cutoff)


def reasons_frame(model: Model, models: ModelConfig, frame: pd.DataFrame,
                  declined: np.ndarray) -> pd.DataFrame:
    """reason_1..3 (features) and reason_text (their descriptions, '; '-separated) of each
    row of `frame` scored by `model` (`reason_codes` of its contributions)."""
    contributions = (model.contributions(frame)[0] if len(frame)
                     else np.empty((0, len(model.features.names))))
    reasons = reason_codes(contributions, model.features.names, declined)
    described = {name: models.describe(name) for row in reasons for name in set(row)
                 if name is not None}
    text = [("; ".join(described[r] for r in row if r is not None) or None)
            for row in zip(*reasons, strict=True)]
    return pd.DataFrame({**{f"reason_{k}": r for k, r in enumerate(reasons, start=1)},
                         "reason_text": text})


def score_applications(model: Model, models: ModelConfig, frame: pd.DataFrame, cutoff: float,
                       failing: list[str]) -> pd.DataFrame:
    """Each row of `frame` (gold.feature_store rows with `missing_sources`, MISSING_SOURCES_SQL)
    scored by `model`: score (PD), grade (rating master scale), decision at `cutoff`
    (`decide_applications`, refer when missing a `failing` source), reason_1..3 and
    reason_text (`reasons_frame`); the index of `frame` is kept. What gold.predictions and the
    scoring service (ml_assets.serving) both publish."""
    scores = model.predict(frame)
    decisions = decide_applications(scores, frame["missing_sources"], failing, cutoff)
    scored = pd.DataFrame({"score": scores, "grade": grade_of(scores, models.rating_scale),
                           "decision": decisions}, index=frame.index)
    reasons = reasons_frame(model, models, frame, decisions == "decline")
    return pd.concat([scored, reasons.set_axis(frame.index)], axis=1)


def sign_off_note(champion: str | None, status: str | None, challenger: str | None,
                  signed_off_by: str | None) -> str:
    """What the predictions metadata says of the month's champion: always the last approved
    one (ml.model_aliases' model_version), and a proposal pending or rejected beside it."""
    scoring = f"scored by {champion}, the last approved champion" if champion else \
        "no approved champion"
    if status == "proposed":
        return f"{scoring}; {challenger} is proposed and awaits sign-off"
    if status == "rejected":
        return f"{scoring}; {challenger} was rejected by {signed_off_by}"
    if status == "approved":
        return f"{scoring}; promoted this month, approved by {signed_off_by}"
    return scoring


def predictions_compute(step: Step) -> dict[Table, str]:
    """gold.predictions: every loan of the application month scored by the month's champion,
    graded on the rating master scale, decided approve / decline at the month's cut-off
    (`month_cutoff`, predictions.cutoff_mode) or, missing a source in an outage, refer, with
    the reason codes of its score; a month whose coverage fails is published flagged, or
    blocked (no rows) with coverage.on_failure: block. The champion is ml.model_aliases'
    model_version: only an approved one, never a proposal awaiting sign-off (`sign_off_note`
    says which in the metadata). Its artifacts come from the model store."""
    con, store = step.con, step.resources["model_store"]
    on_failure = step.config.coverage.on_failure
    champions = {row[0]: row[1:4] for row in con.execute(
        "SELECT month, model_name, model_version, trained_month FROM model_aliases "
        "WHERE alias = $alias", {"alias": ALIAS}).fetchall()}
    sign_offs = {row[0]: sign_off_note(*row[1:]) for row in con.execute(
        "SELECT month, model_version, status, challenger_version, signed_off_by FROM "
        "model_aliases WHERE alias = $alias", {"alias": ALIAS}).fetchall()}
    coverage: dict[date, list[tuple]] = {}
    for month, *row in con.execute("SELECT application_month, source, status, message "
                                   "FROM source_coverage ORDER BY ALL").fetchall():
        coverage.setdefault(month, []).append(tuple(row))
    models: dict[str, Model] = {}
    scored = []
    for month in step.months:
        name, version, trained = champions.get(month, (None, None, None))
        frame = con.execute(
            f"SELECT *, {MISSING_SOURCES_SQL} "
            "FROM gold_feature_store WHERE application_month = $month ORDER BY loan_id",
            {"month": month}).df(date_as_object=True)
        status, failing, issue = "ok", [], ""
        if version is not None:
            if version not in models:
                models[version] = store.load(name, version)
            status, failing, issue = coverage_verdict(coverage.get(month, []),
                                                      list(models[version].features.names))
        blocked = bool(failing) and on_failure == "block"
        decisions = np.empty(0, dtype=object)
        if version is None or blocked:
            step.metadata(month, {"model_version": version or "none", "reason": (
                f"blocked (coverage.on_failure: block): {issue}" if blocked
                else "no approved champion yet in this month"),
                "champion_sign_off": sign_offs.get(month, "no gate decision")})
            scores = np.empty(0)
        else:
            chosen = month_cutoff(step.models, champion_reference(step, version, trained),
                                  version)
            cutoff = chosen.cutoff if chosen else step.models.decision_cutoff
            applications = score_applications(models[version], step.models, frame, cutoff,
                                              failing)
            scores, grades = applications["score"].to_numpy(), applications["grade"].to_numpy()
            decisions = applications["decision"].to_numpy()
            scored.append(pd.concat([pd.DataFrame({
                "loan_id": frame["loan_id"], "customer_id": frame["customer_id"],
                "application_month": frame["application_month"], "model_version": version,
                "decision_cutoff": cutoff,
                "missing_sources": frame["missing_sources"], "coverage_status": status,
                "coverage_issue": issue or None,
            }), applications], axis=1))
            quantiles = ([float(q) for q in np.quantile(scores, [0.1, 0.5, 0.9])]
                         if len(scores) else [None] * 3)
            shares = {d: float((decisions == d).mean()) if len(scores) else None
                      for d in ("decline", "approve", "refer")}
            step.metadata(month, {
                "model_version": version, "model_trained_month": str(trained),
                "mean_score": float(scores.mean()) if len(scores) else None,
                "score_p10": quantiles[0], "score_p50": quantiles[1],
                "score_p90": quantiles[2], "decision_cutoff": cutoff,
                "cutoff_mode": step.models.cutoff_mode,
                "cutoff_target": step.models.decision_cutoff,
                "reference_approval_rate": chosen.approval_rate if chosen else None,
                "reference_bad_rate": chosen.expected_bad_rate if chosen else None,
                "grades": dg.MetadataValue.json(
                    {g: int((grades == g).sum()) for g, _ in step.models.rating_scale}),
                "declined_share": shares["decline"], "approved_share": shares["approve"],
                "referred_share": shares["refer"], "coverage_status": status,
                "champion_sign_off": sign_offs[month],
                **({"coverage_issue": issue} if issue else {}),
            })
        valid = bool(((scores >= 0) & (scores <= 1)).all())
        expected = len(frame) if version and not blocked else 0
        distinct = frame["loan_id"].nunique() if expected else 0
        step.check("one_valid_score_per_loan", month,
                   valid and distinct == expected == len(scores),
                   {"loans": len(frame), "predictions": len(scores), "scores_in_0_1": valid})
        step.check("champion_not_from_the_future", month, trained is None or trained <= month,
                   {"model_version": version or "none", "trained_month": str(trained)})
        outcome = ("blocked: no predictions published" if blocked else
                   f"flagged: {int((decisions == 'refer').sum())} applications referred"
                   if failing else "")
        step.check("sources_covered", month, status == "ok",
                   {"coverage_status": status, "failing_sources": ", ".join(failing) or "none",
                    "on_failure": on_failure},
                   severity=dg.AssetCheckSeverity.ERROR if failing else WARN,
                   description=f"{issue}; {outcome}" if failing else issue or None)
    rows = (frame_table(Prediction, pd.concat(scored, ignore_index=True)) if scored
            else arrow_schema(Prediction).empty_table())
    con.register("prediction_rows", rows)
    return {PREDICTIONS: "SELECT * FROM prediction_rows"}


# -- the specs --------------------------------------------------------------------------------


def _model_kinds(models: ModelConfig) -> frozenset[str]:
    kinds = {"lightgbm" if m.algorithm == "lightgbm" else "scikitlearn" for m in models.models}
    return frozenset({"deltalake", *kinds})


def ml_specs(build: Build) -> list[TableSpec]:
    """The training set, the model registry (every candidate, with the OOT score reference),
    the champion gate and the predictions."""
    rules, models = build.rules, build.models
    return [
        TableSpec(
            table=TRAINING_SET, compute=training_set_compute, batched=True,
            inputs=(Input(LABEL_STORE, "gold_label_store", rules.training_labels),
                    Input(FEATURE_STORE, "gold_feature_store", rules.training_features))),
        TableSpec(
            table=MODEL_REGISTRY, also_writes=(SCORE_REFERENCE,), compute=registry_compute,
            batched=True, inputs=(Input(TRAINING_SET, "training_set"),),
            resources=("model_store",), kinds=_model_kinds(models),
            checks=tuple(Check(name, text.format(floor=models.min_oot_auc))
                         for name, text in MODEL_CHECKS.items()),
            description="Every candidate of config/models.yaml ("
                        + ", ".join(m.name for m in models.models) + ") trained each month on "
                        "gold.training_set: a record per model version in ml.model_registry "
                        "(with the Delta versions its training set read), its out-of-time "
                        "scores in ml.score_reference, its artifacts in the model store."),
        TableSpec(
            table=MODEL_APPROVALS, compute=approvals_compute,
            inputs=(Input(MODEL_REGISTRY, "model_registry"),),
            kinds=frozenset({"python", "deltalake"}), config_schema=APPROVAL_CONFIG,
            # a sign-off reads the month's decisions and adds one: one writer at a time
            pool="champion_gate",
            description="Sign-offs of model versions by people (approve or reject, who, why, "
                        "when), recorded by the job champion_approval or `vintage model "
                        "approve|reject`; the champion gate honours them."),
        TableSpec(
            table=MODEL_ALIASES, also_writes=(SWAP_SETS,), compute=aliases_compute,
            inputs=(Input(MODEL_REGISTRY, "model_registry"), Input(TRAINING_SET, "training_set"),
                    Input(SCORE_REFERENCE, "score_reference"),
                    Input(MODEL_APPROVALS, "model_approvals"),
                    Input(MODEL_ALIASES, "previous_aliases", rules.previous)),
            resources=("model_store",), kinds=frozenset({"python", "deltalake"}),
            # month M's gate reads month M-1's decision: one gate at a time across runs (the
            # instance gives every pool a limit of 1, config/dagster.yaml)
            pool="champion_gate",
            description="The champion gate, month by month: the best candidate challenges the "
                        "previous month's champion on this month's out-of-time data, and wins "
                        f"by an OOT AUC at least {models.min_auc_gain} higher; signed off "
                        f"{'by the gate' if models.approval == 'auto' else 'by a person'} "
                        f"(champion.approval: {models.approval}), with the swap sets of the "
                        "challenge in ml.swap_sets."),
        TableSpec(
            table=PREDICTIONS, compute=predictions_compute, batched=True,
            inputs=(Input(FEATURE_STORE, "gold_feature_store"),
                    Input(MODEL_ALIASES, "model_aliases"),
                    Input(SOURCE_COVERAGE, "source_coverage"),
                    Input(SCORE_REFERENCE, "ml_score_reference", lookup=True)),
            resources=("model_store",),
            checks=tuple(Check(name, text) for name, text in PREDICTION_CHECKS.items())),
    ]
