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
        pre: index of the aligning peak in a segment; max_new: most new templates seeded per block.
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
        pre: int | None = None,
        max_new: int = 12,
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
        self.version = 0  # bumps whenever a template changes
        self.pre = pre  # index of the aligning peak in a segment (None: use the matching window's largest value)
        self.max_new = int(max_new)
        self.dropped = 0  # candidates that matched nothing and seeded nothing
        self.generation = np.zeros(k, dtype=np.int64)  # bumps when a slot gets a new unit (measure caches key on it)

    # ------------------------------------------------------------------ assignment
    def assign(self, times: I64, segments: F64, noise_uv: float) -> I64:
        """Assign candidates to templates (creating templates as needed); the template of each, (E,), -1 if none."""
        e = times.size
        if e == 0:
            return np.zeros(0, dtype=np.int64)
        segments = np.array(segments, dtype=np.float64)  # own copy: shifted rows are rewritten below
        times = np.array(times, dtype=np.int64)
        allow_noise = self.k_noise * self.match_idx.size * noise_uv * noise_uv
        label = np.full(e, -1, dtype=np.int64)
        if self.active.any():
            # 1) as aligned, all candidates against all templates in one product
            s = segments[:, self.match_idx]  # (E, m)
            d = (s * s).sum(axis=1)[:, None] - 2.0 * _products(s, self.match) + self.norm2[None, :]
            d[:, ~self.active] = np.inf
            best = np.argmin(d, axis=1)
            ok = d[np.arange(e), best] < self.tol * self.norm2[best] + allow_noise
            label[ok] = best[ok]
            # 2) the rest shifted by up to max_shift (the same unit aligned on another of its peaks: |x| peaks
            # of similar size swap between discharges), again all at once
            rest = np.flatnonzero(~ok)
            if rest.size and self.max_shift and self.pre is not None:
                # re-align on the largest peak of the other polarity within max_shift (one try per candidate)
                p0, w = self.pre, self.max_shift
                span = segments[rest, p0 - w : p0 + w + 1]
                up = segments[rest, p0] > 0
                alt = np.where(up, np.argmin(span, axis=1), np.argmax(span, axis=1)) - w
                win = segments[rest[:, None], self.match_idx[None, :] + alt[:, None]]  # (U, m)
                d2 = (win * win).sum(axis=1)[:, None] - 2.0 * _products(win, self.match) + self.norm2[None, :]
                d2[:, ~self.active] = np.inf
                j = np.argmin(d2, axis=1)
                good = (d2[np.arange(rest.size), j] < self.tol * self.norm2[j] + allow_noise) & (alt != 0)
                if good.any():
                    rows, delta = rest[good], alt[good]
                    segments[rows] = _shifted_rows(segments[rows], delta)
                    times[rows] += delta
                    label[rows] = j[good]
        matched = label >= 0
        # 3) shapes never seen: greedy seeding, all at once per seed. The largest unmatched candidate seeds a new
        # template; every unmatched candidate close to it joins; repeat up to ``max_new`` times per block. What
        # is left (superpositions, noise) is dropped: a real unit comes back and is caught in a later block.
        protected = np.zeros(self.k, dtype=bool)
        protected[label[matched]] = True  # slots matched in this block are not given up
        new_slots: list[int] = []
        loop_n: dict[int, int] = {}
        left = np.flatnonzero(~matched)
        for n_done, i in enumerate(left):
            if len(new_slots) >= self.max_new:
                left = left[n_done:]
                break
            if new_slots:
                cand = np.asarray(new_slots)
                dd = ((self.match[cand] - segments[i, self.match_idx]) ** 2).sum(axis=1)
                b = int(np.argmin(dd))
                if dd[b] < self.tol * self.norm2[cand[b]] + allow_noise:
                    j = int(cand[b])
                    label[i] = j
                    loop_n[j] += 1  # the running mean, so later candidates meet the shape, not its first copy
                    self.wave[j] += (segments[i] - self.wave[j]) / loop_n[j]
                    self._refresh(j)
                    continue
            j = self._free_slot(protected)
            protected[j] = True
            self.wave[j] = segments[i]
            self.count[j] = 0
            self.n_times[j] = 0
            self.last_seen[j] = 0
            self.active[j] = True
            self.generation[j] += 1
            self._refresh(j)
            new_slots.append(j)
            loop_n[j] = 1
            label[i] = j
        else:
            left = left[:0]
        self.dropped += int(left.size)
        valid = label >= 0
        if not valid.any():
            self.version += 1
            return label
        segments, times, lab_all = segments[valid], times[valid], label[valid]
        e = lab_all.size
        # 4) every template's update in one go: running mean (exponential past n_cap) and the discharge ring
        fresh = np.zeros(self.k, dtype=bool)
        fresh[new_slots] = True
        order = np.argsort(lab_all, kind="stable")
        lab = lab_all[order]
        touched, first_idx, k = np.unique(lab, return_index=True, return_counts=True)
        sums = np.add.reduceat(segments[order], first_idx, axis=0)
        n_prev = np.minimum(self.count[touched], self.n_cap)
        # a new slot takes the mean of its members in this block as they are (a = 1)
        a = np.where(fresh[touched], 1.0, k / (n_prev + k))
        self.wave[touched] += a[:, None] * (sums / k[:, None] - self.wave[touched])
        self.count[touched] += k
        rank = np.arange(e) - np.repeat(first_idx, k)
        pos = (self.n_times[lab] + rank) % self.ring
        self.times[lab, pos] = times[order]
        self.n_times[touched] += k
        np.maximum.at(self.last_seen, lab, times[order])
        self.match[touched] = self.wave[touched][:, self.match_idx]
        self.norm2[touched] = (self.match[touched] ** 2).sum(axis=1)
        self.version += 1
        return label

    def _free_slot(self, protected: npt.NDArray[np.bool_]) -> int:
        free = np.flatnonzero(~self.active & ~protected)
        if free.size:
            return int(free[0])
        score = np.where(protected, np.inf, self.count.astype(np.float64) + 1e-12 * self.last_seen)
        return int(np.argmin(score))

    def _refresh(self, j: int) -> None:
        self.match[j] = self.wave[j, self.match_idx]
        self.norm2[j] = float(np.einsum("m,m->", self.match[j], self.match[j]))

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


def _products(a: F64, b: F64) -> F64:
    """``a @ b.T`` for small ``(E, m)`` and ``(K, m)`` without BLAS. numpy's OpenBLAS wakes its thread pool for
    every product and those threads then spin: with a few dozen streams that burnt about 0.7 of a core (measured
    with ``streamemg bench``), ten times the analysis itself."""
    return np.einsum("em,km->ek", a, b)


def _shifted_rows(segs: F64, delta: I64) -> F64:
    """Row ``r`` of ``segs`` (U, L) moved so that its sample ``pre + delta[r]`` lands at ``pre``; uncovered ends 0."""
    n = segs.shape[1]
    idx = np.arange(n)[None, :] + delta[:, None]
    inside = (idx >= 0) & (idx < n)
    out = np.take_along_axis(segs, np.clip(idx, 0, n - 1), axis=1)
    return np.where(inside, out, 0.0)
