"""Every table of the lake: the fixed set the platform reads and writes, with its grain, the
column that places a row in its month, and its key (unique within a month)."""

from __future__ import annotations

from resources.lake import Table

RAW_LMS = Table("raw", "lms_loan_daily", "_snapshot_month", ("_row_number",),
                "The lms_loan_daily source file's rows of each month, verbatim as text",
                "source row")
RAW_CLICKSTREAM = Table("raw", "feature_clickstream", "_snapshot_month", ("_row_number",),
                        "The feature_clickstream source file's rows of each month, verbatim",
                        "source row")
RAW_ATTRIBUTES = Table("raw", "features_attributes", "_snapshot_month", ("_row_number",),
                       "The features_attributes source file's rows of each month, verbatim",
                       "source row")
RAW_FINANCIALS = Table("raw", "features_financials", "_snapshot_month", ("_row_number",),
                       "The features_financials source file's rows of each month, verbatim",
                       "source row")
RAW_TABLES = {t.name: t for t in (RAW_LMS, RAW_CLICKSTREAM, RAW_ATTRIBUTES, RAW_FINANCIALS)}

SILVER_LOAN_DAILY = Table("silver", "loan_daily", "snapshot_date", ("loan_id",),
                          "Typed loan-months with mob, installments missed, first missed date, "
                          "dpd", "loan x month")
SILVER_CLICKSTREAM = Table("silver", "clickstream", "snapshot_date", ("customer_id",),
                           "Typed clickstream features per customer and month",
                           "customer x month")
SILVER_ATTRIBUTES = Table("silver", "attributes", "snapshot_date", ("customer_id",),
                          "Cleaned customer attributes at application, without personal data",
                          "customer application")
SILVER_FINANCIALS = Table("silver", "financials", "snapshot_date", ("customer_id",),
                          "Cleaned customer financials at application", "customer application")
SILVER_TABLES = (SILVER_LOAN_DAILY, SILVER_CLICKSTREAM, SILVER_ATTRIBUTES, SILVER_FINANCIALS)


def quarantine_of(table: Table) -> Table:
    """Where the rows a silver transform rejects are kept, with the reason."""
    return Table(table.schema, f"{table.name}_quarantine", "_snapshot_month",
                 ("_source_file", "_row_number"),
                 f"Rows rejected on their way into {table.qualified_name}, with the reason",
                 "rejected source row")


LABEL_STORE = Table("gold", "label_store", "snapshot_date", ("loan_id", "label_def"),
                    "One label per loan and label definition (the target, the early read) at "
                    "its label month (observation month)",
                    "loan x label definition at its label month")
FEATURE_STORE = Table("gold", "feature_store", "application_month", ("loan_id",),
                      "One row per loan with the features known at its application month",
                      "loan at its application month")
SOURCE_COVERAGE = Table("gold", "source_coverage", "application_month", ("source",),
                        "Per application month and feature source: how many applications the "
                        "source covered, how current it was, and whether that is an outage",
                        "application month x feature source")
TRAINING_SET = Table("gold", "training_set", "training_month", ("split", "loan_id"),
                     "Per training month: the window's labels with their application features, "
                     "split into train, test and out-of-time", "training month x loan")
MODEL_REGISTRY = Table("ml", "model_registry", "trained_month", ("model_version",),
                       "One record per trained model version: every candidate of "
                       "config/models.yaml, trained each month", "model version")
SCORE_REFERENCE = Table("ml", "score_reference", "trained_month", ("model_version", "loan_id"),
                        "Each model version's scores on its out-of-time set, the reference "
                        "monitoring compares months against", "model version x OOT loan")
MODEL_APPROVALS = Table("ml", "model_approvals", "month", ("model_version", "decided_at"),
                        "Every sign-off of a model version, by a person: approve or reject, "
                        "who, why and when, at the month the version was trained (the gate "
                        "month it applies to)", "sign-off of a model version")
MODEL_ALIASES = Table("ml", "model_aliases", "month", ("alias",),
                      "The champion alias, month by month, why it moved or stayed, and its "
                      "sign-off (approved, proposed, rejected)", "alias x month")
SWAP_SETS = Table("ml", "swap_sets", "month", ("swap",),
                  "Per gate month with a challenger proposed or promoted: the out-of-time loans "
                  "the new model and the champion approve or decline (swap-in, swap-out, both), "
                  "with counts and observed bad rates", "gate month x swap kind")
FEATURE_IV = Table("ml", "feature_iv", "training_month", ("feature", "bin_index"),
                   "Per training month: each model feature's bins on the training split with "
                   "their weight of evidence, and the feature's information value",
                   "training month x feature x bin")
CUTOFF_STRATEGY = Table("ml", "cutoff_strategy", "month", ("band",),
                        "Per month: the champion's out-of-time reference in score bands, the "
                        "approval rate and expected bad rate of each cut-off, and the cut-off "
                        "used", "month x score band")
VALIDATION_REPORTS = Table("ml", "validation_reports", "trained_month", ("model_version",),
                           "One validation report per model version (an HTML file in the "
                           "warehouse's reports/validation/): where it is, the version's sign-off "
                           "status and the limitations the report names",
                           "model version")
PREDICTIONS = Table("gold", "predictions", "application_month", ("loan_id",),
                    "Every loan of the application month scored by the champion as of that "
                    "month", "loan at its application month")

STABILITY = Table("monitoring", "stability", "month", ("variable",),
                  "Per prediction month: PSI of the score and CSI of each model feature against "
                  "the champion's out-of-time reference", "prediction month x variable")
PERFORMANCE = Table("monitoring", "performance", "month", ("model_version",),
                    "Per label month: AUC, Gini, KS of the predictions made mob months earlier",
                    "label month x model version")
EARLY_READ_PERFORMANCE = Table(
    "monitoring", "early_read_performance", "month", ("model_version",),
    "Per label month of the early read: AUC, Gini, KS of the predictions made early_read.mob "
    "months earlier, against the early-read label", "early-read label month x model version")
SEGMENT_PERFORMANCE = Table(
    "monitoring", "segment_performance", "month", ("model_version", "segment"),
    "Per label month: AUC and Gini of the matured predictions by segment (the value of "
    "monitoring.segment_column)", "label month x model version x segment")
CALIBRATION = Table("monitoring", "calibration", "month", ("model_version", "label_def", "grade"),
                    "Per label month: the matured predictions by rating grade, predicted PD "
                    "against the observed default rate, binomial, Jeffreys and "
                    "Hosmer-Lemeshow tests", "label month x model version x label x grade")
DRIFT = Table("monitoring", "drift", "month", ("column_name",),
              "Per prediction month: evidently's drift test of each model feature",
              "prediction month x column")
RECOMMENDATION = Table("monitoring", "recommendation", "month", ("month",),
                       "Per month: retain, watch, retrain or data_outage, and why", "month")
DASHBOARD = Table("monitoring", "dashboard", "month", ("metric",),
                  "Per month: the monitoring figures written as snapshots into the evidently "
                  "workspace of `vintage dashboard` (score PSI, CSI, missing shares, AUC / Gini / "
                  "KS of both labels, calibration by grade, approval and bad rates), each with "
                  "the table column it comes from", "month x metric")
SUMMARY = Table("monitoring", "summary", "month", ("month",),
                "Per month: stability, performance and the recommendation in one row", "month")

VINTAGE_CURVE = Table("analytics", "vintage_curve", "month", ("cohort_month", "mob"),
                      "Per snapshot month: each origination cohort at its months on book, with "
                      "its ever-30/60/90 dpd, currently delinquent and closed rates",
                      "snapshot month x cohort x mob")
ROLL_RATE = Table("analytics", "roll_rate", "month", ("from_bucket", "to_bucket"),
                  "Per snapshot month: loans moving between delinquency buckets since the month "
                  "before, counts and rates", "snapshot month x from bucket x to bucket")


def all_tables() -> tuple[Table, ...]:
    """Every table the platform publishes, quarantines included."""
    return (*RAW_TABLES.values(), *SILVER_TABLES, *map(quarantine_of, SILVER_TABLES),
            LABEL_STORE, FEATURE_STORE, SOURCE_COVERAGE, TRAINING_SET, MODEL_REGISTRY,
            FEATURE_IV, SCORE_REFERENCE, MODEL_APPROVALS, MODEL_ALIASES, SWAP_SETS,
            CUTOFF_STRATEGY, VALIDATION_REPORTS, PREDICTIONS, STABILITY, PERFORMANCE,
            EARLY_READ_PERFORMANCE, SEGMENT_PERFORMANCE, CALIBRATION, DRIFT, RECOMMENDATION,
            SUMMARY, DASHBOARD, VINTAGE_CURVE, ROLL_RATE)
