"""Connecting to an MQTT broker: address, credentials, TLS, URI parsing, backoff and bounded calls.

Shared by the MQTT source, the estimate sink and the device simulator. Nothing here knows the wire
protocol's topics or payloads (that is :mod:`streamemg.mqtt.protocol`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import ssl
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import aiomqtt

from ..errors import ConfigError, SourceURIError

ENV_USERNAME = "STREAMEMG_MQTT_USERNAME"
ENV_PASSWORD = "STREAMEMG_MQTT_PASSWORD"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """TLS for ``mqtts://``.

    Attributes:
        ca: CA certificate file (PEM) that signed the broker's certificate; None = the system's CAs.
        cert: client certificate (PEM) for brokers that require one (with ``key``).
        key: the client certificate's private key (PEM).
        insecure: skip verification of the broker's certificate and host name (testing only).
    """

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        for name in ("ca", "cert", "key"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ConfigError(f"TLS {name}={path!r}: no such file; give the path of a PEM file")
        if (self.cert is None) != (self.key is None) and self.cert is None:
            raise ConfigError("TLS key given without cert: give both cert= and key= for a client certificate")
        self.context()  # a bad file is a configuration error, found now, not a broker that seems unreachable

    def context(self) -> ssl.SSLContext:
        """Build the SSL context (reads the files: call it off the event loop).

        Raises:
            ConfigError: a CA, certificate or key file is not valid PEM, the key does not match the certificate,
                or the key is protected by a passphrase (streamemg never prompts for one).
        """

        def no_passphrase() -> str:
            raise ConfigError(
                f"TLS key={self.key!r} is protected by a passphrase; streamemg does not prompt for one: give an "
                "unencrypted key file readable only by the service account"
            )

        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
            if self.cert is not None:
                ctx.load_cert_chain(self.cert, self.key, password=no_passphrase)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"TLS files ca={self.ca!r} cert={self.cert!r} key={self.key!r} could not be loaded: {exc}; check that "
                "they are PEM files and that the key belongs to the certificate"
            ) from exc
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


@dataclass(frozen=True, slots=True)
class MqttConnection:
    """Where and how to reach a broker (shared by the MQTT source, sink and device simulator).

    Attributes:
        host: broker host name or address.
        port: broker TCP port (1883 for mqtt, 8883 for mqtts by default).
        username: user name, or None for anonymous.
        password: password (never shown: excluded from repr).
        tls: TLS settings for ``mqtts://``; None for plain TCP.
        client_id: MQTT client id; None = a random one per connection.
        keepalive_s: MQTT keepalive, seconds (a silent dead link is noticed after ~1.5x this).
        timeout_s: time allowed for connecting, subscribing and each acknowledged publish, seconds.
    """

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TLSSettings | None = None
    client_id: str | None = None
    keepalive_s: int = 15
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("MqttConnection.host is empty: give the broker's host, e.g. mqtt://127.0.0.1")
        if isinstance(self.port, bool) or not 1 <= self.port <= 65535:
            raise ConfigError(f"MqttConnection.port={self.port!r}: give a TCP port from 1 to 65535")
        if isinstance(self.keepalive_s, bool) or not 1 <= self.keepalive_s <= 65535:
            raise ConfigError(f"MqttConnection.keepalive_s={self.keepalive_s!r}: give 1..65535 seconds")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ConfigError(f"MqttConnection.timeout_s={self.timeout_s!r}: give a positive number of seconds")
        if self.client_id is not None and not 1 <= len(self.client_id) <= 128:
            raise ConfigError(f"MqttConnection.client_id={self.client_id!r}: give 1..128 characters")

    @property
    def scheme(self) -> str:
        return "mqtts" if self.tls is not None else "mqtt"

    def display(self) -> str:
        """``mqtt://user@host:port`` with the password left out: safe to log and show."""
        user = f"{quote(self.username, safe='')}{':***' if self.password else ''}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{user}{host}:{self.port}"

    async def client(
        self,
        *,
        client_id: str | None = None,
        will: aiomqtt.Will | None = None,
        queue_type: Any = None,
        max_queued_incoming: int | None = None,
    ) -> aiomqtt.Client:
        """A new, not yet connected aiomqtt client for this broker (TLS context built off the loop)."""
        tls_context = await asyncio.to_thread(self.tls.context) if self.tls is not None else None
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=client_id or self.client_id or f"streamemg-{uuid.uuid4().hex[:12]}",
            clean_session=True,
            keepalive=self.keepalive_s,
            timeout=self.timeout_s,
            tls_context=tls_context,
            will=will,
            queue_type=queue_type,
            max_queued_incoming_messages=max_queued_incoming,
            logger=_PAHO_LOG,
        )


#: paho-mqtt's own log (every packet at DEBUG): quiet unless asked for explicitly.
_PAHO_LOG = logging.getLogger("streamemg.mqtt.client")
_PAHO_LOG.setLevel(logging.WARNING)


def parse_broker_uri(uri: str, what: str = "source") -> tuple[MqttConnection, str, dict[str, str]]:
    """Split ``mqtt[s]://[user[:password]@]host[:port][/path][?query]`` into (connection, path, other params).

    TLS (``ca``, ``cert``, ``key``, ``insecure``), ``client_id`` and ``keepalive`` are consumed; the remaining
    query parameters are returned for the caller to check. User and password fall back to the environment
    variables ``STREAMEMG_MQTT_USERNAME`` / ``STREAMEMG_MQTT_PASSWORD``.

    Raises:
        SourceURIError: malformed URI (also a ValueError), with the fix in the message.
    """
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise SourceURIError(f"MQTT {what} {mask_password(uri)!r}: {exc}; write mqtt://HOST[:PORT]/emg/+") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise SourceURIError(f"MQTT {what} {mask_password(uri)!r}: scheme must be mqtt:// or mqtts://")
    if parts.fragment or "#" in uri:
        raise SourceURIError(
            f"MQTT {what} {mask_password(uri)!r}: '#' is not allowed (it starts a URI fragment); "
            "name the device level with '+', e.g. mqtt://127.0.0.1/emg/+"
        )
    host = parts.hostname
    if not host:
        raise SourceURIError(f"MQTT {what} {mask_password(uri)!r} names no host: write e.g. mqtt://127.0.0.1/emg/+")
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    username = unquote(parts.username) if parts.username else os.environ.get(ENV_USERNAME) or None
    password = unquote(parts.password) if parts.password else os.environ.get(ENV_PASSWORD) or None
    ca, cert, key = params.pop("ca", None), params.pop("cert", None), params.pop("key", None)
    insecure = _flag(params.pop("insecure", "0"), "insecure", uri)
    if scheme == "mqtt" and (ca or cert or key or insecure):
        raise SourceURIError(f"MQTT {what} {mask_password(uri)!r}: ca/cert/key/insecure need mqtts:// (TLS)")
    try:
        tls = TLSSettings(ca=ca or None, cert=cert or None, key=key or None, insecure=insecure)
        keepalive = int(params.pop("keepalive", "15"))
        connection = MqttConnection(
            host=host,
            port=port if port is not None else DEFAULT_PORTS[scheme],
            username=username,
            password=password,
            tls=tls if scheme == "mqtts" else None,
            client_id=params.pop("client_id", None) or None,
            keepalive_s=keepalive,
        )
    except (ConfigError, ValueError) as exc:
        raise SourceURIError(f"MQTT {what} {mask_password(uri)!r}: {exc}") from None
    return connection, unquote(parts.path), params


def _flag(value: str, name: str, uri: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise SourceURIError(f"MQTT URI {mask_password(uri)!r}: {name}={value!r}: use 1 or 0")


def mask_password(uri: str) -> str:
    """The URI with any password replaced by ``***`` (for messages and the dashboard)."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    netloc_end = len(rest)
    for ch in "/?":
        i = rest.find(ch)
        if i >= 0:
            netloc_end = min(netloc_end, i)
    netloc, tail = rest[:netloc_end], rest[netloc_end:]
    at = netloc.rfind("@")
    if at < 0 or ":" not in netloc[:at]:
        return uri
    user = netloc[: netloc[:at].index(":")]
    return f"{scheme}://{user}:***{netloc[at:]}{tail}"


def backoff_delays(initial_s: float, max_s: float, rng: random.Random | None = None) -> Iterator[float]:
    """Exponential backoff with ±20 % jitter: initial, 2x, 4x, ... capped at ``max_s``."""
    rng = rng or random.Random()
    delay = initial_s
    while True:
        yield delay * rng.uniform(0.8, 1.2)
        delay = min(max_s, delay * 2)



# ============================================================================================ bounded calls
async def publish_within(
    client: aiomqtt.Client, topic: str, payload: bytes, *, qos: int, limit_s: float, retain: bool = False
) -> None:
    """Publish and wait at most ``limit_s`` seconds for it to be sent (QoS 0) or acknowledged (QoS 1).

    The bound is an ``asyncio.timeout`` around aiomqtt's untimed publish rather than aiomqtt's own
    ``timeout=`` (``asyncio.wait_for``, which on Python 3.11 runs the wait in an extra task; a device task
    cancelled at shutdown was seen left waiting for that task). A timeout raises ``aiomqtt.MqttError``, as aiomqtt does.
    """
    try:
        async with asyncio.timeout(limit_s):
            await client.publish(topic, payload, qos=qos, retain=retain, timeout=math.inf)
    except TimeoutError:
        raise aiomqtt.MqttError(f"no acknowledgement within {limit_s:g} s") from None


async def connect_within(client: aiomqtt.Client, limit_s: float) -> None:
    """Enter (connect) an aiomqtt client within ``limit_s`` seconds; a timeout raises ``aiomqtt.MqttError``.

    A connection the broker closes before its CONNACK fails at once rather than after the whole timeout.
    """
    restore = _fail_connect_on_early_close(client)
    try:
        try:
            async with asyncio.timeout(limit_s):
                await client.__aenter__()
        finally:
            restore()
    except TimeoutError:
        await disconnect_quietly(client, 1.0)
        raise aiomqtt.MqttError(f"no answer within {limit_s:g} s") from None


def _fail_connect_on_early_close(client: aiomqtt.Client) -> Callable[[], None]:
    """Make a connection closed before CONNACK fail the pending connect at once; returns the undo.

    aiomqtt ignores a disconnection that comes before the CONNACK and waits for its whole timeout. That is
    how a broker refuses a TLS client certificate under TLS 1.3 (the alert arrives after the client's side
    of the handshake is done), so a rejected or missing client certificate would otherwise show up only as
    "Operation timed out" after ``timeout_s``. (paho logs the TLS alert itself at ERROR.)
    """
    paho = getattr(client, "_client", None)
    if paho is None or not isinstance(getattr(client, "_connected", None), asyncio.Future):
        return lambda: None
    previous = paho.on_disconnect

    def on_disconnect(*args: Any) -> None:
        pending = client._connected
        if not pending.done():
            pending.set_exception(aiomqtt.MqttError(
                "the broker closed the connection before accepting it (for mqtts: does the broker trust this "
                "client's certificate, cert=/key=, and is one given? see the TLS error logged above)"
            ))
        if previous is not None:
            previous(*args)

    paho.on_disconnect = on_disconnect

    def restore() -> None:
        paho.on_disconnect = previous

    return restore


async def disconnect_quietly(client: aiomqtt.Client, limit_s: float) -> None:
    """Leave an aiomqtt client, whatever its state, within ``limit_s`` seconds; never raises.

    A client whose connection broke while nobody iterated its messages holds the disconnection error in a
    future no one awaits; it is retrieved here so asyncio does not report it as never retrieved.
    """
    with contextlib.suppress(Exception):  # TimeoutError included
        async with asyncio.timeout(limit_s):
            await client.__aexit__(None, None, None)
    lost = getattr(client, "_disconnected", None)
    if isinstance(lost, asyncio.Future) and lost.done() and not lost.cancelled():
        lost.exception()
