"""Security basics: no pickle, identifiers from a fixed set, the UI on loopback by default."""

import re
from pathlib import Path

import pytest

from ml_assets.cli import parser
from ml_assets.tables import all_tables
from resources.lake import LakeError, Table

ROOT = Path(__file__).resolve().parent.parent
PICKLING = re.compile(r"\b(import (c?pickle|dill|joblib|cloudpickle)|pickle\.(load|dump)|"
                      r"\.pkl\b|\.pickle\b)")


def project_files():
    for folder in ("ml_assets", "resources", "sql", "config"):
        yield from (p for p in (ROOT / folder).rglob("*") if p.is_file()
                    and p.suffix in {".py", ".sql", ".yaml"})


def test_nothing_in_the_project_pickles():
    offenders = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in project_files()
                 for m in PICKLING.finditer(p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("schema,name,column", [
    ("gold", "x; drop table gold.feature_store", "month"),
    ("public", "feature_store", "month"),
    ("gold", "feature_store", "month) ; --"),
])
def test_table_identifiers_are_validated(schema, name, column):
    with pytest.raises(LakeError):
        Table(schema, name, column, ("id",))


def test_every_table_is_one_of_the_fixed_set():
    names = [t.qualified_name for t in all_tables()]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"(raw|silver|gold|ml|monitoring|analytics)\.[a-z][a-z0-9_]*", n)
               for n in names)


def test_the_ui_listens_on_loopback_unless_told_otherwise():
    assert parser().parse_args(["ui"]).host == "127.0.0.1"
    assert "HOST ?= 127.0.0.1" in (ROOT / "Makefile").read_text()
