"""What a job reports when it was cancelled while it failed (job._body_or_verdict): only an
error a cancel causes (a severed connection, a broken pipe, a cancelled transfer) becomes
'cancelled', and then its traceback is still logged; a bug that was already on its way out
when the cancel came stays the failure it is.

In-process run_job on a real database; the log is backupd's own JSON lines on stderr."""

from __future__ import annotations

import pytest
from helpers.logs import log_events

from backupd.cancel import CancelToken
from backupd.commands import backup as backup_cmd
from backupd.job import JobContext, run_job
from backupd.log import configure_logging
from backupd.notify.base import NotifierChain
from backupd.result import Status
from backupd.settings import load_settings


def test_a_bug_still_unwinding_when_the_cancel_comes_is_a_failure_with_its_traceback(
    env: dict[str, str], capsys: pytest.CaptureFixture[str],
) -> None:
    """The reviewer's case: the body raises, and the cancel comes while it unwinds (in
    its cleanup: no timer to race, on however busy a machine). The KeyError is not the
    cancel's doing."""
    configure_logging("json")
    cancel = CancelToken()

    def body(_ctx: JobContext) -> None:
        empty: dict[str, int] = {}
        try:
            empty["bug"]  # the bug under test
        finally:
            cancel.cancel("cancelled by SIGTERM")

    result = run_job("backup", load_settings(**env), body, NotifierChain([]), cancel)

    assert cancel.cancelled
    assert result.status is Status.FAILED, result.summary()
    assert result.error == "internal error: KeyError: 'bug'", result.summary()
    [logged] = [event for event in log_events(capsys.readouterr().err)
                if event.get("event") == "unexpected error"]
    assert "Traceback" in logged["exception"] and "KeyError: 'bug'" in logged["exception"]


def test_an_error_the_cancel_caused_is_cancelled_and_its_traceback_logged_as_a_warning(
    env: dict[str, str], capsys: pytest.CaptureFixture[str],
) -> None:
    """A backup whose connection the cancel severed: 'cancelled', and what the stage hit is
    logged, traceback and all, at warning (a conversion that hid a bug would show there)."""
    configure_logging("json")
    cancel = CancelToken()
    cancel.cancel("cancelled by SIGTERM")
    result = run_job("backup", load_settings(**env),
                     lambda ctx: backup_cmd.run(ctx, apply_retention=False),
                     NotifierChain([]), cancel)

    assert result.status is Status.CANCELLED, result.summary()
    assert result.error == "cancelled by SIGTERM", result.summary()
    assert result.exit_code == 1
    [logged] = [event for event in log_events(capsys.readouterr().err)
                if event.get("event") == "the cancel interrupted the job"]
    assert logged["level"] == "warning", logged
    assert "Traceback" in logged["exception"], logged
    assert "OperationalError" in logged["exception"], logged
