"""Print how the shipped model labels each simulated class, seed by seed: ``python tests/qemg/sim_labels.py [SEEDS]
[SECONDS] [FIRST]`` (default 10 seeds from 0, of 60 s at 10 kHz).

Per seed: the rolling label at 10 s (what the demo shows then, and what ``test_demo_labels.py`` checks) with its
probability, and the share of the windows after 10 s whose rolling label is the class's own (does it hold?). The
windows are the ones a live stream cuts (:func:`streamemg.qemg.modelview.rolling_labels`)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from simulators.synth import CLASS_LABELS, SIM_CLASSES, EMGSimulator
from streamemg.model import load_bundle
from streamemg.qemg.modelview import rolling_labels
from streamemg.types import CLASS_NAMES


def label_run(cls: str, seed: int, seconds: float, bundle: object, model: object) -> tuple[str, float, float]:
    """(label at 10 s, its rolling probability, share of later windows labelled ``cls``) for one seed."""
    x = EMGSimulator(cls, 10000.0, seed=seed).generate(round(seconds * 10000.0))
    t, rolling = rolling_labels(x, 10000.0, bundle, model)
    at = int(np.searchsorted(t, 10.0 - 1e-9))
    at = min(at, len(t) - 1)
    k = int(np.nanargmax(rolling[at]))
    later = rolling[t > 10.0]
    own = CLASS_NAMES.index(CLASS_LABELS[cls])
    share = float(np.mean(np.nanargmax(later, axis=1) == own)) if len(later) else float("nan")
    return CLASS_NAMES[k], float(rolling[at, k]), share


def main() -> None:
    first = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    seeds = range(first, first + (int(sys.argv[1]) if len(sys.argv) > 1 else 10))
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
    bundle = load_bundle(None)
    model = bundle.build("cpu")
    print("| seed | " + " | ".join(CLASS_LABELS[c] for c in SIM_CLASSES) + " |")
    print("|---|" + "---|" * len(SIM_CLASSES))
    right = {c: 0 for c in SIM_CLASSES}
    held = {c: [] for c in SIM_CLASSES}
    for seed in seeds:
        cells = []
        for cls in SIM_CLASSES:
            label, p, share = label_run(cls, seed, seconds, bundle, model)
            right[cls] += label == CLASS_LABELS[cls]
            held[cls].append(share)
            cells.append(f"{label} {p:.2f}, {100 * share:.0f}% after")
        print(f"| {seed} | " + " | ".join(cells) + " |", flush=True)
    print("| right at 10 s | " + " | ".join(f"{right[c]} of {len(seeds)}" for c in SIM_CLASSES) + " |")
    print("| windows after 10 s labelled right (mean over seeds) | "
          + " | ".join(f"{100 * np.nanmean(held[c]):.0f}%" for c in SIM_CLASSES) + " |")


if __name__ == "__main__":
    main()
