"""The session report: made from a real recording of a real pipeline run, opened by headless Chromium.

A module fixture records two simulated patients (the real model, the real recorder, at full speed); the tests
run ``streamemg report`` on it and read the HTML as a person would: by its sections, its pictures and the
picture Chromium makes of it. With ``STREAMEMG_SCREENSHOTS=DIR`` the Chromium picture is kept as
``DIR/report-page.png`` (that is how the one in ``docs/`` was made).
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from streamemg.cli.main import main
from streamemg.errors import ConfigError
from streamemg.record.reader import RecordingReader
from streamemg.types import Estimate, StreamInfo
from streamemg.ui.report import ReportSettings, StreamData, stream_summary

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SOURCES = (
    "sim:als?name=patient-2&seed=2&fs=10000&speed=max&duration=10",
    "sim:myopathy?name=patient-3&seed=3&fs=10000&channels=2&speed=max&duration=10",
)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recording of two simulated patients made by the real pipeline and recorder (about 10 s of signal)."""
    from streamemg.pipeline import Pipeline
    from streamemg.sinks.base import open_sink
    from streamemg.sources.base import open_source

    out = tmp_path_factory.mktemp("session") / "s1"

    async def run() -> None:
        pipeline = Pipeline([open_source(u) for u in SOURCES], [open_sink(f"record:{out}")])
        await pipeline.run(duration=120.0)

    asyncio.run(run())
    assert (out / "recording.semg").is_file()
    return out


@pytest.fixture(scope="module")
def report(recording: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report") / "report.html"
    cwd = os.getcwd()
    os.chdir(recording.parent)  # as a user types it: `streamemg report s1`
    try:
        assert main(["report", recording.name, "--out", str(out)]) == 0
    finally:
        os.chdir(cwd)
    return out, out.read_text(encoding="utf-8")


def _pngs(html: str) -> dict[str, list[bytes]]:
    """Embedded pictures by figure kind."""
    found: dict[str, list[bytes]] = {}
    for kind, data in re.findall(r'data-figure="(\w+)"[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html):
        found.setdefault(kind, []).append(base64.b64decode(data))
    return found


def test_report_has_its_sections_and_says_it_is_not_a_diagnosis(report: tuple[Path, str]) -> None:
    _, html = report
    assert html.startswith("<!DOCTYPE html>")
    for section in ('id="disclaimer"', 'id="session"', 'id="model"'):
        assert section in html
    assert "<tr><th>recording</th><td>s1</td></tr>" in html
    assert "Research software, not a diagnosis" in html
    assert html.count('class="card stream"') == 2
    assert 'data-stream="' in html and "patient-2" in html and "patient-3" in html
    for title in ("Probability timeline", "Spectrogram", "Signal excerpts", "Measured accuracy", "Limitations"):
        assert title in html, title
    # the model card's facts come from the shipped bundle: its measured subject-wise accuracy is shown
    assert "subject-wise 5-fold (emglab)" in html and "fingerprint" in html
    assert "Not a medical device" in html
    # the recorded estimates carry the streams' QEMG: its measures close each stream's summary
    assert html.count("QEMG at the end of the session") == 2 and "<th>amplitude</th>" in html


def test_report_is_self_contained(report: tuple[Path, str]) -> None:
    _, html = report
    assert not re.search(r'(src|href)="(https?:)?//', html), "a picture or style is fetched from the network"
    assert "<script" not in html and "<link" not in html
    pngs = _pngs(html)
    assert {k: len(v) for k, v in pngs.items()} == {"timeline": 2, "spectrogram": 2, "excerpts": 2}
    from PIL import Image

    for kind, images in pngs.items():
        for data in images:
            assert data[:8] == b"\x89PNG\r\n\x1a\n", kind
            img = Image.open(io.BytesIO(data)).convert("RGB")
            assert img.width > 600 and img.height > 150, (kind, img.size)
            colours = len(np.unique(np.asarray(img.resize((200, 60))).reshape(-1, 3), axis=0))
            assert colours > 20, f"the {kind} picture looks empty ({colours} colours)"


def test_report_numbers_match_the_recording(recording: Path, report: tuple[Path, str]) -> None:
    _, html = report
    reader = RecordingReader(recording)
    everything = reader.estimates()
    for name in ("patient-2", "patient-3"):
        ests = [e for e in everything if e.name == name]
        assert len(ests) >= 30, f"{name}: only {len(ests)} estimates were recorded"
        section = html[html.index(f"<h2>{name}</h2>") :]
        section = section[: section.index("</section>")]
        assert f"<tr><th>windows</th><td>{len(ests):,}</td></tr>" in section
        n_samples = sum(rc.chunk.n_samples for rc in reader.chunks(ests[0].stream_id))
        assert f"({n_samples:,})" in section
        last = ests[-1]
        k = int(np.nanargmax(last.cumulative))
        label = ("Normal", "ALS", "Myopathy")[k]
        assert f"{label} {last.cumulative[k] * 100:.0f}%</span> <span class=\"muted\">(mean of the usable" in section


def test_long_sessions_are_read_with_bounded_memory(recording: Path, report: tuple[Path, str], tmp_path: Path) -> None:
    """Only the first seconds of each stream are kept for the pictures; counts and estimates cover everything."""
    from streamemg.ui.report import load_recording

    rec = load_recording(recording, max_signal_s=3.0)
    full = load_recording(recording)
    for sid, s in rec.streams.items():
        assert s.truncated and s.data.shape[0] <= int(3.0 * s.info.fs) + 2500  # at most one chunk beyond
        assert s.samples_total == full.streams[sid].data.shape[0]
        assert stream_summary(s) | {"labels": None} == stream_summary(full.streams[sid]) | {"labels": None}
    out = tmp_path / "short.html"
    assert main(["report", str(recording), "--out", str(out), "--max-signal-s", "3"]) == 0
    html = out.read_text(encoding="utf-8")
    assert html.count("cover the first 3 s") == 2
    _, full_html = report
    for n in re.findall(r"s of samples \(([\d,]+)\)", full_html):
        assert f"({n})" in html  # the same sample counts


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_chromium_renders_the_report(report: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = report
    png = tmp_path / "report.png"
    proc = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--offline",
         f"--screenshot={png}", "--window-size=1280,2600", out.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and png.is_file(), proc.stderr[-2000:]
    from PIL import Image

    img = Image.open(png).convert("RGB")
    assert img.size == (1280, 2600)
    small = np.asarray(img.resize((128, 260)), dtype=np.float64)
    # not a blank page: many colours, and text and pictures all the way down (every fifth of the page varies)
    assert len({tuple(p) for p in small.reshape(-1, 3)}) > 200
    assert min(small[i * 52 : (i + 1) * 52].std() for i in range(5)) > 8.0
    # the viridis spectrogram is on the page: dark blue-purple pixels exist
    purple = (small[..., 2] > 60) & (small[..., 0] < 90) & (small[..., 1] < 60)
    assert purple.sum() > 20, "no spectrogram colours on the rendered page"
    shots = os.environ.get("STREAMEMG_SCREENSHOTS")
    if shots:
        img.crop((0, 0, 1280, 2000)).save(Path(shots) / "report-page.png", optimize=True)


def test_stream_summary_counts_labels_quality_and_gaps() -> None:
    info = StreamInfo("s", "s", 1000.0, ("ch1",))
    ts = np.concatenate([np.arange(1000) / 1000.0, 2.0 + np.arange(1000) / 1000.0])  # one 1 s jump
    data = np.zeros((2000, 1), np.float32)

    def est(i: int, label: str | None, quality: str = "ok", lat: float = 10.0) -> Estimate:
        p = (0.2, 0.2, 0.6)
        return Estimate("s", "s", i, 0.25 * i, p, p, p, label, 0.6 if label else 0.0, quality, lat)

    ests = [est(0, "Myopathy"), est(1, "Myopathy"), est(2, None, "clipping"), est(3, "ALS", lat=30.0)]
    summ = stream_summary(StreamData(info, data, ts, ests, seq_gaps=3, recorder_lost_samples=7))
    assert summ["windows"] == 4 and summ["samples"] == 2000
    assert summ["labels"] == {"Myopathy": 0.5, "withheld": 0.25, "ALS": 0.25}
    assert summ["flags"] == {"clipping": 1} and summ["usable"] == 0.75
    assert summ["estimate"] == "Myopathy" and summ["confidence"] == pytest.approx(0.6)
    assert summ["time_gaps"] == 1 and summ["time_gap_s"] == pytest.approx(1.0, abs=1e-6)
    assert summ["seq_gaps"] == 3 and summ["recorder_lost_samples"] == 7
    assert summ["duration_s"] == pytest.approx(2.0) and summ["span_s"] == pytest.approx(2.999)
    assert summ["latency_p50_ms"] == pytest.approx(10.0)


def test_untrained_estimates_give_no_recording_level_label() -> None:
    info = StreamInfo("s", "s", 1000.0, ("ch1",))
    p = (0.2, 0.2, 0.6)
    ests = [Estimate("s", "s", 0, 0.0, p, p, p, None, 0.0, "ok", 5.0, trained=False)]
    summ = stream_summary(StreamData(info, np.zeros((10, 1), np.float32), np.arange(10) / 1e3, ests))
    assert summ["estimate"] is None and summ["labels"] == {"untrained": 1.0}


def test_bad_input_says_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-session"
    assert main(["report", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "no-such-session" in err and "does not exist" in err and "record:DIR" in err
    with pytest.raises(ConfigError, match="excerpts"):
        ReportSettings(excerpts=20)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "directory without a recording" in capsys.readouterr().err
    text = tmp_path / "notes.txt"
    text.write_text("not EMG")
    assert main(["report", str(text)]) == 2
    err = capsys.readouterr().err
    assert "could not be replayed" in err and "notes.txt" in err
    assert not (tmp_path / "notes.report.html").exists()


@pytest.mark.data
@pytest.mark.slow
def test_a_clinical_file_is_replayed_into_a_report(tmp_path: Path) -> None:
    data = os.environ.get("STREAMEMG_DATA")
    hea = Path(data) / "physionet_emgdb" / "emg_neuropathy.hea" if data else None
    if hea is None or not hea.is_file():
        pytest.skip("STREAMEMG_DATA is not set or lacks physionet_emgdb/emg_neuropathy.hea")
    out = tmp_path / "r.html"
    assert main(["report", str(hea), "--out", str(out), "--excerpts", "2"]) == 0
    html = out.read_text(encoding="utf-8")
    assert html.count('class="card stream"') == 1
    assert {k: len(v) for k, v in _pngs(html).items()} == {"timeline": 1, "spectrogram": 1, "excerpts": 1}
    assert re.search(r"<tr><th>windows</th><td>[1-9][\d,]*</td></tr>", html)
