"""The Dagster code location, built by a function from the settings: nothing is read at import.

`defs` is loaded lazily by Dagster (`@dg.definitions`); tests and tools call
`build_definitions(config, models)` with other settings, or with their own resources.
"""

from __future__ import annotations

import importlib

import dagster as dg
from dagster_duckdb import DuckDBResource

from ml_assets.assets.gold import gold_specs
from ml_assets.assets.raw import raw_specs
from ml_assets.assets.silver import silver_specs
from ml_assets.jobs import champion_approval, monthly_pipeline, stage_jobs
from ml_assets.maintenance import maintenance_schedule, warehouse_maintenance
from ml_assets.model_config import ModelConfig, load_model_config
from ml_assets.partitions import monthly_partitions, time_rules
from ml_assets.schedules import monthly_schedule
from ml_assets.sensors import sensors
from ml_assets.settings import Settings, SettingsError, load_settings
from ml_assets.spec import Build, TableSpec, asset_key, table_asset
from ml_assets.tables import all_tables
from resources.lake import Lake
from resources.model_store import ModelStore
from resources.sources import Sources


def load_build(config: Settings | None = None, models: ModelConfig | None = None) -> Build:
    """The settings (default: config/vintage.yaml and the environment), the model
    configuration (config/models.yaml), the monthly partitions and the time rules."""
    config = config or load_settings()
    models = models or load_model_config()
    return Build(config=config, models=models, partitions=monthly_partitions(config),
                 rules=time_rules(config, models.window_months), tables=all_tables())


def build_lake(config: Settings) -> Lake:
    return Lake(uri=config.warehouse, catalog_path=str(config.catalog),
                work_dir=str(config.work), storage_options=config.storage_options,
                retention_days=config.retention_days)


def build_resources(config: Settings) -> dict:
    """The resources of the code location: the lake, DuckDB (memory limit and threads from
    `duckdb:` in the settings), the sources and the model store."""
    connection = {key: value for key, value in (("threads", config.duckdb_threads),
                                                ("memory_limit", config.duckdb_memory_limit))
                  if value}
    return {
        "lake": build_lake(config),
        "duckdb": DuckDBResource(database=":memory:", connection_config=connection),
        "sources": Sources(
            folder=str(config.source_folder),
            staging_dir=str(config.work / "sources"),
            demo=config.source is None,
            demo_scale=config.demo.scale,
            demo_seed=config.demo.seed,
            demo_shift_month=config.demo.shift_month.strftime("%Y-%m"),
        ),
        # beside the tables: in the bucket for a bucket warehouse, so that a step in another
        # process or pod loads what an earlier step saved
        "model_store": ModelStore(uri=f"{config.warehouse.rstrip('/')}/ml/artifacts",
                                  storage_options=config.storage_options,
                                  scratch_dir=str(config.work / "models")),
    }


def table_specs(build: Build) -> list[TableSpec]:
    """Every table of the platform, raw to monitoring, the credit review of the models and the
    analytics of the loan book."""
    from ml_assets.assets.analytics import analytics_specs
    from ml_assets.assets.credit_review import credit_review_specs
    from ml_assets.assets.dashboard import dashboard_spec
    from ml_assets.assets.models import ml_specs
    from ml_assets.assets.monitoring import monitoring_specs

    return [*raw_specs(build), *silver_specs(build), *gold_specs(build), *ml_specs(build),
            *monitoring_specs(build), *credit_review_specs(build), dashboard_spec(build),
            *analytics_specs(build)]


def executor(config: Settings) -> dg.ExecutorDefinition:
    """How a run's steps execute (`execution:` in the settings):

    - `in_process` (the default): one after another in the run's process; measured faster on
      2 cores, and one DuckDB at a time bounds memory;
    - `multiprocess`: each step in its own process, up to `execution.max_concurrent` at once;
    - `k8s`: each step a Kubernetes job (dagster-k8s' `k8s_job_executor`, installed with
      `pip install dagster-k8s==0.29.27`), configured by `execution.config` (job image,
      namespace, env config maps, resources);
    - `celery`: each step a Celery task (dagster-celery's `celery_executor`), configured by
      `execution.config` (broker, backend, include).

    Steps in other processes or machines commit their tables safely: each publish is a Delta
    commit, and writers of different months of a table never conflict. Raises SettingsError
    when the executor's package is not installed."""
    if config.executor == "multiprocess":
        return dg.multiprocess_executor.configured({"max_concurrent": config.max_concurrent})
    if config.executor in ("k8s", "celery"):
        package, name = {"k8s": ("dagster_k8s", "k8s_job_executor"),
                         "celery": ("dagster_celery", "celery_executor")}[config.executor]
        try:
            module = importlib.import_module(package)
        except ImportError:
            raise SettingsError(f"execution.executor: {config.executor} needs the package "
                                f"{package.replace('_', '-')} (pip install "
                                f"{package.replace('_', '-')}==0.29.27)") from None
        chosen = getattr(module, name)
        return chosen.configured(config.executor_config) if config.executor_config else chosen
    return dg.in_process_executor


def build_definitions(config: Settings | None = None, models: ModelConfig | None = None,
                      resources: dict | None = None) -> dg.Definitions:
    """The code location over `config` and `models` (default: the configuration files) and
    `resources` (default: from the settings)."""
    build = load_build(config, models)
    assets = [table_asset(spec, build) for spec in table_specs(build)]
    checked = [asset_key(t) for t in build.tables if t.schema in ("silver", "gold")]
    # Dagster's own check that a table's columns did not change between materialisations,
    # from the `dagster/column_schema` every materialisation records.
    schema_change_checks = dg.build_column_schema_change_checks(assets=checked)
    return dg.Definitions(assets=assets, asset_checks=schema_change_checks,
                          resources=resources or build_resources(build.config),
                          jobs=[monthly_pipeline, *stage_jobs, champion_approval,
                                warehouse_maintenance],
                          schedules=[monthly_schedule, maintenance_schedule],
                          sensors=sensors, executor=executor(build.config))


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
