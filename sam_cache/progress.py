"""Progress that counts work done: a tqdm bar on a terminal, plain dated lines in a log.

In a log file a carriage-return bar becomes hundreds of overwritten lines; there `Progress` writes one
line per tenth of the work (and at least every 30 s), each ending in a newline. It is thread-safe, so
Dask tasks running in threads can report each sample as they finish it.
"""

from __future__ import annotations

import sys
import threading
import time


class Progress:
    def __init__(self, total: int, desc: str, unit: str, enabled: bool = True, stream=None, every_s: float = 30.0):
        self.total, self.desc, self.unit, self.n = int(total), desc, unit, 0
        self.stream = stream or sys.stderr
        self.enabled, self.every_s = enabled and total > 0, every_s
        self._lock = threading.Lock()
        self._bar = None
        self._t0 = self._last_t = time.monotonic()
        self._last_n = 0
        if self.enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream, leave=False)

    def update(self, n: int = 1) -> None:
        if not self.enabled:
            return
        with self._lock:
            self.n += n
            if self._bar is not None:
                self._bar.update(n)
                return
            now = time.monotonic()
            tenth = self.n * 10 // self.total  # a line each time a new tenth is reached
            if tenth > self._last_n * 10 // self.total or now - self._last_t >= self.every_s:
                self._line(now)

    def _line(self, now: float) -> None:
        rate = self.n / max(now - self._t0, 1e-9)
        self.stream.write(f"{time.strftime('%H:%M:%S')} {self.desc}: {self.n}/{self.total} {self.unit} "
                          f"({100 * self.n / self.total:.0f}%, {rate:.3g} {self.unit}/s)\n")
        self.stream.flush()
        self._last_n, self._last_t = self.n, now

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
