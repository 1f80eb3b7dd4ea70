"""Monitoring: stability every prediction month, performance when labels mature (the target's,
with its AUC by segment, and the early read's, sooner), an evidently drift report, a retain /
watch / retrain / data_outage recommendation and a summary with plots.

The reference of a prediction month is its champion's out-of-time set: the OOT rows of the
training set the champion was trained on (features) and ml.score_reference (scores), both read
at the champion's trained month, which the data chooses (lookup inputs).

Every threshold comes from `monitoring:` in the settings, passed to the functions that judge
(`psi_band_check`, `stability_evaluations`, `performance_evaluations`, `recommend`) as a
`MonitoringSettings`: nothing is read at import.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from ml_assets import metrics
from ml_assets.metadata import markdown_table
from ml_assets.months import folder_label
from ml_assets.partitions import upstream_months
from ml_assets.plots import bar_chart, line_chart
from ml_assets.settings import LabelDefinition, MonitoringSettings, source_of_feature
from ml_assets.spec import (
    ERROR,
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
    DRIFT,
    EARLY_READ_PERFORMANCE,
    FEATURE_STORE,
    LABEL_STORE,
    MODEL_ALIASES,
    MODEL_REGISTRY,
    PERFORMANCE,
    PREDICTIONS,
    RECOMMENDATION,
    SCORE_REFERENCE,
    SEGMENT_PERFORMANCE,
    SOURCE_COVERAGE,
    STABILITY,
    SUMMARY,
    TRAINING_SET,
)
from resources.lake import Lake, LakeError, Table
from resources.storage import FileStore, is_bucket

SCORE = "score"
TOP = 10
CHAMPION_ALIAS = "champion"  # the alias of ml.model_aliases whose model scores each month


@dataclass(frozen=True)
class Verdict:
    """One check's outcome for one month, before a step records it (`Step.check`)."""

    check: str
    passed: bool
    metadata: dict = field(default_factory=dict)
    severity: dg.AssetCheckSeverity = ERROR
    description: str | None = None


def record_verdicts(step: Step, month: date, verdicts: Iterable[Verdict]) -> None:
    for verdict in verdicts:
        step.check(verdict.check, month, verdict.passed, verdict.metadata, verdict.severity,
                   verdict.description)


def rows_of(con: duckdb.DuckDBPyConnection, query: str, params: Mapping | None = None
            ) -> list[dict]:
    """The rows of `query` as dicts (DATE as `date`, LIST as `list`)."""
    result = con.execute(query, dict(params or {}))
    columns = [d[0] for d in result.description]
    return [dict(zip(columns, row, strict=True)) for row in result.fetchall()]


# -- the champion and its reference -----------------------------------------------------------


def read_champions(step: Step) -> dict[date, dict]:
    """The champion's registry record of each month of the step that has a champion, from the
    `ml_model_aliases` view and the registry read at the champions' trained months. Raises
    StepFailed when an alias names a version its trained month's registry does not hold."""
    aliases = rows_of(step.con, "SELECT month, model_version, trained_month FROM ml_model_aliases "
                                "WHERE alias = $alias AND model_version IS NOT NULL",
                      {"alias": CHAMPION_ALIAS})
    if not aliases:
        return {}
    step.read("ml_model_registry", sorted({a["trained_month"] for a in aliases}))
    registry = {r["model_version"]: r for r in rows_of(
        step.con, "SELECT * FROM ml_model_registry WHERE list_contains($versions, model_version)",
        {"versions": sorted({a["model_version"] for a in aliases})})}
    unknown = [a for a in aliases if a["model_version"] not in registry]
    if unknown:
        first = unknown[0]
        raise StepFailed(
            f"ml.model_aliases names {first['model_version']} champion of "
            f"{folder_label(first['month'])}, trained in {folder_label(first['trained_month'])}, "
            "but ml.model_registry has no such record that month: re-materialise ml/model_aliases")
    return {a["month"]: registry[a["model_version"]] for a in aliases}


def read_references(step: Step, records: Iterable[dict]) -> None:
    """Read the training sets and reference scores at the trained months of `records`."""
    trained = sorted({r["trained_month"] for r in records})
    if trained:
        step.read("gold_training_set", trained)
        step.read("ml_score_reference", trained)


def register_reference(con: duckdb.DuckDBPyConnection, record: dict) -> int:
    """`reference_rows`: the model's out-of-time loans, their features and reference scores;
    returns how many."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE reference_rows AS SELECT features.*, scores.score "
        "FROM gold_training_set AS features JOIN ml_score_reference AS scores USING (loan_id) "
        "WHERE features.split = 'oot' AND features.training_month = $trained "
        "AND scores.trained_month = $trained AND scores.model_version = $version",
        {"trained": record["trained_month"], "version": record["model_version"]})
    return con.execute("SELECT count(*) FROM reference_rows").fetchall()[0][0]


def register_actual(con: duckdb.DuckDBPyConnection, month: date, version: str) -> int:
    """`actual_rows`: the month's loans, their features and the scores of model `version`;
    returns how many."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE actual_rows AS SELECT features.*, scored.score "
        "FROM gold_feature_store AS features JOIN gold_predictions AS scored USING (loan_id) "
        "WHERE features.application_month = $month AND scored.model_version = $version",
        {"month": month, "version": version})
    return con.execute("SELECT count(*) FROM actual_rows").fetchall()[0][0]


def predictions_by_version(con: duckdb.DuckDBPyConnection) -> dict[date, dict[str, int]]:
    """Per application month of the `gold_predictions` view: model version -> loans scored."""
    counts: dict[date, dict[str, int]] = {}
    for month, version, loans in con.execute(
            "SELECT application_month, model_version, count(*) FROM gold_predictions "
            "GROUP BY ALL").fetchall():
        counts.setdefault(month, {})[version] = loans
    return counts


def unscored_reason(month: date, record: dict | None, scored: dict[str, int]) -> str:
    """Why a month has nothing to compare: no champion, no predictions, or predictions made by
    another model than the month's champion (gold/predictions older than ml/model_aliases)."""
    if record is None:
        return "no champion this month (ml.model_aliases)"
    if not scored:
        return "no predictions this month"
    others = ", ".join(f"{version} ({loans} loans)" for version, loans in sorted(scored.items()))
    return (f"the predictions of {folder_label(month)} are by {others}, not by the champion "
            f"{record['model_version']}: re-materialise gold/predictions for the month")


def feature_kinds(record: dict, most_important: int | None = None
                  ) -> tuple[list[str], list[str]]:
    """The model's numeric and categorical features; with `most_important`, only that many of
    its features, by importance (the registry keeps them in that order)."""
    chosen = list(record["features"])
    if most_important is not None:
        chosen = list(json.loads(record["importances"]))[:most_important]
    categorical = [f for f in chosen if f in set(record["categorical_features"] or ())]
    return [f for f in chosen if f not in categorical], categorical


def failing_sources(con: duckdb.DuckDBPyConnection) -> dict[date, dict[str, tuple[float, float]]]:
    """Per application month of the `gold_source_coverage` view, the sources below their
    coverage floor: source -> (coverage, floor), both shares in [0, 1]."""
    failing: dict[date, dict] = {}
    for month, source, coverage, floor in con.execute(
            "SELECT application_month, source, coverage, floor FROM gold_source_coverage "
            "WHERE status = 'error'").fetchall():
        failing.setdefault(month, {})[source] = (coverage, floor)
    return failing


# -- stability --------------------------------------------------------------------------------

STABILITY_SCHEMA = pa.schema([
    ("month", pa.date32()), ("model_version", pa.string()), ("variable", pa.string()),
    ("kind", pa.string()), ("psi", pa.float64()), ("band", pa.string()), ("bins", pa.int32()),
    ("bin_edges", pa.list_(pa.float64())), ("reference_n", pa.int64()),
    ("actual_n", pa.int64()), ("reference_missing_share", pa.float64()),
    ("actual_missing_share", pa.float64()),
])


def stability_checks(thresholds: MonitoringSettings) -> tuple[Check, ...]:
    return (
        Check("score_psi", f"Score PSI against the reference: WARN in the watch band "
                           f"(>= {thresholds.psi_watch}), ERROR in the act band "
                           f"(>= {thresholds.psi_act}); only WARN on fewer than "
                           f"{thresholds.min_loans} loans (monitoring.min_loans)"),
        Check("feature_csi", f"WARN when a model feature's CSI is in the act band "
                             f"(>= {thresholds.psi_act}); features in an outage are checked apart"),
        Check("features_missing",
              f"ERROR when a model feature is missing in a share of the month's loans at least "
              f"{thresholds.outage_missing_increase:.0%} above the reference's "
              f"(monitoring.outage_missing_increase), or its source is below its coverage floor: "
              f"a data outage"),
    )


def psi_band_check(thresholds: MonitoringSettings, psi: float | None, metadata: dict,
                   loans: int | None = None, during: str | None = None) -> Verdict:
    """The `score_psi` verdict: stable passes; the watch band fails as a WARN, the act band as
    an ERROR; with fewer than `thresholds.min_loans` loans, a WARN at most (too few to judge).
    `psi` is None when there is nothing to compare (passes). `during` names a data outage of
    the month, which the description then mentions."""
    if psi is None or psi < thresholds.psi_watch:
        return Verdict("score_psi", True, metadata)
    acting = psi >= thresholds.psi_act
    band, bound = ("act", thresholds.psi_act) if acting else ("watch", thresholds.psi_watch)
    description = f"score PSI {psi:.4f} in the {band} band (>= {bound})" + (
        f", during a {during}" if during else "")
    if loans is not None and loans < thresholds.min_loans:
        return Verdict("score_psi", False, metadata, WARN,
                       f"{description}, on only {loans} loans: too few to judge "
                       f"(monitoring.min_loans {thresholds.min_loans})")
    return Verdict("score_psi", False, metadata, ERROR if acting else WARN, description)


def describe_outage(outage: pd.DataFrame, loans: int) -> str:
    """One line for the features of a month in the outage band, by source (a feed that stopped
    shows as one line, not forty). `outage`: stability rows indexed by variable, with
    `reference_missing_share` and `actual_missing_share` (shares in [0, 1])."""
    by_source: dict[str, list[str]] = {}
    for variable in outage.index:
        by_source.setdefault(source_of_feature(variable), []).append(variable)
    parts = []
    for source, variables in sorted(by_source.items()):
        rows = outage.loc[variables]
        named = ", ".join(variables[:3]) + (", ..." if len(variables) > 3 else "")
        parts.append(f"{source}: {len(variables)} feature(s) missing in up to "
                     f"{rows['actual_missing_share'].max():.0%} of {loans} loans against up to "
                     f"{rows['reference_missing_share'].max():.0%} in the reference ({named})")
    return "data outage, not drift: " + "; ".join(parts)


def stability_evaluations(thresholds: MonitoringSettings, frame: pd.DataFrame, loans: int
                          ) -> list[Verdict]:
    """The month's stability verdicts (`score_psi`, `feature_csi`, `features_missing`) from its
    rows of monitoring.stability indexed by variable (the score's row is `score`): the score's
    band, the features in the act band, and the features in an outage (missing data, apart
    from drift). `loans`: the month's loans scored by the champion."""
    features = frame.drop(index=SCORE)
    outage = features[features["band"] == "outage"]
    acting = features[features["band"] == "act"]
    score_psi = float(frame.loc[SCORE, "psi"])
    outage_text = describe_outage(outage, loans) if len(outage) else None
    few = loans < thresholds.min_loans
    return [
        psi_band_check(thresholds, score_psi,
                       {"score_psi": score_psi, "band": str(frame.loc[SCORE, "band"]),
                        "loans": int(loans)}, loans, during=outage_text),
        Verdict("feature_csi", acting.empty,
                {"features_in_act_band": ", ".join(acting.index) or "none"}, WARN,
                None if acting.empty else f"CSI >= {thresholds.psi_act}: " + ", ".join(
                    f"{name} {value:.3f}" for name, value in acting["psi"].items())),
        Verdict("features_missing", outage.empty,
                {"features_in_outage": len(outage), "loans": int(loans)},
                WARN if few else ERROR, outage_text),
    ]


def stability_metadata(month: date, record: dict, frame: pd.DataFrame) -> dict:
    """What the UI shows for a month's stability (rows indexed by variable)."""
    features = frame.drop(index=SCORE)
    drifting = features[features["band"] != "outage"].sort_values("psi", ascending=False)
    top = drifting.head(TOP)
    score_psi = float(frame.loc[SCORE, "psi"])
    return {
        "model_version": record["model_version"],
        "reference": f"OOT of {record['model_version']} ({folder_label(record['oot_month'])})",
        "score_psi": score_psi,
        "score_band": str(frame.loc[SCORE, "band"]),
        "features_watch": int((features["band"] == "watch").sum()),
        "features_act": int((features["band"] == "act").sum()),
        "features_outage": int((features["band"] == "outage").sum()),
        "top_csi": dg.MetadataValue.md(markdown_table(
            ["variable", "csi", "band", "missing (reference)", "missing (month)"],
            [[v, r.psi, r.band, r.reference_missing_share, r.actual_missing_share]
             for v, r in top.iterrows()])),
        "missing_shares": dg.MetadataValue.md(markdown_table(
            ["variable", "missing (reference)", "missing (month)", "band"],
            [[v, r.reference_missing_share, r.actual_missing_share, r.band]
             for v, r in features.sort_values("actual_missing_share", ascending=False)
             .head(TOP).iterrows()])),
        "csi_chart": dg.MetadataValue.md(bar_chart(
            {SCORE: score_psi, **top["psi"].to_dict()},
            f"{folder_label(month)}: PSI / CSI vs reference (outages apart)", "PSI")),
    }


def stability_compute(step: Step) -> dict[Table, str]:
    """monitoring.stability: per month with predictions by its champion, the PSI of the score
    and the CSI of each model feature against the champion's OOT reference
    (sql/monitoring/stability.sql), with each side's missing share and the outage band (the
    features of a source below its coverage floor, or missing far more often than in the
    reference); the checks `score_psi`, `feature_csi`, `features_missing`."""
    thresholds, con = step.config.monitoring, step.con
    champions = read_champions(step)
    failing = failing_sources(con)
    scored = predictions_by_version(con)
    read_references(step, (champions[m] for m in step.months if m in champions))
    con.register("stability_schema", STABILITY_SCHEMA.empty_table())
    con.execute("CREATE OR REPLACE TEMP TABLE stability_rows AS FROM stability_schema")
    for month in step.months:
        record = champions.get(month)
        loans = register_actual(con, month, record["model_version"]) if record else 0
        reference = register_reference(con, record) if loans else 0
        if not loans:
            why = unscored_reason(month, record, scored.get(month, {}))
            # nothing scored is nothing to judge; scores of another model are a stale month
            stale = record is not None and bool(scored.get(month))
            step.metadata(month, {"reason": why})
            record_verdicts(step, month, [
                Verdict(check.name, not stale, {"reason": why}, WARN if stale else ERROR,
                        why if stale else None) for check in stability_checks(thresholds)])
            continue
        if not reference:  # a champion without its reference: a fault of the ML stage
            why = (f"not measurable: ml.score_reference has no out-of-time scores of "
                   f"{record['model_version']} at {folder_label(record['trained_month'])}")
            step.metadata(month, {"reason": why})
            record_verdicts(step, month, [Verdict(check.name, False, {"reason": why}, WARN, why)
                                          for check in stability_checks(thresholds)])
            continue
        numeric, categorical = feature_kinds(record)
        step.sql("monitoring/stability", {
            "numeric": [SCORE, *numeric], "categorical": categorical,
            "floor": thresholds.psi_floor, "watch": thresholds.psi_watch,
            "act": thresholds.psi_act, "outage": thresholds.outage_missing_increase,
            "outage_variables": [f for f in record["features"]
                                 if source_of_feature(f) in failing.get(month, {})],
            "month": month, "model_version": record["model_version"]})
        con.execute(f"INSERT INTO stability_rows BY NAME SELECT * FROM {RESULT}")
        frame = con.execute(f"SELECT * FROM {RESULT}").df().set_index("variable")
        record_verdicts(step, month, stability_evaluations(thresholds, frame, loans))
        step.metadata(month, {**stability_metadata(month, record, frame),
                              "loans": int(loans), "reference_loans": int(reference)})
    return {STABILITY: "SELECT * FROM stability_rows"}


# -- performance ------------------------------------------------------------------------------

PERFORMANCE_SCHEMA = pa.schema([
    ("month", pa.date32()), ("application_month", pa.date32()), ("model_version", pa.string()),
    ("label_def", pa.string()),
    ("n", pa.int64()), ("defaults", pa.int64()), ("default_rate", pa.float64()),
    ("mean_score", pa.float64()), ("auc", pa.float64()), ("gini", pa.float64()),
    ("ks", pa.float64()), ("model_oot_auc", pa.float64()), ("auc_drop", pa.float64()),
    ("approved", pa.int64()), ("approved_default_rate", pa.float64()),
])


def performance_checks(thresholds: MonitoringSettings) -> tuple[Check, ...]:
    return (
        Check("auc_floor", f"AUC of the matured predictions at least {thresholds.auc_floor}; "
                           f"only WARN without both classes or on fewer than "
                           f"{thresholds.min_loans} loans"),
        Check("auc_drop", f"AUC at most {thresholds.max_auc_drop} below the model's "
                          f"out-of-time AUC; only WARN without both classes or on fewer than "
                          f"{thresholds.min_loans} loans"),
    )


def performance_evaluations(thresholds: MonitoringSettings, version: str, summary: dict,
                            model_oot_auc: float | None, drop: float | None) -> list[Verdict]:
    """The `auc_floor` and `auc_drop` verdicts of one label month's matured predictions of
    model `version`. `summary`: `metrics.summary` of them (`auc` None without both classes,
    `n` loans, `defaults`); `drop`: the model's OOT AUC minus this AUC (None if either is
    unknown). Without both classes the AUC is not measurable, and on fewer than
    `thresholds.min_loans` loans it is too noisy to judge: both are a WARN saying so, never an
    ERROR."""
    auc, n, defaults = summary["auc"], summary["n"], summary["defaults"]
    figures = {"auc": auc, "loans": int(n), "defaults": int(defaults),
               "model_oot_auc": model_oot_auc}
    if auc is None or n < thresholds.min_loans:
        why = (f"AUC of {version} not measurable: {n} loans, {defaults} defaults (one class only)"
               if auc is None else
               f"AUC {auc:.4f} of {version} on only {n} loans: too few to judge "
               f"(monitoring.min_loans {thresholds.min_loans})")
        return [Verdict(check.name, False, figures, WARN, why)
                for check in performance_checks(thresholds)]
    floor_ok = auc >= thresholds.auc_floor
    drop_ok = drop is not None and drop <= thresholds.max_auc_drop
    return [
        Verdict("auc_floor", floor_ok, {**figures, "floor": thresholds.auc_floor}, ERROR,
                None if floor_ok else
                f"AUC {auc:.4f} of {version} below the floor {thresholds.auc_floor}"),
        Verdict("auc_drop", drop_ok, {**figures, "drop": drop,
                                      "max_drop": thresholds.max_auc_drop}, ERROR,
                None if drop_ok else
                f"AUC drop of {version} not measurable: no OOT AUC in the registry"
                if drop is None else
                f"AUC {auc:.4f} of {version} is {drop:.4f} below its OOT AUC "
                f"{model_oot_auc:.4f} (more than {thresholds.max_auc_drop})"),
    ]


def published_up_to(step: Step, table: Table, last: date) -> list[date]:
    """The months of `table` published up to `last`, at the version the step reads (pinned,
    else current)."""
    version = step.pins.get(table.qualified_name)
    return [m for m in step.lake.published_months(table, version) if m <= last]


def model_oot_aucs(step: Step, versions: list[str], last_application: date) -> dict[str, float]:
    """Model version -> its out-of-time AUC at training, from the registry's months up to
    `last_application` (a model scores no month before it was trained)."""
    months = published_up_to(step, MODEL_REGISTRY, last_application)
    if not versions or not months:
        return {}
    step.read("ml_model_registry", months)
    return dict(step.con.execute(
        "SELECT model_version, oot_auc FROM ml_model_registry "
        "WHERE list_contains($versions, model_version)", {"versions": versions}).fetchall())


def matured_performance(step: Step, definition: LabelDefinition, matured, floor: float,
                        checks: tuple[str, ...]) -> list[dict]:
    """The performance rows of `step.months` as label months of `definition`: per label month L
    and model version, AUC, Gini, KS, default rate and mean score of the predictions of the
    application month L - definition.mob (`matured`, its partition mapping) against their
    labels of `definition` in L (sql/monitoring/matured_predictions.sql), and the drop from the
    model's OOT AUC. Records the verdicts of `checks` (of `performance_evaluations`, with the
    AUC floor `floor`) per month. `approved`, `approved_default_rate`: the loans the month's
    decision approved (gold.predictions.decision = approve) and their observed default rate, the
    bad rate the cut-off let in (None when none approved). Leaves the matured predictions in the
    RESULT table."""
    thresholds, con = step.config.monitoring, step.con
    thresholds = dataclasses.replace(thresholds, auc_floor=floor)
    step.sql("monitoring/matured_predictions", {"label_def": definition.name})
    matured_rows = con.execute(f"SELECT * FROM {RESULT}").df(date_as_object=True)
    oot_auc = (model_oot_aucs(step, sorted(matured_rows["model_version"].unique()),
                              max(matured_rows["application_month"]))
               if not matured_rows.empty else {})
    rows = []
    for month in step.months:
        group = matured_rows[matured_rows["month"] == month]
        if group.empty:
            application = upstream_months(matured, [month], step.partitions)
            why = (f"no matured predictions: the application month "
                   f"{folder_label(application[0])} has no predictions whose {definition.name} "
                   f"labels {folder_label(month)} holds" if application else
                   f"no application month {definition.mob} months before")
            step.metadata(month, {"reason": why, "label_def": definition.name})
            record_verdicts(step, month, [Verdict(name, True, {"reason": why})
                                          for name in checks])
            continue
        for version, scored in group.groupby("model_version"):
            summary = metrics.summary(scored["label"], scored["score"])
            model_auc = oot_auc.get(version)
            drop = (model_auc - summary["auc"]
                    if summary["auc"] is not None and model_auc is not None else None)
            vintage = scored["application_month"].iloc[0]
            approved = scored[scored["decision"] == "approve"]
            rows.append({"month": month, "application_month": vintage, "model_version": version,
                         "label_def": definition.name,
                         **{k: summary[k] for k in ("n", "defaults", "default_rate",
                                                    "mean_score", "auc", "gini", "ks")},
                         "model_oot_auc": model_auc, "auc_drop": drop,
                         "approved": len(approved),
                         "approved_default_rate": (float(approved["label"].mean())
                                                   if len(approved) else None)})
            step.metadata(month, {"model_version": version, "vintage": folder_label(vintage),
                                  "label_def": definition.name,
                                  **{k: summary[k] for k in ("n", "default_rate", "mean_score",
                                                             "auc", "gini", "ks")},
                                  "model_oot_auc": model_auc})
            record_verdicts(step, month, [
                verdict for verdict in performance_evaluations(thresholds, version, summary,
                                                               model_auc, drop)
                if verdict.check in checks])
    return rows


def performance_compute(step: Step) -> dict[Table, str]:
    """monitoring.performance: per label month L, the performance of the predictions of
    application month L - label.mob against the target label (`matured_performance`), with the
    checks `auc_floor`, `auc_drop`; and monitoring.segment_performance: the same by the value of
    monitoring.segment_column (`segment_performance`)."""
    thresholds = step.config.monitoring
    rows = matured_performance(step, step.config.label, step.rules.matured,
                               thresholds.auc_floor, ("auc_floor", "auc_drop"))
    step.con.register("performance_rows", pa.Table.from_pylist(rows, schema=PERFORMANCE_SCHEMA))
    return {PERFORMANCE: "SELECT * FROM performance_rows",
            SEGMENT_PERFORMANCE: segment_performance(step)}


def early_read_performance_compute(step: Step) -> dict[Table, str]:
    """monitoring.early_read_performance: per label month L of the early read
    (label.early_read), the performance of the predictions of application month
    L - early_read.mob against the early-read label (`matured_performance`), with the check
    `auc_floor` at monitoring.early_read_auc_floor. No drop check: the model's out-of-time AUC
    is measured on the target label."""
    rows = matured_performance(step, step.config.early_read, step.rules.early_read_matured,
                               step.config.monitoring.early_read_auc_floor, ("auc_floor",))
    step.con.register("early_read_rows", pa.Table.from_pylist(rows, schema=PERFORMANCE_SCHEMA))
    return {EARLY_READ_PERFORMANCE: "SELECT * FROM early_read_rows"}


SEGMENT_SCHEMA = pa.schema([
    ("month", pa.date32()), ("application_month", pa.date32()), ("model_version", pa.string()),
    ("label_def", pa.string()), ("segment_column", pa.string()), ("segment", pa.string()),
    ("n", pa.int64()), ("defaults", pa.int64()), ("default_rate", pa.float64()),
    ("auc", pa.float64()), ("gini", pa.float64()),
])


def segment_performance(step: Step) -> str:
    """monitoring.segment_performance: per label month, model version and segment (a value of
    the feature store column monitoring.segment_column at the loan's application month; NULL is
    the segment `missing`), the loans, defaults, default rate, AUC and Gini of the matured
    predictions of the target label (RESULT of `matured_performance`). The check
    `segment_auc_floor` WARNs when a segment of at least monitoring.min_loans loans has an AUC
    below monitoring.auc_floor; its figures are every segment's, in the metadata."""
    thresholds, column = step.config.monitoring, step.config.monitoring.segment_column
    if column not in step.con.table("gold_feature_store").columns:
        raise LakeError(f"monitoring.segment_column: {column!r} is not a column of "
                        f"gold.feature_store")
    matured_rows = step.con.execute(
        f'SELECT m.month, m.application_month, m.model_version, m.label_def, m.score, m.label, '
        f'coalesce(f."{column}"::VARCHAR, \'missing\') AS segment FROM {RESULT} AS m '
        f"LEFT JOIN gold_feature_store AS f ON f.loan_id = m.loan_id "
        f"AND f.application_month = m.application_month").df(date_as_object=True)
    rows = []
    for keys, scored in matured_rows.groupby(
            ["month", "application_month", "model_version", "label_def", "segment"]):
        summary = metrics.summary(scored["label"], scored["score"])
        rows.append({**dict(zip(["month", "application_month", "model_version", "label_def",
                                 "segment"], keys, strict=True)),
                     "segment_column": column,
                     **{k: summary[k] for k in ("n", "defaults", "default_rate", "auc", "gini")}})
    for month in step.months:
        segments = [r for r in rows if r["month"] == month]
        judged = [r for r in segments if r["n"] >= thresholds.min_loans and r["auc"] is not None]
        below = [r for r in judged if r["auc"] < thresholds.auc_floor]
        step.check("segment_auc_floor", month, not below,
                   {"segment_column": column, "segments": len(segments),
                    "segments_judged": len(judged), "floor": thresholds.auc_floor,
                    "below_floor": ", ".join(f"{r['segment']} ({r['auc']:.3f})" for r in below)
                    or "none"},
                   severity=WARN,
                   description=(f"{column}: AUC below {thresholds.auc_floor} in "
                                f"{', '.join(r['segment'] for r in below)}") if below else None)
        if segments:
            step.metadata(month, {"segments": dg.MetadataValue.md(markdown_table(
                ["segment", "loans", "defaults", "default rate", "AUC", "Gini"],
                [[r["segment"], r["n"], r["defaults"], r["default_rate"], r["auc"], r["gini"]]
                 for r in sorted(segments, key=lambda r: -r["n"])]))}, SEGMENT_PERFORMANCE)
    step.con.register("segment_rows", pa.Table.from_pylist(rows, schema=SEGMENT_SCHEMA))
    return "SELECT * FROM segment_rows"


# -- evidently drift report -------------------------------------------------------------------

DRIFT_SCHEMA = pa.schema([
    ("month", pa.date32()), ("model_version", pa.string()), ("column_name", pa.string()),
    ("method", pa.string()), ("threshold", pa.float64()), ("value", pa.float64()),
    ("drifted", pa.bool_()), ("note", pa.string()),
])


def report_store(lake: Lake) -> FileStore:
    """Where the HTML reports go: `<warehouse>/reports`, a folder or the same prefix in the
    warehouse's bucket (so that a step in any process or pod writes them in one place)."""
    return lake.file_store("reports")


def report_file(month: date) -> str:
    """A month's drift report in the report store: `drift/YYYY-MM.html`."""
    return f"drift/{folder_label(month)}.html"


def validation_file(version: str) -> str:
    """A model version's validation report in the report store: `validation/<version>.html`
    (ml/validation_reports writes it)."""
    return f"validation/{version}.html"


def report_link(uri: str) -> str:
    """A URL for a report's URI: itself for `s3://`, a `file://` URL for a local path."""
    return uri if is_bucket(uri) else Path(uri).as_uri()


def preload_evidently() -> threading.Thread:
    """Import evidently in a background thread (it takes seconds): `vintage run` starts this
    when the run includes the drift report, so the import overlaps the steps before it, which
    spend most of their time in DuckDB and LightGBM with the interpreter lock released."""
    def load():
        from evidently import DataDefinition, Dataset, Report  # noqa: F401
        from evidently.metrics import DriftedColumnsCount, ValueDrift  # noqa: F401

    thread = threading.Thread(target=load, name="preload-evidently", daemon=True)
    thread.start()
    return thread


def evidently_drift(reference: pd.DataFrame, current: pd.DataFrame, numeric: list[str],
                    categorical: list[str]):
    """Evidently's drift test of every column (its default test per column type and size) and
    the share of drifted columns; returns evidently's snapshot. Every column must have a value
    on both sides (`columns_to_test`). Imported here: evidently takes seconds to load. The
    per-column metrics render in under a third of the time of the DataDriftPreset's table."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, ValueDrift

    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)

    def dataset(frame: pd.DataFrame) -> Dataset:
        frame = frame[numeric + categorical].copy()
        frame[numeric] = frame[numeric].astype("float64")
        return Dataset.from_pandas(frame, data_definition=definition)

    drift_tests = [ValueDrift(column=column) for column in numeric + categorical]
    with warnings.catch_warnings():  # its chi-square divides by zero for unseen categories
        warnings.simplefilter("ignore", RuntimeWarning)
        return Report([DriftedColumnsCount(), *drift_tests]).run(dataset(current),
                                                                   dataset(reference))


def drift_rows(snapshot, month: date, version: str) -> list[dict]:
    """One row per column from the report: the test, its threshold, value and verdict
    (p-value methods drift below the threshold, distance methods at or above it)."""
    rows = []
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if not config.get("type", "").endswith("ValueDrift"):
            continue
        method, value = config["method"], float(metric["value"])
        threshold = float(config["threshold"])
        drifted = value < threshold if "p_value" in method else value >= threshold
        rows.append({"month": month, "model_version": version, "column_name": config["column"],
                     "method": method, "threshold": threshold, "value": value,
                     "drifted": drifted, "note": None})
    return rows


def columns_to_test(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]
                    ) -> tuple[list[str], dict[str, str]]:
    """The columns a drift test can compare, and why each other one cannot: a column with no
    value on one side, NULL or, for a number, infinite (evidently drops those and refuses the
    empty column; for the month it is a data outage, which monitoring.stability reports as
    missing data)."""
    notes = {}
    for column in columns:
        empty = [side for side, frame in (("month", current), ("reference", reference))
                 if _values(frame[column]) == 0]
        if empty:
            notes[column] = f"not tested: no value in the {' or the '.join(empty)}"
    return [c for c in columns if c not in notes], notes


def _values(column: pd.Series) -> int:
    """How many values a drift test can use: not NULL and, for a number, finite."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        return int(np.isfinite(column.astype("float64")).sum())
    return int(column.notna().sum())


def write_report(snapshot, store: FileStore, month: date) -> str:
    """Save the report's HTML as report_file(month) of `store`, whole or not at all; returns
    its URI (a local path, or `s3://...`). Raises StorageError when it cannot be written."""
    html = snapshot.get_html_str(as_iframe=False).encode()
    return store.write_bytes(report_file(month), html)


def drift_compute(step: Step) -> dict[Table, str]:
    """monitoring.drift: per month with predictions by its champion, evidently's drift test of
    the score and the champion's most important features against its OOT reference, one row
    per column (a column with no value on a side is listed, not tested; a feature of a source
    below its coverage floor is noted as tested during an outage), and the HTML report at
    report_file(month) of report_store (linked from the month's metadata)."""
    thresholds, con = step.config.monitoring, step.con
    rows: list[dict] = []
    champions = read_champions(step) if thresholds.drift_report else {}
    scored = predictions_by_version(con)
    failing = failing_sources(con)
    read_references(step, (champions[m] for m in step.months if m in champions))
    for month in step.months:
        record = champions.get(month)
        if not thresholds.drift_report:
            step.metadata(month, {"reason": "drift reports are off (monitoring.drift_report)"})
            continue
        loans = register_actual(con, month, record["model_version"]) if record else 0
        if not loans:
            step.metadata(month, {"reason": unscored_reason(month, record, scored.get(month, {}))})
            continue
        if not register_reference(con, record):
            step.metadata(month, {"reason": f"no reference: ml.score_reference has no "
                                            f"out-of-time scores of {record['model_version']}"})
            continue
        version = record["model_version"]
        numeric, categorical = feature_kinds(record, thresholds.drift_report_features)
        current = con.execute("SELECT * FROM actual_rows").df()
        reference = con.execute("SELECT * FROM reference_rows").df()
        tested, notes = columns_to_test(reference, current, [SCORE, *numeric, *categorical])
        untested = [{"month": month, "model_version": version, "column_name": column,
                     "method": None, "threshold": None, "value": None, "drifted": None,
                     "note": note} for column, note in notes.items()]
        rows += untested
        if not tested:
            step.metadata(month, {"reason": "no column with values on both sides to test",
                                  "columns_not_tested": len(untested)})
            continue
        snapshot = evidently_drift(reference, current,
                                   [c for c in [SCORE, *numeric] if c in tested],
                                   [c for c in categorical if c in tested])
        report = write_report(snapshot, report_store(step.lake), month)
        month_rows = drift_rows(snapshot, month, version)
        outages = failing.get(month, {})
        for row in month_rows:
            source = source_of_feature(row["column_name"])
            if row["column_name"] != SCORE and source in outages:
                coverage, floor = outages[source]
                row["note"] = (f"tested during an outage: {source} covers {coverage:.0%} of the "
                               f"month's applications, below its floor {floor:.0%} "
                               f"(gold.source_coverage): missing data, not drift")
        rows += month_rows
        drifted = sorted(r["column_name"] for r in month_rows if r["drifted"])
        step.metadata(month, {
            "model_version": version,
            "report": dg.MetadataValue.url(report_link(report)),
            "report_path": dg.MetadataValue.path(report),
            "columns_drifted": len(drifted),
            "share_drifted": len(drifted) / len(month_rows) if month_rows else 0.0,
            "drifted": ", ".join(drifted) or "none",
            "columns_not_tested": len(untested),
            **({"not_tested": ", ".join(notes)} if notes else {}),
            **({"sources_in_outage": ", ".join(sorted(outages))} if outages else {}),
        })
    step.result_metadata["reports_folder"] = dg.MetadataValue.path(
        report_store(step.lake).uri_of("drift"))
    con.register("drift_rows", pa.Table.from_pylist(rows, schema=DRIFT_SCHEMA))
    return {DRIFT: "SELECT * FROM drift_rows"}


# -- recommendation ---------------------------------------------------------------------------

RECOMMENDATION_SCHEMA = pa.schema([
    ("month", pa.date32()), ("model_version", pa.string()), ("recommendation", pa.string()),
    ("reasons", pa.string()), ("reasons_json", pa.string()),
])
# A data outage outranks a retrain: retraining on a month whose feed stopped learns the outage.
SEVERITY = {"retain": 0, "watch": 1, "retrain": 2, "data_outage": 3}


def recommend(thresholds: MonitoringSettings, score_psi: float | None,
              feature_csi: Mapping[str, float], performance_row: Mapping | None,
              failing_sources: Mapping[str, tuple[float, float]] | None = None,
              missing_features: Mapping[str, tuple[float, float]] | None = None
              ) -> tuple[str, list[dict]]:
    """retain, watch, retrain or data_outage, with each reason: a dict of `action`, `metric`,
    `value`, `threshold`, `comparison`. `score_psi`: None when the month has no stability;
    `feature_csi`: CSI of the features not in an outage; `performance_row`: the month's
    monitoring.performance row (`auc`, `auc_drop`, `n`) or None; `failing_sources`: source ->
    (coverage, floor) of the sources below their floor (gold.source_coverage);
    `missing_features`: feature -> (missing share, reference missing share) of the features in
    the outage band. An outage makes the month `data_outage`: fix the feed, don't retrain."""
    reasons = []

    def reason(action, metric, value, threshold, comparison):
        reasons.append({"action": action, "metric": metric, "value": float(value),
                        "threshold": float(threshold), "comparison": comparison})

    for source, (coverage, floor) in sorted((failing_sources or {}).items()):
        reason("data_outage", f"coverage:{source}", coverage, floor, "<")
    by_source: dict[str, list[tuple[str, float, float]]] = {}
    for feature, (share, reference) in (missing_features or {}).items():
        by_source.setdefault(source_of_feature(feature), []).append((feature, share, reference))
    for source, features in sorted(by_source.items()):
        share = max(f[1] for f in features)
        reference = max(f[2] for f in features)
        reason("data_outage", f"missing:{source} ({len(features)} features)", share,
               reference + thresholds.outage_missing_increase, ">=")
    if score_psi is not None:
        if score_psi >= thresholds.psi_act:
            reason("retrain", "score_psi", score_psi, thresholds.psi_act, ">=")
        elif score_psi >= thresholds.psi_watch:
            reason("watch", "score_psi", score_psi, thresholds.psi_watch, ">=")
    for feature, csi in sorted(feature_csi.items(), key=lambda kv: -kv[1]):
        if csi >= thresholds.psi_act:
            reason("watch", f"csi:{feature}", csi, thresholds.psi_act, ">=")
    if performance_row and not _missing(performance_row.get("auc")) \
            and performance_row.get("n", 0) >= thresholds.min_loans:
        auc = performance_row["auc"]
        if auc < thresholds.auc_floor:
            reason("retrain", "auc", auc, thresholds.auc_floor, "<")
        drop = performance_row.get("auc_drop")
        if not _missing(drop) and drop > thresholds.max_auc_drop:
            reason("retrain", "auc_drop", drop, thresholds.max_auc_drop, ">")
    action = max((r["action"] for r in reasons), key=SEVERITY.get, default="retain")
    return action, reasons


def _missing(value) -> bool:
    """None, or the NaN pandas puts for a NULL."""
    return value is None or (isinstance(value, float) and value != value)


def describe_reasons(reasons: list[dict]) -> str:
    if not reasons:
        return "every metric within its threshold"
    return "; ".join(f"{r['metric']} {r['value']:.4f} {r['comparison']} {r['threshold']:.4g} "
                     f"({r['action']})" for r in reasons)


def recommendation_compute(step: Step) -> dict[Table, str]:
    """monitoring.recommendation: per month with stability, matured performance or a source
    below its floor, the most severe of retain / watch / retrain / data_outage and every
    reason (`recommend`)."""
    thresholds, con = step.config.monitoring, step.con
    failing = failing_sources(con)
    stability = con.execute("SELECT * FROM monitoring_stability").df(date_as_object=True)
    performance = con.execute("SELECT * FROM monitoring_performance").df(date_as_object=True)
    rows = []
    for month in step.months:
        month_stability = stability[stability["month"] == month]
        month_performance = performance[performance["month"] == month]
        if month_stability.empty and month_performance.empty and month not in failing:
            step.metadata(month, {"reason": "no predictions and no matured labels this month"})
            continue
        by_variable = month_stability.set_index("variable")
        features = by_variable.drop(index=SCORE, errors="ignore")
        outage = features[features["band"] == "outage"]
        performance_row = (month_performance.iloc[0].to_dict()
                           if not month_performance.empty else None)
        action, reasons = recommend(
            thresholds,
            float(by_variable.loc[SCORE, "psi"]) if SCORE in by_variable.index else None,
            {k: float(v) for k, v in features[features["band"] != "outage"]["psi"].items()},
            performance_row, failing.get(month),
            {k: (float(r.actual_missing_share), float(r.reference_missing_share))
             for k, r in outage.iterrows()})
        version = (month_stability["model_version"].iloc[0] if not month_stability.empty
                   else performance_row["model_version"] if performance_row else None)
        rows.append({"month": month, "model_version": version, "recommendation": action,
                     "reasons": describe_reasons(reasons), "reasons_json": json.dumps(reasons)})
        step.metadata(month, {"recommendation": action, "reasons": describe_reasons(reasons),
                              "model_version": version or "none"})
    con.register("recommendation_rows", pa.Table.from_pylist(rows, schema=RECOMMENDATION_SCHEMA))
    return {RECOMMENDATION: "SELECT * FROM recommendation_rows"}


# -- summary ----------------------------------------------------------------------------------

SUMMARY_INPUTS = {STABILITY: "all_stability", PERFORMANCE: "all_performance",
                  DRIFT: "all_drift", RECOMMENDATION: "all_recommendation"}


def summary_compute(step: Step) -> dict[Table, str]:
    """monitoring.summary: one row per month (sql/monitoring/summary.sql) and, on the run's
    last month, plots over every month published up to it. A month of the run that one of the
    four tables has not published is a LakeError naming it."""
    con, last = step.con, max(step.months)
    for table, view in SUMMARY_INPUTS.items():
        step.read(view, sorted(set(published_up_to(step, table, last)) | set(step.months)))
    step.sql("monitoring/summary")
    con.execute(f"CREATE OR REPLACE TEMP TABLE summary_rows AS SELECT * FROM {RESULT} "
                "WHERE list_contains($months, month)", {"months": step.months})
    for month in step.months:
        step.metadata(month, {"plots_up_to": folder_label(last)})
    step.metadata(last, summary_plots(con, step.config.monitoring))
    return {SUMMARY: "SELECT * FROM summary_rows"}


def summary_plots(con: duckdb.DuckDBPyConnection, thresholds: MonitoringSettings) -> dict:
    """PSI by variable over months (the score and the most drifting features) and AUC / Gini
    over label months, as Markdown images, from the `all_stability` and `all_performance`
    views; a plot without data is left out."""
    stability_history = con.execute(
        "SELECT month, variable, psi FROM all_stability ORDER BY month").df(date_as_object=True)
    plots = {}
    if not stability_history.empty:
        wide = stability_history.pivot_table(index="month", columns="variable", values="psi")
        top = (wide.drop(columns=[SCORE], errors="ignore").max()
               .sort_values(ascending=False).head(5).index)
        shown = [name for name in [SCORE, *top] if name in wide.columns]
        plots["psi_over_months"] = dg.MetadataValue.md(line_chart(
            list(wide.index), {name: wide[name].tolist() for name in shown},
            "PSI of the score and the most drifting features", "PSI",
            {"watch": thresholds.psi_watch, "act": thresholds.psi_act}))
    performance_history = con.execute(
        "SELECT month, auc, gini FROM all_performance ORDER BY month").df(date_as_object=True)
    if not performance_history.empty:
        plots["auc_gini_over_months"] = dg.MetadataValue.md(line_chart(
            performance_history["month"].tolist(),
            {"AUC": performance_history["auc"].tolist(),
             "Gini": performance_history["gini"].tolist()},
            "AUC and Gini of matured predictions, by label month", "value",
            {"AUC floor": thresholds.auc_floor}))
    return plots


# -- the specs --------------------------------------------------------------------------------


def monitoring_specs(build: Build) -> list[TableSpec]:
    """Stability, performance (and segment performance), early-read performance, drift, the
    recommendation and the summary, with their checks (thresholds from
    `build.config.monitoring`)."""
    thresholds, rules = build.config.monitoring, build.rules
    scored = (Input(PREDICTIONS, "gold_predictions"),
              Input(FEATURE_STORE, "gold_feature_store"),
              Input(MODEL_ALIASES, "ml_model_aliases"))
    reference = (Input(MODEL_REGISTRY, "ml_model_registry", lookup=True),
                 Input(TRAINING_SET, "gold_training_set", lookup=True),
                 Input(SCORE_REFERENCE, "ml_score_reference", lookup=True))
    registry_key = dg.AssetSelection.assets(asset_key(MODEL_REGISTRY))
    return [
        TableSpec(
            table=STABILITY, compute=stability_compute,
            inputs=(*scored, Input(SOURCE_COVERAGE, "gold_source_coverage"), *reference),
            checks=stability_checks(thresholds)),
        TableSpec(
            table=PERFORMANCE, compute=performance_compute, also_writes=(SEGMENT_PERFORMANCE,),
            inputs=(Input(PREDICTIONS, "gold_predictions", rules.matured),
                    Input(LABEL_STORE, "gold_label_store"),
                    Input(FEATURE_STORE, "gold_feature_store", rules.matured),
                    Input(MODEL_REGISTRY, "ml_model_registry", lookup=True)),
            checks=(*performance_checks(thresholds),
                    Check("segment_auc_floor",
                          f"WARN when a {thresholds.segment_column} segment "
                          f"(monitoring.segment_column) of at least {thresholds.min_loans} "
                          f"loans has an AUC below {thresholds.auc_floor}")),
            # When a label month's labels land, its performance is measured (the label_maturity
            # sensor). The registry (every month, for the OOT AUC) neither triggers it nor
            # holds it back: the record of a model that scored is always there.
            automation_condition=dg.AutomationCondition.eager().ignore(registry_key)),
        TableSpec(
            table=EARLY_READ_PERFORMANCE, compute=early_read_performance_compute,
            inputs=(Input(PREDICTIONS, "gold_predictions", rules.early_read_matured),
                    Input(LABEL_STORE, "gold_label_store"),
                    Input(MODEL_REGISTRY, "ml_model_registry", lookup=True)),
            checks=(Check("auc_floor",
                          f"AUC of the predictions against the early-read label at least "
                          f"{thresholds.early_read_auc_floor} (monitoring.early_read_auc_floor);"
                          f" only WARN without both classes or on fewer than "
                          f"{thresholds.min_loans} loans"),),
            automation_condition=dg.AutomationCondition.eager().ignore(registry_key)),
        TableSpec(
            table=DRIFT, compute=drift_compute,
            inputs=(*scored, Input(SOURCE_COVERAGE, "gold_source_coverage"), *reference),
            kinds=frozenset({"duckdb", "deltalake", "evidently"})),
        TableSpec(
            table=RECOMMENDATION, compute=recommendation_compute,
            inputs=(Input(STABILITY, "monitoring_stability"),
                    Input(PERFORMANCE, "monitoring_performance"),
                    Input(SOURCE_COVERAGE, "gold_source_coverage"))),
        TableSpec(
            table=SUMMARY, compute=summary_compute,
            inputs=tuple(Input(table, view, lookup=True)
                         for table, view in SUMMARY_INPUTS.items())),
    ]
