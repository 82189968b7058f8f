"""Count the units whose potential could not be measured on the real recordings (docs/qemg.md, "Definitions").

``python tests/qemg/unmeasured_units.py [DATA]`` (DATA: the clinical data folder, default ``$STREAMEMG_DATA``):
per site and class, the voluntary units of the recording-level reports (the units of each 10 s horizon pooled, as
``streamemg.qemg.realdata`` analyses them), how many of them have no duration (not measured), and how many have a
duration under 2 ms. About a minute.
"""

from __future__ import annotations

import collections
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from streamemg.clinical.datasets import find_recordings
from streamemg.qemg.realdata import dataset_settings
from streamemg.qemg.report import analyse_array


def main() -> int:
    data = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("STREAMEMG_DATA", "")
    if not data or not Path(data).is_dir():
        print("no clinical data folder: pass it as the argument or set STREAMEMG_DATA", file=sys.stderr)
        return 2
    counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for ref in find_recordings([Path(data)], datasets=["emglab", "mendeley"]):
        rec = ref.load()
        for u in analyse_array(rec.data, rec.fs, dataset_settings(ref.dataset)).muaps:
            key = (ref.dataset, ref.label)
            counts[(*key, "units")] += 1
            counts[(*key, "not measured")] += not u.waveform.measured
            counts[(*key, "under 2 ms")] += u.waveform.measured and u.waveform.duration_ms < 2.0
    print("| site | class | units | not measured | measured, under 2 ms |")
    print("|---|---|---|---|---|")
    for ds in ("emglab", "mendeley"):
        for lab in ("Normal", "ALS", "Myopathy"):
            n = counts[(ds, lab, "units")]
            if n:
                k, s = counts[(ds, lab, "not measured")], counts[(ds, lab, "under 2 ms")]
                print(f"| {ds} | {lab} | {n} | {k} ({100 * k / n:.1f}%) | {s} ({100 * s / n:.1f}%) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
