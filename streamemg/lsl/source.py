"""``lsl:`` source: live EMG from Lab Streaming Layer outlets (amplifiers, the LSL simulator).

URIs::

    lsl:name=Amp1                  the stream named Amp1
    lsl:type=EMG                   every EMG stream, also the ones that appear while running
    lsl:source_id=ABC123           the stream of one device
    lsl:type=EMG&hostname=lab-pc   several properties must all match
    lsl:Amp1                       short for lsl:name=Amp1

Query parameters (after ``?``): ``channels=emg|all|LABEL,LABEL`` (default ``emg``: the channels typed EMG when
the stream declares channel types, else all), ``poll_ms`` (1: the shortest poll interval), ``chunk_ms`` (50,
largest chunk per pull), ``lost_s`` (2: silence after which an outlet that is no longer visible counts as
lost), ``dejitter`` (1), ``buffer_s`` (30, inlet buffer).

How it works
------------
* Discovery uses a liblsl ``ContinuousResolver``: liblsl resolves in its own background thread and
  ``results()`` only copies the current list (microseconds), so discovery never blocks anything. (One-shot
  ``resolve_byprop`` calls were measured on this kind of setup to overrun a 0.5 s timeout by 5 s whenever
  nothing matched, holding a worker thread for that long; the continuous resolver does not.)
* A matching stream gets an inlet with clock synchronisation, dejittering and monotonic timestamps
  (``proc_clocksync | proc_dejitter | proc_monotonize``). Opening (connect, full description, the first
  clock-offset estimate, which takes about 0.6 s) runs on a small pool off the event loop, so a new stream
  never delays the ones already flowing.
* One poll task pulls every inlet every ``poll_ms`` or more (adaptive: see :data:`_POLL_PER_INLET_S`) on the event
  loop itself: ``pull_chunk(timeout=0.0, max_samples=bounded, dest_obj=preallocated)`` through liblsl's C call
  with its arguments built once and *without releasing the GIL*: it returns at once with what has arrived
  (about 1.3 µs for an empty pull), nothing waits inside liblsl, and no memory is allocated for the samples
  besides the Chunk itself. (A pull thread was measured to lose to the GIL: every foreign call released it, and
  taking it back while the loop was busy waited up to the interpreter's 5 ms switch interval, so a pass over 64
  inlets took 0.1 ms idle but 280 ms p99 next to a busy thread; see docs/performance.md.)
* Channel labels, types and units come from ``desc/channels/channel``; values are converted to µV
  (V, mV, µV, nV and the power-of-ten codes); a missing or non-voltage unit is taken as µV and noted in
  ``StreamInfo.meta``.
* When an outlet vanishes (the inlet reports it lost, or it stops sending and is no longer visible) the
  stream is shown as ``RECONNECTING``; when an outlet with the same ``source_id`` appears again a fresh
  inlet is opened (fresh clock/dejitter state) and the stream goes on under the same stream id, without a
  restart. A changed rate or channel count is announced with a new StreamInfo. A fresh inlet can stamp its
  first samples from zero (before it has seen a real timestamp, liblsl deduces theirs from 0.0); stamps from
  before the inlet was opened are deduced again at the nominal rate (:class:`_InletReader`), so a stream's
  timestamps keep increasing across a reconnection.
* Startup at any count: listing the streams and opening inlets run on two separate thread pools
  (:class:`~streamemg.lsl.executor.LSLExecutor`, whose timeouts count only the call itself), so a hundred
  outlets appearing at once never make the listing time out behind the opens, and neither delays the pulls.
  A stream whose inlet cannot be opened yet is said once (a warning), shown as ``CONNECTING`` and retried with
  backoff.
* The source never gives up by itself: when the resolver or the pull loop fails (a liblsl error, a call that
  does not return), it is logged and restarted with backoff while the streams already open keep flowing.
  Only a problem that a retry cannot fix (a stream named explicitly that cannot be classified, a channel
  selection the stream does not have) ends the source.
* A stream with an irregular rate (``nominal_srate == 0``) or string samples cannot be classified: selected
  by name or source_id it is an error (:class:`~streamemg.errors.StreamRateError` /
  :class:`~streamemg.errors.SourceError`); found through a wider query (``type=EMG``) it is skipped with a
  warning so the other streams go on.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import logging
import math
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import unquote

import numpy as np

from ..clock import Clock, monotonic
from ..errors import ConfigError, SourceError, SourceURIError, StreamRateError
from ..sources.base import split_uri
from ..types import Chunk, SourceItem, StatusEvent, StreamInfo, StreamStatus
from .executor import ChannelPlan, LSLExecutor, import_pylsl, plan_channels, read_channel_desc

log = logging.getLogger(__name__)

#: Stream properties a query may use.
QUERY_PROPS: tuple[str, ...] = ("name", "type", "source_id", "hostname")
#: URI parameter -> LSLSourceSettings field
_PARAMS: dict[str, str] = {
    "channels": "channels",
    "poll_ms": "poll_s",
    "chunk_ms": "chunk_s",
    "lost_s": "lost_after_s",
    "dejitter": "dejitter",
    "buffer_s": "buffer_s",
}


@dataclass(frozen=True, slots=True)
class LSLSourceSettings:
    """How the ``lsl:`` source finds and reads streams.

    Attributes:
        query: ((property, value), ...): all must match; properties from :data:`QUERY_PROPS`.
        channels: "emg", "all" or comma-separated channel labels (see :func:`streamemg.lsl.executor.plan_channels`).
        poll_s: the shortest interval between two passes over the inlets, seconds. The interval grows with the
            number of open inlets (:data:`_POLL_PER_INLET_S` each) and with the time a pass takes, so a few
            streams are polled every millisecond (low latency) and hundreds less often, in larger chunks (less
            CPU per sample, fuller batches).
        chunk_s: the largest chunk one pull returns, seconds of samples (bounds ``max_samples``).
        max_pulls: pulls per stream per poll when a backlog has built up (after a stall).
        scan_s: seconds between looks at the resolver's list of streams.
        forget_s: the resolver drops an outlet it has not heard from for this long.
        lost_after_s: a stream silent this long whose outlet is no longer visible is shown as reconnecting.
        open_timeout_s: limit for each step of opening an inlet (connect, description, clock offset).
        call_timeout_s: limit for every other LSL call (pulling, listing streams).
        buffer_s: seconds of samples liblsl buffers per inlet while streamemg is busy.
        dejitter: smooth timestamps (liblsl's dejitter); clock synchronisation and monotonic timestamps are
            always on.
        queue_size: items (the chunks of one pull pass over every inlet, or one announcement) held for a slow
            consumer; when full, pulling pauses and liblsl buffers (up to ``buffer_s``).
        open_workers: inlets opened concurrently (each takes ~0.6 s for the first clock-offset estimate, most
            of it waiting on the network, so many can wait at once).
        warn_after_s: log a warning when nothing matched for this long.
        retry_max_s: longest wait between attempts to open an inlet that could not be opened yet (the wait
            doubles from 1 s up to this).
        restart_max_s: longest wait before restarting a failed resolver or pull loop (the wait doubles from
            0.5 s up to this; it starts again from 0.5 s once a restarted loop has run for a minute).
    """

    query: tuple[tuple[str, str], ...]
    channels: str = "emg"
    poll_s: float = 0.001
    chunk_s: float = 0.05
    max_pulls: int = 16
    scan_s: float = 0.25
    forget_s: float = 2.0
    lost_after_s: float = 2.0
    open_timeout_s: float = 3.0
    call_timeout_s: float = 5.0
    buffer_s: int = 30
    dejitter: bool = True
    queue_size: int = 1024
    open_workers: int = 32
    warn_after_s: float = 10.0
    retry_max_s: float = 10.0
    restart_max_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.query:
            raise ConfigError(
                "LSLSourceSettings.query=(): give at least one property to match, e.g. name=Amp1 or type=EMG"
            )
        for prop, value in self.query:
            if prop not in QUERY_PROPS:
                raise ConfigError(
                    f"LSLSourceSettings.query property {prop!r} is not supported; use one of {', '.join(QUERY_PROPS)}"
                )
            if not value:
                raise ConfigError(f"LSLSourceSettings.query {prop}= is empty: give the value to match, e.g. {prop}=X")
            if "'" in value:
                raise ConfigError(f"LSLSourceSettings.query {prop}={value!r}: values cannot contain a single quote")
        if not self.channels.strip():
            raise ConfigError("LSLSourceSettings.channels='': use emg, all or a comma-separated list of labels")
        positive = {
            "poll_s": (self.poll_s, "e.g. poll_ms=1"),
            "chunk_s": (self.chunk_s, "e.g. chunk_ms=50"),
            "scan_s": (self.scan_s, "e.g. 0.25"),
            "forget_s": (self.forget_s, "e.g. 2"),
            "lost_after_s": (self.lost_after_s, "e.g. lost_s=2"),
            "open_timeout_s": (self.open_timeout_s, "e.g. 3"),
            "call_timeout_s": (self.call_timeout_s, "e.g. 5"),
            "warn_after_s": (self.warn_after_s, "e.g. 10"),
            "retry_max_s": (self.retry_max_s, "e.g. 10"),
            "restart_max_s": (self.restart_max_s, "e.g. 10"),
        }
        for field_name, (seconds, example) in positive.items():
            if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
                raise ConfigError(
                    f"LSLSourceSettings.{field_name}={seconds!r}: must be a positive number of seconds ({example})"
                )
        if self.poll_s > 1.0:
            raise ConfigError(f"LSLSourceSettings.poll_s={self.poll_s!r}: poll at least once a second (poll_ms<=1000)")
        for field_name, ivalue in (
            ("max_pulls", self.max_pulls),
            ("buffer_s", self.buffer_s),
            ("queue_size", self.queue_size),
            ("open_workers", self.open_workers),
        ):
            if isinstance(ivalue, bool) or not isinstance(ivalue, int) or ivalue < 1:
                raise ConfigError(f"LSLSourceSettings.{field_name}={ivalue!r}: must be a whole number >= 1")

    @property
    def explicit(self) -> bool:
        """True when the query names one stream (by name or source_id) rather than a family (type)."""
        return any(p in ("name", "source_id") for p, _ in self.query)

    def describe_query(self) -> str:
        return " and ".join(f"{p}='{v}'" for p, v in self.query)


def parse_uri(uri: str) -> LSLSourceSettings:
    """``lsl:name=Amp1?poll_ms=5`` -> settings. Raises SourceURIError / ConfigError with the fix."""
    scheme, body, params = split_uri(uri)
    if scheme != "lsl":
        raise SourceURIError(f"{uri!r} is not an lsl: URI (e.g. lsl:name=Amp1, lsl:type=EMG)")
    query: list[tuple[str, str]] = []
    body = body.strip()
    if body.startswith("//"):
        body = body[2:]
    for part in filter(None, body.split("&")):
        prop, sep, value = part.partition("=")
        if not sep:
            if query or "&" in body:
                raise SourceURIError(f"{uri!r}: {part!r} is not property=value (e.g. lsl:type=EMG&name=Amp1)")
            prop, value = "name", part
        prop = prop.strip().lower()
        if prop not in QUERY_PROPS:
            raise SourceURIError(
                f"{uri!r}: unknown stream property {prop!r}; use {', '.join(QUERY_PROPS)} "
                "(e.g. lsl:name=Amp1, lsl:type=EMG, lsl:source_id=ABC123)"
            )
        query.append((prop, unquote(value.strip())))
    if not query:
        raise SourceURIError(
            f"{uri!r} does not say which LSL stream to read; write e.g. lsl:name=Amp1, lsl:type=EMG or "
            "lsl:source_id=ABC123"
        )
    kwargs: dict[str, Any] = {"query": tuple(query)}
    for key, raw in params.items():
        target = _PARAMS.get(key)
        if target is None:
            raise SourceURIError(f"{uri!r}: unknown parameter {key!r}; known: {', '.join(sorted(_PARAMS))}")
        try:
            if target == "channels":
                kwargs[target] = raw
            elif target == "dejitter":
                if raw.lower() not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(raw)
                kwargs[target] = raw.lower() in ("1", "true", "yes", "on")
            elif target == "buffer_s":
                kwargs[target] = int(raw)
            elif key.endswith("_ms"):
                kwargs[target] = float(raw) / 1000.0
            else:
                kwargs[target] = float(raw)
        except ValueError as exc:
            raise SourceURIError(f"{uri!r}: parameter {key}={raw!r} is not a valid value") from exc
    return LSLSourceSettings(**kwargs)


def from_uri(uri: str) -> LSLSource:
    """The Source for an ``lsl:`` URI (not yet entered; pylsl is imported on entry)."""
    return LSLSource(uri, parse_uri(uri))


# ----------------------------------------------------------------------------------------------- internals


@dataclass(eq=False)
class _Stream:
    """Runtime state of one matched outlet identity (one source_id), across reconnections."""

    key: str
    stream_id: str
    name: str
    info: StreamInfo
    plan: ChannelPlan
    uid: str
    fs: float
    fmt: int
    n_stream_channels: int
    max_samples: int
    buf: np.ndarray
    inlet: Any = None
    reader: _InletReader | None = None
    last_data: float = 0.0
    seen_at: float = 0.0
    samples: int = 0
    dead_uids: set[str] = field(default_factory=set)


class _InletReader:
    """Pulls one inlet into preallocated buffers with liblsl's C call and arguments built once.

    pylsl's ``pull_chunk`` builds its ctypes arguments and a timestamp array on every call (about 15 µs); with
    hundreds of inlets polled every few milliseconds that was the largest single cost of LSL ingest. Here the
    arguments (the inlet handle, pointers to the preallocated sample and timestamp buffers, their sizes, a zero
    timeout and the error code) are made once per inlet, so a pull is one foreign call. That call goes through a
    GIL-holding twin of pylsl's function (:func:`_gil_holding`): with a zero timeout it never waits, and releasing
    the GIL for a microsecond of C only invites a wait of up to the interpreter's switch interval to get it back.
    Where pylsl does not expose its per-format C function (other versions), the reader falls back to
    ``pull_chunk``.

    A fresh inlet can hand out its first samples stamped from zero (liblsl gives samples that arrive before the
    first sample with a real timestamp a time deduced from the last real one, which a new inlet does not have
    yet: 0.0; seen here after a reconnection as a first stamp of 8.6e-05 s). Stamps before ``floor`` cannot be
    this session's: they are deduced again at the nominal rate from the first real stamp of the pull, or, if
    the pull holds none, backwards from ``clock()`` (and the next real stamps are kept from falling behind those).

    Attributes:
        buf: ``(max_samples, stream channels)`` samples in the stream's dtype (overwritten by every pull).
        ts: ``(max_samples,)`` float64 timestamps (overwritten by every pull).
        repaired: samples whose stamps were deduced again (see above).
    """

    __slots__ = ("_args", "_channels", "_clock", "_dt", "_err", "_fn", "_handle_error", "_held", "buf", "floor",
                 "inlet", "repaired", "ts")

    def __init__(self, inlet: Any, buf: np.ndarray, handle_error: Any, *, floor: float = -math.inf,
                 fs: float = 0.0, clock: Any = None) -> None:
        """``floor``: the earliest timestamp this inlet can hand out (LSL clock, s); ``fs``: the nominal rate;
        ``clock``: the LSL clock (``pylsl.local_clock``), for a pull with no real stamp at all."""
        self.inlet = inlet
        self.buf = buf
        self.ts = np.empty(buf.shape[0], dtype=np.float64)
        self.floor = float(floor)
        self._dt = 1.0 / fs if fs > 0 else 0.0
        self._clock = clock
        self._held = -math.inf  # while deduced stamps run ahead of the real ones, the real ones are kept above
        self.repaired = 0
        self._channels = buf.shape[1]
        self._err = ctypes.c_int(0)
        self._handle_error = handle_error
        fn = getattr(inlet, "do_pull_chunk", None)
        obj = getattr(inlet, "obj", None)
        usable = fn is not None and obj is not None and getattr(inlet, "np_dtype", None) == buf.dtype
        self._fn = _gil_holding(fn) if usable else None
        self._args = (
            (obj, ctypes.c_void_p(buf.ctypes.data), ctypes.c_void_p(self.ts.ctypes.data), ctypes.c_size_t(buf.size),
             ctypes.c_size_t(buf.shape[0]), ctypes.c_double(0.0), ctypes.byref(self._err))
            if usable else ()
        )

    def pull(self) -> int:
        """Pull what has arrived (never waits) into :attr:`buf` / :attr:`ts`; the number of samples.

        Raises:
            pylsl's LostError when the outlet is gone; its InternalError (a RuntimeError) on other failures.
        """
        fn = self._fn
        if fn is None:
            _, ts = self.inlet.pull_chunk(timeout=0.0, max_samples=self.buf.shape[0], dest_obj=self.buf,
                                             as_numpy=True)
            n = len(ts)
            self.ts[:n] = ts
        else:
            values = fn(*self._args)
            if self._err.value:
                code, self._err.value = self._err.value, 0
                self._handle_error(code)
            n = int(values) // self._channels
        if n and (self.ts[0] < self.floor or self.ts[0] <= self._held):  # one comparison on the usual path
            self._restamp(n)
        return n

    def _restamp(self, n: int) -> None:
        """Deduce the stamps before :attr:`floor` again (class docstring); keep real ones above deduced ones."""
        ts = self.ts[:n]
        bad = ts < self.floor
        if bad.any():
            real = np.flatnonzero(~bad)
            k = np.arange(n, dtype=np.float64)
            if real.size:
                ref, at = float(ts[real[0]]), float(real[0])
            else:
                ref, at = (float(self._clock()) if self._clock is not None else self.floor), float(n - 1)
            ts[bad] = ref - (at - k[bad]) * self._dt
            self.repaired += int(np.count_nonzero(bad))
            if not real.size:
                self._held = float(ts[-1])
                return
        if self._held > -math.inf:  # real stamps after deduced ones: never behind them
            lift = self._held + self._dt * np.arange(1, n + 1)
            behind = ts <= lift
            if behind.any():
                ts[behind] = lift[behind]
                self._held = float(ts[-1]) if behind[-1] else -math.inf
            else:
                self._held = -math.inf


_GIL_HOLDING: dict[str, Any] = {}


def _gil_holding(fn: Any) -> Any:
    """The same liblsl function as pylsl's ``fn`` (a ``ctypes.CDLL`` function), called without releasing the GIL.

    The library is opened a second time as a ``ctypes.PyDLL``: ``dlopen`` returns the handle already loaded, so
    the function and every handle pylsl made are the same; only the call convention of ctypes differs (PyDLL keeps
    the GIL). Used for non-waiting calls only (pulls with a zero timeout). Falls back to ``fn`` itself when the
    library cannot be found this way.
    """
    name = getattr(fn, "__name__", None)
    if name is None:
        return fn
    twin = _GIL_HOLDING.get(name)
    if twin is None:
        try:
            from pylsl import lib as pylsl_lib

            path = pylsl_lib.lib._name
            twin = getattr(ctypes.PyDLL(path), name)
        except (ImportError, AttributeError, OSError) as exc:
            log.debug("liblsl's %s stays GIL-releasing (%s)", name, exc)
            return fn
        twin.restype = fn.restype
        twin.argtypes = fn.argtypes
        _GIL_HOLDING[name] = twin
    return twin


#: (stream, inlet, plan, reader): what one pull needs, captured together on the loop
_PullJob = tuple[_Stream, Any, ChannelPlan, _InletReader]


@dataclass(frozen=True, slots=True)
class _Failure:
    """A background task failed; the iterator re-raises ``error``."""

    error: BaseException


class _Fatal(Exception):
    """A problem that retrying cannot fix: ends the source with ``error`` (raised from the iterator)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


_END = object()

#: the poll interval is at least this many times the time one pass took (adaptive polling)
_POLL_DUTY = 4.0
#: ... and at least this much per open inlet (s): 1.2 ms for 8 inlets, 4.8 ms for 32, 9.6 ms for 64, the cap
#: from 167 on. Polling faster than the data arrives only splits it into more, smaller hand-offs and engine
#: batches: at 32 streams a 1 ms interval cost 0.14 core more than 5 ms (docs/performance.md), while at 1-8
#: streams it takes about 2 ms off the median decision latency for 0.05-0.08 core.
_POLL_PER_INLET_S = 0.00015
#: ... and at most this long (s), whatever a pass took
_MAX_POLL_S = 0.025
#: a stream found but not open after this long (s) is shown as connecting
_CONNECTING_AFTER_S = 1.0
#: a restarted loop that has run this long (s) starts its backoff from the beginning again
_HEALTHY_AFTER_S = 60.0


def _backoff(first_s: float, max_s: float) -> Any:
    """first, 2x, 4x, ... capped at ``max_s``, each with ±20 % jitter (restarts of many sources do not align)."""
    import random

    delay = first_s
    while True:
        yield min(max_s, delay) * random.uniform(0.8, 1.2)
        delay = min(max_s, delay * 2.0)


def _stream_key(source_id: str, hostname: str, name: str, type_: str) -> str:
    """Identity across reconnections: the source_id, or (without one) host + name + type."""
    return f"sid:{source_id}" if source_id else f"host:{hostname}/{name}/{type_}"


def _release_blocking(holder: list[Any]) -> None:
    """Drop the last references to pylsl objects in a worker thread (their destructors may block briefly)."""
    while holder:
        obj = holder.pop()
        del obj


class LSLSource:
    """Async context manager + async iterator of SourceItems for an ``lsl:`` URI.

    Args:
        uri: the URI (shown on the dashboard).
        settings: what to match and how to read.
        clock: monotonic clock used for silence detection (injectable for tests).
    """

    realtime = True

    def __init__(self, uri: str, settings: LSLSourceSettings, clock: Clock = monotonic) -> None:
        self.uri = uri
        self.settings = settings
        self.clock = clock
        self._pylsl: Any = None
        self._lost_error: type[BaseException] = RuntimeError
        self._queue: asyncio.Queue[Any] | None = None
        self._ready: collections.deque[Chunk] = collections.deque()
        self._tasks: list[asyncio.Task[None]] = []
        self._open_tasks: set[asyncio.Task[None]] = set()
        self._lister: LSLExecutor | None = None
        self._control: LSLExecutor | None = None
        self._resolver: Any = None
        self._streams: dict[str, _Stream] = {}
        self._ignored: set[str] = set()
        self._opening: set[str] = set()
        self._retry_at: dict[str, float] = {}
        self._ids_in_use: set[str] = set()
        self._pending_ids: dict[str, str] = {}  # stream key -> stream id, for streams found but not open yet
        self._open_failures: dict[str, int] = {}
        self._found_at: dict[str, float] = {}  # stream key -> when found, until open or shown as connecting
        self._closed = False
        self._entered = False
        #: chunks delivered per stream id (for tests and diagnostics)
        self.chunks: collections.Counter[str] = collections.Counter()
        #: restarts of the background loops after a failure ("resolver", "puller")
        self.restarts: collections.Counter[str] = collections.Counter()

    def fresh(self) -> LSLSource:
        """A new, un-entered source with the same URI, settings and clock (for a restart after a failure)."""
        return LSLSource(self.uri, self.settings, self.clock)

    # ------------------------------------------------------------------ context manager
    async def __aenter__(self) -> LSLSource:
        if self._entered:
            raise SourceError(f"source {self.uri} was already opened; create a new one with open_source()")
        pylsl = import_pylsl()
        self._pylsl = pylsl
        self._lost_error = pylsl.util.LostError
        self._entered = True
        self._queue = asyncio.Queue(maxsize=self.settings.queue_size)
        tag = uuid.uuid4().hex[:6]
        # two pools, so that listing and opening never wait for one another (pulls run on the loop: _poll_loop)
        self._lister = LSLExecutor(f"lsl-list-{tag}", 1)
        self._control = LSLExecutor(f"lsl-open-{tag}", self.settings.open_workers)
        self._tasks = [
            asyncio.create_task(self._supervise("resolver", self._scan_loop), name=f"lsl-scan:{self.uri}"),
            asyncio.create_task(self._supervise("puller", self._poll_loop), name=f"lsl-poll:{self.uri}"),
        ]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the background tasks and release every inlet and the resolver. Idempotent."""
        if self._closed:
            return
        self._closed = True
        pending: set[asyncio.Task[None]] = {*self._tasks, *self._open_tasks}
        self._tasks = []
        self._open_tasks.clear()
        while pending:  # cancel again if a task ever swallowed a cancellation
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        holder: list[Any] = [s.inlet for s in self._streams.values() if s.inlet is not None]
        for s in self._streams.values():
            s.inlet = s.reader = None
        if self._resolver is not None:
            holder.append(self._resolver)
            self._resolver = None
        if self._control is not None and holder:
            try:
                await self._control.call(_release_blocking, holder, timeout_s=5.0, what="closing LSL inlets")
            except Exception as exc:  # closing must not hide the reason we are closing
                log.debug("closing LSL inlets: %s", exc)
        holder.clear()
        for ex in (self._lister, self._control):
            if ex is not None:
                ex.close()
        if self._queue is not None:
            # wake a consumer blocked in __anext__
            try:
                self._queue.put_nowait(_END)
            except asyncio.QueueFull:
                pass

    # ------------------------------------------------------------------ iteration
    def __aiter__(self) -> LSLSource:
        return self

    async def __anext__(self) -> SourceItem:
        ready = self._ready
        if ready:  # the rest of a pull pass's chunks: no queue round trip per chunk
            return ready.popleft()
        if self._queue is None:
            raise SourceError(f"source {self.uri} is not open; use `async with open_source(uri) as src:`")
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if type(item) is list:
            ready.extend(item)
            return ready.popleft()
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, _Failure):
            raise item.error
        assert isinstance(item, (StreamInfo, Chunk, StatusEvent))
        return item

    # ------------------------------------------------------------------ background tasks
    async def _supervise(self, what: str, loop_fn: Any) -> None:
        """Run a background loop and restart it with backoff when it fails; never swallowed, never fatal.

        A :class:`_Fatal` error (one a retry cannot fix) ends the iteration with its error. Any other failure
        (a liblsl error, a call that did not return in time) is logged with the wait before the restart; the
        streams already open keep flowing meanwhile (the other loop and their inlets are untouched).
        """
        delays = _backoff(0.5, self.settings.restart_max_s)
        while True:
            started = self.clock()
            try:
                await loop_fn()
                return
            except asyncio.CancelledError:
                raise
            except _Fatal as fatal:
                assert self._queue is not None
                await self._queue.put(_Failure(fatal.error))
                return
            except Exception as exc:
                if self.clock() - started > _HEALTHY_AFTER_S:
                    delays = _backoff(0.5, self.settings.restart_max_s)
                delay = next(delays)
                self.restarts[what] += 1
                log.warning(
                    "LSL %s of %s failed (%s: %s); restarting it in %.1f s, the open streams go on",
                    what, self.uri, type(exc).__name__, exc, delay,
                )
                if what == "resolver":
                    await self._drop_resolver()
                await asyncio.sleep(delay)

    async def _drop_resolver(self) -> None:
        """Release a failed resolver (its destructor may block: off the loop); the restarted scan makes a new one."""
        resolver, self._resolver = self._resolver, None
        if resolver is None or self._control is None or self._control.closed:
            return
        holder = [resolver]
        del resolver
        try:
            await self._control.call(_release_blocking, holder, timeout_s=5.0, what="releasing a failed LSL resolver")
        except SourceError as exc:
            log.debug("%s", exc)

    async def _put(self, item: Any) -> None:
        assert self._queue is not None
        await self._queue.put(item)

    def _make_resolver(self) -> Any:
        pylsl = self._pylsl
        s = self.settings
        if len(s.query) == 1:
            prop, value = s.query[0]
            return pylsl.ContinuousResolver(prop=prop, value=value, forget_after=s.forget_s)
        return pylsl.ContinuousResolver(pred=s.describe_query(), forget_after=s.forget_s)

    async def _scan_loop(self) -> None:
        s = self.settings
        assert self._lister is not None
        self._resolver = await self._lister.call(
            self._make_resolver, timeout_s=s.call_timeout_s, what="starting the LSL resolver"
        )
        started = self.clock()
        warned = False
        while True:
            resolver = self._resolver
            if resolver is None:
                raise SourceError("the LSL resolver is gone")
            infos = await self._lister.call(resolver.results, timeout_s=s.call_timeout_s, what="listing LSL streams")
            del resolver
            now = self.clock()
            visible: dict[str, list[Any]] = {}
            for info in infos:
                key = _stream_key(info.source_id(), info.hostname(), info.name(), info.type())
                visible.setdefault(key, []).append(info)
            to_open: list[tuple[str, Any]] = []
            for key, candidates in visible.items():
                if key in self._ignored or key in self._opening:
                    continue
                stream = self._streams.get(key)
                if stream is not None and stream.inlet is not None:
                    if any(c.uid() == stream.uid for c in candidates):
                        stream.seen_at = now
                        continue
                    # a different outlet with this identity while ours is silent: it was replaced
                    if now - stream.last_data <= s.lost_after_s:
                        continue
                    await self._lose(stream, "outlet replaced")
                dead = stream.dead_uids if stream is not None else set()
                fresh = [c for c in candidates if c.uid() not in dead]
                if not fresh or now < self._retry_at.get(key, 0.0):
                    continue
                newest = max(fresh, key=lambda c: c.created_at())
                if not self._check_usable(key, newest):
                    continue
                to_open.append((key, newest))
            for key, info in to_open:
                if key not in self._streams and key not in self._pending_ids:
                    self._pending_ids[key] = self._new_stream_id(info.name())
                    self._found_at[key] = now
                self._opening.add(key)
                task = asyncio.create_task(self._guarded_attach(key, info), name=f"lsl-open:{info.name()}")
                self._open_tasks.add(task)
                task.add_done_callback(self._open_tasks.discard)
            for key, found in list(self._found_at.items()):  # opening slowly (many at once): say so
                if key in self._streams:
                    del self._found_at[key]
                elif now - found > _CONNECTING_AFTER_S and key in self._pending_ids:
                    del self._found_at[key]
                    await self._put(StatusEvent(self._pending_ids[key], StreamStatus.CONNECTING, "opening its inlet"))
            for stream in list(self._streams.values()):
                if (
                    stream.inlet is not None
                    and now - stream.last_data > s.lost_after_s
                    and now - stream.seen_at > s.lost_after_s
                    and stream.key not in visible
                ):
                    await self._lose(stream, f"no data for {now - stream.last_data:.1f} s and the outlet is gone")
            if not warned and not self._streams and now - started > s.warn_after_s:
                warned = True
                log.warning(
                    "no LSL stream with %s is visible after %.0f s (still looking). Check the spelling, that the "
                    "outlet is running, and that liblsl's configuration lets this machine see it.",
                    s.describe_query(),
                    now - started,
                )
            await asyncio.sleep(s.scan_s)

    def _check_usable(self, key: str, info: Any) -> bool:
        """Refuse irregular-rate and string streams: an error for an explicit query, a warning otherwise."""
        pylsl = self._pylsl
        name = info.name()
        problem: SourceError | None = None
        if info.nominal_srate() <= 0:
            problem = StreamRateError(
                f"LSL stream {name!r} (type {info.type()!r}) has an irregular sampling rate (nominal_srate 0). "
                "streamemg needs a regular-rate stream: the spectral features and windows are defined on a fixed "
                "sample rate. Select the amplifier's signal stream (a regular-rate stream), not an event/marker "
                "stream, or have the outlet declare its nominal rate."
            )
        elif info.channel_format() in (pylsl.cf_string, pylsl.cf_undefined):
            problem = SourceError(
                f"LSL stream {name!r} (type {info.type()!r}) carries strings, not numeric samples; streamemg "
                "classifies numeric EMG streams (int16, int32, float32 or double)."
            )
        if problem is None:
            return True
        if self.settings.explicit:
            raise _Fatal(problem)
        self._ignored.add(key)
        log.warning("%s Skipping it; the other matching streams go on.", problem)
        return False

    async def _guarded_attach(self, key: str, info: Any) -> None:
        try:
            await self._attach(key, info)
        except asyncio.CancelledError:
            raise
        except SourceError as exc:
            if self.settings.explicit:  # the one stream asked for cannot be read as asked: say so and end
                await self._put(_Failure(exc))
            else:  # one of a family (type=EMG): skip it, the others go on
                self._ignored.add(key)
                log.warning("%s Skipping this stream; the other matching streams go on.", exc)
        except BaseException as exc:
            await self._put(_Failure(exc))
        finally:
            self._opening.discard(key)

    def _open_blocking(self, info: Any) -> tuple[Any, Any, tuple[list[str | None], ...]]:
        """Create an inlet, fetch the full description, subscribe, and prime the clock offset (blocking).

        Returns the inlet, the full pylsl StreamInfo and its channel (labels, units, types).
        """
        pylsl = self._pylsl
        s = self.settings
        flags = pylsl.proc_clocksync | pylsl.proc_monotonize | (pylsl.proc_dejitter if s.dejitter else 0)
        inlet = pylsl.StreamInlet(info, max_buflen=s.buffer_s, max_chunklen=0, recover=False, processing_flags=flags)
        try:
            full = inlet.info(timeout=s.open_timeout_s)
            inlet.open_stream(timeout=s.open_timeout_s)
            # The first clock-offset estimate takes ~0.6 s; done here so that the first pull does not block.
            inlet.time_correction(timeout=s.open_timeout_s)
            channels = read_channel_desc(full)  # XML walk through ctypes: kept off the loop too
        except BaseException:
            holder = [inlet]
            del inlet
            _release_blocking(holder)
            raise
        return inlet, full, channels

    async def _attach(self, key: str, info: Any) -> None:
        s = self.settings
        assert self._control is not None
        uid = info.uid()
        name = info.name()
        try:
            inlet, full, (labels, units, types) = await self._control.call(
                self._open_blocking, info, timeout_s=4 * s.open_timeout_s + 1.0, what=f"opening LSL stream {name!r}"
            )
        except (self._lost_error, RuntimeError, SourceError) as exc:
            # the outlet went away between listing and opening, or did not answer: try again later, with backoff
            failures = self._open_failures[key] = self._open_failures.get(key, 0) + 1
            delay = min(s.retry_max_s, 2.0 ** (failures - 1))
            self._retry_at[key] = self.clock() + delay
            existing = self._streams.get(key)
            if existing is not None and isinstance(exc, self._lost_error):
                existing.dead_uids.add(uid)
            if failures == 1:  # said once; the dashboard shows the stream as connecting meanwhile
                log.warning(
                    "could not open LSL stream %r yet (%s); retrying with backoff (at most every %g s)",
                    name, exc, s.retry_max_s,
                )
                sid = self._pending_ids.get(key)
                if sid is not None and existing is None:
                    self._found_at.pop(key, None)
                    await self._put(StatusEvent(sid, StreamStatus.CONNECTING, f"could not open yet ({exc}); retrying"))
            else:
                log.debug("could not open LSL stream %r yet (attempt %d: %s)", name, failures, exc)
            return
        self._open_failures.pop(key, None)
        holder = [inlet]
        del inlet
        try:
            if self._closed:
                return
            stream = self._streams.get(key)
            fs = float(full.nominal_srate())
            fmt = int(full.channel_format())
            n_ch = int(full.channel_count())
            plan = plan_channels(n_ch, labels, units, types, s.channels, stream_name=name)
            if plan.assumed_signal_uv:
                log.warning(
                    "LSL stream %r: channels %s declare no voltage unit (units: %s); their values are taken as µV",
                    name,
                    ", ".join(plan.assumed_signal_uv),
                    ", ".join(u or "none" for u in plan.units) or "none",
                )
            dtype = self._np_dtype(fmt)
            max_samples = int(min(65536, max(16, math.ceil(fs * s.chunk_s))))
            now = self.clock()
            if stream is None:
                stream_id = self._pending_ids.pop(key, None) or self._new_stream_id(name)
                display = name if stream_id == f"lsl:{name}" else stream_id.removeprefix("lsl:")
            else:
                stream_id, display = stream.stream_id, stream.name
            sinfo = StreamInfo(
                stream_id=stream_id,
                name=display,
                fs=fs,
                channels=plan.labels,
                units="uV",
                source=self.uri,
                meta={
                    "transport": "lsl",
                    "lsl": {
                        "name": name,
                        "type": full.type(),
                        "source_id": full.source_id(),
                        "hostname": full.hostname(),
                        "uid": full.uid(),
                        "session_id": full.session_id(),
                        "channel_format": fmt,
                        "channel_count": n_ch,
                        "created_at": full.created_at(),
                    },
                    "channels": plan.describe(),
                },
            )
            buf = np.empty((max_samples, n_ch), dtype=dtype)
            if stream is None:
                stream = _Stream(
                    key=key,
                    stream_id=stream_id,
                    name=display,
                    info=sinfo,
                    plan=plan,
                    uid=uid,
                    fs=fs,
                    fmt=fmt,
                    n_stream_channels=n_ch,
                    max_samples=max_samples,
                    buf=buf,
                    last_data=now,
                    seen_at=now,
                )
                self._streams[key] = stream
                await self._put(sinfo)
            else:
                changed = sinfo.signature != stream.info.signature or sinfo.channels != stream.info.channels
                stream.info, stream.plan, stream.uid, stream.fs, stream.fmt = sinfo, plan, uid, fs, fmt
                stream.n_stream_channels, stream.max_samples, stream.buf = n_ch, max_samples, buf
                stream.last_data = stream.seen_at = now
                if changed:
                    await self._put(sinfo)
                await self._put(StatusEvent(stream_id, StreamStatus.LIVE, "outlet back; reading again"))
            # no sample of this inlet can be stamped before it was opened, less what its buffer can hold
            floor = self._pylsl.local_clock() - s.buffer_s - 5.0
            stream.reader = _InletReader(holder[0], buf, self._pylsl.util.handle_error, floor=floor, fs=fs,
                                         clock=self._pylsl.local_clock)
            stream.inlet = holder.pop()  # from here on the poll task pulls it
        finally:
            if holder and self._control is not None and not self._control.closed:
                await self._control.call(_release_blocking, holder, timeout_s=5.0, what="releasing an LSL inlet")

    def _np_dtype(self, fmt: int) -> np.dtype[Any]:
        pylsl = self._pylsl
        table = {
            pylsl.cf_float32: np.float32,
            pylsl.cf_double64: np.float64,
            pylsl.cf_int8: np.int8,
            pylsl.cf_int16: np.int16,
            pylsl.cf_int32: np.int32,
            pylsl.cf_int64: np.int64,
        }
        if fmt not in table:
            raise SourceError(f"LSL channel format {fmt} is not numeric; streamemg reads int8..int64, float32, double")
        return np.dtype(table[fmt])

    def _new_stream_id(self, name: str) -> str:
        base = f"lsl:{name}"
        candidate, k = base, 2
        while candidate in self._ids_in_use:
            candidate = f"{base}#{k}"
            k += 1
        self._ids_in_use.add(candidate)
        return candidate

    async def _lose(self, stream: _Stream, why: str) -> None:
        """Drop the stream's inlet, show it as reconnecting, and wait for its source_id to come back."""
        if stream.inlet is None:
            return
        holder = [stream.inlet, stream.reader]
        stream.inlet = stream.reader = None
        stream.dead_uids.add(stream.uid)
        ident = stream.key.split(":", 1)[1]
        what = "source_id" if stream.key.startswith("sid:") else "host/name/type"
        await self._put(
            StatusEvent(
                stream.stream_id, StreamStatus.RECONNECTING, f"{why}; waiting for {what} {ident!r} to come back"
            )
        )
        assert self._control is not None
        try:
            await self._control.call(_release_blocking, holder, timeout_s=5.0, what="releasing a lost LSL inlet")
        except SourceError as exc:
            log.debug("%s", exc)

    # ------------------------------------------------------------------ pulling
    @staticmethod
    def _pull_pass(
        batch: list[_PullJob], max_pulls: int, lost_error: type[BaseException]
    ) -> list[tuple[_Stream, Any, list[tuple[np.ndarray, np.ndarray]], BaseException | None]]:
        """Pull everything available from each inlet (never waits: timeout 0). Runs on the event loop.

        Each job carries the inlet with the plan and buffer that belong to it, so a reconnection that swaps the
        stream's inlet meanwhile can never pair an inlet with a foreign buffer.
        """
        results: list[tuple[_Stream, Any, list[tuple[np.ndarray, np.ndarray]], BaseException | None]] = []
        for stream, inlet, plan, reader in batch:
            pieces: list[tuple[np.ndarray, np.ndarray]] = []
            error: BaseException | None = None
            buf, ts = reader.buf, reader.ts
            cap = buf.shape[0]
            try:
                for _ in range(max_pulls):
                    n = reader.pull()
                    if n == 0:
                        break
                    pieces.append((plan.apply(buf[:n]), ts[:n].copy()))
                    if n < cap:
                        break
            except lost_error as exc:
                error = exc
            except RuntimeError as exc:  # pylsl InternalError / InvalidArgumentError: treat as lost, reconnect
                error = exc
            results.append((stream, inlet, pieces, error))
        return results

    async def _poll_loop(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            started = loop.time()
            batch = [
                (st, st.inlet, st.plan, st.reader)
                for st in self._streams.values()
                if st.inlet is not None and st.reader is not None
            ]
            n_open = len(batch)
            if batch:
                # on the loop, not in a thread: zero-timeout pulls never wait, and a thread would pay a GIL
                # hand-off per pull (module docstring)
                results = self._pull_pass(batch, s.max_pulls, self._lost_error)
                del batch
                now = self.clock()
                lost: list[tuple[_Stream, BaseException]] = []
                out: list[Chunk] = []
                counts = self.chunks
                for stream, inlet, pieces, error in results:
                    if stream.inlet is not inlet:
                        continue  # released meanwhile (lost / replaced): its samples belong to an old outlet
                    for data, ts in pieces:
                        stream.last_data = now
                        stream.samples += data.shape[0]
                        counts[stream.stream_id] += 1
                        out.append(Chunk(stream.stream_id, data, ts))
                    if error is not None:
                        lost.append((stream, error))
                del results
                if out:  # one queue item per pass (hundreds of chunks at lab scale), before any loss it found
                    await self._put(out)
                for stream, error in lost:
                    kind = "outlet closed" if isinstance(error, self._lost_error) else f"inlet failed ({error})"
                    await self._lose(stream, kind)
            # Adaptive interval: at least _POLL_PER_INLET_S per open inlet, and a pass (pull every inlet + hand the
            # chunks over) may use at most 1/_POLL_DUTY of it, so with hundreds of inlets the source polls less
            # often and pulls larger chunks instead of spending the loop's core on empty pulls; with a few inlets
            # it polls every poll_s.
            busy = loop.time() - started
            deadline += max(s.poll_s, min(_MAX_POLL_S, max(_POLL_PER_INLET_S * n_open, _POLL_DUTY * busy)))
            delay = deadline - loop.time()
            if delay < 0:  # fell behind (busy machine): do not try to catch up with a burst of polls
                deadline = loop.time()
                delay = 0.0
            await asyncio.sleep(delay)
