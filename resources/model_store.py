"""The model store: one folder of native, non-executable artifacts per model version.

`<uri>/<model name>/<version>/`: LightGBM's model text and a JSON sidecar, or the logistic
model's JSON. `uri` is a local folder or `s3://bucket/prefix` (the warehouse's `ml/artifacts`).

A reader never loads a mixture of two savings of a version:
- in a folder, a version is written to a temporary folder and renamed into place;
- in a bucket, which has no rename of a prefix, the version's files are uploaded and then a
  manifest (`_manifest.json`: each file's name and SHA-256) is written last; a reader takes
  the files the manifest lists and refuses any whose bytes do not match it. This keeps the
  layout of a folder (no save-id sub-prefixes, nothing to clean up behind readers) and turns
  a save under way, or one that died half way, into a clear error instead of a mixture.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache, cached_property
from pathlib import Path

import dagster as dg

from ml_assets.modeling import Model, load_model
from resources.storage import FileStore, StorageError, is_bucket

_VERSION = re.compile(r"^[a-z][a-z0-9_]*-\d{4}-\d{2}$")
MANIFEST = "_manifest.json"  # in a bucket: the files of a version's last complete save


class ModelStoreError(RuntimeError):
    """A model version is not in the store, or not readable."""


class ArtifactsMissing(ModelStoreError):
    """A model version has no artifacts in the store."""


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


def files_digest(files: Mapping[str, bytes]) -> str:
    """A hash of a version's files (name -> bytes), to show two trainings gave identical
    artifacts: 16 hex digits."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name])
    return digest.hexdigest()[:16]


class ModelStore(dg.ConfigurableResource):
    """Model versions under `uri`, a local folder or `s3://bucket/prefix` (`storage_options`:
    delta-rs style S3 options, see resources.storage.s3_settings). For a bucket, a version
    is saved into, and loaded from, a temporary local folder under `scratch_dir` (default:
    the system's temporary folder), removed afterwards. Every method raises ModelStoreError
    for an invalid version name, and for a version that is missing or cannot be read or
    written, naming it."""

    uri: str
    storage_options: dict[str, str] = {}
    scratch_dir: str | None = None

    @property
    def bucket(self) -> bool:
        return is_bucket(self.uri)

    @cached_property
    def _files(self) -> FileStore:
        return FileStore(self.uri, self.storage_options)

    def _key(self, name: str, version: str) -> str:
        """`<name>/<version>`, checked: a version is `<name>-YYYY-MM`."""
        if not _VERSION.match(version) or not version.startswith(f"{name}-"):
            raise ModelStoreError(f"invalid model version {version!r} for model {name!r}")
        return f"{name}/{version}"

    def version_uri(self, name: str, version: str) -> str:
        """Where the version's files are: a local path (as the store's `uri` gives it), or
        `s3://...`."""
        key = self._key(name, version)
        return f"{self.uri.rstrip('/')}/{key}" if self.bucket else str(Path(self.uri) / key)

    def save(self, model: Model, name: str, version: str) -> str:
        """Write `model` as `version`, replacing any earlier save of it; returns version_uri."""
        key = self._key(name, version)
        if not self.bucket:
            target = Path(self.version_uri(name, version))
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
            return str(target)
        with self._scratch() as folder:
            model.save(folder)
            files = {path.name: path.read_bytes() for path in folder.iterdir()}
        manifest = {"version": version, "files": {
            file: hashlib.sha256(data).hexdigest() for file, data in sorted(files.items())}}
        try:
            for file, data in files.items():
                self._files.write_bytes(f"{key}/{file}", data)
            self._files.write_bytes(f"{key}/{MANIFEST}", json.dumps(manifest, indent=1)
                                    .encode())
            for stale in set(self._files.list(key)) - {f"{key}/{f}" for f in (*files, MANIFEST)}:
                self._files.delete(stale)  # a file an earlier save had and this one has not
        except StorageError as error:
            raise ModelStoreError(f"model {version} not saved: {error}") from None
        return self.version_uri(name, version)

    def load(self, name: str, version: str) -> Model:
        if not self.bucket:
            return load_model(self._folder(name, version))
        files = self.files(name, version)
        with self._scratch() as folder:
            for file, data in files.items():
                (folder / file).write_bytes(data)
            return load_model(folder)

    def digest(self, name: str, version: str) -> str:
        """The artifact digest of the stored version (files_digest of its files), as the
        registry records it."""
        return files_digest(self.files(name, version))

    def files(self, name: str, version: str) -> dict[str, bytes]:
        """The version's files, name -> bytes. In a bucket: those of its manifest, each
        checked against the manifest's SHA-256 (ModelStoreError when one differs: a save
        under way, or one that did not finish)."""
        if not self.bucket:
            return {p.name: p.read_bytes() for p in self._folder(name, version).iterdir()}
        key, where = self._key(name, version), self.version_uri(name, version)
        unfinished = "being saved again, or a save did not finish: save it again"
        listed = self._read(f"{key}/{MANIFEST}", where)
        if listed is None:
            if self._files.list(key):
                raise ModelStoreError(f"model {version} at {where} has no {MANIFEST} "
                                      f"({unfinished})")
            raise ArtifactsMissing(f"model {version} has no artifacts at {where}")
        try:
            manifest = dict(json.loads(listed)["files"])
        except (ValueError, KeyError, TypeError) as error:
            raise ModelStoreError(f"model {version} at {where}: unreadable {MANIFEST} "
                                  f"({error!r})") from None
        files = {file: self._read(f"{key}/{file}", where) for file in manifest}
        differing = sorted(file for file, data in files.items()
                           if data is None or hashlib.sha256(data).hexdigest() != manifest[file])
        if differing:
            raise ModelStoreError(
                f"model {version} at {where}: {', '.join(differing)} not as its {MANIFEST} "
                f"lists ({unfinished})")
        return files

    def _read(self, path: str, where: str) -> bytes | None:
        """The bytes of a file of a bucket store, None when it is missing."""
        try:
            return self._files.read_bytes(path)
        except FileNotFoundError:
            return None
        except StorageError as error:
            raise ModelStoreError(f"artifacts at {where} not read: {error}") from None

    def _folder(self, name: str, version: str) -> Path:
        """The version's local folder; ModelStoreError when there is none."""
        folder = Path(self.version_uri(name, version))
        if not folder.is_dir():
            raise ArtifactsMissing(f"model {version} has no artifacts at {folder}")
        return folder

    @contextmanager
    def _scratch(self) -> Iterator[Path]:
        if self.scratch_dir:
            Path(self.scratch_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="model-", dir=self.scratch_dir) as folder:
            yield Path(folder)
