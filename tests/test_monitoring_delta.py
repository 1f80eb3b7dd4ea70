"""Monitoring on the Delta lake: its five specs materialised through the factory on a real
`Lake` whose inputs (a registry, aliases, training sets, references, predictions, features,
coverage, labels) are published directly from small hand-made frames, then the published rows.

The months: two champions (trained 2024-01, champion 2024-02..03; trained 2024-03, champion
from 2024-04), scored months 2024-02 (600 loans, an unchanged population), 2024-03 (400 loans,
the clickstream feed stopped) and 2024-04 (5 loans); their labels mature in 2024-08..10
(both classes, one class only, 5 loans). 2024-05 is scored by the champion before its own.
Every other month is published empty.
"""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from dagster_duckdb import DuckDBResource
from sklearn.metrics import roc_auc_score

from ml_assets import metrics
from ml_assets.assets.monitoring import (
    SCORE,
    columns_to_test,
    drift_rows,
    evidently_drift,
    monitoring_specs,
    report_file,
    report_store,
    write_report,
)
from ml_assets.definitions import load_build
from ml_assets.months import add_months, month_range
from ml_assets.rating import grade_of
from ml_assets.settings import load_settings
from ml_assets.spec import Build, TableSpec, asset_key, table_asset
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
    SEGMENT_PERFORMANCE,
    SOURCE_COVERAGE,
    STABILITY,
    SUMMARY,
    TRAINING_SET,
)
from resources.lake import Lake, LakeError
from resources.storage import FileStore
from tests.test_stability_sql import independent_psi

# one worker builds the lake and runs the assets once for every test of the module
pytestmark = pytest.mark.xdist_group("monitoring-delta")

FIRST, LAST = date(2024, 1, 1), date(2024, 12, 1)
RUN = (date(2024, 2, 1), date(2024, 10, 1))  # every monitoring run covers these months
MONTHS = list(month_range(*RUN))
FEATURES = ["age", "outstanding_debt", "fe_1_mean", "clickstream_months", "credit_mix"]
CATEGORICAL = ["credit_mix"]
OLD, NEW = "lgbm-2024-01", "lgbm-2024-03"  # the champions (trained 2024-01, 2024-03)
TRAINED = {OLD: date(2024, 1, 1), NEW: date(2024, 3, 1)}
SCORED = {date(2024, 2, 1): (OLD, 600), date(2024, 3, 1): (OLD, 400),
          date(2024, 4, 1): (NEW, 5)}
OUTAGE_MONTH = date(2024, 3, 1)
STALE_MONTH = date(2024, 5, 1)  # scored by OLD, though NEW is its champion
OOT_AUC = {OLD: 0.8, NEW: 0.78}


SCALE = (("A", 0.05), ("B", 0.1), ("C", 0.2), ("D", 0.35), ("E", 0.6), ("F", 1.0))
PREDICTION_TYPES = {"loan_id": pa.string(), "customer_id": pa.string(),
                    "application_month": pa.date32(), "model_version": pa.string(),
                    "score": pa.float64(), "grade": pa.string(), "decision": pa.string()}


def population(rng: np.random.Generator, n: int, prefix: str, month: date,
               clickstream: bool = True) -> dict[str, list]:
    """`n` loans of `month`: their features and a score that depends on them."""
    age = rng.normal(40, 10, n).round(0)
    debt = rng.gamma(2.0, 700.0, n).round(2)
    fe_1 = rng.normal(100, 20, n).round(1)
    fe_1[rng.random(n) < 0.05] = np.nan
    months_seen = rng.integers(0, 4, n)
    mix = rng.choice(["Good", "Standard", "Bad"], n, p=[0.3, 0.5, 0.2])
    score = 1 / (1 + np.exp(-(-2 + 0.002 * debt - 0.02 * (age - 40))))
    return {
        "loan_id": [f"{prefix}{i:04d}" for i in range(n)],
        "customer_id": [f"C{prefix}{i:04d}" for i in range(n)],
        "application_month": [month] * n,
        "age": age.tolist(), "outstanding_debt": debt.tolist(),
        "fe_1_mean": [None if not clickstream or math.isnan(v) else v for v in fe_1],
        "clickstream_months": (months_seen if clickstream else np.zeros(n, int)).tolist(),
        "credit_mix": mix.tolist(), "score": score.round(6).tolist(),
    }


FEATURE_TYPES = {"loan_id": pa.string(), "customer_id": pa.string(),
                 "application_month": pa.date32(), "age": pa.float64(),
                 "outstanding_debt": pa.float64(), "fe_1_mean": pa.float64(),
                 "clickstream_months": pa.int64(), "credit_mix": pa.string()}


def frame(columns: dict[str, list], types: dict[str, pa.DataType]) -> pa.Table:
    return pa.table({name: pa.array(columns.get(name, []), kind) for name, kind in types.items()})


def publish(lake: Lake, table, rows: pa.Table, months) -> None:
    with duckdb.connect() as con:
        con.register("rows", rows)
        lake.publish(con, table, "SELECT * FROM rows", list(months))


def registry_rows() -> pa.Table:
    records = []
    for version, trained in TRAINED.items():
        for name in ("lgbm", "logreg"):  # a candidate that is not champion, same month
            records.append({
                "model_version": version.replace("lgbm", name), "model_name": name,
                "algorithm": "lightgbm" if name == "lgbm" else "logistic_regression",
                "trained_month": trained, "window_first": add_months(trained, -12),
                "window_last": add_months(trained, -1), "oot_month": add_months(trained, -1),
                "label_def": "30dpd_6mob", "features": FEATURES,
                "categorical_features": CATEGORICAL,
                "importances": json.dumps({f: 10 - i for i, f in enumerate(FEATURES)}),
                "oot_auc": OOT_AUC[version] if name == "lgbm" else 0.7,
                "checks_passed": True, "input_versions": "{}"})
    return pa.Table.from_pylist(records, schema=pa.schema([
        ("model_version", pa.string()), ("model_name", pa.string()), ("algorithm", pa.string()),
        ("trained_month", pa.date32()), ("window_first", pa.date32()),
        ("window_last", pa.date32()), ("oot_month", pa.date32()), ("label_def", pa.string()),
        ("features", pa.list_(pa.string())), ("categorical_features", pa.list_(pa.string())),
        ("importances", pa.string()), ("oot_auc", pa.float64()), ("checks_passed", pa.bool_()),
        ("input_versions", pa.string())]))


@dataclasses.dataclass
class World:
    """The lake with every input of monitoring published, and what went into it."""

    lake: Lake
    build: Build
    reference: dict[str, dict[str, list]]  # champion version -> its OOT rows
    scored: dict[date, dict[str, list]]  # month -> its loans, features and scores
    labels: dict[date, list[int]]  # label month -> the labels of its loans, in loan order


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    config = load_settings(environ={})
    config = dataclasses.replace(config, first_month=FIRST, last_month=LAST,
                                 monitoring=dataclasses.replace(config.monitoring,
                                                                segment_column="credit_mix"))
    build = load_build(config)
    lake = Lake(uri=str(tmp_path_factory.mktemp("monitoring") / "warehouse"))
    rng = np.random.default_rng(7)
    every = list(month_range(FIRST, LAST))

    publish(lake, MODEL_REGISTRY, registry_rows(), every)
    reference, training, scores = {}, [], []
    for version, trained in TRAINED.items():
        oot = population(rng, 500, f"R{trained:%y%m}-", add_months(trained, -7))
        reference[version] = oot
        train = population(rng, 200, f"T{trained:%y%m}-", add_months(trained, -9))
        train["age"] = [a + 40 for a in train["age"]]  # not the reference: must not be read
        for split, part in (("oot", oot), ("train", train)):
            n = len(part["loan_id"])
            training.append(frame({**part, "training_month": [trained] * n,
                                   "split": [split] * n, "label": [0] * n},
                                  {**FEATURE_TYPES, "training_month": pa.date32(),
                                   "split": pa.string(), "label": pa.int8()}))
            for name in ("lgbm", "logreg"):
                other = name != "lgbm"  # the other candidate's scores of the same loans
                scores.append(frame({
                    "model_version": [version.replace("lgbm", name)] * n,
                    "trained_month": [trained] * n, "loan_id": part["loan_id"],
                    "score": [0.9 if other else s for s in part["score"]]},
                    {"model_version": pa.string(), "trained_month": pa.date32(),
                     "loan_id": pa.string(), "score": pa.float64()}))
    publish(lake, TRAINING_SET, pa.concat_tables(training), every)
    publish(lake, SCORE_REFERENCE, pa.concat_tables(scores), every)

    aliases = [{"alias": "champion", "month": m, "model_version": v, "model_name": "lgbm",
                "trained_month": TRAINED[v], "decision": "kept"}
               for m in every for v in [OLD if m < date(2024, 4, 1) else NEW]
               if m >= date(2024, 2, 1)]
    publish(lake, MODEL_ALIASES, pa.Table.from_pylist(aliases, schema=pa.schema([
        ("alias", pa.string()), ("month", pa.date32()), ("model_version", pa.string()),
        ("model_name", pa.string()), ("trained_month", pa.date32()),
        ("decision", pa.string())])), every)

    scored, features, predictions, coverage, labels = {}, [], [], [], []
    for month, (version, n) in SCORED.items():
        loans = population(rng, n, f"L{month:%y%m}-", month,
                           clickstream=month != OUTAGE_MONTH)
        scored[month] = loans
        features.append(frame(loans, FEATURE_TYPES))
        # the outage month's predictions were published before they carried a grade
        grades = ([None] * n if month == OUTAGE_MONTH
                  else grade_of(loans["score"], SCALE).tolist())
        # declined at the demo's PD cut-off of 0.5
        decisions = np.where(np.asarray(loans["score"]) < 0.5, "approve", "decline").tolist()
        predictions.append(frame({**loans, "model_version": [version] * n, "grade": grades,
                                  "decision": decisions}, PREDICTION_TYPES))
        for source in ("features_attributes", "features_financials", "feature_clickstream"):
            stopped = source == "feature_clickstream" and month == OUTAGE_MONTH
            coverage.append({"application_month": month, "source": source, "loans": n,
                             "coverage": 0.0 if stopped else 1.0, "floor": 0.5,
                             "status": "error" if stopped else "ok"})
    stale = population(rng, 60, f"L{STALE_MONTH:%y%m}-", STALE_MONTH)
    features.append(frame(stale, FEATURE_TYPES))
    predictions.append(frame({**stale, "model_version": [OLD] * 60,
                              "grade": grade_of(stale["score"], SCALE).tolist(),
                              "decision": ["approve"] * 60}, PREDICTION_TYPES))
    publish(lake, FEATURE_STORE, pa.concat_tables(features), every)
    publish(lake, PREDICTIONS, pa.concat_tables(predictions), every)
    publish(lake, SOURCE_COVERAGE, pa.Table.from_pylist(coverage, schema=pa.schema([
        ("application_month", pa.date32()), ("source", pa.string()), ("loans", pa.int64()),
        ("coverage", pa.float64()), ("floor", pa.float64()), ("status", pa.string())])),
        every)

    label_of = {}
    for month, loans in scored.items():
        label_month = add_months(month, 6)
        if month == OUTAGE_MONTH:  # one class: nobody defaulted
            outcome = [0] * len(loans["score"])
        else:  # defaults follow the score, with noise
            outcome = [int(rng.random() < s * 1.6) for s in loans["score"]]
            outcome[0], outcome[1] = 1, 0  # both classes, even on 5 loans
        label_of[label_month] = outcome
        labels.append(frame({"loan_id": loans["loan_id"],
                             "snapshot_date": [date(label_month.year, label_month.month, 15)]
                             * len(outcome), "label": outcome,
                             "label_def": ["30dpd_6mob"] * len(outcome)},
                            {"loan_id": pa.string(), "snapshot_date": pa.date32(),
                             "label": pa.int8(), "label_def": pa.string()}))
    publish(lake, LABEL_STORE, pa.concat_tables(labels), every)
    return World(lake, build, reference, scored, label_of)


def resources(lake: Lake) -> dict:
    return {"lake": lake, "duckdb": DuckDBResource(database=":memory:")}


def spec_of(build: Build, table) -> TableSpec:
    return next(s for s in monitoring_specs(build) if s.table == table)


def materialize(world: World, table, months=RUN, build: Build | None = None,
                lake: Lake | None = None) -> dg.ExecuteInProcessResult:
    """One run of `table`'s asset over `months` (a single-run backfill of the range)."""
    asset = table_asset(spec_of(build or world.build, table), build or world.build)
    first, last = months
    return dg.materialize([asset], resources=resources(lake or world.lake), tags={
        "dagster/asset_partition_range_start": first.isoformat(),
        "dagster/asset_partition_range_end": last.isoformat()}, raise_on_error=True)


def published(lake: Lake, table, months=None) -> list[dict]:
    with duckdb.connect() as con:
        lake.read(con, "rows", table, months)
        result = con.execute("SELECT * FROM rows ORDER BY ALL")
        columns = [d[0] for d in result.description]
        return [dict(zip(columns, row, strict=True)) for row in result.fetchall()]


def checks(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], object]:
    """(check name, partition) -> its evaluation."""
    return {(e.check_name, e.partition): e for e in result.get_asset_check_evaluations()}


def month_metadata(result: dg.ExecuteInProcessResult, table, month: date) -> dict:
    events = [e for e in result.get_asset_materialization_events()
              if e.asset_key == asset_key(table) and e.partition == month.isoformat()]
    assert len(events) == 1
    return events[0].materialization.metadata


@pytest.fixture(scope="module")
def stability(world: World):
    return materialize(world, STABILITY)


@pytest.fixture(scope="module")
def performance(world: World):
    return materialize(world, PERFORMANCE)


@pytest.fixture(scope="module")
def drift(world: World):
    return materialize(world, DRIFT)


# -- the graph --------------------------------------------------------------------------------


def test_each_asset_depends_on_exactly_what_it_reads(world: World):
    graph = {spec.table.name: {i.table.qualified_name: (i.lookup, i.mapping)
                               for i in spec.inputs} for spec in monitoring_specs(world.build)}
    assert set(graph["stability"]) == {
        "gold.predictions", "gold.feature_store", "ml.model_aliases", "gold.source_coverage",
        "ml.model_registry", "gold.training_set", "ml.score_reference"}
    assert {t for t, (lookup, _) in graph["stability"].items() if lookup} == {
        "ml.model_registry", "gold.training_set", "ml.score_reference"}
    assert graph["performance"]["gold.predictions"] == (False, world.build.rules.matured)
    assert set(graph["performance"]) == {"gold.predictions", "gold.label_store",
                                         "gold.feature_store", "ml.model_registry"}
    assert graph["performance"]["gold.feature_store"] == (False, world.build.rules.matured)
    assert graph["early_read_performance"]["gold.predictions"] == (
        False, world.build.rules.early_read_matured)
    assert set(graph["drift"]) == set(graph["stability"])
    assert set(graph["recommendation"]) == {"monitoring.stability", "monitoring.performance",
                                            "gold.source_coverage"}
    assert all(lookup for lookup, _ in graph["summary"].values())
    assert set(graph["summary"]) == {"monitoring.stability", "monitoring.performance",
                                     "monitoring.drift", "monitoring.recommendation"}


@pytest.mark.parametrize("condition,requested", [
    (None, {"2024-12-01"}),  # the spec's: eager, the registry ignored
    (dg.AutomationCondition.eager(), set()),  # held back by registry months never trained
])
def test_labels_landing_measure_the_performance_of_their_month(world: World, condition,
                                                               requested):
    """What the label_maturity sensor evaluates: the latest label month's labels land, its
    predictions and their features (mob months before) are there, the registry has one month:
    measured."""
    spec = spec_of(world.build, PERFORMANCE)
    if condition is not None:
        spec = dataclasses.replace(spec, automation_condition=condition)
    upstream = [dg.AssetSpec(asset_key(t), partitions_def=world.build.partitions)
                for t in (PREDICTIONS, LABEL_STORE, FEATURE_STORE, MODEL_REGISTRY)]
    defs = dg.Definitions(assets=[table_asset(spec, world.build), *upstream],
                          resources={"lake": dg.ResourceDefinition.none_resource(),
                                     "duckdb": dg.ResourceDefinition.none_resource()})
    instance = dg.DagsterInstance.ephemeral()
    cursor = dg.evaluate_automation_conditions(defs=defs, instance=instance).cursor
    for table, month in ((FEATURE_STORE, "2024-06-01"), (PREDICTIONS, "2024-06-01"),
                         (MODEL_REGISTRY, "2024-06-01")):
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key(table),
                                                                    partition=month))
    cursor = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor).cursor
    assert dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor) \
        .get_requested_partitions(asset_key(PERFORMANCE)) == set()
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key(LABEL_STORE),
                                                                partition="2024-12-01"))
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    assert result.get_requested_partitions(asset_key(PERFORMANCE)) == requested


def test_building_the_specs_reads_no_configuration_at_import():
    lenient = dataclasses.replace(load_settings(environ={}), first_month=FIRST,
                                  last_month=LAST)
    lenient = dataclasses.replace(lenient, monitoring=dataclasses.replace(
        lenient.monitoring, psi_act=0.6, auc_floor=0.55))
    spec = spec_of(load_build(lenient), STABILITY)
    assert ">= 0.6" in next(c for c in spec.checks if c.name == "score_psi").description
    spec = spec_of(load_build(lenient), PERFORMANCE)
    assert "at least 0.55" in next(c for c in spec.checks if c.name == "auc_floor").description


# -- stability --------------------------------------------------------------------------------


def test_stability_is_the_psi_against_the_champions_oot_reference(world: World, stability):
    rows = {(r["month"], r["variable"]): r for r in published(world.lake, STABILITY)}
    assert {m for m, _ in rows} == set(SCORED)
    stable_month = date(2024, 2, 1)
    actual, reference = world.scored[stable_month], world.reference[OLD]
    for variable in (SCORE, "age", "outstanding_debt", "fe_1_mean"):
        row = rows[(stable_month, variable)]
        expected = independent_psi(
            np.array(reference[variable], dtype=float), np.array(actual[variable], dtype=float))
        assert row["psi"] == pytest.approx(expected, abs=1e-9), variable
        assert (row["model_version"], row["reference_n"], row["actual_n"]) == (OLD, 500, 600)
    assert rows[(stable_month, SCORE)]["band"] == "stable"
    assert rows[(stable_month, "credit_mix")]["kind"] == "categorical"
    # the 5-loan month is compared with its own champion's reference, trained 2024-03
    small = rows[(date(2024, 4, 1), SCORE)]
    assert (small["model_version"], small["actual_n"]) == (NEW, 5)
    assert small["psi"] == pytest.approx(independent_psi(
        np.array(world.reference[NEW][SCORE]), np.array(world.scored[date(2024, 4, 1)][SCORE])),
        abs=1e-9)


def test_stability_checks_per_month(world: World, stability):
    evaluations = checks(stability)
    assert len(evaluations) == 3 * len(MONTHS)
    stable = "2024-02-01"
    assert all(evaluations[(name, stable)].passed
               for name in ("score_psi", "feature_csi", "features_missing"))
    missing = evaluations[("features_missing", "2024-03-01")]
    assert (missing.passed, missing.severity) == (False, dg.AssetCheckSeverity.ERROR)
    assert missing.description.startswith("data outage, not drift: feature_clickstream: "
                                           "2 feature(s) missing")
    # 5 loans against 500: the score PSI is large, but at most a WARN, saying why
    few = evaluations[("score_psi", "2024-04-01")]
    assert (few.passed, few.severity) == (False, dg.AssetCheckSeverity.WARN)
    assert "on only 5 loans: too few to judge" in few.description
    quiet = evaluations[("score_psi", "2024-06-01")]
    assert quiet.passed and quiet.metadata["reason"].text == "no predictions this month"


def test_a_month_scored_by_another_model_than_its_champion_warns(world: World, stability):
    assert published(world.lake, STABILITY, [STALE_MONTH]) == []
    for name in ("score_psi", "feature_csi", "features_missing"):
        evaluation = checks(stability)[(name, STALE_MONTH.isoformat())]
        assert (evaluation.passed, evaluation.severity) == (False, dg.AssetCheckSeverity.WARN)
        assert evaluation.description == (
            f"the predictions of 2024-05 are by {OLD} (60 loans), not by the champion {NEW}: "
            "re-materialise gold/predictions for the month")


def test_an_outage_month_bands_the_stopped_feeds_features_as_outage(world: World, stability):
    bands = {r["variable"]: r["band"] for r in published(world.lake, STABILITY, [OUTAGE_MONTH])}
    assert bands["fe_1_mean"] == bands["clickstream_months"] == "outage"
    assert bands["age"] != "outage" and bands["credit_mix"] != "outage"
    outage = month_metadata(stability, STABILITY, OUTAGE_MONTH)
    assert outage["features_outage"].value == 2


def test_stability_records_the_versions_it_read(world: World, stability):
    versions = world.lake.commit_metadata(STABILITY, world.lake.version(STABILITY))
    assert set(versions["input_versions"]) == {
        "gold.predictions", "gold.feature_store", "ml.model_aliases", "gold.source_coverage",
        "ml.model_registry", "gold.training_set", "ml.score_reference"}
    assert versions["months"] == [m.isoformat() for m in MONTHS]


# -- performance ------------------------------------------------------------------------------


def test_performance_measures_the_predictions_made_mob_months_before(world: World,
                                                                     performance):
    rows = {r["month"]: r for r in published(world.lake, PERFORMANCE)}
    assert set(rows) == {add_months(m, 6) for m in SCORED}
    august = rows[date(2024, 8, 1)]
    loans = world.scored[date(2024, 2, 1)]
    assert august["application_month"] == date(2024, 2, 1)
    assert august["auc"] == pytest.approx(metrics.auc(world.labels[date(2024, 8, 1)],
                                                      loans["score"]), abs=1e-12)
    approved = np.asarray(loans["score"]) < 0.5
    assert 0 < approved.sum() < len(approved)
    assert august["approved"] == approved.sum()
    assert august["approved_default_rate"] == pytest.approx(
        np.asarray(world.labels[date(2024, 8, 1)])[approved].mean(), abs=1e-12)
    assert august["model_oot_auc"] == OOT_AUC[OLD]
    assert august["auc_drop"] == pytest.approx(OOT_AUC[OLD] - august["auc"], abs=1e-12)
    assert rows[date(2024, 10, 1)]["model_oot_auc"] == OOT_AUC[NEW]
    assert rows[date(2024, 9, 1)]["auc"] is None  # one class


def test_performance_checks_only_warn_on_one_class_or_few_loans(world: World, performance):
    evaluations = checks(performance)
    for month, why in (("2024-09-01", "one class only"), ("2024-10-01", "too few to judge")):
        for name in ("auc_floor", "auc_drop"):
            evaluation = evaluations[(name, month)]
            assert (evaluation.passed, evaluation.severity) == (
                False, dg.AssetCheckSeverity.WARN)
            assert why in evaluation.description
    assert evaluations[("auc_floor", "2024-08-01")].severity == dg.AssetCheckSeverity.ERROR
    before = evaluations[("auc_floor", "2024-03-01")]
    assert before.passed and "no application month 6 months before" in \
        before.metadata["reason"].text


def test_segment_performance_is_the_auc_of_each_segment(world: World, performance):
    rows = {(r["month"], r["segment"]): r
            for r in published(world.lake, SEGMENT_PERFORMANCE)}
    loans, labels = world.scored[date(2024, 2, 1)], world.labels[date(2024, 8, 1)]
    for mix in ("Good", "Standard", "Bad"):
        chosen = [i for i, value in enumerate(loans["credit_mix"]) if value == mix]
        y = [labels[i] for i in chosen]
        row = rows[(date(2024, 8, 1), mix)]
        assert (row["segment_column"], row["n"], row["defaults"]) == ("credit_mix", len(chosen),
                                                                      sum(y))
        if 0 < sum(y) < len(y):
            expected = roc_auc_score(y, [loans["score"][i] for i in chosen])
            assert row["auc"] == pytest.approx(expected, abs=1e-12)
            assert row["gini"] == pytest.approx(2 * expected - 1, abs=1e-12)
    assert {m for m, _ in rows} == {add_months(m, 6) for m in SCORED}
    evaluations = checks(performance)
    assert evaluations[("segment_auc_floor", "2024-08-01")].severity == \
        dg.AssetCheckSeverity.WARN


# -- drift ------------------------------------------------------------------------------------


def test_drift_tests_each_column_and_writes_a_report(world: World, drift):
    rows = published(world.lake, DRIFT)
    assert {r["month"] for r in rows} == set(SCORED)
    stable = [r for r in rows if r["month"] == date(2024, 2, 1)]
    assert {r["column_name"] for r in stable} == {SCORE, *FEATURES}
    assert all(r["method"] and r["value"] is not None for r in stable)
    for month in SCORED:
        path = world.lake.root.resolve() / "reports" / "drift" / f"{month:%Y-%m}.html"
        assert path.is_file() and report_store(world.lake).uri_of(report_file(month)) == str(path)
        assert month_metadata(drift, DRIFT, month)["report_path"].value == str(path)
        assert month_metadata(drift, DRIFT, month)["report"].value == path.as_uri()


def test_a_column_with_no_value_is_not_drift_tested(world: World, drift):
    rows = {r["column_name"]: r for r in published(world.lake, DRIFT, [OUTAGE_MONTH])}
    assert rows["fe_1_mean"]["note"] == "not tested: no value in the month"
    assert rows["fe_1_mean"]["drifted"] is None and rows["fe_1_mean"]["method"] is None
    # zeros are values: tested, and read as the outage they are
    assert rows["clickstream_months"]["method"] is not None
    assert rows["clickstream_months"]["note"].startswith(
        "tested during an outage: feature_clickstream covers 0% of the month's applications")
    assert rows["age"]["note"] is None
    assert month_metadata(drift, DRIFT, OUTAGE_MONTH)["sources_in_outage"].value == \
        "feature_clickstream"


def test_drift_on_five_loans_works(world: World, drift):
    rows = published(world.lake, DRIFT, [date(2024, 4, 1)])
    assert {r["model_version"] for r in rows} == {NEW}
    assert all(r["method"] is not None for r in rows)


def degenerate_month(reference: pd.DataFrame, case: str) -> pd.DataFrame:
    month = reference.head(5).copy()
    if case == "one loan":
        return reference.head(1).copy()
    if case == "constant columns, another value than the reference's":
        return month.assign(const=7.0, single="other")
    if case == "categories the reference never had":
        return month.assign(mix="Unknown")
    if case == "a column of NULLs":
        return month.assign(x=np.nan)
    if case == "a column of infinities":
        return month.assign(x=np.inf)
    if case == "some infinities and NULLs":
        return month.assign(x=[np.inf, np.nan, 1.0, 2.0, -np.inf])
    raise AssertionError(case)


@pytest.mark.parametrize("case", [
    "one loan", "constant columns, another value than the reference's",
    "categories the reference never had", "a column of NULLs", "a column of infinities",
    "some infinities and NULLs"])
def test_evidently_never_crashes_on_a_small_or_degenerate_month(case, tmp_path):
    rng = np.random.default_rng(3)
    reference = pd.DataFrame({SCORE: rng.random(300), "x": rng.normal(0, 1, 300), "const": 5.0,
                              "mix": rng.choice(["Good", "Bad"], 300), "single": "same"})
    current = degenerate_month(reference, case)
    numeric, categorical = [SCORE, "x", "const"], ["mix", "single"]
    tested, notes = columns_to_test(reference, current, numeric + categorical)
    snapshot = evidently_drift(reference, current, [c for c in numeric if c in tested],
                               [c for c in categorical if c in tested])
    rows = drift_rows(snapshot, date(2024, 5, 1), "v")
    assert sorted(r["column_name"] for r in rows) == sorted(tested)
    assert set(tested) | set(notes) == set(numeric + categorical)
    if case in ("a column of NULLs", "a column of infinities"):
        assert notes == {"x": "not tested: no value in the month"}
    written = write_report(snapshot, FileStore(str(tmp_path)), date(2024, 5, 1))
    assert written == str(tmp_path.resolve() / "drift" / "2024-05.html")
    assert Path(written).stat().st_size > 0


def test_drift_reports_are_kept_beside_the_tables(tmp_path):
    bucket = Lake(uri="s3://bank/warehouse", catalog_path=str(tmp_path / "catalog.duckdb"),
                  work_dir=str(tmp_path / "work"))
    assert report_store(bucket).uri_of(report_file(date(2024, 3, 1))) == \
        "s3://bank/warehouse/reports/drift/2024-03.html"
    local = Lake(uri=str(tmp_path / "warehouse"))
    assert report_store(local).uri == str(tmp_path.resolve() / "warehouse" / "reports")


def test_drift_reports_can_be_turned_off(world: World, tmp_path):
    config = dataclasses.replace(world.build.config, monitoring=dataclasses.replace(
        world.build.config.monitoring, drift_report=False))
    build = dataclasses.replace(world.build, config=config)
    result = materialize(world, DRIFT, (date(2024, 2, 1), date(2024, 2, 1)), build=build)
    assert "drift reports are off" in month_metadata(
        result, DRIFT, date(2024, 2, 1))["reason"].text
    assert published(world.lake, DRIFT, [date(2024, 2, 1)]) == []
    materialize(world, DRIFT, (date(2024, 2, 1), date(2024, 2, 1)))  # as it was


# -- recommendation and summary ---------------------------------------------------------------


@pytest.fixture(scope="module")
def recommendation(world: World, stability, performance, drift):
    return materialize(world, RECOMMENDATION)


def test_recommendation_per_month(world: World, recommendation):
    rows = {r["month"]: r for r in published(world.lake, RECOMMENDATION)}
    assert rows[OUTAGE_MONTH]["recommendation"] == "data_outage"
    reasons = json.loads(rows[OUTAGE_MONTH]["reasons_json"])
    assert [r["metric"] for r in reasons[:2]] == [
        "coverage:feature_clickstream", "missing:feature_clickstream (2 features)"]
    assert rows[date(2024, 2, 1)]["model_version"] == OLD
    # the one-class and 5-loan label months measure nothing to act on
    assert rows[date(2024, 9, 1)]["recommendation"] == "retain"
    assert rows[date(2024, 10, 1)]["recommendation"] == "retain"
    assert date(2024, 6, 1) not in rows  # nothing scored, nothing matured


def test_summary_rows_and_plots(world: World, recommendation):
    result = materialize(world, SUMMARY)
    rows = {r["month"]: r for r in published(world.lake, SUMMARY)}
    assert rows[OUTAGE_MONTH]["features_outage"] == 2
    assert rows[OUTAGE_MONTH]["recommendation"] == "data_outage"
    assert rows[date(2024, 8, 1)]["matured_vintage"] == date(2024, 2, 1)
    assert rows[date(2024, 2, 1)]["columns_tested"] == len(FEATURES) + 1
    last = month_metadata(result, SUMMARY, RUN[1])
    assert {"psi_over_months", "auc_gini_over_months"} <= set(last)
    assert "psi_over_months" not in month_metadata(result, SUMMARY, RUN[0])


def test_summary_of_a_month_not_yet_monitored_says_what_to_materialise_first(world: World,
                                                                             recommendation):
    with pytest.raises(LakeError, match="monitoring.stability has no published month 2024-11"):
        materialize(world, SUMMARY, (date(2024, 11, 1), date(2024, 11, 1)))


# -- calibration by grade ---------------------------------------------------------------------


def test_calibration_by_grade_of_each_label_month(world: World):
    from ml_assets.assets.credit_review import credit_review_specs
    from ml_assets.rating import calibration_by_grade
    from ml_assets.tables import CALIBRATION

    spec = next(s for s in credit_review_specs(world.build) if s.table == CALIBRATION)
    first, last = RUN
    result = dg.materialize([table_asset(spec, world.build)], resources=resources(world.lake),
                            tags={"dagster/asset_partition_range_start": first.isoformat(),
                                  "dagster/asset_partition_range_end": last.isoformat()})
    rows = published(world.lake, CALIBRATION)
    assert {r["month"] for r in rows} == {add_months(m, 6) for m in SCORED}
    assert {r["label_def"] for r in rows} == {"30dpd_6mob"}
    scale = world.build.models.rating_scale
    for application, (version, n) in SCORED.items():
        month = add_months(application, 6)
        loans = world.scored[application]
        expected = calibration_by_grade(pd.DataFrame({
            "score": loans["score"], "label": world.labels[month],
            "grade": grade_of(np.array(loans["score"]), scale)}), scale)
        got = sorted((r for r in rows if r["month"] == month), key=lambda r: r["pd_upper"])
        assert [r["model_version"] for r in got] == [version] * len(scale)
        for mine, theirs in zip(got, expected, strict=True):
            assert {k: mine[k] for k in theirs} == pytest.approx(theirs, nan_ok=True)
        graded = month_metadata(result, CALIBRATION, month)["graded_at_calibration"].value
        assert graded == (n if application == OUTAGE_MONTH else 0)
    evaluations = checks(result)
    few = evaluations[("hosmer_lemeshow", "2024-10-01")]  # 5 loans: no deciles
    assert few.passed and "too few loans" in few.description
    assert all(e.passed for (name, month), e in evaluations.items()
               if month not in {"2024-08-01", "2024-09-01", "2024-10-01"})
