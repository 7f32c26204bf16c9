"""Text the views draw: HTML escapes, status badges, times and durations (the plain text of times, durations
and sizes is ``core/readable.py``'s, shared with the CLI). Plain functions of values (no widgets, no client),
so the views stay thin and these are tested on their own."""

from __future__ import annotations

import html
from typing import Any

from ..core.readable import clock as clock
from ..core.readable import duration as duration
from ..core.readable import epoch as epoch
from ..core.readable import megabytes as megabytes

STATUS_COLORS = {"QUEUED": "#6b7280", "RUNNING": "#2563eb", "FINISHED": "#15803d", "FAILED": "#b91c1c",
                 "ABORTED": "#b45309"}
STDERR_COLOR = "#b91c1c"

# One style sheet, sent once with each view (``style_sheet``: an HTML widget renders <style> as given).
STYLE = """<style>
.scf-badge{display:inline-block;padding:0 .5em;border-radius:.6em;color:#fff;font-weight:600;font-size:90%}
.scf-log{display:flex;flex-direction:column-reverse;max-height:22em;overflow:auto;border:1px solid #ddd;
  background:#fafafa}
.scf-log pre{margin:0;padding:.3em;font-size:85%;white-space:pre-wrap;word-break:break-all}
.scf-stderr{color:""" + STDERR_COLOR + """}
.scf-ts{color:#9ca3af}
.scf-row,.scf-head{font-family:monospace;font-size:85%;white-space:nowrap;line-height:2em}
.scf-head{font-weight:600}
.scf-row span,.scf-head span{display:inline-block;overflow:hidden;text-overflow:ellipsis;vertical-align:top;
  padding-right:.6em}
.scf-row.scf-selected{background:#e0ecff}
.scf-notice{padding:.3em .6em;border-radius:.3em;font-weight:600}
.scf-overview-counts th,.scf-overview-counts td{white-space:nowrap;padding:.1em .5em;text-align:right}
</style>"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def badge(status: str) -> str:
    color = STATUS_COLORS.get(status, "#374151")
    return f'<span class="scf-badge" data-status="{esc(status)}" style="background:{color}">{esc(status)}</span>'


def log_line(ts: Any, stream: str, text: str) -> str:
    """One log line as the pane draws it: its time, then the text; stderr in red and marked ``E``."""
    mark = "E" if stream == "stderr" else " "
    when = ts.strftime("%H:%M:%S") if ts is not None else ""
    return (f'<span class="scf-line scf-{stream}"><span class="scf-ts">{when} {mark}</span> '
            f'{html.escape(text, quote=False)}</span>\n')


def style_sheet() -> Any:
    """The style sheet as a widget of its own, so that values redrawn often do not carry it."""
    import ipywidgets as widgets

    sheet = widgets.HTML(STYLE, layout=widgets.Layout(display="none"))
    return sheet
