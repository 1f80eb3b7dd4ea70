"""The monthly schedule: on the first of each month, the month that just closed, end to end."""

import dagster as dg

from ml_assets.jobs import monthly_pipeline

# Stopped until switched on in the UI (Automation) or with `dagster schedule start`.
monthly_schedule = dg.build_schedule_from_partitioned_job(
    monthly_pipeline,
    name="monthly_close",
    day_of_month=1,
    hour_of_day=6,
    description="On the 1st at 06:00 UTC, every asset for the month that just closed.",
    default_status=dg.DefaultScheduleStatus.STOPPED,
)
