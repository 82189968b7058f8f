"""Bring your own data through the command line, as a lab meets it (real subprocesses).

The end-to-end test writes a manifest over recordings of the shared data at test time and goes from that
folder of recordings to a calibrated, fine-tuned model with the README's commands.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simulators.synth import EMGSimulator
from streamemg.clinical.datasets import data_root, find_recordings
from streamemg.model import default_model_path


def streamemg(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamemg", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def test_classify_reports_readable_files_and_fails_when_one_is_unreadable(tmp_path: Path) -> None:
    good = tmp_path / "good.npy"
    np.save(good, EMGSimulator("Normal", 8000.0, seed=1).generate(int(3 * 8000.0)))
    (tmp_path / "bad.asc").write_text("not numbers\n")
    out = streamemg("classify", str(good), str(tmp_path / "missing.npy"), str(tmp_path / "bad.asc"),
                    "--fs", "8000", "--json")
    assert out.returncode == 1, out.stderr
    lines = {Path(r["file"]).name: r for r in map(json.loads, out.stdout.splitlines())}
    assert lines["good.npy"]["label"] in ("Normal", "ALS", "Myopathy") and lines["good.npy"]["windows"] == 9
    assert lines["missing.npy"]["label"] is None and "no such file" in lines["missing.npy"]["quality"]
    assert lines["bad.asc"]["label"] is None and "error" in lines["bad.asc"]["quality"]
    assert "2 of 3 file(s) gave no estimate" in out.stderr and "Traceback" not in out.stderr
    ok = streamemg("classify", str(good), "--fs", "8000")
    assert ok.returncode == 0, ok.stderr


def test_unlabelled_rows_and_bad_manifests_are_clear_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", EMGSimulator("ALS", 8000.0, seed=2).generate(16000))
    (tmp_path / "lab.csv").write_text("path,label,subject,fs\na.npy,,P1,8000\n")
    out = streamemg("train", "--manifest", str(tmp_path / "lab.csv"), "--out", str(tmp_path / "m.pt"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "lab.csv:2: column 'label' is empty" in out.stderr and "calibrate" in out.stderr
    (tmp_path / "typo.csv").write_text("path,diagnosis\na.npy,ALS\n")
    out = streamemg("classify", "--manifest", str(tmp_path / "typo.csv"))
    assert out.returncode == 2 and "typo.csv:1: unknown column 'diagnosis'" in out.stderr
    out = streamemg("evaluate", "--manifest", str(tmp_path / "lab.csv"), "--site", "x.json")
    assert out.returncode == 2 and "--site applies a profile to a given model" in out.stderr


@pytest.mark.slow
def test_from_a_folder_of_recordings_to_a_calibrated_fine_tuned_model(tmp_path: Path) -> None:
    root = data_root()
    if root is None:
        pytest.skip("clinical data folder not available: set STREAMEMG_DATA to the folder holding the data sets")
    shipped = default_model_path()
    assert shipped is not None
    # "our lab": the first recording of two EMGLAB subjects per class, written as a lab would list them
    refs = find_recordings([root], datasets=["emglab"])
    chosen = []
    for cls in ("Normal", "ALS", "Myopathy"):
        subjects = sorted({r.subject for r in refs if r.label == cls})[:2]
        chosen += [next(r for r in refs if r.subject == s) for s in subjects]
    labels = {"Normal": "Healthy", "ALS": "neurogenic", "Myopathy": "MYOPATHY"}  # the aliases a lab may use
    lab = tmp_path / "ourlab.csv"
    lab.write_text("path,label,subject\n" + "".join(
        f"{r.path},{labels[r.label]},{r.subject.split(':')[1]}\n" for r in chosen))
    unlabelled = tmp_path / "ourlab_unlabelled.csv"
    unlabelled.write_text("path\n" + "".join(f"{r.path}\n" for r in chosen))

    # the README's commands: calibrate the shipped model, fine-tune it, calibrate the new model, classify
    out = streamemg("calibrate", "--manifest", str(unlabelled), "--out", str(tmp_path / "shipped_site.json"))
    assert out.returncode == 0, out.stderr
    out = streamemg("train", "--init", "default", "--manifest", str(lab), "--out", str(tmp_path / "ourlab.pt"),
                    "--steps", "20", "--threads", "1", "--no-progress")
    assert out.returncode == 0, out.stderr
    card = (tmp_path / "ourlab.md").read_text()
    assert "Adapted" in card and "default.pt" in card and "ourlab" in card and "6 recordings" in card
    out = streamemg("calibrate", "--model", str(tmp_path / "ourlab.pt"), "--manifest", str(unlabelled),
                    "--out", str(tmp_path / "site.json"))
    assert out.returncode == 0, out.stderr
    profile = json.loads((tmp_path / "site.json").read_text())
    assert profile["site"] == "ourlab_unlabelled" and profile["summary"]["recordings"] == 6
    out = streamemg("classify", "--model", str(tmp_path / "ourlab.pt"), "--site", str(tmp_path / "site.json"),
                    "--manifest", str(lab), "--json")
    assert out.returncode == 0, out.stderr
    streamed = {Path(r["file"]).name: r for r in map(json.loads, out.stdout.splitlines())}
    assert len(streamed) == 6 and all(r["label"] for r in streamed.values())

    # the offline evaluation applies the same profile: one recording per subject, so the subject
    # probabilities are the recordings' stream estimates
    out = streamemg("evaluate", "--model", str(tmp_path / "ourlab.pt"), "--site", str(tmp_path / "site.json"),
                    "--manifest", str(lab), "--json", "--no-progress")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)["reports"][0]
    for r in chosen:
        subj = report["subjects"][f"ourlab:{r.subject.split(':')[1]}"]["probabilities"]
        got = streamed[r.path.name]["probabilities"]
        for c, p in subj.items():
            assert got[c] == pytest.approx(p, abs=2e-3), (r.record, c)

    # a profile made for another model is refused; one process serves two setups through ?site=
    out = streamemg("classify", "--model", str(tmp_path / "ourlab.pt"), "--site", str(tmp_path / "shipped_site.json"),
                    str(chosen[0].path))
    assert out.returncode == 2 and "was made for model" in out.stderr and "calibrate" in out.stderr
    uri = f"file:{chosen[0].path}?speed=max"
    out = streamemg("run", "--model", str(tmp_path / "ourlab.pt"), "--no-dashboard",
                    "--source", f"{uri}&name=calibrated&site={tmp_path / 'site.json'}",
                    "--source", f"{uri}&name=plain")
    assert out.returncode == 0, out.stderr
    last = {}
    for est in map(json.loads, out.stdout.splitlines()):
        last[est["name"] if "name" in est else est["stream"]] = est
    keys = sorted(last)
    assert len(keys) == 2, keys
    cal = next(v for k, v in last.items() if "calibrated" in k)
    plain = next(v for k, v in last.items() if "plain" in k)
    want = streamed[chosen[0].path.name]["probabilities"]
    assert all(cal["cumulative"][c] == pytest.approx(want[c], abs=2e-3) for c in want)
    assert any(abs(plain["cumulative"][c] - want[c]) > 1e-3 for c in want)
