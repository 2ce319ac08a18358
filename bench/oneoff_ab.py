"""A/B of one-off `backupd backup` runs against the floor `pg_dump > /dev/null`.

Each round runs the floor and every checkout's one-off backup once, the floor included in the
order, which is reversed every other round. It prints each contender's median and range, the
ratio of medians to the floor's, and the median of the rounds' own ratios (each backup against
its own round's floor, which a slow drift of the machine moves less).

    .venv/bin/python bench/oneoff_ab.py --rounds 9                       # this checkout
    .venv/bin/python bench/oneoff_ab.py /path/to/a /path/to/b --hog own-session
    .venv/bin/python bench/oneoff_ab.py --database mydb --rounds 9      # an already loaded one

A checkout is a directory holding the ``backupd`` package. Each runs with it first on
``sys.path`` (``PYTHONPATH``, from a working directory of the bench's own) and with this
interpreter's libraries; the script checks, before it times anything, that each checkout's
package is the one imported. ``--hog`` runs one CPU-bound job beside the rounds, in a session
of its own (as another job on the host would be, and as ``bench/run.py --cpu-hog`` does) or in
the bench's session (as the bench did before issue 18's seventh round). Where the kernel
groups tasks by session, the two give different figures: see docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from harness import (
    BACKUPD,
    DEFAULT_FIXTURE,
    REPO,
    Server,
    backupd_env,
    compile_bytecode,
    cpu_bound_job,
    loaded_database,
    stop_on_sigterm,
    timed,
)

HOG_PLACES = ("none", "own-session", "bench-session")


@contextlib.contextmanager
def hog(place: str) -> Iterator[None]:
    if place == "none":
        yield
        return
    with cpu_bound_job(own_session=place == "own-session"):
        time.sleep(1)  # running before the first round
        yield


@contextlib.contextmanager
def source_database(server: Server, name: str | None, scale: int,
                    fixture: Path) -> Iterator[str]:
    if name is not None:
        yield name
    else:
        with loaded_database(server, scale, fixture) as loaded:
            yield loaded


def imported_from(checkout: Path, server: Server, work: Path) -> Path:
    """Where ``backupd`` is imported from when run as a checkout's contender."""
    env = backupd_env(server, "postgres", work, PYTHONPATH=str(checkout))
    found = subprocess.run([sys.executable, "-c", "import backupd; print(backupd.__file__)"],
                           env=env, cwd=work, capture_output=True, text=True, check=True)
    return Path(found.stdout.strip()).resolve().parent.parent


def rounds(server: Server, database: str, checkouts: list[Path], count: int,
           work: Path) -> tuple[list[float], dict[Path, list[float]]]:
    floor: list[float] = []
    times: dict[Path, list[float]] = {checkout: [] for checkout in checkouts}
    contenders: list[Path | None] = [None, *checkouts]  # None: the floor
    for number in range(count):
        for contender in contenders if number % 2 == 0 else contenders[::-1]:
            if contender is None:
                floor.append(timed("pg_dump > /dev/null", server.env(database), False,
                                   work).seconds)
                continue
            directory = work / "backups"
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            env = backupd_env(server, database, directory, PYTHONPATH=str(contender))
            # From a working directory of our own: `python -m` puts it first on sys.path.
            times[contender].append(timed([*BACKUPD, "backup"], env, False, work).seconds)
        print(f"  [round {number + 1}/{count}] floor {floor[-1]:.2f}s, "
              + ", ".join(f"{checkout.name} {times[checkout][-1]:.2f}s"
                          for checkout in checkouts), file=sys.stderr, flush=True)
    return floor, times


def report(floor: list[float], times: dict[Path, list[float]]) -> list[str]:
    base = statistics.median(floor)
    lines = ["| contender | median s | range s | ratio of medians | median of the rounds' "
             "ratios |", "|---|---:|---:|---:|---:|",
             f"| `pg_dump > /dev/null` (floor) | {base:.2f} | {min(floor):.2f} to "
             f"{max(floor):.2f} | 1.00 | 1.00 |"]
    for checkout, runs in times.items():
        paired = statistics.median(run / own for run, own in zip(runs, floor, strict=True))
        lines.append(f"| one-off `backupd backup` ({checkout}) | {statistics.median(runs):.2f}"
                     f" | {min(runs):.2f} to {max(runs):.2f} | "
                     f"{statistics.median(runs) / base:.3f} | {paired:.3f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="*", type=Path, default=[REPO],
                        help="directories holding the backupd package (default: this one)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--scale", type=int, default=30, help="fixture scale to load")
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE)
    parser.add_argument("--database", default=None,
                        help="an already loaded database instead of loading the fixture")
    parser.add_argument("--hog", choices=HOG_PLACES, default="none")
    parser.add_argument("--workdir", default=None, help="where backups are written (tmp)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    checkouts = [path.resolve() for path in args.checkouts]
    if len(set(checkouts)) != len(checkouts):
        parser.error("a checkout is named twice")
    for checkout in checkouts:
        if not (checkout / "backupd" / "__init__.py").is_file():
            parser.error(f"{checkout}: no backupd package there")
    stop_on_sigterm()
    server = Server()
    work = Path(tempfile.mkdtemp(prefix="backupd-ab-", dir=args.workdir))
    try:
        for checkout in checkouts:
            found = imported_from(checkout, server, work)
            if found != checkout:
                raise SystemExit(f"bench: {checkout} would run the backupd of {found}")
            compile_bytecode(checkout)
        with (source_database(server, args.database, args.scale, args.fixture) as database,
              hog(args.hog)):
            floor, times = rounds(server, database, checkouts, args.rounds, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"One-off backups against the floor: {args.rounds} round(s), CPU-bound job: "
          f"{args.hog}\n")
    print("\n".join(report(floor, times)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
