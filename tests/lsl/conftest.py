"""Fixtures for the Lab Streaming Layer tests.

The root conftest confines liblsl to loopback before anything here runs. Every test uses its own stream
names (uuid), and every wait is bounded by a timeout.

Fixtures:
    uniq: a unique name for this test's streams.
    pylsl: the pylsl module (the test is skipped when liblsl cannot be loaded).
    outlets: a factory of described outlets, destroyed at teardown.
    amps: starts simulated amplifiers (``simulators.lsl_amp.run_amp``) as tasks, cancelled at teardown.
    take: reads a source until a predicate over the items so far holds, with a timeout.
    write_xdf: writes a small but complete XDF file (file header, stream headers, sample chunks with
        timestamps, clock offsets, footers), for the XDF replay tests.
"""

from __future__ import annotations

import asyncio
import gc
import struct
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import pytest

from streamemg.errors import LSLUnavailableError
from streamemg.types import SourceItem


@pytest.fixture
def uniq() -> str:
    """A stream name no other test (or machine process) uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def pylsl() -> Any:
    from streamemg.lsl.executor import import_pylsl

    try:
        return import_pylsl()
    except LSLUnavailableError as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"liblsl is not available: {exc}")


class OutletFactory:
    """Creates LSL outlets with a channel description; keeps them alive until :meth:`close` or teardown."""

    def __init__(self, pylsl: Any) -> None:
        self.pylsl = pylsl
        self.outlets: list[Any] = []

    def make(
        self,
        name: str,
        *,
        stream_type: str = "EMG",
        n_channels: int = 2,
        fs: float = 1000.0,
        fmt: str = "float32",
        source_id: str | None = None,
        labels: Sequence[str] | None = None,
        units: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
    ) -> Any:
        pylsl = self.pylsl
        info = pylsl.StreamInfo(name, stream_type, n_channels, fs, fmt, source_id or f"sid-{name}")
        if labels or units or types:
            chans = info.desc().append_child("channels")
            for i in range(n_channels):
                ch = chans.append_child("channel")
                if labels:
                    ch.append_child_value("label", labels[i])
                if units:
                    ch.append_child_value("unit", units[i])
                if types:
                    ch.append_child_value("type", types[i])
        outlet = pylsl.StreamOutlet(info, 0, 10)
        self.outlets.append(outlet)
        return outlet

    def close(self, outlet: Any) -> None:
        self.outlets = [o for o in self.outlets if o is not outlet]

    def close_all(self) -> None:
        self.outlets.clear()
        gc.collect()


@pytest.fixture
def outlets(pylsl: Any) -> Iterator[OutletFactory]:
    factory = OutletFactory(pylsl)
    yield factory
    factory.close_all()


class AmpRunner:
    """Runs simulated amplifiers in this event loop."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[int]] = []

    async def start(self, limit_s: float = 15.0, **kwargs: Any) -> asyncio.Task[int]:
        from simulators.lsl_amp import AmpSettings, run_amp

        ready = asyncio.Event()
        task = asyncio.create_task(run_amp(AmpSettings(**kwargs), ready=ready, quiet=True))
        self.tasks.append(task)
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait({task, waiter}, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task in done:
            task.result()  # raises the setup error
        assert ready.is_set(), "the simulated amplifier did not start in time"
        return task

    async def stop(self, task: asyncio.Task[int]) -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def stop_all(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def amps(pylsl: Any) -> AsyncIterator[AmpRunner]:
    runner = AmpRunner()
    yield runner
    await runner.stop_all()


Take = Callable[[Any, Callable[[list[SourceItem]], bool], float], Awaitable[list[SourceItem]]]


async def _take(source: Any, done: Callable[[list[SourceItem]], bool], limit_s: float) -> list[SourceItem]:
    items: list[SourceItem] = []

    async def run() -> None:
        async for item in source:
            items.append(item)
            if done(items):
                return
        raise AssertionError(f"the source ended before the condition held; got {len(items)} items")

    try:
        await asyncio.wait_for(run(), limit_s)
    except TimeoutError:
        kinds = [type(i).__name__ for i in items]
        raise AssertionError(f"condition not met within {limit_s} s; items so far: {len(items)} {kinds[-5:]}") from None
    return items


@pytest.fixture
def take() -> Take:
    """``await take(source, done, timeout)`` -> the items read until ``done(items)`` (AssertionError on timeout)."""
    return _take


# --------------------------------------------------------------------------------------------- XDF writing

_XDF_FORMATS = {"int8": "<i1", "int16": "<i2", "int32": "<i4", "int64": "<i8", "float32": "<f4", "double64": "<f8"}


def _varlen(n: int) -> bytes:
    if n < 256:
        return b"\x01" + struct.pack("<B", n)
    if n < 2**32:
        return b"\x04" + struct.pack("<I", n)
    return b"\x08" + struct.pack("<Q", n)


def _chunk(tag: int, content: bytes) -> bytes:
    return _varlen(len(content) + 2) + struct.pack("<H", tag) + content


def write_xdf(path: Path, streams: Sequence[dict[str, Any]], samples_per_chunk: int = 64) -> Path:
    """Write an XDF 1.0 file.

    Each stream dict: ``name``, ``type``, ``fs`` (0 = irregular), ``fmt`` (int8..int64, float32, double64,
    string), ``data`` ((n, C) array, or a list of n lists of str for string streams), ``stamps`` ((n,) s),
    optional ``labels``/``units``/``types`` (per channel) and ``source_id``.
    """
    out = bytearray(b"XDF:")
    out += _chunk(1, b'<?xml version="1.0"?><info><version>1.0</version></info>')
    for sid, st in enumerate(streams, start=1):
        n_ch = len(st["data"][0]) if st["fmt"] == "string" else int(np.asarray(st["data"]).shape[1])
        chans = ""
        if st.get("labels") or st.get("units") or st.get("types"):
            parts = []
            for i in range(n_ch):
                fields = "".join(
                    f"<{key}>{escape(str(st[plural][i]))}</{key}>"
                    for key, plural in (("label", "labels"), ("unit", "units"), ("type", "types"))
                    if st.get(plural)
                )
                parts.append(f"<channel>{fields}</channel>")
            chans = "<channels>" + "".join(parts) + "</channels>"
        header = (
            '<?xml version="1.0"?><info>'
            f"<name>{escape(st['name'])}</name><type>{escape(st['type'])}</type>"
            f"<channel_count>{n_ch}</channel_count><nominal_srate>{st['fs']}</nominal_srate>"
            f"<channel_format>{st['fmt']}</channel_format><source_id>{escape(st.get('source_id', ''))}</source_id>"
            f"<version>1.1</version><created_at>100.0</created_at><uid>{uuid.uuid4()}</uid>"
            f"<session_id>default</session_id><hostname>test</hostname><desc>{chans}</desc></info>"
        )
        out += _chunk(2, struct.pack("<I", sid) + header.encode())
    for sid, st in enumerate(streams, start=1):
        stamps = np.asarray(st["stamps"], dtype=np.float64)
        n = stamps.size
        for start in range(0, n, samples_per_chunk):
            stop = min(n, start + samples_per_chunk)
            body = bytearray(struct.pack("<I", sid))
            body += _varlen(stop - start)
            for k in range(start, stop):
                body += b"\x08" + struct.pack("<d", stamps[k])
                if st["fmt"] == "string":
                    for value in st["data"][k]:
                        raw = value.encode()
                        body += _varlen(len(raw)) + raw
                else:
                    body += np.asarray(st["data"][k], dtype=_XDF_FORMATS[st["fmt"]]).tobytes()
            out += _chunk(3, bytes(body))
        for t in (stamps[0] if n else 0.0, stamps[-1] if n else 0.0):
            out += _chunk(4, struct.pack("<I", sid) + struct.pack("<dd", t, 0.0))
        footer = (
            '<?xml version="1.0"?><info>'
            f"<first_timestamp>{stamps[0] if n else 0}</first_timestamp>"
            f"<last_timestamp>{stamps[-1] if n else 0}</last_timestamp>"
            f"<sample_count>{n}</sample_count></info>"
        )
        out += _chunk(6, struct.pack("<I", sid) + footer.encode())
    path.write_bytes(bytes(out))
    return path


@pytest.fixture
def xdf_writer() -> Callable[..., Path]:
    """``xdf_writer(path, streams)`` -> path; see :func:`write_xdf`."""
    return write_xdf
