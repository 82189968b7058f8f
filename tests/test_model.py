"""SpectroEMG-Net, the model bundle and FLOP counting."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from streamemg import model as model_mod
from streamemg.dsp import FilterSettings
from streamemg.errors import ConfigError, ModelError
from streamemg.features import FeatureSettings
from streamemg.model import (
    FORMAT_VERSION,
    ArchSettings,
    Classifier,
    ModelBundle,
    ModelConfig,
    SpectroEMGNet,
    count_flops,
    load_bundle,
    untrained_bundle,
)
from streamemg.types import CLASS_NAMES

SMALL = ModelConfig(window_samples=2000, hop_samples=500)  # 0.25 s windows keep the tests fast


def signals(b: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy((np.random.default_rng(seed).normal(size=(b, t)) * 80).astype(np.float32))


def test_defaults() -> None:
    cfg = ModelConfig()
    assert cfg.classes == CLASS_NAMES
    assert (cfg.fs, cfg.window_samples, cfg.hop_samples) == (8000.0, 8000, 2000)
    assert cfg.window_s == 1.0 and cfg.hop_s == 0.25
    assert cfg.features == FeatureSettings()
    assert cfg.filters == FilterSettings()


@pytest.mark.parametrize("attention", [True, False])
def test_net_shapes_and_variable_frame_count(attention: bool) -> None:
    net = SpectroEMGNet(n_freqs=64, n_classes=3, arch=ArchSettings(attention=attention)).eval()
    for n_frames in (1, 7, 61, 90):
        assert net(torch.randn(5, 2, 64, n_frames)).shape == (5, 3)
    with pytest.raises(ValueError, match="expects"):
        net(torch.randn(5, 2, 60, 10))


def test_attention_switch_changes_the_network() -> None:
    with_att = SpectroEMGNet(64, 3, ArchSettings(attention=True))
    without = SpectroEMGNet(64, 3, ArchSettings(attention=False))
    assert with_att.pool is not None and without.pool is None
    assert any(b.se is not None for b in with_att.blocks)  # type: ignore[attr-defined]
    assert all(b.se is None for b in without.blocks)  # type: ignore[attr-defined]


def test_classifier_batched_equals_singles_and_is_finite() -> None:
    clf = untrained_bundle(SMALL).build()
    x = signals(6, 2000)
    with torch.inference_mode():
        batched = clf(x)
        singles = torch.cat([clf(x[i : i + 1]) for i in range(6)])
    assert batched.shape == (6, 3) and torch.isfinite(batched).all()
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)


def test_classifier_trains() -> None:
    """A few optimiser steps reduce the loss on a separable toy problem (gradients flow end to end)."""
    torch.manual_seed(0)
    clf = Classifier(SMALL)
    t = torch.arange(2000) / 8000.0
    low = torch.sin(2 * math.pi * 100 * t) * 100
    high = torch.sin(2 * math.pi * 1500 * t) * 100
    x = torch.stack([low, high] * 8) + torch.randn(16, 2000) * 10
    y = torch.tensor([0, 1] * 8)
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = torch.nn.functional.cross_entropy(clf(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_count_flops_default_model() -> None:
    clf = untrained_bundle().build()
    flops = count_flops(clf, 8000)
    # the DFT alone: 61 frames x 128 (cos+sin rows of 64 bins) x 256 taps multiply-adds
    dft = 2 * 61 * 128 * 256
    assert dft < flops < dft + 10e6  # "a few MFLOP per window"
    assert count_flops(clf, 16000) > 1.9 * flops * 0.95  # grows with the frame count
    assert not clf.training  # state restored


def test_count_flops_counts_convs_analytically() -> None:
    arch = ArchSettings(channels=(4,), attention=False, embed_dim=8)
    cfg = ModelConfig(window_samples=256 + 128 * 3, arch=arch, features=FeatureSettings(fmin=0.0, fmax=4000.0))
    clf = Classifier(cfg)
    f, n = 129, 4  # bins 0..128, 4 frames
    f2, n2 = 65, 2
    expected = n * 2 * f * 256 + (f2 * n2 * 4 * 2 * 9) + (n2 * 8 * 4 * f2) + 8 * 3
    assert count_flops(clf, cfg.window_samples) == 2 * expected


def test_config_round_trip_and_validation() -> None:
    cfg = ModelConfig(
        arch=ArchSettings(channels=(8, 16), attention=False, dropout=0.1),
        features=FeatureSettings(normalize="window"),
        hop_samples=1000,
    )
    d = cfg.to_dict()
    assert isinstance(d["classes"], list) and isinstance(d["arch"]["channels"], list)
    assert ModelConfig.from_dict(d) == cfg
    with pytest.raises(ConfigError, match=r"features.fs"):
        ModelConfig(fs=10000.0)
    with pytest.raises(ConfigError, match="window_samples"):
        ModelConfig(window_samples=100)
    with pytest.raises(ConfigError, match=r"ArchSettings.channels"):
        ArchSettings(channels=())
    with pytest.raises(ConfigError, match=r"ArchSettings.kernel_size"):
        ArchSettings(kernel_size=4)
    with pytest.raises(ConfigError, match="unknown field"):
        ModelConfig.from_dict({"window": 3})


def test_bundle_round_trip(tmp_path: Path) -> None:
    bundle = untrained_bundle(SMALL, seed=3)
    bundle.trained = True
    bundle.name = "toy"
    bundle.training = {"epochs": np.int64(3), "subjects": ("a", "b"), "lr": np.float32(0.5)}
    bundle.metrics = {"balanced_accuracy": np.float64(0.75), "confusion": np.eye(3, dtype=np.int64)}
    path = bundle.save(tmp_path / "sub" / "m.pt")
    loaded = ModelBundle.load(path)
    assert loaded.config == bundle.config
    assert loaded.trained is True and loaded.name == "toy" and loaded.format_version == FORMAT_VERSION
    assert loaded.training == {"epochs": 3, "subjects": ["a", "b"], "lr": 0.5}
    assert loaded.metrics["confusion"] == np.eye(3).tolist()
    x = signals(3, 2000)
    with torch.inference_mode():
        torch.testing.assert_close(bundle.build()(x), loaded.build()(x))
    raw = torch.load(path, weights_only=True)
    assert sorted(raw) == sorted(model_mod._BUNDLE_KEYS)


def test_untrained_bundle_is_seeded_and_flagged() -> None:
    a, b, c = untrained_bundle(SMALL, seed=1), untrained_bundle(SMALL, seed=1), untrained_bundle(SMALL, seed=2)
    assert a.trained is False
    k = "net.head.weight"
    assert torch.equal(a.state_dict[k], b.state_dict[k]) and not torch.equal(a.state_dict[k], c.state_dict[k])


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        ModelBundle.load(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a torch file")
    with pytest.raises(ModelError, match="corrupt"):
        ModelBundle.load(corrupt)
    good = untrained_bundle(SMALL).save(tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ModelError, match="corrupt"):
        ModelBundle.load(truncated)

    def variant(name: str, **changes: object) -> Path:
        data = torch.load(good, weights_only=True)
        data.update(changes)
        for key in [k for k, v in changes.items() if v is None]:
            del data[key]
        p = tmp_path / name
        torch.save(data, p)
        return p

    with pytest.raises(ModelError, match="format_version=99"):
        ModelBundle.load(variant("v99.pt", format_version=99))
    with pytest.raises(ModelError, match="metrics"):
        ModelBundle.load(variant("nokey.pt", metrics=None))
    with pytest.raises(ModelError, match="invalid model config"):
        ModelBundle.load(variant("badcfg.pt", config={"fs": "fast"}))
    wider = untrained_bundle(ModelConfig(window_samples=2000, arch=ArchSettings(channels=(16, 24, 40))))
    with pytest.raises(ModelError, match="do not fit"):
        ModelBundle.load(variant("shapes.pt", state_dict=wider.state_dict))
    list_file = tmp_path / "list.pt"
    torch.save([1, 2], list_file)
    with pytest.raises(ModelError, match="not a streamemg model bundle"):
        ModelBundle.load(list_file)


def test_arbitrary_objects_are_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    data = untrained_bundle(SMALL).to_dict()
    data["training"] = {"obj": Path("x")}  # not an allowed type for weights_only loading
    torch.save(data, path)
    with pytest.raises(ModelError, match=r"corrupt|not a streamemg"):
        ModelBundle.load(path)
    bundle = untrained_bundle(SMALL)
    bundle.metrics = {"obj": object()}
    with pytest.raises(ModelError, match=r"metrics.obj"):
        bundle.save(tmp_path / "refused.pt")
    assert not (tmp_path / "refused.pt").exists()


def test_load_bundle_fallbacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(model_mod, "default_model_path", lambda: None)
    with caplog.at_level(logging.WARNING, logger="streamemg.model"):
        bundle = load_bundle(None)
    assert bundle.trained is False
    assert "UNTRAINED" in caplog.text

    shipped = untrained_bundle(SMALL)
    shipped.trained, shipped.name = True, "shipped"
    path = shipped.save(tmp_path / "default.pt")
    monkeypatch.setattr(model_mod, "default_model_path", lambda: path)
    assert load_bundle().name == "shipped"
    assert load_bundle(path).trained is True
    with pytest.raises(ModelError):
        load_bundle(tmp_path / "nope.pt")


def test_default_model_path_is_none_or_a_file() -> None:
    p = model_mod.default_model_path()
    assert p is None or p.is_file()
