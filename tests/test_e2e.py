"""End to end through the real UI: `vintage ui` (the Dagster webserver and daemon, as `make dev`
starts them) on a free local port, driven through its GraphQL API and in a real browser.

The browser tests use Debian's chromium through Playwright's `executable_path` (never a
downloaded browser) and skip where it is absent; `.ci/run` installs it. Set
VINTAGE_SCREENSHOTS=DIR to keep the screenshots (docs/asset-graph.png comes from there).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ml_assets.definitions import build_definitions
from ml_assets.demo.generator import generate
from tests.conftest import VINTAGE

defs = build_definitions()

# One webserver for the module: every test here runs on the same pytest-xdist worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("webserver")]

LOCATION = "vintage"
REPOSITORY = "__repository__"
MONTH = "2023-01-01"  # the first month: its stores need no earlier month
STARTUP_SECONDS = 180


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Webserver:
    def __init__(self, url: str):
        self.url = url

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"{self.url}/graphql", data=json.dumps({"query": query, "variables": variables or {}})
            .encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.load(response)
        assert "errors" not in body, body["errors"]
        return body["data"]

    def location_status(self) -> str | None:
        try:
            data = self.graphql(
                "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                "locationOrLoadError { __typename ... on PythonError { message } } } } } }")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None
        for entry in data["workspaceOrError"]["locationEntries"]:
            if entry["name"] == LOCATION and entry["loadStatus"] == "LOADED":
                error = entry["locationOrLoadError"]
                if error["__typename"] == "PythonError":
                    raise AssertionError(f"code location failed to load: {error['message']}")
                return "LOADED"
        return None


@contextlib.contextmanager
def running_ui(root: Path, env: dict):
    """`vintage ui` with `env` on a free local port, its log in `root`; yields its Webserver
    once the code location has loaded, and stops the whole process group (webserver, daemon
    and any run) at the end."""
    port = free_port()
    log = (root / "ui.log").open("w")
    process = subprocess.Popen([VINTAGE, "ui", "--host", "127.0.0.1", "--port", str(port)],
                               env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    server = Webserver(f"http://127.0.0.1:{port}")
    server.root = root
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while server.location_status() != "LOADED":
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the webserver did not come up:\n{(root / 'ui.log').read_text()}")
            time.sleep(1)
        yield server
    finally:
        stop(process)
        log.close()


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    """`vintage ui` on small generated data, its own DAGSTER_HOME and warehouse."""
    root = tmp_path_factory.mktemp("e2e")
    generate(root / "source", scale=0.04, seed=5)
    env = {"DAGSTER_HOME": str(root / "dagster_home"), "VINTAGE_SOURCE": str(root / "source"),
           "VINTAGE_WAREHOUSE": str(root / "warehouse")}
    with running_ui(root, env) as server:
        yield server


def stop(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


REPOSITORY_QUERY = """
query ($selector: RepositorySelector!) {
  repositoryOrError(repositorySelector: $selector) {
    __typename
    ... on Repository {
      jobs { name }
      schedules { name scheduleState { status } }
      sensors { name sensorState { status } }
      assetNodes {
        assetKey { path }
        isPartitioned
        assetChecksOrError { ... on AssetChecks { checks { name } } }
      }
    }
  }
}"""


def repository(server: Webserver) -> dict:
    data = server.graphql(REPOSITORY_QUERY, {"selector": {
        "repositoryName": REPOSITORY, "repositoryLocationName": LOCATION}})
    assert data["repositoryOrError"]["__typename"] == "Repository", data
    return data["repositoryOrError"]


def test_the_ui_loads_every_asset_check_job_schedule_and_sensor(webserver):
    loaded = repository(webserver)
    graph = defs.resolve_asset_graph()
    assert {"/".join(node["assetKey"]["path"]) for node in loaded["assetNodes"]} == {
        key.to_user_string() for key in graph.get_all_asset_keys()}
    assert all(node["isPartitioned"] for node in loaded["assetNodes"])
    checks = {("/".join(node["assetKey"]["path"]), check["name"])
              for node in loaded["assetNodes"]
              for check in node["assetChecksOrError"].get("checks", [])}
    assert checks == {(key.asset_key.to_user_string(), key.name)
                      for key in graph.asset_check_keys}
    assert ("gold/predictions", "one_valid_score_per_loan") in checks
    assert {job["name"] for job in loaded["jobs"]} >= {
        "monthly_pipeline", "stage_ingest", "stage_stores", "stage_training", "stage_scoring",
        "stage_monitoring", "warehouse_maintenance"}
    assert {(s["name"], s["scheduleState"]["status"]) for s in loaded["schedules"]} == {
        ("monthly_close", "STOPPED"), ("weekly_vacuum", "RUNNING")}
    sensors = {s["name"]: s["sensorState"]["status"] for s in loaded["sensors"]}
    assert sensors["source_files"] == "STOPPED"
    assert sensors["retrain_on_recommendation"] == "STOPPED"
    assert sensors["label_maturity"] == "RUNNING"


LAUNCH = """
mutation ($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""

RUN = """
query ($runId: ID!) {
  runOrError(runId: $runId) { ... on Run { status tags { key value } } }
}"""

EVENTS = """
query ($runId: ID!) {
  logsForRun(runId: $runId) {
    ... on EventConnection { events { __typename ... on MessageEvent { message }
      ... on ExecutionStepFailureEvent { error { message cause { message } } }
      ... on RunFailureEvent { message } } }
  }
}"""


def failures(server: Webserver, run_id: str) -> list[str]:
    """A failed run's error messages, for the assertion."""
    events = server.graphql(EVENTS, {"runId": run_id})["logsForRun"].get("events", [])
    messages = []
    for event in events:
        if "Failure" in event["__typename"]:
            error = event.get("error") or {}
            messages += [event.get("message") or error.get("message", ""),
                         (error.get("cause") or {}).get("message", "")]
    return messages


MATERIALIZED = """
query ($keys: [AssetKeyInput!], $partition: String!) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    assetMaterializations(partitions: [$partition]) {
      partition
      metadataEntries { label ... on IntMetadataEntry { intValue } }
    }
  }
}"""


def test_a_partitioned_run_launched_in_the_ui_succeeds(webserver):
    """The ingest and store stages for one month, launched as a user does from the UI; the
    queued run is picked up by the daemon that `vintage ui` starts."""
    for job in ("stage_ingest", "stage_stores"):
        launched = webserver.graphql(LAUNCH, {"params": {
            "selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY,
                         "jobName": job},
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": MONTH}]},
        }})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        deadline = time.monotonic() + 300
        status = None
        while time.monotonic() < deadline:
            status = webserver.graphql(RUN, {"runId": run_id})["runOrError"]["status"]
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                break
            time.sleep(1)
        assert status == "SUCCESS", f"{job} run {run_id} ended {status}:\n" + "\n".join(
            failures(webserver, run_id))
    nodes = webserver.graphql(MATERIALIZED, {
        "keys": [{"path": ["gold", "feature_store"]}, {"path": ["silver", "loan_daily"]}],
        "partition": MONTH})["assetNodes"]
    for node in nodes:
        [materialization] = node["assetMaterializations"]
        assert materialization["partition"] == MONTH
        rows = {e["label"]: e.get("intValue") for e in materialization["metadataEntries"]}
        assert rows["dagster/row_count"] > 0, node["assetKey"]
    published = webserver.root / "warehouse" / "gold" / "feature_store"
    assert any(published.rglob("*.parquet")), "the run published no feature store month"


# --- the browser -------------------------------------------------------------------------

def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); "
                    ".ci/run installs it")
    return path


@pytest.fixture(scope="module")
def browser_page():
    executable = chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True,
            # --no-sandbox: CI runs as root, where chromium refuses its sandbox
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        yield page
        browser.close()


def screenshot(page, tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("VINTAGE_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path))
    return path


def dismiss_welcome(page) -> None:
    """The UI greets a new instance with a community dialog once; skip it when it shows."""
    page.wait_for_timeout(2_000)
    skip = page.get_by_role("button", name="Skip")
    if skip.is_visible():
        skip.click()


def test_the_browser_shows_the_asset_graph(webserver, browser_page, tmp_path):
    page = browser_page
    page.goto(f"{webserver.url}/asset-groups", wait_until="domcontentloaded")
    # the global lineage opens with each group collapsed to one box, listed in the sidebar
    groups = ("raw", "silver", "gold", "ml", "monitoring", "analytics")
    for group in groups:
        page.get_by_text(group, exact=True).first.wait_for(state="visible", timeout=90_000)
    dismiss_welcome(page)
    # the expanded graph is larger than any window (the UI draws only the nodes on screen):
    # open the groups in the sidebar's tree by their carets, left of the names
    for group in ("gold", "analytics", "monitoring"):
        box = page.get_by_text(group, exact=True).first.bounding_box()
        page.mouse.click(box["x"] - 40, box["y"] + box["height"] / 2)
        page.wait_for_timeout(500)
    for asset in ("label_store", "feature_store", "training_set", "predictions", "stability",
                  "vintage_curve", "roll_rate", "calibration", "early_read_performance"):
        page.get_by_text(asset, exact=True).first.wait_for(state="visible", timeout=30_000)
    path = screenshot(page, tmp_path, "asset-graph.png")
    assert path.stat().st_size > 20_000


def test_the_browser_shows_a_gold_asset_page(webserver, browser_page, tmp_path):
    page = browser_page
    page.goto(f"{webserver.url}/assets/gold/label_store", wait_until="domcontentloaded")
    page.get_by_text("label_store", exact=True).first.wait_for(state="visible", timeout=90_000)
    dismiss_welcome(page)
    page.get_by_text("Partitions", exact=False).first.wait_for(state="visible", timeout=60_000)
    body = page.inner_text("body")
    assert "label_store" in body
    path = screenshot(page, tmp_path, "gold-label-store.png")
    assert path.stat().st_size > 20_000
