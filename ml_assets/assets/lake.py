"""What every lake asset does: read its upstream months, run its SQL, publish, describe."""


from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date

import dagster as dg
import duckdb

from ml_assets.checks import evaluate_table_checks, table_check_specs
from ml_assets.measure import measured
from ml_assets.metadata import column_schema, preview
from ml_assets.months import add_months, partition_key
from ml_assets.partitions import monthly_partitions, upstream_months
from ml_assets.settings import settings
from ml_assets.tables import asset_key
from resources.warehouse import Publication, Table, Warehouse, sql_text

RESULT = "result"


def monthly_asset(**asset_arguments):
    """`@dg.asset` with the policies every asset of the platform shares: the one monthly
    partitions definition; a backfill over a range of months is one run computing all of them
    in one pass; and what the step cost is recorded on its materialisations."""
    def decorate(compute):
        return dg.asset(partitions_def=monthly_partitions,
                        backfill_policy=dg.BackfillPolicy.single_run(),
                        **asset_arguments)(measured(compute))
    return decorate


@dataclass(frozen=True)
class Upstream:
    """An input of a transform: the table, the name its SQL reads it by, and which months."""

    view: str
    table: Table
    mapping: dg.PartitionMapping | None = None  # None: the same months

    def dep(self) -> dg.AssetDep:
        return dg.AssetDep(asset_key(self.table), partition_mapping=self.mapping)


def read_upstreams(
    con: duckdb.DuckDBPyConnection, warehouse: Warehouse, upstreams: Iterable[Upstream],
    months: Iterable[date],
) -> None:
    for upstream in upstreams:
        warehouse.register_input(
            con, upstream.view, upstream.table, upstream_months(upstream.mapping, months)
        )


def month_batches(warehouse: Warehouse, upstreams: Iterable[Upstream], months: Iterable[date]
                  ) -> list[list[date]]:
    """The run's months in consecutive groups whose upstream rows (from the Parquet footers)
    stay within `duckdb.max_rows_per_batch`: a long range at a large scale is computed a group
    at a time in bounded memory, and in one group when it fits (every demo range does)."""
    limit = settings().batch_rows
    rows_of: dict[tuple[str, date], int] = {}

    def rows(month: date) -> int:
        total = 0
        for upstream in upstreams:
            for read in upstream_months(upstream.mapping, [month]):
                key = (upstream.table.qualified_name, read)
                if key not in rows_of:
                    rows_of[key] = warehouse.month_rows(upstream.table, read)
                total += rows_of[key]
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


def compute(con: duckdb.DuckDBPyConnection, sql_name: str, params: Mapping | None = None) -> None:
    """Run the transform `sql/<sql_name>.sql` once into the temporary table `result`."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE {RESULT} AS {sql_text(sql_name)}", params or {})


def publish(
    context: dg.AssetExecutionContext,
    warehouse: Warehouse,
    con: duckdb.DuckDBPyConnection,
    table: Table,
    query: str,
    months: Iterable[date],
    per_month: Mapping[date, Mapping[str, object]] | None = None,
    publication: Publication | None = None,
) -> list:
    """Publish `query`'s rows as `table`'s months (or stage them in `publication`, published
    with the rest of the run's groups of months), record each month's metadata on the asset's
    materialisation of that month (use for the asset's own table only), and return the
    evaluations of the table's checks (see `checks.table_check_specs`) to yield."""
    months = sorted(set(months))
    evaluations = evaluate_table_checks(con, table, query, months)
    counts = (publication.stage(con, query, months) if publication
              else warehouse.publish(con, table, query, months))
    schema = column_schema(con, query)
    for month, rows in counts.items():
        # a range on the month column, which DuckDB can prune on, rather than a function of it
        month_rows = (f"SELECT * FROM ({query}) WHERE {table.month_column} >= $month "
                      f"AND {table.month_column} < $next_month")
        context.add_asset_metadata(
            {
                "dagster/row_count": rows,
                "dagster/column_schema": schema,
                "preview": dg.MetadataValue.md(
                    preview(con, month_rows, {"month": month, "next_month": add_months(month, 1)})
                ),
                "path": dg.MetadataValue.path(str(warehouse.month_file(table, month))),
                "query": dg.MetadataValue.md(
                    f"`duckdb -readonly {warehouse.catalog_path}`\n\n```sql\nSELECT * FROM "
                    f"{table.qualified_name}\nWHERE date_trunc('month', {table.month_column}) = "
                    "DATE "
                    f"'{month.isoformat()}' LIMIT 10\n```"
                ),
                **(per_month or {}).get(month, {}),
            },
            partition_key=partition_key(month),
        )
    return evaluations


def describe_table(table: Table, checks: Iterable[dg.AssetCheckSpec] = ()) -> dict:
    """The `@asset` arguments that follow from the table itself, with the table's checks and
    the asset's own `checks`."""
    return dict(
        key=asset_key(table),
        group_name=table.schema,
        description=table.description,
        kinds={"duckdb", "parquet"},
        metadata={"dagster/table_name": table.qualified_name},
        check_specs=[*table_check_specs(table), *checks],
    )
