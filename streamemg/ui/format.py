"""Formatting helpers shared by the dashboard's views: styles, glyphs, fixed-width text and number formats.

Everything here is a pure function or a constant; ``Style`` objects are built once at import, since parsing
style strings per cell would dominate the render cost.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

from rich.cells import cell_len, set_cell_size
from rich.style import Style

from ..types import StreamStatus

# ----------------------------------------------------------------------------------------------- styles
CLASS_STYLES: dict[str, Style] = {
    "Normal": Style(color="green"),
    "ALS": Style(color="magenta"),
    "Myopathy": Style(color="blue"),
}
DEFAULT_CLASS_STYLE = Style(color="cyan")
S_NONE = Style()
S_BOLD = Style(bold=True)
S_DIM = Style(dim=True)
S_HEAD = Style(bold=True, underline=True)
S_GREY = Style(color="bright_black")
S_OK = Style(color="green")
S_WARN = Style(color="yellow")
S_WARN_BOLD = Style(color="yellow", bold=True)
S_BAD = Style(color="red", bold=True)
S_ERR = Style(color="red")
S_LEVEL = Style(color="cyan")
S_UNTRAINED = Style(color="black", bgcolor="yellow", bold=True)
S_BANNER = Style(color="white", bgcolor="red", bold=True)
S_SEP = Style(color="bright_black")

STATUS_STYLE: dict[StreamStatus, Style] = {
    StreamStatus.LIVE: Style(color="green"),
    StreamStatus.CONNECTING: Style(color="cyan"),
    StreamStatus.STALE: Style(color="yellow", bold=True),
    StreamStatus.RECONNECTING: Style(color="red", bold=True),
    StreamStatus.ENDED: Style(dim=True),
}
STATUS_SYMBOL: dict[StreamStatus, str] = {
    StreamStatus.LIVE: "●",
    StreamStatus.CONNECTING: "◌",
    StreamStatus.STALE: "◐",
    StreamStatus.RECONNECTING: "↻",
    StreamStatus.ENDED: "■",
}

#: Eight block heights, lowest first: sparklines and the one-cell window bars.
BLOCKS = "▁▂▃▄▅▆▇█"
#: Partial horizontal blocks in eighths (index 0 = nothing): the probability bars.
EIGHTHS = ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")

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

Align = Literal["left", "right"]


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
    s = "█" * full + EIGHTHS[rem]
    return s + " " * (width - len(s))


def prob_bar(p: float, width: int) -> str:
    """A probability in [0, 1] as a horizontal bar of exactly ``width`` cells (eighth-cell resolution).

    NaN gives a blank bar.
    """
    if not math.isfinite(p):
        return " " * width
    return _bar_for_eighths(round(min(1.0, max(0.0, p)) * width * 8), width)


def block(p: float) -> str:
    """A probability as one block character (``▁`` for 0 .. ``█`` for 1); ``·`` for NaN."""
    if not math.isfinite(p):
        return "·"
    return BLOCKS[min(7, max(0, round(p * 7)))]


def fit(text: str, width: int, align: Align = "left") -> str:
    """``text`` cut (with an ellipsis) or padded to exactly ``width`` terminal cells."""
    n = len(text) if text.isascii() else cell_len(text)
    if n > width:
        if width <= 1:
            return set_cell_size(text, width)
        return set_cell_size(text, width - 1) + "…"
    pad = " " * (width - n)
    return text + pad if align == "left" else pad + text


def fmt_rate(fs: float) -> str:
    """Sampling rate compactly: 23437.5 -> ``23.4k``, 10000 -> ``10k``, 500 -> ``500``."""
    if not math.isfinite(fs):
        return "?"
    if fs >= 1000.0:
        return f"{fs / 1000.0:.3g}k"
    return f"{fs:.0f}"


def fmt_count(n: int) -> str:
    """A non-negative count in at most 5 characters: 12345 -> ``12k``, 3400000 -> ``3.4M``."""
    if n < 10_000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1000:.0f}k"
    return f"{n / 1_000_000:.1f}M"


def fmt_ms(x: float) -> str:
    if not math.isfinite(x):
        return "–"
    return f"{x:.1f}" if x < 1000 else f"{x:.0f}"


def fmt_duration(s: float) -> str:
    """Seconds as ``H:MM:SS``."""
    if not math.isfinite(s) or s < 0:
        return "–"
    s_int = int(s)
    return f"{s_int // 3600}:{s_int % 3600 // 60:02d}:{s_int % 60:02d}"


def first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "(empty message)"


