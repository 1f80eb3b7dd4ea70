"""MLflow tracking (the extra `mlflow`, ml_assets/tracking.py) against a real MLflow tracking
server with a SQLite backend store and a local artifact root, started by the test: the models
of a small generated warehouse are materialised with `mlflow.tracking_uri` pointing at it,
then read back through MlflowClient and compared with ml.model_registry, the model store and
ml.model_aliases. A dead server must not fail the materialisation nor change the registry, and
with tracking off nothing may import mlflow."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import pytest
import yaml

from ml_assets.assets.models import (
    ALIAS,
    AliasRecord,
    ModelRecord,
    current_champion,
    read_records,
)
from ml_assets.model_config import load_model_config
from ml_assets.modeling import load_model
from ml_assets.partitions import upstream_months
from ml_assets.settings import SettingsError
from ml_assets.tables import FEATURE_STORE, LABEL_STORE, MODEL_ALIASES, MODEL_REGISTRY, TRAINING_SET
from ml_assets.tracking import VERSION_TAG, run_params
from tests.test_models_delta import Warehouse, one_thread_models_file, succeeded

pytestmark = pytest.mark.xdist_group("mlflow")

SERVER_PACKAGES = ("mlflow", "flask", "alembic", "sqlalchemy")
MISSING = [name for name in SERVER_PACKAGES if importlib.util.find_spec(name) is None]
needs_mlflow = pytest.mark.skipif(
    bool(MISSING), reason=f"the extra mlflow is not installed (missing {', '.join(MISSING)}): "
                          "`uv sync --extra mlflow` (make env installs it)")

FIRST, LAST = date(2023, 1, 1), date(2024, 2, 1)
TRAINED = (date(2024, 1, 1), date(2024, 2, 1))
EXPERIMENT, REGISTERED = "vintage-test", "vintage-pd-test"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def models_file(folder: Path, tracking_uri: str | None) -> Path:
    """The tests' model configuration (tests/test_models_delta.py) with `mlflow:` set."""
    path = one_thread_models_file(folder)
    raw = yaml.safe_load(path.read_text())
    raw["mlflow"] = {"tracking_uri": tracking_uri, "experiment": EXPERIMENT,
                     "registered_model": REGISTERED}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on a free loopback port, SQLite backend, local artifact root; its URI
    once /health answers."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (folder / "server.log").open("w")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server",
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--default-artifact-root", str(folder / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        # without MLflow's GenAI job workers (seven more processes)
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not start:\n"
                                   + (folder / "server.log").read_text()[-3000:])
            time.sleep(1)
        yield uri
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and its uvicorn worker
        try:
            process.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):  # anything of it still there
                os.killpg(process.pid, signal.SIGKILL)
            log.close()


def mlflow_said(result) -> dict[str, str]:
    """The `mlflow` metadata of each materialisation of a run, by asset."""
    return {event.asset_key.to_user_string(): event.materialization.metadata["mlflow"].value
            for event in result.get_asset_materialization_events()
            if "mlflow" in event.materialization.metadata}


@dataclass(frozen=True)
class Tracked:
    """A warehouse built with tracking on, and what its registry and gate said of MLflow."""

    built: Warehouse
    said: dict[str, str]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, server) -> Tracked:
    """Generated data (scale 0.2) through raw .. predictions for 2023-01..2024-02 in one run
    with tracking on: two training months, four candidates, two gate decisions."""
    from ml_assets.demo.generator import generate

    folder = tmp_path_factory.mktemp("mlflow-warehouse")
    generate(folder / "source", scale=0.2, seed=3)
    built = Warehouse(folder / "warehouse", folder / "source", models_file(folder, server))
    result = built.materialise(FIRST, LAST)
    succeeded(result)
    return Tracked(built, mlflow_said(result))


@pytest.fixture(scope="module")
def client(server):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server, registry_uri=server)


def registry(built: Warehouse) -> list[ModelRecord]:
    lake = built.lake()
    with duckdb.connect() as con:
        lake.read(con, "model_registry", MODEL_REGISTRY, None)
        return read_records(con, "SELECT * FROM model_registry ORDER BY model_version",
                            ModelRecord)


def run_of(client, version: str):
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.`{VERSION_TAG}` = '{version}'")
    assert len(runs) == 1, f"{version}: {len(runs)} runs"
    return runs[0]


@needs_mlflow
def test_one_run_per_candidate_with_its_params_metrics_and_tags(tracked, client, server):
    records = registry(tracked.built)
    assert [r.model_version for r in records] == [
        "lightgbm-2024-01", "lightgbm-2024-02", "logistic-2024-01", "logistic-2024-02"]
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert len(client.search_runs([experiment.experiment_id])) == len(records)
    for record in records:
        run = run_of(client, record.model_version)
        assert run.info.status == "FINISHED" and run.info.run_name == record.model_version
        tags, params, values = run.data.tags, run.data.params, run.data.metrics
        assert tags["vintage.trained_month"] == f"{record.trained_month:%Y-%m}"
        assert tags["vintage.artifact_digest"] == record.artifact_digest
        hyper = {"lightgbm": {"learning_rate": "0.1", "num_leaves": "15", "num_threads": "1",
                              "max_rounds": "1000", "early_stopping_rounds": "50"},
                 "logistic": {"C": "0.1", "solver": "newton-cholesky", "max_iter": "2000"}}
        assert hyper[record.model_name].items() <= params.items()
        assert params["training.window_first"] == f"{record.window_first:%Y-%m}"
        assert params["training.window_last"] == f"{record.window_last:%Y-%m}"
        assert params["training.oot_month"] == f"{record.oot_month:%Y-%m}"
        assert params["training.window_months"] == "12" and params["training.seed"] == "42"
        assert params["label.definition"] == record.label_def == "30dpd_6mob"
        assert params["label.mob"] == "6"
        assert params["features"].split(",") == record.features
        assert params["calibration"] == {"lightgbm": "isotonic", "logistic": "platt"}[
            record.model_name]
        summary = json.loads(record.metrics)
        for split in ("train", "test", "oot"):
            for name in ("auc", "gini", "ks", "log_loss", "brier", "default_rate", "n"):
                assert abs(values[f"{split}_{name}"] - summary[split][name]) <= 1e-12
        assert abs(values["oot_auc"] - record.oot_auc) <= 1e-12
        assert abs(values["train_auc"] - record.train_auc) <= 1e-12
        assert abs(values["test_auc"] - record.test_auc) <= 1e-12
    said = tracked.said["ml/model_registry"]
    assert said.startswith(server) and all(f"{r.model_version} run " in said for r in records)


@needs_mlflow
def test_a_feature_list_longer_than_a_param_holds_is_named_by_its_count(tracked):
    record = registry(tracked.built)[0]
    wide = dataclasses.replace(record, features=[f"feature_{i:04d}" for i in range(600)])
    params = run_params(wide)
    assert params["features"] == "600 features: see model/model.json"
    assert params["features.count"] == "600"
    assert run_params(record)["features"].split(",") == record.features


@needs_mlflow
def test_the_artifacts_are_the_native_files_and_score_as_the_platform(tracked, client,
                                                                     tmp_path):
    store, lake = tracked.built.store(), tracked.built.lake()
    with duckdb.connect() as con:
        lake.read(con, "training_set", TRAINING_SET, [TRAINED[-1]])
        rows = con.execute("SELECT * FROM training_set WHERE split = 'oot' ORDER BY loan_id "
                           "LIMIT 40").df(date_as_object=True)
    for record in registry(tracked.built):
        run = run_of(client, record.model_version)
        folder = Path(client.download_artifacts(run.info.run_id, "model",
                                                str(tmp_path / record.model_version)))
        files = {p.name: p.read_bytes() for p in folder.iterdir()}
        assert files == store.files(record.model_name, record.model_version)
        assert set(files) == ({"model.txt", "model.json"} if record.algorithm == "lightgbm"
                              else {"model.json"})
        logged = load_model(folder).predict(rows)
        platform = store.load(record.model_name, record.model_version).predict(rows)
        assert len(rows) == 40 and abs(logged - platform).max() <= 1e-9
    lightgbm_run = run_of(client, "lightgbm-2024-02")
    text = Path(client.download_artifacts(lightgbm_run.info.run_id, "model/model.txt",
                                          str(tmp_path / "booster")))
    import lightgbm

    assert lightgbm.Booster(model_file=str(text)).num_trees() > 0  # LightGBM's own text model


@needs_mlflow
def test_input_datasets_are_the_delta_versions_the_training_read(tracked, client):
    lake, build = tracked.built.lake(), tracked.built.build()
    for record in registry(tracked.built):
        versions = json.loads(record.input_versions)
        inputs = run_of(client, record.model_version).inputs.dataset_inputs
        seen = {}
        for item in inputs:
            tags = {tag.key: tag.value for tag in item.tags}
            source = json.loads(item.dataset.source)
            assert item.dataset.source_type == "delta_table"
            assert tags["mlflow.data.context"] == "training"
            # MLflow's DeltaDatasetSource leaves a version 0 out of its JSON; the tag has it
            assert int(tags["delta_version"]) == source.get("delta_table_version", 0)
            seen[item.dataset.name] = (source["path"], int(tags["delta_version"]),
                                       int(tags["rows"]))
        assert {name: version for name, (_, version, _) in seen.items()} == versions
        for table in (TRAINING_SET, LABEL_STORE, FEATURE_STORE):
            assert seen[table.qualified_name][0] == lake.table_uri(table)
        # the rows of the months each table was read for, counted on the data at its version
        read = ((TRAINING_SET, None), (LABEL_STORE, build.rules.training_labels),
                (FEATURE_STORE, build.rules.training_features))
        with duckdb.connect() as con:
            rows = {table.qualified_name: lake.read(
                con, table.name, table, upstream_months(mapping, [record.trained_month],
                                                        build.partitions),
                versions[table.qualified_name]) for table, mapping in read}
        assert {name: count for name, (_, _, count) in seen.items()} == rows
        assert rows[TRAINING_SET.qualified_name] == record.n_train + record.n_test + record.n_oot
        # the window's label months hold the early read's labels too
        assert rows[LABEL_STORE.qualified_name] > rows[TRAINING_SET.qualified_name] > 0


@needs_mlflow
def test_the_champion_alias_is_the_platforms_champion(tracked, client):
    champion = current_champion(tracked.built.lake())
    assert champion is not None and champion.month == LAST and champion.model_version
    version = client.get_model_version_by_alias(REGISTERED, ALIAS)
    assert version.tags[VERSION_TAG] == champion.model_version
    assert version.run_id == run_of(client, champion.model_version).info.run_id
    assert version.source == f"runs:/{version.run_id}/model"
    versions = client.search_model_versions(f"name = '{REGISTERED}'")
    assert sorted(v.tags[VERSION_TAG] for v in versions) == sorted(
        r.model_version for r in registry(tracked.built))
    assert f"has the alias {ALIAS}" in tracked.said["ml/model_aliases"]


@needs_mlflow
def test_the_alias_waits_for_the_sign_off(tracked, client, server, tmp_path):
    """Under champion.approval: manual the gate of 2024-02 only proposes its challenger, and
    the alias goes back to the last approved champion; the gate again in auto mode promotes
    it, and the alias follows (as the tracked warehouse left it)."""
    [promotion] = [row for row in aliases(tracked.built) if row.month == TRAINED[-1]]
    assert promotion.decision == "promoted" and promotion.status == "approved"
    copy = tracked.built.copy(tmp_path / "manual")
    manual_file = models_file(tmp_path / "manual", server)
    raw = yaml.safe_load(manual_file.read_text())
    raw["champion"]["approval"] = "manual"
    manual_file.write_text(yaml.safe_dump(raw))
    manual = Warehouse(copy.root, copy.source, manual_file)
    succeeded(manual.materialise(TRAINED[-1], TRAINED[-1], [MODEL_ALIASES]))
    champion = current_champion(manual.lake())
    assert champion.status == "proposed"
    assert champion.challenger_version == promotion.model_version != champion.model_version
    alias = client.get_model_version_by_alias(REGISTERED, ALIAS)
    assert alias.tags[VERSION_TAG] == champion.model_version

    (tmp_path / "auto").mkdir()
    auto = Warehouse(copy.root, copy.source, models_file(tmp_path / "auto", server))
    succeeded(auto.materialise(TRAINED[-1], TRAINED[-1], [MODEL_ALIASES]))
    assert current_champion(auto.lake()).model_version == promotion.model_version
    alias = client.get_model_version_by_alias(REGISTERED, ALIAS)
    assert alias.tags[VERSION_TAG] == promotion.model_version



@needs_mlflow
def test_tracking_keeps_the_console_to_the_platform(tracked, server, tmp_path, capfd):
    """Logging candidates prints no MLflow "View run" link per run (to a UI the extra does not
    serve) and none of MLflow's INFO lines (its wait for each registered version): a run's
    console stays the platform's progress. In an experiment and registered model of its own,
    so that the other tests' runs stay one per version."""
    copy = tracked.built.copy(tmp_path / "quiet")
    quiet_file = models_file(tmp_path / "quiet", server)
    raw = yaml.safe_load(quiet_file.read_text())
    raw["mlflow"] |= {"experiment": "vintage-quiet", "registered_model": "vintage-pd-quiet"}
    quiet_file.write_text(yaml.safe_dump(raw))
    quiet = Warehouse(copy.root, copy.source, quiet_file)
    capfd.readouterr()
    result = quiet.materialise(TRAINED[-1], TRAINED[-1], [MODEL_REGISTRY])
    succeeded(result)
    assert "(model version" in mlflow_said(result)["ml/model_registry"]  # it did log
    out, err = capfd.readouterr()
    assert "View run" not in out + err and "Waiting up to" not in out + err

def aliases(built: Warehouse) -> list[AliasRecord]:
    lake = built.lake()
    with duckdb.connect() as con:
        lake.read(con, "model_aliases", MODEL_ALIASES, None)
        return read_records(con, "SELECT * FROM model_aliases ORDER BY month", AliasRecord)


def registry_rows(built: Warehouse) -> list[dict]:
    """The registry as it compares across runs and copies of a warehouse: every column but
    the training time, the artifact path within the warehouse."""
    return [{**{k: v for k, v in vars(r).items() if k != "trained_at"},
             "artifact_path": "/".join(Path(r.artifact_path).parts[-3:])}
            for r in registry(built)]


@needs_mlflow
def test_a_dead_server_fails_nothing_and_changes_no_record(tracked, tmp_path):
    """The registry and the gate of 2024-01..2024-02 again, once against a tracking URI where
    nothing listens, once with tracking off in a process where mlflow cannot be imported:
    both succeed, with the same records as the tracked run (but the training time)."""
    warehouse = tracked.built
    dead = warehouse.copy(tmp_path / "dead")
    dead = Warehouse(dead.root, dead.source,
                     models_file(tmp_path / "dead", f"http://127.0.0.1:{free_port()}"))
    started = time.monotonic()
    result = dead.materialise(TRAINED[0], TRAINED[-1], [MODEL_REGISTRY, MODEL_ALIASES])
    succeeded(result)
    assert time.monotonic() - started < 300
    said = mlflow_said(result)
    assert said.keys() == {"ml/model_registry", "ml/model_aliases"}
    assert all(text.startswith("WARNING MLflow tracking at http://127.0.0.1:") and
               "published all the same" in text for text in said.values())

    off = warehouse.copy(tmp_path / "off")
    off = Warehouse(off.root, off.source, models_file(tmp_path / "off", None))
    script = (
        "import sys\n"
        "sys.modules['mlflow'] = None  # importing mlflow now raises ImportError\n"
        "from datetime import date\n"
        "from pathlib import Path\n"
        "from ml_assets.tables import MODEL_ALIASES, MODEL_REGISTRY\n"
        "from tests.test_models_delta import Warehouse, succeeded\n"
        f"built = Warehouse(Path({str(off.root)!r}), Path({str(off.source)!r}), "
        f"Path({str(off.models_file)!r}))\n"
        f"result = built.materialise(date.fromisoformat({TRAINED[0].isoformat()!r}), "
        f"date.fromisoformat({TRAINED[-1].isoformat()!r}), [MODEL_REGISTRY, MODEL_ALIASES])\n"
        "succeeded(result)\n"
        "assert not any('mlflow' in e.materialization.metadata\n"
        "               for e in result.get_asset_materialization_events())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    assert registry_rows(dead) == registry_rows(off) == registry_rows(warehouse)
    assert current_champion(dead.lake()).model_version == \
        current_champion(off.lake()).model_version == \
        current_champion(warehouse.lake()).model_version


@needs_mlflow
def test_the_tracking_uri_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("VINTAGE_MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    config = load_model_config().tracking
    assert config.enabled and config.tracking_uri == "sqlite:///elsewhere.db"
    assert (config.experiment, config.registered_model) == ("vintage", "vintage-pd")
    monkeypatch.delenv("VINTAGE_MLFLOW_TRACKING_URI")
    assert not load_model_config().tracking.enabled  # config/models.yaml: tracking_uri null


def test_a_tracking_uri_without_mlflow_installed_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    monkeypatch.setenv("VINTAGE_MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    with pytest.raises(SettingsError, match=r"MLflow is not installed: install the extra "
                                            r"mlflow \(`uv sync --extra mlflow`"):
        load_model_config()
