"""Notifiers: every job result goes through the chain built here (log files, structured
logs, metrics, heartbeat, Slack, the generic webhook)."""

from __future__ import annotations

from backupd.notify.base import Notifier, NotifierChain
from backupd.notify.logfile import LogFileNotifier, StructuredLogNotifier
from backupd.settings import Settings

# The network notifiers and metrics import slack_sdk / prometheus_client: only when asked for.


def build_chain(settings: Settings, *extra: Notifier, log_results: bool = True,
                recorder: Notifier | None = None, metrics: bool = True) -> NotifierChain:
    """The notifiers the settings ask for, in delivery order; ``extra`` go last.

    ``recorder`` writes the result into the state file (the daemon's DaemonState, or a
    one-off command's ResultRecorder); it comes right after the log file, so both files
    hold the result before anyone is told the job finished.

    ``log_results=False`` leaves out the structured "job finished" line: a one-off command
    on a terminal prints its own one-line outcome instead.

    ``metrics=False`` leaves out the Prometheus registry: a one-off command's process ends
    with its job, so nothing would ever scrape it (the daemon's /metrics computes the store's
    gauges from the manifests at each scrape, and seeds the job gauges from the state file
    that one-off commands record into). It saves importing prometheus_client (~50 ms) before
    pg_dump starts.
    """
    # The job's log file first: whoever sees the "job finished" record can read the file.
    notifiers: list[Notifier] = [LogFileNotifier(settings.backup_dir)]
    if recorder is not None:
        notifiers.append(recorder)
    if log_results:
        notifiers.append(StructuredLogNotifier())
    # Local, instant notifiers first; network ones after, each bounded by the chain's timeout.
    if metrics and settings.health_port:
        from backupd.notify.metrics import MetricsNotifier, shared_metrics

        notifiers.append(MetricsNotifier(shared_metrics(settings)))
    if settings.heartbeat_url is not None:
        from backupd.notify.deadline import checked_url
        from backupd.notify.heartbeat import HeartbeatNotifier

        url = checked_url(settings.heartbeat_url.get_secret_value(), "HEARTBEAT_URL")
        notifiers.append(HeartbeatNotifier(url, timeout_seconds=settings.notify_timeout_seconds,
                                           style=settings.heartbeat_style))
    if settings.slack_webhook_url is not None:
        from backupd.notify.deadline import checked_url
        from backupd.notify.slack import SlackNotifier

        url = checked_url(settings.slack_webhook_url.get_secret_value(), "SLACK_WEBHOOK_URL")
        notifiers.append(SlackNotifier(url, notify_on=settings.slack_notify_on,
                                       timeout_seconds=settings.notify_timeout_seconds,
                                       state_dir=settings.backup_dir))
    if settings.webhook_url is not None:
        from backupd.notify.deadline import checked_url
        from backupd.notify.webhook import WebhookNotifier

        url = checked_url(settings.webhook_url.get_secret_value(), "WEBHOOK_URL")
        secret = settings.webhook_secret
        notifiers.append(WebhookNotifier(url, secret=secret.get_secret_value() if secret else None,
                                         timeout_seconds=settings.notify_timeout_seconds))
    notifiers.extend(extra)
    return NotifierChain(notifiers, timeout_seconds=settings.notify_timeout_seconds)


__all__ = ["Notifier", "NotifierChain", "build_chain"]
