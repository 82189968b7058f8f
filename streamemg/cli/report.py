"""``streamemg report``: one self-contained HTML report of a recorded session (or of a replayed file)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "report",
        help="turn a recording (--output record:DIR) into a self-contained HTML report with pictures",
        description="Write one HTML file (pictures embedded, opens offline) about a recorded session: per stream "
        "a summary (duration, windows, label over time, recording-level estimate, quality, gaps), a probability "
        "timeline, a spectrogram and signal excerpts, plus the model card's facts. DIR is a recording made with "
        "--output record:DIR; any other file that --source file:PATH plays is replayed through the pipeline "
        "first. Research software: the report says plainly that it is not a diagnosis.",
    )
    p.add_argument("path", metavar="DIR", help="recording directory (or a file to replay)")
    p.add_argument("--out", metavar="FILE", help="where to write (default: DIR/report.html)")
    p.add_argument("--model", metavar="PATH", help="model bundle whose card the report shows (default: the shipped)")
    p.add_argument("--excerpts", type=int, default=3, metavar="N", help="signal excerpts per stream (default 3)")
    p.add_argument("--excerpt-s", type=float, default=1.0, metavar="S", help="length of one excerpt (default 1 s)")
    p.add_argument("--max-streams", type=int, default=64, metavar="N", help="streams reported (default 64)")
    p.add_argument(
        "--max-signal-s", type=float, default=900.0, metavar="S",
        help="seconds of each stream's signal read for its pictures (default 900; counts cover everything)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ModelError
    from ..ui.report import ReportSettings, build_report

    settings = ReportSettings(
        excerpts=args.excerpts, excerpt_s=args.excerpt_s, max_streams=args.max_streams, max_signal_s=args.max_signal_s
    )
    bundle = None
    try:
        from ..model import load_bundle

        bundle = load_bundle(args.model)
    except ModelError as exc:
        if args.model:
            raise
        log.warning("no model card in the report: %s", exc)
    out = build_report(Path(args.path), args.out, bundle=bundle, settings=settings)
    print(f"report written to {out}", file=sys.stderr)
    return 0
