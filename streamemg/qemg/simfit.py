"""Fit one simulated class's parameters to the real EMGLAB class (how ``simulators.synth.PROFILES`` were set).

``python -m streamemg.qemg.simfit --data DATA_DIR --cls als [--start P,P,...] [--iters 150] [--seeds 10,11,12,13]
[--seconds 11]``

Objective (smaller is better), all on the same measurements as the real data:

* the classifier's log spectrum (:func:`streamemg.qemg.realdata.frame_spectrum`: per bin, mean / 10th / 90th
  percentile over frames): RMS difference to the real class mean, over 1.5 dB (mean) and 2 dB (percentiles);
* QEMG (recording-level report): log amplitude ratio over 0.15, duration over 1.5 ms, phases over 0.4,
  % polyphasic over 10 points, log ratio of units per horizon over 0.2, log ratio of the baseline noise over
  0.2, firing rate over 1.5 Hz;
* the classifier's embedding (:mod:`streamemg.qemg.modelview`: what the network's head reads for each stream
  window): for each simulated subject, the RMS over dimensions of (its mean embedding - the real class's mean) in
  units of the real class's per-dimension spread; the mean over the simulated subjects, over 0.5 (a real EMGLAB
  subject sits 0.14-0.55 from its own class's mean, 1.3-7 from another class's). The mean over subjects, not the
  distance of the pooled mean, so a profile whose seeds scatter around the real class is not rewarded for the
  average of the scatter. ``--no-model-view`` leaves the term out.

Ten parameters: log pickup gain, duration scale, mean phase count, unit-count scale, log noise gain, firing-rate
scale, log amplitude spread, effort, main-spike width, log10 of the background's low-pass corner (Hz; 3.6 and
above: none). The scales and the gain and spread are relative to the class's current profile, the others
absolute; the default start reproduces the current profile (its phase table rounded to a Gaussian). Search:
random coordinate perturbations around the best point, shrinking steps (0.25, 0.12, 0.05 of each range).
The simulated "subjects" are the seeds given (keep them apart from the seeds a test then checks).
Only the simulator is fitted: the classifier's embedding is read as one more view of the real data (as the
spectrum is); its weights are never changed, and its labels are not in the objective.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..clinical.datasets import find_recordings
from .modelview import embedding_distance, embeddings, real_embedding_targets, stream_windows
from .realdata import frame_spectrum, real_frame_spectra, subject_means
from .report import analyse_row

#: Parameter names, lower and upper bounds. The main-spike width stays at 0.2 or more: below that the balanced
#: positive phases of a potential fall under the 3% duration level, the spike alone is stretched to the duration
#: and the kernel trails for up to a second (a first ALS fit with a bound of 0.08 went there).
NAMES = ("log_gain", "dur_scale", "phases_mu", "units_scale", "log_noise", "rate_scale", "log_amp_spread", "effort",
         "main_width", "log_noise_corner")
LO = np.array([-2.0, 0.3, 2.0, 0.2, -2.5, 0.4, -1.5, 0.05, 0.2, 1.5])
HI = np.array([2.0, 2.5, 6.5, 2.5, 1.5, 2.0, 0.7, 0.8, 1.2, 3.6])
#: The recording-level QEMG measures in the objective.
QEMG_TERMS = ("amplitude_uv", "duration_ms", "phases", "polyphasic_pct", "units", "noise_uv", "firing_hz")


def phases_table(mu: float) -> tuple[tuple[int, float], ...]:
    """A discretised Gaussian (SD 0.8) over 2-8 phases centred on ``mu``."""
    ks = np.arange(2, 9)
    p = np.exp(-0.5 * ((ks - mu) / 0.8) ** 2)
    p /= p.sum()
    return tuple((int(k), round(float(q), 3)) for k, q in zip(ks, p, strict=True) if q >= 0.01)


def profile_from(base: Any, th: Sequence[float] | np.ndarray) -> Any:
    """The class profile for parameters ``th`` (see :data:`NAMES`) relative to ``base``."""
    g, dsc, ph, nu, ng, rs, asp, eff, mw, corner = (float(v) for v in th)
    a_lo, a_hi = base.amplitude_uv
    mid, half = math.sqrt(a_lo * a_hi), math.log(a_hi / a_lo) / 2 * math.exp(asp)
    return replace(
        base,
        pickup_gain=round(base.pickup_gain * math.exp(g), 4),
        duration_ms=(round(base.duration_ms[0] * dsc, 2), round(base.duration_ms[1] * dsc, 2)),
        phases=phases_table(ph),
        n_units=(max(1, round(base.n_units[0] * nu)), max(1, round(base.n_units[1] * nu))),
        noise_gain=round(math.exp(ng), 3),
        base_rate_hz=round(base.base_rate_hz * rs, 2),
        rate_gain_hz=round(base.rate_gain_hz * rs, 2),
        max_rate_hz=round(base.max_rate_hz * rs, 2),
        amplitude_uv=(round(mid * math.exp(-half), 1), round(mid * math.exp(half), 1)),
        serrations=(0, 0) if ph < 3.2 else (0, max(1, base.serrations[1])),
        effort=round(eff, 3),
        main_width=round(mw, 3),
        noise_corner_hz=None if corner >= HI[-1] else round(10.0**corner, 1),
    )


def start_point(base: Any) -> np.ndarray:
    """The parameters (see :data:`NAMES`) that reproduce ``base``, up to the rounding of its phase table."""
    ph = sum(k * q for k, q in base.phases) / sum(q for _, q in base.phases)
    corner = HI[-1] if base.noise_corner_hz is None else math.log10(base.noise_corner_hz)
    return np.array([0.0, 1.0, ph, 1.0, math.log(base.noise_gain), 1.0, 0.0, base.effort, base.main_width, corner])


def real_targets(data: Path, label: str, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The real class's frame spectrum and QEMG means (subject means), from ``rows`` (realdata rows)."""
    sel = [r for r in rows if r["dataset"] == "emglab" and r["label"] == label]
    out: dict[str, Any] = {k: float(np.mean(list(subject_means(sel, k).values())))
                           for k in QEMG_TERMS}
    out["spectrum"] = real_frame_spectra(data)[label]
    return out


@dataclass
class ModelView:
    """The classifier's embedding as a view of the data: the bundle, its built model, the real class's target."""

    bundle: Any
    model: Any
    target: dict[str, np.ndarray]

    def distance(self, x: np.ndarray, fs: float) -> float:
        """One simulated subject's distance to the real class (see the module docstring)."""
        emb = embeddings(self.model, stream_windows(x, fs, self.bundle))
        return embedding_distance([emb], self.target)


def terms(
    cls: str, prof: Any, target: dict[str, Any], seeds: Sequence[int], seconds: float = 11.0,
    view: ModelView | None = None,
) -> dict[str, float] | None:
    """The objective's terms (each already squared and weighted) for one candidate profile; None when a QEMG
    measure is missing on every simulated subject. ``view``: add the embedding term."""
    from simulators import synth

    old = synth.PROFILES[cls]
    synth.PROFILES[cls] = prof
    try:
        rows, specs, dists = [], [], []
        for seed in seeds:
            x = synth.EMGSimulator(cls, 10000.0, seed=seed).generate(round(seconds * 10000.0))
            rows.append(analyse_row(x, 10000.0))
            specs.append(frame_spectrum(x[:, 0], 10000.0))
            if view is not None:
                dists.append(view.distance(x, 10000.0))
    finally:
        synth.PROFILES[cls] = old
    m = {k: float(np.mean(v)) for k in QEMG_TERMS
         if (v := [r[k] for r in rows if r.get(k) is not None and math.isfinite(r[k])])}
    if len(m) < len(QEMG_TERMS):
        return None
    d = np.mean(specs, axis=0) - target["spectrum"]
    rms = [float(np.sqrt(np.mean(r * r))) for r in d]
    out = {
        "spectrum_mean": (rms[0] / 1.5) ** 2,
        "spectrum_p10": (rms[1] / 2.0) ** 2,
        "spectrum_p90": (rms[2] / 2.0) ** 2,
        "amplitude_uv": (math.log(m["amplitude_uv"] / target["amplitude_uv"]) / 0.15) ** 2,
        "duration_ms": ((m["duration_ms"] - target["duration_ms"]) / 1.5) ** 2,
        "phases": ((m["phases"] - target["phases"]) / 0.4) ** 2,
        "polyphasic_pct": ((m["polyphasic_pct"] - target["polyphasic_pct"]) / 10.0) ** 2,
        "units": (math.log(max(m["units"], 0.1) / target["units"]) / 0.2) ** 2,
        "noise_uv": (math.log(max(m["noise_uv"], 0.01) / target["noise_uv"]) / 0.2) ** 2,
        "firing_hz": ((m["firing_hz"] - target["firing_hz"]) / 1.5) ** 2,
    }
    if dists:
        out["embedding"] = (min(float(np.mean(dists)), 1e3) / 0.5) ** 2
    return out


def loss(
    cls: str, prof: Any, target: dict[str, Any], seeds: Sequence[int], seconds: float = 11.0,
    view: ModelView | None = None,
) -> float:
    """The objective of the module docstring for one candidate profile: the sum of :func:`terms`."""
    t = terms(cls, prof, target, seeds, seconds, view)
    return 1e6 if t is None else float(sum(t.values()))


def main(argv: Sequence[str] | None = None) -> int:
    import json

    from simulators import synth

    p = argparse.ArgumentParser(prog="python -m streamemg.qemg.simfit", description=__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--cls", required=True, choices=synth.SIM_CLASSES)
    p.add_argument("--rows", default=None, help="realdata rows (JSON lines); default: analyse EMGLAB now")
    p.add_argument("--start", default=None, help="10 comma-separated parameters (default: the current profile)")
    p.add_argument("--iters", type=int, default=150)
    p.add_argument("--seeds", default="10,11,12,13")
    p.add_argument("--rng", type=int, default=0)
    p.add_argument("--explain", action="store_true",
                   help="print the objective's terms at the start point (--start or the current profile) and stop")
    p.add_argument("--no-model-view", action="store_true",
                   help="leave the classifier's embedding out of the objective (QEMG and spectrum only)")
    p.add_argument("--model", default=None, help="the model bundle whose embedding is the view (default: shipped)")
    p.add_argument("--seconds", type=float, default=11.0,
                   help="simulated seconds per seed (default 11, an EMGLAB recording's length: one horizon)")
    args = p.parse_args(argv)
    data = Path(args.data)
    if args.rows:
        rows = [json.loads(line) for line in Path(args.rows).read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        from .realdata import analyse_refs

        find_recordings([data], datasets=["emglab"])  # fails early with a clear message if the folder is wrong
        rows = analyse_refs(data, None)
    target = real_targets(data, synth.CLASS_LABELS[args.cls], rows)
    view = None
    if not args.no_model_view:
        from ..model import load_bundle

        bundle = load_bundle(args.model)
        model = bundle.build("cpu")
        view = ModelView(bundle, model, real_embedding_targets(data, bundle, model)[synth.CLASS_LABELS[args.cls]])
    base = synth.PROFILES[args.cls]
    seeds = [int(s) for s in args.seeds.split(",")]
    x0 = np.array([float(v) for v in args.start.split(",")]) if args.start else start_point(base)
    if x0.size != len(NAMES):
        p.error(f"--start needs {len(NAMES)} values ({', '.join(NAMES)})")
    if args.explain:
        t = terms(args.cls, profile_from(base, x0), target, seeds, args.seconds, view)
        print("a QEMG measure is missing on every simulated subject" if t is None else
              "  ".join(f"{k} {v:.2f}" for k, v in t.items()) + f"  total {sum(t.values()):.2f}")
        return 0
    rng = np.random.default_rng(args.rng)
    best = (loss(args.cls, profile_from(base, x0), target, seeds, args.seconds, view), x0)
    print(f"start {best[0]:.2f}", flush=True)
    for i in range(args.iters):
        scale = 0.25 if i < args.iters // 3 else (0.12 if i < 2 * args.iters // 3 else 0.05)
        k = int(rng.integers(1, 4))
        idx = rng.choice(len(NAMES), size=k, replace=False)
        th = best[1].copy()
        th[idx] += rng.normal(0, 1, k) * (HI - LO)[idx] * scale
        th = np.clip(th, LO, HI)
        value = loss(args.cls, profile_from(base, th), target, seeds, args.seconds, view)
        if value < best[0]:
            best = (value, th)
            print(f"{i} {value:.2f} {','.join(f'{v:.4f}' for v in th)}", flush=True)
    print(f"best {best[0]:.2f} {','.join(f'{v:.4f}' for v in best[1])}")
    print(repr(profile_from(base, best[1])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
