"""The validation report of every model version: the sign-off sentence, the label in words and
the self-containment test on hand-made inputs; then, on a small generated warehouse (scale 0.2,
2023-01..2024-03, candidates from 2024-01, one candidate promoted by hand through the job
champion_approval), a report per candidate that parses as HTML and loads nothing from
elsewhere, linked from the registry's materialisation, whose numbers equal the tables: the
metrics by split (ml.model_registry), the features' IV (ml.feature_iv), the calibration by
grade (recomputed here from ml.score_reference with numpy and scipy), the cut-off bands
(ml.cutoff_strategy) and the swap set and sign-off of the promoted version (ml.swap_sets,
ml.model_aliases); and `vintage report`."""

from __future__ import annotations

import json
import re
from datetime import date, datetime
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import dagster as dg
import numpy as np
import pytest
from scipy import stats

from ml_assets.jobs import approval_run_config, champion_approval
from ml_assets.tables import (
    CUTOFF_STRATEGY,
    FEATURE_IV,
    MODEL_ALIASES,
    MODEL_REGISTRY,
    SCORE_REFERENCE,
    SWAP_SETS,
    VALIDATION_REPORTS,
)
from ml_assets.validation import external_references, label_words, sign_off_state
from tests.conftest import run_vintage
from tests.test_models_delta import Warehouse, one_thread_models_file, rows, succeeded

pytestmark = pytest.mark.xdist_group("validation-report")

FIRST, FIRST_TRAINED, LAST = date(2023, 1, 1), date(2024, 1, 1), date(2024, 3, 1)
HAND_MONTH = date(2024, 2, 1)
APPROVER, REASON = "Ana Risk", "validated: swap-in better than swap-out (MRM-7)"


# -- on hand-made inputs ----------------------------------------------------------------------


def alias(**values) -> dict:
    row = {"month": HAND_MONTH, "model_version": "logistic-2024-01", "decision": "kept",
           "reason": "challenger lightgbm-2024-02 does not beat the champion",
           "previous_version": "logistic-2024-01", "challenger_version": "lightgbm-2024-02",
           "status": None, "signed_off_by": None, "sign_off_reason": None,
           "signed_off_at": None}
    return {**row, **values}


def test_the_sign_off_sentence_follows_the_gate_and_the_people():
    at = datetime(2024, 3, 2, 9)
    promoted = alias(model_version="lightgbm-2024-02", decision="promoted", status="approved",
                     signed_off_by="Ana", sign_off_reason="ok", signed_off_at=at)
    decisions = [{"model_version": "lightgbm-2024-02", "decided_at": at, "action": "approve",
                  "decided_by": "Ana", "reason": "ok"}]
    state = sign_off_state("lightgbm-2024-02", promoted, decisions)
    assert (state["status"], state["by"], state["reason"]) == ("approved", "Ana", "ok")
    assert state["summary"] == ("champion in place of logistic-2024-01 from 2024-02, approved "
                                "by Ana: ok")
    assert [d["action"] for d in state["decisions"]] == ["approve"]
    other = sign_off_state("logistic-2024-02", promoted, decisions)
    assert other["status"] is None and other["decisions"] == []
    assert other["summary"] == (
        "not proposed as champion: the month's challenger was lightgbm-2024-02, the candidate "
        "with the best OOT AUC among those that passed their checks (the gate: challenger "
        "lightgbm-2024-02 does not beat the champion)")
    proposed = sign_off_state("lightgbm-2024-02", alias(status="proposed"), [])
    assert proposed["status"] == "proposed" and "awaiting sign-off" in proposed["summary"]
    rejected = sign_off_state("lightgbm-2024-02", alias(
        status="rejected", signed_off_by="Bo", sign_off_reason="unstable"), [])
    assert rejected["summary"] == "proposed as champion, rejected by Bo: unstable"
    # approved by hand, then rejected: the rejection counts, though the gate never proposed it
    taken_back = [{"model_version": "logistic-2024-02", "decided_at": at, "action": "approve",
                   "decided_by": "Bo", "reason": "by hand"},
                  {"model_version": "logistic-2024-02", "decided_at": datetime(2024, 3, 3),
                   "action": "reject", "decided_by": "Cy", "reason": "not explainable"}]
    back = sign_off_state("logistic-2024-02", alias(), taken_back)
    assert (back["status"], back["by"], back["reason"]) == ("rejected", "Cy", "not explainable")
    assert back["summary"] == ("rejected by Cy: not explainable; the month's champion is "
                               "logistic-2024-01")
    kept = sign_off_state("lightgbm-2024-02", alias(), [])
    assert kept["status"] is None
    assert kept["summary"] == ("not proposed as champion: challenger lightgbm-2024-02 does not "
                               "beat the champion")
    assert sign_off_state("lightgbm-2024-02", None, [])["summary"].startswith(
        "the champion gate has not decided")


def test_the_label_in_words():
    assert label_words("30dpd_6mob") == ("default = 30 or more days past due at months on book "
                                         "6, observed 6 months after the application month")
    assert label_words("custom") == "custom"


def test_external_references_are_found():
    page = ('<html><head><link rel="stylesheet" href="https://cdn.example/x.css">'
            '<style>body { background: url("http://example.com/a.png"); }</style>'
            '<script src="//example.com/a.js"></script></head><body>'
            '<img src="data:image/png;base64,AAAA"><a href="#gate">gate</a></body></html>')
    found = external_references(page)
    assert len(found) == 3, found
    assert external_references('<p><img src="data:image/png;base64,AA"></p>') == []


# -- on a generated warehouse -----------------------------------------------------------------


class Page(HTMLParser):
    """A report read with the standard library's parser: its title, the rows of each table
    with an id (the cells' text), the text of every element with an id, every src/href."""

    def __init__(self, html: str):
        super().__init__()
        self.title, self.tables, self.texts, self.links = "", {}, {}, []
        self._stack: list[tuple[str, str | None]] = []
        self._table, self._row, self._cell = None, None, None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[a] for a in ("src", "href") if a in attrs]
        self._stack.append((tag, attrs.get("id")))
        if attrs.get("id"):
            self.texts[attrs["id"]] = ""
        if tag == "table" and attrs.get("id"):
            self._table = self.tables.setdefault(attrs["id"], [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(" ".join(self._cell.split()))
            self._cell = None
        elif tag == "table":
            self._table, self._row = None, None
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        if self._stack and self._stack[-1][0] == "title":
            self.title += data
        if self._cell is not None:
            self._cell += data
        for _, element in self._stack:
            if element:
                self.texts[element] += data

    def records(self, table: str) -> list[dict[str, str]]:
        header, *body = self.tables[table]
        return [dict(zip(header, row, strict=True)) for row in body]


def number(text: str) -> float | None:
    return None if text == "n/a" else float(text)


def close(text: str, value, digits: int = 4) -> bool:
    """A cell shows `value` to `digits` decimals (or n/a for None)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return text == "n/a"
    return abs(float(text) - float(value)) <= 0.5 * 10 ** -digits + 1e-12


def p_close(text: str, value) -> bool:
    """A p-value cell (4 significant digits) shows `value`."""
    return text == "n/a" if value is None else float(text) == pytest.approx(value, rel=1e-3,
                                                                             abs=1e-300)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> dict:
    """Raw .. predictions and the credit-review tables for 2023-01..2024-03 (auto mode), then
    the job champion_approval approving by hand the 2024-02 candidate that is not champion:
    the warehouse, the run's registry metadata per month, and the version promoted."""
    from ml_assets.demo.generator import generate

    folder = tmp_path_factory.mktemp("validation-report")
    generate(folder / "source", scale=0.2, seed=3)
    built = Warehouse(folder / "warehouse", folder / "source", one_thread_models_file(folder),
                      review=True)
    result = built.materialise(FIRST, LAST)
    succeeded(result)
    registry_metadata = {
        m.partition: m.metadata for m in (e.event_specific_data.materialization
                                          for e in result.get_asset_materialization_events())
        if m.asset_key == dg.AssetKey(["ml", "model_registry"])}
    champion = next(r for r in rows(built, MODEL_ALIASES) if r["month"] == HAND_MONTH)
    chosen = next(r["model_version"] for r in rows(built, MODEL_REGISTRY)
                  if r["trained_month"] == HAND_MONTH and r["checks_passed"]
                  and r["model_version"] != champion["model_version"])
    approval = built.definitions([champion_approval]).resolve_job_def(
        champion_approval.name).execute_in_process(
        run_config=approval_run_config(chosen, "approve", APPROVER, REASON),
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
        tags={"dagster/asset_partition_range_start": HAND_MONTH.isoformat(),
              "dagster/asset_partition_range_end": LAST.isoformat()})
    succeeded(approval)
    return {"warehouse": built, "registry_metadata": registry_metadata, "promoted": chosen}


def report_rows(world) -> dict[str, dict]:
    return {r["model_version"]: r for r in rows(world["warehouse"], VALIDATION_REPORTS)}


def page(world, version: str) -> Page:
    return Page(Path(report_rows(world)[version]["report_uri"]).read_text())


def test_every_candidate_has_a_self_contained_report_linked_from_the_registry(warehouse):
    registry = rows(warehouse["warehouse"], MODEL_REGISTRY)
    reports = report_rows(warehouse)
    assert registry and set(reports) == {r["model_version"] for r in registry}
    root = warehouse["warehouse"].root.resolve()
    for record in registry:
        version = record["model_version"]
        path = Path(reports[version]["report_uri"])
        assert path == root / "reports" / "validation" / f"{version}.html"
        html = path.read_text()
        parsed = Page(html)
        assert parsed.title == f"Validation report: {version}"
        assert {"metrics", "checks", "feature-table", "calibration-table", "cutoff-table",
                "stability-table", "data-limitations"} <= set(parsed.tables) | set(parsed.texts)
        # nothing loaded from elsewhere: every src/href is a data: URI or an anchor
        assert all(link.startswith(("data:", "#")) for link in parsed.links), parsed.links
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", re.sub(
            r"data:[^\"']+", "", html)), version
        # three charts: importance, calibration, cut-off trade-off
        assert sum(link.startswith("data:image/png;base64,") for link in parsed.links) == 3
        # the registry's materialisation links it
        metadata = warehouse["registry_metadata"][record["trained_month"].isoformat()]
        link = metadata[f"{record['model_name']}_validation_report"]
        assert isinstance(link, dg.UrlMetadataValue)
        assert Path(unquote(urlparse(link.url).path)) == path


def test_the_label_window_and_metrics_are_the_registrys(warehouse):
    for record in rows(warehouse["warehouse"], MODEL_REGISTRY):
        parsed = page(warehouse, record["model_version"])
        facts = {row[0]: row[1] for row in parsed.tables["model-facts"]}
        assert facts["label definition"].startswith(
            f"{record['label_def']}: default = 30 or more days past due at months on book 6")
        first, last = record["window_first"], record["window_last"]
        months = (last.year - first.year) * 12 + last.month - first.month + 1
        assert facts["training window"].startswith(
            f"{months} label months, {first:%Y-%m} to {last:%Y-%m}")
        assert facts["out-of-time month"].startswith(f"{record['oot_month']:%Y-%m}")
        splits = {row["split"]: row for row in parsed.records("metrics")}
        for split in ("train", "test", "oot"):
            assert close(splits[split]["AUC"], record[f"{split}_auc"]), (split, record)
            assert int(splits[split]["loans"]) == record[f"n_{split}"]
        summary = json.loads(record["metrics"])
        assert close(splits["oot"]["Gini"], record["oot_gini"])
        assert close(splits["oot"]["KS"], record["oot_ks"])
        assert close(splits["oot"]["Brier"], record["oot_brier"])
        assert int(splits["oot"]["defaults"]) == summary["oot"]["defaults"]
        checks = {row["check"]: row["result"] for row in parsed.records("checks")}
        assert checks == {name: "passed" if passed else "failed"
                          for name, passed in json.loads(record["checks"]).items()}


def test_the_features_carry_the_registrys_importance_and_the_months_iv(warehouse):
    iv = {}
    for row in rows(warehouse["warehouse"], FEATURE_IV):
        iv[(row["training_month"], row["feature"])] = (row["feature_iv"], row["iv_band"])
    for record in rows(warehouse["warehouse"], MODEL_REGISTRY):
        table = page(warehouse, record["model_version"]).records("feature-table")
        importances = json.loads(record["importances"])
        assert [r["feature"] for r in table] == list(importances)
        assert len(table) == len(record["features"])
        for row in table:
            assert close(row["importance"], importances[row["feature"]])
            value, band = iv[(record["trained_month"], row["feature"])]
            assert close(row["IV"], value) and row["IV band"] == band


def test_calibration_by_grade_matches_scipy_on_the_reference(warehouse):
    """Grades, counts, mean PD, observed rate and both p-values recomputed from
    ml.score_reference with numpy and scipy.stats."""
    scale = warehouse["warehouse"].build().models.rating_scale
    bounds = np.array([b for _, b in scale])
    reference = rows(warehouse["warehouse"], SCORE_REFERENCE)
    for version in report_rows(warehouse):
        scores = np.array([r["score"] for r in reference if r["model_version"] == version])
        labels = np.array([r["label"] for r in reference if r["model_version"] == version])
        grade_index = np.minimum(np.searchsorted(bounds, scores, side="right"), len(bounds) - 1)
        table = page(warehouse, version).records("calibration-table")
        assert [r["grade"] for r in table] == [g for g, _ in scale]
        assert sum(int(r["loans"]) for r in table) == len(scores) > 0
        for index, row in enumerate(table):
            chosen = grade_index == index
            n, d = int(chosen.sum()), int(labels[chosen].sum())
            assert (int(row["loans"]), int(row["defaults"])) == (n, d), (version, row)
            if not n:
                assert row["mean PD"] == row["Jeffreys p"] == "n/a"
                continue
            pd_ = scores[chosen].mean()
            assert close(row["mean PD"], pd_) and close(row["observed rate"], d / n)
            assert p_close(row["binomial p"],
                           stats.binomtest(d, n, pd_, alternative="greater").pvalue)
            assert p_close(row["Jeffreys p"], stats.beta.cdf(pd_, d + 0.5, n - d + 0.5))


def test_the_cut_off_bands_are_the_cutoff_strategys(warehouse):
    """Each version ml.cutoff_strategy shows (the champion of a month) has the same bands in
    its report."""
    strategy = rows(warehouse["warehouse"], CUTOFF_STRATEGY)
    versions = {r["model_version"] for r in strategy}
    assert versions
    for version in versions:
        published = sorted((r for r in strategy if r["model_version"] == version),
                           key=lambda r: (r["month"], r["band"]))
        month = published[0]["month"]
        published = [r for r in published if r["month"] == month]
        table = page(warehouse, version).records("cutoff-table")
        assert len(table) == len(published)
        for row, band in zip(table, published, strict=True):
            assert int(row["band"]) == band["band"] and int(row["loans"]) == band["loans"]
            for cell, column in (("min score", "min_score"), ("max score", "max_score"),
                                 ("cut-off PD", "cutoff_pd"), ("approval rate", "approval_rate"),
                                 ("expected bad rate", "expected_bad_rate"),
                                 ("band default rate", "band_default_rate")):
                assert close(row[cell], band[column]), (version, cell)


def test_the_version_promoted_by_hand_shows_its_swap_set_and_sign_off(warehouse):
    promoted = warehouse["promoted"]
    row = report_rows(warehouse)[promoted]
    assert (row["sign_off"], row["signed_off_by"]) == ("approved", APPROVER)
    assert REASON in row["gate"]
    parsed = page(warehouse, promoted)
    assert parsed.texts["sign-off"] == "approved"
    assert APPROVER in parsed.texts["gate"] and REASON in parsed.texts["gate"]
    decisions = parsed.records("decisions")
    assert [(d["action"], d["by"], d["reason"]) for d in decisions] == [
        ("approve", APPROVER, REASON)]
    swaps = {s["swap"]: s for s in rows(warehouse["warehouse"], SWAP_SETS)
             if s["month"] == HAND_MONTH}
    assert {s["new_version"] for s in swaps.values()} == {promoted}
    shown = {r["swap"]: r for r in parsed.records("swap-set")}
    assert set(shown) == set(swaps)
    for kind, swap in swaps.items():
        assert (int(shown[kind]["loans"]), int(shown[kind]["bads"])) == (swap["loans"],
                                                                         swap["bads"])
        assert close(shown[kind]["bad rate"], swap["bad_rate"])
    # the version it replaced in that month is no longer champion there: its report says so
    others = [v for v, r in report_rows(warehouse).items()
              if r["trained_month"] == HAND_MONTH and v != promoted]
    for version in others:
        assert report_rows(warehouse)[version]["sign_off"] is None
        assert page(warehouse, version).texts["sign-off"] == "not proposed"


def test_limitations_come_from_the_data(warehouse):
    for version, row in report_rows(warehouse).items():
        text = page(warehouse, version).texts["data-limitations"]
        for limitation in row["limitations"]:
            assert " ".join(limitation.split()) in " ".join(text.split())
        # this warehouse's models are calibrated (isotonic, Platt: one_thread_models_file),
        # and no version has predictions measured yet
        assert not any(item.startswith("uncalibrated") for item in row["limitations"])
        facts = {r[0]: r[1] for r in page(warehouse, version).tables["model-facts"]}
        assert facts["calibration"].startswith(
            {"lightgbm": "isotonic regression", "logistic_regression": "Platt scaling"}[
                row["algorithm"]])
        month = row["trained_month"]
        early = f"{month.year + (month.month + 2) // 12}-{(month.month + 2) % 12 + 1:02d}"
        assert any(f"early read (30dpd_3mob) in {early}" in item for item in row["limitations"])


def test_vintage_report_copies_the_report_and_prints_its_path(warehouse, tmp_path):
    world = warehouse["warehouse"]
    version = warehouse["promoted"]
    env = dict(world.environ)
    done = run_vintage("report", version, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == report_rows(warehouse)[version]["report_uri"]
    out = tmp_path / "copy.html"
    done = run_vintage("report", version, "--out", str(out), env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out.resolve())
    assert out.read_bytes() == Path(report_rows(warehouse)[version]["report_uri"]).read_bytes()
    missing = run_vintage("report", "lightgbm-2023-06", env=env)  # never trained
    assert missing.returncode == 2
    assert "model version lightgbm-2023-06 is not in ml.model_registry" in missing.stderr
    other_name = run_vintage("report", version.replace("lightgbm", "nosuch")
                             .replace("logistic", "nosuch"), env=env)
    assert other_name.returncode == 2
    assert "the versions trained in" in other_name.stderr
