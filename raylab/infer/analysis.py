"""The C3D paper's evaluation of a video descriptor (Tran et al., ICCV 2015, section 4), on
features :mod:`raylab.infer.features` extracted: a linear SVM trained on one split and
scored on another, the descriptor's compactness (the SVM's accuracy after PCA to a few
dimensions), and a t-SNE plot of how the classes cluster. scikit-learn and matplotlib; no
Ray, no model.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from raylab.infer.features import VideoFeatures
from raylab.infer.figures import pyplot, save_figure

SVM_C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def eval_split(splits: Iterable[str]) -> str:
    """The split to report accuracy on: ``test`` when present, else ``val``."""
    present = set(splits)
    for name in ("test", "val"):
        if name in present:
            return name
    raise ValueError(f"no test or val split to evaluate on; present: {sorted(present)}")


def _svc(c: float, seed: int):
    from sklearn.svm import LinearSVC

    return LinearSVC(C=c, max_iter=20000, random_state=seed)


def _fit_score(c, x_train, y_train, x_test, y_test, seed) -> float:
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = _svc(c, seed).fit(x_train, y_train)
    return float((model.predict(x_test) == y_test).mean())


def linear_svm(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    grid: Sequence[float] = SVM_C_GRID,
    folds: int = 3,
    seed: int = 0,
) -> dict:
    """A linear SVM (one-vs-rest ``LinearSVC``) trained on the train features, scored on the
    test features: ``{"accuracy", "C", "cv_accuracy": {C: mean accuracy}, "folds"}``.

    ``C`` is chosen by stratified ``folds``-fold cross-validation on the train set over
    ``grid`` (the smallest C among the best); with fewer than 2 videos in some class CV is
    impossible and C = 1 (``folds`` 0). ValueError with fewer than two classes in train.
    """
    from sklearn.model_selection import StratifiedKFold

    x_train, x_test = np.asarray(x_train), np.asarray(x_test)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    classes, per_class = np.unique(y_train, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"a linear SVM needs two classes in the train set, got {classes}")
    k = min(folds, int(per_class.min()))
    cv: dict[float, float] = {}
    if k >= 2:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        for c in grid:
            scores = [
                _fit_score(c, x_train[a], y_train[a], x_train[b], y_train[b], seed)
                for a, b in splitter.split(x_train, y_train)
            ]
            cv[float(c)] = float(np.mean(scores))
        best = max(cv.values())
        chosen = min(c for c, s in cv.items() if s == best)
    else:
        k, chosen = 0, 1.0
    return {
        "accuracy": _fit_score(chosen, x_train, y_train, x_test, y_test, seed),
        "C": chosen,
        "cv_accuracy": cv,
        "folds": k,
    }


def pca_dims(dim: int, n_train: int) -> list[int]:
    """2, 4, 8, ... up to ``min(dim, n_train)``, which ends the list (PCA cannot give more
    components than samples or features)."""
    top = max(1, min(dim, n_train))
    dims = [2**i for i in range(1, int(math.log2(top)) + 1) if 2**i < top] if top > 1 else []
    return dims + [top]


def compactness_curve(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    C: float = 1.0,
    dims: Sequence[int] | None = None,
    seed: int = 0,
) -> dict[int, float]:
    """Test accuracy of the linear SVM (fixed ``C``) after PCA to each of ``dims`` dimensions
    (default :func:`pca_dims`), the PCA fitted on the train features only: ``{dims: acc}``."""
    from sklearn.decomposition import PCA

    x_train, x_test = np.asarray(x_train), np.asarray(x_test)
    dims = list(dims) if dims is not None else pca_dims(x_train.shape[1], len(x_train))
    curve = {}
    for d in dims:
        pca = PCA(n_components=d, random_state=seed).fit(x_train)
        curve[int(d)] = _fit_score(
            C, pca.transform(x_train), y_train, pca.transform(x_test), y_test, seed
        )
    return curve


def tsne_embedding(x: np.ndarray, *, seed: int = 0, perplexity: float | None = None) -> np.ndarray:
    """2-D t-SNE of the rows of ``x`` (after PCA to at most 50 dimensions). The perplexity
    defaults to ``min(30, (n - 1) / 3)`` and is always below the sample count n (>= 2)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    if n < 2:
        raise ValueError(f"t-SNE needs at least 2 points, got {n}")
    if perplexity is None:
        perplexity = min(30.0, max(1.0, (n - 1) / 3))
    perplexity = min(perplexity, n - 1)
    reduce = min(50, n, x.shape[1])
    if reduce < x.shape[1]:
        x = PCA(n_components=reduce, random_state=seed).fit_transform(x)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        x
    )


def plot_compactness(curve: Mapping[int, float], path: str | Path, *, title: str = "") -> Path:
    """Accuracy against PCA dimensions (log-2 axis) as a PNG."""
    plt = pyplot()
    dims = sorted(int(d) for d in curve)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(dims, [curve[d] for d in dims], "o-")
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.minorticks_off()
    ax.set_xlabel("PCA dimensions")
    ax.set_ylabel("linear SVM accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title or "compactness of the descriptor", fontsize=10)
    return save_figure(fig, path)


def plot_tsne(
    points: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    path: str | Path,
    *,
    title: str = "",
) -> Path:
    """A 2-D embedding as a PNG, one colour per class (legend up to 20 classes)."""
    plt = pyplot()
    labels = np.asarray(labels)
    k = max(len(classes), int(labels.max()) + 1 if len(labels) else 1)
    cmap = plt.get_cmap("tab10" if k <= 10 else "tab20" if k <= 20 else "gist_rainbow")
    fig, ax = plt.subplots(figsize=(6, 5))
    for c in np.unique(labels):
        m = labels == c
        color = cmap(int(c) % 20 if k <= 20 else int(c) / max(1, k - 1))
        name = classes[c] if c < len(classes) else str(c)
        ax.scatter(points[m, 0], points[m, 1], s=14, color=color, label=name)
    if k <= 20:
        ax.legend(fontsize=7, markerscale=1.2, loc="best", frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "t-SNE of the video features", fontsize=10)
    return save_figure(fig, path)


def analyse(
    features: VideoFeatures,
    classes: Sequence[str],
    out: str | Path,
    *,
    train: str = "train",
    test: str | None = None,
    grid: Sequence[float] = SVM_C_GRID,
    tsne_points: int = 2000,
    seed: int = 0,
) -> dict:
    """The C3D paper's evaluation of a descriptor: a linear SVM trained on ``train`` and
    scored on ``test`` (default :func:`eval_split`), the compactness curve (PCA fitted on
    train) and a t-SNE plot of the test videos (all videos when the test split has fewer
    than 2 per class), subsampled to ``tsne_points``. Writes ``out/compactness.png`` and
    ``out/tsne.png``; returns ``{"svm_accuracy", "svm_C", "svm_cv_accuracy", "train_split",
    "test_split", "compactness": {dims: acc}, "compactness_plot", "tsne_plot", "tsne_videos"}``.
    """
    out = Path(out)
    test = test or eval_split(features.splits)
    x_train, y_train = features.subset(train)
    x_test, y_test = features.subset(test)
    svm = linear_svm(x_train, y_train, x_test, y_test, grid=grid, seed=seed)
    curve = compactness_curve(x_train, y_train, x_test, y_test, C=svm["C"], seed=seed)
    layer = f"{features.layer}, " if features.layer else ""
    comp_png = plot_compactness(
        curve,
        out / "compactness.png",
        title=f"compactness ({layer}{features.dim}-d; full: {svm['accuracy']:.3f})",
    )
    shown = "test" if len(y_test) >= 2 * len(np.unique(y_test)) and len(y_test) >= 10 else "all"
    x, y = (x_test, y_test) if shown == "test" else (features.features, features.labels)
    if len(x) > tsne_points:
        pick = np.sort(np.random.default_rng(seed).choice(len(x), tsne_points, replace=False))
        x, y = x[pick], y[pick]
    tsne_png = plot_tsne(
        tsne_embedding(x, seed=seed),
        y,
        classes,
        out / "tsne.png",
        title=f"t-SNE of {len(x)} {test if shown == 'test' else 'train + ' + test} videos "
        f"({layer}{features.dim}-d)",
    )
    return {
        "svm_accuracy": svm["accuracy"],
        "svm_C": svm["C"],
        "svm_cv_accuracy": svm["cv_accuracy"],
        "svm_folds": svm["folds"],
        "train_split": train,
        "test_split": test,
        "compactness": curve,
        "compactness_plot": str(comp_png),
        "tsne_plot": str(tsne_png),
        "tsne_videos": len(x),
    }
