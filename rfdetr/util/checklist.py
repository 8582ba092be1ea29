"""A PASS / WARN / FAIL checklist that prints as it goes and caps repeated problems of one kind."""

from __future__ import annotations

import sys
from collections import Counter
from typing import TextIO

PASS, INFO, WARN, FAIL = "PASS", "INFO", "WARN", "FAIL"


class Checklist:
    """Collects check results and prints one line each.

    Problems are grouped by ``kind`` (e.g. ``"bbox outside image"``): after ``max_per_kind`` lines of one kind the rest
    are only counted, and :meth:`summarize` prints one line per kind with the number left unprinted.
    """

    def __init__(self, stream: TextIO | None = None, max_per_kind: int = 20) -> None:
        self.stream = stream or sys.stdout
        self.max_per_kind = max_per_kind
        self.counts: Counter[str] = Counter()  # status -> number of lines reported (printed or not)
        self._per_kind: Counter[tuple[str, str]] = Counter()

    def add(self, status: str, message: str, kind: str | None = None) -> None:
        """Report one result. ``kind`` groups repeated problems so that only the first few are printed."""
        self.counts[status] += 1
        if kind is not None:
            self._per_kind[(status, kind)] += 1
            if self._per_kind[(status, kind)] > self.max_per_kind:
                return
        print(f"{status}  {message}", file=self.stream)

    def passed(self, message: str) -> None:
        self.add(PASS, message)

    def info(self, message: str) -> None:
        self.add(INFO, message)

    def warn(self, message: str, kind: str | None = None) -> None:
        self.add(WARN, message, kind)

    def fail(self, message: str, kind: str | None = None) -> None:
        self.add(FAIL, message, kind)

    def summarize(self) -> None:
        """Print the hidden-line counts per kind and the final tally."""
        for (status, kind), n in sorted(self._per_kind.items()):
            if n > self.max_per_kind:
                print(f"{status}  ... and {n - self.max_per_kind} more '{kind}' problems not shown ({n} in all)",
                      file=self.stream)
        tally = ", ".join(f"{self.counts[s]} {s}" for s in (PASS, WARN, FAIL))
        print(f"\nSummary: {tally}", file=self.stream)

    @property
    def failed(self) -> bool:
        return self.counts[FAIL] > 0
