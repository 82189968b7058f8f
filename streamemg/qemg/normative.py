"""The normative QEMG reference and the flags against it.

The reference ships as ``reference.json`` next to this module. It is built from the EMGLAB N2001 Normal
subjects by ``python -m streamemg.qemg.realdata --data DATA_DIR --write-reference`` (docs/qemg.md): for every
measure, the 2.5th and 97.5th percentiles of the recording-level values over the Normal recordings (plus
their mean, SD and counts). A measure below the lower or above the upper limit is flagged ``"low"`` /
``"high"``; any fibrillation potential or positive sharp wave is flagged ``"present"`` (none belong in a
normal muscle). With no reference file, nothing is flagged.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Where the shipped reference lives.
REFERENCE_PATH = Path(__file__).with_name("reference.json")
#: Measures compared with the reference (keys of ``QemgSummary.to_dict``).
REFERENCE_MEASURES: tuple[str, ...] = (
    "amplitude_uv", "duration_ms", "phases", "turns", "thickness_ms", "polyphasic_pct", "firing_hz", "units",
)
#: Spontaneous activity that is abnormal wherever it is seen.
ABNORMAL_IF_PRESENT: tuple[str, ...] = ("fibrillations", "positive_sharp_waves")


@functools.cache
def load_reference(path: str | None = None) -> dict[str, Any] | None:
    """The reference as a dict ``{"measures": {name: {"low", "high", "mean", "sd", "n"}}, ...}``, or None."""
    p = Path(path) if path is not None else REFERENCE_PATH
    if not p.exists():
        return None
    loaded = json.loads(p.read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else None


def flag_measures(qemg: Mapping[str, Any], reference: Mapping[str, Any] | None = None) -> dict[str, str]:
    """``{measure: "low" | "high" | "present"}`` for the measures of ``qemg`` outside the reference."""
    ref = reference if reference is not None else load_reference()
    flags: dict[str, str] = {}
    if ref is not None:
        for name, lim in ref.get("measures", {}).items():
            v = qemg.get(name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                continue
            if v < lim["low"]:
                flags[name] = "low"
            elif v > lim["high"]:
                flags[name] = "high"
    for name in ABNORMAL_IF_PRESENT:
        v = qemg.get(name)
        if isinstance(v, (int, float)) and v > 0:
            flags[name] = "present"
    return flags


def build_reference(rows: Sequence[Mapping[str, Any]], source: str) -> dict[str, Any]:
    """The reference from recording-level QEMG rows (each a ``to_dict`` plus ``"subject"``) of Normal subjects."""
    measures: dict[str, Any] = {}
    for name in REFERENCE_MEASURES:
        vals = np.array([float(r[name]) for r in rows if isinstance(r.get(name), (int, float))], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        if vals.size < 5:
            continue
        measures[name] = {
            "low": round(float(np.percentile(vals, 2.5)), 3),
            "high": round(float(np.percentile(vals, 97.5)), 3),
            "mean": round(float(vals.mean()), 3),
            "sd": round(float(vals.std(ddof=1)), 3),
            "n": int(vals.size),
        }
    return {
        "source": source,
        "recordings": len(rows),
        "subjects": sorted({str(r.get("subject")) for r in rows}),
        "limits": "2.5th-97.5th percentile of the recording-level values",
        "measures": measures,
    }
