"""Operations: the monthly schedule, the source-file sensor's cursor, label-maturity automation,
and the retrain sensor."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import dagster as dg
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from ml_assets.definitions import build_definitions
from ml_assets.demo.generator import generate
from ml_assets.jobs import monthly_pipeline
from resources.sources import Sources

defs = build_definitions()


def test_the_schedule_asks_for_the_month_that_just_closed():
    schedule = defs.resolve_schedule_def("monthly_close")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert schedule.job_name == monthly_pipeline.name
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=datetime(2025, 12, 1, 6, 0, tzinfo=UTC))
        [request] = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2025-11-01"


@pytest.fixture
def folder(tmp_path):
    generate(tmp_path / "src", scale=0.02, seed=9)
    return tmp_path


def tick(sensor_name: str, sources: Sources, cursor: str | None, instance):
    sensor = defs.resolve_sensor_def(sensor_name)
    context = dg.build_sensor_context(instance=instance, cursor=cursor,
                                      resources={"sources": sources}, definitions=defs)
    result = sensor.evaluate_tick(context)
    return result.run_requests, result.cursor


def requested(requests) -> dict[str, set[str]]:
    """Source file -> months requested."""
    out: dict[str, set[str]] = {}
    for request in requests:
        out.setdefault(request.tags["vintage/trigger"], set()).add(request.partition_key)
    return out


def test_the_source_files_sensor_asks_once_per_file_version_and_changed_month(folder):
    sources = Sources(folder=str(folder / "src"), staging_dir=str(folder / "staging"))
    with dg.instance_for_test() as instance:
        first, cursor = tick("source_files", sources, None, instance)
        months = requested(first)
        assert months["source-files:lms_loan_daily.csv"] == {
            f"{y}-{m:02d}-01" for y, m in [(2023, m) for m in range(1, 13)]
            + [(2024, m) for m in range(1, 13)] + [(2025, m) for m in range(1, 12)]}
        assert len(months["source-files:feature_clickstream.csv"]) == 24
        assert len({r.run_key for r in first}) == len(first)
        lms = next(r for r in first if r.tags["vintage/trigger"].endswith("lms_loan_daily.csv"))
        assert dg.AssetKey(["raw", "lms_loan_daily"]) in lms.asset_selection
        assert dg.AssetKey(["monitoring", "summary"]) in lms.asset_selection
        assert dg.AssetKey(["raw", "features_financials"]) not in lms.asset_selection

        again, cursor_again = tick("source_files", sources, cursor, instance)
        assert again == [] and json.loads(cursor_again) == json.loads(cursor)

        # a corrected month: one row of 2024-03 changes; the file changes, one month is asked for
        path = folder / "src" / "features_financials.csv"
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in path.open().readline().strip().split(",")}))
        rows = table.to_pylist()
        index = next(i for i, r in enumerate(rows) if r["snapshot_date"] == "2024-03-01")
        rows[index]["Annual_Income"] = "99999.0"
        pacsv.write_csv(pa.Table.from_pylist(rows, schema=table.schema), path)
        os.utime(path, ns=(1, 2 * 10**18))
        changed, cursor = tick("source_files", sources, cursor_again, instance)
        assert requested(changed) == {"source-files:features_financials.csv": {"2024-03-01"}}

        # the same version again: nothing
        assert tick("source_files", sources, cursor, instance)[0] == []


@pytest.mark.parametrize("measured", ["performance", "calibration"])
def test_label_maturity_measures_performance_when_labels_land(measured):
    sensor = defs.resolve_sensor_def("label_maturity")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    performance = dg.AssetKey(["monitoring", measured])
    assert performance in sensor.asset_selection.resolve(defs.resolve_asset_graph())
    early_read = dg.AssetKey(["monitoring", "early_read_performance"])
    with dg.instance_for_test() as instance:
        def land(key, partition):
            instance.report_runless_asset_event(
                dg.AssetMaterialization(asset_key=key, partition=partition))

        def evaluate(cursor):
            return dg.evaluate_automation_conditions(
                defs=defs, instance=instance, asset_selection=sensor.asset_selection,
                evaluation_time=datetime(2025, 8, 10, tzinfo=UTC), cursor=cursor)

        # the predictions of 2025-01 (target at mob 6) and 2025-04 (early read at mob 3)
        land(dg.AssetKey(["gold", "feature_store"]), "2025-01-01")
        land(dg.AssetKey(["gold", "predictions"]), "2025-01-01")
        land(dg.AssetKey(["gold", "predictions"]), "2025-04-01")
        result = evaluate(None)
        assert result.get_requested_partitions(performance) == set()  # no labels yet
        assert result.get_requested_partitions(early_read) == set()
        land(dg.AssetKey(["gold", "label_store"]), "2025-07-01")
        result = evaluate(result.cursor)
        assert result.get_requested_partitions(performance) == {"2025-07-01"}
        assert result.get_requested_partitions(early_read) == {"2025-07-01"}
        result = evaluate(result.cursor)
        assert result.get_requested_partitions(performance) == set()  # asked for once
        assert result.get_requested_partitions(early_read) == set()


def test_the_retrain_sensor_is_off_by_default():
    sensor = defs.resolve_sensor_def("retrain_on_recommendation")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert defs.resolve_sensor_def("source_files").default_status == \
        dg.DefaultSensorStatus.STOPPED
