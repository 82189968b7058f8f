"""Live terminal dashboard: view (pure render functions) and driver (a ``rich`` Live refreshed by its own task).

The dashboard follows a model / view / driver split:

* **model**: :class:`~streamemg.ui.snapshot.PipelineSnapshot`, an immutable picture of the pipeline that the
  pipeline builds on demand;
* **view**: :func:`render` (and :class:`DashboardRenderer`, which holds the caches behind it), a pure function
  of a snapshot, a terminal size and a page index that returns a ``rich`` renderable (``table.py``, with the
  shared styles and text formats in ``format.py``);
* **driver**: :class:`Dashboard`, an async context manager whose own named task takes a snapshot, renders it
  and refreshes a ``rich.live.Live`` at a fixed rate on absolute deadlines, and measures its own CPU cost.

Layout (top to bottom)::

    ╭ streamemg ─────────────────────────────────────────────────────────────────────╮
    │ device · model · trained/UNTRAINED · batch mean/max of max_batch · uptime       │
    │ streams · windows · windows/s · dropped windows / samples                       │
    │ status counts │ label counts (the summary that stays useful at 256+ streams)     │
    ╰────────────────────────────────────────────────────────────────────────────────╯
     Stream  Source  fs Hz  Ch  Status  Level  Win  Normal  ALS  Myopathy  Label  p50/p99 ms  win/s  drop s/w
     ... one row per stream, problems first (reconnecting, stale, withheld), then by name, paged ...
    ✗ recent errors (newest last)
    outputs <sink> <n> dropped · ...
    Ctrl-C to stop │ page 2/7 · rows 41-80 of 256 │ ...

Reading a row:

* ``Level``: the signal's RMS level per display bin (oldest left) as a sparkline on a fixed logarithmic
  scale from 1 µV (``▁``) to 2 mV (``█``), the same for every stream, so a flat or disconnected electrode
  reads as a low or empty line and clipping as a full one; ``×`` marks a bin holding NaN/Inf.
* ``Win``: the newest window's class probabilities as three one-cell bars (Normal, ALS, Myopathy).
* ``Normal`` / ``ALS`` / ``Myopathy``: the rolling (smoothed) probability of each class, bar and percent.
* ``Label``: the rolling label and its confidence, ``withheld: <reason>`` when the quality gate withheld it,
  or ``untrained`` when the model was never trained on real data: an untrained model's numbers are shown
  greyed out and its label column never names a class, so it cannot be read as a diagnosis.

Rendering cost: the stream table is emitted as pre-measured ``Segment``s (no ``rich.table.Table`` layout
pass, neighbouring pieces of equal style merged), only the rows of the visible page are built, and styles,
column layouts, bar glyphs, sparklines, natural-sort keys and whole rows of unchanged streams are cached.
With 256 streams at 160 x 50 a frame (sort, summary, one page of rows, rich's layout into terminal output)
costs about 2-3 ms of CPU, about 1 % of one core at 4 Hz (measured in ``tests/ui/test_dashboard.py``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

from rich.console import Console
from rich.live import Live

from ..clock import Clock, monotonic
from ..errors import ConfigError
from .format import CLASS_STYLES, level_index, prob_bar, sparkline
from .snapshot import PipelineSnapshot
from .table import DashboardRenderer, page_count, render, render_header, rows_per_page, sort_streams, stream_rank

__all__ = [
    "CLASS_STYLES",
    "Dashboard",
    "DashboardRenderer",
    "level_index",
    "page_count",
    "prob_bar",
    "render",
    "render_header",
    "rows_per_page",
    "sort_streams",
    "sparkline",
    "stream_rank",
]

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------- the driver
class Dashboard:
    """Drives a ``rich`` Live display of :func:`render` at a fixed rate from its own named task.

    Use as an async context manager around the work it watches::

        async with Dashboard(pipeline.snapshot, refresh_hz=4.0):
            await pipeline.run()

    Each refresh takes a snapshot, renders it and writes the frame; frames are paced on absolute deadlines
    (``t0 + k / refresh_hz``), and a late frame is skipped rather than bunched, so the display never competes
    with ingest or inference in a burst. ``snapshot_fn`` must be synchronous and cheap (it runs on the event
    loop). When the console is a terminal the display uses the alternate screen (restored on exit) and the
    stream table is paged to the terminal height; the page advances every ``page_s`` seconds.

    Exit is idempotent. If a refresh fails, the display is stopped at once (the terminal is restored), the
    error is logged, and it is raised again by :meth:`wait` and on exiting the context (unless another
    exception is already leaving it), so a failure is never swallowed. Under a TaskGroup,
    ``tg.create_task(dashboard.wait())`` lets a dashboard failure cancel the group.

    Args:
        snapshot_fn: returns the current :class:`PipelineSnapshot`; sync, cheap, called once per frame.
        refresh_hz: frames per second (0 < refresh_hz <= 60).
        console: the console to draw on (default: a new ``Console()`` on stdout).
        clock: monotonic seconds; paces the frames, rotates the pages and measures wall time for the cost.
        page_s: seconds each page of streams stays up before the next one.
        screen: use the alternate screen; None = when the console is a terminal.
        cpu_clock: CPU seconds of the calling thread (default ``time.thread_time``) to measure own cost.
        cost_window_s: ``cost_fraction`` is averaged over this much recent wall time.
        final_summary: after leaving the alternate screen, print the last header (totals and label counts).

    Attributes:
        refreshes: frames drawn so far.
        skipped: frames skipped because a deadline was missed by more than one period.
        cpu_seconds: CPU time (s) spent in refreshes so far (snapshot + render + terminal write).
        last_cpu_s: CPU time (s) of the latest refresh.
    """

    def __init__(
        self,
        snapshot_fn: Callable[[], PipelineSnapshot],
        refresh_hz: float = 4.0,
        console: Console | None = None,
        clock: Clock = monotonic,
        *,
        page_s: float = 5.0,
        screen: bool | None = None,
        cpu_clock: Callable[[], float] = time.thread_time,
        cost_window_s: float = 10.0,
        final_summary: bool = True,
    ) -> None:
        if not (isinstance(refresh_hz, (int, float)) and math.isfinite(refresh_hz) and 0 < refresh_hz <= 60):
            raise ConfigError(
                f"Dashboard refresh_hz={refresh_hz!r}: give a rate above 0 and at most 60 frames per second, e.g. 4"
            )
        if not (isinstance(page_s, (int, float)) and math.isfinite(page_s) and page_s > 0):
            raise ConfigError(f"Dashboard page_s={page_s!r}: give a positive number of seconds per page, e.g. 5")
        if not (isinstance(cost_window_s, (int, float)) and math.isfinite(cost_window_s) and cost_window_s > 0):
            raise ConfigError(f"Dashboard cost_window_s={cost_window_s!r}: give a positive number of seconds, e.g. 10")
        self.snapshot_fn = snapshot_fn
        self.refresh_hz = float(refresh_hz)
        self.period = 1.0 / self.refresh_hz
        self.console = console if console is not None else Console()
        self.clock = clock
        self.page_s = float(page_s)
        self.screen = self.console.is_terminal if screen is None else bool(screen)
        self.cpu_clock = cpu_clock
        self.cost_window_s = float(cost_window_s)
        self.final_summary = final_summary
        self.renderer = DashboardRenderer()
        self.refreshes = 0
        self.skipped = 0
        self.cpu_seconds = 0.0
        self.last_cpu_s = 0.0
        self.last_snapshot: PipelineSnapshot | None = None
        self._costs: collections.deque[tuple[float, float]] = collections.deque()  # (wall time, cpu s)
        self._live: Live | None = None
        self._task: asyncio.Task[None] | None = None
        self._t0 = 0.0
        self._failure: BaseException | None = None
        self._closed = False

    # -------------------------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> Self:
        if self._live is not None or self._closed:
            raise RuntimeError("a Dashboard can be entered only once")
        self._live = Live(
            console=self.console,
            auto_refresh=False,
            screen=self.screen,
            redirect_stdout=False,
            redirect_stderr=False,
            transient=False,
        )
        self._t0 = self.clock()
        self._live.start()
        try:
            self.refresh()  # the first frame at once, so a broken snapshot_fn fails here, visibly
        except BaseException:
            self._stop_live()
            self._closed = True
            raise
        self._task = asyncio.create_task(self._run(), name="dashboard")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
        if exc_type is None and self._failure is not None:
            raise self._failure

    async def aclose(self) -> None:
        """Stop refreshing and restore the terminal. Idempotent; does not raise a refresh failure."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(task, return_exceptions=True)
        self._stop_live()

    async def wait(self) -> None:
        """Wait until the refresh task ends; raises its failure if it failed (returns if it was stopped)."""
        task = self._task
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
        if self._failure is not None:
            raise self._failure

    @property
    def running(self) -> bool:
        """True while the refresh task is alive."""
        return self._task is not None and not self._task.done()

    @property
    def cost_fraction(self) -> float:
        """CPU time spent refreshing divided by wall time, over the last ``cost_window_s`` seconds.

        0.01 means the dashboard used 1 % of one core. 0.0 before any wall time has passed.
        """
        now = self.clock()
        self._prune_costs(now)
        span = min(now - self._t0, self.cost_window_s)
        if span <= 0:
            return 0.0
        return sum(c for _, c in self._costs) / span

    def page_index(self) -> int:
        """The page to show now (it advances every ``page_s`` seconds; rendering wraps it around)."""
        return max(0, int((self.clock() - self._t0) // self.page_s))

    # -------------------------------------------------------------------------------- frames
    def refresh(self) -> None:
        """Draw one frame now: snapshot, render, write; its CPU time is added to the cost figures."""
        live = self._live
        if live is None:
            raise RuntimeError("Dashboard.refresh() needs the dashboard to be entered (async with Dashboard(...))")
        cpu0 = self.cpu_clock()
        snapshot = self.snapshot_fn()
        self.last_snapshot = snapshot
        note = f"dashboard {self.cost_fraction:.1%} CPU"
        height = self.console.size.height if (self.screen or self.console.is_terminal) else None
        view = self.renderer.render(snapshot, height=height, page=self.page_index(), note=note, page_s=self.page_s)
        live.update(view, refresh=True)
        cpu = max(0.0, self.cpu_clock() - cpu0)
        self.refreshes += 1
        self.last_cpu_s = cpu
        self.cpu_seconds += cpu
        now = self.clock()
        self._costs.append((now, cpu))
        self._prune_costs(now)

    async def _run(self) -> None:
        deadline = self._t0 + self.period
        try:
            while True:
                delay = deadline - self.clock()
                await asyncio.sleep(delay if delay > 0 else 0)
                self.refresh()
                deadline += self.period
                behind = self.clock() - deadline
                if behind > self.period:  # the loop stalled: skip the missed frames instead of bunching them
                    missed = math.floor(behind / self.period)
                    deadline += missed * self.period
                    self.skipped += missed
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._failure = exc
            self._stop_live()
            log.error("dashboard refresh failed: %s", exc, exc_info=True)
            raise

    def _prune_costs(self, now: float) -> None:
        limit = now - self.cost_window_s
        costs = self._costs
        while costs and costs[0][0] < limit:
            costs.popleft()

    def _stop_live(self) -> None:
        live = self._live
        if live is None or not live.is_started:
            return
        try:
            live.stop()
        finally:
            if self.screen and self.final_summary and self.last_snapshot is not None and self._failure is None:
                with contextlib.suppress(Exception):  # a summary is a courtesy; never mask the real outcome
                    self.console.print(self.renderer.header(self.last_snapshot))

