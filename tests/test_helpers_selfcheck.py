"""The test helpers are only trustworthy if they can fail: these checks prove each one notices
the thing it exists to notice, against the real components.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import botocore.exceptions
import psycopg
import pytest
from helpers import ports
from helpers.cli import build_env
from helpers.cluster import PrivateCluster
from helpers.http_receiver import HttpReceiver
from helpers.pg import FixtureTemplate, ServerAddress, fingerprint, pg_binary, psql
from helpers.s3server import S3Server
from slack_sdk.webhook import WebhookClient

# --- ports -------------------------------------------------------------------------------------


def test_each_xdist_worker_gets_its_own_ports_below_the_ephemeral_range(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers never choose the same port, and no outgoing connection can take one."""
    chosen: dict[str, set[int]] = {}
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        chosen[worker] = {ports.free_port() for _ in range(20)}
    assert all(len(found) == 20 for found in chosen.values()), chosen  # never handed out twice
    assert not chosen["gw0"] & chosen["gw1"] and not chosen["gw1"] & chosen["gw2"]
    first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert max(max(found) for found in chosen.values()) < first_ephemeral


# --- PostgreSQL --------------------------------------------------------------------------------


def test_fixture_template_is_loaded(
    pg_server: ServerAddress, fixture_template: FixtureTemplate, fixture_db: str
) -> None:
    count = psql(pg_server, fixture_db, "SELECT count(*) FROM certificates")
    assert int(count) == fixture_template.certificates > 0


def test_fingerprint_survives_dump_and_restore(
    pg_server: ServerAddress, fixture_db: str, make_db: Callable[..., str]
) -> None:
    target = make_db()
    env = {**pg_server.env(fixture_db), "PATH": "/usr/bin:/bin"}
    dump = subprocess.run(
        [pg_binary("pg_dump"), "-Fc"], env=env, capture_output=True, check=True
    ).stdout
    subprocess.run(
        [pg_binary("pg_restore"), "--exit-on-error", "-d", target],
        input=dump,
        env={**pg_server.env(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=True,
    )
    assert fingerprint(pg_server, target) == fingerprint(pg_server, fixture_db)


def test_fingerprint_notices_one_changed_row(pg_server: ServerAddress, fixture_db: str) -> None:
    before = fingerprint(pg_server, fixture_db)
    psql(pg_server, fixture_db, "UPDATE issuers SET country = 'XX' WHERE id = 7")
    after = fingerprint(pg_server, fixture_db)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"data:public.issuers"}


def test_fingerprint_notices_dropped_index(pg_server: ServerAddress, fixture_db: str) -> None:
    before = fingerprint(pg_server, fixture_db)
    psql(pg_server, fixture_db, "DROP INDEX certificates_metadata_idx")
    after = fingerprint(pg_server, fixture_db)
    assert before["indexes"] != after["indexes"]
    assert "certificates_metadata_idx" not in after["indexes"]


def test_weird_database_names_work(pg_server: ServerAddress, make_db: Callable[..., str]) -> None:
    name = 'we\'ird "db" /../ näme'
    assert make_db(name) == name
    # Columns named like the fingerprint's own aliases must not shadow the whole row.
    psql(pg_server, name, "CREATE TABLE t (r int, x text); INSERT INTO t VALUES (1, 'a');")
    before = fingerprint(pg_server, name)
    assert before["data:public.t"].startswith("rows=1 ")
    psql(pg_server, name, "UPDATE t SET x = 'b'")
    assert fingerprint(pg_server, name)["data:public.t"] != before["data:public.t"]


# --- private cluster ---------------------------------------------------------------------------


def test_private_cluster_checks_password(
    private_cluster: Callable[..., PrivateCluster],
) -> None:
    cluster = private_cluster()
    good = cluster.address
    with psycopg.connect(good.conninfo("postgres")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    bad = ServerAddress(good.host, good.port, good.user, (good.password or "") + "x")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(bad.conninfo("postgres"))
    # psql reads the password from the environment too (how backupd's pg_dump gets it).
    assert psql(good, "postgres", "SELECT 42").strip() == "42"


def test_private_cluster_stop_and_restart(
    private_cluster: Callable[..., PrivateCluster],
) -> None:
    cluster = private_cluster("simple")
    cluster.stop("immediate")
    assert not cluster.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.address.conninfo("postgres"))
    cluster.restart()
    assert cluster.is_running()
    assert psql(cluster.address, "postgres", "SELECT 1").strip() == "1"


# --- HTTP receiver -----------------------------------------------------------------------------


def _post(url: str, payload: object, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_receiver_ratelimit_then_ok(http_receiver: HttpReceiver) -> None:
    http_receiver.set_behaviour("ratelimit", retry_after=3, times=2)
    for _ in range(2):
        status, headers, _body = _post(http_receiver.url, {"n": 1})
        assert status == 429
        assert headers["Retry-After"] == "3"
    assert _post(http_receiver.url, {"n": 2})[0] == 200
    assert [r.json for r in http_receiver.wait_for(3)] == [{"n": 1}, {"n": 1}, {"n": 2}]


def test_receiver_speaks_slack_webhook(http_receiver: HttpReceiver) -> None:
    resp = WebhookClient(http_receiver.url).send(text="backup ok")
    assert (resp.status_code, resp.body) == (200, "ok")
    (req,) = http_receiver.wait_for(1)
    assert req.method == "POST" and req.json == {"text": "backup ok"}
    http_receiver.set_behaviour("error")
    assert WebhookClient(http_receiver.url).send(text="x").status_code == 500


def test_receiver_hang_and_refuse(http_receiver: HttpReceiver) -> None:
    http_receiver.set_behaviour("hang")
    with pytest.raises(TimeoutError):
        _post(http_receiver.url, {}, timeout=0.5)
    http_receiver.set_behaviour("refuse")
    with pytest.raises(urllib.error.URLError, match="refused"):
        _post(http_receiver.url, {})
    with pytest.raises(urllib.error.URLError, match="refused"):
        _post(http_receiver.refused_url(), {})
    http_receiver.set_behaviour("ok")  # same port comes back
    assert _post(http_receiver.url, {})[0] == 200


def test_receiver_close_does_not_wait_for_hung_requests() -> None:
    receiver = HttpReceiver("hang").start()
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            _post(receiver.url, {}, 30)
        except OSError as exc:  # the expected "closed without response"
            outcome.append(exc)

    client = threading.Thread(target=call, daemon=True)
    client.start()
    receiver.wait_for(1)
    started = time.monotonic()
    receiver.close()
    client.join(timeout=5)
    assert time.monotonic() - started < 5 and not client.is_alive()
    assert len(outcome) == 1  # the client saw the connection drop, not a response


# --- S3 ----------------------------------------------------------------------------------------


def test_s3_stop_and_restart_same_port(s3_server: S3Server, s3_bucket: str) -> None:
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="a", Body=b"before")
    endpoint = s3_server.endpoint_url
    s3_server.stop()
    try:
        with pytest.raises(botocore.exceptions.EndpointConnectionError):
            client.get_object(Bucket=s3_bucket, Key="a")
    finally:
        s3_server.start()
    assert s3_server.endpoint_url == endpoint
    assert client.get_object(Bucket=s3_bucket, Key="a")["Body"].read() == b"before"
    client.put_object(Bucket=s3_bucket, Key="b", Body=b"after")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == ["a", "b"]


def test_s3_env_points_at_server(s3_server: S3Server, s3_bucket: str) -> None:
    env = s3_server.env()
    assert env["S3_ENDPOINT_URL"] == s3_server.endpoint_url
    assert {"S3_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= env.keys()


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_env_does_not_inherit_developer_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_HOST", "prod.example.com")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "real-secret")
    monkeypatch.setenv("DB_BACKUP_DIR", "/srv/backups")
    env = build_env({"POSTGRES_DB": "x"})
    assert env["POSTGRES_DB"] == "x"
    assert not {"POSTGRES_HOST", "AWS_SECRET_ACCESS_KEY", "DB_BACKUP_DIR"} & env.keys()


# --- file opens ------------------------------------------------------------------------------


def test_the_open_counter_counts_every_open_of_its_file_by_any_process(tmp_path: Path) -> None:
    from helpers.file_opens import OpenCounter

    watched, other = tmp_path / "watched", tmp_path / "other"
    watched.write_text("x")
    other.write_text("y")
    with OpenCounter(watched) as opens:
        assert opens.count() == 0
        watched.read_text()
        other.read_text()
        subprocess.run(["cat", str(watched)], check=True, capture_output=True)
        watched.stat()  # not an open
        assert opens.count() == 2
