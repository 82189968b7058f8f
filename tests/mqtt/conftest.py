"""Fixtures for the MQTT tests: a real mosquitto on a free loopback port, and the embedded amqtt broker.

Every broker here listens on 127.0.0.1 only. Tests use unique topic prefixes (the ``prefix`` fixture), so
one mosquitto can serve a whole session; tests that kill the broker get their own (``private_mosquitto``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from streamemg.broker import EmbeddedBroker

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None
)


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        try:
            s.connect(("127.0.0.1", port))
            return True
        except OSError:
            return False


class Mosquitto:
    """A mosquitto process on 127.0.0.1:<port> that a test can stop, kill and restart (same port)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        if MOSQUITTO is None:
            pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.config = workdir / f"mosquitto-{self.port}.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 100000\n"
        )
        self.log = workdir / f"mosquitto-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        deadline = time.monotonic() + timeout
        while True:  # after a kill the port may need a moment before it can be bound again
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=log)
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _accepts(self.port):
                    return
                time.sleep(0.02)
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not start on port {self.port}: {self.log.read_text()[-800:]}")
            time.sleep(0.1)  # exited (port busy): try again

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without closing anything (no DISCONNECT, no last wills sent)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One mosquitto for the session (tests keep apart by unique topic prefixes)."""
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
