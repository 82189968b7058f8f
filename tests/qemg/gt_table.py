"""Print the ground-truth table of docs/qemg.md: ``python tests/qemg/gt_table.py [SEEDS]`` (default 5).

The last two columns restrict the count to the units whose true peak-to-peak at the electrode is above the
analyser's detection threshold ("clearly present"); the full figure over every unit that fires at least 5 times
in view stays in the "both" column."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from groundtruth import score


def main() -> None:
    seeds = range(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
    print("| class | effort | units in view (>=5 fires) | found | amplitude within 10% | duration within 2 ms | both "
          "| rate within 1 Hz (of found with a rate) | median abs amplitude error | median abs duration error (ms) "
          "| median abs rate error (Hz) | clearly present: units above the threshold | both, of those |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for effort in (None, 0.15):
        for cls in ("normal", "als", "myopathy"):
            rs = [r for s in seeds for r in score(cls, s, effort=effort)]
            n = len(rs)
            found = [r for r in rs if r.found]
            with_rate = [r for r in found if np.isfinite(r.found_rate)]
            clear = [r for r in rs if r.clear]  # true peak-to-peak above the detection threshold

            def pct(k: int, n: int = n) -> str:
                return f"{k} ({100 * k / n:.0f}%)" if n else "-"

            amp = np.median([abs(r.found_amp / r.true_amp - 1) * 100 for r in found]) if found else np.nan
            dur = np.median([abs(r.found_dur - r.true_dur) for r in found]) if found else np.nan
            rate = np.median([abs(r.found_rate - r.true_rate) for r in with_rate]) if with_rate else np.nan
            print(f"| {cls} | {'class default' if effort is None else effort} | {n} | {pct(len(found))} "
                  f"| {pct(sum(r.amp_ok for r in rs))} | {pct(sum(r.dur_ok for r in rs))} "
                  f"| {pct(sum(r.amp_ok and r.dur_ok for r in rs))} | {sum(r.rate_ok for r in rs)}/{len(with_rate)} "
                  f"| {amp:.1f}% | {dur:.2f} | {rate:.2f} | {len(clear)} "
                  f"| {pct(sum(r.amp_ok and r.dur_ok for r in clear), len(clear))} |", flush=True)


if __name__ == "__main__":
    main()
