"""QEMG of the clinical data sets: the per-class table and the normative reference.

``python -m streamemg.qemg.realdata --data DATA_DIR [--cache FILE] [--write-reference]`` analyses every usable
EMGLAB N2001 and Mendeley recording (the manifests' files, A08's stale tail trimmed), prints the per-class
table in Markdown (subject means: each subject's recordings averaged first, then mean ± SD over subjects) and,
with ``--write-reference``, writes the normative reference from the EMGLAB Normal recordings into the package.
``--cache FILE`` keeps the per-recording results (JSON lines) so a second run only prints.

``--compare-sim`` adds the simulator-vs-EMGLAB table: for every class the QEMG measures of the simulator
(``--sim-seeds`` seeds x ``--sim-seconds`` s at 10 kHz, the demo's rate; by default 11 s, as long as an EMGLAB
recording, so that what a recording pools over its horizons compares like for like) next to those of the real EMGLAB
recordings, and the log power of the classifier's own frames (20 Hz high-pass, 4 kHz, 128-sample frames) in
five bands: the 10th, 50th and 90th percentile over the frames of a recording, in dB re 1 µV² (the spread
tells a recording of a few separate spikes from a continuous interference pattern of the same mean power).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..clinical.datasets import find_recordings
from ..types import CLASS_NAMES
from .analyser import QemgSettings
from .normative import REFERENCE_PATH, build_reference
from .report import analyse_row

#: Measures tabulated per class.
TABLE_MEASURES: tuple[tuple[str, str, int], ...] = (
    ("units", "units / horizon", 1),
    ("amplitude_uv", "amplitude (µV)", 0),
    ("duration_ms", "duration (ms)", 1),
    ("phases", "phases", 2),
    ("turns", "turns", 2),
    ("thickness_ms", "thickness (ms)", 2),
    ("polyphasic_pct", "polyphasic (%)", 0),
    ("firing_hz", "firing rate (Hz)", 1),
    ("firing_cv", "firing CV", 2),
    ("recruitment_ratio", "recruitment ratio", 2),
    ("fibrillations", "fibrillations / rec", 2),
    ("positive_sharp_waves", "PSW / rec", 2),
    ("fasciculations", "fasciculations / rec", 2),
    ("noise_uv", "baseline noise (µV)", 1),
)


def dataset_settings(dataset: str, settings: QemgSettings | None = None) -> QemgSettings:
    """The QEMG settings a data set's recordings are analysed with: Mendeley's carry strong 50 Hz hum (PROVENANCE),
    so they are notched."""
    st = settings or QemgSettings()
    return replace(st, notch_hz=50.0) if dataset == "mendeley" else st


def analyse_refs(data: Path, cache: Path | None, settings: QemgSettings | None = None) -> list[dict[str, Any]]:
    """One row per recording: QEMG ``to_dict`` plus dataset, subject, label, record."""
    done: dict[str, dict[str, Any]] = {}
    if cache is not None and cache.exists():
        for line in cache.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["record"]] = row
    refs = find_recordings([data], datasets=["emglab", "mendeley"])
    rows = []
    fh = cache.open("a", encoding="utf-8") if cache is not None else None
    try:
        for i, ref in enumerate(refs):
            key = f"{ref.dataset}:{ref.record}"
            if key in done:
                rows.append(done[key])
                continue
            rec = ref.load()
            row = analyse_row(rec.data, rec.fs, dataset_settings(ref.dataset, settings))
            row.update(record=key, dataset=ref.dataset, subject=ref.subject, label=ref.label, site=ref.site)
            rows.append(row)
            if fh is not None:
                fh.write(json.dumps(row) + "\n")
                fh.flush()
            print(f"[{i + 1}/{len(refs)}] {key} {ref.label}: {row['units']} units, amp {row['amplitude_uv']}",
                  file=sys.stderr)
    finally:
        if fh is not None:
            fh.close()
    return rows


def subject_means(rows: Sequence[dict[str, Any]], name: str) -> dict[str, float]:
    """Mean of measure ``name`` per subject (recordings without a value are left out)."""
    per: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        v = r.get(name)
        if isinstance(v, (int, float)) and math.isfinite(v):
            per[r["subject"]].append(float(v))
    return {s: float(np.mean(v)) for s, v in per.items() if v}


def class_table(rows: Sequence[dict[str, Any]], dataset: str) -> str:
    """Markdown table: measure x class, mean ± SD over subjects (n subjects)."""
    sel = [r for r in rows if r["dataset"] == dataset]
    head = "| measure | " + " | ".join(CLASS_NAMES) + " |\n|---|" + "---|" * len(CLASS_NAMES) + "\n"
    lines = []
    for name, title, nd in TABLE_MEASURES:
        cells = []
        for cls in CLASS_NAMES:
            sm = list(subject_means([r for r in sel if r["label"] == cls], name).values())
            if not sm:
                cells.append("-")
                continue
            sd = float(np.std(sm, ddof=1)) if len(sm) > 1 else 0.0
            cells.append(f"{np.mean(sm):.{nd}f} ± {sd:.{nd}f} ({len(sm)})")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    n_rec = {c: sum(r["label"] == c for r in sel) for c in CLASS_NAMES}
    n_sub = {c: len({r["subject"] for r in sel if r["label"] == c}) for c in CLASS_NAMES}
    lines.append("| recordings (subjects) | " + " | ".join(f"{n_rec[c]} ({n_sub[c]})" for c in CLASS_NAMES) + " |")
    return head + "\n".join(lines)


#: Bands (Hz) in which the class-mean log spectra are compared.
SPECTRUM_BANDS: tuple[tuple[float, float], ...] = ((20, 100), (100, 250), (250, 500), (500, 1000), (1000, 2000))


def _at_model_rate(x: np.ndarray, fs: float) -> np.ndarray:
    """``x`` (n,) µV as the classifier's frames see it: 20 Hz 4th-order high-pass, resampled to 4 kHz."""
    from math import gcd

    from scipy import signal

    sos = signal.butter(4, 20.0, "highpass", fs=fs, output="sos")
    y = signal.sosfilt(sos, np.asarray(x, dtype=np.float64))
    if fs != 4000.0:
        num, den = (4000, int(fs)) if float(fs).is_integer() else (8000, round(2 * fs))
        g = gcd(num, den)
        y = signal.resample_poly(y, num // g, den // g)
    return np.asarray(y)


def log_spectrum(x: np.ndarray, fs: float) -> np.ndarray:
    """Frame log power of ``x`` (n,) µV as the classifier sees it, shape (bands, 3): p10, p50, p90 in dB µV².

    20 Hz 4th-order high-pass, resampled to 4 kHz, 128-sample frames (the model's), Hann window; per frame the
    power in each of :data:`SPECTRUM_BANDS`.
    """
    y = _at_model_rate(x, fs)
    n = y.size // 128
    frames = y[: n * 128].reshape(n, 128) * np.hanning(128)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2 / np.sum(np.hanning(128) ** 2) * 2 / 128
    f = np.fft.rfftfreq(128, 1 / 4000.0)
    out = np.empty((len(SPECTRUM_BANDS), 3))
    for b, (lo, hi) in enumerate(SPECTRUM_BANDS):
        band = 10 * np.log10(power[:, (f >= lo) & (f < hi)].sum(axis=1) + 1e-6)
        out[b] = np.percentile(band, [10, 50, 90])
    return out


def frame_spectrum(x: np.ndarray, fs: float) -> np.ndarray:
    """The classifier's log-spectrogram summarised, shape (3, 64): per bin (31-2000 Hz, 31.25 Hz apart) the mean,
    10th and 90th percentile over frames of 10·log10 PSD (µV²/Hz); 128-sample Hann frames every 64 at 4 kHz
    after a 20 Hz high-pass. The simulator's class parameters were fitted on this (docs/qemg.md)."""
    y = _at_model_rate(x, fs)
    n = (y.size - 128) // 64 + 1
    win = np.hanning(128)
    frames = y[np.arange(128)[None, :] + 64 * np.arange(n)[:, None]] * win
    psd = np.abs(np.fft.rfft(frames, axis=1)) ** 2 / (4000.0 * np.sum(win**2)) * 2
    f = np.fft.rfftfreq(128, 1 / 4000.0)
    db = 10 * np.log10(psd[:, (f >= 20) & (f <= 2000)] + 1e-6)
    return np.stack([db.mean(axis=0), np.percentile(db, 10, axis=0), np.percentile(db, 90, axis=0)])


def real_frame_spectra(data: Path) -> dict[str, np.ndarray]:
    """EMGLAB class means of :func:`frame_spectrum` (recordings averaged per subject first)."""
    per: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    for ref in find_recordings([data], datasets=["emglab"]):
        rec = ref.load()
        per[(ref.label, ref.subject)].append(frame_spectrum(rec.data[:, 0], rec.fs))
    return {cls: np.mean([np.mean(v, axis=0) for (c, _), v in per.items() if c == cls], axis=0) for cls in CLASS_NAMES}


def real_spectra(data: Path) -> dict[str, np.ndarray]:
    """EMGLAB class means of :func:`log_spectrum` (recordings averaged per subject first), dB."""
    per: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    for ref in find_recordings([data], datasets=["emglab"]):
        rec = ref.load()
        per[(ref.label, ref.subject)].append(log_spectrum(rec.data[:, 0], rec.fs))
    out = {}
    for cls in CLASS_NAMES:
        subj = [np.mean(v, axis=0) for (c, _), v in per.items() if c == cls]
        out[cls] = np.mean(subj, axis=0)
    return out


def simulated_rows(
    seeds: int, seconds: float, fs: float = 10000.0
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """QEMG rows and class-mean band spectra of the simulator (one 'subject' per seed)."""
    from simulators.synth import CLASS_LABELS, SIM_CLASSES, EMGSimulator

    rows: list[dict[str, Any]] = []
    spectra: dict[str, list[np.ndarray]] = defaultdict(list)
    full: dict[str, list[np.ndarray]] = defaultdict(list)
    for cls in SIM_CLASSES:
        label = CLASS_LABELS[cls]
        for seed in range(seeds):
            x = EMGSimulator(cls, fs, seed=seed).generate(round(seconds * fs))
            row = analyse_row(x, fs)
            row.update(record=f"sim:{cls}:{seed}", dataset="sim", subject=f"sim:{cls}:{seed}", label=label)
            rows.append(row)
            spectra[label].append(log_spectrum(x[:, 0], fs))
            full[label].append(frame_spectrum(x[:, 0], fs))
    out = {k: np.mean(v, axis=0) for k, v in spectra.items()}
    out.update({f"full:{k}": np.mean(v, axis=0) for k, v in full.items()})
    return rows, out


def sim_table(real_rows: Sequence[dict[str, Any]], sim_rows: Sequence[dict[str, Any]],
              real_spec: dict[str, np.ndarray], sim_spec: dict[str, np.ndarray]) -> str:
    """Markdown: per class, real EMGLAB vs simulated (mean over subjects / seeds)."""
    head = "| measure | " + " | ".join(f"{c} real | {c} sim" for c in CLASS_NAMES) + " |\n"
    head += "|---|" + "---|---|" * len(CLASS_NAMES) + "\n"
    lines = []
    for name, title, nd in TABLE_MEASURES:
        if name in ("positive_sharp_waves",):
            continue
        cells = []
        for cls in CLASS_NAMES:
            for rows in (real_rows, sim_rows):
                sm = list(subject_means([r for r in rows if r["label"] == cls], name).values())
                cells.append(f"{np.mean(sm):.{nd}f}" if sm else "-")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    for b, (lo, hi) in enumerate(SPECTRUM_BANDS):
        cells = []
        for cls in CLASS_NAMES:
            cells += ["/".join(f"{v:.0f}" for v in spec[cls][b]) for spec in (real_spec, sim_spec)]
        lines.append(f"| frame power {lo:g}-{hi:g} Hz, p10/p50/p90 (dB µV²) | " + " | ".join(cells) + " |")
    return head + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streamemg.qemg.realdata", description=__doc__)
    p.add_argument("--data", required=True, help="the data folder (holding emglab_n2001/ and the Mendeley set)")
    p.add_argument("--cache", default=None, help="JSON-lines file keeping per-recording results")
    p.add_argument("--write-reference", action="store_true", help=f"write {REFERENCE_PATH.name} into the package")
    p.add_argument("--compare-sim", action="store_true", help="add the simulator-vs-EMGLAB table")
    p.add_argument("--sim-seeds", type=int, default=3, help="simulated 'subjects' per class (default 3)")
    p.add_argument("--sim-seconds", type=float, default=11.0,
                   help="seconds per simulated subject (default 11, the EMGLAB recordings' length: one horizon)")
    args = p.parse_args(argv)
    rows = analyse_refs(Path(args.data), Path(args.cache) if args.cache else None)
    for ds in ("emglab", "mendeley"):
        print(f"\n### {ds}: mean ± SD over subjects (number of subjects)\n")
        print(class_table(rows, ds))
    if args.compare_sim:
        real = [r for r in rows if r["dataset"] == "emglab"]
        sim_rows, sim_spec = simulated_rows(args.sim_seeds, args.sim_seconds)
        print("\n### simulator vs EMGLAB (mean over subjects / seeds)\n")
        print(sim_table(real, sim_rows, real_spectra(Path(args.data)), sim_spec))
        full_real = real_frame_spectra(Path(args.data))
        print("\nRMS difference simulated - real over the 64 bins of the classifier's log spectrum (dB):\n")
        print("| class | mean over frames | 10th percentile | 90th percentile |\n|---|---|---|---|")
        for cls in CLASS_NAMES:
            d = sim_spec[f"full:{cls}"] - full_real[cls]
            print(f"| {cls} | " + " | ".join(f"{float(np.sqrt(np.mean(r * r))):.1f}" for r in d) + " |")
    if args.write_reference:
        normal = [r for r in rows if r["dataset"] == "emglab" and r["label"] == "Normal"]
        ref = build_reference(normal, "EMGLAB N2001 Normal recordings (biceps brachii, low effort)")
        REFERENCE_PATH.write_text(json.dumps(ref, indent=1) + "\n", encoding="utf-8")
        print(f"\nreference written: {REFERENCE_PATH.name} ({len(normal)} recordings)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
