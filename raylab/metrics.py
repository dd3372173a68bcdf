"""Names the training loop, the search, evaluation and the report share, and the accuracy
of multi-view scores that validation and evaluation compute alike."""

import re

import numpy as np

# What checkpoints are ranked by, the search maximises and the report leads with.
METRIC = "val_video_top1"
# An epoch's figures that measure the clock, not the training (``at``: when its line of
# history.jsonl was written): two runs of one seed agree on everything else.
TIMED = frozenset({"clips_per_s", "pairs_per_s", "data_wait_frac", "train_s", "val_s", "at"})
# How a search trial ended: trained every epoch, stopped early (ASHA, a chance-level stop or
# the time budget), pruned before it started, or failed.
TRIAL_STATUSES = ("done", "stopped", "pruned", "error")


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
