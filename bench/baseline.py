"""The raw-to-gold SQL of the platform as one hand-written DuckDB script, with no Dagster: the
benchmark's yardstick for what orchestration, checks and atomic publishing cost.

It reads the four CSV files, runs the same transforms (sql/raw, sql/silver, sql/gold), keeps
the rows silver keeps, and writes each table as monthly Parquet folders. No contracts, no
checks, no metadata, no catalog.

    python bench/baseline.py --source DIR --out DIR
"""

import argparse
import time
from datetime import date
from pathlib import Path

import duckdb

from ml_assets.assets.gold import label_definitions
from ml_assets.settings import settings
from resources.lake import sql_text
from resources.sources import SOURCE_NAMES

SILVER = {"lms_loan_daily": "loan_daily", "feature_clickstream": "clickstream",
          "features_attributes": "attributes", "features_financials": "financials"}
KEPT = "COLUMNS(lambda c: NOT (c LIKE '\\_%' ESCAPE '\\' OR c LIKE '%\\_\\_%' ESCAPE '\\'))"


def run(source: Path, out: Path) -> dict[str, float]:
    seconds = {}
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute(sql_text("macros"))
    for name in SOURCE_NAMES:
        con.execute("CREATE TABLE source AS SELECT *, row_number() OVER () AS _row_number "
                    "FROM read_csv($path, all_varchar = true, header = true)",
                    {"path": str(source / f"{name}.csv")})
        con.execute(f"CREATE TABLE raw_{name} AS {sql_text('raw/source_rows')}", {
            "source_file": name, "ingested_at": "2026-01-01 00:00:00",
            "first_month": date(1900, 1, 1), "last_month": date(2999, 1, 1)})
        con.execute("DROP TABLE source")
    seconds["raw"] = time.monotonic() - started
    for table in SILVER.values():
        con.execute(f"CREATE TABLE silver_{table} AS SELECT {KEPT} FROM "
                    f"({sql_text(f'silver/{table}')}) WHERE _reject_reason IS NULL")
    seconds["silver"] = time.monotonic() - started - seconds["raw"]
    con.register("label_definitions", label_definitions(settings()))
    con.execute(f"CREATE TABLE gold_label_store AS {sql_text('gold/label_store')}")
    lookback = settings().clickstream_lookback_months
    con.execute(
        "CREATE TABLE clickstream_window AS SELECT month, (month - to_months(back))::DATE AS "
        "upstream_month FROM (SELECT DISTINCT date_trunc('month', snapshot_date)::DATE AS month "
        "FROM silver_loan_daily), range($lookback) AS r(back)", {"lookback": lookback})
    con.execute(f"CREATE TABLE gold_feature_store AS {sql_text('gold/feature_store')}")
    seconds["gold"] = time.monotonic() - started - seconds["raw"] - seconds["silver"]
    for table, month_column in [*((f"raw_{n}", "_snapshot_month") for n in SOURCE_NAMES),
                                *((f"silver_{t}", "snapshot_date") for t in SILVER.values()),
                                ("gold_label_store", "snapshot_date"),
                                ("gold_feature_store", "application_month")]:
        target = out / table
        con.execute(f"COPY (SELECT *, strftime({month_column}, '%Y-%m') AS month FROM {table}) "
                    f"TO '{target}' (FORMAT parquet, PARTITION_BY (month), COMPRESSION zstd, "
                    f"OVERWRITE_OR_IGNORE true)")
    seconds["write"] = time.monotonic() - started - sum(seconds.values())
    seconds["total"] = time.monotonic() - started
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    for stage, value in run(args.source, args.out).items():
        print(f"{stage} {value:.3f}")


if __name__ == "__main__":
    main()
