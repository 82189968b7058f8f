"""The stream table: the dashboard's main view, a pure function of a snapshot, a size and a page.

Rendering cost: the stream table is emitted as pre-measured ``Segment``s (no ``rich.table.Table`` layout
pass, neighbouring pieces of equal style merged), only the rows of the visible page are built, and styles,
column layouts, bar glyphs, sparklines, natural-sort keys and whole rows of unchanged streams are cached.
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.panel import Panel
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

from ..types import CLASS_NAMES, StreamStatus
from .format import (
    CLASS_STYLES,
    DEFAULT_CLASS_STYLE,
    LATENCY_BAD_MS,
    LATENCY_WARN_MS,
    MAX_ERRORS_SHOWN,
    S_BAD,
    S_BANNER,
    S_BOLD,
    S_DIM,
    S_ERR,
    S_GREY,
    S_HEAD,
    S_LEVEL,
    S_NONE,
    S_OK,
    S_SEP,
    S_UNTRAINED,
    S_WARN,
    S_WARN_BOLD,
    STATUS_STYLE,
    STATUS_SYMBOL,
    Align,
    block,
    first_line,
    fit,
    fmt_count,
    fmt_duration,
    fmt_ms,
    fmt_rate,
    prob_bar,
    sparkline,
)
from .navigation import matches_filter
from .snapshot import PipelineSnapshot, StreamSnapshot

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


def visible_streams(snapshot: PipelineSnapshot, name_filter: str = "") -> list[StreamSnapshot]:
    """The streams the table lists, in display order: :func:`sort_streams`, then the name filter (substring,
    any case; "" = all)."""
    ordered = sort_streams(snapshot.streams)
    if name_filter:
        ordered = [s for s in ordered if matches_filter(s.name, name_filter)]
    return ordered


@dataclass(frozen=True, slots=True)
class TableControls:
    """What the keys add to the table: a selected row, a name filter and the keys line.

    Attributes:
        selected: id of the highlighted stream (None: no highlight).
        name_filter: only streams whose name contains this (any case) are listed; "" = all.
        editing: the filter is being typed: the footer shows it with a cursor.
        follow_selection: show the page that holds the selected stream (instead of the ``page`` argument).
    """

    selected: str | None = None
    name_filter: str = ""
    editing: bool = False
    follow_selection: bool = False


_SELECTED = Style(bgcolor="grey27")
_SELECTED_MARK = Style(color="bright_white", bgcolor="grey27", bold=True)


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
    align: Align = "left"


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
    _Column("qemg", "QEMG units µV ms", 20, 25, max_width=30),  # first to go when narrow
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
    ("qemg", 26),
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


# ----------------------------------------------------------------------------------------------- QEMG cell
#: Short names of the QEMG measures flagged against the normative reference (docs/qemg.md).
_QEMG_SHORT = {
    "amplitude_uv": "A", "duration_ms": "D", "phases": "Ph", "turns": "T", "thickness_ms": "Th",
    "polyphasic_pct": "Poly", "firing_hz": "F", "units": "U", "fibrillations": "fib", "positive_sharp_waves": "psw",
}
_QEMG_ARROW = {"high": "↑", "low": "↓", "present": "!"}


def _qemg_cell(q: object, w: int) -> list[tuple[str, Style]]:
    """``<units>u <amplitude>µV <duration>ms`` then the flagged measures (``A↑ D↓ fib!``) in the warning style."""
    if not isinstance(q, dict):
        return [(fit("·", w), S_DIM)]
    amp, dur = q.get("amplitude_uv"), q.get("duration_ms")
    if not q.get("units") or amp is None or dur is None:
        return [(fit("no units yet", w), S_DIM)]
    head = f"{q['units']}u {amp:.0f}µV {dur:.1f}ms"
    flags = q.get("flags") or {}
    tail = " ".join(f"{_QEMG_SHORT.get(k, k)}{_QEMG_ARROW.get(v, '?')}" for k, v in flags.items())
    hw = min(w, cell_len(head))
    if not tail or w - hw < 3:
        return [(fit(head, w), S_WARN if tail else S_NONE)]
    return [(fit(head, hw), S_NONE), (fit(" " + tail, w - hw), S_WARN)]


# ----------------------------------------------------------------------------------------------- the view
_Cell = list[tuple[str, Style]]


class DashboardView:
    """The renderable returned by :func:`render`: lays the dashboard out when ``rich`` renders it.

    Width and height default to the console's (``options.max_width`` and ``options.height``, which ``Live``
    in screen mode sets to the terminal size); give them explicitly for a fixed layout.
    """

    __slots__ = ("controls", "height", "note", "page", "page_s", "renderer", "snapshot", "width")

    def __init__(
        self,
        renderer: DashboardRenderer,
        snapshot: PipelineSnapshot,
        width: int | None,
        height: int | None,
        page: int,
        note: str | None,
        page_s: float | None = None,
        controls: TableControls | None = None,
    ) -> None:
        self.controls = controls
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
            self.snapshot,
            width=width,
            height=height,
            page=self.page,
            note=self.note,
            page_s=self.page_s,
            controls=self.controls,
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
        controls: TableControls | None = None,
    ) -> RenderableType:
        """See :func:`render`."""
        return DashboardView(self, snapshot, width, height, page, note, page_s, controls)

    def compose(
        self,
        snapshot: PipelineSnapshot,
        *,
        width: int,
        height: int | None,
        page: int = 0,
        note: str | None = None,
        page_s: float | None = None,
        controls: TableControls | None = None,
    ) -> Iterator[RenderableType | Segment]:
        """The dashboard at a known size, as renderables (header, footer) and raw segments (the table).

        Args:
            snapshot: the pipeline state to show.
            width: terminal width (cells).
            height: terminal height (lines); None = show every stream (no paging).
            page: page index (taken modulo the page count).
            note: extra text for the footer's key line (e.g. the driver's own CPU cost).
            page_s: seconds between page changes, shown in the footer when there are several pages.
            controls: selection, name filter and the keys line (None: a display without keys).
        """
        width = max(20, width)
        yield self.header(snapshot, width=width)
        ordered = visible_streams(snapshot, controls.name_filter if controls else "")
        per_page = rows_per_page(snapshot, height)
        n_pages = page_count(len(ordered), per_page)
        selected = controls.selected if controls else None
        if controls is not None and controls.follow_selection and per_page is not None and selected is not None:
            page = next((i for i, s in enumerate(ordered) if s.stream_id == selected), 0) // per_page
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
            row = self._row(s, layout, width, snapshot.trained)
            yield from (self._selected_row(row) if s.stream_id == selected else row)
        if controls is not None and controls.name_filter and not visible:
            yield Text(f" no stream name contains {controls.name_filter!r}", style=S_WARN)
        yield from self._footer(snapshot, page, n_pages, first, len(visible), note, page_s, controls, len(ordered))

    @staticmethod
    def _selected_row(row: list[Segment]) -> list[Segment]:
        """The selected row: a ``▶`` in the margin and a grey background (colours of the cells kept)."""
        body = list(Segment.apply_style(row[:-1], post_style=_SELECTED))
        if body and body[0].text.startswith(" "):
            first = body[0]
            body[0] = Segment(first.text[1:], first.style)
            body.insert(0, Segment("▶", _SELECTED_MARK))
        return [*body, row[-1]]

    def header(self, snapshot: PipelineSnapshot, *, width: int | None = None) -> RenderableType:
        """The header panel: device, model, trained state, batching, totals and the status/label summary."""
        sep = (" │ ", S_SEP)
        if snapshot.trained:
            model_state: list[tuple[str, Style]] = [(" ✓ trained", S_OK)]
        else:
            model_state = [("  ", S_NONE), (" UNTRAINED ", S_UNTRAINED)]
        line1 = Text.assemble(
            ("device ", S_DIM),
            (snapshot.device, S_BOLD),
            sep,
            ("model ", S_DIM),
            (snapshot.model_name, S_BOLD),
            *model_state,
            sep,
            ("batch ", S_DIM),
            (f"mean {snapshot.batch_mean:.1f} · max {snapshot.batch_max} of {snapshot.max_batch}", S_NONE),
            sep,
            ("uptime ", S_DIM),
            (fmt_duration(snapshot.uptime_s), S_NONE),
            no_wrap=True,
            overflow="ellipsis",
        )
        dropped_samples = sum(s.dropped_samples for s in snapshot.streams)
        rejected = sum(s.rejected for s in snapshot.streams)
        line2 = Text.assemble(
            ("streams ", S_DIM),
            (f"{len(snapshot.streams):,}", S_BOLD),
            *([(" + ", S_DIM), (f"{len(snapshot.connecting):,} connecting", S_WARN)] if snapshot.connecting else []),
            sep,
            ("windows ", S_DIM),
            (f"{snapshot.windows_total:,}", S_NONE),
            sep,
            (f"{snapshot.windows_per_s:,.1f}", S_BOLD),
            (" windows/s", S_DIM),
            sep,
            ("dropped ", S_DIM),
            (f"{snapshot.dropped_windows:,}", S_WARN if snapshot.dropped_windows else S_NONE),
            (" windows · ", S_DIM),
            (f"{dropped_samples:,}", S_WARN if dropped_samples else S_NONE),
            (" samples", S_DIM),
            *([(" · ", S_DIM), (f"{rejected:,}", S_WARN), (" chunks rejected", S_DIM)] if rejected else []),
            *([sep, ("QEMG paused", S_WARN), (" while classification is busy", S_DIM)] if snapshot.qemg_yielding
              else []),
            no_wrap=True,
            overflow="ellipsis",
        )
        lines: list[RenderableType] = []
        if not snapshot.trained:
            lines.append(
                Text(
                    " UNTRAINED MODEL: its probabilities are placeholders, not a diagnosis ",
                    style=S_BANNER,
                    no_wrap=True,
                    overflow="ellipsis",
                )
            )
        lines += [line1, line2, self._summary(snapshot)]
        panel = Panel(
            Group(*lines),
            title=Text("streamemg", style=S_BOLD),
            title_align="left",
            box=box.ROUNDED,
            padding=(0, 1),
            width=width,
            border_style=S_BAD if not snapshot.trained else S_SEP,
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
        parts: list[tuple[str, Style]] = [("status ", S_DIM)]
        first = True
        for st in StreamStatus:
            if status_counts[st]:
                if not first:
                    parts.append((" · ", S_DIM))
                parts += [(str(status_counts[st]), S_BOLD), (f" {st.value}", STATUS_STYLE[st])]
                first = False
        if first:
            parts.append(("no streams yet", S_DIM))
        parts += [(" │ ", S_SEP), ("labels ", S_DIM)]
        order = [*CLASS_NAMES, *sorted(k for k in label_counts if k not in CLASS_NAMES)]
        first = True
        for key in order:
            n = label_counts.get(key, 0)
            if not n and (key not in CLASS_NAMES or not snapshot.trained):
                continue
            if not first:
                parts.append((" · ", S_DIM))
            style = CLASS_STYLES.get(key, S_WARN if key in ("withheld", "untrained") else S_DIM)
            if key in CLASS_NAMES and not snapshot.trained:
                style = S_GREY
            parts += [(str(n), S_BOLD), (f" {key}", style)]
            first = False
        return Text.assemble(*parts, no_wrap=True, overflow="ellipsis")

    @staticmethod
    def _table_header(layout: tuple[tuple[_Column, int], ...]) -> Iterator[Segment]:
        yield Segment(" " * _MARGIN)
        for i, (col, w) in enumerate(layout):
            if i:
                yield Segment(" " * _GAP)
            yield Segment(fit(col.header, w, col.align), S_HEAD)
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
        styles: list[Style] = [S_NONE]
        for i, (col, w) in enumerate(layout):
            if i:
                if styles[-1].bgcolor is None and not styles[-1].underline:
                    texts[-1] += " " * _GAP
                else:
                    texts.append(" " * _GAP)
                    styles.append(S_NONE)
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
            return [(fit(s.name, w), S_BOLD)]
        if key == "source":
            return [(fit(s.source, w), S_DIM)]
        if key == "rate":
            return [(fit(fmt_rate(s.fs), w, "right"), S_NONE)]
        if key == "ch":
            return [(fit(str(s.n_channels), w, "right"), S_NONE)]
        if key == "status":
            head = f"{STATUS_SYMBOL.get(s.status, '?')} {s.status.value}"
            style = STATUS_STYLE.get(s.status, S_NONE)
            head_w = min(w, cell_len(head))
            if not s.status_detail or w - head_w < 6:  # no room for a useful part of the detail
                return [(fit(head, w), style)]
            return [(fit(head, head_w), style), (fit(f": {s.status_detail}", w - head_w), S_DIM)]
        if key == "level":
            if not s.level:
                return [(fit("·", w), S_DIM)]
            return [(sparkline(s.level, w), S_LEVEL)]
        if key == "win":
            if est is None:
                return [(fit("", w), S_NONE)]
            out: _Cell = []
            for c, p in zip(CLASS_NAMES, est.probabilities, strict=False):
                out.append((block(p), S_GREY if untrained else CLASS_STYLES.get(c, DEFAULT_CLASS_STYLE)))
            n = len(out)
            if n < w:
                out.append((" " * (w - n), S_NONE))
            elif n > w:
                out = out[:w]
            return out
        if key.startswith("p:"):
            cls = key[2:]
            if est is None:
                return [(" " * w, S_NONE)]
            k = CLASS_NAMES.index(cls)
            p = est.rolling[k] if k < len(est.rolling) else float("nan")
            bar_w = max(1, w - 5)
            pct = "  n/a" if not math.isfinite(p) else f" {p * 100:3.0f}%"
            if untrained:
                style = S_GREY
            else:
                style = CLASS_STYLES.get(cls, DEFAULT_CLASS_STYLE)
                if est.label == cls:
                    style = style + S_BOLD
            return [(prob_bar(p, bar_w), style), (fit(pct, w - bar_w, "right"), style)]
        if key == "label":
            if est is None:
                return [(fit("waiting…", w), S_DIM)]
            if untrained:
                tag = "untrained"
                rest = "" if est.quality == "ok" else f" ({est.quality.replace('_', ' ')})"
                tw = min(w, len(tag))
                return [(fit(tag, tw), S_UNTRAINED), (fit(rest, w - tw), S_WARN)]
            if est.label is None:
                if est.quality == "ok":  # nothing usable yet (e.g. the rolling estimate is still empty)
                    return [(fit("no estimate yet", w), S_DIM)]
                return [(fit(f"withheld: {est.quality.replace('_', ' ')}", w), S_WARN_BOLD)]
            style = CLASS_STYLES.get(est.label, DEFAULT_CLASS_STYLE) + S_BOLD
            conf = f" {est.confidence * 100:.0f}%" if math.isfinite(est.confidence) else ""
            return [(fit(est.label + conf, w), style)]
        if key == "qemg":
            return _qemg_cell(est.qemg if est is not None else None, w)
        if key == "latency":
            p99 = s.latency_p99_ms
            style = S_NONE
            if math.isfinite(p99):
                style = S_BAD if p99 > LATENCY_BAD_MS else (S_WARN if p99 > LATENCY_WARN_MS else S_NONE)
            return [(fit(f"{fmt_ms(s.latency_p50_ms)}/{fmt_ms(p99)}", w, "right"), style)]
        if key == "wps":
            return [(fit(f"{s.windows_per_s:.1f}", w, "right"), S_NONE)]
        if key == "drops":
            bad = s.dropped_samples or s.dropped_windows
            text = f"{fmt_count(s.dropped_samples)}/{fmt_count(s.dropped_windows)}"
            return [(fit(text, w, "right"), S_WARN if bad else S_DIM)]
        return [(" " * w, S_NONE)]  # pragma: no cover - every column key is handled above

    @staticmethod
    def _footer(
        snapshot: PipelineSnapshot,
        page: int,
        n_pages: int,
        first: int,
        n_visible: int,
        note: str | None,
        page_s: float | None,
        controls: TableControls | None = None,
        n_listed: int | None = None,
    ) -> Iterator[RenderableType]:
        errors = snapshot.errors[-MAX_ERRORS_SHOWN:]
        hidden = len(snapshot.errors) - len(errors)
        for i, msg in enumerate(errors):
            more = f" (+{hidden} earlier)" if i == 0 and hidden else ""
            yield Text.assemble(
                ("✗ ", S_BAD), (first_line(msg), S_ERR), (more, S_DIM), no_wrap=True, overflow="ellipsis"
            )
        parts: list[tuple[str, Style]] = [("outputs ", S_DIM)]
        if not snapshot.sink_drops:
            parts.append(("none", S_DIM))
        for i, (name, n) in enumerate(sorted(snapshot.sink_drops.items())):
            if i:
                parts.append((" · ", S_DIM))
            parts += [(name, S_NONE), (" ", S_NONE), (f"{n:,}", S_WARN if n else S_DIM), (" dropped", S_DIM)]
        yield Text.assemble(*parts, no_wrap=True, overflow="ellipsis")
        n = len(snapshot.streams) if n_listed is None else n_listed
        keys: list[tuple[str, Style]]
        if controls is None:
            keys = [("Ctrl-C", S_BOLD), (" to stop", S_DIM), (" │ ", S_SEP)]
        elif controls.editing:
            yield Text.assemble(
                ("filter /", S_BOLD), (controls.name_filter, S_NONE), ("▌", S_BOLD),
                (f"  {n} of {len(snapshot.streams)} match", S_DIM), (" │ ", S_SEP),
                ("Enter", S_BOLD), (" keep · ", S_DIM), ("Esc", S_BOLD), (" clear", S_DIM),
                no_wrap=True, overflow="ellipsis",
            )  # fmt: skip
            return
        else:
            keys = [
                ("↑↓", S_BOLD), (" select · ", S_DIM), ("Enter", S_BOLD), (" open · ", S_DIM),
                ("/", S_BOLD), (" filter · ", S_DIM), ("?", S_BOLD), (" keys · ", S_DIM),
                ("q", S_BOLD), (" or ", S_DIM), ("Ctrl-C", S_BOLD), (" to stop", S_DIM), (" │ ", S_SEP),
            ]  # fmt: skip
            if controls.name_filter:
                keys += [(f"filter {controls.name_filter!r}: {n} of {len(snapshot.streams)}", S_WARN), (" │ ", S_SEP)]
        if n_pages > 1:
            keys += [
                (f"page {page + 1}/{n_pages}", S_BOLD),
                (f" · rows {first + 1}-{first + n_visible} of {n}", S_DIM),
            ]
            if page_s is not None and not (controls is not None and controls.follow_selection):
                keys.append((f" · pages turn every {page_s:g} s", S_DIM))
        else:
            keys.append((f"all {n} stream{'s' if n != 1 else ''}", S_DIM))
        keys += [(" │ ", S_SEP), ("problems first, then by name", S_DIM)]
        if note:
            keys += [(" │ ", S_SEP), (note, S_DIM)]
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
    controls: TableControls | None = None,
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
        controls: a selected row, a name filter and the keys line, for a display that takes keys.

    Returns:
        A ``rich`` renderable (print it on a Console or hand it to a ``Live``).
    """
    return _SHARED.render(
        snapshot, width=width, height=height, page=page, note=note, page_s=page_s, controls=controls
    )


def render_header(snapshot: PipelineSnapshot, *, width: int | None = None) -> RenderableType:
    """Only the header panel (device, model, totals, status/label summary): e.g. a final summary on exit."""
    return _SHARED.header(snapshot, width=width)

