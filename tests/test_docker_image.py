"""The image, built from this checkout's Dockerfile and run with `docker run`: what the compose
stack relies on, for an engine without the compose plugin (tests/test_docker_e2e.py is the
whole stack). As its non-root user it backs up a database on the host's server into a
bind-mounted directory (a file `gunzip -c | psql` restores), restores it with a one-off run,
and runs the pg_dump of the server's major; as the daemon under tini, it takes its first
backup, reports healthy, and stops cleanly on `docker stop`.

Skipped, saying why, where no Docker engine answers or the base image cannot be had (see
tests/helpers/containers.py for building without a registry).
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.containers import build_image, remove_image
from helpers.pg import ServerAddress, fingerprint, psql

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(2400)]

UID = 10001  # the image's user (Dockerfile: USER 10001:10001)
FIRST_BACKUP_TIMEOUT = 300.0


class Image:
    def __init__(self, tag: str, build_args: dict[str, str]) -> None:
        self.tag = tag
        self.majors = [int(major) for major in
                       build_args.get("PG_CLIENT_MAJORS", "13 14 15 16 17").split()]

    def run(self, command: list[str], env: dict[str, str], backups: Path) -> str:
        """A one-off `docker run --rm` of ``command``; its stdout (fails on a non-zero exit)."""
        import docker
        from docker.errors import ContainerError

        client = docker.from_env(timeout=600)
        try:
            output: bytes = client.containers.run(
                self.tag, command, remove=True, network_mode="host", environment=env,
                volumes={str(backups): {"bind": "/backups", "mode": "rw"}})
        except ContainerError as exc:
            pytest.fail(f"{command} exited {exc.exit_status}: {exc.stderr!r}")
        finally:
            client.close()
        return output.decode()


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    tag = f"backupd-test:{secrets.token_hex(4)}"
    arguments = build_image(tag)
    try:
        yield Image(tag, arguments)
    finally:
        remove_image(tag)


@pytest.fixture
def backups(tmp_path: Path) -> Path:
    """The bind-mounted backup directory, the image's user's (as `chown 10001 DIR` on a host)."""
    if os.geteuid() != 0:
        pytest.skip("giving the directory to uid 10001 needs root")
    directory = tmp_path / "backups"
    directory.mkdir(mode=0o700)
    os.chown(directory, UID, UID)
    return directory


def sidecar_env(server: ServerAddress, database: str, **extra: str) -> dict[str, str]:
    return {"POSTGRES_HOST": server.host, "POSTGRES_PORT": str(server.port),
            "POSTGRES_USER": server.user, "POSTGRES_DB": database,
            "POSTGRES_PASSWORD": server.password or "postgres", **extra}


def test_the_image_backs_up_and_restores_as_its_user_with_the_servers_pg_dump(
        image: Image, backups: Path, pg_server: ServerAddress, small_db: str,
        make_db: Any, target_db: str) -> None:
    env = sidecar_env(pg_server, small_db)
    assert image.run(["id", "-u"], env, backups).strip() == str(UID)

    image.run(["backupd", "backup"], env, backups)
    dumps = sorted(backups.glob(f"{small_db}_*.sql.gz"))
    assert len(dumps) == 1, sorted(p.name for p in backups.iterdir())
    dump = dumps[0]
    assert (backups / f"{dump.name}.manifest.json").exists()
    assert dump.stat().st_uid == UID and dump.stat().st_mode & 0o077 == 0
    assert "backup success" in (backups / "backup_log.txt").read_text()

    # The shell scripts' interface: plain `gunzip -c FILE | psql` restores it.
    by_hand = make_db()
    psql(pg_server, by_hand, gzip.decompress(dump.read_bytes()).decode())
    assert fingerprint(pg_server, by_hand) == fingerprint(pg_server, small_db)

    # A one-off run restores it, verified first, into a new database.
    image.run(["backupd", "restore", dump.name, "--target-db", target_db, "--yes"], env,
              backups)
    assert fingerprint(pg_server, target_db) == fingerprint(pg_server, small_db)
    assert "restore" in (backups / "restore_log.txt").read_text()

    # The pg_dump of the server's own major, of the majors the image was built with.
    status = json.loads(image.run(["backupd", "status", "--json"], env, backups))
    server_major = int(psql(pg_server, small_db, "SHOW server_version_num").strip()[:-4])
    assert status["postgres_client"]["installed_majors"] == image.majors
    assert status["postgres_client"]["pg_dump_dir"] == f"/usr/lib/postgresql/{server_major}/bin"


def test_the_daemon_runs_under_tini_backs_up_on_start_and_stops_on_docker_stop(
        image: Image, backups: Path, pg_server: ServerAddress, small_db: str) -> None:
    import docker

    client = docker.from_env(timeout=600)
    container = client.containers.run(
        image.tag, detach=True, network_mode="host",
        environment=sidecar_env(pg_server, small_db, HEALTH_PORT="0"),
        volumes={str(backups): {"bind": "/backups", "mode": "rw"}})
    try:
        def execute(*command: str) -> tuple[int, str]:
            code, output = container.exec_run(list(command))
            return int(code), output.decode()

        deadline = time.monotonic() + FIRST_BACKUP_TIMEOUT
        verified: list[str] = []
        while not verified and time.monotonic() < deadline:
            time.sleep(2)
            code, listed = execute("backupd", "list", "--json")
            if code == 0:
                verified = [entry["name"] for entry in json.loads(listed or "[]")
                            if entry["verified"]]
        logs = container.logs().decode()
        assert verified, f"no verified backup within {FIRST_BACKUP_TIMEOUT}s:\n{logs}"
        assert verified[0].startswith(f"{small_db}_")

        pid1 = execute("cat", "/proc/1/cmdline")[1].split("\0")
        assert pid1[0].endswith("tini") and "backupd" in pid1 and "run" in pid1, pid1
        assert execute("id", "-u")[1].strip() == str(UID)
        # The image's HEALTHCHECK command.
        code, said = execute("backupd", "health")
        assert code == 0, said

        # SIGTERM through tini: backupd exits on its own, 0, within the stop timeout
        # (docker stop would otherwise SIGKILL it: exit 137).
        container.stop(timeout=60)
        container.reload()
        assert container.attrs["State"]["ExitCode"] == 0, container.logs().decode()[-3000:]
    finally:
        container.remove(force=True)
        client.close()
