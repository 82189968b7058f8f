"""Terminal plots for the stream view: braille traces and line charts, half-block heat maps (pure numpy).

A braille cell holds 2 x 4 dots, so a plot of ``w`` x ``h`` cells has ``2w`` x ``4h`` dots; a half block
(``▀`` in one colour over a background colour) shows two heat-map rows per line. Every function here is
vectorised over the whole plot (no Python loop per sample or per dot) and returns plain strings or
``(text, style)`` runs for the caller to assemble.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from rich.color import Color
from rich.style import Style

__all__ = [
    "HEAT_LEVELS",
    "braille_lines",
    "envelope_rows",
    "heat_lines",
    "heat_style",
    "nice_ceiling",
    "series_rows",
]

# dot bit of (row 0..3, column 0..1) inside one braille cell (U+2800 + bits)
_DOT_BITS = np.array([[0x01, 0x08], [0x02, 0x10], [0x04, 0x20], [0x40, 0x80]], dtype=np.int32)


def braille_lines(grid: np.ndarray) -> list[str]:
    """A boolean dot grid as braille text.

    Args:
        grid: ``(4h, 2w)`` bool, row 0 at the top.

    Returns:
        ``h`` strings of ``w`` characters each; a cell without dots is a space.
    """
    rows, cols = grid.shape
    if rows % 4 or cols % 2:
        raise ValueError(f"braille_lines needs a (4h, 2w) grid, got {grid.shape}")
    h, w = rows // 4, cols // 2
    codes = (grid.reshape(h, 4, w, 2).astype(np.int32) * _DOT_BITS[None, :, None, :]).sum(axis=(1, 3))
    out = []
    for row in codes:
        out.append("".join(chr(0x2800 + int(c)) if c else " " for c in row))
    return out


def braille_counts(grid: np.ndarray) -> np.ndarray:
    """Dots set per braille cell of a ``(4h, 2w)`` grid: ``(h, w)`` int."""
    rows, cols = grid.shape
    return grid.reshape(rows // 4, 4, cols // 2, 2).sum(axis=(1, 3))


def nice_ceiling(x: float) -> float:
    """The smallest of 1, 2, 5 x 10^k at or above ``x`` (> 0): a stable axis limit. 1.0 for x <= 0 or NaN."""
    if not (math.isfinite(x) and x > 0):
        return 1.0
    k = math.floor(math.log10(x))
    for m in (1.0, 2.0, 5.0, 10.0):
        if m * 10.0**k >= x * (1 - 1e-12):
            return m * 10.0**k
    return 10.0 ** (k + 1)  # pragma: no cover - the loop always returns


def envelope_rows(y: np.ndarray, n_cols: int, n_rows: int, limit: float) -> np.ndarray:
    """Min/max envelope of a signal per dot column as a dot grid (a trace as an EMG screen draws it).

    Args:
        y: ``(n,)`` samples, oldest first (NaN drawn as nothing).
        n_cols: dot columns (``2 * width``); the newest sample is at the right edge. With fewer samples than
            columns the trace starts further right.
        n_rows: dot rows (``4 * height``); ``+limit`` is the top row, ``-limit`` the bottom one.
        limit: the value at the plot's top (and minus it at the bottom), > 0; beyond it the trace is clipped.

    Returns:
        ``(n_rows, n_cols)`` bool grid.
    """
    grid = np.zeros((n_rows, n_cols), dtype=bool)
    y = np.asarray(y, dtype=np.float64)
    n = y.shape[0]
    if n == 0 or n_cols <= 0 or n_rows <= 0:
        return grid
    cols = min(n_cols, n)
    edges = np.linspace(0, n, cols + 1).astype(np.int64)[:-1]
    finite = np.isfinite(y)
    safe = np.where(finite, y, 0.0)
    lo = np.minimum.reduceat(safe, edges)
    hi = np.maximum.reduceat(safe, edges)
    ok = np.logical_or.reduceat(finite, edges)
    scale = (n_rows - 1) / (2.0 * limit)
    r_hi = np.clip(np.rint((limit - hi) * scale), 0, n_rows - 1).astype(np.int64)  # top dot of the column
    r_lo = np.clip(np.rint((limit - lo) * scale), 0, n_rows - 1).astype(np.int64)  # bottom dot
    rows = np.arange(n_rows)[:, None]
    grid[:, n_cols - cols :] = (rows >= r_hi[None, :]) & (rows <= r_lo[None, :]) & ok[None, :]
    return grid


def series_rows(values: np.ndarray, n_rows: int, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """A line through one value per dot column, consecutive points joined by vertical strokes.

    Args:
        values: ``(n_cols,)`` values; NaN leaves a gap (the line is not joined across it).
        n_rows: dot rows; ``hi`` is the top row, ``lo`` the bottom one.

    Returns:
        ``(n_rows, n_cols)`` bool grid.
    """
    v = np.asarray(values, dtype=np.float64)
    n_cols = v.shape[0]
    grid = np.zeros((n_rows, n_cols), dtype=bool)
    if n_cols == 0 or n_rows <= 0:
        return grid
    ok = np.isfinite(v)
    r = np.clip(np.rint((hi - np.where(ok, v, lo)) / (hi - lo) * (n_rows - 1)), 0, n_rows - 1).astype(np.int64)
    prev = np.concatenate([r[:1], r[:-1]])
    prev_ok = np.concatenate([[False], ok[:-1]])
    top = np.where(prev_ok, np.minimum(r, prev), r)
    bottom = np.where(prev_ok, np.maximum(r, prev), r)
    rows = np.arange(n_rows)[:, None]
    grid[:] = (rows >= top[None, :]) & (rows <= bottom[None, :]) & ok[None, :]
    return grid


# ----------------------------------------------------------------------------------------------- heat maps
#: Colour levels of the heat map (a perceptually ordered dark-blue -> green -> yellow ramp, like viridis).
HEAT_LEVELS = 24
_ANCHORS = np.array(
    [
        (68, 1, 84),
        (72, 40, 120),
        (62, 74, 137),
        (49, 104, 142),
        (38, 130, 142),
        (31, 158, 137),
        (53, 183, 121),
        (109, 205, 89),
        (180, 222, 44),
        (253, 231, 37),
    ],
    dtype=np.float64,
)


@lru_cache(maxsize=1)
def _heat_colors() -> tuple[Color, ...]:
    x = np.linspace(0, len(_ANCHORS) - 1, HEAT_LEVELS)
    rgb = np.stack([np.interp(x, np.arange(len(_ANCHORS)), _ANCHORS[:, i]) for i in range(3)], axis=1)
    return tuple(Color.from_rgb(*(round(float(c)) for c in row)) for row in rgb)


@lru_cache(maxsize=HEAT_LEVELS * HEAT_LEVELS + HEAT_LEVELS)
def heat_style(upper: int, lower: int) -> Style:
    """Style of one half-block cell: ``upper`` level as the foreground (``▀``), ``lower`` as the background."""
    colors = _heat_colors()
    return Style(color=colors[upper], bgcolor=colors[lower])


def heat_lines(
    image: np.ndarray, width: int, height: int, vmin: float, vmax: float
) -> list[list[tuple[str, Style]]]:
    """A 2-D array as a half-block heat map of ``width`` x ``height`` cells.

    Args:
        image: ``(R, N)`` values, row 0 at the *bottom* (e.g. the lowest frequency), columns left to right.
        width, height: cells; the image is resampled to ``width`` columns and ``2 * height`` rows by averaging
            (or repeating) neighbouring values.
        vmin, vmax: the values of the darkest and brightest colour (clipped beyond).

    Returns:
        ``height`` lines, top first, each a list of ``(text, style)`` runs of total length ``width``.
    """
    img = np.asarray(image, dtype=np.float64)
    r, n = img.shape
    rows = 2 * height
    # block means over source ranges (or nearest source value when upsampling)
    r_edges = np.linspace(0, r, rows + 1)
    c_edges = np.linspace(0, n, width + 1)

    def resample(a: np.ndarray, edges: np.ndarray, axis: int) -> np.ndarray:
        starts = np.minimum(np.floor(edges[:-1]).astype(np.int64), a.shape[axis] - 1)
        stops = np.maximum(np.ceil(edges[1:]).astype(np.int64), starts + 1)
        csum = np.cumsum(np.insert(a, 0, 0.0, axis=axis), axis=axis)
        take_hi = np.take(csum, stops, axis=axis)
        take_lo = np.take(csum, starts, axis=axis)
        shape = [1, 1]
        shape[axis] = -1
        return (take_hi - take_lo) / (stops - starts).reshape(shape)

    grid = resample(resample(np.nan_to_num(img, nan=vmin), r_edges, 0), c_edges, 1)  # (rows, width)
    span = vmax - vmin if vmax > vmin else 1.0
    levels = np.clip(((grid - vmin) / span * (HEAT_LEVELS - 1)).round(), 0, HEAT_LEVELS - 1).astype(np.int64)
    levels = levels[::-1]  # top row first
    lines: list[list[tuple[str, Style]]] = []
    for i in range(height):
        upper, lower = levels[2 * i], levels[2 * i + 1]
        runs: list[tuple[str, Style]] = []
        for u, lo in zip(upper.tolist(), lower.tolist(), strict=True):
            style = heat_style(u, lo)
            if runs and runs[-1][1] is style:
                runs[-1] = (runs[-1][0] + "▀", style)
            else:
                runs.append(("▀", style))
        lines.append(runs)
    return lines
