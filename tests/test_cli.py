"""`vintage` as a user runs it: real processes, exit codes, messages, the Dagster instance."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import duckdb
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from ml_assets.demo.generator import generate
from tests.conftest import VINTAGE, run_vintage


def vintage(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return run_vintage(*args, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def course_folder(tmp_path_factory) -> Path:
    """Demo data recast the way other course-format files come: parquet, a zip, US dates."""
    root = tmp_path_factory.mktemp("course")
    generate(root / "csv", scale=0.02, seed=11)
    folder = root / "mixed"
    folder.mkdir()
    lms = pacsv.read_csv(root / "csv" / "lms_loan_daily.csv")
    pq.write_table(lms, folder / "lms_loan_daily.parquet")
    with zipfile.ZipFile(folder / "feature_clickstream.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(root / "csv" / "feature_clickstream.csv", "feature_clickstream.csv")
    con = duckdb.connect()
    con.execute(
        "COPY (SELECT * REPLACE (strftime(snapshot_date::DATE, '%-m/%-d/%Y') AS snapshot_date) "
        "FROM read_csv($src, all_varchar = true)) TO $dst (HEADER)",
        {"src": str(root / "csv" / "features_attributes.csv"),
         "dst": str(folder / "features_attributes.csv")})
    (folder / "features_financials.csv").write_bytes(
        (root / "csv" / "features_financials.csv").read_bytes())
    return folder


@pytest.mark.slow
def test_run_on_course_format_files_in_other_formats(course_folder, tmp_path):
    env = {"DAGSTER_HOME": str(tmp_path / "home")}
    done = vintage("run", "--source", str(course_folder), "--warehouse", str(tmp_path / "wh"),
                   env=env)
    assert done.returncode == 0, done.stderr
    assert "succeeded for months 2023-01..2025-11" in done.stdout
    assert "stage silver" in done.stdout
    with duckdb.connect(str(tmp_path / "wh" / "catalog.duckdb"), read_only=True) as con:
        loans = con.execute("SELECT count(DISTINCT loan_id) FROM raw.lms_loan_daily").fetchone()
        features = con.execute("SELECT count(*) FROM gold.feature_store").fetchone()
        attributes = con.execute("SELECT count(*) FROM silver.attributes").fetchone()
    assert loans == features == attributes
    # the run is in the instance, for the UI
    runs = list((tmp_path / "home" / "history" / "runs").glob("*.db"))
    assert runs


@pytest.mark.parametrize("args,message", [
    (["--from", "2024-13"], "'2024-13' is not a month"),
    (["--from", "2024-05", "--to", "2024-01"], "--from 2024-05 is after --to 2024-01"),
    (["--from", "2019-01"], "outside the months the platform has, 2023-01.."),
    (["--select", "key:gold/no_such_table"], "matches no asset"),
])
def test_bad_arguments_exit_2_with_a_message(args, message, tmp_path):
    done = vintage("run", "--warehouse", str(tmp_path / "wh"), *args,
                   env={"DAGSTER_HOME": str(tmp_path / "home")})
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


def test_an_unwritable_warehouse_exits_2(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a folder")
    done = vintage("run", "--warehouse", str(blocked / "wh"),
                   env={"DAGSTER_HOME": str(tmp_path / "home")})
    assert done.returncode == 2
    assert f"warehouse {blocked / 'wh'} is not writable" in done.stderr


def test_a_missing_source_file_fails_naming_it(course_folder, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for path in course_folder.iterdir():
        if not path.name.startswith("features_financials"):
            shutil.copy(path, source / path.name)
    done = vintage("run", "--source", str(source), "--warehouse", str(tmp_path / "wh"),
                   "--from", "2023-01", "--to", "2023-01", "--select", "group:raw",
                   env={"DAGSTER_HOME": str(tmp_path / "home")})
    assert done.returncode == 1
    assert "no features_financials.csv, features_financials.parquet or features_financials.zip" \
        in done.stderr


@pytest.mark.slow
def test_dagster_cli_backfills_a_range_in_one_run(tmp_path):
    """The README's backfill from the command line: `dagster asset materialize` over a
    partition range, as one run (single-run backfill policy), into the same lake."""
    generate(tmp_path / "src", scale=0.02, seed=4)
    (tmp_path / "home").mkdir()
    shutil.copy(Path(__file__).parent.parent / "config" / "dagster.yaml", tmp_path / "home")
    env = {"VINTAGE_SOURCE": str(tmp_path / "src"), "VINTAGE_WAREHOUSE": str(tmp_path / "wh"),
           "DAGSTER_HOME": str(tmp_path / "home")}
    dagster = Path(VINTAGE).parent / "dagster"
    done = subprocess.run(
        [str(dagster), "asset", "materialize", "-m", "ml_assets.definitions", "--select",
         "raw/lms_loan_daily,silver/loan_daily", "--partition-range", "2023-01-01...2023-03-01"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("RUN_SUCCESS") == 1
    published = sorted(p.name for p in (tmp_path / "wh" / "silver" / "loan_daily").iterdir()
                       if p.name.startswith("month="))
    assert published == ["month=2023-01", "month=2023-02", "month=2023-03"]
