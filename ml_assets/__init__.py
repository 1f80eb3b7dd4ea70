"""Vintage: a monthly credit-risk ML platform as a Dagster code location."""

import warnings

import dagster as dg

# Single-run backfills (a range of months in one pass) and time-window mappings that reach
# before the first month are how the design works; Dagster 1.13 marks both parameters beta and
# would warn at every import.
for parameter in ("backfill_policy", "allow_nonexistent_upstream_partitions"):
    warnings.filterwarnings("ignore", message=f".*`{parameter}`.*", category=dg.BetaWarning)
warnings.filterwarnings("ignore", message=".*build_column_schema_change_checks.*",
                        category=dg.BetaWarning)
# Checks evaluated per month (ml_assets/checks.py) need partitioned check specs, a preview.
warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec.*",
                        category=dg.PreviewWarning)
