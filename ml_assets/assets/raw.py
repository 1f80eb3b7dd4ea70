"""Raw (bronze): each source file's rows of the month, verbatim as text, with lineage."""


from datetime import UTC, datetime

import dagster as dg

from ml_assets.assets.lake import MONTHLY, RESULT, compute, describe_table, publish
from ml_assets.partitions import run_months
from ml_assets.tables import RAW_TABLES
from resources.sources import SourceError, Sources
from resources.warehouse import Table, Warehouse, sql_text


def build_raw_asset(source_name: str, table: Table) -> dg.AssetsDefinition:
    @dg.asset(**describe_table(table), **MONTHLY)
    def raw_asset(
        context: dg.AssetExecutionContext, warehouse: Warehouse, sources: Sources
    ) -> dg.MaterializeResult:
        months = run_months(context)
        staged = sources.stage(source_name)
        if "snapshot_date" not in staged.columns:
            raise SourceError(f"{staged.file}: column snapshot_date missing")
        with warehouse.connect() as con:
            con.read_parquet(str(staged.staged)).create_view("source")
            undated, first_row, example = con.execute(sql_text("raw/undated_rows")).fetchall()[0]
            if undated:
                raise SourceError(
                    f"{staged.file}: column snapshot_date: {undated} rows have no readable date "
                    f"(first at data row {first_row}: {example!r}); expected YYYY-MM-DD or M/D/YYYY"
                )
            compute(con, "raw/source_rows", {
                "source_file": str(staged.file),
                "ingested_at": datetime.now(UTC).replace(tzinfo=None),
                "first_month": months[0],
                "last_month": months[-1],
            })
            counts = publish(context, warehouse, con, table, f"SELECT * FROM {RESULT}", months)
        return dg.MaterializeResult(metadata={
            "source_file": dg.MetadataValue.path(str(staged.file)),
            "source_rows": staged.rows,
            "rows_in_run": sum(counts.values()),
        })

    return raw_asset


raw_assets = [build_raw_asset(name, table) for name, table in RAW_TABLES.items()]
