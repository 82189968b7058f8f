"""Drive the live dashboard from synthetic pipeline snapshots (no model, no sources, no data).

Useful to look at the dashboard, to check it at scale and to test it in a real terminal::

    python examples/fake_dashboard.py                     # 6 streams until Ctrl-C
    python examples/fake_dashboard.py --streams 256       # paged table, status / label summary
    python examples/fake_dashboard.py --untrained --duration 10

Streams are named ``<class>-<n>`` after the class their made-up estimates drift towards. Every 16 streams a
few show the dashboard's problem states: one with clipping (label withheld), one stale, one reconnecting and
one with too little activity. In a terminal the keys work as in ``streamemg run`` (``?`` lists them); a stream
view shows a made-up trace of motor-unit potentials and the made-up estimate history (there is no model here,
so no spectrogram).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import math
import random
import sys

import numpy as np

from streamemg.clock import monotonic
from streamemg.estimates import HistoryView
from streamemg.types import CLASS_NAMES, Estimate, StreamStatus
from streamemg.ui.dashboard import Dashboard
from streamemg.ui.snapshot import PipelineSnapshot, StreamDetail, StreamSnapshot

#: Typical RMS level (µV) of the made-up signal per class.
_LEVEL_UV = {"Normal": 250.0, "ALS": 900.0, "Myopathy": 90.0}
_LEVEL_BIN_S = 0.25
_LEVEL_BINS = 24
_TRACE_FS = 4000.0
_TRACE_S = 1.5


class FakePipeline:
    """Synthetic, time-driven pipeline state; :meth:`snapshot` is the dashboard's ``snapshot_fn``.

    Args:
        n_streams: how many streams to make up.
        trained: whether the made-up model counts as trained.
        seed: random seed (the picture is reproducible for a given seed and elapsed time).
    """

    def __init__(self, n_streams: int, trained: bool = True, seed: int = 0) -> None:
        self.n = n_streams
        self.trained = trained
        self.rng = random.Random(seed)
        self.t0 = monotonic()
        self.classes = [CLASS_NAMES[i % len(CLASS_NAMES)] for i in range(n_streams)]
        self.rolling = [[1.0 / len(CLASS_NAMES)] * len(CLASS_NAMES) for _ in range(n_streams)]
        self.levels: list[collections.deque[float]] = [collections.deque(maxlen=_LEVEL_BINS) for _ in range(n_streams)]
        self.bins_done = 0
        self.history: list[collections.deque[Estimate]] = [collections.deque(maxlen=1200) for _ in range(n_streams)]
        self.last: PipelineSnapshot | None = None

    def _kind(self, i: int) -> str:
        return {3: "clipping", 5: "stale", 7: "reconnecting", 11: "low_activity"}.get(i % 16, "ok")

    def snapshot(self) -> PipelineSnapshot:
        """The made-up pipeline state now (cost: O(streams), a few µs each)."""
        t = monotonic() - self.t0
        rng = self.rng
        bins_due = int(t / _LEVEL_BIN_S)
        new_bins = min(bins_due - self.bins_done, _LEVEL_BINS)
        self.bins_done = bins_due
        streams = []
        for i in range(self.n):
            cls = self.classes[i]
            kind = self._kind(i)
            k = CLASS_NAMES.index(cls)
            base = _LEVEL_UV[cls] * (4.0 if kind == "clipping" else 0.02 if kind == "low_activity" else 1.0)
            for _ in range(new_bins if kind not in ("stale", "reconnecting") or t < 2.0 else 0):
                burst = 2.5 if (cls == "ALS" and rng.random() < 0.15) else 1.0
                self.levels[i].append(base * burst * math.exp(rng.gauss(0.0, 0.25)))
            window = [rng.random() * 0.3 for _ in CLASS_NAMES]
            window[k] += 0.7 * rng.random() + 0.2
            total = sum(window)
            window = [w / total for w in window]
            alpha = 0.15
            roll = self.rolling[i]
            for j in range(len(roll)):
                roll[j] = (1 - alpha) * roll[j] + alpha * window[j]
            quality = kind if kind in ("clipping", "low_activity") else "ok"
            top = max(range(len(roll)), key=roll.__getitem__)
            label = CLASS_NAMES[top] if (self.trained and quality == "ok") else None
            status = StreamStatus.LIVE
            detail = ""
            if kind == "stale" and t >= 2.0:
                status, detail = StreamStatus.STALE, f"no data for {t - 2.0:.0f} s"
            elif kind == "reconnecting" and t >= 2.0:
                status, detail = StreamStatus.RECONNECTING, "outlet lost, retrying"
            windows = int(4 * min(t, 2.0) if status is not StreamStatus.LIVE else 4 * t)
            est = Estimate(
                stream_id=f"sim:{cls.lower()}:{i}",
                name=f"{cls.lower()}-{i + 1:03d}",
                index=windows,
                time=t,
                probabilities=tuple(window),
                rolling=tuple(roll),
                cumulative=tuple(roll),
                label=label,
                confidence=roll[top] if label else 0.0,
                quality=quality,
                latency_ms=10.0,
                trained=self.trained,
            )
            hist = self.history[i]
            if not hist or hist[-1].index != est.index:
                hist.append(est)
            p50 = 8.0 + 4.0 * rng.random()
            streams.append(
                StreamSnapshot(
                    stream_id=est.stream_id,
                    name=est.name,
                    source=f"sim:{cls.lower()}?seed={i}",
                    fs=(10000.0, 23437.5, 32768.0)[i % 3],
                    n_channels=1 + (i % 4 == 0),
                    status=status,
                    status_detail=detail,
                    level=tuple(self.levels[i]),
                    last=est,
                    latency_p50_ms=p50,
                    latency_p99_ms=p50 * (2.0 + rng.random()),
                    windows_per_s=4.0 if status is StreamStatus.LIVE else 0.0,
                    windows=windows,
                    dropped_samples=0 if kind == "ok" else 80 * int(t),
                    dropped_windows=0,
                )
            )
        errors: tuple[str, ...] = ()
        if self.n > 7 and t >= 2.0:
            errors = ("source sim:als?seed=7: outlet lost, retrying",)
        total_windows = sum(s.windows for s in streams)
        self.last = PipelineSnapshot(
            device="cpu",
            model_name="fake-model" if self.trained else "fake-model (untrained)",
            trained=self.trained,
            uptime_s=t,
            streams=tuple(streams),
            batch_mean=min(64.0, self.n / 4.0),
            batch_max=min(64, max(1, self.n // 2)),
            max_batch=64,
            windows_total=total_windows,
            windows_per_s=sum(s.windows_per_s for s in streams),
            dropped_windows=0,
            sink_drops={"jsonl:estimates.jsonl": 0},
            errors=errors,
        )
        return self.last

    def detail(self, stream_id: str) -> StreamDetail | None:
        """The stream view's data for one stream: a made-up trace (µV, 4 kHz) and the estimate history."""
        snap = self.last
        row = next((s for s in snap.streams if s.stream_id == stream_id), None) if snap is not None else None
        if row is None:
            return None
        i = next(k for k in range(self.n) if row.name.endswith(f"-{k + 1:03d}"))
        n = int(_TRACE_S * _TRACE_FS)
        t = monotonic() - self.t0
        rng = np.random.default_rng([self.rng.getrandbits(32) & 0xFFFF, i, int(t * 4)])
        cls = self.classes[i]
        trace = np.empty((n, row.n_channels), dtype=np.float32)
        for c in range(row.n_channels):
            trace[:, c] = _made_up_emg(rng, n, cls, self._kind(i))
        return StreamDetail(
            stream=row,
            channels=tuple(f"ch{c + 1}" for c in range(row.n_channels)),
            units="uV",
            meta={},
            trace=trace,
            trace_fs=_TRACE_FS,
            window=trace[-int(_TRACE_FS) :],
            history=HistoryView.from_estimates(tuple(self.history[i])),
            reconnects=1 if self._kind(i) == "reconnecting" and t >= 2.0 else 0,
        )


def _made_up_emg(rng: np.random.Generator, n: int, cls: str, kind: str) -> np.ndarray:
    """Motor-unit-like potentials (biphasic spikes, wider and larger for ALS, small and polyphasic for
    Myopathy) on background noise: ``(n,)`` µV at 4 kHz. Not physiology, just something to look at."""
    width = {"Normal": 8.0, "ALS": 16.0, "Myopathy": 4.0}[cls]
    amp = _LEVEL_UV[cls] * 2.5
    x = rng.normal(0.0, 0.05 * amp, n)
    k = np.arange(-4 * int(width), 4 * int(width) + 1)
    shape = -k / width * np.exp(-0.5 * (k / width) ** 2)
    if cls == "Myopathy":
        shape = shape * np.cos(k / width * 3.0)
    spikes = np.zeros(n)
    n_spikes = int(rng.integers(8, 20))
    spikes[rng.integers(0, n, n_spikes)] = rng.uniform(0.5, 1.0, n_spikes) * amp
    x += np.convolve(spikes, shape, mode="same")
    if kind == "clipping":
        x = np.clip(x * 3, -amp * 0.8, amp * 0.8)
    elif kind == "low_activity":
        x *= 0.02
    return x


async def run(args: argparse.Namespace) -> int:
    """Show the dashboard for ``args.duration`` seconds (None: until Ctrl-C)."""
    fake = FakePipeline(args.streams, trained=not args.untrained, seed=args.seed)
    async with Dashboard(fake.snapshot, refresh_hz=args.refresh_hz, page_s=args.page_s, detail_fn=fake.detail) as dash:
        if args.duration is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(args.duration)
    print(
        f"dashboard: {dash.refreshes} frames, {dash.cpu_seconds * 1000:.0f} ms CPU in total, "
        f"{dash.cost_fraction:.2%} of one core over the last {dash.cost_window_s:g} s"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=6, help="number of made-up streams (default 6)")
    parser.add_argument("--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)")
    parser.add_argument("--refresh-hz", type=float, default=4.0, help="frames per second (default 4)")
    parser.add_argument("--page-s", type=float, default=5.0, help="seconds per page of streams (default 5)")
    parser.add_argument("--untrained", action="store_true", help="pretend the model is untrained")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    if args.streams < 0:
        parser.error("--streams must be 0 or more")
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
