"""Progress of a pass over images, readable both on a terminal and in a log file."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Protocol, TextIO

LOG_INTERVAL_S = 600.0  # seconds between the lines a long pass writes to a log


def format_duration(seconds: float) -> str:
    """'41 s', '12 min 5 s', '2 h 3 min'."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


class Progress(Protocol):
    def update(self, n: int = 1) -> object: ...


class _LogLines:
    """A plain line now and then and one when done: no carriage returns, nothing drawn twice."""

    def __init__(self, total: int, desc: str, file: TextIO):
        self.total, self.desc, self.file = total, desc, file
        self.n = 0
        self.started = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= LOG_INTERVAL_S and self.n < self.total:
            self.last = time.monotonic()
            elapsed = self.last - self.started
            left = (self.total - self.n) * elapsed / self.n
            self._write(f"{self.n} of {self.total} img after {format_duration(elapsed)} "
                        f"({self._rate(elapsed)}, about {format_duration(left)} left)")

    def close(self) -> None:
        elapsed = time.monotonic() - self.started
        if self.n >= self.total:
            self._write(f"{self.n} img in {format_duration(elapsed)} ({self._rate(elapsed)})")
        else:
            self._write(f"stopped at {self.n} of {self.total} img after {format_duration(elapsed)} "
                        f"({self._rate(elapsed)})")

    def _rate(self, elapsed: float) -> str:
        rate = self.n / elapsed if elapsed > 0 else 0.0
        return f"{rate:.1f} img/s" if rate >= 1 else f"{rate:.2f} img/s"

    def _write(self, text: str) -> None:
        self.file.write(f"{self.desc}: {text}\n")
        self.file.flush()


class _Off:
    def update(self, n: int = 1) -> None:
        pass


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool = True) -> Iterator[Progress]:
    """A bar over `total` images on stderr; `.update(n)` as each batch is done.

    On a terminal, tqdm's live bar. Otherwise (a log file, CI, a notebook) plain lines
    without carriage returns: one when the pass ends, e.g. ``embed mac: 1492 img in 41 s
    (35.6 img/s)`` (``stopped at ...`` if it ends early), and, in a pass longer than
    `LOG_INTERVAL_S`, one line that often with the count so far and the time left.
    """
    file = sys.stderr
    if not enabled:
        yield _Off()
    elif file.isatty():
        from tqdm import tqdm

        with tqdm(total=total, unit="img", desc=desc, file=file) as bar:
            yield bar
    else:
        lines = _LogLines(total, desc, file)
        try:
            yield lines
        finally:
            lines.close()
