"""Jobs: every monthly asset at once (what `vintage run`, the schedule and the sensors launch),
one job per stage for manual runs from the UI, and the sign-off of a champion."""

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

# a sign-off, from the UI's launchpad: the config of ml__model_approvals (version, action, by,
# reason; "Scaffold missing config" lays it out), for the months from the version's trained
# month to the last month (`vintage model approve|reject` fills in both)
APPROVAL_OP = "ml__model_approvals"
champion_approval = dg.define_asset_job(
    "champion_approval",
    selection=keys(["ml", "model_approvals"], ["ml", "model_aliases"], ["ml", "swap_sets"],
                   ["ml", "validation_reports"], ["gold", "predictions"]),
    description="Approve or reject a model version as champion (config of ml__model_approvals: "
                "version, action approve|reject, by, reason), for the months from the version's "
                "trained month to the last one: records the sign-off in ml.model_approvals and "
                "re-decides the champion gate, the swap sets, the validation reports and the "
                "predictions of those months.",
)


def approval_run_config(version: str, action: str, by: str, reason: str) -> dict:
    """The run config of champion_approval for one sign-off."""
    return {"ops": {APPROVAL_OP: {"config": {"version": version, "action": action, "by": by,
                                             "reason": reason}}}}
