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
from sklearn.metrics import roc_auc_score

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
                    "gold.feature_store", "analytics.vintage_curve", "analytics.roll_rate",
                    "monitoring.early_read_performance", "monitoring.segment_performance"}
        assert expected <= views
        for view in expected:
            assert con.execute(f"SELECT count(*) FROM {view}").fetchone()[0] > 0, view


def independent_labels(lms_csv, mob: int = 6) -> pd.DataFrame:
    """The course definition (30+ dpd at `mob`) computed straight from the raw lms file with
    pandas."""
    lms = pd.read_csv(lms_csv, dtype=str)
    at_mob = lms[lms["installment_num"].astype(int) == mob].copy()
    overdue = at_mob["overdue_amt"].astype(float)
    due = at_mob["due_amt"].astype(float)
    snapshot = pd.to_datetime(at_mob["snapshot_date"])
    missed = [math.ceil(o / d) if o > 0 else 0 for o, d in zip(overdue, due, strict=True)]
    first_missed = [s - pd.DateOffset(months=m) for s, m in zip(snapshot, missed, strict=True)]
    dpd = [(s - f).days if o > 0 else 0
           for s, f, o in zip(snapshot, first_missed, overdue, strict=True)]
    at_mob["label"] = [int(d >= 30) for d in dpd]
    return at_mob.set_index("loan_id")["label"].sort_index()


@pytest.mark.parametrize(("label_def", "mob"), [("30dpd_6mob", 6), ("30dpd_3mob", 3)])
def test_label_store_equals_the_course_definition(demo, label_def, mob):
    root, config, *_ = demo
    expected = independent_labels(root / "demo" / "lms_loan_daily.csv", mob)
    with catalog(config) as con:
        assert {r[0] for r in con.execute("SELECT DISTINCT label_def FROM gold.label_store")
                .fetchall()} == {"30dpd_6mob", "30dpd_3mob"}
        store = con.execute("SELECT loan_id, label, label_def, snapshot_date, application_month "
                            "FROM gold.label_store WHERE label_def = $d", {"d": label_def}
                            ).df().set_index("loan_id").sort_index()
    assert len(store) == len(expected) > 0
    assert store["label"].astype(int).equals(expected.astype(int))
    months_apart = store.apply(
        lambda r: (r.snapshot_date.year - r.application_month.year) * 12
        + r.snapshot_date.month - r.application_month.month, axis=1)
    assert set(months_apart) == {mob}
    assert 0.1 < store["label"].mean() < 0.45


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
            "FROM gold.predictions p JOIN gold.label_store l USING (loan_id) "
            "WHERE l.label_def = '30dpd_6mob'").df()
    assert len(performance) == 13  # label months 2024-07 .. 2025-07
    assert set(performance["label_def"]) == {"30dpd_6mob"}
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


def test_every_candidate_has_its_validation_report_linked_from_the_registry(demo):
    """One self-contained report per model version of the demo, in reports/validation/, listed
    in ml.validation_reports and linked from the registry's materialisation of its month."""
    _, config, instance, _ = demo
    with catalog(config) as con:
        versions = con.execute("SELECT model_version, model_name, trained_month "
                               "FROM ml.model_registry").fetchall()
        listed = dict(con.execute("SELECT model_version, report_uri "
                                  "FROM ml.validation_reports").fetchall())
    folder = (Path(config.warehouse) / "reports" / "validation").resolve()
    assert len(versions) == 46  # two candidates a month, 2024-01..2025-11
    assert sorted(p.stem for p in folder.glob("*.html")) == sorted(v for v, *_ in versions)
    assert listed == {version: str(folder / f"{version}.html") for version, *_ in versions}
    for version, name, month in versions:
        event = instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(["ml", "model_registry"]),
            asset_partitions=[month.isoformat()]), limit=1).records[0].asset_materialization
        assert event.metadata[f"{name}_validation_report"].value == \
            (folder / f"{version}.html").as_uri()
        html = (folder / f"{version}.html").read_text()
        assert f"<title>Validation report: {version}</title>" in html
        # every src and href is an embedded image or an anchor of the page
        assert not re.findall(r"""(?:src|href)\s*=\s*(?!["']?(?:data:|#))""", html), version


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


def test_vintage_curve_equals_an_independent_recomputation(demo):
    _, config, instance, _ = demo
    max_mob = config.analytics.vintage_max_mob
    with catalog(config) as con:
        curve = con.execute("SELECT * FROM analytics.vintage_curve").df()
        # each loan-month with the worst dpd of the loan's months up to it, straight from silver
        expected = con.execute("""
            WITH loan_months AS (
                SELECT loan_id, dpd, balance, mob,
                       date_trunc('month', loan_start_date)::DATE AS cohort_month,
                       date_trunc('month', snapshot_date)::DATE AS month
                FROM silver.loan_daily),
            worst AS (
                SELECT now.loan_id, now.month, now.cohort_month, now.mob, now.dpd, now.balance,
                       max(past.dpd) AS worst_dpd
                FROM loan_months AS now
                JOIN loan_months AS past ON past.loan_id = now.loan_id AND past.month <= now.month
                GROUP BY ALL)
            SELECT month, cohort_month, mob, count(*) AS loans,
                   avg(CASE WHEN worst_dpd >= 30 THEN 1 ELSE 0 END) AS ever_30dpd_rate,
                   avg(CASE WHEN worst_dpd >= 60 THEN 1 ELSE 0 END) AS ever_60dpd_rate,
                   avg(CASE WHEN worst_dpd >= 90 THEN 1 ELSE 0 END) AS ever_90dpd_rate,
                   avg(CASE WHEN balance > 0 AND dpd > 0 THEN 1 ELSE 0 END)
                       AS current_delinquent_rate,
                   avg(CASE WHEN balance <= 0 THEN 1 ELSE 0 END) AS closed_rate
            FROM worst
            WHERE date_diff('month', cohort_month, month) <= $max_mob
            GROUP BY month, cohort_month, mob""", {"max_mob": max_mob}).df()
    key = ["month", "cohort_month", "mob"]
    merged = expected.merge(curve, on=key, how="outer", suffixes=("_expected", ""),
                            indicator=True)
    assert (merged["_merge"] == "both").all() and len(merged) == len(curve) > 200
    for column in ("loans", "ever_30dpd_rate", "ever_60dpd_rate", "ever_90dpd_rate",
                   "current_delinquent_rate", "closed_rate"):
        assert np.allclose(merged[column], merged[f"{column}_expected"]), column
    # the demo's cohorts: 500 loans each, followed to mob 10, the 30+ dpd share only rising
    june = curve[curve["cohort_month"] == pd.Timestamp("2023-06-01")].sort_values("mob")
    assert list(june["mob"]) == list(range(11)) and set(june["loans"]) == {500}
    assert june["ever_30dpd_rate"].is_monotonic_increasing
    assert 0.1 < june["ever_30dpd_rate"].iloc[6] < 0.6
    chart = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey(["analytics", "vintage_curve"]),
        asset_partitions=["2025-11-01"]), limit=1).records[0].asset_materialization.metadata
    assert chart["vintage_curve"].value.startswith("![Ever 30+ dpd rate")


def test_roll_rates_equal_an_independent_recomputation(demo):
    _, config, instance, _ = demo
    with catalog(config) as con:
        rolls = con.execute("SELECT * FROM analytics.roll_rate").df()
        silver = con.execute("SELECT loan_id, snapshot_date, dpd, balance "
                             "FROM silver.loan_daily").df()
    silver["month"] = silver["snapshot_date"].dt.to_period("M")
    silver["bucket"] = np.select(
        [silver["balance"] <= 0, silver["dpd"] <= 0, silver["dpd"] < 30, silver["dpd"] < 60,
         silver["dpd"] < 90], ["closed", "current", "1-29", "30-59", "60-89"], "90+")
    before = silver.assign(month=silver["month"] + 1)[["loan_id", "month", "bucket"]]
    moves = silver.merge(before, on=["loan_id", "month"], suffixes=("", "_before"))
    expected = (moves.groupby(["month", "bucket_before", "bucket"]).size()
                .rename("loans").reset_index())
    expected["rate"] = expected["loans"] / expected.groupby(
        ["month", "bucket_before"])["loans"].transform("sum")
    expected["month"] = expected["month"].dt.to_timestamp()
    merged = expected.rename(columns={"bucket_before": "from_bucket", "bucket": "to_bucket"}) \
        .merge(rolls, on=["month", "from_bucket", "to_bucket"], how="outer",
               suffixes=("_expected", ""), indicator=True)
    assert (merged["_merge"] == "both").all() and len(merged) > 100
    assert (merged["loans"] == merged["loans_expected"]).all()
    assert np.allclose(merged["rate"], merged["rate_expected"])
    assert {"current", "1-29", "30-59", "60-89", "90+", "closed"} <= set(rolls["to_bucket"])
    metadata = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey(["analytics", "roll_rate"]),
        asset_partitions=["2024-09-01"]), limit=1).records[0].asset_materialization.metadata
    assert "| current |" in metadata["roll_rate_matrix"].value
    assert 0 < metadata["roll_from_current"].value < config.analytics.max_roll_from_current


def test_early_read_auc_is_measured_three_months_after_prediction(demo):
    _, config, instance, _ = demo
    with catalog(config) as con:
        early = con.execute("SELECT * FROM monitoring.early_read_performance ORDER BY month").df()
        matured = con.execute(
            "SELECT p.application_month, l.snapshot_date, p.score, l.label "
            "FROM gold.predictions p JOIN gold.label_store l USING (loan_id) "
            "WHERE l.label_def = '30dpd_3mob'").df()
        target_months = {r[0] for r in con.execute(
            "SELECT month FROM monitoring.performance").fetchall()}
    # predictions from 2024-01 to 2025-01, their early read from 2024-04 to 2025-04
    assert len(early) == 13 and set(early["label_def"]) == {"30dpd_3mob"}
    assert early["month"].min() < pd.Timestamp(min(target_months))  # the early read is first
    for row in early.itertuples():
        assert (row.month.year - row.application_month.year) * 12 \
            + row.month.month - row.application_month.month == 3
        group = matured[matured["application_month"] == row.application_month]
        assert (group["snapshot_date"].dt.to_period("M") == row.month.to_period("M")).all()
        expected = roc_auc_score(group["label"], group["score"])
        assert row.auc == pytest.approx(expected, abs=1e-9)
        assert row.gini == pytest.approx(2 * expected - 1, abs=1e-9)
        assert row.n == len(group) and row.defaults == group["label"].sum()
    key = dg.AssetCheckKey(dg.AssetKey(["monitoring", "early_read_performance"]), "auc_floor")
    floor = {r.partition: r.evaluation for r in
             instance.event_log_storage.get_asset_check_execution_history(key, limit=100)}
    for row in early.itertuples():
        evaluation = floor[row.month.strftime("%Y-%m-01")]
        assert evaluation.passed == (row.auc >= config.monitoring.early_read_auc_floor)


def test_segment_auc_equals_an_independent_recomputation(demo):
    _, config, *_ = demo
    column = config.monitoring.segment_column
    with catalog(config) as con:
        segments = con.execute("SELECT * FROM monitoring.segment_performance").df()
        matured = con.execute(
            f"SELECT l.snapshot_date, p.score, l.label, "
            f"coalesce(f.{column}::VARCHAR, 'missing') AS segment "
            "FROM gold.predictions p JOIN gold.label_store l USING (loan_id) "
            "LEFT JOIN gold.feature_store f USING (loan_id) "
            "WHERE l.label_def = '30dpd_6mob'").df()
    matured["month"] = matured["snapshot_date"].dt.to_period("M").dt.to_timestamp()
    assert set(segments["segment_column"]) == {column}
    assert len(segments) > 13 * 5
    for (month, segment), group in matured.groupby(["month", "segment"]):
        [row] = segments[(segments["month"] == month)
                         & (segments["segment"] == segment)].itertuples()
        assert row.n == len(group) and row.defaults == group["label"].sum()
        if 0 < group["label"].sum() < len(group):
            assert row.auc == pytest.approx(roc_auc_score(group["label"], group["score"]),
                                            abs=1e-9)
        else:
            assert pd.isna(row.auc)


# -- what a credit-risk team reviews: grades, calibration, reason codes, cut-offs --------------


def test_calibration_by_grade_equals_an_independent_recomputation(demo):
    from scipy import special, stats

    from ml_assets.model_config import load_model_config

    _, config, instance, _ = demo
    scale = load_model_config().rating_scale
    with catalog(config) as con:
        calibration = con.execute("SELECT * FROM monitoring.calibration ORDER BY ALL").df()
        # plain SQL: the predictions of each application month with the labels six months on
        expected = con.execute("""
            SELECT date_trunc('month', l.snapshot_date)::DATE AS month, p.model_version,
                   p.grade, count(*) AS loans, sum(l.label)::BIGINT AS defaults,
                   avg(p.score) AS predicted_pd, avg(l.label) AS observed_rate
            FROM gold.predictions p JOIN gold.label_store l USING (loan_id)
            WHERE l.label_def = '30dpd_6mob' GROUP BY ALL""").df()
        deciles = con.execute("""
            SELECT month, sum(o) AS o, sum(e) AS e, sum(n) AS n, decile FROM (
                SELECT date_trunc('month', l.snapshot_date)::DATE AS month, l.label AS o,
                       p.score AS e, 1 AS n, ntile(10) OVER (PARTITION BY
                       date_trunc('month', l.snapshot_date) ORDER BY p.score, p.loan_id) AS decile
                FROM gold.predictions p JOIN gold.label_store l USING (loan_id)
                WHERE l.label_def = '30dpd_6mob')
            GROUP BY month, decile""").df()
    assert len(calibration.groupby("month")) == 13  # label months 2024-07 .. 2025-07
    assert len(calibration) == 13 * len(scale)  # every grade, one champion per vintage
    assert set(calibration["label_def"]) == {"30dpd_6mob"}
    merged = calibration.merge(expected, on=["month", "model_version", "grade"], how="left",
                               suffixes=("", "_sql"))
    with_loans = merged[merged["loans"] > 0]
    assert len(with_loans) == len(expected)
    for row in with_loans.itertuples():
        assert (row.loans, row.defaults) == (row.loans_sql, row.defaults_sql)
        assert row.predicted_pd == pytest.approx(row.predicted_pd_sql)
        assert row.observed_rate == pytest.approx(row.observed_rate_sql)
        assert row.binomial_p_value == pytest.approx(
            stats.binom.sf(row.defaults - 1, row.loans, row.predicted_pd))
        assert row.jeffreys_p_value == pytest.approx(special.betainc(
            row.defaults + 0.5, row.loans - row.defaults + 0.5, row.predicted_pd))
    for month, group in deciles.groupby("month"):
        statistic = ((group.o - group.e) ** 2 / (group.e * (1 - group.e / group.n))).sum()
        rows = calibration[calibration["month"] == month]
        assert rows["hl_statistic"].iloc[0] == pytest.approx(statistic)
        assert rows["hl_p_value"].iloc[0] == pytest.approx(stats.chi2.sf(statistic, 8))
    key = dg.AssetCheckKey(dg.AssetKey(["monitoring", "calibration"]), "hosmer_lemeshow")
    checked = {r.partition: r.evaluation for r in
               instance.event_log_storage.get_asset_check_execution_history(key, limit=100)}
    for month, group in calibration.groupby("month"):
        evaluation = checked[month.strftime("%Y-%m-%d")]
        assert evaluation.passed == (group["hl_p_value"].iloc[0] >= 0.05)
        if group["hl_p_value"].iloc[0] < 0.01:
            assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    [record] = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey(["monitoring", "calibration"]), asset_partitions=["2025-01-01"]),
        limit=1).records
    assert record.asset_materialization.metadata["calibration_plot"].value.startswith(
        "![")


def test_every_prediction_has_its_grade_cutoff_and_reasons(demo):
    from scipy import special

    from ml_assets.definitions import build_resources
    from ml_assets.model_config import load_model_config
    from ml_assets.rating import grade_of

    _, config, *_ = demo
    models = load_model_config()
    with catalog(config) as con:
        predictions = con.execute("SELECT * FROM gold.predictions ORDER BY loan_id").df()
        features = con.execute("SELECT * FROM gold.feature_store WHERE application_month = "
                               "DATE '2024-10-01' ORDER BY loan_id").df()
    assert (predictions["grade"] == grade_of(predictions["score"], models.rating_scale)).all()
    declined = predictions[predictions["decision"] == "decline"]
    assert len(declined) > 0 and declined["reason_1"].notna().all()
    assert (predictions["decision_cutoff"] == models.decision_cutoff).all()  # mode pd
    assert ((predictions["score"] >= predictions["decision_cutoff"])
            == (predictions["decision"] != "approve")).all()
    # the reasons of one month: its champion's largest positive contributions, which add up
    # (with the bias) to the log-odds of the published score
    month = predictions[predictions["application_month"] == pd.Timestamp("2024-10-01")]
    version = month["model_version"].iloc[0]
    model = build_resources(config)["model_store"].load(version.rsplit("-", 2)[0], version)
    contributions, bias = model.contributions(features)
    assert np.allclose(contributions.sum(axis=1) + bias, special.logit(month["score"]),
                       atol=1e-6)
    order = np.argsort(-contributions, axis=1, kind="stable")
    names = np.array(model.features.names)
    top = np.where(contributions[np.arange(len(features)), order[:, 0]] > 0,
                   names[order[:, 0]], None)
    shown = month["reason_1"].to_numpy()
    assert (shown[top != None] == top[top != None]).all()  # noqa: E711
    assert month["reason_text"].notna().mean() > 0.9
    assert "; " in month["reason_text"].dropna().iloc[0]


def test_cutoff_strategy_equals_the_champions_reference(demo):
    _, config, instance, _ = demo
    with catalog(config) as con:
        strategy = con.execute("SELECT * FROM ml.cutoff_strategy ORDER BY month, band").df()
        months = con.execute("SELECT count(*) FROM ml.model_aliases WHERE model_version "
                             "IS NOT NULL").fetchone()[0]
        checked = con.execute("""
            SELECT s.month, s.band, s.approval_rate,
                   count(*) FILTER (WHERE r.score < s.cutoff_pd) / count(*) AS approval_sql,
                   avg(r.label) FILTER (WHERE r.score < s.cutoff_pd) AS bad_sql,
                   s.expected_bad_rate
            FROM ml.cutoff_strategy s JOIN ml.score_reference r USING (model_version)
            GROUP BY ALL""").df()
    assert strategy["month"].nunique() == months
    assert (strategy.groupby("month")["band"].max() == 20).all()
    assert np.allclose(checked["approval_rate"], checked["approval_sql"])
    assert np.allclose(checked["expected_bad_rate"].astype(float),
                       checked["bad_sql"].astype(float), equal_nan=True)
    assert (strategy.groupby("month")["approval_rate"].apply(
        lambda s: s.is_monotonic_increasing)).all()
    [record] = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey(["ml", "cutoff_strategy"]), asset_partitions=["2025-01-01"]),
        limit=1).records
    metadata = record.asset_materialization.metadata
    assert metadata["decision_cutoff"].value == 0.5
    assert metadata["tradeoff_chart"].value.startswith("![")


def test_woe_and_iv_equal_a_recount_of_the_training_split(demo):
    from ml_assets.model_config import load_model_config
    from ml_assets.woe import iv_band

    _, config, instance, _ = demo
    bounds = load_model_config().iv_bounds
    with catalog(config) as con:
        iv = con.execute("SELECT * FROM ml.feature_iv ORDER BY ALL").df()
        trained = con.execute("SELECT DISTINCT trained_month AS training_month "
                              "FROM ml.model_registry").df()
        # the numeric bins of one month, recounted in plain SQL from their recorded limits
        recount = con.execute("""
            SELECT b.feature, b.bin_index, b.loans, b.defaults,
                   count(t.loan_id) AS loans_sql, coalesce(sum(t.label), 0) AS defaults_sql
            FROM ml.feature_iv b JOIN gold.training_set t
              ON t.training_month = b.training_month AND t.split = 'train'
             AND CASE WHEN b.bin = 'missing' THEN t.annual_income IS NULL
                      ELSE (b.lower IS NULL OR t.annual_income >= b.lower)
                           AND (b.upper IS NULL OR t.annual_income < b.upper) END
            WHERE b.feature = 'annual_income' AND b.training_month = DATE '2024-06-01'
            GROUP BY ALL""").df()
    assert set(iv["training_month"]) == set(trained["training_month"])
    assert (recount["loans"] == recount["loans_sql"]).all() and len(recount) >= 2
    assert (recount["defaults"] == recount["defaults_sql"]).all()
    for (_, feature), bins in iv.groupby(["training_month", "feature"]):
        bad = bins["defaults"].to_numpy(float)
        good = bins["loans"].to_numpy(float) - bad
        with np.errstate(divide="ignore", invalid="ignore"):
            woe = np.where((good > 0) & (bad > 0),
                           np.log((good / good.sum()) / (bad / bad.sum())), 0.0)
        assert np.allclose(bins["woe"], woe, atol=1e-6), feature
        total = ((good / good.sum() - bad / bad.sum()) * woe).sum()
        assert bins["feature_iv"].iloc[0] == pytest.approx(total, abs=1e-6)
        assert bins["iv_band"].iloc[0] == iv_band(bins["feature_iv"].iloc[0], bounds)
    strongest = iv.groupby("feature")["feature_iv"].mean().sort_values().index[-3:]
    assert "delay_from_due_date" in strongest or "outstanding_debt" in strongest
    [record] = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey(["ml", "feature_iv"]), asset_partitions=["2024-06-01"]),
        limit=1).records
    assert record.asset_materialization.metadata["iv_chart"].value.startswith("![")
