"""Streaming quantitative MUAP analysis (QEMG) of one stream: detection, templates, measures, summary.

Per stream, per channel, online::

    filtered block (n, C) µV -> Detector (causal peaks, aligned segments)
                             -> TemplateSet per channel (online clustering over a rolling horizon)
                             -> units: templates with >= min_discharges in the horizon, not time-locked
                                to a larger template (a second peak of the same potential)
                             -> measures per unit (amplitude, duration, phases, turns, area, thickness,
                                firing rate and CV) and per stream (means, % polyphasic, number of units,
                                recruitment ratio, spontaneous activity)

:meth:`QemgAnalyser.process` runs once per block (the pipeline gives it one hop of filtered samples);
:meth:`QemgAnalyser.summary` measures the current units (cached until a template changes). The compact
JSON form (:meth:`QemgSummary.to_dict`) is what estimates carry as ``qemg``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from ..dsp import FilterSettings, StreamFilter
from ..errors import ConfigError
from .blocks import BlockGatherer
from .detect import Detector
from .measures import POLYPHASIC_PHASES, WaveformMeasures, firing_stats, remove_baseline, waveform_measures
from .normative import flag_measures
from .templates import TemplateSet, shifted_rows

F64 = npt.NDArray[np.float64]
log = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class QemgSettings:
    """How MUAPs are found, grouped and measured.

    Attributes:
        enabled: run QEMG in the pipeline (estimates then carry ``qemg``).
        highpass_hz: corner of the analyser's own 2nd-order Butterworth high-pass, Hz. MUAP analysis needs a
            low corner (clinical systems use 2-10 Hz): the classifier's 20 Hz 4th-order high-pass and its mains
            notch ring after every potential, which shrinks large MUAPs by up to 15% and stretches durations
            by up to 10 ms (measured on the simulator's kernels; docs/qemg.md).
        notch_hz: mains notch (50 or 60 Hz, 3 harmonics, Q 30) for recordings dominated by hum, None for none.
            Off by default: it rings after large potentials, lengthening durations.
        pre_ms, post_ms: segment span before / after the aligning peak, ms.
        dead_ms: smallest spacing of two candidates on one channel, ms (the largest peak within it wins). 5 ms: the
            terminal phase of a bi- or triphasic potential peaks about 3 ms after its main spike at a third of its
            size, and at 3 ms it was detected as a candidate of its own, whose templates took other units' slots
            and discharges; two units firing within 5 ms of each other are one candidate for the pair fit.
        align_ms: a candidate is aligned on its largest peak of ``|x|`` smoothed over this span (a centred moving
            average, within 0.2 ms of the detected peak), not on the detected sample itself, where the noise added
            the most: on small units that lifted every aligned peak, and the template's amplitude, by about the
            noise's excursion (normal units of 20-30 µV read 10-25% too large). 0: the detected sample.
        match_ms: half-width of the matching window around the peak, ms.
        choose_ms: when a candidate passes the match with several templates, it goes to the one nearest over this
            half-width around the peak (ms): units whose main spikes look alike over ``match_ms`` differ in their
            slower phases. 0: the nearest over the matching window.
        k_detect: detection threshold in multiples of the baseline noise; min_uv: its floor, µV.
        tol: relative shape tolerance of a template match; k_noise: noise allowance of a match.
        max_templates: template slots per channel.
        horizon_s: rolling horizon: units and their discharges older than this are forgotten, s.
        min_discharges: discharges within the horizon for a template to count as a unit.
        min_snr: a unit's amplitude must reach this multiple of the detection threshold (noise templates
            built from threshold crossings of the noise peak just above the threshold).
        match_rate_hz: the matching vector is subsampled to about this rate (cost; shapes are smooth).
        pair_ms: superposition resolution: a candidate that matches no template, once the known discharges around
            it are subtracted, is tried as the sum of two templates, the second up to this far (ms) from its peak;
            0 turns both off.
        block_s: samples are gathered and analysed in blocks of this many seconds (each numpy call then works
            on a second of signal, so the per-call overhead is paid about once per second per stream).
        background: in the pipeline, live streams are analysed in a separate process shared by all of them, at
            a lower CPU priority (:mod:`streamemg.qemg.service`), so that classification always comes first; a
            stream whose blocks pile up there (more than 4 waiting) drops new ones and counts them. Estimates
            carry the latest finished measurement. Offline sources (files at full speed) are always analysed
            inline, so no block is lost. False analyses live streams inline too (on the event loop).
        nice: how much lower the QEMG process's CPU priority is (added niceness, 0-19).
        sched_idle: run the QEMG process under Linux's ``SCHED_IDLE`` policy (only on CPU nothing else wants,
            preempted at once when a pipeline thread wakes up); where it is not available, ``nice`` alone.
        processes: QEMG processes for live streams; 0 (default): one per core beyond two (at least one).
        yield_load: live streams' QEMG gives way to classification while the pipeline's event loop is busier than
            this share of its core (smoothed over about a second; and from the start until it shows room): new
            blocks are dropped and the QEMG processes skip what they hold, until the share is 0.1 under it again;
            the share analysed says how much was. A busy QEMG process slows the pipeline's threads even at the
            lowest CPU priority. 1: never.
        summary_every_s: the units are measured again after this much new signal (s); estimates in between
            carry the last measurement. A unit's waveform is measured again only when its discharge count grew
            by 10% (its running median barely moves otherwise).
    """

    enabled: bool = True
    highpass_hz: float = 5.0
    notch_hz: float | None = None
    pre_ms: float = 15.0
    post_ms: float = 25.0
    dead_ms: float = 5.0
    align_ms: float = 0.3
    match_ms: float = 1.5
    choose_ms: float = 4.0
    k_detect: float = 5.0
    min_uv: float = 10.0
    tol: float = 0.05
    k_noise: float = 2.0
    max_templates: int = 16
    horizon_s: float = 10.0
    min_discharges: int = 5
    min_snr: float = 1.6
    match_rate_hz: float = 12000.0
    pair_ms: float = 4.0
    block_s: float = 2.0
    summary_every_s: float = 5.0
    background: bool = True
    nice: int = 10
    sched_idle: bool = True
    processes: int = 0
    yield_load: float = 0.6

    def __post_init__(self) -> None:
        positive = (
            "highpass_hz", "pre_ms", "post_ms", "dead_ms", "match_ms", "k_detect", "tol", "horizon_s", "match_rate_hz",
            "summary_every_s", "block_s",
        )
        for name in positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ConfigError(f"QemgSettings.{name}={v!r}: give a positive number")
        for name in ("min_uv", "k_noise", "min_snr", "pair_ms", "choose_ms", "align_ms"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"QemgSettings.{name}={v!r}: give a number >= 0")
        whole = (("max_templates", 1, 256), ("min_discharges", 2, 10_000), ("nice", 0, 19), ("processes", 0, 64))
        for name, lo, hi in whole:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ConfigError(f"QemgSettings.{name}={v!r}: give a whole number from {lo} to {hi}")
        v = self.yield_load
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.2 < v <= 1.0):
            raise ConfigError(f"QemgSettings.yield_load={v!r}: give a share of a core above 0.2 and up to 1 (never)")
        if self.notch_hz is not None and self.notch_hz not in (50.0, 60.0):
            raise ConfigError(f"QemgSettings.notch_hz={self.notch_hz!r}: use 50 or 60 (the local mains), or None")
        if self.match_ms >= min(self.pre_ms, self.post_ms):
            raise ConfigError(
                f"QemgSettings.match_ms={self.match_ms!r} must be shorter than pre_ms and post_ms "
                f"({self.pre_ms:g}, {self.post_ms:g})"
            )


@dataclass(frozen=True, slots=True)
class UnitMeasures:
    """One motor unit (or spontaneous source) found on one channel.

    Attributes:
        channel: channel index.
        waveform: measures of its template (see :mod:`streamemg.qemg.measures`).
        discharges: discharges within the horizon.
        firing_hz, firing_cv: firing rate (Hz) and its coefficient of variation (NaN if too few intervals).
        kind: ``"muap"``, ``"fibrillation"``, ``"positive_sharp_wave"`` or ``"fasciculation"``.
        template: the baseline-corrected template, µV, shape (L,), at the analyser's rate.
        times_s: its discharge times within the horizon, s from the stream's first sample, shape (N,).
    """

    channel: int
    waveform: WaveformMeasures
    discharges: int
    firing_hz: float
    firing_cv: float
    kind: str
    template: F64 = field(repr=False)
    times_s: F64 = field(repr=False)


class _Template(NamedTuple):
    """A template on its way to a unit: its baseline-corrected waveform, its measures, its discharge times within the
    horizon (samples) and the uncertainty of each of its samples (µV; :func:`_uncertainty`)."""

    wave: F64
    measures: WaveformMeasures
    times: npt.NDArray[np.int64]
    uncertainty: F64


#: Standard deviation of a Gaussian per unit of its mean absolute deviation, sqrt(pi / 2).
_SD_PER_MAD = math.sqrt(math.pi / 2.0)


def _uncertainty(spread: F64, n: int) -> F64:
    """How far a template's samples may lie from the potential's own values: 2 standard errors of the scatter of
    its ``n`` discharges (``spread``: each sample's running mean absolute deviation), µV. Where other units' activity
    falls on a few of a unit's discharges, the scatter is large there and the template uncertain."""
    return 2.0 * _SD_PER_MAD * spread / math.sqrt(max(1, n))


def _mean(values: list[float]) -> float | None:
    v = [x for x in values if math.isfinite(x)]
    return float(np.mean(v)) if v else None


def _r(v: float | None, nd: int = 1) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), nd)


@dataclass(frozen=True, slots=True)
class QemgSummary:
    """The QEMG state of one stream at one moment.

    Attributes:
        units: the units found (all channels), largest first.
        activity_uv: RMS of the recent filtered signal (all channels pooled), µV.
        noise_uv: baseline noise per channel, µV.
        n_channels: channels analysed.
        seconds: signal seen so far, s.
    """

    units: tuple[UnitMeasures, ...]
    activity_uv: float
    noise_uv: tuple[float, ...]
    n_channels: int
    seconds: float

    @property
    def muaps(self) -> tuple[UnitMeasures, ...]:
        """The voluntary units (spontaneous sources left out)."""
        return tuple(u for u in self.units if u.kind == "muap")

    def measures(self, channel: int | None = None) -> dict[str, float | int | None]:
        """Stream (or one channel's) measures: means over the voluntary units plus counts. The waveform means are
        over the units whose potential was measured (:attr:`WaveformMeasures.measured`); every unit counts in
        ``units`` and in the firing measures."""
        mu = [u for u in self.muaps if channel is None or u.channel == channel]
        sp = [u for u in self.units if u.kind != "muap" and (channel is None or u.channel == channel)]
        n = len(mu)
        rates = [u.firing_hz for u in mu if math.isfinite(u.firing_hz)]
        ws = [u.waveform for u in mu if u.waveform.measured]
        return {
            "units": n,
            "amplitude_uv": _r(_mean([w.amplitude_uv for w in ws]), 1),
            "duration_ms": _r(_mean([w.duration_ms for w in ws]), 2),
            "phases": _r(_mean([float(w.phases) for w in ws]), 2),
            "turns": _r(_mean([float(w.turns) for w in ws]), 2),
            "area_uv_ms": _r(_mean([w.area_uv_ms for w in ws]), 1),
            "thickness_ms": _r(_mean([w.thickness_ms for w in ws]), 3),
            "polyphasic_pct": _r(100.0 * sum(w.phases > POLYPHASIC_PHASES for w in ws) / len(ws), 1) if ws else None,
            "firing_hz": _r(_mean(rates), 2),
            "firing_cv": _r(_mean([u.firing_cv for u in mu]), 3),
            "recruitment_ratio": _r(max(rates) / n, 2) if rates else None,
            "fibrillations": sum(u.kind == "fibrillation" for u in sp),
            "positive_sharp_waves": sum(u.kind == "positive_sharp_wave" for u in sp),
            "fasciculations": sum(u.kind == "fasciculation" for u in sp),
        }

    def to_dict(self) -> dict[str, Any]:
        """The compact JSON form carried by estimates (no NaN: missing values are None)."""
        out: dict[str, Any] = self.measures()
        out["activity_uv"] = _r(self.activity_uv, 1)
        out["noise_uv"] = _r(float(np.mean(self.noise_uv)) if self.noise_uv else float("nan"), 2)
        if self.n_channels > 1:
            out["channels"] = [self.measures(c) for c in range(self.n_channels)]
        return out


class QemgAnalyser:
    """Online QEMG of one stream (all its channels).

    Args:
        fs: rate of the samples given to :meth:`process`, Hz.
        n_channels: channels.
        settings: see :class:`QemgSettings`.
        phase: 0..1, where in its block and summary periods this stream starts. The pipeline gives each stream
            its own (from its id), so the streams' block analyses and re-measurements do not all fall due in
            the same hop, which would stall the analysis for all of them at once.

    This class analyses in the caller's thread; the pipeline runs live streams' analysers in the QEMG process
    through :class:`streamemg.qemg.service.RemoteQemg`.
    """

    def __init__(self, fs: float, n_channels: int, settings: QemgSettings | None = None, phase: float = 0.0) -> None:
        s = settings or QemgSettings()
        self.settings = s
        self.fs = float(fs)
        self.n_channels = int(n_channels)
        self.filter = StreamFilter(
            FilterSettings(highpass_hz=s.highpass_hz, highpass_order=2, notch_hz=s.notch_hz), self.fs, self.n_channels
        )
        self.detector = Detector(
            self.fs, self.n_channels, pre_ms=s.pre_ms, post_ms=s.post_ms, dead_ms=s.dead_ms,
            k_detect=s.k_detect, min_uv=s.min_uv, align_ms=s.align_ms,
        )
        pre, post = self.detector.pre, self.detector.post
        half = max(2, round(s.match_ms * self.fs / 1000.0))
        step = max(1, round(self.fs / s.match_rate_hz))
        match_idx = np.arange(pre - half, pre + half + 1, step, dtype=np.int64)
        ring = max(16, math.ceil(s.horizon_s * 60.0))  # room for 60 Hz over the whole horizon
        self.sets = [
            TemplateSet(pre + post, match_idx, max_templates=s.max_templates, ring=ring, n_cap=64, tol=s.tol,
                        k_noise=s.k_noise, max_shift=self.detector.dead, pre=pre,
                        pair_shift=round(s.pair_ms * self.fs / 1000.0), shift_step=step, min_gap=round(0.015 * self.fs),
                        choose=round(s.choose_ms * self.fs / 1000.0))
            for _ in range(self.n_channels)
        ]
        self.horizon = max(1, round(s.horizon_s * self.fs))
        self._summary_every = max(1, round(s.summary_every_s * self.fs))
        self._edge = max(1, round(2.0 * self.fs / 1000.0))  # 2 ms at each end of a segment = baseline
        self._sumsq = 0.0
        self._count = 0
        self._activity = float("nan")
        self._cache: tuple[tuple[int, ...], QemgSummary] | None = None
        phase = float(phase) % 1.0
        self.blocks = BlockGatherer(self.fs, s.block_s, phase)  # exact blocks; the first is shorter: the stagger
        self._summary_offset = round(phase * self._summary_every)
        # (channel, slot) -> (generation, count when measured, baseline-corrected template, measures, uncertainty)
        self._measured: dict[tuple[int, int], tuple[int, int, F64, WaveformMeasures, F64]] = {}
        self._latest: tuple[QemgSummary, dict[str, Any]] | None = None
        self.dropped_blocks = 0  # always 0 here (see RemoteQemg)

    @property
    def samples_seen(self) -> int:
        """Samples analysed so far (those waiting for a full block not counted)."""
        return self.detector.samples_seen

    def process(self, raw: npt.NDArray[np.floating]) -> None:
        """Take the next samples, float (n, C) µV at ``fs`` (unfiltered: the analyser filters); they are analysed
        in blocks of exactly ``block_s`` (the arrays are kept by reference until then: do not modify them), so the
        result does not depend on how the samples were chunked."""
        for block in self.blocks.add(raw):
            try:
                self._analyse(block)
                key = ((self.detector.samples_seen + self._summary_offset) // self._summary_every,)
                if self._cache is None or self._cache[0] != key:
                    self._publish(self._summarise(key))
            except Exception:  # a failure here must not take the stream down; it is logged and the block lost
                log.exception("QEMG analysis failed; block skipped")

    def _publish(self, summ: QemgSummary) -> None:
        d = summ.to_dict()
        d["flags"] = flag_measures(d)
        self._latest = (summ, d)  # one reference swap: readers on other threads see old or new, never half

    def flush(self) -> None:
        """Analyse whatever samples are gathered now (the block in progress, cut short)."""
        raw = self.blocks.take_rest()
        if raw is not None:
            self._analyse(raw)

    def _analyse(self, raw: npt.NDArray[np.floating]) -> None:
        block = self.filter.process(np.asarray(raw, dtype=np.float32))
        dets = self.detector.process(block)
        n = block.shape[0]
        if n:
            flat = np.asarray(block, dtype=np.float64).reshape(-1)
            ss = float(np.einsum("i,i->", flat, flat))  # no BLAS: its idle threads spin (see templates._products)
            if math.isfinite(ss):
                a = min(1.0, n / (0.5 * self.horizon))  # activity: RMS over about half a horizon
                cur = ss / flat.size
                prev = self._activity * self._activity if math.isfinite(self._activity) else cur
                self._activity = math.sqrt((1 - a) * prev + a * cur)
        noise = self.detector.noise
        for d in dets:
            nz = float(noise[d.channel]) if math.isfinite(noise[d.channel]) else 0.0
            self.sets[d.channel].assign(d.times, d.segments, nz)
        oldest = self.detector.samples_seen - self.horizon
        for t in self.sets:
            t.expire(oldest)

    def summary(self, fresh: bool = False) -> QemgSummary:
        """The latest measurement of the units (taken every ``summary_every_s`` of signal), or, with ``fresh``,
        one taken now after every sample given so far was analysed."""
        if fresh:
            self.flush()
            key = ((self.detector.samples_seen + self._summary_offset) // self._summary_every,)
            summ = self._summarise(key)
            self._publish(summ)
            return summ
        latest = self._latest
        if latest is None:
            empty = QemgSummary((), float("nan"), (), self.n_channels, 0.0)
            self._latest = latest = (empty, {**empty.to_dict(), "flags": {}})
        return latest[0]

    def _summarise(self, key: tuple[int, ...]) -> QemgSummary:
        """Measure the current units."""
        units: list[UnitMeasures] = []
        oldest = self.detector.samples_seen - self.horizon
        thr = self.detector.threshold
        for c, ts in enumerate(self.sets):
            units.extend(self._channel_units(c, ts, oldest, float(thr[c])))
        units.sort(key=lambda u: -u.waveform.amplitude_uv)
        noise = tuple(float(x) if math.isfinite(x) else float("nan") for x in self.detector.noise)
        out = QemgSummary(tuple(units), self._activity, noise, self.n_channels, self.samples_seen / self.fs)
        self._cache = (key, out)
        return out

    def summary_dict(self) -> dict[str, Any]:
        """:meth:`summary` in its compact JSON form, with ``flags``; what estimates carry as ``qemg``."""
        self.summary()
        latest = self._latest
        assert latest is not None
        return latest[1]

    def _channel_units(self, c: int, ts: TemplateSet, oldest: int, thr: float) -> list[UnitMeasures]:
        s = self.settings
        cands: list[_Template] = []
        for j in np.flatnonzero(ts.active):
            times = ts.recent_times(int(j), oldest)
            if times.size < min(3, s.min_discharges):
                continue
            if float(np.ptp(ts.wave[j])) < s.min_snr * thr:  # too small to count (the baseline does not change it)
                continue
            gen, count = int(ts.generation[j]), int(ts.count[j])
            hit = self._measured.get((c, int(j)))
            if hit is not None and hit[0] == gen and count < 1.1 * hit[1] + 1:
                w, m, u = hit[2], hit[3], hit[4]
            else:
                w, sd = remove_baseline(ts.wave[j], self._edge)
                u = _uncertainty(ts.spread[j], min(count, ts.n_cap))
                m = waveform_measures(w, self.fs, noise_uv=sd, peak=self.detector.pre, uncertainty_uv=u)
                self._measured[(c, int(j))] = (gen, count, w, m, u)
            if m.amplitude_uv < s.min_snr * thr:
                continue
            cands.append(_Template(w, m, times, u))
        # a template time-locked to another whose aligning peak is larger is a second peak of that unit's potential,
        # not a unit of its own: every discharge was aligned on its largest peak, so the unit's own template has the
        # larger value there (a template aligned on a later phase holds the main spike beside its aligning peak, and
        # its peak-to-peak can be the larger one)
        pre = self.detector.pre
        cands.sort(key=lambda x: -abs(float(x.wave[pre])))
        lock = round(0.3e-3 * self.fs) + 1
        locked = _lock_matrix([x.times for x in cands], self.detector.pre + self.detector.post, lock)
        kept_idx: list[int] = []
        for i in range(len(cands)):
            if not any(locked[i, k] for k in kept_idx):
                kept_idx.append(i)
        kept = self._join_fragments([cands[i] for i in kept_idx])
        out: list[UnitMeasures] = []
        for w, m, times, _ in kept:
            t_s = times / self.fs
            rate, cv, n_kept = firing_stats(t_s)
            kind = _kind(m, t_s, rate, cv, n_kept)
            if kind == "muap" and times.size < s.min_discharges:
                continue
            out.append(UnitMeasures(c, m, int(times.size), rate, cv, kind, w, t_s))
        return out

    def _join_fragments(
        self, units: list[_Template]
    ) -> list[_Template]:
        """Join templates that hold one unit's discharges between them (the unit aligned on one of two peaks of
        similar size, or seeded twice): amplitudes within 25%, the same shape at a shift of up to ``dead_ms``
        (correlation >= 0.95 over the template less the shift range), and discharge trains that do not come within
        25 ms of each other (at most 10% of the smaller one's discharges do: one unit does not fire twice in 25 ms,
        two independent units at 5-20 Hz do so for 25-100% of their discharges). The joined unit has both trains
        (the second's times moved by the shift) and the discharge-weighted mean of the two templates."""
        if len(units) < 2:
            return units
        d = self.detector.dead
        close = round(0.025 * self.fs)
        out = list(units)
        i = 0
        while i < len(out):
            j = i + 1
            while j < len(out):
                mi, ti = out[i].measures, out[i].times
                mj, tj = out[j].measures, out[j].times
                joined = None
                if mi.amplitude_uv > 0 and 0.8 <= mj.amplitude_uv / mi.amplitude_uv <= 1.25 and ti.size and tj.size:
                    pos = np.searchsorted(ti, tj)
                    left = np.abs(tj - ti[np.maximum(pos - 1, 0)])
                    right = np.abs(ti[np.minimum(pos, ti.size - 1)] - tj)
                    if np.count_nonzero(np.minimum(left, right) <= close) <= 0.1 * min(ti.size, tj.size):
                        joined = self._joined(out[i], out[j], d)
                if joined is not None:
                    out[i] = joined
                    del out[j]
                else:
                    j += 1
            i += 1
        return out

    def _joined(self, ti_: _Template, tj_: _Template, d: int) -> _Template | None:
        """Template ``j`` as template ``i`` at a shift (see :meth:`_join_fragments`): the joined template (its
        uncertainty pooled from the two), or None if the shapes differ."""
        wi, ti, wj, tj = ti_.wave, ti_.times, tj_.wave, tj_.times
        n = wi.size
        if n <= 2 * d + 2:
            return None
        a = wi[d : n - d]
        win = np.lib.stride_tricks.sliding_window_view(wj, a.size)  # (2d + 1, n - 2d): wj moved by -d..d
        den = np.sqrt(np.einsum("sl,sl->s", win, win) * float(np.einsum("l,l->", a, a))) + 1e-12
        corr = np.einsum("sl,l->s", win, a) / den
        k = int(np.argmax(corr))
        if corr[k] < 0.95:
            return None
        shift = k - d  # wj[x + shift] lines up with wi[x]
        moved, moved_u = shifted_rows(np.stack([wj, tj_.uncertainty]), np.array([shift, shift]))
        ni, nj = ti.size, tj.size
        w = (ni * wi + nj * moved) / (ni + nj)
        u = np.sqrt((ni * ti_.uncertainty) ** 2 + (nj * moved_u) ** 2) / (ni + nj)
        w, sd = remove_baseline(w, self._edge)
        m = waveform_measures(w, self.fs, noise_uv=sd, peak=self.detector.pre, uncertainty_uv=u)
        return _Template(w, m, np.sort(np.concatenate([ti, tj + shift])), u)  # i's aligning peak: shift after j's



def _lock_matrix(trains: list[npt.NDArray[np.int64]], span: int, lock: int) -> npt.NDArray[np.bool_]:
    """``M[i, j]`` is True when most discharges of train ``i`` sit at one fixed lag from a discharge of train ``j``
    (``i`` is then a second peak of ``j``'s potential); trains are increasing sample indices.

    Each discharge of ``i`` is paired with the nearest discharge of ``j``; the pairs within ``span`` samples must be
    at least 60% of train ``i``, and at least 60% of train ``i`` must lie within ``lock`` samples of their median
    lag. Every pair of trains is decided in one pass: the trains are laid end to end on one axis, each shifted past
    the previous one, so one ``searchsorted`` finds every discharge's nearest neighbour in every other train."""
    k = len(trains)
    sizes = np.array([t.size for t in trains], dtype=np.int64)
    out = np.zeros((k, k), dtype=bool)
    if k < 2 or np.count_nonzero(sizes) < 2:
        return out
    flat = np.concatenate(trains).astype(np.int64)
    lo_t = int(flat.min())
    stride = int(flat.max()) - lo_t + 2 * span + 2  # trains never overlap on the axis
    shift = np.arange(k, dtype=np.int64) * stride
    row = np.repeat(np.arange(k), sizes)  # the train of each discharge
    axis = flat - lo_t + shift[row]
    q = (flat - lo_t)[:, None] + shift[None, :]  # (N, K): every discharge against every train
    pos = np.searchsorted(axis, q)
    ends = np.cumsum(sizes)
    first, last = ends - sizes, np.maximum(ends - 1, 0)
    lag_l = q - axis[np.clip(pos - 1, first, last)]
    lag_r = q - axis[np.clip(pos, first, last)]
    lag = np.where(np.abs(lag_l) <= np.abs(lag_r), lag_l, lag_r)
    near = (np.abs(lag) <= span) & (sizes > 0)[None, :]
    near[np.arange(flat.size), row] = False  # a train against itself is not asked
    starts = ends - sizes
    used = np.flatnonzero(sizes)
    n_near = np.add.reduceat(near, starts[used], axis=0)  # (K used, K)
    need = 0.6 * sizes[used][:, None]
    # the median near lag of each (train, train) pair: sort the lags within each train's rows (far lags last)
    big = 4 * span + 4
    key = np.where(near, lag, span + 1) + (row * big)[:, None]
    srt = np.sort(key, axis=0) - (row * big)[:, None]
    base = starts[used][:, None]
    m = np.maximum(n_near, 1)
    cols = np.arange(k)[None, :]
    med = 0.5 * (srt[base + m // 2, cols] + srt[base + (m - 1) // 2, cols])
    close = near & (np.abs(lag - med[np.searchsorted(used, row)]) <= lock)
    n_close = np.add.reduceat(close, starts[used], axis=0)
    out[used] = (n_near >= need) & (n_close >= need)
    np.fill_diagonal(out, False)
    return out


def _kind(m: WaveformMeasures, t_s: F64, rate: float, cv: float, n_kept: int = 0) -> str:
    """Voluntary MUAP or a spontaneous source, from its shape and firing (docs/qemg.md).

    Spontaneous fibres fire like pacemakers: the CV of the kept intervals must be under 0.05 over at least 8 of
    them, and at least 80% of all intervals kept (a voluntary unit's CV of 0.1-0.25 trimmed to the kept
    intervals can fall under 0.1 by chance)."""
    regular = math.isfinite(cv) and cv < 0.05 and n_kept >= 8 and n_kept >= 0.8 * max(1, t_s.size - 1)
    if regular and m.initial_positive and m.duration_ms <= 5.0 and m.phases <= 3:
        return "fibrillation"
    if regular and m.initial_positive and m.duration_ms >= 8.0 and m.phases <= 2:
        return "positive_sharp_wave"
    if t_s.size >= 3:
        span = float(t_s[-1] - t_s[0])
        isi = np.diff(t_s)
        raw_cv = float(isi.std() / isi.mean()) if isi.size >= 2 and isi.mean() > 0 else 0.0
        if span > 0 and (t_s.size - 1) / span < 2.0 and raw_cv > 0.5 and m.duration_ms > 5.0:
            return "fasciculation"
    return "muap"
