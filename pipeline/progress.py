"""Progress reports: a bar on a terminal, a log line every few seconds elsewhere.

Piped to a file, a redrawn bar writes hundreds of carriage-return updates per line; a log
keeps one line per interval and one at the end.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("pipeline.progress")

LOG_SECONDS = 10.0  # seconds between log lines when stderr is not a terminal


class _LogProgress:
    """The subset of tqdm's interface the stages use, reported as log lines."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self._start_n, self._t0 = initial, time.monotonic()
        self._last = self._t0
        self._postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= LOG_SECONDS:
            self._report()

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self._postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def _report(self) -> None:
        now = time.monotonic()
        rate = (self.n - self._start_n) / max(now - self._t0, 1e-9)
        total = f"/{self.total}" if self.total else ""
        extra = f" ({self._postfix})" if self._postfix else ""
        log.info("%s: %d%s %s, %.0f %s/s%s", self.desc, self.n, total, self.unit, rate,
                 self.unit, extra)
        self._last = now

    def close(self) -> None:
        if self.n != self._start_n:
            self._report()


def progress_bar(total: int | None, desc: str, unit: str, enabled: bool = True,
                 initial: int = 0) -> Any:
    """A tqdm bar when stderr is a terminal, else periodic log lines; nothing when not
    ``enabled``."""
    from tqdm import tqdm

    if not enabled:
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
    return _LogProgress(total, desc, unit, initial)
