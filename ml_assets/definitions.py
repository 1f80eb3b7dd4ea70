"""The Dagster code location: every asset, resource and job of the platform."""

from __future__ import annotations

import dagster as dg

from ml_assets.assets.gold import feature_store, label_store, source_coverage
from ml_assets.assets.models import champion, model_assets, predictions, training_set
from ml_assets.assets.monitoring import (
    drift_report,
    performance,
    recommendation,
    stability,
    summary,
)
from ml_assets.assets.raw import raw_assets
from ml_assets.assets.silver import silver_assets
from ml_assets.jobs import monthly_pipeline, stage_jobs
from ml_assets.schedules import monthly_schedule
from ml_assets.sensors import sensors
from ml_assets.settings import Settings, settings
from resources.model_store import ModelStore
from resources.sources import Sources
from resources.warehouse import Warehouse


def build_resources(config: Settings) -> dict:
    return {
        "warehouse": Warehouse(
            path=str(config.warehouse),
            threads=config.duckdb_threads,
            memory_limit=config.duckdb_memory_limit,
        ),
        "sources": Sources(
            folder=str(config.source_folder),
            staging_dir=str(config.warehouse / "_staging" / "sources"),
            demo=config.source is None,
            demo_scale=config.demo.scale,
            demo_seed=config.demo.seed,
            demo_shift_month=config.demo.shift_month.strftime("%Y-%m"),
        ),
        "model_store": ModelStore(path=str(config.warehouse / "ml" / "artifacts")),
    }


ASSETS = [*raw_assets, *silver_assets, label_store, feature_store, source_coverage, training_set,
          *model_assets, champion, predictions, stability, performance, drift_report,
          recommendation, summary]


# Dagster's own check that a table's columns did not change between materialisations, from the
# `dagster/column_schema` every materialisation records.
schema_change_checks = dg.build_column_schema_change_checks(
    assets=[asset for asset in ASSETS if asset.key.path[0] in ("silver", "gold")])


def build_definitions(resources: dict) -> dg.Definitions:
    """The code location over the given resources (tests pass their own warehouse).

    Runs execute their steps one after another in one process: measured on 2 cores, running
    independent steps side by side in separate processes was slower (96 s against 75 s for
    the 1x demo), as the steps already use both cores and each process pays its start-up.
    It also keeps a run's memory to one DuckDB at a time."""
    return dg.Definitions(assets=ASSETS, asset_checks=schema_change_checks,
                          resources=resources, jobs=[monthly_pipeline, *stage_jobs],
                          schedules=[monthly_schedule], sensors=sensors,
                          executor=dg.in_process_executor)


defs = build_definitions(build_resources(settings()))
