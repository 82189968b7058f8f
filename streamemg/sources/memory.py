"""In-memory sources: the public fake for unit tests, and the generator plumbing the other sources share.

:class:`MemorySource` plays back items prepared in code (a list, a generator or an async generator of
:data:`~streamemg.types.SourceItem`), much as a mock transport stands in for the network in an HTTP client's
tests: everything downstream of the source boundary runs for real. :meth:`MemorySource.from_array` cuts an
array into Chunks of given sizes with an announcing StreamInfo.

There is no ``memory:`` URI: such sources only exist in code.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError, SourceURIError
from ..types import Chunk, SourceItem, StreamInfo


class GeneratorSource:
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

    def _items(self) -> AsyncIterator[SourceItem]:
        """The items of one run; subclasses implement this as an async generator."""
        raise NotImplementedError

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


class MemorySource(GeneratorSource):
    """A source that yields prepared items: the public fake for tests.

    Args:
        items: StreamInfo / Chunk / StatusEvent items, as a (re-)iterable, an iterator or an async iterable.
            Each run iterates it again (a one-shot iterator yields its items only once).
        uri: shown as the source's URI.
        realtime: what the pipeline should assume about the pace (see :class:`GeneratorSource`).

    The source yields control to the event loop after every item of a plain iterable, so a long list does
    not starve other tasks; an async iterable sets its own pace.
    """

    def __init__(
        self,
        items: Iterable[SourceItem] | AsyncIterable[SourceItem],
        uri: str = "memory:",
        realtime: bool = False,
    ) -> None:
        super().__init__(uri, realtime)
        self.items = items

    async def _items(self) -> AsyncIterator[SourceItem]:
        items = self.items
        if isinstance(items, AsyncIterable):
            iterator = aiter(items)
            try:
                async for item in iterator:
                    yield item
            finally:  # the source owns what it iterates: leaving early closes the generator too
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    await aclose()
            return
        for item in items:
            yield item
            await asyncio.sleep(0)

    @classmethod
    def from_array(
        cls,
        stream_id: str,
        data: npt.ArrayLike,
        fs: float,
        chunk_sizes: Sequence[int] | int,
        channels: Sequence[str] | None = None,
        seq_start: int | None = 0,
        *,
        t0: float = 0.0,
        name: str | None = None,
        uri: str | None = None,
        realtime: bool = False,
        meta: dict[str, Any] | None = None,
    ) -> MemorySource:
        """A StreamInfo followed by Chunks cut from ``data``.

        Args:
            stream_id: stream key (also the name unless ``name`` is given).
            data: samples (n,) or (n, C), µV; converted to float32 (n, C).
            fs: sampling rate, Hz.
            chunk_sizes: samples per chunk: one size for all chunks, or a sequence of sizes used in turn and
                repeated until the data is used up (0 is allowed: an empty chunk). The last chunk holds what
                is left.
            channels: channel labels (default ``ch1..chC``).
            seq_start: sequence number of the first chunk (then +1 per chunk); None for chunks without one.
            t0: timestamp of the first sample, s; sample i is at ``t0 + i / fs``.
            name: display name (default: ``stream_id``).
            uri: the source URI (default ``memory:<stream_id>``).
            realtime: passed to the source.
            meta: StreamInfo.meta.

        Raises:
            ConfigError: bad shapes, sizes or rate (names the argument and the fix).
        """
        arr = np.asarray(data, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[1] < 1:
            raise ConfigError(f"MemorySource.from_array data shaped {arr.shape}: pass (n_samples, n_channels)")
        try:
            rate = float(fs)
        except (TypeError, ValueError):
            rate = float("nan")
        if not (math.isfinite(rate) and rate > 0):
            raise ConfigError(f"MemorySource.from_array fs={fs!r}: give the sampling rate in Hz (> 0)")
        sizes = [int(chunk_sizes)] if isinstance(chunk_sizes, (int, np.integer)) else [int(s) for s in chunk_sizes]
        if not sizes or any(s < 0 for s in sizes) or sum(sizes) == 0:
            raise ConfigError(
                f"MemorySource.from_array chunk_sizes={chunk_sizes!r}: give a positive size or a sequence of sizes "
                ">= 0 with at least one above 0"
            )
        labels = tuple(channels) if channels is not None else tuple(f"ch{i + 1}" for i in range(arr.shape[1]))
        if len(labels) != arr.shape[1]:
            raise ConfigError(
                f"MemorySource.from_array channels has {len(labels)} labels for {arr.shape[1]} data columns"
            )
        source_uri = uri if uri is not None else f"memory:{stream_id}"
        info = StreamInfo(stream_id, name or stream_id, rate, labels, source=source_uri, meta=dict(meta or {}))
        items = _ArrayItems(info, np.ascontiguousarray(arr), sizes, seq_start, float(t0))
        return cls(items, uri=source_uri, realtime=realtime)


class _ArrayItems:
    """Re-iterable items of :meth:`MemorySource.from_array` (each run starts over)."""

    def __init__(self, info: StreamInfo, data: np.ndarray, sizes: list[int], seq_start: int | None, t0: float):
        self.info, self.data, self.sizes, self.seq_start, self.t0 = info, data, sizes, seq_start, t0

    def __iter__(self) -> Iterator[SourceItem]:
        yield self.info
        n = self.data.shape[0]
        pos, k = 0, 0
        while pos < n:
            size = min(self.sizes[k % len(self.sizes)], n - pos)
            ts = self.t0 + np.arange(pos, pos + size, dtype=np.float64) / self.info.fs
            seq = None if self.seq_start is None else self.seq_start + k
            yield Chunk(self.info.stream_id, self.data[pos : pos + size], ts, seq)
            pos += size
            k += 1


def from_uri(uri: str) -> MemorySource:
    """``memory:`` URIs cannot be opened: memory sources are created in code."""
    raise SourceURIError(
        f"{uri!r}: memory sources exist only in code; build one with MemorySource(items) or "
        "MemorySource.from_array(stream_id, data, fs, chunk_sizes) and pass the object to the pipeline"
    )


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
