"""pg_dumpall --globals-only as a supervised child: the cluster's roles (attributes, password
hashes, memberships, ``ALTER ROLE ... SET``) and tablespaces, as plain SQL on stdout."""

from __future__ import annotations

import subprocess

from backupd.cancel import CancelToken
from backupd.pipeline.config import ConnectionConfig
from backupd.pipeline.supervisor import Child, tool_path


def pg_dumpall_globals(connection: ConnectionConfig, cancel: CancelToken, *,
                       role_passwords: bool = True) -> Child:
    """Not started yet (the pipeline starts it). ``role_passwords=False``: a role that is
    not a superuser cannot read pg_authid, so the hashes are left out (--no-role-passwords)
    and pg_dumpall reads pg_roles instead. The password travels in PGPASSWORD only; the
    database pg_dumpall connects to is given as ``--database=NAME`` (one argument, so a
    name starting with '-' is never read as an option)."""
    argv = [tool_path("pg_dumpall"), "--globals-only", "--no-password",
            f"--database={connection.database}"]
    if not role_passwords:
        argv.append("--no-role-passwords")
    return Child(argv, env=connection.libpq_env(), stdout=subprocess.PIPE, cancel=cancel)
