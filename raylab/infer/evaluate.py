"""Evaluate as the papers report: multi-view video accuracy, per class, and fused streams.

:func:`predict` runs Ray Data batch inference: the multi-view clip dataset flows through
a pool of :class:`Predictor` actors (GPU or CPU), each returning per-view logits. Scores
are softmax-averaged per video (``n clips x k crops``); two streams (RGB and optical
flow) are fused by averaging their per-video scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from raylab.config import ClipConfig, TrainConfig, normalise
from raylab.data.storage import Shards
from raylab.infer.batch import InferenceResources, batches, test_views, through_model
from raylab.infer.figures import pyplot, save_figure
from raylab.metrics import topk_accuracy, video_scores
from raylab.progress import progress_bar
from raylab.train.checkpoints import load_checkpoint


def evaluation_clip(config: TrainConfig, clips: int = 1, crops: int = 1) -> ClipConfig:
    """The clips a checkpoint's run trained on, tested on ``clips`` x ``crops`` views per
    video."""
    return config.clip.with_test_views(clips, crops)


class Predictor:
    """``map_batches`` callable: clip rows -> rows of per-view logits."""

    def __init__(self, checkpoint: str) -> None:
        self.model, config = load_checkpoint(checkpoint)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.mean = torch.tensor(config.mean, device=self.device)
        self.std = torch.tensor(config.std, device=self.device)

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        clip = torch.from_numpy(batch["clip"]).to(self.device)
        ctx = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else torch.autocast("cpu", enabled=False)
        )
        with ctx:
            logits = self.model(normalise(clip, self.mean, self.std)).float().cpu().numpy()
        out = {
            "video_id": batch["video_id"],
            "label": batch["label"],
            "view": batch["view"],
            "logits": logits,
        }
        for key in ("error", "frames"):  # why a placeholder row's video failed; its length
            if key in batch:
                out[key] = batch[key]
        return out


def predict(
    shards: str | Path | Shards,
    checkpoint: str | Path,
    *,
    split: str = "val",
    clips: int = 1,
    crops: int = 1,
    resources: InferenceResources | None = None,
    progress: str | None = None,
) -> dict:
    """Per-video scores of one model over a split: ``{"ids", "labels", "scores", "views",
    "clip_acc", "decode_failures"}``; a video whose bytes cannot be decoded is left out of
    the scores and listed by id in ``decode_failures``. ``progress``: the label of a
    progress bar over the views (none when not given).

    Clip geometry (frames, stride, size, scheme) comes from the checkpoint's config.
    """
    resources = resources or InferenceResources()
    _, config = load_checkpoint(checkpoint)
    shards = Shards.open(shards)
    ds = test_views(shards, split, evaluation_clip(config, clips, crops), resources)
    out = through_model(ds, Predictor, {"checkpoint": str(checkpoint)}, resources)
    ids, labels, logits, views, failed = [], [], [], 0, []
    total = shards.manifest.videos(split) * clips * crops
    bar = progress_bar(total=total, desc=progress, unit="view", disable=progress is None)
    for batch, ok in batches(out):
        failed.extend(str(v) for v in batch["video_id"][~ok])
        ids.extend(str(v) for v in batch["video_id"][ok])
        labels.extend(int(v) for v in batch["label"][ok])
        logits.append(batch["logits"][ok])
        views += int(ok.sum())
        bar.update(int(ok.sum()) + clips * crops * len(set(batch["video_id"][~ok])))
    bar.close()
    if not ids:
        raise ValueError(f"no clip of split {split!r} under {shards} could be decoded")
    scores, video_labels, video_ids = video_scores(ids, labels, np.concatenate(logits))
    order = np.argsort(video_ids)  # a stable order, so streams can be fused by position
    return {
        "ids": [video_ids[i] for i in order],
        "labels": video_labels[order],
        "scores": scores[order],
        "views": views,
        "clip_acc": float((np.concatenate(logits).argmax(1) == np.asarray(labels)).mean()),
        "decode_failures": sorted(failed),  # video_ids whose clips could not be decoded
    }


def fuse(a: dict, b: dict) -> dict:
    """Late fusion of two streams' per-video scores by averaging (I3D's two-stream)."""
    common = sorted(set(a["ids"]) & set(b["ids"]))
    ia = {v: i for i, v in enumerate(a["ids"])}
    ib = {v: i for i, v in enumerate(b["ids"])}
    sa = a["scores"][[ia[v] for v in common]]
    sb = b["scores"][[ib[v] for v in common]]
    return {
        "ids": common,
        "labels": a["labels"][[ia[v] for v in common]],
        "scores": (sa + sb) / 2,
        "views": a["views"] + b["views"],
        "decode_failures": sorted(
            set(a.get("decode_failures", [])) | set(b.get("decode_failures", []))
        ),
    }


def report_metrics(pred: dict, classes: list[str]) -> dict:
    """Top-1/top-5, mean per-class accuracy and the confusion matrix of per-video scores."""
    labels, scores = pred["labels"], pred["scores"]
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, scores.argmax(1)), 1)
    totals = confusion.sum(1)
    per_class = {
        c: (float(confusion[i, i] / totals[i]) if totals[i] else None)
        for i, c in enumerate(classes)
    }
    seen = [v for v in per_class.values() if v is not None]
    return {
        "video_top1": topk_accuracy(scores, labels, 1),
        "video_top5": topk_accuracy(scores, labels, 5),
        "mean_class_acc": float(np.mean(seen)) if seen else float("nan"),
        "videos": len(labels),
        "decode_failures": pred.get("decode_failures", []),
        "per_class_acc": per_class,
        "confusion": confusion.tolist(),
    }


def plot_confusion(confusion: list[list[int]], classes: list[str], path: str | Path) -> Path:
    """The confusion matrix as a PNG (rows: true class, columns: predicted)."""
    plt = pyplot()
    m = np.asarray(confusion, dtype=float)
    norm = m / np.maximum(1, m.sum(1, keepdims=True))
    size = max(4.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 30:
        for i in range(len(classes)):
            for j in range(len(classes)):
                if m[i, j]:
                    color = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7, color=color)
    return save_figure(fig, path)
