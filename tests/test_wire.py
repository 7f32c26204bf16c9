"""The engine <-> instance framing: messages cut out of a byte stream however the reads split it."""

from __future__ import annotations

import pickle

from scf_nb.instances.loky import wire


def test_reader_cuts_messages_whatever_the_reads_split() -> None:
    msgs = [("run", "id-1", "null", "$LATEST", "$LATEST"), ("done", "FINISHED", '{"a": 1}', 0.5, 123, True),
            ("load", {"code": "x" * 300_000, "env": {"K": "V"}}), ("stop",)]
    stream = b"".join(wire.frame(m) for m in msgs)
    for size in (1, 3, 4, 5, 64, 4096, 65536, len(stream)):
        reader, got = wire.Reader(), []
        for i in range(0, len(stream), size):
            got += reader.feed(stream[i:i + size])
        assert got == msgs, size
        assert reader.pending == 0


def test_reader_keeps_an_incomplete_message_until_its_rest_comes() -> None:
    data = wire.frame(("done", "FAILED", {"type": "ValueError"}, 1.0, 0, False))
    reader = wire.Reader()
    assert reader.feed(data[:-1]) == []
    assert reader.pending == len(data) - 1
    assert reader.feed(data[-1:] + data) == [pickle.loads(data[4:])] * 2
