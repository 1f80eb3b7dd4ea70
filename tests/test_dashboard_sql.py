"""The monitoring dashboard's parts on small hand-made inputs: sql/monitoring/dashboard.sql
(the month's figures from the monitoring tables: NULL and infinite values left out, shares of
the decisions, model lines), the snapshot of a month (evidently refuses empty columns: none is
handed to it) and the workspace's one snapshot per month and project."""

from __future__ import annotations

import math
from datetime import date

import duckdb
import pandas as pd
import pyarrow as pa
import pytest

from ml_assets.assets.dashboard import (
    CHAMPION_PROJECT,
    highest,
    month_snapshot,
    panels,
    write_snapshots,
)
from ml_assets.settings import LabelDefinition
from resources.lake import sql_text
from tests.conftest import run_transform

MARCH, FEBRUARY = date(2024, 3, 1), date(2024, 2, 1)
SCORER, MATURED = "lightgbm_v2-2024-02", "logistic-2023-09"  # a line name with "_" and a digit
NAN, INF = float("nan"), float("inf")


def table(rows: list[dict], schema: list[tuple]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=pa.schema(schema))


PERFORMANCE_COLUMNS = [("month", pa.date32()), ("model_version", pa.string()),
                       ("label_def", pa.string()), ("auc", pa.float64()),
                       ("gini", pa.float64()), ("ks", pa.float64()),
                       ("default_rate", pa.float64()), ("approved_default_rate", pa.float64())]


def inputs() -> dict[str, pa.Table]:
    stability = [("month", pa.date32()), ("model_version", pa.string()),
                 ("variable", pa.string()), ("psi", pa.float64()),
                 ("actual_missing_share", pa.float64())]
    return {
        "all_stability": table([
            {"month": MARCH, "model_version": SCORER, "variable": "score", "psi": 0.12,
             "actual_missing_share": 0.0},
            {"month": MARCH, "model_version": SCORER, "variable": "fe_1", "psi": 0.31,
             "actual_missing_share": 0.05},
            {"month": MARCH, "model_version": SCORER, "variable": "fe_2", "psi": None,
             "actual_missing_share": None},  # no value on a side: nothing to show
            {"month": MARCH, "model_version": SCORER, "variable": "fe_3", "psi": INF,
             "actual_missing_share": 1.0},
            {"month": FEBRUARY, "model_version": SCORER, "variable": "score", "psi": 0.5,
             "actual_missing_share": 0.0},  # another month: not the step's
        ], stability),
        "monitoring_performance": table([
            {"month": MARCH, "model_version": MATURED, "label_def": "30dpd_6mob", "auc": 0.75,
             "gini": 0.5, "ks": 0.4, "default_rate": 0.3, "approved_default_rate": None},
        ], PERFORMANCE_COLUMNS),
        "monitoring_early_read": table([
            {"month": MARCH, "model_version": MATURED, "label_def": "30dpd_3mob", "auc": None,
             "gini": None, "ks": None, "default_rate": 0.0, "approved_default_rate": 0.0},
        ], PERFORMANCE_COLUMNS),
        "monitoring_calibration": table([
            {"month": MARCH, "model_version": MATURED, "label_def": "30dpd_6mob", "grade": "A",
             "predicted_pd": 0.03, "observed_rate": 0.0, "hl_p_value": 0.2},
            {"month": MARCH, "model_version": MATURED, "label_def": "30dpd_6mob", "grade": "B",
             "predicted_pd": None, "observed_rate": None, "hl_p_value": 0.2},  # no loans
        ], [("month", pa.date32()), ("model_version", pa.string()), ("label_def", pa.string()),
            ("grade", pa.string()), ("predicted_pd", pa.float64()),
            ("observed_rate", pa.float64()), ("hl_p_value", pa.float64())]),
        "gold_predictions": table([
            {"application_month": MARCH, "model_version": SCORER, "decision": d}
            for d in ("approve", "approve", "decline", "refer", "approve")
        ], [("application_month", pa.date32()), ("model_version", pa.string()),
            ("decision", pa.string())]),
        "ml_cutoff_strategy": table([
            {"month": MARCH, "model_version": SCORER, "band": band, "decision_cutoff": 0.05,
             "decision_approval_rate": 0.0, "decision_bad_rate": None}  # approves none
            for band in (1, 2)
        ], [("month", pa.date32()), ("model_version", pa.string()), ("band", pa.int64()),
            ("decision_cutoff", pa.float64()), ("decision_approval_rate", pa.float64()),
            ("decision_bad_rate", pa.float64())]),
    }


def test_figures_are_the_tables_values_without_nulls_with_their_source():
    rows = run_transform("monitoring/dashboard", inputs(), {"months": [MARCH]})
    figures = {r["metric"]: (r["model_version"], r["model_line"], r["value"], r["source"])
               for r in rows}
    assert len(figures) == len(rows)
    assert {r["month"] for r in rows} == {MARCH}
    stability = "monitoring.stability"
    assert figures == {
        "psi:score": (SCORER, "lightgbm_v2", 0.12, f"{stability}.psi"),
        "csi:fe_1": (SCORER, "lightgbm_v2", 0.31, f"{stability}.psi"),
        "missing:fe_1": (SCORER, "lightgbm_v2", 0.05, f"{stability}.actual_missing_share"),
        "missing:fe_3": (SCORER, "lightgbm_v2", 1.0, f"{stability}.actual_missing_share"),
        "auc:30dpd_6mob": (MATURED, "logistic", 0.75, "monitoring.performance.auc"),
        "gini:30dpd_6mob": (MATURED, "logistic", 0.5, "monitoring.performance.gini"),
        "ks:30dpd_6mob": (MATURED, "logistic", 0.4, "monitoring.performance.ks"),
        "default_rate:30dpd_6mob": (MATURED, "logistic", 0.3,
                                    "monitoring.performance.default_rate"),
        "default_rate:30dpd_3mob": (MATURED, "logistic", 0.0,
                                    "monitoring.early_read_performance.default_rate"),
        "approved_default_rate:30dpd_3mob": (
            MATURED, "logistic", 0.0, "monitoring.early_read_performance.approved_default_rate"),
        "predicted_pd:30dpd_6mob:A": (MATURED, "logistic", 0.03,
                                      "monitoring.calibration.predicted_pd"),
        "observed_rate:30dpd_6mob:A": (MATURED, "logistic", 0.0,
                                       "monitoring.calibration.observed_rate"),
        "hl_p_value:30dpd_6mob": (MATURED, "logistic", 0.2, "monitoring.calibration.hl_p_value"),
        "approval_rate": (SCORER, "lightgbm_v2", 0.6, "gold.predictions.decision"),
        "decline_rate": (SCORER, "lightgbm_v2", 0.2, "gold.predictions.decision"),
        "refer_rate": (SCORER, "lightgbm_v2", 0.2, "gold.predictions.decision"),
        "decision_cutoff": (SCORER, "lightgbm_v2", 0.05, "ml.cutoff_strategy.decision_cutoff"),
        "decision_approval_rate": (SCORER, "lightgbm_v2", 0.0,
                                   "ml.cutoff_strategy.decision_approval_rate"),
    }


def test_a_month_without_monitoring_has_no_figures():
    empty = {name: t.slice(0, 0) for name, t in inputs().items()}
    assert run_transform("monitoring/dashboard", empty, {"months": [MARCH]}) == []


def test_a_snapshot_leaves_out_what_evidently_would_refuse():
    snapshot = month_snapshot({"psi:score": 0.12, "auc:30dpd_6mob": None, "csi:fe_1": NAN,
                               "csi:fe_2": INF, "approval_rate": 0.6}, MARCH, "champion",
                              [SCORER, MATURED, SCORER])
    values = {m["config"]["column"]: m["value"] for m in snapshot.dict()["metrics"]}
    assert values == {"psi:score": 0.12, "approval_rate": 0.6}
    model = snapshot.to_snapshot_model()
    assert model.metadata == {"month": "2024-03", "project": "champion",
                              "model_versions": f"{SCORER}, {MATURED}"}
    assert model.tags == ["vintage"] and model.timestamp.date() == MARCH
    assert month_snapshot({"auc:30dpd_6mob": None, "csi:fe_1": NAN}, MARCH, "x", []) is None


def test_highest_ranks_variables_by_their_peak():
    history = pd.DataFrame({"variable": ["a", "a", "b", "c", "d"],
                            "psi": [0.1, 0.4, 0.3, None, 0.3]})
    assert highest(history, "psi", 3) == ["a", "b", "d"]
    assert highest(history.iloc[3:4], "psi", 3) == []


def test_the_workspace_keeps_one_snapshot_per_month_and_project(tmp_path):
    from evidently.ui.workspace import Workspace

    rows = [{"month": m, "model_version": v, "model_line": v.rsplit("-", 2)[0],
             "metric": metric, "value": value}
            for m in (FEBRUARY, MARCH)
            for v, metric, value in ((SCORER, "psi:score", 0.1 * m.month),
                                     (MATURED, "auc:30dpd_6mob", None))]
    figures = pd.DataFrame(rows)
    projects = ["lightgbm_v2", "logistic", CHAMPION_PROJECT]
    label = LabelDefinition(30, 6)
    tabs = {p: panels(["fe_1"], ["fe_1"], label, LabelDefinition(30, 3), ["A"])
            for p in projects}
    first = write_snapshots(tmp_path, projects, figures, [FEBRUARY, MARCH], tabs)
    # logistic has only a NULL figure: no snapshot
    assert set(first) == {(p, m) for p in ("lightgbm_v2", CHAMPION_PROJECT)
                          for m in (FEBRUARY, MARCH)}
    again = write_snapshots(tmp_path, projects, figures, [MARCH], tabs)
    ws = Workspace(str(tmp_path))
    found = {p.name: sorted(ws.get_run(p.id, r).metadata["month"] for r in ws.list_runs(p.id))
             for p in ws.list_projects()}
    assert found == {"lightgbm_v2": ["2024-02", "2024-03"], "logistic": [],
                     CHAMPION_PROJECT: ["2024-02", "2024-03"]}
    assert again[(CHAMPION_PROJECT, MARCH)] != first[(CHAMPION_PROJECT, MARCH)]
    champion = next(p for p in ws.list_projects() if p.name == CHAMPION_PROJECT)
    dashboard = ws.get_dashboard(champion.id)
    assert [t.title for t in dashboard.tabs] == ["Stability", "Performance", "Calibration",
                                                "Decisions"]
    assert math.isclose(ws.get_run(champion.id, again[(CHAMPION_PROJECT, MARCH)])
                        .metric_results.popitem()[1].value, 0.3)


@pytest.mark.parametrize("version,line", [("lightgbm-2024-01", "lightgbm"),
                                          ("lgbm_2-2025-12", "lgbm_2"),
                                          ("logistic", "logistic")])
def test_model_line_of_a_version(version, line):
    with duckdb.connect() as con:
        con.execute(sql_text("macros"))
        assert con.execute("SELECT model_line($v)", {"v": version}).fetchone()[0] == line
