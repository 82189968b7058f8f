"""JSON-lines outputs: ``jsonl:PATH`` (a file, appended) and ``stdout`` (one object per line).

Each line is :meth:`streamemg.types.Estimate.to_dict`. Lines are flushed at most every ``flush_s``
seconds (and on close), so a crash loses at most that much.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from ..errors import ConfigError, SinkError
from ..types import Estimate, StreamInfo


class JsonlSink:
    """Writes one JSON object per estimate to a text stream."""

    def __init__(self, path: Path | None, flush_s: float = 0.5, name: str | None = None) -> None:
        self.path = path
        self.flush_s = flush_s
        self.name = name or (f"jsonl:{path}" if path else "stdout")
        self._fh: IO[str] | None = None
        self._last_flush = 0.0

    async def __aenter__(self) -> JsonlSink:
        if self.path is None:
            self._fh = sys.stdout
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = await asyncio.to_thread(open, self.path, "a", encoding="utf-8")
            except OSError as exc:
                raise SinkError(f"cannot open {self.path} for writing estimates: {exc}") from exc
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            fh.flush()
        except (OSError, ValueError):
            pass
        if self.path is not None:
            fh.close()

    async def announce(self, info: StreamInfo) -> None:
        return None

    async def send(self, estimate: Estimate) -> None:
        fh = self._fh
        if fh is None:
            raise SinkError(f"output {self.name} is not open")
        try:
            fh.write(json.dumps(estimate.to_dict(), allow_nan=False) + "\n")
            now = time.monotonic()
            if now - self._last_flush >= self.flush_s:
                fh.flush()
                self._last_flush = now
        except OSError as exc:
            raise SinkError(f"writing to {self.name} failed: {exc} (is the disk full?)") from exc


def from_uri(uri: str) -> JsonlSink:
    """``jsonl:PATH`` -> a JSON-lines file sink."""
    _, _, path = uri.partition(":")
    if not path:
        raise ConfigError(f"output {uri!r} needs a file path, e.g. jsonl:estimates.jsonl")
    return JsonlSink(Path(path))


def stdout_from_uri(uri: str) -> JsonlSink:
    """``stdout`` -> JSON lines on standard output, flushed after every line."""
    return JsonlSink(None, flush_s=0.0)
