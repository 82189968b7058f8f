"""The classifier's own view of a signal (streamemg.qemg.modelview), as the simulator's fit uses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simulators.synth import EMGSimulator
from streamemg.clinical.datasets import data_root
from streamemg.model import load_bundle
from streamemg.pipeline import Pipeline, PipelineSettings
from streamemg.qemg import QemgSettings
from streamemg.qemg.modelview import embedding_distance, embeddings, real_embedding_targets, stream_windows
from streamemg.sinks.memory import MemorySink
from streamemg.sources.memory import MemorySource
from streamemg.types import CLASS_NAMES


async def test_the_head_of_the_embeddings_gives_the_pipelines_window_probabilities() -> None:
    bundle = load_bundle(None)
    model = bundle.build("cpu")
    x = EMGSimulator("als", 10000.0, seed=5).generate(40000)
    windows = stream_windows(x, 10000.0, bundle)
    assert windows.shape == (13, bundle.config.window_samples)  # 4 s, 1 s windows every 0.25 s
    emb = embeddings(model, windows)
    assert emb.shape == (13, model.net.head.in_features)
    with torch.inference_mode():
        probs = torch.softmax(model.net.head(torch.from_numpy(emb)), dim=1).numpy()
    sink = MemorySink()
    src = MemorySource.from_array("als", x, 10000.0, chunk_sizes=1000)
    await Pipeline([src], [sink], bundle=bundle, settings=PipelineSettings(qemg=QemgSettings(enabled=False))).run()
    got = np.array([e.probabilities for e in sink.estimates])
    assert got.shape == probs.shape
    assert np.allclose(got, probs, atol=2e-3)


def test_windows_the_quality_gate_withholds_are_left_out() -> None:
    bundle = load_bundle(None)
    x = EMGSimulator("normal", 10000.0, seed=1).generate(30000)
    assert len(stream_windows(x, 10000.0, bundle)) == 9  # 3 s: 1 s windows every 0.25 s
    x[12000:30000] = 0.0  # flat from 1.2 s: the four windows wholly within it (ending 2.25-3 s) are withheld
    assert len(stream_windows(x, 10000.0, bundle)) == 5


def test_embedding_distance_is_in_units_of_the_real_spread() -> None:
    target = {"mean": np.zeros(4), "sd": np.array([1.0, 2.0, 1.0, 1.0])}
    assert embedding_distance([np.zeros((5, 4))], target) == 0.0
    one_sd = np.tile([1.0, 2.0, 1.0, 1.0], (5, 1))
    assert embedding_distance([one_sd], target) == pytest.approx(1.0)
    # subjects are averaged first: two subjects on either side of the target average to it
    assert embedding_distance([one_sd, -one_sd], target) == pytest.approx(0.0)
    assert embedding_distance([np.zeros((0, 4))], target) == float("inf")


def test_every_real_emglab_subject_is_nearest_its_own_class() -> None:
    root = data_root()
    if root is None:
        pytest.skip("clinical data folder not available: set STREAMEMG_DATA to the folder holding the data sets")
    bundle = load_bundle(None)
    targets = real_embedding_targets(root, bundle)
    assert set(targets) == set(CLASS_NAMES)
    for cls, t in targets.items():
        others = [embedding_distance([np.asarray(targets[o]["mean"])[None]], t) for o in targets if o != cls]
        assert min(others) > 1.0, (cls, others)  # the classes are apart in the model's view
