"""Jobs: every monthly asset at once (what `vintage run`, the schedule and the sensors launch),
and one job per stage for manual runs from the UI."""

import dagster as dg

monthly_pipeline = dg.define_asset_job(
    "monthly_pipeline",
    selection=dg.AssetSelection.all(),
    description="Every monthly asset, raw to monitoring and analytics, for the chosen months.",
)

groups, keys = dg.AssetSelection.groups, dg.AssetSelection.assets
STAGES = {
    "ingest": (groups("raw", "silver"), "The sources to raw and silver"),
    "stores": (keys(["gold", "label_store"], ["gold", "feature_store"],
                    ["gold", "source_coverage"]),
               "The label and feature stores, and the coverage of the feature sources"),
    "training": (keys(["gold", "training_set"]) | groups("ml"),
                 "Training sets, candidate models and the champion gate"),
    "scoring": (keys(["gold", "predictions"]), "Predictions by the champion of the month"),
    "monitoring": (groups("monitoring"), "Stability, drift, performance, recommendation, summary"),
    "analytics": (groups("analytics"), "Vintage curves and roll rates of the loan book"),
}

stage_jobs = [dg.define_asset_job(f"stage_{name}", selection=selection, description=description)
              for name, (selection, description) in STAGES.items()]
