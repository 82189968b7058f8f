"""The transfer table: how well a model trained at one site does at another, and what adaptation buys.

For each direction (source site -> target site), one model is trained on every recording of the source
site with the given recipe, then scored on the target site (subject-wise by construction: the sites share
no subject):

- **no adaptation**: the model as trained;
- **calibrated (transductive)**: a site profile (:mod:`streamemg.clinical.site`) made from *all* the
  target site's recordings without their labels, then applied to the same recordings. It sees the test
  recordings (never their labels): a lab calibrating on the recordings it then classifies does exactly this;
- **fine-tuned, k subjects per class**: ``k`` labelled subjects per class drawn at random from the target
  site (``draws`` seeded draws), the model fine-tuned on them (:func:`streamemg.clinical.adapt.fine_tune`),
  scored on the *other* target subjects only (the tuning subjects are removed from the test side, asserted).
  The same reduced test side is also scored without adaptation, so each draw gives a paired difference.

Every number is the mean and the spread (sample standard deviation, and min..max) over draws at window,
recording and subject level.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..types import CLASS_NAMES
from .evaluate import _subject_result, assert_subject_disjoint, evaluate_model

__all__ = ["draw_subjects", "score", "site_tensor", "transfer_direction"]


def score(model: Any, prepared: Sequence[Any], config: Any, site: torch.Tensor | None = None) -> dict[str, Any]:
    """Accuracy (and counts) at window, recording and subject level of ``model`` on ``prepared``."""
    w, r = evaluate_model(model, prepared, config, site=site)
    subj = _subject_result(r, {p.ref.record: p.ref.subject for p in prepared})
    out: dict[str, Any] = {}
    for lvl in (w, r, subj):
        m = lvl.metrics
        out[lvl.level] = {"n": m["n"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
    return out


def site_tensor(model: Any, reference: dict[str, Any], prepared: Sequence[Any], config: Any, mode: str) -> torch.Tensor:
    """The ``(2, 2, F)`` calibration a site profile of ``prepared`` (labels unused) gives for ``model``."""
    from .site import feature_moments, recording_windows

    m = feature_moments(model.features, recording_windows(prepared, int(config.window_samples)))
    ref_mean, ref_std = np.asarray(reference["mean"]), np.asarray(reference["std"])
    scale = np.ones_like(ref_std) if mode == "shift" else ref_std / m["std"]
    shift = ref_mean - scale * m["mean"]
    return torch.from_numpy(np.stack([scale, shift]).astype(np.float32))


def draw_subjects(prepared: Sequence[Any], k: int, seed: int) -> set[str]:
    """``k`` subjects per class, drawn with ``seed`` (ConfigError if a class has ``k`` or fewer subjects:
    at least one must stay on the test side)."""
    rng = random.Random(seed)
    chosen: set[str] = set()
    for c in CLASS_NAMES:
        subjects = sorted({p.ref.subject for p in prepared if p.ref.label == c})
        if len(subjects) <= k:
            raise ConfigError(f"class {c}: {len(subjects)} subject(s), cannot draw {k} and keep one to test")
        chosen.update(rng.sample(subjects, k))
    return chosen


def _spread(values: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for level in ("window", "recording", "subject"):
        acc = np.array([v[level]["accuracy"] for v in values if level in v], dtype=np.float64)
        if len(acc):
            out[level] = {
                "mean": float(acc.mean()),
                "sd": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                "min": float(acc.min()),
                "max": float(acc.max()),
                "draws": [float(a) for a in acc],
            }
    return out


def transfer_direction(
    prepared: Sequence[Any],
    config: Any,
    source: str,
    target: str,
    settings: Any = None,
    ks: Sequence[int] = (1, 2, 4),
    draws: int = 3,
    finetune: Any = None,
    calibration_mode: str = "affine",
    spot_checks: Sequence[str] = ("emgdb",),
    scratch_baseline: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One row group of the transfer table (see the module doc); plain-typed dict for JSON.

    ``scratch_baseline``: also train a model from scratch (the full recipe ``settings``) on the same k
    subjects per class of the target site alone, scored on the same test subjects: does the source model
    help at all?
    """
    from .adapt import FineTuneSettings, fine_tune
    from .train import TrainSettings, feature_reference, fit

    settings = settings or TrainSettings()
    finetune = finetune or FineTuneSettings(threads=settings.threads, device=settings.device)
    src = [p for p in prepared if p.ref.dataset == source]
    tgt = [p for p in prepared if p.ref.dataset == target]
    if not src or not tgt:
        raise ConfigError(f"transfer {source} -> {target}: one side has no recordings")
    assert_subject_disjoint([p.ref.subject for p in src], [p.ref.subject for p in tgt])
    t0 = time.perf_counter()
    model = fit(src, config, settings, progress=progress).model
    reference = feature_reference(model, src, config)
    say = log or (lambda s: None)
    out: dict[str, Any] = {
        "source": source,
        "target": target,
        "train_recordings": len(src),
        "target_recordings": len(tgt),
        "target_subjects": len({p.ref.subject for p in tgt}),
        "calibration_mode": calibration_mode,
    }
    out["no_adaptation"] = score(model, tgt, config)
    cal = site_tensor(model, reference, tgt, config, calibration_mode)
    out["calibrated_transductive"] = score(model, tgt, config, site=cal)
    say(
        f"{source} -> {target}: recording accuracy {out['no_adaptation']['recording']['accuracy']:.3f} as trained, "
        f"{out['calibrated_transductive']['recording']['accuracy']:.3f} calibrated"
    )
    tuned: dict[str, Any] = {}
    for k in ks:
        base_runs, tuned_runs, scratch_runs = [], [], []
        for d in range(draws):
            try:
                chosen = draw_subjects(tgt, k, seed=1000 * k + d)
            except ConfigError as exc:
                tuned[str(k)] = {"skipped": str(exc)}
                break
            train = [p for p in tgt if p.ref.subject in chosen]
            test = [p for p in tgt if p.ref.subject not in chosen]
            assert_subject_disjoint(sorted(chosen), [p.ref.subject for p in test])
            import dataclasses

            res = fine_tune(model, train, config, dataclasses.replace(finetune, seed=d))
            base_runs.append(score(model, test, config))
            tuned_runs.append(score(res.model, test, config))
            if scratch_baseline:
                scratch = fit(train, config, dataclasses.replace(settings, seed=settings.seed + d), progress=progress)
                scratch_runs.append(score(scratch.model, test, config))
            say(
                f"{source} -> {target} k={k} draw {d}: recording {base_runs[-1]['recording']['accuracy']:.3f} -> "
                f"{tuned_runs[-1]['recording']['accuracy']:.3f}"
            )
        if tuned_runs:
            tuned[str(k)] = {
                "draws": len(tuned_runs),
                "test_subjects": tuned_runs[-1]["subject"]["n"],
                "fine_tuned": _spread(tuned_runs),
                "no_adaptation_same_test": _spread(base_runs),
            }
            if scratch_runs:
                tuned[str(k)]["trained_from_scratch_same_test"] = _spread(scratch_runs)
    out["fine_tuned"] = tuned
    out["finetune_settings"] = finetune.to_dict()
    spots: dict[str, Any] = {}
    for name in spot_checks:
        spot = [p for p in prepared if p.ref.dataset == name]
        if spot:
            spots[name] = {
                "no_adaptation": score(model, spot, config),
                "calibrated_transductive": score(
                    model, spot, config, site=site_tensor(model, reference, spot, config, calibration_mode)
                ),
            }
    out["spot_checks"] = spots
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out
