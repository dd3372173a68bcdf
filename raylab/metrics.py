"""Names the training loop, the search, evaluation and the report share, and the accuracy
of multi-view scores that validation and evaluation compute alike."""

import math
import re

import numpy as np

# What checkpoints are ranked by, the search maximises and the report leads with.
METRIC = "val_video_top1"
# The config key under which a search's driver hands a trial the batch and costs it measured
# for it (``raylab.tune.space.size_trial``): not a knob of the trial.
SIZING_KEY = "sizing"
# An epoch's figures that measure the clock, not the training (``at``: when its line of
# history.jsonl was written): two runs of one seed agree on everything else.
TIMED = frozenset({"clips_per_s", "pairs_per_s", "data_wait_frac", "train_s", "val_s", "at"})
# How a search trial ended: trained every epoch, stopped early (ASHA, a chance-level stop or
# the time budget), pruned before it started, or failed.
TRIAL_STATUSES = ("done", "stopped", "pruned", "error")
# A trial's figures as of its best epoch: the one with the highest METRIC, the later on ties,
# as its Train run keeps its checkpoints and raylab.train.checkpoints ranks them.
AT_BEST = (
    METRIC, "val_video_top5", "val_clip_acc", "gmacs", "params_m", "batch_size", "memory_gib"
)  # fmt: skip


def video_scores(
    ids: list[str], labels: list[int], logits: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Average softmax scores over each video's views -> (scores [V, K], labels [V], ids)."""
    import torch

    probs = torch.from_numpy(logits).float().softmax(-1).numpy()
    order: dict[str, int] = {}
    for vid in ids:
        order.setdefault(vid, len(order))
    sums = np.zeros((len(order), probs.shape[1]))
    counts = np.zeros(len(order))
    video_labels = np.zeros(len(order), dtype=np.int64)
    for vid, lab, p in zip(ids, labels, probs, strict=True):
        i = order[vid]
        sums[i] += p
        counts[i] += 1
        video_labels[i] = lab
    return sums / counts[:, None], video_labels, list(order)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k highest scores."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def trial_status(
    *, pruned: bool, failed: bool, ended: bool, epochs: int, max_epochs: int | None
) -> str:
    """How a search trial ended, one of TRIAL_STATUSES, or ``running`` while it has not.

    The console (Tune's live trials), the job's trial table (Tune's results) and the report
    (trial folders) read these facts from different places and judge them here: pruned
    before it started, failed, then trained every epoch (``done``) or fewer (``stopped``:
    ASHA, the chance-level stop, or the time budget ended it).
    """
    if pruned:
        return "pruned"
    if failed:
        return "error"
    if not ended:
        return "running"
    if max_epochs and epochs < max_epochs:
        return "stopped"
    return "done"


def folder_trial_id(folder: str) -> str:
    """The trial id in the name of a Tune trial's folder (``run_trial_<id>_<n>_<config>_<date>``),
    for a trial that ended before its first result said it; else the name itself."""
    named = re.search(r"_([0-9a-f]{8})_\d+_", folder)
    return named.group(1) if named else folder


def folder_trial_number(folder: str) -> int:
    """The ``<n>`` of a Tune trial's folder name: Tune counts its trials as it creates them
    (a restored experiment goes on counting), so it orders trials as the search made them."""
    named = re.search(r"_[0-9a-f]{8}_(\d+)_", folder)
    return int(named.group(1)) if named else 0


def epoch_of(result: dict) -> int:
    """The epoch a trial's result closed (1-based), as its run reports it. Not Tune's
    ``training_iteration``: a trial restored after its search's driver stopped counts that
    from 1 again while its Train run goes on from its checkpoint, and a resumed run reports
    its checkpoint's epoch once more (``restored``)."""
    return int(result.get("epoch", result.get("training_iteration", 0)) or 0)


def trial_row(
    trial_id: str,
    path: str,
    config: dict | None,
    results: list[dict],
    *,
    prune_reason: str | None = None,
    error: str | None = None,
    ended: bool,
    max_epochs: int | None,
) -> dict:
    """One trial of a search, as the search's ``trials.json`` and the report show it: its
    configuration, why it was pruned or failed, its figures at its best epoch (``AT_BEST``,
    ``best_epoch``, ``best_checkpoint`` where the results name checkpoints), the epochs
    it trained, its mean clips/s and its status. ``results`` are its reported epochs, in
    order (Tune's result lines); a missing or NaN figure is None."""
    knobs = {k: v for k, v in (config or {}).items() if k != SIZING_KEY}
    row = {"trial_id": trial_id, "path": path} | knobs
    if prune_reason is not None:
        row["prune_reason"] = prune_reason
    elif error is not None:
        row["error"] = error
    scored = [r for r in results if _finite(r.get(METRIC)) is not None]
    if scored:
        best = max(reversed(scored), key=lambda r: r[METRIC])
        row |= {k: _finite(best[k]) for k in AT_BEST if k in best}
        row["best_epoch"] = epoch_of(best)
        row["epochs"] = max(epoch_of(r) for r in results)
        speeds = [v for v in (_finite(r.get("clips_per_s")) for r in scored) if v is not None]
        row["clips_per_s"] = sum(speeds) / len(speeds) if speeds else None
        row["best_checkpoint"] = best.get("checkpoint_path")  # None: the results name none
    row["status"] = trial_status(
        pruned=prune_reason is not None,
        failed=error is not None,
        ended=ended,
        epochs=row.get("epochs", 0),
        max_epochs=max_epochs,
    )
    return row


def _finite(value):
    """A plain number (a numpy scalar's value), or None for a missing or NaN one."""
    if value is None:
        return None
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
