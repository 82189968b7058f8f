"""Causal MUAP detection and extraction on a stream's filtered samples, one block (a hop) at a time.

A candidate discharge is a local maximum of ``|x|`` above ``k_detect`` times the channel's baseline noise
(and above ``min_uv``), at least ``dead_ms`` from the previous candidate (the largest peak in that span wins,
so one potential gives one candidate). Each candidate is cut out of the signal as a segment of
``pre_ms + post_ms`` aligned on that peak. A peak is only decided once ``post_ms`` of signal after it has
arrived, so the detector is causal with a delay of ``post_ms``; it keeps ``pre + post + dead`` samples per
channel between blocks (bounded memory) and does no per-sample Python (scipy's ``find_peaks`` per channel
per block).

Baseline noise: the signal is cut into pieces of ``noise_piece_ms`` (counted from the first sample, whatever
the blocks); every ``noise_pieces`` pieces the noise estimate moves 20% of the way to the 20th percentile of
their RMS (the quietest stretches between discharges). A plain median of ``|x|`` would count the potentials
themselves as noise at moderate effort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import signal

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Detections:
    """Candidates of one channel found in one block.

    Attributes:
        channel: channel index.
        times: global sample index of each candidate's peak, shape (E,), int64.
        segments: the aligned segments, float64 (E, L), µV; the peak sits at index ``pre``.
    """

    channel: int
    times: I64
    segments: F64


class Detector:
    """Streaming detector for all channels of one stream.

    Args:
        fs: sampling rate of the samples given to :meth:`process`, Hz.
        n_channels: channels.
        pre_ms, post_ms: segment span before and after the aligning peak, ms.
        dead_ms: smallest spacing of two candidates on one channel, ms.
        k_detect: detection threshold in multiples of the baseline noise.
        min_uv: detection threshold floor, µV.
        noise_piece_ms: piece length for the noise estimate, ms.
        align_ms: each candidate is aligned on the largest value of ``|x|`` smoothed over this span (a centred
            moving average of ``x``, at least 3 samples) within ``align_reach_ms`` of its detected peak; 0: on the
            detected peak itself. The detected peak is the sample where the noise happened to add the most:
            aligning a small potential there lifts every segment's peak by about the noise's own excursion, and a
            median template then reads that much too large.
        align_reach_ms: how far from the detected peak the smoothed peak may lie, ms.
    """

    def __init__(
        self,
        fs: float,
        n_channels: int,
        *,
        pre_ms: float,
        post_ms: float,
        dead_ms: float,
        k_detect: float,
        min_uv: float,
        noise_piece_ms: float = 5.0,
        align_ms: float = 0.0,
        align_reach_ms: float = 0.2,
    ) -> None:
        self.fs = float(fs)
        self.n_channels = int(n_channels)
        self.pre = max(1, round(pre_ms * fs / 1000.0))
        self.post = max(1, round(post_ms * fs / 1000.0))
        self.dead = max(1, round(dead_ms * fs / 1000.0))
        self.k_detect = float(k_detect)
        self.min_uv = float(min_uv)
        self.piece = max(4, round(noise_piece_ms * fs / 1000.0))
        w = round(align_ms * fs / 1000.0)
        self.align_w = 0 if align_ms <= 0 else max(3, w + 1 - w % 2)  # odd: centred on a sample
        self.align_r = max(1, round(align_reach_ms * fs / 1000.0))
        self.noise_pieces = 50
        self._partial = np.zeros((0, self.n_channels))  # samples of the piece in progress
        self._rms = np.zeros((0, self.n_channels))  # RMS of the complete pieces since the last noise update
        self.keep = self.pre + self.post + self.dead
        self._offsets = np.arange(-self.pre, self.post, dtype=np.int64)
        self.buf = np.zeros((self.n_channels, 0), dtype=np.float64)
        self.buf_start = 0  # global sample index of buf[:, 0]
        self.next_search = self.pre  # first global sample not yet searched for peaks
        self.last_peak = np.full(self.n_channels, -(10**12), dtype=np.int64)
        self.noise = np.full(self.n_channels, np.nan)
        self.samples_seen = 0

    @property
    def threshold(self) -> F64:
        """Current detection threshold per channel, µV, shape (C,)."""
        noise = np.where(np.isfinite(self.noise), self.noise, 0.0)
        return np.asarray(np.maximum(self.k_detect * noise, self.min_uv), dtype=np.float64)

    def _update_noise(self, block: npt.NDArray[np.float64]) -> None:
        x = np.concatenate([self._partial, block]) if self._partial.shape[0] else block
        k = x.shape[0] // self.piece
        self._partial = x[k * self.piece :].copy()
        if k == 0:
            return
        pieces = x[: k * self.piece].reshape(k, self.piece, self.n_channels)
        rms = np.sqrt(np.einsum("kpc,kpc->kc", pieces, pieces) / self.piece)
        rms = np.concatenate([self._rms, rms]) if self._rms.shape[0] else rms
        nb = rms.shape[0] // self.noise_pieces  # complete batches: all their 20th percentiles at once
        if nb:
            q = self.noise_pieces // 5
            est = np.partition(rms[: nb * self.noise_pieces].reshape(nb, self.noise_pieces, -1), q, axis=1)[:, q]
            noise = self.noise
            for b in range(nb):  # nb is a few per block; each batch moves the estimate 20% of the way
                noise = np.where(np.isfinite(noise), 0.8 * noise + 0.2 * est[b], est[b])
            self.noise = noise
        self._rms = rms[nb * self.noise_pieces :]
        if not np.isfinite(self.noise).all() and self._rms.shape[0] >= 4:  # a first estimate from what there is
            est0 = np.percentile(self._rms, 20.0, axis=0)
            self.noise = np.where(np.isfinite(self.noise), self.noise, est0)

    def _aligned(self, xc: F64, p: I64, m: int) -> I64:
        """The peaks ``p`` moved to the largest smoothed ``|x|`` within ``align_r`` samples (``align_ms``)."""
        w, r = self.align_w, self.align_r
        h = w // 2
        idx = np.clip(p[:, None] + np.arange(-r - h, r + h + 1), 0, m - 1)
        smooth = np.abs(np.lib.stride_tricks.sliding_window_view(xc[idx], w, axis=1).mean(axis=2))  # (P, 2r + 1)
        moved = p + np.argmax(smooth, axis=1) - r
        return np.asarray(np.clip(moved, self.pre, m - self.post - 1), dtype=np.int64)

    def process(self, block: npt.NDArray[np.floating]) -> list[Detections]:
        """Take the next samples, float (n, C) µV; return the candidates that became decidable, per channel."""
        if block.ndim != 2 or block.shape[1] != self.n_channels:
            raise ValueError(f"QEMG detector: block shaped {block.shape}, expected (n, {self.n_channels})")
        n = block.shape[0]
        if n == 0:
            return []
        clean = np.nan_to_num(np.asarray(block, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        self._update_noise(clean)
        self.samples_seen += n
        x = np.concatenate([self.buf, clean.T], axis=1)  # (C, M)
        base = self.buf_start
        m = x.shape[1]
        lo = self.next_search - base
        hi = m - self.post
        out: list[Detections] = []
        if hi > lo:
            start = max(0, lo - self.dead)
            thr = self.threshold
            for c in range(self.n_channels):
                a = np.abs(x[c, start:])
                peaks, _ = signal.find_peaks(a, height=thr[c], distance=self.dead)
                p = peaks.astype(np.int64) + start
                p = p[(p >= lo) & (p < hi)]
                if p.size and p[0] + base - self.last_peak[c] < self.dead:
                    p = p[1:]
                if not p.size:
                    continue
                if self.align_w:
                    p = self._aligned(x[c], p, m)
                self.last_peak[c] = int(p[-1]) + base
                segs = x[c][p[:, None] + self._offsets]
                out.append(Detections(c, p + base, segs))
            self.next_search = base + hi
        keep = min(m, self.keep)
        self.buf = x[:, m - keep :].copy()
        self.buf_start = base + m - keep
        return out
