"""Superposition resolution in the template clustering: known neighbours peeled off, pairs of templates."""

from __future__ import annotations

import numpy as np

from simulators.synth import draw_muap_shape, render_potential
from streamemg.qemg.templates import TemplateSet

FS = 10000.0
PRE, POST = 150, 250


def _placed(kernel: np.ndarray, peak_at: int, n: int = PRE + POST) -> np.ndarray:
    """``kernel`` moved so that its largest |value| sits at ``peak_at`` in a segment of ``n`` samples."""
    out = np.zeros(n)
    p = int(np.argmax(np.abs(kernel)))
    for i, v in enumerate(kernel):
        j = i - p + peak_at
        if 0 <= j < n:
            out[j] = v
    return out


def _set() -> tuple[TemplateSet, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    a = render_potential(draw_muap_shape(rng, 3), FS, 8.0, 400.0)
    b = render_potential(draw_muap_shape(rng, 2), FS, 6.0, 250.0)
    match_idx = np.arange(PRE - 15, PRE + 16, dtype=np.int64)
    ts = TemplateSet(PRE + POST, match_idx, max_templates=8, ring=64, n_cap=64, tol=0.05, k_noise=2.0,
                     max_shift=30, pre=PRE, pair_shift=40, min_gap=150)
    # each unit alone, 10 times, far apart: two established templates
    times = np.arange(20, dtype=np.int64) * 2000 + 1000
    segs = np.array([_placed(a if i % 2 == 0 else b, PRE) for i in range(20)])
    segs += rng.normal(0.0, 0.5, segs.shape)
    lab = ts.assign(times, segs, 0.5)
    assert len(set(lab.tolist())) == 2 and ts.count[lab[0]] == 10 and ts.count[lab[1]] == 10
    return ts, a, b


def test_two_units_firing_together_are_both_credited_and_the_means_stay_clean() -> None:
    ts, a, b = _set()
    la, lb = int(np.argmax(np.ptp(ts.wave, axis=1))), int(np.argsort(-np.ptp(ts.wave, axis=1))[1])
    wave_a = ts.wave[la].copy()
    t = 50_000
    seg = _placed(a, PRE) + _placed(b, PRE + 12)  # b 1.2 ms after a: one candidate, matching neither alone
    lab = ts.assign(np.array([t]), seg[None, :], 0.5)
    assert lab[0] == -2 and ts.resolved == 1
    assert abs(int(ts.recent_times(la, 0)[-1]) - t) <= 1
    assert abs(int(ts.recent_times(lb, 0)[-1]) - (t + 12)) <= 2
    assert np.array_equal(ts.wave[la], wave_a)  # a superposition does not enter a template's mean


def test_a_candidate_overlapped_by_a_known_neighbour_matches_once_the_neighbour_is_peeled_off() -> None:
    ts, a, b = _set()
    la = int(np.argmax(np.ptp(ts.wave, axis=1)))
    lb = int(np.argsort(-np.ptp(ts.wave, axis=1))[1])
    # b at t and a 5 ms later: two candidates; b's segment holds a's spike, a's segment b's tail
    t = 60_000
    seg_b = _placed(b, PRE) + _placed(a, PRE + 50)
    seg_a = _placed(a, PRE) + _placed(b, PRE - 50)
    lab = ts.assign(np.array([t, t + 50]), np.array([seg_b, seg_a]), 0.5)
    assert lab.tolist() == [lb, la]
    # the means were updated with the cleaned segments: a's template has not taken in b's tail
    assert np.max(np.abs(ts.wave[la] - _placed(a, PRE))) < 5.0


def test_a_template_is_a_median_that_keeps_an_unknown_neighbour_out() -> None:
    """A unit's discharges of which a third carry another potential (of a unit too small or too rare to hold a
    template, so nothing peels it off) 15 ms after the spike: a running mean would keep a third of that potential;
    the running median keeps a small part of it, and still follows the unit's own shape."""
    rng = np.random.default_rng(11)
    a = render_potential(draw_muap_shape(rng, 3), FS, 8.0, 300.0)
    c = render_potential(draw_muap_shape(rng, 2), FS, 4.0, 120.0)
    match_idx = np.arange(PRE - 15, PRE + 16, dtype=np.int64)
    ts = TemplateSet(PRE + POST, match_idx, max_templates=8, ring=64, n_cap=64, tol=0.05, k_noise=2.0, pre=PRE)
    own = _placed(a, PRE)
    other = _placed(c, PRE + 150)
    n = 120
    with_other = rng.random(n) < 1 / 3
    segs = own[None, :] + with_other[:, None] * other[None, :] + rng.normal(0.0, 2.0, (n, own.size))
    times = np.arange(n, dtype=np.int64) * 1500 + 1000
    for i in range(0, n, 6):  # blocks of a few discharges, as the analyser gives them
        ts.assign(times[i : i + 6], segs[i : i + 6], 2.0)
    j = int(np.argmax(ts.count))
    assert ts.count[j] == n
    mean = segs.mean(axis=0)
    late = slice(PRE + 120, PRE + 190)  # where the other potential sits
    residue_mean = float(np.abs(mean[late] - own[late]).max())
    residue_median = float(np.abs(ts.wave[j, late] - own[late]).max())
    assert residue_mean > 0.25 * float(np.ptp(c))
    assert residue_median < 0.4 * residue_mean, (residue_median, residue_mean)
    assert np.abs(ts.wave[j] - own).max() < 0.1 * float(np.ptp(a)) + residue_median


def test_a_units_template_keeps_its_slot_while_the_unit_pauses() -> None:
    """A unit recruited only at the effort peaks pauses for seconds; the new shapes seeded meanwhile (superpositions of
    unknown units, noise: one discharge each) take free slots and each other's, never the unit's."""
    rng = np.random.default_rng(9)
    a = render_potential(draw_muap_shape(rng, 3), FS, 8.0, 350.0)
    match_idx = np.arange(PRE - 15, PRE + 16, dtype=np.int64)
    ts = TemplateSet(PRE + POST, match_idx, max_templates=4, ring=64, n_cap=64, tol=0.05, k_noise=2.0, pre=PRE)
    t0 = 1000
    lab = ts.assign(np.arange(8, dtype=np.int64) * 1500 + t0, np.array([_placed(a, PRE)] * 8), 0.5)
    j = int(lab[0])
    gen = int(ts.generation[j])
    t = 20_000
    for _ in range(6):  # blocks of new shapes, more than the free slots, while the unit is silent
        junk = [_placed(render_potential(draw_muap_shape(rng, int(rng.integers(2, 5))), FS, float(rng.uniform(3, 12)),
                                         float(rng.uniform(40, 200))), PRE) for _ in range(5)]
        ts.assign(np.arange(5, dtype=np.int64) * 1500 + t, np.array(junk), 0.5)
        t += 10_000
    assert ts.active[j] and int(ts.generation[j]) == gen and ts.count[j] == 8
    back = ts.assign(np.array([t], dtype=np.int64), _placed(a, PRE)[None, :], 0.5)
    assert int(back[0]) == j  # the unit's next discharge finds its template


def test_a_unit_new_in_a_crowded_block_is_seeded_before_lone_shapes() -> None:
    """In a block where many shapes are new (the first, or an effort peak), the seeds went in time order to
    superpositions and noise peaks, one discharge each, and ran out before a unit that fires later in the block:
    all of its discharges were dropped. Shapes with look-alikes in the block now seed first."""
    rng = np.random.default_rng(11)
    unit = render_potential(draw_muap_shape(rng, 3), FS, 8.0, 300.0)
    match_idx = np.arange(PRE - 15, PRE + 16, dtype=np.int64)
    lone = [_placed(render_potential(draw_muap_shape(rng, int(rng.integers(2, 5))), FS, float(rng.uniform(3, 12)),
                                    float(rng.uniform(40, 200))), PRE) for _ in range(6)]
    segs = np.array(lone + [_placed(unit, PRE)] * 6)  # six lone shapes first, then six discharges of one unit
    times = np.arange(12, dtype=np.int64) * 1500 + 1000
    for support, expect in ((0, 0), (2, 6)):
        ts = TemplateSet(PRE + POST, match_idx, max_templates=8, ring=64, n_cap=64, tol=0.05, k_noise=2.0, pre=PRE,
                         max_new=4, seed_support=support)
        lab = ts.assign(times, segs.copy(), 0.5)
        got = lab[6:]
        assert int(np.count_nonzero(got >= 0)) == expect, (support, lab)
        if expect:
            assert len(set(got.tolist())) == 1  # one template holds them all
