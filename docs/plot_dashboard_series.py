"""Plot the dashboard's series from a real run: what config/grafana/backupd-dashboard.json
shows, where Grafana cannot run (the picture in docs/operations.md).

It creates two scratch databases, runs `backupd run` on them (backups every 30 s, a restore
drill every minute, both databases in one sidecar), grows the databases between backups,
scrapes /metrics every few seconds, and plots by database: the age of the newest verified
backup, its size, the backup's duration and the drill's restore time (RTO). It drops its
databases and removes its backup directory at the end.

matplotlib is not a dependency of backupd; install it for this script only:

    .venv/bin/pip install matplotlib
    .venv/bin/python docs/plot_dashboard_series.py --minutes 5

(it writes docs/images/dashboard-series.png; --out elsewhere).

PostgreSQL is reached as PGHOST/PGPORT/PGUSER/PGPASSWORD say (default 127.0.0.1:5432,
user postgres); the role must be able to create databases.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import psycopg
from prometheus_client.parser import text_string_to_metric_families

# (metric, extra labels it must carry, panel title, unit)
PANELS = (
    ("backupd_newest_verified_backup_age_seconds", {}, "Age of the newest verified backup", "s"),
    ("backupd_newest_verified_backup_size_bytes", {}, "Size of the newest verified backup",
     "KiB"),
    ("backupd_job_last_duration_seconds", {"job": "backup"}, "Backup duration", "s"),
    ("backupd_drill_last_restore_seconds", {}, "Restore drill: restore time (RTO)", "s"),
)
Series = dict[tuple[str, str], list[tuple[float, float]]]  # (metric, database) -> points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="how long the daemon runs")
    parser.add_argument("--scrape-seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("docs/images/dashboard-series.png"))
    args = parser.parse_args()
    server = {"host": os.environ.get("PGHOST", "127.0.0.1"),
              "port": int(os.environ.get("PGPORT", "5432")),
              "user": os.environ.get("PGUSER", "postgres"),
              "password": os.environ.get("PGPASSWORD", "")}
    tag = f"backupd_plot_{os.getpid()}"
    databases = {f"{tag}_app": 40_000, f"{tag}_billing": 12_000}  # rows added per step
    workdir = Path(tempfile.mkdtemp(prefix="backupd-plot-"))
    try:
        for name in databases:
            _admin(server, f'CREATE DATABASE "{name}"')
            _grow(server, name, databases[name] * 3)
        series = _run_and_scrape(server, databases, workdir, args.minutes, args.scrape_seconds)
    finally:
        for name in databases:
            _admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(workdir, ignore_errors=True)
    _plot(series, tag, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")


def _admin(server: dict[str, object], statement: str) -> None:
    with psycopg.connect(dbname="postgres", autocommit=True, **server) as conn:  # type: ignore[arg-type]
        conn.execute(statement)  # type: ignore[arg-type]


def _grow(server: dict[str, object], database: str, rows: int) -> None:
    with psycopg.connect(dbname=database, autocommit=True, **server) as conn:  # type: ignore[arg-type]
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id bigserial PRIMARY KEY, "
                     "placed timestamptz DEFAULT now(), note text)")
        conn.execute("INSERT INTO orders (note) SELECT md5(random()::text) || g::text "
                     "FROM generate_series(1, %s) g", (rows,))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run_and_scrape(server: dict[str, object], databases: dict[str, int], workdir: Path,
                    minutes: float, every: float) -> Series:
    port = _free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir),
           "LANG": "C.UTF-8", "POSTGRES_HOST": str(server["host"]),
           "POSTGRES_PORT": str(server["port"]), "POSTGRES_USER": str(server["user"]),
           "POSTGRES_PASSWORD": str(server["password"]) or "unused",
           "POSTGRES_DB": ",".join(databases), "DB_BACKUP_DIR": str(workdir / "backups"),
           "HEALTH_PORT": str(port), "BACKUPD_LOG_FORMAT": "json",
           "SCHEDULE_SECONDS_FIELD": "1", "BACKUP_SCHEDULE": "*/30 * * * * *",
           "DRILL_SCHEDULE": "15 * * * * *"}
    log = (workdir / "daemon.log").open("w")
    daemon = subprocess.Popen([sys.executable, "-m", "backupd", "run"], env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    series: Series = defaultdict(list)
    started = time.monotonic()
    backups_seen = 0
    try:
        while time.monotonic() - started < minutes * 60:
            time.sleep(every)
            elapsed = (time.monotonic() - started) / 60
            samples = _scrape(port)
            for metric, labels, _, _ in PANELS:
                for (name, sample_labels), value in samples.items():
                    labelled = dict(sample_labels)
                    if name == metric and labelled.get("database") in databases and all(
                            labelled.get(k) == v for k, v in labels.items()):
                        series[(metric, labelled["database"])].append((elapsed, value))
            # Grow each database after each of its backups, so sizes change run to run.
            done = _backups_finished(workdir / "daemon.log")
            if done > backups_seen:
                backups_seen = done
                for name, rows in databases.items():
                    _grow(server, name, rows)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        log.close()
    outcomes = [(e.get("job"), e.get("status"), e.get("error"))
                for e in _events(workdir / "daemon.log") if e.get("event") == "job finished"]
    for job, status, error in outcomes:
        print(f"{job}: {status}" + (f" ({error})" if error else ""))
    return series


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return {}  # not listening yet
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _events(log: Path) -> list[dict[str, object]]:
    events = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _backups_finished(log: Path) -> int:
    """Backup runs done (the run's summary names every database, comma-separated)."""
    return sum(1 for e in _events(log) if e.get("event") == "job finished"
               and e.get("job") == "backup" and "," in str(e.get("database")))


def _plot(series: Series, tag: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(10, 6.2), dpi=80, sharex=True)
    for axis, (metric, _, title, unit) in zip(axes.flat, PANELS, strict=True):
        for (name, database), points in sorted(series.items()):
            if name != metric:
                continue
            xs = [x for x, _ in points]
            ys = [y / 1024 if unit == "KiB" else y for _, y in points]
            axis.plot(xs, ys, drawstyle="steps-post", label=database.removeprefix(f"{tag}_"))
        axis.set_title(f"{title}\n{metric}", fontsize=9)
        axis.set_ylabel(unit)
        axis.grid(alpha=0.3)
        axis.legend(title="database", fontsize=8, title_fontsize=8)
    for axis in axes[1]:
        axis.set_xlabel("minutes")
    figure.suptitle("backupd /metrics scraped from a test run: one sidecar, two databases",
                    fontsize=11)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)


if __name__ == "__main__":
    main()
