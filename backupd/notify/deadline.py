"""A time budget shared by every attempt of one delivery, so retries never outlast it.

The chain already abandons a notifier after NOTIFY_TIMEOUT_SECONDS; the notifiers
stay inside a slightly smaller budget themselves so that they give up cleanly, with
their own error message, instead of being left running in a background thread.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from backupd.errors import ConfigError
from backupd.log import redact

# Below this many seconds a new attempt cannot finish anyway: give up instead.
MIN_ATTEMPT_SECONDS = 0.5
# Share of NOTIFY_TIMEOUT_SECONDS a notifier allows itself (the chain's hard limit is 100%).
BUDGET_SHARE = 0.9


class Deadline:
    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def allows(self, wait_seconds: float) -> bool:
        """Whether waiting ``wait_seconds`` still leaves time for a useful attempt."""
        return self.remaining() - wait_seconds >= MIN_ATTEMPT_SECONDS

    def attempt_timeout(self) -> float:
        """The socket timeout for the next attempt: whatever is left, but never zero."""
        return max(MIN_ATTEMPT_SECONDS, self.remaining())


def retry_after_seconds(headers: Mapping[str, str | Sequence[str]]) -> float | None:
    """The Retry-After header in seconds (the delta-seconds form), or None if absent/unusable."""
    for key, value in headers.items():
        if key.lower() != "retry-after":
            continue
        text = value if isinstance(value, str) else (value[0] if value else "")
        try:
            seconds = float(text.strip())
        except ValueError:
            return None  # an HTTP-date: rare for webhooks; treat as "no advice"
        return max(0.0, seconds)
    return None


def checked_url(url: str, setting: str) -> str:
    """An http(s) URL, registered with the redactor; anything else is a ConfigError. Blanks
    around it (a pasted value, a YAML line's trailing space) are dropped: left in, they would
    end up inside the ping's path (`/start` after a space fails only when it is sent)."""
    register_secret_url(url)
    url = url.strip()
    register_secret_url(url)
    if any(char.isspace() or not char.isprintable() for char in url):
        raise ConfigError(f"{setting}: the URL holds a space or a control character; fix the "
                          "environment variable")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{setting}: must be an http:// or https:// URL; fix the environment "
                          "variable (or unset it to turn this notifier off)")
    return url


def register_secret_url(url: str) -> None:
    """Mask a webhook/ping URL everywhere, and its path on its own."""
    redact.add(url)
    # The path of a webhook or ping URL is the credential (Slack's /services/T/B/secret,
    # healthchecks' /<uuid>); mask it alone too, in case a library prints only the path.
    path = urlsplit(url).path
    if len(path) >= 8:
        redact.add(path)
