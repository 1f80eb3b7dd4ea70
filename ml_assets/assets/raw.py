"""Raw (bronze): each source file's rows of the month, verbatim as text, with lineage.

Every month is checked against the source's data contract before anything is published: a
missing or retyped column, a key with rows that differ, or a month without rows that should have
some, stops the run with a message naming the file, the month and the column, and leaves the
published months as they were. The first raw step of a run checks every source the run ingests
(and records what it found for the others), so a bad file in one source stops the run before
any raw month of another source is replaced: a failed run changes no published month.
"""

import json
import os
import time
from dataclasses import asdict
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
import duckdb

from ml_assets.contracts import (
    Finding,
    blocking,
    contracts,
    validate_source,
)
from ml_assets.metadata import markdown_table
from ml_assets.settings import SettingsError, contracts_file
from ml_assets.spec import WARN, Build, Check, Step, StepFailed, TableSpec, asset_key
from ml_assets.tables import RAW_TABLES
from resources.lake import Lake, Table, sql_text
from resources.sources import Sources, StagedSource, staged_copy

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


def record_contract_checks(step: Step, findings: dict[date, list[Finding]], file_name: str
                           ) -> None:
    """One result per check and month from the month's contract findings."""
    for month, month_findings in findings.items():
        for name, (kinds, _, _) in CONTRACT_CHECKS.items():
            hits = [f for f in month_findings if f.kind in kinds]
            errors = any(f.severity == "ERROR" for f in hits)
            step.check(name, month, not hits, {"findings": dg.MetadataValue.md(
                "\n".join(f"- {f.severity}: {f.describe(file_name)}" for f in hits) or "none")},
                severity=dg.AssetCheckSeverity.ERROR if errors else WARN,
                description="; ".join(f.describe(file_name) for f in hits) or None)


RUN_RECORD_DAYS = 2  # run records older than this are removed


def ingested_sources(selection) -> list[str]:
    """The sources whose raw asset a run of `selection` (asset keys) materialises: all four for
    an empty or missing selection (Dagster records an empty one for a whole job)."""
    return [name for name, table in RAW_TABLES.items()
            if not selection or asset_key(table) in selection]


def _record_path(lake: Lake, run_id: str) -> Path:
    return lake.work / "runs" / f"{run_id}.json"


Checked = dict[str, tuple[StagedSource, dict[date, list[Finding]]]]


def check_run_sources(lake: Lake, sources: Sources, names: list[str],
                      months: list[date], run_id: str) -> Checked:
    """Sources `names`, staged and checked against their contracts for `months`, once per run:
    the first caller (`vintage run` before the run starts, else the run's first raw step) does
    it and records the staged copies and findings under `<work>/runs/<run_id>.json`; the run's
    raw steps (in this process or another) read that record, so all of them ingest the same
    file versions and each file is read once. Returns source -> (staged copy, findings by
    month). Raises SettingsError for a source without a contract, SourceError for a file that
    cannot be read."""
    path = _record_path(lake, run_id)
    recorded = _load_record(path, months)
    if recorded is not None and set(names) <= set(recorded):
        return recorded
    checked: Checked = {}
    with duckdb.connect() as con:
        con.execute(sql_text("macros"))
        for name in names:
            contract = contracts().get(name)
            if contract is None:
                raise SettingsError(f"{contracts_file()} has no contract for {name} (under "
                                    "`sources:`)")
            staged = sources.stage(name)
            checked[name] = (staged, validate_source(con, staged, contract, months))
    _save_record(path, months, checked)
    return checked


def _save_record(path: Path, months: list[date], checked: Checked) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob("*.json"):
        if time.time() - old.stat().st_mtime > RUN_RECORD_DAYS * 86400:
            old.unlink(missing_ok=True)
    record = {"months": [m.isoformat() for m in months], "sources": {
        name: {"file": str(staged.file), "staged": str(staged.staged),
               "findings": [asdict(f) for month in months for f in findings.get(month, [])]}
        for name, (staged, findings) in checked.items()}}
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(record, default=str))
    os.replace(partial, path)


def _load_record(path: Path, months: list[date]) -> Checked | None:
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record["months"] != [m.isoformat() for m in months]:
        return None
    checked: Checked = {}
    for name, entry in record["sources"].items():
        staged = staged_copy(name, Path(entry["file"]), Path(entry["staged"]))
        findings: dict[date, list[Finding]] = {month: [] for month in months}
        for found in entry["findings"]:
            month = date.fromisoformat(found["month"])
            findings[month].append(Finding(**{**found, "month": month}))
        checked[name] = (staged, findings)
    return checked


def raw_compute(source_name: str, table: Table):
    """The compute of a raw table: the source's rows of the step's months, verbatim, once
    every source the run ingests has been checked against its contract."""
    def compute(step: Step) -> dict[Table, str]:
        months = step.months
        sources: Sources = step.resources["sources"]
        run = step.context.run
        checked = check_run_sources(step.lake, sources, ingested_sources(run.asset_selection),
                                    months, run.run_id)
        staged, findings = checked[source_name]
        record_contract_checks(step, findings, staged.file.name)
        stopping = [(other.file.name, f) for other, other_findings in checked.values()
                    for f in blocking(other_findings)]
        if stopping:
            raise StepFailed(
                "\n".join(f.describe(file_name) for file_name, f in stopping)
                + "\nnothing ingested: the run stops before its first write, so every "
                  "published month is unchanged")
        step.con.read_parquet(str(staged.staged)).create_view("source")
        for month in months:
            step.metadata(month, {"contract_findings": dg.MetadataValue.md(markdown_table(
                ["kind", "column", "finding"],
                [[f.kind, f.column, f.message] for f in findings[month]])
                if findings[month] else "none")})
        step.result_metadata.update({
            "source_file": dg.MetadataValue.path(str(staged.file)),
            "source_rows": staged.rows,
            "source_reading": "; ".join((staged.reading.describe(), *staged.notes)),
        })
        return {table: step.sql("raw/source_rows", {
            "source_file": str(staged.file),
            "ingested_at": datetime.now(UTC).replace(tzinfo=None),
            "first_month": months[0], "last_month": months[-1]})}
    return compute


def raw_specs(build: Build) -> list[TableSpec]:
    """One raw table per source: no input table (it reads the source file), the contract checks
    (the schema check blocks what is downstream), the sources resource."""
    return [TableSpec(
        table=table, compute=raw_compute(name, table), resources=("sources",),
        checks=tuple(Check(check, description, blocking)
                     for check, (_, blocking, description) in CONTRACT_CHECKS.items()))
        for name, table in RAW_TABLES.items()]
