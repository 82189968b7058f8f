"""A minimal MQTT EMG device written from PROTOCOL.md alone: ``struct`` for the 40-byte header, aiomqtt to send.

It uses nothing from streamemg, on purpose: it is what a device author writes. It publishes a retained
``meta`` and ``online`` status (with ``offline`` as its last will), then binary int16 data messages of
20 ms at 8 kHz carrying a test signal (a 120 Hz tone plus noise), paced on absolute deadlines.

    python examples/minimal_device.py --broker 127.0.0.1 --port 1883 --device bench01 --seconds 10
    streamemg run --source mqtt://127.0.0.1:1883/emg/+ --no-dashboard
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import struct
import time

import aiomqtt

HEADER = struct.Struct("<4sBBHIQddf")  # magic, version, format, channels, samples, seq, t0, fs, scale
assert HEADER.size == 40
FORMAT_INT16 = 1


def data_message(seq: int, t0: float, fs: float, scale: float, counts: list[int]) -> bytes:
    """One channel of int16 ``counts`` (µV = count * scale) as a protocol-v1 binary data message."""
    header = HEADER.pack(b"EMG1", 1, FORMAT_INT16, 1, len(counts), seq, t0, fs, scale)
    return header + struct.pack(f"<{len(counts)}h", *counts)


async def run(broker: str, port: int, device: str, seconds: float, fs: float = 8000.0) -> int:
    """Publish ``seconds`` of signal; return the number of data messages sent."""
    base = f"emg/{device}"
    will = aiomqtt.Will(f"{base}/status", b"offline", qos=1, retain=True)
    scale = 0.5  # µV per count
    per_msg = int(fs * 0.02)
    sent = 0
    async with aiomqtt.Client(broker, port, identifier=f"minimal-{device}", will=will) as client:
        meta = {"schema": 1, "fs": fs, "channels": ["biceps"], "units": "uV", "device": {"model": "minimal"}}
        await client.publish(f"{base}/meta", json.dumps(meta).encode(), qos=1, retain=True)
        await client.publish(f"{base}/status", b"online", qos=1, retain=True)
        start = time.monotonic()
        n_msgs = int(seconds / 0.02)
        for seq in range(n_msgs):
            t0 = seq * per_msg / fs
            counts = [
                max(-32768, min(32767, round((80 * math.sin(2 * math.pi * 120 * (t0 + i / fs)) + random.gauss(0, 20))
                                             / scale)))
                for i in range(per_msg)
            ]
            await client.publish(f"{base}/data", data_message(seq, t0, fs, scale, counts), qos=0)
            sent += 1
            deadline = start + (seq + 1) * 0.02  # absolute deadlines: no drift
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        await client.publish(f"{base}/status", b"offline", qos=1, retain=True)
    return sent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--device", default="minimal01")
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    sent = asyncio.run(run(args.broker, args.port, args.device, args.seconds))
    print(f"sent {sent} data messages")


if __name__ == "__main__":
    main()
