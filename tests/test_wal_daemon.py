"""The WAL streamer in the daemon (issue 15): supervision (kill -9 leaves no orphan and no
gap, SIGTERM stops cleanly, a server restart resumes without a gap), one streamer per
archive, the slot's figures in /metrics and /healthz, and bad input refused in one line."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from helpers.cli import BackupdProcess, run_backupd, stop_backupd
from helpers.cluster import PrivateCluster, free_port
from helpers.faults import wait_until
from helpers.metrics import scrape_unlabelled
from helpers.pg import psql
from helpers.wal import (
    STREAM_ONLY,
    archive_holds,
    archived,
    commit_marker,
    committed_segments,
    gaps,
    healthz,
    holds,
    live_partial,
    receivewal_pids,
    switch_wal,
    wait_archived,
    wait_streaming,
    wal_env,
    write_wal,
)

WAL_METRICS = ("backupd_wal_archiving_up", "backupd_wal_receive_lag_seconds",
               "backupd_wal_slot_retained_bytes", "backupd_wal_last_archived_timestamp_seconds")


def all_wal_names(backup_dir: Path) -> list[str]:
    return [w.name for w in archived(backup_dir)]


def test_kill_9_leaves_no_orphan_and_no_gap(
    wal_cluster: PrivateCluster, backup_dir: Path,
    backupd_daemon: Callable[..., BackupdProcess], tmp_path: Path,
) -> None:
    env = wal_env(wal_cluster, backup_dir, **STREAM_ONLY)
    first = backupd_daemon(["run"], env)
    wait_streaming(backup_dir)
    wait_archived(backup_dir, switch_wal(wal_cluster.address, 2))
    assert receivewal_pids(backup_dir)

    first.send_signal(signal.SIGKILL)
    first.wait(10)
    # Process group, PDEATHSIG and the reaper: no pg_receivewal streams on without us.
    wait_until(lambda: not receivewal_pids(backup_dir), 10, "pg_receivewal gone with the daemon")
    # Writing goes on while nobody streams: the slot keeps it for us.
    for _ in range(3):
        write_wal(wal_cluster.address, 512)
        switch_wal(wal_cluster.address)
    marker = "after-the-kill"
    commit_marker(wal_cluster.address, marker)

    backupd_daemon(["run"], env)
    wait_until(lambda: archive_holds(backup_dir, marker, tmp_path / "check"), 60,
               "the restarted daemon streaming what was written while it was down")
    wait_archived(backup_dir, switch_wal(wal_cluster.address))
    names = all_wal_names(backup_dir)
    assert gaps(names) == [], names
    assert len(committed_segments(backup_dir)) >= 6


def test_server_restart_mid_stream_resumes_without_a_gap(
    wal_cluster: PrivateCluster, backup_dir: Path,
    backupd_daemon: Callable[..., BackupdProcess], tmp_path: Path,
) -> None:
    env = wal_env(wal_cluster, backup_dir, **STREAM_ONLY)
    daemon = backupd_daemon(["run"], env)
    wait_streaming(backup_dir)
    write_wal(wal_cluster.address, 512)
    before = switch_wal(wal_cluster.address)
    wait_archived(backup_dir, before)

    wal_cluster.stop("immediate")  # a crash: the next start replays and goes on
    time.sleep(1)
    wal_cluster.start()
    for _ in range(2):
        write_wal(wal_cluster.address, 512)
        switch_wal(wal_cluster.address)
    marker = "after-the-restart"
    commit_marker(wal_cluster.address, marker)
    wait_until(lambda: archive_holds(backup_dir, marker, tmp_path / "check"), 90,
               "streaming resumed after the server restart")
    wait_archived(backup_dir, switch_wal(wal_cluster.address), 60)
    assert gaps(all_wal_names(backup_dir)) == []
    # The interruption was reported (a failed "wal" job), not hidden.
    assert "pg_receivewal stopped" in daemon.read_stderr()
    assert daemon.poll() is None


def test_sigterm_stops_pg_receivewal_cleanly(
    wal_cluster: PrivateCluster, backup_dir: Path,
    backupd_daemon: Callable[..., BackupdProcess], tmp_path: Path,
) -> None:
    daemon = backupd_daemon(["run"], wal_env(wal_cluster, backup_dir, **STREAM_ONLY))
    wait_streaming(backup_dir)
    marker = "before-sigterm"
    commit_marker(wal_cluster.address, marker)
    wait_until(lambda: holds(live_partial(backup_dir), marker), 30, "the row streamed")
    assert stop_backupd(daemon, reap_group=False) == 0, daemon.read_stderr()
    assert not receivewal_pids(backup_dir)
    # Flushed and kept (in the live partial, or committed if its segment completed).
    assert archive_holds(backup_dir, marker, tmp_path / "check")
    slot = psql(wal_cluster.address, "postgres",
                "SELECT active FROM pg_replication_slots").strip()
    assert slot == "f"  # the slot stays, inactive, keeping WAL for the next start


def test_second_daemon_cannot_stream_into_the_same_archive(
    wal_cluster: PrivateCluster, backup_dir: Path, tmp_path: Path,
    backupd_daemon: Callable[..., BackupdProcess],
) -> None:
    env = wal_env(wal_cluster, backup_dir, **STREAM_ONLY)
    first = backupd_daemon(["run"], env)
    wait_streaming(backup_dir)
    # The same archive: the second one stands by, saying why.
    second = backupd_daemon(["run"], env)
    wait_until(lambda: "already streaming WAL into" in second.read_stderr(), 30,
               "the second daemon reporting the first")
    assert len(receivewal_pids(backup_dir)) == 1
    # Another archive of the same cluster: the slot is the first archive's, refused.
    other = tmp_path / "other"
    third = backupd_daemon(["run"], wal_env(wal_cluster, other, **STREAM_ONLY))
    wait_until(lambda: "belongs to another archive" in third.read_stderr(), 30,
               "the third daemon refusing the slot")
    assert not receivewal_pids(other)
    assert first.poll() is None and second.poll() is None


def test_metrics_and_health_go_red_past_the_lag(
    wal_cluster: PrivateCluster, backup_dir: Path,
    backupd_daemon: Callable[..., BackupdProcess],
) -> None:
    port = free_port()
    env = wal_env(wal_cluster, backup_dir, **STREAM_ONLY, HEALTH_PORT=str(port),
                  WAL_MAX_LAG_SECONDS="3")
    daemon = backupd_daemon(["run"], env)
    wait_streaming(backup_dir)
    wait_archived(backup_dir, switch_wal(wal_cluster.address))
    wait_until(lambda: scrape_unlabelled(port).get("backupd_wal_archiving_up") == 1.0, 30,
               "archiving_up 1")
    metrics = scrape_unlabelled(port)
    assert set(WAL_METRICS) <= metrics.keys(), metrics.keys()
    assert metrics["backupd_wal_last_archived_timestamp_seconds"] > time.time() - 120
    # Green once caught up: waited for, not asserted at one instant (under load a sample may
    # catch the receiver a moment behind the server's own writes, checkpoints and all).
    wait_until(lambda: scrape_unlabelled(port)["backupd_wal_receive_lag_seconds"] < 3
               and "WAL archiving" not in healthz(port)[1], 30, "lag below 3 s, health green")

    (receiver,) = receivewal_pids(backup_dir)
    os.kill(receiver, signal.SIGSTOP)  # a stuck receiver: the server writes on
    try:
        write_wal(wal_cluster.address, 64)
        wait_until(lambda: "behind the server" in healthz(port)[1], 30, "health red on lag")
        status, body = healthz(port)
        assert status == 503 and "WAL_MAX_LAG_SECONDS" in body
        metrics = scrape_unlabelled(port)
        assert metrics["backupd_wal_receive_lag_seconds"] > 3
        assert metrics["backupd_wal_slot_retained_bytes"] > 0
    finally:
        os.kill(receiver, signal.SIGCONT)
    wait_until(lambda: "WAL archiving" not in healthz(port)[1], 30, "health back")
    # Streaming down: archiving_up 0 and a reason.
    wal_cluster.stop("fast")
    wait_until(lambda: scrape_unlabelled(port).get("backupd_wal_archiving_up") == 0.0, 30,
               "archiving_up 0")
    assert "pg_receivewal is not streaming" in healthz(port)[1]
    status_env = wal_env(wal_cluster, backup_dir, **STREAM_ONLY)

    def status_says_down() -> bool:
        out = run_backupd(["status"], status_env)
        return "WAL archive: NOT streaming" in out.stdout

    wait_until(status_says_down, 30, "backupd status showing the WAL archive not streaming")
    assert daemon.poll() is None


def test_a_role_without_replication_is_one_line_exit_2(
    wal_cluster: PrivateCluster, backup_dir: Path,
) -> None:
    psql(wal_cluster.address, "postgres",
         "CREATE ROLE plain_reader LOGIN PASSWORD 'reader-pw' NOREPLICATION")
    env = wal_env(wal_cluster, backup_dir, **STREAM_ONLY,
                  POSTGRES_REPLICATION_USER="plain_reader",
                  POSTGRES_REPLICATION_PASSWORD="reader-pw")
    proc = run_backupd(["run"], env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "POSTGRES_REPLICATION_USER" in line and "ALTER ROLE plain_reader REPLICATION" in line
    assert "reader-pw" not in proc.stderr


def test_wal_level_minimal_is_one_line_exit_2(backup_dir: Path) -> None:
    settings = {"wal_level": "minimal", "max_wal_senders": "0"}
    from helpers.cluster import DEFAULT_CLUSTER_PASSWORD

    with PrivateCluster(DEFAULT_CLUSTER_PASSWORD, server_settings=settings) as cluster:
        cluster.start()
        proc = run_backupd(["run"], wal_env(cluster, backup_dir, **STREAM_ONLY), timeout=60)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "wal_level=minimal" in line and "wal_level = replica" in line


def test_an_invalidated_slot_is_reported_recreated_and_streaming_goes_on(
    backup_dir: Path, backupd_daemon: Callable[..., BackupdProcess], tmp_path: Path,
) -> None:
    from helpers.cluster import DEFAULT_CLUSTER_PASSWORD
    from helpers.wal import WAL_SERVER_SETTINGS

    settings = {**WAL_SERVER_SETTINGS, "max_slot_wal_keep_size": "'32MB'",
                "min_wal_size": "'32MB'", "max_wal_size": "'64MB'"}
    with PrivateCluster(DEFAULT_CLUSTER_PASSWORD, server_settings=settings) as cluster:
        cluster.start()
        env = wal_env(cluster, backup_dir, **STREAM_ONLY)
        first = backupd_daemon(["run"], env)
        wait_streaming(backup_dir)
        commit_marker(cluster.address, "before-the-slot-is-lost")
        wait_until(lambda: holds(live_partial(backup_dir), "before-the-slot-is-lost"), 30,
                   "a partial holding WAL in the spool")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        wait_until(lambda: not receivewal_pids(backup_dir), 10, "pg_receivewal gone")
        # Far more WAL than max_slot_wal_keep_size while nobody streams, then a checkpoint:
        # the server invalidates the slot (wal_status = lost) and removes that WAL.
        for _ in range(6):
            write_wal(cluster.address, 12 * 1024)
            switch_wal(cluster.address)
        psql(cluster.address, "postgres", "CHECKPOINT")
        assert psql(cluster.address, "postgres",
                    "SELECT wal_status FROM pg_replication_slots").strip() == "lost"

        second = backupd_daemon(["run"], env)
        # Reported as a failed "wal" result to every notifier, naming what to do.
        wait_until(lambda: "a new base backup is needed" in second.read_stderr(), 60,
                   "the lost slot reported")
        assert "was invalidated by the server" in second.read_stderr()
        marker = "after-the-new-slot"
        commit_marker(cluster.address, marker)
        wait_until(lambda: archive_holds(backup_dir, marker, tmp_path / "check"), 60,
                   "streaming again through the recreated slot")
        # The server had removed the WAL after the spool's: the spool's partial was kept in
        # the archive and streaming started over from the new slot.
        assert "streaming restarts from the replication slot" in second.read_stderr()
        assert archive_holds(backup_dir, "before-the-slot-is-lost", tmp_path / "check")
        state = psql(cluster.address, "postgres",
                     "SELECT wal_status, active FROM pg_replication_slots").strip()
        assert state.split("|")[0] in ("reserved", "extended") and state.endswith("t"), state
        assert second.poll() is None


def test_a_new_timeline_is_followed_and_its_history_archived(
    wal_cluster: PrivateCluster, backup_dir: Path,
    backupd_daemon: Callable[..., BackupdProcess], tmp_path: Path,
) -> None:
    daemon = backupd_daemon(["run"], wal_env(wal_cluster, backup_dir, **STREAM_ONLY))
    wait_streaming(backup_dir)
    wait_archived(backup_dir, switch_wal(wal_cluster.address))
    # The server restarts as a standby of nobody and is promoted: timeline 2 (what a
    # failover looks like to the archive, on the same cluster and slot).
    wal_cluster.restart_on_a_new_timeline()
    marker = "on-timeline-two"
    commit_marker(wal_cluster.address, marker)
    last = switch_wal(wal_cluster.address)
    assert last.startswith("00000002")
    wait_archived(backup_dir, last, 90)
    names = [w.name for w in archived(backup_dir)]
    assert "00000002.history" in names, names
    assert gaps(names) == [], names
    assert archive_holds(backup_dir, marker, tmp_path / "check")
    assert daemon.poll() is None


def test_after_a_recovery_to_an_earlier_moment_the_new_timeline_is_archived(
    wal_cluster: PrivateCluster, backup_dir: Path,
    backupd_daemon: Callable[..., BackupdProcess], tmp_path: Path,
) -> None:
    """The recover-to-a-time runbook: the server comes back on a new timeline that forks
    before the spool's live .partial of the old one. pg_receivewal cannot resume from that
    .partial ("... on timeline 1 is not in this server's history"); the partial is kept in
    the archive and streaming restarts from the slot, on the new timeline."""
    daemon = backupd_daemon(["run"], wal_env(wal_cluster, backup_dir, **STREAM_ONLY))
    wait_streaming(backup_dir)  # the slot exists: the copy below has it too
    wal_cluster.stop()
    earlier = wal_cluster.copy_data("data-earlier")
    wal_cluster.start()
    wait_archived(backup_dir, switch_wal(wal_cluster.address, 2))
    abandoned = "in-the-abandoned-partial"
    commit_marker(wal_cluster.address, abandoned)
    wait_until(lambda: holds(live_partial(backup_dir), abandoned), 60,
               "the old timeline's commit in the spool's .partial")

    wal_cluster.promote_copy(earlier)  # the daemon streams on, unaware
    marker = "on-the-new-timeline"
    commit_marker(wal_cluster.address, marker)
    last = switch_wal(wal_cluster.address)
    assert last.startswith("00000002")
    wait_archived(backup_dir, last, 120)
    names = all_wal_names(backup_dir)
    assert "00000002.history" in names, names
    assert archive_holds(backup_dir, marker, tmp_path / "check")
    # The abandoned history is kept, never deleted with the spool.
    assert archive_holds(backup_dir, abandoned, tmp_path / "check")
    stderr = daemon.read_stderr()
    assert "is not in this server's history" in stderr
    assert "streaming restarts from the replication slot" in stderr
    assert daemon.poll() is None


# pg_receivewal's own error lines (PostgreSQL 15), as the daemon logged them.
_FORKED = ('pg_receivewal: error: could not send replication command "START_REPLICATION": '
           "ERROR:  requested starting point 0/3000000 on timeline 1 is not in this server's "
           "history")
_UNKNOWN_TIMELINE = ('pg_receivewal: error: could not send replication command '
                     '"START_REPLICATION": ERROR:  requested timeline 3 is not in this '
                     "server's history")
_REMOVED = ('pg_receivewal: error: unexpected termination of replication stream: ERROR:  '
            "requested WAL segment 000000010000000000000004 has already been removed")
_RESTARTED = "pg_receivewal: error: replication stream was terminated before stop point"


def test_the_receiver_restarts_from_the_slot_only_when_the_spools_position_is_gone() -> None:
    from backupd.archive.receiver import SpoolPositionGone, spool_position_gone

    assert spool_position_gone(_FORKED) is SpoolPositionGone.NOT_IN_HISTORY
    assert spool_position_gone(_UNKNOWN_TIMELINE) is SpoolPositionGone.NOT_IN_HISTORY
    assert spool_position_gone(_REMOVED) is SpoolPositionGone.REMOVED
    # A server restart: pg_receivewal resumes from its partial, which must stay.
    assert spool_position_gone(_RESTARTED) is None
