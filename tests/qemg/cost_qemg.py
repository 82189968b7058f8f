"""Print the CPU cost of QEMG per stream (docs/qemg.md): ``python tests/qemg/cost_qemg.py [FS] [BLOCK_S SUMMARY_S]``.

One single-channel stream of the benchmark's synthetic 8 kHz EMG in 10 ms chunks through ``StreamState.ingest``
(filters, resampler, ring buffers, window cuts, quality gate) with QEMG off and on, plus the per-estimate QEMG
summary the pipeline attaches; best of 5 interleaved trials, process CPU time. QEMG runs inline
(``background=False``), so its whole cost is counted in this process (live streams run it in the QEMG process).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from streamemg.bench.common import make_templates
from streamemg.clock import monotonic
from streamemg.model import load_bundle
from streamemg.pipeline import PipelineSettings, StreamState
from streamemg.qemg import QemgSettings
from streamemg.types import Chunk, StreamInfo


def main() -> None:
    fs = float(sys.argv[1]) if len(sys.argv) > 1 else 8000.0
    extra = {"block_s": float(sys.argv[2]), "summary_every_s": float(sys.argv[3])} if len(sys.argv) > 3 else {}
    bundle = load_bundle(None)
    chunk = round(0.01 * fs)
    data = make_templates(1, fs, 4.0, chunk)[0]
    seconds = 20.0
    n = round(seconds * fs / chunk)
    per = data.shape[0] // chunk
    ts = np.arange(n * chunk) / fs
    chunks = [Chunk("s", data[(k % per) * chunk : (k % per + 1) * chunk], ts[k * chunk : (k + 1) * chunk], k)
              for k in range(n)]
    info = StreamInfo("s", "s", fs, ("ch1",))
    best = {False: float("inf"), True: float("inf")}
    for _ in range(5):
        for on in (False, True):
            qs = QemgSettings(enabled=on, background=False, **extra)
            st = StreamState(info, None, bundle, PipelineSettings(qemg=qs), monotonic)
            t0 = time.process_time()
            for c in chunks:
                for _w in st.ingest(c, 0.0):
                    if st.qemg is not None:
                        st.qemg.summary_dict()
            best[on] = min(best[on], time.process_time() - t0)
    off, on = best[False] / seconds * 1e3, best[True] / seconds * 1e3
    print(f"fs {fs:g} Hz {extra or ''}: ingest CPU {off:.2f} ms per stream-second without QEMG, {on:.2f} with; "
          f"QEMG adds {on - off:.2f} ms per stream-second")


if __name__ == "__main__":
    main()
