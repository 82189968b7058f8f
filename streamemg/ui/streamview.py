"""The stream view: one stream in depth, refreshed live (a pure function of a StreamDetail and a size).

Layout (top to bottom)::

    ◀ Esc back │ patient-2 │ ● live │ sim:als?...                                   (title)
    source facts: rate, channels, units, windows, latency, seq gaps, rejected, reconnects
    estimate: rolling label, window / rolling / recording-level probabilities, quality
    signal: the filtered trace (µV, min/max envelope per dot column), channels stacked, time axis
    spectrogram of the newest window as the model sees it │ class probabilities over the last minutes
    attention over its frames                             │ quality flags over the same minutes
    QEMG measures and MUAP templates (when the estimates carry them)
    keys

The spectrogram and attention come from :class:`~streamemg.ui.inspect.WindowInspector` (the model's own
modules, run on the newest window); without an inspector those panels say so.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

from ..estimates import HistoryView
from ..types import CLASS_NAMES
from .format import (
    BLOCKS,
    CLASS_STYLES,
    DEFAULT_CLASS_STYLE,
    S_BAD,
    S_BOLD,
    S_DIM,
    S_GREY,
    S_LEVEL,
    S_NONE,
    S_OK,
    S_SEP,
    S_UNTRAINED,
    S_WARN,
    S_WARN_BOLD,
    STATUS_STYLE,
    STATUS_SYMBOL,
    fit,
    fmt_ms,
    fmt_rate,
)
from .inspect import Inspection
from .plots import braille_counts, braille_lines, envelope_rows, heat_lines, nice_ceiling, series_rows
from .snapshot import StreamDetail

__all__ = ["QUALITY_STYLES", "StreamView", "compose_stream_view"]

#: Colour of each quality flag in the quality strip.
QUALITY_STYLES: dict[str, Style] = {
    "ok": Style(color="green"),
    "nan": Style(color="red", bold=True),
    "flat": Style(color="red"),
    "clipping": Style(color="magenta", bold=True),
    "low_activity": Style(color="yellow"),
}
_S_AXIS = Style(color="bright_black")
_S_TITLE = Style(bold=True, color="cyan")
_LABEL_W = 8  # left axis labels


def _fmt_uv(v: float) -> str:
    if v >= 1000:
        return f"{v / 1000:g} mV"
    return f"{v:g} µV"


def _fmt_ago(s: float) -> str:
    """Seconds before now as ``-1:30`` (or ``-12 s``, ``-1.5 s`` under a minute)."""
    if s < 60:
        return f"-{s:.2g} s" if s < 10 else f"-{s:.0f} s"
    return f"-{int(s) // 60}:{int(s) % 60:02d}"


def _axis_line(width: int, ticks: Sequence[tuple[float, str]], offset: int = 0) -> Text:
    """An axis of ``width`` cells with labels at fractional positions 0..1 (clamped inside the line)."""
    chars = [" "] * width
    for frac, label in ticks:
        pos = round(frac * (width - 1))
        start = max(0, min(width - len(label), pos - (len(label) // 2 if 0 < frac < 1 else 0)))
        if frac >= 1:
            start = width - len(label)
        if all(c == " " for c in chars[max(0, start - 1) : start + len(label) + 1]):
            chars[start : start + len(label)] = label
    return Text.assemble((" " * offset, S_NONE), ("".join(chars), _S_AXIS), no_wrap=True)


def _prob_text(probs: Sequence[float], grey: bool) -> list[tuple[str, Style]]:
    out: list[tuple[str, Style]] = []
    for i, (c, p) in enumerate(zip(CLASS_NAMES, probs, strict=False)):
        style = S_GREY if grey else CLASS_STYLES.get(c, DEFAULT_CLASS_STYLE)
        pct = "n/a" if not math.isfinite(p) else f"{p * 100:.0f}%"
        out += [((" " if i else "") + c + " ", S_DIM), (pct, style)]
    return out


class StreamView:
    """The renderable of the stream view; lays it out at the console's size when rendered.

    Args:
        detail: the stream's detail (None: the stream is gone).
        inspection: the model's view of the newest window (None: not computed).
        trained: the model is trained (else probabilities are greyed out and never read as a label).
        note: extra text for the keys line.
        width, height: fixed size (None: the console's).
    """

    __slots__ = ("detail", "height", "inspection", "note", "trained", "width")

    def __init__(
        self,
        detail: StreamDetail | None,
        inspection: Inspection | None,
        *,
        trained: bool = True,
        note: str | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> None:
        self.detail = detail
        self.inspection = inspection
        self.trained = trained
        self.note = note
        self.width = width
        self.height = height

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width if self.width is None else min(self.width, options.max_width)
        height = options.height if self.height is None else self.height
        yield from compose_stream_view(
            self.detail, self.inspection, width=width, height=height or 40, trained=self.trained, note=self.note
        )


def compose_stream_view(
    detail: StreamDetail | None,
    inspection: Inspection | None,
    *,
    width: int,
    height: int,
    trained: bool = True,
    note: str | None = None,
) -> Iterator[RenderableType]:
    """The stream view as lines (``Text``), exactly ``height`` of them at most, each at most ``width`` cells."""
    width = max(40, width)
    if detail is None:
        yield Text.assemble(("◀ Esc", S_BOLD), (" back │ ", S_DIM), ("this stream is no longer there", S_WARN))
        return
    s = detail.stream
    last = s.last
    untrained = not trained or (last is not None and not last.trained)
    est_qemg = getattr(last, "qemg", None) if last is not None else None
    lines: list[Text | _Row] = []
    lines.append(_title(detail, width))
    lines.append(_facts(detail, width))
    lines.append(_estimate_line(detail, untrained, width))

    fixed = 3 + 2 + 3 + 1  # title/facts/estimate + trace title/axis + bottom title/attention/axis + keys
    q_lines = _qemg_lines(est_qemg, detail, width) if (est_qemg is not None or detail.qemg is not None) else []
    if height - fixed - len(q_lines) < 12:  # a short terminal: the measures line only, no templates
        q_lines = q_lines[:1]
    room = max(8, height - fixed - len(q_lines))
    trace_h = max(3, room * 9 // 20)
    bottom_h = max(3, room - trace_h)

    lines += _trace(detail, width, trace_h)
    lines += _bottom(detail, inspection, width, bottom_h, untrained)
    lines += q_lines
    lines = lines[: max(0, height - 1)]  # whatever else is cut, the keys stay on screen
    lines.append(_keys(note, width))
    for line in lines:  # one terminal line each, whatever a piece measured
        if isinstance(line, Text):
            line.no_wrap = True
            line.overflow = "ellipsis"
            line.truncate(width, overflow="ellipsis")
        yield line


# ----------------------------------------------------------------------------------------------- pieces
def _title(d: StreamDetail, width: int) -> Text:
    s = d.stream
    st = STATUS_STYLE.get(s.status, S_NONE)
    parts: list[tuple[str, Style]] = [
        ("◀ Esc", S_BOLD), (" back", S_DIM), (" │ ", S_SEP), (s.name, _S_TITLE), (" │ ", S_SEP),
        (f"{STATUS_SYMBOL.get(s.status, '?')} {s.status.value}", st),
    ]  # fmt: skip
    if s.status_detail:
        parts.append((f": {s.status_detail}", S_DIM))
    parts += [(" │ ", S_SEP), (s.source or s.stream_id, S_DIM)]
    return Text.assemble(*parts, no_wrap=True, overflow="ellipsis")


def _facts(d: StreamDetail, width: int) -> Text:
    s = d.stream
    chans = ", ".join(d.channels[:4]) + (f" +{len(d.channels) - 4}" if len(d.channels) > 4 else "")
    units = "µV" if d.units in ("uV", "µV") else d.units
    gap_style = S_WARN if s.dropped_samples else S_DIM
    parts: list[tuple[str, Style]] = [
        (f"{fmt_rate(s.fs)} Hz", S_NONE), (" · ", S_DIM),
        (f"{s.n_channels} ch", S_NONE), (f" ({chans})" if chans else "", S_DIM), (" · ", S_DIM), (units, S_NONE),
        (" · model ", S_DIM), (f"{fmt_rate(d.trace_fs)} Hz", S_NONE), (" │ ", S_SEP),
        ("windows ", S_DIM), (f"{s.windows:,}", S_NONE), (f" · {s.windows_per_s:.1f}/s", S_DIM), (" │ ", S_SEP),
        ("p50/p99 ", S_DIM), (f"{fmt_ms(s.latency_p50_ms)}/{fmt_ms(s.latency_p99_ms)} ms", S_NONE),
        (" │ ", S_SEP), ("seq gaps ", S_DIM), (f"{s.dropped_samples:,} samples", gap_style),
        (" · rejected ", S_DIM), (f"{s.rejected:,}", S_WARN if s.rejected else S_DIM),
        (" · reconnects ", S_DIM), (f"{d.reconnects}", S_WARN if d.reconnects else S_DIM),
        (" · windows dropped ", S_DIM), (f"{s.dropped_windows:,}", S_WARN if s.dropped_windows else S_DIM),
    ]  # fmt: skip
    return Text.assemble(*parts, no_wrap=True, overflow="ellipsis")


def _estimate_line(d: StreamDetail, untrained: bool, width: int) -> Text:
    est = d.stream.last
    if est is None:
        return Text("estimate: waiting for the first window…", style=S_DIM, no_wrap=True)
    parts: list[tuple[str, Style]] = [("estimate ", S_DIM)]
    if untrained:
        parts += [(" untrained ", S_UNTRAINED), (" (placeholders, not a diagnosis)", S_WARN)]
    elif est.label is None:
        reason = est.quality.replace("_", " ")
        parts.append(("withheld: " + reason if est.quality != "ok" else "no estimate yet", S_WARN_BOLD))
    else:
        parts.append((f"{est.label} {est.confidence * 100:.0f}%", CLASS_STYLES.get(est.label, S_BOLD) + S_BOLD))
    parts += [(" │ ", S_SEP), ("window ", S_DIM), *_prob_text(est.probabilities, untrained)]
    parts += [(" │ ", S_SEP), ("rolling ", S_DIM), *_prob_text(est.rolling, untrained)]
    parts += [(" │ ", S_SEP), ("recording ", S_DIM), *_prob_text(est.cumulative, untrained)]
    if est.channel_quality and any(q != "ok" for q in est.channel_quality):
        bad = sum(q != "ok" for q in est.channel_quality)
        parts += [(" │ ", S_SEP), (f"{bad} of {len(est.channel_quality)} channels flagged", S_WARN)]
    return Text.assemble(*parts, no_wrap=True, overflow="ellipsis")


def _trace(d: StreamDetail, width: int, height: int) -> list[Text]:
    """Title, one braille plot per shown channel (stacked), and a time axis: ``height + 2`` lines."""
    trace = d.trace
    n, c = trace.shape if trace.ndim == 2 else (0, 0)
    plot_w = max(10, width - _LABEL_W - 1)
    span_s = n / d.trace_fs if d.trace_fs > 0 else 0.0
    per_ch = max(2, height // max(1, c)) if c else height
    shown = max(1, min(c, height // per_ch)) if c else 0
    title = [("signal", _S_TITLE)]
    if c > shown:
        title.append((f" showing {shown} of {c} channels ·", S_WARN))
    title.append((" filtered (high-pass, notch), at the model rate, newest at the right", S_DIM))
    out = [Text.assemble(*title, no_wrap=True, overflow="ellipsis")]
    if n == 0:
        out += [Text("  waiting for samples…", style=S_DIM)] + [Text("")] * (height - 1)
    else:
        finite = trace[np.isfinite(trace)]
        peak = float(np.percentile(np.abs(finite), 99.5)) if finite.size else 0.0
        limit = nice_ceiling(peak * 1.1)
        used = 0
        for ch in range(shown):
            h = per_ch if ch < shown - 1 else height - used
            used += h
            grid = envelope_rows(trace[:, ch], 2 * plot_w, 4 * h, limit)
            rows = braille_lines(grid)
            label_rows = {0: f"+{_fmt_uv(limit)}", h // 2: d.channels[ch] if ch < len(d.channels) else f"ch{ch}"}
            label_rows[h - 1] = f"-{_fmt_uv(limit)}"
            for i, row in enumerate(rows):
                lab = label_rows.get(i, "")
                out.append(
                    Text.assemble(
                        (fit(lab, _LABEL_W, "right"), _S_AXIS), ("┤" if lab else "│", _S_AXIS), (row, S_LEVEL),
                        no_wrap=True,
                    )
                )
    ticks = [(0.0, _fmt_ago(span_s)), (0.5, _fmt_ago(span_s / 2)), (1.0, "newest window end")]
    out.append(_axis_line(plot_w, ticks if n else [], offset=_LABEL_W + 1))
    return out


class _Row:
    """One line made of a left part (text, or pre-styled segments: the heat map, rendered without a ``Text``
    layout pass per cell) padded to ``left_w`` cells, a separator and a right part."""

    __slots__ = ("left", "left_w", "right")

    def __init__(self, left: Text | list[Segment], right: Text, left_w: int) -> None:
        self.left = left
        self.right = right
        self.left_w = left_w

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if isinstance(self.left, Text):
            left = list(self.left.render(console, end=""))
        else:
            left = self.left
        used = sum(cell_len(seg.text) for seg in left)
        yield from left
        yield Segment(" " * max(0, self.left_w - used) + " │ ", _S_AXIS)
        yield from self.right.render(console, end="")
        yield Segment.line()


def _bottom(
    d: StreamDetail, ins: Inspection | None, width: int, height: int, untrained: bool
) -> list[_Row]:
    """Spectrogram + attention (left) beside probability history + quality strip (right): ``height + 3`` lines."""
    n_frames = ins.spectrogram.shape[1] if ins is not None else 61
    left_w = min(max(24, n_frames), max(24, width // 2 - _LABEL_W - 2)) + _LABEL_W + 1
    right_w = max(20, width - left_w - 3)
    left = _spectrogram(ins, left_w, height, d.window is not None)
    right = _history(d, right_w, height, untrained)
    out = []
    for a, b in zip(left, right, strict=True):
        if isinstance(a, Text):
            a.truncate(left_w, overflow="ellipsis")
        b.truncate(right_w, overflow="ellipsis")
        b.no_wrap = True
        out.append(_Row(a, b, left_w))
    return out


def _spectrogram(ins: Inspection | None, w: int, height: int, has_window: bool) -> list[Text | list[Segment]]:
    plot_w = w - _LABEL_W - 1
    out: list[Text | list[Segment]] = [
        Text.assemble(
            ("spectrogram", _S_TITLE),
            (f" newest window{', ' + ins.channel if ins is not None and ins.channel else ''}, ln µV²/Hz", S_DIM),
            no_wrap=True,
        )
    ]
    if ins is None:
        why = "no model was given to the display" if has_window else "shown once a window is classified"
        out.append(Text(f"  ({why})", style=S_DIM))
        out += [Text("")] * (height + 1)
        return out
    spec = ins.spectrogram
    vmin, vmax = (float(v) for v in np.percentile(spec, (2, 99.5)))
    heat = heat_lines(spec, plot_w, height, vmin, vmax)
    f = ins.frequencies
    f_lo, f_hi = float(f[0]), float(f[-1])
    for i, runs in enumerate(heat):
        frac = 1.0 - (i + 0.5) / height  # top line = highest frequency
        label = ""
        if i == 0:
            label = f"{f_hi / 1000:.1f} kHz" if f_hi >= 1000 else f"{f_hi:.0f} Hz"
        elif i == height - 1:
            label = f"{f_lo:.0f} Hz"
        elif i == height // 2:
            label = f"{(f_lo + frac * (f_hi - f_lo)) / 1000:.1f} kHz"
        segs = [Segment(fit(label, _LABEL_W, "right") + ("┤" if label else "│"), _S_AXIS)]
        segs += [Segment(text, style) for text, style in runs]
        out.append(segs)
    att = ins.attention
    if att is None:
        out.append(Text(fit("attn", _LABEL_W, "right") + "│ (this model pools frames by their mean)", style=S_DIM))
    else:
        # each pooled frame covers an equal share of the input frames: spread its weight over its columns
        cols = np.minimum((np.arange(plot_w) * len(att)) // plot_w, len(att) - 1)
        a = att[cols] / max(float(att.max()), 1e-12)
        bar = "".join(BLOCKS[min(7, max(0, round(float(v) * 7)))] for v in a)
        out.append(Text.assemble((fit("attention", _LABEL_W + 1), _S_AXIS), (bar, S_WARN)))
    ticks = [(0.0, "0 s"), (0.5, f"{ins.window_s / 2:g} s"), (1.0, f"{ins.window_s:g} s")]
    out.append(_axis_line(plot_w, ticks, offset=_LABEL_W + 1))
    out.append(
        Text(f"  range {vmin:.1f} .. {vmax:.1f} · dark = low power, yellow = high", style=S_DIM, no_wrap=True)
    )
    return out[: height + 3]


def _history(d: StreamDetail, w: int, height: int, untrained: bool) -> list[Text]:
    h = d.history
    keep = np.isfinite(h.times) if h is not None else np.zeros(0, dtype=bool)
    title = [("estimate history", _S_TITLE), (" (rolling)", S_DIM)]
    for c in CLASS_NAMES:
        title += [("  ━ ", S_GREY if untrained else CLASS_STYLES.get(c, DEFAULT_CLASS_STYLE)), (c, S_DIM)]
    codes = np.zeros(0, dtype=np.int64)
    if h is not None:
        codes = np.where(h.quality != 0, h.quality, h.channel_flag).astype(np.int64)[keep]
    title += [("  │ quality ", S_DIM), ("▁", S_OK), (" ok", S_DIM)]  # the strip under the chart
    for code in sorted({int(c) for c in codes if c}):
        q = HistoryView.flag_name(code)
        title += [("  █", QUALITY_STYLES.get(q, S_BAD)), (" " + q.replace("_", " "), S_DIM)]
    out = [Text.assemble(*title, no_wrap=True, overflow="ellipsis")]
    plot_w = max(8, w - 6)
    if h is None or int(keep.sum()) < 2:
        out.append(Text("  (builds up as windows are classified)", style=S_DIM))
        out += [Text("")] * (height + 1)
        return out
    t = h.times[keep]
    t0, t_end = float(t[0]), float(t[-1])
    span = max(t_end - t0, 1e-9)
    cols = 2 * plot_w
    col_t = t0 + np.arange(cols) * (span / (cols - 1))
    rolling = h.rolling[keep].astype(np.float64)  # (n, K)
    grids = []
    for k in range(min(len(CLASS_NAMES), rolling.shape[1])):
        ok = np.isfinite(rolling[:, k])
        per_col = np.full(cols, np.nan)
        if ok.sum() >= 1:  # linear between estimates, nothing before the first usable one
            per_col = np.interp(col_t, t[ok], rolling[ok, k], left=np.nan, right=np.nan)
        grids.append(series_rows(per_col, 4 * height))
    union = np.zeros_like(grids[0])
    for g in grids:
        union |= g
    text_rows = braille_lines(union)
    counts = np.stack([braille_counts(g) for g in grids])  # (K, h, w)
    owner = counts.argmax(axis=0)
    has = counts.max(axis=0) > 0
    styles = [S_GREY if untrained else CLASS_STYLES.get(c, DEFAULT_CLASS_STYLE) for c in CLASS_NAMES]
    for i, row in enumerate(text_rows):
        lab = {0: "100%", height - 1: "0%", height // 2: "50%"}.get(i, "")
        line = Text.assemble((fit(lab, 5, "right"), _S_AXIS), ("┤" if lab else "│", _S_AXIS))
        run_style: Style | None = None
        run = ""
        for j, ch in enumerate(row):
            st = styles[int(owner[i, j])] if has[i, j] else S_NONE
            if st is not run_style and run:
                line.append(run, run_style)
                run = ""
            run_style = st
            run += ch
        if run:
            line.append(run, run_style)
        out.append(line)
    out.append(_quality_strip(codes, t, t0, span, plot_w))
    ticks = [(0.0, _fmt_ago(span)), (0.5, _fmt_ago(span / 2)), (1.0, "now")]
    out.append(_axis_line(plot_w, ticks, offset=6))
    return out


def _quality_strip(codes: np.ndarray, t: np.ndarray, t0: float, span: float, w: int) -> Text:
    """One cell per time bin: ``▁`` green when every window was usable, else the colour of the worst flag
    (the lowest non-zero :data:`~streamemg.estimates.QUALITY_CODES` code); an empty bin shows the one before."""
    col = np.clip(((t - t0) / span * (w - 1)).round().astype(np.int64), 0, w - 1)
    empty, ok = 127, 126
    worst = np.full(w, empty, dtype=np.int64)
    np.minimum.at(worst, col, np.where(codes == 0, ok, codes))
    line = Text.assemble((fit("qual", 5, "right"), _S_AXIS), ("│", _S_AXIS))
    prev = empty
    for code in worst.tolist():
        if code == empty:
            code = prev
        prev = code
        if code == empty:
            line.append(" ")
        elif code == ok:
            line.append("▁", S_OK)
        else:
            line.append("█", QUALITY_STYLES.get(HistoryView.flag_name(code), S_BAD))
    return line


# ----------------------------------------------------------------------------------------------- QEMG
#: How the QEMG measures are labelled on screen: key -> (label, unit), in this order.
QEMG_LABELS: tuple[tuple[str, str, str], ...] = (
    ("units", "units", ""),
    ("amplitude_uv", "amplitude", "µV"),
    ("duration_ms", "duration", "ms"),
    ("phases", "phases", ""),
    ("turns", "turns", ""),
    ("area_uv_ms", "area", "µV·ms"),
    ("thickness_ms", "thickness", "ms"),
    ("polyphasic_pct", "polyphasic", "%"),
    ("firing_hz", "firing", "Hz"),
    ("firing_cv", "firing CV", ""),
    ("recruitment_ratio", "recruitment", ""),
    ("fibrillations", "fibs", ""),
    ("positive_sharp_waves", "PSW", ""),
    ("fasciculations", "fasc", ""),
)


def _qemg_measures(est_qemg: Any, summary: Any) -> dict[str, Any]:
    if isinstance(est_qemg, Mapping):
        return dict(est_qemg)
    to_dict = getattr(summary, "to_dict", None)
    return dict(to_dict()) if callable(to_dict) else {}


def _qemg_lines(est_qemg: Any, d: StreamDetail, width: int) -> list[Text]:
    """QEMG measures on one line, then the current MUAP templates as small braille plots with their facts."""
    measures = _qemg_measures(est_qemg, d.qemg)
    parts: list[tuple[str, Style]] = [("QEMG", _S_TITLE), (" ", S_NONE)]
    shown = 0
    for key, label, unit in QEMG_LABELS:
        if key not in measures:
            continue
        v = measures[key]
        val = "–" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))
        parts += [(label + " ", S_DIM), (val, S_BOLD), ((" " + unit) if unit and v is not None else "", S_DIM)]
        parts.append(("  ", S_NONE))
        shown += 1
    if not shown:
        parts.append(("no measures yet", S_DIM))
    out = [Text.assemble(*parts, no_wrap=True, overflow="ellipsis")]
    units = list(getattr(d.qemg, "units", ()) or ())[:8]
    templates = [(u, np.asarray(getattr(u, "template", ()), dtype=np.float64).reshape(-1)) for u in units]
    templates = [(u, t) for u, t in templates if t.size >= 2 and np.isfinite(t).any()]
    if not templates:
        return out
    cell_w = max(10, min(24, width // len(templates) - 2))
    lim = max(1.0, 1.05 * max(float(np.nanmax(np.abs(t))) for _, t in templates))
    fs = d.stream.fs
    span_ms = templates[0][1].size / fs * 1000.0 if fs > 0 else float("nan")
    out.append(
        Text(f"MUAP templates (±{lim:.0f} µV, {span_ms:.0f} ms each, largest first)", style=S_DIM, no_wrap=True)
    )
    plots = [braille_lines(envelope_rows(t, 2 * cell_w, 16, lim)) for _, t in templates]
    for r in range(4):
        line = Text(no_wrap=True, overflow="ellipsis")
        for p in plots:
            line.append(p[r], S_LEVEL)
            line.append("  ")
        out.append(line)
    facts = Text(no_wrap=True, overflow="ellipsis")
    for u, _ in templates:
        w = getattr(u, "waveform", None)
        amp = getattr(w, "amplitude_uv", float("nan"))
        dur = getattr(w, "duration_ms", float("nan"))
        kind = getattr(u, "kind", "muap")
        if kind != "muap":
            text = kind.replace("_", " ")
        else:
            text = f"{amp:.0f} µV {dur:.1f} ms" if getattr(w, "measured", False) else "not measured"
        facts.append(fit(text, cell_w) + "  ", S_DIM)
    out.append(facts)
    return out


def _keys(note: str | None, width: int) -> Text:
    parts: list[tuple[str, Style]] = [
        ("Esc", S_BOLD), (" back · ", S_DIM), ("↑↓", S_BOLD), (" previous / next stream · ", S_DIM),
        ("?", S_BOLD), (" keys · ", S_DIM), ("Ctrl-C", S_BOLD), (" to stop", S_DIM),
    ]  # fmt: skip
    if note:
        parts += [(" │ ", S_SEP), (note, S_DIM)]
    return Text.assemble(*parts, no_wrap=True, overflow="ellipsis")

