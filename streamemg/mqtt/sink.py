"""``mqtt://`` output: estimates published back to the broker (wire protocol v1).

URI::

    mqtt://[user[:password]@]host[:port][?prefix=streamemg&qos=1&timeout=5&client_id=...]
    mqtts://...[?ca=CA.pem&cert=CLIENT.pem&key=CLIENT.key&insecure=0]

For every Estimate of a stream, the sink publishes to ``<prefix>/<device>/estimate`` (QoS 1) the JSON of
:meth:`streamemg.types.Estimate.to_dict` plus ``"device"``; whenever a stream's label changes it also
publishes the label as plain text to ``<prefix>/<device>/label`` (QoS 1, retained), so a dashboard that
subscribes later sees the current label at once. ``<device>`` is the MQTT device id for ``mqtt:<device>``
streams and a sanitised stream id otherwise (:func:`streamemg.mqtt.protocol.device_for_stream`).

Failures never block the pipeline: the sink sits behind a bounded SinkRunner queue; a publish that fails
(broker gone, no PUBACK within ``timeout`` seconds) raises :class:`~streamemg.errors.SinkError`, which the runner
counts, and a background task reconnects with exponential backoff. While disconnected, ``send`` fails at
once (counted) instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass
from types import TracebackType

import aiomqtt

from ..errors import ConfigError, SinkError, SourceURIError
from ..types import Estimate, StreamInfo
from .client import (
    MqttConnection,
    backoff_delays,
    connect_within,
    disconnect_quietly,
    mask_password,
    parse_broker_uri,
    publish_within,
)
from .protocol import (
    OUTPUT_PREFIX,
    device_for_stream,
    encode_estimate,
    estimate_topic,
    is_valid_device_id,
    label_payload,
    label_topic,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MqttSinkSettings:
    """Where and how estimates are published.

    Attributes:
        connection: broker address, credentials, TLS.
        prefix: first topic level (default ``streamemg``): ``<prefix>/<device>/estimate`` and ``/label``.
        qos: QoS of estimates and labels (1 as in the protocol; 0 for fire-and-forget).
        publish_timeout_s: longest wait for the broker's acknowledgement of one publish.
        backoff_initial_s, backoff_max_s: reconnection delays (doubling, ±20 % jitter).
    """

    connection: MqttConnection
    prefix: str = OUTPUT_PREFIX
    qos: int = 1
    publish_timeout_s: float = 5.0
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 10.0

    def __post_init__(self) -> None:
        levels = self.prefix.split("/")
        if any(not is_valid_device_id(level) for level in levels):
            raise ConfigError(
                f"MqttSinkSettings.prefix={self.prefix!r}: use topic levels of A-Za-z0-9_- separated by '/', "
                "e.g. 'streamemg'"
            )
        if self.qos not in (0, 1):
            raise ConfigError(f"MqttSinkSettings.qos={self.qos!r}: use 1 (default) or 0")
        if not self.publish_timeout_s > 0:
            raise ConfigError(f"MqttSinkSettings.publish_timeout_s={self.publish_timeout_s!r}: give seconds > 0")
        if not (0 < self.backoff_initial_s <= self.backoff_max_s):
            raise ConfigError("MqttSinkSettings: need 0 < backoff_initial_s <= backoff_max_s")


_SINK_PARAMS = ("prefix", "qos", "timeout")


def from_uri(uri: str) -> MqttSink:
    """Create (not yet enter) the MQTT estimate sink for ``mqtt[s]://[user[:password]@]host[:port][?...]``."""
    try:
        connection, path, params = parse_broker_uri(uri, "output")
    except SourceURIError as exc:
        raise ConfigError(str(exc)) from None
    if path.strip("/"):
        raise ConfigError(
            f"MQTT output {mask_password(uri)!r}: give no topic path (estimates go to streamemg/<device>/estimate); "
            "use ?prefix=... to change the first level"
        )
    unknown = sorted(set(params) - set(_SINK_PARAMS))
    if unknown:
        raise ConfigError(
            f"MQTT output {mask_password(uri)!r}: unknown option(s) {', '.join(unknown)}; known: prefix, qos, "
            "timeout, client_id, keepalive, ca, cert, key, insecure"
        )
    try:
        settings = MqttSinkSettings(
            connection=connection,
            prefix=params.get("prefix") or OUTPUT_PREFIX,
            qos=int(params.get("qos", "1")),
            publish_timeout_s=float(params.get("timeout", "5")),
        )
    except ValueError as exc:
        raise ConfigError(f"MQTT output {mask_password(uri)!r}: {exc}") from None
    return MqttSink(settings)


class MqttSink:
    """Publishes estimates (and retained labels) to an MQTT broker; see the module docstring.

    Attributes:
        name: ``mqtt://host:port`` (password left out), as shown on the dashboard.
        published: estimates acknowledged by the broker.
        failures: publishes that failed (also counted by the SinkRunner as errors).
        reconnects: successful reconnections.
        connected: True while a broker connection is up.
    """

    def __init__(self, settings: MqttSinkSettings) -> None:
        self.settings = settings
        self.name = settings.connection.display()
        self.published = 0
        self.failures = 0
        self.reconnects = 0
        self._client: aiomqtt.Client | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._labels: dict[str, str] = {}
        self._devices: dict[str, str] = {}
        self._closing = False
        self._closers: set[asyncio.Task[None]] = set()

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def __aenter__(self) -> MqttSink:
        """Connect; raises SinkError when the broker cannot be reached (a typo should be seen at once)."""
        self._closing = False
        try:
            self._client = await self._connect()
        except (aiomqtt.MqttError, OSError, ssl.SSLError) as exc:
            raise SinkError(
                f"could not connect to the MQTT broker at {self.name} for estimates: {exc}. "
                "Is it running and reachable?"
            ) from exc
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop reconnecting and disconnect (idempotent)."""
        self._closing = True
        task, self._reconnect_task = self._reconnect_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client, self._client = self._client, None
        if client is not None:
            await disconnect_quietly(client, self.settings.connection.timeout_s)

    async def announce(self, info: StreamInfo) -> None:
        """Remember the stream's device id (topics are per device); nothing is published."""
        self._devices[info.stream_id] = device_for_stream(info.stream_id)

    async def send(self, estimate: Estimate) -> None:
        """Publish one estimate (and the label when it changed).

        Raises:
            SinkError: not connected (a reconnection is under way) or the publish failed.
        """
        client = self._client
        if client is None:
            self._start_reconnect()
            self.failures += 1
            raise SinkError(f"not connected to the MQTT broker at {self.name} (reconnecting); estimate dropped")
        device = self._devices.get(estimate.stream_id)
        if device is None:
            device = self._devices[estimate.stream_id] = device_for_stream(estimate.stream_id)
        prefix = self.settings.prefix
        label = label_payload(estimate)
        try:
            limit = self.settings.publish_timeout_s
            await publish_within(client, estimate_topic(device, prefix), encode_estimate(estimate, device),
                                 qos=self.settings.qos, limit_s=limit)
            if self._labels.get(device) != label:
                await publish_within(client, label_topic(device, prefix), label.encode(), qos=self.settings.qos,
                                     retain=True, limit_s=limit)
                self._labels[device] = label
        except aiomqtt.MqttError as exc:
            self.failures += 1
            self._lost(client, exc)
            raise SinkError(f"publishing the estimate of {device!r} to {self.name} failed: {exc}") from exc
        self.published += 1

    # ---------------------------------------------------------------- connection
    async def _connect(self) -> aiomqtt.Client:
        client = await self.settings.connection.client()
        await connect_within(client, self.settings.connection.timeout_s + 1.0)
        return client

    def _lost(self, client: aiomqtt.Client, exc: BaseException) -> None:
        if self._client is client:
            self._client = None
            log.warning("MQTT output %s: connection lost (%s); reconnecting in the background", self.name, exc)
            closer = asyncio.get_running_loop().create_task(disconnect_quietly(client, 1.0), name=f"close:{self.name}")
            self._closers.add(closer)
            closer.add_done_callback(self._closers.discard)
        self._start_reconnect()

    def _start_reconnect(self) -> None:
        if self._closing or (self._reconnect_task is not None and not self._reconnect_task.done()):
            return
        self._reconnect_task = asyncio.get_running_loop().create_task(
            self._reconnect(), name=f"sink-reconnect:{self.name}"
        )

    async def _reconnect(self) -> None:
        s = self.settings
        for attempt, delay in enumerate(backoff_delays(s.backoff_initial_s, s.backoff_max_s), start=1):
            await asyncio.sleep(delay)
            if self._closing:
                return
            try:
                client = await self._connect()
            except (aiomqtt.MqttError, OSError, ssl.SSLError) as exc:
                if attempt == 1 or attempt % 10 == 0:
                    log.info("MQTT output %s: reconnect attempt %d failed: %s", self.name, attempt, exc)
                continue
            if self._closing:
                await disconnect_quietly(client, 1.0)
                return
            self._client = client
            self._labels.clear()  # republish retained labels on the (possibly new) broker
            self.reconnects += 1
            log.warning("MQTT output %s: reconnected after %d attempt(s)", self.name, attempt)
            return
