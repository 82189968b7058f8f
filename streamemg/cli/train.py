"""``streamemg train DATA_DIR...``: train SpectroEMG-Net on clinical recordings and write a model bundle + card."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ..errors import ConfigError

DEFAULT_DATASETS = ("emglab", "mendeley")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train",
        help="train the classifier on clinical data folders",
        description="Train SpectroEMG-Net on one or more data folders (the data root or single data set folders) "
        "with the streaming preprocessing, and write a model bundle plus its model card (Markdown, beside it).",
    )
    p.add_argument("data", nargs="+", metavar="DATA_DIR", help="data root or data set folder(s)")
    p.add_argument("--out", default="model.pt", metavar="PATH", help="bundle to write (default: model.pt)")
    p.add_argument("--card", default=None, metavar="PATH", help="model card to write (default: OUT with .md)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the shipped model's)")
    p.add_argument("--device", default="auto", help="auto (default: CUDA when present, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--datasets",
        default=",".join(DEFAULT_DATASETS),
        help="comma-separated data sets to train on: emglab, mendeley, emgdb (default: emglab,mendeley)",
    )
    p.add_argument("--metrics", default=None, metavar="JSON", help="`streamemg evaluate --json` output to embed")
    p.add_argument("--quick", action="store_true", help="a tiny run (2 epochs, few windows) to check the setup")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..clinical.datasets import find_recordings
    from ..clinical.train import TrainSettings, default_config, prepare_all, render_model_card, train_bundle

    console = Console(stderr=True)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    refs = find_recordings(args.data, datasets=datasets)
    if not refs:
        raise ConfigError(f"no recordings of {datasets} found under {', '.join(args.data)}")
    settings = TrainSettings(seed=args.seed, device=args.device, threads=args.threads)
    if args.epochs is not None:
        settings = dataclasses.replace(settings, epochs=args.epochs)
    if args.quick:
        settings = dataclasses.replace(settings, epochs=min(settings.epochs, 2), draws_per_s=0.25)
    metrics = {}
    if args.metrics:
        try:
            metrics = json.loads(Path(args.metrics).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--metrics {args.metrics}: not a readable JSON file ({exc})") from exc
    config = default_config()
    console.print(
        f"training on {len(refs)} recordings, {len({r.subject for r in refs})} subjects ({', '.join(datasets)})"
    )
    prepared = prepare_all(refs, config, progress=not args.no_progress)
    bundle = train_bundle(
        prepared,
        config,
        settings,
        metrics=metrics,
        progress=not args.no_progress,
        log=console.print,
    )
    out = bundle.save(args.out)
    card = Path(args.card) if args.card else out.with_suffix(".md")
    card.write_text(render_model_card(bundle, command=" ".join(["streamemg", *sys.argv[1:]]) if sys.argv else ""))
    console.print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) and {card}")
    return 0
