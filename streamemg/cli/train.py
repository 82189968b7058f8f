"""``streamemg train DATA_DIR...``: train SpectroEMG-Net on clinical recordings and write a model bundle + card."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError

DEFAULT_DATASETS = ("emglab", "mendeley")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train",
        help="train the classifier on clinical data folders",
        description="Train SpectroEMG-Net on one or more data folders (the data root or single data set folders) "
        "with the streaming preprocessing, and write a model bundle plus its model card (Markdown, beside it).",
    )
    p.add_argument("data", nargs="*", metavar="DATA_DIR", help="data root or data set folder(s)")
    p.add_argument(
        "--manifest", action="append", default=[], metavar="CSV",
        help="a CSV listing your own recordings (path,label,subject[,site,fs,start_s,stop_s]); repeatable",
    )
    p.add_argument(
        "--init", default=None, metavar="MODEL.pt",
        help="fine-tune this trained bundle ('default': the shipped model) on the given recordings instead of "
        "training from scratch",
    )
    p.add_argument(
        "--layers", default=None, choices=("all", "head", "norm_head"),
        help="with --init: which parameters move (default: all)",
    )
    p.add_argument("--steps", type=int, default=None, help="with --init: optimisation steps (default 150)")
    p.add_argument(
        "--anchor", type=float, default=None,
        help="with --init: L2 pull towards the starting weights (keeps more of the old sites; default 0)",
    )
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
    p.add_argument(
        "--augment", default=None, metavar="K=V,...",
        help="change training augmentation, e.g. gain_db=20,tilt_db_per_octave=3,lowpass_prob=0.5",
    )
    p.add_argument("--quick", action="store_true", help="a tiny run (2 epochs, few windows) to check the setup")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..clinical.datasets import find_recordings
    from ..clinical.train import TrainSettings, default_config, prepare_all, render_model_card, train_bundle

    console = Console(stderr=True)
    if not args.data and not args.manifest:
        raise ConfigError("nothing to train on: give data folder(s) and/or --manifest FILE.csv")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    refs = find_recordings(args.data, datasets=datasets) if args.data else []
    if args.data and not refs:
        raise ConfigError(f"no recordings of {datasets} found under {', '.join(args.data)}")
    if args.manifest:
        from ..clinical.manifest import manifest_refs

        refs += manifest_refs(args.manifest, require_label=True, require_subject=True)
    if args.init is not None:
        return _fine_tune(args, refs, console)
    if args.layers is not None or args.steps is not None or args.anchor is not None:
        raise ConfigError("--layers, --steps and --anchor belong to fine-tuning: add --init MODEL.pt")
    settings = TrainSettings(seed=args.seed, device=args.device, threads=args.threads)
    if args.epochs is not None:
        settings = dataclasses.replace(settings, epochs=args.epochs)
    if args.augment:
        from ..clinical.train import parse_augment

        settings = dataclasses.replace(settings, augment=parse_augment(args.augment))
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


def _fine_tune(args: argparse.Namespace, refs: list, console: Any) -> int:
    """``--init``: adapt a trained bundle to the given labelled recordings; the card says from what and on what."""
    from ..clinical.adapt import FineTuneSettings, fine_tune
    from ..clinical.train import prepare_all, render_model_card
    from ..model import ModelBundle, bundle_fingerprint, default_model_path, load_bundle

    init_path = default_model_path() if args.init in ("default", "shipped") else Path(args.init)
    if init_path is None:
        raise ConfigError("--init default: no shipped model is installed; give the path of a trained bundle")
    base = load_bundle(init_path)
    if not base.trained:
        raise ConfigError(f"--init {args.init}: the bundle is untrained; fine-tune a trained model")
    settings = FineTuneSettings(seed=args.seed, device=args.device, threads=args.threads)
    if args.layers is not None:
        settings = dataclasses.replace(settings, layers=args.layers)
    if args.steps is not None:
        settings = dataclasses.replace(settings, steps=args.steps)
    if args.anchor is not None:
        settings = dataclasses.replace(settings, anchor=args.anchor)
    if args.quick:
        settings = dataclasses.replace(settings, steps=min(settings.steps, 10))
    console.print(
        f"fine-tuning {args.init} ({base.name}) on {len(refs)} recordings, {len({r.subject for r in refs})} subjects"
    )
    prepared = prepare_all(refs, base.config, progress=not args.no_progress)
    result = fine_tune(base.build(), prepared, base.config, settings, log=console.print)
    training = {
        **result.summary,
        "adapted_from": {
            "file": init_path.name,
            "name": base.name,
            "fingerprint": bundle_fingerprint(base),
            "data": base.training.get("data", {}),
            "subjects": len(base.training.get("subject_ids", [])),
        },
        "data": _data_summary(refs),
        "subject_ids": sorted({r.subject for r in refs}),
        "feature_reference": base.training.get("feature_reference"),
        "parameters": base.training.get("parameters"),
        "flops_per_window": base.training.get("flops_per_window"),
    }
    bundle = ModelBundle(
        config=base.config,
        state_dict={k: v.detach().clone() for k, v in result.model.state_dict().items()},
        trained=True,
        name=f"{base.name}+adapted",
        training=training,
        metrics={},
    )
    out = bundle.save(args.out)
    card = Path(args.card) if args.card else out.with_suffix(".md")
    card.write_text(render_model_card(bundle, command=" ".join(["streamemg", *sys.argv[1:]]) if sys.argv else ""))
    console.print(f"wrote {out} (adapted from {args.init}) and {card}")
    return 0


def _data_summary(refs: list) -> dict[str, Any]:
    out: dict[str, dict[str, Any]] = {}
    for r in refs:
        d = out.setdefault(r.dataset, {"recordings": 0, "subjects": set(), "classes": {}})
        d["recordings"] += 1
        d["subjects"].add(r.subject)
        d["classes"][r.label] = d["classes"].get(r.label, 0) + 1
    return {k: {**v, "subjects": len(v["subjects"])} for k, v in out.items()}
