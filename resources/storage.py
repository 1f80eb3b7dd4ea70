"""Files beside the tables: a small store over a local folder or `s3://bucket/prefix`.

The warehouse's tables are Delta tables (resources/lake.py); everything else a run writes
(model artifacts, drift reports) goes through a `FileStore` rooted under the same warehouse,
so a bucket warehouse keeps all of it in the bucket. Object storage is reached with
`pyarrow.fs.S3FileSystem`, configured from the same options as delta-rs (`storage.options`
in config/vintage.yaml, then the AWS_* environment variables).

Also here: the `s3://` filesystem DuckDB is given when it reads a bucket warehouse's catalog
from Python (`bucket_filesystem`), since DuckDB's httpfs extension may not be installable.
"""

from __future__ import annotations

import base64
import io
import os
import uuid
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

BUCKET_SCHEMES = ("s3://", "s3a://")
DEFAULT_REGION = "us-east-1"

# The object-store options (delta-rs / object_store names, matched without regard to case)
# that configure pyarrow's S3 client, each with the names it may go by.
_S3_KEYS = {
    "endpoint": ("aws_endpoint_url", "aws_endpoint", "endpoint_url", "endpoint"),
    "region": ("aws_region", "aws_default_region", "region"),
    "access_key": ("aws_access_key_id", "access_key_id"),
    "secret_key": ("aws_secret_access_key", "secret_access_key"),
    "session_token": ("aws_session_token", "aws_token", "session_token", "token"),
    "allow_http": ("aws_allow_http", "allow_http"),
}


class StorageError(OSError):
    """A file of the store cannot be read or written as asked."""


def is_bucket(uri: str) -> bool:
    return uri.startswith(BUCKET_SCHEMES)


def s3_settings(options: Mapping[str, str] | None = None,
                environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The S3 client settings (endpoint, region, access_key, secret_key, session_token,
    allow_http) from delta-rs style `options`, else from the AWS_* variables of `environ`
    (default: this process's environment). Settings neither gives are left out."""
    environ = os.environ if environ is None else environ
    lowered = {str(k).lower(): str(v) for k, v in (options or {}).items()}
    env = {k.lower(): v for k, v in environ.items() if k.upper().startswith("AWS_")}
    found: dict[str, str] = {}
    for setting, names in _S3_KEYS.items():
        for source in (lowered, env):
            value = next((source[n] for n in names if source.get(n)), None)
            if value:
                found[setting] = value
                break
    # credentials go together: a key from the options never pairs with the environment's
    # session token (another identity's)
    credentials = ("access_key", "secret_key", "session_token")
    keyed = lowered if any(lowered.get(n) for n in _S3_KEYS["access_key"]) else env
    for setting in credentials:
        value = next((keyed[n] for n in _S3_KEYS[setting] if keyed.get(n)), None)
        if value:
            found[setting] = value
        else:
            found.pop(setting, None)
    return found


def s3_filesystem(options: Mapping[str, str] | None = None,
                  environ: Mapping[str, str] | None = None) -> pafs.S3FileSystem:
    """A pyarrow S3 client from delta-rs style `options` and the environment (see
    s3_settings). An endpoint given as `http://host:port` is reached without TLS (delta-rs
    needs AWS_ALLOW_HTTP=true for it too). Without credentials pyarrow asks the AWS default
    chain (profile files, instance metadata)."""
    found = s3_settings(options, environ)
    endpoint, scheme = found.get("endpoint"), "https"
    if endpoint and "://" in endpoint:
        scheme, endpoint = endpoint.split("://", 1)
    elif found.get("allow_http", "").lower() == "true":
        scheme = "http"
    return pafs.S3FileSystem(
        access_key=found.get("access_key"), secret_key=found.get("secret_key"),
        session_token=found.get("session_token") if found.get("access_key") else None,
        region=found.get("region", DEFAULT_REGION), scheme=scheme,
        endpoint_override=endpoint.rstrip("/") if endpoint else None)


def _relative(path: str) -> str:
    """`path` as a key under a store's root: '/'-separated, no '.', '..' or leading '/'."""
    parts = PurePosixPath(str(path)).parts
    if not parts or parts[0] == "/" or any(p in (".", "..") for p in parts):
        raise StorageError(f"invalid path {path!r}: a relative path inside the store")
    return "/".join(parts)


class FileStore:
    """Files under `uri`: a local folder (created when first written) or `s3://bucket/prefix`
    (`storage_options`: delta-rs style S3 options, see s3_settings). Paths are relative,
    '/'-separated (`ml/artifacts/champion-2024-07/model.txt`).

    A write is atomic: a reader sees the old bytes or the new ones, never part of them (a
    local file is written beside its target and renamed over it; an S3 PUT, single or
    multipart, shows its object only when complete). A file that is missing reads as
    FileNotFoundError; other failures raise StorageError naming the file."""

    def __init__(self, uri: str, storage_options: Mapping[str, str] | None = None):
        self.uri = str(uri).rstrip("/")
        self.bucket = is_bucket(self.uri)
        if self.bucket:
            self._fs: pafs.FileSystem = s3_filesystem(storage_options)
            self._root = self.uri.split("://", 1)[1]
        else:
            self._fs = pafs.LocalFileSystem()
            self._root = str(Path(self.uri.removeprefix("file://")).resolve())

    def __repr__(self) -> str:
        return f"FileStore({self.uri!r})"

    def _key(self, path: str) -> str:
        return f"{self._root}/{_relative(path)}"

    def uri_of(self, path: str) -> str:
        """The full URI of `path` (`s3://...`, or an absolute local path)."""
        key = self._key(path)
        return f"{self.uri.split('://', 1)[0]}://{key}" if self.bucket else key

    def write_bytes(self, path: str, data: bytes) -> str:
        """Write `data` as `path`, replacing it whole; returns the file's URI."""
        key = self._key(path)
        try:
            if self.bucket:
                with self._fs.open_output_stream(key) as out:
                    out.write(data)
                return self.uri_of(path)
            target = Path(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
                                       ".tmp")
            try:
                with open(partial, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
            return key
        except OSError as error:
            raise StorageError(f"{self.uri_of(path)} not written: {error}") from None

    def read_bytes(self, path: str) -> bytes:
        """The bytes of `path`; FileNotFoundError when it is not in the store."""
        key = self._key(path)
        try:
            if self._fs.get_file_info(key).type != pafs.FileType.File:
                raise FileNotFoundError(f"{self.uri_of(path)} is not in the store")
            with self._fs.open_input_stream(key) as stream:
                return stream.read()
        except FileNotFoundError:
            raise
        except OSError as error:
            raise StorageError(f"{self.uri_of(path)} not read: {error}") from None

    def exists(self, path: str) -> bool:
        """Whether `path` is a file of the store."""
        try:
            return self._fs.get_file_info(self._key(path)).type == pafs.FileType.File
        except OSError as error:
            raise StorageError(f"{self.uri_of(path)}: {error}") from None

    def list(self, prefix: str = "") -> list[str]:
        """The files under the folder `prefix` (default: the whole store), recursively, as
        sorted paths relative to the store's root; [] when there is none. Files being
        written locally (hidden `.<name>.tmp`) are left out."""
        base = self._key(prefix) if prefix else self._root
        try:
            infos = self._fs.get_file_info(pafs.FileSelector(base, recursive=True,
                                                             allow_not_found=True))
        except OSError as error:
            raise StorageError(f"{self.uri}: files under {prefix!r} not listed: {error}"
                               ) from None
        found = []
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            relative = info.path[len(self._root) + 1:]
            name = relative.rsplit("/", 1)[-1]
            if not self.bucket and name.startswith(".") and name.endswith(".tmp"):
                continue
            found.append(relative)
        return sorted(found)

    def delete(self, path: str) -> int:
        """Remove the file `path`, or every file under the folder `path`; returns how many
        files were removed (0 when there was nothing)."""
        files = [_relative(path)] if self.exists(path) else self.list(path)
        try:
            for file in files:
                self._fs.delete_file(self._key(file))
        except OSError as error:
            raise StorageError(f"{self.uri_of(path)} not deleted: {error}") from None
        if not self.bucket and not self.exists(path):
            # empty local folders left behind are removed too (S3 has no folders)
            folder = Path(self._key(path))
            while folder.is_dir() and str(folder) != self._root and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent
        return len(files)


# -- DuckDB over s3:// without httpfs -------------------------------------------------------

def bucket_filesystem(storage_options: Mapping[str, str] | None = None):
    """An fsspec filesystem serving `s3://` and `s3a://` URIs through pyarrow's S3 client, for
    `duckdb.DuckDBPyConnection.register_filesystem`: DuckDB then reads a bucket warehouse's
    Parquet files (the catalog's views) with no httpfs extension."""
    from fsspec.implementations.arrow import ArrowFSWrapper

    class BucketFileSystem(ArrowFSWrapper):
        protocol = ("s3", "s3a")
        root_marker = ""

    return BucketFileSystem(s3_filesystem(storage_options), skip_instance_cache=True)


def schema_token(schema: pa.Schema) -> str:
    """`schema` as one line of text (base64 of its Arrow IPC form), for schema_from_token."""
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def schema_from_token(token: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(token)))


def stand_in_filesystem(schemas: Mapping[str, pa.Schema]):
    """An fsspec filesystem for `s3://` and `s3a://` URIs that serves, for every file under a
    prefix of `schemas` (a table's URI + '/'), an empty Parquet file of that schema, and
    nothing else: DuckDB binds a view over a bucket table's files (names and types) from it
    without one request to the bucket. Only for writing the catalog; reading goes to the
    bucket (bucket_filesystem, or httpfs)."""
    from fsspec import AbstractFileSystem

    stand_ins: dict[str, bytes] = {}
    for prefix, schema in schemas.items():
        buffer = io.BytesIO()
        pq.write_table(schema.empty_table(), buffer)
        stand_ins[prefix.split("://", 1)[-1].rstrip("/") + "/"] = buffer.getvalue()

    class StandInFileSystem(AbstractFileSystem):
        protocol = ("s3", "s3a")
        root_marker = ""
        cachable = False

        def _bytes(self, path: str) -> bytes:
            path = self._strip_protocol(path)
            for prefix, data in stand_ins.items():
                if path.startswith(prefix):
                    return data
            raise FileNotFoundError(path)

        def _open(self, path, mode="rb", **kwargs):
            if "r" not in mode:
                raise PermissionError("the catalog's stand-in files are read-only")
            return io.BytesIO(self._bytes(path))

        def info(self, path, **kwargs):
            return {"name": self._strip_protocol(path), "size": len(self._bytes(path)),
                    "type": "file"}

        def ls(self, path, detail=True, **kwargs):
            entry = self.info(path)
            return [entry] if detail else [entry["name"]]

        def modified(self, path):
            import datetime

            return datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)

    return StandInFileSystem(skip_instance_cache=True)
