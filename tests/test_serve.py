"""The scoring service (ml_assets.serving, `vintage serve`) on a small generated warehouse: the
PD of a loan equals gold.predictions' to 1e-9 whether asked by loan_id or by its raw source rows
(through the batch SQL, prepared once: alone, in a batch, with rows the cleaning rules change,
from eight threads at once), validation names each bad field, a new champion is swapped in by
the reload timer without a failed or mixed answer, the live score PSI equals an independent
recomputation, a real Prometheus scrapes the metrics, and every Grafana panel and alert names
metrics the service exports."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import duckdb
import httpx
import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from pydantic import TypeAdapter

from ml_assets.contracts import contracts
from ml_assets.serving import RequestModels, ScoringService, create_app
from ml_assets.settings import PROJECT_ROOT, SettingsError, load_settings
from ml_assets.tables import MODEL_ALIASES, PREDICTIONS, RAW_TABLES, SCORE_REFERENCE
from tests.conftest import VINTAGE, run_vintage
from tests.test_models_delta import Warehouse, one_thread_models_file, succeeded

pytestmark = pytest.mark.xdist_group("serve")

FIRST, LAST = date(2023, 1, 1), date(2024, 2, 1)
CHAMPION_MONTH = LAST
GRAFANA = PROJECT_ROOT / "deploy" / "grafana"


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Warehouse:
    """Generated data (scale 0.2: 100 loans a month) through raw .. predictions, 2023-01 ..
    2024-02: champions lightgbm-2024-01, then logistic-2024-02."""
    folder = tmp_path_factory.mktemp("serve")
    from ml_assets.demo.generator import generate

    generate(folder / "source", scale=0.2, seed=3)
    built = Warehouse(folder / "warehouse", folder / "source", one_thread_models_file(folder))
    succeeded(built.materialise(FIRST, LAST))
    return built


def service_of(warehouse: Warehouse, **serve) -> ScoringService:
    """The service over the warehouse, with `serve` settings changed (ServeSettings fields)."""
    build = warehouse.build()
    config = dataclasses.replace(build.config, serve=dataclasses.replace(build.config.serve,
                                                                         **serve))
    return ScoringService(dataclasses.replace(build, config=config), warehouse.lake(),
                          warehouse.store())


@pytest.fixture(scope="module")
def service(warehouse) -> ScoringService:
    return service_of(warehouse)


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service, reload=False)) as test_client:
        yield test_client


def query(warehouse: Warehouse, sql: str, tables: dict) -> list[dict]:
    with duckdb.connect() as con:
        for view, table in tables.items():
            warehouse.lake().read(con, view, table, None)
        result = con.execute(sql)
        names = [d[0] for d in result.description]
        return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


def predictions(warehouse: Warehouse, version: str) -> list[dict]:
    return query(warehouse, f"SELECT * FROM p WHERE model_version = '{version}' ORDER BY loan_id",
                 {"p": PREDICTIONS})


def raw_application(warehouse: Warehouse, loan_id: str) -> dict:
    """The loan's raw source rows as the course files hold them (lineage columns dropped): its
    lms row of its start month, the customer's attributes and financials rows of that month,
    and every clickstream row of the customer (the feature SQL keeps the lookback window's)."""
    raw = {name: RAW_TABLES[name] for name in RAW_TABLES}
    customer = loan_id.rsplit("_", 3)[0]
    month = date(*map(int, loan_id.rsplit("_", 3)[1:3]), 1)

    def rows(table: str, where: str) -> list[dict]:
        found = query(warehouse, f"SELECT * FROM {table} WHERE {where} ORDER BY _row_number",
                      raw)
        return [{k: v for k, v in row.items() if not k.startswith("_")} for row in found]

    in_month = f"Customer_ID = '{customer}' AND _snapshot_month = DATE '{month}'"
    [loan] = rows("lms_loan_daily", f"loan_id = '{loan_id}' AND _snapshot_month = "
                                    f"DATE '{month}'")
    attributes = rows("features_attributes", in_month)
    financials = rows("features_financials", in_month)
    assert len(attributes) <= 1 and len(financials) <= 1
    return {"loan": loan, "attributes": attributes[0] if attributes else None,
            "financials": financials[0] if financials else None,
            "clickstream": rows("feature_clickstream", f"Customer_ID = '{customer}'")}


# -- the PD equals the batch's, in both input modes ---------------------------------------


def test_health_names_the_last_approved_champion(client, warehouse):
    [latest] = query(warehouse, "SELECT model_version, status FROM a ORDER BY month DESC "
                                "LIMIT 1", {"a": MODEL_ALIASES})
    health = client.get("/health").json()
    assert latest == {"model_version": "logistic-2024-02", "status": "approved"}
    assert health["model_version"] == latest["model_version"]
    assert health["champion_month"] == CHAMPION_MONTH.isoformat()


def test_loan_id_scores_equal_gold_predictions(client, warehouse):
    expected = predictions(warehouse, "logistic-2024-02")
    assert len(expected) == 100
    for row in expected:
        answer = client.post("/v1/score", json={"loan_id": row["loan_id"]}).json()
        assert answer["pd"] == pytest.approx(row["score"], abs=1e-9)
        assert (answer["grade"], answer["decision"]) == (row["grade"], row["decision"])
        assert answer["decision_cutoff"] == pytest.approx(row["decision_cutoff"], abs=1e-12)
        assert [r["feature"] for r in answer["reasons"]] == [
            r for r in (row["reason_1"], row["reason_2"], row["reason_3"]) if r]
        assert answer["model_version"] == "logistic-2024-02"
        assert answer["missing_sources"] == row["missing_sources"]


def test_raw_fields_score_as_the_batch_pipeline(client, warehouse):
    """Loans with every source, one without clickstream, one whose raw financials carry the
    course files' dirt (trailing underscores, placeholders): the raw rows go through silver's
    and the feature store's SQL and give gold.predictions' PD."""
    expected = {row["loan_id"]: row for row in predictions(warehouse, "logistic-2024-02")}
    dirty = (k for k in expected if re.search(r"_$|^_+$|__", json.dumps(
        raw_application(warehouse, k)["financials"])))
    chosen = [*list(expected)[:3],
              next(k for k, r in expected.items() if r["missing_sources"]),
              *itertools.islice(dirty, 2)]
    assert len(set(chosen)) >= 5
    applications = [raw_application(warehouse, loan_id) for loan_id in dict.fromkeys(chosen)]
    for application in applications:
        answer = client.post("/v1/score", json=application)
        assert answer.status_code == 200, answer.text
        body, row = answer.json(), expected[application["loan"]["loan_id"]]
        assert body["input"] == "raw"
        assert body["pd"] == pytest.approx(row["score"], abs=1e-9)
        assert (body["grade"], body["decision"], body["missing_sources"]) == (
            row["grade"], row["decision"], row["missing_sources"])
    # the same applications in one batch: through the prepared SQL together
    batch = client.post("/v1/score/batch", json={"applications": applications})
    assert batch.status_code == 200, batch.text
    for body in batch.json()["results"]:
        assert body["pd"] == pytest.approx(expected[body["loan_id"]]["score"], abs=1e-9)


def test_raw_fields_that_trip_cleaning_rules_score_as_the_batch_pipeline(client, warehouse):
    """Loans whose raw rows the cleaning rules change (an out-of-range or not-allowed value set
    to NULL, a number with a trailing underscore read as the number) score as gold.predictions
    did on the same rows, and the answer names the fields set aside."""
    expected = {row["loan_id"]: row for row in predictions(warehouse, "logistic-2024-02")}
    tripped = []
    for loan_id in expected:
        answer = client.post("/v1/score", json=raw_application(warehouse, loan_id)).json()
        assert answer["pd"] == pytest.approx(expected[loan_id]["score"], abs=1e-9)
        if answer["data_quality"]["out_of_range_fields"]:
            tripped.append(loan_id)
            if len(tripped) == 3:
                break
    assert len(tripped) == 3, "too few loans of the test warehouse trip a cleaning rule"


def test_the_service_prepares_its_sql_as_it_starts(warehouse):
    """The pool's connections are opened (their SQL prepared) as the app starts, before any
    raw request, so that none waits the 0.5-1 s of preparing."""
    service = service_of(warehouse, sql_connections=2)
    with TestClient(create_app(service, reload=False)):
        deadline = time.monotonic() + 60
        while service.sql.idle < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (service.sql.opened, service.sql.idle) == (2, 2)
        with service.sql.connection():  # an idle one, already prepared: none opened for it
            assert (service.sql.opened, service.sql.idle) == (2, 1)


def test_raw_applications_at_concurrency_8_score_as_one_at_a_time(warehouse):
    """Eight threads score raw applications through a pool of two prepared connections: every
    answer equals gold.predictions' PD, so no request sees another's staged rows."""
    service = service_of(warehouse, sql_connections=2)
    expected = {row["loan_id"]: row["score"] for row in predictions(warehouse, "logistic-2024-02")}
    loans = list(expected)[:24]
    models = RequestModels.of(contracts(), service.settings.max_batch)
    requests = [TypeAdapter(models.application).validate_python(raw_application(warehouse, loan))
                for loan in loans]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(service.score, requests * 2))
    assert [a["loan_id"] for a in answers] == loans * 2
    for answer in answers:
        assert answer["pd"] == pytest.approx(expected[answer["loan_id"]], abs=1e-9)
    assert service.sql.opened == 2


def test_batch_answers_each_application_as_one(client, warehouse):
    """Raw applications of a batch go through the SQL together (one of them twice: a customer
    twice goes in a group of its own), and each answer is the single request's."""
    loans = [row["loan_id"] for row in predictions(warehouse, "logistic-2024-02")[:5]]
    applications = [{"loan_id": loans[0]}, raw_application(warehouse, loans[1]),
                    {"loan_id": loans[2]}, raw_application(warehouse, loans[3]),
                    raw_application(warehouse, loans[4]), raw_application(warehouse, loans[1]),
                    {"loan_id": loans[4]}]
    batch = client.post("/v1/score/batch", json={"applications": applications}).json()
    singles = [client.post("/v1/score", json=a).json() for a in applications]
    assert batch["results"] == singles


# -- validation -------------------------------------------------------------------------------


def test_unknown_and_bad_fields_are_refused_by_name(client, warehouse):
    loan_id = predictions(warehouse, "logistic-2024-02")[0]["loan_id"]
    application = raw_application(warehouse, loan_id)

    unknown = client.post("/v1/score", json={**application, "income": 1})
    assert unknown.status_code == 422
    assert [e["loc"][-1] for e in unknown.json()["detail"]] == ["income"]

    wrong = {**application, "financials": {**application["financials"], "Shoe_Size": "42"},
             "loan": {k: v for k, v in application["loan"].items() if k != "Customer_ID"}}
    named = {tuple(e["loc"][-2:]) for e in client.post("/v1/score", json=wrong).json()["detail"]}
    assert named == {("financials", "Shoe_Size"), ("loan", "Customer_ID")}

    # text that is no number: the silver cleaning quarantines such a row; the API names it
    dirty = {**application, "financials": {**application["financials"],
                                           "Annual_Income": "lots", "Num_of_Loan": "a few"}}
    answer = client.post("/v1/score", json=dirty)
    assert answer.status_code == 422
    assert {(tuple(e["loc"]), e["msg"]) for e in answer.json()["detail"]} == {
        (("body", "financials", "Annual_Income"), "Annual_Income is not a number: lots"),
        (("body", "financials", "Num_of_Loan"), "Num_of_Loan is not a number: a few")}

    batch = client.post("/v1/score/batch", json={"applications": [
        {"loan_id": loan_id}, {"loan_id": "CUS_none_2024_02_01"}, dirty]})
    assert batch.status_code == 422
    assert {tuple(e["loc"][:4]) for e in batch.json()["detail"]} == {
        ("body", "applications", 1, "loan_id"), ("body", "applications", 2, "financials")}

    missing = client.post("/v1/score", json={"loan_id": "CUS_none_2024_02_01"})
    assert missing.status_code == 404 and "CUS_none_2024_02_01" in missing.json()["detail"]

    # one 422 names every problem, each at its place in the body as sent
    both = {**dirty, "financials": {**dirty["financials"], "Favourite_Colour": "red"},
            "clickstream": [*application["clickstream"], {
                "snapshot_date": application["loan"]["loan_start_date"], "fe_99": 1}]}
    last = len(both["clickstream"]) - 1
    answer = client.post("/v1/score", json=both)
    assert answer.status_code == 422
    assert {(tuple(e["loc"]), e["type"]) for e in answer.json()["detail"]} == {
        (("body", "financials", "Annual_Income"), "value_error"),
        (("body", "financials", "Num_of_Loan"), "value_error"),
        (("body", "financials", "Favourite_Colour"), "extra_forbidden"),
        (("body", "clickstream", last, "fe_99"), "extra_forbidden")}
    assert {tuple(e["loc"]) for e in client.post("/v1/score", json=wrong).json()["detail"]} == {
        ("body", "financials", "Shoe_Size"), ("body", "loan", "Customer_ID")}
    batch = client.post("/v1/score/batch", json={"applications": [
        {"loan_id": loan_id}, {"loan_id": loan_id, "zzz": 1},
        {**application, "loan": {**application["loan"], "loan_start_date": None}}]})
    assert batch.status_code == 422
    assert {tuple(e["loc"]) for e in batch.json()["detail"]} == {
        ("body", "applications", 1, "zzz"), ("body", "applications", 2, "loan",
                                             "loan_start_date")}


def test_out_of_range_and_missing_fields_are_reported(client, service, warehouse):
    loan_id = predictions(warehouse, "logistic-2024-02")[0]["loan_id"]
    application = raw_application(warehouse, loan_id)
    odd = {**application, "attributes": {**application["attributes"], "Age": "-500"},
           "financials": {**application["financials"], "Num_Bank_Accounts": "1500"}}
    quality = client.post("/v1/score", json=odd).json()["data_quality"]
    assert {"attributes.Age", "financials.Num_Bank_Accounts"} <= set(
        quality["out_of_range_fields"])
    used = set(service.state.model.features.names)
    assert {"age", "num_bank_accounts"} & used <= set(quality["missing_features"])
    assert client.post("/v1/score", json=application).json()["data_quality"][
        "out_of_range_fields"] == []


# -- metrics -----------------------------------------------------------------------------------


def reference_psi(reference: np.ndarray, scores: np.ndarray, floor: float) -> float:
    """PSI with bins from the reference's deciles (linear interpolation, duplicate edges
    dropped), each side's shares floored: written apart from sql/monitoring/stability.sql."""
    edges = np.unique(np.quantile(reference, np.linspace(0.1, 0.9, 9)))
    expected = np.bincount(np.searchsorted(edges, reference, side="left"),
                           minlength=len(edges) + 1) / len(reference)
    actual = np.bincount(np.searchsorted(edges, scores, side="left"),
                         minlength=len(edges) + 1) / len(scores)
    used = (expected > 0) | (actual > 0)
    e, a = np.maximum(expected[used], floor), np.maximum(actual[used], floor)
    return float(np.sum((a - e) * np.log(a / e)))


def metric_value(text: str, name: str, labels: str = "") -> float:
    pattern = ("^" + re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "")
               + r" (\S+)$")
    return float(re.search(pattern, text, re.MULTILINE).group(1))


def test_live_psi_and_shares_match_a_recomputation(warehouse):
    service = service_of(warehouse, psi_window=100, psi_min_scores=60)
    with TestClient(create_app(service, reload=False)) as fresh:
        expected = predictions(warehouse, "logistic-2024-02")
        few = service.settings.psi_min_scores - 1
        for row in expected[:few]:
            fresh.post("/v1/score", json={"loan_id": row["loan_id"]})
        assert np.isnan(metric_value(fresh.get("/metrics").text, "vintage_score_psi"))
        for row in expected[few:]:
            fresh.post("/v1/score", json={"loan_id": row["loan_id"]})
        text = fresh.get("/metrics").text
    reference = np.array([r["score"] for r in query(
        warehouse, "SELECT score FROM r WHERE model_version = 'logistic-2024-02'",
        {"r": SCORE_REFERENCE})])
    scores = np.array([r["score"] for r in expected])
    floor = warehouse.build().config.monitoring.psi_floor
    assert metric_value(text, "vintage_score_psi") == pytest.approx(
        reference_psi(reference, scores, floor), abs=1e-9)
    assert metric_value(text, "vintage_score_window_size") == len(expected)
    assert metric_value(text, "vintage_scored_applications_total", 'input="loan_id"') == len(
        expected)
    names = service.state.model.features.names
    features = service.state.features
    with_missing = sum(bool(features.loc[r["loan_id"], list(names)].isna().any())
                       for r in expected)
    assert metric_value(text, "vintage_missing_feature_share") == pytest.approx(
        with_missing / len(expected))
    assert metric_value(text, "vintage_http_requests_total",
                        'endpoint="/v1/score",method="POST",status="200"') == len(expected)
    assert 'vintage_model_info{champion_month="2024-02-01",model_name="logistic",' \
           'model_version="logistic-2024-02",trained_month="2024-02-01"} 1.0' in text


# -- reload ----------------------------------------------------------------------------------


def publish_champion(warehouse: Warehouse, month: date, as_of: date) -> None:
    """Publish ml.model_aliases' `month` with the champion of month `as_of` (a gate decision
    naming an earlier champion again)."""
    lake = warehouse.lake()
    with duckdb.connect() as con:
        lake.read(con, "aliases", MODEL_ALIASES, None)
        lake.publish(con, MODEL_ALIASES, f"SELECT * REPLACE (DATE '{month}' AS month) "
                     f"FROM aliases WHERE month = DATE '{as_of}'", [month])


def test_a_new_champion_is_swapped_in_without_a_failed_request(warehouse, tmp_path):
    """The gate publishes a month whose champion is lightgbm-2024-01 while requests run: every
    request succeeds, and the service then scores as gold.predictions did with that model."""
    copy = warehouse.copy(tmp_path)
    service = service_of(copy)
    loan = predictions(copy, "logistic-2024-02")[0]["loan_id"]
    answers, stop = [], threading.Event()

    def hammer(test_client):
        while not stop.is_set():
            answers.append(test_client.post("/v1/score", json={"loan_id": loan}))

    with TestClient(create_app(service, reload=False)) as fresh:
        worker = threading.Thread(target=hammer, args=(fresh,))
        worker.start()
        time.sleep(0.3)
        publish_champion(copy, date(2024, 3, 1), date(2024, 1, 1))
        assert service.refresh()
        assert not service.refresh()  # nothing new since
        time.sleep(0.3)
        stop.set()
        worker.join()
        versions = [a.json()["model_version"] for a in answers]
        assert all(a.status_code == 200 for a in answers)
        assert versions[0] == "logistic-2024-02" and versions[-1] == "lightgbm-2024-01"
        assert fresh.get("/health").json()["model_version"] == "lightgbm-2024-01"
        for row in predictions(copy, "lightgbm-2024-01")[:20]:
            answer = fresh.post("/v1/score", json={"loan_id": row["loan_id"]}).json()
            assert answer["pd"] == pytest.approx(row["score"], abs=1e-9)
            assert answer["decision"] == row["decision"]


def test_the_reload_timer_swaps_the_champion_while_requests_run(warehouse, tmp_path):
    """With serve.reload_seconds short, the service's own timer thread finds a new champion
    version while four threads send requests (by loan_id and raw fields): /health names it
    (within a minute: the timer fired), no request fails, and every answer's PD is the one its
    model_version gives that loan (no answer mixes the two models)."""
    copy = warehouse.copy(tmp_path)
    interval = 0.25
    old = {row["loan_id"]: row for row in predictions(copy, "logistic-2024-02")[:3]}
    new = {row["loan_id"]: row for row in predictions(copy, "lightgbm-2024-01")[:3]}
    bodies = [*({"loan_id": loan} for loan in [*old, *new]),
              raw_application(copy, next(iter(old)))]
    models = RequestModels.of(contracts(), 1000)
    requests = [TypeAdapter(models.application).validate_python(b) for b in bodies]
    before = service_of(copy)  # each version's PDs, from a service that never reloads
    expected = {("logistic-2024-02", a["loan_id"]): a["pd"] for a in map(before.score, requests)}

    service = service_of(copy, reload_seconds=interval)
    answers: list[list] = [[] for _ in range(4)]
    stop = threading.Event()

    def hammer(test_client, mine: list):
        while not stop.is_set():
            for body in bodies:
                mine.append(test_client.post("/v1/score", json=body))

    with TestClient(create_app(service)) as live:
        workers = [threading.Thread(target=hammer, args=(live, mine)) for mine in answers]
        for worker in workers:
            worker.start()
        try:
            while not all(answers):  # every thread has an answer from the old champion
                time.sleep(interval / 5)
            publish_champion(copy, date(2024, 3, 1), date(2024, 1, 1))
            # a bound that only a timer that never fires misses: four request threads share
            # the interpreter with the reload, on a CI machine with other tests running
            deadline = time.monotonic() + 60
            while live.get("/health").json()["model_version"] != "lightgbm-2024-01":
                assert time.monotonic() < deadline, "the timer did not load the new champion"
                time.sleep(interval / 5)
            time.sleep(3 * interval)
        finally:
            stop.set()
            for worker in workers:
                worker.join()
        assert not service.refresh()  # the timer has loaded the state already
    after = service_of(copy)
    expected |= {("lightgbm-2024-01", a["loan_id"]): a["pd"]
                 for a in map(after.score, requests)}
    for loan_id, row in new.items():  # the new champion's PDs are gold.predictions' own
        assert expected[("lightgbm-2024-01", loan_id)] == pytest.approx(row["score"], abs=1e-9)

    assert all(a.status_code == 200 for mine in answers for a in mine)
    for mine in answers:
        versions = [a.json()["model_version"] for a in mine]
        assert versions[0] == "logistic-2024-02" and versions[-1] == "lightgbm-2024-01"
        switch = versions.index("lightgbm-2024-01")  # old, then new: never back
        assert set(versions[switch:]) == {"lightgbm-2024-01"}
        for answer in (a.json() for a in mine):
            assert answer["pd"] == pytest.approx(
                expected[(answer["model_version"], answer["loan_id"])], abs=1e-12)


def test_refresh_keeps_scoring_when_the_new_state_cannot_load(warehouse, tmp_path):
    copy = warehouse.copy(tmp_path)
    service = service_of(copy)
    shutil.rmtree(Path(copy.store().version_uri("lightgbm", "lightgbm-2024-01")))
    publish_champion(copy, date(2024, 3, 1), date(2024, 1, 1))
    assert not service.refresh()
    assert service.state.model_version == "logistic-2024-02"
    text = TestClient(create_app(service, reload=False)).get("/metrics").text
    assert metric_value(text, "vintage_reloads_total", 'outcome="failed"') == 1


# -- the command, a real Prometheus, the Grafana dashboard ------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, seconds: float = 60) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return httpx.get(url, timeout=2).raise_for_status()
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def served(warehouse, tmp_path_factory):
    """`vintage serve` on a free loopback port, as a user starts it; its base URL."""
    port = free_port()
    folder = tmp_path_factory.mktemp("served")
    log, config = folder / "serve.log", folder / "vintage.yaml"
    settings = yaml.safe_load((PROJECT_ROOT / "config" / "vintage.yaml").read_text())
    settings["serve"].update({"psi_window": 100, "psi_min_scores": 50})  # a PSI on 100 loans
    config.write_text(yaml.safe_dump(settings))
    with log.open("w") as out:
        process = subprocess.Popen(
            [VINTAGE, "serve", "--warehouse", str(warehouse.root), "--port", str(port),
             "--config", str(config)],
            env={**os.environ, **warehouse.environ}, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for(f"http://127.0.0.1:{port}/health")
        except httpx.HTTPError:
            pytest.fail(f"vintage serve did not start: {log.read_text()[-2000:]}")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_command_says_why_it_cannot_serve(tmp_path):
    empty = tmp_path / "warehouse"
    empty.mkdir()
    result = run_vintage("serve", "--warehouse", str(empty), "--port", str(free_port()),
                         timeout=120)
    assert result.returncode == 1
    assert "no champion yet: ml.model_aliases is empty" in result.stderr


def test_the_command_serves_on_loopback(served, warehouse):
    row = predictions(warehouse, "logistic-2024-02")[5]
    answer = httpx.post(f"{served}/v1/score", json={"loan_id": row["loan_id"]}).json()
    assert answer["pd"] == pytest.approx(row["score"], abs=1e-9)


@pytest.mark.slow
def test_prometheus_scrapes_the_service(served, warehouse, tmp_path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Debian's prometheus package is not installed (.ci/run installs it with "
                    "apt-get where it may)")
    before = httpx.get(f"{served}/metrics").text
    already = (metric_value(before, "vintage_scored_applications_total", 'input="loan_id"')
               if 'input="loan_id"' in before else 0)
    loans = [r["loan_id"] for r in predictions(warehouse, "logistic-2024-02")]
    for loan_id in loans:
        httpx.post(f"{served}/v1/score", json={"loan_id": loan_id})
    host = served.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "vintage", "static_configs": [{"targets": [host]}]}]}))
    port = free_port()
    prometheus = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}/api/v1/query"

    def ask(promql: str) -> list:
        return httpx.get(api, params={"query": promql}).json()["data"]["result"]

    try:
        wait_for(f"http://127.0.0.1:{port}/-/ready")
        deadline = time.monotonic() + 60
        while not ask('vintage_scored_applications_total{input="loan_id"}') and \
                time.monotonic() < deadline:
            time.sleep(0.5)
        [scored] = ask('vintage_scored_applications_total{input="loan_id"}')
        assert float(scored["value"][1]) == already + len(loans)
        [info] = ask("vintage_model_info")
        assert info["metric"]["model_version"] == "logistic-2024-02"
        [psi] = ask("vintage_score_psi")
        served_psi = metric_value(httpx.get(f"{served}/metrics").text, "vintage_score_psi")
        assert not np.isnan(served_psi)
        assert float(psi["value"][1]) == pytest.approx(served_psi, abs=1e-9)
        [requests] = ask('sum(vintage_http_requests_total{endpoint="/v1/score",status="200"})')
        assert float(requests["value"][1]) >= len(loans)
        [up] = ask('up{job="vintage"}')
        assert up["value"][1] == "1"
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                "or", "unless", "offset", "inf", "nan"}


def promql_metrics(expression: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions,
    aggregation keywords, label names (inside {} or by/without (...)) or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end():].lstrip()
        if following.startswith("(") or match.group().lower() in PROMQL_WORDS:
            continue
        if re.fullmatch(r"\d+[smhdwy]", match.group()):
            continue
        names.add(match.group())
    return names


def test_promql_metric_names_are_parsed():
    assert promql_metrics('histogram_quantile(0.95, sum by (le, endpoint) (rate('
                          'vintage_http_request_duration_seconds_bucket{status=~"2.."}[5m])))'
                          ) == {"vintage_http_request_duration_seconds_bucket"}
    assert promql_metrics("vintage_score_psi > 0.25 and on() vintage_score_window_size") == {
        "vintage_score_psi", "vintage_score_window_size"}


def dashboard_queries() -> list[str]:
    dashboard = json.loads((GRAFANA / "dashboards" / "vintage-serving.json").read_text())
    panels = [p for row in dashboard["panels"] for p in [row, *row.get("panels", [])]]
    queries = [t["expr"] for p in panels for t in p.get("targets", []) if "expr" in t]
    rules = yaml.safe_load((GRAFANA / "provisioning" / "alerting" / "vintage-serving.yaml"
                            ).read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            queries += [d["model"]["expr"] for d in rule["data"] if "expr" in d["model"]]
    return queries


def test_every_dashboard_and_alert_query_names_exported_metrics(client, warehouse):
    loan_id = predictions(warehouse, "logistic-2024-02")[0]["loan_id"]
    client.post("/v1/score", json={"loan_id": loan_id})
    client.post("/v1/score", json=raw_application(warehouse, loan_id))
    exported = set(re.findall(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{| )",
                              client.get("/metrics").text, re.MULTILINE))
    queries = dashboard_queries()
    assert len(queries) >= 8
    for expression in queries:
        assert promql_metrics(expression) <= exported, expression


def test_the_service_listens_on_8080_by_default(tmp_path):
    """8080, not 8000 (the Evidently UI's, `vintage dashboard`): the settings' default, the
    shipped configuration, `make serve`, docker compose and the Prometheus scrape target."""
    settings = yaml.safe_load((PROJECT_ROOT / "config" / "vintage.yaml").read_text())
    assert settings["serve"]["port"] == 8080
    del settings["serve"]["port"]
    path = tmp_path / "vintage.yaml"
    path.write_text(yaml.safe_dump(settings))
    assert load_settings(path, environ={}).serve.port == 8080
    def make(target: str, *args: str) -> str:  # the command `make` would run, not run
        printed = subprocess.run(["make", "-n", "--no-print-directory", target, *args],
                                 cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
                                 env={k: v for k, v in os.environ.items()
                                      if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")})
        [line] = [line for line in printed.stdout.splitlines() if f"vintage {target}" in line]
        return line

    assert "--port" not in make("serve")  # serve.port decides
    assert make("serve", "PORT=9001").endswith("--port 9001")
    assert make("dashboard").endswith("--port 8000")  # both run at once
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    command = compose["services"]["scoring"]["command"]
    assert command[command.index("--port") + 1] == "8080"
    scrape = yaml.safe_load((PROJECT_ROOT / "deploy" / "prometheus" / "prometheus.yml"
                             ).read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["scoring:8080"]


@pytest.mark.parametrize(("serve", "message"), [
    ({"port": 0}, "serve.port"), ({"reload_seconds": -1}, "serve.reload_seconds"),
    ({"psi_window": 100, "psi_min_scores": 200}, "serve.psi_min_scores"),
    ({"sql_connections": 0}, "serve.sql_connections")])
def test_serve_settings_are_checked(tmp_path, serve, message):
    settings = yaml.safe_load((PROJECT_ROOT / "config" / "vintage.yaml").read_text())
    settings["serve"].update(serve)
    path = tmp_path / "vintage.yaml"
    path.write_text(yaml.safe_dump(settings))
    with pytest.raises(SettingsError, match=message):
        load_settings(path, environ={})
