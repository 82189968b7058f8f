"""An in-process sink that keeps estimates in memory: for ``classify``, tests and notebooks."""

from __future__ import annotations

from types import TracebackType

from ..types import Estimate, StreamInfo


class MemorySink:
    """Keeps every stream's StreamInfo, its last Estimate and (if ``keep_all``) every Estimate."""

    def __init__(self, keep_all: bool = True, name: str = "memory") -> None:
        self.name = name
        self.keep_all = keep_all
        self.infos: dict[str, StreamInfo] = {}
        self.last: dict[str, Estimate] = {}
        self.estimates: list[Estimate] = []

    async def __aenter__(self) -> MemorySink:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def announce(self, info: StreamInfo) -> None:
        self.infos[info.stream_id] = info

    async def send(self, estimate: Estimate) -> None:
        self.last[estimate.stream_id] = estimate
        if self.keep_all:
            self.estimates.append(estimate)

    def by_stream(self, stream_id: str) -> list[Estimate]:
        return [e for e in self.estimates if e.stream_id == stream_id]
