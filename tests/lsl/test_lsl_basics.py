"""LSL pieces that need no liblsl: URI parsing, settings, units, channel plans, the lazy import, the executor."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import numpy as np
import pytest

import streamemg.lsl.executor as lsl_mod
from streamemg.errors import ConfigError, LSLUnavailableError, SourceError, SourceURIError
from streamemg.lsl.executor import LSLExecutor, plan_channels, unit_scale_to_uv
from streamemg.lsl.source import LSLSourceSettings, parse_uri


@pytest.mark.parametrize(
    ("unit", "factor"),
    [
        ("V", 1e6),
        ("volts", 1e6),
        ("mV", 1e3),
        ("Millivolts", 1e3),
        ("uV", 1.0),
        ("µV", 1.0),
        ("μV", 1.0),
        ("microvolts", 1.0),
        (" micro volts ", 1.0),
        ("nV", 1e-3),
        ("-6", 1.0),
        ("-3", 1e3),
        ("0", 1e6),
        ("", None),
        (None, None),
        ("counts", None),
        ("samples", None),
    ],
)
def test_unit_factors(unit: str | None, factor: float | None) -> None:
    got = unit_scale_to_uv(unit)
    assert got == (pytest.approx(factor) if factor is not None else None)


def test_channel_plan_selects_and_scales() -> None:
    plan = plan_channels(4, ["a", None, "c", "d"], ["mV", "uV", None, "V"], ["EMG", "EMG", "MISC", "emg"])
    assert plan.labels == ("a", "ch2", "d") and plan.indices == (0, 1, 3)
    x = np.array([[1, 2, 3, 4]], dtype=np.int16)
    np.testing.assert_allclose(plan.apply(x), [[1000.0, 2.0, 4e6]])
    assert plan.apply(x).dtype == np.float32
    every = plan_channels(4, ["a", None, "c", "d"], ["mV", "uV", None, "V"], ["EMG", "EMG", "MISC", "emg"], "all")
    assert every.keeps_all and every.assumed_uv == ("c",) and every.assumed_signal_uv == ()
    untyped = plan_channels(2, None, None, None)
    assert untyped.labels == ("ch1", "ch2") and untyped.assumed_signal_uv == ("ch1", "ch2")
    y = np.ones((3, 2), np.float32)
    out = untyped.apply(y)
    assert out is not y and np.shares_memory(out, y) is False
    with pytest.raises(SourceError, match=r"channels=.*'x'.*ch1, ch2"):
        plan_channels(2, None, None, None, "x", stream_name="S")


def test_lsl_uris() -> None:
    assert parse_uri("lsl:name=Amp1").query == (("name", "Amp1"),)
    assert parse_uri("lsl:Amp1").query == (("name", "Amp1"),)
    s = parse_uri("lsl:type=EMG&hostname=lab%20pc?poll_ms=2&chunk_ms=20&channels=all&dejitter=0&lost_s=3")
    assert s.query == (("type", "EMG"), ("hostname", "lab pc"))
    assert (s.poll_s, s.chunk_s, s.channels, s.dejitter, s.lost_after_s) == (0.002, 0.02, "all", False, 3.0)
    assert not s.explicit and parse_uri("lsl:source_id=X").explicit
    for bad, match in [
        ("lsl:", "does not say which"),
        ("lsl:colour=red", "unknown stream property"),
        ("lsl:name=A?speed=2", "unknown parameter"),
        ("lsl:name=A?poll_ms=fast", "not a valid value"),
        ("lsl:name=A?dejitter=maybe", "not a valid value"),
    ]:
        with pytest.raises(SourceURIError, match=match):
            parse_uri(bad)
    with pytest.raises(ConfigError, match=r"poll_s=0\.0"):
        parse_uri("lsl:name=A?poll_ms=0")


def test_settings_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match="query"):
        LSLSourceSettings(query=())
    with pytest.raises(ConfigError, match="single quote"):
        LSLSourceSettings(query=(("name", "it's"),))
    with pytest.raises(ConfigError, match="max_pulls=0"):
        LSLSourceSettings(query=(("name", "A"),), max_pulls=0)


def test_missing_liblsl_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lsl_mod, "_pylsl", None)
    monkeypatch.setitem(sys.modules, "pylsl", None)  # makes `import pylsl` fail like a missing library
    with pytest.raises(LSLUnavailableError) as info:
        lsl_mod.import_pylsl()
    text = str(info.value)
    assert "pip install pylsl" in text and "conda install -c conda-forge liblsl" in text and "PYLSL_LIB" in text
    assert not lsl_mod.lsl_available()


def test_lsl_modules_import_without_pylsl() -> None:
    code = (
        "import sys\n"
        "import streamemg.lsl.source, streamemg.lsl.sink, streamemg.lsl.xdf, simulators.lsl_amp\n"
        "from streamemg.sources.base import open_source\n"
        "open_source('lsl:name=A')\n"
        "assert 'pylsl' not in sys.modules, 'pylsl was imported eagerly'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_executor_runs_off_the_loop_with_a_finite_timeout() -> None:
    ex = LSLExecutor("test-ex", 1)
    try:
        loop_thread = threading.get_ident()
        assert await ex.call(threading.get_ident, timeout_s=5.0, what="x") != loop_thread
        gate = threading.Event()
        with pytest.raises(SourceError, match=r"did not finish within 0\.05 s: waiting"):
            await ex.call(gate.wait, 5.0, timeout_s=0.05, what="waiting")
        gate.set()
        assert await ex.call(sum, [1, 2], timeout_s=5.0, what="sum") == 3
    finally:
        ex.close()
        ex.close()
    with pytest.raises(SourceError, match="closed"):
        await ex.call(sum, [1], timeout_s=1.0, what="late")
    with pytest.raises(ValueError, match="timeout_s"):
        await LSLExecutor("t2").call(sum, [1], timeout_s=float("inf"), what="x")
    await asyncio.sleep(0)
