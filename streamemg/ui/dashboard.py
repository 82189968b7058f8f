"""Live terminal dashboard: view (pure render functions) and driver (a ``rich`` Live refreshed by its own task).

The dashboard follows a model / view / driver split:

* **model**: :class:`~streamemg.ui.snapshot.PipelineSnapshot`, an immutable picture of the pipeline that the
  pipeline builds on demand;
* **view**: :func:`render` (and :class:`DashboardRenderer`, which holds the caches behind it), a pure function
  of a snapshot, a terminal size and a page index that returns a ``rich`` renderable;
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
costs about 2-3 ms of CPU, about 1 % of one core at 4 Hz (measured in ``tests/test_dashboard.py``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import TracebackType
from typing import Literal, Self

from rich import box
from rich.cells import cell_len, set_cell_size
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.panel import Panel
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

from ..clock import Clock, monotonic
from ..errors import ConfigError
from ..types import CLASS_NAMES, StreamStatus
from .snapshot import PipelineSnapshot, StreamSnapshot

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

# ----------------------------------------------------------------------------------------------- styles
# Style objects are built once: parsing style strings per cell would dominate the render cost.
CLASS_STYLES: dict[str, Style] = {
    "Normal": Style(color="green"),
    "ALS": Style(color="magenta"),
    "Myopathy": Style(color="blue"),
}
_DEFAULT_CLASS_STYLE = Style(color="cyan")
_S_NONE = Style()
_S_BOLD = Style(bold=True)
_S_DIM = Style(dim=True)
_S_HEAD = Style(bold=True, underline=True)
_S_GREY = Style(color="bright_black")
_S_OK = Style(color="green")
_S_WARN = Style(color="yellow")
_S_WARN_BOLD = Style(color="yellow", bold=True)
_S_BAD = Style(color="red", bold=True)
_S_ERR = Style(color="red")
_S_LEVEL = Style(color="cyan")
_S_UNTRAINED = Style(color="black", bgcolor="yellow", bold=True)
_S_BANNER = Style(color="white", bgcolor="red", bold=True)
_S_SEP = Style(color="bright_black")

_STATUS_STYLE: dict[StreamStatus, Style] = {
    StreamStatus.LIVE: Style(color="green"),
    StreamStatus.CONNECTING: Style(color="cyan"),
    StreamStatus.STALE: Style(color="yellow", bold=True),
    StreamStatus.RECONNECTING: Style(color="red", bold=True),
    StreamStatus.ENDED: Style(dim=True),
}
_STATUS_SYMBOL: dict[StreamStatus, str] = {
    StreamStatus.LIVE: "●",
    StreamStatus.CONNECTING: "◌",
    StreamStatus.STALE: "◐",
    StreamStatus.RECONNECTING: "↻",
    StreamStatus.ENDED: "■",
}

#: Eight block heights, lowest first: sparklines and the one-cell window bars.
BLOCKS = "▁▂▃▄▅▆▇█"
#: Partial horizontal blocks in eighths (index 0 = nothing): the probability bars.
_EIGHTHS = ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")

#: Fixed sparkline scale (µV RMS): LEVEL_FLOOR_UV maps to the lowest block, LEVEL_CEIL_UV to the highest.
LEVEL_FLOOR_UV = 1.0
LEVEL_CEIL_UV = 2000.0
_LOG_FLOOR = math.log10(LEVEL_FLOOR_UV)
_LOG_SPAN = math.log10(LEVEL_CEIL_UV) - _LOG_FLOOR

#: Decision latency (ms) above which the p50/p99 figures turn yellow, then red.
LATENCY_WARN_MS = 50.0
LATENCY_BAD_MS = 250.0

#: Footer: at most this many recent errors are shown.
MAX_ERRORS_SHOWN = 3

_Align = Literal["left", "right"]


# ----------------------------------------------------------------------------------------------- small pure functions
def level_index(level_uv: float) -> int:
    """Block index 0..7 of one RMS level (µV) on the fixed log scale; -1 for 0 µV or below, -2 for NaN/Inf."""
    if not math.isfinite(level_uv):
        return -2
    if level_uv <= 0.0:
        return -1
    x = (math.log10(level_uv) - _LOG_FLOOR) / _LOG_SPAN
    return min(7, max(0, round(x * 7)))


@lru_cache(maxsize=8192)
def sparkline(levels: tuple[float, ...], width: int) -> str:
    """The newest ``width`` RMS levels (µV, oldest first) as block characters, right-aligned.

    Missing history is padded with spaces on the left; 0 µV is a space; NaN/Inf is ``×``.
    Returns a string of exactly ``width`` cells.
    """
    tail = levels[-width:] if width > 0 else ()
    chars = []
    for v in tail:
        i = level_index(v)
        chars.append(BLOCKS[i] if i >= 0 else (" " if i == -1 else "×"))
    return " " * (width - len(tail)) + "".join(chars)


@lru_cache(maxsize=1024)
def _bar_for_eighths(n_eighths: int, width: int) -> str:
    full, rem = divmod(max(0, min(n_eighths, width * 8)), 8)
    s = "█" * full + _EIGHTHS[rem]
    return s + " " * (width - len(s))


def prob_bar(p: float, width: int) -> str:
    """A probability in [0, 1] as a horizontal bar of exactly ``width`` cells (eighth-cell resolution).

    NaN gives a blank bar.
    """
    if not math.isfinite(p):
        return " " * width
    return _bar_for_eighths(round(min(1.0, max(0.0, p)) * width * 8), width)


def _block(p: float) -> str:
    """A probability as one block character (``▁`` for 0 .. ``█`` for 1); ``·`` for NaN."""
    if not math.isfinite(p):
        return "·"
    return BLOCKS[min(7, max(0, round(p * 7)))]


def _fit(text: str, width: int, align: _Align = "left") -> str:
    """``text`` cut (with an ellipsis) or padded to exactly ``width`` terminal cells."""
    n = len(text) if text.isascii() else cell_len(text)
    if n > width:
        if width <= 1:
            return set_cell_size(text, width)
        return set_cell_size(text, width - 1) + "…"
    pad = " " * (width - n)
    return text + pad if align == "left" else pad + text


def _fmt_rate(fs: float) -> str:
    """Sampling rate compactly: 23437.5 -> ``23.4k``, 10000 -> ``10k``, 500 -> ``500``."""
    if not math.isfinite(fs):
        return "?"
    if fs >= 1000.0:
        return f"{fs / 1000.0:.3g}k"
    return f"{fs:.0f}"


def _fmt_count(n: int) -> str:
    """A non-negative count in at most 5 characters: 12345 -> ``12k``, 3400000 -> ``3.4M``."""
    if n < 10_000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1000:.0f}k"
    return f"{n / 1_000_000:.1f}M"


def _fmt_ms(x: float) -> str:
    if not math.isfinite(x):
        return "–"
    return f"{x:.1f}" if x < 1000 else f"{x:.0f}"


def _fmt_duration(s: float) -> str:
    """Seconds as ``H:MM:SS``."""
    if not math.isfinite(s) or s < 0:
        return "–"
    s_int = int(s)
    return f"{s_int // 3600}:{s_int % 3600 // 60:02d}:{s_int % 60:02d}"


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "(empty message)"


# ----------------------------------------------------------------------------------------------- sorting and paging
_DIGITS = re.compile(r"(\d+)")


@lru_cache(maxsize=65536)
def _natural_key(name: str) -> tuple[str | int, ...]:
    """Sort key putting ``s2`` before ``s10``: text and number parts alternate, so positions compare alike."""
    parts = _DIGITS.split(name)
    return tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts))


def _withheld(s: StreamSnapshot) -> bool:
    est = s.last
    return est is not None and est.quality != "ok"


def stream_rank(s: StreamSnapshot) -> int:
    """Sort rank of a stream: problems first.

    0 reconnecting, 1 stale, 2 label withheld by the quality gate, 3 everything else (live, connecting),
    4 ended (finished streams sink to the bottom).
    """
    if s.status is StreamStatus.RECONNECTING:
        return 0
    if s.status is StreamStatus.STALE:
        return 1
    if s.status is StreamStatus.ENDED:
        return 4
    if _withheld(s):
        return 2
    return 3


def sort_streams(streams: Iterable[StreamSnapshot]) -> list[StreamSnapshot]:
    """Streams in display order: by :func:`stream_rank`, then by name (natural order), then by id."""
    return sorted(streams, key=lambda s: (stream_rank(s), _natural_key(s.name), s.stream_id))


def _header_height(snapshot: PipelineSnapshot) -> int:
    # panel borders (2) + device/model line + totals line + summary line (+ untrained banner)
    return 5 + (0 if snapshot.trained else 1)


def _footer_height(snapshot: PipelineSnapshot) -> int:
    # errors shown + outputs line + keys line
    return min(len(snapshot.errors), MAX_ERRORS_SHOWN) + 2


def rows_per_page(snapshot: PipelineSnapshot, height: int | None) -> int | None:
    """How many stream rows fit in ``height`` terminal lines (at least 1); None = no paging (height None)."""
    if height is None:
        return None
    return max(1, height - _header_height(snapshot) - 1 - _footer_height(snapshot))


def page_count(n_streams: int, per_page: int | None) -> int:
    """Number of pages for ``n_streams`` rows at ``per_page`` rows each (1 when not paging)."""
    if per_page is None or n_streams <= per_page:
        return 1
    return -(-n_streams // per_page)


# ----------------------------------------------------------------------------------------------- table layout
@dataclass(frozen=True, slots=True)
class _Column:
    """One column of the stream table.

    Attributes:
        key: cell builder selector; header: header text; width: minimum width (cells);
        priority: columns with the lowest priority are dropped first when the terminal is narrow (columns of
            equal priority are dropped together);
        max_width: how far the column may grow when there is room (0 = fixed width); align: text alignment.
    """

    key: str
    header: str
    width: int
    priority: int
    max_width: int = 0
    align: _Align = "left"


_PROB_WIDTH = 9  # bar (4 cells, eighth resolution) + space + "100%"

_COLUMNS: tuple[_Column, ...] = (
    _Column("name", "Stream", 14, 100, max_width=40),
    _Column("source", "Source", 12, 30, max_width=48),
    _Column("rate", "fs Hz", 5, 40, align="right"),
    _Column("ch", "Ch", 2, 35, align="right"),
    _Column("status", "Status", 14, 85, max_width=48),
    _Column("level", "Level", 8, 60, max_width=24),
    _Column("win", "Win", 3, 70),
    *(_Column(f"p:{c}", c, _PROB_WIDTH, 90) for c in CLASS_NAMES),
    _Column("label", "Label", 18, 95, max_width=30),
    _Column("latency", "p50/p99 ms", 11, 80, align="right"),
    _Column("wps", "win/s", 5, 50, align="right"),
    _Column("drops", "drop s/w", 9, 55, align="right"),
)
#: How spare room is handed out: each step grows one column up to a width, in this order (status detail
#: first, then names, labels and sources); what is left is shared one cell at a time up to max_width.
_GROWTH: tuple[tuple[str, int], ...] = (
    ("label", 22),
    ("status", 26),
    ("name", 18),
    ("label", 26),
    ("source", 22),
    ("status", 38),
    ("level", 16),
    ("name", 24),
    ("source", 32),
    ("level", 24),
)
_GAP = 1
_MARGIN = 1


@lru_cache(maxsize=64)
def _layout(width: int) -> tuple[tuple[_Column, int], ...]:
    """Columns that fit ``width`` cells, each with its resolved width.

    Narrow terminals drop the lowest-priority columns; spare room is handed out by the ``_GROWTH`` steps,
    then shared one cell at a time among the growable columns up to their ``max_width``.
    """
    cols = list(_COLUMNS)

    def total(cs: Sequence[_Column]) -> int:
        return _MARGIN + sum(c.width for c in cs) + _GAP * (len(cs) - 1)

    while len(cols) > 1 and total(cols) > width:
        lowest = min(c.priority for c in cols)  # equal priorities go together (the three class columns)
        keep = [c for c in cols if c.priority != lowest]
        cols = keep if keep else cols[:1]
    widths = {c.key: c.width for c in cols}
    spare = width - total(cols)
    for key, target in _GROWTH:
        if key in widths:
            extra = max(0, min(spare, target - widths[key]))
            widths[key] += extra
            spare -= extra
    growable = [c for c in cols if c.max_width]
    while spare > 0:
        handed = 0
        for c in growable:
            if spare > 0 and widths[c.key] < c.max_width:
                widths[c.key] += 1
                spare -= 1
                handed += 1
        if handed == 0:
            break
    if len(cols) == 1 and total(cols) > width:  # absurdly narrow: shrink the last column to fit
        widths[cols[0].key] = max(1, width - _MARGIN)
    return tuple((c, widths[c.key]) for c in cols)


# ----------------------------------------------------------------------------------------------- the view
_Cell = list[tuple[str, Style]]


class DashboardView:
    """The renderable returned by :func:`render`: lays the dashboard out when ``rich`` renders it.

    Width and height default to the console's (``options.max_width`` and ``options.height``, which ``Live``
    in screen mode sets to the terminal size); give them explicitly for a fixed layout.
    """

    __slots__ = ("height", "note", "page", "page_s", "renderer", "snapshot", "width")

    def __init__(
        self,
        renderer: DashboardRenderer,
        snapshot: PipelineSnapshot,
        width: int | None,
        height: int | None,
        page: int,
        note: str | None,
        page_s: float | None = None,
    ) -> None:
        self.renderer = renderer
        self.snapshot = snapshot
        self.width = width
        self.height = height
        self.page = page
        self.note = note
        self.page_s = page_s

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width if self.width is None else min(self.width, options.max_width)
        height = options.height if self.height is None else self.height
        yield from self.renderer.compose(
            self.snapshot, width=width, height=height, page=self.page, note=self.note, page_s=self.page_s
        )


class DashboardRenderer:
    """Pure rendering of :class:`PipelineSnapshot` with caches (rows of unchanged streams, glyphs, sort keys).

    Output depends only on the arguments; the caches only make repeated frames cheaper. One instance per
    display (the :class:`Dashboard` driver owns one); :func:`render` uses a shared module-level instance.

    Args:
        row_cache_size: rows kept in the row cache (a row is reused when its stream's snapshot is unchanged).
    """

    def __init__(self, row_cache_size: int = 1024) -> None:
        self._row_cache: dict[tuple[int, bool, StreamSnapshot], list[Segment]] = {}
        self._row_cache_size = row_cache_size

    # -------------------------------------------------------------------------------- public
    def render(
        self,
        snapshot: PipelineSnapshot,
        *,
        width: int | None = None,
        height: int | None = None,
        page: int = 0,
        note: str | None = None,
        page_s: float | None = None,
    ) -> RenderableType:
        """See :func:`render`."""
        return DashboardView(self, snapshot, width, height, page, note, page_s)

    def compose(
        self,
        snapshot: PipelineSnapshot,
        *,
        width: int,
        height: int | None,
        page: int = 0,
        note: str | None = None,
        page_s: float | None = None,
    ) -> Iterator[RenderableType | Segment]:
        """The dashboard at a known size, as renderables (header, footer) and raw segments (the table).

        Args:
            snapshot: the pipeline state to show.
            width: terminal width (cells).
            height: terminal height (lines); None = show every stream (no paging).
            page: page index (taken modulo the page count).
            note: extra text for the footer's key line (e.g. the driver's own CPU cost).
            page_s: seconds between page changes, shown in the footer when there are several pages.
        """
        width = max(20, width)
        yield self.header(snapshot, width=width)
        ordered = sort_streams(snapshot.streams)
        per_page = rows_per_page(snapshot, height)
        n_pages = page_count(len(ordered), per_page)
        page = page % n_pages
        if per_page is None:
            visible = ordered
            first = 0
        else:
            first = page * per_page
            visible = ordered[first : first + per_page]
        layout = _layout(width)
        yield from self._table_header(layout)
        for s in visible:
            yield from self._row(s, layout, width, snapshot.trained)
        yield from self._footer(snapshot, page, n_pages, first, len(visible), note, page_s)

    def header(self, snapshot: PipelineSnapshot, *, width: int | None = None) -> RenderableType:
        """The header panel: device, model, trained state, batching, totals and the status/label summary."""
        sep = (" │ ", _S_SEP)
        if snapshot.trained:
            model_state: list[tuple[str, Style]] = [(" ✓ trained", _S_OK)]
        else:
            model_state = [("  ", _S_NONE), (" UNTRAINED ", _S_UNTRAINED)]
        line1 = Text.assemble(
            ("device ", _S_DIM),
            (snapshot.device, _S_BOLD),
            sep,
            ("model ", _S_DIM),
            (snapshot.model_name, _S_BOLD),
            *model_state,
            sep,
            ("batch ", _S_DIM),
            (f"mean {snapshot.batch_mean:.1f} · max {snapshot.batch_max} of {snapshot.max_batch}", _S_NONE),
            sep,
            ("uptime ", _S_DIM),
            (_fmt_duration(snapshot.uptime_s), _S_NONE),
            no_wrap=True,
            overflow="ellipsis",
        )
        dropped_samples = sum(s.dropped_samples for s in snapshot.streams)
        rejected = sum(s.rejected for s in snapshot.streams)
        line2 = Text.assemble(
            ("streams ", _S_DIM),
            (f"{len(snapshot.streams):,}", _S_BOLD),
            sep,
            ("windows ", _S_DIM),
            (f"{snapshot.windows_total:,}", _S_NONE),
            sep,
            (f"{snapshot.windows_per_s:,.1f}", _S_BOLD),
            (" windows/s", _S_DIM),
            sep,
            ("dropped ", _S_DIM),
            (f"{snapshot.dropped_windows:,}", _S_WARN if snapshot.dropped_windows else _S_NONE),
            (" windows · ", _S_DIM),
            (f"{dropped_samples:,}", _S_WARN if dropped_samples else _S_NONE),
            (" samples", _S_DIM),
            *([(" · ", _S_DIM), (f"{rejected:,}", _S_WARN), (" chunks rejected", _S_DIM)] if rejected else []),
            no_wrap=True,
            overflow="ellipsis",
        )
        lines: list[RenderableType] = []
        if not snapshot.trained:
            lines.append(
                Text(
                    " UNTRAINED MODEL: its probabilities are placeholders, not a diagnosis ",
                    style=_S_BANNER,
                    no_wrap=True,
                    overflow="ellipsis",
                )
            )
        lines += [line1, line2, self._summary(snapshot)]
        panel = Panel(
            Group(*lines),
            title=Text("streamemg", style=_S_BOLD),
            title_align="left",
            box=box.ROUNDED,
            padding=(0, 1),
            width=width,
            border_style=_S_BAD if not snapshot.trained else _S_SEP,
        )
        return panel

    # -------------------------------------------------------------------------------- pieces
    @staticmethod
    def _summary(snapshot: PipelineSnapshot) -> Text:
        """Counts per status and per label: the overview that stays readable with hundreds of streams."""
        status_counts: collections.Counter[StreamStatus] = collections.Counter()
        label_counts: collections.Counter[str] = collections.Counter()
        for s in snapshot.streams:
            status_counts[s.status] += 1
            est = s.last
            if est is None:
                label_counts["waiting"] += 1
            elif not (snapshot.trained and est.trained):
                label_counts["untrained"] += 1
            elif est.label is None:
                label_counts["withheld"] += 1
            else:
                label_counts[est.label] += 1
        parts: list[tuple[str, Style]] = [("status ", _S_DIM)]
        first = True
        for st in StreamStatus:
            if status_counts[st]:
                if not first:
                    parts.append((" · ", _S_DIM))
                parts += [(str(status_counts[st]), _S_BOLD), (f" {st.value}", _STATUS_STYLE[st])]
                first = False
        if first:
            parts.append(("no streams yet", _S_DIM))
        parts += [(" │ ", _S_SEP), ("labels ", _S_DIM)]
        order = [*CLASS_NAMES, *sorted(k for k in label_counts if k not in CLASS_NAMES)]
        first = True
        for key in order:
            n = label_counts.get(key, 0)
            if not n and (key not in CLASS_NAMES or not snapshot.trained):
                continue
            if not first:
                parts.append((" · ", _S_DIM))
            style = CLASS_STYLES.get(key, _S_WARN if key in ("withheld", "untrained") else _S_DIM)
            if key in CLASS_NAMES and not snapshot.trained:
                style = _S_GREY
            parts += [(str(n), _S_BOLD), (f" {key}", style)]
            first = False
        return Text.assemble(*parts, no_wrap=True, overflow="ellipsis")

    @staticmethod
    def _table_header(layout: tuple[tuple[_Column, int], ...]) -> Iterator[Segment]:
        yield Segment(" " * _MARGIN)
        for i, (col, w) in enumerate(layout):
            if i:
                yield Segment(" " * _GAP)
            yield Segment(_fit(col.header, w, col.align), _S_HEAD)
        yield Segment.line()

    def _row(
        self, s: StreamSnapshot, layout: tuple[tuple[_Column, int], ...], width: int, trained: bool
    ) -> list[Segment]:
        key = (width, trained, s)
        cacheable = True
        try:
            cached = self._row_cache.get(key)
        except TypeError:  # an unhashable field value slipped into the snapshot: render without the cache
            cached, cacheable = None, False
        if cached is not None:
            return cached
        # Fewer segments means less work for rich (it measures and crops every segment of every frame):
        # neighbouring pieces with equal styles are merged, and a gap joins the piece before it when that
        # piece's style does not show on blanks (no background, no underline).
        texts: list[str] = [" " * _MARGIN]
        styles: list[Style] = [_S_NONE]
        for i, (col, w) in enumerate(layout):
            if i:
                if styles[-1].bgcolor is None and not styles[-1].underline:
                    texts[-1] += " " * _GAP
                else:
                    texts.append(" " * _GAP)
                    styles.append(_S_NONE)
            for text, style in self._cell(col, w, s, trained):
                if style == styles[-1]:
                    texts[-1] += text
                else:
                    texts.append(text)
                    styles.append(style)
        segs = [Segment(t, st) for t, st in zip(texts, styles, strict=True)]
        segs.append(Segment.line())
        if cacheable:
            if len(self._row_cache) >= self._row_cache_size:
                self._row_cache.clear()  # frames rebuild what they need; cheaper than LRU bookkeeping
            self._row_cache[key] = segs
        return segs

    @staticmethod
    def _cell(col: _Column, w: int, s: StreamSnapshot, trained: bool) -> _Cell:
        """One cell as (text, style) pieces whose texts add up to exactly ``w`` cells."""
        key = col.key
        est = s.last
        untrained = not trained or (est is not None and not est.trained)
        if key == "name":
            return [(_fit(s.name, w), _S_BOLD)]
        if key == "source":
            return [(_fit(s.source, w), _S_DIM)]
        if key == "rate":
            return [(_fit(_fmt_rate(s.fs), w, "right"), _S_NONE)]
        if key == "ch":
            return [(_fit(str(s.n_channels), w, "right"), _S_NONE)]
        if key == "status":
            head = f"{_STATUS_SYMBOL.get(s.status, '?')} {s.status.value}"
            style = _STATUS_STYLE.get(s.status, _S_NONE)
            head_w = min(w, cell_len(head))
            if not s.status_detail or w - head_w < 6:  # no room for a useful part of the detail
                return [(_fit(head, w), style)]
            return [(_fit(head, head_w), style), (_fit(f": {s.status_detail}", w - head_w), _S_DIM)]
        if key == "level":
            if not s.level:
                return [(_fit("·", w), _S_DIM)]
            return [(sparkline(s.level, w), _S_LEVEL)]
        if key == "win":
            if est is None:
                return [(_fit("", w), _S_NONE)]
            out: _Cell = []
            for c, p in zip(CLASS_NAMES, est.probabilities, strict=False):
                out.append((_block(p), _S_GREY if untrained else CLASS_STYLES.get(c, _DEFAULT_CLASS_STYLE)))
            n = len(out)
            if n < w:
                out.append((" " * (w - n), _S_NONE))
            elif n > w:
                out = out[:w]
            return out
        if key.startswith("p:"):
            cls = key[2:]
            if est is None:
                return [(" " * w, _S_NONE)]
            k = CLASS_NAMES.index(cls)
            p = est.rolling[k] if k < len(est.rolling) else float("nan")
            bar_w = max(1, w - 5)
            pct = "  n/a" if not math.isfinite(p) else f" {p * 100:3.0f}%"
            if untrained:
                style = _S_GREY
            else:
                style = CLASS_STYLES.get(cls, _DEFAULT_CLASS_STYLE)
                if est.label == cls:
                    style = style + _S_BOLD
            return [(prob_bar(p, bar_w), style), (_fit(pct, w - bar_w, "right"), style)]
        if key == "label":
            if est is None:
                return [(_fit("waiting…", w), _S_DIM)]
            if untrained:
                tag = "untrained"
                rest = "" if est.quality == "ok" else f" ({est.quality.replace('_', ' ')})"
                tw = min(w, len(tag))
                return [(_fit(tag, tw), _S_UNTRAINED), (_fit(rest, w - tw), _S_WARN)]
            if est.label is None:
                if est.quality == "ok":  # nothing usable yet (e.g. the rolling estimate is still empty)
                    return [(_fit("no estimate yet", w), _S_DIM)]
                return [(_fit(f"withheld: {est.quality.replace('_', ' ')}", w), _S_WARN_BOLD)]
            style = CLASS_STYLES.get(est.label, _DEFAULT_CLASS_STYLE) + _S_BOLD
            conf = f" {est.confidence * 100:.0f}%" if math.isfinite(est.confidence) else ""
            return [(_fit(est.label + conf, w), style)]
        if key == "latency":
            p99 = s.latency_p99_ms
            style = _S_NONE
            if math.isfinite(p99):
                style = _S_BAD if p99 > LATENCY_BAD_MS else (_S_WARN if p99 > LATENCY_WARN_MS else _S_NONE)
            return [(_fit(f"{_fmt_ms(s.latency_p50_ms)}/{_fmt_ms(p99)}", w, "right"), style)]
        if key == "wps":
            return [(_fit(f"{s.windows_per_s:.1f}", w, "right"), _S_NONE)]
        if key == "drops":
            bad = s.dropped_samples or s.dropped_windows
            text = f"{_fmt_count(s.dropped_samples)}/{_fmt_count(s.dropped_windows)}"
            return [(_fit(text, w, "right"), _S_WARN if bad else _S_DIM)]
        return [(" " * w, _S_NONE)]  # pragma: no cover - every column key is handled above

    @staticmethod
    def _footer(
        snapshot: PipelineSnapshot,
        page: int,
        n_pages: int,
        first: int,
        n_visible: int,
        note: str | None,
        page_s: float | None,
    ) -> Iterator[RenderableType]:
        errors = snapshot.errors[-MAX_ERRORS_SHOWN:]
        hidden = len(snapshot.errors) - len(errors)
        for i, msg in enumerate(errors):
            more = f" (+{hidden} earlier)" if i == 0 and hidden else ""
            yield Text.assemble(
                ("✗ ", _S_BAD), (_first_line(msg), _S_ERR), (more, _S_DIM), no_wrap=True, overflow="ellipsis"
            )
        parts: list[tuple[str, Style]] = [("outputs ", _S_DIM)]
        if not snapshot.sink_drops:
            parts.append(("none", _S_DIM))
        for i, (name, n) in enumerate(sorted(snapshot.sink_drops.items())):
            if i:
                parts.append((" · ", _S_DIM))
            parts += [(name, _S_NONE), (" ", _S_NONE), (f"{n:,}", _S_WARN if n else _S_DIM), (" dropped", _S_DIM)]
        yield Text.assemble(*parts, no_wrap=True, overflow="ellipsis")
        n = len(snapshot.streams)
        keys: list[tuple[str, Style]] = [("Ctrl-C", _S_BOLD), (" to stop", _S_DIM), (" │ ", _S_SEP)]
        if n_pages > 1:
            keys += [
                (f"page {page + 1}/{n_pages}", _S_BOLD),
                (f" · rows {first + 1}-{first + n_visible} of {n}", _S_DIM),
            ]
            if page_s is not None:
                keys.append((f" · pages turn every {page_s:g} s", _S_DIM))
        else:
            keys.append((f"all {n} stream{'s' if n != 1 else ''}", _S_DIM))
        keys += [(" │ ", _S_SEP), ("problems first, then by name", _S_DIM)]
        if note:
            keys += [(" │ ", _S_SEP), (note, _S_DIM)]
        yield Text.assemble(*keys, no_wrap=True, overflow="ellipsis")


_SHARED = DashboardRenderer()


def render(
    snapshot: PipelineSnapshot,
    *,
    width: int | None = None,
    height: int | None = None,
    page: int = 0,
    note: str | None = None,
    page_s: float | None = None,
) -> RenderableType:
    """The whole dashboard for one snapshot: a pure function of its arguments.

    Args:
        snapshot: the pipeline state to show.
        width: terminal width in cells; None = the console's width at render time.
        height: terminal height in lines; the stream table is paged to fit. None = the console's height
            when it has one (``Live`` in screen mode), else every stream is shown.
        page: which page of streams to show (taken modulo the page count; problem streams are on page 0).
        note: extra text for the footer's key line.
        page_s: if given, the footer says pages change every ``page_s`` seconds (when there are several).

    Returns:
        A ``rich`` renderable (print it on a Console or hand it to a ``Live``).
    """
    return _SHARED.render(snapshot, width=width, height=height, page=page, note=note, page_s=page_s)


def render_header(snapshot: PipelineSnapshot, *, width: int | None = None) -> RenderableType:
    """Only the header panel (device, model, totals, status/label summary): e.g. a final summary on exit."""
    return _SHARED.header(snapshot, width=width)


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
