"""The project's own test data (tests/fixtures/certificates.sql) holds what the tests rely on:
row counts that follow any scale, fractions included, and every kind of object a backup
must carry across."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from helpers.pg import FIXTURE_SQL, ServerAddress, fixture_rows, load_fixture, psql


@pytest.mark.parametrize("scale", [0.0125, 0.033])
def test_row_counts_follow_a_fractional_scale(
        pg_server: ServerAddress, make_db: Callable[..., str], scale: float) -> None:
    db = make_db()
    load_fixture(pg_server, db, scale=scale, sql_file=FIXTURE_SQL)
    certificates = fixture_rows("certificates", scale)
    counts = psql(pg_server, db, """
        SELECT (SELECT count(*) FROM certificates), (SELECT count(*) FROM verification_events),
               (SELECT count(*) FROM revocations), (SELECT count(*) FROM issuers),
               (SELECT count(*) FROM certificates WHERE status = 'revoked')""").strip()
    revoked = certificates // 97
    assert counts == (f"{certificates}|{fixture_rows('verification_events', scale)}|"
                      f"{revoked}|40|{revoked}")  # the trigger marked each revocation


def test_it_holds_every_kind_of_object_a_backup_must_carry(
        pg_server: ServerAddress, fixture_db: str) -> None:
    facts = psql(pg_server, fixture_db, """
        SELECT (SELECT count(*) FROM pg_tables WHERE schemaname = 'public'),
               (SELECT count(*) FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid
                 WHERE t.typname = 'certificate_status'),
               (SELECT count(*) FROM pg_views WHERE viewname = 'valid_certificates'),
               (SELECT count(*) FROM pg_trigger WHERE tgname = 'revocations_mark'),
               (SELECT count(*) FROM pg_largeobject_metadata),
               (SELECT count(*) FROM certificates WHERE metadata ? 'grade'),
               (SELECT count(*) FROM certificates WHERE octet_length(signature) = 32
                                                    AND signature_sha256 = sha256(signature)),
               (SELECT count(*) FROM certificates WHERE holder_name ~ '[^\\x01-\\x7e]'),
               (SELECT count(*) FROM certificates WHERE strpos(course, E'\\n\\\\.\\n') > 0)
        """).strip().split("|")
    tables, labels, views, triggers, large_objects, jsonb, bytea, unicode, copy_end = map(
        int, facts)
    assert (tables, labels, views, triggers, large_objects) == (4, 4, 1, 1, 40)
    total = int(psql(pg_server, fixture_db, "SELECT count(*) FROM certificates"))
    assert jsonb == bytea == total and unicode > total // 2 and copy_end > 0
    # Contrib extensions where the server has them, and their objects with them.
    available = set(psql(pg_server, fixture_db, "SELECT name FROM pg_available_extensions "
                         "WHERE name IN ('citext', 'pg_trgm', 'pgcrypto')").split())
    installed = set(psql(pg_server, fixture_db, "SELECT extname FROM pg_extension").split())
    assert available <= installed
    if "pg_trgm" in available:
        assert "certificates_holder_trgm_idx" in psql(
            pg_server, fixture_db, "SELECT indexname FROM pg_indexes")

