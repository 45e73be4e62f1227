"""One progress bar for every long stage: count, rate, elapsed time and ETA (rich)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RateColumn(TextColumn):
    """Items per second of the task."""

    def __init__(self, unit: str = "it"):
        super().__init__("")
        self.unit = unit

    def render(self, task):
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s")


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True, unit: str = "it", completed: int = 0,
                 fields: str = "", initial: dict | None = None) -> Iterator[Callable[..., None]]:
    """Yield `advance(n=1, **fields)`; `fields` is a rich format string for extra live values,
    e.g. "loss {task.fields[loss]:.3f}", whose starting values `initial` must give (the bar renders
    from its own thread, possibly before the first `advance`)."""
    import string

    named = {f[1].split("[", 1)[1].split("]", 1)[0] for f in string.Formatter().parse(fields) if f[1] and "[" in f[1]}
    if named - set(initial or {}):
        raise ValueError(f"progress_bar: fields {sorted(named - set(initial or {}))} have no starting value in `initial`")
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               RateColumn(unit)]
    if fields:
        columns.append(TextColumn(fields))
    columns += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, disable=not enabled) as bar:
        task = bar.add_task(description, total=total, completed=completed, **(initial or {}))

        def advance(n: int = 1, **values) -> None:
            bar.update(task, advance=n, **values)

        yield advance
