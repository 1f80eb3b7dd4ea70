"""Reproducing a model version, or a month's predictions, from the table versions they read.

Every Delta commit records the version of each table its step read, and every registry record
the versions its training set came from (`input_versions`) and how it was trained
(`training_config`). Reproducing runs the assets' own compute functions again (the training
set's SQL, `train_candidate`, `predictions_compute`) over those versions (Delta time travel)
and compares the result with what was published, in DuckDB. Nothing is written to the lake or
the model store: a model is retrained into a temporary model store.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
from dagster_duckdb import DuckDBResource

from ml_assets.assets.models import (
    ALIAS,
    AliasRecord,
    ModelRecord,
    TrainingConfig,
    ml_specs,
    month_commit,
    read_records,
    train_candidate,
    training_frame,
)
from ml_assets.model_config import FeatureList, ModelSpec
from ml_assets.months import folder_label, parse_month
from ml_assets.partitions import time_rules
from ml_assets.spec import Build, Step, TableSpec, compute_months
from ml_assets.tables import MODEL_ALIASES, MODEL_REGISTRY, PREDICTIONS, TRAINING_SET
from resources.lake import Lake, LakeError, Table
from resources.model_store import ArtifactsMissing, ModelStore, ModelStoreError

SCORE_TOLERANCE = 1e-12
SAMPLE = 3  # differing rows named in a finding


class ReproduceError(RuntimeError):
    """What was published cannot be reproduced: a version it read was vacuumed, its lineage or
    artifacts are missing."""


class NotPublished(ReproduceError):
    """The model version or month asked for was never published."""


@dataclass(frozen=True)
class Finding:
    """One comparison: what was compared, whether it matched, and the figures."""

    what: str
    matched: bool
    detail: str


@dataclass(frozen=True)
class Reproduction:
    """The outcome of reproducing `subject` from the table versions `read` ({table: version})."""

    subject: str
    read: dict[str, int]
    findings: tuple[Finding, ...]

    @property
    def reproduced(self) -> bool:
        return all(f.matched for f in self.findings)

    @property
    def differences(self) -> list[str]:
        return [f.what for f in self.findings if not f.matched]


def _spec(build: Build, table: Table) -> TableSpec:
    return next(spec for spec in ml_specs(build) if spec.table == table)


def _run(spec: TableSpec, build: Build, lake: Lake, month: date, pins: Mapping[str, int],
         resources: Mapping[str, object],
         compare: Callable[[Step, str], None]) -> None:
    """Run `spec`'s compute for `month` as its asset does, reading its inputs at `pins`
    ({table: version}), and hand the step and the query of the spec's table's rows to
    `compare` while the step's connection is open."""
    step = Step(spec=spec, build=build, lake=lake, resources=resources, run_months=[month],
                pins=dict(pins))

    def stage(table: Table, query: str, months: list[date]) -> None:
        if table == spec.table:
            compare(step, query)

    try:
        compute_months(step, DuckDBResource(database=":memory:"), build.partitions, [month],
                       stage)
    except duckdb.IOException as error:  # a version's file removed by a vacuum
        read = ", ".join(f"{t} v{v}" for t, v in sorted({**step.read_versions,
                                                          **pins}.items()))
        raise ReproduceError(f"a file of the versions it reads ({read}) is gone, vacuumed "
                             f"after storage.retention_days? {' '.join(str(error).split())}"
                             ) from None


def _columns(con: duckdb.DuckDBPyConnection, relation: str) -> list[str]:
    return con.sql(f"SELECT * FROM {relation} LIMIT 0").columns


def _rows_only_in(con: duckdb.DuckDBPyConnection, first: str, second: str,
                  columns: list[str], key: tuple[str, ...]) -> tuple[int, list[tuple]]:
    """How many rows of `first` are not in `second` (EXCEPT ALL: duplicates count), and the
    keys of a few of them."""
    listed = ", ".join(f'"{c}"' for c in columns)
    keys = ", ".join(f'"{c}"' for c in key)
    difference = f"SELECT {listed} FROM {first} EXCEPT ALL SELECT {listed} FROM {second}"
    count = con.execute(f"SELECT count(*) FROM ({difference})").fetchone()[0]
    sample = con.execute(f"SELECT {keys} FROM ({difference}) ORDER BY ALL LIMIT {SAMPLE}"
                         ).fetchall() if count else []
    return int(count), sample


def _shown(path: Path) -> str:
    """A path as given relative to the working directory when it is under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _count(count: int, noun: str = "row") -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _keys(sample: list[tuple]) -> str:
    return ", ".join(" ".join(str(v) for v in row) for row in sample)


def compare_rows(con: duckdb.DuckDBPyConnection, rebuilt: str, published: str,
                 key: tuple[str, ...], published_name: str) -> Finding:
    """Whether two relations of `con` hold the same rows (EXCEPT ALL both ways, over the
    rebuilt relation's columns), naming a few differing rows by `key`."""
    columns, published_columns = _columns(con, rebuilt), _columns(con, published)
    missing = [c for c in columns if c not in published_columns]
    if missing:
        return Finding("training set rows", False,
                       f"{published_name} lacks the rebuilt columns {', '.join(missing)}")
    only_rebuilt, rebuilt_sample = _rows_only_in(con, rebuilt, published, columns, key)
    only_published, published_sample = _rows_only_in(con, published, rebuilt, columns, key)
    rows = con.execute(f"SELECT count(*) FROM {rebuilt}").fetchone()[0]
    if not only_rebuilt and not only_published:
        return Finding("training set rows", True,
                       f"{_count(rows)} rebuilt equal {published_name} (EXCEPT ALL both ways: "
                       "0 rows)")
    detail = [f"{_count(only_rebuilt)} only in the rebuild"
              + (f" ({', '.join(key)}: {_keys(rebuilt_sample)})" if rebuilt_sample else ""),
              f"{_count(only_published)} only in {published_name}"
              + (f" ({', '.join(key)}: {_keys(published_sample)})" if published_sample else "")]
    return Finding("training set rows", False, "; ".join(detail))


# -- a model version --------------------------------------------------------------------------


def model_record(lake: Lake, version: str, registry_version: int | None = None
                 ) -> ModelRecord:
    """The registry record of model `version` (`<name>-YYYY-MM`) in ml.model_registry at
    `registry_version` (default: current); NotPublished if there is none."""
    try:
        month = parse_month(version[-7:])
    except ValueError:
        raise NotPublished(f"{version!r} is not a model version (<name>-YYYY-MM)") from None
    with duckdb.connect() as con:
        try:
            lake.read(con, "registry", MODEL_REGISTRY, [month], registry_version)
        except LakeError as error:
            raise NotPublished(f"model version {version} is not in "
                               f"{MODEL_REGISTRY.qualified_name}: {error}") from None
        found = read_records(con, "SELECT * FROM registry WHERE model_version = $version",
                             ModelRecord, {"version": version})
        if not found:
            trained = [r[0] for r in con.execute(
                "SELECT model_version FROM registry ORDER BY 1").fetchall()]
            raise NotPublished(f"model version {version} is not in "
                               f"{MODEL_REGISTRY.qualified_name}: " + (
                                   f"the versions trained in {folder_label(month)} are "
                                   f"{', '.join(trained)}" if trained else
                                   f"nothing was trained in {folder_label(month)}"))
    return found[0]


def recorded_model(record: ModelRecord) -> ModelSpec:
    """The model as the record says it was configured: algorithm, parameters, rounds, its
    calibration method and its resolved features."""
    params = json.loads(record.params)
    max_rounds, early_stopping = params.pop("max_rounds"), params.pop("early_stopping_rounds")
    categorical = tuple(record.categorical_features)
    numeric = tuple(f for f in record.features if f not in categorical)
    return ModelSpec(name=record.model_name, algorithm=record.algorithm, params=params,
                     features=FeatureList(numeric, categorical), max_rounds=max_rounds,
                     early_stopping_rounds=early_stopping,
                     calibration=json.loads(record.calibration or "{}").get("method", "none"))


def recorded_build(build: Build, config: TrainingConfig, model: ModelSpec) -> Build:
    """`build` with the training configuration of a record (window, split, seed, sampling,
    the label's months on book) and its one model: the build the record was trained in."""
    models = dataclasses.replace(
        build.models, window_months=config.window_months,
        min_labelled_months=config.min_labelled_months, test_fraction=config.test_fraction,
        seed=config.seed, max_training_rows=config.max_training_rows, models=(model,))
    settings = dataclasses.replace(build.config, label=dataclasses.replace(
        build.config.label, mob=config.label_mob))
    return Build(config=settings, models=models, partitions=build.partitions,
                 rules=time_rules(settings, config.window_months), tables=build.tables)


def reproduce_model(build: Build, lake: Lake, store: ModelStore, version: str) -> Reproduction:
    """Rebuild model `version`'s training set from gold.label_store and gold.feature_store at
    the versions its record names, compare it with gold.training_set at its recorded version,
    retrain the model on it into a temporary model store and compare the data fingerprint and
    the artifact digest with the record; also check the published artifacts' digest.
    Raises NotPublished for an unknown version, ReproduceError when the record has no
    lineage, LakeError when a recorded version cannot be read (vacuumed)."""
    record = model_record(lake, version)
    lineage = json.loads(record.input_versions or "{}")
    training_version = lineage.get(TRAINING_SET.qualified_name)
    if training_version is None or len(lineage) < 2:
        raise ReproduceError(f"{version}: its record names no input versions to rebuild from "
                             f"(input_versions {record.input_versions!r})")
    config = TrainingConfig.from_json(record.training_config)
    model = recorded_model(record)
    trained_in = recorded_build(build, config, model)
    month = record.trained_month
    pins = {table: v for table, v in lineage.items() if table != TRAINING_SET.qualified_name}
    findings: list[Finding] = []
    published_name = f"{TRAINING_SET.qualified_name} v{training_version}"

    def compare(step: Step, query: str) -> None:
        con = step.con
        con.execute(f"CREATE OR REPLACE TEMP TABLE rebuilt AS {query}")
        lake.read(con, "published", TRAINING_SET, [month], training_version)
        findings.append(compare_rows(con, "rebuilt", "published", TRAINING_SET.key,
                                     published_name))
        frame = training_frame(con, "rebuilt", month)
        if frame.empty:
            findings.append(Finding("data fingerprint", False,
                                    f"the rebuild has no rows for {folder_label(month)}"))
            return
        with tempfile.TemporaryDirectory(prefix="vintage-reproduce-") as folder:
            again = train_candidate(model, month, frame, ModelStore(uri=folder), config,
                                    lineage, trained_in.models.min_oot_auc).record
        findings.append(Finding(
            "data fingerprint", again.data_fingerprint == record.data_fingerprint,
            f"recorded {record.data_fingerprint}, retrained {again.data_fingerprint}"))
        findings.append(Finding(
            "artifact digest", again.artifact_digest == record.artifact_digest,
            f"recorded {record.artifact_digest}, retrained {again.artifact_digest} (in a "
            "temporary model store)"))

    _run(_spec(trained_in, TRAINING_SET), trained_in, lake, month, pins, {}, compare)
    findings.append(_published_artifacts(store, record))
    return Reproduction(f"model {version} (trained {folder_label(month)}, {record.algorithm})",
                        lineage, tuple(findings))


def _published_artifacts(store: ModelStore, record: ModelRecord) -> Finding:
    where, digest = _stored(store, record.model_name, record.model_version)
    if digest is None:
        return Finding("published artifacts", False, where)
    return Finding("published artifacts", digest == record.artifact_digest,
                   f"{where}: digest {digest}, registry {record.artifact_digest}")


def _stored(store: ModelStore, name: str, version: str) -> tuple[str, str | None]:
    """Where the version's artifacts are (shown relative to the working directory when
    local) and their digest; without one, why (`no artifacts at ...`)."""
    uri = store.version_uri(name, version)
    where = uri if store.bucket else _shown(Path(uri))
    try:
        return where, store.digest(name, version)
    except ArtifactsMissing:
        return f"no artifacts at {where}", None
    except ModelStoreError as error:
        return str(error), None


# -- a month's predictions --------------------------------------------------------------------


def reproduce_predictions(build: Build, lake: Lake, store: ModelStore, month: date
                          ) -> Reproduction:
    """Rebuild `month`'s predictions from gold.feature_store, ml.model_aliases and
    gold.source_coverage at the versions the commit that published the month read, with the
    champion's artifacts from the model store, and compare them with the month's rows as
    readers see them now (the current version, so a change made outside the pipeline shows):
    columns, loans, scores (to SCORE_TOLERANCE), decisions and every other column; also
    check the champion's artifacts against its registry digest. Decisions use the current
    predictions cut-off settings (cutoff_mode, decision_cutoff) and coverage.on_failure.
    Raises NotPublished for a month never published, ReproduceError when its commit recorded
    no input versions, LakeError when a recorded version cannot be read (vacuumed)."""
    current = lake.version(PREDICTIONS)
    if current is None or month not in lake.published_months(PREDICTIONS):
        raise NotPublished(f"{PREDICTIONS.qualified_name} has no published month "
                           f"{folder_label(month)}")
    publishing = month_commit(lake, PREDICTIONS, month, current)
    pins = lake.commit_metadata(PREDICTIONS, publishing)["input_versions"]
    if not pins:
        raise ReproduceError(f"{PREDICTIONS.qualified_name} v{publishing}, which published "
                             f"{folder_label(month)}, recorded no input versions")
    findings: list[Finding] = []
    published_name = f"{PREDICTIONS.qualified_name} v{current}"

    def compare(step: Step, query: str) -> None:
        con = step.con
        con.execute(f"CREATE OR REPLACE TEMP TABLE rebuilt AS {query}")
        lake.read(con, "published", PREDICTIONS, [month], current)
        findings.extend(compare_predictions(con, "rebuilt", "published", published_name))
        champion = read_records(con, "SELECT * FROM model_aliases WHERE alias = $alias AND "
                                "month = $month", AliasRecord, {"alias": ALIAS, "month": month})
        if champion and champion[0].model_version:
            findings.append(_champion_artifacts(lake, store, month, pins,
                                                champion[0].model_version))

    _run(_spec(build, PREDICTIONS), build, lake, month, pins, {"model_store": store}, compare)
    return Reproduction(f"predictions of {folder_label(month)}", pins, tuple(findings))


def _champion_artifacts(lake: Lake, store: ModelStore, month: date, pins: Mapping[str, int],
                        version: str) -> Finding:
    """The champion's artifacts now against its record in the registry as the gate read it
    when it chose the month's champion (predictions do not read the registry; the gate's
    commit recorded its version): artifacts replaced since (the month trained again on other
    data) show here."""
    aliases = pins.get(MODEL_ALIASES.qualified_name)
    registry_version = None
    if aliases is not None:
        deciding = month_commit(lake, MODEL_ALIASES, month, aliases)
        registry_version = lake.commit_metadata(MODEL_ALIASES, deciding)["input_versions"].get(
            MODEL_REGISTRY.qualified_name)
    record = model_record(lake, version, registry_version)
    read = "current" if registry_version is None else f"v{registry_version}"
    where, digest = _stored(store, record.model_name, version)
    if digest is None:
        return Finding("champion artifacts", False, where)
    return Finding("champion artifacts", digest == record.artifact_digest,
                   f"{where}: digest {digest}; {MODEL_REGISTRY.qualified_name} {read}, "
                   f"which the gate read, recorded {record.artifact_digest}")


def compare_predictions(con: duckdb.DuckDBPyConnection, rebuilt: str, published: str,
                        published_name: str) -> list[Finding]:
    """Rebuilt and published predictions of a month compared loan by loan: the columns, the
    loans, the scores (within SCORE_TOLERANCE), the decisions and the other columns."""
    columns, published_columns = _columns(con, rebuilt), _columns(con, published)
    findings = [Finding("columns", columns == published_columns,
                        ", ".join(columns) if columns == published_columns else
                        f"rebuilt {', '.join(columns)}; published {', '.join(published_columns)}")]
    if set(columns) != set(published_columns):
        return findings
    counts = con.execute(
        f"SELECT count(r.loan_id), count(p.loan_id), "
        f"count(*) FILTER (WHERE p.loan_id IS NULL), count(*) FILTER (WHERE r.loan_id IS NULL) "
        f"FROM {rebuilt} AS r FULL JOIN {published} AS p USING (loan_id)").fetchone()
    rebuilt_rows, published_rows, only_rebuilt, only_published = counts
    findings.append(Finding(
        "loans", not only_rebuilt and not only_published,
        f"{rebuilt_rows:,} rebuilt, {published_rows:,} in {published_name}"
        + (f"; {only_rebuilt:,} only rebuilt, {only_published:,} only published"
           if only_rebuilt or only_published else "")))
    others = [c for c in columns if c not in ("loan_id", "score", "decision")]
    distinct = ", ".join(f'count(*) FILTER (WHERE r."{c}" IS DISTINCT FROM p."{c}")'
                         for c in others)
    max_gap, over, decisions, *other_counts = con.execute(
        f"SELECT coalesce(max(abs(r.score - p.score)), 0), "
        f"count(*) FILTER (WHERE abs(r.score - p.score) > {SCORE_TOLERANCE}), "
        f"count(*) FILTER (WHERE r.decision IS DISTINCT FROM p.decision), {distinct} "
        f"FROM {rebuilt} AS r JOIN {published} AS p USING (loan_id)").fetchone()
    findings.append(Finding("scores", not over,
                            f"largest difference {max_gap:.3g} (tolerance {SCORE_TOLERANCE:g})"
                            + (f"; {_count(over, 'loan')} beyond it" if over else "")))
    findings.append(Finding("decisions", not decisions,
                            f"{_count(decisions, 'loan')} decided differently"))
    differing = {c: n for c, n in zip(others, other_counts, strict=True) if n}
    findings.append(Finding("other columns", not differing,
                            ", ".join(others) + " equal" if not differing else
                            "; ".join(f"{c} differs for {_count(n, 'loan')}"
                                      for c, n in differing.items())))
    return findings


def describe(reproduction: Reproduction) -> list[str]:
    """The lines `vintage model reproduce` / `vintage predictions reproduce` print."""
    lines = [reproduction.subject,
             "read at: " + ", ".join(f"{t} v{v}"
                                     for t, v in sorted(reproduction.read.items()))]
    width = max(len(f.what) for f in reproduction.findings)
    for finding in reproduction.findings:
        state = "match  " if finding.matched else "DIFFERS"
        lines.append(f"  {state} {finding.what:<{width}}  {finding.detail}")
    return lines

