"""The monitoring dashboard: each month's monitoring figures, taken from the published tables
(sql/monitoring/dashboard.sql, published as monitoring.dashboard), written as snapshots into an
evidently workspace (`Settings.dashboard_workspace`: `<warehouse>/evidently`) with one project
per model line of config/models.yaml and one for the champion of each month, and dashboard
panels over months; `vintage dashboard` serves evidently's UI over the workspace.

Why a table with a side effect rather than a bare asset: every value a snapshot shows is a row
a user can also query, with the table column it comes from, and the month's step replaces both
together: its Delta commit, and in each project the month's snapshot (deleted, then written
again: re-materialising a month adds no snapshot). The snapshots are written before the commit:
a step that fails in between leaves them, and its next run of the month replaces them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from pathlib import Path

import dagster as dg
import pandas as pd

from ml_assets.assets.monitoring import SCORE, published_up_to
from ml_assets.metadata import markdown_table
from ml_assets.months import folder_label
from ml_assets.settings import LabelDefinition
from ml_assets.spec import Build, Input, Step, TableSpec
from ml_assets.tables import (
    CALIBRATION,
    CUTOFF_STRATEGY,
    DASHBOARD,
    EARLY_READ_PERFORMANCE,
    PERFORMANCE,
    PREDICTIONS,
    STABILITY,
)
from resources.lake import Table

CHAMPION_PROJECT = "champion"  # every month's figures, whichever model line was champion
TAG = "vintage"  # the tag of every snapshot the platform writes
MONTH = "month"  # snapshot metadata: the month (YYYY-MM) a snapshot holds
LOCK_FILE = ".vintage.lock"  # one writer at a time per workspace
METRIC = "PublishedValue"  # the evidently metric that carries each figure (published_value)


def project_figures(figures: pd.DataFrame, project: str) -> pd.DataFrame:
    """The rows of monitoring.dashboard (`figures`) that a project shows: the champion
    project every row, a model line's project the rows of its versions."""
    return figures if project == CHAMPION_PROJECT else figures[figures["model_line"] == project]


def highest(history: pd.DataFrame, column: str, count: int) -> list[str]:
    """The `count` variables of `history` (monitoring.stability rows) whose `column` reached
    the highest values over its months, highest first (ties by name); none without values."""
    peaks = history.dropna(subset=[column]).groupby("variable")[column].max()
    ranked = sorted(peaks.items(), key=lambda kv: (-kv[1], kv[0]))
    return [variable for variable, _ in ranked[:count]]


# -- panels -----------------------------------------------------------------------------------


def panels(csi_features: list[str], missing_features: list[str], target: LabelDefinition,
           early_read: LabelDefinition, grades: Iterable[str]) -> list[tuple[str, list]]:
    """The dashboard of a project, as (tab title, panels): stability (score PSI, the CSI and
    missing share of the given features), performance (AUC / Gini / KS against the target
    label and against the early read, each by label month), calibration (predicted PD and
    observed default rate of each grade, target label) and decisions (approval rate, the
    cut-off's expected bad rate on the reference, the observed bad rate of the approved once
    matured). Every line is a figure of monitoring.dashboard, named by its `metric`."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel

    def line(metric: str, legend: str) -> PanelMetric:
        return PanelMetric(legend=legend, metric=METRIC, metric_labels={"column": metric})

    def plot(title: str, lines: list[PanelMetric], description: str, size: str = "full"):
        return line_plot_panel(title, lines, description, size=size)

    def discrimination(label: LabelDefinition, what: str, table: str):
        return plot(f"AUC, Gini, KS: {what} ({label.name})",
                    [line(f"{name}:{label.name}", legend) for name, legend in
                     (("auc", "AUC"), ("gini", "Gini"), ("ks", "KS"))],
                    f"{table}, by label month: the predictions of {label.mob} months before",
                    "half")

    target_def = target.name
    return [
        ("Stability", [
            plot("Score PSI", [line(f"psi:{SCORE}", "score PSI")],
                 "monitoring.stability: PSI of the score against the champion's OOT reference "
                 "(< 0.1 stable, 0.1-0.25 watch, >= 0.25 act)"),
            plot("Feature CSI (most drifting features)",
                 [line(f"csi:{f}", f) for f in csi_features],
                 "monitoring.stability: CSI of the features with the highest CSI so far", "half"),
            plot("Missing share (most missing features)",
                 [line(f"missing:{f}", f) for f in missing_features],
                 "monitoring.stability: share of the month's loans without a value", "half"),
        ]),
        ("Performance", [discrimination(target, "target", "monitoring.performance"),
                         discrimination(early_read, "early read",
                                        "monitoring.early_read_performance")]),
        ("Calibration", [
            plot(f"Grade {grade}: predicted PD vs observed rate",
                 [line(f"predicted_pd:{target_def}:{grade}", "predicted PD"),
                  line(f"observed_rate:{target_def}:{grade}", "observed default rate")],
                 f"monitoring.calibration ({target_def}), by label month", "half")
            for grade in grades]),
        ("Decisions", [
            plot("Approval and bad rates",
                 [line("approval_rate", "approval rate"),
                  line("decision_bad_rate", "expected bad rate"),
                  line(f"approved_default_rate:{target_def}", "bad rate, approved"),
                  line(f"default_rate:{target_def}", "default rate, all")],
                 "approval rate (gold.predictions) and the bad rate the cut-off expects on the "
                 "reference (ml.cutoff_strategy), by application month; observed default rate "
                 "of the approved and of all loans once matured (monitoring.performance), by "
                 "label month"),
        ]),
    ]


def dashboard_model(tabs: list[tuple[str, list]]):
    """Evidently's DashboardModel of (tab title, panels)."""
    from evidently.sdk.models import DashboardModel, DashboardTabModel

    return DashboardModel(
        tabs=[DashboardTabModel(title=title, panels=[p.id for p in items])
              for title, items in tabs],
        panels=[p for _, items in tabs for p in items])


# -- snapshots --------------------------------------------------------------------------------


@functools.cache
def published_value():
    """The evidently metric of one published figure: `PublishedValue(column=metric)` over a
    one-row dataset is that row's value, shown as a counter. Evidently's own one-column
    statistics (MeanValue, ...) draw a distribution per column, 55 ms each: 150 figures a month
    would take 8 s. Defined on first use: evidently takes seconds to import. The UI reads its
    values without this class (a snapshot stores results, not code)."""
    from evidently.core.metric_types import SingleValueCalculation, SingleValueMetric
    from evidently.legacy.renderers.html_widgets import CounterData, WidgetSize, counter

    class PublishedValue(SingleValueMetric):
        column: str

    class PublishedValueCalculation(SingleValueCalculation[PublishedValue]):
        def calculate(self, context, current_data, reference_data):
            value = float(current_data.column(self.metric.column).data.iloc[0])
            result = self.result(value)
            result.widget = [counter(counters=[CounterData.float(self.metric.column, value, 4)],
                                     size=WidgetSize.HALF)]
            return result, None

        def display_name(self) -> str:
            return self.metric.column

    return PublishedValue


def month_snapshot(values: Mapping[str, float], month: date, project: str,
                   versions: Iterable[str]):
    """An evidently snapshot of one project's figures of `month` (metric -> value), dated the
    month's first day, tagged `vintage`, with the month and model versions in its metadata; None
    when no figure has a value. Each figure is a `published_value` metric over a one-row
    dataset: the snapshot's value is the published value itself. Evidently refuses a column
    without a value: a NULL or non-finite figure is left out of the snapshot."""
    from evidently import DataDefinition, Dataset, Report

    kept = {metric: float(value) for metric, value in values.items()
            if value is not None and math.isfinite(float(value))}
    if not kept:
        return None
    dataset = Dataset.from_pandas(pd.DataFrame([kept]),
                                  data_definition=DataDefinition(numerical_columns=list(kept)))
    metric = published_value()
    report = Report([metric(column=name) for name in kept],
                    metadata={MONTH: folder_label(month), "project": project,
                              "model_versions": ", ".join(sorted(set(versions)))},
                    tags=[TAG])
    return report.run(dataset, None, timestamp=datetime(month.year, month.month, 1))


def write_snapshots(workspace: Path, projects: Iterable[str], figures: pd.DataFrame,
                    months: Iterable[date], tabs: Mapping[str, list[tuple[str, list]]]
                    ) -> dict[tuple[str, date], str]:
    """Write `months` of monitoring.dashboard rows (`figures`) into the evidently workspace at
    `workspace` (created if missing): each project (created if missing) loses its snapshots of
    those months and gets one per month with figures, and its dashboard becomes `tabs[project]`.
    Returns (project, month) -> snapshot id. One writer at a time (a lock file)."""
    from evidently.ui.workspace import Workspace
    from filelock import FileLock

    workspace.mkdir(parents=True, exist_ok=True)
    labels = {folder_label(m): m for m in months}
    written: dict[tuple[str, date], str] = {}
    with FileLock(str(workspace / LOCK_FILE)):
        ws = Workspace(str(workspace))
        existing = {p.name: p for p in ws.list_projects()}
        for name in projects:
            project = existing.get(name) or ws.create_project(name, description=(
                "Every month's monitoring of the champion, whichever model line it is"
                if name == CHAMPION_PROJECT else
                f"The monitoring of model line {name} (config/models.yaml) in the months it "
                "scored"))
            for run in ws.list_runs(project.id):
                snapshot = ws.get_run(project.id, run)
                if snapshot is not None and snapshot.metadata.get(MONTH) in labels:
                    ws.delete_run(project.id, run)
            rows = project_figures(figures, name)
            for label, month in labels.items():
                month_rows = rows[rows["month"] == month]
                snapshot = month_snapshot(dict(zip(month_rows["metric"], month_rows["value"],
                                                   strict=True)),
                                          month, name, month_rows["model_version"])
                if snapshot is not None:
                    ref = ws.add_run(project.id, snapshot, name=f"{name} {label}")
                    written[(name, month)] = str(ref.id)
            ws.save_dashboard(project.id, dashboard_model(tabs[name]))
    return written


# -- the step ---------------------------------------------------------------------------------


def dashboard_compute(step: Step) -> dict[Table, str]:
    """monitoring.dashboard: the months' figures (sql/monitoring/dashboard.sql), written as
    snapshots into the dashboard's evidently workspace (`write_snapshots`), one project per
    model line of config/models.yaml (and any line in the figures) and the champion's; the CSI
    and missing-share panels show the monitoring.dashboard_features features with the highest
    values up to the step's last month (monitoring.stability of every month published so
    far)."""
    con, config, last = step.con, step.config, max(step.months)
    step.read("all_stability", sorted(set(published_up_to(step, STABILITY, last))
                                      | set(step.months)))
    query = step.sql("monitoring/dashboard", {"months": step.months})
    figures = con.execute(query).df(date_as_object=True)
    history = con.execute(
        "SELECT model_line(model_version) AS model_line, variable, psi, actual_missing_share "
        "FROM all_stability WHERE month <= $last AND variable <> $score",
        {"last": last, "score": SCORE}).df()
    projects = [*dict.fromkeys([*(m.name for m in step.models.models),
                                *sorted(figures["model_line"].unique())]), CHAMPION_PROJECT]
    count = config.monitoring.dashboard_features
    grades = [grade for grade, _ in step.models.rating_scale]
    tabs = {}
    for project in projects:
        seen = project_figures(history, project)
        tabs[project] = panels(highest(seen, "psi", count),
                               highest(seen, "actual_missing_share", count),
                               config.label, config.early_read, grades)
    written = write_snapshots(config.dashboard_workspace, projects, figures, step.months, tabs)
    for month in step.months:
        month_rows = figures[figures["month"] == month]
        step.metadata(month, {
            "dashboard_workspace": dg.MetadataValue.path(str(config.dashboard_workspace)),
            "open_with": "vintage dashboard (make dashboard), then http://127.0.0.1:8000",
            "snapshots": ", ".join(f"{p}: {written[(p, month)]}" for p in projects
                                   if (p, month) in written) or "none: no figure this month",
            "figures": dg.MetadataValue.md(markdown_table(
                ["metric", "model version", "value", "source"],
                month_rows[["metric", "model_version", "value", "source"]].values.tolist()))
            if len(month_rows) else "none",
        })
    return {DASHBOARD: query}


def dashboard_spec(build: Build) -> TableSpec:
    """monitoring.dashboard and the evidently snapshots, from the month's monitoring tables,
    the decisions of gold.predictions and the cut-off of ml.cutoff_strategy."""
    return TableSpec(
        table=DASHBOARD, compute=dashboard_compute,
        inputs=(Input(STABILITY, "all_stability", lookup=True),
                Input(PERFORMANCE, "monitoring_performance"),
                Input(EARLY_READ_PERFORMANCE, "monitoring_early_read"),
                Input(CALIBRATION, "monitoring_calibration"),
                Input(PREDICTIONS, "gold_predictions"),
                Input(CUTOFF_STRATEGY, "ml_cutoff_strategy")),
        kinds=frozenset({"duckdb", "deltalake", "evidently"}))
