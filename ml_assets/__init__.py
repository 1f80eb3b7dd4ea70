"""Vintage: a monthly credit-risk ML platform as a Dagster code location."""

import warnings

import dagster as dg

# Single-run backfills are the storage design's way to compute a range of months in one pass;
# the parameter is marked beta in Dagster 1.13 and warns at every import otherwise.
warnings.filterwarnings("ignore", message=".*backfill_policy.*", category=dg.BetaWarning)
