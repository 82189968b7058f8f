"""The command line as a user meets it: real subprocesses, real output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simulators.synth import EMGSimulator

CLASSES = ("Normal", "ALS", "Myopathy")


def streamemg(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamemg", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def test_version_and_help() -> None:
    out = streamemg("--version")
    assert out.returncode == 0 and out.stdout.startswith("streamemg ")
    out = streamemg("--help")
    for cmd in ("demo", "run", "classify", "simulate", "info"):
        assert cmd in out.stdout


def test_run_sim_prints_estimate_json_lines() -> None:
    out = streamemg("run", "--source", "sim:als", "--no-dashboard", "--duration", "3")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) >= 4  # 1 s window, 0.25 s hop: the first at 1 s, then 4 per second
    for est in lines:
        for key in ("stream", "time", "label", "confidence", "probabilities", "rolling", "quality", "latency_ms"):
            assert key in est
        assert set(est["probabilities"]) == set(CLASSES)
        assert est["latency_ms"] >= 0
    times = [e["time"] for e in lines]
    assert times == sorted(times)


def test_unknown_source_scheme_is_a_clear_error() -> None:
    out = streamemg("run", "--source", "bogus:thing", "--no-dashboard", "--duration", "1")
    assert out.returncode == 2
    assert "unknown source scheme 'bogus'" in out.stderr and "sim:als" in out.stderr
    assert "Traceback" not in out.stderr


def test_unreadable_model_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a model")
    out = streamemg("run", "--source", "sim:als", "--model", str(bad), "--no-dashboard", "--duration", "1")
    assert out.returncode == 2
    assert str(bad) in out.stderr and "Traceback" not in out.stderr


def test_config_file_with_a_misspelt_key_names_it(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[run]\nsources = ["sim:als"]\n\n[engine]\nmax_bach = 8\n')
    out = streamemg("run", "--config", str(cfg), "--no-dashboard", "--duration", "1")
    assert out.returncode == 2
    assert "engine.max_bach" in out.stderr and "max_batch" in out.stderr


def test_config_file_runs_and_flags_override(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    out_file = tmp_path / "est.jsonl"
    cfg.write_text(f'[run]\nsources = ["sim:myopathy?seed=4"]\noutputs = ["jsonl:{out_file}"]\nduration = 30\n'
                   "[engine]\nmax_batch = 8\n[estimates]\ntau_s = 1.0\n")
    out = streamemg("run", "--config", str(cfg), "--no-dashboard", "--duration", "2")
    assert out.returncode == 0, out.stderr
    lines = out_file.read_text().splitlines()
    assert 1 <= len(lines) <= 8  # --duration 2 overrode duration = 30
    assert json.loads(lines[0])["stream"]


def test_stream_slower_than_the_model_is_refused_clearly(tmp_path: Path) -> None:
    f = tmp_path / "slow.npy"
    np.save(f, EMGSimulator("normal", 2000.0, seed=1).generate(8000))
    out = streamemg("classify", str(f), "--fs", "2000", "--json")
    assert out.returncode == 1
    res = json.loads(out.stdout.splitlines()[0])
    assert res["label"] is None and "2000 Hz" in res["quality"] and "upsample" in res["quality"]


def test_classify_equals_run_for_the_same_file(tmp_path: Path) -> None:
    f = tmp_path / "rec.npy"
    np.save(f, EMGSimulator("als", 10000.0, n_channels=2, seed=5).generate(10000 * 5))
    (tmp_path / "rec.npy.json").write_text(json.dumps({"fs": 10000.0, "channels": ["a", "b"]}))
    out = streamemg("classify", str(f), "--json")
    assert out.returncode in (0, 1), out.stderr  # 1 only when the shipped model is untrained
    res = json.loads(out.stdout.splitlines()[0])
    assert res["file"] == str(f) and res["windows"] == 17  # (5 s - 1 s) / 0.25 s + 1

    out = streamemg("run", "--source", f"file:{f}?speed=max", "--no-dashboard")
    assert out.returncode == 0, out.stderr
    ests = [json.loads(x) for x in out.stdout.splitlines() if x.strip()]
    assert len(ests) == res["windows"]
    last = ests[-1]
    for c in CLASSES:
        assert last["cumulative"][c] == pytest.approx(res["probabilities"][c], abs=1e-5)
    if res["label"] not in (None, "untrained"):
        assert res["label"] == max(CLASSES, key=lambda c: last["cumulative"][c])


def test_info_reports_device_and_model() -> None:
    out = streamemg("info", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["device"] == "cpu" or info["device"].startswith("cuda")
    assert info["model"]["classes"] == list(CLASSES)
    assert info["model"]["mflops_per_window"] > 0


@pytest.mark.mqtt
def test_demo_over_the_embedded_mqtt_broker() -> None:
    out = streamemg("demo", "--transport", "mqtt", "--duration", "5", "--no-dashboard")
    assert out.returncode == 0, out.stderr
    ests = [json.loads(x) for x in out.stdout.splitlines() if x.strip()]
    assert {e["stream"] for e in ests} == {"mqtt:dev01", "mqtt:dev02", "mqtt:dev03"}
    assert all(set(e["probabilities"]) == set(CLASSES) for e in ests)


def test_demo_direct_prints_three_patients() -> None:
    out = streamemg("demo", "--duration", "4", "--no-dashboard")
    assert out.returncode == 0, out.stderr
    ests = [json.loads(x) for x in out.stdout.splitlines() if x.strip()]
    assert {e["name"] for e in ests} == {"patient-1", "patient-2", "patient-3"}


def test_config_file_qemg_section_is_checked_and_applied(tmp_path: Path) -> None:
    out_file = tmp_path / "est.jsonl"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[run]\nsources = ["sim:normal?seed=3"]\noutputs = ["jsonl:{out_file}"]\n[qemg]\nenabled = false\n')
    out = streamemg("run", "--config", str(cfg), "--no-dashboard", "--duration", "2")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert lines and all(line.get("qemg") is None for line in lines)  # QEMG turned off from the config file
    cfg.write_text('[run]\nsources = ["sim:normal"]\n[qemg]\nenabeld = false\n')
    out = streamemg("run", "--config", str(cfg), "--no-dashboard", "--duration", "1")
    assert out.returncode == 2 and "qemg.enabeld" in out.stderr and "enabled" in out.stderr
