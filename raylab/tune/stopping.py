"""When a trial, or the whole search, stops: rules read from the trials' epoch results alone.

* :class:`ChanceRule` / :class:`NotLearningStopper`: a floor under ASHA for searches run one
  trial at a time. ASHA stops a trial at a rung when others did better there; the first
  trial to reach a rung has nothing to be compared with and goes on. The rule ends a trial
  that has never scored above ``margin`` x chance on validation and whose latest training
  loss says it is not learning either: after ``patience`` epochs, a loss of at least
  ``loss_fraction`` x ln K (ln K is the loss of a uniform guess: such a network is worse
  than guessing on its own training clips); after ``late_patience``, a loss not below ln K
  (it hovers at a uniform guess). Both figures must agree, so one validation video, which
  moves top-1 by 1/96 on the demo set, cannot stop a network whose training loss is falling.
* :class:`WorkBudget`: the search ends once its trials have trained a number of epochs in
  all. Counted in work, not seconds, a search run one trial at a time is a function of its
  seed and data whatever the machine's speed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from ray.tune import Stopper

from raylab.metrics import METRIC, epoch_of


def _epoch_results(results: list[dict]) -> list[dict]:
    """The results that closed an epoch (a trial pruned before it started reports none)."""
    return [r for r in results if r.get(METRIC) is not None]


def _number(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


@dataclass(frozen=True)
class ChanceRule:
    """Whether a trial is still at chance after ``patience`` epochs (see the module)."""

    num_classes: int
    patience: int
    margin: float = 1.5  # x chance: the validation top-1 a learner must pass
    # x ln K, the loss of a uniform guess: a trial whose latest training loss is at least
    # this after ``patience`` epochs is not learning; None: validation top-1 alone. On the
    # recorded curves of the demo search (docs/search.md), after 2 epochs every network
    # that went on to learn was at most 1.015 ln 8 and every STM at least 1.033 ln 8.
    loss_fraction: float | None = 1.03
    # Epochs after which a loss not below ln K itself stops a trial at chance: a learner can
    # hover at ln K for 3 epochs before it falls (a T3D-121 at 2.098 after 3 ended at 0.73),
    # a network that never learns for all 8. None: ``patience`` + 2.
    late_patience: int | None = None

    @property
    def late(self) -> int:
        return self.patience + 2 if self.late_patience is None else self.late_patience

    @property
    def floor(self) -> float:
        return self.margin / self.num_classes

    @property
    def why(self) -> str:
        """What a trial the rule stops was told."""
        text = f"not learning (val top-1 at most {self.floor:.3f}, {self.margin:g}x chance"
        if self.loss_fraction is None:
            return text + ")"
        ln_k = math.log(self.num_classes)
        loss = self.loss_fraction * ln_k
        times = "" if self.loss_fraction == 1 else f"{self.loss_fraction:g} x "
        text += f"; train loss at least {loss:.3f}, {times}ln {self.num_classes}"
        if self.loss_fraction > 1:
            text += f", or from epoch {self.late} at least {ln_k:.3f}"
        return text + ")"

    def stops(self, results: list[dict]) -> bool:
        """Whether a trial whose epochs so far gave ``results`` (in order) stops now."""
        epochs = _epoch_results(results)
        done = max((r.get("epoch", i) for i, r in enumerate(epochs, start=1)), default=0)
        if done < self.patience:
            return False
        scores = [r[METRIC] for r in epochs if not math.isnan(r[METRIC])]
        if scores and max(scores) > self.floor:
            return False
        if self.loss_fraction is None:
            return True
        losses = [r["train_loss"] for r in epochs if _number(r.get("train_loss"))]
        if not losses:
            return True
        ln_k = math.log(self.num_classes)
        return losses[-1] >= self.loss_fraction * ln_k or (done >= self.late and losses[-1] >= ln_k)


class NotLearningStopper(Stopper):
    """Tune's side of :class:`ChanceRule`: it keeps each trial's epoch results."""

    def __init__(self, rule: ChanceRule) -> None:
        self.rule = rule
        self.results: dict[str, list[dict]] = {}
        self.stopped: set[str] = set()

    @property
    def why(self) -> str:
        return self.rule.why

    def __call__(self, trial_id: str, result: dict) -> bool:
        if result.get(METRIC) is None:
            return False
        history = self.results.setdefault(trial_id, [])
        history.append(result)
        if self.rule.stops(history):
            self.stopped.add(trial_id)
            return True
        return False

    def stop_all(self) -> bool:
        return False


def epochs_trained(experiment_dir: str) -> dict[str, int]:
    """Epochs each trial of an experiment (a folder or a URI) has reported, read from its
    trial folders' ``result.json``: what a restored search has spent already."""
    import pyarrow.fs

    from raylab.data.storage import storage

    fs, root = storage(experiment_dir)
    done: dict[str, int] = {}
    selector = pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True)
    for info in fs.get_file_info(selector):
        if info.base_name != "result.json" or "/train_runs/" in info.path:
            continue
        with fs.open_input_stream(info.path) as f:
            for line in f.read().decode().splitlines():
                record = json.loads(line) if line.strip() else {}
                if record.get(METRIC) is not None and record.get("trial_id"):
                    trial = record["trial_id"]
                    done[trial] = max(done.get(trial, 0), epoch_of(record))
    return done


class WorkBudget(Stopper):
    """End the search once its trials have trained ``epochs`` epochs in all. The epoch that
    reaches the budget counts; the trial running then is stopped (and marked so).

    ``experiment_dir``: where a restored search's earlier epochs are read from, once, before
    the first result (:func:`epochs_trained`), so ``--resume`` does not start the count anew.
    """

    def __init__(self, epochs: int, experiment_dir: str | None = None) -> None:
        if epochs < 1:
            raise ValueError(f"a work budget is at least 1 trial-epoch, got {epochs}")
        self.epochs = epochs
        self.experiment_dir = experiment_dir
        self.done: dict[str, int] | None = None

    def _count(self) -> dict[str, int]:
        if self.done is None:
            self.done = epochs_trained(self.experiment_dir) if self.experiment_dir else {}
        return self.done

    @property
    def spent(self) -> int:
        return sum(self._count().values())

    def __call__(self, trial_id: str, result: dict) -> bool:
        done = self._count()
        if result.get(METRIC) is not None:
            done[trial_id] = max(done.get(trial_id, 0), epoch_of(result))
        return False

    def stop_all(self) -> bool:
        return self.spent >= self.epochs
