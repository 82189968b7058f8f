"""Subject-wise evaluation: metrics, splitters, cross-validation, cross-site and the (leaky) random split.

Levels of a result (every one subject-wise: no subject is ever on both sides of a split, asserted in code):

- **window**: every window a stream would classify (model-rate windows of ``config.window_samples`` every
  ``config.hop_samples`` from the start of the recording) whose quality gate passes; its arg-max class.
- **recording**: the recording's stream run to its end; the class of the *cumulative* estimate (mean of the
  valid windows' channel-fused probabilities), computed with the streaming code itself
  (:func:`streamemg.estimates.fuse_channels` and :class:`streamemg.estimates.RollingEstimator`).
- **subject**: mean of the subject's recording-level probabilities; its arg-max class.

Metrics per level: accuracy, per-class sensitivity (recall) and specificity, macro-F1 and the confusion
matrix (rows = true class, columns = predicted class, ``CLASS_NAMES`` order).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ..errors import ConfigError
from ..types import CLASS_NAMES

__all__ = [
    "LevelResult",
    "assert_subject_disjoint",
    "classification_metrics",
    "confusion_matrix",
    "grouped_kfold",
    "leave_one_subject_out",
    "subject_folds",
]

T = TypeVar("T")


# ------------------------------------------------------------------------------------------------ metrics


def confusion_matrix(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int
) -> np.ndarray:
    """``(K, K)`` int64 counts: ``cm[t, p]`` = items of true class ``t`` predicted as ``p``.

    Raises:
        ValueError: lengths differ or a label is outside ``[0, n_classes)``.
    """
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} items, y_pred {p.size}; they must match")
    if t.size and (t.min() < 0 or p.min() < 0 or t.max() >= n_classes or p.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes})")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def classification_metrics(cm: np.ndarray, classes: Sequence[str] = CLASS_NAMES) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class sensitivity / specificity / precision / F1 and macro-F1.

    Undefined ratios (no item of a class, or never predicted) are NaN; macro-F1 averages the F1 of the
    classes that occur in the truth (a class absent from the test set does not count), with the F1 of a
    class that occurs but is never predicted taken as 0.

    Returns:
        ``{"n", "accuracy", "balanced_accuracy", "macro_f1", "per_class": {name: {"n", "sensitivity",
        "specificity", "precision", "f1"}}, "confusion": [[...]]}``
    """
    cm = np.asarray(cm, dtype=np.int64)
    k = cm.shape[0]
    if cm.shape != (k, k) or len(classes) != k:
        raise ValueError(f"confusion matrix {cm.shape} does not match {len(classes)} classes")
    total = int(cm.sum())
    per: dict[str, dict[str, float | int]] = {}
    f1s: list[float] = []
    sens_list: list[float] = []
    for i, name in enumerate(classes):
        tp = float(cm[i, i])
        fn = float(cm[i].sum() - tp)
        fp = float(cm[:, i].sum() - tp)
        tn = float(total - tp - fn - fp)
        sens = _ratio(tp, tp + fn)
        prec = _ratio(tp, tp + fp)
        if tp + fn > 0:
            f1 = _ratio(2 * tp, 2 * tp + fp + fn)
            f1s.append(f1)
            sens_list.append(sens)
        else:
            f1 = float("nan")
        per[name] = {
            "n": int(tp + fn),
            "sensitivity": sens,
            "specificity": _ratio(tn, tn + fp),
            "precision": prec,
            "f1": f1,
        }
    return {
        "n": total,
        "accuracy": _ratio(float(np.trace(cm)), total),
        "balanced_accuracy": float(np.mean(sens_list)) if sens_list else float("nan"),
        "macro_f1": float(np.mean(f1s)) if f1s else float("nan"),
        "per_class": per,
        "confusion": cm.tolist(),
    }


@dataclass
class LevelResult:
    """Predictions at one level (window, recording or subject) and their metrics.

    Attributes:
        level: ``"window"``, ``"recording"`` or ``"subject"``.
        y_true, y_pred: class indices ``(n,)``.
        probs: ``(n, K)`` probabilities (NaN rows where nothing valid was seen).
        keys: an identifier per item (record or subject), for per-item reports.
    """

    level: str
    y_true: np.ndarray
    y_pred: np.ndarray
    probs: np.ndarray
    keys: list[str] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, Any]:
        return classification_metrics(confusion_matrix(self.y_true, self.y_pred, len(CLASS_NAMES)))

    @classmethod
    def concat(cls, parts: Sequence[LevelResult]) -> LevelResult:
        """Pool several folds' results of one level."""
        if not parts:
            raise ValueError("nothing to pool")
        k = len(CLASS_NAMES)
        return cls(
            level=parts[0].level,
            y_true=np.concatenate([p.y_true for p in parts]).astype(np.int64),
            y_pred=np.concatenate([p.y_pred for p in parts]).astype(np.int64),
            probs=np.concatenate([p.probs.reshape(-1, k) for p in parts]),
            keys=[key for p in parts for key in p.keys],
        )


def nan_safe_argmax(probs: np.ndarray) -> np.ndarray:
    """Row-wise arg-max of ``(n, K)``; rows that are all NaN give class 0 (counted as a decision).

    Callers that must not count undecided items filter them first.
    """
    p = np.where(np.isfinite(probs), probs, -np.inf)
    return np.argmax(p, axis=1).astype(np.int64)


def subject_level(
    rec_probs: np.ndarray, rec_true: Sequence[int], rec_subjects: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Subject-level decision: mean of the subject's recording probabilities (recordings without any valid
    window are skipped). Returns ``(y_true, y_pred, probs (S, K), subject keys)``."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(rec_subjects):
        groups.setdefault(s, []).append(i)
    truth: list[int] = []
    probs: list[np.ndarray] = []
    keys: list[str] = []
    for s, idx in groups.items():
        labels = {int(rec_true[i]) for i in idx}
        if len(labels) != 1:
            raise ValueError(f"subject {s} has recordings of several classes {sorted(labels)}")
        rows = rec_probs[idx]
        rows = rows[np.isfinite(rows).all(axis=1)]
        mean = rows.mean(axis=0) if len(rows) else np.full(rec_probs.shape[1], np.nan)
        truth.append(labels.pop())
        probs.append(mean)
        keys.append(s)
    p = np.array(probs, dtype=np.float64).reshape(-1, rec_probs.shape[1])
    valid = np.isfinite(p).all(axis=1)
    y_true = np.array(truth, dtype=np.int64)
    return (
        y_true[valid],
        nan_safe_argmax(p[valid]),
        p[valid],
        [k for k, v in zip(keys, np.asarray(valid, dtype=bool).tolist(), strict=True) if v],
    )


# ------------------------------------------------------------------------------------------------ splitters


def assert_subject_disjoint(train_subjects: Sequence[Hashable], test_subjects: Sequence[Hashable]) -> None:
    """Raise AssertionError if any subject is on both sides of a split (the leak subject-wise splits prevent)."""
    both = set(train_subjects) & set(test_subjects)
    if both:
        raise AssertionError(f"subject leak: {sorted(map(str, both))} on both sides of a subject-wise split")


def leave_one_subject_out(subjects: Sequence[Hashable]) -> list[tuple[list[int], list[int]]]:
    """One fold per subject: ``(train indices, test indices)`` over the items of ``subjects``."""
    order = list(dict.fromkeys(subjects))
    folds = []
    for s in order:
        test = [i for i, x in enumerate(subjects) if x == s]
        train = [i for i, x in enumerate(subjects) if x != s]
        assert_subject_disjoint([subjects[i] for i in train], [subjects[i] for i in test])
        folds.append((train, test))
    return folds


def grouped_kfold(
    subjects: Sequence[Hashable], labels: Sequence[Hashable], k: int, seed: int = 0
) -> list[tuple[list[int], list[int]]]:
    """Subject-grouped, class-stratified K-fold: every subject's items go to exactly one test fold.

    Subjects are shuffled (seeded) within each (class, group) stratum and dealt round-robin to the folds,
    continuing the deal across strata so fold sizes stay even. Folds that would be empty are dropped
    (fewer subjects than ``k``).

    Args:
        subjects: subject key per item.
        labels: stratum per item (the class; a subject must have one stratum).
        k: number of folds (>= 2).
    """
    if not (isinstance(k, int) and k >= 2):
        raise ConfigError(f"folds={k!r}: give 'loso' or an integer K >= 2")
    stratum: dict[Hashable, Hashable] = {}
    for s, y in zip(subjects, labels, strict=True):
        if stratum.setdefault(s, y) != y:
            raise ValueError(f"subject {s!r} has items of strata {stratum[s]!r} and {y!r}")
    rng = random.Random(seed)
    by_stratum: dict[Hashable, list[Hashable]] = {}
    for s, y in stratum.items():
        by_stratum.setdefault(y, []).append(s)
    fold_of: dict[Hashable, int] = {}
    deal = 0
    for y in sorted(by_stratum, key=str):
        members = sorted(by_stratum[y], key=str)
        rng.shuffle(members)
        for s in members:
            fold_of[s] = deal % k
            deal += 1
    folds = []
    for f in range(k):
        test = [i for i, s in enumerate(subjects) if fold_of[s] == f]
        if not test:
            continue
        train = [i for i, s in enumerate(subjects) if fold_of[s] != f]
        assert_subject_disjoint([subjects[i] for i in train], [subjects[i] for i in test])
        folds.append((train, test))
    return folds


def subject_folds(
    subjects: Sequence[Hashable], labels: Sequence[Hashable], folds: str | int, seed: int = 0
) -> list[tuple[list[int], list[int]]]:
    """``folds="loso"`` (leave one subject out) or an integer K (grouped, stratified K-fold)."""
    if isinstance(folds, str):
        if folds.lower() == "loso":
            return leave_one_subject_out(subjects)
        try:
            folds = int(folds)
        except ValueError as exc:
            raise ConfigError(f"--folds {folds!r}: give 'loso' or an integer K >= 2, e.g. 5") from exc
    return grouped_kfold(subjects, labels, folds, seed)


def fmt_pct(x: float) -> str:
    """``0.9234 -> '92.3%'``; NaN -> ``'n/a'``."""
    return "n/a" if not math.isfinite(x) else f"{100 * x:.1f}%"


def per_item(keys: Sequence[str], values: Sequence[T], fn: Callable[[T], Any]) -> Mapping[str, Any]:
    """``{key: fn(value)}`` preserving order (small helper for JSON reports)."""
    return {k: fn(v) for k, v in zip(keys, values, strict=True)}


# ------------------------------------------------------------------------------------------------ running models


def stream_aggregate(
    probs: np.ndarray, quality: Sequence[str], ends: np.ndarray, fs: float, settings: Any = None
) -> np.ndarray:
    """The recording-level estimate a stream reports after its last window: ``(K,)`` (NaN if no valid window).

    Runs the streaming code itself: per window, :func:`streamemg.estimates.fuse_channels` over the window's
    (single) channel with its quality flag, then :meth:`RollingEstimator.update` at the window's end time;
    the result is the estimator's ``cumulative`` (mean of the valid windows' probabilities).

    Args:
        probs: ``(W, K)`` window probabilities, stream order.
        quality: ``(W,)`` quality flag per window.
        ends: ``(W,)`` window end indices at the model rate.
        fs: model rate, Hz.
        settings: :class:`~streamemg.estimates.EstimateSettings` (defaults if None).
    """
    from ..estimates import EstimateSettings, RollingEstimator, fuse_channels

    est = RollingEstimator(settings if settings is not None else EstimateSettings(), probs.shape[1])
    for p, q, e in zip(probs, quality, ends, strict=True):
        fused = fuse_channels(np.asarray(p, dtype=np.float32)[None, :], (q,))
        est.update(fused, float(e) / fs, bool(np.isfinite(fused).all()))
    return np.asarray(est.cumulative, dtype=np.float64)


def evaluate_model(
    model: Any,
    prepared: Sequence[Any],
    config: Any,
    device: str = "cpu",
    estimate_settings: Any = None,
    site: Any = None,
) -> tuple[LevelResult, LevelResult]:
    """Window- and recording-level results of a trained classifier on prepared recordings.

    Window level counts the stream windows that pass the quality gate; recording level is
    :func:`stream_aggregate` (recordings with no valid window are left out and reported by the caller).
    ``site``: optional ``(2, 2, F)`` site calibration tensor applied to every window.
    """
    from .train import predict_windows

    w_true: list[np.ndarray] = []
    w_probs: list[np.ndarray] = []
    w_keys: list[str] = []
    r_true: list[int] = []
    r_probs: list[np.ndarray] = []
    r_keys: list[str] = []
    T = int(config.window_samples)
    for p in prepared:
        windows = p.stream_windows(T)
        probs = (
            predict_windows(model, windows, device=device, site=site)
            if len(windows)
            else np.zeros((0, len(CLASS_NAMES)))
        )
        valid = p.stream_valid
        w_true.append(np.full(int(valid.sum()), p.ref.label_index, dtype=np.int64))
        w_probs.append(probs[valid])
        w_keys.extend([p.ref.record] * int(valid.sum()))
        cum = stream_aggregate(probs, p.stream_quality, p.stream_ends, float(config.fs), estimate_settings)
        if np.isfinite(cum).all():
            r_true.append(p.ref.label_index)
            r_probs.append(cum)
            r_keys.append(p.ref.record)
    k = len(CLASS_NAMES)
    wp = np.concatenate(w_probs).reshape(-1, k) if w_probs else np.zeros((0, k))
    rp = np.array(r_probs, dtype=np.float64).reshape(-1, k)
    window = LevelResult(
        "window", np.concatenate(w_true) if w_true else np.zeros(0, np.int64), nan_safe_argmax(wp), wp, w_keys
    )
    recording = LevelResult("recording", np.array(r_true, dtype=np.int64), nan_safe_argmax(rp), rp, r_keys)
    return window, recording


@dataclass
class EvalReport:
    """One evaluation protocol's pooled results.

    Attributes:
        protocol: human-readable protocol (``"subject-wise 5-fold"``, ``"cross-site ..."``, ``"LEAKY ..."``).
        window, recording: pooled levels; subject: subject level (None for window-only protocols).
        folds: number of train/test splits.
        notes: label mappings, excluded items, caveats to print with the numbers.
        extra: protocol-specific facts (fold subjects, seconds, settings).
    """

    protocol: str
    window: LevelResult
    recording: LevelResult | None
    subject: LevelResult | None
    folds: int
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Headline numbers: accuracy and macro-F1 per level."""
        out: dict[str, Any] = {"protocol": self.protocol}
        for lvl in (self.window, self.recording, self.subject):
            if lvl is not None and len(lvl.y_true):
                m = lvl.metrics
                out[lvl.level] = {"n": m["n"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON form: every metric of every level, the notes and extras."""
        levels = {}
        for lvl in (self.window, self.recording, self.subject):
            if lvl is not None and len(lvl.y_true):
                levels[lvl.level] = lvl.metrics
        per_subject = {}
        if self.subject is not None:
            per_subject = {
                key: {
                    "true": CLASS_NAMES[int(t)],
                    "pred": CLASS_NAMES[int(p)],
                    "probabilities": dict(zip(CLASS_NAMES, (round(float(v), 4) for v in pr), strict=True)),
                }
                for key, t, p, pr in zip(
                    self.subject.keys, self.subject.y_true, self.subject.y_pred, self.subject.probs, strict=True
                )
            }
        return {
            "protocol": self.protocol,
            "folds": self.folds,
            "classes": list(CLASS_NAMES),
            "levels": _json_clean(levels),
            "subjects": per_subject,
            "notes": list(self.notes),
            "extra": _json_clean(self.extra),
        }


def _json_clean(value: Any) -> Any:
    """NaN -> None (strict JSON), numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _subject_result(rec: LevelResult, subject_of: Mapping[str, str]) -> LevelResult:
    y, yp, pr, keys = subject_level(rec.probs, rec.y_true.tolist(), [subject_of[k] for k in rec.keys])
    return LevelResult("subject", y, yp, pr, keys)


def _note_mapping(prepared: Sequence[Any]) -> list[str]:
    from .datasets import LABEL_MAPPING_NOTE

    if any(p.ref.dataset in ("mendeley", "emgdb") for p in prepared):
        return [LABEL_MAPPING_NOTE]
    return []


def cross_validate(
    prepared: Sequence[Any],
    config: Any,
    settings: Any = None,
    folds: str | int = 5,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> EvalReport:
    """Subject-wise cross-validation: train on the other subjects, test on the held-out ones, pool the folds.

    ``folds`` is ``"loso"`` or K (subject-grouped, class-stratified). Each fold asserts that no subject is on
    both sides. Subjects of different data sets are different people (their keys carry the data set).
    """
    from .train import TrainSettings, fit

    settings = settings or TrainSettings(seed=seed)
    subjects = [p.ref.subject for p in prepared]
    strata = [f"{p.ref.dataset}:{p.ref.label}" for p in prepared]  # stratify by data set and class
    splits = subject_folds(subjects, strata, folds, seed)
    windows, recordings = [], []
    fold_info = []
    for i, (tr, te) in enumerate(splits):
        train_subjects = {subjects[j] for j in tr}
        test_subjects = {subjects[j] for j in te}
        assert_subject_disjoint(sorted(train_subjects), sorted(test_subjects))
        fold_settings = _with_seed(settings, settings.seed + i)
        result = fit([prepared[j] for j in tr], config, fold_settings, progress=progress)
        w, r = evaluate_model(result.model, [prepared[j] for j in te], config)
        windows.append(w)
        recordings.append(r)
        fold_info.append({"test_subjects": sorted(test_subjects), "train_seconds": result.summary["seconds"]})
        if log is not None:
            wm, rm = w.metrics, r.metrics
            log(
                f"fold {i + 1}/{len(splits)} test {','.join(sorted(test_subjects))[:80]}: "
                f"window {fmt_pct(wm['accuracy'])}, recording {fmt_pct(rm['accuracy'])}"
            )
    window = LevelResult.concat(windows)
    recording = LevelResult.concat(recordings)
    subject_of = {p.ref.record: p.ref.subject for p in prepared}
    name = "leave-one-subject-out" if str(folds).lower() == "loso" else f"subject-wise {len(splits)}-fold"
    sets = sorted({p.ref.dataset for p in prepared})
    return EvalReport(
        protocol=f"{name} ({'+'.join(sets)})",
        window=window,
        recording=recording,
        subject=_subject_result(recording, subject_of),
        folds=len(splits),
        notes=_note_mapping(prepared),
        extra={"folds": fold_info, "recordings": len(prepared), "subjects": len(set(subjects))},
    )


def _with_seed(settings: Any, seed: int) -> Any:
    import dataclasses

    return dataclasses.replace(settings, seed=seed)


def cross_site(
    prepared: Sequence[Any],
    config: Any,
    train_dataset: str,
    test_dataset: str,
    settings: Any = None,
    progress: bool = True,
) -> EvalReport:
    """Train on every recording of one data set (site), test on every recording of another."""
    from .datasets import LABEL_MAPPING_NOTE
    from .train import TrainSettings, fit

    settings = settings or TrainSettings()
    train = [p for p in prepared if p.ref.dataset == train_dataset]
    test = [p for p in prepared if p.ref.dataset == test_dataset]
    if not train or not test:
        raise ConfigError(f"cross-site {train_dataset} -> {test_dataset}: one side has no recordings")
    assert_subject_disjoint([p.ref.subject for p in train], [p.ref.subject for p in test])
    result = fit(train, config, settings, progress=progress)
    w, r = evaluate_model(result.model, test, config)
    subject_of = {p.ref.record: p.ref.subject for p in test}
    return EvalReport(
        protocol=f"cross-site: train {train_dataset} -> test {test_dataset}",
        window=w,
        recording=r,
        subject=_subject_result(r, subject_of),
        folds=1,
        notes=[LABEL_MAPPING_NOTE],
        extra={
            "train_recordings": len(train),
            "test_recordings": len(test),
            "train_seconds": result.summary["seconds"],
        },
    )


def leaky_split(
    prepared: Sequence[Any],
    config: Any,
    settings: Any = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = True,
) -> EvalReport:
    """LEAKY reference only: a random window-level split that puts every subject on both sides.

    A random ``test_fraction`` of the stream windows is held out; training windows are every usable window
    that does not overlap a held-out one. Reported beside the subject-wise results, to compare with
    published window-level numbers obtained this way; it measures recognition of known subjects, not
    generalisation to new ones.
    """
    import dataclasses

    from .train import TrainSettings, fit

    settings = settings or TrainSettings(seed=seed)
    rng = np.random.default_rng(seed)
    T = int(config.window_samples)
    train_parts, test_parts = [], []
    for p in prepared:
        held = rng.random(len(p.stream_ends)) < test_fraction
        test_ends = p.stream_ends[held]
        starts = p.train_starts
        if len(test_ends):
            # a training window [s, s+T) overlaps a test window [e-T, e) iff |s - (e - T)| < T
            dist = np.abs(starts[:, None] - (test_ends[None, :] - T))
            starts = starts[(dist >= T).all(axis=1)]
        train_parts.append(dataclasses.replace(p, train_starts=starts))
        test_parts.append(
            dataclasses.replace(
                p, stream_ends=test_ends, stream_quality=[q for q, h in zip(p.stream_quality, held, strict=True) if h]
            )
        )
    result = fit(train_parts, config, settings, progress=progress)
    w, _ = evaluate_model(result.model, test_parts, config)
    return EvalReport(
        protocol="LEAKY random window-level split (subjects on both sides; not a measure of generalisation)",
        window=w,
        recording=None,
        subject=None,
        folds=1,
        notes=["every subject contributes to both training and test windows: optimistic by construction"],
    )


# ------------------------------------------------------------------------------------------------ rendering


def render_report(report: EvalReport, console: Any = None) -> None:
    """Print a report with rich: headline table, per-class table and confusion matrix per level."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.rule(f"[bold]{report.protocol}")
    head = Table(title="accuracy", show_lines=False)
    for col in ("level", "n", "accuracy", "balanced acc.", "macro-F1"):
        head.add_column(col, justify="right" if col != "level" else "left")
    levels = [lvl for lvl in (report.window, report.recording, report.subject) if lvl is not None and len(lvl.y_true)]
    for lvl in levels:
        m = lvl.metrics
        head.add_row(
            lvl.level, str(m["n"]), fmt_pct(m["accuracy"]), fmt_pct(m["balanced_accuracy"]), fmt_pct(m["macro_f1"])
        )
    console.print(head)
    for lvl in levels:
        m = lvl.metrics
        t = Table(title=f"{lvl.level} level: per class and confusion (rows true, columns predicted)")
        t.add_column("true \\ pred")
        for c in CLASS_NAMES:
            t.add_column(c, justify="right")
        t.add_column("sensitivity", justify="right")
        t.add_column("specificity", justify="right")
        t.add_column("F1", justify="right")
        for i, c in enumerate(CLASS_NAMES):
            pc = m["per_class"][c]
            cells = [f"[bold]{v}[/bold]" if j == i else str(v) for j, v in enumerate(m["confusion"][i])]
            t.add_row(c, *cells, fmt_pct(pc["sensitivity"]), fmt_pct(pc["specificity"]), fmt_pct(pc["f1"]))
        console.print(t)
    for n in report.notes:
        console.print(f"[italic]note:[/italic] {n}")


def mains_sensitivity(
    model: Any, prepared: Sequence[Any], config: Any, hum_hz: float = 50.0, rel_db: float = 0.0, seed: int = 0
) -> dict[str, Any]:
    """Does the model listen to mains hum? Add hum to the *raw* recordings and classify them again.

    Hum (fundamental + 2nd and 3rd harmonics, random phases, RMS ``rel_db`` dB relative to the raw
    recording's RMS; 0 dB puts half the power at mains, like a typical Mendeley 'Healthy' file) is added
    before the stream's filters, so the notch sees it as it would in a stream. Reported: recording-level
    label flips and the mean change of each class probability (with hum minus without).
    """
    from ..dsp import Resampler, StreamFilter
    from .train import predict_windows

    rng = np.random.default_rng(seed)
    T = int(config.window_samples)
    flips = 0
    deltas = []
    per_class: dict[str, list[float]] = {c: [] for c in CLASS_NAMES}
    n = 0
    for p in prepared:
        rec = p.ref.load()
        raw = rec.data[:, :1].astype(np.float64)
        t = np.arange(raw.shape[0]) / rec.fs
        hum = sum(
            a * np.sin(2 * np.pi * h * hum_hz * t + rng.uniform(0, 2 * np.pi))
            for h, a in ((1, 1.0), (2, 0.3), (3, 0.5))
        )
        hum = hum / np.sqrt(np.mean(hum**2)) * raw.std() * 10 ** (rel_db / 20)
        noisy = (raw + hum[:, None]).astype(np.float32)
        x = Resampler(rec.fs, config.fs, 1).process(StreamFilter(config.filters, rec.fs, 1).process(noisy))[:, 0]
        ends = p.stream_ends
        if len(ends) == 0:
            continue
        idx = ends[:, None] - T + np.arange(T)[None, :]
        clean = stream_aggregate(predict_windows(model, p.x[idx]), p.stream_quality, ends, float(config.fs))
        humid = stream_aggregate(predict_windows(model, x[idx]), p.stream_quality, ends, float(config.fs))
        if not (np.isfinite(clean).all() and np.isfinite(humid).all()):
            continue
        n += 1
        flips += int(np.argmax(clean) != np.argmax(humid))
        deltas.append(humid - clean)
        per_class[p.ref.label].append(float(humid[0] - clean[0]))
    d = np.array(deltas).reshape(-1, len(CLASS_NAMES))
    return {
        "hum_hz": hum_hz,
        "rel_db": rel_db,
        "recordings": n,
        "label_flips": flips,
        "mean_delta": dict(zip(CLASS_NAMES, (float(v) for v in d.mean(axis=0)), strict=True)) if n else {},
        "mean_delta_p_normal_by_true_class": {c: float(np.mean(v)) if v else None for c, v in per_class.items()},
    }
