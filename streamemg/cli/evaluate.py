"""``streamemg evaluate DATA_DIR...``: subject-wise cross-validation, cross-site and (labelled) leaky results."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from typing import Any

from ..errors import ConfigError


def _command_line() -> str:
    """The command that made this report, as a user would type it: the data folder written as ``"$STREAMEMG_DATA"``.

    The report (and a model card that quotes it) then reproduces anywhere and names no folder of the machine it
    ran on.
    """
    data = os.environ.get("STREAMEMG_DATA", "").rstrip("/")
    words = []
    for word in ["streamemg", *sys.argv[1:]]:
        if data and (word == data or word.startswith(data + "/")):
            words.append('"$STREAMEMG_DATA"' + shlex.quote(word[len(data):]) if word != data else '"$STREAMEMG_DATA"')
        else:
            words.append(shlex.quote(word))
    return " ".join(words)

def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate",
        help="subject-wise cross-validation of the training recipe",
        description="Cross-validate the training recipe subject-wise (no subject on both sides) on each data set "
        "found: window-, recording- (aggregated as a stream does) and subject-level accuracy, per-class "
        "sensitivity/specificity, macro-F1 and confusion matrices.",
    )
    p.add_argument("data", nargs="*", metavar="DATA_DIR", help="data root or data set folder(s)")
    p.add_argument(
        "--manifest", action="append", default=[], metavar="CSV",
        help="a CSV listing your own labelled recordings (path,label,subject,...); each of its sites is "
        "cross-validated (or scored with --model); repeatable",
    )
    p.add_argument(
        "--model", default=None, metavar="MODEL.pt",
        help="score this trained bundle on the given recordings instead of cross-validating the recipe",
    )
    p.add_argument("--site", default=None, metavar="SITE.json", help="with --model: apply this site profile")
    p.add_argument("--folds", default="5", help="'loso' (leave one subject out) or K for grouped K-fold (default 5)")
    p.add_argument(
        "--datasets",
        default="emglab,mendeley,emglab+mendeley",
        help="comma-separated data sets to cross-validate; 'a+b' pools them (subjects stay apart, folds are "
        "stratified by data set and class). Default: emglab,mendeley,emglab+mendeley",
    )
    p.add_argument(
        "--cross-site", action="store_true",
        help="also the transfer table: train on one site, test on the other (EMGLAB <-> Mendeley) with no "
        "adaptation, with unlabelled calibration, and fine-tuned on k labelled subjects per class",
    )
    p.add_argument("--ks", default="1,2,4", help="--cross-site: subjects per class to fine-tune on (default 1,2,4)")
    p.add_argument("--draws", type=int, default=3, help="--cross-site: random draws per k (default 3)")
    p.add_argument("--ft-steps", type=int, default=None, help="--cross-site: fine-tuning steps (default 150)")
    p.add_argument(
        "--ft-layers", default=None, choices=("all", "head", "norm_head"),
        help="--cross-site: which parameters fine-tuning moves (default all)",
    )
    p.add_argument("--ft-anchor", type=float, default=None, help="--cross-site: fine-tuning L2 pull (default 0)")
    p.add_argument(
        "--scratch-baseline", action="store_true",
        help="--cross-site: also train from scratch on the same k target subjects (does the source model help?)",
    )
    p.add_argument(
        "--calibration-mode", default="affine", choices=("affine", "shift"),
        help="--cross-site: site profile mode for the calibrated rows (default affine)",
    )
    p.add_argument("--leaky", action="store_true", help="also a LEAKY random window split (for comparison only)")
    p.add_argument("--no-cv", action="store_true", help="skip the cross-validation (only --cross-site/--leaky)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="training epochs per fold (default: the shipped model's)")
    p.add_argument("--device", default="auto", help="auto (default: CUDA when present, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--augment", default=None, metavar="K=V,...",
        help="change training augmentation, e.g. gain_db=20,tilt_db_per_octave=3,lowpass_prob=0.5",
    )
    p.add_argument("--quick", action="store_true", help="tiny training budget (a smoke test, not a result)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..clinical.datasets import find_recordings
    from ..clinical.evaluate import _json_clean, cross_validate, leaky_split, render_report
    from ..clinical.train import TrainSettings, default_config, prepare_all

    console = Console(stderr=args.json)
    if not args.data and not args.manifest:
        raise ConfigError("nothing to evaluate: give data folder(s) and/or --manifest FILE.csv")
    if args.site is not None and args.model is None:
        raise ConfigError("--site applies a profile to a given model: add --model MODEL.pt (and see `calibrate`)")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()] if args.data else []
    wanted = {part for d in datasets for part in d.split("+")} | ({"emglab", "mendeley"} if args.cross_site else set())
    if args.cross_site:
        wanted.add("emgdb")  # the spot check
    refs = find_recordings(args.data, datasets=sorted(wanted)) if args.data else []
    if args.data and not refs:
        raise ConfigError(f"no recordings found under {', '.join(args.data)}")
    if args.manifest:
        from ..clinical.manifest import manifest_refs

        extra = manifest_refs(args.manifest, require_label=True, require_subject=True)
        refs += extra
        datasets += sorted({r.dataset for r in extra})
    if args.model is not None:
        return _score_model(args, refs, console)
    folds: str | int = args.folds if args.folds.lower() == "loso" else _int_folds(args.folds)
    settings = TrainSettings(seed=args.seed, device=args.device, threads=args.threads)
    if args.epochs is not None:
        settings = dataclasses.replace(settings, epochs=args.epochs)
    if args.augment:
        from ..clinical.train import parse_augment

        settings = dataclasses.replace(settings, augment=parse_augment(args.augment))
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
    transfer = []
    if args.cross_site:
        from ..clinical.adapt import FineTuneSettings
        from ..clinical.transfer import transfer_direction

        ks = [int(k) for k in args.ks.split(",") if k.strip()]
        ft = FineTuneSettings(seed=args.seed, device=args.device, threads=args.threads)
        if args.ft_steps is not None:
            ft = dataclasses.replace(ft, steps=args.ft_steps)
        if args.ft_layers is not None:
            ft = dataclasses.replace(ft, layers=args.ft_layers)
        if args.ft_anchor is not None:
            ft = dataclasses.replace(ft, anchor=args.ft_anchor)
        if args.quick:
            ft = dataclasses.replace(ft, steps=min(ft.steps, 10))
        for a, b in (("emglab", "mendeley"), ("mendeley", "emglab")):
            if any(p.ref.dataset == a for p in prepared) and any(p.ref.dataset == b for p in prepared):
                transfer.append(
                    transfer_direction(
                        prepared, config, a, b, settings, ks, args.draws, ft, args.calibration_mode,
                        scratch_baseline=args.scratch_baseline, progress=progress, log=console.print,
                    )
                )
    if args.leaky:
        first = datasets[0].split("+") if datasets else ["emglab"]
        part = [p for p in prepared if p.ref.dataset in first]
        reports.append(leaky_split(part, config, settings, seed=args.seed, progress=progress))
    if args.json:
        payload = {
            "command": _command_line(),
            "config": config.to_dict(),
            "train_settings": settings.to_dict(),
            "reports": [r.to_dict() for r in reports],
        }
        if transfer:
            payload["transfer"] = _json_clean(transfer)
        print(json.dumps(payload, indent=2))
    else:
        for r in reports:
            render_report(r, console)
        if transfer:
            render_transfer(transfer, console)
    return 0


def render_transfer(rows: list[dict[str, Any]], console: Any) -> None:
    """The transfer table (recording / subject accuracy) with rich."""
    from rich.table import Table

    def pct(x: Any) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    t = Table(title="transfer across sites (recording / subject accuracy)")
    for col in ("direction", "adaptation", "test subjects", "recording", "subject"):
        t.add_column(col)
    for r in rows:
        d = f"{r['source']} -> {r['target']}"
        for key, name in (("no_adaptation", "none"), ("calibrated_transductive", "calibrated (transductive)")):
            t.add_row(d, name, str(r[key]["subject"]["n"]), pct(r[key]["recording"]["accuracy"]),
                      pct(r[key]["subject"]["accuracy"]))
        for k, v in r["fine_tuned"].items():
            if "skipped" in v:
                t.add_row(d, f"fine-tuned k={k}", "-", v["skipped"], "")
                continue
            ft, base = v["fine_tuned"], v["no_adaptation_same_test"]
            t.add_row(
                d, f"fine-tuned k={k} ({v['draws']} draws; none on same test)", str(v["test_subjects"]),
                f"{pct(ft['recording']['mean'])} ± {100 * ft['recording']['sd']:.1f} "
                f"({pct(base['recording']['mean'])})",
                f"{pct(ft['subject']['mean'])} ± {100 * ft['subject']['sd']:.1f} ({pct(base['subject']['mean'])})",
            )
        for name, spot in r.get("spot_checks", {}).items():
            for key, label in (("no_adaptation", "none"), ("calibrated_transductive", "calibrated")):
                t.add_row(f"{r['source']} -> {name}", label, str(spot[key]["subject"]["n"]),
                          pct(spot[key]["recording"]["accuracy"]), pct(spot[key]["subject"]["accuracy"]))
    console.print(t)


def _score_model(args: argparse.Namespace, refs: list[Any], console: Any) -> int:
    """``--model``: score a trained bundle (optionally with --site) on the given labelled recordings."""
    from ..clinical.evaluate import EvalReport, _subject_result, evaluate_model, render_report
    from ..clinical.site import SiteProfile
    from ..clinical.train import prepare_all
    from ..model import load_bundle

    bundle = load_bundle(args.model)
    site = SiteProfile.load(args.site, bundle) if args.site else None
    unlabelled = [r for r in refs if not r.label]
    if unlabelled:
        raise ConfigError(f"{unlabelled[0].path}: unlabelled; scoring needs a label for every recording")
    prepared = prepare_all(refs, bundle.config, progress=not args.no_progress)
    w, r = evaluate_model(bundle.build(), prepared, bundle.config, site=site.tensor() if site else None)
    report = EvalReport(
        protocol=f"model {bundle.name}{' + site ' + site.site if site else ''} on {len(prepared)} recordings",
        window=w,
        recording=r,
        subject=_subject_result(r, {p.ref.record: p.ref.subject for p in prepared}),
        folds=0,
        notes=["the model's own training subjects, if among these recordings, make this optimistic"],
    )
    if args.json:
        print(json.dumps({"command": _command_line(), "reports": [report.to_dict()]}, indent=2))
    else:
        render_report(report, console)
    return 0


def _int_folds(value: str) -> int:
    try:
        k = int(value)
    except ValueError as exc:
        raise ConfigError(f"--folds {value!r}: give 'loso' or an integer K >= 2") from exc
    if k < 2:
        raise ConfigError(f"--folds {value!r}: give 'loso' or an integer K >= 2")
    return k
