"""Text that looks like pg_dump's entry headers inside a function body, a string literal or
a quoted identifier is not a place for a commit boundary (backupd.pipeline.commit_chunks).

A boundary put there would become part of the function body or the string, so the check
before the final COMMIT fails and a good backup could never be restored by backupd (nor
drilled). The restore must succeed and bring back the text byte for byte."""

from __future__ import annotations

from collections.abc import Callable

from helpers.backups import sql_of, take_backup
from helpers.cli import EnvFactory, run_backupd
from helpers.pg import ServerAddress, psql

from backupd.pipeline.commit_chunks import ENTRIES_PER_COMMIT

# More lookalike headers than one commit's worth of entries: scanned as headers, a boundary
# would certainly fall among them.
LOOKALIKES = ENTRIES_PER_COMMIT + 20
FAKE = "--\\n-- Name: fake%s; Type: TABLE; Schema: public; Owner: app\\n--\\n"


def test_header_lookalikes_in_bodies_strings_and_names_restore(
        pg_server: ServerAddress, make_db: Callable[..., str], backupd_env: EnvFactory) -> None:
    source = make_db()
    lines = "\n".join(f"--\n-- Name: fake{i}; Type: TABLE; Schema: public; Owner: app\n--\n"
                      f"-- Data for Name: fake{i}; Type: TABLE DATA; Schema: public; Owner: x"
                      for i in range(LOOKALIKES))
    psql(pg_server, source, f"""
        CREATE FUNCTION public.lookalike() RETURNS int LANGUAGE sql AS $body$
        {lines}
        SELECT 1
        $body$;
        CREATE TABLE public.commented (id int);
        CREATE TABLE public."odd
--
-- Name: x; Type: TABLE; Schema: public; Owner: app
name" (id int);
        INSERT INTO public.commented VALUES (1);""")
    psql(pg_server, source, "COMMENT ON TABLE public.commented IS "
         + "E'" + "".join(FAKE % i for i in range(LOOKALIKES)) + "it''s a '' quote'")
    body = "SELECT md5(prosrc) FROM pg_proc WHERE proname = 'lookalike'"
    comment = "SELECT md5(obj_description('public.commented'::regclass, 'pg_class'))"
    backup = take_backup(backupd_env(source))
    assert sql_of(backup).count(b"\n--\n-- Name: fake1;") >= 2  # in the body and the comment
    target = make_db()

    restored = run_backupd(["restore", backup.name, "--target-db", target, "--yes"],
                           backupd_env(source))

    assert restored.returncode == 0, restored.stderr[-3000:]
    assert psql(pg_server, target, body) == psql(pg_server, source, body)
    assert psql(pg_server, target, comment) == psql(pg_server, source, comment)
    assert psql(pg_server, target, "SELECT public.lookalike()").strip() == "1"
    assert psql(pg_server, target, "SELECT count(*) FROM pg_class WHERE relname LIKE 'odd%'"
                ).strip() == "1"
