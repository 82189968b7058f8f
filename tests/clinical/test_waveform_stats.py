"""The waveform-statistics side branch (``ArchSettings.waveform_stats``): features, network, bundle, engine."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from streamemg.engine import optimize_model
from streamemg.errors import ConfigError
from streamemg.features import FeatureSettings, WaveformStats
from streamemg.model import ArchSettings, Classifier, ModelBundle, ModelConfig, count_flops, untrained_bundle

FS = FeatureSettings(fs=4000.0, n_fft=128, win_length=128, hop_length=64, fmin=20.0, fmax=2000.0)
CFG = ModelConfig(fs=4000.0, window_samples=4000, hop_samples=1000, features=FS)


def with_stats(mode: str, cfg: ModelConfig = CFG) -> ModelConfig:
    return dataclasses.replace(cfg, arch=dataclasses.replace(cfg.arch, waveform_stats=mode))


def noise(b: int, t: int, seed: int = 0, scale: float = 50.0) -> torch.Tensor:
    return torch.from_numpy((np.random.default_rng(seed).normal(size=(b, t)) * scale).astype(np.float32))


def spikes(t: int, every: int, seed: int = 0) -> torch.Tensor:
    """(1, T): sparse biphasic spikes of 400 µV every ``every`` samples on 5 µV noise (a neurogenic caricature)."""
    x = np.random.default_rng(seed).normal(size=t) * 5.0
    for s in range(every // 2, t - 4, every):
        x[s : s + 4] += np.array([200.0, 400.0, -400.0, -200.0])
    return torch.from_numpy(x.astype(np.float32))[None, :]


@pytest.mark.parametrize(("absolute", "n"), [(False, 11), (True, 14)])
def test_shape_and_batched_equals_singles(absolute: bool, n: int) -> None:
    ws = WaveformStats(FS, absolute=absolute)
    x = noise(5, 4000)
    out = ws(x)
    assert out.shape == (5, n) == (5, ws.n_stats) and torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.cat([ws(x[i : i + 1]) for i in range(5)]), atol=1e-5, rtol=1e-5)
    assert not list(ws.parameters()) and not list(ws.buffers())  # nothing to save: old bundles stay loadable


def test_shape_statistics_are_gain_invariant_and_level_ones_shift_by_log_gain() -> None:
    ws = WaveformStats(FS, absolute=True)
    x = noise(3, 4000, seed=1) + spikes(4000, 400)
    a, b = ws(x), ws(6.0 * x)
    torch.testing.assert_close(a[:, :11], b[:, :11], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b[:, 11:] - a[:, 11:], torch.full((3, 3), math.log(6.0)), atol=1e-4, rtol=1e-4)


def test_statistics_separate_sparse_spikes_from_dense_noise() -> None:
    ws = WaveformStats(FS)
    sparse, dense = ws(spikes(4000, 400))[0], ws(noise(1, 4000, seed=2))[0]
    kurt, crest, rms_spread = 7, 8, 0
    assert sparse[kurt] > dense[kurt] + 1.0  # ln kurtosis: ln 3 ~ 1.1 for Gaussian noise
    assert sparse[crest] > dense[crest]
    assert sparse[rms_spread] > dense[rms_spread]
    # a slow sine has far fewer turns and zero crossings than white noise
    tt = torch.arange(4000) / 4000.0
    slow = ws((100 * torch.sin(2 * math.pi * 40 * tt))[None, :])[0]
    assert slow[3] < 0.1 < dense[3] and slow[5] < dense[5]


def test_silence_is_finite() -> None:
    assert torch.isfinite(WaveformStats(FS, absolute=True)(torch.zeros(2, 4000))).all()


def test_arch_option_validation_and_round_trip() -> None:
    with pytest.raises(ConfigError, match=r"ArchSettings.waveform_stats='yes'"):
        ArchSettings(waveform_stats="yes")
    with pytest.raises(ConfigError, match=r"ArchSettings.stats_dim"):
        ArchSettings(stats_dim=0)
    cfg = with_stats("all")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    # a config saved before the option existed reads as "none"
    d = CFG.to_dict()
    del d["arch"]["waveform_stats"], d["arch"]["stats_dim"]
    assert ModelConfig.from_dict(d).arch.waveform_stats == "none"


def test_default_network_is_unchanged_by_the_option() -> None:
    plain = Classifier(CFG)
    assert plain.stats is None
    assert not any("stats" in k for k in plain.state_dict())
    assert plain.net.head.in_features == CFG.arch.embed_dim


@pytest.mark.parametrize("mode", ["shape", "all"])
def test_stats_model_bundle_round_trip_and_cost(tmp_path: Path, mode: str) -> None:
    bundle = untrained_bundle(with_stats(mode), seed=2)
    path = bundle.save(tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["config"]["arch"]["waveform_stats"] == mode
    loaded = ModelBundle.load(path)
    x = noise(4, 4000, seed=3)
    with torch.inference_mode():
        torch.testing.assert_close(bundle.build()(x), loaded.build()(x))
    clf = loaded.build()
    extra = count_flops(clf, 4000) - count_flops(Classifier(CFG), 4000)
    assert 0 < extra < 1000  # a 16-wide linear layer: negligible next to 5.5 MFLOPs
    with torch.inference_mode():
        batched = clf(x)
        singles = torch.cat([clf(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["fold", "trace"])
def test_engine_fast_path_keeps_the_stats_branch(mode: str) -> None:
    torch.manual_seed(0)
    clf = Classifier(with_stats("all")).train()
    with torch.no_grad():  # give the batch norms non-trivial running statistics
        for _ in range(3):
            clf(noise(8, 4000, seed=4) + spikes(4000, 300))
    clf.eval()
    opt = optimize_model(clf, 4000, torch.device("cpu"), mode=mode)
    assert opt.mode == mode, opt.note
    x = noise(3, 4000, seed=5) + spikes(4000, 500)
    with torch.inference_mode():
        torch.testing.assert_close(torch.softmax(opt.module(x), -1), torch.softmax(clf(x), -1), atol=1e-4, rtol=1e-4)
