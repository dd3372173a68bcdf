"""What a search prints: the user's story on the console, Ray's internals in log files.

:class:`TrialConsole` is a Tune callback that prints one line per trial event (started with
its knobs, each epoch's validation accuracy, stopped early, pruned with the reason, finished,
failed) and, at the end, one table of every trial. Tune's own reporter is turned off where
the tuner is built (``verbose=0``), so these are the search's only progress lines.

Ray's own records go to a log file (:func:`raylab.jobs.route_ray_logs`, as for every job).
Worker processes' output (each Train worker's epoch line, decode tasks' warnings) stays in
the Ray session's log files when the driver connects with ``ray.init(log_to_driver=False)``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import TextIO

from ray.tune import Callback

from raylab.metrics import METRIC, epoch_of, trial_status
from raylab.tune.space import knobs


def describe(config: dict) -> str:
    """A trial's searched knobs in a few words: ``stm 45/all 8x48 s4 lr 3.1e-03 wd 2.0e-04``."""
    k = knobs(config)
    if k.get("family") == "t3d":
        arch = f"t3d-{k.get('depth')}"
    else:
        arch = f"stm {k.get('stm_stages')}/{k.get('stm_blocks')}"
    clip = f"{k.get('frames')}x{k.get('size')} s{k.get('stride')}"
    rates = " ".join(
        f"{short} {k[name]:.1e}"
        for name, short in (("lr", "lr"), ("weight_decay", "wd"))
        if name in k
    )
    return f"{arch} {clip} {rates}".strip()


class TrialConsole(Callback):
    """One line per trial event on ``out``, and the table of trials at the end."""

    def __init__(
        self,
        max_epochs: int,
        stopper=None,
        out: TextIO | None = None,
        refusal: Callable[[dict], str | None] | None = None,
    ) -> None:
        """``refusal(config)``: why the data cannot feed a trial's configuration, known when
        it starts (:func:`raylab.tune.space.data_refusal`), so that such a trial is told as
        pruned, never as started; a trial pruned for another reason is told at its result."""
        self.max_epochs = max_epochs
        self.stopper = stopper  # a NotLearningStopper, to say why a trial stopped
        self.out = out
        self.refusal = refusal
        self.told_pruned: set[str] = set()
        self.best: dict[str, float] = {}
        self.started: set[str] = set()
        self.ended: set[str] = set()  # trials whose end Tune reported (complete or error)

    def _print(self, text: str) -> None:
        print(text, file=self.out or sys.stdout, flush=True)

    def _best_tail(self, trial_id: str) -> str:
        best = self.best.get(trial_id)
        return f", best val top-1 {best:.3f}" if best is not None else ""

    def _pruned(self, trial_id: str, reason: str | None) -> None:
        if trial_id not in self.told_pruned:
            self.told_pruned.add(trial_id)
            self._print(f"trial {trial_id} pruned before it started: {reason}")

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        reason = self.refusal(trial.config) if self.refusal else None
        if reason:
            self._pruned(trial.trial_id, reason)
            return
        self.started.add(trial.trial_id)
        self._print(f"trial {trial.trial_id} started: {describe(trial.config)}")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result.get("pruned"):
            self._pruned(trial.trial_id, result.get("prune_reason"))
            return
        value = result.get(METRIC)
        if not isinstance(value, int | float) or not math.isfinite(value):
            return  # no score this round
        if result.get("restored"):
            return  # an epoch a resumed run reports again
        self.best[trial.trial_id] = max(value, self.best.get(trial.trial_id, -1.0))
        epoch = epoch_of(result)
        self._print(
            f"trial {trial.trial_id} epoch {epoch}/{self.max_epochs}: val top-1 {value:.3f}  "
            f"loss {result.get('train_loss', float('nan')):.3f}  "
            f"{result.get('clips_per_s', float('nan')):.0f} clips/s"
        )

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.ended.add(trial.trial_id)
        last = trial.last_result or {}
        if last.get("pruned"):
            return
        epochs = epoch_of(last)
        tail = self._best_tail(trial.trial_id)
        if self.stopper is not None and trial.trial_id in self.stopper.stopped:
            self._print(f"trial {trial.trial_id} stopped after epoch {epochs}: {self.stopper.why}")
        elif epochs < self.max_epochs:
            self._print(f"trial {trial.trial_id} stopped early after epoch {epochs}{tail}")
        else:
            self._print(f"trial {trial.trial_id} finished {epochs} epochs{tail}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.ended.add(trial.trial_id)
        self._print(f"trial {trial.trial_id} failed; the error is in {trial.error_file}")

    def on_experiment_end(self, trials, **info) -> None:
        # Tune stops the trials still running when the search ends (its budget) without
        # a completion event: say so, or the table's "stopped" reads as an early stop.
        for trial in trials:
            last = trial.last_result or {}
            if trial.trial_id not in self.started - self.ended or last.get("pruned"):
                continue
            epochs = epoch_of(last)
            done = f"after epoch {epochs}" if epochs else "before its first epoch"
            tail = self._best_tail(trial.trial_id)
            self._print(f"trial {trial.trial_id} was running when the search ended: {done}{tail}")
        self._print(trial_table(trials, self.max_epochs, self.best))


def status_of(trial, max_epochs: int) -> str:
    """done (every epoch), stopped (early, by ASHA or the time budget), pruned or error."""
    last = trial.last_result or {}
    status = trial_status(
        pruned=bool(last.get("pruned")),
        failed=trial.status == "ERROR",
        ended=trial.status == "TERMINATED",
        epochs=epoch_of(last),
        max_epochs=max_epochs,
    )
    return trial.status.lower() if status == "running" else status  # pending, running, paused


def trial_table(trials, max_epochs: int, best: dict[str, float]) -> str:
    """Every trial on one line: id, status, knobs, epochs trained, best val top-1."""
    rows = [("trial", "status", "configuration", "epochs", "best top-1")]
    order = sorted(trials, key=lambda t: -best.get(t.trial_id, -1.0))
    for t in order:
        last = t.last_result or {}
        rows.append(
            (
                t.trial_id,
                status_of(t, max_epochs),
                describe(t.config),
                str(epoch_of(last) if not last.get("pruned") else 0),
                f"{best[t.trial_id]:.3f}" if t.trial_id in best else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
