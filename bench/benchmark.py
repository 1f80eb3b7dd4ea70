"""The benchmark: what the whole graph, one new month, and raw-to-gold cost at a scale.

    python bench/benchmark.py [--scale 1] [--seed 42] [--out bench/results]
                              [--phases whole_graph,new_month,raw_to_gold]
                              [--max-training-rows N] [--duckdb-memory-limit SIZE]

Phases, each a real `vintage` process (peak memory: the largest of its steps' peak RSS):
  whole graph   every month, raw to monitoring, from an empty warehouse
  new month     one month again, end to end, on the full warehouse: the latest month, and the
                latest month with new applications (it also scores loans and writes a drift
                report)
  raw to gold   raw, silver, label and feature stores from an empty warehouse, against
  baseline      the same raw-to-gold SQL as one hand-written DuckDB script (bench/baseline.py)
--max-training-rows N runs with config/models.yaml's `training.max_training_rows` set to N (the
seeded loan-level sample of each training split, for windows that outgrow memory);
--duckdb-memory-limit SIZE with config/vintage.yaml's `duckdb.memory_limit` set to SIZE.
Reports a table and a JSON file in --out: wall time per phase, stage and asset, rows per second
and peak memory per asset (from each materialisation's metadata), and the targets.
"""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RAW_TO_GOLD = ("group:raw or group:silver or key:gold/label_store or key:gold/feature_store")
TARGETS = {  # phase -> (seconds, peak MB) targets at that scale, None where none is set
    1: {"whole_graph": (30, None), "new_month": (10, None)},
    100: {"whole_graph": (600, 6144)},
}


def timed(command: list[str], env: dict) -> dict:
    """Run a command: its wall time, its peak RSS (from wait4, the process's own), output."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        started = time.monotonic()
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=stdout,
                                   stderr=stderr, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - started
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read(), stderr.read()
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(command)} failed:\n{out}\n{err}")
    return {"seconds": round(seconds, 2), "peak_mb": round(usage.ru_maxrss / 1024, 1),
            "stdout": out}


def vintage_run(data: Path, warehouse: Path, env: dict, *extra: str) -> dict:
    result = timed([str(BIN / "vintage"), "run", "--source", str(data), "--warehouse",
                    str(warehouse), *extra], env)
    result["run_id"] = re.search(r"^run (\S+) succeeded", result["stdout"], re.M).group(1)
    stages = dict(re.findall(r"^stage (\S+)\s+([\d.]+)$", result["stdout"], re.M))
    result["stages"] = {k: float(v) for k, v in stages.items()}
    result["assets"] = asset_costs(Path(env["DAGSTER_HOME"]), result["run_id"])
    # Each step restarts the kernel's peak-RSS count (ml_assets/spec.py), so the process's
    # own maximum at exit covers only its last step: the run's peak is the largest step's.
    result["peak_mb"] = max([result["peak_mb"], *(cost.get("step_peak_memory_mb", 0)
                                                  for cost in result["assets"].values())])
    return result


def asset_costs(home: Path, run_id: str) -> dict[str, dict]:
    """Per asset of a run: step seconds, rows in/out, rows per second, peak memory, from the
    metadata its materialisations carry (ml_assets/spec.py)."""
    os.environ["DAGSTER_HOME"] = str(home)
    import dagster as dg

    costs = {}
    with dg.DagsterInstance.get() as instance:
        records = instance.get_records_for_run(
            run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, limit=100_000).records
        for record in records:
            materialization = record.event_log_entry.dagster_event.event_specific_data \
                .materialization
            metadata = {k: v.value for k, v in materialization.metadata.items()
                        if k.startswith("step_")}
            if metadata:
                costs[materialization.asset_key.to_user_string()] = metadata
    return costs


def months_with_applications(data: Path) -> str:
    import duckdb

    return duckdb.connect().execute(
        "SELECT strftime(max(snapshot_date::DATE), '%Y-%m') FROM read_csv($p, all_varchar=true)",
        {"p": str(data / "features_financials.csv")}).fetchall()[0][0]


def last_month(data: Path) -> str:
    import duckdb

    return duckdb.connect().execute(
        "SELECT strftime(max(snapshot_date::DATE), '%Y-%m') FROM read_csv($p, all_varchar=true)",
        {"p": str(data / "lms_loan_daily.csv")}).fetchall()[0][0]


PHASES = ("whole_graph", "new_month", "raw_to_gold")


def configured(work: Path, max_training_rows: int | None, memory_limit: str | None) -> dict:
    """The environment for `vintage run`: the repository's configuration, or copies of it with
    the training sample size or DuckDB's memory limit set."""
    import yaml

    env = {}
    if max_training_rows is not None:
        config = yaml.safe_load((ROOT / "config" / "models.yaml").read_text())
        config["training"]["max_training_rows"] = max_training_rows
        (work / "models.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        env["VINTAGE_MODELS"] = str(work / "models.yaml")
    if memory_limit is not None:
        config = yaml.safe_load((ROOT / "config" / "vintage.yaml").read_text())
        config.setdefault("duckdb", {})["memory_limit"] = memory_limit
        (work / "vintage.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        env["VINTAGE_CONFIG"] = str(work / "vintage.yaml")
    return env


def benchmark(scale: float, seed: int, out: Path, phases: tuple[str, ...] = PHASES,
              max_training_rows: int | None = None, memory_limit: str | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"data-{scale:g}x-seed{seed}"
    report: dict = {"scale": scale, "seed": seed, "machine": {
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}}
    if not (data / "lms_loan_daily.csv").exists():
        report["generate"] = timed([str(BIN / "vintage"), "generate", "--out", str(data),
                                    "--scale", str(scale), "--seed", str(seed)], {})
        report["generate"].pop("stdout")
    work = out / f"work-{scale:g}x"
    shutil.rmtree(work, ignore_errors=True)
    home = work / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(ROOT / "config" / "dagster.yaml", home / "dagster.yaml")
    env = {"DAGSTER_HOME": str(home), **configured(work, max_training_rows, memory_limit)}
    report["max_training_rows"] = max_training_rows
    report["duckdb_memory_limit"] = memory_limit
    keep = ("seconds", "peak_mb", "stages")

    if "whole_graph" in phases or "new_month" in phases:
        whole = vintage_run(data, work / "warehouse", env)
        report["whole_graph"] = {k: whole[k] for k in keep}
        report["assets"] = whole["assets"]
    if "new_month" in phases:
        report["new_month"] = {}
        for month in dict.fromkeys([last_month(data), months_with_applications(data)]):
            run = vintage_run(data, work / "warehouse", env, "--from", month, "--to", month)
            report["new_month"][month] = {k: run[k] for k in keep}
    if "raw_to_gold" in phases:
        raw_to_gold = vintage_run(data, work / "warehouse_raw_to_gold", env, "--select",
                                  RAW_TO_GOLD)
        baseline = timed([sys.executable, str(ROOT / "bench" / "baseline.py"), "--source",
                          str(data), "--out", str(work / "baseline")], {})
        report["raw_to_gold"] = {k: raw_to_gold[k] for k in keep}
        report["baseline"] = {"seconds": baseline["seconds"], "peak_mb": baseline["peak_mb"],
                              "stages": {k: float(v) for k, v in re.findall(
                                  r"^(\w+) ([\d.]+)$", baseline["stdout"], re.M)}}
        report["raw_to_gold_ratio"] = round(raw_to_gold["seconds"] / baseline["seconds"], 2)
    report["targets"] = check_targets(report)
    return report


def check_targets(report: dict) -> list[dict]:
    rows = []
    for phase, (seconds, peak) in TARGETS.get(report["scale"], {}).items():
        if phase not in report:
            continue
        measured = report[phase] if phase == "whole_graph" else \
            max(report[phase].values(), key=lambda r: r["seconds"])
        rows.append({"target": f"{phase} under {seconds} s", "measured": measured["seconds"],
                     "met": measured["seconds"] < seconds})
        if peak:
            rows.append({"target": f"{phase} peak memory under {peak} MB",
                         "measured": measured["peak_mb"], "met": measured["peak_mb"] < peak})
    if "raw_to_gold_ratio" in report:
        rows.append({"target": "raw to gold within 2x of the single DuckDB script",
                     "measured": report["raw_to_gold_ratio"],
                     "met": report["raw_to_gold_ratio"] <= 2})
    return rows


def markdown(report: dict) -> str:
    sample = (f", training sample {report['max_training_rows']:,} loans"
              if report.get("max_training_rows") else "")
    if report.get("duckdb_memory_limit"):
        sample += f", DuckDB memory limit {report['duckdb_memory_limit']}"
    lines = [f"## Benchmark at {report['scale']:g}x (seed {report['seed']}, "
             f"{report['machine']['cpus']} cores{sample})", "",
             "| phase | wall s | peak MB |", "|---|---|---|"]
    rows = []
    if "whole_graph" in report:
        rows.append(("whole graph, every month, from empty", report["whole_graph"]))
    rows += [(f"new month {month}, end to end", run)
             for month, run in report.get("new_month", {}).items()]
    if "raw_to_gold" in report:
        rows += [("raw to gold, from empty", report["raw_to_gold"]),
                 ("raw to gold, single DuckDB script", report["baseline"])]
    lines += [f"| {name} | {run['seconds']} | {run['peak_mb']} |" for name, run in rows]
    if "whole_graph" in report:
        lines += ["", "| stage (whole graph) | s |", "|---|---|"]
        lines += [f"| {stage} | {s:.1f} |"
                  for stage, s in report["whole_graph"]["stages"].items()]
        lines += ["", "| asset | s | rows in | rows out | rows/s | peak MB |",
                  "|---|---|---|---|---|---|"]
        for asset, cost in sorted(report["assets"].items(),
                                  key=lambda kv: -kv[1]["step_seconds"]):
            peak = cost.get("step_peak_memory_mb", cost.get("step_process_peak_memory_mb", ""))
            lines.append(f"| {asset} | {cost['step_seconds']:.1f} | {cost['step_rows_in']:,} | "
                         f"{cost['step_rows_out']:,} | {cost['step_rows_per_second']:,} | "
                         f"{peak} |")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |"
              for t in report["targets"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated, of {', '.join(PHASES)}")
    parser.add_argument("--max-training-rows", type=int, default=None)
    parser.add_argument("--duckdb-memory-limit", default=None, help='e.g. "3GB"')
    args = parser.parse_args()
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    if unknown := set(phases) - set(PHASES):
        parser.error(f"unknown phase {', '.join(sorted(unknown))}")
    report = benchmark(args.scale, args.seed, args.out, phases, args.max_training_rows,
                       args.duckdb_memory_limit)
    stem = args.out / f"bench-{args.scale:g}x"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    text = markdown(report)
    stem.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
