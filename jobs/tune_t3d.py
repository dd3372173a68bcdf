"""Search T3D and STM architectures with Ray Tune (Optuna TPE + ASHA); each trial a Ray Train run.

    ray job submit --working-dir . -- python jobs/tune_t3d.py [--data SHARDS] [--name NAME] \
        [--family t3d stm] [--depth 121 169 201] [--frames 8 16 32 64] [--size 112 160 224] \
        [--t3d-frames 32 64] [--stm-frames 8 16] [--stride 1 2 4 8] [--stm-stages 2345 45 ...] \
        [--stm-blocks all first] [--lr LOW HIGH] [--weight-decay LOW HIGH] [--num-samples N] \
        [--max-epochs E] [--resume]

Every knob flag takes the choices to search; one value fixes the knob. ``--t3d-frames`` /
``--stm-frames`` give a family frame counts of its own in place of ``--frames``.
Configurations that cannot run are pruned before they start, with the reason in the study and
the report.

Without ``--data`` the job uses the demo set (generated and ingested under ``--root`` if
absent). On a cluster without GPUs it then runs an embedded CPU-sized default: tiny
networks (width 1/8), small clips and a handful of short trials, a few minutes in all.

``--resume --name NAME`` continues an interrupted experiment; finished trials are kept.
The last stdout line is a JSON object: the best configuration, its metrics, and the paths
of the experiment, the best checkpoint, the study and the report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from raylab.data.storage import Shards, raylab_home
from raylab.jobs import (
    add_config_flags,
    one_line_errors,
    print_result,
    route_ray_logs,
    start_ray,
)
from raylab.tune.options import EARLY_STOPPING, SEARCHERS
from raylab.tune.presets import CPU_DEFAULT, demo_shards
from raylab.tune.space import SearchSpace

# The search space's knobs, each a flag (the field's choices and help are the flag's).
KNOBS = [f.name for f in dataclasses.fields(SearchSpace)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", help="shards written by jobs/ingest.py (default: the demo set)")
    p.add_argument(
        "--root",
        default=str(raylab_home()),
        help="home of the demo set, of the studies of results on s3://, and by default of "
        "results ($RAYLAB_HOME, ~/raylab)",
    )
    p.add_argument("--storage-path", help="results: a folder or s3://... (default ROOT/results)")
    p.add_argument("--name", help="experiment name (default tune_t3d-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the experiment --name")
    space = p.add_argument_group("search space (one value fixes a knob)")
    # Unset, a knob is the preset's (the embedded default) or SearchSpace's.
    add_config_flags(space, SearchSpace, only=KNOBS, defaults=dict.fromkeys(KNOBS))
    run = p.add_argument_group("search and trials")
    run.add_argument("--num-samples", type=int)
    run.add_argument("--max-epochs", type=int, help="epochs of a trial ASHA never stops")
    run.add_argument("--grace-period", type=int, help="epochs before ASHA may stop a trial")
    run.add_argument("--reduction-factor", type=int)
    run.add_argument("--width", type=float, help="channel multiplier (1.0: the papers')")
    run.add_argument("--batch-size", type=int, help="largest batch per worker")
    run.add_argument("--memory-gib", type=float, help="memory per worker for the batch estimate")
    run.add_argument("--workers", type=int, default=1, help="Train workers per trial")
    run.add_argument("--gpu", action="store_true", help="one GPU per worker (auto if present)")
    run.add_argument("--cpus-per-worker", type=float, default=1.0)
    run.add_argument(
        "--decoder-resource",
        help="custom resource of the decoder nodes (cluster.yaml: decoder); decoding stays there",
    )
    run.add_argument("--concurrency", type=int, help="trials at once (default: as resources fit)")
    run.add_argument("--val-clips", type=int, default=1)
    run.add_argument("--dropout", type=float, help="before the classifier (default: the model's)")
    run.add_argument(
        "--crop-scales",
        nargs="+",
        type=float,
        metavar="S",
        help="training crop sides relative to the short side (default: TSN's 1 .875 .75 .66)",
    )
    run.add_argument("--seed", type=int, default=0)
    method = p.add_argument_group("search method")
    method.add_argument(
        "--searcher", choices=SEARCHERS, default="tpe", help="Optuna's sampler (default tpe)"
    )
    method.add_argument(
        "--early-stopping",
        choices=EARLY_STOPPING,
        default="asha",
        help="asha (default), or none: every trial trains --max-epochs",
    )
    method.add_argument(
        "--stop-at-chance-after",
        type=int,
        metavar="EPOCHS",
        help="stop a trial still within 1.5x chance after this many epochs (default: off)",
    )
    method.add_argument(
        "--budget-epochs",
        type=int,
        metavar="EPOCHS",
        help="end the search once its trials have trained this many epochs in all "
        "(the trial running then is stopped); the same search on any machine",
    )
    method.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help="end the search after this long (trials running then are stopped)",
    )
    return p.parse_args(argv)


def build_options(args: argparse.Namespace, shards: str, use_gpu: bool, embedded: bool):
    """TuneOptions from the flags; the embedded CPU default fills what the flags leave open."""
    from raylab.data.decode import TSN_SCALES
    from raylab.tune.options import TuneOptions

    preset = CPU_DEFAULT if embedded else {}
    defaults = SearchSpace()
    space = SearchSpace(
        **{k: tuple(getattr(args, k) or preset.get(k, getattr(defaults, k))) for k in KNOBS}
    )

    def value(flag, key, default):
        return flag if flag is not None else preset.get(key, default)

    storage = args.storage_path or str(Path(args.root).expanduser().resolve() / "results")
    return TuneOptions(
        shards=str(shards),
        storage_path=storage,
        name=args.name or time.strftime("tune_t3d-%Y%m%d-%H%M%S"),
        space=space,
        num_samples=value(args.num_samples, "num_samples", 20),
        max_epochs=value(args.max_epochs, "max_epochs", 10),
        grace_period=value(args.grace_period, "grace_period", 1),
        reduction_factor=value(args.reduction_factor, "reduction_factor", 3),
        width=value(args.width, "width", 1.0),
        max_batch=value(args.batch_size, "batch_size", 16),
        memory_gib=args.memory_gib,
        workers=args.workers,
        use_gpu=use_gpu,
        cpus_per_worker=args.cpus_per_worker,
        decoder_resource=args.decoder_resource,
        concurrency=args.concurrency,
        val_clips=args.val_clips,
        seed=args.seed,
        searcher=args.searcher,
        early_stopping=args.early_stopping,
        budget_epochs=value(args.budget_epochs, "budget_epochs", None),
        time_budget_s=value(args.time_budget, "time_budget", None),
        stop_at_chance_after=value(args.stop_at_chance_after, "stop_at_chance_after", None),
        dropout=value(args.dropout, "dropout", None),
        crop_scales=tuple(value(args.crop_scales, "crop_scales", TSN_SCALES)),
    )


@one_line_errors("tune_t3d")
def main(argv: list[str] | None = None) -> dict:
    import ray

    from raylab.report import write_report
    from raylab.tune.options import load_options, options_dir, save_options
    from raylab.tune.results import local_dir, upload_outputs
    from raylab.tune.runner import (
        NoTrialScored,
        build_tuner,
        close_study,
        epochs_spent,
        resolve_memory,
        summarise,
    )

    args = parse_args(argv)
    # A mistaken path ends the job here, before Ray starts.
    data = Shards.open(args.data).check() if args.data else None
    root = Path(args.root).expanduser().resolve()
    os.environ["RAYLAB_HOME"] = str(root)  # where a URI experiment's study is kept (tune.results)
    # Trials pruned before they start report no accuracy (Optuna marks them PRUNED); Tune
    # reads this when its controller starts.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Tune's newer console output prints its own experiment table and paths whatever the
    # verbosity; the older one is silent at verbose=0, leaving the console to TrialConsole.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    args.name = args.name or time.strftime("tune_t3d-%Y%m%d-%H%M%S")
    storage = args.storage_path or str(root / "results")
    # Workers' output (each Train worker's epoch lines, Ray Data's plans) stays in the Ray
    # session's log files; the console follows the search through TrialConsole, and Ray's
    # INFO records on this driver go to a log file beside the study.
    ray_log = route_ray_logs(options_dir(storage, args.name) / "ray-driver.log")
    # Each trial's Train run is listed in the dashboard (/api/train/v2/runs/v1) only when its
    # controller runs with state tracking on. A job-level runtime env reaches every trial
    # process, on a local Ray and on a cluster this job was submitted to (Ray merges it with
    # the submission's own).
    start_ray(
        configure_logging=False,
        runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_STATE_TRACKING": "1"}},
    )

    if args.resume:
        if not args.name:
            raise SystemExit("--resume needs --name: the experiment to continue")
        options = load_options(storage, args.name)
    else:
        use_gpu = args.gpu or ray.cluster_resources().get("GPU", 0) > 0
        embedded = args.data is None and not use_gpu
        shards = data.location if data else str(demo_shards(root))
        options = build_options(args, shards, use_gpu, embedded)
        if embedded:
            print("no --data and no GPU: the embedded CPU-sized search", file=sys.stderr)
        options.memory_gib = options.memory_gib or resolve_memory(options)
        save_options(options)
    print(
        f"experiment {options.experiment_dir}\n"
        f"  optuna-dashboard sqlite:///{options.study_path}\n"
        f"  tensorboard --logdir {options.experiment_dir}\n"
        f"  Ray's logs: {ray_log} (this driver), /tmp/ray/session_latest/logs (workers)",
        file=sys.stderr,
        flush=True,
    )
    start = time.monotonic()
    results = build_tuner(options, resume=args.resume).fit()
    out_of_time = options.time_budget_s and time.monotonic() - start >= options.time_budget_s
    out_of_work = options.budget_epochs and epochs_spent(results) >= options.budget_epochs
    ended = results.num_terminated + results.num_errors >= options.num_samples
    if not (ended or out_of_time or out_of_work):
        # Interrupted (Ctrl-C, SIGUSR1): Tune saved the experiment; say how to go on.
        resume = f"python jobs/tune_t3d.py --resume --name {options.name}"
        resume += f" --storage-path {options.storage_path} --root {root}"
        summary = {"interrupted": True, "experiment": options.experiment_dir, "resume": resume}
        print(f"interrupted; continue with: {resume}", file=sys.stderr)
        print_result(summary)
        return summary
    close_study(options)
    try:
        summary = summarise(options, results)
    except NoTrialScored as err:
        raise SystemExit(f"tune_t3d: {err}") from err
    summary["report"] = f"{options.experiment_dir}/report.html"
    summary["logs"] = {"driver": str(ray_log), "ray_session": "/tmp/ray/session_latest/logs"}
    local = local_dir(options)  # the experiment folder, or its local copy for s3:// results
    (local / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    write_report(local)
    upload_outputs(options, local)
    print_result(summary)
    return summary


if __name__ == "__main__":
    main()
