"""Helpers shared by the MQTT tests (imported as ``mqtt_helpers``)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiomqtt
import numpy as np

from streamemg.sources.mqtt import parse_broker_uri


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll ``predicate()`` until true; fail after ``timeout`` seconds (never an open-ended sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
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
