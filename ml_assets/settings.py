"""The platform's configuration: `config/vintage.yaml`, overridden by environment variables.

Read once per process. `VINTAGE_CONFIG` points at another YAML file;
`VINTAGE_SOURCE` and `VINTAGE_WAREHOUSE` override the paths.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from datetime import date
from functools import cache
from pathlib import Path

import yaml

from ml_assets.months import parse_month

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _bundled(folder: str) -> Path:
    """A folder of the checkout (`sql/`, `config/`), or its copy inside an installed wheel."""
    in_checkout = PROJECT_ROOT / folder
    return in_checkout if in_checkout.is_dir() else Path(__file__).parent / f"_{folder}"


SQL_DIR = _bundled("sql")
CONFIG_DIR = _bundled("config")


class SettingsError(ValueError):
    """The configuration file holds a value the platform cannot use."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML itself keeps the
    last one silently: a second `sources:` pasted at the end of a file drops the first)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise SettingsError(
                    f"line {key_node.start_mark.line + 1}: `{key}` is given twice in the same "
                    "block (YAML would keep only the last one): merge the two into one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def contracts_file() -> Path:
    """The contract file in use: VINTAGE_CONTRACTS, else config/contracts.yaml; relative to
    the working directory when inside it (as a message shows it)."""
    path = Path(os.environ.get("VINTAGE_CONTRACTS") or CONFIG_DIR / "contracts.yaml").resolve()
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def read_yaml(path: Path, missing: str) -> dict:
    """The mapping in the YAML file `path` ({} when empty). Raises SettingsError naming the
    file: `missing` when it does not exist, or the line of a key given twice in one block.
    YAML that does not parse raises yaml.YAMLError (the CLI names the file and its kind)."""
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except FileNotFoundError:
        raise SettingsError(missing) from None
    except SettingsError as error:
        raise SettingsError(f"{path}: {error}") from None


@dataclass(frozen=True)
class LabelDefinition:
    """Default = dpd >= `dpd` at months on book `mob`; named `{dpd}dpd_{mob}mob`."""

    dpd: int
    mob: int

    @property
    def name(self) -> str:
        return f"{self.dpd}dpd_{self.mob}mob"


@dataclass(frozen=True)
class DemoSettings:
    folder: Path
    scale: float
    seed: int
    shift_month: date


@dataclass(frozen=True)
class CheckSettings:
    max_quarantine_share: float
    label_rate_min: float
    label_rate_max: float
    max_loans_without_application_data: float


COVERED_SOURCES = ("features_attributes", "features_financials", "feature_clickstream")
# Which source each feature store column comes from (shell patterns; the rest are financials):
# what a source outage takes away from a model.
FEATURES_OF_SOURCE = {
    "feature_clickstream": ("fe_*_latest", "fe_*_mean", "clickstream_months"),
    "features_attributes": ("age", "occupation"),
}


def source_of_feature(feature: str) -> str:
    """The source (one of COVERED_SOURCES) a feature store column is built from."""
    for source, patterns in FEATURES_OF_SOURCE.items():
        if any(fnmatch.fnmatchcase(feature, pattern) for pattern in patterns):
            return source
    return "features_financials"
COVERAGE_ON_FAILURE = ("flag", "block")


@dataclass(frozen=True)
class CoverageSettings:
    trailing_months: int
    max_relative_drop: float
    floors: dict[str, float]  # source name -> the lowest coverage that is not an outage
    on_failure: str  # flag | block


@dataclass(frozen=True)
class MonitoringSettings:
    psi_watch: float
    psi_act: float
    psi_floor: float
    auc_floor: float
    early_read_auc_floor: float
    max_auc_drop: float
    outage_missing_increase: float
    min_loans: int
    drift_report: bool
    drift_report_features: int | None
    segment_column: str = "occupation"  # a gold.feature_store column: AUC by its values
    # calibration tests (monitoring.calibration): a p-value below warn_p warns, below error_p
    # is an error
    calibration_warn_p: float = 0.05
    calibration_error_p: float = 0.01
    # the monitoring dashboard's CSI and missing-share panels show this many features
    dashboard_features: int = 8


@dataclass(frozen=True)
class AnalyticsSettings:
    vintage_max_mob: int  # the vintage curve follows each cohort up to this mob
    max_roll_from_current: float  # WARN above this share of current loans rolling delinquent


@dataclass(frozen=True)
class ServeSettings:
    """The scoring service (`vintage serve`, ml_assets.serving)."""

    host: str  # the interface it listens on (127.0.0.1: this machine only)
    port: int
    reload_seconds: float  # how often it looks for a new champion or feature store version
    psi_window: int  # the last scores the live score PSI compares with the champion's reference
    psi_min_scores: int  # fewer scores than this in the window: no live PSI yet
    max_batch: int  # applications in one POST /v1/score/batch at most
    sql_connections: int  # DuckDB connections with the batch SQL prepared, for raw applications


EXECUTORS = ("in_process", "multiprocess", "k8s", "celery")


@dataclass(frozen=True)
class Settings:
    config_file: Path
    source: Path | None  # None: the embedded demo data
    warehouse: str  # an absolute folder, or s3://bucket/prefix
    catalog: Path  # the DuckDB catalog file (always local)
    work: Path  # local scratch: staged sources, staging of a step's months, DuckDB's spill
    storage_options: dict[str, str]  # delta-rs object-store options of a bucket warehouse
    retention_days: int  # old table versions are kept this long, then vacuumed
    executor: str  # in_process | multiprocess | k8s | celery
    max_concurrent: int  # steps at once with the multiprocess executor
    executor_config: dict  # the k8s or celery executor's own configuration
    dagster_home: Path  # the Dagster instance of this warehouse
    # the evidently workspace of the monitoring dashboard: <warehouse>/evidently, or for a bucket
    # warehouse `.vintage/evidently` in the working directory (evidently's is a local folder)
    dashboard_workspace: Path
    demo: DemoSettings
    first_month: date | None
    last_month: date | None
    label: LabelDefinition  # the target: what models learn and are judged on
    early_read: LabelDefinition  # an earlier label, matured sooner, monitored beside the target
    clickstream_lookback_months: int
    checks: CheckSettings
    coverage: CoverageSettings
    monitoring: MonitoringSettings
    analytics: AnalyticsSettings
    serve: ServeSettings
    duckdb_threads: int | None
    duckdb_memory_limit: str | None
    batch_rows: int

    @property
    def label_definitions(self) -> tuple[LabelDefinition, ...]:
        """Every label definition the label store holds: the target first, then the early
        read."""
        return (self.label, self.early_read)

    @property
    def source_folder(self) -> Path:
        return self.source if self.source is not None else self.demo.folder

    @property
    def local_warehouse(self) -> bool:
        return "://" not in self.warehouse


def _warehouse_paths(raw_paths: dict, storage: dict, environ) -> dict:
    """The warehouse (a folder or a bucket), its catalog, work folder and Dagster instance: a
    folder warehouse keeps them inside it; a bucket needs a local catalog and work folder
    (default `.vintage/` in the working directory)."""
    warehouse = str(environ.get("VINTAGE_WAREHOUSE") or raw_paths.get("warehouse")
                    or "warehouse")
    if "://" in warehouse:
        if not warehouse.startswith(("s3://", "s3a://", "file://")):
            raise SettingsError(f"paths.warehouse: {warehouse!r}: a folder or s3://bucket/prefix")
        if warehouse.startswith("file://"):
            warehouse = warehouse.removeprefix("file://")
    local = "://" not in warehouse
    if local:
        warehouse = str(Path(warehouse).resolve())
    base = Path(warehouse) if local else Path(".vintage").resolve()
    catalog = raw_paths.get("catalog") or environ.get("VINTAGE_CATALOG")
    work = raw_paths.get("work") or environ.get("VINTAGE_WORK")
    home = environ.get("DAGSTER_HOME") or raw_paths.get("dagster_home")
    for key, value in (("paths.catalog", catalog), ("paths.work", work),
                       ("paths.dagster_home", home)):
        if value and "://" in str(value):
            raise SettingsError(f"{key}: {value!r}: a local path (only the warehouse may be "
                                "in a bucket)")
    options = storage.get("options") or {}
    if not isinstance(options, dict):
        raise SettingsError("storage.options: a mapping of object-store options, e.g. "
                            "AWS_REGION: eu-west-1")
    # YAML reads `true` as a boolean; delta-rs and pyarrow take the text "true"
    options = {str(k): str(v).lower() if isinstance(v, bool) else str(v)
               for k, v in options.items()}
    return {
        "warehouse": warehouse,
        "catalog": Path(catalog).resolve() if catalog else base / "catalog.duckdb",
        "work": Path(work).resolve() if work else base / "_work",
        "dagster_home": Path(home).resolve() if home else base / "_dagster",
        "dashboard_workspace": base / "evidently",
        "storage_options": options,
    }


def _optional_month(value, key: str) -> date | None:
    if value in (None, ""):
        return None
    try:
        return parse_month(str(value))
    except ValueError as error:
        raise SettingsError(f"{key}: {error}") from None


def _positive_int(value, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SettingsError(f"{key}: expected a whole number >= 1, got {value!r}")
    return value


def _checks(raw: dict) -> CheckSettings:
    values = CheckSettings(
        max_quarantine_share=float(raw.get("max_quarantine_share", 0.01)),
        label_rate_min=float(raw.get("label_rate_min", 0.05)),
        label_rate_max=float(raw.get("label_rate_max", 0.6)),
        max_loans_without_application_data=float(
            raw.get("max_loans_without_application_data", 0.01)),
    )
    if not 0 <= values.label_rate_min < values.label_rate_max <= 1:
        raise SettingsError("checks: need 0 <= label_rate_min < label_rate_max <= 1")
    return values


def _share(value, key: str) -> float:
    try:
        share = float(value)
    except (TypeError, ValueError):
        share = -1.0
    if not 0 <= share <= 1:
        raise SettingsError(f"{key}: expected a share between 0 and 1, got {value!r}")
    return share


def _coverage(raw: dict) -> CoverageSettings:
    floors = {**dict.fromkeys(COVERED_SOURCES, 0.0), **(raw.get("floors") or {})}
    unknown = sorted(set(floors) - set(COVERED_SOURCES))
    if unknown:
        raise SettingsError(f"coverage.floors: unknown source {unknown[0]!r}; sources are "
                            f"{', '.join(COVERED_SOURCES)}")
    on_failure = raw.get("on_failure", "flag")
    if on_failure not in COVERAGE_ON_FAILURE:
        raise SettingsError(f"coverage.on_failure: one of {', '.join(COVERAGE_ON_FAILURE)}, "
                            f"got {on_failure!r}")
    return CoverageSettings(
        trailing_months=_positive_int(raw.get("trailing_months", 6), "coverage.trailing_months"),
        max_relative_drop=_share(raw.get("max_relative_drop", 0.25),
                                 "coverage.max_relative_drop"),
        floors={source: _share(floor, f"coverage.floors.{source}")
                for source, floor in floors.items()},
        on_failure=on_failure,
    )


def _monitoring(raw: dict) -> MonitoringSettings:
    values = MonitoringSettings(
        psi_watch=float(raw.get("psi_watch", 0.1)),
        psi_act=float(raw.get("psi_act", 0.25)),
        psi_floor=float(raw.get("psi_floor", 1e-4)),
        auc_floor=float(raw.get("auc_floor", 0.70)),
        early_read_auc_floor=float(raw.get("early_read_auc_floor", 0.65)),
        max_auc_drop=float(raw.get("max_auc_drop", 0.05)),
        outage_missing_increase=_share(raw.get("outage_missing_increase", 0.3),
                                       "monitoring.outage_missing_increase"),
        min_loans=_positive_int(raw.get("min_loans", 50), "monitoring.min_loans"),
        drift_report=bool(raw.get("drift_report", True)),
        drift_report_features=raw.get("drift_report_features", 15),
        segment_column=str(raw.get("segment_column", "occupation")),
        calibration_warn_p=float(raw.get("calibration_warn_p", 0.05)),
        calibration_error_p=float(raw.get("calibration_error_p", 0.01)),
        dashboard_features=_positive_int(raw.get("dashboard_features", 8),
                                         "monitoring.dashboard_features"),
    )
    if not 0 < values.calibration_error_p <= values.calibration_warn_p < 1:
        raise SettingsError("monitoring: need 0 < calibration_error_p <= calibration_warn_p < 1")
    if values.drift_report_features is not None and (
            not isinstance(values.drift_report_features, int) or values.drift_report_features < 1):
        raise SettingsError("monitoring.drift_report_features: a whole number >= 1, or null")
    if not 0 < values.psi_watch < values.psi_act:
        raise SettingsError("monitoring: need 0 < psi_watch < psi_act")
    if not 0 < values.psi_floor < 0.01:
        raise SettingsError("monitoring.psi_floor: expected a small positive number")
    return values


def _early_read(label: dict) -> LabelDefinition:
    early = label.get("early_read") or {}
    definition = LabelDefinition(
        dpd=_positive_int(early.get("dpd", 30), "label.early_read.dpd"),
        mob=_positive_int(early.get("mob", 3), "label.early_read.mob"))
    if definition.mob >= _positive_int(label.get("mob", 6), "label.mob"):
        raise SettingsError("label.early_read.mob: must be before the target's label.mob")
    return definition


def _analytics(raw: dict) -> AnalyticsSettings:
    return AnalyticsSettings(
        vintage_max_mob=_positive_int(raw.get("vintage_max_mob", 24), "analytics.vintage_max_mob"),
        max_roll_from_current=_share(raw.get("max_roll_from_current", 0.15),
                                     "analytics.max_roll_from_current"),
    )


def _serve(raw: dict) -> ServeSettings:
    port = raw.get("port", 8080)
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise SettingsError(f"serve.port: expected a port from 1 to 65535, got {port!r}")
    reload_seconds = raw.get("reload_seconds", 10)
    if not isinstance(reload_seconds, int | float) or reload_seconds <= 0:
        raise SettingsError(f"serve.reload_seconds: expected seconds > 0, got {reload_seconds!r}")
    values = ServeSettings(
        host=str(raw.get("host", "127.0.0.1")), port=port, reload_seconds=float(reload_seconds),
        psi_window=_positive_int(raw.get("psi_window", 500), "serve.psi_window"),
        psi_min_scores=_positive_int(raw.get("psi_min_scores", 500), "serve.psi_min_scores"),
        max_batch=_positive_int(raw.get("max_batch", 1000), "serve.max_batch"),
        sql_connections=_positive_int(raw.get("sql_connections", 2), "serve.sql_connections"))
    if values.psi_min_scores > values.psi_window:
        raise SettingsError("serve.psi_min_scores: at most serve.psi_window")
    return values


def load_settings(config_file: Path | None = None, environ: dict | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    path = Path(config_file or environ.get("VINTAGE_CONFIG") or CONFIG_DIR / "vintage.yaml")
    raw = read_yaml(path, f"configuration file {path} not found")
    paths, demo = raw.get("paths", {}), raw.get("demo", {})
    months, label = raw.get("months", {}), raw.get("label", {})
    duck = raw.get("duckdb", {})
    source = environ.get("VINTAGE_SOURCE") or paths.get("source")
    storage, execution = raw.get("storage") or {}, raw.get("execution") or {}
    executor = execution.get("executor", "in_process")
    if executor not in EXECUTORS:
        raise SettingsError(f"execution.executor: one of {', '.join(EXECUTORS)}, got "
                            f"{executor!r}")
    settings = Settings(
        config_file=path.resolve(),
        source=Path(source).resolve() if source else None,
        **_warehouse_paths(paths, storage, environ),
        retention_days=_positive_int(storage.get("retention_days", 30),
                                     "storage.retention_days"),
        executor=executor,
        max_concurrent=_positive_int(execution.get("max_concurrent", 2),
                                     "execution.max_concurrent"),
        executor_config=dict(execution.get("config") or {}),
        demo=DemoSettings(
            folder=Path(demo.get("folder", "data/demo")).resolve(),
            scale=float(demo.get("scale", 1)),
            seed=int(demo.get("seed", 42)),
            shift_month=_optional_month(demo.get("shift_month", "2024-07"), "demo.shift_month"),
        ),
        first_month=_optional_month(months.get("first"), "months.first"),
        last_month=_optional_month(months.get("last"), "months.last"),
        label=LabelDefinition(
            dpd=_positive_int(label.get("dpd", 30), "label.dpd"),
            mob=_positive_int(label.get("mob", 6), "label.mob"),
        ),
        early_read=_early_read(label),
        clickstream_lookback_months=_positive_int(
            raw.get("features", {}).get("clickstream_lookback_months", 3),
            "features.clickstream_lookback_months",
        ),
        checks=_checks(raw.get("checks", {})),
        coverage=_coverage(raw.get("coverage") or {}),
        monitoring=_monitoring(raw.get("monitoring", {})),
        analytics=_analytics(raw.get("analytics") or {}),
        serve=_serve(raw.get("serve") or {}),
        duckdb_threads=duck.get("threads"),
        duckdb_memory_limit=duck.get("memory_limit"),
        batch_rows=_positive_int(duck.get("max_rows_per_batch", 3_000_000),
                                 "duckdb.max_rows_per_batch"),
    )
    if settings.first_month and settings.last_month and settings.first_month > settings.last_month:
        raise SettingsError("months.first is after months.last")
    return settings


@cache
def settings() -> Settings:
    """The settings of this process, read on first use (never at import): the code location
    is built from them by `ml_assets.definitions.build_definitions`."""
    return load_settings()
