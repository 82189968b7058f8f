"""Metrics against hand-computed cases, subject-wise splitters (no leakage), stream-style aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamemg.clinical.evaluate import (
    LevelResult,
    assert_subject_disjoint,
    classification_metrics,
    confusion_matrix,
    grouped_kfold,
    leave_one_subject_out,
    stream_aggregate,
    subject_folds,
    subject_level,
)


def test_confusion_matrix_counts_true_rows_pred_columns() -> None:
    cm = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_confusion_matrix_rejects_bad_labels() -> None:
    with pytest.raises(ValueError):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError):
        confusion_matrix([0, 1], [0], 3)


def test_metrics_hand_computed() -> None:
    # rows: true Normal, ALS, Myopathy
    cm = np.array([[8, 1, 1], [2, 6, 0], [0, 1, 4]])
    m = classification_metrics(cm)
    total = 23
    assert m["n"] == total
    assert m["accuracy"] == pytest.approx(18 / 23)
    normal = m["per_class"]["Normal"]
    # Normal: tp 8, fn 2, fp 2, tn 23-8-2-2 = 11
    assert normal["sensitivity"] == pytest.approx(8 / 10)
    assert normal["specificity"] == pytest.approx(11 / 13)
    assert normal["precision"] == pytest.approx(8 / 10)
    assert normal["f1"] == pytest.approx(0.8)
    als = m["per_class"]["ALS"]  # tp 6, fn 2, fp 2, tn 13
    assert als["sensitivity"] == pytest.approx(6 / 8)
    assert als["specificity"] == pytest.approx(13 / 15)
    assert als["f1"] == pytest.approx(12 / 16)
    myo = m["per_class"]["Myopathy"]  # tp 4, fn 1, fp 1, tn 17
    assert myo["sensitivity"] == pytest.approx(4 / 5)
    assert myo["specificity"] == pytest.approx(17 / 18)
    assert myo["f1"] == pytest.approx(8 / 10)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.75 + 0.8) / 3)
    assert m["balanced_accuracy"] == pytest.approx((0.8 + 0.75 + 0.8) / 3)
    assert m["confusion"] == cm.tolist()


def test_metrics_absent_class_is_nan_and_not_averaged() -> None:
    cm = np.array([[3, 0, 1], [0, 0, 0], [0, 0, 2]])
    m = classification_metrics(cm)
    assert math.isnan(m["per_class"]["ALS"]["sensitivity"])
    assert math.isnan(m["per_class"]["ALS"]["f1"])
    assert m["per_class"]["ALS"]["specificity"] == 1.0
    f1_normal = 2 * 3 / (2 * 3 + 0 + 1)
    f1_myo = 2 * 2 / (2 * 2 + 1 + 0)
    assert m["macro_f1"] == pytest.approx((f1_normal + f1_myo) / 2)


def test_never_predicted_class_has_zero_f1() -> None:
    m = classification_metrics(np.array([[2, 0, 0], [1, 0, 0], [0, 0, 1]]))
    assert m["per_class"]["ALS"]["f1"] == 0.0
    assert math.isnan(m["per_class"]["ALS"]["precision"])


def test_subject_level_averages_recordings() -> None:
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [np.nan, np.nan, np.nan]])
    y, yp, p, keys = subject_level(probs, [1, 1, 2, 2], ["s1", "s1", "s2", "s2"])
    assert keys == ["s1", "s2"]
    assert y.tolist() == [1, 2]
    assert yp.tolist() == [1, 2]  # s1 mean (0.4, 0.5, 0.1) -> ALS
    assert p[0] == pytest.approx([0.4, 0.5, 0.1])


def test_level_result_concat_and_metrics() -> None:
    a = LevelResult("recording", np.array([0, 1]), np.array([0, 0]), np.eye(3)[[0, 0]], ["a", "b"])
    b = LevelResult("recording", np.array([2]), np.array([2]), np.eye(3)[[2]], ["c"])
    pooled = LevelResult.concat([a, b])
    assert pooled.keys == ["a", "b", "c"]
    assert pooled.metrics["accuracy"] == pytest.approx(2 / 3)


def test_assert_subject_disjoint_raises_on_leak() -> None:
    assert_subject_disjoint(["a", "b"], ["c"])
    with pytest.raises(AssertionError, match="subject leak"):
        assert_subject_disjoint(["a", "b"], ["b"])


@settings(max_examples=60, deadline=None)
@given(
    items=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 2)), min_size=2, max_size=80),
    k=st.integers(2, 6),
    seed=st.integers(0, 1000),
)
def test_grouped_kfold_never_leaks_and_tests_everything_once(items: list[tuple[int, int]], k: int, seed: int) -> None:
    # one class per subject (the class is a property of the subject)
    subjects = [f"s{s}" for s, _ in items]
    labels = [s % 3 for s, _ in items]
    folds = grouped_kfold(subjects, labels, k, seed)
    seen: list[int] = []
    for train, test in folds:
        assert test, "empty test folds are dropped"
        assert not {subjects[i] for i in train} & {subjects[i] for i in test}
        assert sorted(train + test) == list(range(len(subjects)))
        seen.extend(test)
    assert sorted(seen) == list(range(len(subjects)))  # each item tested exactly once
    assert len(folds) <= k


@settings(max_examples=30, deadline=None)
@given(subjects=st.lists(st.sampled_from(list("abcdef")), min_size=2, max_size=40))
def test_loso_one_fold_per_subject(subjects: list[str]) -> None:
    folds = leave_one_subject_out(subjects)
    assert len(folds) == len(set(subjects))
    for train, test in folds:
        assert len({subjects[i] for i in test}) == 1
        assert subjects[test[0]] not in {subjects[i] for i in train}


def test_grouped_kfold_stratifies_classes() -> None:
    subjects = [f"{c}{i}" for c in "NAM" for i in range(5)]
    labels = [s[0] for s in subjects]
    for _, test in grouped_kfold(subjects, labels, 5, seed=3):
        assert sorted(labels[i] for i in test) == ["A", "M", "N"]


def test_subject_folds_parses_loso_and_k() -> None:
    subj = ["a", "a", "b", "c"]
    assert len(subject_folds(subj, [0, 0, 1, 2], "loso")) == 3
    assert len(subject_folds(subj, [0, 0, 1, 2], "2")) == 2
    from streamemg.errors import ConfigError

    with pytest.raises(ConfigError):
        subject_folds(subj, [0, 0, 1, 2], "x")
    with pytest.raises(ConfigError):
        grouped_kfold(subj, [0, 0, 1, 2], 1)


def test_grouped_kfold_rejects_subject_with_two_classes() -> None:
    with pytest.raises(ValueError):
        grouped_kfold(["a", "a"], [0, 1], 2)


def test_stream_aggregate_is_mean_of_valid_windows() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]], dtype=np.float32)
    cum = stream_aggregate(probs, ["ok", "clipping", "ok"], np.array([4000, 5000, 6000]), 4000.0)
    assert cum == pytest.approx([0.45, 0.2, 0.35], abs=1e-6)
    none = stream_aggregate(probs[:1], ["flat"], np.array([4000]), 4000.0)
    assert np.isnan(none).all()
