"""Online clustering of one channel's candidate discharges into MUAP templates over a rolling horizon.

Each template holds the running mean of the aligned segments assigned to it (an exact mean for its first
``n_cap`` discharges, then an exponential one, so a template follows slow changes of the unit as the needle
and effort move) and a ring of its most recent discharge times. A candidate joins the nearest template when
the squared distance over the matching window (``match_ms`` either side of the aligning peak) is below
``tol * |template|^2 + k_noise * m * noise^2``: a relative shape tolerance plus what the baseline noise alone
explains. Candidates that match nothing start a new template; when all ``max_templates`` slots are taken the
template with the fewest discharges within the horizon gives its slot up. Templates not seen for a whole
horizon are dropped.

All candidates of a block are compared with all templates in one matrix product; only the candidates that
match no existing template are handled one by one (a few per block once the units are known).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


class TemplateSet:
    """The templates of one channel.

    Args:
        seg_len: samples per segment (L).
        match_idx: indices into a segment forming the matching vector, shape (m,).
        max_templates: slots (K).
        ring: discharge times kept per template.
        n_cap: after this many discharges the mean becomes exponential with weight ``1 / n_cap``.
        tol: relative shape tolerance; k_noise: noise allowance (see the module docstring).
        max_shift: a candidate that matches no template as aligned is tried again shifted by up to this many
            samples (re-aligned on another peak of the same potential).
    """

    def __init__(
        self,
        seg_len: int,
        match_idx: I64,
        *,
        max_templates: int,
        ring: int,
        n_cap: int,
        tol: float,
        k_noise: float,
        max_shift: int = 0,
    ) -> None:
        k = int(max_templates)
        self.k = k
        self.match_idx = np.asarray(match_idx, dtype=np.int64)
        self.wave = np.zeros((k, int(seg_len)))
        self.match = np.zeros((k, self.match_idx.size))
        self.norm2 = np.zeros(k)
        self.count = np.zeros(k, dtype=np.int64)
        self.active = np.zeros(k, dtype=bool)
        self.last_seen = np.zeros(k, dtype=np.int64)
        self.ring = int(ring)
        self.times = np.zeros((k, self.ring), dtype=np.int64)
        self.n_times = np.zeros(k, dtype=np.int64)  # discharges ever recorded (ring position = n % ring)
        self.n_cap = int(n_cap)
        self.tol = float(tol)
        self.k_noise = float(k_noise)
        lo, hi = int(self.match_idx.min()), int(seg_len) - 1 - int(self.match_idx.max())
        self.max_shift = max(0, min(int(max_shift), lo, hi))
        self.version = 0  # bumps whenever a template changes (summaries cache on it)

    # ------------------------------------------------------------------ assignment
    def assign(self, times: I64, segments: F64, noise_uv: float) -> I64:
        """Assign candidates to templates (creating templates as needed); returns the template of each, (E,)."""
        e = times.size
        if e == 0:
            return np.zeros(0, dtype=np.int64)
        s = segments[:, self.match_idx]  # (E, m)
        allow_noise = self.k_noise * self.match_idx.size * noise_uv * noise_uv
        label = np.full(e, -1, dtype=np.int64)
        if self.active.any():
            d = (s * s).sum(axis=1)[:, None] - 2.0 * s @ self.match.T + self.norm2[None, :]
            d[:, ~self.active] = np.inf
            best = np.argmin(d, axis=1)
            ok = d[np.arange(e), best] < self.tol * self.norm2[best] + allow_noise
            label[ok] = best[ok]
        first = label >= 0
        protected = np.zeros(self.k, dtype=bool)
        protected[label[first]] = True  # slots matched in this block are not given up below
        shifts = np.arange(-self.max_shift, self.max_shift + 1, dtype=np.int64)
        for i in np.flatnonzero(~first):  # new shapes: also compared with what this loop creates
            if self.active.any():
                # the same unit aligned on another of its peaks (|x| peaks of similar size swap between
                # discharges): try every shift up to max_shift against every template
                win = segments[i][self.match_idx[None, :] + shifts[:, None]]  # (S, m)
                d1 = (win * win).sum(axis=1)[:, None] - 2.0 * win @ self.match.T + self.norm2[None, :]
                d1[:, ~self.active] = np.inf
                flat = int(np.argmin(d1))
                si, j = divmod(flat, self.k)
                if d1[si, j] < self.tol * self.norm2[j] + allow_noise:
                    delta = int(shifts[si])
                    seg = _shifted(segments[i], delta)
                    label[i] = j
                    self._update(j, seg[None, :], times[i : i + 1] + delta)
                    continue
            j = self._free_slot(protected)
            protected[j] = True
            self.wave[j] = segments[i]
            self.count[j] = 1
            self.n_times[j] = 0
            self.last_seen[j] = 0
            self.active[j] = True
            self._record(j, times[i : i + 1])
            self._refresh(j)
            label[i] = j
        for j in np.unique(label[first]):
            sel = np.flatnonzero(first & (label == j))
            self._update(int(j), segments[sel], times[sel])
        self.version += 1
        return label

    def _free_slot(self, protected: npt.NDArray[np.bool_]) -> int:
        free = np.flatnonzero(~self.active)
        if free.size:
            return int(free[0])
        score = np.where(protected, np.inf, self.count.astype(np.float64) + 1e-12 * self.last_seen)
        return int(np.argmin(score))

    def _record(self, j: int, t: I64) -> None:
        n0 = int(self.n_times[j])
        pos = (n0 + np.arange(t.size)) % self.ring
        self.times[j, pos] = t
        self.n_times[j] = n0 + t.size
        self.last_seen[j] = max(int(self.last_seen[j]), int(t.max()))

    def _update(self, j: int, segs: F64, t: I64) -> None:
        k = segs.shape[0]
        n = min(int(self.count[j]), self.n_cap)
        a = k / (n + k)
        self.wave[j] += a * (segs.mean(axis=0) - self.wave[j])
        self.count[j] += k
        self._record(j, t)
        self._refresh(j)

    def _refresh(self, j: int) -> None:
        self.match[j] = self.wave[j, self.match_idx]
        self.norm2[j] = float(self.match[j] @ self.match[j])

    # ------------------------------------------------------------------ horizon
    def expire(self, oldest: int) -> None:
        """Drop templates whose last discharge is before global sample ``oldest``."""
        gone = self.active & (self.last_seen < oldest)
        if gone.any():
            self.active[gone] = False
            self.count[gone] = 0
            self.n_times[gone] = 0
            self.version += 1

    def recent_times(self, j: int, oldest: int) -> I64:
        """Discharge times of template ``j`` at or after ``oldest`` (global samples), increasing."""
        n = int(self.n_times[j])
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if n <= self.ring:
            t = self.times[j, :n]
        else:
            start = n % self.ring
            t = np.concatenate([self.times[j, start:], self.times[j, :start]])
        return t[t >= oldest]


def _shifted(seg: F64, delta: int) -> F64:
    """``seg`` moved so that its sample ``pre + delta`` lands at ``pre``; the uncovered end is zero (baseline)."""
    if delta == 0:
        return seg
    out = np.zeros_like(seg)
    if delta > 0:
        out[:-delta] = seg[delta:]
    else:
        out[-delta:] = seg[:delta]
    return out
