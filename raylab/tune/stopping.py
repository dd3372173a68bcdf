"""Stop a trial that is not learning: a floor under ASHA for searches run one trial at a time.

ASHA stops a trial at a rung when others did better there; the first trial to reach a rung
has nothing to be compared with and goes on, to the last epoch when trials run one at a
time. :class:`NotLearningStopper` ends a trial whose best validation accuracy after
``patience`` epochs is still within ``margin`` times chance, whatever ran before it.
"""

from __future__ import annotations

from ray.tune import Stopper

from raylab.metrics import METRIC


class NotLearningStopper(Stopper):
    """Stop a trial whose best ``val_video_top1`` after ``patience`` epochs is at most
    ``margin`` x chance (1 / ``num_classes``)."""

    def __init__(self, num_classes: int, patience: int, margin: float = 1.5) -> None:
        self.floor = margin / num_classes
        self.patience = patience
        self.best: dict[str, float] = {}
        self.stopped: set[str] = set()

    def __call__(self, trial_id: str, result: dict) -> bool:
        value = result.get(METRIC)
        if value is None or value != value:  # no score this round, or NaN
            return False
        self.best[trial_id] = max(value, self.best.get(trial_id, 0.0))
        if (
            result.get("training_iteration", 0) >= self.patience
            and self.best[trial_id] <= self.floor
        ):
            self.stopped.add(trial_id)
            return True
        return False

    def stop_all(self) -> bool:
        return False
