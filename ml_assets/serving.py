"""The scoring service (`vintage serve`): the approved champion over HTTP, scored exactly as
gold.predictions scores it, with Prometheus metrics.

- The champion is ml.model_aliases' model_version of its latest month: the last approved
  champion, never a proposal awaiting sign-off (as `predictions_compute` reads it); its
  artifacts come from the model store (native formats, no pickle), its cut-off from its
  out-of-time reference (`month_cutoff`, predictions.cutoff_mode).
- An application is a loan of gold.feature_store (`{"loan_id": ...}`), or its raw fields in
  the course layout (the lms row of its start, attributes, financials, clickstream snapshots),
  which go through the batch pipeline's own SQL: sql/silver/*.sql (`silver.cleaning_query`)
  and sql/gold/feature_store.sql, prepared once in each of a pool of in-memory DuckDB
  connections (`ApplicationSQL`, `SQLPool`). Grade, decision and reason codes come from
  `score_applications`.
- Every `serve.reload_seconds` the service compares the Delta versions of the tables it read
  with the lake's; a changed one is loaded beside the old state, which is then swapped in (one
  reference assignment): a request in flight finishes with the state it started with.
"""

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal, get_args

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
from fastapi import Body, FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, create_model

from ml_assets.assets.models import (
    MISSING_SOURCES_SQL,
    coverage_verdict,
    current_champion,
    month_cutoff,
    reference_of,
    score_applications,
)
from ml_assets.assets.silver import (
    KEPT_COLUMNS,
    cleaning_query,
    kept_rows,
    rule_hits_expression,
)
from ml_assets.contracts import SourceContract, contracts
from ml_assets.modeling import Model
from ml_assets.partitions import window_pairs
from ml_assets.spec import Build
from ml_assets.tables import (
    FEATURE_STORE,
    MODEL_ALIASES,
    RAW_ATTRIBUTES,
    RAW_CLICKSTREAM,
    RAW_FINANCIALS,
    RAW_LMS,
    SCORE_REFERENCE,
    SILVER_ATTRIBUTES,
    SILVER_CLICKSTREAM,
    SILVER_FINANCIALS,
    SILVER_LOAN_DAILY,
    SOURCE_COVERAGE,
)
from ml_assets.transform import run_transform, transform_connection
from resources.lake import Lake, sql_text
from resources.model_store import ModelStore

log = logging.getLogger("vintage.serve")

# each block of a raw application: the raw table (source) it stands for and the silver table
# its rows are cleaned into
RAW_BLOCKS = {"loan": (RAW_LMS, SILVER_LOAN_DAILY),
              "attributes": (RAW_ATTRIBUTES, SILVER_ATTRIBUTES),
              "financials": (RAW_FINANCIALS, SILVER_FINANCIALS),
              "clickstream": (RAW_CLICKSTREAM, SILVER_CLICKSTREAM)}
# cleaning rules (ml_assets.assets.silver `rule_counts`) that turn a value given into NULL:
# out of range, not whole, a category outside the allowed ones
OUT_OF_RANGE_RULES = ("out_of_range", "not_whole", "not_allowed")
INPUT_MODES = ("loan_id", "raw")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServiceError(RuntimeError):
    """The service cannot score: no approved champion, or its artifacts or tables missing."""


# -- requests -----------------------------------------------------------------------------------

RawValue = str | int | float | None


def _source_model(name: str, contract: SourceContract, required: Iterable[str] = ()
                  ) -> type[BaseModel]:
    """A pydantic model of one raw row of `contract`'s source: its columns, as text or
    numbers, `required` ones given; any other field is refused."""
    required = set(required)
    fields: dict[str, Any] = {
        column.name: (str, ...) if column.name in required else (RawValue, None)
        for column in contract.columns}
    return create_model(name, __config__=ConfigDict(extra="allow"), **fields)


def declared(row: BaseModel) -> dict:
    """The fields of `row` its model declares (not the unknown ones it was sent)."""
    return {name: getattr(row, name) for name in type(row).model_fields}


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The request model inside a field's annotation (X, X | None, list[X]), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, map(_nested_model, get_args(annotation))), None)


def unknown_fields(model: type[BaseModel], body: Any, loc: Sequence) -> list[dict]:
    """422 errors (as pydantic writes them: type extra_forbidden) for every field of `body`
    (the JSON of one application, at `loc` in the request) and of its blocks that `model`
    does not declare. The request models accept unknown fields so that one 422 names them
    together with every other error (a missing field, a value the cleaning refuses)."""
    if not isinstance(body, dict):
        return []
    found = [{"loc": [*loc, name], "msg": "Extra inputs are not permitted",
              "type": "extra_forbidden"} for name in body if name not in model.model_fields]
    for name, declared_field in model.model_fields.items():
        inner, value = _nested_model(declared_field.annotation), body.get(name)
        if inner is not None:
            for position, item in (enumerate(value) if isinstance(value, list)
                                   else [(None, value)]):
                found += unknown_fields(inner, item, [*loc, name, *(
                    [] if position is None else [position])])
    return found


APPLICATION_TAGS = ("loan_id", "application")


def _kind(body: Any) -> str:
    return "loan_id" if isinstance(body, dict) and "loan_id" in body else "application"


def without_tag(loc: Sequence) -> list:
    """The `loc` of a 422 error as the body reads, without the tag pydantic adds for the kind
    of application it chose (`_kind`): ["body", "application", "financials", "Age"] becomes
    ["body", "financials", "Age"], ["body", "applications", 1, "loan_id", "x"] becomes
    ["body", "applications", 1, "x"]."""
    loc = list(loc)
    at = 3 if loc[:2] == ["body", "applications"] and len(loc) > 2 and isinstance(
        loc[2], int) else 1 if loc[:1] == ["body"] else None
    if at is not None and len(loc) > at and loc[at] in APPLICATION_TAGS:
        del loc[at]
    return loc


@dataclass(frozen=True)
class RequestModels:
    """The request bodies, built from the data contracts (config/contracts.yaml): a loan of
    the feature store, or a raw application; one of either, or a batch of them."""

    application: Any
    batch: type[BaseModel]
    by_loan: type[BaseModel]
    raw: type[BaseModel]

    @classmethod
    def of(cls, source_contracts: Mapping[str, SourceContract], max_batch: int
           ) -> "RequestModels":
        loan = _source_model("LoanRow", source_contracts[RAW_LMS.name],
                             ("loan_id", "Customer_ID", "loan_start_date"))
        attributes = _source_model("AttributesRow", source_contracts[RAW_ATTRIBUTES.name])
        financials = _source_model("FinancialsRow", source_contracts[RAW_FINANCIALS.name])
        clickstream = _source_model("ClickstreamRow", source_contracts[RAW_CLICKSTREAM.name])
        by_loan = create_model("LoanRequest", __config__=ConfigDict(extra="allow"),
                               loan_id=(str, Field(min_length=1)))
        raw = create_model(
            "ApplicationRequest", __config__=ConfigDict(extra="allow"),
            loan=(loan, ...), attributes=(attributes | None, None),
            financials=(financials | None, None), clickstream=(list[clickstream], []))
        application = Annotated[Annotated[by_loan, Tag("loan_id")]
                                | Annotated[raw, Tag("application")], Discriminator(_kind)]
        batch = create_model("BatchRequest", __config__=ConfigDict(extra="forbid"),
                             applications=(list[application],
                                           Field(min_length=1, max_length=max_batch)))
        return cls(application, batch, by_loan, raw)


class UnknownLoan(LookupError):
    """A loan_id that gold.feature_store does not hold (404)."""


class InvalidApplication(ValueError):
    """Raw fields the batch pipeline's cleaning rejects: errors as FastAPI writes a 422's
    `detail` (loc, msg, type)."""

    def __init__(self, errors: list[dict]):
        super().__init__("; ".join(e["msg"] for e in errors))
        self.errors = errors


# -- what the service scores with ------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """Everything a request reads, loaded together and swapped whole: the champion, its
    reference and cut-off, the feature store and the source coverage, and the Delta version of
    each table read (to see when one changes)."""

    versions: dict[str, int | None]
    model: Model
    model_name: str
    model_version: str
    trained_month: date
    champion_month: date
    cutoff: float
    reference_scores: np.ndarray
    features: pd.DataFrame  # gold.feature_store with missing_sources, indexed by loan_id
    coverage: dict[date, list[tuple]]  # application month -> (source, status, message)
    loaded_at: datetime
    verdicts: dict = field(default_factory=dict, compare=False)  # month -> coverage_verdict

    def verdict(self, month: date) -> tuple[str, list, str]:
        """The champion's coverage verdict (`coverage_verdict`) for an application month."""
        if month not in self.verdicts:
            self.verdicts[month] = coverage_verdict(self.coverage.get(month, []),
                                                    list(self.model.features.names))
        return self.verdicts[month]


WATCHED = (MODEL_ALIASES, SCORE_REFERENCE, FEATURE_STORE, SOURCE_COVERAGE)


def table_versions(lake: Lake) -> dict[str, int | None]:
    return {table.qualified_name: lake.version(table) for table in WATCHED}


def load_state(build: Build, lake: Lake, store: ModelStore,
               versions: dict[str, int | None]) -> State:
    """The state at the Delta `versions` (table_versions). Raises ServiceError when there is
    no approved champion yet, or its reference is missing where the cut-off mode needs it."""
    if versions[MODEL_ALIASES.qualified_name] is None:
        raise ServiceError("no champion yet: ml.model_aliases is empty (run the pipeline "
                           "through the champion gate first)")
    champion = current_champion(lake, versions[MODEL_ALIASES.qualified_name])
    if champion is None or champion.model_version is None:
        raise ServiceError("no approved champion in the latest month of ml.model_aliases")
    month, name, version, trained = (champion.month, champion.model_name,
                                     champion.model_version, champion.trained_month)
    with duckdb.connect() as con:
        lake.read(con, "ml_score_reference", SCORE_REFERENCE, [trained],
                  versions[SCORE_REFERENCE.qualified_name])
        reference = reference_of(con, version)
        chosen = month_cutoff(build.models, reference, version)
        lake.read(con, "gold_feature_store", FEATURE_STORE, None,
                  versions[FEATURE_STORE.qualified_name])
        features = con.execute(f"SELECT *, {MISSING_SOURCES_SQL} FROM gold_feature_store"
                               ).df(date_as_object=True)
        coverage: dict[date, list[tuple]] = {}
        if versions[SOURCE_COVERAGE.qualified_name] is not None:
            lake.read(con, "source_coverage", SOURCE_COVERAGE, None,
                      versions[SOURCE_COVERAGE.qualified_name])
            for covered_month, *row in con.execute(
                    "SELECT application_month, source, status, message FROM source_coverage "
                    "ORDER BY ALL").fetchall():
                coverage.setdefault(covered_month, []).append(tuple(row))
    return State(
        versions=versions, model=store.load(name, version), model_name=name,
        model_version=version, trained_month=trained, champion_month=month,
        cutoff=chosen.cutoff if chosen else build.models.decision_cutoff,
        reference_scores=np.asarray(reference.scores if reference else [], dtype=float),
        features=features.set_index("loan_id", drop=False), coverage=coverage,
        loaded_at=datetime.now(UTC))


# -- metrics ----------------------------------------------------------------------------------


class Metrics:
    """The service's Prometheus metrics, in their own registry (README, Serving, lists them)."""

    def __init__(self, rating_scale, psi_window: int):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("vintage_http_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("vintage_http_request_duration_seconds",
                                 "Time to answer a request, by endpoint and status",
                                 ["endpoint", "method", "status"], buckets=LATENCY_BUCKETS,
                                 registry=r)
        bounds = sorted({float(bound) for _, bound in rating_scale} | {1.0})
        self.scores = Histogram("vintage_score", "PD of each scored application (buckets: the "
                                "rating master scale's grade bounds)", ["input"],
                                buckets=bounds, registry=r)
        self.applications = Counter("vintage_scored_applications",
                                    "Applications scored, by input mode", ["input"], registry=r)
        self.missing = Counter("vintage_applications_with_missing_features",
                               "Applications scored with at least one model feature missing",
                               ["input"], registry=r)
        self.out_of_range = Counter(
            "vintage_applications_with_out_of_range_fields",
            "Raw applications with a field the cleaning rules set aside as out of range, not "
            "whole or not an allowed category", ["input"], registry=r)
        self.missing_share = Gauge("vintage_missing_feature_share",
                                   f"Share of the last {psi_window} scored applications with "
                                   "a model feature missing", registry=r)
        self.out_of_range_share = Gauge("vintage_out_of_range_field_share",
                                        f"Share of the last {psi_window} scored applications "
                                        "with an out-of-range field", registry=r)
        self.psi = Gauge("vintage_score_psi", f"PSI of the last {psi_window} scores against the "
                         "champion's out-of-time reference (NaN: too few scores yet)",
                         registry=r)
        self.window = Gauge("vintage_score_window_size", "Scores in the live PSI's window",
                            registry=r)
        self.model = Info("vintage_model", "The champion the service scores with", registry=r)
        self.loaded = Gauge("vintage_model_loaded_timestamp_seconds",
                            "When the champion was loaded (Unix time)", registry=r)
        self.cutoff = Gauge("vintage_decision_cutoff", "The champion's PD cut-off: decline at "
                            "or above", registry=r)
        self.reloads = Counter("vintage_reloads", "State reloads, by outcome", ["outcome"],
                               registry=r)
        # every labelled series from the start, so that dashboards and alerts see zeros
        for mode in INPUT_MODES:
            for metric in (self.scores, self.applications, self.missing, self.out_of_range):
                metric.labels(mode)
        for outcome in ("loaded", "failed"):
            self.reloads.labels(outcome)


@dataclass
class Window:
    """The last `size` scored applications: scores and data-quality flags, for the live PSI
    and shares; emptied when the champion changes."""

    size: int
    scores: deque = field(init=False)
    missing: deque = field(init=False)
    out_of_range: deque = field(init=False)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self.clear()

    def clear(self) -> None:
        self.scores = deque(maxlen=self.size)
        self.missing = deque(maxlen=self.size)
        self.out_of_range = deque(maxlen=self.size)

    def add(self, score: float, missing: bool, out_of_range: bool) -> None:
        with self.lock:
            self.scores.append(score)
            self.missing.append(missing)
            self.out_of_range.append(out_of_range)

    def snapshot(self) -> tuple[np.ndarray, float | None, float | None]:
        with self.lock:
            scores = np.array(self.scores, dtype=float)
            shares = [float(np.mean(d)) if d else None for d in (self.missing, self.out_of_range)]
        return scores, shares[0], shares[1]


def score_psi(con: duckdb.DuckDBPyConnection, reference: np.ndarray, scores: np.ndarray,
              build: Build, model_version: str) -> float:
    """PSI of `scores` against the `reference` scores, by sql/monitoring/stability.sql (bins:
    the reference's deciles; proportions floored at monitoring.psi_floor), as
    monitoring.stability computes the monthly score PSI."""
    thresholds = build.config.monitoring
    rows = run_transform(con, "monitoring/stability", {
        "reference_rows": pa.table({"score": pa.array(reference, pa.float64())}),
        "actual_rows": pa.table({"score": pa.array(scores, pa.float64())})}, {
        "numeric": ["score"], "categorical": [], "floor": thresholds.psi_floor,
        "watch": thresholds.psi_watch, "act": thresholds.psi_act,
        "outage": thresholds.outage_missing_increase, "outage_variables": [],
        "month": date.today(), "model_version": model_version}).fetchall()
    return float(rows[0][4])


# -- the batch SQL, prepared once -----------------------------------------------------------


class ApplicationSQL:
    """One in-memory DuckDB connection that turns raw application rows into feature-store rows
    with the batch pipeline's own SQL, planned once and executed for every request: for each
    block of an application (`RAW_BLOCKS`) a staging table of its raw table's columns
    (`request_<block>`) and the prepared cleaning of it (silver `cleaning_query`) into
    `cleaned_<block>`, whose kept rows are the view `silver_<table>`; then
    sql/gold/feature_store.sql over those views and the staging table `clickstream_window`.

    Planning is what one application costs (the cleaning macros expand to thousands of
    expressions), hence PREPARE once and EXECUTE per request. DuckDB 2.0 keeps the plan of a
    prepared statement only when the optimizer is off (with it on, every EXECUTE plans again),
    so the connection runs without it; its rewrites change no result (tests/test_serve.py
    compares the PDs with gold.predictions'). A request's rows are appended to the staging
    tables (DuckDB appenders: no statement to plan) in one transaction that is rolled back: the
    staging tables are empty again after it, and the catalog never changes (a change would make
    DuckDB plan every statement again). Not safe for concurrent use: one request at a time
    (`SQLPool`)."""

    def __init__(self, build: Build):
        self.build = build
        self.con = con = transform_connection()
        con.execute("PRAGMA disable_optimizer").fetchall()
        con.execute("SET threads = 1").fetchall()  # a few rows per table: no work to share
        statements = {}  # every table and view first: DDL after a PREPARE plans it every time
        problems = []
        for block, (raw_table, silver_table) in RAW_BLOCKS.items():
            staged, cleaned = f"request_{block}", f"cleaned_{block}"
            columns = ", ".join(f'"{name}" {kind}'
                                for name, kind in raw_columns(raw_table.name).items())
            con.execute(f"CREATE TEMP TABLE {staged} ({columns})")
            query = cleaning_query(silver_table, f"(SELECT *, date_trunc('month', "
                                   f"parse_source_date(snapshot_date))::DATE AS _snapshot_month "
                                   f"FROM {staged})")
            # kept: the silver columns, the reject reason and the out-of-range hits (storing
            # the rule structs costs more than the cleaning)
            con.execute(f"CREATE TEMP VIEW {cleaned}_rules AS {query}")
            hits = rule_hits_expression(con, OUT_OF_RANGE_RULES, f"{cleaned}_rules")
            con.execute(f"DROP VIEW {cleaned}_rules")
            query = (f"SELECT {KEPT_COLUMNS}, _row_number, _reject_reason, {hits} AS _hits "
                     f"FROM ({query})")
            con.execute(f"CREATE TEMP TABLE {cleaned} AS {query} LIMIT 0")
            con.execute(f"CREATE TEMP VIEW silver_{silver_table.name} AS {kept_rows(cleaned)}")
            statements[f"clean_{block}"] = f"INSERT INTO {cleaned} {query}"
            problems.append(f"SELECT '{block}' AS block, _row_number, _reject_reason, _hits "
                            f"FROM {cleaned} WHERE _reject_reason IS NOT NULL OR len(_hits) > 0")
        con.execute("CREATE TEMP TABLE clickstream_window (month DATE, upstream_month DATE)")
        statements |= {
            "problems": " UNION ALL ".join(problems) + " ORDER BY ALL",
            "application_months": "SELECT DISTINCT date_trunc('month', loan_start_date)::DATE "
                                  "FROM silver_loan_daily",
            "features": f"SELECT *, {MISSING_SOURCES_SQL} FROM ({sql_text('gold/feature_store')})"}
        for name, statement in statements.items():
            con.execute(f"PREPARE {name} AS {statement}")
        # appenders: a request's rows reach the staging tables without a statement to plan
        self.appenders = {block: con.appender(f"request_{block}") for block in RAW_BLOCKS}

    def features(self, rows: Mapping[str, list[dict]]
                 ) -> tuple[pd.DataFrame, dict[str, list[tuple]], dict[str, list[tuple]]]:
        """For the raw rows of each block (`RAW_BLOCKS`; a row: its raw table's columns, text
        or numbers, any missing ones NULL): the feature-store rows of the loans they open
        (with missing_sources), and per block the (_row_number, reason) of the rows the
        cleaning rejects and the (_row_number, [`rule.column`, ...]) of the kept rows a rule
        among OUT_OF_RANGE_RULES changed; _row_number counts a block's rows from 1."""
        con = self.con
        rejected: dict[str, list[tuple]] = {block: [] for block in RAW_BLOCKS}
        hits: dict[str, list[tuple]] = {block: [] for block in RAW_BLOCKS}
        con.execute("BEGIN")
        try:
            for block, (raw_table, _) in RAW_BLOCKS.items():
                values = raw_values(rows.get(block, []), raw_table.name)
                if values:
                    self.appenders[block].append_rows(values)
                    self.appenders[block].flush()
                con.execute(f"EXECUTE clean_{block}").fetchall()
            for block, number, reason, rules in con.execute("EXECUTE problems").fetchall():
                if reason is not None:
                    rejected[block].append((number, reason))
                elif rules:
                    hits[block].append((number, rules))
            months = [row[0] for row in con.execute("EXECUTE application_months").fetchall()]
            window = window_pairs(self.build.rules.clickstream, months, self.build.partitions)
            if window.num_rows:
                con.execute("INSERT INTO clickstream_window SELECT unnest($pairs, "
                            "recursive := true)", {"pairs": window.to_pylist()})
            # through Arrow: DuckDB's own DataFrame conversion costs more than the query
            frame = con.sql("EXECUTE features").to_arrow_table().to_pandas()
        finally:
            for appender in self.appenders.values():
                appender.clear()  # rows a failed append left behind are not the next request's
            con.execute("ROLLBACK")
        return frame, rejected, hits


class SQLPool:
    """Up to `size` ApplicationSQL connections, each used by one request at a time: a request
    takes an idle one, opens a new one while fewer than `size` exist, or waits for one."""

    def __init__(self, build: Build, size: int):
        self.build, self.size = build, size
        self._idle: queue.LifoQueue[ApplicationSQL] = queue.LifoQueue()
        self.opened = 0  # connections opened so far
        self._lock = threading.Lock()

    def _open(self) -> ApplicationSQL | None:
        """A new connection (its SQL prepared: 0.5-1 s), or None when `size` are open."""
        with self._lock:
            if self.opened >= self.size:
                return None
            self.opened += 1
        try:
            return ApplicationSQL(self.build)
        except Exception:
            with self._lock:
                self.opened -= 1
            raise

    @property
    def idle(self) -> int:
        """Connections open and prepared, waiting for a request."""
        return self._idle.qsize()

    def warm(self) -> None:
        """Open every connection now, so that no raw request waits for its SQL's preparing
        (the service calls it in a thread as it starts)."""
        try:
            while (sql := self._open()) is not None:
                self._idle.put(sql)
        except Exception:  # a raw request opens it again, and answers why it fails
            log.exception("preparing the raw-field SQL failed")

    @contextmanager
    def connection(self) -> Iterator[ApplicationSQL]:
        try:
            sql = self._idle.get_nowait()
        except queue.Empty:
            sql = self._open() or self._idle.get()
        try:
            yield sql
        finally:
            self._idle.put(sql)


# -- the service ------------------------------------------------------------------------------


class ScoringService:
    """Scores applications with the current state; `refresh` swaps in a new one."""

    def __init__(self, build: Build, lake: Lake, store: ModelStore):
        self.build, self.lake, self.store = build, lake, store
        self.settings = build.config.serve
        self.metrics = Metrics(build.models.rating_scale, self.settings.psi_window)
        self.window = Window(self.settings.psi_window)
        self._local = threading.local()
        self.sql = SQLPool(build, self.settings.sql_connections)
        self._reload_lock = threading.Lock()
        self.state: State = self._install(load_state(build, lake, store, table_versions(lake)))

    def _install(self, state: State) -> State:
        self.metrics.model.info({
            "model_version": state.model_version, "model_name": state.model_name,
            "trained_month": state.trained_month.isoformat(),
            "champion_month": state.champion_month.isoformat()})
        self.metrics.loaded.set(state.loaded_at.timestamp())
        self.metrics.cutoff.set(state.cutoff)
        return state

    def refresh(self) -> bool:
        """Load the state again if a table it read has a new Delta version; True when the
        state changed. A failure keeps the current state (and is counted and logged)."""
        with self._reload_lock:
            try:
                versions = table_versions(self.lake)
                if versions == self.state.versions:
                    return False
                state = load_state(self.build, self.lake, self.store, versions)
            except Exception:
                self.metrics.reloads.labels("failed").inc()
                log.exception("reload failed; still scoring with %s", self.state.model_version)
                return False
            if state.model_version != self.state.model_version:
                self.window.clear()
                log.info("champion %s replaces %s", state.model_version,
                         self.state.model_version)
            self.state = self._install(state)  # one assignment: requests see old or new
            self.metrics.reloads.labels("loaded").inc()
            return True

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """This thread's DuckDB connection with the transforms' macros (the live PSI)."""
        if not hasattr(self._local, "con"):
            self._local.con = transform_connection()
        return self._local.con

    # -- features ------------------------------------------------------------------------

    def loan_features(self, state: State, loan_id: str) -> pd.DataFrame:
        if loan_id not in state.features.index:
            raise UnknownLoan(f"loan_id {loan_id!r} is not in gold.feature_store")
        return state.features.loc[[loan_id]]

    def raw_features(self, applications: Sequence[BaseModel], wheres: Sequence[tuple]
                     ) -> list[tuple[pd.DataFrame, list[str]]]:
        """The feature-store row of each raw application (sql/silver/*.sql, then
        sql/gold/feature_store.sql, prepared once per pooled connection: `ApplicationSQL`) and
        the fields a cleaning rule set aside as out of range (`OUT_OF_RANGE_RULES`). The
        applications must have distinct customers (the feature SQL joins by customer);
        `wheres` place each in the request body. Raises InvalidApplication for rows the
        cleaning rejects, or a loan row that does not open its loan (snapshot_date outside
        its start month)."""
        errors: list[dict] = []
        loans = [{**declared(a.loan), "snapshot_date": a.loan.snapshot_date
                  or a.loan.loan_start_date} for a in applications]
        blocks = {"loan": [[loan] for loan in loans],
                  "attributes": [[declared(a.attributes)] if a.attributes else []
                                 for a in applications],
                  "financials": [[declared(a.financials)] if a.financials else []
                                 for a in applications],
                  "clickstream": [[declared(row) for row in a.clickstream]
                                  for a in applications]}
        rows: dict[str, list[dict]] = {}
        owners: dict[str, list[tuple[int, int]]] = {}  # [_row_number - 1]: (application, position)
        for block, per_application in blocks.items():
            rows[block], owners[block] = [], []
            for i, block_rows in enumerate(per_application):
                for position, row in enumerate(block_rows):
                    row["Customer_ID"] = row.get("Customer_ID") or loans[i]["Customer_ID"]
                    rows[block].append(row)
                    owners[block].append((i, position))
        with self.sql.connection() as sql:
            frame, rejected, hits = sql.features(rows)
        for block, found in rejected.items():
            for number, reason in found:
                i, position = owners[block][number - 1]
                for problem in reason.split("; "):
                    loc = (*wheres[i], block, *((position,) if block == "clickstream" else ()),
                           problem.split(" ")[0])
                    errors.append({"loc": ["body", *loc], "msg": problem,
                                   "type": "value_error"})
        if errors:
            raise InvalidApplication(errors)
        out_of_range: list[list[str]] = [[] for _ in applications]
        for block, found in hits.items():
            for number, rules in found:
                out_of_range[owners[block][number - 1][0]] += [
                    f"{block}.{rule.split('.', 1)[1]}" for rule in rules]
        frame = frame.set_index("loan_id", drop=False)
        opened = [loan["loan_id"].strip() for loan in loans]
        errors = [{"loc": ["body", *wheres[i], "loan", "snapshot_date"], "type": "value_error",
                   "msg": "the loan row must be the loan's first snapshot: snapshot_date in the "
                          "month of loan_start_date"}
                  for i, loan_id in enumerate(opened) if loan_id not in frame.index]
        if errors:
            raise InvalidApplication(errors)
        return [(frame.loc[[loan_id]], sorted(set(out_of_range[i])))
                for i, loan_id in enumerate(opened)]

    # -- scoring -------------------------------------------------------------------------

    def score(self, request: BaseModel) -> dict:
        """The answer to one application: PD, grade, decision, reasons, model version. Raises
        UnknownLoan, InvalidApplication."""
        return self.score_many([request], [()])[0]

    def score_many(self, requests: Sequence[BaseModel], wheres: Sequence[tuple]) -> list[dict]:
        """The answers to applications in order; raw ones go through the SQL together (in
        groups of distinct customers and loans). One invalid application raises
        InvalidApplication for them all, naming each bad one by its `wheres`."""
        state = self.state  # these requests' state, whatever a reload does meanwhile
        found: dict[int, tuple[pd.DataFrame, list[str]]] = {}
        errors = [error for request, where in zip(requests, wheres, strict=True)
                  for error in unknown_fields(type(request), request.model_dump(),
                                              ["body", *where])]
        raw = [i for i, r in enumerate(requests) if not hasattr(r, "loan_id")]
        for i in set(range(len(requests))) - set(raw):
            try:
                found[i] = self.loan_features(state, requests[i].loan_id), []
            except UnknownLoan as error:
                if len(requests) == 1 and not errors:
                    raise
                errors.append({"loc": ["body", *wheres[i], "loan_id"], "msg": str(error),
                               "type": "not_found"})
        for group in distinct_groups(raw, requests):
            try:
                answers = self.raw_features([requests[i] for i in group],
                                            [wheres[i] for i in group])
            except InvalidApplication as error:
                errors += error.errors
                continue
            found.update(zip(group, answers, strict=True))
        if errors:
            raise InvalidApplication(errors)
        return [self.answer(state, *found[i], "raw" if i in raw else "loan_id")
                for i in range(len(requests))]

    def answer(self, state: State, frame: pd.DataFrame, out_of_range: list[str],
               mode: str) -> dict:
        """One application's answer from its feature-store row `frame`, and the metrics."""
        month = frame["application_month"].iloc[0]
        status, failing, issue = state.verdict(month)
        scored = score_applications(state.model, self.build.models, frame, state.cutoff,
                                    failing).iloc[0]
        row = frame.iloc[0]
        missing = [name for name in state.model.features.names if pd.isna(row[name])]
        pd_ = float(scored["score"])
        self.metrics.scores.labels(mode).observe(pd_)
        self.metrics.applications.labels(mode).inc()
        if missing:
            self.metrics.missing.labels(mode).inc()
        if out_of_range:
            self.metrics.out_of_range.labels(mode).inc()
        self.window.add(pd_, bool(missing), bool(out_of_range))
        reasons = [scored[f"reason_{k}"] for k in (1, 2, 3) if scored[f"reason_{k}"]]
        return {
            "loan_id": row["loan_id"], "customer_id": row["customer_id"],
            "application_month": month.isoformat(), "input": mode,
            "pd": pd_, "grade": scored["grade"], "decision": scored["decision"],
            "decision_cutoff": state.cutoff,
            "reasons": [{"feature": r, "description": self.build.models.describe(r)}
                        for r in reasons],
            "model_version": state.model_version, "model_name": state.model_name,
            "missing_sources": row["missing_sources"], "coverage_status": status,
            "coverage_issue": issue or None,
            "data_quality": {"missing_features": missing, "out_of_range_fields": out_of_range},
        }

    def health(self) -> dict:
        state = self.state
        return {"status": "ok", "model_version": state.model_version,
                "model_name": state.model_name,
                "trained_month": state.trained_month.isoformat(),
                "champion_month": state.champion_month.isoformat(),
                "decision_cutoff": state.cutoff,
                "loaded_at": state.loaded_at.isoformat(timespec="seconds"),
                "feature_store_loans": len(state.features),
                "table_versions": state.versions}

    def update_window_metrics(self) -> None:
        """The live PSI and data-quality shares of the window, as a scrape sees them."""
        state = self.state
        scores, missing_share, out_of_range_share = self.window.snapshot()
        self.metrics.window.set(len(scores))
        self.metrics.missing_share.set(missing_share if missing_share is not None else 0.0)
        self.metrics.out_of_range_share.set(
            out_of_range_share if out_of_range_share is not None else 0.0)
        measurable = len(scores) >= self.settings.psi_min_scores and len(state.reference_scores)
        self.metrics.psi.set(score_psi(self.con, state.reference_scores, scores, self.build,
                                       state.model_version) if measurable else float("nan"))


def distinct_groups(indexes: Sequence[int], requests: Sequence[BaseModel]
                    ) -> list[list[int]]:
    """`indexes` of raw applications in groups, in order, none holding two applications of the
    same customer or loan (the feature SQL would join one's rows to the other's)."""
    groups: list[list[int]] = []
    seen: list[set] = []
    for i in indexes:
        keys = {("customer", requests[i].loan.Customer_ID.strip()),
                ("loan", requests[i].loan.loan_id.strip())}
        for group, taken in zip(groups, seen, strict=True):
            if not keys & taken:
                group.append(i)
                taken |= keys
                break
        else:
            groups.append([i])
            seen.append(set(keys))
    return groups


RAW_LINEAGE = {"_row_number": "BIGINT", "_source_file": "VARCHAR"}


def raw_columns(source: str) -> dict[str, str]:
    """The columns of `source`'s raw table as a request's rows fill it, with their DuckDB
    types: every column of its contract as text, in order, and the lineage columns."""
    return {**{column.name: "VARCHAR" for column in contracts()[source].columns}, **RAW_LINEAGE}


def raw_values(rows: list[dict], source: str) -> list[tuple]:
    """Request rows as the raw table of `source` holds them, in the order of `raw_columns`:
    values as the text a CSV cell holds, _row_number counting from 1, _source_file
    "request"."""
    columns = [name for name in raw_columns(source) if name not in RAW_LINEAGE]
    return [(*(_text(row.get(name)) for name in columns), number, "request")
            for number, row in enumerate(rows, 1)]


def _text(value: RawValue) -> str | None:
    """A JSON value as the text a CSV cell holds (a float in its shortest exact form)."""
    return None if value is None else value if isinstance(value, str) else repr(value)


# -- the app ----------------------------------------------------------------------------------


def create_app(service: ScoringService, reload: bool = True) -> FastAPI:
    """The FastAPI app of `service`; with `reload`, a thread calls `service.refresh` every
    serve.reload_seconds while it runs."""
    models = RequestModels.of(contracts(), service.settings.max_batch)
    stop = threading.Event()

    def reloading():
        while not stop.wait(service.settings.reload_seconds):
            service.refresh()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        threading.Thread(target=service.sql.warm, name="vintage-sql", daemon=True).start()
        thread = threading.Thread(target=reloading, name="vintage-reload", daemon=True)
        if reload:
            thread.start()
        yield
        stop.set()

    app = FastAPI(title="Vintage scoring service", lifespan=lifespan,
                  description="The approved champion of the Vintage platform: PD, grade, "
                              "decision and reason codes for one application or a batch.")

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            labels = (endpoint, request.method, str(status))
            service.metrics.requests.labels(*labels).inc()
            service.metrics.latency.labels(*labels).observe(time.perf_counter() - started)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, error: RequestValidationError):
        """pydantic's errors without the union's tag in `loc`, and the unknown fields."""
        found = [{**e, "loc": without_tag(e["loc"])} for e in error.errors()]
        body = error.body
        bodies = ([(item, ["body", "applications", i])
                   for i, item in enumerate(body.get("applications") or [])]
                  if request.url.path.endswith("/batch") and isinstance(body, dict)
                  else [(body, ["body"])])
        for item, loc in bodies:
            kind = models.by_loan if _kind(item) == "loan_id" else models.raw
            found += [e for e in unknown_fields(kind, item, loc)
                      if e["loc"] not in [f["loc"] for f in found]]
        return JSONResponse({"detail": jsonable_encoder(found)}, status_code=422)

    @app.exception_handler(InvalidApplication)
    async def invalid(_request: Request, error: InvalidApplication):
        return JSONResponse({"detail": error.errors}, status_code=422)

    @app.exception_handler(UnknownLoan)
    async def unknown(_request: Request, error: UnknownLoan):
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.post("/v1/score")
    def score(application: Annotated[models.application, Body()]) -> dict:
        """Score one application: `{"loan_id": ...}` or its raw fields."""
        return service.score(application)

    @app.post("/v1/score/batch")
    def score_batch(batch: models.batch) -> dict:
        """Score up to serve.max_batch applications; one invalid application refuses all."""
        wheres = [("applications", i) for i in range(len(batch.applications))]
        return {"results": service.score_many(batch.applications, wheres)}

    @app.get("/health")
    def health() -> dict:
        return service.health()

    @app.get("/metrics")
    def metrics() -> Response:
        service.update_window_metrics()
        return Response(generate_latest(service.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    return app


def serve(build: Build, lake: Lake, store: ModelStore, host: str, port: int,
          log_level: Literal["info", "warning"] = "info") -> None:
    """Run the service with uvicorn on host:port until stopped (SIGINT, SIGTERM)."""
    import uvicorn

    app = create_app(ScoringService(build, lake, store))
    uvicorn.run(app, host=host, port=port, log_level=log_level)
