"""The commit boundaries inserted into a streaming plain dump (backupd.pipeline.commit_chunks):
the SQL passes through byte for byte, boundaries go only before pg_dump's entry headers, never
inside COPY data, wherever the stream happens to be split."""

from __future__ import annotations

import random

import pytest
from helpers.feeds import RecordingFeed

from backupd.pipeline.commit_chunks import BOUNDARY, CommitChunks
from backupd.pipeline.tablespace_sets import TablespaceSets


def entry(i: int) -> bytes:
    return (f"\n--\n-- Name: t{i}; Type: TABLE; Schema: public; Owner: app\n--\n\n"
            f"CREATE TABLE public.t{i} (id int);\n").encode()


def data_entry(i: int, rows: list[bytes]) -> bytes:
    return (f"\n--\n-- Data for Name: t{i}; Type: TABLE DATA; Schema: public; Owner: app\n--\n\n"
            f"COPY public.t{i} (id) FROM stdin;\n").encode() + b"".join(rows) + b"\\.\n"


# COPY rows that look like headers: inside COPY data they are data, never a boundary.
TRICKY_ROWS = [b"--\n", b"-- Name: fake; Type: TABLE\n", b"--\n", b"\n", b"COPY x\n"]
DUMP = (b"--\n-- PostgreSQL database dump\n--\n\nSET statement_timeout = 0;\n"
        + b"".join(entry(i) for i in range(1, 31))
        + b"".join(data_entry(i, TRICKY_ROWS * 3) for i in range(1, 31))
        + b"\n--\n-- PostgreSQL database dump complete\n--\n\n")


def run(dump: bytes, sizes: list[int], every: int) -> tuple[bytes, CommitChunks]:
    feed = RecordingFeed()
    chunks = CommitChunks(feed, every)
    position = 0
    for size in sizes:
        chunks(dump[position:position + size])
        position += size
    chunks(dump[position:])
    chunks.finish()
    # Nothing waits on these boundaries: they go to psql with the SQL, in batches.
    assert feed.flushes == []
    return feed.data, chunks


@pytest.mark.parametrize("seed", range(25))
def test_sql_passes_through_and_boundaries_sit_before_headers(seed: int) -> None:
    rng = random.Random(seed)
    sizes = [rng.choice([1, 2, 3, 7, 20, 64, 500]) for _ in range(len(DUMP) // 40)]

    sent, chunks = run(DUMP, sizes, every=7)

    assert sent.replace(BOUNDARY, b"") == DUMP
    # 60 entries, a boundary before the 8th, 15th, ...: 8 of them.
    assert chunks.boundaries == sent.count(BOUNDARY) == 8
    for piece in sent.split(BOUNDARY)[1:]:
        assert piece.startswith((b"--\n-- Name: t", b"--\n-- Data for Name: t")), piece[:40]
    assert b"-- Name: fake" not in b"".join(p[:20] for p in sent.split(BOUNDARY)[1:])


def test_no_boundary_in_a_small_dump_and_no_final_check() -> None:
    sent, chunks = run(DUMP, [100] * 10, every=1000)
    assert sent == DUMP
    assert chunks.boundaries == 0 and chunks.final_check() == b""


def test_the_final_check_counts_the_boundaries() -> None:
    _, chunks = run(DUMP, [4096] * 3, every=10)
    assert chunks.boundaries == 5
    assert b"<> '5'" in chunks.final_check()


# Header lookalikes where pg_dump puts user text: a dollar-quoted body, a string literal
# (doubled quotes), a quoted identifier, block and line comments. None is a boundary.
FAKE_HEADERS = b"".join(b"\n--\n-- Name: fake%d; Type: TABLE; Schema: public; Owner: app\n--\n"
                        % i for i in range(12))
LOOKALIKES = (
    b"\n--\n-- Name: f; Type: FUNCTION; Schema: public; Owner: app\n--\n\n"
    b"CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS $_$" + FAKE_HEADERS
    + b"SELECT 1$_$;\n"
    + b"\n--\n-- Name: c; Type: COMMENT; Schema: public; Owner: app\n--\n\n"
    b"COMMENT ON TABLE public.t1 IS 'it''s" + FAKE_HEADERS + b"';\n"
    + b"\n--\n-- Name: odd; Type: TABLE; Schema: public; Owner: app\n--\n\n"
    b'CREATE TABLE public."odd""' + FAKE_HEADERS + b'" (a$b$c int);\n'
    + b"/* a /* nested */" + FAKE_HEADERS + b"*/\n"
)


@pytest.mark.parametrize("seed", range(10))
def test_no_boundary_inside_bodies_strings_names_or_comments(seed: int) -> None:
    dump = DUMP[:60] + LOOKALIKES + DUMP[60:]
    rng = random.Random(seed)
    sizes = [rng.choice([1, 2, 3, 7, 20, 64, 500]) for _ in range(len(dump) // 40)]

    sent, chunks = run(dump, sizes, every=2)

    assert sent.replace(BOUNDARY, b"") == dump
    assert chunks.boundaries == sent.count(BOUNDARY) > 0
    for piece in sent.split(BOUNDARY)[1:]:
        assert piece.startswith((b"--\n-- Name: t", b"--\n-- Data for Name: t",
                                 b"--\n-- Name: c;", b"--\n-- Name: odd;")), piece[:40]


# Long COPY data, cut into pieces larger than the lexer's lookahead: most pieces pass
# through the scanner's COPY fast path (no join, no slice). Rows end right before, across
# and after every cut; some rows look like headers, others like the end of a COPY without
# being one (a backslash-dot inside a row).
LONG_ROWS = [b"%d\t--\n" % i if i % 7 else b"%d\t-- Name: fake; Type: TABLE\n" % i
             for i in range(3000)] + [b"x\\.y\n", b"\\\\.\n", b"-- Name: z\n"]
LONG_DUMP = (b"--\n-- PostgreSQL database dump\n--\n\nSET statement_timeout = 0;\n"
             + b"".join(entry(i) for i in range(1, 6))
             + b"".join(data_entry(i, LONG_ROWS) for i in range(1, 6))
             + b"\n--\n-- PostgreSQL database dump complete\n--\n\n")


@pytest.mark.parametrize("seed", range(20))
def test_long_copy_data_in_large_pieces_counts_the_same_entries(seed: int) -> None:
    rng = random.Random(seed)
    sizes = [rng.randint(129, 6000) for _ in range(len(LONG_DUMP) // 1500)]

    sent, chunks = run(LONG_DUMP, sizes, every=1)
    byte_by_byte, reference = run(LONG_DUMP, [1] * len(LONG_DUMP), every=1)

    assert sent.replace(BOUNDARY, b"") == LONG_DUMP
    assert sent == byte_by_byte
    assert chunks.entry == reference.entry == 10  # 5 tables and their 5 data entries
    for piece in sent.split(BOUNDARY)[1:]:
        assert piece.startswith((b"--\n-- Name: t", b"--\n-- Data for Name: t",
                                 b"--\n-- PostgreSQL database dump complete")), piece[:40]


@pytest.mark.parametrize("into", [1, 2, 3])
def test_a_copy_end_cut_between_two_large_pieces_is_still_found(into: int) -> None:
    """The fast path hands on a whole piece only when no COPY end can start in its last
    bytes: cut every COPY end ``into`` bytes in, after a piece of COPY data alone (the fast
    path's case), and every entry is still counted."""
    cuts: list[int] = []
    position = LONG_DUMP.find(b"\n\\.\n")
    while position >= 0:
        cuts += [position - 1000, position + into]
        position = LONG_DUMP.find(b"\n\\.\n", position + 1)
    sizes = [b - a for a, b in zip([0, *cuts], cuts, strict=False)]

    sent, chunks = run(LONG_DUMP, sizes, every=1)

    assert sent.replace(BOUNDARY, b"") == LONG_DUMP
    assert chunks.entry == 10


# pg_dump's choice of tablespace before an entry, for tablespaces the server has ("here")
# and lacks (the others), and lookalikes where pg_dump puts user text: COPY data, a
# dollar-quoted body, a string literal, a quoted identifier, a comment.
ODD = b'"Odd ""name""; x"'
LONG = b'"' + b'""' * 30 + b"x" * 33 + b'"'  # 63 bytes, 30 of them quotes: the longest kind
QUOTES = b'"' + b'""' * 63 + b'"'  # 63 quotes: too long a statement, left as it is
TABLESPACE_SETS = (
    b"\nSET default_tablespace = gone;\n\n" + entry(40)
    + b"\nSET default_tablespace = here;\n\n" + entry(41)
    + b"\nSET default_tablespace = " + ODD + b";\n\n" + entry(42)
    + b"\nSET default_tablespace = " + LONG + b";\n\n" + entry(43)
    + b"\nSET default_tablespace = " + QUOTES + b";\n\n" + entry(46)
    + b"\nSET default_tablespace = '';\n\n" + entry(44)
    + data_entry(45, [b"x\n", b"SET default_tablespace = gone;\n"])
    + b"\n--\n-- Name: f; Type: FUNCTION; Schema: public; Owner: app\n--\n\n"
    b"CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS $_$\n"
    b"SET default_tablespace = gone;\nSELECT 1$_$;\n"
    b"COMMENT ON TABLE public.t1 IS '\nSET default_tablespace = gone;\n';\n"
    b'CREATE TABLE public."\nSET default_tablespace = gone;\n" (a int);\n'
    b"/*\nSET default_tablespace = gone;\n*/\n-- \nSET default_tablespace = kept;\n"
)
RESET = b"\nSET default_tablespace = '';\n"


@pytest.mark.parametrize("seed", range(15))
def test_a_tablespace_the_server_lacks_becomes_the_default_wherever_the_stream_is_cut(
        seed: int) -> None:
    dump = DUMP[:60] + TABLESPACE_SETS + DUMP[60:]
    rng = random.Random(seed)
    sizes = [rng.choice([1, 2, 3, 7, 20, 64, 300, 500]) for _ in range(len(dump) // 40)]
    feed = RecordingFeed()
    sets = TablespaceSets(frozenset({"here", "kept"}))
    chunks = CommitChunks(feed, 1000, tablespaces=sets)
    position = 0
    for size in [*sizes, len(dump)]:
        chunks(dump[position:position + size])
        position += size
    chunks.finish()

    expected = dump
    for name in (b"gone", ODD, LONG):
        expected = expected.replace(b"\nSET default_tablespace = " + name + b";\n", RESET, 1)
    assert feed.data == expected
    assert sets.left_out == {"gone", 'Odd "name"; x', '"' * 30 + "x" * 33}
    # The lookalikes are untouched: in COPY data, a body, a string, a name, a comment.
    assert feed.data.count(b"SET default_tablespace = gone;\n") == 5
    assert b"SET default_tablespace = here;\n" in feed.data


def test_without_the_servers_tablespaces_the_statements_pass_through() -> None:
    dump = DUMP[:60] + TABLESPACE_SETS + DUMP[60:]
    sent, _ = run(dump, [500] * (len(dump) // 500), every=1000)
    assert sent == dump
