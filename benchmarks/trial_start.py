"""Where a search trial's start goes, and how long the search waits between trials.

    # the embedded search (jobs/tune_t3d.py on its demo set) with the start-up work as it
    # was, as it is without spare processes (with decode tasks of one unit each, too:
    # unit-tasks; and every validation pass decoded too: decode-before), and as it is, one
    # after another, each one's breakdown and the whole job's time, side by side
    python benchmarks/trial_start.py run [--budget-epochs 8] [--seed 0] [--rounds 1] \
        [--variants before unit-tasks decode-before val-after no-head-start no-spares after] \
        [--baseline REV ...] \
        [--baseline-first] [--work DIR]
    # the search as it is beside the search at an earlier commit (a checkout of its files
    # under DIR/checkouts), both with no-spares' environment
    python benchmarks/trial_start.py run --variants no-spares --baseline REV
    # the breakdown of an experiment already run (make demo's, for one)
    python benchmarks/trial_start.py read EXPERIMENT_DIR
    # a Train run of 3 short epochs, each reported with a checkpoint, with the Train
    # controller polling its workers every 2 s (Ray's default) and every 0.5 s, alternately
    python benchmarks/trial_start.py poll [--runs 3]

For every trial that trained, from its Tune ``result.json`` and its Train run's
``history.jsonl`` (the ``startup`` event a fresh run's rank 0 writes after its first epoch,
:class:`raylab.train.worker.StartClock`):

* ``first``: Tune's ``time_this_iter_s`` of the trial's first result; ``steady``: the
  median of its later ones; ``extra`` = first - steady (the issue's goal: at most 5 s).
* When each point of the first epoch was reached, in seconds from the trial's start:
  ``process`` (the Train worker's process created: the Train run's controller and worker
  group placed; before 0 when Ray gave the actor a process it had started earlier), ``loop`` (the per-worker function entered: imports, process group),
  ``model`` (network built and wrapped, optimiser, checkpoint looked up), ``batch`` (the
  first training batch decoded and handed over), ``step`` (the first step done), ``train``
  and ``val`` (the first training and validation passes done), ``report``.
* ``train_s`` / ``val_s``: the first epoch's training and validation passes against the
  median of the later epochs'; ``wait``: the first epoch's ``data_wait_frac`` and the
  median of the later ones' (goals: <= 10% and <= 2%).
* ``gap``: seconds from the previous trial's last epoch to this trial's start (the search's
  own time between trials; goal at most 2 s).

The last line is the JSON of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from raylab.metrics import TIMED, folder_trial_number  # noqa: E402

# The start-up work as it was and as it is, for the side-by-side run: each variant's
# environment. RAYLAB_QUICK_START=0 turns off what raylab does to start trials sooner (see
# raylab.tune.runner.share_across_trials and raylab.train.trainer.torch_trainer).
VARIANTS = {
    "before": {
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2.0",
        "RAYLAB_QUICK_START": "0",
    },
    # All of it but the spare processes each trial leaves for the next (raylab.train.spares).
    "no-spares": {
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
        "RAYLAB_QUICK_START": "1",
        "RAYLAB_SPARES": "0",
    },
    # As no-spares, with decode tasks of one unit each, as every task was before their
    # size followed their clips' bytes (raylab.data.pipeline.task_videos).
    "unit-tasks": {
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
        "RAYLAB_QUICK_START": "1",
        "RAYLAB_SPARES": "0",
        "RAYLAB_TASK_VIDEOS": "8",
    },
    # As no-spares, with the data pipeline as it was before validation passes were kept
    # (raylab.train.epoch.DataOptions.val_keep_bytes) and with decode tasks of a unit.
    "decode-before": {
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
        "RAYLAB_QUICK_START": "1",
        "RAYLAB_SPARES": "0",
        "RAYLAB_TASK_VIDEOS": "8",
        "RAYLAB_VAL_KEEP_BYTES": "0",
    },
    # As no-spares, with a fresh run's first validation pass decoded after its first
    # training pass, as before it was decoded beside it (raylab.train.epoch.Lookahead).
    "val-after": {
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
        "RAYLAB_QUICK_START": "1",
        "RAYLAB_SPARES": "0",
        "RAYLAB_VAL_AHEAD": "0",
    },
    # As no-spares, with a fresh run's first training pass decoded only once its Train
    # worker reads it, as before its first clips were decoded as the run starts
    # (raylab.train.epoch.head_start).
    "no-head-start": {
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
        "RAYLAB_QUICK_START": "1",
        "RAYLAB_SPARES": "0",
        "RAYLAB_HEAD_START_BYTES": "0",
    },
    "after": {
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
        "RAYLAB_QUICK_START": "1",
        "RAYLAB_SPARES": "1",
    },
}

POINTS = {
    "process": "worker_process",
    "loop": "loop_entered",
    "model": "model_ready",
    "batch": "first_batch",
    "step": "first_step",
    "train": "trained",
    "val": "validated",
    "report": "reported",
}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def first_and_later(epochs: list[dict], key: str) -> tuple[float | None, float | None]:
    """``key`` of the first epoch, and its median over the later ones."""
    values = [e[key] for e in epochs if key in e]
    if not values:
        return None, None
    return values[0], (statistics.median(values[1:]) if len(values) > 1 else None)


def trial_starts(experiment: Path) -> list[dict]:
    """One row per trial that trained, in the order the search created them."""
    rows = []
    folders = sorted(experiment.glob("run_trial_*"), key=lambda d: folder_trial_number(d.name))
    for folder in folders:
        results = [r for r in _lines(folder / "result.json") if "epoch" in r]
        if not results:
            continue  # pruned before it started: no Train run
        trial = results[0]["trial_id"]
        history_file = experiment / "train_runs" / f"train-{trial}" / "history.jsonl"
        history = _lines(history_file) if history_file.exists() else []
        startup = next((h for h in history if h["event"] == "startup"), None)
        epochs = [h for h in history if h["event"] == "epoch"]
        fresh = [r for r in results if not r.get("restored")]
        if not fresh:
            continue  # its epochs trained before a resume: its start is not in this folder
        times = [r["time_this_iter_s"] for r in fresh]
        later = times[1:]

        row = {
            "trial": trial,
            "epochs": len(fresh),
            "first": times[0],
            "steady": statistics.median(later) if later else None,
            "train_s": first_and_later(epochs, "train_s"),
            "val_s": first_and_later(epochs, "val_s"),
            "wait": first_and_later(epochs, "data_wait_frac"),
            "started_at": startup["started_at"] if startup else None,
            "ended_at": epochs[-1].get("at") if epochs else None,
            "points": {short: startup["seconds"].get(name) for short, name in POINTS.items()}
            if startup
            else {},
        }
        row["extra"] = row["first"] - row["steady"] if row["steady"] is not None else None
        rows.append(row)
    for before, row in zip(rows, rows[1:], strict=False):
        if before["ended_at"] and row["started_at"]:
            row["gap"] = row["started_at"] - before["ended_at"]
    return rows


def _f(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    """The breakdown as a text table, a trial a line."""
    head = (
        f"{'trial':9s} {'ep':>2s} {'first':>6s} {'steady':>6s} {'extra':>6s} "
        + " ".join(f"{p:>6s}" for p in POINTS)
        + f" {'train_s':>11s} {'val_s':>11s} {'wait':>9s} {'gap':>5s}"
    )
    lines = [head]
    for r in rows:
        pair = lambda v, spec=".1f": f"{_f(v[0], spec)}/{_f(v[1], spec)}"  # noqa: E731
        lines.append(
            f"{r['trial']:9s} {r['epochs']:2d} {_f(r['first']):>6s} {_f(r['steady']):>6s} "
            f"{_f(r['extra']):>6s} "
            + " ".join(f"{_f(r['points'].get(p)):>6s}" for p in POINTS)
            + f" {pair(r['train_s']):>11s} {pair(r['val_s']):>11s}"
            f" {pair(r['wait'], '.0%'):>9s} {_f(r.get('gap')):>5s}"
        )
    return "\n".join(lines)


def summary(rows: list[dict]) -> dict:
    extras = [r["extra"] for r in rows if r["extra"] is not None]
    gaps = [r["gap"] for r in rows if r.get("gap") is not None]
    waits_first = [r["wait"][0] for r in rows if r["wait"][0] is not None]
    waits_later = [r["wait"][1] for r in rows if r["wait"][1] is not None]
    median = lambda v: statistics.median(v) if v else None  # noqa: E731
    return {
        "trials": len(rows),
        "extra_first_epoch_s": median(extras),
        "max_extra_first_epoch_s": max(extras, default=None),
        "gap_s": median(gaps),
        "max_gap_s": max(gaps, default=None),
        "data_wait_first": median(waits_first),
        "data_wait_later": median(waits_later),
    }


def read(experiment: Path) -> dict:
    rows = trial_starts(experiment)
    print(f"{experiment}: {len(rows)} trials trained (seconds; points from the trial's start)")
    print(table(rows))
    out = summary(rows) | {"experiment": str(experiment), "rows": rows}
    return out


def checkout_at(rev: str, work: Path) -> Path:
    """This repository's files at commit ``rev``, under ``work`` (``git archive``: nothing
    is added to the repository), to run the search as it was at that commit."""
    sha = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    path = work / "checkouts" / sha[:10]
    if not (path / "jobs").is_dir():
        path.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", sha], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(path)], input=archive, check=True)
    return path


def search(work: Path, name: str, seed: int, budget: int, env: dict, repo: Path = REPO) -> Path:
    """The embedded search (``repo``'s jobs/tune_t3d.py, its demo set under ``work``),
    ``env`` added."""
    experiment = work / "results" / name
    shutil.rmtree(experiment, ignore_errors=True)
    log = work / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))
    job_env = os.environ | {"RAY_AUTH_MODE": "disabled", "PYTHONPATH": path} | env
    command = [sys.executable, str(repo / "jobs" / "tune_t3d.py"), "--root", str(work)]
    command += ["--name", name, "--seed", str(seed), "--budget-epochs", str(budget)]
    print(f"{name}: searching for {budget} trial-epochs ({env})", file=sys.stderr, flush=True)
    began = time.perf_counter()
    with log.open("w") as err:
        # Run from the checkout: Ray's workers import from the driver's working directory
        # first, so from anywhere else a checkout's trials would run this one's code.
        done = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=err, text=True, env=job_env, cwd=repo
        )
    if done.returncode:
        raise SystemExit(f"{name} failed (log {log}):\n{log.read_text()[-3000:]}")
    (experiment / "job_s.txt").write_text(f"{time.perf_counter() - began:.1f}\n")
    return experiment


def untimed_table(experiment: Path) -> list[dict]:
    """The search's trial table without ids, paths and speeds: equal between variants when
    the start-up work changed nothing but time."""
    rows = json.loads((experiment / "trials.json").read_text())
    skip = {"trial_id", "path", "best_checkpoint"} | TIMED
    return [{k: v for k, v in row.items() if k not in skip} for row in rows]


def run(args: argparse.Namespace) -> dict:
    work = Path(args.work).resolve()
    out: dict = {"seed": args.seed, "budget_epochs": args.budget_epochs, "rounds": []}
    # (name, environment, checkout): each variant, and the commits named by --baseline, run
    # as they are there with no-spares' environment.
    runs = [(v, VARIANTS[v], REPO) for v in args.variants]
    at = [(f"at-{rev}", VARIANTS["no-spares"], checkout_at(rev, work)) for rev in args.baseline]
    runs = at + runs if args.baseline_first else runs + at
    for r in range(args.rounds):  # variants alternate, so a slow phase of the VM hits both
        figures = {}
        for variant, env, repo in runs:
            experiment = search(work, f"ts-{variant}-{r}", args.seed, args.budget_epochs, env, repo)
            print(f"\n## {variant}, round {r + 1}")
            rows = read(experiment)["rows"]
            # The whole job: Ray's start, the search, the evaluation and the report.
            job_s = float((experiment / "job_s.txt").read_text())
            figures[variant] = summary(rows) | {"job_s": job_s, "table": untimed_table(experiment)}
        tables = [f.pop("table") for f in figures.values()]
        same = all(t == tables[0] for t in tables)
        out["rounds"].append({"figures": figures, "same_trial_table": same})
    print("\n## side by side (medians over a search's trials; seconds)")
    keys = ["extra_first_epoch_s", "max_extra_first_epoch_s", "gap_s", "max_gap_s"]
    keys += ["data_wait_first", "data_wait_later", "job_s"]
    print(f"{'round':5s} {'variant':13s} " + " ".join(f"{k:>24s}" for k in keys))
    for r, entry in enumerate(out["rounds"], start=1):
        for variant, f in entry["figures"].items():
            cells = " ".join(f"{_f(f[k], '.3f'):>24s}" for k in keys)
            print(f"{r:5d} {variant:13s} {cells}")
        print(f"      same trial table in every variant: {entry['same_trial_table']}")
    return out


def _three_reports(config: dict) -> None:
    """A Train worker's loop of 3 half-second epochs, each reported with a checkpoint."""
    import tempfile
    import time

    import ray.train
    import torch

    for epoch in range(3):
        time.sleep(0.5)
        with tempfile.TemporaryDirectory() as d:
            torch.save({"epoch": epoch}, Path(d) / "state.pt")
            checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report({"epoch": epoch + 1}, checkpoint=checkpoint)


def poll(args: argparse.Namespace) -> dict:
    """Seconds of a whole ``TorchTrainer.fit()`` of :func:`_three_reports` per polling
    interval of the Train controller, in one Ray session, the intervals alternating."""
    import tempfile

    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    ray.init(num_cpus=2, log_to_driver=False, configure_logging=False)
    os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    seconds: dict[str, list[float]] = {"2.0": [], "0.5": []}
    root = tempfile.mkdtemp()
    for r in range(args.runs):
        for interval, times in seconds.items():
            os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = interval  # read at fit()
            began = time.monotonic()
            result = TorchTrainer(
                _three_reports,
                scaling_config=ray.train.ScalingConfig(
                    num_workers=1, resources_per_worker={"CPU": 0.5}
                ),
                run_config=ray.train.RunConfig(storage_path=root, name=f"poll-{interval}-{r}"),
            ).fit()
            assert result.error is None, result.error
            times.append(time.monotonic() - began)
            print(f"run {r + 1}: polling every {interval} s: {times[-1]:.2f} s", flush=True)
    medians = {k: statistics.median(v) for k, v in seconds.items()}
    print(f"median: {medians['2.0']:.2f} s at 2.0 s, {medians['0.5']:.2f} s at 0.5 s")
    return {"seconds": seconds, "median": medians}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("read", help="the breakdown of an experiment folder")
    r.add_argument("experiment", type=Path)
    s = sub.add_parser("run", help="the embedded search per variant, side by side")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--budget-epochs", type=int, default=8)
    s.add_argument("--rounds", type=int, default=1)
    s.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    s.add_argument(
        "--baseline",
        nargs="*",
        default=[],
        metavar="REV",
        help="also run the search as it was at these commits (after the variants)",
    )
    s.add_argument("--baseline-first", action="store_true", help="the commits before the variants")
    s.add_argument("--work", default=str(Path.home() / "raylab"), help="the demo set's root")
    p = sub.add_parser("poll", help="a short Train run per controller polling interval")
    p.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    if args.mode == "poll":
        out = poll(args)
        print(json.dumps(out))
    elif args.mode == "read":
        out = read(args.experiment.resolve())
        print(json.dumps({k: v for k, v in out.items() if k != "rows"}))
    else:
        out = run(args)
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
