"""What a daemon's /metrics serves, parsed with prometheus_client's own parser (never by
hand): every sample keyed by its name and its sorted labels."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_samples(text: str) -> Samples:
    """(sample name, sorted labels) -> value, for every sample of an exposition ``text``."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def scrape(port: int) -> Samples:
    """Every series /metrics on ``port`` serves."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return parse_samples(response.read().decode())


def scrape_unlabelled(port: int) -> dict[str, float]:
    """The samples without labels, by name (a daemon's own gauges, such as backupd_wal_*)."""
    return {name: value for (name, labels), value in scrape(port).items() if not labels}
