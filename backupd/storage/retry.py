"""Whole-operation retries for a remote repository, bounded in attempts and in time."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from backupd.cancel import CancelToken
from backupd.errors import OffsiteError

T = TypeVar("T")
# On top of botocore's per-request retries: a multipart upload that failed as a whole is
# restarted at most this often within one run.
MAX_ATTEMPTS = 3


def with_retries(action: Callable[[], T], *, budget_seconds: float,
                 cancel: CancelToken | None = None) -> T:
    """Run ``action``, retrying OffsiteError with exponential backoff. The budget (counted
    from the first attempt) keeps a run from hanging on an outage; the next run tries again."""

    token = cancel or CancelToken()

    def sleep(seconds: float) -> None:
        token.wait(seconds)  # a shutdown ends the wait at once
        token.raise_if_cancelled()

    retrying = Retrying(
        stop=stop_after_attempt(MAX_ATTEMPTS) | stop_after_delay(budget_seconds),
        wait=wait_exponential(multiplier=1, min=1, max=30),
        retry=retry_if_exception_type(OffsiteError),
        sleep=sleep,
        reraise=True,
    )
    return retrying(action)

