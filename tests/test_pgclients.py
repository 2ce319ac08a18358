"""backupd runs the PostgreSQL client tools of the server's major (backupd/pipeline/clients.py):
from a tree of versioned directories laid out as Debian and the image lay them out, bypassing
postgresql-common's pg_wrapper, and never overriding a tool put first on PATH on purpose."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from helpers.backups import pg_dump_runs, read_manifest, take_backup, tool_wrapper_dir
from helpers.cli import EnvFactory, run_backupd
from helpers.pg import ServerAddress, connect, pg_binary

from backupd.pipeline import clients as pgclients
from backupd.pipeline import codecs
from backupd.pipeline.supervisor import tool_path


def executable(path: Path, text: str = "#!/bin/sh\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def clients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """/usr/lib/postgresql as the image has it (minus 14), and PATH's tools being pg_wrapper."""
    root = tmp_path / "lib" / "postgresql"
    for major in (13, 15, 16, 17):
        for tool in ("pg_dump", "pg_restore", "psql"):
            executable(root / str(major) / "bin" / tool)
    executable(root / "12" / "bin" / "psql")  # a leftover without pg_dump: not a client
    wrapper = executable(tmp_path / "share" / "pg_wrapper")
    bin_dir = tmp_path / "usr-bin"
    bin_dir.mkdir()
    for tool in ("pg_dump", "pg_restore", "psql"):
        (bin_dir / tool).symlink_to(wrapper)
    monkeypatch.setenv("PATH", str(bin_dir))
    return root


def test_installed_majors_are_the_directories_with_a_pg_dump(clients: Path) -> None:
    assert pgclients.installed_majors(clients) == [13, 15, 16, 17]
    assert pgclients.installed_majors(clients / "absent") == []


@pytest.mark.parametrize(("server", "major", "reason"), [
    (16, 16, "the server's major"),
    (13, 13, "the server's major"),
    (14, 15, "nearest newer than the server (14)"),  # never 17: its SQL may not load into 14
    (12, 13, "nearest newer than the server (12)"),
    (18, 17, "newest installed, older than the server (18)"),  # the version check refuses it
    (None, 17, "newest installed (server not contacted yet)"),
])
def test_the_servers_major_else_the_nearest_newer(
        clients: Path, server: int | None, major: int, reason: str) -> None:
    for tool in ("pg_dump", "pg_restore", "psql"):
        choice = pgclients.choose(server, tool, clients)
        assert choice.bin_dir == clients / str(major) / "bin"
        assert (choice.major, choice.reason) == (major, reason)


def test_a_tool_first_on_path_that_is_not_the_wrapper_wins(
        clients: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = executable(tmp_path / "mine" / "psql")
    monkeypatch.setenv("PATH", f"{mine.parent}:{os.environ['PATH']}")
    choice = pgclients.choose(16, "psql", clients)
    assert choice.bin_dir is None and str(mine) in choice.reason
    # Only for that tool: pg_dump still comes from the server's major.
    assert pgclients.choose(16, "pg_dump", clients).bin_dir == clients / "16" / "bin"


def test_without_versioned_directories_path_decides(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    choice = pgclients.choose(16, "pg_dump", tmp_path / "nothing")
    assert choice.bin_dir is None and choice.major is None


def test_report_reads_the_major_from_a_recorded_server_version(clients: Path) -> None:
    report = pgclients.report("16.4 (Debian 16.4-1.pgdg120+1)", clients)
    assert report.pg_dump.major == 16 and report.installed == [13, 15, 16, 17]
    line = report.line()
    assert f"pg_dump 16 ({clients}/16/bin)" in line and "server 16.4" in line
    assert "installed: 13 15 16 17" in line
    assert pgclients.report(None, clients).pg_dump.reason.startswith("newest installed")


# --- on this machine, through backupd itself -----------------------------------------------------

def debian_layout_server_major(server_major: int) -> Path:
    bin_dir = pgclients.CLIENT_ROOT / str(server_major) / "bin"
    wrapper_on_path = [p for p in os.environ["PATH"].split(":")
                       if (Path(p) / "pg_dump").exists()][:1]
    if not (bin_dir / "pg_dump").is_file() or not wrapper_on_path or \
            (Path(wrapper_on_path[0]) / "pg_dump").resolve().name != "pg_wrapper":
        pytest.skip("not a Debian-style install (pg_wrapper on PATH, versioned directories)")
    return bin_dir


def test_a_backup_runs_the_servers_own_pg_dump_and_status_says_so(
        pg_server_major: int, small_db: str, backupd_env: EnvFactory) -> None:
    bin_dir = debian_layout_server_major(pg_server_major)
    env = backupd_env(small_db)
    backup = take_backup(env)
    assert read_manifest(backup)["pg_dump_version"].startswith(f"{pg_server_major}.")

    status = run_backupd(["status", "--json"], env)
    assert status.returncode == 0, status.stderr
    client = json.loads(status.stdout)["postgres_client"]
    assert client["pg_dump_dir"] == str(bin_dir) and client["pg_dump_major"] == pg_server_major
    assert client["reason"] == "the server's major"
    text = run_backupd(["status"], env).stdout
    assert f"postgres client: pg_dump {pg_server_major} ({bin_dir})" in text


def test_tool_path_follows_the_server_this_process_connected_to(
        pg_server_major: int, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = debian_layout_server_major(pg_server_major)
    monkeypatch.setattr(pgclients, "_server_major", None)
    pgclients.note_server_major(pg_server_major)
    assert tool_path("pg_restore") == str(bin_dir / "pg_restore")


@pytest.fixture
def pg_server_major(pg_server: ServerAddress) -> int:
    with connect(pg_server) as conn:
        return int(conn.info.server_version) // 10000


@pytest.mark.parametrize("fmt", ["custom", "directory"])
def test_the_real_client_compresses_archives_with_the_codec_its_major_has(
        pg_server_major: int, fixture_db: str, backupd_env: EnvFactory, tmp_path: Path,
        fmt: str) -> None:
    """Run with the machine's real pg_dump (15 here: zlib, no --compress option; 16+ clients
    from wheels: tests/test_archive_codecs.py). The archive's own header names the codec
    pg_dump used, and backupd restores-verifies it."""
    log = tmp_path / "tools.log"
    wrappers = tool_wrapper_dir(tmp_path / "bin", log, ("pg_dump",))
    env = backupd_env(fixture_db, DB_BACKUP_FORMAT=fmt, PATH=f"{wrappers}:/usr/bin:/bin")
    backup = take_backup(env)
    major = int(subprocess.run([pg_binary("pg_dump"), "--version"], capture_output=True,
                               text=True, check=True).stdout.split()[-1].split(".")[0])
    dumps = pg_dump_runs(log)
    compress = [a for a in dumps[0] if a.startswith("--compress")]
    option = codecs.archive_codec(pg_binary("pg_dump"), major, None).option
    assert compress == ([] if option is None else [f"--compress={option}"])
    if major < 16:
        assert compress == ["--compress=1"]  # zlib's fast level, not pg_dump's own 6
    if fmt == "custom":
        listing = subprocess.run([pg_binary("pg_restore"), "--list", str(backup)],
                                 capture_output=True, text=True, check=True).stdout
        header = next(line for line in listing.splitlines() if "Compression:" in line)
        assert header.split()[-1] == ("1" if major < 16 else codecs.archive_codec(
            pg_binary("pg_dump"), major, None).codec), header
    else:
        with tarfile.open(backup) as tar:
            data = [n for n in tar.getnames() if n.endswith((".dat.gz", ".dat.zst"))]
        zstd = major >= 16 and "zstd" in codecs.supported(pg_binary("pg_dump"))
        assert data and all(n.endswith(".zst" if zstd else ".gz") for n in data)
    assert read_manifest(backup)["verified"] is True
