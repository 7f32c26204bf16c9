"""Unit tests of ``scf_nb.core.logchannel.LineSplitter``: bytes of one instance stream in, lines and
end-of-event markers (``None``) out. Nothing may be lost, invented or misattributed."""

from __future__ import annotations

import pytest

from scf_nb.core.logchannel import CONTINUED, END_MARKER, MAX_LINE, LineSplitter

READ = 1 << 18  # what the engine reads from a pipe at a time


def feed_all(chunks: list[bytes], close: bool = False) -> list[str | None]:
    s = LineSplitter("stdout")
    out: list[str | None] = []
    for chunk in chunks:
        out += s.feed(chunk)
    if close:
        out += s.close()
    return out


def in_reads(data: bytes, size: int = READ) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def every_split(data: bytes) -> list[tuple[int, list[bytes]]]:
    return [(i, [data[:i], data[i:]]) for i in range(1, len(data))]


# -- plain lines ---------------------------------------------------------------------------------------------
def test_lines_in_one_chunk() -> None:
    assert feed_all([b"one\ntwo\n\nthree\n"]) == ["one", "two", "", "three"]


def test_a_line_split_across_chunks_comes_out_once_whole() -> None:
    s = LineSplitter("stdout")
    assert s.feed(b"hel") == []
    assert s.feed(b"lo\nwor") == ["hello"]
    assert s.feed(b"ld") == []
    assert s.feed(b"\n") == ["world"]
    assert s.close() == []


def test_byte_by_byte_gives_the_same_lines() -> None:
    text = b"alpha\nbeta gamma\n\ndelta\n"
    assert feed_all([bytes([b]) for b in text]) == ["alpha", "beta gamma", "", "delta"]


def test_close_returns_the_unterminated_rest() -> None:
    s = LineSplitter("stderr")
    assert s.feed(b"done\nno newline") == ["done"]
    assert s.close() == ["no newline"]
    assert s.close() == []


def test_the_stream_name_is_kept() -> None:
    assert LineSplitter("stderr").stream == "stderr"


# -- carriage returns ----------------------------------------------------------------------------------------
def test_progress_redraws_with_cr_are_live_lines() -> None:
    """Each redraw is a line as soon as the next byte arrives: no newline needed (a final \r may be held
    back until then, as it could be the first half of a CRLF)."""
    s = LineSplitter("stdout")
    out = s.feed(b"10%\r20%\r")
    out += s.feed(b"3")
    assert out == ["10%", "20%"]
    assert s.feed(b"0%\n") == ["30%"]


def test_a_cr_on_an_empty_line_makes_no_line() -> None:
    assert feed_all([b"\rabc\n", b"\r", b"\r\r", b"x\n"], close=True) == ["abc", "x"]


def test_crlf_ends_one_line() -> None:
    assert feed_all([b"a\r\nb\r\n\r\nc\r\n"]) == ["a", "b", "", "c"]


def test_crlf_split_across_reads_ends_one_line() -> None:
    assert feed_all([b"a\r", b"\nb\r\n"]) == ["a", "b"]


# -- end markers -----------------------------------------------------------------------------------------------
def test_end_marker_on_its_own_line() -> None:
    assert feed_all([b"x\n" + END_MARKER + b"\n"]) == ["x", None]


def test_lines_after_a_marker_belong_to_the_next_event() -> None:
    assert feed_all([b"a\n" + END_MARKER + b"\nb\n" + END_MARKER + b"\n"]) == ["a", None, "b", None]


def test_end_marker_glued_to_a_partial_line() -> None:
    s = LineSplitter("stdout")
    assert s.feed(b"partial") == []
    assert s.feed(END_MARKER + b"\n") == ["partial", None]


@pytest.mark.parametrize("prefix", [b"", b"x\n", b"no newline", b"50%\r", b"caf\xc3\xa9 "])
def test_end_marker_found_at_every_split_point(prefix: bytes) -> None:
    data = prefix + END_MARKER + b"\n"
    whole = feed_all([data])
    assert whole[-1] is None and whole.count(None) == 1
    for i, chunks in every_split(data):
        assert feed_all(chunks) == whole, f"split at byte {i}"


def test_end_marker_split_into_single_bytes() -> None:
    assert feed_all([bytes([b]) for b in b"last" + END_MARKER + b"\n"]) == ["last", None]


def test_user_nul_bytes_are_not_a_marker() -> None:
    assert feed_all([b"a\x00b\n", END_MARKER[:-3] + b"\n"]) == ["a\x00b", END_MARKER[:-3].decode()]


# -- long lines ----------------------------------------------------------------------------------------------
def rejoin(pieces: list[str | None]) -> str:
    """The pieces of one long line joined; checks that every piece but the last, and only those, say so."""
    texts = [p for p in pieces if p is not None]
    assert len(texts) == len(pieces)
    assert all(p.endswith(CONTINUED) for p in texts[:-1]), "a piece without the continuation marker"
    assert not texts[-1].endswith(CONTINUED)
    return "".join(p[: -len(CONTINUED)] for p in texts[:-1]) + texts[-1]


def sizes(pieces: list[str | None]) -> list[int]:
    """The UTF-8 size of each piece without its marker."""
    return [len(p.removesuffix(CONTINUED).encode()) for p in pieces]  # type: ignore[union-attr]


def test_a_long_line_is_cut_at_exactly_max_line_bytes_and_marked_whatever_the_reads() -> None:
    data = b"y" * (5 * MAX_LINE + 123)
    expected = [MAX_LINE] * 5 + [123]
    for size in (READ, 7777, 65536, 3 * MAX_LINE, len(data) + 1):
        out = feed_all(in_reads(data + b"\n", size))
        assert sizes(out) == expected, f"reads of {size} bytes"
        assert rejoin(out) == data.decode()


def test_a_line_of_max_line_bytes_is_one_row_and_one_byte_more_is_two() -> None:
    assert feed_all(in_reads(b"a" * MAX_LINE + b"\n")) == ["a" * MAX_LINE]
    out = feed_all(in_reads(b"a" * MAX_LINE + b"b\n"))
    assert out == ["a" * MAX_LINE + CONTINUED, "b"]


def test_a_long_line_is_stored_in_pieces_with_nothing_lost() -> None:
    data = b"y" * (5 * MAX_LINE + 123)
    out = feed_all(in_reads(data + END_MARKER + b"\n"))
    assert out[-1] is None and out.count(None) == 1
    assert sizes(out[:-1]) == [MAX_LINE] * 5 + [123]
    assert rejoin(out[:-1]) == data.decode()


def test_a_long_line_then_more_lines() -> None:
    data = b"z" * (2 * MAX_LINE) + b"\nnext\n"
    out = feed_all(in_reads(data))
    assert out[-1] == "next"
    assert rejoin(out[:-1]) == "z" * (2 * MAX_LINE)


@pytest.mark.parametrize("offset", [-20, -16, -15, -14, -1, 0, 1, 7, 15, 16, 17, 30])
def test_end_marker_after_a_long_line_found_wherever_the_read_ends(offset: int) -> None:
    """The long-line path keeps a short tail that may hold a marker: cut reads around it."""
    body = b"z" * (MAX_LINE + 100)
    data = body + END_MARKER + b"\n"
    cut = len(body) + offset
    out = feed_all([data[:cut], data[cut:]])
    assert out[-1] is None and out.count(None) == 1
    assert sizes(out[:-1]) == [MAX_LINE, 100]
    assert rejoin(out[:-1]) == body.decode()


def test_long_non_ascii_line_pieces_end_on_characters_and_join_to_the_original_text() -> None:
    text = "a" + "中" * (MAX_LINE // 2)  # 1.5 MB of 3-byte characters, shifted by one byte
    for size in (READ, 99_999, len(text.encode()) + 1):
        out = feed_all(in_reads(text.encode(), size), close=True)
        assert len(out) == 2
        assert all(MAX_LINE - 3 <= n <= MAX_LINE for n in sizes(out[:-1]))
        assert "\\x" not in "".join(out)  # type: ignore[arg-type]  # no character was cut in two
        assert rejoin(out) == text


def test_a_long_non_ascii_line_and_marker_in_one_read() -> None:
    text = "中" * (MAX_LINE // 2)
    out = feed_all([text.encode() + END_MARKER + b"\nnext\n"])
    assert out[-2:] == [None, "next"] and out.count(None) == 1
    pieces = out[:-2]
    assert len(pieces) == 2 and MAX_LINE - 3 <= sizes(pieces)[0] <= MAX_LINE
    assert rejoin(pieces) == text


def test_a_long_run_of_invalid_bytes_is_kept_whole() -> None:
    n = MAX_LINE + 100
    out = feed_all(in_reads(b"\xff" * n + b"\n" + END_MARKER + b"\n"))
    assert out[-1] is None and out.count(None) == 1
    assert rejoin(out[:-1]) == "\\xff" * n


# -- bytes that are not UTF-8 --------------------------------------------------------------------------------
def test_non_utf8_bytes_are_kept_as_escapes_and_ingestion_goes_on() -> None:
    out = feed_all([b"ok \xff\xfe end\n", b"\xc3(\n", b"fine\n"])
    assert out == ["ok \\xff\\xfe end", "\\xc3(", "fine"]


def test_non_utf8_bytes_next_to_a_marker() -> None:
    assert feed_all([b"bad \xff", END_MARKER + b"\n", b"good\n"]) == ["bad \\xff", None, "good"]


def test_a_utf8_character_split_across_reads_is_decoded_whole() -> None:
    data = "naïve 中文 ok\n".encode()
    for i, chunks in every_split(data):
        assert feed_all(chunks) == ["naïve 中文 ok"], f"split at byte {i}"
