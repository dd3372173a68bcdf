"""Ray Tune over the search space: Optuna (TPE) proposes, ASHA stops early, Train runs.

The search's driver sizes each configuration as it is drawn (``space.size_trial``: the
batch and costs, in the config's ``sizing``). Each trial is a driver function
(:func:`run_trial`) that plans the sampled configuration from it (``space.plan_trial``) and
either reports why it was pruned or builds and fits a Ray Train ``TorchTrainer`` whose
epochs reach Tune through ``TuneReportCallback``.
Layout of an experiment (``storage_path/name``)::

    <Tune's trial folders>     params.json, result.json, progress.csv, TensorBoard events
    train_runs/train-<trial>/  the trial's Train run: checkpoints, history.jsonl, tensorboard/
    optuna.db                  the Optuna study (SQLite), written as trials progress
    best/                      the best trial's weights, evaluation and confusion matrix
    summary.json, report.html  written at the end (``raylab.report``)
"""

from __future__ import annotations

import functools
import json
import sys
import time
import warnings
from pathlib import Path

from raylab.config import TrainConfig
from raylab.data.storage import Shards
from raylab.metrics import (
    METRIC,
    SIZING_KEY,
    TRIAL_STATUSES,
    folder_trial_id,
    folder_trial_number,
    trial_row,
)
from raylab.train.checkpoints import best_checkpoint_in, save_state
from raylab.tune.options import TuneOptions
from raylab.tune.resources import memory_budget, trial_concurrency
from raylab.tune.results import local_experiment
from raylab.tune.space import (
    Budget,
    DataLimits,
    Pruned,
    data_refusal,
    plan_trial,
    size_trial,
)


def run_trial(
    config: dict,
    options: TuneOptions,
    limits: DataLimits,
    budget: Budget,
    shards: Shards | None = None,
) -> None:
    """One trial: plan the configuration, then train it with Ray Train, or report the pruning.
    ``shards``: ``options.shards`` as the search's driver opened it (its manifest read)."""
    began = time.time()  # the run's start-up timings count from here
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raylab.train import spares
    from raylab.train.trainer import DataOptions, build_trainer, quick_start

    # Tune's trial table is the progress display; per-trial data bars would garble it.
    ray.data.DataContext.get_current().enable_progress_bars = False
    trial_id = tune.get_context().get_trial_id()
    plan = plan_trial(config, limits, budget, options.trial_template())
    if isinstance(plan, Pruned):
        print(f"trial {trial_id} pruned before it started: {plan.reason}", file=sys.stderr)
        tune.report({"pruned": True, "prune_reason": plan.reason})
        return
    runs = f"{options.experiment_dir}/train_runs"
    data = DataOptions(
        shards=shards or options.shards,
        decoder_cpus=options.decoder_cpus,
        decoder_resource=options.decoder_resource,
        lookahead=quick_start(),
    )
    trainer = build_trainer(
        plan.run,
        data,
        storage_path=runs,
        name=f"train-{trial_id}",  # a restored trial resumes its own Train run
        use_gpu=options.use_gpu,
        cpus_per_worker=options.cpus_per_worker,
        max_failures=1,
        keep_checkpoints=2,
        # Once its first epoch is in, the trial's processes start spares for the next's.
        callbacks=[TuneReportCallback()]
        + ([spares.KeepSpares.for_this_trial()] if spares.enabled() else []),
        extra_metrics=plan.cost | {"batch_size": plan.run.batch_size, "pruned": False},
        started_at=began,
        spares=spares.enabled(),
        checked=SIZING_KEY in config,  # the driver ran the model on this clip, sizing it
    )
    result = trainer.fit()
    if result.error:
        raise result.error


def _searcher_class():
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class StudySearch(OptunaSearch):
        """``OptunaSearch`` that records configurations pruned before they started as PRUNED
        trials with a ``prune_reason``, and every trial's cost as user attributes; and that
        sizes each configuration it draws (``sizer``: :func:`raylab.tune.space.size_trial`),
        in the driver, which measures every trial's network in one process, so that the
        trial starts with its batch and costs known."""

        def __init__(self, *args, sizer=None, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._sizer = sizer

        def suggest(self, trial_id: str):
            config = super().suggest(trial_id)
            if isinstance(config, dict) and self._sizer is not None:
                sizing = self._sizer(config)
                if sizing is not None:
                    config[SIZING_KEY] = sizing
            return config

        def _setup_study(self, mode) -> None:
            super()._setup_study(mode)
            # Optuna's dashboard and plots then say what they plot, not "Objective 0". The
            # call is marked experimental (its storage format may change), which the study's
            # users need not be told on every run.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.set_metric_names([METRIC])

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if self.metric in result:
                super().on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
            trial = self._ot_trials.get(trial_id)
            if trial is not None and result and trial_id not in self._completed_trials:
                for key in ("prune_reason", "gmacs", "params_m", "clips_per_s", "batch_size"):
                    if key in result:
                        trial.set_user_attr(key, result[key])
            super().on_trial_complete(trial_id, result, error)

    return StudySearch


def trial_folder(trial) -> str:
    """Tune's own folder name for a trial (``run_trial_<id>_<n>_<knobs>_<date>``), its knobs
    without the sizing the driver added to the config: else the sizing's four figures,
    sorted in among the knobs, push an STM trial's placement out of the 130 characters
    Tune keeps."""
    from ray.tune.search.variant_generator import format_vars
    from ray.tune.utils.util import date_str

    number = trial.experiment_tag.split("_", 1)[0]
    knobs = {(k,): v for k, v in trial.config.items() if k != SIZING_KEY}
    return f"{trial}_{number}_{format_vars(knobs)}"[:130] + f"_{date_str()}"


_spare_keeper = None  # the search's SpareKeeper, held by its driver


def share_across_trials() -> None:
    """Start in the search's driver what every trial would otherwise start again: Ray Data's
    statistics actor. A trial's first dataset creates it inside the trial's placement group
    (Tune's trial groups take in what their actors start), so it dies with the trial and
    the next trial starts another process; created here, outside any group, one serves them
    all. And the keeper that asks for each trial's spare processes
    (:class:`raylab.train.spares.SpareKeeper`), which must outlive the trials. Neither with
    ``RAYLAB_QUICK_START=0`` (``benchmarks/trial_start.py`` compares the two)."""
    from raylab.train import spares
    from raylab.train.trainer import quick_start

    if not quick_start():
        return
    from ray.data._internal.stats import get_or_create_stats_actor

    get_or_create_stats_actor()
    if spares.enabled():
        global _spare_keeper
        _spare_keeper = spares.start_keeper()  # held here: it lives as long as the search


def study_sampler(options: TuneOptions):
    """The Optuna sampler of a search: its draws are a function of ``options.seed``."""
    import optuna

    if options.searcher == "random":
        return optuna.samplers.RandomSampler(seed=options.seed)
    # TPE models the space after n_startup_trials random ones (Optuna's default is 10, a
    # whole small search): a third of the trials, at least 3.
    startup = max(3, min(10, options.num_samples // 3))
    return optuna.samplers.TPESampler(seed=options.seed, n_startup_trials=startup)


def build_tuner(options: TuneOptions, *, resume: bool = False):
    """The ``Tuner`` of an experiment, new or restored from ``options.experiment_dir``.

    Trials pruned before they start report no accuracy, on purpose (Optuna then marks them
    PRUNED), so the process that fits it sets ``TUNE_DISABLE_STRICT_METRIC_CHECKING=1``
    before Tune starts (``jobs/tune_t3d.py`` does)."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.stopper import CombinedStopper

    from raylab.tune.console import TrialConsole
    from raylab.tune.stopping import ChanceRule, NotLearningStopper, WorkBudget

    share_across_trials()
    concurrency = trial_concurrency(options, ray.cluster_resources())
    budget = Budget(
        memory_gib=options.memory_gib or resolve_memory(options),
        max_batch=options.max_batch,
        width=options.width,
    )
    shards = Shards.open(options.shards)  # its manifest read once, for every trial
    limits = DataLimits.of(shards)
    # The driver only waits on its Train run, which reserves the workers' resources itself;
    # a CPU share here would leave the last decoder without the whole CPU it asks for. It
    # runs on the head, with its Train controller: losing a worker node (a reclaimed spot
    # instance) then costs a worker-group restart from the checkpoint, never the trial.
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, options=options, limits=limits, budget=budget, shards=shards
        ),
        {"CPU": 0, "memory": 256 * 2**20, "node:__internal_head__": 0.001},
    )
    if resume:
        if not tune.Tuner.can_restore(options.experiment_dir):
            raise FileNotFoundError(
                f"--resume: no experiment to restore at {options.experiment_dir}"
            )
        return tune.Tuner.restore(
            options.experiment_dir, trainable, resume_unfinished=True, restart_errored=True
        )
    options.study_path.parent.mkdir(parents=True, exist_ok=True)
    options.space.check_data(limits.min_frames)
    searcher = _searcher_class()(
        # Strides are drawn among those whose clip fits the shortest video.
        space=functools.partial(options.space.define, max_span=limits.min_frames),
        metric=METRIC,
        mode="max",
        sampler=study_sampler(options),
        storage=optuna.storages.RDBStorage(f"sqlite:///{options.study_path}"),
        study_name=options.name,
        sizer=functools.partial(
            size_trial, limits=limits, budget=budget, template=options.trial_template()
        ),
    )
    refusal = functools.partial(data_refusal, limits=limits, template=options.trial_template())
    stopper = None
    if options.stop_at_chance_after and options.early_stopping != "none":
        stopper = NotLearningStopper(ChanceRule(limits.num_classes, options.stop_at_chance_after))
    # The budget first: Tune's CombinedStopper asks its stoppers with any(), which stops
    # asking at the first True, and the budget must count every epoch, a trial's last too.
    stoppers = (
        [WorkBudget(options.budget_epochs, options.experiment_dir)] if options.budget_epochs else []
    )
    stoppers += [stopper] if stopper else []
    if options.early_stopping == "asha":
        scheduler = ASHAScheduler(
            # Rungs compare validation loss, not top-1: on the demo's 96 videos one video
            # moves top-1 by a step of 0.01, and rungs of few trials are decided by such steps.
            metric="val_loss",
            mode="min",
            time_attr="epoch",  # the run's own count: see stopping.epoch_of
            # One past the last epoch: a trial that trains every epoch then ends on its own
            # and its Train run shuts down cleanly. One that Tune stops is killed with its
            # Train controller, whose request to the autoscaler lingers until it expires.
            max_t=options.max_epochs + 1,
            grace_period=min(options.grace_period, options.max_epochs + 1),
            reduction_factor=options.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        # The searcher maximises top-1 and ASHA minimises validation loss, each named in its
        # own constructor, so the Tuner names no metric of its own.
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=options.num_samples,
            max_concurrent_trials=concurrency,
            time_budget_s=options.time_budget_s,
            trial_dirname_creator=trial_folder,
        ),
        run_config=tune.RunConfig(
            name=options.name,
            storage_path=options.storage_path,
            failure_config=tune.FailureConfig(max_failures=1),
            # TrialConsole prints the search's story; Tune's reporter would repeat it in
            # tables of every config and result.
            verbose=0,
            callbacks=[TrialConsole(options.max_epochs, stopper, refusal=refusal)],
            stop=CombinedStopper(*stoppers) if stoppers else None,
        ),
    )


def resolve_memory(options: TuneOptions) -> float:
    """The memory per worker the batch estimate plans for (:func:`memory_budget`), read from
    the cluster; a search records it in its options so that a resumed one plans the same."""
    import ray

    resources = ray.cluster_resources()
    return memory_budget(options, resources, trial_concurrency(options, resources))


def epochs_spent(results) -> int:
    """Epochs the trials of a finished ``fit()`` trained in all: the work budget's unit."""
    spent = 0
    for r in results:
        frame = r.metrics_dataframe
        if frame is not None and METRIC in frame and frame[METRIC].notna().any():
            epochs = frame["epoch"] if "epoch" in frame else frame["training_iteration"]
            spent += int(epochs[frame[METRIC].notna()].max())
    return spent


def close_study(options: TuneOptions) -> list[int]:
    """End the study's trials that Tune stopped without telling the searcher (those the
    search's budget cut, and any it had drawn but not started), so that the study, and
    optuna-dashboard, show a search that has ended. A trial that reported epochs is PRUNED
    (its value the last one reported), one that never did FAILs; both say why in the
    ``ended_by`` attribute. Returns the trial numbers closed."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=options.name, storage=f"sqlite:///{options.study_path}")
    closed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, "ended_by", "the search's budget")
        state = TrialState.PRUNED if trial.intermediate_values else TrialState.FAIL
        study.tell(trial.number, state=state)
        closed.append(trial.number)
    return closed


def trial_table(results, max_epochs: int) -> list[dict]:
    """One row per trial (``raylab.metrics.trial_row``): its knobs, status (done, stopped
    early, pruned before it started, error), best accuracy (and epoch) and cost."""
    rows = []
    # In the order the search created them: Tune's result grid has its own order, which a
    # restored experiment changes.
    for r in sorted(results, key=lambda r: folder_trial_number(Path(r.path).name)):
        frame = r.metrics_dataframe
        last = r.metrics or {}
        pruned = bool(last.get("pruned"))
        rows.append(
            trial_row(
                last.get("trial_id") or folder_trial_id(Path(r.path).name),
                r.path,
                r.config,  # None for a trial the time budget ended before its first result
                [] if frame is None else frame.to_dict("records"),
                prune_reason=(last.get("prune_reason") or "pruned") if pruned else None,
                error=str(r.error).splitlines()[0][:300] if r.error and not pruned else None,
                # Every result here has ended; one the time budget ended before its first
                # epoch trained 0 epochs and reads as stopped.
                ended=True,
                max_epochs=max_epochs,
            )
        )
    return rows


class NoTrialScored(RuntimeError):
    """The search ended before any trial was scored."""


def release_placement_groups() -> list[str]:
    """Remove this job's placement groups still holding resources; returns their ids.

    When ``time_budget_s`` ends a search, Tune can leave the placement group of a trial it
    stopped (or staged for one it never started) reserved after ``fit()`` returns; the
    final evaluation would then wait forever for the CPU it holds. Call once the search
    is over: no trial of this job needs one any more.
    """
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    job = ray.get_runtime_context().get_job_id()
    removed = []
    for pg_id, info in ray.util.placement_group_table().items():
        # A placement group's id ends with the id of the job that created it.
        if pg_id.endswith(job) and info["state"] in ("CREATED", "PENDING", "RESCHEDULING"):
            remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(pg_id)))
            removed.append(pg_id)
    return removed


def summarise(options: TuneOptions, results) -> dict:
    """Rank the trials, evaluate the best one's best checkpoint multi-view on the validation
    split (confusion matrix in ``best/``), and return the job's result."""
    import torch

    from raylab.infer.evaluate import plot_confusion, predict, report_metrics

    release_placement_groups()
    rows = trial_table(results, options.max_epochs)
    exp = local_experiment(options)
    scored = [r for r in rows if r.get(METRIC) is not None]
    if not scored:
        counts = {s: sum(r["status"] == s for r in rows) for s in TRIAL_STATUSES}
        (exp / "trials.json").write_text(json.dumps(rows, indent=2, default=str))
        raise NoTrialScored(
            f"no trial of {exp} finished an epoch ({counts}); see {exp / 'trials.json'}"
            + (
                f"; a longer --time-budget than {options.time_budget_s:g} s lets one finish"
                if options.time_budget_s
                else ""
            )
        )
    best = max(scored, key=lambda r: (r[METRIC], -(r.get("gmacs") or 0)))
    run = f"{options.experiment_dir}/train_runs/train-{best['trial_id']}"
    # The checkpoint of the epoch Tune recorded as the best. A trial stopped by the budget
    # may have saved a later epoch before it was stopped; whether it did is a matter of
    # timing, so the result never reads it.
    location, state = best_checkpoint_in(run, epoch=best["best_epoch"])
    counts = {s: sum(r["status"] == s for r in rows) for s in TRIAL_STATUSES}
    (exp / "trials.json").write_text(json.dumps(rows, indent=2, default=str))
    out = exp / "best"
    out.mkdir(exist_ok=True)
    torch.save(state["model"], out / "weights.pt")
    checkpoint = Path(location)
    if not options.local:  # the evaluation actors read a local copy
        checkpoint = out / "checkpoint"
        checkpoint.mkdir(exist_ok=True)
        save_state(checkpoint, state)
    shards = Shards.open(options.shards)
    classes = list(shards.manifest.classes)
    pred = predict(shards, checkpoint, split="val", clips=options.val_clips)
    evaluation = report_metrics(pred, classes) | {"clip_acc": pred["clip_acc"]}
    plot_confusion(evaluation["confusion"], classes, out / "confusion.png")
    (out / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
    # The best trial's run whole, and the command that trains it again exactly.
    record = TrainConfig.from_record(state["config"]).record()
    (out / "config.json").write_text(json.dumps(record, indent=1) + "\n")
    command = (
        f"python jobs/train.py --data {options.shards} --config {out / 'config.json'} "
        f"--out runs/{record['model']}-best"
    )
    (out / "command.txt").write_text(command + "\n")
    knobs = {k: best[k] for k in options.space.to_dict() if k in best}
    return {
        "best_config": knobs,
        "metrics": {
            METRIC: best[METRIC],
            "val_video_top5": best.get("val_video_top5"),
            "val_clip_acc": best.get("val_clip_acc"),
            "best_epoch": best.get("best_epoch"),
            "epochs": best.get("epochs"),
            "gmacs": best.get("gmacs"),
            "params_m": best.get("params_m"),
            "clips_per_s": best.get("clips_per_s"),
            "eval_video_top1": evaluation["video_top1"],
            "eval_mean_class_acc": evaluation["mean_class_acc"],
        },
        "trials": counts | {"total": len(rows)},
        "seed": options.seed,
        # The work the search spent: the epochs its trials trained, in all.
        "trial_epochs": sum(r.get("epochs") or 0 for r in rows),
        "num_classes": len(classes),
        "best_trial": best["trial_id"],
        "model": record["model"],
        "experiment": options.experiment_dir,
        "best_checkpoint": location,
        "weights": f"{options.experiment_dir}/best/weights.pt",
        "confusion": f"{options.experiment_dir}/best/confusion.png",
        "study": f"sqlite:///{options.study_path}",
        "tensorboard": options.experiment_dir,
        "reproduce": command,
    }
