"""Tables that fit the terminal without cutting what the next command needs.

Why: rich shrinks every column of a wide table and cuts cells with "…", so at 80 columns the run id
you must paste into the next command came out as ``run-9be3…``. Here each column says what it holds:
ids and numbers are never cut (their column is as wide as their longest cell), text wraps, and when
the table is still too wide the columns worth least to the operator are left out first, with a note
saying which (``--output json`` has them all).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.text import Text

from fedops_cli.context import Table, console

ID, NUMBER, TEXT = "id", "number", "text"
TEXT_MIN = 12   # a wrapped text column needs at least this much to stay readable
CELL_PADDING = 3  # rich's padding and border per column


@dataclass(frozen=True)
class Column:
    header: str
    kind: str = TEXT   # ID and NUMBER cells are never cut; TEXT cells wrap
    keep: int = 0      # the order in which columns go when the table is too wide: higher goes first; 0 stays


def number(value: float | int | None, digits: int = 4) -> str:
    """A metric cell: ``0.9123``; ``""`` when the row has no such value."""
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else f"{value:.{digits}g}"


def _width(column: Column, cells: Sequence[str]) -> int:
    longest = max([len(column.header), *(len(c) for c in cells)])
    return (longest if column.kind != TEXT else min(longest, max(TEXT_MIN, len(column.header)))) + CELL_PADDING


def print_table(title: str, columns: Sequence[Column], rows: Sequence[Sequence[Any]],
                out: Console | None = None) -> None:
    """Print ``rows`` (one cell per column) to fit the console's width, dropping the least valued columns."""
    out = out or console
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    shown = list(range(len(columns)))
    widths = [_width(col, [row[i] for row in cells]) for i, col in enumerate(columns)]
    dropped: list[str] = []
    empty = {i for i in shown if not any(row[i] for row in cells)}
    while sum(widths[i] for i in shown) + 1 > out.width:
        droppable = [i for i in shown if columns[i].keep]
        if not droppable:
            break
        # An empty column goes first (it tells nothing), then the least valued.
        gone = max(droppable, key=lambda i: (i in empty, columns[i].keep, i))
        shown.remove(gone)
        dropped.append(columns[gone].header)
    table = Table(title=title)
    for i in shown:
        col = columns[i]
        if col.kind == TEXT:
            table.add_column(col.header, overflow="fold")
        else:
            table.add_column(col.header, no_wrap=True, min_width=widths[i] - CELL_PADDING,
                             justify="right" if col.kind == NUMBER else "left")
    for row in cells:
        table.add_row(*(row[i] for i in shown))
    out.print(table)
    if dropped and rows:  # wrapped at the width too: this note must not be the line that overflows
        out.print(Text(f"(left out at {out.width} columns: {', '.join(dropped)}; widen the terminal or use "
                       "--output json)"))
