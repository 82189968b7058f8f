"""The dashboard's QEMG column: key measures per stream and the flags against the normative reference."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from streamemg.types import Estimate, StreamStatus
from streamemg.ui.dashboard import render
from streamemg.ui.snapshot import PipelineSnapshot, StreamSnapshot


def _stream(name: str, qemg: dict[str, Any] | None) -> StreamSnapshot:
    p = (0.1, 0.8, 0.1)
    est = Estimate(f"id:{name}", name, 3, 3.0, p, p, p, "ALS", 0.8, "ok", 4.0, qemg=qemg)
    return StreamSnapshot(f"id:{name}", name, "sim:als", 10000.0, 1, StreamStatus.LIVE, last=est, windows=4)


def _text(streams: tuple[StreamSnapshot, ...], width: int, yielding: bool = False) -> str:
    snap = PipelineSnapshot(device="cpu", model_name="m", trained=True, uptime_s=5.0, streams=streams,
                            qemg_yielding=yielding)
    console = Console(record=True, width=width, height=20, file=io.StringIO())
    console.print(render(snap, width=width, height=20))
    return console.export_text()


def test_qemg_column_shows_units_amplitude_duration_and_flags() -> None:
    flagged = {"units": 7, "amplitude_uv": 420.4, "duration_ms": 6.71,
               "flags": {"amplitude_uv": "high", "fibrillations": "present"}}
    plain = {"units": 9, "amplitude_uv": 130.0, "duration_ms": 8.0, "flags": {}}
    empty = {"units": 0, "amplitude_uv": None, "duration_ms": None, "flags": {}}
    text = _text((_stream("p1", flagged), _stream("p2", plain), _stream("p3", empty), _stream("p4", None)), 200)
    assert "QEMG" in text
    row = {n: next(line for line in text.splitlines() if f" {n} " in line) for n in ("p1", "p2", "p3", "p4")}
    assert "7u 420µV 6.7ms" in row["p1"] and "A↑" in row["p1"] and "fib!" in row["p1"]
    assert "9u 130µV 8.0ms" in row["p2"] and "↑" not in row["p2"]
    assert "no units yet" in row["p3"]
    assert "µV" not in row["p4"]


def test_qemg_column_is_the_first_to_go_on_narrow_terminals() -> None:
    q = {"units": 7, "amplitude_uv": 420.0, "duration_ms": 6.7, "flags": {}}
    assert "QEMG" not in _text((_stream("p1", q),), 150)


def test_the_header_says_when_qemg_gives_way_to_classification() -> None:
    """While live streams' QEMG yields (the event loop is busy), its measures are not being renewed: said once, in
    the header, not per row."""
    q = {"units": 7, "amplitude_uv": 420.0, "duration_ms": 6.7, "flags": {}}
    assert "QEMG paused while classification is busy" in _text((_stream("p1", q),), 200, yielding=True)
    assert "QEMG paused" not in _text((_stream("p1", q),), 200)
