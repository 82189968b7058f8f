"""Ingest cost: CPU per chunk of a stream's ring buffer, filters, resampling and window cutting."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from ..clock import monotonic
from ..model import ModelBundle
from ..pipeline import PipelineSettings, StreamState
from ..types import Chunk, StreamInfo
from .common import (
    make_templates,
)

log = logging.getLogger(__name__)


def measure_ingest(
    bundle: ModelBundle, templates: np.ndarray, fs: float = 8000.0, chunk_ms: float = 10.0, seconds: float = 20.0
) -> dict[str, Any]:
    """CPU µs per chunk of :meth:`StreamState.ingest` (ring buffers, filters, resampling, window cuts + quality).

    One single-channel stream at ``fs`` fed ``seconds`` of ``chunk_ms`` chunks (thread CPU time, best of 3).
    Windows are cut (and their quality assessed) as in the pipeline; inference is not included.
    """
    chunk = max(1, round(chunk_ms * fs / 1000.0))
    data = templates[0]
    if fs != 8000.0:
        data = make_templates(1, fs, 4.0, chunk)[0]
    per = data.shape[0] // chunk
    n = max(1, round(seconds * fs / chunk))
    ts = np.arange(n * chunk, dtype=np.float64) / fs
    chunks = [Chunk("s", data[(k % per) * chunk : (k % per + 1) * chunk], ts[k * chunk : (k + 1) * chunk], k)
              for k in range(n)]
    info = StreamInfo("s", "s", fs, ("ch1",))
    best = math.inf
    windows = 0
    for _ in range(3):
        state = StreamState(info, None, bundle, PipelineSettings(), monotonic)
        t0 = time.thread_time()
        windows = 0
        for c in chunks:
            windows += len(state.ingest(c, 0.0))
        best = min(best, time.thread_time() - t0)
    return {"us_per_chunk": best / n * 1e6, "chunk_samples": chunk, "fs": fs, "chunks": n, "windows": windows}
