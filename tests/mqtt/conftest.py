"""Fixtures for the MQTT tests: a real mosquitto on a free loopback port, and the embedded amqtt broker.

Every broker here listens on 127.0.0.1 only. Tests use unique topic prefixes (the ``prefix`` fixture), so
one mosquitto can serve the whole test run; tests that kill the broker get their own (``private_mosquitto``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from mqtt_support import Mosquitto

from streamemg.mqtt.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One mosquitto for the whole test run (tests keep apart by unique topic prefixes)."""
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def private_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A mosquitto of this test alone (for tests that kill and restart it)."""
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
async def embedded_broker() -> AsyncIterator[EmbeddedBroker]:
    """The in-process amqtt broker on a free loopback port."""
    async with EmbeddedBroker() as broker:
        yield broker


@pytest.fixture(params=["mosquitto", "embedded"])
async def broker_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """Run the test against both brokers."""
    if request.param == "mosquitto":
        yield request.getfixturevalue("mosquitto").url
    else:
        async with EmbeddedBroker() as broker:
            yield broker.url


@pytest.fixture
def prefix() -> str:
    """A unique topic prefix for one test (so tests never see each other's messages)."""
    return f"t{uuid.uuid4().hex[:10]}"
