"""Late fusion and the reported metrics, on hand-made per-video scores (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from raylab.infer.evaluate import fuse, plot_confusion, report_metrics

CLASSES = ["a", "b", "c"]


def stream(rows: dict[str, tuple[int, list[float]]], views: int, failures=()) -> dict:
    """A ``predict`` result from ``{video_id: (label, scores)}``, in the given order."""
    return {
        "ids": list(rows),
        "labels": np.array([label for label, _ in rows.values()], dtype=np.int64),
        "scores": np.array([scores for _, scores in rows.values()], dtype=float),
        "views": views,
        "decode_failures": sorted(failures),
    }


# Two streams that disagree, listed in different orders; v5 is only in the RGB stream (its
# flow failed to decode), so fusion has four videos.
RGB = stream(
    {
        "v1": (0, [0.6, 0.3, 0.1]),  # right
        "v2": (0, [0.2, 0.7, 0.1]),  # wrong (b)
        "v3": (1, [0.5, 0.4, 0.1]),  # wrong (a)
        "v4": (2, [0.1, 0.1, 0.8]),  # right
        "v5": (1, [0.1, 0.8, 0.1]),  # right, not fused
    },
    views=10,
)
FLOW = stream(
    {
        "v4": (2, [0.1, 0.6, 0.3]),  # wrong (b)
        "v3": (1, [0.1, 0.8, 0.1]),  # right
        "v2": (0, [0.9, 0.05, 0.05]),  # right
        "v1": (0, [0.3, 0.5, 0.2]),  # wrong (b)
    },
    views=8,
    failures=["v5"],
)


def test_fuse_averages_each_video_with_its_own_scores_in_the_other_stream():
    fused = fuse(RGB, FLOW)
    assert fused["ids"] == ["v1", "v2", "v3", "v4"]  # common videos only, sorted
    np.testing.assert_allclose(
        fused["scores"],
        [
            [0.45, 0.4, 0.15],  # v1: (0.6 + 0.3) / 2, (0.3 + 0.5) / 2, (0.1 + 0.2) / 2
            [0.55, 0.375, 0.075],  # v2
            [0.3, 0.6, 0.1],  # v3
            [0.1, 0.35, 0.55],  # v4
        ],
    )
    assert fused["labels"].tolist() == [0, 0, 1, 2]
    assert fused["views"] == 18
    assert fused["decode_failures"] == ["v5"]
    # Fusion is symmetric: the second stream's order does not matter.
    swapped = fuse(FLOW, RGB)
    assert swapped["ids"] == fused["ids"]
    np.testing.assert_allclose(swapped["scores"], fused["scores"])


def test_report_metrics_per_class_and_mean_class_accuracy_by_hand():
    rgb = report_metrics(RGB, CLASSES)
    # a: v1 right, v2 wrong -> 1/2; b: v3 wrong, v5 right -> 1/2; c: v4 right -> 1.
    assert rgb["per_class_acc"] == {"a": 0.5, "b": 0.5, "c": 1.0}
    assert rgb["mean_class_acc"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert rgb["video_top1"] == pytest.approx(3 / 5)  # differs from the mean-class accuracy
    assert rgb["video_top5"] == 1.0  # three classes: always in the top 5
    assert rgb["videos"] == 5
    # Rows are the true class, columns the prediction.
    assert rgb["confusion"] == [
        [1, 1, 0],  # a: v1 -> a, v2 -> b
        [1, 1, 0],  # b: v3 -> a, v5 -> b
        [0, 0, 1],  # c: v4 -> c
    ]

    flow = report_metrics(FLOW, CLASSES)
    assert flow["per_class_acc"] == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert flow["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    assert flow["decode_failures"] == ["v5"]

    # Fused: v1 -> a, v2 -> a, v3 -> b, v4 -> c, all right: each stream's mistakes are
    # outvoted by the other's confidence.
    fused = report_metrics(fuse(RGB, FLOW), CLASSES)
    assert fused["confusion"] == [[2, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert fused["per_class_acc"] == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert fused["video_top1"] == 1.0 and fused["videos"] == 4


def test_a_class_without_videos_is_left_out_of_the_mean():
    only_a_and_b = stream({"x": (0, [0.9, 0.1, 0.0]), "y": (1, [0.9, 0.1, 0.0])}, views=2)
    m = report_metrics(only_a_and_b, CLASSES)
    assert m["per_class_acc"] == {"a": 1.0, "b": 0.0, "c": None}
    assert m["mean_class_acc"] == 0.5  # over a and b, not (1 + 0 + 0) / 3


def test_the_confusion_matrix_is_written_as_a_png_in_a_new_folder(tmp_path):
    path = plot_confusion([[3, 1], [0, 4]], ["left", "right"], tmp_path / "eval" / "cm.png")
    assert path == tmp_path / "eval" / "cm.png"
    assert path.read_bytes()[:4] == b"\x89PNG"
