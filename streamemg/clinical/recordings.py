"""Reading whole recordings from files into µV arrays.

:func:`read_recording` picks a reader by file suffix. Every reader returns a :class:`Recording`:
float32 samples ``(n_samples, n_channels)`` in µV, the sampling rate and the channel labels.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataFormatError
from ..types import FloatArray

log = logging.getLogger(__name__)


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


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_csv(path: Path, fs: float | None = None) -> Recording:
    """A numeric ``.csv``, one row per sample (µV). An optional header row names the channels (without one they
    are ``ch1..chN`` and no sample is lost); a first column headed ``time``/``t`` (s) gives the rate."""
    try:
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
        has_header = not all(_is_number(cell) for cell in header)
        arr = np.loadtxt(path, delimiter=",", skiprows=int(has_header), dtype=np.float64, ndmin=2)
    except (OSError, ValueError, StopIteration) as exc:
        raise DataFormatError(
            f"{path}: not a numeric CSV (one row per sample, comma-separated, optional header row) ({exc})"
        ) from exc
    names = [h.strip() for h in header] if has_header else []
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


# ---------------------------------------------------------------------------------------------------------------
# Clinical formats: WFDB-style headers (EMGLAB .hea + .bin/.bin.xz, PhysioNet .hea + .dat) and ASCII µV (.asc/.asc.xz)
# ---------------------------------------------------------------------------------------------------------------

#: int16 ADC rails: samples at these raw values are saturated (clipped).
ADC_RAILS_INT16: tuple[int, int] = (-32768, 32767)

#: Sampling rate of the Mendeley needle-EMG ``.asc`` files (from the data set's description), Hz.
MENDELEY_ASC_FS: float = 32768.0

_UNIT_TO_UV: dict[str, float] = {"uv": 1.0, "µv": 1.0, "mv": 1e3, "v": 1e6, "nv": 1e-3}


def _read_bytes_maybe_xz(path: Path) -> bytes:
    """Bytes of ``path``; ``*.xz`` files are decompressed (lossless LZMA)."""
    import lzma

    try:
        if path.name.lower().endswith(".xz"):
            with lzma.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, lzma.LZMAError) as exc:
        raise DataFormatError(f"{path}: cannot be read ({exc}); check the file is complete") from exc


@dataclass(frozen=True, slots=True)
class _HeaSignal:
    """One signal line of a WFDB-style header."""

    file_name: str
    fmt: str
    byte_offset: int
    gain: float
    baseline: float
    units: str
    description: str


def _parse_hea(path: Path) -> tuple[str, int, float, int | None, list[_HeaSignal], list[str]]:
    """Parse a WFDB-style header: (record, n_signals, fs, n_samples or None, signals, comment lines)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot be read ({exc})") from exc
    body = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    comments = [ln.strip().lstrip("#").strip() for ln in lines if ln.lstrip().startswith("#")]
    if not body:
        raise DataFormatError(f"{path}: empty header; expected 'RECORD N_SIGNALS FS N_SAMPLES' on the first line")
    head = body[0].split()
    try:
        record = head[0]
        n_sig = int(head[1])
        fs = float(head[2].split("/")[0].split("(")[0]) if len(head) > 2 else 250.0
        n_samples = int(head[3]) if len(head) > 3 else None
    except (IndexError, ValueError) as exc:
        raise DataFormatError(f"{path}: malformed record line {body[0]!r}") from exc
    signals: list[_HeaSignal] = []
    for ln in body[1 : 1 + n_sig]:
        parts = ln.split()
        if len(parts) < 2:
            raise DataFormatError(f"{path}: malformed signal line {ln!r}")
        fmt, _, off = parts[1].partition("+")
        fmt = fmt.split("x")[0].split(":")[0]
        gain, baseline, units = 200.0, 0.0, "mV"
        if len(parts) > 2:
            g = parts[2]
            g, _, units_part = g.partition("/")
            if units_part:
                units = units_part
            if "(" in g:
                g, _, b = g.partition("(")
                baseline = float(b.rstrip(")"))
            try:
                gain = float(g) or 200.0
            except ValueError as exc:
                raise DataFormatError(f"{path}: malformed gain {parts[2]!r}") from exc
        description = " ".join(parts[8:]) if len(parts) > 8 else ""
        signals.append(_HeaSignal(parts[0], fmt, int(off or 0), gain, baseline, units, description))
    if len(signals) != n_sig:
        raise DataFormatError(f"{path}: header announces {n_sig} signals but describes {len(signals)}")
    return record, n_sig, fs, n_samples, signals, comments


def _to_uv_factor(units: str, path: Path) -> float:
    key = units.strip().lower()
    if key not in _UNIT_TO_UV:
        raise DataFormatError(f"{path}: unsupported physical unit {units!r}; expected uV, mV or V")
    return _UNIT_TO_UV[key]


def _hea_comments_meta(comments: list[str]) -> dict[str, str]:
    """``#key: value`` header comments (EMGLAB style) as a dict."""
    meta: dict[str, str] = {}
    for c in comments:
        key, sep, value = c.partition(":")
        if sep and key.strip() and not key.strip().startswith("<"):
            meta[key.strip().lower()] = value.strip()
    return meta


def _locate_signal_file(hea: Path, name: str) -> Path | None:
    """The data file a header names, or its ``.xz`` compressed form."""
    for cand in (hea.with_name(name), hea.with_name(name + ".xz")):
        if cand.exists():
            return cand
    return None


def _read_hea_format16(hea: Path, data_file: Path, signals: list[_HeaSignal], n_samples: int | None) -> np.ndarray:
    """Interleaved int16 little-endian samples (WFDB format 16) after the byte offset: (n, C) int16."""
    raw = _read_bytes_maybe_xz(data_file)
    off = signals[0].byte_offset
    n_sig = len(signals)
    avail = (len(raw) - off) // (2 * n_sig)
    if n_samples is None:
        n_samples = avail
    if avail < n_samples:
        raise DataFormatError(
            f"{data_file}: holds {avail} samples after byte offset {off}, but {hea.name} announces {n_samples}; "
            "the file is truncated"
        )
    return np.frombuffer(raw, dtype="<i2", count=n_samples * n_sig, offset=off).reshape(n_samples, n_sig)


#: recordings whose tail is known to be unusable, by file-name prefix: samples to keep.
#: EMGLAB N2001 subject A08: only the first 240000 samples hold the recording; the rest is stale buffer content.
KNOWN_STALE_TAILS: dict[str, int] = {"N2001A08": 240000}


def read_hea(path: Path, fs: float | None = None) -> Recording:
    """A WFDB-style header and its signal file: EMGLAB ``.hea`` + ``.bin`` (or ``.bin.xz``), PhysioNet ``.dat``.

    EMGLAB files (format ``16+20``: int16 little-endian after a 20-byte offset, ``13.107/uV``) and any
    ``.xz``-compressed signal file are read directly; other WFDB records go through the ``wfdb`` package.
    The result is µV ``(n_samples, n_signals)`` float32. ``meta`` holds the header fields, the header
    comments (EMGLAB ``#key: value``), ``n_clipped`` (samples at the int16 ADC rails, format 16) and
    ``clipped_mask_available``. ``fs`` overrides the header rate only if given.
    """
    record, n_sig, hdr_fs, n_samples, signals, comments = _parse_hea(path)
    if n_sig < 1:
        raise DataFormatError(f"{path}: header describes no signals")
    meta: dict[str, Any] = {
        "format": "wfdb-hea",
        "record": record,
        "header_fs": hdr_fs,
        "n_samples_header": n_samples,
        "comments": comments,
        **{f"hea_{k}": v for k, v in _hea_comments_meta(comments).items()},
    }
    first = signals[0]
    data_file = _locate_signal_file(path, first.file_name)
    if data_file is None:
        raise DataFormatError(
            f"{path}: its signal file {first.file_name!r} (or {first.file_name}.xz) is not next to the header"
        )
    meta["signal_file"] = data_file.name
    direct = data_file.name.lower().endswith(".xz") or first.byte_offset > 0
    if direct:
        if any(s.fmt != "16" for s in signals):
            raise DataFormatError(f"{path}: only WFDB format 16 is supported for offset/compressed files")
        counts = _read_hea_format16(path, data_file, signals, n_samples)
        ints = counts.astype(np.int32)
        meta["n_clipped"] = int(np.count_nonzero((ints <= ADC_RAILS_INT16[0]) | (ints >= ADC_RAILS_INT16[1])))
        gains = np.array([s.gain for s in signals], dtype=np.float64)
        base = np.array([s.baseline for s in signals], dtype=np.float64)
        factor = np.array([_to_uv_factor(s.units, path) for s in signals], dtype=np.float64)
        data = ((counts.astype(np.float64) - base) / gains * factor).astype(np.float32)
    else:
        data, n_clip = _read_wfdb(path)
        meta["n_clipped"] = n_clip
    channels = tuple(s.description or f"ch{i + 1}" for i, s in enumerate(signals))
    if len(set(channels)) != len(channels):
        channels = tuple(f"{c}{i + 1}" for i, c in enumerate(channels))
    rate = _check_fs(fs if fs is not None else hdr_fs, path)
    for prefix, usable in KNOWN_STALE_TAILS.items():
        if path.name.startswith(prefix) and data.shape[0] > usable:
            log.info("%s: keeping the first %d samples (the rest is stale buffer content)", path.name, usable)
            meta["trimmed_from"] = int(data.shape[0])
            data = data[:usable]
    return Recording(_as_2d(data, path), rate, channels, path, meta)


def _read_wfdb(path: Path) -> tuple[np.ndarray, int]:
    """Read a plain WFDB record with the ``wfdb`` package: (µV (n, C) float32, samples at the ADC limits)."""
    try:
        import wfdb
    except ImportError as exc:  # pragma: no cover - wfdb is a dependency
        raise DataFormatError(f"{path}: reading WFDB records needs the 'wfdb' package (pip install wfdb)") from exc
    rec_path = str(path.with_suffix(""))
    try:
        rec = wfdb.rdrecord(rec_path, physical=False)
    except Exception as exc:  # wfdb raises many unrelated types; convert them all at this boundary
        raise DataFormatError(f"{path}: the wfdb package could not read this record ({exc})") from exc
    d = np.asarray(rec.d_signal, dtype=np.float64)
    if d.ndim == 1:
        d = d[:, None]
    n_clip = 0
    out = np.empty(d.shape, dtype=np.float32)
    for i in range(d.shape[1]):
        gain = float(rec.adc_gain[i]) or 200.0
        base = float(rec.baseline[i])
        res = int(rec.adc_res[i]) if rec.adc_res and rec.adc_res[i] else 16
        lo, hi = -(2 ** (res - 1)), 2 ** (res - 1) - 1
        n_clip += int(np.count_nonzero((d[:, i] <= lo + 1) | (d[:, i] >= hi)))
        out[:, i] = (d[:, i] - base) / gain * _to_uv_factor(str(rec.units[i]), path)
    return out, n_clip


def read_signal_beside_hea(path: Path, fs: float | None = None) -> Recording:
    """A ``.bin``/``.bin.xz``/``.dat`` signal file given directly: read through the header next to it."""
    name = path.name
    stem = name[: -len(".xz")] if name.lower().endswith(".xz") else name
    hea = path.with_name(Path(stem).stem + ".hea")
    if not hea.exists():
        raise DataFormatError(f"{path}: raw signal file without its header {hea.name}; open the .hea file instead")
    return read_hea(hea, fs)


def read_asc(path: Path, fs: float | None = None) -> Recording:
    """Whitespace-separated ASCII µV values (Mendeley needle-EMG ``.asc``, or ``.asc.xz``), one channel.

    The format stores no rate: ``fs``, else a sidecar ``{"fs": ...}``, else 32768 Hz (the Mendeley data set's
    documented rate; ``meta["fs_assumed"]`` is then True).
    """
    raw = _read_bytes_maybe_xz(path)
    try:
        values = np.array(raw.split(), dtype=np.float64)
    except ValueError as exc:
        raise DataFormatError(f"{path}: not whitespace-separated numbers ({exc})") from exc
    if values.size == 0:
        raise DataFormatError(f"{path}: no samples")
    side = _sidecar(path)
    assumed = fs is None and "fs" not in side
    rate = _check_fs(fs if fs is not None else side.get("fs", MENDELEY_ASC_FS), path)
    meta = {"format": "asc", "fs_assumed": assumed, "n_clipped": 0}
    return Recording(_as_2d(values.astype(np.float32), path), rate, ("EMG",), path, meta)


READERS.update(
    {
        ".hea": read_hea,
        ".bin": read_signal_beside_hea,
        ".bin.xz": read_signal_beside_hea,
        ".dat": read_signal_beside_hea,
        ".asc": read_asc,
        ".asc.xz": read_asc,
    }
)
