"""ML: the training set, the candidate models, the champion gate and the monthly predictions.

Time rules (DESIGN section 3), all through partition mappings:
- training month T learns from labels observed in T-window..T-1 (never T or later), with the
  features of their application months;
- the champion of month M was trained in M or before, so predictions for M never use a label
  the model could not have seen; the gate at T compares candidates with the champion of T-1
  on T's out-of-time month.
"""

import json
from datetime import UTC, date, datetime

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from ml_assets import metrics
from ml_assets.assets.lake import (
    RESULT,
    Upstream,
    compute,
    describe_table,
    month_batches,
    monthly_asset,
    publish,
    read_upstreams,
)
from ml_assets.checks import check_outputs, evaluation, materialized, spec
from ml_assets.metadata import markdown_table
from ml_assets.model_config import ModelSpec, model_config
from ml_assets.modeling import Model, feature_schema_hash, fingerprint, train_model
from ml_assets.months import add_months, folder_label, parse_month, partition_key
from ml_assets.partitions import monthly_partitions, run_months, training_windows, window_pairs
from ml_assets.plots import bar_chart
from ml_assets.settings import settings, source_of_feature
from ml_assets.tables import (
    FEATURE_STORE,
    LABEL_STORE,
    MODEL_ALIASES,
    MODEL_REGISTRY,
    PREDICTIONS,
    SCORE_REFERENCE,
    SOURCE_COVERAGE,
    TRAINING_SET,
    asset_key,
)
from resources.model_store import ModelStore, artifact_digest, code_version
from resources.warehouse import Warehouse

CONFIG = model_config()
LABEL_WINDOW, FEATURE_WINDOW = training_windows(CONFIG.window_months, settings().label.mob)
TRAINING_INPUTS = [
    Upstream("gold_label_store", LABEL_STORE, LABEL_WINDOW),
    Upstream("gold_feature_store", FEATURE_STORE, FEATURE_WINDOW),
]
SPLIT_COLUMNS = ("training_month", "loan_id", "customer_id", "application_month",
                 "observation_month", "label", "label_def", "split")
CHAMPION = dg.AssetKey(["ml", "champion"])
ALIAS = "champion"
TOP_FEATURES = 15

REGISTRY_SCHEMA = pa.schema([
    ("model_version", pa.string()), ("model_name", pa.string()), ("algorithm", pa.string()),
    ("trained_month", pa.date32()), ("window_first", pa.date32()), ("window_last", pa.date32()),
    ("oot_month", pa.date32()), ("label_def", pa.string()), ("features", pa.list_(pa.string())),
    ("categorical_features", pa.list_(pa.string())), ("importances", pa.string()),
    ("feature_schema_hash", pa.string()), ("data_fingerprint", pa.string()),
    ("params", pa.string()), ("n_train", pa.int64()), ("n_test", pa.int64()),
    ("n_oot", pa.int64()), ("train_auc", pa.float64()), ("test_auc", pa.float64()),
    ("oot_auc", pa.float64()), ("oot_gini", pa.float64()), ("oot_ks", pa.float64()),
    ("oot_log_loss", pa.float64()), ("oot_brier", pa.float64()), ("metrics", pa.string()),
    ("checks_passed", pa.bool_()), ("checks", pa.string()), ("artifact_path", pa.string()),
    ("artifact_digest", pa.string()), ("code_version", pa.string()),
    ("trained_at", pa.timestamp("us")),
])
REFERENCE_SCHEMA = pa.schema([
    ("model_version", pa.string()), ("trained_month", pa.date32()), ("loan_id", pa.string()),
    ("observation_month", pa.date32()), ("label", pa.int8()), ("score", pa.float64()),
])
ALIAS_SCHEMA = pa.schema([
    ("alias", pa.string()), ("month", pa.date32()), ("model_version", pa.string()),
    ("model_name", pa.string()), ("trained_month", pa.date32()), ("decision", pa.string()),
    ("reason", pa.string()), ("previous_version", pa.string()),
    ("challenger_version", pa.string()), ("challenger_oot_auc", pa.float64()),
    ("champion_oot_auc", pa.float64()), ("min_auc_gain", pa.float64()),
    ("oot_month", pa.date32()), ("decided_at", pa.timestamp("us")),
])
PREDICTION_SCHEMA = pa.schema([
    ("loan_id", pa.string()), ("customer_id", pa.string()), ("application_month", pa.date32()),
    ("model_version", pa.string()), ("score", pa.float64()), ("decision", pa.string()),
    ("missing_sources", pa.string()), ("coverage_status", pa.string()),
    ("coverage_issue", pa.string()),
])


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def publish_rows(con: duckdb.DuckDBPyConnection, warehouse: Warehouse, table, rows: pa.Table,
                 months: list[date], part: str = "part-0") -> dict[date, int]:
    con.register("_rows", rows)
    try:
        return warehouse.publish(con, table, "SELECT * FROM _rows", months, part=part)
    finally:
        con.unregister("_rows")


# -- training set ---------------------------------------------------------------------------


@monthly_asset(**describe_table(TRAINING_SET), deps=[u.dep() for u in TRAINING_INPUTS])
def training_set(context: dg.AssetExecutionContext, warehouse: Warehouse):
    evaluations = []
    with warehouse.publication(TRAINING_SET) as publication:
        for batch in month_batches(warehouse, TRAINING_INPUTS, run_months(context)):
            evaluations += training_months(context, warehouse, batch, publication)
    yield from materialized(context, evaluations)


def training_months(context: dg.AssetExecutionContext, warehouse: Warehouse, months: list[date],
                    publication) -> list:
    """Build and stage one group of the run's training months; their check evaluations."""
    with warehouse.connect() as con:
        read_upstreams(con, warehouse, TRAINING_INPUTS, months)
        con.register("training_window", window_pairs(LABEL_WINDOW, months))
        compute(con, "gold/training_set",
                {"seed": CONFIG.seed, "test_fraction": CONFIG.test_fraction})
        coverage = {row[0]: row[1:] for row in con.execute(
            f"SELECT training_month, max(labelled_months), min(observation_month), "
            f"max(observation_month), count_if(split = 'train'), count_if(split = 'test'), "
            f"count_if(split = 'oot'), avg(label) FROM {RESULT} GROUP BY ALL").fetchall()}
        con.execute(f"CREATE OR REPLACE TEMP TABLE eligible AS SELECT * EXCLUDE (labelled_months) "
                    f"FROM {RESULT} WHERE labelled_months >= $minimum",
                    {"minimum": CONFIG.min_labelled_months})
        per_month = {}
        for month in months:
            labelled, first, last, n_train, n_test, n_oot, rate = coverage.get(
                month, (0, None, None, 0, 0, 0, None))
            enough = labelled >= CONFIG.min_labelled_months
            per_month[month] = {
                "trainable": enough,
                "labelled_months": int(labelled),
                "window": f"{folder_label(first)}..{folder_label(last)}" if first else "none",
                "reason": (f"{labelled} labelled months in the window" if enough else
                           f"nothing to train: {labelled} labelled months in the window, "
                           f"{CONFIG.min_labelled_months} needed"),
                **({"rows_train": n_train, "rows_test": n_test, "rows_oot": n_oot,
                    "label_rate": float(rate)} if enough else {}),
            }
        return publish(context, warehouse, con, TRAINING_SET, "SELECT * FROM eligible", months,
                       per_month, publication)


def as_dates(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """DuckDB hands DATE columns to pandas as timestamps unless asked (`df(date_as_object=
    True)`); the platform compares dates."""
    for column in columns:
        frame[column] = pd.to_datetime(frame[column]).dt.date
    return frame


def load_training_frame(con: duckdb.DuckDBPyConnection, month: date, split: str | None = None
                        ) -> pd.DataFrame:
    """Training month `month`'s rows from the registered `training_set` view, by loan id."""
    query = "SELECT * FROM training_set WHERE training_month = $month"
    params: dict = {"month": month}
    if split:
        query += " AND split = $split"
        params["split"] = split
    return con.execute(query + " ORDER BY loan_id", params).df(date_as_object=True)


# -- candidate models -----------------------------------------------------------------------


def _sample(frame: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    """At most `limit` rows, chosen by a hash of the loan id: the same rows on every run."""
    if not limit or len(frame) <= limit:
        return frame
    order = np.argsort(pd.util.hash_array(frame["loan_id"].to_numpy()), kind="stable")
    return frame.iloc[np.sort(order[:limit])]


def _model_checks(key: dg.AssetKey) -> dict[str, dg.AssetCheckSpec]:
    return {
        "scores_valid": spec(key, "scores_valid",
                             "Every out-of-time score is a finite probability in [0, 1]"),
        "oot_auc_floor": spec(key, "oot_auc_floor",
                              f"Out-of-time AUC at least {CONFIG.min_oot_auc} "
                              "(champion.min_oot_auc); below it the model cannot be champion"),
        "past_labels_only": spec(key, "past_labels_only",
                                 "Every training row's label was observed before the training "
                                 "month"),
    }


def train_candidate(model: ModelSpec, month: date, frame: pd.DataFrame, store: ModelStore
                    ) -> tuple[dict, pd.DataFrame, dict[str, tuple[bool, dict]], Model]:
    """Train `model` on training month `month`'s frame. Returns the registry record, the
    out-of-time scores (the monitoring reference), the check outcomes and the model."""
    features = model.features.resolve([c for c in frame.columns if c not in SPLIT_COLUMNS])
    parts = {split: frame[frame["split"] == split] for split in ("train", "test", "oot")}
    parts["train"] = _sample(parts["train"], CONFIG.max_training_rows)
    fitted = train_model(model, features, parts["train"], parts["test"], CONFIG.seed)
    scores = {split: fitted.predict(part) for split, part in parts.items()}
    summary = {split: metrics.summary(part["label"], scores[split])
               for split, part in parts.items()}
    version = f"{model.name}-{month:%Y-%m}"
    folder = store.save(fitted, model.name, version)
    oot_scores = scores["oot"]
    checks = {
        "scores_valid": (bool(np.isfinite(oot_scores).all()
                               and ((oot_scores >= 0) & (oot_scores <= 1)).all()),
                         {"min_score": float(oot_scores.min()),
                          "max_score": float(oot_scores.max())}),
        "oot_auc_floor": ((summary["oot"]["auc"] or 0) >= CONFIG.min_oot_auc,
                          {"oot_auc": summary["oot"]["auc"], "floor": CONFIG.min_oot_auc}),
        "past_labels_only": (bool((frame["observation_month"] < month).all()),
                             {"latest_label_month": str(frame["observation_month"].max())}),
    }
    record = {
        "model_version": version, "model_name": model.name, "algorithm": model.algorithm,
        "trained_month": month, "window_first": frame["observation_month"].min(),
        "window_last": frame["observation_month"].max(),
        "oot_month": parts["oot"]["observation_month"].max(),
        "label_def": frame["label_def"].iloc[0], "features": list(features.names),
        "categorical_features": list(features.categorical),
        "importances": json.dumps(dict(sorted(fitted.importances().items(),
                                              key=lambda kv: -kv[1]))),
        "feature_schema_hash": feature_schema_hash(features),
        "data_fingerprint": fingerprint(frame[[*SPLIT_COLUMNS[1:], *features.names]]),
        "params": json.dumps({**model.params, "max_rounds": model.max_rounds,
                              "early_stopping_rounds": model.early_stopping_rounds,
                              "seed": CONFIG.seed}, sort_keys=True),
        "n_train": len(parts["train"]), "n_test": len(parts["test"]), "n_oot": len(parts["oot"]),
        "train_auc": summary["train"]["auc"], "test_auc": summary["test"]["auc"],
        "oot_auc": summary["oot"]["auc"], "oot_gini": summary["oot"]["gini"],
        "oot_ks": summary["oot"]["ks"], "oot_log_loss": summary["oot"]["log_loss"],
        "oot_brier": summary["oot"]["brier"], "metrics": json.dumps(summary, sort_keys=True),
        "checks_passed": all(passed for passed, _ in checks.values()),
        "checks": json.dumps({n: passed for n, (passed, _) in checks.items()}, sort_keys=True),
        "artifact_path": str(folder), "artifact_digest": artifact_digest(folder),
        "code_version": code_version(), "trained_at": _now(),
    }
    reference = pd.DataFrame({
        "model_version": version, "trained_month": month,
        "loan_id": parts["oot"]["loan_id"].to_numpy(),
        "observation_month": parts["oot"]["observation_month"].to_numpy(),
        "label": parts["oot"]["label"].to_numpy(), "score": oot_scores,
    })
    return record, reference, checks, fitted


def _model_metadata(record: dict, model: Model) -> dict:
    summary = json.loads(record["metrics"])
    names = ["auc", "gini", "ks", "log_loss", "brier", "n", "default_rate"]
    rows = [[split, *[summary[split][m] for m in names]] for split in ("train", "test", "oot")]
    importances = dict(sorted(model.importances().items(), key=lambda kv: -kv[1])[:TOP_FEATURES])
    return {
        "model_version": record["model_version"],
        "training_window": f"{folder_label(record['window_first'])}.."
                           f"{folder_label(record['window_last'])} "
                           f"(OOT {folder_label(record['oot_month'])})",
        "oot_auc": record["oot_auc"],
        "oot_gini": record["oot_gini"],
        "metrics": dg.MetadataValue.md(markdown_table(["split", *names], rows)),
        "top_features": dg.MetadataValue.md(markdown_table(
            ["feature", "importance"], [[k, v] for k, v in importances.items()])),
        "importance_chart": dg.MetadataValue.md(bar_chart(
            importances, f"{record['model_version']}: top features", "importance")),
        "artifact": dg.MetadataValue.path(record["artifact_path"]),
        "artifact_digest": record["artifact_digest"],
        "data_fingerprint": record["data_fingerprint"],
    }


def build_model_asset(model: ModelSpec) -> dg.AssetsDefinition:
    key = dg.AssetKey(["ml", f"model_{model.name}"])
    checks = _model_checks(key)

    @monthly_asset(
        key=key, group_name="ml", deps=[dg.AssetDep(asset_key(TRAINING_SET))],
        check_specs=list(checks.values()),
        kinds={"lightgbm" if model.algorithm == "lightgbm" else "scikitlearn"},
        description=f"The {model.algorithm} candidate `{model.name}` trained each month on "
                    "gold.training_set (config/models.yaml); its record in ml.model_registry, "
                    "its out-of-time scores in ml.score_reference.",
    )
    def model_asset(context: dg.AssetExecutionContext, warehouse: Warehouse,
                    model_store: ModelStore):
        months = run_months(context)
        evaluations = []
        with warehouse.connect() as con:
            for month in months:
                warehouse.register_input(con, "training_set", TRAINING_SET, [month])
                frame = load_training_frame(con, month)
                if frame.empty:
                    record, reference, outcomes = None, None, {}
                    context.add_asset_metadata(
                        {"trained": False, "reason": "no training rows this month: too few "
                         "labelled months in its window (see gold/training_set)"},
                        partition_key=partition_key(month))
                else:
                    record, reference, outcomes, fitted = train_candidate(
                        model, month, frame, model_store)
                    context.add_asset_metadata({"trained": True, **_model_metadata(record, fitted)},
                                               partition_key=partition_key(month))
                publish_rows(con, warehouse, MODEL_REGISTRY, pa.Table.from_pylist(
                    [record] if record else [], schema=REGISTRY_SCHEMA), [month], part=model.name)
                publish_rows(con, warehouse, SCORE_REFERENCE, pa.Table.from_pandas(
                    reference if reference is not None else REFERENCE_SCHEMA.empty_table()
                    .to_pandas(), schema=REFERENCE_SCHEMA, preserve_index=False),
                    [month], part=model.name)
                for name, check in checks.items():
                    passed, details = outcomes.get(name, (True, {"trained": False}))
                    evaluations.append(evaluation(check, month, passed, details))
        yield from evaluations
        yield dg.MaterializeResult()
        yield from check_outputs(context)

    return model_asset


model_assets = [build_model_asset(model) for model in CONFIG.models]
MODEL_NAMES = {model.name: model for model in CONFIG.models}


# -- champion gate ---------------------------------------------------------------------------


def _registry_at(warehouse: Warehouse, con: duckdb.DuckDBPyConnection, month: date) -> list[dict]:
    warehouse.register_input(con, "registry_month", MODEL_REGISTRY, [month])
    rows = con.execute("SELECT * FROM registry_month ORDER BY model_version").df()
    return as_dates(rows, "trained_month", "oot_month").to_dict("records")


def _alias_at(warehouse: Warehouse, con: duckdb.DuckDBPyConnection, month: date) -> dict | None:
    """The alias decision of `month` (None before the first month). Its month must be published:
    the gate is sequential, month after month."""
    if month < parse_month(monthly_partitions.get_first_partition_key()):
        return None
    warehouse.register_input(con, "alias_month", MODEL_ALIASES, [month])
    rows = con.execute("SELECT * FROM alias_month WHERE alias = $alias", {"alias": ALIAS}).df()
    rows = as_dates(rows, "month", "trained_month", "oot_month")
    return rows.to_dict("records")[0] if len(rows) else None


def decide(month: date, candidates: list[dict], previous: dict | None,
           champion_auc_on_oot: float | None) -> dict:
    """The gate: the best candidate that passed its checks replaces the champion only if its OOT
    AUC beats the champion's on the same OOT month by min_auc_gain; the first model becomes
    champion. `previous` is last month's alias row, `candidates` this month's registry records."""
    incumbent = previous if previous and previous.get("model_version") else None
    passing = [c for c in candidates if c["checks_passed"]]
    best = max(passing, key=lambda c: (c["oot_auc"], c["model_version"]), default=None)
    if best is None:
        chosen = incumbent
        decision = "kept" if incumbent else "none"
        reason = ("no candidate trained this month" if not candidates else
                  "no candidate passed its checks: " + "; ".join(
                      f"{c['model_version']} {c['checks']}" for c in candidates))
    elif incumbent is None:
        chosen, decision = best, "first"
        reason = f"first champion: {best['model_version']}, OOT AUC {best['oot_auc']:.4f}"
    elif champion_auc_on_oot is None:
        chosen, decision = incumbent, "kept"
        reason = "the champion could not be scored on this month's OOT set (one class only)"
    elif best["oot_auc"] >= champion_auc_on_oot + CONFIG.min_auc_gain:
        chosen, decision = best, "promoted"
        reason = (f"{best['model_version']} OOT AUC {best['oot_auc']:.4f} beats champion "
                  f"{incumbent['model_version']} {champion_auc_on_oot:.4f} by "
                  f"{best['oot_auc'] - champion_auc_on_oot:.4f} >= {CONFIG.min_auc_gain}")
    else:
        chosen, decision = incumbent, "kept"
        reason = (f"challenger {best['model_version']} OOT AUC {best['oot_auc']:.4f} does not "
                  f"beat champion {incumbent['model_version']} {champion_auc_on_oot:.4f} by "
                  f"{CONFIG.min_auc_gain}")
    return {
        "alias": ALIAS, "month": month,
        "model_version": chosen["model_version"] if chosen else None,
        "model_name": chosen["model_name"] if chosen else None,
        "trained_month": chosen["trained_month"] if chosen else None,
        "decision": decision, "reason": reason,
        "previous_version": incumbent["model_version"] if incumbent else None,
        "challenger_version": best["model_version"] if best else None,
        "challenger_oot_auc": best["oot_auc"] if best else None,
        "champion_oot_auc": champion_auc_on_oot, "min_auc_gain": CONFIG.min_auc_gain,
        "oot_month": best["oot_month"] if best else None, "decided_at": _now(),
    }


@monthly_asset(
    key=CHAMPION, group_name="ml", kinds={"python"},
    # month M's gate reads month M-1's decision: one gate at a time across runs (the instance
    # gives every pool a limit of 1, config/dagster.yaml)
    pool="champion_gate",
    deps=[*(dg.AssetDep(m.key) for m in model_assets), dg.AssetDep(asset_key(TRAINING_SET)),
          dg.AssetDep(CHAMPION, partition_mapping=dg.TimeWindowPartitionMapping(
              start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True))],
    description="The champion gate, month by month (ml.model_aliases): the best candidate "
                "challenges the previous month's champion on this month's out-of-time data.",
)
def champion(context: dg.AssetExecutionContext, warehouse: Warehouse,
             model_store: ModelStore) -> None:
    months = run_months(context)
    with warehouse.connect() as con:
        previous = _alias_at(warehouse, con, add_months(months[0], -1))
        for month in months:
            warehouse.register_input(con, "training_set", TRAINING_SET, [month])
            candidates = _registry_at(warehouse, con, month)
            champion_auc = None
            kept = previous.get("model_version") if previous else None
            if kept and candidates:
                oot = load_training_frame(con, month, "oot")
                incumbent = model_store.load(previous["model_name"], kept)
                champion_auc = metrics.auc(oot["label"], incumbent.predict(oot))
            row = decide(month, candidates, previous, champion_auc)
            publish_rows(con, warehouse, MODEL_ALIASES,
                         pa.Table.from_pylist([row], schema=ALIAS_SCHEMA), [month])
            context.add_asset_metadata(
                {"champion": row["model_version"] or "none", "decision": row["decision"],
                 "reason": row["reason"],
                 "challenger_oot_auc": row["challenger_oot_auc"],
                 "champion_oot_auc": row["champion_oot_auc"]},
                partition_key=partition_key(month))
            previous = row


# -- predictions -----------------------------------------------------------------------------

PREDICTIONS_KEY = asset_key(PREDICTIONS)
PREDICTION_CHECKS = {
    "one_valid_score_per_loan": spec(
        PREDICTIONS_KEY, "one_valid_score_per_loan",
        "One prediction per loan of the feature store's month, each score in [0, 1] (none when "
        "the month is blocked for a source outage)"),
    "champion_not_from_the_future": spec(
        PREDICTIONS_KEY, "champion_not_from_the_future",
        "The scoring model was trained in the prediction month or before"),
    "sources_covered": spec(
        PREDICTIONS_KEY, "sources_covered",
        "Every source the champion's features come from covered the month's applications "
        "(gold.source_coverage): ERROR when one is below its floor (the month is flagged or "
        "blocked, coverage.on_failure), WARN when one is well below its usual level"),
}
# a loan's missing sources, from the feature store's flags
MISSING_SOURCE = {"features_attributes": "NOT has_attributes",
                  "features_financials": "NOT has_financials",
                  "feature_clickstream": "clickstream_months = 0"}


def coverage_verdict(coverage_rows: list[tuple], features: list[str]) -> tuple[str, list, str]:
    """The month's coverage for a model: its status (ok, warn, error), the failing sources the
    model's `features` use, and the issue text. `coverage_rows`: (source, status, message) of
    gold.source_coverage for the month; a source the model does not use cannot fail it."""
    used = {source_of_feature(f) for f in features}
    relevant = [(s, status, message) for s, status, message in coverage_rows if s in used]
    failing = [s for s, status, _ in relevant if status == "error"]
    status = "error" if failing else "warn" if any(r[1] == "warn" for r in relevant) else "ok"
    issue = "; ".join(message for _, st, message in relevant if st != "ok")
    return status, failing, issue


def decide_applications(scores: np.ndarray, missing: pd.Series, failing: list[str],
                        cutoff: float) -> np.ndarray:
    """decline when the score is at least `cutoff`, else approve; an application missing a
    `failing` source (a feed outage) is `refer`red to a person instead: its score lacks data
    the model relies on. `missing`: each loan's missing sources, comma-separated or None."""
    decision = np.where(scores >= cutoff, "decline", "approve").astype(object)
    if failing:
        lacks = missing.fillna("").map(lambda text: any(s in text.split(",") for s in failing))
        decision[lacks.to_numpy(dtype=bool)] = "refer"
    return decision


@monthly_asset(
    **describe_table(PREDICTIONS, checks=PREDICTION_CHECKS.values()),
    deps=[dg.AssetDep(asset_key(FEATURE_STORE)), dg.AssetDep(CHAMPION),
          dg.AssetDep(asset_key(SOURCE_COVERAGE))],
)
def predictions(context: dg.AssetExecutionContext, warehouse: Warehouse,
                model_store: ModelStore):
    months = run_months(context)
    cutoff = CONFIG.decision_cutoff
    on_failure = settings().coverage.on_failure
    evaluations, scored, per_month = [], [], {}
    missing_sql = ", ".join(f"CASE WHEN {condition} THEN '{source}' END"
                            for source, condition in MISSING_SOURCE.items())
    with warehouse.connect() as con:
        warehouse.register_input(con, "aliases", MODEL_ALIASES, months)
        warehouse.register_input(con, "features", FEATURE_STORE, months)
        warehouse.register_input(con, "coverage", SOURCE_COVERAGE, months)
        champions = {row[0]: row[1:] for row in con.execute(
            "SELECT month, model_name, model_version, trained_month FROM aliases "
            "WHERE alias = $alias", {"alias": ALIAS}).fetchall()}
        coverage: dict[date, list[tuple]] = {}
        for month, *row in con.execute("SELECT application_month, source, status, message "
                                       "FROM coverage ORDER BY ALL").fetchall():
            coverage.setdefault(month, []).append(tuple(row))
        models: dict[str, Model] = {}
        for month in months:
            name, version, trained = champions.get(month, (None, None, None))
            frame = as_dates(con.execute(
                f"SELECT *, nullif(concat_ws(',', {missing_sql}), '') AS missing_sources "
                "FROM features WHERE application_month = $month ORDER BY loan_id",
                {"month": month}).df(), "application_month")
            status, failing, issue = "ok", [], ""
            if version is not None:
                if version not in models:
                    models[version] = model_store.load(name, version)
                status, failing, issue = coverage_verdict(coverage.get(month, []),
                                                          list(models[version].features.names))
            blocked = bool(failing) and on_failure == "block"
            if version is None or blocked:
                per_month[month] = {"model_version": version or "none", "reason": (
                    f"blocked (coverage.on_failure: block): {issue}" if blocked
                    else "no champion yet in this month")}
                scores = np.empty(0)
            else:
                scores = models[version].predict(frame)
                decisions = decide_applications(scores, frame["missing_sources"], failing, cutoff)
                scored.append(pd.DataFrame({
                    "loan_id": frame["loan_id"], "customer_id": frame["customer_id"],
                    "application_month": frame["application_month"], "model_version": version,
                    "score": scores, "decision": decisions,
                    "missing_sources": frame["missing_sources"], "coverage_status": status,
                    "coverage_issue": issue or None,
                }))
                quantiles = ([float(q) for q in np.quantile(scores, [0.1, 0.5, 0.9])]
                             if len(scores) else [None] * 3)
                shares = {d: float((decisions == d).mean()) if len(scores) else None
                          for d in ("decline", "approve", "refer")}
                per_month[month] = {
                    "model_version": version, "model_trained_month": str(trained),
                    "mean_score": float(scores.mean()) if len(scores) else None,
                    "score_p10": quantiles[0], "score_p50": quantiles[1],
                    "score_p90": quantiles[2], "decision_cutoff": cutoff,
                    "declined_share": shares["decline"], "approved_share": shares["approve"],
                    "referred_share": shares["refer"], "coverage_status": status,
                    **({"coverage_issue": issue} if issue else {}),
                }
            valid = bool(((scores >= 0) & (scores <= 1)).all())
            expected = len(frame) if version and not blocked else 0
            distinct = frame["loan_id"].nunique() if expected else 0
            evaluations.append(evaluation(
                PREDICTION_CHECKS["one_valid_score_per_loan"], month,
                valid and distinct == expected == len(scores),
                {"loans": len(frame), "predictions": len(scores), "scores_in_0_1": valid}))
            evaluations.append(evaluation(
                PREDICTION_CHECKS["champion_not_from_the_future"], month,
                trained is None or trained <= month,
                {"model_version": version or "none", "trained_month": str(trained)}))
            outcome = ("blocked: no predictions published" if blocked else
                       f"flagged: {int((scored[-1]['decision'] == 'refer').sum())} applications "
                       f"referred" if failing else "")
            evaluations.append(evaluation(
                PREDICTION_CHECKS["sources_covered"], month, status == "ok",
                {"coverage_status": status, "failing_sources": ", ".join(failing) or "none",
                 "on_failure": on_failure},
                severity=dg.AssetCheckSeverity.ERROR if failing else dg.AssetCheckSeverity.WARN,
                description=f"{issue}; {outcome}" if failing else issue or None))
        rows = (pa.Table.from_pandas(pd.concat(scored, ignore_index=True),
                                     schema=PREDICTION_SCHEMA, preserve_index=False)
                if scored else PREDICTION_SCHEMA.empty_table())
        con.register("scored", rows)
        evaluations += publish(context, warehouse, con, PREDICTIONS, "SELECT * FROM scored",
                               months, per_month)
    yield from materialized(context, evaluations)
