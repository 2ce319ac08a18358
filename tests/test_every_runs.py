"""Which run of '*' decides a whole-system restore, from manifests alone (no server): the
newest run of '*' with a verified artifact, its list from any of its manifests; runs of
other configurations never; manifests of older versions (no run_of_every) and of newer ones
(fields this version does not know) both load."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from backupd.manifest import Manifest
from backupd.naming import parse_backup_name
from backupd.storage.base import BackupEntry
from backupd.storage.every_runs import newest_run_of_every


def entry(name: str, run_id: str, fields: dict[str, object] | None = None, *,
          verified: bool = True) -> BackupEntry:
    parsed = parse_backup_name(name)
    assert parsed is not None, name
    at = datetime.strptime(run_id, "%Y%m%d_%H%M%S").replace(tzinfo=UTC)
    manifest = Manifest.model_validate({
        "name": name, "database": parsed.database, "kind": parsed.kind, "started_at": at,
        "finished_at": at, "raw_bytes": 1, "stored_bytes": 1, "sha256": "0" * 64,
        "run_id": run_id, "verified": verified, **(fields or {})})
    return BackupEntry(parsed, 1, manifest)


EVERY: dict[str, object] = {"run_databases": ["a", "b", "c"], "run_of_every": True}


def test_a_run_of_every_that_took_only_its_first_database_still_lists_them_all() -> None:
    run = newest_run_of_every([entry("a_20260101_000000.sql.gz", "20260101_000000", EVERY),
                               entry("a_20260102_000000.sql.gz", "20260102_000000", EVERY)])
    assert run is not None and run.run_id == "20260102_000000"
    assert run.databases == {"a", "b", "c"}


def test_a_run_of_a_list_never_decides() -> None:
    listed: dict[str, object] = {"run_databases": ["a"], "run_of_every": False}
    run = newest_run_of_every([
        entry("a_20260101_000000.sql.gz", "20260101_000000", EVERY),
        entry("a_20260102_000000.sql.gz", "20260102_000000", listed),
        entry("globals_20260102_000000.globals.sql.gz", "20260102_000000", listed)])
    assert run is not None and run.run_id == "20260101_000000"


def test_a_run_whose_every_artifact_failed_verification_does_not_decide() -> None:
    run = newest_run_of_every([
        entry("a_20260101_000000.sql.gz", "20260101_000000", EVERY),
        entry("a_20260102_000000.sql.gz", "20260102_000000", {"run_databases": ["a"],
                                                         "run_of_every": True}, verified=False)])
    assert run is not None and run.run_id == "20260101_000000"


def test_manifests_without_the_fields_leave_it_to_the_older_rule() -> None:
    assert newest_run_of_every([entry("a_20260101_000000.sql.gz", "20260101_000000")]) is None


def test_manifests_load_without_the_new_fields_and_with_fields_not_known_yet() -> None:
    manifest = entry("a_20260101_000000.sql.gz", "20260101_000000", EVERY).manifest
    assert manifest is not None
    written = json.loads(manifest.to_json())
    older = {k: v for k, v in written.items() if k not in ("run_of_every", "run_databases")}
    assert Manifest.from_json(json.dumps(older).encode()).run_of_every is None
    newer = {**written, "a_field_of_a_later_version": {"x": 1}}
    assert Manifest.from_json(json.dumps(newer).encode()).run_of_every is True
