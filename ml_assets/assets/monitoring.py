"""Monitoring: stability every prediction month, performance when labels mature, an evidently
drift report, a retain / watch / retrain recommendation and a summary with plots.

The reference of a prediction month is its champion's out-of-time set: the OOT rows of the
training set the champion was trained on (features) and ml.score_reference (scores).
"""

import json
import os
import threading
import warnings
from datetime import date

import dagster as dg
import duckdb
import pandas as pd
import pyarrow as pa

from ml_assets import metrics
from ml_assets.assets.lake import RESULT, compute, describe_table, monthly_asset, publish
from ml_assets.assets.models import ALIAS, CHAMPION, as_dates
from ml_assets.checks import check_outputs, evaluation, spec
from ml_assets.metadata import markdown_table
from ml_assets.months import folder_label
from ml_assets.partitions import run_months, upstream_months
from ml_assets.plots import bar_chart, line_chart
from ml_assets.settings import settings, source_of_feature
from ml_assets.tables import (
    DRIFT,
    FEATURE_STORE,
    LABEL_STORE,
    MODEL_ALIASES,
    MODEL_REGISTRY,
    PERFORMANCE,
    PREDICTIONS,
    RECOMMENDATION,
    SCORE_REFERENCE,
    SOURCE_COVERAGE,
    STABILITY,
    SUMMARY,
    TRAINING_SET,
    asset_key,
)
from resources.warehouse import Warehouse, sql_text

THRESHOLDS = settings().monitoring
MOB = settings().label.mob
SCORE = "score"
TOP = 10
WARN, ERROR = dg.AssetCheckSeverity.WARN, dg.AssetCheckSeverity.ERROR

# Performance of label month L is measured on the predictions of application month L - mob.
matured_predictions = dg.TimeWindowPartitionMapping(
    start_offset=-MOB, end_offset=-MOB, allow_nonexistent_upstream_partitions=True)


def champions_of(warehouse: Warehouse, con: duckdb.DuckDBPyConnection, months: list[date]
                 ) -> dict[date, dict]:
    """The champion's registry record of each month that has one."""
    warehouse.register_input(con, "aliases", MODEL_ALIASES, months)
    rows = con.execute("SELECT month, model_version, trained_month FROM aliases "
                       "WHERE alias = $alias AND model_version IS NOT NULL",
                       {"alias": ALIAS}).fetchall()
    if not rows:
        return {}
    warehouse.register_input(con, "registry", MODEL_REGISTRY, sorted({r[2] for r in rows}))
    records = as_dates(con.execute("SELECT * FROM registry").df(), "trained_month", "oot_month")
    by_version = {r["model_version"]: r for r in records.to_dict("records")}
    return {month: by_version[version] for month, version, _ in rows}


def register_reference(warehouse: Warehouse, con: duckdb.DuckDBPyConnection, record: dict) -> None:
    """`reference_rows`: the model's out-of-time loans, their features and reference scores."""
    trained = record["trained_month"]
    warehouse.register_input(con, "reference_features", TRAINING_SET, [trained])
    warehouse.register_input(con, "reference_scores", SCORE_REFERENCE, [trained])
    con.execute(
        "CREATE OR REPLACE TEMP TABLE reference_rows AS SELECT features.*, scores.score "
        "FROM reference_features AS features JOIN reference_scores AS scores USING (loan_id) "
        "WHERE features.split = 'oot' AND scores.model_version = $version",
        {"version": record["model_version"]})


def failing_sources(warehouse: Warehouse, con: duckdb.DuckDBPyConnection, months: list[date]
                    ) -> dict[date, dict[str, tuple[float, float]]]:
    """Per month, the sources below their coverage floor (gold.source_coverage): source ->
    (coverage, floor)."""
    warehouse.register_input(con, "coverage_rows", SOURCE_COVERAGE, months)
    failing: dict[date, dict] = {}
    for month, source, coverage, floor in con.execute(
            "SELECT application_month, source, coverage, floor FROM coverage_rows "
            "WHERE status = 'error'").fetchall():
        failing.setdefault(month, {})[source] = (coverage, floor)
    return failing


def register_actual(con: duckdb.DuckDBPyConnection, month: date) -> None:
    """`actual_rows`: the month's loans, their features and the champion's scores."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE actual_rows AS SELECT features.*, scored.score "
        "FROM features JOIN scored USING (loan_id) WHERE features.application_month = $month",
        {"month": month})


def feature_kinds(record: dict, most_important: int | None = None
                  ) -> tuple[list[str], list[str]]:
    """The model's numeric and categorical features; with `most_important`, only that many of
    its features, by importance (the registry keeps them in that order)."""
    chosen = list(record["features"])
    if most_important is not None:
        chosen = list(json.loads(record["importances"]))[:most_important]
    categorical = [f for f in chosen if f in set(record["categorical_features"])]
    return [f for f in chosen if f not in categorical], categorical


# -- stability -------------------------------------------------------------------------------

STABILITY_KEY = asset_key(STABILITY)
STABILITY_CHECKS = {
    "score_psi": spec(STABILITY_KEY, "score_psi",
                      f"Score PSI against the reference: WARN in the watch band "
                      f"(>= {THRESHOLDS.psi_watch}), ERROR in the act band "
                      f"(>= {THRESHOLDS.psi_act}); only WARN on fewer than "
                      f"{THRESHOLDS.min_loans} loans (monitoring.min_loans)"),
    "feature_csi": spec(STABILITY_KEY, "feature_csi",
                        f"WARN when a model feature's CSI is in the act band "
                        f"(>= {THRESHOLDS.psi_act}); features in an outage are checked apart"),
    "features_missing": spec(STABILITY_KEY, "features_missing",
                             f"ERROR when a model feature is missing in a share of the month's "
                             f"loans at least {THRESHOLDS.outage_missing_increase:.0%} above the "
                             f"reference's (monitoring.outage_missing_increase): a data outage"),
}


STABILITY_SCHEMA = pa.schema([
    ("month", pa.date32()), ("model_version", pa.string()), ("variable", pa.string()),
    ("kind", pa.string()), ("psi", pa.float64()), ("band", pa.string()), ("bins", pa.int32()),
    ("bin_edges", pa.list_(pa.float64())), ("reference_n", pa.int64()),
    ("actual_n", pa.int64()), ("reference_missing_share", pa.float64()),
    ("actual_missing_share", pa.float64()),
])


def psi_band_check(check: dg.AssetCheckSpec, month: date, psi: float | None,
                   metadata: dict, loans: int | None = None,
                   during: str | None = None) -> dg.AssetCheckEvaluation:
    """Stable passes; the watch band fails as a WARN, the act band as an ERROR; with fewer
    than `monitoring.min_loans` loans, a WARN at most (too few to judge). `during` names a data
    outage of the month, which the description then mentions."""
    if psi is None or psi < THRESHOLDS.psi_watch:
        return evaluation(check, month, True, metadata)
    acting = psi >= THRESHOLDS.psi_act
    band, bound = ("act", THRESHOLDS.psi_act) if acting else ("watch", THRESHOLDS.psi_watch)
    description = f"score PSI {psi:.4f} in the {band} band (>= {bound})" + (
        f", during a {during}" if during else "")
    if loans is not None and loans < THRESHOLDS.min_loans:
        return evaluation(check, month, False, metadata, severity=WARN,
                          description=f"{description}, on only {loans} loans: too few to judge "
                                      f"(monitoring.min_loans {THRESHOLDS.min_loans})")
    return evaluation(check, month, False, metadata, severity=ERROR if acting else WARN,
                      description=description)


def describe_outage(outage: pd.DataFrame, loans: int) -> str:
    """One line for the features of a month in the outage band, by source (a feed that stopped
    shows as one line, not forty). `outage`: stability rows indexed by variable."""
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


@monthly_asset(
    **describe_table(STABILITY, checks=STABILITY_CHECKS.values()),
    deps=[dg.AssetDep(asset_key(PREDICTIONS)), dg.AssetDep(asset_key(FEATURE_STORE)),
          dg.AssetDep(CHAMPION), dg.AssetDep(asset_key(SOURCE_COVERAGE))],
)
def stability(context: dg.AssetExecutionContext, warehouse: Warehouse):
    months = run_months(context)
    evaluations, results, per_month = [], [], {}
    with warehouse.connect() as con:
        champions = champions_of(warehouse, con, months)
        failing = failing_sources(warehouse, con, months)
        warehouse.register_input(con, "features", FEATURE_STORE, months)
        warehouse.register_input(con, "scored", PREDICTIONS, months)
        for month in months:
            record = champions.get(month)
            scored = con.execute("SELECT count(*) FROM scored WHERE application_month = $m",
                                 {"m": month}).fetchall()[0][0]
            if record is None or scored == 0:
                per_month[month] = {"reason": "no predictions this month"}
                evaluations += [evaluation(c, month, True, {"reason": "no predictions"})
                                for c in STABILITY_CHECKS.values()]
                continue
            register_reference(warehouse, con, record)
            register_actual(con, month)
            numeric, categorical = feature_kinds(record)
            frame = con.execute(sql_text("monitoring/stability"), {
                "numeric": [SCORE, *numeric], "categorical": categorical,
                "floor": THRESHOLDS.psi_floor, "watch": THRESHOLDS.psi_watch,
                "act": THRESHOLDS.psi_act, "outage": THRESHOLDS.outage_missing_increase,
                "outage_variables": [f for f in record["features"]
                                     if source_of_feature(f) in failing.get(month, {})],
                "month": month, "model_version": record["model_version"]}).df()
            results.append(frame)
            evaluations += stability_evaluations(month, frame.set_index("variable"), scored)
            per_month[month] = stability_metadata(month, record, frame.set_index("variable"))
        rows = as_dates(pd.concat(results, ignore_index=True), "month") if results else None
        con.register("stability_rows", pa.Table.from_pandas(
            rows if rows is not None else STABILITY_SCHEMA.empty_table().to_pandas(),
            schema=STABILITY_SCHEMA, preserve_index=False))
        publish(context, warehouse, con, STABILITY, "SELECT * FROM stability_rows", months,
                per_month)
    yield from evaluations
    yield dg.MaterializeResult()
    yield from check_outputs(context)


def stability_evaluations(month: date, frame: pd.DataFrame, loans: int) -> list:
    """The month's stability checks from its rows (indexed by variable): the score's band, the
    features in the act band, and the features in an outage (missing data, apart from drift)."""
    features = frame.drop(index=SCORE)
    outage = features[features["band"] == "outage"]
    acting = features[features["band"] == "act"]
    score_psi = float(frame.loc[SCORE, "psi"])
    outage_text = describe_outage(outage, loans) if len(outage) else None
    score_check = psi_band_check(
        STABILITY_CHECKS["score_psi"], month, score_psi,
        {"score_psi": score_psi, "band": frame.loc[SCORE, "band"], "loans": loans}, loans,
        during=outage_text)
    few = loans < THRESHOLDS.min_loans
    return [
        score_check,
        evaluation(STABILITY_CHECKS["feature_csi"], month, acting.empty,
                   {"features_in_act_band": ", ".join(acting.index) or "none"}, severity=WARN,
                   description=None if acting.empty else
                   f"CSI >= {THRESHOLDS.psi_act}: " + ", ".join(
                       f"{name} {value:.3f}" for name, value in acting["psi"].items())),
        evaluation(STABILITY_CHECKS["features_missing"], month, outage.empty,
                   {"features_in_outage": len(outage), "loans": loans},
                   severity=WARN if few else ERROR, description=outage_text),
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
        "score_band": frame.loc[SCORE, "band"],
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


# -- performance -----------------------------------------------------------------------------

PERFORMANCE_KEY = asset_key(PERFORMANCE)
PERFORMANCE_CHECKS = {
    "auc_floor": spec(PERFORMANCE_KEY, "auc_floor",
                      f"AUC of the matured predictions at least {THRESHOLDS.auc_floor}"),
    "auc_drop": spec(PERFORMANCE_KEY, "auc_drop",
                     f"AUC at most {THRESHOLDS.max_auc_drop} below the model's out-of-time AUC"),
}
PERFORMANCE_SCHEMA = pa.schema([
    ("month", pa.date32()), ("application_month", pa.date32()), ("model_version", pa.string()),
    ("n", pa.int64()), ("defaults", pa.int64()), ("default_rate", pa.float64()),
    ("mean_score", pa.float64()), ("auc", pa.float64()), ("gini", pa.float64()),
    ("ks", pa.float64()), ("model_oot_auc", pa.float64()), ("auc_drop", pa.float64()),
])


@monthly_asset(
    **describe_table(PERFORMANCE, checks=PERFORMANCE_CHECKS.values()),
    deps=[dg.AssetDep(asset_key(PREDICTIONS), partition_mapping=matured_predictions),
          dg.AssetDep(asset_key(LABEL_STORE))],
    # When a label month's labels land, its performance is measured (the daemon does this).
    automation_condition=dg.AutomationCondition.eager(),
)
def performance(context: dg.AssetExecutionContext, warehouse: Warehouse):
    months = run_months(context)
    evaluations, rows, per_month = [], [], {}
    with warehouse.connect() as con:
        warehouse.register_input(con, "gold_predictions", PREDICTIONS,
                                 upstream_months(matured_predictions, months))
        warehouse.register_input(con, "gold_label_store", LABEL_STORE, months)
        matured = as_dates(con.execute(sql_text("monitoring/matured_predictions")).df(),
                           "month", "application_month")
        oot_auc = {}
        if not matured.empty:  # the registry is small: read it whole
            warehouse.register_input(con, "registry", MODEL_REGISTRY,
                                     warehouse.published_months(MODEL_REGISTRY))
            oot_auc = dict(con.execute("SELECT model_version, oot_auc FROM registry").fetchall())
        for month in months:
            group = matured[matured["month"] == month]
            if group.empty:
                why = (f"no matured predictions: the application month "
                       f"{folder_label(upstream_months(matured_predictions, [month])[0])} "
                       f"has no predictions, or its labels are not observed yet"
                       if upstream_months(matured_predictions, [month]) else
                       "no application month mob months earlier")
                per_month[month] = {"reason": why}
                evaluations += [evaluation(c, month, True, {"reason": why})
                                for c in PERFORMANCE_CHECKS.values()]
                continue
            for version, scored in group.groupby("model_version"):
                summary = metrics.summary(scored["label"], scored["score"])
                drop = (oot_auc.get(version) - summary["auc"]
                        if summary["auc"] is not None and oot_auc.get(version) is not None
                        else None)
                rows.append({"month": month,
                             "application_month": scored["application_month"].iloc[0],
                             "model_version": version, **{k: summary[k] for k in (
                                 "n", "defaults", "default_rate", "mean_score", "auc", "gini",
                                 "ks")},
                             "model_oot_auc": oot_auc.get(version), "auc_drop": drop})
                per_month[month] = {"model_version": version, "vintage": folder_label(
                    scored["application_month"].iloc[0]), **{k: summary[k] for k in (
                        "n", "default_rate", "mean_score", "auc", "gini", "ks")},
                    "model_oot_auc": oot_auc.get(version)}
                evaluations += performance_evaluations(month, version, summary,
                                                       oot_auc.get(version), drop)
        con.register("performance_rows", pa.Table.from_pylist(rows, schema=PERFORMANCE_SCHEMA))
        publish(context, warehouse, con, PERFORMANCE, "SELECT * FROM performance_rows", months,
                per_month)
    yield from evaluations
    yield dg.MaterializeResult()
    yield from check_outputs(context)


def performance_evaluations(month: date, version: str, summary: dict, model_oot_auc: float | None,
                            drop: float | None) -> list:
    """The AUC floor and AUC drop checks of one label month's matured predictions. Without both
    classes the AUC is not measurable, and on fewer than `monitoring.min_loans` loans it is too
    noisy to judge: both are a WARN saying so, never an ERROR."""
    auc, n, defaults = summary["auc"], summary["n"], summary["defaults"]
    figures = {"auc": auc, "loans": n, "defaults": defaults, "model_oot_auc": model_oot_auc}
    if auc is None or n < THRESHOLDS.min_loans:
        why = (f"AUC of {version} not measurable: {n} loans, {defaults} defaults (one class only)"
               if auc is None else
               f"AUC {auc:.4f} of {version} on only {n} loans: too few to judge "
               f"(monitoring.min_loans {THRESHOLDS.min_loans})")
        return [evaluation(check, month, False, figures, severity=WARN, description=why)
                for check in PERFORMANCE_CHECKS.values()]
    floor_ok = auc >= THRESHOLDS.auc_floor
    drop_ok = drop is not None and drop <= THRESHOLDS.max_auc_drop
    return [
        evaluation(PERFORMANCE_CHECKS["auc_floor"], month, floor_ok,
                   {**figures, "floor": THRESHOLDS.auc_floor},
                   description=None if floor_ok else
                   f"AUC {auc:.4f} of {version} below the floor {THRESHOLDS.auc_floor}"),
        evaluation(PERFORMANCE_CHECKS["auc_drop"], month, drop_ok,
                   {**figures, "drop": drop, "max_drop": THRESHOLDS.max_auc_drop},
                   description=None if drop_ok else
                   f"AUC drop of {version} not measurable: no OOT AUC in the registry"
                   if drop is None else
                   f"AUC {auc:.4f} of {version} is {drop:.4f} below its OOT AUC "
                   f"{model_oot_auc:.4f} (more than {THRESHOLDS.max_auc_drop})"),
    ]


# -- evidently drift report ------------------------------------------------------------------

DRIFT_SCHEMA = pa.schema([
    ("month", pa.date32()), ("model_version", pa.string()), ("column_name", pa.string()),
    ("method", pa.string()), ("threshold", pa.float64()), ("value", pa.float64()),
    ("drifted", pa.bool_()), ("note", pa.string()),
])


def report_path(warehouse: Warehouse, month: date):
    return warehouse.root / "reports" / "drift" / f"{folder_label(month)}.html"


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
    the share of drifted columns. Imported here: evidently takes seconds to load. The
    per-column metrics render a third of the time of the DataDriftPreset's table."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, ValueDrift

    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)

    def dataset(frame: pd.DataFrame) -> "Dataset":
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
    value on one side (evidently refuses it; for the month it is a data outage, which
    monitoring.stability reports as missing data)."""
    notes = {}
    for column in columns:
        empty = [side for side, frame in (("month", current), ("reference", reference))
                 if frame[column].notna().sum() == 0]
        if empty:
            notes[column] = f"not tested: no value in the {' or the '.join(empty)}"
    return [c for c in columns if c not in notes], notes


@monthly_asset(
    **describe_table(DRIFT),
    deps=[dg.AssetDep(asset_key(FEATURE_STORE)), dg.AssetDep(CHAMPION),
          dg.AssetDep(asset_key(PREDICTIONS))],
)
def drift_report(context: dg.AssetExecutionContext, warehouse: Warehouse) -> None:
    months = run_months(context)
    rows, per_month = [], {}
    with warehouse.connect() as con:
        champions = champions_of(warehouse, con, months)
        warehouse.register_input(con, "features", FEATURE_STORE, months)
        warehouse.register_input(con, "scored", PREDICTIONS, months)
        for month in months:
            record = champions.get(month)
            if not THRESHOLDS.drift_report or record is None:
                per_month[month] = {"reason": "drift reports are off (monitoring.drift_report)"
                                    if record else "no champion this month"}
                continue
            register_reference(warehouse, con, record)
            register_actual(con, month)
            current = con.execute("SELECT * FROM actual_rows").df()
            if current.empty:
                per_month[month] = {"reason": "no predictions this month"}
                continue
            numeric, categorical = feature_kinds(record, THRESHOLDS.drift_report_features)
            reference = con.execute("SELECT * FROM reference_rows").df()
            tested, notes = columns_to_test(reference, current, [SCORE, *numeric, *categorical])
            untested = [{"month": month, "model_version": record["model_version"],
                         "column_name": column, "method": None, "threshold": None,
                         "value": None, "drifted": None, "note": note}
                        for column, note in notes.items()]
            if not tested:
                rows += untested
                per_month[month] = {"reason": "no column with values on both sides to test",
                                    "columns_not_tested": len(untested)}
                continue
            snapshot = evidently_drift(reference, current,
                                       [c for c in [SCORE, *numeric] if c in tested],
                                       [c for c in categorical if c in tested])
            path = report_path(warehouse, month)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            snapshot.save_html(str(partial))
            os.replace(partial, path)
            month_rows = drift_rows(snapshot, month, record["model_version"])
            rows += month_rows + untested
            drifted = sorted(r["column_name"] for r in month_rows if r["drifted"])
            per_month[month] = {
                "report": dg.MetadataValue.url(path.resolve().as_uri()),
                "report_path": dg.MetadataValue.path(str(path)),
                "columns_drifted": len(drifted),
                "share_drifted": len(drifted) / len(month_rows) if month_rows else 0.0,
                "drifted": ", ".join(drifted) or "none",
                "columns_not_tested": len(untested),
                **({"not_tested": ", ".join(notes)} if notes else {}),
            }
        con.register("drift_rows", pa.Table.from_pylist(rows, schema=DRIFT_SCHEMA))
        publish(context, warehouse, con, DRIFT, "SELECT * FROM drift_rows", months, per_month)


# -- recommendation --------------------------------------------------------------------------

RECOMMENDATION_SCHEMA = pa.schema([
    ("month", pa.date32()), ("model_version", pa.string()), ("recommendation", pa.string()),
    ("reasons", pa.string()), ("reasons_json", pa.string()),
])
# A data outage outranks a retrain: retraining on a month whose feed stopped learns the outage.
SEVERITY = {"retain": 0, "watch": 1, "retrain": 2, "data_outage": 3}


def recommend(score_psi: float | None, feature_csi: dict[str, float],
              performance_row: dict | None, failing_sources: dict[str, tuple[float, float]]
              | None = None, missing_features: dict[str, tuple[float, float]] | None = None
              ) -> tuple[str, list[dict]]:
    """retain, watch, retrain or data_outage, with each reason: the metric, its value, the
    threshold. `feature_csi`: CSI of the features not in an outage; `failing_sources`: source ->
    (coverage, floor) of the sources below their floor (gold.source_coverage);
    `missing_features`: feature -> (missing share, reference missing share) of the features in
    the outage band. An outage makes the month `data_outage`: fix the feed, don't retrain."""
    reasons = []

    def reason(action, metric, value, threshold, comparison):
        reasons.append({"action": action, "metric": metric, "value": value,
                        "threshold": threshold, "comparison": comparison})

    for source, (coverage, floor) in sorted((failing_sources or {}).items()):
        reason("data_outage", f"coverage:{source}", coverage, floor, "<")
    by_source: dict[str, list[tuple[str, float, float]]] = {}
    for feature, (share, reference) in (missing_features or {}).items():
        by_source.setdefault(source_of_feature(feature), []).append((feature, share, reference))
    for source, features in sorted(by_source.items()):
        share = max(f[1] for f in features)
        reference = max(f[2] for f in features)
        reason("data_outage", f"missing:{source} ({len(features)} features)", share,
               reference + THRESHOLDS.outage_missing_increase, ">=")
    if score_psi is not None:
        if score_psi >= THRESHOLDS.psi_act:
            reason("retrain", "score_psi", score_psi, THRESHOLDS.psi_act, ">=")
        elif score_psi >= THRESHOLDS.psi_watch:
            reason("watch", "score_psi", score_psi, THRESHOLDS.psi_watch, ">=")
    for feature, csi in sorted(feature_csi.items(), key=lambda kv: -kv[1]):
        if csi >= THRESHOLDS.psi_act:
            reason("watch", f"csi:{feature}", csi, THRESHOLDS.psi_act, ">=")
    if performance_row and performance_row.get("auc") is not None \
            and performance_row.get("n", 0) >= THRESHOLDS.min_loans:
        auc = performance_row["auc"]
        if auc < THRESHOLDS.auc_floor:
            reason("retrain", "auc", auc, THRESHOLDS.auc_floor, "<")
        drop = performance_row.get("auc_drop")
        if drop is not None and drop > THRESHOLDS.max_auc_drop:
            reason("retrain", "auc_drop", drop, THRESHOLDS.max_auc_drop, ">")
    action = max((r["action"] for r in reasons), key=SEVERITY.get, default="retain")
    return action, reasons


def describe_reasons(reasons: list[dict]) -> str:
    if not reasons:
        return "every metric within its threshold"
    return "; ".join(f"{r['metric']} {r['value']:.4f} {r['comparison']} {r['threshold']:.4g} "
                     f"({r['action']})" for r in reasons)


@monthly_asset(
    **describe_table(RECOMMENDATION),
    deps=[dg.AssetDep(STABILITY_KEY), dg.AssetDep(PERFORMANCE_KEY),
          dg.AssetDep(asset_key(SOURCE_COVERAGE))],
)
def recommendation(context: dg.AssetExecutionContext, warehouse: Warehouse) -> None:
    months = run_months(context)
    rows, per_month = [], {}
    with warehouse.connect() as con:
        warehouse.register_input(con, "stability_rows", STABILITY, months)
        warehouse.register_input(con, "performance_rows", PERFORMANCE, months)
        failing = failing_sources(warehouse, con, months)
        stability_frame = as_dates(con.execute("SELECT * FROM stability_rows").df(), "month")
        performance_frame = as_dates(con.execute("SELECT * FROM performance_rows").df(), "month")
        for month in months:
            month_stability = stability_frame[stability_frame["month"] == month]
            month_performance = performance_frame[performance_frame["month"] == month]
            if month_stability.empty and month_performance.empty and month not in failing:
                per_month[month] = {"reason": "no predictions and no matured labels this month"}
                continue
            by_variable = month_stability.set_index("variable")
            features = by_variable.drop(index=SCORE, errors="ignore")
            outage = features[features["band"] == "outage"]
            performance_row = (month_performance.iloc[0].to_dict()
                               if not month_performance.empty else None)
            action, reasons = recommend(
                float(by_variable.loc[SCORE, "psi"]) if SCORE in by_variable.index else None,
                {k: float(v) for k, v in features[features["band"] != "outage"]["psi"].items()},
                performance_row, failing.get(month),
                {k: (float(r.actual_missing_share), float(r.reference_missing_share))
                 for k, r in outage.iterrows()})
            version = (month_stability["model_version"].iloc[0] if not month_stability.empty
                       else performance_row["model_version"] if performance_row else None)
            rows.append({"month": month, "model_version": version, "recommendation": action,
                         "reasons": describe_reasons(reasons),
                         "reasons_json": json.dumps(reasons)})
            per_month[month] = {"recommendation": action, "reasons": describe_reasons(reasons),
                                "model_version": version or "none"}
        con.register("recommendation_rows",
                     pa.Table.from_pylist(rows, schema=RECOMMENDATION_SCHEMA))
        publish(context, warehouse, con, RECOMMENDATION, "SELECT * FROM recommendation_rows",
                months, per_month)


# -- summary ---------------------------------------------------------------------------------


@monthly_asset(
    **describe_table(SUMMARY),
    deps=[dg.AssetDep(STABILITY_KEY), dg.AssetDep(PERFORMANCE_KEY),
          dg.AssetDep(asset_key(DRIFT)), dg.AssetDep(asset_key(RECOMMENDATION))],
)
def summary(context: dg.AssetExecutionContext, warehouse: Warehouse) -> None:
    months = run_months(context)
    with warehouse.connect() as con:
        # the plots show every month published so far, up to the last month of this run
        history = {table.name: [m for m in warehouse.published_months(table) if m <= months[-1]]
                   for table in (STABILITY, PERFORMANCE, DRIFT, RECOMMENDATION)}
        for table in (STABILITY, PERFORMANCE, DRIFT, RECOMMENDATION):
            missing = sorted(set(months) - set(history[table.name]))
            warehouse.register_input(con, f"all_{table.name}", table,
                                     history[table.name] + missing)
        compute(con, "monitoring/summary")
        con.execute(f"CREATE OR REPLACE TEMP TABLE summary_rows AS SELECT * FROM {RESULT} "
                    "WHERE month BETWEEN $first AND $last",
                    {"first": months[0], "last": months[-1]})
        per_month = {m: {"plots_up_to": folder_label(months[-1])} for m in months}
        per_month[months[-1]].update(summary_plots(con))
        publish(context, warehouse, con, SUMMARY, "SELECT * FROM summary_rows", months, per_month)


def summary_plots(con: duckdb.DuckDBPyConnection) -> dict:
    """PSI by variable over months (the score and the most drifting features) and AUC / Gini
    over label months, as Markdown images."""
    stability_history = as_dates(con.execute(
        "SELECT month, variable, psi FROM all_stability ORDER BY month").df(), "month")
    plots = {}
    if not stability_history.empty:
        wide = stability_history.pivot_table(index="month", columns="variable", values="psi")
        top = wide.drop(columns=[SCORE]).max().sort_values(ascending=False).head(5).index
        plots["psi_over_months"] = dg.MetadataValue.md(line_chart(
            list(wide.index), {name: wide[name].tolist() for name in [SCORE, *top]},
            "PSI of the score and the most drifting features", "PSI",
            {"watch": THRESHOLDS.psi_watch, "act": THRESHOLDS.psi_act}))
    performance_history = as_dates(con.execute(
        "SELECT month, auc, gini FROM all_performance ORDER BY month").df(), "month")
    if not performance_history.empty:
        plots["auc_gini_over_months"] = dg.MetadataValue.md(line_chart(
            performance_history["month"].tolist(),
            {"AUC": performance_history["auc"].tolist(),
             "Gini": performance_history["gini"].tolist()},
            "AUC and Gini of matured predictions, by label month", "value",
            {"AUC floor": THRESHOLDS.auc_floor}))
    return plots
