"""The validation report of a model version: one self-contained HTML file per candidate of
ml.model_registry (no external CSS, script, font or image: charts are inline PNG data URIs),
which the person who signs a champion off reads (README, For risk teams, Validation report).

Every figure comes from the published tables, computed by the functions the platform uses for
it elsewhere, never a second way:

- version, algorithm, parameters, window, samples and metrics per split, checks: the version's
  ml.model_registry record;
- features: the registry's importances and ml.feature_iv of the trained month (IV, IV band);
- calibration by grade on the out-of-time (OOT) reference, ml.score_reference: `grade_of`,
  `calibration_by_grade` and `metrics.hosmer_lemeshow`, as monitoring.calibration;
- the cut-off table: `cutoffs.Reference.bands` and `choose`, as ml.cutoff_strategy;
- stability of the OOT month against the training split: sql/monitoring/stability.sql, as
  monitoring.stability (the training split scored by the version's own artifacts);
- swap sets and sign-off: ml.swap_sets, ml.model_aliases and ml.model_approvals of the month;
- limitations: from all of the above and gold.source_coverage of the window's application
  months, plus general ones stated once in the template.

The file is `validation/<version>.html` of the warehouse's report store (a folder or the
bucket, `report_store`); ml.validation_reports has one row per version with its URI. The asset
runs after the champion gate (and again in the job champion_approval), so a report shows the
version's latest sign-off.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cache
from html.parser import HTMLParser
from numbers import Integral
from pathlib import Path

import dagster as dg
import pandas as pd

from ml_assets import metrics
from ml_assets.assets.models import ALIAS, MODEL_CHECKS, records_table, training_frame
from ml_assets.assets.monitoring import (
    SCORE,
    feature_kinds,
    report_link,
    report_store,
    rows_of,
    validation_file,
)
from ml_assets.cutoffs import Reference
from ml_assets.metadata import markdown_table
from ml_assets.months import add_months, folder_label, months_between
from ml_assets.plots import bar_chart, calibration_chart, data_uri, tradeoff_chart
from ml_assets.rating import calibration_by_grade, grade_of
from ml_assets.spec import RESULT, Check, Step
from ml_assets.tables import VALIDATION_REPORTS
from resources.lake import Table

TEMPLATE = "validation_report.html.j2"
TEMPLATES = Path(__file__).parent / "templates"
TOP_IMPORTANCE = 15  # features in the importance chart
TOP_CSI = 10  # features in the stability table
SELF_CONTAINED = Check("report_self_contained",
                       "Every validation report of the month was written and loads nothing from "
                       "elsewhere (no external stylesheet, script, font or image)")
IMPORTANCE_KIND = {
    "lightgbm": "LightGBM gain: the loss reduction of the splits on the feature",
    "logistic_regression": "|coefficient| on the standardised value (|coefficient x standard "
                           "deviation| in the feature's units), summed over its design columns",
}
_LABEL_DEF = re.compile(r"(\d+)dpd_(\d+)mob")


@dataclass(frozen=True)
class ValidationReportRecord:
    """A row of ml.validation_reports: where a model version's validation report is, and what
    it says in brief."""

    trained_month: date
    model_version: str
    model_name: str
    algorithm: str
    label_def: str
    oot_month: date
    oot_loans: int
    oot_auc: float | None
    checks_passed: bool
    sign_off: str | None  # approved | proposed | rejected; None when the gate did not propose it
    signed_off_by: str | None
    gate: str  # what the champion gate and the people made of it, in a sentence
    limitations: list[str]  # found in the data (the report adds the general ones)
    report_uri: str  # the HTML file: an absolute local path or s3://...
    written_at: datetime


def label_words(label_def: str) -> str:
    """A label definition `{dpd}dpd_{mob}mob` in words (gold.label_store's definition)."""
    match = _LABEL_DEF.fullmatch(label_def)
    if not match:
        return label_def
    dpd, mob = match.groups()
    return (f"default = {dpd} or more days past due at months on book {mob}, observed {mob} "
            f"months after the application month")


def sign_off_state(version: str, alias: dict | None, approvals: list[dict]) -> dict:
    """What the champion gate and the people made of `version` in its trained month: `status`
    (approved, proposed, rejected by a person; None when not proposed), `by`, `reason`,
    `at`, the people's `decisions` about it (oldest first) and a `summary` sentence. `alias`:
    the month's ml.model_aliases row (None before the gate decided it); `approvals`: the
    month's ml.model_approvals rows."""
    decisions = sorted((a for a in approvals if a["model_version"] == version),
                       key=lambda a: a["decided_at"])
    state = {"status": None, "by": None, "reason": None, "at": None, "decisions": decisions}
    if alias is None:
        return {**state, "summary": "the champion gate has not decided its month yet"}
    signed = {"status": alias["status"], "by": alias["signed_off_by"],
              "reason": alias["sign_off_reason"], "at": alias["signed_off_at"]}
    if alias["model_version"] == version and alias["decision"] in ("first", "promoted"):
        role = ("first champion" if alias["decision"] == "first"
                else f"champion in place of {alias['previous_version']}")
        return {**state, **signed, "summary": f"{role} from {folder_label(alias['month'])}, "
                                              f"approved by {signed['by']}: {signed['reason']}"}
    if alias["challenger_version"] == version and alias["status"] == "proposed":
        return {**state, **signed, "summary": "proposed as champion, awaiting sign-off "
                                              "(champion.approval: manual)"}
    if alias["challenger_version"] == version and alias["status"] == "rejected":
        return {**state, **signed, "summary": f"proposed as champion, rejected by "
                                              f"{signed['by']}: {signed['reason']}"}
    if decisions and decisions[-1]["action"] == "reject":  # e.g. a hand promotion taken back
        last = decisions[-1]
        return {**state, "status": "rejected", "by": last["decided_by"],
                "reason": last["reason"], "at": last["decided_at"],
                "summary": f"rejected by {last['decided_by']}: {last['reason']}; the month's "
                           f"champion is {alias['model_version'] or 'none'}"}
    challenger = alias["challenger_version"]
    if challenger and challenger != version:
        return {**state, "summary": f"not proposed as champion: the month's challenger was "
                                    f"{challenger}, the candidate with the best OOT AUC among "
                                    f"those that passed their checks (the gate: "
                                    f"{alias['reason']})"}
    return {**state, "summary": f"not proposed as champion: {alias['reason']}"}


def calibration_words(calibration: dict) -> str:
    """The registry's `calibration` (JSON as a dict) in words."""
    method = calibration.get("method", "none")
    if method == "platt":
        return (f"Platt scaling fitted on the window's test split: p' = 1 / (1 + exp(-(a "
                f"logit(p) + b))), a = {calibration['a']:.4f}, b = {calibration['b']:.4f}")
    if method == "isotonic":
        return (f"isotonic regression fitted on the window's test split ({len(calibration['x'])}"
                " thresholds)")
    return "none: the scores are the model's own probabilities (calibration: none)"


def oot_stability(step: Step, record: dict, train: pd.DataFrame,
                  oot: pd.DataFrame) -> pd.DataFrame | None:
    """PSI of the score and CSI of every model feature of the OOT loans (`oot`, with `score`)
    against the training split (`train`, with `score`), by sql/monitoring/stability.sql with
    monitoring's thresholds: rows indexed by variable; None when a side has no loans."""
    if train.empty or oot.empty:
        return None
    thresholds, con = step.config.monitoring, step.con
    for name, frame in (("reference_rows", train), ("actual_rows", oot)):
        con.register("stability_side", frame)
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM stability_side")
        con.unregister("stability_side")
    numeric, categorical = feature_kinds(record)
    step.sql("monitoring/stability", {
        "numeric": [SCORE, *numeric], "categorical": categorical,
        "floor": thresholds.psi_floor, "watch": thresholds.psi_watch,
        "act": thresholds.psi_act, "outage": thresholds.outage_missing_increase,
        "outage_variables": [], "month": record["oot_month"],
        "model_version": record["model_version"]})
    return con.execute(f"SELECT * FROM {RESULT}").df().set_index("variable")


def data_limitations(step: Step, record: dict, train_loans: int, calibration: list[dict],
                     hl: dict, iv: dict[str, dict], stability: pd.DataFrame | None,
                     coverage: list[dict], checks: dict[str, bool]) -> list[str]:
    """The limitations of a version that its data shows, one sentence each: failed checks, a
    small OOT sample (under monitoring.min_loans), a shorter window than configured, a sampled
    training split, no calibration, grades or deciles whose PD looks too low on the OOT
    reference, features in the suspicious IV band, an OOT month that moved from training, the
    window's feature sources with coverage warnings, and the early read not yet available."""
    thresholds, models, label = step.config.monitoring, step.models, step.config.label
    found = []
    failed = [name for name, passed in checks.items() if not passed]
    if failed:
        found.append(f"failed its checks: {', '.join(failed)}; it cannot be champion")
    if record["n_oot"] < thresholds.min_loans:
        found.append(f"small out-of-time sample: {record['n_oot']} loans, under "
                     f"monitoring.min_loans ({thresholds.min_loans}): its OOT metrics, "
                     "calibration and cut-off table are uncertain")
    window = months_between(record["window_first"], record["window_last"]) + 1
    if window < models.window_months:
        found.append(f"trained on a window of {window} labelled months, fewer than the "
                     f"configured {models.window_months} (training.window_months)")
    if record["n_train"] < train_loans:
        found.append(f"trained on a sample of {record['n_train']} of the {train_loans} loans of "
                     "the training split (training.max_training_rows)")
    if json.loads(record["calibration"]).get("method", "none") == "none":
        found.append("uncalibrated: its scores are the model's own probabilities; the "
                     "calibration by grade in this report is the evidence that they can be "
                     "read as PDs")
    low = [r["grade"] for r in calibration if r["loans"] and min(
        r["binomial_p_value"], r["jeffreys_p_value"]) < thresholds.calibration_warn_p]
    if low:
        found.append(f"PD possibly too low on the OOT reference in grade {', '.join(low)} "
                     f"(binomial or Jeffreys p < {thresholds.calibration_warn_p})")
    if hl["p_value"] is not None and hl["p_value"] < thresholds.calibration_warn_p:
        found.append(f"the scores do not fit the OOT default rates over their deciles "
                     f"(Hosmer-Lemeshow p = {hl['p_value']:.4g} < "
                     f"{thresholds.calibration_warn_p})")
    suspicious = [name for name, row in iv.items() if row["iv_band"] == "suspicious"]
    if suspicious:
        found.append(f"feature(s) in the suspicious IV band (>= {models.iv_bounds[3]}): "
                     f"{', '.join(suspicious)}: so strong a feature may leak the label; check "
                     "that its value was known at application")
    if stability is not None:
        score_psi = float(stability.loc[SCORE, "psi"])
        if score_psi >= thresholds.psi_watch:
            found.append(f"the OOT month's scores moved from the training split's: PSI "
                         f"{score_psi:.3f} ({stability.loc[SCORE, 'band']} band)")
        acting = stability[(stability.index != SCORE) & (stability["band"] == "act")]
        if len(acting):
            found.append(f"feature(s) in the act band between training and OOT (CSI >= "
                         f"{thresholds.psi_act}): {', '.join(acting.index)}")
    by_source: dict[str, list[dict]] = {}
    for row in coverage:
        by_source.setdefault(row["source"], []).append(row)
    for source, rows in sorted(by_source.items()):
        months = ", ".join(f"{folder_label(r['application_month'])} ({r['status']})"
                           for r in rows)
        found.append(f"{source} had coverage warnings in the window's application months: "
                     f"{months}; last: {rows[-1]['message']}")
    early, target = step.config.early_read, label
    trained = record["trained_month"]
    found.append(f"no performance measured after training yet: its first predictions "
                 f"({folder_label(trained)}) get an early read ({early.name}) in "
                 f"{folder_label(add_months(trained, early.mob))} and the target "
                 f"({target.name}) in {folder_label(add_months(trained, target.mob))}")
    return found


def version_report(step: Step, record: dict, context: dict) -> tuple[str, dict]:
    """The report of one registry `record` (a dict of its columns): its HTML and the sign-off
    state. `context`: what the month's versions share (alias, approvals, swap sets, IV,
    coverage, the training and OOT splits)."""
    models, thresholds = step.models, step.config.monitoring
    version = record["model_version"]
    summary = json.loads(record["metrics"])
    checks = json.loads(record["checks"])
    importances = json.loads(record["importances"])
    calibration = json.loads(record["calibration"])
    reference = pd.DataFrame(rows_of(step.con, "SELECT loan_id, label, score FROM "
                                               "score_reference WHERE model_version = $version "
                                               "ORDER BY loan_id", {"version": version}))
    if reference.empty:
        reference = pd.DataFrame({"loan_id": [], "label": [], "score": []})
    reference["grade"] = grade_of(reference["score"].to_numpy(), models.rating_scale)
    by_grade = calibration_by_grade(reference, models.rating_scale)
    hl = metrics.hosmer_lemeshow(reference["label"].to_numpy(), reference["score"].to_numpy(),
                                 reference["loan_id"].to_numpy())
    bands, chosen = [], None
    if len(reference):
        cutoffs = Reference(reference["score"], reference["label"])
        bands = cutoffs.bands(models.cutoff_bands)
        chosen = cutoffs.choose(models.cutoff_mode, models.decision_cutoff)
    train, oot = context["train"], context["oot"]
    model = step.resources["model_store"].load(record["model_name"], version)
    stability = oot_stability(
        step, record, train.assign(score=model.predict(train)) if len(train) else train,
        oot.merge(reference[["loan_id", "score"]], on="loan_id") if len(oot) else oot)
    iv = context["iv"]
    total = sum(importances.values()) or 1.0
    features = [{"rank": rank, "feature": name,
                 "kind": "categorical" if name in (record["categorical_features"] or ())
                 else "numeric", "importance": value, "share": value / total,
                 "iv": iv.get(name, {}).get("feature_iv"),
                 "iv_band": iv.get(name, {}).get("iv_band")}
                for rank, (name, value) in enumerate(importances.items(), start=1)]
    state = sign_off_state(version, context["alias"], context["approvals"])
    limitations = data_limitations(step, record, len(train), by_grade, hl, iv, stability,
                                   context["coverage"], checks)
    window = months_between(record["window_first"], record["window_last"]) + 1
    top = dict(list(importances.items())[:TOP_IMPORTANCE])
    csi = None
    if stability is not None:
        drift = stability.drop(index=SCORE).sort_values("psi", ascending=False)
        csi = {"score_psi": float(stability.loc[SCORE, "psi"]),
               "score_band": stability.loc[SCORE, "band"],
               "bands": drift["band"].value_counts().to_dict(),
               "rows": [{"variable": v, **r} for v, r in
                        drift.head(TOP_CSI).to_dict("index").items()]}
    html = render({
        "record": record, "written_at": _now(), "window_months": window,
        "application_first": add_months(record["window_first"], -step.config.label.mob),
        "application_last": add_months(record["window_last"], -step.config.label.mob),
        "label_words": label_words(record["label_def"]),
        "params": json.loads(record["params"]),
        "input_versions": json.loads(record["input_versions"]),
        "splits": [{"split": split, **summary[split]} for split in ("train", "test", "oot")],
        "checks": [{"name": name, "passed": checks.get(name),
                    "description": text.format(floor=models.min_oot_auc)}
                   for name, text in MODEL_CHECKS.items()],
        "features": features, "importance_kind": IMPORTANCE_KIND.get(record["algorithm"], ""),
        "importance_chart": data_uri(bar_chart(top, f"{version}: top features", "importance")),
        "calibration_method": calibration_words(calibration), "calibration": by_grade,
        "hl": hl, "reference_loans": len(reference),
        "calibration_chart": data_uri(calibration_chart(
            [r["grade"] for r in by_grade], [r["predicted_pd"] for r in by_grade],
            [r["observed_rate"] for r in by_grade], [r["loans"] for r in by_grade],
            f"{version}: calibration by grade, OOT {folder_label(record['oot_month'])}")),
        "bands": bands, "chosen": chosen, "cutoff_mode": models.cutoff_mode,
        "cutoff_target": models.decision_cutoff,
        "tradeoff_chart": data_uri(tradeoff_chart(
            [b["approval_rate"] for b in bands], [b["expected_bad_rate"] for b in bands],
            (chosen.approval_rate, chosen.expected_bad_rate) if chosen else None,
            f"{version}: approval rate vs expected bad rate (OOT reference)")) if bands else None,
        "stability": csi, "thresholds": thresholds,
        "alias": context["alias"], "state": state,
        "swaps": [s for s in context["swaps"] if s["new_version"] == version],
        "limitations": limitations,
    })
    return html, {**state, "limitations": limitations}


def validation_reports_compute(step: Step) -> dict[Table, str]:
    """ml.validation_reports: per trained month, the validation report of every candidate of
    ml.model_registry (`version_report`), written to `validation/<version>.html` of the report
    store, one row each; the month's metadata links every report (`<model name>_validation_
    report`) and the check `report_self_contained`. A month without candidates has no rows,
    and says so."""
    con, store = step.con, report_store(step.lake)
    records: list[ValidationReportRecord] = []
    for month in step.months:
        registry = rows_of(con, "SELECT * FROM model_registry WHERE trained_month = $month "
                                "ORDER BY model_version", {"month": month})
        if not registry:
            why = "no model trained this month (see ml/model_registry)"
            step.metadata(month, {"reason": why})
            step.check(SELF_CONTAINED.name, month, True, {"reports": 0}, description=why)
            continue
        aliases = rows_of(con, "SELECT * FROM model_aliases WHERE month = $month AND alias = "
                               "$alias", {"month": month, "alias": ALIAS})
        context = {
            "alias": aliases[0] if aliases else None,
            "approvals": rows_of(con, "SELECT * FROM model_approvals WHERE month = $month",
                                 {"month": month}),
            "swaps": rows_of(con, "SELECT * FROM swap_sets WHERE month = $month ORDER BY swap",
                             {"month": month}),
            "iv": {r["feature"]: r for r in rows_of(
                con, "SELECT DISTINCT feature, feature_iv, iv_band FROM feature_iv WHERE "
                     "training_month = $month", {"month": month})},
            "coverage": rows_of(con, "SELECT application_month, source, status, message FROM "
                                     "source_coverage WHERE status <> 'ok' AND application_month "
                                     "IN (SELECT application_month FROM training_set WHERE "
                                     "training_month = $month) ORDER BY source, "
                                     "application_month", {"month": month}),
            "train": training_frame(con, "training_set", month, "train"),
            "oot": training_frame(con, "training_set", month, "oot"),
        }
        written, problems = {}, {}
        for record in registry:
            version = record["model_version"]
            html, state = version_report(step, record, context)
            uri = store.write_bytes(validation_file(version), html.encode())
            written[record["model_name"]] = uri
            if external := external_references(html):
                problems[version] = ", ".join(external[:5])
            records.append(ValidationReportRecord(
                trained_month=month, model_version=version, model_name=record["model_name"],
                algorithm=record["algorithm"], label_def=record["label_def"],
                oot_month=record["oot_month"], oot_loans=record["n_oot"],
                oot_auc=record["oot_auc"], checks_passed=record["checks_passed"],
                sign_off=state["status"], signed_off_by=state["by"], gate=state["summary"],
                limitations=state["limitations"], report_uri=uri, written_at=_now()))
        step.check(SELF_CONTAINED.name, month, not problems,
                   {"reports": len(written), **problems},
                   description="; ".join(f"{v} loads {what}" for v, what in problems.items())
                   or None)
        month_rows = [r for r in records if r.trained_month == month]
        step.metadata(month, {
            **{f"{name}_validation_report": dg.MetadataValue.url(report_link(uri))
               for name, uri in written.items()},
            **{f"{name}_validation_report_path": dg.MetadataValue.path(uri)
               for name, uri in written.items()},
            "reports": dg.MetadataValue.md(markdown_table(
                ["model_version", "oot_auc", "checks_passed", "sign_off", "gate", "limitations"],
                [[r.model_version, r.oot_auc, r.checks_passed, r.sign_off or "not proposed",
                  r.gate, len(r.limitations)] for r in month_rows])),
        })
    step.result_metadata["reports_folder"] = dg.MetadataValue.path(store.uri_of("validation"))
    con.register("report_rows", records_table(ValidationReportRecord, records))
    return {VALIDATION_REPORTS: "SELECT * FROM report_rows"}


# -- the HTML ---------------------------------------------------------------------------------


def _number(value, digits: int = 4) -> str:
    """A table cell: n/a for a missing value, an integer as it is, a float to `digits`."""
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    if isinstance(value, Integral):
        return str(value)
    return f"{float(value):.{digits}f}"


def _p_value(value) -> str:
    return "n/a" if value is None or value != value else f"{float(value):.4g}"


@cache
def _environment():
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters.update(num=_number, p=_p_value, month=folder_label)
    return environment


def render(context: dict) -> str:
    """The report's HTML from the template (ml_assets/templates/validation_report.html.j2)."""
    return _environment().get_template(TEMPLATE).render(**context)


class _Loads(HTMLParser):
    """The attributes of a page that load or link something outside it."""

    ATTRIBUTES = ("src", "href", "srcset", "action", "data", "poster", "background")

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in self.ATTRIBUTES and value and not value.startswith(("data:", "#")):
                self.found.append(f"<{tag} {name}={value[:80]}>")


def external_references(html: str) -> list[str]:
    """What an HTML page would load from elsewhere: each src/href-like attribute that is not a
    data: URI or an anchor of the page, and each CSS url(...) that is not a data: URI or
    @import. [] for a self-contained page."""
    parser = _Loads()
    parser.feed(html)
    css = [f"url({u[:80]})" for u in re.findall(r"url\(\s*['\"]?([^'\")\s]+)", html)
           if not u.startswith("data:")]
    return [*parser.found, *css, *(["@import"] if "@import" in html else [])]


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
