"""`vintage run`: materialise the graph for a range of months through Dagster, in one run.

The run is recorded in the Dagster instance of the warehouse (`<warehouse>/_dagster`, or
DAGSTER_HOME when set), so `make dev` shows it in the UI.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import dagster as dg

from ml_assets.months import folder_label, parse_month, partition_key
from ml_assets.settings import CONFIG_DIR
from resources.sources import SourceError

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


class UsageError(ValueError):
    """A command-line value the platform cannot act on."""


@dataclass
class RunSummary:
    run_id: str
    success: bool
    first: date
    last: date
    seconds_by_asset: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    failed_checks: list[str] = field(default_factory=list)

    def seconds_by_stage(self) -> dict[str, float]:
        stages: dict[str, float] = defaultdict(float)
        for asset, seconds in self.seconds_by_asset.items():
            stages[asset.split("/", 1)[0]] += seconds
        return dict(stages)


@dataclass(frozen=True)
class StepEvent:
    """A step of a run starting or ending, as it happens (for progress output)."""

    step: str  # e.g. `silver/loan_daily` (see step_name)
    months: str  # the run's months, `2023-01..2025-11`
    index: int  # 1-based: the how-manieth step of the run to start (or be skipped)
    total: int  # steps in the run's plan
    status: str  # "started", "succeeded", "failed" or "skipped" (an upstream step failed)
    seconds: float | None = None  # wall time of the step, once it ended


_STEP_STATUS = {"STEP_START": "started", "STEP_SUCCESS": "succeeded",
                "STEP_FAILURE": "failed", "STEP_SKIPPED": "skipped"}


class StepWatcher:
    """Turns the run's step events into StepEvents for `on_step`, as the instance stores them.

    Registered with `DagsterInstance.add_event_listener` for a run id chosen before the run,
    so it is called in the executing thread the moment each event is stored. An error in
    `on_step` (say, stdout closed) stops the progress output, never the run."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str, months: str,
                 on_step: Callable[[StepEvent], None]):
        self.instance, self.run_id, self.months, self.on_step = instance, run_id, months, on_step
        self.total: int | None = None
        self.index = 0
        self.started: dict[str, float] = {}

    def _plan_size(self) -> int:
        run = self.instance.get_run_by_id(self.run_id)
        snapshot = self.instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
        return len(snapshot.steps)

    def __call__(self, entry) -> None:
        event = entry.dagster_event
        status = _STEP_STATUS.get(event.event_type_value) if event and event.step_key else None
        if status is None or self.on_step is None:
            return
        try:
            if self.total is None:
                self.total = self._plan_size()
            seconds = None
            if status in ("started", "skipped"):
                self.index += 1
                self.started[event.step_key] = entry.timestamp
            else:
                seconds = entry.timestamp - self.started.get(event.step_key, entry.timestamp)
            self.on_step(StepEvent(step_name(event.step_key), self.months, self.index,
                                   max(self.total, self.index), status, seconds))
        except Exception as error:  # noqa: BLE001 - progress output must not fail the run
            self.on_step = None
            print(f"vintage: progress output stopped: {error}", file=sys.stderr)


def step_name(step_key: str) -> str:
    """`raw/lms_loan_daily` for an asset's step; the column schema checks' step by its job."""
    return "checks/column_schema_changes" if step_key.startswith("asset_check") \
        else step_key.replace("__", "/")


def ensure_dagster_home(config=None) -> Path:
    """The Dagster instance of the warehouse: DAGSTER_HOME when set, else `<warehouse>/_dagster`
    (`paths.dagster_home`), so every warehouse keeps its own runs and the UI of one never shows
    another's; created with the project's instance settings. Sets DAGSTER_HOME for Dagster."""
    from ml_assets.settings import settings

    config = config or settings()
    home = Path(os.environ.get("DAGSTER_HOME") or config.dagster_home)
    os.environ["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copy(CONFIG_DIR / "dagster.yaml", home / "dagster.yaml")
    return home


def check_warehouse_writable(config) -> None:
    """A folder warehouse must be writable (a bucket is checked by its first commit)."""
    if not config.local_warehouse:
        return
    path = Path(config.warehouse)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise UsageError(f"warehouse {path} is not writable: {error.strerror}") from None


def resolve_months(first: str | None, last: str | None, partitions_def,
                   data_months: tuple[date, date]) -> tuple[date, date]:
    """The months to run: as given, else the data's; always within the partitions."""
    keys = partitions_def.get_partition_keys()
    earliest, latest = parse_month(keys[0]), parse_month(keys[-1])
    try:
        start = parse_month(first) if first else data_months[0]
        end = parse_month(last) if last else min(data_months[1], latest)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if start > end:
        raise UsageError(f"--from {folder_label(start)} is after --to {folder_label(end)}")
    if start < earliest or end > latest:
        raise UsageError(
            f"months {folder_label(start)}..{folder_label(end)} are outside the months the "
            f"platform has, {folder_label(earliest)}..{folder_label(latest)} (from the data's "
            f"first month to the last complete month)"
        )
    return start, end


def resolve_selection(defs: dg.Definitions, select: str | None) -> list[dg.AssetKey]:
    """The assets of `select` (Dagster's selection syntax; everything when empty), with the
    other tables their steps write. Raises UsageError naming a bad or empty selection."""
    graph = defs.resolve_asset_graph()
    known = sorted(key.to_user_string() for key in graph.get_all_asset_keys())
    if not select:
        return sorted(graph.get_all_asset_keys())
    try:
        with warnings.catch_warnings():  # Dagster's parser passes one of its beta parameters
            warnings.simplefilter("ignore", dg.BetaWarning)
            # a table comes with the tables its step writes too (a silver table and its
            # quarantine, the registry and the OOT reference): one step, one commit each
            keys = (dg.AssetSelection.from_string(select).required_multi_asset_neighbors()
                    .resolve(graph))
    except Exception as error:  # Dagster raises several kinds for a bad selection string
        raise UsageError(f"--select {select!r}: {error}") from None
    if not keys:
        raise UsageError(f"--select {select!r} matches no asset; assets: {', '.join(known)}")
    return sorted(keys)


def preflight(start: date, end: date, keys: list[dg.AssetKey], run_id: str) -> list[str]:
    """Check every source the selection ingests, for the months, against its contract before the
    run starts (recorded for the run, whose raw steps then read each file no more), so a bad
    file stops everything before a Dagster run exists. Returns the problems (empty when the run
    can go ahead)."""
    from ml_assets.assets.raw import check_run_sources, ingested_sources
    from ml_assets.contracts import blocking
    from ml_assets.definitions import build_resources
    from ml_assets.months import month_range
    from ml_assets.settings import settings

    names = ingested_sources(keys)
    if not names:
        return []
    resources = build_resources(settings())
    checked = check_run_sources(resources["lake"], resources["sources"], names,
                                list(month_range(start, end)), run_id)
    return [f.describe(staged.file.name) for staged, findings in checked.values()
            for f in blocking(findings)]


def run(first: str | None = None, last: str | None = None, select: str | None = None,
        verbose: bool = False, on_step: Callable[[StepEvent], None] | None = None,
        job_name: str | None = None, run_config: dict | None = None) -> RunSummary:
    """Materialise the selected assets for months first..last (`YYYY-MM`; default: every month)
    as one Dagster run in the instance of DAGSTER_HOME, of the job `job_name` (default
    monthly_pipeline) with `run_config` (e.g. a sign-off's, `jobs.approval_run_config`) besides
    the loggers'. `on_step` is called as each step starts and ends. Raises UsageError for a
    bad month range or selection, SourceError when a source breaks its contract (nothing is
    run then); a failing step is not raised but reported in the summary (`success` False,
    `errors`)."""
    from ml_assets.settings import settings

    config = settings()
    check_warehouse_writable(config)  # before loading: that stages the lms file
    from ml_assets.definitions import build_definitions, monthly_pipeline
    from ml_assets.partitions import source_month_range

    defs = build_definitions(config)
    job = defs.resolve_job_def(job_name or monthly_pipeline.name)
    partitions = job.partitions_def
    start, end = resolve_months(first, last, partitions, source_month_range(config))
    keys = resolve_selection(defs, select)
    run_id = str(uuid.uuid4())
    try:
        problems = preflight(start, end, keys, run_id)
    except SourceError as error:  # a file that cannot be read at all
        raise SourceError(f"{error}\nnothing was run; published months are unchanged") from None
    if problems:
        raise SourceError("\n".join(problems) + "\nnothing was run; published months are "
                          "unchanged")
    ensure_dagster_home(config)
    if dg.AssetKey(["monitoring", "drift"]) in keys and config.monitoring.drift_report:
        from ml_assets.assets.monitoring import preload_evidently

        preload_evidently()
    with dg.DagsterInstance.get() as instance:
        if on_step is not None:
            months = f"{folder_label(start)}..{folder_label(end)}"
            instance.add_event_listener(run_id, StepWatcher(instance, run_id, months, on_step))
        result = job.execute_in_process(
            instance=instance,
            run_id=run_id,
            asset_selection=keys,
            tags={RANGE_START: partition_key(start), RANGE_END: partition_key(end)},
            run_config={**(run_config or {}), "loggers": {"console": {"config": {
                "log_level": "INFO" if verbose else "WARNING"}}}},
            raise_on_error=False,
        )
    summary = RunSummary(result.run_id, result.success, start, end)
    for event in result.all_events:
        if event.is_step_success:
            summary.seconds_by_asset[step_name(event.step_key)] = (
                event.event_specific_data.duration_ms / 1000)
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            check = event.event_specific_data
            if not check.passed:
                summary.failed_checks.append(
                    f"{check.severity.value:5} {check.asset_key.to_user_string()} "
                    f"{check.check_name} {check.partition or ''}: {check.description or ''}"
                    .rstrip(": "))
        elif event.is_step_failure:
            error = event.event_specific_data.error
            cause = error.cause or error
            summary.errors.append(f"{step_name(event.step_key)}: {cause.message.strip()}")
    refresh_catalog()
    return summary


def refresh_catalog() -> bool:
    """Rebuild the catalog of the configured warehouse from every table's Delta log. Returns
    False if another process kept rebuilding it (see Lake.refresh_catalog)."""
    from ml_assets.definitions import build_lake
    from ml_assets.settings import settings
    from ml_assets.tables import all_tables

    return build_lake(settings()).refresh_catalog(all_tables())
