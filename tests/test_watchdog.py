"""The watchdog's rules on their own (no server): when it stops a job, what it says, and when
it holds back. Short limits, with every wait bounded generously rather than timed."""

from __future__ import annotations

import threading
import time

from backupd.cancel import CancelToken
from backupd.postgres.waits import shown_query
from backupd.progress import Progress
from backupd.settings import Settings
from backupd.watchdog import ServerView, Watchdog, WatchdogConfig

STALL = WatchdogConfig(stall_seconds=0.3)
GENEROUS = 30.0


def test_a_stall_cancels_as_a_failure_naming_the_stream_and_the_servers_answer() -> None:
    token = CancelToken()
    with token.progress.stream("pg_dump output") as stream, \
            Watchdog(token, STALL, lambda: ServerView("", "backend pid 7 waits for a lock")):
        stream.moved(2048)
        assert token.wait(GENEROUS)
    assert token.failure and token.reason is not None
    assert token.reason.startswith("stalled: no data moved for ")
    assert "pg_dump output (2.0 KiB so far)" in token.reason
    assert "backend pid 7 waits for a lock" in token.reason


def test_work_the_server_reports_holds_the_watchdog_back_until_it_stops_changing() -> None:
    answers = iter(["copy 1", "copy 2", "copy 2"])
    asked: list[str] = []

    def probe() -> ServerView:
        asked.append(next(answers))
        return ServerView(asked[-1], None)

    token = CancelToken()
    with Watchdog(token, STALL, probe):
        assert token.wait(GENEROUS)
    assert asked == ["copy 1", "copy 2", "copy 2"]
    assert token.reason is not None and "no data stream" in token.reason


def test_a_nested_job_judges_its_own_stalls() -> None:
    token = CancelToken()
    inner = token.child()
    with Watchdog(token, STALL, lambda: ServerView("", None)):
        assert not token.wait(STALL.stall_seconds * 5)  # the outer one holds back
        inner.release()
        assert token.wait(GENEROUS)  # and judges again once the nested job is done
    assert token.failure


def test_the_job_timeout_stops_a_job_that_keeps_moving() -> None:
    token = CancelToken()
    config = WatchdogConfig(stall_seconds=600, job_timeout_seconds=0.5)
    with token.progress.stream("S3 upload") as stream, \
            Watchdog(token, config, lambda: ServerView("", None)):
        deadline = time.monotonic() + GENEROUS
        while not token.cancelled and time.monotonic() < deadline:
            stream.moved(1)
            time.sleep(0.01)
    assert token.failure and token.reason is not None
    assert token.reason.startswith("job timeout: the job ran for ")
    assert "DB_BACKUP_JOB_TIMEOUT_SECONDS=0.5" in token.reason and "S3 upload" in token.reason


def test_off_means_no_thread_and_no_cancel() -> None:
    token = CancelToken()
    with Watchdog(token, WatchdogConfig(), lambda: ServerView("", None)):
        assert "watchdog" not in {thread.name for thread in threading.enumerate()}
    assert not token.cancelled


def test_a_statement_holding_a_password_is_never_quoted() -> None:
    statement = "ALTER ROLE app WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$abc'"
    assert shown_query(statement) == "ALTER ROLE ..."
    assert shown_query("COPY public.big (id) TO stdout;") == "COPY public.big (id) TO stdout;"


def own_server(progress: Progress) -> list[str]:
    return [place.database for place in progress.places() if place.server is None]


def test_the_databases_a_job_works_in_reach_the_job_that_contains_it() -> None:
    """A scratch database named by a nested job's progress is its containing job's too: the
    work the server shows there never counts as no one's."""
    token = CancelToken()
    inner = token.child()
    inner.progress.working_in("db__restoring_1")
    inner.progress.working_in("db__restoring_1")
    token.progress.working_in("other")
    assert own_server(inner.progress) == ["db__restoring_1"]
    assert own_server(token.progress) == ["db__restoring_1", "other"]
    drill_server = Settings(_env_file=None, POSTGRES_HOST="drill.example",  # type: ignore[call-arg]
                            DB_BACKUP_DIR="/nonexistent/backupd-test")
    inner.progress.working_in("db", drill_server)
    inner.progress.working_in("db", drill_server)
    assert own_server(token.progress) == ["db__restoring_1", "other"]
    assert [(p.database, p.server is drill_server) for p in token.progress.places()] == [
        ("db__restoring_1", False), ("other", False), ("db", True)]
