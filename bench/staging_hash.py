"""What hashing the source files costs next to staging them (the page cache warm).

    python bench/staging_hash.py DIR        # DIR: e.g. `vintage generate --out DIR --scale 100`

Per source CSV and in total: hashing its bytes alone (BLAKE2b, SHA-256), staging it as the
platform does (pyarrow's CSV reader into a text Parquet copy), and staging it with a SHA-256 of
the bytes taken in the same pass; seconds and MB/s. Staging hashes first, in a pass of its own
(`resources.sources.stage`): the sum of the hash and the staging.
"""

import hashlib
import io
import sys
import tempfile
import time
from pathlib import Path

import resources.sources as sources
from resources.sources import SOURCE_NAMES, Reading


class _Hashing(io.RawIOBase):
    def __init__(self, raw, digest):
        self.raw, self.digest = raw, digest

    def readable(self):
        return True

    def readinto(self, buffer):
        size = self.raw.readinto(buffer)
        self.digest.update(memoryview(buffer)[:size])
        return size


def _seconds(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _hash(path: Path, algorithm: str) -> None:
    with open(path, "rb") as stream:
        hashlib.file_digest(stream, algorithm)


def measure(file: Path, name: str, out: Path) -> dict[str, float]:
    with open(file, "rb") as stream:  # warm the page cache: every variant reads the same way
        while stream.read(1 << 24):
            pass
    row = {"MB": file.stat().st_size / 1e6}
    for algorithm in ("blake2b", "sha256"):
        row[f"hash {algorithm}"] = _seconds(lambda a=algorithm: _hash(file, a))
    target = out / f"{name}.parquet"
    row["stage"] = _seconds(lambda: sources._write_staged(file, name, Reading(), target))
    plain = sources._open_bytes
    sources._open_bytes = lambda path, stack: io.BufferedReader(
        _Hashing(stack.enter_context(path.open("rb", buffering=0)), hashlib.sha256()))
    try:
        row["stage, sha256 in the pass"] = _seconds(
            lambda: sources._write_staged(file, name, Reading(), target))
    finally:
        sources._open_bytes = plain
    row["sha256, then stage"] = row["hash sha256"] + row["stage"]
    return row


def main(folder: Path) -> None:
    rows = {}
    with tempfile.TemporaryDirectory() as out:
        for name in SOURCE_NAMES:
            rows[name] = measure(folder / f"{name}.csv", name, Path(out))
    total = {key: sum(row[key] for row in rows.values()) for key in rows[SOURCE_NAMES[0]]}
    columns = [key for key in total if key != "MB"]
    print(f"{'source':<22} {'MB':>7} " + " ".join(f"{c:>26}" for c in columns))
    for name, row in {**rows, "total": total}.items():
        print(f"{name:<22} {row['MB']:>7.0f} " + " ".join(
            f"{row[c]:>8.1f} s {row['MB'] / row[c]:>7.0f} MB/s".rjust(26) for c in columns))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
