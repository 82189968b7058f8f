"""Reading whole recordings from files into µV arrays.

:func:`read_recording` picks a reader by file suffix. Every reader returns a :class:`Recording`:
float32 samples ``(n_samples, n_channels)`` in µV, the sampling rate and the channel labels.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataFormatError
from .types import FloatArray


@dataclass(frozen=True, slots=True)
class Recording:
    """One recording held in memory.

    Attributes:
        data: float32 ``(n_samples, n_channels)``, µV.
        fs: sampling rate, Hz.
        channels: one label per channel.
        path: where it was read from.
        meta: format-specific facts (header fields, clipping counts, ...).
    """

    data: FloatArray
    fs: float
    channels: tuple[str, ...]
    path: Path | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return int(self.data.shape[0])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs


def _sidecar(path: Path) -> dict[str, Any]:
    side = path.with_name(path.name + ".json")
    if not side.exists():
        side = path.with_suffix(".json")
    if side.exists():
        try:
            loaded = json.loads(side.read_text())
        except (OSError, ValueError) as exc:
            raise DataFormatError(f"{side}: not valid JSON ({exc}); fix or remove the sidecar file") from exc
        if not isinstance(loaded, dict):
            raise DataFormatError(f"{side}: expected a JSON object like {{\"fs\": 8000}}")
        return loaded
    return {}


def _check_fs(fs: Any, path: Path) -> float:
    try:
        value = float(fs)
    except (TypeError, ValueError):
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise DataFormatError(
            f"{path}: no valid sampling rate (got {fs!r}). Give it as ?fs=HZ in the file: URI, "
            f"or in a sidecar {path.name}.json such as {{\"fs\": 8000, \"channels\": [\"ch1\"]}}"
        )
    return value


def _as_2d(data: np.ndarray, path: Path) -> FloatArray:
    arr = np.asarray(data)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataFormatError(f"{path}: expected samples shaped (n_samples, n_channels), got {arr.shape}")
    if arr.shape[1] > arr.shape[0]:
        raise DataFormatError(
            f"{path}: array shaped {arr.shape} has more channels than samples; store it as (n_samples, n_channels)"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def read_npy(path: Path, fs: float | None = None) -> Recording:
    """A ``.npy`` array ``(n_samples,)`` or ``(n_samples, n_channels)`` in µV; rate from ``fs`` or a sidecar."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"{path}: not a readable .npy file ({exc})") from exc
    side = _sidecar(path)
    rate = _check_fs(fs if fs is not None else side.get("fs"), path)
    data = _as_2d(arr, path)
    channels = tuple(side.get("channels") or (f"ch{i + 1}" for i in range(data.shape[1])))
    if len(channels) != data.shape[1]:
        raise DataFormatError(f"{path}: sidecar names {len(channels)} channels but the array has {data.shape[1]}")
    return Recording(data, rate, channels, path, {"format": "npy"})


def read_csv(path: Path, fs: float | None = None) -> Recording:
    """A ``.csv`` with a header row of channel names; an optional first column ``time``/``t`` (s) gives the rate."""
    try:
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
        arr = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    except (OSError, ValueError, StopIteration) as exc:
        raise DataFormatError(f"{path}: not a numeric CSV with one header row ({exc})") from exc
    names = [h.strip() for h in header]
    rate = fs
    if names and names[0].lower() in ("t", "time", "time_s", "timestamp"):
        t = arr[:, 0]
        arr = arr[:, 1:]
        names = names[1:]
        if rate is None and len(t) > 1:
            rate = float((len(t) - 1) / (t[-1] - t[0])) if t[-1] > t[0] else None
    if rate is None:
        rate = _sidecar(path).get("fs")
    data = _as_2d(arr, path)
    if len(names) != data.shape[1]:
        names = [f"ch{i + 1}" for i in range(data.shape[1])]
    return Recording(data, _check_fs(rate, path), tuple(names), path, {"format": "csv"})


#: suffix (lower case, may be compound like ".bin.xz") -> reader(path, fs) -> Recording
READERS: dict[str, Callable[[Path, float | None], Recording]] = {
    ".npy": read_npy,
    ".csv": read_csv,
}


def read_recording(path: str | Path, fs: float | None = None) -> Recording:
    """Read any supported recording; ``fs`` overrides/supplies the rate for formats without one."""
    p = Path(path)
    if not p.exists():
        raise DataFormatError(f"{p}: no such file")
    name = p.name.lower()
    for suffix in sorted(READERS, key=len, reverse=True):
        if name.endswith(suffix):
            return READERS[suffix](p, fs)
    raise DataFormatError(
        f"{p}: unknown recording format; supported suffixes: {', '.join(sorted(READERS))}"
    )
