"""Helpers shared by the MQTT tests (imported as ``mqtt_helpers``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiomqtt
import numpy as np

from streamemg.sources.mqtt import parse_broker_uri


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
