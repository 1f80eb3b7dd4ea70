"""The monitoring dashboard on the real graph: a few months of demo data materialised in process,
then the evidently workspace that monitoring/dashboard wrote (a project per model line and the
champion's, one snapshot per month, re-materialising a month adds none), its values against
the monitoring tables (plain SQL over the catalog written here), and `vintage dashboard`
serving it: projects, panels and their data points over evidently's HTTP API, and its own
pages and scripts."""

from __future__ import annotations

import dataclasses
import re
import socket
from datetime import date

import dagster as dg
import duckdb
import pytest
import requests

from ml_assets.demo.generator import generate
from ml_assets.model_config import load_model_config
from tests.conftest import vintage_dashboard
from tests.test_pipeline import materialise, settings_for

# one worker builds the warehouse once and runs every test of the module
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dashboard")]

SCALE = 0.4  # 200 loans a month
FIRST, LAST = "2023-01-01", "2024-08-01"  # scored from 2024-01: matured (target) 2024-07, 08
PROJECT_MONTH = date(2024, 8, 1)
DASHBOARD = dg.AssetKey(["monitoring", "dashboard"])
TARGET, EARLY = "30dpd_6mob", "30dpd_3mob"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboard")
    generate(root / "demo", scale=SCALE, seed=42, shift_month="2024-07")
    config = settings_for(root / "warehouse", root / "demo")
    # the evidently drift report is another asset and slow: off here
    config = dataclasses.replace(config, monitoring=dataclasses.replace(
        config.monitoring, drift_report=False))
    materialise(config, FIRST, LAST)
    return config


def workspace(config):
    from evidently.ui.workspace import Workspace

    return Workspace(str(config.dashboard_workspace))


def snapshots(config) -> dict[str, dict[str, dict]]:
    """project -> snapshot month (YYYY-MM) -> {id, values (metric -> value)}; a month twice in
    a project is an error."""
    ws = workspace(config)
    found: dict[str, dict[str, dict]] = {}
    for project in ws.list_projects():
        months = found.setdefault(project.name, {})
        for run in ws.list_runs(project.id):
            model = ws.get_run(project.id, run)
            month = model.metadata["month"]
            assert month not in months, f"{project.name}: two snapshots of {month}"
            months[month] = {"id": str(run), "values": {
                r.metric_value_location.metric.params["column"]: r.value
                for r in model.metric_results.values()}}
    return found


def line_of(version: str) -> str:
    """`lightgbm-2024-01` -> `lightgbm`."""
    return re.sub(r"-\d{4}-\d{2}$", "", version)


def expected_figures(con: duckdb.DuckDBPyConnection, month: date) -> dict[str, tuple[str, float]]:
    """metric -> (model version, value) of a month, straight from the catalog's tables; the
    approval shares and the bad rate of the approved recomputed from gold.predictions and
    gold.label_store."""
    figures: dict[str, tuple[str, float]] = {}

    def add(metric, version, value):
        if value is not None and value == value:
            assert metric not in figures, metric
            figures[metric] = (version, float(value))

    for version, variable, psi, missing in con.execute(
            "SELECT model_version, variable, psi, actual_missing_share FROM monitoring.stability "
            "WHERE month = $m", {"m": month}).fetchall():
        if variable == "score":
            add("psi:score", version, psi)
        else:
            add(f"csi:{variable}", version, psi)
            add(f"missing:{variable}", version, missing)
    for table in ("monitoring.performance", "monitoring.early_read_performance"):
        for version, label_def, auc, gini, ks, rate in con.execute(
                f"SELECT model_version, label_def, auc, gini, ks, default_rate FROM {table} "
                "WHERE month = $m", {"m": month}).fetchall():
            for name, value in (("auc", auc), ("gini", gini), ("ks", ks), ("default_rate", rate)):
                add(f"{name}:{label_def}", version, value)
            approved = con.execute(
                "SELECT avg(l.label::DOUBLE) FROM gold.predictions AS p "
                "JOIN gold.label_store AS l ON l.loan_id = p.loan_id "
                "WHERE l.label_def = $d AND date_trunc('month', l.snapshot_date) = $m "
                "AND p.decision = 'approve'", {"d": label_def, "m": month}).fetchone()[0]
            add(f"approved_default_rate:{label_def}", version, approved)
    for version, label_def, grade, predicted, observed, hl in con.execute(
            "SELECT model_version, label_def, grade, predicted_pd, observed_rate, hl_p_value "
            "FROM monitoring.calibration WHERE month = $m", {"m": month}).fetchall():
        add(f"predicted_pd:{label_def}:{grade}", version, predicted)
        add(f"observed_rate:{label_def}:{grade}", version, observed)
        if f"hl_p_value:{label_def}" not in figures:
            add(f"hl_p_value:{label_def}", version, hl)
    scored = con.execute("SELECT model_version, decision FROM gold.predictions "
                         "WHERE application_month = $m", {"m": month}).fetchall()
    if scored:
        [version] = {v for v, _ in scored}
        for decision in ("approve", "decline", "refer"):
            name = "approval_rate" if decision == "approve" else f"{decision}_rate"
            add(name, version, sum(d == decision for _, d in scored) / len(scored))
    for version, cutoff, approval, bad in con.execute(
            "SELECT DISTINCT model_version, decision_cutoff, decision_approval_rate, "
            "decision_bad_rate FROM ml.cutoff_strategy WHERE month = $m", {"m": month}).fetchall():
        add("decision_cutoff", version, cutoff)
        add("decision_approval_rate", version, approval)
        add("decision_bad_rate", version, bad)
    return figures


def catalog(config) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(config.catalog), read_only=True)


def dashboard_months(config) -> list[date]:
    with catalog(config) as con:
        return [m for (m,) in con.execute(
            "SELECT DISTINCT month FROM monitoring.dashboard ORDER BY month").fetchall()]


def test_one_project_per_model_line_and_the_champion(demo):
    lines = {model.name for model in load_model_config().models}
    assert {p.name for p in workspace(demo).list_projects()} == lines | {"champion"}


def test_one_snapshot_per_month_with_the_monitoring_tables_values(demo):
    found = snapshots(demo)
    months = dashboard_months(demo)
    # scored from 2024-01; the early read matures from 2024-04, the target from 2024-07
    assert months[0] <= date(2024, 1, 1) and months[-1] == PROJECT_MONTH
    assert sorted(found["champion"]) == [f"{m:%Y-%m}" for m in months]
    with catalog(demo) as con:
        expected = {m: expected_figures(con, m) for m in months}
    for project, by_month in found.items():
        for label, snapshot in by_month.items():
            month = date.fromisoformat(f"{label}-01")
            want = {metric: value for metric, (version, value) in expected[month].items()
                    if project == "champion" or line_of(version) == project}
            assert set(snapshot["values"]) == set(want), (project, label)
            for metric, value in want.items():
                assert snapshot["values"][metric] == pytest.approx(value, abs=1e-12), metric
        if project != "champion":  # a line has a snapshot exactly in the months it has figures
            assert set(by_month) == {f"{m:%Y-%m}" for m in months if any(
                line_of(v) == project for v, _ in expected[m].values())}
    matured = expected[PROJECT_MONTH]
    for metric in ("psi:score", f"auc:{TARGET}", f"auc:{EARLY}", f"predicted_pd:{TARGET}:A",
                   f"approved_default_rate:{TARGET}", "approval_rate", "decision_bad_rate"):
        assert metric in matured, metric


def test_the_cutoffs_rates_are_those_of_its_reference_below_the_cutoff(demo):
    """ml.cutoff_strategy.decision_approval_rate / decision_bad_rate (the dashboard's expected
    bad rate): the share of the champion's OOT reference scored below the month's cut-off, and
    their observed default rate, recomputed from ml.score_reference."""
    with catalog(demo) as con:
        rows = con.execute(
            "SELECT c.month, c.decision_approval_rate, c.decision_bad_rate, "
            "avg((r.score < c.decision_cutoff)::DOUBLE), "
            "avg(r.label::DOUBLE) FILTER (WHERE r.score < c.decision_cutoff) "
            "FROM (SELECT DISTINCT month, model_version, trained_month, decision_cutoff, "
            "decision_approval_rate, decision_bad_rate FROM ml.cutoff_strategy) AS c "
            "JOIN ml.score_reference AS r ON r.model_version = c.model_version "
            "AND r.trained_month = c.trained_month GROUP BY ALL").fetchall()
    assert len(rows) >= 8
    for month, approval, bad, want_approval, want_bad in rows:
        assert approval == pytest.approx(want_approval, abs=1e-12), month
        assert bad == pytest.approx(want_bad, abs=1e-12), month


def test_rematerialising_a_month_replaces_its_snapshot(demo):
    before = snapshots(demo)
    materialise(demo, PROJECT_MONTH.isoformat(), PROJECT_MONTH.isoformat(), [DASHBOARD])
    after = snapshots(demo)
    label = f"{PROJECT_MONTH:%Y-%m}"
    for project in before:
        assert sorted(after[project]) == sorted(before[project]), project
        for month, snapshot in before[project].items():
            assert after[project][month]["values"] == snapshot["values"]
            same = after[project][month]["id"] == snapshot["id"]
            assert same == (month != label), (project, month)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def dashboard_server(demo):
    with vintage_dashboard("--warehouse", demo.warehouse, port=free_port()) as base:
        yield base


def test_vintage_dashboard_serves_filled_panels_offline(demo, dashboard_server):
    base = dashboard_server
    projects = {p["name"]: p["id"] for p in requests.get(f"{base}/api/projects",
                                                         timeout=10).json()}
    assert set(projects) == {m.name for m in load_model_config().models} | {"champion"}
    champion = projects["champion"]
    dashboard = requests.get(f"{base}/api/v2/dashboards/{champion}", timeout=10).json()
    assert [t["title"] for t in dashboard["tabs"]] == ["Stability", "Performance",
                                                      "Calibration", "Decisions"]
    points: dict[str, list] = {}
    for panel in dashboard["panels"]:
        filters = [{k: v[k] for k in ("tags", "metadata", "metric", "metric_labels")}
                   for v in panel["values"]]
        series = requests.post(f"{base}/api/v2/snapshots/{champion}/data_series_batch",
                               json={"series_filter": filters}, timeout=30).json()
        values = [x for s in series["series"] for x in s["values"] if x is not None]
        assert values, f"panel {panel['title']!r} has no data point"
        points[panel["title"]] = series
    score = points["Score PSI"]
    months = [s["metadata"]["month"] for s in score["sources"]]
    with catalog(demo) as con:
        psi = dict(con.execute("SELECT strftime(month, '%Y-%m'), psi FROM monitoring.stability "
                               "WHERE variable = 'score'").fetchall())
    [series] = score["series"]
    assert months == sorted(psi) and series["values"] == pytest.approx([psi[m] for m in months])
    # offline: the index page names only its own files, and the server has each of them
    index = requests.get(f"{base}/projects/{champion}", timeout=10)
    assert index.ok and "<div id=\"root\">" in index.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', index.text)
    assert any(a.endswith(".js") for a in assets)
    for asset in assets:
        assert asset.startswith("/") and not asset.startswith("//"), asset
        assert requests.get(f"{base}{asset}", timeout=30).ok, asset
