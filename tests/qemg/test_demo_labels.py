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
