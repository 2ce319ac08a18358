"""Issue 18's figures: every ratio against its goal from one run of bench/run.py, and the cost
curve (``--curve``): backup, verify and restore at growing scales, in MB/s of SQL and peak RSS,
written as a table and a plot (matplotlib, for the bench only: ``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness import (
    BACKUPD,
    PREFIX,
    Run,
    Server,
    backupd_env,
    cpu_bound_job,
    loaded_database,
    mib,
    timed,
)

CURVE_SCALES = (1, 10, 50)
CURVE_LARGEST = 200  # ~2 GB of SQL: only with --curve-200
DEFAULT_PLOT = Path(__file__).resolve().parents[1] / "docs" / "performance-curve.png"


@dataclass(frozen=True)
class Target:
    what: str
    measured: float
    goal: float | None  # at most this; None: reported only
    unit: str = "x"

    def row(self) -> str:
        shown = (f"{self.measured:.2f}x" if self.unit == "x"
                 else f"{self.measured / 2**20:.0f} MiB")
        if self.goal is None:
            return f"| {self.what} | {shown} | | |"
        goal = f"<= {self.goal:.2f}x" if self.unit == "x" else f"< {self.goal / 1e6:.0f} MB"
        met = self.measured <= self.goal if self.unit == "x" else self.measured < self.goal
        return f"| {self.what} | {shown} | {goal} | {'met' if met else '**missed**'} |"


def targets_table(targets: list[Target]) -> list[str]:
    return ["### Against the goals of issue 18 (this run)", "",
            "| ratio | measured | goal | |", "|---|---:|---:|---|",
            *(t.row() for t in targets), ""]


@contextlib.contextmanager
def cpu_hog(on: bool) -> Iterator[str]:
    """One CPU-bound job beside the bench, in a session of its own (``harness.cpu_bound_job``)."""
    if not on:
        yield ""
        return
    with cpu_bound_job(own_session=True) as job:
        yield f", beside {job}"


# --- the cost curve -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Point:
    scale: int
    sql_bytes: int
    backup: Run
    verify: Run
    restore: Run
    floor: Run  # pg_dump > /dev/null, right before the backup

    def rate(self, run: Run) -> float:
        return self.sql_bytes / 1e6 / run.seconds


def curve(args: argparse.Namespace) -> list[str]:
    chosen = [int(n) for n in args.curve_scales.split(",")] if args.curve_scales else CURVE_SCALES
    scales = [*chosen, *([CURVE_LARGEST] if args.curve_200 else [])]
    server = Server()
    work = Path(tempfile.mkdtemp(prefix="backupd-curve-", dir=args.workdir))
    points: list[Point] = []
    try:
        for scale in scales:
            points.append(_point(server, work, scale, args.fixture))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        server.drop(f"{PREFIX}_curve_restore")
    lines = ["## The cost curve (default backup: plain gzip; one run per scale)", "",
             "| scale | SQL | backup s | backup MB/s | backup RSS | verify s | verify MB/s | "
             "verify RSS | restore s | restore MB/s | restore RSS | floor s | backup/floor |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in points:
        lines.append(
            f"| {p.scale} | {p.sql_bytes / 2**20:.0f} MiB | "
            + " | ".join(f"{run.seconds:.2f} | {p.rate(run):.0f} | {mib(run.peak_rss)}"
                         for run in (p.backup, p.verify, p.restore))
            + f" | {p.floor.seconds:.2f} | {p.backup.seconds / p.floor.seconds:.2f}x |")
    lines += ["", "MB/s: megabytes (10^6) of pg_dump's SQL per second of wall time. floor: "
              "`pg_dump > /dev/null` of the same database, timed right before the backup (what "
              "is left of the ratio at a large scale is not start-up).", ""]
    plot = _plot(points, args.plot)
    if plot is not None:
        lines += [f"Plot: `{plot}`", ""]
    return lines


def _point(server: Server, work: Path, scale: int, fixture: Path) -> Point:
    directory = work / f"curve{scale}"
    target = f"{PREFIX}_curve_restore"
    with loaded_database(server, scale, fixture) as source:
        env = backupd_env(server, source, directory)
        floor = timed("pg_dump > /dev/null", server.env(source), False)
        backup = timed([*BACKUPD, "backup", "--no-prune"], env, True)
        name = next(p.name for p in directory.iterdir() if p.name.endswith(".sql.gz"))
        manifest = json.loads((directory / f"{name}.manifest.json").read_text())
        verify = timed([*BACKUPD, "verify", name], env, True)
        server.drop(target)
        restore = timed([*BACKUPD, "restore", "--yes", "--target-db", target, name], env, True)
        server.drop(target)
    shutil.rmtree(directory, ignore_errors=True)
    point = Point(scale, int(manifest["raw_bytes"]), backup, verify, restore, floor)
    print(f"bench: curve scale {scale}: floor {floor.seconds:.2f}s, backup {backup.seconds:.2f}s, "
          f"verify {verify.seconds:.2f}s, restore {restore.seconds:.2f}s", flush=True)
    return point


def _plot(points: list[Point], out: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib is not installed (pip install matplotlib): no plot",
              flush=True)
        return None
    sizes = [p.sql_bytes / 2**20 for p in points]
    figure, (seconds, rss) = plt.subplots(1, 2, figsize=(10, 4))
    for label, pick in (("backup", lambda p: p.backup), ("verify", lambda p: p.verify),
                        ("restore", lambda p: p.restore)):
        seconds.plot(sizes, [pick(p).seconds for p in points], marker="o", label=label)
        rss.plot(sizes, [(pick(p).peak_rss or 0) / 2**20 for p in points], marker="o",
                 label=label)
    seconds.set(xlabel="MiB of SQL", ylabel="seconds", title="Time against size")
    rss.set(xlabel="MiB of SQL", ylabel="peak RSS of backupd (MiB)",
            title="Memory against size", ylim=(0, 120))
    rss.axhline(100e6 / 2**20, color="grey", linestyle="--", linewidth=1)
    for axes in (seconds, rss):
        axes.legend()
        axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
