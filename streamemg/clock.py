"""Injectable clocks: everything that computes rates, latency or staleness takes one."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds."""

    def __call__(self) -> float: ...


def monotonic() -> float:
    """The default clock: ``time.perf_counter`` (monotonic, high resolution)."""
    return time.perf_counter()


class ManualClock:
    """A clock that moves only when told to: for deterministic tests."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = float(start)

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += float(dt)
