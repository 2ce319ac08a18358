"""End to end in Docker: build the image, bring up docker-compose.backup.yml, wait for the first
verified backup, restore it with a one-off `run --rm`, check the data, and bring it all down.

Runs wherever a Docker engine answers a ping (and the compose plugin is installed); skipped,
saying why, everywhere else. The stack gets its own project name, so it never touches another
stack's volumes, and is always taken down with its volumes.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.containers import compose_unavailable

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = "docker-compose.backup.yml"
SEED_ROWS = 500
FIRST_BACKUP_TIMEOUT = 300.0

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]


class Stack:
    def __init__(self, compose: object, base_command: list[str], secret: Path) -> None:
        self.compose = compose
        self.base = base_command
        self.secret = secret

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.base, *args], capture_output=True, text=True, check=False,
                              cwd=REPO, timeout=timeout)

    def sidecar(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`docker compose exec` into the running daemon's container."""
        return self.run("exec", "-T", "db-backup", *args)

    def psql(self, database: str, query: str) -> str:
        result = self.run("exec", "-T", "postgres", "psql", "-U", "postgres", "-d", database,
                          "-v", "ON_ERROR_STOP=1", "-tAc", query)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def logs(self) -> str:
        result = self.run("logs", "--no-color", "db-backup")
        return result.stdout + result.stderr


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    reason = compose_unavailable()
    if reason:
        pytest.skip(reason)
    from testcontainers.compose import DockerCompose

    # A password with shell- and URL-hostile characters, in the place of config/postgres_password
    # (mode 0600: secrets-init must read it whatever its mode).
    secret = tmp_path / "postgres_password"
    secret.write_text("e2e'p\"w:d " + secrets.token_hex(8) + "\n")
    secret.chmod(0o600)
    seed = tmp_path / "seed.sql"
    seed.write_text(
        "CREATE TABLE e2e_seed (id integer PRIMARY KEY, note text NOT NULL);\n"
        f"INSERT INTO e2e_seed SELECT i, 'row ' || i FROM generate_series(1, {SEED_ROWS}) i;\n"
    )
    seed.chmod(0o644)
    # The repository's compose file unchanged, plus: the test's password where secrets-init
    # looks for config/postgres_password, and seed data loaded by the postgres image's init
    # hook so that the very first backup holds rows.
    override = tmp_path / "override.yml"
    override.write_text(
        "services:\n"
        "  secrets-init:\n"
        "    volumes:\n"
        f"      - {secret}:/config/postgres_password:ro\n"
        "  postgres:\n"
        "    volumes:\n"
        f"      - {seed}:/docker-entrypoint-initdb.d/10-seed.sql:ro\n"
    )
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", f"backupd-e2e-{secrets.token_hex(4)}")
    compose = DockerCompose(REPO, compose_file_name=[COMPOSE_FILE, str(override)], build=True,
                            wait=False, keep_volumes=False)
    try:
        compose.start()
        yield Stack(compose, compose.compose_command_property, secret)
    finally:
        compose.stop(down=True)  # `down -v`: the test's volumes go too


def newest_verified(stack: Stack) -> str | None:
    result = stack.sidecar("backupd", "list", "--json")
    if result.returncode != 0:
        return None
    entries = json.loads(result.stdout or "[]")
    return next((e["name"] for e in entries if e["verified"]), None)


def test_compose_stack_backs_up_on_start_and_restores_one_off(stack: Stack) -> None:
    # 1. `up` alone takes the first backup (BACKUP_ON_START) and verifies it.
    deadline = time.monotonic() + FIRST_BACKUP_TIMEOUT
    name = newest_verified(stack)
    while name is None and time.monotonic() < deadline:
        time.sleep(3)
        name = newest_verified(stack)
    assert name is not None, f"no verified backup within {FIRST_BACKUP_TIMEOUT}s:\n{stack.logs()}"
    assert name.startswith("certificate_verification_") and name.endswith(".sql.gz")

    log = stack.sidecar("cat", "/backups/backup_log.txt")
    assert log.returncode == 0 and "backup success" in log.stdout, log.stdout + log.stderr

    # The password secrets-init put in place is the test's, readable by the sidecar only.
    assert stack.sidecar("cat", "/run/secrets/postgres_password").stdout == \
        stack.secret.read_text()
    # The sidecar runs the client of the server's major (the image carries 13 to 17).
    server_major = stack.psql("postgres", "SHOW server_version_num")[:-4]
    status = json.loads(stack.sidecar("backupd", "status", "--json").stdout)
    assert status["postgres_client"]["pg_dump_dir"] == f"/usr/lib/postgresql/{server_major}/bin"
    assert status["postgres_client"]["installed_majors"] == [13, 14, 15, 16, 17]

    # 2. The container: the daemon under tini as PID 1, as the non-root user.
    assert stack.sidecar("id", "-u").stdout.strip() == "10001"
    pid1 = stack.sidecar("cat", "/proc/1/cmdline").stdout.split("\0")
    assert pid1[0].endswith("tini") and "backupd" in pid1 and "run" in pid1, pid1

    # 3. A one-off run restores it, verified first, into a new database.
    restored = stack.run("run", "--rm", "-T", "db-backup", "backupd", "restore", name,
                         "--target-db", "e2e_restored", "--yes")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert stack.psql("e2e_restored", "SELECT count(*), sum(id) FROM e2e_seed") == \
        f"{SEED_ROWS}|{SEED_ROWS * (SEED_ROWS + 1) // 2}"
    assert "restore" in stack.sidecar("cat", "/backups/restore_log.txt").stdout

    # 4. Healthy once a fresh verified backup exists (the image's HEALTHCHECK command).
    health = stack.sidecar("backupd", "health")
    assert health.returncode == 0, health.stdout + health.stderr

    # 5. `docker stop` (SIGTERM through tini): a clean exit well within the grace period.
    started = time.monotonic()
    stopped = stack.run("stop", "db-backup")
    assert stopped.returncode == 0, stopped.stderr
    assert time.monotonic() - started < 45
    listed = stack.run("ps", "--all", "--format", "json", "db-backup").stdout.strip()
    # Compose prints a JSON array (before 2.21) or one JSON object per line (since).
    states = json.loads(listed) if listed.startswith("[") else \
        [json.loads(line) for line in listed.splitlines() if line.strip()]
    assert states and all(s.get("ExitCode") == 0 for s in states), states
