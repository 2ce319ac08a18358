"""The WAL archive's RPO (issue 15): how long from a COMMIT returning until that commit is
durable in the local archive, and until it is in S3.

On a private cluster (bench/cluster.py's) with backupd's daemon streaming (WAL_ARCHIVE=on,
pg_receivewal --synchronous) and offsite copies to a moto S3 server on localhost:

* local: after each COMMIT, the time until backupd's slot reports a restart_lsn at or past
  the commit's WAL position: pg_receivewal reports a position only once it has fsynced it
  into the spool (``--synchronous``), so that is "durable in the local archive";
* offsite: the time until the partial segment on S3 (fetched and checked through
  backupd's WalArchive) holds the committed row; bounded by WAL_S3_PARTIAL_SECONDS.

    python bench/wal_rpo.py [--commits 50] [--offsite-commits 5] [--partial-seconds 10]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import AS_ROOT, clusters
from harness import BACKUPD, backupd_env, publish
from recover import _wait

from backupd.archive.walstore import WalArchive
from backupd.storage.s3 import S3Config, S3Repository

BUCKET = "wal-rpo"


def _figures(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (f"median {statistics.median(ordered) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
            f"max {ordered[-1] * 1000:.1f} ms ({len(ordered)} commits)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=50)
    parser.add_argument("--offsite-commits", type=int, default=5)
    parser.add_argument("--partial-seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{moto.get_host_and_port()[1]}"
    s3 = {"S3_ENDPOINT_URL": endpoint, "S3_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "bench",
          "AWS_SECRET_ACCESS_KEY": "bench", "DB_BACKUP_S3_BUCKET": BUCKET}
    work = Path(tempfile.mkdtemp(prefix="backupd-walrpo-"))
    if AS_ROOT:
        work.chmod(0o755)
    try:
        with clusters(work, "rpo") as (cluster,):
            body = _bench(cluster.server, work, s3, endpoint, args)
    finally:
        moto.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    publish("WAL archive RPO (backupd run, WAL_ARCHIVE=on)", "", "pg_receivewal", body, args.out)
    return 0


def _bench(server, work: Path, s3: dict[str, str], endpoint: str,  # type: ignore[no-untyped-def]
           args: argparse.Namespace) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
    client.create_bucket(Bucket=BUCKET)
    backup_dir = work / "backups"
    env = backupd_env(server, "postgres", backup_dir, WAL_ARCHIVE="on", BACKUP_ON_START="false",
                      DRILL_SCHEDULE="off", BASEBACKUP_SCHEDULE="off",
                      DB_BACKUP_COMPRESSION="zstd",
                      WAL_S3_PARTIAL_SECONDS=str(args.partial_seconds), **s3)
    daemon = subprocess.Popen([*BACKUPD, "run"], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        spool = backup_dir / "wal" / "spool"
        _wait(lambda: spool.is_dir() and any(spool.glob("*.partial")), "WAL streaming")
        conninfo = dict(host=server.host, port=server.port, user=server.user,
                        password=server.password, dbname="postgres", autocommit=True)
        with psycopg.connect(**conninfo) as writer, psycopg.connect(**conninfo) as watcher:
            writer.execute("CREATE TABLE rpo (marker text)")
            local = [_local_rpo(writer, watcher) for _ in range(args.commits)]
            remote = WalArchive(S3Repository(S3Config(bucket=BUCKET, prefix="wal/",
                                                      endpoint_url=endpoint), client=client))
            offsite = [_offsite_rpo(writer, remote, work) for _ in range(args.offsite_commits)]
    finally:
        daemon.terminate()
        daemon.wait(60)
    return [
        "| From COMMIT returning to | Measured |",
        "|---|---|",
        f"| durable in the local archive (pg_receivewal --synchronous, fsynced, confirmed "
        f"to the slot) | {_figures(local)} |",
        f"| in S3 (the partial segment, WAL_S3_PARTIAL_SECONDS={args.partial_seconds:g}) "
        f"| {_figures(offsite)} |",
    ]


def _local_rpo(writer: psycopg.Connection, watcher: psycopg.Connection) -> float:  # type: ignore[type-arg]
    row = writer.execute("INSERT INTO rpo VALUES (%s) RETURNING pg_current_wal_insert_lsn()",
                         (secrets.token_hex(8),)).fetchone()
    committed = time.monotonic()
    assert row is not None
    while True:
        done = watcher.execute(
            "SELECT bool_and(restart_lsn >= pg_current_wal_flush_lsn()) "
            "FROM pg_replication_slots").fetchone()
        if done and done[0]:
            return time.monotonic() - committed
        time.sleep(0.001)


def _offsite_rpo(writer: psycopg.Connection, remote: WalArchive,  # type: ignore[type-arg]
                 work: Path) -> float:
    marker = f"offsite-{secrets.token_hex(8)}"
    writer.execute("INSERT INTO rpo VALUES (%s)", (marker,))
    committed = time.monotonic()
    scratch = work / "fetched"
    while True:
        partials = [w for w in remote.segments() if w.partial]
        if partials:
            remote.fetch(partials[-1].name, scratch)
            if marker.encode() in scratch.read_bytes():
                return time.monotonic() - committed
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
