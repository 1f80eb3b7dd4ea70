"""What a credit-risk team reviews of the models (issue 12), as table specs: calibration by
rating grade when labels mature (monitoring.calibration), the champion's cut-off strategy
every month (ml.cutoff_strategy), and the weight of evidence and information value of every
model feature per training month (ml.feature_iv).

Calibration reads the matured predictions the way monitoring.performance does
(sql/monitoring/matured_predictions.sql: the predictions of application month L - mob with the
labels of label month L), keeps the target label (`label.dpd` at `label.mob`, e.g.
`30dpd_6mob`) and tests, per model version and grade of the rating master scale, whether the
predicted PDs are too low for the observed default rates; Hosmer-Lemeshow tests the month's
scores over their deciles.
"""

from __future__ import annotations

from datetime import date

import dagster as dg
import pyarrow as pa

from ml_assets import metrics
from ml_assets.assets.models import (
    ALIAS,
    SPLIT_COLUMNS,
    champion_reference,
    month_cutoff,
    training_frame,
)
from ml_assets.assets.monitoring import Verdict, record_verdicts
from ml_assets.metadata import markdown_table
from ml_assets.months import folder_label
from ml_assets.partitions import upstream_months
from ml_assets.plots import bar_chart, calibration_chart, tradeoff_chart
from ml_assets.rating import calibration_by_grade, grade_of
from ml_assets.settings import MonitoringSettings
from ml_assets.spec import ERROR, RESULT, WARN, Build, Check, Input, Step, TableSpec
from ml_assets.tables import (
    CALIBRATION,
    CUTOFF_STRATEGY,
    FEATURE_IV,
    LABEL_STORE,
    MODEL_ALIASES,
    MODEL_APPROVALS,
    MODEL_REGISTRY,
    PREDICTIONS,
    SCORE_REFERENCE,
    SOURCE_COVERAGE,
    SWAP_SETS,
    TRAINING_SET,
    VALIDATION_REPORTS,
)
from ml_assets.validation import SELF_CONTAINED, validation_reports_compute
from ml_assets.woe import iv_band, woe_bins
from resources.lake import Table

CALIBRATION_SCHEMA = pa.schema([
    ("month", pa.date32()), ("application_month", pa.date32()), ("label_def", pa.string()),
    ("model_version", pa.string()), ("grade", pa.string()), ("pd_lower", pa.float64()),
    ("pd_upper", pa.float64()), ("loans", pa.int64()), ("defaults", pa.int64()),
    ("predicted_pd", pa.float64()), ("observed_rate", pa.float64()),
    ("binomial_p_value", pa.float64()), ("jeffreys_p_value", pa.float64()),
    ("hl_statistic", pa.float64()), ("hl_p_value", pa.float64()),
])


def calibration_checks(thresholds: MonitoringSettings) -> tuple[Check, ...]:
    warn, error = thresholds.calibration_warn_p, thresholds.calibration_error_p
    return (
        Check("grade_calibration",
              f"No grade's PD too low for its default rate: ERROR when a grade's Jeffreys "
              f"p-value is below {error}, WARN when its Jeffreys or binomial p-value is below "
              f"{warn}; only WARN on fewer than {thresholds.min_loans} loans"),
        Check("hosmer_lemeshow",
              f"The scores fit the default rates over their deciles: ERROR when the "
              f"Hosmer-Lemeshow p-value is below {error}, WARN below {warn}; only WARN on "
              f"fewer than {thresholds.min_loans} loans"),
    )


def calibration_evaluations(thresholds: MonitoringSettings, version: str, rows: list[dict],
                            hl: dict) -> list[Verdict]:
    """The `grade_calibration` and `hosmer_lemeshow` verdicts of one month's matured
    predictions of model `version`: `rows` from `calibration_by_grade`, `hl` from
    `metrics.hosmer_lemeshow`. On fewer than `thresholds.min_loans` loans a failure is a WARN."""
    warn_p, error_p = thresholds.calibration_warn_p, thresholds.calibration_error_p
    loans = sum(r["loans"] for r in rows)
    few = loans < thresholds.min_loans
    tested = [r for r in rows if r["loans"]]
    errors = [r["grade"] for r in tested if r["jeffreys_p_value"] < error_p]
    warnings = [r["grade"] for r in tested
                if min(r["jeffreys_p_value"], r["binomial_p_value"]) < warn_p]
    figures = {r["grade"]: dg.MetadataValue.json(
        {k: r[k] for k in ("loans", "predicted_pd", "observed_rate", "binomial_p_value",
                           "jeffreys_p_value")}) for r in tested}
    suffix = f" ({version}, {loans} loans{': too few to judge' if few else ''})"
    if errors:
        why = f"PD too low in grade {', '.join(errors)} (Jeffreys p < {error_p})" + suffix
    elif warnings:
        why = f"PD possibly too low in grade {', '.join(warnings)} (p < {warn_p})" + suffix
    else:
        why = None
    grade_verdict = Verdict("grade_calibration", not warnings, {"loans": loans, **figures},
                            ERROR if errors and not few else WARN, why)
    p_value = hl["p_value"]
    hl_ok = p_value is None or p_value >= warn_p
    if p_value is None:
        why = "too few loans for score deciles"
    elif not hl_ok:
        level = error_p if p_value < error_p else warn_p
        why = f"Hosmer-Lemeshow p-value {p_value:.4g} < {level}" + suffix
    else:
        why = None
    hl_verdict = Verdict(
        "hosmer_lemeshow", hl_ok, {"loans": loans, "statistic": hl["statistic"],
                                   "p_value": p_value, "degrees_of_freedom": 8},
        ERROR if p_value is not None and p_value < error_p and not few else WARN, why)
    return [grade_verdict, hl_verdict]


def calibration_compute(step: Step) -> dict[Table, str]:
    """monitoring.calibration: per label month L and model version, the target label's matured
    predictions (of application month L - mob) by grade (`calibration_by_grade`), each row
    with the month's Hosmer-Lemeshow statistic and p-value; the checks `grade_calibration`
    and `hosmer_lemeshow`; a calibration plot and table per month. A prediction published
    without a grade (before predictions carried one) is graded on the current scale, and the
    month's metadata counts them (`graded_at_calibration`)."""
    thresholds, scale = step.config.monitoring, step.models.rating_scale
    label_def = step.config.label.name
    step.sql("monitoring/matured_predictions", {"label_def": label_def})
    matured = step.con.execute(f"SELECT * FROM {RESULT}").df(date_as_object=True)
    # predictions published before they carried a grade are graded on the current scale
    ungraded = matured["grade"].isna()
    matured.loc[ungraded, "grade"] = grade_of(matured.loc[ungraded, "score"], scale)
    rows: list[dict] = []
    for month in step.months:
        group = matured[matured["month"] == month]
        if group.empty:
            application = upstream_months(step.rules.matured, [month], step.partitions)
            why = (f"no matured predictions of {label_def}: the application month "
                   f"{folder_label(application[0])} has no predictions whose labels "
                   f"{folder_label(month)} holds" if application else
                   f"no application month {step.config.label.mob} months before")
            step.metadata(month, {"reason": why})
            record_verdicts(step, month, [Verdict(c.name, True, {"reason": why})
                                          for c in calibration_checks(thresholds)])
            continue
        for version, scored in group.groupby("model_version"):
            by_grade = calibration_by_grade(scored, scale)
            hl = metrics.hosmer_lemeshow(scored["label"], scored["score"], scored["loan_id"])
            vintage = scored["application_month"].iloc[0]
            rows += [{"month": month, "application_month": vintage, "label_def": label_def,
                      "model_version": version, **row, "hl_statistic": hl["statistic"],
                      "hl_p_value": hl["p_value"]} for row in by_grade]
            step.metadata(month, {
                **month_metadata(month, version, label_def, by_grade, hl),
                "graded_at_calibration": int(ungraded[scored.index].sum())})
            record_verdicts(step, month,
                            calibration_evaluations(thresholds, version, by_grade, hl))
    step.con.register("calibration_rows", pa.Table.from_pylist(rows, schema=CALIBRATION_SCHEMA))
    return {CALIBRATION: "SELECT * FROM calibration_rows"}


def month_metadata(month: date, version: str, label_def: str, rows: list[dict],
                   hl: dict) -> dict:
    columns = ["grade", "pd_upper", "loans", "defaults", "predicted_pd", "observed_rate",
               "binomial_p_value", "jeffreys_p_value"]
    return {
        "model_version": version, "label_def": label_def,
        "hl_statistic": hl["statistic"], "hl_p_value": hl["p_value"],
        "calibration_by_grade": dg.MetadataValue.md(markdown_table(
            columns, [[r[c] for c in columns] for r in rows])),
        "calibration_plot": dg.MetadataValue.md(calibration_chart(
            [r["grade"] for r in rows], [r["predicted_pd"] for r in rows],
            [r["observed_rate"] for r in rows], [r["loans"] for r in rows],
            f"{version}: calibration by grade, label month {folder_label(month)}")),
    }


CUTOFF_SCHEMA = pa.schema([
    ("month", pa.date32()), ("model_version", pa.string()), ("trained_month", pa.date32()),
    ("band", pa.int64()), ("loans", pa.int64()), ("min_score", pa.float64()),
    ("max_score", pa.float64()), ("band_default_rate", pa.float64()),
    ("cutoff_pd", pa.float64()), ("approval_rate", pa.float64()),
    ("expected_bad_rate", pa.float64()), ("mean_pd", pa.float64()),
    ("cutoff_mode", pa.string()), ("decision_cutoff", pa.float64()),
    ("decision_approval_rate", pa.float64()), ("decision_bad_rate", pa.float64()),
])


def cutoff_strategy_compute(step: Step) -> dict[Table, str]:
    """ml.cutoff_strategy: per month, the month's champion's out-of-time reference
    (ml.score_reference at its trained month) in predictions.cutoff_bands score bands
    (`Reference.bands`: per band, the outcome of approving it and every better band), with
    the cut-off predictions.cutoff_mode chooses (`month_cutoff`, as gold.predictions uses it);
    a chart of approval rate against expected bad rate. A month without a champion has no
    rows, and says so."""
    models = step.models
    champions = {month: (version, trained) for month, version, trained in step.con.execute(
        "SELECT month, model_version, trained_month FROM model_aliases WHERE alias = $alias "
        "AND model_version IS NOT NULL", {"alias": ALIAS}).fetchall()}
    rows: list[dict] = []
    for month in step.months:
        if month not in champions:
            step.metadata(month, {"reason": "no champion this month (ml.model_aliases)"})
            continue
        version, trained = champions[month]
        reference = champion_reference(step, version, trained)
        if reference is None:
            step.metadata(month, {"model_version": version,
                                  "reason": f"{version} has no reference scores"})
            continue
        chosen = month_cutoff(models, reference, version)
        cutoff = chosen.cutoff
        bands = reference.bands(models.cutoff_bands)
        rows += [{"month": month, "model_version": version, "trained_month": trained, **band,
                  "cutoff_mode": models.cutoff_mode, "decision_cutoff": cutoff,
                  "decision_approval_rate": chosen.approval_rate,
                  "decision_bad_rate": chosen.expected_bad_rate}
                 for band in bands]
        columns = ["band", "min_score", "max_score", "band_default_rate", "cutoff_pd",
                   "approval_rate", "expected_bad_rate"]
        step.metadata(month, {
            "model_version": version, "cutoff_mode": models.cutoff_mode,
            "cutoff_target": models.decision_cutoff, "decision_cutoff": cutoff,
            "reference_approval_rate": chosen.approval_rate,
            "reference_bad_rate": chosen.expected_bad_rate,
            "strategy": dg.MetadataValue.md(markdown_table(
                columns, [[b[c] for c in columns] for b in bands])),
            "tradeoff_chart": dg.MetadataValue.md(tradeoff_chart(
                [b["approval_rate"] for b in bands], [b["expected_bad_rate"] for b in bands],
                (chosen.approval_rate, chosen.expected_bad_rate),
                f"{version}: approval rate vs expected bad rate (OOT reference)")),
        })
    step.con.register("cutoff_rows", pa.Table.from_pylist(rows, schema=CUTOFF_SCHEMA))
    return {CUTOFF_STRATEGY: "SELECT * FROM cutoff_rows"}


IV_SCHEMA = pa.schema([
    ("training_month", pa.date32()), ("feature", pa.string()), ("kind", pa.string()),
    ("bin_index", pa.int64()), ("bin", pa.string()), ("lower", pa.float64()),
    ("upper", pa.float64()), ("categories", pa.list_(pa.string())), ("loans", pa.int64()),
    ("defaults", pa.int64()), ("default_rate", pa.float64()), ("woe", pa.float64()),
    ("iv_contribution", pa.float64()), ("feature_iv", pa.float64()), ("iv_band", pa.string()),
])
IV_CHECK = "iv_not_suspicious"
TOP_IV = 15


def model_features(step: Step, columns: list[str]) -> list[tuple[str, bool]]:
    """(feature, categorical) of every configured model's features, resolved on `columns`,
    in configuration order without repeats."""
    features: dict[str, bool] = {}
    for model in step.models.models:
        resolved = model.features.resolve(columns)
        for name in resolved.names:
            features.setdefault(name, name in resolved.categorical)
    return list(features.items())


def feature_iv_compute(step: Step) -> dict[Table, str]:
    """ml.feature_iv: per training month, every model feature's bins on the month's training
    split (`woe_bins`: optimal binning, WoE per bin), its IV and IV band; the check
    `iv_not_suspicious` (WARN) names features from the suspicious band; an IV table and chart
    per month. A month without a training set has no rows, and says so."""
    models = step.models
    rows: list[dict] = []
    for month in step.months:
        train = training_frame(step.con, "training_set", month, "train")
        if train.empty:
            why = "no training set this month (see gold/training_set)"
            step.metadata(month, {"reason": why})
            step.check(IV_CHECK, month, True, {"reason": why})
            continue
        features = model_features(step, [c for c in train.columns if c not in SPLIT_COLUMNS])
        ivs = {}
        for name, categorical in features:
            bins = woe_bins(train[name], train["label"].to_numpy(), categorical,
                            models.woe_max_bins, models.woe_min_bin_size)
            ivs[name] = sum(b["iv_contribution"] for b in bins)
            band = iv_band(ivs[name], models.iv_bounds)
            rows += [{"training_month": month, "feature": name,
                      "kind": "categorical" if categorical else "numeric", **b,
                      "feature_iv": ivs[name], "iv_band": band} for b in bins]
        ranked = sorted(ivs.items(), key=lambda kv: -kv[1])
        suspicious = [name for name, iv in ranked if iv >= models.iv_bounds[3]]
        step.check(IV_CHECK, month, not suspicious,
                   {"suspicious": ", ".join(suspicious) or "none",
                    "bound": models.iv_bounds[3]}, severity=WARN,
                   description=(f"IV at least {models.iv_bounds[3]}: {', '.join(suspicious)}"
                                " (a leak of the label?)") if suspicious else None)
        step.metadata(month, {
            "training_loans": len(train), "features": len(ivs),
            "information_value": dg.MetadataValue.md(markdown_table(
                ["feature", "iv", "band"],
                [[name, iv, iv_band(iv, models.iv_bounds)] for name, iv in ranked])),
            "iv_chart": dg.MetadataValue.md(bar_chart(
                dict(ranked[:TOP_IV]), f"training month {folder_label(month)}: information "
                                       "value of the top features", "IV")),
        })
    step.con.register("iv_rows", pa.Table.from_pylist(rows, schema=IV_SCHEMA))
    return {FEATURE_IV: "SELECT * FROM iv_rows"}


def credit_review_specs(build: Build) -> list[TableSpec]:
    """WoE / IV per training month, the cut-off strategy of each month's champion, the
    validation report of every candidate, and calibration by grade when labels mature
    (thresholds from `build.config.monitoring`)."""
    thresholds, rules = build.config.monitoring, build.rules
    return [
        TableSpec(
            table=FEATURE_IV, compute=feature_iv_compute, batched=True,
            inputs=(Input(TRAINING_SET, "training_set"),),
            checks=(Check(IV_CHECK, f"No model feature's information value on the training "
                                    f"split at least {build.models.iv_bounds[3]} "
                                    "(woe.iv_suspicious): so strong a feature may leak the "
                                    "label (WARN)"),),
            kinds=frozenset({"python", "deltalake"})),
        TableSpec(
            table=CUTOFF_STRATEGY, compute=cutoff_strategy_compute,
            inputs=(Input(MODEL_ALIASES, "model_aliases"),
                    Input(SCORE_REFERENCE, "ml_score_reference", lookup=True)),
            kinds=frozenset({"python", "deltalake"})),
        TableSpec(
            table=VALIDATION_REPORTS, compute=validation_reports_compute,
            inputs=(Input(MODEL_REGISTRY, "model_registry"),
                    Input(SCORE_REFERENCE, "score_reference"),
                    Input(TRAINING_SET, "training_set"), Input(FEATURE_IV, "feature_iv"),
                    Input(MODEL_ALIASES, "model_aliases"), Input(SWAP_SETS, "swap_sets"),
                    Input(MODEL_APPROVALS, "model_approvals"),
                    Input(SOURCE_COVERAGE, "source_coverage", rules.training_features)),
            checks=(SELF_CONTAINED,), resources=("model_store",),
            kinds=frozenset({"python", "html", "deltalake"}),
            description="A validation report per candidate model version (HTML in the "
                        "warehouse's reports/validation/, linked from this materialisation and "
                        "from ml/model_registry's): window, samples, label, features with IV "
                        "and importance, metrics by split, calibration, cut-off table, "
                        "stability, swap set and sign-off, known limitations."),
        TableSpec(
            table=CALIBRATION, compute=calibration_compute,
            inputs=(Input(PREDICTIONS, "gold_predictions", rules.matured),
                    Input(LABEL_STORE, "gold_label_store")),
            checks=calibration_checks(thresholds),
            automation_condition=dg.AutomationCondition.eager()),
    ]



