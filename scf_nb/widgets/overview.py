"""``%scf_overview``'s pictures (matplotlib, drawn to PNG without pyplot, so no backend is chosen for the
user): events per status over time and the duration distribution per function, beside the table of counts.

Both pictures come from the newest ``SAMPLE`` events of one ``list_events`` call (the counts from
``overview``: all events); the picture's title says how many it shows.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any

from . import render

if TYPE_CHECKING:
    import pandas as pd

    from ..clients.protocol import ClientProtocol

SAMPLE = 20_000
STATUSES = ("QUEUED", "RUNNING", "FINISHED", "FAILED", "ABORTED")
MAX_FUNCTIONS = 12


def overview_png(events: pd.DataFrame, title: str = "") -> bytes:
    """Two pictures side by side as PNG: events started per time bin, stacked by status; the duration of
    ended events per function (box plots, log scale)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.6), dpi=90)
    FigureCanvasAgg(fig)
    over_time, durations = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    _per_status(over_time, events)
    _per_function(durations, events)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _per_status(ax: Any, events: pd.DataFrame) -> None:
    ax.set_title("events per status over time", fontsize=10)
    starts = events["start_time"].dropna()
    if starts.empty:
        ax.text(0.5, 0.5, "no events", ha="center", va="center", transform=ax.transAxes)
        return
    import matplotlib.dates
    import numpy as np

    mdates: Any = matplotlib.dates  # its date helpers have no annotations

    t = mdates.date2num(events["start_time"].dt.tz_localize(None))
    lo, hi = float(np.nanmin(t)), float(np.nanmax(t))
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-5, 41)
    groups = [(s, t[(events["status"] == s).to_numpy()]) for s in STATUSES]
    groups = [(s, v) for s, v in groups if len(v)]
    ax.hist([v for _, v in groups], bins=bins, stacked=True, label=[s for s, _ in groups],
            color=[render.STATUS_COLORS[s] for s, _ in groups])
    ax.xaxis_date()
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.tick_params(axis="x", labelsize=8)
    ax.set_ylabel("events started")
    ax.legend(fontsize=8)


def _per_function(ax: Any, events: pd.DataFrame) -> None:
    ax.set_title("duration per function (ended events)", fontsize=10)
    ended = events[events["duration_ms"].notna() & events["duration_ms"].gt(0)]
    if ended.empty:
        ax.text(0.5, 0.5, "no durations yet", ha="center", va="center", transform=ax.transAxes)
        return
    names = ended["function_name"].value_counts().index[:MAX_FUNCTIONS]
    data = [ended.loc[ended["function_name"] == n, "duration_ms"].to_numpy() for n in names]
    ax.boxplot(data, orientation="horizontal", tick_labels=list(names))
    ax.set_xscale("log")
    ax.set_xlabel("duration (ms)")
    ax.tick_params(axis="y", labelsize=8)


def counts_html(counts: pd.DataFrame) -> str:
    """The overview's table of counts and durations per status."""
    head = "".join(f"<th>{render.esc(c)}</th>" for c in ("status", "count", "avg ms", "p50 ms", "p95 ms", "max ms"))
    rows = []
    for r in counts.to_dict("records"):
        nums = [float(r[c]) for c in ("avg_duration_ms", "p50_duration_ms", "p95_duration_ms", "max_duration_ms")]
        cells = "".join(f"<td>{'' if math.isnan(v) else f'{v:,.1f}'}</td>" for v in nums)
        rows.append(f"<tr><td>{render.badge(str(r['status']))}</td><td>{int(r['count']):,}</td>{cells}</tr>")
    return f'{render.STYLE}<table class="scf-overview-counts"><tr>{head}</tr>{"".join(rows)}</table>'


def overview_view(function: str | None = None, *, namespace: str | None = None,
                  client: ClientProtocol | None = None, sample: int = SAMPLE) -> Any:
    """The counts table beside the pictures (an ipywidgets ``HBox``; drawn once, re-run it to redraw)."""
    import ipywidgets as widgets

    from .. import api

    client = client if client is not None else api.client()
    counts = client.overview(function, namespace=namespace)
    events = client.list_events(function, namespace=namespace, limit=sample)
    what = f"{function}: " if function else ""
    title = f"{what}the newest {len(events):,} of {int(counts['count'].sum()):,} events"
    table = widgets.HTML(counts_html(counts))
    picture = widgets.Image(value=overview_png(events, title), format="png",
                            layout=widgets.Layout(max_width="100%", height="auto", min_width="0"))
    picture.add_class("scf-overview-picture")
    box = widgets.HBox([table, picture], layout=widgets.Layout(align_items="flex-start", flex_flow="row wrap"))
    box.add_class("scf-overview")
    return box
