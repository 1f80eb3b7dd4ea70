"""Sensors: new or changed source files, labels that mature, and a retrain recommendation."""

import json
from pathlib import Path

import dagster as dg
import duckdb

from ml_assets.jobs import monthly_pipeline
from ml_assets.months import parse_month, partition_key
from ml_assets.spec import asset_key
from ml_assets.tables import (
    CALIBRATION,
    EARLY_READ_PERFORMANCE,
    PERFORMANCE,
    RAW_TABLES,
    RECOMMENDATION,
    SEGMENT_PERFORMANCE,
    TRAINING_SET,
)
from resources.lake import Lake, sql_text
from resources.sources import SOURCE_NAMES, SourceError, Sources, fingerprint, locate

SOURCE_FILES_TAG = "vintage/trigger"


def month_digests(staged_parquet: Path) -> dict[str, str]:
    with duckdb.connect() as con:
        con.execute(sql_text("macros"))
        con.read_parquet(str(staged_parquet)).create_view("source")
        return {month.isoformat(): digest
                for month, digest in con.execute(sql_text("raw/month_digests")).fetchall()}


def downstream_of(key: dg.AssetKey, defs_graph) -> list[dg.AssetKey]:
    return sorted(dg.AssetSelection.assets(key).downstream().resolve(defs_graph))


@dg.sensor(
    job=monthly_pipeline,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Notices new or changed source files and runs the months whose rows changed, "
                "from the source's raw asset down. Never asks twice for the same file version.",
)
def source_files(context: dg.SensorEvaluationContext, sources: Sources):
    """Cursor: for each source, the fingerprint (path, size, modification time) of the version
    last seen and a digest of each of its months' rows."""
    seen = json.loads(context.cursor) if context.cursor else {}
    folder = Path(sources.folder)
    partitions = context.repository_def.get_job(monthly_pipeline.name).partitions_def
    available = set(partitions.get_partition_keys())
    graph = context.repository_def.asset_graph
    requests = []
    for name in SOURCE_NAMES:
        try:
            path = locate(folder, name)
        except SourceError as error:
            context.log.info(f"{name}: {error}")
            continue
        version = fingerprint(path)
        if seen.get(name, {}).get("fingerprint") == version:
            continue
        digests = month_digests(sources.stage(name).staged)
        before = seen.get(name, {}).get("months", {})
        changed = sorted(m for m, digest in digests.items() if before.get(m) != digest)
        selection = downstream_of(asset_key(RAW_TABLES[name]), graph)
        for month in changed:
            if month not in available:
                context.log.info(f"{name}: {month} has no partition yet (not a complete month)")
                continue
            requests.append(dg.RunRequest(
                run_key=f"{name}:{version}:{month}", partition_key=month,
                asset_selection=selection,
                tags={SOURCE_FILES_TAG: f"source-files:{path.name}"}))
        seen[name] = {"fingerprint": version, "months": digests}
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(seen, sort_keys=True))


# When a label month's labels land (gold/label_store, with the predictions six months before
# already made), its performance (with the AUC by segment) and calibration are measured, and
# the early read of the predictions three months before: the eager conditions of
# monitoring/performance, monitoring/calibration and monitoring/early_read_performance,
# evaluated by this sensor, on by default.
label_maturity = dg.AutomationConditionSensorDefinition(
    "label_maturity",
    target=dg.AssetSelection.assets(*map(asset_key, (PERFORMANCE, SEGMENT_PERFORMANCE,
                                                     CALIBRATION, EARLY_READ_PERFORMANCE))),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Measures monitoring/performance, monitoring/calibration and "
                "monitoring/early_read_performance for a label month as soon as its labels "
                "land.",
)


@dg.sensor(
    job=monthly_pipeline,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Turns a `retrain` recommendation (monitoring/recommendation) into a run of the "
                "training set, the candidates, the champion gate and what follows, for that "
                "month. Off by default.",
)
def retrain_on_recommendation(context: dg.SensorEvaluationContext, lake: Lake):
    """Cursor: the storage id of the last recommendation materialisation looked at."""
    after = int(context.cursor) if context.cursor else 0
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key(RECOMMENDATION), after_storage_id=after),
        limit=1000, ascending=True).records
    if not records:
        return dg.SkipReason("no new recommendation")
    months = sorted({r.partition_key for r in records if r.partition_key})
    graph = context.repository_def.asset_graph
    selection = downstream_of(asset_key(TRAINING_SET), graph)
    requests = []
    with duckdb.connect() as con:
        published = set(lake.published_months(RECOMMENDATION))
        wanted = [parse_month(m) for m in months if parse_month(m) in published]
        if wanted:
            lake.read(con, "recommendations", RECOMMENDATION, wanted)
            rows = con.execute("SELECT month, reasons FROM recommendations "
                               "WHERE recommendation = 'retrain' ORDER BY month").fetchall()
            for month, reasons in rows:
                requests.append(dg.RunRequest(
                    run_key=f"retrain:{month.isoformat()}:{records[-1].storage_id}",
                    partition_key=partition_key(month), asset_selection=selection,
                    tags={"vintage/reason": f"retrain: {reasons}"[:200],
                          SOURCE_FILES_TAG: "retrain"}))
    return dg.SensorResult(run_requests=requests, cursor=str(records[-1].storage_id))


sensors = [source_files, label_maturity, retrain_on_recommendation]
