"""Support code shared by the MQTT tests (imported as ``mqtt_support``): brokers, waiting, test signals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest

from streamemg.mqtt.client import parse_broker_uri

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None
)


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        try:
            s.connect(("127.0.0.1", port))
            return True
        except OSError:
            return False


class Mosquitto:
    """A mosquitto process on 127.0.0.1:<port> that a test can stop, kill and restart (same port)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        if MOSQUITTO is None:
            pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.config = workdir / f"mosquitto-{self.port}.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 100000\n"
        )
        self.log = workdir / f"mosquitto-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        deadline = time.monotonic() + timeout
        while True:  # after a kill the port may need a moment before it can be bound again
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=log)
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _accepts(self.port):
                    return
                time.sleep(0.02)
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not start on port {self.port}: {self.log.read_text()[-800:]}")
            time.sleep(0.1)  # exited (port busy): try again

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without closing anything (no DISCONNECT, no last wills sent)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)



async def wait_until(predicate: Callable[[], bool], limit_s: float = 10.0, interval: float = 0.02) -> None:
    """Poll ``predicate()`` until true; fail after ``limit_s`` seconds (never an open-ended sleep)."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {limit_s} s")
        await asyncio.sleep(interval)


def client_for(url: str, **kwargs: Any) -> aiomqtt.Client:
    """A plain aiomqtt client for a test broker URL (``mqtt://127.0.0.1:PORT``)."""
    connection, _, _ = parse_broker_uri(url, "broker")
    return aiomqtt.Client(connection.host, connection.port, identifier=f"test-{uuid.uuid4().hex[:8]}", **kwargs)


def signal_block(n: int, channels: int, start: int = 0, fs: float = 1000.0) -> np.ndarray:
    """A deterministic (n, channels) float32 µV block: distinct sines per channel, continuous in ``start``."""
    t = (start + np.arange(n)) / fs
    cols = [100.0 * np.sin(2 * np.pi * (7 + 3 * c) * t) + c for c in range(channels)]
    return np.stack(cols, axis=1).astype(np.float32)


class Collector:
    """Consumes a source in a background task and keeps everything it yields (for assertions)."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.items: list[Any] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Collector:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="collector")
        return self

    async def _run(self) -> None:
        async for item in self.source:
            self.items.append(item)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def of(self, kind: type, stream_id: str | None = None) -> list[Any]:
        return [i for i in self.items if isinstance(i, kind) and (stream_id is None or i.stream_id == stream_id)]

    def failed(self) -> BaseException | None:
        task = self._task
        return task.exception() if task is not None and task.done() and not task.cancelled() else None
