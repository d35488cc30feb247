"""A dependency-free progress bar for the command line (stderr, only on a terminal)."""

from __future__ import annotations

import sys
import time


class Progress:
    """Counts work done and redraws one status line on stderr.

    Args:
        total: number of items, or ``None`` when unknown.
        desc: label shown before the bar.
        enabled: draw at all; defaults to whether stderr is a terminal.
        stream: where to draw (stderr).
    """

    def __init__(self, total=None, desc="", enabled=None, stream=None):
        self.total = total
        self.desc = desc
        self.stream = stream or sys.stderr
        self.enabled = (
            self.stream.isatty()
            if enabled is None and hasattr(self.stream, "isatty")
            else bool(enabled)
        )
        self.count = 0
        self.start = time.perf_counter()
        self._width = 0

    def update(self, n=1, info=""):
        """Marks ``n`` more items done and redraws; ``info`` is shown after the counts."""
        self.count += n
        if not self.enabled:
            return
        rate = self.count / max(time.perf_counter() - self.start, 1e-9)
        if self.total:
            done = int(24 * self.count / self.total)
            bar = f"[{'=' * done}{' ' * (24 - done)}] {self.count}/{self.total}"
        else:
            bar = f"{self.count}"
        line = f"{self.desc} {bar} {rate:.2f}/s {info}".rstrip()[:120]
        self.stream.write("\r" + line.ljust(self._width))
        self._width = len(line)
        self.stream.flush()

    def write(self, message):
        """Prints a message on its own line without breaking the bar."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
        print(message, file=self.stream)
        self._width = 0

    def close(self):
        if self.enabled and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
