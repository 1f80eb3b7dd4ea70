"""Raw (bronze): each source file's rows of the month, verbatim as text, with lineage.

Every month is checked against the source's data contract before anything is published: a
missing or retyped column, a key with rows that differ, or a month without rows that should have
some, stops the run with a message naming the file, the month and the column, and leaves the
published months as they were.
"""

from datetime import UTC, datetime

import dagster as dg

from ml_assets.assets.lake import RESULT, compute, describe_table, monthly_asset, publish
from ml_assets.checks import evaluation, materialized, spec
from ml_assets.contracts import ContractError, blocking, contracts, validate_source
from ml_assets.metadata import markdown_table
from ml_assets.partitions import run_months
from ml_assets.tables import RAW_TABLES, asset_key
from resources.sources import Sources
from resources.warehouse import Table, Warehouse

# check name -> (the finding kinds it covers, blocking, description). A failing check is an
# ERROR if any of its findings is (a missing or retyped column, an empty month, too many empty
# values), else a WARN (a new column, values outside the expected ones); only a blocking
# check's ERROR stops what is downstream, and those months are never published.
CONTRACT_CHECKS = {
    "schema_matches_contract": (
        ("missing", "retyped", "empty", "duplicate_key", "new"), True,
        "Every contract column present and reading as its type, the month not empty, no key "
        "with rows that differ (ERROR, blocking); no column outside the contract (WARN)"),
    "values_within_contract": (
        ("nulls", "values"), False,
        "Empty values within each column's bound (ERROR); values within the contract's allowed "
        "values and ranges (WARN)"),
}


def contract_evaluations(check_specs: dict[str, dg.AssetCheckSpec], findings, file_name: str):
    """One evaluation per check and month from the month's contract findings."""
    evaluations = []
    for month, month_findings in findings.items():
        for name, (kinds, _, _) in CONTRACT_CHECKS.items():
            hits = [f for f in month_findings if f.kind in kinds]
            errors = any(f.severity == "ERROR" for f in hits)
            evaluations.append(evaluation(
                check_specs[name], month, not hits,
                {"findings": dg.MetadataValue.md(
                    "\n".join(f"- {f.severity}: {f.describe(file_name)}" for f in hits)
                    or "none")},
                severity=dg.AssetCheckSeverity.ERROR if errors else dg.AssetCheckSeverity.WARN,
                description="; ".join(f.describe(file_name) for f in hits) or None))
    return evaluations


def build_raw_asset(source_name: str, table: Table) -> dg.AssetsDefinition:
    check_specs = {name: spec(asset_key(table), name, description, blocking=stops)
                   for name, (_, stops, description) in CONTRACT_CHECKS.items()}

    @monthly_asset(**describe_table(table, checks=check_specs.values()))
    def raw_asset(context: dg.AssetExecutionContext, warehouse: Warehouse, sources: Sources):
        months = run_months(context)
        contract = contracts().get(source_name)
        if contract is None:
            raise ContractError(f"config/contracts.yaml has no contract for {source_name}")
        staged = sources.stage(source_name)
        with warehouse.connect() as con:
            findings = validate_source(con, staged, contract, months)
            evaluations = contract_evaluations(check_specs, findings, staged.file.name)
            stopping = blocking(findings)
            if stopping:
                yield from evaluations
                raise ContractError(
                    "\n".join(f.describe(staged.file.name) for f in stopping)
                    + f"\n{staged.file}: nothing ingested; published months are unchanged")
            con.read_parquet(str(staged.staged)).create_view("source")
            compute(con, "raw/source_rows", {
                "source_file": str(staged.file),
                "ingested_at": datetime.now(UTC).replace(tzinfo=None),
                "first_month": months[0],
                "last_month": months[-1],
            })
            per_month = {m: {"contract_findings": dg.MetadataValue.md(markdown_table(
                ["kind", "column", "finding"],
                [[f.kind, f.column, f.message] for f in findings[m]]) if findings[m] else "none")}
                for m in months}
            evaluations += publish(context, warehouse, con, table, f"SELECT * FROM {RESULT}",
                                   months, per_month)
        yield from materialized(context, evaluations, {
            "source_file": dg.MetadataValue.path(str(staged.file)),
            "source_rows": staged.rows,
            "source_reading": "; ".join((staged.reading.describe(), *staged.notes)),
        })

    return raw_asset


raw_assets = [build_raw_asset(name, table) for name, table in RAW_TABLES.items()]
