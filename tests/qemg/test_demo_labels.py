"""The shipped model gives every simulated class its own label (the demo's patients), over three seeds.

The simulator is calibrated to the real EMGLAB classes (docs/qemg.md); the model was trained on real recordings
only. Each run is 10 s of signal at 10 kHz through the whole pipeline at full speed, as `streamemg demo` shows
it: the label is the rolling estimate after 10 s.
"""

from __future__ import annotations

import pytest

from simulators.synth import CLASS_LABELS, SIM_CLASSES
from streamemg.model import load_bundle
from streamemg.pipeline import Pipeline, PipelineSettings
from streamemg.qemg import QemgSettings
from streamemg.sinks.memory import MemorySink
from streamemg.sources.sim import SimSource


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_each_simulated_class_gets_its_own_label_within_10_s(seed: int) -> None:
    bundle = load_bundle(None)
    assert bundle.trained
    got = {}
    for cls in SIM_CLASSES:
        sink = MemorySink()
        src = SimSource(cls, fs=10000.0, seed=seed, speed=None, duration=10.0)
        await Pipeline([src], [sink], bundle=bundle, settings=PipelineSettings(qemg=QemgSettings(enabled=False))).run()
        got[cls] = sink.estimates[-1].label
    assert got == {cls: CLASS_LABELS[cls] for cls in SIM_CLASSES}, got


@pytest.mark.slow
def test_each_simulated_class_keeps_its_own_label_over_ten_seeds() -> None:
    """Seeds 0-9, 20 s each, the windows a live stream cuts (``tests/qemg/sim_labels.py`` prints the table; docs/qemg.md
    has it for 60 s and for seeds 40-59): measured, every class right at 10 s on 10 of 10 seeds and at least 95% of
    the later windows labelled right on every seed. The bound allows one miss per class."""
    from .sim_labels import label_run

    bundle = load_bundle(None)
    model = bundle.build("cpu")
    for cls in SIM_CLASSES:
        runs = [label_run(cls, seed, 20.0, bundle, model) for seed in range(10)]
        right = [label == CLASS_LABELS[cls] for label, _, _ in runs]
        assert sum(right) >= 9, (cls, runs)
        assert sum(share >= 0.9 for _, _, share in runs) >= 9, (cls, runs)
