"""The `vintage` command."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

EXIT_FAILED, EXIT_USAGE = 1, 2
MAX_SCALE = 1000  # 12.5 million customers, about 35 GB of CSV
UI_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
UI_GRACE_SECONDS = 8.0  # for `dagster dev` to stop its webserver, daemon and code servers
UI_KILL_SECONDS = 3.0  # then for what is left to end after SIGTERM, before SIGKILL


class ArgumentError(ValueError):
    """A command-line value refused before anything runs (exit 2)."""


# -- argument types: each names what it expected; argparse adds the option and exits 2 -------

def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_SCALE):
        raise argparse.ArgumentTypeError(
            f"expected a number greater than 0 and at most {MAX_SCALE}, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _month_or_empty(text: str) -> str:
    """A month as `_month` gives it; an empty value stays empty."""
    return text if text == "" else _month(text)


def _month(text: str) -> str:
    """`YYYY-MM` (or `YYYY-MM-01`) as `YYYY-MM`."""
    from ml_assets.months import MonthError, folder_label, parse_month

    try:
        return folder_label(parse_month(text))
    except MonthError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text!r}")
    return value


def _bucket(text: str) -> str | None:
    """An `s3://bucket/prefix` warehouse as given (None for a folder)."""
    if text.startswith(("s3://", "s3a://")):
        if len(text.split("://", 1)[1].strip("/")) == 0:
            raise argparse.ArgumentTypeError(f"{text}: expected s3://bucket/prefix")
        return text
    return None


def _warehouse_to_write(text: str):
    """A warehouse: a bucket URI, or a folder that exists or can be made."""
    return _bucket(text) or _folder_to_write(text)


def _existing_warehouse(text: str):
    """A warehouse that exists: a bucket URI (checked when it is read), or a folder."""
    return _bucket(text) or _existing_folder(text)


def _existing_folder(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such folder")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: not a folder")
    return path


def _existing_file(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: not a file")
    return path


def _folder_to_write(text: str) -> Path:
    """A folder that exists, or can be made: no part of the path is a file."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not writable: a file, not a folder")
    parent = next(p for p in path.absolute().parents if p.exists()) if not path.exists() else path
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text} is not writable: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text} is not writable: no permission on {parent}")
    return path


def _file_to_write(text: str) -> Path:
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: a folder, not a file")
    if not path.absolute().parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no folder {path.absolute().parent}")
    return path


# -- shared steps -----------------------------------------------------------------------------

def _set_paths(args: argparse.Namespace) -> None:
    """Paths go to the environment before the code location is built: they shape it (and a
    `dagster dev` child process reads the same)."""
    for option, variable in (("config", "VINTAGE_CONFIG"), ("source", "VINTAGE_SOURCE"),
                             ("warehouse", "VINTAGE_WAREHOUSE")):
        value = getattr(args, option, None)
        if value:
            os.environ[variable] = value if isinstance(value, str) else str(value.resolve())


def _settings():
    """The settings, or an ArgumentError naming the configuration file that cannot be read."""
    import yaml

    from ml_assets.settings import SettingsError, settings

    try:
        return settings()
    except SettingsError:
        raise
    except (yaml.YAMLError, ValueError, TypeError, AttributeError) as error:
        path = os.environ.get("VINTAGE_CONFIG", "config/vintage.yaml")
        raise ArgumentError(f"configuration file {path}: not a valid configuration: "
                            f"{' '.join(str(error).split())}") from None


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
        # the ERRORs first (in run order), then the WARNs: what is cut is never an ERROR
        # unless there are more ERRORs than lines
        failed = sorted(summary.failed_checks, key=lambda line: not line.startswith("ERROR"))
        errors = sum(line.startswith("ERROR") for line in failed)
        print(f"{len(failed)} check evaluation(s) failed ({errors} ERROR, "
              f"{len(failed) - errors} WARN):")
        for line in failed[:shown]:
            print(f"  {line}")
        if len(failed) > shown:
            print(f"  ... and {len(failed) - shown} more (see the Dagster UI)")
    for error in summary.errors:
        print(f"vintage: {error}", file=sys.stderr)


# -- progress of a run ------------------------------------------------------------------------

def _step_line(event, width: int) -> tuple[str, str]:
    """The line of a step, `[ 5/21] silver/loan_daily 2023-01..2025-11 ...`, and its end,
    ` 3.8 s`, ` FAILED after 3.8 s` or ` skipped (an upstream step failed)`."""
    head = f"[{event.index:>{width}}/{event.total}] {event.step} {event.months} ..."
    if event.status == "skipped":
        return head, " skipped (an upstream step failed)"
    if event.status == "failed":
        return head, f" FAILED after {event.seconds:.1f} s"
    return head, f" {event.seconds:.1f} s" if event.seconds is not None else ""


def _print_step_lines(event) -> None:
    """One line per step, for logs and pipes: its start is written when it starts, its time
    when it ends."""
    head, tail = _step_line(event, len(str(event.total)))
    if event.status == "started":
        print(head, end="", flush=True)
    elif event.status == "skipped":
        print(head + tail, flush=True)
    else:
        print(tail, flush=True)


@contextlib.contextmanager
def _progress() -> Iterator[Callable]:
    """The `on_step` of a run: a progress bar on a terminal (rich), above which each finished
    step's line is printed; one line per step otherwise."""
    if not sys.stdout.isatty():
        yield _print_step_lines
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn
    from rich.text import Text

    class StepSeconds(ProgressColumn):
        """How long the current step has been running."""

        def render(self, task):
            since = task.fields.get("since")
            seconds = "" if since is None else f"{time.monotonic() - since:5.1f} s"
            return Text(seconds)

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        StepSeconds(), console=Console(file=sys.stdout), transient=True)
    task = None

    def on_step(event) -> None:
        nonlocal task
        if task is None:  # shown from the first step on, not while the run is prepared
            task = progress.add_task("", total=event.total)
            progress.start()
        if event.status == "started":
            progress.update(task, description=f"{event.step} {event.months}",
                            since=time.monotonic(), total=event.total)
            return
        head, tail = _step_line(event, len(str(event.total)))
        progress.console.print(head + tail, highlight=False, markup=False)
        progress.update(task, completed=event.index, total=event.total, since=None)

    try:
        yield on_step
    finally:
        progress.stop()


# -- commands ---------------------------------------------------------------------------------

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
    except OSError as error:  # a folder it cannot write (/proc, a full disk, no permission)
        raise ArgumentError(f"--out {args.out}: cannot write the files: "
                            f"{error.strerror or error}") from None
    for path in paths.values():
        print(path)
    print(f"generated in {time.monotonic() - started:.1f} s")
    return 0


def cmd_run(args) -> int:
    _set_paths(args)
    _settings()
    from ml_assets.runner import run

    started = time.monotonic()
    with _progress() as on_step:
        summary = run(args.first, args.last, args.select, verbose=args.verbose, on_step=on_step)
    _print_summary(summary)
    print(f"wall time {time.monotonic() - started:.1f} s")
    return 0 if summary.success else EXIT_FAILED


def cmd_demo(args) -> int:
    _set_paths(args)
    os.environ.pop("VINTAGE_SOURCE", None)  # the demo always runs on the embedded demo data
    _settings()
    from ml_assets.definitions import build_resources
    from ml_assets.settings import settings

    build_resources(settings())["sources"].ensure_available()
    print(f"demo data in {settings().demo.folder}")
    args.first = args.last = args.select = None
    return cmd_run(args)


def cmd_catalog_refresh(args) -> int:
    _set_paths(args)
    config = _settings()
    if config.local_warehouse and not Path(config.warehouse).is_dir():
        raise ArgumentError(f"warehouse {config.warehouse}: no such folder (--warehouse, "
                            "VINTAGE_WAREHOUSE or paths.warehouse)")
    from ml_assets.runner import refresh_catalog

    if refresh_catalog():
        print(f"catalog refreshed: {config.catalog}")
        return 0
    print("vintage: another process is rebuilding the catalog; retry in a moment",
          file=sys.stderr)
    return EXIT_FAILED


def cmd_warehouse_migrate(args) -> int:
    """Convert a warehouse of the earlier Parquet lake into Delta tables, table by table."""
    _set_paths(args)
    config = _settings()
    if not config.local_warehouse or not Path(config.warehouse).is_dir():
        raise ArgumentError(f"warehouse {config.warehouse}: not a folder; only a folder "
                            "warehouse can hold the earlier Parquet lake")
    from ml_assets.definitions import build_lake
    from ml_assets.tables import all_tables

    lake = build_lake(config)
    converted = 0
    for table in all_tables():
        done = lake.migrate_parquet_lake(table, keep=args.keep)
        if done:
            converted += 1
            print(f"{table.qualified_name}: {done[0]} months, {done[1]} rows -> Delta "
                  f"version {lake.version(table)}")
    for leftover in ("_staging", "_tmp"):  # the earlier lake's scratch folders
        shutil.rmtree(Path(config.warehouse) / leftover, ignore_errors=True)
    lake.refresh_catalog(all_tables())
    print(f"{converted} table(s) converted; catalog rebuilt: {config.catalog}" if converted
          else "nothing to convert: no table of the earlier Parquet lake in this warehouse")
    return 0


def cmd_warehouse_vacuum(args) -> int:
    """Remove the files of table versions older than the retention (storage.retention_days)."""
    _set_paths(args)
    config = _settings()
    from ml_assets.definitions import build_lake
    from ml_assets.tables import all_tables

    lake = build_lake(config)
    total = 0
    for table in all_tables():
        files = lake.vacuum(table, dry_run=args.dry_run)
        total += len(files)
        if files:
            print(f"{table.qualified_name}: {len(files)} file(s)"
                  f"{' would be' if args.dry_run else ''} removed")
    print(f"{total} file(s) {'would be ' if args.dry_run else ''}removed; versions of the last "
          f"{config.retention_days} days are kept")
    return 0


def _check_listen_address(host: str, port: int) -> None:
    """The webserver can listen on host:port: the name resolves to a local address and the port
    is free. Raises ArgumentError naming --host or --port."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as error:
        raise ArgumentError(f"--host {host!r}: not a known host name or address "
                            f"({getattr(error, 'strerror', None) or error})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise ArgumentError(f"--host {host} --port {port}: cannot listen there "
                                f"({error.strerror})") from None


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) of every process, from /proc (empty without it)."""
    table = {}
    for entry in Path("/proc").iterdir() if Path("/proc/self").exists() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold ")"
        table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def descendants(pid: int) -> list[int]:
    """The living (not zombie) processes descended from `pid`, parents before children."""
    table = _process_table()
    found, queue = [], [pid]
    while queue:
        parent = queue.pop(0)
        children = [p for p, (ppid, _) in table.items() if ppid == parent]
        queue += children
        found += [p for p in children if table[p][1] != "Z"]
    return found


def _reap_orphans(keep: int) -> None:
    """Collect the exit status of dead processes re-parented to us (we are their subreaper)."""
    for pid, (ppid, state) in _process_table().items():
        if ppid == os.getpid() and state == "Z" and pid != keep:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def _become_subreaper() -> None:
    """On Linux, processes orphaned below us (a code server whose parent ended first) are
    re-parented to us rather than to init, so we still find and stop them."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_child_subreaper = 36
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def _stop_process_tree(child: subprocess.Popen) -> None:
    """Stop `dagster dev` and everything below it: SIGINT (its own graceful shutdown of the
    webserver, daemon and code servers), up to UI_GRACE_SECONDS; then SIGTERM to whatever is
    left and, after UI_KILL_SECONDS, SIGKILL."""
    if child.poll() is None:
        child.send_signal(signal.SIGINT)
    for sig, seconds in ((None, UI_GRACE_SECONDS), (signal.SIGTERM, UI_KILL_SECONDS),
                         (signal.SIGKILL, 5.0)):
        if sig is not None:
            for pid in descendants(os.getpid()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, sig)  # its process group, where /proc is not there
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            child.poll()
            _reap_orphans(keep=child.pid)
            if child.returncode is not None and not descendants(os.getpid()):
                return
            time.sleep(0.1)


def cmd_ui(args) -> int:
    """The Dagster UI and daemon: `dagster dev` on this code location, run as a child and
    stopped with everything it started on SIGTERM, SIGINT or SIGHUP (see _stop_process_tree).
    Returns 0 when stopped by a signal, else `dagster dev`'s exit status."""
    _set_paths(args)
    config = _settings()
    _check_listen_address(args.host, args.port)
    from ml_assets.definitions import build_lake
    from ml_assets.runner import ensure_dagster_home
    from ml_assets.settings import PROJECT_ROOT
    from ml_assets.tables import all_tables
    from resources.lake import CATALOG_STORAGE_NUMBER, LakeError, catalog_storage_number

    ensure_dagster_home(config)  # the warehouse's own instance: the UI shows its runs
    if config.catalog.exists() and \
            catalog_storage_number(config.catalog) != CATALOG_STORAGE_NUMBER:
        try:  # a catalog an older version wrote: readable by every DuckDB again
            build_lake(config).refresh_catalog(all_tables())
        except LakeError as error:
            print(f"vintage ui: {error}", file=sys.stderr)
    workspace = PROJECT_ROOT / "workspace.yaml"
    target = ["-w", str(workspace)] if workspace.is_file() else ["-m", "ml_assets.definitions"]
    dagster = Path(sys.executable).parent / "dagster"
    command = [str(dagster), "dev", *target, "-h", args.host, "-p", str(args.port)]

    stop_signal: list[int] = []

    def request_stop(signum, _frame):
        stop_signal.append(signum)

    # Our own handlers, before the child starts: it then starts with the default ones even when
    # we were started with SIGINT ignored (a script's background job), which `dagster dev`
    # would otherwise pass on to SIGTERM and so ignore both.
    for sig in UI_STOP_SIGNALS:
        signal.signal(sig, request_stop)
    _become_subreaper()
    # its own process group: a Ctrl-C at the terminal reaches us only, and we pass it on once
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, process_group=0)
    try:
        while not stop_signal and child.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=0.5)
    finally:
        if stop_signal:
            name = signal.Signals(stop_signal[0]).name
            print(f"vintage ui: {name} received, stopping the Dagster services", file=sys.stderr)
        _stop_process_tree(child)
    if stop_signal:
        return 0
    print(f"vintage ui: dagster dev ended with exit status {child.returncode}", file=sys.stderr)
    return child.returncode or EXIT_FAILED


def cmd_dashboard(args) -> int:
    """The monitoring dashboard: evidently's UI (its own web service, pages and scripts served
    from the installed package, nothing fetched from the internet; telemetry off) over the
    warehouse's evidently workspace, which monitoring/dashboard writes. Runs until stopped
    (Ctrl-C, SIGTERM); returns 0."""
    _set_paths(args)
    config = _settings()
    _check_listen_address(args.host, args.port)
    workspace = config.dashboard_workspace
    if not workspace.is_dir():
        print(f"vintage dashboard: {workspace} has no snapshots yet: materialise "
              "monitoring/dashboard (make demo does)", file=sys.stderr)
        workspace.mkdir(parents=True)
    os.environ["DO_NOT_TRACK"] = "1"  # evidently's usage telemetry: this stays offline
    from evidently.ui.service.app import run_local

    print(f"vintage dashboard: http://{args.host}:{args.port} over {workspace}",
          file=sys.stderr)
    run_local(host=args.host, port=args.port, workspace=str(workspace))
    return 0


def cmd_serve(args) -> int:
    """The scoring service (ml_assets.serving) on --host/--port (default: serve.host and
    serve.port of the settings) until stopped; exit 1 when it cannot load a champion."""
    _set_paths(args)
    config = _settings()
    host, port = args.host or config.serve.host, args.port or config.serve.port
    _check_listen_address(host, port)
    from ml_assets.definitions import build_lake, build_resources, load_build
    from ml_assets.serving import ServiceError, serve
    from resources.model_store import ModelStoreError

    build = load_build(config)
    try:
        serve(build, build_lake(config), build_resources(config)["model_store"], host, port)
    except (ServiceError, ModelStoreError) as error:
        print(f"vintage serve: {error}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _staging_dir() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="vintage-contract-"))


def cmd_contract_infer(args) -> int:
    from ml_assets.contracts import infer_contract
    from resources.sources import SOURCE_NAMES

    draft = infer_contract(args.source, SOURCE_NAMES, _staging_dir())
    if args.out:
        args.out.write_text(draft + "\n")
        print(f"draft contract written to {args.out}; review it, then point "
              f"VINTAGE_CONTRACTS at it or copy it over config/contracts.yaml")
    else:
        print(draft)
    return 0


def cmd_contract_check(args) -> int:
    import yaml

    from ml_assets.contracts import check_folder, load_contracts
    from ml_assets.settings import SettingsError

    try:
        contracts = load_contracts(args.contracts)
    except SettingsError:
        raise
    except (yaml.YAMLError, ValueError, TypeError, AttributeError) as error:
        path = args.contracts or os.environ.get("VINTAGE_CONTRACTS", "config/contracts.yaml")
        raise ArgumentError(f"contract file {path}: not a valid contract: "
                            f"{' '.join(str(error).split())}") from None
    results = check_folder(args.source, contracts, _staging_dir())
    errors = 0
    for source, findings in results.items():
        if not findings:
            print(f"{source}: matches its contract")
        for finding in findings:
            errors += finding.severity == "ERROR"
            print(f"{finding.severity:5} {finding.describe()}")
    print(f"{errors} error(s)" if errors else "no errors")
    return EXIT_FAILED if errors else 0


def _model_version(text: str) -> str:
    """A model version as the registry names it: `<model name>-YYYY-MM`, of a real month."""
    match = re.fullmatch(r"[a-z][a-z0-9_]*-(\d{4}-\d{2})", text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"expected a model version <model name>-YYYY-MM, e.g. lightgbm-2024-06, got {text!r}")
    _month(match.group(1))
    return text


def _reproduce(reproduce) -> int:
    """Run a reproduction against the configured warehouse and print what matched; exit 0
    when everything did, 1 naming what differs or why it cannot be reproduced, 2 when what
    was asked for was never published."""
    config = _settings()
    from ml_assets.definitions import build_lake, build_resources, load_build
    from ml_assets.reproduce import NotPublished, ReproduceError, describe
    from resources.lake import LakeError
    from resources.model_store import ModelStoreError

    try:
        reproduction = reproduce(load_build(config), build_lake(config),
                                 build_resources(config)["model_store"])
    except NotPublished as error:
        raise ArgumentError(str(error)) from None
    except (ReproduceError, LakeError, ModelStoreError) as error:
        print(f"vintage: cannot reproduce: {error}", file=sys.stderr)
        return EXIT_FAILED
    for line in describe(reproduction):
        print(line)
    if reproduction.reproduced:
        print(f"reproduced: {reproduction.subject}")
        return 0
    print(f"NOT reproduced: {reproduction.subject}: {', '.join(reproduction.differences)} "
          "differ", file=sys.stderr)
    return EXIT_FAILED


def cmd_model_reproduce(args) -> int:
    _set_paths(args)
    from ml_assets.reproduce import reproduce_model

    return _reproduce(lambda build, lake, store: reproduce_model(build, lake, store,
                                                                  args.version))


def _text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a non-empty text")
    return text.strip()


def cmd_model_sign_off(args) -> int:
    """Approve or reject a model version: checked against the registry first (exit 2 naming
    what is wrong), then the job champion_approval for the months from the version's trained
    month to the last month the gate decided; prints the re-decided champion of each month."""
    _set_paths(args)
    config = _settings()
    import duckdb

    from ml_assets.assets.models import AliasRecord, ModelRecord, read_records
    from ml_assets.definitions import build_lake
    from ml_assets.jobs import approval_run_config, champion_approval
    from ml_assets.months import folder_label
    from ml_assets.runner import run
    from ml_assets.signoff import SignOffError, approval_problem, version_month
    from ml_assets.tables import MODEL_ALIASES, MODEL_REGISTRY

    lake = build_lake(config)
    try:
        month = version_month(args.version)
    except SignOffError as error:
        raise ArgumentError(str(error)) from None
    with duckdb.connect() as con:
        candidates = []
        if month in lake.published_months(MODEL_REGISTRY):
            lake.read(con, "registry", MODEL_REGISTRY, [month])
            candidates = read_records(con, "SELECT * FROM registry", ModelRecord)
    problem = approval_problem(args.version, args.action, args.by, args.reason, candidates)
    if problem:
        raise ArgumentError(problem)
    decided = lake.published_months(MODEL_ALIASES)
    if month not in decided:
        raise ArgumentError(f"the champion gate has not decided {folder_label(month)} yet: run "
                            f"it first (vintage run --from {folder_label(month)} --to "
                            f"{folder_label(month)})")
    with _progress() as on_step:
        summary = run(folder_label(month), folder_label(decided[-1]),
                      "key:ml/model_approvals or key:ml/model_aliases or key:gold/predictions "
                      "or key:ml/validation_reports",
                      verbose=args.verbose, on_step=on_step, job_name=champion_approval.name,
                      run_config=approval_run_config(args.version, args.action, args.by,
                                                     args.reason))
    _print_summary(summary)
    if not summary.success:
        return EXIT_FAILED
    with duckdb.connect() as con:
        lake.read(con, "aliases", MODEL_ALIASES, [m for m in decided if m >= month])
        rows = read_records(con, "SELECT * FROM aliases ORDER BY month", AliasRecord)
    print(f"{args.action} {args.version} by {args.by} recorded; the champion from "
          f"{folder_label(month)} on:")
    for row in rows:
        print(f"  {folder_label(row.month)}  {row.model_version or 'none':<22} "
              f"{row.decision:<9} {row.status or '-':<9} {row.signed_off_by or ''}")
    return 0


def cmd_report(args) -> int:
    """Print where a model version's validation report is, as a local file: the warehouse's
    own file for a folder warehouse, else (a bucket, or --out) a copy written to --out or
    `<version>.html` in the working directory. Exit 2 when the version has no report."""
    _set_paths(args)
    config = _settings()
    from ml_assets.assets.monitoring import report_store, validation_file
    from ml_assets.definitions import build_lake
    from ml_assets.months import folder_label
    from ml_assets.reproduce import NotPublished, model_record
    from ml_assets.signoff import version_month
    from resources.storage import StorageError

    store = report_store(build_lake(config))
    path = validation_file(args.version)
    try:
        if store.bucket or args.out:
            html = store.read_bytes(path)
        elif not store.exists(path):
            raise FileNotFoundError(path)
    except FileNotFoundError:
        month = folder_label(version_month(args.version))
        try:  # a version never trained has no report to materialise
            model_record(build_lake(config), args.version)
        except NotPublished as error:
            raise ArgumentError(str(error)) from None
        raise ArgumentError(
            f"no validation report of {args.version} in {store.uri_of('validation')}: "
            f"materialise it (vintage run --from {month} --to {month} --select "
            f"key:ml/validation_reports)") from None
    except StorageError as error:
        print(f"vintage: {error}", file=sys.stderr)
        return EXIT_FAILED
    if not (store.bucket or args.out):
        print(store.uri_of(path))
        return 0
    out = args.out or Path(f"{args.version}.html")
    out.write_bytes(html)
    print(out.resolve())
    return 0


def cmd_predictions_reproduce(args) -> int:
    _set_paths(args)
    from ml_assets.months import parse_month
    from ml_assets.reproduce import reproduce_predictions

    month = parse_month(args.month)
    return _reproduce(lambda build, lake, store: reproduce_predictions(build, lake, store,
                                                                        month))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="vintage", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="write seeded demo data in the course layout")
    generate.add_argument("--out", required=True, type=_folder_to_write,
                          help="folder to write the four CSV files into")
    generate.add_argument("--scale", type=_scale, default=1.0,
                          help=f"1 = 12,500 customers; more than 0, at most {MAX_SCALE}")
    generate.add_argument("--seed", type=_seed, default=42, help="a whole number >= 0")
    generate.add_argument("--shift-month", type=_month_or_empty, default="2024-07",
                          help="population shift from this application month (YYYY-MM, "
                               "default 2024-07; empty: no shift)")
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

    def add_paths(command, source=True, warehouse=_warehouse_to_write):
        command.add_argument("--config", type=_existing_file,
                             help="configuration YAML (default config/vintage.yaml)")
        if source:
            command.add_argument("--source", type=_existing_folder,
                                 help="folder of the four source files "
                                      "(default: the embedded demo data)")
        command.add_argument("--warehouse", type=warehouse,
                             help="the warehouse: a folder (default ./warehouse) or "
                                  "s3://bucket/prefix")

    run = commands.add_parser("run", help="materialise the graph for a range of months")
    add_paths(run)
    run.add_argument("--from", dest="first", metavar="YYYY-MM", type=_month,
                     help="first month (default: data)")
    run.add_argument("--to", dest="last", metavar="YYYY-MM", type=_month,
                     help="last month (default: data)")
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
    ui.add_argument("--port", type=_port, default=3000, help="1-65535 (default 3000)")
    ui.set_defaults(handler=cmd_ui)

    dashboard = commands.add_parser(
        "dashboard", help="the monitoring dashboard: evidently's UI over the warehouse's "
                          "evidently workspace")
    add_paths(dashboard, source=False, warehouse=_existing_warehouse)
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="interface to listen on (default 127.0.0.1: this machine only)")
    dashboard.add_argument("--port", type=_port, default=8000, help="1-65535 (default 8000)")
    dashboard.set_defaults(handler=cmd_dashboard)

    serve = commands.add_parser("serve", help="the scoring service: the approved champion "
                                              "over HTTP, with Prometheus metrics")
    add_paths(serve, source=False, warehouse=_existing_warehouse)
    serve.add_argument("--host", help="interface to listen on (default serve.host of the "
                                      "settings, 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=_port, help="1-65535 (default serve.port, 8080)")
    serve.set_defaults(handler=cmd_serve)

    contract = commands.add_parser("contract", help="the data contracts of the sources")
    contract_commands = contract.add_subparsers(dest="contract_command", required=True)
    infer = contract_commands.add_parser("infer", help="draft a contract from a folder of files")
    infer.add_argument("--source", required=True, type=_existing_folder,
                       help="folder of the four source files")
    infer.add_argument("--out", type=_file_to_write,
                       help="write the draft here (default: print it)")
    infer.set_defaults(handler=cmd_contract_infer)
    check = contract_commands.add_parser(
        "check", help="report how a folder of files departs from the contract (runs nothing)")
    check.add_argument("--source", required=True, type=_existing_folder,
                       help="folder of the four source files")
    check.add_argument("--contracts", type=_existing_file,
                       help="contract file (default config/contracts.yaml)")
    check.set_defaults(handler=cmd_contract_check)

    catalog = commands.add_parser("catalog", help="the DuckDB catalog of the lake")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", required=True)
    refresh = catalog_commands.add_parser(
        "refresh", help="rebuild the catalog: a view per table of the lake")
    add_paths(refresh, source=False, warehouse=_existing_warehouse)
    refresh.set_defaults(handler=cmd_catalog_refresh)

    warehouse = commands.add_parser("warehouse", help="the warehouse's Delta tables")
    warehouse_commands = warehouse.add_subparsers(dest="warehouse_command", required=True)
    migrate = warehouse_commands.add_parser(
        "migrate", help="convert a warehouse of the earlier Parquet lake into Delta tables")
    add_paths(migrate, source=False, warehouse=_existing_folder)
    migrate.add_argument("--keep", action="store_true",
                         help="keep each old table folder as <table>.parquet-lake")
    migrate.set_defaults(handler=cmd_warehouse_migrate)
    vacuum = warehouse_commands.add_parser(
        "vacuum", help="remove old table versions' files past storage.retention_days")
    add_paths(vacuum, source=False, warehouse=_existing_warehouse)
    vacuum.add_argument("--dry-run", action="store_true", help="only list what would go")
    vacuum.set_defaults(handler=cmd_warehouse_vacuum)

    model = commands.add_parser("model", help="the models of the registry")
    model_commands = model.add_subparsers(dest="model_command", required=True)
    reproduce = model_commands.add_parser(
        "reproduce", help="rebuild a model version's training set from the table versions it "
                          "read, retrain it, and compare with the record (writes nothing)")
    reproduce.add_argument("version", type=_model_version,
                           help="a model version of ml.model_registry, e.g. lightgbm-2024-06")
    add_paths(reproduce, warehouse=_existing_warehouse)
    reproduce.set_defaults(handler=cmd_model_reproduce)
    for action, what in (("approve", "make a model version champion from its trained month "
                                     "on (a hand promotion, or a manual-mode proposal)"),
                         ("reject", "reject the gate's proposal of a model version: the "
                                    "previous champion stays")):
        sign = model_commands.add_parser(
            action, help=f"{what}; records who and why in ml.model_approvals and re-decides "
                         "the gate, swap sets and predictions from that month on")
        sign.add_argument("version", type=_model_version,
                          help="a model version of ml.model_registry, e.g. lightgbm-2025-01")
        sign.add_argument("--by", required=True, type=_text, help="who decides")
        sign.add_argument("--reason", required=True, type=_text, help="why")
        sign.add_argument("--verbose", action="store_true", help="show Dagster's step logs")
        add_paths(sign, warehouse=_existing_warehouse)
        sign.set_defaults(handler=cmd_model_sign_off, action=action)

    report = commands.add_parser(
        "report", help="a model version's validation report as a local file: prints its path "
                       "(copied from a bucket warehouse, or to --out)")
    report.add_argument("version", type=_model_version,
                        help="a model version of ml.model_registry, e.g. lightgbm-2025-01")
    report.add_argument("--out", type=_file_to_write,
                        help="copy the report to this file (default: the warehouse's own file "
                             "for a folder warehouse, <version>.html here for a bucket)")
    add_paths(report, source=False, warehouse=_existing_warehouse)
    report.set_defaults(handler=cmd_report)

    predictions = commands.add_parser("predictions", help="the published predictions")
    predictions_commands = predictions.add_subparsers(dest="predictions_command", required=True)
    again = predictions_commands.add_parser(
        "reproduce", help="rescore a month from the table versions its predictions read, with "
                          "the champion's artifacts, and compare (writes nothing)")
    again.add_argument("month", metavar="YYYY-MM", type=_month,
                       help="an application month of gold.predictions")
    add_paths(again, warehouse=_existing_warehouse)
    again.set_defaults(handler=cmd_predictions_reproduce)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run a `vintage` command. Exit status: 0 done, 1 failed (a step, a source, a contract),
    2 a bad argument (with a message naming it, never a traceback), 130 interrupted."""
    args = parser().parse_args(argv)
    from ml_assets.months import MonthError
    from ml_assets.runner import UsageError
    from ml_assets.settings import SettingsError
    from resources.lake import LakeError
    from resources.sources import SourceError

    try:
        return args.handler(args)
    except (ArgumentError, UsageError, MonthError, SettingsError) as error:
        print(f"vintage: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (SourceError, LakeError) as error:
        print(f"vintage: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("vintage: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The `vintage` console script: `main`, then the interpreter's exit steps that matter
    (other threads joined, atexit handlers: logs flushed, temporary files removed) and an exit
    that skips its last teardown. There duckdb's bindings (nanobind) print a page of "leaked
    instances" for objects Python frees late, after a run that went well; the report is
    benign (https://nanobind.readthedocs.io/en/latest/refleaks.html) and reads like a crash."""
    code = main()
    threading._shutdown()  # what Python does first at exit: join the non-daemon threads
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
