"""The table is the unit: a TableSpec says what a table is (its grain, key, month column), what
it reads (tables and partition mappings), how it is computed (a SQL file or a Python function)
and its checks; `table_asset` makes the Dagster asset from it: deps, partitions, backfill
policy, metadata, per-month checks, publishing and the catalog. Every asset of the platform is
made here, so the policies live in one place.

A compute function takes a `Step` and returns, for the months of the step's current group, the
rows to publish per table: a query over `step.con`, whose declared inputs are registered as
views (an asset reads nothing it has not declared). Checks are evaluated per month, so a run
over a range of months (a single-run backfill) records each month's result.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluation
from dagster_duckdb import DuckDBResource

from ml_assets.checks import evaluate_table_checks, table_check_specs
from ml_assets.metadata import column_schema, preview
from ml_assets.model_config import ModelConfig
from ml_assets.months import add_months, parse_month, partition_key
from ml_assets.partitions import TimeRules, upstream_months
from ml_assets.settings import Settings
from resources.lake import Lake, LakeError, Table, sql_text

RESULT = "result"
WARN, ERROR = dg.AssetCheckSeverity.WARN, dg.AssetCheckSeverity.ERROR


class StepFailed(RuntimeError):
    """A compute function refuses its months (after recording its check results): nothing of
    the step is published."""


def asset_key(table: Table) -> dg.AssetKey:
    return dg.AssetKey([table.schema, table.name])


@dataclass(frozen=True)
class Input:
    """A table a spec reads, the name its compute reads it by, and which months: those of a
    partition mapping (None: the same months), registered before the compute runs; or, with
    `lookup`, months the data chooses (a model's training month), read by `Step.read` (the
    asset depends on every month of it)."""

    table: Table
    view: str
    mapping: dg.PartitionMapping | None = None
    lookup: bool = False

    def dep(self, partitions: dg.PartitionsDefinition) -> dg.AssetDep:
        mapping = dg.AllPartitionMapping() if self.lookup else self.mapping
        return dg.AssetDep(asset_key(self.table), partition_mapping=mapping)


@dataclass(frozen=True)
class Check:
    """A check of the spec's (main) table, evaluated per month by its compute function."""

    name: str
    description: str
    blocking: bool = False


Compute = Callable[["Step"], Mapping[Table, str]]


@dataclass(frozen=True)
class TableSpec:
    """What a table is and how it is made.

    `compute(step)` returns {table: query} for `step.months`: the spec's table and each table
    of `also_writes` (a quarantine, a reference), all published together as one commit per
    table when every group of months is computed. `batched`: the step's months are computed
    in consecutive groups whose input rows stay within `duckdb.max_rows_per_batch`.
    `resources`: the resources the compute uses besides the lake and DuckDB. `config_schema`:
    the Dagster run config the compute reads (`step.run_config`), for a table a person writes
    to through a job (a sign-off); every field optional, so a run without it still works.
    """

    table: Table
    compute: Compute
    inputs: tuple[Input, ...] = ()
    checks: tuple[Check, ...] = ()
    also_writes: tuple[Table, ...] = ()
    batched: bool = False
    resources: tuple[str, ...] = ()
    kinds: frozenset[str] = frozenset({"duckdb", "deltalake"})
    automation_condition: dg.AutomationCondition | None = None
    pool: str | None = None
    description: str | None = None
    config_schema: Mapping[str, dg.Field] | None = None

    @property
    def tables(self) -> tuple[Table, ...]:
        return (self.table, *self.also_writes)

    def check_specs(self, partitions: dg.PartitionsDefinition) -> list[dg.AssetCheckSpec]:
        key = asset_key(self.table)
        return [*table_check_specs(self.table, partitions),
                *(dg.AssetCheckSpec(c.name, asset=key, description=c.description,
                                    blocking=c.blocking, partitions_def=partitions)
                  for c in self.checks)]


def sql_compute(name: str, params: Callable[[Step], Mapping] | None = None) -> Compute:
    """A compute that runs `sql/<name>.sql` (with `params(step)`) and publishes its rows."""
    def compute(step: Step) -> Mapping[Table, str]:
        return {step.spec.table: step.sql(name, params(step) if params else None)}
    compute.__name__ = f"sql:{name}"
    return compute


@dataclass(frozen=True)
class Build:
    """What the definitions are built from: the settings and the model configuration, the
    monthly partitions and the time rules, and every table of the platform (the catalog lists
    them)."""

    config: Settings
    models: ModelConfig
    partitions: dg.PartitionsDefinition
    rules: TimeRules
    tables: tuple[Table, ...] = ()


@dataclass
class Step:
    """What a compute function works with: the run's months and the current group of them,
    a DuckDB connection with the declared inputs registered, the configuration and resources,
    and where it records per-month metadata and check results."""

    spec: TableSpec
    build: Build
    lake: Lake
    resources: Mapping[str, object]
    run_months: list[date]
    context: dg.AssetExecutionContext | None = None
    months: list[date] = field(default_factory=list)
    con: duckdb.DuckDBPyConnection | None = None
    pins: Mapping[str, int] = field(default_factory=dict)  # table -> Delta version to read
    rows_in: int = 0
    evaluations: list[AssetCheckEvaluation] = field(default_factory=list)
    month_metadata: dict[tuple[str, date], dict] = field(default_factory=dict)
    result_metadata: dict[str, object] = field(default_factory=dict)  # of the whole step
    read_versions: dict[str, int] = field(default_factory=dict)
    run_config: Mapping[str, object] = field(default_factory=dict)  # spec.config_schema's
    # called once the step's tables are published, with {table: its new Delta version}: what
    # goes to another system after the lake (MLflow); each returns metadata for the spec's table
    after_publish: list[Callable[[Mapping[str, int]], Mapping[str, object]]] = field(
        default_factory=list)

    @property
    def config(self) -> Settings:
        return self.build.config

    @property
    def models(self) -> ModelConfig:
        return self.build.models

    @property
    def rules(self) -> TimeRules:
        return self.build.rules

    @property
    def partitions(self) -> dg.PartitionsDefinition:
        return self.build.partitions

    def read(self, view: str, months: Iterable[date] | None, version: int | None = None) -> int:
        """Register the declared input `view` for `months` (None: every published month);
        returns its rows. An input the spec does not declare is an error: the asset graph must
        show every table an asset reads."""
        declared = {i.view: i for i in self.spec.inputs}
        if view not in declared:
            raise LakeError(f"{self.spec.table.qualified_name} reads {view!r}, which its spec "
                            f"does not declare ({', '.join(declared) or 'no inputs'})")
        table = declared[view].table
        if version is None:
            version = self.pins.get(table.qualified_name)
        if version is None:  # the current version, fixed once: what is read is what is recorded
            version = self.lake.version(table)
        rows = self.lake.read(self.con, view, table, None if months is None else list(months),
                              version)
        self.read_versions[table.qualified_name] = version
        self.rows_in += rows
        return rows

    def sql(self, name: str, params: Mapping | None = None) -> str:
        """Run `sql/<name>.sql` into the temporary table `result`; returns a query of it."""
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {RESULT} AS {sql_text(name)}",
                         dict(params or {}))
        return f"SELECT * FROM {RESULT}"

    def metadata(self, month: date, values: Mapping[str, object],
                 table: Table | None = None) -> None:
        """Metadata of `table`'s (default: the spec's) materialisation of `month`."""
        key = ((table or self.spec.table).qualified_name, month)
        self.month_metadata.setdefault(key, {}).update(values)

    def check(self, name: str, month: date, passed: bool,
              metadata: Mapping[str, object] | None = None, severity=ERROR,
              description: str | None = None) -> None:
        """Record the result of the spec's check `name` for `month`."""
        checks = {c.name: c for c in self.spec.checks}
        self.evaluations.append(AssetCheckEvaluation(
            asset_key=asset_key(self.spec.table), check_name=name, passed=bool(passed),
            metadata=dict(metadata or {}), severity=severity, description=description,
            blocking=checks[name].blocking, partition=partition_key(month),
            target_materialization_data=None))


def run_months(context: dg.AssetExecutionContext) -> list[date]:
    """The months this run materialises: one, or a range in a single-run backfill."""
    return [parse_month(key) for key in context.partition_keys]


def month_batches(lake: Lake, inputs: Iterable[Input], months: Iterable[date],
                  partitions: dg.PartitionsDefinition, limit: int) -> list[list[date]]:
    """The months in consecutive groups whose input rows (from the Delta log's statistics) stay
    within `limit`: a long range at a large scale is computed a group at a time in bounded
    memory, and in one group when it fits (every demo range does)."""
    sizes: dict[tuple[str, date], int] = {}

    def rows(month: date) -> int:
        total = 0
        for item in inputs:
            if item.lookup:
                continue
            for read in upstream_months(item.mapping, [month], partitions):
                key = (item.table.qualified_name, read)
                if key not in sizes:
                    sizes[key] = lake.month_rows(item.table, read)
                total += sizes[key]
        return total

    batches: list[list[date]] = []
    size = 0
    for month in sorted(set(months)):
        month_size = rows(month)
        if not batches or size + month_size > limit:
            batches.append([])
            size = 0
        batches[-1].append(month)
        size += month_size
    return batches


@contextmanager
def connect(duckdb_resource: DuckDBResource) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection from the resource, with the platform's macros."""
    with duckdb_resource.get_connection() as con:
        con.execute("SET enable_progress_bar = false")
        con.execute(sql_text("macros"))
        yield con


def compute_months(step: Step, duck: DuckDBResource, partitions: dg.PartitionsDefinition,
                   months: list[date], stage: Callable[[Table, str, list[date]], None]) -> None:
    """Run the spec's compute for `months` on a fresh connection with its inputs registered,
    and hand each output query to `stage` (while the connection is open)."""
    with connect(duck) as con:
        step.con, step.months = con, months
        for item in step.spec.inputs:
            # a lookup, and a table's own earlier months (a self-dependency: the run's months
            # are not published yet, nor is anything on its first run), are read by the compute
            if not item.lookup and item.table not in step.spec.tables:
                step.read(item.view, upstream_months(item.mapping, months, partitions))
        for table, query in step.spec.compute(step).items():
            stage(table, query, months)


def table_asset(spec: TableSpec, build: Build) -> dg.AssetsDefinition:
    """The Dagster asset of a spec (a multi-asset when it writes several tables): monthly
    partitions, a single-run backfill policy, a dep per input with its partition mapping,
    the table checks and the spec's own, and a body that computes, publishes (one Delta commit
    per table), rebuilds the catalog and records what each month got and what the step cost."""
    partitions = build.partitions
    deps = [item.dep(partitions) for item in spec.inputs]
    specs = [dg.AssetSpec(asset_key(t), deps=deps, group_name=t.schema,
                          description=(spec.description if t == spec.table else None)
                          or t.description,
                          kinds=set(spec.kinds), partitions_def=partitions,
                          metadata={"dagster/table_name": t.qualified_name,
                                    "grain": t.grain or "", "key": ", ".join(t.key)},
                          automation_condition=spec.automation_condition)
             for t in spec.tables]

    @dg.multi_asset(
        name=f"{spec.table.schema}__{spec.table.name}", specs=specs,
        check_specs=spec.check_specs(partitions), partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(), pool=spec.pool,
        required_resource_keys={"lake", "duckdb", *spec.resources},
        config_schema=dict(spec.config_schema) if spec.config_schema else None,
        can_subset=False)
    def body(context):  # an AssetExecutionContext (no annotation: this module defers them)
        started = time.monotonic()
        peak_reset = _reset_peak_memory()
        resources = context.resources
        lake: Lake = resources.lake
        months = run_months(context)
        step = Step(spec=spec, build=build, lake=lake, context=context,
                    resources={name: getattr(resources, name) for name in spec.resources},
                    run_months=months,
                    run_config=(context.op_execution_context.op_config or {}
                                if spec.config_schema else {}))
        evaluations: list[AssetCheckEvaluation] = []
        schemas: dict[str, dg.TableSchema] = {}
        batches = (month_batches(lake, spec.inputs, months, partitions,
                                 build.config.batch_rows) if spec.batched else [months])
        try:
            with ExitStack() as stack:
                publications = {t: stack.enter_context(lake.publication(
                    t, context.run.run_id, step.read_versions)) for t in spec.tables}

                def stage(table: Table, query: str, group: list[date]) -> None:
                    if table == spec.table:
                        evaluations.extend(evaluate_table_checks(step.con, table, query, group))
                    counts = publications[table].stage(step.con, query, group)
                    schemas[table.qualified_name] = column_schema(step.con, query)
                    for month, rows in counts.items():
                        step.metadata(month, _month_metadata(step.con, lake, table, query,
                                                             month, rows), table)

                for group in batches:
                    compute_months(step, resources.duckdb, partitions, group, stage)
        except StepFailed:
            yield from evaluations + step.evaluations
            raise
        versions = {t.qualified_name: publications[t].version for t in spec.tables}
        lake.refresh_catalog(build.tables, changed=spec.tables)
        for follow_up in step.after_publish:
            step.result_metadata.update(follow_up(versions))
        cost = _cost(started, peak_reset, step.rows_in,
                     sum(sum(p.counts.values()) for p in publications.values()))
        yield from evaluations + step.evaluations
        for table in spec.tables:
            for month in months:
                values = step.month_metadata.get((table.qualified_name, month), {})
                context.add_asset_metadata(
                    {**values, "dagster/column_schema": schemas[table.qualified_name]},
                    asset_key=asset_key(table), partition_key=partition_key(month))
            added = publications[table].added_columns
            yield dg.MaterializeResult(asset_key=asset_key(table), metadata={
                **(step.result_metadata if table == spec.table else {}),
                **cost, "delta_version": versions[table.qualified_name],
                "input_versions": dg.MetadataValue.json(step.read_versions),
                **({"columns_added": ", ".join(added)} if added else {})})
        for output_name in context.assets_def.check_specs_by_output_name:
            yield dg.Output(None, output_name=output_name)

    return body


def _month_metadata(con: duckdb.DuckDBPyConnection, lake: Lake, table: Table, query: str,
                    month: date, rows: int) -> dict:
    """Row count, a preview and where to query it: what the UI shows for a table's month."""
    month_rows = (f"SELECT * FROM ({query}) WHERE {table.month_column} >= $month "
                  f"AND {table.month_column} < $next_month")
    return {
        "dagster/row_count": rows,
        "preview": dg.MetadataValue.md(preview(
            con, month_rows, {"month": month, "next_month": add_months(month, 1)})),
        "table_uri": lake.table_uri(table),
        "query": dg.MetadataValue.md(
            f"`duckdb -readonly {lake.catalog}`\n\n```sql\nSELECT * FROM {table.qualified_name}"
            f"\nWHERE month = DATE '{month.isoformat()}' LIMIT 10\n```"),
    }


# -- what a step cost -------------------------------------------------------------------------

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_peak_memory() -> bool:
    """Restart the kernel's peak-RSS count of this process (Linux); False where unsupported."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _cost(started: float, reset: bool, rows_in: int, rows_out: int) -> dict:
    seconds = time.monotonic() - started
    if reset:
        peak = next(int(line.split()[1]) / 1024 for line in _STATUS.read_text().splitlines()
                    if line.startswith("VmHWM:"))
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "step_seconds": round(seconds, 3),
        "step_rows_in": rows_in,
        "step_rows_out": rows_out,
        "step_rows_per_second": round(rows_out / seconds) if seconds else 0,
        ("step_peak_memory_mb" if reset else "process_peak_memory_mb"): round(peak, 1),
    }
