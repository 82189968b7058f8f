"""The LSL capacity benchmark's extra chunk-length series, its report table, and the source's GIL-holding pulls.

Speed itself is shown by ``streamemg bench``; these tests check what the figures carry and how the pulls are made.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
from typing import Any

import numpy as np
import pytest

from streamemg.bench import BenchSettings
from streamemg.engine import EngineSettings
from streamemg.errors import ConfigError
from streamemg.model import load_bundle
from streamemg.pipeline import PipelineSettings

pytestmark = [pytest.mark.lsl, pytest.mark.timeout(120)]


def test_bench_settings_check_the_extra_lsl_chunk_lengths() -> None:
    assert BenchSettings().lsl_chunk_ms == ()
    assert BenchSettings(lsl_chunk_ms=(40.0, 50)).lsl_chunk_ms == (40.0, 50)
    for bad in ((0.0,), (float("nan"),), (5000.0,)):
        with pytest.raises(ConfigError, match="lsl_chunk_ms"):
            BenchSettings(lsl_chunk_ms=bad)


def _run(n: int, chunk_ms: float, keeps_up: bool) -> dict[str, Any]:
    return {"streams": n, "chunk_ms": chunk_ms, "keeps_up": keeps_up, "open_s": 1.0, "latency_ms_p50": 7.5,
            "latency_ms_p99": 31.25, "to_pipeline_ms_p99": 12.5, "in_pipeline_ms_p99": 18.75, "cpu": 0.5,
            "reason": "" if keeps_up else "p99 latency 80 ms >= 50 ms",
            "fleet": {"lateness_ms_p99": 2.0, "cpu_cores": 0.25}}


def test_report_table_shows_each_chunk_length_series_with_the_latency_split(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from streamemg.cli.bench import print_report

    print_report({
        "lsl_capacity": {"runs": [_run(32, 10.0, True), _run(64, 10.0, False)], "capacity_streams": 32,
                         "chunk_ms": 10.0},
        "lsl_capacity_by_chunk_ms": {"50": {"runs": [_run(128, 50.0, True)], "capacity_streams": 128,
                                            "chunk_ms": 50.0}},
    })
    out = " ".join(capsys.readouterr().out.split())
    assert "10 ms chunks (largest that kept up: 32)" in out
    assert "50 ms chunks (largest that kept up: 128)" in out
    assert "12.5" in out and "18.8" in out  # due -> pipeline and in-pipeline p99 (headers wrap in a narrow console)


def test_pulls_keep_the_gil_and_still_read_the_samples(pylsl: Any, outlets: Any, uniq: str) -> None:
    """The reader calls liblsl's pull through a PyDLL twin (no GIL hand-off per pull) and reads what was pushed."""
    from streamemg.lsl.source import _InletReader

    outlet = outlets.make(uniq, n_channels=1, fs=8000.0, source_id=uniq)
    (info,) = pylsl.resolve_byprop("source_id", uniq, 1, 5.0)
    inlet = pylsl.StreamInlet(info, max_chunklen=0, recover=False)
    inlet.open_stream(timeout=5.0)
    reader = _InletReader(inlet, np.empty((400, 1), np.float32), pylsl.util.handle_error)
    assert reader._fn is not None and reader._fn._flags_ & ctypes._FUNCFLAG_PYTHONAPI  # type: ignore[attr-defined]
    block = np.arange(80, dtype=np.float32)[:, None]
    outlet.push_chunk(block, pylsl.local_clock())
    got: list[np.ndarray] = []
    deadline = pylsl.local_clock() + 5.0
    while sum(len(g) for g in got) < 80 and pylsl.local_clock() < deadline:
        n = reader.pull()
        if n:
            got.append(reader.buf[:n, 0].copy())
    assert np.array_equal(np.concatenate(got), block[:, 0])
    del reader, inlet


@pytest.mark.slow
def test_lsl_capacity_runs_at_another_chunk_length(pylsl: Any) -> None:
    """The fleet pushes the chunk length asked for, and every run says which it was."""
    from streamemg.bench.lsl_capacity import measure_lsl_capacity

    ps = PipelineSettings()
    ps = dataclasses.replace(ps, qemg=dataclasses.replace(ps.qemg, enabled=False))
    result = asyncio.run(measure_lsl_capacity(load_bundle(None), EngineSettings(device="cpu"), counts=(2,),
                                              duration_s=3.0, warmup_s=1.5, settings=ps, chunk_ms=40.0))
    (run,) = result["runs"]
    assert result["chunk_ms"] == 40.0 and run["chunk_ms"] == 40.0
    assert run["classified_streams"] == 2 and run["windows"] > 0
    # the fleet wakes once per chunk and push group (one group per outlet here): about 2 x 3 s / 40 ms
    assert run["fleet"]["phases"] == 2 and 100 <= run["fleet"]["ticks"] <= 200, run["fleet"]
    assert run["to_pipeline_ms_p50"] is not None and run["in_pipeline_ms_p50"] is not None


def test_the_fleet_spreads_its_outlets_over_the_period_unless_aligned(pylsl: Any) -> None:
    """Independent amplifiers are not phase-locked: by default each outlet (up to 10 groups) has its own deadline
    in the period, and the fleet reports when each group's pushes were done; --phases 1 pushes all at once."""
    import json
    import os
    import subprocess
    import sys
    import uuid

    from streamemg.lsl.config import configure_machine_scope

    configure_machine_scope()  # the fleet inherits the loopback-only configuration
    for phases, groups in ((0, 3), (1, 1)):
        cmd = [sys.executable, "-m", "streamemg.bench.lsl_capacity", "--count", "3", "--type",
               f"EMGfleet{uuid.uuid4().hex[:6]}", "--chunk-ms", "10", "--max-s", "0.5", "--phases", str(phases)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, env=dict(os.environ))
        try:
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline().strip() == "ready"
            stats = json.loads(proc.stdout.readline())  # stdin stays open: the fleet stops by itself at --max-s
            proc.stdin.close()
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert stats["phases"] == groups and stats["outlets"] == 3
        assert stats["ticks"] == 50 * groups, stats  # 0.5 s of 10 ms periods, one wake-up per group
        assert stats["pushed_ms_p50"] >= stats["lateness_ms_p50"], stats
