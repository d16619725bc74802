"""Progress of long steps for the terminal, apart from Dagster's event log.

Assets log through `logger(context_log)`: every message goes to Dagster's log (the run storage and
the UI) and to the sink the shell installed, if any. `featureflow materialize` installs a `TerminalBar`
that redraws one status line on a terminal (with a bar when the message says `i/n`) and prints nothing
when its output is not a terminal, so a log file keeps only the one line per finished partition."""

from __future__ import annotations

import re
import shutil
import sys
import time
from typing import Callable, TextIO

_sink: Callable[[str], None] | None = None
_FRACTION = re.compile(r"(\d[\d,]*)/(\d[\d,]*)")


def set_sink(sink: Callable[[str], None] | None) -> None:
    global _sink
    _sink = sink


def report(message: str) -> None:
    if _sink is not None:
        _sink(message)


def logger(log: Callable[[str], None]) -> Callable[[str], None]:
    """A `log` callback for library functions: Dagster's log plus the terminal's progress line."""

    def both(message: str) -> None:
        log(message)
        report(message)

    return both


def fraction(message: str) -> float | None:
    """The share done that a message such as 'step 40/200 loss ...' states (its first i/n), or None."""
    m = _FRACTION.search(message)
    if not m:
        return None
    done, total = (int(g.replace(",", "")) for g in m.groups())
    return min(1.0, done / total) if total else None


class TerminalBar:
    """One transient status line, `  label [#####.....]  40%  message`, redrawn at most 10 times a second."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 20):
        self.stream, self.width, self.label, self._last, self._shown = stream, width, "", 0.0, False
        self.enabled = stream.isatty()

    def start(self, label: str) -> None:
        self.label = label

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.1:
            return
        self._last = now
        share = fraction(message)
        bar = f" [{'#' * round(share * self.width):<{self.width}}] {share:4.0%}" if share is not None else ""
        line = f"  {self.label}{bar}  {message}"
        columns = shutil.get_terminal_size((100, 20)).columns
        self.stream.write("\r\033[K" + line[: columns - 1])
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._shown = False
