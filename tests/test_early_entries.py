"""Which post-data entries a plain restore builds beside the load
(backupd.pipeline.early_entries): found in the verified SQL whatever its pieces' sizes; the
stream then leaves exactly those out and commits (with a NOTIFY) after each table's data;
anything not recognised gives up (the restore runs sequentially)."""

from __future__ import annotations

import pytest
from helpers.feeds import RecordingFeed

from backupd.pipeline.commit_chunks import BOUNDARY, CHANNEL, POST_DATA, CommitChunks
from backupd.pipeline.early_entries import EarlyCapture, EarlyPlan

PREAMBLE = (b"--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\nSET lock_timeout = 0;\n"
            b"SELECT pg_catalog.set_config('search_path', '', false);\n")


def header(name: str, kind: str, data: bool = False) -> bytes:
    return (f"\n--\n-- {'Data for ' if data else ''}Name: {name}; Type: {kind}; "
            f"Schema: public; Owner: app\n--\n\n").encode()


TABLE = b'"Odd ""T"" x"'
DUMP = (PREAMBLE
        + header("Odd \"T\" x", "TABLE") + b"CREATE TABLE public." + TABLE + b" (id int);\n"
        + header("p", "TABLE") + b"CREATE TABLE public.p (id int) PARTITION BY RANGE (id);\n"
        + header("Odd \"T\" x", "TABLE DATA", data=True)
        + b"COPY public." + TABLE + b" (id) FROM stdin;\n1\n-- Name: x; Type: INDEX\n\\.\n"
        + header("s", "SEQUENCE SET") + b"SELECT pg_catalog.setval('public.s', 1, true);\n"
        + header("Odd \"T\" x pk", "CONSTRAINT") + b"ALTER TABLE ONLY public." + TABLE
        + b"\n    ADD CONSTRAINT pk PRIMARY KEY (id);\n"
        + header("i", "INDEX") + b"CREATE INDEX i ON public." + TABLE
        + b" USING btree (id);\n\nALTER TABLE public." + TABLE + b" CLUSTER ON i;\n"
        + header("j", "INDEX") + b"CREATE INDEX j ON public." + TABLE
        + b" USING btree ((id + 1));\n"
        + header("pi", "INDEX") + b"CREATE INDEX pi ON ONLY public.p USING btree (id);\n"
        + header("Odd \"T\" x fk", "FK CONSTRAINT") + b"ALTER TABLE ONLY public." + TABLE
        + b"\n    ADD CONSTRAINT fk FOREIGN KEY (id) REFERENCES public.q(id);\n"
        + header("last", "INDEX") + b"CREATE INDEX last ON public." + TABLE
        + b" USING btree (id);\n"
        + b"\n--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc\n\n")


def capture(dump: bytes, size: int, limit: int = 1 << 20) -> tuple[EarlyPlan | None, str]:
    found = EarlyCapture(limit)
    for position in range(0, len(dump), size):
        found(dump[position:position + size])
    found.finish()
    return found.plan(), found.given_up or ""


@pytest.mark.parametrize("size", [1, 7, 100, 1 << 20])
def test_the_indexes_and_constraints_of_tables_with_data_are_found(size: int) -> None:
    plan, _ = capture(DUMP, size)

    assert plan is not None
    assert plan.preamble == ("SET lock_timeout = 0;",
                             "SELECT pg_catalog.set_config('search_path', '', false);")
    # Not the partitioned parent's (no data), not the FK, not the last (it carries the
    # footer and \unrestrict).
    assert [(e.name, e.kind, e.exclusive) for e in plan.entries] == [
        ('Odd "T" x pk', "CONSTRAINT", True), ("i", "INDEX", True), ("j", "INDEX", False)]
    assert {e.table for e in plan.entries} == {b"public." + TABLE}
    assert plan.entries[1].sql.endswith(b" CLUSTER ON i;\n".decode())
    assert plan.data_entries == ((3, b"public." + TABLE),)
    assert plan.post_data == 5  # after the SEQUENCE SET
    # Each carries the size of its table's data entry (the workers' order goes by it).
    data_start = DUMP.index(header('Odd "T" x', "TABLE DATA", data=True)) + 1
    data_end = DUMP.index(header("s", "SEQUENCE SET")) + 1
    assert {e.data_bytes for e in plan.entries} == {data_end - data_start}


def test_each_entry_carries_its_own_tables_data_size() -> None:
    small = b"COPY public.s (id) FROM stdin;\n1\n\\.\n"
    large = b"COPY public.l (id) FROM stdin;\n" + b"1234567\n" * 1000 + b"\\.\n"
    dump = (PREAMBLE
            + header("s", "TABLE DATA", data=True) + small
            + header("l", "TABLE DATA", data=True) + large
            + header("s_pk", "CONSTRAINT") + b"ALTER TABLE ONLY public.s\n"
            b"    ADD CONSTRAINT s_pk PRIMARY KEY (id);\n"
            + header("l_pk", "CONSTRAINT") + b"ALTER TABLE ONLY public.l\n"
            b"    ADD CONSTRAINT l_pk PRIMARY KEY (id);\n"
            + header("last", "INDEX") + b"CREATE INDEX last ON public.l USING btree (id);\n"
            + b"\n--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc\n\n")
    plan, why = capture(dump, 64)

    assert plan is not None, why
    sizes = {e.name: e.data_bytes for e in plan.entries}
    # An entry runs from its header's first "--" to the newline before the next header.
    assert sizes == {"s_pk": len(header("s", "TABLE DATA", data=True) + small),
                     "l_pk": len(header("l", "TABLE DATA", data=True) + large)}


def test_the_stream_leaves_them_out_and_commits_after_the_data() -> None:
    plan, _ = capture(DUMP, 100)
    assert plan is not None
    feed = RecordingFeed()
    out = feed.sent
    waited: list[int] = []

    class Beside:
        def check(self) -> None:
            pass

        def before_post_data(self) -> None:
            waited.append(len(out))

    chunks = CommitChunks(feed, plan=plan, beside=Beside())
    for position in range(0, len(DUMP), 100):
        chunks(DUMP[position:position + 100])
    chunks.finish()
    sent = b"".join(out)

    assert b"ADD CONSTRAINT pk" not in sent and b"CREATE INDEX i " not in sent
    assert b"CREATE INDEX j " not in sent
    for kept in (b"CREATE INDEX pi ", b"ADD CONSTRAINT fk", b"CREATE INDEX last ",
                 b"\\unrestrict abc", b"SELECT pg_catalog.setval"):
        assert kept in sent
    notify = f"NOTIFY {CHANNEL}, '3';\nCOMMIT;".encode()
    assert sent.index(b"\\.\n") < sent.index(notify) < sent.index(b"SELECT pg_catalog.setval")
    # The wait comes after a commit and before the first post-data entry is sent.
    assert len(waited) == 1 and chunks.boundaries == 2
    before_wait = b"".join(out[:waited[0]])
    # That commit tells the workers psql has loaded the last of the data.
    assert before_wait.endswith(f"NOTIFY {CHANNEL}, '{POST_DATA}';\n".encode() + BOUNDARY)
    assert b"FK CONSTRAINT" not in before_wait
    # Both boundaries are waited on (a worker waits for the NOTIFY's commit, the stream for
    # the workers): each is flushed to psql as soon as it is sent, before the wait.
    notified = next(i for i, data in enumerate(out) if notify in data)
    assert feed.flushes == [notified + 1, waited[0]]


@pytest.mark.parametrize(("change", "why"), [
    ((b"USING btree ((id + 1));\n", b"USING btree ((id + 1));\nSET x = 1;\n"),
     "more than its statement"),
    ((b"\n--\n-- Name: i;", b"\nSET default_tablespace = ts;\n\n--\n-- Name: i;"),
     "tablespace"),
    ((b"CREATE INDEX j ON", b"CREATE INDEX j WHERE"), "SQL not recognised"),
    # After the statement, only CLUSTER ON / REPLICA IDENTITY on the entry's own table.
    ((b" CLUSTER ON i;\n", b" CLUSTER ON i;\n\nALTER TABLE public.p CLUSTER ON i;\n"),
     "more than its statement"),
    ((b" CLUSTER ON i;\n", b" CLUSTER ON i;\n\nALTER TABLE public."
      + TABLE[:-1] + b'y" CLUSTER ON i;\n'),
     "more than its statement"),
    ((b" CLUSTER ON i;\n", b" CLUSTER ON i;\n\nCOMMENT ON INDEX public.i IS 'x';\n"),
     "more than its statement"),
])
def test_anything_not_recognised_gives_up(change: tuple[bytes, bytes], why: str) -> None:
    plan, given_up = capture(DUMP.replace(*change), 7)

    assert plan is None
    assert why in given_up


def test_each_statement_pg_dump_adds_after_an_index_is_taken_with_it() -> None:
    also = (b"\nALTER TABLE ONLY public." + TABLE
            + b' REPLICA IDENTITY USING INDEX "i ""x""";\n')
    plan, given_up = capture(DUMP.replace(b" CLUSTER ON i;\n", b" CLUSTER ON i;\n" + also), 7)

    assert plan is not None, given_up
    assert plan.entries[1].name == "i" and plan.entries[1].exclusive
    assert plan.entries[1].sql.endswith(also.decode())


def test_more_than_the_limit_gives_up() -> None:
    plan, given_up = capture(DUMP, 7, limit=100)

    assert plan is None and "more than 100 bytes" in given_up
