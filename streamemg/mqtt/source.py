"""``mqtt://`` and ``mqtts://`` sources: EMG from edge devices that speak the streamemg wire protocol v1.

URI::

    mqtt://[user[:password]@]host[:port]/<topic filter>[?shard=K/N&qos=1&client_id=...&share=GROUP]
    mqtts://[user[:password]@]host[:port]/<topic filter>[?ca=CA.pem&cert=CLIENT.pem&key=CLIENT.key&insecure=0]

``<topic filter>`` names the device level: ``mqtt://127.0.0.1/emg/+`` subscribes ``emg/+/data``,
``emg/+/meta`` and ``emg/+/status`` (``emg/+`` is the default; ``emg/dev01`` takes one device). A filter
that already ends in ``/data`` is accepted too. User name and password may also come from the environment
variables ``STREAMEMG_MQTT_USERNAME`` and ``STREAMEMG_MQTT_PASSWORD`` (the URI wins); the password is never
logged nor shown (the source's ``uri`` has it masked).

Behaviour, per device (one stream per device, ``stream_id = "mqtt:<device>"``):

- A :class:`~streamemg.types.StreamInfo` is announced before the first Chunk (channel labels from the
  retained meta message when its channel count matches), and again when the rate or channel count changes
  or the device restarts (a new segment).
- Chunks carry ``seq``: the sender's counter, rebased at each new segment so that the numbers the pipeline
  sees only ever grow; a forward jump is a gap (its messages and samples are counted as dropped, and the
  pipeline counts the same gap from ``Chunk.seq``).
- Duplicates (a seq seen in the last ``reorder_window`` messages) and late messages (older, unseen) are
  dropped here and counted; they never reach the pipeline.
- A restart is recognised when the seq jumps back further than ``reorder_window``, when the device comes
  back ``online`` and its next message does not continue its old seq and time, or when a forward jump would
  mean more than ``max_gap_s`` of lost data.
- A malformed message is counted (per device and in total) and logged at most once per
  ``malformed_log_interval_s`` per device; it never affects other devices.
- When the broker goes away, every stream gets ``StatusEvent(RECONNECTING)``; the source reconnects with
  exponential backoff (with jitter), resubscribes and resumes; each device's first message afterwards
  comes with ``StatusEvent(LIVE)`` whose detail gives the outage and the samples lost. (The lost samples are
  counted by the pipeline from ``Chunk.seq``, so ``StatusEvent.dropped_samples`` stays 0: nothing is
  counted twice.)
- ``?shard=K/N`` keeps only the devices whose id hashes to shard K (:func:`streamemg.mqtt.protocol.shard_of`),
  so N workers on one broker handle every device exactly once.

Counters (:class:`MqttCounters`) are on the source: ``source.counters`` (all devices) and
``source.device_counters`` (per device).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Any

import aiomqtt
import numpy as np

from ..clock import Clock, monotonic
from ..errors import BrokerError, ConfigError, ProtocolError, SourceURIError
from ..types import Chunk, SourceItem, StatusEvent, StreamInfo, StreamStatus
from .client import MqttConnection, backoff_delays, connect_within, disconnect_quietly, mask_password, parse_broker_uri
from .protocol import (
    DEFAULT_LIMITS,
    OFFLINE,
    ONLINE,
    DataMessage,
    DeviceMeta,
    ProtocolLimits,
    decode_data,
    decode_meta,
    decode_status,
    is_valid_device_id,
    parse_shard,
    shard_of,
)

log = logging.getLogger(__name__)

DEFAULT_TOPIC_FILTER = "emg/+"
#: messages handled from the incoming queue per await of the client (see MqttSource._iterate)
_DRAIN_BATCH = 256


# ============================================================================================ settings
@dataclass(frozen=True, slots=True)
class MqttSourceSettings:
    """Everything an MQTT source needs; built by :func:`from_uri`.

    Attributes:
        connection: broker address, credentials, TLS.
        topic_filter: the device-level filter, e.g. ``"emg/+"``; ``/data``, ``/meta`` and ``/status`` are
            appended to subscribe.
        shard: (k, n) to keep only devices with ``shard_of(device, n) == k``; None = all devices.
        share_group: MQTT shared-subscription group for the data topic (``$share/<group>/...``); None = off.
            Only useful with a broker whose shared subscriptions are sticky per device (see the scaling doc).
        qos: subscription QoS for data (0 or 1; meta and status always use 1).
        queue_size: messages buffered between the network and the pipeline; when full the oldest is
            dropped and counted (``overflow``) and shows up as a seq gap.
        reorder_window: how many messages back a seq counts as a duplicate/late message; further back it
            means the device restarted.
        max_gap_s: a forward seq jump implying more lost data than this (seconds) is a restart, not a gap.
        backoff_initial_s, backoff_max_s: reconnection delays (doubling, ±20 % jitter).
        start_timeout_s: a broker that is down when the source starts is retried with the same backoff (and a
            warning each time) for this long before BrokerError; None = keep trying until stopped, 0 = fail at
            once (a typo in the address is then seen immediately).
        malformed_log_interval_s: at most one warning per device per this many seconds about rejected messages.
        max_devices: devices tracked at most (protects memory from a flood of device ids); others are ignored.
        limits: protocol limits (sizes, rate, non-finite policy).
    """

    connection: MqttConnection
    topic_filter: str = DEFAULT_TOPIC_FILTER
    shard: tuple[int, int] | None = None
    share_group: str | None = None
    qos: int = 1
    queue_size: int = 20000
    reorder_window: int = 64
    max_gap_s: float = 3600.0
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 5.0
    start_timeout_s: float | None = None
    malformed_log_interval_s: float = 10.0
    max_devices: int = 10000
    limits: ProtocolLimits = DEFAULT_LIMITS

    def __post_init__(self) -> None:
        levels = self.topic_filter.split("/")
        if not self.topic_filter or any(not lv for lv in levels) or "#" in self.topic_filter:
            raise ConfigError(
                f"MqttSourceSettings.topic_filter={self.topic_filter!r}: give the device level of the topics, "
                "e.g. 'emg/+' (all devices) or 'emg/dev01' (no '#', no empty levels)"
            )
        if any("+" in lv and lv != "+" for lv in levels):
            raise ConfigError(f"MqttSourceSettings.topic_filter={self.topic_filter!r}: '+' must be a whole level")
        if levels[-1] != "+" and not is_valid_device_id(levels[-1]):
            raise ConfigError(
                f"MqttSourceSettings.topic_filter={self.topic_filter!r}: its last level must be '+' or a device id "
                "([A-Za-z0-9_-]{1,64})"
            )
        if self.shard is not None:
            k, n = self.shard
            if n < 1 or not 0 <= k < n:
                raise ConfigError(f"MqttSourceSettings.shard={self.shard!r}: need 0 <= k < n, e.g. (0, 2)")
        if self.share_group is not None and not is_valid_device_id(self.share_group):
            raise ConfigError(
                f"MqttSourceSettings.share_group={self.share_group!r}: use 1..64 characters from A-Za-z0-9_-"
            )
        if self.qos not in (0, 1):
            raise ConfigError(f"MqttSourceSettings.qos={self.qos!r}: use 0 or 1")
        if self.queue_size < 1:
            raise ConfigError(f"MqttSourceSettings.queue_size={self.queue_size!r}: give at least 1 message")
        if not 1 <= self.reorder_window <= 4096:
            raise ConfigError(f"MqttSourceSettings.reorder_window={self.reorder_window!r}: give 1..4096 messages")
        if not self.max_gap_s > 0:
            raise ConfigError(f"MqttSourceSettings.max_gap_s={self.max_gap_s!r}: give a positive number of seconds")
        if not (0 < self.backoff_initial_s <= self.backoff_max_s):
            raise ConfigError(
                f"MqttSourceSettings.backoff_initial_s={self.backoff_initial_s!r}, backoff_max_s="
                f"{self.backoff_max_s!r}: need 0 < initial <= max"
            )
        if self.start_timeout_s is not None and not self.start_timeout_s >= 0:
            raise ConfigError(
                f"MqttSourceSettings.start_timeout_s={self.start_timeout_s!r}: give seconds >= 0 (0 = fail at once)"
            )
        if not self.malformed_log_interval_s >= 0:
            raise ConfigError(
                f"MqttSourceSettings.malformed_log_interval_s={self.malformed_log_interval_s!r}: give >= 0 seconds"
            )
        if self.max_devices < 1:
            raise ConfigError(f"MqttSourceSettings.max_devices={self.max_devices!r}: give at least 1")

    def subscriptions(self) -> list[tuple[str, int]]:
        """(filter, qos) pairs: meta and status first (retained state arrives before data), then data."""
        data = f"{self.topic_filter}/data"
        if self.share_group:
            data = f"$share/{self.share_group}/{data}"
        return [(f"{self.topic_filter}/meta", 1), (f"{self.topic_filter}/status", 1), (data, self.qos)]


_SOURCE_PARAMS = ("shard", "share", "qos", "queue", "non_finite", "reorder_window", "start_timeout")


def from_uri(uri: str, clock: Clock = monotonic) -> MqttSource:
    """Create (not yet enter) an MQTT source from ``mqtt[s]://[user[:password]@]host[:port]/<filter>[?...]``.

    Query parameters: ``shard=K/N``, ``share=GROUP``, ``qos=0|1``, ``queue=N`` (messages buffered),
    ``non_finite=flag|reject``, ``reorder_window=N``, ``start_timeout=S`` (how long a broker that is down at
    start is retried; default: until stopped; 0: fail at once), ``client_id=ID``, ``keepalive=S``, and for mqtts:
    ``ca=FILE``, ``cert=FILE``, ``key=FILE``, ``insecure=0|1``.
    """
    connection, path, params = parse_broker_uri(uri, "source")
    unknown = sorted(set(params) - set(_SOURCE_PARAMS))
    if unknown:
        raise SourceURIError(
            f"MQTT source {mask_password(uri)!r}: unknown option(s) {', '.join(unknown)}; known: "
            f"{', '.join(_SOURCE_PARAMS)}, client_id, keepalive, ca, cert, key, insecure"
        )
    topic_filter = path.strip("/") or DEFAULT_TOPIC_FILTER
    last = topic_filter.rsplit("/", 1)[-1]
    if last in ("data", "meta", "status") and "/" in topic_filter:
        topic_filter = topic_filter.rsplit("/", 1)[0]
    try:
        shard = parse_shard(params["shard"]) if params.get("shard") else None
        limits = DEFAULT_LIMITS
        if "non_finite" in params:
            limits = ProtocolLimits(non_finite=params["non_finite"])
        settings = MqttSourceSettings(
            connection=connection,
            topic_filter=topic_filter,
            shard=shard,
            share_group=params.get("share") or None,
            qos=int(params.get("qos", "1")),
            queue_size=int(params.get("queue", "20000")),
            reorder_window=int(params.get("reorder_window", "64")),
            start_timeout_s=float(params["start_timeout"]) if params.get("start_timeout") else None,
            limits=limits,
        )
    except (ConfigError, ValueError) as exc:
        raise SourceURIError(f"MQTT source {mask_password(uri)!r}: {exc}") from None
    return MqttSource(settings, uri=mask_password(uri), clock=clock)


# ============================================================================================ state
@dataclass(slots=True)
class MqttCounters:
    """What an MQTT source has seen (cumulative; per device or for the whole source).

    Attributes:
        messages: messages received on the subscriptions (data, meta, status; all shards).
        bytes: their payload bytes.
        data_messages: data messages passed on as Chunks.
        samples: samples (per channel) passed on.
        malformed: messages rejected by the protocol check.
        duplicates: data messages dropped because their seq was already seen.
        late: data messages dropped because they came after newer ones.
        dropped: messages missing in seq gaps (lost on the way).
        dropped_samples: samples (per channel) in those gaps (gap messages x the next message's size).
        non_finite: NaN/±Inf sample values passed on (flagged, see ProtocolLimits.non_finite).
        restarts: new segments because a device restarted.
        ignored: messages of devices handled by other shards, beyond max_devices, or of unknown kinds.
        overflow: messages discarded because the incoming queue was full (source-wide only).
        reconnects: successful reconnections to the broker (source-wide only).
        errors: messages that hit an unexpected internal error (logged; source-wide only).
    """

    messages: int = 0
    bytes: int = 0
    data_messages: int = 0
    samples: int = 0
    malformed: int = 0
    duplicates: int = 0
    late: int = 0
    dropped: int = 0
    dropped_samples: int = 0
    non_finite: int = 0
    restarts: int = 0
    ignored: int = 0
    overflow: int = 0
    reconnects: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _Device:
    """Per-device tracking state (mutable)."""

    __slots__ = (
        "after_outage",
        "bits",
        "counters",
        "device",
        "highest",
        "info",
        "last_emitted",
        "last_t0",
        "log_at",
        "meta",
        "offline",
        "offset",
        "pending_restart",
        "segment",
        "signature",
        "stream_id",
        "suppressed",
        "ts_key",
        "ts_offsets",
    )

    def __init__(self, device: str) -> None:
        self.device = device
        self.stream_id = f"mqtt:{device}"
        self.info: StreamInfo | None = None
        self.signature: tuple[float, int] = (0.0, 0)
        self.meta: DeviceMeta | None = None
        self.highest = -1
        self.bits = 0  # bit i set: seq (highest - i) was received
        self.offset = 0  # emitted seq = sender seq + offset
        self.last_emitted: int | None = None
        self.last_t0 = -math.inf
        self.segment = 0
        self.pending_restart = False
        self.offline = False
        self.after_outage: float | None = None  # outage length (s) to report with the next message
        self.counters = MqttCounters()
        self.log_at = -math.inf
        self.suppressed = 0
        self.ts_key: tuple[int, float] = (0, 0.0)
        self.ts_offsets = np.zeros(0)


class _DropOldestQueue(asyncio.Queue[Any]):
    """The client's incoming queue (ours, given to aiomqtt as ``queue_type``).

    Bounded; when full, the oldest message is discarded and counted. The source drains it in batches
    (:meth:`MqttSource._iterate`), so a backlog costs one await per batch rather than one per message.
    """

    def __init__(self, maxsize: int = 0, *, on_drop: Callable[[], None], on_create: Callable[[Any], None]) -> None:
        super().__init__(maxsize)
        self._on_drop = on_drop
        on_create(self)

    def put_nowait(self, item: Any) -> None:
        if self.full():
            self.get_nowait()
            self._on_drop()
        super().put_nowait(item)


# ============================================================================================ source
class MqttSource:
    """An MQTT subscription to many devices; see the module docstring.

    Args:
        settings: broker, topics and policies.
        uri: what to show as this source's URI (password masked).
        clock: monotonic clock for outage lengths and log rate limiting.

    Attributes:
        uri: the URI (password masked).
        realtime: True: a live source (the pipeline drops windows rather than wait).
        counters: source-wide :class:`MqttCounters`.
        connected: True while a broker connection is up.
    """

    realtime = True

    def __init__(self, settings: MqttSourceSettings, uri: str | None = None, clock: Clock = monotonic) -> None:
        self.settings = settings
        self.uri = uri or f"{settings.connection.display()}/{settings.topic_filter}"
        self.clock = clock
        self.counters = MqttCounters()
        self.connected = False
        self._devices: dict[str, _Device] = {}
        self._pending: collections.deque[SourceItem] = collections.deque()
        self._client: aiomqtt.Client | None = None
        self._closing = False
        self._closed = asyncio.Event()
        self._iterator: AsyncIterator[SourceItem] | None = None
        self._queue: _DropOldestQueue | None = None
        self._limits = settings.limits
        self._invalid_log_at = -math.inf
        self._invalid_suppressed = 0
        self._lost_at: float | None = None

    # ---------------------------------------------------------------- public
    @property
    def device_counters(self) -> dict[str, MqttCounters]:
        """Per-device counters, keyed by device id (devices of this shard seen so far)."""
        return {name: dev.counters for name, dev in self._devices.items()}

    @property
    def devices(self) -> tuple[str, ...]:
        """Device ids handled so far (this shard)."""
        return tuple(self._devices)

    def stats(self) -> dict[str, Any]:
        """Counters and connection state as plain data (for logs, benches and tests)."""
        return {
            "uri": self.uri,
            "connected": self.connected,
            "devices": len(self._devices),
            **self.counters.as_dict(),
        }

    def fresh(self) -> MqttSource:
        """A new, un-entered source with the same settings, URI and clock (for a restart after a failure)."""
        return MqttSource(self.settings, self.uri, self.clock)

    async def __aenter__(self) -> MqttSource:
        """Connect and subscribe; raises BrokerError when the broker cannot be reached."""
        self._closing = False
        self._closed.clear()
        self._iterator = None
        s = self.settings
        started = self.clock()
        delays = backoff_delays(s.backoff_initial_s, s.backoff_max_s)
        attempts = 0
        while True:
            attempts += 1
            try:
                self._client = await self._connect()
                break
            except (aiomqtt.MqttError, OSError, ssl.SSLError) as exc:
                delay = next(delays)
                waited = self.clock() - started
                if s.start_timeout_s is not None and waited + delay > s.start_timeout_s:
                    raise BrokerError(
                        f"could not connect to the MQTT broker at {s.connection.display()}: {exc} "
                        f"({attempts} attempt(s) in {waited:.1f} s). Is it running and reachable? "
                        "(For a local one: `streamemg broker`, or install mosquitto.)"
                    ) from exc
                log.warning(
                    "MQTT broker %s is not reachable (%s); retrying in %.1f s (attempt %d)",
                    s.connection.display(), exc, delay, attempts,
                )
                await asyncio.sleep(delay)
        if attempts > 1:
            log.warning("MQTT broker %s reached after %d attempts", s.connection.display(), attempts)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Disconnect (idempotent); an iteration in progress ends normally."""
        self._closing = True
        self._closed.set()
        client, self._client = self._client, None
        self.connected = False
        if client is not None:
            await disconnect_quietly(client, self.settings.connection.timeout_s)
        it = self._iterator
        if it is not None and hasattr(it, "aclose") and not getattr(it, "ag_running", False):
            with contextlib.suppress(RuntimeError):
                await it.aclose()

    def __aiter__(self) -> AsyncIterator[SourceItem]:
        if self._iterator is None:
            self._iterator = self._iterate()
        return self._iterator

    # ---------------------------------------------------------------- connection
    async def _connect(self) -> aiomqtt.Client:
        s = self.settings
        queue = functools.partial(_DropOldestQueue, on_drop=self._on_queue_drop, on_create=self._set_queue)
        client = await s.connection.client(queue_type=queue, max_queued_incoming=s.queue_size)
        await connect_within(client, s.connection.timeout_s + 1.0)
        try:
            subs = s.subscriptions()
            await client.subscribe(subs[:2])
            await client.subscribe(subs[2][0], subs[2][1])
        except BaseException:
            await disconnect_quietly(client, s.connection.timeout_s)
            raise
        self.connected = True
        log.info("MQTT source %s subscribed to %s", self.uri, ", ".join(t for t, _ in s.subscriptions()))
        return client

    def _on_queue_drop(self) -> None:
        self.counters.overflow += 1

    def _set_queue(self, queue: _DropOldestQueue) -> None:
        self._queue = queue

    async def _iterate(self) -> AsyncIterator[SourceItem]:
        pending = self._pending
        on_message = self._on_message
        while not self._closing:
            client = self._client
            if client is None:
                raise BrokerError("MQTT source used outside `async with` (not connected)")
            queue = self._queue
            try:
                async for message in client.messages:
                    # one awaited message, then whatever else is already queued (up to a batch, so the
                    # event loop still gets a turn during a backlog)
                    batch = min(queue.qsize(), _DRAIN_BATCH) if queue is not None else 0
                    while True:
                        try:
                            chunk = on_message(message)
                        except Exception:  # a bug must not take every other device down with it
                            chunk = None
                            self._internal_error(message)
                        while pending:
                            yield pending.popleft()
                        if chunk is not None:
                            yield chunk
                        if batch <= 0 or queue is None or queue.empty():
                            break
                        batch -= 1
                        message = queue.get_nowait()
            except aiomqtt.MqttError as exc:
                if self._closing:
                    return
                # messages that arrived before the link broke are still good
                while queue is not None and not queue.empty():
                    leftover = queue.get_nowait()
                    try:
                        chunk = on_message(leftover)
                    except Exception:
                        chunk = None
                        self._internal_error(leftover)
                    while pending:
                        yield pending.popleft()
                    if chunk is not None:
                        yield chunk
                self._connection_lost(exc)
                while pending:
                    yield pending.popleft()
                await disconnect_quietly(client, 1.0)
                if not await self._reconnect():
                    return
                while pending:
                    yield pending.popleft()

    def _internal_error(self, message: aiomqtt.Message) -> None:
        self.counters.errors += 1
        if self.counters.errors == 1 or self.counters.errors % 1000 == 0:
            log.exception("MQTT source: unexpected error handling a message on %r (%d so far); going on",
                          message.topic.value[:200], self.counters.errors)

    def _connection_lost(self, exc: BaseException) -> None:
        self.connected = False
        self._client = None
        self._lost_at = self.clock()
        reason = f"{exc}: {exc.__cause__}" if exc.__cause__ is not None else str(exc)
        log.warning("MQTT broker %s went away (%s); reconnecting", self.settings.connection.display(), reason)
        for dev in self._devices.values():
            if dev.info is not None:
                detail = f"broker connection lost ({reason}); reconnecting"
                self._pending.append(StatusEvent(dev.stream_id, StreamStatus.RECONNECTING, detail))

    async def _reconnect(self) -> bool:
        """Reconnect with backoff until connected (True) or the source is closed (False)."""
        s = self.settings
        attempts = 0
        for delay in backoff_delays(s.backoff_initial_s, s.backoff_max_s):
            if self._closing:
                return False
            try:
                async with asyncio.timeout(delay):
                    await self._closed.wait()
                return False
            except TimeoutError:
                pass
            attempts += 1
            try:
                client = await self._connect()
            except (aiomqtt.MqttError, OSError, ssl.SSLError) as exc:
                if attempts == 1 or attempts % 10 == 0:
                    log.info("MQTT reconnect attempt %d to %s failed: %s", attempts, s.connection.display(), exc)
                continue
            if self._closing:
                await disconnect_quietly(client, 1.0)
                return False
            self._client = client
            self.counters.reconnects += 1
            outage = self.clock() - (self._lost_at if self._lost_at is not None else self.clock())
            log.warning("MQTT broker %s back after %.1f s (%d attempts)", s.connection.display(), outage, attempts)
            for dev in self._devices.values():
                if dev.info is not None:
                    dev.after_outage = outage
            return True
        return False  # pragma: no cover (the delay generator is endless)

    # ---------------------------------------------------------------- messages
    def _on_message(self, message: aiomqtt.Message) -> Chunk | None:
        """Handle one message; returns a Chunk or None; StreamInfo/StatusEvent go to ``self._pending``."""
        name = message.topic.value
        payload = message.payload
        if not isinstance(payload, (bytes, bytearray)):
            payload = str(payload).encode()
        c = self.counters
        c.messages += 1
        c.bytes += len(payload)
        kind_at = name.rfind("/")
        dev_at = name.rfind("/", 0, kind_at)
        device = name[dev_at + 1 : kind_at]
        dev = self._devices.get(device)
        if dev is None:
            dev = self._new_device(device, name)
            if dev is None:
                return None
        dev.counters.messages += 1
        dev.counters.bytes += len(payload)
        kind = name[kind_at + 1 :]
        if kind == "data":
            return self._on_data(dev, payload)
        if kind == "meta":
            self._on_meta(dev, payload)
        elif kind == "status":
            self._on_status(dev, payload, bool(message.retain))
        else:
            c.ignored += 1
        return None

    def _new_device(self, device: str, name: str) -> _Device | None:
        c = self.counters
        if not is_valid_device_id(device):
            c.malformed += 1
            now = self.clock()
            if now - self._invalid_log_at >= self.settings.malformed_log_interval_s:
                more = f" ({self._invalid_suppressed} more since the last report)" if self._invalid_suppressed else ""
                log.warning(
                    "MQTT message on %r dropped: the device level is not a valid device id "
                    "([A-Za-z0-9_-]{1,64})%s", name[:200], more,
                )
                self._invalid_log_at = now
                self._invalid_suppressed = 0
            else:
                self._invalid_suppressed += 1
            return None
        shard = self.settings.shard
        if shard is not None and shard_of(device, shard[1]) != shard[0]:
            c.ignored += 1
            return None
        if len(self._devices) >= self.settings.max_devices:
            c.ignored += 1
            if c.ignored == 1 or c.ignored % 1000 == 0:
                log.warning("MQTT source: %d devices already; device %r ignored (raise max_devices or shard)",
                            self.settings.max_devices, device)
            return None
        dev = _Device(device)
        self._devices[device] = dev
        return dev

    def _malformed(self, dev: _Device, kind: str, exc: ProtocolError) -> None:
        self.counters.malformed += 1
        dev.counters.malformed += 1
        now = self.clock()
        if now - dev.log_at >= self.settings.malformed_log_interval_s:
            more = f" ({dev.suppressed} more since the last report)" if dev.suppressed else ""
            log.warning("MQTT device %s: %s message rejected: %s%s", dev.device, kind, exc, more)
            dev.log_at = now
            dev.suppressed = 0
        else:
            dev.suppressed += 1

    def _on_data(self, dev: _Device, payload: bytes | bytearray) -> Chunk | None:
        try:
            msg = decode_data(payload, self._limits)
        except ProtocolError as exc:
            self._malformed(dev, "data", exc)
            return None
        seq = msg.seq
        data = msg.data
        n = data.shape[0]
        fs = msg.fs
        dc = dev.counters
        c = self.counters
        if dev.info is None or dev.signature[0] != fs or dev.signature[1] != data.shape[1]:
            self._new_segment(dev, msg, restart=False)
        elif dev.pending_restart and not (seq > dev.highest and msg.t0 > dev.last_t0):
            self._new_segment(dev, msg, restart=True)
        else:
            d = seq - dev.highest - 1
            if d == 0:
                dev.bits = ((dev.bits << 1) | 1) & self._window_mask
                dev.highest = seq
            elif d > 0:
                if d * n > self.settings.max_gap_s * fs:
                    self._new_segment(dev, msg, restart=True)
                else:
                    dc.dropped += d
                    c.dropped += d
                    dc.dropped_samples += d * n
                    c.dropped_samples += d * n
                    window = self.settings.reorder_window
                    dev.bits = 1 if d >= window else ((dev.bits << (d + 1)) | 1) & self._window_mask
                    dev.highest = seq
            else:
                back = dev.highest - seq
                if back < self.settings.reorder_window:
                    if (dev.bits >> back) & 1:
                        dc.duplicates += 1
                        c.duplicates += 1
                    else:
                        dev.bits |= 1 << back
                        dc.late += 1
                        c.late += 1
                    return None
                self._new_segment(dev, msg, restart=True)
        dev.pending_restart = False
        if dev.after_outage is not None:
            gap = dc.dropped_samples
            self._pending.append(
                StatusEvent(
                    dev.stream_id,
                    StreamStatus.LIVE,
                    f"broker connection restored after {dev.after_outage:.1f} s; "
                    f"{gap} samples lost on this stream so far",
                )
            )
            dev.after_outage = None
        emitted = seq + dev.offset
        dev.last_emitted = emitted
        dev.last_t0 = msg.t0
        dc.data_messages += 1
        c.data_messages += 1
        dc.samples += n
        c.samples += n
        if msg.non_finite:
            dc.non_finite += msg.non_finite
            c.non_finite += msg.non_finite
        if dev.ts_key != (n, fs):
            dev.ts_key = (n, fs)
            dev.ts_offsets = np.arange(n, dtype=np.float64) / fs
        return Chunk(dev.stream_id, data, dev.ts_offsets + msg.t0, emitted)

    @functools.cached_property
    def _window_mask(self) -> int:
        return (1 << self.settings.reorder_window) - 1

    def _new_segment(self, dev: _Device, msg: DataMessage, restart: bool) -> None:
        first = dev.info is None
        if restart:
            dev.counters.restarts += 1
            self.counters.restarts += 1
            log.info("MQTT device %s restarted (seq %d after %d): new segment", dev.device, msg.seq, dev.highest)
        dev.offset = 0 if dev.last_emitted is None else dev.last_emitted + 1 - msg.seq
        dev.highest = msg.seq
        dev.bits = 1
        if not first:
            dev.segment += 1
        dev.signature = (msg.fs, msg.n_channels)
        dev.info = self._make_info(dev, msg.fs, msg.n_channels, msg.encoding)
        self._pending.append(dev.info)

    def _make_info(self, dev: _Device, fs: float, n_channels: int, encoding: str) -> StreamInfo:
        meta = dev.meta
        if meta is not None and meta.channels is not None and len(meta.channels) == n_channels:
            channels = meta.channels
        else:
            channels = tuple(f"ch{i + 1}" for i in range(n_channels))
        extra: dict[str, Any] = {"transport": "mqtt", "device": dev.device, "segment": dev.segment,
                                 "encoding": encoding}
        if meta is not None and meta.device:
            extra["device_info"] = dict(meta.device)
        return StreamInfo(
            stream_id=dev.stream_id, name=dev.device, fs=fs, channels=channels, units="uV", source=self.uri,
            meta=extra,
        )

    def _on_meta(self, dev: _Device, payload: bytes | bytearray) -> None:
        if not payload:
            dev.meta = None  # the retained meta was cleared
            return
        try:
            meta = decode_meta(payload, self._limits)
        except ProtocolError as exc:
            self._malformed(dev, "meta", exc)
            return
        dev.meta = meta
        info = dev.info
        if info is not None and meta.channels is not None and len(meta.channels) == info.n_channels:
            if meta.channels != info.channels:
                dev.info = self._make_info(dev, info.fs, info.n_channels, str(info.meta.get("encoding", "")))
                self._pending.append(dev.info)

    def _on_status(self, dev: _Device, payload: bytes | bytearray, retained: bool) -> None:
        try:
            status = decode_status(payload)
        except ProtocolError as exc:
            self._malformed(dev, "status", exc)
            return
        if status == OFFLINE:
            dev.offline = True
            if dev.info is not None:
                self._pending.append(StatusEvent(dev.stream_id, StreamStatus.STALE, "device reported offline"))
        elif status == ONLINE:
            if dev.info is not None and (not retained or dev.offline):
                dev.pending_restart = True
            dev.offline = False
