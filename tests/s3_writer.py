"""A writer process for the lake tests: publishes months of a test table, as a step would.

    python tests/s3_writer.py publish URI WORK FIRST_MONTH COUNT [ROWS]
        one commit per month, COUNT months from FIRST_MONTH (YYYY-MM-01); prints a JSON line
        per commit: {"month", "version", "seconds"}
    python tests/s3_writer.py hang URI WORK FIRST_MONTH COUNT [ROWS]
        all COUNT months in one commit, but the rows stop flowing into delta-rs half way
        (prints "writing" then waits to be killed): a process killed in the middle of a commit

The storage options come from the AWS_* environment variables, as in a deployment that keeps
its credentials out of the configuration file.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import date
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ml_assets.months import add_months  # noqa: E402
from resources import lake as lake_module  # noqa: E402
from resources.lake import Lake, Table  # noqa: E402

TABLE = Table("gold", "race", month_column="month", key=("id",))


def month_rows(month: date, rows: int) -> str:
    """The rows of a month: ids 0..rows-1 with an amount and a label."""
    return (f"SELECT DATE '{month.isoformat()}' AS month, i AS id, (i * 1.5)::DOUBLE AS amount, "
            f"'loan-' || i AS label FROM range({rows}) AS t(i)")


def months_from(first: date, count: int) -> list[date]:
    return [add_months(first, i) for i in range(count)]


def _hang_half_way(write, after_batches: int):
    """`write_deltalake` that writes files of at most 1 MB (so that whole data files reach the
    store while rows still flow) and whose input stops for good after `after_batches`
    batches: the data files written so far are in the store, the commit never comes."""
    import pyarrow as pa

    def hanging(uri, reader, **kwargs):
        batches = iter(reader)

        def stream():
            for count, batch in enumerate(batches):
                if count == after_batches:
                    print("writing", flush=True)
                    time.sleep(3600)
                yield batch

        slowed = pa.RecordBatchReader.from_batches(reader.schema, stream())
        return write(uri, slowed, target_file_size=1_000_000, **kwargs)

    return hanging


def publish_at_barrier(uri: str, storage_options: dict, work: str, month: date, barrier,
                       versions) -> None:
    """Stage `month` of TABLE, wait at `barrier` for the other process, then commit: both
    commit at the same moment (for multiprocessing, spawn). Puts the version into `versions`."""
    lake = Lake(uri=uri, storage_options=storage_options, work_dir=work,
                catalog_path=str(Path(work) / "catalog.duckdb"))
    with duckdb.connect() as con, lake.publication(TABLE) as publication:
        publication.stage(con, month_rows(month, 10), [month])
        barrier.wait(timeout=60)
    versions.put(publication.version)


def main(argv: list[str]) -> None:
    mode, uri, work, first, count = argv[:5]
    rows = int(argv[5]) if len(argv) > 5 else 100
    lake = Lake(uri=uri, work_dir=work, catalog_path=str(Path(work) / "catalog.duckdb"))
    months = months_from(date.fromisoformat(first), int(count))
    with duckdb.connect() as con:
        if mode == "publish":
            for month in months:
                started = time.monotonic()
                with lake.publication(TABLE) as publication:
                    publication.stage(con, month_rows(month, rows), [month])
                print(json.dumps({"month": month.isoformat(), "version": publication.version,
                                  "seconds": round(time.monotonic() - started, 3)}),
                      flush=True)
        elif mode == "hang":
            lake_module.write_deltalake = _hang_half_way(lake_module.write_deltalake, 6)
            query = " UNION ALL ".join(month_rows(m, rows) for m in months)
            lake.publish(con, TABLE, query, months)
        else:
            raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
