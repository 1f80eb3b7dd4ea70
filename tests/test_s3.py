"""The lake in a bucket, against a real S3 server on loopback (SeaweedFS, tests/s3_server.py):
publish and read, two writer processes at once, a writer killed mid-commit, time travel and
vacuum, schema changes, the catalog, the file store. One server for the whole session; the
tests run on one xdist worker (group "s3")."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import duckdb
import pyarrow.fs as pafs
import pytest

from resources.lake import CONDITIONAL_PUT, Lake, LakeError, Table
from resources.storage import FileStore, StorageError, s3_settings
from tests.conftest import run_vintage
from tests.s3_server import start_s3_server
from tests.s3_writer import TABLE as RACE
from tests.s3_writer import month_rows, months_from

pytestmark = pytest.mark.xdist_group("s3")

BUCKET = "vintage-test"
WRITER = str(Path(__file__).with_name("s3_writer.py"))
PROJECT = Path(__file__).resolve().parent.parent
EXAMPLE = Table("gold", "example", month_column="month", key=("id",))
LOANS = Table("silver", "loans", month_column="snapshot_date", key=("loan_id",))
JAN, FEB, MAR, APR = (date(2024, m, 1) for m in (1, 2, 3, 4))


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """The S3 server of the session, with the bucket BUCKET."""
    started = time.monotonic()
    server = start_s3_server(tmp_path_factory.mktemp("s3"))
    try:
        server.create_bucket(BUCKET)
        print(f"S3 server up in {time.monotonic() - started:.1f} s at {server.endpoint}")
        yield server
    finally:
        server.stop()


RAW_TO_GOLD = ("group:raw or group:silver or key:gold/feature_store or key:gold/label_store "
               "or key:gold/source_coverage")
_prefixes = itertools.count()


@pytest.fixture
def bucket_uri(request):
    """A warehouse prefix of its own for each test."""
    return f"s3://{BUCKET}/{request.node.name.split('[')[0][:40]}-{next(_prefixes)}"


def make_lake(uri: str, s3, tmp_path: Path, **settings) -> Lake:
    return Lake(**{"uri": uri, "storage_options": s3.options,
                   "work_dir": str(tmp_path / "work"),
                   "catalog_path": str(tmp_path / "catalog" / "catalog.duckdb"), **settings})


@pytest.fixture
def lake(bucket_uri, s3, tmp_path):
    return make_lake(bucket_uri, s3, tmp_path)


def loans_query(months: list[date], per_month: int = 5) -> str:
    """Loan snapshots: `per_month` loans per month, dated mid-month."""
    selects = [f"SELECT '{m:%Y%m}-' || i AS loan_id, DATE '{m.isoformat()}' + 14 "
               f"AS snapshot_date, i * 100.0 AS balance, i % 2 = 0 AS closed, "
               f"TIMESTAMP '{m.isoformat()} 08:30:00' AS loaded_at FROM range({per_month}) t(i)"
               for m in months]
    return " UNION ALL ".join(selects)


def rows_of(con, view: str, order: str) -> list[tuple]:
    return con.execute(f"SELECT * FROM {view} ORDER BY {order}").fetchall()


def objects_under(s3, uri: str) -> list[str]:
    """Every object under an s3:// prefix, as bucket/key paths."""
    infos = s3.filesystem().get_file_info(pafs.FileSelector(uri.removeprefix("s3://"),
                                                            recursive=True,
                                                            allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


def test_the_server_refuses_a_second_conditional_put(s3):
    """What makes a Delta commit safe on S3: the second writer of a log version gets 412."""
    key = f"conditional/{time.time_ns()}.json"
    assert s3.put_if_absent(BUCKET, key, b"first") == 200
    assert s3.put_if_absent(BUCKET, key, b"second") == 412
    assert FileStore(f"s3://{BUCKET}", s3.options).read_bytes(key) == b"first"


def test_a_bucket_lake_commits_with_conditional_puts_unless_told_otherwise(s3, tmp_path):
    assert Lake(uri=str(tmp_path))._options is None
    bucket = Lake(uri=f"s3://{BUCKET}/x", storage_options=s3.options)
    assert bucket._options == {**s3.options, **CONDITIONAL_PUT}
    chosen = Lake(uri=f"s3://{BUCKET}/x", storage_options={"aws_conditional_put": "etag"})
    assert chosen._options == {"aws_conditional_put": "etag"}


def test_months_published_to_a_bucket_read_back_as_published(lake, s3, tmp_path):
    months = [JAN, FEB, MAR, APR]
    with duckdb.connect() as con:
        assert lake.publish(con, LOANS, loans_query([JAN, FEB]), [JAN, FEB]) == {JAN: 5,
                                                                                 FEB: 5}
        assert lake.version(LOANS) == 0
        # MAR has no rows: published empty, told apart from a month never published
        assert lake.publish(con, LOANS, loans_query([APR], 3), [MAR, APR]) == {MAR: 0, APR: 3}
        assert lake.version(LOANS) == 1  # one commit per publish
        assert lake.publish(con, EXAMPLE, month_rows(JAN, 7), [JAN]) == {JAN: 7}
        assert lake.published_months(LOANS) == months
        assert lake.published_months(LOANS, version=0) == [JAN, FEB]
        assert lake.published_months(EXAMPLE) == [JAN]
        assert [lake.month_rows(LOANS, m) for m in months] == [5, 5, 0, 3]
        assert lake.commit_metadata(LOANS, 1)["months"] == ["2024-03-01", "2024-04-01"]

        assert lake.read(con, "loans", LOANS, months) == 13
        expected = con.execute(f"SELECT * FROM ({loans_query([JAN, FEB])} UNION ALL "
                               f"{loans_query([APR], 3)}) ORDER BY loan_id").fetchall()
        assert rows_of(con, "loans", "loan_id") == expected
        assert lake.read(con, "example", EXAMPLE, None) == 7
        assert rows_of(con, "example", "id") == con.execute(
            f"SELECT * FROM ({month_rows(JAN, 7)}) ORDER BY id").fetchall()

        # the empty month: no rows, the table's own columns (no partition column added)
        assert lake.read(con, "march", LOANS, [MAR]) == 0
        assert con.execute("SELECT count(*) FROM march").fetchall()[0] == (0,)
        columns = con.execute("DESCRIBE march").fetchall()
        assert [c[0] for c in columns] == ["loan_id", "snapshot_date", "balance", "closed",
                                           "loaded_at"]

        # the same months in a local lake read with the same rows and the same DuckDB types
        local = Lake(uri=str(tmp_path / "local"))
        local.publish(con, LOANS, loans_query([JAN, FEB]), [JAN, FEB])
        local.publish(con, LOANS, loans_query([APR], 3), [MAR, APR])
        local.read(con, "local_loans", LOANS, months)
        assert rows_of(con, "local_loans", "loan_id") == expected
        assert con.execute("DESCRIBE local_loans").fetchall() == con.execute(
            "DESCRIBE loans").fetchall()
        local.read(con, "local_march", LOANS, [MAR])
        assert con.execute("DESCRIBE local_march").fetchall() == columns

        with pytest.raises(LakeError, match="no published month 2024-05"):
            lake.read(con, "may", LOANS, [date(2024, 5, 1)])
    # every object of the lake is under its prefix
    assert all(o.startswith(lake.uri.removeprefix("s3://") + "/")
               for o in objects_under(s3, lake.uri))


def test_a_view_outlives_the_read_that_made_it(lake):
    with duckdb.connect() as con:
        lake.publish(con, EXAMPLE, month_rows(JAN, 4), [JAN])
        lake.read(con, "example", EXAMPLE, [JAN])
        import gc

        gc.collect()
        assert con.execute("SELECT count(*), sum(id) FROM example").fetchall()[0] == (4, 6)


def test_a_read_from_a_bucket_scans_only_the_months_asked_for(lake, s3):
    with duckdb.connect() as con:
        lake.publish(con, EXAMPLE, " UNION ALL ".join(month_rows(m, 10) for m in (JAN, FEB)),
                     [JAN, FEB])
        # take February's data files away behind the table's back: a read of January that
        # opened them would fail
        february = [o for o in objects_under(s3, lake.table_uri(EXAMPLE))
                    if "/month=2024-02-01/" in o]
        assert february
        for path in february:
            s3.filesystem().delete_file(path)
        assert lake.read(con, "january", EXAMPLE, [JAN]) == 10
        assert con.execute("SELECT count(*), min(month), max(month) FROM january"
                           ).fetchall()[0] == (10, JAN, JAN)
        lake.read(con, "february", EXAMPLE, [FEB])
        with pytest.raises(Exception, match="(?i)not found|no such|does not exist"):
            con.execute("SELECT count(*) FROM february").fetchall()


def writer_env(s3) -> dict[str, str]:
    """A writer process's environment: the storage options as AWS_* variables only, and no
    VINTAGE_* or DAGSTER_HOME of the machine running the tests."""
    kept = {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "VINTAGE_")) and k != "DAGSTER_HOME"}
    return {**kept, **s3.options, "PYTHONPATH": str(PROJECT)}


def test_two_writer_processes_publish_different_months_of_a_table_at_once(bucket_uri, s3,
                                                                          tmp_path):
    """2 x 12 months, one commit each, into a table neither has created yet."""
    writers = [subprocess.Popen(
        [sys.executable, WRITER, "publish", bucket_uri, str(tmp_path / f"writer-{i}"),
         first, "12"], env=writer_env(s3), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i, first in enumerate(("2023-01-01", "2024-01-01"))]
    outputs = [writer.communicate(timeout=240) for writer in writers]
    for writer, (_, errors) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, errors[-3000:]
    commits = [json.loads(line) for out, _ in outputs for line in out.splitlines()]
    assert len(commits) == 24

    lake = make_lake(bucket_uri, s3, tmp_path)
    months = months_from(date(2023, 1, 1), 24)
    assert lake.version(RACE) == 23  # every commit landed
    assert sorted(c["version"] for c in commits) == list(range(24))  # each knows its own
    for commit in commits:
        assert lake.commit_metadata(RACE, commit["version"])["months"] == [commit["month"]]
    assert lake.published_months(RACE) == months
    with duckdb.connect() as con:
        assert lake.read(con, "race", RACE, None) == 24 * 100
        assert con.execute("SELECT count(DISTINCT (month, id)), count(DISTINCT month) "
                           "FROM race").fetchall()[0] == (2400, 24)
    retried = sum(bool(c["operationMetrics"].get("num_retries"))
                  for c in lake.delta(RACE).history())
    print(f"two writers: {len(commits)} of 24 commits landed, {retried} after a conflict, "
          f"slowest commit {max(c['seconds'] for c in commits):.2f} s")


def test_two_processes_create_a_table_at_the_same_moment(bucket_uri, s3, tmp_path):
    """Both stage a month, meet at a barrier, then commit the table's first version at once:
    one creates the table, the other's commit becomes version 1."""
    import multiprocessing

    from tests.s3_writer import publish_at_barrier

    spawn = multiprocessing.get_context("spawn")  # delta-rs's runtime does not survive a fork
    barrier, versions = spawn.Barrier(2), spawn.Queue()
    writers = [spawn.Process(target=publish_at_barrier, args=(
        bucket_uri, s3.options, str(tmp_path / f"writer-{i}"), month, barrier, versions))
        for i, month in enumerate((JAN, FEB))]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert [w.exitcode for w in writers] == [0, 0]
    assert sorted(versions.get(timeout=5) for _ in writers) == [0, 1]
    lake = make_lake(bucket_uri, s3, tmp_path)
    assert lake.version(RACE) == 1 and lake.published_months(RACE) == [JAN, FEB]


def test_a_writer_killed_mid_commit_leaves_the_table_unchanged(bucket_uri, s3, tmp_path):
    lake = make_lake(bucket_uri, s3, tmp_path)
    with duckdb.connect() as con:
        lake.publish(con, RACE, month_rows(JAN, 50), [JAN])
        before = lake.version(RACE)
        lake.read(con, "before", RACE, None)
        rows_before = rows_of(con, "before", "month, id")
    files_before = set(objects_under(s3, lake.table_uri(RACE)))

    # 8 months of 250,000 rows in one commit, written in files of 1 MB; the rows stop half
    # way, with data files already in the bucket, and the process is killed there
    writer = subprocess.Popen(
        [sys.executable, WRITER, "hang", bucket_uri, str(tmp_path / "writer"), "2024-01-01",
         "8", "250000"], env=writer_env(s3), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        assert writer.stdout.readline().strip() == "writing", writer.stderr.read()[-3000:]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until its first data files are uploaded
            orphans = set(objects_under(s3, lake.table_uri(RACE))) - files_before
            if orphans:
                break
            time.sleep(0.05)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    orphans = set(objects_under(s3, lake.table_uri(RACE))) - files_before
    assert orphans and all("/_delta_log/" not in o for o in orphans)
    print(f"killed mid-commit: {len(orphans)} data files uploaded, no log entry")

    assert lake.version(RACE) == before
    assert lake.published_months(RACE) == [JAN]
    with duckdb.connect() as con:
        lake.read(con, "after", RACE, None)
        assert rows_of(con, "after", "month, id") == rows_before
        # the next publish works, and vacuum past the retention takes the orphans away
        lake.publish(con, RACE, " UNION ALL ".join(month_rows(m, 20) for m in (JAN, FEB)),
                     [JAN, FEB])
        assert lake.version(RACE) == before + 1
        assert lake.read(con, "next", RACE, None) == 40
    assert lake.vacuum(RACE) == []  # younger than retention_days: kept
    removed = make_lake(bucket_uri, s3, tmp_path, retention_days=0).vacuum(RACE)
    assert {o.split("/gold/race/", 1)[1] for o in orphans} <= set(removed)
    assert not orphans & set(objects_under(s3, lake.table_uri(RACE)))


def test_time_travel_and_vacuum_in_a_bucket(lake, bucket_uri, s3, tmp_path):
    with duckdb.connect() as con:
        lake.publish(con, EXAMPLE, month_rows(JAN, 3), [JAN])
        lake.publish(con, EXAMPLE, month_rows(JAN, 5), [JAN])  # January again, replaced
        assert lake.version(EXAMPLE) == 1
        assert lake.read(con, "old", EXAMPLE, [JAN], version=0) == 3
        assert con.execute("SELECT count(*) FROM old").fetchall()[0] == (3,)
        assert lake.read(con, "new", EXAMPLE, [JAN]) == 5

        assert lake.vacuum(EXAMPLE) == []  # the replaced file is younger than 30 days
        lake.read(con, "still_old", EXAMPLE, [JAN], version=0)
        assert con.execute("SELECT count(*) FROM still_old").fetchall()[0] == (3,)

        past = make_lake(bucket_uri, s3, tmp_path, retention_days=0)
        assert past.vacuum(EXAMPLE, dry_run=True) == past.vacuum(EXAMPLE)
        removed = [f for f in objects_under(s3, lake.table_uri(EXAMPLE)) if "month=" in f]
        assert len(removed) == 1  # only the current file of January is left
        assert lake.read(con, "current", EXAMPLE, [JAN]) == 5
        assert con.execute("SELECT count(*) FROM current").fetchall()[0] == (5,)
        lake.read(con, "gone", EXAMPLE, [JAN], version=0)
        with pytest.raises(Exception, match="(?i)not found|no such|does not exist"):
            con.execute("SELECT count(*) FROM gone").fetchall()


def test_a_changed_column_type_is_refused_and_a_new_column_added(lake):
    with duckdb.connect() as con:
        lake.publish(con, EXAMPLE, month_rows(JAN, 3), [JAN])
        retyped = (f"SELECT month, id, amount::VARCHAR AS amount, label "
                   f"FROM ({month_rows(FEB, 3)})")
        with pytest.raises(LakeError, match="amount was double, now string"):
            lake.publish(con, EXAMPLE, retyped, [FEB])
        assert lake.version(EXAMPLE) == 0
        assert lake.published_months(EXAMPLE) == [JAN]

        widened = f"SELECT *, id * 2 AS doubled FROM ({month_rows(FEB, 3)})"
        with lake.publication(EXAMPLE) as publication:
            publication.stage(con, widened, [FEB])
        assert publication.added_columns == ["doubled"]
        assert lake.read(con, "widened", EXAMPLE, [JAN, FEB]) == 6
        assert con.execute("SELECT month, count(doubled), count(*) FROM widened GROUP BY ALL "
                           "ORDER BY 1").fetchall() == [(JAN, 0, 3), (FEB, 3, 3)]


def test_the_catalog_of_a_bucket_lake_is_local_and_its_views_read_the_bucket(lake, s3,
                                                                             tmp_path):
    with duckdb.connect() as con:
        lake.publish(con, LOANS, loans_query([JAN, FEB]), [JAN, FEB, MAR])
        lake.publish(con, EXAMPLE, month_rows(JAN, 4), [JAN])
        # a column added later: old files lack it, the view has it
        lake.publish(con, EXAMPLE, f"SELECT *, 'x' AS note FROM ({month_rows(FEB, 2)})",
                     [FEB])
        lake.read(con, "loans", LOANS, None)
        lake.read(con, "example", EXAMPLE, None)
        expected = {"silver.loans": rows_of(con, "loans", "loan_id"),
                    "gold.example": rows_of(con, "example", "month, id")}
        empty = Table("gold", "nothing", month_column="month", key=("id",))
        lake.publish(con, empty, "SELECT DATE '2024-01-01' AS month, 1 AS id LIMIT 0", [JAN])
    started = time.monotonic()
    assert lake.refresh_catalog([LOANS, EXAMPLE, empty])
    refresh_seconds = time.monotonic() - started
    assert lake.catalog == tmp_path / "catalog" / "catalog.duckdb"
    assert lake.catalog.is_file()

    with lake.catalog_connection() as catalog:
        views = dict(catalog.execute("SELECT schema_name || '.' || view_name, sql "
                                     "FROM duckdb_views() WHERE NOT internal").fetchall())
        assert "s3://" in views["silver.loans"] and "stand-in" not in views["silver.loans"]
        # the catalog's views carry the partition column `month` (silver.loans has its own
        # month column), as in a local lake
        assert catalog.execute("SELECT * EXCLUDE (month) FROM silver.loans ORDER BY loan_id"
                               ).fetchall() == expected["silver.loans"]
        assert catalog.execute("SELECT * FROM gold.example ORDER BY month, id"
                               ).fetchall() == expected["gold.example"]
        assert catalog.execute("SELECT count(*) FROM gold.nothing").fetchall()[0] == (0,)
        # the view's columns (in the table's order) are typed as the real files give them
        files = ", ".join(f"'{f}'" for f in lake.delta(EXAMPLE).file_uris())
        direct = catalog.execute(f"DESCRIBE SELECT * FROM read_parquet([{files}], "
                                 "hive_partitioning = true, union_by_name = true)").fetchall()
        assert sorted(catalog.execute("DESCRIBE gold.example").fetchall()) == sorted(direct)
    # without an s3:// filesystem (httpfs, or catalog_connection's) DuckDB cannot read them
    with duckdb.connect(str(lake.catalog), read_only=True) as plain:
        plain.execute("SET autoinstall_known_extensions = false")
        with pytest.raises(duckdb.Error, match="httpfs"):
            plain.execute("SELECT count(*) FROM gold.example").fetchall()
    print(f"catalog of a bucket lake rebuilt in {refresh_seconds:.2f} s")


@pytest.mark.parametrize("where", ["bucket", "folder"])
def test_the_file_store_round_trips_bytes(where, s3, bucket_uri, tmp_path):
    uri = f"{bucket_uri}/files" if where == "bucket" else str(tmp_path / "files")
    store = FileStore(uri, s3.options if where == "bucket" else None)
    assert store.list() == [] and not store.exists("model/a.txt")
    assert store.write_bytes("model/a.txt", b"first") == store.uri_of("model/a.txt")
    assert store.write_bytes("model/a.txt", b"second version")  # replaced whole
    store.write_bytes("model/b.json", b"{}")
    store.write_bytes("reports/2024-01.html", bytes(range(256)) * 4096)  # 1 MiB, binary
    assert store.read_bytes("model/a.txt") == b"second version"
    assert store.read_bytes("reports/2024-01.html") == bytes(range(256)) * 4096
    assert store.exists("model/a.txt") and not store.exists("model")
    assert store.list() == ["model/a.txt", "model/b.json", "reports/2024-01.html"]
    assert store.list("model") == ["model/a.txt", "model/b.json"]
    assert store.list("nothing") == []
    with pytest.raises(FileNotFoundError):
        store.read_bytes("model/c.txt")
    for bad in ("../outside", "/etc/passwd", ""):
        with pytest.raises(StorageError, match="invalid path"):
            store.write_bytes(bad, b"x")
    assert store.delete("model/a.txt") == 1
    assert store.delete("model") == 1
    assert store.delete("model") == 0
    assert store.list() == ["reports/2024-01.html"]
    if where == "folder":  # no temporary file or empty folder left behind
        assert sorted(p.name for p in (tmp_path / "files").rglob("*")) == ["2024-01.html",
                                                                           "reports"]
    else:
        assert store.uri_of("x/y") == f"{bucket_uri}/files/x/y"


def test_a_lake_keeps_its_files_beside_its_tables(lake, s3, tmp_path):
    store = lake.file_store("ml/artifacts")
    assert store.uri == f"{lake.uri}/ml/artifacts"
    store.write_bytes("champion-2024-07/model.txt", b"tree")
    assert objects_under(s3, lake.uri) == [
        f"{lake.uri.removeprefix('s3://')}/ml/artifacts/champion-2024-07/model.txt"]
    local = Lake(uri=str(tmp_path / "wh")).file_store("monitoring/reports")
    assert local.uri == str(tmp_path / "wh" / "monitoring" / "reports")


def small_models():
    """A LightGBM model and a logistic one trained on a few hundred synthetic rows, and rows
    to score."""
    from ml_assets.modeling import train_model
    from tests.test_modeling import FEATURES, LGBM, LOGISTIC, frame

    train, test = frame(400, 1), frame(200, 2)
    return ({spec.name: train_model(spec, FEATURES, train, test, seed=42)
             for spec in (LGBM, LOGISTIC)}, frame(100, 3))


def model_stores(bucket_uri, s3, tmp_path):
    from resources.model_store import ModelStore

    return (ModelStore(uri=f"{bucket_uri}/ml/artifacts", storage_options=s3.options,
                       scratch_dir=str(tmp_path / "scratch")),
            ModelStore(uri=str(tmp_path / "folder")))


def test_a_model_saved_in_a_bucket_loads_and_digests_as_in_a_folder(s3, bucket_uri, tmp_path):
    from resources.model_store import ArtifactsMissing, ModelStoreError, files_digest

    models, rows = small_models()
    bucket, folder = model_stores(bucket_uri, s3, tmp_path)
    for name, model in models.items():
        version = f"{name}-2024-07"
        uri = f"{bucket_uri}/ml/artifacts/{name}/{version}"
        assert bucket.save(model, name, version) == uri == bucket.version_uri(name, version)
        local = folder.save(model, name, version)
        assert local == str(tmp_path / "folder" / name / version)
        # the registry's digest of a folder version: every file of the folder
        in_folder = files_digest({p.name: p.read_bytes() for p in Path(local).iterdir()})
        assert bucket.digest(name, version) == folder.digest(name, version) == in_folder
        loaded = bucket.load(name, version)
        assert (loaded.predict(rows) == model.predict(rows)).all()
        objects = objects_under(s3, uri)
        assert [o.rsplit("/", 1)[1] for o in objects] == sorted(
            ["_manifest.json", *(p.name for p in Path(local).iterdir())])
    assert not list((tmp_path / "scratch").iterdir())  # nothing left on the local disk
    for store in (bucket, folder):
        with pytest.raises(ArtifactsMissing, match="model lightgbm-2024-08 has no artifacts "
                                                   "at .*lightgbm/lightgbm-2024-08"):
            store.load("lightgbm", "lightgbm-2024-08")
        with pytest.raises(ModelStoreError, match="invalid model version"):
            store.digest("lightgbm", "logistic-2024-07")


def test_a_model_version_in_a_bucket_is_never_read_as_a_mixture_of_two_saves(s3, bucket_uri,
                                                                             tmp_path):
    from resources.model_store import ModelStoreError

    models, rows = small_models()
    store, _ = model_stores(bucket_uri, s3, tmp_path)
    files = FileStore(store.uri, s3.options)
    name, version = "lightgbm", "lightgbm-2024-07"
    store.save(models["lightgbm"], name, version)
    first = store.digest(name, version)
    # a save of other bytes under way: its model text uploaded, its manifest not yet
    files.write_bytes(f"{name}/{version}/model.txt", b"tree 0 of another training")
    for read in (store.load, store.digest):
        with pytest.raises(ModelStoreError, match="model.txt not as its _manifest.json lists "
                                                  r"\(being saved again"):
            read(name, version)
    # the save finishes (here: another model, the logistic one, under the same version): only
    # its files are left, and they are what loads
    store.save(models["logistic"], name, version)
    assert files.list(f"{name}/{version}") == [f"{name}/{version}/_manifest.json",
                                              f"{name}/{version}/model.json"]
    assert store.digest(name, version) != first
    assert (store.load(name, version).predict(rows) == models["logistic"].predict(rows)).all()
    # a manifest lost or damaged: a clear error, never the files without their manifest
    files.write_bytes(f"{name}/{version}/_manifest.json", b'{"files": ')
    with pytest.raises(ModelStoreError, match="unreadable _manifest.json"):
        store.load(name, version)
    files.delete(f"{name}/{version}/_manifest.json")
    with pytest.raises(ModelStoreError, match=r"has no _manifest.json \(being saved again"):
        store.load(name, version)
    # a file the manifest lists, gone
    store.save(models["lightgbm"], name, version)
    files.delete(f"{name}/{version}/model.txt")
    with pytest.raises(ModelStoreError, match="model.txt not as its _manifest.json lists"):
        store.digest(name, version)


def test_storage_settings_come_from_the_options_then_the_environment():
    environ = {"AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "env-key",
               "AWS_SECRET_ACCESS_KEY": "env-secret", "AWS_SESSION_TOKEN": "env-token",
               "HOME": "/root"}
    assert s3_settings({}, environ) == {"region": "eu-west-1", "access_key": "env-key",
                                        "secret_key": "env-secret",
                                        "session_token": "env-token"}
    configured = {"aws_endpoint_url": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "k",
                  "AWS_SECRET_ACCESS_KEY": "s", "AWS_ALLOW_HTTP": "true"}
    # a key from the options never pairs with the environment's session token
    assert s3_settings(configured, environ) == {
        "endpoint": "http://127.0.0.1:9000", "region": "eu-west-1", "access_key": "k",
        "secret_key": "s", "allow_http": "true"}


def test_a_bucket_warehouse_keeps_its_catalog_work_and_instance_local(tmp_path, monkeypatch):
    from ml_assets.settings import load_settings

    monkeypatch.chdir(tmp_path)
    config = load_settings(environ={"VINTAGE_WAREHOUSE": "s3://bucket/prefix"})
    assert config.warehouse == "s3://bucket/prefix" and not config.local_warehouse
    assert config.catalog == tmp_path / ".vintage" / "catalog.duckdb"
    assert config.work == tmp_path / ".vintage" / "_work"
    assert config.dagster_home == tmp_path / ".vintage" / "_dagster"


def run_raw_to_gold(config, last: str):
    """raw, silver and gold over `config` for 2023-01..`last`, in process, as one run."""
    import dagster as dg

    from ml_assets.assets.gold import gold_specs
    from ml_assets.assets.raw import raw_specs
    from ml_assets.assets.silver import silver_specs
    from ml_assets.definitions import build_resources, load_build
    from ml_assets.spec import table_asset

    build = load_build(config)
    assets = [table_asset(spec, build)
              for spec in [*raw_specs(build), *silver_specs(build), *gold_specs(build)]]
    job = dg.define_asset_job("raw_to_gold", selection=dg.AssetSelection.all())
    resources = build_resources(config)
    definitions = dg.Definitions(assets=assets, resources=resources, jobs=[job],
                                 executor=dg.in_process_executor)
    result = definitions.resolve_job_def("raw_to_gold").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
        tags={"dagster/asset_partition_range_start": "2023-01-01",
              "dagster/asset_partition_range_end": last})
    failures = [event.event_specific_data.error.to_string() for event in result.all_events
                if event.is_step_failure]
    assert result.success, failures
    return build.tables, resources["lake"]


@pytest.mark.slow
def test_vintage_run_into_a_bucket_gives_the_tables_of_a_run_into_a_folder(s3, bucket_uri,
                                                                           tmp_path):
    """`vintage run --warehouse s3://...`, raw to gold, for seven demo months, the storage
    options in the environment only, the catalog, work folder and instance in
    `.vintage/` of its working directory; then raw, silver and gold of the same months in a
    folder, in process: the same rows in every table."""
    import yaml

    from ml_assets.demo.generator import generate
    from ml_assets.settings import CONFIG_DIR, load_settings
    from tests.conftest import VINTAGE

    generate(tmp_path / "demo", scale=0.04, seed=42, shift_month="2024-07", progress=False)
    (tmp_path / "run").mkdir()
    started = time.monotonic()
    done = subprocess.run([VINTAGE, "run", "--source", str(tmp_path / "demo"), "--warehouse",
                           bucket_uri, "--from", "2023-01", "--to", "2023-07", "--select",
                           RAW_TO_GOLD],
                          cwd=tmp_path / "run", env=writer_env(s3), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"vintage run, 7 months, raw to gold, into a bucket: "
          f"{time.monotonic() - started:.1f} s")
    local_state = tmp_path / "run" / ".vintage"
    assert (local_state / "catalog.duckdb").is_file()
    assert (local_state / "_dagster").is_dir() and (local_state / "_work").is_dir()
    assert not list((tmp_path / "run").glob("**/_delta_log"))  # no table on local disk

    raw = yaml.safe_load((CONFIG_DIR / "vintage.yaml").read_text())
    raw["paths"] = {**raw["paths"], "source": str(tmp_path / "demo"),
                    "warehouse": str(tmp_path / "folder")}
    (tmp_path / "folder.yaml").write_text(yaml.safe_dump(raw))
    tables, folder = run_raw_to_gold(load_settings(tmp_path / "folder.yaml", environ={}),
                                     "2023-07-01")
    bucket = make_lake(bucket_uri, s3, tmp_path)
    compared = 0
    with duckdb.connect() as con:
        for table in tables:
            if folder.version(table) is None:
                continue
            assert bucket.published_months(table) == folder.published_months(table)
            rows = bucket.read(con, "in_bucket", table, None)
            assert folder.read(con, "in_folder", table, None) == rows, table.qualified_name
            # every column but the time a raw row was loaded; doubles to 9 places (DuckDB's
            # parallel sums differ in the last bit from run to run, in a folder too)
            described = con.execute("DESCRIBE in_bucket").fetchall()
            assert described == con.execute("DESCRIBE in_folder").fetchall()
            listed = ", ".join(f'round("{c}", 9)' if kind in ("DOUBLE", "FLOAT") else f'"{c}"'
                               for c, kind, *_ in described if c != "_ingested_at")
            for a, b in (("in_bucket", "in_folder"), ("in_folder", "in_bucket")):
                assert con.execute(f"SELECT count(*) FROM (SELECT {listed} FROM {a} EXCEPT ALL "
                                   f"SELECT {listed} FROM {b})").fetchall()[0] == (0,), table
            compared += 1
    assert compared >= 10
    label_store = next(t for t in tables if t.name == "label_store")
    assert bucket.month_rows(label_store, date(2023, 7, 1)) > 0
    # the run's catalog (local) reads the bucket
    catalog = make_lake(bucket_uri, s3, tmp_path,
                        catalog_path=str(local_state / "catalog.duckdb"))
    with catalog.catalog_connection() as con:
        views = {f"{s}.{v}" for s, v in con.execute(
            "SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        assert {t.qualified_name for t in tables if folder.version(t) is not None} <= views
        feature_store = next(t for t in tables if t.name == "feature_store")
        assert con.execute("SELECT count(*) FROM gold.feature_store").fetchall()[0] == (
            sum(bucket.month_rows(feature_store, m) for m in months_from(date(2023, 1, 1), 7)),)


@pytest.mark.slow
def test_a_bucket_run_keeps_model_artifacts_and_drift_reports_in_the_bucket(s3, bucket_uri,
                                                                         tmp_path):
    """raw to monitoring for 2023-01..2024-01 into a bucket, in process, with a work folder of
    its own: every model version the registry records is in the bucket (its artifact_path,
    its digest), predictions loaded the champion from there, a version reproduces against
    it, the drift report and the validation reports are in the bucket and linked by their
    s3:// URIs, and `vintage report` copies one to a local file; the local work folder holds
    no artifact or report."""
    import dagster as dg
    import yaml

    from ml_assets.definitions import build_resources, load_build, table_specs
    from ml_assets.demo.generator import generate
    from ml_assets.settings import CONFIG_DIR, load_settings
    from ml_assets.spec import table_asset
    from ml_assets.tables import MODEL_REGISTRY, PREDICTIONS
    from tests.test_models_delta import one_thread_models_file

    generate(tmp_path / "demo", scale=0.2, seed=3, progress=False)
    raw = yaml.safe_load((CONFIG_DIR / "vintage.yaml").read_text())
    raw["paths"] = {**raw["paths"], "source": str(tmp_path / "demo"), "warehouse": bucket_uri,
                    "work": str(tmp_path / "work"),
                    "catalog": str(tmp_path / "catalog" / "catalog.duckdb")}
    raw["storage"] = {**raw.get("storage", {}), "options": s3.options}
    (tmp_path / "vintage.yaml").write_text(yaml.safe_dump(raw))
    config = load_settings(tmp_path / "vintage.yaml", environ={})
    from ml_assets.model_config import load_model_config

    build = load_build(config, load_model_config(one_thread_models_file(tmp_path)))
    resources = build_resources(config)
    definitions = dg.Definitions(
        assets=[table_asset(spec, build) for spec in table_specs(build)], resources=resources,
        jobs=[dg.define_asset_job("all", selection=dg.AssetSelection.all())],
        executor=dg.in_process_executor)
    started = time.monotonic()
    result = definitions.resolve_job_def("all").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
        tags={"dagster/asset_partition_range_start": "2023-01-01",
              "dagster/asset_partition_range_end": "2024-01-01"})
    assert result.success, [e.event_specific_data.error.to_string() for e in result.all_events
                            if e.is_step_failure]
    print(f"raw to monitoring, 13 months, into a bucket: {time.monotonic() - started:.1f} s")

    lake, store = resources["lake"], resources["model_store"]
    with duckdb.connect() as con:
        lake.read(con, "registry", MODEL_REGISTRY, None)
        records = con.execute("SELECT model_name, model_version, artifact_path, "
                              "artifact_digest FROM registry").fetchall()
        lake.read(con, "predictions", PREDICTIONS, None)
        scored = con.execute("SELECT count(*) FROM predictions").fetchall()[0][0]
    assert records and scored > 0
    for name, version, path, digest in records:
        assert path == f"{bucket_uri}/ml/artifacts/{name}/{version}"
        assert objects_under(s3, path) and store.digest(name, version) == digest
    # `vintage model reproduce` of a version in the bucket: retrained in a temporary folder
    # store, the same digest as the bucket's artifacts; artifacts gone, named as gone
    from ml_assets.reproduce import reproduce_model

    name, version, path, _ = records[0]
    reproduction = reproduce_model(build, lake, store, version)
    assert reproduction.reproduced, reproduction.findings
    published = next(f for f in reproduction.findings if f.what == "published artifacts")
    assert published.detail.startswith(f"{path}: digest ")
    FileStore(store.uri, s3.options).delete(f"{name}/{version}")
    published = next(f for f in reproduce_model(build, lake, store, version).findings
                     if f.what == "published artifacts")
    assert (published.matched, published.detail) == (False, f"no artifacts at {path}")
    reports = objects_under(s3, f"{bucket_uri}/reports/drift")
    assert reports == [f"{bucket_uri.removeprefix('s3://')}/reports/drift/2024-01.html"]
    drift = next(e.materialization for e in result.get_asset_materialization_events()
                 if e.asset_key == dg.AssetKey(["monitoring", "drift"])
                 and e.partition == "2024-01-01")
    assert drift.metadata["report_path"].value == f"s3://{reports[0]}"
    validation = objects_under(s3, f"{bucket_uri}/reports/validation")
    bucket_path = bucket_uri.removeprefix("s3://")
    assert validation == sorted(f"{bucket_path}/reports/validation/{version}.html"
                                for _, version, _, _ in records)
    registry = next(e.materialization for e in result.get_asset_materialization_events()
                    if e.asset_key == dg.AssetKey(["ml", "model_registry"])
                    and e.partition == "2024-01-01")
    for name, version, _, _ in records:
        assert registry.metadata[f"{name}_validation_report"].value == \
            f"{bucket_uri}/reports/validation/{version}.html"
    # a bucket's report as a local file: copied into the working directory
    done = run_vintage("report", version, "--config", str(tmp_path / "vintage.yaml"),
                       cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / f"{version}.html")
    assert (tmp_path / f"{version}.html").read_bytes() == FileStore(
        f"{bucket_uri}/reports", s3.options).read_bytes(f"validation/{version}.html")
    work = tmp_path / "work"
    assert not (work / "artifacts").exists() and not (work / "reports").exists()
    assert not list(work.rglob("*.html")) and not list((work / "models").glob("*"))


def test_bucket_settings_refuse_a_catalog_in_a_bucket_and_take_yaml_booleans(tmp_path):
    import yaml

    from ml_assets.settings import SettingsError, load_settings

    config = tmp_path / "vintage.yaml"
    config.write_text(yaml.safe_dump({"paths": {"warehouse": "s3://bucket/prefix"},
                                      "storage": {"options": {"AWS_ALLOW_HTTP": True,
                                                              "AWS_REGION": "eu-west-1"}}}))
    settings = load_settings(config, environ={"VINTAGE_WORK": str(tmp_path / "work")})
    assert settings.storage_options == {"AWS_ALLOW_HTTP": "true", "AWS_REGION": "eu-west-1"}
    with pytest.raises(SettingsError, match="paths.catalog: 's3://bucket/catalog.duckdb'"):
        load_settings(config, environ={"VINTAGE_CATALOG": "s3://bucket/catalog.duckdb"})
