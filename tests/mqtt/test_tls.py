"""End-to-end TLS for the MQTT source and sink against a real mosquitto.

A throwaway PKI is made at test time with the ``openssl`` command (a CA, a server certificate for
127.0.0.1/localhost, a client certificate, and a second "rogue" CA with its own client certificate). One
mosquitto serves two TLS listeners on loopback, both requiring a client certificate signed by the CA:

- the *certificate* listener takes the certificate's CN as the user name;
- the *password* listener also wants a user name and password (``password_file``, no anonymous clients).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import numpy as np
import pytest
from mqtt_support import Collector, Mosquitto, _accepts, free_port, signal_block, wait_until

from streamemg.errors import BrokerError, SinkError
from streamemg.mqtt import protocol as p
from streamemg.mqtt.client import ENV_PASSWORD, ENV_USERNAME
from streamemg.mqtt.sink import MqttSink
from streamemg.mqtt.sink import from_uri as sink_from_uri
from streamemg.mqtt.source import from_uri
from streamemg.types import Chunk, Estimate, StreamInfo

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(60)]

OPENSSL = shutil.which("openssl")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
FS = 1000.0
USER = "emg-worker"
PASSWORD = f"pw-{uuid.uuid4().hex}"  # distinctive, so any leak into logs or reprs is found by substring


# ============================================================================================ PKI
@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files of the test PKI (all under one temporary directory)."""

    ca: Path
    server: Path
    server_key: Path
    client: Path
    client_key: Path
    rogue_ca: Path
    rogue_client: Path
    rogue_client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None
    done = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {done.stderr.decode(errors='replace')[-600:]}")


def _make_ca(d: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA (EC P-256, valid 2 days): (certificate, key)."""
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key.name, "-out", cert.name, "-days", "2", "-subj", f"/CN=streamemg test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash", cwd=d,
    )
    return cert, key


def _make_leaf(d: Path, name: str, cn: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    """A certificate signed by ``ca`` (EC P-256, valid 2 days): (certificate, key)."""
    cert, key, csr, ext = d / f"{name}.pem", d / f"{name}.key", d / f"{name}.csr", d / f"{name}.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n" + extensions
    )
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key.name, "-out", csr.name, "-subj", f"/CN={cn}", cwd=d)
    _openssl("x509", "-req", "-in", csr.name, "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-set_serial", str(int(uuid.uuid4().hex[:15], 16)), "-days", "2", "-out", cert.name,
             "-extfile", ext.name, cwd=d)
    return cert, key


def make_pki(d: Path) -> Pki:
    """CA, server (IP:127.0.0.1, DNS:localhost), client; a rogue CA and a client certificate of it."""
    ca = _make_ca(d, "ca")
    server = _make_leaf(d, "server", "localhost", ca,
                        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                        "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    client_ext = "keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
    client = _make_leaf(d, "client", "device-tls", ca, client_ext)
    rogue_ca = _make_ca(d, "rogue-ca")
    rogue = _make_leaf(d, "rogue-client", "device-tls", rogue_ca, client_ext)
    return Pki(ca=ca[0], server=server[0], server_key=server[1], client=client[0], client_key=client[1],
               rogue_ca=rogue_ca[0], rogue_client=rogue[0], rogue_client_key=rogue[1])


def client_context(pki: Pki) -> ssl.SSLContext:
    """An SSL context for the tests' own publishers/subscribers (trusts the CA, presents the client cert)."""
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.client), str(pki.client_key))
    return ctx


# ============================================================================================ broker
class TlsMosquitto(Mosquitto):
    """mosquitto with two TLS listeners on loopback (``port``: client certificate; ``auth_port``: + password)."""

    def __init__(self, workdir: Path, pki: Pki, password_file: Path | None) -> None:
        super().__init__(workdir)
        self.auth_port = free_port() if password_file is not None else None
        tls = (f"cafile {pki.ca}\ncertfile {pki.server}\nkeyfile {pki.server_key}\nrequire_certificate true\n")
        text = (
            "per_listener_settings true\npersistence false\n"
            f"user {getpass.getuser()}\n"  # as root mosquitto would otherwise drop to a user that cannot read tmp
            f"listener {self.port} 127.0.0.1\n{tls}use_identity_as_username true\nallow_anonymous true\n"
        )
        if password_file is not None:
            text += f"listener {self.auth_port} 127.0.0.1\n{tls}password_file {password_file}\nallow_anonymous false\n"
        self.config.write_text(text)

    def start(self, timeout: float = 10.0) -> None:
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while self.auth_port is not None and not _accepts(self.auth_port):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not open port {self.auth_port}: {self.log.read_text()[-800:]}")
            time.sleep(0.02)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if OPENSSL is None:
        pytest.skip("the `openssl` command is not installed: cannot make the test certificates")
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsMosquitto]:
    workdir = tmp_path_factory.mktemp("mosquitto-tls")
    password_file: Path | None = None
    if MOSQUITTO_PASSWD is not None:
        password_file = workdir / "passwords"
        subprocess.run([MOSQUITTO_PASSWD, "-c", "-b", str(password_file), USER, PASSWORD], check=True,
                       capture_output=True, timeout=30)
    broker = TlsMosquitto(workdir, pki, password_file)
    broker.start()
    yield broker
    broker.stop()


def tls_options(ca: Path, cert: Path | None = None, key: Path | None = None) -> str:
    opts = f"ca={ca}"
    if cert is not None:
        opts += f"&cert={cert}"
    if key is not None:
        opts += f"&key={key}"
    return opts


async def publish_blocks(port: int, pki: Pki, prefix: str, device: str, n: int, **auth: str) -> list[np.ndarray]:
    """Publish meta + ``n`` binary data messages of one device over TLS; returns the blocks sent."""
    blocks = []
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"pub-{uuid.uuid4().hex[:8]}",
                              tls_context=client_context(pki), timeout=10, **auth) as pub:  # type: ignore[arg-type]
        await pub.publish(f"{prefix}/{device}/meta", p.encode_meta(fs=FS, channels=["a", "b"]), qos=1, retain=True)
        for k in range(n):
            block = signal_block(10, 2, start=10 * k, fs=FS)
            blocks.append(block)
            await pub.publish(f"{prefix}/{device}/data", p.encode_binary(block, seq=k, t0=k * 10 / FS, fs=FS), qos=1)
    return blocks


# ============================================================================================ tests
async def test_source_over_mutual_tls_receives_what_a_tls_device_publishes(
    tls_broker: TlsMosquitto, pki: Pki, prefix: str
) -> None:
    n = 12
    source = from_uri(f"mqtts://127.0.0.1:{tls_broker.port}/{prefix}/+?"
                      f"{tls_options(pki.ca, pki.client, pki.client_key)}&start_timeout=5")
    assert source.settings.connection.tls is not None and source.uri.startswith("mqtts://127.0.0.1:")
    async with source:
        col = Collector(source).start()
        sent = await publish_blocks(tls_broker.port, pki, prefix, "dev01", n)
        await wait_until(lambda: len(col.of(Chunk)) == n, 10.0)
        await col.stop()
    assert col.failed() is None
    (info,) = col.of(StreamInfo, "mqtt:dev01")
    assert info.fs == FS and info.channels == ("a", "b")
    chunks = col.of(Chunk, "mqtt:dev01")
    assert [c.seq for c in chunks] == list(range(n))
    np.testing.assert_array_equal(np.concatenate([c.data for c in chunks]), np.concatenate(sent))
    assert source.counters.malformed == 0 and source.counters.dropped == 0


@pytest.mark.parametrize(
    "case",
    ["no client certificate", "client certificate of another CA", "broker certificate not trusted"],
)
async def test_untrusted_tls_peers_are_refused_with_a_clear_broker_error(
    tls_broker: TlsMosquitto, pki: Pki, prefix: str, case: str
) -> None:
    opts = {
        "no client certificate": tls_options(pki.ca),
        "client certificate of another CA": tls_options(pki.ca, pki.rogue_client, pki.rogue_client_key),
        "broker certificate not trusted": tls_options(pki.rogue_ca, pki.client, pki.client_key),
    }[case]
    source = from_uri(f"mqtts://127.0.0.1:{tls_broker.port}/{prefix}/+?{opts}&start_timeout=0")
    started = time.monotonic()
    with pytest.raises(BrokerError) as err:
        async with source:
            pytest.fail("connected although the TLS peer must not be accepted")
    elapsed = time.monotonic() - started
    message = str(err.value)
    assert f"could not connect to the MQTT broker at mqtts://127.0.0.1:{tls_broker.port}" in message
    assert "1 attempt(s)" in message
    if case == "broker certificate not trusted":
        assert "CERTIFICATE_VERIFY_FAILED" in message  # refused by this client: the broker's CA is not `ca=`
    else:  # refused by the broker (under TLS 1.3 after the handshake): said at once, not as a timeout
        assert "closed the connection before accepting it" in message and "certificate" in message
    assert elapsed < 5.0, f"refusal took {elapsed:.1f} s: {message}"
    assert not source.connected


async def test_sink_without_a_client_certificate_fails_at_once(tls_broker: TlsMosquitto, pki: Pki) -> None:
    sink = sink_from_uri(f"mqtts://127.0.0.1:{tls_broker.port}?{tls_options(pki.ca)}")
    started = time.monotonic()
    with pytest.raises(SinkError, match="could not connect to the MQTT broker at mqtts://"):
        async with sink:
            pytest.fail("connected without a client certificate")
    assert time.monotonic() - started < 5.0 and not sink.connected


async def test_sink_publishes_estimates_over_mutual_tls(tls_broker: TlsMosquitto, pki: Pki, prefix: str) -> None:
    sink = sink_from_uri(f"mqtts://127.0.0.1:{tls_broker.port}?prefix={prefix}&"
                         f"{tls_options(pki.ca, pki.client, pki.client_key)}")
    assert isinstance(sink, MqttSink) and sink.name == f"mqtts://127.0.0.1:{tls_broker.port}"
    estimates = [
        Estimate(stream_id="mqtt:dev07", name="dev07", index=k, time=0.5 * k, probabilities=(0.1, 0.8, 0.1),
                 rolling=(0.2, 0.7, 0.1), cumulative=(0.2, 0.7, 0.1), label="ALS", confidence=0.7, quality="ok",
                 latency_ms=2.0, trained=True)
        for k in range(2)
    ]
    async with aiomqtt.Client("127.0.0.1", tls_broker.port, identifier=f"sub-{uuid.uuid4().hex[:8]}",
                              tls_context=client_context(pki), timeout=10) as sub:
        await sub.subscribe(f"{prefix}/+/estimate", qos=1)
        async with sink:
            await sink.announce(StreamInfo(stream_id="mqtt:dev07", name="dev07", fs=FS, channels=("a",)))
            for e in estimates:
                await sink.send(e)
        got = []
        async with asyncio.timeout(10):
            async for m in sub.messages:
                got.append((m.topic.value, json.loads(m.payload)))  # type: ignore[arg-type]
                if len(got) == len(estimates):
                    break
        await sub.subscribe(f"{prefix}/+/label", qos=1)
        async with asyncio.timeout(10):
            label = await anext(aiter(sub.messages))
    assert [t for t, _ in got] == [f"{prefix}/dev07/estimate"] * 2
    assert [e["index"] for _, e in got] == [0, 1] and got[0][1]["label"] == "ALS" and got[0][1]["device"] == "dev07"
    assert label.topic.value == f"{prefix}/dev07/label" and label.payload == b"ALS" and label.retain
    assert sink.published == 2 and sink.failures == 0


async def test_credentials_from_the_environment_work_and_never_show(
    tls_broker: TlsMosquitto, pki: Pki, prefix: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if tls_broker.auth_port is None:
        pytest.skip("mosquitto_passwd is not installed: cannot make the broker's password file")
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="streamemg.mqtt.client")  # paho's packet log too
    url = f"mqtts://127.0.0.1:{tls_broker.auth_port}/{prefix}/+?{tls_options(pki.ca, pki.client, pki.client_key)}"

    # without credentials the password listener refuses (so the environment is what makes it work below)
    monkeypatch.delenv(ENV_USERNAME, raising=False)
    monkeypatch.delenv(ENV_PASSWORD, raising=False)
    with pytest.raises(BrokerError, match="could not connect"):
        async with from_uri(f"{url}&start_timeout=0"):
            pass

    monkeypatch.setenv(ENV_USERNAME, USER)
    monkeypatch.setenv(ENV_PASSWORD, PASSWORD)
    n = 5
    source = from_uri(f"{url}&start_timeout=5")
    assert source.settings.connection.username == USER and source.settings.connection.password == PASSWORD
    async with source:
        col = Collector(source).start()
        await publish_blocks(tls_broker.auth_port, pki, prefix, "dev02", n, username=USER, password=PASSWORD)
        await wait_until(lambda: len(col.of(Chunk)) == n, 10.0)
        await col.stop()
    assert col.failed() is None and [c.seq for c in col.of(Chunk, "mqtt:dev02")] == list(range(n))
    assert col.of(StreamInfo, "mqtt:dev02")[0].source == source.uri

    # a wrong password is refused, and the error does not echo it
    monkeypatch.setenv(ENV_PASSWORD, "wrong-" + PASSWORD)
    with pytest.raises(BrokerError) as err:
        async with from_uri(f"{url}&start_timeout=0"):
            pass
    assert "wrong-" not in str(err.value) and PASSWORD not in str(err.value)

    # a password in the URI wins over the environment and is masked wherever the source is shown
    uri_source = from_uri(url.replace("mqtts://", f"mqtts://{USER}:{PASSWORD}@") + "&start_timeout=5")
    assert uri_source.settings.connection.password == PASSWORD and "***" in uri_source.uri
    async with uri_source:
        assert uri_source.connected

    shown = [source.uri, repr(source), repr(source.settings), repr(source.settings.connection), str(source.stats()),
             uri_source.uri, repr(uri_source.settings), source.settings.connection.display(), caplog.text,
             str(err.value)]
    assert caplog.text, "expected some log output to check"
    for text in shown:
        assert PASSWORD not in text, text
