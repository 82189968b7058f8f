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
import concurrent.futures
import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Self

import numpy as np
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..clock import Clock, monotonic
from ..errors import ConfigError
from .format import CLASS_STYLES, S_BOLD, S_DIM, level_index, prob_bar, sparkline
from .keys import KeyReader
from .navigation import KEYS_HELP, Navigator
from .snapshot import PipelineSnapshot, StreamDetail
from .streamview import StreamView
from .table import (
    DashboardRenderer,
    TableControls,
    page_count,
    render,
    render_header,
    rows_per_page,
    sort_streams,
    stream_rank,
    visible_streams,
)

if TYPE_CHECKING:
    from ..model import ModelBundle
    from .inspect import Inspection, WindowInspector

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
    "visible_streams",
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
        detail_fn: ``detail_fn(stream_id)`` returns the :class:`StreamDetail` the stream view shows (e.g.
            ``pipeline.stream_detail``); called once per frame, only while a stream view is open. None: the
            stream view shows what the snapshot holds (no signal).
        bundle: the model bundle, for the stream view's spectrogram and attention (built on first use).
        keys: read keys from standard input; None = when stdin and the console are terminals. Without keys
            the display is the plain table whose pages turn on their own.
        on_quit: called when ``q`` is pressed on the table; default: raise SIGINT in this process, i.e. exactly
            what Ctrl-C does.

    Keys (when reading them): see :data:`~streamemg.ui.navigation.KEYS_HELP`; a key redraws at once.

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
        detail_fn: Callable[[str], StreamDetail | None] | None = None,
        bundle: ModelBundle | None = None,
        keys: bool | None = None,
        on_quit: Callable[[], None] | None = None,
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
        self.detail_fn = detail_fn
        self.bundle = bundle
        self.keys = keys
        self.on_quit = on_quit if on_quit is not None else _raise_sigint
        self.nav = Navigator()
        self._reader: KeyReader | None = None
        self._inspector: WindowInspector | None = None
        self._inspector_failed = False
        self._inspection: tuple[tuple[str, int], Inspection] | None = None  # the newest finished one
        self._inspecting: tuple[tuple[str, int], concurrent.futures.Future[Inspection]] | None = None
        self._inspect_pool: concurrent.futures.ThreadPoolExecutor | None = None
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
        want_keys = self.keys if self.keys is not None else (self.console.is_terminal and _stdin_is_terminal())
        if want_keys:
            self._reader = KeyReader(self.on_key).__enter__()
            if not self._reader.active:
                self._reader = None
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
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        pool, self._inspect_pool = self._inspect_pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
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

    @property
    def reading_keys(self) -> bool:
        """True while keys are read from the terminal."""
        return self._reader is not None and self._reader.active

    # -------------------------------------------------------------------------------- keys
    def on_key(self, key: str) -> None:
        """Apply one key (see :class:`Navigator`) and redraw at once. Safe to call without a terminal (tests)."""
        if self._closed or self._failure is not None:
            return
        snap = self.last_snapshot
        if snap is None:
            return
        try:
            order = [st.stream_id for st in visible_streams(snap, self.nav.active_filter)]
            per_page = rows_per_page(snap, self._height()) or len(order) or 1
            self.nav.handle(key, order, per_page)
            if self.nav.editing is not None or key == "/":  # the filter changed: keep the selection on a match
                self.nav.sync([st.stream_id for st in visible_streams(snap, self.nav.active_filter)])
            if self.nav.quit_requested:
                self.nav.quit_requested = False
                self.on_quit()
            if self._live is not None and self._live.is_started:
                self.refresh()
        except Exception as exc:  # a key must never take the display down silently
            self._failure = exc
            self._stop_live()
            log.error("dashboard key handling failed: %s", exc, exc_info=True)
            if self._task is not None:
                self._task.cancel()

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
        live.update(self._view(snapshot, note), refresh=True)
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

    def _height(self) -> int | None:
        return self.console.size.height if (self.screen or self.console.is_terminal) else None

    def _view(self, snapshot: PipelineSnapshot, note: str) -> RenderableType:
        """The frame for the current screen: the table, a stream view or the keys."""
        height = self._height()
        nav = self.nav
        if self._reader is None and self.keys is not True:  # no keys: today's self-paging table
            return self.renderer.render(snapshot, height=height, page=self.page_index(), note=note, page_s=self.page_s)
        if nav.screen != "stream":  # a stream view stays on its stream, even one that left (it says so)
            nav.sync([st.stream_id for st in visible_streams(snapshot, nav.active_filter)])
        if nav.screen == "stream" and nav.selected is not None:
            detail = self._detail(snapshot, nav.selected)
            return StreamView(detail, self._inspect(detail), trained=snapshot.trained, note=note, height=height)
        if nav.screen == "help":
            return Group(self.renderer.header(snapshot), _help_panel())
        controls = TableControls(
            selected=nav.selected,
            name_filter=nav.active_filter,
            editing=nav.editing is not None,
            follow_selection=nav.interacted,
        )
        return self.renderer.render(
            snapshot, height=height, page=self.page_index(), note=note, page_s=self.page_s, controls=controls
        )

    def _detail(self, snapshot: PipelineSnapshot, stream_id: str) -> StreamDetail | None:
        if self.detail_fn is not None:
            return self.detail_fn(stream_id)
        row = next((st for st in snapshot.streams if st.stream_id == stream_id), None)
        if row is None:
            return None
        empty = np.zeros((0, row.n_channels), dtype=np.float32)
        return StreamDetail(row, tuple(f"ch{i + 1}" for i in range(row.n_channels)), "uV", {}, empty, row.fs)

    def _inspect(self, detail: StreamDetail | None) -> Inspection | None:
        """The model's view of the shown stream's newest window.

        Computed on a thread of its own with one torch thread (never on the event loop: a forward pass there
        could stall ingest, and torch's thread pool spins when the machine is busy), once per new window of
        the shown stream; until it is ready the previous window's view of the same stream is shown.
        """
        if detail is None or self.bundle is None or self._inspector_failed:
            return None
        stream_id = detail.stream.stream_id
        running = self._inspecting
        if running is not None and running[1].done():
            self._inspecting = None
            try:
                self._inspection = (running[0], running[1].result())
            except Exception as exc:  # the view still shows the signal; say why the spectrogram is missing
                self._inspector_failed = True
                log.warning("stream view: the spectrogram could not be computed: %s", exc)
                return None
        last = detail.stream.last
        if detail.window is not None and last is not None and self._inspecting is None:
            key = (stream_id, last.index)
            if self._inspection is None or self._inspection[0] != key:
                quality = last.channel_quality
                ch = next((i for i, q in enumerate(quality) if q == "ok"), 0) if quality else 0
                ch = min(ch, detail.window.shape[1] - 1)
                window = np.array(detail.window[:, ch], dtype=np.float32)
                label = detail.channels[ch] if ch < len(detail.channels) else f"ch{ch + 1}"
                if self._inspect_pool is None:
                    self._inspect_pool = concurrent.futures.ThreadPoolExecutor(
                        max_workers=1, thread_name_prefix="streamemg-inspect", initializer=_one_torch_thread
                    )
                self._inspecting = (key, self._inspect_pool.submit(self._run_inspector, window, label))
        done = self._inspection
        return done[1] if done is not None and done[0][0] == stream_id else None

    def _run_inspector(self, window: np.ndarray, channel: str) -> Inspection:
        if self._inspector is None:
            from .inspect import WindowInspector

            assert self.bundle is not None
            self._inspector = WindowInspector(self.bundle)
        return self._inspector.inspect(window, channel)

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



def _one_torch_thread() -> None:
    """Initialiser of the stream view's inspection thread: one torch thread there (thread-local setting)."""
    import torch

    torch.set_num_threads(1)


def _raise_sigint() -> None:
    """What ``q`` does by default: the same signal as Ctrl-C, so the run stops by its ordinary path."""
    signal.raise_signal(signal.SIGINT)


def _stdin_is_terminal() -> bool:
    import sys

    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):
        return False


def _help_panel() -> Panel:
    table = Table.grid(padding=(0, 3))
    table.add_column(style=S_BOLD, no_wrap=True)
    table.add_column(style=S_DIM)
    for keys, what in KEYS_HELP:
        table.add_row(keys, what)
    return Panel(
        Group(table, Text("\n? or Esc closes this", style=S_DIM)),
        title=Text("keys", style=S_BOLD),
        title_align="left",
        box=box.ROUNDED,
        padding=(0, 1),
    )
