"""`vintage ui` stops everything it started, promptly, on the signals a service manager or a
terminal sends: the webserver, the daemon and the code servers, whatever process group or
session they are in."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ml_assets.cli import descendants
from ml_assets.demo.generator import generate
from tests.conftest import VINTAGE

# 10-13 s each alone, 23-26 s in the whole suite on two cores
pytestmark = pytest.mark.slow

STARTUP_SECONDS = 180
STOP_SECONDS = 20  # the grace for dagster dev (8 s), then SIGTERM (3 s), with room on a busy CI


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ui_signals") / "source"
    generate(folder, scale=0.02, seed=6)
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent to collect it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_until_serving(process: subprocess.Popen, port: int, log: Path) -> None:
    """Until the webserver answers and the daemon and the code servers have started."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        assert process.poll() is None, f"vintage ui ended:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"not serving:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5):
                pass
            if len(descendants(process.pid)) >= 5:  # dagster dev, webserver, daemon, code servers
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)


@pytest.mark.parametrize("target,sig,sigint_ignored", [
    ("process", signal.SIGTERM, True),  # a service manager; started as a script's background job
    ("group", signal.SIGTERM, True),  # the whole process group, as the script that started it
    ("process", signal.SIGINT, False),  # Ctrl-C
], ids=["SIGTERM-to-process", "SIGTERM-to-group", "SIGINT-to-process"])
def test_vintage_ui_stops_everything_it_started(source, tmp_path, target, sig, sigint_ignored):
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "VINTAGE_SOURCE": str(source),
           "VINTAGE_WAREHOUSE": str(tmp_path / "warehouse")}
    command = f"exec {shlex.quote(VINTAGE)} ui --host 127.0.0.1 --port {port}"
    if sigint_ignored:  # what a non-interactive shell does to a background job
        command = "trap '' INT; " + command
    log = tmp_path / "ui.log"
    with log.open("w") as output:
        process = subprocess.Popen(["sh", "-c", command], env=env, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    tracked = [process.pid]
    try:
        wait_until_serving(process, port, log)
        tracked += descendants(process.pid)
        started = time.monotonic()
        if target == "group":
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
        while any(alive(pid) for pid in tracked) and time.monotonic() - started < 60:
            process.poll()
            time.sleep(0.1)
        seconds = time.monotonic() - started
        left = [pid for pid in tracked if alive(pid)]
        assert not left, f"{len(left)} of {len(tracked)} processes left after 60 s:\n" + \
            "\n".join(Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:150]
                      for pid in left if alive(pid))
        print(f"{len(tracked)} processes, all gone {seconds:.1f} s after {sig.name}")
        assert seconds < STOP_SECONDS, f"{len(tracked)} processes took {seconds:.1f} s to stop"
        assert process.wait(10) == 0
        assert f"vintage ui: {sig.name} received" in log.read_text()
        with socket.socket() as probe:  # nothing listens on the port any more
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
    finally:
        for pid in tracked:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            process.wait(10)
