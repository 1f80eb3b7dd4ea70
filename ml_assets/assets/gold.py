"""Gold: the label store (by observation month) and the point-in-time feature store (by
application month)."""


import dagster as dg

from ml_assets.assets.lake import (
    MONTHLY,
    RESULT,
    Upstream,
    compute,
    describe_table,
    publish,
    read_upstreams,
)
from ml_assets.partitions import clickstream_window, run_months, window_pairs
from ml_assets.settings import settings
from ml_assets.tables import (
    FEATURE_STORE,
    LABEL_STORE,
    SILVER_ATTRIBUTES,
    SILVER_CLICKSTREAM,
    SILVER_FINANCIALS,
    SILVER_LOAN_DAILY,
)
from resources.warehouse import Warehouse

LABEL_INPUTS = [Upstream("silver_loan_daily", SILVER_LOAN_DAILY)]
FEATURE_INPUTS = [
    Upstream("silver_loan_daily", SILVER_LOAN_DAILY),
    Upstream("silver_attributes", SILVER_ATTRIBUTES),
    Upstream("silver_financials", SILVER_FINANCIALS),
    Upstream("silver_clickstream", SILVER_CLICKSTREAM, clickstream_window),
]


@dg.asset(**describe_table(LABEL_STORE), deps=[u.dep() for u in LABEL_INPUTS], **MONTHLY)
def label_store(context: dg.AssetExecutionContext, warehouse: Warehouse) -> None:
    label = settings().label
    months = run_months(context)
    with warehouse.connect() as con:
        read_upstreams(con, warehouse, LABEL_INPUTS, months)
        compute(con, "gold/label_store",
                {"label_dpd": label.dpd, "label_mob": label.mob, "label_def": label.name})
        rates = dict(con.execute(
            f"SELECT date_trunc('month', snapshot_date)::DATE, avg(label) FROM {RESULT} "
            "GROUP BY ALL"
        ).fetchall())
        per_month = {m: {"label_def": label.name, "label_rate": float(rates.get(m) or 0.0)}
                     for m in months}
        publish(context, warehouse, con, LABEL_STORE, f"SELECT * FROM {RESULT}", months, per_month)


@dg.asset(**describe_table(FEATURE_STORE), deps=[u.dep() for u in FEATURE_INPUTS], **MONTHLY)
def feature_store(context: dg.AssetExecutionContext, warehouse: Warehouse) -> None:
    lookback = settings().clickstream_lookback_months
    months = run_months(context)
    with warehouse.connect() as con:
        read_upstreams(con, warehouse, FEATURE_INPUTS, months)
        con.register("clickstream_window", window_pairs(clickstream_window, months))
        compute(con, "gold/feature_store")
        with_clickstream = dict(con.execute(
            f"SELECT application_month, count_if(clickstream_months > 0) FROM {RESULT} "
            "GROUP BY ALL"
        ).fetchall())
        per_month = {
            m: {"loans_with_clickstream": int(with_clickstream.get(m, 0)),
                "clickstream_lookback_months": lookback}
            for m in months
        }
        publish(context, warehouse, con, FEATURE_STORE, f"SELECT * FROM {RESULT}", months,
                per_month)
