"""The session report: one self-contained HTML file that turns a recording into something to look at.

``streamemg report DIR [--out report.html]`` reads a ``record:DIR`` recording (or replays any ``file:``
source through the pipeline into a temporary recording first) and writes one HTML file with every picture
embedded as a base64 PNG (matplotlib, headless ``Agg`` backend): it opens offline, can be mailed or archived.

Per stream:

* a summary: duration, windows, the label over time (share of windows per label), the recording-level
  estimate (the mean of the usable windows' probabilities, as the pipeline's ``cumulative``) with its
  confidence, signal quality (share of usable windows, flags), gaps (sequence and timestamp jumps, the
  recorder's own losses) and decision latency;
* a probability timeline (rolling probability per class, each window's probabilities as dots, withheld
  windows shaded, the label as a band);
* a spectrogram of the whole stream (filtered as the pipeline filters it), with the model's band marked;
* example signal excerpts (filtered, µV) at the start, middle and end, each with the label of that moment.

Then the model card's facts (name, version, fingerprint, training data, its subject-wise accuracy and its
limitations) and, in plain words, that this is research software and not a diagnosis.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as _dt
import html
import io
import math
import re
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__
from ..errors import ConfigError, DataFormatError
from ..types import CLASS_NAMES, Estimate, StreamInfo

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..model import ModelBundle

__all__ = ["ReportSettings", "StreamData", "build_report", "load_recording", "render_report", "stream_summary"]

#: Colours of the classes (the dashboard's, as hex for matplotlib and HTML).
CLASS_COLORS: dict[str, str] = {"Normal": "#2ca02c", "ALS": "#b5179e", "Myopathy": "#1f5fbf"}
_OTHER_COLOR = "#888888"
#: Colours of the quality flags.
QUALITY_COLORS: dict[str, str] = {
    "nan": "#d62728",
    "flat": "#8c1c13",
    "clipping": "#e377c2",
    "low_activity": "#ffbf00",
    "no usable channel": "#7f7f7f",
}


@dataclass(frozen=True, slots=True)
class ReportSettings:
    """What the report shows and how large its pictures are.

    Attributes:
        excerpts: signal excerpts per stream (0-8), spread over the stream (start, middle, end, ...).
        excerpt_s: length of one excerpt (s), (0, 10].
        max_channels: channels drawn per stream in the excerpts (the spectrogram shows the first).
        spectrogram_fmax_hz: top of the spectrogram's frequency axis (capped at half the stream's rate).
        dpi: resolution of the pictures (50-300); width_in: their width in inches (4-20).
        max_streams: streams reported (the first ones by name); the session section says how many were left out.
        max_signal_s: seconds of each stream's signal read for the spectrogram and excerpts (memory stays
            bounded for long sessions; counts, gaps and estimates always cover the whole stream).
    """

    excerpts: int = 3
    excerpt_s: float = 1.0
    max_channels: int = 4
    spectrogram_fmax_hz: float = 2500.0
    dpi: int = 96
    width_in: float = 11.0
    max_streams: int = 64
    max_signal_s: float = 900.0

    def __post_init__(self) -> None:
        def bad(name: str, fix: str) -> ConfigError:
            return ConfigError(f"ReportSettings.{name}={getattr(self, name)!r}: {fix}")

        if not (isinstance(self.excerpts, int) and 0 <= self.excerpts <= 8):
            raise bad("excerpts", "give a whole number from 0 to 8, e.g. 3")
        if not (isinstance(self.excerpt_s, (int, float)) and 0 < self.excerpt_s <= 10):
            raise bad("excerpt_s", "give seconds in (0, 10], e.g. 1.0")
        if not (isinstance(self.max_channels, int) and self.max_channels >= 1):
            raise bad("max_channels", "give a whole number >= 1, e.g. 4")
        if not (isinstance(self.spectrogram_fmax_hz, (int, float)) and self.spectrogram_fmax_hz > 0):
            raise bad("spectrogram_fmax_hz", "give a frequency above 0 Hz, e.g. 2500")
        if not (isinstance(self.dpi, int) and 50 <= self.dpi <= 300):
            raise bad("dpi", "give a whole number from 50 to 300, e.g. 96")
        if not (isinstance(self.width_in, (int, float)) and 4 <= self.width_in <= 20):
            raise bad("width_in", "give inches from 4 to 20, e.g. 11")
        if not (isinstance(self.max_streams, int) and self.max_streams >= 1):
            raise bad("max_streams", "give a whole number >= 1, e.g. 64")
        if not (isinstance(self.max_signal_s, (int, float)) and self.max_signal_s >= self.excerpt_s):
            raise bad("max_signal_s", "give seconds of signal to read per stream, at least excerpt_s, e.g. 900")


@dataclass(eq=False)
class StreamData:
    """One stream of a recording, read into memory.

    Attributes:
        info: the stream as last announced.
        data: ``(n, C)`` float32 raw samples in µV at ``info.fs``, in order: every recorded sample, or the first
            ones when the stream is longer than the report reads (see ``samples_total``).
        timestamps: ``(n,)`` float64 source timestamps (s) of ``data``.
        estimates: the recorded estimates in order.
        seq_gaps: chunks missing according to the sender's sequence numbers (0 without sequence numbers).
        recorder_lost_samples: samples the recorder itself documented as lost (gap records).
        samples_total, span_s, time_gaps, time_gap_s: counted over the whole stream while reading (None: count
            them from ``data``): samples, first-to-last timestamp (s), timestamp jumps over 3 sample periods and
            the time they skip (s).
    """

    info: StreamInfo
    data: np.ndarray
    timestamps: np.ndarray
    estimates: list[Estimate] = field(default_factory=list)
    seq_gaps: int = 0
    recorder_lost_samples: int = 0
    samples_total: int | None = None
    span_s: float | None = None
    time_gaps: int | None = None
    time_gap_s: float | None = None

    @property
    def truncated(self) -> bool:
        """Only the first part of the signal was read (the pictures of the signal cover that part)."""
        return self.samples_total is not None and self.samples_total > self.data.shape[0]


@dataclass(eq=False)
class Recording:
    """What the report reads from a recording: its header, scan result and streams (by id)."""

    path: Path
    header: dict[str, Any]
    complete: bool
    torn_bytes: int
    corrupt_records: int
    streams: dict[str, StreamData]
    total_streams: int = 0


# ----------------------------------------------------------------------------------------------- reading
def load_recording(path: str | Path, max_streams: int | None = None, max_signal_s: float | None = None) -> Recording:
    """Read a recording directory (or its ``recording.semg``) into memory, stream by stream.

    Args:
        path: the recording.
        max_streams: read the first streams by name only.
        max_signal_s: keep at most this many seconds of each stream's samples (the counts, gaps and estimates
            always cover the whole stream); None = all.

    Raises:
        DataFormatError: ``path`` is not a streamemg recording.
    """
    from ..record.reader import RecordingReader

    reader = RecordingReader(path)
    header = reader.header()
    infos = reader.stream_infos()
    estimates: dict[str, list[Estimate]] = {}
    for est in reader.estimates():
        estimates.setdefault(est.stream_id, []).append(est)
    lost: Counter[str] = Counter()
    for gap in reader.gaps():
        lost[str(gap.get("stream"))] += int(gap.get("samples", 0) or 0)
    stats = reader.stats
    ids = sorted(infos, key=lambda sid: (infos[sid][-1].name.casefold(), sid))
    if max_streams is not None:
        ids = ids[:max_streams]
    chunks: dict[str, list[np.ndarray]] = {sid: [] for sid in ids}
    stamps: dict[str, list[np.ndarray]] = {sid: [] for sid in ids}
    seq_gaps: Counter[str] = Counter()
    last_seq: dict[str, int] = {}
    kept: Counter[str] = Counter()
    total: Counter[str] = Counter()
    first_ts: dict[str, float] = {}
    last_ts: dict[str, float] = {}
    t_gaps: Counter[str] = Counter()
    t_gap_s: dict[str, float] = {}
    cap = {sid: (math.inf if max_signal_s is None else max_signal_s * infos[sid][-1].fs) for sid in ids}
    for rc in reader.chunks():
        ch = rc.chunk
        sid = ch.stream_id
        if sid not in chunks:
            continue
        if chunks[sid] and ch.data.shape[1] != chunks[sid][-1].shape[1]:
            chunks[sid].clear()  # the channel count changed: report the newest segment
            stamps[sid].clear()
            kept[sid] = 0
        if kept[sid] < cap[sid]:
            chunks[sid].append(ch.data)
            stamps[sid].append(ch.timestamps)
            kept[sid] += ch.n_samples
        total[sid] += ch.n_samples
        ts = np.asarray(ch.timestamps, dtype=np.float64)
        if ts.size:
            fs = infos[sid][-1].fs
            prev = last_ts.get(sid)
            steps = np.diff(ts) if prev is None else np.diff(ts, prepend=prev)
            jumps = steps > 3.0 / fs
            if jumps.any():
                t_gaps[sid] += int(np.count_nonzero(jumps))
                t_gap_s[sid] = t_gap_s.get(sid, 0.0) + float(np.sum(steps[jumps] - 1.0 / fs))
            first_ts.setdefault(sid, float(ts[0]))
            last_ts[sid] = float(ts[-1])
        if ch.seq is not None:
            prev = last_seq.get(sid)
            if prev is not None and ch.seq > prev + 1:
                seq_gaps[sid] += ch.seq - prev - 1
            last_seq[sid] = ch.seq
    streams: dict[str, StreamData] = {}
    for sid in ids:
        info = infos[sid][-1]
        data = np.concatenate(chunks[sid]) if chunks[sid] else np.zeros((0, info.n_channels), np.float32)
        ts = np.concatenate(stamps[sid]) if stamps[sid] else np.zeros(0, np.float64)
        streams[sid] = StreamData(
            info=info,
            data=data,
            timestamps=ts,
            estimates=estimates.get(sid, []),
            seq_gaps=int(seq_gaps[sid]),
            recorder_lost_samples=int(lost[sid]),
            samples_total=int(total[sid]),
            span_s=last_ts[sid] - first_ts[sid] if sid in first_ts else 0.0,
            time_gaps=int(t_gaps[sid]),
            time_gap_s=float(t_gap_s.get(sid, 0.0)),
        )
    return Recording(
        path=Path(path),
        header=header,
        complete=stats.complete,
        torn_bytes=stats.torn_bytes,
        corrupt_records=stats.corrupt_records,
        streams=streams,
        total_streams=len(infos),
    )


@contextlib.contextmanager
def recording_of(path: str | Path, bundle: ModelBundle | None = None) -> Iterator[Path]:
    """The recording to report on: ``path`` itself when it is one, else a temporary recording made by
    replaying ``file:path`` through the pipeline at full speed (removed afterwards).

    Raises:
        ConfigError: ``path`` does not exist.
    """
    from ..record.reader import is_recording

    p = Path(path)
    if not p.exists():
        raise ConfigError(
            f"report: {str(path)!r} does not exist; give a recording directory made with --output record:DIR "
            "(or a file that `streamemg run --source file:PATH` plays)"
        )
    if is_recording(p):
        yield p
        return
    if p.is_dir():
        raise ConfigError(
            f"report: {str(path)!r} is a directory without a recording (no recording.semg in it); give a "
            "directory written by --output record:DIR"
        )
    with tempfile.TemporaryDirectory(prefix="streamemg-report-") as tmp:
        out = Path(tmp) / "replay"
        _replay_into(p, out, bundle)
        yield out


def _replay_into(path: Path, out: Path, bundle: ModelBundle | None) -> None:
    import asyncio

    from ..pipeline import Pipeline
    from ..sinks.base import open_sink
    from ..sources.base import open_source

    async def run() -> None:
        source = open_source(f"file:{path}?speed=max")
        pipeline = Pipeline([source], [open_sink(f"record:{out}")], bundle=bundle)
        await pipeline.run()
        if not pipeline.streams or not (out / "recording.semg").is_file():
            why = pipeline.errors[-1] if pipeline.errors else "no stream came out of it"
            raise DataFormatError(f"report: {path} could not be replayed, so there is nothing to report: {why}")

    asyncio.run(run())


# ----------------------------------------------------------------------------------------------- numbers
def _finite(values: Sequence[float]) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    return a[np.isfinite(a)]


def stream_summary(s: StreamData) -> dict[str, Any]:
    """The numbers of a stream's summary table (plain types; NaN where there is nothing to measure).

    Keys: ``duration_s`` (samples / rate), ``span_s`` (first to last timestamp), ``samples``, ``windows``,
    ``labels`` (label -> share of windows: a class, ``"withheld"`` or ``"untrained"``), ``estimate`` /
    ``confidence`` (recording level: arg-max of the last cumulative probabilities), ``cumulative`` (class ->
    probability), ``usable`` (share of windows that passed the quality gate), ``flags`` (flag -> windows),
    ``seq_gaps``, ``time_gaps`` / ``time_gap_s`` (timestamp jumps over 3 sample periods and the time they
    skip), ``recorder_lost_samples``, ``latency_p50_ms`` / ``latency_p99_ms``, ``trained``.
    """
    info = s.info
    n = int(s.data.shape[0]) if s.samples_total is None else s.samples_total
    ests = s.estimates
    labels: Counter[str] = Counter()
    flags: Counter[str] = Counter()
    trained = all(e.trained for e in ests) if ests else True
    for e in ests:
        if not e.trained:
            labels["untrained"] += 1
        elif e.label is None:
            labels["withheld"] += 1
        else:
            labels[e.label] += 1
        if e.quality != "ok":
            flags[e.quality] += 1
    usable = sum(1 for e in ests if e.quality == "ok") / len(ests) if ests else float("nan")
    cumulative = dict(zip(CLASS_NAMES, ests[-1].cumulative, strict=False)) if ests else {}
    estimate, confidence = None, float("nan")
    finite_cum = {k: v for k, v in cumulative.items() if math.isfinite(v)}
    if finite_cum and trained:
        estimate = max(finite_cum, key=lambda k: finite_cum[k])
        confidence = float(finite_cum[estimate])
    ts = s.timestamps
    gaps, gap_s = 0, 0.0
    if s.time_gaps is not None:
        gaps, gap_s = s.time_gaps, float(s.time_gap_s or 0.0)
    elif ts.size > 1 and info.fs > 0:
        dt = np.diff(ts)
        jumps = dt > 3.0 / info.fs
        gaps = int(np.count_nonzero(jumps))
        gap_s = float(np.sum(dt[jumps] - 1.0 / info.fs)) if gaps else 0.0
    span = s.span_s if s.span_s is not None else (float(ts[-1] - ts[0]) if ts.size > 1 else 0.0)
    lat = _finite([e.latency_ms for e in ests])
    return {
        "duration_s": n / info.fs if info.fs > 0 else float("nan"),
        "span_s": span,
        "samples": n,
        "windows": len(ests),
        "labels": {k: v / len(ests) for k, v in labels.most_common()} if ests else {},
        "estimate": estimate,
        "confidence": confidence,
        "cumulative": cumulative,
        "usable": usable,
        "flags": dict(flags.most_common()),
        "seq_gaps": s.seq_gaps,
        "time_gaps": gaps,
        "time_gap_s": gap_s,
        "recorder_lost_samples": s.recorder_lost_samples,
        "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "latency_p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
        "trained": trained,
    }


def _filtered(s: StreamData, bundle: ModelBundle | None) -> np.ndarray:
    """The stream filtered as the pipeline filters it (high-pass, mains notch), ``(n, C)`` float32 µV."""
    from ..dsp import FilterSettings, StreamFilter

    if s.data.shape[0] == 0:
        return s.data
    settings = bundle.config.filters if bundle is not None else FilterSettings()
    return StreamFilter(settings, s.info.fs, s.info.n_channels).process(np.asarray(s.data, dtype=np.float32))


# ----------------------------------------------------------------------------------------------- figures
def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def timeline_figure(s: StreamData, settings: ReportSettings) -> str | None:
    """Rolling probability per class over the stream, window probabilities as dots, withheld windows shaded,
    the label as a band underneath. Base64 PNG, or None without estimates."""
    ests = s.estimates
    if not ests:
        return None
    plt = _pyplot()
    t0 = float(s.timestamps[0]) if s.timestamps.size else float(ests[0].time)
    t = np.array([e.time - t0 for e in ests])
    fig, (ax, band) = plt.subplots(
        2, 1, figsize=(settings.width_in, 3.4), dpi=settings.dpi, sharex=True,
        gridspec_kw={"height_ratios": [8, 1], "hspace": 0.08},
    )  # fmt: skip
    hop = float(np.median(np.diff(t))) if t.size > 1 else 0.25
    for e, ti in zip(ests, t, strict=True):
        if e.quality != "ok":
            ax.axvspan(ti - hop / 2, ti + hop / 2, color=QUALITY_COLORS.get(e.quality, "#999999"), alpha=0.18, lw=0)
    for k, cls in enumerate(CLASS_NAMES):
        color = CLASS_COLORS.get(cls, _OTHER_COLOR)
        win = np.array([e.probabilities[k] if k < len(e.probabilities) else np.nan for e in ests])
        roll = np.array([e.rolling[k] if k < len(e.rolling) else np.nan for e in ests])
        cum = np.array([e.cumulative[k] if k < len(e.cumulative) else np.nan for e in ests])
        ax.scatter(t, win, s=6, color=color, alpha=0.25, lw=0)
        ax.plot(t, roll, color=color, lw=1.8, label=f"{cls} (rolling)")
        ax.plot(t, cum, color=color, lw=1.0, ls="--", alpha=0.8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("probability")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", ncol=3, fontsize=8, frameon=False)
    ax.text(0.995, 0.98, "dots: each window · solid: rolling · dashed: recording level · shaded: withheld",
            transform=ax.transAxes, ha="right", va="top", fontsize=7, color="#555555")  # fmt: skip
    for e, ti in zip(ests, t, strict=True):
        if not e.trained:
            color = "#bbbbbb"
        elif e.label is None:
            color = QUALITY_COLORS.get(e.quality, "#999999")
        else:
            color = CLASS_COLORS.get(e.label, _OTHER_COLOR)
        band.axvspan(ti - hop / 2, ti + hop / 2, color=color, lw=0)
    band.set_yticks([])
    band.set_ylabel("label", rotation=0, ha="right", va="center", fontsize=8)
    band.set_xlabel("time from the stream's first sample (s)")
    band.set_xlim(min(0.0, float(t[0]) - hop), float(t[-1]) + hop / 2)
    return _png(fig)


def spectrogram_figure(s: StreamData, filtered: np.ndarray, settings: ReportSettings) -> str | None:
    """Power spectral density over time of the first channel (filtered), dB re 1 µV²/Hz. Base64 PNG."""
    from scipy import signal as sps

    fs = s.info.fs
    if filtered.shape[0] < 64 or fs <= 0:
        return None
    x = filtered[:, 0].astype(np.float64)
    x = np.where(np.isfinite(x), x, 0.0)
    nper = int(2 ** round(math.log2(max(64.0, fs * 0.064))))  # ~64 ms frames
    step = max(nper // 2, int(x.size / 1500))  # at most ~1500 frames across the picture
    f, tt, sxx = sps.spectrogram(x, fs=fs, window="hann", nperseg=nper, noverlap=max(0, nper - step),
                                 detrend=False, scaling="density")  # fmt: skip
    fmax = min(settings.spectrogram_fmax_hz, fs / 2)
    keep = f <= fmax
    db = 10.0 * np.log10(sxx[keep] + 1e-6)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(settings.width_in, 3.0), dpi=settings.dpi)
    vmin, vmax = np.percentile(db, (5, 99.5))
    mesh = ax.pcolormesh(tt, f[keep], db, shading="auto", cmap="viridis", vmin=vmin, vmax=vmax, rasterized=True)
    cb = fig.colorbar(mesh, ax=ax, pad=0.01)
    cb.set_label("dB re 1 µV²/Hz", fontsize=8)
    ax.set_ylabel("frequency (Hz)")
    ax.set_xlabel("time from the stream's first sample (s)")
    label = s.info.channels[0] if s.info.channels else "ch1"
    ax.set_title(f"spectrogram, channel {label} (filtered; {nper}-sample Hann frames)", fontsize=9, loc="left")
    return _png(fig)


def excerpts_figure(s: StreamData, filtered: np.ndarray, settings: ReportSettings) -> str | None:
    """``settings.excerpts`` stretches of the filtered signal (µV), spread over the stream. Base64 PNG."""
    fs = s.info.fs
    n = filtered.shape[0]
    length = round(settings.excerpt_s * fs)
    if settings.excerpts == 0 or n < 2 or fs <= 0:
        return None
    length = min(length, n)
    k = settings.excerpts
    fracs = np.linspace(0.02, 0.98, k)
    starts = sorted({round(float(f) * (n - length)) for f in fracs}) if n > length else [0]
    n_ch = min(settings.max_channels, filtered.shape[1])
    plt = _pyplot()
    fig, axes = plt.subplots(len(starts), 1, figsize=(settings.width_in, 1.7 * len(starts) + 0.4), dpi=settings.dpi,
                             squeeze=False)  # fmt: skip
    t0 = float(s.timestamps[0]) if s.timestamps.size else 0.0
    seg = filtered[starts[0] : starts[0] + length, :n_ch]
    peak = max(float(np.nanpercentile(np.abs(filtered[st : st + length, :n_ch]), 99.5)) for st in starts)
    peak = max(peak, 1.0)
    for ax, st in zip(axes[:, 0], starts, strict=True):
        seg = filtered[st : st + length, :n_ch]
        ts = s.timestamps[st : st + length] - t0 if s.timestamps.size >= st + length else np.arange(length) / fs
        for c in range(n_ch):
            offset = -2.2 * peak * c
            ax.plot(ts, seg[:, c] + offset, lw=0.6, color="#1f3b5a")
        mid = float(ts[len(ts) // 2]) + t0 if len(ts) else t0
        label = _label_at(s.estimates, mid)
        ax.set_title(f"{ts[0]:.1f}-{ts[-1]:.1f} s · {label}", fontsize=8, loc="left")
        ax.set_ylabel("µV")
        ax.set_ylim(-2.2 * peak * (n_ch - 1) - 1.1 * peak, 1.1 * peak)
        ax.grid(alpha=0.25)
    axes[-1, 0].set_xlabel("time from the stream's first sample (s)")
    fig.tight_layout()
    return _png(fig)


def _label_at(ests: Sequence[Estimate], t: float) -> str:
    """What the stream showed at source time ``t``: the newest estimate at or before it."""
    best = None
    for e in ests:
        if e.time <= t:
            best = e
        else:
            break
    if best is None:
        return "before the first estimate"
    if not best.trained:
        return "untrained model"
    if best.label is None:
        return f"withheld ({best.quality.replace('_', ' ')})"
    return f"{best.label} {best.confidence * 100:.0f}%"


# ----------------------------------------------------------------------------------------------- model card
def model_facts(bundle: ModelBundle | None) -> dict[str, Any]:
    """The model card's facts from the bundle (and the shipped card's text when it is the shipped model)."""
    if bundle is None:
        return {"available": False}
    from ..model import bundle_fingerprint, default_model_path

    cfg = bundle.config
    facts: dict[str, Any] = {
        "available": True,
        "name": bundle.name,
        "trained": bool(bundle.trained),
        "format_version": int(bundle.format_version),
        "fingerprint": bundle_fingerprint(bundle),
        "classes": list(cfg.classes),
        "fs": float(cfg.fs),
        "window_s": cfg.window_s,
        "hop_s": cfg.hop_s,
        "parameters": bundle.training.get("parameters"),
        "data": bundle.training.get("data", {}),
        "recordings": bundle.training.get("recordings"),
        "subjects": bundle.training.get("subjects"),
        "reports": [],
        "card": {},
    }
    for rep in bundle.metrics.get("reports", []) if isinstance(bundle.metrics, Mapping) else []:
        levels = rep.get("levels", {})
        facts["reports"].append(
            {
                "protocol": str(rep.get("protocol", "?")),
                "levels": {
                    lvl: (int(v.get("n", 0)), float(v.get("accuracy", float("nan"))),
                          float(v.get("balanced_accuracy", float("nan"))))
                    for lvl, v in levels.items() if isinstance(v, Mapping)
                },
            }
        )  # fmt: skip
    shipped = default_model_path()
    card_path = shipped.with_name("README.md") if shipped is not None else None
    if card_path is not None and card_path.is_file() and _same_weights(bundle, shipped):
        text = card_path.read_text(encoding="utf-8")
        for title in ("Intended use", "Limitations"):
            section = _markdown_section(text, title)
            if section:
                facts["card"][title] = section
    return facts


def _same_weights(bundle: ModelBundle, path: Path | None) -> bool:
    if path is None:
        return False
    try:
        from ..model import ModelBundle as _MB
        from ..model import bundle_fingerprint

        return bundle_fingerprint(_MB.load(path)) == bundle_fingerprint(bundle)
    except Exception:  # an unreadable shipped model: no card text, the numbers still come from the bundle
        return False


def _markdown_section(text: str, title: str) -> str:
    m = re.search(rf"^##\s+{re.escape(title)}\s*$(.*?)(?=^##\s|\Z)", text, flags=re.M | re.S)
    return m.group(1).strip() if m else ""


def _md_inline(s: str) -> str:
    out = html.escape(s)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _markdown_html(md: str) -> str:
    """A tiny subset of Markdown (paragraphs, ``-`` bullets, bold, code) as HTML."""
    parts: list[str] = []
    items: list[str] = []
    para: list[str] = []

    def flush_para() -> None:
        if para:
            parts.append(f"<p>{_md_inline(' '.join(para))}</p>")
            para.clear()

    def flush_items() -> None:
        if items:
            parts.append("<ul>" + "".join(f"<li>{_md_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in md.splitlines():
        stripped = line.strip()
        if stripped.startswith("- "):
            flush_para()
            items.append(stripped[2:])
        elif not stripped:
            flush_para()
            flush_items()
        elif items and line.startswith("  "):
            items[-1] += ("" if items[-1].endswith("-") else " ") + stripped  # a word broken at a hyphen stays one
        else:
            flush_items()
            para.append(stripped)
    flush_para()
    flush_items()
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2430;
background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:34px 0 10px;border-bottom:2px solid #d8dde5;
padding-bottom:4px}h3{font-size:16px;margin:18px 0 6px}
.notice{background:#fff4d6;border:1px solid #e6c25a;border-radius:6px;padding:10px 14px;margin:14px 0}
.notice strong{color:#7a4b00}
table{border-collapse:collapse;margin:6px 0 12px;background:#fff}
td,th{border:1px solid #d8dde5;padding:4px 9px;text-align:left;font-size:14px;vertical-align:top}
th{background:#eef1f5;font-weight:600}
.num{text-align:right;font-variant-numeric:tabular-nums}
.card{background:#fff;border:1px solid #d8dde5;border-radius:8px;padding:6px 18px 14px;margin:18px 0}
img{max-width:100%;display:block;margin:8px 0}img.figure{width:100%;height:auto}
.muted{color:#667085;font-size:13px}
.chip{display:inline-block;border-radius:10px;padding:1px 8px;color:#fff;font-size:13px;margin-right:4px}
nav ul{columns:3;font-size:14px}
code{background:#eef1f5;padding:0 3px;border-radius:3px}
"""


def _fmt(v: Any, fmt: str = "{:.1f}", none: str = "–") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    return fmt.format(v)


def _chip(text: str, color: str) -> str:
    return f'<span class="chip" style="background:{color}">{html.escape(text)}</span>'


def _anchor(stream_id: str) -> str:
    return "stream-" + re.sub(r"[^A-Za-z0-9_-]", "-", stream_id)


def _stream_section(s: StreamData, summ: dict[str, Any], figs: dict[str, str | None]) -> str:
    info = s.info
    e = html.escape
    labels = " ".join(
        _chip(f"{k} {v * 100:.0f}%", CLASS_COLORS.get(k, QUALITY_COLORS.get(k, _OTHER_COLOR)))
        for k, v in summ["labels"].items()
    ) or '<span class="muted">no windows</span>'
    if summ["estimate"] is not None:
        est = _chip(f"{summ['estimate']} {summ['confidence'] * 100:.0f}%", CLASS_COLORS.get(summ["estimate"], "#444"))
        cum = ", ".join(f"{k} {v * 100:.0f}%" for k, v in summ["cumulative"].items() if math.isfinite(v))
        est += f' <span class="muted">(mean of the usable windows: {e(cum)})</span>'
    elif not summ["trained"]:
        est = "<strong>none: the model is untrained</strong> (its numbers are placeholders)"
    else:
        est = '<span class="muted">none (no usable window)</span>'
    flags = ", ".join(f"{e(k.replace('_', ' '))} {v}" for k, v in summ["flags"].items()) or "none"
    gaps = (
        f"{summ['seq_gaps']} missing chunks by sequence number · {summ['time_gaps']} timestamp jumps "
        f"({_fmt(summ['time_gap_s'], '{:.2f}')} s skipped) · {summ['recorder_lost_samples']} samples lost by "
        "the recorder"
    )
    rows = [
        ("stream", f"{e(info.name)} <span class=\"muted\">({e(info.stream_id)})</span>"),
        ("source", e(info.source or "–")),
        ("rate, channels", f"{info.fs:g} Hz · {info.n_channels} ({e(', '.join(info.channels))}) · µV"),
        ("duration", f"{_fmt(summ['duration_s'])} s of samples ({summ['samples']:,}); "
                     f"timestamps span {_fmt(summ['span_s'])} s"),
        ("windows", f"{summ['windows']:,}"),
        ("label over time", labels),
        ("recording-level estimate", est),
        ("signal quality", f"{_fmt(summ['usable'] * 100 if math.isfinite(summ['usable']) else None, '{:.0f}')}% "
                           f"of windows usable · flags: {flags}"),
        ("gaps", gaps),
        ("decision latency", f"p50 {_fmt(summ['latency_p50_ms'])} ms · p99 {_fmt(summ['latency_p99_ms'])} ms"),
    ]  # fmt: skip
    if s.truncated:
        rows.append(("pictures", f"the spectrogram and excerpts cover the first {s.data.shape[0] / info.fs:.0f} s "
                                 "(raise --max-signal-s to read more)"))  # fmt: skip
    table = "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"
    table += _qemg_table(s.estimates)
    pics = []
    for key, title, alt in (
        ("timeline", "Probability timeline", "class probabilities over time"),
        ("spectrogram", "Spectrogram", "spectrogram of the stream"),
        ("excerpts", "Signal excerpts (filtered)", "signal excerpts"),
    ):
        data = figs.get(key)
        if data:
            pics.append(
                f'<h3>{title}</h3><img class="figure" data-figure="{key}" alt="{e(alt)} of {e(info.name)}" '
                f'src="data:image/png;base64,{data}">'
            )
        else:
            pics.append(f'<h3>{title}</h3><p class="muted">not available (too little data)</p>')
    return (
        f'<section class="card stream" id="{_anchor(info.stream_id)}" data-stream="{e(info.stream_id)}">'
        f"<h2>{e(info.name)}</h2>{table}{''.join(pics)}</section>"
    )


def _qemg_table(ests: Sequence[Estimate]) -> str:
    """The stream's QEMG measures at the end of the session, when its estimates carry them."""
    from .streamview import QEMG_LABELS

    last = next((e.qemg for e in reversed(ests) if getattr(e, "qemg", None)), None)
    if not isinstance(last, Mapping):
        return ""
    heads, values = [], []
    for key, label, unit in QEMG_LABELS:
        if key in last:
            v = last[key]
            val = "–" if v is None else (f"{v:.3g}" if isinstance(v, float) else html.escape(str(v)))
            unit_txt = f' <span class="muted">{html.escape(unit)}</span>' if unit and v is not None else ""
            heads.append(f"<th>{html.escape(label)}</th>")
            values.append(f'<td class="num">{val}{unit_txt}</td>')
    if not heads:
        return ""
    return (
        '<h3>QEMG at the end of the session</h3><p class="muted">Quantitative MUAP analysis over the stream\'s last '
        "seconds: means over the motor units found, and counts of spontaneous potentials (fibrillations, positive "
        "sharp waves, fasciculations).</p>"
        f'<table class="qemg"><tr>{"".join(heads)}</tr><tr>{"".join(values)}</tr></table>'
    )


def _model_section(facts: Mapping[str, Any], recorded_trained: bool | None) -> str:
    e = html.escape
    if not facts.get("available"):
        return (
            '<section class="card" id="model"><h2>Model</h2><p>No model bundle could be loaded, so its facts '
            "are not shown. The estimates in this report are the ones recorded.</p></section>"
        )
    rows = [
        ("model", f"{e(str(facts['name']))} · format version {facts['format_version']} · fingerprint "
                  f"<code>{e(str(facts['fingerprint']))}</code>"),
        ("trained", "yes" if facts["trained"] else "<strong>no: untrained, its outputs are placeholders</strong>"),
        ("classes", e(", ".join(facts["classes"]))),
        ("input", f"{facts['fs']:g} Hz, windows of {facts['window_s']:g} s every {facts['hop_s']:g} s"),
    ]  # fmt: skip
    if facts.get("parameters"):
        rows.append(("size", f"{int(facts['parameters']):,} parameters"))
    data = facts.get("data") or {}
    if data:
        parts = []
        for name, d in data.items():
            cls = ", ".join(f"{k} {v}" for k, v in (d.get("classes") or {}).items())
            n_rec, n_sub = d.get("recordings", "?"), d.get("subjects", "?")
            parts.append(f"{e(name)}: {n_rec} recordings, {n_sub} subjects ({e(cls)})")
        rows.append(("trained on", "<br>".join(parts)))
    table = "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"
    metrics = ""
    if facts.get("reports"):
        head = "<tr><th>protocol</th><th>windows</th><th>recordings</th><th>subjects</th></tr>"
        body = ""
        for rep in facts["reports"]:
            cells = []
            for lvl in ("window", "recording", "subject"):
                v = rep["levels"].get(lvl)
                cells.append(f'<td class="num">{v[1] * 100:.1f}% <span class="muted">(n={v[0]})</span></td>'
                             if v else "<td>–</td>")  # fmt: skip
            body += f"<tr><td>{e(rep['protocol'])}</td>{''.join(cells)}</tr>"
        metrics = (
            "<h3>Measured accuracy</h3><p class=\"muted\">Subject-wise: no subject is on both sides of a split "
            "(except the row marked LEAKY, shown only for comparison).</p>"
            f"<table>{head}{body}</table>"
        )
    card = ""
    for title, md in (facts.get("card") or {}).items():
        card += f"<h3>{e(title)}</h3>{_markdown_html(md)}"
    note = ""
    if recorded_trained is not None and recorded_trained != facts["trained"]:
        note = (
            '<p class="notice">The recorded estimates were made by a model whose trained state differs from this '
            "one: the facts below may not describe the model that made them.</p>"
        )
    return (
        '<section class="card" id="model"><h2>Model</h2><p class="muted">Facts of the model given to the report '
        "(the shipped model unless <code>--model</code> names another; a recording does not name its model).</p>"
        f"{note}{table}{metrics}{card}</section>"
    )


def render_report(
    recording: Recording,
    bundle: ModelBundle | None,
    settings: ReportSettings | None = None,
    title: str | None = None,
) -> str:
    """The whole report as one HTML document (pictures embedded)."""
    settings = settings or ReportSettings()
    e = html.escape
    streams = list(recording.streams.values())
    sections = []
    toc = []
    trained_states = {est.trained for s in streams for est in s.estimates}
    for s in streams:
        summ = stream_summary(s)
        filtered = _filtered(s, bundle)
        figs = {
            "timeline": timeline_figure(s, settings),
            "spectrogram": spectrogram_figure(s, filtered, settings),
            "excerpts": excerpts_figure(s, filtered, settings),
        }
        sections.append(_stream_section(s, summ, figs))
        est = f"{summ['estimate']} {summ['confidence'] * 100:.0f}%" if summ["estimate"] else "no estimate"
        toc.append(f'<li><a href="#{_anchor(s.info.stream_id)}">{e(s.info.name)}</a> · {e(est)}</li>')
    header = recording.header
    created = header.get("created") or _fmt(header.get("created_unix"), "{:.0f}")
    state = "complete (closed cleanly)"
    if not recording.complete:
        state = "interrupted (no clean close; read up to the last whole record)"
    session_rows = [
        ("recording", e(str(recording.path))),
        ("created", e(str(created))),
        ("written by", e(str(header.get("writer", "?")))),
        ("state", e(state) + (f" · {recording.torn_bytes} torn bytes at the end" if recording.torn_bytes else "")
         + (f" · {recording.corrupt_records} damaged records skipped" if recording.corrupt_records else "")),
        ("streams", f"{len(streams)}" + (f" reported of {recording.total_streams} (raise the limit with "
                                         "--max-streams)" if recording.total_streams > len(streams) else "")),
    ]  # fmt: skip
    session = (
        '<section class="card" id="session"><h2>Session</h2><table>'
        + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in session_rows)
        + "</table>"
        + (f"<nav><ul>{''.join(toc)}</ul></nav>" if toc else "<p>No stream in this recording.</p>")
        + "</section>"
    )
    facts = model_facts(bundle)
    recorded_trained = next(iter(trained_states)) if len(trained_states) == 1 else None
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    title = title or f"streamemg session report: {recording.path.name}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="streamemg {e(__version__)}">
<title>{e(title)}</title><style>{_CSS}</style></head>
<body><main>
<h1>{e(title)}</h1>
<p class="muted">Made {e(now)} by streamemg {e(__version__)} from the recording below.</p>
<div class="notice" id="disclaimer"><strong>Research software, not a diagnosis.</strong> streamemg is not a
medical device. The labels and probabilities below are the output of a classifier with the measured accuracy
and limitations stated under <a href="#model">Model</a>; they must not be used for clinical decisions.</div>
{session}
{"".join(sections)}
{_model_section(facts, recorded_trained)}
</main></body></html>
"""


def build_report(
    path: str | Path,
    out: str | Path | None = None,
    bundle: ModelBundle | None = None,
    settings: ReportSettings | None = None,
) -> Path:
    """Write the HTML report of a recording (or of a replayed file) and return its path.

    Args:
        path: a ``record:DIR`` recording directory, or any file ``--source file:PATH`` plays.
        out: where to write (default ``report.html`` inside the recording directory, or next to the file).
        bundle: the model (for the replay of a file, the display filter and the model card); None = no card.
        settings: what to show.
    """
    settings = settings or ReportSettings()
    p = Path(path)
    with recording_of(p, bundle) as rec_path:
        recording = load_recording(rec_path, max_streams=settings.max_streams, max_signal_s=settings.max_signal_s)
        recording = dataclasses.replace(recording, path=p)
        document = render_report(recording, bundle, settings)
    if out is None:
        out = (p / "report.html") if p.is_dir() else p.with_suffix(".report.html")
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".part")
    tmp.write_text(document, encoding="utf-8")
    tmp.replace(out_path)
    return out_path

