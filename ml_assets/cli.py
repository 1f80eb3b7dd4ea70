"""The `vintage` command."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

EXIT_FAILED, EXIT_USAGE = 1, 2


def _set_paths(args: argparse.Namespace) -> None:
    """Paths go to the environment before the code location is imported: they shape it."""
    for option, variable in (("config", "VINTAGE_CONFIG"), ("source", "VINTAGE_SOURCE"),
                             ("warehouse", "VINTAGE_WAREHOUSE")):
        value = getattr(args, option, None)
        if value:
            os.environ[variable] = str(Path(value).resolve())


def _print_summary(summary) -> None:
    months = f"{summary.first:%Y-%m}..{summary.last:%Y-%m}"
    state = "succeeded" if summary.success else "FAILED"
    print(f"run {summary.run_id} {state} for months {months}")
    if summary.seconds_by_asset:
        print(f"{'asset':<40} {'seconds':>8}")
        for asset, seconds in summary.seconds_by_asset.items():
            print(f"{asset:<40} {seconds:>8.2f}")
        for stage, seconds in summary.seconds_by_stage().items():
            print(f"{'stage ' + stage:<40} {seconds:>8.2f}")
    if summary.failed_checks:
        shown = 25
        print(f"{len(summary.failed_checks)} check evaluation(s) failed:")
        for line in summary.failed_checks[:shown]:
            print(f"  {line}")
        if len(summary.failed_checks) > shown:
            print(f"  ... and {len(summary.failed_checks) - shown} more (see the Dagster UI)")
    for error in summary.errors:
        print(f"vintage: {error}", file=sys.stderr)


def _arrival_pairs(values: list[str] | None, option: str) -> dict[str, str]:
    """`SOURCE@YYYY-MM` values of a generate option as {source: month}."""
    from ml_assets.runner import UsageError

    pairs = {}
    for value in values or []:
        source, at, month = value.partition("@")
        if not at:
            raise UsageError(f"{option} {value!r}: expected SOURCE@YYYY-MM, e.g. "
                             f"feature_clickstream@2024-07")
        pairs[source] = month
    return pairs


def cmd_generate(args) -> int:
    from ml_assets.demo.generator import Arrivals, generate
    from ml_assets.runner import UsageError

    started = time.monotonic()
    try:
        arrivals = Arrivals(stops_covering=_arrival_pairs(args.stops_covering, "--stops-covering"),
                            ends=_arrival_pairs(args.ends, "--ends"),
                            corrected=_arrival_pairs(args.corrected, "--corrected"))
        paths = generate(args.out, scale=args.scale, seed=args.seed,
                         shift_month=args.shift_month, arrivals=arrivals)
    except ValueError as error:  # the generator refuses a bad month or source by name
        raise UsageError(str(error)) from None
    for path in paths.values():
        print(path)
    print(f"generated in {time.monotonic() - started:.1f} s")
    return 0


def cmd_run(args) -> int:
    _set_paths(args)
    from ml_assets.runner import run

    started = time.monotonic()
    summary = run(args.first, args.last, args.select, verbose=args.verbose)
    _print_summary(summary)
    print(f"wall time {time.monotonic() - started:.1f} s")
    return 0 if summary.success else EXIT_FAILED


def cmd_demo(args) -> int:
    _set_paths(args)
    os.environ.pop("VINTAGE_SOURCE", None)  # the demo always runs on the embedded demo data
    from ml_assets.definitions import build_resources
    from ml_assets.settings import settings

    build_resources(settings())["sources"].ensure_available()
    print(f"demo data in {settings().demo.folder}")
    args.first = args.last = args.select = None
    return cmd_run(args)


def cmd_catalog_refresh(args) -> int:
    _set_paths(args)
    from ml_assets.runner import refresh_catalog
    from ml_assets.settings import settings

    if refresh_catalog():
        print(f"catalog refreshed: {settings().warehouse / 'catalog.duckdb'}")
        return 0
    print("vintage: the catalog is held open by another process; close it and retry",
          file=sys.stderr)
    return EXIT_FAILED


def cmd_ui(args) -> int:
    """The Dagster UI and daemon (`dagster dev`) on this code location."""
    _set_paths(args)
    from ml_assets.runner import ensure_dagster_home
    from ml_assets.settings import PROJECT_ROOT

    ensure_dagster_home()
    workspace = PROJECT_ROOT / "workspace.yaml"
    target = ["-w", str(workspace)] if workspace.is_file() else ["-m", "ml_assets.definitions"]
    dagster = Path(sys.executable).parent / "dagster"
    command = [str(dagster), "dev", *target, "-h", args.host, "-p", str(args.port)]
    os.execv(command[0], command)


def _staging_dir() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="vintage-contract-"))


def cmd_contract_infer(args) -> int:
    from ml_assets.contracts import infer_contract
    from resources.sources import SOURCE_NAMES

    draft = infer_contract(Path(args.source), SOURCE_NAMES, _staging_dir())
    if args.out:
        Path(args.out).write_text(draft + "\n")
        print(f"draft contract written to {args.out}; review it, then point "
              f"VINTAGE_CONTRACTS at it or copy it over config/contracts.yaml")
    else:
        print(draft)
    return 0


def cmd_contract_check(args) -> int:
    from ml_assets.contracts import check_folder, load_contracts

    results = check_folder(Path(args.source), load_contracts(args.contracts), _staging_dir())
    errors = 0
    for source, findings in results.items():
        if not findings:
            print(f"{source}: matches its contract")
        for finding in findings:
            errors += finding.severity == "ERROR"
            print(f"{finding.severity:5} {finding.describe()}")
    print(f"{errors} error(s)" if errors else "no errors")
    return EXIT_FAILED if errors else 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="vintage", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="write seeded demo data in the course layout")
    generate.add_argument("--out", required=True, type=Path)
    generate.add_argument("--scale", type=float, default=1.0, help="1 = 12,500 customers")
    generate.add_argument("--seed", type=int, default=42)
    generate.add_argument("--shift-month", default="2024-07",
                          help="population shift from this application month (YYYY-MM)")
    generate.add_argument("--stops-covering", action="append", metavar="SOURCE@YYYY-MM",
                          help="the source has no rows for customers applying from the month "
                               "on (a feed that stops covering new applicants); repeatable")
    generate.add_argument("--ends", action="append", metavar="SOURCE@YYYY-MM",
                          help="the source's last snapshot month (a feed that lands late); "
                               "repeatable")
    generate.add_argument("--corrected", action="append", metavar="SOURCE@YYYY-MM",
                          help="re-issue one value of the source's month (a corrected file, "
                               "same byte size); repeatable")
    generate.set_defaults(handler=cmd_generate)

    def add_paths(command, source=True):
        command.add_argument("--config", help="configuration YAML (default config/vintage.yaml)")
        if source:
            command.add_argument("--source", help="folder of the four source files "
                                                  "(default: the embedded demo data)")
        command.add_argument("--warehouse", help="lake and catalog folder (default ./warehouse)")

    run = commands.add_parser("run", help="materialise the graph for a range of months")
    add_paths(run)
    run.add_argument("--from", dest="first", metavar="YYYY-MM", help="first month (default: data)")
    run.add_argument("--to", dest="last", metavar="YYYY-MM", help="last month (default: data)")
    run.add_argument("--select", help="Dagster asset selection, e.g. 'group:silver' or "
                                      "'key:gold/feature_store+' (default: everything)")
    run.add_argument("--verbose", action="store_true", help="show Dagster's step logs")
    run.set_defaults(handler=cmd_run)

    demo = commands.add_parser("demo", help="generate 1x demo data and run every month")
    add_paths(demo, source=False)
    demo.add_argument("--verbose", action="store_true")
    demo.set_defaults(handler=cmd_demo)

    ui = commands.add_parser("ui", help="the Dagster UI and daemon (dagster dev)")
    add_paths(ui)
    ui.add_argument("--host", default="127.0.0.1",
                    help="interface to listen on (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(handler=cmd_ui)

    contract = commands.add_parser("contract", help="the data contracts of the sources")
    contract_commands = contract.add_subparsers(dest="contract_command", required=True)
    infer = contract_commands.add_parser("infer", help="draft a contract from a folder of files")
    infer.add_argument("--source", required=True, help="folder of the four source files")
    infer.add_argument("--out", help="write the draft here (default: print it)")
    infer.set_defaults(handler=cmd_contract_infer)
    check = contract_commands.add_parser(
        "check", help="report how a folder of files departs from the contract (runs nothing)")
    check.add_argument("--source", required=True, help="folder of the four source files")
    check.add_argument("--contracts", help="contract file (default config/contracts.yaml)")
    check.set_defaults(handler=cmd_contract_check)

    catalog = commands.add_parser("catalog", help="the DuckDB catalog of the lake")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", required=True)
    refresh = catalog_commands.add_parser("refresh", help="recreate every view")
    add_paths(refresh, source=False)
    refresh.set_defaults(handler=cmd_catalog_refresh)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from ml_assets.months import MonthError
    from ml_assets.runner import UsageError
    from ml_assets.settings import SettingsError
    from resources.sources import SourceError

    try:
        return args.handler(args)
    except (UsageError, MonthError, SettingsError) as error:
        print(f"vintage: {error}", file=sys.stderr)
        return EXIT_USAGE
    except SourceError as error:
        print(f"vintage: {error}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
