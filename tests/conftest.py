"""Shared test helpers: run a transform from sql/ on small hand-made tables."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest
import requests

from ml_assets.transform import run_transform as run_sql
from ml_assets.transform import transform_connection

LINEAGE_TYPES = {"_row_number": pa.int64(), "_snapshot_month": pa.date32(),
                 "_source_file": pa.string()}


def text_table(rows: list[dict], columns: list[str]) -> pa.Table:
    """Rows as a raw table: every source column text, lineage columns typed."""
    rows = [
        {"_row_number": i + 1, "_source_file": "test.csv", **row} for i, row in enumerate(rows)
    ]
    for row in rows:
        if "_snapshot_month" not in row and row.get("snapshot_date"):
            day = date.fromisoformat(row["snapshot_date"])
            row["_snapshot_month"] = day.replace(day=1)
    names = [*columns, "_row_number", "_source_file", "_snapshot_month"]
    schema = pa.schema([(c, LINEAGE_TYPES.get(c, pa.string())) for c in names])
    return pa.Table.from_pylist([{c: r.get(c) for c in names} for r in rows], schema=schema)


def run_transform(sql_name: str, inputs: dict[str, pa.Table], params: dict | None = None):
    """The rows of `sql/<sql_name>.sql` over `inputs` (view name -> table), as dicts."""
    with transform_connection() as con:
        result = run_sql(con, sql_name, inputs, params)
        columns = [d[0] for d in result.description]
        return [dict(zip(columns, row, strict=True)) for row in result.fetchall()]


@pytest.fixture
def transform():
    return run_transform


VINTAGE = str(Path(sys.executable).parent / "vintage")


def run_vintage(*args: str, env: dict | None = None, cwd=None,
                timeout: float = 1200) -> subprocess.CompletedProcess:
    """The `vintage` command in its own process, as a user runs it. The timeout only stops a
    hung process: a whole-graph run at scale 0.2 takes about 130 s on a quiet 2-core machine
    and several times that beside the suite's other worker and a busy host. Whatever it
    does, it ends without the page of "leaked instances" duckdb's bindings print when the
    interpreter's last teardown runs (ml_assets.cli.entry skips it)."""
    done = subprocess.run([VINTAGE, *args], env={**os.environ, **(env or {})}, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    assert "nanobind" not in done.stderr, done.stderr[-2000:]
    return done


@contextlib.contextmanager
def vintage_dashboard(*args: str, port: int, env: dict | None = None) -> Iterator[str]:
    """`vintage dashboard --port port *args` in its own process group until the block ends;
    yields its base URL once its API answers (at most 120 s). Stopped with SIGTERM (SIGKILL
    after 30 s). Its output goes to a file, not a pipe that a long run would fill."""
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen([VINTAGE, "dashboard", "--port", str(port), *args],
                                  env={**os.environ, **(env or {})}, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                if server.poll() is not None:
                    log.seek(0)
                    raise AssertionError(f"vintage dashboard stopped: {log.read().decode()}")
                try:
                    if requests.get(f"{base}/api/version", timeout=2).ok:
                        break
                except requests.ConnectionError:
                    pass
                assert time.monotonic() < deadline, "vintage dashboard did not start in 120 s"
                time.sleep(0.5)
            yield base
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
