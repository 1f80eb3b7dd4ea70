"""Maintenance of the warehouse: old table versions are kept `storage.retention_days` (30 by
default) for time travel and reproduction, then their files are vacuumed, by a job on a weekly
schedule (and `vintage warehouse vacuum`)."""

import dagster as dg

from ml_assets.tables import all_tables
from resources.lake import Lake


@dg.op(description="Vacuum every table: remove the files no version newer than the retention "
                   "(storage.retention_days) needs.")
def vacuum_tables(context: dg.OpExecutionContext, lake: Lake) -> None:
    removed = {}
    for table in all_tables():
        files = lake.vacuum(table)
        if files:
            removed[table.qualified_name] = len(files)
            context.log.info(f"{table.qualified_name}: {len(files)} old files removed")
    context.add_output_metadata({"retention_days": lake.retention_days,
                                 "files_removed": sum(removed.values()),
                                 "by_table": dg.MetadataValue.json(removed)})


@dg.job(description="Warehouse maintenance: vacuum old table versions past the retention.")
def warehouse_maintenance():
    vacuum_tables()


maintenance_schedule = dg.ScheduleDefinition(
    name="weekly_vacuum", job=warehouse_maintenance, cron_schedule="0 3 * * 0",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Sundays at 03:00 UTC: vacuum table versions older than the retention.")
