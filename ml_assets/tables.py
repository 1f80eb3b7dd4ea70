"""Every table of the lake: the fixed set the platform reads and writes."""

from __future__ import annotations

import dagster as dg

from resources.warehouse import Table

RAW_LMS = Table("raw", "lms_loan_daily", "_snapshot_month", ("_row_number",),
                "The lms_loan_daily source file's rows of each month, verbatim as text")
RAW_CLICKSTREAM = Table("raw", "feature_clickstream", "_snapshot_month", ("_row_number",),
                        "The feature_clickstream source file's rows of each month, verbatim")
RAW_ATTRIBUTES = Table("raw", "features_attributes", "_snapshot_month", ("_row_number",),
                       "The features_attributes source file's rows of each month, verbatim")
RAW_FINANCIALS = Table("raw", "features_financials", "_snapshot_month", ("_row_number",),
                       "The features_financials source file's rows of each month, verbatim")
RAW_TABLES = {t.name: t for t in (RAW_LMS, RAW_CLICKSTREAM, RAW_ATTRIBUTES, RAW_FINANCIALS)}

SILVER_LOAN_DAILY = Table("silver", "loan_daily", "snapshot_date", ("loan_id",),
                          "Typed loan-months with mob, installments missed, first missed date, dpd")
SILVER_CLICKSTREAM = Table("silver", "clickstream", "snapshot_date", ("customer_id",),
                           "Typed clickstream features per customer and month")
SILVER_ATTRIBUTES = Table("silver", "attributes", "snapshot_date", ("customer_id",),
                          "Cleaned customer attributes at application, without personal data")
SILVER_FINANCIALS = Table("silver", "financials", "snapshot_date", ("customer_id",),
                          "Cleaned customer financials at application")


def quarantine_of(table: Table) -> Table:
    """Where the rows a silver transform rejects are kept, with the reason."""
    return Table(table.schema, f"{table.name}_quarantine", "_snapshot_month",
                 ("_source_file", "_row_number"),
                 f"Rows rejected on their way into {table.qualified_name}, with the reason")


LABEL_STORE = Table("gold", "label_store", "snapshot_date", ("loan_id",),
                    "One label per loan at its label month (observation month)")
FEATURE_STORE = Table("gold", "feature_store", "application_month", ("loan_id",),
                      "One row per loan with the features known at its application month")
SOURCE_COVERAGE = Table("gold", "source_coverage", "application_month", ("source",),
                        "Per application month and feature source: how many applications the "
                        "source covered, how current it was, and whether that is an outage")


def asset_key(table: Table) -> dg.AssetKey:
    return dg.AssetKey([table.schema, table.name])


TRAINING_SET = Table("gold", "training_set", "training_month", ("split", "loan_id"),
                     "Per training month: the window's labels with their application features, "
                     "split into train, test and out-of-time")
MODEL_REGISTRY = Table("ml", "model_registry", "trained_month", ("model_version",),
                       "One record per trained model version; one part per model")
SCORE_REFERENCE = Table("ml", "score_reference", "trained_month", ("model_version", "loan_id"),
                        "Each model version's scores on its out-of-time set, the reference "
                        "monitoring compares months against")
MODEL_ALIASES = Table("ml", "model_aliases", "month", ("alias",),
                      "The champion alias, month by month, and why it moved or stayed")
PREDICTIONS = Table("gold", "predictions", "application_month", ("loan_id",),
                    "Every loan of the application month scored by the champion as of that month")


STABILITY = Table("monitoring", "stability", "month", ("variable",),
                  "Per prediction month: PSI of the score and CSI of each model feature against "
                  "the champion's out-of-time reference")
PERFORMANCE = Table("monitoring", "performance", "month", ("model_version",),
                    "Per label month: AUC, Gini, KS of the predictions made mob months earlier")
DRIFT = Table("monitoring", "drift", "month", ("column_name",),
              "Per prediction month: evidently's drift test of each model feature")
RECOMMENDATION = Table("monitoring", "recommendation", "month", ("month",),
                       "Per month: retain, watch or retrain, and why")
SUMMARY = Table("monitoring", "summary", "month", ("month",),
                "Per month: stability, performance and the recommendation in one row")


def all_tables() -> list[Table]:
    """Every table the platform publishes, quarantines included."""
    silver = [SILVER_LOAN_DAILY, SILVER_CLICKSTREAM, SILVER_ATTRIBUTES, SILVER_FINANCIALS]
    return [*RAW_TABLES.values(), *silver, *map(quarantine_of, silver), LABEL_STORE,
            FEATURE_STORE, SOURCE_COVERAGE, TRAINING_SET, MODEL_REGISTRY, SCORE_REFERENCE,
            MODEL_ALIASES, PREDICTIONS, STABILITY, PERFORMANCE, DRIFT, RECOMMENDATION, SUMMARY]


