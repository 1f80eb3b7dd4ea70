"""A snapshot of every asset spec: keys, groups, the tables each reads and through which
partition mapping, checks, automation and backfill policy. A change to the graph shows as a
readable diff in review (update with VINTAGE_UPDATE_SNAPSHOT=1). And nothing reads the
configuration at import: the definitions are built by a function."""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from ml_assets.definitions import build_definitions

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_specs.txt"


def describe_mapping(mapping: dg.PartitionMapping | None) -> str:
    if mapping is None or isinstance(mapping, dg.IdentityPartitionMapping):
        return "same month"
    if isinstance(mapping, dg.TimeWindowPartitionMapping):
        if mapping.start_offset == mapping.end_offset == 0:
            return "same month"
        return f"months {mapping.start_offset:+d}..{mapping.end_offset:+d}"
    if isinstance(mapping, dg.AllPartitionMapping):
        return "every month (looked up)"
    return type(mapping).__name__


def render(definitions: dg.Definitions) -> str:
    """The graph as text, one block per asset, sorted."""
    graph = definitions.resolve_asset_graph()
    lines = []
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def
        policy = node.backfill_policy.policy_type.value if node.backfill_policy else "none"
        lines.append(f"{key.to_user_string()}  [group {node.group_name}]")
        lines.append(f"  partitions: {type(partitions).__name__ if partitions else 'none'}, "
                     f"backfill: {policy}")
        for parent in sorted(node.parent_keys, key=lambda k: k.to_user_string()):
            mapping = graph.get_partition_mapping(key, parent)
            lines.append(f"  reads {parent.to_user_string()}: {describe_mapping(mapping)}")
        for check in sorted(node.check_keys, key=lambda c: c.name):
            spec = graph.get_check_spec(check)
            lines.append(f"  check {check.name}{' (blocking)' if spec.blocking else ''}")
        if node.automation_condition is not None:
            lines.append(f"  automation: {node.automation_condition.get_label() or 'custom'}")
        lines.append("")
    return "\n".join(lines)


def test_the_asset_graph_matches_its_snapshot():
    current = render(build_definitions())
    if os.environ.get("VINTAGE_UPDATE_SNAPSHOT"):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(current)
    expected = SNAPSHOT.read_text()
    diff = "\n".join(difflib.unified_diff(expected.splitlines(), current.splitlines(),
                                          "snapshot", "now", lineterm=""))
    assert current == expected, f"the asset graph changed (VINTAGE_UPDATE_SNAPSHOT=1 to " \
                                f"accept):\n{diff}"


def test_every_table_an_asset_reads_is_a_declared_dependency():
    """The factory refuses an undeclared read (Step.read); here: every declared input is an
    edge of the graph, so the UI's lineage shows every real dependency."""
    from ml_assets.definitions import load_build, table_specs
    from ml_assets.spec import asset_key

    graph = build_definitions().resolve_asset_graph()
    for spec in table_specs(load_build()):
        parents = graph.get(asset_key(spec.table)).parent_keys
        assert {asset_key(i.table) for i in spec.inputs} <= parents | {asset_key(spec.table)}


def test_nothing_reads_the_configuration_at_import(tmp_path):
    """Every module imports with no readable configuration; building the definitions is what
    reads it (and says which file is missing)."""
    code = ("import importlib, pkgutil, ml_assets, resources\n"
            "for package in (ml_assets, resources):\n"
            "    for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
            "        importlib.import_module(module.name)\n"
            "from ml_assets.definitions import build_definitions\n"
            "from ml_assets.settings import SettingsError\n"
            "try:\n"
            "    build_definitions()\n"
            "except SettingsError as error:\n"
            "    print('refused:', error)\n")
    env = {**os.environ, "VINTAGE_CONFIG": str(tmp_path / "missing.yaml"),
           "VINTAGE_MODELS": str(tmp_path / "missing-models.yaml")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"refused: configuration file {tmp_path / 'missing.yaml'} not found" in done.stdout
