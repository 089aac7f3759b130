"""The dashboard's charts (Altair, which Streamlit ships): labelled axes, points on every line.

Why not ``st.line_chart``: it puts every column on one axis (loss 2.3 flattens accuracy 0.9) and
draws nothing for a one-point run. Here every chart has its own y axis and title, and lines carry
points, so a run with one round still shows its value.
"""

from __future__ import annotations

from typing import Any

import altair as alt
import streamlit as st


def _field(name: str, rows: list[dict[str, Any]]) -> str:
    """Altair shorthand for a field: dots escaped (they mean nesting), typed from its values."""
    sample = next((row[name] for row in rows if row.get(name) is not None), "")
    kind = "Q" if isinstance(sample, int | float) and not isinstance(sample, bool) else "N"
    return name.replace(".", "\\.") + f":{kind}"


def _tooltip(rows: list[dict[str, Any]]) -> list[str]:
    return [_field(name, rows) for name in sorted({key for row in rows for key in row})]


def lines(rows: list[dict[str, Any]], x: str, y: str, color: str, title: str, y_title: str = "",
          x_title: str = "") -> None:
    """One line per ``color`` value, with points; integer x (rounds) ticks."""
    if not rows:
        return
    chart = alt.Chart(alt.Data(values=rows), title=title).mark_line(point=True).encode(
        x=alt.X(f"{x}:Q", title=x_title or x, axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y(_field(y, rows), title=y_title or y, scale=alt.Scale(zero=False)),
        color=alt.Color(f"{color}:N", title=color),
        tooltip=_tooltip(rows))
    st.altair_chart(chart, width="stretch")


def grouped_bars(rows: list[dict[str, Any]], x: str, y: str, color: str, title: str, y_title: str = "") -> None:
    """Bars side by side per ``x`` (e.g. each client's train time per round)."""
    if not rows:
        return
    chart = alt.Chart(alt.Data(values=rows), title=title).mark_bar().encode(
        x=alt.X(f"{x}:O", title=x), xOffset=alt.XOffset(f"{color}:N"),
        y=alt.Y(_field(y, rows), title=y_title or y), color=alt.Color(f"{color}:N", title=color),
        tooltip=_tooltip(rows))
    st.altair_chart(chart, width="stretch")


def stacked_timeline(rows: list[dict[str, Any]], title: str) -> None:
    """One horizontal bar per round, its wall time split into segments in time order."""
    if not rows:
        return
    values = [{**row, "order": i, "part": row["segment"] + (f" ({row['step']})" if row["step"] else "")}
              for i, row in enumerate(rows)]
    chart = alt.Chart(alt.Data(values=values), title=title).mark_bar().encode(
        y=alt.Y("round:O", title="round"), x=alt.X("sum(seconds):Q", title="seconds"),
        color=alt.Color("segment:N", title="where the time went"), order=alt.Order("order:Q"),
        tooltip=["round:O", "part:N", alt.Tooltip("seconds:Q", format=".2f")])
    st.altair_chart(chart, width="stretch")


def timeseries(rows: list[dict[str, Any]], y: str, color: str, title: str, y_title: str,
               bands: list[dict[str, Any]] | None = None, y_format: str = "") -> None:
    """Samples over time (``time`` is an ISO timestamp), one line per ``color`` value, over shaded
    bands (``{"start", "end", "label"}``: e.g. each run's rounds)."""
    if not rows:
        return
    axis = alt.Axis(format=y_format) if y_format else alt.Axis()
    line = alt.Chart(alt.Data(values=rows)).mark_line(point=alt.OverlayMarkDef(size=12)).encode(
        x=alt.X("time:T", title="time (UTC)"), y=alt.Y(_field(y, rows), title=y_title, axis=axis),
        color=alt.Color(f"{color}:N", title=color), tooltip=_tooltip(rows))
    layers: list[Any] = []
    if bands:
        layers.append(alt.Chart(alt.Data(values=bands)).mark_rect(opacity=0.12).encode(
            x="start:T", x2="end:T", color=alt.value("#888"), tooltip=["label:N"]))
    st.altair_chart(alt.layer(*layers, line).properties(title=title), width="stretch")
