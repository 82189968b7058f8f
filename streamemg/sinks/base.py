"""The sink contract, the bounded-queue runner every sink sits behind, and the URI registry.

A sink is an async context manager with ``async send(estimate)``. The pipeline never calls ``send``
directly: each sink sits behind a :class:`SinkRunner` with a bounded queue. When a sink is slow the runner
drops the *oldest* queued estimates and counts them, so no sink can stall ingest or inference. When a
sink's ``send`` raises, the error is counted and reported and the pipeline goes on.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import logging
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, runtime_checkable

from ..errors import ConfigError
from ..types import Chunk, Estimate, StreamInfo

log = logging.getLogger(__name__)


@runtime_checkable
class Sink(Protocol):
    """What the pipeline needs from an output.

    ``announce`` is called once per stream (and again on a signature change) before its first estimate,
    so sinks that create per-stream resources (LSL outlets, topics) can do so.

    A sink whose class sets ``wants_chunks = True`` also gets every accepted Chunk through
    ``async write_chunk(chunk)`` (the recorder does), in arrival order with the estimates.
    """

    name: str

    async def __aenter__(self) -> Sink: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def announce(self, info: StreamInfo) -> None: ...

    async def send(self, estimate: Estimate) -> None: ...


@dataclass(frozen=True, slots=True)
class SinkSettings:
    """Queueing policy of one sink.

    Attributes:
        queue_size: estimates held for a slow sink (>= 1).
        drop: "oldest" (default: keep the newest) or "newest" (keep the queue, drop arrivals).
    """

    queue_size: int = 1024
    drop: str = "oldest"

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise ConfigError(f"SinkSettings.queue_size={self.queue_size!r}: must be at least 1")
        if self.drop not in ("oldest", "newest"):
            raise ConfigError(f"SinkSettings.drop={self.drop!r}: use 'oldest' or 'newest'")


class SinkRunner:
    """Feeds one sink from a bounded deque in its own task. ``put`` never blocks."""

    def __init__(self, sink: Sink, settings: SinkSettings | None = None) -> None:
        self.sink = sink
        self.settings = settings or SinkSettings()
        own = getattr(sink, "queue_size", None)  # a sink may ask for a longer queue (the recorder does)
        if isinstance(own, int) and not isinstance(own, bool) and own > self.settings.queue_size:
            self.settings = SinkSettings(queue_size=own, drop=self.settings.drop)
        self._queue: collections.deque[tuple[str, Estimate | StreamInfo | Chunk]] = collections.deque()
        self.wants_chunks = bool(getattr(sink, "wants_chunks", False))
        self._wake = asyncio.Event()
        self._closed = False
        self.sent = 0
        self.dropped = 0
        self.errors = 0
        self.last_error: str = ""

    @property
    def name(self) -> str:
        return self.sink.name

    def put(self, estimate: Estimate) -> None:
        self._enqueue(("estimate", estimate))

    def put_chunk(self, chunk: Chunk) -> None:
        """Queue a received chunk for a sink that records raw data (``wants_chunks``)."""
        self._enqueue(("chunk", chunk))

    def announce(self, info: StreamInfo) -> None:
        # announcements are never dropped: they are rare and sinks need them.
        self._queue.append(("announce", info))
        self._wake.set()

    def _enqueue(self, item: tuple[str, Estimate | StreamInfo | Chunk]) -> None:
        if len(self._queue) >= self.settings.queue_size:
            self.dropped += 1
            if self.settings.drop == "newest":
                return
            self._queue.popleft()
        self._queue.append(item)
        self._wake.set()

    def abandon(self) -> int:
        """Give up on what is still queued (a hung output at shutdown): count it as dropped, return how many."""
        lost = len(self._queue)
        self._queue.clear()
        self.dropped += lost
        return lost

    def close(self) -> None:
        """Ask the runner to finish after draining what is queued."""
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        """Drain the queue into the sink until closed and empty."""
        while True:
            while self._queue:
                kind, item = self._queue.popleft()
                try:
                    if kind == "announce":
                        assert isinstance(item, StreamInfo)
                        await self.sink.announce(item)
                    elif kind == "chunk":
                        assert isinstance(item, Chunk)
                        await self.sink.write_chunk(item)  # type: ignore[attr-defined]
                    else:
                        assert isinstance(item, Estimate)
                        await self.sink.send(item)
                        self.sent += 1
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a failing sink is reported, never fatal
                    self.errors += 1
                    msg = f"output {self.sink.name}: {exc}"
                    if msg != self.last_error:
                        log.warning("%s (the pipeline goes on; %d failures so far)", msg, self.errors)
                    self.last_error = msg
            if self._closed:
                return
            self._wake.clear()
            await self._wake.wait()


#: scheme -> "module:function" taking the full output URI and returning a Sink.
SCHEMES: dict[str, str] = {
    "jsonl": "streamemg.sinks.jsonl:from_uri",
    "stdout": "streamemg.sinks.jsonl:stdout_from_uri",
    "lsl": "streamemg.lsl.sink:from_uri",
    "mqtt": "streamemg.mqtt.sink:from_uri",
    "mqtts": "streamemg.mqtt.sink:from_uri",
    "record": "streamemg.record.writer:from_uri",
}


def open_sink(uri: str) -> Sink:
    """Create (not yet enter) the sink for an ``--output`` URI."""
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else uri.lower()
    target = SCHEMES.get(scheme)
    if target is None:
        raise ConfigError(
            f"unknown output {uri!r}; known outputs: jsonl:PATH, stdout, lsl, mqtt://HOST[:PORT], record:DIR"
        )
    module_name, func_name = target.split(":")
    module = importlib.import_module(module_name)
    sink: Sink = getattr(module, func_name)(uri)
    return sink
