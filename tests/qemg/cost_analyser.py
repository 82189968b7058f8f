"""Print the CPU cost of the QEMG analyser alone per stream-second (docs/qemg.md, "Cost").

``python tests/qemg/cost_analyser.py [FS] [TRIALS] [--profile SIGNAL]``

Signals: ``bench`` (the benchmark's synthetic EMG, ``make_templates``: 4 s of the normal class repeated, as
``cost_qemg.py`` and ``streamemg bench`` use it) and 20 s of each simulator class (seed 0, class effort). Each is
fed to one single-channel :class:`QemgAnalyser` (inline) in 10 ms chunks, with ``summary_dict()`` every 0.25 s
as the pipeline asks for it; process CPU time, best of TRIALS (default 5) interleaved trials. ``--profile``
prints a cProfile of one run of that signal instead.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from simulators.synth import EMGSimulator
from streamemg.bench.common import make_templates
from streamemg.qemg import QemgAnalyser, QemgSettings

SECONDS = 20.0


def signals(fs: float) -> dict[str, np.ndarray]:
    chunk = round(0.01 * fs)
    bench = make_templates(1, fs, 4.0, chunk)[0]
    reps = int(np.ceil(SECONDS * fs / bench.shape[0]))
    out = {"bench": np.tile(bench, (reps, 1))[: round(SECONDS * fs)]}
    for cls in ("normal", "als", "myopathy"):
        out[cls] = EMGSimulator(cls, fs, seed=0).generate(round(SECONDS * fs)).astype(np.float32)
    return out


def run(x: np.ndarray, fs: float) -> float:
    chunk = round(0.01 * fs)
    every = round(0.25 * fs) // chunk
    an = QemgAnalyser(fs, 1, QemgSettings(background=False))
    t0 = time.process_time()
    for k, i in enumerate(range(0, x.shape[0], chunk)):
        an.process(x[i : i + chunk])
        if k % every == every - 1:
            an.summary_dict()
    return time.process_time() - t0


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    fs = float(args[0]) if args else 8000.0
    trials = int(args[1]) if len(args) > 1 else 5
    sig = signals(fs)
    if "--profile" in sys.argv:
        import cProfile
        import pstats

        name = sys.argv[sys.argv.index("--profile") + 1]
        pr = cProfile.Profile()
        pr.enable()
        run(sig[name], fs)
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(30)
        return
    best = {k: float("inf") for k in sig}
    for _ in range(trials):
        for k, x in sig.items():
            best[k] = min(best[k], run(x, fs))
    print(f"fs {fs:g} Hz, analyser alone, best of {trials}: "
          + ", ".join(f"{k} {best[k] / SECONDS * 1e3:.2f}" for k in sig) + " ms per stream-second")


if __name__ == "__main__":
    main()
