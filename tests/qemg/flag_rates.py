"""Print how often a recording is flagged against the normative reference (docs/qemg.md, "The normative reference").

``python tests/qemg/flag_rates.py ROWS.jsonl`` where ``ROWS.jsonl`` is the cache of
``python -m streamemg.qemg.realdata --cache``: per site and class, the share of recordings with at least one measure
outside the shipped reference (fibrillation and positive-sharp-wave flags left out) and the four most frequent flags.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from streamemg.qemg.normative import ABNORMAL_IF_PRESENT, flag_measures


def main() -> None:
    rows = [json.loads(line) for line in Path(sys.argv[1]).read_text(encoding="utf-8").splitlines() if line.strip()]
    for ds in ("emglab", "mendeley"):
        for lab in ("Normal", "ALS", "Myopathy"):
            rs = [r for r in rows if r["dataset"] == ds and r["label"] == lab]
            if not rs:
                continue
            counts: collections.Counter[str] = collections.Counter()
            flagged = 0
            for r in rs:
                f = {k: v for k, v in flag_measures(r).items() if k not in ABNORMAL_IF_PRESENT}
                flagged += bool(f)
                counts.update(f"{k} {v}" for k, v in f.items())
            top = ", ".join(f"{k} {100 * v / len(rs):.0f}%" for k, v in counts.most_common(4))
            print(f"{ds} {lab}: {len(rs)} recordings, {100 * flagged / len(rs):.0f}% flagged; {top}")


if __name__ == "__main__":
    main()
