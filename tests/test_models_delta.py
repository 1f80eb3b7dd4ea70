"""The ML stage on table specs and Delta: the registry (one record per candidate and trainable
month, with the table versions its training set read), byte-identical retraining, the champion
gate month by month, predictions by a champion of the month or before, and the reproduce
commands, on a small generated warehouse built in three runs so that tables have several
versions."""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml
from deltalake import DeltaTable, write_deltalake
from scipy import special

from ml_assets.assets.credit_review import credit_review_specs
from ml_assets.assets.gold import gold_specs
from ml_assets.assets.models import (
    AliasRecord,
    ModelRecord,
    ReferenceScore,
    arrow_schema,
    ml_specs,
    month_commit,
)
from ml_assets.assets.raw import raw_specs
from ml_assets.assets.silver import silver_specs
from ml_assets.definitions import build_lake, build_resources, load_build
from ml_assets.demo.generator import generate
from ml_assets.model_config import load_model_config
from ml_assets.months import month_range
from ml_assets.reproduce import ReproduceError, reproduce_model, reproduce_predictions
from ml_assets.settings import CONFIG_DIR, load_settings
from ml_assets.spec import asset_key, table_asset
from ml_assets.tables import (
    FEATURE_STORE,
    LABEL_STORE,
    MODEL_ALIASES,
    MODEL_REGISTRY,
    PREDICTIONS,
    SCORE_REFERENCE,
    TRAINING_SET,
)
from tests.conftest import run_vintage

pytestmark = pytest.mark.xdist_group("models-delta")

FIRST, FIRST_TRAINED, LAST = date(2023, 1, 1), date(2024, 1, 1), date(2024, 3, 1)
TRAINED = list(month_range(FIRST_TRAINED, LAST))


@dataclass(frozen=True)
class Warehouse:
    """A generated warehouse, its source folder and the model configuration it is built with."""

    root: Path
    source: Path
    models_file: Path
    review: bool = False  # with the credit-review tables (IV, cut-offs, validation reports)

    @property
    def environ(self) -> dict[str, str]:
        return {"VINTAGE_WAREHOUSE": str(self.root), "VINTAGE_SOURCE": str(self.source),
                "VINTAGE_MODELS": str(self.models_file)}

    def build(self):
        return load_build(load_settings(environ=self.environ),
                          load_model_config(self.models_file))

    def lake(self):
        return build_lake(self.build().config)

    def store(self):
        return build_resources(self.build().config)["model_store"]

    def definitions(self, jobs) -> dg.Definitions:
        """The tables raw .. predictions (and the credit-review ones, with `review`) with
        `jobs`, executed in process."""
        build = self.build()
        specs = [*raw_specs(build), *silver_specs(build), *gold_specs(build), *ml_specs(build),
                 *(credit_review_specs(build) if self.review else ())]
        return dg.Definitions(assets=[table_asset(spec, build) for spec in specs],
                              resources=build_resources(build.config), jobs=jobs,
                              executor=dg.in_process_executor)

    def materialise(self, first: date, last: date, tables=None) -> dg.ExecuteInProcessResult:
        """Materialise every table (or `tables`) for first..last in one run, as a single-run
        backfill does."""
        selection = (dg.AssetSelection.all() if tables is None else dg.AssetSelection.assets(
            *map(asset_key, tables)).required_multi_asset_neighbors())
        defs = self.definitions([dg.define_asset_job("run", selection=selection)])
        return defs.resolve_job_def("run").execute_in_process(
            instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
            tags={"dagster/asset_partition_range_start": first.isoformat(),
                  "dagster/asset_partition_range_end": last.isoformat()})

    def copy(self, folder: Path) -> Warehouse:
        shutil.copytree(self.root, folder / "warehouse",
                        ignore=shutil.ignore_patterns("_work", "catalog.duckdb", ".views"))
        return dataclasses.replace(self, root=folder / "warehouse")


def failures(result: dg.ExecuteInProcessResult) -> list[str]:
    return [(event.event_specific_data.error.cause or event.event_specific_data.error).message
            for event in result.all_events if event.is_step_failure]


def succeeded(result: dg.ExecuteInProcessResult) -> None:
    assert result.success, "\n".join(failures(result))


CALIBRATED = {"lightgbm": "isotonic", "logistic_regression": "platt"}
APPROVAL_RATE = 0.8


def one_thread_models_file(folder: Path) -> Path:
    """config/models.yaml with LightGBM on one thread: on two shared cores OpenMP's second
    thread mostly waits (a training month took 4x longer with two); with calibrated models
    (CALIBRATED) and a cut-off set as a target approval rate, so that both go through the
    registry, the gate, the predictions and the reproduce commands."""
    raw = yaml.safe_load((CONFIG_DIR / "models.yaml").read_text())
    for model in raw["models"].values():
        if model["algorithm"] == "lightgbm":
            model.setdefault("params", {})["num_threads"] = 1
        model["calibration"] = CALIBRATED[model["algorithm"]]
    raw["predictions"].update({"cutoff_mode": "approval_rate",
                               "decision_cutoff": APPROVAL_RATE})
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Warehouse:
    """Generated data (scale 0.2: 100 loans a month) through raw .. predictions in three runs:
    2023-01..2024-01, then 2024-02..2024-03, then the registry of 2024-01 again (it then reads
    training set version 1, whose month 2024-01 was published by version 0)."""
    folder = tmp_path_factory.mktemp("models-delta")
    generate(folder / "source", scale=0.2, seed=3)
    built = Warehouse(folder / "warehouse", folder / "source", one_thread_models_file(folder))
    succeeded(built.materialise(FIRST, FIRST_TRAINED))
    succeeded(built.materialise(date(2024, 2, 1), LAST))
    succeeded(built.materialise(FIRST_TRAINED, FIRST_TRAINED, [MODEL_REGISTRY]))
    return built


def rows(warehouse: Warehouse, table, version: int | None = None, where: str = "") -> list[dict]:
    """A table's rows (every published month) at `version`, as dicts."""
    with duckdb.connect() as con:
        warehouse.lake().read(con, "t", table, None, version)
        result = con.execute(f"SELECT * FROM t {where}")
        names = [d[0] for d in result.description]
        return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


def lake_versions(warehouse: Warehouse) -> dict[str, int | None]:
    lake = warehouse.lake()
    return {t.qualified_name: lake.version(t) for t in warehouse.build().tables}


# -- the records' schema ----------------------------------------------------------------------


def test_records_give_the_arrow_schema():
    assert arrow_schema(ReferenceScore).field("label").type == pa.int8()
    registry = arrow_schema(ModelRecord)
    assert registry.field("features").type == pa.list_(pa.string())
    assert registry.field("trained_at").type == pa.timestamp("us")
    assert registry.field("oot_auc").type == pa.float64() and registry.field("oot_auc").nullable
    assert arrow_schema(AliasRecord).field("trained_month").type == pa.date32()
    assert registry.names[-2:] == ["input_versions", "training_config"]


def test_published_tables_have_the_records_columns(warehouse):
    lake = warehouse.lake()
    for table, record in ((MODEL_REGISTRY, ModelRecord), (SCORE_REFERENCE, ReferenceScore),
                          (MODEL_ALIASES, AliasRecord)):
        names = [f.name for f in lake.delta(table).schema().fields]
        expected = arrow_schema(record).names
        # and the partition column `month`, last (the aliases' month column is it)
        assert names == expected + ([] if "month" in expected else ["month"]), table


# -- the registry -----------------------------------------------------------------------------


def test_registry_has_a_record_per_candidate_and_trainable_month(warehouse):
    records = rows(warehouse, MODEL_REGISTRY)
    names = [m.name for m in warehouse.build().models.models]
    assert sorted((r["model_name"], r["trained_month"]) for r in records) == sorted(
        (name, month) for name in names for month in TRAINED)
    assert all(r["model_version"] == f"{r['model_name']}-{r['trained_month']:%Y-%m}"
               for r in records)
    # the months before there were enough labels are published, empty
    assert warehouse.lake().published_months(MODEL_REGISTRY) == list(month_range(FIRST, LAST))
    # the OOT scores: one per OOT loan of each version
    references = rows(warehouse, SCORE_REFERENCE)
    for record in records:
        scored = [r for r in references if r["model_version"] == record["model_version"]]
        assert len(scored) == record["n_oot"] > 0
        assert {r["observation_month"] for r in scored} == {record["oot_month"]}


def test_input_versions_name_the_versions_the_training_set_read(warehouse):
    lake = warehouse.lake()
    by_month = {}
    for record in rows(warehouse, MODEL_REGISTRY):
        versions = json.loads(record["input_versions"])
        assert set(versions) == {"gold.training_set", "gold.label_store", "gold.feature_store"}
        for name, version in versions.items():  # each a real, readable version
            table = {"gold.training_set": TRAINING_SET, "gold.label_store": LABEL_STORE,
                     "gold.feature_store": FEATURE_STORE}[name]
            assert lake.delta(table, version).version() == version
        publishing = month_commit(lake, TRAINING_SET, record["trained_month"],
                                  versions["gold.training_set"])
        read = lake.commit_metadata(TRAINING_SET, publishing)["input_versions"]
        assert read == {k: v for k, v in versions.items() if k != "gold.training_set"}
        by_month[record["trained_month"]] = versions
    # 2024-01 was trained again after run 2: it read training set v1, but its month was
    # published by v0 of the training set, which read v0 of the stores
    assert by_month[date(2024, 1, 1)] == {"gold.training_set": 1, "gold.label_store": 0,
                                          "gold.feature_store": 0}
    assert by_month[date(2024, 2, 1)] == {"gold.training_set": 1, "gold.label_store": 1,
                                          "gold.feature_store": 1}
    assert lake.commit_metadata(MODEL_REGISTRY, lake.version(MODEL_REGISTRY))[
        "input_versions"] == {"gold.training_set": 1}


def test_training_a_month_again_gives_identical_artifacts(warehouse):
    first = {r["model_version"]: r for r in rows(warehouse, MODEL_REGISTRY, 0)}
    again = {r["model_version"]: r for r in rows(warehouse, MODEL_REGISTRY)
             if r["trained_month"] == FIRST_TRAINED}
    assert again and set(again) <= set(first)
    for version, record in again.items():
        assert record["trained_at"] > first[version]["trained_at"]  # trained twice
        assert record["artifact_digest"] == first[version]["artifact_digest"], version
        assert record["data_fingerprint"] == first[version]["data_fingerprint"], version


# -- the champion gate ------------------------------------------------------------------------


def test_the_gate_decides_month_after_month(warehouse):
    aliases = sorted(rows(warehouse, MODEL_ALIASES), key=lambda r: r["month"])
    registry = {r["model_version"]: r for r in rows(warehouse, MODEL_REGISTRY)}
    gain = warehouse.build().models.min_auc_gain
    assert [a["month"] for a in aliases] == list(month_range(FIRST, LAST))
    untrained = [a for a in aliases if a["month"] < FIRST_TRAINED]
    assert {(a["decision"], a["model_version"]) for a in untrained} == {("none", None)}
    first = aliases[len(untrained)]
    best = max((r for r in registry.values() if r["trained_month"] == FIRST_TRAINED
                and r["checks_passed"]), key=lambda r: (r["oot_auc"], r["model_version"]))
    assert (first["decision"], first["model_version"]) == ("first", best["model_version"])
    # 2024-02 was decided in the second run: its previous champion came from the table
    for before, alias in zip(aliases[len(untrained):], aliases[len(untrained) + 1:],
                             strict=False):
        assert alias["previous_version"] == before["model_version"]
        if alias["decision"] == "promoted":
            assert alias["model_version"] == alias["challenger_version"]
            assert alias["challenger_oot_auc"] >= alias["champion_oot_auc"] + gain
        else:
            assert alias["decision"] == "kept"
            assert alias["model_version"] == before["model_version"]
        assert registry[alias["model_version"]]["trained_month"] <= alias["month"]


def test_the_gate_needs_the_month_before(warehouse, tmp_path):
    copy = warehouse.copy(tmp_path)
    shutil.rmtree(copy.root / "ml" / "model_aliases")
    result = copy.materialise(date(2024, 2, 1), date(2024, 2, 1), [MODEL_ALIASES])
    assert not result.success
    message = "\n".join(failures(result))
    assert "month by month" in message and "ml.model_aliases" in message, message


# -- predictions ------------------------------------------------------------------------------


def test_predictions_use_a_champion_trained_no_later_than_the_month(warehouse):
    predictions = rows(warehouse, PREDICTIONS)
    champions = {a["month"]: a for a in rows(warehouse, MODEL_ALIASES)}
    trained = {r["model_version"]: r["trained_month"] for r in rows(warehouse, MODEL_REGISTRY)}
    loans = {}
    for row in rows(warehouse, FEATURE_STORE):
        loans.setdefault(row["application_month"], set()).add(row["loan_id"])
    for month in month_range(FIRST, LAST):
        scored = [p for p in predictions if p["application_month"] == month]
        if month < FIRST_TRAINED:
            assert not scored, month  # no champion yet
            continue
        assert sorted(p["loan_id"] for p in scored) == sorted(loans[month])
        assert {p["model_version"] for p in scored} == {champions[month]["model_version"]}
        assert trained[champions[month]["model_version"]] <= month
        assert all(0 <= p["score"] <= 1 for p in scored)
        assert {p["decision"] for p in scored} <= {"approve", "decline", "refer"}


# -- reproducing ------------------------------------------------------------------------------


def test_model_reproduce_matches_and_writes_nothing(warehouse):
    before = lake_versions(warehouse)
    artifacts = sorted(p.stat().st_mtime_ns for p in (warehouse.root / "ml" / "artifacts")
                       .rglob("*"))
    done = run_vintage("model", "reproduce", "lightgbm-2024-01", "--warehouse",
                       str(warehouse.root), "--source", str(warehouse.source),
                       env={"VINTAGE_MODELS": str(warehouse.models_file)})
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "read at: gold.feature_store v0, gold.label_store v0, gold.training_set v1" in out
    for what in ("training set rows", "data fingerprint", "artifact digest",
                 "published artifacts"):
        assert f"match   {what}" in out, out
    assert "reproduced: model lightgbm-2024-01" in out
    assert lake_versions(warehouse) == before
    assert sorted(p.stat().st_mtime_ns for p in (warehouse.root / "ml" / "artifacts")
                  .rglob("*")) == artifacts


def flip_first_label(table_uri: Path, month: date, split: str) -> str:
    """Rewrite one label of `month` of the training set, outside the pipeline (a predicate
    overwrite with no vintage metadata): returns the loan id."""
    table = DeltaTable(str(table_uri)).to_pyarrow_table(filters=[("month", "=", month)])
    table = table.sort_by([("split", "ascending"), ("loan_id", "ascending")])
    index = table.column("split").to_pylist().index(split)
    labels = table.column("label").to_pylist()
    labels[index] = 1 - labels[index]
    position = table.schema.get_field_index("label")
    table = table.set_column(position, table.schema.field("label"),
                             pa.array(labels, table.schema.field("label").type))
    write_deltalake(str(table_uri), table, mode="overwrite", partition_by=["month"],
                    predicate=f"month = '{month.isoformat()}'")
    return table.column("loan_id")[index].as_py()


def test_model_reproduce_names_a_tampered_training_set(warehouse, tmp_path):
    copy = warehouse.copy(tmp_path)
    month = date(2024, 2, 1)
    loan = flip_first_label(copy.root / "gold" / "training_set", month, "train")
    # the model of the month is trained again, on the tampered training set (version 2)
    succeeded(copy.materialise(month, month, [MODEL_REGISTRY]))
    done = run_vintage("model", "reproduce", "logistic-2024-02", "--warehouse", str(copy.root),
                       "--source", str(copy.source),
                       env={"VINTAGE_MODELS": str(copy.models_file)})
    assert done.returncode == 1, done.stdout + done.stderr
    lines = {line.split()[1]: line for line in done.stdout.splitlines()
             if line.startswith(("  match", "  DIFFERS"))}
    assert lines["training"].startswith("  DIFFERS training set rows")
    assert f"1 row only in the rebuild (split, loan_id: train {loan})" in lines["training"]
    assert f"1 row only in gold.training_set v2 (split, loan_id: train {loan})" in \
        lines["training"]
    assert lines["data"].startswith("  DIFFERS data fingerprint")
    assert lines["artifact"].startswith("  DIFFERS artifact digest")
    assert lines["published"].startswith("  match   published artifacts")
    assert ("NOT reproduced: model logistic-2024-02 (trained 2024-02, logistic_regression): "
            "training set rows, data fingerprint, artifact digest differ") in done.stderr
    assert "Traceback" not in done.stderr


def test_reproduce_reads_the_recorded_versions(warehouse, tmp_path):
    """A label store changed after training (here outside the pipeline) does not change the
    reproduction: the record's versions are read, by time travel."""
    copy = warehouse.copy(tmp_path)
    uri = str(copy.root / "gold" / "label_store")
    month = date(2023, 12, 1)
    labels = DeltaTable(uri).to_pyarrow_table(filters=[("month", "=", month)])
    flipped = labels.set_column(labels.schema.get_field_index("label"),
                                labels.schema.field("label"),
                                pc.subtract(1, labels.column("label")).cast(
                                    labels.schema.field("label").type))
    write_deltalake(uri, flipped, mode="overwrite", partition_by=["month"],
                    predicate=f"month = '{month.isoformat()}'")
    assert copy.lake().version(LABEL_STORE) == 2
    reproduction = reproduce_model(copy.build(), copy.lake(), copy.store(), "lightgbm-2024-02")
    assert reproduction.reproduced, reproduction.findings
    assert reproduction.read["gold.label_store"] == 1


def test_predictions_reproduce(warehouse, tmp_path):
    done = run_vintage("predictions", "reproduce", "2024-03", "--warehouse",
                       str(warehouse.root), "--source", str(warehouse.source),
                       env={"VINTAGE_MODELS": str(warehouse.models_file)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "read at: gold.feature_store v1, gold.source_coverage v1, ml.model_aliases v1, " \
        "ml.score_reference v1" in done.stdout
    for what in ("columns", "loans", "scores", "decisions", "other columns",
                 "champion artifacts"):
        assert f"match   {what}" in done.stdout, done.stdout
    assert "reproduced: predictions of 2024-03" in done.stdout
    # one score moved by 1e-9, outside the pipeline: named, and nothing else
    copy = warehouse.copy(tmp_path)
    uri, month = str(copy.root / "gold" / "predictions"), date(2024, 3, 1)
    published = DeltaTable(uri).to_pyarrow_table(filters=[("month", "=", month)])
    scores = published.column("score").to_pylist()
    scores[0] += 1e-9
    write_deltalake(uri, published.set_column(published.schema.get_field_index("score"),
                                              "score", pa.array(scores, pa.float64())),
                    mode="overwrite", partition_by=["month"],
                    predicate=f"month = '{month.isoformat()}'")
    reproduction = reproduce_predictions(copy.build(), copy.lake(), copy.store(), month)
    assert reproduction.differences == ["scores"]
    assert "1 loan beyond it" in next(f.detail for f in reproduction.findings
                                      if f.what == "scores")
    # the champion's artifacts rewritten (the same model, other bytes): not what the gate saw
    champion = next(a for a in rows(copy, MODEL_ALIASES) if a["month"] == month)
    sidecar = Path(copy.store().version_uri(champion["model_name"],
                                            champion["model_version"])) / "model.json"
    sidecar.write_text(json.dumps(json.loads(sidecar.read_text())))
    reproduction = reproduce_predictions(copy.build(), copy.lake(), copy.store(), month)
    assert reproduction.differences == ["scores", "champion artifacts"]


def test_reproduce_refuses_what_was_never_published(warehouse):
    done = run_vintage("model", "reproduce", "lightgbm-2023-06", "--warehouse",
                       str(warehouse.root), "--source", str(warehouse.source))
    assert done.returncode == 2
    assert "nothing was trained in 2023-06" in done.stderr and "Traceback" not in done.stderr
    done = run_vintage("model", "reproduce", "lightgbm-24-06", "--warehouse",
                       str(warehouse.root))
    assert done.returncode == 2 and "expected a model version" in done.stderr


def test_reproduce_says_when_a_recorded_version_was_vacuumed(warehouse, tmp_path):
    copy = warehouse.copy(tmp_path)
    uri, month = str(copy.root / "gold" / "label_store"), date(2023, 12, 1)
    write_deltalake(uri, DeltaTable(uri).to_pyarrow_table(filters=[("month", "=", month)]),
                    mode="overwrite", partition_by=["month"],
                    predicate=f"month = '{month.isoformat()}'")
    assert DeltaTable(uri).vacuum(retention_hours=0, enforce_retention_duration=False,
                                  dry_run=False)
    with pytest.raises(ReproduceError, match=r"gold.label_store v1\) is gone, vacuumed"):
        reproduce_model(copy.build(), copy.lake(), copy.store(), "lightgbm-2024-02")


# -- calibrated models and a cut-off by approval rate -----------------------------------------


def test_the_registry_records_each_models_calibrator(warehouse):
    store = warehouse.store()
    records = rows(warehouse, MODEL_REGISTRY)
    assert records
    for record in records:
        calibration = json.loads(record["calibration"])
        assert calibration["method"] == CALIBRATED[record["algorithm"]]
        sidecar = json.loads((Path(record["artifact_path"]) / "model.json").read_text())
        assert sidecar["calibration"] == calibration
        model = store.load(record["model_name"], record["model_version"])
        assert model.calibrator.method == calibration["method"]


def test_predictions_are_calibrated_and_cut_at_the_target_approval_rate(warehouse):
    predictions = rows(warehouse, PREDICTIONS)
    reference = rows(warehouse, SCORE_REFERENCE)
    store = warehouse.store()
    for month in sorted({p["application_month"] for p in predictions}):
        scored = [p for p in predictions if p["application_month"] == month]
        version = scored[0]["model_version"]
        scores = np.sort([r["score"] for r in reference if r["model_version"] == version])
        # the highest cut-off (a distinct reference score, or 1.0) approving at most 80%
        candidates = [*np.unique(scores), 1.0]
        expected = max(c for c in candidates if (scores < c).mean() <= APPROVAL_RATE + 1e-12)
        assert {p["decision_cutoff"] for p in scored} == {expected}
        assert all((p["decision"] == "decline") == (p["score"] >= expected)
                   for p in scored if p["decision"] != "refer")
        assert all(p["reason_1"] for p in scored if p["decision"] == "decline")
        model = store.load(version.rsplit("-", 2)[0], version)
        params = model.calibrator.params
        if model.calibrator.method == "platt":  # p = expit(a logit(raw p) + b)
            loans = [p["loan_id"] for p in scored]
            features = rows(warehouse, FEATURE_STORE,
                            where=f"WHERE application_month = DATE '{month}'")
            order = {row["loan_id"]: row for row in features}
            frame = pd.DataFrame([order[loan] for loan in loans])
            raw = model.raw_score(frame)
            assert np.allclose([p["score"] for p in scored],
                               special.expit(params["a"] * raw + params["b"]), atol=1e-9)
