"""An interpretable QEMG classifier (multinomial logistic regression on recording-level QEMG measures) and its
late fusion with the spectral CNN, measured subject-wise with the model card's protocol.

``python -m streamemg.qemg.classifier --rows ROWS.jsonl [--cnn OOF.json]`` (and ``--make-cnn OOF.json --data
DATA_DIR`` to produce the latter) where ``ROWS.jsonl`` is the cache
written by ``python -m streamemg.qemg.realdata --cache`` (one QEMG row per recording) and ``OOF.json`` holds
the CNN's out-of-fold recording probabilities under the same protocol (``{"cv:emglab": {"keys": [...],
"probs": [...]}, "cv:mendeley": ..., "cross:emglab->mendeley": ..., "cross:mendeley->emglab": ...}``, keys
``"<dataset>:<record>"`` or bare record names).

Protocol (as ``streamemg evaluate``): per site, subject-grouped class-stratified 5-fold (seed 0, the same
subject -> fold assignment as the CNN's evaluation), and cross-site (train on every recording of one site,
test on every recording of the other). Recording-level accuracy. Fusion = normalised geometric mean of the two
probability vectors (fixed equal weights: nothing is tuned on the test folds).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..clinical.evaluate import grouped_kfold
from ..types import CLASS_NAMES

#: Recording-level measures used as features (log for the amplitude-like ones).
FEATURES: tuple[tuple[str, bool], ...] = (
    ("amplitude_uv", True),
    ("duration_ms", False),
    ("phases", False),
    ("turns", False),
    ("thickness_ms", False),
    ("polyphasic_pct", False),
    ("firing_hz", False),
    ("firing_cv", False),
    ("units", False),
    ("recruitment_ratio", True),
)


def feature_matrix(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """``(n, F)`` features (NaN where a recording had no unit)."""
    x = np.full((len(rows), len(FEATURES)), np.nan)
    for i, r in enumerate(rows):
        for j, (name, log) in enumerate(FEATURES):
            v = r.get(name)
            if isinstance(v, (int, float)) and math.isfinite(v) and (not log or v > 0):
                x[i, j] = math.log(v) if log else float(v)
    return x


class LogisticQemg:
    """Multinomial logistic regression with L2 penalty; features standardised, missing values imputed with the
    training medians. Fitted by gradient descent (a few hundred steps on tens of recordings)."""

    def __init__(self, l2: float = 1.0, steps: int = 500, lr: float = 0.5) -> None:
        self.l2, self.steps, self.lr = l2, steps, lr

    def fit(self, x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> LogisticQemg:
        seen = np.isfinite(x).any(axis=0)
        self.med = np.zeros(x.shape[1])
        self.med[seen] = np.nanmedian(x[:, seen], axis=0)  # a feature never seen is imputed with 0
        z = np.where(np.isfinite(x), x, self.med)
        self.mu, self.sd = z.mean(axis=0), z.std(axis=0) + 1e-9
        z = (z - self.mu) / self.sd
        n, f = z.shape
        k = len(CLASS_NAMES)
        w = np.ones(n) if weights is None else weights / weights.mean()
        self.W = np.zeros((f, k))
        self.b = np.zeros(k)
        onehot = np.eye(k)[y]
        for _ in range(self.steps):
            p = _softmax(z @ self.W + self.b)
            g = (p - onehot) * w[:, None] / n
            self.W -= self.lr * (z.T @ g + self.l2 * self.W / n)
            self.b -= self.lr * g.sum(axis=0)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = (np.where(np.isfinite(x), x, self.med) - self.mu) / self.sd
        return _softmax(z @ self.W + self.b)


def _softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _balanced_weights(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """Each class equal, subjects within a class equal (recordings of one subject share its weight)."""
    per_subject: dict[str, int] = {}
    for r in rows:
        per_subject[r["subject"]] = per_subject.get(r["subject"], 0) + 1
    subj_per_class: dict[str, set[str]] = {}
    for r in rows:
        subj_per_class.setdefault(r["label"], set()).add(r["subject"])
    return np.array([1.0 / (per_subject[r["subject"]] * len(subj_per_class[r["label"]])) for r in rows])


def fuse(p_cnn: np.ndarray, p_qemg: np.ndarray) -> np.ndarray:
    """Normalised geometric mean of two ``(n, K)`` probability arrays."""
    g = np.sqrt(np.clip(p_cnn, 1e-6, 1) * np.clip(p_qemg, 1e-6, 1))
    return g / g.sum(axis=1, keepdims=True)


def evaluate(rows: Sequence[dict[str, Any]], cnn: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Recording-level accuracy of QEMG-LR (and CNN, fusion when ``cnn`` is given) per protocol."""
    y_all = np.array([CLASS_NAMES.index(r["label"]) for r in rows])
    x_all = feature_matrix(rows)
    results = []

    def cnn_probs(name: str, idx: Sequence[int]) -> np.ndarray | None:
        if cnn is None or name not in cnn:
            return None
        table = {}
        for key, p in zip(cnn[name]["keys"], cnn[name]["probs"], strict=True):
            table[key] = p
        out = []
        for i in idx:
            rec = rows[i]["record"]
            p = table.get(rec, table.get(rec.split(":", 1)[-1]))
            out.append(p if p is not None else [np.nan] * len(CLASS_NAMES))
        return np.array(out, dtype=np.float64)

    def score(name: str, test: list[int], p_q: np.ndarray) -> None:
        y = y_all[test]
        row: dict[str, Any] = {"protocol": name, "recordings": len(test),
                               "qemg_lr": float(np.mean(p_q.argmax(axis=1) == y))}
        p_c = cnn_probs(name, test)
        if p_c is not None:
            ok = np.isfinite(p_c).all(axis=1)
            row["with_cnn"] = int(ok.sum())
            row["cnn"] = float(np.mean(p_c[ok].argmax(axis=1) == y[ok]))
            row["qemg_lr_same"] = float(np.mean(p_q[ok].argmax(axis=1) == y[ok]))
            row["fusion"] = float(np.mean(fuse(p_c[ok], p_q[ok]).argmax(axis=1) == y[ok]))
        results.append(row)

    for ds in ("emglab", "mendeley"):
        idx = [i for i, r in enumerate(rows) if r["dataset"] == ds]
        subjects = [rows[i]["subject"] for i in idx]
        strata = [f"{ds}:{rows[i]['label']}" for i in idx]
        p_q = np.full((len(idx), len(CLASS_NAMES)), np.nan)
        for tr, te in grouped_kfold(subjects, strata, 5, 0):
            tr_i = [idx[j] for j in tr]
            model = LogisticQemg().fit(x_all[tr_i], y_all[tr_i], _balanced_weights([rows[i] for i in tr_i]))
            p_q[te] = model.predict_proba(x_all[[idx[j] for j in te]])
        score(f"cv:{ds}", idx, p_q)
    for a, b in (("emglab", "mendeley"), ("mendeley", "emglab")):
        tr_i = [i for i, r in enumerate(rows) if r["dataset"] == a]
        te_i = [i for i, r in enumerate(rows) if r["dataset"] == b]
        model = LogisticQemg().fit(x_all[tr_i], y_all[tr_i], _balanced_weights([rows[i] for i in tr_i]))
        score(f"cross:{a}->{b}", te_i, model.predict_proba(x_all[te_i]))
    return results


def cnn_out_of_fold(data: Path, out: Path, threads: int = 1) -> None:
    """Train the spectral CNN with the model card's protocol (subject-wise 5-fold per site, seed 0; cross-site both
    ways) and write its out-of-fold recording probabilities to ``out`` (JSON, the ``--cnn`` input). Slow: it trains
    twelve models (about ten minutes of one core)."""
    import torch

    from ..clinical.datasets import find_recordings
    from ..clinical.evaluate import cross_site, cross_validate
    from ..clinical.train import TrainSettings, default_config, prepare_all

    torch.set_num_threads(threads)
    refs = find_recordings([data], datasets=["emglab", "mendeley"])
    config = default_config()
    prepared = prepare_all(refs, config, progress=False)
    settings = TrainSettings(seed=0, device="cpu", threads=threads)
    result: dict[str, Any] = {}

    def keep(name: str, rep: Any) -> None:
        result[name] = {"keys": list(rep.recording.keys), "probs": rep.recording.probs.tolist()}
        out.write_text(json.dumps(result), encoding="utf-8")
        print(f"{name}: recording accuracy {100 * rep.recording.metrics['accuracy']:.1f}%", flush=True)

    for ds in ("emglab", "mendeley"):
        keep(f"cv:{ds}", cross_validate([p for p in prepared if p.ref.dataset == ds], config, settings, 5, 0, False))
    for a, b in (("emglab", "mendeley"), ("mendeley", "emglab")):
        keep(f"cross:{a}->{b}", cross_site(prepared, config, a, b, settings, False))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streamemg.qemg.classifier", description=__doc__)
    p.add_argument("--rows", default=None, help="per-recording QEMG rows (realdata --cache)")
    p.add_argument("--cnn", default=None, help="CNN out-of-fold recording probabilities (JSON)")
    p.add_argument("--make-cnn", default=None, metavar="OUT", help="train the CNN folds and write --cnn input to OUT")
    p.add_argument("--data", default=None, help="data folder (with --make-cnn)")
    args = p.parse_args(argv)
    if args.make_cnn:
        if not args.data:
            p.error("--make-cnn needs --data DATA_DIR")
        cnn_out_of_fold(Path(args.data), Path(args.make_cnn))
        return 0
    if not args.rows:
        p.error("give --rows ROWS.jsonl (from python -m streamemg.qemg.realdata --cache)")
    rows = [json.loads(line) for line in Path(args.rows).read_text(encoding="utf-8").splitlines() if line.strip()]
    cnn = json.loads(Path(args.cnn).read_text(encoding="utf-8")) if args.cnn else None
    print("| protocol | recordings | QEMG-LR | CNN | fusion (geometric mean) |\n|---|---|---|---|---|")
    for r in evaluate(rows, cnn):
        cnn_s = f"{100 * r['cnn']:.1f}%" if "cnn" in r else "-"
        fus = f"{100 * r['fusion']:.1f}%" if "fusion" in r else "-"
        same = f" ({100 * r['qemg_lr_same']:.1f}% on the {r['with_cnn']} with a CNN result)" if "cnn" in r else ""
        print(f"| {r['protocol']} | {r['recordings']} | {100 * r['qemg_lr']:.1f}%{same} | {cnn_s} | {fus} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
