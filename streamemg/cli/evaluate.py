"""``streamemg evaluate DATA_DIR...``: subject-wise cross-validation, cross-site and (labelled) leaky results."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from ..errors import ConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate",
        help="subject-wise cross-validation of the training recipe",
        description="Cross-validate the training recipe subject-wise (no subject on both sides) on each data set "
        "found: window-, recording- (aggregated as a stream does) and subject-level accuracy, per-class "
        "sensitivity/specificity, macro-F1 and confusion matrices.",
    )
    p.add_argument("data", nargs="+", metavar="DATA_DIR", help="data root or data set folder(s)")
    p.add_argument("--folds", default="5", help="'loso' (leave one subject out) or K for grouped K-fold (default 5)")
    p.add_argument(
        "--datasets",
        default="emglab,mendeley,emglab+mendeley",
        help="comma-separated data sets to cross-validate; 'a+b' pools them (subjects stay apart, folds are "
        "stratified by data set and class). Default: emglab,mendeley,emglab+mendeley",
    )
    p.add_argument("--cross-site", action="store_true", help="also train on one site and test on the other")
    p.add_argument("--leaky", action="store_true", help="also a LEAKY random window split (for comparison only)")
    p.add_argument("--no-cv", action="store_true", help="skip the cross-validation (only --cross-site/--leaky)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="training epochs per fold (default: the shipped model's)")
    p.add_argument("--device", default="auto", help="auto (default: CUDA when present, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="tiny training budget (a smoke test, not a result)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..clinical.datasets import find_recordings
    from ..clinical.evaluate import cross_site, cross_validate, leaky_split, render_report
    from ..clinical.train import TrainSettings, default_config, prepare_all

    console = Console(stderr=args.json)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    wanted = {part for d in datasets for part in d.split("+")} | ({"emglab", "mendeley"} if args.cross_site else set())
    refs = find_recordings(args.data, datasets=sorted(wanted))
    if not refs:
        raise ConfigError(f"no recordings found under {', '.join(args.data)}")
    folds: str | int = args.folds if args.folds.lower() == "loso" else _int_folds(args.folds)
    settings = TrainSettings(seed=args.seed, device=args.device, threads=args.threads)
    if args.epochs is not None:
        settings = dataclasses.replace(settings, epochs=args.epochs)
    if args.quick:
        settings = dataclasses.replace(settings, epochs=min(settings.epochs, 2), draws_per_s=0.25)
    config = default_config()
    progress = not args.no_progress
    prepared = prepare_all(refs, config, progress=progress)
    reports = []
    log = None if args.json else console.print
    if not args.no_cv:
        for ds in datasets:
            members = set(ds.split("+"))
            part = [p for p in prepared if p.ref.dataset in members]
            if len({p.ref.subject for p in part}) < 2:
                console.print(f"[yellow]{ds}: fewer than two subjects present, no cross-validation[/yellow]")
                continue
            reports.append(cross_validate(part, config, settings, folds, args.seed, progress, log))
    if args.cross_site:
        for a, b in (("emglab", "mendeley"), ("mendeley", "emglab")):
            if any(p.ref.dataset == a for p in prepared) and any(p.ref.dataset == b for p in prepared):
                reports.append(cross_site(prepared, config, a, b, settings, progress))
    if args.leaky:
        first = datasets[0].split("+") if datasets else ["emglab"]
        part = [p for p in prepared if p.ref.dataset in first]
        reports.append(leaky_split(part, config, settings, seed=args.seed, progress=progress))
    if args.json:
        payload = {
            "command": " ".join(["streamemg", *sys.argv[1:]]),
            "config": config.to_dict(),
            "train_settings": settings.to_dict(),
            "reports": [r.to_dict() for r in reports],
        }
        print(json.dumps(payload, indent=2))
    else:
        for r in reports:
            render_report(r, console)
    return 0


def _int_folds(value: str) -> int:
    try:
        k = int(value)
    except ValueError as exc:
        raise ConfigError(f"--folds {value!r}: give 'loso' or an integer K >= 2") from exc
    if k < 2:
        raise ConfigError(f"--folds {value!r}: give 'loso' or an integer K >= 2")
    return k
