"""Site profiles: calibration maps a site's feature statistics to the model's reference, travels as JSON, is
refused by another model, and is applied per window inside shared batches (model, folded model, engine)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from simulators.synth import EMGSimulator
from streamemg.clinical.site import SiteProfile, feature_moments, make_profile
from streamemg.clinical.train import default_config
from streamemg.engine import EngineSettings, FoldedClassifier, InferenceEngine
from streamemg.errors import ConfigError
from streamemg.model import ArchSettings, untrained_bundle
from streamemg.types import CLASS_NAMES, Window

CFG = dataclasses.replace(default_config(), arch=ArchSettings(channels=(4, 8), embed_dim=8, attention_hidden=4))
T = CFG.window_samples


def _windows(seed: int, n: int, gain: float = 1.0, cls: str = "Normal") -> np.ndarray:
    x = EMGSimulator(cls, CFG.fs, seed=seed).generate(n * T)[:, 0]
    # an amplifier's own white noise (2 µV): the fitted ALS background is low-passed, and in its quietest frames some
    # high bins then sit near the features' log floor, where a gain no longer shifts them (0.3 dB of a 12 dB gain)
    x = (x + np.random.default_rng(seed).normal(0.0, 2.0, x.shape)) * gain
    return x.reshape(n, T).astype(np.float32)


@pytest.fixture(scope="module")
def bundle():  # type: ignore[no-untyped-def]
    b = untrained_bundle(CFG, seed=3)
    ref = feature_moments(b.build().features, [_windows(1, 6), _windows(2, 6, cls="ALS")])
    b.training["feature_reference"] = {"mean": ref["mean"].tolist(), "std": ref["std"].tolist()}
    return b


@pytest.fixture(scope="module")
def site_windows() -> list[np.ndarray]:
    # another "site": 12 dB more gain and a different class mix
    return [_windows(10, 5, gain=4.0, cls="Myopathy"), _windows(11, 5, gain=4.0)]


def test_profile_maps_site_statistics_onto_the_reference(bundle, site_windows) -> None:  # type: ignore[no-untyped-def]
    louder = make_profile(bundle, [_windows(1, 6, gain=4.0), _windows(2, 6, gain=4.0, cls="ALS")], "loud")
    assert louder.summary["level_db_re_reference"] == pytest.approx(20 * np.log10(4.0), abs=0.05)  # the 4x gain
    assert louder.summary["tilt_db_per_octave_re_reference"] == pytest.approx(0.0, abs=0.05)
    # a pure gain needs no stretching (up to the log floor and float32 rounding in the quietest bins)
    assert float((louder.tensor()[0] - 1).abs().median()) < 0.01 and float((louder.tensor()[0] - 1).abs().max()) < 0.06
    prof = make_profile(bundle, site_windows, "lab")
    feats = bundle.build().features
    raw = torch.cat([feats(torch.from_numpy(w)) for w in site_windows])
    cal = raw * prof.tensor()[0][None, :, :, None] + prof.tensor()[1][None, :, :, None]
    ref_mean = np.asarray(bundle.training["feature_reference"]["mean"])
    ref_std = np.asarray(bundle.training["feature_reference"]["std"])
    np.testing.assert_allclose(cal.mean(dim=(0, 3)).numpy(), ref_mean, atol=1e-3)
    np.testing.assert_allclose(cal.std(dim=(0, 3)).numpy(), ref_std, rtol=0.05)  # recordings pooled, not averaged
    shift = make_profile(bundle, site_windows, "lab", mode="shift")
    assert torch.equal(shift.tensor()[0], torch.ones(2, CFG.features.n_freqs))


def test_profile_json_round_trip_and_checks(bundle, site_windows, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = make_profile(bundle, site_windows, "lab").save(tmp_path / "lab.json")
    data = json.loads(path.read_text())
    assert data["format"] == "streamemg-site-profile" and data["version"] == 1 and data["site"] == "lab"
    assert len(data["site_mean"]["log_psd"]) == CFG.features.n_freqs and path.stat().st_size < 20_000
    loaded = SiteProfile.load(path, bundle)
    torch.testing.assert_close(loaded.tensor(), make_profile(bundle, site_windows, "lab").tensor(), atol=1e-4, rtol=0)

    other = untrained_bundle(CFG, seed=4)  # same layout, other weights
    with pytest.raises(ConfigError, match=r"made for model 'untrained' \(fingerprint .*\), not for .*calibrate"):
        SiteProfile.load(path, other)
    wider = untrained_bundle(dataclasses.replace(CFG, filters=dataclasses.replace(CFG.filters, notch_hz=60.0)))
    with pytest.raises(ConfigError, match=r"another feature layout .*filters"):
        SiteProfile.load(path, wider)
    data["version"] = 2
    (tmp_path / "v2.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"version 2.*calibrate"):
        SiteProfile.load(tmp_path / "v2.json")
    (tmp_path / "bad.json").write_text('{"format": "streamemg-site-profile", "version": 1, "site": "x"}')
    with pytest.raises(ConfigError, match="malformed site profile"):
        SiteProfile.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match=r"not found.*calibrate"):
        SiteProfile.load(tmp_path / "none.json")


def test_model_without_reference_cannot_be_calibrated(site_windows) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="no reference feature statistics"):
        make_profile(untrained_bundle(CFG), site_windows, "lab")


def test_per_window_sites_in_one_batch_equal_single_calls(bundle, site_windows) -> None:  # type: ignore[no-untyped-def]
    model = bundle.build()
    prof = make_profile(bundle, site_windows, "lab").tensor()
    ident = torch.stack([torch.ones_like(prof[0]), torch.zeros_like(prof[1])])
    x = torch.from_numpy(np.concatenate([site_windows[0][:2], site_windows[1][:2]]))
    site = torch.stack([prof, ident, prof, ident])
    with torch.inference_mode():
        batched = model(x, site)
        singles = torch.cat([model(x[i : i + 1], site[i : i + 1]) for i in range(4)])
        plain = model(x)
        folded = FoldedClassifier(model, T).eval()(x, site)
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[[1, 3]], plain[[1, 3]])  # identity rows change nothing
    assert (batched[[0, 2]] - plain[[0, 2]]).abs().max() > 1e-3  # calibrated rows do change
    torch.testing.assert_close(folded, batched, atol=1e-4, rtol=1e-4)


def test_engine_applies_each_windows_site_row(bundle, site_windows) -> None:  # type: ignore[no-untyped-def]
    prof = make_profile(bundle, site_windows, "lab").tensor()
    table = torch.stack([torch.stack([torch.ones_like(prof[0]), torch.zeros_like(prof[1])]), prof])
    data = site_windows[0][:4]
    model = bundle.build()
    with torch.inference_mode():
        expect = torch.softmax(model(torch.from_numpy(data), table[[0, 1, 0, 1]]), -1).numpy()
    got: dict[int, np.ndarray] = {}

    async def main() -> None:
        done = asyncio.Event()

        def on_result(w: Window, probs: np.ndarray) -> None:
            got[w.index] = probs[0]
            if len(got) == 4:
                done.set()

        settings = EngineSettings(max_batch=8, max_wait_ms=200.0, device="cpu", warmup=False)
        async with InferenceEngine(bundle, settings, on_result, site_table=table) as engine:
            assert engine.optimized.mode == "fold"  # a traced module cannot take the site rows
            for i in range(4):
                await engine.submit(Window("s", i, data[i : i + 1], float(i), 0.0, ("ok",), site=i % 2))
            await asyncio.wait_for(done.wait(), 20)
        assert engine.stats.batches == 1  # both sites in one call

    asyncio.run(main())
    np.testing.assert_allclose(np.stack([got[i] for i in range(4)]), expect, atol=1e-4)
    assert len(CLASS_NAMES) == expect.shape[1]


def test_site_parameter_is_split_off_any_source_uri() -> None:
    from streamemg.errors import SourceURIError
    from streamemg.sources.base import split_site

    assert split_site("lsl:name=Amp1?site=lab.json") == ("lsl:name=Amp1", "lab.json")
    uri = "file:a.npy?speed=max&site=/p/x%20y.json&fs=8000"
    assert split_site(uri) == ("file:a.npy?speed=max&fs=8000", "/p/x y.json")
    assert split_site("mqtt://127.0.0.1/emg/+?site=b.json") == ("mqtt://127.0.0.1/emg/+", "b.json")
    assert split_site("sim:als?fs=10000") == ("sim:als?fs=10000", None)
    with pytest.raises(SourceURIError, match="site= is empty"):
        split_site("sim:als?site=")
