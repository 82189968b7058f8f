"""The source contract and the URI registry.

A source is an async context manager that is an async iterator of :data:`~streamemg.types.SourceItem`:
it yields a :class:`~streamemg.types.StreamInfo` before the first :class:`~streamemg.types.Chunk` of each
stream (and again, with a new signature, when a stream's rate or channel count changes), then Chunks, and
:class:`~streamemg.types.StatusEvent` items when a stream's liveness changes. One source may carry many
streams (an MQTT wildcard, ``lsl:type=EMG``).

Sources are opened from URIs: ``sim:als?fs=10000``, ``file:rec.npy?speed=max``, ``lsl:name=Amp1``,
``mqtt://host/emg/+``. Each scheme lives in its own module and is imported only when used, so a missing
optional native library (liblsl) breaks only its own scheme.

Shared by the schemes: :class:`GeneratorSource` (the ``async with`` / ``async for`` plumbing around one async
generator per run) and :class:`UriParams` (typed query parameters with errors that say what to write).
"""

from __future__ import annotations

import abc
import importlib
import math
from collections.abc import AsyncIterator, Sequence
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
    "lsl": "streamemg.lsl.source:from_uri",
    "mqtt": "streamemg.mqtt.source:from_uri",
    "mqtts": "streamemg.mqtt.source:from_uri",
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


#: query parameter, understood by every scheme, naming the site profile of a source's recording setup
SITE_PARAM = "site"


def split_site(uri: str) -> tuple[str, str | None]:
    """``(uri without ?site=..., the site profile path or None)``: every scheme accepts ``site=SITE.json``.

    The profile is applied by the engine (:mod:`streamemg.clinical.site`), not by the source, so the source
    sees the URI without it. An empty ``site=`` is an error.
    """
    if "?" not in uri:
        return uri, None
    head, _, query = uri.partition("?")
    kept: list[str] = []
    site: str | None = None
    for part in query.split("&"):
        key = part.partition("=")[0]
        if key == SITE_PARAM:
            pairs = parse_qsl(part, keep_blank_values=True)
            site = pairs[0][1].strip() if pairs else ""
            if not site:
                raise SourceURIError(f"{uri!r}: site= is empty; give a profile written by `streamemg calibrate`")
        elif part:
            kept.append(part)
    return (head + "?" + "&".join(kept) if kept else head), site


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


class GeneratorSource(abc.ABC):
    """Base of sources whose items come from one async generator, :meth:`_items`.

    Gives the Source protocol's plumbing: ``async with`` (entering starts a fresh run, exiting closes the
    generator; both idempotent) and ``async for`` over the items.

    Attributes:
        uri: where the source came from (shown on the dashboard).
        realtime: True when items arrive at the pace of a live device; False for playback as fast as the
            consumer takes it (the pipeline then applies back-pressure instead of dropping windows).
    """

    uri: str
    realtime: bool

    def __init__(self, uri: str, realtime: bool) -> None:
        self.uri = uri
        self.realtime = bool(realtime)
        self._gen: AsyncIterator[SourceItem] | None = None
        self._closed = False

    @abc.abstractmethod
    def _items(self) -> AsyncIterator[SourceItem]:
        """The items of one run; subclasses implement this as an async generator."""

    async def __aenter__(self) -> GeneratorSource:
        await self.aclose()
        self._closed = False
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the current run (idempotent); further iteration ends at once until the source is re-entered."""
        self._closed = True
        gen, self._gen = self._gen, None
        aclose = getattr(gen, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except RuntimeError:
                pass  # the generator is running in another task; that task's cancellation finalises it

    def __aiter__(self) -> GeneratorSource:
        return self

    async def __anext__(self) -> SourceItem:
        if self._closed:
            raise StopAsyncIteration
        if self._gen is None:
            self._gen = self._items()
        return await self._gen.__anext__()


class UriParams:
    """Typed access to a source URI's query parameters, with errors that say what to write instead.

    Args:
        uri: the whole URI (echoed in errors).
        params: the parsed ``k=v`` pairs.
        allowed: the parameter names this scheme knows; any other name is an error (catches typos).
        example: a correct URI shown in error messages.
    """

    def __init__(self, uri: str, params: dict[str, str], allowed: Sequence[str], example: str) -> None:
        self.uri = uri
        self.params = params
        self.example = example
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise SourceURIError(
                f"{uri!r}: unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                f"known: {', '.join(allowed)} (e.g. {example})"
            )

    def error(self, key: str, problem: str) -> SourceURIError:
        return SourceURIError(f"{self.uri!r}: {key}={self.params.get(key)!r} {problem} (e.g. {self.example})")

    def number(
        self, key: str, default: float | None, lo: float | None = None, hi: float | None = None,
        lo_inclusive: bool = True,
    ) -> float | None:
        """A finite float within [lo, hi] (or (lo, hi] when ``lo_inclusive`` is False); ``default`` if absent."""
        if key not in self.params:
            return default
        raw = self.params[key].strip()
        try:
            value = float(raw)
        except ValueError:
            raise self.error(key, "is not a number") from None
        if not math.isfinite(value):
            raise self.error(key, "must be a finite number")
        if lo is not None and (value < lo or (value == lo and not lo_inclusive)):
            raise self.error(key, f"must be {'at least' if lo_inclusive else 'above'} {lo:g}")
        if hi is not None and value > hi:
            raise self.error(key, f"must be at most {hi:g}")
        return value

    def integer(self, key: str, default: int, lo: int | None = None, hi: int | None = None) -> int:
        """A whole number within [lo, hi]; ``default`` if absent."""
        if key not in self.params:
            return default
        raw = self.params[key].strip()
        try:
            value = int(raw)
        except ValueError:
            raise self.error(key, "is not a whole number") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"from {lo} to {hi}" if hi is not None else f"at least {lo}"
            raise self.error(key, f"must be a whole number {bounds}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        """0/1, true/false, yes/no, on/off; ``default`` if absent."""
        if key not in self.params:
            return default
        raw = self.params[key].strip().lower()
        if raw in ("1", "true", "yes", "on", ""):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise self.error(key, "must be 0 or 1")

    def speed(self, key: str = "speed", default: float | None = 1.0) -> float | None:
        """Playback speed: ``max`` (None: as fast as the consumer takes it) or a factor > 0 (1 = real time)."""
        if key not in self.params:
            return default
        if self.params[key].strip().lower() in ("max", "inf", "fast"):
            return None
        return self.number(key, default, lo=0.0, hi=1000.0, lo_inclusive=False)

    def text(self, key: str, default: str | None) -> str | None:
        """A non-empty string; ``default`` if absent."""
        if key not in self.params:
            return default
        value = self.params[key].strip()
        if not value:
            raise self.error(key, "must not be empty")
        return value
