"""The real asset graph materialised in process on small generated demo data."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from ml_assets.definitions import build_definitions, build_lake, monthly_pipeline
from ml_assets.demo.generator import demo_month_range, generate
from ml_assets.runner import RANGE_END, RANGE_START
from ml_assets.settings import Settings, load_settings
from ml_assets.tables import all_tables

# one xdist worker builds the demo warehouse once and runs every test of it
pytestmark = pytest.mark.xdist_group("pipeline")

SCALE = 1  # the demo itself: 12,500 customers, 500 loans a month, drift from 2024-07
SHIFT = date(2024, 7, 1)


def settings_for(warehouse: Path, source: Path) -> Settings:
    """The default configuration over this warehouse and source folder."""
    return load_settings(environ={"VINTAGE_WAREHOUSE": str(warehouse),
                                  "VINTAGE_SOURCE": str(source)})


def materialise(config: Settings, first: str, last: str,
                selection: list[dg.AssetKey] | None = None, instance=None):
    definitions = build_definitions(config)
    result = definitions.resolve_job_def(monthly_pipeline.name).execute_in_process(
        instance=instance or dg.DagsterInstance.ephemeral(),
        asset_selection=selection,
        tags={RANGE_START: first, RANGE_END: last},
    )
    assert result.success
    return result


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    generate(root / "demo", scale=SCALE, seed=42, shift_month="2024-07")
    config = settings_for(root / "warehouse", root / "demo")
    instance = dg.DagsterInstance.ephemeral()
    first, last = demo_month_range()
    result = materialise(config, first.isoformat(), last.isoformat(), instance=instance)
    return root, config, instance, result


def catalog(config: Settings) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(config.catalog), read_only=True)


def test_catalog_has_every_table_populated(demo):
    _, config, *_ = demo
    with catalog(config) as con:
        views = {f"{s}.{v}" for s, v in con.execute(
            "SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        expected = {"raw.lms_loan_daily", "raw.feature_clickstream", "raw.features_attributes",
                    "raw.features_financials", "silver.loan_daily", "silver.clickstream",
                    "silver.attributes", "silver.financials", "gold.label_store",
                    "gold.feature_store"}
        assert expected <= views
        for view in expected:
            assert con.execute(f"SELECT count(*) FROM {view}").fetchone()[0] > 0, view


def independent_labels(lms_csv) -> pd.DataFrame:
    """The course definition computed straight from the raw lms file with pandas."""
    lms = pd.read_csv(lms_csv, dtype=str)
    at_mob = lms[lms["installment_num"].astype(int) == 6].copy()
    overdue = at_mob["overdue_amt"].astype(float)
    due = at_mob["due_amt"].astype(float)
    snapshot = pd.to_datetime(at_mob["snapshot_date"])
    missed = [math.ceil(o / d) if o > 0 else 0 for o, d in zip(overdue, due, strict=True)]
    first_missed = [s - pd.DateOffset(months=m) for s, m in zip(snapshot, missed, strict=True)]
    dpd = [(s - f).days if o > 0 else 0
           for s, f, o in zip(snapshot, first_missed, overdue, strict=True)]
    at_mob["label"] = [int(d >= 30) for d in dpd]
    return at_mob.set_index("loan_id")["label"].sort_index()


def test_label_store_equals_the_course_definition(demo):
    root, config, *_ = demo
    expected = independent_labels(root / "demo" / "lms_loan_daily.csv")
    with catalog(config) as con:
        store = con.execute("SELECT loan_id, label, label_def, snapshot_date, application_month "
                            "FROM gold.label_store").df().set_index("loan_id").sort_index()
    assert len(store) == len(expected) > 0
    assert store["label"].astype(int).equals(expected.astype(int))
    assert set(store["label_def"]) == {"30dpd_6mob"}
    months_apart = store.apply(
        lambda r: (r.snapshot_date.year - r.application_month.year) * 12
        + r.snapshot_date.month - r.application_month.month, axis=1)
    assert set(months_apart) == {6}
    assert 0.15 < store["label"].mean() < 0.45


def test_feature_store_has_exactly_one_row_per_loan(demo):
    root, config, *_ = demo
    loans = pd.read_csv(root / "demo" / "lms_loan_daily.csv", usecols=["loan_id"])["loan_id"]
    with catalog(config) as con:
        rows, distinct, late = con.execute(
            "SELECT count(*), count(DISTINCT loan_id), "
            "count_if(date_trunc('month', features_as_of) > application_month) "
            "FROM gold.feature_store").fetchone()
    assert rows == distinct == loans.nunique()
    assert late == 0


def test_no_personal_data_past_raw(demo):
    _, config, *_ = demo
    ssn = re.compile(r"^\d{3}-\d{2}-\d{4}$")
    with catalog(config) as con:
        for view in ("silver.attributes", "silver.financials", "silver.loan_daily",
                     "silver.clickstream", "gold.label_store", "gold.feature_store"):
            columns = [c.lower() for c in con.execute(f"SELECT * FROM {view} LIMIT 0").df()]
            assert not [c for c in columns if "name" in c or "ssn" in c.replace("ssn_valid", "")]
            texts = con.execute(f"SELECT * FROM {view}").df().select_dtypes("object")
            for column in texts:
                assert not texts[column].astype(str).str.match(ssn).any(), (view, column)


@pytest.mark.parametrize("month", [
    "2024-03-01",
    demo_month_range()[1].isoformat(),  # after the last application: no coverage to chart
])
def test_rematerialising_a_month_gives_identical_tables(demo, month):
    _, config, instance, _ = demo
    tables = ["silver.loan_daily", "silver.financials", "gold.feature_store", "gold.label_store",
              "raw.features_financials"]

    def snapshot():
        with catalog(config) as con:
            return {t: con.execute(f"SELECT COLUMNS(lambda c: c <> '_ingested_at') FROM {t} "
                                   "ORDER BY ALL").fetchall() for t in tables}

    before = snapshot()
    materialise(config, month, month, instance=instance)
    assert snapshot() == before


def test_materialisations_carry_metadata_per_month(demo):
    _, _, instance, _ = demo
    # a month with applications (financials stop at the last cohort, 2025-01)
    [record] = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey(["silver", "financials"]), asset_partitions=["2024-06-01"]),
        limit=1).records
    metadata = record.asset_materialization.metadata
    assert metadata["dagster/row_count"].value > 0
    columns = {c.name for c in metadata["dagster/column_schema"].schema.columns}
    assert {"annual_income", "credit_history_age_months", "spend_level"} <= columns
    assert "preview" in metadata and "cleaning_rules" in metadata
    counts = metadata["cleaning_rule_counts"].value
    assert counts["trailing_underscore.Annual_Income"] >= 0
    assert sum(counts.values()) == metadata["values_changed_by_rules"].value


def test_silver_rule_counts_match_the_dirt_in_raw(demo):
    _, config, *_ = demo
    with catalog(config) as con:
        raw_underscored = con.execute(
            "SELECT count(*) FROM raw.features_financials "
            "WHERE regexp_full_match(Annual_Income, '[0-9.]+_')").fetchone()[0]
        nulls = con.execute("SELECT count_if(credit_mix IS NULL), count(*) "
                            "FROM silver.financials").fetchone()
    assert raw_underscored > 0
    assert 0.1 < nulls[0] / nulls[1] < 0.35  # about 20% `_` credit mix


def test_application_month_of_every_label_is_in_the_feature_store(demo):
    _, config, *_ = demo
    with catalog(config) as con:
        orphans = con.execute(
            "SELECT count(*) FROM gold.label_store l ANTI JOIN gold.feature_store f "
            "USING (loan_id, application_month)").fetchone()[0]
    assert orphans == 0


def test_a_month_with_missing_upstream_fails_clearly(tmp_path):
    (tmp_path / "none").mkdir()
    config = dataclasses.replace(settings_for(tmp_path / "wh", tmp_path / "none"),
                                 first_month=date(2023, 1, 1), last_month=date(2025, 11, 1))
    definitions = build_definitions(config)
    result = definitions.resolve_job_def(monthly_pipeline.name).execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        asset_selection=[dg.AssetKey(["gold", "label_store"])],
        partition_key="2024-01-01",
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.event_specific_data.error.cause.message
    assert ("silver.loan_daily has no published month 2024-01 (no month at all yet); "
            "materialise it first") in message


# -- models ----------------------------------------------------------------------------------


def test_no_training_row_was_observed_at_or_after_its_training_month(demo):
    _, config, *_ = demo
    with catalog(config) as con:
        rows, late, months = con.execute(
            "SELECT count(*), count_if(observation_month >= training_month), "
            "count(DISTINCT training_month) FROM gold.training_set").fetchone()
        stale = con.execute(
            "SELECT count(*) FROM gold.training_set t JOIN gold.feature_store f USING (loan_id) "
            "WHERE f.application_month <> t.application_month").fetchone()[0]
    assert rows > 0 and months > 0
    assert late == 0 and stale == 0


def test_months_without_enough_history_say_why(demo):
    _, _, instance, _ = demo
    event = instance.get_latest_materialization_event(dg.AssetKey(["gold", "training_set"]))
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(["gold", "training_set"]),
                              asset_partitions=["2023-12-01"]), limit=1).records
    metadata = records[0].asset_materialization.metadata
    assert metadata["trainable"].value is False
    assert "5 labelled months in the window, 6 needed" in metadata["reason"].value
    assert event is not None


def test_registry_holds_every_candidate_of_every_trainable_month(demo):
    _, config, *_ = demo
    with catalog(config) as con:
        first_trainable = con.execute(
            "SELECT min(training_month) FROM gold.training_set").fetchone()[0]
        per_month = con.execute(
            "SELECT trained_month, list(algorithm ORDER BY algorithm) FROM ml.model_registry "
            "GROUP BY ALL ORDER BY 1").fetchall()
        record = con.execute("SELECT * FROM ml.model_registry LIMIT 1").df().iloc[0]
    assert first_trainable == date(2024, 1, 1)
    assert per_month[0][0] == first_trainable and len(per_month) == 23  # 2024-01 .. 2025-11
    assert all(algorithms == ["lightgbm", "logistic_regression"] for _, algorithms in per_month)
    for field in ("model_version", "window_first", "window_last", "label_def", "features",
                  "feature_schema_hash", "data_fingerprint", "params", "train_auc", "test_auc",
                  "oot_auc", "oot_ks", "oot_log_loss", "oot_brier", "artifact_path",
                  "code_version", "trained_at"):
        assert record[field] is not None, field
    assert record["label_def"] == "30dpd_6mob"


def test_no_artifact_is_a_pickle(demo):
    _, config, *_ = demo
    artifacts = list((Path(config.warehouse) / "ml" / "artifacts").rglob("*"))
    files = [p for p in artifacts if p.is_file()]
    assert files
    for path in files:
        assert path.suffix in {".json", ".txt"}, path
        head = path.read_bytes()[:2]
        assert head[:1] != b"\x80", path  # the pickle protocol marker
        if path.suffix == ".json":
            json.loads(path.read_text())


def test_alias_history_follows_the_gate(demo):
    _, config, *_ = demo
    with catalog(config) as con:
        history = con.execute("SELECT * FROM ml.model_aliases ORDER BY month").df()
        registry = con.execute("SELECT model_version, trained_month, oot_auc, checks_passed "
                               "FROM ml.model_registry").df().set_index("model_version")
    first = history[history["decision"] == "first"]
    assert len(first) == 1 and first.iloc[0]["month"] == pd.Timestamp("2024-01-01")
    previous = None
    for row in history.itertuples():
        if row.decision == "none":
            assert row.model_version is None and previous is None
        elif row.decision == "promoted":
            assert row.challenger_oot_auc >= row.champion_oot_auc + row.min_auc_gain
            assert row.model_version == row.challenger_version != previous
        elif row.decision == "kept":
            assert row.model_version == previous
            if row.challenger_version is not None:
                assert row.challenger_oot_auc < row.champion_oot_auc + row.min_auc_gain
        if row.model_version is not None:
            assert registry.loc[row.model_version, "checks_passed"]
            assert registry.loc[row.model_version, "trained_month"] <= row.month
        previous = row.model_version


def test_auto_mode_signs_off_promotions_with_their_swap_sets(demo):
    """champion.approval: auto (the default): every change of champion is approved by the gate,
    nothing waits, and each promotion has its four swap kinds, which add up to the month's OOT
    loans of the new version."""
    _, config, *_ = demo
    with catalog(config) as con:
        history = con.execute("SELECT month, decision, status, signed_off_by, model_version "
                              "FROM ml.model_aliases ORDER BY month").fetchall()
        swaps = con.execute(
            "SELECT s.month, s.new_version, count(*), sum(s.loans), any_value(r.n_oot) "
            "FROM ml.swap_sets s JOIN ml.model_registry r ON r.model_version = s.new_version "
            "GROUP BY ALL").fetchall()
    changed = [row for row in history if row[1] in ("first", "promoted")]
    assert changed and all(row[2:4] == ("approved", "gate") for row in changed)
    assert all(row[2] in (None, "approved") for row in history)
    promoted = {(row[0], row[4]) for row in history if row[1] == "promoted"}
    assert {(month, version) for month, version, *_ in swaps} == promoted
    assert all(kinds == 4 and loans == n_oot for _, _, kinds, loans, n_oot in swaps)


def test_predictions_use_a_champion_trained_no_later_than_their_month(demo):
    _, config, *_ = demo
    with catalog(config) as con:
        late = con.execute(
            "SELECT count(*) FROM gold.predictions p JOIN ml.model_registry r USING "
            "(model_version) WHERE r.trained_month > p.application_month").fetchone()[0]
        mismatched = con.execute(
            "SELECT count(*) FROM gold.predictions p JOIN ml.model_aliases a "
            "ON a.month = p.application_month WHERE a.model_version <> p.model_version"
        ).fetchone()[0]
        counts = con.execute(
            "SELECT f.application_month, count(f.loan_id), count(p.loan_id) "
            "FROM gold.feature_store f LEFT JOIN gold.predictions p USING (loan_id) "
            "WHERE f.application_month >= DATE '2024-01-01' GROUP BY ALL").fetchall()
        scores = con.execute("SELECT min(score), max(score) FROM gold.predictions").fetchone()
    assert late == 0 and mismatched == 0
    assert counts and all(loans == predicted for _, loans, predicted in counts)
    assert 0 <= scores[0] <= scores[1] <= 1


def test_training_a_month_twice_gives_identical_artifacts_and_metrics(demo):
    _, config, instance, _ = demo
    month = "2024-06-01"
    keys = [dg.AssetKey(["ml", "model_registry"]), dg.AssetKey(["ml", "score_reference"])]

    def snapshot():
        with catalog(config) as con:
            return con.execute(
                "SELECT model_version, artifact_digest, data_fingerprint, metrics "
                "FROM ml.model_registry WHERE trained_month = DATE '2024-06-01' ORDER BY 1"
            ).fetchall()

    before = snapshot()
    materialise(config, month, month, selection=keys, instance=instance)
    assert snapshot() == before and len(before) == 2


def test_model_checks_are_recorded_per_month(demo):
    _, _, instance, _ = demo
    key = dg.AssetCheckKey(dg.AssetKey(["ml", "model_registry"]), "past_labels_only")
    history = instance.event_log_storage.get_asset_check_execution_history(key, limit=100)
    partitions = {record.partition for record in history}
    assert {"2024-01-01", "2025-01-01"} <= partitions
    assert all(record.evaluation.passed for record in history)


# -- monitoring ------------------------------------------------------------------------------


def psi_by_the_book(reference: np.ndarray, actual: np.ndarray, numeric: bool) -> float:
    """The documented binning, written independently of sql/monitoring/stability.sql."""
    floor = 1e-4
    if numeric:
        ref = pd.to_numeric(pd.Series(reference), errors="coerce").to_numpy(float)
        act = pd.to_numeric(pd.Series(actual), errors="coerce").to_numpy(float)
        present = ref[~np.isnan(ref)]
        edges = np.unique(np.quantile(present, np.arange(1, 10) / 10))

        def bins(values):
            return [("null" if np.isnan(v) else int(np.searchsorted(edges, v, side="left")))
                    for v in values]
        ref_bins, act_bins = bins(ref), bins(act)
    else:
        ref_bins = ["null" if v is None else v for v in reference]
        act_bins = ["null" if v is None else v for v in actual]
    labels = set(ref_bins) | set(act_bins)
    total = 0.0
    for label in labels:
        e = max(ref_bins.count(label) / len(ref_bins), floor)
        a = max(act_bins.count(label) / len(act_bins), floor)
        total += (a - e) * math.log(a / e)
    return total


def test_stability_has_every_variable_of_every_prediction_month(demo):
    _, config, *_ = demo
    with catalog(config) as con:
        months = [m for (m,) in con.execute(
            "SELECT DISTINCT application_month FROM gold.predictions ORDER BY 1").fetchall()]
        per_month = dict(con.execute(
            "SELECT month, count(*) FROM monitoring.stability GROUP BY ALL").fetchall())
        features = con.execute(
            "SELECT len(r.features) FROM ml.model_registry r JOIN ml.model_aliases a "
            "USING (model_version) WHERE a.month = DATE '2024-01-01'").fetchall()[0][0]
    assert months[0] == date(2024, 1, 1) and months[-1] == date(2025, 1, 1)
    assert set(per_month) == set(months)
    assert per_month[date(2024, 1, 1)] == features + 1  # the score and every feature


def test_psi_equals_an_independent_recomputation(demo):
    _, config, *_ = demo
    with catalog(config) as con:
        stability = con.execute("SELECT * FROM monitoring.stability "
                                "WHERE month IN (DATE '2024-03-01', DATE '2024-10-01')").df()
        for month, rows in stability.groupby("month"):
            version = rows["model_version"].iloc[0]
            record = con.execute("SELECT trained_month, categorical_features FROM "
                                 "ml.model_registry WHERE model_version = $v",
                                 {"v": version}).df().iloc[0]
            reference = con.execute(
                "SELECT t.*, s.score FROM gold.training_set t JOIN ml.score_reference s "
                "USING (loan_id) WHERE t.training_month = $t AND t.split = 'oot' "
                "AND s.model_version = $v", {"t": record["trained_month"], "v": version}).df()
            actual = con.execute(
                "SELECT f.*, p.score FROM gold.feature_store f JOIN gold.predictions p "
                "USING (loan_id) WHERE f.application_month = $m", {"m": month}).df()
            for row in rows.itertuples():
                categorical = row.variable in set(record["categorical_features"])
                ref_values = reference[row.variable].astype(object).where(
                    reference[row.variable].notna(), None).tolist()
                act_values = actual[row.variable].astype(object).where(
                    actual[row.variable].notna(), None).tolist()
                if not categorical:
                    ref_values = [np.nan if v is None else float(v) for v in ref_values]
                    act_values = [np.nan if v is None else float(v) for v in act_values]
                expected = psi_by_the_book(np.array(ref_values, dtype=object),
                                           np.array(act_values, dtype=object), not categorical)
                assert row.psi == pytest.approx(expected, abs=1e-9), (month, row.variable)


def test_auc_equals_an_independent_rank_computation_six_months_later(demo):
    _, config, *_ = demo
    with catalog(config) as con:
        performance = con.execute("SELECT * FROM monitoring.performance ORDER BY month").df()
        matured = con.execute(
            "SELECT p.application_month, l.snapshot_date, p.score, l.label "
            "FROM gold.predictions p JOIN gold.label_store l USING (loan_id)").df()
    assert len(performance) == 13  # label months 2024-07 .. 2025-07
    for row in performance.itertuples():
        assert (row.month.year - row.application_month.year) * 12 \
            + row.month.month - row.application_month.month == 6
        group = matured[matured["application_month"] == row.application_month]
        assert (group["snapshot_date"].dt.to_period("M") == row.month.to_period("M")).all()
        positives = group.loc[group["label"] == 1, "score"].to_numpy()
        negatives = group.loc[group["label"] == 0, "score"].to_numpy()
        wins = (positives[:, None] > negatives[None, :]).sum()
        ties = (positives[:, None] == negatives[None, :]).sum()
        pairwise = (wins + 0.5 * ties) / (len(positives) * len(negatives))
        assert row.auc == pytest.approx(pairwise, abs=1e-9)
        assert row.gini == pytest.approx(2 * pairwise - 1, abs=1e-9)
        assert row.n == len(group) and row.defaults == len(positives)


def test_shifted_months_drift_and_earlier_months_do_not(demo):
    _, config, *_ = demo
    shifted_features = ["fe_1_mean", "fe_2_mean", "outstanding_debt"]
    with catalog(config) as con:
        stability = con.execute("SELECT month, variable, psi, band FROM monitoring.stability"
                                ).df()
    stability["month"] = stability["month"].dt.date
    before = stability[stability["month"] < SHIFT]
    after = stability[stability["month"] >= SHIFT]
    # 500 loans a month against a 500-loan reference: sampling noise alone reaches about 0.1
    assert not (before["band"] == "act").any()
    assert (before[before["variable"].isin(shifted_features)]["psi"] < 0.15).all()
    assert (before[before["variable"] == "score"]["psi"] < 0.15).all()
    for month, rows in after.groupby("month"):
        bands = rows.set_index("variable")["band"]
        assert (bands[shifted_features[:2]] == "act").all(), month
    assert (after[after["variable"] == "score"]["band"] != "stable").sum() >= 5


def test_checks_fire_in_the_shifted_months(demo):
    _, _, instance, _ = demo

    def history(asset, check):
        key = dg.AssetCheckKey(dg.AssetKey(["monitoring", asset]), check)
        return {r.partition: r.evaluation for r in
                instance.event_log_storage.get_asset_check_execution_history(key, limit=100)}

    csi = history("stability", "feature_csi")
    assert all(not csi[f"2024-{m:02d}-01"].passed for m in range(7, 13))
    assert all(csi[f"2024-{m:02d}-01"].passed for m in range(1, 7))
    score = history("stability", "score_psi")
    failed = {p: e.severity for p, e in score.items() if not e.passed}
    assert sum(p >= "2024-07-01" for p in failed) >= 5
    assert dg.AssetCheckSeverity.ERROR in failed.values()
    assert history("performance", "auc_floor")  # evaluated per label month


def test_drift_reports_and_plots_are_linked_in_the_ui(demo):
    _, config, instance, _ = demo
    reports = sorted((Path(config.warehouse) / "reports" / "drift").glob("*.html"))
    assert [p.stem for p in reports] == [f"{y}-{m:02d}" for y, m in
                                         [(2024, m) for m in range(1, 13)] + [(2025, 1)]]
    with catalog(config) as con:
        drifted = con.execute("SELECT month, count_if(drifted), count(*) FROM monitoring.drift "
                              "GROUP BY ALL ORDER BY 1").fetchall()
    assert drifted[-1][1] > drifted[0][1]  # more columns drift after the shift
    event = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey(["monitoring", "drift"]), asset_partitions=["2024-09-01"]),
        limit=1).records[0].asset_materialization
    assert event.metadata["report"].value.startswith("file://")
    summary = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey(["monitoring", "summary"]), asset_partitions=["2025-11-01"]),
        limit=1).records[0].asset_materialization.metadata
    for plot in ("psi_over_months", "auc_gini_over_months"):
        assert summary[plot].value.startswith("![") and "data:image/png;base64," in \
            summary[plot].value


def test_recommendations_name_metric_value_and_threshold(demo):
    _, config, *_ = demo
    with catalog(config) as con:
        rows = con.execute("SELECT month, recommendation, reasons, reasons_json "
                           "FROM monitoring.recommendation ORDER BY month").df()
    assert set(rows["recommendation"]) <= {"retain", "watch", "retrain"}
    assert "retrain" in set(rows["recommendation"])
    for row in rows.itertuples():
        for reason in json.loads(row.reasons_json):
            assert {"metric", "value", "threshold", "action"} <= set(reason)
            assert reason["metric"] in row.reasons


def test_the_retrain_sensor_asks_to_retrain_the_months_that_need_it(demo):
    _, config, instance, _ = demo
    defs = build_definitions(config)
    sensor = defs.resolve_sensor_def("retrain_on_recommendation")

    def tick(cursor):
        context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                          resources={"lake": build_lake(config)})
        return sensor.evaluate_tick(context)

    with catalog(config) as con:
        retrain = {m.isoformat() for (m,) in con.execute(
            "SELECT month FROM monitoring.recommendation WHERE recommendation = 'retrain'"
        ).fetchall()}
    first = tick(None)
    assert retrain and {r.partition_key for r in first.run_requests} == retrain
    request = first.run_requests[0]
    assert dg.AssetKey(["gold", "training_set"]) in request.asset_selection
    assert dg.AssetKey(["ml", "model_aliases"]) in request.asset_selection
    assert dg.AssetKey(["raw", "lms_loan_daily"]) not in request.asset_selection
    assert request.tags["vintage/reason"].startswith("retrain: ")
    assert tick(first.cursor).run_requests == []


def test_every_table_reads_the_same_in_polars_and_the_catalog(demo):
    """A second, independent reader of every Delta table (polars over delta-rs) sees exactly
    the rows the DuckDB catalog's view shows."""
    import polars as pl

    _, config, *_ = demo
    lake = build_lake(config)
    with catalog(config) as con:
        for table in all_tables():
            if lake.version(table) is None:
                continue
            frame = pl.scan_delta(lake.table_uri(table)).collect()
            columns = [c for c in frame.columns if not frame[c].dtype.is_nested()]
            quoted = ", ".join(f'"{c}"' for c in columns)
            con.register("polars_rows", frame.select(columns).to_arrow())
            [(view_rows,)] = con.execute(f"SELECT count(*) FROM {table.qualified_name}"
                                         ).fetchall()
            [(differing,)] = con.execute(
                f"SELECT count(*) FROM ((SELECT {quoted} FROM {table.qualified_name} EXCEPT ALL "
                f"SELECT {quoted} FROM polars_rows) UNION ALL (SELECT {quoted} FROM polars_rows "
                f"EXCEPT ALL SELECT {quoted} FROM {table.qualified_name}))").fetchall()
            assert (frame.height, differing) == (view_rows, 0), table.qualified_name
            con.unregister("polars_rows")


def test_every_model_version_records_the_table_versions_it_learned_from(demo):
    _, config, *_ = demo
    lake = build_lake(config)
    with catalog(config) as con:
        lineage = con.execute("SELECT model_version, input_versions FROM ml.model_registry"
                              ).fetchall()
    assert lineage
    for version, recorded in lineage:
        versions = json.loads(recorded)
        assert set(versions) == {"gold.training_set", "gold.label_store", "gold.feature_store"}
        for name, number in versions.items():
            [table] = [t for t in all_tables() if t.qualified_name == name]
            assert 0 <= number <= lake.version(table), (version, name)
