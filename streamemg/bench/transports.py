"""Transport figures: LSL and MQTT ingest, where they are available on this machine."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import tempfile
from typing import Any

log = logging.getLogger(__name__)


async def _lsl_figures(quick: bool) -> dict[str, Any] | str:
    try:
        from ..lsl.latency import measure_ingest_latency
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}: {exc}"
    try:
        return await measure_ingest_latency(n_chunks=150 if quick else 500)
    except Exception as exc:  # report, never fail the benchmark
        return f"unavailable: {type(exc).__name__}: {exc}"


async def _lsl_capacity_figures(bundle: Any, engine_settings: Any, counts: Any, s: Any, pipe_settings: Any,
                                say: Any, chunk_ms: float = 10.0) -> dict[str, Any] | str:
    """The LSL capacity runs (:mod:`streamemg.bench.lsl_capacity`), or why they could not run."""
    try:
        from ..lsl.executor import lsl_available
        from .lsl_capacity import measure_lsl_capacity

        if not lsl_available():
            return "unavailable: liblsl cannot be loaded"
        return await measure_lsl_capacity(bundle, engine_settings, counts, duration_s=s.run_s, warmup_s=s.warm_s,
                                          progress=say, settings=pipe_settings, chunk_ms=chunk_ms,
                                          phases=0 if s.spread else 1)
    except Exception as exc:  # report, never fail the benchmark
        return f"unavailable: {type(exc).__name__}: {exc}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _find_mosquitto() -> str | None:
    """The mosquitto broker executable, if installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


def _write_mosquitto_conf(folder: str, port: int) -> str:
    """A loopback-only, anonymous, non-persistent mosquitto config in ``folder``; returns its path."""
    conf = os.path.join(folder, "mosquitto.conf")
    with open(conf, "w", encoding="ascii") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    return conf


async def _mqtt_figures(quick: bool) -> dict[str, Any] | str:
    try:
        from ..mqtt.throughput import measure_ingest_throughput
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}: {exc}"
    kw: dict[str, Any] = {"devices": 10, "messages_per_device": 300 if quick else 2000, "rounds": 1 if quick else 3}
    try:
        mosquitto = await asyncio.to_thread(_find_mosquitto)
        if mosquitto is None:
            result = await measure_ingest_throughput(None, **kw)  # an embedded broker
            result["broker_kind"] = "embedded (amqtt)"
            return result
        port = _free_port()
        with tempfile.TemporaryDirectory() as tmp:
            conf = await asyncio.to_thread(_write_mosquitto_conf, tmp, port)
            proc = await asyncio.create_subprocess_exec(
                mosquitto, "-c", conf, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
            try:
                for _ in range(100):  # wait for the listener (finite)
                    try:
                        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 0.5)
                        writer.close()
                        break
                    except (OSError, TimeoutError):
                        await asyncio.sleep(0.05)
                result = await measure_ingest_throughput(f"mqtt://127.0.0.1:{port}", **kw)
                result["broker_kind"] = "mosquitto"
                return result
            finally:
                if proc.returncode is None:
                    proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 5.0)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
    except Exception as exc:  # report, never fail the benchmark
        return f"unavailable: {type(exc).__name__}: {exc}"
