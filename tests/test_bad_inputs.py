"""Bad input, each case a folder built from the demo generator and run through `vintage run`:
the message names the file, month and column; the exit status is not 0; and every month
published before is byte for byte what it was."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml

from ml_assets.definitions import build_definitions
from ml_assets.demo.generator import generate
from ml_assets.runner import RANGE_END, RANGE_START
from ml_assets.settings import load_settings
from ml_assets.tables import all_tables
from resources.lake import Lake
from tests.conftest import VINTAGE, run_vintage

pytestmark = pytest.mark.slow

MONTHS = ["--from", "2023-01", "--to", "2023-04"]
# raw to gold: the layers bad input reaches first
SELECT = ["--select", "group:raw or group:silver or key:gold/label_store or key:gold/feature_store"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_inputs")
    generate(root / "demo", scale=0.05, seed=5)
    return root


@pytest.fixture(scope="module")
def published(base) -> Path:
    """A warehouse with months 2023-01 .. 2023-04 published from good data."""
    done = run_vintage("run", "--source", str(base / "demo"), "--warehouse", str(base / "wh"),
                       *MONTHS, *SELECT, env={"DAGSTER_HOME": str(base / "home")})
    assert done.returncode == 0, done.stderr
    return base / "wh"


def checksums(warehouse: Path) -> dict[str, str]:
    """Every data file and commit of every table: a failed run must change none of them."""
    files = [*warehouse.glob("*/*/month=*/*.parquet"), *warehouse.glob("*/*/_delta_log/*")]
    return {str(p.relative_to(warehouse)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(files)}


def case_folder(base: Path, name: str) -> Path:
    folder = base / "cases" / name
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(base / "demo", folder)
    return folder


def run_case(base: Path, warehouse: Path, source: Path, *extra: str):
    return run_vintage("run", "--source", str(source), "--warehouse", str(warehouse),
                       *(extra or [*MONTHS, *SELECT]), env={"DAGSTER_HOME": str(base / "home")})


def rewrite_csv(path: Path, change) -> None:
    """Rewrite a source CSV through pyarrow (all text), applying `change` to its table."""
    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        column_types={c: "string" for c in _header(path)}, strings_can_be_null=True))
    pacsv.write_csv(change(table), path)


def _header(path: Path) -> list[str]:
    return path.open().readline().strip().split(",")


def with_rows(table, predicate, column: str, value: str, every: int = 1):
    """`table` with `column` set to `value` in every `every`-th row matching `predicate`."""
    rows = table.to_pylist()
    matching = [i for i, row in enumerate(rows) if predicate(row)]
    for i in matching[::every]:
        rows[i][column] = value
    return pa.Table.from_pylist(rows, schema=table.schema)


def drop_columns_rename(table, old: str, new: str):
    return table.rename_columns([new if c == old else c for c in table.column_names])


def in_month(month: str):
    return lambda row: row["snapshot_date"].startswith(month)


def mutate(folder: Path, case: str) -> None:
    financials = folder / "features_financials.csv"
    attributes = folder / "features_attributes.csv"
    if case == "missing_file":
        attributes.unlink()
    elif case == "empty_file":
        attributes.write_bytes(b"")
    elif case == "month_without_rows":
        rewrite_csv(financials, lambda t: t.filter(
            pc.invert(pc.starts_with(t["snapshot_date"], "2023-02"))))
    elif case == "truncated_csv":
        text = financials.read_bytes()
        financials.write_bytes(text[: len(text) // 2] + b'\n"unterminated,quote')
    elif case == "corrupt_parquet":
        pq.write_table(pacsv.read_csv(attributes), folder / "features_attributes.parquet")
        attributes.unlink()
        data = (folder / "features_attributes.parquet").read_bytes()
        (folder / "features_attributes.parquet").write_bytes(data[: len(data) // 2])
    elif case == "corrupt_zip":
        with zipfile.ZipFile(folder / "features_attributes.zip", "w") as archive:
            archive.write(attributes, "features_attributes.csv")
        attributes.unlink()
        data = (folder / "features_attributes.zip").read_bytes()
        (folder / "features_attributes.zip").write_bytes(data[: len(data) // 3])
    elif case == "text_in_numeric_column":
        rewrite_csv(financials, lambda t: with_rows(t, in_month("2023-03"), "Annual_Income",
                                                    "twelve thousand", every=5))
    elif case == "renamed_column":
        rewrite_csv(financials, lambda t: drop_columns_rename(t, "Annual_Income",
                                                              "AnnualIncome"))
    elif case == "day_first_dates":
        rewrite_csv(attributes, lambda t: with_rows(t, in_month("2023-02"), "snapshot_date",
                                                    "13/02/2023"))
    elif case == "duplicate_key_different_values":
        def duplicate(table):
            rows = table.to_pylist()
            twin = next(r for r in rows if r["snapshot_date"].startswith("2023-03"))
            rows.append({**twin, "Annual_Income": "1.0"})
            return pa.Table.from_pylist(rows, schema=table.schema)
        rewrite_csv(financials, duplicate)
    elif case.startswith("second_snapshot_in_a_month:"):
        add_mid_month_snapshot(folder / f"{case.split(':')[1]}.csv")
    else:
        raise ValueError(case)


# a second, mid-month snapshot of a key in 2023-03 (a daily extract), one value changed
MID_MONTH_CHANGE = {"lms_loan_daily": "overdue_amt", "feature_clickstream": "fe_1",
                    "features_attributes": "Age", "features_financials": "Annual_Income"}


def add_mid_month_snapshot(path: Path) -> None:
    column = MID_MONTH_CHANGE[path.stem]

    def duplicate(table):
        rows = table.to_pylist()
        twin = next(r for r in rows if r["snapshot_date"] == "2023-03-01")
        rows.append({**twin, "snapshot_date": "2023-03-15", column: "7"})
        return pa.Table.from_pylist(rows, schema=table.schema)
    rewrite_csv(path, duplicate)


CASES = {
    # case: (exit status, the message names the file, the month where there is one, the column)
    "missing_file": (1, ["features_attributes.csv, features_attributes.parquet or "
                         "features_attributes.zip"]),
    "empty_file": (1, ["features_attributes.csv: the file is empty"]),
    "month_without_rows": (1, ["features_financials.csv 2023-02: no rows with snapshot_date "
                               "in this month"]),
    "truncated_csv": (1, ["features_financials.csv: data row ", "(byte offset ",
                          "fields, the header has 22"]),
    "corrupt_parquet": (1, ["features_attributes.parquet: not readable as Parquet"]),
    "corrupt_zip": (1, ["features_attributes.zip: the zip is cut short", "data row"]),
    "text_in_numeric_column": (1, ["features_financials.csv 2023-03: column Annual_Income:",
                                   "values are not number", "'twelve thousand'"]),
    "renamed_column": (1, ["features_financials.csv 2023-01: column Annual_Income missing; "
                           "new column AnnualIncome"]),
    "day_first_dates": (1, ["features_attributes.csv: column snapshot_date:",
                            "'13/02/2023'", "day-first"]),
    "duplicate_key_different_values": (1, ["features_financials.csv 2023-03: 1 key "
                                           "(Customer_ID) has more than one row in the month "
                                           "with different values, e.g. Customer_ID CUS_",
                                           "differing in Annual_Income"]),
    **{f"second_snapshot_in_a_month:{source}": (1, [
        f"{source}.csv 2023-03: 1 key ({'loan_id' if source.startswith('lms') else 'Customer_ID'})"
        f" has more than one row in the month", f"{column} ", "snapshot_date '2023-03-01' vs "
        "'2023-03-15'", "nothing was run; published months are unchanged"])
       for source, column in MID_MONTH_CHANGE.items()},
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_stops_with_a_clear_message_and_changes_nothing(base, published, case):
    before = checksums(published)
    folder = case_folder(base, case)
    mutate(folder, case)
    done = run_case(base, published, folder)
    status, fragments = CASES[case]
    assert done.returncode == status, done.stdout + done.stderr
    for fragment in fragments:
        assert fragment in done.stderr, (fragment, done.stderr)
    assert "Traceback" not in done.stderr
    assert checksums(published) == before


def test_a_run_started_as_the_ui_does_stops_before_its_first_write(base, published):
    """No `vintage run` preflight: the job as the UI or a schedule launches it. The first raw
    step checks every source the run ingests, so the bad lms file stops every raw step and
    not one published month changes, in any layer."""
    before = checksums(published)
    folder = case_folder(base, "ui_run_with_a_bad_source")
    add_mid_month_snapshot(folder / "lms_loan_daily.csv")
    definitions = build_definitions(load_settings(environ={
        "VINTAGE_WAREHOUSE": str(published), "VINTAGE_SOURCE": str(folder)}))
    result = definitions.resolve_job_def("monthly_pipeline").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
        tags={RANGE_START: "2023-01-01", RANGE_END: "2023-04-01"})
    assert not result.success
    failures = {event.step_key: event.event_specific_data.error.cause.message
                for event in result.all_events if event.is_step_failure}
    assert set(failures) == {f"raw__{name}" for name in MID_MONTH_CHANGE}
    assert all("lms_loan_daily.csv 2023-03: 1 key (loan_id)" in text
               for text in failures.values())
    assert checksums(published) == before


@pytest.mark.parametrize("args,message", [
    (["--from", "2023-13"], "'2023-13' is not a month"),
    (["--from", "2023-04", "--to", "2023-01"], "--from 2023-04 is after --to 2023-01"),
    (["--select", "key:gold/nope"], "matches no asset"),
])
def test_bad_arguments_exit_2_and_change_nothing(base, published, args, message):
    before = checksums(published)
    done = run_case(base, published, base / "demo", *args)
    assert done.returncode == 2 and message in done.stderr
    assert checksums(published) == before


def test_an_unwritable_warehouse_exits_2(base, published):
    done = run_vintage("run", "--source", str(base / "demo"), "--warehouse",
                       str(base / "demo" / "lms_loan_daily.csv" / "wh"),
                       env={"DAGSTER_HOME": str(base / "home")})
    assert done.returncode == 2 and "is not writable" in done.stderr


def quarantined(warehouse: Path, table: str) -> list[tuple]:
    with duckdb.connect(str(warehouse / "catalog.duckdb"), read_only=True) as con:
        return con.execute(f"SELECT _snapshot_month, reason FROM silver.{table}_quarantine"
                           ).fetchall()


def test_rare_text_in_a_numeric_column_is_quarantined_and_counted(base, tmp_path):
    """Below the configured share (here 10%, as a month has only 25 rows) the rows are
    quarantined with their reason and the run goes on."""
    folder = case_folder(base, "rare_text")
    rewrite_csv(folder / "features_financials.csv", lambda t: with_rows(
        t, in_month("2023-03"), "Annual_Income", "twelve", every=10_000))
    contracts = yaml.safe_load(Path("config/contracts.yaml").read_text())
    contracts["defaults"]["max_unparseable_share"] = 0.1
    (tmp_path / "contracts.yaml").write_text(yaml.safe_dump(contracts))
    warehouse = tmp_path / "wh"
    done = run_vintage("run", "--source", str(folder), "--warehouse", str(warehouse), *MONTHS,
                       *SELECT, env={"DAGSTER_HOME": str(base / "home"),
                                     "VINTAGE_CONTRACTS": str(tmp_path / "contracts.yaml")})
    assert done.returncode == 0, done.stderr
    rows = quarantined(warehouse, "financials")
    assert len(rows) == 1 and rows[0][1] == "Annual_Income is not a number: twelve"


def test_us_dates_with_two_digit_years_are_read(base, tmp_path):
    folder = case_folder(base, "two_digit_years")

    def us_short(table):
        parts = pc.split_pattern(table["snapshot_date"], "-")
        year = pc.utf8_slice_codeunits(pc.list_element(parts, 0), 2, 4)
        month = pc.cast(pc.cast(pc.list_element(parts, 1), pa.int32()), pa.string())
        day = pc.cast(pc.cast(pc.list_element(parts, 2), pa.int32()), pa.string())
        us = pc.binary_join_element_wise(month, day, year, "/")
        return table.set_column(table.column_names.index("snapshot_date"), "snapshot_date", us)

    rewrite_csv(folder / "features_attributes.csv", us_short)
    assert "/23" in (folder / "features_attributes.csv").read_text()[:400]
    warehouse = tmp_path / "wh"
    done = run_case(base, warehouse, folder)
    assert done.returncode == 0, done.stderr
    with duckdb.connect(str(warehouse / "catalog.duckdb"), read_only=True) as con:
        months = con.execute("SELECT DISTINCT snapshot_date FROM silver.attributes ORDER BY 1"
                             ).fetchall()
    assert [str(m) for (m,) in months] == ["2023-01-01", "2023-02-01", "2023-03-01",
                                           "2023-04-01"]


def test_exact_duplicate_rows_are_dropped_and_counted(base, tmp_path):
    folder = case_folder(base, "duplicate_rows")
    path = folder / "features_financials.csv"
    lines = path.read_text().splitlines()
    march = [line for line in lines if "2023-03-01" in line][:3]
    path.write_text("\n".join(lines + march) + "\n")
    warehouse = tmp_path / "wh"
    done = run_case(base, warehouse, folder)
    assert done.returncode == 0, done.stderr
    with duckdb.connect(str(warehouse / "catalog.duckdb"), read_only=True) as con:
        raw, silver = con.execute(
            "SELECT (SELECT count(*) FROM raw.features_financials WHERE _snapshot_month = "
            "DATE '2023-03-01'), (SELECT count(*) FROM silver.financials WHERE snapshot_date "
            "= DATE '2023-03-01')").fetchall()[0]
    assert raw == silver + 3


# -- faults ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_sized(tmp_path_factory) -> tuple[Path, Path]:
    """1x data (300,000 clickstream rows) over six published months: big enough that a write
    takes long enough to be killed in the middle of it."""
    root = tmp_path_factory.mktemp("kill")
    generate(root / "demo", scale=1, seed=5)
    done = run_vintage("run", "--source", str(root / "demo"), "--warehouse", str(root / "wh"),
                       "--from", "2023-01", "--to", "2023-06", "--select",
                       "group:raw or group:silver", env={"DAGSTER_HOME": str(root / "home")})
    assert done.returncode == 0, done.stderr
    return root, root / "wh"


def month_rows(warehouse: Path) -> dict[str, dict]:
    """Every table's rows per published month, read through its Delta log."""
    lake = Lake(uri=str(warehouse))
    found = {}
    for table in all_tables():
        if lake.version(table) is not None:
            with duckdb.connect() as con:
                lake.read(con, "t", table, None)
                found[table.qualified_name] = dict(con.execute(
                    f"SELECT {table.month_expression}, count(*) FROM t GROUP BY ALL").fetchall())
    return found


def test_a_run_killed_mid_write_leaves_every_month_whole(demo_sized):
    base, published = demo_sized
    before = month_rows(published)
    months = ["--from", "2023-01", "--to", "2023-06", "--select", "group:raw or group:silver"]
    process = subprocess.Popen(
        [VINTAGE, "run", "--source", str(base / "demo"), "--warehouse", str(published),
         *months], env={**os.environ, "DAGSTER_HOME": str(base / "home")},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    staging = published / "_work" / "staging"
    while not list(staging.glob("*/part-*.parquet")):
        assert process.poll() is None and time.monotonic() < deadline, "the run never wrote"
        time.sleep(0.002)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    # every table reads whole at its last commit, with the rows it had (the run republishes
    # the same data: a commit is there whole or not at all)
    assert month_rows(published) == before
    with duckdb.connect(str(published / "catalog.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM raw.feature_clickstream").fetchall()[0][0] > 0
    done = run_vintage("run", "--source", str(base / "demo"), "--warehouse", str(published),
                       *months, env={"DAGSTER_HOME": str(base / "home")})
    assert done.returncode == 0, done.stderr
    assert not list(staging.glob("*"))  # the dead run's leftovers are gone
    assert month_rows(published) == before


def test_two_runs_on_different_months_at_once_both_succeed(base, published):
    env = {**os.environ, "DAGSTER_HOME": str(base / "home")}
    runs = [subprocess.Popen([VINTAGE, "run", "--source", str(base / "demo"), "--warehouse",
                              str(published), "--from", month, "--to", month, *SELECT],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for month in ("2023-02", "2023-04")]
    outcomes = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outcomes


@pytest.mark.parametrize("read_only", [True, False])
def test_a_user_holding_the_catalog_blocks_no_run(base, published, read_only):
    holder = duckdb.connect(str(published / "catalog.duckdb"), read_only=read_only)
    try:
        started = time.monotonic()
        done = run_case(base, published, base / "demo", "--from", "2023-03", "--to", "2023-03",
                        *SELECT)
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 60
        assert holder.execute("SELECT count(*) FROM gold.feature_store").fetchall()[0][0] > 0
    finally:
        holder.close()
