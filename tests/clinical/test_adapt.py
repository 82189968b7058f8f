"""Fine-tuning: which parameters move in each mode, what it refuses, and that it learns the new site's labels."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from simulators.synth import EMGSimulator
from streamemg.clinical.adapt import FineTuneSettings, fine_tune
from streamemg.clinical.datasets import RecordingRef
from streamemg.clinical.train import default_config, predict_windows, prepare_all
from streamemg.errors import ConfigError
from streamemg.model import ArchSettings, Classifier
from streamemg.types import CLASS_NAMES

CFG = dataclasses.replace(default_config(), arch=ArchSettings(channels=(4, 8), embed_dim=8, attention_hidden=4))
FS = 8000.0


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> list:
    folder = tmp_path_factory.mktemp("ft")
    refs = []
    for k, cls in enumerate(CLASS_NAMES):
        data = EMGSimulator(cls, FS, seed=40 + k).generate(int(3 * FS))
        path = folder / f"{cls}.npy"
        np.save(path, data)
        refs.append(RecordingRef(path, "site:x", f"x:{cls}", cls, cls, cls, "x", FS, data.shape[0], (0, data.shape[0])))
    return prepare_all(refs, CFG, cache_dir=folder / "cache", progress=False)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("layers", ["all", "head", "norm_head"])
def test_layers_that_move(prepared: list, layers: str) -> None:
    torch.manual_seed(0)
    base = Classifier(CFG).eval()
    before = _state(base)
    settings = FineTuneSettings(steps=3, batch_size=8, layers=layers, device="cpu", threads=1)
    tuned = fine_tune(base, prepared, CFG, settings).model
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # the start is left unchanged
    after = _state(tuned)
    moved = {k for k in after if not torch.equal(before[k], after[k])}
    assert "net.head.weight" in moved
    conv = "net.blocks.0.conv.weight"
    stats = "net.input_norm.running_mean"
    if layers == "all":
        assert conv in moved and stats not in moved  # BN statistics frozen
    elif layers == "head":
        assert moved <= {"net.head.weight", "net.head.bias"}
    else:
        assert conv not in moved and stats in moved and "net.blocks.0.bn.weight" in moved


def test_fine_tuning_learns_the_labels(prepared: list) -> None:
    torch.manual_seed(0)
    base = Classifier(CFG).eval()
    windows = np.concatenate([p.stream_windows(CFG.window_samples) for p in prepared])
    truth = np.concatenate([[p.ref.label_index] * len(p.stream_ends) for p in prepared])
    acc0 = float((predict_windows(base, windows).argmax(1) == truth).mean())
    res = fine_tune(base, prepared, CFG, FineTuneSettings(steps=80, batch_size=16, lr=3e-3, device="cpu", threads=1))
    acc1 = float((predict_windows(res.model, windows).argmax(1) == truth).mean())
    assert acc1 >= 0.9 > acc0 or acc1 > acc0 + 0.3, (acc0, acc1)
    assert res.summary["steps"] == 80 and res.summary["subjects"] == 3


def test_refusals(prepared: list, tmp_path: Path) -> None:
    base = Classifier(CFG)
    with pytest.raises(ConfigError, match="needs labelled recordings"):
        fine_tune(base, [], CFG)
    unlabelled = [dataclasses.replace(prepared[0], ref=dataclasses.replace(prepared[0].ref, label=""))]
    with pytest.raises(ConfigError, match="needs labels; unlabelled"):
        fine_tune(base, unlabelled, CFG)
    with pytest.raises(ConfigError, match="at least two classes"):
        fine_tune(base, prepared[:1], CFG)
    with pytest.raises(ConfigError, match="layers"):
        FineTuneSettings(layers="conv")
    with pytest.raises(ConfigError, match="steps"):
        FineTuneSettings(steps=0)


def test_anchor_keeps_weights_near_the_start(prepared: list) -> None:
    torch.manual_seed(0)
    base = Classifier(CFG).eval()
    start = _state(base)

    def moved(anchor: float) -> float:
        s = FineTuneSettings(steps=10, batch_size=8, lr=3e-3, anchor=anchor, device="cpu", threads=1)
        after = fine_tune(base, prepared, CFG, s).model.state_dict()
        return sum(float(((after[k] - start[k]) ** 2).sum()) for k in start if k.endswith("weight"))

    assert moved(100.0) < 0.5 * moved(0.0)
    with pytest.raises(ConfigError, match="anchor"):
        FineTuneSettings(anchor=-1.0)
