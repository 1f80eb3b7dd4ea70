"""The Dockerfile and docker-compose.yml, checked without a Docker engine: what they copy exists,
the commands they run exist and load the code location, and the compose instance is valid."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config

ROOT = Path(__file__).resolve().parent.parent
IMAGE_APP = "/opt/vintage"


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def copied_sources() -> list[str]:
    return [source for op, args in dockerfile_instructions() if op == "COPY"
            for source in args.split()[:-1]]


def ignored(path: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    return any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/")
               for p in patterns)


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_everything_the_image_copies_exists_and_reaches_the_build_context():
    sources = copied_sources()
    assert {"pyproject.toml", "uv.lock", "ml_assets", "resources", "sql", "config", "docker",
            "workspace.yaml"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source), f"{source} is excluded by .dockerignore"


def test_the_image_installs_from_the_lock_file_as_a_non_root_user():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    syncs = [args for op, args in instructions if op == "RUN" and "uv sync" in args]
    assert syncs and all("--frozen" in s and "--no-dev" in s and "--extra postgres" in s
                         for s in syncs)
    assert "dagster-postgres" in (ROOT / "uv.lock").read_text()
    users = [args for op, args in instructions if op == "USER"]
    assert users == ["vintage"]
    # the container's command is the one `make dev` runs, listening inside the container
    cmd = [args for op, args in instructions if op == "CMD"][-1]
    assert cmd.startswith('["vintage", "ui", "--host", "0.0.0.0"')
    assert re.search(r"^dev:.*\n\t\$\(BIN\)/vintage ui ", (ROOT / "Makefile").read_text(), re.M)


def test_compose_runs_postgres_the_webserver_and_the_daemon_from_the_image():
    services = compose()["services"]
    assert set(services) == {"postgres", "webserver", "daemon", "scoring", "prometheus",
                             "grafana"}
    bin_dir = Path(sys.executable).parent
    for name in ("webserver", "daemon"):
        service = services[name]
        command = service["command"]
        assert (bin_dir / command[0]).exists(), f"{command[0]} is not installed"
        workspace = command[command.index("-w") + 1]
        assert workspace == f"{IMAGE_APP}/workspace.yaml"
        home = service["environment"]["DAGSTER_HOME"]
        assert home == f"{IMAGE_APP}/docker"  # COPY docker ./docker, in WORKDIR /opt/vintage
        assert "vintage-data:/var/lib/vintage" in service["volumes"]
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["webserver"]["ports"] == ["127.0.0.1:3000:3000"]
    assert "ports" not in services["daemon"]


def test_compose_serves_the_champion_to_prometheus_and_grafana_on_loopback():
    """`scoring` runs `vintage serve` from the image on the data volume; Prometheus scrapes it
    at the port it listens on; Grafana is provisioned from deploy/grafana with that Prometheus
    (uid `prometheus`, which the dashboard and the alert rules name)."""
    services = compose()["services"]
    scoring = services["scoring"]
    command = scoring["command"]
    assert command[:2] == ["vintage", "serve"] and command[command.index("--host") + 1] == \
        "0.0.0.0"
    port = command[command.index("--port") + 1]
    assert scoring["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert "vintage-data:/var/lib/vintage" in scoring["volumes"]
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    [job] = scrape["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"scoring:{port}"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"])
    datasources = yaml.safe_load((ROOT / "deploy" / "grafana" / "provisioning" / "datasources"
                                  / "prometheus.yaml").read_text())["datasources"]
    assert [(d["uid"], d["url"]) for d in datasources] == [("prometheus",
                                                           "http://prometheus:9090")]
    dashboards = ROOT / "deploy" / "grafana" / "dashboards"
    for dashboard in dashboards.glob("*.json"):
        uids = {p["datasource"]["uid"] for p in json.loads(dashboard.read_text())["panels"]}
        assert uids == {"prometheus"}


def test_the_compose_instance_is_valid_and_otherwise_the_projects_instance(tmp_path):
    shutil.copy(ROOT / "docker" / "dagster.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["storage"]["postgres"]["postgres_db"]["hostname"] == {"env": "DAGSTER_PG_HOST"}
    env = compose()["services"]["daemon"]["environment"]
    assert {"DAGSTER_PG_HOST", "DAGSTER_PG_DB", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD"} <= set(
        env)
    docker = yaml.safe_load((ROOT / "docker" / "dagster.yaml").read_text())
    project = yaml.safe_load((ROOT / "config" / "dagster.yaml").read_text())
    for key in ("storage", "local_artifact_storage", "compute_logs"):
        docker.pop(key)
    assert docker == project
    # state the containers write goes to the data volume, not into the image
    assert config["local_artifact_storage"]["config"]["base_dir"].startswith("/var/lib/vintage")
    assert config["compute_logs"]["config"]["base_dir"].startswith("/var/lib/vintage")


def uv() -> str:
    found = shutil.which("uv") or str(ROOT / ".bootstrap" / "bin" / "uv")
    if not Path(found).exists():
        pytest.skip("uv is not on PATH nor bootstrapped in .bootstrap")
    return found


@pytest.mark.slow
def test_the_images_commands_build_an_environment_that_loads_the_code_location(tmp_path):
    """The Dockerfile's steps, run here: its files copied as it copies them, its `uv sync`
    commands into a fresh environment, then the code location loaded as the webserver and the
    daemon load it, with dagster-postgres importable for the compose instance."""
    app = tmp_path / "opt" / "vintage"
    app.mkdir(parents=True)
    for source in copied_sources():
        target = app / source
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / source, target)
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(app / ".venv"), "UV_LINK_MODE": "copy",
           "DAGSTER_HOME": str(tmp_path / "home"), "VINTAGE_WAREHOUSE": str(tmp_path / "wh")}
    env.pop("VIRTUAL_ENV", None)
    for op, args in dockerfile_instructions():
        if op == "RUN" and args.startswith("uv sync"):
            command = [uv(), *args.split()[1:]]  # the image's uv is on PATH; ours may not be
            done = subprocess.run(command, cwd=app, env=env, capture_output=True, text=True,
                                  timeout=900)
            assert done.returncode == 0, done.stderr
    (tmp_path / "home").mkdir()
    shutil.copy(ROOT / "config" / "dagster.yaml", tmp_path / "home" / "dagster.yaml")
    bin_dir = app / ".venv" / "bin"
    for command in ([str(bin_dir / "python"), "-c", "import dagster_postgres"],
                    [str(bin_dir / "dagster"), "definitions", "validate", "-w",
                     str(app / "workspace.yaml")],
                    [str(bin_dir / "vintage"), "--help"]):
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    assert not (bin_dir / "pytest").exists(), "the image must not hold the dev tools"
