"""Terminal output through rich: styled tables and progress bars on a terminal, plain text
(no colours, no cursor movement) when the output is a pipe or a file. `--json` output never
goes through here."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich import box
from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

# Tables keep one row per line and a rule under the header: readable styled and plain.
TABLE_BOX = box.SIMPLE_HEAD
PLAIN_WIDTH = 120


def is_terminal(stream: Any = None) -> bool:
    stream = stream if stream is not None else sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def stdout() -> Console:
    """A console on standard output: styled on a terminal, plain and wide enough for the
    tables otherwise."""
    if is_terminal():
        return Console(highlight=False)
    return Console(width=PLAIN_WIDTH, color_system=None, highlight=False, soft_wrap=False)


def plain(renderable: RenderableType, width: int = PLAIN_WIDTH) -> str:
    """`renderable` as plain text (no styles), trailing blanks removed."""
    console = Console(file=io.StringIO(), width=width, color_system=None, highlight=False,
                      force_terminal=False)
    console.print(renderable)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


def show(renderable: RenderableType) -> None:
    """Print to standard output: styled on a terminal, plain text otherwise."""
    if is_terminal():
        stdout().print(renderable)
    else:
        print(plain(renderable), flush=True)


def table(*columns: str, title: str | None = None, right: tuple[str, ...] = ()) -> Table:
    """A table with these column headers; headers in `right` are right-aligned (numbers)."""
    t = Table(box=TABLE_BOX, title=title, title_justify="left", show_edge=False,
              pad_edge=False, header_style="bold")
    for name in columns:
        # One line per row: a cell too wide for the screen is cut with an ellipsis.
        t.add_column(name, justify="right" if name in right else "left", no_wrap=True,
                     overflow="ellipsis", min_width=len(name))
    return t


@contextmanager
def progress_lines(description: str, total: int | None = None) -> Iterator[Any]:
    """For long work that reports a line per step: on a terminal, a progress bar on standard
    error that advances with every line (printed above the bar); otherwise the lines go to
    standard error as they come. Yields `report(line)`."""
    if not is_terminal(sys.stderr):
        yield lambda line: print(line, file=sys.stderr, flush=True)
        return
    console = Console(stderr=True, highlight=False)
    columns: list[Any] = [TextColumn("[bold]{task.description}"), BarColumn()]
    if total is not None:
        columns += [MofNCompleteColumn(), TimeRemainingColumn()]
    bar = Progress(*columns, TimeElapsedColumn(), console=console, transient=True)
    with bar:
        task = bar.add_task(description, total=total)

        def report(line: str) -> None:
            bar.console.print(line, markup=False)
            bar.advance(task)

        yield report


@contextmanager
def working(description: str) -> Iterator[None]:
    """A spinner with the elapsed time on standard error while long work without steps of
    its own runs (a terminal only)."""
    if not is_terminal(sys.stderr):
        yield
        return
    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                   console=Console(stderr=True), transient=True)
    with bar:
        bar.add_task(description, total=None)
        yield
