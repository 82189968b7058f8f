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
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError, SourceURIError
from ..types import Chunk, SourceItem, StreamInfo
from .base import GeneratorSource


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
