"""``streamemg qemg FILE... [--json]`` on every format the ``file:`` source reads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from simulators.synth import EMGSimulator
from streamemg.cli.main import main
from streamemg.clinical.datasets import data_root

FS = 10000.0


@pytest.fixture(scope="module")
def als_signal() -> np.ndarray:
    return EMGSimulator("als", FS, seed=2).generate(round(8 * FS))


def _json_lines(capsys: pytest.CaptureFixture[str]) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def _write_xdf(path: Path, x: np.ndarray) -> Path:
    spec = importlib.util.spec_from_file_location("_xdf_writer", Path(__file__).parents[1] / "lsl" / "conftest.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    stream = {"name": "Amp1", "type": "EMG", "fs": FS, "fmt": "float32", "data": x, "stamps": np.arange(len(x)) / FS}
    return mod.write_xdf(path, [stream])


def test_npy_csv_and_xdf_give_the_same_report(als_signal: np.ndarray, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    npy = tmp_path / "als.npy"
    np.save(npy, als_signal)
    csv = tmp_path / "als.csv"
    np.savetxt(csv, als_signal, delimiter=",", fmt="%.4f", header="EMG1", comments="")
    (tmp_path / "als.csv.json").write_text(json.dumps({"fs": FS}))
    xdf = _write_xdf(tmp_path / "als.xdf", als_signal)
    assert main(["qemg", str(npy), "--fs", str(FS), "--json"]) == 0
    assert main(["qemg", str(csv), str(xdf), "--json"]) == 0
    rows = _json_lines(capsys)
    assert len(rows) == 3
    for r in rows:
        assert r["units"] >= 1 and r["seconds"] == pytest.approx(8.0, abs=0.01)
        assert r["amplitude_uv"] == pytest.approx(rows[0]["amplitude_uv"], rel=0.02)
        assert r["duration_ms"] == pytest.approx(rows[0]["duration_ms"], abs=0.2)
        assert isinstance(r["flags"], dict)
    assert main(["qemg", str(npy), "--fs", str(FS), "--units"]) == 0
    text = capsys.readouterr().out
    assert "units" in text and "amp" in text and "µV" in text and "muap" in text


def test_unreadable_files_are_named_and_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "nothing.npy"
    assert main(["qemg", str(bad), "--fs", "1000"]) == 1
    err = capsys.readouterr().err
    assert "nothing.npy" in err and "no such file" in err
    npy = tmp_path / "nofs.npy"
    np.save(npy, np.zeros((1000, 1), np.float32))
    assert main(["qemg", str(npy), "--json"]) == 1
    out = _json_lines(capsys)
    assert "error" in out[0] and "sampling rate" in out[0]["error"]


def test_real_emglab_and_mendeley_files(capsys: pytest.CaptureFixture[str]) -> None:
    root = data_root()
    if root is None:
        pytest.skip("clinical data folder not available: set STREAMEMG_DATA to the folder holding the data sets")
    hea = root / "emglab_n2001" / "N2001A01BB01.hea"
    asc = next((root / "mendeley_543xpjycj9_needle_emg").rglob("*.asc.xz"))
    assert main(["qemg", str(hea), str(asc), "--json"]) == 0
    rows = _json_lines(capsys)
    assert [r["fs"] for r in rows] == [23437.5, 32768.0]
    assert all(r["units"] >= 1 and r["amplitude_uv"] > 0 for r in rows)


def test_a_recorded_session_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    session = tmp_path / "session1"
    assert main(["run", "--source", "sim:als?speed=max&duration=5", "--output", f"record:{session}",
                 "--no-dashboard", "--duration", "30"]) == 0
    capsys.readouterr()
    assert main(["qemg", str(session), "--json"]) == 0
    rows = _json_lines(capsys)
    assert len(rows) == 1 and rows[0]["stream"] == "sim:als" and rows[0]["units"] >= 1
    assert rows[0]["seconds"] == pytest.approx(5.0, abs=0.05)


def test_analyse_row_counts_units_per_horizon() -> None:
    """The real-vs-simulated table compares 11 s EMGLAB recordings (one horizon) with 20 s simulated ones (two):
    ``units`` is per horizon in both, as the recording report gives it (the summary counts every horizon's)."""
    from streamemg.qemg.report import analyse_array, analyse_row

    x = EMGSimulator("normal", FS, seed=0).generate(round(20 * FS))
    row = analyse_row(x, FS)
    pooled = analyse_array(x, FS).to_dict()
    assert row["horizons"] == 2
    assert row["units"] == pytest.approx(pooled["units"] / 2, abs=0.05)
    assert row["amplitude_uv"] == pooled["amplitude_uv"]
