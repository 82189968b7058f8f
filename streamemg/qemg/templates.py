"""Online clustering of one channel's candidate discharges into MUAP templates over a rolling horizon.

Each template is a running *median* of the aligned segments assigned to it (median averaging, the clinical
systems' way of keeping a superimposed neighbour's potential out of a unit's average), estimated per sample by
stochastic approximation: every discharge moves each sample of the template towards it by a fixed step, ``gain *
spread / n`` (``spread``: the running mean absolute deviation of that sample; ``n``: the template's discharges, at
most ``n_cap``, so it follows slow changes of the unit as the needle and effort move). A template starts as the
mean of the discharges that seeded it. A running mean instead keeps ``1/n`` of every potential that fell on one of
its ``n`` discharges; the median ignores them while fewer than half of the discharges carry one. Each template
also keeps a ring of its most recent discharge times. A candidate joins the nearest template when
the squared distance over the matching window (``match_ms`` either side of the aligning peak) is below
``tol * |template|^2 + k_noise * m * noise^2``: a relative shape tolerance plus what the baseline noise alone
explains. Of several templates a candidate matches, it joins the one nearest over a wider choosing window (the
slower phases tell apart units whose main spikes look alike). Candidates that match nothing start a new
template; when all ``max_templates`` slots are taken a template with fewer than ``established`` discharges gives its
slot up (the fewest first), never a unit's. Templates not seen for a whole horizon are dropped.

All candidates of a block are compared with all templates in one matrix product; only the candidates that
match no existing template are handled one by one (a few per block once the units are known).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
FA = TypeVar("FA", npt.NDArray[np.float64], npt.NDArray[np.float32])
I64 = npt.NDArray[np.int64]


class TemplateSet:
    """The templates of one channel.

    Args:
        seg_len: samples per segment (L).
        match_idx: indices into a segment forming the matching vector, shape (m,).
        max_templates: slots (K).
        ring: discharge times kept per template.
        n_cap: the median's step stops shrinking after this many discharges (see the module docstring).
        tol: relative shape tolerance; k_noise: noise allowance (see the module docstring).
        max_shift: a candidate that matches no template as aligned is tried again shifted by up to this many
            samples (re-aligned on another peak of the same potential).
        pre: index of the aligning peak in a segment; max_new: most new templates seeded per block.
        choose: when several templates pass the match, the candidate goes to the one nearest over this many samples
            either side of the aligning peak (0: the nearest over the matching window).
        median_gain: the median's step in units of ``spread / n``. The step that converges fastest is ``1 / (2 f)``,
            ``f`` the density at the median: 1.57 times the mean absolute deviation for Gaussian scatter, less when
            occasional superimposed potentials inflate the deviation; 1.0 measured best (docs/qemg.md).
        seed_support: new templates are seeded first from the unmatched candidates that have at least this many
            look-alikes among the block's other unmatched candidates (0: in time order alone). In a block where
            many units are new (the first, or an effort peak that recruits large units), the seeds in time order
            went to superpositions and noise peaks and ran out before a unit that fired later in the block; its
            discharges were all dropped.
        established: a template with at least this many discharges is a unit's and keeps its slot until the horizon
            forgets it; new shapes take free slots and those of younger templates only (0: any slot but this block's).
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
        pair_shift: int = 0,
        shift_step: int = 1,
        min_gap: int = 0,
        choose: int = 0,
        median_gain: float = 1.0,
        established: int = 5,
        seed_support: int = 2,
    ) -> None:
        k = int(max_templates)
        self.k = k
        self.match_idx = np.asarray(match_idx, dtype=np.int64)
        self.wave = np.zeros((k, int(seg_len)))  # the running medians
        self.spread = np.zeros((k, int(seg_len)))  # running mean absolute deviation of each sample from it
        self.median_gain = float(median_gain)
        self.established = int(established)
        self.seed_support = int(seed_support)
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
        # superposition resolution (see the module docstring): the second unit of a pair may sit up to
        # ``pair_shift`` samples from the candidate's peak; the first up to a quarter of that
        seg_len = int(seg_len)
        self.seg_len = seg_len
        self.lock = np.zeros((k, k), dtype=bool)  # template pairs found time-locked (one potential, two peaks)
        self.min_gap = int(min_gap)  # a unit's discharges closer than this are one discharge detected twice
        # the choosing window: ``choose`` samples either side of the aligning peak (None: the nearest template over
        # the matching window takes the candidate)
        self.choose_idx: I64 | None = None
        if choose > 0 and pre is not None:
            step = max(1, int(shift_step))
            self.choose_idx = np.arange(max(0, pre - int(choose)), min(seg_len, pre + int(choose) + 1), step,
                                        dtype=np.int64)
        self.max_pairs = 16  # candidates tried as a pair per block, at most (the largest)
        self.pair_shift = 0
        self.resolved = 0  # candidates explained as the sum of two templates
        self.peeled = 0  # candidates matched once their known neighbours were subtracted
        if pair_shift > 0 and pre is not None:
            half = (int(self.match_idx.max()) - int(self.match_idx.min())) // 2
            room = min(pre, seg_len - 1 - pre) - half
            d = max(0, min(int(pair_shift), room // 2))
            if d > 0:
                self.pair_shift = d
                step = max(1, int(shift_step))
                self._wide = np.arange(pre - half - d, pre + half + d + 1, step, dtype=np.int64)  # (W,)
                self._near = np.arange(-max(1, d // 4), max(1, d // 4) + 1, dtype=np.int64)  # first unit's shifts
                self._coarse_step = max(2, step)
                self._far = np.arange(-d, d + 1, self._coarse_step, dtype=np.int64)  # second unit's, coarse
        # matched discharges of the previous block that reach into this block's segments (time, slot, generation)
        self._prev = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))

    # ------------------------------------------------------------------ assignment
    def _match_rows(self, segments: F64, times: I64, label: I64, allow_noise: float) -> None:
        """Match every row of ``segments`` against the templates, as aligned and then re-aligned on its other peak
        (steps 1 and 2 of the module docstring); writes ``label`` and re-aligns matched rows in place."""
        e = times.size
        s = segments[:, self.match_idx]  # (E, m)
        d = (s * s).sum(axis=1)[:, None] - 2.0 * _products(s, self.match) + self.norm2[None, :]
        d[:, ~self.active] = np.inf
        if self.choose_idx is None:
            best = np.argmin(d, axis=1)
            ok = d[np.arange(e), best] < self.tol * self.norm2[best] + allow_noise
        else:
            # of the templates that pass over the matching window, the one nearest over the wider choosing window:
            # units whose main spikes look alike differ in their slower phases
            passing = d < self.tol * self.norm2[None, :] + allow_noise
            sw = segments[:, self.choose_idx]
            tw = self.wave[:, self.choose_idx]
            dw = -2.0 * _products(sw, tw) + (tw * tw).sum(axis=1)[None, :]  # + |sw|^2, the same for every template
            best = np.argmin(np.where(passing, dw, np.inf), axis=1)
            ok = passing[np.arange(e), best]
        label[ok] = best[ok]
        # the rest shifted by up to max_shift (the same unit aligned on another of its peaks: |x| peaks of similar
        # size swap between discharges), again all at once
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
                # the template must also explain the peak the candidate was detected on: a large potential of an
                # unknown unit, re-aligned on a small phase of its own, can match a small template there
                g = np.flatnonzero(good)
                orig = segments[rest[g][:, None], self.match_idx[None, :]]  # (G, m) around the detected peak
                tpl = self.wave[j[g][:, None], self.match_idx[None, :] - alt[g][:, None]]
                d0 = ((orig - tpl) ** 2).sum(axis=1)
                good[g] = d0 < self.tol * (tpl * tpl).sum(axis=1) + allow_noise
            if good.any():
                rows, delta = rest[good], alt[good]
                segments[rows] = shifted_rows(segments[rows], delta)
                times[rows] += delta
                label[rows] = j[good]

    def assign(self, times: I64, segments: F64, noise_uv: float) -> I64:
        """Assign candidates to templates (creating templates as needed); the template of each, (E,), -1 if none
        (-2: explained as the sum of two templates, each of which is credited with a discharge)."""
        e = times.size
        if e == 0:
            return np.zeros(0, dtype=np.int64)
        segments = np.array(segments, dtype=np.float64)  # own copy: shifted rows are rewritten below
        times = np.array(times, dtype=np.int64)
        allow_noise = self.k_noise * self.match_idx.size * noise_uv * noise_uv
        label = np.full(e, -1, dtype=np.int64)
        pair_t = np.zeros(0, dtype=np.int64)
        pair_lab = np.zeros(0, dtype=np.int64)
        if self.active.any():
            # 1-2) as aligned, then re-aligned on the other peak: all candidates against all templates at once
            self._match_rows(segments, times, label, allow_noise)
            if self.pair_shift:
                # 3) peel: subtract the templates of the known discharges around each candidate (this block's
                # matches and the previous block's last ones), then match what was left unmatched again. The
                # cleaned segments also feed the templates, so other units do not blur them.
                segments -= self._neighbours(times, label)
                rest = np.flatnonzero(label < 0)
                if rest.size:
                    sub, sub_t, sub_lab = segments[rest], times[rest], np.full(rest.size, -1, dtype=np.int64)
                    self._match_rows(sub, sub_t, sub_lab, allow_noise)
                    segments[rest], times[rest], label[rest] = sub, sub_t, sub_lab
                    self.peeled += int(np.count_nonzero(sub_lab >= 0))
                # 4) superpositions: what still matches nothing is tried as the sum of two templates at shifts
                rest = np.flatnonzero(label < 0)
                if rest.size > self.max_pairs:  # bounded work per block: the largest candidates first
                    big = np.abs(segments[rest, self.pre]) if self.pre is not None else np.zeros(rest.size)
                    rest = np.sort(rest[np.argsort(-big, kind="stable")[: self.max_pairs]])
                if rest.size:
                    ok, a_t, a_lab, b_t, b_lab = self._pairs(segments[rest], times[rest], noise_uv)
                    if ok.any():
                        label[rest[ok]] = -2
                        pair_t = np.concatenate([a_t, b_t])
                        pair_lab = np.concatenate([a_lab, b_lab])
                        self.resolved += int(np.count_nonzero(ok))
        matched = label >= 0
        # 5) shapes never seen: greedy seeding. An unmatched candidate seeds a new template and the later ones close
        # to it join; up to ``max_new`` seeds per block, in time order, those with look-alikes among the block's
        # unmatched candidates first. What is left (superpositions of unknown units, noise) is dropped: a real
        # unit comes back later.
        protected = np.zeros(self.k, dtype=bool)
        protected[label[matched]] = True  # slots matched in this block are not given up
        protected[pair_lab] = True
        new_slots: list[int] = []
        loop_n: dict[int, int] = {}
        left = np.flatnonzero(label == -1)
        # a unit's template is not given up for a new shape: units recruited only at the effort peaks pause for
        # seconds, and the shapes seeded meanwhile (superpositions of unknown units, noise) took their slots
        keep = protected | (self.active & (self.count >= self.established)) if self.established else protected
        slots = self._slot_order(keep) if left.size else []
        if left.size > 1 and self.seed_support:
            left = left[np.argsort(self._lone(segments[left], allow_noise), kind="stable")]
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
                    loop_n[j] += 1  # a running mean while seeding: later candidates meet the shape, not its first copy
                    self.wave[j] += (segments[i] - self.wave[j]) / loop_n[j]
                    self._refresh(j)
                    continue
            if not slots:  # every slot holds a unit matched in this block: none is given up for a new shape
                left = left[n_done:]
                break
            j = slots.pop(0)
            protected[j] = True
            self.wave[j] = segments[i]
            self.count[j] = 0
            self.n_times[j] = 0
            self.last_seen[j] = 0
            self.active[j] = True
            self.generation[j] += 1
            self.lock[j, :] = False
            self.lock[:, j] = False
            self._refresh(j)
            new_slots.append(j)
            loop_n[j] = 1
            label[i] = j
        else:
            left = left[:0]
        if left.size and new_slots:
            # the seed budget ran out: what is left may still be discharges of the units just seeded (a block
            # with no templates yet, e.g. the first, holds a few of each), so it meets them once more, all at once
            sub, sub_t, sub_lab = segments[left], times[left], np.full(left.size, -1, dtype=np.int64)
            self._match_rows(sub, sub_t, sub_lab, allow_noise)
            segments[left], times[left], label[left] = sub, sub_t, sub_lab
            left = left[sub_lab < 0]
        self.dropped += int(left.size)
        valid = label >= 0
        if self.pair_shift:
            self._keep_recent(np.concatenate([times[valid], pair_t]), np.concatenate([label[valid], pair_lab]))
        if not valid.any() and not pair_t.size:
            self.version += 1
            return label
        # 6) every template's update in one go: a median step (step size shrinking with the discharges, down to
        # 1 / n_cap) over the single matches, and the discharge ring over them and the resolved superpositions
        if valid.any():
            segs, lab_all = segments[valid], label[valid]
            fresh = np.zeros(self.k, dtype=bool)
            fresh[new_slots] = True
            order = np.argsort(lab_all, kind="stable")
            lab, segs = lab_all[order], segs[order]
            touched, first_idx, k = np.unique(lab, return_index=True, return_counts=True)
            n_prev = np.minimum(self.count[touched], self.n_cap)
            new = fresh[touched]
            if new.any():  # a new slot starts as the mean of its members in this block
                sums = np.add.reduceat(segs, first_idx, axis=0)
                self.wave[touched[new]] = sums[new] / k[new, None]
            diff = segs - self.wave[lab]
            dev = np.add.reduceat(np.abs(diff), first_idx, axis=0) / k[:, None]
            a = np.where(new, 1.0, k / (n_prev + k))[:, None]
            self.spread[touched] += a * (dev - self.spread[touched])
            if (~new).any():
                old = ~new
                pull = np.add.reduceat(np.sign(diff), first_idx, axis=0)[old]  # discharges above minus below
                step = self.median_gain * self.spread[touched[old]] / (n_prev[old] + k[old])[:, None]
                self.wave[touched[old]] += step * pull
            self.count[touched] += k
            self.match[touched] = self.wave[touched][:, self.match_idx]
            self.norm2[touched] = (self.match[touched] ** 2).sum(axis=1)
        ring_t = np.concatenate([times[valid], pair_t])
        ring_lab = np.concatenate([label[valid], pair_lab])
        order = np.lexsort((ring_t, ring_lab))  # by slot, then time
        lab, tt = ring_lab[order], ring_t[order]
        touched, first_idx, k = np.unique(lab, return_index=True, return_counts=True)
        rank = np.arange(lab.size) - np.repeat(first_idx, k)
        pos = (self.n_times[lab] + rank) % self.ring
        self.times[lab, pos] = tt
        self.n_times[touched] += k
        np.maximum.at(self.last_seen, lab, tt)
        self.version += 1
        return label

    def _lone(self, segs: F64, allow_noise: float) -> npt.NDArray[np.bool_]:
        """Which of these unmatched candidates have fewer than ``seed_support`` look-alikes among them: a unit that
        is new in a block fires there several times, while a superposition of unknown units or a noise peak is a
        shape of its own. They seed last."""
        alike = look_alikes(segs[:, self.match_idx], self.tol, allow_noise)
        return alike.sum(axis=1) < self.seed_support

    # ------------------------------------------------------------------ superpositions
    def _keep_recent(self, t: I64, lab: I64) -> None:
        """Remember this block's known discharges that can reach into the next block's segments."""
        if t.size == 0:
            self._prev = (t, lab, lab)
            return
        keep = t > int(t.max()) - self.seg_len
        self._prev = (t[keep], lab[keep], self.generation[lab[keep]])

    def _neighbours(self, times: I64, label: I64) -> F64:
        """(E, L): the sum of the templates of the known discharges that overlap each candidate's segment.

        Known: this block's matches and the previous block's last ones, of templates with at least 5 discharges.
        Left out for a candidate: itself, another detection of its own unit within ``min_gap``, and templates
        time-locked to its own (other peaks of the same potential). The known discharges are laid into one
        reconstruction of the block (one scatter), each candidate's span is read from it, and only the few
        left-out neighbours are gathered one by one and taken back out."""
        e, n = times.size, self.seg_len
        pt, pl, pg = self._prev
        live = self.active[pl] & (self.generation[pl] == pg)
        mine = np.flatnonzero(label >= 0)
        kt = np.concatenate([pt[live], times[mine]])
        kl = np.concatenate([pl[live], label[mine]])
        ki = np.concatenate([np.full(int(live.sum()), -1, dtype=np.int64), mine])
        grown = self.count[kl] >= 5  # a template this young is not a unit's shape yet
        kt, kl, ki = kt[grown], kl[grown], ki[grown]
        if kt.size == 0:
            return np.zeros((e, n))
        order = np.argsort(kt, kind="stable")
        kt, kl, ki = kt[order], kl[order], ki[order]
        pre = int(self.pre or 0)
        base = int(min(int(kt[0]), int(times.min()))) - pre
        span = int(max(int(kt[-1]), int(times.max()))) - base + n
        ar = np.arange(n)
        recon = np.bincount(((kt - pre - base)[:, None] + ar).ravel(), weights=self.wave[kl].ravel(), minlength=span)
        out = recon[(times - pre - base)[:, None] + ar]  # (E, L)
        own = ki[ki >= 0]
        out[own] -= self.wave[label[own]]  # a known candidate is not its own neighbour
        # the pairs (candidate, known discharge) that overlap
        lo = np.searchsorted(kt, times - n + 1)
        hi = np.searchsorted(kt, times + n)
        cnt = hi - lo
        total = int(cnt.sum())
        row = np.repeat(np.arange(e), cnt)
        j = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt) + np.repeat(lo, cnt)
        lag = kt[j] - times[row]  # the neighbour's peak sits at pre + lag in the candidate's segment
        notself = ki[j] != row
        row, j, lag = row[notself], j[notself], lag[notself]
        excl = (kl[j] == label[row]) & (np.abs(lag) < self.min_gap)  # the same discharge detected twice
        mine_lab = label[row]
        known = np.flatnonzero(mine_lab >= 0)
        if known.size:
            # time-locked template pairs (peaks of one potential): in this block most discharges of the rarer of
            # the two templates have one of the other within a quarter of a segment (independent units at 15 Hz:
            # about 30% by chance)
            k = self.k
            a, b = mine_lab[known], kl[j[known]]
            close = np.abs(lag[known]) <= n // 4
            n_ab = np.bincount((a * k + b)[close], minlength=k * k)
            per = np.bincount(label[label >= 0], minlength=k)
            n_min = np.minimum(per[:, None], per[None, :]).reshape(-1)
            now = (n_ab >= 3) & (n_ab >= 0.7 * n_min)
            if now.any():
                now2 = now.reshape(k, k)
                self.lock |= now2 | now2.T
            excl[known] |= self.lock[a, b]
            # and, before the lock shows, a neighbour whose template holds a copy of the candidate's own
            # shape where the candidate sits (the same potential seen from another of its peaks)
            near = known[~excl[known]]
            if near.size:
                a2, b2 = mine_lab[near], kl[j[near]]
                cop = self._windows()[b2[:, None], (n - lag[near])[:, None], self.match_idx[None, :]]
                cc = np.einsum("pm,pm->p", cop, self.match[a2])
                excl[near] |= cc > 0.7 * np.sqrt(np.einsum("pm,pm->p", cop, cop) * self.norm2[a2])
        if excl.any():
            row, j, lag = row[excl], j[excl], lag[excl]
            back = self._windows()[kl[j], n - lag]  # each left-out template moved by its lag, (P, L)
            # rows are sorted: the r-th left-out neighbour of every candidate at once (a few rounds; cheaper than
            # a reduceat over axis 0)
            starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
            rank = np.arange(row.size) - np.repeat(starts, np.diff(np.r_[starts, row.size]))
            for r in range(int(rank.max()) + 1):
                sel = rank == r if r else starts
                out[row[sel]] -= back[sel]
        return out

    def _windows(self) -> F64:
        """(K, 2L + 1, L) view: ``[k, L - lag]`` is template ``k`` moved so its aligning peak sits at ``pre + lag``
        (0 where it does not reach). One padded copy of the templates; indexing the view copies only the rows
        asked for."""
        n = self.seg_len
        pad = np.zeros((self.k, 3 * n))
        pad[:, n : 2 * n] = self.wave
        return np.lib.stride_tricks.sliding_window_view(pad, n, axis=1)

    def _pairs(self, segs: F64, times: I64, noise_uv: float) -> tuple[npt.NDArray[np.bool_], I64, I64, I64, I64]:
        """Explain each segment (U, L) as the sum of two different templates at shifts (vectorised over templates
        and shifts): the first within a quarter of ``pair_shift`` of the aligning peak, the second within
        ``pair_shift`` (coarse grid, then refined), each chosen by least squares over the wide window. Returns
        (accepted (U,), first unit's times, slots, second unit's times, slots) for the accepted rows."""
        u = segs.shape[0]
        empty = np.zeros(0, dtype=np.int64)
        act = np.flatnonzero(self.active & (self.count >= 5))
        if act.size < 2:
            return np.zeros(u, dtype=bool), empty, empty, empty, empty
        wide = self._wide
        # float32: the products here are the bulk of the work, and einsum's float32 loops are 3-4x faster; the
        # fit only ranks templates and shifts and compares residuals with a tolerance
        x = segs[:, wide].astype(np.float32)  # (U, W)
        wave = self.wave[act].astype(np.float32)
        rows = np.arange(u)

        def fit(r: F32, shifts: I64, skip: I64 | None) -> tuple[I64, I64, F32]:
            tpl = wave[:, wide[None, :] - shifts[:, None]]  # (K, S, W): template k moved by shift s
            en = np.einsum("ksw,ksw->ks", tpl, tpl)
            sc = 2.0 * _products(r, tpl.reshape(-1, wide.size)).reshape(u, act.size, shifts.size) - en[None]
            if skip is not None:
                sc[rows, skip, :] = -np.inf
            flat = np.argmax(sc.reshape(u, -1), axis=1)
            k, si = np.divmod(flat, shifts.size)
            return k, shifts[si], tpl[k, si]

        def refine(r: F32, k: I64, center: I64, radius: int) -> tuple[I64, F32]:
            # template k of each row at shifts center +- radius: the best shift and the template placed there
            sh = np.clip(center[:, None] + np.arange(-radius, radius + 1, dtype=np.int64)[None, :],
                         -self.pair_shift, self.pair_shift)
            cand = wave[k[:, None, None], wide[None, None, :] - sh[:, :, None]]  # (U, F, W)
            sc = 2.0 * np.einsum("uw,ufw->uf", r, cand) - np.einsum("ufw,ufw->uf", cand, cand)
            best = np.argmax(sc, axis=1)
            return sh[rows, best], cand[rows, best]

        # greedy: the first unit near the peak, the second anywhere within pair_shift of what is left; then each
        # shift once more given the other (the first fit alone leans towards the second unit)
        ka, sa, ta = fit(x, self._near, None)
        kb, sb, _ = fit(x - ta, self._far, ka)
        sb, tb = refine(x - ta, kb, sb, self._coarse_step - 1)
        sa, ta = refine(x - tb, ka, sa, int(self._near[-1]))
        sb, tb = refine(x - ta, kb, sb, 2)
        r1 = x - ta
        r2 = r1 - tb
        res1 = np.einsum("uw,uw->u", r1, r1)
        res2 = np.einsum("uw,uw->u", r2, r2)
        ea = np.einsum("uw,uw->u", ta, ta)
        eb = np.einsum("uw,uw->u", tb, tb)
        allow = self.k_noise * wide.size * noise_uv * noise_uv
        ok = (res2 < self.tol * (ea + eb) + allow) & (eb > allow) & (res2 < 0.5 * res1)
        return ok, times[ok] + sa[ok], act[ka[ok]], times[ok] + sb[ok], act[kb[ok]]

    def _slot_order(self, protected: npt.NDArray[np.bool_]) -> list[int]:
        """The slots new templates take, in order: free ones first, then the unprotected ones with the fewest
        discharges (ties: the least recently seen, then the lowest index). Each slot taken becomes protected,
        so the order is fixed for the whole block."""
        free = np.flatnonzero(~self.active & ~protected)
        used = np.flatnonzero(self.active & ~protected)
        score = self.count[used].astype(np.float64) + 1e-12 * self.last_seen[used]
        return [int(x) for x in free] + [int(x) for x in used[np.argsort(score, kind="stable")]]

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
        return np.sort(t[t >= oldest])  # resolved superpositions may enter the ring a little out of order


def _products(a: FA, b: FA) -> FA:
    """``a @ b.T`` for small ``(E, m)`` and ``(K, m)`` without BLAS. numpy's OpenBLAS wakes its thread pool for
    every product and those threads then spin: with a few dozen streams that burnt about 0.7 of a core (measured
    with ``streamemg bench``), ten times the analysis itself."""
    return np.einsum("em,km->ek", a, b)


def look_alikes(windows: F64, tol: float, allow: float) -> npt.NDArray[np.bool_]:
    """(N, N): which pairs of these matching windows (N, m) pass the match rule either way round (squared distance
    under ``tol`` times the larger energy plus the noise allowance ``allow``); a window is not its own look-alike."""
    e = (windows * windows).sum(axis=1)
    d = e[:, None] + e[None, :] - 2.0 * _products(windows, windows)
    close = d < tol * np.maximum(e[:, None], e[None, :]) + allow
    np.fill_diagonal(close, False)
    return np.asarray(close, dtype=bool)


def shifted_rows(segs: F64, delta: I64) -> F64:
    """Row ``r`` of ``segs`` (U, L) moved so that its sample ``pre + delta[r]`` lands at ``pre``; uncovered ends 0."""
    n = segs.shape[1]
    idx = np.arange(n)[None, :] + delta[:, None]
    inside = (idx >= 0) & (idx < n)
    out = np.take_along_axis(segs, np.clip(idx, 0, n - 1), axis=1)
    return np.where(inside, out, 0.0)
