"""Making backup files for tests out of REAL backups: re-dated copies, corruptions, hand-made
SQL that is still a valid gzip stream, and stand-ins for client tools that record how they
were called. Everything starts from a file backupd (or pg_dump) really wrote.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import stat
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backupd.manifest import Manifest

from .cli import run_backupd, server_env
from .pg import ServerAddress, pg_binary, psql

MANIFEST_SUFFIX = ".manifest.json"
TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"


def backup_files(directory: Path) -> list[str]:
    """Names of the data files in ``directory`` that look like backups (not manifests/logs)."""
    if not directory.is_dir():
        return []
    return sorted(
        p.name for p in directory.iterdir()
        if p.name.endswith((".sql.gz", ".sql.zst", ".dump", ".dir.tar", ".age"))
    )


def only_backup(directory: Path) -> Path:
    names = backup_files(directory)
    assert len(names) == 1, f"expected exactly one backup in {directory}, found {names}"
    return directory / names[0]


def manifest_path(data: Path) -> Path:
    return data.with_name(data.name + MANIFEST_SUFFIX)


def read_manifest(data: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(manifest_path(data).read_text())
    return result


def write_manifest(data: Path, manifest: dict[str, Any]) -> None:
    manifest_path(data).write_text(json.dumps(manifest, indent=2) + "\n")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def name_at(database_part: str, when: datetime, suffix: str = ".sql.gz") -> str:
    """``<encoded db>_<YYYYmmdd_HHMMSS><suffix>`` for an already file-name-safe db part."""
    return f"{database_part}_{when.astimezone(UTC).strftime(TIMESTAMP_FORMAT)}{suffix}"


def redate(source: Path, when: datetime, *, keep_source: bool = True,
           directory: Path | None = None) -> Path:
    """Copy (or move) a real backup and its manifest so it looks taken at ``when``.

    The name's timestamp and the manifest's name/started_at/finished_at change; the bytes,
    checksum and verification state stay as the real backup had them.
    """
    prefix, _, rest = source.name.rpartition("_")
    prefix = prefix.rsplit("_", 1)[0]  # drop the date part as well: <db>_<date>_<time><suffix>
    suffix = rest[rest.index("."):]
    target = (directory or source.parent) / name_at(prefix, when, suffix)
    assert not target.exists(), f"{target.name} already exists"
    (shutil.copy2 if keep_source else shutil.move)(source, target)
    old_manifest = manifest_path(source)
    if old_manifest.exists():
        manifest = json.loads(old_manifest.read_text())
        manifest["name"] = target.name
        manifest["started_at"] = when.astimezone(UTC).isoformat()
        manifest["finished_at"] = when.astimezone(UTC).isoformat()
        write_manifest(target, manifest)
        if not keep_source:
            old_manifest.unlink()
    return target


def calendar(source: Path, times: list[datetime], *, directory: Path | None = None) -> list[Path]:
    """Copies of a real verified backup (and its manifest) as if taken at each of ``times``
    (distinct, to the second, and none the source's own), newest first: a history of
    backups without running a backup for each."""
    return [redate(source, when, directory=directory) for when in sorted(times, reverse=True)]


def refresh_manifest(data: Path, **changes: Any) -> None:
    """Make the manifest describe the file as it now is (size, sha256), plus ``changes``:
    a tampered file that the manifest vouches for, so only content checks can catch it."""
    manifest = read_manifest(data)
    manifest["stored_bytes"] = data.stat().st_size
    manifest["sha256"] = sha256_file(data)
    # The rewritten file's gzip member layout is not known: read it as one stream.
    manifest["gzip_members"] = None
    manifest.update(changes)
    write_manifest(data, manifest)


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Invert one byte in the middle of the file (the size stays the same)."""
    data = bytearray(path.read_bytes())
    index = len(data) // 2 if offset is None else offset
    data[index] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def sql_of(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


def write_gzip_sql(path: Path, sql: bytes) -> None:
    path.write_bytes(gzip.compress(sql))


def insert_after_statement(sql: bytes, marker: bytes, statement: bytes) -> bytes:
    """``sql`` with ``statement`` inserted after the first line containing ``marker``."""
    index = sql.index(marker)
    end = sql.index(b"\n", index) + 1
    return sql[:end] + statement + b"\n" + sql[end:]


# --- stand-ins for client tools ------------------------------------------------------------------


def tool_wrapper_dir(directory: Path, log: Path, tools: tuple[str, ...] = ("pg_dump", "psql"),
                     extra_shell: str = "") -> Path:
    """A directory to put first on PATH, where each of ``tools`` is a shell script that
    appends its argv (one JSON line: tool, argv, env keys, PGPASSWORD present) to ``log``,
    runs ``extra_shell`` and then execs the real binary. Returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for tool in tools:
        real = pg_binary(tool)
        script = directory / tool
        script.write_text(
            "#!/bin/sh\n"
            # Python records argv exactly (no shell word splitting), and only env KEYS.
            f"'{sys.executable}' -c 'import json, os, sys; "
            f"open(sys.argv[1], \"a\").write(json.dumps({{\"tool\": \"{tool}\", "
            "\"argv\": sys.argv[2:], \"env_keys\": sorted(os.environ)}) + \"\\n\")' "
            f"'{log}' \"$@\"\n"
            f"{extra_shell}"
            f"exec '{real}' \"$@\"\n"
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return directory


def read_tool_log(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def pg_dump_runs(log: Path) -> list[list[str]]:
    """The argv of every pg_dump in ``log`` that dumped: not ``--version``, and not backupd's
    codec probe (a 16+ client is asked once which codecs it has: pipeline/codecs.py)."""
    return [call["argv"] for call in read_tool_log(log) if call["tool"] == "pg_dump"
            and "--version" not in call["argv"]
            and not any("backupd-codec-probe-" in arg for arg in call["argv"])]


def recording_psql(directory: Path, transcript: Path) -> Path:
    """A directory to put first on PATH whose ``psql`` copies everything it is fed to
    ``transcript`` on its way to the real psql (exit status: the real psql's). Shows what
    backupd sent, e.g. whether a COMMIT ever reached psql. Returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "psql"
    script.write_text(f"#!/bin/sh\ntee '{transcript}' | '{pg_binary('psql')}' \"$@\"\n")
    script.chmod(0o755)
    return directory


def killing_pg_dump(directory: Path, after_bytes: int = 4096) -> Path:
    """A pg_dump that passes --version through, but on a real dump emits the first
    ``after_bytes`` of the real output and is then killed with SIGKILL (as the OOM killer
    would). Returns the directory to put first on PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    real = pg_binary("pg_dump")
    script = directory / "pg_dump"
    script.write_text(
        "#!/bin/sh\n"
        f'case "$1" in --version|-V) exec \'{real}\' "$@";; esac\n'
        f"'{real}' \"$@\" | head -c {after_bytes}\n"
        "kill -KILL $$\n"
    )
    script.chmod(0o755)
    return directory


def path_with(directory: Path) -> str:
    return f"{directory}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"


def take_backup(env: dict[str, str], *, prune: bool = False) -> Path:
    """Run a real ``backupd backup`` (no retention sweep unless asked); return the new file."""
    directory = Path(env["DB_BACKUP_DIR"])
    before = set(backup_files(directory))
    proc = run_backupd(["backup"] if prune else ["backup", "--no-prune"], env)
    assert proc.returncode == 0, f"backup failed ({proc.returncode}):\n{proc.stderr}"
    new = set(backup_files(directory)) - before
    assert len(new) == 1, f"expected one new backup, got {sorted(new)}"
    return directory / new.pop()


def back_up(server: ServerAddress, databases: str, directory: Path, **extra: str) -> str:
    """One ``backupd backup`` run of ``databases`` (POSTGRES_DB) on ``server`` into
    ``directory``, with the globals: what the repository of a live server holds. It must
    succeed; its run id (from the newest globals manifest)."""
    proc = run_backupd(["backup"], server_env(server, databases, directory,
                                              DB_BACKUP_GLOBALS="on", **extra), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifests = sorted(directory.glob(f"globals_*{MANIFEST_SUFFIX}"), key=lambda p: p.name)
    assert manifests, f"no globals in {directory}: {sorted(p.name for p in directory.iterdir())}"
    run_id = Manifest.from_json(manifests[-1].read_bytes()).run_id
    assert run_id is not None
    return run_id


def back_up_without_globals(server: ServerAddress, databases: str, directory: Path,
                            **extra: str) -> str:
    """One ``backupd backup`` run of ``databases`` with DB_BACKUP_GLOBALS=off: no globals
    manifest records it. It must succeed; its run id (the newest one its dumps record)."""
    proc = run_backupd(["backup", "--no-prune"], server_env(
        server, databases, directory, DB_BACKUP_GLOBALS="off", **extra), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = [Manifest.from_json(p.read_bytes()).run_id
            for p in directory.glob(f"*{MANIFEST_SUFFIX}") if not p.name.startswith("globals_")]
    return max(run for run in runs if run is not None)


SMALL_SCHEMA = """
CREATE TYPE mood AS ENUM ('ok', 'meh');
CREATE TABLE owners (id serial PRIMARY KEY, name text NOT NULL UNIQUE);
CREATE TABLE items (
    id      bigserial PRIMARY KEY,
    owner   int NOT NULL REFERENCES owners(id),
    label   text,
    mood    mood NOT NULL DEFAULT 'ok',
    doc     jsonb NOT NULL DEFAULT '{}',
    blob    bytea
);
CREATE INDEX items_owner_idx ON items (owner);
CREATE VIEW ok_items AS SELECT id, label FROM items WHERE mood = 'ok';
CREATE FUNCTION item_count() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM items';
INSERT INTO owners (name) SELECT 'owner ' || g FROM generate_series(1, 5) g;
INSERT INTO items (owner, label, mood, doc, blob)
SELECT 1 + g % 5, CASE WHEN g % 7 = 0 THEN NULL ELSE 'näme\\t' || g || E'\\n''q"' END,
       CASE WHEN g % 3 = 0 THEN 'meh' ELSE 'ok' END::mood,
       jsonb_build_object('g', g), decode(md5(g::text), 'hex')
FROM generate_series(1, 300) g;
"""


def seed_small_db(server: ServerAddress, database: str) -> None:
    """A few hundred rows over the object kinds a dump must carry (enum, FK, index, view,
    function, sequence, NULLs, escapes, bytea): cheap to dump and restore many times."""
    psql(server, database, SMALL_SCHEMA)

