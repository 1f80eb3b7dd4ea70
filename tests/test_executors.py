"""Steps in parallel processes (Dagster's multiprocess executor) write the same tables, safely,
as the in-process executor; the cluster executors say which package they need."""

from __future__ import annotations

import dataclasses

import duckdb
import pytest
import yaml

from ml_assets.definitions import executor
from ml_assets.demo.generator import generate
from ml_assets.settings import CONFIG_DIR, SettingsError, load_settings
from ml_assets.tables import all_tables
from resources.lake import Lake
from tests.conftest import run_vintage

UP_TO_STORES = ("group:raw or group:silver or key:gold/label_store or key:gold/feature_store "
                "or key:gold/source_coverage")


@pytest.mark.slow
def test_steps_in_parallel_processes_write_the_tables_one_process_writes(tmp_path):
    generate(tmp_path / "src", scale=0.05, seed=4)
    config = yaml.safe_load((CONFIG_DIR / "vintage.yaml").read_text())
    config["execution"] = {"executor": "multiprocess", "max_concurrent": 2}
    (tmp_path / "multiprocess.yaml").write_text(yaml.safe_dump(config))
    runs = {}
    for name, extra in (("in_process", {}),
                        ("multiprocess", {"VINTAGE_CONFIG": str(tmp_path / "multiprocess.yaml")})):
        done = run_vintage("run", "--source", str(tmp_path / "src"), "--warehouse",
                           str(tmp_path / name), "--from", "2023-01", "--to", "2023-04",
                           "--select", UP_TO_STORES,
                           env={"DAGSTER_HOME": str(tmp_path / f"home-{name}"), **extra})
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = Lake(uri=str(tmp_path / name))
    compared = 0
    for table in all_tables():
        if runs["in_process"].version(table) is None:
            continue
        with duckdb.connect() as con:
            for name, lake in runs.items():
                lake.read(con, name, table, None)
            columns = ", ".join(f'"{c}"' for c in con.execute("SELECT * FROM in_process LIMIT 0"
                                                              ).fetchdf().columns
                                if c != "_ingested_at")
            [(differing,)] = con.execute(
                f"SELECT count(*) FROM ((SELECT {columns} FROM in_process EXCEPT ALL SELECT "
                f"{columns} FROM multiprocess) UNION ALL (SELECT {columns} FROM multiprocess "
                f"EXCEPT ALL SELECT {columns} FROM in_process))").fetchall()
        assert differing == 0, table.qualified_name
        compared += 1
    assert compared >= 15


def test_a_cluster_executor_names_the_package_it_needs():
    config = dataclasses.replace(load_settings(), executor="k8s")
    with pytest.raises(SettingsError, match=r"execution.executor: k8s needs the package "
                                            r"dagster-k8s \(pip install dagster-k8s==0.29.27\)"):
        executor(config)
