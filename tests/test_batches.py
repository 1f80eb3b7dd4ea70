"""A run over a range of months computed in groups of months (duckdb.max_rows_per_batch) gives
the same tables as one pass over the range, and publishes nothing when a group fails."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import yaml

from ml_assets.assets.gold import gold_specs
from ml_assets.definitions import load_build
from ml_assets.demo.generator import generate
from ml_assets.settings import CONFIG_DIR
from ml_assets.spec import month_batches
from ml_assets.tables import FEATURE_STORE, all_tables
from resources.lake import Lake
from tests.conftest import run_vintage

pytestmark = pytest.mark.slow

UP_TO_TRAINING = ("group:raw or group:silver or key:gold/label_store or key:gold/feature_store "
                  "or key:gold/training_set")
COMPARED = ["silver.loan_daily", "silver.clickstream", "silver.attributes", "silver.financials",
            "gold.label_store", "gold.feature_store",
            "gold.training_set"]
SMALL_BATCH = 1_500


def config_with_batch_rows(folder: Path, rows: int) -> Path:
    config = yaml.safe_load((CONFIG_DIR / "vintage.yaml").read_text())
    config.setdefault("duckdb", {})["max_rows_per_batch"] = rows
    path = folder / f"vintage-{rows}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("batches")
    generate(root / "source", scale=0.02, seed=3)
    warehouses = {}
    for rows in (SMALL_BATCH, 100_000_000):
        warehouses[rows] = root / f"warehouse-{rows}"
        done = run_vintage(
            "run", "--source", str(root / "source"), "--warehouse", str(warehouses[rows]),
            "--from", "2023-01", "--to", "2024-06", "--select", UP_TO_TRAINING,
            env={"VINTAGE_CONFIG": str(config_with_batch_rows(root, rows)),
                 "DAGSTER_HOME": str(root / "home")})
        assert done.returncode == 0, done.stderr[-3000:]
    return warehouses


def test_the_small_limit_really_splits_the_range(runs):
    from ml_assets.months import parse_month

    build = load_build()
    [features] = [s for s in gold_specs(build) if s.table == FEATURE_STORE]
    months = [parse_month(f"2023-{m:02d}") for m in range(1, 13)]
    batches = month_batches(Lake(uri=str(runs[SMALL_BATCH])), features.inputs, months,
                            build.partitions, SMALL_BATCH)
    assert len(batches) > 2
    assert [m for batch in batches for m in batch] == months  # consecutive, each month once


@pytest.mark.parametrize("table", COMPARED)
def test_groups_of_months_give_the_same_tables_as_one_pass(runs, table):
    con = duckdb.connect()
    [spec] = [t for t in all_tables() if t.qualified_name == table]
    small, large = "small", "large"
    for rows, view in ((SMALL_BATCH, small), (100_000_000, large)):
        Lake(uri=str(runs[rows])).read(con, view, spec, None)
        assert Lake(uri=str(runs[rows])).version(spec) == 0  # the step's groups: one commit
    [(rows,)] = con.execute(f"SELECT count(*) FROM {large}").fetchall()
    assert rows > 0
    differing = con.execute(f"SELECT count(*) FROM ((SELECT * FROM {small} EXCEPT ALL "
                            f"SELECT * FROM {large}) UNION ALL (SELECT * FROM {large} "
                            f"EXCEPT ALL SELECT * FROM {small}))").fetchone()[0]
    assert differing == 0
