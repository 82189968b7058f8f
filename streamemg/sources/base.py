"""The source contract and the URI registry.

A source is an async context manager that is an async iterator of :data:`~streamemg.types.SourceItem`:
it yields a :class:`~streamemg.types.StreamInfo` before the first :class:`~streamemg.types.Chunk` of each
stream (and again, with a new signature, when a stream's rate or channel count changes), then Chunks, and
:class:`~streamemg.types.StatusEvent` items when a stream's liveness changes. One source may carry many
streams (an MQTT wildcard, ``lsl:type=EMG``).

Sources are opened from URIs: ``sim:als?fs=10000``, ``file:rec.npy?speed=max``, ``lsl:name=Amp1``,
``mqtt://host/emg/+``. Each scheme lives in its own module and is imported only when used, so a missing
optional native library (liblsl) breaks only its own scheme.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Protocol, runtime_checkable
from urllib.parse import parse_qsl

from ..errors import SourceURIError
from ..types import SourceItem


@runtime_checkable
class Source(Protocol):
    """What the pipeline needs from a source.

    Attributes:
        uri: the URI it was opened from (shown on the dashboard).
        realtime: True for live sources (drop windows rather than wait when the engine is full);
            False for files played at full speed (back-pressure: nothing is dropped).
    """

    uri: str
    realtime: bool

    async def __aenter__(self) -> Source: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def __aiter__(self) -> AsyncIterator[SourceItem]: ...


#: scheme -> "module:function"; the function takes the full URI string and returns a Source.
SCHEMES: dict[str, str] = {
    "sim": "streamemg.sources.sim:from_uri",
    "file": "streamemg.sources.file:from_uri",
    "lsl": "streamemg.sources.lsl:from_uri",
    "mqtt": "streamemg.sources.mqtt:from_uri",
    "mqtts": "streamemg.sources.mqtt:from_uri",
    "memory": "streamemg.sources.memory:from_uri",
}


def split_uri(uri: str) -> tuple[str, str, dict[str, str]]:
    """Split ``scheme:body?k=v&k2=v2`` into (scheme, body, params). ``//`` after the scheme is kept in body."""
    if ":" not in uri:
        raise SourceURIError(
            f"source {uri!r} has no scheme: write it as one of "
            + ", ".join(f"{s}:..." for s in sorted(SCHEMES))
            + " (e.g. sim:als, file:recording.npy, lsl:name=Amp1, mqtt://127.0.0.1/emg/+)"
        )
    scheme, rest = uri.split(":", 1)
    scheme = scheme.lower()
    body, _, query = rest.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    return scheme, body, params


def open_source(uri: str) -> Source:
    """Create (not yet enter) the source for ``uri``; raises SourceURIError for unknown schemes."""
    scheme, _, _ = split_uri(uri)
    target = SCHEMES.get(scheme)
    if target is None:
        raise SourceURIError(
            f"unknown source scheme {scheme!r} in {uri!r}; known schemes: {', '.join(sorted(SCHEMES))}. "
            "Examples: sim:als, file:recording.npy?speed=max, lsl:name=Amp1, mqtt://127.0.0.1/emg/+"
        )
    module_name, func_name = target.split(":")
    module = importlib.import_module(module_name)
    factory = getattr(module, func_name)
    source: Source = factory(uri)
    return source
