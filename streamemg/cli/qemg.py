"""``streamemg qemg FILE... [--json]``: recording-level quantitative MUAP analysis of whole files."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from ..errors import StreamEMGError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "qemg",
        help="quantitative MUAP analysis of recordings (one line per stream)",
        description="Detect, cluster and measure the motor-unit action potentials of whole recordings (any format "
        "`file:` reads: .hea/.bin[.xz] EMGLAB, WFDB, .asc[.xz], .npy, .csv, .xdf, recorder folders): amplitude, "
        "duration, phases, turns, thickness, firing rate, %% polyphasic, units, spontaneous activity, and the "
        "measures outside the normative reference (EMGLAB Normal subjects). Definitions: docs/qemg.md.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON object per stream")
    p.add_argument("--fs", type=float, default=None, help="sampling rate for formats that carry none (.npy)")
    p.add_argument("--units", action="store_true", help="also list every unit (text output)")
    p.set_defaults(func=run)


async def _all(files: list[str], fs: float | None) -> list[tuple[str, list[Any] | str]]:
    from ..qemg.report import analyse_file

    out: list[tuple[str, list[Any] | str]] = []
    for f in files:
        try:
            out.append((f, await analyse_file(f, fs)))
        except StreamEMGError as exc:
            out.append((f, str(exc)))
    return out


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def run(args: argparse.Namespace) -> int:
    from ..qemg.normative import flag_measures

    results = asyncio.run(_all(list(args.files), args.fs))
    ok = True
    for f, res in results:
        if isinstance(res, str):
            ok = False
            if args.json:
                print(json.dumps({"file": f, "error": res}))
            else:
                print(f"{f}: error: {res}", file=sys.stderr)
            continue
        if not res:
            ok = False
            print(f"{f}: error: no stream in the file", file=sys.stderr)
        for rep in res:
            d = rep.to_dict()
            d["flags"] = flag_measures(d)
            if args.json:
                print(json.dumps(d, allow_nan=False))
                continue
            flags = ", ".join(f"{k} {v}" for k, v in d["flags"].items()) or "none"
            print(
                f"{f} [{rep.stream}, {rep.seconds:.1f} s]: {d['units']} units  "
                f"amp {_fmt(d['amplitude_uv'], '.0f')} µV  "
                f"dur {_fmt(d['duration_ms'], '.1f')} ms  phases {_fmt(d['phases'], '.1f')}  "
                f"turns {_fmt(d['turns'], '.1f')}  thick {_fmt(d['thickness_ms'], '.2f')} ms  "
                f"poly {_fmt(d['polyphasic_pct'], '.0f')}%  rate {_fmt(d['firing_hz'], '.1f')} Hz "
                f"(CV {_fmt(d['firing_cv'], '.2f')})  fib {d['fibrillations']} psw {d['positive_sharp_waves']} "
                f"fasc {d['fasciculations']}  outside reference: {flags}"
            )
            if args.units:
                for u in rep.units:
                    w = u.waveform
                    shape = (
                        f"amp {w.amplitude_uv:7.1f} µV  dur {w.duration_ms:5.1f} ms  phases {w.phases}  turns {w.turns}"
                        if w.measured
                        else "potential not measured: not clear of its baseline"
                    )
                    print(f"    ch{u.channel} {u.kind:<20} {shape}  rate {u.firing_hz:5.1f} Hz  n {u.discharges}")
    sys.stdout.flush()
    return 0 if ok else 1
