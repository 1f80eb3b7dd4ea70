"""The scoring service under load: `vintage serve` started on loopback over a warehouse, then N
requests at concurrency C, each one application.

    python bench/load_test.py --warehouse WAREHOUSE [--requests 2000] [--concurrency 8]
                              [--input loan_id|raw] [--out bench/results]

The settings come from the environment as for any `vintage` command (VINTAGE_CONFIG,
VINTAGE_MODELS, VINTAGE_SOURCE). Requests cycle through the loans of gold.feature_store: by
`loan_id`, or (`--input raw`) as the loan's raw source rows in the course layout, which the
service cleans and turns into features with the batch SQL. Latency is measured by the client,
from sending the request to reading the whole answer (httpx, asyncio); reported: p50, p95, p99,
mean, throughput and failed requests, against the target of p95 under 20 ms for one
application. Not a test: the figures depend on the machine and what else it runs.
"""

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import httpx
import numpy as np

BIN = Path(sys.executable).parent
TARGET_P95_MS = 20.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def applications(warehouse: Path, mode: str, limit: int) -> list[dict]:
    """Request bodies for up to `limit` loans of gold.feature_store: {"loan_id": ...}, or the
    loan's raw rows (its lms row of its start month, the customer's attributes and financials
    of that month, the customer's clickstream rows)."""
    os.environ["VINTAGE_WAREHOUSE"] = str(warehouse)
    from ml_assets.definitions import build_lake, load_build
    from ml_assets.tables import FEATURE_STORE, RAW_TABLES

    lake = build_lake(load_build().config)
    with duckdb.connect() as con:
        lake.read(con, "features", FEATURE_STORE, None)
        loans = [row[0] for row in con.execute(
            "SELECT loan_id FROM features ORDER BY application_month DESC, loan_id LIMIT $n",
            {"n": limit}).fetchall()]
        if mode == "loan_id":
            return [{"loan_id": loan} for loan in loans]
        for name, table in RAW_TABLES.items():
            lake.read(con, name, table, None)

        def rows(sql: str, params: dict) -> list[dict]:
            result = con.execute(sql, params)
            names = [d[0] for d in result.description]
            return [{k: v for k, v in zip(names, row, strict=True) if not k.startswith("_")}
                    for row in result.fetchall()]

        bodies = []
        for loan in loans:
            [loan_row] = rows("SELECT * FROM lms_loan_daily WHERE loan_id = $loan ORDER BY "
                              "_snapshot_month LIMIT 1", {"loan": loan})
            key = {"customer": loan_row["Customer_ID"]}
            same_month = ("WHERE Customer_ID = $customer AND _snapshot_month = (SELECT "
                          "min(_snapshot_month) FROM lms_loan_daily WHERE loan_id = $loan)")
            attributes = rows(f"SELECT * FROM features_attributes {same_month}",
                              {**key, "loan": loan})
            financials = rows(f"SELECT * FROM features_financials {same_month}",
                              {**key, "loan": loan})
            bodies.append({
                "loan": loan_row, "attributes": attributes[0] if attributes else None,
                "financials": financials[0] if financials else None,
                "clickstream": rows("SELECT * FROM feature_clickstream WHERE Customer_ID = "
                                    "$customer", key)})
        return bodies


async def load(url: str, bodies: list[dict], requests: int, concurrency: int
               ) -> tuple[list[float], int, float]:
    """Send `requests` requests (cycling through `bodies`) with `concurrency` in flight; the
    latency of each successful one (seconds), the failures and the wall time."""
    latencies: list[float] = []
    failures = 0
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(bodies[i % len(bodies)])
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient):
        nonlocal failures
        while not queue.empty():
            body = queue.get_nowait()
            started = time.perf_counter()
            response = await client.post(url, json=body)
            elapsed = time.perf_counter() - started
            if response.status_code == 200:
                latencies.append(elapsed)
            else:
                failures += 1

    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return latencies, failures, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warehouse", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--input", choices=("loan_id", "raw"), default="loan_id")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    bodies = applications(args.warehouse.resolve(), args.input,
                          min(args.requests, 500 if args.input == "loan_id" else 100))
    port = free_port()
    server = subprocess.Popen([str(BIN / "vintage"), "serve", "--warehouse",
                               str(args.warehouse), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"{base}/health", timeout=2).raise_for_status().json()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    print("vintage serve did not start", file=sys.stderr)
                    return 1
                time.sleep(0.3)
        # warm-up: the first raw requests open the pooled DuckDB connections (the SQL prepared)
        asyncio.run(load(f"{base}/v1/score", bodies, min(50, args.requests), args.concurrency))
        latencies, failures, wall = asyncio.run(
            load(f"{base}/v1/score", bodies, args.requests, args.concurrency))
    finally:
        server.terminate()
        server.wait(timeout=30)
    ms = np.array(latencies) * 1000
    p50, p95, p99 = (float(np.percentile(ms, q)) for q in (50, 95, 99))
    result = {
        "input": args.input, "requests": args.requests, "concurrency": args.concurrency,
        "failed": failures, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99,
        "mean_ms": float(ms.mean()), "throughput_per_s": len(latencies) / wall,
        "target_p95_ms": TARGET_P95_MS, "meets_target": p95 < TARGET_P95_MS,
        "model_version": health["model_version"], "loans": health["feature_store_loans"],
        "cpus": os.cpu_count(), "machine": platform.platform(),
    }
    print(f"{args.input}: {args.requests} requests at concurrency {args.concurrency}: "
          f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms, "
          f"{result['throughput_per_s']:.0f} requests/s, {failures} failed "
          f"(target p95 < {TARGET_P95_MS:.0f} ms: {'met' if result['meets_target'] else 'missed'})")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"load-{args.input}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
