"""The drill's roles comparison (backupd.postgres.compare.read_roles/compare_roles) against
real clusters: a "live" private cluster, and a second fresh one given the live one's globals
as `pg_dumpall --globals-only | psql` would (so the comparison is tested apart from the
restore path that feeds it)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from helpers.cluster import PrivateCluster
from helpers.pg import ServerAddress, connect, pg_binary, psql

from backupd.postgres.compare import Comparison, RoleCatalog, compare_roles, read_roles

ClusterFactory = Callable[..., PrivateCluster]

APP_ROLES = """
    CREATE ROLE app LOGIN PASSWORD 'app-secret' CONNECTION LIMIT 10;
    CREATE ROLE reader NOLOGIN;
    GRANT app TO reader;
    ALTER ROLE app SET statement_timeout = '30s';
    GRANT pg_read_all_stats TO app;
"""


def roles_of(server: ServerAddress) -> RoleCatalog:
    with connect(server) as conn:
        return read_roles(conn)


def copy_globals(source: ServerAddress, target: ServerAddress) -> None:
    dumped = subprocess.run([pg_binary("pg_dumpall"), "--globals-only"],
                            env={"PATH": "/usr/bin:/bin", **source.env("postgres")},
                            capture_output=True, text=True, check=True).stdout
    # The target's own superuser is kept as it is (as the drill's globals restore does).
    kept = "\n".join(line for line in dumped.splitlines()
                     if not line.startswith(("CREATE ROLE postgres;", "ALTER ROLE postgres ")))
    psql(target, "postgres", kept)


def compared(live: ServerAddress, restored: ServerAddress, before: RoleCatalog) -> Comparison:
    result = Comparison()
    compare_roles(result, roles_of(live), roles_of(restored), before)
    return result


def test_roles_restored_from_the_globals_match(private_cluster: ClusterFactory) -> None:
    live, fresh = private_cluster().address, private_cluster().address
    psql(live, "postgres", APP_ROLES)
    before = roles_of(fresh)
    copy_globals(live, fresh)

    result = compared(live, fresh, before)

    assert result.differences == [] and result.drift == [], result
    assert result.objects_compared == {"role": 3, "membership": 2}
    assert result.roles_compared
    assert result.warnings == []


def test_a_missing_membership_or_a_changed_role_is_a_difference(
        private_cluster: ClusterFactory) -> None:
    live, fresh = private_cluster().address, private_cluster().address
    psql(live, "postgres", APP_ROLES)
    before = roles_of(fresh)
    copy_globals(live, fresh)
    psql(fresh, "postgres", "REVOKE app FROM reader; ALTER ROLE app PASSWORD 'other'; "
                            "ALTER ROLE app RESET statement_timeout; ALTER ROLE reader LOGIN;")
    psql(live, "postgres", "CREATE ROLE newer; CREATE ROLE gone_now; DROP ROLE gone_now;")
    psql(fresh, "postgres", "CREATE ROLE dropped_since;")

    result = compared(live, fresh, before)

    assert result.differences == [
        "role newer is missing from the restore",
        "role app: setting statement_timeout=30s only in the live cluster",
        "role app: the password differs from the live cluster's (changed since the backup?)",
        "role reader: NOLOGIN in the live cluster, not in the restore",
        "role reader: LOGIN in the restore, not in the live cluster",
        "membership reader in app is missing from the restore",
    ]
    assert result.drift == [
        "role dropped_since is in the backup but no longer in the live cluster"]
    # Password hashes are secrets: never in a message.
    assert not any("SCRAM" in line for line in result.differences)


def test_without_a_superuser_passwords_are_not_compared_and_it_says_so(
        private_cluster: ClusterFactory) -> None:
    live, fresh = private_cluster().address, private_cluster().address
    psql(live, "postgres", APP_ROLES + "CREATE ROLE looker LOGIN PASSWORD 'l';")
    before = roles_of(fresh)
    copy_globals(live, fresh)
    psql(fresh, "postgres", "ALTER ROLE app PASSWORD 'other'")
    looker = ServerAddress(live.host, live.port, "looker", "l")

    result = compared(looker, fresh, before)

    assert result.differences == []
    assert "role passwords were not compared: reading them needs a superuser on both " \
           "servers" in result.warnings
