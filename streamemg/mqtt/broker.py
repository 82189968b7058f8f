"""An in-process MQTT broker (amqtt) for zero-set-up demos and tests.

``EmbeddedBroker`` is an async context manager: on entry it starts an amqtt broker inside the running event
loop, listening on ``host`` (loopback by default) and ``port`` (0 = a free port chosen by the OS); on exit it
shuts the broker down. It accepts anonymous clients only and is meant for one machine: for real deployments
use mosquitto, EMQX or HiveMQ (see ``docs/mqtt-scaling.md``).

Example::

    async with EmbeddedBroker() as broker:
        print(broker.url)              # mqtt://127.0.0.1:40123
        ...  # sources/sinks/simulators connect to broker.url
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

from ..errors import BrokerError, ConfigError

log = logging.getLogger(__name__)

#: amqtt logs every connection at INFO; keep it quiet unless asked for.
_AMQTT_LOGGERS = ("amqtt", "transitions")


class EmbeddedBroker:
    """amqtt running in this process's event loop.

    Args:
        host: address to listen on (default 127.0.0.1: reachable from this machine only).
        port: TCP port; 0 (default) lets the OS pick a free one, readable from :attr:`port` after entry.

    Attributes:
        host: the listening address.
        port: the listening port (the real one once entered).
        url: ``mqtt://host:port`` for sources, sinks and simulators.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if isinstance(port, bool) or not 0 <= port <= 65535:
            raise ConfigError(f"EmbeddedBroker port={port!r}: give 0 (any free port) or a TCP port up to 65535")
        if not host:
            raise ConfigError("EmbeddedBroker host is empty: give an address to listen on, e.g. 127.0.0.1")
        self.host = host
        self.port = port
        self._broker: Any = None

    @property
    def url(self) -> str:
        """``mqtt://host:port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._broker is not None

    async def __aenter__(self) -> EmbeddedBroker:
        from amqtt.broker import Broker

        for name in _AMQTT_LOGGERS:
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.WARNING)
        host = f"[{self.host}]" if ":" in self.host else self.host
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{self.port}"}},
            # anonymous access only; no $SYS publisher, no packet logging (they cost CPU per message)
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        broker = Broker(config)
        amqtt_log = logging.getLogger("amqtt.broker")
        level = amqtt_log.level
        amqtt_log.setLevel(logging.CRITICAL)  # amqtt logs a traceback for a busy port; our error says it better
        try:
            await broker.start()
        except Exception as exc:  # amqtt wraps bind errors (port in use, bad address) in its own BrokerError
            raise BrokerError(
                f"could not start the embedded MQTT broker on {self.host}:{self.port}: {exc}. "
                "Is the port already in use? Try another --port (or 0 for any free port)."
            ) from exc
        finally:
            amqtt_log.setLevel(level)
        self._broker = broker
        self.port = _bound_port(broker, self.port)
        log.info("embedded MQTT broker listening on %s", self.url)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the broker (idempotent)."""
        broker, self._broker = self._broker, None
        if broker is None:
            return
        try:
            await broker.shutdown()
        except Exception as err:  # a failing shutdown must not hide the caller's own result
            log.warning("embedded MQTT broker did not shut down cleanly: %s", err)


def _bound_port(broker: Any, requested: int) -> int:
    """The port the broker's listener really bound (amqtt keeps the asyncio server per listener)."""
    try:
        server = broker._servers["default"].instance
        return int(server.sockets[0].getsockname()[1])
    except (AttributeError, KeyError, IndexError, TypeError):
        if requested:
            return requested
        raise BrokerError("the embedded MQTT broker did not report its port; pass a fixed port instead") from None
