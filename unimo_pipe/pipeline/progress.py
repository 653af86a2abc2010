"""Progress that suits where it is shown: a tqdm bar on a terminal, periodic log lines in batch logs."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

logger = logging.getLogger("unimo_pipe")


class Progress:
    def __init__(self, desc: str, *, stream: TextIO | None = None, interval_s: float = 30.0):
        self.desc = desc
        self.done = 0
        self.failed = 0
        self.interval_s = interval_s
        self._start = self._last_log = time.perf_counter()
        stream = stream or sys.stderr
        self._bar = None
        if stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(desc=desc, unit="rec", file=stream, dynamic_ncols=True)

    def update(self, n: int = 1, *, failed: int = 0) -> None:
        self.done += n
        self.failed += failed
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.perf_counter()
        if now - self._last_log >= self.interval_s:
            self._last_log = now
            logger.info("%s", self.line())

    def line(self) -> str:
        elapsed = time.perf_counter() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        return f"{self.desc}: {self.done:,} records ({rate:,.1f}/s), {self.failed:,} failed"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
