"""Does the search method pay? Measured in work (trial-epochs), over many seeds.

    # live: the embedded search itself, once per method and seed
    python benchmarks/search_efficiency.py live [--seeds 0 1 2 3 4] [--budget-epochs 24] \
        [--methods tpe+asha random+asha random+none] [--reuse METHOD ...] [--work DIR] \
        [-- JOB ARGS...]
    # record: every configuration of one random search trained to its last epoch
    python benchmarks/search_efficiency.py record [--num-samples 14] [--work DIR] \
        [--experiment DIR [DIR ...]]
    # replay: hundreds of searches simulated on the recorded curves, in seconds
    python benchmarks/search_efficiency.py replay CURVES.json [--searches 200] \
        [--budget-epochs 24 40]
    # same: did two runs of a search (one on a slowed machine, say) train the same trials
    # with the same figures in every epoch?
    python benchmarks/search_efficiency.py same EXPERIMENT EXPERIMENT

**live** runs jobs/tune_t3d.py on its demo set (the embedded CPU-sized search) with (a)
``--searcher tpe --early-stopping asha`` (the job's default), (b) random + ASHA and (c)
random search without early stopping (every trial trains all its epochs), each ended by the
same budget of trial-epochs. A search run one trial at a time is a function of its seed, so
the figures are the same on any machine. From every trial's result.json, the best
validation video top-1 so far is a step function of the epochs trained so far; per method
the table gives each seed's work to first reach ``--threshold`` and best at the budget, and
the median ratio (a)/(c).

**record** runs the embedded search once with random draws and no early stopping, every
trial to its last epoch, and writes ``curves.json``: each trained configuration with its
per-epoch validation top-1, validation loss and training loss; ``--experiment`` reads
experiments already run that way instead (live's random+none searches train every trial to
its last epoch too), a configuration found in several once.

**same** compares two experiments trial by trial and epoch by epoch, on every figure a
trial reports except times, speeds, ids and paths.

**replay** simulates searches on that table: Optuna's samplers (TPE, random) propose, and
Optuna's pruners (successive halving, the asynchronous rule ASHA is; Hyperband; median)
and the chance rule stop, with the budget counted in trial-epochs as live. The space is
discretised to the table: one categorical knob, which recorded configuration to train (the
live space's learning rates and weight decays are continuous; a replay can only offer
what was recorded), and drawing one again replays its curve, as the same configuration
with the same seed retrains exactly. It also scores the chance rules on the curves: how
many eventual learners (>= 0.6 at the end) each would have stopped, and the epochs saved.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from raylab.metrics import METRIC, SIZING_KEY, TIMED  # noqa: E402
from raylab.tune.stopping import ChanceRule  # noqa: E402

NUM_CLASSES = 8  # the demo set
# name: (--searcher, --early-stopping); the first is the job's default, the last the baseline.
METHODS = {
    "tpe+asha": ("tpe", "asha"),
    "random+asha": ("random", "asha"),
    "random+none": ("random", "none"),
}
KNOBS = ("family", "depth", "stm_stages", "stm_blocks", "frames", "size", "stride", "lr",
         "weight_decay")  # fmt: skip

Curve = list[tuple[int, float]]  # (trial-epochs trained so far, best value so far)


# ---------------------------------------------------------------- reading an experiment


def read_trials(experiment: Path) -> list[list[dict]]:
    """The result.json lines of every Tune trial folder of an experiment, one list per trial,
    in the order Tune created the trials; empty for a trial that reported nothing."""
    folders = sorted(experiment.glob("*/result.json"), key=lambda p: _trial_number(p.parent.name))
    return [
        [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        for result in folders
    ]


def _trial_number(folder: str) -> int:
    """Tune names a trial's folder ``run_trial_<id>_<n>_...``: n counts trials as created."""
    parts = folder.split("_")
    return int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0


def epoch_results(lines: list[dict]) -> list[dict]:
    """A trial's results that closed an epoch with a score."""
    return [
        r
        for r in lines
        if not r.get("pruned")
        and not r.get("restored")
        and r.get(METRIC) is not None
        and not math.isnan(r[METRIC])
    ]


def read_points(experiment: Path) -> list[tuple[int, float]]:
    """(trial-epochs trained when it was reported, val top-1) of every scored epoch, in the
    order the epochs ended (one trial at a time: trial by trial)."""
    results = [r for lines in read_trials(experiment) for r in epoch_results(lines)]
    results.sort(key=lambda r: r.get("timestamp", 0))
    return [(work, float(r[METRIC])) for work, r in enumerate(results, start=1)]


def best_so_far(points: list[tuple[int, float]]) -> Curve:
    """The steps of the running maximum: (work, new best) wherever the best goes up."""
    steps: Curve = []
    for work, value in sorted(points):
        if not steps or value > steps[-1][1]:
            steps.append((work, value))
    return steps


def work_to_reach(curve: Curve, threshold: float) -> int | None:
    """Trial-epochs until the best-so-far curve first reaches ``threshold``; None: never."""
    return next((work for work, best in curve if best >= threshold), None)


def best_at(curve: Curve, work: float) -> float | None:
    """The best-so-far value after ``work`` trial-epochs; None before the first result."""
    reached = [best for w, best in curve if w <= work]
    return reached[-1] if reached else None


def median_with_missing(values: list[float | None], missing: float) -> float | None:
    """Median in which a missing value (None) counts as ``missing`` (+inf for a threshold
    never reached, -inf for a best never had); None when the median itself is missing."""
    median = statistics.median(missing if v is None else v for v in values)
    return None if math.isinf(median) else median


def work_ratio(a: float | None, c: float | None, budget: float) -> tuple[float | None, bool]:
    """(a)/(c) of the median work to the threshold, and whether it is only an upper bound:
    when (c) never reached it, its work is beyond the budget and (a)/(c) below a / budget."""
    if a is None:
        return None, False
    if c is None:
        return a / budget, True
    return (a / c if c > 0 else None), False


def same(args: argparse.Namespace) -> dict:
    """Whether two experiments trained the same trials with the same figures, epoch by epoch."""
    from ray.tune.result import AUTO_RESULT_KEYS, DONE, TRIAL_ID

    # What Tune adds to a result (when, where, which process; the configuration and the
    # iteration stay compared), the trainer's timed figures and the checkpoint's path.
    skip = (set(AUTO_RESULT_KEYS) - {"config", "training_iteration"}) | {DONE, TRIAL_ID}
    skip |= TIMED | {"checkpoint_path"}

    # The configuration without the driver's sizing: its figures are in every result too,
    # and experiments from before the driver sized trials have none.
    def compared(r: dict) -> dict:
        kept = {k: v for k, v in r.items() if k not in skip}
        if isinstance(kept.get("config"), dict):
            kept["config"] = {k: v for k, v in kept["config"].items() if k != SIZING_KEY}
        return kept

    # As JSON text, so that a NaN equals a NaN.
    runs = [
        [[json.dumps(compared(r), sort_keys=True) for r in lines] for lines in read_trials(Path(e))]
        for e in args.experiments
    ]
    print(f"trials: {' / '.join(str(len(r)) for r in runs)}")
    for n, trials in enumerate(zip(*runs, strict=False), start=1):
        lines = [json.loads(r) for r in trials[0]]
        config = describe(lines[-1]["config"]) if lines and "config" in lines[-1] else "-"
        top1 = " ".join(f"{r[METRIC]:.3f}" for r in epoch_results(lines))
        print(f"{n}: {config}: {'same' if trials[0] == trials[1] else 'DIFFERENT'} ({top1})")
    result = {"same": runs[0] == runs[1], "trials": [len(r) for r in runs]}
    print(json.dumps(result))
    return result


# ---------------------------------------------------------------- running the job


def job_env() -> dict:
    # This checkout's raylab first: a virtualenv shared between checkouts may hold an
    # editable install of another one, which a script in jobs/ would otherwise import.
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return os.environ | {
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
        "PYTHONPATH": path,
    }


def run_job(*args: str, log: Path) -> dict:
    """jobs/tune_t3d.py with ``args``; its stderr goes to ``log``, its last stdout line back."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as err:
        done = subprocess.run(
            [sys.executable, str(REPO / "jobs" / "tune_t3d.py"), *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=job_env(),
        )
    if done.returncode:
        tail = log.read_text()[-4000:]
        raise SystemExit(f"tune_t3d.py {' '.join(args)} failed (log {log}):\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def embedded(key: str):
    """A setting of the embedded search's preset."""
    from raylab.tune.presets import CPU_DEFAULT

    return CPU_DEFAULT[key]


def live(args: argparse.Namespace, passthrough: list[str]) -> dict:
    budget = args.budget_epochs or embedded("budget_epochs")
    work = Path(args.work).resolve()
    runs = []
    # Seeds outside, methods inside, as a reader compares them.
    for seed in args.seeds:
        for method in args.methods:
            searcher, early_stopping = METHODS[method]
            name = f"se-{method.replace('+', '-')}-seed{seed}"
            done = (work / "results" / name / "summary.json").exists()
            if method in args.reuse and done:
                print(f"{name}: read from its earlier run", file=sys.stderr, flush=True)
            else:
                shutil.rmtree(work / "results" / name, ignore_errors=True)  # else Tune would mix
                print(f"{name}: searching for {budget} trial-epochs", file=sys.stderr, flush=True)
                run_job(
                    *("--root", str(work), "--name", name, "--seed", str(seed)),
                    *("--searcher", searcher, "--early-stopping", early_stopping),
                    *("--budget-epochs", str(budget), "--num-samples", "200"),
                    *passthrough,
                    log=work / "logs" / f"{name}.log",
                )
            curve = best_so_far(read_points(work / "results" / name))
            runs.append(
                {
                    "method": method,
                    "seed": seed,
                    "work_to_threshold": work_to_reach(curve, args.threshold),
                    "best_at_budget": best_at(curve, budget),
                }
            )
            print(f"{name}: {runs[-1]}", file=sys.stderr, flush=True)
    return summarise(runs, args.methods, budget, args.threshold, "live")


# ---------------------------------------------------------------- record and replay


def record(args: argparse.Namespace) -> dict:
    """One random search, no early stopping: every configuration's whole curve."""
    work = Path(args.work).resolve()
    name = f"record-seed{args.seed}"
    max_epochs = embedded("max_epochs")
    experiments = [Path(e).resolve() for e in args.experiment or [work / "results" / name]]
    if not args.experiment:
        shutil.rmtree(experiments[0], ignore_errors=True)
        run_job(
            *("--root", str(work), "--name", name, "--seed", str(args.seed)),
            *("--searcher", "random", "--early-stopping", "none"),
            *("--num-samples", str(args.num_samples)),
            *("--budget-epochs", str(args.num_samples * max_epochs)),
            log=work / "logs" / f"{name}.log",
        )
    table = curves_of(experiments, max_epochs)
    out = work / "curves.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, indent=1))
    print(f"{len(table['configs'])} configurations recorded in {out}")
    return {"curves": str(out), "configs": len(table["configs"])}


def curves_of(experiments: list[Path], max_epochs: int) -> dict:
    """The table a replay reads: each configuration trained to ``max_epochs`` and its curve,
    from experiments whose trials trained every epoch (record's own search, or live's
    random+none searches): a trial cut short, or pruned, is left out, and a configuration
    found in several experiments is kept once, from the first."""
    configs, seen = [], set()
    for experiment in experiments:
        for lines in read_trials(experiment):
            epochs = epoch_results(lines)
            config = {k: v for k, v in lines[0].get("config", {}).items() if k in KNOBS}
            key = json.dumps(config, sort_keys=True)
            if len(epochs) < max_epochs or key in seen:
                continue
            seen.add(key)
            curve = [
                {k: r.get(k) for k in (METRIC, "val_loss", "train_loss")}
                for r in epochs[:max_epochs]
            ]
            configs.append({"config": config, "curve": curve, "gmacs": epochs[0].get("gmacs")})
    return {
        "experiments": [str(e) for e in experiments],
        "max_epochs": max_epochs,
        "configs": configs,
    }


def describe(config: dict) -> str:
    arch = (
        f"t3d-{config.get('depth')}"
        if config.get("family") == "t3d"
        else f"stm {config.get('stm_stages')}/{config.get('stm_blocks')}"
    )
    return (
        f"{arch} {config.get('frames')}x{config.get('size')} s{config.get('stride')} "
        f"lr {config.get('lr', 0):.1e} wd {config.get('weight_decay', 0):.1e}"
    )


def replay_search(
    table: dict, *, sampler: str, pruner: str, seed: int, budget: int, rule: ChanceRule | None
) -> Curve:
    """One search simulated on the table: the best-so-far curve over trial-epochs."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    configs = table["configs"]
    names = [f"{i}: {describe(c['config'])}" for i, c in enumerate(configs)]
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=6),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
    }
    pruners = {
        "none": optuna.pruners.NopPruner,
        # ASHA as the embedded search runs it: one rung at epoch 4, the better half goes on.
        "asha": lambda: optuna.pruners.SuccessiveHalvingPruner(
            min_resource=4, reduction_factor=2, min_early_stopping_rate=0
        ),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=table["max_epochs"], reduction_factor=2
        ),
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=3),
    }
    study = optuna.create_study(
        direction="maximize", sampler=samplers[sampler](), pruner=pruners[pruner]()
    )
    work, best, curve = 0, -1.0, []
    while work < budget:
        trial = study.ask()
        index = names.index(trial.suggest_categorical("config", names))
        results = configs[index]["curve"]
        state, value = optuna.trial.TrialState.COMPLETE, None
        for epoch, r in enumerate(results, start=1):
            work += 1
            value = r[METRIC]
            trial.report(value, epoch)
            if value > best:
                best = value
                curve.append((work, best))
            if work >= budget:
                state = optuna.trial.TrialState.PRUNED
                break
            stop = rule is not None and pruner != "none" and rule.stops(results[:epoch])
            if epoch < len(results) and (stop or trial.should_prune()):
                state = optuna.trial.TrialState.PRUNED
                break
        study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)
    return curve


def rule_scores(table: dict, rules: dict[str, ChanceRule], learner: float = 0.6) -> dict:
    """For each rule, on the recorded curves: eventual learners it would stop, epochs saved."""
    out = {}
    for name, rule in rules.items():
        stopped_learners, saved, stopped = [], 0, 0
        for i, entry in enumerate(table["configs"]):
            curve = entry["curve"]
            at = next((e for e in range(1, len(curve) + 1) if rule.stops(curve[:e])), None)
            if at is None or at == len(curve):
                continue
            stopped += 1
            saved += len(curve) - at
            if curve[-1][METRIC] >= learner:
                stopped_learners.append(i)
        out[name] = {
            "stopped": stopped,
            "learners_stopped": stopped_learners,
            "epochs_saved": saved,
        }
    return out


def read_tables(paths: list[str]) -> dict:
    """One table of the configurations of several curves files (each configuration's curve
    is one sample of its course: recorded on another machine, or from another seed's clip
    order, it is another sample, kept beside the first)."""
    tables = [json.loads(Path(p).read_text()) for p in paths]
    epochs = {t["max_epochs"] for t in tables}
    if len(epochs) != 1:
        raise SystemExit(f"curves of different lengths ({sorted(epochs)} epochs): {paths}")
    return {"max_epochs": epochs.pop(), "configs": [c for t in tables for c in t["configs"]]}


def replay(args: argparse.Namespace) -> dict:
    table = read_tables(args.curves)
    configs = table["configs"]
    learners = [i for i, c in enumerate(configs) if c["curve"][-1][METRIC] >= args.threshold]
    print(f"{len(configs)} recorded configurations, {len(learners)} end >= {args.threshold:g}:")
    for i, c in enumerate(configs):
        shown = " ".join(f"{r[METRIC]:.2f}" for r in c["curve"])
        losses = " ".join(
            "-" if r.get("train_loss") is None else f"{r['train_loss']:.3f}" for r in c["curve"][:3]
        )
        print(f"  {i:2d} {describe(c['config']):44s} top-1 {shown}  train loss {losses} ...")
    patience = args.patience or embedded("stop_at_chance_after")
    rule = ChanceRule(NUM_CLASSES, patience)  # the search's own
    ln_k = f"ln {NUM_CLASSES}"
    rules = {
        "val top-1 alone, after 3 epochs": ChanceRule(NUM_CLASSES, 3, loss_fraction=None),
        f"val top-1 and train loss >= {ln_k}, after 3": ChanceRule(
            NUM_CLASSES, 3, loss_fraction=1.0
        ),
        f"val top-1 and train loss >= {rule.loss_fraction:g} {ln_k} after {patience}, or >= "
        f"{ln_k} after {rule.late} (the search's)": rule,
    }
    scores = rule_scores(table, rules)
    print(f"\nchance rules on the recorded curves (floor {rule.floor:.4f}, {ln_k} = "
          f"{math.log(NUM_CLASSES):.3f}):")  # fmt: skip
    for name, s in scores.items():
        print(
            f"  {name}: stops {s['stopped']}, of them eventual learners {s['learners_stopped']}, "
            f"saves {s['epochs_saved']} epochs"
        )
    methods = {
        "tpe+asha": ("tpe", "asha"),
        "random+asha": ("random", "asha"),
        "random+none": ("random", "none"),
        "tpe+none": ("tpe", "none"),
        "tpe+hyperband": ("tpe", "hyperband"),
        "random+median": ("random", "median"),
    }
    summary: dict = {"curves": args.curves, "rules": scores, "budgets": {}}
    for budget in args.budget_epochs or [embedded("budget_epochs"), 40]:
        runs = []
        for method, (sampler, pruner) in methods.items():
            for seed in range(args.searches):
                curve = replay_search(
                    table, sampler=sampler, pruner=pruner, seed=seed, budget=budget, rule=rule
                )
                runs.append(
                    {
                        "method": method,
                        "seed": seed,
                        "work_to_threshold": work_to_reach(curve, args.threshold),
                        "best_at_budget": best_at(curve, budget),
                    }
                )
        print(f"\n## replay: {args.searches} searches per method, {budget} trial-epochs")
        summary["budgets"][budget] = summarise(
            runs, list(methods), budget, args.threshold, "replay", per_seed=False
        )
    print(json.dumps(summary))
    return summary


# ---------------------------------------------------------------- the tables


def bootstrap_ratio(a: list, c: list, budget: float, draws: int = 2000) -> tuple[float, float]:
    """95% interval of median(a) / median(c) (work to the threshold; never = beyond the
    budget, counted as 2x it) by resampling the searches."""
    rng = random.Random(0)
    fill = [2 * budget if v is None else v for v in a], [2 * budget if v is None else v for v in c]
    ratios = sorted(
        statistics.median(rng.choices(fill[0], k=len(a)))
        / statistics.median(rng.choices(fill[1], k=len(c)))
        for _ in range(draws)
    )
    return ratios[int(0.025 * draws)], ratios[int(0.975 * draws)]


def summarise(
    runs: list[dict], methods: list[str], budget: int, threshold: float, mode: str,
    per_seed: bool = True,
) -> dict:  # fmt: skip
    out: dict = {"budget_epochs": budget, "threshold": threshold, "methods": {}}
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        works = [r["work_to_threshold"] for r in mine]
        bests = [r["best_at_budget"] for r in mine]
        m = {
            "seeds": [r["seed"] for r in mine],
            "work_to_threshold": works,
            "best_at_budget": bests,
            "median_work_to_threshold": median_with_missing(works, math.inf),
            "reached": sum(w is not None for w in works) / len(works),
            "median_best_at_budget": median_with_missing(bests, -math.inf),
        }
        out["methods"][method] = m
        if per_seed:
            print(f"\n### {method}\n\n| seed | trial-epochs to {threshold:g} | best at {budget} |")
            print("|---|---|---|")
            for r in mine:
                w, b = r["work_to_threshold"], r["best_at_budget"]
                shown = "n/a" if b is None else f"{b:.3f}"
                print(f"| {r['seed']} | {'not reached' if w is None else w} | {shown} |")
    print(f"\n| method ({mode}) | median trial-epochs to {threshold:g} | reached | median best |")
    print("|---|---|---|---|")
    for method, m in out["methods"].items():
        w, b = m["median_work_to_threshold"], m["median_best_at_budget"]
        print(
            f"| {method} | {'not reached' if w is None else f'{w:g}'} | {m['reached']:.0%} | "
            f"{'n/a' if b is None else f'{b:.3f}'} |"
        )
    if {"tpe+asha", "random+none"} <= set(out["methods"]):
        a = out["methods"]["tpe+asha"]
        c = out["methods"]["random+none"]
        ratio, bound = work_ratio(
            a["median_work_to_threshold"], c["median_work_to_threshold"], budget
        )
        out["ratio_tpe_asha_over_random_none"] = ratio
        out["ratio_is_upper_bound"] = bound
        text = "n/a" if ratio is None else f"{'< ' if bound else ''}{ratio:.2f}"
        if mode == "replay":
            low, high = bootstrap_ratio(a["work_to_threshold"], c["work_to_threshold"], budget)
            out["ratio_interval_95"] = [low, high]
            text += f" (95% interval {low:.2f}-{high:.2f})"
        print(f"\nmedian trial-epochs to {threshold:g}, tpe+asha / random+none: {text}")
        # The median search either drew a learner first (both methods train it alike) or
        # not, so the median ratio jumps between about 1 and 0.5; the mean moves smoothly.
        mean = mean_ratio(a["work_to_threshold"], c["work_to_threshold"], budget)
        out["mean_ratio_tpe_asha_over_random_none"] = mean
        print(
            f"mean trial-epochs to {threshold:g} (never reached: 2x the budget), "
            f"tpe+asha / random+none: {mean:.2f}"
        )
    return out


def mean_ratio(a: list, c: list, budget: float) -> float:
    """mean(a) / mean(c) of the work to the threshold, a search that never reached it
    counted as twice the budget (as in :func:`bootstrap_ratio`)."""
    fill = [[2 * budget if v is None else v for v in w] for w in (a, c)]
    return statistics.mean(fill[0]) / statistics.mean(fill[1])


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    own, passthrough = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threshold", type=float, default=0.6, help="val video top-1 to reach")
    p.add_argument("--work", default=".search-efficiency", help="the job's --root for every run")
    modes = p.add_subparsers(dest="mode", required=True)
    lv = modes.add_parser("live", help="the embedded search, per method and seed")
    lv.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    lv.add_argument("--budget-epochs", type=int, help="default: the embedded search's")
    lv.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    lv.add_argument(
        "--reuse",
        nargs="*",
        choices=list(METHODS),
        default=[],
        help="methods whose finished searches in --work are read, not run again (those a "
        "change left alone: random+none after a change to early stopping)",
    )
    rec = modes.add_parser("record", help="every configuration of a random search, in full")
    rec.add_argument("--num-samples", type=int, default=14)
    rec.add_argument("--seed", type=int, default=0)
    rec.add_argument(
        "--experiment",
        nargs="+",
        help="read the curves of these finished experiments (run without early stopping: "
        "record's own job command, or live's random+none searches) instead of running one",
    )
    rep = modes.add_parser("replay", help="searches simulated on recorded curves")
    rep.add_argument("curves", nargs="+", help="curves.json written by record (one or more)")
    rep.add_argument("--searches", type=int, default=200, help="per method (seeds 0..N-1)")
    rep.add_argument(
        "--budget-epochs", nargs="+", type=int, help="default: the embedded search's, and 40"
    )
    rep.add_argument(
        "--patience", type=int, help="epochs before the chance rule (default: the search's)"
    )
    sm = modes.add_parser("same", help="two experiments' trials, epoch by epoch")
    sm.add_argument("experiments", nargs=2)
    args = p.parse_args(own)
    if args.mode == "same":
        return same(args)
    if args.mode == "live":
        return live(args, passthrough)
    if args.mode == "record":
        return record(args)
    return replay(args)


if __name__ == "__main__":
    main()
