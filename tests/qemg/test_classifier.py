"""The QEMG logistic classifier and the late fusion (logic only; the real-data figures are in docs/qemg.md)."""

from __future__ import annotations

import numpy as np

from streamemg.qemg.classifier import FEATURES, LogisticQemg, evaluate, feature_matrix, fuse


def _rows(n_subjects: int, rng: np.random.Generator) -> list[dict]:
    rows = []
    centres = {"Normal": (130.0, 8.0), "ALS": (320.0, 9.0), "Myopathy": (140.0, 5.5)}
    for ds in ("emglab", "mendeley"):
        for label, (amp, dur) in centres.items():
            for s in range(n_subjects):
                for _ in range(2):
                    rows.append({"dataset": ds, "label": label, "subject": f"{ds}:{label}-{s}",
                                 "record": f"r{len(rows)}", "amplitude_uv": amp * rng.lognormal(0, 0.15),
                                 "duration_ms": dur + rng.normal(0, 0.5), "phases": None, "units": 8})
    return rows


def test_separable_measures_are_learned_subject_wise_and_missing_values_are_tolerated() -> None:
    rows = _rows(6, np.random.default_rng(0))
    x = feature_matrix(rows)
    assert x.shape == (len(rows), len(FEATURES)) and np.isnan(x[:, 2]).all()  # phases missing everywhere
    results = {r["protocol"]: r for r in evaluate(rows)}
    assert set(results) == {"cv:emglab", "cv:mendeley", "cross:emglab->mendeley", "cross:mendeley->emglab"}
    assert all(r["qemg_lr"] > 0.85 for r in results.values()), results


def test_model_probabilities_and_fusion() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 3))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 1).astype(int)
    p = LogisticQemg().fit(x, y).predict_proba(x)
    assert np.allclose(p.sum(axis=1), 1.0) and np.mean(p.argmax(axis=1) == y) > 0.8
    a = np.array([[0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    b = np.array([[0.4, 0.5, 0.1], [0.1, 0.1, 0.8]])
    f = fuse(a, b)
    assert np.allclose(f.sum(axis=1), 1.0)
    assert f[0].argmax() == 0 and f[1].argmax() == 2  # the geometric mean: 0.53 vs 0.32 for row 0
