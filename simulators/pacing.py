"""Pacing of async loops on absolute deadlines.

A loop that sleeps ``period`` after doing its work drifts: every iteration adds the work time and the
scheduler's lateness. :class:`Pacer` instead targets ``deadline_k = t0 + k * period`` for tick ``k``, so
lateness in one tick is absorbed by a shorter sleep in the next and the long-run rate is exact. When the loop
falls behind by more than a whole period (a stalled event loop, a suspended machine), the pacer does not try
to fire every missed tick back to back at once: :meth:`Pacer.wait_next` returns how many periods have
elapsed, so the caller can catch up in one step (e.g. send all the samples that became due), and counts the
skipped ticks in :attr:`Pacer.late_ticks`.

The clock and the sleep function are injectable, so tests can drive a pacer with a
:class:`streamemg.clock.ManualClock` and a fake sleep that advances it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

from streamemg.clock import Clock, monotonic
from streamemg.errors import ConfigError

Sleep = Callable[[float], Awaitable[object]]


class Pacer:
    """Absolute-deadline pacing: ``await pacer.wait_next()`` once per tick.

    Args:
        period_s: tick period, seconds (> 0).
        clock: monotonic seconds; default :func:`streamemg.clock.monotonic`.
        sleep: coroutine function sleeping for a number of seconds; default :func:`asyncio.sleep`.
        start: the time of tick 0; by default the clock's time at the first :meth:`wait_next` (or :meth:`start`).

    Attributes:
        period: tick period, seconds.
        t0: time of tick 0 (None until started).
        ticks: index of the last tick waited for (every tick counted, skipped ones included).
        late_ticks: ticks skipped because the caller was more than one period late.
    """

    def __init__(
        self, period_s: float, *, clock: Clock = monotonic, sleep: Sleep = asyncio.sleep, start: float | None = None
    ) -> None:
        try:
            period = float(period_s)
        except (TypeError, ValueError):
            period = float("nan")
        if not (math.isfinite(period) and period > 0):
            raise ConfigError(f"Pacer.period_s={period_s!r}: must be a finite number of seconds above 0")
        self.period = period
        self._clock = clock
        self._sleep = sleep
        self.t0: float | None = None if start is None else float(start)
        self.ticks = 0
        self.late_ticks = 0

    def start(self, t0: float | None = None) -> float:
        """Set tick 0 to ``t0`` (default: now) and reset the counters; returns t0."""
        self.t0 = self._clock() if t0 is None else float(t0)
        self.ticks = 0
        self.late_ticks = 0
        return self.t0

    def deadline(self, k: int) -> float:
        """The absolute time of tick ``k`` (starts the pacer if needed)."""
        if self.t0 is None:
            self.start()
        assert self.t0 is not None
        return self.t0 + k * self.period

    @property
    def next_deadline(self) -> float:
        """The absolute time of the next tick."""
        return self.deadline(self.ticks + 1)

    async def wait_next(self) -> int:
        """Wait until the next deadline; return how many periods it consumed (1, or more after skipping).

        On time: sleeps until ``t0 + (ticks + 1) * period`` and returns 1. Late by less than a period:
        returns 1 at once (after yielding to the event loop). Late by ``m`` whole periods or more: advances
        the tick count by ``1 + m`` so the next deadline is in the future again, adds ``m`` to
        :attr:`late_ticks` and returns ``1 + m``.
        """
        target = self.next_deadline
        now = self._clock()
        if now < target:
            await self._sleep(target - now)
            self.ticks += 1
            return 1
        behind = int((now - target) / self.period + 1e-9)  # whole periods missed (robust to rounding)
        self.ticks += 1 + behind
        self.late_ticks += behind
        await self._sleep(0)  # always give the event loop a turn, even when late
        return 1 + behind
