"""The model store: one folder of native, non-executable artifacts per model version.

`<path>/<model name>/<version>/`: LightGBM's model text and a JSON sidecar, or the logistic
model's JSON. A version is written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import dagster as dg

from ml_assets.modeling import Model, load_model

_VERSION = re.compile(r"^[a-z][a-z0-9_]*-\d{4}-\d{2}$")


class ModelStoreError(RuntimeError):
    """A model version is not in the store, or not readable."""


@cache
def code_version() -> str:
    """The git commit of the code that trains (with `-dirty` for local changes), else the
    package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=5, check=True)
        return commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import version

        return f"vintage-ml {version('vintage-ml')}"


def artifact_digest(folder: Path) -> str:
    """A hash of every file of a version, to show two trainings gave identical artifacts."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


class ModelStore(dg.ConfigurableResource):
    path: str

    def version_dir(self, name: str, version: str) -> Path:
        if not _VERSION.match(version) or not version.startswith(f"{name}-"):
            raise ModelStoreError(f"invalid model version {version!r} for model {name!r}")
        return Path(self.path) / name / version

    def save(self, model: Model, name: str, version: str) -> Path:
        target = self.version_dir(name, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        building = target.parent / f".{version}.{os.getpid()}.tmp"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir()
        model.save(building)
        replaced = target.parent / f".{version}.{os.getpid()}.old"
        if target.exists():
            os.rename(target, replaced)
        os.rename(building, target)
        shutil.rmtree(replaced, ignore_errors=True)
        return target

    def load(self, name: str, version: str) -> Model:
        folder = self.version_dir(name, version)
        if not folder.is_dir():
            raise ModelStoreError(f"model {version} has no artifacts at {folder}")
        return load_model(folder)
