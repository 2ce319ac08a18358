"""template1 in the drill of POSTGRES_DB='*' without a drill server.

A run of ``*`` dumps template1 when it holds objects template0 lacks
(backupd.commands.template1_look), and a whole-system restore loads that dump into a new
server's template1 (backupd.commands.template1). The drill of ``*`` drills the databases the
server lists, and templates are never among them: a template1 dump that does not load
would only be found by the restore that needs it. So it is drilled as one more database,
by the same per-database drill (backupd.commands.drill): loaded into a scratch database
created from template0 on the same server (``template1_drill``, marked and dropped like
every scratch), compared with the live template1, which is only read, and reported with a
result of its own.
"""

from __future__ import annotations

from backupd.errors import ConfigError, OffsiteError
from backupd.job import JobContext
from backupd.naming import GLOBALS_DATABASE, GLOBALS_KIND, TEMPLATE_DATABASE
from backupd.settings.selection import DatabaseSelection
from backupd.storage.base import Repository, newest_verified
from backupd.storage.template1_runs import Template1InRun, template1_in_newest_run


def with_template1(ctx: JobContext, databases: list[str], *, from_s3: bool) -> list[str]:
    """``databases``, and template1 after them when the drill must cover its dump: a drill
    of ``*`` that does not exclude it, with a verified dump of it in the repository, unless
    the newest run found template1 holding nothing (its older dumps, kept by retention, are
    then not what a restore brings back: health stops judging them too) or could not look
    into it (warned)."""
    selection = ctx.settings.database_selection
    if not selection.every or TEMPLATE_DATABASE in databases \
            or not selection.choose([TEMPLATE_DATABASE]):
        return databases
    try:
        repository = ctx.repos.choose(from_s3, "--from-s3")
        dumped = newest_verified(repository.list_backups(TEMPLATE_DATABASE)) is not None
        said = _newest_run(repository, selection) if dumped else None
    except (ConfigError, OffsiteError):
        # Each database's drill fails on the same repository, naming why: no reason for
        # the run's own job to fail before them.
        return databases
    if not dumped or (said is not None and said.empty):
        return databases
    if said is not None and not said.took:
        # The newest run could not look into template1 (the role may not connect to it):
        # a drill compares with the live template1, so it could not either, and an older
        # dump drilled would fail every drill of '*' for what the run already warned of.
        ctx.warn(f"template1 drill skipped: the newest backup run ({said.run_id}) could not "
                 "look into template1, so it has no dump of it and a drill could not compare "
                 "one with the live template1; let POSTGRES_USER connect to template1, or set "
                 "DB_BACKUP_EXCLUDE=template1 to leave it out knowingly")
        return databases
    return [*databases, TEMPLATE_DATABASE]


def _newest_run(repository: Repository, selection: DatabaseSelection) -> Template1InRun | None:
    """What the newest run that looked did with template1, from the repository drilled
    (S3 for --from-s3: DB_BACKUP_DIR may hold nothing there), as health and restore judge
    it (storage.template1_runs)."""
    return template1_in_newest_run(selection.watched(repository.databases()),
                                   repository.list_backups,
                                   repository.list_backups(GLOBALS_DATABASE, GLOBALS_KIND))
