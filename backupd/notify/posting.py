"""One HTTP POST with bounded retries: what the heartbeat and the webhook share.

Retries connection errors, timeouts, 408/425/429 and 5xx (honouring Retry-After), all inside
one Deadline; any other answer is final. Failures come back as one redacted line.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Mapping

from backupd.log import redact
from backupd.notify.deadline import Deadline, retry_after_seconds

MAX_ATTEMPTS = 3
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def post(url: str, body: bytes, headers: Mapping[str, str], deadline: Deadline) -> str | None:
    """POST ``body``; None once accepted (2xx/3xx), else why not (redacted, one line)."""
    problem = "no attempt made"
    for attempt in range(MAX_ATTEMPTS):
        wait = 0.5 * 2**attempt
        try:
            request = urllib.request.Request(  # noqa: S310 -- scheme checked in checked_url
                url, data=body, method="POST", headers=dict(headers))
            with urllib.request.urlopen(  # noqa: S310
                request, timeout=deadline.attempt_timeout()
            ) as response:
                response.read(1024)
            return None
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code}"
            if exc.code not in RETRY_STATUSES:
                break
            advised = retry_after_seconds(dict(exc.headers.items())) if exc.headers else None
            wait = advised if advised is not None else wait
        except (urllib.error.URLError, OSError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if attempt + 1 == MAX_ATTEMPTS or not deadline.allows(wait):
            break
        time.sleep(wait)
    return redact(problem)
