"""The way out a failed custom or directory restore's tablespace hint gives
(backupd.postgres.tablespaces.unlisted_hint), for what the restores in
test_restore_tablespaces do not reach: a restoring role unknown, a tablespace the manifest
lists (R18)."""

from __future__ import annotations

from backupd.postgres.tablespaces import unlisted_hint


def test_without_the_restoring_role_the_grant_is_said_in_prose() -> None:
    """A role unknown: no GRANT that looks pasteable but names a role that does not exist."""
    hint = unlisted_hint("pg_restore: error: could not execute query: ERROR:  permission "
                         "denied for tablespace space_tbl", None, None)

    assert hint is not None
    assert "GRANT" not in hint and "<" not in hint, hint
    assert 'grant CREATE on tablespace "space_tbl" to the restoring role' in hint, hint


def test_a_tablespace_the_manifest_lists_is_not_said_to_be_missing_from_it() -> None:
    hint = unlisted_hint("ERROR:  permission denied for tablespace space_tbl", "restorer",
                         ("space_tbl",))

    assert hint == ("the backup has objects in tablespace 'space_tbl', which the restoring "
                    'role may not create in: GRANT CREATE ON TABLESPACE "space_tbl" TO '
                    '"restorer", or restore as a role that may create in it')
