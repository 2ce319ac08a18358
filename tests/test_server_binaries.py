"""The server binaries PITR drills and recover run (postgres, pg_waldump): exactly the
archive's own major, from ``PG_SERVER_ROOT/<major>/bin`` (/usr/lib/postgresql, as the image
carries them), never a newer major as for the clients; and without them the PITR drill is
skipped in one line while the dump drill's verdict stands.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.backups import take_backup
from helpers.cli import run_backupd
from helpers.logs import jobs_finished
from helpers.pg import pg_bin_dir

from backupd.archive.waldump import newest_commit, waldump_for
from backupd.commands import pitr_drill, pitr_scratch
from backupd.errors import JobSkipped
from backupd.job import JobContext
from backupd.pipeline import clients
from backupd.result import JobResult
from backupd.settings import Settings
from backupd.settings.pgserver import DEFAULT_SERVER_ROOT


def _installed_major() -> int:
    bin_dir = pg_bin_dir()
    if bin_dir is None or not (bin_dir / "postgres").is_file():
        pytest.skip("no PostgreSQL server binaries in /usr/lib/postgresql/<major>/bin here")
    return int(bin_dir.parent.name)


def _root_with(tmp_path: Path, major: int, *tools: str) -> Path:
    """A server root holding the real ``tools`` of ``major`` (symlinks) and nothing else."""
    root = tmp_path / "pgroot"
    bin_dir = root / str(major) / "bin"
    bin_dir.mkdir(parents=True)
    for tool in tools:
        (bin_dir / tool).symlink_to(DEFAULT_SERVER_ROOT / str(major) / "bin" / tool)
    return root


def test_the_default_root_has_this_machines_server_and_waldump() -> None:
    major = _installed_major()
    assert Settings(_env_file=None).pg_server_root == DEFAULT_SERVER_ROOT  # type: ignore[call-arg]
    for tool in pitr_drill.SERVER_TOOLS:
        assert clients.server_tool(tool, major, DEFAULT_SERVER_ROOT) == \
            DEFAULT_SERVER_ROOT / str(major) / "bin" / tool
    assert clients.missing_server_tools(pitr_drill.SERVER_TOOLS, major,
                                        DEFAULT_SERVER_ROOT) is None


def test_server_binaries_are_of_exactly_the_datas_major(tmp_path: Path) -> None:
    major = _installed_major()
    root = _root_with(tmp_path, major, "postgres")
    assert clients.server_tool("postgres", major, root) == root / str(major) / "bin" / "postgres"
    # A server starts only on its own major's data (and pg_waldump reads only its WAL): an
    # older major's data gets no newer binary, unlike the clients' nearest newer.
    assert clients.server_tool("postgres", major - 1, root) is None
    line = clients.missing_server_tools(pitr_drill.SERVER_TOOLS, major, root)
    assert line is not None and "\n" not in line
    assert f"no PostgreSQL {major} pg_waldump in {root / str(major) / 'bin'}" in line
    assert "postgres and" not in line  # postgres is there
    assert f"install postgresql-{major}" in line and "PG_SERVER_ROOT" in line


def test_no_waldump_of_the_wals_major_means_no_commit_read(tmp_path: Path) -> None:
    major = _installed_major()
    data = tmp_path / "data"
    data.mkdir()
    (data / "PG_VERSION").write_text(f"{major}\n")
    assert waldump_for(data, tmp_path / "empty") is None
    assert waldump_for(data, DEFAULT_SERVER_ROOT) == \
        DEFAULT_SERVER_ROOT / str(major) / "bin" / "pg_waldump"
    assert newest_commit(data, ["000000010000000000000001"], 1, None) is None


def _settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_a_pitr_drill_without_server_binaries_is_skipped_in_one_line_before_recovering(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    major = _installed_major()
    empty = tmp_path / "empty"
    empty.mkdir()
    backup_dir = tmp_path / "backups"
    backup_dir.mkdir()
    # The dump drill before it has connected to the live server: its major is known.
    monkeypatch.setattr(clients, "_server_major", major)
    ctx = JobContext(_settings(DB_BACKUP_DIR=str(backup_dir), WAL_ARCHIVE="on",
                               PG_SERVER_ROOT=str(empty)),
                     JobResult(job="drill", database="postgres"))
    with pytest.raises(JobSkipped) as raised:
        pitr_drill.run(ctx)  # an empty archive: it must stop before looking at it
    message = str(raised.value)
    assert message == (f"PITR drill skipped: no PostgreSQL {major} postgres and pg_waldump in "
                       f"{empty / str(major) / 'bin'}: install postgresql-{major} (the backupd "
                       f"image carries 13 to 17), or set PG_SERVER_ROOT to a directory with "
                       f"{major}/bin/ in it")
    assert not pitr_scratch.scratch_directory(backup_dir).exists()


def test_backupd_drill_without_server_binaries_passes_the_dump_drill_and_says_why_not_pitr(
        tmp_path: Path, small_db: str, backupd_env: Callable[..., dict[str, str]]) -> None:
    major = _installed_major()
    empty = tmp_path / "empty-server-root"
    empty.mkdir()
    env = backupd_env(small_db, WAL_ARCHIVE="on", PG_SERVER_ROOT=str(empty))
    take_backup(env)
    proc = run_backupd(["drill"], env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    finished = jobs_finished(proc.stderr, "drill")[-1]
    assert finished["status"] == "success", finished
    skipped = [w for w in finished["warnings"] if w.startswith("PITR drill skipped")]
    assert skipped == [f"PITR drill skipped: no PostgreSQL {major} postgres and pg_waldump in "
                       f"{empty / str(major) / 'bin'}: install postgresql-{major} (the backupd "
                       f"image carries 13 to 17), or set PG_SERVER_ROOT to a directory with "
                       f"{major}/bin/ in it"]
