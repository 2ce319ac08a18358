"""The documentation and the compose configuration against the code: every setting the code
reads is documented with its real default, the compose env file sets nothing the code does not
read, and every ``backupd`` command and option the docs show exists in the CLI.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values
from typer.main import get_command

from backupd.cli import app
from backupd.settings import ENV_NAMES, Settings

REPO = Path(__file__).resolve().parents[1]
ENV_FILE = REPO / "config" / "backupd.env"
COMPOSE_FILE = REPO / "docker-compose.backup.yml"
CONFIG_DOC = REPO / "docs" / "configuration.md"
# The user-facing pages of the container and the runbook (other docs pages have their owners).
DOCS = [REPO / "README.md", *(REPO / "docs" / page for page in
                              ("backup-and-recovery.md", "configuration.md", "operations.md"))]

SETTING_NAMES = set(ENV_NAMES.values())
# Read by boto3's credential/region chain, not by Settings, and legitimate in the sidecar.
AWS_VARIABLE = re.compile(r"AWS_[A-Z0-9_]+")
# Deliberately not the default in the compose env file: the password is a file.
# (The drill server's file is read only with DRILL_POSTGRES_HOST, set by the drill profile.)
COMPOSE_SPECIFIC = {"POSTGRES_PASSWORD", "POSTGRES_PASSWORD_FILE",
                    "DRILL_POSTGRES_PASSWORD_FILE"}
# Variables the docs may name that are not backupd settings.
NOT_SETTINGS = {"POSTGRES_MAJOR", "PG_CLIENT_MAJORS", "PGDG_KEY_FINGERPRINT",
                "PG_PACKAGES_FROM", "COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES"}


def env_file_values() -> dict[str, str]:
    return {key: value or "" for key, value in dotenv_values(ENV_FILE).items()}


def parse_one(env_name: str, value: str) -> Any:
    """``value`` as backupd parses it for ``env_name`` (ignoring any .env file)."""
    field = next(name for name, alias in ENV_NAMES.items() if alias == env_name)
    values: dict[str, Any] = {env_name: value}  # an alias per setting: not a typed call
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    return getattr(settings, field)


def default_of(env_name: str) -> Any:
    field = next(name for name, alias in ENV_NAMES.items() if alias == env_name)
    return Settings.model_fields[field].default


def reference_rows() -> dict[str, list[str]]:
    """``| `NAME` | default | meaning |`` rows of the configuration reference."""
    rows: dict[str, list[str]] = {}
    for line in CONFIG_DOC.read_text().splitlines():
        match = re.match(r"\|\s*`([A-Z][A-Z0-9_]+)`\s*\|(.*)\|\s*$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    return rows


# --- the compose env file ------------------------------------------------------------------


def test_env_file_lists_every_setting() -> None:
    missing = SETTING_NAMES - env_file_values().keys()
    assert not missing, f"config/backupd.env lacks {sorted(missing)}"


def test_env_file_sets_only_variables_the_code_reads() -> None:
    unknown = {k for k in env_file_values() if k not in SETTING_NAMES and
               not AWS_VARIABLE.fullmatch(k)}
    assert not unknown, f"config/backupd.env sets variables backupd never reads: {sorted(unknown)}"


def test_env_file_values_are_the_code_defaults() -> None:
    wrong = {}
    for name, value in env_file_values().items():
        if name in COMPOSE_SPECIFIC or name not in SETTING_NAMES:
            continue
        default = default_of(name)
        if value == "":
            # Empty means "not set" (env_ignore_empty): only right for optional settings.
            if default not in (None, ""):
                wrong[name] = f"empty, but the default is {default!r}"
        elif parse_one(name, value) != default:
            wrong[name] = f"{value!r} parses to {parse_one(name, value)!r}, default {default!r}"
    assert not wrong, f"config/backupd.env does not show the defaults: {wrong}"


def test_env_file_wires_the_compose_contract() -> None:
    values = env_file_values()
    expected = {
        "POSTGRES_HOST": "postgres", "POSTGRES_PORT": "5432",
        "POSTGRES_DB": "certificate_verification", "POSTGRES_USER": "postgres",
        "POSTGRES_PASSWORD_FILE": "/run/secrets/postgres_password", "POSTGRES_PASSWORD": "",
        "DB_BACKUP_DIR": "/backups", "DB_BACKUP_RETENTION_DAYS": "7",
        "DB_BACKUP_S3_BUCKET": "", "SLACK_WEBHOOK_URL": "", "HEALTH_PORT": "8080",
        "BACKUP_ON_START": "true", "SHUTDOWN_TIMEOUT_SECONDS": "20",
    }
    assert {k: values.get(k) for k in expected} == expected


def test_compose_sidecar_gets_only_variables_the_code_reads() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    service = compose["services"]["db-backup"]
    names: set[str] = set()
    for entry in service.get("env_file", []):
        path = REPO / (entry["path"] if isinstance(entry, dict) else entry)
        if path.exists():  # the optional local override is not in the repository
            names |= set(dotenv_values(path))
    environment = service.get("environment", {})
    names |= set(environment if isinstance(environment, dict)
                 else (item.split("=", 1)[0] for item in environment))
    assert "POSTGRES_DB" in names  # the env file was really read
    unknown = {n for n in names if n not in SETTING_NAMES and not AWS_VARIABLE.fullmatch(n)}
    assert not unknown, f"docker-compose.backup.yml passes unread variables: {sorted(unknown)}"


def test_unknown_variable_would_be_caught() -> None:
    # The checks above compare names against ENV_NAMES: prove that set is the real one.
    assert "DB_BACKUP_DIR" in SETTING_NAMES and "POSTGRES_PASSWORD_FILE" in SETTING_NAMES
    assert "DB_BACKUP_DIRECTORY" not in SETTING_NAMES
    assert len(SETTING_NAMES) == len(Settings.model_fields)


# --- the configuration reference -------------------------------------------------------------


def test_reference_documents_every_setting() -> None:
    missing = SETTING_NAMES - reference_rows().keys()
    assert not missing, f"docs/configuration.md lacks {sorted(missing)}"


def test_reference_documents_no_unknown_setting() -> None:
    unknown = {name for name in reference_rows()
               if name not in SETTING_NAMES and name not in NOT_SETTINGS}
    assert not unknown, f"docs/configuration.md documents settings that do not exist: {unknown}"


@pytest.mark.parametrize("env_name", sorted(SETTING_NAMES))
def test_reference_default_matches_code(env_name: str) -> None:
    cells = reference_rows().get(env_name)
    assert cells is not None, f"{env_name} is not in docs/configuration.md"
    documented = cells[0]
    default = default_of(env_name)
    if env_name == "POSTGRES_PASSWORD":
        default = default.get_secret_value()
    if default is None or default == "":
        assert documented == ("none" if default is None else "empty"), \
            f"{env_name}: documented default {documented!r}, code default {default!r}"
        return
    match = re.fullmatch(r"`([^`]*)`", documented)
    assert match, f"{env_name}: default cell {documented!r} should be a `value`"
    assert parse_one(env_name, match.group(1)) == parse_one(env_name, str(default)) or \
        parse_one(env_name, match.group(1)) == default, \
        f"{env_name}: documented default {documented!r}, code default {default!r}"


# --- commands and options shown in the docs --------------------------------------------------

CLI = get_command(app)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```.*?$(.*?)^```", re.S | re.M)
# `backupd CMD` at the start of a line or after `... run --rm db-backup` / `exec db-backup`,
# and the docs' alias `bk CMD`; not prose inside messages ("another backupd is ...").
INVOCATION = re.compile(r"(?:^\s*|db-backup\s+)backupd ([a-z][a-z0-9-]*)([^#|\n]*)"
                        r"|(?:^\s*|\s)bk ([a-z][a-z0-9-]*)([^#|\n]*)")


def documented_invocations() -> list[tuple[str, str, str]]:
    """(doc file, command, the rest of the line) for every ``backupd CMD ...`` in code."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        chunks = [m.group(1) for m in FENCE.finditer(text)]
        chunks += CODE_SPAN.findall(FENCE.sub("", text))
        for chunk in chunks:
            # Shell continuations: the options may be on the next line.
            for line in chunk.replace("\\\n", " ").splitlines():
                found += [(doc.name, m.group(1) or m.group(3), m.group(2) or m.group(4) or "")
                          for m in INVOCATION.finditer(line)]
    return found


def test_docs_show_commands_at_all() -> None:
    commands = {command for _, command, _ in documented_invocations()}
    assert {"backup", "verify", "restore", "list", "run"} <= commands


def test_documented_commands_exist() -> None:
    commands = getattr(CLI, "commands", {})
    unknown = sorted({(doc, command) for doc, command, _ in documented_invocations()
                      if command not in commands})
    assert not unknown, f"the docs show commands backupd does not have: {unknown}"


def test_documented_options_exist() -> None:
    commands = getattr(CLI, "commands", {})
    unknown = set()
    for doc, command, rest in documented_invocations():
        if command not in commands:
            continue  # reported by the test above
        options = {opt for param in commands[command].params
                   for opt in (*param.opts, *param.secondary_opts)}
        for option in re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", rest):
            if option not in options:
                unknown.add((doc, command, option))
    assert not unknown, f"the docs show options backupd does not have: {sorted(unknown)}"
