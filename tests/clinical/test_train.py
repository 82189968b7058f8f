"""Training smoke test on synthetic recordings (seconds), preparation == streaming path, bundle round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from simulators.synth import EMGSimulator
from streamemg.clinical.datasets import RecordingRef
from streamemg.clinical.evaluate import cross_validate, evaluate_model
from streamemg.clinical.train import (
    AugmentSettings,
    TrainSettings,
    augment_batch,
    default_config,
    draw_weights,
    fit,
    prepare,
    prepare_all,
    render_model_card,
    train_bundle,
)
from streamemg.errors import ConfigError
from streamemg.model import ArchSettings, ModelBundle
from streamemg.types import CLASS_NAMES

FS_NATIVE = 8000.0


def _tiny_config():
    cfg = default_config()
    return dataclasses.replace(cfg, arch=ArchSettings(channels=(4, 8), embed_dim=8, attention_hidden=4))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> list[RecordingRef]:
    """Two synthetic subjects per class, one 3 s recording each, stored as .npy at 8 kHz."""
    folder = tmp_path_factory.mktemp("synth")
    refs = []
    for k, cls in enumerate(CLASS_NAMES):
        for subj in range(2):
            data = EMGSimulator(cls, FS_NATIVE, seed=10 * k + subj).generate(int(3 * FS_NATIVE))
            path = folder / f"{cls}_{subj}.npy"
            np.save(path, data)
            refs.append(
                RecordingRef(
                    path=path,
                    dataset="synthetic",
                    subject=f"synthetic:{cls}-{subj}",
                    label=cls,
                    source_label=cls,
                    record=f"{cls}_{subj}",
                    site="lab" if subj == 0 else "clinic",
                    fs=FS_NATIVE,
                    n_samples=data.shape[0],
                    usable=(0, data.shape[0]),
                )
            )
    return refs


@pytest.fixture(scope="module")
def prepared(synthetic: list[RecordingRef], tmp_path_factory: pytest.TempPathFactory) -> list:
    cache = tmp_path_factory.mktemp("cache")
    return prepare_all(synthetic, _tiny_config(), cache_dir=cache, progress=False)


def test_prepare_matches_stream_windows(prepared: list) -> None:
    cfg = _tiny_config()
    p = prepared[0]
    # 3 s at 4 kHz: windows of 1 s every 0.25 s -> ends 4000, 5000, ..., 12000
    assert p.x.shape == (12000,)
    assert p.stream_ends.tolist() == list(range(4000, 12001, 1000))
    assert p.stream_quality == ["ok"] * 9
    assert p.stream_windows(cfg.window_samples).shape == (9, 4000)
    assert len(p.train_starts) > 0 and p.train_starts.max() <= 12000 - 4000


def test_prepare_uses_cache(synthetic: list[RecordingRef], tmp_path: Path) -> None:
    cfg = _tiny_config()
    a = prepare(synthetic[0], cfg, cache_dir=tmp_path)
    assert list(tmp_path.rglob("*.npz"))
    b = prepare(synthetic[0], cfg, cache_dir=tmp_path)
    np.testing.assert_array_equal(a.x, b.x)
    assert a.stream_quality == b.stream_quality


def test_draw_weights_balance(prepared: list) -> None:
    w = draw_weights(prepared, "site_class_subject")
    assert w.sum() == pytest.approx(1.0)
    by_class = {c: sum(wi for wi, p in zip(w, prepared, strict=True) if p.ref.label == c) for c in CLASS_NAMES}
    assert all(v == pytest.approx(1 / 3) for v in by_class.values())
    assert draw_weights(prepared, "none").sum() == pytest.approx(1.0)


def test_augment_batch_shapes_and_gain() -> None:
    x = torch.randn(8, 4000) * 50
    gen = torch.Generator().manual_seed(0)
    out = augment_batch(x, 4000.0, AugmentSettings(tilt_db_per_octave=3.0), gen)
    assert out.shape == x.shape and torch.isfinite(out).all()
    same = augment_batch(x, 4000.0, AugmentSettings.off(), gen)
    torch.testing.assert_close(same, x)


def test_settings_validation() -> None:
    with pytest.raises(ConfigError, match="epochs"):
        TrainSettings(epochs=0)
    with pytest.raises(ConfigError, match="balance"):
        TrainSettings(balance="sites")
    with pytest.raises(ConfigError, match="hum_prob"):
        AugmentSettings(hum_prob=2.0)


def test_training_smoke_and_bundle_roundtrip(prepared: list, tmp_path: Path) -> None:
    cfg = _tiny_config()
    settings = TrainSettings(epochs=1, draws_per_s=4.0, batch_size=16, seed=1)
    bundle = train_bundle(prepared, cfg, settings, progress=False, metrics={"note": "smoke"})
    assert bundle.trained and bundle.training["epochs"] == 1
    assert bundle.training["flops_per_window"] > 0
    path = bundle.save(tmp_path / "m.pt")
    loaded = ModelBundle.load(path)
    assert loaded.trained and loaded.metrics == {"note": "smoke"}
    model = loaded.build()
    w, r = evaluate_model(model, prepared, cfg)
    assert len(r.y_true) == len(prepared)
    assert np.allclose(r.probs.sum(axis=1), 1.0, atol=1e-4)
    assert len(w.y_true) == sum(len(p.stream_ends) for p in prepared)
    card = render_model_card(loaded, command="streamemg train X")
    assert "not a medical device" in card


def test_fit_is_seeded(prepared: list) -> None:
    cfg = _tiny_config()
    settings = TrainSettings(epochs=1, draws_per_s=2.0, batch_size=16, seed=3)
    a = fit(prepared, cfg, settings, progress=False).model.state_dict()
    b = fit(prepared, cfg, settings, progress=False).model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_cross_validate_smoke(prepared: list) -> None:
    cfg = _tiny_config()
    settings = TrainSettings(epochs=1, draws_per_s=2.0, batch_size=16)
    report = cross_validate(prepared, cfg, settings, folds=2, progress=False)
    assert report.folds == 2
    assert len(report.recording.y_true) == len(prepared)
    tested = [s for f in report.extra["folds"] for s in f["test_subjects"]]
    assert sorted(tested) == sorted({p.ref.subject for p in prepared})
    d = report.to_dict()
    assert set(d["levels"]) == {"window", "recording", "subject"}


def test_cli_parsers() -> None:
    import argparse

    from streamemg.cli import evaluate as cli_evaluate
    from streamemg.cli import train as cli_train

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli_train.add_parser(sub)
    cli_evaluate.add_parser(sub)
    a = parser.parse_args(["train", "D1", "D2", "--out", "x.pt", "--seed", "3", "--epochs", "2", "--quick"])
    assert a.func is cli_train.run and a.data == ["D1", "D2"] and a.seed == 3 and a.quick
    b = parser.parse_args(["evaluate", "D", "--folds", "loso", "--json", "--cross-site"])
    assert b.func is cli_evaluate.run and b.folds == "loso" and b.json and b.cross_site
    with pytest.raises(ConfigError):
        cli_evaluate._int_folds("1")


@pytest.mark.data
async def test_recording_level_equals_streaming_pipeline(tmp_path: Path) -> None:
    """evaluate's recording-level estimate == the cumulative estimate of a file stream through the pipeline."""
    from streamemg.clinical.datasets import data_root, find_recordings
    from streamemg.engine import EngineSettings
    from streamemg.model import untrained_bundle
    from streamemg.pipeline import Pipeline
    from streamemg.sources.base import open_source

    if data_root() is None:
        pytest.skip("clinical data folder not available: set STREAMEMG_DATA to the folder holding the data sets")
    ref = next(r for r in find_recordings(datasets=["emglab"]) if r.usable == (0, r.n_samples))
    bundle = untrained_bundle(default_config(), seed=5)
    prepared_rec = prepare(ref, bundle.config, cache_dir=tmp_path)
    _, rec = evaluate_model(bundle.build(), [prepared_rec], bundle.config)

    estimates = []
    pipeline = Pipeline(
        [open_source(f"file:{ref.path}?speed=max")],
        bundle=bundle,
        engine_settings=EngineSettings(device="cpu"),
        on_estimate=estimates.append,
    )
    await pipeline.run(duration=120)
    assert len(estimates) == len(prepared_rec.stream_ends)
    np.testing.assert_allclose(estimates[-1].cumulative, rec.probs[0], rtol=1e-4, atol=1e-5)


def test_parse_augment_and_lowpass() -> None:
    from streamemg.clinical.train import parse_augment

    a = parse_augment("gain_db=20, lowpass_prob=1")
    assert a.gain_db == 20.0 and a.lowpass_prob == 1.0 and a.hum_prob == AugmentSettings().hum_prob
    with pytest.raises(ConfigError, match="KEY one of"):
        parse_augment("gain=3")
    with pytest.raises(ConfigError, match="not a number"):
        parse_augment("gain_db=loud")
    # a low-pass at <= 2 kHz removes most power above 1.5 kHz, none below 100 Hz
    x = torch.randn(16, 4000)
    only = dataclasses.replace(AugmentSettings.off(), lowpass_prob=1.0, lowpass_hz=(500.0, 500.0))
    y = augment_batch(x, 4000.0, only, torch.Generator().manual_seed(0))
    px, py = torch.fft.rfft(x).abs() ** 2, torch.fft.rfft(y).abs() ** 2
    assert float(py[:, 1500:].sum() / px[:, 1500:].sum()) < 0.05
    assert float(py[:, 1:100].sum() / px[:, 1:100].sum()) > 0.95
