"""Print the ground-truth table of docs/qemg.md: ``python tests/qemg/gt_table.py [SEEDS [FIRST]]`` (default 20 and 0:
seeds FIRST to FIRST + SEEDS - 1, 10 s each; ``20 20`` and ``20 40`` give the held-out seed sets of the docs).

"both" counts every unit that fires at least 5 times in view; the last columns restrict it to the units whose true
peak-to-peak at the electrode is above the analyser's detection threshold ("clearly present"), and of those to the
ones without a twin (another unit in view with a shape the analyser's match rule cannot tell from it, see
tests/qemg/groundtruth.py). The restricted figures sit beside the full one, they do not replace it. Under the table:
how many units in view are under the detection threshold, and how many of those have a peak-to-peak under 3 x the
baseline noise (their peaks within +-1.5 SD of it)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from groundtruth import UnitScore, score


def _pct(k: int, n: int) -> str:
    return f"{k} ({100 * k / n:.0f}%)" if n else "-"


def _both(rs: list[UnitScore]) -> int:
    return sum(r.amp_ok and r.dur_ok for r in rs)


def main() -> None:
    n_seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    first = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    seeds = range(first, first + n_seeds)
    print("| class | effort | units in view (>=5 fires) | found | amplitude within 10% | duration within 2 ms | both "
          "| rate within 1 Hz (of found with a rate) | median abs amplitude error | median abs duration error (ms) "
          "| median abs rate error (Hz) | median share of its discharges found | clearly present | both, of those "
          "| of those, with a twin | both, of the clearly present without a twin |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    hidden: list[str] = []
    for effort in (None, 0.15):
        for cls in ("normal", "als", "myopathy"):
            rs = [r for s in seeds for r in score(cls, s, effort=effort)]
            n = len(rs)
            found = [r for r in rs if r.found]
            with_rate = [r for r in found if np.isfinite(r.found_rate)]
            clear = [r for r in rs if r.clear]
            single = [r for r in clear if not r.twin]
            amp = np.median([abs(r.found_amp / r.true_amp - 1) * 100 for r in found]) if found else np.nan
            dur = np.median([abs(r.found_dur - r.true_dur) for r in found]) if found else np.nan
            rate = np.median([abs(r.found_rate - r.true_rate) for r in with_rate]) if with_rate else np.nan
            recall = np.median([r.recall for r in found]) if found else np.nan
            print(f"| {cls} | {'class default' if effort is None else effort} | {n} | {_pct(len(found), n)} "
                  f"| {_pct(sum(r.amp_ok for r in rs), n)} | {_pct(sum(r.dur_ok for r in rs), n)} "
                  f"| {_pct(_both(rs), n)} | {_pct(sum(r.rate_ok for r in rs), len(with_rate))} "
                  f"| {amp:.1f}% | {dur:.2f} | {rate:.2f} | {recall:.2f} | {len(clear)} "
                  f"| {_pct(_both(clear), len(clear))} "
                  f"| {len(clear) - len(single)} | {_pct(_both(single), len(single))} |", flush=True)
            under = [r for r in rs if not r.clear]
            faint = sum(r.true_amp < 3.0 * r.noise for r in under)
            hidden.append(f"{cls} ({'class default' if effort is None else effort}): {len(under)} of {n} under the "
                          f"detection threshold, {faint} of them with a peak-to-peak under 3 x the baseline noise")
    print("\nUnits in view under the analyser's detection threshold:\n")
    print("\n".join(f"- {h}" for h in hidden))


if __name__ == "__main__":
    main()
