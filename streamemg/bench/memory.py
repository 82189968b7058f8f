"""Resident memory per stream, measured in a fresh process."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
from typing import Any

import numpy as np

from ..clock import monotonic
from ..model import ModelBundle
from ..pipeline import PipelineSettings, StreamState
from ..qemg.service import RemoteQemg
from ..types import Chunk, StreamInfo
from .common import (
    make_templates,
    qemg_processes_rss_mb,
    read_rss_mb,
)

log = logging.getLogger(__name__)


def _feed_states(bundle: ModelBundle, templates: np.ndarray, first: int, count: int, fs: float,
                 seconds: float) -> list[StreamState]:
    """``count`` StreamStates fed ``seconds`` of 10 ms chunks each, with results for their windows."""
    chunk = round(0.01 * fs)
    per = templates.shape[1] // chunk
    k_chunks = round(seconds * fs / chunk)
    ts = np.arange(k_chunks * chunk, dtype=np.float64) / fs
    probs = np.full((1, bundle.config.n_classes), 1.0 / bundle.config.n_classes, dtype=np.float32)
    states = []
    for i in range(first, first + count):
        info = StreamInfo(f"m{i}", f"m{i}", fs, ("ch1",))
        st = StreamState(info, None, bundle, PipelineSettings(), monotonic)
        tpl = templates[i % templates.shape[0]]
        for k in range(k_chunks):
            j = (k % per) * chunk
            for w in st.ingest(Chunk(info.stream_id, tpl[j : j + chunk], ts[k * chunk : (k + 1) * chunk], k), 0.0):
                st.on_result(w, probs, 1.0 + k * 1e-3)
        for q in range(st.latencies.maxlen or 0):  # a full latency history (distinct float objects)
            st.latencies.append(10.0 + q * 1e-3)
        states.append(st)
    return states


def measure_rss_per_stream(bundle: ModelBundle, templates: np.ndarray, n_streams: int = 512,
                           fs: float = 8000.0, seconds: float = 2.5) -> dict[str, Any]:
    """Resident memory added per stream, in this process and the QEMG process together (also given apart): the
    slope of VmRSS from ``n_streams // 8`` to
    ``n_streams`` StreamStates, each fed ``seconds`` of 10 ms chunks (every buffer page touched, windows cut) and
    given results for its windows (latency history, rolling estimate), as in a running pipeline.

    Run it in a fresh process (:func:`measure_rss_subprocess`): in a process that has freed memory before, new
    streams reuse already-resident pages and the slope reads too low.
    """
    def qemg_rss(states: list[StreamState]) -> float:  # the QEMG process, once it has analysed what it was sent
        for st in states:
            if isinstance(st.qemg, RemoteQemg):
                st.qemg.wait_idle(30.0)
        return qemg_processes_rss_mb()

    gc.collect()
    before = read_rss_mb()
    first = max(1, n_streams // 8)
    keep = _feed_states(bundle, templates, 0, first, fs, seconds)
    gc.collect()
    mid, q_mid = read_rss_mb(), qemg_rss(keep)
    keep += _feed_states(bundle, templates, first, n_streams - first, fs, seconds)
    gc.collect()
    after, q_after = read_rss_mb(), qemg_rss(keep)
    del keep
    n = max(1, n_streams - first)
    return {"streams": n_streams, "rss_mb_before": before, "rss_mb_after": after,
            "qemg_process_rss_mb_after": q_after, "pipeline_mb_per_stream": (after - mid) / n,
            "qemg_process_mb_per_stream": (q_after - q_mid) / n,
            "mb_per_stream": (after - mid + q_after - q_mid) / n}


def _rss_child(model: str | None, n_streams: int, fs: float) -> dict[str, Any]:
    """Entry point of the fresh process of :func:`measure_rss_subprocess`."""
    from ..model import load_bundle

    logging.disable(logging.WARNING)
    bundle = load_bundle(model)
    templates = make_templates(8, fs, 4.0, round(0.01 * fs))
    return measure_rss_per_stream(bundle, templates, n_streams, fs)


async def measure_rss_subprocess(model: str | None, n_streams: int = 512, fs: float = 8000.0,
                                 timeout_s: float = 180.0) -> dict[str, Any]:
    """:func:`measure_rss_per_stream` in a fresh Python process (so freed memory cannot hide the growth)."""
    code = (
        "import json, sys\n"
        "from streamemg.bench.memory import _rss_child\n"
        f"print(json.dumps(_rss_child({model!r}, {int(n_streams)}, {float(fs)!r})))\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement failed: {err.decode(errors='replace')[-500:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result
