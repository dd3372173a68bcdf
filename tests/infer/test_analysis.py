"""The descriptor's evaluation on synthetic features: the SVM, compactness, the plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from raylab.infer.analysis import analyse, compactness_curve, eval_split, linear_svm, pca_dims
from raylab.infer.features import average_clips


def _blobs(rng, n_per_class: int, centres: np.ndarray):
    k, d = centres.shape
    y = np.repeat(np.arange(k), n_per_class)
    x = centres[y] + 0.3 * rng.standard_normal((len(y), d))
    return x.astype(np.float32), y


def test_linear_svm_separates_separable_features_and_not_random_labels(tmp_path):
    rng = np.random.default_rng(0)
    centres = 3.0 * rng.standard_normal((4, 32))
    x_train, y_train = _blobs(rng, 15, centres)
    x_test, y_test = _blobs(rng, 15, centres)
    svm = linear_svm(x_train, y_train, x_test, y_test)
    assert svm["accuracy"] == 1.0
    assert svm["folds"] == 3 and svm["C"] in svm["cv_accuracy"]

    curve = compactness_curve(x_train, y_train, x_test, y_test, C=svm["C"])
    assert list(curve) == [2, 4, 8, 16, 32] == pca_dims(32, 60)
    assert curve[32] == 1.0 and all(0.0 <= a <= 1.0 for a in curve.values())

    # The same features with labels drawn at random: nothing to learn, about chance (0.25).
    noise = rng.standard_normal((600, 32)).astype(np.float32)
    labels = rng.integers(0, 4, 600)
    chance = linear_svm(noise[:200], labels[:200], noise[200:], labels[200:], grid=(0.1, 1.0))
    assert chance["accuracy"] < 0.4

    with pytest.raises(ValueError, match="two classes"):
        linear_svm(x_train, np.zeros(len(x_train)), x_test, y_test)


def test_analyse_writes_the_plots_and_uses_test_before_val(tmp_path):
    assert pca_dims(4096, 24) == [2, 4, 8, 16, 24] and pca_dims(1, 9) == [1]
    assert eval_split(["train", "val", "test"]) == "test" and eval_split(["val", "train"]) == "val"
    with pytest.raises(ValueError, match="no test or val"):
        eval_split(["train"])
    rng = np.random.default_rng(1)
    centres = 3.0 * rng.standard_normal((3, 16))
    x_train, y_train = _blobs(rng, 6, centres)
    x_val, y_val = _blobs(rng, 4, centres)
    vf = average_clips(
        [f"t{i}" for i in range(len(y_train))] + [f"v{i}" for i in range(len(y_val))],
        np.concatenate([y_train, y_val]),
        np.concatenate([x_train, x_val]),
        splits=["train"] * len(y_train) + ["val"] * len(y_val),
    )
    got = analyse(vf, ["a", "b", "c"], tmp_path)
    assert got["test_split"] == "val" and got["svm_accuracy"] == 1.0
    assert list(got["compactness"]) == [2, 4, 8, 16]
    for key in ("compactness_plot", "tsne_plot"):
        assert Path(got[key]).read_bytes()[:4] == b"\x89PNG"
