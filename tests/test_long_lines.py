"""End to end: a line over ``MAX_LINE`` bytes is stored in marked pieces of exactly ``MAX_LINE`` bytes, and
joining each stream's pieces as the README says gives back the line, with a line of the other stream written
in its middle. A real loky instance and a real DuckDB file (the ``scf`` fixture)."""

from __future__ import annotations

import textwrap
from typing import Any

import pandas as pd

from scf_nb.core.logchannel import CONTINUED, MAX_LINE

SIZE = int(2.5 * MAX_LINE)
HALF = int(1.2 * MAX_LINE)

LONG = textwrap.dedent(f'''
    import sys

    def main_handler(event, context):
        line = "".join(f"{{i:09d}}," for i in range({SIZE} // 10 + 1))[:{SIZE}]
        sys.stdout.write(line[:{HALF}])
        sys.stdout.flush()
        print("middle", file=sys.stderr, flush=True)  # the other stream, while the long line is half written
        sys.stdout.write(line[{HALF}:] + "\\n")
        print("after", flush=True)
        return len(line)
''')


def joined(df: pd.DataFrame, stream: str) -> list[str]:
    """The README's recipe: a line ending with CONTINUED goes on in the next line of the same stream."""
    lines, part = [], ""
    for line in df[df.stream == stream].line:
        if line.endswith(CONTINUED):
            part += line[: -len(CONTINUED)]
        else:
            lines.append(part + line)
            part = ""
    return lines


def test_a_line_of_2_5_mib_is_stored_in_marked_pieces_that_join_back(scf: Any) -> None:
    scf.create_function("long", LONG, async_run=True)
    ev = scf.invoke("long")
    assert ev.result(timeout=60) == SIZE
    df = scf.logs(ev.request_id)
    assert list(df.seq) == list(range(1, len(df) + 1))
    out = df[df.stream == "stdout"].line.tolist()
    assert [len(line.encode()) for line in out] == [MAX_LINE + len(CONTINUED)] * 2 + [SIZE - 2 * MAX_LINE, 5]
    assert [line.endswith(CONTINUED) for line in out] == [True, True, False, False]

    expected = "".join(f"{i:09d}," for i in range(SIZE // 10 + 1))[:SIZE]
    assert joined(df, "stdout") == [expected, "after"]
    assert joined(df, "stderr") == ["middle"]
